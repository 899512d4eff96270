//! `RedisStore`: links in Redis, shared by every replica.
//!
//! Key layout (prefix `lg:`; the part in braces is the Cluster hash tag):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `lg:link:{<code>}` | string | the link as JSON; created with `SET NX`, the atomic claim of a code |
//! | `lg:rcpt:{<campaign>}:<recipient>` | string | the code of that recipient's link (`SET NX` claim) |
//! | `lg:seq` | string | link sequence counter (`INCRBY`), the paging cursor |
//! | `lg:idx:all`, `lg:idx:c:{<campaign>}`, `lg:idx:o:{<owner>}`, `lg:idx:co:{<campaign>}:<owner>` | zset | code scored by seq |
//! | `lg:idem:<sha256>` | string | a stored `Idempotency-Key` answer, `EX` 24 h |
//!
//! Pub/sub channel `lg:invalidate` carries codes whose link changed; each replica drops them from
//! its cache. No command touches two keys at once, so the layout works unchanged on Redis Cluster.
//! Batch writes are pipelined in chunks of [`PIPELINE_CHUNK`] commands.

use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Client, Pipeline, Value};

use super::{
    IDEMPOTENCY_TTL_SECS, IndexName, Invalidation, InvalidationHandler, LinkFilter, Minted, Page,
    Store, StoreError, decode_link, encode_link, index_for, index_names,
};
use crate::link::Link;
use crate::link::code::generate_codes;
use crate::link::input::LinkPatch;

pub const PIPELINE_CHUNK: usize = 10_000;
/// Most members added by one `ZADD`.
pub const ZADD_MEMBERS: usize = 5_000;
pub const INVALIDATE_CHANNEL: &str = "lg:invalidate";

pub struct RedisStore {
    client: Client,
    conn: ConnectionManager,
}

fn link_key(code: &str) -> String {
    format!("lg:link:{{{code}}}")
}
fn rcpt_key(campaign: &str, recipient: &str) -> String {
    format!("lg:rcpt:{{{campaign}}}:{recipient}")
}
fn index_key(name: &IndexName) -> String {
    match name {
        IndexName::All => "lg:idx:all".into(),
        IndexName::Campaign(c) => format!("lg:idx:c:{{{c}}}"),
        IndexName::Owner(o) => format!("lg:idx:o:{{{o}}}"),
        IndexName::CampaignOwner(c, o) => format!("lg:idx:co:{{{c}}}:{o}"),
    }
}

impl RedisStore {
    /// Connects; fails when Redis does not answer within a few seconds.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let client = Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(2);
        let conn = client.get_connection_manager_with_config(config).await?;
        Ok(Self { client, conn })
    }

    /// Runs `cmds` in pipelines of at most [`PIPELINE_CHUNK`] commands, returning every reply.
    async fn run_chunked(&self, cmds: Vec<redis::Cmd>) -> Result<Vec<Value>, StoreError> {
        let mut out = Vec::with_capacity(cmds.len());
        let mut cmds = cmds.into_iter().peekable();
        while cmds.peek().is_some() {
            let mut p = Pipeline::with_capacity(PIPELINE_CHUNK);
            for c in cmds.by_ref().take(PIPELINE_CHUNK) {
                p.add_command(c);
            }
            let replies: Vec<Value> = p.query_async(&mut self.conn.clone()).await?;
            out.extend(replies);
        }
        Ok(out)
    }

    async fn get_links(&self, codes: &[String]) -> Result<Vec<Option<Link>>, StoreError> {
        let cmds = codes
            .iter()
            .map(|c| redis::cmd("GET").arg(link_key(c)).clone())
            .collect();
        let replies = self.run_chunked(cmds).await?;
        codes
            .iter()
            .zip(replies)
            .map(|(code, v)| bytes_of(v).map(|b| decode_link(code, &b)).transpose())
            .collect()
    }
}

fn bytes_of(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        _ => None,
    }
}

fn is_ok(v: &Value) -> bool {
    matches!(v, Value::Okay) || matches!(v, Value::SimpleString(s) if s == "OK")
}

