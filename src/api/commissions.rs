//! Commission records, refunds, payouts and statements ([`crate::commission`] has the rules).
//!
//! - `GET /v1/commissions/{id}`, `GET /v1/commissions?partner_id=…|conversion_id=…`
//! - `POST /v1/commissions/{id}/release`, `POST /v1/commissions/{id}/reject` (`commissions:write`)
//! - `POST /v1/conversions/{id}/refunds` (`conversions:write`): idempotent by `refund_id`
//! - `POST /v1/payouts` (`commissions:write`): idempotent by `payout_id`
//! - `GET /v1/partners/{id}/statement?from&to&currency&format=json|csv`
//!
//! Every write is a decision over one book applied at the version it read
//! ([`crate::store::books::apply`]), so retries and races never apply anything twice.

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use serde_json::{Value, json};

use super::fields::Fields;
use super::{ApiResult, MAX_BODY_BYTES, ok_json, parse_object, query_pairs, read_body, require};
use crate::app::App;
use crate::attribution::model::Conversion;
use crate::body::{Body, BoxError, csv_cell};
use crate::commission::ledger::{self, Refusal};
use crate::commission::{BookKey, Payout, Record, State, commission_id};
use crate::config::{ApiKey, Scope};
use crate::error::{ApiError, FieldError};
use crate::store::books::{apply, statement};
use crate::store::{BookRead, RefundOutcome};
use crate::time::{format_rfc3339, now_secs, parse_rfc3339};

fn conversion_name(id: &str) -> String {
    format!("conversion:{id}")
}

fn commission_name(id: &str) -> String {
    format!("commission:{id}")
}

fn payout_name(id: &str) -> String {
    format!("payout:{id}")
}

/// The records a conversion's chain earns: one per level that earns something, in the
/// conversion's currency, as the chain recorded them (hold and fraud decided at the first call).
fn records_of(c: &Conversion) -> Vec<(BookKey, Record)> {
    let Some(currency) = c.currency.as_deref() else {
        return Vec::new();
    };
    c.chain
        .iter()
        .filter_map(|l| {
            let id = l.commission_id.clone()?;
            let book = BookKey {
                partner: l.partner_id.clone(),
                currency: currency.to_string(),
            };
            let r = Record {
                commission_id: id,
                conversion_id: c.conversion_id.clone(),
                order_id: c.order_id.clone(),
                partner_id: l.partner_id.clone(),
                level: l.level,
                campaign_id: c.campaign_id.clone(),
                code: c.code.clone(),
                currency: currency.to_string(),
                order_amount: c.amount,
                earned: l.commission,
                amount: l.commission,
                refunded: 0,
                state: if l.held.is_some() { State::Held } else { State::Pending },
                reason: l.held.clone(),
                created_at: c.created_at,
                payable_at: l.payable_at.unwrap_or(c.created_at),
                payout_id: None,
            };
            Some((book, r))
        })
        .collect()
}

/// Gives the conversion's chain levels their commission ids, holds and fraud holds.
pub(super) fn assign(c: &mut Conversion, hold_secs: u64, held: Option<&str>) {
    if c.currency.is_none() {
        return;
    }
    let payable_at = c
        .created_at
        .saturating_add(i64::try_from(hold_secs).unwrap_or(i64::MAX));
    let id = c.conversion_id.clone();
    for l in c.chain.iter_mut().filter(|l| l.commission > 0) {
        l.commission_id = Some(commission_id(&id, l.level));
        l.held = held.map(str::to_string);
        l.payable_at = Some(payable_at);
    }
}

