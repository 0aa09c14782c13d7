//! DataFusion as the per-micro-batch kernel (DESIGN.md decision 1): a SQL query is planned once
//! over a streaming table whose rows are swapped in before each run, then re-executed. Operators
//! own state and time; a kernel only computes over the rows it is handed.
//!
//! A plan that only filters and projects one table (most rules' `filter`, `due_at` and
//! `fire_when`) runs as its planned physical expressions straight on the rows: the same
//! expressions, without the streams, metrics and state resets that cost tens of microseconds per
//! execution, which a micro-batch of a few rows pays several times.

use std::sync::{Arc, Mutex};

use datafusion::arrow::datatypes::{DataType, IntervalMonthDayNano, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::utils::merge_schema;
use datafusion::logical_expr::{BinaryExpr, Expr, ExprSchemable, LogicalPlan, Operator};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::projection::Projector;
use datafusion::physical_plan::execution_plan::reset_plan_states;
use datafusion::physical_plan::filter::{FilterExec, batch_filter};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream, collect};
use datafusion::prelude::{SessionConfig, SessionContext};

/// Rows handed to the next run of a plan.
#[derive(Debug)]
struct SwapInput {
    schema: SchemaRef,
    rows: Arc<Mutex<Vec<RecordBatch>>>,
}

impl PartitionStream for SwapInput {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let rows = std::mem::take(&mut *self.rows.lock().unwrap_or_else(|p| p.into_inner()));
        let stream = futures::stream::iter(rows.into_iter().map(Ok));
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), stream))
    }
}

/// One step of a plan run directly, bottom-up.
enum Step {
    /// Keep the rows where the predicate is true, then keep these columns.
    Filter(Arc<dyn PhysicalExpr>, Option<Arc<[usize]>>),
    Project(Projector),
}

/// A plan of filters and projections over the first input table, as steps over its rows.
struct Direct {
    /// Columns the scan keeps (a projection pushed into it).
    scan: Option<Arc<[usize]>>,
    steps: Vec<Step>,
}

impl Direct {
    /// The steps of `plan` when it is only projections and filters (no limits) over a scan of
    /// `first`; None for any other plan (joins, aggregates, sorts).
    fn of(plan: &Arc<dyn ExecutionPlan>, first: &Arc<dyn PartitionStream>) -> Option<Direct> {
        use datafusion::physical_plan::streaming::StreamingTableExec;
        let mut steps = Vec::new();
        let mut node = plan;
        loop {
            if node.fetch().is_some() {
                return None;
            }
            if let Some(p) = node.downcast_ref::<ProjectionExec>() {
                let projector = p
                    .projection_expr()
                    .make_projector(&p.input().schema())
                    .ok()?;
                steps.push(Step::Project(projector));
                node = p.input();
            } else if let Some(f) = node.downcast_ref::<FilterExec>() {
                steps.push(Step::Filter(f.predicate().clone(), f.projection().clone()));
                node = f.input();
            } else if let Some(scan) = node.downcast_ref::<StreamingTableExec>() {
                let [only] = scan.partitions().as_slice() else {
                    return None;
                };
                if scan.limit().is_some() || !Arc::ptr_eq(only, first) {
                    return None;
                }
                steps.reverse();
                return Some(Direct {
                    scan: scan.projection().clone(),
                    steps,
                });
            } else {
                return None;
            }
        }
    }

    fn run(&self, input: RecordBatch) -> Result<RecordBatch> {
        let mut batch = match &self.scan {
            Some(cols) => input.project(cols)?,
            None => input,
        };
        for step in &self.steps {
            batch = match step {
                Step::Filter(predicate, cols) => {
                    let kept = batch_filter(&batch, predicate)?;
                    match cols {
                        Some(cols) => kept.project(cols)?,
                        None => kept,
                    }
                }
                Step::Project(projector) => projector.project_batch(&batch)?,
            };
        }
        Ok(batch)
    }
}

