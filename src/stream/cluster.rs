//! [`ClusterStreamSink`]: the event sink on a Redis Cluster, through redis-rs's cluster client
//! (slot routing, `MOVED`/`ASK`, topology refresh and failover are the client's).
//!
//! A batch becomes one pipeline per slot, sent concurrently:
//! - per stream shard written, its `XADD`s and one `XTRIM … MAXLEN ~` (a shard key is its own
//!   hash tag, `<stream>:{i}`);
//! - per hash tag among the counter keys (a counter array `{n}`, a campaign `{id}` with its
//!   leaderboards, a link `{code}`), one call of the apply-once script (`APPLY_ONCE`) with that
//!   tag's own applied mark, `lg:applied:{<tag>}:<replica>`: each tag's counters apply once per
//!   batch, atomically, in their slot, whatever happens to the other slots;
//! - with `LINKGATE_REDIS_WAIT_REPLICAS`, each pipeline ends with `WAIT` on its node.
//!
//! When some pipelines fail (a master failing over), the batch is kept and sent again; the
//! pipelines that landed are remembered by batch id and not sent again, so events repeat only
//! where an outcome was truly unknown (counted in `linkgate_events_resent_total`), and a
//! counter tag that landed is skipped by its mark even after a restart.
//!
//! Why not the single-node sink's own encoder here: that one talks to one address and would
//! need a cluster client of its own (slot map, redirections, failover). The single node keeps
//! it because it costs less CPU per event than redis-rs (`loadtest/optimisations.md`).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use redis::Value;
use redis::cluster_async::ClusterConnection;

use super::{Batch, Delivered, EventSink, Refused, SinkError, stream_keys};
use crate::attribution::model::BatchId;
use crate::resp;
use crate::store::redis::{APPLIED_TTL_SECS, APPLY_ONCE, applied_key_of_tag};

/// Slot pipelines of one batch in flight at once.
const FANOUT: usize = 32;
/// How long one pipeline may take, re-sends and redirections included (redis-rs's own
/// per-request timeout does not cover a request waiting for the client to find a slot's new
/// master): then the batch fails, is kept, and the next one starts on a fresh connection.
const PIPELINE_TIMEOUT: Duration = Duration::from_secs(5);

pub struct ClusterStreamSink {
    client: redis::cluster::ClusterClient,
    conn: tokio::sync::Mutex<Option<ClusterConnection>>,
    streams: Vec<String>,
    maxlen: u64,
    wait: (u32, Duration),
    /// The last batch that failed in part, and its pipelines that landed (by [`Part`]).
    landed: Mutex<Option<(BatchId, HashSet<Part>)>>,
}

/// One pipeline of a batch: a stream shard's events, or one hash tag's counters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Part {
    Shard(u32),
    Counters(Vec<u8>),
}

/// A command as its arguments.
type Command = Vec<Vec<u8>>;

/// One pipeline of a batch: the events it writes (a shard's), or the counter commands it
/// applies (to name a refused one).
struct SlotPipeline {
    part: Part,
    pipe: redis::Pipeline,
    events: u64,
    commands: Vec<Command>,
}

/// The hash tag of a key (between the first `{` and the next `}`), or the whole key.
fn hash_tag(key: &[u8]) -> &[u8] {
    let Some(open) = key.iter().position(|&b| b == b'{') else {
        return key;
    };
    match key[open + 1..].iter().position(|&b| b == b'}') {
        Some(len) if len > 0 => &key[open + 1..open + 1 + len],
        _ => key,
    }
}

impl ClusterStreamSink {
    /// A sink spreading events over `shards` stream keys ([`stream_keys`]) on the cluster whose
    /// seed nodes are `nodes`; it connects on its first batch.
    pub fn new(
        nodes: &[String],
        tls: &crate::tls::RedisTls,
        stream: &str,
        shards: u32,
        maxlen: u64,
    ) -> redis::RedisResult<Self> {
        let client = tls.cluster_client(nodes, |b| {
            b.connection_timeout(Duration::from_secs(2))
                .response_timeout(PIPELINE_TIMEOUT)
                .overall_response_timeout(Some(PIPELINE_TIMEOUT))
                .retries(4)
        })?;
        Ok(Self {
            client,
            conn: tokio::sync::Mutex::new(None),
            streams: stream_keys(stream, shards),
            maxlen,
            wait: (0, Duration::ZERO),
            landed: Mutex::new(None),
        })
    }

