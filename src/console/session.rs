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
fn key_id(app: &App, key: &ApiKey) -> String {
    hex(&mac(&app.console_secret, &[b"key", &key.hash])[..16])
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
        let parts: Vec<&str> = value.split('.').collect();
        let [id, issued, seen, nonce, sig] = parts.as_slice() else {
            return None;
        };
        let expected = hex(&mac(
            &app.console_secret,
            &[id.as_bytes(), issued.as_bytes(), seen.as_bytes(), nonce.as_bytes()],
        ));
        if !bool::from(expected.as_bytes().ct_eq(sig.as_bytes())) {
            return None;
        }
        let (issued, seen): (i64, i64) = (issued.parse().ok()?, seen.parse().ok()?);
        if now - issued > ABSOLUTE_SECS || now - seen > IDLE_SECS || seen < issued {
            return None;
        }
        let mut found = None;
        for k in &app.api_keys {
            if bool::from(key_id(app, k).as_bytes().ct_eq(id.as_bytes())) {
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
        let (id, issued, seen) = (key_id(app, self.key), self.issued.to_string(), now.to_string());
        let sig = hex(&mac(
            &app.console_secret,
            &[id.as_bytes(), issued.as_bytes(), seen.as_bytes(), self.nonce.as_bytes()],
        ));
        format!("{id}.{issued}.{seen}.{}.{sig}", self.nonce)
    }

    /// Whether a request at `now` should carry a fresh cookie (sliding the idle expiry).
    pub(crate) fn needs_refresh(&self, now: i64) -> bool {
        now - self.seen >= REFRESH_SECS
    }

    /// The token every state-changing form of this session carries.
    pub(crate) fn csrf(&self, app: &App) -> String {
        hex(&mac(&app.console_secret, &[b"csrf", self.nonce.as_bytes()])[..16])
    }

    /// Whether `token` is this session's form token (constant time).
    pub(crate) fn csrf_ok(&self, app: &App, token: &str) -> bool {
        bool::from(self.csrf(app).as_bytes().ct_eq(token.as_bytes()))
    }
}

/// The `Set-Cookie` value carrying `value` (empty: clearing it). `local` is plain HTTP on a
/// loopback address.
pub(crate) fn set_cookie(value: &str, local: bool) -> String {
    let max_age = if value.is_empty() { 0 } else { ABSOLUTE_SECS };
    if local {
        format!("{LOCAL_COOKIE}={value}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={max_age}")
    } else {
        format!("{SECURE_COOKIE}={value}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={max_age}")
    }
}

/// The session cookie's value among a request's `Cookie` headers (the name for its transport).
pub(crate) fn cookie_in(headers: &http::HeaderMap, local: bool) -> Option<&str> {
    let name = if local { LOCAL_COOKIE } else { SECURE_COOKIE };
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}
