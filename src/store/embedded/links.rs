//! Links in the embedded store: one write transaction per mint call (all or nothing), reads,
//! changes, lists and idempotency answers.

use async_trait::async_trait;
use redb::{Database, ReadableTable};

use super::*;

fn mint_in(db: &Database, links: Vec<Link>) -> Result<Vec<Minted>, StoreError> {
    let txn = db.begin_write().map_err(err)?;
    let mut out = Vec::with_capacity(links.len());
    {
        let mut codes = txn.open_table(CODES).map_err(err)?;
        let mut table = txn.open_table(LINKS).map_err(err)?;
        let mut rcpt = txn.open_table(RECIPIENTS).map_err(err)?;
        let mut index = txn.open_table(LINK_INDEX).map_err(err)?;
        let mut meta = txn.open_table(META).map_err(err)?;

        refuse_taken_codes(&codes, &links)?;
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
            claim_code(&mut codes, &mut link, generated, out.len())?;
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
    add_counters(&txn, &created_per_campaign(&out))?;
    txn.commit().map_err(err)?;
    Ok(out)
}

/// Custom codes already taken abort the call before anything is written.
fn refuse_taken_codes(codes: &redb::Table<&str, u64>, links: &[Link]) -> Result<(), StoreError> {
    let mut taken = Vec::new();
    for (i, l) in links.iter().enumerate() {
        if !l.code.is_empty() && codes.get(l.code.as_str()).map_err(err)?.is_some() {
            taken.push((i, l.code.clone()));
        }
    }
    if taken.is_empty() {
        Ok(())
    } else {
        Err(StoreError::CodesTaken(taken))
    }
}

/// Claims `link.code` for `link.seq` by inserting and looking at what was there: a generated code
/// that collides (about once in 10^7 mints at ten million links) is put back and drawn again; a
/// custom one (item `index`) fails the call.
fn claim_code(
    codes: &mut redb::Table<&str, u64>,
    link: &mut Link,
    generated: bool,
    index: usize,
) -> Result<(), StoreError> {
    loop {
        let previous = codes
            .insert(link.code.as_str(), link.seq)
            .map_err(err)?
            .map(|g| g.value());
        let Some(old) = previous else { return Ok(()) };
        codes.insert(link.code.as_str(), old).map_err(err)?;
        if !generated {
            return Err(StoreError::CodesTaken(vec![(index, link.code.clone())]));
        }
        link.code = generate_codes(1).remove(0);
    }
}

/// The `links` counter of each campaign, for the links this call created.
fn created_per_campaign(out: &[Minted]) -> CounterDelta {
    let mut delta = CounterDelta::default();
    for m in out {
        if let Minted::Created(l) = m {
            let one = Stats {
                links: 1,
                ..Stats::default()
            };
            delta.add(None, l.campaign_id.as_deref(), None, one);
        }
    }
    delta
}

#[async_trait]
impl LinkStore for EmbeddedStore {
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
                let codes = txn.open_table(CODES).map_err(err)?;
                let mut table = txn.open_table(LINKS).map_err(err)?;
                match read_link(&codes, &table, &code)? {
                    None => false,
                    Some(link) => {
                        // The code stays in CODES, pointing at no link: retired, never handed out
                        // again (as in the Redis store).
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
}