/// A planned query over input tables, re-run per micro-batch.
pub struct Kernel {
    /// Built once: `SessionContext::task_ctx` copies every function registry (about 30 µs).
    task_ctx: Arc<TaskContext>,
    plan: Arc<dyn ExecutionPlan>,
    /// One slot per input table, in the order given to `compile_with`.
    rows: Vec<Arc<Mutex<Vec<RecordBatch>>>>,
    /// Set when the plan only filters and projects the first table.
    direct: Option<Direct>,
    /// Per input table, the columns the plan reads (see `Columns`).
    reads: Vec<Columns>,
    /// Schema of the query's output.
    pub output_schema: SchemaRef,
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernel")
            .field("output_schema", &self.output_schema)
            .finish()
    }
}

impl Kernel {
    /// Plans `sql` over a table `table` with `schema`.
    pub fn compile(table: &str, schema: SchemaRef, sql: &str) -> Result<Kernel> {
        Self::compile_with(&[(table, schema)], sql)
    }

    /// Plans `sql` over several tables (a rule's rows and its context tables).
    pub fn compile_with(tables: &[(&str, SchemaRef)], sql: &str) -> Result<Kernel> {
        // One partition: parallelism comes from sharding keys, not from DataFusion (TECH-NOTES).
        let config = SessionConfig::new()
            .with_target_partitions(1)
            .with_batch_size(8192);
        let ctx = SessionContext::new_with_config(config);
        ctx.add_optimizer_rule(Arc::new(FixedIntervals));
        let mut rows = Vec::new();
        let mut inputs: Vec<Arc<dyn PartitionStream>> = Vec::new();
        for (table, schema) in tables {
            let slot = Arc::new(Mutex::new(Vec::new()));
            let input: Arc<dyn PartitionStream> = Arc::new(SwapInput {
                schema: schema.clone(),
                rows: slot.clone(),
            });
            inputs.push(input.clone());
            let table_provider = StreamingTable::try_new(schema.clone(), vec![input])?;
            ctx.register_table(*table, Arc::new(table_provider))?;
            rows.push(slot);
        }
        let plan = futures::executor::block_on(async {
            let df = ctx.sql(sql).await?;
            df.create_physical_plan().await
        })?;
        let output_schema = plan.schema();
        let direct = inputs.first().and_then(|first| Direct::of(&plan, first));
        let reads = inputs
            .iter()
            .map(|input| columns_read(&plan, input))
            .collect();
        Ok(Kernel {
            task_ctx: ctx.task_ctx(),
            plan,
            rows,
            direct,
            reads,
            output_schema,
        })
    }

    /// The columns the plan reads of input table `input` (order of `compile_with`): the others
    /// may hold anything of their type.
    pub fn columns_read(&self, input: usize) -> Columns {
        self.reads.get(input).copied().unwrap_or(Columns::NONE)
    }

    /// Whether runs skip the plan machinery (the plan only filters and projects).
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Runs the plan over `input` and returns its output rows.
    pub fn run(&self, input: RecordBatch) -> Result<Vec<RecordBatch>> {
        self.run_with(vec![input])
    }

    /// Runs the plan with one batch per input table (same order as `compile_with`); nothing
    /// when the first table has no rows.
    pub fn run_with(&self, inputs: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
        if inputs.first().is_none_or(|b| b.num_rows() == 0) {
            return Ok(Vec::new());
        }
        if let Some(direct) = &self.direct {
            return inputs.into_iter().take(1).map(|b| direct.run(b)).collect();
        }
        self.run_plan(inputs)
    }

    /// Executes the plan itself.
    fn run_plan(&self, inputs: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
        for (slot, input) in self.rows.iter().zip(inputs) {
            *slot
                .lock()
                .map_err(|_| DataFusionError::Internal("kernel input lock poisoned".into()))? =
                vec![input];
        }
        let plan = reset_plan_states(self.plan.clone())?;
        // Unconstrained: inside a tokio task whose coop budget is spent, DataFusion's streams
        // would keep answering Pending and this blocking wait would spin forever.
        futures::executor::block_on(tokio::task::unconstrained(collect(
            plan,
            self.task_ctx.clone(),
        )))
    }
}

/// A set of column indexes of a table (the first 64; a column past them is always in).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Columns(u64);

