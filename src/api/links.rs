//! `/v1/links`: mint one or many, list (JSON pages or a CSV export), read, patch, delete.

use std::collections::HashMap;
use std::future::Future;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use serde::Serialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::{
    ApiResult, MAX_BODY_BYTES, MAX_BULK_BODY_BYTES, MAX_PAGE, ok_json, page_query, parse_object, read_body, require,
};
use crate::app::App;
use crate::body::Body;
use crate::body::json;
use crate::config::{ApiKey, Scope};
use crate::error::{ApiError, ErrorCode, FieldError};
use crate::link::code::is_code_shaped;
use crate::link::input::{Errors, LinkPatch, Rules, merged, parse_new};
use crate::link::{Link, short_url};
use crate::store::{Invalidation, LinkFilter, Minted, StoreError};
use crate::time::now_secs;

/// Most links in one bulk call.
pub(crate) const MAX_BULK_ITEMS: usize = 100_000;
/// Most field errors listed in one answer.
pub(crate) const MAX_ERROR_DETAILS: usize = 1000;
/// Longest accepted `Idempotency-Key`.
pub(crate) const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

fn rules(app: &App) -> Rules<'_> {
    Rules {
        allowlist: &app.config.dest_allowlist,
        now: now_secs(),
    }
}

pub(crate) async fn create<B>(app: &App, key: &ApiKey, req: Request<B>) -> ApiResult
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<crate::body::BoxError>,
{
    require(key, Scope::LinksWrite)?;
    let idem = idempotency_key(req.headers())?;
    let body = read_body(req, MAX_BODY_BYTES).await?;
    with_idempotency(app, key, "POST /v1/links", idem, &body, || async {
        let obj = parse_object(&body)?;
        let mut list = Vec::new();
        let Some(link) = parse_new(
            &obj,
            &rules(app),
            &mut Errors {
                index: None,
                list: &mut list,
            },
        ) else {
            return Err(ApiError::validation(list));
        };
        let custom = !link.code.is_empty();
        let minted = app.store.mint(vec![link]).await.map_err(|e| match e {
            StoreError::CodesTaken(taken) => ApiError::code_taken(&taken[0].1),
            other => other.into(),
        })?;
        let minted = minted.into_iter().next().ok_or_else(ApiError::unavailable)?;
        let status = match &minted {
            Minted::Created(link) => {
                // A custom code may sit in other replicas' negative caches: tell them. Then cache
                // it here (publishing drops it locally too).
                if custom {
                    publish(app, &link.code).await;
                }
                app.resolver.prime(link);
                StatusCode::CREATED
            }
            Minted::Existing(_) => StatusCode::OK,
        };
        Ok((
            status,
            serde_json::to_vec(&minted.link().to_api_json(&app.config.public_base_url)).unwrap_or_default(),
        ))
    })
    .await
}

/// One item of a bulk answer.
#[derive(Serialize)]
struct BulkItem<'a> {
    code: &'a str,
    short_url: String,
    destination: &'a str,
    campaign_id: Option<&'a str>,
    owner_id: Option<&'a str>,
    recipient_id: Option<&'a str>,
    /// False when the `(campaign_id, recipient_id)` pair already had this link.
    created: bool,
}

pub(crate) async fn bulk<B>(app: &App, key: &ApiKey, req: Request<B>) -> ApiResult
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<crate::body::BoxError>,
{
    require(key, Scope::LinksWrite)?;
    let idem = idempotency_key(req.headers())?;
    let body = read_body(req, MAX_BULK_BODY_BYTES).await?;
    with_idempotency(app, key, "POST /v1/links/bulk", idem, &body, || {
        mint_bulk(app, body.clone())
    })
    .await
}

/// Runs CPU-bound work (a 100,000-item call spends ~100 ms parsing and encoding) on the blocking
/// pool, so the taps served by this worker thread do not wait behind it.
async fn off_the_worker<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        tracing::error!(error = %e, "bulk mint task failed");
        ApiError::unavailable()
    })
}

