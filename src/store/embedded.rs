//! `EmbeddedStore`: a redb database file in the data directory.
//!
//! Tables:
//! - `links`: code → link JSON
//! - `recipients`: (campaign_id, recipient_id) → code
//! - `link_index`: (index name, seq) → code, where the index name is `a` (all links),
//!   `c\x1f<campaign>`, `o\x1f<owner>` or `co\x1f<campaign>\x1f<owner>`
//! - `meta`: `seq` → last link sequence number
//! - `idempotency`: key → expiry (u64 BE Unix seconds) followed by the stored answer
//!
//! Every mint is one write transaction, so a bulk call is all or nothing; commits are durable
//! (fsync) before the API answers. redb is synchronous, so every call runs on the blocking pool.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{
    IDEMPOTENCY_TTL_SECS, IndexName, InvalidationHandler, LinkFilter, Minted, Page, Store,
    StoreError, decode_link, encode_link, index_for, index_names,
};
use crate::link::Link;
use crate::link::code::generate_codes;
use crate::link::input::LinkPatch;
use crate::time::now_secs;

const LINKS: TableDefinition<&str, &[u8]> = TableDefinition::new("links");
const RECIPIENTS: TableDefinition<(&str, &str), &str> = TableDefinition::new("recipients");
const LINK_INDEX: TableDefinition<(&str, u64), &str> = TableDefinition::new("link_index");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const IDEMPOTENCY: TableDefinition<&str, &[u8]> = TableDefinition::new("idempotency");

pub struct EmbeddedStore {
    db: Arc<Database>,
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

impl EmbeddedStore {
    /// Opens (or creates) `linkgate.redb` in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| err(redb::StorageError::from(e)))?;
        let db = Database::create(data_dir.join("linkgate.redb")).map_err(err)?;
        let txn = db.begin_write().map_err(err)?;
        {
            txn.open_table(LINKS).map_err(err)?;
            txn.open_table(RECIPIENTS).map_err(err)?;
            txn.open_table(LINK_INDEX).map_err(err)?;
            txn.open_table(META).map_err(err)?;
            txn.open_table(IDEMPOTENCY).map_err(err)?;
        }
        txn.commit().map_err(err)?;
        Ok(Self { db: Arc::new(db) })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

fn mint_in(db: &Database, mut links: Vec<Link>) -> Result<Vec<Minted>, StoreError> {
    let txn = db.begin_write().map_err(err)?;
    let mut out = Vec::with_capacity(links.len());
    {
        let mut table = txn.open_table(LINKS).map_err(err)?;
        let mut rcpt = txn.open_table(RECIPIENTS).map_err(err)?;
        let mut index = txn.open_table(LINK_INDEX).map_err(err)?;
        let mut meta = txn.open_table(META).map_err(err)?;

        let mut taken = Vec::new();
        for (i, l) in links.iter().enumerate() {
            if !l.code.is_empty() && table.get(l.code.as_str()).map_err(err)?.is_some() {
                taken.push((i, l.code.clone()));
            }
        }
        if !taken.is_empty() {
            return Err(StoreError::CodesTaken(taken));
        }
        let mut seq = meta
            .get("seq")
            .map_err(err)?
            .map(|g| g.value())
            .unwrap_or(0);
        let mut fresh =
            generate_codes(links.iter().filter(|l| l.code.is_empty()).count()).into_iter();
        for mut link in links.drain(..) {
            if let Some((c, r)) = link.recipient_key() {
                let existing = rcpt
                    .get((c, r))
                    .map_err(err)?
                    .map(|g| g.value().to_string());
                if let Some(code) = existing {
                    let bytes = table
                        .get(code.as_str())
                        .map_err(err)?
                        .map(|g| g.value().to_vec());
                    if let Some(bytes) = bytes {
                        out.push(Minted::Existing(decode_link(&code, &bytes)?));
                        continue;
                    }
                }
            }
            if link.code.is_empty() {
                let mut code = fresh.next().unwrap_or_default();
                while code.is_empty() || table.get(code.as_str()).map_err(err)?.is_some() {
                    code = generate_codes(1).remove(0);
                }
                link.code = code;
            }
            seq += 1;
            link.seq = seq;
            table
                .insert(link.code.as_str(), encode_link(&link).as_slice())
                .map_err(err)?;
            if let Some((c, r)) = link.recipient_key() {
                rcpt.insert((c, r), link.code.as_str()).map_err(err)?;
            }
            for name in index_names(link.campaign_id.as_deref(), link.owner_id.as_deref()) {
                index
                    .insert((index_key(&name).as_str(), seq), link.code.as_str())
                    .map_err(err)?;
            }
            out.push(Minted::Created(link));
        }
        meta.insert("seq", seq).map_err(err)?;
    }
    txn.commit().map_err(err)?;
    Ok(out)
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.blocking(|db| {
            let txn = db.begin_read().map_err(err)?;
            txn.open_table(META).map_err(err)?;
            Ok(())
        })
        .await
    }

