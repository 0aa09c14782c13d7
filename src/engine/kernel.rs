//! DataFusion as the per-micro-batch kernel (DESIGN.md decision 1): a SQL query is planned once
//! over a streaming table whose rows are swapped in before each run, then re-executed. Operators
//! own state and time; a kernel only computes over the rows it is handed.
//!
//! A plan that only filters and projects one table (most rules' `filter`, `due_at` and
//! `fire_when`) runs as its planned physical expressions straight on the rows: the same
//! expressions, without the streams, metrics and state resets that cost tens of microseconds per
//! execution, which a micro-batch of a few rows pays several times.

use std::sync::{Arc, Mutex};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
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
        let mut rows = Vec::new();
        let mut first: Option<Arc<dyn PartitionStream>> = None;
        for (table, schema) in tables {
            let slot = Arc::new(Mutex::new(Vec::new()));
            let input: Arc<dyn PartitionStream> = Arc::new(SwapInput {
                schema: schema.clone(),
                rows: slot.clone(),
            });
            first.get_or_insert_with(|| input.clone());
            let table_provider = StreamingTable::try_new(schema.clone(), vec![input])?;
            ctx.register_table(*table, Arc::new(table_provider))?;
            rows.push(slot);
        }
        let plan = futures::executor::block_on(async {
            let df = ctx.sql(sql).await?;
            df.create_physical_plan().await
        })?;
        let output_schema = plan.schema();
        let direct = first.and_then(|first| Direct::of(&plan, &first));
        Ok(Kernel {
            task_ctx: ctx.task_ctx(),
            plan,
            rows,
            direct,
            output_schema,
        })
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
}
