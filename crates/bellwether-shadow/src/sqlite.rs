//! SQLite shadows of a database file that another process writes, in WAL mode (or, for full
//! and differential shadows, with a rollback journal).
//!
//! **Consistent images.** A point is the database file with the WAL's committed frames laid
//! over it, read while the shadow holds a read transaction on its own connection. SQLite's
//! checkpointer never copies frames past the oldest reader's snapshot into the database file
//! and never restarts the WAL while a reader uses it, so the file plus every valid frame up
//! to the last commit frame is one consistent state, whatever the writer does meanwhile.
//! (With a rollback journal, the read transaction's shared lock keeps writers out.)
//!
//! **Following commits** (transactional). The shadow keeps a read transaction open, reads
//! the WAL frames that appear after its cursor (format: <https://sqlite.org/fileformat2.html#walformat>),
//! and logs each commit (the pages it wrote and the database size) with the time it was seen
//! in the point's commit log, synced before the next poll. It then moves its read
//! transaction forward (a second connection begins one before the first ends, so the WAL is
//! never unguarded). A read transaction pins the WAL: it cannot restart, so it would grow
//! without end. When it passes [`WAL_LIMIT`], the shadow takes the write lock for an instant
//! (no commit can happen), reads the last frames, checkpoints, and lets go: the writer's next
//! commit restarts the WAL, and the shadow follows the new generation from its start.
//!
//! **Points** of differential and transactional shadows are a base plus page deltas (see
//! [`pages`]). A transactional shadow's point after its first is taken **from the commit
//! log** while the log since the last image is short ([`log_point_limit`]): every commit up
//! to now is already logged and synced, so the point is a manifest naming the last logged
//! commit ([`crate::point::FromLog`]), whatever the file system and however scattered the
//! churn. A restore lays the image's commits over it. Past the limit, the next point is an
//! image again, so a restore never replays more than the limit.
//!
//! **Restore** builds the file beside the live one (base, page deltas, then commits replayed;
//! objects hashed as they are read), runs `PRAGMA integrity_check` on it, moves the live file's WAL aside (a WAL left
//! beside a new database would be replayed into it) and renames the result over the live
//! file. Writers must be stopped first; a failed check leaves everything as it was.
//!
//! What this module must never do: write to the live database (the shadow only reads, and
//! checkpoints, which any reader may do), or rename a restored file in place before it
//! passed its checks.

mod pages;
mod wal;

#[cfg(test)]
mod tests;

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

use crate::point::{
    replace_beside, Entry, EntryKind, FromLog, LogRecord, LogWriter, Manifest, ObjectRef,
    PointDraft, PointId, Position, Reason, Resource, ResourceKind, RestoreReport, RestoreRequest,
    Shadow, ShadowError, ShadowMeta, ShadowOptions, ShadowType, Source, SyncReport, Target,
    Timestamp, FORMAT,
};
use crate::PointStore;

/// Chunk size of the base of differential and transactional points: bases share every
/// 64 KiB chunk that did not change; the points between bases store page deltas (see
/// [`pages`]).
pub const CHUNK: usize = 64 * 1024;
/// The WAL size past which a transactional shadow checkpoints (see the module docs).
pub const WAL_LIMIT: u64 = 4 * 1024 * 1024;
/// The default poll interval of a transactional shadow.
pub const DEFAULT_POLL: Duration = Duration::from_millis(10);
/// A transactional shadow takes a point from its commit log while the log since the last
/// image is at most a quarter of the database ([`LOG_POINT_SHARE`]), within
/// [[`LOG_POINT_MIN`], [`LOG_POINT_MAX`]]: a restore of such a point replays at most that
/// much over the image, and holds it in memory while it does.
pub const LOG_POINT_SHARE: u64 = 4;
pub const LOG_POINT_MIN: u64 = 16 * 1024 * 1024;
pub const LOG_POINT_MAX: u64 = 256 * 1024 * 1024;

/// The log a transactional shadow of a `db_bytes` database may hold since its last image and
/// still take a point from it.
pub fn log_point_limit(db_bytes: u64) -> u64 {
    (db_bytes / LOG_POINT_SHARE).clamp(LOG_POINT_MIN, LOG_POINT_MAX)
}

/// The SQLite entry points ([`Resource`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Sqlite;

impl Resource for Sqlite {
    fn kind(&self) -> ResourceKind {
        ResourceKind::Sqlite
    }

    fn start(&self, opts: &ShadowOptions) -> Result<Box<dyn Shadow>, ShadowError> {
        Ok(Box::new(SqliteShadow::start(opts)?))
    }

    fn restore(&self, req: &RestoreRequest) -> Result<RestoreReport, ShadowError> {
        restore(req)
    }
}

/// The absolute form of `p` (its parent resolved when `p` itself is missing), as kept in
/// `shadow.json` and compared on restore.
pub fn canonical(p: &Path) -> Result<PathBuf, ShadowError> {
    if let Ok(c) = p.canonicalize() {
        return Ok(c);
    }
    let name = p
        .file_name()
        .ok_or_else(|| ShadowError::Unsupported(format!("{} names no file", p.display())))?;
    let parent = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    Ok(parent
        .canonicalize()
        .map_err(ShadowError::io(parent))?
        .join(name))
}

fn sql_err(db: &Path) -> impl Fn(rusqlite::Error) -> ShadowError + '_ {
    move |e| ShadowError::Source {
        source_name: db.display().to_string(),
        reason: e.to_string(),
    }
}

fn wal_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push("-wal");
    PathBuf::from(s)
}

