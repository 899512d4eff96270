//! Counters in the embedded store: the batcher's increments and the stats read back from them.

use async_trait::async_trait;
use redb::{Database, ReadableTable};

use super::*;

pub(super) fn add_counters(txn: &redb::WriteTransaction, delta: &CounterDelta) -> Result<(), StoreError> {
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

impl EmbeddedStore {
    /// Adds a batch's counter increments, once: in one transaction with the replica's highest
    /// applied batch number, so a batch applied already (re-sent after an error, or replayed from
    /// the spool after a restart) changes nothing. Returns whether it applied.
    pub(crate) async fn apply_batch(
        &self,
        delta: &CounterDelta,
        cells: crate::analytics::Cells,
        batch: &BatchId,
    ) -> Result<bool, StoreError> {
        let delta = delta.clone();
        let (mark, seq) = (format!("applied\x1f{}", batch.replica), batch.seq);
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(err)?;
            {
                let mut meta = txn.open_table(META).map_err(err)?;
                if meta.get(mark.as_str()).map_err(err)?.is_some_and(|g| g.value() >= seq) {
                    return Ok(false);
                }
                meta.insert(mark.as_str(), seq).map_err(err)?;
            }
            add_counters(&txn, &delta)?;
            super::analytics::add_analytics(&txn, &cells)?;
            txn.commit().map_err(err)?;
            Ok(true)
        })
        .await
    }
}

#[async_trait]
impl CounterStore for EmbeddedStore {
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
                let owner = scope.strip_prefix(prefix.as_str()).unwrap_or(scope).to_string();
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
