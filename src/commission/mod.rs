//! Commission as a ledger: what each level of a conversion's chain earned, what it is worth after
//! returns, and what was paid.
//!
//! Every level of an attributed conversion that earns something becomes a [`Record`] in the book
//! of its partner and currency ([`BookKey`]). A record's `amount` never changes in place: each
//! change is an [`Entry`] appended to the book (accrual, reversal, adjustment, payout), and every
//! entry carries the book's running balance, so a partner's balance is the sum of their entries
//! and a statement is a slice of the book.
//!
//! **States.** `pending` (inside the campaign's hold, e.g. the return window) → `payable` (the
//! hold is over: derived from the clock at read time, so no job has to run for a record to become
//! payable, and every replica agrees) → `paid` (in a payout). `held`: a fraud rule fired at accrual;
//! released (back to pending/payable) or rejected by hand. `reversed`: rejected, or refunded to 0.
//!
//! **Refunds.** A level keeps `floor(earned × (order − refunded) / order)`, where `refunded` is
//! the order's refunds so far: each refund appends the difference as a reversal. Because the level
//! is recomputed from the refunded total, partial refunds never drift from one refund of their sum
//! (no rounding remainder accumulates), a level never exceeds what it earned, a whole refund
//! reverses everything, and replaying a refund (or applying two in either order) lands on the same
//! figures. Commission already paid is reversed the same way, and the reversal is a clawback: it
//! is owed back (`clawback_due`) and netted from the partner's next payout.
//!
//! **Payouts.** A payout takes every record of the book that is payable by its `until` (and now),
//! nets the clawbacks due, marks the records paid and appends one payout entry of minus the total.
//! A book changes only at one version (compare and set), so two payouts racing for the same
//! partner can never both take a record.
//!
//! The decisions are plain functions over a [`BookView`] ([`ledger`]); the stores only read a view
//! and apply a [`Change`] if the book is still at the version it was read at
//! (`crate::store::books`).

pub(crate) mod ledger;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::time::format_rfc3339;

/// The state a record is stored in (`payable` is `Pending` past its `payable_at`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum State {
    Pending,
    Held,
    Paid,
    Reversed,
}

/// What one level of one conversion earns, and what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    pub commission_id: String,
    pub conversion_id: String,
    pub order_id: String,
    pub partner_id: String,
    pub level: u8,
    pub campaign_id: Option<String>,
    pub code: Option<String>,
    pub currency: String,
    /// The order's amount: the base refunds are proportioned against.
    pub order_amount: i64,
    /// What the level earned at accrual.
    pub earned: i64,
    /// What it is worth now: `earned` less its share of refunds, 0 once rejected.
    pub amount: i64,
    /// The order's refunded total `amount` was computed for.
    pub refunded: i64,
    pub state: State,
    /// Why it is held or reversed (`self_purchase`, `too_fast`, `refunded`, or a rejection's).
    pub reason: Option<String>,
    pub created_at: i64,
    /// When the hold ends.
    pub payable_at: i64,
    pub payout_id: Option<String>,
}

impl Record {
    /// The state as the API shows it at `now`: a pending record past its hold is `payable`.
    pub(crate) fn api_state(&self, now: i64) -> &'static str {
        match self.state {
            State::Pending if now >= self.payable_at => "payable",
            State::Pending => "pending",
            State::Held => "held",
            State::Paid => "paid",
            State::Reversed => "reversed",
        }
    }

    /// Still to be paid or decided (not paid, not reversed): the book's open set.
    pub(crate) fn is_open(&self) -> bool {
        matches!(self.state, State::Pending | State::Held)
    }

    pub(crate) fn to_api_json(&self, now: i64) -> Value {
        json!({
            "commission_id": self.commission_id,
            "conversion_id": self.conversion_id,
            "order_id": self.order_id,
            "partner_id": self.partner_id,
            "level": self.level,
            "campaign_id": self.campaign_id,
            "code": self.code,
            "currency": self.currency,
            "earned": self.earned,
            "amount": self.amount,
            "state": self.api_state(now),
            "reason": self.reason,
            "created_at": format_rfc3339(self.created_at),
            "payable_at": format_rfc3339(self.payable_at),
            "payout_id": self.payout_id,
        })
    }
}

/// The commission id of `level` of `conversion_id` (`cv_…` → `cm_…_<level>`).
pub(crate) fn commission_id(conversion_id: &str, level: u8) -> String {
    let base = conversion_id.strip_prefix("cv_").unwrap_or(conversion_id);
    format!("cm_{base}_{level}")
}

/// The conversion and level a commission id names (`None`: not one).
pub(crate) fn conversion_of(commission_id: &str) -> Option<(String, u8)> {
    let (base, level) = commission_id.strip_prefix("cm_")?.rsplit_once('_')?;
    let level: u8 = level.parse().ok()?;
    (!base.is_empty() && (1..=3).contains(&level)).then(|| (format!("cv_{base}"), level))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum EntryKind {
    Accrual,
    Reversal,
    Adjustment,
    Payout,
}

impl EntryKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Accrual => "accrual",
            Self::Reversal => "reversal",
            Self::Adjustment => "adjustment",
            Self::Payout => "payout",
        }
    }
}

