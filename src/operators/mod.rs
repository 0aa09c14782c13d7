//! Keyed, event-time operators (DESIGN.md decision 1). The engine hands them resolved events in
//! effective-time order (late ones as they come); each operator owns its state, bounds it by an
//! event-time TTL, and exposes what rules and outputs need.
//!
//! `actions`: the retained `crm.action`s, when a rule reads them. `assets`: the asset join (sends, hits, counted opens, presence as-of, product visits,
//! contracts). `sessions`: gap sessions per pair. `cdi`: the pair aggregates behind the CDI,
//! merged from DataFusion partial aggregates of each micro-batch. `health`: leads, session
//! starts and alerts per rep, and the per-rep process-health snapshot.

pub mod actions;
pub mod assets;
pub mod cdi;
pub mod health;
pub mod sessions;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use crate::directory::{CustomerIx, RepIx};
use crate::event::{Action, Channel, HitKind, Millis};

/// A (rep, customer) pair, packed as one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pair(pub u64);

impl Pair {
    pub fn new(rep: RepIx, customer: CustomerIx) -> Pair {
        Pair(((rep as u64) << 32) | customer as u64)
    }
    pub fn rep(self) -> RepIx {
        (self.0 >> 32) as RepIx
    }
    pub fn customer(self) -> CustomerIx {
        self.0 as u32
    }
}

/// An accepted input event after dedup, effective time and identity resolution.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Effective time.
    pub t: Millis,
    pub event_id: Box<str>,
    /// Behind the watermark when it arrived.
    pub late: bool,
    pub what: What,
    /// The input bytes, kept only where a later dead letter may need them (hits that wait for
    /// their asset's send).
    pub raw: Option<Box<[u8]>>,
}

#[derive(Debug, Clone)]
pub enum What {
    Action {
        pair: Pair,
        action: Action,
        channel: Option<Channel>,
        asset_id: Option<Box<str>>,
        city: Option<compact_str::CompactString>,
    },
    Approval {
        pair: Pair,
        contract: bool,
    },
    Presence {
        customer: CustomerIx,
        online: bool,
    },
    Message {
        pair: Pair,
        inbound: bool,
    },
    PixelHit {
        asset_id: Box<str>,
        hit: HitKind,
        dwell_ms: Option<u64>,
        proxy: bool,
    },
    WebHit {
        asset_id: Box<str>,
        product: bool,
    },
}

impl What {
    /// Tie-break among events of the same millisecond: presence first (the as-of join takes
    /// the presence "at or before" the send), sends before the hits they explain (README
    /// "Choices").
    pub fn rank(&self) -> u8 {
        match self {
            What::Presence { .. } => 0,
            What::Action { .. } => 1,
            What::Approval { .. } => 2,
            What::Message { .. } => 3,
            What::PixelHit { .. } => 4,
            What::WebHit { .. } => 5,
        }
    }
}

/// One interaction of a pair, as sessions and the CDI see it.
#[derive(Debug, Clone, Copy)]
pub struct Touch {
    pub pair: Pair,
    pub t: Millis,
    pub channel: Option<Channel>,
    pub counted_open: bool,
    /// Some(true) customer message, Some(false) rep message.
    pub inbound: Option<bool>,
    /// Dwell of a `close` hit on a quote/proposal/case asset.
    pub dwell_ms: Option<u64>,
}

/// Timers that are never removed, only outdated: each pop is checked against current state
/// (cheaper than keeping an ordered index in sync on every event).
///
/// Operators see events in effective-time order, so most timers are scheduled no earlier than
/// the last one: those go to a FIFO, which pops in O(1) and reads memory in order. The rest (late
/// events, rescheduled timers) go to a heap; a pop takes the earlier of the two fronts.
#[derive(Debug)]
pub struct LazyTimers<K: Ord> {
    fifo: VecDeque<(Millis, K)>,
    heap: BinaryHeap<Reverse<(Millis, K)>>,
}

impl<K: Ord + Copy> Default for LazyTimers<K> {
    fn default() -> Self {
        LazyTimers {
            fifo: VecDeque::new(),
            heap: BinaryHeap::new(),
        }
    }
}

impl<K: Ord + Copy> LazyTimers<K> {
    pub fn schedule(&mut self, at: Millis, key: K) {
        match self.fifo.back() {
            Some((last, _)) if at < *last => self.heap.push(Reverse((at, key))),
            _ => self.fifo.push_back((at, key)),
        }
    }

    /// Pops the next timer due at or before `now`, earliest first.
    pub fn pop_due(&mut self, now: Millis) -> Option<(Millis, K)> {
        let from_fifo = self.fifo.front().map(|(at, _)| *at).filter(|at| *at <= now);
        let from_heap = self
            .heap
            .peek()
            .map(|Reverse((at, _))| *at)
            .filter(|at| *at <= now);
        match (from_fifo, from_heap) {
            (Some(a), Some(b)) if b < a => self.heap.pop().map(|Reverse(x)| x),
            (Some(_), _) => self.fifo.pop_front(),
            (None, Some(_)) => self.heap.pop().map(|Reverse(x)| x),
            (None, None) => None,
        }
    }

    pub fn len(&self) -> usize {
        self.fifo.len() + self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fifo.is_empty() && self.heap.is_empty()
    }
}

/// Channel set as a bit mask (bit = `Channel::index()`).
pub fn channel_bit(c: Channel) -> u8 {
    1 << c.index()
}

/// Channel names of a mask, sorted alphabetically.
pub fn channel_names(mask: u8) -> Vec<&'static str> {
    let mut v: Vec<&'static str> = Channel::ALL
        .iter()
        .filter(|c| mask & channel_bit(**c) != 0)
        .map(|c| c.as_str())
        .collect();
    v.sort_unstable();
    v
}

#[cfg(test)]
mod tests {
    use super::LazyTimers;

    #[test]
    fn timers_pop_in_time_order_whatever_the_schedule_order() {
        let mut t = LazyTimers::default();
        for (at, k) in [
            (10, 1u32),
            (20, 2),
            (15, 3),
            (30, 4),
            (5, 5),
            (30, 6),
            (25, 7),
        ] {
            t.schedule(at, k);
        }
        assert_eq!(t.len(), 7);
        assert_eq!(t.pop_due(4), None);
        let mut popped = Vec::new();
        while let Some(x) = t.pop_due(29) {
            popped.push(x);
        }
        assert_eq!(popped, vec![(5, 5), (10, 1), (15, 3), (20, 2), (25, 7)]);
        assert_eq!(t.pop_due(30).map(|x| x.0), Some(30));
        assert_eq!(t.pop_due(30).map(|x| x.0), Some(30));
        assert!(t.is_empty());
    }
}
