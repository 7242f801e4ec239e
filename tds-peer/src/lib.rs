//! A SQL Server test peer: a TDS 7.4 server over in-memory tables, written from the MS-TDS
//! specification for ferry's tests (no SQL Server engine can run on the test machines).
//!
//! It answers PRELOGIN (encryption off, or required with TLS through rustls: the handshake
//! travels in PRELOGIN packets, as MS-TDS 3.3.5 has it), LOGIN7 (SQL authentication), SQL
//! batches of the statements in [`sql`] with COLMETADATA, ROW/NBCROW and DONE tokens, and
//! bulk loads (`INSERT BULK` then a BulkLoadBCP message), which it applies and records byte
//! by byte. Transactions hold their changes apart until COMMIT; a connection that drops
//! rolls back. It is only as faithful as its encodings: ferry's tests cross-check it with
//! independent clients.

pub mod sql;
pub mod types;
pub mod wire;

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use sql::{Condition, Op, Statement};
pub use types::{SqlType, Value};

/// TPC-H lineitem's columns as SQL Server types (name, type, nullable), for the tables the
/// benches and the perf harness put into the peer.
pub const LINEITEM: [(&str, &str, bool); 16] = [
    ("l_orderkey", "bigint", false),
    ("l_partkey", "bigint", false),
    ("l_suppkey", "bigint", false),
    ("l_linenumber", "int", false),
    ("l_quantity", "decimal(15,2)", false),
    ("l_extendedprice", "decimal(15,2)", false),
    ("l_discount", "decimal(15,2)", false),
    ("l_tax", "decimal(15,2)", false),
    ("l_returnflag", "char(1)", false),
    ("l_linestatus", "char(1)", false),
    ("l_shipdate", "date", false),
    ("l_commitdate", "date", false),
    ("l_receiptdate", "date", false),
    ("l_shipinstruct", "char(25)", false),
    ("l_shipmode", "char(10)", false),
    ("l_comment", "varchar(44)", false),
];
use wire::{Reader, Writer, done, packet};

/// A column of a table.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    /// Its name as created.
    pub name: String,
    /// Its type.
    pub ty: SqlType,
    /// Whether it takes NULL.
    pub nullable: bool,
}

/// A table: columns and rows.
#[derive(Debug, Clone, Default)]
pub struct Table {
    /// Its columns.
    pub columns: Vec<Column>,
    /// Its rows.
    pub rows: Vec<Vec<Value>>,
    /// Its primary key's columns.
    pub primary_key: Vec<String>,
    /// Its partitioning: column, `RANGE RIGHT` (or left), boundary values as text.
    pub partitioning: Option<(String, bool, Vec<String>)>,
}

/// A bulk load the peer received, as it came.
#[derive(Debug, Clone)]
pub struct BulkLoad {
    /// The table (`schema.table`, lower case).
    pub table: String,
    /// The `INSERT BULK` statement that announced it.
    pub statement: String,
    /// The BulkLoadBCP message: COLMETADATA, ROW tokens and DONE, byte for byte.
    pub payload: Vec<u8>,
}

/// The peer's TLS certificate chain and key (DER).
#[derive(Clone)]
pub struct TlsIdentity {
    /// Certificate chain, leaf first.
    pub chain: Vec<Vec<u8>>,
    /// PKCS#8 private key.
    pub key: Vec<u8>,
}

/// How a peer runs.
#[derive(Clone)]
pub struct Config {
    /// The one login it accepts.
    pub user: String,
    /// Its password.
    pub password: String,
    /// The databases it has (the first is the default).
    pub databases: Vec<String>,
    /// With TLS: encryption is required (or, when the client asks for `Off`, the login
    /// alone is encrypted); without, the peer says it does not support encryption.
    pub tls: Option<TlsIdentity>,
    /// `snapshot_isolation_state` of the databases.
    pub snapshot_isolation: bool,
}

#[derive(Default)]
struct State {
    tables: HashMap<String, Arc<Table>>,
    /// Every statement run, in order.
    statements: Vec<String>,
    bulk_loads: Vec<BulkLoad>,
    next_tx: u64,
}

