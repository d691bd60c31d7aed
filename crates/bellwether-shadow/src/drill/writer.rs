//! The drill's workload: a separate process that writes, one numbered transaction after
//! another, either a SQLite database in WAL mode or a directory of files, and records each
//! transaction's start and commit in a log file outside the data (`B k t0` before it begins,
//! `C k t1` once it is committed, written and `fdatasync`ed). Every byte it writes is derived
//! from `(seed, k)`, so a check can tell a transaction's data from damage.
//!
//! It also prints `C k` on its standard output after each commit: that is the event the
//! drill waits on (no polling, no sleeps). It runs until it is killed or a write fails; a full
//! disk ends it with exit code [`EXIT_FULL`] after `E k full` on both channels.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::rng::{noise, Rng};

/// The writer's exit code when its disk filled up.
pub const EXIT_FULL: i32 = 75;
/// The directory writer's slots (files it replaces and deletes), spread over 4 directories.
pub const DIR_SLOTS: u64 = 24;
/// Upper bound of a directory version's payload and of a SQLite row's payload.
pub const DIR_MAX_PAYLOAD: u64 = 96 * 1024;
pub const SQLITE_MAX_PAYLOAD: u64 = 4000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WriterKind {
    Sqlite,
    Dir,
}

#[derive(Debug, Clone)]
pub struct WriterConfig {
    pub kind: WriterKind,
    /// The database file or the directory.
    pub target: PathBuf,
    pub log: PathBuf,
    pub seed: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("sqlite {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("the disk of {0} is full")]
    Full(PathBuf),
}

impl WriterError {
    pub fn is_full(&self) -> bool {
        matches!(self, WriterError::Full(_))
    }
}

impl WriterConfig {
    /// Parses the arguments the drill appends to the writer's command
    /// (`--writer-kind sqlite|dir --writer-target PATH --writer-log PATH --writer-seed N`).
    pub fn from_args(
        args: impl IntoIterator<Item = std::ffi::OsString>,
    ) -> Result<WriterConfig, String> {
        let (mut kind, mut target, mut log, mut seed) = (None, None, None, None);
        let mut it = args.into_iter();
        while let Some(flag) = it.next() {
            let value = it
                .next()
                .ok_or_else(|| format!("{} needs a value", flag.to_string_lossy()))?;
            match flag.to_str() {
                Some("--writer-kind") => {
                    kind = Some(match value.to_str() {
                        Some("sqlite") => WriterKind::Sqlite,
                        Some("dir") => WriterKind::Dir,
                        _ => return Err(format!("--writer-kind {value:?}: sqlite or dir")),
                    })
                }
                Some("--writer-target") => target = Some(PathBuf::from(value)),
                Some("--writer-log") => log = Some(PathBuf::from(value)),
                Some("--writer-seed") => {
                    seed = Some(
                        value
                            .to_str()
                            .and_then(|s| s.parse::<u64>().ok())
                            .ok_or_else(|| format!("--writer-seed {value:?} is not a number"))?,
                    )
                }
                _ => return Err(format!("unknown argument {flag:?}")),
            }
        }
        Ok(WriterConfig {
            kind: kind.ok_or("--writer-kind is missing")?,
            target: target.ok_or("--writer-target is missing")?,
            log: log.ok_or("--writer-log is missing")?,
            seed: seed.ok_or("--writer-seed is missing")?,
        })
    }
}

/// The slot's file, relative to the directory.
pub fn slot_path(slot: u64) -> String {
    format!("d{}/f{:02}", slot % 4, slot)
}

/// The payload length of transaction `k`.
pub fn payload_len(kind: WriterKind, seed: u64, k: u64) -> usize {
    let max = match kind {
        WriterKind::Sqlite => SQLITE_MAX_PAYLOAD,
        WriterKind::Dir => DIR_MAX_PAYLOAD,
    };
    (Rng::new(seed ^ k.wrapping_mul(0x9e37_79b9)).below(max) + 1) as usize
}

/// What the directory writer does at transaction `k`: `(slot, write?)` (otherwise delete).
pub fn dir_op(seed: u64, k: u64) -> (u64, bool) {
    let mut r = Rng::new(seed.rotate_left(17) ^ k);
    (r.below(DIR_SLOTS), r.below(10) < 8)
}

/// The bytes of the version of a slot written by transaction `k`.
pub fn dir_content(seed: u64, k: u64, slot: u64) -> Vec<u8> {
    let n = payload_len(WriterKind::Dir, seed, k);
    let mut v = format!("bw-drill k={k} slot={slot} len={n}\n").into_bytes();
    v.extend_from_slice(&noise(seed ^ k.wrapping_mul(31), n));
    v
}

/// The payload of SQLite transaction `k`.
pub fn sqlite_payload(seed: u64, k: u64) -> Vec<u8> {
    noise(
        seed ^ k.wrapping_mul(31),
        payload_len(WriterKind::Sqlite, seed, k),
    )
}

fn now_ns() -> i64 {
    crate::dir::now_ns()
}

struct Log {
    file: File,
    path: PathBuf,
}

impl Log {
    fn line(&mut self, s: &str, sync: bool) -> Result<(), WriterError> {
        let io = |source| WriterError::Io {
            op: "append to",
            path: self.path.clone(),
            source,
        };
        self.file.write_all(s.as_bytes()).map_err(io)?;
        if sync {
            self.file.sync_data().map_err(|source| WriterError::Io {
                op: "fsync",
                path: self.path.clone(),
                source,
            })?;
        }
        Ok(())
    }
}

/// Runs the writer until a write fails (or it is killed).
pub fn run(cfg: &WriterConfig) -> Result<(), WriterError> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&cfg.log)
        .map_err(|source| WriterError::Io {
            op: "open",
            path: cfg.log.clone(),
            source,
        })?;
    let mut log = Log {
        file,
        path: cfg.log.clone(),
    };
    let out = io::stdout();
    let res = match cfg.kind {
        WriterKind::Sqlite => sqlite_loop(cfg, &mut log, &out),
        WriterKind::Dir => dir_loop(cfg, &mut log, &out),
    };
    if let Err((k, e)) = &res {
        let what = if e.is_full() { "full" } else { "error" };
        let _ = log.line(&format!("E {k} {what}\n"), true);
        let mut o = out.lock();
        let _ = writeln!(o, "E {k} {what} {e}");
        let _ = o.flush();
    }
    res.map_err(|(_, e)| e)
}

