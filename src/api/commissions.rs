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

use super::fields::{CURRENCY_ERROR, Fields, is_currency};
use super::{ApiResult, MAX_BODY_BYTES, ok_json, parse_object, query_pairs, read_body, require};
use crate::app::App;
use crate::attribution::binding::{Binding, BindingPolicy, takes_over};
use crate::attribution::model::{Campaign, Conversion};
use crate::body::{Body, BoxError, csv_cell};
use crate::click::{Event, Queued};
use crate::commission::ledger::{self, Refusal};
use crate::commission::{AuditEntry, BookKey, Payout, Record, State, commission_id, conversion_of};
use crate::config::{ApiKey, Scope};
use crate::error::{ApiError, FieldError};
use crate::store::books::{apply, statement};
use crate::store::{BookRead, RefundOutcome, StoreError};
use crate::time::{format_rfc3339, now_secs, parse_rfc3339};

fn conversion_name(id: &str) -> String {
    format!("conversion:{id}")
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

/// Records what the conversion earns in each partner's book (one store call), and indexes the
/// conversion by id for refunds; idempotent (a retried or repeated conversion accrues nothing
/// twice).
pub(super) async fn settle(app: &App, c: &Conversion) -> Result<(), ApiError> {
    let accruals = records_of(c);
    // Refunds find the conversion by its id.
    let index = (c.amount > 0).then(|| (conversion_name(&c.conversion_id), c.order_id.clone()));
    if accruals.is_empty() && index.is_none() {
        return Ok(());
    }
    let now = now_secs();
    let new = app.store.accrue(&accruals, index, now).await?;
    for (_, r) in accruals.iter().filter(|(_, r)| new.contains(&r.commission_id)) {
        let change = if r.state == State::Held { "held" } else { "created" };
        emit(app, Event::commission(r, change, change, r.earned, now));
    }
    Ok(())
}

/// Hands a commission event to the batcher (the stream, the event log, webhooks).
fn emit(app: &App, e: Event) {
    if let Some(events) = &app.events {
        events.try_send(Queued::Event(Box::new(e)));
    }
}

/// The book and record of a commission id.
async fn find(app: &App, id: &str) -> Result<(BookKey, Record), ApiError> {
    let missing = || ApiError::not_found("commission");
    let (conversion, _) = conversion_of(id).ok_or_else(missing)?;
    let c = match find_conversion(app, &conversion).await {
        Ok(c) => c,
        Err(e) if e.code == crate::error::ErrorCode::NotFound => return Err(missing()),
        Err(e) => return Err(e),
    };
    let (book, _) = records_of(&c)
        .into_iter()
        .find(|(_, r)| r.commission_id == id)
        .ok_or_else(missing)?;
    let ids = [id.to_string()];
    let view = app.store.read_book(&book, BookRead::Ids(&ids), &[]).await?;
    let r = view.records.into_iter().next().ok_or_else(missing)?;
    Ok((book, r))
}

/// Records a change made by hand. Written after the change: if the store fails now, the change
/// stands, the entry is logged whole (so it can be recovered) and counted
/// (`linkgate_audit_failures_total`), and the call still answers what it did.
pub(super) async fn audit(
    app: &App,
    key: &ApiKey,
    action: &str,
    target: &str,
    before: Option<Value>,
    after: Option<Value>,
) {
    let entry = AuditEntry {
        seq: 0,
        at: now_secs(),
        key_id: key.id(),
        action: action.to_string(),
        target: target.to_string(),
        before,
        after,
    };
    if let Err(e) = app.store.append_audit(&entry).await {
        app.metrics.audit_failures.increment(1);
        tracing::error!(error = %e, entry = %serde_json::to_string(&entry).unwrap_or_default(), "could not write an audit entry");
    }
}

/// `GET /v1/audit?cursor&limit` (`admin`): changes made by hand, oldest first.
pub(super) async fn audit_log(app: &App, key: &ApiKey, query: Option<&str>) -> ApiResult {
    require(key, Scope::Admin)?;
    let (mut after, mut limit) = (0u64, super::DEFAULT_PAGE);
    let mut errors = Vec::new();
    for (k, v) in query_pairs(query) {
        match k.as_str() {
            "cursor" => match v.parse() {
                Ok(c) => after = c,
                Err(_) => errors.push(FieldError::new("cursor", "must be a cursor from a previous page")),
            },
            "limit" => match super::limit_param(&v, super::MAX_PAGE) {
                Ok(l) => limit = l,
                Err(e) => errors.push(e),
            },
            other => errors.push(FieldError::new(other, "unknown parameter")),
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    let entries = app.store.list_audit(after, limit).await?;
    let next = (entries.len() == limit).then(|| (after + limit as u64).to_string());
    let list: Vec<Value> = entries.iter().map(AuditEntry::to_api_json).collect();
    ok_json(StatusCode::OK, &json!({"entries": list, "next_cursor": next}))
}

/// Binds `candidate`'s customer to its owner if the campaign's policy lets this touch take them.
/// Returns the binding now stored when it changed.
pub(super) async fn bind(
    app: &App,
    candidate: Binding,
    campaign: Option<&Campaign>,
) -> Result<Option<Binding>, ApiError> {
    let policy = campaign.map(|c| c.binding).unwrap_or_default();
    let changed = swap_binding(app, &candidate.customer_id, |current, now| {
        takes_over(current, &candidate, policy, now).then(|| Binding {
            protected_until: protected_until(campaign, candidate.since),
            ..candidate.clone()
        })
    })
    .await?;
    Ok(changed.map(|(_, new)| new))
}

/// Until when a binding made at `since` under `campaign` is protected (`protected` campaigns).
fn protected_until(campaign: Option<&Campaign>, since: i64) -> Option<i64> {
    campaign
        .filter(|c| c.binding == BindingPolicy::Protected)
        .map(|c| since.saturating_add(i64::try_from(c.binding_secs).unwrap_or(i64::MAX)))
}

/// Replaces the customer's binding with what `decide` makes of the current one (`None`: keep
/// it), compare and set: a racing change makes `decide` judge again what it changed. Returns the
/// binding before and after when it changed.
async fn swap_binding(
    app: &App,
    customer: &str,
    decide: impl Fn(Option<&Binding>, i64) -> Option<Binding>,
) -> Result<Option<(Option<Binding>, Binding)>, ApiError> {
    let store = app.store.as_ref();
    for _ in 0..16 {
        let current = store.get_binding(customer).await?;
        let Some(new) = decide(current.as_ref(), now_secs()) else {
            return Ok(None);
        };
        if store.swap_binding(customer, current.as_ref(), &new).await? {
            return Ok(Some((current, new)));
        }
    }
    Err(StoreError::Contended(format!("the binding of `{customer}` kept changing")).into())
}

/// `GET /v1/customers/{id}/binding`: who the customer is bound to, since when, and until when
/// that is protected.
pub(super) async fn get_binding(app: &App, key: &ApiKey, customer: &str) -> ApiResult {
    require(key, Scope::StatsRead)?;
    let b = app
        .store
        .get_binding(customer)
        .await?
        .ok_or_else(|| ApiError::not_found("binding of this customer"))?;
    ok_json(StatusCode::OK, &b.to_api_json())
}

/// `POST /v1/customers/{id}/binding` (`commissions:write`): binds the customer by hand
/// (`owner_id`, optional `campaign_id`, `code`), whatever the policy; audited.
pub(super) async fn set_binding<B>(app: &App, key: &ApiKey, customer: &str, req: Request<B>) -> ApiResult
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    require(key, Scope::CommissionsWrite)?;
    let obj = parse_object(&read_body(req, MAX_BODY_BYTES).await?)?;
    let mut f = Fields::new(&obj, &["owner_id", "campaign_id", "code"]);
    let owner = f.id("owner_id", true);
    let campaign_id = f.id("campaign_id", false);
    let code = f.string("code", 64, false);
    f.finish()?;
    let Some(owner) = owner else {
        unreachable!("checked by finish")
    };
    if let Some(c) = &code
        && app.store.get_link(c).await?.is_none()
    {
        return Err(ApiError::field("code", "no link has this code"));
    }
    let campaign = match campaign_id.as_deref() {
        Some(id) => app.store.get_campaign(id).await?,
        None => None,
    };
    let now = now_secs();
    let new = Binding {
        customer_id: customer.to_string(),
        owner_id: owner,
        campaign_id,
        code,
        since: now,
        protected_until: protected_until(campaign.as_ref(), now),
        source: "manual".to_string(),
    };
    // By hand: whatever the policy, so it always takes the customer.
    let (before, new) = swap_binding(app, customer, |_, _| Some(new.clone()))
        .await?
        .ok_or_else(ApiError::internal)?;
    let status = if before.is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let after = new.to_api_json();
    let before = before.map(|b| b.to_api_json());
    audit(app, key, "binding.set", customer, before, Some(after.clone())).await;
    ok_json(status, &after)
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
    // A key limited to one owner reads that partner's records only (another's: not found).
    if !super::owns(key, Some(&r.partner_id)) {
        return Err(ApiError::not_found("commission"));
    }
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
            "currency" => errors.push(FieldError::new("currency", CURRENCY_ERROR)),
            "state" if matches!(v.as_str(), "pending" | "payable" | "held") => state = Some(v),
            "state" => errors.push(FieldError::new("state", "must be pending, payable or held")),
            other => errors.push(FieldError::new(other, "unknown parameter")),
        }
    }
    if partner.is_some() == conversion.is_some() {
        errors.push(FieldError::new("partner_id", "give one of partner_id or conversion_id"));
    }
    if let (Some(o), Some(p)) = (&key.owner, &partner)
        && o != p
    {
        return Err(ApiError::new(
            crate::error::ErrorCode::Forbidden,
            "this API key reads only its own owner's commission",
        ));
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
        .filter(|r| super::owns(key, Some(&r.partner_id)))
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
    by_hand(app, key, id, "commission.release", |v, now| ledger::release(v, id, now)).await
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
    let reason = reason.unwrap_or_else(|| "rejected".to_string());
    by_hand(app, key, id, "commission.reject", |v, now| {
        ledger::reject(v, id, &reason, now)
    })
    .await
}

/// A decision by hand on one record: applied to its book, sent downstream as a `commission` event
/// (`released`, or `reversed` by the amount it had), audited with the record before and after.
async fn by_hand(
    app: &App,
    key: &ApiKey,
    id: &str,
    action: &str,
    decide: impl Fn(&crate::commission::BookView, i64) -> Result<crate::commission::Change, Refusal>,
) -> ApiResult {
    let (book, before) = find(app, id).await?;
    let ids = [id.to_string()];
    let now = now_secs();
    apply(app.store.as_ref(), &book, BookRead::Ids(&ids), &[], |v| {
        decide(v, now).map(|c| (c, ()))
    })
    .await?
    .map_err(refused)?;
    let (_, r) = find(app, id).await?;
    let event = match r.state {
        State::Reversed => Event::commission(&r, "reversed", "rejected", before.amount, now),
        _ => Event::commission(&r, "released", "released", r.amount, now),
    };
    emit(app, event);
    let after = r.to_api_json(now);
    audit(app, key, action, id, Some(before.to_api_json(now)), Some(after.clone())).await;
    ok_json(StatusCode::OK, &after)
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
    // A refund racing the conversion's first call finds its records accrued.
    settle(app, &c).await?;
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
    if status == StatusCode::CREATED {
        // Before the books: the refund is recorded, so its revenue leaves the stats whatever
        // happens next (a retry finds it recorded and emits nothing again).
        emit(app, Event::refund(&c, &refund_id, amount, c.amount - refunded, now));
    }
    let store = app.store.as_ref();
    let refunds = records_of(&c).into_iter().map(|(book, r)| {
        let refund_id = refund_id.clone();
        async move {
            let ids = [r.commission_id.clone()];
            let reversed = apply(store, &book, BookRead::Ids(&ids), &[], |v| {
                let change = ledger::refund(v, &ids, refunded, &refund_id, now);
                let by: i64 = change.entries.iter().map(|e| -e.amount).sum();
                Ok((change, by))
            })
            .await?
            .map_err(refused)?;
            let view = store.read_book(&book, BookRead::Ids(&ids), &[]).await?;
            if reversed > 0
                && let Some(after) = view.records.first()
            {
                let mut e = Event::commission(after, "reversed", &format!("refund.{refund_id}"), reversed, now);
                e.refund_id = Some(refund_id.clone());
                emit(app, e);
            }
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
    let currency = f.currency("currency");
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
            return Ok((Default::default(), (StatusCode::OK, p, Vec::new())));
        }
        ledger::payout(v, &book, &payout_id, until, now).map(|(c, p)| {
            let paid = c.records.clone();
            (c, (StatusCode::CREATED, p, paid))
        })
    })
    .await?;
    let (status, p, paid) = outcome.map_err(refused)?;
    for r in &paid {
        emit(app, Event::commission(r, "paid", "paid", r.amount, now));
    }
    if status == StatusCode::CREATED {
        audit(app, key, "payout.create", &p.payout_id, None, Some(p.to_api_json())).await;
    }
    ok_json(status, &p.to_api_json())
}

/// `POST /v1/partners/{id}/adjustments`: `adjustment_id`, `amount` (minor units, not 0: positive
/// is owed to the partner, negative owed back), `currency` (when the partner has several books,
/// or none yet), `note`. Entered in the book and carried to the next payout; idempotent by
/// `adjustment_id`; audited.
pub(super) async fn adjustment<B>(app: &App, key: &ApiKey, partner: &str, req: Request<B>) -> ApiResult
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    require(key, Scope::CommissionsWrite)?;
    let obj = parse_object(&read_body(req, MAX_BODY_BYTES).await?)?;
    let mut f = Fields::new(&obj, &["adjustment_id", "amount", "currency", "note"]);
    let adjustment_id = f.id("adjustment_id", true);
    let max = super::conversions::MAX_AMOUNT;
    let amount = f.int("amount", -max, max);
    if amount == Some(0) {
        f.error("amount", "must not be 0");
    }
    if amount.is_none() && f.raw("amount").is_none() {
        f.error("amount", "is required");
    }
    let currency = f.currency("currency");
    let note = f.string("note", 256, false);
    f.finish()?;
    let (Some(adjustment_id), Some(amount)) = (adjustment_id, amount) else {
        unreachable!("checked by finish")
    };
    let book = one_book(app, partner, currency).await?;
    let marker = ledger::adjustment_marker(&adjustment_id);
    let markers = [marker.clone()];
    let now = now_secs();
    let outcome = apply(app.store.as_ref(), &book, BookRead::Ids(&[]), &markers, |v| {
        Ok(match v.markers.get(&marker) {
            Some(had) if had.parse::<i64>().ok() == Some(amount) => (Default::default(), StatusCode::OK),
            Some(_) => (Default::default(), StatusCode::CONFLICT),
            None => (
                ledger::adjust(v, &adjustment_id, amount, note.as_deref(), now),
                StatusCode::CREATED,
            ),
        })
    })
    .await?
    .map_err(refused)?;
    if outcome == StatusCode::CONFLICT {
        return Err(ApiError::conflict(
            "adjustment_id was recorded for another amount: nothing changed",
        ));
    }
    let answer = json!({
        "adjustment_id": adjustment_id,
        "partner_id": book.partner,
        "currency": book.currency,
        "amount": amount,
        "note": note,
    });
    if outcome == StatusCode::CREATED {
        audit(
            app,
            key,
            "adjustment.create",
            &adjustment_id,
            None,
            Some(answer.clone()),
        )
        .await;
    }
    ok_json(outcome, &answer)
}

