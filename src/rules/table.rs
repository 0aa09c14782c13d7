//! The operator tables as rules see them: `assets` (one row per sent asset, context
//! `pair_assets`) and `actions` (one row per retained `crm.action`, context `rep_actions`),
//! built only for the rows a micro-batch changed or a timer brought due.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Int64Array, ListBuilder, StringArray, TimestampMillisecondArray,
    TimestampMillisecondBuilder, UInt32Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;

use datafusion::common::ScalarValue;
use serde_json::{Map, Value, json};

use crate::directory::Directory;
use crate::engine::kernel::Columns;
use crate::event::{Millis, format_time};
use crate::operators::Pair;
use crate::operators::actions::{ActionLog, ActionRow};
use crate::operators::assets::{Asset, AssetIx, AssetJoin};

use super::RuleSlot;

type BatchResult = datafusion::error::Result<RecordBatch>;

/// One operator table: its rows by index, Arrow batches of some of them, and the context rows
/// (the rows' pairs' assets, the rows' reps' actions) that a query rule may join.
pub trait RuleTable {
    type Row: RuleRow;
    fn row(&self, ix: u32) -> Option<&Self::Row>;
    fn row_mut(&mut self, ix: u32) -> Option<&mut Self::Row>;
    /// The rows as a batch; columns outside `need` hold placeholders (defaults of their type).
    fn batch(&self, rows: &[u32], need: Columns, dir: &Directory) -> BatchResult;
    /// Every retained row sharing a context key with one of `rows`, ascending.
    fn closure(&self, rows: &[u32]) -> Vec<u32>;
}

/// A row an alert can be raised on.
pub trait RuleRow {
    /// Alert state per rule of the table, and the earliest `due_at` a rule waits for.
    fn state(&mut self) -> (&mut Vec<RuleSlot>, &mut Millis);
    /// What each rule of the table has decided on the row.
    fn slots(&self) -> &[RuleSlot];
    /// The watermark when late data last changed the row.
    fn late_w(&self) -> Option<Millis>;
    fn pair(&self) -> Pair;
    /// The context key: rows of one group are each other's context (a pair, a rep).
    fn group(&self) -> u64;
    /// What names the alert after the rule: `alert_id` = `<rule>:<key>`.
    fn key(&self) -> &str;
    fn asset_id(&self) -> Option<&str>;
    /// Evidence every alert on this kind of row carries.
    fn evidence(&self, due_at: Millis) -> Map<String, Value>;
    /// What resolved a resolved alert (an event id), if the row knows it.
    fn resolved_by(&self) -> Value;
}

impl RuleRow for Asset {
    fn state(&mut self) -> (&mut Vec<RuleSlot>, &mut Millis) {
        (&mut self.alerts, &mut self.decision_due)
    }
    fn slots(&self) -> &[RuleSlot] {
        &self.alerts
    }
    fn late_w(&self) -> Option<Millis> {
        self.late_w
    }
    fn pair(&self) -> Pair {
        self.pair
    }
    fn group(&self) -> u64 {
        self.pair.0
    }
    fn key(&self) -> &str {
        &self.asset_id
    }
    fn asset_id(&self) -> Option<&str> {
        Some(&self.asset_id)
    }
    /// Counts cover effective times [sent_at, due_at] (EVENTS.md §8).
    fn evidence(&self, due_at: Millis) -> Map<String, Value> {
        let counted: Vec<Millis> = self
            .counted
            .iter()
            .copied()
            .filter(|t| *t <= due_at)
            .collect();
        let excluded = self.excluded.iter().filter(|t| **t <= due_at).count();
        let mut m = Map::new();
        m.insert("quote_sent_at".into(), json!(format_time(self.sent_at)));
        m.insert("counted_opens".into(), json!(counted.len()));
        m.insert("excluded_opens".into(), json!(excluded));
        m.insert(
            "last_open_at".into(),
            counted
                .last()
                .map_or(Value::Null, |t| json!(format_time(*t))),
        );
        m.insert("customer_online_at_send".into(), json!(self.online_at_send));
        m.insert("product_page_visits_30m".into(), json!(self.product_visits));
        m
    }
    fn resolved_by(&self) -> Value {
        self.first_contract
            .as_ref()
            .map_or(Value::Null, |(_, id)| json!(id))
    }
}

