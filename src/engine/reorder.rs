//! The reorder buffer: events ahead of the watermark wait here and leave in the order operators
//! need, (effective time, kind rank, event_id).
//!
//! Events wait in a slab. Most arrive in time order or nearly so: their times go to a sorted
//! run, where a push is an append or an insertion among the last few dozen (found by a scan from
//! the back) and a pop takes the front. An event that would go further back goes to a radix heap
//! (`operators::RadixHeap`): it is queued at or after the watermark and leaves behind it, so
//! times only move forward from the last one taken, which is what a radix heap needs. (With
//! the radix heap alone, each event moved once per bit of the lateness it spans: the reorder
//! buffer was 7–8 % of the engine's time per event.) The events of one time leave together,
//! sorted by kind and event_id (ties are rare).

use std::cmp::Ordering;
use std::collections::VecDeque;

use crate::event::Millis;
use crate::operators::{RadixHeap, Resolved};

/// How far back from the end of the run an arriving event is placed; one that belongs further
/// back goes to the radix heap (each insertion moves at most this many entries).
const RUN_REACH: usize = 64;

/// The order events leave in.
fn order(a: &Resolved, b: &Resolved) -> Ordering {
    (a.t, a.what.rank(), &a.event_id).cmp(&(b.t, b.what.rank(), &b.event_id))
}

#[derive(Debug, Default)]
pub struct ReorderBuffer {
    /// Effective time and slab slot of waiting events, in time order (not in `ties`).
    run: VecDeque<(Millis, u32)>,
    /// Effective time and slab slot of the other waiting events not in `ties`.
    queue: RadixHeap<u32>,
    /// The events of the earliest time, taken from `queue` together; the next to leave last.
    ties: Vec<u32>,
    slab: Vec<Option<Resolved>>,
    free: Vec<u32>,
}

impl ReorderBuffer {
    pub fn len(&self) -> usize {
        self.run.len() + self.queue.len() + self.ties.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn event(&self, slot: u32) -> Option<&Resolved> {
        self.slab[slot as usize].as_ref()
    }

    /// Effective time of the next event to leave.
    pub fn next_time(&self) -> Option<Millis> {
        match self.ties.last() {
            Some(&slot) => self.event(slot).map(|e| e.t),
            None => self.waiting_min(),
        }
    }

    /// The earliest time in the run and the heap.
    fn waiting_min(&self) -> Option<Millis> {
        match (self.run.front().map(|(t, _)| *t), self.queue.min()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn push(&mut self, ev: Resolved) {
        let t = ev.t;
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
        match self.ties.first().and_then(|&s| self.event(s)).map(|e| e.t) {
            // Not after the events already taken out: it joins them in order (only when
            // events are queued behind what has left, which the engine does not do).
            Some(tied) if t <= tied => {
                self.ties.push(slot);
                self.sort_ties();
            }
            _ => self.queue_up(t, slot),
        }
    }

    /// Places a waiting event in the run when it belongs near its end, else in the heap.
    ///
    /// The place is found from the back: the entry `RUN_REACH + 1` from the end says whether
    /// `t` belongs within reach at all, and a scan of the last entries finds where. At a
    /// million pairs events are dense in event time and the run holds hundreds, while most
    /// events land a few dozen from its end or go to the heap: a binary search over the whole
    /// run, its branches taken at random, was 92 ns/event there, the scan about 7 (profiles).
    fn queue_up(&mut self, t: Millis, slot: u32) {
        let len = self.run.len();
        if len > RUN_REACH && self.run[len - RUN_REACH - 1].0 > t {
            self.queue.push(t, slot);
            return;
        }
        // After the last entry at or before `t`: equal times keep their arrival order.
        let after = self
            .run
            .range(len.saturating_sub(RUN_REACH)..)
            .rev()
            .take_while(|(x, _)| *x > t)
            .count();
        self.run.insert(len - after, (t, slot));
    }

    pub fn pop(&mut self) -> Option<Resolved> {
        if self.ties.is_empty() {
            let t = self.waiting_min()?;
            while let Some(&(at, slot)) = self.run.front()
                && at == t
            {
                self.run.pop_front();
                self.ties.push(slot);
            }
            if self.queue.min() == Some(t) {
                self.queue.pop_all_at_min(&mut self.ties);
            }
            if self.ties.len() > 1 {
                self.sort_ties();
            }
        }
        let slot = self.ties.pop()?;
        self.free.push(slot);
        // The event that leaves next was queued hundreds of events ago and is cold by now:
        // load it (both of its lines) while this one is applied.
        let next =
            self.ties
                .last()
                .copied()
                .or_else(|| match (self.run.front(), self.queue.min()) {
                    (Some(&(t, s)), Some(h)) if h < t => self.queue.peek().or(Some(s)),
                    (Some(&(_, s)), _) => Some(s),
                    (None, _) => self.queue.peek(),
                });
        if let Some(next) = next {
            crate::prefetch_all(&self.slab[next as usize]);
        }
        self.slab[slot as usize].take()
    }

    /// Sorts `ties` so that the first to leave is last.
    fn sort_ties(&mut self) {
        let slab = &self.slab;
        self.ties
            .sort_unstable_by(|a, b| match (&slab[*a as usize], &slab[*b as usize]) {
                (Some(a), Some(b)) => order(b, a),
                _ => Ordering::Equal,
            });
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
                stream_seq: None,
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
    /// with many equal times so that kind and event_id decide, pushes between pops, and
    /// arrivals in order, a little out of order and far out of order.
    #[test]
    fn agrees_with_a_sorted_model() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut b = ReorderBuffer::default();
        let mut model: Vec<(Millis, u8, String)> = Vec::new();
        let mut floor: Millis = 0;
        let mut clock: Millis = 0;
        let mut ties_waiting = 0;
        let (mut in_heap, mut in_run) = (0, 0);
        for step in 0..60_000u32 {
            if rng.random_range(0..5) < 3 {
                // Jitter around a clock, many ties, and a few behind the last event out
                // (which the engine never queues, but the order must hold all the same).
                let t = match rng.random_range(0..16) {
                    0 => floor - rng.random_range(0..50),
                    1..=4 => floor + rng.random_range(0..500),
                    _ => {
                        clock += rng.random_range(0..3);
                        clock
                    }
                };
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
                clock = clock.max(floor);
            }
            assert_eq!(b.len(), model.len());
            ties_waiting += (b.ties.len() > 1) as u32;
            in_heap += (!b.queue.is_empty()) as u32;
            in_run += (b.run.len() > RUN_REACH) as u32;
        }
        // Both places held events: the run (appends and insertions) and the heap (pushes
        // further back than the run reaches).
        assert!(in_heap > 1_000 && in_run > 1_000, "{in_heap} {in_run}");
        // Several events of one time waited together at times, so ties were ordered.
        assert!(ties_waiting > 1_000, "{ties_waiting}");
    }
}
