//! Webhooks: events POSTed to the systems that subscribed to them, signed, at least once, never
//! on the redirect path.
//!
//! Three kinds of task per replica, none of which the redirect path ever waits on:
//! - **intake** ([`intake`]) reads events back from the durable pipeline (the Redis Stream
//!   through the `linkgate-webhooks` consumer group, so each event is read by one replica; the
//!   embedded event log from a saved position), turns them into deliveries for the webhooks that
//!   want them, makes their first attempts, and records them (delivered) or queues them (failed)
//!   before acknowledging the read;
//! - **a sender per webhook** retries: it claims due deliveries from the store (a lease: a replica that dies
//!   mid-POST leaves them to another once it runs out), POSTs them ([`client`]) up to
//!   [`CLAIM_MAX`] at a time, and records each attempt: delivered on a 2xx answer, otherwise
//!   queued again after a pause that doubles from `LINKGATE_WEBHOOK_BACKOFF` up to an hour; a
//!   delivery still failing `LINKGATE_WEBHOOK_RETRY_FOR` (24 h) after its first attempt is given
//!   up and its webhook disabled (a metric and a log line say so) until a delivery is retried by
//!   hand;
//! - **a supervisor** reloads the webhook list every second (and at once after an API change on
//!   this replica), starts and stops senders, and samples the queue depth.
//!
//! Each POST carries `Linkgate-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>"
//! keyed by the webhook's secret>` (Stripe's scheme), plus the webhook, delivery and event ids.

pub(crate) mod client;
pub(crate) mod guard;
mod intake;

pub(crate) use self::intake::Feed;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use self::client::{Client, SendError};
use crate::config::WebhookSettings;
use crate::hash::hex;
use crate::link::code::generate_codes;
use crate::metrics::WebhookMetrics;
use crate::runtime::RuntimeThread;
use crate::store::{Attempted, DeliveryStatus, Store, StoreError, Webhook, WebhookDelivery};
use crate::time::{now_millis, now_secs};

/// How often every replica reloads the webhook list.
pub(crate) const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// Deliveries one sender claims and POSTs at once.
pub(crate) const CLAIM_MAX: usize = 32;
/// An answer slower than this marks its webhook as struggling ([`Webhooks::first_attempts`]).
const SLOW_ANSWER: Duration = Duration::from_secs(1);
/// First attempts the intake makes at once (over every webhook).
const FIRST_ATTEMPTS_AT_ONCE: usize = 64;
/// How often an idle sender looks for deliveries that came due (retries, other replicas' reads).
const IDLE_POLL: Duration = Duration::from_millis(250);
/// Longest pause between two attempts of a delivery.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// A claim's lease beyond the attempt's own timeout.
const LEASE_MARGIN: Duration = Duration::from_secs(10);
/// How long stopping waits beyond an attempt's timeout before it aborts what is left.
const STOP_MARGIN: Duration = Duration::from_secs(2);
/// How often the queue depth gauge is sampled.
const DEPTH_EVERY: Duration = Duration::from_secs(5);

/// What an attempt came to, as the metric's label ([`crate::metrics::WEBHOOK_OUTCOMES`] order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Delivered,
    Rejected,
    Timeout,
    Unreachable,
    Blocked,
}

/// Wake-ups shared by the tasks (held strongly, so a task can wait without keeping the
/// [`Webhooks`] alive).
struct Signals {
    /// New deliveries were stored.
    queued: Notify,
    /// A webhook was created, deleted or enabled again on this replica.
    changed: Notify,
    /// Set once delivery stops: every task ends after the step it is in.
    stop: tokio::sync::watch::Sender<bool>,
}

impl Default for Signals {
    fn default() -> Self {
        Self {
            queued: Notify::new(),
            changed: Notify::new(),
            stop: tokio::sync::watch::channel(false).0,
        }
    }
}

impl Signals {
    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Waits `d`, or less when `wake` completes or delivery stops.
    async fn pause(&self, d: Duration, wake: impl std::future::Future<Output = ()>) {
        let mut stop = self.stop.subscribe();
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = wake => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    }
}

