//! Rules are data (DESIGN.md decision 5): each `[[rules]]` of the pipeline file is SQL over an
//! operator table, planned once by DataFusion. Rows are evaluated when they change and when
//! their `due_at` timer comes due; an alert fires once the watermark reaches `due_at` with
//! `fire_when` true, and is published again as resolved if late data turns it false.

mod table;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit, UInt32Type};
use datafusion::arrow::record_batch::RecordBatch;
use serde_json::{Map, Value, json};

use crate::config::{Pipeline, Problem, RuleSpec};
use crate::directory::Directory;
use crate::engine::kernel::{Columns, Kernel};
use crate::engine::output::{Alert, AlertStatus};
use crate::event::{Millis, format_time};
use crate::operators::LazyTimers;
use crate::operators::actions::ActionLog;
use crate::operators::assets::AssetJoin;

pub use table::{RuleRow, RuleTable, actions_schema, assets_schema};

/// An operator table rules can read, with the context table a query rule may join.
#[derive(Debug, Clone, Copy)]
pub struct TableDef {
    pub name: &'static str,
    /// Every retained row sharing the evaluated rows' key (same columns as the table).
    pub context: &'static str,
    pub schema: fn() -> SchemaRef,
}

/// `assets`: one row per sent asset; context `pair_assets`, the pair's retained assets.
pub const ASSETS: TableDef = TableDef {
    name: "assets",
    context: "pair_assets",
    schema: assets_schema,
};
/// `actions`: one row per retained `crm.action`; context `rep_actions`, the rep's actions.
pub const ACTIONS: TableDef = TableDef {
    name: "actions",
    context: "rep_actions",
    schema: actions_schema,
};
/// Operator tables a rule's rows come from.
pub const TABLES: &[&str] = &[ASSETS.name, ACTIONS.name];

fn table_def(name: &str) -> TableDef {
    if name == ACTIONS.name {
        ACTIONS
    } else {
        ASSETS
    }
}

/// Where an alert of one rule stands for one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlertMark {
    pub status: AlertStatus,
    pub due_at: Millis,
    pub fired_at: Millis,
}

/// What one rule has decided on one row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuleSlot {
    /// The row's alert of this rule, once fired.
    pub alert: Option<AlertMark>,
    /// A query rule with a row-level `due_at`: the `due_at` its last decision was made at.
    /// Such a decision reads data at or before `due_at` only, which on-time data never is once
    /// the watermark has passed it: the query need not run again on this row until late data
    /// changes it or its `due_at` moves.
    pub decided_due: Option<Millis>,
}

struct CompiledRule {
    spec: RuleSpec,
    kernel: Kernel,
    /// Output columns: the row, `due_at`, the fire flag, then evidence columns by name.
    row_col: usize,
    due_col: usize,
    fire_col: usize,
    evidence_cols: Vec<(usize, String)>,
    /// Reads the context table: its rows depend on other rows sharing their key.
    uses_context: bool,
    /// A query rule's own `due_at` (and `filter`) over its row alone: the query then runs only
    /// on rows whose decision is due (the rest get a timer), which keeps joins off the
    /// per-event path.
    due_kernel: Option<Kernel>,
}

/// The rules of one table, with their timers (keyed by row index).
#[derive(Default)]
struct TableRules {
    rules: Vec<CompiledRule>,
    timers: LazyTimers<u32>,
    /// The columns of the changed rows that the rules' filters, `due_at` and `fire_when` read.
    reads: Columns,
}

/// The pipeline's rules, planned, grouped by table.
pub struct RuleSet {
    assets: TableRules,
    actions: TableRules,
}

impl std::fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = |t: &TableRules| -> Vec<String> {
            t.rules.iter().map(|r| r.spec.name.clone()).collect()
        };
        let all: Vec<String> = [names(&self.assets), names(&self.actions)].concat();
        f.debug_struct("RuleSet").field("rules", &all).finish()
    }
}

