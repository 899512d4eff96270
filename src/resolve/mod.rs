//! Resolve: which link does a code name?
//!
//! Answered from memory whenever possible: [`ShardedCache`] holds every link seen, and a negative
//! cache remembers unknown codes for [`NEGATIVE_TTL`] so a scanner trying random codes cannot hammer
//! the store. A miss reads the store once, however many requests miss on the same code at the same
//! time (they wait on one shared read). Replicas stay coherent through [`LinkStore::watch_invalidations`]:
//! a PATCH or DELETE anywhere removes the code here within a pub/sub round trip. When the
//! subscription itself was lost, every entry is marked stale (a new generation) rather than dropped:
//! each is revalidated by its next tap, and served stale if the store cannot answer yet, so a Redis
//! restart does not turn cached taps into errors.

pub(crate) mod cache;
mod table;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::OnceCell;

pub(crate) use self::cache::{CachedLink, Interner, ShardedCache};
pub(crate) use crate::hash::code_hash;
use crate::link::Link;
use crate::metrics::CacheMetrics;
use crate::store::{Invalidation, LinkStore, StoreError};

/// How long an unknown code is answered from memory.
pub(crate) const NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// Most unknown codes remembered; past this the negative cache starts over.
pub(crate) const NEGATIVE_MAX: usize = 100_000;

/// The answer of a memory-only lookup.
pub enum Lookup<R> {
    Hit(R),
    /// Known to be unknown (negative cache).
    Unknown,
    /// Not in memory: call [`Resolver::fill`].
    Miss,
}

type Inflight = Arc<OnceCell<Option<Arc<Link>>>>;

pub struct Resolver {
    cache: ShardedCache,
    negative: DashMap<u64, Instant, crate::hash::PassThrough>,
    inflight: DashMap<Box<str>, Inflight>,
    /// Human taps counted here, for links with `max_clicks` only.
    human_clicks: DashMap<u64, AtomicU32, crate::hash::PassThrough>,
    interner: Interner,
    /// Bumped by every invalidation, so a store read that raced one is not cached.
    epoch: AtomicU64,
    /// Entries read in an older generation are stale: revalidated on their next tap.
    generation: AtomicU32,
    metrics: CacheMetrics,
    store: Arc<dyn LinkStore>,
}

impl Resolver {
    pub fn new(store: Arc<dyn LinkStore>, metrics: CacheMetrics) -> Arc<Self> {
        let resolver = Arc::new(Self {
            cache: ShardedCache::new(),
            negative: DashMap::with_hasher(Default::default()),
            inflight: DashMap::new(),
            human_clicks: DashMap::with_hasher(Default::default()),
            interner: Interner::default(),
            epoch: AtomicU64::new(0),
            generation: AtomicU32::new(0),
            metrics,
            store: store.clone(),
        });
        let weak = Arc::downgrade(&resolver);
        store.watch_invalidations(Arc::new(move |inv| {
            if let Some(r) = weak.upgrade() {
                r.invalidate(&inv);
            }
        }));
        resolver
    }

    pub fn interner(&self) -> &Interner {
        &self.interner
    }

    pub fn cached_links(&self) -> usize {
        self.cache.len()
    }

    /// Memory-only lookup: runs `f` on the cached link. Never awaits, never does I/O.
    #[inline]
    pub fn lookup<R>(&self, code: &str, f: impl FnOnce(&CachedLink) -> R) -> Lookup<R> {
        let hash = code_hash(code);
        let generation = self.generation.load(Ordering::Relaxed);
        match self
            .cache
            .with(hash, code, |l| (l.generation() == generation).then(|| f(l)))
        {
            Some(Some(r)) => {
                self.metrics.hits.increment(1);
                return Lookup::Hit(r);
            }
            Some(None) => {
                self.metrics.misses.increment(1);
                return Lookup::Miss;
            }
            None => {}
        }
        match self.negative.get(&hash) {
            Some(until) if *until > Instant::now() => {
                self.metrics.negative_hits.increment(1);
                Lookup::Unknown
            }
            _ => {
                self.metrics.misses.increment(1);
                Lookup::Miss
            }
        }
    }

    /// For a link with `max_clicks`: whether its clicks are spent; if not and `count` is set, counts
    /// this tap. `max_clicks` is enforced per replica (docs/DESIGN.md).
    pub fn clicks_spent(&self, link: &CachedLink, count: bool) -> bool {
        let entry = self.human_clicks.entry(code_hash(link.code())).or_default();
        if entry.load(Ordering::Relaxed) >= link.max_clicks() {
            return true;
        }
        if count {
            entry.fetch_add(1, Ordering::Relaxed);
        }
        false
    }

    /// Reads `code` from the store (once for all concurrent callers) and caches the answer.
    pub async fn fill(&self, code: &str) -> Result<Option<Arc<Link>>, StoreError> {
        let cell = self.inflight.entry(Box::from(code)).or_default().clone();
        let result = cell
            .get_or_try_init(|| async {
                let epoch = self.epoch.load(Ordering::Acquire);
                self.metrics.store_reads.increment(1);
                let link = self.store.get_link(code).await?;
                if self.epoch.load(Ordering::Acquire) == epoch {
                    self.remember(code, link.as_ref());
                }
                Ok::<_, StoreError>(link.map(Arc::new))
            })
            .await
            .cloned();
        self.inflight.remove_if(code, |_, v| Arc::ptr_eq(v, &cell));
        result
    }

    fn remember(&self, code: &str, link: Option<&Link>) {
        let hash = code_hash(code);
        match link {
            Some(link) => {
                self.negative.remove(&hash);
                let generation = self.generation.load(Ordering::Relaxed);
                self.cache
                    .insert(hash, CachedLink::from_link(link, &self.interner, generation));
            }
            None => {
                // A stale entry of a link deleted meanwhile must not be served again.
                self.cache.remove(hash);
                if self.negative.len() >= NEGATIVE_MAX {
                    self.negative.clear();
                }
                self.negative.insert(hash, Instant::now() + NEGATIVE_TTL);
            }
        }
    }

    /// Drops cached state for a code (or everything).
    pub fn invalidate(&self, inv: &Invalidation) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        match inv {
            Invalidation::Code(code) => {
                let hash = code_hash(code);
                self.cache.remove(hash);
                self.negative.remove(&hash);
                self.human_clicks.remove(&hash);
            }
            Invalidation::All => {
                self.generation.fetch_add(1, Ordering::AcqRel);
                self.negative.clear();
                self.human_clicks.clear();
            }
        }
    }

    /// Runs `f` on the cached entry for `code` even when it is stale: what to serve when the store
    /// cannot revalidate it.
    pub fn lookup_stale<R>(&self, code: &str, f: impl FnOnce(&CachedLink) -> R) -> Option<R> {
        self.cache.with(code_hash(code), code, f)
    }

    /// Packs `link` as this resolver would cache it (for serving a read that was not cached).
    pub fn pack(&self, link: &Link) -> CachedLink {
        CachedLink::from_link(link, &self.interner, self.generation.load(Ordering::Relaxed))
    }

    /// Puts a link the API just wrote straight into the cache.
    pub fn prime(&self, link: &Link) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.remember(&link.code, Some(link));
    }
}
