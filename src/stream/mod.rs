//! Stream: events downstream, and nothing accepted lost.
//!
//! The redirect path and the API hand events to the click queue ([`crate::click::EventQueue`],
//! never awaiting). One [`batcher`] task drains it into a [`Batch`] (each event's JSON encoded once, the
//! counter increments, the lead candidates), opens leads for first human taps, and hands the batch
//! to an [`EventSink`]: [`RedisStreamSink`] (one pipeline: every `XADD`, one `XTRIM … MAXLEN ~`
//! per stream shard written and a script applying the counter updates, on its own
//! [`crate::resp`] connection), [`cluster::ClusterStreamSink`] (the same on a Redis Cluster, one
//! pipeline per slot through redis-rs's cluster client) or
//! [`LogSink`] (the embedded event log plus counters in redb).
//!
//! Every batch has an id (this batcher's random replica id and the batch's number), and the store
//! applies a batch's counters only above the replica's applied mark, in the same atomic unit: a
//! batch sent again after a lost reply, or replayed from the spool after a restart, counts once
//! (its events repeat only when it had been cut off mid-way: see [`RedisStreamSink`]). A command the
//! store refuses for good (a key of the wrong type) is reported, written to `deadletter.jsonl` and
//! counted, and the rest of its batch applies. When the sink fails as a whole (Redis down, loading,
//! out of memory, a reply not received in time), the batch goes, whole and with its id, to the
//! [`log::Spool`] and is sent again, in order, with growing pauses until the sink answers.

pub(crate) mod batch;
pub(crate) mod batcher;
pub(crate) mod cluster;
pub(crate) mod log;

use std::sync::{Arc, Mutex};

use async_trait::async_trait;

pub(crate) use self::batch::Batch;
pub(crate) use self::batcher::{BatcherParts, Delivery};
use crate::attribution::model::BatchId;
use crate::click::EventType;
use crate::resp;
use crate::store::{EmbeddedStore, StoreError};

/// Default approximate cap of the Redis Stream (`XTRIM … MAXLEN ~` after each batch;
/// `LINKGATE_STREAM_MAXLEN`).
pub const STREAM_MAXLEN: u64 = 1_000_000;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("event log: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Redis(#[from] resp::RespError),
    /// The cluster sink's client failed (a node unreachable, a failover under way, a timeout).
    #[error("redis cluster: {0}")]
    Cluster(redis::RedisError),
}

impl SinkError {
    /// Whether the failure may pass by itself (Redis loading, out of memory, failing over, a
    /// lost connection): logged as a warning. Any failed batch is kept and sent again either way.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            Self::Redis(e) => e.is_transient(),
            Self::Cluster(_) => true,
            Self::Store(_) | Self::Io(_) => false,
        }
    }

    /// Whether the store is up but refuses writes (Redis out of memory or unable to persist,
    /// `MISCONF`; the embedded store or the event log on a full or failing disk): readiness fails
    /// until a batch lands. A lost connection or a failover is not such a refusal: a cluster
    /// master failing over must not make every replica unready while cached links still redirect
    /// and the batches wait in the spool.
    pub(crate) fn refuses_writes(&self) -> bool {
        let refused = |e: &str| e.starts_with("OOM") || e.starts_with("MISCONF");
        match self {
            Self::Redis(resp::RespError::Reply(e)) => refused(e),
            Self::Redis(_) => false,
            Self::Cluster(e) | Self::Store(StoreError::Redis(e)) => e.code().is_some_and(refused),
            Self::Store(StoreError::Unwritable { .. } | StoreError::Embedded(_)) | Self::Io(_) => true,
            Self::Store(_) => false,
        }
    }

    /// Whether the batch landed but too few replicas confirmed it in time (`WAIT`).
    pub(crate) fn is_unreplicated(&self) -> bool {
        matches!(self, Self::Redis(resp::RespError::NotReplicated { .. }))
    }
}

/// What a sink did with a batch.
#[derive(Debug, Default)]
pub struct Delivered {
    /// The batch had landed already (a re-sent batch whose first reply was lost, or a spool
    /// replay after a restart): nothing was applied twice.
    pub already: bool,
    /// Commands the store refused for good, each with its error: they go to the dead-letter file
    /// and everything else of the batch applied.
    pub refused: Vec<Refused>,
    /// Of a batch sent again, how many events were written again (may repeat in the stream);
    /// `None`: all of them, when it had not landed before.
    pub resent_events: Option<u64>,
}

/// One command the store refused for good (a key of the wrong type, say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub command: Vec<String>,
    pub error: String,
}

#[async_trait]
pub trait EventSink: Send + Sync + 'static {
    /// Writes the batch's events and applies its counters, once (by the batch's id); an error
    /// means the batch must be kept and sent again.
    async fn deliver(&self, batch: &Batch) -> Result<Delivered, SinkError>;
    fn name(&self) -> &'static str;
}