fn shm_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push("-shm");
    PathBuf::from(s)
}

/// A connection that reads the live database and never checkpoints it on close.
fn open_reader(db: &Path) -> Result<Connection, ShadowError> {
    if !db.is_file() {
        return Err(ShadowError::Source {
            source_name: db.display().to_string(),
            reason: "no such SQLite database file".into(),
        });
    }
    let c = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql_err(db))?;
    c.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )
    .map_err(sql_err(db))?;
    c.busy_timeout(Duration::from_secs(5))
        .map_err(sql_err(db))?;
    // Fails here, with SQLite's own message, when the file is no database.
    c.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    })
    .map_err(sql_err(db))?;
    Ok(c)
}

fn begin_read(c: &Connection, db: &Path) -> Result<(), ShadowError> {
    c.execute_batch("BEGIN DEFERRED").map_err(sql_err(db))?;
    c.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    })
    .map(|_| ())
    .map_err(|e| {
        let _ = c.execute_batch("ROLLBACK");
        sql_err(db)(e)
    })
}

fn end_read(c: &Connection, db: &Path) -> Result<(), ShadowError> {
    if c.is_autocommit() {
        return Ok(());
    }
    c.execute_batch("COMMIT").map_err(sql_err(db))
}

/// A consistent copy of the database in the store's `tmp/`.
struct Image {
    path: PathBuf,
    page_size: u32,
    pages: u32,
    change_counter: u32,
    /// The file was cloned (copy-on-write): it shares the source's blocks.
    cloned: bool,
}

fn page_size_of(header: &[u8]) -> u32 {
    match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65536,
        n => u32::from(n),
    }
}

