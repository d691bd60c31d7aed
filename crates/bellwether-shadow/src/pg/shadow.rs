//! A running PostgreSQL shadow: the checks and set-up on the primary (slot, synchronous
//! standby name), the `pg_receivewal` supervisor of a transactional shadow, base backups and
//! points taken into the point store.
//!
//! The point store's interface is synchronous; the primary's client is tokio-postgres, so a
//! shadow owns a one-worker runtime that also drives the `pg_receivewal` supervisor between
//! calls.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncBufReadExt;
use tokio::sync::watch;

use crate::point::{
    Entry, Manifest, ObjectId, ObjectRef, PointDraft, PointStore, Position, Reason, ResourceKind,
    Shadow, ShadowError, ShadowMeta, ShadowOptions, ShadowType, SyncReport, Timestamp, FORMAT,
};

use super::base::{self, BaseInfo, Put};
use super::lsn::SegmentName;
use super::marks::Mark;
use super::proc::{run, tail};
use super::{
    pg_dir, read_info, write_json, Lsn, PgOptions, PgShadowError, PgShadowInfo, SyncSetup,
};

/// How often the primary's replication view is read while waiting for the shadow (a state of
/// another process: there is no event to await).
const POLL: Duration = Duration::from_millis(10);
/// The longest pause between two starts of a `pg_receivewal` that keeps exiting.
const RESTART_CAP: Duration = Duration::from_secs(10);
/// Where a point's WAL segments go in its manifest (and in a restored copy).
pub(crate) const WAL_PREFIX: &str = "bw_restore_wal/";

/// Runs `f` on `rt` from synchronous code, also when called from inside another runtime
/// (the CLI's): then on a scoped thread, since a runtime cannot block inside another.
pub(crate) fn block<F>(rt: &tokio::runtime::Runtime, f: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| match s.spawn(|| rt.block_on(f)).join() {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        })
    } else {
        rt.block_on(f)
    }
}

/// The primary's connection string without its password (and other options): a
/// `postgres://user@host:port/db` URL, or a `host=/socket/dir port=… user=… dbname=…`
/// conninfo for a unix socket. It names the resource in `shadow.json` and lets `bellwether
/// shadow point` start the shadow again (the password then comes from `~/.pgpass`).
pub(crate) fn public_source(url: &str) -> String {
    let Ok(c) = url.parse::<tokio_postgres::Config>() else {
        return "(unparsable connection string)".into();
    };
    let port = c.get_ports().first().copied().unwrap_or(5432);
    let user = c.get_user().unwrap_or("postgres");
    let db = c.get_dbname().unwrap_or(user);
    match c.get_hosts().first() {
        Some(tokio_postgres::config::Host::Unix(dir)) => {
            format!("host={} port={port} user={user} dbname={db}", dir.display())
        }
        Some(tokio_postgres::config::Host::Tcp(h)) if h.contains(':') => {
            format!("postgres://{user}@[{h}]:{port}/{db}")
        }
        Some(tokio_postgres::config::Host::Tcp(h)) => format!("postgres://{user}@{h}:{port}/{db}"),
        None => format!("postgres://{user}@localhost:{port}/{db}"),
    }
}

/// A runtime shut down without waiting when dropped, which is allowed inside another
/// runtime (a plain drop there panics).
pub(crate) struct OwnedRuntime(pub Option<tokio::runtime::Runtime>);

impl OwnedRuntime {
    pub(crate) fn get(&self) -> &tokio::runtime::Runtime {
        self.0.as_ref().expect("present until dropped")
    }
}

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, ShadowError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| ShadowError::Source {
            source_name: "postgres".into(),
            reason: format!("cannot start the shadow's runtime: {e}"),
        })
}

/// A base backup stored, not yet a point.
struct Backup {
    taken_at: Timestamp,
    info: BaseInfo,
    entries: Vec<Entry>,
    new_bytes: u64,
}

/// The latest base backup: its WAL range and its files in the store.
#[derive(Debug, Clone)]
struct CurrentBase {
    /// Its point's number.
    seq: u64,
    info: BaseInfo,
    entries: Vec<Entry>,
}

/// A started shadow ([`Shadow`]). Dropping it (the end of [`crate::point::run`]) takes the
/// shadow out of `synchronous_standby_names` first (or the primary would wait for it
/// forever), stops the stream and drops the slot (or the primary would keep WAL for it
/// forever). A crash leaves both: the primary then waits, as for any synchronous standby,
/// until the shadow is started again with the same directory (see docs/shadow-postgres.md).
pub struct PgShadow {
    store: PointStore,
    rt: Option<tokio::runtime::Runtime>,
    inner: Inner,
    base: Option<CurrentBase>,
    /// Objects of complete WAL segments already stored (a complete segment never changes).
    wal_cache: HashMap<String, Vec<ObjectRef>>,
    /// The segment being written when the last point was taken, and its leading chunks
    /// that lay wholly before that point's LSN (flushed then: the stream never writes a byte
    /// twice), so the next point reads and hashes only what came after them.
    partial_cache: Option<(String, Vec<ObjectRef>)>,
    /// The timeline of the last point (the sync loop stores its WAL ahead of the next).
    timeline: u32,
    /// Bytes the sync loop stored since the last point (counted in the next point's
    /// `new_bytes`).
    staged_bytes: u64,
    /// The segment before which the next sync removes what the points hold from `pg/wal`
    /// ([`PgShadow::prune_wal`]), set by a point.
    prune: Option<u64>,
    /// WAL objects a transactional point stored without syncing them (its bytes are durable
    /// in `pg/wal` already): the next sync settles them before it removes anything from
    /// `pg/wal` ([`PgShadow::settle_wal`]); after a machine's stop, the next start rebuilds
    /// any it lost from there ([`repair_wal`]).
    /// Each with the LSN it begins at.
    unsettled: Vec<(ObjectRef, u64)>,
    /// The current base's pages, for WAL chunks stored as patches against them
    /// ([`super::pages`]).
    pages: super::pages::WalPages,
    /// Bytes of WAL the shadow holds past its base's end (at the last point or sync; the
    /// rest of the segment a backup's end switched from counts too).
    wal_since_base: u64,
}

/// Whether chunks stored with `put` are tried as patches against the base's pages there and
/// then: those stored compressed (the sync loop's); those a point stores unsynced are tried
/// when they are settled, and those it stores fast not at all (a point waits for them).
fn pages_wanted(put: Put) -> bool {
    put == Put::Compressed
}

/// How many of the newest points [`repair_wal`] checks: a point's unsynced objects are
/// settled by the sync that follows it (a quarter of a second later), so only the points
/// of the last moments before a machine stopped can have lost any.
const REPAIR_POINTS: usize = 16;

/// Rebuilds from `pg/wal` the WAL objects of the newest points that the machine lost before
/// they were synced (a transactional point does not sync its own: [`PgShadow::settle_wal`]).
/// An object stored as it is gets its content hashed; one that is missing or not its name's
/// is read again from the segment it was cut from (the stream never writes a byte twice)
/// and stored, synced. One that `pg/wal` no longer holds is named in a warning (and by
/// `shadow verify`). Returns how many were rebuilt.
pub(crate) fn repair_wal(store: &PointStore) -> Result<usize, ShadowError> {
    if store.meta().shadow_type != ShadowType::Transactional {
        // Only a transactional point leaves objects unsynced; the others sync every one.
        return Ok(0);
    }
    let wal = pg_dir(store.dir()).join("wal");
    let seqs = store.point_seqs()?;
    let mut checked = std::collections::HashSet::new();
    let mut rebuilt = 0;
    for seq in seqs.iter().rev().take(REPAIR_POINTS) {
        let Ok(m) = store.point(crate::PointId(*seq)) else {
            continue;
        };
        for e in m.entries.iter() {
            let Some(name) = e.path.strip_prefix(WAL_PREFIX) else {
                continue;
            };
            let mut at = 0u64;
            for r in &e.objects {
                let off = at;
                at += r.len;
                if !checked.insert(r.id) || store.object_whole(r) {
                    continue;
                }
                match rebuild_object(store, &wal, name, off, r) {
                    Ok(true) => {
                        rebuilt += 1;
                        tracing::info!(point = %m.id(), object = %r.id, segment = name, "A WAL object the machine lost before it was synced was rebuilt from pg/wal.");
                    }
                    Ok(false) => {
                        tracing::warn!(point = %m.id(), object = %r.id, segment = name, "A WAL object of this point is lost, and pg/wal no longer holds its bytes.")
                    }
                    Err(e) => {
                        tracing::warn!(point = %m.id(), object = %r.id, error = %e, "Cannot rebuild a lost WAL object from pg/wal.")
                    }
                }
            }
        }
    }
    Ok(rebuilt)
}

