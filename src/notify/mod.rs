//! Alert delivery: turns the alert records published on `touch.alerts.<rule>` into pushes to
//! Alertmanager, WeCom and DingTalk group robots and signed webhooks, routed by the rep's region,
//! rendered from templates, retried with backoff, rate-limited per robot (merging into digests,
//! never dropping) and reported per alert as delivered or failed (for `delivery_failed`).
//!
//! The pieces: [`NotifyConfig`] (the pipeline file's `[notify]` section), [`AlertView`] (one
//! alert plus directory names), [`Notifier`] (validated config, routes, templates),
//! [`deliver::Dispatcher`] (one worker per receiver; the place the run loop submits to).

pub mod alertmanager;
pub mod deliver;
pub mod dingtalk;
pub mod http;
pub mod template;
pub mod webhook;
pub mod wecom;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::event::{Millis, format_time, parse_time};

pub use deliver::{Delivery, Dispatcher, Report, Ticket};
pub use template::Templates;

fn default_firing_hold_hours() -> Option<u64> {
    Some(168)
}

/// One receiver of the `[[notify.receivers]]` array, tagged by `kind`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Receiver {
    /// Alertmanager's v2 API: `POST {url}/api/v2/alerts`.
    Alertmanager {
        name: String,
        /// Base URL, e.g. `http://127.0.0.1:9093`.
        url: String,
        /// touchstream sends a firing alert once, so without an `endsAt` Alertmanager would
        /// resolve it by itself after its `resolve_timeout` (5 min by default) and tell the
        /// receivers so. Firing alerts therefore get `endsAt = now + this` (default 7 days):
        /// active until resolved, or until the hold runs out.
        #[serde(default = "default_firing_hold_hours")]
        firing_hold_hours: Option<u64>,
    },
    /// WeCom (企业微信) group robot.
    Wecom {
        name: String,
        /// `https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=...`
        webhook_url: String,
        /// People to mention: a `text` message with `mentioned_mobile_list` follows each message
        /// (WeCom markdown cannot mention by mobile).
        #[serde(default)]
        mentioned_mobile_list: Vec<String>,
    },
    /// DingTalk (钉钉) custom robot.
    Dingtalk {
        name: String,
        /// `https://oapi.dingtalk.com/robot/send?access_token=...`
        webhook_url: String,
        /// The robot's signing secret (`SEC...`); when set every request is signed.
        #[serde(default)]
        secret: Option<String>,
        /// Mobiles to `@` in each message.
        #[serde(default)]
        at_mobiles: Vec<String>,
    },
    /// Any HTTP endpoint, with Alertmanager's webhook (version 4) body.
    Webhook {
        name: String,
        url: String,
        /// When set, `X-Touchstream-Signature: sha256=<hex HMAC-SHA256 of the body>`.
        #[serde(default)]
        hmac_secret: Option<String>,
    },
}

impl Receiver {
    pub fn name(&self) -> &str {
        match self {
            Receiver::Alertmanager { name, .. }
            | Receiver::Wecom { name, .. }
            | Receiver::Dingtalk { name, .. }
            | Receiver::Webhook { name, .. } => name,
        }
    }

    pub fn kind(&self) -> ReceiverKind {
        match self {
            Receiver::Alertmanager { .. } => ReceiverKind::Alertmanager,
            Receiver::Wecom { .. } => ReceiverKind::Wecom,
            Receiver::Dingtalk { .. } => ReceiverKind::Dingtalk,
            Receiver::Webhook { .. } => ReceiverKind::Webhook,
        }
    }

    /// The receiver's endpoint as configured (for logs; robot URLs carry their key, so only
    /// scheme, host and path are shown).
    pub fn endpoint_for_logs(&self) -> String {
        let raw = match self {
            Receiver::Alertmanager { url, .. } | Receiver::Webhook { url, .. } => url,
            Receiver::Wecom { webhook_url, .. } | Receiver::Dingtalk { webhook_url, .. } => {
                webhook_url
            }
        };
        match url::Url::parse(raw) {
            Ok(u) => format!(
                "{}://{}{}",
                u.scheme(),
                u.host_str().unwrap_or(""),
                u.path()
            ),
            Err(_) => "<invalid url>".into(),
        }
    }
}

