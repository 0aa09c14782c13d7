//! Gap sessions per pair (EVENTS.md §4): a pair's touches in effective-time order, split where
//! two consecutive touches are more than the gap apart. A session is emitted once the watermark
//! passes `end + gap`, when no on-time event can extend it any more. A pair's entry stays while
//! its late touches could still fall into its last session (until the watermark passes
//! `end + 2 × gap`); after that it is dead, and leaves when the table is next rebuilt.

use crate::directory::Directory;
use crate::engine::output::Session;
use crate::event::Millis;

use super::pairmap::PairMap;
use super::{LazyTimers, Pair, TIMER_AHEAD, Touch, channel_bit};

/// An open session. Counts are `u32` (saturating; a session would need four billion touches)
/// so that a pair's entry with its key is one 64-byte slot of the table (it was 88 bytes),
/// which every touch probes.
#[derive(Debug, Clone)]
struct Open {
    start: Millis,
    end: Millis,
    count: u32,
    opens: u32,
    messages_in: u32,
    messages_out: u32,
    channels: u8,
}

impl Open {
    fn new(t: Millis) -> Self {
        Open {
            start: t,
            end: t,
            count: 0,
            channels: 0,
            opens: 0,
            messages_in: 0,
            messages_out: 0,
        }
    }

    fn add(&mut self, touch: &Touch) {
        self.start = self.start.min(touch.t);
        self.end = self.end.max(touch.t);
        self.count = self.count.saturating_add(1);
        if let Some(c) = touch.channel {
            self.channels |= channel_bit(c);
        }
        self.opens = self.opens.saturating_add(touch.counted_open as u32);
        match touch.inbound {
            Some(true) => self.messages_in = self.messages_in.saturating_add(1),
            Some(false) => self.messages_out = self.messages_out.saturating_add(1),
            None => {}
        }
    }
}

#[derive(Debug)]
struct PairSessions {
    open: Option<Open>,
    /// End of the last emitted session (`NO_END`: none): a late touch at or before
    /// `last_end + gap` belongs to an emitted session and cannot change it.
    last_end: Millis,
}

/// `PairSessions::last_end` before the pair's first session is emitted (an `Option` would
/// take the slot past 64 bytes).
const NO_END: Millis = Millis::MIN;

impl Default for PairSessions {
    fn default() -> Self {
        PairSessions {
            open: None,
            last_end: NO_END,
        }
    }
}

impl PairSessions {
    fn last_end(&self) -> Option<Millis> {
        (self.last_end != NO_END).then_some(self.last_end)
    }
}

const _: () = assert!(std::mem::size_of::<Option<(Pair, PairSessions)>>() == 64);

#[derive(Debug)]
pub struct Sessions {
    gap_ms: Millis,
    pairs: PairMap<PairSessions>,
    timers: LazyTimers<Pair>,
    /// Pairs with an open session.
    open: usize,
    /// The watermark of the last `on_watermark`: an emitted session's end no longer holds late
    /// touches once it has passed `end + 2 × gap`.
    fired_w: Millis,
    /// Late touches that fell into an already emitted session.
    pub late_dropped: u64,
}

impl Sessions {
    pub fn new(gap_ms: Millis) -> Self {
        Sessions {
            gap_ms,
            pairs: PairMap::default(),
            timers: LazyTimers::default(),
            open: 0,
            fired_w: Millis::MIN,
            late_dropped: 0,
        }
    }

    /// Adds a touch; true when it starts a new session.
    pub fn add(&mut self, touch: &Touch, dir: &Directory, out: &mut Vec<Session>) -> bool {
        let gap = self.gap_ms;
        let fired_w = self.fired_w;
        // The last session's end matters until the watermark passes `end + 2 × gap`.
        let live = |e: Millis| e + 2 * gap >= fired_w;
        let p = self.pairs.entry_or_default_keeping(touch.pair, |s| {
            s.open.is_some() || s.last_end().is_some_and(live)
        });
        if let Some(open) = &mut p.open {
            if touch.t >= open.start - gap && touch.t <= open.end + gap {
                // The session's timer stays where it is; when it pops, it moves to the new end.
                open.add(touch);
                return false;
            }
            if touch.t > open.end + gap {
                // In effective-time order the next session starts: close this one now.
                close(p, touch.pair, &mut self.open, dir, out);
            } else {
                // Late, and earlier than the open session by more than the gap.
                self.late_dropped += 1;
                return false;
            }
        }
        if p.last_end().is_some_and(|e| touch.t <= e + gap && live(e)) {
            self.late_dropped += 1;
            return false;
        }
        let mut open = Open::new(touch.t);
        open.add(touch);
        self.timers.schedule(open.end + gap + 1, touch.pair);
        p.open = Some(open);
        self.open += 1;
        true
    }

