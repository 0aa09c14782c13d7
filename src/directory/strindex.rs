//! An id → index table for the directory: open addressing with the id inline (linear probing,
//! at most half full; ids are never removed). A lookup in a directory of a million customers
//! misses the cache; a SwissTable waits for its control bytes and then for the bucket, while
//! here the probe's first line holds the id and its index.

use compact_str::CompactString;

#[derive(Debug, Default)]
pub struct StrIndex {
    slots: Vec<Option<(CompactString, u32)>>,
    len: usize,
}

fn hash(s: &str) -> u64 {
    use std::hash::BuildHasher;
    rustc_hash::FxBuildHasher.hash_one(s)
}

impl StrIndex {
    /// Where `key`'s probe starts (the table is not empty).
    fn home(&self, key: &str) -> usize {
        crate::probe::fibonacci_slot(hash(key), self.slots.len())
    }

    /// The slot holding `key`, or the free slot that ends its probe (the table is not empty).
    fn find(&self, key: &str) -> usize {
        let mask = self.slots.len() - 1;
        let mut i = self.home(key);
        while let Some((k, _)) = &self.slots[i] {
            if k == key {
                break;
            }
            i = (i + 1) & mask;
        }
        i
    }

    /// Asks the CPU to load the line where `key`'s probe starts, for a lookup a few events
    /// ahead.
    pub fn prefetch(&self, key: &str) {
        if !self.slots.is_empty() {
            crate::prefetch(&self.slots[self.home(key)]);
        }
    }

    pub fn get(&self, key: &str) -> Option<u32> {
        if self.slots.is_empty() {
            return None;
        }
        self.slots[self.find(key)].as_ref().map(|(_, ix)| *ix)
    }

    /// Maps `key` to `ix`; the index it had before, if any (the new one replaces it).
    pub fn insert(&mut self, key: &str, ix: u32) -> Option<u32> {
        if (self.len + 1) * 2 > self.slots.len() {
            let bigger = (0..(self.slots.len() * 2).max(16)).map(|_| None).collect();
            let old = std::mem::replace(&mut self.slots, bigger);
            for (k, v) in old.into_iter().flatten() {
                let i = self.find(&k);
                self.slots[i] = Some((k, v));
            }
        }
        let i = self.find(key);
        match &mut self.slots[i] {
            Some((_, old)) => Some(std::mem::replace(old, ix)),
            free => {
                *free = Some((key.into(), ix));
                self.len += 1;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};
    use std::collections::HashMap;

    /// Inserts (repeated ids included) and lookups of present and absent ids agree with a
    /// `HashMap`, for short ids, ids longer than `CompactString` keeps inline, and the empty id.
    #[test]
    fn agrees_with_a_hash_map() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let mut index = StrIndex::default();
        let mut model: HashMap<String, u32> = HashMap::new();
        assert_eq!(index.get("x"), None);
        for ix in 0..50_000u32 {
            let key = match rng.random_range(0..3) {
                0 => format!("wo_{}", rng.random_range(0..20_000)),
                1 => format!("a-long-external-user-id-{}", rng.random_range(0..20_000)),
                _ => "x".repeat(rng.random_range(0..3)),
            };
            assert_eq!(
                index.insert(&key, ix),
                model.insert(key.clone(), ix),
                "{key}"
            );
            let probe = format!("wo_{}", rng.random_range(0..40_000));
            assert_eq!(index.get(&probe), model.get(&probe).copied(), "{probe}");
        }
    }
}
