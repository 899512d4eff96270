//! The sharded in-memory link cache, packed for millions of links.
//!
//! Keys are the xxh3-64 hash of the code (computed once per request with the one-shot function, not
//! the streaming hasher), and the map's own hasher passes that hash through. Each value is one boxed
//! [`CachedLink`] holding the code, the destination and the recipient id in a single string, the
//! campaign and owner as interned `u32` ids (thousands of links share them), and the hot flags. The
//! code is kept to detect the rare hash collision, which is then served as a miss.
//!
//! Rarely used fields (fallback and device overrides) live behind one optional box.

use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};

use dashmap::DashMap;

use crate::link::{Link, LinkKind};

/// Hash of a code, as used for cache keys.
#[inline]
pub fn code_hash(code: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(code.as_bytes())
}

/// A hasher for keys that already are xxh3 hashes.
#[derive(Default, Clone, Copy)]
pub struct PassThroughHasher(u64);

impl Hasher for PassThroughHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed here; fold anything else deterministically.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ b as u64;
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

pub type PassThrough = BuildHasherDefault<PassThroughHasher>;

/// Interns campaign and owner ids as small integers. Ids are never freed: there are few of them
/// (thousands), while links number in millions.
#[derive(Default)]
pub struct Interner {
    ids: DashMap<Arc<str>, u32>,
    names: RwLock<Vec<Arc<str>>>,
}

impl Interner {
    /// The id of `name`; 0 is reserved for "none".
    pub fn intern(&self, name: Option<&str>) -> u32 {
        let Some(name) = name else { return 0 };
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let mut names = self.names.write().unwrap_or_else(|e| e.into_inner());
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let arc: Arc<str> = Arc::from(name);
        names.push(arc.clone());
        let id = names.len() as u32;
        self.ids.insert(arc, id);
        id
    }

    pub fn name(&self, id: u32) -> Option<Arc<str>> {
        if id == 0 {
            return None;
        }
        self.names
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id as usize - 1)
            .cloned()
    }
}

const DISABLED: u8 = 1;
const TRACK_CONVERSIONS: u8 = 2;

/// Fields most links never set.
#[derive(Debug, Clone, Default)]
pub struct LinkExtras {
    pub fallback_url: Option<Box<str>>,
    pub ios_destination: Option<Box<str>>,
    pub android_destination: Option<Box<str>>,
}

/// One cached link, packed.
pub struct CachedLink {
    /// `code`, `destination` and `recipient_id`, concatenated.
    text: Box<str>,
    dest_start: u8,
    dest_len: u16,
    status: u16,
    flags: u8,
    kind: u8,
    pub campaign: u32,
    pub owner: u32,
    expires_at: u32,
    max_clicks: u32,
    /// Human clicks this replica has counted (max_clicks is enforced per replica; SPEC allows it to be approximate).
    clicks: AtomicU32,
    extras: Option<Box<LinkExtras>>,
}

/// What a link's state is at a given instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    Active,
    Expired,
    Disabled,
}

impl CachedLink {
    pub fn from_link(link: &Link, interner: &Interner) -> Self {
        let recipient = link.recipient_id.as_deref().unwrap_or("");
        let mut text =
            String::with_capacity(link.code.len() + link.destination.len() + recipient.len());
        text.push_str(&link.code);
        text.push_str(&link.destination);
        text.push_str(recipient);
        let extras = (link.fallback_url.is_some()
            || link.ios_destination.is_some()
            || link.android_destination.is_some())
        .then(|| {
            Box::new(LinkExtras {
                fallback_url: link.fallback_url.as_deref().map(Box::from),
                ios_destination: link.ios_destination.as_deref().map(Box::from),
                android_destination: link.android_destination.as_deref().map(Box::from),
            })
        });
        let mut flags = 0;
        if link.disabled {
            flags |= DISABLED;
        }
        if link.track_conversions {
            flags |= TRACK_CONVERSIONS;
        }
        Self {
            text: text.into_boxed_str(),
            dest_start: link.code.len() as u8,
            dest_len: link.destination.len() as u16,
            status: link.redirect_status,
            flags,
            kind: LinkKind::ALL
                .iter()
                .position(|k| *k == link.kind)
                .unwrap_or(6) as u8,
            campaign: interner.intern(link.campaign_id.as_deref()),
            owner: interner.intern(link.owner_id.as_deref()),
            expires_at: link
                .expires_at
                .map(|t| t.clamp(1, u32::MAX as i64) as u32)
                .unwrap_or(0),
            max_clicks: link.max_clicks.unwrap_or(0),
            clicks: AtomicU32::new(0),
            extras,
        }
    }

    pub fn code(&self) -> &str {
        &self.text[..self.dest_start as usize]
    }
    pub fn destination(&self) -> &str {
        let s = self.dest_start as usize;
        &self.text[s..s + self.dest_len as usize]
    }
    pub fn recipient(&self) -> Option<&str> {
        let r = &self.text[self.dest_start as usize + self.dest_len as usize..];
        (!r.is_empty()).then_some(r)
    }
    pub fn redirect_status(&self) -> u16 {
        self.status
    }
    pub fn track_conversions(&self) -> bool {
        self.flags & TRACK_CONVERSIONS != 0
    }
    pub fn kind(&self) -> LinkKind {
        LinkKind::ALL[self.kind as usize]
    }
    pub fn extras(&self) -> Option<&LinkExtras> {
        self.extras.as_deref()
    }

    /// The state at `now`, before counting this click.
    pub fn state(&self, now: i64) -> LinkState {
        if self.flags & DISABLED != 0 {
            LinkState::Disabled
        } else if (self.expires_at != 0 && now >= self.expires_at as i64)
            || (self.max_clicks != 0 && self.clicks.load(Ordering::Relaxed) >= self.max_clicks)
        {
            LinkState::Expired
        } else {
            LinkState::Active
        }
    }

    /// Counts one human click toward `max_clicks`.
    pub fn count_human_click(&self) {
        if self.max_clicks != 0 {
            self.clicks.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The cache proper: code hash → packed link.
pub struct ShardedCache {
    map: DashMap<u64, Box<CachedLink>, PassThrough>,
}

impl Default for ShardedCache {
    fn default() -> Self {
        Self::new()
    }
}

impl ShardedCache {
    pub fn new() -> Self {
        Self {
            map: DashMap::with_hasher(PassThrough::default()),
        }
    }

    /// Runs `f` on the cached link for `code` (whose hash is `hash`), under the shard's read lock.
    #[inline]
    pub fn with<R>(&self, hash: u64, code: &str, f: impl FnOnce(&CachedLink) -> R) -> Option<R> {
        let entry = self.map.get(&hash)?;
        (entry.code() == code).then(|| f(&entry))
    }

    pub fn insert(&self, hash: u64, link: CachedLink) {
        self.map.insert(hash, Box::new(link));
    }

    pub fn remove(&self, hash: u64) {
        self.map.remove(&hash);
    }

    pub fn clear(&self) {
        self.map.clear();
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