async fn mint_bulk(app: &App, body: Bytes) -> Result<(StatusCode, Vec<u8>), ApiError> {
    let allowlist = app.config.dest_allowlist.clone();
    let (links, alias) = off_the_worker(move || {
        let obj = parse_object(&body)?;
        let rules = Rules {
            allowlist: &allowlist,
            now: now_secs(),
        };
        validate_bulk(&rules, &obj)
    })
    .await??;
    let custom: Vec<String> = links
        .iter()
        .filter(|l| !l.code.is_empty())
        .map(|l| l.code.clone())
        .collect();
    let unique_to_request: Vec<usize> = (0..alias.len()).filter(|&i| alias[i].is_none()).collect();
    let minted = app.store.mint(links).await.map_err(|e| match e {
        StoreError::CodesTaken(taken) => {
            let taken = taken
                .into_iter()
                .map(|(u, code)| (unique_to_request[u], code))
                .collect();
            ApiError::from(StoreError::CodesTaken(taken))
        }
        other => other.into(),
    })?;
    for code in &custom {
        publish(app, code).await;
    }
    let resolver = app.resolver.clone();
    let base = app.config.public_base_url.clone();
    let out = off_the_worker(move || {
        // Campaign links are tapped soon after they are sent: cache them here now rather than on
        // each first tap (other replicas fill on their first miss).
        for m in &minted {
            if let Minted::Created(link) = m {
                resolver.prime(link);
            }
        }
        bulk_answer(&base, &minted, &alias, &unique_to_request)
    })
    .await?;
    Ok((StatusCode::CREATED, out))
}

/// The bulk answer: one item per request item, in request order.
fn bulk_answer(base: &str, minted: &[Minted], alias: &[Option<usize>], unique_to_request: &[usize]) -> Vec<u8> {
    let mut by_request: Vec<Option<&Minted>> = vec![None; alias.len()];
    for (u, m) in unique_to_request.iter().zip(minted) {
        by_request[*u] = Some(m);
    }
    let items: Vec<BulkItem> = (0..alias.len())
        .map(|i| {
            let (m, dup) = match alias[i] {
                Some(first) => (by_request[first], true),
                None => (by_request[i], false),
            };
            let m = m.expect("every unique item was minted");
            let l = m.link();
            BulkItem {
                code: &l.code,
                short_url: short_url(base, &l.code),
                destination: &l.destination,
                campaign_id: l.campaign_id.as_deref(),
                owner_id: l.owner_id.as_deref(),
                recipient_id: l.recipient_id.as_deref(),
                created: matches!(m, Minted::Created(_)) && !dup,
            }
        })
        .collect();
    serde_json::to_vec(&json!({ "links": items })).unwrap_or_default()
}

/// Validates every item before anything is written. Returns the distinct links to mint and, per
/// request item, the earlier item it repeats (same `(campaign_id, recipient_id)`), if any.
fn validate_bulk(rules: &Rules, obj: &Map<String, Value>) -> Result<(Vec<Link>, Vec<Option<usize>>), ApiError> {
    let mut errors = Vec::new();
    for k in obj.keys().filter(|k| *k != "defaults" && *k != "links") {
        errors.push(FieldError::new(k.as_str(), "unknown field (expected defaults, links)"));
    }
    let empty = Map::new();
    let defaults = match obj.get("defaults") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(m)) => m,
        Some(_) => return Err(ApiError::field("defaults", "must be an object")),
    };
    let items = match obj.get("links") {
        Some(Value::Array(a)) if a.is_empty() => {
            return Err(ApiError::field("links", "must not be empty"));
        }
        Some(Value::Array(a)) if a.len() > MAX_BULK_ITEMS => {
            return Err(ApiError::field(
                "links",
                format!("at most {MAX_BULK_ITEMS} links per call"),
            ));
        }
        Some(Value::Array(a)) => a,
        _ => {
            return Err(ApiError::field("links", "is required: an array of link objects"));
        }
    };
    let mut links = Vec::with_capacity(items.len());
    let mut alias = Vec::with_capacity(items.len());
    let mut codes: HashMap<String, usize> = HashMap::new();
    let mut pairs: HashMap<(String, String), usize> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        let Some(item) = item.as_object() else {
            errors.push(FieldError {
                index: Some(i),
                field: "links".into(),
                message: "each item must be an object".into(),
            });
            alias.push(None);
            continue;
        };
        let fields = merged(defaults, item);
        let Some(link) = parse_new(
            &fields,
            rules,
            &mut Errors {
                index: Some(i),
                list: &mut errors,
            },
        ) else {
            alias.push(None);
            continue;
        };
        if let Some((c, r)) = link.recipient_key() {
            if let Some(&first) = pairs.get(&(c.to_string(), r.to_string())) {
                alias.push(Some(first));
                continue;
            }
            pairs.insert((c.to_string(), r.to_string()), i);
        }
        if !link.code.is_empty() {
            if let Some(&first) = codes.get(&link.code) {
                errors.push(FieldError {
                    index: Some(i),
                    field: "code".into(),
                    message: format!("duplicates the code of item {first}"),
                });
                alias.push(None);
                continue;
            }
            codes.insert(link.code.clone(), i);
        }
        alias.push(None);
        links.push(link);
    }
    if errors.is_empty() {
        return Ok((links, alias));
    }
    let total = errors.len();
    errors.truncate(MAX_ERROR_DETAILS);
    let mut e = ApiError::validation(errors);
    e.message = format!("{total} invalid field(s); nothing was created");
    Err(e)
}

