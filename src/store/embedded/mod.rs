//! `EmbeddedStore`: a redb database file in the data directory.
//!
//! Tables:
//! - `codes`: code → seq (small entries: random codes make random inserts, so they are kept small)
//! - `links`: seq → link JSON (appended in order, so a bulk mint writes sequential pages)
//! - `recipients`: (campaign_id, recipient_id) → code
//! - `link_index`: (index name, seq) → code, where the index name is `a` (all links),
//!   `c\x1f<campaign>`, `o\x1f<owner>` or `co\x1f<campaign>\x1f<owner>`
//! - `meta`: `seq` → last link sequence number
//! - `idempotency`: key → expiry (u64 BE Unix seconds) followed by the stored answer
//! - `leads`, `lead_claims` (claim key → lead id), `lead_index` (like `link_index`)
//! - `partners`, `campaigns`, `orders` (order id → first conversion answer): JSON records
//! - `webhooks`, `wh_deliveries`, `wh_due`, `wh_due_of`, `wh_recent`: webhooks and their
//!   delivery queues ([`webhooks`])
//! - `messages`, `message_ids`, `early_receipts`, `campaign_messages`: SMS messages ([`messages`])
//! - `funnel`, `funnel_waits`: the funnel's counts ([`funnel`])
//! - `cm_versions`, `cm_records`, `cm_open`, `cm_ledger`, `cm_meta`, `cm_currencies`: commission
//!   books; `names` (ids set once) and `refunds` ([`commission`])
//! - `stats`: (scope, field) → counter, scope `l\x1f<code>`, `c\x1f<campaign>`, `o\x1f<campaign>\x1f<owner>`
//!
//! Every mint is one write transaction, so a bulk call is all or nothing; commits are durable
//! (fsync) before the API answers. redb is synchronous, so every call runs on the blocking pool.

mod analytics;
mod attribution;
mod commission;
mod counters;
mod funnel;
mod links;
mod messages;
mod slot;
mod webhooks;

use self::slot::Slot;

use self::counters::add_counters;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{
    AttributionStore, CounterStore, IDEMPOTENCY_TTL_SECS, IndexName, InvalidationHandler, LinkFilter, LinkStore,
    Minted, Page, Store, StoreError, decode_link, encode_link, index_for, index_names,
};
use super::{LeadPage, decode, encode};
use crate::attribution::model::{BatchId, Campaign, Conversion, CounterDelta, Lead, LeadClaim, Partner, RankBy, Stats};
use crate::link::Link;
use crate::link::code::generate_codes;
use crate::link::input::LinkPatch;
use crate::time::now_secs;

const CODES: TableDefinition<&str, u64> = TableDefinition::new("codes");
const LINKS: TableDefinition<u64, &[u8]> = TableDefinition::new("links");
const RECIPIENTS: TableDefinition<(&str, &str), &str> = TableDefinition::new("recipients");
const LINK_INDEX: TableDefinition<(&str, u64), &str> = TableDefinition::new("link_index");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const LEADS: TableDefinition<&str, &[u8]> = TableDefinition::new("leads");
const LEAD_CLAIMS: TableDefinition<&str, &str> = TableDefinition::new("lead_claims");
const LEAD_INDEX: TableDefinition<(&str, u64), &str> = TableDefinition::new("lead_index");
const PARTNERS: TableDefinition<&str, &[u8]> = TableDefinition::new("partners");
const CAMPAIGNS: TableDefinition<&str, &[u8]> = TableDefinition::new("campaigns");
const ORDERS: TableDefinition<&str, &[u8]> = TableDefinition::new("orders");
/// (scope, field) → counter; scope is `l\x1f<code>`, `c\x1f<campaign>` or `o\x1f<campaign>\x1f<owner>`.
const STATS: TableDefinition<(&str, &str), i64> = TableDefinition::new("stats");
const IDEMPOTENCY: TableDefinition<&str, &[u8]> = TableDefinition::new("idempotency");
/// (bucket, field) → count: the analytics hashes ([`crate::analytics`]).
const ANALYTICS: TableDefinition<(&str, &str), i64> = TableDefinition::new("analytics");
/// code → the message carrying that link (JSON [`crate::sms::Message`]).
const MESSAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("messages");
/// `provider:message_id` → code.
const MESSAGE_IDS: TableDefinition<&str, &str> = TableDefinition::new("message_ids");
/// `provider:message_id` → the outcome of a receipt whose send is not known yet (JSON).
const EARLY_RECEIPTS: TableDefinition<&str, &[u8]> = TableDefinition::new("early_receipts");
/// (campaign, code) → 1: the campaign's messages.
const CAMPAIGN_MESSAGES: TableDefinition<(&str, &str), u8> = TableDefinition::new("campaign_messages");
/// (bucket, visitor) → 1: each hour's and day's visitors, exactly.
const VISITORS: TableDefinition<(&str, &[u8]), u8> = TableDefinition::new("visitors");

