//! The SQL Server sink: one session and one transaction per job. It empties or (re)creates
//! the table as the mode asks, streams the rows with a TDS bulk load (tiberius
//! `bulk_insert`), and commits only when the whole job succeeded: a failed, cancelled or
//! killed run leaves none of its rows (the server rolls back when the session ends).
//!
//! Batches reach the session's task as Arrow IPC (the engine's writers take bytes); the task
//! turns each row into the target columns' values with checked casts (a value that does not
//! fit fails the job naming its row and column; nothing is rounded silently) and hands them
//! to the bulk load. Values are built at each column's own scale, so tiberius never rescales.

use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Field, SchemaRef, TimeUnit};
use bytes::Bytes;
use ferry_engine::{
    Committed, Error, OpenOutput, OutputLayout, OutputWriter, PreparedSink, Result, Sink,
    StagedOutput,
};
use tiberius::time::{Date, DateTime, DateTime2, SmallDateTime, Time};
use tiberius::{ColumnData, TokenRow};
use tokio::sync::mpsc;

use super::connect::{Connector, SqlClient, sql_error};
use super::types::{MsType, OFFSET_OF_KEY, TYPE_KEY, offset_column};
use super::{SqlServerSinkSpec, SqlServerWriteMode, quote, string_literal};

/// The longest value of a (max) column tiberius 0.13 bulk-loads: it checks a (max) value
/// against 65,535 bytes as if it were a sized column.
const MAX_BULK_VALUE: usize = 65_535;

fn too_long(bytes: usize) -> String {
    format!(
        "is {bytes} bytes long; the bulk load of the client library ferry uses (tiberius 0.13) takes (max) values of at most {MAX_BULK_VALUE} bytes; split the value, or load this table with another tool"
    )
}

const DAYS_TO_EPOCH: i64 = 719_162;
const DAYS_TO_1900: i64 = 693_595;

/// A target column: its name, type and maximum length (characters or bytes).
#[derive(Debug, Clone)]
struct Target {
    /// The source field (batch column) that fills it.
    source: usize,
    /// For a datetimeoffset: the source field holding the offsets, if any.
    offsets: Option<usize>,
    name: String,
    ty: MsType,
    type_name: String,
    max_len: Option<usize>,
    nullable: bool,
    /// The scale its values travel at, when not the column's own (see [`LoadPlan::via`]).
    send_scale: Option<u8>,
    /// A smalldatetime whose values travel as datetime (see [`LoadPlan::via`]).
    send_datetime: bool,
}

/// What `prepare` worked out for every attempt of the load.
#[derive(Debug)]
struct LoadPlan {
    /// SQL run in the transaction before the bulk load.
    setup: Vec<String>,
    /// `[schema].[table]`.
    table: String,
    /// The target of each source field, in the source's order.
    targets: Vec<Target>,
    table_lock: bool,
    /// A session table the rows are bulk-loaded into first, with its DDL and the INSERT
    /// that moves them to the table in the same transaction. tiberius 0.13 declares time(n)
    /// and datetimeoffset(n) in `INSERT BULK` without their scale, and a nullable
    /// smalldatetime as datetime, which a server refuses ("invalid column attribute from bcp
    /// client"), so such tables load through columns of scale 7 and datetime (the values
    /// were checked exact at the column's own type).
    via: Option<(String, String)>,
}

/// The session table of a load through one (`LoadPlan::via`).
const LOAD_TABLE: &str = "#ferry_load";

/// Writes into a SQL Server table.
pub struct SqlServerSink {
    connector: Connector,
    spec: SqlServerSinkSpec,
}

impl SqlServerSink {
    /// A sink for `spec`; nothing is checked until `prepare`.
    pub fn new(spec: SqlServerSinkSpec, connector: Connector) -> Self {
        SqlServerSink { connector, spec }
    }

    /// The table's columns, or `None` when it does not exist.
    async fn describe(&self, client: &mut SqlClient) -> Result<Option<Vec<Target>>> {
        let sql = format!(
            "EXEC sp_describe_first_result_set {}",
            string_literal(&format!("SELECT * FROM {}", self.spec.table.quoted()))
        );
        let rows = match client.simple_query(sql).await {
            Ok(stream) => stream.into_first_result().await,
            Err(e) => Err(e),
        };
        let rows = match rows {
            Ok(rows) => rows,
            Err(tiberius::error::Error::Server(e)) if e.code() == 208 || e.code() == 11529 => {
                return Ok(None);
            }
            Err(e) => return Err(sql_error(&self.connector, "cannot describe the table", e)),
        };
        let mut targets = Vec::new();
        for row in &rows {
            let name: &str = row.try_get("name").ok().flatten().unwrap_or("");
            let type_name: &str = row.try_get("system_type_name").ok().flatten().unwrap_or("");
            let nullable: bool = row.try_get("is_nullable").ok().flatten().unwrap_or(true);
            targets.push(target(name, type_name, nullable));
        }
        Ok(Some(targets))
    }
}