/// `GET /v1/links`: a page of links (oldest first), every one as CSV (`format=csv`), or the
/// link of one recipient of a campaign (`campaign_id` + `recipient_id`, read from the
/// recipient's claim in one lookup, not by paging).
pub(crate) async fn list<B>(app: &App, key: &ApiKey, req: &Request<B>) -> ApiResult {
    require(key, Scope::LinksRead)?;
    let (mut csv, mut recipient) = (false, None);
    let page = page_query(key, req.uri().query(), |k, v, errors| {
        match k {
            "format" => match super::export::wants_csv(v) {
                Ok(c) => csv = c,
                Err(e) => errors.push(e),
            },
            "recipient_id" => match crate::link::input::id(&Value::String(v.to_string())) {
                Ok(r) => recipient = r,
                Err(m) => errors.push(FieldError::new("recipient_id", m)),
            },
            _ => return false,
        }
        true
    })?;
    if let Some(recipient) = recipient {
        let Some(campaign) = page.filter.campaign_id.clone() else {
            return Err(ApiError::field("recipient_id", "needs campaign_id"));
        };
        let code = app
            .store
            .recipient_codes(&[(campaign, recipient)])
            .await?
            .pop()
            .flatten();
        let link = match code {
            Some(code) => app.store.get_link(&code).await?,
            None => None,
        };
        // The owner filter (a store key's own, or asked for) still applies.
        let links: Vec<Link> = link
            .filter(|l| page.filter.owner_id.is_none() || l.owner_id == page.filter.owner_id)
            .into_iter()
            .collect();
        return if csv {
            let rows = csv_rows(&links, &app.config.public_base_url);
            super::export::csv(CSV_HEADER, "links.csv", move |_| {
                let rows = rows.clone();
                async move { Ok((rows, None)) }
            })
            .await
        } else {
            list_json(app, &links, None)
        };
    }
    if csv {
        return csv_export(app, page.filter).await;
    }
    let page = app.store.list_links(&page.filter, page.cursor, page.limit).await?;
    list_json(app, &page.links, page.next_cursor)
}

fn list_json(app: &App, links: &[Link], next_cursor: Option<u64>) -> ApiResult {
    let base = &app.config.public_base_url;
    let links: Vec<Value> = links.iter().map(|l| l.to_api_json(base)).collect();
    ok_json(
        StatusCode::OK,
        &json!({"links": links, "next_cursor": next_cursor.map(|c| c.to_string())}),
    )
}

const CSV_HEADER: &str = "recipient_id,code,short_url\n";

/// Streams `recipient_id,code,short_url` rows of every link matching `filter`.
async fn csv_export(app: &App, filter: LinkFilter) -> ApiResult {
    let store = app.store.clone();
    let base = app.config.public_base_url.clone();
    super::export::csv(CSV_HEADER, "links.csv", move |cursor| {
        let (store, base, filter) = (store.clone(), base.clone(), filter.clone());
        async move {
            let page = store.list_links(&filter, cursor, MAX_PAGE).await?;
            Ok((csv_rows(&page.links, &base), page.next_cursor))
        }
    })
    .await
}

/// One page of links as CSV rows.
fn csv_rows(links: &[Link], base: &str) -> Bytes {
    let mut chunk = String::with_capacity(links.len() * 64);
    for l in links {
        chunk.push_str(&crate::body::csv_cell(l.recipient_id.as_deref().unwrap_or("")));
        chunk.push(',');
        chunk.push_str(&l.code);
        chunk.push(',');
        chunk.push_str(&short_url(base, &l.code));
        chunk.push('\n');
    }
    Bytes::from(chunk)
}

