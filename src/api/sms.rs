//! SMS sends, delivery receipts and the campaign funnel ([`crate::sms`]).
//!
//! - `POST /v1/sends` (`links:write`): what the marketing system sent, up to 100,000 per call,
//!   each naming its link by `code` or by `campaign_id` + `recipient_id`; every item is checked
//!   (and its link found) before anything is recorded.
//! - `POST /v1/receipts/{provider}?token=…`: the provider's own callback; authenticated by
//!   `LINKGATE_RECEIPT_TOKEN` in the URL (a provider can only be given a URL), compared in
//!   constant time, and refused while unset; answered the way that provider expects.
//! - `GET /v1/campaigns/{id}/funnel` (`stats:read`), `?by=owner` for one funnel per owner.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{ApiResult, MAX_BULK_BODY_BYTES, ok_json, parse_object, query_pairs, read_body, require};
use crate::app::App;
use crate::attribution::model::RankBy;
use crate::body::Body;
use crate::config::{ApiKey, Scope};
use crate::error::{ApiError, FieldError};
use crate::sms::funnel::{FunnelCounts, NO_OWNER, funnel as compute};
use crate::sms::{MAX_ID_BYTES, PROVIDERS, Sent, providers};

/// Most sends in one call.
pub(crate) const MAX_SENDS: usize = 100_000;

/// How a send names its link.
enum Names {
    Code(String),
    Recipient(String, String),
}

struct Item {
    names: Names,
    provider: String,
    message_id: String,
    sent_at: i64,
}

fn provider_shaped(p: &str) -> bool {
    (1..=32).contains(&p.len())
        && p.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn check_send(v: &Value, now: i64) -> Result<Item, FieldError> {
    let Value::Object(o) = v else {
        return Err(FieldError::new("sends", "each send is an object"));
    };
    for k in o.keys() {
        if !matches!(
            k.as_str(),
            "code" | "campaign_id" | "recipient_id" | "provider" | "message_id" | "sent_at"
        ) {
            return Err(FieldError::new(k.clone(), "unknown field"));
        }
    }
    let text = |f: &str, max: usize| -> Result<Option<String>, FieldError> {
        match o.get(f) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.is_empty() && s.len() <= max => Ok(Some(s.clone())),
            Some(_) => Err(FieldError::new(f, format!("a string of 1 to {max} bytes"))),
        }
    };
    let names = match (text("code", 64)?, text("campaign_id", 256)?, text("recipient_id", 256)?) {
        (Some(code), None, None) if crate::link::code::is_code_shaped(&code) => Names::Code(code),
        (Some(_), None, None) => return Err(FieldError::new("code", "not a valid code")),
        (None, Some(c), Some(r)) => Names::Recipient(c, r),
        _ => {
            return Err(FieldError::new("code", "give code, or campaign_id and recipient_id"));
        }
    };
    let provider = text("provider", 32)?.ok_or_else(|| FieldError::new("provider", "required"))?;
    if !provider_shaped(&provider) {
        return Err(FieldError::new("provider", "lower-case letters, digits, _ and -"));
    }
    let message_id = text("message_id", MAX_ID_BYTES)?.ok_or_else(|| FieldError::new("message_id", "required"))?;
    let sent_at = match text("sent_at", 64)? {
        None => now,
        Some(s) => crate::time::parse_rfc3339(&s).ok_or_else(|| FieldError::new("sent_at", "an RFC 3339 date-time"))?,
    };
    Ok(Item {
        names,
        provider,
        message_id,
        sent_at,
    })
}