/// One line of a book. `balance` is the book's balance after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Entry {
    /// Its position in the book, from 1 (Redis keeps it as the list position, not in the JSON).
    #[serde(default)]
    pub seq: u64,
    pub at: i64,
    pub kind: EntryKind,
    pub amount: i64,
    pub balance: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commission_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversion_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payout_id: Option<String>,
    /// `refund`, `clawback` (a refund of commission already paid), `rejected`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Entry {
    /// An entry of `kind` and `amount` about `r`; its place in the book is set when appended.
    pub(crate) fn about(kind: EntryKind, amount: i64, r: &Record) -> Self {
        Self {
            commission_id: Some(r.commission_id.clone()),
            conversion_id: Some(r.conversion_id.clone()),
            order_id: Some(r.order_id.clone()),
            level: Some(r.level),
            ..Self::of(kind, amount)
        }
    }

    /// An entry of `kind` and `amount` about no record (a payout, an adjustment).
    pub(crate) fn of(kind: EntryKind, amount: i64) -> Self {
        Self {
            seq: 0,
            at: 0,
            kind,
            amount,
            balance: 0,
            commission_id: None,
            conversion_id: None,
            order_id: None,
            level: None,
            refund_id: None,
            payout_id: None,
            note: None,
        }
    }

    /// The entry as a store appends it, without its place (`seq`, `at`, `balance`), which the
    /// store sets as it appends: `{"kind": …}`.
    pub(crate) fn unplaced_json(&self) -> String {
        #[derive(Serialize)]
        struct Unplaced<'a> {
            kind: EntryKind,
            amount: i64,
            #[serde(skip_serializing_if = "Option::is_none")]
            commission_id: &'a Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            conversion_id: &'a Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            order_id: &'a Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            level: Option<u8>,
            #[serde(skip_serializing_if = "Option::is_none")]
            refund_id: &'a Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            payout_id: &'a Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            note: &'a Option<String>,
        }
        serde_json::to_string(&Unplaced {
            kind: self.kind,
            amount: self.amount,
            commission_id: &self.commission_id,
            conversion_id: &self.conversion_id,
            order_id: &self.order_id,
            level: self.level,
            refund_id: &self.refund_id,
            payout_id: &self.payout_id,
            note: &self.note,
        })
        .unwrap_or_default()
    }
}

/// One partner's commission in one currency.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct BookKey {
    pub partner: String,
    pub currency: String,
}

impl BookKey {
    /// The book's name in indexes: the currency, `:`, the partner id as it is (a currency is
    /// three letters, so the first `:` splits them whatever the id holds).
    pub(crate) fn name(&self) -> String {
        format!("{}:{}", self.currency, self.partner)
    }
}

/// What a decision reads of a book, all at one `version`.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct BookView {
    /// Decisions applied to the book so far (0: none; accruals do not count, see
    /// `CommissionStore::accrue`).
    pub version: u64,
    /// Reversals of commission already paid, not yet netted by a payout.
    pub clawback_due: i64,
    /// The records asked for that exist (by id), or the open ones.
    pub records: Vec<Record>,
    /// Answers of operations applied before (`payout:<id>`), those asked for.
    pub markers: HashMap<String, String>,
}

/// What one decision changes in a book, applied whole or not at all.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Change {
    /// When it was decided: its entries are placed at this time or after the book's last.
    pub now: i64,
    /// Records written (new or changed), whole.
    pub records: Vec<Record>,
    /// Entries to append; the store places them ([`ledger::place`]).
    pub entries: Vec<Entry>,
    pub clawback_due: Option<i64>,
    pub markers: Vec<(String, String)>,
}

impl Change {
    pub(crate) fn at(now: i64) -> Self {
        Self { now, ..Self::default() }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.records.is_empty() && self.entries.is_empty() && self.clawback_due.is_none() && self.markers.is_empty()
    }
}

/// A payout: the records it paid, net of the clawbacks it settled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Payout {
    pub payout_id: String,
    pub partner_id: String,
    pub currency: String,
    /// What was paid: the records' amounts less `clawbacks`.
    pub amount: i64,
    pub clawbacks: i64,
    pub commission_ids: Vec<String>,
    pub until: i64,
    pub created_at: i64,
}

impl Payout {
    pub(crate) fn to_api_json(&self) -> Value {
        json!({
            "payout_id": self.payout_id,
            "partner_id": self.partner_id,
            "currency": self.currency,
            "amount": self.amount,
            "clawbacks": self.clawbacks,
            "commission_ids": self.commission_ids,
            "until": format_rfc3339(self.until),
            "created_at": format_rfc3339(self.created_at),
        })
    }
}

/// One change made by hand (a release, a rejection, a payout, a binding or campaign rule change),
/// with who made it and what it was before and after.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct AuditEntry {
    /// Its place in the log, from 1 (set by the store).
    #[serde(default, skip_serializing)]
    pub seq: u64,
    pub at: i64,
    /// The API key's id ([`crate::config::ApiKey::id`]).
    pub key_id: String,
    /// `commission.release`, `commission.reject`, `payout.create`, `binding.set`, `campaign.set`.
    pub action: String,
    /// The id of what changed.
    pub target: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

impl AuditEntry {
    pub(crate) fn to_api_json(&self) -> Value {
        json!({
            "seq": self.seq,
            "at": format_rfc3339(self.at),
            "key_id": self.key_id,
            "action": self.action,
            "target": self.target,
            "before": self.before,
            "after": self.after,
        })
    }
}
