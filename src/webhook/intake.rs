//! From the durable pipeline to the receivers: events are read back from where the batcher wrote
//! them (the Redis Stream through a consumer group, or the embedded event log from a saved
//! position), matched against the webhooks and attempted at once; each delivery is then recorded
//! in its endpoint's recent log, or, when its attempt failed, stored in the endpoint's queue for
//! the senders to retry. Only then is the read acknowledged. A replica that dies in between
//! leaves the events to be read again (by another replica after a minute, or by itself after a
//! restart): the deliveries they make have the same ids, so a queued one is not queued twice,
//! and a delivered one is posted again (at least once, same event ids).
//!
//! (The first version stored every delivery before its first attempt: `loadtest/webhooks`
//! measured 56 µs of linkgate's CPU and 48 µs of Redis's per delivered event, and 6,100 events/s,
//! less than a fifth of what one core redirects. Attempting first and storing only failures
//! leaves Redis one `XREADGROUP`, `XACK` and log append per round on the happy path.)

use std::time::{Duration, Instant};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::Webhooks;
use crate::hash::hex;
use crate::store::redis::feed::{RedisFeed, StreamEntry};
use crate::store::{Attempted, DeliveryStatus, Webhook, WebhookDelivery};
use crate::stream::log::{LogPos, LogTail};
use crate::time::now_millis;

/// Events read per round (per stream shard). (256 was measured too: batch-mode throughput fell
/// from 30,700 to 26,400 events/s, and redirect latency beside it did not improve beyond the
/// noise.)
const READ_BATCH: usize = 1024;
/// How often, while no webhook exists, the read position is moved past what was written (so the
/// first webhook does not start with a backlog to read through).
const IDLE_SKIP_EVERY: Duration = Duration::from_secs(5);
/// How often, while no webhook exists, the intake looks whether one appeared (in the list the
/// supervisor reloads).
const IDLE_CHECK_EVERY: Duration = Duration::from_millis(250);
/// Pause when nothing new was read.
const IDLE_PAUSE: Duration = Duration::from_millis(20);
/// How often entries other replicas read and never acknowledged are looked for, and how long
/// they must have waited.
const RECLAIM_EVERY: Duration = Duration::from_secs(15);
const RECLAIM_IDLE_MS: u64 = 60_000;
/// How far before the oldest webhook a new consumer group starts reading.
const CLOCK_SLACK_MS: i64 = 60_000;

/// Where events are read back from.
pub(crate) enum Feed {
    Redis(RedisFeed),
    Log(LogTail),
}

/// What one read returned: the entries (their JSON, and where they sit, to acknowledge them).
enum Read {
    Redis(Vec<StreamEntry>),
    /// The lines and the position after each, all read at `ms` (the log keeps no time).
    Log {
        lines: Vec<(LogPos, Vec<u8>)>,
        ms: i64,
    },
}

impl Read {
    fn len(&self) -> usize {
        match self {
            Read::Redis(entries) => entries.len(),
            Read::Log { lines, .. } => lines.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The events read, borrowed.
    fn events(&self) -> Vec<FeedEvent<'_>> {
        match self {
            Read::Redis(entries) => entries
                .iter()
                .map(|e| FeedEvent {
                    json: &e.json,
                    ms: e.ms,
                })
                .collect(),
            Read::Log { lines, ms } => lines.iter().map(|(_, l)| FeedEvent { json: l, ms: *ms }).collect(),
        }
    }
}

/// An event as read: its JSON and when it was written (Unix ms).
struct FeedEvent<'a> {
    json: &'a [u8],
    ms: i64,
}

/// The fields of an event a webhook filters on.
#[derive(Deserialize)]
struct Head {
    id: String,
    #[serde(rename = "type")]
    event_type: String,
    ts: String,
    #[serde(default)]
    campaign_id: Option<String>,
}

