//! The asset join: a pixel or web hit finds its sent asset (and through it the rep, customer and
//! channel), waiting for the send up to the pending retention, then it is `unknown_asset`.
//! Around each sent asset it keeps what rules need: counted and excluded opens (EVENTS.md §4),
//! presence as of the send (an as-of join), product-page visits after the send (an interval
//! join) and the pair's first contract at or after the send.

use std::collections::VecDeque;

use rustc_hash::FxHashMap as HashMap;

use crate::config::Pipeline;
use crate::directory::CustomerIx;
use crate::event::{Action, Channel, HitKind, Millis, Text};

use super::pairmap::PairMap;
use super::{LazyTimers, Pair, Resolved, Touch, What};

/// Why an open was not counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Exclusion {
    Prefetch,
    Proxy,
    Reload,
    BeforeSend,
}

impl Exclusion {
    pub const ALL: [Exclusion; 4] = [
        Exclusion::Prefetch,
        Exclusion::Proxy,
        Exclusion::Reload,
        Exclusion::BeforeSend,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Exclusion::Prefetch => "prefetch",
            Exclusion::Proxy => "proxy",
            Exclusion::Reload => "reload",
            Exclusion::BeforeSend => "before_send",
        }
    }
}

/// A sent asset and what happened to it.
#[derive(Debug, Clone)]
pub struct Asset {
    pub asset_id: Text,
    pub pair: Pair,
    pub action: Action,
    pub channel: Option<Channel>,
    pub sent_at: Millis,
    /// Effective times of counted opens, ascending.
    pub counted: Vec<Millis>,
    /// Effective times of excluded opens at or after the send, ascending.
    pub excluded: Vec<Millis>,
    pub online_at_send: bool,
    pub product_visits: u32,
    /// Earliest contract event of the pair at or after the send: (time, event_id).
    pub first_contract: Option<(Millis, Text)>,
    /// Watermark when late data last changed this asset (None if only on-time data did).
    pub late_w: Option<Millis>,
    /// Alert state per rule (index into the pipeline's rules), kept by `rules`.
    pub alerts: Vec<crate::rules::RuleSlot>,
    /// Earliest `due_at` a rule is waiting for on this asset (`Millis::MAX`: none).
    pub decision_due: Millis,
    dirty: bool,
}

impl Asset {
    /// Quote, proposal and case assets carry the dwell that CDI depth measures.
    fn measures_depth(&self) -> bool {
        matches!(
            self.action,
            Action::QuoteSent | Action::ProposalSent | Action::CaseSent
        )
    }
}

/// Index of an asset in the slab.
pub type AssetIx = u32;

#[derive(Debug, Default)]
struct PairLinks {
    assets: Vec<AssetIx>,
    /// Contract events of the pair: (time, event_id), kept for sends that arrive late.
    contracts: Vec<(Millis, Text)>,
}

/// Counters the engine turns into metrics once per batch.
#[derive(Debug, Default, Clone)]
pub struct AssetCounters {
    pub counted_opens: u64,
    pub excluded: [u64; 4],
    /// Hits dropped because their asset's rep switched `tracking` off.
    pub consent_dropped: u64,
}

#[derive(Debug)]
pub struct AssetJoin {
    prefetch_ms: Millis,
    reload_ms: Millis,
    pending_ms: Millis,
    retention_ms: Millis,
    presence_ms: Millis,
    product_prefix_window_ms: Millis,
    by_id: HashMap<Text, AssetIx>,
    slab: Vec<Option<Asset>>,
    free: Vec<AssetIx>,
    expiry: LazyTimers<AssetIx>,
    pending: HashMap<u64, Resolved>,
    pending_by_asset: HashMap<Text, Vec<u64>>,
    pending_timers: LazyTimers<u64>,
    next_pending: u64,
    presence: Vec<VecDeque<(Millis, bool)>>,
    /// Customers with a presence history (non-empty entries of `presence`).
    presence_customers: usize,
    links: PairMap<PairLinks>,
    link_timers: LazyTimers<Pair>,
    dirty: Vec<AssetIx>,
    /// Reps who switched `tracking` off: hits on their assets are dropped (consent).
    pub tracking_off: rustc_hash::FxHashSet<crate::directory::RepIx>,
    /// Stream sequences of the hits dropped so, for `Outputs::refused`.
    pub refused: Vec<u64>,
    /// Assets changed by late data since the last `take_dirty`.
    late: Vec<AssetIx>,
    pub counters: AssetCounters,
}

