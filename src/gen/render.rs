//! Turns planned events into JSON lines (fields in a fixed order, EVENTS.md §1–2), picks the
//! time forms a real fleet would send (RFC 3339 +08:00, epoch ms, SDK clocks with skew), and
//! mixes in the noise lines. Emission stops at `max_events`.

use std::collections::VecDeque;
use std::fmt::Write as _;

use rand::RngExt;
use rand_chacha::ChaCha8Rng;

use super::Noise;
use super::behaviour::{
    Action, Agent, Body, Ev, Hit, LOCAL_OFFSET, MINUTE, NO_PAIR, PRODUCTS, Process, SECOND, Step,
    WebPage, chance, visitor_of,
};
use super::directory::{CustomerId, RepId, World};

/// Receives each line with its noise tag (`None` for a valid line).
pub(super) type Sink<'a> = dyn FnMut(&str, Option<Noise>) -> anyhow::Result<()> + 'a;

const SITE: &str = "https://www.example-pharma.cn";

/// User agents of customers' devices; a customer keeps one.
const DEVICE_UAS: [&str; 5] = [
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 MicroMessenger/8.0.50(0x1800322c) NetType/WIFI Language/zh_CN",
    "Mozilla/5.0 (Linux; Android 14; V2241A Build/UP1A.231005.007; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/116.0.0.0 Mobile Safari/537.36 XWEB/1160065 MicroMessenger/8.0.49.2600(0x28003133) WeChat/arm64 Weixin NetType/5G Language/zh_CN",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/108.0.5359.125 Safari/537.36 wxwork/4.1.22 (MicroMessenger/6.2) WindowsWechat",
    "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17726; Pro)",
];
const GOOGLE_PROXY_UA: &str =
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)";
const APPLE_PRIVACY_UA: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Apple-Mail-Privacy";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Form {
    Epoch,
    /// RFC 3339 with `+08:00`; milliseconds only when non-zero.
    Local,
    /// RFC 3339 UTC with milliseconds (collector style).
    Utc,
}

/// Where an event comes from decides which clocks it carries.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    /// Tracking SDK in the sales app: device clock, `sent_at`, sometimes skewed.
    Sdk,
    /// Website JavaScript: browser clock, like the SDK.
    Browser,
    /// The HTTP collector (pixels): server clock, sometimes `received_at`.
    Collector,
    /// WeCom / DingTalk callbacks: server clocks.
    Callback,
}

pub(super) struct Renderer<'w> {
    world: &'w World,
    rng: ChaCha8Rng,
    noise: f64,
    /// Probability that an SDK or browser event carries a skewed device clock.
    p_skew: f64,
    last_event: u64,
    last_stale_asset: u64,
    line: String,
    scratch: String,
    /// Deliberate duplicates waiting to be re-sent: (emit when this many lines are out, line).
    pending: VecDeque<(u64, String)>,
    emitted: u64,
    max_events: u64,
    done: bool,
}

impl<'w> Renderer<'w> {
    pub fn new(world: &'w World, rng: ChaCha8Rng, noise: f64, max_events: usize) -> Self {
        Renderer {
            world,
            rng,
            noise,
            p_skew: (noise * 5.0).clamp(0.0, 1.0),
            last_event: 0,
            last_stale_asset: 0,
            line: String::with_capacity(512),
            scratch: String::with_capacity(512),
            pending: VecDeque::new(),
            emitted: 0,
            max_events: max_events as u64,
            done: false,
        }
    }

    pub fn done(&self) -> bool {
        self.done
    }

    /// Emits a bucket of events already in arrival order.
    pub fn emit_all(&mut self, evs: &[Ev], sink: &mut Sink<'_>) -> anyhow::Result<()> {
        for ev in evs {
            if self.done {
                break;
            }
            self.render(ev);
            let line = std::mem::take(&mut self.line);
            let result = self.emit(&line, None, sink);
            self.line = line;
            result?;
            if self.noise > 0.0 && chance(&mut self.rng, self.noise) {
                self.noise_line(ev, sink)?;
            }
            self.flush_due(sink, false)?;
        }
        Ok(())
    }

    /// Sends the duplicates still waiting (end of stream).
    pub fn finish(&mut self, sink: &mut Sink<'_>) -> anyhow::Result<()> {
        self.flush_due(sink, true)
    }

