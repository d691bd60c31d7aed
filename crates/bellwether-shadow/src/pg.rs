//! PostgreSQL shadows: base backups (`pg_basebackup`) plus the primary's WAL, kept in the
//! shadow directory, and restores to a point or a time built beside the live data directory
//! (base backup + WAL replayed up to the target), verified by starting them, then swapped in.
//!
//! The three types ([`ShadowType`]):
//! - **full**: every point is a complete base backup; a restore brings back one of them.
//! - **differential**: one base backup, then at every point the WAL since the last one is
//!   fetched through a replication slot (`pg_receivewal --endpos`); a restore replays it.
//! - **transactional**: `pg_receivewal --synchronous` streams the WAL continuously through a
//!   replication slot, and the shadow is registered in the primary's
//!   `synchronous_standby_names` under its own `application_name`, so the primary acknowledges
//!   no commit before the shadow flushed it (RPO 0 for acknowledged commits). Any commit time is
//!   a restore target.
//!
//! Points are restore points on the primary (`pg_create_restore_point('bw-ID')`, or the
//! current LSN when the role may not create them) with the primary's time; a restore targets a
//! point (`recovery_target_name` / `_lsn`), a time (`recovery_target_time`) or the end of the
//! shadowed WAL.
//!
//! What this module changes on the primary: a physical replication slot named after the
//! shadow (differential, transactional), and for a synchronous transactional shadow
//! `synchronous_standby_names` (`ALTER SYSTEM` + `pg_reload_conf()`), set only when it was
//! empty and reset when the shadow stops. It never touches the live data directory except in
//! a restore's swap, after the restored copy started and reached its target.
//!
//! Layout: the shadow directory is a point store ([`crate::point`]): each point's manifest
//! lists the data directory's files (the latest base backup) and the WAL segments from that
//! backup's start to the point (as `bw_restore_wal/SEGMENT`), all as content-addressed
//! objects, so a point restores on its own and points share what did not change. Besides
//! it, `pg/shadow-pg.json` names the database (system identifier, version, the shadow's
//! name) and `pg/wal/` is `pg_receivewal`'s directory: the WAL after the latest point
//! (transactional), which restores to a time after that point or to `latest` read too.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod base;
mod fpi;
pub mod lsn;
mod marks;
mod pages;
mod proc;
mod restore;
mod shadow;

pub use lsn::Lsn;
pub use restore::{restore, restore_with, RestoreMode};
pub use shadow::PgShadow;

use crate::point::{
    ResourceKind, RestoreReport, RestoreRequest, Shadow, ShadowError, ShadowOptions, ShadowType,
};

