//! [`PointStore`]: one shadow directory on disk (layout in the parent module's docs).

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bellwether_model::Dur;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::log::{self, LogRecord, LogWriter};
use super::objects::{self, ObjectId, ObjectRef};
use super::retention::{thin_plan, Retention};
use super::{
    Control, FromLog, Manifest, PointDraft, PointId, Reason, ResourceKind, RunEvent, Shadow,
    ShadowError, ShadowMeta, Target, Timestamp, FORMAT, OLDEST_FORMAT,
};

/// An open shadow directory. Reading (points, verify, restore) needs no lock; writing points
/// and retention need the writer lock ([`PointStore::lock_writer`]), which one process holds
/// while it follows the source.
#[derive(Debug)]
pub struct PointStore {
    dir: PathBuf,
    meta: ShadowMeta,
    writer: Option<File>,
    /// Threads sealing copy-on-write points (see [`super::clone`]); joined on drop.
    sealing: Mutex<Vec<JoinHandle<()>>>,
    /// Points being taken, which the sealing threads wait out ([`PointStore::pause_seals`]).
    pub(super) gate: Arc<super::clone::SealGate>,
    /// The objects this store wrote since its last point, which that point syncs.
    unsynced: Mutex<Unsynced>,
    /// `points/HEAD`, open once this store has written it ([`PointStore::write_head`]), and
    /// what it wrote last: the writer (the only one to write it) reads it from here.
    head_file: Mutex<Option<(File, Head)>>,
    /// Objects stored ahead of the point that will reference them ([`PointStore::stage`]):
    /// `gc` keeps them until a committed point does.
    staged: Mutex<HashSet<ObjectId>>,
    /// Where copies of objects were just written (a restore's files, before anything else
    /// touches them): a patch against pages of them reads those bytes there instead of
    /// decoding each whole ([`PointStore::copies_at`]).
    copies: Mutex<HashMap<ObjectId, (PathBuf, u64, u64)>>,
    /// Base chunks decoded for reads of chunks stored as patches against pages of them
    /// ([`PointStore::range_of`]).
    decoded: Mutex<super::cache::ChunkCache>,
    /// Manifests committed without a sync of their own ([`PointStore::commit_point_deferred`]),
    /// which [`PointStore::sync_deferred`] (or the next point committed durably) syncs.
    deferred: Mutex<Vec<PathBuf>>,
}

/// What [`PointStore::range_of`] keeps decoded: a `verify --deep` or a restore that reads WAL
/// chunks patched against a base's pages decodes each base chunk once, not once a WAL chunk.
const DECODED_BYTES: usize = 256 << 20;

/// Another way to store an object than compressed (a patch), given its bytes; `None` where
/// there is none ([`PointStore::settle_with`]).
pub(crate) type Encoder<'a> = &'a mut dyn FnMut(&ObjectRef, &[u8]) -> Option<Vec<u8>>;

/// The copies [`PointStore::copies_at`] noted; forgotten on drop.
pub(crate) struct Copies<'a> {
    store: &'a PointStore,
    ids: Vec<ObjectId>,
}

impl Drop for Copies<'_> {
    fn drop(&mut self) {
        let mut c = self
            .store
            .copies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for id in &self.ids {
            c.remove(id);
        }
    }
}

impl Copies<'_> {
    /// Notes that `objects`, one after the other, are the content of the file at `path`.
    pub(crate) fn add(&mut self, path: &Path, objects: &[ObjectRef]) {
        let mut c = self
            .store
            .copies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut at = 0;
        for o in objects {
            if c.insert(o.id, (path.to_path_buf(), at, o.len)).is_none() {
                self.ids.push(o.id);
            }
            at += o.len;
        }
    }
}

/// `points/HEAD`'s size when written in place: its JSON padded with spaces.
const HEAD_LEN: usize = 256;

/// The objects written since the last point ([`PointStore::commit_point`] makes them
/// durable before the manifest that references them).
#[derive(Debug)]
struct Unsynced {
    /// Each new object's path, while there are at most [`SYNC_EACH_MAX`].
    objects: Vec<PathBuf>,
    /// More than that, or not known (a store just opened: a process before it may have
    /// left objects it never synced, which a point here could reuse): one `syncfs`.
    whole_fs: bool,
}

impl Default for Unsynced {
    fn default() -> Self {
        Unsynced {
            objects: Vec::new(),
            whole_fs: true,
        }
    }
}

/// Up to this many new objects a point syncs one by one (with their directories); past it,
/// the file system at once (`syncfs`, one call for a base's thousands of chunks). One by one
/// does not flush what else is dirty on the file system: a database's own pages, when the
/// shadow shares its disk.
pub(crate) const SYNC_EACH_MAX: usize = 256;

impl Drop for PointStore {
    fn drop(&mut self) {
        self.wait_sealed();
        // A writer stopping leaves `HEAD` on the disk as it stands (see `write_head`).
        let _ = self.sync_head();
    }
}

/// `points/HEAD`: the latest point, so that losing it (or the last few) is detected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Head {
    seq: u64,
    checksum: String,
}

/// `points/NNNNNNNNNN.thinned`: what retention keeps of a removed point, so the chain of
/// checksums stays verifiable across it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Tombstone {
    seq: u64,
    taken_at: Timestamp,
    prev_checksum: Option<String>,
    checksum: String,
    thinned_at: Timestamp,
}

/// `leases/PID-N.json`: a restore in progress holds this point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LeaseFile {
    seq: u64,
    pid: u32,
    created_at: Timestamp,
}

/// A point held by a restore in progress: retention neither removes it, nor its commit log,
/// nor its objects, until the lease is dropped (or its process is gone).
#[derive(Debug)]
pub struct Lease {
    path: PathBuf,
    pub point: PointId,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What [`PointStore::verify`] checked.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub points: u64,
    pub thinned: u64,
    pub objects: u64,
    pub bytes: u64,
    pub log_records: u64,
}

/// What retention removed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ThinReport {
    pub removed: Vec<PointId>,
    /// Points the policy would remove but a restore holds.
    pub leased: Vec<PointId>,
    /// Points the policy would remove but a kept point taken from the commit log is rebuilt
    /// from (its image and the points between).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rebuilt_from: Vec<PointId>,
    pub gc: GcReport,
}

/// What garbage collection removed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GcReport {
    pub objects_removed: u64,
    pub bytes_removed: u64,
    pub objects_kept: u64,
}

pub(super) fn seq_name(seq: u64) -> String {
    format!("{seq:010}")
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ShadowError> {
    let bytes = std::fs::read(path).map_err(ShadowError::io(path))?;
    serde_json::from_slice(&bytes).map_err(|e| ShadowError::BadFile {
        path: path.to_owned(),
        reason: format!("not valid: {e}"),
    })
}

pub(super) fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<(), ShadowError> {
    let mut bytes = serde_json::to_vec_pretty(v).map_err(|e| ShadowError::BadFile {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    bytes.push(b'\n');
    bellwether_fs::AtomicWrite::new()
        .create_parent()
        .write(path, &bytes)
        .map_err(ShadowError::io(path))
}

/// Sets the checksum of a manifest whose `checksum` is empty and returns the file's bytes:
/// its compact JSON, serialized once. `checksum` is the last field, so the JSON hashed ends
/// with `"checksum":""}` and the file's is the same with the checksum put in.
pub(crate) fn manifest_bytes(m: &mut Manifest) -> Vec<u8> {
    debug_assert!(m.checksum.is_empty());
    let mut bytes = serde_json::to_vec(&*m).unwrap_or_default();
    let sum: [u8; 32] = Sha256::digest(&bytes).into();
    m.checksum = ObjectId(sum).hex();
    const EMPTY: &[u8] = br#""checksum":""}"#;
    if bytes.ends_with(EMPTY) {
        bytes.truncate(bytes.len() - 2);
        bytes.extend_from_slice(m.checksum.as_bytes());
        bytes.extend_from_slice(b"\"}\n");
    } else {
        bytes = serde_json::to_vec(&*m).unwrap_or_default();
        bytes.push(b'\n');
    }
    bytes
}

/// A manifest this long or longer is stored zstd-compressed (a PostgreSQL point's lists a
/// thousand base files and more: about 190 kB of JSON, 31 kB compressed); a shorter one stays
/// JSON as it is.
const MANIFEST_COMPRESS_MIN: usize = 64 << 10;
/// The longest manifest read (decompressed).
const MANIFEST_MAX: usize = 1 << 30;

/// A manifest file's bytes from its JSON: compressed (zstd level 1) when it is at least
/// [`MANIFEST_COMPRESS_MIN`] long and that saves an eighth.
fn manifest_file(json: Vec<u8>) -> Vec<u8> {
    if json.len() < MANIFEST_COMPRESS_MIN {
        return json;
    }
    match zstd::bulk::compress(&json, 1) {
        Ok(z) if z.len() + json.len() / 8 < json.len() => z,
        _ => json,
    }
}

/// Reads a manifest file: JSON, or JSON compressed with zstd ([`manifest_file`]).
fn read_manifest(path: &Path) -> Result<Manifest, ShadowError> {
    let bytes = std::fs::read(path).map_err(ShadowError::io(path))?;
    let bad = |reason: String| ShadowError::BadFile {
        path: path.to_owned(),
        reason,
    };
    let json = if bytes.starts_with(&objects::ZSTD_MAGIC) {
        zstd::bulk::decompress(&bytes, MANIFEST_MAX)
            .map_err(|e| bad(format!("its zstd frame does not decompress: {e}")))?
    } else {
        bytes
    };
    serde_json::from_slice(&json).map_err(|e| bad(format!("not valid: {e}")))
}

/// The checksum of a manifest: SHA-256 of its compact JSON with `checksum` empty.
pub(crate) fn manifest_checksum(m: &Manifest) -> String {
    let mut copy = m.clone();
    copy.checksum = String::new();
    let bytes = serde_json::to_vec(&copy).unwrap_or_default();
    let sum: [u8; 32] = Sha256::digest(&bytes).into();
    ObjectId(sum).hex()
}

/// Syncs the file or directory at `p`; one that is gone is passed over.
fn sync_if_there(p: &Path) -> Result<(), ShadowError> {
    match File::open(p).and_then(|f| f.sync_all()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ShadowError::io(p)(e)),
    }
}

fn pid_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new("/proc").join(pid.to_string()).exists()
    } else {
        true
    }
}