/// Production sink: each batch is one pipeline on the sink's own connection ([`resp`]): every
/// `XADD` (to its code's shard, [`stream_keys`]), one `XTRIM` per shard written, then one script call that applies the counter updates once by batch
/// number and moves the replica's applied mark (`store::redis::APPLY_ONCE`). Redis runs a
/// connection's commands in order, so a mark at this batch means all its events landed too: a
/// batch sent again (a spool replay, after an error or a restart) first reads the mark and is
/// skipped whole when it landed. When the mark is below it, some of its events may have landed
/// before the failure (a reply lost mid-batch): those are streamed twice, with the same ids, and
/// counted in `linkgate_events_resent_total`; its counters still apply once.
///
/// (Putting the `XADD`s inside the script, or the whole batch in `MULTI`/`EXEC`, would make the
/// events exactly-once as well, but measured with `benches/batcher` it cost 2.4× and 1.4× Redis's
/// CPU per event: see `loadtest/optimisations.md`.)
pub struct RedisStreamSink {
    url: String,
    /// What a `rediss://` connection trusts.
    tls: crate::tls::RedisTls,
    /// Replicas that must confirm each batch (`WAIT`) before it counts as delivered, and how long
    /// to wait for them (`LINKGATE_REDIS_WAIT_REPLICAS`; 0: no `WAIT`).
    wait: (u32, std::time::Duration),
    /// Per stream shard, `XADD <key> * type <type> json` encoded once per event type
    /// ([`EventType::index`]).
    xadd: Vec<[resp::Prefix; EventType::ALL.len()]>,
    /// The stream keys, one per shard ([`stream_keys`]).
    streams: Vec<String>,
    /// `MAXLEN ~` in decimal.
    maxlen: Vec<u8>,
    state: tokio::sync::Mutex<SinkState>,
}

/// The connection (opened on first use) and the buffers, reused batch after batch so a batch's
/// megabytes are not allocated and faulted in anew each time.
struct SinkState {
    conn: Option<resp::RespConnection>,
    counters: resp::CommandList,
    commands: resp::RespWriter,
    /// The shards the batch's `XTRIM`s are for, in order.
    trimmed: Vec<u32>,
}

/// The stream keys events go to: `stream` itself when there is one shard, else `stream:{0}` …
/// `stream:{n-1}` (each its own Cluster hash tag, so the shards spread over the masters). An
/// event's shard is [`crate::stream_shard`] of its code.
pub fn stream_keys(stream: &str, shards: u32) -> Vec<String> {
    if shards <= 1 {
        return vec![stream.to_string()];
    }
    (0..shards).map(|i| format!("{stream}:{{{i}}}")).collect()
}

impl RedisStreamSink {
    /// A sink for `stream`, capped at about `maxlen` entries, on the Redis at `url`; it connects
    /// on its first batch.
    pub fn new(url: &str, stream: &str, maxlen: u64) -> Self {
        Self::sharded(url, stream, 1, maxlen)
    }

    /// A sink spreading events over `shards` stream keys ([`stream_keys`]), each capped at about
    /// `maxlen` entries.
    pub fn sharded(url: &str, stream: &str, shards: u32, maxlen: u64) -> Self {
        let mut cap = Vec::new();
        resp::push_decimal(&mut cap, maxlen);
        let streams = stream_keys(stream, shards);
        let xadd = streams
            .iter()
            .map(|key| {
                EventType::ALL.map(|t| {
                    resp::Prefix::new(&[b"XADD", key.as_bytes(), b"*", b"type", t.as_str().as_bytes(), b"json"])
                })
            })
            .collect();
        Self {
            url: url.to_string(),
            tls: crate::tls::RedisTls::default(),
            wait: (0, std::time::Duration::ZERO),
            xadd,
            streams,
            maxlen: cap,
            state: tokio::sync::Mutex::new(SinkState {
                conn: None,
                counters: resp::CommandList::default(),
                commands: resp::RespWriter::default(),
                trimmed: Vec::new(),
            }),
        }
    }

    /// Trusts `tls`'s authorities when the URL is `rediss://`.
    pub fn with_tls(mut self, tls: crate::tls::RedisTls) -> Self {
        self.tls = tls;
        self
    }

    /// Makes each batch wait (`WAIT`, up to `timeout`) until `replicas` replicas hold it: a batch
    /// they did not all confirm fails, is kept in the spool and sent again (once it landed, the
    /// re-send only waits again), so what the sink reports delivered survives a failover to one of
    /// them. Redis's replication stays asynchronous for everything else.
    pub fn with_wait(mut self, replicas: u32, timeout: std::time::Duration) -> Self {
        self.wait = (replicas, timeout);
        self
    }

