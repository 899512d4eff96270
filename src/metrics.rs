//! Every metric, declared once, with its help text. Names are `linkgate_<noun>_<unit|total>`;
//! labels come only from closed enums (route class, status class, cache result, event type, sink),
//! never from a code, URL or address.
//!
//! Metrics go through the `metrics` facade into a `metrics-exporter-prometheus` recorder owned by
//! one [`Metrics`] value per application (no global recorder), so tests can run several servers
//! in one process. Every handle is registered here, once, at start-up: the hot path increments a
//! handle it already holds and never looks a metric up by name.

use http::StatusCode;
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Level, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

/// Which part of the server answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteClass {
    Redirect,
    Api,
    Probe,
    Console,
}

impl RouteClass {
    const ALL: [RouteClass; 4] = [Self::Redirect, Self::Api, Self::Probe, Self::Console];
    fn as_str(self) -> &'static str {
        match self {
            Self::Redirect => "redirect",
            Self::Api => "api",
            Self::Probe => "probe",
            Self::Console => "console",
        }
    }
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// Event types as labels, in the order of `click::EventType::ALL`.
const EVENT_TYPES: [&str; 5] = ["click", "lead", "conversion", "commission", "refund"];

/// Upper bounds of the redirect latency buckets, in seconds: 5 µs to 100 ms.
pub(crate) const REDIRECT_BUCKETS: [f64; 12] = [
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.1,
];
/// Upper bounds of the batch size buckets, in events.
pub(crate) const BATCH_BUCKETS: [f64; 12] = [
    5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10_000.0, 100_000.0,
];

/// Upper bounds of the webhook delivery lag buckets, in seconds: 5 ms to an hour.
pub(crate) const WEBHOOK_LAG_BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 300.0, 3600.0,
];
/// Outcomes of a webhook attempt, as labels (`webhook::Outcome`'s order).
pub(crate) const WEBHOOK_OUTCOMES: [&str; 5] = ["delivered", "rejected", "timeout", "unreachable", "blocked"];

const WEBHOOK_LAG: &str = "linkgate_webhook_delivery_lag_seconds";
const REDIRECT_DURATION: &str = "linkgate_redirect_duration_seconds";
const BATCH_EVENTS: &str = "linkgate_batch_events";

/// Resolver metrics.
#[derive(Clone)]
pub struct CacheMetrics {
    pub hits: Counter,
    pub misses: Counter,
    pub negative_hits: Counter,
    pub store_reads: Counter,
}

/// Event pipeline metrics: the queue, the batcher, the sink and the spool.
#[derive(Clone)]
pub struct EventMetrics {
    pub queue_depth: Gauge,
    pub queue_capacity: Gauge,
    pub overflow: Counter,
    /// Events delivered, by type, in `EventType::ALL` order.
    pub written: [Counter; 5],
    pub batch_events: Histogram,
    pub spooled_batches: Counter,
    pub spool_bytes: Gauge,
    pub replayed: Counter,
    pub leads_opened: Counter,
    pub conversions: Counter,
    pub already_applied: Counter,
    pub resent: Counter,
    pub unreplicated: Counter,
    pub dead_letters: Counter,
    pub revenue: Counter,
    /// Events held in memory: neither delivered nor spooled (the disk full).
    pub held_events: Gauge,
    /// Events dropped past the hold's bound (`reason="disk_full"`) or held at exit
    /// (`reason="shutdown"`).
    pub dropped: [Counter; 2],
}

/// Webhook delivery metrics.
#[derive(Clone)]
pub struct WebhookMetrics {
    /// Attempts by outcome, in [`WEBHOOK_OUTCOMES`] order.
    pub attempts: [Counter; 5],
    pub queue_depth: Gauge,
    pub lag: Histogram,
    pub disabled: Counter,
    pub events_read: Counter,
    pub enqueued: Counter,
}

