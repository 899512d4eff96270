//! Redirect: a resolved link becomes the answer to a tap.
//!
//! - Active link: its `redirect_status` (302 by default) to the destination (or the iOS / Android
//!   override), with the short URL's own query string appended and, when the link tracks
//!   conversions, `lg_click=<signed click id>`; a `#fragment` stays last.
//! - Disabled or expired link (including `max_clicks` spent): 302 to its `fallback_url`, or 410.
//! - Unknown code: 302 to `LINKGATE_NOT_FOUND_URL`, or 404.
//!
//! Every answer carries `Cache-Control: private, no-store` so each tap reaches the server. On a cache
//! hit this module does no I/O and awaits nothing.

use std::net::IpAddr;

use http::header::{CACHE_CONTROL, HeaderName, HeaderValue, LOCATION, REFERER, USER_AGENT};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use subtle::ConstantTimeEq;

use crate::app::App;
use crate::body::Body;
use crate::click::Agent;
use crate::click::agent::classify_tap;
use crate::click::event::{HeaderJson, header_json};
use crate::click::{ClickRecord, Queued};
use crate::error::{EdgeError, NO_STORE};
use crate::link::LinkState;
use crate::link::click_id::RawClickId;
use crate::link::code::{InlineCode, is_code_shaped};
use crate::resolve::{CachedLink, Lookup};
use crate::time::now_secs;

/// Marks load-test traffic when its value equals `LINKGATE_SYNTHETIC_TOKEN`.
pub(crate) const SYNTHETIC: HeaderName = HeaderName::from_static("x-linkgate-synthetic");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// What the redirect needs from the request.
struct Tap<'a> {
    /// The tapped code; the cache entry found for it holds the same bytes.
    code: &'a str,
    query: Option<&'a str>,
    headers: &'a HeaderMap,
    user_agent: Option<&'a [u8]>,
    agent: Agent,
    /// The user agent's text for the event.
    user_agent_json: Option<HeaderJson>,
    head: bool,
    now: i64,
    peer: Option<IpAddr>,
}

pub(crate) async fn handle<B>(app: &App, req: &Request<B>, peer: Option<IpAddr>) -> Response<Body> {
    let code = req.uri().path().strip_prefix('/').unwrap_or("");
    if !is_code_shaped(code) {
        return not_found(app);
    }
    let head = req.method() == Method::HEAD;
    let headers = req.headers();
    let user_agent = headers.get(USER_AGENT).map(HeaderValue::as_bytes);
    let (agent, user_agent_json) = classify_tap(head, user_agent);
    let tap = Tap {
        code,
        query: req.uri().query(),
        headers,
        user_agent,
        agent,
        user_agent_json,
        head,
        now: now_secs(),
        peer,
    };
    match app.resolver.lookup(code, |link| respond(app, link, &tap)) {
        Lookup::Hit(resp) => resp,
        Lookup::Unknown => not_found(app),
        // Boxed, so that a hit's future (which hyper moves on every request) stays small.
        Lookup::Miss => Box::pin(miss(app, &tap)).await,
    }
}

/// A code the cache does not hold: one store read, then the answer.
async fn miss(app: &App, tap: &Tap<'_>) -> Response<Body> {
    let code = tap.code;
    match app.resolver.fill(code).await {
        Ok(None) => not_found(app),
        Ok(Some(link)) => match app.resolver.lookup(code, |cached| respond(app, cached, tap)) {
            Lookup::Hit(resp) => resp,
            // Invalidated while we read it: serve what the store said, uncached.
            _ => respond(app, &app.resolver.pack(&link), tap),
        },
        Err(e) => {
            app.metrics.store_errors.increment(1);
            tracing::warn!(error = %e, "store read failed on a cache miss");
            // A stale entry (its generation predates a lost subscription) beats an error.
            app.resolver
                .lookup_stale(code, |link| respond(app, link, tap))
                .unwrap_or_else(|| EdgeError::Unavailable.response())
        }
    }
}