    fn emit(&mut self, text: &str, tag: Option<Noise>, sink: &mut Sink<'_>) -> anyhow::Result<()> {
        if self.done {
            return Ok(());
        }
        sink(text, tag)?;
        self.emitted += 1;
        if self.max_events > 0 && self.emitted >= self.max_events {
            self.done = true;
        }
        Ok(())
    }

    fn flush_due(&mut self, sink: &mut Sink<'_>, all: bool) -> anyhow::Result<()> {
        while let Some((at, _)) = self.pending.front()
            && (all || *at <= self.emitted)
        {
            if let Some((_, text)) = self.pending.pop_front() {
                self.emit(&text, Some(Noise::Duplicate), sink)?;
            }
        }
        Ok(())
    }

    fn next_event_id(&mut self) -> u64 {
        self.last_event += 1;
        self.last_event
    }

    fn between(&mut self, lo: i64, hi: i64) -> i64 {
        if hi <= lo {
            lo
        } else {
            self.rng.random_range(lo..hi)
        }
    }

    /// Renders one valid event into `self.line`.
    fn render(&mut self, ev: &Ev) {
        let id = self.next_event_id();
        let (kind, source) = match ev.body {
            Body::Crm { .. } => ("crm.action", Source::Sdk),
            Body::Pixel { .. } => ("pixel.hit", Source::Collector),
            Body::Web { .. } => ("web.hit", Source::Browser),
            Body::Presence { .. } => ("wecom.presence", Source::Callback),
            Body::Message { .. } => ("wecom.message", Source::Callback),
            Body::Approval { .. } => ("dingtalk.approval", Source::Callback),
        };
        let mut out = std::mem::take(&mut self.line);
        out.clear();
        let _ = write!(out, "{{\"event_id\":\"e-{id}\",\"kind\":\"{kind}\",\"ts\":");
        self.times(&mut out, ev.eff, source);
        self.body(&mut out, ev);
        self.attrs(&mut out, source);
        out.push('}');
        self.line = out;
    }

    /// `ts` and, for some events, `sent_at` / `received_at`, chosen so that the effective time
    /// (EVENTS.md §1: `received_at - (sent_at - ts)` when both are present, else `ts`) is `eff`.
    fn times(&mut self, out: &mut String, eff: i64, source: Source) {
        let device = matches!(source, Source::Sdk | Source::Browser);
        let skewed = device && chance(&mut self.rng, self.p_skew);
        let p_sdk_clock = match source {
            Source::Sdk => 0.3,
            Source::Browser => 0.1,
            _ => 0.0,
        };
        if skewed || chance(&mut self.rng, p_sdk_clock) {
            let skew = if skewed {
                let s = self.between(2 * MINUTE, 45 * MINUTE);
                if chance(&mut self.rng, 0.5) { s } else { -s }
            } else {
                0
            };
            // Time the event waited on the device before it was sent (offline: minutes).
            let queued = if chance(&mut self.rng, 0.1) {
                self.between(MINUTE, 15 * MINUTE)
            } else {
                self.between(50, 20 * SECOND)
            };
            let ts = eff + skew;
            let ts_form = if chance(&mut self.rng, 0.1) {
                Form::Epoch
            } else {
                Form::Local
            };
            write_time(out, ts, ts_form);
            out.push_str(",\"sent_at\":");
            write_time(out, ts + queued, Form::Local);
            out.push_str(",\"received_at\":");
            write_time(out, eff + queued, Form::Utc);
            return;
        }
        let p_epoch = match source {
            Source::Collector | Source::Browser => 0.35,
            _ => 0.06,
        };
        let form = if chance(&mut self.rng, p_epoch) {
            Form::Epoch
        } else if chance(&mut self.rng, 0.04) {
            Form::Utc
        } else {
            Form::Local
        };
        write_time(out, eff, form);
        if source == Source::Collector && chance(&mut self.rng, 0.3) {
            let received = eff + self.between(5, 800);
            out.push_str(",\"received_at\":");
            write_time(out, received, Form::Utc);
        }
    }

