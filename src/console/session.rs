//! Console sessions: a signed cookie instead of server-side state, so any replica accepts it.
//!
//! The cookie holds `<key>.<issued>.<seen>.<nonce>.<mac>`: which API key signed in (an HMAC of
//! the key's hash, never the key), when the session began and was last used (Unix seconds), a
//! random nonce, and an HMAC-SHA256 of the rest under [`App::console_secret`]. A session ends
//! [`IDLE_SECS`] after its last use or [`ABSOLUTE_SECS`] after sign-in, whichever is first, and at
//! once when its key leaves `LINKGATE_API_KEYS` (the cookie names a key, and only configured keys
//! are found). Signing out clears the cookie in the browser; a copied cookie stays valid until
//! it expires, so a leaked one is revoked by removing the key (or changing the click secret,
//! which signs every session).
//!
//! Forms that change something carry a token derived from the session's nonce ([`Session::csrf`]),
//! checked in constant time beside `Origin` and `Sec-Fetch-Site`.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::app::App;
use crate::config::ApiKey;
use crate::hash::hex;

/// A session ends this long after its last request.
pub(crate) const IDLE_SECS: i64 = 2 * 3600;
/// A session ends this long after sign-in, however busy.
pub(crate) const ABSOLUTE_SECS: i64 = 12 * 3600;
/// A used session's cookie is written again (its `seen` moved) at most this often.
const REFRESH_SECS: i64 = 60;

/// The cookie's name behind HTTPS: `__Host-` makes the browser refuse it unless `Secure`, for
/// path `/` and without a domain, so no other host or path can plant or read it.
pub(crate) const SECURE_COOKIE: &str = "__Host-lg_session";
/// The cookie's name on a loopback address over plain HTTP (development), where `Secure` and so
/// the `__Host-` prefix cannot be used.
pub(crate) const LOCAL_COOKIE: &str = "lg_session";

/// A valid session: the key it acts with and what its cookie said.
pub(crate) struct Session<'a> {
    pub key: &'a ApiKey,
    issued: i64,
    seen: i64,
    nonce: String,
}

fn mac(secret: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any size");
    for p in parts {
        m.update(p);
        m.update(b"\x1f");
    }
    m.finalize().into_bytes().into()
}

/// Names an API key in a cookie without revealing anything of it.
fn key_id(secret: &[u8; 32], key: &ApiKey) -> String {
    hex(&mac(secret, &[b"key", &key.hash])[..16])
}

/// The signature of a cookie's fields.
fn signature(secret: &[u8; 32], id: &str, issued: &str, seen: &str, nonce: &str) -> String {
    hex(&mac(
        secret,
        &[id.as_bytes(), issued.as_bytes(), seen.as_bytes(), nonce.as_bytes()],
    ))
}

impl<'a> Session<'a> {
    /// A new session for `key`, signed in at `now`.
    pub(crate) fn start(key: &'a ApiKey, now: i64) -> Self {
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).expect("the OS random source failed");
        Self {
            key,
            issued: now,
            seen: now,
            nonce: hex(&nonce),
        }
    }

    /// The session a cookie value names, if it is signed by us, unexpired at `now`, and its key
    /// still configured.
    pub(crate) fn verify(app: &'a App, value: &str, now: i64) -> Option<Self> {
        Self::verify_with(&app.console_secret, &app.api_keys, value, now)
    }

    fn verify_with(secret: &[u8; 32], keys: &'a [ApiKey], value: &str, now: i64) -> Option<Self> {
        let parts: Vec<&str> = value.split('.').collect();
        let [id, issued, seen, nonce, sig] = parts.as_slice() else {
            return None;
        };
        let expected = signature(secret, id, issued, seen, nonce);
        if !bool::from(expected.as_bytes().ct_eq(sig.as_bytes())) {
            return None;
        }
        let (issued, seen): (i64, i64) = (issued.parse().ok()?, seen.parse().ok()?);
        if now - issued > ABSOLUTE_SECS || now - seen > IDLE_SECS || seen < issued {
            return None;
        }
        let mut found = None;
        for k in keys {
            if bool::from(key_id(secret, k).as_bytes().ct_eq(id.as_bytes())) {
                found = Some(k);
            }
        }
        Some(Self {
            key: found?,
            issued,
            seen,
            nonce: nonce.to_string(),
        })
    }

    /// The cookie value of this session as used at `now`.
    pub(crate) fn cookie_value(&self, app: &App, now: i64) -> String {
        self.value_with(&app.console_secret, now)
    }

    fn value_with(&self, secret: &[u8; 32], now: i64) -> String {
        let (id, issued, seen) = (key_id(secret, self.key), self.issued.to_string(), now.to_string());
        let sig = signature(secret, &id, &issued, &seen, &self.nonce);
        format!("{id}.{issued}.{seen}.{}.{sig}", self.nonce)
    }

    /// Whether a request at `now` should carry a fresh cookie (sliding the idle expiry).
    pub(crate) fn needs_refresh(&self, now: i64) -> bool {
        now - self.seen >= REFRESH_SECS
    }

    /// The token every state-changing form of this session carries.
    pub(crate) fn csrf(&self, app: &App) -> String {
        self.csrf_with(&app.console_secret)
    }

    fn csrf_with(&self, secret: &[u8; 32]) -> String {
        hex(&mac(secret, &[b"csrf", self.nonce.as_bytes()])[..16])
    }

    /// Whether `token` is this session's form token (constant time).
    pub(crate) fn csrf_ok(&self, app: &App, token: &str) -> bool {
        bool::from(self.csrf(app).as_bytes().ct_eq(token.as_bytes()))
    }
}

