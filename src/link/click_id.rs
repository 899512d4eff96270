//! Signed click ids: verifiable later with no storage.
//!
//! A click id is `<code>.<payload>` where the payload is base64url of
//! `unix_secs (u32 BE) | nonce (u32) | tag[..12]`, and the tag is SipHash-2-4 (128-bit output) of
//! `code | unix_secs | nonce` under a 128-bit key derived from the click secret. The conversion API
//! recovers the code and the click time from the id alone and rejects forgeries (any change to the
//! code, time or nonce breaks the 96-bit tag). The nonce makes ids of clicks in the same second
//! distinct; it needs no secrecy because the tag carries the authenticity.
//!
//! SipHash is a keyed PRF made for short inputs, which is what a click id is; every tap signs one on
//! the redirect path, where HMAC-SHA256 (two SHA-256 blocks) cost several times more (measured in
//! `loadtest/optimisations.md`). No released version issued HMAC-tagged ids, so only SipHash
//! tags verify.

use std::cell::Cell;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use siphasher::sip128::{Hasher128, SipHasher24};
use subtle::ConstantTimeEq;

const TAG_LEN: usize = 12;
const PAYLOAD_LEN: usize = 4 + 4 + TAG_LEN;
/// base64url (no padding) of the payload.
const ENCODED_LEN: usize = (PAYLOAD_LEN * 4).div_ceil(3);

/// A signed click not yet encoded as text: the redirect path queues this (20 bytes, no
/// allocation) and the batcher encodes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawClickId {
    payload: [u8; PAYLOAD_LEN],
}

impl RawClickId {
    /// The payload in base64url without padding. Written out by hand for this one fixed size:
    /// every tap encodes one on the redirect path and again in the batcher, and the
    /// general-purpose engine cost several times more (`loadtest/optimisations.md`).
    fn encoded(&self) -> [u8; ENCODED_LEN] {
        const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = [0u8; ENCODED_LEN];
        let groups = self.payload.chunks_exact(3);
        let (rest, whole) = (groups.remainder(), PAYLOAD_LEN / 3);
        for (g, o) in groups.zip(out.chunks_exact_mut(4)) {
            let n = u32::from(g[0]) << 16 | u32::from(g[1]) << 8 | u32::from(g[2]);
            for (k, c) in o.iter_mut().enumerate() {
                *c = ALPHABET[(n >> (18 - 6 * k) & 63) as usize];
            }
        }
        // 20 bytes: six whole groups, then two bytes as three characters.
        let n = u32::from(rest[0]) << 16 | u32::from(rest[1]) << 8;
        for (k, c) in out[4 * whole..].iter_mut().enumerate() {
            *c = ALPHABET[(n >> (18 - 6 * k) & 63) as usize];
        }
        out
    }

    /// Length of the id of a click on `code`: `<code>.<payload>`.
    pub const fn id_len(code: &[u8]) -> usize {
        code.len() + 1 + ENCODED_LEN
    }

    /// Appends `<code>.<payload>` to a byte buffer (the `Location` header, the batcher's JSON).
    pub fn write_bytes(&self, code: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(code);
        out.push(b'.');
        out.extend_from_slice(&self.encoded());
    }

    /// `<code>.<payload>` as text.
    pub fn to_id(self, code: &str) -> String {
        let mut s = String::with_capacity(Self::id_len(code.as_bytes()));
        s.push_str(code);
        s.push('.');
        s.push_str(std::str::from_utf8(&self.encoded()).expect("the base64url alphabet is ASCII"));
        s
    }
}

/// What a valid click id proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClickClaims {
    pub code: String,
    pub clicked_at: i64,
}

/// Issues and verifies click ids with one secret.
#[derive(Clone)]
pub struct ClickSigner {
    /// The SipHash key, derived from the secret (HMAC-SHA256 of a fixed label, first 16 bytes).
    key: [u8; 16],
}

impl ClickSigner {
    pub fn new(secret: &[u8]) -> Self {
        let mut derive = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any size");
        derive.update(b"linkgate click-id siphash-2-4 key");
        let mut key = [0u8; 16];
        key.copy_from_slice(&derive.finalize().into_bytes()[..16]);
        Self { key }
    }

    fn tag(&self, code: &[u8], ts: u32, nonce: u32) -> [u8; 16] {
        let mut h = SipHasher24::new_with_key(&self.key);
        std::hash::Hasher::write(&mut h, code);
        std::hash::Hasher::write(&mut h, &ts.to_be_bytes());
        std::hash::Hasher::write(&mut h, &nonce.to_be_bytes());
        h.finish128().as_bytes()
    }

    /// Signs a fresh click for `code` at `unix_secs`, without encoding it (no allocation).
    pub fn sign(&self, code: &str, unix_secs: i64) -> RawClickId {
        let ts = unix_secs.clamp(0, u32::MAX as i64) as u32;
        let nonce = next_nonce();
        let mut payload = [0u8; PAYLOAD_LEN];
        payload[..4].copy_from_slice(&ts.to_be_bytes());
        payload[4..8].copy_from_slice(&nonce.to_be_bytes());
        payload[8..].copy_from_slice(&self.tag(code.as_bytes(), ts, nonce)[..TAG_LEN]);
        RawClickId { payload }
    }

    /// A fresh click id for `code` at `unix_secs`, as text.
    pub fn issue(&self, code: &str, unix_secs: i64) -> String {
        self.sign(code, unix_secs).to_id(code)
    }

