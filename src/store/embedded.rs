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
//! - `stats`: (scope, field) → counter, scope `l\x1f<code>`, `c\x1f<campaign>`, `o\x1f<campaign>\x1f<owner>`
//!
//! Every mint is one write transaction, so a bulk call is all or nothing; commits are durable
//! (fsync) before the API answers. redb is synchronous, so every call runs on the blocking pool.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{
    IDEMPOTENCY_TTL_SECS, IndexName, InvalidationHandler, LinkFilter, Minted, Page, Store, StoreError, decode_link,
    encode_link, index_for, index_names,
};
use super::{LeadPage, decode, encode};
use crate::attribution::model::{Campaign, Conversion, CounterDelta, Lead, LeadClaim, Partner, RankBy, Stats};
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

pub struct EmbeddedStore {
    db: Arc<Database>,
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

impl EmbeddedStore {
    /// Opens (or creates) `linkgate.redb` in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| err(redb::StorageError::from(e)))?;
        let db = Database::create(data_dir.join("linkgate.redb")).map_err(err)?;
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
        }
        purge_expired(&txn)?;
        txn.commit().map_err(err)?;
        Ok(Self {
            db: Arc::new(db),
            idempotency_puts: Arc::default(),
        })
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

fn mint_in(db: &Database, links: Vec<Link>) -> Result<Vec<Minted>, StoreError> {
    let txn = db.begin_write().map_err(err)?;
    let mut out = Vec::with_capacity(links.len());
    {
        let mut codes = txn.open_table(CODES).map_err(err)?;
        let mut table = txn.open_table(LINKS).map_err(err)?;
        let mut rcpt = txn.open_table(RECIPIENTS).map_err(err)?;
        let mut index = txn.open_table(LINK_INDEX).map_err(err)?;
        let mut meta = txn.open_table(META).map_err(err)?;

        let mut taken = Vec::new();
        for (i, l) in links.iter().enumerate() {
            if !l.code.is_empty() && codes.get(l.code.as_str()).map_err(err)?.is_some() {
                taken.push((i, l.code.clone()));
            }
        }
        if !taken.is_empty() {
            return Err(StoreError::CodesTaken(taken));
        }
        let mut seq = meta.get("seq").map_err(err)?.map(|g| g.value()).unwrap_or(0);
        let mut fresh = generate_codes(links.iter().filter(|l| l.code.is_empty()).count()).into_iter();
        for mut link in links {
            if let Some((c, r)) = link.recipient_key() {
                let existing = rcpt.get((c, r)).map_err(err)?.map(|g| g.value().to_string());
                if let Some(link) = existing
                    .map(|code| read_link(&codes, &table, &code))
                    .transpose()?
                    .flatten()
                {
                    out.push(Minted::Existing(link));
                    continue;
                }
            }
            let generated = link.code.is_empty();
            if generated {
                link.code = fresh.next().unwrap_or_else(|| generate_codes(1).remove(0));
            }
            seq += 1;
            link.seq = seq;
            // Claim the code by inserting and looking at what was there: a generated code that
            // collides (about once in 10^7 mints at ten million links) is put back and drawn again.
            loop {
                let previous = codes.insert(link.code.as_str(), seq).map_err(err)?.map(|g| g.value());
                let Some(old) = previous else { break };
                codes.insert(link.code.as_str(), old).map_err(err)?;
                if !generated {
                    return Err(StoreError::CodesTaken(vec![(out.len(), link.code.clone())]));
                }
                link.code = generate_codes(1).remove(0);
            }
            table.insert(seq, encode_link(&link).as_slice()).map_err(err)?;
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
    let mut delta = CounterDelta::default();
    for m in &out {
        if let Minted::Created(l) = m {
            delta.add(
                None,
                l.campaign_id.as_deref(),
                None,
                Stats {
                    links: 1,
                    ..Stats::default()
                },
            );
        }
    }
    add_counters(&txn, &delta)?;
    txn.commit().map_err(err)?;
    Ok(out)
}

fn add_counters(txn: &redb::WriteTransaction, delta: &CounterDelta) -> Result<(), StoreError> {
    let mut stats = txn.open_table(STATS).map_err(err)?;
    let mut add = |scope: String, s: &Stats| -> Result<(), StoreError> {
        for (field, v) in s.nonzero() {
            let cur = stats
                .get((scope.as_str(), field))
                .map_err(err)?
                .map(|g| g.value())
                .unwrap_or(0);
            stats.insert((scope.as_str(), field), cur + v).map_err(err)?;
        }
        Ok(())
    };
    for (code, d) in &delta.links {
        add(format!("l\x1f{}", code.as_str()), &d.stats)?;
    }
    for (c, s) in &delta.campaigns {
        add(format!("c\x1f{c}"), s)?;
    }
    for ((c, o), s) in &delta.owners {
        add(format!("o\x1f{c}\x1f{o}"), s)?;
    }
    Ok(())
}

fn read_stats(db: &Database, scope: &str) -> Result<Stats, StoreError> {
    let txn = db.begin_read().map_err(err)?;
    let stats = txn.open_table(STATS).map_err(err)?;
    let mut s = Stats::default();
    for field in Stats::FIELDS {
        s.set(
            field,
            stats.get((scope, field)).map_err(err)?.map(|g| g.value()).unwrap_or(0),
        );
    }
    Ok(s.derive())
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

fn claim_leads_in(db: &Database, leads: Vec<Lead>) -> Result<Vec<LeadClaim>, StoreError> {
    let txn = db.begin_write().map_err(err)?;
    let mut out = Vec::with_capacity(leads.len());
    {
        let mut claims = txn.open_table(LEAD_CLAIMS).map_err(err)?;
        let mut table = txn.open_table(LEADS).map_err(err)?;
        let mut index = txn.open_table(LEAD_INDEX).map_err(err)?;
        let mut meta = txn.open_table(META).map_err(err)?;
        let mut seq = meta.get("leadseq").map_err(err)?.map(|g| g.value()).unwrap_or(0);
        for mut lead in leads {
            let key = lead.claim_key();
            let holder = claims.get(key.as_str()).map_err(err)?.map(|g| g.value().to_string());
            if let Some(id) = holder {
                let existing = table.get(id.as_str()).map_err(err)?.map(|g| g.value().to_vec());
                if let Some(bytes) = existing {
                    out.push(LeadClaim::Existing(decode(&id, &bytes)?));
                    continue;
                }
            }
            seq += 1;
            lead.seq = seq;
            claims.insert(key.as_str(), lead.lead_id.as_str()).map_err(err)?;
            table
                .insert(lead.lead_id.as_str(), encode(&lead).as_slice())
                .map_err(err)?;
            for name in index_names(lead.campaign_id.as_deref(), lead.owner_id.as_deref()) {
                index
                    .insert((index_key(&name).as_str(), seq), lead.lead_id.as_str())
                    .map_err(err)?;
            }
            out.push(LeadClaim::Won(lead));
        }
        meta.insert("leadseq", seq).map_err(err)?;
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
            read_link(
                &txn.open_table(CODES).map_err(err)?,
                &txn.open_table(LINKS).map_err(err)?,
                &code,
            )
        })
        .await
    }

    async fn mint(&self, links: Vec<Link>) -> Result<Vec<Minted>, StoreError> {
        self.blocking(move |db| mint_in(db, links)).await
    }

    async fn update_link(&self, code: &str, patch: &LinkPatch, now: i64) -> Result<Option<Link>, StoreError> {
        let (code, patch) = (code.to_string(), patch.clone());
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(err)?;
            let updated = {
                let codes = txn.open_table(CODES).map_err(err)?;
                let mut table = txn.open_table(LINKS).map_err(err)?;
                match read_link(&codes, &table, &code)? {
                    None => None,
                    Some(mut link) => {
                        patch.apply(&mut link, now);
                        table.insert(link.seq, encode_link(&link).as_slice()).map_err(err)?;
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
                let mut codes = txn.open_table(CODES).map_err(err)?;
                let mut table = txn.open_table(LINKS).map_err(err)?;
                match read_link(&codes, &table, &code)? {
                    None => false,
                    Some(link) => {
                        codes.remove(code.as_str()).map_err(err)?;
                        table.remove(link.seq).map_err(err)?;
                        let mut rcpt = txn.open_table(RECIPIENTS).map_err(err)?;
                        if let Some((c, r)) = link.recipient_key() {
                            let owned = rcpt.get((c, r)).map_err(err)?.is_some_and(|g| g.value() == code);
                            if owned {
                                rcpt.remove((c, r)).map_err(err)?;
                            }
                        }
                        let mut index = txn.open_table(LINK_INDEX).map_err(err)?;
                        for name in index_names(link.campaign_id.as_deref(), link.owner_id.as_deref()) {
                            index.remove((index_key(&name).as_str(), link.seq)).map_err(err)?;
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

    async fn list_links(&self, filter: &LinkFilter, after: u64, limit: usize) -> Result<Page, StoreError> {
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
                let seq = k.value().1;
                if let Some(bytes) = table.get(seq).map_err(err)? {
                    links.push(decode_link(code.value(), bytes.value())?);
                }
                last = Some(seq);
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
            Ok((!expired(v, now_secs() as u64)).then(|| v[8..].to_vec()))
        })
        .await
    }

    async fn idempotency_put(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let key = key.to_string();
        let mut record = (now_secs() as u64 + IDEMPOTENCY_TTL_SECS).to_be_bytes().to_vec();
        record.extend_from_slice(value);
        let purge = self.idempotency_puts.fetch_add(1, Ordering::Relaxed) % PURGE_EVERY == PURGE_EVERY - 1;
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(err)?;
            txn.open_table(IDEMPOTENCY)
                .map_err(err)?
                .insert(key.as_str(), record.as_slice())
                .map_err(err)?;
            if purge {
                purge_expired(&txn)?;
            }
            txn.commit().map_err(err)?;
            Ok(())
        })
        .await
    }

    async fn publish_invalidation(&self, _code: &str) -> Result<(), StoreError> {
        Ok(())
    }

    fn watch_invalidations(&self, _handler: InvalidationHandler) {}

    async fn claim_leads(&self, leads: Vec<Lead>) -> Result<Vec<LeadClaim>, StoreError> {
        if leads.is_empty() {
            return Ok(Vec::new());
        }
        self.blocking(move |db| claim_leads_in(db, leads)).await
    }

    async fn get_lead(&self, lead_id: &str) -> Result<Option<Lead>, StoreError> {
        let id = lead_id.to_string();
        self.blocking(move |db| get_json(db, LEADS, &id)).await
    }

    async fn list_leads(&self, filter: &LinkFilter, after: u64, limit: usize) -> Result<LeadPage, StoreError> {
        let name = index_key(&index_for(filter));
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(err)?;
            let index = txn.open_table(LEAD_INDEX).map_err(err)?;
            let table = txn.open_table(LEADS).map_err(err)?;
            let mut leads = Vec::with_capacity(limit.min(1024));
            let mut last = None;
            for entry in index
                .range((name.as_str(), after.saturating_add(1))..=(name.as_str(), u64::MAX))
                .map_err(err)?
            {
                let (k, id) = entry.map_err(err)?;
                if let Some(bytes) = table.get(id.value()).map_err(err)? {
                    leads.push(decode(id.value(), bytes.value())?);
                }
                last = Some(k.value().1);
                if leads.len() == limit {
                    break;
                }
            }
            let next_cursor = if leads.len() == limit { last } else { None };
            Ok(LeadPage { leads, next_cursor })
        })
        .await
    }

    async fn put_partner(&self, partner: &Partner) -> Result<(), StoreError> {
        let p = partner.clone();
        self.blocking(move |db| put_json(db, PARTNERS, &p.id, &p)).await
    }

    async fn get_partner(&self, id: &str) -> Result<Option<Partner>, StoreError> {
        let id = id.to_string();
        self.blocking(move |db| get_json(db, PARTNERS, &id)).await
    }

    async fn put_campaign(&self, campaign: &Campaign) -> Result<(), StoreError> {
        let c = campaign.clone();
        self.blocking(move |db| put_json(db, CAMPAIGNS, &c.id, &c)).await
    }

    async fn get_campaign(&self, id: &str) -> Result<Option<Campaign>, StoreError> {
        let id = id.to_string();
        self.blocking(move |db| get_json(db, CAMPAIGNS, &id)).await
    }

    async fn claim_conversion(&self, conversion: &Conversion) -> Result<Option<Conversion>, StoreError> {
        let c = conversion.clone();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(err)?;
            let existing = {
                let mut orders = txn.open_table(ORDERS).map_err(err)?;
                let existing = orders
                    .get(c.order_id.as_str())
                    .map_err(err)?
                    .map(|g| g.value().to_vec());
                match existing {
                    Some(bytes) => Some(decode(&c.order_id, &bytes)?),
                    None => {
                        orders.insert(c.order_id.as_str(), encode(&c).as_slice()).map_err(err)?;
                        None
                    }
                }
            };
            txn.commit().map_err(err)?;
            Ok(existing)
        })
        .await
    }

    async fn apply_counters(&self, delta: &CounterDelta) -> Result<(), StoreError> {
        if delta.is_empty() {
            return Ok(());
        }
        let delta = delta.clone();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(err)?;
            add_counters(&txn, &delta)?;
            txn.commit().map_err(err)?;
            Ok(())
        })
        .await
    }

    async fn link_stats(&self, link: &Link) -> Result<Stats, StoreError> {
        let scope = format!("l\x1f{}", link.code);
        self.blocking(move |db| read_stats(db, &scope)).await
    }

    async fn campaign_stats(&self, campaign_id: &str) -> Result<Stats, StoreError> {
        let scope = format!("c\x1f{campaign_id}");
        self.blocking(move |db| read_stats(db, &scope)).await
    }

    async fn leaderboard(
        &self,
        campaign_id: &str,
        by: RankBy,
        limit: usize,
    ) -> Result<Vec<(String, Stats)>, StoreError> {
        let prefix = format!("o\x1f{campaign_id}\x1f");
        let end = format!("o\x1f{campaign_id}\x20");
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(err)?;
            let stats = txn.open_table(STATS).map_err(err)?;
            let mut owners: std::collections::HashMap<String, Stats> = std::collections::HashMap::new();
            for entry in stats.range((prefix.as_str(), "")..(end.as_str(), "")).map_err(err)? {
                let (k, v) = entry.map_err(err)?;
                let (scope, field) = k.value();
                let owner = scope[prefix.len()..].to_string();
                owners.entry(owner).or_default().set(field, v.value());
            }
            let mut ranked: Vec<(String, Stats)> = owners.into_iter().collect();
            ranked.sort_by(|a, b| {
                b.1.get(by.as_str())
                    .cmp(&a.1.get(by.as_str()))
                    .then_with(|| a.0.cmp(&b.0))
            });
            ranked.retain(|(_, s)| s.get(by.as_str()) > 0);
            ranked.truncate(limit);
            Ok(ranked)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(store: &EmbeddedStore) -> usize {
        let txn = store.db.begin_read().unwrap();
        txn.open_table(IDEMPOTENCY).unwrap().iter().unwrap().count()
    }

    /// Stores an answer whose TTL ran out a second ago.
    fn insert_expired(store: &EmbeddedStore, key: &str) {
        let expired_at = (now_secs() as u64 - 1).to_be_bytes();
        let txn = store.db.begin_write().unwrap();
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
