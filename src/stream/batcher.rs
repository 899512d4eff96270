//! The batcher: one task that drains the [`EventQueue`] and delivers what it took.
//!
//! It wakes every [`FLUSH_INTERVAL`] (or at once on shutdown), takes whatever has queued up (at
//! most [`BATCH_MAX`] per batch), turns taps into events (hashing the IP, resolving interned ids),
//! claims leads for first human taps, adds up the counters, and delivers the batch to the sink. A
//! failed delivery goes to the spool; while the spool holds events, new batches are appended
//! behind them and the spool is replayed in order every [`REPLAY_INTERVAL`].
//!
//! The batcher runs on a runtime and thread of its own (`linkgate-events`), not among the
//! connections: on a saturated core, a task among the connection tasks got one turn in every
//! connection's, and with personalised links (every first tap a lead) the stream trailed the
//! taps by up to a second and more; as a thread, the OS gives it the share of the core it needs.
//! Measured with `loadtest/lagprobe` (`loadtest/optimisations.md`, "Twelfth session").

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::batch::{Batch, BatchMemo};
use super::log::{DeadLetters, Spool};
use super::{EventSink, Refused, SinkError};
use crate::attribution::model::{BatchId, LeadClaim};
use crate::click::event::IpHasher;
use crate::click::{EventQueue, Queued};
use crate::metrics::EventMetrics;
use crate::resolve::Resolver;
use crate::runtime::RuntimeThread;
use crate::store::AttributionStore;

/// Most events delivered in one batch.
pub(crate) const BATCH_MAX: usize = 4096;
/// How long an idle batcher sleeps before looking at the queue again: the most a quiet event
/// waits. Stats may lag by up to a second (docs/GUARANTEES.md), so 10 ms is far inside the contract; why 10
/// and not 2 is measured in `loadtest/optimisations.md`.
pub(crate) const FLUSH_INTERVAL: Duration = Duration::from_millis(10);
/// How often a non-empty spool is retried.
pub(crate) const REPLAY_INTERVAL: Duration = Duration::from_millis(250);
/// The longest wait between replay attempts while the sink keeps failing.
pub(crate) const REPLAY_MAX_INTERVAL: Duration = Duration::from_secs(5);
/// Most spool batches replayed before live events get a turn.
pub(crate) const REPLAY_BATCHES_PER_TURN: usize = 16;

/// What the batcher needs besides its queue.
pub struct BatcherParts {
    pub sink: Arc<dyn EventSink>,
    pub store: Arc<dyn AttributionStore>,
    pub resolver: Arc<Resolver>,
    pub spool: Spool,
    pub ip_secret: Vec<u8>,
    pub metrics: EventMetrics,
    /// How much may wait in memory when events can be neither delivered nor spooled.
    pub hold: HoldLimit,
}

/// The bound of the events held in memory while the disk takes no writes (neither the sink nor
/// the spool): past it, events are dropped, counted and logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldLimit {
    pub events: usize,
    pub bytes: usize,
}

impl Default for HoldLimit {
    /// 500,000 events or 256 MiB of their spool lines, whichever comes first.
    fn default() -> Self {
        Self {
            events: 500_000,
            bytes: 256 << 20,
        }
    }
}

/// How often held events are offered to the spool again.
const HOLD_RETRY: Duration = Duration::from_millis(250);
/// Drops past the hold's bound are logged at most this often.
const DROP_LOG_EVERY: Duration = Duration::from_secs(10);

/// Batches held in memory, in order, with their totals.
#[derive(Default)]
struct Held {
    batches: std::collections::VecDeque<(Vec<u8>, usize)>,
    events: usize,
    bytes: usize,
    /// Drops not yet logged, and when they were last logged.
    unlogged: u64,
    logged_at: Option<std::time::Instant>,
}

/// The running batcher, for shutdown.
pub struct Delivery {
    queue: Arc<EventQueue>,
    done: watch::Receiver<bool>,
    /// The batcher's own thread and runtime.
    _runtime: RuntimeThread,
}

impl Delivery {
    /// Starts the batcher on a thread and runtime of its own, draining `queue`; fails when the
    /// dead-letter file beside the spool cannot be opened or the thread cannot start. Must run
    /// inside the server's runtime (the batcher's store calls run there).
    pub fn start(queue: Arc<EventQueue>, parts: BatcherParts) -> std::io::Result<Self> {
        Self::start_with(queue, parts, crate::analytics::DEFAULT_RULES.clone())
    }

