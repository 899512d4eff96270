//! The `/v1` API: authentication, request bodies, and dispatch to the handlers.
//!
//! Keys arrive as `Authorization: Bearer <key>`. The presented key is hashed (SHA-256) and compared
//! with every configured key's hash in constant time, without stopping at the first match, so the
//! comparison leaks neither which key nor how much of it matched. Keys are never logged.

mod analytics;
mod commissions;
mod conversions;
mod export;
mod fields;
mod leads;
pub(crate) mod links;
mod partners;
pub(crate) mod qr;
mod sms;
mod stats;
mod webhooks;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::app::App;
use crate::body::Body;
use crate::body::json;
use crate::config::{ApiKey, Scope};
use crate::error::{ApiError, ErrorCode, FieldError};

/// Largest body of a single-link call.
pub(crate) const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Largest body of a bulk call (100,000 links).
pub(crate) const MAX_BULK_BODY_BYTES: usize = 64 * 1024 * 1024;

pub(crate) type ApiResult = Result<Response<Body>, ApiError>;

/// The OpenAPI 3.1 document of this API, served at `GET /v1/openapi.json`. Written by hand
/// (schemas included) and kept true by tests: `tests/openapi.rs` compares its paths with the
/// routes of [`dispatch`], and CI runs schemathesis against a running server with it.
pub(crate) const OPENAPI: &str = include_str!("openapi.json");

fn openapi() -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "public, max-age=300")
        .body(Body::from_static(OPENAPI.as_bytes()))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

pub(crate) async fn handle<B>(app: &App, req: Request<B>) -> Response<Body>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<crate::body::BoxError>,
{
    dispatch(app, req).await.unwrap_or_else(|e| {
        if matches!(e.code, ErrorCode::Unavailable | ErrorCode::InsufficientStorage) {
            app.metrics.store_errors.increment(1);
        }
        e.response()
    })
}

async fn dispatch<B>(app: &App, req: Request<B>) -> ApiResult
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<crate::body::BoxError>,
{
    // The contract is public, like the rest of the documentation.
    if req.uri().path() == "/v1/openapi.json" {
        return match *req.method() {
            Method::GET | Method::HEAD => Ok(openapi()),
            _ => Err(ApiError::method_not_allowed("GET, HEAD")),
        };
    }
    // SMS providers can only be given a URL: receipts carry their token in it, not a key.
    if let Some(provider) = req.uri().path().strip_prefix("/v1/receipts/") {
        let provider = provider.trim_end_matches('/').to_string();
        return match *req.method() {
            Method::POST if !provider.contains('/') => sms::receipts(app, &provider, req).await,
            Method::POST => Err(ApiError::not_found("API route")),
            _ => Err(ApiError::method_not_allowed("POST")),
        };
    }
    let key = authenticate(app, req.headers())?;
    if let Some(limiter) = &app.rate_limiter {
        limiter.check(key)?;
    }
    dispatch_as(app, key, req).await
}

/// Answers `req` on behalf of `key`, already authenticated: the bearer path above and the
/// console, which renders its pages from the same handlers (and so the same scopes, owner
/// limits and validation) instead of a second copy of them.
pub(crate) async fn dispatch_as<B>(app: &App, key: &ApiKey, req: Request<B>) -> ApiResult
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<crate::body::BoxError>,
{
    let reads = matches!(*req.method(), Method::GET | Method::HEAD);
    route(app, key, req).await.map_err(|e| {
        // A read of a store that cannot write (reopening after a full disk) is unavailable for a
        // moment; only a write is refused for want of space.
        if e.code == ErrorCode::InsufficientStorage && reads {
            ApiError::unavailable()
        } else {
            e
        }
    })
}

