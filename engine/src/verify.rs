//! Data consistency figures for `verify: true`: the row count, an order-independent checksum
//! of the rows (the wrapping sum of the XXH3-64 hash of each row's canonical bytes), and per
//! column the count of NULLs and the same checksum of its values (which names the column
//! that differs). They are computed as batches pass to the sink, summed
//! over outputs, and compared with the same figures of the published output read back.
//!
//! A value's canonical bytes are arrow's row format of the value at the *source's* type, so
//! an output read back as another type (text from CSV, numeric from a table) is cast to the
//! source's type first: what is compared is the value, not its storage.

use arrow::array::{Array, ArrayRef, RecordBatch};
use arrow::compute::CastOptions;
use arrow::datatypes::SchemaRef;
use arrow::row::{RowConverter, SortField};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The figures of one column.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnFigures {
    /// The column's name.
    pub name: String,
    /// NULLs in it.
    pub nulls: u64,
    /// Wrapping sum of the values' hashes (order-independent), in hex.
    pub checksum: String,
    #[serde(skip)]
    sum: u64,
}

/// Row count and per-column checksums of a table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Figures {
    /// Rows.
    pub rows: u64,
    /// Wrapping sum of the rows' hashes (order-independent), in hex.
    pub checksum: String,
    #[serde(skip)]
    sum: u64,
    /// Per column, in the schema's order.
    pub columns: Vec<ColumnFigures>,
    #[serde(skip)]
    schema: Option<SchemaRef>,
}

impl Figures {
    /// Empty figures of tables with `schema`.
    pub fn new(schema: &SchemaRef) -> Self {
        Self {
            rows: 0,
            checksum: format!("{:016x}", 0),
            sum: 0,
            columns: schema
                .fields()
                .iter()
                .map(|f| ColumnFigures {
                    name: f.name().clone(),
                    checksum: format!("{:016x}", 0),
                    ..ColumnFigures::default()
                })
                .collect(),
            schema: Some(schema.clone()),
        }
    }

    /// Adds `batch`, whose columns are this table's (by position), cast to the table's types
    /// when they differ. A value that cannot be cast exactly is an error naming the column.
    pub fn add(&mut self, batch: &RecordBatch) -> Result<()> {
        let schema = self
            .schema
            .clone()
            .ok_or_else(|| Error::internal("figures without a schema"))?;
        if batch.num_columns() != self.columns.len() {
            return Err(Error::data(format!(
                "verify: the output has {} columns, the source {}",
                batch.num_columns(),
                self.columns.len()
            )));
        }
        self.rows += batch.num_rows() as u64;
        let mut columns = Vec::with_capacity(self.columns.len());
        for (i, field) in schema.fields().iter().enumerate() {
            let column = conform(batch.column(i), field.data_type(), field.name())?;
            let figures = &mut self.columns[i];
            figures.nulls += column.null_count() as u64;
            figures.sum = figures
                .sum
                .wrapping_add(checksum(std::slice::from_ref(&column))?);
            figures.checksum = format!("{:016x}", figures.sum);
            columns.push(column);
        }
        if !columns.is_empty() {
            self.sum = self.sum.wrapping_add(checksum(&columns)?);
            self.checksum = format!("{:016x}", self.sum);
        }
        Ok(())
    }

    /// Adds the figures of another part of the same table.
    pub fn merge(&mut self, other: &Figures) {
        self.rows += other.rows;
        self.sum = self.sum.wrapping_add(other.sum);
        self.checksum = format!("{:016x}", self.sum);
        for (mine, theirs) in self.columns.iter_mut().zip(&other.columns) {
            mine.nulls += theirs.nulls;
            mine.sum = mine.sum.wrapping_add(theirs.sum);
            mine.checksum = format!("{:016x}", mine.sum);
        }
    }

    /// What differs between `self` (what was read) and `written` (what was read back), as
    /// sentences; empty when they agree.
    pub fn differences(&self, written: &Figures) -> Vec<String> {
        let mut out = Vec::new();
        if self.rows != written.rows {
            out.push(format!(
                "rows: {} read, {} in the output",
                self.rows, written.rows
            ));
        }
        for (read, back) in self.columns.iter().zip(&written.columns) {
            if read.nulls != back.nulls || read.sum != back.sum {
                out.push(format!(
                    "column `{}`: read {} NULLs and checksum {}, the output {} NULLs and checksum {}",
                    read.name, read.nulls, read.checksum, back.nulls, back.checksum
                ));
            }
        }
        if out.is_empty() && self.sum != written.sum {
            out.push(format!(
                "rows: the same values per column, but not in the same rows (row checksum {} read, {} in the output)",
                self.checksum, written.checksum
            ));
        }
        out
    }
}

