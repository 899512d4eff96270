//! `/v1/webhooks`: subscriptions to click, lead, conversion, commission and refund events, their deliveries, and a
//! retry by hand. Every call needs the `webhooks:write` scope (a webhook's URL and its
//! deliveries say where a brand's data goes). The signing secret is answered once, on creation.

use bytes::Bytes;
use http::{Request, StatusCode};
use serde_json::{Value, json};

use super::fields::Fields;
use super::{ApiResult, MAX_BODY_BYTES, limit_param, ok_json, parse_object, query_pairs, read_body, require};
use crate::app::App;
use crate::body::BoxError;
use crate::config::{ApiKey, Scope};
use crate::error::{ApiError, FieldError};
use crate::store::webhooks::MAX_WEBHOOKS;
use crate::store::{DeliveryStatus, Webhook, WebhookDelivery};
use crate::time::format_rfc3339;
use crate::webhook::{Webhooks, guard};

/// Most events one batch-mode POST carries.
const MAX_BATCH: i64 = 1000;
/// Deliveries listed: default and maximum.
const DEFAULT_DELIVERIES: usize = 50;
const MAX_DELIVERIES: usize = 100;
const EVENT_NAMES: [&str; 5] = ["click", "lead", "conversion", "commission", "refund"];

fn engine(app: &App) -> Result<&Webhooks, ApiError> {
    app.webhooks.as_deref().ok_or_else(ApiError::unavailable)
}

pub(crate) fn webhook_json(h: &Webhook) -> Value {
    json!({
        "id": h.id,
        "url": h.url,
        "events": h.events,
        "campaign_id": h.campaign_id,
        "batch": h.batch,
        "created_at": format_rfc3339(h.created_at),
        "disabled": h.disabled_at.is_some(),
        "disabled_at": h.disabled_at.map(format_rfc3339),
        "disabled_reason": h.disabled_reason,
    })
}

fn ms_rfc3339(ms: i64) -> String {
    format_rfc3339(ms.div_euclid(1000))
}

fn delivery_json(d: &WebhookDelivery) -> Value {
    let status = match d.status {
        DeliveryStatus::Pending => "pending",
        DeliveryStatus::Delivered => "delivered",
        DeliveryStatus::Failed => "failed",
    };
    json!({
        "id": d.id,
        "webhook_id": d.webhook_id,
        "event_type": d.event_type,
        "event_ids": d.event_ids,
        "status": status,
        "attempts": d.attempts,
        "created_at": ms_rfc3339(d.created_ms),
        "last_attempt_at": d.last_attempt_ms.map(ms_rfc3339),
        "next_attempt_at": d.next_attempt_ms.map(ms_rfc3339),
        "response_status": d.response_status,
        "latency_ms": d.latency_ms,
        "error": d.error,
    })
}

/// `events`: a non-empty array of distinct event names.
fn events_field(f: &mut Fields<'_>) -> Option<Vec<String>> {
    let Some(v) = f.raw("events") else {
        f.error("events", "is required");
        return None;
    };
    let names = v.as_array().and_then(|a| {
        a.iter()
            .map(|e| e.as_str().filter(|s| EVENT_NAMES.contains(s)).map(str::to_string))
            .collect::<Option<Vec<String>>>()
    });
    match names {
        Some(n) if !n.is_empty() && (1..n.len()).all(|i| !n[..i].contains(&n[i])) => Some(n),
        _ => {
            f.error(
                "events",
                "must be a non-empty array of distinct event names: click, lead, conversion, commission, refund",
            );
            None
        }
    }
}