async fn route<B>(app: &App, key: &ApiKey, req: Request<B>) -> ApiResult
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<crate::body::BoxError>,
{
    let path = req.uri().path().to_string();
    let decoded = path_segments(path.trim_start_matches("/v1"))?;
    let segments: Vec<&str> = decoded.iter().map(String::as_str).collect();
    let method = req.method().clone();
    if key.owner.is_some() && !owner_route(&method, &segments) {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "this API key is limited to one owner's links, leads and stats; this route is not among them",
        ));
    }
    match (&method, segments.as_slice()) {
        (&Method::POST, ["links"]) => links::create(app, key, req).await,
        (&Method::POST, ["links", "bulk"]) => links::bulk(app, key, req).await,
        (&Method::GET, ["links"]) => links::list(app, key, &req).await,
        (&Method::GET, ["links", code]) => links::get(app, key, code).await,
        (&Method::PATCH, ["links", code]) => links::patch(app, key, code, req).await,
        (&Method::DELETE, ["links", code]) => links::delete(app, key, code).await,
        (&Method::GET, ["links", code, "qr"]) => qr::get(app, key, code, req.uri().query()).await,
        (&Method::GET, ["links", code, "stats"]) => stats::link(app, key, code).await,
        (&Method::POST, ["partners"]) => partners::put_partner(app, key, req).await,
        (&Method::GET, ["partners"]) => partners::list_partners(app, key).await,
        (&Method::GET, ["partners", id]) => partners::get_partner(app, key, id).await,
        (&Method::POST, ["campaigns"]) => partners::put_campaign(app, key, req).await,
        (&Method::GET, ["campaigns"]) => partners::list_campaigns(app, key).await,
        (&Method::GET, ["campaigns", id]) => partners::get_campaign(app, key, id).await,
        (&Method::GET, ["campaigns", id, "stats"]) => stats::campaign(app, key, id).await,
        (&Method::GET, ["campaigns", id, "leaderboard"]) => stats::leaderboard(app, key, id, req.uri().query()).await,
        (&Method::POST, ["leads"]) => leads::create(app, key, req).await,
        (&Method::GET, ["leads"]) => leads::list(app, key, req.uri().query()).await,
        (&Method::GET, ["leads", id]) => leads::get(app, key, id).await,
        (&Method::POST, ["conversions"]) => conversions::create(app, key, req).await,
        (&Method::POST, ["conversions", id, "refunds"]) => commissions::refund(app, key, id, req).await,
        (&Method::GET, ["commissions"]) => commissions::list(app, key, req.uri().query()).await,
        (&Method::GET, ["commissions", id]) => commissions::get(app, key, id).await,
        (&Method::POST, ["commissions", id, "release"]) => commissions::release(app, key, id).await,
        (&Method::POST, ["commissions", id, "reject"]) => commissions::reject(app, key, id, req).await,
        (&Method::POST, ["payouts"]) => commissions::payout(app, key, req).await,
        (&Method::GET, ["audit"]) => commissions::audit_log(app, key, req.uri().query()).await,
        (&Method::GET, ["customers", id, "binding"]) => commissions::get_binding(app, key, id).await,
        (&Method::POST, ["customers", id, "binding"]) => commissions::set_binding(app, key, id, req).await,
        (&Method::POST, ["partners", id, "adjustments"]) => commissions::adjustment(app, key, id, req).await,
        (&Method::GET, ["partners", id, "statement"]) => {
            commissions::statement_of(app, key, id, req.uri().query()).await
        }
        (&Method::GET, ["analytics"]) => analytics::get(app, key, req.uri().query()).await,
        (&Method::POST, ["sends"]) => sms::sends(app, key, req).await,
        (&Method::GET, ["campaigns", id, "funnel"]) => sms::funnel(app, key, id, req.uri().query()).await,
        (&Method::POST, ["webhooks"]) => webhooks::create(app, key, req).await,
        (&Method::GET, ["webhooks"]) => webhooks::list(app, key).await,
        (&Method::GET, ["webhooks", id]) => webhooks::get(app, key, id).await,
        (&Method::DELETE, ["webhooks", id]) => webhooks::delete(app, key, id).await,
        (&Method::GET, ["webhooks", id, "deliveries"]) => webhooks::deliveries(app, key, id, req.uri().query()).await,
        (&Method::POST, ["webhooks", id, "deliveries", did, "retry"]) => webhooks::retry(app, key, id, did).await,
        (_, ["links" | "leads" | "webhooks"]) => Err(ApiError::method_not_allowed("GET, POST")),
        (_, ["webhooks", _]) => Err(ApiError::method_not_allowed("GET, DELETE")),
        (_, ["customers", _, "binding"]) => Err(ApiError::method_not_allowed("GET, POST")),
        (_, ["webhooks", _, "deliveries"]) => Err(ApiError::method_not_allowed("GET")),
        (_, ["webhooks", _, "deliveries", _, "retry"]) => Err(ApiError::method_not_allowed("POST")),
        (_, ["partners" | "campaigns"]) => Err(ApiError::method_not_allowed("GET, POST")),
        (
            _,
            ["conversions" | "sends" | "payouts"]
            | ["links", "bulk"]
            | ["conversions", _, "refunds"]
            | ["partners", _, "adjustments"]
            | ["commissions", _, "release" | "reject"],
        ) => Err(ApiError::method_not_allowed("POST")),
        (_, ["links", _]) => Err(ApiError::method_not_allowed("GET, PATCH, DELETE")),
        (
            _,
            ["analytics"]
            | ["partners" | "campaigns" | "leads" | "commissions", _]
            | ["commissions" | "audit"]
            | ["partners", _, "statement"]
            | ["links", _, "qr" | "stats"]
            | ["campaigns", _, "stats" | "leaderboard" | "funnel"],
        ) => Err(ApiError::method_not_allowed("GET")),
        _ => Err(ApiError::not_found("API route")),
    }
}