/// The kinds of receiver (templates may be chosen per kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReceiverKind {
    Alertmanager,
    Wecom,
    Dingtalk,
    Webhook,
}

impl ReceiverKind {
    pub const ALL: [ReceiverKind; 4] = [
        ReceiverKind::Alertmanager,
        ReceiverKind::Wecom,
        ReceiverKind::Dingtalk,
        ReceiverKind::Webhook,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReceiverKind::Alertmanager => "alertmanager",
            ReceiverKind::Wecom => "wecom",
            ReceiverKind::Dingtalk => "dingtalk",
            ReceiverKind::Webhook => "webhook",
        }
    }

    /// Group robots: 20 messages a minute, digests when alerts queue beyond that.
    pub fn is_robot(self) -> bool {
        matches!(self, ReceiverKind::Wecom | ReceiverKind::Dingtalk)
    }
}

/// `[[notify.routes]]`: alerts of a region (or `*`, every region) go to these receivers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub region: String,
    pub receivers: Vec<String>,
}

/// `[[notify.templates]]`: a message template overriding the default for the alerts it matches.
/// The most specific match wins (rule, then kind, then status); ties go to the later entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateSpec {
    /// Only alerts of this rule (default: every rule).
    #[serde(default)]
    pub rule: Option<String>,
    /// Only receivers of this kind (default: every kind).
    #[serde(default)]
    pub kind: Option<ReceiverKind>,
    /// Only `firing` or `resolved` alerts (default: both).
    #[serde(default)]
    pub status: Option<AlertState>,
    /// `full` (one alert in one message, the default) or `line` (one alert's line in a digest).
    #[serde(default)]
    pub form: TemplateForm,
    /// The template text (minijinja, i.e. Jinja2 syntax).
    pub text: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TemplateForm {
    #[default]
    Full,
    Line,
}

/// `[notify.delivery]`: retries, timeouts and the robots' rate limit.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliverySettings {
    /// Timeout of one HTTP request (connect, TLS, send and response).
    pub request_timeout_ms: u64,
    /// Backoff before retry n (from 0) is uniform in [0, min(cap, base × 2ⁿ)] (full jitter).
    pub retry_base_ms: u64,
    pub retry_cap_ms: u64,
    /// Attempts per message before giving up (reported as failed, for `delivery_failed`).
    pub max_attempts: u32,
    /// Messages per minute per robot receiver (WeCom and DingTalk allow 20).
    pub robot_messages_per_minute: u32,
    /// Most alerts in one Alertmanager or webhook request.
    pub max_alerts_per_request: usize,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        DeliverySettings {
            request_timeout_ms: 10_000,
            retry_base_ms: 500,
            retry_cap_ms: 60_000,
            max_attempts: 10,
            robot_messages_per_minute: 20,
            max_alerts_per_request: 100,
        }
    }
}

impl DeliverySettings {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

fn default_utc_offset() -> i32 {
    480
}

/// The pipeline file's `[notify]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// Link to a rep's dashboard, a template over the alert (e.g.
    /// `https://grafana.example.com/d/touch-rep?var-rep={{ rep_id }}`); empty: no link.
    #[serde(default)]
    pub dashboard_url: String,
    /// `externalURL` of webhook bodies (where the alerts can be seen).
    #[serde(default)]
    pub external_url: String,
    /// Offset from UTC, in minutes, of times shown in messages (default +08:00, China).
    #[serde(default = "default_utc_offset")]
    pub utc_offset_minutes: i32,
    #[serde(default)]
    pub delivery: DeliverySettings,
    #[serde(default)]
    pub receivers: Vec<Receiver>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub templates: Vec<TemplateSpec>,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            dashboard_url: String::new(),
            external_url: String::new(),
            utc_offset_minutes: default_utc_offset(),
            delivery: DeliverySettings::default(),
            receivers: Vec::new(),
            routes: Vec::new(),
            templates: Vec::new(),
        }
    }
}