/// The application's metrics: its recorder and every handle.
pub struct Metrics {
    registry: Registry,
    handle: PrometheusHandle,
    requests: [[Counter; 5]; 4],
    pub redirect_duration: Histogram,
    pub cache: CacheMetrics,
    pub cache_links: Gauge,
    pub store_errors: Counter,
    pub panics: Counter,
    /// Audit entries that could not be written after the change they record.
    pub audit_failures: Counter,
}

/// Registers handles and help texts on one recorder.
struct Registry {
    recorder: PrometheusRecorder,
}

const METADATA: Metadata<'static> = Metadata::new("linkgate", Level::INFO, Some(module_path!()));

impl Registry {
    fn counter(&self, name: &'static str, help: &'static str, labels: &[(&'static str, &'static str)]) -> Counter {
        self.recorder
            .describe_counter(KeyName::from_const_str(name), None, SharedString::const_str(help));
        self.recorder.register_counter(&key(name, labels), &METADATA)
    }

    fn gauge(&self, name: &'static str, help: &'static str) -> Gauge {
        self.recorder
            .describe_gauge(KeyName::from_const_str(name), None, SharedString::const_str(help));
        self.recorder.register_gauge(&key(name, &[]), &METADATA)
    }

    fn histogram(&self, name: &'static str, help: &'static str, unit: Option<Unit>) -> Histogram {
        self.recorder
            .describe_histogram(KeyName::from_const_str(name), unit, SharedString::const_str(help));
        self.recorder.register_histogram(&key(name, &[]), &METADATA)
    }
}

