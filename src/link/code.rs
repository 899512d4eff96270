//! Short codes: generated ones (CSPRNG, base62, unguessable) and custom ones (validated).

use crate::field::FieldError;

/// Length of generated codes. 62^8 ≈ 2.2e14: with 10 million live links a random guess hits one
/// with probability ≈ 5e-8, and a collision on minting (retried) is about as rare.
pub(crate) const GENERATED_CODE_LEN: usize = 8;

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Paths that can never be codes, compared case-insensitively so `/V1` cannot shadow the API.
pub(crate) const RESERVED: &[&str] = &["healthz", "readyz", "robots.txt", "v1", "metrics", "favicon.ico"];

/// Bytes of the operating system's CSPRNG drawn at once into each thread's pool.
const RANDOM_POOL_BYTES: usize = 4096;

thread_local! {
    /// OS randomness, drawn [`RANDOM_POOL_BYTES`] at a time and handed out once each: a lead id or
    /// a single code no longer costs a `getrandom` syscall of its own (it was about 5% of the
    /// batcher's CPU on personalised taps, every first tap opening a lead).
    static RANDOM_POOL: std::cell::RefCell<(Box<[u8; RANDOM_POOL_BYTES]>, usize)> =
        std::cell::RefCell::new((Box::new([0; RANDOM_POOL_BYTES]), RANDOM_POOL_BYTES));
}

/// Generates `n` fresh codes from the operating system's CSPRNG (through this thread's pool).
///
/// Each character is drawn by rejection sampling (bytes ≥ 248 are dropped) so every one of the 62
/// symbols is equally likely; codes are independent, never sequential.
pub fn generate_codes(n: usize) -> Vec<String> {
    RANDOM_POOL.with_borrow_mut(|(buf, pos)| {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let mut code = String::with_capacity(GENERATED_CODE_LEN);
            while code.len() < GENERATED_CODE_LEN {
                if *pos == buf.len() {
                    getrandom::fill(&mut buf[..]).expect("the OS random source failed");
                    *pos = 0;
                }
                let b = std::mem::take(&mut buf[*pos]);
                *pos += 1;
                if b < 248 {
                    code.push(ALPHABET[(b % 62) as usize] as char);
                }
            }
            out.push(code);
        }
        out
    })
}

/// Whether `s` has the shape of a code (`[A-Za-z0-9_-]{1,64}`), used by the redirect path to answer
/// garbage with a 404 without touching the store.
pub(crate) fn is_code_shaped(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Validates a custom code: `[A-Za-z0-9_-]{3,64}`, not reserved.
pub(crate) fn validate_custom(code: &str) -> Result<(), FieldError> {
    if code.len() < 3 || code.len() > 64 || !is_code_shaped(code) {
        return Err(FieldError::new("code", "must match [A-Za-z0-9_-]{3,64}"));
    }
    if RESERVED.iter().any(|r| r.eq_ignore_ascii_case(code)) {
        return Err(FieldError::new("code", format!("`{code}` is reserved")));
    }
    Ok(())
}

/// A code (at most 64 bytes) stored inline.
#[derive(Clone, Copy)]
pub struct InlineCode {
    len: u8,
    bytes: [u8; 64],
}

impl InlineCode {
    pub fn new(code: &str) -> Self {
        let mut bytes = [0u8; 64];
        let len = code.len().min(64);
        bytes[..len].copy_from_slice(&code.as_bytes()[..len]);
        Self { len: len as u8, bytes }
    }

    pub fn as_str(&self) -> &str {
        // Codes are ASCII (validated), so any prefix is valid UTF-8.
        std::str::from_utf8(self.as_bytes()).unwrap_or("")
    }

    /// The code's bytes, without the UTF-8 check of [`InlineCode::as_str`] (for JSON, keys, hashing).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

/// Equal when the codes are: the unused tail is not compared.
impl PartialEq for InlineCode {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for InlineCode {}

/// Hashes the code's bytes only (a batch's counters are keyed by code, without a `String` each).
impl std::hash::Hash for InlineCode {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write(self.as_bytes());
    }
}

impl std::fmt::Debug for InlineCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn generated_codes_are_base62_unique_and_valid() {
        let codes = generate_codes(20_000);
        let set: HashSet<_> = codes.iter().collect();
        assert_eq!(set.len(), codes.len());
        for c in &codes {
            assert_eq!(c.len(), GENERATED_CODE_LEN);
            assert!(c.bytes().all(|b| b.is_ascii_alphanumeric()), "{c}");
            assert!(validate_custom(c).is_ok());
        }
    }

    #[test]
    fn generated_codes_use_the_whole_alphabet_evenly() {
        let mut counts = [0usize; 128];
        for c in generate_codes(10_000) {
            for b in c.bytes() {
                counts[b as usize] += 1;
            }
        }
        // 80,000 symbols over 62 letters: about 1,290 each; a biased generator falls far outside.
        for &b in ALPHABET {
            assert!(
                (1000..1600).contains(&counts[b as usize]),
                "{} seen {}",
                b as char,
                counts[b as usize]
            );
        }
    }

    #[test]
    fn custom_codes_are_checked() {
        for ok in ["abc", "Spring_Sale-2026", &"x".repeat(64)] {
            assert!(validate_custom(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ab",
            "has space",
            "dot.ted",
            "ümlaut",
            "v1",
            "HEALTHZ",
            "Metrics",
            &"x".repeat(65),
        ] {
            assert!(validate_custom(bad).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn custom_codes_are_exactly_the_documented_shape(code in "\\PC{0,70}") {
            let shaped = (3..=64).contains(&code.len())
                && code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            let reserved = RESERVED.iter().any(|r| r.eq_ignore_ascii_case(&code));
            proptest::prop_assert_eq!(validate_custom(&code).is_ok(), shaped && !reserved);
            if is_code_shaped(&code) {
                let inline = InlineCode::new(&code);
                proptest::prop_assert_eq!(inline.as_str(), code.as_str());
            }
        }
    }
}
