//! The event pipeline: a bounded queue in front of one batcher task.
//!
//! The redirect path calls [`EventPipeline::try_send`], which never waits and never wakes anyone:
//! it is one push onto a lock-free bounded queue. When the queue is full the event is parked in an
//! overflow list that the batcher takes with its next batch, so a burst costs memory, never an
//! event. The batcher wakes every [`FLUSH_INTERVAL`] (or at once on shutdown), takes whatever has
//! queued up (at most [`BATCH_MAX`] per batch), turns taps into events (hashing the IP, resolving interned ids), claims leads for
//! first human taps, adds up the counters, and delivers the batch to the sink. A failed delivery
//! goes to the spool; while the spool holds events, new batches are appended behind them and the
//! spool is replayed in order every [`REPLAY_INTERVAL`].

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use tokio::sync::{Notify, watch};

use super::log::Spool;
use super::{EventSink, SinkError};
use crate::attribution::model::{CounterDelta, Lead, LeadClaim, LeadSource, Stats};
use crate::click::event::{ClickRecord, IpHasher, state_str, truncated};
use crate::click::{Agent, Event, EventType, Queued};
use crate::metrics::{self, Histogram};
use crate::resolve::Resolver;
use crate::store::Store;

/// Capacity of the queue between the redirect path and the batcher.
pub const QUEUE_CAPACITY: usize = 65_536;
/// Most events delivered in one batch.
pub const BATCH_MAX: usize = 4096;
/// How long an idle batcher sleeps before looking at the queue again: the most a quiet event waits.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(2);
/// How often a non-empty spool is retried.
pub const REPLAY_INTERVAL: Duration = Duration::from_millis(250);
/// Most spool batches replayed before live events get a turn.
pub const REPLAY_BATCHES_PER_TURN: usize = 16;

pub struct EventPipeline {
    queue: ArrayQueue<Queued>,
    overflow: Mutex<VecDeque<Queued>>,
    stop: Notify,
    stopping: AtomicBool,
    done: watch::Receiver<bool>,
    /// Events parked in the overflow list because the queue was full (a metric).
    pub overflowed: AtomicU64,
    /// Batches that went to the spool.
    pub spooled_batches: AtomicU64,
    /// Events delivered to the sink (replays included).
    pub delivered: AtomicU64,
    /// Batches delivered to the sink.
    pub batches: AtomicU64,
    /// Events delivered, by type (click, lead, conversion).
    pub delivered_by_type: [AtomicU64; 3],
    /// Events delivered from the spool (replays).
    pub replayed: AtomicU64,
    /// Revenue of attributed conversions delivered, in minor units.
    pub revenue: AtomicU64,
    /// Bytes in the spool waiting for replay.
    pub spool_bytes: AtomicU64,
    /// Events per delivered batch.
    pub batch_sizes: Histogram,
    sink_name: &'static str,
}

/// What the batcher needs besides its queue.
pub struct BatcherParts {
    pub sink: Arc<dyn EventSink>,
    pub store: Arc<dyn Store>,
    pub resolver: Arc<Resolver>,
    pub spool: Spool,
    pub ip_secret: Vec<u8>,
}

impl EventPipeline {
    /// Creates the queue and spawns the batcher on the current runtime.
    pub fn start(parts: BatcherParts) -> Arc<Self> {
        let (done_tx, done) = watch::channel(false);
        let pipeline = Arc::new(Self {
            queue: ArrayQueue::new(QUEUE_CAPACITY),
            overflow: Mutex::new(VecDeque::new()),
            stop: Notify::new(),
            stopping: AtomicBool::new(false),
            done,
            overflowed: AtomicU64::new(0),
            spooled_batches: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            delivered_by_type: Default::default(),
            replayed: AtomicU64::new(0),
            revenue: AtomicU64::new(0),
            spool_bytes: AtomicU64::new(parts.spool.pending_bytes()),
            batch_sizes: Histogram::default(),
            sink_name: parts.sink.name(),
        });
        let batcher = Batcher {
            pipeline: pipeline.clone(),
            ip: IpHasher::new(&parts.ip_secret),
            spool: Arc::new(Mutex::new(parts.spool)),
            sink: parts.sink,
            store: parts.store,
            resolver: parts.resolver,
        };
        tokio::spawn(async move {
            batcher.run().await;
            let _ = done_tx.send(true);
        });
        pipeline
    }

    /// Queues an event without waiting.
    #[inline]
    pub fn try_send(&self, event: Queued) {
        if let Err(event) = self.queue.push(event) {
            self.overflowed.fetch_add(1, Ordering::Relaxed);
            self.overflow.lock().unwrap_or_else(|e| e.into_inner()).push_back(event);
        }
    }

