//! Webhooks in the embedded store. Tables:
//! - `webhooks`: id → webhook JSON
//! - `wh_deliveries`: (webhook, delivery) → delivery JSON
//! - `wh_due`: (webhook, due ms, delivery) → (), the queue in due order; `wh_due_of`: (webhook,
//!   delivery) → its due ms, to find its place
//! - `wh_recent`: (webhook, created ms, delivery) → (), the newest 100 per webhook (older records
//!   that are not queued are removed with them)

use async_trait::async_trait;
use redb::{Database, ReadableTable, TableDefinition, WriteTransaction};

use super::*;
use crate::store::webhooks::{Attempted, RECENT_DELIVERIES, Webhook, WebhookDelivery, WebhookStore};

const WEBHOOKS: TableDefinition<&str, &[u8]> = TableDefinition::new("webhooks");
const DELIVERIES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("wh_deliveries");
const DUE: TableDefinition<(&str, u64, &str), ()> = TableDefinition::new("wh_due");
const DUE_OF: TableDefinition<(&str, &str), u64> = TableDefinition::new("wh_due_of");
const RECENT: TableDefinition<(&str, u64, &str), ()> = TableDefinition::new("wh_recent");

/// Opens every webhook table (so reads never meet a missing one).
pub(super) fn create_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(WEBHOOKS).map_err(err)?;
    txn.open_table(DELIVERIES).map_err(err)?;
    txn.open_table(DUE).map_err(err)?;
    txn.open_table(DUE_OF).map_err(err)?;
    txn.open_table(RECENT).map_err(err)?;
    Ok(())
}

fn ms(v: i64) -> u64 {
    v.max(0) as u64
}

/// Puts `id` in the queue at `at` (moving it if it was queued), or takes it off (`None`).
fn requeue(txn: &WriteTransaction, webhook: &str, id: &str, at: Option<i64>) -> Result<(), StoreError> {
    let mut due = txn.open_table(DUE).map_err(err)?;
    let mut due_of = txn.open_table(DUE_OF).map_err(err)?;
    let old = due_of.get((webhook, id)).map_err(err)?.map(|g| g.value());
    if let Some(old) = old {
        due.remove((webhook, old, id)).map_err(err)?;
    }
    match at {
        Some(at) => {
            due.insert((webhook, ms(at), id), ()).map_err(err)?;
            due_of.insert((webhook, id), ms(at)).map_err(err)?;
        }
        None => {
            due_of.remove((webhook, id)).map_err(err)?;
        }
    }
    Ok(())
}

/// Adds deliveries' records and their places in the recent log. With `queue` each also goes to
/// the due queue (at its `next_attempt_ms`), and a delivery whose id exists is left as it is.
/// Returns how many were added.
fn add_in(db: &Database, deliveries: Vec<WebhookDelivery>, queue: bool) -> Result<usize, StoreError> {
    let txn = db.begin_write().map_err(err)?;
    let mut added = Vec::new();
    let mut webhooks = Vec::new();
    {
        let mut records = txn.open_table(DELIVERIES).map_err(err)?;
        let mut recent = txn.open_table(RECENT).map_err(err)?;
        for d in &deliveries {
            let (w, id) = (d.webhook_id.as_str(), d.id.as_str());
            if queue && records.get((w, id)).map_err(err)?.is_some() {
                continue;
            }
            records.insert((w, id), encode(d).as_slice()).map_err(err)?;
            recent.insert((w, ms(d.created_ms), id), ()).map_err(err)?;
            added.push(d);
            if !webhooks.contains(&w) {
                webhooks.push(w);
            }
        }
    }
    let n = added.len();
    if queue {
        for d in added {
            requeue(
                &txn,
                &d.webhook_id,
                &d.id,
                Some(d.next_attempt_ms.unwrap_or(d.created_ms)),
            )?;
        }
    }
    for w in webhooks {
        trim_recent(&txn, w)?;
    }
    txn.commit().map_err(err)?;
    Ok(n)
}

