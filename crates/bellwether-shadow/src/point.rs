//! The point store of a shadow directory: what every kind of shadow (SQLite, PostgreSQL,
//! directory) keeps, and the one way each of them is read back.
//!
//! A shadow directory holds:
//!
//! ```text
//! SHADOW_DIR/
//!   shadow.json                 the resource it shadows: kind, source, type, retention
//!   objects/ab/cdef…            content-addressed objects, named by their SHA-256 (hex)
//!   points/0000000001.json      one manifest per point (sequence number in the name)
//!   points/0000000002.thinned   the checksums of a point retention removed (the chain stays whole)
//!   points/HEAD                 the latest point's sequence number and checksum
//!   log/0000000002.log          transactional shadows: the commits after point 2, with their times
//!   leases/PID-N.json           one per restore in progress: retention keeps its point
//!   requests/…                  points asked for by another process (`bellwether shadow point`)
//!   shadow.lock, writer.lock    short lock for leases and retention; held by the follower
//!   clones/0000000007-0         copy-on-write points: a reflink clone per entry (btrfs, XFS)
//!   points/0000000007.seal      the SHA-256 of point 7's clones, computed after it was durable
//!   tmp/                        objects and images being written
//! ```
//!
//! Points form a **checksum chain**: each manifest holds the SHA-256 of the previous one and
//! its own (over its canonical JSON), and `points/HEAD` the latest, so a damaged, missing or
//! truncated point is detected and named by [`PointStore::verify`]. Objects are named by the
//! SHA-256 of their content, so an object is stored once however many points reference it,
//! and a damaged one is found by hashing it again.
//!
//! What this module must never do: delete an object or a point that a restore in progress
//! holds (a lease, checked under `shadow.lock`), or delete anything unless it holds the
//! shadow's writer lock (only the follower writes, so retention never races a new point's
//! objects either); write a manifest before the objects it references are on disk.
//!
//! The per-kind entry points share one shape, [`Resource`] (start a [`Shadow`] and restore),
//! and one loop, [`run`], that syncs, takes points on schedule and on request, and thins.

pub mod time;

pub(crate) mod cache;
mod clone;
mod log;
pub mod loopfs;
pub(crate) mod objects;
mod patch;
mod retention;
mod store;

#[cfg(test)]
mod tests;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use bellwether_model::Dur;
use serde::{Deserialize, Serialize};

pub use bellwether_model::shadow::Clones;
pub(crate) use clone::ficlone;
pub use clone::{cow_supported, Seal, SealPause, SealedObject};
pub use log::{LogRecord, LogWriter};
pub use objects::{ObjectId, ObjectRef};
pub use retention::{thin_plan, Retention};
pub(crate) use store::Copies;
pub use store::{GcReport, Lease, PointStore, ThinReport, VerifyReport};
pub use time::{TimeError, Timestamp};

/// The version of the shadow directory's format, in `shadow.json` and every manifest.
/// 2: objects may be stored zstd-compressed (PostgreSQL's; a Bellwether that reads only 1
/// would take them for damaged, so it is told the format instead). A store of an older
/// format ([`OLDEST_FORMAT`]) is read as it is and marked with this one when a writer opens
/// it (what that writer stores may be compressed).
/// 3: a PostgreSQL point's last WAL segment may be shorter than a segment (the WAL through
/// the point, no zeros after it); a restore pads it (a Bellwether that reads only 2 would
/// give recovery a segment of the wrong size).
/// 4: a chunk may be stored as a format 3 patch (a zstd frame against its base, `BWCHDLT3`),
/// and a PostgreSQL base backup's chunks as patches against the last backup's (a Bellwether
/// that reads only 3 would take them for damaged).
/// 5: a PostgreSQL WAL chunk may be stored as a format 4 patch (a zstd frame against the base
/// backup's copies of the pages its full-page images copy, `BWCHDLT4`), and a manifest of
/// 64 KiB or more is stored zstd-compressed.
pub const FORMAT: u32 = 5;
/// The oldest format this build reads: 1, every object stored as its content.
pub const OLDEST_FORMAT: u32 = 1;

/// What a shadow copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceKind {
    /// A SQLite database file (written by another process, in WAL mode or not).
    Sqlite,
    /// A PostgreSQL cluster (base backup plus WAL).
    Postgres,
    /// A plain directory tree.
    Dir,
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ResourceKind::Sqlite => "sqlite",
            ResourceKind::Postgres => "postgres",
            ResourceKind::Dir => "dir",
        })
    }
}

