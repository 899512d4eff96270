//! Where links and attribution records live: three narrow traits ([`LinkStore`],
//! [`AttributionStore`], [`CounterStore`]), each implemented by two backends with the same
//! behaviour, one file per trait.
//!
//! - [`RedisStore`]: production; every replica shares it and pub/sub keeps their caches coherent.
//! - [`EmbeddedStore`]: a redb file in the data directory; the default when no Redis URL is given.
//!
//! The redirect hot path never calls the store on a cache hit; the store is read once per miss and
//! written by the API. Minting is one call for one link or 100,000: custom codes already taken abort
//! the whole call before anything is written, and a `(campaign_id, recipient_id)` pair that already
//! has a link gets that link back instead of a second one.

mod embedded;
pub(crate) mod redis;

use std::sync::Arc;

use async_trait::async_trait;

pub use self::embedded::EmbeddedStore;
pub use self::redis::RedisStore;
use crate::attribution::model::{Campaign, Conversion, Lead, LeadClaim, Partner, RankBy, Stats};
use crate::link::Link;
use crate::link::input::LinkPatch;

/// How long an `Idempotency-Key` answer is kept.
pub(crate) const IDEMPOTENCY_TTL_SECS: u64 = 24 * 3600;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Custom codes already taken in a mint call: `(item index, code)`.
    #[error("{} codes are taken", .0.len())]
    CodesTaken(Vec<(usize, String)>),
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("embedded store: {0}")]
    Embedded(#[from] redb::Error),
    #[error("corrupt record for `{0}`: {1}")]
    Corrupt(String, serde_json::Error),
    #[error("store task failed: {0}")]
    Task(String),
}

/// The outcome of minting one link.
#[derive(Debug, Clone, PartialEq)]
pub enum Minted {
    Created(Link),
    /// The `(campaign_id, recipient_id)` pair already had this link.
    Existing(Link),
}

impl Minted {
    pub fn link(&self) -> &Link {
        match self {
            Minted::Created(l) | Minted::Existing(l) => l,
        }
    }
}

/// Which links a list call pages through.
#[derive(Debug, Clone, Default)]
pub struct LinkFilter {
    pub campaign_id: Option<String>,
    pub owner_id: Option<String>,
}

/// One page of links, oldest first; `next_cursor` is `None` on the last page.
#[derive(Debug, Clone)]
pub struct Page {
    pub links: Vec<Link>,
    pub next_cursor: Option<u64>,
}

/// A message telling replicas to drop cached state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    Code(String),
    /// The subscription was lost and re-established: some messages may be missing.
    All,
}

pub(crate) type InvalidationHandler = Arc<dyn Fn(Invalidation) + Send + Sync>;

/// Links: what the API mints and changes, and what the resolver reads on a cache miss.
#[async_trait]
pub trait LinkStore: Send + Sync + 'static {
    async fn get_link(&self, code: &str) -> Result<Option<Link>, StoreError>;

    /// Mints `links` in order. An empty `code` gets a generated one. Pairs must be unique within the
    /// call and custom codes distinct (the API checks both). Returns one outcome per input.
    async fn mint(&self, links: Vec<Link>) -> Result<Vec<Minted>, StoreError>;

    /// Applies `patch`; `None` when the code is unknown.
    async fn update_link(&self, code: &str, patch: &LinkPatch, now: i64) -> Result<Option<Link>, StoreError>;

    /// Deletes the link and its indexes; `false` when the code is unknown.
    async fn delete_link(&self, code: &str) -> Result<bool, StoreError>;

    /// Links created after cursor `after` (0 = from the start), at most `limit`.
    async fn list_links(&self, filter: &LinkFilter, after: u64, limit: usize) -> Result<Page, StoreError>;

    async fn idempotency_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    async fn idempotency_put(&self, key: &str, value: &[u8]) -> Result<(), StoreError>;

    /// Tells every replica (this one included) that `code` changed.
    async fn publish_invalidation(&self, code: &str) -> Result<(), StoreError>;

    /// Starts delivering invalidations from other replicas to `handler`. Single-node stores deliver
    /// nothing: their own changes are invalidated locally by the caller.
    fn watch_invalidations(&self, handler: InvalidationHandler);
}