fn target(name: &str, type_name: &str, nullable: bool) -> Target {
    let lower = type_name.to_ascii_lowercase();
    let max_len = lower
        .split_once('(')
        .and_then(|(_, rest)| rest.trim_end_matches(')').trim().parse::<usize>().ok())
        .filter(|_| {
            [
                "char",
                "varchar",
                "nchar",
                "nvarchar",
                "binary",
                "varbinary",
            ]
            .contains(&lower.split('(').next().unwrap_or("").trim())
        });
    Target {
        source: 0,
        offsets: None,
        name: name.to_string(),
        // A type ferry does not load (datetimeoffset, sql_variant, ...) fails when a source
        // field goes to it; other columns of it are left to their defaults.
        ty: MsType::parse(type_name).unwrap_or(MsType::Binary),
        type_name: type_name.to_string(),
        max_len,
        nullable,
        send_scale: None,
        send_datetime: false,
    }
}

/// The SQL Server type a table created for `field` gets.
fn type_for(field: &Field) -> Result<String> {
    if let Some(recorded) = field.metadata().get(TYPE_KEY)
        && MsType::parse(recorded).is_ok()
    {
        // The deprecated large types become their (max) successors, which the bulk load
        // takes (and Microsoft recommends).
        return Ok(match recorded.to_ascii_lowercase().as_str() {
            "text" => "varchar(max)".into(),
            "ntext" => "nvarchar(max)".into(),
            "image" => "varbinary(max)".into(),
            _ => recorded.clone(),
        });
    }
    let unit_scale = |u: &TimeUnit| match u {
        TimeUnit::Second => 0,
        TimeUnit::Millisecond => 3,
        TimeUnit::Microsecond => 6,
        TimeUnit::Nanosecond => 7,
    };
    Ok(match field.data_type() {
        DataType::Boolean => "bit".into(),
        DataType::UInt8 => "tinyint".into(),
        DataType::Int8 | DataType::Int16 => "smallint".into(),
        DataType::UInt16 | DataType::Int32 => "int".into(),
        DataType::UInt32 | DataType::Int64 => "bigint".into(),
        DataType::UInt64 => "decimal(20,0)".into(),
        DataType::Float16 | DataType::Float32 => "real".into(),
        DataType::Float64 => "float".into(),
        DataType::Decimal128(p, s) if *s >= 0 => format!("decimal({p},{s})"),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "nvarchar(max)".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "varbinary(max)".into(),
        DataType::FixedSizeBinary(16)
            if field
                .metadata()
                .get("ARROW:extension:name")
                .map(String::as_str)
                == Some("arrow.uuid") =>
        {
            "uniqueidentifier".into()
        }
        DataType::FixedSizeBinary(n) if *n <= 8000 => format!("binary({n})"),
        DataType::Date32 | DataType::Date64 => "date".into(),
        DataType::Time32(u) | DataType::Time64(u) => format!("time({})", unit_scale(u)),
        DataType::Timestamp(u, _) => format!("datetime2({})", unit_scale(u)),
        other => {
            return Err(Error::invalid_input(format!(
                "column `{}` is {other}, which has no SQL Server type ferry loads; select it as text in the source, or leave it out",
                field.name()
            )));
        }
    })
}

/// Whether Arrow type `from` can load into `to` (values are checked one by one).
fn loads_into(from: &DataType, to: MsType) -> bool {
    use DataType as A;
    let int = from.is_integer();
    match to {
        MsType::Bit => matches!(from, A::Boolean),
        MsType::TinyInt | MsType::SmallInt | MsType::Int | MsType::BigInt => int,
        MsType::Real | MsType::Float => int || from.is_floating(),
        MsType::Decimal(..) | MsType::Money | MsType::SmallMoney => {
            int || matches!(from, A::Decimal128(..))
        }
        MsType::Text => matches!(from, A::Utf8 | A::LargeUtf8 | A::Utf8View),
        MsType::Binary => matches!(
            from,
            A::Binary | A::LargeBinary | A::BinaryView | A::FixedSizeBinary(_)
        ),
        MsType::Guid => matches!(from, A::FixedSizeBinary(16)),
        MsType::Date => matches!(from, A::Date32 | A::Date64),
        MsType::Time(_) => matches!(from, A::Time32(_) | A::Time64(_)),
        MsType::DateTime | MsType::SmallDateTime | MsType::DateTime2(_) => {
            matches!(from, A::Timestamp(..) | A::Date32 | A::Date64)
        }
        MsType::DateTimeOffset(_) => matches!(from, A::Timestamp(..)),
    }
}

