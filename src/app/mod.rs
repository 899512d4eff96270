//! The application: everything a handler needs, assembled once from a [`Config`].
//!
//! [`App::build`] opens the store and the event sink the config names (Redis, or the embedded
//! redb file and event log), provisions embedded-mode secrets ([`provision`]), registers the
//! metrics and starts the batcher and webhook delivery ([`crate::webhook`]). Handlers receive `&App`; the server only accepts, routes and
//! drains.

mod provision;

use std::sync::Arc;
use std::time::Duration;

use crate::analytics::Rules;
use crate::click::EventQueue;
use crate::config::{ApiKey, Config};
use crate::limit::RateLimiter;
use crate::link::click_id::ClickSigner;
use crate::metrics::Metrics;
use crate::resolve::Resolver;
use crate::shutdown::Readiness;
use crate::sms::PhoneHasher;
use crate::store::redis::feed::RedisFeed;
use crate::store::{EmbeddedStore, RedisStore, Store};
use crate::stream::batcher::HoldLimit;
use crate::stream::cluster::ClusterStreamSink;
use crate::stream::log::{EventLog, LOG_ROTATE_BYTES, LogTail, Spool};
use crate::stream::{BatcherParts, Delivery, EventSink, LogSink, RedisStreamSink};
use crate::tls::RedisTarget;
use crate::webhook::{Feed, Webhooks};

/// How often histogram samples are folded into their buckets between scrapes.
pub(crate) const METRICS_UPKEEP_INTERVAL: Duration = Duration::from_secs(5);
/// How often the embedded store drops analytics buckets past their retention (Redis expires
/// them by itself).
pub(crate) const ANALYTICS_SWEEP_INTERVAL: Duration = Duration::from_secs(3600);

/// How long after start the first sweep runs: not at once, so a store closed and opened again
/// in the same process (the tests' restarts) never finds a sweep still holding it.
pub(crate) const ANALYTICS_FIRST_SWEEP: Duration = Duration::from_secs(60);

/// A background task stopped when its owner (the [`App`]) is dropped.
pub(crate) struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sweeps the embedded store's analytics every [`ANALYTICS_SWEEP_INTERVAL`], the first time
/// [`ANALYTICS_FIRST_SWEEP`] after start; holds the store only while a sweep runs.
fn sweep_analytics(store: Arc<EmbeddedStore>, rules: Arc<Rules>) -> AbortOnDrop {
    let store = Arc::downgrade(&store);
    AbortOnDrop(tokio::spawn(async move {
        let first = tokio::time::Instant::now() + ANALYTICS_FIRST_SWEEP;
        let mut tick = tokio::time::interval_at(first, ANALYTICS_SWEEP_INTERVAL);
        loop {
            tick.tick().await;
            let Some(store) = store.upgrade() else { break };
            match store.sweep_analytics(&rules, crate::time::now_secs()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(rows = n, "analytics past their retention removed"),
                Err(e) => tracing::warn!(error = %e, "analytics sweep failed"),
            }
        }
    }))
}

/// Console sign-in attempts one address may make in a minute.
const LOGIN_BURST: f64 = 10.0;

/// A key for one purpose, derived from a secret (HMAC-SHA256 of the purpose).
fn derive_key(secret: &[u8], purpose: &[u8]) -> [u8; 32] {
    use hmac::{Hmac, KeyInit, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes keys of any size");
    mac.update(purpose);
    mac.finalize().into_bytes().into()
}

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
    pub events: Option<Arc<EventQueue>>,
    /// The batcher draining `events`.
    delivery: Option<Delivery>,
    /// Webhook delivery (`None` in benchmarks built with [`App::assemble`]).
    pub(crate) webhooks: Option<Arc<Webhooks>>,
    pub metrics: Arc<Metrics>,
    /// How the batcher classifies and buckets analytics, and how `/v1/analytics` reads them.
    pub(crate) rules: Arc<Rules>,
    /// Salted hashes of the phone numbers SMS receipts carry.
    pub(crate) phones: PhoneHasher,
    /// The key console session cookies are signed with: derived from the click secret, so every
    /// replica accepts every replica's cookies and no second secret has to be shared.
    pub(crate) console_secret: [u8; 32],
    /// Console sign-in attempts per client address (hashed).
    pub(crate) logins: RateLimiter,
    /// The embedded store's retention sweep (stopped with the app).
    _sweeper: Option<AbortOnDrop>,
}