/// How a shadow follows its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShadowType {
    /// A complete copy per point.
    Full,
    /// Per point, only what changed since the previous one (the rest is shared objects).
    Differential,
    /// Differential points plus every commit in between, each with its time, in the commit
    /// log: any committed transaction is a restore target.
    Transactional,
}

impl fmt::Display for ShadowType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ShadowType::Full => "full",
            ShadowType::Differential => "differential",
            ShadowType::Transactional => "transactional",
        })
    }
}

impl FromStr for ShadowType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "full" => Ok(ShadowType::Full),
            "differential" => Ok(ShadowType::Differential),
            "transactional" => Ok(ShadowType::Transactional),
            _ => Err(format!(
                "`{s}` is not a shadow type (full, differential or transactional)"
            )),
        }
    }
}

/// `shadow.json`: the resource a shadow directory copies. Written once, when the shadow is
/// first started; a start or a restore naming another resource is refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowMeta {
    pub format: u32,
    pub kind: ResourceKind,
    /// The source: an absolute file or directory path, or a PostgreSQL URL without its
    /// password.
    pub source: String,
    #[serde(rename = "type")]
    pub shadow_type: ShadowType,
    pub created_at: Timestamp,
    #[serde(default)]
    pub retention: Retention,
}

/// Why a point was taken.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reason {
    /// The `--points-every` interval.
    Schedule,
    /// An operator or another process asked (`bellwether shadow point`).
    OnDemand,
    /// A failure is predicted: `source` names the predictor (the failure model, a detector,
    /// a rollout's risk), `failure_at` when, `probability` how likely (0 to 1).
    Predicted {
        source: String,
        failure_at: Timestamp,
        probability: f64,
    },
    /// Taken of the live data just before a restore replaces it.
    BeforeRestore,
    /// The first point of a shadow (or the first after its source could not be followed,
    /// such as a SQLite WAL reset the shadow did not see), or an image a transactional
    /// shadow refreshes by itself ([`Shadow::image_due`]).
    Base,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Schedule => f.write_str("schedule"),
            Reason::OnDemand => f.write_str("on_demand"),
            Reason::Predicted {
                source,
                failure_at,
                probability,
            } => write!(
                f,
                "predicted by {source}: failure at {failure_at} (p={probability:.2})"
            ),
            Reason::BeforeRestore => f.write_str("before_restore"),
            Reason::Base => f.write_str("base"),
        }
    }
}

/// Where in its source's history a point stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Position {
    /// SQLite: the database's file change counter, the WAL's salts and the number of WAL
    /// frames included, and the commits the shadow has followed so far.
    Sqlite {
        change_counter: u32,
        wal_salt: [u32; 2],
        wal_frames: u32,
        commits: u64,
        page_size: u32,
        pages: u32,
    },
    /// PostgreSQL: the timeline and the LSN (as a 64-bit number; `X/Y` is `X << 32 | Y`).
    Postgres { timeline: u32, lsn: u64 },
    /// A directory: how many files and bytes the point holds.
    Dir { files: u64, bytes: u64 },
}

/// A point's identity: its sequence number in the shadow, printed `p42`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PointId(pub u64);

impl fmt::Display for PointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "p{}", self.0)
    }
}

impl FromStr for PointId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.strip_prefix('p')
            .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|d| d.parse::<u64>().ok())
            .filter(|n| *n > 0)
            .map(PointId)
            .ok_or_else(|| format!("`{s}` is not a point id such as `p42`"))
    }
}

/// What a restore goes back to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Target {
    /// The latest consistent state at or before this time: the latest point at or before it,
    /// then (transactional shadows) every logged commit at or before it.
    Time(Timestamp),
    /// Exactly this point.
    Point(PointId),
    /// The latest state the shadow holds (the latest point and every commit after it).
    Latest,
}

impl Target {
    /// `p42` is a point, `latest` the latest state, anything else a time (RFC 3339 or Unix
    /// seconds with a fraction).
    pub fn parse(text: &str) -> Result<Target, String> {
        let s = text.trim();
        if s == "latest" {
            return Ok(Target::Latest);
        }
        if s.starts_with('p') {
            return s.parse().map(Target::Point);
        }
        Timestamp::parse(s)
            .map(Target::Time)
            .map_err(|e| format!("{e}; or give a point id such as `p42`, or `latest`"))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Time(t) => write!(f, "{t}"),
            Target::Point(p) => write!(f, "{p}"),
            Target::Latest => f.write_str("latest"),
        }
    }
}

