//! linkgate: a short-link redirect and attribution service.
//!
//! A tap travels through the modules top to bottom:
//!
//! 1. **Request** — [`server`] runs the hyper accept loop on a bound listener and routes each request
//!    by method and path: the public edge (`GET /{code}`, probes) or the `/v1` API ([`api`]).
//! 2. **Resolve** — [`resolve`] answers "which link is this code?" from a sharded in-memory map
//!    (64 shards of open-addressing tables keyed by the xxh3 hash of the code). A miss reads the
//!    [`store`] once (concurrent misses coalesce), unknown codes are remembered briefly, and Redis
//!    pub/sub keeps replicas coherent.
//! 3. **Redirect** — [`redirect`] turns the resolved link into a 301/302/307/308, a 410 or a 404,
//!    with the click id ([`link::click_id`]) appended for conversion tracking. A cache hit does no I/O.
//! 4. **Click** — [`click`] classifies the visitor (human, link previewer, bot) and records the tap
//!    as a [`click::ClickRecord`] pushed onto a lock-free queue (never awaited).
//! 5. **Attribute** — [`attribution`]: leads on the first human tap of a personalised link,
//!    partner chains, campaigns, conversions and their commission.
//! 6. **Stream** — [`stream`]: one batcher drains the queue, encodes each batch's JSON once
//!    ([`stream::batch`]), claims leads, adds up counters and writes pipelined `XADD`s to Redis on
//!    its own connection ([`stream::resp`]) or to the embedded event log; what cannot be written
//!    goes to the spool and is replayed in order.
//!
//! Links are minted through the API ([`api::links`]), validated by [`link`] (codes, destinations),
//! and written to one of two [`store`] backends: Redis (production, shared by replicas) or an
//! embedded redb file (the default, so `cargo run` serves at once).
//!
//! [`config`] reads and validates every setting before a port is bound; [`error`] is the single
//! place that turns errors into JSON HTTP answers; [`metrics`] declares every metric;
//! [`shutdown`] owns the drain order.

pub mod api;
pub mod attribution;
pub mod click;
pub mod config;
pub mod error;
pub mod link;
pub mod metrics;
pub mod redirect;
pub mod resolve;
pub mod server;
pub mod shutdown;
pub mod store;
pub mod stream;
pub mod time;
