//! Rules are data (DESIGN.md decision 5): each `[[rules]]` of the pipeline file is SQL over an
//! operator table, planned once by DataFusion. Rows are evaluated when they change and when
//! their `due_at` timer comes due; an alert fires once the watermark reaches `due_at` with
//! `fire_when` true, and is published again as resolved if late data turns it false.

mod table;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, TimeUnit, UInt32Type};
use serde_json::{Map, Value, json};

use crate::config::{Pipeline, Problem, RuleSpec};
use crate::directory::Directory;
use crate::engine::kernel::Kernel;
use crate::engine::output::{Alert, AlertStatus};
use crate::event::{Millis, format_time};
use crate::operators::LazyTimers;
use crate::operators::assets::{Asset, AssetIx, AssetJoin};

pub use table::assets_schema;

/// Operator tables a rule may read.
pub const TABLES: &[&str] = &["assets"];

/// Where an alert of one rule stands for one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlertMark {
    pub status: AlertStatus,
    pub due_at: Millis,
    pub fired_at: Millis,
}

struct CompiledRule {
    spec: RuleSpec,
    kernel: Kernel,
}

/// The pipeline's rules, planned.
pub struct RuleSet {
    rules: Vec<CompiledRule>,
    timers: LazyTimers<AssetIx>,
}

impl std::fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleSet")
            .field(
                "rules",
                &self.rules.iter().map(|r| &r.spec.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Plans every rule; returns every problem, located in the pipeline file.
pub fn compile(p: &Pipeline) -> Result<RuleSet, Vec<Problem>> {
    let mut rules = Vec::new();
    let mut problems = Vec::new();
    for (i, spec) in p.rules.iter().enumerate() {
        match compile_rule(spec) {
            Ok(kernel) => rules.push(CompiledRule {
                spec: spec.clone(),
                kernel,
            }),
            Err((key, message)) => problems.push(p.rule_problem(i, key, message)),
        }
    }
    if problems.is_empty() {
        Ok(RuleSet {
            rules,
            timers: LazyTimers::default(),
        })
    } else {
        Err(problems)
    }
}

fn first_line(e: impl std::fmt::Display) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

/// Plans a rule piece by piece, so that an error names the setting it is in.
fn compile_rule(spec: &RuleSpec) -> Result<Kernel, (&'static str, String)> {
    let schema = assets_schema();
    let filter = spec.filter.as_deref().unwrap_or("TRUE");
    let probe = |key: &'static str, sql: String| {
        Kernel::compile(&spec.table, schema.clone(), &sql).map_err(|e| (key, first_line(e)))
    };
    probe(
        "filter",
        format!("SELECT __row FROM {} WHERE ({filter})", spec.table),
    )?;
    let due = probe(
        "due_at",
        format!("SELECT ({}) AS due_at FROM {}", spec.due_at, spec.table),
    )?;
    if !matches!(
        due.output_schema.field(0).data_type(),
        DataType::Timestamp(_, _)
    ) {
        return Err((
            "due_at",
            format!(
                "must be a timestamp expression, found {}",
                due.output_schema.field(0).data_type()
            ),
        ));
    }
    let sql = format!(
        "SELECT __row, due_at, ({fire}) AS __fire FROM \
         (SELECT *, ({due}) AS due_at FROM {table} WHERE ({filter})) AS rows",
        fire = spec.fire_when,
        due = spec.due_at,
        table = spec.table,
    );
    let kernel = probe("fire_when", sql)?;
    if kernel.output_schema.field(2).data_type() != &DataType::Boolean {
        return Err((
            "fire_when",
            format!(
                "must be a boolean expression, found {}",
                kernel.output_schema.field(2).data_type()
            ),
        ));
    }
    Ok(kernel)
}

/// How the engine stamps `fired_at` and `resolved_at`.
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    /// Live: the wall clock. Replay: None (event time, see `evaluate`).
    pub now: Option<Millis>,
    pub watermark: Millis,
    /// The input is complete up to and including the watermark (end of a replay): a row due
    /// exactly at the watermark may be decided. Otherwise an on-time event at exactly the
    /// watermark may still come, so decisions wait until the watermark is past `due_at`.
    pub complete: bool,
}

impl Stamp {
    fn decidable(&self, due_at: Millis) -> bool {
        due_at < self.watermark || (self.complete && due_at == self.watermark)
    }
}

impl RuleSet {
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn timers(&self) -> usize {
        self.timers.len()
    }