fn key(name: &'static str, labels: &[(&'static str, &'static str)]) -> Key {
    let labels: Vec<Label> = labels.iter().map(|&(k, v)| Label::from_static_parts(k, v)).collect();
    Key::from_parts(name, labels)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every request and cache metric, registered on a new recorder.
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(REDIRECT_DURATION.into()), &REDIRECT_BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(BATCH_EVENTS.into()), &BATCH_BUCKETS))
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(WEBHOOK_LAG.into()), &WEBHOOK_LAG_BUCKETS))
            .expect("bucket lists are not empty")
            .build_recorder();
        let handle = recorder.handle();
        let r = Registry { recorder };
        let requests = RouteClass::ALL.map(|route| {
            STATUS_CLASSES.map(|status| {
                r.counter(
                    "linkgate_requests_total",
                    "Requests answered, by route class and status class.",
                    &[("route", route.as_str()), ("status", status)],
                )
            })
        });
        let lookups = |result| {
            r.counter(
                "linkgate_cache_lookups_total",
                "Redirect lookups by result.",
                &[("result", result)],
            )
        };
        let cache = CacheMetrics {
            hits: lookups("hit"),
            misses: lookups("miss"),
            negative_hits: lookups("negative_hit"),
            store_reads: r.counter("linkgate_store_reads_total", "Store reads made to fill the cache.", &[]),
        };
        Self {
            requests,
            redirect_duration: r.histogram(
                REDIRECT_DURATION,
                "Time from request routed to redirect answer built.",
                Some(Unit::Seconds),
            ),
            cache,
            cache_links: r.gauge("linkgate_cache_links", "Links held in the cache."),
            store_errors: r.counter("linkgate_store_errors_total", "Store operations that failed.", &[]),
            audit_failures: r.counter(
                "linkgate_audit_failures_total",
                "Changes made by hand whose audit entry could not be written (each logged whole).",
                &[],
            ),
            panics: r.counter(
                "linkgate_handler_panics_total",
                "Requests whose handler panicked (answered 500).",
                &[],
            ),
            registry: r,
            handle,
        }
    }

    /// The event pipeline's metrics, registered once when it starts; `sink` names the event sink
    /// (`redis`, `log`) in `linkgate_events_written_total`.
    pub fn events(&self, sink: &'static str) -> EventMetrics {
        let r = &self.registry;
        EventMetrics {
            queue_depth: r.gauge("linkgate_event_queue_depth", "Events waiting for the batcher."),
            queue_capacity: r.gauge("linkgate_event_queue_capacity", "Capacity of the event queue."),
            overflow: r.counter(
                "linkgate_event_overflow_total",
                "Events parked in the overflow list because the queue was full.",
                &[],
            ),
            written: EVENT_TYPES.map(|t| {
                r.counter(
                    "linkgate_events_written_total",
                    "Events delivered, by sink and type.",
                    &[("sink", sink), ("type", t)],
                )
            }),
            batch_events: r.histogram(BATCH_EVENTS, "Events per delivered batch.", None),
            spooled_batches: r.counter(
                "linkgate_spooled_batches_total",
                "Batches written to the spool because the sink failed.",
                &[],
            ),
            spool_bytes: r.gauge("linkgate_spool_bytes", "Bytes in the spool waiting for replay."),
            held_events: r.gauge(
                "linkgate_events_held",
                "Events held in memory because they could be neither delivered nor spooled (the disk full).",
            ),
            dropped: ["disk_full", "shutdown"].map(|reason| {
                r.counter(
                    "linkgate_events_dropped_total",
                    "Events lost: past the in-memory hold's bound while nothing could be written, or still held at exit.",
                    &[("reason", reason)],
                )
            }),
            replayed: r.counter(
                "linkgate_spool_replayed_events_total",
                "Events delivered from the spool.",
                &[],
            ),
            leads_opened: r.counter("linkgate_leads_opened_total", "Lead events delivered.", &[]),
            already_applied: r.counter(
                "linkgate_batches_already_applied_total",
                "Batches sent again (a lost reply, a replay after restart) that had landed before: nothing applied twice.",
                &[],
            ),
            resent: r.counter(
                "linkgate_events_resent_total",
                "Events of batches sent again whose first outcome was unknown: some may be in the stream twice (same ids).",
                &[],
            ),
            unreplicated: r.counter(
                "linkgate_batches_unreplicated_total",
                "Batches that fewer replicas than LINKGATE_REDIS_WAIT_REPLICAS confirmed in time: kept in the spool and sent again.",
                &[],
            ),
            dead_letters: r.counter(
                "linkgate_deadletter_commands_total",
                "Commands the store refused for good, written to deadletter.jsonl (the rest of their batch applied).",
                &[],
            ),
            conversions: r.counter("linkgate_conversions_total", "Conversion events delivered.", &[]),
            revenue: r.counter(
                "linkgate_revenue_minor_total",
                "Revenue of attributed conversions delivered, in minor units.",
                &[],
            ),
        }
    }

    /// Webhook delivery's metrics, registered once when it starts.
    pub fn webhooks(&self) -> WebhookMetrics {
        let r = &self.registry;
        WebhookMetrics {
            attempts: WEBHOOK_OUTCOMES.map(|o| {
                r.counter(
                    "linkgate_webhook_attempts_total",
                    "Webhook delivery attempts by outcome (delivered: a 2xx answer; rejected: another status; timeout; unreachable: DNS, connect, TLS or HTTP failure; blocked: the address is private).",
                    &[("outcome", o)],
                )
            }),
            queue_depth: r.gauge(
                "linkgate_webhook_queue_depth",
                "Webhook deliveries waiting for an attempt or a retry, over every endpoint.",
            ),
            lag: r.histogram(
                WEBHOOK_LAG,
                "Time from an event's write to the durable pipeline to its successful delivery.",
                Some(Unit::Seconds),
            ),
            disabled: r.counter(
                "linkgate_webhooks_disabled_total",
                "Webhooks disabled because a delivery kept failing for the whole retry window.",
                &[],
            ),
            events_read: r.counter(
                "linkgate_webhook_events_read_total",
                "Events read from the durable pipeline by webhook delivery.",
                &[],
            ),
            enqueued: r.counter(
                "linkgate_webhook_deliveries_queued_total",
                "Webhook deliveries whose first attempt failed, queued for retries (one read twice is queued once).",
                &[],
            ),
        }
    }

    /// Counts one answered request.
    #[inline]
    pub fn record(&self, route: RouteClass, status: StatusCode) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.requests[route as usize][class].increment(1);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Drains recorded histogram samples into their buckets (run on a timer, so memory stays
    /// bounded between scrapes).
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }
}