/// One problem in the `[notify]` section, with the dotted path of the setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyProblem {
    /// E.g. `notify.receivers[1].webhook_url`.
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for NotifyProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem of a `[notify]` section.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
pub struct NotifyConfigErrors(pub Vec<NotifyProblem>);

impl NotifyConfig {
    /// Static checks: names, URLs, routes, delivery settings (templates: [`Notifier::new`]).
    pub fn check(&self) -> Vec<NotifyProblem> {
        let mut problems = Vec::new();
        let mut bad =
            |path: String, message: String| problems.push(NotifyProblem { path, message });
        let mut names = HashSet::new();
        for (i, r) in self.receivers.iter().enumerate() {
            let at = format!("notify.receivers[{i}]");
            let name = r.name();
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                bad(
                    format!("{at}.name"),
                    format!("`{name}`: a receiver name is non-empty and uses only [A-Za-z0-9._-]"),
                );
            }
            if !names.insert(name) {
                bad(
                    format!("{at}.name"),
                    format!("receiver `{name}` is declared twice"),
                );
            }
            let (key, url) = match r {
                Receiver::Alertmanager { url, .. } | Receiver::Webhook { url, .. } => ("url", url),
                Receiver::Wecom { webhook_url, .. } | Receiver::Dingtalk { webhook_url, .. } => {
                    ("webhook_url", webhook_url)
                }
            };
            match url::Url::parse(url) {
                Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {
                    if u.host_str().is_none_or(str::is_empty) {
                        bad(format!("{at}.{key}"), format!("`{url}` has no host"));
                    }
                    if let Receiver::Wecom { .. } = r
                        && !u.query_pairs().any(|(k, v)| k == "key" && !v.is_empty())
                    {
                        bad(
                            format!("{at}.{key}"),
                            "a WeCom robot URL carries `?key=...`".into(),
                        );
                    }
                    if let Receiver::Dingtalk { .. } = r
                        && !u
                            .query_pairs()
                            .any(|(k, v)| k == "access_token" && !v.is_empty())
                    {
                        bad(
                            format!("{at}.{key}"),
                            "a DingTalk robot URL carries `?access_token=...`".into(),
                        );
                    }
                }
                Ok(u) => bad(
                    format!("{at}.{key}"),
                    format!("scheme `{}` is not http or https", u.scheme()),
                ),
                Err(e) => bad(format!("{at}.{key}"), format!("`{url}` is not a URL: {e}")),
            }
            match r {
                Receiver::Dingtalk {
                    secret: Some(s), ..
                } if s.is_empty() => bad(
                    format!("{at}.secret"),
                    "empty; leave it out when the robot does not sign".into(),
                ),
                Receiver::Webhook {
                    hmac_secret: Some(s),
                    ..
                } if s.is_empty() => bad(
                    format!("{at}.hmac_secret"),
                    "empty; leave it out to send unsigned".into(),
                ),
                Receiver::Alertmanager {
                    firing_hold_hours: Some(0),
                    ..
                } => bad(
                    format!("{at}.firing_hold_hours"),
                    "must be at least 1".into(),
                ),
                _ => {}
            }
        }
        for (i, route) in self.routes.iter().enumerate() {
            let at = format!("notify.routes[{i}]");
            if route.region.is_empty() {
                bad(
                    format!("{at}.region"),
                    "empty; use `*` for every region".into(),
                );
            }
            if route.receivers.is_empty() {
                bad(format!("{at}.receivers"), "names no receiver".into());
            }
            for name in &route.receivers {
                if !names.contains(name.as_str()) {
                    bad(
                        format!("{at}.receivers"),
                        format!("unknown receiver `{name}`"),
                    );
                }
            }
        }
        let d = &self.delivery;
        if d.request_timeout_ms == 0 {
            bad(
                "notify.delivery.request_timeout_ms".into(),
                "must be positive".into(),
            );
        }
        if d.retry_base_ms == 0 {
            bad(
                "notify.delivery.retry_base_ms".into(),
                "must be positive".into(),
            );
        }
        if d.retry_cap_ms < d.retry_base_ms {
            bad(
                "notify.delivery.retry_cap_ms".into(),
                "must be at least retry_base_ms".into(),
            );
        }
        if d.max_attempts == 0 {
            bad(
                "notify.delivery.max_attempts".into(),
                "must be at least 1".into(),
            );
        }
        if d.robot_messages_per_minute < 2 {
            bad(
                "notify.delivery.robot_messages_per_minute".into(),
                "must be at least 2 (a WeCom message with mentions takes two)".into(),
            );
        }
        if d.max_alerts_per_request == 0 {
            bad(
                "notify.delivery.max_alerts_per_request".into(),
                "must be at least 1".into(),
            );
        }
        if !(-14 * 60..=14 * 60).contains(&self.utc_offset_minutes) {
            bad(
                "notify.utc_offset_minutes".into(),
                "must be within ±840 (±14 h)".into(),
            );
        }
        problems
    }
}