/// One file, directory or link a point holds, with the objects that make its content in
/// order (a file's bytes are the concatenation of its objects).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Relative to the resource's root, `/`-separated (a SQLite shadow has one entry, the
    /// database's file name).
    pub path: String,
    #[serde(flatten)]
    pub kind: EntryKind,
    /// Unix permission bits.
    pub mode: u32,
    /// Bytes of a file (the sum of its objects' lengths).
    #[serde(default)]
    pub size: u64,
    /// Modification time, when the kind keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<ObjectRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EntryKind {
    File,
    Dir,
    Symlink { target: String },
}

/// What a kind hands to [`PointStore::commit_point`]: everything of a manifest but its
/// sequence number and checksums, which the store assigns.
#[derive(Debug, Clone, PartialEq)]
pub struct PointDraft {
    /// When taking the point began (every commit finished before it is in the point).
    pub taken_at: Timestamp,
    /// When the point's state was read (no commit begun after it is in the point).
    pub consistent_at: Timestamp,
    pub reason: Reason,
    pub position: Position,
    pub entries: Vec<Entry>,
    /// Bytes of objects this point stored that no earlier point had.
    pub new_bytes: u64,
}

/// A point's manifest, `points/NNNNNNNNNN.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub seq: u64,
    pub kind: ResourceKind,
    pub source: String,
    #[serde(rename = "type")]
    pub shadow_type: ShadowType,
    pub taken_at: Timestamp,
    pub consistent_at: Timestamp,
    pub reason: Reason,
    pub position: Position,
    /// Logical bytes of the point (sum of its files' sizes).
    pub bytes: u64,
    pub new_bytes: u64,
    pub entries: Vec<Entry>,
    /// Copy-on-write points: entries whose content is a block-sharing clone under
    /// `clones/` instead of objects (see [`PointStore::commit_clone_point`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clones: Vec<ClonedFile>,
    /// A point taken from the commit log (transactional SQLite shadows): it has no image of
    /// its own; its state is the previous point's plus every commit of the previous point's
    /// log segment (see [`FromLog`]). Its one entry has no objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_log: Option<FromLog>,
    /// The previous point's checksum (`None` for the first point).
    pub prev_checksum: Option<String>,
    /// SHA-256 (hex) of this manifest's canonical JSON with this field empty.
    pub checksum: String,
}

impl Manifest {
    pub fn id(&self) -> PointId {
        PointId(self.seq)
    }

    /// Every object the point references, in entry order (with repeats).
    pub fn objects(&self) -> impl Iterator<Item = &ObjectRef> {
        self.entries.iter().flat_map(|e| e.objects.iter())
    }
}

/// An entry of a copy-on-write point: its content is the file `clones/NAME` of the shadow
/// directory, a reflink clone (`FICLONE`) taken while the source was consistent. Its SHA-256
/// is computed after the point is durable and recorded in `points/NNNNNNNNNN.seal`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClonedFile {
    /// The entry (its `path`) this clone is the content of.
    pub entry: String,
    /// The clone's file name under `clones/`.
    pub file: String,
    pub len: u64,
}

/// How a point taken from the commit log is rebuilt: the image of point `image` (the nearest
/// earlier point with one), then every commit logged after each point from `image` up to
/// this one's predecessor. Each such point checks its predecessor's segment: `records`
/// commits ending with the record whose chained SHA-256 is `last`, so a segment cut short,
/// altered or swapped is named before anything is restored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FromLog {
    /// The point whose image this point is rebuilt from.
    pub image: u64,
    /// The commits of the previous point's log segment that lead to this point.
    pub records: u64,
    /// The chained SHA-256 (hex) of the last of them (zeros when there are none).
    pub last: String,
    /// Bytes of commit log from the image to this point (what a restore replays).
    pub log_bytes: u64,
}

/// What the shadow is asked to follow: a path (SQLite file, directory) or a URL (PostgreSQL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Path(PathBuf),
    Url(String),
}

/// How a shadow is started (`bellwether shadow start`, the agent).
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowOptions {
    pub dir: PathBuf,
    pub source: Source,
    pub shadow_type: ShadowType,
    /// Scheduled points; `None` takes points only on request.
    pub points_every: Option<Dur>,
    pub retention: Retention,
    /// How often the source is polled for changes (the kind's default when `None`).
    pub poll: Option<Dur>,
    /// Whether a SQLite point may be a copy-on-write clone (docs/shadow.md, "Copy-on-write
    /// file systems"); the other kinds store objects either way.
    pub clones: Clones,
}