impl Columns {
    pub const NONE: Columns = Columns(0);
    pub const ALL: Columns = Columns(u64::MAX);

    pub fn contains(self, column: usize) -> bool {
        column >= 64 || self.0 & (1 << column) != 0
    }

    pub fn union(self, other: Columns) -> Columns {
        Columns(self.0 | other.0)
    }

    fn of(columns: Option<&[usize]>) -> Columns {
        columns.map_or(Columns::ALL, |cs| {
            Columns(
                cs.iter()
                    .fold(0, |m, &c| m | 1u64.checked_shl(c as u32).unwrap_or(0)),
            )
        })
    }
}

/// The columns of `input` that the scans of it in `plan` keep.
fn columns_read(plan: &Arc<dyn ExecutionPlan>, input: &Arc<dyn PartitionStream>) -> Columns {
    use datafusion::physical_plan::streaming::StreamingTableExec;
    let mut read = Columns::NONE;
    if let Some(scan) = plan.downcast_ref::<StreamingTableExec>()
        && scan.partitions().iter().any(|p| Arc::ptr_eq(p, input))
    {
        read = read.union(Columns::of(scan.projection().as_deref()));
    }
    for child in plan.children() {
        read = read.union(columns_read(child, input));
    }
    read
}

/// Rewrites `timestamp ± INTERVAL` of a fixed length (no months, a whole number of the
/// timestamp's unit) as `timestamp ± duration`, for timestamps without a time zone or in one
/// with a fixed offset (the operator tables' are UTC). A day is then always 86 400 s, so the
/// value is the same; but the interval form runs calendar arithmetic per row (chrono and a
/// time-zone lookup), the duration form one integer add.
/// Rules write `sent_at + INTERVAL '5 days'`, and their `due_at` runs on every changed row.
#[derive(Debug)]
struct FixedIntervals;

impl OptimizerRule for FixedIntervals {
    fn name(&self) -> &str {
        "touchstream_fixed_intervals"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::BottomUp)
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        if plan.inputs().is_empty() {
            return Ok(Transformed::no(plan));
        }
        let schema = merge_schema(&plan.inputs());
        // The plan's schema names un-aliased expressions after their text: keep those names.
        let names = NamePreserver::new(&plan);
        plan.map_expressions(|expr| {
            let name = names.save(&expr);
            Ok(expr
                .transform_up(|e| as_duration(e, &schema))?
                .update_data(|e| name.restore(e)))
        })
    }
}

/// `ts ± interval` (or `interval + ts`) as `ts ± duration` when the interval has a fixed length.
fn as_duration(expr: Expr, schema: &DFSchema) -> Result<Transformed<Expr>> {
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = &expr else {
        return Ok(Transformed::no(expr));
    };
    let interval = |e: &Expr| match e {
        Expr::Literal(ScalarValue::IntervalMonthDayNano(Some(v)), _) => Some(*v),
        _ => None,
    };
    let (ts, v) = match (op, interval(left), interval(right)) {
        (Operator::Plus | Operator::Minus, None, Some(v)) => (left, v),
        (Operator::Plus, Some(v), None) => (right, v),
        _ => return Ok(Transformed::no(expr)),
    };
    let DataType::Timestamp(unit, tz) = ts.get_type(schema)? else {
        return Ok(Transformed::no(expr));
    };
    if !tz.as_deref().is_none_or(fixed_offset) {
        return Ok(Transformed::no(expr));
    }
    let Some(duration) = fixed_duration(v, unit) else {
        return Ok(Transformed::no(expr));
    };
    let rewritten = BinaryExpr::new(ts.clone(), *op, Box::new(Expr::Literal(duration, None)));
    Ok(Transformed::yes(Expr::BinaryExpr(rewritten)))
}

/// A time zone without daylight saving time or other changes of offset: UTC or `±HH:MM`.
fn fixed_offset(tz: &str) -> bool {
    match tz.as_bytes() {
        b"UTC" | b"Z" => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => [h1, h2, m1, m2].iter().all(|d| d.is_ascii_digit()),
        _ => false,
    }
}

