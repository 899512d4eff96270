use std::collections::HashMap;

use super::*;

/// A small deterministic generator (xorshift64*), so a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Every key of the table is where a lookup finds it, and the table holds exactly the model.
fn assert_same(table: &Table<u32>, model: &HashMap<u64, u32>) {
    assert_eq!(table.len, model.len());
    assert_eq!(table.slots.iter().flatten().count(), model.len());
    for (k, v) in model {
        assert_eq!(table.get(*k), Some(v), "key {k:#x}");
    }
    assert!(table.len * 10 <= table.slots.len() * 7, "over 70% full");
}

/// Random inserts and removes of keys from `key`, checked against a `HashMap` at every step.
fn matches_a_hash_map(seed: u64, key: impl Fn(&mut Rng) -> u64) {
    let mut rng = Rng(seed);
    let mut table = Table::new();
    let mut model = HashMap::new();
    for step in 0..20_000u32 {
        let key = key(&mut rng);
        match rng.next() % 3 {
            0 => assert_eq!(table.remove(key), model.remove(&key), "step {step}"),
            _ => {
                table.insert(key, step);
                model.insert(key, step);
            }
        }
        assert_eq!(table.get(key), model.get(&key), "step {step}");
        if step % 97 == 0 {
            assert_same(&table, &model);
        }
    }
    assert_same(&table, &model);
}

#[test]
fn short_runs_match_a_hash_map() {
    // Keys share a few home slots (low bits from a set of 4) in the middle of the table: many
    // short runs, where a removal often leaves a hole at the home of the entry after it.
    matches_a_hash_map(0x9e37_79b9_7f4a_7c15, |rng| {
        (rng.next() % 64) << 8 | [0, 1, 14, 15][(rng.next() % 4) as usize]
    });
}

#[test]
fn runs_that_wrap_around_match_a_hash_map() {
    // Keys crowd into the first two and the last two slots of the table, whatever its size, so
    // runs overlap and wrap around its end, where backward-shift deletion can go wrong.
    matches_a_hash_map(0x2545_f491_4f6c_dd1d, |rng| {
        (rng.next() % 64) << 32 | [0, 1, 0xffff_fffe, 0xffff_ffff][(rng.next() % 4) as usize]
    });
}

#[test]
fn grows_past_many_doublings_and_finds_everything() {
    let mut rng = Rng(42);
    let mut table = Table::new();
    let keys: Vec<u64> = (0..50_000).map(|_| rng.next()).collect();
    for (i, k) in keys.iter().enumerate() {
        table.insert(*k, i as u32);
    }
    assert_eq!(table.len, keys.len());
    assert!(table.slots.len() >= 65_536 && table.slots.len().is_power_of_two());
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(table.get(*k), Some(&(i as u32)));
    }
    assert_eq!(table.get(rng.next()), None);
}

#[test]
fn insert_replaces_and_remove_of_absent_key_changes_nothing() {
    let table = ShardedTable::default();
    table.insert(7, "a");
    table.insert(7, "b");
    assert_eq!(table.len(), 1);
    assert_eq!(table.with(7, |v| *v), Some("b"));
    assert_eq!(table.remove(8), None);
    assert_eq!(table.len(), 1);
    assert_eq!(table.remove(7), Some("b"));
    assert!(table.is_empty());
    assert_eq!(table.with(7, |v| *v), None);
}

#[test]
fn shards_split_keys_by_their_top_bits() {
    let table = ShardedTable::default();
    // Same low bits, different top bits: different shards, so no probing between them.
    let keys: Vec<u64> = (0..SHARDS as u64).map(|s| s << (64 - SHARD_BITS) | 5).collect();
    for k in &keys {
        table.insert(*k, *k);
    }
    for k in &keys {
        assert_eq!(table.with(*k, |v| *v), Some(*k));
    }
    assert!(table.shards.iter().all(|s| s.read().unwrap().len == 1));
}
