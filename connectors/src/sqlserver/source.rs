//! The SQL Server source: a table or a query, read with one SELECT per partition; rows go
//! from tiberius's result stream straight into Arrow builders.
//!
//! `partition: {column, count}` cuts the column's MIN..MAX (integer, date, datetime,
//! datetime2) into ranges ("dynamic range"); NULL keys go with the first range. A partition
//! that has to resume (its connection was lost) reads again in primary-key order and skips
//! the rows it already delivered, so a table read resumes only when it has a primary key.

use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use ferry_engine::channel::ByteBudget;
use ferry_engine::{
    BatchStream, Charge, Checkpoint, Error, Partition, ReadAhead, Result, Source, SourceBatch,
    read_ahead,
};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

use super::connect::{Connector, SqlClient, sql_error};
use super::types::{ColumnBuilder, MsType, OFFSET_OF_KEY, arrow_field, offset_field, value_bytes};
use super::{Partitioning, ReadTarget, SqlServerSourceSpec, quote, string_literal};
use crate::ranges::{boundaries, range_filters, range_filters_left};

/// A partition's private description.
#[derive(Debug, Serialize, Deserialize)]
struct PartitionPlan {
    /// The WHERE clause of this partition, if any.
    filter: Option<String>,
}

/// Reads a SQL Server table or query.
pub struct SqlServerSource {
    connector: Connector,
    /// `[schema].[table]`, or `(query) AS [ferry_source]`.
    from: String,
    /// The quoted column list.
    columns: String,
    schema: SchemaRef,
    types: Vec<MsType>,
    /// Primary key columns, quoted: the order a resumed read needs.
    order_by: Option<String>,
    partition: Option<Partitioning>,
    /// The table, quoted, for a physical split.
    table: Option<String>,
    batch_rows: usize,
    /// Bytes of values after which a batch ends before `batch_rows`.
    batch_bytes: usize,
}

impl std::fmt::Debug for SqlServerSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlServerSource")
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}

/// Runs `sql` and returns its rows' text cells by column name.
async fn query_rows(
    client: &mut SqlClient,
    connector: &Connector,
    what: &str,
    sql: &str,
) -> Result<Vec<tiberius::Row>> {
    client
        .simple_query(sql)
        .await
        .map_err(|e| sql_error(connector, what, e))?
        .into_first_result()
        .await
        .map_err(|e| sql_error(connector, what, e))
}