/// `GET /v1/partners/{id}/statement?from&to&currency&format=json|csv`: the opening balance, every
/// entry with `from <= at < to`, the closing balance (closing = opening + the entries).
pub(super) async fn statement_of(app: &App, key: &ApiKey, partner: &str, query: Option<&str>) -> ApiResult {
    require(key, Scope::StatsRead)?;
    // A partner's own key (`owner:<id>`) reads its own statement.
    if !super::owns(key, Some(partner)) {
        return Err(ApiError::not_found("commission of this partner"));
    }
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
            "currency" => errors.push(FieldError::new("currency", CURRENCY_ERROR)),
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
                e.kind.as_str(),
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
    // Written straight from the entries (no JSON tree per entry): a book of 100,000 entries is
    // about 20 MB of JSON, and a tree per entry tripled the time to write it.
    let mut out = serde_json::to_vec(&json!({
        "partner_id": book.partner,
        "currency": book.currency,
        "from": from.map(format_rfc3339),
        "to": to.map(format_rfc3339),
        "opening_balance": s.opening,
        "closing_balance": s.closing,
    }))
    .unwrap_or_default();
    out.pop(); // the closing brace: the entries follow
    out.extend_from_slice(br#","entries":["#);
    let mut at = (i64::MIN, String::new());
    for (i, e) in s.entries.iter().enumerate() {
        if e.at != at.0 {
            at = (e.at, format_rfc3339(e.at));
        }
        if i > 0 {
            out.push(b',');
        }
        let row = ApiEntry {
            seq: e.seq,
            at: &at.1,
            kind: e.kind,
            amount: e.amount,
            balance: e.balance,
            commission_id: e.commission_id.as_deref(),
            conversion_id: e.conversion_id.as_deref(),
            order_id: e.order_id.as_deref(),
            level: e.level,
            refund_id: e.refund_id.as_deref(),
            payout_id: e.payout_id.as_deref(),
            note: e.note.as_deref(),
        };
        serde_json::to_writer(&mut out, &row).map_err(|_| ApiError::internal())?;
    }
    out.extend_from_slice(b"]}");
    Ok(crate::body::json(StatusCode::OK, out))
}

/// A statement's entry as the API shows it (absent fields left out).
#[derive(serde::Serialize)]
struct ApiEntry<'a> {
    seq: u64,
    at: &'a str,
    kind: crate::commission::EntryKind,
    amount: i64,
    balance: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    commission_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    conversion_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    order_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    level: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refund_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payout_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<&'a str>,
}
