//! `RedisStore`: links in Redis, shared by every replica.
//!
//! Key layout (prefix `lg:`; the part in braces is the Cluster hash tag):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `lg:link:{<code>}` | string | the link in its compact JSON form (`store::encode_link`), or only its own fields and its template's id ([`templates`]), or `-` once deleted (the code is retired); created with `SET NX`, the atomic claim of a code |
//! | `lg:tpl:{<id>}` | string | what links minted together share, stored once, named by its content's hash ([`templates`]); never changes |
//! | `lg:rcpt:{<campaign>}` | hash | recipient id → the code of that recipient's link (`HSETNX` claim) |
//! | `lg:seq` | string | link sequence counter (`INCRBY`, once per mint call): a link's slot in the counter arrays |
//! | `lg:links:all`, `lg:links:c:{<campaign>}`, `lg:links:o:{<owner>}`, `lg:links:co:{<campaign>}:<owner>` | list | codes in minting order (`RPUSH`; deleted ones stay and are skipped); the paging cursor is a position |
//! | `lg:idem:<sha256>` | string | a stored `Idempotency-Key` answer, `EX` 24 h |
//! | `lg:lead:{<lead_id>}` | string | a lead as JSON |
//! | `lg:leadclaim:{link:<code>}`, `lg:leadclaim:{click:<click_id>}` | string | the lead holding that claim (`SET NX`) |
//! | `lg:leads:all`, `lg:leads:c:{<campaign>}`, `lg:leads:o:{<owner>}`, `lg:leads:co:{<campaign>}:<owner>` | list | lead ids in the order they were opened (`RPUSH`); the paging cursor is a position |
//! | `lg:partner:{<id>}`, `lg:campaign:{<id>}` | string | partner and campaign JSON |
//! | `lg:order:{<order_id>}` | string | the first answer for an order (`SET NX`: the conversion's idempotency) |
//! | `lg:stats:link:{<code>}`, `lg:stats:camp:{<campaign>}` | hash | counters: `links`, `human_clicks`, `bot_clicks`, `leads`, `conversions`, `revenue` (`clicks` is their sum) |
//! | `lg:counts:{<n>}` | string | counter array (`BITFIELD`) of links numbered `n × 65,536` up to the next: per link, `i64` human clicks, bot clicks and leads counted by live taps; a link's stats add these to its hash's |
//! | `lg:lb:{<campaign>}:leads` (`:conversions`, `:revenue`) | zset | owners scored for the leaderboards |
//! | `lg:a:{<campaign>}:<name>`, `lg:a:{*}:<name>` | hash, HyperLogLog | analytics buckets ([`crate::analytics`]): hours by UTC day, breakdowns by local day, visitors by hour and day; `EXPIREAT` the bucket's end plus its retention |
//! | `lg:applied:{<replica>}` | string | the highest batch number of that batcher applied (`APPLY_ONCE`), `EX` 7 days |
//! | `lg:applied:{<tag>}:<replica>` | string | on a Redis Cluster, the same per counter hash tag (a counter array's `n`, a campaign, a code): each tag's counters of a batch apply once, in its slot ([`crate::stream::cluster`]) |
//! | `lg:msg:{<code>}`, `lg:msgid:{…}`, `lg:early:{…}`, `lg:msgs:{<campaign>}` | hash, strings, set | SMS messages ([`messages`]) |
//! | `lg:fun:{<campaign>}:…` | sets, sorted sets | the funnel's counts ([`funnel`]) |
//! | `lg:webhooks`, `lg:wh:{<webhook>}:…` | hash, zset, strings, list | webhooks and their delivery queues ([`webhooks`]) |
//! | `lg:cm:{<partner>}:…`, `lg:name:{<name>}`, `lg:refunds:{<conversion>}` | strings, hashes, sets, lists | commission books, names set once, refunds ([`commission`]) |
//! | `LINKGATE_STREAM` (default `linkgate:events`), or `<stream>:{0}` … with `LINKGATE_STREAM_SHARDS` | stream | events, fields `type` and `json`, `MAXLEN ~` capped per key; a code's events on one shard ([`crate::stream_shard`]) |
//!
//! Ids inside keys are escaped ([`esc`]: `%`, `{`, `}`, `:` as `%25`, `%7B`, `%7D`, `%3A`), so
//! distinct ids never share a key and no id closes a hash tag early; ids without those characters
//! read as before. The stream's consumer group `linkgate-webhooks` hands each event to one
//! replica's webhook delivery ([`feed`]). This is a pre-release format change: data minted with ids holding them is not
//! migrated.
//!
//! Pub/sub channel `lg:invalidate` carries codes whose link changed; each replica drops them from
//! its cache (on a Redis Cluster it is a sharded channel, `SPUBLISH`/`SSUBSCRIBE`). API batch
//! writes are pipelined in chunks of [`PIPELINE_CHUNK`] commands, split by slot on a cluster
//! ([`conn`]).

