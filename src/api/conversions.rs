//! `POST /v1/conversions`: an order or appointment reported back, attributed to the click, lead or
//! code that led to it, with commission for the owner and up to two ancestors.
//!
//! `order_id` is the idempotency key: the first answer is stored with an atomic claim, and every
//! repeat (also concurrent ones) answers 200 with it and emits nothing.

use bytes::Bytes;
use http::{Request, StatusCode};

use super::fields::Fields;
use super::{ApiResult, MAX_BODY_BYTES, ok_json, parse_object, read_body, require};
use crate::app::App;
use crate::attribution::binding::Binding;
use crate::attribution::conversions::is_attributed;
use crate::attribution::model::{Conversion, DEFAULT_WINDOW_SECS};
use crate::attribution::{chain, commissions};
use crate::body::BoxError;
use crate::click::{Event, Queued};
use crate::config::{ApiKey, Scope};
use crate::link::code::{generate_codes, is_code_shaped};
use crate::time::now_secs;

/// Largest amount accepted, in minor units (10^15: ten trillion in major units).
pub(super) const MAX_AMOUNT: i64 = 1_000_000_000_000_000;

enum Source {
    Click(String),
    Lead(String),
    Code(String),
    /// Only a `customer_id`: the customer's bound owner ([`crate::attribution::binding`]).
    Customer(String),
}

