//! Keyed state by pair: an open-addressing table with keys and values inline (linear probing,
//! backward-shift deletion, at most half full). With a million pairs every access misses the
//! cache; a SwissTable waits for its control bytes and then for the bucket, while here the key
//! and the value share the probe's first line.

use super::Pair;
use crate::probe::{close_gap, fibonacci_slot};

#[derive(Debug)]
pub struct PairMap<V> {
    slots: Vec<Option<(Pair, V)>>,
    len: usize,
}

impl<V> Default for PairMap<V> {
    fn default() -> Self {
        PairMap {
            slots: (0..16).map(|_| None).collect(),
            len: 0,
        }
    }
}

impl<V> PairMap<V> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Where `p`'s probe starts: a Fibonacci hash, as a rep's customers have nearby indices.
    fn home(&self, p: Pair) -> usize {
        fibonacci_slot(p.0, self.slots.len())
    }

    /// The slot holding `p`, or the free slot that ends its probe.
    fn find(&self, p: Pair) -> usize {
        let mask = self.slots.len() - 1;
        let mut i = self.home(p);
        while let Some((k, _)) = &self.slots[i] {
            if *k == p {
                break;
            }
            i = (i + 1) & mask;
        }
        i
    }

    /// Asks the CPU to load the line where `p`'s probe starts: a hint for an access a few
    /// events ahead, which then finds the line in the cache instead of waiting on memory.
    pub fn prefetch(&self, p: Pair) {
        crate::prefetch(&self.slots[self.home(p)]);
    }

    /// The two steps of a hint for a walk over pairs whose values point elsewhere: loads the
    /// slot of `far`, and what `inner` reaches from the value of `near` (a pair that was `far`
    /// a few steps ago, so its slot is in the cache by now).
    pub fn prefetch_walk<T>(
        &self,
        far: Option<Pair>,
        near: Option<Pair>,
        inner: impl FnOnce(&V) -> Option<&T>,
    ) {
        if let Some(far) = far {
            self.prefetch(far);
        }
        if let Some(x) = near.and_then(|p| self.get(&p)).and_then(inner) {
            crate::prefetch(x);
        }
    }

    pub fn get(&self, p: &Pair) -> Option<&V> {
        self.slots[self.find(*p)].as_ref().map(|(_, v)| v)
    }

    pub fn get_mut(&mut self, p: &Pair) -> Option<&mut V> {
        let i = self.find(*p);
        self.slots[i].as_mut().map(|(_, v)| v)
    }

    /// The value of `p`, inserted with `V::default()` when missing.
    pub fn entry_or_default(&mut self, p: Pair) -> &mut V
    where
        V: Default,
    {
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow();
        }
        let i = self.find(p);
        if self.slots[i].is_none() {
            self.len += 1;
        }
        &mut self.slots[i].get_or_insert_with(|| (p, V::default())).1
    }

    pub fn remove(&mut self, p: &Pair) -> Option<V> {
        let hole = self.find(*p);
        let (_, v) = self.slots[hole].take()?;
        self.len -= 1;
        let len = self.slots.len();
        close_gap(&mut self.slots, hole, |s| {
            s.as_ref().map(|(k, _)| fibonacci_slot(k.0, len))
        });
        Some(v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Pair, &V)> {
        self.slots.iter().flatten().map(|(k, v)| (k, v))
    }

    pub fn keys(&self) -> impl Iterator<Item = &Pair> {
        self.iter().map(|(k, _)| k)
    }

    fn grow(&mut self) {
        let bigger = (0..self.slots.len() * 2).map(|_| None).collect();
        let old = std::mem::replace(&mut self.slots, bigger);
        for (k, v) in old.into_iter().flatten() {
            let i = self.find(k);
            self.slots[i] = Some((k, v));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};
    use std::collections::HashMap;

    /// Random inserts, updates and removals agree with a `HashMap`, over pairs of a few reps
    /// with consecutive customers (long runs in the table) and random ones.
    #[test]
    fn agrees_with_a_hash_map() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let mut map: PairMap<u64> = PairMap::default();
        let mut model: HashMap<Pair, u64> = HashMap::new();
        for step in 0..300_000u64 {
            let p = if rng.random_range(0..2) == 0 {
                Pair::new(rng.random_range(0..4), rng.random_range(0..3_000))
            } else {
                Pair::new(rng.random(), rng.random())
            };
            match rng.random_range(0..4) {
                0 => assert_eq!(map.remove(&p), model.remove(&p), "remove at {step}"),
                1 => assert_eq!(map.get(&p), model.get(&p), "get at {step}"),
                _ => {
                    *map.entry_or_default(p) += step;
                    *model.entry(p).or_default() += step;
                }
            }
            assert_eq!(map.len(), model.len());
        }
        let mut all: Vec<(Pair, u64)> = map.iter().map(|(k, v)| (*k, *v)).collect();
        let mut want: Vec<(Pair, u64)> = model.into_iter().collect();
        all.sort_unstable_by_key(|(k, _)| k.0);
        want.sort_unstable_by_key(|(k, _)| k.0);
        assert_eq!(all, want);
    }
}