/// Copies the database file and lays the WAL's committed frames over it: all of them, or,
/// with `limit`, those up to the cursor (when the WAL is still that generation). The caller
/// holds a read transaction (see the module docs). Frames a checkpoint already copied into
/// the file (the wal-index's `nBackfill`, read before the copy: [`wal::backfilled`]) are
/// not written again: after a checkpoint a point writes only what came since, which on a
/// copy-on-write file system is what its clone costs beyond metadata.
///
/// `src` is the database file opened once for the shadow's life: closing any descriptor of
/// the file would drop every POSIX lock this process holds on it, SQLite's included (the
/// same for `shm`, the wal-index).
fn build_image(
    db: &Path,
    src: &File,
    shm: Option<&File>,
    out: &Path,
    limit: Option<&wal::Cursor>,
) -> Result<Image, ShadowError> {
    let result = (|| {
        let wp = wal_path(db);
        let wal_file = File::open(&wp).ok();
        let wal_header = match &wal_file {
            Some(wf) => wal::read_header(wf).map_err(ShadowError::io(&wp))?,
            None => None,
        };
        // Before the copy: every frame up to it is in the file the copy reads.
        let backfilled = match (shm, &wal_header) {
            (Some(shm), Some(h)) => wal::backfilled(shm, h.salt),
            _ => 0,
        };
        let mut dst = OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(out)
            .map_err(ShadowError::io(out))?;
        let started = std::time::Instant::now();
        let cloned = crate::point::ficlone(src, &dst);
        let clone_ms = started.elapsed().as_secs_f64() * 1000.0;
        if !cloned {
            copy_whole(src, &dst).map_err(ShadowError::io(out))?;
        }
        let mut header = [0u8; 100];
        let file_len = dst.metadata().map_err(ShadowError::io(out))?.len();
        let mut page_size = 0;
        if file_len >= 100 {
            dst.read_exact_at(&mut header, 0)
                .map_err(ShadowError::io(out))?;
            page_size = page_size_of(&header);
        }
        let mut db_pages = None;
        if let (Some(wf), Some(h)) = (&wal_file, wal_header) {
            {
                let same_generation = limit.is_none_or(|c| c.header.salt == h.salt);
                if same_generation {
                    let mut cur = wal::Cursor::start(h);
                    let commits = cur
                        .read_commits_after(wf, None, limit.map(|c| c.offset), backfilled)
                        .map_err(ShadowError::io(&wp))?;
                    for c in &commits {
                        for (pgno, page) in &c.pages {
                            dst.write_all_at(page, u64::from(pgno - 1) * u64::from(h.page_size))
                                .map_err(ShadowError::io(out))?;
                        }
                        db_pages = Some(c.db_pages);
                    }
                    if !commits.is_empty() {
                        page_size = h.page_size;
                    }
                }
            }
        }
        if page_size == 0 {
            return Err(ShadowError::Source {
                source_name: db.display().to_string(),
                reason: "the file has no SQLite header (empty or not a database)".into(),
            });
        }
        let pages = match db_pages {
            Some(n) => n,
            None => (file_len / u64::from(page_size)) as u32,
        };
        dst.set_len(u64::from(pages) * u64::from(page_size))
            .map_err(ShadowError::io(out))?;
        dst.read_exact_at(&mut header, 0)
            .map_err(ShadowError::io(out))?;
        dst.flush().map_err(ShadowError::io(out))?;
        // What a point's image cost, by part (`--log debug`; the benches print it with
        // RUST_LOG=bellwether_shadow=debug).
        tracing::debug!(
            cloned,
            copy_ms = clone_ms,
            frames_ms = started.elapsed().as_secs_f64() * 1000.0 - clone_ms,
            backfilled,
            "Point image built."
        );
        Ok(Image {
            path: out.to_owned(),
            page_size,
            pages,
            change_counter: u32::from_be_bytes([header[24], header[25], header[26], header[27]]),
            cloned,
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(out);
    }
    result
}

/// Copies all of `src` into the empty `dst` by offsets (`src`'s position is not used, so
/// the descriptor can be shared), in the kernel where it can.
fn copy_whole(src: &File, dst: &File) -> io::Result<()> {
    let len = src.metadata()?.len();
    let mut off_in = 0u64;
    let mut off_out = 0u64;
    while off_in < len {
        let want = (len - off_in).min(1 << 30) as usize;
        match rustix::fs::copy_file_range(src, Some(&mut off_in), dst, Some(&mut off_out), want) {
            Ok(0) => break,
            Ok(_) => {}
            Err(_) => {
                // No copy_file_range here (an old kernel, another file system): pread/pwrite.
                let mut buf = vec![0u8; 1 << 20];
                while off_in < len {
                    let n = src.read_at(&mut buf, off_in)?;
                    if n == 0 {
                        break;
                    }
                    dst.write_all_at(&buf[..n], off_out)?;
                    off_in += n as u64;
                    off_out += n as u64;
                }
            }
        }
    }
    Ok(())
}

/// A running shadow of one SQLite file.
pub struct SqliteShadow {
    store: PointStore,
    db: PathBuf,
    ty: ShadowType,
    poll: Duration,
    /// Whether a point may be a clone ([`crate::point::Clones`]).
    clones: crate::point::Clones,
    /// Two reader connections; `conns[active]` holds the read transaction (transactional).
    conns: [Connection; 2],
    active: usize,
    cursor: Option<wal::Cursor>,
    log: Option<LogWriter>,
    /// The segment before the last point's, closed by the next sync rather than by the
    /// point: closing a file just appended to costs milliseconds on XFS and btrfs (XFS
    /// frees the blocks it allocated past the end), which a point need not wait for.
    retired_log: Option<LogWriter>,
    /// The last point with an image this shadow took (the last point, or the one the points
    /// from the commit log since are rebuilt from); the next image's page deltas are taken
    /// against it.
    last_image: Option<Manifest>,
    /// Bytes logged since `last_image` (transactional).
    log_since_image: u64,
    /// The log a point may be taken from (see [`log_point_limit`]); `Some(0)` takes every
    /// point as an image.
    log_point_limit: Option<u64>,
    /// The database's page size, size in pages and change counter after the last commit
    /// logged (transactional: what a point from the log records).
    page_size: u32,
    db_pages: u32,
    change_counter: u32,
    /// The page hashes of `last_image`'s image, when this shadow took it (differential and
    /// transactional).
    page_map: Option<pages::PageMap>,
    commits: u64,
    last_at: Timestamp,
    /// The WAL generation and offset of the last checkpoint tried.
    last_checkpoint: Option<([u32; 2], u64)>,
    /// Declared after `conns` so it is closed after them (see [`build_image`]).
    db_file: File,
    /// The wal-index (`-shm`), opened the first time it exists and then kept for the
    /// shadow's life: closing a descriptor of it would drop this process's locks on it,
    /// SQLite's read locks included. Never replaced once set.
    shm_file: Option<File>,
}

impl std::fmt::Debug for SqliteShadow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteShadow")
            .field("db", &self.db)
            .field("type", &self.ty)
            .field("commits", &self.commits)
            .finish()
    }
}

impl SqliteShadow {
    /// Opens or creates the shadow of `opts.source` (a path) at `opts.dir`, takes its writer
    /// lock and its base point (transactional shadows take one at every start: commits made
    /// while no shadow followed were not logged).
    pub fn start(opts: &ShadowOptions) -> Result<SqliteShadow, ShadowError> {
        let Source::Path(path) = &opts.source else {
            return Err(ShadowError::Unsupported(
                "a SQLite shadow follows a file (--path), not a URL".into(),
            ));
        };
        let db = canonical(path)?;
        let conns = [open_reader(&db)?, open_reader(&db)?];
        let db_file = File::open(&db).map_err(ShadowError::io(&db))?;
        if opts.shadow_type == ShadowType::Transactional {
            let mode: String = conns[0]
                .query_row("PRAGMA journal_mode", [], |r| r.get(0))
                .map_err(sql_err(&db))?;
            if !mode.eq_ignore_ascii_case("wal") {
                // Not a source that cannot be read: a setup to change (exit 2 in the CLI).
                return Err(ShadowError::Unsupported(format!(
                    "{}: a transactional shadow follows the WAL, but the database's journal mode is {mode} (the writer sets PRAGMA journal_mode=WAL; a full or differential shadow works with a rollback journal)",
                    db.display()
                )));
            }
        }
        let mut store = PointStore::create(
            &opts.dir,
            ShadowMeta {
                format: FORMAT,
                kind: ResourceKind::Sqlite,
                source: db.display().to_string(),
                shadow_type: opts.shadow_type,
                created_at: Timestamp::now(),
                retention: opts.retention,
            },
        )?;
        store.lock_writer()?;
        let has_points = !store.points()?.is_empty();
        let mut s = SqliteShadow {
            store,
            db,
            ty: opts.shadow_type,
            poll: opts.poll.map_or(DEFAULT_POLL, |d| d.get()),
            clones: opts.clones,
            conns,
            active: 0,
            cursor: None,
            log: None,
            retired_log: None,
            last_image: None,
            log_since_image: 0,
            log_point_limit: None,
            page_size: 0,
            db_pages: 0,
            change_counter: 0,
            page_map: None,
            commits: 0,
            last_at: Timestamp(0),
            last_checkpoint: None,
            db_file,
            shm_file: None,
        };
        if s.ty == ShadowType::Transactional || !has_points {
            s.take_point(Reason::Base)?;
        }
        Ok(s)
    }

    pub fn db(&self) -> &Path {
        &self.db
    }

    /// Commits logged since this shadow started.
    pub fn commits(&self) -> u64 {
        self.commits
    }

    /// Bytes of commit log since the last image (transactional).
    pub fn log_since_image(&self) -> u64 {
        self.log_since_image
    }

    /// The log since the last image a point may be taken from (see [`log_point_limit`]).
    pub fn log_limit(&self) -> u64 {
        self.current_log_limit()
    }

    /// Sets the log a point may be taken from (bytes since the last image); 0 takes every
    /// point as an image (and no image by itself). The default is [`log_point_limit`] of the
    /// database's size.
    pub fn set_log_point_limit(&mut self, bytes: u64) {
        self.log_point_limit = Some(bytes);
    }

    fn now(&mut self) -> Timestamp {
        let t = Timestamp::now().max(self.last_at);
        self.last_at = t;
        t
    }

    /// Reads and logs the commits after the cursor (transactional), syncing the log.
    fn read_new(&mut self) -> Result<SyncReport, ShadowError> {
        let mut report = SyncReport::default();
        let Some(cursor) = self.cursor.as_mut() else {
            return Ok(report);
        };
        let wp = wal_path(&self.db);
        let wf = match File::open(&wp) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(report),
            Err(e) => return Err(ShadowError::io(wp)(e)),
        };
        let Some(h) = wal::read_header(&wf).map_err(ShadowError::io(&wp))? else {
            return Ok(report);
        };
        if h.salt != cursor.header.salt {
            // A new generation: the previous one was read to its end (a held read
            // transaction keeps the WAL from restarting before that; see the module docs).
            *cursor = wal::Cursor::start(h);
        }
        let commits = cursor
            .read_commits(&wf, None, None)
            .map_err(ShadowError::io(&wp))?;
        if commits.is_empty() {
            return Ok(report);
        }
        let at = self.now();
        let ps = h.page_size;
        // Before the base point there is no log: those commits are in the base image.
        let Some(log) = self.log.as_mut() else {
            return Ok(report);
        };
        for c in &commits {
            let payload = wal::encode(ps, c);
            report.bytes += payload.len() as u64;
            log.append(at, &payload);
            self.db_pages = c.db_pages;
            if let Some((_, page)) = c.pages.iter().find(|(pgno, _)| *pgno == 1) {
                if page.len() >= 28 {
                    self.change_counter =
                        u32::from_be_bytes([page[24], page[25], page[26], page[27]]);
                }
            }
        }
        log.flush()?;
        self.page_size = ps;
        self.log_since_image += report.bytes;
        self.commits += commits.len() as u64;
        report.commits = commits.len() as u64;
        report.latest_commit_at = Some(at);
        Ok(report)
    }

    /// Moves the read transaction forward: the other connection begins one, then the held
    /// one ends.
    fn roll(&mut self) -> Result<(), ShadowError> {
        let next = 1 - self.active;
        begin_read(&self.conns[next], &self.db)?;
        end_read(&self.conns[self.active], &self.db)?;
        self.active = next;
        Ok(())
    }

    /// Lets the WAL restart (see the module docs): under the write lock, read the last
    /// frames, checkpoint, then hold a fresh read transaction before letting writers in.
    fn checkpoint(&mut self) -> Result<SyncReport, ShadowError> {
        let other = 1 - self.active;
        let locker = &self.conns[other];
        locker
            .busy_timeout(Duration::from_millis(200))
            .map_err(sql_err(&self.db))?;
        let got = locker.execute_batch("BEGIN IMMEDIATE");
        let _ = locker.busy_timeout(Duration::from_secs(5));
        if got.is_err() {
            // A long write transaction: try again at the next poll.
            return Ok(SyncReport::default());
        }
        let result = (|| {
            let report = self.read_new()?;
            let held = &self.conns[self.active];
            end_read(held, &self.db)?;
            let _: (i64, i64, i64) = held
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .map_err(sql_err(&self.db))?;
            begin_read(held, &self.db)?;
            Ok(report)
        })();
        let _ = self.conns[other].execute_batch("ROLLBACK");
        result
    }

    fn image(&mut self) -> Result<(Image, Timestamp, Timestamp), ShadowError> {
        let taken_at = self.now();
        let out = self.store.temp_path();
        if self.shm_file.is_none() {
            self.shm_file = File::open(shm_path(&self.db)).ok();
        }
        let image = if self.ty == ShadowType::Transactional {
            // A fresh read transaction, then every commit up to the WAL's end: the image is
            // the file plus exactly the frames the log holds (see the module docs).
            self.roll()?;
            self.read_new()?;
            build_image(
                &self.db,
                &self.db_file,
                self.shm_file.as_ref(),
                &out,
                self.cursor.as_ref(),
            )?
        } else {
            let c = &self.conns[self.active];
            begin_read(c, &self.db)?;
            let r = build_image(&self.db, &self.db_file, self.shm_file.as_ref(), &out, None);
            end_read(c, &self.db)?;
            r?
        };
        let consistent_at = self.now();
        Ok((image, taken_at, consistent_at))
    }
}

