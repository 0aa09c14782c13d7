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
pub mod pairmap;
pub mod sessions;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::num::NonZeroU64;

use crate::directory::{CustomerIx, RepIx};
use crate::event::{Action, Channel, HitKind, Millis, Text};

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
    pub event_id: Text,
    /// Behind the watermark when it arrived.
    pub late: bool,
    pub what: What,
    /// The input bytes, kept only where a later dead letter may need them (hits that wait for
    /// their asset's send).
    pub raw: Option<Box<[u8]>>,
}

// What the reorder buffer holds and moves, ~9 500 at a time at a million pairs: a hit's
// stream sequence fits beside its fields (`What` is as large as its `Action`).
const _: () = assert!(std::mem::size_of::<Resolved>() == 120);

#[derive(Debug, Clone)]
pub enum What {
    Action {
        pair: Pair,
        action: Action,
        channel: Option<Channel>,
        asset_id: Option<Text>,
        city: Option<Text>,
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
        asset_id: Text,
        hit: HitKind,
        dwell_ms: Option<u64>,
        proxy: bool,
        /// `Input::stream_seq`: reported if the hit is refused for consent when it joins.
        stream_seq: Option<NonZeroU64>,
    },
    WebHit {
        asset_id: Text,
        product: bool,
        stream_seq: Option<NonZeroU64>,
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

#[cfg(test)]
impl Touch {
    /// A touch with no channel, message or dwell (tests).
    pub fn plain(pair: Pair, t: Millis) -> Touch {
        Touch {
            pair,
            t,
            channel: None,
            counted_open: false,
            inbound: None,
            dwell_ms: None,
        }
    }
}

/// How many pops ahead the operators load the state a timer will read (see
/// `LazyTimers::upcoming`): far enough that the load is done when the pop comes, near enough
/// that it is still in the cache. Two-step loads (a slot, then what it points to) load the
/// slot twice this far ahead.
pub const TIMER_AHEAD: usize = 8;

/// Timers that are never removed, only outdated: each pop is checked against current state
/// (cheaper than keeping an ordered index in sync on every event).
///
/// Operators see events in effective-time order, so most timers are scheduled no earlier than
/// the last one of their kind: an operator with two kinds of timer (a session's close and its
/// forget, a rule's 1-day and 5-day deadlines) schedules two in-order sequences interleaved.
/// Each sequence finds a FIFO lane of its own (the lane whose last timer is the latest not
/// after it), which pops in O(1), reads memory in order and can name the keys a few pops
/// ahead. The rest (rescheduled timers, late events) go to a radix heap; a pop takes the
/// earliest of all.
#[derive(Debug)]
pub struct LazyTimers<K: Ord> {
    lanes: [VecDeque<(Millis, K)>; TIMER_LANES],
    rest: RadixHeap<K>,
}

/// FIFO lanes of `LazyTimers`: enough for the in-order sequences one operator schedules.
const TIMER_LANES: usize = 3;

impl<K: Ord + Copy> Default for LazyTimers<K> {
    fn default() -> Self {
        LazyTimers {
            lanes: Default::default(),
            rest: RadixHeap::default(),
        }
    }
}

impl<K: Ord + Copy> LazyTimers<K> {
    pub fn schedule(&mut self, at: Millis, k: K) {
        // Best fit: the lane whose last timer is the latest at or before `at`, else an empty
        // lane, else the heap.
        let mut best: Option<(Millis, usize)> = None;
        for (i, lane) in self.lanes.iter().enumerate() {
            let last = lane.back().map_or(Millis::MIN, |(t, _)| *t);
            if last <= at && best.is_none_or(|(b, _)| last > b) {
                best = Some((last, i));
            }
        }
        match best {
            Some((_, i)) => self.lanes[i].push_back((at, k)),
            None => self.rest.push(at, k),
        }
    }

    /// Pops the next timer due at or before `now`, earliest first (ties: the lowest lane,
    /// then the heap).
    pub fn pop_due(&mut self, now: Millis) -> Option<(Millis, K)> {
        let mut first: Option<(Millis, usize)> = None;
        for (i, lane) in self.lanes.iter().enumerate() {
            if let Some((at, _)) = lane.front()
                && *at <= now
                && first.is_none_or(|(f, _)| *at < f)
            {
                first = Some((*at, i));
            }
        }
        match (first, self.rest.min().filter(|at| *at <= now)) {
            (Some((a, _)), Some(b)) if b < a => self.rest.pop(),
            (Some((_, i)), _) => self.lanes[i].pop_front(),
            (None, Some(_)) => self.rest.pop(),
            (None, None) => None,
        }
    }

    /// The keys of timers a few pops ahead in each lane that reaches that far: hints of the
    /// state the pops will read, so that it can be loaded early. Not exact (lanes and the
    /// heap interleave).
    pub fn upcoming(&self, ahead: usize) -> impl Iterator<Item = K> + '_ {
        self.lanes
            .iter()
            .filter_map(move |lane| lane.get(ahead).map(|(_, k)| *k))
    }

    /// Per lane, the keys `far` and `near` pops ahead: the two steps of a hint whose second
    /// load depends on the first (see `PairMap::prefetch_walk`).
    pub fn upcoming_walk(
        &self,
        far: usize,
        near: usize,
    ) -> impl Iterator<Item = (Option<K>, Option<K>)> + '_ {
        self.lanes
            .iter()
            .filter(move |lane| lane.len() > near)
            .map(move |lane| {
                (
                    lane.get(far).map(|(_, k)| *k),
                    lane.get(near).map(|(_, k)| *k),
                )
            })
    }