/// How many of the newest manifests [`recover_points`] reads: only the points committed in
/// the quarter of a second before a machine stopped can have lost theirs.
const RECOVER_POINTS: usize = 16;

/// Rebuilds the manifests of the newest transactional points that a machine's stop lost
/// before the follower synced them ([`PointStore::commit_point_deferred`]), from their marks
/// in `pg/wal` ([`super::marks`]): a manifest missing (its name not durable; or `HEAD`
/// names a later point than any manifest) or damaged (its name durable, not its bytes), and
/// every point after it (each chains from the one before). Each is committed again with
/// the same number, position, time taken and reason; its base's files from its base point,
/// its WAL from the newest whole point's and from `pg/wal`; its consistent time the commit
/// that followed its mark (the primary's clock, not before the time taken). Nothing is
/// removed unless every point to rebuild has its mark there and its WAL is stored; else the
/// damage stays for `shadow verify` to name. Needs the writer lock. Returns how many
/// points were rebuilt.
pub(crate) fn recover_points(
    store: &PointStore,
    seg: u64,
    shadow: &str,
) -> Result<usize, ShadowError> {
    if store.meta().shadow_type != ShadowType::Transactional {
        return Ok(0);
    }
    let (seqs, thinned) = store.scan_points()?;
    let newest = seqs
        .last()
        .copied()
        .unwrap_or(0)
        .max(store.head_seq()?.unwrap_or(0));
    let lo = seqs
        .len()
        .checked_sub(RECOVER_POINTS)
        .map_or(seqs.first(), |i| seqs.get(i))
        .copied()
        .unwrap_or(1);
    let lost = (lo..=newest).find(|s| {
        thinned.binary_search(s).is_err()
            && (seqs.binary_search(s).is_err()
                || matches!(
                    store.point(crate::PointId(*s)),
                    Err(ShadowError::DamagedPoint { .. })
                ))
    });
    let Some(first) = lost else {
        return Ok(0);
    };
    let keep = match first.checked_sub(1).filter(|k| *k > 0) {
        Some(k) => match store.point(crate::PointId(k)) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(point = first, error = %e, "A point's manifest is damaged or missing, and the point before it is not whole: nothing is rebuilt.");
                return Ok(0);
            }
        },
        None => return Ok(0),
    };
    let Position::Postgres { timeline, lsn } = keep.position else {
        return Ok(0);
    };
    let wal = pg_dir(store.dir()).join("wal");
    // The last mark of each number: a point that failed after its mark leaves one, and the
    // next point takes its number again.
    let mut marks: HashMap<u64, super::marks::Found> = HashMap::new();
    for f in super::marks::find(&wal, timeline, seg, Lsn(lsn), shadow) {
        marks.insert(f.mark.seq, f);
    }
    let mut drafts = Vec::new();
    for s in first..=newest {
        let Some(f) = marks.get(&s) else {
            tracing::warn!(point = s, "A point's manifest is damaged or missing, and pg/wal holds no mark to rebuild it from: `shadow verify` names it.");
            return Ok(0);
        };
        let base = store.point(crate::PointId(f.mark.base_seq))?;
        let mut entries = base.entries;
        let (more, new_bytes) = rebuild_wal_entries(
            store,
            &wal,
            (timeline, seg),
            &keep,
            f.mark.base_start.segment(seg),
            f.through,
        )?;
        entries.extend(more);
        drafts.push(PointDraft {
            taken_at: f.mark.taken_at,
            consistent_at: f.committed_at.max(f.mark.taken_at),
            reason: f.mark.reason.clone(),
            position: Position::Postgres {
                timeline,
                lsn: f.lsn.0,
            },
            entries,
            new_bytes,
        });
    }
    let removed = store.rewind_to(&keep)?;
    let n = drafts.len();
    for d in drafts {
        let m = store.commit_point(d)?;
        tracing::info!(point = %m.id(), "A point whose manifest the machine lost before it was synced was rebuilt from its mark in pg/wal.");
    }
    tracing::info!(
        rebuilt = n,
        removed,
        "Points rebuilt from their marks in pg/wal."
    );
    Ok(n)
}

/// A point's entry for a WAL segment (`rel`, under [`WAL_PREFIX`]) made of `objects`.
fn wal_entry(rel: String, objects: Vec<ObjectRef>) -> Entry {
    Entry {
        path: rel,
        kind: crate::point::EntryKind::File,
        mode: 0o600,
        size: objects.iter().map(|o| o.len).sum(),
        mtime: None,
        objects,
    }
}

/// The WAL entries of a point on a base whose WAL starts in segment `first`, through
/// `through`: the complete segments `keep` (a whole point on the same base) holds, and the
/// rest read from `pg/wal` and stored (synced by the point's commit).
fn rebuild_wal_entries(
    store: &PointStore,
    wal: &Path,
    (timeline, seg): (u32, u64),
    keep: &Manifest,
    first: u64,
    through: Lsn,
) -> Result<(Vec<Entry>, u64), ShadowError> {
    let known: HashMap<&str, &Entry> = keep
        .entries
        .iter()
        .filter(|e| e.path.starts_with(WAL_PREFIX) && e.size == seg)
        .map(|e| (e.path.as_str(), e))
        .collect();
    let last = Lsn(through.0.saturating_sub(1)).segment(seg).max(first);
    let mut entries = Vec::new();
    let mut new_bytes = 0;
    for segno in first..=last {
        let name = SegmentName { timeline, segno }.file_name(seg);
        let rel = format!("{WAL_PREFIX}{name}");
        if let Some(e) = known.get(rel.as_str()) {
            entries.push((*e).clone());
            continue;
        }
        let complete = wal.join(&name);
        let partial = wal.join(format!("{name}.partial"));
        let Some((f, is_complete)) = base::open_segment(&complete, &partial)? else {
            return Err(PgShadowError::MissingWal {
                dir: wal.to_owned(),
                segment: name,
                point: "(being rebuilt)".into(),
                target: format!("through LSN {through}"),
            }
            .into());
        };
        let end = if is_complete {
            seg
        } else {
            through.0.saturating_sub(segno.saturating_mul(seg)).min(seg)
        };
        let path = if is_complete { &complete } else { &partial };
        let (objects, n) = base::store_chunks(
            store,
            &f,
            path,
            (0, (seg as usize).div_ceil(base::CHUNK)),
            end,
            Put::Compressed,
            base::Against::Nothing,
        )?;
        new_bytes += n;
        entries.push(wal_entry(rel, objects));
    }
    Ok((entries, new_bytes))
}

/// Stores object `r` again from bytes `off..off + r.len` of segment `name` in `wal`
/// (complete or `.partial`), if they are its content. Returns whether it did.
fn rebuild_object(
    store: &PointStore,
    wal: &Path,
    name: &str,
    off: u64,
    r: &ObjectRef,
) -> Result<bool, ShadowError> {
    use std::os::unix::fs::FileExt;
    let complete = wal.join(name);
    let partial = wal.join(format!("{name}.partial"));
    let Some((f, _)) = base::open_segment(&complete, &partial)? else {
        return Ok(false);
    };
    let mut buf = vec![0u8; r.len as usize];
    if f.read_exact_at(&mut buf, off).is_err() || ObjectId::of(&buf) != r.id {
        return Ok(false);
    }
    let path = store.object_path(&r.id);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ShadowError::io(&path)(e)),
    }
    store.put_object_unsynced(&buf)?;
    Ok(store.settle(&[*r])?.is_empty())
}

struct Inner {
    opts: PgOptions,
    dir: PathBuf,
    info: PgShadowInfo,
    bindir: PathBuf,
    conn: bellwether_pg::Instance,
    role: String,
    receiver: Option<Receiver>,
    may_create_restore_points: bool,
    /// Whether the role may write a point's mark into the WAL
    /// (`pg_logical_emit_message`, [`super::marks`]).
    marks_in_wal: bool,
}