/// Plans every rule; returns every problem, located in the pipeline file.
pub fn compile(p: &Pipeline) -> Result<RuleSet, Vec<Problem>> {
    let mut set = RuleSet {
        assets: TableRules::default(),
        actions: TableRules::default(),
    };
    let mut problems = Vec::new();
    for (i, spec) in p.rules.iter().enumerate() {
        match compile_rule(spec) {
            Ok(rule) if spec.table == ACTIONS.name => set.actions.rules.push(rule),
            Ok(rule) => set.assets.rules.push(rule),
            Err((key, message)) => problems.push(p.rule_problem(i, key, message)),
        }
    }
    for t in [&mut set.assets, &mut set.actions] {
        t.reads = t.rules.iter().fold(Columns::NONE, |n, r| {
            let own = match &r.due_kernel {
                Some(pre) => pre.columns_read(0),
                None => r.kernel.columns_read(0),
            };
            n.union(own)
        });
    }
    if problems.is_empty() {
        Ok(set)
    } else {
        Err(problems)
    }
}

fn first_line(e: impl std::fmt::Display) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

fn tables(spec: &RuleSpec) -> [(&str, SchemaRef); 2] {
    let def = table_def(&spec.table);
    [
        (spec.table.as_str(), (def.schema)()),
        (def.context, (def.schema)()),
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
        uses_context: false,
        due_kernel: None,
    })
}

