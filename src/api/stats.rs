//! Stats and rankings: per link, per campaign, and owners ranked per campaign. Counters are kept
//! by the batcher (never on the redirect path) and lag events by well under a second.

use http::StatusCode;
use serde_json::{Value, json};

use super::{ApiResult, limit_param, ok_json, query_pairs, require};
use crate::app::App;
use crate::attribution::model::RankBy;
use crate::config::{ApiKey, Scope};
use crate::error::{ApiError, FieldError};
use crate::link::code::is_code_shaped;

/// Leaderboard length: default and maximum.
pub(super) const DEFAULT_RANKS: usize = 10;
pub(super) const MAX_RANKS: usize = 1000;

pub(super) async fn link(app: &App, key: &ApiKey, code: &str) -> ApiResult {
    require(key, Scope::StatsRead)?;
    let link = if is_code_shaped(code) {
        app.store.get_link(code).await?
    } else {
        None
    };
    let Some(link) = link.filter(|l| super::owns(key, l.owner_id.as_deref())) else {
        return Err(ApiError::not_found("link"));
    };
    let s = app.store.link_stats(&link).await?;
    ok_json(
        StatusCode::OK,
        &json!({
            "code": code, "clicks": s.clicks, "human_clicks": s.human_clicks, "bot_clicks": s.bot_clicks,
            "leads": s.leads, "conversions": s.conversions, "revenue": s.revenue,
        }),
    )
}

pub(super) async fn campaign(app: &App, key: &ApiKey, id: &str) -> ApiResult {
    require(key, Scope::StatsRead)?;
    let s = app.store.campaign_stats(id).await?;
    ok_json(
        StatusCode::OK,
        &json!({
            "campaign_id": id, "links": s.links, "clicks": s.clicks, "human_clicks": s.human_clicks,
            "bot_clicks": s.bot_clicks, "leads": s.leads, "conversions": s.conversions, "revenue": s.revenue,
        }),
    )
}

pub(super) async fn leaderboard(app: &App, key: &ApiKey, id: &str, query: Option<&str>) -> ApiResult {
    require(key, Scope::StatsRead)?;
    let (mut by, mut limit) = (RankBy::Leads, DEFAULT_RANKS);
    let mut errors = Vec::new();
    for (k, v) in query_pairs(query) {
        match k.as_str() {
            "by" => match RankBy::parse(&v) {
                Some(b) => by = b,
                None => errors.push(FieldError::new("by", "must be leads, conversions or revenue")),
            },
            "limit" => match limit_param(&v, MAX_RANKS) {
                Ok(n) => limit = n,
                Err(e) => errors.push(e),
            },
            other => errors.push(FieldError::new(other, "unknown query parameter")),
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    let owners: Vec<Value> = app
        .store
        .leaderboard(id, by, limit)
        .await?
        .into_iter()
        .map(|(owner, s)| json!({"owner_id": owner, "leads": s.leads, "conversions": s.conversions, "revenue": s.revenue}))
        .collect();
    ok_json(StatusCode::OK, &json!({"by": by.as_str(), "owners": owners}))
}
