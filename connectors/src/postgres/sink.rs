//! The PostgreSQL sink. Two ways to load, both atomic per job:
//!
//! - **One session**: one transaction runs the pre-copy SQL, empties or (re)creates the table
//!   as the mode asks, streams `COPY ... FROM STDIN (FORMAT binary)`, and commits only when the
//!   whole job has succeeded. A failed, cancelled or killed job never commits (the server
//!   rolls back when the session ends). `truncate` holds an exclusive lock on the table until
//!   the commit; `append` lets readers and other writers go on. After a truncate or a create
//!   in the same transaction the COPY uses `FREEZE`, which writes the rows already frozen.
//! - **Several sessions into a new table** (`overwrite`, or a table that does not exist yet,
//!   with `parallel_copies` above 1 and no pre-copy SQL): `prepare` creates a load table
//!   beside the target, `_ferry_load_<hash of job and table>`; each partition's COPY loads it
//!   in a session of its own and commits; the job's commit drops the old table and renames the
//!   load table in one transaction. Readers see the old table, then the new one, never a part
//!   (and read the old one during the whole load). A failed run drops the load table; a killed
//!   run leaves it, and the same job's next run drops it before it starts.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use arrow::datatypes::{DataType, SchemaRef};
use bytes::Bytes;
use ferry_engine::{
    Committed, Error, OpenOutput, OutputLayout, OutputWriter, PreparedSink, Result, Sink,
    StagedOutput,
};
use futures::SinkExt;
use tokio_postgres::{Client, CopyInSink};

use super::connect::{Connector, pg_error};
use super::encode::{CopyEncoder, Target, check_compatible};
use super::ident::{literal, quote};
use super::types::{PG_TYPE_KEY, columns_of, sql_type_for};
use super::{PostgresSinkSpec, PostgresWriteMode};

/// What `prepare` found out, used by every attempt of the load.
#[derive(Debug, Clone)]
struct LoadPlan {
    /// SQL run at the start of the transaction (pre-copy SQL, truncate, drop/create).
    setup: Vec<String>,
    /// The COPY statement.
    copy: String,
    /// The target columns, in the source's column order.
    targets: Vec<Target>,
    /// The load table of a load by several sessions.
    staging: Option<Staging>,
    /// Why the load runs in one session although the job has parallel copies.
    single_reason: Option<&'static str>,
}

/// A load table that several sessions fill and the commit swaps in.
#[derive(Debug, Clone)]
struct Staging {
    /// The load table, quoted and schema-qualified.
    table: String,
    /// The statements of the commit's transaction: drop the old table, rename the new.
    swap: Vec<String>,
}

/// Writes into a PostgreSQL table.
pub struct PostgresSink {
    connector: Connector,
    spec: PostgresSinkSpec,
    table: String,
    /// The job's name: the load table's name derives from it.
    job: String,
    parallel_copies: usize,
}

impl PostgresSink {
    /// A sink for `spec`; nothing is checked until `prepare`.
    pub fn new(
        spec: PostgresSinkSpec,
        connector: Connector,
        settings: &ferry_engine::config::JobSettings,
    ) -> Result<Self> {
        let table = spec.table.quoted();
        Ok(Self {
            connector,
            spec,
            table,
            job: settings.name.clone(),
            parallel_copies: settings.parallel_copies.get(),
        })
    }