fn announce(out: &io::Stdout, k: u64) {
    let mut o = out.lock();
    // The drill may have stopped listening; the log is the record, so a closed pipe is fine.
    let _ = writeln!(o, "C {k}");
    let _ = o.flush();
}

fn is_enospc(e: &io::Error) -> bool {
    e.raw_os_error() == Some(28)
}

fn sqlite_loop(
    cfg: &WriterConfig,
    log: &mut Log,
    out: &io::Stdout,
) -> Result<(), (u64, WriterError)> {
    let path = cfg.target.clone();
    let sq = |k: u64| {
        let path = path.clone();
        move |source: rusqlite::Error| {
            if source.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
                (k, WriterError::Full(path))
            } else {
                (k, WriterError::Sqlite { path, source })
            }
        }
    };
    let mut db = rusqlite::Connection::open(&cfg.target).map_err(sq(0))?;
    db.pragma_update(None, "journal_mode", "wal")
        .map_err(sq(0))?;
    db.pragma_update(None, "synchronous", "full")
        .map_err(sq(0))?;
    db.busy_timeout(std::time::Duration::from_secs(30))
        .map_err(sq(0))?;
    db.execute_batch(
        "CREATE TABLE IF NOT EXISTS drill_tx (id INTEGER PRIMARY KEY, at_ns INTEGER NOT NULL, payload BLOB NOT NULL);
         CREATE TABLE IF NOT EXISTS drill_state (one INTEGER PRIMARY KEY CHECK (one = 1), last_id INTEGER NOT NULL, total_bytes INTEGER NOT NULL);
         INSERT OR IGNORE INTO drill_state VALUES (1, 0, 0);",
    )
    .map_err(sq(0))?;
    let mut k: u64 = db
        .query_row("SELECT last_id FROM drill_state", [], |r| {
            r.get::<_, i64>(0)
        })
        .map_err(sq(0))? as u64;
    loop {
        k += 1;
        let payload = sqlite_payload(cfg.seed, k);
        log.line(&format!("B {k} {}\n", now_ns()), false)
            .map_err(|e| (k, e))?;
        let tx = db
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sq(k))?;
        tx.execute(
            "INSERT INTO drill_tx (id, at_ns, payload) VALUES (?1, ?2, ?3)",
            rusqlite::params![k as i64, now_ns(), payload],
        )
        .map_err(sq(k))?;
        tx.execute(
            "UPDATE drill_state SET last_id = ?1, total_bytes = total_bytes + ?2",
            rusqlite::params![k as i64, payload.len() as i64],
        )
        .map_err(sq(k))?;
        tx.commit().map_err(sq(k))?;
        log.line(&format!("C {k} {}\n", now_ns()), true)
            .map_err(|e| (k, e))?;
        announce(out, k);
    }
}

fn dir_loop(cfg: &WriterConfig, log: &mut Log, out: &io::Stdout) -> Result<(), (u64, WriterError)> {
    let root = &cfg.target;
    let io_at = |k: u64, op: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source: io::Error| {
            if is_enospc(&source) {
                (k, WriterError::Full(path))
            } else {
                (k, WriterError::Io { op, path, source })
            }
        }
    };
    for d in 0..4 {
        let p = root.join(format!("d{d}"));
        fs::create_dir_all(&p).map_err(io_at(0, "create", &p))?;
    }
    let mut k = 0u64;
    loop {
        k += 1;
        let (slot, write) = dir_op(cfg.seed, k);
        let target = root.join(slot_path(slot));
        log.line(&format!("B {k} {}\n", now_ns()), false)
            .map_err(|e| (k, e))?;
        if write {
            let tmp = root.join(format!(".tmp-{k}"));
            let bytes = dir_content(cfg.seed, k, slot);
            let written = (|| {
                let mut f = File::create(&tmp)?;
                f.write_all(&bytes)?;
                f.sync_all()
            })();
            if let Err(e) = written {
                let _ = fs::remove_file(&tmp);
                return Err(io_at(k, "write", &tmp)(e));
            }
            fs::rename(&tmp, &target).map_err(io_at(k, "rename", &target))?;
        } else {
            match fs::remove_file(&target) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_at(k, "remove", &target)(e)),
            }
        }
        if let Some(parent) = target.parent() {
            File::open(parent)
                .and_then(|d| d.sync_all())
                .map_err(io_at(k, "fsync", parent))?;
        }
        log.line(&format!("C {k} {}\n", now_ns()), true)
            .map_err(|e| (k, e))?;
        announce(out, k);
    }
}
