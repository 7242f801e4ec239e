//! The PostgreSQL sink: one transaction per job that runs the pre-copy SQL, empties or
//! (re)creates the table as the mode asks, streams `COPY ... FROM STDIN (FORMAT binary)`, and
//! commits only when the whole job has succeeded.
//!
//! A failed, cancelled or killed job never commits, so the table shows none of its rows (the
//! server rolls back when the session ends). `truncate` and `overwrite` hold an exclusive lock
//! on the table until the commit; `append` lets readers and other writers go on. After a
//! truncate or a create in the same transaction the COPY uses `FREEZE`, which writes the rows
//! already frozen and saves a later vacuum.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Mutex;

use arrow::datatypes::{DataType, SchemaRef};
use bytes::Bytes;
use ferry_engine::{Committed, Encoder, Error, OutputLayout, OutputWriter, Result, Sink, Staged};
use futures::SinkExt;
use tokio_postgres::{Client, CopyInSink};

use super::connect::{Connector, pg_error};
use super::encode::{CopyEncoder, Target, check_compatible};
use super::ident::{self, quote, quote_qualified};
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
}

/// Writes into a PostgreSQL table.
pub struct PostgresSink {
    connector: Connector,
    spec: PostgresSinkSpec,
    table: String,
    plan: Mutex<Option<LoadPlan>>,
    /// Sessions whose COPY has finished and whose transaction waits for the commit.
    open: std::sync::Arc<Mutex<HashMap<usize, Client>>>,
}

impl PostgresSink {
    /// A sink for `spec`; nothing is checked until `prepare`.
    pub fn new(spec: PostgresSinkSpec, connector: Connector) -> Result<Self> {
        let table = quote_qualified(&ident::parse_qualified(&spec.table)?);
        Ok(Self {
            connector,
            spec,
            table,
            plan: Mutex::new(None),
            open: Default::default(),
        })
    }

    fn plan(&self) -> Result<LoadPlan> {
        self.plan
            .lock()
            .map_err(|_| Error::internal("postgres sink: plan lock poisoned"))?
            .clone()
            .ok_or_else(|| Error::internal("postgres sink used before prepare"))
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
    async fn prepare(&self, schema: &SchemaRef) -> Result<()> {
        let client = self.connector.connect().await?;
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
            Self::destination_enums(&client, schema).await
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
        let columns = columns_of(&client, oid).await?;
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
        let fields: Vec<(String, arrow::datatypes::DataType)> = schema
            .fields()
            .iter()
            .map(|f| (f.name().clone(), f.data_type().clone()))
            .collect();
        check_compatible(&fields, &targets).map_err(|e| e.context(format!("table `{table}`")))?;

        let mut setup = Vec::new();
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
        let freeze = relkind == "r" && (create || mode == PostgresWriteMode::Truncate);
        let copy = format!(
            "COPY {} ({}) FROM STDIN (FORMAT binary{})",
            self.table,
            targets
                .iter()
                .map(|t| quote(&t.name))
                .collect::<Vec<_>>()
                .join(", "),
            if freeze { ", FREEZE" } else { "" }
        );
        *self
            .plan
            .lock()
            .map_err(|_| Error::internal("postgres sink: plan lock poisoned"))? = Some(LoadPlan {
            setup,
            copy,
            targets,
        });
        Ok(())
    }

    fn layout(&self) -> OutputLayout {
        // One COPY in one transaction: the whole job commits or nothing does.
        OutputLayout::Single
    }

    fn encoder(&self, _schema: &SchemaRef, _output: usize) -> Result<Box<dyn Encoder>> {
        Ok(Box::new(CopyEncoder::new(self.plan()?.targets)))
    }

    async fn open(&self, output: usize) -> Result<Box<dyn OutputWriter>> {
        let plan = self.plan()?;
        let table = &self.spec.table;
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
        Ok(Box::new(PostgresWriter {
            output,
            table: table.clone(),
            client: Some(client),
            sink: Box::pin(sink),
            bytes: 0,
            open: self.open.clone(),
        }))
    }

    async fn commit(&self, staged: Vec<Staged>) -> Result<Committed> {
        let table = &self.spec.table;
        for s in &staged {
            let client = self
                .open
                .lock()
                .map_err(|_| Error::internal("postgres sink: lock poisoned"))?
                .remove(&s.output)
                .ok_or_else(|| {
                    Error::internal(format!("no open transaction for output {}", s.output))
                })?;
            client.batch_execute("COMMIT").await.map_err(|e| {
                pg_error(
                    &format!("table `{table}`: the commit failed; nothing was loaded"),
                    e,
                )
            })?;
        }
        Ok(Committed {
            outputs: vec![self.table.clone()],
            removed: vec![],
        })
    }

    async fn abort(&self, _staged: Vec<Staged>) -> Result<()> {
        // Dropping the sessions ends them; the server rolls their transactions back.
        let sessions: Vec<Client> = self
            .open
            .lock()
            .map_err(|_| Error::internal("postgres sink: lock poisoned"))?
            .drain()
            .map(|(_, c)| c)
            .collect();
        for client in sessions {
            let _ = client.batch_execute("ROLLBACK").await;
        }
        Ok(())
    }

    fn connector(&self) -> &'static str {
        "postgres"
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
    client: Option<Client>,
    sink: Pin<Box<CopyInSink<Bytes>>>,
    bytes: u64,
    open: std::sync::Arc<Mutex<HashMap<usize, Client>>>,
}

#[async_trait::async_trait]
impl OutputWriter for PostgresWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        self.bytes += chunk.len() as u64;
        let table = &self.table;
        self.sink
            .send(chunk)
            .await
            .map_err(|e| pg_error(&format!("table `{table}`: writing COPY data failed"), e))
    }

    async fn finish(mut self: Box<Self>) -> Result<Staged> {
        let table = self.table.clone();
        self.sink
            .as_mut()
            .finish()
            .await
            .map_err(|e| pg_error(&format!("table `{table}`: COPY failed"), e))?;
        let client = self
            .client
            .take()
            .ok_or_else(|| Error::internal("postgres writer finished twice"))?;
        self.open
            .lock()
            .map_err(|_| Error::internal("postgres sink: lock poisoned"))?
            .insert(self.output, client);
        Ok(Staged {
            output: self.output,
            temporary: "uncommitted transaction".into(),
            target: table,
            bytes: self.bytes,
        })
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        // Dropping the session rolls the transaction back.
        Ok(())
    }
}
