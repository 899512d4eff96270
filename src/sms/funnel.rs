//! The funnel of a campaign (or one owner's part of it): links minted → sent → delivered /
//! failed / pending → tapped → leads → conversions → revenue.
//!
//! - `tapped` counts distinct personalised links with a human tap: a personalised link's first
//!   human tap opens its lead (source `click`), so these are the links whose lead a tap opened. A
//!   shared link cannot tell people apart and is not counted.
//! - Each rate names its denominator (`delivered_per_sent`, `tapped_per_delivered`,
//!   `conversions_per_delivered`, `revenue_per_delivered` in minor units); `null` when it is 0.
//! - `first_tap_after_delivery`: the time from a message's delivery receipt to its link's first
//!   tap, nearest-rank p50 and p90 over delivered messages whose link was tapped (a tap reported
//!   before its receipt counts as 0 seconds).
//! - `taps_by_hour_since_delivery`: those first taps by whole hours since delivery, 72 entries;
//!   the last counts 71 hours and later.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::{Message, Status};

/// Entries of `taps_by_hour_since_delivery`.
pub(crate) const HOURS: usize = 72;

/// What a funnel is computed from.
#[derive(Debug, Clone, Default)]
pub(crate) struct FunnelInput {
    pub links: i64,
    pub messages: Vec<Message>,
    /// Code → the time of its first human tap, for personalised links tapped.
    pub first_taps: HashMap<String, i64>,
    pub leads: i64,
    pub conversions: i64,
    pub revenue: i64,
}

pub(crate) fn funnel(input: &FunnelInput) -> Value {
    let sent = input.messages.iter().filter(|m| m.sent.is_some()).count() as i64;
    let count = |s: Status| {
        input
            .messages
            .iter()
            .filter(|m| m.sent.is_some() && m.status() == s)
            .count() as i64
    };
    let (delivered, failed) = (count(Status::Delivered), count(Status::Failed));
    let tapped = input.first_taps.len() as i64;
    let mut waits: Vec<i64> = Vec::new();
    let mut by_hour = vec![0i64; HOURS];
    for m in &input.messages {
        let (Some(s), Some(o)) = (&m.sent, &m.outcome) else {
            continue;
        };
        if o.status != Status::Delivered {
            continue;
        }
        if let Some(t) = input.first_taps.get(&s.code) {
            let wait = (t - o.at).max(0);
            waits.push(wait);
            by_hour[((wait / 3600) as usize).min(HOURS - 1)] += 1;
        }
    }
    waits.sort_unstable();
    let rate = |n: i64, d: i64| {
        if d == 0 {
            Value::Null
        } else {
            json!(((n as f64 / d as f64) * 10_000.0).round() / 10_000.0)
        }
    };
    json!({
        "links": input.links,
        "sent": sent,
        "delivered": delivered,
        "failed": failed,
        "pending": sent - delivered - failed,
        "tapped": tapped,
        "leads": input.leads,
        "conversions": input.conversions,
        "revenue": input.revenue,
        "rates": {
            "delivered_per_sent": rate(delivered, sent),
            "tapped_per_delivered": rate(tapped, delivered),
            "conversions_per_delivered": rate(input.conversions, delivered),
            "revenue_per_delivered": rate(input.revenue, delivered),
        },
        "first_tap_after_delivery": {
            "p50_seconds": percentile(&waits, 50),
            "p90_seconds": percentile(&waits, 90),
        },
        "taps_by_hour_since_delivery": by_hour,
    })
}

/// Nearest-rank percentile of sorted `v`; `null` when empty.
fn percentile(v: &[i64], p: usize) -> Value {
    if v.is_empty() {
        return Value::Null;
    }
    let rank = (p * v.len()).div_ceil(100).max(1);
    json!(v[rank - 1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sms::{Outcome, Sent};

    fn message(code: &str, status: Option<(Status, i64)>) -> Message {
        Message {
            sent: Some(Sent {
                provider: "aliyun".into(),
                message_id: format!("m-{code}"),
                code: code.into(),
                campaign_id: Some("c".into()),
                owner_id: None,
                sent_at: 0,
            }),
            outcome: status.map(|(status, at)| Outcome {
                status,
                at,
                error: None,
            }),
        }
    }

    #[test]
    fn counts_rates_and_waits_follow_the_messages() {
        let input = FunnelInput {
            links: 5,
            messages: vec![
                message("a", Some((Status::Delivered, 100))),
                message("b", Some((Status::Delivered, 100))),
                message("c", Some((Status::Failed, 100))),
                message("d", None),
            ],
            first_taps: HashMap::from([
                ("a".into(), 100 + 30),
                ("b".into(), 100 + 2 * 3600 + 5),
                ("e".into(), 9),
            ]),
            leads: 3,
            conversions: 1,
            revenue: 5000,
        };
        let f = funnel(&input);
        assert_eq!(
            (&f["sent"], &f["delivered"], &f["failed"], &f["pending"], &f["tapped"]),
            (&json!(4), &json!(2), &json!(1), &json!(1), &json!(3))
        );
        assert_eq!(f["rates"]["delivered_per_sent"], 0.5);
        assert_eq!(f["rates"]["tapped_per_delivered"], 1.5);
        assert_eq!(f["rates"]["revenue_per_delivered"], 2500.0);
        assert_eq!(f["first_tap_after_delivery"]["p50_seconds"], 30);
        assert_eq!(f["first_tap_after_delivery"]["p90_seconds"], 7205);
        let hours = f["taps_by_hour_since_delivery"].as_array().unwrap();
        assert_eq!((hours.len(), &hours[0], &hours[2]), (HOURS, &json!(1), &json!(1)));
    }

    #[test]
    fn an_empty_campaign_has_no_rates() {
        let f = funnel(&FunnelInput::default());
        assert!(f["rates"]["delivered_per_sent"].is_null());
        assert!(f["first_tap_after_delivery"]["p50_seconds"].is_null());
    }
}
