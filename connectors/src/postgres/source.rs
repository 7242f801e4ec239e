//! The PostgreSQL source: plans key-range or ctid-range partitions inside one exported
//! snapshot, then streams each partition with `COPY (...) TO STDOUT (FORMAT binary)`.
//!
//! Per partition, an async task reads the COPY stream and gathers its messages into chunks of
//! [`CHUNK_BYTES`] (forwarding each small message alone is slow), and a blocking task decodes
//! the chunks into Arrow batches. Both are joined by bounded channels; dropping the batch
//! stream stops both and closes the session. Decoded batches (and the one being decoded) are
//! charged to the job's budget ([`ReadAhead`]); the chunks in flight are bounded by
//! [`CHUNK_QUEUE`] chunks of about [`CHUNK_BYTES`] each (a chunk ends after the COPY message,
//! one row, that crosses [`CHUNK_BYTES`]).

use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};
use bytes::{Bytes, BytesMut};
use ferry_engine::channel::ByteBudget;
use ferry_engine::{
    BatchStream, Charge, Checkpoint, Error, Partition, ReadAhead, Result, Source, SourceBatch,
    read_ahead,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, mpsc};
use tokio_postgres::Client;

use super::connect::{Connector, pg_error};
use super::decode::{CopyDecoder, DecodeError};
use super::ident::{literal, quote};
use super::types::{PgColumn, PgType, arrow_field, columns_of};
use super::{PartitionSpec, PostgresSourceSpec, ReadTarget};
use crate::ranges::{boundaries, range_filters};

/// COPY data is handed to the decoder in chunks of about this size.
pub const CHUNK_BYTES: usize = 512 * 1024;

/// Chunks that may wait for the decoder, per partition.
pub const CHUNK_QUEUE: usize = 4;

/// What is read: a table (by oid and quoted name, with its relkind) or a query.
#[derive(Debug, Clone)]
enum Relation {
    Table {
        name: String,
        oid: i64,
        relkind: String,
    },
    Query(String),
}

/// A partition's private description.
#[derive(Debug, Serialize, Deserialize)]
struct PartitionPlan {
    /// The WHERE clause of this partition, if any.
    filter: Option<String>,
    /// The exported snapshot to read in, if any.
    snapshot: Option<String>,
}

/// Reads a PostgreSQL table or query.
pub struct PostgresSource {
    connector: Connector,
    relation: Relation,
    schema: SchemaRef,
    types: Vec<PgType>,
    partition: Option<PartitionSpec>,
    use_snapshot: bool,
    batch_rows: usize,
    /// Input bytes that end a batch before `batch_rows`.
    batch_bytes: usize,
    /// The session that exported the snapshot; it must stay open while partitions read.
    exporter: Mutex<Option<Client>>,
}

impl std::fmt::Debug for PostgresSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSource")
            .field("relation", &self.relation)
            .finish_non_exhaustive()
    }
}

/// Checks that the partition column, if any, is a column of the source of a type whose
/// range can be cut (integer, date, timestamp).
fn check_partition_column(
    spec: &PostgresSourceSpec,
    columns: &[(PgColumn, bool)],
    types: &[PgType],
) -> Result<()> {
    if let Some(p) = &spec.partition
        && let Some(column) = &p.column
    {
        let i = columns
            .iter()
            .position(|(c, _)| &c.name == column)
            .ok_or_else(|| {
                Error::config(format!(
                    "partition column `{column}` is not a column of the source"
                ))
            })?;
        if !matches!(
            types[i],
            PgType::Int2
                | PgType::Int4
                | PgType::Int8
                | PgType::Date
                | PgType::Timestamp
                | PgType::Timestamptz
        ) {
            return Err(Error::config(format!(
                "partition column `{column}` is {}: use an integer, date or timestamp column",
                columns[i].0.type_name
            )));
        }
    }
    Ok(())
}