/// A restore: the shadow directory, what to go back to, and the live data to replace.
#[derive(Debug, Clone, PartialEq)]
pub struct RestoreRequest {
    pub dir: PathBuf,
    pub target: Target,
    /// The live file or directory (or PostgreSQL data directory) replaced by the result.
    pub dest: PathBuf,
    /// Allow `dest` to differ from the shadow's source (restore a copy elsewhere). Without
    /// it, a shadow of another resource is refused.
    pub elsewhere: bool,
}

/// What a restore did, for the CLI's report and the agent's action result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestoreReport {
    pub dest: PathBuf,
    pub point: PointId,
    pub point_taken_at: Timestamp,
    /// The time of the state restored: the point's consistent time, or the last replayed
    /// commit's time.
    pub restored_to: Timestamp,
    /// Commits replayed from the commit log after the point.
    pub commits_replayed: u64,
    pub bytes: u64,
    /// The checks passed before the swap (`checksums`, `integrity_check`).
    pub checks: Vec<String>,
    pub elapsed_ms: u64,
}

/// What one [`Shadow::sync`] did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncReport {
    /// Commits newly recorded in the commit log.
    pub commits: u64,
    /// The time of the newest commit the shadow holds, if it follows commits.
    pub latest_commit_at: Option<Timestamp>,
    pub bytes: u64,
}

/// The per-kind entry points: `sqlite::Sqlite`, `dir::Dir` and `pg::Postgres` implement
/// this, and the CLI and the agent call them through [`crate::resource`].
pub trait Resource: Sync {
    fn kind(&self) -> ResourceKind;

    /// Opens the shadow at `opts.dir` (creating it, with its `shadow.json`, when new;
    /// refusing one of another resource), holds its writer lock, and takes the base point
    /// when the shadow has none. The returned shadow is then driven by [`run`].
    fn start(&self, opts: &ShadowOptions) -> Result<Box<dyn Shadow>, ShadowError>;

    /// Restores `req.target` over `req.dest`: built beside it, verified (checksums, and the
    /// kind's own check), then swapped in atomically. On any error `req.dest` is untouched.
    fn restore(&self, req: &RestoreRequest) -> Result<RestoreReport, ShadowError>;
}

/// A running shadow of one resource, driven by [`run`] (or step by step by a test).
pub trait Shadow: Send {
    fn store(&self) -> &PointStore;

    /// Copies what changed since the last call (transactional: every new commit, with its
    /// time, into the commit log). Cheap when nothing changed.
    fn sync(&mut self) -> Result<SyncReport, ShadowError>;

    /// Takes a consistent point now.
    fn take_point(&mut self, reason: Reason) -> Result<Manifest, ShadowError>;

    /// How long [`run`] waits between syncs.
    fn poll_interval(&self) -> Duration;

    /// Whether the shadow wants a new image: a transactional SQLite shadow takes its points
    /// from the commit log until the log since its last image passes a bound, and then [`run`]
    /// takes a [`Reason::Base`] point (an image) by itself, after the points asked for, so a
    /// point asked for does not wait for an image.
    fn image_due(&self) -> bool {
        false
    }
}

/// Stops [`run`] and hands it points asked for in this process, waking it at once.
#[derive(Debug, Default)]
pub struct Control {
    state: Mutex<ControlState>,
    wake: Condvar,
}

#[derive(Debug, Default)]
struct ControlState {
    stop: bool,
    requests: Vec<Reason>,
}

impl Control {
    pub fn new() -> Control {
        Control::default()
    }

    /// Asks the loop to stop after its current step.
    pub fn stop(&self) {
        self.lock().stop = true;
        self.wake.notify_all();
    }

    pub fn is_stopped(&self) -> bool {
        self.lock().stop
    }

    /// Asks the loop for a point with this reason.
    pub fn request_point(&self, reason: Reason) {
        self.lock().requests.push(reason);
        self.wake.notify_all();
    }

    /// Waits up to `timeout` for a stop or a request; returns early on either.
    pub fn wait(&self, timeout: Duration) {
        let guard = self.lock();
        if guard.stop || !guard.requests.is_empty() {
            return;
        }
        let _ = self
            .wake
            .wait_timeout_while(guard, timeout, |s| !s.stop && s.requests.is_empty());
    }