impl RuleRow for ActionRow {
    fn state(&mut self) -> (&mut Vec<RuleSlot>, &mut Millis) {
        (&mut self.alerts, &mut self.decision_due)
    }
    fn slots(&self) -> &[RuleSlot] {
        &self.alerts
    }
    fn late_w(&self) -> Option<Millis> {
        self.late_w
    }
    fn pair(&self) -> Pair {
        self.pair
    }
    fn group(&self) -> u64 {
        self.pair.rep() as u64
    }
    fn key(&self) -> &str {
        &self.event_id
    }
    fn asset_id(&self) -> Option<&str> {
        self.asset_id.as_deref()
    }
    fn evidence(&self, _due_at: Millis) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("event_id".into(), json!(self.event_id));
        m.insert("action".into(), json!(self.action.as_str()));
        m.insert("action_at".into(), json!(format_time(self.at)));
        m.insert(
            "channel".into(),
            self.channel.map_or(Value::Null, |c| json!(c.as_str())),
        );
        m.insert(
            "city".into(),
            self.city.as_deref().map_or(Value::Null, |c| json!(c)),
        );
        m
    }
    fn resolved_by(&self) -> Value {
        Value::Null
    }
}

impl RuleTable for AssetJoin {
    type Row = Asset;
    fn row(&self, ix: u32) -> Option<&Asset> {
        self.asset(ix)
    }
    fn row_mut(&mut self, ix: u32) -> Option<&mut Asset> {
        self.asset_mut(ix)
    }
    fn batch(&self, rows: &[u32], need: Columns, dir: &Directory) -> BatchResult {
        assets_batch(rows, need, self, dir)
    }
    fn closure(&self, rows: &[u32]) -> Vec<u32> {
        let mut pairs: Vec<_> = rows
            .iter()
            .filter_map(|ix| self.asset(*ix).map(|a| a.pair))
            .collect();
        pairs.sort_unstable();
        pairs.dedup();
        let mut all: Vec<AssetIx> = pairs
            .iter()
            .flat_map(|p| self.assets_of(*p).iter().copied())
            .filter(|ix| self.asset(*ix).is_some())
            .collect();
        all.sort_unstable();
        all
    }
}

impl RuleTable for ActionLog {
    type Row = ActionRow;
    fn row(&self, ix: u32) -> Option<&ActionRow> {
        ActionLog::row(self, ix)
    }
    fn row_mut(&mut self, ix: u32) -> Option<&mut ActionRow> {
        ActionLog::row_mut(self, ix)
    }
    fn batch(&self, rows: &[u32], need: Columns, dir: &Directory) -> BatchResult {
        actions_batch(rows, need, self, dir)
    }
    fn closure(&self, rows: &[u32]) -> Vec<u32> {
        let mut reps: Vec<_> = rows
            .iter()
            .filter_map(|ix| self.row(*ix).map(|a| a.pair.rep()))
            .collect();
        reps.sort_unstable();
        reps.dedup();
        let mut all: Vec<u32> = reps.iter().flat_map(|r| self.rows_of(*r)).collect();
        all.sort_unstable();
        all
    }
}

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

/// A column of `ts()` values.
fn utc(v: TimestampMillisecondArray) -> ArrayRef {
    Arc::new(v.with_timezone("UTC"))
}