/// Firing or resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    Firing,
    Resolved,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }
}

/// What the run loop knows about an alert beyond its record: directory names and the rule's
/// severity and summary (from the pipeline file's `[[rules]]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlertNames {
    pub rep_name: Option<String>,
    pub customer_name: Option<String>,
    pub director: Option<String>,
    pub severity: String,
    pub summary: String,
}

/// One alert as the notifier sees it: the record of `touch.alerts.<rule>` plus names.
/// It is also the context of message templates (field names as here).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertView {
    pub alert_id: String,
    pub rule: String,
    pub status: AlertState,
    pub rep_id: String,
    pub customer_id: String,
    pub region: String,
    pub asset_id: Option<String>,
    /// RFC 3339 UTC, as in the record.
    pub due_at: String,
    pub fired_at: String,
    /// Resolved alerts: `evidence.resolved_at`, or `fired_at` when absent.
    pub resolved_at: Option<String>,
    pub evidence: Map<String, Value>,
    pub rep_name: Option<String>,
    pub customer_name: Option<String>,
    pub director: Option<String>,
    pub severity: String,
    pub summary: String,
    /// The rep's dashboard (rendered from `notify.dashboard_url`), set by [`Notifier::prepare`].
    pub dashboard_url: Option<String>,
    #[serde(skip)]
    pub fired_at_ms: Millis,
}

/// Why an alert record could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("alert record: {0}")]
pub struct AlertParseError(pub String);

impl AlertView {
    /// Reads an alert record (the bytes of a `touch.alerts.<rule>` message).
    pub fn from_bytes(bytes: &[u8], names: AlertNames) -> Result<AlertView, AlertParseError> {
        let v: Value =
            serde_json::from_slice(bytes).map_err(|e| AlertParseError(format!("not JSON: {e}")))?;
        Self::from_json(&v, names)
    }

    /// Reads an alert record already parsed as JSON.
    pub fn from_json(v: &Value, names: AlertNames) -> Result<AlertView, AlertParseError> {
        let obj = v
            .as_object()
            .ok_or_else(|| AlertParseError("not a JSON object".into()))?;
        let text = |key: &str| -> Result<String, AlertParseError> {
            match obj.get(key) {
                Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
                Some(_) => Err(AlertParseError(format!(
                    "`{key}` is not a non-empty string"
                ))),
                None => Err(AlertParseError(format!("`{key}` is missing"))),
            }
        };
        let time = |key: &str| -> Result<(String, Millis), AlertParseError> {
            let s = text(key)?;
            let ms = parse_time(&s)
                .ok_or_else(|| AlertParseError(format!("`{key}` is not an RFC 3339 time: {s}")))?;
            Ok((format_time(ms), ms))
        };
        let status = match text("status")?.as_str() {
            "firing" => AlertState::Firing,
            "resolved" => AlertState::Resolved,
            other => {
                return Err(AlertParseError(format!(
                    "`status` is `{other}`, not firing or resolved"
                )));
            }
        };
        let evidence = match obj.get("evidence") {
            Some(Value::Object(m)) => m.clone(),
            None | Some(Value::Null) => Map::new(),
            Some(_) => return Err(AlertParseError("`evidence` is not an object".into())),
        };
        let asset_id = match obj.get("asset_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(AlertParseError("`asset_id` is not a string".into())),
        };
        let (fired_at, fired_at_ms) = time("fired_at")?;
        let resolved_at = match status {
            AlertState::Firing => None,
            AlertState::Resolved => Some(
                evidence
                    .get("resolved_at")
                    .and_then(Value::as_str)
                    .and_then(parse_time)
                    .map(format_time)
                    .unwrap_or_else(|| fired_at.clone()),
            ),
        };
        Ok(AlertView {
            alert_id: text("alert_id")?,
            rule: text("rule")?,
            status,
            rep_id: text("rep_id")?,
            customer_id: text("customer_id")?,
            region: text("region")?,
            asset_id,
            due_at: time("due_at")?.0,
            fired_at,
            resolved_at,
            evidence,
            rep_name: names.rep_name.filter(|s| !s.is_empty()),
            customer_name: names.customer_name.filter(|s| !s.is_empty()),
            director: names.director.filter(|s| !s.is_empty()),
            severity: if names.severity.is_empty() {
                "warning".into()
            } else {
                names.severity
            },
            summary: names.summary,
            dashboard_url: None,
            fired_at_ms,
        })
    }

