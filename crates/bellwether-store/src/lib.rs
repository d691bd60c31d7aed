//! The server's persistent state behind one async API, on SQLite (embedded, the default) or
//! PostgreSQL (for scale).
//!
//! The store owns hosts, token hashes, current and historical profiles, baselines, metric
//! samples, drift results and the event log. It never sees a plain token (only SHA-256
//! hashes), never computes drift itself and never reads the clock: callers pass `now_ms`, so
//! that the same calls give the same rows in tests.
//!
//! Both backends run the same SQL where the dialects agree (sqlx binds `$1`-style parameters on
//! SQLite too) and differ only in the migrations and on the sample-ingest hot path, where each
//! gets the fastest batched insert it supports.

#![forbid(unsafe_code)]

mod migrations;
pub mod testing;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use bellwether_model::{DriftScore, HostName, HostProfile, MetricSample};
use sha2::{Digest, Sha256};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, Executor, Row};

/// sqlx logs every statement at INFO and slow ones at WARN, with the full SQL text — a 500-row
/// sample insert makes a 20 KB log line. Statements go to TRACE and slow ones (over a second)
/// to DEBUG, where they help a developer without flooding an operator's log.
const SLOW_STATEMENT: Duration = Duration::from_secs(1);

/// Where the store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// A SQLite database file, created when missing, in WAL mode.
    Sqlite { path: PathBuf },
    /// A PostgreSQL database. With `schema`, every table lives in that schema (created when
    /// missing), which lets tests and benchmarks share one database without touching each
    /// other's rows.
    Postgres { url: String, schema: Option<String> },
}

impl StoreConfig {
    /// The SQLite store in `data_dir`, as `bellwether server --data-dir` uses it.
    pub fn sqlite_in(data_dir: &Path) -> StoreConfig {
        StoreConfig::Sqlite {
            path: data_dir.join("bellwether.db"),
        }
    }

    /// Parses a `--database` value: `postgres://…`/`postgresql://…`, or `sqlite://PATH`.
    pub fn from_url(url: &str) -> Result<StoreConfig, StoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(StoreConfig::Postgres {
                url: url.to_string(),
                schema: None,
            })
        } else if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(StoreError::BadInput {
                    field: "database".into(),
                    reason: "sqlite:// needs a file path, as in sqlite://./bellwether.db".into(),
                });
            }
            Ok(StoreConfig::Sqlite {
                path: PathBuf::from(path),
            })
        } else {
            Err(StoreError::BadInput {
                field: "database".into(),
                reason: format!(
                    "{url:?} is not a database URL; use postgres://USER@HOST:PORT/DB or sqlite://PATH"
                ),
            })
        }
    }
}

/// Everything that can go wrong in the store, with the operation and host it concerns.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the {backend} store at {location}: {source}")]
    Open {
        backend: &'static str,
        location: String,
        source: sqlx::Error,
    },
    #[error("migration {version} ({name}) failed: {source}")]
    Migrate {
        version: i64,
        name: &'static str,
        source: sqlx::Error,
    },
    #[error("store query `{op}` failed: {source}")]
    Query {
        op: &'static str,
        source: sqlx::Error,
    },
    #[error("unknown host {0}")]
    UnknownHost(HostName),
    #[error("stored {what} for host {host} is not valid JSON: {source}")]
    Corrupt {
        what: &'static str,
        host: String,
        source: serde_json::Error,
    },
    #[error("bad {field}: {reason}")]
    BadInput { field: String, reason: String },
    #[error(
        "the {backend} store at {location} is damaged: {reason}. Bellwether left it as it is and \
         will not start on it (it never starts afresh over an existing store); restore it from a \
         backup, or move it aside to start an empty store"
    )]
    Damaged {
        backend: &'static str,
        location: String,
        reason: String,
    },
    #[error(
        "the {backend} store at {location} has schema version {found}, newer than version \
         {supported}, the newest this bellwether knows; run the bellwether release that wrote it, \
         or a newer one"
    )]
    TooNew {
        backend: &'static str,
        location: String,
        found: i64,
        supported: i64,
    },
    /// A durable save refused by its fencing check: this server does not hold the leader lease
    /// (any more) under the epoch it saves with. Nothing was written; the current leader
    /// drives the task from the store.
    #[error(
        "not saved: this server is fenced off (lease holder {}, epoch {}): {reason}; the current leader drives the task",
        holder.as_deref().unwrap_or("none"),
        epoch.map_or_else(|| "none".to_string(), |e| e.to_string())
    )]
    Fenced {
        holder: Option<String>,
        epoch: Option<i64>,
        reason: String,
    },
}

/// What a failed store call means for whoever asked: how an API should answer it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The disk under the store is full (SQLite `SQLITE_FULL`, `ENOSPC`/`EDQUOT`, PostgreSQL
    /// `53100 disk_full`): nothing was written, and the same call succeeds once space is freed.
    DiskFull,
    /// The database is busy, locked, unreachable or out of resources for now; retrying later
    /// may succeed.
    Unavailable,
    /// Anything else: a bug, bad input or a damaged store.
    Other,
}

impl StoreError {
    /// Classifies the error by its database or I/O cause.
    pub fn failure_kind(&self) -> FailureKind {
        match self {
            StoreError::Open { source, .. }
            | StoreError::Migrate { source, .. }
            | StoreError::Query { source, .. } => classify(source),
            // Another replica leads: the request may succeed there, or here later.
            StoreError::Fenced { .. } => FailureKind::Unavailable,
            _ => FailureKind::Other,
        }
    }

    /// Whether the store could not write because its disk is full.
    pub fn is_disk_full(&self) -> bool {
        self.failure_kind() == FailureKind::DiskFull
    }
}

const ENOSPC: i32 = 28;
const EDQUOT: i32 = 122;

fn classify(e: &sqlx::Error) -> FailureKind {
    use sqlx::error::DatabaseError as _;
    match e {
        sqlx::Error::Database(db) => {
            if let Some(s) = db.try_downcast_ref::<sqlx::sqlite::SqliteError>() {
                // The primary result code is the low byte of the extended one.
                let code = s.code().and_then(|c| c.parse::<i32>().ok()).unwrap_or(0) & 0xff;
                match code {
                    13 => FailureKind::DiskFull,                 // SQLITE_FULL
                    5 | 6 | 10 | 15 => FailureKind::Unavailable, // BUSY, LOCKED, IOERR, PROTOCOL
                    _ => FailureKind::Other,
                }
            } else if let Some(p) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                let code = p.code();
                if code == "53100" {
                    FailureKind::DiskFull
                } else if code.starts_with("08")
                    || code.starts_with("53")
                    || code.starts_with("57P")
                    || code == "40001"
                    || code == "40P01"
                {
                    FailureKind::Unavailable
                } else {
                    FailureKind::Other
                }
            } else {
                FailureKind::Other
            }
        }
        sqlx::Error::Io(io) if matches!(io.raw_os_error(), Some(ENOSPC | EDQUOT)) => {
            FailureKind::DiskFull
        }
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => FailureKind::Unavailable,
        _ => FailureKind::Other,
    }
}

/// Whether a SQLite error says the file is not a database or is corrupt.
fn is_sqlite_damage(e: &sqlx::Error) -> bool {
    use sqlx::error::DatabaseError as _;
    match e {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<sqlx::sqlite::SqliteError>()
            .and_then(|s| s.code().and_then(|c| c.parse::<i32>().ok()))
            .is_some_and(|c| matches!(c & 0xff, 11 | 26)), // SQLITE_CORRUPT, SQLITE_NOTADB
        _ => false,
    }
}

fn q(op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { op, source }
}

/// The kinds (roles) of API token. Viewer, operator and admin tokens are held by people and
/// rank in that order (each may do what the ones before it may); the enrolment token is
/// fleet-wide and only enrols; an agent token belongs to one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    Viewer,
    Operator,
    Admin,
    Enrol,
    Agent,
}

impl TokenKind {
    /// Every kind, in the order of [`TokenKind::as_str`]'s documentation.
    pub const ALL: [TokenKind; 5] = [
        TokenKind::Viewer,
        TokenKind::Operator,
        TokenKind::Admin,
        TokenKind::Enrol,
        TokenKind::Agent,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Viewer => "viewer",
            TokenKind::Operator => "operator",
            TokenKind::Admin => "admin",
            TokenKind::Enrol => "enrol",
            TokenKind::Agent => "agent",
        }
    }

    /// The kind named `s` (`viewer`, `operator`, `admin`, `enrol`, `agent`).
    pub fn parse(s: &str) -> Option<TokenKind> {
        TokenKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The rank of a person's token (viewer 1, operator 2, admin 3); `None` for the enrolment
    /// and agent tokens, which are outside that ladder.
    pub fn rank(self) -> Option<u8> {
        match self {
            TokenKind::Viewer => Some(1),
            TokenKind::Operator => Some(2),
            TokenKind::Admin => Some(3),
            TokenKind::Enrol | TokenKind::Agent => None,
        }
    }
}