    /// Events waiting in the queue.
    pub fn depth(&self) -> usize {
        self.queue.len()
    }

    /// Appends the pipeline's metrics in the Prometheus text format.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        metrics::gauge(
            out,
            "linkgate_event_queue_depth",
            "Events waiting for the batcher.",
            self.depth() as u64,
        );
        metrics::gauge(
            out,
            "linkgate_event_queue_capacity",
            "Capacity of the event queue.",
            QUEUE_CAPACITY as u64,
        );
        metrics::counter(
            out,
            "linkgate_event_overflow_total",
            "Events parked in the overflow list because the queue was full.",
            get(&self.overflowed),
        );
        let _ = writeln!(
            out,
            "# HELP linkgate_events_written_total Events delivered, by sink and type.\n# TYPE linkgate_events_written_total counter"
        );
        for (i, t) in ["click", "lead", "conversion"].iter().enumerate() {
            let _ = writeln!(
                out,
                "linkgate_events_written_total{{sink=\"{}\",type=\"{t}\"}} {}",
                self.sink_name,
                get(&self.delivered_by_type[i])
            );
        }
        metrics::histogram(
            out,
            "linkgate_batch_events",
            "Events per delivered batch.",
            &self.batch_sizes,
            1.0,
        );
        metrics::counter(
            out,
            "linkgate_spooled_batches_total",
            "Batches written to the spool because the sink failed.",
            get(&self.spooled_batches),
        );
        metrics::gauge(
            out,
            "linkgate_spool_bytes",
            "Bytes in the spool waiting for replay.",
            get(&self.spool_bytes),
        );
        metrics::counter(
            out,
            "linkgate_spool_replayed_events_total",
            "Events delivered from the spool.",
            get(&self.replayed),
        );
        metrics::counter(
            out,
            "linkgate_leads_opened_total",
            "Lead events delivered.",
            get(&self.delivered_by_type[1]),
        );
        metrics::counter(
            out,
            "linkgate_conversions_total",
            "Conversion events delivered.",
            get(&self.delivered_by_type[2]),
        );
        metrics::counter(
            out,
            "linkgate_revenue_minor_total",
            "Revenue of attributed conversions delivered, in minor units.",
            get(&self.revenue),
        );
    }

    /// Up to `max` queued events, then everything parked in the overflow list.
    fn take(&self, max: usize) -> Vec<Queued> {
        let mut batch = Vec::with_capacity(self.queue.len().min(max));
        while batch.len() < max {
            match self.queue.pop() {
                Some(q) => batch.push(q),
                None => break,
            }
        }
        if batch.len() < max && self.overflowed.load(Ordering::Relaxed) > 0 {
            let mut parked = self.overflow.lock().unwrap_or_else(|e| e.into_inner());
            let n = parked.len().min(max - batch.len());
            batch.extend(parked.drain(..n));
        }
        batch
    }

    /// Stops the batcher after it has delivered or spooled everything queued; waits at most `deadline`.
    /// Returns whether it finished in time.
    pub async fn shutdown(&self, deadline: Duration) -> bool {
        self.stopping.store(true, Ordering::Release);
        self.stop.notify_one();
        let mut done = self.done.clone();
        tokio::time::timeout(deadline, done.wait_for(|d| *d)).await.is_ok()
    }
}

struct Batcher {
    pipeline: Arc<EventPipeline>,
    ip: IpHasher,
    spool: Arc<Mutex<Spool>>,
    sink: Arc<dyn EventSink>,
    store: Arc<dyn Store>,
    resolver: Arc<Resolver>,
}

impl Batcher {
    async fn run(mut self) {
        let mut last_replay = tokio::time::Instant::now();
        loop {
            let stopping = self.pipeline.stopping.load(Ordering::Acquire);
            let batch = self.pipeline.take(BATCH_MAX);
            if batch.is_empty() {
                if stopping {
                    break;
                }
                tokio::select! {
                    () = tokio::time::sleep(FLUSH_INTERVAL) => {}
                    () = self.pipeline.stop.notified() => {}
                }
            } else {
                let events = self.events_of(batch);
                self.handle(events).await;
            }
            if self.spool_pending() && last_replay.elapsed() >= REPLAY_INTERVAL {
                self.replay().await;
                last_replay = tokio::time::Instant::now();
            }
        }
        // Shutdown: the server has stopped answering, so nothing new arrives; whatever the sink
        // did not take is in the spool. One last replay attempt empties it if the sink is back.
        if self.spool_pending() {
            self.replay().await;
        }
    }