    fn body(&mut self, out: &mut String, ev: &Ev) {
        let rep = RepId(ev.rep);
        let customer = CustomerId(ev.pair);
        match ev.body {
            Body::Crm {
                action,
                channel,
                asset,
                detail,
            } => {
                let _ = write!(
                    out,
                    ",\"rep_id\":\"{rep}\",\"customer_id\":\"{customer}\",\"action\":\"{}\"",
                    action.as_str()
                );
                if let Some(c) = channel {
                    let _ = write!(out, ",\"channel\":\"{}\"", c.as_str());
                }
                if asset != 0 {
                    let _ = write!(out, ",\"asset_id\":\"a-{asset}\"");
                }
                match action {
                    Action::Call | Action::Meeting => {
                        let _ = write!(out, ",\"duration_s\":{detail}");
                    }
                    Action::Visit => {
                        let region = self.world.rep_region[ev.rep as usize] as usize;
                        let city = self.world.regions[region].cities[detail as usize % 3];
                        let _ = write!(out, ",\"city\":\"{city}\"");
                    }
                    Action::DealWon => {
                        let _ = write!(out, ",\"amount\":{}.{:02}", detail / 100, detail % 100);
                    }
                    _ => {}
                }
            }
            Body::Pixel { asset, hit, agent } => {
                let hit_name = match hit {
                    Hit::Open => "open",
                    Hit::Ping(_) => "ping",
                    Hit::Close(_) => "close",
                };
                let _ = write!(out, ",\"asset_id\":\"a-{asset}\",\"hit\":\"{hit_name}\"");
                match hit {
                    Hit::Close(dwell_ms) => {
                        let _ = write!(out, ",\"dwell_ms\":{dwell_ms}");
                    }
                    Hit::Ping(page) => {
                        let _ = write!(out, ",\"page\":{page}");
                    }
                    Hit::Open if agent == Agent::Device && chance(&mut self.rng, 0.6) => {
                        out.push_str(",\"page\":1");
                    }
                    Hit::Open => {}
                }
                let (ua, ip) = match agent {
                    Agent::Device => {
                        let v = visitor_of(ev.pair);
                        let ua = DEVICE_UAS[(v % DEVICE_UAS.len() as u32) as usize];
                        (ua, Some(v))
                    }
                    Agent::GoogleImageProxy => (GOOGLE_PROXY_UA, None),
                    Agent::AppleMailPrivacy => (APPLE_PRIVACY_UA, None),
                };
                let _ = write!(out, ",\"ua\":\"{ua}\"");
                if chance(&mut self.rng, 0.85) {
                    match (agent, ip) {
                        (Agent::Device, Some(v)) => {
                            let _ = write!(
                                out,
                                ",\"ip\":\"{}.{}.{}.0\"",
                                36 + (v >> 24) % 180,
                                (v >> 16) & 0xff,
                                (v >> 8) & 0xff
                            );
                        }
                        (Agent::GoogleImageProxy, _) => out.push_str(",\"ip\":\"66.249.84.0\""),
                        _ => out.push_str(",\"ip\":\"17.58.100.0\""),
                    }
                }
            }
            Body::Web {
                asset,
                medium,
                page,
                visitor,
            } => {
                out.push_str(",\"url\":\"");
                out.push_str(SITE);
                match page {
                    WebPage::Product(p) => {
                        let _ = write!(out, "/products/{}", PRODUCTS[p as usize % PRODUCTS.len()]);
                    }
                    WebPage::Home | WebPage::Campaign => out.push('/'),
                    WebPage::Stores => out.push_str("/stores"),
                    WebPage::News(n) => {
                        let _ = write!(out, "/news/2026/{n}");
                    }
                }
                if asset != 0 {
                    let _ = write!(
                        out,
                        "?utm_source=touchstream&utm_medium={}&utm_campaign=q4&utm_content=a-{asset}",
                        medium.medium()
                    );
                } else if page == WebPage::Campaign {
                    out.push_str("?utm_source=wechat&utm_medium=social&utm_campaign=double11");
                }
                out.push('"');
                let referrer = if asset != 0 {
                    if chance(&mut self.rng, 0.5) {
                        Some("https://servicewechat.com/")
                    } else {
                        None
                    }
                } else {
                    match self.rng.random_range(0..10u32) {
                        0..4 => Some("https://www.baidu.com/"),
                        4..6 => Some("https://mp.weixin.qq.com/"),
                        6 => Some("https://cn.bing.com/"),
                        _ => None,
                    }
                };
                if let Some(r) = referrer {
                    let _ = write!(out, ",\"referrer\":\"{r}\"");
                }
                if chance(&mut self.rng, 0.9) {
                    let _ = write!(out, ",\"visitor_id\":\"v-{visitor:08x}\"");
                }
            }
            Body::Presence { online } => {
                let status = if online { "online" } else { "offline" };
                let _ = write!(
                    out,
                    ",\"external_userid\":\"wo_{customer}\",\"status\":\"{status}\""
                );
            }
            Body::Message { inbound } => {
                let direction = if inbound { "in" } else { "out" };
                let _ = write!(
                    out,
                    ",\"wecom_userid\":\"wx_{rep}\",\"external_userid\":\"wo_{customer}\",\"direction\":\"{direction}\""
                );
            }
            Body::Approval {
                instance,
                process,
                step,
                with_customer,
            } => {
                let (kind, result) = match step {
                    Step::Start => ("start", None),
                    Step::Finish { agree: true } => ("finish", Some("agree")),
                    Step::Finish { agree: false } => ("finish", Some("refuse")),
                    Step::Terminate => ("terminate", None),
                };
                let _ = write!(
                    out,
                    ",\"process_instance_id\":\"pi-{instance}\",\"process_code\":\"{}\",\"type\":\"{kind}\"",
                    process.code()
                );
                if let Some(r) = result {
                    let _ = write!(out, ",\"result\":\"{r}\"");
                }
                let _ = write!(out, ",\"staff_id\":\"dt_{rep}\"");
                let with_customer = with_customer && ev.pair != NO_PAIR;
                if with_customer {
                    let _ = write!(out, ",\"customer_id\":\"{customer}\"");
                }
                if step == Step::Start && chance(&mut self.rng, 0.8) {
                    let _ = match process {
                        Process::Contract => {
                            write!(out, ",\"title\":\"Sales contract {customer}\"")
                        }
                        Process::Discount => {
                            write!(out, ",\"title\":\"Special price for {customer}\"")
                        }
                        Process::Sample => {
                            write!(out, ",\"title\":\"Product samples for {customer}\"")
                        }
                        Process::Expense => write!(out, ",\"title\":\"Travel expenses {rep}\""),
                    };
                }
            }
        }
    }

