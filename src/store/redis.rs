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
//! | `lg:lead:{<lead_id>}` | string | a lead as JSON |
//! | `lg:leadclaim:{link:<code>}`, `lg:leadclaim:{click:<click_id>}` | string | the lead holding that claim (`SET NX`) |
//! | `lg:leadseq`, `lg:lidx:…` | string, zset | lead sequence and list indexes, laid out like the link ones |
//! | `lg:partner:{<id>}`, `lg:campaign:{<id>}` | string | partner and campaign JSON |
//! | `lg:order:{<order_id>}` | string | the first answer for an order (`SET NX`: the conversion's idempotency) |
//! | `lg:stats:link:{<code>}`, `lg:stats:camp:{<campaign>}` | hash | counters: `links`, `human_clicks`, `bot_clicks`, `leads`, `conversions`, `revenue` (`clicks` is their sum) |
//! | `lg:clicks:{<n>}` | string | counter array (`BITFIELD`) of links numbered `n × 65,536` up to the next: per link, `i64` human then bot clicks counted by live taps; a link's stats add these to its hash's |
//! | `lg:lb:{<campaign>}:leads` (`:conversions`, `:revenue`) | zset | owners scored for the leaderboards |
//! | `LINKGATE_STREAM` (default `linkgate:events`) | stream | events, fields `type` and `json`, `MAXLEN ~` capped |
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
    IDEMPOTENCY_TTL_SECS, IndexName, Invalidation, InvalidationHandler, LinkFilter, Minted, Page, Store, StoreError,
    decode_link, encode_link, index_for, index_names,
};
use super::{LeadPage, decode, encode};
use crate::attribution::model::{Campaign, Conversion, CounterDelta, Lead, LeadClaim, Partner, RankBy, Stats};
use crate::link::Link;
use crate::link::code::generate_codes;
use crate::link::input::LinkPatch;

pub const PIPELINE_CHUNK: usize = 10_000;
/// Most members added by one `ZADD`.
pub const ZADD_MEMBERS: usize = 5_000;
pub const INVALIDATE_CHANNEL: &str = "lg:invalidate";
/// Links per click counter array (`lg:clicks:{n}`, 16 bytes per link: 1 MiB when full).
pub const CLICK_ARRAY_LINKS: u64 = 65_536;

pub struct RedisStore {
    client: Client,
    /// Connected on first use, so linkgate starts (not ready) while Redis is still unreachable.
    conn: tokio::sync::OnceCell<ConnectionManager>,
}

fn link_key(code: &str) -> String {
    format!("lg:link:{{{code}}}")
}
fn rcpt_key(campaign: &str, recipient: &str) -> String {
    format!("lg:rcpt:{{{campaign}}}:{recipient}")
}
fn index_key(name: &IndexName) -> String {
    named_index_key("idx", name)
}
fn named_index_key(prefix: &str, name: &IndexName) -> String {
    match name {
        IndexName::All => format!("lg:{prefix}:all"),
        IndexName::Campaign(c) => format!("lg:{prefix}:c:{{{c}}}"),
        IndexName::Owner(o) => format!("lg:{prefix}:o:{{{o}}}"),
        IndexName::CampaignOwner(c, o) => format!("lg:{prefix}:co:{{{c}}}:{o}"),
    }
}
fn lead_key(id: &str) -> String {
    format!("lg:lead:{{{id}}}")
}
fn lead_claim_key(claim: &str) -> String {
    format!("lg:leadclaim:{{{claim}}}")
}
fn link_stats_key(code: &str) -> String {
    let mut key = Vec::new();
    link_stats_key_into(&mut key, code.as_bytes());
    String::from_utf8(key).expect("a key built from a str is UTF-8")
}
/// The counter array holding the clicks of the link numbered `seq`, and the link's first `i64`
/// slot in it (`#2i` human clicks, `#2i+1` bot clicks, in `BITFIELD` terms).
fn click_slot(seq: u64) -> (u64, u64) {
    (seq / CLICK_ARRAY_LINKS, 2 * (seq % CLICK_ARRAY_LINKS))
}
fn clicks_key(array: u64) -> String {
    format!("lg:clicks:{{{array}}}")
}

