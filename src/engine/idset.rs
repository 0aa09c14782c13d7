//! The dedup set: the 64-bit hashes of remembered `event_id`s in one open-addressing table
//! (linear probing, backward-shift deletion, at most half full). The keys are already uniform
//! hashes, so their low bits index the table directly and a lookup, an insert or a removal
//! usually reads one cache line; a SwissTable reads its control bytes and then its slot.

/// Marks a free slot. A key equal to it is stored as `ZERO_KEY`, which merges two of the 2^64
/// hashes: the same odds as any two ids sharing a hash.
const EMPTY: u64 = 0;
const ZERO_KEY: u64 = 1;

#[derive(Debug)]
pub struct IdSet {
    slots: Vec<u64>,
    len: usize,
}

impl Default for IdSet {
    fn default() -> Self {
        IdSet {
            slots: vec![EMPTY; 1024],
            len: 0,
        }
    }
}

fn stored(key: u64) -> u64 {
    if key == EMPTY { ZERO_KEY } else { key }
}

impl IdSet {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// The slot holding `key`, or the free slot that ends its probe.
    fn find(&self, key: u64) -> usize {
        let mask = self.mask();
        let mut i = key as usize & mask;
        while self.slots[i] != EMPTY && self.slots[i] != key {
            i = (i + 1) & mask;
        }
        i
    }

    /// Asks the CPU to load the cache line where `key`'s probe starts, so that a later
    /// `insert` or `remove` of it finds the line there instead of waiting on memory.
    pub fn prefetch(&self, key: u64) {
        crate::prefetch(&self.slots[stored(key) as usize & self.mask()]);
    }

    /// Adds `key`; false when it was already there.
    pub fn insert(&mut self, key: u64) -> bool {
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow();
        }
        let key = stored(key);
        let i = self.find(key);
        if self.slots[i] == key {
            return false;
        }
        self.slots[i] = key;
        self.len += 1;
        true
    }

    /// Removes `key`; false when it was not there.
    pub fn remove(&mut self, key: u64) -> bool {
        let key = stored(key);
        let hole = self.find(key);
        if self.slots[hole] != key {
            return false;
        }
        self.slots[hole] = EMPTY;
        let mask = self.mask();
        crate::probe::close_gap(&mut self.slots, hole, |k| {
            (*k != EMPTY).then_some(*k as usize & mask)
        });
        self.len -= 1;
        true
    }

    fn grow(&mut self) {
        let bigger = vec![EMPTY; self.slots.len() * 2];
        let old = std::mem::replace(&mut self.slots, bigger);
        for k in old.into_iter().filter(|k| *k != EMPTY) {
            let i = self.find(k);
            self.slots[i] = k;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};
    use std::collections::HashSet;

    /// Random inserts and removals agree with a `HashSet`, including keys that share their low
    /// bits (long runs that wrap around the table's end) and the key 0.
    #[test]
    fn agrees_with_a_hash_set() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for clustered in [false, true] {
            let mut set = IdSet::default();
            let mut model: HashSet<u64> = HashSet::new();
            let mut keys: Vec<u64> = Vec::new();
            // Clustered keys make every probe walk one long run: fewer steps.
            let steps = if clustered { 20_000 } else { 200_000u32 };
            for step in 0..steps {
                let fresh = if clustered {
                    // Low bits all but equal and near the end of every table size this reaches
                    // (at most 2^19 slots): long runs that wrap around to the start.
                    (rng.random::<u64>() << 20) | (0xF_FFFC + rng.random_range(0..4u64))
                } else {
                    rng.random::<u64>()
                };
                let k = match rng.random_range(0..10) {
                    0 => 0,
                    1..=5 => fresh,
                    _ if keys.is_empty() => fresh,
                    _ => keys[rng.random_range(0..keys.len())],
                };
                if rng.random_range(0..3) == 0 {
                    assert_eq!(set.remove(k), model.remove(&k), "remove {k} at {step}");
                } else {
                    assert_eq!(set.insert(k), model.insert(k), "insert {k} at {step}");
                    keys.push(k);
                }
                assert_eq!(set.len(), model.len());
            }
            for k in &keys {
                assert_eq!(set.insert(*k), model.insert(*k));
            }
            assert_eq!(set.len(), model.len());
        }
    }
}
