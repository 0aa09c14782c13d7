//! Lint of what directors and operators look at (issue 4): the Grafana boards of
//! `grafana/dashboards/` (valid JSON, unique uids, data sources that resolve to the provisioned
//! one, only metrics the pipeline exports, the bars coloured by the pipeline file's own
//! thresholds), and the Prometheus config and rules of `prometheus/`, checked and unit-tested
//! by Debian's `promtool`. `tests/dashboards_live.rs` runs the same queries for real.

// This binary starts nothing: the NATS helpers that support re-exports are unused here.
#[allow(unused_imports)]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use clap::Parser as _;
use serde_json::Value;

use support::prometheus::{dashboards, panel_queries, panels, variables};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

fn boards() -> Vec<(String, Value)> {
    dashboards().unwrap_or_else(|e| panic!("{e:#}"))
}

/// The metric names the pipeline exports: the `"touchstream_..."` string literals of
/// `src/telemetry/mod.rs`, the one place they are named.
fn exported_metrics() -> BTreeSet<String> {
    let text = read("src/telemetry/mod.rs");
    let names: BTreeSet<String> = text
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            s.starts_with("touchstream_")
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
        .map(str::to_owned)
        .collect();
    assert!(
        names.len() > 10,
        "found only {names:?} in src/telemetry/mod.rs: has the way names are written changed?"
    );
    names
}

/// The metric names an expression (PromQL) uses: identifiers `touchstream_...` outside string
/// literals, not the names of recorded series (`level:metric:operations`, which hold colons).
fn metric_names(expr: &str) -> BTreeSet<String> {
    identifiers(expr, true)
}

/// Identifiers `touchstream_...` without colons in `text`; inside quotes too unless
/// `skip_strings` (YAML quotes whole series selectors, PromQL quotes label values).
fn identifiers(text: &str, skip_strings: bool) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut ident = String::new();
    let mut quote: Option<char> = None;
    for c in text.chars().chain(std::iter::once(' ')) {
        if let Some(q) = quote {
            if c == q {
                quote = None;
            }
            continue;
        }
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            ident.push(c);
            continue;
        }
        if ident.starts_with("touchstream_") && !ident.contains(':') {
            names.insert(ident.clone());
        }
        ident.clear();
        if skip_strings && matches!(c, '"' | '\'' | '`') {
            quote = Some(c);
        }
    }
    names
}

/// Whether `name` is exported, directly or as a histogram's `_bucket`, `_sum` or `_count`.
fn is_exported(name: &str, exported: &BTreeSet<String>) -> bool {
    exported.contains(name)
        || ["_bucket", "_sum", "_count"]
            .iter()
            .any(|s| name.strip_suffix(s).is_some_and(|b| exported.contains(b)))
}

