//! Every metric, declared once, with its help text. Names are `linkgate_<noun>_<unit|total>`;
//! labels come only from closed enums (route class, status class, cache result, event type, sink),
//! never from a code, URL or address.
//!
//! Metrics are plain atomics owned by the [`App`] (and its resolver and event
//! pipeline), rendered in the Prometheus text format by [`render`] on the admin listener. That keeps
//! the hot path at one relaxed atomic add per counter, with no registry lookup, and lets tests run
//! several servers in one process without sharing a global recorder.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use http::StatusCode;

use crate::server::App;

/// Which part of the server answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteClass {
    Redirect,
    Api,
    Probe,
}

impl RouteClass {
    const ALL: [RouteClass; 3] = [Self::Redirect, Self::Api, Self::Probe];
    fn as_str(self) -> &'static str {
        match self {
            Self::Redirect => "redirect",
            Self::Api => "api",
            Self::Probe => "probe",
        }
    }
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Upper bounds of the redirect latency buckets, in microseconds.
pub const LATENCY_BUCKETS_US: [u64; 12] = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 100_000];

/// A fixed-bucket histogram over [`LATENCY_BUCKETS_US`] (microseconds for latencies, events for
/// batch sizes); `render` scales the bounds to the exposed unit.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len()],
    count: AtomicU64,
    sum: AtomicU64,
}

impl Histogram {
    #[inline]
    pub fn observe(&self, value: u64) {
        if let Some(i) = LATENCY_BUCKETS_US.iter().position(|&b| value <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }
}

/// Request metrics of one server.
#[derive(Debug, Default)]
pub struct RequestMetrics {
    requests: [[AtomicU64; 5]; 3],
    pub redirect_latency: Histogram,
}

impl RequestMetrics {
    #[inline]
    pub fn record(&self, route: RouteClass, status: StatusCode) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.requests[route as usize][class].fetch_add(1, Ordering::Relaxed);
    }

    pub fn requests(&self, route: RouteClass, status_class: usize) -> u64 {
        self.requests[route as usize][status_class - 1].load(Ordering::Relaxed)
    }
}

/// Resolver metrics.
#[derive(Debug, Default)]
pub struct CacheMetrics {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub negative_hits: AtomicU64,
    pub store_reads: AtomicU64,
}

/// Store failures seen anywhere (API, cache fills, batcher).
pub static STORE_ERRORS: AtomicU64 = AtomicU64::new(0);

pub(crate) fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
}

pub(crate) fn gauge(out: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
}

pub(crate) fn histogram(out: &mut String, name: &str, help: &str, h: &Histogram, scale: f64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    let mut cumulative = 0;
    for (i, le) in LATENCY_BUCKETS_US.iter().enumerate() {
        cumulative += h.buckets[i].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {cumulative}", *le as f64 * scale);
    }
    let count = h.count.load(Ordering::Relaxed);
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum {}", h.sum.load(Ordering::Relaxed) as f64 * scale);
    let _ = writeln!(out, "{name}_count {count}");
}

/// The Prometheus text exposition of `app`'s metrics.
pub fn render(app: &App) -> String {
    let mut out = String::with_capacity(8192);
    let m = &app.metrics;
    let _ = writeln!(
        out,
        "# HELP linkgate_requests_total Requests answered, by route class and status class.\n# TYPE linkgate_requests_total counter"
    );
    for route in RouteClass::ALL {
        for (i, class) in STATUS_CLASSES.iter().enumerate() {
            let v = m.requests(route, i + 1);
            let _ = writeln!(
                out,
                "linkgate_requests_total{{route=\"{}\",status=\"{class}\"}} {v}",
                route.as_str()
            );
        }
    }
    histogram(
        &mut out,
        "linkgate_redirect_duration_seconds",
        "Time from request routed to redirect answer built.",
        &m.redirect_latency,
        1e-6,
    );
    let c = app.resolver.metrics();
    let _ = writeln!(
        out,
        "# HELP linkgate_cache_lookups_total Redirect lookups by result.\n# TYPE linkgate_cache_lookups_total counter"
    );
    for (result, v) in [
        ("hit", &c.hits),
        ("miss", &c.misses),
        ("negative_hit", &c.negative_hits),
    ] {
        let _ = writeln!(
            out,
            "linkgate_cache_lookups_total{{result=\"{result}\"}} {}",
            v.load(Ordering::Relaxed)
        );
    }
    counter(
        &mut out,
        "linkgate_store_reads_total",
        "Store reads made to fill the cache.",
        c.store_reads.load(Ordering::Relaxed),
    );
    gauge(
        &mut out,
        "linkgate_cache_links",
        "Links held in the cache.",
        app.resolver.cached_links() as u64,
    );
    counter(
        &mut out,
        "linkgate_store_errors_total",
        "Store operations that failed.",
        STORE_ERRORS.load(Ordering::Relaxed),
    );
    if let Some(p) = &app.events {
        p.render_metrics(&mut out);
    }
    out
}