impl PgShadow {
    /// Checks the primary, opens (or creates) the shadow directory and checks it shadows this
    /// database, sets up the slot (differential, transactional), starts `pg_receivewal
    /// --synchronous` and registers it as a synchronous standby (transactional), and takes
    /// a base backup as the base point.
    pub fn start(opts: &ShadowOptions, pg: &PgOptions) -> Result<PgShadow, ShadowError> {
        let rt = runtime()?;
        let mut inner = block(&rt, Inner::connect(pg.clone(), opts.dir.clone()))?;
        let meta = ShadowMeta {
            format: FORMAT,
            kind: ResourceKind::Postgres,
            source: public_source(&pg.url),
            shadow_type: pg.kind,
            created_at: Timestamp::now(),
            retention: opts.retention,
        };
        let mut store = PointStore::create(&opts.dir, meta)?;
        store.lock_writer()?;
        inner.load_info()?;
        // Before the stream starts again and the base point lets `pg/wal` be pruned.
        recover_points(&store, inner.info.wal_segment_size, &inner.info.name)?;
        repair_wal(&store)?;
        let mut shadow = PgShadow {
            store,
            rt: Some(rt),
            inner,
            base: None,
            wal_cache: HashMap::new(),
            partial_cache: None,
            timeline: 0,
            staged_bytes: 0,
            prune: None,
            unsettled: Vec::new(),
            pages: Default::default(),
            wal_since_base: 0,
        };
        shadow.on(|i| Box::pin(i.set_up()))?;
        shadow.take_base_point(Reason::Base)?;
        Ok(shadow)
    }

    pub fn info(&self) -> &PgShadowInfo {
        &self.inner.info
    }

    /// The last error `pg_receivewal` printed (transactional).
    pub fn receiver_error(&self) -> Option<String> {
        self.inner.receiver_error()
    }