impl SqlServerSource {
    /// Describes the table or query (its columns and their types) and checks the partition
    /// column; reads metadata only.
    pub async fn new(
        spec: &SqlServerSourceSpec,
        connector: Connector,
        batch_rows: usize,
        batch_bytes: usize,
    ) -> Result<Self> {
        let mut client = connector.connect().await?;
        let (select_all, from, table) = match spec.target()? {
            ReadTarget::Table(table) => {
                let quoted = table.quoted();
                (
                    format!("SELECT * FROM {quoted}"),
                    quoted.clone(),
                    Some(quoted),
                )
            }
            ReadTarget::Query(query) => (
                query.to_string(),
                format!("({query}) AS [ferry_source]"),
                None,
            ),
        };
        let described = query_rows(
            &mut client,
            &connector,
            "cannot describe the source",
            &format!(
                "EXEC sp_describe_first_result_set {}",
                string_literal(&select_all)
            ),
        )
        .await
        .map_err(|e| match (&table, e.kind()) {
            (Some(t), ferry_engine::ErrorKind::InvalidInput) => Error::invalid_input(format!(
                "table {t} does not exist in the database of connection `{}` (or the login cannot see it)",
                connector.name()
            )),
            _ => e,
        })?;
        let mut fields = Vec::new();
        let mut types = Vec::new();
        for row in &described {
            let name: &str = row.try_get("name").ok().flatten().unwrap_or("");
            let type_name: &str = row.try_get("system_type_name").ok().flatten().unwrap_or("");
            let nullable: bool = row.try_get("is_nullable").ok().flatten().unwrap_or(true);
            if name.is_empty() {
                return Err(Error::config(format!(
                    "a column of the source has no name ({type_name}); give every expression of the query a name (`AS name`)"
                )));
            }
            let (field, ty) = arrow_field(name, type_name, nullable)?;
            fields.push(field);
            if let MsType::DateTimeOffset(_) = ty {
                fields.push(offset_field(name, nullable));
            }
            types.push(ty);
        }
        if fields.is_empty() {
            return Err(Error::config("the source has no columns"));
        }
        for (i, f) in fields.iter().enumerate() {
            if fields[..i].iter().any(|g| g.name() == f.name()) {
                return Err(Error::config(format!(
                    "the source has two columns named `{}` (a datetimeoffset's offsets go to `<column>_offset_minutes`); rename one with `AS` in a `query`",
                    f.name()
                )));
            }
        }
        let order_by = match &table {
            Some(t) => {
                let keys = query_rows(
                    &mut client,
                    &connector,
                    "cannot read the table's primary key",
                    &format!(
                        "SELECT c.name FROM sys.indexes i \
                         JOIN sys.index_columns ic ON ic.object_id = i.object_id AND ic.index_id = i.index_id \
                         JOIN sys.columns c ON c.object_id = ic.object_id AND c.column_id = ic.column_id \
                         WHERE i.is_primary_key = 1 AND i.object_id = OBJECT_ID({}) ORDER BY ic.key_ordinal",
                        string_literal(t)
                    ),
                )
                .await?;
                let names: Vec<String> = keys
                    .iter()
                    .filter_map(|r| r.get::<&str, _>(0).map(quote))
                    .collect();
                (!names.is_empty()).then(|| names.join(", "))
            }
            None => None,
        };
        if matches!(spec.partition, Some(Partitioning::Physical(_))) && table.is_none() {
            return Err(Error::config(
                "`partition: \"physical\"` reads the partitions of a table; a `query` has none: give `partition: {column, count}`",
            ));
        }
        if let Some(Partitioning::Ranges(p)) = &spec.partition
            && let Some(column) = &p.column
        {
            let i = fields
                .iter()
                .filter(|f| !f.metadata().contains_key(OFFSET_OF_KEY))
                .position(|f| f.name() == column)
                .ok_or_else(|| {
                    Error::config(format!(
                        "partition column `{column}` is not a column of the source"
                    ))
                })?;
            if !matches!(
                types[i],
                MsType::TinyInt
                    | MsType::SmallInt
                    | MsType::Int
                    | MsType::BigInt
                    | MsType::Date
                    | MsType::DateTime
                    | MsType::SmallDateTime
                    | MsType::DateTime2(_)
            ) {
                return Err(Error::config(format!(
                    "partition column `{column}` is {:?}: use an integer, date, datetime or datetime2 column",
                    types[i]
                )));
            }
        }
        // tiberius decodes money as f64, which loses digits: the server casts it exactly.
        let columns = fields
            .iter()
            .filter(|f| !f.metadata().contains_key(OFFSET_OF_KEY))
            .zip(&types)
            .map(|(f, t)| match t {
                MsType::Money => format!("CAST({0} AS decimal(19,4)) AS {0}", quote(f.name())),
                MsType::SmallMoney => {
                    format!("CAST({0} AS decimal(10,4)) AS {0}", quote(f.name()))
                }
                _ => quote(f.name()),
            })
            .collect::<Vec<_>>()
            .join(", ");
        Ok(SqlServerSource {
            connector,
            from,
            columns,
            schema: Arc::new(Schema::new(fields)),
            types,
            order_by,
            partition: spec.partition.clone(),
            table,
            batch_rows: batch_rows.max(1),
            batch_bytes: batch_bytes.max(1),
        })
    }

    fn select(&self, filter: Option<&str>) -> String {
        let mut sql = format!("SELECT {} FROM {}", self.columns, self.from);
        if let Some(f) = filter {
            sql.push_str(" WHERE ");
            sql.push_str(f);
        }
        if let Some(order) = &self.order_by {
            sql.push_str(" ORDER BY ");
            sql.push_str(order);
        }
        sql
    }

    /// WHERE clauses cutting `column`'s MIN..MAX into `count` ranges.
    async fn range_filters(&self, column: &str, count: usize) -> Result<Vec<String>> {
        let mut client = self.connector.connect().await?;
        let c = quote(column);
        let rows = query_rows(
            &mut client,
            &self.connector,
            "cannot read the partition column's range",
            &format!("SELECT MIN({c}), MAX({c}) FROM {}", self.from),
        )
        .await?;
        let Some(row) = rows.into_iter().next() else {
            return Ok(vec![]);
        };
        let mut cells = row.into_iter();
        let (lo, hi) = (cells.next(), cells.next());
        let as_i64 = |d: &tiberius::ColumnData<'_>| -> Option<i64> {
            use tiberius::ColumnData as D;
            match d {
                D::U8(v) => v.map(i64::from),
                D::I16(v) => v.map(i64::from),
                D::I32(v) => v.map(i64::from),
                D::I64(v) => *v,
                _ => None,
            }
        };
        let as_days = |d: &tiberius::ColumnData<'_>| -> Option<i64> {
            use tiberius::ColumnData as D;
            match d {
                D::Date(v) => v.map(|d| d.days() as i64),
                D::DateTime2(v) => v.map(|d| d.date().days() as i64),
                D::DateTime(v) => v.map(|d| d.days() as i64 + 693_595),
                D::SmallDateTime(v) => v.map(|d| d.days() as i64 + 693_595),
                _ => None,
            }
        };
        let (Some(lo), Some(hi)) = (lo, hi) else {
            return Ok(vec![]);
        };
        let bounds: Vec<String> = if let (Some(a), Some(b)) = (as_i64(&lo), as_i64(&hi)) {
            boundaries(a, b, count)
                .into_iter()
                .map(|v| v.to_string())
                .collect()
        } else if let (Some(a), Some(b)) = (as_days(&lo), as_days(&hi)) {
            // Whole days: a day's rows stay in one partition whatever the time of day.
            boundaries(a, b, count)
                .into_iter()
                .map(|d| format!("'{}'", date_text(d)))
                .collect()
        } else {
            // No non-NULL key: one partition reads everything.
            return Ok(vec![]);
        };
        Ok(range_filters(&c, &bounds))
    }
}

