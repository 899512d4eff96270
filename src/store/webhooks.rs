//! Webhook subscriptions and their deliveries: the records and the [`WebhookStore`] trait both
//! backends implement (Redis: `redis/webhooks.rs`; embedded: `embedded/webhooks.rs`).
//!
//! A delivery is one POST to one endpoint: one event, or (batch mode) an array of events; its id
//! is a hash of the two, so reading an event twice (a replica restarted before it acknowledged
//! the read) makes the same delivery. Its first attempt is made by the replica that read it;
//! only when that fails is it stored, in its endpoint's due queue, until a sender claims it for
//! the next attempt. A claim is a lease: the delivery's due time moves `lease` into the future, so
//! a replica that dies mid-POST leaves it to be claimed again once the lease runs out (at least
//! once). Every delivery also goes to its endpoint's log of recent deliveries.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::StoreError;

/// Most webhooks one linkgate holds (every replica keeps them all in memory and polls each).
pub(crate) const MAX_WEBHOOKS: usize = 100;
/// Deliveries of an endpoint kept for `GET /v1/webhooks/{id}/deliveries`, newest first.
pub(crate) const RECENT_DELIVERIES: usize = 100;
/// How long a delivery record is kept after its last change.
pub(crate) const DELIVERY_TTL_SECS: u64 = 7 * 86_400;

/// A subscription: where to POST which events. (`Debug` leaves the secret out.)
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhook {
    pub id: String,
    pub url: String,
    /// `click`, `lead`, `conversion`: the event types posted.
    pub events: Vec<String>,
    /// Only events of this campaign, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign_id: Option<String>,
    /// Batch mode: POST arrays of up to this many events (`None`: one event object per POST).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<u32>,
    /// The HMAC key receivers verify signatures with; shown once, when the webhook is created.
    pub secret: String,
    /// Unix seconds. Events older than their webhook are not posted to it.
    pub created_at: i64,
    /// Set when a delivery kept failing for the whole retry window: nothing more is posted
    /// until a delivery is retried by hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("id", &self.id)
            .field("url", &self.url)
            .field("events", &self.events)
            .field("campaign_id", &self.campaign_id)
            .field("batch", &self.batch)
            .field("secret", &"<redacted>")
            .field("created_at", &self.created_at)
            .field("disabled_at", &self.disabled_at)
            .finish()
    }
}

impl Webhook {
    /// Whether an event of `event_type`, `campaign_id`, at `ts` (Unix seconds) goes to this
    /// webhook.
    pub(crate) fn wants(&self, event_type: &str, campaign_id: Option<&str>, ts: i64) -> bool {
        self.disabled_at.is_none()
            && ts >= self.created_at
            && self.events.iter().any(|e| e == event_type)
            && self.campaign_id.as_deref().is_none_or(|c| Some(c) == campaign_id)
    }
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Waiting for its first attempt or for a retry.
    Pending,
    /// A receiver answered 2xx.
    Delivered,
    /// Retried for the whole retry window without success; its webhook was disabled.
    Failed,
}

/// One POST to one endpoint: its body and its attempts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookDelivery {
    pub id: String,
    pub webhook_id: String,
    /// `click`, `lead`, `conversion`, or `batch`.
    pub event_type: String,
    pub event_ids: Vec<String>,
    /// The request body, exactly as posted: the event object (or an array of them).
    pub body: String,
    /// Unix milliseconds: when the delivery was created, and when the event was written to the
    /// durable pipeline (the Redis Stream entry's time; the delivery's creation in embedded mode).
    pub created_ms: i64,
    pub event_ms: i64,
    /// Start of the retry window: creation, or the last manual retry.
    pub window_ms: i64,
    pub status: DeliveryStatus,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_ms: Option<i64>,
    /// The receiver's last HTTP status, if it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// Why the last attempt failed (connect error, timeout, refused address, status).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What a finished attempt leaves: the updated record, and when to try again (`None`: never,
/// it was delivered or given up).
#[derive(Debug, Clone)]
pub struct Attempted {
    pub delivery: WebhookDelivery,
    pub retry_at_ms: Option<i64>,
}

#[async_trait]
pub trait WebhookStore: Send + Sync + 'static {
    /// Creates or replaces a webhook.
    async fn put_webhook(&self, hook: &Webhook) -> Result<(), StoreError>;
    async fn get_webhook(&self, id: &str) -> Result<Option<Webhook>, StoreError>;
    /// Every webhook, in no particular order.
    async fn list_webhooks(&self) -> Result<Vec<Webhook>, StoreError>;
    /// Deletes the webhook and its queue; `false` when unknown.
    async fn delete_webhook(&self, id: &str) -> Result<bool, StoreError>;

    /// Queues deliveries whose first attempt failed, due at their `next_attempt_ms`. A delivery
    /// whose id is queued or recorded already is left as it is (the same event read twice), so
    /// this is safe to repeat. Returns how many were new.
    async fn enqueue_deliveries(&self, deliveries: &[WebhookDelivery]) -> Result<usize, StoreError>;
    /// Records deliveries whose first attempt succeeded (or failed for good) in their endpoints'
    /// recent-delivery logs; they are not queued.
    async fn record_deliveries(&self, deliveries: &[WebhookDelivery]) -> Result<(), StoreError>;
    /// Claims up to `max` deliveries of `webhook_id` due at `now_ms`, leasing each until
    /// `now_ms + lease_ms` (another replica can claim it again only after that).
    async fn claim_deliveries(
        &self,
        webhook_id: &str,
        now_ms: i64,
        lease_ms: i64,
        max: usize,
    ) -> Result<Vec<WebhookDelivery>, StoreError>;
    /// Records attempts: each record is saved, and queued again at its `retry_at_ms` or taken
    /// off the queue.
    async fn finish_deliveries(&self, attempts: &[Attempted]) -> Result<(), StoreError>;
    /// The endpoint's most recent deliveries, newest first.
    async fn recent_deliveries(&self, webhook_id: &str, limit: usize) -> Result<Vec<WebhookDelivery>, StoreError>;
    async fn get_delivery(&self, webhook_id: &str, delivery_id: &str) -> Result<Option<WebhookDelivery>, StoreError>;
    /// Deliveries of `webhook_id` waiting in its queue (due or leased).
    async fn queued_deliveries(&self, webhook_id: &str) -> Result<u64, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_the_secret() {
        let hook = Webhook {
            id: "wh_1".into(),
            url: "https://h.example/".into(),
            events: vec!["click".into()],
            campaign_id: None,
            batch: None,
            secret: "whsec_topsecret".into(),
            created_at: 0,
            disabled_at: None,
            disabled_reason: None,
        };
        let shown = format!("{hook:?}");
        assert!(shown.contains("wh_1") && !shown.contains("topsecret"), "{shown}");
    }
}