impl AssetJoin {
    pub fn new(p: &Pipeline) -> Self {
        AssetJoin {
            prefetch_ms: p.opens.prefetch_seconds * 1000,
            reload_ms: p.opens.reload_seconds * 1000,
            pending_ms: p.asset_join.pending_retention_seconds * 1000,
            retention_ms: p.asset_join.asset_retention_seconds * 1000,
            presence_ms: p.presence.retention_seconds * 1000,
            product_prefix_window_ms: p.web.product_visit_window_seconds * 1000,
            by_id: HashMap::default(),
            slab: Vec::new(),
            free: Vec::new(),
            expiry: LazyTimers::default(),
            pending: HashMap::default(),
            pending_by_asset: HashMap::default(),
            pending_timers: LazyTimers::default(),
            next_pending: 0,
            presence: Vec::new(),
            presence_customers: 0,
            links: PairMap::default(),
            link_timers: LazyTimers::default(),
            dirty: Vec::new(),
            tracking_off: Default::default(),
            late: Vec::new(),
            counters: AssetCounters::default(),
            refused: Vec::new(),
        }
    }

    pub fn asset(&self, ix: AssetIx) -> Option<&Asset> {
        self.slab.get(ix as usize).and_then(Option::as_ref)
    }

    /// Every retained asset.
    pub fn iter(&self) -> impl Iterator<Item = &Asset> {
        self.slab.iter().flatten()
    }

    /// The retained assets sent to a pair.
    pub fn assets_of(&self, pair: Pair) -> &[AssetIx] {
        self.links.get(&pair).map_or(&[], |l| l.assets.as_slice())
    }

    /// Whether `asset_id` has been sent (and not yet expired).
    pub fn knows(&self, asset_id: &str) -> bool {
        self.by_id.contains_key(asset_id)
    }

    pub fn asset_mut(&mut self, ix: AssetIx) -> Option<&mut Asset> {
        self.slab.get_mut(ix as usize).and_then(Option::as_mut)
    }

    /// Assets changed since the last call, in the order they first changed, and those of them
    /// that late data changed.
    pub fn take_dirty(&mut self) -> (Vec<AssetIx>, Vec<AssetIx>) {
        let dirty = std::mem::take(&mut self.dirty);
        self.clear_dirty(&dirty);
        (dirty, std::mem::take(&mut self.late))
    }

    /// The assets of `pair` changed by late data this batch (they stay listed for the batch's
    /// end too).
    pub fn late_of(&self, pair: Pair) -> Vec<AssetIx> {
        self.late
            .iter()
            .copied()
            .filter(|ix| self.asset(*ix).is_some_and(|a| a.pair == pair))
            .collect()
    }

    /// Marks `rows` decided on their present data: a later change marks them again (they may
    /// stay listed as changed until the batch's end, where a second look decides the same).
    pub fn clear_dirty(&mut self, rows: &[AssetIx]) {
        for &ix in rows {
            if let Some(Some(a)) = self.slab.get_mut(ix as usize) {
                a.dirty = false;
            }
        }
    }

    fn touch_asset(&mut self, ix: AssetIx, late_w: Option<Millis>) {
        if let Some(Some(a)) = self.slab.get_mut(ix as usize) {
            if let Some(w) = late_w {
                a.late_w = Some(a.late_w.map_or(w, |x| x.max(w)));
                self.late.push(ix);
            }
            if !a.dirty {
                a.dirty = true;
                self.dirty.push(ix);
            }
        }
    }