    fn on<T: Send>(
        &mut self,
        f: impl for<'a> FnOnce(
                &'a mut Inner,
            ) -> std::pin::Pin<
                Box<dyn Future<Output = Result<T, PgShadowError>> + Send + 'a>,
            > + Send,
    ) -> Result<T, ShadowError> {
        let rt = self
            .rt
            .as_ref()
            .ok_or_else(|| ShadowError::Unsupported("the shadow was stopped".into()))?;
        let inner = &mut self.inner;
        block(rt, f(inner)).map_err(ShadowError::from)
    }

    /// A base backup as a point.
    fn take_base_point(&mut self, reason: Reason) -> Result<Manifest, ShadowError> {
        let backup = self.backup()?;
        self.commit_base(reason, backup)
    }

    /// A new base for a differential or transactional shadow whose WAL since its base
    /// passed [`PgShadow::rebase_limit`] ([`Shadow::image_due`]): a restore replays the WAL
    /// from its base, so the base moves on and a restore of a later point replays at most
    /// that much. The base backup is taken first, then a point on the old base whose mark
    /// follows the backup's end, then the base point is committed: a time before the backup
    /// ended is restored from the old base (that point holds its WAL through the time), a
    /// later one from the new (the latest point consistent at or before a time is the base
    /// point, and the points after it hold the WAL from its start), so no commit between the
    /// two is left without a way back.
    fn rebase(&mut self) -> Result<Manifest, ShadowError> {
        let backup = self.backup()?;
        self.take_wal_point(Reason::Base)?;
        self.commit_base(Reason::Base, backup)
    }

    /// Bytes of WAL since its base after which a shadow takes a new base ([`PgShadow::rebase`]):
    /// half the database (at least 64 MiB), or what [`PgOptions::rebase_after`] says. A
    /// restore then writes the base and replays at most half as much WAL again (on this
    /// machine: 1 GiB in about 4 s and 0.5 GiB of WAL in about 4 s), and a new base's cost,
    /// reading the database once (its changed chunks stored as patches), is spread over at
    /// least half its size of WAL.
    fn rebase_limit(&self) -> u64 {
        if let Some(n) = self.inner.opts.rebase_after {
            return n;
        }
        let data: u64 = self
            .base
            .as_ref()
            .map(|b| {
                b.entries
                    .iter()
                    .filter(|e| !e.path.starts_with("pg_wal/"))
                    .map(|e| e.size)
                    .sum()
            })
            .unwrap_or(0);
        (data / 2).max(64 << 20)
    }

    /// Takes a base backup into the store (its objects; no point yet).
    fn backup(&mut self) -> Result<Backup, ShadowError> {
        let taken_at = Timestamp::now();
        let tmp = self.store.temp_path();
        let bindir = self.inner.bindir.clone();
        let url = self.inner.opts.url.clone();
        let limit = self.inner.opts.step_timeout;
        let t = tmp.clone();
        let info =
            self.on(move |_| Box::pin(async move { base::take(&bindir, &url, &t, limit).await }));
        let info = match info {
            Ok(i) => i,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e);
            }
        };
        // A new base backup's changed chunks are stored as patches against the last one's
        // (the current base, or after a start the newest point's: every point lists its
        // base's files).
        let previous = match &self.base {
            Some(b) => base::Previous::of(&b.entries),
            None => self
                .store
                .find(&crate::point::Target::Latest)
                .map(|m| base::Previous::of(&m.entries))
                .unwrap_or_default(),
        };
        let stored = base::clear_before(&tmp, info.start_lsn, self.inner.info.wal_segment_size)
            .and_then(|()| base::store_tree(&self.store, &tmp, true, &previous));
        let _ = std::fs::remove_dir_all(&tmp);
        let (entries, new_bytes) = stored?;
        Ok(Backup {
            taken_at,
            info,
            entries,
            new_bytes,
        })
    }

    /// Commits a base backup as a point; it is the base of the points after it.
    fn commit_base(&mut self, reason: Reason, b: Backup) -> Result<Manifest, ShadowError> {
        let Backup {
            taken_at,
            info,
            entries,
            new_bytes,
        } = b;
        let m = self.store.commit_point(PointDraft {
            taken_at,
            consistent_at: Timestamp::from_micros(info.finished_us),
            reason,
            position: Position::Postgres {
                timeline: info.timeline,
                lsn: info.end_lsn.0,
            },
            entries: entries.clone(),
            new_bytes,
        })?;
        self.timeline = info.timeline;
        // The WAL chunks waiting to be patched again, against the base their points are on.
        self.repatch_wal(true);
        self.pages.set_base(&entries);
        self.base = Some(CurrentBase {
            seq: m.seq,
            info,
            entries,
        });
        self.wal_since_base = 0;
        self.prune = Some(self.prune.unwrap_or(0));
        Ok(m)
    }

    /// A point on the current base: a restore point on the primary, the WAL up to it in the
    /// shadow (waited for, or fetched), and the segments from the base's start to it stored.
    fn take_wal_point(&mut self, reason: Reason) -> Result<Manifest, ShadowError> {
        let Some(base) = self.base.clone() else {
            return self.take_base_point(reason);
        };
        let taken_at = Timestamp::now();
        let started = std::time::Instant::now();
        let name = format!("bw-{}", taken_at.as_micros());
        // A transactional point's mark is a message in the WAL that says what the point is,
        // so that its manifest need not be synced before the point is returned: the stream
        // makes the mark durable, and a start after a machine's stop rebuilds a lost
        // manifest from it ([`recover_points`]).
        let message = if self.inner.marks_in_wal {
            let mark = Mark {
                shadow: self.inner.info.name.clone(),
                seq: self.store.next_seq()?,
                taken_at,
                reason: reason.clone(),
                base_seq: base.seq,
                base_start: base.info.start_lsn,
            };
            Some(
                serde_json::to_string(&mark)
                    .map_err(|e| ShadowError::Unsupported(e.to_string()))?,
            )
        } else {
            None
        };
        let (lsn, timeline, through) = self.on(move |i| Box::pin(i.mark(name, message)))?;
        // Whether the mark is in the WAL (a role whose right to write it was revoked since
        // the start is marked the other way, and its point synced).
        let deferred = self.inner.marks_in_wal && self.inner.receiver.is_some();
        let mark_ms = started.elapsed().as_secs_f64() * 1000.0;
        let kind = self.inner.opts.kind;
        // Through the mark's commit, not only the mark: a restore to the point stops at the
        // first record after the mark, which must be whole in the shadow, or recovery ends
        // before it reaches its target.
        self.on(move |i| {
            Box::pin(async move {
                match kind {
                    ShadowType::Transactional => i.wait_flushed(through).await,
                    _ => i.fetch_until(through).await,
                }
            })
        })?;
        let consistent_at = Timestamp::now();
        let flushed_ms = started.elapsed().as_secs_f64() * 1000.0;
        let seg = self.inner.info.wal_segment_size;
        let first = base.info.start_lsn.segment(seg);
        let last = Lsn(through.0.saturating_sub(1)).segment(seg).max(first);
        self.timeline = timeline;
        self.wal_since_base = through.0.saturating_sub(base.info.end_lsn.0);
        let mut entries = base.entries.clone();
        let (wal_entries, stored, _) = self.store_wal(timeline, first, through, true)?;
        entries.extend(wal_entries);
        let new_bytes = stored + std::mem::take(&mut self.staged_bytes);
        let stored_ms = started.elapsed().as_secs_f64() * 1000.0;
        let draft = PointDraft {
            taken_at,
            consistent_at,
            reason,
            position: Position::Postgres {
                timeline,
                lsn: lsn.0,
            },
            entries,
            new_bytes,
        };
        let m = if deferred {
            self.store.commit_point_deferred(draft)?
        } else {
            self.store.commit_point(draft)?
        };
        // Removing what this point now holds is left to the next sync: not the point's cost.
        self.prune = Some(self.prune.map_or(last, |p| p.max(last)));
        // What the point cost, by part (`--log debug`; the bench prints it with RUST_LOG).
        tracing::debug!(
            mark_ms,
            wait_ms = flushed_ms - mark_ms,
            store_ms = stored_ms - flushed_ms,
            commit_ms = started.elapsed().as_secs_f64() * 1000.0 - stored_ms,
            new_bytes,
            "PostgreSQL point taken."
        );
        Ok(m)
    }

    /// Stores the WAL segments `first..` up to `through` (exclusive) on `timeline` and
    /// returns their entries for a point (`point`), or stores only what is final ahead of
    /// the next point and returns none (the sync loop: see [`Shadow::sync`]); also the bytes
    /// new to the store and the objects this call read and stored.
    ///
    /// A complete segment is stored once ([`PgShadow::wal_cache`]). Of the segment being
    /// written (`NAME.partial`), the chunks wholly before `through` are final (the stream
    /// never writes a byte twice) and stored once ([`PgShadow::partial_cache`]); a point
    /// also stores the chunk `through` falls in and records the rest as zeros, unread
    /// ([`base::zero_chunk`]). A missing segment fails a point; the sync loop stops there.
    fn store_wal(
        &mut self,
        timeline: u32,
        first: u64,
        through: Lsn,
        point: bool,
    ) -> Result<(Vec<Entry>, u64, Vec<ObjectRef>), ShadowError> {
        let seg = self.inner.info.wal_segment_size;
        let mut stored = Vec::new();
        let chunks_in = (seg as usize).div_ceil(base::CHUNK);
        let wal = pg_dir(self.store.dir()).join("wal");
        let last = Lsn(through.0.saturating_sub(1)).segment(seg).max(first);
        let mut entries = Vec::new();
        let mut new_bytes = 0;
        // A transactional point leaves what it stores unsynced: its stream has made those
        // bytes durable in `pg/wal` already, and the next sync settles them.
        let lazy = point && self.inner.receiver.is_some();
        let put = if lazy { Put::Unsynced } else { Put::Compressed };
        for segno in first..=last {
            let name = SegmentName { timeline, segno }.file_name(seg);
            let complete = wal.join(&name);
            let partial = wal.join(format!("{name}.partial"));
            let rel = format!("{WAL_PREFIX}{name}");
            let lsn0 = segno.saturating_mul(seg);
            if let Some(objects) = self.wal_cache.get(&name) {
                if point {
                    entries.push(wal_entry(rel, objects.clone()));
                }
                continue;
            }
            // The chunks of this segment already stored while it was being written.
            let known = match &self.partial_cache {
                Some((n, objects)) if *n == name => objects.clone(),
                _ => Vec::new(),
            };
            let Some((file, is_complete)) = base::open_segment(&complete, &partial)? else {
                if point {
                    return Err(PgShadowError::MissingWal {
                        dir: wal,
                        segment: name,
                        point: "(being taken)".into(),
                        target: format!("through LSN {through}"),
                    }
                    .into());
                }
                break;
            };
            if is_complete {
                let rest = self.store_chunks(
                    (&file, &complete),
                    (known.len(), chunks_in),
                    u64::MAX,
                    put,
                    (&mut stored, &mut new_bytes),
                    lsn0,
                )?;
                let mut objects = known;
                objects.extend(rest);
                self.wal_cache.insert(name, objects.clone());
                if point {
                    entries.push(wal_entry(rel, objects));
                }
            } else {
                // Bytes of this segment the shadow has flushed.
                let flushed = through.0.saturating_sub(segno.saturating_mul(seg)).min(seg);
                let whole = (flushed as usize / base::CHUNK).min(chunks_in);
                let more = self.store_chunks(
                    (&file, &partial),
                    (known.len(), whole),
                    u64::MAX,
                    put,
                    (&mut stored, &mut new_bytes),
                    lsn0,
                )?;
                let mut objects = known;
                objects.extend(more);
                // Only full chunks are final (a short read means the file is shorter).
                let final_chunks: Vec<ObjectRef> = objects
                    .iter()
                    .take_while(|o| o.len == base::CHUNK as u64)
                    .cloned()
                    .collect();
                self.partial_cache = Some((name, final_chunks.clone()));
                if lazy {
                    // The WAL through the point and nothing past it: the bytes of the
                    // chunk it ends in up to its last flushed byte. The entry is shorter
                    // than a segment; a restore pads it with the zeros the stream writes
                    // over (docs/shadow-postgres.md).
                    let mut objects = final_chunks;
                    let tail = self.store_chunks(
                        (&file, &partial),
                        (objects.len(), (flushed as usize).div_ceil(base::CHUNK)),
                        flushed,
                        Put::Unsynced,
                        (&mut stored, &mut new_bytes),
                        lsn0,
                    )?;
                    objects.extend(tail);
                    entries.push(wal_entry(rel, objects));
                } else if point {
                    let size = file.metadata().map_err(ShadowError::io(&partial))?.len();
                    let upto = (size as usize).div_ceil(base::CHUNK);
                    let tail = (flushed as usize).div_ceil(base::CHUNK).min(upto);
                    let more = self.store_chunks(
                        (&file, &partial),
                        (objects.len(), tail),
                        u64::MAX,
                        Put::Fast,
                        (&mut stored, &mut new_bytes),
                        lsn0,
                    )?;
                    objects.extend(more);
                    let mut at = objects.iter().map(|o| o.len).sum::<u64>();
                    let mut zeros: Option<ObjectRef> = None;
                    while at < size {
                        let len = (size - at).min(base::CHUNK as u64);
                        let z = match zeros {
                            Some(z) if z.len == len => z,
                            _ => base::zero_chunk(&self.store, len as usize)?,
                        };
                        zeros = Some(z);
                        objects.push(z);
                        at += len;
                    }
                    entries.push(wal_entry(rel, objects));
                }
            }
        }
        Ok((entries, new_bytes, stored))
    }

    /// [`base::store_chunks`] for [`PgShadow::store_wal`]: counts the objects in `stored`
    /// and their new bytes in `new_bytes`, and notes those stored unsynced for the next
    /// sync to settle ([`PgShadow::settle_wal`]). The file's byte 0 is WAL at `lsn0`; a chunk
    /// stored compressed is stored as a patch against the base's pages where that is smaller
    /// ([`super::pages`]).
    #[allow(clippy::too_many_arguments)]
    fn store_chunks(
        &mut self,
        (file, path): (&std::fs::File, &Path),
        range: (usize, usize),
        end: u64,
        put: Put,
        (stored, new_bytes): (&mut Vec<ObjectRef>, &mut u64),
        lsn0: u64,
    ) -> Result<Vec<ObjectRef>, ShadowError> {
        let version = self.inner.info.server_version_num;
        let (store, pages) = (&self.store, &mut self.pages);
        let lsn_of = |i: usize| lsn0 + (i * base::CHUNK) as u64;
        // Chunks patched with pages out of reach, by index: noted once their objects are
        // named (store_chunks hashes each chunk once).
        let mut missed = Vec::new();
        let mut encode = |i: usize, bytes: &[u8]| {
            let (object, out_of_reach) = pages.patch(store, bytes, lsn_of(i), version);
            if out_of_reach {
                missed.push(i);
            }
            object
        };
        let against = if pages_wanted(put) {
            base::Against::Encode(&mut encode)
        } else {
            base::Against::Nothing
        };
        let (objects, n) = base::store_chunks(store, file, path, range, end, put, against)?;
        for i in missed {
            if let Some(o) = objects.get(i - range.0) {
                self.pages.note_missed(*o, lsn_of(i));
            }
        }
        *new_bytes += n;
        stored.extend(objects.iter().copied());
        if put == Put::Unsynced {
            let first = range.0;
            self.unsettled.extend(
                objects
                    .iter()
                    .enumerate()
                    .map(|(k, o)| (*o, lsn0 + ((first + k) * base::CHUNK) as u64)),
            );
        }
        Ok(objects)
    }

    /// Patches again the WAL chunks stored with pages of the base out of reach
    /// ([`super::pages::WalPages::repatch`]): a window at a time while a window's worth
    /// waits, or all of them. What fails is only logged: each chunk is whole as it is.
    fn repatch_wal(&mut self, all: bool) {
        let version = self.inner.info.server_version_num;
        match self.pages.repatch(&self.store, version, all) {
            Ok(again) if again.chunks > 0 => tracing::debug!(
                chunks = again.chunks,
                saved = again.saved,
                "WAL chunks patched again with the base's pages read ahead"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(
                error = %e,
                "WAL chunks could not be patched again; they stay as they are"
            ),
        }
    }

    /// Makes the WAL objects the points since the last sync stored unsynced durable
    /// ([`PointStore::settle`]: compressed where that saves, synced). Kept for the next try
    /// if that fails (nothing leaves `pg/wal` meanwhile); one whose content the machine lost
    /// is left to [`repair_wal`].
    fn settle_wal(&mut self) -> Result<(), ShadowError> {
        if self.unsettled.is_empty() {
            return Ok(());
        }
        let refs = std::mem::take(&mut self.unsettled);
        let lsns: HashMap<ObjectId, u64> = refs.iter().map(|(r, l)| (r.id, *l)).collect();
        let only: Vec<ObjectRef> = refs.iter().map(|(r, _)| *r).collect();
        let version = self.inner.info.server_version_num;
        let (store, pages) = (&self.store, &mut self.pages);
        let settled = store.settle_with(&only, &mut |r, bytes| {
            let lsn = *lsns.get(&r.id)?;
            let (object, missed) = pages.patch(store, bytes, lsn, version);
            if missed {
                pages.note_missed(*r, lsn);
            }
            object
        });
        match settled {
            Ok(lost) => {
                for r in lost {
                    tracing::warn!(object = %r.id, "A point's WAL object is not what was written; the next start rebuilds it from pg/wal.");
                }
                Ok(())
            }
            Err(e) => {
                self.unsettled = refs;
                Err(e)
            }
        }
    }

    /// Removes from `pg/wal` the complete segments before the current base's start (no
    /// point on it needs them; a base point calls this with `before` 0), and those before
    /// segment number `before` (the last point's last) that this shadow stored whole as
    /// objects: a committed point holds each, and keeping them here as well held the WAL
    /// twice. The newest complete segment stays unless the one being written (`.partial`)
    /// comes after it: a `pg_receivewal` started again continues from the newest segment it
    /// finds. Nothing is removed while a restore holds a point: a restore to a time after
    /// the latest point reads the segments after that point from here; one that chose its
    /// point before this one was committed and leased it after finds the segments it lacks
    /// in this newer point (`restore::stage_wal`).
    fn prune_wal(&mut self, before: u64) {
        let seg = self.inner.info.wal_segment_size;
        // Segments before the base's start no point of it needs (a differential shadow's
        // first fetch streams from where its slot was made, before the base backup).
        let base_start = self
            .base
            .as_ref()
            .map_or(0, |b| b.info.start_lsn.segment(seg));
        let wal = pg_dir(self.store.dir()).join("wal");
        let Ok(rd) = std::fs::read_dir(&wal) else {
            return;
        };
        let mut complete: Vec<(u64, String, PathBuf)> = Vec::new();
        let mut partial = None;
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if let Some(s) = n
                .strip_suffix(".partial")
                .and_then(|p| SegmentName::parse(p, seg))
            {
                partial = partial.max(Some(s.segno));
            } else if let Some(s) = SegmentName::parse(&n, seg) {
                complete.push((s.segno, n, e.path()));
            }
        }
        // The segment a restarted pg_receivewal continues from: the one it is writing, or
        // else the newest complete one (which then stays).
        let newest = complete
            .iter()
            .map(|c| c.0)
            .max()
            .filter(|c| partial.is_none_or(|p| p < *c));
        let doomed: Vec<PathBuf> = complete
            .into_iter()
            .filter(|(segno, n, _)| {
                Some(*segno) != newest
                    && (*segno < base_start || (*segno < before && self.wal_cache.contains_key(n)))
            })
            .map(|c| c.2)
            .collect();
        if doomed.is_empty() {
            return;
        }
        // Segments before the base are not stored again: their cached objects go (and
        // are no longer kept for a point to come).
        let mut dropped = Vec::new();
        self.wal_cache.retain(|n, objects| {
            let keep = SegmentName::parse(n, seg).is_none_or(|s| s.segno >= base_start);
            if !keep {
                dropped.extend(objects.iter().map(|o| o.id));
            }
            keep
        });
        self.store.unstage(dropped);
        let removed = self.store.when_unleased(|| {
            for p in &doomed {
                if let Err(e) = std::fs::remove_file(p) {
                    tracing::warn!(path = %p.display(), error = %e, "Cannot remove a WAL segment the points hold.");
                }
            }
        });
        if let Err(e) = removed {
            tracing::warn!(error = %e, "Cannot check the shadow's leases; WAL segments the points hold stay in pg/wal.");
        }
    }
}