    /// Free-form `attrs` (ignored by the pipeline) on some SDK and browser events.
    fn attrs(&mut self, out: &mut String, source: Source) {
        match source {
            Source::Sdk if chance(&mut self.rng, 0.2) => {
                let sdk = if chance(&mut self.rng, 0.6) {
                    "touch-android/3.2.1"
                } else {
                    "touch-ios/3.2.0"
                };
                let _ = write!(
                    out,
                    ",\"attrs\":{{\"sdk\":\"{sdk}\",\"app\":\"crm-mobile\"}}"
                );
            }
            Source::Browser if chance(&mut self.rng, 0.1) => {
                out.push_str(",\"attrs\":{\"lang\":\"zh-CN\",\"screen\":\"390x844\"}");
            }
            _ => {}
        }
    }

    /// One noise line after the valid event `ev` (whose line is still in `self.line`).
    fn noise_line(&mut self, ev: &Ev, sink: &mut Sink<'_>) -> anyhow::Result<()> {
        let kind = match self.rng.random_range(0..5u32) {
            0 => Noise::InvalidJson,
            1 => Noise::SchemaViolation,
            2 => Noise::UnknownRep,
            3 => Noise::Duplicate,
            _ => Noise::UnknownAsset,
        };
        if kind == Noise::Duplicate {
            // A publisher retry: the same bytes again, a little later.
            let after = self.rng.random_range(0..40u64);
            let last = self.pending.back().map_or(0, |(at, _)| *at);
            let at = (self.emitted + after).max(last);
            self.pending.push_back((at, self.line.clone()));
            return Ok(());
        }
        let mut out = std::mem::take(&mut self.scratch);
        out.clear();
        match kind {
            Noise::InvalidJson => self.invalid_json(&mut out),
            Noise::SchemaViolation => self.schema_violation(&mut out, ev),
            Noise::UnknownRep => self.unknown_rep(&mut out, ev),
            _ => self.unknown_asset(&mut out, ev),
        }
        let result = self.emit(&out, Some(kind), sink);
        self.scratch = out;
        result
    }

