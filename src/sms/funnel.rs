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
//!
//! The stores keep the counts as facts land instead of scanning a campaign's messages at each
//! read ([`account`] is what one message adds): sent, delivered and failed messages and tapped
//! links per owner (`none` for those without one; the campaign's are their sums), and the waits
//! in an ordered index per campaign and per owner, read by rank for the percentiles. Every write
//! is idempotent (a set member, an index entry, or a counter moved in the same transaction as the
//! fact), so a retried send, receipt or replayed tap never counts twice. A campaign whose facts
//! landed before the counts were kept is counted from its messages and leads once, at its first
//! read.

use serde_json::{Value, json};

use super::{Message, Status};

/// Entries of `taps_by_hour_since_delivery`.
pub(crate) const HOURS: usize = 72;

/// The owner scope of links, sends and taps that have no owner.
pub(crate) const NO_OWNER: &str = "none";

/// What a funnel shows. The stores keep these counts as sends, receipts and first taps land
/// (each message and tap counted once however often it is reported), so reading a funnel costs
/// the same for ten links as for a million.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FunnelCounts {
    pub links: i64,
    pub sent: i64,
    pub delivered: i64,
    pub failed: i64,
    pub tapped: i64,
    pub leads: i64,
    pub conversions: i64,
    pub revenue: i64,
    pub waits: Waits,
}

/// The waits from delivery to first tap of delivered messages whose link was tapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Waits {
    pub p50: Option<i64>,
    pub p90: Option<i64>,
    pub by_hour: [i64; HOURS],
}

impl Default for Waits {
    fn default() -> Self {
        Self {
            p50: None,
            p90: None,
            by_hour: [0; HOURS],
        }
    }
}

impl Waits {
    /// The waits of `sorted` (ascending), as the stores' readers compute them from an ordered index.
    pub(crate) fn of_sorted(sorted: &[i64]) -> Self {
        let mut w = Waits {
            p50: rank(sorted.len() as i64, 50).map(|r| sorted[r as usize - 1]),
            p90: rank(sorted.len() as i64, 90).map(|r| sorted[r as usize - 1]),
            ..Waits::default()
        };
        for &s in sorted {
            w.by_hour[hour_of(s)] += 1;
        }
        w
    }
}

/// What one message adds to its campaign's funnel, once it has been sent: its outcome, when it
/// has one, and the wait from delivery to the first tap of its link (`first_tap`), when it was
/// delivered and tapped. A tap reported before its receipt waits 0 seconds.
pub(crate) fn account(m: &Message, first_tap: Option<i64>) -> Option<(Status, Option<i64>)> {
    m.sent.as_ref()?;
    let o = m.outcome.as_ref()?;
    let wait = match (o.status, first_tap) {
        (Status::Delivered, Some(t)) => Some((t - o.at).max(0)),
        _ => None,
    };
    Some((o.status, wait))
}

/// The 1-based nearest rank of percentile `p` among `n` values (`None` when there are none).
pub(crate) fn rank(n: i64, p: i64) -> Option<i64> {
    (n > 0).then(|| ((p * n + 99) / 100).max(1))
}

/// The `taps_by_hour_since_delivery` entry of a wait: whole hours, the last counting 71 and later.
pub(crate) fn hour_of(wait: i64) -> usize {
    ((wait.max(0) / 3600) as usize).min(HOURS - 1)
}