impl Feed {
    /// Moves past everything written so far, when no webhook wants it. The store is asked
    /// whether it still has none after the end is read, so an event written after a webhook was
    /// created is never skipped.
    async fn skip_if_unwanted(&mut self, hooks: &Webhooks) {
        let result: Result<(), String> = async {
            match self {
                Feed::Redis(feed) => {
                    let ends = feed.ends().await.map_err(|e| e.to_string())?;
                    if hooks.none_enabled_now().await {
                        feed.skip_to(&ends).await.map_err(|e| e.to_string())?;
                    }
                }
                Feed::Log(tail) => {
                    let end = tail.end().map_err(|e| e.to_string())?;
                    if hooks.none_enabled_now().await {
                        tail.seek(end);
                        tail.commit(end).map_err(|e| e.to_string())?;
                    }
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "webhook delivery could not move past unwanted events");
        }
    }

    /// Reads what is new; `since_ms` is where a consumer group that does not exist yet starts.
    async fn read(&mut self, reclaim: bool, since_ms: i64) -> Result<Read, String> {
        match self {
            Feed::Redis(feed) => {
                let mut entries = feed.read(READ_BATCH, since_ms).await.map_err(|e| e.to_string())?;
                if reclaim {
                    entries.extend(
                        feed.reclaim(RECLAIM_IDLE_MS, READ_BATCH)
                            .await
                            .map_err(|e| e.to_string())?,
                    );
                }
                Ok(Read::Redis(entries))
            }
            Feed::Log(tail) => {
                let lines = tail.read(READ_BATCH).map_err(|e| e.to_string())?;
                Ok(Read::Log {
                    lines,
                    ms: now_millis(),
                })
            }
        }
    }

    async fn ack(&mut self, read: &Read) -> Result<(), String> {
        match (self, read) {
            (Feed::Redis(feed), Read::Redis(entries)) => feed.ack(entries).await.map_err(|e| e.to_string()),
            (Feed::Log(tail), Read::Log { lines, .. }) => match lines.last() {
                Some((pos, _)) => tail.commit(*pos).map_err(|e| e.to_string()),
                None => Ok(()),
            },
            _ => Ok(()),
        }
    }
}

/// Rounds (a read, its first attempts and their records) in flight at once. A round waits for its
/// slowest first attempt (at most a second); while it does, the next reads go on, so
/// a healthy receiver's events are not held behind another receiver's slow answer. Reads are
/// acknowledged in the order they were made, each once its round has stored what it must.
const ROUNDS_IN_FLIGHT: usize = 32;

type Round = std::pin::Pin<Box<dyn std::future::Future<Output = Option<Read>> + Send>>;

/// The intake loop: runs until the webhooks handle is dropped.
pub(crate) async fn run(hooks: std::sync::Weak<Webhooks>, signals: std::sync::Arc<super::Signals>, mut feed: Feed) {
    use futures_util::{FutureExt, StreamExt};
    let mut last_reclaim = Instant::now();
    let never = std::future::pending::<()>;
    let mut last_skip: Option<Instant> = None;
    let mut rounds: futures_util::stream::FuturesOrdered<Round> = futures_util::stream::FuturesOrdered::new();
    while !signals.stopping() {
        // Acknowledge the rounds that are done, in order; wait for the oldest when all are busy.
        while let Some(Some(done)) = rounds.next().now_or_never() {
            ack(&mut feed, done).await;
        }
        if rounds.len() >= ROUNDS_IN_FLIGHT {
            if let Some(done) = rounds.next().await {
                ack(&mut feed, done).await;
            }
            continue;
        }
        let Some(h) = hooks.upgrade() else { return };
        let enabled = h.enabled();
        if enabled.is_empty() && rounds.is_empty() {
            if last_skip.is_none_or(|t| t.elapsed() >= IDLE_SKIP_EVERY) {
                feed.skip_if_unwanted(&h).await;
                last_skip = Some(Instant::now());
            }
            drop(h);
            signals.pause(IDLE_CHECK_EVERY, never()).await;
            continue;
        }
        let reclaim = matches!(feed, Feed::Redis(_)) && last_reclaim.elapsed() >= RECLAIM_EVERY;
        if reclaim {
            last_reclaim = Instant::now();
        }
        // The oldest webhook's creation, less a minute for clocks that disagree (earlier events
        // are filtered out by time anyway).
        let since_ms = enabled.iter().map(|w| w.created_at).min().unwrap_or(0) * 1000 - CLOCK_SLACK_MS;
        let read = match feed.read(reclaim, since_ms).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "webhook delivery could not read events; trying again");
                drop(h);
                signals.pause(Duration::from_secs(1), never()).await;
                continue;
            }
        };
        if read.is_empty() {
            drop(h);
            // Nothing new: wait a moment, or for a round to finish.
            if rounds.is_empty() {
                signals.pause(IDLE_PAUSE, never()).await;
            } else {
                tokio::select! {
                    done = rounds.next() => {
                        if let Some(done) = done {
                            ack(&mut feed, done).await;
                        }
                    }
                    () = tokio::time::sleep(IDLE_PAUSE) => {}
                }
            }
            continue;
        }
        h.metrics.events_read.increment(read.len() as u64);
        rounds.push_back(Box::pin(round(h, enabled, read, signals.clone())));
    }
}