/// Records what the conversion earns in each partner's book (idempotent: a retried or repeated
/// conversion accrues nothing twice), and indexes it for refunds.
pub(super) async fn settle(app: &App, c: &Conversion) -> Result<(), ApiError> {
    let store = app.store.as_ref();
    if c.amount > 0 {
        store
            .claim_name(&conversion_name(&c.conversion_id), &c.order_id)
            .await?;
    }
    let now = now_secs();
    let accruals = records_of(c).into_iter().map(|(book, r)| async move {
        store
            .claim_name(&commission_name(&r.commission_id), &book.name())
            .await?;
        let ids = [r.commission_id.clone()];
        apply(store, &book, BookRead::Ids(&ids), &[], |v| {
            Ok((ledger::accrue(v, std::slice::from_ref(&r), now), ()))
        })
        .await
        .map(|_| ())
    });
    futures_util::future::try_join_all(accruals).await?;
    Ok(())
}

/// The book and record of a commission id.
async fn find(app: &App, id: &str) -> Result<(BookKey, Record), ApiError> {
    let missing = || ApiError::not_found("commission");
    let name = app.store.get_name(&commission_name(id)).await?.ok_or_else(missing)?;
    let book = BookKey::from_name(&name).ok_or_else(missing)?;
    let ids = [id.to_string()];
    let view = app.store.read_book(&book, BookRead::Ids(&ids), &[]).await?;
    let r = view.records.into_iter().next().ok_or_else(missing)?;
    Ok((book, r))
}

/// A currency as conversions take it: an ISO 4217 code (three capital letters).
fn is_currency(c: &str) -> bool {
    c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase())
}

fn currency_error() -> FieldError {
    FieldError::new("currency", "must be an ISO 4217 code such as CNY or USD")
}

fn refused(r: Refusal) -> ApiError {
    match r {
        Refusal::Unreadable => ApiError::internal(),
        Refusal::NotFound => ApiError::not_found("commission"),
        Refusal::State(s) => ApiError::conflict(format!("the commission is {s}: nothing changed")),
        Refusal::NothingPayable => {
            ApiError::conflict("nothing is payable for this partner by that date: nothing changed")
        }
        Refusal::ClawbacksExceed { payable, clawbacks } => ApiError::conflict(format!(
            "clawbacks due ({clawbacks}) exceed what is payable ({payable}): nothing changed; they are netted from later commission"
        )),
    }
}

/// `GET /v1/commissions/{id}`.
pub(super) async fn get(app: &App, key: &ApiKey, id: &str) -> ApiResult {
    require(key, Scope::StatsRead)?;
    let (_, r) = find(app, id).await?;
    ok_json(StatusCode::OK, &r.to_api_json(now_secs()))
}

/// `GET /v1/commissions?partner_id=…[&currency=…][&state=…]`: a partner's open records (pending,
/// payable, held); or `?conversion_id=…`: every record of one conversion, whatever its state.
pub(super) async fn list(app: &App, key: &ApiKey, query: Option<&str>) -> ApiResult {
    require(key, Scope::StatsRead)?;
    let (mut partner, mut conversion, mut currency, mut state) = (None, None, None, None);
    let mut errors = Vec::new();
    for (k, v) in query_pairs(query) {
        match k.as_str() {
            "partner_id" => partner = Some(v),
            "conversion_id" => conversion = Some(v),
            "currency" if is_currency(&v) => currency = Some(v),
            "currency" => errors.push(currency_error()),
            "state" if matches!(v.as_str(), "pending" | "payable" | "held") => state = Some(v),
            "state" => errors.push(FieldError::new("state", "must be pending, payable or held")),
            other => errors.push(FieldError::new(other, "unknown parameter")),
        }
    }
    if partner.is_some() == conversion.is_some() {
        errors.push(FieldError::new("partner_id", "give one of partner_id or conversion_id"));
    }
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    let now = now_secs();
    let mut records = Vec::new();
    if let Some(c) = conversion {
        let conversion = find_conversion(app, &c).await?;
        for (book, r) in records_of(&conversion) {
            let ids = [r.commission_id];
            let view = app.store.read_book(&book, BookRead::Ids(&ids), &[]).await?;
            records.extend(view.records);
        }
    } else if let Some(p) = partner {
        for book in books_of(app, &p, currency.as_deref()).await? {
            let mut view = app.store.read_book(&book, BookRead::Open, &[]).await?;
            view.records
                .sort_by(|a, b| (a.created_at, &a.commission_id).cmp(&(b.created_at, &b.commission_id)));
            records.extend(view.records);
        }
    }
    let list: Vec<Value> = records
        .iter()
        .filter(|r| state.as_deref().is_none_or(|s| r.api_state(now) == s))
        .map(|r| r.to_api_json(now))
        .collect();
    ok_json(StatusCode::OK, &json!({ "commissions": list }))
}

