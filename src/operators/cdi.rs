//! Pair aggregates behind the Customer Depth Index (EVENTS.md §6). Each micro-batch's touches
//! are reduced by a DataFusion kernel to partial aggregates per (pair, time bucket); the operator
//! merges them into per-pair buckets, expires buckets that left the trailing window, and
//! computes breadth, depth, density and the band on demand. The same per-pair record keeps the
//! pair's session starts for process health (one random access per pair instead of two tables).

use std::collections::VecDeque;

use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, Int64Array, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, UInt64Type};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::Result;

use crate::config::CdiSection;
use crate::directory::Directory;
use crate::engine::kernel::Kernel;
use crate::engine::output::Cdi;
use crate::event::Millis;

use super::health::Band;
use super::pairmap::PairMap;
use super::{LazyTimers, Pair, TIMER_AHEAD, Touch, channel_bit};

/// Resolution of the CDI state: the window's edge is exact to one bucket (README "Choices").
pub const BUCKET_MS: Millis = 60_000;

/// A pair's CDI (EVENTS.md §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Score {
    pub breadth: u32,
    pub depth: u32,
    pub density: u32,
    pub cdi: u32,
    pub band: Band,
}

/// One minute of a pair's touches, in 32 bytes: the per-pair deques are the largest state at a
/// million pairs, and every line of them is a cache miss. Counts of one pair in one minute fit
/// `u32` (they saturate rather than wrap); sums over the window are taken in `u64`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Bucket {
    dwell_sum: u64,
    /// Start of the bucket in `BUCKET_MS` units since the epoch (effective times are not negative).
    minute: u32,
    events: u32,
    messages_in: u32,
    messages_out: u32,
    dwell_count: u32,
    channels: u8,
}

impl Bucket {
    fn start(&self) -> Millis {
        Millis::from(self.minute) * BUCKET_MS
    }
}

const _: () = assert!(std::mem::size_of::<Bucket>() == 32);

/// The bucket a time falls in, as stored in `Bucket::minute`.
fn minute_of(t: Millis) -> u32 {
    u32::try_from(t.div_euclid(BUCKET_MS).max(0)).unwrap_or(u32::MAX)
}

/// What is kept per pair: the CDI buckets and the session starts of the health window.
#[derive(Debug, Default)]
struct PairState {
    /// Ascending by start: new ones append, expired ones pop in front.
    buckets: VecDeque<Bucket>,
    /// Starts of the pair's sessions in the health window, ascending (a late start is put in
    /// its place): health counts customers touched and touched again from them. A `Vec`, not
    /// a deque: a pair has a few starts in the window, so taking expired ones from the front
    /// moves little, and the pair's entry with its key stays one 64-byte slot (72 with a
    /// deque: every slot then spans two cache lines).
    starts: Vec<Millis>,
}

const _: () = assert!(std::mem::size_of::<Option<(Pair, PairState)>>() == 64);

/// Totals of a pair's buckets in a window.
#[derive(Debug, Default)]
struct Sum {
    channels: u8,
    events: u64,
    messages_in: u64,
    messages_out: u64,
    dwell_sum: u64,
    dwell_count: u64,
}

const PARTIAL_SQL: &str = "SELECT pair, bucket, bit_or(channels) AS channels, sum(events) AS events, \
     sum(messages_in) AS messages_in, sum(messages_out) AS messages_out, \
     sum(dwell_sum) AS dwell_sum, sum(dwell_count) AS dwell_count \
     FROM touches GROUP BY pair, bucket";

pub struct PairAggregates {
    window_ms: Millis,
    cfg: CdiSection,
    kernel: Kernel,
    schema: SchemaRef,
    pairs: PairMap<PairState>,
    /// One timer per pair: when its oldest bucket leaves the window (or, once no bucket is
    /// left, its oldest session start leaves the health window).
    timers: LazyTimers<Pair>,
    /// The health window, which session starts are kept for (at most the CDI window).
    starts_ms: Millis,
    /// Session starts of the current micro-batch, recorded after its touches are merged.
    new_starts: Vec<(Pair, Millis)>,
    /// Pairs whose CDI may have changed since the last `take_changed` (new touches, buckets
    /// that left the window); kept only when `track_changes` is on (live runs publish them).
    changed: rustc_hash::FxHashSet<Pair>,
    track_changes: bool,
    /// The touches of the current micro-batch (one row each when the kernel runs): kept as
    /// they come and made columns once per batch, each in one exact-size allocation.
    rows: Vec<Touch>,
}