/// The `Set-Cookie` value carrying `value` (empty: clearing it). `local` is plain HTTP on a
/// loopback address.
pub(crate) fn cookie_header(value: &str, local: bool) -> String {
    let max_age = if value.is_empty() { 0 } else { ABSOLUTE_SECS };
    if local {
        format!("{LOCAL_COOKIE}={value}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={max_age}")
    } else {
        format!("{SECURE_COOKIE}={value}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={max_age}")
    }
}

/// The session cookie's name for the request's transport (`local`: plain HTTP on loopback).
pub(crate) fn cookie_name(local: bool) -> &'static str {
    if local { LOCAL_COOKIE } else { SECURE_COOKIE }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: [u8; 32] = [7; 32];

    fn keys() -> Vec<ApiKey> {
        vec![
            ApiKey::new("first-key-0123456789", vec![]),
            ApiKey::new("second-key-0123456789", vec![]),
        ]
    }

    #[test]
    fn a_cookie_names_its_key_and_lives_within_the_idle_and_absolute_limits() {
        let keys = keys();
        let t0 = 1_800_000_000;
        let s = Session::start(&keys[1], t0);
        let value = s.value_with(&SECRET, t0);
        assert!(!value.contains("second-key"), "the key itself is never in the cookie");
        let back = Session::verify_with(&SECRET, &keys, &value, t0 + 60).unwrap();
        assert_eq!(back.key.hash, keys[1].hash);
        assert_eq!(
            back.csrf_with(&SECRET),
            s.csrf_with(&SECRET),
            "the form token survives a refresh"
        );
        // Idle: unused for longer than IDLE_SECS.
        assert!(Session::verify_with(&SECRET, &keys, &value, t0 + IDLE_SECS).is_some());
        assert!(Session::verify_with(&SECRET, &keys, &value, t0 + IDLE_SECS + 1).is_none());
        // Used every hour, it still ends ABSOLUTE_SECS after sign-in.
        let late = s.value_with(&SECRET, t0 + ABSOLUTE_SECS);
        assert!(Session::verify_with(&SECRET, &keys, &late, t0 + ABSOLUTE_SECS).is_some());
        let later = s.value_with(&SECRET, t0 + ABSOLUTE_SECS + 1);
        assert!(Session::verify_with(&SECRET, &keys, &later, t0 + ABSOLUTE_SECS + 1).is_none());
        // Another secret, a removed key, a changed field: no session.
        assert!(Session::verify_with(&[8; 32], &keys, &value, t0).is_none());
        assert!(Session::verify_with(&SECRET, &keys[..1], &value, t0).is_none());
        let moved = value.replacen(&format!(".{t0}."), &format!(".{}.", t0 + 1), 1);
        assert!(Session::verify_with(&SECRET, &keys, &moved, t0 + 1).is_none());
    }

    proptest::proptest! {
        #[test]
        fn any_cookie_value_is_refused_without_panicking(v in "\\PC{0,200}") {
            proptest::prop_assert!(Session::verify_with(&SECRET, &keys(), &v, 1_800_000_000).is_none());
        }
    }
}