pub(super) async fn sends<B>(app: &App, key: &ApiKey, req: Request<B>) -> ApiResult
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<crate::body::BoxError>,
{
    require(key, Scope::LinksWrite)?;
    let body = read_body(req, MAX_BULK_BODY_BYTES).await?;
    let mut obj = parse_object(&body)?;
    if let Some(k) = obj.keys().find(|k| *k != "sends") {
        return Err(ApiError::field(k, "unknown field"));
    }
    let items = match obj.remove("sends") {
        Some(Value::Array(a)) if !a.is_empty() && a.len() <= MAX_SENDS => a,
        _ => return Err(ApiError::field("sends", format!("an array of 1 to {MAX_SENDS} sends"))),
    };
    let now = crate::time::now_secs();
    let mut checked = Vec::with_capacity(items.len());
    let mut errors = Vec::new();
    for (i, v) in items.iter().enumerate() {
        match check_send(v, now) {
            Ok(item) => checked.push(item),
            Err(mut e) => {
                e.index = Some(i);
                errors.push(e);
            }
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    // Pairs to codes, then codes to links.
    let pairs: Vec<(String, String)> = checked
        .iter()
        .filter_map(|i| match &i.names {
            Names::Recipient(c, r) => Some((c.clone(), r.clone())),
            Names::Code(_) => None,
        })
        .collect();
    let mut pair_codes = app.store.recipient_codes(&pairs).await?.into_iter();
    let codes: Vec<Option<String>> = checked
        .iter()
        .map(|i| match &i.names {
            Names::Code(c) => Some(c.clone()),
            Names::Recipient(..) => pair_codes.next().flatten(),
        })
        .collect();
    let known: Vec<String> = codes.iter().flatten().cloned().collect();
    let mut links = app.store.links_named(&known).await?.into_iter();
    let mut sent = Vec::with_capacity(checked.len());
    for (i, (item, code)) in checked.into_iter().zip(codes).enumerate() {
        let link = if code.is_some() { links.next().flatten() } else { None };
        let Some(link) = link else {
            let field = match item.names {
                Names::Code(_) => "code",
                Names::Recipient(..) => "recipient_id",
            };
            let mut e = FieldError::new(field, "no such link");
            e.index = Some(i);
            errors.push(e);
            continue;
        };
        sent.push(Sent {
            provider: item.provider,
            message_id: item.message_id,
            code: link.code,
            campaign_id: link.campaign_id,
            owner_id: link.owner_id,
            sent_at: item.sent_at,
        });
    }
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    let recorded = app.store.record_sends(sent).await?;
    ok_json(StatusCode::CREATED, &json!({"recorded": recorded}))
}

/// Whether `presented` is the receipt token (compared as SHA-256 digests, in constant time).
fn token_ok(app: &App, presented: Option<&str>) -> bool {
    let (Some(want), Some(got)) = (&app.config.receipt_token, presented) else {
        return false;
    };
    let (a, b): ([u8; 32], [u8; 32]) = (
        Sha256::digest(want.as_bytes()).into(),
        Sha256::digest(got.as_bytes()).into(),
    );
    bool::from(a.ct_eq(&b))
}

pub(super) async fn receipts<B>(app: &App, provider: &str, req: Request<B>) -> ApiResult
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<crate::body::BoxError>,
{
    let pairs = query_pairs(req.uri().query());
    let token = pairs.iter().find(|(k, _)| k == "token").map(|(_, v)| v.as_str());
    if !token_ok(app, token) {
        return Err(ApiError::unauthorized());
    }
    if !PROVIDERS.contains(&provider) {
        return Err(ApiError::not_found("receipt provider"));
    }
    let body = read_body(req, MAX_BULK_BODY_BYTES).await?;
    let now = crate::time::now_secs();
    let receipts = providers::parse(provider, &body, &app.phones, now).map_err(ApiError::validation)?;
    // A receipt whose out_id names a link implies that link's send.
    let out_ids: Vec<String> = receipts.iter().filter_map(|r| r.out_id.clone()).collect();
    let mut links = app.store.links_named(&out_ids).await?.into_iter();
    let with_sends: Vec<_> = receipts
        .into_iter()
        .map(|r| {
            let link = if r.out_id.is_some() {
                links.next().flatten()
            } else {
                None
            };
            let implied = link.map(|l| Sent {
                provider: r.provider.clone(),
                message_id: r.message_id.clone(),
                code: l.code,
                campaign_id: l.campaign_id,
                owner_id: l.owner_id,
                sent_at: r.at,
            });
            (r, implied)
        })
        .collect();
    let accepted = with_sends.len();
    app.store.record_receipts(with_sends).await?;
    let (status, body) = providers::answer(provider, accepted);
    match body {
        Some(v) => ok_json(status, &v),
        None => {
            let mut r = Response::new(Body::empty());
            *r.status_mut() = status;
            Ok(r)
        }
    }
}

pub(super) async fn funnel(app: &App, key: &ApiKey, id: &str, query: Option<&str>) -> ApiResult {
    require(key, Scope::StatsRead)?;
    let mut by_owner = false;
    for (k, v) in query_pairs(query) {
        match (k.as_str(), v.as_str()) {
            ("by", "owner") => by_owner = true,
            ("by", _) => return Err(ApiError::field("by", "must be owner")),
            _ => return Err(ApiError::field(&k, "unknown query parameter")),
        }
    }
    // A key limited to one owner sees that owner's part of the campaign.
    let only = key.owner.clone();
    if !by_owner && only.is_none() {
        let (mut c, stats) = tokio::try_join!(app.store.campaign_funnel(id), app.store.campaign_stats(id))?;
        (c.links, c.leads, c.conversions, c.revenue) = (stats.links, stats.leads, stats.conversions, stats.revenue);
        let mut f = compute(&c);
        f["campaign_id"] = json!(id);
        return ok_json(StatusCode::OK, &f);
    }
    let (funnels, ranked) = tokio::try_join!(
        app.store.owner_funnels(id, only.as_deref()),
        app.store.leaderboard(id, RankBy::Leads, usize::MAX >> 1),
    )?;
    let mut owners: BTreeMap<String, FunnelCounts> = funnels.into_iter().collect();
    for (o, s) in ranked {
        if only.as_ref().is_some_and(|x| *x != o) {
            continue;
        }
        let e = owners.entry(o).or_default();
        (e.leads, e.conversions, e.revenue) = (s.leads, s.conversions, s.revenue);
    }
    if let Some(o) = &only {
        let mut f = compute(owners.get(o).unwrap_or(&FunnelCounts::default()));
        f["campaign_id"] = json!(id);
        f["owner_id"] = json!(o);
        if by_owner {
            return ok_json(
                StatusCode::OK,
                &json!({"campaign_id": id, "by": "owner", "owners": [f]}),
            );
        }
        return ok_json(StatusCode::OK, &f);
    }
    let rows: Vec<Value> = owners
        .iter()
        .filter(|(o, c)| o.as_str() != NO_OWNER || **c != FunnelCounts::default())
        .map(|(o, c)| {
            let mut f = compute(c);
            f["owner_id"] = json!(o);
            f
        })
        .collect();
    ok_json(
        StatusCode::OK,
        &json!({"campaign_id": id, "by": "owner", "owners": rows}),
    )
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn field_of(v: Value) -> Option<String> {
        check_send(&v, 0).err().map(|e| e.field)
    }

    #[test]
    fn each_bad_send_names_its_field() {
        let ok = json!({"code": "Ab3xK9q", "provider": "aliyun", "message_id": "biz-1"});
        assert!(check_send(&ok, 0).is_ok());
        let pair =
            json!({"campaign_id": "春季", "recipient_id": "客户-1", "provider": "tencent", "message_id": "序列号-1"});
        assert!(check_send(&pair, 0).is_ok(), "any text in ids");
        assert_eq!(
            field_of(json!({"code": "Ab3xK9q", "provider": "aliyun", "message_id": "m", "colour": 1})),
            Some("colour".into())
        );
        assert_eq!(
            field_of(json!({"code": "no spaces", "provider": "aliyun", "message_id": "m"})),
            Some("code".into())
        );
        assert_eq!(
            field_of(json!({"campaign_id": "c", "provider": "aliyun", "message_id": "m"})),
            Some("code".into())
        );
        assert_eq!(
            field_of(json!({"code": "Ab3xK9q", "provider": "Aliyun", "message_id": "m"})),
            Some("provider".into())
        );
        assert_eq!(
            field_of(json!({"code": "Ab3xK9q", "provider": "aliyun", "message_id": "m".repeat(129)})),
            Some("message_id".into())
        );
        assert_eq!(
            field_of(json!({"code": "Ab3xK9q", "provider": "aliyun", "message_id": 7})),
            Some("message_id".into())
        );
        assert_eq!(
            field_of(json!({"code": "Ab3xK9q", "provider": "aliyun", "message_id": "m", "sent_at": "today"})),
            Some("sent_at".into())
        );
        assert_eq!(field_of(json!(["not", "an", "object"])), Some("sends".into()));
    }

    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            "\\PC{0,140}".prop_map(Value::from),
        ];
        leaf.prop_recursive(2, 16, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                proptest::collection::hash_map(
                    prop_oneof![
                        Just("code".to_string()),
                        Just("provider".to_string()),
                        Just("message_id".to_string()),
                        Just("campaign_id".to_string()),
                        Just("recipient_id".to_string()),
                        Just("sent_at".to_string()),
                        "\\PC{0,6}",
                    ],
                    inner,
                    0..6
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Any item: a send, or an error naming a field of the contract or the unknown key it
        /// met; never a panic.
        #[test]
        fn any_item_is_a_send_or_a_named_error(v in any_json()) {
            if let Err(e) = check_send(&v, 0) {
                let known = ["sends", "code", "provider", "message_id", "campaign_id", "recipient_id", "sent_at"];
                let key_of_item = v.as_object().is_some_and(|o| o.contains_key(&e.field));
                prop_assert!(known.contains(&e.field.as_str()) || key_of_item, "{:?}", e);
            }
        }
    }
}