/// The partner's books: the one of `currency`, or every one it has.
async fn books_of(app: &App, partner: &str, currency: Option<&str>) -> Result<Vec<BookKey>, ApiError> {
    let currencies = match currency {
        Some(c) => vec![c.to_string()],
        None => app.store.partner_currencies(partner).await?,
    };
    Ok(currencies
        .into_iter()
        .map(|currency| BookKey {
            partner: partner.to_string(),
            currency,
        })
        .collect())
}

/// The partner's one book: of `currency`, or the only one it has.
async fn one_book(app: &App, partner: &str, currency: Option<String>) -> Result<BookKey, ApiError> {
    if let Some(currency) = currency {
        return Ok(BookKey {
            partner: partner.to_string(),
            currency,
        });
    }
    let mut all = app.store.partner_currencies(partner).await?;
    match all.len() {
        0 => Err(ApiError::not_found("commission of this partner")),
        1 => Ok(BookKey {
            partner: partner.to_string(),
            currency: all.remove(0),
        }),
        _ => Err(ApiError::field(
            "currency",
            format!("the partner has commission in {}: name one", all.join(", ")),
        )),
    }
}

async fn find_conversion(app: &App, id: &str) -> Result<Conversion, ApiError> {
    let missing = || ApiError::not_found("conversion");
    let order = app.store.get_name(&conversion_name(id)).await?.ok_or_else(missing)?;
    let c = app.store.get_order(&order).await?.ok_or_else(missing)?;
    if c.conversion_id != id {
        return Err(missing());
    }
    Ok(c)
}

/// `POST /v1/commissions/{id}/release`: a held record back to pending (payable once its hold
/// ends).
pub(super) async fn release(app: &App, key: &ApiKey, id: &str) -> ApiResult {
    require(key, Scope::CommissionsWrite)?;
    let (book, _) = find(app, id).await?;
    let ids = [id.to_string()];
    let now = now_secs();
    apply(app.store.as_ref(), &book, BookRead::Ids(&ids), &[], |v| {
        ledger::release(v, id, now).map(|c| (c, ()))
    })
    .await?
    .map_err(refused)?;
    let (_, r) = find(app, id).await?;
    ok_json(StatusCode::OK, &r.to_api_json(now))
}

/// `POST /v1/commissions/{id}/reject` (`{"reason": …}`, optional): a pending, payable or held
/// record reversed whole.
pub(super) async fn reject<B>(app: &App, key: &ApiKey, id: &str, req: Request<B>) -> ApiResult
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    require(key, Scope::CommissionsWrite)?;
    let body = read_body(req, MAX_BODY_BYTES).await?;
    let reason = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let obj = parse_object(&body)?;
        let mut f = Fields::new(&obj, &["reason"]);
        let reason = f.string("reason", 256, false);
        f.finish()?;
        reason
    };
    let (book, _) = find(app, id).await?;
    let ids = [id.to_string()];
    let now = now_secs();
    let reason = reason.unwrap_or_else(|| "rejected".to_string());
    apply(app.store.as_ref(), &book, BookRead::Ids(&ids), &[], |v| {
        ledger::reject(v, id, &reason, now).map(|c| (c, ()))
    })
    .await?
    .map_err(refused)?;
    let (_, r) = find(app, id).await?;
    ok_json(StatusCode::OK, &r.to_api_json(now))
}

