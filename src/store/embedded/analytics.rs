//! Analytics buckets in the embedded store: hashes as `(bucket, field)` rows, visitors as
//! `(bucket, visitor)` rows (exact, where Redis estimates), and the sweep that enforces retention.

use std::collections::HashSet;

use async_trait::async_trait;
use redb::ReadableTable;

use super::*;
use crate::analytics::{AKey, Cells, Read, Rules};
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
    async fn analytics_hashes(&self, reads: &[Read]) -> Result<Vec<Vec<(String, i64)>>, StoreError> {
        let reads = reads.to_vec();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(err)?;
            let t = txn.open_table(ANALYTICS).map_err(err)?;
            let mut out = Vec::with_capacity(reads.len());
            for read in &reads {
                let name = read.key.name.as_str();
                let mut fields = Vec::new();
                match &read.fields {
                    Some(named) => {
                        for f in named {
                            if let Some(v) = t.get((name, f.as_str())).map_err(err)? {
                                fields.push((f.clone(), v.value()));
                            }
                        }
                    }
                    // Every field of `name`: from ("name", "") up to the next name.
                    None => {
                        for row in t.range((name, "")..).map_err(err)? {
                            let (k, v) = row.map_err(err)?;
                            let (n, f) = k.value();
                            if n != name {
                                break;
                            }
                            fields.push((f.to_string(), v.value()));
                        }
                    }
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::analytics::{AnalyticsDelta, AnalyticsMemo, Counts};
    use crate::link::LinkKind;

    /// Taps at `times` (Unix seconds) for campaign `c`, applied as batches `1..`.
    async fn tap(store: &EmbeddedStore, rules: &Rules, times: &[i64]) {
        let mut memo = AnalyticsMemo::default();
        for (i, &t) in times.iter().enumerate() {
            let mut d = AnalyticsDelta::default();
            let p = memo.place(rules, t, Some(Arc::from("c")), None, Some(LinkKind::Sms));
            let v = memo.visit(Some(b"Mozilla/5.0 (iPhone)"), None, None);
            d.add(
                &p,
                Some(v),
                Some("abc1234"),
                Counts {
                    human: 1,
                    ..Counts::default()
                },
            );
            d.add_visitor(&p, [i as u8; 16]);
            let id = crate::attribution::model::BatchId {
                replica: "r".into(),
                seq: i as u64 + 1,
            };
            store
                .apply_batch(&Default::default(), d.cells(rules), &id)
                .await
                .unwrap();
        }
    }

    #[tokio::test]
    async fn the_sweep_drops_buckets_past_their_retention_and_keeps_the_rest() {
        let dir = std::env::temp_dir().join(format!("linkgate-analytics-sweep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = EmbeddedStore::open(&dir).unwrap();
        let rules = Rules {
            hourly_secs: 3 * 86_400,
            daily_secs: 10 * 86_400,
            ..Rules::default()
        };
        let now = 1_796_659_199;
        // Five days ago (past the hourly retention, within the daily one), and now.
        tap(&store, &rules, &[now - 5 * 86_400, now]).await;
        let hourly = |t: i64| crate::analytics::Scope::ALL.hourly_key(crate::analytics::utc_day_of_hour(t / 3600).0);
        let daily = |t: i64| {
            let day = jiff::Timestamp::from_second(t)
                .unwrap()
                .to_zoned(rules.tz.clone())
                .date();
            crate::analytics::Scope::ALL.daily_key(crate::analytics::Dim::Total, day)
        };
        let keys = [
            hourly(now - 5 * 86_400),
            hourly(now),
            daily(now - 5 * 86_400),
            daily(now),
        ];
        let keys: Vec<Read> = keys.into_iter().map(Read::all).collect();
        let before = store.analytics_hashes(&keys).await.unwrap();
        assert!(before.iter().all(|f| !f.is_empty()), "{before:?}");

        let removed = store.sweep_analytics(&rules, now).await.unwrap();
        assert!(removed > 0);
        let after = store.analytics_hashes(&keys).await.unwrap();
        assert!(after[0].is_empty(), "the old hour is gone");
        assert!(
            !after[1].is_empty() && !after[2].is_empty() && !after[3].is_empty(),
            "{after:?}"
        );
        let visitors = store
            .analytics_visitors(&[vec![
                crate::analytics::Scope::ALL.hourly_visitors_key((now - 5 * 86_400) / 3600),
            ]])
            .await
            .unwrap();
        assert_eq!(visitors, [0], "the old hour's visitors are gone too");
        // Past the daily retention (counted from the end of the bucket's day, with a day's margin
        // for zones ahead of UTC), the daily buckets go as well.
        store.sweep_analytics(&rules, now + 13 * 86_400).await.unwrap();
        let later = store.analytics_hashes(&keys).await.unwrap();
        assert!(later.iter().all(Vec::is_empty), "{later:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
