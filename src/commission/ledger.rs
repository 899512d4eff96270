//! The ledger's decisions: each takes what was read of one book and returns the [`Change`] to
//! apply, or why it is refused. No I/O and no clock (`now` is an argument), so the property tests
//! below run any sequence of them against a model.

use super::{BookKey, BookView, Change, Entry, EntryKind, Payout, Record, State};

/// Why an operation changes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    NotFound,
    /// The record is not in a state the operation applies to (its state as the API shows it).
    State(&'static str),
    /// Nothing is payable by the date and no clawback is due.
    NothingPayable,
    /// The clawbacks due exceed what is payable: the payout would be negative.
    ClawbacksExceed {
        payable: i64,
        clawbacks: i64,
    },
    /// A stored answer could not be read back.
    Unreadable,
}

/// Places `entries` at the end of a book whose last entry is `last`: each gets the next `seq`, the
/// time of the book's last entry or later (a replica whose clock is behind never puts an entry
/// before the previous one, so a book is ordered by time as well as by `seq`), and the running
/// balance. The stores call it as they append, inside the same atomic write.
pub(crate) fn place(last: Option<(u64, i64, i64)>, now: i64, entries: &mut [Entry]) {
    let (mut seq, at, mut balance) = match last {
        Some((seq, at, balance)) => (seq, at.max(now), balance),
        None => (0, now, 0),
    };
    for e in entries {
        seq += 1;
        balance = balance.saturating_add(e.amount);
        e.seq = seq;
        e.at = at;
        e.balance = balance;
    }
}

fn find<'a>(view: &'a BookView, id: &str) -> Option<&'a Record> {
    view.records.iter().find(|r| r.commission_id == id)
}

/// Accrues `new` records; one the book has already is left as it is (a retried conversion). The
/// model of what the stores' `accrue` does natively (in one script or transaction, without a
/// version, so that accruals never contend), for the property tests.
#[cfg(test)]
pub(crate) fn accrue(view: &BookView, new: &[Record], now: i64) -> Change {
    let mut change = Change::at(now);
    for r in new {
        if find(view, &r.commission_id).is_some() || change.records.iter().any(|c| c.commission_id == r.commission_id) {
            continue;
        }
        change.entries.push(Entry::about(EntryKind::Accrual, r.earned, r));
        change.records.push(r.clone());
    }
    change
}

/// What a level that `earned` keeps of an order of `order` once `refunded` of it is refunded:
/// `floor(earned × (order − refunded) / order)`, never below 0.
pub(crate) fn kept(earned: i64, order: i64, refunded: i64) -> i64 {
    if order <= 0 {
        return 0;
    }
    let left = order.saturating_sub(refunded).clamp(0, order);
    (i128::from(earned) * i128::from(left) / i128::from(order)) as i64
}

/// Brings the records `ids` (those of one order in this book) to the order's refunded total
/// `refunded`. A record already at that total or beyond is left as it is, so a replayed refund
/// (or one whose total an earlier call applied already) appends nothing.
pub(crate) fn refund(view: &BookView, ids: &[String], refunded: i64, refund_id: &str, now: i64) -> Change {
    let mut change = Change::at(now);
    let mut clawback = 0i64;
    for id in ids {
        let Some(r) = find(view, id) else { continue };
        if refunded <= r.refunded {
            continue;
        }
        let mut next = r.clone();
        next.refunded = refunded;
        next.amount = kept(r.earned, r.order_amount, refunded).min(r.amount);
        let delta = r.amount - next.amount;
        if delta > 0 {
            let mut e = Entry::about(EntryKind::Reversal, -delta, r);
            e.refund_id = Some(refund_id.to_string());
            e.note = Some(if r.state == State::Paid { "clawback" } else { "refund" }.to_string());
            change.entries.push(e);
            if r.state == State::Paid {
                clawback = clawback.saturating_add(delta);
            }
        }
        if next.amount == 0 && r.state != State::Reversed {
            next.state = State::Reversed;
            next.reason = Some("refunded".to_string());
        }
        change.records.push(next);
    }
    if clawback > 0 {
        change.clawback_due = Some(view.clawback_due.saturating_add(clawback));
    }
    change
}

