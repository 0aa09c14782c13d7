//! The engine: one micro-batch at a time, input bytes → decode and validate → effective time →
//! identity resolution → dedup → watermark and reordering → operators → rules → outputs.
//! Live runs and replays drive the same engine; only the clock and the source differ
//! (`ClockMode`). Nothing here reads the system clock: callers pass `now`.

pub mod idset;
pub mod kernel;
pub mod output;
pub mod reorder;

use std::collections::VecDeque;
use std::num::NonZeroU64;

use reorder::ReorderBuffer;

use rustc_hash::FxHashSet as HashSet;
use std::sync::Arc;

use anyhow::Context;

use crate::config::Pipeline;
use crate::directory::{Directory, pair_ids};
use crate::event::{self, ApprovalType, Body, Channel, Event, Kind, Millis, RejectReason};
use crate::operators::actions::{ActionLog, ActionRow};
use crate::operators::assets::{AssetJoin, Exclusion};
use crate::operators::cdi::PairAggregates;
use crate::operators::health::{ProcessHealth, RepHealth};
use crate::operators::sessions::Sessions;
use crate::operators::{Pair, Resolved, Touch, What};
use crate::rules::{self, RuleSet, Stamp};
use crate::telemetry as m;

pub use output::{Alert, AlertStatus, Cdi, DeadLetter, DeadReason, Outputs, Session};

/// What became of one input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ingested {
    Taken,
    /// Dropped for consent: the caller may delete it from where it is stored.
    Refused,
}

/// Which clock stamps outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockMode {
    /// `fired_at`, `resolved_at` and dead letters' `at` are the wall clock passed as `now`.
    Live,
    /// Event time only: outputs are stamped from effective times and the watermark, so that
    /// the same input gives the same bytes.
    Replay,
}

/// One input message.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub raw: &'a [u8],
    /// When the message reached the pipeline's store (JetStream publish time); used as the
    /// event's `received_at` when the event has none.
    pub received_at: Option<Millis>,
    /// Its sequence in the input stream (a live run): an input refused for consent is reported
    /// by it in `Outputs::refused`, also when that happens batches later (a hit is checked when
    /// it joins its asset).
    pub stream_seq: Option<NonZeroU64>,
}

impl<'a> Input<'a> {
    /// A line of a file (replay, tests, benches): no store, so no publish time or sequence.
    pub fn line(raw: &'a [u8]) -> Self {
        Input {
            raw,
            received_at: None,
            stream_seq: None,
        }
    }
}

/// Counts gathered during a batch and emitted as metrics once at its end.
#[derive(Debug, Default)]
struct BatchCounts {
    events_in: [u64; 6],
    late: [u64; 6],
    dead: [u64; DeadReason::ALL.len()],
    duplicates: u64,
    unattributed_web: u64,
    ignored_approvals: u64,
    consent_dropped: [u64; crate::consent::Category::ALL.len()],
    alerts_firing: u64,
    alerts_resolved: u64,
    sessions: u64,
}

/// Totals since start, for summaries (replay, bench).
#[derive(Debug, Default, Clone)]
pub struct Totals {
    pub events_in: u64,
    pub duplicates: u64,
    pub late: u64,
    pub dead_letters: u64,
    pub unattributed_web_hits: u64,
    pub alerts: u64,
    pub sessions: u64,
}

pub struct Engine {
    p: Arc<Pipeline>,
    dir: Arc<Directory>,
    mode: ClockMode,
    max_seen: Option<Millis>,
    w: Millis,
    reorder: ReorderBuffer,
    dedup: idset::IdSet,
    /// Remembered ids in arrival order with their expiry. Arrival is nearly effective-time
    /// order, so a FIFO expires them with no heap; disorder only keeps an id a little longer.
    dedup_expiry: VecDeque<(Millis, u64)>,
    assets: AssetJoin,
    /// Kept only when a rule reads the `actions` table.
    actions: Option<ActionLog>,
    sessions: Sessions,
    pairs: PairAggregates,
    health: ProcessHealth,
    rules: RuleSet,
    touches: Vec<Touch>,
    contract_codes: HashSet<String>,
    /// Consent: categories switched off per rep (index = RepIx), none when everything is on.
    consent_off: Option<Vec<crate::consent::Mask>>,
    counts: BatchCounts,
    totals: Totals,
    /// Set while `finish` decides: no input can follow.
    complete: bool,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("watermark", &self.w)
            .field("mode", &self.mode)
            .finish()
    }
}

/// A decoded input line with its dedup key (`id_hash` of its event_id), or why it was rejected.
type Decoded = Result<(Event, u64), event::Rejection>;

