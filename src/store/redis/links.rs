//! Links in Redis: minting (codes claimed with `SET NX`, recipients claimed per campaign), reads,
//! changes, lists, idempotency answers and the invalidation channel.

use std::collections::HashSet;

use futures_util::StreamExt;

use async_trait::async_trait;
use redis::{AsyncCommands, Value};

use super::*;

/// `SET KEYS[1] ARGV[1]` only when the key holds a live link (not missing, not `ARGV[2]`, the
/// tombstone): 1 when set.
const UPDATE_LIVE: &str = r"
local v = redis.call('GET', KEYS[1])
if not v or v == ARGV[2] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
";

#[async_trait]
impl LinkStore for RedisStore {
    async fn get_link(&self, code: &str) -> Result<Option<Link>, StoreError> {
        let bytes: Option<Vec<u8>> = self.conn().await?.get(link_key(code)).await?;
        self.stored_link(code, bytes).await
    }

    /// Mints in five steps, each one pipelined round trip or a few: (1) refuse custom codes
    /// already taken, (2) return the links recipients already have, (3) write the new links,
    /// (4) claim their recipients, (5) index them.
    async fn mint(&self, mut links: Vec<Link>) -> Result<Vec<Minted>, StoreError> {
        let n = links.len();
        let custom = self.refuse_taken_codes(&links).await?;
        let mut out: Vec<Option<Minted>> = vec![None; n];
        let paired: Vec<usize> = (0..n).filter(|&i| links[i].recipient_key().is_some()).collect();
        self.resolve_existing(&links, &paired, &mut out).await?;
        let written = self.write_new_links(&mut links, &out, &custom).await?;
        let lost = self.claim_recipients(&links, &written, &mut out).await?;
        self.index_links(&links, &written, &lost).await?;
        let mut links = links.into_iter().map(Some).collect::<Vec<_>>();
        Ok(out
            .into_iter()
            .enumerate()
            .map(|(i, m)| m.unwrap_or_else(|| Minted::Created(links[i].take().expect("each link is taken once"))))
            .collect())
    }

    async fn update_link(&self, code: &str, patch: &LinkPatch, now: i64) -> Result<Option<Link>, StoreError> {
        let Some(mut link) = self.get_link(code).await? else {
            return Ok(None);
        };
        patch.apply(&mut link, now);
        // Only over a live link: a concurrent DELETE wins over this PATCH instead of being
        // resurrected by it.
        let set: i64 = redis::cmd("EVAL")
            .arg(UPDATE_LIVE)
            .arg(1)
            .arg(link_key(code))
            .arg(encode_link(&link))
            .arg(TOMBSTONE)
            .query_async(&mut self.conn().await?)
            .await?;
        Ok((set == 1).then_some(link))
    }

    /// Retires the code ([`TOMBSTONE`]; the lists naming it skip it from then on) and frees the
    /// recipient's claim, so minting for that recipient again makes a new link.
    async fn delete_link(&self, code: &str) -> Result<bool, StoreError> {
        // `SET … XX GET`: the old value says whether this call deleted a live link (of two
        // concurrent DELETEs, one answers 404).
        let old: Option<Vec<u8>> = redis::cmd("SET")
            .arg(link_key(code))
            .arg(TOMBSTONE)
            .arg("XX")
            .arg("GET")
            .query_async(&mut self.conn().await?)
            .await?;
        let Some(link) = self.stored_link(code, old).await? else {
            return Ok(false);
        };
        if let Some((c, r)) = link.recipient_key() {
            let key = rcpt_key(c);
            let holder: Option<String> = self.conn().await?.hget(&key, r).await?;
            if holder.as_deref() == Some(code) {
                let _: () = self.conn().await?.hdel(&key, r).await?;
            }
        }
        Ok(true)
    }

    async fn list_links(&self, filter: &LinkFilter, after: u64, limit: usize) -> Result<Page, StoreError> {
        let codes = self.list_page(&link_list_key(&index_for(filter)), after, limit).await?;
        // Deleted links are skipped: a page may hold fewer than `limit` and still have a next one.
        let links: Vec<Link> = self.get_links(&codes).await?.into_iter().flatten().collect();
        let next_cursor = (codes.len() == limit).then(|| after + limit as u64);
        Ok(Page { links, next_cursor })
    }