    /// Evaluates the rules on `changed` rows and on rows whose timer is due at the watermark.
    pub fn evaluate(
        &mut self,
        changed: Vec<AssetIx>,
        assets: &mut AssetJoin,
        dir: &Directory,
        stamp: Stamp,
        out: &mut Vec<Alert>,
    ) -> datafusion::error::Result<()> {
        let mut rows = changed;
        let horizon = stamp.watermark.saturating_add(stamp.complete as Millis);
        while let Some((_, ix)) = self.timers.pop_due(horizon) {
            rows.push(ix);
        }
        if rows.is_empty() {
            return Ok(());
        }
        rows.sort_unstable();
        rows.dedup();
        rows.retain(|ix| assets.asset(*ix).is_some());
        let batch = table::assets_batch(&rows, assets, dir)?;
        for r in 0..self.rules.len() {
            let results = self.rules[r].kernel.run(batch.clone())?;
            for res in &results {
                let ixs = res.column(0).as_primitive::<UInt32Type>();
                let due_col = cast(
                    &cast(
                        res.column(1),
                        &DataType::Timestamp(TimeUnit::Millisecond, None),
                    )?,
                    &DataType::Int64,
                )?;
                let due = due_col.as_primitive::<datafusion::arrow::datatypes::Int64Type>();
                let fire = res.column(2).as_boolean();
                for i in 0..res.num_rows() {
                    if due.is_null(i) {
                        continue;
                    }
                    let (ix, due_at) = (ixs.value(i), due.value(i));
                    let Some(a) = assets.asset_mut(ix) else {
                        continue;
                    };
                    if !stamp.decidable(due_at) {
                        a.decision_due = a.decision_due.min(due_at);
                        // Due once the watermark is past `due_at`.
                        self.timers.schedule(due_at.saturating_add(1), ix);
                        continue;
                    }
                    a.decision_due = Millis::MAX;
                    let firing = !fire.is_null(i) && fire.value(i);
                    self.decide(r, a, due_at, firing, dir, stamp, out);
                }
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn decide(
        &self,
        r: usize,
        a: &mut Asset,
        due_at: Millis,
        firing: bool,
        dir: &Directory,
        stamp: Stamp,
        out: &mut Vec<Alert>,
    ) {
        if a.alerts.len() <= r {
            a.alerts.resize(self.rules.len(), None);
        }
        let spec = &self.rules[r].spec;
        match (a.alerts[r], firing) {
            (None, true) => {
                // Replay: the alert is due when the watermark reaches `due_at`, or later when
                // only late data made it true.
                let fired_at = stamp
                    .now
                    .unwrap_or_else(|| due_at.max(a.late_w.unwrap_or(Millis::MIN)));
                let mark = AlertMark {
                    status: AlertStatus::Firing,
                    due_at,
                    fired_at,
                };
                a.alerts[r] = Some(mark);
                out.push(alert(spec, a, mark, evidence(a, due_at), dir));
            }
            (Some(m), false) if m.status == AlertStatus::Firing => {
                let resolved_at = stamp
                    .now
                    .unwrap_or_else(|| a.late_w.unwrap_or(stamp.watermark));
                let mark = AlertMark {
                    status: AlertStatus::Resolved,
                    ..m
                };
                a.alerts[r] = Some(mark);
                let mut ev = evidence(a, m.due_at);
                ev.insert("resolved_at".into(), json!(format_time(resolved_at)));
                ev.insert(
                    "resolved_by".into(),
                    a.first_contract
                        .as_ref()
                        .map_or(Value::Null, |(_, id)| json!(id)),
                );
                out.push(alert(spec, a, mark, ev, dir));
            }
            _ => {}
        }
    }
}

fn alert(
    spec: &RuleSpec,
    a: &Asset,
    m: AlertMark,
    evidence: Map<String, Value>,
    dir: &Directory,
) -> Alert {
    Alert {
        alert_id: format!("{}:{}", spec.name, a.asset_id),
        rule: spec.name.clone(),
        status: m.status,
        rep_id: dir.rep_id(a.pair.rep()).to_string(),
        customer_id: dir.customer_id(a.pair.customer()).to_string(),
        region: dir.region_of(a.pair.rep()).to_string(),
        asset_id: Some(a.asset_id.to_string()),
        due_at: m.due_at,
        fired_at: m.fired_at,
        evidence,
    }
}

/// Evidence of an asset alert; counts cover effective times [sent_at, due_at] (EVENTS.md §8).
fn evidence(a: &Asset, due_at: Millis) -> Map<String, Value> {
    let counted: Vec<Millis> = a.counted.iter().copied().filter(|t| *t <= due_at).collect();
    let excluded = a.excluded.iter().filter(|t| **t <= due_at).count();
    let mut m = Map::new();
    m.insert("quote_sent_at".into(), json!(format_time(a.sent_at)));
    m.insert("counted_opens".into(), json!(counted.len()));
    m.insert("excluded_opens".into(), json!(excluded));
    m.insert(
        "last_open_at".into(),
        counted
            .last()
            .map_or(Value::Null, |t| json!(format_time(*t))),
    );
    m.insert("customer_online_at_send".into(), json!(a.online_at_send));
    m.insert("product_page_visits_30m".into(), json!(a.product_visits));
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::default_text;
    use std::path::Path;

    fn pipeline(text: &str, dir: &Path) -> Pipeline {
        let file = dir.join("p.toml");
        std::fs::write(&file, text).expect("write");
        Pipeline::load(&file).expect("static checks pass")
    }

    #[test]
    fn the_default_rules_plan() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = pipeline(&default_text(), dir.path());
        assert_eq!(compile(&p).expect("plans").len(), 1);
    }

    #[test]
    fn sql_problems_name_the_setting_and_line() {
        let dir = tempfile::tempdir().expect("tmp");
        let text = default_text()
            .replace("counted_opens >= 3 AND", "no_such_column >= 3 AND")
            .replace("[[rules]]", "[[rules]]\nname = \"second\"\ntable = \"assets\"\ndue_at = \"counted_opens\"\nfire_when = \"true\"\n\n[[rules]]");
        let p = pipeline(&text, dir.path());
        let problems = compile(&p).expect_err("two bad rules");
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            vec!["rules[0].due_at", "rules[1].fire_when"],
            "{problems:?}"
        );
        assert!(problems[0].message.contains("timestamp"), "{problems:?}");
        assert!(
            problems[1].message.contains("no_such_column"),
            "{problems:?}"
        );
        let line_of = |needle: &str| text.lines().position(|l| l.contains(needle)).map(|i| i + 1);
        assert_eq!(problems[0].line, line_of("due_at = \"counted_opens\""));
        assert_eq!(problems[1].line, line_of("fire_when = \"no_such_column"));
    }
}