mod attribution;
mod commission;
mod conn;
mod counters;
pub(crate) mod feed;
mod funnel;
mod links;
mod messages;
mod templates;
mod webhooks;

pub(crate) use self::counters::{
    APPLIED_TTL_SECS, APPLY_ONCE, analytics_updates, applied_key, applied_key_of_tag, counter_updates,
};

use std::time::Duration;

use async_trait::async_trait;
use redis::{AsyncCommands, Client, Value};

use self::conn::Conn;
use crate::hash::esc;

use super::{
    AttributionStore, CounterStore, IDEMPOTENCY_TTL_SECS, IndexName, Invalidation, InvalidationHandler, LinkFilter,
    LinkStore, Minted, Page, Store, StoreError, decode_link, encode_link, index_for, index_names,
};
use super::{LeadPage, decode, encode};
use crate::attribution::model::{Campaign, Conversion, CounterDelta, Lead, LeadClaim, Partner, RankBy, Stats};
use crate::link::Link;
use crate::link::code::generate_codes;
use crate::link::input::LinkPatch;

pub(crate) const PIPELINE_CHUNK: usize = 10_000;
/// Most values appended by one `RPUSH`.
pub(crate) const PUSH_MEMBERS: usize = 5_000;
/// What a deleted link's key holds: its code is retired, never handed out again, so a printed QR
/// code of a deleted link can never lead to someone else's destination, and the lists that still
/// name the code (appended once, never rewritten) skip it.
const TOMBSTONE: &[u8] = b"-";
pub(crate) const INVALIDATE_CHANNEL: &str = "lg:invalidate";
/// Links per counter array (`lg:counts:{n}`, 24 bytes per link: 1.5 MiB when full).
pub(crate) const CLICK_ARRAY_LINKS: u64 = 65_536;
/// Counters per link in its array: human clicks, bot clicks, leads (each `i64`).
const COUNTER_SLOTS: u64 = 3;

pub struct RedisStore {
    backend: Backend,
    /// The link templates this replica has read ([`templates`]).
    templates: templates::Templates,
    /// Connected on first use, so linkgate starts (not ready) while Redis is still unreachable.
    conn: tokio::sync::OnceCell<Conn>,
}

/// The client of one server, or of a cluster (with its seed nodes and TLS settings, from which
/// the invalidation subscriber builds a client of its own).
enum Backend {
    Single(Client),
    Cluster {
        client: Box<redis::cluster::ClusterClient>,
        nodes: Vec<String>,
        tls: crate::tls::RedisTls,
    },
}

/// How long the store waits to connect and for a reply (the cluster client also re-sends a
/// command up to [`CLUSTER_RETRIES`] times across `MOVED`, reconnections and failovers, all
/// within the reply's time: redis-rs's per-request timeout alone does not cover a request
/// waiting for the client to find a slot's new master).
const STORE_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const STORE_RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
const STORE_RETRIES: u32 = 2;
/// A cluster command's re-sends: enough to follow a `MOVED` after a failover.
const CLUSTER_RETRIES: u32 = 4;

/// `lg:<kind>:{<id>}`: a record keyed by one id.
/// The set of every campaign id (`SADD` when a campaign is recorded or a link of it minted).
const CAMPAIGN_INDEX: &str = "lg:index:campaigns";
/// The set of every partner id.
const PARTNER_INDEX: &str = "lg:index:partners";

fn record_key(kind: &str, id: &str) -> String {
    format!("lg:{kind}:{{{}}}", esc(id))
}

