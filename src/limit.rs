//! Per-key rate limit of the API (`LINKGATE_API_RATE_LIMIT`, requests per second; off when unset).
//!
//! A token bucket per API key holding one second's worth of requests: a client may burst up to
//! the limit, then gets `429 rate_limited` with `Retry-After` until tokens refill. Each replica
//! counts on its own (like `max_clicks`), so the limit a client sees across N replicas behind a
//! load balancer is up to N times the setting. The public edge (`GET /{code}`) is never limited:
//! a tap must always redirect, and unknown-code floods are absorbed by the negative cache.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::config::ApiKey;
use crate::error::{ApiError, ErrorCode};

pub struct RateLimiter {
    per_sec: f64,
    /// Most requests a bucket holds (a burst).
    burst: f64,
    /// What the refusal says is counted.
    what: &'static str,
    buckets: Mutex<HashMap<[u8; 32], Bucket>>,
}

/// Buckets kept before full ones (idle clients) are forgotten: bounds the memory a flood of
/// distinct clients can take.
const MAX_BUCKETS: usize = 100_000;

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    pub fn new(per_sec: u32) -> Self {
        let per_sec = f64::from(per_sec.max(1));
        Self::with_burst(per_sec, per_sec, "requests per second with this key")
    }

    /// A bucket of `burst` requests per client refilled at `per_sec`; `what` names the count in
    /// the refusal.
    pub fn with_burst(burst: f64, per_sec: f64, what: &'static str) -> Self {
        Self {
            per_sec,
            burst,
            what,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from `key`'s bucket, or says how many seconds until one is available.
    pub fn check(&self, key: &ApiKey) -> Result<(), ApiError> {
        self.take(key.hash, Instant::now())
    }

    /// Takes one request from the bucket of the client `id` (a hash, never the raw value).
    pub(crate) fn take(&self, id: [u8; 32], now: Instant) -> Result<(), ApiError> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(&id) {
            let (per_sec, burst) = (self.per_sec, self.burst);
            buckets.retain(|_, b| b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * per_sec < burst);
        }
        let b = buckets.entry(id).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let refill = now.saturating_duration_since(b.at).as_secs_f64() * self.per_sec;
        b.tokens = (b.tokens + refill).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Ok(());
        }
        let wait = ((1.0 - b.tokens) / self.per_sec).ceil().max(1.0) as u64;
        let mut e = ApiError::new(
            ErrorCode::RateLimited,
            format!("more than {} {}; retry in {wait} s", self.burst, self.what),
        );
        e.retry_after = Some(wait);
        Err(e)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_of_one_seconds_worth_then_refill_at_the_rate() {
        let l = RateLimiter::new(10);
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let t0 = Instant::now();
        for _ in 0..10 {
            assert!(l.take(a, t0).is_ok());
        }
        let refused = l.take(a, t0).unwrap_err();
        assert_eq!(refused.code, ErrorCode::RateLimited);
        assert_eq!(refused.retry_after, Some(1));
        assert!(l.take(b, t0).is_ok(), "keys have their own buckets");
        // 100 ms later one token is back, and only one.
        let t1 = t0 + Duration::from_millis(100);
        assert!(l.take(a, t1).is_ok());
        assert!(l.take(a, t1).is_err());
        // Idle for long, the bucket holds one second's worth again, not more.
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!((0..20).filter(|_| l.take(a, t2).is_ok()).count(), 10);
    }
}
