//! Process health per rep (README "Business metrics"): the state the per-rep rates need beyond
//! what the asset join and the CDI aggregates already hold (leads and their first touch,
//! session starts, alerts fired), and the snapshot that turns all of it into one figure set
//! per rep, as of a watermark: live it feeds the `touchstream_rep_*` gauges, a replay writes it.

use std::collections::{BTreeMap, VecDeque};

use rustc_hash::FxHashMap as HashMap;
use serde_json::{Map, Value, json};

use crate::config::{HealthSection, Thresholds};
use crate::directory::{Directory, RepIx};
use crate::event::{Millis, format_time};

use super::assets::AssetJoin;
use super::cdi::PairAggregates;
use super::pairmap::PairMap;
use super::{LazyTimers, Pair, TIMER_AHEAD};

#[derive(Debug, Clone, Copy)]
struct Lead {
    at: Millis,
    first_touch: Option<Millis>,
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
    /// Starts of each pair's sessions, ascending (arrival order; late starts are rare).
    session_starts: PairMap<VecDeque<Millis>>,
    /// `lead_assigned` times of the pairs that have leads in the window, with the rep's first
    /// touch at or after each. Few pairs: a small map that every rep touch probes cheaply.
    leads: PairMap<Vec<Lead>>,
    timers: LazyTimers<Pair>,
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
            session_starts: PairMap::default(),
            leads: PairMap::default(),
            timers: LazyTimers::default(),
            lead_timers: LazyTimers::default(),
            alerts: HashMap::default(),
            first_responses: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.session_starts.len() + self.leads.len()
    }

    pub fn is_empty(&self) -> bool {
        self.session_starts.is_empty() && self.leads.is_empty()
    }

    /// A `lead_assigned` for the pair at `t`.
    pub fn on_lead(&mut self, pair: Pair, t: Millis) {
        self.leads.entry_or_default(pair).push(Lead {
            at: t,
            first_touch: None,
        });
        self.lead_timers.schedule(t + self.window_ms, pair);
    }

    /// A touch by the rep (an action with a channel, a WeCom message out): the first response
    /// to every lead of the pair assigned at or before `t` that had none.
    pub fn on_rep_touch(&mut self, pair: Pair, t: Millis) {
        if self.leads.is_empty() {
            return;
        }
        let Some(leads) = self.leads.get_mut(&pair) else {
            return;
        };
        for lead in leads.iter_mut() {
            if lead.first_touch.is_none() && lead.at <= t {
                lead.first_touch = Some(t);
                self.first_responses.push(FirstResponse {
                    rep: pair.rep(),
                    seconds: (t - lead.at) as f64 / 1000.0,
                });
            }
        }
    }

    /// A session of the pair started at `t`.
    pub fn on_session_start(&mut self, pair: Pair, t: Millis) {
        self.session_starts.entry_or_default(pair).push_back(t);
        self.timers.schedule(t + self.window_ms, pair);
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

    /// Forgets leads and session starts that left the window as of `w`.
    pub fn on_watermark(&mut self, w: Millis) {
        let cut = w - self.window_ms;
        while let Some((_, pair)) = self.timers.pop_due(w) {
            for (far, near) in self.timers.upcoming_walk(2 * TIMER_AHEAD, TIMER_AHEAD) {
                self.session_starts
                    .prefetch_walk(far, near, VecDeque::front);
            }
            let Some(starts) = self.session_starts.get_mut(&pair) else {
                continue;
            };
            while starts.front().is_some_and(|t| *t < cut) {
                starts.pop_front();
            }
            if starts.is_empty() {
                self.session_starts.remove(&pair);
            }
        }
        while let Some((_, pair)) = self.lead_timers.pop_due(w) {
            if let Some(leads) = self.leads.get_mut(&pair) {
                leads.retain(|l| l.at >= cut);
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
        for (pair, starts) in self.session_starts.iter() {
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