    /// The column definitions of `CREATE TABLE` for the source's schema; `enums` maps a
    /// field's recorded type to the destination's enum type of that name, where one exists.
    fn create_columns(schema: &SchemaRef, enums: &HashMap<String, String>) -> Result<String> {
        let columns = schema
            .fields()
            .iter()
            .map(|f| {
                let not_null = if f.is_nullable() { "" } else { " NOT NULL" };
                let sql_type = match f.metadata().get(PG_TYPE_KEY).and_then(|t| enums.get(t)) {
                    Some(enum_type) => enum_type.clone(),
                    None => sql_type_for(f)?,
                };
                Ok(format!("{} {sql_type}{not_null}", quote(f.name())))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(columns.join(", "))
    }

    /// The enum types (or arrays of them) at the destination that text fields were read
    /// from, by their recorded type name: a table ferry creates keeps them enums.
    async fn destination_enums(client: &Client, schema: &SchemaRef) -> HashMap<String, String> {
        let mut enums = HashMap::new();
        for field in schema.fields() {
            let Some(hint) = field.metadata().get(PG_TYPE_KEY) else {
                continue;
            };
            let text = match field.data_type() {
                DataType::List(f) | DataType::LargeList(f) => f.data_type(),
                other => other,
            };
            if !matches!(
                text,
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            ) || enums.contains_key(hint)
            {
                continue;
            }
            // to_regtype only parses the name; a name that is no type (or a malformed one)
            // leaves the column text.
            let found = client
                .query_opt(
                    "SELECT format_type(t.oid, NULL) FROM pg_type t \
                     LEFT JOIN pg_type e ON e.oid = t.typelem \
                     WHERE t.oid = to_regtype($1) AND (t.typtype = 'e' OR e.typtype = 'e')",
                    &[hint],
                )
                .await;
            if let Ok(Some(row)) = found {
                enums.insert(hint.clone(), row.get::<_, String>(0));
            }
        }
        enums
    }
}

#[async_trait::async_trait]
impl Sink for PostgresSink {
    async fn prepare(&self, schema: &SchemaRef) -> Result<Box<dyn PreparedSink>> {
        let client = self.connector.connect().await?;
        let plan = self.plan_load(&client, schema).await?;
        Ok(Box::new(PreparedLoad {
            connector: self.connector.clone(),
            table: self.spec.table.to_string(),
            quoted: self.table.clone(),
            parallel_copies: self.parallel_copies,
            plan: Arc::new(plan),
        }))
    }

    fn connector(&self) -> &'static str {
        "postgres"
    }
}

impl PostgresSink {
    /// Reads the catalog and works out the load: the setup SQL, the COPY, the targets.
    async fn plan_load(&self, client: &Client, schema: &SchemaRef) -> Result<LoadPlan> {
        let table = &self.spec.table;
        let row = client
            .query_opt(
                "SELECT c.oid::int8, c.relkind::text FROM pg_class c WHERE c.oid = to_regclass($1)",
                &[&self.table],
            )
            .await
            .map_err(|e| pg_error(&format!("cannot look up table `{table}`"), e))?;
        let mode = self.spec.mode;
        let create = match (&row, mode) {
            (_, PostgresWriteMode::Overwrite) => true,
            (None, _) if self.spec.create_table => true,
            (None, _) => {
                return Err(Error::invalid_input(format!(
                    "table `{table}` does not exist and `create_table` is false; create it or set `create_table: true`"
                )));
            }
            (Some(_), _) => false,
        };
        // The target's column types: from the catalog, or from a temporary table built with
        // the DDL that the load will run (which also checks that DDL before data moves).
        let enums = if create {
            Self::destination_enums(client, schema).await
        } else {
            HashMap::new()
        };
        let columns_sql = Self::create_columns(schema, &enums)?;
        let create_sql = format!("CREATE TABLE {} ({columns_sql})", self.table);
        let oid: i64 = if create {
            let temp = format!("CREATE TEMP TABLE ferry_probe ({columns_sql})");
            client.batch_execute(&temp).await.map_err(|e| {
                pg_error(
                    &format!("cannot create table `{table}` from the source's columns"),
                    e,
                )
            })?;
            client
                .query_one("SELECT 'pg_temp.ferry_probe'::regclass::oid::int8", &[])
                .await
                .map_err(|e| pg_error("cannot read the probe table", e))?
                .get(0)
        } else {
            row.as_ref().map(|r| r.get(0)).unwrap_or_default()
        };
        let relkind: String = row.as_ref().map(|r| r.get(1)).unwrap_or_else(|| "r".into());
        if !create && !matches!(relkind.as_str(), "r" | "p" | "f") {
            return Err(Error::invalid_input(format!(
                "`{table}` is not a table (relkind {relkind}); COPY can load tables only"
            )));
        }
        let columns = columns_of(client, oid).await?;
        let targets = targets_for(schema, &columns, &table.to_string())?;
        let fields: Vec<(String, arrow::datatypes::DataType)> = schema
            .fields()
            .iter()
            .map(|f| (f.name().clone(), f.data_type().clone()))
            .collect();
        check_compatible(&fields, &targets).map_err(|e| e.context(format!("table `{table}`")))?;

        let single_reason = if self.parallel_copies < 2 {
            None
        } else if self.spec.pre_copy_sql.is_some() {
            Some("the pre-copy SQL runs in the load's own transaction")
        } else if !create {
            Some(match mode {
                PostgresWriteMode::Truncate => {
                    "mode truncate keeps the table itself (its grants, indexes, views)"
                }
                _ => "mode append adds to the table in one transaction",
            })
        } else {
            None
        };
        let staging = if self.parallel_copies > 1 && single_reason.is_none() {
            Some(
                self.create_staging(client, &columns_sql, mode, row.is_some())
                    .await?,
            )
        } else {
            None
        };

        let mut setup = Vec::new();
        if staging.is_none() {
            if let Some(sql) = &self.spec.pre_copy_sql {
                setup.push(sql.clone());
            }
            match mode {
                PostgresWriteMode::Overwrite => {
                    setup.push(format!("DROP TABLE IF EXISTS {}", self.table));
                    setup.push(create_sql);
                }
                _ if create => setup.push(create_sql),
                PostgresWriteMode::Truncate => setup.push(format!("TRUNCATE {}", self.table)),
                PostgresWriteMode::Append => {}
            }
        }
        let freeze =
            staging.is_none() && relkind == "r" && (create || mode == PostgresWriteMode::Truncate);
        let copy = format!(
            "COPY {} ({}) FROM STDIN (FORMAT binary{})",
            staging.as_ref().map_or(&self.table, |s| &s.table),
            targets
                .iter()
                .map(|t| quote(&t.name))
                .collect::<Vec<_>>()
                .join(", "),
            if freeze { ", FREEZE" } else { "" }
        );
        Ok(LoadPlan {
            setup,
            copy,
            targets,
            staging,
            single_reason,
        })
    }