/// [`link_stats_key`] into a buffer the batcher reuses (one key per tapped link per batch).
fn link_stats_key_into(out: &mut Vec<u8>, code: &[u8]) {
    out.clear();
    out.extend_from_slice(b"lg:stats:link:{");
    out.extend_from_slice(code);
    out.push(b'}');
}
fn campaign_stats_key(id: &str) -> String {
    format!("lg:stats:camp:{{{id}}}")
}
fn leaderboard_key(campaign: &str, by: RankBy) -> String {
    format!("lg:lb:{{{campaign}}}:{}", by.as_str())
}

/// The commands that add `delta` to the stored counters, each handed to `command` as its
/// arguments (`HINCRBY key field n`, `ZINCRBY key n owner`, `BITFIELD key INCRBY i64 #slot n …`).
///
/// A batch has about one tapped link per event. The clicks of links whose sequence number the
/// taps carried go into the links' counter arrays, one `BITFIELD` per array per batch instead of
/// one `HINCRBY` per link: that halved Redis's CPU per event (3.8 → 1.9 µs with 1M links, where
/// every tap hits another link). What is left per link (leads, conversions, revenue, and clicks
/// replayed from the spool or counted by the API) goes to the link's hash; its keys and numbers are
/// written into two reused buffers rather than allocated per command.
pub(crate) fn counter_updates(delta: &CounterDelta, mut command: impl FnMut(&[&[u8]])) {
    let mut arrays: Vec<(u64, i64, i64)> = Vec::with_capacity(delta.links.len());
    let mut number = Vec::with_capacity(20);
    let mut hincr = |key: &[u8], s: &Stats, command: &mut dyn FnMut(&[&[u8]])| {
        for (field, v) in s.nonzero() {
            number.clear();
            crate::resp::push_signed(&mut number, v);
            command(&[b"HINCRBY", key, field.as_bytes(), &number]);
        }
    };
    let mut key = Vec::with_capacity(96);
    for (code, d) in &delta.links {
        let mut s = d.stats;
        if d.seq != 0 {
            arrays.push((d.seq, s.human_clicks, s.bot_clicks));
            (s.human_clicks, s.bot_clicks) = (0, 0);
        }
        // Nearly always so for a tap: nothing left for the hash, no key to build.
        if s.nonzero().next().is_none() {
            continue;
        }
        link_stats_key_into(&mut key, code.as_bytes());
        hincr(&key, &s, &mut command);
    }
    click_array_updates(&mut arrays, &mut command);
    for (id, s) in &delta.campaigns {
        hincr(campaign_stats_key(id).as_bytes(), s, &mut command);
    }
    for ((campaign, owner), s) in &delta.owners {
        for by in [RankBy::Leads, RankBy::Conversions, RankBy::Revenue] {
            let v = s.get(by.as_str());
            if v != 0 {
                let key = leaderboard_key(campaign, by);
                command(&[b"ZINCRBY", key.as_bytes(), v.to_string().as_bytes(), owner.as_bytes()]);
            }
        }
    }
}

/// One `BITFIELD … INCRBY` per counter array for `(seq, human, bot)` click increments.
fn click_array_updates(clicks: &mut Vec<(u64, i64, i64)>, command: &mut dyn FnMut(&[&[u8]])) {
    group_by_array(clicks);
    for run in clicks.chunk_by(|a, b| click_slot(a.0).0 == click_slot(b.0).0) {
        // The slots and numbers of the whole command in one buffer, sliced into arguments after;
        // sized for the run up front (a tap's `#slot` and count take about 8 bytes), so it rarely
        // grows by copying.
        let (mut text, mut ends) = (Vec::with_capacity(run.len() * 16), Vec::with_capacity(run.len() * 2));
        for &(seq, human, bot) in run {
            let slot = click_slot(seq).1;
            for (at, n) in [(slot, human), (slot + 1, bot)] {
                if n != 0 {
                    text.push(b'#');
                    crate::resp::push_decimal(&mut text, at);
                    ends.push(text.len());
                    crate::resp::push_signed(&mut text, n);
                    ends.push(text.len());
                }
            }
        }
        if ends.is_empty() {
            continue;
        }
        let key = clicks_key(click_slot(run[0].0).0);
        let mut args: Vec<&[u8]> = Vec::with_capacity(2 + ends.len() * 2);
        args.extend([b"BITFIELD".as_slice(), key.as_bytes()]);
        let mut start = 0;
        for pair in ends.chunks(2) {
            args.extend([
                b"INCRBY".as_slice(),
                b"i64",
                &text[start..pair[0]],
                &text[pair[0]..pair[1]],
            ]);
            start = pair[1];
        }
        command(&args);
    }
}

