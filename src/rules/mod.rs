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

/// Operator tables a rule's rows come from.
pub const TABLES: &[&str] = &["assets"];
/// Context table a rule may join: every retained asset of the pairs of the rows evaluated
/// (same columns as `assets`).
pub const PAIR_ASSETS: &str = "pair_assets";

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
    /// Output columns: the row, `due_at`, the fire flag, then evidence columns by name.
    row_col: usize,
    due_col: usize,
    fire_col: usize,
    evidence_cols: Vec<(usize, String)>,
    /// Reads `pair_assets`: its rows depend on the other assets of their pair.
    uses_pair: bool,
    /// A query rule's own `due_at` over its row alone: the query then runs only on rows whose
    /// decision is due (the rest get a timer), which keeps joins off the per-event path.
    due_kernel: Option<Kernel>,
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
            Ok(rule) => rules.push(rule),
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

fn tables(spec: &RuleSpec) -> [(&str, datafusion::arrow::datatypes::SchemaRef); 2] {
    [
        (spec.table.as_str(), assets_schema()),
        (PAIR_ASSETS, assets_schema()),
    ]
}

/// `due_at` (output column `col` of `k`) must be a timestamp.
fn timestamp_due(k: &Kernel, col: usize) -> Result<(), (&'static str, String)> {
    match k.output_schema.field(col).data_type() {
        DataType::Timestamp(_, _) => Ok(()),
        other => Err((
            "due_at",
            format!("must be a timestamp expression, found {other}"),
        )),
    }
}

/// Plans a rule piece by piece, so that an error names the setting it is in.
fn compile_rule(spec: &RuleSpec) -> Result<CompiledRule, (&'static str, String)> {
    if let Some(query) = &spec.query {
        return compile_query(spec, query);
    }
    let filter = spec.filter.as_deref().unwrap_or("TRUE");
    let probe = |key: &'static str, sql: String| {
        Kernel::compile_with(&tables(spec), &sql).map_err(|e| (key, first_line(e)))
    };
    probe(
        "filter",
        format!("SELECT __row FROM {} WHERE ({filter})", spec.table),
    )?;
    let due = probe(
        "due_at",
        format!("SELECT ({}) AS due_at FROM {}", spec.due_at, spec.table),
    )?;
    timestamp_due(&due, 0)?;
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
    Ok(CompiledRule {
        spec: spec.clone(),
        kernel,
        row_col: 0,
        due_col: 1,
        fire_col: 2,
        evidence_cols: Vec::new(),
        uses_pair: false,
        due_kernel: None,
    })
}

