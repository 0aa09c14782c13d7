//! The `assets` operator table as rules see it: one row per sent asset, built only for the
//! rows a micro-batch changed or a timer brought due.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Int64Array, ListBuilder, StringArray, TimestampMillisecondArray,
    TimestampMillisecondBuilder, UInt32Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;

use crate::directory::Directory;
use crate::operators::assets::{AssetIx, AssetJoin};

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

/// Columns of `assets` (README "Rules" lists them with their meaning).
pub fn assets_schema() -> SchemaRef {
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
}

pub fn assets_batch(
    rows: &[AssetIx],
    assets: &AssetJoin,
    dir: &Directory,
) -> datafusion::error::Result<RecordBatch> {
    let list: Vec<_> = rows
        .iter()
        .filter_map(|ix| assets.asset(*ix).map(|a| (*ix, a)))
        .collect();
    let mut times = ListBuilder::new(TimestampMillisecondBuilder::new().with_timezone("UTC"))
        .with_field(Arc::new(Field::new("item", ts(), true)));
    for (_, a) in &list {
        for t in &a.counted {
            times.values().append_value(*t);
        }
        times.append(true);
    }
    let utc = |v: TimestampMillisecondArray| Arc::new(v.with_timezone("UTC")) as ArrayRef;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from_iter_values(
            list.iter().map(|(ix, _)| *ix),
        )),
        Arc::new(StringArray::from_iter_values(
            list.iter().map(|(_, a)| &*a.asset_id),
        )),
        Arc::new(StringArray::from_iter_values(
            list.iter().map(|(_, a)| dir.rep_id(a.pair.rep())),
        )),
        Arc::new(StringArray::from_iter_values(
            list.iter().map(|(_, a)| dir.customer_id(a.pair.customer())),
        )),
        Arc::new(StringArray::from_iter_values(
            list.iter().map(|(_, a)| dir.region_of(a.pair.rep())),
        )),
        Arc::new(StringArray::from_iter_values(
            list.iter().map(|(_, a)| a.action.as_str()),
        )),
        Arc::new(StringArray::from_iter(
            list.iter().map(|(_, a)| a.channel.map(|c| c.as_str())),
        )),
        utc(TimestampMillisecondArray::from_iter_values(
            list.iter().map(|(_, a)| a.sent_at),
        )),
        Arc::new(Int64Array::from_iter_values(
            list.iter().map(|(_, a)| a.counted.len() as i64),
        )),
        Arc::new(Int64Array::from_iter_values(
            list.iter().map(|(_, a)| a.excluded.len() as i64),
        )),
        Arc::new(times.finish()),
        utc(TimestampMillisecondArray::from_iter(
            list.iter().map(|(_, a)| a.counted.last().copied()),
        )),
        utc(TimestampMillisecondArray::from_iter(
            list.iter()
                .map(|(_, a)| a.first_contract.as_ref().map(|(t, _)| *t)),
        )),
        Arc::new(BooleanArray::from_iter(
            list.iter().map(|(_, a)| Some(a.online_at_send)),
        )),
        Arc::new(Int64Array::from_iter_values(
            list.iter().map(|(_, a)| a.product_visits as i64),
        )),
    ];
    Ok(RecordBatch::try_new(assets_schema(), columns)?)
}