/// A `query` rule: one SELECT over the rule's table and its context table, with columns
/// `__row`, `due_at` (timestamp) and `fire` (boolean); any other column is copied into the
/// evidence. Its optional `due_at` and `filter` apply to the row alone, before the query.
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
        let filter = spec.filter.as_deref().unwrap_or("TRUE");
        Kernel::compile_with(
            &tables(spec),
            &format!("SELECT __row FROM {} WHERE ({filter})", spec.table),
        )
        .map_err(|e| ("filter", first_line(e)))?;
        let k = Kernel::compile_with(
            &tables(spec),
            &format!(
                "SELECT __row, ({}) AS due_at FROM {} WHERE ({filter})",
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
        uses_context: query.contains(table_def(&spec.table).context),
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
        self.assets.rules.len() + self.actions.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether an `assets` rule reads the pair's other assets (`pair_assets`).
    pub fn assets_use_context(&self) -> bool {
        self.assets.rules.iter().any(|r| r.uses_context)
    }

    /// Whether a rule reads `actions` (the engine keeps the action log only then).
    pub fn reads_actions(&self) -> bool {
        !self.actions.rules.is_empty()
    }

    pub fn timers(&self) -> usize {
        self.assets.timers.len() + self.actions.timers.len()
    }

    /// Evaluates the `assets` rules; see `TableRules::evaluate`. Without `due_timers`, only
    /// the given rows and the context of the late ones: what a late event must find decided
    /// before it is applied.
    pub fn evaluate_assets(
        &mut self,
        changed: (Vec<u32>, Vec<u32>),
        due_timers: bool,
        assets: &mut AssetJoin,
        dir: &Directory,
        stamp: Stamp,
        out: &mut Vec<Alert>,
    ) -> datafusion::error::Result<()> {
        self.assets
            .evaluate(changed, due_timers, assets, dir, stamp, out)
    }

    /// `evaluate_assets` for the `actions` rules.
    pub fn evaluate_actions(
        &mut self,
        changed: (Vec<u32>, Vec<u32>),
        due_timers: bool,
        actions: &mut ActionLog,
        dir: &Directory,
        stamp: Stamp,
        out: &mut Vec<Alert>,
    ) -> datafusion::error::Result<()> {
        self.actions
            .evaluate(changed, due_timers, actions, dir, stamp, out)
    }
}

impl TableRules {
    /// Evaluates the rules on `changed.0` rows, on rows whose timer is due at the watermark
    /// and, for rules that join the context table, on the context of `changed.1` (rows changed
    /// by late data): only late data can change a decision already made, because a rule
    /// decides from data at or before its `due_at`, which on-time data never is once decided.
    fn evaluate<T: RuleTable>(
        &mut self,
        (changed, late): (Vec<u32>, Vec<u32>),
        due_timers: bool,
        table: &mut T,
        dir: &Directory,
        stamp: Stamp,
        out: &mut Vec<Alert>,
    ) -> datafusion::error::Result<()> {
        if self.rules.is_empty() {
            return Ok(());
        }
        let mut rows = changed;
        let horizon = stamp.watermark.saturating_add(stamp.complete as Millis);
        while due_timers && let Some((_, ix)) = self.timers.pop_due(horizon) {
            rows.push(ix);
        }
        // Late data in a group makes its rows' new decisions late too: a context rule that
        // fires now on a row decided before fires because of it (the engine decides what was
        // due before it applies a late event), so `fired_at` is that late watermark.
        let reads_context = self.rules.iter().any(|r| r.uses_context);
        let mut late_groups: rustc_hash::FxHashMap<u64, Millis> = Default::default();
        if !late.is_empty() && reads_context {
            for ix in &late {
                if let Some(w) = table
                    .row(*ix)
                    .and_then(|r| r.late_w().map(|w| (r.group(), w)))
                {
                    let e = late_groups.entry(w.0).or_insert(w.1);
                    *e = (*e).max(w.1);
                }
            }
        }
        // Rows late data changed, with their groups' rows when a rule reads the context: the
        // only rows on which a decision already made can change.
        let mut unsettled = late;
        if !unsettled.is_empty() && reads_context {
            unsettled = table.closure(&unsettled);
            rows.extend_from_slice(&unsettled);
        }
        unsettled.sort_unstable();
        if rows.is_empty() {
            return Ok(());
        }
        rows.sort_unstable();
        rows.dedup();
        rows.retain(|ix| table.row(*ix).is_some());
        let batch = table.batch(&rows, self.reads, dir)?;
        let mut inputs = Vec::with_capacity(self.rules.len());
        let mut waiting: Vec<(u32, Millis)> = Vec::new();
        for (r, rule) in self.rules.iter().enumerate() {
            let (ready_batch, ready) = match &rule.due_kernel {
                None => (batch.clone(), None),
                Some(pre) => {
                    // Rows not yet due only get a timer; the query runs on the due ones that
                    // it has not yet decided at this `due_at`, or that late data changed.
                    let mut ready: Vec<(u32, Millis)> = Vec::new();
                    for res in pre.run(batch.clone())? {
                        let ixs = res.column(0).as_primitive::<UInt32Type>();
                        let due = millis(res.column(1))?;
                        for i in 0..res.num_rows() {
                            if due.is_null(i) {
                                continue;
                            }
                            let (ix, due_at) = (ixs.value(i), due.value(i));
                            if stamp.decidable(due_at) {
                                let settled = unsettled.binary_search(&ix).is_err()
                                    && table.row(ix).is_some_and(|row| {
                                        row.slots().get(r).and_then(|s| s.decided_due)
                                            == Some(due_at)
                                    });
                                if !settled {
                                    ready.push((ix, due_at));
                                }
                            } else {
                                waiting.push((ix, due_at));
                            }
                        }
                    }
                    if ready.is_empty() {
                        inputs.push(None);
                        continue;
                    }
                    ready.sort_unstable();
                    let ixs: Vec<u32> = ready.iter().map(|(ix, _)| *ix).collect();
                    let need = rule.kernel.columns_read(0);
                    (table.batch(&ixs, need, dir)?, Some((ixs, ready)))
                }
            };
            let context = if rule.uses_context {
                let of = ready.as_ref().map_or(&rows, |(ixs, _)| ixs);
                table.batch(&table.closure(of), rule.kernel.columns_read(1), dir)?
            } else {
                RecordBatch::new_empty(ready_batch.schema())
            };
            inputs.push(Some((ready_batch, context, ready.map(|(_, dues)| dues))));
        }
        for (ix, due_at) in waiting {
            if let Some(row) = table.row_mut(ix) {
                wait(&mut self.timers, row, ix, due_at);
            }
        }
        for (r, input) in inputs.into_iter().enumerate() {
            let Some((rows_batch, context, row_dues)) = input else {
                continue;
            };
            let rule = &self.rules[r];
            let (row_col, due_col, fire_col) = (rule.row_col, rule.due_col, rule.fire_col);
            let results = rule.kernel.run_with(vec![rows_batch, context])?;
            for res in &results {
                let evidence = EvidenceColumns::of(res, &rule.evidence_cols);
                let ixs = res.column(row_col).as_primitive::<UInt32Type>();
                let due = millis(res.column(due_col))?;
                let fire = res.column(fire_col).as_boolean();
                for i in 0..res.num_rows() {
                    if due.is_null(i) {
                        continue;
                    }
                    let (ix, due_at) = (ixs.value(i), due.value(i));
                    let Some(row) = table.row_mut(ix) else {
                        continue;
                    };
                    if !stamp.decidable(due_at) {
                        wait(&mut self.timers, row, ix, due_at);
                        continue;
                    }
                    *row.state().1 = Millis::MAX;
                    let firing = !fire.is_null(i) && fire.value(i);
                    let n = self.rules.len();
                    let group_late = rule
                        .uses_context
                        .then(|| late_groups.get(&row.group()).copied())
                        .flatten();
                    let late_w = row.late_w().max(group_late);
                    let d = Decision {
                        due_at,
                        firing,
                        late_w,
                        extra: &|| evidence.row(i),
                    };
                    decide(&rule.spec, r, n, row, d, dir, stamp, out);
                    if let Some(dues) = &row_dues
                        && let Ok(k) = dues.binary_search_by_key(&ix, |(ix, _)| *ix)
                    {
                        row.state().0[r].decided_due = Some(dues[k].1);
                    }
                }
            }
        }
        Ok(())
    }
}

/// A row whose decision is not yet allowed: it remembers `due_at` and gets a timer for when the
/// watermark is past it.
fn wait<R: RuleRow>(timers: &mut LazyTimers<u32>, row: &mut R, ix: u32, due_at: Millis) {
    let (_, decision_due) = row.state();
    *decision_due = (*decision_due).min(due_at);
    timers.schedule(due_at.saturating_add(1), ix);
}

/// One rule's verdict on one row.
struct Decision<'a> {
    due_at: Millis,
    firing: bool,
    /// The latest watermark at which late data changed what the verdict reads.
    late_w: Option<Millis>,
    /// A query rule's extra columns, read only when an alert is published.
    extra: &'a dyn Fn() -> Map<String, Value>,
}