pub(crate) fn funnel(c: &FunnelCounts) -> Value {
    let rate = |n: i64, d: i64| {
        if d == 0 {
            Value::Null
        } else {
            json!(((n as f64 / d as f64) * 10_000.0).round() / 10_000.0)
        }
    };
    json!({
        "links": c.links,
        "sent": c.sent,
        "delivered": c.delivered,
        "failed": c.failed,
        "pending": c.sent - c.delivered - c.failed,
        "tapped": c.tapped,
        "leads": c.leads,
        "conversions": c.conversions,
        "revenue": c.revenue,
        "rates": {
            "delivered_per_sent": rate(c.delivered, c.sent),
            "tapped_per_delivered": rate(c.tapped, c.delivered),
            "conversions_per_delivered": rate(c.conversions, c.delivered),
            "revenue_per_delivered": rate(c.revenue, c.delivered),
        },
        "first_tap_after_delivery": {
            "p50_seconds": c.waits.p50,
            "p90_seconds": c.waits.p90,
        },
        "taps_by_hour_since_delivery": c.waits.by_hour.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

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

    /// The counts the way the stores keep them: each message's [`account`], summed.
    fn counted(messages: &[Message], first_taps: &HashMap<String, i64>) -> FunnelCounts {
        let mut c = FunnelCounts::default();
        let mut waits = Vec::new();
        for m in messages {
            let Some(s) = &m.sent else { continue };
            c.sent += 1;
            match account(m, first_taps.get(&s.code).copied()) {
                Some((Status::Delivered, wait)) => {
                    c.delivered += 1;
                    waits.extend(wait);
                }
                Some((Status::Failed, _)) => c.failed += 1,
                _ => {}
            }
        }
        c.tapped = first_taps.len() as i64;
        waits.sort_unstable();
        c.waits = Waits::of_sorted(&waits);
        c
    }

    /// The funnel computed from scratch over every message, as it was before the stores kept
    /// counts: the oracle the counts must agree with.
    fn scanned(messages: &[Message], first_taps: &HashMap<String, i64>) -> FunnelCounts {
        let sent: Vec<&Message> = messages.iter().filter(|m| m.sent.is_some()).collect();
        let count = |s: Status| sent.iter().filter(|m| m.status() == s).count() as i64;
        let mut waits: Vec<i64> = sent
            .iter()
            .filter(|m| m.status() == Status::Delivered)
            .filter_map(|m| {
                let t = first_taps.get(&m.sent.as_ref().unwrap().code)?;
                Some((t - m.outcome.as_ref().unwrap().at).max(0))
            })
            .collect();
        waits.sort_unstable();
        let pick = |p: usize| (!waits.is_empty()).then(|| waits[((p * waits.len()).div_ceil(100)).max(1) - 1]);
        let mut by_hour = [0; HOURS];
        for w in &waits {
            by_hour[((w / 3600) as usize).min(HOURS - 1)] += 1;
        }
        FunnelCounts {
            sent: sent.len() as i64,
            delivered: count(Status::Delivered),
            failed: count(Status::Failed),
            tapped: first_taps.len() as i64,
            waits: Waits {
                p50: pick(50),
                p90: pick(90),
                by_hour,
            },
            ..FunnelCounts::default()
        }
    }

    #[test]
    fn counts_rates_and_waits_follow_the_messages() {
        let messages = vec![
            message("a", Some((Status::Delivered, 100))),
            message("b", Some((Status::Delivered, 100))),
            message("c", Some((Status::Failed, 100))),
            message("d", None),
        ];
        let taps = HashMap::from([
            ("a".into(), 100 + 30),
            ("b".into(), 100 + 2 * 3600 + 5),
            ("e".into(), 9),
        ]);
        let mut c = counted(&messages, &taps);
        (c.links, c.leads, c.conversions, c.revenue) = (5, 3, 1, 5000);
        let f = funnel(&c);
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
        let f = funnel(&FunnelCounts::default());
        assert!(f["rates"]["delivered_per_sent"].is_null());
        assert!(f["first_tap_after_delivery"]["p50_seconds"].is_null());
    }

    #[test]
    fn a_tap_before_its_receipt_waits_nothing_and_an_unsent_message_adds_nothing() {
        let m = message("a", Some((Status::Delivered, 500)));
        assert_eq!(account(&m, Some(100)), Some((Status::Delivered, Some(0))));
        assert_eq!(account(&m, None), Some((Status::Delivered, None)));
        let failed = message("a", Some((Status::Failed, 500)));
        assert_eq!(account(&failed, Some(900)), Some((Status::Failed, None)));
        let unsent = Message { sent: None, ..m };
        assert_eq!(account(&unsent, Some(900)), None);
        assert_eq!(account(&message("a", None), Some(900)), None);
    }

    proptest! {
        /// Counting message by message gives the funnel a scan of every message gave, for any
        /// messages, outcomes and taps.
        #[test]
        fn counts_agree_with_a_scan(
            ms in proptest::collection::vec((any::<bool>(), 0u8..3, 0i64..400_000, proptest::option::of(0i64..400_000)), 0..60),
        ) {
            let mut messages = Vec::new();
            let mut taps = HashMap::new();
            for (i, (sent, status, at, tap)) in ms.into_iter().enumerate() {
                let code = format!("k{i}");
                let status = [None, Some((Status::Delivered, at)), Some((Status::Failed, at))][status as usize];
                let mut m = message(&code, status);
                if !sent {
                    m.sent = None;
                }
                messages.push(m);
                if let Some(t) = tap {
                    taps.insert(code, t);
                }
            }
            prop_assert_eq!(counted(&messages, &taps), scanned(&messages, &taps));
        }
    }
}
