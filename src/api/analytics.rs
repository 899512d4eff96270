//! `GET /v1/analytics` (scope `stats:read`): counts over time and by breakdown, read from the
//! buckets the batcher keeps ([`crate::analytics`]). The parameters and the rows are the
//! analytics module's; this handler only fetches what its plan names.

use http::{HeaderValue, StatusCode, header};

use super::{ApiResult, ok_json, query_pairs, require};
use crate::analytics::query::{LinkHome, Query};
use crate::app::App;
use crate::body::Body;
use crate::config::{ApiKey, Scope};
use crate::error::{ApiError, ErrorCode};

pub(super) async fn get(app: &App, key: &ApiKey, query: Option<&str>) -> ApiResult {
    require(key, Scope::StatsRead)?;
    let now = crate::time::now_secs();
    let mut pairs = query_pairs(query);
    // A key limited to one owner asks about that owner (or a link of its own, with `code`).
    if let Some(owner) = &key.owner {
        if pairs.iter().any(|(k, v)| k == "owner_id" && v != owner) {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "this API key reads only its own owner's analytics",
            ));
        }
        if !pairs.iter().any(|(k, _)| k == "owner_id" || k == "code") {
            pairs.push(("owner_id".into(), owner.clone()));
        }
    }
    let q = Query::parse(&pairs, &app.rules, now).map_err(ApiError::validation)?;
    let home = match &q.code {
        Some(code) => {
            let link = app
                .store
                .get_link(code)
                .await?
                .filter(|l| super::owns(key, l.owner_id.as_deref()))
                .ok_or_else(|| ApiError::not_found("link"))?;
            Some(LinkHome {
                campaign: link.campaign_id,
                owner: link.owner_id,
            })
        }
        None => None,
    };
    let plan = q.plan(&app.rules, now, home.as_ref());
    let hashes = app.store.analytics_hashes(&plan.hashes).await?;
    let visitors = app.store.analytics_visitors(&plan.visitors).await?;
    let answer = q.answer(&app.rules, &plan, &hashes, &visitors);
    if !q.csv {
        return ok_json(StatusCode::OK, &answer.json);
    }
    let mut r = crate::body::with_type(
        StatusCode::OK,
        Body::from(answer.csv().into_bytes()),
        "text/csv; charset=utf-8",
    );
    r.headers_mut().insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"analytics.csv\""),
    );
    Ok(r)
}
