//! The sharded in-memory link cache, packed for millions of links.
//!
//! Keys are the xxh3-64 hash of the code (computed once per request with the one-shot function, not
//! the streaming hasher), used as is by the sharded open-addressing table in `resolve/table.rs`. Each
//! value is one boxed [`CachedLink`] holding the code, the destination and the recipient id in a
//! single string, the campaign and owner as interned `u32` ids (thousands of links share them), and
//! the hot flags. The code is kept to detect the rare hash collision, which is then served as a
//! miss.
//!
//! Rarely used fields (fallback and device overrides) live behind one optional box.

use std::sync::{Arc, RwLock};

use dashmap::DashMap;

use super::table::ShardedTable;
use crate::link::{Link, LinkKind, LinkState};

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

// Layout of a packed link: a fixed header, then the strings back to back.
const STATUS: usize = 0; // u16
const FLAGS: usize = 2; // u8
const KIND: usize = 3; // u8
const CAMPAIGN: usize = 4; // u32
const OWNER: usize = 8; // u32
const EXPIRES: usize = 12; // u32, 0 = never
const MAX_CLICKS: usize = 16; // u32, 0 = unlimited
const LENS: usize = 20; // 6 × u16: code, destination, recipient, fallback, ios, android
const GENERATION: usize = LENS + 12; // u32: the resolver generation the entry was read in
const SEQ: usize = GENERATION + 4; // u64: the link's sequence number (where its click counters are)
const HEADER: usize = SEQ + 8;

/// One cached link, packed into a single allocation: on a 50-byte SMS destination that is about
/// 100 bytes, and a lookup touches one heap line after the map's own.
pub struct CachedLink(Box<[u8]>);

impl CachedLink {
    /// Packs `link`, read from the store in resolver `generation`.
    pub fn from_link(link: &Link, interner: &Interner, generation: u32) -> Self {
        let strings: [&str; 6] = [
            &link.code,
            &link.destination,
            link.recipient_id.as_deref().unwrap_or(""),
            link.fallback_url.as_deref().unwrap_or(""),
            link.ios_destination.as_deref().unwrap_or(""),
            link.android_destination.as_deref().unwrap_or(""),
        ];
        let mut b = Vec::with_capacity(HEADER + strings.iter().map(|s| s.len()).sum::<usize>());
        b.extend_from_slice(&link.redirect_status.to_le_bytes());
        let mut flags = 0;
        if link.disabled {
            flags |= DISABLED;
        }
        if link.track_conversions {
            flags |= TRACK_CONVERSIONS;
        }
        b.push(flags);
        b.push(LinkKind::ALL.iter().position(|k| *k == link.kind).unwrap_or(6) as u8);
        b.extend_from_slice(&interner.intern(link.campaign_id.as_deref()).to_le_bytes());
        b.extend_from_slice(&interner.intern(link.owner_id.as_deref()).to_le_bytes());
        let expires = link.expires_at.map(|t| t.clamp(1, u32::MAX as i64) as u32).unwrap_or(0);
        b.extend_from_slice(&expires.to_le_bytes());
        b.extend_from_slice(&link.max_clicks.unwrap_or(0).to_le_bytes());
        for s in &strings {
            // Validation bounds every string far below 64 KiB (URLs: 2,048 bytes).
            b.extend_from_slice(&(s.len().min(u16::MAX as usize) as u16).to_le_bytes());
        }
        b.extend_from_slice(&generation.to_le_bytes());
        b.extend_from_slice(&link.seq.to_le_bytes());
        for s in &strings {
            b.extend_from_slice(&s.as_bytes()[..s.len().min(u16::MAX as usize)]);
        }
        Self(b.into_boxed_slice())
    }

    fn u16_at(&self, at: usize) -> u16 {
        u16::from_le_bytes([self.0[at], self.0[at + 1]])
    }
    fn u32_at(&self, at: usize) -> u32 {
        u32::from_le_bytes([self.0[at], self.0[at + 1], self.0[at + 2], self.0[at + 3]])
    }