impl std::fmt::Display for TokenKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a presented token turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenGrant {
    /// The token's id: stable, never reused, safe to log (it is not the token).
    pub id: i64,
    pub kind: TokenKind,
    /// The host an agent token belongs to; `None` for every other kind.
    pub host: Option<HostName>,
}

/// A stored token as an admin sees it: never the token itself, nor its hash.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TokenInfo {
    pub id: i64,
    /// The token's role (`viewer`, `operator`, `admin`, `enrol`, `agent`).
    #[serde(rename = "role")]
    pub kind: TokenKind,
    /// What the token is for, as given when it was made (`operator.token` for the tokens the
    /// server keeps in its data dir).
    pub name: String,
    /// The host of an agent token.
    pub host: Option<HostName>,
    pub created_at_ms: i64,
    /// Whether this is the token the server keeps in `<data-dir>/<kind>.token` (set at start).
    pub bootstrap: bool,
}

/// The SHA-256 of a plain token, in lower-case hex: the only form the store keeps.
pub fn hash_token(plain: &str) -> String {
    hex::encode(Sha256::digest(plain.as_bytes()))
}

/// A host as the operator sees it in a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct HostRecord {
    pub name: HostName,
    pub labels: BTreeMap<String, String>,
    pub enrolled_at_ms: i64,
    pub last_seen_ms: Option<i64>,
    pub baseline_at_ms: Option<i64>,
    /// The host's latest overall drift, when it has a baseline and a score was computed.
    pub overall_drift: Option<f64>,
    /// The address its agent declared at enrolment (`--address`), for PromQL's
    /// `{{address}}`.
    pub address: Option<String>,
}

impl HostRecord {
    pub fn has_baseline(&self) -> bool {
        self.baseline_at_ms.is_some()
    }
}

/// Whether an enrolment created the host or re-issued its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enrolment {
    New,
    Renewed,
}

/// The kinds of event in the event log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Enrolled,
    TokenSet,
    ProfileChanged,
    BaselineCaptured,
    DriftRecomputed,
    SamplesDropped,
    TokenCreated,
    TokenRevoked,
    /// Who did what through the API: a state-changing request, or a refused one.
    Audit,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Enrolled => "enrolled",
            EventKind::TokenSet => "token_set",
            EventKind::ProfileChanged => "profile_changed",
            EventKind::BaselineCaptured => "baseline_captured",
            EventKind::DriftRecomputed => "drift_recomputed",
            EventKind::SamplesDropped => "samples_dropped",
            EventKind::TokenCreated => "token_created",
            EventKind::TokenRevoked => "token_revoked",
            EventKind::Audit => "audit",
        }
    }
}

/// One entry of the event log, as read back.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Event {
    pub id: i64,
    pub ts_ms: i64,
    pub kind: String,
    pub host: Option<String>,
    pub reason: String,
    pub figures: serde_json::Value,
    /// The durable task (rollout, patch…) whose step wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
}

/// A stored drift score and when it was computed.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDrift {
    pub computed_at_ms: i64,
    pub score: DriftScore,
}

/// Rows per multi-row `INSERT` on SQLite: 4 parameters each keeps a statement far below
/// SQLite's 32,766-parameter limit while amortising the per-statement cost.
const SQLITE_SAMPLE_CHUNK: usize = 500;

/// The store. Cheap to clone: it holds a connection pool.
#[derive(Debug, Clone)]
pub struct Store {
    backend: Backend,
    /// SQLite allows one writer at a time; a writer that finds the lock taken sleeps and
    /// retries with growing pauses, which wastes most of the time under concurrent ingest.
    /// Writers therefore take turns here, in order, before they touch the database.
    sqlite_writer: Option<std::sync::Arc<tokio::sync::Mutex<()>>>,
    /// Whether durable saves check the leader lease, shared by every clone (see `lease`).
    fence: std::sync::Arc<std::sync::Mutex<lease::FenceState>>,
    /// Counts the writes this process has finished (see [`Store::follow_writes`]), shared by
    /// every clone.
    writes: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
}

/// A write's turn (see [`Store::write_turn`]): SQLite's writer lock, and on drop (after the
/// write committed or failed) one more finished write for [`Store::follow_writes`].
struct WriteTurn<'a> {
    _lock: Option<tokio::sync::MutexGuard<'a, ()>>,
    writes: &'a tokio::sync::watch::Sender<u64>,
}

impl Drop for WriteTurn<'_> {
    fn drop(&mut self) {
        self.writes.send_modify(|n| *n = n.wrapping_add(1));
    }
}

#[derive(Debug, Clone)]
enum Backend {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs the same block of sqlx calls against whichever pool the store holds. The block is
/// expanded once per backend, so each expansion is type-checked against its own driver.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.backend {
            Backend::Sqlite($pool) => $body,
            Backend::Postgres($pool) => $body,
        }
    };
}

/// Appends one event through any executor (a pool or an open transaction), so that an event
/// commits or rolls back together with the change it records.
macro_rules! insert_event {
    ($exec:expr, $now_ms:expr, $kind:expr, $host:expr, $reason:expr, $figures:expr) => {{
        let host: Option<&HostName> = $host;
        let kind: EventKind = $kind;
        let reason: &str = $reason;
        let figures: &serde_json::Value = $figures;
        sqlx::query(
            "INSERT INTO events (ts_ms, kind, host, reason, figures) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind($now_ms)
        .bind(kind.as_str())
        .bind(host.map(|h| h.as_str().to_string()))
        .bind(reason.to_string())
        .bind(figures.to_string())
        .execute($exec)
        .await
        .map_err(q("insert event"))
        .map(|_| ())
    }};
}

fn check_schema_name(schema: &str) -> Result<(), StoreError> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !schema.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadInput {
            field: "schema".into(),
            reason: format!(
                "{schema:?} must be 1 to 63 characters of a-z, 0-9 and '_', not starting with a digit"
            ),
        })
    }
}

/// Drops a PostgreSQL schema and everything in it. Tests and benchmarks call it on the unique
/// schema they made; it is never called by the server.
pub async fn drop_postgres_schema(url: &str, schema: &str) -> Result<(), StoreError> {
    check_schema_name(schema)?;
    let opts = PgConnectOptions::from_str(url).map_err(|source| StoreError::Open {
        backend: "postgres",
        location: redact(url),
        source,
    })?;
    let mut conn = sqlx::PgConnection::connect_with(&opts)
        .await
        .map_err(|source| StoreError::Open {
            backend: "postgres",
            location: redact(url),
            source,
        })?;
    conn.execute(format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE").as_str())
        .await
        .map_err(q("drop schema"))?;
    conn.close().await.map_err(q("close"))?;
    Ok(())
}

/// Hides the password of a database URL for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            match userinfo.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &userinfo[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

fn labels_json(labels: &BTreeMap<String, String>) -> String {
    serde_json::to_string(labels).expect("a string map always serialises")
}

fn parse_labels(host: &str, s: &str) -> Result<BTreeMap<String, String>, StoreError> {
    serde_json::from_str(s).map_err(|source| StoreError::Corrupt {
        what: "labels",
        host: host.to_string(),
        source,
    })
}

fn parse_profile(host: &str, what: &'static str, s: &str) -> Result<HostProfile, StoreError> {
    serde_json::from_str(s).map_err(|source| StoreError::Corrupt {
        what,
        host: host.to_string(),
        source,
    })
}

fn host_name(s: String) -> Result<HostName, StoreError> {
    HostName::new(s.clone()).map_err(|e| StoreError::BadInput {
        field: "hosts.name".into(),
        reason: format!("stored name {s:?} is invalid: {e}"),
    })
}

/// The configuration part of a profile, hashed: two profiles that differ only in their
/// collection time or metric values share a fingerprint, so history keeps distinct
/// configurations rather than every report.
fn fingerprint(profile: &HostProfile) -> String {
    let mut p = profile.clone();
    p.collected_at_ms = 0;
    p.metrics.clear();
    let json = serde_json::to_string(&p).expect("a profile always serialises");
    hex::encode(Sha256::digest(json.as_bytes()))
}

fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), StoreError> {
    for (k, v) in labels {
        if k.is_empty() {
            return Err(StoreError::BadInput {
                field: "labels".into(),
                reason: "a label key is empty".into(),
            });
        }
        if k.len() > 256 || v.len() > 1024 {
            return Err(StoreError::BadInput {
                field: format!("labels.{k}"),
                reason: "label keys are at most 256 bytes and values at most 1024".into(),
            });
        }
    }
    Ok(())
}

fn check_samples(samples: &[MetricSample]) -> Result<(), StoreError> {
    for (i, s) in samples.iter().enumerate() {
        if s.name.is_empty() || s.name.len() > 256 {
            return Err(StoreError::BadInput {
                field: format!("samples[{i}].name"),
                reason: "a metric name has 1 to 256 bytes".into(),
            });
        }
        if !s.value.is_finite() {
            return Err(StoreError::BadInput {
                field: format!("samples[{i}].value"),
                reason: format!("metric {} has the non-finite value {}", s.name, s.value),
            });
        }
    }
    Ok(())
}