/// Keeps the newest [`RECENT_DELIVERIES`] of `webhook`; older records go too unless queued.
fn trim_recent(txn: &WriteTransaction, webhook: &str) -> Result<(), StoreError> {
    let mut recent = txn.open_table(RECENT).map_err(err)?;
    let keys: Vec<(u64, String)> = recent
        .range((webhook, 0, "")..=(webhook, u64::MAX, "\u{10FFFF}"))
        .map_err(err)?
        .filter_map(Result::ok)
        .map(|(k, _)| {
            let (_, at, id) = k.value();
            (at, id.to_string())
        })
        .collect();
    let old = keys.len().saturating_sub(RECENT_DELIVERIES);
    let mut records = txn.open_table(DELIVERIES).map_err(err)?;
    let due_of = txn.open_table(DUE_OF).map_err(err)?;
    for (at, id) in &keys[..old] {
        recent.remove((webhook, *at, id.as_str())).map_err(err)?;
        if due_of.get((webhook, id.as_str())).map_err(err)?.is_none() {
            records.remove((webhook, id.as_str())).map_err(err)?;
        }
    }
    Ok(())
}

fn claim_in(
    db: &Database,
    webhook: &str,
    now: i64,
    lease: i64,
    max: usize,
) -> Result<Vec<WebhookDelivery>, StoreError> {
    let txn = db.begin_write().map_err(err)?;
    let ids: Vec<String> = {
        let due = txn.open_table(DUE).map_err(err)?;
        due.range((webhook, 0, "")..(webhook, ms(now) + 1, ""))
            .map_err(err)?
            .filter_map(Result::ok)
            .take(max)
            .map(|(k, _)| k.value().2.to_string())
            .collect()
    };
    let mut out = Vec::with_capacity(ids.len());
    for id in &ids {
        requeue(&txn, webhook, id, Some(now + lease))?;
        let records = txn.open_table(DELIVERIES).map_err(err)?;
        let found = records
            .get((webhook, id.as_str()))
            .map_err(err)?
            .map(|g| g.value().to_vec());
        match found {
            Some(b) => out.push(decode(id, &b)?),
            None => {
                drop(records);
                requeue(&txn, webhook, id, None)?;
            }
        }
    }
    txn.commit().map_err(err)?;
    Ok(out)
}

fn finish_in(db: &Database, attempts: Vec<Attempted>) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(err)?;
    for a in &attempts {
        let d = &a.delivery;
        txn.open_table(DELIVERIES)
            .map_err(err)?
            .insert((d.webhook_id.as_str(), d.id.as_str()), encode(d).as_slice())
            .map_err(err)?;
        requeue(&txn, &d.webhook_id, &d.id, a.retry_at_ms)?;
    }
    txn.commit().map_err(err)?;
    Ok(())
}

/// The delivery ids of `webhook` in a table keyed by (webhook, delivery).
fn ids_of<V: redb::Value + 'static>(
    table: &impl ReadableTable<(&'static str, &'static str), V>,
    webhook: &str,
) -> Result<Vec<String>, StoreError> {
    Ok(table
        .range((webhook, "")..)
        .map_err(err)?
        .filter_map(Result::ok)
        .map(|(k, _)| {
            let (w, id) = k.value();
            (w == webhook, id.to_string())
        })
        .take_while(|(ours, _)| *ours)
        .map(|(_, id)| id)
        .collect())
}

fn delete_in(db: &Database, webhook: &str) -> Result<bool, StoreError> {
    let txn = db.begin_write().map_err(err)?;
    let existed = txn
        .open_table(WEBHOOKS)
        .map_err(err)?
        .remove(webhook)
        .map_err(err)?
        .is_some();
    {
        let mut records = txn.open_table(DELIVERIES).map_err(err)?;
        let ids = ids_of(&records, webhook)?;
        let mut recent = txn.open_table(RECENT).map_err(err)?;
        recent
            .retain_in((webhook, 0, "")..=(webhook, u64::MAX, "\u{10FFFF}"), |_, _| false)
            .map_err(err)?;
        for id in &ids {
            records.remove((webhook, id.as_str())).map_err(err)?;
        }
    }
    {
        let mut due = txn.open_table(DUE).map_err(err)?;
        due.retain_in((webhook, 0, "")..=(webhook, u64::MAX, "\u{10FFFF}"), |_, _| false)
            .map_err(err)?;
        let mut due_of = txn.open_table(DUE_OF).map_err(err)?;
        let ids = ids_of(&due_of, webhook)?;
        for id in &ids {
            due_of.remove((webhook, id.as_str())).map_err(err)?;
        }
    }
    txn.commit().map_err(err)?;
    Ok(existed)
}