/// Reorders `clicks` so that the taps of each counter array are adjacent, in one counting pass
/// (increments of distinct slots commute, so no order is needed within an array). Sorting a
/// 4,096-tap batch by sequence number took about 500 instructions per tap under callgrind.
fn group_by_array(clicks: &mut Vec<(u64, i64, i64)>) {
    let array = |c: &(u64, i64, i64)| click_slot(c.0).0;
    let Some(first) = clicks.first().map(array) else { return };
    let (lo, hi) = clicks
        .iter()
        .map(array)
        .fold((first, first), |(lo, hi), a| (lo.min(a), hi.max(a)));
    if lo == hi {
        return;
    }
    let span = (hi - lo) as usize + 1;
    if span > 4 * clicks.len() {
        // Arrays far apart (a few very old and very new links): sorting is cheaper than counting.
        clicks.sort_unstable_by_key(array);
        return;
    }
    let mut next = vec![0usize; span];
    for c in clicks.iter() {
        next[(array(c) - lo) as usize] += 1;
    }
    let mut at = 0;
    for n in next.iter_mut() {
        (*n, at) = (at, at + *n);
    }
    let mut grouped = vec![(0, 0, 0); clicks.len()];
    for c in clicks.iter() {
        let slot = &mut next[(array(c) - lo) as usize];
        grouped[*slot] = *c;
        *slot += 1;
    }
    *clicks = grouped;
}

fn stats_from(map: std::collections::HashMap<String, i64>) -> Stats {
    let mut s = Stats::default();
    for (k, v) in map {
        s.set(&k, v);
    }
    s.derive()
}