/// `POST /v1/conversions/{id}/refunds`: `refund_id`, `amount` (minor units, partial or whole).
pub(super) async fn refund<B>(app: &App, key: &ApiKey, id: &str, req: Request<B>) -> ApiResult
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    require(key, Scope::ConversionsWrite)?;
    let obj = parse_object(&read_body(req, MAX_BODY_BYTES).await?)?;
    let mut f = Fields::new(&obj, &["refund_id", "amount"]);
    let refund_id = f.id("refund_id", true);
    let amount = f.int("amount", 1, super::conversions::MAX_AMOUNT);
    if amount.is_none() && f.raw("amount").is_none() {
        f.error("amount", "is required");
    }
    f.finish()?;
    let (Some(refund_id), Some(amount)) = (refund_id, amount) else {
        unreachable!("checked by finish")
    };
    let c = find_conversion(app, id).await?;
    if amount > c.amount {
        return Err(ApiError::field(
            "amount",
            format!("exceeds the order's amount ({})", c.amount),
        ));
    }
    let (status, refunded) = match app
        .store
        .add_refund(&c.conversion_id, &refund_id, amount, c.amount)
        .await?
    {
        RefundOutcome::Added { total } => (StatusCode::CREATED, total),
        RefundOutcome::Repeat { amount: had, total } if had == amount => (StatusCode::OK, total),
        RefundOutcome::Repeat { amount: had, .. } => {
            return Err(ApiError::conflict(format!(
                "refund_id was recorded for an amount of {had}: nothing changed"
            )));
        }
        RefundOutcome::Exceeds { total } => {
            return Err(ApiError::conflict(format!(
                "{total} of the order's {} is refunded already: this refund would exceed it; nothing changed",
                c.amount
            )));
        }
    };
    let now = now_secs();
    let store = app.store.as_ref();
    let refunds = records_of(&c).into_iter().map(|(book, r)| {
        let refund_id = refund_id.clone();
        async move {
            let ids = [r.commission_id.clone()];
            apply(store, &book, BookRead::Ids(&ids), &[], |v| {
                Ok((ledger::refund(v, &ids, refunded, &refund_id, now), ()))
            })
            .await?
            .map_err(refused)?;
            let view = store.read_book(&book, BookRead::Ids(&ids), &[]).await?;
            Ok::<_, ApiError>(view.records)
        }
    });
    let records: Vec<Value> = futures_util::future::try_join_all(refunds)
        .await?
        .into_iter()
        .flatten()
        .map(|r| r.to_api_json(now))
        .collect();
    ok_json(
        status,
        &json!({
            "refund_id": refund_id,
            "conversion_id": c.conversion_id,
            "order_id": c.order_id,
            "amount": amount,
            "refunded": refunded,
            "remaining": c.amount - refunded,
            "commissions": records,
        }),
    )
}

/// `POST /v1/payouts`: `payout_id`, `partner_id`, `until` (RFC 3339, default now), `currency`
/// (when the partner has several).
pub(super) async fn payout<B>(app: &App, key: &ApiKey, req: Request<B>) -> ApiResult
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    require(key, Scope::CommissionsWrite)?;
    let obj = parse_object(&read_body(req, MAX_BODY_BYTES).await?)?;
    let mut f = Fields::new(&obj, &["payout_id", "partner_id", "until", "currency"]);
    let payout_id = f.id("payout_id", true);
    let partner = f.id("partner_id", true);
    let until = f.string("until", 64, false).and_then(|s| match parse_rfc3339(&s) {
        Some(t) => Some(t),
        None => {
            f.error("until", "must be an RFC 3339 time such as 2026-12-31T23:59:59Z");
            None
        }
    });
    let currency = f.string("currency", 3, false);
    if currency.as_deref().is_some_and(|c| !is_currency(c)) {
        let e = currency_error();
        f.error(&e.field, e.message);
    }
    f.finish()?;
    let (Some(payout_id), Some(partner)) = (payout_id, partner) else {
        unreachable!("checked by finish")
    };
    let book = one_book(app, &partner, currency).await?;
    if let Some(other) = app.store.claim_name(&payout_name(&payout_id), &book.name()).await?
        && other != book.name()
    {
        return Err(ApiError::conflict(
            "payout_id was used for another partner or currency: nothing changed",
        ));
    }
    let now = now_secs();
    let until = until.unwrap_or(now);
    let marker = ledger::payout_marker(&payout_id);
    let markers = [marker.clone()];
    let outcome = apply(app.store.as_ref(), &book, BookRead::Open, &markers, |v| {
        if let Some(done) = v.markers.get(&marker) {
            let p: Payout = serde_json::from_str(done).map_err(|_| Refusal::Unreadable)?;
            return Ok((Default::default(), (StatusCode::OK, p)));
        }
        ledger::payout(v, &book, &payout_id, until, now).map(|(c, p)| (c, (StatusCode::CREATED, p)))
    })
    .await?;
    let (status, p) = outcome.map_err(refused)?;
    ok_json(status, &p.to_api_json())
}