/// The relation a source reads, and its columns (with their NOT NULL flags).
async fn resolve(
    client: &tokio_postgres::Client,
    connector: &Connector,
    spec: &PostgresSourceSpec,
) -> Result<(Relation, Vec<(PgColumn, bool)>)> {
    Ok(match spec.target()? {
        ReadTarget::Table(table) => {
            let quoted = table.quoted();
            let row = client
                    .query_opt(
                        "SELECT c.oid::int8, c.oid::regclass::text, c.relkind::text FROM pg_class c WHERE c.oid = to_regclass($1)",
                        &[&quoted],
                    )
                    .await
                    .map_err(|e| pg_error(&format!("cannot look up table `{table}`"), e))?
                    .ok_or_else(|| {
                        Error::invalid_input(format!(
                            "table `{table}` does not exist in the database of connection `{}` (or the user cannot see it)",
                            connector.name()
                        ))
                    })?;
            let oid: i64 = row.get(0);
            let columns = columns_of(client, oid).await?;
            (
                Relation::Table {
                    name: row.get(1),
                    oid,
                    relkind: row.get(2),
                },
                columns,
            )
        }
        ReadTarget::Query(query) => {
            let columns = describe_query(client, query).await?;
            (Relation::Query(query.to_string()), columns)
        }
    })
}

/// Filters that cut table `oid` into `count` ranges of physical pages (ctid), and the
/// table's size in bytes.
async fn page_filters(
    client: &tokio_postgres::Client,
    oid: i64,
    count: usize,
) -> Result<(Vec<String>, u64)> {
    let row = client
        .query_one(
            "SELECT pg_relation_size($1::int8::oid)::int8, current_setting('block_size')::int8",
            &[&oid],
        )
        .await
        .map_err(|e| pg_error("cannot read the table size", e))?;
    let (bytes, block): (i64, i64) = (row.get(0), row.get(1));
    let pages = bytes / block.max(1);
    if pages <= 1 || count == 1 {
        return Ok((vec![], bytes.max(0) as u64));
    }
    let bounds = boundaries(0, pages - 1, count);
    let tid = |p: i64| format!("'({p},0)'::tid");
    let mut filters = vec![format!("ctid < {}", tid(bounds[0]))];
    for pair in bounds.windows(2) {
        filters.push(format!(
            "ctid >= {} AND ctid < {}",
            tid(pair[0]),
            tid(pair[1])
        ));
    }
    filters.push(format!("ctid >= {}", tid(bounds[bounds.len() - 1])));
    Ok((filters, bytes.max(0) as u64))
}

impl PostgresSource {
    /// Connects, resolves the table or describes the query, and maps its columns to Arrow;
    /// fails here, before any data moves, on a missing table or an unsupported type.
    pub async fn new(
        spec: &PostgresSourceSpec,
        connector: Connector,
        batch_rows: usize,
        batch_bytes: usize,
    ) -> Result<Self> {
        let client = connector.connect().await?;
        let (relation, columns) = resolve(&client, &connector, spec).await?;
        if columns.is_empty() {
            return Err(Error::invalid_input(
                "the postgres source has no columns to read",
            ));
        }
        let mut fields = Vec::with_capacity(columns.len());
        let mut types = Vec::with_capacity(columns.len());
        let mut unsupported = Vec::new();
        for (column, not_null) in &columns {
            match &column.kind {
                Ok(kind) => {
                    fields.push(arrow_field(column, kind, *not_null));
                    types.push(kind.clone());
                }
                Err(why) => unsupported.push(why.clone()),
            }
        }
        if !unsupported.is_empty() {
            return Err(Error::invalid_input(unsupported.join("; ")));
        }
        check_partition_column(spec, &columns, &types)?;
        Ok(Self {
            connector,
            relation,
            schema: Arc::new(Schema::new(fields)),
            types,
            partition: spec.partition.clone(),
            use_snapshot: spec.snapshot,
            batch_rows,
            batch_bytes,
            exporter: Mutex::new(None),
        })
    }