    /// The idempotency key of a delivery: (`alert_id`, status, receiver).
    pub fn delivery_key(&self, receiver: &str) -> String {
        format!("{}:{}:{}", self.alert_id, self.status.as_str(), receiver)
    }
}

/// A validated `[notify]` section: receivers, routes and compiled templates.
#[derive(Debug)]
pub struct Notifier {
    config: NotifyConfig,
    templates: Templates,
}

impl Notifier {
    /// Validates the section and compiles its templates; every problem is reported.
    pub fn new(config: NotifyConfig) -> Result<Notifier, NotifyConfigErrors> {
        let mut problems = config.check();
        let templates = match Templates::new(&config) {
            Ok(t) => Some(t),
            Err(mut p) => {
                problems.append(&mut p);
                None
            }
        };
        match templates {
            Some(templates) if problems.is_empty() => Ok(Notifier { config, templates }),
            _ => Err(NotifyConfigErrors(problems)),
        }
    }

    pub fn config(&self) -> &NotifyConfig {
        &self.config
    }

    pub fn templates(&self) -> &Templates {
        &self.templates
    }

    pub fn receiver(&self, name: &str) -> Option<&Receiver> {
        self.config.receivers.iter().find(|r| r.name() == name)
    }

    /// Receivers of an alert of `region`: the pipeline file's routes for the region and for
    /// `*`, then the directory's `regions.routes` for it (`;`-separated names), each once, in
    /// that order. Unknown names from the directory are returned in `Err` beside the known ones.
    pub fn route(&self, region: &str, directory_routes: &str) -> RouteResult<'_> {
        let mut seen = HashSet::new();
        let mut receivers = Vec::new();
        let mut unknown = Vec::new();
        let from_file = self
            .config
            .routes
            .iter()
            .filter(|r| r.region == region || r.region == "*")
            .flat_map(|r| r.receivers.iter().map(String::as_str));
        let from_directory = directory_routes
            .split(';')
            .map(str::trim)
            .filter(|s| !s.is_empty());
        for name in from_file.chain(from_directory) {
            if !seen.insert(name) {
                continue;
            }
            match self.receiver(name) {
                Some(r) => receivers.push(r),
                None => unknown.push(name.to_string()),
            }
        }
        RouteResult { receivers, unknown }
    }

    /// Sets what the notifier adds to an alert before delivery (the dashboard link).
    pub fn prepare(&self, mut alert: AlertView) -> AlertView {
        alert.dashboard_url = self.templates.dashboard_url(&alert);
        alert
    }
}

/// The receivers an alert goes to, and names that match no receiver (a directory typo).
#[derive(Debug)]
pub struct RouteResult<'a> {
    pub receivers: Vec<&'a Receiver>,
    pub unknown: Vec<String>,
}

/// Labels in a stable order (Alertmanager and webhook bodies).
pub(crate) type Labels = BTreeMap<String, String>;

/// Labels of an alert for Alertmanager and webhooks. `alert_id` is part of the identity:
/// without it two quotes of one rep would be one Alertmanager alert.
pub(crate) fn labels(alert: &AlertView) -> Labels {
    let mut l = Labels::new();
    l.insert("alertname".into(), alert.rule.clone());
    l.insert("alert_id".into(), alert.alert_id.clone());
    l.insert("rep".into(), alert.rep_id.clone());
    l.insert("region".into(), alert.region.clone());
    l.insert("severity".into(), alert.severity.clone());
    l
}