#[async_trait]
impl Store for RedisStore {
    async fn ping(&self) -> Result<(), StoreError> {
        let _: String = redis::cmd("PING")
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    async fn get_link(&self, code: &str) -> Result<Option<Link>, StoreError> {
        let bytes: Option<Vec<u8>> = self.conn.clone().get(link_key(code)).await?;
        bytes.map(|b| decode_link(code, &b)).transpose()
    }

    async fn mint(&self, links: Vec<Link>) -> Result<Vec<Minted>, StoreError> {
        let n = links.len();
        // 1. Custom codes already taken abort the call before anything is written.
        let custom: Vec<usize> = (0..n).filter(|&i| !links[i].code.is_empty()).collect();
        let cmds = custom
            .iter()
            .map(|&i| redis::cmd("EXISTS").arg(link_key(&links[i].code)).clone())
            .collect();
        let exists = self.run_chunked(cmds).await?;
        let taken: Vec<(usize, String)> = custom
            .iter()
            .zip(exists)
            .filter(|(_, v)| matches!(v, Value::Int(1)))
            .map(|(&i, _)| (i, links[i].code.clone()))
            .collect();
        if !taken.is_empty() {
            return Err(StoreError::CodesTaken(taken));
        }

        // 2. Pairs that already have a link get it back.
        let mut out: Vec<Option<Minted>> = vec![None; n];
        let paired: Vec<usize> = (0..n)
            .filter(|&i| links[i].recipient_key().is_some())
            .collect();
        self.resolve_existing(&links, &paired, &mut out).await?;

        // 3. Write the new links (SET NX); a generated code that collides is drawn again.
        let mut todo: Vec<usize> = (0..n).filter(|&i| out[i].is_none()).collect();
        let mut links = links;
        if !todo.is_empty() {
            let base: u64 = self.conn.clone().incr("lg:seq", todo.len() as u64).await?;
            let first = base - todo.len() as u64 + 1;
            let mut fresh =
                generate_codes(todo.iter().filter(|&&i| links[i].code.is_empty()).count())
                    .into_iter();
            for (k, &i) in todo.iter().enumerate() {
                links[i].seq = first + k as u64;
                if links[i].code.is_empty() {
                    links[i].code = fresh.next().unwrap_or_default();
                }
            }
        }
        let mut written = Vec::with_capacity(todo.len());
        let custom_set: std::collections::HashSet<usize> = custom.into_iter().collect();
        while !todo.is_empty() {
            let cmds = todo
                .iter()
                .map(|&i| {
                    redis::cmd("SET")
                        .arg(link_key(&links[i].code))
                        .arg(encode_link(&links[i]))
                        .arg("NX")
                        .clone()
                })
                .collect();
            let replies = self.run_chunked(cmds).await?;
            let mut retry = Vec::new();
            for (&i, v) in todo.iter().zip(replies) {
                if is_ok(&v) {
                    written.push(i);
                } else if custom_set.contains(&i) {
                    // Lost a race for a custom code after step 1: undo this call's writes.
                    let undo = written
                        .iter()
                        .map(|&w| redis::cmd("DEL").arg(link_key(&links[w].code)).clone())
                        .collect();
                    self.run_chunked(undo).await?;
                    return Err(StoreError::CodesTaken(vec![(i, links[i].code.clone())]));
                } else {
                    links[i].code = generate_codes(1).remove(0);
                    retry.push(i);
                }
            }
            todo = retry;
        }

        // 4. Claim recipient pairs; a replica that claimed first wins and ours is withdrawn.
        let claims: Vec<usize> = written
            .iter()
            .copied()
            .filter(|&i| links[i].recipient_key().is_some())
            .collect();
        let cmds = claims
            .iter()
            .map(|&i| {
                let (c, r) = links[i].recipient_key().unwrap_or_default();
                redis::cmd("SET")
                    .arg(rcpt_key(c, r))
                    .arg(&links[i].code)
                    .arg("NX")
                    .clone()
            })
            .collect();
        let replies = self.run_chunked(cmds).await?;
        let lost: Vec<usize> = claims
            .iter()
            .zip(replies)
            .filter(|(_, v)| !is_ok(v))
            .map(|(&i, _)| i)
            .collect();
        if !lost.is_empty() {
            let undo = lost
                .iter()
                .map(|&i| redis::cmd("DEL").arg(link_key(&links[i].code)).clone())
                .collect();
            self.run_chunked(undo).await?;
            self.resolve_existing(&links, &lost, &mut out).await?;
        }

        // 5. Index the links that were created.
        let lost: std::collections::HashSet<usize> = lost.into_iter().collect();
        // One ZADD per index key and chunk of members: a bulk call of one campaign is a few commands.
        let mut by_index: std::collections::HashMap<String, (redis::Cmd, usize)> =
            std::collections::HashMap::new();
        let mut cmds = Vec::new();
        for &i in written.iter().filter(|i| !lost.contains(i)) {
            let l = &links[i];
            for name in index_names(l.campaign_id.as_deref(), l.owner_id.as_deref()) {
                let key = index_key(&name);
                let (cmd, members) = by_index
                    .entry(key.clone())
                    .or_insert_with(|| (redis::cmd("ZADD").arg(&key).clone(), 0));
                cmd.arg(l.seq).arg(&l.code);
                *members += 1;
                if *members == ZADD_MEMBERS {
                    cmds.extend(by_index.remove(&key).map(|(c, _)| c));
                }
            }
        }
        cmds.extend(by_index.into_values().map(|(c, _)| c));
        self.run_chunked(cmds).await?;
        let mut links = links.into_iter().map(Some).collect::<Vec<_>>();
        Ok(out
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                m.unwrap_or_else(|| {
                    Minted::Created(links[i].take().expect("each link is taken once"))
                })
            })
            .collect())
    }

    async fn update_link(
        &self,
        code: &str,
        patch: &LinkPatch,
        now: i64,
    ) -> Result<Option<Link>, StoreError> {
        let Some(mut link) = self.get_link(code).await? else {
            return Ok(None);
        };
        patch.apply(&mut link, now);
        // XX: a concurrent DELETE wins over this PATCH instead of being resurrected by it.
        let set: Option<String> = redis::cmd("SET")
            .arg(link_key(code))
            .arg(encode_link(&link))
            .arg("XX")
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(set.map(|_| link))
    }

    async fn delete_link(&self, code: &str) -> Result<bool, StoreError> {
        let Some(link) = self.get_link(code).await? else {
            return Ok(false);
        };
        let mut p = redis::pipe();
        p.del(link_key(code));
        for name in index_names(link.campaign_id.as_deref(), link.owner_id.as_deref()) {
            p.zrem(index_key(&name), code);
        }
        p.query_async::<()>(&mut self.conn.clone()).await?;
        if let Some((c, r)) = link.recipient_key() {
            let key = rcpt_key(c, r);
            let owner: Option<String> = self.conn.clone().get(&key).await?;
            if owner.as_deref() == Some(code) {
                let _: () = self.conn.clone().del(&key).await?;
            }
        }
        Ok(true)
    }

    async fn list_links(
        &self,
        filter: &LinkFilter,
        after: u64,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let key = index_key(&index_for(filter));
        let rows: Vec<(String, u64)> = redis::cmd("ZRANGEBYSCORE")
            .arg(&key)
            .arg(format!("({after}"))
            .arg("+inf")
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut self.conn.clone())
            .await?;
        let codes: Vec<String> = rows.iter().map(|(c, _)| c.clone()).collect();
        let links: Vec<Link> = self
            .get_links(&codes)
            .await?
            .into_iter()
            .flatten()
            .collect();
        let next_cursor = if rows.len() == limit {
            rows.last().map(|r| r.1)
        } else {
            None
        };
        Ok(Page { links, next_cursor })
    }

    async fn idempotency_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.conn.clone().get(format!("lg:idem:{key}")).await?)
    }

    async fn idempotency_put(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let _: () = self
            .conn
            .clone()
            .set_ex(format!("lg:idem:{key}"), value, IDEMPOTENCY_TTL_SECS)
            .await?;
        Ok(())
    }

    async fn publish_invalidation(&self, code: &str) -> Result<(), StoreError> {
        let _: i64 = self.conn.clone().publish(INVALIDATE_CHANNEL, code).await?;
        Ok(())
    }

    fn watch_invalidations(&self, handler: InvalidationHandler) {
        let client = self.client.clone();
        tokio::spawn(async move {
            let mut first = true;
            loop {
                match client.get_async_pubsub().await {
                    Ok(mut pubsub) => {
                        if pubsub.subscribe(INVALIDATE_CHANNEL).await.is_ok() {
                            if !first {
                                // Messages published while we were away are lost: drop everything.
                                handler(Invalidation::All);
                            }
                            first = false;
                            let mut messages = pubsub.on_message();
                            while let Some(msg) = messages.next().await {
                                if let Ok(code) = msg.get_payload::<String>() {
                                    handler(Invalidation::Code(code));
                                }
                            }
                            tracing::warn!("invalidation subscription ended; reconnecting");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot subscribe to invalidations; retrying")
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
    }
}

impl RedisStore {
    /// Fills `out[i]` with `Existing` for each pair in `idx` that already has a link.
    async fn resolve_existing(
        &self,
        links: &[Link],
        idx: &[usize],
        out: &mut [Option<Minted>],
    ) -> Result<(), StoreError> {
        let cmds = idx
            .iter()
            .map(|&i| {
                let (c, r) = links[i].recipient_key().unwrap_or_default();
                redis::cmd("GET").arg(rcpt_key(c, r)).clone()
            })
            .collect();
        let replies = self.run_chunked(cmds).await?;
        let mut found_idx = Vec::new();
        let mut found_codes = Vec::new();
        for (&i, v) in idx.iter().zip(replies) {
            if let Some(code) = bytes_of(v).and_then(|b| String::from_utf8(b).ok()) {
                found_idx.push(i);
                found_codes.push(code);
            }
        }
        for (i, link) in found_idx
            .into_iter()
            .zip(self.get_links(&found_codes).await?)
        {
            if let Some(link) = link {
                out[i] = Some(Minted::Existing(link));
            }
        }
        Ok(())
    }
}