    /// Filters that cut partition column `column`'s range into `count` equal ranges.
    async fn range_filters(
        &self,
        client: &tokio_postgres::Client,
        column: &str,
        count: usize,
    ) -> Result<Vec<String>> {
        let i = self.schema.index_of(column).map_err(|_| {
            Error::config(format!(
                "partition column `{column}` is not a column of the source"
            ))
        })?;
        let (expr, render): (String, fn(i64) -> String) = match self.types[i] {
            PgType::Date => ("(c - date '1970-01-01')::int8".into(), |v| {
                format!("(date '1970-01-01' + {v})")
            }),
            PgType::Timestamp => ("(extract(epoch from c) * 1000000)::int8".into(), |v| {
                format!("(timestamp '1970-01-01' + {v} * interval '1 microsecond')")
            }),
            PgType::Timestamptz => ("(extract(epoch from c) * 1000000)::int8".into(), |v| {
                format!("(timestamptz '1970-01-01 00:00:00+00' + {v} * interval '1 microsecond')")
            }),
            _ => ("c::int8".into(), |v| v.to_string()),
        };
        let sql = format!(
            "SELECT min({e}), max({e}) FROM (SELECT {col} AS c FROM ({inner}) AS s) AS t",
            e = expr,
            col = quote(column),
            inner = self.select(None)
        );
        let row = client.query_one(&sql, &[]).await.map_err(|e| {
            pg_error(
                &format!("cannot find the range of partition column `{column}`"),
                e,
            )
        })?;
        let (lo, hi): (Option<i64>, Option<i64>) = (row.get(0), row.get(1));
        Ok(match (lo, hi) {
            (Some(lo), Some(hi)) => {
                let bounds: Vec<String> =
                    boundaries(lo, hi, count).into_iter().map(render).collect();
                range_filters(&quote(column), &bounds)
            }
            _ => vec![],
        })
    }

    /// The `SELECT` that a partition's COPY wraps.
    fn select(&self, filter: Option<&str>) -> String {
        let columns = self
            .schema
            .fields()
            .iter()
            .map(|f| quote(f.name()))
            .collect::<Vec<_>>()
            .join(", ");
        let from = match &self.relation {
            Relation::Table { name, .. } => name.clone(),
            Relation::Query(q) => format!("({q}) AS ferry_q"),
        };
        match filter {
            Some(f) => format!("SELECT {columns} FROM {from} WHERE {f}"),
            None => format!("SELECT {columns} FROM {from}"),
        }
    }

    /// Opens the snapshot-exporting session and returns the snapshot id; None if the server
    /// does not allow it (the partitions then read without a common snapshot).
    async fn export_snapshot(&self) -> Result<Option<(String, Client)>> {
        let client = self.connector.connect().await?;
        let exported = async {
            client
                .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await?;
            client.query_one("SELECT pg_export_snapshot()", &[]).await
        }
        .await;
        match exported {
            Ok(row) => Ok(Some((row.get(0), client))),
            Err(e) => {
                tracing::warn!(error = %e, "cannot export a snapshot; partitions read without a common snapshot");
                Ok(None)
            }
        }
    }
}

/// Describes a query's columns through a temporary view, so that the catalog gives each
/// column's typmod (numeric precision and scale) too.
async fn describe_query(
    client: &Client,
    query: &str,
) -> Result<Vec<(super::types::PgColumn, bool)>> {
    let what = "cannot describe the source query";
    // The extended protocol (execute, not batch_execute) refuses a second statement
    // smuggled into the query.
    client
        .execute(&format!("CREATE TEMP VIEW ferry_describe AS {query}"), &[])
        .await
        .map_err(|e| pg_error(what, e))?;
    let oid: i64 = client
        .query_one("SELECT 'pg_temp.ferry_describe'::regclass::oid::int8", &[])
        .await
        .map_err(|e| pg_error(what, e))?
        .get(0);
    let columns = columns_of(client, oid).await?;
    client
        .batch_execute("DROP VIEW pg_temp.ferry_describe")
        .await
        .map_err(|e| pg_error(what, e))?;
    // A view's columns are never NOT NULL in the catalog; that is what we want anyway.
    Ok(columns)
}