/// Every failure, with what was being done and where; never a password.
#[derive(Debug, thiserror::Error)]
pub enum PgShadowError {
    #[error(transparent)]
    Pg(#[from] bellwether_pg::PgError),
    #[error("{what}: {message}")]
    Io { what: String, message: String },
    /// A PostgreSQL program failed.
    #[error("{program} failed ({what}): {output}")]
    Program {
        program: String,
        what: String,
        output: String,
    },
    /// The role lacks a right the shadow needs; `fix` says how to grant it or do without.
    #[error("{target}: the role {role} cannot {what} ({message}); {fix}")]
    Permission {
        target: String,
        role: String,
        what: String,
        message: String,
        fix: String,
    },
    /// The primary is not set up for what the shadow needs (`wal_level`, `max_wal_senders`).
    #[error("{target}: {message}")]
    Unsuitable { target: String, message: String },
    /// `synchronous_standby_names` already names other standbys: Bellwether does not rewrite
    /// the operator's choice.
    #[error("{target}: synchronous_standby_names is already {current:?}; Bellwether changes it only when it is empty. Add the shadow's name yourself so that every commit waits for it (FIRST 1 ({name}, …): a quorum, ANY, does not), reload, and start the shadow with sync = expect, or start it with sync = off (no RPO 0)")]
    SyncNamesInUse {
        target: String,
        current: String,
        name: String,
    },
    /// The shadow directory holds a shadow of another database (or another resource).
    #[error("shadow directory {dir} shadows {theirs}, not {ours}; nothing was changed")]
    OtherDatabase {
        dir: PathBuf,
        theirs: String,
        ours: String,
    },
    /// A WAL segment the restore needs is not in the shadow.
    #[error("WAL segment {segment} is missing from {dir} (needed to replay from point {point} to {target}); restore to that point or to a time before the segment")]
    MissingWal {
        dir: PathBuf,
        segment: String,
        point: String,
        target: String,
    },
    /// A base backup failed `pg_verifybackup` (damaged or incomplete).
    #[error("the base backup of point {base} in {dir} is damaged: {message}")]
    DamagedBase {
        dir: PathBuf,
        base: String,
        message: String,
    },
    /// The restored copy did not reach the target (the server's own words in `log`).
    #[error("the restored copy did not reach {target}: {log}")]
    TargetNotReached { target: String, log: String },
    /// The shadow directory is not a PostgreSQL shadow or its files are damaged.
    #[error("{path}: {message}")]
    BadShadow { path: PathBuf, message: String },
    /// The restore's destination cannot be used (exists, not a data directory, …).
    #[error("{path}: {message}")]
    BadDestination { path: PathBuf, message: String },
    /// After the swap the restored cluster did not start; the previous data directory was
    /// put back and started again.
    #[error("the restored cluster did not start in {data_dir} ({message}); the previous data directory is back in place{restarted}")]
    SwapRolledBack {
        data_dir: PathBuf,
        message: String,
        restarted: String,
    },
}

impl PgShadowError {
    pub(crate) fn io(verb: &str, path: &Path, e: std::io::Error) -> PgShadowError {
        PgShadowError::Io {
            what: format!("{verb} {}", path.display()),
            message: e.to_string(),
        }
    }
}

/// How a transactional shadow becomes a synchronous standby of the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncSetup {
    /// Bellwether sets `synchronous_standby_names` to the shadow's name (only when it is
    /// empty) with `ALTER SYSTEM` and reloads; it resets it when the shadow stops. Needs a
    /// superuser, or `GRANT ALTER SYSTEM ON PARAMETER synchronous_standby_names` plus
    /// `EXECUTE` on `pg_reload_conf()` (PostgreSQL 15+).
    Configure,
    /// The operator named the shadow in `synchronous_standby_names`; Bellwether checks that
    /// the primary reports it as a synchronous standby and fails otherwise.
    Expect,
    /// Asynchronous: the shadow may miss the last acknowledged commits of a crash.
    Off,
}

/// What a PostgreSQL shadow starts with, beyond [`ShadowOptions`].
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// The primary, `postgres://user[:password]@host:port/db` or a key=value conninfo. The
    /// role needs `REPLICATION` (or superuser) and a `replication` line in `pg_hba.conf`.
    pub url: String,
    pub kind: ShadowType,
    /// Transactional shadows only; ignored for the others.
    pub sync: SyncSetup,
    /// PostgreSQL's client programs; found from the primary's version when `None`.
    pub bindir: Option<PathBuf>,
    /// The shadow's `application_name` and replication slot name (`[a-z0-9_]`, at most 63
    /// characters); `bw_shadow_` + a random suffix, kept in the shadow directory, when `None`.
    pub name: Option<String>,
    /// How long one step (a base backup, a catch-up, a sync registration) may take.
    pub step_timeout: Duration,
    /// Bytes of WAL since the base after which a differential or transactional shadow takes
    /// a new base backup by itself; half the database (at least 64 MiB) when `None`
    /// (docs/shadow-postgres.md, "A new base").
    pub rebase_after: Option<u64>,
}

impl PgOptions {
    pub fn new(url: impl Into<String>, kind: ShadowType) -> Self {
        PgOptions {
            url: url.into(),
            kind,
            sync: if kind == ShadowType::Transactional {
                SyncSetup::Configure
            } else {
                SyncSetup::Off
            },
            bindir: None,
            name: None,
            step_timeout: Duration::from_secs(600),
            rebase_after: None,
        }
    }
}