/// `array` as `to`, exactly (a value that changes or cannot be converted is an error).
fn conform(array: &ArrayRef, to: &arrow::datatypes::DataType, name: &str) -> Result<ArrayRef> {
    if array.data_type() == to {
        return Ok(array.clone());
    }
    let options = CastOptions {
        safe: false,
        ..CastOptions::default()
    };
    arrow::compute::cast_with_options(array, to, &options).map_err(|e| {
        Error::data(format!(
            "verify: column `{name}` of the output cannot be compared as {to}: {e}"
        ))
    })
}

/// The wrapping sum of the hashes of every row of `columns` (NULLs included, as NULL).
fn checksum(columns: &[ArrayRef]) -> Result<u64> {
    let fields = columns
        .iter()
        .map(|c| SortField::new(c.data_type().clone()))
        .collect();
    let converter =
        RowConverter::new(fields).map_err(|e| Error::internal(format!("verify: {e}")))?;
    let rows = converter
        .convert_columns(columns)
        .map_err(|e| Error::internal(format!("verify: {e}")))?;
    let mut sum = 0u64;
    for row in rows.iter() {
        // XXH3 (64 bits, seed 0): a fixed, documented function, so figures compare across
        // runs and machines.
        sum = sum.wrapping_add(twox_hash::XxHash3_64::oneshot(row.as_ref()));
    }
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Decimal128Array, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    fn table(ids: Vec<Option<i64>>, names: Vec<Option<&str>>) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(StringArray::from(names)),
            ],
        )
        .unwrap()
    }

    #[test]
    fn figures_ignore_order_and_batching_but_see_every_change() {
        let a = table(
            vec![Some(1), Some(2), None],
            vec![Some("a"), None, Some("c")],
        );
        let schema = a.schema();
        let mut whole = Figures::new(&schema);
        whole.add(&a).unwrap();
        // The same rows in another order and other batches.
        let mut parts = Figures::new(&schema);
        let mut first = Figures::new(&schema);
        first.add(&table(vec![None], vec![Some("c")])).unwrap();
        parts
            .add(&table(vec![Some(2), Some(1)], vec![None, Some("a")]))
            .unwrap();
        parts.merge(&first);
        assert_eq!(whole.differences(&parts), Vec::<String>::new());
        assert_eq!(whole.rows, 3);
        assert_eq!(whole.columns[0].nulls, 1);

        // One changed value, a value moved to another row, a NULL become empty: each differs.
        for changed in [
            table(
                vec![Some(1), Some(3), None],
                vec![Some("a"), None, Some("c")],
            ),
            table(
                vec![Some(1), Some(2), None],
                vec![Some("a"), Some("c"), None],
            ),
            table(
                vec![Some(1), Some(2), None],
                vec![Some("a"), Some(""), Some("c")],
            ),
        ] {
            let mut other = Figures::new(&schema);
            other.add(&changed).unwrap();
            assert_eq!(whole.differences(&other).len(), 1, "{other:?}");
        }
        // A lost row changes the count.
        let mut lost = Figures::new(&schema);
        lost.add(&table(vec![Some(1), Some(2)], vec![Some("a"), None]))
            .unwrap();
        assert!(whole.differences(&lost)[0].starts_with("rows: 3 read, 2 in the output"));
    }

    #[test]
    fn an_output_read_back_as_another_type_compares_by_value() {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, true)]));
        let read = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from(vec![Some(5), None]))],
        )
        .unwrap();
        let mut a = Figures::new(&schema);
        a.add(&read).unwrap();
        // The same values as numeric(10,2), and as text.
        let as_decimal = Decimal128Array::from(vec![Some(500), None])
            .with_precision_and_scale(10, 2)
            .unwrap();
        let as_text = StringArray::from(vec![Some("5"), None]);
        for column in [Arc::new(as_decimal) as ArrayRef, Arc::new(as_text)] {
            let field = Field::new("n", column.data_type().clone(), true);
            let back =
                RecordBatch::try_new(Arc::new(Schema::new(vec![field])), vec![column]).unwrap();
            let mut b = Figures::new(&schema);
            b.add(&back).unwrap();
            assert!(a.differences(&b).is_empty());
        }
        // A value that cannot be read as the source's type is an error naming the column.
        let text = StringArray::from(vec![Some("five")]);
        let field = Field::new("n", DataType::Utf8, true);
        let back =
            RecordBatch::try_new(Arc::new(Schema::new(vec![field])), vec![Arc::new(text)]).unwrap();
        let mut b = Figures::new(&schema);
        assert!(b.add(&back).unwrap_err().to_string().contains("column `n`"));
    }
}
