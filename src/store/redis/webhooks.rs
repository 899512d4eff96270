//! Webhooks in Redis. Keys (every key of one endpoint shares its hash tag, so a script or `MGET`
//! over them stays in one Cluster slot):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `lg:webhooks` | hash | webhook id → webhook JSON |
//! | `lg:wh:{<id>}:due` | zset | delivery id → when it is due (Unix ms; a claim moves it a lease ahead) |
//! | `lg:wh:{<id>}:d:<delivery>` | string | a queued delivery's record (its first attempt failed), `EX` 7 days from its last change |
//! | `lg:wh:{<id>}:recent` | list | the newest deliveries' records as they were first attempted or queued (`LPUSH`, trimmed to 100); a queued one's current state is its `d:` key |

use async_trait::async_trait;
use redis::Value;

use super::*;
use crate::store::webhooks::{Attempted, DELIVERY_TTL_SECS, RECENT_DELIVERIES, Webhook, WebhookDelivery, WebhookStore};

const WEBHOOKS_KEY: &str = "lg:webhooks";

fn due_key(webhook: &str) -> String {
    format!("lg:wh:{{{}}}:due", esc(webhook))
}
fn delivery_key(webhook: &str, delivery: &str) -> String {
    format!("lg:wh:{{{}}}:d:{}", esc(webhook), esc(delivery))
}
fn recent_key(webhook: &str) -> String {
    format!("lg:wh:{{{}}}:recent", esc(webhook))
}

/// Queues a delivery unless its id exists: the record (`SET NX EX`), then its place in the due
/// queue and the recent list. KEYS: record, due, recent; ARGV: record, ttl, due ms, id, recent cap.
const ENQUEUE: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
  redis.call('LPUSH', KEYS[3], ARGV[1])
  redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[5]) - 1)
  return 1
end
return 0";

/// Claims due deliveries: each id due by ARGV[1] moves to ARGV[1] + ARGV[2]. KEYS: due;
/// ARGV: now ms, lease ms, max.
const CLAIM: &str = r"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
local lease_end = tonumber(ARGV[1]) + tonumber(ARGV[2])
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], lease_end, id) end
return ids";

fn eval(script: &str, keys: &[String]) -> redis::Cmd {
    let mut c = redis::cmd("EVAL");
    c.arg(script).arg(keys.len());
    for k in keys {
        c.arg(k);
    }
    c
}