    /// Creates the load table of a load by several sessions (dropping a dead run's first)
    /// and works out the commit's swap. `exists`: the target exists now; an overwrite checks
    /// that it could be dropped, so that a view on it fails the job before data moves.
    async fn create_staging(
        &self,
        client: &Client,
        columns_sql: &str,
        mode: PostgresWriteMode,
        exists: bool,
    ) -> Result<Staging> {
        let table = &self.spec.table;
        let parts = table.parts();
        let schema = match parts {
            [.., schema, _] => schema.clone(),
            _ => client
                .query_one("SELECT current_schema()::text", &[])
                .await
                .map_err(|e| pg_error("cannot read the current schema", e))?
                .get::<_, Option<String>>(0)
                .ok_or_else(|| {
                    Error::invalid_input(format!(
                        "table `{table}`: no schema of the search_path exists to create it in; qualify the table name"
                    ))
                })?,
        };
        let name = parts.last().cloned().unwrap_or_default();
        let hash =
            twox_hash::XxHash3_64::oneshot(format!("{}\0{}", self.job, self.table).as_bytes());
        let staging = format!(
            "{}.{}",
            quote(&schema),
            quote(&format!("_ferry_load_{hash:016x}"))
        );
        if mode == PostgresWriteMode::Overwrite && exists {
            // A trial drop, rolled back: a view or a foreign key on the table would fail the
            // swap at the very end. A busy table (lock wait) is not held up for it.
            let trial = format!(
                "BEGIN; SET LOCAL lock_timeout = '5s'; DROP TABLE {}",
                self.table
            );
            let tried = client.batch_execute(&trial).await;
            let _ = client.batch_execute("ROLLBACK").await;
            if let Err(e) = tried
                && e.code() != Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE)
            {
                return Err(pg_error(
                    &format!("table `{table}` cannot be replaced (mode overwrite drops it)"),
                    e,
                ));
            }
        }
        // The comment tells whoever finds a killed run's load table what it is; the swap
        // removes it.
        let started = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let comment = literal(&format!(
            "ferry: load of table {table} by job {}, started {started}; the job's next run drops it, and it may be dropped when that job is not running",
            self.job
        ));
        client
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS {staging}; CREATE TABLE {staging} ({columns_sql}); COMMENT ON TABLE {staging} IS {comment}"
            ))
            .await
            .map_err(|e| {
                pg_error(
                    &format!("table `{table}`: cannot create the load table {staging}"),
                    e,
                )
            })?;
        let mut swap = Vec::new();
        if mode == PostgresWriteMode::Overwrite {
            swap.push(format!("DROP TABLE IF EXISTS {}", self.table));
        }
        swap.push(format!("COMMENT ON TABLE {staging} IS NULL"));
        swap.push(format!("ALTER TABLE {staging} RENAME TO {}", quote(&name)));
        Ok(Staging {
            table: staging,
            swap,
        })
    }
}

