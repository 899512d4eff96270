//! The link cache's table: 64 shards, each an open-addressing hash table (linear probing) under
//! its own read-write lock.
//!
//! Why not dashmap: its shards are SwissTables, where a hit reads three places that are almost never
//! in the CPU cache among millions of links: the control bytes, the bucket, and the boxed value it
//! points to. Here a slot holds the key (the code's xxh3 hash) beside the value's box, so a hit reads
//! two: the slot and the value. perf put about a third of the redirect handler's time on those
//! dependent misses (see `loadtest/optimisations.md`).
//!
//! Keys are already uniform hashes: the top bits pick the shard, the low bits the home slot. A table
//! is at most 70% full (linear probing stays short there), and removal shifts the following entries
//! back (Knuth's algorithm R) instead of leaving tombstones, so lookups never walk over dead slots.

use std::sync::{PoisonError, RwLock, RwLockReadGuard};

const SHARD_BITS: u32 = 6;
const SHARDS: usize = 1 << SHARD_BITS;
/// Slots of a new shard; always a power of two.
const MIN_SLOTS: usize = 16;

/// A concurrent map from a 64-bit hash to `V`.
pub(super) struct ShardedTable<V> {
    shards: Box<[RwLock<Table<V>>]>,
}

impl<V> Default for ShardedTable<V> {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::new(Table::new())).collect(),
        }
    }
}

impl<V> ShardedTable<V> {
    fn shard(&self, hash: u64) -> &RwLock<Table<V>> {
        &self.shards[(hash >> (64 - SHARD_BITS)) as usize]
    }

    fn read(&self, hash: u64) -> RwLockReadGuard<'_, Table<V>> {
        // Nothing panics while a table is half-changed, so a poisoned lock still guards a sound table.
        self.shard(hash).read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the value of `hash`, under its shard's read lock.
    #[inline]
    pub(super) fn with<R>(&self, hash: u64, f: impl FnOnce(&V) -> R) -> Option<R> {
        self.read(hash).get(hash).map(f)
    }

    /// Inserts or replaces the value of `hash`.
    pub(super) fn insert(&self, hash: u64, value: V) {
        let mut table = self.shard(hash).write().unwrap_or_else(PoisonError::into_inner);
        table.insert(hash, value);
    }

    pub(super) fn remove(&self, hash: u64) -> Option<V> {
        let mut table = self.shard(hash).write().unwrap_or_else(PoisonError::into_inner);
        table.remove(hash)
    }

    pub(super) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(PoisonError::into_inner).len)
            .sum()
    }

    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One shard: linear probing over `slots`, a power of two long, never more than 70% full, so
/// every probe meets an empty slot.
struct Table<V> {
    slots: Box<[Option<(u64, V)>]>,
    len: usize,
}

impl<V> Table<V> {
    fn new() -> Self {
        Self {
            slots: empty_slots(MIN_SLOTS),
            len: 0,
        }
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    fn home(&self, hash: u64) -> usize {
        hash as usize & self.mask()
    }

    fn find(&self, hash: u64) -> Option<usize> {
        let mut i = self.home(hash);
        loop {
            match &self.slots[i] {
                None => return None,
                Some((h, _)) if *h == hash => return Some(i),
                Some(_) => i = (i + 1) & self.mask(),
            }
        }
    }

    #[inline]
    fn get(&self, hash: u64) -> Option<&V> {
        let i = self.find(hash)?;
        self.slots[i].as_ref().map(|(_, v)| v)
    }

    fn insert(&mut self, hash: u64, value: V) {
        if let Some(i) = self.find(hash) {
            self.slots[i] = Some((hash, value));
            return;
        }
        if (self.len + 1) * 10 > self.slots.len() * 7 {
            self.grow();
        }
        self.place(hash, value);
        self.len += 1;
    }

    /// Puts a key known to be absent into the first empty slot from its home.
    fn place(&mut self, hash: u64, value: V) {
        let mut i = self.home(hash);
        while self.slots[i].is_some() {
            i = (i + 1) & self.mask();
        }
        self.slots[i] = Some((hash, value));
    }

    fn grow(&mut self) {
        let bigger = empty_slots(self.slots.len() * 2);
        let old = std::mem::replace(&mut self.slots, bigger);
        for (hash, value) in old.into_vec().into_iter().flatten() {
            self.place(hash, value);
        }
    }

    fn remove(&mut self, hash: u64) -> Option<V> {
        let mut hole = self.find(hash)?;
        let (_, removed) = self.slots[hole].take()?;
        self.len -= 1;
        // Shift back every following entry of the run that may live in the hole: one whose home is
        // not cyclically within (hole, j].
        let mut j = hole;
        loop {
            j = (j + 1) & self.mask();
            let Some((h, _)) = &self.slots[j] else {
                return Some(removed);
            };
            let home = self.home(*h);
            let stays = if hole <= j {
                hole < home && home <= j
            } else {
                hole < home || home <= j
            };
            if !stays {
                self.slots[hole] = self.slots[j].take();
                hole = j;
            }
        }
    }
}

fn empty_slots<V>(n: usize) -> Box<[Option<(u64, V)>]> {
    std::iter::repeat_with(|| None).take(n).collect()
}

#[cfg(test)]
mod tests;
