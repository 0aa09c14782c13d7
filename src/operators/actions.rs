//! The action log: every `crm.action` of the last `[actions] retention_seconds` (event time),
//! one row each, indexed by rep. It exists only when a rule reads the `actions` table, and it
//! keeps per row the alert state rules need (like the asset join does per asset).

use std::collections::VecDeque;

use crate::directory::RepIx;
use crate::event::{Action, Channel, Millis, Text};

use super::{LazyTimers, Pair, TIMER_AHEAD};

/// One retained `crm.action`.
#[derive(Debug, Clone)]
pub struct ActionRow {
    pub event_id: Text,
    pub pair: Pair,
    pub action: Action,
    pub channel: Option<Channel>,
    pub city: Option<Text>,
    pub asset_id: Option<Text>,
    /// Effective time.
    pub at: Millis,
    /// The watermark when the row arrived late (None if on time).
    pub late_w: Option<Millis>,
    /// Alert state per rule of the `actions` table, kept by `rules`.
    pub alerts: Vec<crate::rules::RuleSlot>,
    /// Earliest `due_at` a rule is waiting for on this row (`Millis::MAX`: none).
    pub decision_due: Millis,
}

/// Index of a row in the slab.
pub type ActionIx = u32;

#[derive(Debug)]
pub struct ActionLog {
    retention_ms: Millis,
    slab: Vec<Option<ActionRow>>,
    free: Vec<ActionIx>,
    /// Each rep's rows in arrival order (nearly time order: expiry pops from the front), by
    /// rep index (directory indices are dense).
    by_rep: Vec<VecDeque<ActionIx>>,
    expiry: LazyTimers<ActionIx>,
    dirty: Vec<ActionIx>,
    /// Rows that arrived behind the watermark since the last `take_dirty`.
    late: Vec<ActionIx>,
}