/// The table's column for each of the source's fields, in the source's order (matched by
/// name, exactly or else ignoring case).
fn targets_for(
    schema: &SchemaRef,
    columns: &[(super::types::PgColumn, bool)],
    table: &str,
) -> Result<Vec<Target>> {
    let mut targets = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let name = field.name();
        let found = columns
                .iter()
                .find(|(c, _)| c.name == *name)
                .or_else(|| columns.iter().find(|(c, _)| c.name.eq_ignore_ascii_case(name)))
                .ok_or_else(|| {
                    Error::invalid_input(format!(
                        "table `{table}` has no column `{name}` that the source has; add the column, or select only the table's columns in the source (columns: {})",
                        columns.iter().map(|(c, _)| c.name.as_str()).collect::<Vec<_>>().join(", ")
                    ))
                })?;
        let kind = found.0.kind.clone().map_err(Error::invalid_input)?;
        targets.push(Target {
            name: found.0.name.clone(),
            kind,
        });
    }
    Ok(targets)
}

/// One run's load into the table, from its plan.
struct PreparedLoad {
    connector: Connector,
    table: String,
    quoted: String,
    parallel_copies: usize,
    plan: Arc<LoadPlan>,
}

#[async_trait::async_trait]
impl PreparedSink for PreparedLoad {
    fn layout(&self) -> OutputLayout {
        match self.plan.staging {
            // One session per partition into the load table.
            Some(_) => OutputLayout::PerPartition,
            // One COPY in one transaction: the whole job commits or nothing does.
            None => OutputLayout::Single,
        }
    }

    fn notes(&self) -> Vec<String> {
        let table = &self.table;
        match (&self.plan.staging, self.plan.single_reason) {
            (Some(staging), _) => vec![format!(
                "table `{table}`: loaded by up to {} sessions at once into {}, swapped in at the commit",
                self.parallel_copies, staging.table
            )],
            (None, Some(why)) => vec![format!("table `{table}`: loaded by one session, as {why}")],
            (None, None) => Vec::new(),
        }
    }

    async fn open(&self, _schema: &SchemaRef, output: usize) -> Result<OpenOutput> {
        let plan = &self.plan;
        let table = &self.table;
        let client = self.connector.connect().await?;
        client
            .batch_execute("BEGIN")
            .await
            .map_err(|e| pg_error("cannot begin the load transaction", e))?;
        for sql in &plan.setup {
            client
                .batch_execute(sql)
                .await
                .map_err(|e| pg_error(&format!("table `{table}`: `{}` failed", short(sql)), e))?;
        }
        let sink = client
            .copy_in::<_, Bytes>(&plan.copy)
            .await
            .map_err(|e| pg_error(&format!("table `{table}`: COPY failed"), e))?;
        Ok(OpenOutput {
            encoder: Box::new(CopyEncoder::new(plan.targets.clone())),
            writer: Box::new(PostgresWriter {
                output,
                table: table.clone(),
                connector: self.connector.clone(),
                client,
                sink: Box::pin(sink),
                bytes: 0,
                commit_at_finish: plan.staging.is_some(),
            }),
        })
    }