    /// A `*_sent` action: registers the asset, then joins the hits that waited for it.
    #[allow(clippy::too_many_arguments)]
    pub fn on_send(
        &mut self,
        ev: &Resolved,
        pair: Pair,
        action: Action,
        channel: Option<Channel>,
        asset_id: &str,
        w: Millis,
        touches: &mut Vec<Touch>,
    ) {
        if self.by_id.contains_key(asset_id) {
            // A second send of one asset id: the first send stands (asset ids are one copy).
            return;
        }
        let online_at_send = self
            .presence
            .get(pair.customer() as usize)
            .and_then(|h| h.iter().rev().find(|(t, _)| *t <= ev.t))
            .is_some_and(|(_, online)| *online);
        let links = self.links.entry_or_default(pair);
        let first_contract = links
            .contracts
            .iter()
            .filter(|(t, _)| *t >= ev.t)
            .min_by_key(|(t, _)| *t)
            .cloned();
        let asset = Asset {
            asset_id: asset_id.into(),
            pair,
            action,
            channel,
            sent_at: ev.t,
            counted: Vec::new(),
            excluded: Vec::new(),
            online_at_send,
            product_visits: 0,
            first_contract,
            late_w: None,
            alerts: Vec::new(),
            decision_due: Millis::MAX,
            dirty: false,
        };
        let ix = match self.free.pop() {
            Some(ix) => {
                self.slab[ix as usize] = Some(asset);
                ix
            }
            None => {
                self.slab.push(Some(asset));
                (self.slab.len() - 1) as AssetIx
            }
        };
        links.assets.push(ix);
        self.by_id.insert(asset_id.into(), ix);
        self.expiry.schedule(ev.t + self.retention_ms, ix);
        self.touch_asset(ix, ev.late.then_some(w));
        if let Some(ids) = self.pending_by_asset.remove(asset_id) {
            let mut waiting: Vec<Resolved> = ids
                .iter()
                .filter_map(|id| self.pending.remove(id))
                .collect();
            waiting.sort_by_key(|h| (h.t, h.what.rank()));
            for hit in waiting {
                self.apply_hit(ix, &hit, w, touches);
            }
        }
    }

    /// The assets whose rule decision the watermark `w` already allows but which are still
    /// undecided (changed, or a timer due), among those this event would change, with their
    /// pair (all are of one pair); `None` when there are none. The engine decides them first,
    /// so that a late event resolves an alert instead of silently preventing it (EVENTS.md §5).
    /// With `pair_wide` (a rule reads the pair's other assets) an event changes every asset of
    /// its pair.
    pub fn awaiting_decision(
        &self,
        what: &What,
        w: Millis,
        pair_wide: bool,
    ) -> Option<(Pair, Vec<AssetIx>)> {
        let pending = |ix: &AssetIx| {
            self.asset(*ix)
                .is_some_and(|a| a.dirty || a.decision_due < w)
        };
        let of_pair = |pair: Pair| {
            let rows: Vec<AssetIx> = self
                .links
                .get(&pair)?
                .assets
                .iter()
                .copied()
                .filter(|ix| pending(ix))
                .collect();
            (!rows.is_empty()).then_some((pair, rows))
        };
        match what {
            What::PixelHit { asset_id, .. } | What::WebHit { asset_id, .. } => {
                let ix = *self.by_id.get(asset_id)?;
                let pair = self.asset(ix)?.pair;
                if pair_wide {
                    of_pair(pair)
                } else {
                    pending(&ix).then(|| (pair, vec![ix]))
                }
            }
            What::Action {
                pair,
                action: Action::ContractSent,
                ..
            }
            | What::Approval {
                pair,
                contract: true,
            } => of_pair(*pair),
            // A new asset changes the others only through a rule that reads them.
            What::Action { pair, action, .. } if pair_wide && action.is_asset_send() => {
                of_pair(*pair)
            }
            _ => None,
        }
    }