/// The 64-bit key that dedup remembers for an `event_id`: a fixed-seed, full-quality hash, so
/// that the same id gives the same key in every run (a restart rebuilds the set from the stream).
fn id_hash(id: &str) -> u64 {
    use std::hash::BuildHasher;
    foldhash::quality::FixedState::with_seed(0x746f_7563_6873_7472).hash_one(id)
}

/// A rule evaluation failure is a bug, not bad input: loud, but the engine keeps running.
fn report(done: datafusion::error::Result<()>) {
    if let Err(e) = done {
        tracing::error!(error = %e, "rule evaluation failed");
    }
}

/// How many lines ahead `process` decodes (and loads what their lookups read), and how many
/// expiries ahead `advance` loads the dedup set's line: far enough for the load to finish,
/// near enough to stay in cache.
const DECODE_AHEAD: usize = 8;
const EXPIRE_AHEAD: usize = 8;
fn kind_ix(k: Kind) -> usize {
    k as usize
}

impl Engine {
    pub fn new(p: Arc<Pipeline>, dir: Arc<Directory>, mode: ClockMode) -> anyhow::Result<Engine> {
        crate::tune_allocator();
        let rules = rules::compile(&p).map_err(|problems| {
            anyhow::Error::new(crate::config::ConfigErrors {
                file: p.file.clone(),
                problems,
            })
        })?;
        let pairs = PairAggregates::new(&p.cdi, p.health.window_days * 86_400_000)
            .context("planning the CDI kernel")?;
        let mut engine = Engine {
            assets: AssetJoin::new(&p),
            actions: rules
                .reads_actions()
                .then(|| ActionLog::new(p.actions.retention_seconds as u64)),
            sessions: Sessions::new(p.gap_ms()),
            contract_codes: p.contracts.process_codes.iter().cloned().collect(),
            pairs,
            health: ProcessHealth::new(&p.health),
            rules,
            p,
            dir,
            mode,
            max_seen: None,
            w: Millis::MIN,
            reorder: ReorderBuffer::default(),
            dedup: idset::IdSet::default(),
            dedup_expiry: VecDeque::new(),
            touches: Vec::new(),
            consent_off: None,
            counts: BatchCounts::default(),
            totals: Totals::default(),
            complete: false,
        };
        engine.set_consent(&crate::consent::Consent::new(&engine.p.consent));
        Ok(engine)
    }

    /// The consent in force (the pipeline file's, then live updates from the bucket).
    pub fn set_consent(&mut self, consent: &crate::consent::Consent) {
        use crate::consent::Category;
        self.assets.tracking_off.clear();
        if consent.allows_everything() {
            self.consent_off = None;
            return;
        }
        let masks: Vec<_> = self
            .dir
            .reps
            .iter()
            .map(|r| consent.off(&r.rep_id))
            .collect();
        self.assets.tracking_off.extend(
            (0..masks.len())
                .filter(|ix| masks[*ix] & Category::Tracking.bit() != 0)
                .map(|ix| ix as crate::directory::RepIx),
        );
        self.consent_off = Some(masks);
    }

    /// Whether the rep of `what` switched its category off (then the event is dropped).
    fn consent_refuses(&mut self, what: &What) -> bool {
        use crate::consent::Category;
        let Some(masks) = &self.consent_off else {
            return false;
        };
        let (pair, category) = match what {
            What::Action { pair, action, .. } => (pair, Category::of_action(*action)),
            What::Message { pair, .. } => (pair, Category::Chat),
            What::Approval { pair, .. } => (pair, Category::Contracts),
            // Presence is the customer's; hits are checked against their asset's rep.
            What::Presence { .. } | What::PixelHit { .. } | What::WebHit { .. } => return false,
        };
        let off = masks.get(pair.rep() as usize).copied().unwrap_or(0) & category.bit() != 0;
        if off {
            self.counts.consent_dropped[category as usize] += 1;
        }
        off
    }

    /// The watermark, once an event has been seen (or it was advanced).
    pub fn watermark(&self) -> Option<Millis> {
        (self.w != Millis::MIN).then_some(self.w)
    }

    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    /// The time that stamps dead letters: the wall clock live, event time in a replay.
    fn clock(&self, now: Millis) -> Millis {
        match self.mode {
            ClockMode::Live => now,
            ClockMode::Replay => self.max_seen.unwrap_or(0),
        }
    }