/// `POST /v1/webhooks`: 201 with the webhook and its signing secret (shown this once).
pub(super) async fn create<B>(app: &App, key: &ApiKey, req: Request<B>) -> ApiResult
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    require(key, Scope::WebhooksWrite)?;
    let webhooks = engine(app)?;
    let obj = parse_object(&read_body(req, MAX_BODY_BYTES).await?)?;
    let allow_private = app.config.webhooks.allow_private;
    let mut f = Fields::new(&obj, &["url", "events", "campaign_id", "batch"]);
    let url = match f.raw("url") {
        None => {
            f.error("url", "is required");
            None
        }
        Some(Value::String(u)) => guard::validate_url(u, allow_private)
            .map_err(|m| f.error("url", m))
            .ok(),
        Some(_) => {
            f.error("url", "must be a string");
            None
        }
    };
    let events = events_field(&mut f);
    let campaign_id = f.id("campaign_id", false);
    let batch = f.int("batch", 1, MAX_BATCH).map(|n| n as u32);
    if let Some(u) = &url
        && let Err(m) = guard::check_resolved(u, allow_private).await
    {
        f.error("url", m);
    }
    f.finish()?;
    let (Some(url), Some(events)) = (url, events) else {
        return Err(ApiError::internal());
    };
    if app.store.list_webhooks().await?.len() >= MAX_WEBHOOKS {
        return Err(ApiError::validation(vec![FieldError::new(
            "url",
            format!("this linkgate has {MAX_WEBHOOKS} webhooks already; delete one first"),
        )]));
    }
    let hook = webhooks.create(url, events, campaign_id, batch).await?;
    let mut body = webhook_json(&hook);
    body["secret"] = json!(hook.secret);
    ok_json(StatusCode::CREATED, &body)
}

pub(super) async fn list(app: &App, key: &ApiKey) -> ApiResult {
    require(key, Scope::WebhooksWrite)?;
    let mut hooks = app.store.list_webhooks().await?;
    hooks.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    let list: Vec<Value> = hooks.iter().map(webhook_json).collect();
    ok_json(StatusCode::OK, &json!({ "webhooks": list }))
}

async fn find(app: &App, id: &str) -> Result<Webhook, ApiError> {
    app.store
        .get_webhook(id)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook"))
}

/// `GET /v1/webhooks/{id}`: the webhook (never its secret) and how many deliveries wait.
pub(super) async fn get(app: &App, key: &ApiKey, id: &str) -> ApiResult {
    require(key, Scope::WebhooksWrite)?;
    let hook = find(app, id).await?;
    let mut body = webhook_json(&hook);
    body["queued_deliveries"] = json!(app.store.queued_deliveries(id).await?);
    ok_json(StatusCode::OK, &body)
}

/// `DELETE /v1/webhooks/{id}`: 204; its queued deliveries are dropped.
pub(super) async fn delete(app: &App, key: &ApiKey, id: &str) -> ApiResult {
    require(key, Scope::WebhooksWrite)?;
    let webhooks = engine(app)?;
    if !app.store.delete_webhook(id).await? {
        return Err(ApiError::not_found("webhook"));
    }
    webhooks.changed();
    let mut r = http::Response::new(crate::body::Body::empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    Ok(r)
}

/// `GET /v1/webhooks/{id}/deliveries?limit=N`: the newest deliveries first.
pub(super) async fn deliveries(app: &App, key: &ApiKey, id: &str, query: Option<&str>) -> ApiResult {
    require(key, Scope::WebhooksWrite)?;
    let mut limit = DEFAULT_DELIVERIES;
    let mut errors = Vec::new();
    for (k, v) in query_pairs(query) {
        match k.as_str() {
            "limit" => match limit_param(&v, MAX_DELIVERIES) {
                Ok(n) => limit = n,
                Err(e) => errors.push(e),
            },
            other => errors.push(FieldError::new(other, "unknown query parameter")),
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    find(app, id).await?;
    let list: Vec<Value> = app
        .store
        .recent_deliveries(id, limit)
        .await?
        .iter()
        .map(delivery_json)
        .collect();
    ok_json(StatusCode::OK, &json!({ "deliveries": list }))
}

/// `POST /v1/webhooks/{id}/deliveries/{delivery_id}/retry`: 202; the delivery is attempted
/// again at once with a fresh retry window, and a disabled webhook is enabled again.
pub(super) async fn retry(app: &App, key: &ApiKey, id: &str, delivery_id: &str) -> ApiResult {
    require(key, Scope::WebhooksWrite)?;
    let webhooks = engine(app)?;
    let hook = find(app, id).await?;
    let d = app
        .store
        .get_delivery(id, delivery_id)
        .await?
        .ok_or_else(|| ApiError::not_found("delivery"))?;
    let d = webhooks.retry(&hook, d).await?;
    ok_json(StatusCode::ACCEPTED, &delivery_json(&d))
}