impl ActionLog {
    pub fn new(retention_seconds: u64) -> Self {
        ActionLog {
            retention_ms: retention_seconds as Millis * 1000,
            slab: Vec::new(),
            free: Vec::new(),
            by_rep: Vec::new(),
            expiry: LazyTimers::default(),
            dirty: Vec::new(),
            late: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.slab.len() - self.free.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn row(&self, ix: ActionIx) -> Option<&ActionRow> {
        self.slab.get(ix as usize).and_then(Option::as_ref)
    }

    pub fn row_mut(&mut self, ix: ActionIx) -> Option<&mut ActionRow> {
        self.slab.get_mut(ix as usize).and_then(Option::as_mut)
    }

    /// The retained rows of a rep.
    pub fn rows_of(&self, rep: RepIx) -> impl Iterator<Item = ActionIx> + '_ {
        self.by_rep.get(rep as usize).into_iter().flatten().copied()
    }

    /// The rows of `rep` whose rule decision the watermark `w` already allows but which are
    /// still undecided: the engine decides them first, before a late action of the rep joins.
    pub fn awaiting_decision(&self, rep: RepIx, w: Millis) -> Vec<ActionIx> {
        self.rows_of(rep)
            .filter(|ix| {
                self.row(*ix)
                    .is_some_and(|r| r.decision_due < w || self.dirty.contains(ix))
            })
            .collect()
    }

    /// The rows of `rep` added late this batch (they stay listed for the batch's end too).
    pub fn late_of(&self, rep: RepIx) -> Vec<ActionIx> {
        self.late
            .iter()
            .copied()
            .filter(|ix| self.row(*ix).is_some_and(|r| r.pair.rep() == rep))
            .collect()
    }

    /// Rows added since the last call, and those of them that arrived late.
    pub fn take_dirty(&mut self) -> (Vec<ActionIx>, Vec<ActionIx>) {
        (
            std::mem::take(&mut self.dirty),
            std::mem::take(&mut self.late),
        )
    }

    /// Adds one action (late when its `late_w` is set).
    pub fn add(&mut self, row: ActionRow) {
        let (rep, at, late) = (row.pair.rep(), row.at, row.late_w.is_some());
        let ix = match self.free.pop() {
            Some(ix) => {
                self.slab[ix as usize] = Some(row);
                ix
            }
            None => {
                self.slab.push(Some(row));
                (self.slab.len() - 1) as ActionIx
            }
        };
        if rep as usize >= self.by_rep.len() {
            self.by_rep.resize_with(rep as usize + 1, VecDeque::new);
        }
        self.by_rep[rep as usize].push_back(ix);
        self.expiry
            .schedule(at.saturating_add(self.retention_ms), ix);
        self.dirty.push(ix);
        if late {
            self.late.push(ix);
        }
    }

    /// Drops rows whose retention ended at the watermark `w`.
    pub fn on_watermark(&mut self, w: Millis) {
        while let Some((_, ix)) = self.expiry.pop_due(w) {
            self.prefetch_expiries();
            let Some(row) = self.slab.get_mut(ix as usize).and_then(Option::take) else {
                continue;
            };
            if let Some(rows) = self.by_rep.get_mut(row.pair.rep() as usize) {
                if rows.front() == Some(&ix) {
                    rows.pop_front();
                } else {
                    rows.retain(|r| *r != ix);
                }
            }
            self.free.push(ix);
        }
    }

    /// Loads what the expiries a few pops ahead will touch, one step of the chain each: the
    /// row's slot 24 pops ahead, its rep's list 16 ahead (the row is cached by then), and the
    /// list's front 8 ahead (the row to expire is usually the rep's oldest).
    fn prefetch_expiries(&self) {
        let row = |ix: ActionIx| self.slab.get(ix as usize);
        let list = |ix: ActionIx| {
            row(ix)
                .and_then(Option::as_ref)
                .and_then(|r| self.by_rep.get(r.pair.rep() as usize))
        };
        for ix in self.expiry.upcoming(3 * TIMER_AHEAD) {
            if let Some(slot) = row(ix) {
                crate::prefetch(slot);
            }
        }
        for ix in self.expiry.upcoming(2 * TIMER_AHEAD) {
            if let Some(rows) = list(ix) {
                crate::prefetch(rows);
            }
        }
        for ix in self.expiry.upcoming(TIMER_AHEAD) {
            if let Some(front) = list(ix).and_then(VecDeque::front) {
                crate::prefetch(front);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};

    fn row(rep: RepIx, at: Millis, id: u32) -> ActionRow {
        ActionRow {
            event_id: format!("e{id}").into(),
            pair: Pair::new(rep, id % 7),
            action: Action::Visit,
            channel: None,
            city: None,
            asset_id: None,
            at,
            late_w: None,
            alerts: Vec::new(),
            decision_due: Millis::MAX,
        }
    }

    /// Each rep's retained rows, in arrival order, against a model that keeps every row until
    /// the watermark passes its time plus the retention; times arrive jittered (late rows
    /// expire out of arrival order) and freed slots are reused.
    #[test]
    fn rows_of_a_rep_agree_with_a_retention_model() {
        let retention_ms = 3_600_000;
        let mut log = ActionLog::new(3_600);
        let mut model: Vec<(RepIx, Millis, ActionIx)> = Vec::new();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let mut now: Millis = 0;
        let mut expired = 0;
        for id in 0..30_000u32 {
            now += rng.random_range(0..60_000);
            let rep = rng.random_range(0..5);
            let at = now - rng.random_range(0..600_000);
            log.add(row(rep, at, id));
            let ix = log.take_dirty().0[0];
            assert_eq!(log.row(ix).map(|r| &*r.event_id), Some(&*format!("e{id}")));
            model.push((rep, at, ix));
            if id % 10 == 0 {
                let w = now - 300_000;
                log.on_watermark(w);
                let before = model.len();
                model.retain(|(_, at, _)| at + retention_ms > w);
                expired += before - model.len();
            }
            for r in 0..5 {
                let want: Vec<ActionIx> = model
                    .iter()
                    .filter(|(rep, _, _)| *rep == r)
                    .map(|(_, _, ix)| *ix)
                    .collect();
                assert_eq!(log.rows_of(r).collect::<Vec<_>>(), want, "rep {r} row {id}");
            }
            assert_eq!(log.len(), model.len());
        }
        assert!(expired > 20_000, "{expired}");
    }
}