impl RedisStore {
    /// The records of `ids` (one `MGET`; missing ones skipped).
    async fn deliveries(&self, webhook_id: &str, ids: &[String]) -> Result<Vec<WebhookDelivery>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut mget = redis::cmd("MGET");
        for id in ids {
            mget.arg(delivery_key(webhook_id, id));
        }
        let values: Vec<Option<Vec<u8>>> = mget.query_async(&mut self.conn().await?).await?;
        let mut out = Vec::with_capacity(ids.len());
        for (id, v) in ids.iter().zip(values) {
            if let Some(b) = v {
                out.push(decode(id, &b)?);
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl WebhookStore for RedisStore {
    async fn put_webhook(&self, hook: &Webhook) -> Result<(), StoreError> {
        let _: () = self.conn().await?.hset(WEBHOOKS_KEY, &hook.id, encode(hook)).await?;
        Ok(())
    }

    async fn get_webhook(&self, id: &str) -> Result<Option<Webhook>, StoreError> {
        let bytes: Option<Vec<u8>> = self.conn().await?.hget(WEBHOOKS_KEY, id).await?;
        bytes.map(|b| decode(id, &b)).transpose()
    }

    async fn list_webhooks(&self) -> Result<Vec<Webhook>, StoreError> {
        let all: Vec<(String, Vec<u8>)> = self.conn().await?.hgetall(WEBHOOKS_KEY).await?;
        all.into_iter().map(|(id, b)| decode(&id, &b)).collect()
    }

    async fn delete_webhook(&self, id: &str) -> Result<bool, StoreError> {
        let removed: i64 = self.conn().await?.hdel(WEBHOOKS_KEY, id).await?;
        let _: () = self.conn().await?.del(&[due_key(id), recent_key(id)]).await?;
        Ok(removed > 0)
    }

    async fn enqueue_deliveries(&self, deliveries: &[WebhookDelivery]) -> Result<usize, StoreError> {
        let cmds = deliveries
            .iter()
            .map(|d| {
                let keys = [
                    delivery_key(&d.webhook_id, &d.id),
                    due_key(&d.webhook_id),
                    recent_key(&d.webhook_id),
                ];
                let mut c = eval(ENQUEUE, &keys);
                c.arg(encode(d))
                    .arg(DELIVERY_TTL_SECS)
                    .arg(d.next_attempt_ms.unwrap_or(d.created_ms))
                    .arg(&d.id)
                    .arg(RECENT_DELIVERIES);
                c
            })
            .collect();
        let replies = self.run_chunked(cmds).await?;
        Ok(replies.iter().filter(|v| matches!(v, Value::Int(1))).count())
    }

    async fn claim_deliveries(
        &self,
        webhook_id: &str,
        now_ms: i64,
        lease_ms: i64,
        max: usize,
    ) -> Result<Vec<WebhookDelivery>, StoreError> {
        let mut claim = eval(CLAIM, &[due_key(webhook_id)]);
        claim.arg(now_ms).arg(lease_ms).arg(max);
        let ids: Vec<String> = claim.query_async(&mut self.conn().await?).await?;
        let found = self.deliveries(webhook_id, &ids).await?;
        if found.len() < ids.len() {
            // Records that expired while queued (a queue older than the record's TTL): drop them.
            let mut zrem = redis::cmd("ZREM");
            zrem.arg(due_key(webhook_id));
            for id in ids.iter().filter(|id| !found.iter().any(|d| &d.id == *id)) {
                zrem.arg(id);
            }
            let _: Value = zrem.query_async(&mut self.conn().await?).await?;
        }
        Ok(found)
    }

    async fn finish_deliveries(&self, attempts: &[Attempted]) -> Result<(), StoreError> {
        let mut cmds = Vec::with_capacity(2 * attempts.len());
        for a in attempts {
            let d = &a.delivery;
            cmds.push(
                redis::cmd("SET")
                    .arg(delivery_key(&d.webhook_id, &d.id))
                    .arg(encode(d))
                    .arg("EX")
                    .arg(DELIVERY_TTL_SECS)
                    .clone(),
            );
            cmds.push(match a.retry_at_ms {
                Some(at) => redis::cmd("ZADD")
                    .arg(due_key(&d.webhook_id))
                    .arg(at)
                    .arg(&d.id)
                    .clone(),
                None => redis::cmd("ZREM").arg(due_key(&d.webhook_id)).arg(&d.id).clone(),
            });
        }
        self.run_chunked(cmds).await?;
        Ok(())
    }

    async fn record_deliveries(&self, deliveries: &[WebhookDelivery]) -> Result<(), StoreError> {
        let mut by_hook: Vec<(&str, Vec<&WebhookDelivery>)> = Vec::new();
        for d in deliveries {
            match by_hook.iter_mut().find(|(w, _)| *w == d.webhook_id) {
                Some((_, list)) => list.push(d),
                None => by_hook.push((&d.webhook_id, vec![d])),
            }
        }
        let mut cmds = Vec::new();
        for (hook, list) in by_hook {
            let newest = &list[list.len().saturating_sub(RECENT_DELIVERIES)..];
            let mut push = redis::cmd("LPUSH");
            push.arg(recent_key(hook));
            for d in newest {
                push.arg(encode(*d));
            }
            cmds.push(push);
            cmds.push(
                redis::cmd("LTRIM")
                    .arg(recent_key(hook))
                    .arg(0)
                    .arg(RECENT_DELIVERIES - 1)
                    .clone(),
            );
        }
        self.run_chunked(cmds).await?;
        Ok(())
    }

    /// The recent list's records, each queued one in its current state.
    async fn recent_deliveries(&self, webhook_id: &str, limit: usize) -> Result<Vec<WebhookDelivery>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let items: Vec<Vec<u8>> = self
            .conn()
            .await?
            .lrange(recent_key(webhook_id), 0, limit as isize - 1)
            .await?;
        let mut out: Vec<WebhookDelivery> = items.iter().map(|b| decode(webhook_id, b)).collect::<Result<_, _>>()?;
        let queued: Vec<String> = out
            .iter()
            .filter(|d| d.status == crate::store::DeliveryStatus::Pending)
            .map(|d| d.id.clone())
            .collect();
        for live in self.deliveries(webhook_id, &queued).await? {
            if let Some(d) = out.iter_mut().find(|d| d.id == live.id) {
                *d = live;
            }
        }
        Ok(out)
    }

    async fn get_delivery(&self, webhook_id: &str, delivery_id: &str) -> Result<Option<WebhookDelivery>, StoreError> {
        if let Some(d) = self
            .get_json(delivery_key(webhook_id, delivery_id), delivery_id)
            .await?
        {
            return Ok(Some(d));
        }
        let recent = self.recent_deliveries(webhook_id, RECENT_DELIVERIES).await?;
        Ok(recent.into_iter().find(|d| d.id == delivery_id))
    }

    async fn queued_deliveries(&self, webhook_id: &str) -> Result<u64, StoreError> {
        Ok(self.conn().await?.zcard(due_key(webhook_id)).await?)
    }
}
