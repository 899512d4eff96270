//! `/v1/partners` and `/v1/campaigns`: the referral tree and the commission rates.

use bytes::Bytes;
use http::{Request, StatusCode};
use serde_json::{Value, json};

use super::fields::Fields;
use super::{ApiResult, MAX_BODY_BYTES, ok_json, parse_object, read_body, require};
use crate::app::App;
use crate::attribution::binding::BindingPolicy;
use crate::attribution::model::{Campaign, DEFAULT_WINDOW_SECS, Partner};
use crate::attribution::{MAX_LEVELS, TreeError, chain, check_parent};
use crate::body::BoxError;
use crate::config::{ApiKey, Scope};
use crate::error::ApiError;

/// Longest partner or campaign name, in bytes.
pub(super) const MAX_NAME_LEN: usize = 256;
/// Longest protection of a customer binding, in days (ten years).
const MAX_BINDING_DAYS: i64 = 3660;
/// Longest commission hold, in days.
const MAX_HOLD_DAYS: i64 = 366;
/// Longest attribution window: one year.
pub(super) const MAX_WINDOW_SECS: u64 = 366 * 86_400;

/// `POST /v1/partners`: creates (201) or updates (200) a partner. The parent must exist and the
/// tree must stay a tree.
pub(super) async fn put_partner<B>(app: &App, key: &ApiKey, req: Request<B>) -> ApiResult
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    require(key, Scope::LinksWrite)?;
    let obj = parse_object(&read_body(req, MAX_BODY_BYTES).await?)?;
    let mut f = Fields::new(&obj, &["id", "parent_id", "name"]);
    let id = f.id("id", true);
    let parent_id = f.id("parent_id", false);
    let name = f.string("name", MAX_NAME_LEN, false);
    f.finish()?;
    let partner = Partner {
        id: id.unwrap_or_default(),
        parent_id,
        name,
    };
    let store = app.store.as_ref();
    match check_parent(&partner, |id| async move { store.get_partner(&id).await }).await? {
        Ok(()) => {}
        Err(TreeError::ParentMissing) => {
            return Err(ApiError::field("parent_id", "no partner has this id"));
        }
        Err(TreeError::Cycle) => {
            return Err(ApiError::field("parent_id", "would make the partner its own ancestor"));
        }
        Err(TreeError::TooDeep) => {
            return Err(ApiError::field("parent_id", "the partner tree is too deep"));
        }
    }
    let existed = app.store.get_partner(&partner.id).await?.is_some();
    app.store.put_partner(&partner).await?;
    let status = if existed { StatusCode::OK } else { StatusCode::CREATED };
    ok_json(status, &partner_json(app, &partner).await?)
}

async fn partner_json(app: &App, p: &Partner) -> Result<serde_json::Value, ApiError> {
    let store = app.store.as_ref();
    let chain = chain(&p.id, |id| async move { store.get_partner(&id).await }).await?;
    Ok(json!({"id": p.id, "parent_id": p.parent_id, "name": p.name, "chain": chain}))
}

pub(super) async fn get_partner(app: &App, key: &ApiKey, id: &str) -> ApiResult {
    require(key, Scope::LinksRead)?;
    let p = app
        .store
        .get_partner(id)
        .await?
        .ok_or_else(|| ApiError::not_found("partner"))?;
    ok_json(StatusCode::OK, &partner_json(app, &p).await?)
}

/// `GET /v1/partners`: every partner with its parent, sorted by id (the referral tree, flat).
pub(super) async fn list_partners(app: &App, key: &ApiKey) -> ApiResult {
    require(key, Scope::LinksRead)?;
    let partners: Vec<Value> = app
        .store
        .list_partners()
        .await?
        .iter()
        .map(|p| json!({"id": p.id, "parent_id": p.parent_id, "name": p.name}))
        .collect();
    ok_json(StatusCode::OK, &json!({ "partners": partners }))
}

/// `GET /v1/campaigns`: every campaign, sorted by id; one known only from its links has no
/// record (`name` null, the default commission and window).
pub(super) async fn list_campaigns(app: &App, key: &ApiKey) -> ApiResult {
    if !key.allows(Scope::LinksRead) {
        require(key, Scope::StatsRead)?;
    }
    let ids = app.store.list_campaigns().await?;
    // Read together: on Redis one pipelined round trip instead of one per campaign.
    let records = futures_util::future::try_join_all(ids.iter().map(|id| app.store.get_campaign(id))).await?;
    let list: Vec<Value> = ids
        .iter()
        .zip(records)
        .map(|(id, record)| match record {
            Some(c) => c.to_api_json(),
            None => json!({
                "id": id, "name": null, "commission_bps": [], "attribution_window": format!("{DEFAULT_WINDOW_SECS}s"),
                "hold": "0s", "self_purchase": true, "min_seconds_after_tap": 0, "max_conversions_per_click": 0,
                "binding": "last_touch", "binding_window": "2592000s",
            }),
        })
        .collect();
    ok_json(StatusCode::OK, &json!({ "campaigns": list }))
}