impl PointStore {
    /// Opens the shadow at `dir`, creating it with `meta` when it has no `shadow.json`.
    /// An existing shadow of another resource (kind or source) or of another type is refused
    /// ([`ShadowError::OtherResource`]) and left as it is.
    pub fn create(dir: &Path, meta: ShadowMeta) -> Result<PointStore, ShadowError> {
        let path = dir.join("shadow.json");
        if path.exists() {
            let store = PointStore::open(dir)?;
            let m = &store.meta;
            if m.kind != meta.kind || m.source != meta.source || m.shadow_type != meta.shadow_type {
                return Err(ShadowError::OtherResource {
                    dir: dir.to_owned(),
                    shadows: format!("{} {} ({})", m.kind, m.source, m.shadow_type),
                    asked: format!("{} {} ({})", meta.kind, meta.source, meta.shadow_type),
                });
            }
            return Ok(store);
        }
        for sub in ["objects", "points", "log", "leases", "requests", "tmp"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(ShadowError::io(dir.join(sub)))?;
        }
        write_json(&path, &meta)?;
        Ok(PointStore {
            dir: dir.to_owned(),
            meta,
            writer: None,
            sealing: Mutex::new(Vec::new()),
            gate: Arc::default(),
            unsynced: Mutex::default(),
            head_file: Mutex::new(None),
            staged: Mutex::default(),
            copies: Mutex::default(),
            decoded: Mutex::new(super::cache::ChunkCache::new(DECODED_BYTES)),
            deferred: Mutex::default(),
        })
    }

    /// Opens an existing shadow directory.
    pub fn open(dir: &Path) -> Result<PointStore, ShadowError> {
        let path = dir.join("shadow.json");
        if !path.exists() {
            return Err(ShadowError::NotAShadow {
                dir: dir.to_owned(),
            });
        }
        let meta: ShadowMeta = read_json(&path)?;
        if !(OLDEST_FORMAT..=FORMAT).contains(&meta.format) {
            return Err(ShadowError::BadFile {
                path,
                reason: format!(
                    "format {} is not a format this Bellwether reads ({OLDEST_FORMAT} to {FORMAT}){}",
                    meta.format,
                    if meta.format > FORMAT {
                        ": written by a newer Bellwether"
                    } else {
                        ""
                    }
                ),
            });
        }
        Ok(PointStore {
            dir: dir.to_owned(),
            meta,
            writer: None,
            sealing: Mutex::new(Vec::new()),
            gate: Arc::default(),
            unsynced: Mutex::default(),
            head_file: Mutex::new(None),
            staged: Mutex::default(),
            copies: Mutex::default(),
            decoded: Mutex::new(super::cache::ChunkCache::new(DECODED_BYTES)),
            deferred: Mutex::default(),
        })
    }

    /// Opens an existing shadow directory and checks it shadows `kind` at `source`.
    pub fn open_for(
        dir: &Path,
        kind: ResourceKind,
        source: &str,
    ) -> Result<PointStore, ShadowError> {
        let store = PointStore::open(dir)?;
        if store.meta.kind != kind || store.meta.source != source {
            return Err(ShadowError::OtherResource {
                dir: dir.to_owned(),
                shadows: format!("{} {}", store.meta.kind, store.meta.source),
                asked: format!("{kind} {source}"),
            });
        }
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn meta(&self) -> &ShadowMeta {
        &self.meta
    }

    /// Takes the writer lock (only one follower per shadow directory); refused with
    /// [`ShadowError::Busy`] when another process holds it. Held until the store is dropped.
    pub fn lock_writer(&mut self) -> Result<(), ShadowError> {
        if self.writer.is_some() {
            return Ok(());
        }
        self.take_writer_lock()?;
        if self.meta.format < FORMAT {
            // What this writer stores may need this format to be read.
            let mut meta = self.meta.clone();
            meta.format = FORMAT;
            write_json(&self.dir.join("shadow.json"), &meta)?;
            self.meta = meta;
        }
        if let Some(head) = self.head()? {
            let last = self.chained_beyond(head.clone())?;
            if last != head {
                // Points whose manifests were durable when the machine stopped before their
                // `HEAD` write reached the disk ([`PointStore::write_head`]): committed.
                tracing::info!(
                    dir = %self.dir.display(),
                    from = head.seq,
                    to = last.seq,
                    "Points committed after points/HEAD's last write adopted."
                );
                self.write_head(&last)?;
            }
            self.sync_head()?;
        }
        if self.clones_dir().exists() {
            // Copy-on-write points a follower committed but did not live to seal.
            self.seal_in_background(Vec::new());
        }
        Ok(())
    }

    /// The writer lock alone, without what a follower does on taking it (format, `HEAD`,
    /// pending seals): for a restore that repairs what a stopped machine lost while no
    /// follower runs (`pg::shadow::repair_wal`).
    pub(crate) fn take_writer_lock(&mut self) -> Result<(), ShadowError> {
        if self.writer.is_some() {
            return Ok(());
        }
        let path = self.dir.join("writer.lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(ShadowError::io(&path))?;
        match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                return Err(ShadowError::Busy {
                    dir: self.dir.clone(),
                    holder: format!("pid {}", holder.trim()),
                });
            }
            Err(e) => return Err(ShadowError::io(&path)(e.into())),
        }
        let _ = f.set_len(0);
        let _ = (&f).write_all_at_start(std::process::id().to_string().as_bytes());
        self.writer = Some(f);
        Ok(())
    }