pub(crate) async fn get(app: &App, key: &ApiKey, code: &str) -> ApiResult {
    require(key, Scope::LinksRead)?;
    let link = load(app, code).await?;
    if !super::owns(key, link.owner_id.as_deref()) {
        return Err(ApiError::not_found("link"));
    }
    ok_json(StatusCode::OK, &link.to_api_json(&app.config.public_base_url))
}

async fn load(app: &App, code: &str) -> Result<Link, ApiError> {
    if !is_code_shaped(code) {
        return Err(ApiError::not_found("link"));
    }
    app.store
        .get_link(code)
        .await?
        .ok_or_else(|| ApiError::not_found("link"))
}

pub(crate) async fn patch<B>(app: &App, key: &ApiKey, code: &str, req: Request<B>) -> ApiResult
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<crate::body::BoxError>,
{
    require(key, Scope::LinksWrite)?;
    let body = read_body(req, MAX_BODY_BYTES).await?;
    let obj = parse_object(&body)?;
    let patch = LinkPatch::parse(&obj, &rules(app)).map_err(ApiError::validation)?;
    if !is_code_shaped(code) {
        return Err(ApiError::not_found("link"));
    }
    let link = app
        .store
        .update_link(code, &patch, now_secs())
        .await?
        .ok_or_else(|| ApiError::not_found("link"))?;
    publish(app, code).await;
    ok_json(StatusCode::OK, &link.to_api_json(&app.config.public_base_url))
}

pub(crate) async fn delete(app: &App, key: &ApiKey, code: &str) -> ApiResult {
    require(key, Scope::LinksWrite)?;
    if !is_code_shaped(code) || !app.store.delete_link(code).await? {
        return Err(ApiError::not_found("link"));
    }
    publish(app, code).await;
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    Ok(r)
}

/// Drops `code` from this replica's cache and tells the others.
async fn publish(app: &App, code: &str) {
    app.resolver.invalidate(&Invalidation::Code(code.to_string()));
    if let Err(e) = app.store.publish_invalidation(code).await {
        tracing::warn!(error = %e, "could not publish a cache invalidation; other replicas may serve stale data until they reconnect");
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(s) if !s.is_empty() && s.len() <= MAX_IDEMPOTENCY_KEY_LEN => Ok(Some(s.to_string())),
        _ => Err(ApiError::field(
            "Idempotency-Key",
            format!("must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters"),
        )),
    }
}

/// Runs `f` once per `(API key, route, Idempotency-Key)`: a retry gets the first answer back. A
/// retry with a different body is refused. Only successful answers are stored.
async fn with_idempotency<F, Fut>(
    app: &App,
    key: &ApiKey,
    route: &str,
    idem: Option<String>,
    body: &[u8],
    f: F,
) -> ApiResult
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<(StatusCode, Vec<u8>), ApiError>>,
{
    let Some(idem) = idem else {
        let (status, out) = f().await?;
        return Ok(json(status, out));
    };
    let mut h = Sha256::new();
    h.update(key.hash);
    h.update(route.as_bytes());
    h.update([0]);
    h.update(idem.as_bytes());
    let id = crate::hash::hex(&h.finalize());
    let body_hash: [u8; 32] = Sha256::digest(body).into();
    if let Some(stored) = app.store.idempotency_get(&id).await? {
        if stored.len() < 34 || stored[2..34] != body_hash {
            return Err(ApiError::new(
                ErrorCode::ValidationFailed,
                "this Idempotency-Key was used with a different request body",
            ));
        }
        let status = StatusCode::from_u16(u16::from_be_bytes([stored[0], stored[1]])).unwrap_or(StatusCode::OK);
        let mut r = json(status, stored[34..].to_vec());
        r.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
        return Ok(r);
    }
    let (status, out) = f().await?;
    let mut record = Vec::with_capacity(34 + out.len());
    record.extend_from_slice(&status.as_u16().to_be_bytes());
    record.extend_from_slice(&body_hash);
    record.extend_from_slice(&out);
    if let Err(e) = app.store.idempotency_put(&id, &record).await {
        tracing::warn!(error = %e, "could not store an idempotent answer");
    }
    Ok(json(status, out))
}