    /// Emits the sessions the watermark `w` has passed (`w > end + gap`).
    pub fn on_watermark(&mut self, w: Millis, dir: &Directory, out: &mut Vec<Session>) {
        let gap = self.gap_ms;
        self.fired_w = self.fired_w.max(w);
        while let Some((_, pair)) = self.timers.pop_due(w) {
            for next in self.timers.upcoming(TIMER_AHEAD) {
                self.pairs.prefetch(next);
                dir.prefetch_rep_id(next.rep());
                dir.prefetch_customer_id(next.customer());
            }
            let Some(p) = self.pairs.get_mut(&pair) else {
                continue;
            };
            if let Some(o) = &p.open
                && w <= o.end + gap
            {
                // Extended since the timer was set: one timer per session, not per touch.
                self.timers.schedule(o.end + gap + 1, pair);
                continue;
            }
            close(p, pair, &mut self.open, dir, out);
        }
    }

    /// Pairs with an open session.
    pub fn len(&self) -> usize {
        self.open
    }

    pub fn is_empty(&self) -> bool {
        self.open == 0
    }
}

/// Emits the pair's open session, if it has one, and remembers its end; `open` counts the
/// pairs with an open session.
fn close(
    p: &mut PairSessions,
    pair: Pair,
    open: &mut usize,
    dir: &Directory,
    out: &mut Vec<Session>,
) {
    if let Some(done) = p.open.take() {
        p.last_end = done.end;
        *open -= 1;
        out.push(record(pair, &done, dir));
    }
}

fn record(pair: Pair, s: &Open, dir: &Directory) -> Session {
    Session {
        rep_id: dir.rep_id(pair.rep()).into(),
        customer_id: dir.customer_id(pair.customer()).into(),
        start: s.start,
        end: s.end,
        event_count: u64::from(s.count),
        channel_set: s.channels,
        opens: u64::from(s.opens),
        messages_in: u64::from(s.messages_in),
        messages_out: u64::from(s.messages_out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const GAP: Millis = 30 * 60_000;

    /// README "Late": a late touch within the gap of an emitted session's end is dropped and
    /// counted while the watermark has not passed `end + 2 × gap`; after that it starts a
    /// session of its own.
    #[test]
    fn a_late_touch_joins_nothing_emitted_until_the_end_is_forgotten() {
        let dir = Directory::load(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/directory"
        )))
        .expect("example directory");
        let (r, c) = (dir.rep("r1").expect("r1"), dir.customer("c1").expect("c1"));
        let pair = Pair::new(r, c);
        let mut s = Sessions::new(GAP);
        let mut out = Vec::new();
        assert!(s.add(&Touch::plain(pair, 0), &dir, &mut out));
        assert_eq!(s.len(), 1);
        s.on_watermark(GAP, &dir, &mut out);
        assert!(
            out.is_empty(),
            "emitted before the watermark passed end + gap"
        );
        s.on_watermark(GAP + 1, &dir, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].start, out[0].end, out[0].event_count), (0, 0, 1));
        assert_eq!(s.len(), 0);

        // Within the gap of the emitted end, the watermark at end + 2 × gap: dropped.
        s.on_watermark(2 * GAP, &dir, &mut out);
        assert!(!s.add(&Touch::plain(pair, GAP), &dir, &mut out));
        assert_eq!(s.late_dropped, 1);
        assert_eq!(s.len(), 0);

        // The watermark past end + 2 × gap: the same touch starts a session.
        s.on_watermark(2 * GAP + 1, &dir, &mut out);
        assert!(s.add(&Touch::plain(pair, GAP), &dir, &mut out));
        assert_eq!(s.late_dropped, 1);
        assert_eq!(s.len(), 1);
        s.on_watermark(3 * GAP, &dir, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!((out[1].start, out[1].end), (GAP, GAP));
    }

    /// Pairs whose sessions ended long ago leave the table: with a few sessions open at any
    /// time, the table holds a few times that many entries, not every pair ever seen.
    #[test]
    fn forgotten_pairs_leave_the_table() {
        let reps: String = (0..7).map(|r| format!("r{r},Rep {r},east,,\n")).collect();
        let customers: String = (0..50_000)
            .map(|c| format!("c{c},Customer {c},,A\n"))
            .collect();
        let dir = Directory::from_csv(
            &format!("rep_id,name,region,wecom_userid,dingtalk_staff_id\n{reps}"),
            &format!("customer_id,name,wecom_external_userid,tier\n{customers}"),
            "region,director,routes\neast,Chen Jie,\n",
        )
        .expect("directory");
        let mut s = Sessions::new(GAP);
        let mut out = Vec::new();
        // 50 000 pairs, one touch each, one minute apart: about 30 open at any time.
        for i in 0..50_000u32 {
            let t = i as Millis * 60_000;
            s.on_watermark(t, &dir, &mut out);
            s.add(&Touch::plain(Pair::new(i % 7, i), t), &dir, &mut out);
            assert!(s.len() <= 32, "{} open at {i}", s.len());
            assert!(s.pairs.len() <= 1_024, "{} entries at {i}", s.pairs.len());
        }
        assert_eq!(out.len(), 50_000 - s.len());
    }
}