/// Webhook delivery of one replica; its tasks stop when it is dropped.
pub(crate) struct Webhooks {
    store: Arc<dyn Store>,
    settings: WebhookSettings,
    client: Client,
    hooks: RwLock<Arc<Vec<Webhook>>>,
    signals: Arc<Signals>,
    metrics: WebhookMetrics,
    /// The intake and the supervisor.
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// One sender per enabled webhook, by its id.
    senders: Mutex<HashMap<String, JoinHandle<()>>>,
    /// Webhooks whose last answer failed or was slow: their new deliveries are queued for their
    /// sender instead of attempted by the intake ([`Webhooks::first_attempts`]).
    struggling: Mutex<std::collections::HashSet<String>>,
    /// Webhooks the intake is attempting right now: the reads that overlap that attempt queue
    /// their deliveries for the sender rather than wait for the same receiver again.
    attempting: Mutex<std::collections::HashSet<String>>,
    /// Ends the delivery thread's runtime when dropped.
    ///
    /// Delivery runs on a runtime of its own, on its own thread: its work (matching events, hundreds
    /// of POSTs and their wake-ups) is then scheduled by the OS beside the server's threads instead
    /// of queueing in front of redirects on the same worker. Measured with `loadtest/webhooks`
    /// (server, Redis and delivery on one core, at a quarter of its redirect maximum, a click webhook
    /// posting each event): redirect p50 23 µs without the webhook; about 1 ms with delivery on the
    /// server's runtime; 0.3 and 0.8 ms in two runs on its own thread. The rest is the core's load
    /// (delivery's CPU is about twice the redirects'); in batch mode p50 stays at 26–30 µs.
    _runtime: RuntimeThread,
}

impl Drop for Webhooks {
    fn drop(&mut self) {
        for t in self.tasks.get_mut().unwrap_or_else(|e| e.into_inner()).drain(..) {
            t.abort();
        }
        for (_, t) in self.senders.get_mut().unwrap_or_else(|e| e.into_inner()).drain() {
            t.abort();
        }
    }
}

/// Whether an attempt got a 2xx within [`SLOW_ANSWER`].
/// `d`, queued to be attempted now by its webhook's sender.
fn queue_now(mut d: WebhookDelivery, now: i64) -> Attempted {
    d.next_attempt_ms = Some(now);
    Attempted {
        delivery: d,
        retry_at_ms: Some(now),
    }
}

fn answered_well(a: &Attempted) -> bool {
    a.delivery.status == DeliveryStatus::Delivered
        && a.delivery.latency_ms.unwrap_or(u64::MAX) < SLOW_ANSWER.as_millis() as u64
}