/// `GET /v1/partners/{id}/statement?from&to&currency&format=json|csv`: the opening balance, every
/// entry with `from <= at < to`, the closing balance (closing = opening + the entries).
pub(super) async fn statement_of(app: &App, key: &ApiKey, partner: &str, query: Option<&str>) -> ApiResult {
    require(key, Scope::StatsRead)?;
    let (mut from, mut to, mut currency, mut csv) = (None, None, None, false);
    let mut errors = Vec::new();
    for (k, v) in query_pairs(query) {
        match k.as_str() {
            "from" | "to" => match parse_rfc3339(&v) {
                Some(t) if k == "from" => from = Some(t),
                Some(t) => to = Some(t),
                None => errors.push(FieldError::new(
                    &k,
                    "must be an RFC 3339 time such as 2026-12-01T00:00:00Z",
                )),
            },
            "currency" if is_currency(&v) => currency = Some(v),
            "currency" => errors.push(currency_error()),
            "format" => match super::export::wants_csv(&v) {
                Ok(c) => csv = c,
                Err(e) => errors.push(e),
            },
            other => errors.push(FieldError::new(other, "unknown parameter")),
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    let book = one_book(app, partner, currency).await?;
    let s = statement(app.store.as_ref(), &book, from, to).await?;
    if csv {
        let mut out = String::from(
            "at,kind,amount,balance,commission_id,conversion_id,order_id,level,refund_id,payout_id,note\n",
        );
        let opt = |s: &Option<String>| s.as_deref().map(csv_cell).unwrap_or_default();
        out.push_str(&format!(",opening_balance,,{},,,,,,,\n", s.opening));
        for e in &s.entries {
            out.push_str(&format!(
                "{},{},{},{},{},{},{},{},{},{},{}\n",
                format_rfc3339(e.at),
                serde_json::to_value(e.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                e.amount,
                e.balance,
                opt(&e.commission_id),
                opt(&e.conversion_id),
                opt(&e.order_id),
                e.level.map(|l| l.to_string()).unwrap_or_default(),
                opt(&e.refund_id),
                opt(&e.payout_id),
                opt(&e.note),
            ));
        }
        out.push_str(&format!(",closing_balance,,{},,,,,,,\n", s.closing));
        let mut resp = Response::new(Body::from(out.into_bytes()));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/csv; charset=utf-8"),
        );
        resp.headers_mut().insert(
            header::CONTENT_DISPOSITION,
            HeaderValue::from_static("attachment; filename=\"statement.csv\""),
        );
        return Ok(resp);
    }
    let entries: Vec<Value> = s.entries.iter().map(|e| e.to_api_json()).collect();
    ok_json(
        StatusCode::OK,
        &json!({
            "partner_id": book.partner,
            "currency": book.currency,
            "from": from.map(format_rfc3339),
            "to": to.map(format_rfc3339),
            "opening_balance": s.opening,
            "entries": entries,
            "closing_balance": s.closing,
        }),
    )
}