fn respond(app: &App, link: &CachedLink, tap: &Tap) -> Response<Body> {
    let mut state = link.state(tap.now);
    if state == LinkState::Active && link.max_clicks() != 0 {
        let counts = tap.agent == Agent::Human && !tap.head;
        if app.resolver.clicks_spent(link, counts) {
            state = LinkState::Expired;
        }
    }
    // HEAD is never a click. Every GET is, whatever the link's state (a late tap on an expired
    // reactivation link is still a warm lead).
    let code = tap.code;
    let click = (!tap.head).then(|| app.signer.sign(code, tap.now));
    if let (Some(events), Some(click)) = (&app.events, click) {
        events.try_send(Queued::Click(click_record(app, link, tap, state, click)));
    }
    if state != LinkState::Active {
        return match link.fallback_url() {
            Some(fallback) => redirect(StatusCode::FOUND, fallback.as_bytes().to_vec()),
            None => EdgeError::Gone.response(),
        };
    }
    // Built as bytes: the destination was validated as ASCII when minted, and the header value
    // checks every byte anyway.
    let dest = pick_destination(link, tap.user_agent);
    let query = tap.query.filter(|q| !q.is_empty());
    let track = link.track_conversions();
    // Sized exactly: a full buffer becomes the header's `Bytes` as it is, where spare capacity
    // would cost another allocation for the shared header.
    let len = dest.len()
        + query.map_or(0, |q| 1 + q.len())
        + if track {
            "&lg_click=".len() + RawClickId::id_len(code.as_bytes())
        } else {
            0
        };
    let mut location = Vec::with_capacity(len);
    let (base, fragment) = match dest.iter().position(|&b| b == b'#') {
        Some(i) => dest.split_at(i),
        None => (dest, &[][..]),
    };
    location.extend_from_slice(base);
    let mut sep = if base.contains(&b'?') { b'&' } else { b'?' };
    if let Some(q) = query {
        location.push(sep);
        location.extend_from_slice(q.as_bytes());
        sep = b'&';
    }
    if track {
        location.push(sep);
        location.extend_from_slice(b"lg_click=");
        click
            .unwrap_or_else(|| app.signer.sign(code, tap.now))
            .write_bytes(code.as_bytes(), &mut location);
    }
    location.extend_from_slice(fragment);
    debug_assert_eq!(location.len(), len, "the Location's length was computed exactly");
    let status = StatusCode::from_u16(link.redirect_status()).unwrap_or(StatusCode::FOUND);
    redirect(status, location)
}

fn click_record(app: &App, link: &CachedLink, tap: &Tap, state: LinkState, click: RawClickId) -> ClickRecord {
    let synthetic = app.config.synthetic_token.as_ref().is_some_and(|token| {
        tap.headers
            .get(&SYNTHETIC)
            .is_some_and(|v| bool::from(token.as_bytes().ct_eq(v.as_bytes())))
    });
    ClickRecord {
        code: InlineCode::new(tap.code),
        seq: link.seq(),
        click,
        campaign: link.campaign(),
        owner: link.owner(),
        recipient: link.recipient().map(Box::from),
        kind: link.kind(),
        agent: tap.agent,
        state,
        synthetic,
        ts: tap.now,
        user_agent: tap.user_agent_json.clone(),
        // Copied, not shared: holding a piece of the request would keep hyper from reusing its
        // read buffer. Taps from SMS and QR codes rarely carry a referer.
        referer: tap.headers.get(REFERER).map(|v| header_json(v.as_bytes())),
        ip: client_ip(tap),
    }
}

/// The client: the first `X-Forwarded-For` entry when a proxy set one, else the peer. Only its
/// salted hash leaves the process.
fn client_ip(tap: &Tap) -> Option<IpAddr> {
    tap.headers
        .get(&X_FORWARDED_FOR)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.trim().parse().ok())
        .or(tap.peer)
}

fn pick_destination<'l>(link: &'l CachedLink, user_agent: Option<&[u8]>) -> &'l [u8] {
    if let Some(ua) = user_agent {
        let has = |needle: &[u8]| ua.windows(needle.len()).any(|w| w == needle);
        if let Some(ios) = link
            .ios_destination()
            .filter(|_| has(b"iPhone") || has(b"iPad") || has(b"iPod"))
        {
            return ios.as_bytes();
        }
        if let Some(android) = link.android_destination().filter(|_| has(b"Android")) {
            return android.as_bytes();
        }
    }
    link.destination_bytes()
}

fn redirect(status: StatusCode, location: Vec<u8>) -> Response<Body> {
    match HeaderValue::from_maybe_shared(bytes::Bytes::from(location)) {
        Ok(v) => {
            let mut r = Response::new(Body::empty());
            *r.status_mut() = status;
            r.headers_mut().insert(LOCATION, v);
            r.headers_mut().insert(CACHE_CONTROL, NO_STORE);
            r
        }
        // Destinations are validated ASCII; only a hostile query string can get here.
        Err(_) => EdgeError::BadQuery.response(),
    }
}

fn not_found(app: &App) -> Response<Body> {
    match &app.config.not_found_url {
        Some(url) => redirect(StatusCode::FOUND, url.clone().into_bytes()),
        None => EdgeError::NotFound.response(),
    }
}