/// `POST /v1/campaigns`: creates (201) or updates (200) a campaign's commission, attribution
/// window, commission hold (`hold` as a duration, or `hold_days`) and fraud rules
/// (`self_purchase`, on by default; `min_seconds_after_tap`, off by default). A campaign is
/// replaced whole: a field left out takes its default.
pub(super) async fn put_campaign<B>(app: &App, key: &ApiKey, req: Request<B>) -> ApiResult
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    require(key, Scope::LinksWrite)?;
    let obj = parse_object(&read_body(req, MAX_BODY_BYTES).await?)?;
    let mut f = Fields::new(
        &obj,
        &[
            "id",
            "name",
            "commission_bps",
            "attribution_window",
            "hold",
            "hold_days",
            "self_purchase",
            "min_seconds_after_tap",
            "max_conversions_per_click",
            "binding",
            "binding_days",
            "binding_window",
        ],
    );
    let id = f.id("id", true);
    let name = f.string("name", MAX_NAME_LEN, false);
    let bps = match f.raw("commission_bps") {
        None => Vec::new(),
        Some(v) => {
            let parsed: Option<Vec<u32>> = v.as_array().filter(|a| a.len() <= MAX_LEVELS).and_then(|a| {
                a.iter()
                    .map(|x| x.as_u64().filter(|n| *n <= 10_000).map(|n| n as u32))
                    .collect()
            });
            parsed.unwrap_or_else(|| {
                f.error(
                    "commission_bps",
                    "must be up to 3 integers from 0 to 10000 (basis points per level)",
                );
                Vec::new()
            })
        }
    };
    let window = match f.raw("attribution_window") {
        None => DEFAULT_WINDOW_SECS,
        Some(v) => match v.as_str().and_then(crate::time::parse_duration_secs) {
            Some(w) if (1..=MAX_WINDOW_SECS).contains(&w) => w,
            _ => {
                f.error(
                    "attribution_window",
                    "must be a duration such as \"30d\", \"12h\", at most 366d",
                );
                DEFAULT_WINDOW_SECS
            }
        },
    };
    let hold_days = f.int("hold_days", 0, MAX_HOLD_DAYS).map(|d| d as u64 * 86_400);
    let hold = match f.raw("hold") {
        None => None,
        Some(v) => match v.as_str().and_then(crate::time::parse_duration_secs) {
            Some(h) if h <= MAX_HOLD_DAYS as u64 * 86_400 => Some(h),
            _ => {
                f.error("hold", "must be a duration such as \"15d\" or \"12h\", at most 366d");
                None
            }
        },
    };
    if hold.is_some() && hold_days.is_some() {
        f.error("hold", "give hold or hold_days, not both");
    }
    let self_purchase = match f.raw("self_purchase") {
        None => true,
        Some(v) => v.as_bool().unwrap_or_else(|| {
            f.error("self_purchase", "must be true or false");
            true
        }),
    };
    let min_tap = f.int("min_seconds_after_tap", 0, 86_400).unwrap_or(0);
    let per_click = f.int("max_conversions_per_click", 0, 1_000_000).unwrap_or(0);
    let binding = match f.raw("binding") {
        None => BindingPolicy::default(),
        Some(v) => v.as_str().and_then(BindingPolicy::parse).unwrap_or_else(|| {
            f.error("binding", "must be first_touch, last_touch or protected");
            BindingPolicy::default()
        }),
    };
    let binding_days = f.int("binding_days", 1, MAX_BINDING_DAYS).map(|d| d as u64 * 86_400);
    let binding_window = match f.raw("binding_window") {
        None => None,
        Some(v) => match v.as_str().and_then(crate::time::parse_duration_secs) {
            Some(w) if (1..=MAX_BINDING_DAYS as u64 * 86_400).contains(&w) => Some(w),
            _ => {
                f.error("binding_window", "must be a duration such as \"30d\", at most 3660d");
                None
            }
        },
    };
    if binding_days.is_some() && binding_window.is_some() {
        f.error("binding_window", "give binding_window or binding_days, not both");
    }
    f.finish()?;
    let campaign = Campaign {
        id: id.unwrap_or_default(),
        name,
        commission_bps: bps,
        attribution_window: window,
        hold_secs: hold.or(hold_days).unwrap_or(0),
        self_purchase,
        min_seconds_after_tap: min_tap as u64,
        max_conversions_per_click: per_click as u32,
        binding,
        binding_secs: binding_window.or(binding_days).unwrap_or(30 * 86_400),
    };
    let before = app.store.get_campaign(&campaign.id).await?;
    app.store.put_campaign(&campaign).await?;
    let status = if before.is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    // The commission rules decide what partners are paid: every change is audited.
    let after = campaign.to_api_json();
    if before.as_ref() != Some(&campaign) {
        let before = before.map(|c| c.to_api_json());
        super::commissions::audit(app, key, "campaign.set", &campaign.id, before, Some(after.clone())).await;
    }
    ok_json(status, &after)
}

pub(super) async fn get_campaign(app: &App, key: &ApiKey, id: &str) -> ApiResult {
    require(key, Scope::LinksRead)?;
    let c = app
        .store
        .get_campaign(id)
        .await?
        .ok_or_else(|| ApiError::not_found("campaign"))?;
    ok_json(StatusCode::OK, &c.to_api_json())
}