pub(super) async fn create<B>(app: &App, key: &ApiKey, req: Request<B>) -> ApiResult
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    require(key, Scope::ConversionsWrite)?;
    let obj = parse_object(&read_body(req, MAX_BODY_BYTES).await?)?;
    let mut f = Fields::new(
        &obj,
        &[
            "order_id",
            "click_id",
            "lead_id",
            "code",
            "type",
            "amount",
            "currency",
            "customer_id",
        ],
    );
    let order_id = f.id("order_id", true);
    let click_id = f.string("click_id", 256, false);
    let lead_id = f.id("lead_id", false);
    let code = f.string("code", 64, false);
    let kind = f.string("type", 32, false).unwrap_or_else(|| "order".to_string());
    let amount = f.int("amount", 0, MAX_AMOUNT).unwrap_or(0);
    let currency = f.currency("currency");
    let customer_id = f.id("customer_id", false);
    if amount > 0 && currency.is_none() {
        f.error("currency", "is required when amount is set");
    }
    let source = match (click_id, lead_id, code) {
        (Some(c), None, None) => Some(Source::Click(c)),
        (None, Some(l), None) => Some(Source::Lead(l)),
        (None, None, Some(c)) => Some(Source::Code(c)),
        (None, None, None) => match &customer_id {
            Some(c) => Some(Source::Customer(c.clone())),
            None => {
                f.error("click_id", "one of click_id, lead_id, code or customer_id is required");
                None
            }
        },
        _ => {
            f.error("click_id", "give only one of click_id, lead_id or code");
            None
        }
    };
    f.finish()?;
    let (Some(order_id), Some(source)) = (order_id, source) else {
        unreachable!("checked by finish")
    };

    let now = now_secs();
    // A code or a binding alone names no tap: no time since a tap is known.
    let tapped = matches!(source, Source::Click(_) | Source::Lead(_));
    let bound = match &source {
        Source::Customer(c) => app.store.get_binding(c).await?,
        _ => None,
    };
    let (code, clicked_at, click_id, lead_id) = match source {
        Source::Click(id) => match app.signer.verify(&id) {
            Some(c) => (Some(c.code), Some(c.clicked_at), Some(id), None),
            None => (None, None, Some(id), None),
        },
        Source::Lead(id) => match app.store.get_lead(&id).await? {
            Some(l) => {
                let at = app.signer.verify(&l.click_id).map_or(l.created_at, |c| c.clicked_at);
                (Some(l.code), Some(at), Some(l.click_id), Some(id))
            }
            None => (None, None, None, Some(id)),
        },
        Source::Code(c) => (Some(c), Some(now), None, None),
        Source::Customer(_) => (bound.as_ref().and_then(|b| b.code.clone()), None, None, None),
    };
    let link = match code.as_deref().filter(|c| is_code_shaped(c)) {
        Some(c) => app.store.get_link(c).await?,
        None => None,
    };
    // A bound customer's order belongs to the binding's owner and campaign (a binding set by
    // hand may name an owner other than its code's).
    let campaign_id = match &bound {
        Some(b) => b.campaign_id.clone(),
        None => link.as_ref().and_then(|l| l.campaign_id.clone()),
    };
    let campaign = match campaign_id.as_deref() {
        Some(id) => app.store.get_campaign(id).await?,
        None => None,
    };
    let window = campaign.as_ref().map_or(DEFAULT_WINDOW_SECS, |c| c.attribution_window);
    let attributed = match &bound {
        Some(_) => true,
        None => is_attributed(link.is_some(), clicked_at, now, window),
    };
    let owner = match &bound {
        Some(b) => Some(b.owner_id.clone()),
        None => link.as_ref().and_then(|l| l.owner_id.clone()),
    };
    let levels = match (&owner, attributed) {
        (Some(o), true) => {
            let store = app.store.as_ref();
            let ids = chain(o, |id| async move { store.get_partner(&id).await }).await?;
            commissions(&ids, amount, campaign.as_ref().map_or(&[][..], |c| &c.commission_bps))
        }
        _ => Vec::new(),
    };
    // Orders through one click id, counted once each (a repeated order id adds nothing).
    let repeat_click = match (&campaign, &click_id) {
        (Some(c), Some(click)) if c.max_conversions_per_click > 0 && attributed => {
            let n = app.store.add_member(&format!("click:{click}"), &order_id).await?;
            n > u64::from(c.max_conversions_per_click)
        }
        _ => false,
    };
    let held = campaign.as_ref().and_then(|c| {
        let self_purchase = c.self_purchase
            && customer_id
                .as_deref()
                .is_some_and(|who| levels.iter().any(|l| l.partner_id == who));
        let too_fast = c.min_seconds_after_tap > 0
            && tapped
            && clicked_at
                .is_some_and(|t| now.saturating_sub(t) < i64::try_from(c.min_seconds_after_tap).unwrap_or(i64::MAX));
        if self_purchase {
            Some("self_purchase")
        } else if too_fast {
            Some("too_fast")
        } else if repeat_click {
            Some("repeat_click")
        } else {
            None
        }
    });
    let mut conversion = Conversion {
        conversion_id: format!("cv_{}", generate_codes(2).concat()),
        order_id,
        conversion_type: kind,
        amount,
        currency,
        attributed,
        code: link.as_ref().map(|l| l.code.clone()).or(code),
        campaign_id,
        owner_id: owner,
        recipient_id: link.as_ref().and_then(|l| l.recipient_id.clone()),
        click_id,
        lead_id,
        chain: levels,
        created_at: now,
        customer_id,
    };
    super::commissions::assign(&mut conversion, campaign.as_ref().map_or(0, |c| c.hold_secs), held);
    // The customer bought through this owner's code: bound to them as the campaign's policy says.
    if bound.is_none()
        && attributed
        && let (Some(customer), Some(owner)) = (&conversion.customer_id, &conversion.owner_id)
    {
        let b = Binding {
            customer_id: customer.clone(),
            owner_id: owner.clone(),
            campaign_id: conversion.campaign_id.clone(),
            code: conversion.code.clone(),
            since: now,
            protected_until: None,
            source: "conversion".to_string(),
        };
        super::commissions::bind(app, b, campaign.as_ref()).await?;
    }
    if let Some(first) = app.store.claim_conversion(&conversion).await? {
        // A repeat: complete what a first call cut short (accruing adds nothing twice).
        super::commissions::settle(app, &first).await?;
        return ok_json(StatusCode::OK, &first.to_api_json());
    }
    if let Some(events) = &app.events {
        let kind = link.map(|l| l.kind);
        events.try_send(Queued::Event(Box::new(Event::conversion(&conversion, kind))));
    }
    // After the event: a call that fails here is retried by the client, which finds the order
    // recorded and settles it then, and the event goes out once.
    super::commissions::settle(app, &conversion).await?;
    ok_json(StatusCode::CREATED, &conversion.to_api_json())
}