/// Annotations of an alert for Alertmanager and webhooks: `summary` (the rule's, else its
/// name), `description` (the template rendered for `kind`), `dashboard` when there is one.
pub(crate) fn annotations(
    alert: &AlertView,
    templates: &Templates,
    kind: ReceiverKind,
) -> Map<String, Value> {
    let mut m = Map::new();
    let summary = if alert.summary.is_empty() {
        &alert.rule
    } else {
        &alert.summary
    };
    m.insert("summary".into(), summary.clone().into());
    m.insert(
        "description".into(),
        templates.render(alert, kind, TemplateForm::Full).into(),
    );
    if let Some(url) = &alert.dashboard_url {
        m.insert("dashboard".into(), url.clone().into());
    }
    m
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const FIRING: &str = r#"{"alert_id":"quote_hot_no_contract:q1","rule":"quote_hot_no_contract","status":"firing","rep_id":"r1","customer_id":"c1","region":"east","asset_id":"q1","due_at":"2026-11-07T01:00:00.000Z","fired_at":"2026-11-07T01:00:00.000Z","evidence":{"quote_sent_at":"2026-11-02T01:00:00.000Z","counted_opens":3,"excluded_opens":1,"last_open_at":"2026-11-05T01:00:00.000Z","customer_online_at_send":true,"product_page_visits_30m":2}}"#;
    pub(crate) const RESOLVED: &str = r#"{"alert_id":"quote_hot_no_contract:q1","rule":"quote_hot_no_contract","status":"resolved","rep_id":"r1","customer_id":"c1","region":"east","asset_id":"q1","due_at":"2026-11-07T01:00:00.000Z","fired_at":"2026-11-07T01:00:00.000Z","evidence":{"quote_sent_at":"2026-11-02T01:00:00.000Z","counted_opens":3,"excluded_opens":0,"last_open_at":"2026-11-05T01:00:00.000Z","customer_online_at_send":false,"product_page_visits_30m":0,"resolved_at":"2026-11-07T01:01:00.000Z","resolved_by":"lc-contract"}}"#;

    pub(crate) fn names() -> AlertNames {
        AlertNames {
            rep_name: Some("李伟".into()),
            customer_name: Some("康达大药房 12 号店".into()),
            director: Some("陈杰".into()),
            severity: "warning".into(),
            summary: "报价已被打开 3 次以上，5 天内未发合同".into(),
        }
    }

    pub(crate) fn firing() -> AlertView {
        AlertView::from_bytes(FIRING.as_bytes(), names()).expect("sample alert parses")
    }

    pub(crate) fn resolved() -> AlertView {
        AlertView::from_bytes(RESOLVED.as_bytes(), names()).expect("sample alert parses")
    }

    #[test]
    fn reads_the_published_record() {
        let a = firing();
        assert_eq!(a.alert_id, "quote_hot_no_contract:q1");
        assert_eq!(a.status, AlertState::Firing);
        assert_eq!(a.asset_id.as_deref(), Some("q1"));
        assert_eq!(a.resolved_at, None);
        assert_eq!(a.evidence["counted_opens"], 3);
        let r = resolved();
        assert_eq!(r.resolved_at.as_deref(), Some("2026-11-07T01:01:00.000Z"));
        assert_eq!(r.delivery_key("wx"), "quote_hot_no_contract:q1:resolved:wx");
    }

    #[test]
    fn bad_records_say_what_is_wrong() {
        let e = AlertView::from_bytes(b"{", names()).unwrap_err();
        assert!(e.0.starts_with("not JSON"), "{e}");
        let v = FIRING.replace("\"status\":\"firing\"", "\"status\":\"open\"");
        let e = AlertView::from_bytes(v.as_bytes(), names()).unwrap_err();
        assert!(e.0.contains("`status` is `open`"), "{e}");
        let v = FIRING.replace(
            "\"fired_at\":\"2026-11-07T01:00:00.000Z\"",
            "\"fired_at\":\"yesterday\"",
        );
        let e = AlertView::from_bytes(v.as_bytes(), names()).unwrap_err();
        assert!(e.0.contains("`fired_at` is not an RFC 3339 time"), "{e}");
        let v = FIRING.replace("\"rep_id\":\"r1\",", "");
        let e = AlertView::from_bytes(v.as_bytes(), names()).unwrap_err();
        assert!(e.0.contains("`rep_id` is missing"), "{e}");
    }

    #[test]
    fn receivers_deserialize_tagged_by_kind() {
        let text = r#"
            dashboard_url = "https://grafana.example.com/d/rep?var-rep={{ rep_id }}"
            [[receivers]]
            name = "am"
            kind = "alertmanager"
            url = "http://127.0.0.1:9093"
            [[receivers]]
            name = "east-wecom"
            kind = "wecom"
            webhook_url = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k"
            mentioned_mobile_list = ["13800000000"]
            [[receivers]]
            name = "east-ding"
            kind = "dingtalk"
            webhook_url = "https://oapi.dingtalk.com/robot/send?access_token=t"
            secret = "SECabc"
            [[routes]]
            region = "east"
            receivers = ["east-wecom", "east-ding"]
            [[routes]]
            region = "*"
            receivers = ["am"]
        "#;
        let config: NotifyConfig = toml::from_str(text).expect("parses");
        assert_eq!(config.receivers.len(), 3);
        assert_eq!(
            config.receivers[2],
            Receiver::Dingtalk {
                name: "east-ding".into(),
                webhook_url: "https://oapi.dingtalk.com/robot/send?access_token=t".into(),
                secret: Some("SECabc".into()),
                at_mobiles: vec![],
            }
        );
        let notifier = Notifier::new(config).expect("valid");
        let routed = notifier.route("east", "am; extra ;");
        let names: Vec<_> = routed.receivers.iter().map(|r| r.name()).collect();
        assert_eq!(names, ["east-wecom", "east-ding", "am"]);
        assert_eq!(routed.unknown, ["extra"]);
        let routed = notifier.route("south", "");
        assert_eq!(routed.receivers.len(), 1);
        let a = notifier.prepare(firing());
        assert_eq!(
            a.dashboard_url.as_deref(),
            Some("https://grafana.example.com/d/rep?var-rep=r1")
        );
    }

    #[test]
    fn unknown_keys_and_kinds_are_errors() {
        let e = toml::from_str::<NotifyConfig>(
            "[[receivers]]\nname='a'\nkind='wecom'\nwebhook_url='https://x/?key=1'\nsecret='s'\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("secret"), "{e}");
        let e = toml::from_str::<NotifyConfig>("[[receivers]]\nname='a'\nkind='slack'\nurl='x'\n")
            .unwrap_err();
        assert!(e.to_string().contains("slack"), "{e}");
    }

    #[test]
    fn check_reports_every_problem_with_its_path() {
        let config = NotifyConfig {
            receivers: vec![
                Receiver::Wecom {
                    name: "w".into(),
                    webhook_url: "https://qyapi.weixin.qq.com/cgi-bin/webhook/send".into(),
                    mentioned_mobile_list: vec![],
                },
                Receiver::Webhook {
                    name: "w".into(),
                    url: "ftp://example.com".into(),
                    hmac_secret: None,
                },
            ],
            routes: vec![Route {
                region: "east".into(),
                receivers: vec!["nobody".into()],
            }],
            delivery: DeliverySettings {
                max_attempts: 0,
                ..DeliverySettings::default()
            },
            ..NotifyConfig::default()
        };
        let problems: Vec<String> = config.check().iter().map(|p| p.to_string()).collect();
        let expected = [
            "notify.receivers[0].webhook_url: a WeCom robot URL carries `?key=...`",
            "notify.receivers[1].name: receiver `w` is declared twice",
            "notify.receivers[1].url: scheme `ftp` is not http or https",
            "notify.routes[0].receivers: unknown receiver `nobody`",
            "notify.delivery.max_attempts: must be at least 1",
        ];
        assert_eq!(problems, expected);
    }
}