    /// Each pipeline ends with `WAIT replicas timeout` on its node: one that too few replicas
    /// confirmed fails the batch, which is kept and sent again.
    pub fn with_wait(mut self, replicas: u32, timeout: Duration) -> Self {
        self.wait = (replicas, timeout);
        self
    }

    async fn conn(&self) -> Result<ClusterConnection, SinkError> {
        let mut conn = self.conn.lock().await;
        if let Some(c) = &*conn {
            return Ok(c.clone());
        }
        let c = self.client.get_async_connection().await.map_err(SinkError::Cluster)?;
        Ok(conn.insert(c).clone())
    }

    /// The batch's pipelines, each with what it is and, for counters, its commands (to name a
    /// refused one).
    fn pipelines(&self, batch: &Batch) -> Vec<SlotPipeline> {
        let mut out = Vec::new();
        let mut shards: Vec<Option<(redis::Pipeline, u64)>> = vec![None; self.streams.len()];
        for (t, json, shard) in batch.iter_sharded(self.streams.len() as u32) {
            let (p, events) = shards[shard as usize].get_or_insert_with(|| {
                let mut p = redis::pipe();
                p.ignore_errors();
                (p, 0)
            });
            *events += 1;
            p.cmd("XADD")
                .arg(&self.streams[shard as usize])
                .arg("*")
                .arg("type")
                .arg(t.as_str())
                .arg("json")
                .arg(json);
        }
        for (shard, p) in shards.into_iter().enumerate() {
            if let Some((mut p, events)) = p {
                p.cmd("XTRIM")
                    .arg(&self.streams[shard])
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(self.maxlen);
                out.push(SlotPipeline {
                    part: Part::Shard(shard as u32),
                    pipe: p,
                    events,
                    commands: Vec::new(),
                });
            }
        }
        let mut tags: Vec<(Vec<u8>, Vec<Command>)> = Vec::new();
        let mut at: HashMap<Vec<u8>, usize> = HashMap::new();
        batch.redis_updates(|args| {
            let tag = hash_tag(args.get(1).copied().unwrap_or_default()).to_vec();
            let i = *at.entry(tag.clone()).or_insert_with(|| {
                tags.push((tag, Vec::new()));
                tags.len() - 1
            });
            tags[i].1.push(args.iter().map(|a| a.to_vec()).collect());
        });
        for (tag, commands) in tags {
            let mut eval = redis::cmd("EVAL");
            eval.arg(APPLY_ONCE)
                .arg(1)
                .arg(applied_key_of_tag(&tag, &batch.id.replica))
                .arg(batch.id.seq)
                .arg(commands.len());
            for c in &commands {
                eval.arg(c.len()).arg(c);
            }
            eval.arg(APPLIED_TTL_SECS);
            let mut p = redis::pipe();
            p.ignore_errors();
            p.add_command(eval);
            out.push(SlotPipeline {
                part: Part::Counters(tag),
                pipe: p,
                events: 0,
                commands,
            });
        }
        if self.wait.0 > 0 {
            let ms = (self.wait.1.as_millis() as u64).max(1);
            for p in &mut out {
                p.pipe.cmd("WAIT").arg(self.wait.0).arg(ms);
            }
        }
        out
    }