fn link_key(code: &str) -> String {
    format!("lg:link:{{{code}}}")
}
/// The hash of a campaign's recipients: field the recipient id (as it is: a hash field cannot
/// collide with another), value the code of their link (`HSETNX`, the claim).
fn rcpt_key(campaign: &str) -> String {
    format!("lg:rcpt:{{{}}}", esc(campaign))
}
/// An append-only list of codes in minting order (`RPUSH`): about 10 bytes a link where a sorted
/// set entry took about 104 (`loadtest/redis-memory`); the paging cursor is a position.
fn link_list_key(name: &IndexName) -> String {
    named_index_key("links", name)
}
fn named_index_key(prefix: &str, name: &IndexName) -> String {
    match name {
        IndexName::All => format!("lg:{prefix}:all"),
        IndexName::Campaign(c) => format!("lg:{prefix}:c:{{{}}}", esc(c)),
        IndexName::Owner(o) => format!("lg:{prefix}:o:{{{}}}", esc(o)),
        IndexName::CampaignOwner(c, o) => format!("lg:{prefix}:co:{{{}}}:{}", esc(c), esc(o)),
    }
}
/// An append-only list of lead ids (`RPUSH`): far cheaper for Redis than a sorted set entry per
/// lead, and a lead list is only ever read in the order leads were opened.
fn lead_list_key(name: &IndexName) -> String {
    named_index_key("leads", name)
}
fn lead_key(id: &str) -> String {
    record_key("lead", id)
}
fn lead_claim_key(claim: &str) -> String {
    record_key("leadclaim", claim)
}
fn link_stats_key(code: &str) -> String {
    let mut key = Vec::new();
    link_stats_key_into(&mut key, code.as_bytes());
    String::from_utf8(key).expect("a key built from a str is UTF-8")
}
/// The counter array of link number `seq`, and the link's first `i64` slot in it (`#3i` human
/// clicks, `#3i+1` bot clicks, `#3i+2` leads, in `BITFIELD` terms).
fn counter_slot(seq: u64) -> (u64, u64) {
    (seq / CLICK_ARRAY_LINKS, COUNTER_SLOTS * (seq % CLICK_ARRAY_LINKS))
}
fn counters_key(array: u64) -> String {
    format!("lg:counts:{{{array}}}")
}

/// [`link_stats_key`] into a buffer the batcher reuses (one key per tapped link per batch).
fn link_stats_key_into(out: &mut Vec<u8>, code: &[u8]) {
    out.clear();
    out.extend_from_slice(b"lg:stats:link:{");
    out.extend_from_slice(code);
    out.push(b'}');
}
fn campaign_stats_key(id: &str) -> String {
    format!("lg:stats:camp:{{{}}}", esc(id))
}
fn leaderboard_key(campaign: &str, by: RankBy) -> String {
    format!("lg:lb:{{{}}}:{}", esc(campaign), by.as_str())
}

