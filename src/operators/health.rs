//! Process health per rep (README "Business metrics"): the state the per-rep rates need beyond
//! what the asset join and the CDI aggregates already hold (leads and their first touch,
//! alerts fired; session starts are kept in the CDI pair record), and the snapshot that turns
//! all of it into one figure set per rep, as of a watermark: live it feeds the
//! `touchstream_rep_*` gauges, a replay writes it.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap as HashMap;
use serde_json::{Map, Value, json};

use crate::config::{HealthSection, Thresholds};
use crate::directory::{Directory, RepIx};
use crate::event::{Millis, format_time};

use super::assets::AssetJoin;
use super::cdi::PairAggregates;
use super::pairmap::PairMap;
use super::{LazyTimers, Pair};

#[derive(Debug, Clone, Copy)]
struct Lead {
    at: Millis,
    first_touch: Option<Millis>,
}

/// Whether a lead of the pair still waits for its first touch.
fn waiting(leads: &[Lead]) -> bool {
    leads.iter().any(|l| l.first_touch.is_none())
}

/// Pairs with a lead waiting for its first touch, counted by customer (a customer normally has
/// one rep, but nothing requires it), with a bit per customer that says whether the count is
/// not zero: the bits are what every rep touch reads (128 KiB for a million customers), the
/// counts change only when a lead is assigned, first touched or forgotten.
#[derive(Debug, Default)]
struct Awaiting {
    bits: Vec<u64>,
    counts: Vec<u32>,
}

impl Awaiting {
    fn any(&self, customer: u32) -> bool {
        let c = customer as usize;
        self.bits
            .get(c / 64)
            .is_some_and(|w| w >> (c % 64) & 1 == 1)
    }

    fn add(&mut self, customer: u32) {
        let c = customer as usize;
        if c >= self.counts.len() {
            self.counts.resize(c + 1, 0);
            self.bits.resize(c / 64 + 1, 0);
        }
        self.counts[c] += 1;
        self.bits[c / 64] |= 1 << (c % 64);
    }

    fn remove(&mut self, customer: u32) {
        let c = customer as usize;
        if let Some(n) = self.counts.get_mut(c) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.bits[c / 64] &= !(1 << (c % 64));
            }
        }
    }
}

/// A first response observed: the rep and the seconds from `lead_assigned` to the touch.
#[derive(Debug, Clone, Copy)]
pub struct FirstResponse {
    pub rep: RepIx,
    pub seconds: f64,
}

#[derive(Debug)]
pub struct ProcessHealth {
    window_ms: Millis,
    followup_ms: Millis,
    reply_ms: Millis,
    /// `lead_assigned` times of the pairs that have leads in the window, with the rep's first
    /// touch at or after each.
    leads: PairMap<Vec<Lead>>,
    /// Which pairs have a lead still waiting for its first touch, by customer: every rep touch
    /// asks, and few pairs wait, so the answer is mostly a bit in a small (cached) set instead
    /// of a probe of `leads` (cold with a million pairs).
    awaiting: Awaiting,
    lead_timers: LazyTimers<Pair>,
    /// Firing alerts per rep and rule, since start.
    alerts: HashMap<RepIx, BTreeMap<String, u64>>,
    /// First responses since the last `take_first_responses` (for the histogram).
    first_responses: Vec<FirstResponse>,
}

impl ProcessHealth {
    pub fn new(cfg: &HealthSection) -> Self {
        ProcessHealth {
            window_ms: cfg.window_days * 86_400_000,
            followup_ms: cfg.followup_within_hours * 3_600_000,
            reply_ms: cfg.reply_within_hours * 3_600_000,
            leads: PairMap::default(),
            awaiting: Awaiting::default(),
            lead_timers: LazyTimers::default(),
            alerts: HashMap::default(),
            first_responses: Vec::new(),
        }
    }

    /// Pairs with leads in the window (session starts are kept with the CDI state).
    pub fn len(&self) -> usize {
        self.leads.len()
    }

    pub fn is_empty(&self) -> bool {
        self.leads.is_empty()
    }

    /// A `lead_assigned` for the pair at `t`.
    pub fn on_lead(&mut self, pair: Pair, t: Millis) {
        let leads = self.leads.entry_or_default(pair);
        if !waiting(leads) {
            self.awaiting.add(pair.customer());
        }
        leads.push(Lead {
            at: t,
            first_touch: None,
        });
        self.lead_timers.schedule(t + self.window_ms, pair);
    }

    /// A touch by the rep (an action with a channel, a WeCom message out): the first response
    /// to every lead of the pair assigned at or before `t` that had none.
    pub fn on_rep_touch(&mut self, pair: Pair, t: Millis) {
        if !self.awaiting.any(pair.customer()) {
            return;
        }
        let Some(leads) = self.leads.get_mut(&pair) else {
            return;
        };
        let was_waiting = waiting(leads);
        for lead in leads.iter_mut() {
            if lead.first_touch.is_none() && lead.at <= t {
                lead.first_touch = Some(t);
                self.first_responses.push(FirstResponse {
                    rep: pair.rep(),
                    seconds: (t - lead.at) as f64 / 1000.0,
                });
            }
        }
        if was_waiting && !waiting(leads) {
            self.awaiting.remove(pair.customer());
        }
    }