fn recent_in(db: &Database, webhook: &str, limit: usize) -> Result<Vec<WebhookDelivery>, StoreError> {
    let txn = db.begin_read().map_err(err)?;
    let recent = txn.open_table(RECENT).map_err(err)?;
    let records = txn.open_table(DELIVERIES).map_err(err)?;
    let mut out = Vec::new();
    for entry in recent
        .range((webhook, 0, "")..=(webhook, u64::MAX, "\u{10FFFF}"))
        .map_err(err)?
        .rev()
        .take(limit)
    {
        let (k, _) = entry.map_err(err)?;
        let (_, _, id) = k.value();
        if let Some(b) = records.get((webhook, id)).map_err(err)? {
            out.push(decode(id, b.value())?);
        }
    }
    Ok(out)
}

#[async_trait]
impl WebhookStore for EmbeddedStore {
    async fn put_webhook(&self, hook: &Webhook) -> Result<(), StoreError> {
        let hook = hook.clone();
        self.blocking(move |db| put_json(db, WEBHOOKS, &hook.id, &hook)).await
    }

    async fn get_webhook(&self, id: &str) -> Result<Option<Webhook>, StoreError> {
        let id = id.to_string();
        self.blocking(move |db| get_json(db, WEBHOOKS, &id)).await
    }

    async fn list_webhooks(&self) -> Result<Vec<Webhook>, StoreError> {
        self.blocking(|db| {
            let txn = db.begin_read().map_err(err)?;
            let t = txn.open_table(WEBHOOKS).map_err(err)?;
            let mut out = Vec::new();
            for entry in t.iter().map_err(err)? {
                let (k, v) = entry.map_err(err)?;
                out.push(decode(k.value(), v.value())?);
            }
            Ok(out)
        })
        .await
    }

    async fn delete_webhook(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.blocking(move |db| delete_in(db, &id)).await
    }

    async fn enqueue_deliveries(&self, deliveries: &[WebhookDelivery]) -> Result<usize, StoreError> {
        if deliveries.is_empty() {
            return Ok(0);
        }
        let deliveries = deliveries.to_vec();
        self.blocking(move |db| add_in(db, deliveries, true)).await
    }

    async fn record_deliveries(&self, deliveries: &[WebhookDelivery]) -> Result<(), StoreError> {
        if deliveries.is_empty() {
            return Ok(());
        }
        let deliveries = deliveries.to_vec();
        self.blocking(move |db| add_in(db, deliveries, false).map(drop)).await
    }

    async fn claim_deliveries(
        &self,
        webhook_id: &str,
        now_ms: i64,
        lease_ms: i64,
        max: usize,
    ) -> Result<Vec<WebhookDelivery>, StoreError> {
        let id = webhook_id.to_string();
        self.blocking(move |db| claim_in(db, &id, now_ms, lease_ms, max)).await
    }

    async fn finish_deliveries(&self, attempts: &[Attempted]) -> Result<(), StoreError> {
        if attempts.is_empty() {
            return Ok(());
        }
        let attempts = attempts.to_vec();
        self.blocking(move |db| finish_in(db, attempts)).await
    }

    async fn recent_deliveries(&self, webhook_id: &str, limit: usize) -> Result<Vec<WebhookDelivery>, StoreError> {
        let id = webhook_id.to_string();
        self.blocking(move |db| recent_in(db, &id, limit)).await
    }

    async fn get_delivery(&self, webhook_id: &str, delivery_id: &str) -> Result<Option<WebhookDelivery>, StoreError> {
        let (w, d) = (webhook_id.to_string(), delivery_id.to_string());
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(err)?;
            let t = txn.open_table(DELIVERIES).map_err(err)?;
            let v = t.get((w.as_str(), d.as_str())).map_err(err)?;
            v.map(|b| decode(&d, b.value())).transpose()
        })
        .await
    }

    async fn queued_deliveries(&self, webhook_id: &str) -> Result<u64, StoreError> {
        let id = webhook_id.to_string();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(err)?;
            let t = txn.open_table(DUE).map_err(err)?;
            let n = t
                .range((id.as_str(), 0, "")..=(id.as_str(), u64::MAX, "\u{10FFFF}"))
                .map_err(err)?
                .count();
            Ok(n as u64)
        })
        .await
    }
}