/// The routes a key limited to one owner (`owner:<id>`) may use: reads of that owner's links,
/// leads, stats and analytics. Everything else answers 403 to such a key, so a route that does
/// not yet know how to limit itself to an owner can never leak or change another's data.
fn owner_route(method: &Method, segments: &[&str]) -> bool {
    *method == Method::GET
        && matches!(
            segments,
            ["links"]
                | ["links", _]
                | ["links", _, "qr" | "stats"]
                | ["leads"]
                | ["leads", _]
                | ["analytics"]
                | ["campaigns"]
                | ["campaigns", _, "funnel"]
                | ["commissions"]
                | ["commissions", _]
                | ["partners", _, "statement"]
        )
}

/// Whether `key` may see a record of `owner` (every record, for a key without an owner).
pub(crate) fn owns(key: &ApiKey, owner: Option<&str>) -> bool {
    key.owner.as_deref().is_none_or(|o| owner == Some(o))
}

/// The segments of a path, each percent-decoded (ids may hold any character but controls, so
/// `/v1/campaigns/%E6%98%A5%20sale/funnel` names the campaign `春 sale`). A segment that does not
/// decode to UTF-8 names nothing: 404.
pub(crate) fn path_segments(path: &str) -> Result<Vec<String>, ApiError> {
    path.trim_matches('/')
        .split('/')
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|s| s.into_owned())
                .map_err(|_| ApiError::not_found("API route"))
        })
        .collect()
}

/// Finds the key behind `Authorization: Bearer …`.
pub(crate) fn authenticate<'a>(app: &'a App, headers: &HeaderMap) -> Result<&'a ApiKey, ApiError> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .ok_or_else(ApiError::unauthorized)?;
    key_for(app, presented).ok_or_else(ApiError::unauthorized)
}

/// The configured key whose secret is `presented`: its hash compared with every key's in
/// constant time, without stopping at the first match.
pub(crate) fn key_for<'a>(app: &'a App, presented: &str) -> Option<&'a ApiKey> {
    let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    let mut found = None;
    for key in &app.api_keys {
        if bool::from(key.hash.ct_eq(&hash)) {
            found = Some(key);
        }
    }
    found
}

pub(crate) fn require(key: &ApiKey, scope: Scope) -> Result<(), ApiError> {
    if key.allows(scope) {
        Ok(())
    } else {
        Err(ApiError::forbidden(scope.as_str()))
    }
}

/// Bytes past the limit that are still read (and dropped) before answering 413, within
/// [`DRAIN_TIMEOUT`], so the client reads our answer instead of a connection reset.
pub(crate) const DRAIN_EXTRA_BYTES: u64 = 8 * 1024 * 1024;
pub(crate) const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Reads a body of at most `limit` bytes; 413 beyond it.
pub(crate) async fn read_body<B>(req: Request<B>, limit: usize) -> Result<Bytes, ApiError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<crate::body::BoxError>,
{
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let body = req.into_body();
    if declared.is_some_and(|n| n > limit as u64) {
        if declared.is_some_and(|n| n <= limit as u64 + DRAIN_EXTRA_BYTES) {
            drain(body).await;
        }
        return Err(ApiError::payload_too_large(limit));
    }
    tokio::pin!(body);
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::invalid_json(format!("could not read the body: {}", e.into())))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                drain(body).await;
                return Err(ApiError::payload_too_large(limit));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// Reads and drops what is left of a refused body, bounded in bytes and time.
async fn drain<B: http_body::Body<Data = Bytes>>(body: B) {
    let mut left = DRAIN_EXTRA_BYTES as i64;
    let read = async {
        tokio::pin!(body);
        while let Some(Ok(frame)) = body.frame().await {
            left -= frame.data_ref().map_or(0, |d| d.len() as i64);
            if left < 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, read).await;
}

/// Parses a body that must be a JSON object.
pub(crate) fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::field("body", "must be a JSON object")),
        Err(e) => Err(ApiError::invalid_json(format!("the body is not valid JSON: {e}"))),
    }
}