    fn invalid_json(&mut self, out: &mut String) {
        match self.rng.random_range(0..4u32) {
            0 | 1 => {
                // Cut off in transit: any strict prefix of an object is invalid JSON.
                let len = self.line.len();
                let mut cut = self.between(1, len as i64 - 1).max(1) as usize;
                while cut > 1 && !self.line.is_char_boundary(cut) {
                    cut -= 1;
                }
                out.push_str(&self.line[..cut.min(len.saturating_sub(1))]);
            }
            2 => {
                // A hand-rolled encoder's trailing comma.
                out.push_str(self.line.trim_end_matches('}'));
                out.push_str(",}");
            }
            _ => {
                let id = self.next_event_id();
                let _ = write!(
                    out,
                    "{{'event_id': 'e-{id}', 'kind': 'pixel.hit', 'asset_id': 'a-1', 'hit': 'open'}}"
                );
            }
        }
    }

    fn schema_violation(&mut self, out: &mut String, ev: &Ev) {
        let id = self.next_event_id();
        let pair = if ev.pair == NO_PAIR { 0 } else { ev.pair };
        let rep = RepId(pair / self.world.customers_per_rep.max(1) as u32);
        let customer = CustomerId(pair);
        let mut ts = String::with_capacity(32);
        write_time(&mut ts, ev.eff, Form::Local);
        let head = format!("{{\"event_id\":\"e-{id}\"");
        let _ = match self.rng.random_range(0..12u32) {
            0 => write!(
                out,
                "{head},\"kind\":\"crm.click\",\"ts\":{ts},\"rep_id\":\"{rep}\",\"customer_id\":\"{customer}\"}}"
            ),
            1 => write!(
                out,
                "{head},\"kind\":\"crm.action\",\"ts\":{ts},\"rep_id\":\"{rep}\",\"action\":\"call\",\"channel\":\"phone\"}}"
            ),
            2 => write!(
                out,
                "{head},\"kind\":\"pixel.hit\",\"ts\":{ts},\"asset_id\":\"a-1\",\"hit\":\"view\"}}"
            ),
            3 => write!(
                out,
                "{head},\"kind\":\"crm.action\",\"ts\":{ts},\"rep_id\":\"{rep}\",\"customer_id\":\"{customer}\",\"action\":\"call\",\"channel\":\"fax\"}}"
            ),
            4 => write!(
                out,
                "{head},\"kind\":\"wecom.message\",\"ts\":{ts},\"wecom_userid\":\"wx_{rep}\",\"external_userid\":\"wo_{customer}\",\"direction\":\"in\",\"content\":\"hello\"}}"
            ),
            5 => write!(
                out,
                "{head},\"kind\":\"pixel.hit\",\"ts\":{ts},\"asset_id\":\"a-1\",\"hit\":\"close\",\"dwell_ms\":-120}}"
            ),
            6 => write!(
                out,
                "{head},\"kind\":\"crm.action\",\"ts\":{ts},\"rep_id\":\"{rep}\",\"customer_id\":\"{customer}\",\"action\":\"quote_sent\",\"channel\":\"email\"}}"
            ),
            7 => write!(
                out,
                "{head},\"kind\":\"wecom.presence\",\"ts\":\"yesterday 10:00\",\"external_userid\":\"wo_{customer}\",\"status\":\"online\"}}"
            ),
            8 => write!(
                out,
                "{{\"kind\":\"wecom.presence\",\"ts\":{ts},\"external_userid\":\"wo_{customer}\",\"status\":\"online\"}}"
            ),
            9 => write!(
                out,
                "{{\"event_id\":\"e-{id}-{}\",\"kind\":\"wecom.presence\",\"ts\":{ts},\"external_userid\":\"wo_{customer}\",\"status\":\"online\"}}",
                "x".repeat(130)
            ),
            10 => write!(
                out,
                "{head},\"kind\":\"wecom.presence\",\"ts\":{ts},\"external_userid\":\"wo_{customer}\",\"status\":\"away\"}}"
            ),
            _ => write!(
                out,
                "{head},\"kind\":\"crm.action\",\"ts\":{ts},\"rep_id\":\"{rep}\",\"customer_id\":\"{customer}\",\"action\":\"call\",\"duration_s\":\"long\"}}"
            ),
        };
    }

