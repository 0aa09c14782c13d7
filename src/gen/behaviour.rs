//! The behaviour model: what each rep-customer pair does day by day (chats, calls, visits,
//! sends and the customer's reactions to them, contracts, deals, approvals). Decisions are
//! made forward in time and land as compact `Ev`s in per-day arrival buckets.

use rand::RngExt;
use rand_chacha::ChaCha8Rng;

use super::directory::World;

pub(super) const SECOND: i64 = 1_000;
pub(super) const MINUTE: i64 = 60 * SECOND;
pub(super) const HOUR: i64 = 60 * MINUTE;
pub(super) const DAY: i64 = 24 * HOUR;
/// The chain works in China Standard Time; local times are rendered with `+08:00`.
pub(super) const LOCAL_OFFSET: i64 = 8 * HOUR;
/// `pair` of events that belong to no pair (anonymous web traffic, a rep's own approvals).
pub(super) const NO_PAIR: u32 = u32::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    LeadAssigned,
    QuoteSent,
    ProposalSent,
    CaseSent,
    ContractSent,
    Call,
    Visit,
    Email,
    Message,
    Meeting,
    DealWon,
    DealLost,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::LeadAssigned => "lead_assigned",
            Action::QuoteSent => "quote_sent",
            Action::ProposalSent => "proposal_sent",
            Action::CaseSent => "case_sent",
            Action::ContractSent => "contract_sent",
            Action::Call => "call",
            Action::Visit => "visit",
            Action::Email => "email",
            Action::Message => "message",
            Action::Meeting => "meeting",
            Action::DealWon => "deal_won",
            Action::DealLost => "deal_lost",
        }
    }

    /// `utm_medium` of tracked links in a sent document.
    pub fn medium(self) -> &'static str {
        match self {
            Action::ProposalSent => "proposal",
            Action::CaseSent => "case",
            Action::ContractSent => "contract",
            _ => "quote",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Channel {
    Wechat,
    Phone,
    Email,
    Visit,
    Platform,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Wechat => "wechat",
            Channel::Phone => "phone",
            Channel::Email => "email",
            Channel::Visit => "visit",
            Channel::Platform => "platform",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Hit {
    Open,
    /// Still viewing, on this page.
    Ping(u16),
    /// Viewing ended after this many milliseconds.
    Close(u32),
}

/// Who loaded a pixel: the customer's own device, or a mail proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Agent {
    Device,
    GoogleImageProxy,
    AppleMailPrivacy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WebPage {
    /// `/products/<PRODUCTS[i]>`
    Product(u8),
    Home,
    Stores,
    /// `/news/<n>`
    News(u8),
    /// The home page reached from the autumn campaign (UTM without `utm_content`).
    Campaign,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Process {
    Contract,
    Expense,
    Discount,
    Sample,
}

impl Process {
    pub fn code(self) -> &'static str {
        match self {
            Process::Contract => "PROC-CONTRACT",
            Process::Expense => "PROC-EXPENSE",
            Process::Discount => "PROC-DISCOUNT",
            Process::Sample => "PROC-SAMPLE",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    Start,
    Finish { agree: bool },
    Terminate,
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Body {
    /// `detail`: `duration_s` for calls and meetings, city index for visits, amount in fen for
    /// `deal_won`; unused otherwise. `asset` 0 = none.
    Crm {
        action: Action,
        channel: Option<Channel>,
        asset: u64,
        detail: u32,
    },
    Pixel {
        asset: u64,
        hit: Hit,
        agent: Agent,
    },
    /// `asset` 0 = not attributed to a sent asset.
    Web {
        asset: u64,
        medium: Action,
        page: WebPage,
        visitor: u32,
    },
    Presence {
        online: bool,
    },
    Message {
        inbound: bool,
    },
    Approval {
        instance: u64,
        process: Process,
        step: Step,
        with_customer: bool,
    },
}

/// One generated event before rendering. `eff` is its effective time (EVENTS.md §1);
/// `arrival` orders the output; `seq` breaks arrival ties deterministically.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ev {
    pub arrival: i64,
    pub seq: u64,
    pub eff: i64,
    pub pair: u32,
    pub rep: u32,
    pub body: Body,
}

#[derive(Clone, Copy)]
struct PairState {
    /// 0 = cold … 3 = very engaged customer.
    eng: u8,
    /// First day of activity in the window (lead assignment day for new leads).
    start_day: u32,
    new_lead: bool,
    online: bool,
}

/// How a customer reacts to one sent document.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Interest {
    Cold,
    Warm,
    Hot,
}

/// Per engagement level (cold … very engaged).
const TOUCHES_PER_DAY: [f64; 4] = [0.12, 0.3, 0.55, 0.85];
const P_ONLINE: [f64; 4] = [0.12, 0.25, 0.4, 0.55];
const P_QUOTE: [f64; 4] = [0.012, 0.03, 0.055, 0.075];
const P_PROPOSAL: [f64; 4] = [0.004, 0.012, 0.025, 0.035];
const P_CASE: [f64; 4] = [0.004, 0.012, 0.02, 0.03];
const P_HOT: [f64; 4] = [0.12, 0.25, 0.4, 0.55];
const P_WARM: [f64; 4] = [0.3, 0.35, 0.35, 0.3];
/// Share of customer (`in`) messages in a chat.
const P_INBOUND: [f64; 4] = [0.3, 0.42, 0.55, 0.68];
const P_PRODUCT_VISIT: [f64; 4] = [0.15, 0.25, 0.4, 0.5];

pub(super) const PRODUCTS: [&str; 10] = [
    "vitamin-d3",
    "omega-3",
    "blood-pressure-monitor",
    "glucose-meter",
    "probiotics",
    "calcium-zinc",
    "n95-masks",
    "cold-relief",
    "eye-drops",
    "joint-care",
];

pub(super) struct Planner<'w> {
    world: &'w World,
    rng: ChaCha8Rng,
    pairs: Vec<PairState>,
    /// Effective times outside [window_start, end) are not generated.
    window_start: i64,
    end: i64,
    /// Local midnight (as UTC epoch ms) of day 0.
    day0: i64,
    /// Arrival buckets, one per local day from `day0`.
    buckets: Vec<Vec<Ev>>,
    seq: u64,
    last_asset: u64,
    last_instance: u64,
    /// Probability that an event arrives late (behind the watermark).
    p_late: f64,
    /// Whether some in-time contracts arrive after the alert's due time (to exercise resolution).
    late_contracts: bool,
}

impl<'w> Planner<'w> {
    pub fn new(
        world: &'w World,
        mut rng: ChaCha8Rng,
        window: (i64, i64),
        days: u32,
        noise: f64,
    ) -> Planner<'w> {
        let (window_start, end) = window;
        let local_day = (window_start + LOCAL_OFFSET).div_euclid(DAY);
        let day0 = local_day * DAY - LOCAL_OFFSET;
        let pairs = (0..world.pairs())
            .map(|p| {
                // Tier A customers are engaged more often than tier C ones.
                let tier = world.tier[p];
                let x: f64 = rng.random::<f64>() + 0.15 * (1.0 - f64::from(tier));
                let eng = match x {
                    x if x < 0.25 => 0,
                    x if x < 0.6 => 1,
                    x if x < 0.88 => 2,
                    _ => 3,
                };
                let new_lead = chance(&mut rng, 0.25);
                let start_day = if new_lead {
                    rng.random_range(0..days.max(1))
                } else {
                    0
                };
                PairState {
                    eng,
                    start_day,
                    new_lead,
                    online: false,
                }
            })
            .collect();
        Planner {
            world,
            rng,
            pairs,
            window_start,
            end,
            day0,
            buckets: Vec::new(),
            seq: 0,
            last_asset: 0,
            last_instance: 0,
            p_late: (noise * 0.5).clamp(0.0, 1.0),
            late_contracts: noise > 0.0,
        }
    }

    /// Generates every decision taken on local day `d` (and its scheduled consequences).
    pub fn day(&mut self, d: u32) {
        let mid = self.day0 + i64::from(d) * DAY;
        let weekday = (mid + LOCAL_OFFSET).div_euclid(DAY).rem_euclid(7); // 0 = Thursday
        let factor = match weekday {
            2 => 0.35, // Saturday
            3 => 0.2,  // Sunday
            _ => 1.0,
        };
        self.anonymous_web(mid, factor);
        let cpr = self.world.customers_per_rep;
        for rep in 0..self.world.reps {
            let rep = rep as u32;
            if chance(&mut self.rng, 0.06 * factor) {
                let t = mid + self.between(9 * HOUR, 18 * HOUR);
                self.approval(NO_PAIR, rep, t, Process::Expense);
            }
            for j in 0..cpr {
                let pair = rep * cpr as u32 + j as u32;
                self.pair_day(pair, rep, d, mid, factor);
            }
        }
    }

    /// Takes the events that arrive on local day `d`, in arrival order.
    pub fn take_bucket(&mut self, d: usize) -> Vec<Ev> {
        let mut b = match self.buckets.get_mut(d) {
            Some(b) => std::mem::take(b),
            None => Vec::new(),
        };
        b.sort_unstable_by_key(|e| (e.arrival, e.seq));
        b
    }

    pub fn bucket_count(&self) -> usize {
        self.buckets.len()
    }

    fn pair_day(&mut self, pair: u32, rep: u32, d: u32, mid: i64, factor: f64) {
        let st = self.pairs[pair as usize];
        if d < st.start_day {
            return;
        }
        let eng = usize::from(st.eng);
        if st.new_lead && d == st.start_day {
            let t = mid + self.between(9 * HOUR, 11 * HOUR);
            self.crm(pair, rep, t, Action::LeadAssigned, None, 0, 0);
            // A fresh lead is usually contacted the same day.
            if chance(&mut self.rng, 0.75) {
                let t1 = t + self.between(10 * MINUTE, 4 * HOUR);
                if chance(&mut self.rng, 0.5) {
                    self.call(pair, rep, t1);
                } else {
                    self.chat(pair, rep, t1, eng);
                }
            }
        }

        // The customer's WeCom presence: one online stretch on some days.
        let mut online_window = None;
        if chance(&mut self.rng, P_ONLINE[eng] * factor) {
            let on = mid + self.between(8 * HOUR, 21 * HOUR);
            let len = 5 * MINUTE + self.exp(50 * MINUTE).min(4 * HOUR);
            let off = on + len;
            if !self.pairs[pair as usize].online {
                self.push(on, pair, rep, Body::Presence { online: true });
            }
            // Some stay online overnight (the app left open).
            let stays = chance(&mut self.rng, 0.1);
            if !stays {
                self.push(off, pair, rep, Body::Presence { online: false });
            }
            self.pairs[pair as usize].online = stays;
            online_window = Some((on, off));
        }

        let touches = self.poisson(TOUCHES_PER_DAY[eng] * factor);
        for _ in 0..touches {
            let mut t = mid + self.between(8 * HOUR + 30 * MINUTE, 19 * HOUR + 30 * MINUTE);
            match self.rng.random_range(0..100u32) {
                0..40 => {
                    if let Some((on, off)) = online_window {
                        t = self.between(on, off);
                    }
                    self.chat(pair, rep, t, eng);
                }
                40..60 => self.call(pair, rep, t),
                60..65 => self.crm(pair, rep, t, Action::Message, Some(Channel::Wechat), 0, 0),
                65..77 => self.crm(pair, rep, t, Action::Email, Some(Channel::Email), 0, 0),
                77..90 => {
                    let tv = mid + self.between(9 * HOUR, 17 * HOUR);
                    self.visit(pair, rep, tv);
                }
                _ => {
                    let dur = self.between(15 * 60, 75 * 60) as u32;
                    self.crm(
                        pair,
                        rep,
                        t,
                        Action::Meeting,
                        Some(Channel::Platform),
                        0,
                        dur,
                    );
                }
            }
        }

        for (action, p) in [
            (Action::QuoteSent, P_QUOTE[eng]),
            (Action::ProposalSent, P_PROPOSAL[eng]),
            (Action::CaseSent, P_CASE[eng]),
        ] {
            if chance(&mut self.rng, p * factor) {
                let mut t0 = mid + self.between(9 * HOUR, 18 * HOUR + 30 * MINUTE);
                if let Some((on, off)) = online_window {
                    // Reps often send while they see the customer online.
                    if chance(&mut self.rng, 0.5) {
                        t0 = self.between(on, off);
                    }
                }
                self.send(pair, rep, t0, action, eng);
            }
        }
    }

    fn chat(&mut self, pair: u32, rep: u32, start: i64, eng: usize) {
        let n = self.rng.random_range(2..=9u32);
        let mut t = start;
        let mut inbound = chance(&mut self.rng, 0.4);
        for _ in 0..n {
            self.push(t, pair, rep, Body::Message { inbound });
            t += 5 * SECOND + self.exp(90 * SECOND);
            inbound = chance(&mut self.rng, P_INBOUND[eng]);
        }
    }

    fn call(&mut self, pair: u32, rep: u32, t: i64) {
        // About a third of calls are not picked up (duration 0).
        let dur = if chance(&mut self.rng, 0.3) {
            0
        } else {
            (20 + self.exp(240)).min(3600) as u32
        };
        self.crm(pair, rep, t, Action::Call, Some(Channel::Phone), 0, dur);
    }

    fn visit(&mut self, pair: u32, rep: u32, t: i64) {
        // A rep spends a day in one of the region's cities; now and then a visit is logged in
        // another (a daily report that cannot be true: `impossible_visits`).
        let drawn = self.rng.random_range(0..3u32);
        let home = (rep as u64 + t.div_euclid(DAY) as u64) % 3;
        let city = if chance(&mut self.rng, 0.02) {
            drawn
        } else {
            home as u32
        };
        self.crm(pair, rep, t, Action::Visit, Some(Channel::Visit), 0, city);
        if chance(&mut self.rng, 0.3) {
            let dur = self.between(20 * 60, 90 * 60) as u32;
            let tm = t + self.between(5 * MINUTE, 20 * MINUTE);
            self.crm(pair, rep, tm, Action::Meeting, Some(Channel::Visit), 0, dur);
        }
        if chance(&mut self.rng, 0.1) {
            let ta = t + self.between(HOUR, 3 * HOUR);
            self.approval(pair, rep, ta, Process::Sample);
        }
    }

    fn send(&mut self, pair: u32, rep: u32, t0: i64, action: Action, eng: usize) {
        let channel = {
            let x = self.rng.random_range(0..100u32);
            match action {
                Action::QuoteSent if x < 50 => Channel::Wechat,
                Action::QuoteSent if x < 85 => Channel::Email,
                Action::ProposalSent if x < 15 => Channel::Wechat,
                Action::ProposalSent if x < 75 => Channel::Email,
                Action::CaseSent if x < 60 => Channel::Wechat,
                Action::CaseSent => Channel::Email,
                _ => Channel::Platform,
            }
        };
        if action == Action::QuoteSent && eng >= 2 && chance(&mut self.rng, 0.12) {
            // A special price needs a discount approval before the quote goes out.
            let ta = t0 - self.between(HOUR, 4 * HOUR);
            self.approval(pair, rep, ta, Process::Discount);
        }
        let asset = self.new_asset();
        self.crm(pair, rep, t0, action, Some(channel), asset, 0);
        if channel == Channel::Wechat {
            // The rep's note that goes with the document.
            let tm = t0 + self.between(2 * SECOND, 20 * SECOND);
            self.push(tm, pair, rep, Body::Message { inbound: false });
        }
        self.proxy_opens(pair, rep, t0, asset, channel);

        let x: f64 = self.rng.random();
        let interest = if x < P_HOT[eng] {
            Interest::Hot
        } else if x < P_HOT[eng] + P_WARM[eng] {
            Interest::Warm
        } else {
            Interest::Cold
        };
        let (viewings, dwell_mean) = match interest {
            Interest::Hot => (self.rng.random_range(3..=6u32), 100 * SECOND),
            Interest::Warm => (self.rng.random_range(1..=2u32), 50 * SECOND),
            Interest::Cold => (self.rng.random_range(0..=1u32), 20 * SECOND),
        };
        self.viewings(pair, rep, t0, asset, action, (viewings, dwell_mean), eng);

        let contract_at = match (action, interest) {
            (Action::QuoteSent, Interest::Hot) => {
                let x: f64 = self.rng.random();
                if x < 0.45 {
                    Some(t0 + self.between(DAY / 5, 4 * DAY + 4 * DAY / 5))
                } else if x < 0.65 {
                    // Too late for the rule: the alert fires anyway.
                    Some(t0 + self.between(5 * DAY + DAY / 2, 9 * DAY))
                } else {
                    None
                }
            }
            (Action::QuoteSent, Interest::Warm) if chance(&mut self.rng, 0.3) => {
                Some(t0 + self.between(DAY, 4 * DAY + 9 * DAY / 10))
            }
            (Action::QuoteSent, Interest::Cold) if chance(&mut self.rng, 0.05) => {
                Some(t0 + self.between(DAY, 4 * DAY))
            }
            (_, Interest::Hot) if chance(&mut self.rng, 0.15) => {
                Some(t0 + self.between(2 * DAY, 6 * DAY))
            }
            _ => None,
        };
        if let Some(tc) = contract_at {
            // A contract signed near the deadline sometimes reaches the pipeline only after
            // the alert fired (an offline device syncing late): the alert must then resolve.
            let late = action == Action::QuoteSent
                && self.late_contracts
                && tc >= t0 + 4 * DAY
                && tc < t0 + 5 * DAY
                && chance(&mut self.rng, 0.35);
            let arrival = if late {
                Some(t0 + 5 * DAY + self.between(30 * MINUTE, 8 * HOUR))
            } else {
                None
            };
            self.contract(pair, rep, tc, arrival);
        }
    }

    /// Mail proxies and instant previews: opens the rule must exclude.
    fn proxy_opens(&mut self, pair: u32, rep: u32, t0: i64, asset: u64, channel: Channel) {
        if channel == Channel::Email {
            if chance(&mut self.rng, 0.5) {
                let t = t0 + self.between(SECOND, 9 * SECOND);
                self.pixel(pair, rep, t, asset, Hit::Open, Agent::GoogleImageProxy);
            }
            if chance(&mut self.rng, 0.15) {
                let t = t0 + self.between(MINUTE, 3 * HOUR);
                self.pixel(pair, rep, t, asset, Hit::Open, Agent::AppleMailPrivacy);
            }
        } else if chance(&mut self.rng, 0.08) {
            // The chat preview loads the document within seconds of the send.
            let t = t0 + self.between(3 * SECOND, 9 * SECOND);
            self.pixel(pair, rep, t, asset, Hit::Open, Agent::Device);
            let dwell = self.between(2 * SECOND, 8 * SECOND);
            self.pixel(
                pair,
                rep,
                t + dwell,
                asset,
                Hit::Close(dwell as u32),
                Agent::Device,
            );
        }
    }

    /// The customer's real viewings of a sent document: open, a few pings, close; sometimes a
    /// reload within the minute, sometimes a click through to a product page.
    #[expect(
        clippy::too_many_arguments,
        reason = "one call site; a struct would only rename them"
    )]
    fn viewings(
        &mut self,
        pair: u32,
        rep: u32,
        t0: i64,
        asset: u64,
        action: Action,
        (count, dwell_mean): (u32, i64),
        eng: usize,
    ) {
        let mut t = t0 + 20 * SECOND + self.exp(2 * HOUR);
        for _ in 0..count {
            t = daytime(t);
            self.pixel(pair, rep, t, asset, Hit::Open, Agent::Device);
            if chance(&mut self.rng, 0.12) {
                let tr = t + self.between(5 * SECOND, 55 * SECOND);
                self.pixel(pair, rep, tr, asset, Hit::Open, Agent::Device);
            }
            let dwell = (3 * SECOND + self.exp(dwell_mean)).min(30 * MINUTE);
            let pings = (dwell / (30 * SECOND)).min(3);
            for i in 1..=pings {
                self.pixel(
                    pair,
                    rep,
                    t + i * 30 * SECOND,
                    asset,
                    Hit::Ping(1 + i as u16),
                    Agent::Device,
                );
            }
            let close = t + dwell;
            self.pixel(
                pair,
                rep,
                close,
                asset,
                Hit::Close(dwell as u32),
                Agent::Device,
            );
            if chance(&mut self.rng, P_PRODUCT_VISIT[eng]) {
                let tw = t + self.between(10 * SECOND, 25 * MINUTE);
                let product = self.rng.random_range(0..PRODUCTS.len()) as u8;
                self.web(pair, rep, tw, asset, action, WebPage::Product(product));
            } else if chance(&mut self.rng, 0.08) {
                let tw = t + self.between(10 * SECOND, 25 * MINUTE);
                self.web(pair, rep, tw, asset, action, WebPage::Stores);
            }
            // The next viewing starts at least a minute after this one closed.
            t = close + MINUTE + self.between(0, 30 * SECOND) + self.exp(14 * HOUR);
        }
    }

    fn contract(&mut self, pair: u32, rep: u32, tc: i64, arrival: Option<i64>) {
        if chance(&mut self.rng, 0.5) {
            let asset = self.new_asset();
            let channel = if chance(&mut self.rng, 0.6) {
                Channel::Email
            } else {
                Channel::Platform
            };
            let ev = Self::ev(
                tc,
                pair,
                rep,
                Body::Crm {
                    action: Action::ContractSent,
                    channel: Some(channel),
                    asset,
                    detail: 0,
                },
            );
            self.push_ev(ev, arrival);
            let n = self.rng.random_range(0..=2u32);
            self.viewings(
                pair,
                rep,
                tc,
                asset,
                Action::ContractSent,
                (n, 90 * SECOND),
                0,
            );
        } else {
            let instance = self.new_instance();
            let ev = Self::ev(
                tc,
                pair,
                rep,
                Body::Approval {
                    instance,
                    process: Process::Contract,
                    step: Step::Start,
                    with_customer: true,
                },
            );
            self.push_ev(ev, arrival);
            let tf = tc + self.between(2 * HOUR, 30 * HOUR);
            self.approval_end(pair, rep, tf, instance, Process::Contract);
        }
        let x: f64 = self.rng.random();
        if x < 0.55 {
            let t = tc + self.between(DAY, 6 * DAY);
            // 5 000 – 300 000 yuan, in fen.
            let amount = self.between(500_000, 30_000_000) as u32;
            self.crm(pair, rep, t, Action::DealWon, None, 0, amount);
        } else if x < 0.67 {
            let t = tc + self.between(DAY, 6 * DAY);
            self.crm(pair, rep, t, Action::DealLost, None, 0, 0);
        }
    }

    fn approval(&mut self, pair: u32, rep: u32, t: i64, process: Process) {
        let instance = self.new_instance();
        let with_customer = pair != NO_PAIR;
        let body = Body::Approval {
            instance,
            process,
            step: Step::Start,
            with_customer,
        };
        self.push(t, pair, rep, body);
        let tf = t + self.between(HOUR, 48 * HOUR);
        self.approval_end(pair, rep, tf, instance, process);
    }

    fn approval_end(&mut self, pair: u32, rep: u32, t: i64, instance: u64, process: Process) {
        let x: f64 = self.rng.random();
        let step = if x < 0.05 {
            Step::Terminate
        } else {
            Step::Finish { agree: x < 0.85 }
        };
        self.push(
            t,
            pair,
            rep,
            Body::Approval {
                instance,
                process,
                step,
                with_customer: pair != NO_PAIR,
            },
        );
    }

    /// Website traffic that joins no pair: campaign visitors and organic browsing.
    fn anonymous_web(&mut self, mid: i64, factor: f64) {
        let expected = self.world.pairs() as f64 * 0.02 * factor;
        let mut n = expected.floor() as u64;
        if chance(&mut self.rng, expected.fract()) {
            n += 1;
        }
        for _ in 0..n {
            let t = mid + self.between(6 * HOUR, 24 * HOUR);
            let page = match self.rng.random_range(0..100u32) {
                0..30 => WebPage::Campaign,
                30..50 => WebPage::Home,
                50..60 => WebPage::Stores,
                60..75 => WebPage::News(self.rng.random_range(1..=40u32) as u8),
                _ => WebPage::Product(self.rng.random_range(0..PRODUCTS.len()) as u8),
            };
            let visitor = self.rng.random::<u32>();
            self.push(
                t,
                NO_PAIR,
                0,
                Body::Web {
                    asset: 0,
                    medium: Action::QuoteSent,
                    page,
                    visitor,
                },
            );
        }
    }

    #[expect(clippy::too_many_arguments, reason = "mirrors the crm.action fields")]
    fn crm(
        &mut self,
        pair: u32,
        rep: u32,
        t: i64,
        action: Action,
        channel: Option<Channel>,
        asset: u64,
        detail: u32,
    ) {
        let body = Body::Crm {
            action,
            channel,
            asset,
            detail,
        };
        self.push(t, pair, rep, body);
    }

    fn pixel(&mut self, pair: u32, rep: u32, t: i64, asset: u64, hit: Hit, agent: Agent) {
        self.push(t, pair, rep, Body::Pixel { asset, hit, agent });
    }

    fn web(&mut self, pair: u32, rep: u32, t: i64, asset: u64, medium: Action, page: WebPage) {
        let visitor = visitor_of(pair);
        self.push(
            t,
            pair,
            rep,
            Body::Web {
                asset,
                medium,
                page,
                visitor,
            },
        );
    }

    fn new_asset(&mut self) -> u64 {
        self.last_asset += 1;
        self.last_asset
    }

    fn new_instance(&mut self) -> u64 {
        self.last_instance += 1;
        self.last_instance
    }

    /// An event not yet filed; `arrival` and `seq` are set by `push_ev`.
    fn ev(eff: i64, pair: u32, rep: u32, body: Body) -> Ev {
        Ev {
            arrival: eff,
            seq: 0,
            eff,
            pair,
            rep,
            body,
        }
    }

    fn push(&mut self, eff: i64, pair: u32, rep: u32, body: Body) {
        let ev = Self::ev(eff, pair, rep, body);
        self.push_ev(ev, None);
    }

    /// Files an event under its arrival day. Arrival = effective time plus a small jitter
    /// (most within seconds, some up to two minutes, a few hours late), or `arrival` if given.
    fn push_ev(&mut self, mut ev: Ev, arrival: Option<i64>) {
        if ev.eff < self.window_start || ev.eff >= self.end {
            return;
        }
        ev.arrival = match arrival {
            Some(a) => a.max(ev.eff),
            None if chance(&mut self.rng, self.p_late) => {
                ev.eff + self.between(6 * MINUTE, 6 * HOUR)
            }
            None if chance(&mut self.rng, 0.3) => ev.eff + self.between(0, 2 * MINUTE),
            None => ev.eff + self.between(0, 5 * SECOND),
        };
        self.seq += 1;
        ev.seq = self.seq;
        // Nothing is generated before day 0's midnight, so the index is never negative.
        let idx = ((ev.arrival - self.day0).max(0) / DAY) as usize;
        if self.buckets.len() <= idx {
            self.buckets.resize_with(idx + 1, Vec::new);
        }
        self.buckets[idx].push(ev);
    }

    /// Uniform in [lo, hi); `lo` when the range is empty.
    fn between(&mut self, lo: i64, hi: i64) -> i64 {
        if hi <= lo {
            lo
        } else {
            self.rng.random_range(lo..hi)
        }
    }

    /// Exponentially distributed with the given mean, rounded down.
    fn exp(&mut self, mean: i64) -> i64 {
        let u: f64 = self.rng.random();
        (-(1.0 - u).ln() * mean as f64) as i64
    }

    /// Knuth's method; the rates here are small (< 2).
    fn poisson(&mut self, lambda: f64) -> u32 {
        let limit = (-lambda).exp();
        let mut k = 0;
        let mut p: f64 = self.rng.random();
        while p > limit && k < 50 {
            k += 1;
            p *= self.rng.random::<f64>();
        }
        k
    }
}

/// True with probability `p` (clamped to [0, 1]; never panics).
pub(super) fn chance(rng: &mut ChaCha8Rng, p: f64) -> bool {
    rng.random::<f64>() < p
}

/// Moves a time in the small hours (local 00:00–07:00) to the morning: people read documents
/// when awake.
fn daytime(t: i64) -> i64 {
    let local_hour = (t + LOCAL_OFFSET).rem_euclid(DAY) / HOUR;
    if local_hour < 7 { t + 8 * HOUR } else { t }
}

/// A stable website visitor id per customer (the cookie of their browser).
pub(super) fn visitor_of(pair: u32) -> u32 {
    pair.wrapping_mul(0x9E37_79B9).rotate_left(13) ^ 0x5bd1_e995
}