/// Applies one decision of rule `r` (of `n` on the table) to a row's alert state.
#[allow(clippy::too_many_arguments)]
fn decide<R: RuleRow>(
    spec: &RuleSpec,
    r: usize,
    n: usize,
    row: &mut R,
    d: Decision,
    dir: &Directory,
    stamp: Stamp,
    out: &mut Vec<Alert>,
) {
    let Decision {
        due_at,
        firing,
        late_w,
        extra,
    } = d;
    let (slots, _) = row.state();
    if slots.len() <= r {
        slots.resize(n, RuleSlot::default());
    }
    match (slots[r].alert, firing) {
        (None, true) => {
            // Replay: the alert is due when the watermark reaches `due_at`, or later when
            // only late data made it true.
            let fired_at = stamp
                .now
                .unwrap_or_else(|| due_at.max(late_w.unwrap_or(Millis::MIN)));
            let mark = AlertMark {
                status: AlertStatus::Firing,
                due_at,
                fired_at,
            };
            slots[r].alert = Some(mark);
            let mut ev = row.evidence(due_at);
            ev.extend(extra());
            out.push(alert(spec, row, mark, ev, dir));
        }
        (Some(m), false) if m.status == AlertStatus::Firing => {
            let resolved_at = stamp
                .now
                .unwrap_or_else(|| late_w.unwrap_or(stamp.watermark));
            let mark = AlertMark {
                status: AlertStatus::Resolved,
                ..m
            };
            slots[r].alert = Some(mark);
            let mut ev = row.evidence(m.due_at);
            ev.extend(extra());
            ev.insert("resolved_at".into(), json!(format_time(resolved_at)));
            ev.insert("resolved_by".into(), row.resolved_by());
            out.push(alert(spec, row, mark, ev, dir));
        }
        _ => {}
    }
}