/// `t=<secs>,v1=<hex HMAC-SHA256(secret, "<secs>.<body>")>`.
pub(crate) fn signature(secret: &str, secs: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any size");
    mac.update(secs.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={secs},v1={}", hex(&mac.finalize().into_bytes()))
}

/// The pause after the `attempts`-th failure: `base` doubled per earlier failure, at most an hour,
/// then spread by ±20% (from the delivery's id and attempt, so replicas do not retry in step).
fn backoff(base: Duration, attempts: u32, id: &str) -> Duration {
    let doubled = base.saturating_mul(1u32 << attempts.saturating_sub(1).min(20));
    let d = doubled.min(MAX_BACKOFF);
    let spread = xxhash_rust::xxh3::xxh3_64_with_seed(id.as_bytes(), u64::from(attempts)) % 401;
    d.mul_f64(0.8 + spread as f64 / 1000.0)
}

impl Webhooks {
    /// Starts delivery: the intake reading `feed`, and the supervisor that runs the senders.
    pub(crate) fn start(
        store: Arc<dyn Store>,
        feed: Feed,
        settings: WebhookSettings,
        metrics: WebhookMetrics,
    ) -> Result<Arc<Self>, String> {
        let tls = settings.tls.client_config()?;
        let runtime = RuntimeThread::start("linkgate-webhooks")?;
        let rt = runtime.handle.clone();
        let hooks = Arc::new(Self {
            store,
            client: Client::new(tls, settings.allow_private, settings.timeout),
            settings,
            hooks: RwLock::default(),
            signals: Arc::default(),
            metrics,
            tasks: Mutex::default(),
            senders: Mutex::default(),
            struggling: Mutex::default(),
            attempting: Mutex::default(),
            _runtime: runtime,
        });
        // The supervisor spawns the senders on the runtime it runs on: this one.
        let intake = rt.spawn(intake::run(Arc::downgrade(&hooks), hooks.signals.clone(), feed));
        let supervisor = rt.spawn(supervise(Arc::downgrade(&hooks), hooks.signals.clone()));
        hooks
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend([intake, supervisor]);
        Ok(hooks)
    }

    /// Stops delivery: every task finishes the step it is in (a POST under way is answered or
    /// times out, and recorded) and ends. A task still busy after the attempt timeout and a
    /// margin is aborted: its deliveries' leases run out and they are attempted again (the
    /// receiver may see one twice, with the same ids).
    pub(crate) async fn stop(&self) {
        self.signals.stop.send_replace(true);
        let mut tasks: Vec<JoinHandle<()>> = self.tasks.lock().unwrap_or_else(|e| e.into_inner()).drain(..).collect();
        tasks.extend(
            self.senders
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .drain()
                .map(|(_, t)| t),
        );
        let deadline = tokio::time::Instant::now() + self.settings.timeout + STOP_MARGIN;
        for mut t in tasks {
            if tokio::time::timeout_at(deadline, &mut t).await.is_err() {
                t.abort();
                let _ = t.await;
            }
        }
    }

    /// The webhooks that take deliveries now (as last loaded).
    pub(crate) fn enabled(&self) -> Vec<Webhook> {
        let all = self.hooks.read().unwrap_or_else(|e| e.into_inner()).clone();
        all.iter().filter(|h| h.disabled_at.is_none()).cloned().collect()
    }

    fn enabled_hook(&self, id: &str) -> Option<Webhook> {
        let all = self.hooks.read().unwrap_or_else(|e| e.into_inner()).clone();
        all.iter().find(|h| h.id == id && h.disabled_at.is_none()).cloned()
    }

    /// Reloads the list from the store.
    async fn reload(&self) -> Result<(), StoreError> {
        let list = self.store.list_webhooks().await?;
        *self.hooks.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(list);
        Ok(())
    }

    /// Reloads the list; whether it holds no enabled webhook (`false` when it could not be read).
    async fn none_enabled_now(&self) -> bool {
        self.reload().await.is_ok() && self.enabled().is_empty()
    }

    /// Tells the supervisor that a webhook changed on this replica (others notice within
    /// [`REFRESH_EVERY`]).
    pub(crate) fn changed(&self) {
        self.signals.changed.notify_one();
    }

    /// Creates a webhook with a fresh id and secret.
    pub(crate) async fn create(
        &self,
        url: String,
        events: Vec<String>,
        campaign_id: Option<String>,
        batch: Option<u32>,
    ) -> Result<Webhook, StoreError> {
        let hook = Webhook {
            id: format!("wh_{}", generate_codes(2).concat()),
            url,
            events,
            campaign_id,
            batch,
            secret: format!("whsec_{}", generate_codes(4).concat()),
            created_at: now_secs(),
            disabled_at: None,
            disabled_reason: None,
        };
        self.store.put_webhook(&hook).await?;
        self.changed();
        Ok(hook)
    }

    /// Queues a delivery again at once, with a fresh retry window, and enables its webhook
    /// again if it was disabled (a retry by hand says the receiver is back).
    pub(crate) async fn retry(&self, hook: &Webhook, mut d: WebhookDelivery) -> Result<WebhookDelivery, StoreError> {
        let now = now_millis();
        d.status = DeliveryStatus::Pending;
        d.window_ms = now;
        d.next_attempt_ms = Some(now);
        self.store
            .finish_deliveries(&[Attempted {
                delivery: d.clone(),
                retry_at_ms: Some(now),
            }])
            .await?;
        if hook.disabled_at.is_some() {
            let enabled = Webhook {
                disabled_at: None,
                disabled_reason: None,
                ..hook.clone()
            };
            self.store.put_webhook(&enabled).await?;
            tracing::info!(webhook = %hook.id, "webhook enabled again by a retry");
        }
        self.changed();
        self.signals.queued.notify_waiters();
        Ok(d)
    }

    /// First attempts of freshly read deliveries. A webhook whose last answer failed or took
    /// longer than [`SLOW_ANSWER`] is not attempted here: its deliveries go straight to its
    /// queue, where its own sender works through them. Every other webhook is probed with one
    /// delivery first; only a good answer (a 2xx within [`SLOW_ANSWER`]) lets the rest of its
    /// deliveries of this read be attempted here, [`FIRST_ATTEMPTS_AT_ONCE`] at a time. And no
    /// attempt here waits longer than [`SLOW_ANSWER`]: one that would is given up (its receiver
    /// may still get it: at least once) and queued for the webhook's sender, which waits the full
    /// `LINKGATE_WEBHOOK_TIMEOUT`. A webhook another read is attempting right now is not waited
    /// for twice: its deliveries are queued. And reads overlap (the intake's rounds): while one
    /// waits up to a second for a receiver that hangs, the next ones go on. So a hundred bad
    /// receivers do not hold up a healthy one's events: with 25 hanging, 25 refused, 25 slow-500
    /// and 24 unresolvable beside it, its lag p99 stays under 1 s (`tests/webhooks.rs`; 30 s
    /// before the probe, about 1 s before reads overlapped). A fast 2xx to its sender makes a
    /// webhook a candidate for first attempts again.
    async fn first_attempts(&self, hooks: &[Webhook], deliveries: Vec<WebhookDelivery>) -> Vec<Attempted> {
        let struggling = self.struggling.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let now = now_millis();
        let mut queued = Vec::new();
        let mut per_hook: Vec<(&Webhook, Vec<WebhookDelivery>)> = Vec::new();
        {
            let mut attempting = self.attempting.lock().unwrap_or_else(|e| e.into_inner());
            for d in deliveries {
                let Some(hook) = hooks.iter().find(|h| h.id == d.webhook_id) else {
                    continue;
                };
                if struggling.contains(&hook.id) {
                    queued.push(queue_now(d, now));
                    continue;
                }
                match per_hook.iter_mut().find(|(h, _)| h.id == hook.id) {
                    Some((_, ds)) => ds.push(d),
                    // Another read is attempting this webhook: queue rather than wait for it too.
                    None if !attempting.insert(hook.id.clone()) => queued.push(queue_now(d, now)),
                    None => per_hook.push((hook, vec![d])),
                }
            }
        }
        // Each webhook's outcome counts as soon as its own attempts end, not when the slowest
        // webhook's do: the reads overlapping this one then attempt a healthy webhook again at
        // once, and queue a struggling one.
        let chains = per_hook.into_iter().map(|(hook, ds)| async move {
            let attempted = self.probe_then_rest(hook, ds).await;
            if attempted.iter().any(|a| !answered_well(a)) {
                self.struggling
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(hook.id.clone());
            }
            self.attempting
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&hook.id);
            attempted
        });
        let attempted: Vec<Attempted> = futures_util::future::join_all(chains).await.concat();
        queued.extend(attempted);
        queued
    }

    /// One webhook's first attempts of a read: the first delivery alone, then (if it was
    /// answered well) the rest; each given up after [`SLOW_ANSWER`] and queued instead.
    async fn probe_then_rest(&self, hook: &Webhook, ds: Vec<WebhookDelivery>) -> Vec<Attempted> {
        let mut ds = ds.into_iter();
        let Some(first) = ds.next() else { return Vec::new() };
        let probe = self.attempt_briefly(hook, first).await;
        if !answered_well(&probe) {
            let now = now_millis();
            let mut out = vec![probe];
            out.extend(ds.map(|d| queue_now(d, now)));
            return out;
        }
        let mut out = vec![probe];
        let rest: Vec<Attempted> = futures_util::stream::iter(ds)
            .map(|d| self.attempt_briefly(hook, d))
            .buffer_unordered(FIRST_ATTEMPTS_AT_ONCE)
            .collect()
            .await;
        out.extend(rest);
        out
    }

    /// An attempt that waits at most [`SLOW_ANSWER`]; one that would wait longer is dropped and
    /// the delivery queued for the webhook's sender (counted as a timeout).
    async fn attempt_briefly(&self, hook: &Webhook, d: WebhookDelivery) -> Attempted {
        let copy = d.clone();
        match tokio::time::timeout(SLOW_ANSWER, self.attempt(hook, d)).await {
            Ok(a) => a,
            Err(_) => {
                self.metrics.attempts[Outcome::Timeout as usize].increment(1);
                let now = now_millis();
                let mut q = queue_now(copy, now);
                q.delivery.error = Some(format!(
                    "no answer within {} ms; queued for the webhook's own sender",
                    SLOW_ANSWER.as_millis()
                ));
                q
            }
        }
    }

    /// One sender round: claims due deliveries, POSTs them, records the attempts. Returns how
    /// many were attempted.
    async fn round(&self, hook: &Webhook) -> Result<usize, StoreError> {
        let lease = (self.settings.timeout + LEASE_MARGIN).as_millis() as i64;
        let claimed = self
            .store
            .claim_deliveries(&hook.id, now_millis(), lease, CLAIM_MAX)
            .await?;
        if claimed.is_empty() {
            return Ok(0);
        }
        let n = claimed.len();
        let attempts: Vec<Attempted> = futures_util::stream::iter(claimed)
            .map(|d| self.attempt(hook, d))
            .buffer_unordered(CLAIM_MAX)
            .collect()
            .await;
        if attempts.iter().any(answered_well) {
            self.struggling
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&hook.id);
        }
        // Not recorded (the store failed): the leases run out and the deliveries are attempted
        // again, at least once.
        self.store.finish_deliveries(&attempts).await?;
        if let Some(failed) = attempts.iter().find(|a| a.delivery.status == DeliveryStatus::Failed) {
            self.disable(hook, &failed.delivery).await?;
        }
        Ok(n)
    }

    async fn disable(&self, hook: &Webhook, failed: &WebhookDelivery) -> Result<(), StoreError> {
        let Some(mut current) = self.store.get_webhook(&hook.id).await? else {
            return Ok(());
        };
        if current.disabled_at.is_some() {
            return Ok(());
        }
        let reason = format!(
            "delivery {} failed for {} (last: {})",
            failed.id,
            humantime::format_duration(self.settings.retry_for),
            failed.error.as_deref().unwrap_or("no answer")
        );
        tracing::warn!(webhook = %hook.id, reason = %reason, "webhook disabled");
        current.disabled_at = Some(now_secs());
        current.disabled_reason = Some(reason);
        self.store.put_webhook(&current).await?;
        self.metrics.disabled.increment(1);
        self.reload().await
    }

    /// POSTs one delivery and returns its record after the attempt.
    async fn attempt(&self, hook: &Webhook, mut d: WebhookDelivery) -> Attempted {
        let secs = now_secs();
        let body = Bytes::from(d.body.clone());
        let mut headers: client::Headers = vec![
            ("linkgate-webhook-id", hook.id.clone()),
            ("linkgate-delivery-id", d.id.clone()),
            ("linkgate-event-type", d.event_type.clone()),
            ("linkgate-signature", signature(&hook.secret, secs, &body)),
        ];
        match (hook.batch, d.event_ids.first()) {
            (None, Some(id)) => headers.push(("linkgate-event-id", id.clone())),
            _ => headers.push(("linkgate-event-count", d.event_ids.len().to_string())),
        }
        let started = Instant::now();
        let result = self.client.post(&hook.url, &headers, body).await;
        let now = now_millis();
        d.attempts += 1;
        d.last_attempt_ms = Some(now);
        d.latency_ms = Some(started.elapsed().as_millis() as u64);
        let outcome = match &result {
            Ok(s) if (200..300).contains(s) => Outcome::Delivered,
            Ok(_) => Outcome::Rejected,
            Err(SendError::Timeout(_)) => Outcome::Timeout,
            Err(SendError::Blocked(_)) => Outcome::Blocked,
            Err(_) => Outcome::Unreachable,
        };
        self.metrics.attempts[outcome as usize].increment(1);
        d.response_status = result.as_ref().ok().copied();
        d.error = match &result {
            Ok(_) if outcome == Outcome::Delivered => None,
            Ok(s) => Some(format!("the receiver answered {s}")),
            Err(e) => Some(e.to_string()),
        };
        let retry_at_ms = if outcome == Outcome::Delivered {
            d.status = DeliveryStatus::Delivered;
            d.next_attempt_ms = None;
            self.metrics.lag.record((now - d.event_ms).max(0) as f64 / 1000.0);
            None
        } else if now - d.window_ms >= self.settings.retry_for.as_millis() as i64 {
            d.status = DeliveryStatus::Failed;
            d.next_attempt_ms = None;
            None
        } else {
            let at = now + backoff(self.settings.backoff, d.attempts, &d.id).as_millis() as i64;
            d.next_attempt_ms = Some(at);
            Some(at)
        };
        Attempted {
            delivery: d,
            retry_at_ms,
        }
    }
}

