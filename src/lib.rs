//! linkgate: a short-link redirect and attribution service.
//!
//! The folders follow a tap from the socket down, and every import points down this list (a test,
//! `tests/architecture.rs`, keeps it so):
//!
//! 1. **Request** — [`server`] runs the hyper accept loop on a bound listener, routes each request
//!    by method and path to the public edge ([`redirect`], probes), the `/v1` API ([`api`]) or the
//!    console, serves `/metrics` on the admin listener, and drains on shutdown.
//! 2. **Console** — [`console`]: the pages under `/console`, rendered on the server from the API's
//!    own handlers called in-process as the signed-in key; signed cookie sessions.
//! 3. **Redirect** — [`redirect`] turns the resolved link into a 301/302/307/308, a 410 or a 404,
//!    with the click id ([`link::click_id`]) appended for conversion tracking. A cache hit does no
//!    I/O. The API's handlers ([`api`]) sit beside it.
//! 4. **Application** — [`app`] assembles everything a handler needs from the [`config`]: the
//!    store, the resolver, the click queue and the batcher behind it, the metrics.
//! 5. **Webhooks** — [`webhook`] reads the events back from the durable pipeline (a Redis Stream
//!    consumer group, or the embedded event log), POSTs them signed to the endpoints subscribed to
//!    them, and retries what failed from a queue in the store; never on the redirect path.
//! 6. **Stream** — [`stream`]: one batcher, on a thread of its own, drains the click queue,
//!    encodes each batch's JSON once, claims leads, adds up counters and writes pipelined `XADD`s
//!    (over the stream's shard keys) to Redis on its own connection ([`resp`]), to a Redis Cluster
//!    through redis-rs's cluster client (one pipeline per slot), or to the embedded event log; what
//!    cannot be written goes to the spool and is replayed in order, and what the spool cannot take
//!    either (a full disk) is held in memory, bounded, until it can.
//! 7. **Errors** — [`error`] is the one place errors become HTTP answers: the API's JSON errors and
//!    the edge's 404/410/503 pages. [`limit`] is the API's per-key rate limit.
//! 8. **Click** — [`click`] classifies the visitor (human, link previewer, bot), records the tap as
//!    a [`click::ClickRecord`] and hands it to a bounded lock-free queue ([`click::EventQueue`],
//!    never awaited). It also defines the events consumers read.
//! 9. **Resolve** — [`resolve`] answers "which link is this code?" from a sharded in-memory map. A
//!    miss reads the [`store`] once (concurrent misses coalesce), unknown codes are remembered
//!    briefly, and Redis pub/sub keeps replicas coherent.
//! 10. **Store** — [`store`]: narrow traits (links, attribution records, counters, webhooks,
//!     analytics buckets, SMS messages and the funnel's counts, commission books) and two backends, Redis
//!     (production, shared by replicas; one server or a Redis Cluster) and an embedded redb file
//!     (the default; it reopens itself after an I/O error such as a full disk).
//! 11. **SMS** — [`sms`]: sends, delivery receipts in each provider's own format (the first
//!     terminal receipt decides a message), and the campaign funnel: plain functions.
//! 12. **Analytics** — [`analytics`]: what a tap says (device, OS, browser, in-app app, referer,
//!     province and city from an ip2region database), the buckets a batch adds to (by hour and by
//!     day, per campaign, owner and kind), and the rules of `GET /v1/analytics`: plain functions,
//!     applied by the batcher with the counters.
//! 13. **Commission** — [`commission`]: each level's commission as records and ledger entries in
//!     its partner's book; holds, refunds, clawbacks and payouts as plain decisions over a book,
//!     which the store applies at the version it read.
//! 14. **Attribute** — [`attribution`]: plain records and functions: who becomes a lead, whether a
//!     conversion is attributed, the partner chain and its commission.
//! 15. **Model** — [`config`] reads and validates every setting before a port is bound; [`link`]
//!     holds the Link and its rules (codes, destinations, click ids, API input).
//! 16. **Foundations** — [`time`], [`hash`], [`body`] (the response body), [`resp`] (the RESP
//!     wire), [`tls`] (where Redis is: one server or a cluster's seeds, and what `rediss://`
//!     trusts), [`field`] (one bad field), [`shutdown`] (signals, readiness), [`metrics`] (every
//!     metric, declared once), [`runtime`] (a Tokio runtime on a thread of its own, for the
//!     batcher and webhook delivery).

mod analytics;
mod api;
mod app;
mod attribution;
mod body;
mod click;
mod commission;
mod config;
mod console;
mod error;
mod field;
mod hash;
mod limit;
mod link;
mod metrics;
mod redirect;
mod resolve;
mod resp;
mod runtime;
mod server;
mod shutdown;
mod sms;
mod store;
mod stream;
mod time;
mod tls;
mod webhook;

// The public surface: what the binary, the integration tests, the benches and the load-test
// examples use. Everything else is crate-private (`unreachable_pub` is warned), so the compiler
// reports what nothing calls.
pub use crate::app::App;
pub use crate::click::agent::Agent;
pub use crate::click::event::Queued;
pub use crate::click::event::{ClickRecord, header_json};
pub use crate::click::queue::EventQueue;
pub use crate::config::{Config, LogFormat, VARS, serve_args};
pub use crate::hash::stream_shard;
pub use crate::link::click_id::ClickSigner;
pub use crate::link::code::{InlineCode, generate_codes};
pub use crate::link::{Link, LinkKind, LinkState};
pub use crate::metrics::Metrics;
pub use crate::resolve::{Lookup, Resolver};
pub use crate::server::admin::run as serve_admin;
pub use crate::server::router::route;
pub use crate::server::{http1_builder, run as serve};
pub use crate::shutdown::signal;
pub use crate::store::{EmbeddedStore, Invalidation, LinkStore, RedisStore, Store};
pub use crate::stream::batch::Batch;
pub use crate::stream::batcher::{BatcherParts, Delivery, HoldLimit};
pub use crate::stream::cluster::ClusterStreamSink;
pub use crate::stream::log::Spool;
pub use crate::stream::{Delivered, EventSink, RedisStreamSink, Refused, STREAM_MAXLEN, SinkError, stream_keys};
pub use crate::tls::RedisTls;
