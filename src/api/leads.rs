//! `/v1/leads`: leads opened by an API call for an anonymous scan, and the lead lists sales teams
//! follow up. (Leads of personalised links are opened by the batcher on the first human tap.)

use bytes::Bytes;
use http::{Request, StatusCode};
use serde_json::{Value, json};

use super::MAX_PAGE;
use super::fields::Fields;
use super::{ApiResult, MAX_BODY_BYTES, ok_json, page_query, parse_object, read_body, require};
use crate::app::App;
use crate::attribution::binding::Binding;
use crate::attribution::leads::lead_for_scan;
use crate::attribution::model::{Lead, LeadClaim};
use crate::body::BoxError;
use crate::click::{Event, Queued};
use crate::config::{ApiKey, Scope};
use crate::error::{ApiError, FieldError};
use crate::time::format_rfc3339;
use crate::time::now_secs;

/// `POST /v1/leads`: one lead per click id (a repeat answers 200 with the first lead).
pub(super) async fn create<B>(app: &App, key: &ApiKey, req: Request<B>) -> ApiResult
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    require(key, Scope::ConversionsWrite)?;
    let obj = parse_object(&read_body(req, MAX_BODY_BYTES).await?)?;
    let mut f = Fields::new(&obj, &["click_id", "customer_id", "attributes"]);
    let click_id = f.string("click_id", 256, true);
    let customer_id = f.id("customer_id", false);
    let attributes = f.object("attributes");
    let claims = click_id.as_deref().and_then(|c| app.signer.verify(c));
    if click_id.is_some() && claims.is_none() {
        f.error("click_id", "is not a click id issued by this service");
    }
    f.finish()?;
    let (Some(click_id), Some(claims)) = (click_id, claims) else {
        unreachable!("checked by finish")
    };
    let link = app
        .store
        .get_link(&claims.code)
        .await?
        .ok_or_else(|| ApiError::field("click_id", "the link of this click no longer exists"))?;
    // The scan is tied to a customer: bound to the code's owner as its campaign's policy says.
    if let (Some(customer), Some(owner)) = (&customer_id, &link.owner_id) {
        let campaign = match link.campaign_id.as_deref() {
            Some(id) => app.store.get_campaign(id).await?,
            None => None,
        };
        let b = Binding {
            customer_id: customer.clone(),
            owner_id: owner.clone(),
            campaign_id: link.campaign_id.clone(),
            code: Some(link.code.clone()),
            since: now_secs(),
            protected_until: None,
            source: "lead".to_string(),
        };
        super::commissions::bind(app, b, campaign.as_ref()).await?;
    }
    let lead = lead_for_scan(&link, click_id, customer_id, attributes, now_secs());
    match app.store.claim_leads(vec![lead]).await?.pop() {
        Some(LeadClaim::Won(lead)) => {
            if let Some(events) = &app.events {
                events.try_send(Queued::Event(Box::new(Event::lead(&lead, Some(link.kind)))));
            }
            ok_json(StatusCode::CREATED, &lead.to_api_json())
        }
        Some(LeadClaim::Existing(lead)) => ok_json(StatusCode::OK, &lead.to_api_json()),
        None => Err(ApiError::unavailable()),
    }
}

pub(super) async fn get(app: &App, key: &ApiKey, id: &str) -> ApiResult {
    require(key, Scope::StatsRead)?;
    let lead = app
        .store
        .get_lead(id)
        .await?
        .ok_or_else(|| ApiError::not_found("lead"))?;
    if !super::owns(key, lead.owner_id.as_deref()) {
        return Err(ApiError::not_found("lead"));
    }
    ok_json(StatusCode::OK, &lead.to_api_json())
}

/// `GET /v1/leads`: a page of leads, oldest first (`order=newest`: newest first), or every one
/// as CSV (`format=csv`).
pub(super) async fn list(app: &App, key: &ApiKey, query: Option<&str>) -> ApiResult {
    require(key, Scope::StatsRead)?;
    let (mut csv, mut newest) = (false, false);
    let q = page_query(key, query, |k, v, errors| {
        match (k, v) {
            ("format", _) => match super::export::wants_csv(v) {
                Ok(c) => csv = c,
                Err(e) => errors.push(e),
            },
            ("order", "oldest") => newest = false,
            ("order", "newest") => newest = true,
            ("order", _) => errors.push(FieldError::new("order", "must be oldest or newest")),
            _ => return false,
        }
        true
    })?;
    if csv {
        let store = app.store.clone();
        let filter = q.filter;
        return super::export::csv(CSV_HEADER, "leads.csv", move |cursor| {
            let (store, filter) = (store.clone(), filter.clone());
            async move {
                let page = store.list_leads(&filter, cursor, MAX_PAGE, newest).await?;
                Ok((csv_rows(&page.leads), page.next_cursor))
            }
        })
        .await;
    }
    let page = app.store.list_leads(&q.filter, q.cursor, q.limit, newest).await?;
    let leads: Vec<Value> = page.leads.iter().map(Lead::to_api_json).collect();
    ok_json(
        StatusCode::OK,
        &json!({"leads": leads, "next_cursor": page.next_cursor.map(|c| c.to_string())}),
    )
}

const CSV_HEADER: &str = "lead_id,created_at,campaign_id,owner_id,recipient_id,code,source\n";

/// One page of leads as CSV rows.
fn csv_rows(leads: &[Lead]) -> Bytes {
    let mut out = String::with_capacity(leads.len() * 96);
    for l in leads {
        let cells = [
            l.lead_id.as_str(),
            &format_rfc3339(l.created_at),
            l.campaign_id.as_deref().unwrap_or(""),
            l.owner_id.as_deref().unwrap_or(""),
            l.recipient_id.as_deref().unwrap_or(""),
            l.code.as_str(),
            l.source.as_str(),
        ];
        for (i, c) in cells.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&crate::body::csv_cell(c));
        }
        out.push('\n');
    }
    Bytes::from(out)
}