/// The supervisor: reloads the list, runs one sender per enabled webhook, samples the queue.
async fn supervise(hooks: Weak<Webhooks>, signals: Arc<Signals>) {
    let mut sampled = Instant::now() - DEPTH_EVERY;
    while !signals.stopping() {
        let changed = signals.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        {
            let Some(h) = hooks.upgrade() else { break };
            if let Err(e) = h.reload().await {
                tracing::warn!(error = %e, "could not load the webhooks; keeping the last list");
            }
            {
                let mut senders = h.senders.lock().unwrap_or_else(|e| e.into_inner());
                senders.retain(|_, t| !t.is_finished());
                for hook in h.enabled().into_iter().filter(|_| !signals.stopping()) {
                    senders
                        .entry(hook.id.clone())
                        .or_insert_with(|| tokio::spawn(send(hooks.clone(), signals.clone(), hook.id)));
                }
            }
            if sampled.elapsed() >= DEPTH_EVERY {
                sampled = Instant::now();
                let all = h.hooks.read().unwrap_or_else(|e| e.into_inner()).clone();
                let mut depth = 0;
                for hook in all.iter() {
                    depth += h.store.queued_deliveries(&hook.id).await.unwrap_or(0);
                }
                h.metrics.queue_depth.set(depth as f64);
            }
        }
        signals.pause(REFRESH_EVERY, changed).await;
    }
}