    /// A contract event of the pair at `ev.t`.
    pub fn on_contract(&mut self, ev: &Resolved, pair: Pair, w: Millis) {
        let links = self.links.entry_or_default(pair);
        links.contracts.push((ev.t, ev.event_id.clone()));
        self.link_timers.schedule(ev.t + self.retention_ms, pair);
        let mut changed = Vec::new();
        for &ix in &links.assets {
            if let Some(Some(a)) = self.slab.get_mut(ix as usize)
                && a.sent_at <= ev.t
                && a.first_contract.as_ref().is_none_or(|(t, _)| ev.t < *t)
            {
                a.first_contract = Some((ev.t, ev.event_id.clone()));
                changed.push(ix);
            }
        }
        for ix in changed {
            self.touch_asset(ix, ev.late.then_some(w));
        }
    }

    /// A `wecom.presence` change.
    pub fn on_presence(&mut self, customer: CustomerIx, t: Millis, online: bool) {
        // Indexed by customer: directory indices are dense, and a customer's presence stays
        // known (its last change) for the as-of join.
        let ix = customer as usize;
        if self.presence.len() <= ix {
            self.presence.resize_with(ix + 1, VecDeque::new);
        }
        let h = &mut self.presence[ix];
        self.presence_customers += h.is_empty() as usize;
        let pos = h.partition_point(|(x, _)| *x <= t);
        h.insert(pos, (t, online));
        // Keep the retention window, plus the last change before it (the as-of value there).
        let cut = t - self.presence_ms;
        while h.len() > 1 && h[1].0 <= cut {
            h.pop_front();
        }
    }

    /// A pixel or web hit: joined to its asset, or held until the send.
    pub fn on_hit(&mut self, ev: Resolved, w: Millis, touches: &mut Vec<Touch>) {
        let asset_id = match &ev.what {
            What::PixelHit { asset_id, .. } | What::WebHit { asset_id, .. } => asset_id,
            _ => return,
        };
        match self.by_id.get(asset_id) {
            Some(&ix) => self.apply_hit(ix, &ev, w, touches),
            None => {
                let id = self.next_pending;
                self.next_pending += 1;
                self.pending_by_asset
                    .entry(asset_id.clone())
                    .or_default()
                    .push(id);
                self.pending_timers.schedule(ev.t + self.pending_ms, id);
                self.pending.insert(id, ev);
            }
        }
    }

    fn apply_hit(&mut self, ix: AssetIx, ev: &Resolved, w: Millis, touches: &mut Vec<Touch>) {
        let (prefetch_ms, reload_ms, window_ms) = (
            self.prefetch_ms,
            self.reload_ms,
            self.product_prefix_window_ms,
        );
        let Some(Some(a)) = self.slab.get_mut(ix as usize) else {
            return;
        };
        if !self.tracking_off.is_empty() && self.tracking_off.contains(&a.pair.rep()) {
            self.counters.consent_dropped += 1;
            if let What::PixelHit { stream_seq, .. } | What::WebHit { stream_seq, .. } = &ev.what {
                self.refused
                    .extend(stream_seq.map(std::num::NonZeroU64::get));
            }
            return;
        }
        let before_send = ev.t < a.sent_at;
        let mut touch = Touch {
            pair: a.pair,
            t: ev.t,
            channel: a.channel,
            counted_open: false,
            inbound: None,
            dwell_ms: None,
        };
        let mut changed = false;
        match &ev.what {
            What::PixelHit {
                hit,
                dwell_ms,
                proxy,
                ..
            } => {
                if *hit == HitKind::Open {
                    let cause = if before_send {
                        Some(Exclusion::BeforeSend)
                    } else if ev.t - a.sent_at < prefetch_ms {
                        Some(Exclusion::Prefetch)
                    } else if *proxy {
                        Some(Exclusion::Proxy)
                    } else {
                        let pos = a.counted.partition_point(|x| *x <= ev.t);
                        let previous = pos.checked_sub(1).map(|p| a.counted[p]);
                        previous
                            .filter(|p| ev.t - p < reload_ms)
                            .map(|_| Exclusion::Reload)
                    };
                    match cause {
                        None => {
                            let pos = a.counted.partition_point(|x| *x <= ev.t);
                            a.counted.insert(pos, ev.t);
                            touch.counted_open = true;
                            self.counters.counted_opens += 1;
                        }
                        Some(c) => {
                            if c != Exclusion::BeforeSend {
                                let pos = a.excluded.partition_point(|x| *x <= ev.t);
                                a.excluded.insert(pos, ev.t);
                            }
                            self.counters.excluded[c as usize] += 1;
                        }
                    }
                    changed = !before_send;
                } else if *hit == HitKind::Close && a.measures_depth() {
                    touch.dwell_ms = *dwell_ms;
                }
            }
            What::WebHit { product, .. }
                if *product && !before_send && ev.t - a.sent_at <= window_ms =>
            {
                a.product_visits += 1;
                changed = true;
            }
            _ => {}
        }
        if changed {
            self.touch_asset(ix, ev.late.then_some(w));
        }
        // A hit before its asset's send is no interaction of the pair (README "Choices").
        if !before_send {
            touches.push(touch);
        }
    }

