//! The reorder buffer: events ahead of the watermark wait here and leave in the order operators
//! need, (effective time, kind rank, event_id). The heap holds 16-byte entries and the events stay
//! put in a slab, so a pop moves small keys, and event ids are compared only on a tie.

use crate::event::Millis;
use crate::operators::Resolved;

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
            let parent = (i - 1) / 2;
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
            let (l, r) = (2 * i + 1, 2 * i + 2);
            let mut first = i;
            if l < n && self.before(self.heap[l], self.heap[first]) {
                first = l;
            }
            if r < n && self.before(self.heap[r], self.heap[first]) {
                first = r;
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
}