/// A held record back to pending (payable once its hold is over).
pub(crate) fn release(view: &BookView, id: &str, now: i64) -> Result<Change, Refusal> {
    let r = find(view, id).ok_or(Refusal::NotFound)?;
    if r.state != State::Held {
        return Err(Refusal::State(r.api_state(now)));
    }
    let mut next = r.clone();
    next.state = State::Pending;
    next.reason = None;
    let mut change = Change::at(now);
    change.records.push(next);
    Ok(change)
}

/// A pending, payable or held record rejected: reversed whole, with `reason`. Commission already
/// paid is taken back through a refund of its order instead.
pub(crate) fn reject(view: &BookView, id: &str, reason: &str, now: i64) -> Result<Change, Refusal> {
    let r = find(view, id).ok_or(Refusal::NotFound)?;
    if !r.is_open() {
        return Err(Refusal::State(r.api_state(now)));
    }
    let mut change = Change::at(now);
    let mut next = r.clone();
    next.amount = 0;
    next.state = State::Reversed;
    next.reason = Some(reason.to_string());
    if r.amount > 0 {
        let mut e = Entry::about(EntryKind::Reversal, -r.amount, r);
        e.note = Some("rejected".to_string());
        change.entries.push(e);
    }
    change.records.push(next);
    Ok(change)
}

/// Pays every record of the book (its open ones, as read) that is payable by `until` and by
/// `now`, net of the clawbacks due. A payout of 0 is made when records exactly cover the
/// clawbacks; a negative one is refused.
pub(crate) fn payout(
    view: &BookView,
    book: &BookKey,
    payout_id: &str,
    until: i64,
    now: i64,
) -> Result<(Change, Payout), Refusal> {
    let cutoff = until.min(now);
    let mut due: Vec<&Record> = view
        .records
        .iter()
        .filter(|r| r.state == State::Pending && r.payable_at <= cutoff)
        .collect();
    due.sort_by(|a, b| (a.payable_at, &a.commission_id).cmp(&(b.payable_at, &b.commission_id)));
    let payable = due.iter().fold(0i64, |s, r| s.saturating_add(r.amount));
    // What is carried over: clawbacks owed back (positive) or adjustments owed to the partner
    // (negative), netted here.
    let clawbacks = view.clawback_due;
    let amount = payable.saturating_sub(clawbacks);
    if amount < 0 {
        return Err(Refusal::ClawbacksExceed { payable, clawbacks });
    }
    if due.is_empty() && amount == 0 {
        return Err(Refusal::NothingPayable);
    }
    let p = Payout {
        payout_id: payout_id.to_string(),
        partner_id: book.partner.clone(),
        currency: book.currency.clone(),
        amount,
        clawbacks,
        commission_ids: due.iter().map(|r| r.commission_id.clone()).collect(),
        until,
        created_at: now,
    };
    let mut change = Change::at(now);
    for r in due {
        let mut next = r.clone();
        next.state = State::Paid;
        next.payout_id = Some(payout_id.to_string());
        change.records.push(next);
    }
    let mut e = Entry::of(EntryKind::Payout, -amount);
    e.payout_id = Some(payout_id.to_string());
    if clawbacks > 0 {
        e.note = Some(format!("nets {clawbacks} of clawbacks"));
    } else if clawbacks < 0 {
        e.note = Some(format!("includes {} of adjustments", -clawbacks));
    }
    change.entries.push(e);
    change.clawback_due = Some(0);
    change
        .markers
        .push((payout_marker(payout_id), serde_json::to_string(&p).unwrap_or_default()));
    Ok((change, p))
}