/// A running peer; it stops when dropped.
pub struct Peer {
    port: u16,
    state: Arc<Mutex<State>>,
    sessions: Arc<AtomicUsize>,
    loading: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Peer {
    /// Starts a peer on a free loopback port.
    pub fn start(config: Config) -> std::io::Result<Peer> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(Mutex::new(State::default()));
        let sessions = Arc::new(AtomicUsize::new(0));
        let loading = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let tls = match &config.tls {
            Some(identity) => Some(Arc::new(server_config(identity)?)),
            None => None,
        };
        let config = Arc::new(config);
        {
            let (state, sessions, stop) = (state.clone(), sessions.clone(), stop.clone());
            let loading = loading.clone();
            std::thread::Builder::new()
                .name("tds-peer".into())
                .spawn(move || {
                    for stream in listener.incoming() {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let Ok(stream) = stream else { continue };
                        let session = Session {
                            config: config.clone(),
                            tls: tls.clone(),
                            state: state.clone(),
                            sessions: sessions.clone(),
                            loading: loading.clone(),
                            tx: None,
                            bulk: None,
                            database: String::new(),
                        };
                        let _ = std::thread::Builder::new()
                            .name("tds-peer-session".into())
                            .spawn(move || session.run(stream));
                    }
                })?;
        }
        Ok(Peer {
            port,
            state,
            sessions,
            loading,
            stop,
        })
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates table `name` (`schema.table` or `table`) with `columns`: name, type as DDL
    /// writes it, nullable.
    pub fn create_table(&self, name: &str, columns: &[(&str, &str, bool)]) {
        let columns = columns
            .iter()
            .map(|(n, t, nullable)| Column {
                name: n.to_string(),
                ty: SqlType::parse(t).unwrap_or_else(|| panic!("not a type: {t}")),
                nullable: *nullable,
            })
            .collect();
        self.lock().tables.insert(
            sql::table_key(name),
            Arc::new(Table {
                columns,
                rows: Vec::new(),
                primary_key: Vec::new(),
                partitioning: None,
            }),
        );
    }

    /// Partitions table `name` on `column` at `boundaries` (`RANGE RIGHT` when `right`).
    pub fn set_partitioning(&self, name: &str, column: &str, right: bool, boundaries: &[&str]) {
        let mut state = self.lock();
        let table = state
            .tables
            .get_mut(&sql::table_key(name))
            .unwrap_or_else(|| panic!("no table {name}"));
        Arc::make_mut(table).partitioning = Some((
            column.to_string(),
            right,
            boundaries.iter().map(|b| b.to_string()).collect(),
        ));
    }

    /// Gives table `name` a primary key on `columns`.
    pub fn set_primary_key(&self, name: &str, columns: &[&str]) {
        let mut state = self.lock();
        let table = state
            .tables
            .get_mut(&sql::table_key(name))
            .unwrap_or_else(|| panic!("no table {name}"));
        Arc::make_mut(table).primary_key = columns.iter().map(|c| c.to_string()).collect();
    }

    /// Appends rows to table `name`.
    pub fn insert(&self, name: &str, rows: Vec<Vec<Value>>) {
        let mut state = self.lock();
        let table = state
            .tables
            .get_mut(&sql::table_key(name))
            .unwrap_or_else(|| panic!("no table {name}"));
        Arc::make_mut(table).rows.extend(rows);
    }

    /// Table `name` as committed, if it exists.
    pub fn table(&self, name: &str) -> Option<Table> {
        self.lock()
            .tables
            .get(&sql::table_key(name))
            .map(|t| Table::clone(t))
    }

    /// Every statement the peer ran, in order.
    pub fn statements(&self) -> Vec<String> {
        self.lock().statements.clone()
    }

    /// The bulk loads received so far.
    pub fn bulk_loads(&self) -> Vec<BulkLoad> {
        self.lock().bulk_loads.clone()
    }

    /// Open sessions.
    pub fn sessions(&self) -> usize {
        self.sessions.load(Ordering::SeqCst)
    }

    /// Bytes of a bulk load arriving now (the latest session's), 0 when none is.
    pub fn bulk_in_progress(&self) -> usize {
        self.loading.load(Ordering::SeqCst)
    }

    /// A counter of open sessions that outlives borrows of the peer.
    pub fn session_count(&self) -> impl Fn() -> usize + 'static {
        let sessions = self.sessions.clone();
        move || sessions.load(Ordering::SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn server_config(identity: &TlsIdentity) -> std::io::Result<rustls::ServerConfig> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(
            identity
                .chain
                .iter()
                .map(|c| CertificateDer::from(c.clone()))
                .collect(),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(identity.key.clone())),
        )
        .map_err(std::io::Error::other)?;
    // No tickets after the handshake: the client reads them only once it left the
    // PRELOGIN framing.
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// A session's byte stream: plain TCP, or TLS once negotiated.
enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// Changes of an open transaction, visible to its session only.
#[derive(Default)]
struct Tx {
    id: u64,
    created: HashMap<String, Table>,
    dropped: HashSet<String>,
    truncated: HashSet<String>,
    inserted: HashMap<String, Vec<Vec<Value>>>,
}

struct Session {
    config: Arc<Config>,
    tls: Option<Arc<rustls::ServerConfig>>,
    state: Arc<Mutex<State>>,
    sessions: Arc<AtomicUsize>,
    /// Bytes of a bulk load received so far (0 when none is arriving).
    loading: Arc<AtomicUsize>,
    tx: Option<Tx>,
    /// An `INSERT BULK` waiting for its data: the table and the statement.
    bulk: Option<(String, String)>,
    database: String,
}

/// Reason a statement failed: error number, class, message.
type Failure = (u32, u8, String);

fn invalid_object(table: &str) -> Failure {
    (208, 16, format!("Invalid object name '{table}'."))
}

impl Session {
    fn run(mut self, tcp: TcpStream) {
        self.sessions.fetch_add(1, Ordering::SeqCst);
        let _ = tcp.set_nodelay(true);
        let _ = self.serve(tcp);
        self.sessions.fetch_sub(1, Ordering::SeqCst);
    }

    fn serve(&mut self, tcp: TcpStream) -> std::io::Result<()> {
        let mut plain = tcp;
        let (kind, payload) = wire::read_message(&mut plain)?;
        if kind != packet::PRELOGIN {
            return Ok(());
        }
        let asked = wire::prelogin_encryption(&payload).map_err(std::io::Error::other)?;
        // 0 off, 1 on, 2 not supported, 3 required.
        let answer = match (&self.tls, asked) {
            (None, _) => 2,
            (Some(_), 0) => 0,
            (Some(_), _) => 3,
        };
        wire::write_message(&mut plain, packet::REPLY, &wire::prelogin_answer(answer))?;
        if answer == 2 && asked != 2 && asked != 0 {
            // The client requires encryption the peer does not offer; it gives up.
            return Ok(());
        }
        let mut stream = match (&self.tls, answer) {
            (Some(config), 0 | 3) => Stream::Tls(Box::new(handshake(config.clone(), plain)?)),
            _ => Stream::Plain(plain),
        };
        let (kind, payload) = wire::read_message(&mut stream)?;
        if kind != packet::LOGIN7 {
            return Ok(());
        }
        if answer == 0 {
            // Encryption off: only the login was encrypted.
            stream = match stream {
                Stream::Tls(tls) => Stream::Plain(tls.sock),
                plain => plain,
            };
        }
        let mut w = Writer::default();
        match wire::parse_login(&payload) {
            Ok(login)
                if login.user == self.config.user && login.password == self.config.password =>
            {
                let database = if login.database.is_empty() {
                    self.config.databases.first().cloned().unwrap_or_default()
                } else {
                    login.database
                };
                if !self
                    .config
                    .databases
                    .iter()
                    .any(|d| d.eq_ignore_ascii_case(&database))
                {
                    wire::write_error(
                        &mut w,
                        4060,
                        11,
                        &format!(
                            "Cannot open database \"{database}\" requested by the login. The login failed."
                        ),
                    );
                    wire::write_done(&mut w, done::ERROR, 0, 0);
                    wire::write_message(&mut stream, packet::REPLY, &w.0)?;
                    return Ok(());
                }
                wire::write_env_change(&mut w, 1, &database, "master");
                // The database's collation (ENVCHANGE 7), as a server sends it at login.
                wire::write_tx_change(&mut w, 7, &types::COLLATION, &[]);
                wire::write_login_ack(&mut w);
                wire::write_env_change(&mut w, 4, "4096", "4096");
                wire::write_done(&mut w, 0, 0, 0);
                self.database = database;
                wire::write_message(&mut stream, packet::REPLY, &w.0)?;
            }
            Ok(login) => {
                wire::write_error(
                    &mut w,
                    18456,
                    14,
                    &format!("Login failed for user '{}'.", login.user),
                );
                wire::write_done(&mut w, done::ERROR, 0, 0);
                wire::write_message(&mut stream, packet::REPLY, &w.0)?;
                return Ok(());
            }
            Err(e) => return Err(std::io::Error::other(e)),
        }
        loop {
            let loading = self.loading.clone();
            let read = wire::read_message_with(&mut stream, |kind, bytes| {
                if kind == packet::BULK_LOAD {
                    loading.store(bytes, Ordering::SeqCst);
                }
            });
            self.loading.store(0, Ordering::SeqCst);
            let (kind, payload) = read?;
            let reply = match kind {
                packet::SQL_BATCH => self.batch(&payload),
                packet::BULK_LOAD => self.bulk_load(payload),
                packet::ATTENTION => {
                    let mut w = Writer::default();
                    wire::write_done(&mut w, 0x0020, 0, 0);
                    w.0
                }
                packet::RPC => match rpc_batch(&payload) {
                    Ok(batch) => self.batch(&batch),
                    Err((number, message)) => {
                        let mut w = Writer::default();
                        wire::write_error(&mut w, number, 16, &message);
                        wire::write_done(&mut w, done::ERROR, 0, 0);
                        w.0
                    }
                },
                packet::TRANSACTION_MANAGER => {
                    let mut w = Writer::default();
                    wire::write_error(
                        &mut w,
                        2812,
                        16,
                        "The test peer answers SQL batches, sp_executesql and bulk loads only.",
                    );
                    wire::write_done(&mut w, done::ERROR, 0, 0);
                    w.0
                }
                _ => return Ok(()),
            };
            wire::write_message(&mut stream, packet::REPLY, &reply)?;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs a SQL batch: ALL_HEADERS, then the statements (`;`-separated).
    fn batch(&mut self, payload: &[u8]) -> Vec<u8> {
        let mut w = Writer::default();
        let headers = payload
            .get(..4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .unwrap_or(0);
        let text: Vec<u16> = payload
            .get(headers..)
            .unwrap_or_default()
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        let text = String::from_utf16_lossy(&text);
        let statements = split_statements(&text);
        let last = statements.len().saturating_sub(1);
        for (i, statement) in statements.iter().enumerate() {
            let more = if i < last { done::MORE } else { 0 };
            match self.execute(statement, &mut w) {
                Ok((command, rows)) => {
                    let count = if rows.is_some() { done::COUNT } else { 0 };
                    wire::write_done(&mut w, more | count, command, rows.unwrap_or(0));
                }
                Err((number, class, message)) => {
                    wire::write_error(&mut w, number, class, &message);
                    wire::write_done(&mut w, done::ERROR, 0, 0);
                    break;
                }
            }
        }
        if statements.is_empty() {
            wire::write_done(&mut w, 0, 0, 0);
        }
        w.0
    }

    /// Adds rows to `table`: in the open transaction, or committed at once without one.
    fn append(&mut self, table: String, rows: Vec<Vec<Value>>) {
        match &mut self.tx {
            Some(tx) => match tx.created.get_mut(&table) {
                Some(created) => created.rows.extend(rows),
                None => tx.inserted.entry(table).or_default().extend(rows),
            },
            None => {
                if let Some(t) = self.lock().tables.get_mut(&table) {
                    Arc::make_mut(t).rows.extend(rows);
                }
            }
        }
    }

    /// A table as this session sees it (shared with the committed state when its
    /// transaction did not change it).
    fn view(&self, key: &str) -> Option<Arc<Table>> {
        let state = self.lock();
        let Some(tx) = &self.tx else {
            return state.tables.get(key).cloned();
        };
        if tx.dropped.contains(key) && !tx.created.contains_key(key) {
            return None;
        }
        if let Some(created) = tx.created.get(key) {
            return Some(Arc::new(created.clone()));
        }
        let committed = state.tables.get(key)?;
        if !tx.truncated.contains(key) && !tx.inserted.contains_key(key) {
            return Some(committed.clone());
        }
        let mut table = Table::clone(committed);
        if tx.truncated.contains(key) {
            table.rows.clear();
        }
        if let Some(rows) = tx.inserted.get(key) {
            table.rows.extend(rows.iter().cloned());
        }
        Some(Arc::new(table))
    }

    fn execute(&mut self, text: &str, w: &mut Writer) -> Result<(u16, Option<u64>), Failure> {
        self.lock().statements.push(text.to_string());
        let statement = sql::parse(text)
            .map_err(|near| (102, 15, format!("Incorrect syntax near '{near}'.")))?;
        match statement {
            Statement::Ignored => Ok((0, None)),
            Statement::Begin => {
                if self.tx.is_none() {
                    let id = {
                        let mut state = self.lock();
                        state.next_tx += 1;
                        state.next_tx
                    };
                    self.tx = Some(Tx {
                        id,
                        ..Tx::default()
                    });
                    wire::write_tx_change(w, 8, &id.to_le_bytes(), &[]);
                }
                Ok((0, None))
            }
            Statement::Commit => {
                let Some(tx) = self.tx.take() else {
                    return Err((
                        3902,
                        16,
                        "The COMMIT TRANSACTION request has no corresponding BEGIN TRANSACTION."
                            .into(),
                    ));
                };
                let mut state = self.lock();
                for key in &tx.dropped {
                    state.tables.remove(key);
                }
                for (key, table) in tx.created {
                    state.tables.insert(key, Arc::new(table));
                }
                for key in &tx.truncated {
                    if let Some(t) = state.tables.get_mut(key) {
                        Arc::make_mut(t).rows.clear();
                    }
                }
                for (key, rows) in tx.inserted {
                    if let Some(t) = state.tables.get_mut(&key) {
                        Arc::make_mut(t).rows.extend(rows);
                    }
                }
                drop(state);
                wire::write_tx_change(w, 9, &[], &tx.id.to_le_bytes());
                Ok((0, None))
            }
            Statement::Rollback => {
                if let Some(tx) = self.tx.take() {
                    wire::write_tx_change(w, 10, &[], &tx.id.to_le_bytes());
                }
                Ok((0, None))
            }
            Statement::SnapshotState => {
                let columns = [Column {
                    name: "snapshot_isolation_state".into(),
                    ty: SqlType::TinyInt,
                    nullable: true,
                }];
                write_metadata(w, &columns);
                let row = [Value::Int(self.config.snapshot_isolation as i64)];
                write_row(w, &columns, &row).map_err(|e| (245, 16, e))?;
                Ok((0xC1, Some(1)))
            }
            Statement::ServerInfo => {
                let text = |name: &str| Column {
                    name: name.into(),
                    ty: SqlType::NVarChar(Some(128)),
                    nullable: true,
                };
                let columns = [text(""), text(""), text("")];
                write_metadata(w, &columns);
                let row = [
                    Value::Text("16.0.4096.1".into()),
                    Value::Text(self.database.clone()),
                    Value::Text(self.config.user.clone()),
                ];
                write_row(w, &columns, &row).map_err(|e| (245, 16, e))?;
                Ok((0xC1, Some(1)))
            }
            Statement::PartitionBoundaries(key) => {
                let table = self.view(&key);
                let columns = [
                    Column {
                        name: "name".into(),
                        ty: SqlType::NVarChar(Some(128)),
                        nullable: false,
                    },
                    Column {
                        name: String::new(),
                        ty: SqlType::Int,
                        nullable: false,
                    },
                    Column {
                        name: String::new(),
                        ty: SqlType::NVarChar(Some(4000)),
                        nullable: true,
                    },
                ];
                write_metadata(w, &columns);
                let mut n = 0;
                if let Some((column, right, bounds)) = table.and_then(|t| t.partitioning.clone()) {
                    for b in &bounds {
                        let row = [
                            Value::Text(column.clone()),
                            Value::Int(right as i64),
                            Value::Text(b.clone()),
                        ];
                        write_row(w, &columns, &row).map_err(|e| (245, 16, e))?;
                        n += 1;
                    }
                }
                Ok((0xC1, Some(n)))
            }
            Statement::PrimaryKey(key) => {
                let table = self.view(&key);
                let columns = [Column {
                    name: "name".into(),
                    ty: SqlType::NVarChar(Some(128)),
                    nullable: false,
                }];
                write_metadata(w, &columns);
                let keys = table.map(|t| t.primary_key.clone()).unwrap_or_default();
                for k in &keys {
                    write_row(w, &columns, &[Value::Text(k.clone())]).map_err(|e| (245, 16, e))?;
                }
                Ok((0xC1, Some(keys.len() as u64)))
            }
            Statement::Describe(select) => {
                let table = self
                    .view(&select.table)
                    .ok_or_else(|| invalid_object(&select.table))?;
                let chosen: Vec<Column> = match &select.columns {
                    None => table.columns.clone(),
                    Some(names) => names
                        .iter()
                        .map(|n| {
                            column_index(&table, n)
                                .map(|i| table.columns[i].clone())
                                .ok_or_else(|| (207, 16, format!("Invalid column name '{n}'.")))
                        })
                        .collect::<Result<_, _>>()?,
                };
                let meta = [
                    Column {
                        name: "is_hidden".into(),
                        ty: SqlType::Bit,
                        nullable: false,
                    },
                    Column {
                        name: "column_ordinal".into(),
                        ty: SqlType::Int,
                        nullable: false,
                    },
                    Column {
                        name: "name".into(),
                        ty: SqlType::NVarChar(Some(128)),
                        nullable: true,
                    },
                    Column {
                        name: "is_nullable".into(),
                        ty: SqlType::Bit,
                        nullable: false,
                    },
                    Column {
                        name: "system_type_id".into(),
                        ty: SqlType::Int,
                        nullable: false,
                    },
                    Column {
                        name: "system_type_name".into(),
                        ty: SqlType::NVarChar(Some(256)),
                        nullable: true,
                    },
                ];
                write_metadata(w, &meta);
                for (i, c) in chosen.iter().enumerate() {
                    let row = [
                        Value::Bool(false),
                        Value::Int(i as i64 + 1),
                        Value::Text(c.name.clone()),
                        Value::Bool(c.nullable),
                        Value::Int(c.ty.system_type_id()),
                        Value::Text(c.ty.name()),
                    ];
                    write_row(w, &meta, &row).map_err(|e| (245, 16, e))?;
                }
                Ok((0xC1, Some(chosen.len() as u64)))
            }
            Statement::Select(select) => {
                let table = self
                    .view(&select.table)
                    .ok_or_else(|| invalid_object(&select.table))?;
                let indexes: Vec<usize> = match &select.columns {
                    None => (0..table.columns.len()).collect(),
                    Some(names) => names
                        .iter()
                        .map(|n| {
                            column_index(&table, n)
                                .ok_or_else(|| (207, 16, format!("Invalid column name '{n}'.")))
                        })
                        .collect::<Result<_, _>>()?,
                };
                let mut filters = Vec::new();
                for c in &select.conditions {
                    filters.push(filter(&table, c)?);
                }
                let mut order: Vec<usize> = (0..table.rows.len()).collect();
                if !select.order_by.is_empty() {
                    let keys: Vec<usize> = select
                        .order_by
                        .iter()
                        .map(|n| {
                            column_index(&table, n)
                                .ok_or_else(|| (207, 16, format!("Invalid column name '{n}'.")))
                        })
                        .collect::<Result<_, _>>()?;
                    order.sort_by(|a, b| {
                        let (a, b) = (&table.rows[*a], &table.rows[*b]);
                        keys.iter()
                            .map(|k| compare(&a[*k], &b[*k]))
                            .find(|o| o.is_ne())
                            .unwrap_or(std::cmp::Ordering::Equal)
                    });
                }
                let mut columns: Vec<Column> =
                    indexes.iter().map(|i| table.columns[*i].clone()).collect();
                for (column, cast) in columns.iter_mut().zip(&select.casts) {
                    if let Some(ty) = cast {
                        if !matches!(
                            (&column.ty, ty),
                            (SqlType::Money | SqlType::SmallMoney, SqlType::Decimal(_, 4))
                        ) {
                            return Err((
                                529,
                                16,
                                format!(
                                    "The test peer casts money to decimal(p,4) only, not {} to {}.",
                                    column.ty.name(),
                                    ty.name()
                                ),
                            ));
                        }
                        column.ty = ty.clone();
                    }
                }
                write_metadata(w, &columns);
                let mut n = 0u64;
                for row in order.iter().map(|r| &table.rows[*r]) {
                    if select.top.is_some_and(|top| n as usize >= top) {
                        break;
                    }
                    if !filters.iter().all(|f| f(row)) {
                        continue;
                    }
                    let projected: Vec<std::borrow::Cow<'_, Value>> = indexes
                        .iter()
                        .zip(&columns)
                        .map(|(i, c)| match (&row[*i], &c.ty) {
                            // money is an integer of 1/10000: decimal(p, 4) as it is.
                            (Value::Money(v), SqlType::Decimal(_, 4)) => {
                                std::borrow::Cow::Owned(Value::Decimal(*v as i128))
                            }
                            (v, _) => std::borrow::Cow::Borrowed(v),
                        })
                        .collect();
                    write_row(w, &columns, &projected).map_err(|e| (245, 16, e))?;
                    n += 1;
                }
                Ok((0xC1, Some(n)))
            }
            Statement::MinMax { table, column } => {
                let t = self.view(&table).ok_or_else(|| invalid_object(&table))?;
                let i = column_index(&t, &column)
                    .ok_or_else(|| (207, 16, format!("Invalid column name '{column}'.")))?;
                let values: Vec<&Value> = t
                    .rows
                    .iter()
                    .map(|r| &r[i])
                    .filter(|v| **v != Value::Null)
                    .collect();
                let min = values
                    .iter()
                    .copied()
                    .min_by(|a, b| compare(a, b))
                    .cloned()
                    .unwrap_or(Value::Null);
                let max = values
                    .iter()
                    .copied()
                    .max_by(|a, b| compare(a, b))
                    .cloned()
                    .unwrap_or(Value::Null);
                let column = Column {
                    name: String::new(),
                    ty: t.columns[i].ty.clone(),
                    nullable: true,
                };
                let columns = [column.clone(), column];
                write_metadata(w, &columns);
                write_row(w, &columns, &[min, max]).map_err(|e| (245, 16, e))?;
                Ok((0xC1, Some(1)))
            }
            Statement::Create { table, columns } => {
                if self.view(&table).is_some() {
                    return Err((
                        2714,
                        16,
                        format!("There is already an object named '{table}' in the database."),
                    ));
                }
                let new = Table {
                    columns: columns
                        .into_iter()
                        .map(|(name, ty, nullable)| Column { name, ty, nullable })
                        .collect(),
                    rows: Vec::new(),
                    primary_key: Vec::new(),
                    partitioning: None,
                };
                match &mut self.tx {
                    Some(tx) => {
                        tx.created.insert(table, new);
                    }
                    None => {
                        self.lock().tables.insert(table, Arc::new(new));
                    }
                }
                Ok((0, None))
            }
            Statement::Drop { table, if_exists } => {
                if self.view(&table).is_none() {
                    if if_exists {
                        return Ok((0, None));
                    }
                    return Err((
                        3701,
                        11,
                        format!(
                            "Cannot drop the table '{table}', because it does not exist or you do not have permission."
                        ),
                    ));
                }
                match &mut self.tx {
                    Some(tx) => {
                        tx.created.remove(&table);
                        tx.inserted.remove(&table);
                        tx.dropped.insert(table);
                    }
                    None => {
                        self.lock().tables.remove(&table);
                    }
                }
                Ok((0, None))
            }
            Statement::Truncate(table) => {
                if self.view(&table).is_none() {
                    return Err(invalid_object(&table));
                }
                match &mut self.tx {
                    Some(tx) => {
                        tx.inserted.remove(&table);
                        if let Some(created) = tx.created.get_mut(&table) {
                            created.rows.clear();
                        } else {
                            tx.truncated.insert(table);
                        }
                    }
                    None => {
                        if let Some(t) = self.lock().tables.get_mut(&table) {
                            Arc::make_mut(t).rows.clear();
                        }
                    }
                }
                Ok((0, None))
            }
            Statement::InsertSelect {
                table,
                columns,
                select,
            } => {
                let target = self.view(&table).ok_or_else(|| invalid_object(&table))?;
                let source = self
                    .view(&select.table)
                    .ok_or_else(|| invalid_object(&select.table))?;
                let names = select.columns.clone().unwrap_or_else(|| {
                    source
                        .columns
                        .iter()
                        .map(|c| c.name.to_lowercase())
                        .collect()
                });
                let from: Vec<usize> = names
                    .iter()
                    .map(|n| {
                        column_index(&source, n)
                            .ok_or_else(|| (207, 16, format!("Invalid column name '{n}'.")))
                    })
                    .collect::<Result<_, _>>()?;
                let to: Vec<usize> = columns
                    .iter()
                    .map(|n| {
                        column_index(&target, n)
                            .ok_or_else(|| (207, 16, format!("Invalid column name '{n}'.")))
                    })
                    .collect::<Result<_, _>>()?;
                let mut rows = Vec::with_capacity(source.rows.len());
                for row in &source.rows {
                    let mut out = vec![Value::Null; target.columns.len()];
                    for (f, t) in from.iter().zip(&to) {
                        out[*t] = fit(&target.columns[*t].ty, row[*f].clone())
                            .map_err(|e| (8115, 16, e))?;
                    }
                    rows.push(out);
                }
                let n = rows.len() as u64;
                self.append(table, rows);
                Ok((0xC3, Some(n)))
            }
            Statement::InsertBulk { table, .. } => {
                if self.view(&table).is_none() {
                    return Err(invalid_object(&table));
                }
                self.bulk = Some((table, text.to_string()));
                Ok((0, None))
            }
        }
    }

    /// Applies a BulkLoadBCP message to the table its `INSERT BULK` named.
    fn bulk_load(&mut self, payload: Vec<u8>) -> Vec<u8> {
        let mut w = Writer::default();
        let result = match self.bulk.take() {
            None => Err((
                4804,
                16,
                "Bulk load data came without an INSERT BULK statement.".to_string(),
            )),
            Some((table, statement)) => {
                let applied = self.decode_bulk(&table, &statement, &payload);
                self.lock().bulk_loads.push(BulkLoad {
                    table: table.clone(),
                    statement,
                    payload,
                });
                applied.map(|rows| {
                    let n = rows.len() as u64;
                    self.append(table, rows);
                    n
                })
            }
        };
        match result {
            Ok(n) => wire::write_done(&mut w, done::COUNT, 0x00F0, n),
            Err((number, class, message)) => {
                wire::write_error(&mut w, number, class, &message);
                wire::write_done(&mut w, done::ERROR, 0, 0);
            }
        }
        w.0
    }

    fn decode_bulk(
        &self,
        table: &str,
        statement: &str,
        payload: &[u8],
    ) -> Result<Vec<Vec<Value>>, Failure> {
        let declared = match sql::parse(statement) {
            Ok(Statement::InsertBulk { columns, .. }) => columns,
            _ => Vec::new(),
        };
        let bad = |e: String| {
            (
                4816,
                16,
                format!("Invalid column type from bcp client: {e}"),
            )
        };
        let target = self.view(table).ok_or_else(|| invalid_object(table))?;
        let mut r = Reader::new(payload);
        if r.u8().map_err(bad)? != 0x81 {
            return Err(bad("a bulk load starts with COLMETADATA".into()));
        }
        let count = r.u16().map_err(bad)? as usize;
        let mut sent = Vec::with_capacity(count);
        for _ in 0..count {
            r.u32().map_err(bad)?;
            let flags = r.u16().map_err(bad)?;
            let (ty, encoding) = SqlType::read_type_info(&mut r).map_err(bad)?;
            let name_len = r.u8().map_err(bad)? as usize;
            let units: Vec<u16> = r
                .take(name_len * 2)
                .map_err(bad)?
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            let name = String::from_utf16_lossy(&units);
            let index = column_index(&target, &name)
                .ok_or_else(|| (207, 16, format!("Invalid column name '{name}'.")))?;
            // A server checks the bulk data's types against what INSERT BULK declared: a
            // time, datetime2 or datetimeoffset of another scale, or a decimal of another
            // precision or scale, is refused.
            if let Some(declared_ty) = declared
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(&name))
                .map(|(_, t)| t)
            {
                let same = match (declared_ty, &ty) {
                    (SqlType::Time(a), SqlType::Time(b))
                    | (SqlType::DateTime2(a), SqlType::DateTime2(b))
                    | (SqlType::DateTimeOffset(a), SqlType::DateTimeOffset(b)) => a == b,
                    (SqlType::Decimal(p, s), SqlType::Decimal(q, t)) => p == q && s == t,
                    (SqlType::DateTime, SqlType::SmallDateTime)
                    | (SqlType::SmallDateTime, SqlType::DateTime) => false,
                    _ => true,
                };
                if !same {
                    return Err((
                        4816,
                        16,
                        format!(
                            "Invalid column attribute from bcp client for colid {}: INSERT BULK declared {} and the data is {}.",
                            sent.len() + 1,
                            declared_ty.name(),
                            ty.name()
                        ),
                    ));
                }
            }
            sent.push((index, ty, encoding, flags));
        }
        let mut rows = Vec::new();
        loop {
            match r.u8().map_err(bad)? {
                0xD1 => {
                    let mut row = vec![Value::Null; target.columns.len()];
                    for (index, ty, encoding, _) in &sent {
                        let value = ty.read_value(&mut r, *encoding).map_err(|e| {
                            bad(format!(
                                "row {}, column {} ({}): {e}",
                                rows.len() + 1,
                                target.columns[*index].name,
                                ty.name()
                            ))
                        })?;
                        let column = &target.columns[*index];
                        if value == Value::Null && !column.nullable {
                            return Err((
                                515,
                                16,
                                format!(
                                    "Cannot insert the value NULL into column '{}', table '{table}'; column does not allow nulls. INSERT fails.",
                                    column.name
                                ),
                            ));
                        }
                        row[*index] = fit(&column.ty, value).map_err(|e| (8115, 16, e))?;
                    }
                    rows.push(row);
                }
                0xFD => return Ok(rows),
                other => {
                    return Err(bad(format!(
                        "token 0x{other:02X} in a bulk load after {} rows",
                        rows.len()
                    )));
                }
            }
        }
    }
}

/// Checks that `value` fits a column of type `ty` (a bulk load's types may be wider than
/// the table's), as the server's conversion would.
fn fit(ty: &SqlType, value: Value) -> Result<Value, String> {
    let overflow = || {
        format!(
            "Arithmetic overflow error converting {value:?} to data type {}.",
            ty.name()
        )
    };
    match (ty, &value) {
        (SqlType::Decimal(p, _), Value::Decimal(v))
            if v.unsigned_abs() >= 10u128.pow(*p as u32) =>
        {
            Err(overflow())
        }
        (SqlType::TinyInt, Value::Int(v)) if !(0..=255).contains(v) => Err(overflow()),
        (SqlType::SmallInt, Value::Int(v)) if i16::try_from(*v).is_err() => Err(overflow()),
        (SqlType::Int, Value::Int(v)) if i32::try_from(*v).is_err() => Err(overflow()),
        _ => Ok(value),
    }
}

fn column_index(table: &Table, name: &str) -> Option<usize> {
    let key = sql::column_key(name);
    table
        .columns
        .iter()
        .position(|c| c.name.to_lowercase() == key)
}

/// Orders two values of one column.
fn compare(a: &Value, b: &Value) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    match (a, b) {
        (Value::Int(a), Value::Int(b)) => a.cmp(b),
        (Value::Decimal(a), Value::Decimal(b)) => a.cmp(b),
        (Value::Money(a), Value::Money(b)) => a.cmp(b),
        (Value::F32(a), Value::F32(b)) => a.partial_cmp(b).unwrap_or(Ordering::Equal),
        (Value::F64(a), Value::F64(b)) => a.partial_cmp(b).unwrap_or(Ordering::Equal),
        (Value::Text(a), Value::Text(b)) => a.cmp(b),
        (Value::Date(a), Value::Date(b)) => a.cmp(b),
        (Value::Time(a), Value::Time(b)) => a.cmp(b),
        (Value::DateTime(a, x), Value::DateTime(b, y)) => (a, x).cmp(&(b, y)),
        (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
        (Value::Bytes(a), Value::Bytes(b)) => a.cmp(b),
        (Value::Guid(a), Value::Guid(b)) => a.cmp(b),
        _ => Ordering::Equal,
    }
}

type Filter = Box<dyn Fn(&[Value]) -> bool>;

fn filter(table: &Table, condition: &Condition) -> Result<Filter, Failure> {
    let column = |name: &str| {
        column_index(table, name).ok_or_else(|| (207, 16, format!("Invalid column name '{name}'.")))
    };
    Ok(match condition {
        Condition::IsNull(c) => {
            let i = column(c)?;
            Box::new(move |row| row[i] == Value::Null)
        }
        Condition::NotNull(c) => {
            let i = column(c)?;
            Box::new(move |row| row[i] != Value::Null)
        }
        Condition::Or(parts) | Condition::And(parts) => {
            let all = matches!(condition, Condition::And(_));
            let parts: Vec<Filter> = parts
                .iter()
                .map(|p| filter(table, p))
                .collect::<Result<_, _>>()?;
            Box::new(move |row| {
                if all {
                    parts.iter().all(|p| p(row))
                } else {
                    parts.iter().any(|p| p(row))
                }
            })
        }
        Condition::Compare(c, op, literal) => {
            let i = column(c)?;
            let value = parse_literal(&table.columns[i].ty, literal).ok_or_else(|| {
                (
                    245,
                    16,
                    format!(
                        "Conversion failed when converting '{literal}' to {}.",
                        table.columns[i].ty.name()
                    ),
                )
            })?;
            let op = *op;
            Box::new(move |row| {
                if row[i] == Value::Null {
                    return false;
                }
                let o = compare(&row[i], &value);
                match op {
                    Op::Ge => o.is_ge(),
                    Op::Gt => o.is_gt(),
                    Op::Lt => o.is_lt(),
                    Op::Le => o.is_le(),
                    Op::Eq => o.is_eq(),
                }
            })
        }
    })
}

/// Days since 0001-01-01 of a proleptic Gregorian date.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    // Howard Hinnant's days_from_civil, shifted to 0001-01-01.
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468 + 719_162
}

fn parse_literal(ty: &SqlType, text: &str) -> Option<Value> {
    let date = |s: &str| -> Option<i64> {
        let mut parts = s.split('-');
        let y = parts.next()?.parse().ok()?;
        let m = parts.next()?.parse().ok()?;
        let d = parts.next()?.parse().ok()?;
        Some(days_from_civil(y, m, d))
    };
    let time = |s: &str| -> Option<u64> {
        let (hms, frac) = s.split_once('.').unwrap_or((s, ""));
        let mut parts = hms.split(':');
        let h: u64 = parts.next()?.parse().ok()?;
        let m: u64 = parts.next()?.parse().ok()?;
        let sec: u64 = parts.next().unwrap_or("0").parse().ok()?;
        let mut frac = frac.to_string();
        frac.truncate(7);
        while frac.len() < 7 {
            frac.push('0');
        }
        Some(((h * 60 + m) * 60 + sec) * 10_000_000 + frac.parse::<u64>().ok()?)
    };
    Some(match ty {
        SqlType::TinyInt | SqlType::SmallInt | SqlType::Int | SqlType::BigInt => {
            Value::Int(text.parse().ok()?)
        }
        SqlType::Date => Value::Date(date(text)?),
        SqlType::DateTime | SqlType::DateTime2(_) | SqlType::SmallDateTime => {
            let (d, t) = text.split_once([' ', 'T']).unwrap_or((text, "00:00:00"));
            Value::DateTime(date(d)?, time(t)?)
        }
        SqlType::Time(_) => Value::Time(time(text)?),
        SqlType::Decimal(_, s) => {
            let (int, frac) = text.split_once('.').unwrap_or((text, ""));
            let mut frac = frac.to_string();
            frac.truncate(*s as usize);
            while frac.len() < *s as usize {
                frac.push('0');
            }
            let negative = int.starts_with('-');
            let magnitude: i128 = format!("{}{frac}", int.trim_start_matches('-'))
                .parse()
                .ok()?;
            Value::Decimal(if negative { -magnitude } else { magnitude })
        }
        _ => Value::Text(text.to_string()),
    })
}

fn write_metadata(w: &mut Writer, columns: &[Column]) {
    w.u8(0x81);
    w.u16(columns.len() as u16);
    for c in columns {
        w.u32(0);
        // Nullable, updateable (read/write).
        w.u16(u16::from(c.nullable) | 0x0008);
        c.ty.write_type_info(w, c.nullable);
        if matches!(c.ty, SqlType::Text | SqlType::NText | SqlType::Image) {
            // The table name of a text column: one part.
            w.u8(1);
            w.us_varchar("t");
        }
        w.b_varchar(&c.name);
    }
}

/// Writes a row: NBCROW when it holds a NULL, ROW otherwise.
fn write_row<V: std::borrow::Borrow<Value>>(
    w: &mut Writer,
    columns: &[Column],
    row: &[V],
) -> Result<(), String> {
    let row: Vec<&Value> = row.iter().map(|v| v.borrow()).collect();
    if row.contains(&&Value::Null) {
        w.u8(0xD2);
        let mut bitmap = vec![0u8; columns.len().div_ceil(8)];
        for (i, v) in row.iter().enumerate() {
            if **v == Value::Null {
                bitmap[i / 8] |= 1 << (i % 8);
            }
        }
        w.bytes(&bitmap);
        for (c, v) in columns.iter().zip(row) {
            if *v != Value::Null {
                c.ty.write_value(w, v, !c.nullable && is_fixed(&c.ty))?;
            }
        }
    } else {
        w.u8(0xD1);
        for (c, v) in columns.iter().zip(row) {
            c.ty.write_value(w, v, !c.nullable && is_fixed(&c.ty))?;
        }
    }
    Ok(())
}

/// Whether a NOT NULL column of this type is sent without a length (fixed-length types).
fn is_fixed(ty: &SqlType) -> bool {
    matches!(
        ty,
        SqlType::Bit
            | SqlType::TinyInt
            | SqlType::SmallInt
            | SqlType::Int
            | SqlType::BigInt
            | SqlType::Real
            | SqlType::Float
            | SqlType::Money
            | SqlType::SmallMoney
            | SqlType::DateTime
            | SqlType::SmallDateTime
    )
}

/// Splits a batch at `;` outside quotes and brackets.
/// An RPC request to `sp_executesql` (by name, or as procedure id 10) as the SQL batch it
/// stands for: the statement with each parameter replaced by its value as a literal. Other
/// procedures are refused as SQL Server refuses an unknown one (2812).
fn rpc_batch(payload: &[u8]) -> Result<Vec<u8>, (u32, String)> {
    let bad = |e: String| (8016, format!("The incoming RPC request is incorrect: {e}"));
    let headers = payload
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or_else(|| bad("no headers".into()))?;
    let mut r = wire::Reader::new(
        payload
            .get(headers..)
            .ok_or_else(|| bad("headers".into()))?,
    );
    let name_len = r.u16().map_err(bad)?;
    let procedure = if name_len == 0xFFFF {
        match r.u16().map_err(bad)? {
            10 => "sp_executesql".to_string(),
            id => format!("procedure id {id}"),
        }
    } else {
        utf16(r.take(name_len as usize * 2).map_err(bad)?)
    };
    if !procedure.eq_ignore_ascii_case("sp_executesql") {
        return Err((
            2812,
            format!("Could not find stored procedure '{procedure}'."),
        ));
    }
    r.u16().map_err(bad)?; // option flags
    let mut params = Vec::new();
    while !r.is_empty() {
        let len = r.u8().map_err(bad)? as usize;
        let name = utf16(r.take(len * 2).map_err(bad)?);
        r.u8().map_err(bad)?; // status flags
        let (ty, encoding) = SqlType::read_type_info(&mut r).map_err(bad)?;
        let value = ty.read_value(&mut r, encoding).map_err(bad)?;
        params.push((name, ty, value));
    }
    let mut params = params.into_iter();
    let statement = match params.next() {
        Some((_, _, Value::Text(text))) => text,
        _ => return Err(bad("the first parameter is not the statement".into())),
    };
    // The second parameter declares the others (`@P1 int, ...`); their values follow.
    let mut values: Vec<(String, String)> = params
        .skip(1)
        .map(|(name, ty, value)| Ok((name, literal(&ty, &value)?)))
        .collect::<Result<_, String>>()
        .map_err(|e| (8016, e))?;
    // Longest names first, so that @P1 does not replace the start of @P10.
    values.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
    let mut text = statement;
    for (name, literal) in values {
        text = text.replace(&name, &literal);
    }
    let mut batch = payload[..headers].to_vec();
    batch.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
    Ok(batch)
}

fn utf16(bytes: &[u8]) -> String {
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16_lossy(&units)
}

/// A parameter's value as a T-SQL literal.
fn literal(ty: &SqlType, value: &Value) -> Result<String, String> {
    Ok(match value {
        Value::Null => "NULL".into(),
        Value::Bool(b) => u8::from(*b).to_string(),
        Value::Int(i) => i.to_string(),
        Value::F32(f) => format!("{f:e}"),
        Value::F64(f) => format!("{f:e}"),
        Value::Text(t) => format!("N'{}'", t.replace('\'', "''")),
        Value::Decimal(unscaled) => {
            let scale = match ty {
                SqlType::Decimal(_, s) => *s as usize,
                _ => 0,
            };
            let digits = unscaled.unsigned_abs().to_string();
            let digits = format!("{digits:0>width$}", width = scale + 1);
            let (int, frac) = digits.split_at(digits.len() - scale);
            let sign = if *unscaled < 0 { "-" } else { "" };
            if scale == 0 {
                format!("{sign}{int}")
            } else {
                format!("{sign}{int}.{frac}")
            }
        }
        other => return Err(format!("the test peer takes no {other:?} parameter")),
    })
}

fn split_statements(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut quote, mut bracket) = (false, false);
    let mut current = String::new();
    for c in text.chars() {
        match c {
            '\'' if !bracket => quote = !quote,
            '[' if !quote => bracket = true,
            ']' if !quote => bracket = false,
            ';' if !quote && !bracket => {
                out.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    out.push(current);
    out.into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The TLS handshake of a TDS session: the handshake's records travel in PRELOGIN packets
/// until it completes; then TLS carries TDS packets.
fn handshake(
    config: Arc<rustls::ServerConfig>,
    mut tcp: TcpStream,
) -> std::io::Result<rustls::StreamOwned<rustls::ServerConnection, TcpStream>> {
    let mut conn = rustls::ServerConnection::new(config).map_err(std::io::Error::other)?;
    loop {
        if conn.wants_write() {
            let mut out = Vec::new();
            while conn.wants_write() {
                conn.write_tls(&mut out)?;
            }
            wire::write_message(&mut tcp, packet::PRELOGIN, &out)?;
            continue;
        }
        if !conn.is_handshaking() {
            break;
        }
        let (_, payload) = wire::read_message(&mut tcp)?;
        let mut slice = &payload[..];
        while !slice.is_empty() {
            conn.read_tls(&mut slice)?;
            conn.process_new_packets()
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        }
    }
    Ok(rustls::StreamOwned::new(conn, tcp))
}