/// The PostgreSQL entry points ([`crate::point::Resource`]): `start` follows the primary
/// at [`ShadowOptions::source`] (a URL) with the defaults of [`PgOptions::new`]; `restore`
/// replaces the data directory `dest` (stopping and starting its server with `pg_ctl`) or,
/// when `dest` does not exist, leaves the restored data directory there.
#[derive(Debug, Clone, Copy, Default)]
pub struct Postgres;

impl crate::point::Resource for Postgres {
    fn kind(&self) -> ResourceKind {
        ResourceKind::Postgres
    }

    fn start(&self, opts: &ShadowOptions) -> Result<Box<dyn Shadow>, ShadowError> {
        let url = match &opts.source {
            crate::point::Source::Url(u) => u.clone(),
            crate::point::Source::Path(p) => {
                return Err(ShadowError::Unsupported(format!(
                    "a PostgreSQL shadow follows a database URL (--database postgres://…), not the path {}",
                    p.display()
                )))
            }
        };
        let pg = PgOptions::new(url, opts.shadow_type);
        Ok(Box::new(PgShadow::start(opts, &pg)?))
    }

    fn restore(&self, req: &RestoreRequest) -> Result<RestoreReport, ShadowError> {
        restore(req)
    }
}

impl From<PgShadowError> for ShadowError {
    fn from(e: PgShadowError) -> ShadowError {
        match e {
            PgShadowError::OtherDatabase { dir, theirs, ours } => ShadowError::OtherResource {
                dir,
                shadows: theirs,
                asked: ours,
            },
            PgShadowError::DamagedBase { dir, base, message } => ShadowError::Verify {
                dest: dir,
                check: "pg_verifybackup".into(),
                reason: format!("base backup of {base}: {message}"),
            },
            PgShadowError::TargetNotReached { target, log } => ShadowError::Verify {
                dest: PathBuf::from("(restored copy)"),
                check: "recovery".into(),
                reason: format!("did not reach {target}: {log}"),
            },
            PgShadowError::BadShadow { path, message } => ShadowError::BadFile {
                path,
                reason: message,
            },
            other => ShadowError::Source {
                source_name: "postgres".into(),
                reason: other.to_string(),
            },
        }
    }
}

/// The database a shadow directory holds (`pg/shadow-pg.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PgShadowInfo {
    /// `pg_control_system().system_identifier`: the same for a primary and its copies, and
    /// different for any other cluster.
    pub system_identifier: String,
    pub server_version_num: u32,
    pub wal_segment_size: u64,
    /// `application_name` and replication slot.
    pub name: String,
    /// `user@host:port/db`, no password.
    pub source: String,
    pub kind: ShadowType,
    /// The value of `synchronous_standby_names` before Bellwether set it (while it is set).
    #[serde(default)]
    pub sync_original: Option<String>,
}

pub(crate) fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

pub(crate) fn pg_dir(dir: &Path) -> PathBuf {
    dir.join("pg")
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, PgShadowError> {
    let text = std::fs::read_to_string(path).map_err(|e| PgShadowError::io("reading", path, e))?;
    serde_json::from_str(&text).map_err(|e| PgShadowError::BadShadow {
        path: path.to_path_buf(),
        message: format!("line {}, column {}: {e}", e.line(), e.column()),
    })
}

pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), PgShadowError> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| PgShadowError::Io {
        what: format!("encoding {}", path.display()),
        message: e.to_string(),
    })?;
    bytes.push(b'\n');
    bellwether_fs::write_atomic(path, &bytes).map_err(|e| PgShadowError::io("writing", path, e))
}

/// The shadow's record of the database it shadows, when the directory holds one.
pub fn read_info(dir: &Path) -> Result<Option<PgShadowInfo>, PgShadowError> {
    let path = pg_dir(dir).join("shadow-pg.json");
    if !path.exists() {
        return Ok(None);
    }
    read_json(&path).map(Some)
}