    fn spool_pending(&self) -> bool {
        let spool = self.spool.lock().unwrap_or_else(|e| e.into_inner());
        self.pipeline
            .spool_bytes
            .store(spool.pending_bytes(), Ordering::Relaxed);
        spool.pending()
    }

    fn events_of(&mut self, batch: Vec<Queued>) -> Vec<Event> {
        let mut seen = BatchMemo::default();
        batch
            .into_iter()
            .map(|q| match q {
                Queued::Click(c) => self.click_event(c, &mut seen),
                Queued::Event(e) => *e,
            })
            .filter(|e| !e.id.is_empty())
            .collect()
    }

    fn click_event(&mut self, c: ClickRecord, seen: &mut BatchMemo) -> Event {
        let interner = self.resolver.interner();
        let click_id = c.click_id();
        let mut e = Event::at(click_id.clone(), EventType::Click, seen.timestamp(c.ts));
        e.code = Some(c.code().to_string());
        e.campaign_id = seen.name(interner, c.campaign);
        e.owner_id = seen.name(interner, c.owner);
        e.recipient_id = c.recipient.map(String::from);
        e.kind = Some(c.kind);
        e.synthetic = c.synthetic;
        e.agent = Some(c.agent);
        e.bot = Some(c.agent != Agent::Human);
        e.state = Some(state_str(c.state).to_string());
        e.user_agent = c.user_agent.as_ref().map(truncated);
        e.referer = c.referer.as_ref().map(truncated);
        e.ip_hash = c.ip.map(|ip| self.ip.hash(ip, c.ts));
        e.click_id = Some(click_id);
        e
    }