impl SqlServerSource {
    /// WHERE clauses of the table's own partitions: its partition function's boundaries on
    /// its partitioning column (none when the table is not partitioned).
    async fn physical_filters(&self) -> Result<Vec<String>> {
        let Some(table) = &self.table else {
            return Ok(vec![]);
        };
        let mut client = self.connector.connect().await?;
        let rows = query_rows(
            &mut client,
            &self.connector,
            "cannot read the table's partition function",
            &format!(
                "SELECT c.name, CAST(pf.boundary_value_on_right AS int), \
                 CONVERT(nvarchar(4000), prv.value, 126) FROM sys.indexes i \
                 JOIN sys.partition_schemes ps ON ps.data_space_id = i.data_space_id \
                 JOIN sys.partition_functions pf ON pf.function_id = ps.function_id \
                 JOIN sys.index_columns ic ON ic.object_id = i.object_id AND ic.index_id = i.index_id AND ic.partition_ordinal = 1 \
                 JOIN sys.columns c ON c.object_id = ic.object_id AND c.column_id = ic.column_id \
                 JOIN sys.partition_range_values prv ON prv.function_id = pf.function_id \
                 WHERE i.object_id = OBJECT_ID({}) AND i.index_id IN (0, 1) ORDER BY prv.boundary_id",
                string_literal(table)
            ),
        )
        .await?;
        let Some(first) = rows.first() else {
            tracing::info!(table = %table, "`partition: \"physical\"`: the table is not partitioned; one session reads it");
            return Ok(vec![]);
        };
        let column = quote(first.get::<&str, _>(0).unwrap_or_default());
        let right = first.get::<i32, _>(1).unwrap_or(1) == 1;
        let bounds: Vec<String> = rows
            .iter()
            .filter_map(|r| r.get::<&str, _>(2).map(string_literal))
            .collect();
        Ok(if right {
            range_filters(&column, &bounds)
        } else {
            range_filters_left(&column, &bounds)
        })
    }
}

/// `YYYY-MM-DD` of a day counted from 0001-01-01.
fn date_text(days: i64) -> String {
    // Howard Hinnant's civil_from_days, from 1970-01-01.
    let z = days - 719_162 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[async_trait::async_trait]
impl Source for SqlServerSource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    async fn plan(&self, parallelism: usize) -> Result<Vec<Partition>> {
        let filters = match &self.partition {
            Some(Partitioning::Physical(_)) => self.physical_filters().await?,
            Some(Partitioning::Ranges(p)) => {
                let count = p.count.map(|c| c.get()).unwrap_or(parallelism).max(1);
                match p.column.as_deref() {
                    Some(column) if count > 1 => self.range_filters(column, count).await?,
                    _ => vec![],
                }
            }
            None => vec![],
        };
        let filters: Vec<Option<String>> = if filters.is_empty() {
            vec![None]
        } else {
            filters.into_iter().map(Some).collect()
        };
        filters
            .into_iter()
            .enumerate()
            .map(|(index, filter)| {
                let description = filter.clone().unwrap_or_else(|| "all rows".to_string());
                Partition::new(index, description, None, &PartitionPlan { filter })
            })
            .collect()
    }

    fn open(
        &self,
        partition: &Partition,
        resume: Option<Checkpoint>,
        budget: &ByteBudget,
    ) -> Result<BatchStream> {
        let plan: PartitionPlan = partition.decode()?;
        let skip = resume.map(|c| c.records).unwrap_or(0);
        let where_ = format!("sqlserver source {}, {partition}", self.from);
        if skip > 0 && self.order_by.is_none() {
            return Err(Error::store(format!(
                "{where_}: the read was interrupted after {skip} rows and cannot resume: without a primary key the rows have no stable order to skip the delivered ones; run the job again (a table with a primary key resumes)"
            )));
        }
        let read = Read {
            connector: self.connector.clone(),
            sql: self.select(plan.filter.as_deref()),
            names: self
                .schema
                .fields()
                .iter()
                .filter(|f| !f.metadata().contains_key(OFFSET_OF_KEY))
                .map(|f| f.name().clone())
                .collect(),
            schema: self.schema.clone(),
            types: self.types.clone(),
            batch_rows: self.batch_rows,
            batch_bytes: self.batch_bytes,
            skip,
            where_,
        };
        let (ahead, rx) = read_ahead(budget, 2);
        // The stream owns the read: dropping it aborts the read, which closes the session.
        let reading = ferry_engine::task::spawn(async move {
            if let Err(e) = read.run(&ahead).await {
                ahead.fail(e).await;
            }
        });
        Ok(ferry_engine::task::owning_stream(rx, reading))
    }

    fn connector(&self) -> &'static str {
        "sqlserver"
    }

    fn notes(&self, partitions: &[Partition]) -> Vec<String> {
        if partitions.len() > 1 {
            vec![format!(
                "the {} partitions read {} in {} sessions, each as the table was when it started: SQL Server has no snapshot that sessions share",
                partitions.len(),
                self.from,
                partitions.len()
            )]
        } else {
            Vec::new()
        }
    }
}