#[async_trait::async_trait]
impl Sink for SqlServerSink {
    async fn prepare(&self, schema: &SchemaRef) -> Result<Box<dyn PreparedSink>> {
        let table = &self.spec.table;
        let mut client = self.connector.connect().await?;
        let existing = self.describe(&mut client).await?;
        let mode = self.spec.mode;
        let create = match (&existing, mode) {
            (_, SqlServerWriteMode::Overwrite) => true,
            (None, _) if self.spec.create_table => true,
            (None, _) => {
                return Err(Error::invalid_input(format!(
                    "table {table} does not exist and `create_table` is false; create it or set `create_table: true`"
                )));
            }
            (Some(_), _) => false,
        };
        // A datetimeoffset's offsets travel in a companion field, not a column of their own.
        let companion = |f: &Field| {
            f.metadata().get(OFFSET_OF_KEY).cloned().or_else(|| {
                // Named `<column>_offset_minutes` beside a datetimeoffset column of the table.
                let base = f.name().strip_suffix("_offset_minutes")?;
                existing
                    .as_ref()?
                    .iter()
                    .any(|c| c.name == base && matches!(c.ty, MsType::DateTimeOffset(_)))
                    .then(|| base.to_string())
            })
        };
        let columns: Vec<Target> = if create {
            schema
                .fields()
                .iter()
                .filter(|f| companion(f).is_none())
                .map(|f| Ok(target(f.name(), &type_for(f)?, f.is_nullable())))
                .collect::<Result<_>>()?
        } else {
            existing.clone().unwrap_or_default()
        };
        let mut targets = Vec::with_capacity(schema.fields().len());
        for (index, field) in schema.fields().iter().enumerate() {
            let name = field.name();
            if companion(field).is_some() {
                continue;
            }
            let found = columns
                .iter()
                .find(|c| c.name == *name)
                .or_else(|| columns.iter().find(|c| c.name.eq_ignore_ascii_case(name)))
                .ok_or_else(|| {
                    Error::invalid_input(format!(
                        "table {table} has no column `{name}` that the source has; add the column, or select only the table's columns in the source (columns: {})",
                        columns.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")
                    ))
                })?;
            if ["text", "ntext", "image"].contains(&found.type_name.to_ascii_lowercase().as_str()) {
                return Err(Error::invalid_input(format!(
                    "table {table}, column `{}` is {}, a deprecated type the bulk load cannot fill; change it to {} (`ALTER TABLE ... ALTER COLUMN`)",
                    found.name,
                    found.type_name,
                    match found.type_name.to_ascii_lowercase().as_str() {
                        "text" => "varchar(max)",
                        "ntext" => "nvarchar(max)",
                        _ => "varbinary(max)",
                    }
                )));
            }
            if MsType::parse(&found.type_name).is_err() {
                return Err(Error::invalid_input(format!(
                    "table {table}, column `{}` is {}, which ferry does not load",
                    found.name, found.type_name
                )));
            }
            if !loads_into(field.data_type(), found.ty) {
                return Err(Error::invalid_input(format!(
                    "table {table}, column `{}` is {}: the source's `{name}` ({}) does not load into it",
                    found.name,
                    found.type_name,
                    field.data_type()
                )));
            }
            // The offsets of a datetimeoffset: the companion field, marked, or named so (its
            // mark does not survive every store on the way).
            let offsets = schema
                .fields()
                .iter()
                .position(|f| companion(f).as_deref() == Some(name.as_str()))
                .or_else(|| {
                    matches!(found.ty, MsType::DateTimeOffset(_))
                        .then(|| {
                            schema.fields().iter().position(|f| {
                                f.name() == &offset_column(name) && f.data_type().is_integer()
                            })
                        })
                        .flatten()
                });
            targets.push(Target {
                source: index,
                offsets,
                ..found.clone()
            });
        }
        let narrow = |t: &Target| {
            matches!(t.ty, MsType::Time(n) | MsType::DateTimeOffset(n) if n < 7)
                || t.ty == MsType::SmallDateTime
        };
        let via = targets.iter().any(narrow).then(|| {
            let columns = targets
                .iter()
                .map(|t| {
                    let ty = match t.ty {
                        MsType::Time(n) if n < 7 => "time(7)".to_string(),
                        MsType::DateTimeOffset(n) if n < 7 => "datetimeoffset(7)".to_string(),
                        MsType::SmallDateTime => "datetime".to_string(),
                        _ => t.type_name.clone(),
                    };
                    format!("{} {ty} NULL", quote(&t.name))
                })
                .collect::<Vec<_>>()
                .join(", ");
            let names = targets
                .iter()
                .map(|t| quote(&t.name))
                .collect::<Vec<_>>()
                .join(", ");
            (
                format!("CREATE TABLE {LOAD_TABLE} ({columns})"),
                format!(
                    "INSERT INTO {} ({names}) SELECT {names} FROM {LOAD_TABLE}",
                    table.quoted()
                ),
            )
        });
        if via.is_some() {
            for t in targets.iter_mut().filter(|t| narrow(t)) {
                if t.ty == MsType::SmallDateTime {
                    t.send_datetime = true;
                } else {
                    t.send_scale = Some(7);
                }
            }
        }
        let mut setup = Vec::new();
        let create_sql = format!(
            "CREATE TABLE {} ({})",
            table.quoted(),
            columns
                .iter()
                .map(|c| format!(
                    "{} {}{}",
                    quote(&c.name),
                    c.type_name,
                    if c.nullable { " NULL" } else { " NOT NULL" }
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
        match mode {
            SqlServerWriteMode::Overwrite => {
                setup.push(format!("DROP TABLE IF EXISTS {}", table.quoted()));
                setup.push(create_sql);
            }
            _ if create => setup.push(create_sql),
            SqlServerWriteMode::Truncate => {
                setup.push(format!("TRUNCATE TABLE {}", table.quoted()))
            }
            SqlServerWriteMode::Append => {}
        }
        Ok(Box::new(PreparedLoad {
            connector: self.connector.clone(),
            plan: Arc::new(LoadPlan {
                setup,
                table: table.quoted(),
                targets,
                table_lock: self.spec.table_lock,
                via,
            }),
        }))
    }

    fn connector(&self) -> &'static str {
        "sqlserver"
    }
}

/// One run's load, from its plan.
struct PreparedLoad {
    connector: Connector,
    plan: Arc<LoadPlan>,
}

#[async_trait::async_trait]
impl PreparedSink for PreparedLoad {
    fn layout(&self) -> OutputLayout {
        // One bulk load in one transaction: the whole job commits or nothing does.
        OutputLayout::Single
    }

    async fn open(&self, _schema: &SchemaRef, output: usize) -> Result<OpenOutput> {
        let plan = self.plan.clone();
        let mut client = self.connector.connect().await?;
        let connector = self.connector.clone();
        let what = |sql: &str| format!("table {}: `{sql}` failed", plan.table);
        for sql in ["SET XACT_ABORT ON", "BEGIN TRANSACTION"]
            .into_iter()
            .map(str::to_string)
            .chain(plan.setup.iter().cloned())
            .chain(plan.via.iter().map(|(create, _)| create.clone()))
        {
            client
                .simple_query(sql.clone())
                .await
                .map_err(|e| sql_error(&connector, &what(&sql), e))?
                .into_results()
                .await
                .map_err(|e| sql_error(&connector, &what(&sql), e))?;
        }
        let (tx, rx) = mpsc::channel::<Bytes>(2);
        let task = ferry_engine::task::spawn(load(client, connector, plan.clone(), rx));
        Ok(OpenOutput {
            encoder: Box::new(IpcEncoder),
            writer: Box::new(BulkWriter {
                output,
                table: plan.table.clone(),
                tx: Some(tx),
                task: Some(task),
                bytes: 0,
            }),
        })
    }

    async fn commit(&self, staged: Vec<Box<dyn StagedOutput>>) -> Result<Committed> {
        ferry_engine::sink::publish_all(staged).await?;
        Ok(Committed {
            outputs: vec![self.plan.table.clone()],
            removed: vec![],
        })
    }

    async fn abort(&self, staged: Vec<Box<dyn StagedOutput>>) -> Result<()> {
        ferry_engine::sink::discard_all(staged).await;
        Ok(())
    }
}

/// Batches as Arrow IPC streams: the writer's task reads them back without copying values.
struct IpcEncoder;

impl ferry_engine::Encoder for IpcEncoder {
    fn encode(&mut self, batch: &RecordBatch) -> Result<Option<Bytes>> {
        let mut out = Vec::with_capacity(batch.get_array_memory_size() + 1024);
        let mut writer = arrow::ipc::writer::StreamWriter::try_new(&mut out, &batch.schema())
            .map_err(|e| Error::internal(e.to_string()))?;
        writer
            .write(batch)
            .and_then(|()| writer.finish())
            .map_err(|e| Error::internal(e.to_string()))?;
        drop(writer);
        Ok(Some(Bytes::from(out)))
    }

    fn finish(&mut self) -> Result<Option<Bytes>> {
        Ok(None)
    }
}

/// Hands chunks to the load task.
struct BulkWriter {
    output: usize,
    table: String,
    tx: Option<mpsc::Sender<Bytes>>,
    task: Option<ferry_engine::task::OwnedTask<Result<(SqlClient, u64)>>>,
    bytes: u64,
}

impl BulkWriter {
    /// The load task's error, once it has ended.
    async fn failure(&mut self) -> Error {
        self.tx.take();
        match self.task.take() {
            Some(task) => match task.await {
                Ok(Err(e)) => e,
                Ok(Ok(_)) => Error::internal("the bulk load ended early"),
                Err(e) => Error::internal(format!("the bulk load task failed: {e}")),
            },
            None => Error::internal("the bulk load is gone"),
        }
    }
}

#[async_trait::async_trait]
impl OutputWriter for BulkWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        self.bytes += chunk.len() as u64;
        let sent = match &self.tx {
            Some(tx) => tx.send(chunk).await.is_ok(),
            None => false,
        };
        if sent {
            Ok(())
        } else {
            Err(self.failure().await)
        }
    }

