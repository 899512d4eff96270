//! Commission books in the embedded store: a book is read in one read transaction and changed in
//! one write transaction that first checks its version (redb has one writer at a time, so the
//! check and the change are one step).

use async_trait::async_trait;
use redb::{Database, ReadableTable, TableDefinition, WriteTransaction};

use super::*;
use crate::attribution::binding::Binding;
use crate::commission::{AuditEntry, BookKey, BookView, Change, Entry, Record};
use crate::store::{AuditStore, BookRead, CommissionStore, RefundOutcome};

/// Book name → changes applied.
const VERSIONS: TableDefinition<&str, u64> = TableDefinition::new("cm_versions");
/// (book, commission id) → record.
const RECORDS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("cm_records");
/// (book, commission id) of the open records.
const OPEN: TableDefinition<(&str, &str), ()> = TableDefinition::new("cm_open");
/// (book, seq) → entry.
const LEDGER: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("cm_ledger");
/// (book, key) → value: `clawback_due` and operation markers.
const BOOK_META: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("cm_meta");
/// (partner, currency) of every book.
const CURRENCIES: TableDefinition<(&str, &str), ()> = TableDefinition::new("cm_currencies");
/// Names set once (commission id → book, payout id → book, conversion id → order id).
const NAMES: TableDefinition<&str, &str> = TableDefinition::new("names");
/// (conversion id, refund id) → amount.
const REFUNDS: TableDefinition<(&str, &str), i64> = TableDefinition::new("refunds");
/// (set, member): small sets (the orders of a click id).
const MEMBERS: TableDefinition<(&str, &str), ()> = TableDefinition::new("members");
/// Customer id → binding.
const BINDINGS: TableDefinition<&str, &[u8]> = TableDefinition::new("bindings");
/// Position → audit entry.
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");

pub(super) fn create_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(VERSIONS).map_err(err)?;
    txn.open_table(RECORDS).map_err(err)?;
    txn.open_table(OPEN).map_err(err)?;
    txn.open_table(LEDGER).map_err(err)?;
    txn.open_table(BOOK_META).map_err(err)?;
    txn.open_table(CURRENCIES).map_err(err)?;
    txn.open_table(NAMES).map_err(err)?;
    txn.open_table(REFUNDS).map_err(err)?;
    txn.open_table(AUDIT).map_err(err)?;
    txn.open_table(BINDINGS).map_err(err)?;
    txn.open_table(MEMBERS).map_err(err)?;
    Ok(())
}

const CLAWBACK_DUE: &str = "clawback_due";

fn read_book_in(
    db: &Database,
    book: &BookKey,
    ids: Option<&[String]>,
    markers: &[String],
) -> Result<BookView, StoreError> {
    let name = book.name();
    let name = name.as_str();
    let txn = db.begin_read().map_err(err)?;
    let versions = txn.open_table(VERSIONS).map_err(err)?;
    let records = txn.open_table(RECORDS).map_err(err)?;
    let meta = txn.open_table(BOOK_META).map_err(err)?;
    let version = versions.get(name).map_err(err)?.map_or(0, |g| g.value());
    let meta_of = |key: &str| -> Result<Option<Vec<u8>>, StoreError> {
        Ok(meta.get((name, key)).map_err(err)?.map(|g| g.value().to_vec()))
    };
    let clawback_due = match meta_of(CLAWBACK_DUE)? {
        Some(b) => decode(name, &b)?,
        None => 0,
    };
    let mut view = BookView {
        version,
        clawback_due,
        ..BookView::default()
    };
    for m in markers {
        if let Some(b) = meta_of(m)? {
            view.markers.insert(m.clone(), String::from_utf8_lossy(&b).into_owned());
        }
    }
    let wanted: Vec<String> = match ids {
        Some(ids) => ids.to_vec(),
        None => {
            let open = txn.open_table(OPEN).map_err(err)?;
            let mut out = Vec::new();
            for row in open.range((name, "")..).map_err(err)? {
                let (k, _) = row.map_err(err)?;
                let (b, id) = k.value();
                if b != name {
                    break;
                }
                out.push(id.to_string());
            }
            out
        }
    };
    for id in &wanted {
        if let Some(b) = records.get((name, id.as_str())).map_err(err)? {
            view.records.push(decode(id, b.value())?);
        }
    }
    Ok(view)
}