pub struct EmbeddedStore {
    slot: Arc<Slot>,
    /// Answers stored under an `Idempotency-Key`, counted to pace [`purge_expired`].
    idempotency_puts: Arc<AtomicU64>,
}

/// Expired `Idempotency-Key` answers are removed when the store opens and with every
/// `PURGE_EVERY`th answer stored, so the table holds about one TTL's worth of keys (Redis expires
/// its copies by itself).
const PURGE_EVERY: u64 = 256;

/// Whether an idempotency record (expiry, u64 BE Unix seconds, then the answer) has expired.
fn expired(record: &[u8], now: u64) -> bool {
    record
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .is_none_or(|b| u64::from_be_bytes(b) <= now)
}

fn purge_expired(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    let now = now_secs() as u64;
    txn.open_table(IDEMPOTENCY)
        .map_err(err)?
        .retain(|_, record| !expired(record, now))
        .map_err(err)
}

fn index_key(name: &IndexName) -> String {
    match name {
        IndexName::All => "a".into(),
        IndexName::Campaign(c) => format!("c\x1f{c}"),
        IndexName::Owner(o) => format!("o\x1f{o}"),
        IndexName::CampaignOwner(c, o) => format!("co\x1f{c}\x1f{o}"),
    }
}

fn err(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Embedded(e.into())
}

/// Opens (or creates) the database at `path`, creates its tables and purges expired idempotency
/// answers: one write transaction, which also proves the disk takes writes.
fn open_db(path: &Path) -> Result<Database, StoreError> {
    let db = Database::create(path).map_err(err)?;
    let txn = db.begin_write().map_err(err)?;
    {
        txn.open_table(CODES).map_err(err)?;
        txn.open_table(LINKS).map_err(err)?;
        txn.open_table(RECIPIENTS).map_err(err)?;
        txn.open_table(LINK_INDEX).map_err(err)?;
        txn.open_table(META).map_err(err)?;
        txn.open_table(LEADS).map_err(err)?;
        txn.open_table(LEAD_CLAIMS).map_err(err)?;
        txn.open_table(LEAD_INDEX).map_err(err)?;
        txn.open_table(PARTNERS).map_err(err)?;
        txn.open_table(CAMPAIGNS).map_err(err)?;
        txn.open_table(ORDERS).map_err(err)?;
        txn.open_table(STATS).map_err(err)?;
        txn.open_table(ANALYTICS).map_err(err)?;
        txn.open_table(VISITORS).map_err(err)?;
        txn.open_table(MESSAGES).map_err(err)?;
        txn.open_table(MESSAGE_IDS).map_err(err)?;
        txn.open_table(EARLY_RECEIPTS).map_err(err)?;
        txn.open_table(CAMPAIGN_MESSAGES).map_err(err)?;
        webhooks::create_tables(&txn)?;
        txn.open_table(funnel::FUNNEL).map_err(err)?;
        txn.open_table(funnel::FUNNEL_WAITS).map_err(err)?;
        commission::create_tables(&txn)?;
    }
    purge_expired(&txn)?;
    txn.commit().map_err(err)?;
    Ok(db)
}