/// The newest schema version this binary knows.
fn latest_schema_version() -> i64 {
    migrations::MIGRATIONS
        .iter()
        .map(|m| m.version)
        .max()
        .unwrap_or(0)
}

/// Every table the migrations leave in place (read from their `CREATE TABLE`, `DROP TABLE` and
/// `ALTER TABLE … RENAME TO` statements; both backends create the same tables), with `bw_migrations`.
fn schema_tables() -> Vec<&'static str> {
    let mut tables = vec!["bw_migrations"];
    for m in migrations::MIGRATIONS {
        for statement in m.sqlite.split(';') {
            let words: Vec<&str> = statement.split_whitespace().collect();
            let name = |rest: &[&'static str]| {
                let rest = match rest {
                    ["IF", "NOT", "EXISTS", tail @ ..] | ["IF", "EXISTS", tail @ ..] => tail,
                    other => other,
                };
                rest.first()
                    .map(|n| n.split('(').next().unwrap_or(n).trim_matches('"'))
            };
            match words.as_slice() {
                ["CREATE", "TABLE", rest @ ..] => {
                    if let Some(n) = name(rest).filter(|n| !tables.contains(n)) {
                        tables.push(n);
                    }
                }
                ["DROP", "TABLE", rest @ ..] => {
                    if let Some(n) = name(rest) {
                        tables.retain(|t| *t != n);
                    }
                }
                ["ALTER", "TABLE", from, "RENAME", "TO", to] => {
                    let (from, to) = (from.trim_matches('"'), to.trim_matches('"'));
                    tables.retain(|t| *t != from);
                    if !tables.contains(&to) {
                        tables.push(to);
                    }
                }
                _ => {}
            }
        }
    }
    tables
}

/// The 16 bytes every SQLite database file starts with.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// Before SQLite touches an existing file: it must not be empty (SQLite would take a
/// zero-length file for a new database and start afresh) and must start with SQLite's header.
/// A missing file is fine: that is a first start.
fn check_sqlite_file(path: &Path) -> Result<(), StoreError> {
    use std::io::Read;
    let damaged = |reason: String| StoreError::Damaged {
        backend: "sqlite",
        location: path.display().to_string(),
        reason,
    };
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(StoreError::Open {
                backend: "sqlite",
                location: path.display().to_string(),
                source: sqlx::Error::Io(e),
            })
        }
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len == 0 {
        return Err(damaged(
            "the file is empty (0 bytes), so whatever it held is lost".into(),
        ));
    }
    let mut header = [0u8; 16];
    let read = file.read(&mut header).unwrap_or(0);
    if read < header.len() || &header != SQLITE_HEADER {
        return Err(damaged(format!(
            "the file ({len} bytes) does not start with the SQLite header: it is not a SQLite database, or its first page is overwritten"
        )));
    }
    Ok(())
}

/// A fleet-wide or person's token must be long enough to be unguessable.
fn check_token_text(kind: TokenKind, plain: &str) -> Result<(), StoreError> {
    if plain.len() < 16 {
        return Err(StoreError::BadInput {
            field: format!("{} token", kind.as_str()),
            reason: "a token needs at least 16 characters".into(),
        });
    }
    Ok(())
}

/// Runs when a connection goes back to the pool. A transaction that failed (a full disk, an
/// I/O error) queues its rollback on the connection; this runs it, and discards the
/// connection when the rollback failed or the transaction is still open, so that no later
/// request reuses a connection that holds the write lock or an open transaction (a later
/// "commit" would then only release a savepoint inside it, and report success for rows never
/// committed).
async fn discard_if_in_transaction<C: Connection>(conn: &mut C) -> Result<bool, sqlx::Error> {
    conn.ping().await?;
    if conn.is_in_transaction() {
        tracing::warn!(
            "Discarding a store connection whose failed transaction could not be rolled back."
        );
        return Ok(false);
    }
    Ok(true)
}

/// A `tokens` row (id, kind, name, host name, created_at_ms, bootstrap) as a [`TokenInfo`];
/// `None` for a kind this version does not know.
fn token_info<R>(row: &R) -> Result<Option<TokenInfo>, StoreError>
where
    R: Row,
    usize: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let kind: String = row.try_get(1).map_err(q("tokens"))?;
    let Some(kind) = TokenKind::parse(&kind) else {
        return Ok(None);
    };
    let host: Option<String> = row.try_get(3).map_err(q("tokens"))?;
    let bootstrap: i64 = row.try_get(5).map_err(q("tokens"))?;
    Ok(Some(TokenInfo {
        id: row.try_get(0).map_err(q("tokens"))?,
        kind,
        name: row.try_get(2).map_err(q("tokens"))?,
        host: host.map(host_name).transpose()?,
        created_at_ms: row.try_get(4).map_err(q("tokens"))?,
        bootstrap: bootstrap != 0,
    }))
}