/// Columns of `assets` (README "Rules" lists them with their meaning).
pub fn assets_schema() -> SchemaRef {
    static SCHEMA: std::sync::LazyLock<SchemaRef> = std::sync::LazyLock::new(|| {
        Arc::new(Schema::new(vec![
            Field::new("__row", DataType::UInt32, false),
            Field::new("asset_id", DataType::Utf8, false),
            Field::new("rep_id", DataType::Utf8, false),
            Field::new("customer_id", DataType::Utf8, false),
            Field::new("region", DataType::Utf8, false),
            Field::new("action", DataType::Utf8, false),
            Field::new("channel", DataType::Utf8, true),
            Field::new("sent_at", ts(), false),
            Field::new("counted_opens", DataType::Int64, false),
            Field::new("excluded_opens", DataType::Int64, false),
            Field::new(
                "counted_open_times",
                DataType::List(Arc::new(Field::new("item", ts(), true))),
                false,
            ),
            Field::new("last_open_at", ts(), true),
            Field::new("first_contract_at", ts(), true),
            Field::new("customer_online_at_send", DataType::Boolean, false),
            Field::new("product_page_visits_30m", DataType::Int64, false),
        ]))
    });
    SCHEMA.clone()
}

/// Builds a batch column by column, each only when `need` has it (else its type's default).
struct ColumnBuilder {
    schema: SchemaRef,
    need: Columns,
    rows: usize,
    columns: Vec<ArrayRef>,
}

impl ColumnBuilder {
    fn new(schema: SchemaRef, need: Columns, rows: usize) -> ColumnBuilder {
        ColumnBuilder {
            columns: Vec::with_capacity(schema.fields().len()),
            schema,
            need,
            rows,
        }
    }

    fn push(&mut self, build: impl FnOnce() -> ArrayRef) -> datafusion::error::Result<()> {
        let i = self.columns.len();
        let column = if self.need.contains(i) {
            build()
        } else {
            ScalarValue::new_default(self.schema.field(i).data_type())?
                .to_array_of_size(self.rows)?
        };
        self.columns.push(column);
        Ok(())
    }

    fn finish(self) -> datafusion::error::Result<RecordBatch> {
        Ok(RecordBatch::try_new(self.schema, self.columns)?)
    }
}

pub fn assets_batch(
    rows: &[AssetIx],
    need: Columns,
    assets: &AssetJoin,
    dir: &Directory,
) -> datafusion::error::Result<RecordBatch> {
    let list: Vec<_> = rows
        .iter()
        .filter_map(|ix| assets.asset(*ix).map(|a| (*ix, a)))
        .collect();
    let mut b = ColumnBuilder::new(assets_schema(), need, list.len());
    b.push(|| {
        Arc::new(UInt32Array::from_iter_values(
            list.iter().map(|(ix, _)| *ix),
        ))
    })?;
    b.push(|| {
        Arc::new(StringArray::from_iter_values(
            list.iter().map(|(_, a)| &*a.asset_id),
        ))
    })?;
    pair_columns(
        &mut b,
        list.iter().map(|(_, a)| (a.pair, a.action, a.channel)),
        dir,
    )?;
    b.push(|| {
        utc(TimestampMillisecondArray::from_iter_values(
            list.iter().map(|(_, a)| a.sent_at),
        ))
    })?;
    b.push(|| {
        Arc::new(Int64Array::from_iter_values(
            list.iter().map(|(_, a)| a.counted.len() as i64),
        ))
    })?;
    b.push(|| {
        Arc::new(Int64Array::from_iter_values(
            list.iter().map(|(_, a)| a.excluded.len() as i64),
        ))
    })?;
    b.push(|| {
        let mut times = ListBuilder::new(TimestampMillisecondBuilder::new().with_timezone("UTC"))
            .with_field(Arc::new(Field::new("item", ts(), true)));
        for (_, a) in &list {
            for t in &a.counted {
                times.values().append_value(*t);
            }
            times.append(true);
        }
        Arc::new(times.finish())
    })?;
    b.push(|| {
        utc(TimestampMillisecondArray::from_iter(
            list.iter().map(|(_, a)| a.counted.last().copied()),
        ))
    })?;
    b.push(|| {
        utc(TimestampMillisecondArray::from_iter(
            list.iter()
                .map(|(_, a)| a.first_contract.as_ref().map(|(t, _)| *t)),
        ))
    })?;
    b.push(|| {
        Arc::new(BooleanArray::from_iter(
            list.iter().map(|(_, a)| Some(a.online_at_send)),
        ))
    })?;
    b.push(|| {
        Arc::new(Int64Array::from_iter_values(
            list.iter().map(|(_, a)| a.product_visits as i64),
        ))
    })?;
    b.finish()
}