impl EmbeddedStore {
    /// Opens (or creates) `linkgate.redb` in `data_dir`. A disk too full to write at start is not
    /// fatal: the store starts unwritable and heals once it has room ([`slot`]).
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| err(redb::StorageError::from(e)))?;
        Ok(Self {
            slot: Slot::open(data_dir.join("linkgate.redb"), open_db)?,
            idempotency_puts: Arc::default(),
        })
    }

    /// Runs `f` on the blocking pool with the database; an I/O failure starts a reopen and
    /// answers [`StoreError::Unwritable`].
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.slot.get()?;
        let slot = self.slot.clone();
        tokio::task::spawn_blocking(move || {
            let r = f(&db);
            drop(db);
            r.map_err(|e| slot.failed(e))
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// The database (tests reach into its tables).
    #[cfg(test)]
    fn db(&self) -> Arc<Database> {
        self.slot.get().expect("the store is open")
    }
}

/// Reads the link stored under `code`, if any.
fn read_link(
    codes: &impl ReadableTable<&'static str, u64>,
    links: &impl ReadableTable<u64, &'static [u8]>,
    code: &str,
) -> Result<Option<Link>, StoreError> {
    let Some(seq) = codes.get(code).map_err(err)?.map(|g| g.value()) else {
        return Ok(None);
    };
    let bytes = links.get(seq).map_err(err)?;
    bytes.map(|b| decode_link(code, b.value())).transpose()
}

fn get_json<T: serde::de::DeserializeOwned>(
    db: &Database,
    table: TableDefinition<&str, &[u8]>,
    key: &str,
) -> Result<Option<T>, StoreError> {
    let txn = db.begin_read().map_err(err)?;
    let t = txn.open_table(table).map_err(err)?;
    let v = t.get(key).map_err(err)?;
    v.map(|b| decode(key, b.value())).transpose()
}

fn put_json<T: serde::Serialize>(
    db: &Database,
    table: TableDefinition<&str, &[u8]>,
    key: &str,
    v: &T,
) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(err)?;
    txn.open_table(table)
        .map_err(err)?
        .insert(key, encode(v).as_slice())
        .map_err(err)?;
    txn.commit().map_err(err)?;
    Ok(())
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.slot.check_writable()?;
        self.blocking(|db| {
            let txn = db.begin_read().map_err(err)?;
            txn.open_table(META).map_err(err)?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(store: &EmbeddedStore) -> usize {
        let txn = store.db().begin_read().unwrap();
        txn.open_table(IDEMPOTENCY).unwrap().iter().unwrap().count()
    }

    /// Stores an answer whose TTL ran out a second ago.
    fn insert_expired(store: &EmbeddedStore, key: &str) {
        let expired_at = (now_secs() as u64 - 1).to_be_bytes();
        let txn = store.db().begin_write().unwrap();
        txn.open_table(IDEMPOTENCY)
            .unwrap()
            .insert(key, expired_at.as_slice())
            .unwrap();
        txn.commit().unwrap();
    }

    #[tokio::test]
    async fn expired_idempotency_answers_are_purged() {
        let dir = std::env::temp_dir().join(format!("linkgate-idem-purge-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = EmbeddedStore::open(&dir).unwrap();
        insert_expired(&store, "old");
        store.idempotency_put("fresh", b"{}").await.unwrap();
        assert_eq!(
            store.idempotency_get("old").await.unwrap(),
            None,
            "expired answers are not served"
        );
        assert_eq!(count(&store), 2);
        drop(store);

        // Reopening purges; so does every PURGE_EVERY-th answer stored.
        let store = EmbeddedStore::open(&dir).unwrap();
        assert_eq!(count(&store), 1);
        assert_eq!(
            store.idempotency_get("fresh").await.unwrap().as_deref(),
            Some(&b"{}"[..])
        );
        insert_expired(&store, "old");
        for i in 0..PURGE_EVERY {
            store.idempotency_put(&format!("k{i}"), b"{}").await.unwrap();
        }
        assert_eq!(count(&store), 1 + PURGE_EVERY as usize, "the stale one is gone");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