impl RedisStore {
    /// Opens a client for `url` and tries to connect. An unreachable Redis is not an error here:
    /// every call retries the connection until it succeeds (`/readyz` answers 503 meanwhile).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, &crate::tls::RedisTls::default()).await
    }

    /// [`RedisStore::connect`], trusting `tls`'s authorities when the URL is `rediss://`.
    pub async fn connect_with(url: &str, tls: &crate::tls::RedisTls) -> Result<Self, StoreError> {
        let backend = match crate::tls::RedisTarget::parse(url).map_err(StoreError::Config)? {
            crate::tls::RedisTarget::Single(url) => Backend::Single(tls.redis_client(&url)?),
            crate::tls::RedisTarget::Cluster(nodes) => Backend::Cluster {
                client: Box::new(tls.cluster_client(&nodes, |b| {
                    b.connection_timeout(STORE_CONNECT_TIMEOUT)
                        .response_timeout(STORE_RESPONSE_TIMEOUT)
                        .overall_response_timeout(Some(STORE_RESPONSE_TIMEOUT))
                        .retries(CLUSTER_RETRIES)
                })?),
                nodes,
                tls: tls.clone(),
            },
        };
        let store = Self {
            backend,
            templates: templates::Templates::default(),
            conn: tokio::sync::OnceCell::new(),
        };
        if let Err(e) = store.conn().await {
            tracing::warn!(error = %e, "Redis is not reachable yet; serving cached links only until it is");
        }
        Ok(store)
    }

    /// The shared connection (a cheap handle clone), connecting on first use.
    async fn conn(&self) -> Result<Conn, StoreError> {
        let conn = self
            .conn
            .get_or_try_init(|| async {
                match &self.backend {
                    Backend::Single(client) => {
                        let config = redis::aio::ConnectionManagerConfig::new()
                            .set_connection_timeout(Some(STORE_CONNECT_TIMEOUT))
                            .set_response_timeout(Some(STORE_RESPONSE_TIMEOUT))
                            .set_number_of_retries(STORE_RETRIES as usize);
                        client
                            .get_connection_manager_with_config(config)
                            .await
                            .map(Conn::Single)
                    }
                    Backend::Cluster { client, .. } => client.get_async_connection().await.map(Conn::Cluster),
                }
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

    /// Entries `after` … `after + limit - 1` of the list at `key` (one page; lists only grow at
    /// their end, so a position never moves).
    async fn list_page(&self, key: &str, after: u64, limit: usize) -> Result<Vec<String>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let start = isize::try_from(after).unwrap_or(isize::MAX);
        let stop = start.saturating_add_unsigned(limit - 1);
        Ok(self.conn().await?.lrange(key, start, stop).await?)
    }

    /// Entries `after` … `after + limit - 1` counted from the end of the list at `key`, newest
    /// first. (Entries appended while a client pages move the rest along: a later page may
    /// repeat a row, never skip one.)
    async fn list_page_from_end(&self, key: &str, after: u64, limit: usize) -> Result<Vec<String>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let stop = -1 - isize::try_from(after).unwrap_or(isize::MAX - 1);
        let start = stop.saturating_sub_unsigned(limit - 1);
        let mut ids: Vec<String> = self.conn().await?.lrange(key, start, stop).await?;
        ids.reverse();
        Ok(ids)
    }

    /// Whether the store is a Redis Cluster (a script's keys must then share a slot).
    fn is_cluster(&self) -> bool {
        matches!(self.backend, Backend::Cluster { .. })
    }

    /// Runs `cmds` in pipelines of at most [`PIPELINE_CHUNK`] commands (split by slot on a
    /// cluster), returning every reply in order.
    async fn run_chunked(&self, cmds: Vec<redis::Cmd>) -> Result<Vec<Value>, StoreError> {
        Ok(self.conn().await?.run(cmds).await?)
    }

    async fn get_links(&self, codes: &[String]) -> Result<Vec<Option<Link>>, StoreError> {
        let cmds = codes
            .iter()
            .map(|c| redis::cmd("GET").arg(link_key(c)).clone())
            .collect();
        let replies = self.run_chunked(cmds).await?;
        let records: Vec<Option<Vec<u8>>> = replies.into_iter().map(bytes_of).collect();
        self.stored_links(codes.iter().map(String::as_str).zip(records)).await
    }

    /// The links stored under these codes (`None`: none, or deleted), reading the templates they
    /// refer to that this replica has not read yet in one more round trip.
    async fn stored_links<'a>(
        &self,
        records: impl IntoIterator<Item = (&'a str, Option<Vec<u8>>)>,
    ) -> Result<Vec<Option<Link>>, StoreError> {
        let records: Vec<(&str, Option<Vec<u8>>)> = records
            .into_iter()
            .map(|(code, b)| (code, b.filter(|b| b != TOMBSTONE)))
            .collect();
        let missing = self.templates.missing(records.iter().filter_map(|(_, b)| b.as_deref()));
        let mut fetched = std::collections::HashMap::new();
        if !missing.is_empty() {
            let cmds = missing
                .iter()
                .map(|id| redis::cmd("GET").arg(templates::template_key(id)).clone())
                .collect();
            for (id, v) in missing.into_iter().zip(self.run_chunked(cmds).await?) {
                if let Some(t) = self.templates.learn(&id, bytes_of(v).as_deref())? {
                    fetched.insert(id, t);
                }
            }
        }
        records
            .into_iter()
            .map(|(code, b)| b.map(|b| self.templates.link(code, &b, &fetched)).transpose())
            .collect()
    }

    /// The link stored under `code` as `bytes` (`None`: none, or deleted).
    async fn stored_link(&self, code: &str, bytes: Option<Vec<u8>>) -> Result<Option<Link>, StoreError> {
        Ok(self.stored_links([(code, bytes)]).await?.pop().flatten())
    }
}

/// `RPUSH` commands appending each value to its list: one per list and chunk of [`PUSH_MEMBERS`]
/// values, each list's values in the order given.
fn list_appends<'a>(appends: impl IntoIterator<Item = (String, &'a str)>) -> Vec<redis::Cmd> {
    let mut lists: Vec<(String, redis::Cmd, usize)> = Vec::new();
    let mut at: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut out = Vec::new();
    for (key, value) in appends {
        let i = *at.entry(key).or_insert_with_key(|key| {
            lists.push((key.clone(), redis::cmd("RPUSH").arg(key).clone(), 0));
            lists.len() - 1
        });
        let (key, cmd, n) = &mut lists[i];
        cmd.arg(value);
        *n += 1;
        if *n == PUSH_MEMBERS {
            out.push(std::mem::replace(cmd, redis::cmd("RPUSH").arg(&*key).clone()));
            *n = 0;
        }
    }
    out.extend(lists.into_iter().filter(|(_, _, n)| *n > 0).map(|(_, cmd, _)| cmd));
    out
}