    fn unknown_rep(&mut self, out: &mut String, ev: &Ev) {
        let id = self.next_event_id();
        // Ids past the last rep: a rep who left, or a test account.
        let ghost = RepId(self.world.reps as u32 + self.rng.random_range(0..500u32));
        let pair = if ev.pair == NO_PAIR { 0 } else { ev.pair };
        let customer = CustomerId(pair);
        let mut ts = String::with_capacity(32);
        write_time(&mut ts, ev.eff, Form::Local);
        let _ = match self.rng.random_range(0..3u32) {
            0 => write!(
                out,
                "{{\"event_id\":\"e-{id}\",\"kind\":\"crm.action\",\"ts\":{ts},\"rep_id\":\"{ghost}\",\"customer_id\":\"{customer}\",\"action\":\"call\",\"channel\":\"phone\",\"duration_s\":95}}"
            ),
            1 => write!(
                out,
                "{{\"event_id\":\"e-{id}\",\"kind\":\"wecom.message\",\"ts\":{ts},\"wecom_userid\":\"wx_{ghost}\",\"external_userid\":\"wo_{customer}\",\"direction\":\"out\"}}"
            ),
            _ => write!(
                out,
                "{{\"event_id\":\"e-{id}\",\"kind\":\"dingtalk.approval\",\"ts\":{ts},\"process_instance_id\":\"pi-ghost-{id}\",\"process_code\":\"PROC-CONTRACT\",\"type\":\"start\",\"staff_id\":\"dt_{ghost}\",\"customer_id\":\"{customer}\"}}"
            ),
        };
    }

    fn unknown_asset(&mut self, out: &mut String, ev: &Ev) {
        let id = self.next_event_id();
        self.last_stale_asset += 1;
        let stale = self.last_stale_asset;
        let mut ts = String::with_capacity(32);
        write_time(&mut ts, ev.eff, Form::Epoch);
        let _ = write!(
            out,
            "{{\"event_id\":\"e-{id}\",\"kind\":\"pixel.hit\",\"ts\":{ts},\"asset_id\":\"a-stale-{stale}\",\"hit\":\"open\",\"ua\":\"{}\"}}",
            DEVICE_UAS[(stale % DEVICE_UAS.len() as u64) as usize]
        );
    }
}

/// Writes a JSON time value: an integer for `Epoch`, else a quoted RFC 3339 string.
fn write_time(out: &mut String, ms: i64, form: Form) {
    match form {
        Form::Epoch => {
            let _ = write!(out, "{ms}");
        }
        Form::Local => write_rfc3339(out, ms, LOCAL_OFFSET, ms.rem_euclid(1000) != 0),
        Form::Utc => write_rfc3339(out, ms, 0, true),
    }
}

/// Hand-rolled because chrono's formatter is several times slower and this runs per line.
fn write_rfc3339(out: &mut String, ms: i64, offset: i64, millis: bool) {
    let local = ms + offset;
    let days = local.div_euclid(86_400_000);
    let in_day = local.rem_euclid(86_400_000);
    let (y, m, d) = civil_from_days(days);
    let (h, mi, s, frac) = (
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000,
    );
    let _ = write!(out, "\"{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}");
    if millis {
        let _ = write!(out, ".{frac:03}");
    }
    if offset == 0 {
        out.push_str("Z\"");
    } else {
        let sign = if offset < 0 { '-' } else { '+' };
        let o = offset.abs() / 60_000;
        let _ = write!(out, "{sign}{:02}:{:02}\"", o / 60, o % 60);
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(ms: i64, form: Form) -> String {
        let mut s = String::new();
        write_time(&mut s, ms, form);
        s
    }

    #[test]
    fn rfc3339_matches_known_instants() {
        // 2026-11-01T00:00:00Z = 1793491200000 ms (date -d 2026-11-01T00:00:00Z +%s).
        assert_eq!(
            fmt(1_793_491_200_000, Form::Utc),
            "\"2026-11-01T00:00:00.000Z\""
        );
        assert_eq!(
            fmt(1_793_491_200_000, Form::Local),
            "\"2026-11-01T08:00:00+08:00\""
        );
        assert_eq!(
            fmt(1_793_491_200_123, Form::Local),
            "\"2026-11-01T08:00:00.123+08:00\""
        );
        assert_eq!(fmt(1_793_491_200_000, Form::Epoch), "1793491200000");
        // Leap day and year boundary.
        assert_eq!(
            fmt(951_782_400_000, Form::Utc),
            "\"2000-02-29T00:00:00.000Z\""
        );
        assert_eq!(
            fmt(1_798_761_599_999, Form::Local),
            "\"2027-01-01T07:59:59.999+08:00\""
        );
    }
}