    /// A firing alert on a row of `rep`.
    pub fn on_alert(&mut self, rep: RepIx, rule: &str) {
        *self
            .alerts
            .entry(rep)
            .or_default()
            .entry(rule.to_string())
            .or_default() += 1;
    }

    pub fn take_first_responses(&mut self) -> Vec<FirstResponse> {
        std::mem::take(&mut self.first_responses)
    }

    /// Forgets leads that left the window as of `w`.
    pub fn on_watermark(&mut self, w: Millis) {
        let cut = w - self.window_ms;
        while let Some((_, pair)) = self.lead_timers.pop_due(w) {
            if let Some(leads) = self.leads.get_mut(&pair) {
                let was_waiting = waiting(leads);
                leads.retain(|l| l.at >= cut);
                if was_waiting && !waiting(leads) {
                    self.awaiting.remove(pair.customer());
                }
                if leads.is_empty() {
                    self.leads.remove(&pair);
                }
            }
        }
    }

    /// Every rep's figures as of the watermark `w`, in directory order.
    pub fn snapshot(
        &self,
        w: Millis,
        assets: &AssetJoin,
        cdi: &PairAggregates,
        dir: &Directory,
    ) -> Vec<RepHealth> {
        let mut reps: Vec<RepHealth> = (0..dir.reps.len())
            .map(|r| RepHealth {
                rep: r as RepIx,
                as_of: w,
                alerts: self.alerts.get(&(r as RepIx)).cloned().unwrap_or_default(),
                ..RepHealth::default()
            })
            .collect();
        let cut = w - self.window_ms;
        for a in assets.iter() {
            if a.sent_at >= cut && a.sent_at <= w {
                let r = &mut reps[a.pair.rep() as usize];
                r.assets_sent += 1;
                r.assets_opened += u64::from(a.counted.iter().any(|t| *t <= w));
            }
        }
        cdi.each(w, self.window_ms, self.reply_ms, |pair, score, replied| {
            let r = &mut reps[pair.rep() as usize];
            r.cdi_sum += u64::from(score.cdi);
            r.active_customers += 1;
            r.bands[score.band as usize] += 1;
            if let Some(replied) = replied {
                r.customers_messaged += 1;
                r.customers_replied += u64::from(replied);
            }
        });
        for (pair, starts) in cdi.session_starts() {
            let r = &mut reps[pair.rep() as usize];
            let sessions = starts.iter().filter(|t| **t >= cut && **t <= w).count();
            r.customers_touched += u64::from(sessions >= 1);
            r.customers_retouched += u64::from(sessions >= 2);
        }
        for (pair, leads) in self.leads.iter() {
            let r = &mut reps[pair.rep() as usize];
            for lead in leads.iter().filter(|l| l.at >= cut && l.at <= w) {
                let deadline = lead.at + self.followup_ms;
                let followed = lead.first_touch.is_some_and(|t| t <= deadline);
                if followed || deadline <= w {
                    r.leads_due += 1;
                    r.leads_followed_up += u64::from(followed);
                }
            }
        }
        reps
    }
}

/// CDI band, as an index of `RepHealth::bands`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Band {
    High = 0,
    Mid = 1,
    Low = 2,
}

impl Band {
    pub const ALL: [Band; 3] = [Band::High, Band::Mid, Band::Low];
    pub fn as_str(self) -> &'static str {
        match self {
            Band::High => "high",
            Band::Mid => "mid",
            Band::Low => "low",
        }
    }
}

/// Green, yellow or red for one rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Green = 0,
    Yellow = 1,
    Red = 2,
}

impl Status {
    pub fn of(rate: f64, t: Thresholds) -> Status {
        if rate >= t.green_min {
            Status::Green
        } else if rate >= t.yellow_min {
            Status::Yellow
        } else {
            Status::Red
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Green => "green",
            Status::Yellow => "yellow",
            Status::Red => "red",
        }
    }
}

/// One rep's figures as of a watermark.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RepHealth {
    pub rep: RepIx,
    pub as_of: Millis,
    pub cdi_sum: u64,
    pub active_customers: u64,
    /// Active customers by band: high, mid, low.
    pub bands: [u64; 3],
    pub assets_sent: u64,
    pub assets_opened: u64,
    pub customers_messaged: u64,
    pub customers_replied: u64,
    pub customers_touched: u64,
    pub customers_retouched: u64,
    pub leads_due: u64,
    pub leads_followed_up: u64,
    /// Firing alerts since start, by rule.
    pub alerts: BTreeMap<String, u64>,
}

fn ratio(num: u64, den: u64) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