/// The interval as a duration in `unit`, when it has no months, is a whole number of `unit`
/// and stays within ten thousand years (far from any overflow of the 64-bit timestamps).
fn fixed_duration(v: IntervalMonthDayNano, unit: TimeUnit) -> Option<ScalarValue> {
    const NANOS_PER_DAY: i128 = 86_400_000_000_000;
    if v.months != 0 {
        return None;
    }
    let nanos = i128::from(v.days) * NANOS_PER_DAY + i128::from(v.nanoseconds);
    if nanos.abs() > 10_000 * 366 * NANOS_PER_DAY {
        return None;
    }
    let per: i128 = match unit {
        TimeUnit::Second => 1_000_000_000,
        TimeUnit::Millisecond => 1_000_000,
        TimeUnit::Microsecond => 1_000,
        TimeUnit::Nanosecond => 1,
    };
    if nanos % per != 0 {
        return None;
    }
    let n = Some(i64::try_from(nanos / per).ok()?);
    Some(match unit {
        TimeUnit::Second => ScalarValue::DurationSecond(n),
        TimeUnit::Millisecond => ScalarValue::DurationMillisecond(n),
        TimeUnit::Microsecond => ScalarValue::DurationMicrosecond(n),
        TimeUnit::Nanosecond => ScalarValue::DurationNanosecond(n),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, Int64Array};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    #[test]
    fn a_plan_is_reused_over_new_rows() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("v", DataType::Int64, false),
        ]));
        let k = Kernel::compile(
            "t",
            schema.clone(),
            "SELECT k, sum(v) AS s FROM t GROUP BY k ORDER BY k",
        )
        .expect("plan");
        for (ks, vs, want) in [
            (vec![1, 1, 2], vec![10, 5, 7], vec![(1, 15), (2, 7)]),
            (vec![3, 3], vec![1, 2], vec![(3, 3)]),
        ] {
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from(ks)),
                    Arc::new(Int64Array::from(vs)),
                ],
            )
            .expect("batch");
            let out = k.run(batch).expect("run");
            let mut got = Vec::new();
            for b in &out {
                let kc = b
                    .column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .expect("k");
                let sc = b
                    .column(1)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .expect("s");
                for i in 0..b.num_rows() {
                    assert!(!kc.is_null(i));
                    got.push((kc.value(i), sc.value(i)));
                }
            }
            assert_eq!(got, want);
        }
    }

    /// A filter-and-project plan runs as its expressions, with the plan's results: rows kept,
    /// in order, nulls in the predicate as false, the output schema the plan's.
    #[test]
    fn a_filter_and_projection_runs_directly_with_the_plans_results() {
        use datafusion::arrow::array::{StringArray, TimestampMillisecondArray};
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("action", DataType::Utf8, true),
            Field::new(
                "at",
                DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Millisecond, None),
                true,
            ),
        ]));
        let k = Kernel::compile_with(
            &[("t", schema.clone()), ("other", schema.clone())],
            "SELECT k, at + INTERVAL '1 day' AS due, k * 2 > 4 AS big FROM t \
             WHERE action = 'quote_sent'",
        )
        .expect("plan");
        assert!(k.is_direct());
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 3, 4])),
                Arc::new(StringArray::from(vec![
                    Some("quote_sent"),
                    None,
                    Some("visit"),
                    Some("quote_sent"),
                ])),
                Arc::new(TimestampMillisecondArray::from(vec![
                    Some(0),
                    Some(1),
                    None,
                    None,
                ])),
            ],
        )
        .expect("batch");
        let other = RecordBatch::new_empty(schema.clone());
        let direct = k
            .run_with(vec![batch.clone(), other.clone()])
            .expect("direct");
        let planned = k.run_plan(vec![batch, other]).expect("planned");
        let rows = |bs: &[RecordBatch]| bs.iter().map(|b| b.num_rows()).sum::<usize>();
        assert_eq!(rows(&direct), 2);
        assert_eq!(direct[0].schema(), k.output_schema);
        assert_eq!(
            datafusion::arrow::compute::concat_batches(&k.output_schema, &direct).expect("c"),
            datafusion::arrow::compute::concat_batches(&k.output_schema, &planned).expect("c"),
        );
    }

    #[test]
    fn joins_and_aggregates_run_as_plans() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("v", DataType::Int64, false),
        ]));
        for sql in [
            "SELECT k, sum(v) FROM t GROUP BY k",
            "SELECT t.k FROM t JOIN other o ON o.k = t.k",
            "SELECT k FROM t ORDER BY v",
            "SELECT k FROM t LIMIT 1",
            "SELECT k FROM other",
        ] {
            let k = Kernel::compile_with(&[("t", schema.clone()), ("other", schema.clone())], sql)
                .expect("plan");
            assert!(!k.is_direct(), "{sql}");
        }
    }

    /// Fixed-length intervals become durations with the same results, on both sides of `+`,
    /// across a day boundary and before 1970; months, odd units and named time zones stay
    /// intervals.
    #[test]
    fn fixed_intervals_run_as_durations_with_the_same_results() {
        use datafusion::arrow::array::TimestampMillisecondArray;
        use datafusion::arrow::datatypes::{Field, Schema};
        let ts = |tz: Option<&str>| DataType::Timestamp(TimeUnit::Millisecond, tz.map(Into::into));
        let exprs = [
            ("at + INTERVAL '5 days'", true),
            ("INTERVAL '1 day 2 hours' + at", true),
            ("at - INTERVAL '14 days'", true),
            ("at - INTERVAL '1 hour'", true),
            ("at + INTERVAL '1 month'", false),
            ("at + INTERVAL '1 microsecond'", false),
        ];
        for (tz, fixed) in [(None, true), (Some("UTC"), true), (Some("+08:00"), true)]
            .into_iter()
            .chain([(Some("Asia/Shanghai"), false)])
        {
            let schema = Arc::new(Schema::new(vec![Field::new("at", ts(tz), true)]));
            let values = TimestampMillisecondArray::from(vec![
                Some(1_793_581_200_000),
                Some(1_793_663_999_999),
                Some(-86_400_001),
                None,
            ]);
            let values = match tz {
                Some(tz) => values.with_timezone(tz),
                None => values,
            };
            let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(values)]).expect("b");
            for (expr, rewritten) in exprs {
                let sql = format!("SELECT {expr} AS v FROM t");
                let k = Kernel::compile("t", schema.clone(), &sql).expect("plan");
                let plan = datafusion::physical_plan::displayable(k.plan.as_ref())
                    .indent(true)
                    .to_string();
                assert_eq!(
                    !plan.contains("IntervalMonthDayNano"),
                    rewritten && fixed,
                    "{sql} ({tz:?}): {plan}"
                );
                // The same query planned without the rule.
                let ctx = SessionContext::new();
                ctx.register_batch("t", batch.clone()).expect("register");
                let want =
                    futures::executor::block_on(async { ctx.sql(&sql).await?.collect().await })
                        .expect("reference");
                let got = k.run(batch.clone()).expect("run");
                assert_eq!(got, want, "{sql} ({tz:?})");
            }
        }
    }

    /// A plan reports the columns its scans keep, per input table, and every column when a scan
    /// keeps them all.
    #[test]
    fn a_plan_names_the_columns_it_reads() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("v", DataType::Int64, false),
            Field::new("w", DataType::Int64, false),
        ]));
        let tables = [("t", schema.clone()), ("other", schema.clone())];
        let read = |sql: &str| {
            let k = Kernel::compile_with(&tables, sql).expect("plan");
            let cols = |input| {
                (0..3)
                    .filter(|c| k.columns_read(input).contains(*c))
                    .collect()
            };
            (cols(0), cols(1))
        };
        let none: Vec<usize> = Vec::new();
        assert_eq!(
            read("SELECT k FROM t WHERE v > 1"),
            (vec![0, 1], none.clone())
        );
        assert_eq!(read("SELECT * FROM t"), (vec![0, 1, 2], none));
        assert_eq!(
            read("SELECT t.k, sum(o.w) FROM t JOIN other o ON o.k = t.k GROUP BY t.k"),
            (vec![0], vec![0, 2])
        );
    }
}