    /// Delivers `events`, or spools them when the sink fails or the spool is already behind.
    async fn handle(&mut self, mut events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        if !self.spool_pending() {
            match self.process(&mut events).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, events = events.len(), "delivery failed; spooling")
                }
            }
        }
        self.to_spool(events).await;
    }

    async fn to_spool(&self, events: Vec<Event>) {
        let spool = self.spool.clone();
        let n = events.len();
        let r =
            tokio::task::spawn_blocking(move || spool.lock().unwrap_or_else(|e| e.into_inner()).append(&events)).await;
        match r {
            Ok(Ok(())) => {
                self.pipeline.spooled_batches.fetch_add(1, Ordering::Relaxed);
            }
            // The disk is gone too: nothing left to do but say so loudly.
            Ok(Err(e)) => {
                tracing::error!(error = %e, events = n, "could not write the spool; events lost")
            }
            Err(e) => tracing::error!(error = %e, events = n, "spool task failed; events lost"),
        }
    }

    /// Replays the spool in order until it is empty, the sink fails, or the turn is used up.
    async fn replay(&mut self) {
        for _ in 0..REPLAY_BATCHES_PER_TURN {
            let spool = self.spool.clone();
            let read =
                tokio::task::spawn_blocking(move || spool.lock().unwrap_or_else(|e| e.into_inner()).read(BATCH_MAX))
                    .await;
            let Ok(Ok((mut events, pos))) = read else {
                tracing::error!("could not read the spool");
                return;
            };
            if !events.is_empty() {
                if let Err(e) = self.process(&mut events).await {
                    tracing::debug!(error = %e, "spool replay deferred");
                    return;
                }
                self.pipeline.replayed.fetch_add(events.len() as u64, Ordering::Relaxed);
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

    /// Claims leads for first human taps, adds up the counters and delivers everything. The lead
    /// events are appended to `events` for delivery and removed again when it fails, so what is
    /// spooled is only the primary events (replay derives the leads again).
    async fn process(&self, events: &mut Vec<Event>) -> Result<(), SinkError> {
        let primary = events.len();
        let result = self.deliver_with_leads(events).await;
        if result.is_err() {
            events.truncate(primary);
        }
        result
    }

    async fn deliver_with_leads(&self, events: &mut Vec<Event>) -> Result<(), SinkError> {
        let mut delta = CounterDelta::default();
        let mut candidates = Vec::new();
        let mut seen = HashSet::new();
        for e in events.iter().filter(|e| !e.synthetic) {
            let (code, campaign, owner) = (e.code.as_deref(), e.campaign_id.as_deref(), e.owner_id.as_deref());
            match e.event_type {
                EventType::Click => {
                    let human = e.agent == Some(Agent::Human);
                    let s = Stats {
                        clicks: 1,
                        human_clicks: human as i64,
                        bot_clicks: !human as i64,
                        ..Stats::default()
                    };
                    delta.add(code, campaign, owner, s);
                    if let (true, Some(code), Some(click_id)) = (human && e.recipient_id.is_some(), code, &e.click_id) {
                        if seen.insert(code) {
                            candidates.push(Lead {
                                lead_id: new_lead_id(),
                                code: code.to_string(),
                                campaign_id: e.campaign_id.clone(),
                                owner_id: e.owner_id.clone(),
                                recipient_id: e.recipient_id.clone(),
                                click_id: click_id.clone(),
                                source: LeadSource::Click,
                                attributes: None,
                                created_at: crate::time::parse_rfc3339(&e.ts).unwrap_or_else(crate::time::now_secs),
                                seq: 0,
                            });
                        }
                    }
                }
                EventType::Lead => delta.add(
                    code,
                    campaign,
                    owner,
                    Stats {
                        leads: 1,
                        ..Stats::default()
                    },
                ),
                EventType::Conversion if e.attributed == Some(true) => {
                    let s = Stats {
                        conversions: 1,
                        revenue: e.amount.unwrap_or(0),
                        ..Stats::default()
                    };
                    delta.add(code, campaign, owner, s);
                }
                EventType::Conversion => {}
            }
        }
        drop(seen);
        if !candidates.is_empty() {
            let kinds: Vec<_> = candidates
                .iter()
                .map(|c| {
                    events
                        .iter()
                        .find(|e| e.click_id.as_deref() == Some(c.click_id.as_str()))
                        .and_then(|e| e.kind)
                })
                .collect();
            let click_ids: Vec<String> = candidates.iter().map(|c| c.click_id.clone()).collect();
            let claims = self.store.claim_leads(candidates).await?;
            let mut leads = Vec::new();
            for ((claim, click_id), kind) in claims.into_iter().zip(click_ids).zip(kinds) {
                let lead = match claim {
                    LeadClaim::Won(l) => l,
                    // A replayed tap whose lead was opened before the failure: emit it again
                    // (consumers dedupe on the id).
                    LeadClaim::Existing(l) if l.click_id == click_id => l,
                    LeadClaim::Existing(_) => continue,
                };
                delta.add(
                    Some(&lead.code),
                    lead.campaign_id.as_deref(),
                    lead.owner_id.as_deref(),
                    Stats {
                        leads: 1,
                        ..Stats::default()
                    },
                );
                leads.push(lead_event(&lead, kind));
            }
            events.extend(leads);
        }
        self.sink.deliver(events, &delta).await?;
        let p = &self.pipeline;
        p.delivered.fetch_add(events.len() as u64, Ordering::Relaxed);
        p.batch_sizes.observe(events.len() as u64);
        for e in events.iter() {
            let i = match e.event_type {
                EventType::Click => 0,
                EventType::Lead => 1,
                EventType::Conversion => 2,
            };
            p.delivered_by_type[i].fetch_add(1, Ordering::Relaxed);
            if e.attributed == Some(true) && !e.synthetic {
                p.revenue
                    .fetch_add(e.amount.unwrap_or(0).max(0) as u64, Ordering::Relaxed);
            }
        }
        self.pipeline.batches.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// What a batch's taps share (timestamps within a second, campaign and owner names), formatted
/// once per batch instead of once per event.
#[derive(Default)]
struct BatchMemo {
    ts: Option<(i64, String)>,
    names: std::collections::HashMap<u32, Option<String>>,
}

impl BatchMemo {
    fn timestamp(&mut self, ts: i64) -> String {
        match &self.ts {
            Some((t, s)) if *t == ts => s.clone(),
            _ => {
                let s = crate::time::format_rfc3339(ts);
                self.ts = Some((ts, s.clone()));
                s
            }
        }
    }

    fn name(&mut self, interner: &crate::resolve::Interner, id: u32) -> Option<String> {
        self.names
            .entry(id)
            .or_insert_with(|| interner.name(id).map(|s| s.to_string()))
            .clone()
    }
}

/// A fresh lead id: `ld_` and 16 base62 characters from the CSPRNG.
pub fn new_lead_id() -> String {
    format!("ld_{}", crate::link::code::generate_codes(2).concat())
}

/// The `lead` event of a lead.
pub fn lead_event(lead: &Lead, kind: Option<crate::link::LinkKind>) -> Event {
    let mut e = Event::new(lead.lead_id.clone(), EventType::Lead, lead.created_at);
    e.code = Some(lead.code.clone());
    e.campaign_id = lead.campaign_id.clone();
    e.owner_id = lead.owner_id.clone();
    e.recipient_id = lead.recipient_id.clone();
    e.kind = kind;
    e.lead_id = Some(lead.lead_id.clone());
    e.click_id = Some(lead.click_id.clone());
    e.source = Some(lead.source);
    e
}