impl RedisStore {
    /// Connects; fails when Redis does not answer within a few seconds.
    /// Opens a client for `url` and tries to connect. An unreachable Redis is not an error here:
    /// every call retries the connection until it succeeds (`/readyz` answers 503 meanwhile).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let store = Self {
            client: Client::open(url)?,
            conn: tokio::sync::OnceCell::new(),
        };
        if let Err(e) = store.conn().await {
            tracing::warn!(error = %e, "Redis is not reachable yet; serving cached links only until it is");
        }
        Ok(store)
    }

    /// The shared connection (a cheap handle clone), connecting on first use.
    async fn conn(&self) -> Result<ConnectionManager, StoreError> {
        let conn = self
            .conn
            .get_or_try_init(|| async {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(Duration::from_secs(5)))
                    .set_number_of_retries(2);
                self.client.get_connection_manager_with_config(config).await
            })
            .await?;
        Ok(conn.clone())
    }

    /// The JSON record at `key` (`what` names it in a corruption error).
    async fn get_json<T: serde::de::DeserializeOwned>(&self, key: String, what: &str) -> Result<Option<T>, StoreError> {
        let bytes: Option<Vec<u8>> = self.conn().await?.get(key).await?;
        bytes.map(|b| decode(what, &b)).transpose()
    }

    async fn set_json<T: serde::Serialize + Sync>(&self, key: String, value: &T) -> Result<(), StoreError> {
        let _: () = self.conn().await?.set(key, encode(value)).await?;
        Ok(())
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
            let replies: Vec<Value> = p.query_async(&mut self.conn().await?).await?;
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
        let _: String = redis::cmd("PING").query_async(&mut self.conn().await?).await?;
        Ok(())
    }

    async fn get_link(&self, code: &str) -> Result<Option<Link>, StoreError> {
        self.get_json(link_key(code), code).await
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
        let paired: Vec<usize> = (0..n).filter(|&i| links[i].recipient_key().is_some()).collect();
        self.resolve_existing(&links, &paired, &mut out).await?;

        // 3. Write the new links (SET NX); a generated code that collides is drawn again.
        let mut todo: Vec<usize> = (0..n).filter(|&i| out[i].is_none()).collect();
        let mut links = links;
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
        let mut by_index: std::collections::HashMap<String, (redis::Cmd, usize)> = std::collections::HashMap::new();
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
        let mut per_campaign: std::collections::HashMap<&str, i64> = std::collections::HashMap::new();
        for &i in written.iter().filter(|i| !lost.contains(i)) {
            if let Some(c) = links[i].campaign_id.as_deref() {
                *per_campaign.entry(c).or_default() += 1;
            }
        }
        for (c, n) in per_campaign {
            cmds.push(
                redis::cmd("HINCRBY")
                    .arg(campaign_stats_key(c))
                    .arg("links")
                    .arg(n)
                    .clone(),
            );
        }
        self.run_chunked(cmds).await?;
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
        // XX: a concurrent DELETE wins over this PATCH instead of being resurrected by it.
        let set: Option<String> = redis::cmd("SET")
            .arg(link_key(code))
            .arg(encode_link(&link))
            .arg("XX")
            .query_async(&mut self.conn().await?)
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
        p.query_async::<()>(&mut self.conn().await?).await?;
        if let Some((c, r)) = link.recipient_key() {
            let key = rcpt_key(c, r);
            let owner: Option<String> = self.conn().await?.get(&key).await?;
            if owner.as_deref() == Some(code) {
                let _: () = self.conn().await?.del(&key).await?;
            }
        }
        Ok(true)
    }

    async fn list_links(&self, filter: &LinkFilter, after: u64, limit: usize) -> Result<Page, StoreError> {
        let key = index_key(&index_for(filter));
        let rows: Vec<(String, u64)> = redis::cmd("ZRANGEBYSCORE")
            .arg(&key)
            .arg(format!("({after}"))
            .arg("+inf")
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut self.conn().await?)
            .await?;
        let codes: Vec<String> = rows.iter().map(|(c, _)| c.clone()).collect();
        let links: Vec<Link> = self.get_links(&codes).await?.into_iter().flatten().collect();
        let next_cursor = if rows.len() == limit {
            rows.last().map(|r| r.1)
        } else {
            None
        };
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
        let _: i64 = self.conn().await?.publish(INVALIDATE_CHANNEL, code).await?;
        Ok(())
    }

    async fn claim_leads(&self, mut leads: Vec<Lead>) -> Result<Vec<LeadClaim>, StoreError> {
        if leads.is_empty() {
            return Ok(Vec::new());
        }
        // The lead record is written before its claim, so whoever loses a claim can always read
        // the winner's record.
        let last: u64 = self.conn().await?.incr("lg:leadseq", leads.len() as u64).await?;
        let first = last + 1 - leads.len() as u64;
        for (i, l) in leads.iter_mut().enumerate() {
            l.seq = first + i as u64;
        }
        let cmds = leads
            .iter()
            .map(|l| redis::cmd("SET").arg(lead_key(&l.lead_id)).arg(encode(l)).clone())
            .collect();
        self.run_chunked(cmds).await?;
        let cmds = leads
            .iter()
            .map(|l| {
                redis::cmd("SET")
                    .arg(lead_claim_key(&l.claim_key()))
                    .arg(&l.lead_id)
                    .arg("NX")
                    .clone()
            })
            .collect();
        let won: Vec<bool> = self.run_chunked(cmds).await?.iter().map(is_ok).collect();
        let mut out = Vec::with_capacity(leads.len());
        let mut index_cmds = Vec::new();
        for (l, won) in leads.into_iter().zip(won) {
            if won {
                for name in index_names(l.campaign_id.as_deref(), l.owner_id.as_deref()) {
                    index_cmds.push(
                        redis::cmd("ZADD")
                            .arg(named_index_key("lidx", &name))
                            .arg(l.seq)
                            .arg(&l.lead_id)
                            .clone(),
                    );
                }
                out.push(LeadClaim::Won(l));
            } else {
                let _: () = self.conn().await?.del(lead_key(&l.lead_id)).await?;
                let holder: Option<String> = self.conn().await?.get(lead_claim_key(&l.claim_key())).await?;
                let existing = match holder {
                    Some(id) => self.get_lead(&id).await?,
                    None => None,
                };
                out.push(LeadClaim::Existing(existing.unwrap_or(l)));
            }
        }
        self.run_chunked(index_cmds).await?;
        Ok(out)
    }

    async fn get_lead(&self, lead_id: &str) -> Result<Option<Lead>, StoreError> {
        self.get_json(lead_key(lead_id), lead_id).await
    }

    async fn list_leads(&self, filter: &LinkFilter, after: u64, limit: usize) -> Result<LeadPage, StoreError> {
        let key = named_index_key("lidx", &index_for(filter));
        let rows: Vec<(String, u64)> = redis::cmd("ZRANGEBYSCORE")
            .arg(&key)
            .arg(format!("({after}"))
            .arg("+inf")
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut self.conn().await?)
            .await?;
        let cmds = rows
            .iter()
            .map(|(id, _)| redis::cmd("GET").arg(lead_key(id)).clone())
            .collect();
        let mut leads = Vec::with_capacity(rows.len());
        for ((id, _), v) in rows.iter().zip(self.run_chunked(cmds).await?) {
            if let Some(b) = bytes_of(v) {
                leads.push(decode(id, &b)?);
            }
        }
        let next_cursor = if rows.len() == limit {
            rows.last().map(|r| r.1)
        } else {
            None
        };
        Ok(LeadPage { leads, next_cursor })
    }

    async fn put_partner(&self, partner: &Partner) -> Result<(), StoreError> {
        self.set_json(format!("lg:partner:{{{}}}", partner.id), partner).await
    }

    async fn get_partner(&self, id: &str) -> Result<Option<Partner>, StoreError> {
        self.get_json(format!("lg:partner:{{{id}}}"), id).await
    }

    async fn put_campaign(&self, campaign: &Campaign) -> Result<(), StoreError> {
        self.set_json(format!("lg:campaign:{{{}}}", campaign.id), campaign)
            .await
    }

    async fn get_campaign(&self, id: &str) -> Result<Option<Campaign>, StoreError> {
        self.get_json(format!("lg:campaign:{{{id}}}"), id).await
    }

    async fn claim_conversion(&self, conversion: &Conversion) -> Result<Option<Conversion>, StoreError> {
        let key = format!("lg:order:{{{}}}", conversion.order_id);
        let set: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(encode(conversion))
            .arg("NX")
            .query_async(&mut self.conn().await?)
            .await?;
        if set.is_some() {
            return Ok(None);
        }
        let bytes: Option<Vec<u8>> = self.conn().await?.get(&key).await?;
        bytes.map(|b| decode(&conversion.order_id, &b)).transpose()
    }

    async fn apply_counters(&self, delta: &CounterDelta) -> Result<(), StoreError> {
        let mut cmds = Vec::new();
        counter_updates(delta, |args| {
            let mut c = redis::Cmd::new();
            for a in args {
                c.arg(*a);
            }
            cmds.push(c);
        });
        self.run_chunked(cmds).await?;
        Ok(())
    }

    /// One round trip: the link's hash and, when it has a sequence number, its two slots in its
    /// counter array (live clicks), which are added to any clicks counted in the hash.
    async fn link_stats(&self, link: &Link) -> Result<Stats, StoreError> {
        let mut p = redis::pipe();
        p.hgetall(link_stats_key(&link.code));
        if link.seq == 0 {
            let (hash,): (std::collections::HashMap<String, i64>,) = p.query_async(&mut self.conn().await?).await?;
            return Ok(stats_from(hash));
        }
        let (array, slot) = click_slot(link.seq);
        p.cmd("BITFIELD")
            .arg(clicks_key(array))
            .arg(&["GET", "i64"])
            .arg(format!("#{slot}"))
            .arg(&["GET", "i64"])
            .arg(format!("#{}", slot + 1));
        let (hash, (human, bot)): (std::collections::HashMap<String, i64>, (i64, i64)) =
            p.query_async(&mut self.conn().await?).await?;
        let mut stats = stats_from(hash);
        stats.human_clicks += human;
        stats.bot_clicks += bot;
        Ok(stats.derive())
    }

    async fn campaign_stats(&self, campaign_id: &str) -> Result<Stats, StoreError> {
        Ok(stats_from(
            self.conn().await?.hgetall(campaign_stats_key(campaign_id)).await?,
        ))
    }

    async fn leaderboard(
        &self,
        campaign_id: &str,
        by: RankBy,
        limit: usize,
    ) -> Result<Vec<(String, Stats)>, StoreError> {
        let top: Vec<(String, f64)> = redis::cmd("ZREVRANGE")
            .arg(leaderboard_key(campaign_id, by))
            .arg(0)
            .arg(limit.saturating_sub(1))
            .arg("WITHSCORES")
            .query_async(&mut self.conn().await?)
            .await?;
        let mut cmds = Vec::new();
        for (owner, _) in &top {
            for b in [RankBy::Leads, RankBy::Conversions, RankBy::Revenue] {
                cmds.push(
                    redis::cmd("ZSCORE")
                        .arg(leaderboard_key(campaign_id, b))
                        .arg(owner)
                        .clone(),
                );
            }
        }
        let scores = self.run_chunked(cmds).await?;
        let score = |v: &Value| -> i64 {
            match v {
                Value::BulkString(b) => std::str::from_utf8(b)
                    .ok()
                    .and_then(|s| s.parse::<f64>().ok())
                    .unwrap_or(0.0) as i64,
                Value::Double(d) => *d as i64,
                Value::Int(i) => *i,
                _ => 0,
            }
        };
        Ok(top
            .into_iter()
            .zip(scores.chunks(3))
            .map(|((owner, _), s)| {
                (
                    owner,
                    Stats {
                        leads: score(&s[0]),
                        conversions: score(&s[1]),
                        revenue: score(&s[2]),
                        ..Stats::default()
                    },
                )
            })
            .collect())
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
        for (i, link) in found_idx.into_iter().zip(self.get_links(&found_codes).await?) {
            if let Some(link) = link {
                out[i] = Some(Minted::Existing(link));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::code::InlineCode;

    #[test]
    fn taps_are_grouped_by_counter_array_and_none_is_lost() {
        let a = CLICK_ARRAY_LINKS;
        // Counted (arrays close together) and sorted (one array far away) groupings.
        for far in [3 * a, 1_000_000 * a] {
            let taps: Vec<(u64, i64, i64)> = [2 * a + 1, 5, far + 9, 2 * a + 4, 7, far, 1, a + 2]
                .iter()
                .enumerate()
                .map(|(i, &seq)| (seq, i as i64, 1))
                .collect();
            let mut grouped = taps.clone();
            group_by_array(&mut grouped);
            let arrays: Vec<u64> = grouped.iter().map(|t| click_slot(t.0).0).collect();
            let mut runs = arrays.clone();
            runs.dedup();
            let mut distinct = runs.clone();
            distinct.sort();
            distinct.dedup();
            assert_eq!(runs.len(), distinct.len(), "each array's taps are adjacent: {arrays:?}");
            let (mut before, mut after) = (taps, grouped);
            before.sort();
            after.sort();
            assert_eq!(before, after, "the same taps, only reordered");
        }
    }

    #[test]
    fn clicks_of_numbered_links_go_to_their_counter_arrays() {
        let click = |human: bool| Stats {
            clicks: 1,
            human_clicks: human as i64,
            bot_clicks: !human as i64,
            ..Stats::default()
        };
        let mut d = CounterDelta::default();
        let code = InlineCode::new;
        d.add_seq(Some((&code("a"), 5)), None, None, click(true));
        d.add_seq(Some((&code("a"), 5)), None, None, click(true));
        d.add_seq(Some((&code("b"), CLICK_ARRAY_LINKS + 3)), None, None, click(false));
        let lead = Stats {
            leads: 1,
            ..click(true)
        };
        d.add_seq(Some((&code("c"), 7)), None, None, lead);
        // A replayed tap carries no sequence number: counted in the link's hash.
        d.add(Some("r"), None, None, click(true));
        let mut cmds = Vec::new();
        counter_updates(&d, |args| {
            let words: Vec<_> = args.iter().map(|a| String::from_utf8_lossy(a).into_owned()).collect();
            // The increments of one array come in no particular order: sorted here to compare.
            let (head, ops) = words.split_at(if words[0] == "BITFIELD" { 2 } else { words.len() });
            let mut ops: Vec<String> = ops.chunks(4).map(|op| op.join(" ")).collect();
            ops.sort();
            cmds.push([head.join(" ")].into_iter().chain(ops).collect::<Vec<_>>().join(" "));
        });
        cmds.sort();
        assert_eq!(
            cmds,
            [
                "BITFIELD lg:clicks:{0} INCRBY i64 #10 2 INCRBY i64 #14 1",
                "BITFIELD lg:clicks:{1} INCRBY i64 #7 1",
                "HINCRBY lg:stats:link:{c} leads 1",
                "HINCRBY lg:stats:link:{r} human_clicks 1",
            ]
        );
    }
}
