//! Analytics buckets in the embedded store: hashes as `(bucket, field)` rows, visitors as
//! `(bucket, visitor)` rows (exact, where Redis estimates), and the sweep that enforces retention.

use std::collections::HashSet;

use async_trait::async_trait;
use redb::ReadableTable;

use super::*;
use crate::analytics::{AKey, Cells, Rules};
use crate::store::AnalyticsStore;

/// Adds a batch's analytics (in the batch's transaction, under its applied mark).
pub(super) fn add_analytics(txn: &redb::WriteTransaction, cells: &Cells) -> Result<(), StoreError> {
    let mut hashes = txn.open_table(ANALYTICS).map_err(err)?;
    for (key, _, fields) in &cells.hashes {
        for (field, n) in fields {
            let cur = hashes
                .get((key.name.as_str(), field.as_str()))
                .map_err(err)?
                .map_or(0, |g| g.value());
            hashes
                .insert((key.name.as_str(), field.as_str()), cur + n)
                .map_err(err)?;
        }
    }
    let mut visitors = txn.open_table(VISITORS).map_err(err)?;
    for (key, _, members) in &cells.sets {
        for m in members {
            visitors.insert((key.name.as_str(), m.as_slice()), 1).map_err(err)?;
        }
    }
    Ok(())
}

impl EmbeddedStore {
    /// Removes the buckets past their retention; returns how many rows went. Runs in the
    /// background every hour ([`crate::app`]) and whenever a test asks.
    pub(crate) async fn sweep_analytics(&self, rules: &Rules, now: i64) -> Result<u64, StoreError> {
        let (hourly, daily) = (rules.hourly_secs, rules.daily_secs);
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(err)?;
            let mut removed = 0u64;
            {
                let stale = |name: &str| {
                    let Some(date) = AKey::date(name) else { return false };
                    let end = crate::analytics::utc_midnight(date) + 2 * 86_400;
                    let keep = if AKey::is_hourly(name) { hourly } else { daily };
                    end + keep <= now
                };
                let mut hashes = txn.open_table(ANALYTICS).map_err(err)?;
                hashes
                    .retain(|(name, _), _| {
                        let go = stale(name);
                        removed += go as u64;
                        !go
                    })
                    .map_err(err)?;
                let mut visitors = txn.open_table(VISITORS).map_err(err)?;
                visitors
                    .retain(|(name, _), _| {
                        let go = stale(name);
                        removed += go as u64;
                        !go
                    })
                    .map_err(err)?;
            }
            txn.commit().map_err(err)?;
            Ok(removed)
        })
        .await
    }
}

#[async_trait]
impl AnalyticsStore for EmbeddedStore {
    async fn analytics_hashes(&self, keys: &[AKey]) -> Result<Vec<Vec<(String, i64)>>, StoreError> {
        let names: Vec<String> = keys.iter().map(|k| k.name.clone()).collect();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(err)?;
            let t = txn.open_table(ANALYTICS).map_err(err)?;
            let mut out = Vec::with_capacity(names.len());
            for name in &names {
                let mut fields = Vec::new();
                // Every field of `name`: from ("name", "") up to the next name.
                for row in t.range((name.as_str(), "")..).map_err(err)? {
                    let (k, v) = row.map_err(err)?;
                    let (n, f) = k.value();
                    if n != name {
                        break;
                    }
                    fields.push((f.to_string(), v.value()));
                }
                out.push(fields);
            }
            Ok(out)
        })
        .await
    }

    async fn analytics_visitors(&self, groups: &[Vec<AKey>]) -> Result<Vec<u64>, StoreError> {
        let groups: Vec<Vec<String>> = groups
            .iter()
            .map(|g| g.iter().map(|k| k.name.clone()).collect())
            .collect();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(err)?;
            let t = txn.open_table(VISITORS).map_err(err)?;
            let mut out = Vec::with_capacity(groups.len());
            for group in &groups {
                let mut seen: HashSet<Vec<u8>> = HashSet::new();
                for name in group {
                    for row in t.range((name.as_str(), [].as_slice())..).map_err(err)? {
                        let (k, _) = row.map_err(err)?;
                        let (n, m) = k.value();
                        if n != name {
                            break;
                        }
                        seen.insert(m.to_vec());
                    }
                }
                out.push(seen.len() as u64);
            }
            Ok(out)
        })
        .await
    }
}