/// A reply read as `T`.
fn parse<T: redis::FromRedisValue>(v: Value) -> Result<T, StoreError> {
    Ok(redis::from_redis_value(v).map_err(redis::RedisError::from)?)
}

fn bytes_of(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        _ => None,
    }
}

/// A reply's text: [`bytes_of`], when it is UTF-8.
fn text_of(v: Value) -> Option<String> {
    bytes_of(v).and_then(|b| String::from_utf8(b).ok())
}

#[async_trait]
impl Store for RedisStore {
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(self.conn().await?.ping().await?)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn ids_that_used_to_collide_get_distinct_keys() {
        // A recipient is a field of its campaign's hash: the pair is (key, field).
        assert_ne!((rcpt_key("a}:x"), "y"), (rcpt_key("a"), "x}:y"));
        assert_ne!(rcpt_key("a}"), rcpt_key("a%7D"));
        let co = |c: &str, o: &str| link_list_key(&IndexName::CampaignOwner(c.into(), o.into()));
        assert_ne!(co("a}:x", "y"), co("a", "x}:y"));
        assert_eq!(rcpt_key("spring"), "lg:rcpt:{spring}", "plain ids read as written");
    }

    #[test]
    fn list_appends_are_one_rpush_per_list_and_chunk_in_order() {
        let words = |c: &redis::Cmd| -> Vec<String> {
            c.args_iter()
                .map(|a| match a {
                    redis::Arg::Simple(b) => String::from_utf8_lossy(b).into_owned(),
                    _ => String::new(),
                })
                .collect()
        };
        let values: Vec<String> = (0..PUSH_MEMBERS + 2).map(|i| i.to_string()).collect();
        let mut appends: Vec<(String, &str)> = vec![("b".into(), "b1"), ("a".into(), "a1"), ("b".into(), "b2")];
        appends.extend(values.iter().map(|v| ("c".to_string(), v.as_str())));
        let cmds: Vec<Vec<String>> = list_appends(appends).iter().map(words).collect();
        assert_eq!(cmds.len(), 4, "a, b, and c in two chunks");
        let c_values: Vec<&String> = cmds.iter().filter(|c| c[1] == "c").flat_map(|c| &c[2..]).collect();
        assert_eq!(
            c_values,
            values.iter().collect::<Vec<_>>(),
            "every value once, in order"
        );
        assert!(cmds.iter().all(|c| c[0] == "RPUSH" && c.len() <= 2 + PUSH_MEMBERS));
        assert!(cmds.contains(&vec!["RPUSH".into(), "b".into(), "b1".into(), "b2".into()]));
        assert!(cmds.contains(&vec!["RPUSH".into(), "a".into(), "a1".into()]));
    }

    /// The hash tag Redis Cluster hashes: the text between the first `{` and the next `}`.
    fn hash_tag(key: &str) -> &str {
        let open = key.find('{').unwrap();
        let close = key[open + 1..].find('}').unwrap() + open + 1;
        &key[open + 1..close]
    }

    proptest! {
        #[test]
        fn distinct_pairs_give_distinct_keys(a in "\\PC{0,8}", b in "\\PC{0,8}", c in "\\PC{0,8}", d in "\\PC{0,8}") {
            prop_assume!((&a, &b) != (&c, &d));
            if a != c {
                prop_assert_ne!(rcpt_key(&a), rcpt_key(&c));
            }
            let co = |c: &str, o: &str| link_list_key(&IndexName::CampaignOwner(c.into(), o.into()));
            prop_assert_ne!(co(&a, &b), co(&c, &d));
        }

        #[test]
        fn the_hash_tag_is_the_whole_first_id(campaign in "\\PC{0,12}", owner in "\\PC{0,12}") {
            // Every key of one campaign lands in one slot, whatever the ids hold.
            let tag = hash_tag(&rcpt_key(&campaign)).to_string();
            prop_assert_eq!(&tag, &esc(&campaign));
            let stats = campaign_stats_key(&campaign);
            prop_assert_eq!(hash_tag(&stats), tag.as_str());
            let co = link_list_key(&IndexName::CampaignOwner(campaign.clone(), owner));
            prop_assert_eq!(hash_tag(&co), tag.as_str());
        }
    }
}