    /// [`Delivery::start`], classifying and bucketing analytics by `rules`.
    pub(crate) fn start_with(
        queue: Arc<EventQueue>,
        parts: BatcherParts,
        rules: Arc<crate::analytics::Rules>,
    ) -> std::io::Result<Self> {
        let (done_tx, done) = watch::channel(false);
        parts.metrics.spool_bytes.set(parts.spool.pending_bytes() as f64);
        let dead_letters = DeadLetters::open(parts.spool.dir())?;
        let batcher = Batcher {
            replica: crate::link::code::generate_codes(2).concat(),
            next_seq: 0,
            legacy: crate::link::code::generate_codes(2).concat(),
            legacy_seq: 0,
            dead_letters: Arc::new(Mutex::new(dead_letters)),
            replay_wait: REPLAY_INTERVAL,
            queue: queue.clone(),
            ip: IpHasher::new(&parts.ip_secret),
            spool: Arc::new(Mutex::new(parts.spool)),
            sink: parts.sink,
            store: parts.store,
            server: tokio::runtime::Handle::current(),
            resolver: parts.resolver,
            metrics: parts.metrics,
            spare: Batch::default(),
            rules,
            queued: Vec::with_capacity(BATCH_MAX),
            memo: BatchMemo::default(),
            hold: parts.hold,
            held: Held::default(),
        };
        let runtime = RuntimeThread::start("linkgate-events").map_err(std::io::Error::other)?;
        runtime.handle.spawn(async move {
            batcher.run().await;
            let _ = done_tx.send(true);
        });
        Ok(Self {
            queue,
            done,
            _runtime: runtime,
        })
    }

    /// Stops the batcher after it has delivered or spooled everything queued; waits at most
    /// `deadline`. Returns whether it finished in time.
    pub async fn shutdown(&self, deadline: Duration) -> bool {
        self.queue.close();
        let mut done = self.done.clone();
        tokio::time::timeout(deadline, done.wait_for(|d| *d)).await.is_ok()
    }
}

struct Batcher {
    /// This batcher's batches are `replica:1`, `replica:2`, … in delivery order.
    replica: String,
    next_seq: u64,
    /// Spool lines written before batches had ids are replayed as `legacy:1`, `legacy:2`, …
    legacy: String,
    legacy_seq: u64,
    dead_letters: Arc<Mutex<DeadLetters>>,
    /// How long to wait before the next replay attempt: doubles while the sink keeps failing.
    replay_wait: Duration,
    queue: Arc<EventQueue>,
    metrics: EventMetrics,
    ip: IpHasher,
    spool: Arc<Mutex<Spool>>,
    sink: Arc<dyn EventSink>,
    store: Arc<dyn AttributionStore>,
    /// The runtime that started the batcher (the server's): store calls run there, so the store
    /// client's connection tasks (and any reconnection) stay on the server's threads and never
    /// wait for the batcher's.
    server: tokio::runtime::Handle,
    resolver: Arc<Resolver>,
    /// The last batch, kept for its buffers.
    spare: Batch,
    /// What was taken from the queue, kept for its buffer.
    queued: Vec<Queued>,
    /// Campaign and owner names as JSON, kept from batch to batch (an interned id's name never
    /// changes).
    memo: BatchMemo,
    rules: Arc<crate::analytics::Rules>,
    hold: HoldLimit,
    /// Batches that could be neither delivered nor spooled, oldest first: spooled before anything
    /// newer once the disk takes writes.
    held: Held,
}

impl Batcher {
    async fn run(mut self) {
        let mut last_replay = tokio::time::Instant::now();
        let mut last_hold_retry = tokio::time::Instant::now();
        loop {
            let stopping = self.queue.is_closing();
            let mut queued = std::mem::take(&mut self.queued);
            self.queue.take(BATCH_MAX, &mut queued);
            if queued.is_empty() {
                self.queued = queued;
                if stopping {
                    break;
                }
                tokio::select! {
                    () = tokio::time::sleep(FLUSH_INTERVAL) => {}
                    () = self.queue.closed() => {}
                }
            } else {
                let batch = self.batch_of(&mut queued);
                self.queued = queued;
                self.handle(batch).await;
            }
            if !self.held.batches.is_empty() && last_hold_retry.elapsed() >= HOLD_RETRY {
                self.spool_held().await;
                last_hold_retry = tokio::time::Instant::now();
            }
            if self.held.batches.is_empty() && self.spool_pending() && last_replay.elapsed() >= self.replay_wait {
                self.replay().await;
                last_replay = tokio::time::Instant::now();
            }
        }
        // Shutdown: the server has stopped answering, so nothing new arrives; whatever the sink
        // did not take is in the spool (or held). One last attempt at each.
        self.spool_held().await;
        if self.held.batches.is_empty() && self.spool_pending() {
            self.replay().await;
        }
        if self.held.events > 0 {
            tracing::error!(
                events = self.held.events,
                "exiting with events that could be neither delivered nor spooled: they are lost"
            );
            self.metrics.dropped[1].increment(self.held.events as u64);
        }
    }

