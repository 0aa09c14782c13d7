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
        self.entry_or_default_keeping(p, |_| true)
    }

    /// As `entry_or_default`, but when the table is full the entries `keep` refuses leave first,
    /// and the table is sized for the rest (it may shrink): state that the watermark has made
    /// useless goes this way, without a timer and a lookup per entry.
    pub fn entry_or_default_keeping(&mut self, p: Pair, keep: impl Fn(&V) -> bool) -> &mut V
    where
        V: Default,
    {
        if (self.len + 1) * 2 > self.slots.len() {
            self.rebuild(keep);
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

    /// Moves the entries `keep` accepts to a table at most a third full, so that a rebuild is
    /// followed by at least as many inserts as it moved (a full table doubles).
    fn rebuild(&mut self, keep: impl Fn(&V) -> bool) {
        // Counted first, so that the entries move straight from the old table to the new one.
        let kept = self.iter().filter(|(_, v)| keep(v)).count();
        let size = ((kept + 1) * 3).next_power_of_two().max(16);
        let old = std::mem::replace(&mut self.slots, (0..size).map(|_| None).collect());
        self.len = kept;
        for (k, v) in old.into_iter().flatten().filter(|(_, v)| keep(v)) {
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

    /// With a `keep` rule, an entry the rule accepts is never lost, one it refuses may leave at
    /// a rebuild, and nothing else changes.
    #[test]
    fn entries_refused_by_keep_leave_at_a_rebuild() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let keep = |v: &u64| !v.is_multiple_of(3);
        let mut map: PairMap<u64> = PairMap::default();
        let mut model: HashMap<Pair, u64> = HashMap::new();
        let mut rebuilt_away = 0;
        for step in 1..100_000u64 {
            let p = Pair::new(rng.random_range(0..8), rng.random_range(0..20_000));
            let v = map.entry_or_default_keeping(p, keep);
            let before = *v;
            *v = step;
            match model.insert(p, step) {
                // A refused entry that left: the map started again from the default.
                Some(old) if before == 0 && old != 0 => {
                    assert!(!keep(&old), "kept entry lost at {step}");
                    rebuilt_away += 1;
                }
                Some(old) => assert_eq!(before, old, "value changed at {step}"),
                None => assert_eq!(before, 0),
            }
        }
        assert!(rebuilt_away > 0, "no refused entry ever left");
        for (p, v) in &model {
            if keep(v) {
                assert_eq!(map.get(p), Some(v));
            }
        }
        for (p, v) in map.iter() {
            assert_eq!(model.get(p), Some(v));
        }
        // Entries all refused by the rule of later inserts: the first rebuild drops them all.
        let mut stale: PairMap<u64> = PairMap::default();
        for c in 0..10_000 {
            *stale.entry_or_default(Pair::new(1, c)) = 3;
        }
        for c in 0..20_000 {
            *stale.entry_or_default_keeping(Pair::new(2, c), |v| *v != 3) = 1;
        }
        assert_eq!(stale.len(), 20_000);
        assert!(stale.keys().all(|p| p.rep() == 2));
        assert!((0..20_000).all(|c| stale.get(&Pair::new(2, c)) == Some(&1)));
    }

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
