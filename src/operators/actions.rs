//! The action log: every `crm.action` of the last `[actions] retention_seconds` (event time),
//! one row each, indexed by rep. It exists only when a rule reads the `actions` table, and it
//! keeps per row the alert state rules need (like the asset join does per asset).

use std::collections::VecDeque;

use compact_str::CompactString;
use rustc_hash::FxHashMap as HashMap;

use crate::directory::RepIx;
use crate::event::{Action, Channel, Millis};

use super::{LazyTimers, Pair, TIMER_AHEAD};

/// One retained `crm.action`.
#[derive(Debug, Clone)]
pub struct ActionRow {
    pub event_id: Box<str>,
    pub pair: Pair,
    pub action: Action,
    pub channel: Option<Channel>,
    pub city: Option<CompactString>,
    pub asset_id: Option<Box<str>>,
    /// Effective time.
    pub at: Millis,
    /// The watermark when the row arrived late (None if on time).
    pub late_w: Option<Millis>,
    /// Alert state per rule of the `actions` table, kept by `rules`.
    pub alerts: Vec<Option<crate::rules::AlertMark>>,
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
    /// Each rep's rows in arrival order (nearly time order: expiry pops from the front).
    by_rep: HashMap<RepIx, VecDeque<ActionIx>>,
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
            by_rep: HashMap::default(),
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
        self.by_rep.get(&rep).into_iter().flatten().copied()
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
        self.by_rep.entry(rep).or_default().push_back(ix);
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
            for next in self.expiry.upcoming(TIMER_AHEAD) {
                if let Some(slot) = self.slab.get(next as usize) {
                    crate::prefetch(slot);
                }
            }
            let Some(row) = self.slab.get_mut(ix as usize).and_then(Option::take) else {
                continue;
            };
            let rep = row.pair.rep();
            if let Some(rows) = self.by_rep.get_mut(&rep) {
                if rows.front() == Some(&ix) {
                    rows.pop_front();
                } else {
                    rows.retain(|r| *r != ix);
                }
                if rows.is_empty() {
                    self.by_rep.remove(&rep);
                }
            }
            self.free.push(ix);
        }
    }
}
