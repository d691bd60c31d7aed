//! bellwether-pg: the IO side of configuration changes on a live PostgreSQL instance.
//!
//! OWNER: helper `pgio`. The signatures below are the contract the agent, the CLI and the
//! server code against; change them only additively and say so in the report.
//!
//! - [`read_settings`]: `pg_settings` over a real connection into a
//!   [`bellwether_config::setting::Catalog`]; [`read_conf_files`]: the instance's
//!   `postgresql.conf` (with its includes) and `postgresql.auto.conf`;
//! - [`apply`]: `ALTER SYSTEM SET/RESET` for each setting in order, then `pg_reload_conf()`,
//!   or the configured restart command when a setting needs it; verified against
//!   `pg_settings` afterwards; nothing half-applied (a refused value stops before any
//!   `ALTER SYSTEM`, every value is validated first);
//! - [`Sampler`]: `pg_stat_database` (and `pg_stat_statements` when installed) counters into
//!   the rates of `bellwether_config::metrics`;
//! - [`scratch::Scratch`]: a scratch cluster from the instance's own binaries (`initdb` once,
//!   then `postgres -C` and trial starts with candidate values), and [`probe`]: the graph
//!   learned from trial starts.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use bellwether_config::setting::Catalog;

pub mod local;
pub mod probe;
pub mod scratch;

/// Every failure, with what was being done; never a connection string with a password.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("cannot connect to {target}: {message}")]
    Connect { target: String, message: String },
    #[error("{what}: permission denied ({message}); the role needs superuser or pg_read_all_settings / ALTER SYSTEM rights")]
    Permission { what: String, message: String },
    #[error("{0}")]
    Value(#[from] bellwether_config::setting::ValueError),
    #[error("{what}: {message}")]
    Query { what: String, message: String },
    #[error("{what}: {message}")]
    Io { what: String, message: String },
    #[error("{0}")]
    Conf(#[from] bellwether_config::pgconf::ConfError),
    #[error("restart: {0}")]
    Restart(String),
}

/// A connection to one instance (tokio-postgres, no TLS on the local socket/loopback).
pub struct Instance {
    pub client: tokio_postgres::Client,
    /// The URL without a password, for messages.
    pub target: String,
}

/// Connects (`postgres://user@host:port/db` or a key=value conninfo).
pub async fn connect(url: &str) -> Result<Instance, PgError> {
    let _ = url;
    todo!("pgio")
}

/// `pg_settings` into a catalog (with `server_version_num`).
pub async fn read_settings(inst: &Instance) -> Result<Catalog, PgError> {
    let _ = inst;
    todo!("pgio")
}

/// The instance's configuration files, parsed: `config_file` with its includes, then
/// `data_directory/postgresql.auto.conf`, in reading order. Needs the files to be readable by
/// this process (the agent runs on the database host).
pub async fn read_conf_files(
    inst: &Instance,
) -> Result<Vec<bellwether_config::pgconf::ConfEntry>, PgError> {
    let _ = inst;
    todo!("pgio")
}

/// What [`apply`] did.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ApplyReport {
    /// The settings set (`None` = reset), in order.
    pub applied: Vec<(String, Option<String>)>,
    pub reloaded: bool,
    pub restarted: bool,
    /// Settings still `pending_restart` after it (empty when it worked).
    pub pending_restart: Vec<String>,
    /// The values after it, as `pg_settings` shows them, for the applied keys.
    pub values: BTreeMap<String, String>,
    /// When the new configuration was in force (ms since the epoch, this host's clock).
    pub applied_at_ms: i64,
}

/// Applies `settings` in order with `ALTER SYSTEM`, then reloads, or restarts with
/// `restart_argv` (run directly, no shell) when `restart` is set or a setting's context needs
/// it. Every value is validated against `pg_settings` first: an invalid one is refused before
/// any change. After a restart it reconnects (waits up to `timeout`) and verifies.
pub async fn apply(
    url: &str,
    settings: &[(String, Option<String>)],
    restart: bool,
    restart_argv: Option<&[String]>,
    timeout: std::time::Duration,
) -> Result<ApplyReport, PgError> {
    let _ = (url, settings, restart, restart_argv, timeout);
    todo!("pgio")
}

/// Cumulative counters of one read.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    pub at_ms: i64,
    pub xact_commit: i64,
    pub xact_rollback: i64,
    pub deadlocks: i64,
    pub temp_bytes: i64,
    pub blks_read: i64,
    /// `pg_stat_statements` calls and total_exec_time (ms), when installed.
    pub calls: Option<i64>,
    pub exec_time_ms: Option<f64>,
    /// `pg_stat_database.active_time` (ms), PostgreSQL 14+.
    pub active_time_ms: Option<f64>,
}

/// Reads counters each call and turns two reads into rates (`bellwether_config::metrics`).
#[derive(Default)]
pub struct Sampler {
    pub last: Option<Counters>,
}

impl Sampler {
    /// One read; returns the rates since the previous read (empty on the first), keyed by the
    /// metric names of `bellwether_config::metrics`.
    pub async fn sample(
        &mut self,
        inst: &Instance,
        now_ms: i64,
    ) -> Result<BTreeMap<String, f64>, PgError> {
        let _ = (inst, now_ms);
        todo!("pgio")
    }
}

/// The directory of the instance's own binaries (`initdb`, `pg_ctl`, `postgres`), found from
/// its major version (`/usr/lib/postgresql/MAJOR/bin`, `pg_config --bindir`, `$PATH`) unless
/// given.
pub fn find_bindir(server_version_num: u32, given: Option<PathBuf>) -> Result<PathBuf, PgError> {
    let _ = (server_version_num, given);
    todo!("pgio")
}