    fn spool_pending(&self) -> bool {
        let spool = self.spool.lock().unwrap_or_else(|e| e.into_inner());
        self.metrics.spool_bytes.set(spool.pending_bytes() as f64);
        spool.pending()
    }

    /// Encodes what the queue held: taps straight into JSON, other events through serde. The
    /// batch reuses the buffers of the previous one. (The batcher has a thread of its own, so a
    /// large batch does not hold up the connections: the OS shares the core between them.)
    fn batch_of(&mut self, queued: &mut Vec<Queued>) -> Batch {
        let mut batch = std::mem::take(&mut self.spare);
        batch.clear();
        batch.rules = Some(self.rules.clone());
        self.next_seq += 1;
        batch.id = BatchId {
            replica: self.replica.clone(),
            seq: self.next_seq,
        };
        let interner = self.resolver.interner();
        for q in queued.drain(..) {
            match q {
                Queued::Click(c) => batch.push_click(&c, &mut self.memo, interner, &mut self.ip),
                Queued::Event(e) if e.id.is_empty() => {}
                Queued::Event(e) => batch.push_event(&e),
            }
        }
        batch
    }

    /// Delivers `batch`, or spools it when the sink fails or the spool is already behind.
    async fn handle(&mut self, mut batch: Batch) {
        if !batch.is_empty() {
            let delivered = self.held.batches.is_empty() && !self.spool_pending() && {
                let result = self.process(&mut batch).await;
                self.queue
                    .set_failing(result.as_ref().is_err_and(SinkError::refuses_writes));
                match result {
                    Ok(()) => true,
                    Err(e) if e.is_transient() => {
                        if e.is_unreplicated() {
                            self.metrics.unreplicated.increment(1);
                        }
                        tracing::warn!(error = %e, events = batch.len(), "delivery failed; spooling");
                        false
                    }
                    Err(e) => {
                        tracing::error!(error = %e, events = batch.len(), "delivery refused; spooling, will retry");
                        false
                    }
                }
            };
            if !delivered {
                self.spool_or_hold(batch.spool_lines(), batch.len()).await;
            }
        }
        self.spare = batch;
    }

    /// Spools a batch, behind any held ones; one the spool cannot take is held in memory.
    async fn spool_or_hold(&mut self, lines: Vec<u8>, n: usize) {
        if self.held.batches.is_empty() {
            match self.append_spool(lines).await {
                Ok(()) => {}
                Err((lines, e)) => {
                    tracing::error!(error = %e, events = n, "could not write the spool; holding the events in memory");
                    self.hold(lines, n);
                }
            }
        } else {
            self.hold(lines, n);
        }
    }

    /// Appends to the spool, or gives the lines back with the error.
    async fn append_spool(&self, lines: Vec<u8>) -> Result<(), (Vec<u8>, String)> {
        let spool = self.spool.clone();
        let r = tokio::task::spawn_blocking(move || {
            let r = spool.lock().unwrap_or_else(|e| e.into_inner()).append(&lines);
            r.map_err(|e| (lines, e.to_string()))
        })
        .await;
        match r {
            Ok(Ok(())) => {
                self.metrics.spooled_batches.increment(1);
                Ok(())
            }
            Ok(Err(failed)) => Err(failed),
            Err(e) => Err((Vec::new(), format!("spool task failed: {e}"))),
        }
    }

    /// Holds a batch in memory, or drops it past the bound (counted, and logged at most every
    /// [`DROP_LOG_EVERY`]).
    fn hold(&mut self, lines: Vec<u8>, n: usize) {
        let h = &mut self.held;
        if lines.is_empty() || h.events + n > self.hold.events || h.bytes + lines.len() > self.hold.bytes {
            self.metrics.dropped[0].increment(n as u64);
            h.unlogged += n as u64;
            if h.logged_at.is_none_or(|t| t.elapsed() >= DROP_LOG_EVERY) {
                tracing::error!(
                    events = h.unlogged,
                    held = h.events,
                    "nothing can be written and the in-memory hold is full: events dropped"
                );
                (h.unlogged, h.logged_at) = (0, Some(std::time::Instant::now()));
            }
            return;
        }
        h.events += n;
        h.bytes += lines.len();
        h.batches.push_back((lines, n));
        self.queue.set_held(h.events as u64);
    }