    pub fn len(&self) -> usize {
        self.lanes.iter().map(VecDeque::len).sum::<usize>() + self.rest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A radix heap: timers are taken in time order and are almost never scheduled before the last
/// one taken, so each lives in the bucket of the highest bit where its time differs from that
/// floor. Scheduling appends to a bucket; a pop that empties the lowest bucket spreads the next
/// one into the buckets below. Every access is a `Vec` push or a sequential scan, where a binary
/// heap of a million timers waited on a cold cache line at each level. Timers scheduled before
/// the floor (late data) go to a small binary heap.
#[derive(Debug)]
pub struct RadixHeap<K: Ord> {
    /// Time (order-preserving `u64`, see `key`) of the last timer taken from the buckets.
    floor: u64,
    buckets: Vec<Vec<(u64, K)>>,
    /// Earliest time in each non-empty bucket, and a key at that time.
    mins: [Option<(u64, K)>; 65],
    /// Bit b set when bucket b holds a timer.
    occupied: u128,
    early: BinaryHeap<Reverse<(Millis, K)>>,
    len: usize,
}

impl<K: Ord + Copy> Default for RadixHeap<K> {
    fn default() -> Self {
        RadixHeap {
            floor: 0,
            buckets: (0..65).map(|_| Vec::new()).collect(),
            mins: [None; 65],
            occupied: 0,
            early: BinaryHeap::new(),
            len: 0,
        }
    }
}

/// A time as a `u64` in the same order (negative times included).
fn key(at: Millis) -> u64 {
    (at as u64) ^ (1 << 63)
}

fn time(key: u64) -> Millis {
    (key ^ (1 << 63)) as Millis
}

impl<K: Ord + Copy> RadixHeap<K> {
    pub fn push(&mut self, at: Millis, k: K) {
        self.len += 1;
        let u = key(at);
        if u < self.floor {
            self.early.push(Reverse((at, k)));
        } else {
            self.put(u, k);
        }
    }

    fn put(&mut self, u: u64, k: K) {
        let b = (64 - (u ^ self.floor).leading_zeros()) as usize;
        if self.occupied & (1 << b) == 0 || self.mins[b].is_none_or(|(m, _)| u < m) {
            self.occupied |= 1 << b;
            self.mins[b] = Some((u, k));
        }
        self.buckets[b].push((u, k));
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn lowest(&self) -> Option<usize> {
        (self.occupied != 0).then(|| self.occupied.trailing_zeros() as usize)
    }

    /// Where the next pop comes from: its time, its key, and the bucket it is in (None: the
    /// early heap, which wins ties). Inline and branch by branch: built as a combination of
    /// options, the answer went through the stack and stalled each call on the load that read
    /// it back.
    #[inline]
    fn head(&self) -> Option<(u64, K, Option<usize>)> {
        let early = self.early.peek().map(|Reverse((at, k))| (key(*at), *k));
        if let Some(b) = self.lowest()
            && let Some((u, k)) = self.mins[b]
        {
            // Bucket 0 holds one time; a pop takes its last timer.
            let k = if b == 0 {
                self.buckets[0].last().map_or(k, |x| x.1)
            } else {
                k
            };
            return match early {
                Some((eu, ek)) if eu <= u => Some((eu, ek, None)),
                _ => Some((u, k, Some(b))),
            };
        }
        early.map(|(u, k)| (u, k, None))
    }

    /// The earliest time held. Most heaps are empty most of the time (timers scheduled out of
    /// order are rare), and every operator asks at every watermark: that answer is inline.
    #[inline]
    pub fn min(&self) -> Option<Millis> {
        if self.len == 0 {
            return None;
        }
        self.head().map(|(u, _, _)| time(u))
    }

    /// The key the next `pop` takes: a hint for loading what the pop will need.
    pub fn peek(&self) -> Option<K> {
        self.head().map(|(_, k, _)| k)
    }

    /// Makes `floor`, the earliest time of the lowest occupied bucket `b`, the new floor:
    /// spreads that bucket into the buckets below, so that bucket 0 holds the timers at it.
    #[inline]
    fn spread(&mut self, b: usize, floor: u64) {
        if b > 0 {
            self.floor = floor;
            self.occupied &= !(1 << b);
            let mut items = std::mem::take(&mut self.buckets[b]);
            for (u, k) in items.drain(..) {
                self.put(u, k);
            }
            self.buckets[b] = items;
        }
    }

    /// Takes a timer at the earliest time held.
    pub fn pop(&mut self) -> Option<(Millis, K)> {
        let popped = match self.head()? {
            (_, _, None) => self.early.pop().map(|Reverse(x)| x),
            (floor, _, Some(b)) => {
                self.spread(b, floor);
                let taken = self.buckets[0].pop();
                if self.buckets[0].is_empty() {
                    self.occupied &= !1;
                }
                taken.map(|(u, k)| (time(u), k))
            }
        };
        self.len -= popped.is_some() as usize;
        popped
    }

    /// Takes every timer at the earliest time held: their keys go to `out` (in no particular
    /// order), the time is returned. One look at the buckets for all of them, where a `pop` per
    /// timer looks again each time.
    pub fn pop_all_at_min(&mut self, out: &mut Vec<K>) -> Option<Millis> {
        let (u, _, from) = self.head()?;
        let before = out.len();
        match from {
            // Timers in the early heap are all before the floor, so before every bucket.
            None => {
                while let Some(Reverse((at, k))) = self.early.peek().copied()
                    && key(at) == u
                {
                    self.early.pop();
                    out.push(k);
                }
            }
            Some(b) => {
                self.spread(b, u);
                // Bucket 0 holds exactly the timers at the floor.
                out.extend(self.buckets[0].drain(..).map(|(_, k)| k));
                self.occupied &= !1;
            }
        }
        self.len -= out.len() - before;
        Some(time(u))
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
    use crate::event::Millis;

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

    /// Two in-order sequences scheduled interleaved (a session's close and, later, its forget)
    /// each keep a FIFO lane, so none of them waits in the heap and `upcoming` names keys of
    /// both; a timer behind every lane goes to the heap, and all pop in time order.
    #[test]
    fn interleaved_in_order_sequences_get_lanes_of_their_own() {
        let mut t = LazyTimers::default();
        for i in 0..1_000 {
            t.schedule(10 * i, i as u32);
            t.schedule(10 * i - 5_000, 100_000 + i as u32);
        }
        assert_eq!(t.rest.len(), 0);
        let mut ahead: Vec<u32> = t.upcoming(3).collect();
        ahead.sort_unstable();
        assert_eq!(ahead, [3, 100_003]);
        // The third lane takes the next timer behind both; one behind all three waits in the heap.
        t.schedule(-6_000, 7);
        assert_eq!(t.rest.len(), 0);
        t.schedule(-7_000, 8);
        assert_eq!(t.rest.len(), 1);
        let mut last = Millis::MIN;
        let mut n = 0;
        while let Some((at, _)) = t.pop_due(Millis::MAX) {
            assert!(at >= last);
            last = at;
            n += 1;
        }
        assert_eq!(n, 2_002);
    }

    /// `pop_all_at_min` takes exactly the timers a run of `pop`s at the same time would, from
    /// the buckets and from the early heap (times pushed behind the last one taken).
    #[test]
    fn radix_pop_all_at_min_agrees_with_pops() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(13);
        let (mut a, mut b) = (super::RadixHeap::default(), super::RadixHeap::default());
        let mut now: Millis = 0;
        let mut ties = 0;
        for step in 0..100_000u32 {
            if rng.random_range(0..3) < 2 {
                let at = now + rng.random_range(-30..300);
                a.push(at, step);
                b.push(at, step);
            } else {
                let mut all = Vec::new();
                let t = a.pop_all_at_min(&mut all);
                let mut want = Vec::new();
                while let Some(first) = b.min()
                    && Some(first) == t
                {
                    want.extend(b.pop().map(|(_, k)| k));
                }
                all.sort_unstable();
                want.sort_unstable();
                assert_eq!(all, want, "step {step}");
                assert_eq!(a.len(), b.len());
                ties += (all.len() > 1) as u32;
                if let Some(t) = t {
                    now = t;
                }
            }
        }
        assert!(ties > 1_000, "{ties}");
    }

    /// `peek` names a key at the time the next pop takes (keys here are their times), so the
    /// loads it hints at are the right ones.
    #[test]
    fn radix_peek_is_at_the_next_pops_time() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(12);
        let mut h = super::RadixHeap::default();
        let mut now: Millis = 0;
        for _ in 0..100_000 {
            if rng.random_range(0..3) < 2 {
                let at = now + rng.random_range(-20..400_000);
                h.push(at, at);
            } else {
                let peeked = h.peek();
                let popped = h.pop();
                assert_eq!(peeked, popped.map(|(at, _)| at));
                if let Some((at, _)) = popped {
                    now = at;
                }
            }
        }
    }

    /// Against a sorted model: random times (negative ones, far ones, many equal), timers
    /// scheduled before the last one taken (late data), and a `now` that sometimes steps back.
    #[test]
    fn timers_agree_with_a_sorted_model() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let mut t = LazyTimers::default();
        let mut model: Vec<(Millis, u32)> = Vec::new();
        let mut now: Millis = -5_000;
        for step in 0..200_000u32 {
            match rng.random_range(0..10) {
                0..=4 => {
                    let at = match rng.random_range(0..6) {
                        0 => now - rng.random_range(0..3_000),
                        1 => now + rng.random_range(0..1 << 40),
                        2 => now,
                        _ => now + rng.random_range(0..5_000),
                    };
                    t.schedule(at, step);
                    model.push((at, step));
                }
                5 => now -= rng.random_range(0..2),
                _ => now += rng.random_range(0..400),
            }
            // Both pop everything due; equal times may leave in any order.
            let mut got = Vec::new();
            while let Some(x) = t.pop_due(now) {
                got.push(x);
            }
            let mut want: Vec<(Millis, u32)> =
                model.iter().copied().filter(|(at, _)| *at <= now).collect();
            model.retain(|(at, _)| *at > now);
            assert!(
                got.windows(2).all(|w| w[0].0 <= w[1].0),
                "out of order at {step}"
            );
            got.sort_unstable();
            want.sort_unstable();
            assert_eq!(got, want, "step {step}");
            assert_eq!(t.len(), model.len());
        }
    }
}
