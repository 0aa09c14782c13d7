//! DataFusion as the per-micro-batch kernel (DESIGN.md decision 1): a SQL query is planned once
//! over a streaming table whose rows are swapped in before each run, then re-executed. Operators
//! own state and time; a kernel only computes over the rows it is handed.

use std::sync::{Arc, Mutex};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_plan::execution_plan::reset_plan_states;
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

/// A planned query over input tables, re-run per micro-batch.
pub struct Kernel {
    /// Built once: `SessionContext::task_ctx` copies every function registry (about 30 µs).
    task_ctx: Arc<TaskContext>,
    plan: Arc<dyn ExecutionPlan>,
    /// One slot per input table, in the order given to `compile_with`.
    rows: Vec<Arc<Mutex<Vec<RecordBatch>>>>,
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
        for (table, schema) in tables {
            let slot = Arc::new(Mutex::new(Vec::new()));
            let input = Arc::new(SwapInput {
                schema: schema.clone(),
                rows: slot.clone(),
            });
            let table_provider = StreamingTable::try_new(schema.clone(), vec![input])?;
            ctx.register_table(*table, Arc::new(table_provider))?;
            rows.push(slot);
        }
        let plan = futures::executor::block_on(async {
            let df = ctx.sql(sql).await?;
            df.create_physical_plan().await
        })?;
        let output_schema = plan.schema();
        Ok(Kernel {
            task_ctx: ctx.task_ctx(),
            plan,
            rows,
            output_schema,
        })
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
}