/// Columns of `actions` (README "Rules" lists them with their meaning).
pub fn actions_schema() -> SchemaRef {
    static SCHEMA: std::sync::LazyLock<SchemaRef> = std::sync::LazyLock::new(|| {
        Arc::new(Schema::new(vec![
            Field::new("__row", DataType::UInt32, false),
            Field::new("event_id", DataType::Utf8, false),
            Field::new("rep_id", DataType::Utf8, false),
            Field::new("customer_id", DataType::Utf8, false),
            Field::new("region", DataType::Utf8, false),
            Field::new("action", DataType::Utf8, false),
            Field::new("channel", DataType::Utf8, true),
            Field::new("city", DataType::Utf8, true),
            Field::new("asset_id", DataType::Utf8, true),
            Field::new("at", ts(), false),
        ]))
    });
    SCHEMA.clone()
}

/// `rep_id`, `customer_id`, `region`, `action`, `channel`: the columns both tables share.
fn pair_columns(
    b: &mut ColumnBuilder,
    rows: impl Iterator<Item = (Pair, crate::event::Action, Option<crate::event::Channel>)> + Clone,
    dir: &Directory,
) -> datafusion::error::Result<()> {
    let r = rows.clone();
    b.push(|| {
        Arc::new(StringArray::from_iter_values(
            r.map(|(p, _, _)| dir.rep_id(p.rep())),
        ))
    })?;
    let r = rows.clone();
    b.push(|| {
        Arc::new(StringArray::from_iter_values(
            r.map(|(p, _, _)| dir.customer_id(p.customer())),
        ))
    })?;
    let r = rows.clone();
    b.push(|| {
        Arc::new(StringArray::from_iter_values(
            r.map(|(p, _, _)| dir.region_of(p.rep())),
        ))
    })?;
    let r = rows.clone();
    b.push(|| Arc::new(StringArray::from_iter_values(r.map(|(_, a, _)| a.as_str()))))?;
    b.push(|| {
        Arc::new(StringArray::from_iter(
            rows.map(|(_, _, c)| c.map(|c| c.as_str())),
        ))
    })
}

pub fn actions_batch(
    rows: &[u32],
    need: Columns,
    log: &ActionLog,
    dir: &Directory,
) -> datafusion::error::Result<RecordBatch> {
    let list: Vec<_> = rows
        .iter()
        .filter_map(|ix| log.row(*ix).map(|a| (*ix, a)))
        .collect();
    let mut b = ColumnBuilder::new(actions_schema(), need, list.len());
    b.push(|| {
        Arc::new(UInt32Array::from_iter_values(
            list.iter().map(|(ix, _)| *ix),
        ))
    })?;
    b.push(|| {
        Arc::new(StringArray::from_iter_values(
            list.iter().map(|(_, a)| &*a.event_id),
        ))
    })?;
    pair_columns(
        &mut b,
        list.iter().map(|(_, a)| (a.pair, a.action, a.channel)),
        dir,
    )?;
    b.push(|| {
        Arc::new(StringArray::from_iter(
            list.iter().map(|(_, a)| a.city.as_deref()),
        ))
    })?;
    b.push(|| {
        Arc::new(StringArray::from_iter(
            list.iter().map(|(_, a)| a.asset_id.as_deref()),
        ))
    })?;
    b.push(|| {
        utc(TimestampMillisecondArray::from_iter_values(
            list.iter().map(|(_, a)| a.at),
        ))
    })?;
    b.finish()
}
