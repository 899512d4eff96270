//! The hot path's hand-off: a bounded lock-free queue between the redirect (and the API) and the
//! batcher that delivers events downstream ([`crate::stream`]).
//!
//! [`EventQueue::try_send`] never waits and never wakes anyone: it is one push onto a lock-free
//! bounded queue. When the queue is full the event is parked in an overflow list that the batcher
//! takes with its next batch, so a burst costs memory, never an event.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crossbeam_queue::ArrayQueue;
use tokio::sync::Notify;

use super::Queued;
use crate::metrics::EventMetrics;

/// Capacity of the queue between the redirect path and the batcher.
pub(crate) const QUEUE_CAPACITY: usize = 65_536;

pub struct EventQueue {
    queue: ArrayQueue<Queued>,
    overflow: Mutex<VecDeque<Queued>>,
    /// Events ever parked in the overflow list (checked before locking it).
    overflowed: AtomicU64,
    closing: AtomicBool,
    wake: Notify,
    metrics: EventMetrics,
    /// Events the batcher holds in memory, neither delivered nor spooled.
    held: AtomicU64,
    /// The batcher's last delivery was refused by a store that is up but takes no writes
    /// ([`crate::stream::SinkError::refuses_writes`]).
    failing: AtomicBool,
}

impl EventQueue {
    pub fn new(metrics: EventMetrics) -> Self {
        metrics.queue_capacity.set(QUEUE_CAPACITY as f64);
        Self {
            queue: ArrayQueue::new(QUEUE_CAPACITY),
            overflow: Mutex::new(VecDeque::new()),
            overflowed: AtomicU64::new(0),
            closing: AtomicBool::new(false),
            wake: Notify::new(),
            metrics,
            held: AtomicU64::new(0),
            failing: AtomicBool::new(false),
        }
    }

    /// Whether accepted events are being written: nothing held in memory, and the last delivery
    /// was not refused for want of room (readiness).
    pub fn writing(&self) -> bool {
        self.held.load(Ordering::Relaxed) == 0 && !self.failing.load(Ordering::Relaxed)
    }

    /// Events held in memory.
    pub(crate) fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    pub(crate) fn set_held(&self, events: u64) {
        self.held.store(events, Ordering::Relaxed);
        self.metrics.held_events.set(events as f64);
    }

    pub(crate) fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::Relaxed);
    }

    /// Queues an event without waiting.
    #[inline]
    pub fn try_send(&self, event: Queued) {
        if let Err(event) = self.queue.push(event) {
            self.overflowed.fetch_add(1, Ordering::Relaxed);
            self.metrics.overflow.increment(1);
            self.overflow.lock().unwrap_or_else(|e| e.into_inner()).push_back(event);
        }
    }

    /// Events that ever went through the overflow list.
    pub fn overflowed(&self) -> u64 {
        self.overflowed.load(Ordering::Relaxed)
    }

    /// Events waiting in the queue.
    pub fn depth(&self) -> usize {
        self.queue.len()
    }

    /// Sets the depth gauge to the queue's depth now (before a scrape).
    pub fn sample_depth(&self) {
        self.metrics.queue_depth.set(self.depth() as f64);
    }

    /// Moves up to `max` queued events into `batch`, then what is parked in the overflow list.
    pub fn take(&self, max: usize, batch: &mut Vec<Queued>) {
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
        self.sample_depth();
    }

    /// Tells the consumer that nothing more will be sent: it drains what is queued and stops.
    pub fn close(&self) {
        self.closing.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Resolves when [`EventQueue::close`] is called (or was called before).
    pub async fn closed(&self) {
        self.wake.notified().await;
    }
}
