//! Stream: events downstream, and nothing accepted lost.
//!
//! The redirect path and the API hand events to the click queue ([`crate::click::EventQueue`],
//! never awaiting). One [`batcher`] task drains it into a [`Batch`] (each event's JSON encoded once, the
//! counter increments, the lead candidates), opens leads for first human taps, and hands the batch
//! to an [`EventSink`]: [`RedisStreamSink`] (one script call with every `XADD`, one
//! `XTRIM … MAXLEN ~` and the counter updates, on its own [`crate::resp`] connection) or
//! [`LogSink`] (the embedded event log plus counters in redb).
//!
//! Every batch has an id (this batcher's random replica id and the batch's number), and the store
//! applies a batch only above the replica's applied mark, in the same atomic unit: a batch sent
//! again after a lost reply, or replayed from the spool after a restart, lands once. A command the
//! store refuses for good (a key of the wrong type) is reported, written to `deadletter.jsonl` and
//! counted, and the rest of its batch applies. When the sink fails as a whole (Redis down, loading,
//! out of memory, a reply not received in time), the batch goes, whole and with its id, to the
//! [`log::Spool`] and is sent again, in order, with growing pauses until the sink answers.

pub(crate) mod batch;
pub(crate) mod batcher;
pub(crate) mod log;

use std::sync::{Arc, Mutex};

use async_trait::async_trait;

pub(crate) use self::batch::Batch;
pub(crate) use self::batcher::{BatcherParts, Delivery};
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
}

impl SinkError {
    /// Whether the failure may pass by itself (Redis loading, out of memory, failing over, a
    /// lost connection): logged as a warning. Any failed batch is kept and sent again either way.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            Self::Redis(e) => e.is_transient(),
            Self::Store(_) | Self::Io(_) => false,
        }
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

/// Production sink: each batch is one script call on the sink's own connection ([`resp`]): every
/// `XADD`, one `XTRIM` and the counter updates, applied once by batch number
/// (`store::redis::APPLY_ONCE`).
pub struct RedisStreamSink {
    url: String,
    stream: String,
    /// `MAXLEN ~` in decimal.
    maxlen: Vec<u8>,
    state: tokio::sync::Mutex<SinkState>,
}

/// The connection (opened on first use) and the buffers, reused batch after batch so a batch's
/// megabytes are not allocated and faulted in anew each time.
struct SinkState {
    conn: Option<resp::RespConnection>,
    list: resp::CommandList,
    call: resp::RespWriter,
}

impl RedisStreamSink {
    /// A sink for `stream`, capped at about `maxlen` entries, on the Redis at `url`; it connects
    /// on its first batch.
    pub fn new(url: &str, stream: &str, maxlen: u64) -> Self {
        let mut cap = Vec::new();
        resp::push_decimal(&mut cap, maxlen);
        Self {
            url: url.to_string(),
            stream: stream.to_string(),
            maxlen: cap,
            state: tokio::sync::Mutex::new(SinkState {
                conn: None,
                list: resp::CommandList::default(),
                call: resp::RespWriter::default(),
            }),
        }
    }

    /// The batch's commands: `XADD <stream> * type <type> json <json>` per event, one
    /// `XTRIM <stream> MAXLEN ~ <cap>`, then the counter updates.
    ///
    /// Trimming once per batch instead of per `XADD` keeps the same approximate cap (the stream
    /// may run one batch over it until the batch's own `XTRIM`), with less for Redis to check per
    /// event.
    fn commands(&self, batch: &Batch, list: &mut resp::CommandList) {
        list.clear();
        let stream = self.stream.as_bytes();
        for (t, json) in batch.iter() {
            list.push(&[b"XADD", stream, b"*", b"type", t.as_str().as_bytes(), b"json", json]);
        }
        list.push(&[b"XTRIM", stream, b"MAXLEN", b"~", &self.maxlen]);
        crate::store::redis::counter_updates(&batch.counters, |args| list.push(args));
    }
}

/// The script's answer: `{0}` (landed before) or `{1, {position, error, …}}`.
fn delivered(reply: resp::Reply, list: &resp::CommandList) -> Result<Delivered, resp::RespError> {
    use resp::Reply;
    let Reply::Array(items) = reply else {
        return Err(resp::RespError::Protocol);
    };
    match items.as_slice() {
        [Reply::Int(0)] => Ok(Delivered {
            already: true,
            refused: Vec::new(),
        }),
        [Reply::Int(1), Reply::Array(refused)] => {
            let commands: Vec<Vec<&[u8]>> = list.iter().collect();
            let mut out = Vec::with_capacity(refused.len() / 2);
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
                out.push(Refused { command, error });
            }
            Ok(Delivered {
                already: false,
                refused: out,
            })
        }
        _ => Err(resp::RespError::Protocol),
    }
}

#[async_trait]
impl EventSink for RedisStreamSink {
    async fn deliver(&self, batch: &Batch) -> Result<Delivered, SinkError> {
        let mut state = self.state.lock().await;
        let SinkState { conn, list, call } = &mut *state;
        self.commands(batch, list);
        call.clear();
        let key = crate::store::redis::applied_key(&batch.id.replica);
        call.eval(
            crate::store::redis::APPLY_ONCE.as_bytes(),
            key.as_bytes(),
            batch.id.seq,
            list,
            crate::store::redis::APPLIED_TTL_SECS,
        );
        let c = match conn {
            Some(c) => c,
            None => conn.insert(resp::RespConnection::connect(&self.url).await?),
        };
        let result = c.call(call).await.and_then(|reply| delivered(reply, list));
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
/// once by batch number; the log may hold a batch's lines twice when its counters failed and it
/// was sent again: same event ids).
pub(crate) struct LogSink {
    pub log: Arc<Mutex<log::EventLog>>,
    pub store: Arc<EmbeddedStore>,
}

#[async_trait]
impl EventSink for LogSink {
    async fn deliver(&self, batch: &Batch) -> Result<Delivered, SinkError> {
        let log = self.log.clone();
        let lines = batch.lines();
        tokio::task::spawn_blocking(move || log.lock().unwrap_or_else(|e| e.into_inner()).append(&lines))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))??;
        let landed = self.store.apply_batch(&batch.counters, &batch.id).await?;
        Ok(Delivered {
            already: !landed,
            refused: Vec::new(),
        })
    }

    fn name(&self) -> &'static str {
        "log"
    }
}