pub(crate) fn ok_json(status: StatusCode, v: &Value) -> ApiResult {
    Ok(json(status, serde_json::to_vec(v).unwrap_or_default()))
}

/// Page size of lists (links, leads): default and maximum.
pub(crate) const DEFAULT_PAGE: usize = 100;
pub(crate) const MAX_PAGE: usize = 1000;

/// A list call's filter and page: `campaign_id`, `owner_id`, `cursor`, `limit`.
pub(crate) struct PageQuery {
    pub filter: crate::store::LinkFilter,
    pub cursor: u64,
    pub limit: usize,
}

/// Parses a list query. `other` sees every other parameter, may record an error, and answers
/// whether it knew the parameter; unknown ones are refused.
pub(crate) fn page_query(
    key: &ApiKey,
    query: Option<&str>,
    mut other: impl FnMut(&str, &str, &mut Vec<FieldError>) -> bool,
) -> Result<PageQuery, ApiError> {
    let mut q = PageQuery {
        filter: Default::default(),
        cursor: 0,
        limit: DEFAULT_PAGE,
    };
    let mut errors = Vec::new();
    for (k, v) in query_pairs(query) {
        match k.as_str() {
            // The same rules as the ids stored, so a filter can only name what could exist.
            "campaign_id" | "owner_id" => match crate::link::input::id(&Value::String(v)) {
                Ok(id) if k == "campaign_id" => q.filter.campaign_id = id,
                Ok(id) => q.filter.owner_id = id,
                Err(m) => errors.push(FieldError::new(k.as_str(), m)),
            },
            "cursor" => match v.parse() {
                Ok(c) => q.cursor = c,
                Err(_) => errors.push(FieldError::new("cursor", "is not a cursor this API returned")),
            },
            "limit" => match limit_param(&v, MAX_PAGE) {
                Ok(n) => q.limit = n,
                Err(e) => errors.push(e),
            },
            name => {
                if !other(name, &v, &mut errors) {
                    errors.push(FieldError::new(name, "unknown query parameter"));
                }
            }
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    // A key limited to one owner pages through that owner's records only.
    if let Some(owner) = &key.owner {
        if q.filter.owner_id.as_ref().is_some_and(|o| o != owner) {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "this API key reads only its own owner's records",
            ));
        }
        q.filter.owner_id = Some(owner.clone());
    }
    Ok(q)
}

/// A `limit` query parameter: an integer from 1 to `max`.
pub(crate) fn limit_param(v: &str, max: usize) -> Result<usize, FieldError> {
    match v.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(FieldError::new("limit", format!("must be an integer from 1 to {max}"))),
    }
}

/// Parses `a=1&b=2` into pairs, decoded as `application/x-www-form-urlencoded` (the
/// `form_urlencoded` crate: `+` is a space, `%XX` a byte, a `%` not followed by two hex digits
/// stays a `%`, invalid UTF-8 becomes U+FFFD).
pub(crate) fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn query_strings_decode_like_forms() {
        assert_eq!(
            query_pairs(Some("campaign_id=spring+sale&owner_id=%E5%BC%A0&limit=5")),
            [
                ("campaign_id".to_string(), "spring sale".to_string()),
                ("owner_id".into(), "张".into()),
                ("limit".into(), "5".into())
            ]
        );
        // `%+1` is not an escape: no control byte may come out of it.
        assert_eq!(query_pairs(Some("a=%+1")), [("a".to_string(), "% 1".to_string())]);
        assert_eq!(
            query_pairs(Some("a=%zz&&b")),
            [("a".to_string(), "%zz".to_string()), ("b".into(), "".into())]
        );
        assert!(query_pairs(None).is_empty());
    }

    proptest! {
        #[test]
        fn decoding_any_query_never_panics_and_round_trips(pairs in proptest::collection::vec(("\\PC{0,12}", "\\PC{0,12}"), 0..6)) {
            let encoded = form_urlencoded::Serializer::new(String::new()).extend_pairs(&pairs).finish();
            let decoded = query_pairs(Some(&encoded));
            prop_assert_eq!(decoded, pairs);
        }

        #[test]
        fn arbitrary_bytes_decode_without_control_bytes_from_escapes(q in "[ -~]{0,40}") {
            for (k, v) in query_pairs(Some(&q)) {
                // A control character can only come from a `%0X`/`%1X`/`%7F` escape written out.
                for c in k.chars().chain(v.chars()).filter(|c| c.is_control()) {
                    let hex = format!("%{:02X}", c as u32);
                    prop_assert!(q.to_ascii_uppercase().contains(&hex), "{:?} from {:?}", c, q);
                }
            }
        }
    }
}