impl Shadow for SqliteShadow {
    fn store(&self) -> &PointStore {
        &self.store
    }

    fn sync(&mut self) -> Result<SyncReport, ShadowError> {
        if self.ty != ShadowType::Transactional {
            return Ok(SyncReport::default());
        }
        self.retired_log = None;
        let mut report = self.read_new()?;
        if report.commits > 0 {
            self.roll()?;
        }
        if let Some(c) = self.cursor {
            // Past WAL_LIMIT in this generation, and not tried in the last WAL_LIMIT bytes.
            let due = c.offset > WAL_LIMIT
                && self
                    .last_checkpoint
                    .is_none_or(|(salt, at)| salt != c.header.salt || c.offset > at + WAL_LIMIT);
            if due {
                self.last_checkpoint = Some((c.header.salt, c.offset));
                let more = self.checkpoint()?;
                report.commits += more.commits;
                report.bytes += more.bytes;
                report.latest_commit_at = more.latest_commit_at.or(report.latest_commit_at);
            }
        }
        Ok(report)
    }

    fn take_point(&mut self, reason: Reason) -> Result<Manifest, ShadowError> {
        // The sealing thread of an earlier clone waits until this point is taken.
        let _pause = self.store.pause_seals();
        if self.ty == ShadowType::Transactional && self.cursor.is_none() {
            // The first point: begin following here.
            begin_read(&self.conns[self.active], &self.db)?;
            let wp = wal_path(&self.db);
            if let Ok(wf) = File::open(&wp) {
                if let Some(h) = wal::read_header(&wf).map_err(ShadowError::io(&wp))? {
                    self.cursor = Some(wal::Cursor::start(h));
                }
            }
            if self.cursor.is_none() {
                // No WAL yet: follow the first generation that appears.
                self.cursor = Some(wal::Cursor::empty());
            }
        }
        if reason != Reason::Base {
            if let Some(m) = self.log_point(&reason)? {
                return Ok(m);
            }
        }
        let (image, taken_at, consistent_at) = self.image()?;
        let result: Result<_, ShadowError> = (|| {
            let name = self.entry_name();
            let mode = self.mode();
            let size = u64::from(image.pages) * u64::from(image.page_size);
            let mut new_bytes = 0;
            let mut entries = Vec::new();
            let mut page_map = None;
            let position = self.position(image.change_counter, image.page_size, image.pages);
            if image.cloned && self.clones == crate::point::Clones::Auto {
                // Copy-on-write: the clone is the point, whatever the type (the file system
                // shares every block that did not change); hashed after it is durable. With
                // `Clones::Never` the clone is only the image's fast copy: its pages are
                // stored below as on any file system.
                let m = self.store.commit_clone_point(
                    PointDraft {
                        taken_at,
                        consistent_at,
                        reason,
                        position,
                        entries: vec![file_entry(name.clone(), mode, size, Vec::new())],
                        new_bytes,
                    },
                    vec![(name, image.path.clone())],
                )?;
                return Ok((m, None));
            }
            if self.ty == ShadowType::Full {
                let (r, new) = self.store.adopt_file(&image.path)?;
                if new {
                    new_bytes += r.len;
                }
                entries.push(file_entry(name.clone(), mode, size, vec![r]));
            } else {
                let f = File::open(&image.path).map_err(ShadowError::io(&image.path))?;
                let mut map = pages::hash_pages(&f, image.page_size, image.pages)
                    .map_err(ShadowError::io(&image.path))?;
                let chain = self.delta_chain(&map, size);
                if let Some((prev, changed, base, mut deltas)) = chain {
                    if !changed.is_empty() || prev.hashes.len() != map.hashes.len() {
                        let (more, new) = pages::put_deltas(
                            &self.store,
                            &f,
                            &image.path,
                            (prev, &base),
                            &mut map,
                            &changed,
                        )?;
                        new_bytes += new;
                        deltas.extend(more);
                    }
                    entries.push(file_entry(name.clone(), mode, size, base));
                    if !deltas.is_empty() {
                        entries.push(file_entry(
                            format!("{name}{}", pages::DELTAS_SUFFIX),
                            0o444,
                            0,
                            deltas,
                        ));
                    }
                } else {
                    let mut f = f;
                    let mut buf = vec![0u8; CHUNK];
                    let mut out = Vec::new();
                    loop {
                        let n =
                            read_full(&mut f, &mut buf).map_err(ShadowError::io(&image.path))?;
                        if n == 0 {
                            break;
                        }
                        let (r, new) = self.store.put_object(&buf[..n])?;
                        if new {
                            new_bytes += r.len;
                        }
                        out.push(r);
                    }
                    entries.push(file_entry(name.clone(), mode, size, out));
                }
                page_map = Some(map);
            }
            let m = self.store.commit_point(PointDraft {
                taken_at,
                consistent_at,
                reason,
                position,
                entries,
                new_bytes,
            })?;
            Ok((m, page_map))
        })();
        let _ = std::fs::remove_file(&image.path);
        // Until a point is committed with it, no page map matches the last point.
        self.page_map = None;
        let (m, page_map) = result?;
        self.page_map = page_map;
        if self.ty == ShadowType::Transactional {
            self.retired_log = self.log.replace(self.store.new_log_writer(m.id())?);
        }
        self.last_image = Some(m.clone());
        self.log_since_image = 0;
        self.page_size = image.page_size;
        self.db_pages = image.pages;
        self.change_counter = image.change_counter;
        Ok(m)
    }