    /// Expires assets, pending hits and pair links whose event-time TTL passed `w`.
    /// Returns the hits that never found their send.
    pub fn on_watermark(&mut self, w: Millis) -> Vec<Resolved> {
        while let Some((_, ix)) = self.expiry.pop_due(w) {
            // A rule decision the watermark allows comes first: keep the asset until it is made.
            if let Some(Some(a)) = self.slab.get(ix as usize)
                && (a.dirty || a.decision_due <= w)
            {
                self.expiry.schedule(w + 1, ix);
                continue;
            }
            let expired = matches!(self.slab.get(ix as usize), Some(Some(a)) if a.sent_at + self.retention_ms <= w);
            if expired && let Some(a) = self.slab[ix as usize].take() {
                self.by_id.remove(&a.asset_id);
                self.free.push(ix);
                if let Some(l) = self.links.get_mut(&a.pair) {
                    l.assets.retain(|x| *x != ix);
                }
            }
        }
        while let Some((_, pair)) = self.link_timers.pop_due(w) {
            let cut = w - self.retention_ms;
            if let Some(l) = self.links.get_mut(&pair) {
                l.contracts.retain(|(t, _)| *t > cut);
                if l.contracts.is_empty() && l.assets.is_empty() {
                    self.links.remove(&pair);
                }
            }
        }
        let mut unknown = Vec::new();
        while let Some((_, id)) = self.pending_timers.pop_due(w) {
            if let Some(hit) = self.take_pending(id) {
                unknown.push(hit);
            }
        }
        unknown
    }

    fn take_pending(&mut self, id: u64) -> Option<Resolved> {
        let hit = self.pending.remove(&id)?;
        if let What::PixelHit { asset_id, .. } | What::WebHit { asset_id, .. } = &hit.what
            && let Some(ids) = self.pending_by_asset.get_mut(asset_id)
        {
            ids.retain(|x| *x != id);
            if ids.is_empty() {
                self.pending_by_asset.remove(asset_id);
            }
        }
        Some(hit)
    }

    /// Every hit still waiting for its send (end of a replay), in the order they expire.
    pub fn drain_pending(&mut self) -> Vec<Resolved> {
        let mut out = Vec::new();
        while let Some((_, id)) = self.pending_timers.pop_due(Millis::MAX) {
            if let Some(hit) = self.take_pending(id) {
                out.push(hit);
            }
        }
        out
    }

    pub fn pending_retention_ms(&self) -> Millis {
        self.pending_ms
    }

    /// Sizes of the keyed state, for the state-size gauges.
    pub fn sizes(&self) -> [(&'static str, usize); 3] {
        [
            ("assets", self.by_id.len()),
            ("pending_hits", self.pending.len()),
            ("presence_customers", self.presence_customers),
        ]
    }
}