    /// Verifies `id`; `None` for anything not issued with this secret.
    pub fn verify(&self, id: &str) -> Option<ClickClaims> {
        let (code, payload) = id.rsplit_once('.')?;
        if !crate::link::code::is_code_shaped(code) {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
        if bytes.len() != PAYLOAD_LEN {
            return None;
        }
        let ts = u32::from_be_bytes(bytes[..4].try_into().ok()?);
        let nonce = u32::from_be_bytes(bytes[4..8].try_into().ok()?);
        let got = &bytes[8..];
        if bool::from(self.tag(code.as_bytes(), ts, nonce)[..TAG_LEN].ct_eq(got)) {
            Some(ClickClaims {
                code: code.to_string(),
                clicked_at: ts as i64,
            })
        } else {
            None
        }
    }
}

thread_local! {
    static NONCE: Cell<u32> = Cell::new({
        let mut seed = [0u8; 4];
        let _ = getrandom::fill(&mut seed);
        u32::from_le_bytes(seed)
    });
}

/// A per-thread sequence from a random start: distinct within a thread for 2^32 ids.
fn next_nonce() -> u32 {
    NONCE.with(|n| {
        let v = n.get().wrapping_add(0x9E37_79B9);
        n.set(v);
        v
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_ids_verify_and_carry_code_and_time() {
        let s = ClickSigner::new(b"k");
        let id = s.issue("Ab3xK9q_", 1_795_507_200);
        assert_eq!(
            s.verify(&id),
            Some(ClickClaims {
                code: "Ab3xK9q_".into(),
                clicked_at: 1_795_507_200
            })
        );
        assert_ne!(
            id,
            s.issue("Ab3xK9q_", 1_795_507_200),
            "same code and second must give distinct ids"
        );
    }

    #[test]
    fn the_payload_encoding_is_base64url_without_padding() {
        let s = ClickSigner::new(b"k");
        let signed = (0..200).map(|i| s.sign("abcdefg", 1_700_000_000 + i).payload);
        for payload in signed.chain([[0; PAYLOAD_LEN], [0xff; PAYLOAD_LEN]]) {
            let raw = RawClickId { payload };
            let want = format!("abcdefg.{}", URL_SAFE_NO_PAD.encode(payload));
            assert_eq!(raw.to_id("abcdefg"), want);
            let mut bytes = Vec::new();
            raw.write_bytes(b"abcdefg", &mut bytes);
            assert_eq!(bytes, want.as_bytes());
        }
    }

    #[test]
    fn forgeries_are_rejected() {
        let s = ClickSigner::new(b"k");
        let id = s.issue("abcdefg", 1_700_000_000);
        let (_, payload) = id.rsplit_once('.').unwrap();
        assert_eq!(s.verify(&format!("other.{payload}")), None, "moved to another code");
        assert_eq!(ClickSigner::new(b"other").verify(&id), None, "other secret");
        let mut bytes = URL_SAFE_NO_PAD.decode(payload).unwrap();
        bytes[3] ^= 1; // shift the time
        assert_eq!(s.verify(&format!("abcdefg.{}", URL_SAFE_NO_PAD.encode(&bytes))), None);
        for junk in ["", ".", "abc", "abc.", "abc.!!!!", "a b.AAAA"] {
            assert_eq!(s.verify(junk), None, "{junk}");
        }
    }

    /// An id tagged with HMAC-SHA256 under the secret (what an unreleased build issued).
    fn legacy_id(secret: &[u8], code: &str, ts: u32, nonce: u32) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(code.as_bytes());
        mac.update(&ts.to_be_bytes());
        mac.update(&nonce.to_be_bytes());
        let tag = mac.finalize().into_bytes();
        let mut payload = ts.to_be_bytes().to_vec();
        payload.extend_from_slice(&nonce.to_be_bytes());
        payload.extend_from_slice(&tag[..TAG_LEN]);
        format!("{code}.{}", URL_SAFE_NO_PAD.encode(payload))
    }

    #[test]
    fn only_the_siphash_tag_verifies() {
        let s = ClickSigner::new(b"k");
        let raw = s.sign("abcdefg", 1_700_000_000);
        let (ts, nonce) = (
            u32::from_be_bytes(raw.payload[..4].try_into().unwrap()),
            u32::from_be_bytes(raw.payload[4..8].try_into().unwrap()),
        );
        assert_eq!(raw.payload[8..], s.tag(b"abcdefg", ts, nonce)[..TAG_LEN]);
        assert_eq!(s.verify(&legacy_id(b"k", "abcdefg", ts, nonce)), None, "an HMAC tag");
        assert_ne!(s.key, ClickSigner::new(b"other").key, "the key follows the secret");
    }

    proptest::proptest! {
        #[test]
        fn verification_never_panics_and_refuses_what_was_not_issued(id in "\\PC{0,60}") {
            proptest::prop_assert_eq!(ClickSigner::new(b"k").verify(&id), None);
        }

        #[test]
        fn every_issued_id_verifies_to_its_code_and_time(code in "[A-Za-z0-9_-]{1,64}", ts in 0i64..=u32::MAX as i64) {
            let s = ClickSigner::new(b"k");
            let claims = s.verify(&s.issue(&code, ts)).expect("an issued id verifies");
            proptest::prop_assert_eq!(claims, ClickClaims { code, clicked_at: ts });
        }
    }
}
