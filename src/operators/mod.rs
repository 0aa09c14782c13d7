//! Keyed, event-time operators (DESIGN.md decision 1). The engine hands them resolved events in
//! effective-time order (late ones as they come); each operator owns its state, bounds it by an
//! event-time TTL, and exposes what rules and outputs need.
//!
//! `assets`: the asset join (sends, hits, counted opens, presence as-of, product visits,
//! contracts). `sessions`: gap sessions per pair. `cdi`: the pair aggregates behind the CDI,
//! merged from DataFusion partial aggregates of each micro-batch.

pub mod assets;
pub mod cdi;
pub mod sessions;

use std::cmp::Reverse;
use std::collections::BinaryHeap;

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
#[derive(Debug)]
pub struct LazyTimers<K: Ord> {
    heap: BinaryHeap<Reverse<(Millis, K)>>,
}

impl<K: Ord + Copy> Default for LazyTimers<K> {
    fn default() -> Self {
        LazyTimers {
            heap: BinaryHeap::new(),
        }
    }
}

impl<K: Ord + Copy> LazyTimers<K> {
    pub fn schedule(&mut self, at: Millis, key: K) {
        self.heap.push(Reverse((at, key)));
    }

    /// Pops the next timer due at or before `now`.
    pub fn pop_due(&mut self, now: Millis) -> Option<(Millis, K)> {
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => self.heap.pop().map(|Reverse(x)| x),
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
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