    /// Whether some process (this one included) holds the writer lock.
    pub fn writer_running(&self) -> bool {
        if self.writer.is_some() {
            return true;
        }
        let path = self.dir.join("writer.lock");
        let Ok(f) = File::open(&path) else {
            return false;
        };
        match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockShared) {
            Ok(()) => {
                let _ = rustix::fs::flock(&f, rustix::fs::FlockOperation::Unlock);
                false
            }
            Err(_) => true,
        }
    }

    pub(super) fn require_writer(&self) -> Result<(), ShadowError> {
        if self.writer.is_none() {
            return Err(ShadowError::Unsupported(format!(
                "{}: writing needs the shadow's writer lock (PointStore::lock_writer)",
                self.dir.display()
            )));
        }
        Ok(())
    }

    /// The short lock that orders leases against retention.
    pub(super) fn short_lock(&self) -> Result<File, ShadowError> {
        let path = self.dir.join("shadow.lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(ShadowError::io(&path))?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| ShadowError::io(&path)(e.into()))?;
        Ok(f)
    }

    fn tmp(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    // ----- objects -----

    /// Stores `bytes` as an object (once: the same content is stored once). Returns its
    /// reference and whether it was new. Durable once a point referencing it is committed.
    pub fn put_object(&self, bytes: &[u8]) -> Result<(ObjectRef, bool), ShadowError> {
        self.require_writer()?;
        let (r, new) =
            objects::put(&self.dir, &self.tmp(), bytes).map_err(ShadowError::io(self.tmp()))?;
        self.written(&r.id, new);
        Ok((r, new))
    }

    /// [`PointStore::put_object`], stored zstd-compressed when that saves an eighth (see
    /// [`objects`]' notes). For data that is not cloned out again (PostgreSQL's).
    pub fn put_object_compressed(&self, bytes: &[u8]) -> Result<(ObjectRef, bool), ShadowError> {
        self.put_compressed(bytes, false)
    }

    /// [`PointStore::put_object_compressed`] at a faster zstd level, for bytes a point
    /// waits for.
    pub(crate) fn put_object_compressed_fast(
        &self,
        bytes: &[u8],
    ) -> Result<(ObjectRef, bool), ShadowError> {
        self.put_compressed(bytes, true)
    }

    fn put_compressed(&self, bytes: &[u8], fast: bool) -> Result<(ObjectRef, bool), ShadowError> {
        self.require_writer()?;
        let (r, new) = objects::put_compressed(&self.dir, &self.tmp(), bytes, fast)
            .map_err(ShadowError::io(self.tmp()))?;
        self.written(&r.id, new);
        Ok((r, new))
    }

    /// Stores a whole file as one object, cloned copy-on-write where the file system can.
    pub fn put_file(&self, path: &Path) -> Result<(ObjectRef, bool), ShadowError> {
        self.require_writer()?;
        let (r, new) =
            objects::put_file(&self.dir, &self.tmp(), path).map_err(ShadowError::io(path))?;
        self.written(&r.id, new);
        Ok((r, new))
    }

    /// Moves a file the caller wrote under [`PointStore::temp_path`] into the store as one
    /// object (no copy).
    pub fn adopt_file(&self, path: &Path) -> Result<(ObjectRef, bool), ShadowError> {
        self.require_writer()?;
        let (r, new) = objects::adopt(&self.dir, path).map_err(ShadowError::io(path))?;
        self.written(&r.id, new);
        Ok((r, new))
    }

    /// Stores `bytes` as an object (uncompressed) that no point syncs: its caller makes it
    /// durable with [`PointStore::settle`], and can rebuild it should the machine lose the
    /// write (a PostgreSQL point's WAL, which `pg/wal` holds durably already). Returns its
    /// reference and whether it was new.
    pub(crate) fn put_object_unsynced(
        &self,
        bytes: &[u8],
    ) -> Result<(ObjectRef, bool), ShadowError> {
        self.require_writer()?;
        objects::put(&self.dir, &self.tmp(), bytes).map_err(ShadowError::io(self.tmp()))
    }

    /// Makes objects stored by [`PointStore::put_object_unsynced`] durable, each compressed
    /// where that saves an eighth, and their directories. Returns those it could not: gone,
    /// or whose content is not their name's (a write the machine lost).
    pub(crate) fn settle(&self, refs: &[ObjectRef]) -> Result<Vec<ObjectRef>, ShadowError> {
        self.settle_with(refs, &mut |_, _| None)
    }

    /// [`PointStore::settle`], each object stored as `encode` gives it where it gives one
    /// (a patch), compressed where it does not.
    pub(crate) fn settle_with(
        &self,
        refs: &[ObjectRef],
        encode: Encoder<'_>,
    ) -> Result<Vec<ObjectRef>, ShadowError> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        let mut lost = Vec::new();
        for r in refs {
            match objects::settle(&self.dir, &self.tmp(), r, &mut |b| encode(r, b))
                .map_err(ShadowError::io(self.object_path(&r.id)))?
            {
                Some(d) if !dirs.contains(&d) => dirs.push(d),
                Some(_) => {}
                None => lost.push(*r),
            }
        }
        for d in dirs {
            File::open(&d)
                .and_then(|f| f.sync_all())
                .map_err(ShadowError::io(&d))?;
        }
        Ok(lost)
    }

    /// Whether object `r` is there whole: stored compressed or as a patch whose bases are
    /// there (every such object was written so whole and synced before a point referenced
    /// it, or by [`PointStore::settle`]), or stored as it is with the content its name says (read
    /// and hashed).
    pub(crate) fn object_whole(&self, r: &ObjectRef) -> bool {
        let path = self.object_path(&r.id);
        match std::fs::metadata(&path) {
            Ok(md) if md.len() == r.len => {
                std::fs::read(&path).is_ok_and(|b| ObjectId::of(&b) == r.id)
            }
            Ok(md) => {
                objects::is_compressed(&path, md.len(), r.len)
                    || crate::delta::patched_chunk_present(&self.dir, r, md.len())
            }
            Err(_) => false,
        }
    }

    /// The sequence numbers of the manifests present, oldest first (none read).
    pub(crate) fn point_seqs(&self) -> Result<Vec<u64>, ShadowError> {
        Ok(self.scan_points()?.0)
    }

    /// Where copies of objects written from this store are while the returned value lives:
    /// [`Copies::add`] notes each file's (a restore notes those it wrote, and forgets them
    /// before anything else may change them).
    pub(crate) fn copies_at(&self) -> Copies<'_> {
        Copies {
            store: self,
            ids: Vec::new(),
        }
    }

    /// Bytes `at..at + out.len()` of object `r`: read from a copy noted by
    /// [`PointStore::copies_at`] where there is one, else from the object decoded (kept in a
    /// cache, [`DECODED_BYTES`]); whether they could be had. A copy's bytes are not checked
    /// here (the chunk rebuilt from them is, against its name); a decoded object is.
    fn range_of(&self, r: &ObjectRef, at: u64, out: &mut [u8]) -> bool {
        if at + out.len() as u64 > r.len {
            return false;
        }
        if self.copy_bytes(&r.id, at, out) {
            return true;
        }
        let lock = || {
            self.decoded
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        let cached = lock().get(&r.id);
        let content = match cached {
            Some(c) => c,
            None => {
                // Decoded without reading ranges this way again (a damaged store whose
                // patches name each other ends at the rebuild's bound, not in a loop here).
                let Ok(stored) = std::fs::read(self.object_path(&r.id)) else {
                    return false;
                };
                let Ok(b) = objects::decode(stored, r.len)
                    .and_then(|b| crate::delta::chunk_bytes(&self.dir, r, b))
                else {
                    return false;
                };
                if b.len() as u64 != r.len || ObjectId::of(&b) != r.id {
                    return false;
                }
                let b = Arc::new(b);
                lock().insert(r.id, b.clone());
                b
            }
        };
        out.copy_from_slice(&content[at as usize..at as usize + out.len()]);
        true
    }

    /// Bytes `at..at + out.len()` of object `id` read from a copy noted by
    /// [`PointStore::copies_at`]; whether there was one to read them from. What is read is
    /// not checked here: the chunk rebuilt from it is, against its name.
    fn copy_bytes(&self, id: &ObjectId, at: u64, out: &mut [u8]) -> bool {
        use std::os::unix::fs::FileExt;
        let found = self
            .copies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(id)
            .cloned();
        let Some((path, offset, len)) = found else {
            return false;
        };
        if at + out.len() as u64 > len {
            return false;
        }
        File::open(&path).is_ok_and(|f| f.read_exact_at(out, offset + at).is_ok())
    }

    /// Notes an object this store just installed, for the next point to sync.
    pub(crate) fn written(&self, id: &ObjectId, new: bool) {
        if !new {
            return;
        }
        let mut u = self
            .unsynced
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if u.whole_fs {
            return;
        }
        if u.objects.len() >= SYNC_EACH_MAX {
            u.whole_fs = true;
            u.objects = Vec::new();
        } else {
            u.objects.push(self.object_path(id));
        }
    }

    /// How many new objects the next point syncs one by one, and whether it syncs the
    /// file system instead.
    #[cfg(test)]
    pub(crate) fn unsynced(&self) -> (usize, bool) {
        let u = self.unsynced.lock().unwrap();
        (u.objects.len(), u.whole_fs)
    }

    /// Keeps `ids` from `gc` until a committed point references them: objects stored ahead
    /// of their point (a PostgreSQL shadow stores the WAL as it arrives, so that a point
    /// reads only what came since). Makes them durable now, with everything written since
    /// the last point, so that the point has little to sync.
    pub(crate) fn stage(&self, ids: impl IntoIterator<Item = ObjectId>) -> Result<(), ShadowError> {
        self.staged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(ids);
        self.sync_written()
    }

    /// Stops keeping `ids` for a point to come (no point will reference them).
    pub(crate) fn unstage(&self, ids: impl IntoIterator<Item = ObjectId>) {
        let mut staged = self
            .staged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for id in ids {
            staged.remove(&id);
        }
    }

    /// How many staged objects no committed point references yet.
    #[cfg(test)]
    pub(crate) fn staged(&self) -> usize {
        self.staged.lock().unwrap().len()
    }

    /// Makes every object written since the last point durable: each one and its directory,
    /// or the whole file system.
    fn sync_written(&self) -> Result<(), ShadowError> {
        let mut u = self
            .unsynced
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let objects_dir = self.dir.join("objects");
        if u.whole_fs {
            let d = File::open(&objects_dir).map_err(ShadowError::io(&objects_dir))?;
            rustix::fs::syncfs(&d).map_err(|e| ShadowError::io(&objects_dir)(e.into()))?;
        } else if !u.objects.is_empty() {
            let mut dirs: Vec<&Path> = Vec::new();
            for p in &u.objects {
                // One written for a point that failed, then removed by `gc` as
                // unreferenced, has nothing left to make durable.
                sync_if_there(p)?;
                if let Some(d) = p.parent() {
                    if !dirs.contains(&d) {
                        dirs.push(d);
                    }
                }
            }
            // `objects/` itself was synced when each fan-out directory was made
            // (`objects::install`).
            for d in dirs {
                sync_if_there(d)?;
            }
        }
        *u = Unsynced {
            objects: Vec::new(),
            whole_fs: false,
        };
        Ok(())
    }

    /// A fresh path in the store's `tmp/` (same file system as the objects).
    pub fn temp_path(&self) -> PathBuf {
        objects::temp_name(&self.tmp())
    }

    pub fn object_path(&self, id: &ObjectId) -> PathBuf {
        id.path_in(&self.dir)
    }

    pub fn has_object(&self, id: &ObjectId) -> bool {
        self.object_path(id).exists()
    }

    /// Reads an object, checking its length and hash against `r`.
    pub fn read_object(&self, point: PointId, r: &ObjectRef) -> Result<Vec<u8>, ShadowError> {
        let path = self.object_path(&r.id);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(self.bad_object(point, r, "missing".into()))
            }
            Err(e) => return Err(ShadowError::io(path)(e)),
        };
        self.content_of(point, r, bytes)
    }

    /// The content of object `r` from its stored bytes: a PostgreSQL object may be stored
    /// compressed, a directory chunk as a patch (crate::delta), so it is decompressed or
    /// rebuilt, then checked against `r`'s length and hash.
    fn content_of(
        &self,
        point: PointId,
        r: &ObjectRef,
        bytes: Vec<u8>,
    ) -> Result<Vec<u8>, ShadowError> {
        self.decode_object(r, bytes)
            .map_err(|why| self.bad_object(point, r, format!("damaged ({why})")))
    }

    /// An object's content from its stored bytes (decompressed, or rebuilt from its patch),
    /// checked against `r`'s hash and length; why not, when it cannot be had.
    pub(crate) fn decode_object(&self, r: &ObjectRef, bytes: Vec<u8>) -> Result<Vec<u8>, String> {
        let bytes = objects::decode(bytes, r.len).and_then(|b| {
            crate::delta::chunk_bytes_with(&self.dir, r, b, &|base, at, out| {
                self.range_of(base, at, out)
            })
        })?;
        let got = ObjectId::of(&bytes);
        if got != r.id || bytes.len() as u64 != r.len {
            return Err(format!(
                "its content hashes to {got}, {} bytes",
                bytes.len()
            ));
        }
        Ok(bytes)
    }

    /// Copies an object into `to` (an empty file): cloned where the file system can (then
    /// hashed from `to`), otherwise copied and hashed in one pass, to prove the copy whole.
    pub fn clone_object_into(
        &self,
        point: PointId,
        r: &ObjectRef,
        to: &Path,
    ) -> Result<(), ShadowError> {
        let path = self.object_path(&r.id);
        let from = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(self.bad_object(point, r, "missing".into()))
            }
            Err(e) => return Err(ShadowError::io(path)(e)),
        };
        if objects::is_compressed_file(&from, r.len) || crate::delta::is_patched_file(&from, r) {
            let bytes = self.read_compressed(point, r, from, &path)?;
            std::fs::write(to, &bytes).map_err(ShadowError::io(to))?;
            return Ok(());
        }
        // Read and write: a clone is hashed from `to` itself.
        let out = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(to)
            .map_err(ShadowError::io(to))?;
        let (got, len) = objects::copy_hashing(&from, &out).map_err(ShadowError::io(to))?;
        if got != r.id || len != r.len {
            return Err(self.bad_object(
                point,
                r,
                format!("damaged (its content hashes to {got}, {len} bytes)"),
            ));
        }
        Ok(())
    }

    /// Whether objects can be cloned from this store into `dir` (same file system, which
    /// shares blocks): then [`PointStore::clone_objects_into`] is the cheap way to restore.
    pub fn clones_into(&self, dir: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        let same = match (std::fs::metadata(&self.dir), std::fs::metadata(dir)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev(),
            _ => false,
        };
        same && super::cow_supported(&self.tmp())
    }

    /// Makes `to` (a new file) the concatenation of `objects`: each appended with
    /// `copy_file_range` (a reflink of the object's blocks where the file system shares
    /// them), then hashed from `to` and checked against its reference.
    pub fn clone_objects_into(
        &self,
        point: PointId,
        objects: &[ObjectRef],
        to: &Path,
    ) -> Result<u64, ShadowError> {
        let out = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(to)
            .map_err(ShadowError::io(to))?;
        let mut at = 0u64;
        for r in objects {
            let path = self.object_path(&r.id);
            let from = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(self.bad_object(point, r, "missing".into()))
                }
                Err(e) => return Err(ShadowError::io(path)(e)),
            };
            if objects::is_compressed_file(&from, r.len) || crate::delta::is_patched_file(&from, r)
            {
                use std::os::unix::fs::FileExt;
                let bytes = self.read_compressed(point, r, from, &path)?;
                out.write_all_at(&bytes, at).map_err(ShadowError::io(to))?;
                at += r.len;
                continue;
            }
            let (got, len) =
                objects::append_hashing(&from, &out, at, r.len).map_err(ShadowError::io(to))?;
            if got != r.id || len != r.len {
                return Err(self.bad_object(
                    point,
                    r,
                    format!("damaged (its content hashes to {got}, {len} bytes)"),
                ));
            }
            at += len;
        }
        Ok(at)
    }

    /// The content of object `r`, stored compressed or as a patch and open as `from` (at
    /// `path`): decompressed or rebuilt, and checked, rather than cloned.
    fn read_compressed(
        &self,
        point: PointId,
        r: &ObjectRef,
        mut from: File,
        path: &Path,
    ) -> Result<Vec<u8>, ShadowError> {
        use std::io::Read;
        let mut stored = Vec::new();
        from.read_to_end(&mut stored)
            .map_err(ShadowError::io(path))?;
        self.content_of(point, r, stored)
    }

    /// Whether an object's stored length `stored_len` fits its reference: its content's
    /// length, or shorter when it is stored compressed or (a directory chunk) as a patch
    /// whose bases are present.
    fn stored_len_fits(&self, r: &ObjectRef, stored_len: u64) -> bool {
        stored_len == r.len
            || objects::is_compressed(&self.object_path(&r.id), stored_len, r.len)
            || crate::delta::patched_chunk_present(&self.dir, r, stored_len)
    }

    fn bad_object(&self, point: PointId, r: &ObjectRef, what: String) -> ShadowError {
        ShadowError::BadObject {
            dir: self.dir.clone(),
            point,
            object: r.id,
            what,
        }
    }

    // ----- points -----

    /// Makes a point durable: syncs the objects written since the last point, writes the
    /// manifest (sequence number and checksums assigned here, chained to the previous
    /// point), then `points/HEAD`. A transactional shadow's commit log continues in a new
    /// segment after this point ([`PointStore::log_writer`]).
    pub fn commit_point(&self, draft: PointDraft) -> Result<Manifest, ShadowError> {
        let seq = self.next_seq()?;
        self.commit_manifest(seq, draft, Vec::new(), None)
    }

    /// Commits a point whose manifest is written and renamed into place but not synced:
    /// for a point whose mark is durable elsewhere already, from which the manifest can be
    /// rebuilt (a PostgreSQL transactional point: its mark is in the WAL the stream has
    /// flushed, `pg::marks`). [`PointStore::sync_deferred`] makes it durable (the follower's
    /// next sync), as does the next point committed durably, first. Its objects are synced
    /// as any point's.
    pub(crate) fn commit_point_deferred(&self, draft: PointDraft) -> Result<Manifest, ShadowError> {
        let seq = self.next_seq()?;
        self.write_manifest(seq, draft, Vec::new(), None, false)
    }

    /// Makes the manifests committed by [`PointStore::commit_point_deferred`] durable: each
    /// synced, then `points/`. Kept for the next try if that fails.
    pub(crate) fn sync_deferred(&self) -> Result<(), ShadowError> {
        let mut d = self
            .deferred
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if d.is_empty() {
            return Ok(());
        }
        let t = std::time::Instant::now();
        for p in d.iter() {
            // One thinned meanwhile has nothing left to keep.
            sync_if_there(p)?;
        }
        let pdir = self.dir.join("points");
        File::open(&pdir)
            .and_then(|f| f.sync_all())
            .map_err(ShadowError::io(&pdir))?;
        tracing::debug!(
            manifests = d.len(),
            ms = t.elapsed().as_secs_f64() * 1000.0,
            "Deferred manifests synced."
        );
        d.clear();
        Ok(())
    }

    /// Removes the manifests after point `keep` and makes it `points/HEAD`, durably: for a
    /// follower that rebuilds the points a stopped machine lost after `keep`
    /// (`pg::shadow::recover_points`). Returns how many manifests it removed.
    pub(crate) fn rewind_to(&self, keep: &Manifest) -> Result<usize, ShadowError> {
        self.require_writer()?;
        let (seqs, _) = self.scan_points()?;
        let mut removed = 0;
        for s in seqs.into_iter().filter(|s| *s > keep.seq) {
            let p = self.manifest_path(s);
            std::fs::remove_file(&p).map_err(ShadowError::io(&p))?;
            removed += 1;
        }
        let head = Head {
            seq: keep.seq,
            checksum: keep.checksum.clone(),
        };
        // Written whole and synced (not in place): this is a repair.
        write_json(&self.dir.join("points").join("HEAD"), &head)?;
        let mut slot = self
            .head_file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *slot = None;
        Ok(removed)
    }

    /// Commits a point taken from the commit log (see [`FromLog`]): no objects of its own,
    /// so nothing to sync but its manifest (the log it relies on was synced as it was
    /// written).
    pub fn commit_log_point(
        &self,
        draft: PointDraft,
        from_log: FromLog,
    ) -> Result<Manifest, ShadowError> {
        let seq = self.next_seq()?;
        if from_log.image >= seq {
            return Err(ShadowError::Unsupported(format!(
                "{}: point {seq} cannot be rebuilt from point {} (not an earlier point)",
                self.dir.display(),
                from_log.image
            )));
        }
        self.commit_manifest(seq, draft, Vec::new(), Some(from_log))
    }

    pub(super) fn sealing(&self) -> MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.sealing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The next point's number (needs the writer lock).
    pub(crate) fn next_seq(&self) -> Result<u64, ShadowError> {
        self.require_writer()?;
        Ok(self.head()?.map_or(1, |h| h.seq + 1))
    }

    /// Writes point `seq`'s manifest, then `points/HEAD`; a point with objects first syncs
    /// the file system of the objects it references (copy-on-write points sync their
    /// clones themselves, points from the commit log have none).
    pub(super) fn commit_manifest(
        &self,
        seq: u64,
        draft: PointDraft,
        clones: Vec<super::ClonedFile>,
        from_log: Option<FromLog>,
    ) -> Result<Manifest, ShadowError> {
        // A durable point never follows one that is not (a machine's stop could otherwise
        // keep the later one and lose the earlier).
        self.sync_deferred()?;
        self.write_manifest(seq, draft, clones, from_log, true)
    }

    /// [`PointStore::commit_manifest`], the manifest synced or (`durable` false) not.
    fn write_manifest(
        &self,
        seq: u64,
        draft: PointDraft,
        clones: Vec<super::ClonedFile>,
        from_log: Option<FromLog>,
        durable: bool,
    ) -> Result<Manifest, ShadowError> {
        let sync_objects = clones.is_empty() && from_log.is_none();
        self.require_writer()?;
        let head = self.head()?;
        if head.as_ref().map_or(1, |h| h.seq + 1) != seq {
            return Err(ShadowError::Unsupported(format!(
                "{}: point {seq} is not the next point (another writer?)",
                self.dir.display()
            )));
        }
        let bytes = draft.entries.iter().map(|e| e.size).sum();
        let mut m = Manifest {
            format: FORMAT,
            seq,
            kind: self.meta.kind,
            source: self.meta.source.clone(),
            shadow_type: self.meta.shadow_type,
            taken_at: draft.taken_at,
            consistent_at: draft.consistent_at,
            reason: draft.reason,
            position: draft.position,
            bytes,
            new_bytes: draft.new_bytes,
            entries: draft.entries,
            clones,
            from_log,
            prev_checksum: head.map(|h| h.checksum),
            checksum: String::new(),
        };
        let t0 = std::time::Instant::now();
        // One serialization for the checksum and the file ([`manifest_bytes`]).
        let bytes = manifest_bytes(&mut m);
        let t1 = std::time::Instant::now();
        // Every object the manifest references must be on disk before the manifest is.
        if sync_objects {
            self.sync_written()?;
        }
        let t2 = std::time::Instant::now();
        let path = self.manifest_path(seq);
        let bytes = manifest_file(bytes);
        if durable {
            bellwether_fs::AtomicWrite::new()
                .create_parent()
                .write(&path, &bytes)
                .map_err(ShadowError::io(&path))?;
        } else {
            // Beside, then renamed: a reader sees the whole manifest or none.
            let tmp = self.temp_path();
            std::fs::write(&tmp, &bytes)
                .and_then(|()| std::fs::rename(&tmp, &path))
                .map_err(|e| {
                    let _ = std::fs::remove_file(&tmp);
                    ShadowError::io(&path)(e)
                })?;
            self.deferred
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(path.clone());
        }
        let t3 = std::time::Instant::now();
        self.write_head(&Head {
            seq,
            checksum: m.checksum.clone(),
        })?;
        let ms = |a: std::time::Instant, b: std::time::Instant| (b - a).as_secs_f64() * 1000.0;
        tracing::debug!(
            seq,
            checksum_ms = ms(t0, t1),
            objects_ms = ms(t1, t2),
            manifest_ms = ms(t2, t3),
            head_ms = ms(t3, std::time::Instant::now()),
            entries = m.entries.len(),
            "Point committed."
        );
        let mut staged = self
            .staged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !staged.is_empty() {
            for r in m.objects() {
                staged.remove(&r.id);
            }
        }
        drop(staged);
        Ok(m)
    }

    /// Writes `points/HEAD`. The first time this store writes it, as any small file
    /// (atomically, name and all synced); after that, over itself in place: the same
    /// [`HEAD_LEN`] bytes (JSON padded with spaces), not synced. A point is committed once its
    /// manifest is durable (written, synced, renamed into place, its directory synced), and
    /// `HEAD` only records the latest one so that losing it (or the last few) is detected. So
    /// `HEAD` may lag its manifests only where the machine itself stopped (a killed process
    /// leaves its write in the page cache): the next writer adopts the manifests that chain
    /// from it ([`PointStore::lock_writer`]) and [`PointStore::verify`] accepts them. No
    /// rename and no sync: a `fdatasync` here cost a point 0.2–5 ms (BENCHMARKS.md, "Points
    /// that wait for less" and "A point's `HEAD` not synced").
    fn write_head(&self, head: &Head) -> Result<(), ShadowError> {
        let path = self.dir.join("points").join("HEAD");
        let mut bytes = serde_json::to_vec(head).map_err(|e| ShadowError::BadFile {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        bytes.push(b'\n');
        if bytes.len() > HEAD_LEN {
            return write_json(&path, head);
        }
        bytes.resize(HEAD_LEN, b' ');
        let mut slot = self
            .head_file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((f, last)) = slot.as_mut() {
            use std::os::unix::fs::FileExt;
            f.write_all_at(&bytes, 0).map_err(ShadowError::io(&path))?;
            *last = head.clone();
            return Ok(());
        }
        bellwether_fs::AtomicWrite::new()
            .create_parent()
            .write(&path, &bytes)
            .map_err(ShadowError::io(&path))?;
        let f = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(ShadowError::io(&path))?;
        *slot = Some((f, head.clone()));
        Ok(())
    }

    /// Makes `points/HEAD` as written so far durable (a writer's start and end).
    fn sync_head(&self) -> Result<(), ShadowError> {
        let slot = self
            .head_file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match slot.as_ref() {
            Some((f, _)) => f
                .sync_data()
                .map_err(ShadowError::io(self.dir.join("points").join("HEAD"))),
            None => Ok(()),
        }
    }

    /// `head`, moved on over every manifest after it that chains from it (its number next,
    /// its own checksum right, its previous checksum `head`'s): the points committed after
    /// `HEAD`'s last write reached the disk. A manifest that does not chain stops the walk
    /// (and [`PointStore::verify`] names it).
    fn chained_beyond(&self, mut head: Head) -> Result<Head, ShadowError> {
        let (manifests, _) = self.scan_points()?;
        let from = head.seq;
        for seq in manifests.into_iter().filter(|s| *s > from) {
            if seq != head.seq + 1 {
                break;
            }
            let Ok(m) = self.point(PointId(seq)) else {
                break;
            };
            if m.prev_checksum.as_deref() != Some(head.checksum.as_str()) {
                break;
            }
            head = Head {
                seq,
                checksum: m.checksum,
            };
        }
        Ok(head)
    }

    fn manifest_path(&self, seq: u64) -> PathBuf {
        self.dir
            .join("points")
            .join(format!("{}.json", seq_name(seq)))
    }

    fn tombstone_path(&self, seq: u64) -> PathBuf {
        self.dir
            .join("points")
            .join(format!("{}.thinned", seq_name(seq)))
    }

    pub(crate) fn head_seq(&self) -> Result<Option<u64>, ShadowError> {
        Ok(self.head()?.map(|h| h.seq))
    }

    fn head(&self) -> Result<Option<Head>, ShadowError> {
        if let Some((_, last)) = self
            .head_file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
        {
            return Ok(Some(last.clone()));
        }
        let path = self.dir.join("points").join("HEAD");
        if !path.exists() {
            return Ok(None);
        }
        // Written in place (`write_head`): a read that meets a write half done sees
        // invalid JSON, and reads again.
        let mut tries = 0;
        loop {
            match read_json(&path) {
                Err(ShadowError::BadFile { .. }) if tries < 3 => tries += 1,
                r => return r.map(Some),
            }
        }
    }

    /// The sequence numbers of the manifests and tombstones present.
    pub(crate) fn scan_points(&self) -> Result<(Vec<u64>, Vec<u64>), ShadowError> {
        let pdir = self.dir.join("points");
        let mut manifests = Vec::new();
        let mut tombstones = Vec::new();
        for e in std::fs::read_dir(&pdir).map_err(ShadowError::io(&pdir))? {
            let e = e.map_err(ShadowError::io(&pdir))?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            if let Some(n) = name
                .strip_suffix(".json")
                .and_then(|n| n.parse::<u64>().ok())
            {
                manifests.push(n);
            } else if let Some(n) = name
                .strip_suffix(".thinned")
                .and_then(|n| n.parse::<u64>().ok())
            {
                tombstones.push(n);
            }
        }
        manifests.sort_unstable();
        tombstones.sort_unstable();
        Ok((manifests, tombstones))
    }

    /// Reads one manifest and checks its own checksum.
    pub fn point(&self, id: PointId) -> Result<Manifest, ShadowError> {
        let path = self.manifest_path(id.0);
        if !path.exists() {
            return Err(ShadowError::NoSuchPoint {
                dir: self.dir.clone(),
                id,
                thinned: self.tombstone_path(id.0).exists(),
            });
        }
        let m: Manifest = read_manifest(&path).map_err(|e| ShadowError::DamagedPoint {
            dir: self.dir.clone(),
            id,
            reason: e.to_string(),
        })?;
        let damaged = |reason: String| ShadowError::DamagedPoint {
            dir: self.dir.clone(),
            id,
            reason,
        };
        if m.seq != id.0 {
            return Err(damaged(format!("its manifest says it is p{}", m.seq)));
        }
        let sum = manifest_checksum(&m);
        if sum != m.checksum {
            return Err(damaged(format!(
                "its manifest's checksum is {} but its content hashes to {sum}",
                m.checksum
            )));
        }
        Ok(m)
    }

    /// Every point present, oldest first, each checked against its own checksum (the chain
    /// is checked by [`PointStore::verify`]).
    pub fn points(&self) -> Result<Vec<Manifest>, ShadowError> {
        let (seqs, _) = self.scan_points()?;
        seqs.into_iter().map(|s| self.point(PointId(s))).collect()
    }

    /// The point a restore to `target` starts from: for a time, the latest point whose
    /// consistent time is at or before it.
    pub fn find(&self, target: &Target) -> Result<Manifest, ShadowError> {
        match target {
            Target::Point(id) => self.point(*id),
            Target::Latest => {
                let (seqs, _) = self.scan_points()?;
                let last = seqs.last().ok_or_else(|| ShadowError::NoPoints {
                    dir: self.dir.clone(),
                })?;
                self.point(PointId(*last))
            }
            Target::Time(t) => {
                let (seqs, _) = self.scan_points()?;
                if seqs.is_empty() {
                    return Err(ShadowError::NoPoints {
                        dir: self.dir.clone(),
                    });
                }
                let mut first = None;
                for s in seqs.iter().rev() {
                    let m = self.point(PointId(*s))?;
                    if m.consistent_at <= *t {
                        return Ok(m);
                    }
                    first = Some(m.consistent_at);
                }
                Err(ShadowError::BeforeFirstPoint {
                    dir: self.dir.clone(),
                    target: *t,
                    first: first.unwrap_or(*t),
                })
            }
        }
    }

    /// Checks the whole shadow: every manifest's checksum, the chain from the first point to
    /// `points/HEAD` (across thinned points), the commit log of every point, and, with
    /// `deep`, every object's content (otherwise only that it exists with its length). The
    /// first problem is the error, naming the point, object or segment.
    pub fn verify(&self, deep: bool) -> Result<VerifyReport, ShadowError> {
        let (manifests, tombstones) = self.scan_points()?;
        let head = self.head()?;
        let mut report = VerifyReport::default();
        let Some(head) = head else {
            if let Some(s) = manifests.first() {
                return Err(ShadowError::DamagedPoint {
                    dir: self.dir.clone(),
                    id: PointId(*s),
                    reason: "points/HEAD is missing".into(),
                });
            }
            return Ok(report);
        };
        // Points committed after `HEAD`'s last write reached the disk (see `write_head`).
        let head = self.chained_beyond(head)?;
        let present: HashSet<u64> = manifests.iter().copied().collect();
        let thinned: HashSet<u64> = tombstones.iter().copied().collect();
        let mut prev: Option<String> = None;
        let mut seen_objects = HashSet::new();
        // The last segment read: its point, its commits and their last chained SHA-256 (a
        // point taken from the commit log is checked against its predecessor's).
        let mut last_segment: Option<(u64, usize, [u8; 32])> = None;
        for seq in 1..=head.seq {
            let id = PointId(seq);
            let (checksum, prev_checksum) = if present.contains(&seq) {
                let m = self.point(id)?;
                for r in m.objects() {
                    if !seen_objects.insert(r.id) {
                        continue;
                    }
                    report.objects += 1;
                    report.bytes += r.len;
                    if deep {
                        self.read_object(id, r)?;
                    } else {
                        match std::fs::metadata(self.object_path(&r.id)) {
                            Ok(md) if self.stored_len_fits(r, md.len()) => {}
                            Ok(md) => {
                                return Err(self.bad_object(
                                    id,
                                    r,
                                    format!("damaged ({} bytes, not {})", md.len(), r.len),
                                ))
                            }
                            Err(_) => return Err(self.bad_object(id, r, "missing".into())),
                        }
                    }
                }
                if deep {
                    let (bytes, _) = self.verify_clones_deep(&m)?;
                    report.bytes += bytes;
                } else {
                    self.verify_clones(&m)?;
                }
                report.objects += m.clones.len() as u64;
                if let Some(from) = &m.from_log {
                    match last_segment {
                        Some((s, n, last)) if s + 1 == seq => {
                            self.check_link(&m, from, n, &last)?
                        }
                        // Its predecessor is gone: named by the full check.
                        _ => {
                            self.log_link(&m, from)?;
                        }
                    }
                }
                let (records, last, _) = log::scan(&self.log_path(id), seq == head.seq)?;
                report.log_records += records.len() as u64;
                last_segment = Some((seq, records.len(), last));
                report.points += 1;
                (m.checksum, m.prev_checksum)
            } else if thinned.contains(&seq) {
                let t: Tombstone = read_json(&self.tombstone_path(seq))?;
                report.thinned += 1;
                (t.checksum, t.prev_checksum)
            } else {
                return Err(ShadowError::MissingPoint {
                    dir: self.dir.clone(),
                    id,
                    reason: format!(
                        "points/{}.json is gone and retention did not remove it",
                        seq_name(seq)
                    ),
                });
            };
            if prev_checksum != prev {
                return Err(ShadowError::DamagedPoint {
                    dir: self.dir.clone(),
                    id,
                    reason: format!(
                        "the chain is broken: it follows a point with checksum {}, but the previous point's is {}",
                        prev_checksum.as_deref().unwrap_or("(none)"),
                        prev.as_deref().unwrap_or("(none)")
                    ),
                });
            }
            prev = Some(checksum);
        }
        if prev.as_deref() != Some(head.checksum.as_str()) {
            return Err(ShadowError::DamagedPoint {
                dir: self.dir.clone(),
                id: PointId(head.seq),
                reason: "its checksum is not the one points/HEAD records".into(),
            });
        }
        if let Some(extra) = manifests.iter().find(|s| **s > head.seq) {
            return Err(ShadowError::DamagedPoint {
                dir: self.dir.clone(),
                id: PointId(*extra),
                reason: format!("it is newer than points/HEAD (p{})", head.seq),
            });
        }
        Ok(report)
    }

    /// Checks one point before a restore: its manifest, its link to the previous point and
    /// every object (exists, with its length; the content is hashed as it is restored).
    pub fn verify_point(&self, m: &Manifest) -> Result<(), ShadowError> {
        if m.seq > 1 {
            let prev_seq = m.seq - 1;
            let prev = if self.manifest_path(prev_seq).exists() {
                Some(self.point(PointId(prev_seq))?.checksum)
            } else if self.tombstone_path(prev_seq).exists() {
                Some(read_json::<Tombstone>(&self.tombstone_path(prev_seq))?.checksum)
            } else {
                None
            };
            if let Some(prev) = prev {
                if m.prev_checksum.as_deref() != Some(prev.as_str()) {
                    return Err(ShadowError::DamagedPoint {
                        dir: self.dir.clone(),
                        id: m.id(),
                        reason: "its link to the previous point does not match".into(),
                    });
                }
            }
        }
        for r in m.objects() {
            match std::fs::metadata(self.object_path(&r.id)) {
                Ok(md) if self.stored_len_fits(r, md.len()) => {}
                Ok(md) => {
                    return Err(self.bad_object(
                        m.id(),
                        r,
                        format!("damaged ({} bytes, not {})", md.len(), r.len),
                    ))
                }
                Err(_) => return Err(self.bad_object(m.id(), r, "missing".into())),
            }
        }
        self.verify_clones(m)?;
        Ok(())
    }

    // ----- commit log -----

    fn log_path(&self, after: PointId) -> PathBuf {
        self.dir
            .join("log")
            .join(format!("{}.log", seq_name(after.0)))
    }

    /// The commit log segment for commits after point `after` (opened for appending; a torn
    /// tail left by a crash is cut).
    pub fn log_writer(&self, after: PointId) -> Result<LogWriter, ShadowError> {
        self.require_writer()?;
        LogWriter::open(&self.log_path(after))
    }

    /// The commit log after `after`, a point just committed (so its segment holds nothing
    /// yet): nothing is touched on disk until the first commit is flushed, so taking a
    /// point does not wait for its segment's creation.
    pub fn new_log_writer(&self, after: PointId) -> Result<LogWriter, ShadowError> {
        self.require_writer()?;
        Ok(LogWriter::fresh(&self.log_path(after)))
    }

    /// Bytes of the commit log after point `after` (0 when it has none).
    pub fn log_len(&self, after: PointId) -> u64 {
        std::fs::metadata(self.log_path(after))
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// The commits logged after point `after`, up to and including `until` (all when
    /// `None`), oldest first. A torn tail (the follower died while appending) is ignored.
    pub fn log_records(
        &self,
        after: PointId,
        until: Option<Timestamp>,
    ) -> Result<Vec<LogRecord>, ShadowError> {
        let (mut records, _, _) = log::scan(&self.log_path(after), true)?;
        if let Some(t) = until {
            let keep = records.iter().take_while(|r| r.at <= t).count();
            records.truncate(keep);
        }
        Ok(records)
    }

    /// The commits of `m`'s predecessor's segment that lead to `m`, a point taken from the
    /// commit log, checked against what `m` recorded of them; with the predecessor.
    fn log_link(
        &self,
        m: &Manifest,
        from: &FromLog,
    ) -> Result<(Manifest, Vec<LogRecord>), ShadowError> {
        let damaged = |reason: String| ShadowError::DamagedPoint {
            dir: self.dir.clone(),
            id: m.id(),
            reason,
        };
        let prev_id = PointId(m.seq.saturating_sub(1));
        if prev_id.0 < from.image || !self.manifest_path(prev_id.0).exists() {
            return Err(damaged(format!(
                "it is rebuilt from p{} and the commits logged after it, and p{} is gone{}",
                prev_id.0,
                prev_id.0,
                if self.tombstone_path(prev_id.0).exists() {
                    " (thinned)"
                } else {
                    ""
                }
            )));
        }
        let prev = self.point(prev_id)?;
        let (records, last, _) = log::scan(&self.log_path(prev_id), true)?;
        self.check_link(m, from, records.len(), &last)?;
        Ok((prev, records))
    }

    /// Whether the predecessor's segment, read as `records` commits ending with the chained
    /// SHA-256 `last`, is the one `m` (a point taken from the commit log) recorded.
    fn check_link(
        &self,
        m: &Manifest,
        from: &FromLog,
        records: usize,
        last: &[u8; 32],
    ) -> Result<(), ShadowError> {
        if records as u64 == from.records && hex::encode(last) == from.last {
            return Ok(());
        }
        let prev = m.seq.saturating_sub(1);
        Err(ShadowError::DamagedPoint {
            dir: self.dir.clone(),
            id: m.id(),
            reason: format!(
                "it follows {} commits logged after p{prev} (the last with checksum {}), and log/{}.log holds {records}{}",
                from.records,
                from.last,
                seq_name(prev),
                if records as u64 == from.records {
                    " with another last checksum"
                } else {
                    ""
                }
            ),
        })
    }

    /// For a point taken from the commit log: the point holding its image and every commit
    /// to replay over it, oldest first, each with the point whose segment holds it (every
    /// link checked, see [`FromLog`]). For any other point: itself and nothing to replay.
    pub fn log_chain(
        &self,
        m: &Manifest,
    ) -> Result<(Manifest, Vec<(PointId, LogRecord)>), ShadowError> {
        let mut segments = Vec::new();
        let mut cur = m.clone();
        while let Some(from) = cur.from_log.clone() {
            if from.image != m.from_log.as_ref().map_or(0, |f| f.image) {
                return Err(ShadowError::DamagedPoint {
                    dir: self.dir.clone(),
                    id: cur.id(),
                    reason: format!(
                        "it is rebuilt from p{}, but p{} from p{}",
                        from.image,
                        m.seq,
                        m.from_log.as_ref().map_or(0, |f| f.image)
                    ),
                });
            }
            let (prev, records) = self.log_link(&cur, &from)?;
            segments.push((prev.id(), records));
            cur = prev;
        }
        if let Some(from) = &m.from_log {
            if cur.seq != from.image {
                return Err(ShadowError::DamagedPoint {
                    dir: self.dir.clone(),
                    id: m.id(),
                    reason: format!(
                        "it is rebuilt from p{}'s image, but the points before it lead to p{}",
                        from.image, cur.seq
                    ),
                });
            }
        }
        segments.reverse();
        let replay = segments
            .into_iter()
            .flat_map(|(id, rs)| rs.into_iter().map(move |r| (id, r)))
            .collect();
        Ok((cur, replay))
    }

    // ----- leases and retention -----

    /// Holds point `id` for a restore: checked and recorded under the shadow's lock, so
    /// retention (which takes the same lock) cannot remove it meanwhile.
    pub fn lease(&self, id: PointId) -> Result<Lease, ShadowError> {
        static N: AtomicU64 = AtomicU64::new(0);
        let _lock = self.short_lock()?;
        if !self.manifest_path(id.0).exists() {
            return Err(ShadowError::NoSuchPoint {
                dir: self.dir.clone(),
                id,
                thinned: self.tombstone_path(id.0).exists(),
            });
        }
        let path = self.dir.join("leases").join(format!(
            "{}-{}.json",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        write_json(
            &path,
            &LeaseFile {
                seq: id.0,
                pid: std::process::id(),
                created_at: Timestamp::now(),
            },
        )?;
        Ok(Lease { path, point: id })
    }

    /// Runs `f` under the shadow's lock if no restore holds a point (leases are taken under
    /// the same lock, so none starts meanwhile); returns `None`, without running it, if one
    /// does.
    pub(crate) fn when_unleased<T>(&self, f: impl FnOnce() -> T) -> Result<Option<T>, ShadowError> {
        let _lock = self.short_lock()?;
        if !self.leased()?.is_empty() {
            return Ok(None);
        }
        Ok(Some(f()))
    }

    /// Points held by live leases; leases of processes that are gone are removed.
    fn leased(&self) -> Result<HashSet<u64>, ShadowError> {
        let ldir = self.dir.join("leases");
        let mut out = HashSet::new();
        let entries = match std::fs::read_dir(&ldir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(ShadowError::io(ldir)(e)),
        };
        for e in entries {
            let path = e.map_err(ShadowError::io(&ldir))?.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            match read_json::<LeaseFile>(&path) {
                Ok(l) if pid_alive(l.pid) => {
                    out.insert(l.seq);
                }
                Ok(_) => {
                    let _ = std::fs::remove_file(&path);
                }
                // A lease being written (or damaged) holds nothing known; keep it and err on
                // the side of keeping everything this round.
                Err(_) => {
                    return Err(ShadowError::Busy {
                        dir: self.dir.clone(),
                        holder: format!("an unreadable lease {}", path.display()),
                    })
                }
            }
        }
        Ok(out)
    }

    /// Applies `policy` at `now`: removes the points it thins (leaving a tombstone with
    /// their checksums, and removing their commit log), except points a restore holds, then
    /// collects unreferenced objects. Needs the writer lock.
    pub fn thin(&self, policy: &Retention, now: Timestamp) -> Result<ThinReport, ShadowError> {
        self.require_writer()?;
        let _lock = self.short_lock()?;
        let leased = self.leased()?;
        let points = self.points()?;
        let times: Vec<(PointId, Timestamp)> =
            points.iter().map(|m| (m.id(), m.consistent_at)).collect();
        let plan = thin_plan(&times, policy, now);
        let planned: HashSet<PointId> = plan.iter().copied().collect();
        // A point taken from the commit log that stays needs its image and every point
        // between (their segments are what it replays).
        let mut rebuilt_from = HashSet::new();
        for m in &points {
            let stays = !planned.contains(&m.id()) || leased.contains(&m.seq);
            if let (true, Some(from)) = (stays, &m.from_log) {
                rebuilt_from.extend(from.image..m.seq);
            }
        }
        let mut report = ThinReport::default();
        for id in plan {
            if leased.contains(&id.0) {
                report.leased.push(id);
                continue;
            }
            if rebuilt_from.contains(&id.0) {
                report.rebuilt_from.push(id);
                continue;
            }
            let Some(m) = points.iter().find(|m| m.id() == id) else {
                continue;
            };
            write_json(
                &self.tombstone_path(id.0),
                &Tombstone {
                    seq: id.0,
                    taken_at: m.taken_at,
                    prev_checksum: m.prev_checksum.clone(),
                    checksum: m.checksum.clone(),
                    thinned_at: now,
                },
            )?;
            let mp = self.manifest_path(id.0);
            std::fs::remove_file(&mp).map_err(ShadowError::io(mp))?;
            self.remove_clones(m)?;
            let lp = self.log_path(id);
            match std::fs::remove_file(&lp) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(ShadowError::io(lp)(e)),
            }
            report.removed.push(id);
        }
        report.gc = self.gc_locked()?;
        Ok(report)
    }

    /// Removes objects no point references (and stale temporaries). Needs the writer lock;
    /// takes the shadow's lock.
    pub fn gc(&self) -> Result<GcReport, ShadowError> {
        self.require_writer()?;
        let _lock = self.short_lock()?;
        self.gc_locked()
    }

    fn gc_locked(&self) -> Result<GcReport, ShadowError> {
        let mut referenced = HashSet::new();
        let mut refs = HashSet::new();
        let mut present = HashSet::new();
        for m in self.points()? {
            referenced.extend(m.objects().map(|r| r.id));
            refs.extend(m.objects().copied());
            present.insert(m.seq);
        }
        // And what a patched directory chunk is rebuilt from (crate::delta).
        crate::delta::add_bases(&self.dir, refs.iter(), &mut referenced);
        // And what was stored ahead of its point.
        referenced.extend(
            self.staged
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .copied(),
        );
        let mut report = GcReport::default();
        let (n, bytes) = self.gc_clones(&present);
        report.objects_removed += n;
        report.bytes_removed += bytes;
        let odir = self.dir.join("objects");
        for fan in std::fs::read_dir(&odir).map_err(ShadowError::io(&odir))? {
            let fan = fan.map_err(ShadowError::io(&odir))?.path();
            let Some(prefix) = fan.file_name().map(|n| n.to_string_lossy().into_owned()) else {
                continue;
            };
            let Ok(entries) = std::fs::read_dir(&fan) else {
                continue;
            };
            for e in entries {
                let e = e.map_err(ShadowError::io(&fan))?;
                let name = format!("{prefix}{}", e.file_name().to_string_lossy());
                let Ok(id) = name.parse::<ObjectId>() else {
                    continue;
                };
                if referenced.contains(&id) {
                    report.objects_kept += 1;
                    continue;
                }
                let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                std::fs::remove_file(e.path()).map_err(ShadowError::io(e.path()))?;
                report.objects_removed += 1;
                report.bytes_removed += len;
            }
        }
        // Temporaries of this process are in use; others' are left from a crash.
        let mine = format!("{}.", std::process::id());
        if let Ok(entries) = std::fs::read_dir(self.tmp()) {
            for e in entries.flatten() {
                if !e.file_name().to_string_lossy().starts_with(&mine) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(report)
    }

    /// Bytes the shadow directory holds on disk (objects, manifests, logs).
    pub fn disk_usage(&self) -> Result<u64, ShadowError> {
        fn walk(p: &Path) -> io::Result<u64> {
            let mut total = 0;
            for e in std::fs::read_dir(p)? {
                let e = e?;
                let md = e.metadata()?;
                total += if md.is_dir() {
                    walk(&e.path())?
                } else {
                    md.len()
                };
            }
            Ok(total)
        }
        walk(&self.dir).map_err(ShadowError::io(&self.dir))
    }

    // ----- requests from other processes -----

    /// Asks the process following this shadow for a point (`bellwether shadow point`):
    /// writes `requests/NAME.json`; the follower answers in `requests/NAME.done.json` with
    /// the point's manifest (or `requests/NAME.failed` with the error). Returns NAME's path.
    pub fn request_point(&self, reason: &Reason) -> Result<PathBuf, ShadowError> {
        let name = format!(
            "{}-{}",
            Timestamp::now().0,
            objects::temp_name(Path::new(""))
                .to_string_lossy()
                .replace('.', "-")
        );
        let path = self.dir.join("requests").join(format!("{name}.json"));
        write_json(&path, reason)?;
        Ok(path)
    }

    /// Waits up to `timeout` for the answer to a request made by
    /// [`PointStore::request_point`].
    pub fn await_request(
        &self,
        request: &Path,
        timeout: Duration,
    ) -> Result<Option<Manifest>, ShadowError> {
        let stem = request.with_extension("");
        let done = stem.with_extension("done.json");
        let failed = stem.with_extension("failed");
        let start = Instant::now();
        loop {
            if done.exists() {
                let m: Manifest = read_json(&done)?;
                let _ = std::fs::remove_file(&done);
                return Ok(Some(m));
            }
            if failed.exists() {
                let reason = std::fs::read_to_string(&failed).unwrap_or_default();
                let _ = std::fs::remove_file(&failed);
                return Err(ShadowError::Source {
                    source_name: self.meta.source.clone(),
                    reason: format!("the follower could not take the point: {}", reason.trim()),
                });
            }
            if start.elapsed() >= timeout {
                let _ = std::fs::remove_file(request);
                return Ok(None);
            }
            // The answer is a file another process writes; there is no event to wait on
            // short of inotify, so poll (the command is interactive, at most `timeout`).
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Requests waiting for the follower, oldest first: their paths and reasons.
    fn pending_requests(&self) -> Vec<(PathBuf, Result<Reason, String>)> {
        let rdir = self.dir.join("requests");
        let Ok(entries) = std::fs::read_dir(&rdir) else {
            return Vec::new();
        };
        let mut out: Vec<(PathBuf, Result<Reason, String>)> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name().is_some_and(|n| {
                    let n = n.to_string_lossy();
                    n.ends_with(".json") && !n.ends_with(".done.json") && !n.starts_with('.')
                })
            })
            .map(|p| {
                let r = read_json::<Reason>(&p).map_err(|e| e.to_string());
                (p, r)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

trait WriteAtStart {
    fn write_all_at_start(self, bytes: &[u8]) -> io::Result<()>;
}

impl WriteAtStart for &File {
    fn write_all_at_start(self, bytes: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.write_all_at(bytes, 0)
    }
}

/// How many failed steps in a row stop [`super::run`].
const MAX_FAILURES: u32 = 20;

pub(crate) fn run_loop(
    shadow: &mut dyn Shadow,
    points_every: Option<Dur>,
    ctl: &Control,
    on_event: &mut dyn FnMut(&RunEvent),
) -> Result<(), ShadowError> {
    let retention = shadow.store().meta().retention;
    let mut next_point = points_every.map(|d| Instant::now() + d.get());
    let mut failures = 0u32;
    let fail = |failures: &mut u32, e: ShadowError, on_event: &mut dyn FnMut(&RunEvent)| {
        *failures += 1;
        on_event(&RunEvent::Failed(e.to_string()));
        if *failures >= MAX_FAILURES {
            Err(e)
        } else {
            Ok(())
        }
    };
    // `asked`: a point asked for (a `Point` event), or the loop's own image (an `Image`).
    let take = |shadow: &mut dyn Shadow,
                reason: Reason,
                asked: bool,
                on_event: &mut dyn FnMut(&RunEvent)|
     -> Result<Manifest, ShadowError> {
        let m = shadow.take_point(reason)?;
        on_event(&if asked {
            RunEvent::Point(m.clone())
        } else {
            RunEvent::Image(m.clone())
        });
        match shadow.store().thin(&retention, Timestamp::now()) {
            Ok(t) if !t.removed.is_empty() || t.gc.objects_removed > 0 => {
                on_event(&RunEvent::Thinned(t))
            }
            Ok(_) => {}
            Err(e) => on_event(&RunEvent::Failed(format!("retention: {e}"))),
        }
        Ok(m)
    };
    while !ctl.is_stopped() {
        match shadow.sync() {
            Ok(r) => {
                failures = 0;
                if r.commits > 0 || r.bytes > 0 {
                    on_event(&RunEvent::Synced(r));
                }
            }
            Err(e) => fail(&mut failures, e, on_event)?,
        }
        let mut asked: Vec<(Option<PathBuf>, Reason)> =
            ctl.take_requests().into_iter().map(|r| (None, r)).collect();
        for (path, reason) in shadow.store().pending_requests() {
            match reason {
                Ok(r) => asked.push((Some(path), r)),
                Err(e) => {
                    let _ =
                        bellwether_fs::write_atomic(&path.with_extension("failed"), e.as_bytes());
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let due = next_point.is_some_and(|t| Instant::now() >= t);
        if due {
            asked.push((None, Reason::Schedule));
            next_point = points_every.map(|d| Instant::now() + d.get());
        }
        for (path, reason) in asked {
            let result = take(shadow, reason, true, on_event);
            if let Some(path) = path {
                let stem = path.with_extension("");
                match &result {
                    Ok(m) => {
                        let _ = write_json(&stem.with_extension("done.json"), m);
                    }
                    Err(e) => {
                        let _ = bellwether_fs::write_atomic(
                            &stem.with_extension("failed"),
                            e.to_string().as_bytes(),
                        );
                    }
                }
                let _ = std::fs::remove_file(&path);
            }
            if let Err(e) = result {
                fail(&mut failures, e, on_event)?;
            }
        }
        // The image the points from the commit log build on, refreshed after the points
        // asked for (docs/shadow.md, "Points from the commit log").
        if shadow.image_due() {
            if let Err(e) = take(shadow, Reason::Base, false, on_event) {
                fail(&mut failures, e, on_event)?;
            }
        }
        let mut wait = shadow.poll_interval();
        if let Some(t) = next_point {
            wait = wait.min(t.saturating_duration_since(Instant::now()));
        }
        ctl.wait(wait);
    }
    Ok(())
}

/// See [`super::replace_beside`].
pub(crate) fn replace_beside(
    dest: &Path,
    build: impl FnOnce(&Path) -> Result<(), ShadowError>,
) -> Result<(), ShadowError> {
    let name = dest
        .file_name()
        .ok_or_else(|| ShadowError::Unsupported(format!("{} names no file", dest.display())))?
        .to_string_lossy()
        .into_owned();
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let tmp = parent.join(format!(".{name}.bellwether-restore.{}", std::process::id()));
    remove_any(&tmp);
    let cleanup = |e: ShadowError| {
        remove_any(&tmp);
        e
    };
    build(&tmp).map_err(cleanup)?;
    let md = std::fs::symlink_metadata(&tmp).map_err(|e| cleanup(ShadowError::io(&tmp)(e)))?;
    if md.is_dir() {
        if dest.exists() {
            rustix::fs::renameat_with(
                rustix::fs::CWD,
                &tmp,
                rustix::fs::CWD,
                dest,
                rustix::fs::RenameFlags::EXCHANGE,
            )
            .map_err(|e| cleanup(ShadowError::io(dest)(e.into())))?;
            // `tmp` now holds the old tree.
            remove_any(&tmp);
        } else {
            std::fs::rename(&tmp, dest).map_err(|e| cleanup(ShadowError::io(dest)(e)))?;
        }
    } else {
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| cleanup(ShadowError::io(&tmp)(e)))?;
        std::fs::rename(&tmp, dest).map_err(|e| cleanup(ShadowError::io(dest)(e)))?;
    }
    File::open(&parent)
        .and_then(|f| f.sync_all())
        .map_err(ShadowError::io(&parent))?;
    Ok(())
}

fn remove_any(p: &Path) {
    match std::fs::symlink_metadata(p) {
        Ok(md) if md.is_dir() => {
            let _ = std::fs::remove_dir_all(p);
        }
        Ok(_) => {
            let _ = std::fs::remove_file(p);
        }
        Err(_) => {}
    }
}