impl std::fmt::Debug for PairAggregates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PairAggregates")
            .field("pairs", &self.pairs.len())
            .finish()
    }
}

impl PairAggregates {
    /// `starts_ms`: how long session starts are kept (the health window).
    pub fn new(cfg: &CdiSection, starts_ms: Millis) -> Result<Self> {
        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("pair", DataType::UInt64, false),
            Field::new("bucket", DataType::Int64, false),
            Field::new("channels", DataType::Int64, false),
            Field::new("events", DataType::Int64, false),
            Field::new("messages_in", DataType::Int64, false),
            Field::new("messages_out", DataType::Int64, false),
            Field::new("dwell_sum", DataType::Int64, false),
            Field::new("dwell_count", DataType::Int64, false),
        ]));
        let kernel = Kernel::compile("touches", schema.clone(), PARTIAL_SQL)?;
        Ok(PairAggregates {
            window_ms: cfg.window_days * 86_400_000,
            cfg: cfg.clone(),
            kernel,
            schema,
            pairs: PairMap::default(),
            timers: LazyTimers::default(),
            starts_ms,
            new_starts: Vec::new(),
            changed: Default::default(),
            track_changes: false,
            rows: Vec::new(),
        })
    }

    /// Buffers one touch for the current micro-batch.
    pub fn add(&mut self, touch: &Touch) {
        self.rows.push(*touch);
    }

    /// A session of the pair started at `t` (its touch is added too).
    pub fn add_session_start(&mut self, pair: Pair, t: Millis) {
        self.new_starts.push((pair, t));
    }

    /// Reduces the buffered touches with the kernel and merges them into pair state; then
    /// drops buckets that left the window as of `w`.
    pub fn flush(&mut self, w: Millis) -> Result<()> {
        if !self.rows.is_empty() {
            let rows = &self.rows;
            let int = |f: fn(&Touch) -> i64| -> Arc<dyn Array> {
                Arc::new(Int64Array::from_iter_values(rows.iter().map(f)))
            };
            let columns: Vec<Arc<dyn Array>> = vec![
                Arc::new(UInt64Array::from_iter_values(rows.iter().map(|t| t.pair.0))),
                // The bucket as `Bucket::minute` stores it, computed once per touch.
                int(|t| i64::from(minute_of(t.t))),
                int(|t| t.channel.map_or(0, |c| channel_bit(c) as i64)),
                int(|_| 1),
                int(|t| (t.inbound == Some(true)) as i64),
                int(|t| (t.inbound == Some(false)) as i64),
                int(|t| t.dwell_ms.unwrap_or(0).min(i64::MAX as u64) as i64),
                int(|t| t.dwell_ms.is_some() as i64),
            ];
            self.rows.clear();
            let batch = RecordBatch::try_new(self.schema.clone(), columns)?;
            for out in self.kernel.run(batch)? {
                self.merge(&out);
            }
        }
        // Each start's pair was just merged (its touch has a bucket), so its record is there
        // and in the cache.
        for (p, t) in self.new_starts.drain(..) {
            let starts = &mut self.pairs.entry_or_default(p).starts;
            let at = starts.partition_point(|x| *x <= t);
            starts.insert(at, t);
        }
        self.expire(w);
        Ok(())
    }

    fn merge(&mut self, out: &RecordBatch) {
        let pair = out.column(0).as_primitive::<UInt64Type>();
        let bucket = out.column(1).as_primitive::<Int64Type>();
        let cols: Vec<_> = (2..8)
            .map(|i| out.column(i).as_primitive::<Int64Type>())
            .collect();
        let val = |c: usize, i: usize| -> u64 { cols[c].value(i).max(0) as u64 };
        let count = |c: usize, i: usize| -> u32 { u32::try_from(val(c, i)).unwrap_or(u32::MAX) };
        for i in 0..out.num_rows() {
            // The rows' pairs are scattered over the table: load the slot, then the buckets,
            // a few rows ahead.
            let ahead = |n: usize| pair.values().get(i + n).map(|p| Pair(*p));
            self.pairs
                .prefetch_walk(ahead(2 * TIMER_AHEAD), ahead(TIMER_AHEAD), |s| {
                    s.buckets.back()
                });
            let p = Pair(pair.value(i));
            let b = Bucket {
                minute: u32::try_from(bucket.value(i)).unwrap_or(u32::MAX),
                channels: val(0, i) as u8,
                events: count(1, i),
                messages_in: count(2, i),
                messages_out: count(3, i),
                dwell_sum: val(4, i),
                dwell_count: count(5, i),
            };
            let buckets = &mut self.pairs.entry_or_default(p).buckets;
            // Nearly always the newest bucket or a new one after it; late touches search.
            let found = match buckets.back() {
                Some(last) if last.minute == b.minute => Ok(buckets.len() - 1),
                Some(last) if last.minute < b.minute => Err(buckets.len()),
                None => Err(0),
                Some(_) => buckets.binary_search_by_key(&b.minute, |x| x.minute),
            };
            match found {
                Ok(j) => {
                    let x = &mut buckets[j];
                    x.channels |= b.channels;
                    x.events = x.events.saturating_add(b.events);
                    x.messages_in = x.messages_in.saturating_add(b.messages_in);
                    x.messages_out = x.messages_out.saturating_add(b.messages_out);
                    x.dwell_sum = x.dwell_sum.saturating_add(b.dwell_sum);
                    x.dwell_count = x.dwell_count.saturating_add(b.dwell_count);
                }
                Err(j) => {
                    buckets.insert(j, b);
                    if buckets.len() == 1 {
                        self.timers
                            .schedule(b.start() + self.window_ms + BUCKET_MS, p);
                    }
                }
            }
            if self.track_changes {
                self.changed.insert(p);
            }
        }
    }

    fn expire(&mut self, w: Millis) {
        let cut = w - self.window_ms;
        let starts_cut = w - self.starts_ms;
        while let Some((_, p)) = self.timers.pop_due(w) {
            for (far, near) in self.timers.upcoming_walk(2 * TIMER_AHEAD, TIMER_AHEAD) {
                self.pairs.prefetch_walk(far, near, |s| s.buckets.front());
            }
            let Some(state) = self.pairs.get_mut(&p) else {
                continue;
            };
            let buckets = &mut state.buckets;
            let before = buckets.len();
            while buckets.front().is_some_and(|b| b.start() < cut) {
                buckets.pop_front();
            }
            if self.track_changes && buckets.len() < before {
                self.changed.insert(p);
            }
            let starts = &mut state.starts;
            let gone = starts.partition_point(|t| *t < starts_cut);
            starts.drain(..gone);
            let next = match (buckets.front(), starts.first()) {
                (Some(front), _) => Some(front.start() + self.window_ms + BUCKET_MS),
                // Only starts are left (a bucket's edge is exact to the bucket, a start's to
                // the millisecond): wait for the oldest to leave the health window.
                (None, Some(t)) => Some(t + self.starts_ms + 1),
                (None, None) => None,
            };
            match next {
                Some(due) => self.timers.schedule(due, p),
                None => {
                    self.pairs.remove(&p);
                }
            }
        }
    }

    /// Starts remembering which pairs' CDI may have changed (for `take_changed`).
    pub fn track_changes(&mut self) {
        self.track_changes = true;
    }

    /// The pairs whose CDI may have changed since the last call, each with its CDI as of
    /// `as_of` (None: no event in the window any more), sorted by pair.
    pub fn take_changed(&mut self, as_of: Millis, dir: &Directory) -> Vec<(Pair, Option<Cdi>)> {
        let mut pairs: Vec<Pair> = self.changed.drain().collect();
        pairs.sort_unstable();
        pairs
            .into_iter()
            .map(|p| (p, self.cdi_of(p, as_of, dir)))
            .collect()
    }

    /// The CDI of one pair's buckets as of `as_of`, if it has an event in the window.
    fn score(&self, buckets: &VecDeque<Bucket>, as_of: Millis) -> Option<Score> {
        let cut = as_of - self.window_ms;
        let mut sum = Sum::default();
        for b in buckets
            .iter()
            .filter(|b| b.start() >= cut && b.start() <= as_of)
        {
            sum.channels |= b.channels;
            sum.events += u64::from(b.events);
            sum.messages_in += u64::from(b.messages_in);
            sum.messages_out += u64::from(b.messages_out);
            sum.dwell_sum = sum.dwell_sum.saturating_add(b.dwell_sum);
            sum.dwell_count += u64::from(b.dwell_count);
        }
        if sum.events == 0 {
            return None;
        }
        let breadth = sum.channels.count_ones();
        let depth = (sum.dwell_count > 0
            && sum.dwell_sum as f64 / sum.dwell_count as f64 > self.cfg.dwell_benchmark_ms as f64)
            as u32;
        let density = (sum.messages_in > 0
            && sum.messages_in as f64 > self.cfg.density_ratio * sum.messages_out as f64)
            as u32;
        let cdi = breadth + depth + density;
        let band = if cdi as f64 >= self.cfg.band_high_min {
            Band::High
        } else if (cdi as f64) < self.cfg.band_low_below {
            Band::Low
        } else {
            Band::Mid
        };
        Some(Score {
            breadth,
            depth,
            density,
            cdi,
            band,
        })
    }

    /// The CDI of one pair as of `as_of`, if it has an event in the window.
    pub fn cdi_of(&self, pair: Pair, as_of: Millis, dir: &Directory) -> Option<Cdi> {
        let s = self.score(&self.pairs.get(&pair)?.buckets, as_of)?;
        Some(Cdi {
            rep_id: dir.rep_id(pair.rep()).to_string(),
            customer_id: dir.customer_id(pair.customer()).to_string(),
            breadth: s.breadth,
            depth: s.depth,
            density: s.density,
            cdi: s.cdi,
            band: s.band.as_str(),
            as_of,
        })
    }

    /// Calls `f(pair, score, replied)` for every pair with an event in the CDI window as of
    /// `as_of`. `replied` looks at the trailing `window_ms` (at most the CDI window): None when
    /// the rep sent no WeCom message in it, else whether a customer message followed a rep
    /// message within `reply_ms` (minute buckets: a customer message in the same minute as the
    /// rep's counts as a reply).
    pub fn each(
        &self,
        as_of: Millis,
        window_ms: Millis,
        reply_ms: Millis,
        mut f: impl FnMut(Pair, Score, Option<bool>),
    ) {
        let cut = as_of - window_ms.min(self.window_ms);
        for (pair, state) in self.pairs.iter() {
            let buckets = &state.buckets;
            let Some(score) = self.score(buckets, as_of) else {
                continue;
            };
            let mut last_out: Option<Millis> = None;
            let mut replied = false;
            for b in buckets
                .iter()
                .filter(|b| b.start() >= cut && b.start() <= as_of)
            {
                if b.messages_out > 0 {
                    last_out = Some(b.start());
                }
                if b.messages_in > 0 && last_out.is_some_and(|o| b.start() - o <= reply_ms) {
                    replied = true;
                }
            }
            f(*pair, score, last_out.map(|_| replied));
        }
    }

    /// CDI of every pair with an event in the window as of `as_of`, sorted by rep and customer id.
    pub fn all(&self, as_of: Millis, dir: &Directory) -> Vec<Cdi> {
        let mut out: Vec<Cdi> = self
            .pairs
            .keys()
            .filter_map(|p| self.cdi_of(*p, as_of, dir))
            .collect();
        out.sort_by(|a, b| (&a.rep_id, &a.customer_id).cmp(&(&b.rep_id, &b.customer_id)));
        out
    }

    /// Each pair with session starts kept, with the starts (ascending).
    pub fn session_starts(&self) -> impl Iterator<Item = (Pair, &[Millis])> {
        self.pairs
            .iter()
            .filter(|(_, s)| !s.starts.is_empty())
            .map(|(p, s)| (*p, s.starts.as_slice()))
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};

    fn cfg(window_days: i64) -> CdiSection {
        CdiSection {
            window_days,
            dwell_benchmark_ms: 60_000,
            density_ratio: 1.5,
            band_high_min: 2.8,
            band_low_below: 1.5,
        }
    }

    /// The score of one pair's buckets, with no directory to name it.
    fn score_of(agg: &PairAggregates, pair: Pair, as_of: Millis) -> Option<Score> {
        agg.score(&agg.pairs.get(&pair)?.buckets, as_of)
    }

    /// Session starts kept with the CDI state, against a list of every start: after each
    /// micro-batch, every start in the health window is there (to the millisecond, also when
    /// its minute bucket has left the CDI window), none is kept past the CDI window by more
    /// than the lateness of late data and one step of the watermark, and pairs whose buckets
    /// and starts are all gone are dropped. Health windows shorter than and equal to the CDI
    /// window; a few late starts (up to a day).
    #[test]
    fn session_starts_are_kept_for_the_health_window() {
        const DAY: Millis = 86_400_000;
        for (cdi_days, health_days) in [(2, 1), (2, 2)] {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
            let mut agg = PairAggregates::new(&cfg(cdi_days), health_days * DAY).unwrap();
            let mut model: Vec<(Pair, Millis)> = Vec::new();
            let mut w: Millis = 1_700_000_000_000;
            let mut checked = 0;
            for _batch in 0..400 {
                for _ in 0..rng.random_range(0..20) {
                    let pair = Pair::new(rng.random_range(0..3), rng.random_range(0..20));
                    let late = rng.random_range(0..20) == 0;
                    let t = if late {
                        w - rng.random_range(0..DAY)
                    } else {
                        w + rng.random_range(0..600_000)
                    };
                    agg.add(&Touch::plain(pair, t));
                    if rng.random_range(0..3) == 0 {
                        agg.add_session_start(pair, t);
                        model.push((pair, t));
                    }
                }
                w += rng.random_range(0..3 * 3_600_000);
                agg.flush(w).unwrap();
                let mut kept: Vec<(Pair, Millis)> = agg
                    .session_starts()
                    .flat_map(|(p, s)| s.iter().map(move |t| (p, *t)))
                    .collect();
                kept.sort_unstable();
                let mut want: Vec<(Pair, Millis)> = model
                    .iter()
                    .copied()
                    .filter(|(_, t)| *t >= w - health_days * DAY && *t <= w)
                    .collect();
                want.sort_unstable();
                let in_window: Vec<(Pair, Millis)> = kept
                    .iter()
                    .copied()
                    .filter(|(_, t)| *t >= w - health_days * DAY && *t <= w)
                    .collect();
                assert_eq!(in_window, want, "starts in the health window at {w}");
                checked += want.len();
                let oldest = kept.iter().map(|(_, t)| *t).min();
                assert!(
                    oldest
                        .is_none_or(|t| t >= w - cdi_days * DAY - BUCKET_MS - 3 * 3_600_000 - DAY),
                    "a start kept past the CDI window: {oldest:?} at {w}"
                );
            }
            assert!(checked > 10_000, "{checked}");
            agg.flush(w + cdi_days * DAY + 2 * BUCKET_MS).unwrap();
            assert_eq!(
                agg.len(),
                0,
                "every pair dropped once all is past the windows"
            );
            assert_eq!(agg.session_starts().count(), 0);
        }
    }

    /// A bucket's edge is exact to the minute, a start's to the millisecond: when the last
    /// bucket of a pair leaves the CDI window while its session start (later in that minute)
    /// is still in an equal health window, the start stays until it leaves too.
    #[test]
    fn a_start_outlives_its_bucket_within_the_minute() {
        const DAY: Millis = 86_400_000;
        let mut agg = PairAggregates::new(&cfg(2), 2 * DAY).unwrap();
        let pair = Pair::new(1, 2);
        let t0: Millis = 1_700_000_040_000 - 1_700_000_040_000 % BUCKET_MS;
        let start = t0 + 10 * BUCKET_MS + 50_000;
        for t in [t0, start] {
            agg.add(&Touch::plain(pair, t));
        }
        agg.add_session_start(pair, start);
        agg.flush(start).unwrap();
        // The first bucket's timer is due; the cut falls inside the second bucket's minute,
        // before the start.
        let w = t0 + 2 * DAY + 10 * BUCKET_MS + 30_000;
        agg.flush(w).unwrap();
        assert_eq!(score_of(&agg, pair, w), None, "no bucket left");
        let kept: Vec<Millis> = agg
            .session_starts()
            .flat_map(|(_, s)| s.iter().copied())
            .collect();
        assert_eq!(kept, [start]);
        agg.flush(start + 2 * DAY + 1).unwrap();
        assert_eq!(agg.session_starts().count(), 0);
        assert_eq!(agg.len(), 0);
    }
}