impl Shadow for PgShadow {
    fn store(&self) -> &PointStore {
        &self.store
    }

    /// The stream runs by itself; a sync reports its failure (a `pg_receivewal` that keeps
    /// exiting), so that the loop's event log shows it.
    ///
    /// A transactional shadow also stores the WAL its stream has flushed since the last
    /// look (complete segments, and the whole chunks of the one being written), so that a
    /// point reads, hashes and syncs only what came after: its last chunk. Those objects
    /// are staged ([`PointStore::stage`]): durable now, kept from `gc` until the next point
    /// references them.
    fn sync(&mut self) -> Result<SyncReport, ShadowError> {
        // Before anything leaves `pg/wal`: the points' manifests not synced yet and their
        // unsynced objects are rebuilt from it after a machine's stop.
        self.store.sync_deferred()?;
        self.settle_wal()?;
        if let Some(before) = self.prune.take() {
            self.prune_wal(before);
        }
        // WAL chunks stored with pages of the base out of reach (by the points, or by the
        // syncs before), patched again a window at a time ([`super::pages`]).
        self.repatch_wal(false);
        let Some(r) = &self.inner.receiver else {
            return Ok(SyncReport::default());
        };
        if !r.running.load(Ordering::SeqCst) {
            return Err(ShadowError::Source {
                source_name: self.inner.conn.target.clone(),
                reason: format!(
                    "pg_receivewal is not running (it is started again with a pause): {}",
                    self.inner.receiver_error().unwrap_or_default()
                ),
            });
        }
        let Some((start, end)) = self
            .base
            .as_ref()
            .map(|b| (b.info.start_lsn, b.info.end_lsn))
        else {
            return Ok(SyncReport::default());
        };
        let seg = self.inner.info.wal_segment_size;
        // Every segment before the one being written is stored already (each sync stores
        // in order and stops at a gap), so the sync starts there.
        let first = self
            .partial_cache
            .as_ref()
            .and_then(|(n, _)| SegmentName::parse(n, seg))
            .map_or(0, |s| s.segno)
            .max(start.segment(seg));
        let Some(flushed) = self.on(|i| Box::pin(i.flushed()))? else {
            return Ok(SyncReport::default());
        };
        self.wal_since_base = flushed.0.saturating_sub(end.0);
        let (_, n, stored) = self.store_wal(self.timeline, first, flushed, false)?;
        self.staged_bytes += n;
        if !stored.is_empty() {
            self.store.stage(stored.into_iter().map(|o| o.id))?;
        }
        Ok(SyncReport::default())
    }

    fn take_point(&mut self, reason: Reason) -> Result<Manifest, ShadowError> {
        if self.inner.opts.kind == ShadowType::Full {
            self.take_base_point(reason)
        } else if reason == Reason::Base && self.base.is_some() {
            // The run loop's new base ([`Shadow::image_due`]).
            self.rebase()
        } else {
            self.take_wal_point(reason)
        }
    }