    /// The `i`-th string's bytes (0 code, 1 destination, 2 recipient, 3 fallback, 4 ios, 5 android).
    fn bytes(&self, i: usize) -> &[u8] {
        let start = HEADER + (0..i).map(|j| self.u16_at(LENS + 2 * j) as usize).sum::<usize>();
        let len = self.u16_at(LENS + 2 * i) as usize;
        &self.0[start..start + len]
    }

    /// The `i`-th string, checked as UTF-8 on every read (the redirect path reads the code and the
    /// destination as bytes instead: they are ASCII, and a hit would pay the check twice).
    fn string(&self, i: usize) -> &str {
        // Built from `&str`s whose lengths are the offsets, so the range is on char boundaries.
        std::str::from_utf8(self.bytes(i)).unwrap_or("")
    }

    fn non_empty(&self, i: usize) -> Option<&str> {
        Some(self.string(i)).filter(|s| !s.is_empty())
    }

    pub fn code(&self) -> &str {
        self.string(0)
    }
    pub fn destination(&self) -> &str {
        self.string(1)
    }
    /// The destination's bytes, for the `Location` header (validated ASCII when minted).
    pub fn destination_bytes(&self) -> &[u8] {
        self.bytes(1)
    }
    pub fn recipient(&self) -> Option<&str> {
        self.non_empty(2)
    }
    pub fn fallback_url(&self) -> Option<&str> {
        self.non_empty(3)
    }
    pub fn ios_destination(&self) -> Option<&str> {
        self.non_empty(4)
    }
    pub fn android_destination(&self) -> Option<&str> {
        self.non_empty(5)
    }
    pub fn redirect_status(&self) -> u16 {
        self.u16_at(STATUS)
    }
    pub fn track_conversions(&self) -> bool {
        self.0[FLAGS] & TRACK_CONVERSIONS != 0
    }
    pub fn kind(&self) -> LinkKind {
        LinkKind::ALL[(self.0[KIND] as usize).min(6)]
    }
    pub fn campaign(&self) -> u32 {
        self.u32_at(CAMPAIGN)
    }
    pub fn owner(&self) -> u32 {
        self.u32_at(OWNER)
    }
    /// The resolver generation this entry was read in (older ones are revalidated).
    pub fn generation(&self) -> u32 {
        self.u32_at(GENERATION)
    }

    /// The link's sequence number in its store (0 when unknown).
    pub fn seq(&self) -> u64 {
        let mut le = [0u8; 8];
        le.copy_from_slice(&self.0[SEQ..SEQ + 8]);
        u64::from_le_bytes(le)
    }

    /// `max_clicks`, 0 when unlimited.
    pub fn max_clicks(&self) -> u32 {
        self.u32_at(MAX_CLICKS)
    }

    /// Disabled, or past `expires_at` at `now`.
    pub fn state(&self, now: i64) -> LinkState {
        let expires = self.u32_at(EXPIRES);
        if self.0[FLAGS] & DISABLED != 0 {
            LinkState::Disabled
        } else if expires != 0 && now >= expires as i64 {
            LinkState::Expired
        } else {
            LinkState::Active
        }
    }
}

/// The cache proper: code hash → packed link.
pub(crate) struct ShardedCache {
    table: ShardedTable<CachedLink>,
}

impl Default for ShardedCache {
    fn default() -> Self {
        Self::new()
    }
}

impl ShardedCache {
    pub(crate) fn new() -> Self {
        Self {
            table: ShardedTable::default(),
        }
    }

    /// Runs `f` on the cached link for `code` (whose hash is `hash`), under the shard's read lock.
    #[inline]
    pub(crate) fn with<R>(&self, hash: u64, code: &str, f: impl FnOnce(&CachedLink) -> R) -> Option<R> {
        self.table
            .with(hash, |entry| (entry.bytes(0) == code.as_bytes()).then(|| f(entry)))
            .flatten()
    }

    pub(crate) fn insert(&self, hash: u64, link: CachedLink) {
        self.table.insert(hash, link);
    }

    pub(crate) fn remove(&self, hash: u64) {
        self.table.remove(hash);
    }

    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }
}