#[async_trait::async_trait]
impl Source for PostgresSource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    async fn plan(&self, parallelism: usize) -> Result<Vec<Partition>> {
        let mut exporter = self.exporter.lock().await;
        let (snapshot, client) = match self.use_snapshot {
            true => match self.export_snapshot().await? {
                Some((id, client)) => (Some(id), client),
                None => (None, self.connector.connect().await?),
            },
            false => (None, self.connector.connect().await?),
        };
        let count = self
            .partition
            .as_ref()
            .and_then(|p| p.count)
            .map(|c| c.get())
            .unwrap_or(parallelism)
            .max(1);
        let column = self.partition.as_ref().and_then(|p| p.column.clone());
        let (filters, size) = match (&column, &self.relation) {
            (Some(column), _) => (self.range_filters(&client, column, count).await?, None),
            (None, Relation::Table { oid, relkind, .. }) if relkind == "r" || relkind == "m" => {
                let (filters, bytes) = page_filters(&client, *oid, count).await?;
                (filters, Some(bytes))
            }
            _ => (vec![], None),
        };
        if snapshot.is_some() {
            *exporter = Some(client);
        }
        let filters: Vec<Option<String>> = if filters.is_empty() {
            vec![None]
        } else {
            filters.into_iter().map(Some).collect()
        };
        let n = filters.len() as u64;
        filters
            .into_iter()
            .enumerate()
            .map(|(index, filter)| {
                let description = match &filter {
                    Some(f) => f.clone(),
                    None => "all rows".to_string(),
                };
                Partition::new(
                    index,
                    description,
                    size.map(|s| s / n),
                    &PartitionPlan {
                        filter,
                        snapshot: snapshot.clone(),
                    },
                )
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
        let copy = format!(
            "COPY ({}) TO STDOUT (FORMAT binary)",
            self.select(plan.filter.as_deref())
        );
        let skip = resume.map(|c| c.records).unwrap_or(0);
        let (chunk_tx, chunk_rx) = mpsc::channel::<Result<Bytes>>(CHUNK_QUEUE);
        let (ahead, batch_rx) = read_ahead(budget, 2);
        let where_ = format!("postgres source, {partition}");
        // The stream owns the read: dropping it aborts the read, which ends the session.
        let reading = ferry_engine::task::spawn(read_copy(
            self.connector.clone(),
            copy,
            plan.snapshot,
            skip,
            where_.clone(),
            chunk_tx,
        ));
        let decoder = CopyDecoder::new(
            self.schema.clone(),
            self.types.clone(),
            self.batch_rows,
            skip,
        )
        .with_max_batch_bytes(self.batch_bytes);
        ferry_engine::task::spawn_blocking(move || decode_chunks(decoder, chunk_rx, ahead, where_));
        Ok(ferry_engine::task::owning_stream(batch_rx, reading))
    }

    fn connector(&self) -> &'static str {
        "postgres"
    }
}