    async fn finish(mut self: Box<Self>) -> Result<Box<dyn StagedOutput>> {
        self.tx.take();
        let task = self
            .task
            .take()
            .ok_or_else(|| Error::internal("the bulk load is gone"))?;
        let (client, rows) = task
            .await
            .map_err(|e| Error::internal(format!("the bulk load task failed: {e}")))??;
        tracing::debug!(table = %self.table, rows, "bulk load sent; waiting for the commit");
        Ok(Box::new(OpenTransaction {
            output: self.output,
            table: self.table.clone(),
            client,
            bytes: self.bytes,
        }))
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        // Dropping the task drops the session, and the server rolls back.
        Ok(())
    }
}

/// Runs the bulk load: decodes the chunks and sends their rows.
async fn load(
    mut client: SqlClient,
    connector: Connector,
    plan: Arc<LoadPlan>,
    mut rx: mpsc::Receiver<Bytes>,
) -> Result<(SqlClient, u64)> {
    let table = plan.table.clone();
    let into = if plan.via.is_some() {
        LOAD_TABLE.to_string()
    } else {
        table.clone()
    };
    let columns: Vec<String> = plan.targets.iter().map(|t| quote(&t.name)).collect();
    let column_refs: Vec<&str> = columns.iter().map(String::as_str).collect();
    let options = if plan.table_lock {
        tiberius::SqlBulkCopyOption::TableLock.into()
    } else {
        tiberius::SqlBulkCopyOptions::empty()
    };
    let mut rows = 0u64;
    {
        let mut bulk = client
            .bulk_insert_with_options(&into, &column_refs, options, &[])
            .await
            .map_err(|e| {
                sql_error(
                    &connector,
                    &format!("table {table}: the bulk load cannot start"),
                    e,
                )
            })?;
        while let Some(chunk) = rx.recv().await {
            let reader =
                arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(chunk), None)
                    .map_err(|e| Error::internal(e.to_string()))?;
            for batch in reader {
                let batch = batch.map_err(|e| Error::internal(e.to_string()))?;
                for r in 0..batch.num_rows() {
                    rows += 1;
                    let mut row = TokenRow::with_capacity(plan.targets.len());
                    for target in &plan.targets {
                        let offset = target.offsets.and_then(|o| {
                            let offsets = batch
                                .column(o)
                                .as_primitive::<arrow::datatypes::Int16Type>();
                            offsets.is_valid(r).then(|| offsets.value(r))
                        });
                        let value = value_at(batch.column(target.source), r, target, offset)
                            .map_err(|why| {
                                Error::data(format!(
                                    "table {table}, row {rows}, column `{}` ({}): {why}",
                                    target.name, target.type_name
                                ))
                            })?;
                        row.push(value);
                    }
                    bulk.send(row).await.map_err(|e| {
                        sql_error(
                            &connector,
                            &format!("table {table}, row {rows}: the bulk load failed"),
                            e,
                        )
                    })?;
                }
            }
        }
        bulk.finalize().await.map_err(|e| {
            sql_error(
                &connector,
                &format!("table {table}: the bulk load failed"),
                e,
            )
        })?;
    }
    if let Some((_, insert)) = &plan.via {
        for sql in [insert.clone(), format!("DROP TABLE {LOAD_TABLE}")] {
            let failed = |e| sql_error(&connector, &format!("table {table}: `{sql}` failed"), e);
            client
                .simple_query(sql.clone())
                .await
                .map_err(failed)?
                .into_results()
                .await
                .map_err(failed)?;
        }
    }
    Ok((client, rows))
}

