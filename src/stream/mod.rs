//! Stream: events downstream, and nothing accepted lost.
//!
//! The redirect path and the API hand events to the click queue ([`crate::click::EventQueue`],
//! never awaiting). One [`batcher`] task drains it into a [`Batch`] (each event's JSON encoded once, the
//! counter increments, the lead candidates), opens leads for first human taps, and hands the batch
//! to an [`EventSink`]: [`RedisStreamSink`] (one pipeline of `XADD`s, one `XTRIM … MAXLEN ~` and
//! the counter updates, on its own [`crate::resp`] connection) or [`LogSink`] (the embedded event log plus counters in
//! redb). When the sink fails, the batch's JSON lines go to the [`log::Spool`] and are replayed, in
//! order, once the sink answers.

pub(crate) mod batch;
pub(crate) mod batcher;
pub(crate) mod log;

use std::sync::{Arc, Mutex};

use async_trait::async_trait;

pub(crate) use self::batch::Batch;
pub(crate) use self::batcher::{BatcherParts, Delivery};
use crate::click::EventType;
use crate::resp;
use crate::store::{CounterStore, EmbeddedStore, StoreError};

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

#[async_trait]
pub trait EventSink: Send + Sync + 'static {
    /// Writes the batch's events and applies its counters; an error means the batch must be spooled.
    async fn deliver(&self, batch: &Batch) -> Result<(), SinkError>;
    fn name(&self) -> &'static str;
}

/// Production sink: one pipeline per batch with every `XADD` and counter update, on the sink's
/// own connection ([`resp`]).
pub struct RedisStreamSink {
    url: String,
    /// `XADD <stream> * type <type> json`, encoded once per event type ([`EventType::index`]).
    xadd: [resp::Prefix; 3],
    stream: String,
    /// `MAXLEN ~` in decimal.
    maxlen: Vec<u8>,
    state: tokio::sync::Mutex<SinkState>,
}

/// The connection (opened on first use) and the pipeline buffer, reused batch after batch so a
/// batch's megabytes are not allocated and faulted in anew each time.
struct SinkState {
    conn: Option<resp::RespConnection>,
    commands: resp::RespWriter,
}

impl RedisStreamSink {
    /// A sink for `stream`, capped at about `maxlen` entries, on the Redis at `url`; it connects
    /// on its first batch.
    pub fn new(url: &str, stream: &str, maxlen: u64) -> Self {
        let mut cap = Vec::new();
        resp::push_decimal(&mut cap, maxlen);
        let xadd = EventType::ALL.map(|t| {
            resp::Prefix::new(&[
                b"XADD",
                stream.as_bytes(),
                b"*",
                b"type",
                t.as_str().as_bytes(),
                b"json",
            ])
        });
        Self {
            url: url.to_string(),
            xadd,
            stream: stream.to_string(),
            maxlen: cap,
            state: tokio::sync::Mutex::new(SinkState {
                conn: None,
                commands: resp::RespWriter::default(),
            }),
        }
    }

    /// The batch as one pipeline: `XADD <stream> * type <type> json <json>` per event, one
    /// `XTRIM <stream> MAXLEN ~ <cap>`, then the counter updates.
    ///
    /// Trimming once per batch instead of per `XADD` keeps the same approximate cap (the stream
    /// may run one batch over it until the batch's own `XTRIM`), with less to send and less for
    /// Redis to check per event.
    fn write_commands(&self, batch: &Batch, w: &mut resp::RespWriter) {
        w.clear();
        for (t, json) in batch.iter() {
            w.command_after(&self.xadd[t.index()], json);
        }
        w.command(&[b"XTRIM", self.stream.as_bytes(), b"MAXLEN", b"~", &self.maxlen]);
        crate::store::redis::counter_updates(&batch.counters, |args| w.command(args));
    }
}

#[async_trait]
impl EventSink for RedisStreamSink {
    async fn deliver(&self, batch: &Batch) -> Result<(), SinkError> {
        let mut state = self.state.lock().await;
        let SinkState { conn, commands } = &mut *state;
        self.write_commands(batch, commands);
        let c = match conn {
            Some(c) => c,
            None => conn.insert(resp::RespConnection::connect(&self.url).await?),
        };
        let result = c.run(commands).await;
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

/// Embedded sink: the event log in the data directory, counters in the embedded store.
pub(crate) struct LogSink {
    pub log: Arc<Mutex<log::EventLog>>,
    pub store: Arc<EmbeddedStore>,
}

#[async_trait]
impl EventSink for LogSink {
    async fn deliver(&self, batch: &Batch) -> Result<(), SinkError> {
        let log = self.log.clone();
        let lines = batch.lines();
        tokio::task::spawn_blocking(move || log.lock().unwrap_or_else(|e| e.into_inner()).append(&lines))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))??;
        self.store.apply_counters(&batch.counters).await?;
        Ok(())
    }

    fn name(&self) -> &'static str {
        "log"
    }
}
