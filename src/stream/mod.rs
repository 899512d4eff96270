//! Stream: events downstream, and nothing accepted lost.
//!
//! The redirect path and the API hand events to [`EventPipeline::try_send`] (never awaiting).
//! One [`batcher`] task drains the queue, opens leads for first human taps, adds up the counters
//! and hands each batch to an [`EventSink`]: [`RedisStreamSink`] (pipelined `XADD … MAXLEN ~` plus
//! the counter updates) or [`LogSink`] (the embedded event log plus counters in redb). When the sink
//! fails, the batch goes to the [`log::Spool`] and is replayed, in order, once the sink answers.

pub mod batcher;
pub mod log;

use std::sync::{Arc, Mutex};

use async_trait::async_trait;

pub use self::batcher::EventPipeline;
use crate::attribution::model::CounterDelta;
use crate::click::Event;
use crate::store::{EmbeddedStore, RedisStore, Store, StoreError};

/// Approximate cap of the Redis Stream (`XADD … MAXLEN ~`).
pub const STREAM_MAXLEN: usize = 1_000_000;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("event log: {0}")]
    Io(#[from] std::io::Error),
}

#[async_trait]
pub trait EventSink: Send + Sync + 'static {
    /// Writes `events` and applies `counters`; an error means the batch must be spooled.
    async fn deliver(&self, events: &[Event], counters: &CounterDelta) -> Result<(), SinkError>;
    fn name(&self) -> &'static str;
}

/// Production sink: one Redis pipeline per batch with every `XADD` and counter update.
pub struct RedisStreamSink {
    pub store: Arc<RedisStore>,
    pub stream: String,
}

#[async_trait]
impl EventSink for RedisStreamSink {
    async fn deliver(&self, events: &[Event], counters: &CounterDelta) -> Result<(), SinkError> {
        // All of a batch's JSON in one buffer: one allocation instead of one per event.
        let mut buf = Vec::with_capacity(events.len() * 400);
        let mut ends = Vec::with_capacity(events.len());
        for e in events {
            serde_json::to_writer(&mut buf, e).expect("events always serialise");
            ends.push(buf.len());
        }
        let mut start = 0;
        let encoded: Vec<(&str, &[u8])> = events
            .iter()
            .zip(&ends)
            .map(|(e, &end)| {
                let json = &buf[start..end];
                start = end;
                (e.event_type.as_str(), json)
            })
            .collect();
        self.store
            .deliver(&self.stream, STREAM_MAXLEN, &encoded, counters)
            .await?;
        Ok(())
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}

/// Embedded sink: the event log in the data directory, counters in the embedded store.
pub struct LogSink {
    pub log: Arc<Mutex<log::EventLog>>,
    pub store: Arc<EmbeddedStore>,
}

#[async_trait]
impl EventSink for LogSink {
    async fn deliver(&self, events: &[Event], counters: &CounterDelta) -> Result<(), SinkError> {
        let log = self.log.clone();
        let events = events.to_vec();
        tokio::task::spawn_blocking(move || log.lock().unwrap_or_else(|e| e.into_inner()).append(&events))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))??;
        self.store.apply_counters(counters).await?;
        Ok(())
    }

    fn name(&self) -> &'static str {
        "log"
    }
}