impl RepHealth {
    pub fn cdi_mean(&self) -> Option<f64> {
        ratio(self.cdi_sum, self.active_customers)
    }
    pub fn open_rate(&self) -> Option<f64> {
        ratio(self.assets_opened, self.assets_sent)
    }
    pub fn reply_rate(&self) -> Option<f64> {
        ratio(self.customers_replied, self.customers_messaged)
    }
    pub fn second_touch_rate(&self) -> Option<f64> {
        ratio(self.customers_retouched, self.customers_touched)
    }
    pub fn followup_rate(&self) -> Option<f64> {
        ratio(self.leads_followed_up, self.leads_due)
    }

    /// The rates that have thresholds, by metric label, with their status when defined.
    pub fn statuses(&self, cfg: &HealthSection) -> [(&'static str, Option<Status>); 3] {
        let [(a, ta), (b, tb), (c, tc)] = cfg.thresholds();
        [
            (a, self.open_rate().map(|r| Status::of(r, ta))),
            (b, self.reply_rate().map(|r| Status::of(r, tb))),
            (c, self.second_touch_rate().map(|r| Status::of(r, tc))),
        ]
    }

    /// The replay record (`health.jsonl`): counts, rates (null when undefined), statuses.
    pub fn to_json(&self, dir: &Directory, cfg: &HealthSection) -> String {
        let rate = |r: Option<f64>| r.map_or(Value::Null, |v| json!((v * 1e6).round() / 1e6));
        let mut m = Map::new();
        m.insert("rep_id".into(), json!(dir.rep_id(self.rep)));
        m.insert("region".into(), json!(dir.region_of(self.rep)));
        m.insert("as_of".into(), json!(format_time(self.as_of)));
        m.insert("cdi_mean".into(), rate(self.cdi_mean()));
        let bands: Map<String, Value> = Band::ALL
            .iter()
            .map(|b| (b.as_str().to_string(), json!(self.bands[*b as usize])))
            .collect();
        m.insert("customers_by_band".into(), Value::Object(bands));
        m.insert("assets_sent".into(), json!(self.assets_sent));
        m.insert("assets_opened".into(), json!(self.assets_opened));
        m.insert("open_rate".into(), rate(self.open_rate()));
        m.insert("customers_messaged".into(), json!(self.customers_messaged));
        m.insert("customers_replied".into(), json!(self.customers_replied));
        m.insert("reply_rate".into(), rate(self.reply_rate()));
        m.insert("customers_touched".into(), json!(self.customers_touched));
        m.insert(
            "customers_retouched".into(),
            json!(self.customers_retouched),
        );
        m.insert("second_touch_rate".into(), rate(self.second_touch_rate()));
        m.insert("leads_due".into(), json!(self.leads_due));
        m.insert("leads_followed_up".into(), json!(self.leads_followed_up));
        m.insert("followup_72h_rate".into(), rate(self.followup_rate()));
        let health: Map<String, Value> = self
            .statuses(cfg)
            .iter()
            .map(|(k, s)| (k.to_string(), s.map_or(Value::Null, |s| json!(s.as_str()))))
            .collect();
        m.insert("health".into(), Value::Object(health));
        m.insert("alerts".into(), json!(self.alerts));
        Value::Object(m).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};

    /// First responses against a model that scans every lead of the pair on every rep touch
    /// (EVENTS.md: the first rep touch at or after the lead), with customers shared by several
    /// reps, touches before their lead (late), and leads forgotten as they leave the window.
    #[test]
    fn first_responses_agree_with_scanning_every_lead() {
        let p = crate::config::Pipeline::load(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/default.toml"),
        )
        .expect("default pipeline");
        let window = p.health.window_days * 86_400_000;
        let mut h = ProcessHealth::new(&p.health);
        let mut model: Vec<(Pair, Millis, Option<Millis>)> = Vec::new();
        let mut want: Vec<(RepIx, f64)> = Vec::new();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let mut now: Millis = 0;
        let mut responses = 0;
        for _ in 0..20_000 {
            now += rng.random_range(0..4 * 3_600_000);
            let pair = Pair::new(rng.random_range(0..4), rng.random_range(0..6));
            let t = now - rng.random_range(0..2) * rng.random_range(0..7_200_000);
            match rng.random_range(0..10) {
                0..=2 => {
                    h.on_lead(pair, t);
                    model.push((pair, t, None));
                }
                3..=8 => {
                    h.on_rep_touch(pair, t);
                    for (p, at, first) in model.iter_mut() {
                        if *p == pair && first.is_none() && *at <= t {
                            *first = Some(t);
                            want.push((pair.rep(), (t - *at) as f64 / 1000.0));
                        }
                    }
                }
                _ => {
                    h.on_watermark(now);
                    model.retain(|(_, at, _)| *at >= now - window);
                }
            }
            let got: Vec<(RepIx, f64)> = h
                .take_first_responses()
                .into_iter()
                .map(|r| (r.rep, r.seconds))
                .collect();
            responses += got.len();
            assert_eq!(got, std::mem::take(&mut want));
        }
        assert!(responses > 1_000, "{responses}");
    }
}