    fn image_due(&self) -> bool {
        self.ty == ShadowType::Transactional
            && self.log.is_some()
            && self.last_image.is_some()
            && self.current_log_limit() > 0
            && self.log_since_image > self.current_log_limit()
    }

    fn poll_interval(&self) -> Duration {
        if self.ty == ShadowType::Transactional {
            self.poll
        } else {
            // Nothing to follow between points: wake for requests and the schedule only.
            Duration::from_millis(250)
        }
    }
}

impl SqliteShadow {
    /// The log since the last image a point may be taken from.
    fn current_log_limit(&self) -> u64 {
        self.log_point_limit.unwrap_or_else(|| {
            log_point_limit(u64::from(self.db_pages) * u64::from(self.page_size))
        })
    }

    /// Where the shadow is: the database's header fields given, and the WAL and commits
    /// followed so far.
    fn position(&self, change_counter: u32, page_size: u32, pages: u32) -> Position {
        Position::Sqlite {
            change_counter,
            wal_salt: self.cursor.map_or([0, 0], |c| c.header.salt),
            wal_frames: self.cursor.map_or(0, |c| c.frames),
            commits: self.commits,
            page_size,
            pages,
        }
    }

    fn entry_name(&self) -> String {
        self.db
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "db".into())
    }

    fn mode(&self) -> u32 {
        std::fs::metadata(&self.db)
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or(0o644)
    }

    /// A point from the commit log (see the module docs), when this shadow can take one:
    /// transactional, following since an image it took, and the log since that image
    /// within the limit once every commit up to now is logged. `None` asks for an image.
    fn log_point(&mut self, reason: &Reason) -> Result<Option<Manifest>, ShadowError> {
        if self.ty != ShadowType::Transactional || self.log.is_none() {
            return Ok(None);
        }
        let Some(image) = self.last_image.as_ref().map(|m| m.seq) else {
            return Ok(None);
        };
        let taken_at = self.now();
        let started = Instant::now();
        // Every commit finished before `taken_at` is in the WAL: log it (synced).
        let read = self.read_new()?;
        if read.commits > 0 {
            self.roll()?;
        }
        let consistent_at = self.now();
        let size = u64::from(self.db_pages) * u64::from(self.page_size);
        let limit = self.current_log_limit();
        let Some(log) = self.log.as_ref() else {
            return Ok(None);
        };
        // Past the limit (a commit larger than it, or no `run` loop to refresh the image
        // meanwhile): an image now.
        if limit == 0 || self.log_since_image > limit || self.page_size == 0 {
            return Ok(None);
        }
        let from = FromLog {
            image,
            records: log.records(),
            last: hex::encode(log.last_sum()),
            log_bytes: self.log_since_image,
        };
        let position = self.position(self.change_counter, self.page_size, self.db_pages);
        let read_ms = started.elapsed().as_secs_f64() * 1000.0;
        let m = self.store.commit_log_point(
            PointDraft {
                taken_at,
                consistent_at,
                reason: reason.clone(),
                position,
                entries: vec![file_entry(self.entry_name(), self.mode(), size, Vec::new())],
                // What this point keeps: the segment it is rebuilt from.
                new_bytes: log.len(),
            },
            from,
        )?;
        let commit_ms = started.elapsed().as_secs_f64() * 1000.0 - read_ms;
        self.retired_log = self.log.replace(self.store.new_log_writer(m.id())?);
        // What the point cost, by part (`--log debug`; the bench prints it with RUST_LOG).
        tracing::debug!(
            read_ms,
            commits = read.commits,
            commit_ms,
            segment_ms = started.elapsed().as_secs_f64() * 1000.0 - read_ms - commit_ms,
            "SQLite point taken from the commit log."
        );
        Ok(Some(m))
    }

    /// When the next point can be a page delta against the last one: the last point's page
    /// map (same page size), the changed pages, the last point's base chunks and its chain of
    /// deltas. `None` asks for a new base (see [`pages`]).
    #[allow(clippy::type_complexity)]
    fn delta_chain(
        &self,
        map: &pages::PageMap,
        size: u64,
    ) -> Option<(&pages::PageMap, Vec<u32>, Vec<ObjectRef>, Vec<ObjectRef>)> {
        let prev = self.page_map.as_ref()?;
        let last = self.last_image.as_ref()?;
        if prev.page_size != map.page_size {
            return None;
        }
        let (base, deltas) = split_entries(&last.entries)?;
        let changed = pages::changed(prev, map);
        let chain_bytes: u64 = deltas.iter().map(|r| r.len).sum();
        let delta_bytes = changed.len() as u64 * u64::from(map.page_size);
        let pages_written = (prev.index.chain_pages, changed.len() as u64);
        if pages::rebase_due(
            deltas.len(),
            chain_bytes,
            delta_bytes,
            pages_written,
            size,
            map.page_size,
        ) {
            return None;
        }
        Some((prev, changed, base.objects.clone(), deltas.to_vec()))
    }
}