    /// `WAIT`s for the configured replicas to hold everything this connection wrote. `touch`
    /// (a batch found landed, on what may be a fresh connection that wrote nothing yet) first
    /// refreshes the replica's applied mark, a write, so that `WAIT` covers everything the
    /// master had before it.
    async fn replicated(
        &self,
        conn: &mut resp::RespConnection,
        touch: Option<&BatchId>,
    ) -> Result<(), resp::RespError> {
        let (wanted, timeout) = self.wait;
        if wanted == 0 {
            return Ok(());
        }
        let (mut n, mut ms) = (Vec::new(), Vec::new());
        resp::push_decimal(&mut n, u64::from(wanted));
        resp::push_decimal(&mut ms, (timeout.as_millis() as u64).max(1));
        let mut w = resp::RespWriter::default();
        if let Some(id) = touch {
            let mut ttl = Vec::new();
            resp::push_decimal(&mut ttl, crate::store::redis::APPLIED_TTL_SECS);
            w.command(&[
                b"EXPIRE",
                crate::store::redis::applied_key(&id.replica).as_bytes(),
                &ttl,
            ]);
        }
        w.command(&[b"WAIT", &n, &ms]);
        match conn.pipeline(&w).await?.last {
            resp::Reply::Error(e) => Err(resp::RespError::Reply(e)),
            resp::Reply::Int(acked) if acked >= i64::from(wanted) => Ok(()),
            resp::Reply::Int(acked) => Err(resp::RespError::NotReplicated { acked, wanted }),
            _ => Err(resp::RespError::Protocol),
        }
    }

    /// The batch's pipeline: `XADD <shard key> * type <type> json <json>` per event, one
    /// `XTRIM <key> MAXLEN ~ <cap>` per shard the batch wrote to (listed in `trimmed`), then the
    /// counter script.
    ///
    /// Trimming once per batch instead of per `XADD` keeps the same approximate cap (the stream
    /// may run one batch over it until the batch's own `XTRIM`), with less for Redis to check per
    /// event.
    fn write_pipeline(
        &self,
        batch: &Batch,
        counters: &mut resp::CommandList,
        w: &mut resp::RespWriter,
        trimmed: &mut Vec<u32>,
    ) {
        counters.clear();
        batch.redis_updates(|args| counters.push(args));
        w.clear();
        let mut touched = vec![false; self.streams.len()];
        for (t, json, shard) in batch.iter_sharded(self.streams.len() as u32) {
            w.command_after(&self.xadd[shard as usize][t.index()], json);
            touched[shard as usize] = true;
        }
        trimmed.clear();
        for (shard, key) in self.streams.iter().enumerate() {
            if touched[shard] {
                w.command(&[b"XTRIM", key.as_bytes(), b"MAXLEN", b"~", &self.maxlen]);
                trimmed.push(shard as u32);
            }
        }
        let key = crate::store::redis::applied_key(&batch.id.replica);
        let script = crate::store::redis::APPLY_ONCE.as_bytes();
        w.eval(
            script,
            key.as_bytes(),
            batch.id.seq,
            counters,
            crate::store::redis::APPLIED_TTL_SECS,
        );
    }

    /// Whether `batch` landed already (read before sending a batch again).
    async fn landed(&self, conn: &mut resp::RespConnection, batch: &Batch) -> Result<bool, resp::RespError> {
        let mut get = resp::RespWriter::default();
        get.command(&[b"GET", crate::store::redis::applied_key(&batch.id.replica).as_bytes()]);
        let mark = match conn.call(&get).await? {
            resp::Reply::Bulk(b) => std::str::from_utf8(&b).ok().and_then(|s| s.parse().ok()).unwrap_or(0),
            _ => 0,
        };
        Ok(batch.id.seq <= mark)
    }
}