    async fn idempotency_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.conn().await?.get(format!("lg:idem:{key}")).await?)
    }

    async fn idempotency_put(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let _: () = self
            .conn()
            .await?
            .set_ex(format!("lg:idem:{key}"), value, IDEMPOTENCY_TTL_SECS)
            .await?;
        Ok(())
    }

    async fn publish_invalidation(&self, code: &str) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let publish = match conn {
            Conn::Single(_) => "PUBLISH",
            Conn::Cluster(_) => "SPUBLISH",
        };
        let _: Value = redis::cmd(publish)
            .arg(INVALIDATE_CHANNEL)
            .arg(code)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    fn watch_invalidations(&self, handler: InvalidationHandler) {
        match &self.backend {
            Backend::Single(client) => watch_single(client.clone(), handler),
            Backend::Cluster { nodes, tls, .. } => watch_cluster(nodes.clone(), tls.clone(), handler),
        }
    }
}

/// Subscribes to the invalidation channel of one server, and again whenever the subscription
/// ends; after a gap every cached link is dropped (what was published meanwhile is lost).
fn watch_single(client: Client, handler: InvalidationHandler) {
    tokio::spawn(async move {
        let mut first = true;
        loop {
            match client.get_async_pubsub().await {
                Ok(mut pubsub) => {
                    if pubsub.subscribe(INVALIDATE_CHANNEL).await.is_ok() {
                        if !first {
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

/// How often a cluster subscriber publishes an empty heartbeat on the invalidation channel, and
/// how long it may hear nothing (not even its own heartbeat) before it takes its subscription for
/// lost: the node serving it died, say, and the client has not moved it yet. Every subscriber
/// hears every replica's heartbeats, so with many replicas silence is rarer still.
const HEARTBEAT: Duration = Duration::from_millis(250);
const HEARTBEAT_LOST: Duration = Duration::from_millis(1_000);

/// Subscribes to the sharded invalidation channel of a cluster (`SSUBSCRIBE`, served by the
/// channel's slot's master) through the cluster client, which moves the subscription when the
/// slot moves. Each time it did (a later `ssubscribe` push), and each time the heartbeat went
/// silent and the subscription was made anew (until the failover is over, that fails and is
/// tried again every 250 ms), every cached link is dropped: what was published meanwhile is
/// lost.
fn watch_cluster(nodes: Vec<String>, tls: crate::tls::RedisTls, handler: InvalidationHandler) {
    tokio::spawn(async move {
        let mut first = true;
        loop {
            let (tx, pushes) = tokio::sync::mpsc::unbounded_channel::<redis::PushInfo>();
            let subscribed = async {
                let client = tls.cluster_client(&nodes, |b| {
                    b.use_protocol(redis::ProtocolVersion::RESP3)
                        .push_sender(tx)
                        .connection_timeout(STORE_CONNECT_TIMEOUT)
                        .response_timeout(HEARTBEAT_LOST)
                        .overall_response_timeout(Some(HEARTBEAT_LOST))
                })?;
                let mut conn = client.get_async_connection().await?;
                conn.ssubscribe(INVALIDATE_CHANNEL).await?;
                Ok::<_, redis::RedisError>(conn)
            }
            .await;
            match subscribed {
                Ok(conn) => {
                    if !first {
                        handler(Invalidation::All);
                    }
                    first = false;
                    listen(conn, pushes, &handler).await;
                    tracing::warn!("invalidation heartbeat lost; subscribing again");
                }
                Err(e) => tracing::debug!(error = %e, "cannot subscribe to invalidations; retrying"),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
}

/// Hands the subscription's messages to `handler` until it falls silent for [`HEARTBEAT_LOST`].
/// Heartbeats are sent from their own tasks, so a publish stuck on a dead node never holds up
/// the listening.
async fn listen(
    conn: redis::cluster_async::ClusterConnection,
    mut pushes: tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>,
    handler: &InvalidationHandler,
) {
    let (mut heard, mut confirmed) = (tokio::time::Instant::now(), false);
    let mut beat = tokio::time::interval(HEARTBEAT);
    loop {
        tokio::select! {
            push = pushes.recv() => {
                let Some(push) = push else { return };
                match push.kind {
                    redis::PushKind::SMessage => {
                        heard = tokio::time::Instant::now();
                        if let Some(Some(code)) = push.data.get(1).cloned().map(bytes_of)
                            && !code.is_empty() {
                                handler(Invalidation::Code(String::from_utf8_lossy(&code).into_owned()));
                            }
                    }
                    redis::PushKind::SSubscribe => {
                        heard = tokio::time::Instant::now();
                        // The first confirms our own `ssubscribe`; later ones are the client's
                        // re-subscriptions after a gap.
                        if confirmed {
                            handler(Invalidation::All);
                        }
                        confirmed = true;
                    }
                    _ => {}
                }
            }
            _ = beat.tick() => {
                if heard.elapsed() > HEARTBEAT_LOST {
                    return;
                }
                let mut conn = conn.clone();
                tokio::spawn(async move {
                    let mut publish = redis::cmd("SPUBLISH");
                    publish.arg(INVALIDATE_CHANNEL).arg("");
                    let _ = tokio::time::timeout(HEARTBEAT_LOST, publish.query_async::<Value>(&mut conn)).await;
                });
            }
        }
    }
}

impl RedisStore {
    /// For each link in `idx`, the code holding its `(campaign, recipient)` claim (`HGET`).
    async fn recipient_holders(&self, links: &[Link], idx: &[usize]) -> Result<Vec<Value>, StoreError> {
        let cmds = idx
            .iter()
            .map(|&i| {
                let (c, r) = links[i].recipient_key().unwrap_or_default();
                redis::cmd("HGET").arg(rcpt_key(c)).arg(r).clone()
            })
            .collect();
        self.run_chunked(cmds).await
    }

    /// Fills `out[i]` with `Existing` for each pair in `idx` that already has a link.
    async fn resolve_existing(
        &self,
        links: &[Link],
        idx: &[usize],
        out: &mut [Option<Minted>],
    ) -> Result<(), StoreError> {
        let replies = self.recipient_holders(links, idx).await?;
        let mut found_idx = Vec::new();
        let mut found_codes = Vec::new();
        for (&i, v) in idx.iter().zip(replies) {
            if let Some(code) = text_of(v) {
                found_idx.push(i);
                found_codes.push(code);
            }
        }
        for (i, link) in found_idx.into_iter().zip(self.get_links(&found_codes).await?) {
            if let Some(link) = link {
                out[i] = Some(Minted::Existing(link));
            }
        }
        Ok(())
    }
}

/// The steps of [`LinkStore::mint`].
impl RedisStore {
    /// Step 1: custom codes already taken abort the call before anything is written. Returns the
    /// indexes of the links with a custom code.
    async fn refuse_taken_codes(&self, links: &[Link]) -> Result<Vec<usize>, StoreError> {
        let n = links.len();
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
        Ok(custom)
    }

    /// Step 3: writes the links that `out` does not answer yet (`SET NX`), numbered in order; a
    /// generated code that collides is drawn again, a custom code lost to a race undoes the call.
    /// Returns the indexes written.
    async fn write_new_links(
        &self,
        links: &mut [Link],
        out: &[Option<Minted>],
        custom: &[usize],
    ) -> Result<Vec<usize>, StoreError> {
        let n = links.len();
        let mut todo: Vec<usize> = (0..n).filter(|&i| out[i].is_none()).collect();
        if !todo.is_empty() {
            let base: u64 = self.conn().await?.incr("lg:seq", todo.len() as u64).await?;
            let first = base - todo.len() as u64 + 1;
            let mut fresh = generate_codes(todo.iter().filter(|&&i| links[i].code.is_empty()).count()).into_iter();
            for (k, &i) in todo.iter().enumerate() {
                links[i].seq = first + k as u64;
                if links[i].code.is_empty() {
                    links[i].code = fresh.next().unwrap_or_default();
                }
            }
        }
        let mut written = Vec::with_capacity(todo.len());
        let custom_set: HashSet<usize> = custom.iter().copied().collect();
        while !todo.is_empty() {
            let planned = templates::records(&todo.iter().map(|&i| &links[i]).collect::<Vec<_>>());
            // Templates first (named by their content, so writing one again changes nothing):
            // no reader ever finds a link whose template is not there yet.
            let writes = planned
                .templates
                .iter()
                .map(|(key, t)| redis::cmd("SET").arg(key).arg(t).arg("NX").clone())
                .collect();
            self.run_chunked(writes).await?;
            let cmds = todo
                .iter()
                .zip(&planned.records)
                .map(|(&i, record)| {
                    redis::cmd("SET")
                        .arg(link_key(&links[i].code))
                        .arg(record)
                        .arg("NX")
                        .arg("GET")
                        .clone()
                })
                .collect();
            let replies = self.run_chunked(cmds).await?;
            let mut retry = Vec::new();
            for ((&i, v), record) in todo.iter().zip(replies).zip(&planned.records) {
                // `SET … NX GET` answers the old value: none, or this very link when the client
                // re-sent the command after Redis applied it (a cluster failover, say).
                let ours = match bytes_of(v) {
                    None => true,
                    Some(old) => old == *record,
                };
                if ours {
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
        Ok(written)
    }

    /// Step 4: claims the recipient pairs of the links written; where a replica claimed first,
    /// ours is withdrawn and theirs returned. Returns the indexes withdrawn.
    async fn claim_recipients(
        &self,
        links: &[Link],
        written: &[usize],
        out: &mut [Option<Minted>],
    ) -> Result<HashSet<usize>, StoreError> {
        let claims: Vec<usize> = written
            .iter()
            .copied()
            .filter(|&i| links[i].recipient_key().is_some())
            .collect();
        let cmds = claims
            .iter()
            .map(|&i| {
                let (c, r) = links[i].recipient_key().unwrap_or_default();
                redis::cmd("HSETNX").arg(rcpt_key(c)).arg(r).arg(&links[i].code).clone()
            })
            .collect();
        let replies = self.run_chunked(cmds).await?;
        let refused: Vec<usize> = claims
            .iter()
            .zip(replies)
            .filter(|(_, v)| !matches!(v, Value::Int(1)))
            .map(|(&i, _)| i)
            .collect();
        // A refused claim held by this very link was ours: the client re-sent the `HSETNX`
        // after Redis applied it.
        let holders = self.recipient_holders(links, &refused).await?;
        let lost: Vec<usize> = refused
            .into_iter()
            .zip(holders)
            .filter(|(i, holder)| bytes_of(holder.clone()).as_deref() != Some(links[*i].code.as_bytes()))
            .map(|(i, _)| i)
            .collect();
        if !lost.is_empty() {
            let undo = lost
                .iter()
                .map(|&i| redis::cmd("DEL").arg(link_key(&links[i].code)).clone())
                .collect();
            self.run_chunked(undo).await?;
            self.resolve_existing(links, &lost, out).await?;
        }
        Ok(lost.into_iter().collect())
    }

    /// Step 5: appends the links created to their lists (one `RPUSH` per list and chunk) and
    /// counts them in their campaigns.
    async fn index_links(&self, links: &[Link], written: &[usize], lost: &HashSet<usize>) -> Result<(), StoreError> {
        // One RPUSH per list and chunk of codes: a bulk call of one campaign is a few commands.
        let mut appends = Vec::new();
        for &i in written.iter().filter(|i| !lost.contains(i)) {
            let l = &links[i];
            for name in index_names(l.campaign_id.as_deref(), l.owner_id.as_deref()) {
                appends.push((link_list_key(&name), l.code.as_str()));
            }
        }
        let mut cmds = list_appends(appends);
        let mut per_campaign: std::collections::HashMap<&str, i64> = std::collections::HashMap::new();
        for &i in written.iter().filter(|i| !lost.contains(i)) {
            if let Some(c) = links[i].campaign_id.as_deref() {
                *per_campaign.entry(c).or_default() += 1;
            }
        }
        cmds.extend(Self::owner_adds(
            written
                .iter()
                .filter(|i| !lost.contains(i))
                .filter_map(|&i| Some((links[i].campaign_id.as_deref()?, links[i].owner_id.as_deref()))),
        ));
        for (c, n) in per_campaign {
            cmds.push(redis::cmd("SADD").arg(CAMPAIGN_INDEX).arg(c).clone());
            cmds.push(
                redis::cmd("HINCRBY")
                    .arg(campaign_stats_key(c))
                    .arg("links")
                    .arg(n)
                    .clone(),
            );
        }
        self.run_chunked(cmds).await?;
        Ok(())
    }
}