#[test]
fn boards_are_valid_with_unique_uids_and_ids() {
    let boards = boards();
    let files: Vec<&str> = boards.iter().map(|(f, _)| f.as_str()).collect();
    for want in [
        "director-overview.json",
        "rep-process-health.json",
        "pipeline-health.json",
    ] {
        assert!(
            files.contains(&want),
            "grafana/dashboards/{want} is missing"
        );
    }
    let mut problems = Vec::new();
    let mut uids: BTreeMap<String, &str> = BTreeMap::new();
    for (file, b) in &boards {
        match b["uid"].as_str() {
            // Grafana's limit on uids.
            Some(uid) if !uid.is_empty() && uid.len() <= 40 => {
                if let Some(other) = uids.insert(uid.to_owned(), file) {
                    problems.push(format!("{file}: uid {uid:?} is also the uid of {other}"));
                }
            }
            other => problems.push(format!("{file}: uid {other:?}")),
        }
        if b["title"].as_str().is_none_or(str::is_empty) {
            problems.push(format!("{file}: no title"));
        }
        if b["schemaVersion"].as_u64().is_none_or(|v| v < 36) {
            problems.push(format!("{file}: schemaVersion {}", b["schemaVersion"]));
        }
        let mut ids = BTreeSet::new();
        for p in panels(b) {
            let title = p["title"].as_str().unwrap_or_default();
            match p["id"].as_u64() {
                Some(id) if ids.insert(id) => {}
                other => problems.push(format!("{file}: panel {title:?}: id {other:?} repeats")),
            }
            if !p["gridPos"].is_object() {
                problems.push(format!("{file}: panel {title:?} has no gridPos"));
            }
            if p["type"] == "row" {
                continue;
            }
            if title.is_empty() {
                problems.push(format!("{file}: a {} panel without a title", p["type"]));
            }
            let targets = p["targets"].as_array().cloned().unwrap_or_default();
            if targets.is_empty() {
                problems.push(format!("{file}: panel {title:?} has no query"));
            }
            let mut refs = BTreeSet::new();
            for t in &targets {
                let r = t["refId"].as_str().unwrap_or_default();
                if r.is_empty() || !refs.insert(r.to_owned()) {
                    problems.push(format!(
                        "{file}: panel {title:?}: refId {r:?} missing or repeated"
                    ));
                }
                if t["expr"].as_str().is_none_or(|e| e.trim().is_empty()) {
                    problems.push(format!("{file}: panel {title:?} {r}: no expr"));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// (uid, type) of every data source in the provisioning file (a line-based read of its YAML:
/// one `uid:` and one `type:` per list item).
fn provisioned_datasources() -> Vec<(String, String)> {
    let text = read("grafana/provisioning/datasources/touchstream.yml");
    let mut out: Vec<(String, String)> = Vec::new();
    let value = |line: &str, key: &str| {
        line.trim()
            .trim_start_matches("- ")
            .strip_prefix(key)
            .map(|v| v.trim().trim_matches(['"', '\'']).to_owned())
    };
    for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
        if line.trim_start().starts_with("- ") {
            out.push((String::new(), String::new()));
        }
        if let Some(last) = out.last_mut() {
            if let Some(v) = value(line, "uid:") {
                last.0 = v;
            } else if let Some(v) = value(line, "type:") {
                last.1 = v;
            }
        }
    }
    out
}

#[test]
fn datasource_references_resolve_to_the_provisioned_one() {
    let provisioned = provisioned_datasources();
    assert_eq!(
        provisioned,
        vec![("touchstream-prometheus".to_owned(), "prometheus".to_owned())],
        "grafana/provisioning/datasources/touchstream.yml"
    );
    let resolves = |ds: &Value| {
        provisioned
            .iter()
            .any(|(uid, kind)| ds["uid"] == uid.as_str() && ds["type"] == kind.as_str())
    };
    let mut problems = Vec::new();
    for (file, b) in boards() {
        for p in panels(&b) {
            if p["type"] == "row" {
                continue;
            }
            let title = p["title"].as_str().unwrap_or_default();
            if !resolves(&p["datasource"]) {
                problems.push(format!(
                    "{file}: panel {title:?}: datasource {}",
                    p["datasource"]
                ));
            }
            for t in p["targets"].as_array().into_iter().flatten() {
                // A target without one uses the panel's.
                if !t["datasource"].is_null() && !resolves(&t["datasource"]) {
                    problems.push(format!(
                        "{file}: panel {title:?} {}: datasource {}",
                        t["refId"], t["datasource"]
                    ));
                }
            }
        }
        for v in b["templating"]["list"].as_array().into_iter().flatten() {
            if v["type"] == "query" && !resolves(&v["datasource"]) {
                problems.push(format!(
                    "{file}: variable {}: datasource {}",
                    v["name"], v["datasource"]
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // The provider loads the boards' folder through the variable grafana/README.md documents.
    let provider = read("grafana/provisioning/dashboards/touchstream.yml");
    assert!(provider.contains("type: file"), "{provider}");
    assert!(
        provider.contains("path: ${TOUCHSTREAM_DASHBOARDS}"),
        "the dashboard provider's path is not ${{TOUCHSTREAM_DASHBOARDS}}:\n{provider}"
    );
    assert!(read("grafana/README.md").contains("TOUCHSTREAM_DASHBOARDS"));
}

#[test]
fn every_metric_a_board_names_is_exported() {
    let exported = exported_metrics();
    let mut problems = Vec::new();
    let mut used = BTreeSet::new();
    for (file, b) in boards() {
        let mut exprs: Vec<(String, String)> = panel_queries(&file, &b)
            .into_iter()
            .map(|q| (format!("panel {:?} {}", q.panel, q.ref_id), q.expr))
            .collect();
        for v in variables(&b) {
            exprs.push((format!("variable {}", v.name), v.query));
        }
        for (what, expr) in exprs {
            let names = metric_names(&expr);
            if names.is_empty() {
                problems.push(format!(
                    "{file}: {what} names no touchstream metric: {expr}"
                ));
            }
            for n in names {
                if !is_exported(&n, &exported) {
                    problems.push(format!(
                        "{file}: {what}: {n} is not in src/telemetry/mod.rs"
                    ));
                }
                used.insert(n);
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{}\n(exported: {exported:?})",
        problems.join("\n")
    );
    // The lint sees what it should: the boards do use the per-rep figures and histograms.
    for n in [
        "touchstream_rep_cdi_mean",
        "touchstream_rep_alerts_total",
        "touchstream_first_response_seconds_bucket",
        "touchstream_dead_letters_total",
    ] {
        assert!(used.contains(n), "no board uses {n}: {used:?}");
    }
}

#[test]
fn every_metric_a_rule_names_is_exported() {
    let exported = exported_metrics();
    let mut problems = Vec::new();
    for rel in [
        "prometheus/rules/touchstream.rules.yml",
        "prometheus/rules/touchstream.test.yml",
    ] {
        for (n, line) in read(rel).lines().enumerate() {
            if line.trim_start().starts_with('#') {
                continue;
            }
            for name in identifiers(line, false) {
                if !is_exported(&name, &exported) {
                    problems.push(format!(
                        "{rel}:{}: {name} is not in src/telemetry/mod.rs",
                        n + 1
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn metric_names_are_read_from_expressions() {
    let names = metric_names(
        r#"histogram_quantile(0.5, sum by (le) (rate(touchstream_batch_duration_seconds_bucket{state="touchstream_x"}[1m])))
           / region:touchstream_open_rate:ratio + touchstream_rep_leads_due"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        [
            "touchstream_batch_duration_seconds_bucket",
            "touchstream_rep_leads_due"
        ]
    );
    let exported = exported_metrics();
    assert!(is_exported(
        "touchstream_batch_duration_seconds_bucket",
        &exported
    ));
    assert!(!is_exported("touchstream_no_such_metric", &exported));
    assert!(!is_exported(
        "touchstream_rep_leads_due_bucket",
        &BTreeSet::new()
    ));
    // In YAML a whole series selector is quoted.
    assert_eq!(
        identifiers("- series: 'touchstream_rep_leads_due{rep=\"r1\"}'", false)
            .into_iter()
            .collect::<Vec<_>>(),
        ["touchstream_rep_leads_due"]
    );
}

// ------------------------------------------------------------------ thresholds

/// The figures whose colours come from the pipeline file, by the metrics that carry them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Figure {
    OpenRate,
    ReplyRate,
    SecondTouchRate,
    Cdi,
}

impl Figure {
    /// The one figure an expression shows, if exactly one.
    fn of(expr: &str) -> Option<Figure> {
        let names = metric_names(expr);
        let shows = |ms: &[&str]| ms.iter().any(|m| names.contains(*m));
        let found: Vec<Figure> = [
            (
                Figure::OpenRate,
                &["touchstream_rep_open_rate", "touchstream_rep_assets_opened"][..],
            ),
            (
                Figure::ReplyRate,
                &[
                    "touchstream_rep_reply_rate",
                    "touchstream_rep_customers_replied",
                ][..],
            ),
            (
                Figure::SecondTouchRate,
                &[
                    "touchstream_rep_second_touch_rate",
                    "touchstream_rep_customers_retouched",
                ][..],
            ),
            (Figure::Cdi, &["touchstream_rep_cdi_mean"][..]),
        ]
        .into_iter()
        .filter(|(_, ms)| shows(ms))
        .map(|(f, _)| f)
        .collect();
        match found[..] {
            [f] => Some(f),
            _ => None,
        }
    }
}

/// (yellow from, green from) of each figure, from `pipelines/default.toml`: `[health.<rate>]`
/// `yellow_min`/`green_min`, and the CDI bands of `[cdi]` (low below `band_low_below`, high
/// from `band_high_min`).
fn pipeline_thresholds() -> BTreeMap<Figure, (f64, f64)> {
    let text = read("pipelines/default.toml");
    let doc: toml::Table = toml::from_str(&text).expect("pipelines/default.toml is TOML");
    let number = |section: &[&str], key: &str| -> f64 {
        let mut v: Option<&toml::Value> = None;
        for (i, s) in section.iter().enumerate() {
            v = if i == 0 {
                doc.get(*s)
            } else {
                v.and_then(|t| t.get(*s))
            };
        }
        let path = format!("[{}] {key}", section.join("."));
        match v.and_then(|t| t.get(key)) {
            Some(toml::Value::Float(f)) => *f,
            Some(toml::Value::Integer(i)) => *i as f64,
            Some(other) => panic!("pipelines/default.toml {path} is not a number: {other}"),
            None => panic!(
                "pipelines/default.toml has no {path}: the per-rep health thresholds (issue 4) \
                 must be in the pipeline file, and the Rep process health bars are checked \
                 against them"
            ),
        }
    };
    let rate = |name: &str| {
        (
            number(&["health", name], "yellow_min"),
            number(&["health", name], "green_min"),
        )
    };
    BTreeMap::from([
        (Figure::OpenRate, rate("open_rate")),
        (Figure::ReplyRate, rate("reply_rate")),
        (Figure::SecondTouchRate, rate("second_touch_rate")),
        (
            Figure::Cdi,
            (
                number(&["cdi"], "band_low_below"),
                number(&["cdi"], "band_high_min"),
            ),
        ),
    ])
}

/// Whether Grafana thresholds are red below `yellow`, yellow from it, green from `green`.
fn thresholds_match(t: &Value, (yellow, green): (f64, f64)) -> bool {
    let steps: Vec<(&str, Option<f64>)> = t["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| (s["color"].as_str().unwrap_or_default(), s["value"].as_f64()))
        .collect();
    t["mode"] == "absolute"
        && steps
            == [
                ("red", None),
                ("yellow", Some(yellow)),
                ("green", Some(green)),
            ]
}

#[test]
fn colours_follow_the_pipeline_file_thresholds() {
    let expected = pipeline_thresholds();
    let mut problems = Vec::new();
    // Bar panels of the rep board, per figure.
    let mut rep_bars: BTreeSet<Figure> = BTreeSet::new();
    let mut checked = 0;
    for (file, b) in boards() {
        for p in panels(&b) {
            let title = p["title"].as_str().unwrap_or_default();
            let targets = p["targets"].as_array().cloned().unwrap_or_default();
            if p["type"] == "table" {
                // Each column of a figure is coloured by an override with its thresholds; the
                // column is the target's value renamed by the `organize` transformation.
                let renames = p["transformations"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|t| t["id"] == "organize")
                    .map(|t| t["options"]["renameByName"].clone())
                    .unwrap_or(Value::Null);
                for t in &targets {
                    let Some(figure) = Figure::of(t["expr"].as_str().unwrap_or_default()) else {
                        continue;
                    };
                    let field = format!("Value #{}", t["refId"].as_str().unwrap_or_default());
                    let column = renames[&field].as_str().unwrap_or(&field);
                    let thresholds = p["fieldConfig"]["overrides"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|o| {
                            o["matcher"]["id"] == "byName" && o["matcher"]["options"] == column
                        })
                        .flat_map(|o| o["properties"].as_array().cloned().unwrap_or_default())
                        .find(|prop| prop["id"] == "thresholds")
                        .map(|prop| prop["value"].clone());
                    match thresholds {
                        Some(th) if thresholds_match(&th, expected[&figure]) => checked += 1,
                        Some(th) => problems.push(format!(
                            "{file}: table {title:?} column {column:?} ({figure:?}): thresholds {th} \
                             are not red / yellow from {} / green from {}",
                            expected[&figure].0, expected[&figure].1
                        )),
                        None => problems.push(format!(
                            "{file}: table {title:?} column {column:?} ({figure:?}) is not coloured \
                             by thresholds"
                        )),
                    }
                }
                continue;
            }
            let figures: BTreeSet<Figure> = targets
                .iter()
                .filter_map(|t| Figure::of(t["expr"].as_str().unwrap_or_default()))
                .collect();
            let [figure] = figures.iter().copied().collect::<Vec<_>>()[..] else {
                continue;
            };
            let defaults = &p["fieldConfig"]["defaults"];
            let is_bar = p["type"] == "bargauge" || p["type"] == "barchart";
            if is_bar && file == "rep-process-health.json" {
                if defaults["color"]["mode"] != "thresholds" {
                    problems.push(format!(
                        "{file}: {title:?} is not coloured by thresholds: {}",
                        defaults["color"]
                    ));
                }
                rep_bars.insert(figure);
            }
            match &defaults["thresholds"] {
                Value::Null if is_bar => problems.push(format!(
                    "{file}: bars {title:?} ({figure:?}) have no thresholds"
                )),
                Value::Null => {}
                th if thresholds_match(th, expected[&figure]) => checked += 1,
                th => problems.push(format!(
                    "{file}: {title:?} ({figure:?}): thresholds {th} are not red / yellow from {} \
                     / green from {}",
                    expected[&figure].0, expected[&figure].1
                )),
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let want: BTreeSet<Figure> = [
        Figure::OpenRate,
        Figure::ReplyRate,
        Figure::SecondTouchRate,
        Figure::Cdi,
    ]
    .into();
    assert_eq!(
        rep_bars, want,
        "rep-process-health.json: bar panels per figure"
    );
    assert!(checked >= 10, "only {checked} thresholds checked");
}

// ------------------------------------------------------------------ Prometheus

#[derive(clap::Parser)]
struct RunCli {
    #[command(flatten)]
    run: touchstream::live::run::RunArgs,
}

#[derive(clap::Parser)]
struct DemoCli {
    #[command(flatten)]
    demo: touchstream::live::demo::DemoArgs,
}

#[test]
fn prometheus_scrapes_where_run_and_demo_serve_metrics() {
    let run = RunCli::try_parse_from(["run", "--pipeline", "p.toml"])
        .expect("run arguments")
        .run
        .metrics_addr;
    let demo = DemoCli::try_parse_from(["demo"])
        .expect("demo arguments")
        .demo
        .metrics_addr;
    assert_eq!(
        run, demo,
        "run and demo serve /metrics on different defaults"
    );
    let config = read("prometheus/prometheus.yml");
    let targets: Vec<&str> = config
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- targets:"))
        .collect();
    assert!(
        targets.contains(&format!(" ['{run}']").as_str()),
        "prometheus/prometheus.yml scrapes {targets:?}, not `touchstream run`'s default {run}"
    );
    assert!(config.contains("job_name: touchstream"), "{config}");
    assert!(config.contains("- rules/touchstream.rules.yml"), "{config}");
}

fn promtool(args: &[&str]) {
    let dir = root().join("prometheus");
    let out = Command::new("promtool")
        .args(args)
        .current_dir(&dir)
        .output()
        .unwrap_or_else(|e| panic!("running promtool (Debian package prometheus): {e}"));
    assert!(
        out.status.success(),
        "promtool {} (in {}) failed: {}\n{}{}",
        args.join(" "),
        dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_checks_the_config() {
    promtool(&["check", "config", "prometheus.yml"]);
}

#[test]
fn promtool_checks_the_rules() {
    promtool(&["check", "rules", "rules/touchstream.rules.yml"]);
}

#[test]
fn promtool_unit_tests_the_rules() {
    promtool(&["test", "rules", "rules/touchstream.test.yml"]);
}

#[test]
fn every_alerting_rule_has_a_firing_and_a_quiet_case() {
    let rules = read("prometheus/rules/touchstream.rules.yml");
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(str::trim)
        .collect();
    assert!(alerts.len() >= 3, "{alerts:?}");
    let tests = read("prometheus/rules/touchstream.test.yml");
    let lines: Vec<&str> = tests.lines().map(str::trim).collect();
    let mut firing = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for (i, l) in lines.iter().enumerate() {
        if let Some(name) = l.strip_prefix("alertname:") {
            match lines.get(i + 1) {
                Some(&"exp_alerts: []") => quiet.insert(name.trim()),
                Some(&"exp_alerts:") => firing.insert(name.trim()),
                other => panic!("touchstream.test.yml: {name} followed by {other:?}"),
            };
        }
    }
    for a in &alerts {
        assert!(firing.contains(a), "no test case where {a} fires");
        assert!(quiet.contains(a), "no test case where {a} stays quiet");
    }
    for name in firing.iter().chain(&quiet) {
        assert!(
            alerts.contains(name),
            "the tests name {name}, which no rule defines"
        );
    }
}