    /// Spools held batches in order, until one fails.
    async fn spool_held(&mut self) {
        while let Some((lines, n)) = self.held.batches.pop_front() {
            let len = lines.len();
            match self.append_spool(lines).await {
                Ok(()) => {
                    self.held.events -= n;
                    self.held.bytes -= len;
                }
                // The spool task itself failed and took the lines with it: lost, and counted.
                Err((lines, e)) if lines.is_empty() => {
                    tracing::error!(error = %e, events = n, "held events lost");
                    self.metrics.dropped[0].increment(n as u64);
                    self.held.events -= n;
                    self.held.bytes -= len;
                }
                Err((lines, _)) => {
                    self.held.batches.push_front((lines, n));
                    break;
                }
            }
        }
        let was = self.queue.held();
        self.queue.set_held(self.held.events as u64);
        if was > 0 && self.held.events == 0 {
            tracing::warn!(events = was, "the events held in memory are in the spool");
        }
    }

    /// Replays the spool in order until it is empty, the sink fails, or the turn is used up.
    async fn replay(&mut self) {
        for _ in 0..REPLAY_BATCHES_PER_TURN {
            let spool = self.spool.clone();
            let read = tokio::task::spawn_blocking(move || {
                spool.lock().unwrap_or_else(|e| e.into_inner()).read_batch(BATCH_MAX)
            })
            .await;
            let Ok(Ok(super::log::Spooled {
                id,
                seqs,
                events,
                end: pos,
            })) = read
            else {
                tracing::error!("could not read the spool");
                return;
            };
            if !events.is_empty() {
                let mut batch = std::mem::take(&mut self.spare);
                batch.clear();
                batch.rules = Some(self.rules.clone());
                batch.id = id.unwrap_or_else(|| {
                    self.legacy_seq += 1;
                    BatchId {
                        replica: self.legacy.clone(),
                        seq: self.legacy_seq,
                    }
                });
                batch.resent = true;
                for e in &events {
                    batch.push_event(e);
                }
                batch.restore_seqs(&seqs);
                let result = self.process(&mut batch).await;
                self.spare = batch;
                self.queue
                    .set_failing(result.as_ref().is_err_and(SinkError::refuses_writes));
                if let Err(e) = result {
                    self.replay_wait = (self.replay_wait * 2).min(REPLAY_MAX_INTERVAL);
                    tracing::debug!(error = %e, wait = ?self.replay_wait, "spool replay deferred");
                    return;
                }
                self.replay_wait = REPLAY_INTERVAL;
                self.metrics.replayed.increment(events.len() as u64);
            }
            let spool = self.spool.clone();
            let advanced =
                tokio::task::spawn_blocking(move || spool.lock().unwrap_or_else(|e| e.into_inner()).advance(pos)).await;
            if !matches!(advanced, Ok(Ok(()))) {
                tracing::error!("could not advance the spool");
                return;
            }
            if events.is_empty() || !self.spool_pending() {
                tracing::info!("spool replayed");
                return;
            }
        }
    }

    /// Records commands the store refused for good: the dead-letter file, a metric, one log line.
    async fn dead_letter(&self, batch: &BatchId, refused: &[Refused]) {
        self.metrics.dead_letters.increment(refused.len() as u64);
        let first = &refused[0];
        tracing::error!(
            batch = %batch, commands = refused.len(), command = %first.command.first().map_or("", String::as_str),
            error = %first.error, "the store refused commands for good; they are in deadletter.jsonl and the rest applied"
        );
        let (file, batch, refused) = (self.dead_letters.clone(), batch.clone(), refused.to_vec());
        let written = tokio::task::spawn_blocking(move || {
            file.lock()
                .unwrap_or_else(|e| e.into_inner())
                .append(&batch, &refused, crate::time::now_secs())
        })
        .await;
        if !matches!(written, Ok(Ok(()))) {
            tracing::error!("could not write the dead-letter file");
        }
    }

    /// Claims leads for first human taps and delivers everything. The lead events are appended
    /// to the batch for delivery and removed again when it fails, so what is spooled is only the
    /// primary events (replay derives the leads again).
    async fn process(&mut self, batch: &mut Batch) -> Result<(), SinkError> {
        let primary = batch.len();
        let result = self.deliver_with_leads(batch).await;
        if result.is_err() {
            batch.truncate(primary);
        }
        result
    }