/// A `query` rule: one SELECT over the rule's table and `pair_assets`, with columns `__row`,
/// `due_at` (timestamp) and `fire` (boolean); any other column is copied into the evidence.
fn compile_query(spec: &RuleSpec, query: &str) -> Result<CompiledRule, (&'static str, String)> {
    let kernel =
        Kernel::compile_with(&tables(spec), query).map_err(|e| ("query", first_line(e)))?;
    let schema = kernel.output_schema.clone();
    let find = |name: &str, ok: &dyn Fn(&DataType) -> bool, want: &str| {
        let (i, f) = schema
            .fields()
            .iter()
            .enumerate()
            .find(|(_, f)| f.name() == name)
            .ok_or(("query", format!("must select a column `{name}` ({want})")))?;
        if ok(f.data_type()) {
            Ok(i)
        } else {
            Err((
                "query",
                format!("column `{name}` must be {want}, found {}", f.data_type()),
            ))
        }
    };
    let row_col = find(
        "__row",
        &|t| t == &DataType::UInt32,
        "the row key: select `__row` of the rule's table",
    )?;
    let due_col = find(
        "due_at",
        &|t| matches!(t, DataType::Timestamp(_, _)),
        "a timestamp",
    )?;
    let fire_col = find("fire", &|t| t == &DataType::Boolean, "a boolean")?;
    let due_kernel = if spec.due_at.trim().is_empty() {
        None
    } else {
        let k = Kernel::compile_with(
            &tables(spec),
            &format!(
                "SELECT __row, ({}) AS due_at FROM {}",
                spec.due_at, spec.table
            ),
        )
        .map_err(|e| ("due_at", first_line(e)))?;
        timestamp_due(&k, 1)?;
        Some(k)
    };
    let evidence_cols = schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(i, _)| ![row_col, due_col, fire_col].contains(i))
        .map(|(i, f)| (i, f.name().clone()))
        .collect();
    Ok(CompiledRule {
        spec: spec.clone(),
        kernel,
        row_col,
        due_col,
        fire_col,
        evidence_cols,
        uses_pair: query.contains(PAIR_ASSETS),
        due_kernel,
    })
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
        // A pair rule's row depends on the pair's other assets: with such a rule, every asset of
        // the pairs involved is evaluated (one batch for all rules, cheaper than two), and that
        // set is also the `pair_assets` context.
        let uses_pair = self.rules.iter().any(|r| r.uses_pair);
        if uses_pair {
            rows = pair_closure(&rows, assets);
        }
        let batch = table::assets_batch(&rows, assets, dir)?;
        let empty = datafusion::arrow::record_batch::RecordBatch::new_empty(assets_schema());
        let mut inputs = Vec::with_capacity(self.rules.len());
        let mut waiting: Vec<(AssetIx, Millis)> = Vec::new();
        for rule in &self.rules {
            let Some(pre) = &rule.due_kernel else {
                let context = if rule.uses_pair {
                    batch.clone()
                } else {
                    empty.clone()
                };
                inputs.push(Some((batch.clone(), context)));
                continue;
            };
            // Rows not yet due only get a timer; the query runs on the due ones.
            let mut ready = Vec::new();
            for res in pre.run(batch.clone())? {
                let ixs = res.column(0).as_primitive::<UInt32Type>();
                let due = millis(res.column(1))?;
                for i in 0..res.num_rows() {
                    if due.is_null(i) {
                        continue;
                    }
                    let (ix, due_at) = (ixs.value(i), due.value(i));
                    if stamp.decidable(due_at) {
                        ready.push(ix);
                    } else {
                        waiting.push((ix, due_at));
                    }
                }
            }
            if ready.is_empty() {
                inputs.push(None);
                continue;
            }
            let context = if rule.uses_pair {
                table::assets_batch(&pair_closure(&ready, assets), assets, dir)?
            } else {
                empty.clone()
            };
            inputs.push(Some((table::assets_batch(&ready, assets, dir)?, context)));
        }
        for (ix, due_at) in waiting {
            if let Some(a) = assets.asset_mut(ix) {
                a.decision_due = a.decision_due.min(due_at);
                self.timers.schedule(due_at.saturating_add(1), ix);
            }
        }
        for (r, input) in inputs.into_iter().enumerate() {
            let Some((rows_batch, context)) = input else {
                continue;
            };
            let rule = &self.rules[r];
            let (row_col, due_col, fire_col) = (rule.row_col, rule.due_col, rule.fire_col);
            let results = rule.kernel.run_with(vec![rows_batch, context])?;
            for res in &results {
                let ixs = res.column(row_col).as_primitive::<UInt32Type>();
                let due = millis(res.column(due_col))?;
                let fire = res.column(fire_col).as_boolean();
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
                    let extra = evidence_columns(res, &self.rules[r].evidence_cols, i);
                    self.decide(r, a, due_at, firing, extra, dir, stamp, out);
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
        extra: Map<String, Value>,
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
                let mut ev = evidence(a, due_at);
                ev.extend(extra);
                out.push(alert(spec, a, mark, ev, dir));
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
                ev.extend(extra);
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

/// Every retained asset of the pairs of `rows`, ascending.
fn pair_closure(rows: &[AssetIx], assets: &AssetJoin) -> Vec<AssetIx> {
    let mut pairs: Vec<_> = rows
        .iter()
        .filter_map(|ix| assets.asset(*ix).map(|a| a.pair))
        .collect();
    pairs.sort_unstable();
    pairs.dedup();
    let mut all: Vec<AssetIx> = pairs
        .iter()
        .flat_map(|p| assets.assets_of(*p).iter().copied())
        .filter(|ix| assets.asset(*ix).is_some())
        .collect();
    all.sort_unstable();
    all
}

/// A timestamp column as epoch milliseconds.
fn millis(
    col: &datafusion::arrow::array::ArrayRef,
) -> datafusion::error::Result<datafusion::arrow::array::Int64Array> {
    let ms = cast(
        &cast(col, &DataType::Timestamp(TimeUnit::Millisecond, None))?,
        &DataType::Int64,
    )?;
    Ok(ms
        .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
        .clone())
}

/// A query rule's extra columns for one output row, as evidence (times in RFC 3339).
fn evidence_columns(
    res: &datafusion::arrow::record_batch::RecordBatch,
    cols: &[(usize, String)],
    i: usize,
) -> Map<String, Value> {
    use datafusion::arrow::datatypes::{Float64Type, Int64Type, UInt64Type};
    let mut m = Map::new();
    for (c, name) in cols {
        let col = res.column(*c);
        let v = if col.is_null(i) {
            Value::Null
        } else {
            match col.data_type() {
                DataType::Int64 => json!(col.as_primitive::<Int64Type>().value(i)),
                DataType::UInt64 => json!(col.as_primitive::<UInt64Type>().value(i)),
                DataType::Float64 => json!(col.as_primitive::<Float64Type>().value(i)),
                DataType::Boolean => json!(col.as_boolean().value(i)),
                DataType::Timestamp(_, _) => {
                    match cast(col, &DataType::Timestamp(TimeUnit::Millisecond, None))
                        .and_then(|c| cast(&c, &DataType::Int64))
                    {
                        Ok(ms) => json!(format_time(ms.as_primitive::<Int64Type>().value(i))),
                        Err(_) => Value::Null,
                    }
                }
                _ => datafusion::arrow::util::display::array_value_to_string(col, i)
                    .map_or(Value::Null, Value::String),
            }
        };
        m.insert(name.clone(), v);
    }
    m
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
        assert_eq!(compile(&p).expect("plans").len(), 2);
    }

    #[test]
    fn sql_problems_name_the_setting_and_line() {
        let dir = tempfile::tempdir().expect("tmp");
        let text = default_text()
            .replace("counted_opens >= 3 AND", "no_such_column >= 3 AND")
            .replacen("[[rules]]", "[[rules]]\nname = \"second\"\ntable = \"assets\"\ndue_at = \"counted_opens\"\nfire_when = \"true\"\n\n[[rules]]", 1);
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