    fn image_due(&self) -> bool {
        self.inner.opts.kind != ShadowType::Full
            && self.base.is_some()
            && self.wal_since_base > self.rebase_limit()
    }

    /// A transactional shadow's sync stores the WAL as it comes, a quarter of a second's
    /// worth at a time, so that what a point stores itself is mostly its last chunk; the
    /// others only check that their stream runs.
    fn poll_interval(&self) -> Duration {
        if self.inner.receiver.is_some() {
            Duration::from_millis(250)
        } else {
            Duration::from_secs(1)
        }
    }
}

impl Drop for PgShadow {
    fn drop(&mut self) {
        if let Err(e) = self.store.sync_deferred() {
            tracing::warn!(error = %e, "Syncing the last points' manifests failed; the next start rebuilds them from pg/wal.");
        }
        if let Err(e) = self.settle_wal() {
            tracing::warn!(error = %e, "Syncing the last points' WAL objects failed; the next start rebuilds them from pg/wal.");
        }
        let Some(rt) = self.rt.take() else { return };
        let inner = &mut self.inner;
        let result = block(&rt, inner.release());
        if let Err(e) = result {
            tracing::warn!(shadow = %inner.info.name, error = %e, "Releasing the primary from the shadow failed.");
        }
        rt.shutdown_background();
    }
}

impl Inner {
    async fn connect(opts: PgOptions, dir: PathBuf) -> Result<Inner, PgShadowError> {
        let conn = bellwether_pg::connect(&opts.url).await?;
        let target = conn.target.clone();
        let row = conn
            .client
            .query_one(
                "SELECT (SELECT system_identifier::text FROM pg_control_system()), \
                 current_setting('server_version_num')::int, \
                 (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'), \
                 current_setting('wal_level'), current_setting('max_wal_senders')::int, \
                 current_user::text, \
                 (SELECT rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user), \
                 (SELECT rolsuper FROM pg_roles WHERE rolname = current_user), \
                 (SELECT count(*) FROM pg_tablespace WHERE spcname NOT IN ('pg_default', 'pg_global')), \
                 (SELECT coalesce(bool_or(has_function_privilege(oid, 'EXECUTE')), false) FROM pg_proc WHERE proname = 'pg_logical_emit_message')",
                &[],
            )
            .await
            .map_err(|e| query_err(&target, "reading the primary's identity", e))?;
        let system_identifier: String = row.get(0);
        let version: i32 = row.get(1);
        let seg_size: i64 = row.get(2);
        let wal_level: String = row.get(3);
        let senders: i32 = row.get(4);
        let role: String = row.get(5);
        let may_replicate: bool = row.get::<_, Option<bool>>(6).unwrap_or(false);
        let superuser: bool = row.get::<_, Option<bool>>(7).unwrap_or(false);
        let tablespaces: i64 = row.get(8);
        let marks_in_wal: bool = row.get(9);
        if !may_replicate {
            return Err(PgShadowError::Permission {
                target,
                role: role.clone(),
                what: "stream WAL or take base backups".into(),
                message: "it has neither REPLICATION nor SUPERUSER".into(),
                fix: format!("ALTER ROLE {role} REPLICATION, and allow it a `replication` line in pg_hba.conf"),
            });
        }
        if wal_level == "minimal" || senders < 2 {
            return Err(PgShadowError::Unsuitable {
                target,
                message: format!("wal_level is {wal_level} and max_wal_senders {senders}; a shadow needs wal_level = replica (or logical) and max_wal_senders >= 2 (its stream and a base backup's), which take a restart"),
            });
        }
        if tablespaces > 0 {
            return Err(PgShadowError::Unsuitable {
                target,
                message: format!("it has {tablespaces} tablespace(s) outside the data directory; PostgreSQL shadows copy the data directory only and do not handle tablespaces yet"),
            });
        }
        let bindir = match &opts.bindir {
            Some(b) => b.clone(),
            None => bellwether_pg::find_bindir(version as u32, None)?,
        };
        let name = opts.name.clone().unwrap_or_else(|| {
            format!(
                "bw_shadow_{:x}",
                super::now_us() ^ ((std::process::id() as i64) << 40)
            )
        });
        Ok(Inner {
            info: PgShadowInfo {
                system_identifier,
                server_version_num: version as u32,
                wal_segment_size: seg_size as u64,
                name,
                source: target,
                kind: opts.kind,
                sync_original: None,
            },
            opts,
            dir,
            bindir,
            conn,
            role,
            receiver: None,
            may_create_restore_points: superuser,
            marks_in_wal,
        })
    }