/// Appends `entries` to the book `name`, placed after its last entry.
fn append_entries(txn: &WriteTransaction, name: &str, now: i64, mut entries: Vec<Entry>) -> Result<(), StoreError> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut ledger = txn.open_table(LEDGER).map_err(err)?;
    let last = match ledger.range((name, 0)..=(name, u64::MAX)).map_err(err)?.next_back() {
        Some(row) => {
            let e: Entry = decode(name, row.map_err(err)?.1.value())?;
            Some((e.seq, e.at, e.balance))
        }
        None => None,
    };
    crate::commission::ledger::place(last, now, &mut entries);
    for e in &entries {
        ledger.insert((name, e.seq), encode(e).as_slice()).map_err(err)?;
    }
    Ok(())
}

fn accrue_in(
    db: &Database,
    accruals: &[(BookKey, Record)],
    index: Option<(String, String)>,
    now: i64,
) -> Result<Vec<String>, StoreError> {
    let mut new = Vec::new();
    let txn = db.begin_write().map_err(err)?;
    if let Some((k, v)) = index {
        let mut t = txn.open_table(NAMES).map_err(err)?;
        if t.get(k.as_str()).map_err(err)?.is_none() {
            t.insert(k.as_str(), v.as_str()).map_err(err)?;
        }
    }
    for (book, r) in accruals {
        let name = book.name();
        let name = name.as_str();
        let key = (name, r.commission_id.as_str());
        {
            let mut records = txn.open_table(RECORDS).map_err(err)?;
            if records.get(key).map_err(err)?.is_some() {
                continue;
            }
            records.insert(key, encode(r).as_slice()).map_err(err)?;
        }
        if r.is_open() {
            txn.open_table(OPEN).map_err(err)?.insert(key, ()).map_err(err)?;
        }
        let entry = Entry::about(crate::commission::EntryKind::Accrual, r.earned, r);
        append_entries(&txn, name, now, vec![entry])?;
        new.push(r.commission_id.clone());
        txn.open_table(CURRENCIES)
            .map_err(err)?
            .insert((book.partner.as_str(), book.currency.as_str()), ())
            .map_err(err)?;
    }
    txn.commit().map_err(err)?;
    Ok(new)
}

fn write_book_in(db: &Database, book: &BookKey, version: u64, change: &Change) -> Result<bool, StoreError> {
    let name = book.name();
    let name = name.as_str();
    let txn = db.begin_write().map_err(err)?;
    {
        let mut versions = txn.open_table(VERSIONS).map_err(err)?;
        let now_at = versions.get(name).map_err(err)?.map_or(0, |g| g.value());
        if now_at != version {
            return Ok(false);
        }
        versions.insert(name, version + 1).map_err(err)?;
        let mut records = txn.open_table(RECORDS).map_err(err)?;
        let mut open = txn.open_table(OPEN).map_err(err)?;
        for r in &change.records {
            let key = (name, r.commission_id.as_str());
            records.insert(key, encode(r).as_slice()).map_err(err)?;
            if r.is_open() {
                open.insert(key, ()).map_err(err)?;
            } else {
                open.remove(key).map_err(err)?;
            }
        }
        append_entries(&txn, name, change.now, change.entries.clone())?;
        let mut meta = txn.open_table(BOOK_META).map_err(err)?;
        if let Some(d) = change.clawback_due {
            meta.insert((name, CLAWBACK_DUE), encode(&d).as_slice()).map_err(err)?;
        }
        for (k, v) in &change.markers {
            meta.insert((name, k.as_str()), v.as_bytes()).map_err(err)?;
        }
        txn.open_table(CURRENCIES)
            .map_err(err)?
            .insert((book.partner.as_str(), book.currency.as_str()), ())
            .map_err(err)?;
    }
    txn.commit().map_err(err)?;
    Ok(true)
}