    /// What one pipeline's replies say: its refused commands, whether its counters had landed
    /// before, or an error when it must be sent again.
    fn read(
        &self,
        part: &Part,
        replies: Vec<Value>,
        commands: &[Command],
        out: &mut Delivered,
    ) -> Result<bool, SinkError> {
        let mut replies = replies.into_iter();
        let mut already = false;
        let wanted = self.wait.0;
        let body = replies.len() - usize::from(wanted > 0);
        for (i, v) in replies.by_ref().take(body).enumerate() {
            let refused = |error: String| -> Result<Option<Refused>, SinkError> {
                if resp::is_transient_reply(&error) {
                    return Err(SinkError::Redis(resp::RespError::Reply(error)));
                }
                let command = match part {
                    Part::Shard(s) if i < body - 1 => vec!["XADD".into(), self.streams[*s as usize].clone()],
                    Part::Shard(s) => vec!["XTRIM".into(), self.streams[*s as usize].clone()],
                    Part::Counters(_) => vec!["EVAL".into(), "APPLY_ONCE".into()],
                };
                Ok(Some(Refused { command, error }))
            };
            match (part, v) {
                (_, Value::ServerError(e)) => {
                    let error = format!("{} {}", e.code(), e.details().unwrap_or_default());
                    out.refused.extend(refused(error)?);
                }
                (Part::Counters(_), Value::Array(items)) => match items.as_slice() {
                    [Value::Int(0)] => already = true,
                    [Value::Int(1), Value::Array(refused)] => {
                        for pair in refused.chunks(2) {
                            let [Value::Int(at), error] = pair else {
                                return Err(SinkError::Redis(resp::RespError::Protocol));
                            };
                            let error = match error {
                                Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                                Value::SimpleString(s) => s.clone(),
                                other => format!("{other:?}"),
                            };
                            let command = usize::try_from(*at - 1)
                                .ok()
                                .and_then(|i| commands.get(i))
                                .map(|c| c.iter().map(|a| String::from_utf8_lossy(a).into_owned()).collect())
                                .unwrap_or_default();
                            out.refused.push(Refused { command, error });
                        }
                    }
                    _ => return Err(SinkError::Redis(resp::RespError::Protocol)),
                },
                _ => {}
            }
        }
        if wanted > 0 {
            match replies.next() {
                Some(Value::Int(acked)) if acked >= i64::from(wanted) => {}
                Some(Value::Int(acked)) => {
                    return Err(SinkError::Redis(resp::RespError::NotReplicated { acked, wanted }));
                }
                _ => return Err(SinkError::Redis(resp::RespError::Protocol)),
            }
        }
        Ok(already)
    }
}

#[async_trait]
impl EventSink for ClusterStreamSink {
    async fn deliver(&self, batch: &Batch) -> Result<Delivered, SinkError> {
        let conn = self.conn().await?;
        let done: HashSet<Part> = match &*self.landed.lock().unwrap_or_else(|e| e.into_inner()) {
            Some((id, parts)) if *id == batch.id => parts.clone(),
            _ => HashSet::new(),
        };
        let todo: Vec<_> = self
            .pipelines(batch)
            .into_iter()
            .filter(|p| !done.contains(&p.part))
            .collect();
        let mut sent = futures_util::stream::iter(todo)
            .map(|p| {
                let mut conn = conn.clone();
                async move {
                    let replies: redis::RedisResult<Vec<Value>> = p.pipe.query_async(&mut conn).await;
                    (p.part, replies, p.events, p.commands)
                }
            })
            .buffer_unordered(FANOUT);
        let mut out = Delivered::default();
        let (mut landed, mut failed, mut counters, mut counters_already) = (done, None, 0, 0);
        let mut resent = 0u64;
        while let Some((part, replies, events, commands)) = sent.next().await {
            let read = replies
                .map_err(SinkError::Cluster)
                .and_then(|r| self.read(&part, r, &commands, &mut out));
            match read {
                Ok(already) => {
                    if let Part::Counters(_) = part {
                        counters += 1;
                        counters_already += usize::from(already);
                    } else if batch.resent {
                        resent += events;
                    }
                    landed.insert(part);
                }
                Err(e) => failed = Some(e),
            }
        }
        drop(sent);
        if let Some(e) = failed {
            *self.landed.lock().unwrap_or_else(|e| e.into_inner()) = Some((batch.id.clone(), landed));
            *self.conn.lock().await = None;
            return Err(e);
        }
        *self.landed.lock().unwrap_or_else(|e| e.into_inner()) = None;
        out.already = batch.resent && resent == 0 && counters == counters_already;
        out.resent_events = Some(resent);
        Ok(out)
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_group_by_the_hash_tag_of_their_key() {
        assert_eq!(hash_tag(b"lg:counts:{12}"), b"12");
        assert_eq!(hash_tag(b"lg:lb:{spring}:leads"), b"spring");
        assert_eq!(hash_tag(b"lg:x:{}"), b"lg:x:{}", "an empty tag hashes the whole key");
        assert_eq!(
            applied_key_of_tag(b"spring", "r:1"),
            b"lg:applied:{spring}:r%3A1".to_vec(),
            "in the tag's slot, the replica escaped"
        );
    }
}
