//! The pipeline file (`pipelines/*.toml`) as a typed, validated spec. Loading reports every problem
//! at once with where it is (`file:line: path: message`); SQL in rules is checked by planning it
//! (see `rules::compile`), so `touchstream validate` catches bad rules before a run does.

mod locate;

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::event::Millis;

/// One problem in a pipeline file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path of the offending setting, e.g. `rules[0].due_at`.
    pub path: String,
    /// 1-based line in the file, when it could be found.
    pub line: Option<usize>,
    pub message: String,
}

/// Every problem found in a pipeline file.
#[derive(Debug, thiserror::Error)]
#[error("{}", render(.file, .problems))]
pub struct ConfigErrors {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

fn render(file: &Path, problems: &[Problem]) -> String {
    let mut out = format!(
        "{} problem(s) in {}:",
        problems.len(),
        file.to_string_lossy()
    );
    for p in problems {
        match p.line {
            Some(l) => out.push_str(&format!(
                "\n  {}:{}: {}: {}",
                file.display(),
                l,
                p.path,
                p.message
            )),
            None => out.push_str(&format!(
                "\n  {}: {}: {}",
                file.display(),
                p.path,
                p.message
            )),
        }
    }
    out
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PipelineSection {
    /// Name shown in logs and metrics.
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectorySection {
    /// Folder with reps.csv, customers.csv, regions.csv; relative to the pipeline file.
    pub path: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSection {
    /// JetStream stream holding the input events.
    pub stream: String,
    /// Subjects of that stream (one filter: nats-server 2.9 ignores several).
    pub subjects: String,
    /// Durable pull consumer name.
    pub durable: String,
    /// Largest fetch, in events; one fetch is one micro-batch.
    pub batch_max_events: usize,
    /// How long a fetch waits to fill a batch, in milliseconds.
    pub batch_max_wait_ms: u64,
    /// How long the input stream keeps events, in days.
    pub retention_days: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeSection {
    /// Watermark = greatest effective time seen minus this.
    pub allowed_lateness_seconds: i64,
    /// Live runs: after this long without events the watermark follows the wall clock.
    pub idle_advance_after_seconds: u64,
    /// Events this far ahead of the pipeline clock are `future_timestamp`.
    pub future_tolerance_seconds: i64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedupSection {
    /// How long (event time) a seen `event_id` is remembered.
    pub retention_seconds: i64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssetJoinSection {
    /// How long a hit waits for its asset's send before it is `unknown_asset`.
    pub pending_retention_seconds: i64,
    /// How long a sent asset is kept after its send.
    pub asset_retention_seconds: i64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpensSection {
    /// Opens less than this long after the send are prefetches.
    pub prefetch_seconds: i64,
    /// User-agent substrings of proxy opens.
    pub proxy_user_agents: Vec<String>,
    /// Opens less than this long after the previous counted open are reloads.
    pub reload_seconds: i64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresenceSection {
    /// How long presence changes are kept for the as-of join.
    pub retention_seconds: i64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSection {
    /// URL path prefix of product pages.
    pub product_path_prefix: String,
    /// Product-page visits count within this long after the send.
    pub product_visit_window_seconds: i64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsSection {
    /// Events of a pair further apart than this start a new session.
    pub gap_seconds: i64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CdiSection {
    /// Trailing window of the CDI, in days.
    pub window_days: i64,
    /// Depth is 1 when the mean close dwell exceeds this, in milliseconds.
    pub dwell_benchmark_ms: u64,
    /// Density is 1 when customer messages exceed this many times the rep's.
    pub density_ratio: f64,
    /// Band `high` from this CDI up.
    pub band_high_min: f64,
    /// Band `low` below this CDI.
    pub band_low_below: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionsSection {
    /// How long (event time) each `crm.action` is kept as a row of the `actions` table, when a
    /// rule reads it.
    pub retention_seconds: i64,
}

/// Thresholds of one process-health rate: green from `green_min`, yellow from `yellow_min`,
/// red below.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    pub green_min: f64,
    pub yellow_min: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSection {
    /// Trailing window of the per-rep rates, in days (at most the CDI window).
    pub window_days: i64,
    /// A customer replied when a WeCom message `in` follows a rep message within this long.
    pub reply_within_hours: i64,
    /// A lead is followed up when the rep touches the customer within this long.
    pub followup_within_hours: i64,
    /// How often a live run exports the per-rep figures.
    pub publish_interval_seconds: u64,
    pub open_rate: Thresholds,
    pub reply_rate: Thresholds,
    pub second_touch_rate: Thresholds,
}

impl HealthSection {
    /// The rates with thresholds, by the name their metric label carries.
    pub fn thresholds(&self) -> [(&'static str, Thresholds); 3] {
        [
            ("open_rate", self.open_rate),
            ("reply_rate", self.reply_rate),
            ("second_touch_rate", self.second_touch_rate),
        ]
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContractsSection {
    /// DingTalk process codes whose `start` is a contract event.
    pub process_codes: Vec<String>,
}

/// A rule: SQL over an operator table (README "Rules").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Rule name: `[a-z0-9_]+`, the alert's `rule` and the prefix of its `alert_id`.
    pub name: String,
    /// Operator table the rule reads (`assets` or `actions`).
    pub table: String,
    /// SQL predicate selecting the rows the rule applies to.
    #[serde(default)]
    pub filter: Option<String>,
    /// SQL expression (a timestamp) from which the rule may decide.
    #[serde(default)]
    pub due_at: String,
    /// SQL predicate; may use `due_at`. True at due: the alert fires; later false: resolved.
    #[serde(default)]
    pub fire_when: String,
    /// Instead of `filter`, `due_at` and `fire_when`: a whole query over the rule's table and
    /// the context tables, selecting `__row`, `due_at` and `fire` (README "Rules").
    #[serde(default)]
    pub query: Option<String>,
    /// Severity label for receivers.
    #[serde(default = "default_severity")]
    pub severity: String,
    /// One-line summary for receivers.
    #[serde(default)]
    pub summary: String,
}

fn default_severity() -> String {
    "warning".into()
}

/// A validated pipeline file.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// The file it came from (relative paths inside resolve against its folder).
    pub file: PathBuf,
    pub pipeline: PipelineSection,
    pub directory: DirectorySection,
    pub source: SourceSection,
    pub time: TimeSection,
    pub dedup: DedupSection,
    pub asset_join: AssetJoinSection,
    pub opens: OpensSection,
    pub presence: PresenceSection,
    pub web: WebSection,
    pub sessions: SessionsSection,
    pub cdi: CdiSection,
    pub contracts: ContractsSection,
    pub actions: ActionsSection,
    pub health: HealthSection,
    pub rules: Vec<RuleSpec>,
    /// `[notify]`: alert delivery (receivers, routes, templates); empty when absent.
    pub notify: crate::notify::NotifyConfig,
    /// `[collect]`: the HTTP collector; None when absent (no collector).
    pub collect: Option<crate::collect::CollectConfig>,
    /// `[consent]`: the reps' consent switches; everything on when absent.
    pub consent: crate::consent::ConsentConfig,
}

const SECONDS: Millis = 1000;

impl Pipeline {
    /// Reads and validates a pipeline file (static checks; rule SQL is checked by `rules::compile`).
    pub fn load(path: &Path) -> Result<Pipeline, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            file: path.to_path_buf(),
            problems: vec![Problem {
                path: "<file>".into(),
                line: None,
                message: format!("cannot read: {e}"),
            }],
        })?;
        Self::parse(&text, path)
    }

    /// Parses pipeline text; `file` is used for locations and relative paths.
    pub fn parse(text: &str, file: &Path) -> Result<Pipeline, ConfigErrors> {
        let errors = |problems| ConfigErrors {
            file: file.to_path_buf(),
            problems,
        };
        let table: toml::Table = match text.parse() {
            Ok(t) => t,
            Err(e) => {
                let e: toml::de::Error = e;
                let line = e
                    .span()
                    .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
                return Err(errors(vec![Problem {
                    path: "<syntax>".into(),
                    line,
                    message: e.message().to_string(),
                }]));
            }
        };
        let mut problems = Vec::new();
        let loc = locate::Locator::new(text);
        for key in table.keys() {
            if !SECTIONS.contains(&key.as_str()) {
                problems.push(Problem {
                    path: key.clone(),
                    line: loc.section(key, 0),
                    message: format!("unknown section; expected one of {}", SECTIONS.join(", ")),
                });
            }
        }
        let mut ctx = Ctx {
            table: &table,
            loc: &loc,
            problems: &mut problems,
        };
        let pipeline = ctx.section::<PipelineSection>("pipeline");
        let directory = ctx.section::<DirectorySection>("directory");
        let source = ctx.section::<SourceSection>("source");
        let time = ctx.section::<TimeSection>("time");
        let dedup = ctx.section::<DedupSection>("dedup");
        let asset_join = ctx.section::<AssetJoinSection>("asset_join");
        let opens = ctx.section::<OpensSection>("opens");
        let presence = ctx.section::<PresenceSection>("presence");
        let web = ctx.section::<WebSection>("web");
        let sessions = ctx.section::<SessionsSection>("sessions");
        let cdi = ctx.section::<CdiSection>("cdi");
        let contracts = ctx.section::<ContractsSection>("contracts");
        let actions = ctx.section::<ActionsSection>("actions");
        let health = ctx.section::<HealthSection>("health");
        let rules = ctx.rules();
        let notify = ctx.notify();
        let collect = match table.get("collect") {
            None => Some(None),
            Some(v) => ctx
                .deserialize::<crate::collect::CollectConfig>(v.clone(), "collect", 0, "collect")
                .map(Some),
        };
        let consent = match table.get("consent") {
            None => Some(crate::consent::ConsentConfig::default()),
            Some(v) => ctx.deserialize(v.clone(), "consent", 0, "consent"),
        };
        let (
            Some(pipeline),
            Some(directory),
            Some(source),
            Some(time),
            Some(dedup),
            Some(asset_join),
            Some(opens),
            Some(presence),
            Some(web),
            Some(sessions),
            Some(cdi),
            Some(contracts),
            Some(actions),
            Some(health),
            Some(rules),
            Some(notify),
            Some(collect),
            Some(consent),
        ) = (
            pipeline, directory, source, time, dedup, asset_join, opens, presence, web, sessions,
            cdi, contracts, actions, health, rules, notify, collect, consent,
        )
        else {
            return Err(errors(problems));
        };
        let p = Pipeline {
            file: file.to_path_buf(),
            pipeline,
            directory,
            source,
            time,
            dedup,
            asset_join,
            opens,
            presence,
            web,
            sessions,
            cdi,
            contracts,
            actions,
            health,
            rules,
            notify,
            collect,
            consent,
        };
        p.check(&loc, &mut problems);
        p.check_notify(&loc, &mut problems);
        p.check_collect(&loc, &mut problems);
        if problems.is_empty() {
            Ok(p)
        } else {
            Err(errors(problems))
        }
    }

    /// The `[notify]` section's own checks (names, URLs, routes, templates), located.
    fn check_notify(&self, loc: &locate::Locator, problems: &mut Vec<Problem>) {
        let Err(errors) = crate::notify::Notifier::new(self.notify.clone()) else {
            return;
        };
        for p in errors.0 {
            problems.push(Problem {
                line: locate_dotted(loc, &p.path),
                path: p.path,
                message: p.message,
            });
        }
    }

    /// `[collect]` and `[consent]` checks, located.
    fn check_collect(&self, loc: &locate::Locator, problems: &mut Vec<Problem>) {
        if let Some(c) = &self.collect {
            for (path, message) in c.check() {
                problems.push(Problem {
                    line: locate_dotted(loc, &path),
                    path,
                    message,
                });
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, r) in self.consent.reps.iter().enumerate() {
            if !seen.insert(&r.rep_id) {
                problems.push(Problem {
                    path: format!("consent.reps[{i}].rep_id"),
                    line: loc.key("consent.reps", i, "rep_id"),
                    message: format!("rep `{}` has two consent entries", r.rep_id),
                });
            }
        }
    }

    /// Semantic checks across settings.
    fn check(&self, loc: &locate::Locator, problems: &mut Vec<Problem>) {
        let mut bad = |section: &str, key: &str, message: String| {
            problems.push(Problem {
                path: format!("{section}.{key}"),
                line: loc.key(section, 0, key),
                message,
            });
        };
        let positive: [(&str, &str, i64); 16] = [
            (
                "actions",
                "retention_seconds",
                self.actions.retention_seconds,
            ),
            ("health", "window_days", self.health.window_days),
            (
                "health",
                "reply_within_hours",
                self.health.reply_within_hours,
            ),
            (
                "health",
                "followup_within_hours",
                self.health.followup_within_hours,
            ),
            (
                "health",
                "publish_interval_seconds",
                self.health.publish_interval_seconds as i64,
            ),
            ("dedup", "retention_seconds", self.dedup.retention_seconds),
            (
                "asset_join",
                "pending_retention_seconds",
                self.asset_join.pending_retention_seconds,
            ),
            (
                "asset_join",
                "asset_retention_seconds",
                self.asset_join.asset_retention_seconds,
            ),
            (
                "presence",
                "retention_seconds",
                self.presence.retention_seconds,
            ),
            (
                "web",
                "product_visit_window_seconds",
                self.web.product_visit_window_seconds,
            ),
            ("sessions", "gap_seconds", self.sessions.gap_seconds),
            ("cdi", "window_days", self.cdi.window_days),
            (
                "time",
                "future_tolerance_seconds",
                self.time.future_tolerance_seconds,
            ),
            (
                "source",
                "retention_days",
                self.source.retention_days as i64,
            ),
            (
                "source",
                "batch_max_events",
                self.source.batch_max_events as i64,
            ),
            (
                "source",
                "batch_max_wait_ms",
                self.source.batch_max_wait_ms as i64,
            ),
        ];
        for (section, key, v) in positive {
            if v <= 0 {
                bad(section, key, format!("must be greater than 0, got {v}"));
            }
        }
        let non_negative: [(&str, &str, i64); 3] = [
            (
                "time",
                "allowed_lateness_seconds",
                self.time.allowed_lateness_seconds,
            ),
            ("opens", "prefetch_seconds", self.opens.prefetch_seconds),
            ("opens", "reload_seconds", self.opens.reload_seconds),
        ];
        for (section, key, v) in non_negative {
            if v < 0 {
                bad(section, key, format!("must not be negative, got {v}"));
            }
        }
        if self.cdi.band_low_below > self.cdi.band_high_min {
            bad(
                "cdi",
                "band_low_below",
                format!(
                    "must not exceed band_high_min ({} > {})",
                    self.cdi.band_low_below, self.cdi.band_high_min
                ),
            );
        }
        if self.health.window_days > self.cdi.window_days {
            bad(
                "health",
                "window_days",
                format!(
                    "must not exceed the CDI window ({} days): the rates read the CDI state",
                    self.cdi.window_days
                ),
            );
        }
        for (name, t) in self.health.thresholds() {
            let ok = |v: f64| (0.0..=1.0).contains(&v);
            if !ok(t.green_min) || !ok(t.yellow_min) || t.yellow_min > t.green_min {
                bad(
                    "health",
                    name,
                    format!(
                        "need 0 <= yellow_min <= green_min <= 1, got yellow_min {} and green_min {}",
                        t.yellow_min, t.green_min
                    ),
                );
            }
        }
        if self.cdi.density_ratio < 0.0 {
            bad("cdi", "density_ratio", "must not be negative".into());
        }
        if self.asset_join.asset_retention_seconds < self.cdi.window_days * 86_400 {
            bad(
                "asset_join",
                "asset_retention_seconds",
                format!(
                    "must cover the CDI window ({} days = {} s)",
                    self.cdi.window_days,
                    self.cdi.window_days * 86_400
                ),
            );
        }
        if self.source.retention_days * 86_400 < self.asset_join.asset_retention_seconds as u64 {
            bad(
                "source",
                "retention_days",
                "the input stream must keep events at least as long as asset_join.asset_retention_seconds, or a restart cannot rebuild state".into(),
            );
        }
        if self.source.subjects.contains(',') || self.source.subjects.contains(' ') {
            bad(
                "source",
                "subjects",
                "give one subject filter (nats-server 2.9 ignores several)".into(),
            );
        }
        let mut seen = std::collections::HashSet::new();
        for (i, r) in self.rules.iter().enumerate() {
            let mut rule_bad = |key: &str, message: String| {
                problems.push(Problem {
                    path: format!("rules[{i}].{key}"),
                    line: loc.key("rules", i, key),
                    message,
                });
            };
            if r.name.is_empty()
                || !r
                    .name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                rule_bad("name", format!("`{}` must match [a-z0-9_]+", r.name));
            }
            if !seen.insert(r.name.clone()) {
                rule_bad("name", format!("rule `{}` is declared twice", r.name));
            }
            match &r.query {
                Some(_) => {
                    if !r.fire_when.is_empty() {
                        rule_bad("fire_when", "`query` replaces `fire_when`: give one form (a query rule may keep `due_at` and `filter`)".into());
                    }
                    if r.filter.is_some() && r.due_at.trim().is_empty() {
                        rule_bad("filter", "a query rule's `filter` needs its `due_at` (both apply to the row before the query); or filter inside the query".into());
                    }
                }
                None => {
                    for (key, value) in [("due_at", &r.due_at), ("fire_when", &r.fire_when)] {
                        if value.trim().is_empty() {
                            problems.push(Problem {
                                path: format!("rules[{i}].{key}"),
                                line: loc.section("rules", i),
                                message: format!("missing `{key}` (or give a `query`)"),
                            });
                        }
                    }
                }
            }
            let mut rule_bad = |key: &str, message: String| {
                problems.push(Problem {
                    path: format!("rules[{i}].{key}"),
                    line: loc.key("rules", i, key),
                    message,
                });
            };
            if !crate::rules::TABLES.contains(&r.table.as_str()) {
                rule_bad(
                    "table",
                    format!(
                        "unknown table `{}`; expected one of {}",
                        r.table,
                        crate::rules::TABLES.join(", ")
                    ),
                );
            }
        }
        if self.rules.is_empty() {
            problems.push(Problem {
                path: "rules".into(),
                line: None,
                message: "no [[rules]] declared".into(),
            });
        }
    }

    /// The directory folder, resolved against the pipeline file's folder.
    pub fn directory_path(&self) -> PathBuf {
        self.resolve(&self.directory.path)
    }

    fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.file.parent().unwrap_or_else(|| Path::new(".")).join(p)
        }
    }

    pub fn lateness_ms(&self) -> Millis {
        self.time.allowed_lateness_seconds * SECONDS
    }
    pub fn gap_ms(&self) -> Millis {
        self.sessions.gap_seconds * SECONDS
    }
    pub fn cdi_window_ms(&self) -> Millis {
        self.cdi.window_days * 86_400 * SECONDS
    }

    /// Locates a rule's SQL setting for problems found while planning it.
    pub fn rule_problem(&self, index: usize, key: &str, message: String) -> Problem {
        let text = std::fs::read_to_string(&self.file).unwrap_or_default();
        Problem {
            path: format!("rules[{index}].{key}"),
            line: locate::Locator::new(&text).key("rules", index, key),
            message,
        }
    }
}

const SECTIONS: &[&str] = &[
    "pipeline",
    "directory",
    "source",
    "time",
    "dedup",
    "asset_join",
    "opens",
    "presence",
    "web",
    "sessions",
    "cdi",
    "contracts",
    "actions",
    "health",
    "rules",
    "notify",
    "collect",
    "consent",
];

/// Line of a dotted setting path such as `notify.receivers[1].webhook_url` or
/// `notify.delivery.max_attempts`: the key inside the innermost table that has a header.
fn locate_dotted(loc: &locate::Locator, path: &str) -> Option<usize> {
    let (table, key) = match path.rsplit_once('.') {
        Some((t, k)) if !k.contains('[') => (t, Some(k)),
        _ => (path, None),
    };
    let (section, index) = match table.split_once('[') {
        Some((s, rest)) => (s, rest.trim_end_matches(']').parse().unwrap_or(0)),
        None => (table, 0),
    };
    key.and_then(|k| loc.key(section, index, k))
        .or_else(|| loc.section(section, index))
        .or_else(|| {
            // `notify.delivery.x` may be written inside [notify] as a dotted key: try parents.
            let parent = section.rsplit_once('.').map(|(p, _)| p)?;
            loc.section(parent, 0)
        })
}

struct Ctx<'a> {
    table: &'a toml::Table,
    loc: &'a locate::Locator,
    problems: &'a mut Vec<Problem>,
}

impl Ctx<'_> {
    fn section<T: serde::de::DeserializeOwned>(&mut self, name: &str) -> Option<T> {
        let Some(v) = self.table.get(name) else {
            self.problems.push(Problem {
                path: name.into(),
                line: None,
                message: format!("missing section [{name}]"),
            });
            return None;
        };
        self.deserialize(v.clone(), name, 0, name)
    }

    fn deserialize<T: serde::de::DeserializeOwned>(
        &mut self,
        v: toml::Value,
        section: &str,
        index: usize,
        path: &str,
    ) -> Option<T> {
        match T::deserialize(v) {
            Ok(t) => Some(t),
            Err(e) => {
                let message = e.message().to_string();
                // Point at the key the message names, else at the section header.
                let key = message
                    .split('`')
                    .nth(1)
                    .filter(|k| !k.is_empty())
                    .map(str::to_string);
                let line = key
                    .as_deref()
                    .and_then(|k| self.loc.key(section, index, k))
                    .or_else(|| self.loc.section(section, index));
                let path = match key {
                    Some(k) if message.contains("field") => format!("{path}.{k}"),
                    _ => path.to_string(),
                };
                self.problems.push(Problem {
                    path,
                    line,
                    message,
                });
                None
            }
        }
    }

    /// `[notify]` (optional), with its arrays read element by element so that a problem in
    /// `[[notify.receivers]]` number i points at that table.
    fn notify(&mut self) -> Option<crate::notify::NotifyConfig> {
        let Some(v) = self.table.get("notify") else {
            return Some(crate::notify::NotifyConfig::default());
        };
        let Some(t) = v.as_table() else {
            self.problems.push(Problem {
                path: "notify".into(),
                line: self.loc.section("notify", 0),
                message: "must be a table ([notify])".into(),
            });
            return None;
        };
        let mut top = t.clone();
        let receivers = self.array_of(top.remove("receivers").as_ref(), "notify.receivers");
        let routes = self.array_of(top.remove("routes").as_ref(), "notify.routes");
        let templates = self.array_of(top.remove("templates").as_ref(), "notify.templates");
        let cfg: Option<crate::notify::NotifyConfig> =
            self.deserialize(toml::Value::Table(top), "notify", 0, "notify");
        let (mut cfg, receivers, routes, templates) = (cfg?, receivers?, routes?, templates?);
        cfg.receivers = receivers;
        cfg.routes = routes;
        cfg.templates = templates;
        Some(cfg)
    }

    fn rules(&mut self) -> Option<Vec<RuleSpec>> {
        self.array_of(self.table.get("rules"), "rules")
    }

    /// An array of tables (`[[section]]`, absent = empty), each element read on its own so that
    /// every problem points at its own table.
    fn array_of<T: serde::de::DeserializeOwned>(
        &mut self,
        value: Option<&toml::Value>,
        section: &str,
    ) -> Option<Vec<T>> {
        let Some(v) = value else {
            return Some(Vec::new());
        };
        let Some(arr) = v.as_array() else {
            let line = self.loc.section(section, 0).or_else(|| {
                let (parent, key) = section.rsplit_once('.')?;
                self.loc.key(parent, 0, key)
            });
            self.problems.push(Problem {
                path: section.into(),
                line,
                message: format!("must be an array of tables ([[{section}]])"),
            });
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (i, item) in arr.iter().enumerate() {
            match self.deserialize::<T>(item.clone(), section, i, &format!("{section}[{i}]")) {
                Some(x) => out.push(x),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }
}

/// The shipped `pipelines/default.toml`, for tests across modules.
#[cfg(test)]
pub(crate) fn default_text() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/pipelines/default.toml"
    ))
    .expect("default pipeline")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_pipeline_loads() {
        let p = Pipeline::parse(&default_text(), Path::new("pipelines/default.toml"))
            .expect("default.toml is valid");
        assert_eq!(p.time.allowed_lateness_seconds, 300);
        assert_eq!(p.contracts.process_codes, vec!["PROC-CONTRACT".to_string()]);
        assert_eq!(p.rules.len(), 3);
        assert_eq!(
            p.directory_path(),
            Path::new("pipelines/../examples/directory")
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_line() {
        let text = default_text()
            .replace("gap_seconds = 1800", "gap_seconds = -5")
            .replace("reload_seconds = 60", "reload_seconds = \"sixty\"")
            .replace("[cdi]\n", "[cdi]\nmystery = 1\n")
            .replace("table = \"assets\"", "table = \"nope\"");
        let err = Pipeline::parse(&text, Path::new("p.toml")).unwrap_err();
        let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
        assert!(paths.contains(&"opens"), "{err}");
        assert!(paths.contains(&"cdi.mystery"), "{err}");
        // Sections that failed to parse stop semantic checks, so fix them and look again.
        let text = default_text()
            .replace("gap_seconds = 1800", "gap_seconds = -5")
            .replace("table = \"assets\"", "table = \"nope\"");
        let err = Pipeline::parse(&text, Path::new("p.toml")).unwrap_err();
        let gap = err
            .problems
            .iter()
            .find(|p| p.path == "sessions.gap_seconds")
            .expect("gap problem");
        let gap_line = text
            .lines()
            .position(|l| l.starts_with("gap_seconds"))
            .map(|i| i + 1);
        assert_eq!(gap.line, gap_line);
        assert!(err.problems.iter().any(|p| p.path == "rules[0].table"));
        assert!(err.to_string().contains("p.toml:"));
    }

    #[test]
    fn notify_problems_point_at_their_table() {
        let base = default_text();
        let lines_before = base.lines().count();
        let text = format!(
            "{base}\n[notify]\n\n[[notify.receivers]]\nname = \"am\"\nkind = \"alertmanager\"\nurl = \"http://127.0.0.1:9093\"\n\n\
             [[notify.receivers]]\nname = \"w\"\nkind = \"pager\"\nurl = \"x\"\n\n\
             [[notify.routes]]\nregion = \"east\"\nreceivers = [\"am\", \"nobody\"]\n"
        );
        let err = Pipeline::parse(&text, Path::new("p.toml")).unwrap_err();
        // The second receiver has an unknown kind: located at its own [[notify.receivers]].
        let kind = err
            .problems
            .iter()
            .find(|p| p.path == "notify.receivers[1]")
            .unwrap_or_else(|| panic!("{err}"));
        assert!(kind.message.contains("pager"), "{err}");
        assert_eq!(kind.line, Some(lines_before + 9), "{err}");
        // With the kind fixed, the route to an undeclared receiver is reported, located.
        let text = text.replace(
            "kind = \"pager\"\nurl = \"x\"",
            "kind = \"webhook\"\nurl = \"http://127.0.0.1:1/h\"",
        );
        let err = Pipeline::parse(&text, Path::new("p.toml")).unwrap_err();
        let route = err
            .problems
            .iter()
            .find(|p| p.path.starts_with("notify.routes[0]"))
            .unwrap_or_else(|| panic!("{err}"));
        assert!(route.message.contains("nobody"), "{err}");
        assert!(route.line.is_some_and(|l| l > lines_before + 12), "{err}");
    }

    #[test]
    fn syntax_error_has_a_line() {
        let err = Pipeline::parse(
            "[time]\nallowed_lateness_seconds = = 3\n",
            Path::new("x.toml"),
        )
        .unwrap_err();
        assert_eq!(err.problems[0].line, Some(2));
    }
}
