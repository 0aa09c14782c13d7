//! The reorder buffer: events ahead of the watermark wait here and leave in the order operators
//! need, (effective time, kind rank, event_id). The heap holds 16-byte entries and the events stay
//! put in a slab, so a pop moves small keys, and event ids are compared only on a tie. The heap
//! is 4-ary (see `ARITY`).

use crate::event::Millis;
use crate::operators::Resolved;

/// Children per heap node: four 16-byte entries share a cache line or two, and the heap is half
/// as deep as a binary one, so a pop waits on half as many cold levels when the buffer is large.
const ARITY: usize = 4;

#[derive(Debug, Clone, Copy)]
struct Entry {
    t: Millis,
    rank: u8,
    slot: u32,
}

#[derive(Debug, Default)]
pub struct ReorderBuffer {
    heap: Vec<Entry>,
    slab: Vec<Option<Resolved>>,
    free: Vec<u32>,
}

impl ReorderBuffer {
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Effective time of the next event to leave.
    pub fn next_time(&self) -> Option<Millis> {
        self.heap.first().map(|e| e.t)
    }

    pub fn push(&mut self, ev: Resolved) {
        let entry = Entry {
            t: ev.t,
            rank: ev.what.rank(),
            slot: 0,
        };
        let slot = match self.free.pop() {
            Some(s) => {
                self.slab[s as usize] = Some(ev);
                s
            }
            None => {
                self.slab.push(Some(ev));
                (self.slab.len() - 1) as u32
            }
        };
        self.heap.push(Entry { slot, ..entry });
        self.sift_up(self.heap.len() - 1);
    }

    pub fn pop(&mut self) -> Option<Resolved> {
        if self.heap.is_empty() {
            return None;
        }
        let top = self.heap.swap_remove(0);
        if !self.heap.is_empty() {
            self.sift_down(0);
            // The next event to leave was pushed long ago and is cold by now: load it while the
            // engine ingests the next line, which is usually what releases it.
            crate::prefetch(&self.slab[self.heap[0].slot as usize]);
        }
        self.free.push(top.slot);
        self.slab[top.slot as usize].take()
    }

    /// Whether `a` leaves before `b`.
    fn before(&self, a: Entry, b: Entry) -> bool {
        match (a.t, a.rank).cmp(&(b.t, b.rank)) {
            std::cmp::Ordering::Less => true,
            std::cmp::Ordering::Greater => false,
            std::cmp::Ordering::Equal => {
                let id = |e: Entry| self.slab[e.slot as usize].as_ref().map(|r| &r.event_id);
                id(a) < id(b)
            }
        }
    }

    fn sift_up(&mut self, mut i: usize) {
        while i > 0 {
            let parent = (i - 1) / ARITY;
            if !self.before(self.heap[i], self.heap[parent]) {
                break;
            }
            self.heap.swap(i, parent);
            i = parent;
        }
    }

    fn sift_down(&mut self, mut i: usize) {
        let n = self.heap.len();
        loop {
            let children = ARITY * i + 1..(ARITY * i + 1 + ARITY).min(n);
            let mut first = i;
            for c in children {
                if self.before(self.heap[c], self.heap[first]) {
                    first = c;
                }
            }
            if first == i {
                break;
            }
            self.heap.swap(i, first);
            i = first;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operators::What;

    fn ev(t: Millis, id: &str, presence: bool) -> Resolved {
        let what = if presence {
            What::Presence {
                customer: 0,
                online: true,
            }
        } else {
            What::WebHit {
                asset_id: "a".into(),
                product: false,
            }
        };
        Resolved {
            t,
            event_id: id.into(),
            late: false,
            what,
            raw: None,
        }
    }

    #[test]
    fn leaves_by_time_then_kind_then_event_id() {
        let mut b = ReorderBuffer::default();
        let input = [
            (30, "e", false),
            (10, "z", false),
            (10, "b", false),
            (20, "x", false),
            (10, "y", true),
            (5, "q", false),
            (10, "a", false),
        ];
        for (t, id, p) in input {
            b.push(ev(t, id, p));
        }
        assert_eq!(b.len(), 7);
        assert_eq!(b.next_time(), Some(5));
        let mut order = Vec::new();
        while let Some(e) = b.pop() {
            order.push(e.event_id.to_string());
            // Reuse of freed slots must not disturb the order.
            if order.len() == 2 {
                b.push(ev(25, "m", false));
            }
        }
        assert_eq!(order, ["q", "y", "a", "b", "z", "x", "m", "e"]);
        assert!(b.is_empty());
    }

    /// Against a sorted model over thousands of waiting events (a heap several levels deep),
    /// with many equal times so that kind and event_id decide, and pushes between pops.
    #[test]
    fn agrees_with_a_sorted_model() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut b = ReorderBuffer::default();
        let mut model: Vec<(Millis, u8, String)> = Vec::new();
        let mut floor: Millis = 0;
        for step in 0..60_000u32 {
            if rng.random_range(0..5) < 3 {
                let t = floor + rng.random_range(0..500);
                let presence = rng.random_range(0..4) == 0;
                let id = format!("e{}", rng.random_range(0..1_000_000u32));
                let e = ev(t, &id, presence);
                model.push((t, e.what.rank(), id));
                b.push(e);
            } else if let Some(e) = b.pop() {
                let first = (0..model.len())
                    .min_by(|x, y| model[*x].cmp(&model[*y]))
                    .map(|i| model.swap_remove(i));
                let want = first.map(|(t, _, id)| (t, id));
                assert_eq!(Some((e.t, e.event_id.to_string())), want, "step {step}");
                floor = e.t;
            }
            assert_eq!(b.len(), model.len());
        }
    }
}