/// Acknowledges a round's read (`None`: the round stopped before storing, so it is read again).
async fn ack(feed: &mut Feed, done: Option<Read>) {
    let Some(read) = done else { return };
    if let Err(e) = feed.ack(&read).await {
        // Read again later (by this replica's next read of pending entries, or another's):
        // the deliveries have the same ids, so a queued one is not queued twice (a delivered
        // one is posted again: at least once).
        tracing::warn!(error = %e, "webhook delivery could not acknowledge events");
    }
}

/// One round: the first attempts of what `read` holds for `hooks`, then the record of each
/// (delivered, or queued for a retry). Gives the read back to be acknowledged, or `None` when
/// stopping first.
async fn round(
    h: std::sync::Arc<Webhooks>,
    hooks: Vec<Webhook>,
    read: Read,
    signals: std::sync::Arc<super::Signals>,
) -> Option<Read> {
    let never = std::future::pending::<()>;
    let deliveries = deliveries_for(&hooks, read.events().into_iter(), now_millis());
    // Let the redirects queued meanwhile go first.
    tokio::task::yield_now().await;
    // First attempts, by this replica, now; the read is acknowledged only once each attempt
    // is recorded (delivered) or stored for a retry: a read is never dropped.
    let attempts = h.first_attempts(&hooks, deliveries).await;
    let (retry, done): (Vec<Attempted>, Vec<Attempted>) = attempts.into_iter().partition(|a| a.retry_at_ms.is_some());
    let retry: Vec<WebhookDelivery> = retry.into_iter().map(|a| a.delivery).collect();
    let done: Vec<WebhookDelivery> = done.into_iter().map(|a| a.delivery).collect();
    let mut pause = Duration::from_millis(100);
    loop {
        if signals.stopping() {
            // Not acknowledged: read again after a restart (or by another replica).
            return None;
        }
        let stored = async {
            let queued = h.store.enqueue_deliveries(&retry).await?;
            h.store.record_deliveries(&done).await?;
            Ok::<_, crate::store::StoreError>(queued)
        };
        match stored.await {
            Ok(queued) => {
                h.metrics.enqueued.increment(queued as u64);
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, "webhook deliveries could not be recorded; trying again");
                signals.pause(pause, never()).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
    if !retry.is_empty() {
        h.signals.queued.notify_waiters();
    }
    for failed in done.iter().filter(|d| d.status == DeliveryStatus::Failed) {
        if let Some(hook) = hooks.iter().find(|w| w.id == failed.webhook_id)
            && let Err(e) = h.disable(hook, failed).await
        {
            tracing::warn!(error = %e, "a webhook could not be disabled");
        }
    }
    Some(read)
}

/// An event a webhook wants: its id, type, JSON and time written (Unix ms).
type Wanted<'a> = (String, &'static str, &'a [u8], i64);

/// The deliveries `events` make: for each webhook that wants some of them, one per event, or
/// (batch mode) one per run of up to `batch` events, in the order read.
fn deliveries_for<'a>(
    hooks: &[Webhook],
    events: impl Iterator<Item = FeedEvent<'a>>,
    now: i64,
) -> Vec<WebhookDelivery> {
    let mut wanted: Vec<Vec<Wanted<'a>>> = hooks.iter().map(|_| Vec::new()).collect();
    for e in events {
        let Ok(head) = serde_json::from_slice::<Head>(e.json) else {
            continue;
        };
        let ts = crate::time::parse_rfc3339(&head.ts).unwrap_or(i64::MAX);
        let t = crate::click::EventType::ALL
            .iter()
            .map(|t| t.as_str())
            .find(|t| *t == head.event_type)
            .unwrap_or("event");
        for (i, hook) in hooks.iter().enumerate() {
            if hook.wants(&head.event_type, head.campaign_id.as_deref(), ts) {
                wanted[i].push((head.id.clone(), t, e.json, e.ms));
            }
        }
    }
    let mut out = Vec::new();
    for (hook, events) in hooks.iter().zip(wanted) {
        match hook.batch {
            None => {
                for (id, t, json, ms) in events {
                    let body = String::from_utf8_lossy(json).into_owned();
                    out.push(delivery(hook, t.to_string(), vec![id], body, ms, now));
                }
            }
            Some(n) => {
                for run in events.chunks(n.max(1) as usize) {
                    let ids: Vec<String> = run.iter().map(|(id, ..)| id.clone()).collect();
                    let mut body = String::from("[");
                    for (i, (_, _, json, _)) in run.iter().enumerate() {
                        if i > 0 {
                            body.push(',');
                        }
                        body.push_str(&String::from_utf8_lossy(json));
                    }
                    body.push(']');
                    let ms = run.iter().map(|(.., ms)| *ms).min().unwrap_or(now);
                    out.push(delivery(hook, "batch".into(), ids, body, ms, now));
                }
            }
        }
    }
    out
}

/// A delivery's id: a hash of its webhook and its events, so the same events make the same id.
fn delivery_id(webhook_id: &str, event_ids: &[String]) -> String {
    let mut h = Sha256::new();
    h.update(webhook_id.as_bytes());
    for id in event_ids {
        h.update(b"\n");
        h.update(id.as_bytes());
    }
    format!("dl_{}", hex(&h.finalize()[..12]))
}

fn delivery(
    hook: &Webhook,
    event_type: String,
    event_ids: Vec<String>,
    body: String,
    ms: i64,
    now: i64,
) -> WebhookDelivery {
    WebhookDelivery {
        id: delivery_id(&hook.id, &event_ids),
        webhook_id: hook.id.clone(),
        event_type,
        event_ids,
        body,
        created_ms: now,
        event_ms: ms,
        window_ms: now,
        status: DeliveryStatus::Pending,
        attempts: 0,
        last_attempt_ms: None,
        next_attempt_ms: None,
        response_status: None,
        latency_ms: None,
        error: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(id: &str, events: &[&str], campaign: Option<&str>, batch: Option<u32>) -> Webhook {
        Webhook {
            id: id.into(),
            url: "https://h.example/".into(),
            events: events.iter().map(|e| e.to_string()).collect(),
            campaign_id: campaign.map(str::to_string),
            batch,
            secret: "whsec_x".into(),
            created_at: 1_000,
            disabled_at: None,
            disabled_reason: None,
        }
    }

    fn event(id: &str, t: &str, campaign: &str, ts: i64) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "id": id, "type": t, "ts": crate::time::format_rfc3339(ts), "campaign_id": campaign, "code": "c"
        }))
        .unwrap()
    }

    #[test]
    fn events_go_to_the_webhooks_that_want_them_once_each() {
        let hooks = [
            hook("wh_clicks", &["click"], None, None),
            hook("wh_spring", &["lead", "click"], Some("spring"), None),
            hook("wh_batch", &["click", "lead", "conversion"], None, Some(2)),
        ];
        let events = [
            event("e1", "click", "spring", 2_000),
            event("e2", "lead", "spring", 2_000),
            event("e3", "click", "autumn", 2_000),
            event("e0", "click", "spring", 999), // before every webhook existed
            b"not json".to_vec(),
        ];
        let out = deliveries_for(&hooks, events.iter().map(|j| FeedEvent { json: j, ms: 5 }), 9);
        let got: Vec<(&str, Vec<&str>)> = out
            .iter()
            .map(|d| (d.webhook_id.as_str(), d.event_ids.iter().map(String::as_str).collect()))
            .collect();
        assert_eq!(
            got,
            [
                ("wh_clicks", vec!["e1"]),
                ("wh_clicks", vec!["e3"]),
                ("wh_spring", vec!["e1"]),
                ("wh_spring", vec!["e2"]),
                ("wh_batch", vec!["e1", "e2"]),
                ("wh_batch", vec!["e3"]),
            ]
        );
        // A single event's body is the event as written; a batch is an array of them.
        assert_eq!(out[0].body.as_bytes(), &events[0][..]);
        let arr: serde_json::Value = serde_json::from_str(&out[4].body).unwrap();
        assert_eq!(arr[1]["id"], "e2");
        assert_eq!(out[4].event_type, "batch");
        // The same events make the same ids (a read repeated queues nothing twice).
        let again = deliveries_for(&hooks, events.iter().map(|j| FeedEvent { json: j, ms: 7 }), 11);
        assert_eq!(
            out.iter().map(|d| &d.id).collect::<Vec<_>>(),
            again.iter().map(|d| &d.id).collect::<Vec<_>>()
        );
        assert_ne!(out[0].id, out[2].id, "one event, two webhooks: two deliveries");
    }
}