impl Store {
    /// Opens (creating when needed), checks and migrates the store. An existing store is
    /// checked before anything is written to it: on SQLite the file must be non-empty and pass
    /// `PRAGMA quick_check`; on both backends its schema version must not be newer than this
    /// binary's, and after migrating every table must be there. A store that fails a check is
    /// refused ([`StoreError::Damaged`], [`StoreError::TooNew`]) and left as it is.
    pub async fn open(config: &StoreConfig) -> Result<Store, StoreError> {
        let store = match config {
            StoreConfig::Sqlite { path } => {
                let location = path.display().to_string();
                check_sqlite_file(path)?;
                let opts = SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    // FULL: a commit is on disk before the server answers 2xx, so an
                    // acknowledged write survives a power loss, not only a killed process.
                    .synchronous(SqliteSynchronous::Full)
                    .foreign_keys(true)
                    .busy_timeout(Duration::from_secs(10))
                    .log_statements(log::LevelFilter::Trace)
                    .log_slow_statements(log::LevelFilter::Debug, SLOW_STATEMENT);
                let pool = SqlitePoolOptions::new()
                    .max_connections(4)
                    .after_release(|conn, _meta| Box::pin(discard_if_in_transaction(conn)))
                    .connect_with(opts)
                    .await
                    .map_err(|source| {
                        if is_sqlite_damage(&source) {
                            StoreError::Damaged {
                                backend: "sqlite",
                                location: location.clone(),
                                reason: source.to_string(),
                            }
                        } else {
                            StoreError::Open {
                                backend: "sqlite",
                                location: location.clone(),
                                source,
                            }
                        }
                    })?;
                let store = Store {
                    backend: Backend::Sqlite(pool),
                    sqlite_writer: Some(std::sync::Arc::new(tokio::sync::Mutex::new(()))),
                    fence: Default::default(),
                    writes: Default::default(),
                };
                if let Err(e) = store.quick_check(&location).await {
                    store.close().await;
                    return Err(e);
                }
                store
            }
            StoreConfig::Postgres { url, schema } => {
                let location = redact(url);
                let open_err = |source| StoreError::Open {
                    backend: "postgres",
                    location: location.clone(),
                    source,
                };
                let opts = PgConnectOptions::from_str(url)
                    .map_err(open_err)?
                    .log_statements(log::LevelFilter::Trace)
                    .log_slow_statements(log::LevelFilter::Debug, SLOW_STATEMENT);
                // Sessions keep PostgreSQL's durable commits, sample batches included: a 2xx
                // means stored, so no acknowledged write waits for a later WAL flush.
                // A transaction here is a few statements sent back to back; one left idle for
                // seconds belongs to a stalled or frozen process (a paused replica), whose locks
                // would hold up the others: PostgreSQL ends such a session.
                let mut session = String::from(
                    "SET application_name TO 'bellwether'; SET idle_in_transaction_session_timeout TO '10s'",
                );
                if let Some(schema) = schema {
                    check_schema_name(schema)?;
                    let mut conn = sqlx::PgConnection::connect_with(&opts)
                        .await
                        .map_err(open_err)?;
                    conn.execute(format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"").as_str())
                        .await
                        .map_err(q("create schema"))?;
                    conn.close().await.map_err(q("close"))?;
                    session.push_str(&format!("; SET search_path TO \"{schema}\""));
                }
                let pool_opts = PgPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(Duration::from_secs(10))
                    .after_release(|conn, _meta| Box::pin(discard_if_in_transaction(conn)))
                    .after_connect(move |conn, _meta| {
                        let session = session.clone();
                        Box::pin(async move {
                            conn.execute(session.as_str()).await?;
                            Ok(())
                        })
                    });
                let pool = pool_opts.connect_with(opts).await.map_err(open_err)?;
                Store {
                    backend: Backend::Postgres(pool),
                    sqlite_writer: None,
                    fence: Default::default(),
                    writes: Default::default(),
                }
            }
        };
        let location = match config {
            StoreConfig::Sqlite { path } => path.display().to_string(),
            StoreConfig::Postgres { url, schema } => match schema {
                Some(schema) => format!("{} (schema {schema})", redact(url)),
                None => redact(url),
            },
        };
        let checked = async {
            store.check_schema_version(&location).await?;
            store.migrate().await?;
            store.check_tables(&location).await
        };
        if let Err(e) = checked.await {
            store.close().await;
            return Err(e);
        }
        Ok(store)
    }

    /// SQLite's `PRAGMA quick_check`: every page and index is readable and well formed. Any
    /// finding (or a read that fails on a damaged page) refuses the store.
    async fn quick_check(&self, location: &str) -> Result<(), StoreError> {
        let Backend::Sqlite(pool) = &self.backend else {
            return Ok(());
        };
        let damaged = |reason: String| StoreError::Damaged {
            backend: "sqlite",
            location: location.to_string(),
            reason,
        };
        let rows: Vec<String> = sqlx::query_scalar("PRAGMA quick_check(20)")
            .fetch_all(pool)
            .await
            .map_err(|source| {
                if is_sqlite_damage(&source) {
                    damaged(format!("PRAGMA quick_check failed: {source}"))
                } else {
                    StoreError::Query {
                        op: "quick_check",
                        source,
                    }
                }
            })?;
        if rows.len() == 1 && rows[0] == "ok" {
            return Ok(());
        }
        Err(damaged(format!(
            "PRAGMA quick_check found: {}",
            rows.join("; ")
        )))
    }

    /// The names of the tables in the store (its schema on PostgreSQL).
    async fn table_names(&self) -> Result<std::collections::BTreeSet<String>, StoreError> {
        let sql = match self.backend {
            Backend::Sqlite(_) => {
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            }
            Backend::Postgres(_) => {
                "SELECT table_name::text FROM information_schema.tables WHERE table_schema = current_schema()"
            }
        };
        on_pool!(self, pool => {
            let names: Vec<String> = sqlx::query_scalar(sql)
                .fetch_all(pool)
                .await
                .map_err(q("list tables"))?;
            Ok(names.into_iter().collect())
        })
    }

    /// Refuses a store written by a newer bellwether (a schema version this binary does not
    /// know), and one whose tables exist without the record of its schema version.
    async fn check_schema_version(&self, location: &str) -> Result<(), StoreError> {
        let supported = latest_schema_version();
        let tables = self.table_names().await?;
        if !tables.contains("bw_migrations") {
            let ours: Vec<&str> = schema_tables()
                .into_iter()
                .filter(|t| tables.contains(*t))
                .collect();
            if ours.is_empty() {
                return Ok(());
            }
            return Err(StoreError::Damaged {
                backend: self.backend_name(),
                location: location.to_string(),
                reason: format!(
                    "it holds Bellwether's tables ({}) but not bw_migrations, the record of its schema version",
                    ours.join(", ")
                ),
            });
        }
        let found: Option<i64> = on_pool!(self, pool => {
            sqlx::query_scalar("SELECT MAX(version) FROM bw_migrations")
                .fetch_one(pool)
                .await
                .map_err(q("schema version"))?
        });
        match found {
            Some(found) if found > supported => Err(StoreError::TooNew {
                backend: self.backend_name(),
                location: location.to_string(),
                found,
                supported,
            }),
            _ => Ok(()),
        }
    }

    /// After migrating: every table the migrations create is there.
    async fn check_tables(&self, location: &str) -> Result<(), StoreError> {
        let tables = self.table_names().await?;
        let missing: Vec<&str> = schema_tables()
            .into_iter()
            .filter(|t| !tables.contains(*t))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(StoreError::Damaged {
            backend: self.backend_name(),
            location: location.to_string(),
            reason: format!(
                "its schema version says migrated, but the tables {} are missing",
                missing.join(", ")
            ),
        })
    }

    /// Waits for this connection's turn to write (SQLite only; PostgreSQL takes concurrent
    /// writers itself).
    /// Every write takes its turn here and holds it until it has committed (or failed), so the
    /// turn's end also tells [`Store::follow_writes`] that the event log may have grown.
    async fn write_turn(&self) -> WriteTurn<'_> {
        let lock = match &self.sqlite_writer {
            Some(m) => Some(m.lock().await),
            None => None,
        };
        WriteTurn {
            _lock: lock,
            writes: &self.writes,
        }
    }

    /// Changes after each write this process's store has finished (committed or failed), so a
    /// reader that follows the event log (the server's event stream) awaits a change and then
    /// reads the events after the last id it sent, instead of polling. Writes made by another
    /// process on the same database (another replica) do not show here.
    pub fn follow_writes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.writes.subscribe()
    }

    /// `sqlite` or `postgres`.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// Closes the pool, waiting for connections in use to come back.
    pub async fn close(&self) {
        // SQLite folds the write-ahead log back into the database file when its last
        // connection closes; a connection still held by a task that is being cancelled at
        // shutdown would skip that and leave the pages in `-wal`. Checkpoint first, so a clean
        // shutdown always leaves one whole file (best effort: the WAL is still replayed on the
        // next open if this cannot finish).
        if let Backend::Sqlite(pool) = &self.backend {
            if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(pool)
                .await
            {
                tracing::debug!(error = %e, "The WAL checkpoint at close did not finish.");
            }
        }
        on_pool!(self, pool => pool.close().await)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let create = match self.backend {
            Backend::Sqlite(_) => migrations::MIGRATIONS_TABLE_SQLITE,
            Backend::Postgres(_) => migrations::MIGRATIONS_TABLE_POSTGRES,
        };
        on_pool!(self, pool => {
            sqlx::query(create).execute(pool).await.map_err(q("create migrations table"))?;
            for m in migrations::MIGRATIONS {
                let script = match self.backend {
                    Backend::Sqlite(_) => m.sqlite,
                    Backend::Postgres(_) => m.postgres,
                };
                let err = |source| StoreError::Migrate { version: m.version, name: m.name, source };
                let mut tx = pool.begin().await.map_err(err)?;
                if let Backend::Postgres(_) = self.backend {
                    // Two servers opening one database at once take turns here.
                    sqlx::query("SELECT pg_advisory_xact_lock(7878001)")
                        .execute(&mut *tx)
                        .await
                        .map_err(err)?;
                }
                let done: Option<i64> =
                    sqlx::query_scalar("SELECT version FROM bw_migrations WHERE version = $1")
                        .bind(m.version)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(err)?;
                if done.is_some() {
                    continue;
                }
                // One statement at a time: the scripts hold no `;` inside a statement.
                for statement in script.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                    sqlx::query(statement).execute(&mut *tx).await.map_err(err)?;
                }
                sqlx::query("INSERT INTO bw_migrations (version, name, applied_at_ms) VALUES ($1, $2, $3)")
                    .bind(m.version)
                    .bind(m.name)
                    .bind(0_i64)
                    .execute(&mut *tx)
                    .await
                    .map_err(err)?;
                tx.commit().await.map_err(err)?;
                tracing::info!(version = m.version, name = m.name, backend = self.backend_name(), "Applied store migration.");
            }
            Ok(())
        })
    }

    /// The versions of the applied migrations, in order.
    pub async fn applied_migrations(&self) -> Result<Vec<i64>, StoreError> {
        on_pool!(self, pool => {
            sqlx::query_scalar("SELECT version FROM bw_migrations ORDER BY version")
                .fetch_all(pool)
                .await
                .map_err(q("applied migrations"))
        })
    }

    // ---- tokens ------------------------------------------------------------------------------

    /// Whether the server's own token of a kind (the one kept in `<data-dir>/<kind>.token`)
    /// exists. Tokens made through the API do not count.
    pub async fn has_token(&self, kind: TokenKind) -> Result<bool, StoreError> {
        on_pool!(self, pool => {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tokens WHERE kind = $1 AND bootstrap = 1")
                .bind(kind.as_str())
                .fetch_one(pool)
                .await
                .map_err(q("count tokens"))?;
            Ok(n > 0)
        })
    }

    /// Makes `plain` the server's own token of a kind (`<kind>.token`: viewer, operator,
    /// admin or enrolment), revoking the previous one of that kind — and only that one: tokens
    /// made through the API stay valid — and logs a `token_set` event.
    pub async fn set_fleet_token(
        &self,
        kind: TokenKind,
        plain: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        if kind == TokenKind::Agent {
            return Err(StoreError::BadInput {
                field: "kind".into(),
                reason: "agent tokens are issued by enrolment, per host".into(),
            });
        }
        check_token_text(kind, plain)?;
        let hash = hash_token(plain);
        let name = format!("{}.token", kind.as_str());
        on_pool!(self, pool => {
            let mut tx = pool.begin().await.map_err(q("begin"))?;
            sqlx::query("DELETE FROM tokens WHERE kind = $1 AND bootstrap = 1")
                .bind(kind.as_str())
                .execute(&mut *tx)
                .await
                .map_err(q("revoke tokens"))?;
            let id: i64 = sqlx::query_scalar("INSERT INTO tokens (hash, kind, host_id, name, bootstrap, created_at_ms) VALUES ($1, $2, NULL, $3, 1, $4) RETURNING id")
                .bind(&hash)
                .bind(kind.as_str())
                .bind(&name)
                .bind(now_ms)
                .fetch_one(&mut *tx)
                .await
                .map_err(q("insert token"))?;
            insert_event!(&mut *tx, now_ms, EventKind::TokenSet, None, reason, &serde_json::json!({"kind": kind.as_str(), "token_id": id}))?;
            tx.commit().await.map_err(q("commit"))?;
            Ok(())
        })
    }

    /// Stores a new viewer, operator or admin token (its hash) named `name`, made by the token
    /// `by`, and logs a `token_created` event in the same transaction.
    pub async fn create_token(
        &self,
        kind: TokenKind,
        plain: &str,
        name: &str,
        by: Option<i64>,
        now_ms: i64,
    ) -> Result<TokenInfo, StoreError> {
        let _turn = self.write_turn().await;
        if kind.rank().is_none() {
            return Err(StoreError::BadInput {
                field: "role".into(),
                reason: format!(
                    "a {kind} token cannot be made here; roles are viewer, operator and admin"
                ),
            });
        }
        check_token_text(kind, plain)?;
        let name = name.trim();
        if name.is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
            return Err(StoreError::BadInput {
                field: "name".into(),
                reason: "a token's name is 1 to 200 characters without control characters".into(),
            });
        }
        let hash = hash_token(plain);
        on_pool!(self, pool => {
            let mut tx = pool.begin().await.map_err(q("begin"))?;
            let id: i64 = sqlx::query_scalar("INSERT INTO tokens (hash, kind, host_id, name, bootstrap, created_at_ms) VALUES ($1, $2, NULL, $3, 0, $4) RETURNING id")
                .bind(&hash)
                .bind(kind.as_str())
                .bind(name)
                .bind(now_ms)
                .fetch_one(&mut *tx)
                .await
                .map_err(q("insert token"))?;
            insert_event!(&mut *tx, now_ms, EventKind::TokenCreated, None, &format!("{kind} token {id} ({name}) created"),
                &serde_json::json!({"token_id": id, "role": kind.as_str(), "name": name, "by_token_id": by}))?;
            tx.commit().await.map_err(q("commit"))?;
            Ok(TokenInfo { id, kind, name: name.to_string(), host: None, created_at_ms: now_ms, bootstrap: false })
        })
    }

    /// Every stored token (never the token or its hash), by id.
    pub async fn tokens(&self) -> Result<Vec<TokenInfo>, StoreError> {
        on_pool!(self, pool => {
            let rows = sqlx::query(
                "SELECT t.id, t.kind, t.name, h.name, t.created_at_ms, t.bootstrap FROM tokens t LEFT JOIN hosts h ON h.id = t.host_id ORDER BY t.id",
            )
            .fetch_all(pool)
            .await
            .map_err(q("tokens"))?;
            rows.into_iter()
                .filter_map(|row| token_info(&row).transpose())
                .collect()
        })
    }

    /// Revokes (deletes) the token `id`, logging a `token_revoked` event that names the token
    /// `by` that asked; `None` when there is no such token. A revoked token of the server's own
    /// (`<kind>.token`) is generated afresh at the next start.
    pub async fn revoke_token(
        &self,
        id: i64,
        by: Option<i64>,
        now_ms: i64,
    ) -> Result<Option<TokenInfo>, StoreError> {
        let _turn = self.write_turn().await;
        on_pool!(self, pool => {
            let mut tx = pool.begin().await.map_err(q("begin"))?;
            let row = sqlx::query(
                "SELECT t.id, t.kind, t.name, h.name, t.created_at_ms, t.bootstrap FROM tokens t LEFT JOIN hosts h ON h.id = t.host_id WHERE t.id = $1",
            )
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(q("find token"))?;
            let Some(info) = row.as_ref().map(token_info).transpose()?.flatten() else {
                return Ok(None);
            };
            sqlx::query("DELETE FROM tokens WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(q("revoke token"))?;
            insert_event!(&mut *tx, now_ms, EventKind::TokenRevoked, info.host.as_ref(),
                &format!("{} token {id} ({}) revoked", info.kind, info.name),
                &serde_json::json!({"token_id": id, "role": info.kind.as_str(), "name": info.name, "by_token_id": by}))?;
            tx.commit().await.map_err(q("commit"))?;
            Ok(Some(info))
        })
    }

    /// Looks a presented token up by its hash.
    pub async fn authenticate(&self, plain: &str) -> Result<Option<TokenGrant>, StoreError> {
        let hash = hash_token(plain);
        on_pool!(self, pool => {
            let row = sqlx::query(
                "SELECT t.id, t.kind, h.name FROM tokens t LEFT JOIN hosts h ON h.id = t.host_id WHERE t.hash = $1",
            )
            .bind(&hash)
            .fetch_optional(pool)
            .await
            .map_err(q("authenticate"))?;
            let Some(row) = row else { return Ok(None) };
            let id: i64 = row.try_get(0).map_err(q("authenticate"))?;
            let kind: String = row.try_get(1).map_err(q("authenticate"))?;
            let host: Option<String> = row.try_get(2).map_err(q("authenticate"))?;
            let Some(kind) = TokenKind::parse(&kind) else { return Ok(None) };
            let host = host.map(host_name).transpose()?;
            if kind == TokenKind::Agent && host.is_none() {
                return Ok(None);
            }
            Ok(Some(TokenGrant { id, kind, host }))
        })
    }

    // ---- hosts -------------------------------------------------------------------------------

    /// Enrols a host (or re-enrols it): stores its labels, revokes its previous agent token,
    /// stores the new token's hash and logs an `enrolled` event — all in one transaction.
    pub async fn enrol(
        &self,
        name: &HostName,
        labels: &BTreeMap<String, String>,
        agent_token: &str,
        now_ms: i64,
    ) -> Result<Enrolment, StoreError> {
        let _turn = self.write_turn().await;
        check_labels(labels)?;
        let hash = hash_token(agent_token);
        let labels_s = labels_json(labels);
        on_pool!(self, pool => {
            let mut tx = pool.begin().await.map_err(q("begin"))?;
            // Write first: on SQLite a transaction that reads before it writes can fail with
            // SQLITE_BUSY_SNAPSHOT when another connection commits in between, whereas one
            // that starts by writing waits for the lock (busy timeout) and sees fresh rows.
            let updated = sqlx::query("UPDATE hosts SET labels = $1 WHERE name = $2")
                .bind(&labels_s)
                .bind(name.as_str())
                .execute(&mut *tx)
                .await
                .map_err(q("update host"))?
                .rows_affected();
            let (id, outcome) = if updated > 0 {
                let id: i64 = sqlx::query_scalar("SELECT id FROM hosts WHERE name = $1")
                    .bind(name.as_str())
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(q("find host"))?;
                sqlx::query("DELETE FROM tokens WHERE kind = 'agent' AND host_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(q("revoke agent token"))?;
                (id, Enrolment::Renewed)
            } else {
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO hosts (name, labels, enrolled_at_ms, last_seen_ms) VALUES ($1, $2, $3, $3) RETURNING id",
                )
                .bind(name.as_str())
                .bind(&labels_s)
                .bind(now_ms)
                .fetch_one(&mut *tx)
                .await
                .map_err(q("insert host"))?;
                (id, Enrolment::New)
            };
            sqlx::query("INSERT INTO tokens (hash, kind, host_id, created_at_ms) VALUES ($1, 'agent', $2, $3)")
                .bind(&hash)
                .bind(id)
                .bind(now_ms)
                .execute(&mut *tx)
                .await
                .map_err(q("insert agent token"))?;
            let reason = match outcome {
                Enrolment::New => "host enrolled",
                Enrolment::Renewed => "host re-enrolled; its previous agent token is revoked",
            };
            insert_event!(&mut *tx, now_ms, EventKind::Enrolled, Some(name), reason, &serde_json::json!({"labels": labels}))?;
            tx.commit().await.map_err(q("commit"))?;
            Ok(outcome)
        })
    }

    async fn host_id(&self, name: &HostName) -> Result<i64, StoreError> {
        on_pool!(self, pool => {
            sqlx::query_scalar::<_, i64>("SELECT id FROM hosts WHERE name = $1")
                .bind(name.as_str())
                .fetch_optional(pool)
                .await
                .map_err(q("find host"))?
                .ok_or_else(|| StoreError::UnknownHost(name.clone()))
        })
    }

    /// Sets (or, with `None`, clears) the address the host's agent declared at enrolment.
    /// The caller checks it (`bellwether_model::wire::check_host_address`).
    pub async fn set_host_address(
        &self,
        name: &HostName,
        address: Option<&str>,
    ) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        on_pool!(self, pool => {
            let n = sqlx::query("UPDATE hosts SET address = $1 WHERE name = $2")
                .bind(address)
                .bind(name.as_str())
                .execute(pool)
                .await
                .map_err(q("set host address"))?
                .rows_affected();
            if n == 0 {
                return Err(StoreError::UnknownHost(name.clone()));
            }
            Ok(())
        })
    }

    /// Every host, sorted by name.
    pub async fn list_hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        self.hosts_where(None).await
    }

    /// One host, or `None` when it is unknown.
    pub async fn get_host(&self, name: &HostName) -> Result<Option<HostRecord>, StoreError> {
        Ok(self.hosts_where(Some(name)).await?.into_iter().next())
    }

    async fn hosts_where(&self, name: Option<&HostName>) -> Result<Vec<HostRecord>, StoreError> {
        const BASE: &str = "SELECT h.name, h.labels, h.enrolled_at_ms, h.last_seen_ms, b.captured_at_ms, d.overall, h.address \
            FROM hosts h LEFT JOIN baselines b ON b.host_id = h.id LEFT JOIN drift d ON d.host_id = h.id";
        on_pool!(self, pool => {
            let rows = match name {
                Some(n) => sqlx::query(&format!("{BASE} WHERE h.name = $1"))
                    .bind(n.as_str())
                    .fetch_all(pool)
                    .await,
                None => sqlx::query(&format!("{BASE} ORDER BY h.name")).fetch_all(pool).await,
            }
            .map_err(q("list hosts"))?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let name: String = row.try_get(0).map_err(q("list hosts"))?;
                let labels: String = row.try_get(1).map_err(q("list hosts"))?;
                out.push(HostRecord {
                    labels: parse_labels(&name, &labels)?,
                    enrolled_at_ms: row.try_get(2).map_err(q("list hosts"))?,
                    last_seen_ms: row.try_get(3).map_err(q("list hosts"))?,
                    baseline_at_ms: row.try_get(4).map_err(q("list hosts"))?,
                    overall_drift: row.try_get(5).map_err(q("list hosts"))?,
                    address: row.try_get(6).map_err(q("list hosts"))?,
                    name: host_name(name)?,
                });
            }
            Ok(out)
        })
    }

    /// How many hosts are enrolled.
    pub async fn count_hosts(&self) -> Result<i64, StoreError> {
        on_pool!(self, pool => {
            sqlx::query_scalar("SELECT COUNT(*) FROM hosts")
                .fetch_one(pool)
                .await
                .map_err(q("count hosts"))
        })
    }

    // ---- profiles ----------------------------------------------------------------------------

    /// Stores `profile` as the host's current profile and appends it to the history when its
    /// configuration differs from the last one kept. Returns whether it did (a changed
    /// configuration also logs a `profile_changed` event).
    pub async fn put_profile(
        &self,
        name: &HostName,
        profile: &HostProfile,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let _turn = self.write_turn().await;
        let id = self.host_id(name).await?;
        let fp = fingerprint(profile);
        let json = serde_json::to_string(profile).expect("a profile always serialises");
        on_pool!(self, pool => {
            let mut tx = pool.begin().await.map_err(q("begin"))?;
            sqlx::query(
                "INSERT INTO current_profiles (host_id, received_at_ms, fingerprint, profile) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (host_id) DO UPDATE SET received_at_ms = excluded.received_at_ms, \
                 fingerprint = excluded.fingerprint, profile = excluded.profile",
            )
            .bind(id)
            .bind(now_ms)
            .bind(&fp)
            .bind(&json)
            .execute(&mut *tx)
            .await
            .map_err(q("put profile"))?;
            let last: Option<String> = sqlx::query_scalar(
                "SELECT fingerprint FROM profile_history WHERE host_id = $1 ORDER BY id DESC LIMIT 1",
            )
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(q("last profile"))?;
            let changed = last.as_deref() != Some(fp.as_str());
            if changed {
                sqlx::query("INSERT INTO profile_history (host_id, received_at_ms, fingerprint, profile) VALUES ($1, $2, $3, $4)")
                    .bind(id)
                    .bind(now_ms)
                    .bind(&fp)
                    .bind(&json)
                    .execute(&mut *tx)
                    .await
                    .map_err(q("append profile history"))?;
                let reason = if last.is_none() { "first profile received" } else { "profile configuration changed" };
                insert_event!(&mut *tx, now_ms, EventKind::ProfileChanged, Some(name), reason, &serde_json::json!({"fingerprint": fp}))?;
            }
            sqlx::query("UPDATE hosts SET last_seen_ms = $1 WHERE id = $2")
                .bind(now_ms)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(q("touch host"))?;
            tx.commit().await.map_err(q("commit"))?;
            Ok(changed)
        })
    }

    /// The host's current profile, `None` when it sent none yet. Unknown host → error.
    pub async fn current_profile(
        &self,
        name: &HostName,
    ) -> Result<Option<HostProfile>, StoreError> {
        let id = self.host_id(name).await?;
        on_pool!(self, pool => {
            let s: Option<String> = sqlx::query_scalar("SELECT profile FROM current_profiles WHERE host_id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await
                .map_err(q("current profile"))?;
            s.map(|s| parse_profile(name.as_str(), "profile", &s)).transpose()
        })
    }

    /// The current profile of every host that has one, sorted by host name.
    pub async fn current_profiles(&self) -> Result<Vec<(HostName, HostProfile)>, StoreError> {
        on_pool!(self, pool => {
            let rows = sqlx::query("SELECT h.name, c.profile FROM current_profiles c JOIN hosts h ON h.id = c.host_id ORDER BY h.name")
                .fetch_all(pool)
                .await
                .map_err(q("current profiles"))?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let name: String = row.try_get(0).map_err(q("current profiles"))?;
                let profile: String = row.try_get(1).map_err(q("current profiles"))?;
                let profile = parse_profile(&name, "profile", &profile)?;
                out.push((host_name(name)?, profile));
            }
            Ok(out)
        })
    }

    /// The host's distinct configurations, newest first, at most `limit`.
    pub async fn profile_history(
        &self,
        name: &HostName,
        limit: i64,
    ) -> Result<Vec<(i64, HostProfile)>, StoreError> {
        let id = self.host_id(name).await?;
        on_pool!(self, pool => {
            let rows = sqlx::query("SELECT received_at_ms, profile FROM profile_history WHERE host_id = $1 ORDER BY id DESC LIMIT $2")
                .bind(id)
                .bind(limit)
                .fetch_all(pool)
                .await
                .map_err(q("profile history"))?;
            rows.into_iter()
                .map(|row| {
                    let ts: i64 = row.try_get(0).map_err(q("profile history"))?;
                    let p: String = row.try_get(1).map_err(q("profile history"))?;
                    Ok((ts, parse_profile(name.as_str(), "profile history", &p)?))
                })
                .collect()
        })
    }

    // ---- baselines ---------------------------------------------------------------------------

    /// Stores the host's known-good baseline (replacing any earlier one) and logs a
    /// `baseline_captured` event.
    pub async fn set_baseline(
        &self,
        name: &HostName,
        profile: &HostProfile,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        let id = self.host_id(name).await?;
        let json = serde_json::to_string(profile).expect("a profile always serialises");
        on_pool!(self, pool => {
            let mut tx = pool.begin().await.map_err(q("begin"))?;
            sqlx::query(
                "INSERT INTO baselines (host_id, captured_at_ms, profile) VALUES ($1, $2, $3) \
                 ON CONFLICT (host_id) DO UPDATE SET captured_at_ms = excluded.captured_at_ms, profile = excluded.profile",
            )
            .bind(id)
            .bind(now_ms)
            .bind(&json)
            .execute(&mut *tx)
            .await
            .map_err(q("set baseline"))?;
            insert_event!(&mut *tx, now_ms, EventKind::BaselineCaptured, Some(name), "baseline captured from the current profile",
                &serde_json::json!({"fingerprint": fingerprint(profile), "metrics": profile.metrics}))?;
            tx.commit().await.map_err(q("commit"))?;
            Ok(())
        })
    }

    /// The host's baseline, `None` when none was captured. Unknown host → error.
    pub async fn baseline(&self, name: &HostName) -> Result<Option<HostProfile>, StoreError> {
        let id = self.host_id(name).await?;
        on_pool!(self, pool => {
            let s: Option<String> = sqlx::query_scalar("SELECT profile FROM baselines WHERE host_id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await
                .map_err(q("baseline"))?;
            s.map(|s| parse_profile(name.as_str(), "baseline", &s)).transpose()
        })
    }

    // ---- samples -----------------------------------------------------------------------------

    /// Stores a batch of samples for one host in one transaction (the ingest hot path) and
    /// marks the host seen. The whole batch is checked first, so a bad sample stores nothing.
    pub async fn insert_samples(
        &self,
        name: &HostName,
        samples: &[MetricSample],
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        self.ingest_samples(name, samples, 0, now_ms).await
    }

    /// [`Store::insert_samples`], and when the agent reports `dropped` samples it lost while
    /// the server was away, a `samples_dropped` event in the same transaction: the batch and
    /// its note commit together or not at all, so an agent that resends a refused batch never
    /// duplicates one half of it.
    pub async fn ingest_samples(
        &self,
        name: &HostName,
        samples: &[MetricSample],
        dropped: u64,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let dropped_figures = serde_json::json!({ "dropped": dropped });
        const DROPPED_REASON: &str = "agent dropped samples while the server was away";
        let _turn = self.write_turn().await;
        check_samples(samples)?;
        match &self.backend {
            Backend::Sqlite(pool) => {
                let id = self.host_id(name).await?;
                let mut tx = pool.begin().await.map_err(q("begin"))?;
                for chunk in samples.chunks(SQLITE_SAMPLE_CHUNK) {
                    let mut sql = String::with_capacity(64 + chunk.len() * 24);
                    sql.push_str("INSERT INTO samples (host_id, ts_ms, name, value) VALUES ");
                    for i in 0..chunk.len() {
                        if i > 0 {
                            sql.push(',');
                        }
                        let b = i * 3 + 2;
                        sql.push_str(&format!("($1,${},${},${})", b, b + 1, b + 2));
                    }
                    let mut query = sqlx::query(&sql).bind(id);
                    for s in chunk {
                        query = query.bind(s.ts_ms).bind(s.name.as_str()).bind(s.value);
                    }
                    query.execute(&mut *tx).await.map_err(q("insert samples"))?;
                }
                sqlx::query("UPDATE hosts SET last_seen_ms = $1 WHERE id = $2")
                    .bind(now_ms)
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(q("touch host"))?;
                if dropped > 0 {
                    insert_event!(
                        &mut *tx,
                        now_ms,
                        EventKind::SamplesDropped,
                        Some(name),
                        DROPPED_REASON,
                        &dropped_figures
                    )?;
                }
                tx.commit().await.map_err(q("commit"))?;
            }
            Backend::Postgres(pool) => {
                // One statement finds the host, inserts the arrays and marks the host seen, in a
                // transaction of its own with a durable commit (a 2xx means stored).
                let ts: Vec<i64> = samples.iter().map(|s| s.ts_ms).collect();
                let names: Vec<&str> = samples.iter().map(|s| s.name.as_str()).collect();
                let values: Vec<f64> = samples.iter().map(|s| s.value).collect();
                let mut tx = pool.begin().await.map_err(q("begin"))?;
                let inserted: Option<i64> = sqlx::query_scalar(
                    "WITH h AS (SELECT id FROM hosts WHERE name = $1), \
                     ins AS (INSERT INTO samples (host_id, ts_ms, name, value) \
                       SELECT h.id, t.ts, t.n, t.v FROM h, UNNEST($2::bigint[], $3::text[], $4::float8[]) AS t(ts, n, v) \
                       RETURNING 1) \
                     UPDATE hosts SET last_seen_ms = $5 FROM h WHERE hosts.id = h.id \
                     RETURNING (SELECT COUNT(*) FROM ins)",
                )
                .bind(name.as_str())
                .bind(&ts)
                .bind(&names)
                .bind(&values)
                .bind(now_ms)
                .fetch_optional(&mut *tx)
                .await
                .map_err(q("insert samples"))?;
                let Some(inserted) = inserted else {
                    return Err(StoreError::UnknownHost(name.clone()));
                };
                if dropped > 0 {
                    insert_event!(
                        &mut *tx,
                        now_ms,
                        EventKind::SamplesDropped,
                        Some(name),
                        DROPPED_REASON,
                        &dropped_figures
                    )?;
                }
                tx.commit().await.map_err(q("commit"))?;
                debug_assert_eq!(inserted as usize, samples.len());
            }
        }
        Ok(samples.len() as u64)
    }

    /// The mean of each metric over the `window_ms` before the host's newest sample. The window
    /// ends at the newest sample rather than at the server's clock, so that an agent's clock
    /// skew does not empty it. Empty when the host sent no samples.
    pub async fn recent_metric_means(
        &self,
        name: &HostName,
        window_ms: i64,
    ) -> Result<BTreeMap<String, f64>, StoreError> {
        let id = self.host_id(name).await?;
        on_pool!(self, pool => {
            let newest: Option<i64> = sqlx::query_scalar("SELECT MAX(ts_ms) FROM samples WHERE host_id = $1 AND source = 'agent'")
                .bind(id)
                .fetch_one(pool)
                .await
                .map_err(q("newest sample"))?;
            let Some(newest) = newest else { return Ok(BTreeMap::new()) };
            let rows = sqlx::query("SELECT name, AVG(value) FROM samples WHERE host_id = $1 AND ts_ms > $2 AND source = 'agent' GROUP BY name")
                .bind(id)
                .bind(newest.saturating_sub(window_ms))
                .fetch_all(pool)
                .await
                .map_err(q("metric means"))?;
            rows.into_iter()
                .map(|row| {
                    let n: String = row.try_get(0).map_err(q("metric means"))?;
                    let v: f64 = row.try_get(1).map_err(q("metric means"))?;
                    Ok((n, v))
                })
                .collect()
        })
    }

    /// The samples of one metric of a host with `after_ms < ts_ms <= before_ms` (agent time),
    /// oldest first, at most `limit`, as `(ts_ms, value, source)`: every source (`agent`,
    /// `prometheus`), or only `source`. An unknown host is [`StoreError::UnknownHost`].
    pub async fn metric_samples(
        &self,
        name: &HostName,
        metric: &str,
        after_ms: i64,
        before_ms: i64,
        limit: i64,
        source: Option<&str>,
    ) -> Result<Vec<(i64, f64, String)>, StoreError> {
        let id = self.host_id(name).await?;
        on_pool!(self, pool => {
            let rows = sqlx::query(
                "SELECT ts_ms, value, source FROM samples WHERE host_id = $1 AND name = $2 AND ts_ms > $3 \
                 AND ts_ms <= $4 AND ($6 IS NULL OR source = $6) ORDER BY ts_ms, source LIMIT $5",
            )
            .bind(id)
            .bind(metric)
            .bind(after_ms)
            .bind(before_ms)
            .bind(limit)
            .bind(source)
            .fetch_all(pool)
            .await
            .map_err(q("metric samples"))?;
            rows.into_iter()
                .map(|row| {
                    let t: i64 = row.try_get(0).map_err(q("metric samples"))?;
                    let v: f64 = row.try_get(1).map_err(q("metric samples"))?;
                    let s: String = row.try_get(2).map_err(q("metric samples"))?;
                    Ok((t, v, s))
                })
                .collect()
        })
    }

    /// Stores values of a host's metrics that the server read from another source than the
    /// agent (`prometheus`: a rollout's analysis), marked with it. A value the store already
    /// has for its host, source, metric and time is skipped (a restarted rollout reads its
    /// lookback again). Does not mark the host seen: that is its agent's doing. Answers how
    /// many were new.
    pub async fn insert_read_samples(
        &self,
        name: &HostName,
        source: &str,
        samples: &[MetricSample],
    ) -> Result<u64, StoreError> {
        if source == "agent" || source.is_empty() || source.len() > 32 {
            return Err(StoreError::BadInput {
                field: "source".into(),
                reason: format!(
                    "a read sample's source must be 1 to 32 bytes and not `agent`, not {source:?}"
                ),
            });
        }
        check_samples(samples)?;
        let id = self.host_id(name).await?;
        let _turn = self.write_turn().await;
        on_pool!(self, pool => {
            let mut tx = pool.begin().await.map_err(q("begin"))?;
            let mut added = 0;
            for s in samples {
                added += sqlx::query(
                    "INSERT INTO samples (host_id, ts_ms, name, value, source) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                )
                .bind(id)
                .bind(s.ts_ms)
                .bind(s.name.as_str())
                .bind(s.value)
                .bind(source)
                .execute(&mut *tx)
                .await
                .map_err(q("insert read samples"))?
                .rows_affected();
            }
            tx.commit().await.map_err(q("commit read samples"))?;
            Ok(added)
        })
    }

    /// Deletes every sample older than `before_ts_ms` (agent time), host by host so that each
    /// delete walks the `(host_id, ts_ms)` index. Returns how many were deleted.
    pub async fn prune_samples(&self, before_ts_ms: i64) -> Result<u64, StoreError> {
        let _turn = self.write_turn().await;
        on_pool!(self, pool => {
            let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM hosts")
                .fetch_all(pool)
                .await
                .map_err(q("prune samples"))?;
            let mut deleted = 0;
            for id in ids {
                deleted += sqlx::query("DELETE FROM samples WHERE host_id = $1 AND ts_ms < $2")
                    .bind(id)
                    .bind(before_ts_ms)
                    .execute(pool)
                    .await
                    .map_err(q("prune samples"))?
                    .rows_affected();
            }
            Ok(deleted)
        })
    }

    /// How many samples the host has stored.
    pub async fn count_samples(&self, name: &HostName) -> Result<i64, StoreError> {
        let id = self.host_id(name).await?;
        on_pool!(self, pool => {
            sqlx::query_scalar("SELECT COUNT(*) FROM samples WHERE host_id = $1")
                .bind(id)
                .fetch_one(pool)
                .await
                .map_err(q("count samples"))
        })
    }

    // ---- drift -------------------------------------------------------------------------------

    /// Stores the host's latest drift score, replacing the previous one.
    pub async fn put_drift(
        &self,
        name: &HostName,
        score: &DriftScore,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        let id = self.host_id(name).await?;
        let json = serde_json::to_string(score).expect("a drift score always serialises");
        on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO drift (host_id, computed_at_ms, overall, score) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (host_id) DO UPDATE SET computed_at_ms = excluded.computed_at_ms, \
                 overall = excluded.overall, score = excluded.score",
            )
            .bind(id)
            .bind(now_ms)
            .bind(score.overall.get())
            .bind(&json)
            .execute(pool)
            .await
            .map_err(q("put drift"))?;
            Ok(())
        })
    }

    /// The host's latest drift score. Unknown host → error.
    pub async fn drift(&self, name: &HostName) -> Result<Option<StoredDrift>, StoreError> {
        let id = self.host_id(name).await?;
        on_pool!(self, pool => {
            let row = sqlx::query("SELECT computed_at_ms, score FROM drift WHERE host_id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await
                .map_err(q("drift"))?;
            let Some(row) = row else { return Ok(None) };
            let computed_at_ms: i64 = row.try_get(0).map_err(q("drift"))?;
            let s: String = row.try_get(1).map_err(q("drift"))?;
            let score = serde_json::from_str(&s).map_err(|source| StoreError::Corrupt {
                what: "drift score",
                host: name.to_string(),
                source,
            })?;
            Ok(Some(StoredDrift { computed_at_ms, score }))
        })
    }

    /// Every stored drift score, by host name.
    pub async fn all_drift(&self) -> Result<BTreeMap<HostName, StoredDrift>, StoreError> {
        on_pool!(self, pool => {
            let rows = sqlx::query("SELECT h.name, d.computed_at_ms, d.score FROM drift d JOIN hosts h ON h.id = d.host_id")
                .fetch_all(pool)
                .await
                .map_err(q("all drift"))?;
            let mut out = BTreeMap::new();
            for row in rows {
                let name: String = row.try_get(0).map_err(q("all drift"))?;
                let computed_at_ms: i64 = row.try_get(1).map_err(q("all drift"))?;
                let s: String = row.try_get(2).map_err(q("all drift"))?;
                let score = serde_json::from_str(&s).map_err(|source| StoreError::Corrupt {
                    what: "drift score",
                    host: name.clone(),
                    source,
                })?;
                out.insert(host_name(name)?, StoredDrift { computed_at_ms, score });
            }
            Ok(out)
        })
    }

    // ---- events ------------------------------------------------------------------------------

    /// Appends an event to the log.
    pub async fn record_event(
        &self,
        kind: EventKind,
        host: Option<&HostName>,
        reason: &str,
        figures: &serde_json::Value,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        on_pool!(self, pool => insert_event!(pool, now_ms, kind, host, reason, figures))
    }

    /// The newest events (optionally of one host), newest first, at most `limit`.
    pub async fn events(
        &self,
        host: Option<&HostName>,
        limit: i64,
    ) -> Result<Vec<Event>, StoreError> {
        self.events_where(host, None, limit).await
    }

    /// The newest events, optionally only of one host and of one kind (such as `audit`),
    /// newest first, at most `limit`.
    pub async fn events_where(
        &self,
        host: Option<&HostName>,
        kind: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Event>, StoreError> {
        let filter = EventFilter {
            host,
            kind,
            ..EventFilter::default()
        };
        self.find_events(&filter, limit).await
    }
}

// Declared after the macros above, which they use.
mod alerts;
mod config;
mod lease;
mod mirror;
mod outcomes;
mod shadow;
mod tasks;
pub use alerts::{
    AlertRuleCreated, AlertRuleRecord, AttemptFilter, AttemptOutcome, AttemptRecord,
    DeliveryRecord, NewAttempt, NewDelivery,
};
pub use config::{
    ConfigEventFilter, ConfigGraphRecord, ConfigReport, ConfigReportRecord, ConfigSourceRecord,
    MAX_REPORT_KEYS, MAX_SOURCE_LEN,
};
pub use lease::{Fence, LeaseGrant, LeaseRecord};
pub use mirror::{DependencyCreated, DependencyRecord, DependencyRemoved, MIRROR};
pub use outcomes::{ModelInfo, NewModel, NewOutcome, OutcomeRecord, OutcomeSource};
pub use shadow::{ShadowCreated, ShadowRecord, ShadowRemoved, SHADOW};
pub use tasks::{
    ActionFinish, ActionRecord, BusyHost, EventFilter, NewAction, NewEvent, NewRollout, NewTask,
    RolloutRecord, StepRecord, TaskRecord, ROLLOUT,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_tables_are_read_from_the_migrations() {
        let tables = schema_tables();
        for t in [
            "bw_migrations",
            "hosts",
            "tokens",
            "samples",
            "events",
            "tasks",
            "task_hosts",
            "actions",
        ] {
            assert!(tables.contains(&t), "{t} missing from {tables:?}");
        }
        assert!(latest_schema_version() >= 2);
    }

    #[tokio::test]
    async fn postgres_sessions_get_the_schema_and_durable_commits() {
        let config = testing::fresh_postgres().await;
        let body = {
            let config = config.clone();
            tokio::spawn(async move {
                let StoreConfig::Postgres {
                    schema: Some(schema),
                    ..
                } = &config
                else {
                    unreachable!()
                };
                let store = Store::open(&config).await.unwrap();
                let Backend::Postgres(pool) = &store.backend else {
                    unreachable!()
                };
                // Every pooled connection, not only the first one.
                let mut conns = Vec::new();
                for _ in 0..3 {
                    let mut conn = pool.acquire().await.unwrap();
                    let sc: String = sqlx::query_scalar("SHOW synchronous_commit")
                        .fetch_one(&mut *conn)
                        .await
                        .unwrap();
                    let sp: String = sqlx::query_scalar("SHOW search_path")
                        .fetch_one(&mut *conn)
                        .await
                        .unwrap();
                    assert_eq!(sc, "on", "events and rollout state need durable commits");
                    assert_eq!(sp.trim_matches('"'), schema.as_str());
                    conns.push(conn);
                }
                drop(conns);
                store.close().await;
            })
        };
        let outcome = body.await;
        testing::cleanup(&config, None).await;
        if let Err(e) = outcome {
            std::panic::resume_unwind(e.into_panic());
        }
    }

    /// A store from before migration 4 (tokens without ids, operator/enrol/agent only) keeps
    /// every token valid: the operator and enrolment tokens become the server's own
    /// (`bootstrap`), and each token gets an id.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn migration_4_keeps_the_tokens_of_an_older_store() {
        testing::with_each_backend(|config: StoreConfig| async move {
            let store = Store::open(&config).await.unwrap();
            let web = HostName::new("web-01").unwrap();
            store.enrol(&web, &BTreeMap::new(), "agent-token-of-web-01", 5).await.unwrap();
            // Put the tokens table back the way versions 1 and 2 made it.
            let v1_table = "CREATE TABLE tokens (hash TEXT PRIMARY KEY, kind TEXT NOT NULL CHECK (kind IN ('operator', 'enrol', 'agent')), host_id BIGINT REFERENCES hosts(id) ON DELETE CASCADE, created_at_ms BIGINT NOT NULL)";
            on_pool!(store, pool => {
                for sql in ["DROP TABLE tokens", v1_table, "DELETE FROM bw_migrations WHERE version = 4"] {
                    sqlx::query(sql).execute(pool).await.unwrap();
                }
                let host_id: i64 = sqlx::query_scalar("SELECT id FROM hosts WHERE name = 'web-01'")
                    .fetch_one(pool).await.unwrap();
                for (plain, kind, host, at) in [
                    ("operator-token-from-v2", "operator", None, 1_i64),
                    ("enrol-token-from-v2-00", "enrol", None, 2),
                    ("agent-token-of-web-01", "agent", Some(host_id), 3),
                ] {
                    sqlx::query("INSERT INTO tokens (hash, kind, host_id, created_at_ms) VALUES ($1, $2, $3, $4)")
                        .bind(hash_token(plain)).bind(kind).bind(host).bind(at)
                        .execute(pool).await.unwrap();
                }
            });
            store.close().await;
            let store = Store::open(&config).await.unwrap();
            assert!(store.applied_migrations().await.unwrap().contains(&4));
            let op = store.authenticate("operator-token-from-v2").await.unwrap().unwrap();
            assert_eq!((op.id, op.kind), (1, TokenKind::Operator));
            let enrol = store.authenticate("enrol-token-from-v2-00").await.unwrap().unwrap();
            assert_eq!((enrol.id, enrol.kind), (2, TokenKind::Enrol));
            let agent = store.authenticate("agent-token-of-web-01").await.unwrap().unwrap();
            assert_eq!((agent.id, agent.kind, agent.host), (3, TokenKind::Agent, Some(web.clone())));
            assert!(store.has_token(TokenKind::Operator).await.unwrap());
            assert!(store.has_token(TokenKind::Enrol).await.unwrap());
            assert!(!store.has_token(TokenKind::Admin).await.unwrap());
            let names: Vec<(String, bool)> = store.tokens().await.unwrap().into_iter().map(|t| (t.name, t.bootstrap)).collect();
            assert_eq!(names, vec![("operator.token".into(), true), ("enrol.token".into(), true), (String::new(), false)]);
            // New tokens take ids after the old ones, and the new roles are accepted.
            let viewer = store.create_token(TokenKind::Viewer, "viewer-token-0000001", "dashboards", Some(1), 9).await.unwrap();
            assert_eq!(viewer.id, 4);
            store.close().await;
        })
        .await;
    }
}