    async fn deliver_with_leads(&mut self, batch: &mut Batch) -> Result<(), SinkError> {
        let candidates = std::mem::take(&mut batch.candidates);
        let claimed: Vec<String> = candidates.iter().map(|c| c.lead.code.clone()).collect();
        if !candidates.is_empty() {
            let mut click_ids = Vec::with_capacity(candidates.len());
            let mut kinds = Vec::with_capacity(candidates.len());
            let mut leads = Vec::with_capacity(candidates.len());
            for c in candidates {
                click_ids.push(c.lead.click_id.clone());
                kinds.push(c.kind);
                leads.push(c.lead);
            }
            let store = self.store.clone();
            let claims = self
                .server
                .spawn(async move { store.claim_leads(leads).await })
                .await
                .map_err(|e| SinkError::Io(std::io::Error::other(format!("lead claims: {e}"))))??;
            for ((claim, click_id), kind) in claims.into_iter().zip(click_ids).zip(kinds) {
                let lead = match claim {
                    LeadClaim::Won(l) => l,
                    // A replayed tap whose lead was opened before the failure: emit it again
                    // (consumers dedupe on the id).
                    LeadClaim::Existing(l) if l.click_id == click_id => l,
                    LeadClaim::Existing(_) => continue,
                };
                batch.push_lead(&lead, kind);
            }
        }
        let delivered = self.sink.deliver(batch).await?;
        if delivered.already {
            // A re-sent batch that had landed before its reply was lost: nothing applied twice.
            self.metrics.already_applied.increment(1);
        } else if batch.resent {
            // Sent again without having landed whole: its counters applied once, but some of its
            // events may have reached the stream before the failure.
            let resent = delivered.resent_events.unwrap_or(batch.len() as u64);
            self.metrics.resent.increment(resent);
        }
        if !delivered.refused.is_empty() {
            self.dead_letter(&batch.id, &delivered.refused).await;
        }
        let m = &self.metrics;
        m.batch_events.record(batch.len() as f64);
        let [_, leads, conversions, _, _] = batch.counts();
        for (written, n) in m.written.iter().zip(batch.counts()) {
            written.increment(n);
        }
        m.leads_opened.increment(leads);
        m.conversions.increment(conversions);
        m.revenue.increment(batch.revenue());
        for code in &claimed {
            self.memo.remember_lead(code);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Instant;

    use super::*;
    use crate::click::agent::Agent;
    use crate::metrics::Metrics;
    use crate::store::EmbeddedStore;
    use crate::stream::batch::tests::tap;

    /// Counts the events of the batches it is given.
    struct Counting(AtomicU64);

    #[async_trait::async_trait]
    impl EventSink for Counting {
        async fn deliver(&self, batch: &Batch) -> Result<super::super::Delivered, SinkError> {
            self.0.fetch_add(batch.len() as u64, Ordering::SeqCst);
            Ok(Default::default())
        }
        fn name(&self) -> &'static str {
            "counting"
        }
    }

    /// The batcher delivers while every thread of the runtime that started it is busy (a
    /// saturated server): it has a thread of its own, so on a full core the OS shares the core
    /// with it instead of it waiting for a turn among the connections.
    #[test]
    fn the_batcher_delivers_while_the_servers_runtime_is_busy() {
        let dir = std::env::temp_dir().join(format!("linkgate-batcher-thread-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let metrics = Metrics::new();
        let sink = Arc::new(Counting(AtomicU64::new(0)));
        let store = Arc::new(EmbeddedStore::open(&dir).unwrap());
        let resolver = Resolver::new(store.clone(), metrics.cache.clone());
        let (queue, delivery) = rt.block_on(async {
            let events = metrics.events("counting");
            let queue = Arc::new(EventQueue::new(events.clone()));
            let parts = BatcherParts {
                sink: sink.clone(),
                store,
                resolver: resolver.clone(),
                spool: Spool::open(&dir).unwrap(),
                ip_secret: b"test".to_vec(),
                metrics: events,
                hold: HoldLimit::default(),
            };
            let delivery = Delivery::start(queue.clone(), parts).unwrap();
            (queue, delivery)
        });
        const TAPS: u64 = 1000;
        for i in 0..TAPS {
            let code = format!("c{i:05}");
            queue.try_send(Queued::Click(tap(resolver.interner(), &code, Agent::Human, None)));
        }
        // The runtime's one thread is held by a task that never yields, as a connection task
        // would hold it under load, until every tap is delivered or 10 s have passed.
        let delivered = rt.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(10);
            while sink.0.load(Ordering::SeqCst) < TAPS && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            sink.0.load(Ordering::SeqCst)
        });
        assert_eq!(delivered, TAPS, "taps delivered while the server's runtime was busy");
        assert!(rt.block_on(delivery.shutdown(Duration::from_secs(5))));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