fn alert<R: RuleRow>(
    spec: &RuleSpec,
    row: &R,
    m: AlertMark,
    evidence: Map<String, Value>,
    dir: &Directory,
) -> Alert {
    let pair = row.pair();
    Alert {
        alert_id: format!("{}:{}", spec.name, row.key()),
        rule: spec.name.clone(),
        status: m.status,
        rep_id: dir.rep_id(pair.rep()).to_string(),
        customer_id: dir.customer_id(pair.customer()).to_string(),
        region: dir.region_of(pair.rep()).to_string(),
        asset_id: row.asset_id().map(str::to_string),
        due_at: m.due_at,
        fired_at: m.fired_at,
        evidence,
    }
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

/// A query rule's extra columns of one result batch, read row by row into evidence (times in
/// RFC 3339). Timestamps are read as epoch milliseconds (`millis`) once per batch, not per row.
struct EvidenceColumns<'a> {
    cols: Vec<(&'a str, Column)>,
}

enum Column {
    /// A time column in epoch milliseconds (`None`: it could not be read; all null).
    Time(Option<datafusion::arrow::array::Int64Array>),
    Other(datafusion::arrow::array::ArrayRef),
}

impl<'a> EvidenceColumns<'a> {
    fn of(res: &datafusion::arrow::record_batch::RecordBatch, cols: &'a [(usize, String)]) -> Self {
        let cols = cols
            .iter()
            .map(|(c, name)| {
                let col = res.column(*c);
                let col = match col.data_type() {
                    DataType::Timestamp(_, _) => Column::Time(millis(col).ok()),
                    _ => Column::Other(col.clone()),
                };
                (name.as_str(), col)
            })
            .collect();
        EvidenceColumns { cols }
    }

    fn row(&self, i: usize) -> Map<String, Value> {
        use datafusion::arrow::datatypes::{Float64Type, Int64Type, UInt64Type};
        let mut m = Map::new();
        for (name, col) in &self.cols {
            let v = match col {
                Column::Time(Some(ms)) if !ms.is_null(i) => json!(format_time(ms.value(i))),
                Column::Time(_) => Value::Null,
                Column::Other(col) if col.is_null(i) => Value::Null,
                Column::Other(col) => match col.data_type() {
                    DataType::Int64 => json!(col.as_primitive::<Int64Type>().value(i)),
                    DataType::UInt64 => json!(col.as_primitive::<UInt64Type>().value(i)),
                    DataType::Float64 => json!(col.as_primitive::<Float64Type>().value(i)),
                    DataType::Boolean => json!(col.as_boolean().value(i)),
                    _ => datafusion::arrow::util::display::array_value_to_string(col, i)
                        .map_or(Value::Null, Value::String),
                },
            };
            m.insert(name.to_string(), v);
        }
        m
    }
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
        let rules = compile(&p).expect("plans");
        assert_eq!(rules.len(), 3);
        // Filters, `due_at` and `fire_when` run as expressions on the rows; the two query
        // rules' joins and aggregates run as plans.
        let kernels: Vec<(&str, bool, Option<bool>)> = [&rules.assets, &rules.actions]
            .iter()
            .flat_map(|t| t.rules.iter())
            .map(|r| {
                let due = r.due_kernel.as_ref().map(Kernel::is_direct);
                (r.spec.name.as_str(), r.kernel.is_direct(), due)
            })
            .collect();
        assert_eq!(
            kernels,
            [
                ("quote_hot_no_contract", true, None),
                ("ghost_followup", false, Some(true)),
                ("impossible_visits", false, Some(true)),
            ]
        );
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