/// One partition's read.
struct Read {
    connector: Connector,
    sql: String,
    /// The result set's column names.
    names: Vec<String>,
    schema: SchemaRef,
    types: Vec<MsType>,
    batch_rows: usize,
    /// Bytes of values after which a batch ends before `batch_rows`.
    batch_bytes: usize,
    skip: u64,
    where_: String,
}

impl Read {
    async fn run(self, ahead: &ReadAhead) -> Result<()> {
        let mut client = self.connector.connect().await?;
        let mut rows = client
            .simple_query(&self.sql)
            .await
            .map_err(|e| sql_error(&self.connector, &self.where_, e))?
            .into_row_stream();
        let new_builders = || -> Vec<ColumnBuilder> {
            self.types
                .iter()
                .map(|t| ColumnBuilder::new(*t, self.batch_rows))
                .collect()
        };
        let mut builders = new_builders();
        let mut position = 0u64;
        let mut in_batch = 0usize;
        let mut bytes = 0usize;
        while let Some(row) = rows
            .try_next()
            .await
            .map_err(|e| sql_error(&self.connector, &self.where_, e))?
        {
            position += 1;
            if position <= self.skip {
                continue;
            }
            for (i, value) in row.into_iter().enumerate() {
                let Some(builder) = builders.get_mut(i) else {
                    break;
                };
                bytes += value_bytes(&value);
                builder.append(value).map_err(|why| {
                    Error::data(format!(
                        "{}, row {position}, column `{}`: {why}",
                        self.where_, self.names[i]
                    ))
                })?;
            }
            in_batch += 1;
            if in_batch == self.batch_rows || bytes >= self.batch_bytes {
                let batch = self.finish(&mut builders, position)?;
                if !ahead.send(batch).await {
                    return Ok(());
                }
                builders = new_builders();
                in_batch = 0;
                bytes = 0;
            }
        }
        if in_batch > 0 {
            let batch = self.finish(&mut builders, position)?;
            ahead.send(batch).await;
        }
        Ok(())
    }

    fn finish(&self, builders: &mut [ColumnBuilder], position: u64) -> Result<SourceBatch> {
        let mut arrays = Vec::with_capacity(self.schema.fields().len());
        let mut at = 0;
        for b in builders.iter_mut() {
            let width = b.width();
            b.finish_into(&self.schema.fields()[at..at + width], &mut arrays);
            at += width;
        }
        let batch = RecordBatch::try_new(self.schema.clone(), arrays)
            .map_err(|e| Error::internal(format!("{}: {e}", self.where_)))?;
        Ok(SourceBatch {
            input_bytes: batch.get_array_memory_size() as u64,
            batch,
            checkpoint: Checkpoint {
                records: position,
                position: None,
                line: None,
            },
            skipped: vec![],
            charge: Charge::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_print_as_iso() {
        assert_eq!(date_text(0), "0001-01-01");
        assert_eq!(date_text(719_162), "1970-01-01");
        assert_eq!(date_text(3_652_058), "9999-12-31");
        assert_eq!(date_text(738_944), "2024-02-29");
    }
}
