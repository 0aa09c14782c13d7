//! Keyed state by pair: an open-addressing table with keys and values inline (linear probing,
//! backward-shift deletion, at most half full). With a million pairs every access misses the
//! cache; a SwissTable waits for its control bytes and then for the bucket, while here the key
//! and the value share the probe's first line.

use super::Pair;

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

    /// Home slot: the high bits of a Fibonacci hash (a rep's customers have nearby indices).
    fn home(&self, p: Pair) -> usize {
        let bits = self.slots.len().trailing_zeros();
        (p.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - bits)) as usize
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
        let mut hole = self.find(*p);
        let (_, v) = self.slots[hole].take()?;
        self.len -= 1;
        // Close the gap: a later entry of the run moves into the hole unless its home slot lies
        // after the hole (cyclically), where a probe for it would not pass the hole.
        let mask = self.slots.len() - 1;
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let Some((k, _)) = &self.slots[j] else {
                break;
            };
            let home = self.home(*k);
            if (j.wrapping_sub(home) & mask) >= (j.wrapping_sub(hole) & mask) {
                self.slots[hole] = self.slots[j].take();
                hole = j;
            }
        }
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

impl<'a, V> IntoIterator for &'a PairMap<V> {
    type Item = (&'a Pair, &'a V);
    type IntoIter = Box<dyn Iterator<Item = (&'a Pair, &'a V)> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
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
