//! Request: the accept loop, the application state every handler shares, and the router.
//!
//! [`run`] takes an already bound listener and a shutdown future, so `main` binds the configured
//! address and tests bind port 0 and run the very same server.

pub mod admin;
pub mod body;
mod provision;
pub mod router;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

pub use self::body::Body;
use crate::api::limit::RateLimiter;
use crate::config::{ApiKey, Config};
use crate::link::click_id::ClickSigner;
use crate::metrics::RequestMetrics;
use crate::resolve::Resolver;
use crate::shutdown::Readiness;
use crate::store::{EmbeddedStore, RedisStore, Store};
use crate::stream::batcher::BatcherParts;
use crate::stream::log::{EventLog, LOG_ROTATE_BYTES, Spool};
use crate::stream::{EventPipeline, EventSink, LogSink, RedisStreamSink};

/// The error type request bodies convert into.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Largest request head (request line + headers) accepted, in bytes.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most headers in one request.
pub const MAX_HEADERS: usize = 64;
/// A client has this long to send its request head (slowloris guard).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything a handler needs, built once at start-up.
pub struct App {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub resolver: Arc<Resolver>,
    pub signer: ClickSigner,
    pub api_keys: Vec<ApiKey>,
    /// `LINKGATE_API_RATE_LIMIT`, when set.
    pub rate_limiter: Option<RateLimiter>,
    pub readiness: Readiness,
    /// Where taps, leads and conversions go; `None` only in benchmarks that measure the redirect
    /// without recording.
    pub events: Option<Arc<EventPipeline>>,
    pub metrics: RequestMetrics,
}

impl App {
    /// Opens the store and event sink named by the config, provisions embedded-mode secrets and
    /// starts the batcher. Must run inside a Tokio runtime.
    pub async fn build(config: Config) -> anyhow::Result<Arc<Self>> {
        let (store, sink): (Arc<dyn Store>, Arc<dyn EventSink>) = match &config.redis_url {
            Some(url) => {
                let redis = Arc::new(RedisStore::connect(url).await?);
                let sink = RedisStreamSink::new(url, &config.stream, config.stream_maxlen);
                (redis, Arc::new(sink))
            }
            None => {
                let embedded = Arc::new(EmbeddedStore::open(&config.data_dir)?);
                let log = EventLog::open(&config.data_dir, LOG_ROTATE_BYTES)?;
                let sink = LogSink {
                    log: Arc::new(std::sync::Mutex::new(log)),
                    store: embedded.clone(),
                };
                (embedded, Arc::new(sink))
            }
        };
        let api_keys = provision::api_keys(&config)?;
        let click_secret = provision::click_secret(&config)?;
        let spool = Spool::open(&config.data_dir)?;
        let mut app = Self::assemble(config, store, api_keys, &click_secret);
        app.events = Some(EventPipeline::start(BatcherParts {
            sink,
            store: app.store.clone(),
            resolver: app.resolver.clone(),
            spool,
            ip_secret: click_secret,
        }));
        Ok(Arc::new(app))
    }

    /// An app without event recording (benchmarks of the bare redirect).
    pub fn assemble(config: Config, store: Arc<dyn Store>, api_keys: Vec<ApiKey>, click_secret: &[u8]) -> Self {
        let app = Self {
            resolver: Resolver::new(store.clone()),
            store,
            signer: ClickSigner::new(click_secret),
            api_keys,
            rate_limiter: config.api_rate_limit.map(RateLimiter::new),
            readiness: Readiness::default(),
            events: None,
            metrics: RequestMetrics::default(),
            config,
        };
        app.readiness.set(true);
        app
    }
}

/// The HTTP/1 connection settings of the public listener: bounded heads, a slowloris guard,
/// keep-alive. Public so `examples/bare_302.rs`, the stack-only baseline of `loadtest/compare`,
/// runs with exactly the same ones.
pub fn http1_builder() -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS)
        .keep_alive(true);
    builder
}

/// Serves `listener` until `shutdown` resolves, then drains: readiness off, stop accepting, let
/// in-flight requests finish within the configured drain deadline.
pub async fn run(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let graceful = GracefulShutdown::new();
    let builder = http1_builder();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let app = app.clone();
                let svc = service_fn(move |req| {
                    let app = app.clone();
                    async move { Ok::<_, std::convert::Infallible>(router::route(&app, req, Some(peer.ip())).await) }
                });
                let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), svc));
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    app.readiness.set(false);
    drop(listener);
    let deadline = app.config.drain_timeout;
    let started = std::time::Instant::now();
    if tokio::time::timeout(deadline, graceful.shutdown()).await.is_err() {
        tracing::warn!(?deadline, "drain deadline passed with connections still open");
    }
    // Every answered request has queued its event by now: flush them to the sink or the spool.
    if let Some(events) = &app.events {
        let left = deadline.saturating_sub(started.elapsed()).max(Duration::from_secs(1));
        if !events.shutdown(left).await {
            tracing::error!("events were still being flushed at the drain deadline");
        }
    }
    Ok(())
}