    /// Processes one micro-batch of input messages, in arrival order.
    ///
    /// Lines are decoded `DECODE_AHEAD` places ahead of the one ingested: decoding is pure, and
    /// a decoded line names what its ingest will look up (its event_id in the dedup set, its
    /// rep and customer in the directory), so those lines are loaded while the lines before it
    /// are ingested instead of being waited for.
    pub fn process(&mut self, batch: &[Input<'_>], now: Millis) -> Outputs {
        let mut out = Outputs::default();
        let mut decoded = VecDeque::with_capacity(DECODE_AHEAD + 1);
        for input in batch.iter().take(DECODE_AHEAD) {
            decoded.push_back(self.decode_ahead(input.raw));
        }
        for (i, input) in batch.iter().enumerate() {
            if let Some(later) = batch.get(i + DECODE_AHEAD) {
                decoded.push_back(self.decode_ahead(later.raw));
            }
            // The line decoded next: input lines are often cold by now.
            if let Some(first) = batch.get(i + 2 * DECODE_AHEAD).and_then(|l| l.raw.first()) {
                crate::prefetch(first);
            }
            let Some(ev) = decoded.pop_front() else {
                break;
            };
            if self.ingest(input, ev, now, &mut out) == Ingested::Refused {
                out.refused.extend(input.stream_seq.map(NonZeroU64::get));
            }
        }
        self.end_batch(now, &mut out);
        out
    }

    /// Decodes a line a few places ahead of the one ingested, and loads what its lookups will
    /// read. The event comes with its dedup key (`id_hash`), computed once for both.
    fn decode_ahead(&self, raw: &[u8]) -> Decoded {
        let ev = event::decode(raw)?;
        let h = id_hash(&ev.event_id);
        self.dedup.prefetch(h);
        let (rep, customer) = pair_ids(&ev.body);
        if let Some((kind, id)) = rep {
            self.dir.prefetch_rep(kind, id);
        }
        if let Some((kind, id)) = customer {
            self.dir.prefetch_customer(kind, id);
        }
        Ok((ev, h))
    }

    /// Moves the watermark to `watermark` (never backwards) and fires what is due: idle
    /// advancement in live runs, the end of a replay.
    pub fn advance_to(&mut self, watermark: Millis, now: Millis) -> Outputs {
        let mut out = Outputs::default();
        if watermark > self.w {
            self.advance(watermark, now, &mut out);
        }
        self.end_batch(now, &mut out);
        out
    }

    /// Ends a replay (EVENTS.md §7): the watermark moves to the greatest effective time seen or
    /// `until`, what is due fires, and hits still waiting for their send are dead-lettered.
    pub fn finish(&mut self, until: Option<Millis>, now: Millis) -> Outputs {
        let target = match (self.max_seen, until) {
            (Some(a), Some(b)) => a.max(b),
            (a, b) => a.or(b).unwrap_or(Millis::MIN),
        };
        let mut out = Outputs::default();
        if target > self.w {
            self.advance(target, now, &mut out);
        }
        // No input follows: what is at the watermark is complete too.
        let w = self.w;
        self.release(|t| t <= w, &mut out);
        self.complete = true;
        self.end_batch(now, &mut out);
        self.complete = false;
        for hit in self.assets.drain_pending() {
            let at = match self.mode {
                ClockMode::Live => now,
                ClockMode::Replay => self.w,
            };
            self.unknown_asset(
                hit,
                at,
                "its asset was never sent before the end of the input",
                &mut out,
            );
        }
        self.emit_counts();
        out
    }

    /// CDI of every pair with an event in the window, as of the watermark.
    pub fn cdi(&self) -> Vec<Cdi> {
        match self.watermark() {
            Some(w) => self.pairs.all(w, &self.dir),
            None => Vec::new(),
        }
    }

    fn dead(
        &mut self,
        reason: DeadReason,
        error: String,
        raw: &[u8],
        at: Millis,
        received_at: Option<Millis>,
        out: &mut Outputs,
    ) {
        self.counts.dead[reason as usize] += 1;
        out.dead_letters.push(DeadLetter {
            reason,
            error,
            raw: raw.to_vec(),
            at,
            received_at,
        });
    }

    fn unknown_asset(&mut self, hit: Resolved, at: Millis, why: &str, out: &mut Outputs) {
        let asset = match &hit.what {
            What::PixelHit { asset_id, .. } | What::WebHit { asset_id, .. } => asset_id.to_string(),
            _ => String::new(),
        };
        let raw = hit.raw.unwrap_or_default();
        self.dead(
            DeadReason::UnknownAsset,
            format!("asset `{asset}`: {why}"),
            &raw,
            at,
            None,
            out,
        );
    }

    /// Takes one input message, `decoded` from its bytes.
    fn ingest(
        &mut self,
        input: &Input<'_>,
        decoded: Decoded,
        now: Millis,
        out: &mut Outputs,
    ) -> Ingested {
        let clock = self.clock(now);
        let (mut ev, h) = match decoded {
            Ok(x) => x,
            Err(rej) => {
                let reason = match rej.reason {
                    RejectReason::InvalidJson => DeadReason::InvalidJson,
                    RejectReason::SchemaViolation => DeadReason::SchemaViolation,
                    RejectReason::Oversized => DeadReason::Oversized,
                };
                self.dead(reason, rej.error, input.raw, clock, input.received_at, out);
                return Ingested::Taken;
            }
        };
        if ev.received_at.is_none() {
            ev.received_at = input.received_at;
        }
        let t = ev.effective_time();
        let tolerance = self.p.time.future_tolerance_seconds * 1000;
        if t > now.saturating_add(tolerance) {
            let error = format!(
                "effective time {} is more than {} s ahead of the pipeline clock {}",
                event::format_time(t),
                self.p.time.future_tolerance_seconds,
                event::format_time(now)
            );
            let at = input.received_at;
            self.dead(
                DeadReason::FutureTimestamp,
                error,
                input.raw,
                clock,
                at,
                out,
            );
            return Ingested::Taken;
        }
        let kind = ev.kind();
        let what = match self.resolve(ev.body, input.stream_seq) {
            Ok(Some(what)) => what,
            Ok(None) => return Ingested::Taken,
            Err(error) => {
                let at = input.received_at;
                self.dead(
                    DeadReason::UnresolvedIdentity,
                    error,
                    input.raw,
                    clock,
                    at,
                    out,
                );
                return Ingested::Taken;
            }
        };
        if self.consent_refuses(&what) {
            return Ingested::Refused;
        }
        if !self.dedup.insert(h) {
            self.counts.duplicates += 1;
            return Ingested::Taken;
        }
        self.dedup_expiry
            .push_back((t + self.p.dedup.retention_seconds * 1000, h));
        self.counts.events_in[kind_ix(kind)] += 1;
        let late = t < self.w;
        // A hit keeps its bytes only while its asset is unknown: it may become `unknown_asset`.
        let keeps_raw = match &what {
            What::PixelHit { asset_id, .. } | What::WebHit { asset_id, .. } => {
                !self.assets.knows(asset_id)
            }
            _ => false,
        };
        let resolved = Resolved {
            t,
            event_id: ev.event_id,
            late,
            what,
            raw: keeps_raw.then(|| input.raw.into()),
        };
        if late {
            self.counts.late[kind_ix(kind)] += 1;
            self.decide_before_late(&resolved.what, now, out);
            self.apply(resolved, out);
        } else {
            self.reorder.push(resolved);
        }
        if self.max_seen.is_none_or(|m| t > m) {
            self.max_seen = Some(t);
            let w = t - self.p.lateness_ms();
            if w > self.w {
                self.advance(w, now, out);
            }
        }
        Ingested::Taken
    }

    /// Resolves ids through the directory. Ok(None): accepted but names no pair.
    /// `stream_seq`: the input's, kept by hits (whose consent is checked when they join).
    fn resolve(
        &mut self,
        body: Body,
        stream_seq: Option<NonZeroU64>,
    ) -> Result<Option<What>, String> {
        let dir = &*self.dir;
        // The rep first, then the customer: the first unknown id is the one reported.
        let (rep_id, customer_id) = pair_ids(&body);
        let rep = rep_id
            .map(|(kind, id)| {
                dir.rep_by(kind, id)
                    .ok_or_else(|| format!("unknown {} `{id}`", kind.rep_field()))
            })
            .transpose()?;
        let customer = customer_id
            .map(|(kind, id)| {
                dir.customer_by(kind, id)
                    .ok_or_else(|| format!("unknown {} `{id}`", kind.customer_field()))
            })
            .transpose()?;
        let pair = || {
            rep.zip(customer)
                .map(|(r, c)| Pair::new(r, c))
                .ok_or_else(|| "the event names no rep and customer".to_string())
        };
        Ok(Some(match body {
            Body::CrmAction(a) => What::Action {
                pair: pair()?,
                action: a.action,
                channel: a.channel,
                asset_id: a.asset_id,
                city: a.city,
            },
            Body::PixelHit(h) => What::PixelHit {
                proxy: h.ua.as_deref().is_some_and(|ua| {
                    self.p
                        .opens
                        .proxy_user_agents
                        .iter()
                        .any(|p| ua.contains(p.as_str()))
                }),
                asset_id: h.asset_id,
                hit: h.hit,
                dwell_ms: h.dwell_ms,
                stream_seq,
            },
            Body::WebHit(h) => match h.utm_content {
                Some(asset_id) => What::WebHit {
                    product: h.path.starts_with(&self.p.web.product_path_prefix),
                    asset_id,
                    stream_seq,
                },
                None => {
                    self.counts.unattributed_web += 1;
                    return Ok(None);
                }
            },
            Body::WecomPresence(p) => What::Presence {
                customer: customer.ok_or("the event names no customer")?,
                online: p.status == event::Presence::Online,
            },
            Body::WecomMessage(msg) => What::Message {
                pair: pair()?,
                inbound: msg.direction == event::Direction::In,
            },
            Body::DingtalkApproval(a) => {
                if a.customer_id.is_none() {
                    // Names no customer: no pair, so no interaction and no contract event.
                    self.counts.ignored_approvals += 1;
                    return Ok(None);
                }
                What::Approval {
                    pair: pair()?,
                    contract: a.kind == ApprovalType::Start
                        && self.contract_codes.contains(a.process_code.as_str()),
                }
            }
        }))
    }

    /// Moves the watermark: releases waiting events in effective-time order, then fires the
    /// operators' event-time timers.
    fn advance(&mut self, w: Millis, now: Millis, out: &mut Outputs) {
        self.w = w;
        // An event exactly at the watermark is on time, and so are its same-instant peers that
        // may still arrive: release only what is strictly behind the watermark.
        self.release(|t| t < w, out);
        self.sessions.on_watermark(w, &self.dir, &mut out.sessions);
        if let Some(log) = &mut self.actions {
            log.on_watermark(w);
        }
        self.health.on_watermark(w);
        for hit in self.assets.on_watermark(w) {
            let at = match self.mode {
                ClockMode::Live => now,
                ClockMode::Replay => hit.t + self.assets.pending_retention_ms(),
            };
            let days = self.assets.pending_retention_ms() as f64 / 86_400_000.0;
            self.unknown_asset(hit, at, &format!("no send within {days} days"), out);
        }
        while let Some(&(at, h)) = self.dedup_expiry.front()
            && at <= w
        {
            if let Some((_, later)) = self.dedup_expiry.get(EXPIRE_AHEAD) {
                self.dedup.prefetch(*later);
            }
            self.dedup_expiry.pop_front();
            self.dedup.remove(h);
        }
    }

    fn release(&mut self, ready: impl Fn(Millis) -> bool, out: &mut Outputs) {
        while self.reorder.next_time().is_some_and(&ready) {
            if let Some(ev) = self.reorder.pop() {
                self.apply(ev, out);
            }
        }
    }

    /// Applies one event to the operators (in effective-time order, or late).
    fn apply(&mut self, ev: Resolved, out: &mut Outputs) {
        let w = self.w;
        let mut touches = std::mem::take(&mut self.touches);
        let touch = |pair, channel, inbound| Touch {
            pair,
            t: ev.t,
            channel,
            counted_open: false,
            inbound,
            dwell_ms: None,
        };
        match &ev.what {
            What::Action {
                pair,
                action,
                channel,
                asset_id,
                city,
            } => {
                touches.push(touch(*pair, *channel, None));
                if *action == event::Action::LeadAssigned {
                    self.health.on_lead(*pair, ev.t);
                } else if channel.is_some() {
                    self.health.on_rep_touch(*pair, ev.t);
                }
                if let Some(log) = &mut self.actions {
                    let row = ActionRow {
                        event_id: ev.event_id.clone(),
                        pair: *pair,
                        action: *action,
                        channel: *channel,
                        city: city.clone(),
                        asset_id: asset_id.clone(),
                        at: ev.t,
                        late_w: ev.late.then_some(w),
                        alerts: Vec::new(),
                        decision_due: Millis::MAX,
                    };
                    log.add(row);
                }
                if let (true, Some(asset_id)) = (action.is_asset_send(), asset_id) {
                    self.assets
                        .on_send(&ev, *pair, *action, *channel, asset_id, w, &mut touches);
                }
                if *action == event::Action::ContractSent {
                    self.assets.on_contract(&ev, *pair, w);
                }
            }
            What::Approval { pair, contract } => {
                touches.push(touch(*pair, None, None));
                if *contract {
                    self.assets.on_contract(&ev, *pair, w);
                }
            }
            What::Presence { customer, online } => {
                self.assets.on_presence(*customer, ev.t, *online);
            }
            What::Message { pair, inbound } => {
                touches.push(touch(*pair, Some(Channel::Wechat), Some(*inbound)));
                if !*inbound {
                    self.health.on_rep_touch(*pair, ev.t);
                }
            }
            What::PixelHit { .. } | What::WebHit { .. } => {
                self.assets.on_hit(ev, w, &mut touches);
            }
        }
        for t in touches.drain(..) {
            if self.sessions.add(&t, &self.dir, &mut out.sessions) {
                self.pairs.add_session_start(t.pair, t.t);
            }
            self.pairs.add(&t);
        }
        self.touches = touches;
    }

    /// Ends a micro-batch: the CDI kernel reduces the batch's touches, rules run on changed
    /// rows and due timers, metrics are emitted once.
    fn end_batch(&mut self, now: Millis, out: &mut Outputs) {
        let w = self.w;
        if let Err(e) = self.pairs.flush(w) {
            // A kernel failure is a bug, not bad input: make it loud but keep running.
            tracing::error!(error = %e, "CDI kernel failed");
        }
        out.refused.append(&mut self.assets.refused);
        self.decide(now, out);
        for a in &out.alerts {
            // Alerts are few: counted one by one, by rule and status.
            metrics::counter!(m::ALERTS, "rule" => a.rule.clone(), "status" => a.status.as_str())
                .increment(1);
            match a.status {
                AlertStatus::Firing => {
                    self.counts.alerts_firing += 1;
                    metrics::counter!(m::REP_ALERTS, "rep" => a.rep_id.clone(),
                        "region" => a.region.clone(), "rule" => a.rule.clone())
                    .increment(1);
                    if let Some(rep) = self.dir.rep(&a.rep_id) {
                        self.health.on_alert(rep, &a.rule);
                    }
                }
                AlertStatus::Resolved => self.counts.alerts_resolved += 1,
            }
        }
        self.counts.sessions += out.sessions.len() as u64;
        self.emit_counts();
    }

    /// Runs the rules on changed rows and on rows whose timer the watermark reached.
    fn decide(&mut self, now: Millis, out: &mut Outputs) {
        self.decide_assets(now, out);
        self.decide_actions(now, out);
    }

    /// Before a late event is applied: decides the rows it would change that the watermark
    /// already allows, and only those (the rest keep their decisions for the batch's end).
    fn decide_before_late(&mut self, what: &What, now: Millis, out: &mut Outputs) {
        let stamp = self.stamp(now);
        let (pair_wide, w) = (self.rules.assets_use_context(), self.w);
        if let Some((pair, rows)) = self.assets.awaiting_decision(what, w, pair_wide) {
            self.assets.clear_dirty(&rows);
            let late = self.assets.late_of(pair);
            let done = self.rules.evaluate_assets(
                (rows, late),
                false,
                &mut self.assets,
                &self.dir,
                stamp,
                &mut out.alerts,
            );
            report(done);
        }
        if let (Some(log), What::Action { pair, .. }) = (&mut self.actions, what) {
            let rows = log.awaiting_decision(pair.rep(), w);
            if !rows.is_empty() {
                let late = log.late_of(pair.rep());
                let done = self.rules.evaluate_actions(
                    (rows, late),
                    false,
                    log,
                    &self.dir,
                    stamp,
                    &mut out.alerts,
                );
                report(done);
            }
        }
    }

    fn stamp(&self, now: Millis) -> Stamp {
        Stamp {
            now: (self.mode == ClockMode::Live).then_some(now),
            watermark: self.w,
            complete: self.complete,
        }
    }

    fn decide_assets(&mut self, now: Millis, out: &mut Outputs) {
        let stamp = self.stamp(now);
        let dirty = self.assets.take_dirty();
        let done = self.rules.evaluate_assets(
            dirty,
            true,
            &mut self.assets,
            &self.dir,
            stamp,
            &mut out.alerts,
        );
        report(done);
    }

    fn decide_actions(&mut self, now: Millis, out: &mut Outputs) {
        let stamp = self.stamp(now);
        if let Some(log) = &mut self.actions {
            let dirty = log.take_dirty();
            report(self.rules.evaluate_actions(
                dirty,
                true,
                log,
                &self.dir,
                stamp,
                &mut out.alerts,
            ));
        }
    }

    fn emit_counts(&mut self) {
        let c = std::mem::take(&mut self.counts);
        for k in Kind::ALL {
            let (n, late) = (c.events_in[kind_ix(k)], c.late[kind_ix(k)]);
            if n > 0 {
                metrics::counter!(m::EVENTS_IN, "kind" => k.as_str()).increment(n);
            }
            if late > 0 {
                metrics::counter!(m::LATE_EVENTS, "kind" => k.as_str()).increment(late);
            }
            self.totals.events_in += n;
            self.totals.late += late;
        }
        for r in DeadReason::ALL {
            let n = c.dead[r as usize];
            if n > 0 {
                metrics::counter!(m::DEAD_LETTERS, "reason" => r.as_str()).increment(n);
                self.totals.dead_letters += n;
            }
        }
        let a = std::mem::take(&mut self.assets.counters);
        metrics::counter!(m::COUNTED_OPENS).increment(a.counted_opens);
        for e in Exclusion::ALL {
            let n = a.excluded[e as usize];
            if n > 0 {
                metrics::counter!(m::EXCLUDED_OPENS, "cause" => e.as_str()).increment(n);
            }
        }
        if c.duplicates > 0 {
            metrics::counter!(m::DUPLICATES).increment(c.duplicates);
        }
        if c.unattributed_web > 0 {
            metrics::counter!(m::UNATTRIBUTED_WEB_HITS).increment(c.unattributed_web);
        }
        for cat in crate::consent::Category::ALL {
            let n = c.consent_dropped[cat as usize];
            if n > 0 {
                metrics::counter!(m::CONSENT_DROPPED, "category" => cat.as_str()).increment(n);
            }
        }
        if a.consent_dropped > 0 {
            metrics::counter!(m::CONSENT_DROPPED, "category" => "tracking")
                .increment(a.consent_dropped);
        }
        if c.ignored_approvals > 0 {
            metrics::counter!(m::IGNORED_EVENTS, "cause" => "approval_without_customer")
                .increment(c.ignored_approvals);
        }
        let late_sessions = std::mem::take(&mut self.sessions.late_dropped);
        if late_sessions > 0 {
            metrics::counter!(m::IGNORED_EVENTS, "cause" => "late_for_emitted_session")
                .increment(late_sessions);
        }
        if c.sessions > 0 {
            metrics::counter!(m::SESSIONS).increment(c.sessions);
        }
        for fr in self.health.take_first_responses() {
            metrics::histogram!(m::FIRST_RESPONSE_SECONDS,
                "region" => self.dir.region_of(fr.rep).to_string())
            .record(fr.seconds);
        }
        self.totals.duplicates += c.duplicates;
        self.totals.unattributed_web_hits += c.unattributed_web;
        self.totals.alerts += c.alerts_firing + c.alerts_resolved;
        self.totals.sessions += c.sessions;
        if let Some(w) = self.watermark() {
            metrics::gauge!(m::WATERMARK_SECONDS).set(w as f64 / 1000.0);
        }
    }

    /// Remember which pairs' CDI changes, for `take_changed_cdi` (live runs publish them).
    pub fn track_cdi_changes(&mut self) {
        self.pairs.track_changes();
    }

    /// `(rep_id, customer_id, CDI)` of every pair whose CDI may have changed since the last
    /// call, as of the watermark; None when the pair has no event in the window any more.
    pub fn take_changed_cdi(&mut self) -> Vec<(String, String, Option<Cdi>)> {
        let Some(w) = self.watermark() else {
            return Vec::new();
        };
        self.pairs
            .take_changed(w, &self.dir)
            .into_iter()
            .map(|(p, cdi)| {
                (
                    self.dir.rep_id(p.rep()).to_string(),
                    self.dir.customer_id(p.customer()).to_string(),
                    cdi,
                )
            })
            .collect()
    }

    /// Every rep's process-health figures as of the watermark (README "Business metrics").
    pub fn health(&self) -> Vec<RepHealth> {
        match self.watermark() {
            Some(w) => self
                .health
                .snapshot(w, &self.assets, &self.pairs, &self.dir),
            None => Vec::new(),
        }
    }

    pub fn pipeline(&self) -> &Pipeline {
        &self.p
    }

    pub fn directory(&self) -> &Directory {
        &self.dir
    }

    /// Entries held by each piece of keyed state.
    pub fn state_sizes(&self) -> Vec<(&'static str, usize)> {
        let mut v: Vec<(&'static str, usize)> = self.assets.sizes().to_vec();
        v.extend([
            ("session_pairs", self.sessions.len()),
            // Pairs with CDI buckets or session starts in their windows.
            ("cdi_pairs", self.pairs.len()),
            ("lead_pairs", self.health.len()),
            ("reorder", self.reorder.len()),
            ("dedup", self.dedup.len()),
            ("rule_timers", self.rules.timers()),
            ("actions", self.actions.as_ref().map_or(0, ActionLog::len)),
        ]);
        v
    }

    /// Updates the state-size gauges.
    pub fn emit_state_metrics(&self) {
        for (name, n) in self.state_sizes() {
            metrics::gauge!(m::STATE_ENTRIES, "state" => name).set(n as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query rule decides a row again when its row-level `due_at` moves, even though only
    /// on-time data changed the row: the rule below is due at the last open and fires at the
    /// third, so each open must be decided anew after the earlier ones were (each event comes
    /// in its own micro-batch, after the watermark passed the one before).
    #[test]
    fn a_query_rule_decides_again_when_its_due_at_moves() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let text = crate::config::default_text();
        let head = &text[..text.find("[[rules]]").expect("rules")];
        let rule = r#"
[[rules]]
name = "third_open"
table = "assets"
due_at = "last_open_at"
query = "SELECT __row, last_open_at AS due_at, counted_opens >= 3 AS fire FROM assets"
severity = "info"
summary = "third open"
"#;
        let tmp = tempfile::tempdir().expect("tmp");
        let file = tmp.path().join("p.toml");
        std::fs::write(&file, format!("{head}{rule}")).expect("write");
        let pipeline = Arc::new(Pipeline::load(&file).expect("pipeline"));
        let dir = Arc::new(Directory::load(&root.join("tests/cases/directory")).expect("dir"));
        let mut engine = Engine::new(pipeline, dir, ClockMode::Replay).expect("engine");
        let send = r#"{"event_id":"s","kind":"crm.action","ts":"2026-11-02T01:00:00Z","rep_id":"r1","customer_id":"c1","action":"quote_sent","channel":"email","asset_id":"q1"}"#;
        let mut lines = vec![send.to_owned()];
        for h in 1..=3 {
            lines.push(format!(
                r#"{{"event_id":"o{h}","kind":"pixel.hit","ts":"2026-11-02T0{}:00:00Z","asset_id":"q1","hit":"open"}}"#,
                1 + 2 * h
            ));
            // Moves the watermark past the open (allowed lateness: 5 minutes).
            lines.push(format!(
                r#"{{"event_id":"p{h}","kind":"wecom.presence","ts":"2026-11-02T0{}:00:00Z","external_userid":"wo_c2","status":"online"}}"#,
                2 + 2 * h
            ));
        }
        let now = 1_893_456_000_000; // 2030-01-01
        let mut alerts = Vec::new();
        for line in &lines {
            let input = Input::line(line.as_bytes());
            alerts.extend(engine.process(&[input], now).alerts);
        }
        alerts.extend(engine.finish(None, now).alerts);
        let got: Vec<(&str, &str, Millis)> = alerts
            .iter()
            .map(|a| (a.rule.as_str(), a.status.as_str(), a.due_at))
            .collect();
        let third_open = 1_793_581_200_000 + 6 * 3_600_000; // 2026-11-02T07:00:00Z
        assert_eq!(got, [("third_open", "firing", third_open)]);
    }

    /// Each kind of event names its rep and customer by its own kind of id, and a dead letter
    /// for an unknown one names the field it came from (the rep's before the customer's).
    #[test]
    fn unknown_ids_are_named_by_the_field_they_came_from() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let pipeline =
            Arc::new(Pipeline::load(&root.join("pipelines/default.toml")).expect("pipeline"));
        let dir = Arc::new(Directory::load(&root.join("tests/cases/directory")).expect("dir"));
        let mut engine = Engine::new(pipeline, dir, ClockMode::Replay).expect("engine");
        let ts = r#""ts":"2026-11-02T01:00:00Z""#;
        let cases = [
            (
                format!(
                    r#"{{"event_id":"a","kind":"crm.action",{ts},"rep_id":"r9","customer_id":"c99","action":"call","channel":"phone"}}"#
                ),
                "unknown rep_id `r9`",
            ),
            (
                format!(
                    r#"{{"event_id":"b","kind":"crm.action",{ts},"rep_id":"r1","customer_id":"c99","action":"call","channel":"phone"}}"#
                ),
                "unknown customer_id `c99`",
            ),
            (
                format!(
                    r#"{{"event_id":"c","kind":"wecom.message",{ts},"wecom_userid":"r1","external_userid":"wo_c1","direction":"in"}}"#
                ),
                "unknown WeCom wecom_userid `r1`",
            ),
            (
                format!(
                    r#"{{"event_id":"d","kind":"wecom.message",{ts},"wecom_userid":"wx_r1","external_userid":"c1","direction":"in"}}"#
                ),
                "unknown WeCom external_userid `c1`",
            ),
            (
                format!(
                    r#"{{"event_id":"e","kind":"wecom.presence",{ts},"external_userid":"wo_c99","status":"online"}}"#
                ),
                "unknown WeCom external_userid `wo_c99`",
            ),
            (
                format!(
                    r#"{{"event_id":"f","kind":"dingtalk.approval",{ts},"process_instance_id":"p","process_code":"PROC-CONTRACT","type":"start","staff_id":"r1","customer_id":"c1"}}"#
                ),
                "unknown DingTalk staff_id `r1`",
            ),
            (
                format!(
                    r#"{{"event_id":"g","kind":"dingtalk.approval",{ts},"process_instance_id":"p","process_code":"PROC-CONTRACT","type":"start","staff_id":"dt_r1","customer_id":"wo_c1"}}"#
                ),
                "unknown customer_id `wo_c1`",
            ),
        ];
        let lines: Vec<Input<'_>> = cases
            .iter()
            .map(|(line, _)| Input::line(line.as_bytes()))
            .collect();
        let now = 1_893_456_000_000; // 2030-01-01
        let mut out = engine.process(&lines, now);
        let end = engine.finish(None, now);
        out.dead_letters.extend(end.dead_letters);
        let errors: Vec<(&str, &str)> = out
            .dead_letters
            .iter()
            .map(|d| (d.reason.as_str(), d.error.as_str()))
            .collect();
        let want: Vec<(&str, &str)> = cases
            .iter()
            .map(|(_, e)| ("unresolved_identity", *e))
            .collect();
        assert_eq!(errors, want);
    }
}