/// One webhook's sender: rounds while there is work, then waits for new deliveries or the next
/// poll. Ends when its webhook is deleted or disabled.
async fn send(hooks: Weak<Webhooks>, signals: Arc<Signals>, id: String) {
    while !signals.stopping() {
        let queued = signals.queued.notified();
        tokio::pin!(queued);
        queued.as_mut().enable();
        let done = {
            let Some(h) = hooks.upgrade() else { return };
            let Some(hook) = h.enabled_hook(&id) else { return };
            match h.round(&hook).await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(webhook = %id, error = %e, "webhook deliveries could not be claimed or recorded");
                    0
                }
            }
        };
        if done == 0 {
            signals.pause(IDLE_POLL, queued).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_stripe_style_hmacs_over_time_and_body() {
        // Computed independently: printf '1733130000.{"id":"e1"}' | openssl dgst -sha256 -hmac whsec_test
        let sig = signature("whsec_test", 1_733_130_000, br#"{"id":"e1"}"#);
        assert_eq!(
            sig,
            "t=1733130000,v1=67e3b58bbcdc8ddb375ee01556c551d58fd82df66f6ecee3fbb3824d782b03d3"
        );
        assert_ne!(sig, signature("whsec_test", 1_733_130_001, br#"{"id":"e1"}"#));
        assert_ne!(sig, signature("whsec_other", 1_733_130_000, br#"{"id":"e1"}"#));
    }

    #[test]
    fn backoff_doubles_up_to_an_hour_with_a_bounded_spread() {
        let base = Duration::from_secs(5);
        for attempts in 1..40 {
            let d = backoff(base, attempts, "dl_x");
            let nominal = base.saturating_mul(1 << (attempts - 1).min(20)).min(MAX_BACKOFF);
            assert!(
                d >= nominal.mul_f64(0.8) && d <= nominal.mul_f64(1.2),
                "{attempts}: {d:?}"
            );
        }
        // Retried for 24 hours, a delivery is attempted about 32 times.
        let mut t = Duration::ZERO;
        let mut n = 0;
        while t < Duration::from_secs(86_400) {
            n += 1;
            t += backoff(base, n, "dl_x");
        }
        assert!((25..=40).contains(&n), "{n} attempts in a day");
    }
}