    /// Reads (or writes, for a new shadow) `pg/shadow-pg.json`: an existing one of another
    /// database is refused.
    fn load_info(&mut self) -> Result<(), PgShadowError> {
        let pg = pg_dir(&self.dir);
        std::fs::create_dir_all(pg.join("wal"))
            .map_err(|e| PgShadowError::io("creating", &pg, e))?;
        match read_info(&self.dir)? {
            Some(existing) => {
                if existing.system_identifier != self.info.system_identifier {
                    return Err(PgShadowError::OtherDatabase {
                        dir: self.dir.clone(),
                        theirs: format!(
                            "{} (system identifier {})",
                            existing.source, existing.system_identifier
                        ),
                        ours: format!(
                            "{} (system identifier {})",
                            self.info.source, self.info.system_identifier
                        ),
                    });
                }
                self.info = existing;
            }
            None => write_json(&pg.join("shadow-pg.json"), &self.info)?,
        }
        if self.info.name.is_empty()
            || self.info.name.len() > 63
            || !self
                .info
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(PgShadowError::BadShadow {
                path: pg.join("shadow-pg.json"),
                message: format!(
                    "shadow name {:?} must be 1 to 63 of [a-z0-9_]",
                    self.info.name
                ),
            });
        }
        Ok(())
    }

    /// Slot, stream and synchronous registration, as the type asks.
    async fn set_up(&mut self) -> Result<(), PgShadowError> {
        if self.opts.kind == ShadowType::Full {
            return Ok(());
        }
        self.ensure_slot().await?;
        if self.opts.kind == ShadowType::Transactional {
            let wal = pg_dir(&self.dir).join("wal");
            self.receiver = Some(Receiver::spawn(
                &self.bindir,
                &self.opts.url,
                &wal,
                &self.info.name,
            ));
            if let Err(e) = self.wait_streaming().await {
                let _ = self.release().await;
                return Err(e);
            }
            if let Err(e) = self.register_sync().await {
                let _ = self.release().await;
                return Err(e);
            }
        }
        Ok(())
    }

    /// Undoes what [`Inner::set_up`] did on the primary, the synchronous name first.
    async fn release(&mut self) -> Result<(), PgShadowError> {
        let unreg = self.unregister_sync().await;
        if let Some(r) = self.receiver.take() {
            r.stop().await;
        }
        let dropped = if self.opts.kind != ShadowType::Full {
            self.conn
                .client
                .execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
                    &[&self.info.name],
                )
                .await
                .map(|_| ())
                .map_err(|e| query_err(&self.conn.target, "dropping the shadow's replication slot", e))
        } else {
            Ok(())
        };
        unreg?;
        dropped
    }

    fn receiver_error(&self) -> Option<String> {
        self.receiver
            .as_ref()
            .and_then(|r| r.last_error.lock().ok().and_then(|g| g.clone()))
    }

    async fn ensure_slot(&self) -> Result<(), PgShadowError> {
        self.conn
            .client
            .execute(
                "SELECT pg_create_physical_replication_slot($1, true) \
                 WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
                &[&self.info.name],
            )
            .await
            .map_err(|e| {
                query_err(
                    &self.conn.target,
                    "creating the shadow's replication slot",
                    e,
                )
            })?;
        Ok(())
    }

    /// Waits until the shadow's slot is in use (`pg_replication_slots` is readable by any
    /// role, unlike `pg_stat_replication`'s details).
    async fn wait_streaming(&self) -> Result<(), PgShadowError> {
        let deadline =
            tokio::time::Instant::now() + self.opts.step_timeout.min(Duration::from_secs(60));
        loop {
            let row = self
                .conn
                .client
                .query_opt(
                    "SELECT active FROM pg_replication_slots WHERE slot_name = $1 AND active",
                    &[&self.info.name],
                )
                .await
                .map_err(|e| query_err(&self.conn.target, "reading pg_replication_slots", e))?;
            if row.is_some() {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(PgShadowError::Program {
                    program: "pg_receivewal".into(),
                    what: "streaming the primary's WAL".into(),
                    output: self
                        .receiver_error()
                        .unwrap_or_else(|| "the primary shows no stream for the shadow".into()),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Makes the shadow a synchronous standby (see [`SyncSetup`]) and waits until the primary
    /// reports it as `sync`.
    async fn register_sync(&mut self) -> Result<(), PgShadowError> {
        let target = self.conn.target.clone();
        let current: String = self
            .conn
            .client
            .query_one("SELECT current_setting('synchronous_standby_names')", &[])
            .await
            .map_err(|e| query_err(&target, "reading synchronous_standby_names", e))?
            .get(0);
        let commit: String = self
            .conn
            .client
            .query_one("SELECT current_setting('synchronous_commit')", &[])
            .await
            .map_err(|e| query_err(&target, "reading synchronous_commit", e))?
            .get(0);
        if self.opts.sync == SyncSetup::Off {
            return Ok(());
        }
        if commit == "remote_apply" {
            return Err(PgShadowError::Unsuitable {
                target,
                message: "synchronous_commit is remote_apply: every commit would wait for an apply that pg_receivewal never reports; use on (or remote_write) for a synchronous shadow".into(),
            });
        }
        if matches!(commit.as_str(), "off" | "local") {
            tracing::warn!(target = %target, synchronous_commit = %commit, "synchronous_commit does not wait for the shadow: commits are acknowledged before the shadow has them.");
        }
        match self.opts.sync {
            SyncSetup::Off => return Ok(()),
            SyncSetup::Expect => {}
            SyncSetup::Configure => {
                if !names_include(&current, &self.info.name) {
                    if !current.trim().is_empty() {
                        return Err(PgShadowError::SyncNamesInUse {
                            target,
                            current,
                            name: self.info.name.clone(),
                        });
                    }
                    // Saved before the change, so a crash between the two still restores it.
                    self.info.sync_original = Some(current.clone());
                    write_json(&pg_dir(&self.dir).join("shadow-pg.json"), &self.info)?;
                    let sql = format!(
                        "ALTER SYSTEM SET synchronous_standby_names = '{}'",
                        self.info.name
                    );
                    let fix = format!(
                        "run the shadow as a superuser; or GRANT ALTER SYSTEM ON PARAMETER synchronous_standby_names TO {role} and GRANT EXECUTE ON FUNCTION pg_reload_conf() TO {role}; or set synchronous_standby_names = '{name}' yourself, reload, and use sync = expect",
                        role = self.role,
                        name = self.info.name
                    );
                    if let Err(e) = self.conn.client.batch_execute(&sql).await {
                        self.info.sync_original = None;
                        write_json(&pg_dir(&self.dir).join("shadow-pg.json"), &self.info)?;
                        return Err(permission_or_query(
                            &target,
                            &self.role,
                            "set synchronous_standby_names (ALTER SYSTEM)",
                            &fix,
                            e,
                        ));
                    }
                    if let Err(e) = self
                        .conn
                        .client
                        .batch_execute("SELECT pg_reload_conf()")
                        .await
                    {
                        let err = permission_or_query(
                            &target,
                            &self.role,
                            "reload the configuration (pg_reload_conf)",
                            &fix,
                            e,
                        );
                        let _ = self.unregister_sync().await;
                        return Err(err);
                    }
                }
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let row = self
                .conn
                .client
                .query_opt(
                    "SELECT sync_state FROM pg_stat_replication WHERE application_name = $1",
                    &[&self.info.name],
                )
                .await
                .map_err(|e| query_err(&target, "reading pg_stat_replication", e))?;
            match row.map(|r| r.get::<_, Option<String>>(0)) {
                Some(Some(state)) if state == "sync" => return Ok(()),
                // Without pg_read_all_stats a role sees the row but not its details.
                Some(None) => {
                    let _ = self.unregister_sync().await;
                    return Err(PgShadowError::Permission {
                        target,
                        role: self.role.clone(),
                        what: "see whether the shadow is a synchronous standby".into(),
                        message: "pg_stat_replication shows it no details".into(),
                        fix: format!("GRANT pg_read_all_stats TO {}", self.role),
                    });
                }
                _ => {}
            }
            if tokio::time::Instant::now() > deadline {
                let _ = self.unregister_sync().await;
                return Err(PgShadowError::Unsuitable {
                    target,
                    message: format!(
                        "the primary does not report the shadow {} as a synchronous standby within 30 s (synchronous_standby_names is {current:?}); it must name {0}",
                        self.info.name
                    ),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Puts `synchronous_standby_names` back to what it was, when Bellwether set it.
    async fn unregister_sync(&mut self) -> Result<(), PgShadowError> {
        let Some(original) = self.info.sync_original.clone() else {
            return Ok(());
        };
        let sql = if original.is_empty() {
            "ALTER SYSTEM RESET synchronous_standby_names".to_string()
        } else {
            format!(
                "ALTER SYSTEM SET synchronous_standby_names = '{}'",
                original.replace('\'', "''")
            )
        };
        let target = self.conn.target.clone();
        self.conn
            .client
            .batch_execute(&sql)
            .await
            .map_err(|e| query_err(&target, "resetting synchronous_standby_names", e))?;
        self.conn
            .client
            .batch_execute("SELECT pg_reload_conf()")
            .await
            .map_err(|e| query_err(&target, "reloading the configuration", e))?;
        self.info.sync_original = None;
        write_json(&pg_dir(&self.dir).join("shadow-pg.json"), &self.info)
    }

    /// Marks a point on the primary: every record before the returned LSN is in the point,
    /// none after. With `message` (the point's [`Mark`], JSON), a transactional logical
    /// message (`pg_logical_emit_message`, any role may by default): the point's mark is
    /// then in the WAL itself, and the shadow can rebuild the point from it
    /// ([`recover_points`]). Without, a restore point `name` (a superuser), or else the
    /// current insert position.
    ///
    /// The statement also writes a commit record after the mark (the message's transaction,
    /// or a transaction id taken for it), which flushes the WAL through it: a restore point
    /// alone is not flushed, and on a primary with no other writes the point waited for the
    /// next flush (seconds). That commit is `synchronous_commit = local` (for this
    /// transaction only): it does not wait for a synchronous shadow, whose flush
    /// [`Inner::wait_flushed`] awaits with a deadline.
    ///
    /// Returns the mark's LSN, the timeline, and the primary's flush position after the
    /// statement (through the commit that follows the mark).
    async fn mark(
        &mut self,
        name: String,
        message: Option<String>,
    ) -> Result<(Lsn, u32, Lsn), PgShadowError> {
        let target = self.conn.target.clone();
        // A transactional message: its transaction commits (and flushes) after it.
        const MESSAGE: &str =
            "SELECT pg_logical_emit_message(true, 'bellwether.point'::text, $1::text)::text, \
             (SELECT timeline_id FROM pg_control_checkpoint()), \
             set_config('synchronous_commit', 'local', true)";
        let sent = match message.filter(|_| self.marks_in_wal) {
            Some(m) => self.conn.client.query_one(MESSAGE, &[&m]).await,
            None => {
                self.conn
                    .client
                    .query_one(self.restore_point_sql(), &[&name])
                    .await
            }
        };
        let row = match sent {
            Err(e)
                if self.marks_in_wal
                    && e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) =>
            {
                tracing::warn!(shadow = %self.info.name, error = %db_text(&e), "The role may no longer write a point's mark into the WAL: points are marked the other way from now on, and their manifests synced.");
                self.marks_in_wal = false;
                self.conn.client.query_one(self.restore_point_sql(), &[&name]).await
            }
            r => r,
        }
        .map_err(|e| query_err(&target, "marking the point on the primary", e))?;
        let lsn = lsn_of(&target, "marking the point", row.get(0))?;
        let tl: i32 = row.get(1);
        let flushed = self
            .conn
            .client
            .query_one("SELECT pg_current_wal_flush_lsn()::text", &[])
            .await
            .map_err(|e| query_err(&target, "reading the primary's flush position", e))?
            .get(0);
        let through = lsn_of(&target, "reading the flush position", flushed)?;
        Ok((lsn, tl as u32, through.max(lsn)))
    }

    /// The mark of a point without a message: a restore point named `$1` where the role may
    /// create one, or else the insert position.
    fn restore_point_sql(&self) -> &'static str {
        if self.may_create_restore_points {
            "SELECT pg_create_restore_point($1)::text, (SELECT timeline_id FROM pg_control_checkpoint()), \
             set_config('synchronous_commit', 'local', true), txid_current()"
        } else {
            "SELECT pg_current_wal_insert_lsn()::text, (SELECT timeline_id FROM pg_control_checkpoint()), \
             set_config('synchronous_commit', 'local', true), txid_current(), $1::text"
        }
    }

    /// What the primary last heard the shadow's stream flushed: a physical slot's
    /// `restart_lsn` is the flush position its stream last confirmed.
    async fn flushed(&self) -> Result<Option<Lsn>, PgShadowError> {
        let row = self
            .conn
            .client
            .query_opt(
                "SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.info.name],
            )
            .await
            .map_err(|e| query_err(&self.conn.target, "reading pg_replication_slots", e))?;
        Ok(row
            .and_then(|r| r.get::<_, Option<String>>(0))
            .and_then(|t| Lsn::parse(&t)))
    }

    /// Waits until the primary reports the shadow flushed `lsn` (transactional).
    async fn wait_flushed(&self, lsn: Lsn) -> Result<(), PgShadowError> {
        let deadline = tokio::time::Instant::now() + self.opts.step_timeout;
        // The stream usually confirms within a few milliseconds of the mark: look again soon
        // at first, then every POLL (a point's cost is mostly this wait otherwise).
        let mut pause = Duration::from_millis(1);
        loop {
            let flushed = self.flushed().await?;
            if flushed.is_some_and(|f| f >= lsn) {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(PgShadowError::Program {
                    program: "pg_receivewal".into(),
                    what: format!("flushing the WAL up to {lsn}"),
                    output: format!(
                        "the shadow flushed {} after {} s; {}",
                        flushed
                            .map(|f| f.to_string())
                            .unwrap_or_else(|| "nothing".into()),
                        self.opts.step_timeout.as_secs(),
                        self.receiver_error().unwrap_or_default()
                    ),
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(POLL);
        }
    }

    /// Fetches the WAL through the slot up to `lsn` (differential): `pg_receivewal --endpos`.
    /// It stops once it has received a byte past its end position, so that is `lsn - 1`:
    /// with `lsn` itself it waited for whatever the primary wrote next (seconds on an idle
    /// primary: the background writer's next standby snapshot).
    async fn fetch_until(&self, lsn: Lsn) -> Result<(), PgShadowError> {
        let endpos = Lsn(lsn.0.saturating_sub(1));
        let wal = pg_dir(&self.dir).join("wal");
        let argv = vec![
            self.bindir.join("pg_receivewal").display().to_string(),
            "-d".into(),
            self.opts.url.clone(),
            "-D".into(),
            wal.display().to_string(),
            "--slot".into(),
            self.info.name.clone(),
            "--endpos".into(),
            endpos.to_string(),
            "--no-loop".into(),
            "--synchronous".into(),
        ];
        run(
            &argv,
            &[("PGAPPNAME", self.info.name.as_str())],
            &format!("fetching the WAL up to {lsn}"),
            self.opts.step_timeout,
        )
        .await
        .map(|_| ())
    }
}

/// An LSN the primary returned as text for `what`.
fn lsn_of(target: &str, what: &str, text: String) -> Result<Lsn, PgShadowError> {
    Lsn::parse(&text).ok_or_else(|| PgShadowError::Io {
        what: format!("{target}: {what}"),
        message: format!("not an LSN: {text:?}"),
    })
}

/// Whether `synchronous_standby_names` names `name` (as a plain or quoted member).
fn names_include(value: &str, name: &str) -> bool {
    value
        .split(|c: char| c == ',' || c == '(' || c == ')' || c.is_whitespace())
        .map(|t| t.trim_matches('"'))
        .any(|t| t == name || t == "*")
}

fn query_err(target: &str, what: &str, e: tokio_postgres::Error) -> PgShadowError {
    PgShadowError::Pg(bellwether_pg::PgError::Query {
        what: format!("{target}: {what}"),
        message: db_text(&e),
    })
}

fn db_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => e.to_string(),
    }
}

fn permission_or_query(
    target: &str,
    role: &str,
    what: &str,
    fix: &str,
    e: tokio_postgres::Error,
) -> PgShadowError {
    if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) {
        PgShadowError::Permission {
            target: target.to_string(),
            role: role.to_string(),
            what: what.to_string(),
            message: db_text(&e),
            fix: fix.to_string(),
        }
    } else {
        query_err(target, what, e)
    }
}

/// `pg_receivewal --synchronous` kept running: started again (backing off up to
/// [`RESTART_CAP`]) whenever it exits, until stopped.
struct Receiver {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    last_error: Arc<Mutex<Option<String>>>,
    /// Whether a `pg_receivewal` process is running now.
    running: Arc<AtomicBool>,
}

impl Receiver {
    fn spawn(bindir: &Path, url: &str, wal: &Path, name: &str) -> Receiver {
        let (stop, mut stopped) = watch::channel(false);
        let last_error = Arc::new(Mutex::new(None));
        let running = Arc::new(AtomicBool::new(false));
        let up = running.clone();
        let argv = vec![
            bindir.join("pg_receivewal").display().to_string(),
            "-d".into(),
            url.to_string(),
            "-D".into(),
            wal.display().to_string(),
            "--slot".into(),
            name.to_string(),
            "--synchronous".into(),
            "--no-loop".into(),
        ];
        let name = name.to_string();
        let errors = last_error.clone();
        let task = tokio::spawn(async move {
            let mut pause = Duration::from_millis(100);
            loop {
                let mut cmd = tokio::process::Command::new(&argv[0]);
                cmd.args(&argv[1..])
                    .env("PGAPPNAME", &name)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .kill_on_drop(true);
                let mut child = match cmd.spawn() {
                    Ok(c) => c,
                    Err(e) => {
                        if let Ok(mut g) = errors.lock() {
                            *g = Some(format!("cannot run {}: {e}", argv[0]));
                        }
                        return;
                    }
                };
                up.store(true, Ordering::SeqCst);
                let stderr = child.stderr.take();
                let errs = errors.clone();
                let reader = tokio::spawn(async move {
                    let Some(stderr) = stderr else { return };
                    let mut lines = tokio::io::BufReader::new(stderr).lines();
                    let mut text = String::new();
                    while let Ok(Some(line)) = lines.next_line().await {
                        text.push_str(&line);
                        text.push('\n');
                        text = tail(&text, 2000);
                        text.push('\n');
                        if let Ok(mut g) = errs.lock() {
                            *g = Some(text.trim().to_string());
                        }
                    }
                });
                tokio::select! {
                    status = child.wait() => {
                        up.store(false, Ordering::SeqCst);
                        let _ = reader.await;
                        let msg = errors.lock().ok().and_then(|g| g.clone()).unwrap_or_default();
                        tracing::warn!(slot = %name, status = ?status.ok(), error = %msg, "The shadow's pg_receivewal exited; starting it again.");
                    }
                    _ = stopped.changed() => {
                        if let Some(pid) = child.id() {
                            // SIGINT: pg_receivewal flushes and closes its segment, then exits.
                            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGINT);
                        }
                        if tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_err() {
                            let _ = child.kill().await;
                        }
                        reader.abort();
                        return;
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stopped.changed() => return,
                }
                pause = (pause * 2).min(RESTART_CAP);
            }
        });
        Receiver {
            stop,
            task,
            last_error,
            running,
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_has_no_password() {
        assert_eq!(
            public_source("postgres://app:secret@db1:6432/orders?sslmode=disable"),
            "postgres://app@db1:6432/orders"
        );
        assert_eq!(
            public_source("host=/run/postgresql user=postgres password=x"),
            "host=/run/postgresql port=5432 user=postgres dbname=postgres"
        );
        assert!(!public_source("postgres://u:pw@[::1]:5432/d").contains("pw"));
    }

    #[test]
    fn standby_names_are_matched_as_members() {
        assert!(names_include("bw_shadow_1", "bw_shadow_1"));
        assert!(names_include("FIRST 1 (a, \"bw_shadow_1\")", "bw_shadow_1"));
        assert!(names_include("ANY 2 (x,bw_shadow_1,y)", "bw_shadow_1"));
        assert!(names_include("*", "bw_shadow_1"));
        assert!(!names_include("bw_shadow_10", "bw_shadow_1"));
        assert!(!names_include("", "bw_shadow_1"));
    }
}