/// The value of row `r` of `array` for `target`, checked.
fn value_at(
    array: &dyn Array,
    r: usize,
    target: &Target,
    offset: Option<i16>,
) -> std::result::Result<ColumnData<'static>, String> {
    use DataType as A;
    use arrow::datatypes as t;
    let null = array.is_null(r);
    if null && !target.nullable {
        return Err("NULL in a NOT NULL column".into());
    }
    let int = || -> Option<i128> {
        Some(match array.data_type() {
            A::Int8 => array.as_primitive::<t::Int8Type>().value(r) as i128,
            A::Int16 => array.as_primitive::<t::Int16Type>().value(r) as i128,
            A::Int32 => array.as_primitive::<t::Int32Type>().value(r) as i128,
            A::Int64 => array.as_primitive::<t::Int64Type>().value(r) as i128,
            A::UInt8 => array.as_primitive::<t::UInt8Type>().value(r) as i128,
            A::UInt16 => array.as_primitive::<t::UInt16Type>().value(r) as i128,
            A::UInt32 => array.as_primitive::<t::UInt32Type>().value(r) as i128,
            A::UInt64 => array.as_primitive::<t::UInt64Type>().value(r) as i128,
            _ => return None,
        })
    };
    // A decimal value as (unscaled, scale); integers have scale 0.
    let decimal = || -> Option<(i128, u8)> {
        match array.data_type() {
            A::Decimal128(_, s) => {
                Some((array.as_primitive::<t::Decimal128Type>().value(r), *s as u8))
            }
            _ => int().map(|v| (v, 0)),
        }
    };
    let rescale =
        |(v, from): (i128, u8), to: u8, digits: u8| -> std::result::Result<i128, String> {
            let out = if from <= to {
                v.checked_mul(10i128.pow((to - from) as u32))
                    .ok_or("overflows the column")?
            } else {
                let div = 10i128.pow((from - to) as u32);
                if v % div != 0 {
                    return Err(format!(
                        "has {from} digits after the point; the column keeps {to}"
                    ));
                }
                v / div
            };
            if out.unsigned_abs() >= 10u128.pow(digits as u32) {
                return Err("has more digits than the column's precision".into());
            }
            Ok(out)
        };
    // Nanoseconds since the epoch of a timestamp or date.
    let epoch_nanos = || -> Option<i128> {
        Some(match array.data_type() {
            A::Timestamp(u, _) => {
                let v = match u {
                    TimeUnit::Second => array.as_primitive::<t::TimestampSecondType>().value(r),
                    TimeUnit::Millisecond => {
                        array.as_primitive::<t::TimestampMillisecondType>().value(r)
                    }
                    TimeUnit::Microsecond => {
                        array.as_primitive::<t::TimestampMicrosecondType>().value(r)
                    }
                    TimeUnit::Nanosecond => {
                        array.as_primitive::<t::TimestampNanosecondType>().value(r)
                    }
                } as i128;
                v * match u {
                    TimeUnit::Second => 1_000_000_000,
                    TimeUnit::Millisecond => 1_000_000,
                    TimeUnit::Microsecond => 1_000,
                    TimeUnit::Nanosecond => 1,
                }
            }
            A::Date32 => {
                array.as_primitive::<t::Date32Type>().value(r) as i128 * 86_400_000_000_000
            }
            A::Date64 => array.as_primitive::<t::Date64Type>().value(r) as i128 * 1_000_000,
            _ => return None,
        })
    };
    let day_nanos: i128 = 86_400_000_000_000;
    // (days since 0001-01-01, nanoseconds of the day)
    let split = |n: i128| -> (i64, i128) {
        let days = n.div_euclid(day_nanos);
        (
            (days + DAYS_TO_EPOCH as i128) as i64,
            n.rem_euclid(day_nanos),
        )
    };
    let exact_units = |nanos: i128, scale: u8| -> std::result::Result<u64, String> {
        let unit = 10i128.pow(9 - scale as u32);
        if nanos % unit != 0 {
            return Err(format!(
                "has more precision than the column's scale {scale}"
            ));
        }
        Ok((nanos / unit) as u64)
    };
    Ok(match target.ty {
        MsType::Bit => ColumnData::Bit((!null).then(|| array.as_boolean().value(r))),
        MsType::TinyInt => ColumnData::U8(if null {
            None
        } else {
            Some(u8::try_from(int().unwrap_or(-1)).map_err(|_| "is outside tinyint's 0..=255")?)
        }),
        MsType::SmallInt => ColumnData::I16(if null {
            None
        } else {
            Some(
                i16::try_from(int().unwrap_or(i128::MAX))
                    .map_err(|_| "is outside smallint's range")?,
            )
        }),
        MsType::Int => ColumnData::I32(if null {
            None
        } else {
            Some(i32::try_from(int().unwrap_or(i128::MAX)).map_err(|_| "is outside int's range")?)
        }),
        MsType::BigInt => ColumnData::I64(if null {
            None
        } else {
            Some(
                i64::try_from(int().unwrap_or(i128::MAX))
                    .map_err(|_| "is outside bigint's range")?,
            )
        }),
        MsType::Real | MsType::Float => {
            let v = if null {
                None
            } else {
                Some(match array.data_type() {
                    A::Float16 => array.as_primitive::<t::Float16Type>().value(r).to_f64(),
                    A::Float32 => array.as_primitive::<t::Float32Type>().value(r) as f64,
                    A::Float64 => array.as_primitive::<t::Float64Type>().value(r),
                    _ => {
                        let i = int().unwrap_or_default();
                        let f = i as f64;
                        if f as i128 != i {
                            return Err("is an integer a float cannot hold exactly".into());
                        }
                        f
                    }
                })
            };
            if target.ty == MsType::Real {
                match v {
                    Some(v) if (v as f32) as f64 != v && !v.is_nan() => {
                        return Err("does not fit a real (32-bit float) exactly".into());
                    }
                    _ => ColumnData::F32(v.map(|v| v as f32)),
                }
            } else {
                ColumnData::F64(v)
            }
        }
        MsType::Decimal(p, s) => ColumnData::Numeric(match (null, decimal()) {
            (true, _) => None,
            (false, Some(d)) => Some(tiberius::numeric::Numeric::new_with_scale(
                rescale(d, s, p)?,
                s,
            )),
            (false, None) => return Err("is not a number".into()),
        }),
        MsType::Money | MsType::SmallMoney => {
            let digits = if target.ty == MsType::Money { 19 } else { 10 };
            ColumnData::Numeric(match (null, decimal()) {
                (true, _) => None,
                (false, Some(d)) => {
                    let v = rescale(d, 4, digits)?;
                    let fits = if target.ty == MsType::Money {
                        i64::try_from(v).is_ok()
                    } else {
                        i32::try_from(v).is_ok()
                    };
                    if !fits {
                        return Err("is outside the money type's range".into());
                    }
                    Some(tiberius::numeric::Numeric::new_with_scale(v, 4))
                }
                (false, None) => return Err("is not a number".into()),
            })
        }
        MsType::Text => {
            let v: Option<&str> = if null {
                None
            } else {
                Some(match array.data_type() {
                    A::Utf8 => array.as_string::<i32>().value(r),
                    A::LargeUtf8 => array.as_string::<i64>().value(r),
                    _ => array.as_string_view().value(r),
                })
            };
            let wide = target.type_name.to_ascii_lowercase().starts_with('n');
            if let Some(v) = v {
                let len = if wide {
                    v.encode_utf16().count()
                } else {
                    v.len()
                };
                match target.max_len {
                    Some(max) if len > max => {
                        return Err(format!("is {len} characters long; the column holds {max}"));
                    }
                    None if len * (1 + usize::from(wide)) > MAX_BULK_VALUE => {
                        return Err(too_long(len * (1 + usize::from(wide))));
                    }
                    _ => {}
                }
            }
            if target.type_name.eq_ignore_ascii_case("xml") {
                if v == Some("") {
                    return Err(
                        "is an empty XML value, which the bulk load of the client library ferry uses (tiberius 0.13) frames wrongly; load NULL or a document instead".into(),
                    );
                }
                ColumnData::Xml(v.map(|s| std::borrow::Cow::Owned(tiberius::xml::XmlData::new(s))))
            } else {
                ColumnData::String(v.map(|s| std::borrow::Cow::Owned(s.to_string())))
            }
        }
        MsType::Binary => {
            let v: Option<&[u8]> = if null {
                None
            } else {
                Some(match array.data_type() {
                    A::Binary => array.as_binary::<i32>().value(r),
                    A::LargeBinary => array.as_binary::<i64>().value(r),
                    A::FixedSizeBinary(_) => array.as_fixed_size_binary().value(r),
                    _ => array.as_binary_view().value(r),
                })
            };
            match (v, target.max_len) {
                (Some(v), Some(max)) if v.len() > max => {
                    return Err(format!("is {} bytes long; the column holds {max}", v.len()));
                }
                (Some(v), None) if v.len() > MAX_BULK_VALUE => return Err(too_long(v.len())),
                _ => {}
            }
            ColumnData::Binary(v.map(|b| std::borrow::Cow::Owned(b.to_vec())))
        }
        MsType::Guid => ColumnData::Guid(if null {
            None
        } else {
            let bytes: [u8; 16] = array
                .as_fixed_size_binary()
                .value(r)
                .try_into()
                .map_err(|_| "is not 16 bytes")?;
            Some(tiberius::Uuid::from_bytes(bytes))
        }),
        MsType::Date => ColumnData::Date(if null {
            None
        } else {
            let (days, _) = split(epoch_nanos().unwrap_or_default());
            if !(0..3_652_059).contains(&days) {
                return Err("is outside date's 0001-01-01..9999-12-31".into());
            }
            Some(Date::new(days as u32))
        }),
        MsType::Time(scale) => ColumnData::Time(if null {
            None
        } else {
            let nanos: i128 = match array.data_type() {
                A::Time32(TimeUnit::Second) => {
                    array.as_primitive::<t::Time32SecondType>().value(r) as i128 * 1_000_000_000
                }
                A::Time32(_) => {
                    array.as_primitive::<t::Time32MillisecondType>().value(r) as i128 * 1_000_000
                }
                A::Time64(TimeUnit::Microsecond) => {
                    array.as_primitive::<t::Time64MicrosecondType>().value(r) as i128 * 1_000
                }
                _ => array.as_primitive::<t::Time64NanosecondType>().value(r) as i128,
            };
            let units = exact_units(nanos, scale)?;
            Some(match target.send_scale {
                Some(to) => Time::new(units * 10u64.pow((to - scale) as u32), to),
                None => Time::new(units, scale),
            })
        }),
        MsType::DateTime2(scale) => ColumnData::DateTime2(if null {
            None
        } else {
            let (days, nanos) = split(epoch_nanos().unwrap_or_default());
            if !(0..3_652_059).contains(&days) {
                return Err("is outside datetime2's 0001-01-01..9999-12-31".into());
            }
            Some(DateTime2::new(
                Date::new(days as u32),
                Time::new(exact_units(nanos, scale)?, scale),
            ))
        }),
        MsType::DateTimeOffset(scale) => ColumnData::DateTimeOffset(if null {
            None
        } else {
            let (days, nanos) = split(epoch_nanos().unwrap_or_default());
            if !(0..3_652_059).contains(&days) {
                return Err("is outside datetimeoffset's 0001-01-01..9999-12-31".into());
            }
            let offset = offset.unwrap_or(0);
            if !(-840..=840).contains(&offset) {
                return Err(format!(
                    "has an offset of {offset} minutes; SQL Server takes -14:00..+14:00"
                ));
            }
            Some(tiberius::time::DateTimeOffset::new(
                DateTime2::new(Date::new(days as u32), {
                    let units = exact_units(nanos, scale)?;
                    match target.send_scale {
                        Some(to) => Time::new(units * 10u64.pow((to - scale) as u32), to),
                        None => Time::new(units, scale),
                    }
                }),
                offset,
            ))
        }),
        MsType::DateTime => ColumnData::DateTime(if null {
            None
        } else {
            let (days, nanos) = split(epoch_nanos().unwrap_or_default());
            // To the nearest 1/300 s, as the server rounds datetime values.
            let mut ticks = (nanos * 300 + 500_000_000) / 1_000_000_000;
            let mut days = days - DAYS_TO_1900;
            if ticks >= 86_400 * 300 {
                ticks -= 86_400 * 300;
                days += 1;
            }
            if !(-53_690..=2_958_463).contains(&days) {
                return Err("is outside datetime's 1753-01-01..9999-12-31".into());
            }
            Some(DateTime::new(days as i32, ticks as u32))
        }),
        MsType::SmallDateTime => ColumnData::SmallDateTime(if null {
            None
        } else {
            let (days, nanos) = split(epoch_nanos().unwrap_or_default());
            let mut minutes = (nanos + 30_000_000_000) / 60_000_000_000;
            let mut days = days - DAYS_TO_1900;
            if minutes >= 1440 {
                minutes -= 1440;
                days += 1;
            }
            if !(0..=65_535).contains(&days) {
                return Err("is outside smalldatetime's 1900-01-01..2079-06-06".into());
            }
            if target.send_datetime {
                // The same minute as a datetime: 1/300 s ticks.
                return Ok(ColumnData::DateTime(Some(DateTime::new(
                    days as i32,
                    (minutes * 60 * 300) as u32,
                ))));
            }
            Some(SmallDateTime::new(days as u16, minutes as u16))
        }),
    })
}

/// A bulk load that has finished in a transaction waiting for the commit: it owns the
/// session.
struct OpenTransaction {
    output: usize,
    table: String,
    client: SqlClient,
    bytes: u64,
}

impl std::fmt::Debug for OpenTransaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "uncommitted load of table {}", self.table)
    }
}

#[async_trait::async_trait]
impl StagedOutput for OpenTransaction {
    fn output(&self) -> usize {
        self.output
    }

    fn bytes(&self) -> u64 {
        self.bytes
    }

    async fn publish(mut self: Box<Self>) -> Result<Vec<String>> {
        let table = self.table.clone();
        let failed = |e| {
            Error::store(format!(
                "table {table}: the commit failed; nothing was loaded: {e}"
            ))
        };
        self.client
            .simple_query("COMMIT TRANSACTION")
            .await
            .map_err(failed)?
            .into_results()
            .await
            .map_err(failed)?;
        Ok(Vec::new())
    }

    async fn discard(mut self: Box<Self>) -> Result<()> {
        // Ending the session rolls back too; an explicit ROLLBACK ends it promptly.
        if let Ok(stream) = self.client.simple_query("ROLLBACK TRANSACTION").await {
            let _ = stream.into_results().await;
        }
        Ok(())
    }
}