fn file_entry(path: String, mode: u32, size: u64, objects: Vec<ObjectRef>) -> Entry {
    Entry {
        path,
        kind: EntryKind::File,
        mode,
        size,
        mtime: None,
        objects,
    }
}

/// A SQLite point's file entry and its page deltas (empty for a base), or `None` when the
/// entries are not one file and, optionally, its `#page-deltas`.
fn split_entries(entries: &[Entry]) -> Option<(&Entry, &[ObjectRef])> {
    match entries {
        [file] if file.kind == EntryKind::File => Some((file, &[])),
        [file, deltas]
            if file.kind == EntryKind::File
                && deltas.kind == EntryKind::File
                && deltas.path == format!("{}{}", file.path, pages::DELTAS_SUFFIX) =>
        {
            Some((file, &deltas.objects))
        }
        _ => None,
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// `file:PATH?immutable=1`: SQLite reads the file alone (no locks, no WAL, no `-shm`).
fn immutable_uri(p: &Path) -> String {
    let mut s = String::from("file:");
    for c in p.display().to_string().chars() {
        match c {
            '%' => s.push_str("%25"),
            '?' => s.push_str("%3f"),
            '#' => s.push_str("%23"),
            c => s.push(c),
        }
    }
    s.push_str("?immutable=1");
    s
}

/// Runs `PRAGMA integrity_check` on a database file no one else uses.
pub fn integrity_check(path: &Path) -> Result<(), String> {
    let c = Connection::open_with_flags(
        immutable_uri(path),
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
    )
    .map_err(|e| e.to_string())?;
    let mut stmt = c
        .prepare("PRAGMA integrity_check")
        .map_err(|e| e.to_string())?;
    let rows: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .and_then(|rows| rows.collect())
        .map_err(|e| e.to_string())?;
    if rows == ["ok"] {
        Ok(())
    } else {
        Err(rows.into_iter().take(5).collect::<Vec<_>>().join("; "))
    }
}

/// Restores a SQLite shadow over `req.dest` (see [`Resource::restore`] and the module docs).
pub fn restore(req: &RestoreRequest) -> Result<RestoreReport, ShadowError> {
    let start = Instant::now();
    let dest = canonical(&req.dest)?;
    let store = if req.elsewhere {
        let s = PointStore::open(&req.dir)?;
        if s.meta().kind != ResourceKind::Sqlite {
            return Err(ShadowError::OtherResource {
                dir: req.dir.clone(),
                shadows: format!("{} {}", s.meta().kind, s.meta().source),
                asked: format!("sqlite {}", dest.display()),
            });
        }
        s
    } else {
        PointStore::open_for(&req.dir, ResourceKind::Sqlite, &dest.display().to_string())?
    };
    let transactional = store.meta().shadow_type == ShadowType::Transactional;
    let found = store.find(&req.target)?;
    let lease = store.lease(found.id())?;
    let m = store.point(lease.point)?;
    store.verify_point(&m)?;
    // A point from the commit log: the point holding its image and the commits between (the
    // lease on `m` keeps them too: retention spares what a held point is rebuilt from).
    let (image, chain) = store.log_chain(&m)?;
    if image.seq != m.seq {
        store.verify_point(&image)?;
    }
    let until = match req.target {
        Target::Point(_) => None,
        Target::Latest => Some(None),
        Target::Time(t) => Some(Some(t)),
    };
    let own = match (transactional, until) {
        (true, Some(until)) => store.log_records(m.id(), until)?,
        _ => Vec::new(),
    };
    let replay = Replay {
        chain: &chain,
        size: m.entries.first().map_or(0, |e| e.size),
        own: &own,
        point: m.id(),
    };
    let split = split_entries(&image.entries).filter(|(e, _)| {
        image.clones.is_empty() || (image.clones.len() == 1 && image.clones[0].entry == e.path)
    });
    let Some((entry, deltas)) = split else {
        return Err(ShadowError::DamagedPoint {
            dir: req.dir.clone(),
            id: image.id(),
            reason: format!(
                "a SQLite point holds one file and its page deltas, this one {} entries ({})",
                image.entries.len(),
                image
                    .entries
                    .iter()
                    .map(|e| e.path.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    };
    let wal = wal_path(&dest);
    let wal_aside = dest.with_file_name(format!(
        ".{}-wal.bellwether-replaced.{}",
        dest.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let mut moved_wal = false;
    let mut bytes = 0;
    let mut hashed = true;
    let built = replace_beside(&dest, |tmp| {
        (bytes, hashed) = write_point(&store, &image, entry, deltas, &replay, tmp)?;
        integrity_check(tmp).map_err(|reason| ShadowError::Verify {
            dest: dest.clone(),
            check: "PRAGMA integrity_check".into(),
            reason,
        })?;
        std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(entry.mode & 0o7777))
            .map_err(ShadowError::io(tmp))?;
        // Last step before the rename: the live file's WAL belongs to the live file.
        if wal.exists() {
            std::fs::rename(&wal, &wal_aside).map_err(ShadowError::io(&wal))?;
            moved_wal = true;
        }
        Ok(())
    });
    match built {
        Ok(()) => {
            let _ = std::fs::remove_file(shm_path(&dest));
            if moved_wal {
                let _ = std::fs::remove_file(&wal_aside);
            }
        }
        Err(e) => {
            if moved_wal {
                let _ = std::fs::rename(&wal_aside, &wal);
            }
            return Err(e);
        }
    }
    drop(lease);
    let restored_to = own.last().map_or(m.consistent_at, |r| r.at);
    Ok(RestoreReport {
        dest,
        point: m.id(),
        point_taken_at: m.taken_at,
        restored_to,
        commits_replayed: (chain.len() + own.len()) as u64,
        bytes,
        checks: if hashed {
            vec![
                "checksums".into(),
                "commit log chain".into(),
                "PRAGMA integrity_check".into(),
            ]
        } else {
            // A copy-on-write point not sealed yet: its chain and length, not its hash.
            vec![
                "manifest checksums".into(),
                "clone length (not sealed yet: content hash not checked)".into(),
                "commit log chain".into(),
                "PRAGMA integrity_check".into(),
            ]
        },
        elapsed_ms: start.elapsed().as_millis() as u64,
    })
}

/// Commits folded for a restore: each page at its last version and the database's size
/// after them, so a restore writes each page once, in file order, however many commits
/// wrote it (on a copy-on-write file system every write into a clone unshares a block, so
/// scattered writes, repeated, cost most of such a restore). Exactly what replaying the
/// commits one by one leaves: a page past a commit's size is dropped there, and the file is
/// cut to the smallest size any commit had before the pages are written (a page the
/// database dropped and did not write again reads as zeros, as it would).
#[derive(Default)]
struct Folded {
    pages: std::collections::BTreeMap<u32, Vec<u8>>,
    page_size: u32,
    db_pages: Option<u32>,
    fewest: Option<u32>,
}

impl Folded {
    fn add(&mut self, (page_size, c): (u32, wal::Commit)) {
        if self.db_pages.is_some_and(|n| c.db_pages < n) {
            self.pages.split_off(&(c.db_pages + 1));
        }
        for (pgno, page) in c.pages {
            self.pages.insert(pgno, page);
        }
        self.page_size = page_size;
        self.db_pages = Some(c.db_pages);
        self.fewest = Some(self.fewest.map_or(c.db_pages, |n| n.min(c.db_pages)));
    }

    /// Writes the folded commits over `f` (of `size` bytes); returns the size after them.
    fn write(self, f: &File, size: u64) -> io::Result<u64> {
        let (Some(db_pages), Some(fewest)) = (self.db_pages, self.fewest) else {
            return Ok(size);
        };
        let ps = u64::from(self.page_size);
        if u64::from(fewest) * ps < size {
            f.set_len(u64::from(fewest) * ps)?;
        }
        for (pgno, page) in &self.pages {
            f.write_all_at(page, u64::from(pgno - 1) * ps)?;
        }
        let size = u64::from(db_pages) * ps;
        f.set_len(size)?;
        Ok(size)
    }
}

/// The commits a restore lays over a point's image: those from the image to the point
/// (a point from the commit log), which must make the point's `size`, then those after the
/// point up to the target.
struct Replay<'a> {
    chain: &'a [(PointId, LogRecord)],
    size: u64,
    own: &'a [LogRecord],
    point: PointId,
}

/// Writes the point's file to `tmp` (every object hashed as it is read): its image's base,
/// page deltas, then the commits replayed over it; a copy-on-write point's clone is cloned
/// (and hashed when sealed). Returns the file's size and whether its content hash was
/// checked.
fn write_point(
    store: &PointStore,
    m: &Manifest,
    entry: &Entry,
    deltas: &[ObjectRef],
    replay: &Replay<'_>,
    tmp: &Path,
) -> Result<(u64, bool), ShadowError> {
    let mut hashed = true;
    if let Some(c) = m.clones.first() {
        hashed = store.clone_file_into(m, c, tmp)?;
    } else if let ([one], true, true) = (
        entry.objects.as_slice(),
        replay.chain.is_empty() && replay.own.is_empty(),
        deltas.is_empty(),
    ) {
        store.clone_object_into(m.id(), one, tmp)?;
    } else {
        let mut f = File::create(tmp).map_err(ShadowError::io(tmp))?;
        for r in &entry.objects {
            let bytes = store.read_object(m.id(), r)?;
            f.write_all(&bytes).map_err(ShadowError::io(tmp))?;
        }
    }
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(tmp)
        .map_err(ShadowError::io(tmp))?;
    let mut size = f.metadata().map_err(ShadowError::io(tmp))?.len();
    for r in deltas {
        let bytes = store.read_object(m.id(), r)?;
        let d = pages::decode(&bytes).map_err(|reason| ShadowError::BadObject {
            dir: store.dir().to_owned(),
            point: m.id(),
            object: r.id,
            what: reason,
        })?;
        pages::apply(&f, &d).map_err(|e| match e {
            pages::ApplyError::Io(e) => ShadowError::io(tmp)(e),
            pages::ApplyError::Bad(reason) => ShadowError::BadObject {
                dir: store.dir().to_owned(),
                point: m.id(),
                object: r.id,
                what: reason,
            },
        })?;
        size = u64::from(d.db_pages) * u64::from(d.page_size);
        f.set_len(size).map_err(ShadowError::io(tmp))?;
    }
    if size != entry.size {
        return Err(ShadowError::DamagedPoint {
            dir: store.dir().to_owned(),
            id: m.id(),
            reason: format!(
                "its base and page deltas make {size} bytes, the point says {}",
                entry.size
            ),
        });
    }
    let decode = |after: PointId, rec: &LogRecord| {
        wal::decode(&rec.payload).map_err(|reason| ShadowError::DamagedLog {
            path: store.dir().join("log").join(format!("{:010}.log", after.0)),
            offset: rec.offset,
            reason,
        })
    };
    if !replay.chain.is_empty() {
        let mut folded = Folded::default();
        for (after, rec) in replay.chain {
            folded.add(decode(*after, rec)?);
        }
        size = folded.write(&f, size).map_err(ShadowError::io(tmp))?;
        if size != replay.size {
            return Err(ShadowError::DamagedPoint {
                dir: store.dir().to_owned(),
                id: replay.point,
                reason: format!(
                    "p{}'s image and the commits logged since make {size} bytes, the point says {}",
                    m.seq, replay.size
                ),
            });
        }
    }
    let mut folded = Folded::default();
    for rec in replay.own {
        folded.add(decode(replay.point, rec)?);
    }
    size = folded.write(&f, size).map_err(ShadowError::io(tmp))?;
    f.sync_all().map_err(ShadowError::io(tmp))?;
    Ok((size, hashed))
}