/// Reads one partition's COPY stream into chunks; errors travel down the channel.
async fn read_copy(
    connector: Connector,
    copy: String,
    snapshot: Option<String>,
    skip: u64,
    where_: String,
    tx: mpsc::Sender<Result<Bytes>>,
) {
    let result = async {
        let client = connector.connect().await?;
        let mut setup = String::from("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;");
        if let Some(id) = &snapshot {
            setup.push_str(&format!(" SET TRANSACTION SNAPSHOT {};", literal(id)));
        }
        // One stable row order, so that a retry can resume by skipping rows: no parallel
        // workers, no synchronized scans that start mid-table.
        setup.push_str(" SET LOCAL max_parallel_workers_per_gather = 0; SET LOCAL synchronize_seqscans = off;");
        if let Err(e) = client.batch_execute(&setup).await {
            if snapshot.is_some() && e.code() == Some(&tokio_postgres::error::SqlState::INVALID_PARAMETER_VALUE) {
                return Err(Error::store(format!(
                    "{where_}: the job's exported snapshot is gone (the server restarted or the exporting session ended), so this partition cannot resume consistently; run the job again"
                )));
            }
            return Err(pg_error(&format!("{where_}: cannot start the read"), e));
        }
        let stream = client
            .copy_out(&copy)
            .await
            .map_err(|e| pg_error(&format!("{where_}: COPY failed"), e))?;
        futures::pin_mut!(stream);
        let mut chunk = BytesMut::with_capacity(CHUNK_BYTES + 64 * 1024);
        let mut watch = connector.idle_watch();
        loop {
            let next = connector
                .next_within_idle(&mut watch, &mut stream, &where_)
                .await?;
            let Some(message) = next else { break };
            let message = message.map_err(|e| pg_error(&format!("{where_}: reading COPY data failed"), e))?;
            chunk.extend_from_slice(&message);
            if chunk.len() >= CHUNK_BYTES && tx.send(Ok(chunk.split().freeze())).await.is_err() {
                return Ok(());
            }
        }
        if !chunk.is_empty() {
            let _ = tx.send(Ok(chunk.freeze())).await;
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        tracing::debug!(error = %e, skip, "postgres read ended with an error");
        let _ = tx.send(Err(e)).await;
    }
}

fn decode_error(where_: &str, e: DecodeError) -> Error {
    match e.column {
        Some(c) => Error::data(format!(
            "{where_}, row {}, column `{c}`: {}",
            e.row, e.message
        )),
        None => Error::data(format!("{where_}, row {}: {}", e.row, e.message)),
    }
}

/// Decodes chunks into batches on a blocking thread.
fn decode_chunks(
    mut decoder: CopyDecoder,
    mut rx: mpsc::Receiver<Result<Bytes>>,
    ahead: ReadAhead,
    where_: String,
) {
    let mut pending = BytesMut::new();
    let mut input_bytes = 0u64;
    let send = |decoder: &mut CopyDecoder, input_bytes: &mut u64| -> bool {
        match decoder.flush() {
            Ok(Some(batch)) => {
                let item = SourceBatch {
                    batch,
                    checkpoint: Checkpoint {
                        records: decoder.position(),
                        position: None,
                        line: None,
                    },
                    skipped: vec![],
                    input_bytes: std::mem::take(input_bytes),
                    charge: Charge::default(),
                };
                ahead.blocking_send(item)
            }
            Ok(None) => true,
            Err(e) => {
                ahead.blocking_fail(decode_error(&where_, e));
                false
            }
        }
    };
    while let Some(chunk) = rx.blocking_recv() {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                ahead.blocking_fail(e);
                return;
            }
        };
        input_bytes += chunk.len() as u64;
        // Decode straight from the chunk unless a partial row is carried over.
        let data = if pending.is_empty() {
            chunk
        } else {
            pending.extend_from_slice(&chunk);
            pending.split().freeze()
        };
        let mut at = 0;
        loop {
            let decoded = match decoder.decode(&data[at..]) {
                Ok(d) => d,
                Err(e) => {
                    ahead.blocking_fail(decode_error(&where_, e));
                    return;
                }
            };
            at += decoded.consumed;
            if !decoded.batch_full {
                break;
            }
            if !send(&mut decoder, &mut input_bytes) {
                return;
            }
        }
        pending.extend_from_slice(&data[at..]);
    }
    if !decoder.finished() {
        // The channel closed without an error and without the end marker: the session ended.
        if !ahead.is_closed() {
            ahead.blocking_fail(
                Error::store(format!(
                    "{where_}: the COPY stream ended before its end marker (connection lost?)"
                ))
                .with_retryable(true),
            );
        }
        return;
    }
    send(&mut decoder, &mut input_bytes);
}