    async fn get_link(&self, code: &str) -> Result<Option<Link>, StoreError> {
        let code = code.to_string();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(err)?;
            let table = txn.open_table(LINKS).map_err(err)?;
            let bytes = table.get(code.as_str()).map_err(err)?;
            bytes.map(|b| decode_link(&code, b.value())).transpose()
        })
        .await
    }

    async fn mint(&self, links: Vec<Link>) -> Result<Vec<Minted>, StoreError> {
        self.blocking(move |db| mint_in(db, links)).await
    }

    async fn update_link(
        &self,
        code: &str,
        patch: &LinkPatch,
        now: i64,
    ) -> Result<Option<Link>, StoreError> {
        let (code, patch) = (code.to_string(), patch.clone());
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(err)?;
            let updated = {
                let mut table = txn.open_table(LINKS).map_err(err)?;
                let current = table
                    .get(code.as_str())
                    .map_err(err)?
                    .map(|g| g.value().to_vec());
                match current {
                    None => None,
                    Some(bytes) => {
                        let mut link = decode_link(&code, &bytes)?;
                        patch.apply(&mut link, now);
                        table
                            .insert(code.as_str(), encode_link(&link).as_slice())
                            .map_err(err)?;
                        Some(link)
                    }
                }
            };
            txn.commit().map_err(err)?;
            Ok(updated)
        })
        .await
    }

    async fn delete_link(&self, code: &str) -> Result<bool, StoreError> {
        let code = code.to_string();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(err)?;
            let found = {
                let mut table = txn.open_table(LINKS).map_err(err)?;
                let removed = table
                    .remove(code.as_str())
                    .map_err(err)?
                    .map(|g| g.value().to_vec());
                match removed {
                    None => false,
                    Some(bytes) => {
                        let link = decode_link(&code, &bytes)?;
                        let mut rcpt = txn.open_table(RECIPIENTS).map_err(err)?;
                        if let Some((c, r)) = link.recipient_key() {
                            let owned = rcpt
                                .get((c, r))
                                .map_err(err)?
                                .is_some_and(|g| g.value() == code);
                            if owned {
                                rcpt.remove((c, r)).map_err(err)?;
                            }
                        }
                        let mut index = txn.open_table(LINK_INDEX).map_err(err)?;
                        for name in
                            index_names(link.campaign_id.as_deref(), link.owner_id.as_deref())
                        {
                            index
                                .remove((index_key(&name).as_str(), link.seq))
                                .map_err(err)?;
                        }
                        true
                    }
                }
            };
            txn.commit().map_err(err)?;
            Ok(found)
        })
        .await
    }

    async fn list_links(
        &self,
        filter: &LinkFilter,
        after: u64,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let name = index_key(&index_for(filter));
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(err)?;
            let index = txn.open_table(LINK_INDEX).map_err(err)?;
            let table = txn.open_table(LINKS).map_err(err)?;
            let mut links = Vec::with_capacity(limit.min(1024));
            let mut last = None;
            let start = after.saturating_add(1);
            for entry in index
                .range((name.as_str(), start)..=(name.as_str(), u64::MAX))
                .map_err(err)?
            {
                let (k, code) = entry.map_err(err)?;
                let code = code.value();
                if let Some(bytes) = table.get(code).map_err(err)? {
                    links.push(decode_link(code, bytes.value())?);
                }
                last = Some(k.value().1);
                if links.len() == limit {
                    break;
                }
            }
            let next_cursor = if links.len() == limit { last } else { None };
            Ok(Page { links, next_cursor })
        })
        .await
    }

    async fn idempotency_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = key.to_string();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(err)?;
            let table = txn.open_table(IDEMPOTENCY).map_err(err)?;
            let Some(v) = table.get(key.as_str()).map_err(err)? else {
                return Ok(None);
            };
            let v = v.value();
            let expires = u64::from_be_bytes(v[..8].try_into().unwrap_or_default());
            Ok((expires > now_secs() as u64).then(|| v[8..].to_vec()))
        })
        .await
    }

    async fn idempotency_put(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let key = key.to_string();
        let mut record = (now_secs() as u64 + IDEMPOTENCY_TTL_SECS)
            .to_be_bytes()
            .to_vec();
        record.extend_from_slice(value);
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(err)?;
            txn.open_table(IDEMPOTENCY)
                .map_err(err)?
                .insert(key.as_str(), record.as_slice())
                .map_err(err)?;
            txn.commit().map_err(err)?;
            Ok(())
        })
        .await
    }

    async fn publish_invalidation(&self, _code: &str) -> Result<(), StoreError> {
        Ok(())
    }

    fn watch_invalidations(&self, _handler: InvalidationHandler) {}
}