    fn take_requests(&self) -> Vec<Reason> {
        std::mem::take(&mut self.lock().requests)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ControlState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Something [`run`] did, for the CLI's log and the tests.
#[derive(Debug, Clone, PartialEq)]
pub enum RunEvent {
    Synced(SyncReport),
    /// A point asked for: by `ctl`, by a request file or by the schedule.
    Point(Manifest),
    /// An image the loop took by itself ([`Shadow::image_due`]): a point in the store, but
    /// not one anybody asked for, so it never answers a request.
    Image(Manifest),
    Thinned(ThinReport),
    /// A step failed; the loop goes on (a source briefly unreadable) unless it stops.
    Failed(String),
}

/// Drives a shadow until `ctl` stops it: sync every poll interval, a point every
/// `points_every` (and whenever one is requested, in this process through `ctl` or from
/// another through the shadow directory's `requests/`), and retention after each point.
/// Returns the first error that repeats `max_failures` times in a row.
pub fn run(
    shadow: &mut dyn Shadow,
    points_every: Option<Dur>,
    ctl: &Control,
    on_event: &mut dyn FnMut(&RunEvent),
) -> Result<(), ShadowError> {
    store::run_loop(shadow, points_every, ctl, on_event)
}

/// Builds a replacement of `dest` beside it (same directory, so the rename is atomic),
/// and swaps it in only when `build` succeeded.
///
/// `build` gets the temporary path (a file or a directory the build creates) and must
/// leave there the verified result. The result is synced, then renamed over `dest` (a
/// directory is exchanged with `renameat2(RENAME_EXCHANGE)` and the old tree removed
/// afterwards). On any error the temporary is removed and `dest` is untouched.
pub fn replace_beside(
    dest: &Path,
    build: impl FnOnce(&Path) -> Result<(), ShadowError>,
) -> Result<(), ShadowError> {
    store::replace_beside(dest, build)
}

/// Every error of the shadow crate. Messages name the shadow directory, the point, the
/// object or the file.
#[derive(Debug, thiserror::Error)]
pub enum ShadowError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a shadow directory (no shadow.json); start one with `bellwether shadow start`", dir.display())]
    NotAShadow { dir: PathBuf },
    #[error("{}: {reason}", path.display())]
    BadFile { path: PathBuf, reason: String },
    #[error("{} is the shadow of {shadows}, not of {asked}; nothing was changed", dir.display())]
    OtherResource {
        dir: PathBuf,
        shadows: String,
        asked: String,
    },
    #[error("{} has no points yet", dir.display())]
    NoPoints { dir: PathBuf },
    #[error("{target} is before the first point of {} ({first}); nothing was changed", dir.display())]
    BeforeFirstPoint {
        dir: PathBuf,
        target: Timestamp,
        first: Timestamp,
    },
    #[error("{} has no point {id}{}", dir.display(), if *thinned { " (retention removed it)" } else { "" })]
    NoSuchPoint {
        dir: PathBuf,
        id: PointId,
        thinned: bool,
    },
    #[error("point {id} of {} is damaged: {reason}", dir.display())]
    DamagedPoint {
        dir: PathBuf,
        id: PointId,
        reason: String,
    },
    #[error("point {id} of {} is missing: {reason}", dir.display())]
    MissingPoint {
        dir: PathBuf,
        id: PointId,
        reason: String,
    },
    #[error("object {object} of point {point} in {} is {what}", dir.display())]
    BadObject {
        dir: PathBuf,
        point: PointId,
        object: ObjectId,
        /// `missing` or `damaged (its content hashes to …)`.
        what: String,
    },
    #[error("commit log {} is damaged at byte {offset}: {reason}", path.display())]
    DamagedLog {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("{} is followed by another process ({holder}); stop it first", dir.display())]
    Busy { dir: PathBuf, holder: String },
    #[error("{source_name}: {reason}")]
    Source { source_name: String, reason: String },
    #[error("the restored copy of {} failed its check ({check}): {reason}; the live data was not changed", dest.display())]
    Verify {
        dest: PathBuf,
        check: String,
        reason: String,
    },
    #[error("{0}")]
    Unsupported(String),
}

impl ShadowError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> ShadowError {
        let path = path.into();
        move |source| ShadowError::Io { path, source }
    }

    /// Bad input from the user (exit code 2 in the CLI): another resource, a target before
    /// the first point or naming no point, a directory that is no shadow.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            ShadowError::NotAShadow { .. }
                | ShadowError::OtherResource { .. }
                | ShadowError::BeforeFirstPoint { .. }
                | ShadowError::NoSuchPoint { .. }
                | ShadowError::NoPoints { .. }
                | ShadowError::Unsupported(_)
        )
    }
}