/// Attribution records: leads, partners, campaigns, conversions.
#[async_trait]
pub trait AttributionStore: Send + Sync + 'static {
    /// Claims each lead atomically by [`Lead::claim_key`]: exactly one lead per key, however many
    /// replicas try at once. A claim already held answers the lead that holds it.
    async fn claim_leads(&self, leads: Vec<Lead>) -> Result<Vec<LeadClaim>, StoreError>;
    async fn get_lead(&self, lead_id: &str) -> Result<Option<Lead>, StoreError>;
    /// Leads created after cursor `after`, oldest first.
    async fn list_leads(&self, filter: &LinkFilter, after: u64, limit: usize) -> Result<LeadPage, StoreError>;

    async fn put_partner(&self, partner: &Partner) -> Result<(), StoreError>;
    async fn get_partner(&self, id: &str) -> Result<Option<Partner>, StoreError>;
    async fn put_campaign(&self, campaign: &Campaign) -> Result<(), StoreError>;
    async fn get_campaign(&self, id: &str) -> Result<Option<Campaign>, StoreError>;

    /// Records `conversion` under its `order_id` unless one is recorded already, which is returned.
    async fn claim_conversion(&self, conversion: &Conversion) -> Result<Option<Conversion>, StoreError>;
}

/// Counters: the stats and leaderboards read from them. (The batcher's increments are applied by
/// the event sinks, in the same unit as the batch's events: `stream`.)
#[async_trait]
pub trait CounterStore: Send + Sync + 'static {
    /// The counters of `link`, as just read from this store (its sequence number locates its
    /// clicks in the Redis counter arrays).
    async fn link_stats(&self, link: &Link) -> Result<Stats, StoreError>;
    async fn campaign_stats(&self, campaign_id: &str) -> Result<Stats, StoreError>;
    /// Owners of a campaign ranked by `by`, best first, with their leads, conversions and revenue.
    async fn leaderboard(
        &self,
        campaign_id: &str,
        by: RankBy,
        limit: usize,
    ) -> Result<Vec<(String, Stats)>, StoreError>;
}

/// A whole backend, as the application holds it; callers that need one part take that trait.
#[async_trait]
pub trait Store: LinkStore + AttributionStore + CounterStore {
    /// Whether the store answers (readiness).
    async fn ping(&self) -> Result<(), StoreError>;
}

/// One page of leads.
#[derive(Debug, Clone, Default)]
pub struct LeadPage {
    pub leads: Vec<Lead>,
    pub next_cursor: Option<u64>,
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(what.to_string(), e))
}

pub(crate) fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records always serialise")
}

/// The index names a link appears under, for paging by filter.
pub(crate) fn index_names(campaign: Option<&str>, owner: Option<&str>) -> Vec<IndexName> {
    let mut v = vec![IndexName::All];
    if let Some(c) = campaign {
        v.push(IndexName::Campaign(c.to_string()));
    }
    if let Some(o) = owner {
        v.push(IndexName::Owner(o.to_string()));
    }
    if let (Some(c), Some(o)) = (campaign, owner) {
        v.push(IndexName::CampaignOwner(c.to_string(), o.to_string()));
    }
    v
}

/// The single index a filter pages through.
pub(crate) fn index_for(filter: &LinkFilter) -> IndexName {
    match (&filter.campaign_id, &filter.owner_id) {
        (Some(c), Some(o)) => IndexName::CampaignOwner(c.clone(), o.clone()),
        (Some(c), None) => IndexName::Campaign(c.clone()),
        (None, Some(o)) => IndexName::Owner(o.clone()),
        (None, None) => IndexName::All,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IndexName {
    All,
    Campaign(String),
    Owner(String),
    CampaignOwner(String, String),
}

pub(crate) fn decode_link(code: &str, bytes: &[u8]) -> Result<Link, StoreError> {
    decode(code, bytes)
}

pub(crate) fn encode_link(link: &Link) -> Vec<u8> {
    encode(link)
}