#[async_trait]
impl CommissionStore for EmbeddedStore {
    async fn read_book(&self, book: &BookKey, read: BookRead<'_>, markers: &[String]) -> Result<BookView, StoreError> {
        let (book, markers) = (book.clone(), markers.to_vec());
        let ids = match read {
            BookRead::Ids(ids) => Some(ids.to_vec()),
            BookRead::Open => None,
        };
        self.blocking(move |db| read_book_in(db, &book, ids.as_deref(), &markers))
            .await
    }

    async fn write_book(&self, book: &BookKey, version: u64, change: &Change) -> Result<bool, StoreError> {
        let (book, change) = (book.clone(), change.clone());
        self.blocking(move |db| write_book_in(db, &book, version, &change))
            .await
    }

    async fn accrue(
        &self,
        accruals: &[(BookKey, Record)],
        index: Option<(String, String)>,
        now: i64,
    ) -> Result<Vec<String>, StoreError> {
        let accruals = accruals.to_vec();
        self.blocking(move |db| accrue_in(db, &accruals, index, now)).await
    }

    async fn ledger_len(&self, book: &BookKey) -> Result<u64, StoreError> {
        let name = book.name();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(err)?;
            let ledger = txn.open_table(LEDGER).map_err(err)?;
            let last = ledger
                .range((name.as_str(), 0)..=(name.as_str(), u64::MAX))
                .map_err(err)?
                .next_back();
            Ok(match last {
                Some(row) => row.map_err(err)?.0.value().1,
                None => 0,
            })
        })
        .await
    }

    async fn ledger_range(&self, book: &BookKey, start: u64, end: u64) -> Result<Vec<Entry>, StoreError> {
        let name = book.name();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(err)?;
            let ledger = txn.open_table(LEDGER).map_err(err)?;
            let mut out = Vec::new();
            // Entries are numbered from 1: position i is seq i + 1.
            if end > start {
                for row in ledger
                    .range((name.as_str(), start + 1)..=(name.as_str(), end))
                    .map_err(err)?
                {
                    let (_, v) = row.map_err(err)?;
                    out.push(decode(&name, v.value())?);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn partner_currencies(&self, partner: &str) -> Result<Vec<String>, StoreError> {
        let partner = partner.to_string();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(err)?;
            let t = txn.open_table(CURRENCIES).map_err(err)?;
            let mut out = Vec::new();
            for row in t.range((partner.as_str(), "")..).map_err(err)? {
                let (k, _) = row.map_err(err)?;
                let (p, c) = k.value();
                if p != partner {
                    break;
                }
                out.push(c.to_string());
            }
            Ok(out)
        })
        .await
    }

    async fn claim_name(&self, name: &str, value: &str) -> Result<Option<String>, StoreError> {
        let (name, value) = (name.to_string(), value.to_string());
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(err)?;
            let had = {
                let mut t = txn.open_table(NAMES).map_err(err)?;
                let had = t.get(name.as_str()).map_err(err)?.map(|g| g.value().to_string());
                if had.is_none() {
                    t.insert(name.as_str(), value.as_str()).map_err(err)?;
                }
                had
            };
            txn.commit().map_err(err)?;
            Ok(had)
        })
        .await
    }

    async fn get_name(&self, name: &str) -> Result<Option<String>, StoreError> {
        let name = name.to_string();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(err)?;
            let t = txn.open_table(NAMES).map_err(err)?;
            Ok(t.get(name.as_str()).map_err(err)?.map(|g| g.value().to_string()))
        })
        .await
    }

    async fn add_refund(
        &self,
        conversion_id: &str,
        refund_id: &str,
        amount: i64,
        limit: i64,
    ) -> Result<RefundOutcome, StoreError> {
        let (conversion, refund) = (conversion_id.to_string(), refund_id.to_string());
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(err)?;
            let outcome = {
                let mut t = txn.open_table(REFUNDS).map_err(err)?;
                let mut total = 0i64;
                let mut had = None;
                for row in t.range((conversion.as_str(), "")..).map_err(err)? {
                    let (k, v) = row.map_err(err)?;
                    let (c, r) = k.value();
                    if c != conversion {
                        break;
                    }
                    total = total.saturating_add(v.value());
                    if r == refund {
                        had = Some(v.value());
                    }
                }
                match had {
                    Some(amount) => RefundOutcome::Repeat { amount, total },
                    None if total.saturating_add(amount) > limit => RefundOutcome::Exceeds { total },
                    None => {
                        t.insert((conversion.as_str(), refund.as_str()), amount).map_err(err)?;
                        RefundOutcome::Added { total: total + amount }
                    }
                }
            };
            txn.commit().map_err(err)?;
            Ok(outcome)
        })
        .await
    }

    async fn get_order(&self, order_id: &str) -> Result<Option<Conversion>, StoreError> {
        let order_id = order_id.to_string();
        self.blocking(move |db| get_json(db, ORDERS, &order_id)).await
    }

    async fn add_member(&self, set: &str, member: &str) -> Result<u64, StoreError> {
        let (set, member) = (set.to_string(), member.to_string());
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(err)?;
            let n = {
                let mut t = txn.open_table(MEMBERS).map_err(err)?;
                t.insert((set.as_str(), member.as_str()), ()).map_err(err)?;
                let mut n = 0u64;
                for row in t.range((set.as_str(), "")..).map_err(err)? {
                    if row.map_err(err)?.0.value().0 != set {
                        break;
                    }
                    n += 1;
                }
                n
            };
            txn.commit().map_err(err)?;
            Ok(n)
        })
        .await
    }

    async fn get_binding(&self, customer: &str) -> Result<Option<Binding>, StoreError> {
        let customer = customer.to_string();
        self.blocking(move |db| get_json(db, BINDINGS, &customer)).await
    }

    async fn swap_binding(
        &self,
        customer: &str,
        expected: Option<&Binding>,
        new: &Binding,
    ) -> Result<bool, StoreError> {
        let (customer, expected, new) = (customer.to_string(), expected.cloned(), new.clone());
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(err)?;
            {
                let mut t = txn.open_table(BINDINGS).map_err(err)?;
                let current: Option<Binding> = match t.get(customer.as_str()).map_err(err)? {
                    Some(b) => Some(decode(&customer, b.value())?),
                    None => None,
                };
                if current != expected {
                    return Ok(false);
                }
                t.insert(customer.as_str(), encode(&new).as_slice()).map_err(err)?;
            }
            txn.commit().map_err(err)?;
            Ok(true)
        })
        .await
    }
}

#[async_trait]
impl AuditStore for EmbeddedStore {
    async fn append_audit(&self, entry: &AuditEntry) -> Result<u64, StoreError> {
        let entry = entry.clone();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(err)?;
            let seq = {
                let mut t = txn.open_table(AUDIT).map_err(err)?;
                let last = t.last().map_err(err)?.map_or(0, |(k, _)| k.value());
                t.insert(last + 1, encode(&entry).as_slice()).map_err(err)?;
                last + 1
            };
            txn.commit().map_err(err)?;
            Ok(seq)
        })
        .await
    }

    async fn list_audit(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(err)?;
            let t = txn.open_table(AUDIT).map_err(err)?;
            let mut out = Vec::new();
            for row in t.range(after + 1..).map_err(err)?.take(limit) {
                let (k, v) = row.map_err(err)?;
                let mut e: AuditEntry = decode("audit", v.value())?;
                e.seq = k.value();
                out.push(e);
            }
            Ok(out)
        })
        .await
    }
}