impl App {
    /// Opens the store and event sink named by the config, provisions embedded-mode secrets and
    /// starts the batcher. Must run inside a Tokio runtime.
    pub async fn build(config: Config) -> anyhow::Result<Arc<Self>> {
        let mut rules = Rules::from_settings(&config.analytics);
        rules
            .load_geo(&config.analytics)
            .map_err(|e| anyhow::anyhow!("LINKGATE_GEO_DB: {e}"))?;
        let rules = Arc::new(rules);
        let mut sweeper = None;
        let consumer = format!("replica-{}", crate::link::code::generate_codes(1).concat());
        let (store, sink, feed): (Arc<dyn Store>, Arc<dyn EventSink>, Feed) = match &config.redis_url {
            Some(url) => {
                let redis = Arc::new(RedisStore::connect_with(url, &config.redis_tls).await?);
                let streams = crate::stream::stream_keys(&config.stream, config.stream_shards);
                let feed = Feed::Redis(RedisFeed::new(redis.clone(), streams, consumer));
                let sink: Arc<dyn EventSink> = match RedisTarget::parse(url).map_err(anyhow::Error::msg)? {
                    RedisTarget::Single(url) => Arc::new(
                        RedisStreamSink::sharded(&url, &config.stream, config.stream_shards, config.stream_maxlen)
                            .with_tls(config.redis_tls.clone())
                            .with_wait(config.redis_wait_replicas, config.redis_wait_timeout),
                    ),
                    RedisTarget::Cluster(nodes) => Arc::new(
                        ClusterStreamSink::new(
                            &nodes,
                            &config.redis_tls,
                            &config.stream,
                            config.stream_shards,
                            config.stream_maxlen,
                        )?
                        .with_wait(config.redis_wait_replicas, config.redis_wait_timeout),
                    ),
                };
                (redis, sink, feed)
            }
            None => {
                let embedded = Arc::new(EmbeddedStore::open(&config.data_dir)?);
                let log = EventLog::open(&config.data_dir, LOG_ROTATE_BYTES)?;
                let sink = LogSink::new(log, embedded.clone());
                let feed = Feed::Log(LogTail::open(&config.data_dir)?);
                sweeper = Some(sweep_analytics(embedded.clone(), rules.clone()));
                (embedded, Arc::new(sink), feed)
            }
        };
        let api_keys = provision::api_keys(&config)?;
        let click_secret = provision::click_secret(&config)?;
        let spool = Spool::open(&config.data_dir)?;
        let mut app = Self::assemble(config, store, api_keys, &click_secret);
        app.rules = rules;
        app._sweeper = sweeper;
        app.start_events(sink, spool, click_secret)?;
        let settings = app.config.webhooks.clone();
        let metrics = app.metrics.webhooks();
        app.webhooks = Some(Webhooks::start(app.store.clone(), feed, settings, metrics).map_err(anyhow::Error::msg)?);
        let upkeep = Arc::downgrade(&app.metrics);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(METRICS_UPKEEP_INTERVAL);
            tick.tick().await;
            loop {
                tick.tick().await;
                match upkeep.upgrade() {
                    Some(m) => m.run_upkeep(),
                    None => break,
                }
            }
        });
        Ok(Arc::new(app))
    }

    /// Starts recording: the click queue, and the batcher that delivers it to `sink` (spooling
    /// to `spool` what the sink does not take, and refused commands to the dead-letter file beside
    /// it). Must run inside a Tokio runtime.
    pub fn start_events(&mut self, sink: Arc<dyn EventSink>, spool: Spool, ip_secret: Vec<u8>) -> std::io::Result<()> {
        let metrics = self.metrics.events(sink.name());
        let queue = Arc::new(EventQueue::new(metrics.clone()));
        let parts = BatcherParts {
            sink,
            store: self.store.clone(),
            resolver: self.resolver.clone(),
            spool,
            ip_secret,
            metrics,
            hold: HoldLimit {
                events: self.config.hold_events as usize,
                bytes: self.config.hold_bytes as usize,
            },
        };
        self.delivery = Some(Delivery::start_with(queue.clone(), parts, self.rules.clone())?);
        self.events = Some(queue);
        Ok(())
    }

    /// An app without event recording (benchmarks of the bare redirect).
    pub fn assemble(config: Config, store: Arc<dyn Store>, api_keys: Vec<ApiKey>, click_secret: &[u8]) -> Self {
        let metrics = Arc::new(Metrics::new());
        let rules = Arc::new(Rules::from_settings(&config.analytics));
        let app = Self {
            rules,
            phones: PhoneHasher::new(click_secret),
            console_secret: derive_key(click_secret, b"linkgate console session v1"),
            logins: RateLimiter::with_burst(
                LOGIN_BURST,
                LOGIN_BURST / 60.0,
                "sign-in attempts a minute from this address",
            ),
            _sweeper: None,
            resolver: Resolver::new(store.clone(), metrics.cache.clone()),
            store,
            signer: ClickSigner::new(click_secret),
            api_keys,
            rate_limiter: config.api_rate_limit.map(RateLimiter::new),
            readiness: Readiness::default(),
            events: None,
            delivery: None,
            webhooks: None,
            metrics,
            config,
        };
        app.readiness.set(true);
        app
    }

    /// The Prometheus text exposition of this app's metrics, with the sampled gauges read now.
    pub fn render_metrics(&self) -> String {
        self.metrics.cache_links.set(self.resolver.cached_links() as f64);
        if let Some(q) = &self.events {
            q.sample_depth();
        }
        self.metrics.render()
    }

    /// Flushes every queued event to the sink or the spool, waiting at most `deadline`. Returns
    /// whether the batcher finished in time.
    /// Webhook delivery stops afterwards (what it had not recorded is attempted again after a
    /// restart or by another replica).
    pub async fn flush_events(&self, deadline: Duration) -> bool {
        let flushed = match &self.delivery {
            Some(d) => d.shutdown(deadline).await,
            None => true,
        };
        if let Some(w) = &self.webhooks {
            w.stop().await;
        }
        flushed
    }
}
