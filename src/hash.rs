//! Hashers shared by the cache, the resolver's side maps and the batcher's per-batch maps, and
//! digests written as hex text.
//!
//! The design card's `xxhash-rust` is used through the one-shot `xxh3_64` functions: its
//! streaming `Xxh3Builder` made map lookups several times slower here (see `loadtest/optimisations.md`).

use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::LazyLock;

/// The seed of [`code_hash`], drawn once per process: codes come from the public, and an
/// unseeded hash would let someone craft a code that collides with a live link's and evicts it
/// from the cache (the table keeps one entry per hash).
static CODE_SEED: LazyLock<u64> = LazyLock::new(|| std::collections::hash_map::RandomState::new().hash_one(0u8));

/// Hash of a code, as used for cache keys: xxh3 under this process's random seed.
#[inline]
pub(crate) fn code_hash(code: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(code.as_bytes(), *CODE_SEED)
}

/// The stream shard of a code's events among `shards` (`LINKGATE_STREAM_SHARDS`): unseeded xxh3
/// of the code, so every replica and every version puts one link's events on the same shard, in
/// order, and a consumer can compute it too. (Nobody gains by steering a code to a shard, so the
/// public hash is fine here, unlike [`code_hash`].) Events without a code go to shard 0.
pub fn stream_shard(code: Option<&str>, shards: u32) -> u32 {
    shard_of(code.map_or(0, |c| stream_route(c.as_bytes())), shards)
}

/// What [`stream_shard`] hashes a code to, kept per event so a batch picks shards without
/// hashing again.
#[inline]
pub(crate) fn stream_route(code: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(code)
}

/// Lower-case hex digits of `bytes` (digests as text: idempotency records, delivery ids,
/// signatures).
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(2 * bytes.len());
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

/// The shard of a [`stream_route`] among `shards`.
#[inline]
pub(crate) fn shard_of(route: u64, shards: u32) -> u32 {
    if shards > 1 {
        (route % u64::from(shards)) as u32
    } else {
        0
    }
}

/// A hasher for keys that already are xxh3 hashes.
#[derive(Default, Clone, Copy)]
pub(crate) struct PassThroughHasher(u64);

impl Hasher for PassThroughHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed here; fold anything else deterministically.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ b as u64;
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

pub(crate) type PassThrough = BuildHasherDefault<PassThroughHasher>;

/// Hashes string keys with one-shot xxh3, seeded at random per map so that keys cannot be chosen
/// to collide: for the batcher's per-batch maps, where std's SipHash was a visible cost.
#[derive(Clone)]
pub struct Xxh3State(u64);

impl Default for Xxh3State {
    fn default() -> Self {
        Self(std::collections::hash_map::RandomState::new().hash_one(0u8))
    }
}

impl BuildHasher for Xxh3State {
    type Hasher = Xxh3Hasher;
    fn build_hasher(&self) -> Xxh3Hasher {
        Xxh3Hasher(self.0)
    }
}

pub struct Xxh3Hasher(u64);

impl Hasher for Xxh3Hasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.0);
    }
    /// The terminator `str` writes after its bytes: mixed in without another xxh3 call.
    fn write_u8(&mut self, i: u8) {
        self.0 = (self.0 ^ u64::from(i)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// An id as it appears inside a key: `%`, `{`, `}` and `:` percent-escaped (everything else as
/// is). A key's components are separated by `:` and its hash tag is in braces, so with these four
/// escaped, distinct id tuples always give distinct keys and no id can close a hash tag early.
/// Codes (`[A-Za-z0-9_-]`) and generated ids pass through unchanged.
pub(crate) fn esc(id: &str) -> std::borrow::Cow<'_, str> {
    if !id.contains(['%', '{', '}', ':']) {
        return std::borrow::Cow::Borrowed(id);
    }
    let mut out = String::with_capacity(id.len() + 8);
    for c in id.chars() {
        match c {
            '%' => out.push_str("%25"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            ':' => out.push_str("%3A"),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_two_lower_case_digits_per_byte_high_first() {
        assert_eq!(hex(&[0x00, 0x0f, 0xab, 0xff]), "000fabff");
        assert_eq!(hex(&[]), "");
    }

    #[test]
    fn code_hashes_are_seeded_per_process() {
        let code = "Ab3xK9q";
        assert_eq!(code_hash(code), code_hash(code), "stable within the process");
        assert_ne!(
            code_hash(code),
            xxhash_rust::xxh3::xxh3_64(code.as_bytes()),
            "not the public unseeded hash, which anyone can compute collisions for"
        );
        assert_ne!(*CODE_SEED, 0);
    }
}