    async fn commit(&self, staged: Vec<Box<dyn StagedOutput>>) -> Result<Committed> {
        ferry_engine::sink::publish_all(staged).await?;
        if let Some(staging) = &self.plan.staging {
            ferry_engine::sink::crash_point("postgres:swap");
            let table = &self.table;
            let client = self.connector.connect().await?;
            let swap = format!("BEGIN; {}; COMMIT", staging.swap.join("; "));
            if let Err(e) = client.batch_execute(&swap).await {
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(pg_error(
                    &format!(
                        "table `{table}`: swapping in the loaded table failed; the table is as it was"
                    ),
                    e,
                ));
            }
        }
        Ok(Committed {
            outputs: vec![self.quoted.clone()],
            removed: vec![],
        })
    }

    async fn abort(&self, staged: Vec<Box<dyn StagedOutput>>) -> Result<()> {
        ferry_engine::sink::discard_all(staged).await;
        if let Some(staging) = &self.plan.staging {
            let dropped = async {
                let client = self.connector.connect().await?;
                client
                    .batch_execute(&format!("DROP TABLE IF EXISTS {}", staging.table))
                    .await
                    .map_err(|e| pg_error("cannot drop the load table", e))
            };
            if let Err(e) = dropped.await {
                tracing::warn!(table = %staging.table, error = %e, "could not drop the load table; the job's next run drops it");
            }
        }
        Ok(())
    }
}

fn short(sql: &str) -> String {
    let one_line = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > 60 {
        format!("{}...", one_line.chars().take(60).collect::<String>())
    } else {
        one_line
    }
}

/// One COPY into the table.
struct PostgresWriter {
    output: usize,
    table: String,
    connector: Connector,
    client: Client,
    sink: Pin<Box<CopyInSink<Bytes>>>,
    bytes: u64,
    /// A session of a load by several: it commits into the load table when its COPY ends.
    commit_at_finish: bool,
}

#[async_trait::async_trait]
impl OutputWriter for PostgresWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        self.bytes += chunk.len() as u64;
        let table = &self.table;
        let sink = &mut self.sink;
        self.connector
            .within_idle(&format!("table `{table}`"), async {
                sink.send(chunk)
                    .await
                    .map_err(|e| pg_error(&format!("table `{table}`: writing COPY data failed"), e))
            })
            .await
    }

    async fn finish(mut self: Box<Self>) -> Result<Box<dyn StagedOutput>> {
        let table = self.table.clone();
        let sink = &mut self.sink;
        self.connector
            .within_idle(&format!("table `{table}`"), async {
                sink.as_mut()
                    .finish()
                    .await
                    .map_err(|e| pg_error(&format!("table `{table}`: COPY failed"), e))
            })
            .await?;
        let client = if self.commit_at_finish {
            self.client.batch_execute("COMMIT").await.map_err(|e| {
                pg_error(
                    &format!("table `{table}`: committing into the load table failed"),
                    e,
                )
            })?;
            None
        } else {
            Some(self.client)
        };
        Ok(Box::new(OpenTransaction {
            output: self.output,
            table,
            client,
            bytes: self.bytes,
        }))
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        // Dropping the session rolls the transaction back.
        Ok(())
    }
}

/// A COPY that has finished in a transaction waiting for the commit: it owns the session
/// (none when it loaded a load table and committed there; the swap publishes it).
struct OpenTransaction {
    output: usize,
    table: String,
    client: Option<Client>,
    bytes: u64,
}

impl std::fmt::Debug for OpenTransaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "uncommitted load of table `{}`", self.table)
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

    async fn publish(self: Box<Self>) -> Result<Vec<String>> {
        let table = &self.table;
        let Some(client) = self.client else {
            return Ok(Vec::new());
        };
        client.batch_execute("COMMIT").await.map_err(|e| {
            pg_error(
                &format!("table `{table}`: the commit failed; nothing was loaded"),
                e,
            )
        })?;
        Ok(Vec::new())
    }

    async fn discard(self: Box<Self>) -> Result<()> {
        // Ending the session rolls back too; an explicit ROLLBACK ends it promptly.
        if let Some(client) = self.client {
            let _ = client.batch_execute("ROLLBACK").await;
        }
        Ok(())
    }
}