/// What the pipeline's replies say. An error that may pass (out of memory, loading, …) fails the
/// whole batch, to be sent again; other errors refused one command for good: it is reported. The
/// script answers `{0}` (landed before) or `{1, {position, error, …}}` for refused counter updates.
fn delivered(
    reply: resp::PipelineReply,
    counters: &resp::CommandList,
    batch: &Batch,
    streams: &[String],
    trimmed: &[u32],
) -> Result<Delivered, resp::RespError> {
    use resp::Reply;
    if let Some((_, e)) = reply.errors.iter().find(|(_, e)| resp::is_transient_reply(e)) {
        return Err(resp::RespError::Reply(e.clone()));
    }
    let items = match reply.last {
        Reply::Array(items) => items,
        Reply::Error(e) => return Err(resp::RespError::Reply(e)),
        _ => return Err(resp::RespError::Protocol),
    };
    let mut out = Delivered::default();
    match items.as_slice() {
        [Reply::Int(0)] => out.already = true,
        [Reply::Int(1), Reply::Array(refused)] => {
            let commands: Vec<Vec<&[u8]>> = counters.iter().collect();
            for pair in refused.chunks(2) {
                let [Reply::Int(at), error] = pair else {
                    return Err(resp::RespError::Protocol);
                };
                let error = match error {
                    Reply::Bulk(b) => String::from_utf8_lossy(b).into_owned(),
                    Reply::Simple(s) | Reply::Error(s) => s.clone(),
                    _ => String::new(),
                };
                let command = usize::try_from(*at - 1)
                    .ok()
                    .and_then(|i| commands.get(i))
                    .map(|args| args.iter().map(|a| String::from_utf8_lossy(a).into_owned()).collect())
                    .unwrap_or_default();
                out.refused.push(Refused { command, error });
            }
        }
        _ => return Err(resp::RespError::Protocol),
    }
    // The replies before the script: one per event, then the XTRIMs.
    // Only read when Redis refused something (rarely): a batch's events are not collected for
    // nothing.
    let events: Vec<(EventType, &[u8], u32)> = if reply.errors.is_empty() {
        Vec::new()
    } else {
        batch.iter_sharded(streams.len() as u32).collect()
    };
    for (at, error) in reply.errors {
        let command = match events.get(at) {
            Some((t, json, shard)) => [
                "XADD",
                &streams[*shard as usize],
                "*",
                "type",
                t.as_str(),
                "json",
                &String::from_utf8_lossy(json),
            ]
            .map(String::from)
            .to_vec(),
            None => {
                let shard = trimmed.get(at - events.len()).map_or(0, |&s| s as usize);
                vec!["XTRIM".to_string(), streams[shard].clone()]
            }
        };
        out.refused.push(Refused { command, error });
    }
    Ok(out)
}

#[async_trait]
impl EventSink for RedisStreamSink {
    async fn deliver(&self, batch: &Batch) -> Result<Delivered, SinkError> {
        let mut state = self.state.lock().await;
        let SinkState {
            conn,
            counters,
            commands,
            trimmed,
        } = &mut *state;
        let c = match conn {
            Some(c) => c,
            None => conn.insert(resp::RespConnection::connect(&self.url, &self.tls).await?),
        };
        let result = async {
            if batch.resent && self.landed(c, batch).await? {
                self.replicated(c, Some(&batch.id)).await?;
                return Ok(Delivered {
                    already: true,
                    ..Delivered::default()
                });
            }
            self.write_pipeline(batch, counters, commands, trimmed);
            let reply = c.pipeline(commands).await?;
            let out = delivered(reply, counters, batch, &self.streams, trimmed)?;
            self.replicated(c, None).await?;
            Ok::<_, resp::RespError>(out)
        }
        .await;
        if result.is_err() {
            // Whatever state the connection is in, the next batch starts on a fresh one.
            *conn = None;
        }
        Ok(result?)
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}

/// Embedded sink: the event log in the data directory, counters in the embedded store (applied
/// once by batch number). A batch whose lines reached the log but whose counters failed (the
/// store unwritable) is remembered, so its retry does not log it again; only a process that
/// stops between the two can leave a batch's lines twice in the log (same event ids).
pub(crate) struct LogSink {
    pub log: Arc<Mutex<log::EventLog>>,
    pub store: Arc<EmbeddedStore>,
    /// Batches logged whose counters have not applied yet.
    pub logged: Mutex<std::collections::HashSet<crate::attribution::model::BatchId>>,
}

impl LogSink {
    pub(crate) fn new(log: log::EventLog, store: Arc<EmbeddedStore>) -> Self {
        Self {
            log: Arc::new(Mutex::new(log)),
            store,
            logged: Mutex::default(),
        }
    }
}

#[async_trait]
impl EventSink for LogSink {
    async fn deliver(&self, batch: &Batch) -> Result<Delivered, SinkError> {
        let logged = self
            .logged
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&batch.id);
        if !logged {
            let log = self.log.clone();
            let lines = batch.lines();
            tokio::task::spawn_blocking(move || log.lock().unwrap_or_else(|e| e.into_inner()).append(&lines))
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))??;
            self.logged
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(batch.id.clone());
        }
        let cells = batch.analytics.cells(&batch.rules());
        let landed = self.store.apply_batch(&batch.counters, cells, &batch.id).await?;
        self.logged.lock().unwrap_or_else(|e| e.into_inner()).remove(&batch.id);
        Ok(Delivered {
            already: !landed,
            ..Delivered::default()
        })
    }

    fn name(&self) -> &'static str {
        "log"
    }
}