/// An adjustment by hand: `amount` (positive: owed to the partner; negative: owed back) entered
/// in the book and carried to the next payout with the clawbacks.
pub(crate) fn adjust(view: &BookView, adjustment_id: &str, amount: i64, note: Option<&str>, now: i64) -> Change {
    let mut change = Change::at(now);
    let mut e = Entry::of(EntryKind::Adjustment, amount);
    e.note = note.map(str::to_string);
    change.entries.push(e);
    change.clawback_due = Some(view.clawback_due.saturating_sub(amount));
    change
        .markers
        .push((adjustment_marker(adjustment_id), amount.to_string()));
    change
}

/// The marker under which an adjustment's amount is kept in its book (its idempotency).
pub(crate) fn adjustment_marker(adjustment_id: &str) -> String {
    format!("adjustment:{adjustment_id}")
}

/// The marker under which a payout's answer is kept in its book.
pub(crate) fn payout_marker(payout_id: &str) -> String {
    format!("payout:{payout_id}")
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use proptest::prelude::*;

    use super::*;

    /// A book held in memory, applying changes as a store would.
    #[derive(Default)]
    struct Mem {
        version: u64,
        records: BTreeMap<String, Record>,
        entries: Vec<Entry>,
        clawback_due: i64,
        markers: HashMap<String, String>,
    }

    impl Mem {
        fn view_of(&self, ids: &[String]) -> BookView {
            BookView {
                version: self.version,
                clawback_due: self.clawback_due,
                records: ids.iter().filter_map(|i| self.records.get(i).cloned()).collect(),
                markers: self.markers.clone(),
            }
        }

        fn open_view(&self) -> BookView {
            let ids: Vec<String> = self
                .records
                .values()
                .filter(|r| r.is_open())
                .map(|r| r.commission_id.clone())
                .collect();
            self.view_of(&ids)
        }

        fn apply(&mut self, mut c: Change) {
            self.version += 1;
            for r in c.records {
                self.records.insert(r.commission_id.clone(), r);
            }
            let last = self.entries.last().map(|e| (e.seq, e.at, e.balance));
            place(last, c.now, &mut c.entries);
            self.entries.extend(c.entries);
            if let Some(d) = c.clawback_due {
                self.clawback_due = d;
            }
            self.markers.extend(c.markers);
        }

        fn balance(&self) -> i64 {
            self.entries.last().map_or(0, |e| e.balance)
        }
    }

    fn book() -> BookKey {
        BookKey {
            partner: "p".into(),
            currency: "CNY".into(),
        }
    }

    fn record(i: usize, order: i64, earned: i64, hold: i64, held: bool) -> Record {
        Record {
            commission_id: format!("cm_{i}_1"),
            conversion_id: format!("cv_{i}"),
            order_id: format!("o{i}"),
            partner_id: "p".into(),
            level: 1,
            campaign_id: None,
            code: None,
            currency: "CNY".into(),
            order_amount: order,
            earned,
            amount: earned,
            refunded: 0,
            state: if held { State::Held } else { State::Pending },
            reason: held.then(|| "self_purchase".to_string()),
            created_at: 0,
            payable_at: hold,
            payout_id: None,
        }
    }

    #[test]
    fn a_refund_keeps_the_floor_of_the_share_left_and_a_whole_one_reverses_all() {
        assert_eq!(kept(333, 1000, 0), 333);
        assert_eq!(kept(333, 1000, 1), 332, "floor(333 × 999 / 1000) = 332.667 → 332");
        assert_eq!(kept(333, 1000, 500), 166);
        assert_eq!(kept(333, 1000, 1000), 0);
        assert_eq!(kept(333, 1000, 5000), 0, "never below 0");
        assert_eq!(kept(i64::MAX, i64::MAX, 1), i64::MAX - 1, "no overflow");
        // Two partial refunds reverse what one refund of their sum would.
        let mut m = Mem::default();
        let r = record(1, 1000, 333, 0, false);
        m.apply(accrue(&m.view_of(&[]), &[r], 10));
        let ids = vec!["cm_1_1".to_string()];
        m.apply(refund(&m.view_of(&ids), &ids, 300, "r1", 11));
        m.apply(refund(&m.view_of(&ids), &ids, 700, "r2", 12));
        assert_eq!(m.records["cm_1_1"].amount, kept(333, 1000, 700));
        assert_eq!(m.balance(), 99);
        // Replaying the first refund (its total is behind) changes nothing.
        assert!(refund(&m.view_of(&ids), &ids, 300, "r1", 13).is_empty());
    }

    #[test]
    fn paid_commission_refunded_is_clawed_back_from_the_next_payout() {
        let mut m = Mem::default();
        m.apply(accrue(&m.view_of(&[]), &[record(1, 1000, 100, 0, false)], 10));
        let (c, p) = payout(&m.open_view(), &book(), "po1", 20, 20).unwrap();
        assert_eq!(p.amount, 100);
        m.apply(c);
        let ids = vec!["cm_1_1".to_string()];
        m.apply(refund(&m.view_of(&ids), &ids, 1000, "r1", 30));
        assert_eq!(m.clawback_due, 100);
        assert_eq!(m.balance(), -100, "owed back");
        assert_eq!(m.entries.last().unwrap().note.as_deref(), Some("clawback"));
        assert_eq!(
            payout(&m.open_view(), &book(), "po2", 40, 40).unwrap_err(),
            Refusal::ClawbacksExceed {
                payable: 0,
                clawbacks: 100
            }
        );
        m.apply(accrue(&m.view_of(&[]), &[record(2, 5000, 250, 0, false)], 50));
        let (c, p) = payout(&m.open_view(), &book(), "po2", 60, 60).unwrap();
        assert_eq!((p.amount, p.clawbacks), (150, 100));
        m.apply(c);
        assert_eq!((m.balance(), m.clawback_due), (0, 0));
    }

    #[test]
    fn held_records_wait_for_a_hand_and_payouts_take_only_what_is_payable_by_the_date() {
        let mut m = Mem::default();
        m.apply(accrue(
            &m.view_of(&[]),
            &[
                record(1, 1000, 10, 100, false),
                record(2, 1000, 20, 0, true),
                record(3, 1000, 30, 500, false),
            ],
            0,
        ));
        assert_eq!(m.balance(), 60);
        assert_eq!(release(&m.open_view(), "cm_1_1", 0), Err(Refusal::State("pending")));
        let (c, p) = payout(&m.open_view(), &book(), "po", 1000, 200).unwrap();
        assert_eq!(p.commission_ids, ["cm_1_1"], "held and still-pending records stay");
        m.apply(c);
        m.apply(release(&m.open_view(), "cm_2_1", 300).unwrap());
        assert_eq!(m.records["cm_2_1"].api_state(300), "payable");
        m.apply(reject(&m.open_view(), "cm_3_1", "fraud", 300).unwrap());
        assert_eq!(m.records["cm_3_1"].api_state(300), "reversed");
        assert_eq!(
            reject(&m.view_of(&["cm_1_1".into()]), "cm_1_1", "x", 300),
            Err(Refusal::State("paid"))
        );
        assert_eq!(m.balance(), 20);
        assert_eq!(release(&m.open_view(), "nope", 0), Err(Refusal::NotFound));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Convert {
            order: i64,
            bps: u32,
            hold: i64,
            held: bool,
        },
        Refund {
            of: usize,
            amount: i64,
        },
        Release {
            of: usize,
        },
        Reject {
            of: usize,
        },
        Payout {
            until: i64,
        },
        Adjust(i64),
        Tick(i64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (1i64..1_000_000, 0u32..=10_000, 0i64..50, any::<bool>())
                .prop_map(|(order, bps, hold, held)| Op::Convert { order, bps, hold, held }),
            2 => (0usize..20, 1i64..1_000_000).prop_map(|(of, amount)| Op::Refund { of, amount }),
            1 => (0usize..20).prop_map(|of| Op::Release { of }),
            1 => (0usize..20).prop_map(|of| Op::Reject { of }),
            2 => (0i64..100).prop_map(|until| Op::Payout { until }),
            1 => (-5_000i64..5_000).prop_map(Op::Adjust),
            2 => (1i64..30).prop_map(Op::Tick),
        ]
    }

    proptest! {
        /// For any sequence of conversions, refunds, releases, rejections and payouts: the
        /// balance is the sum of the entries and equals what is open less the clawbacks due; no
        /// record is paid twice; what was paid never exceeds what was earned net of refunds plus
        /// what is owed back; and no level ever exceeds what it earned.
        #[test]
        fn the_books_always_balance(ops in proptest::collection::vec(op(), 1..60)) {
            let mut m = Mem::default();
            let mut now = 0i64;
            let mut orders: Vec<(String, i64, i64)> = Vec::new(); // (commission id, order, refunded)
            let mut paid_ids: Vec<String> = Vec::new();
            let mut paid_total = 0i64;
            let mut adjusted = 0i64;
            for (n, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Convert { order, bps, hold, held } => {
                        let earned = crate::attribution::model::commission(order, bps);
                        if earned > 0 {
                            let mut r = record(n, order, earned, now + hold, held);
                            r.created_at = now;
                            orders.push((r.commission_id.clone(), order, 0));
                            let c = accrue(&m.view_of(&[]), &[r.clone()], now);
                            m.apply(c);
                            // A retried accrual adds nothing.
                            prop_assert!(accrue(&m.view_of(&[r.commission_id.clone()]), &[r], now).is_empty());
                        }
                    }
                    Op::Refund { of, amount } => {
                        let at = of % orders.len().max(1);
                        if let Some((id, order, refunded)) = orders.get_mut(at)
                            && *refunded + amount <= *order
                        {
                            *refunded += amount;
                            let ids = vec![id.clone()];
                            let c = refund(&m.view_of(&ids), &ids, *refunded, &format!("r{n}"), now);
                            m.apply(c);
                        }
                    }
                    Op::Release { of } => {
                        if let Some((id, ..)) = orders.get(of % orders.len().max(1))
                            && let Ok(c) = release(&m.view_of(std::slice::from_ref(id)), id, now)
                        {
                            m.apply(c);
                        }
                    }
                    Op::Reject { of } => {
                        if let Some((id, ..)) = orders.get(of % orders.len().max(1))
                            && let Ok(c) = reject(&m.view_of(std::slice::from_ref(id)), id, "fraud", now)
                        {
                            m.apply(c);
                        }
                    }
                    Op::Payout { until } => {
                        if let Ok((c, p)) = payout(&m.open_view(), &book(), &format!("po{n}"), until, now) {
                            for id in &p.commission_ids {
                                prop_assert!(!paid_ids.contains(id), "{} paid twice", id);
                                paid_ids.push(id.clone());
                            }
                            paid_total += p.amount;
                            m.apply(c);
                        }
                    }
                    Op::Adjust(a) => {
                        m.apply(adjust(&m.view_of(&[]), &format!("a{n}"), a, None, now));
                        adjusted += a;
                    }
                    Op::Tick(d) => now += d,
                }
                let sum: i64 = m.entries.iter().map(|e| e.amount).sum();
                prop_assert_eq!(sum, m.balance());
                let open: i64 = m.records.values().filter(|r| r.is_open()).map(|r| r.amount).sum();
                prop_assert_eq!(m.balance(), open - m.clawback_due);
                for (i, e) in m.entries.iter().enumerate() {
                    prop_assert_eq!(e.seq, i as u64 + 1);
                }
                // What was paid is what the paid records are worth now (net of their refunds)
                // plus what is owed back: never more than was earned net of refunds.
                let paid_records: i64 = m.records.values().filter(|r| r.payout_id.is_some()).map(|r| r.amount).sum();
                prop_assert_eq!(paid_total, paid_records + m.clawback_due + adjusted);
                for r in m.records.values() {
                    prop_assert!(r.amount >= 0 && r.amount <= r.earned);
                    prop_assert!(r.amount <= kept(r.earned, r.order_amount, r.refunded));
                }
            }
        }
    }
}
