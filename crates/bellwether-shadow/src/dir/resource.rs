//! The directory kind's entry points ([`Dir`], a [`Resource`]): a shadow of a directory in a
//! shadow directory's point store, one manifest per point listing every directory, file (its
//! chunks as objects) and link, and the restore of a point over the live directory.
//!
//! A manifest's entries are in walk order; the first, `.`, is the root directory itself (its
//! mode and modification time). Modification times are kept to the microsecond (the point
//! store's [`Timestamp`]). Names and link targets must be UTF-8 (the manifest is JSON text): a
//! point of a directory holding another name fails and names it.
//!
//! Change detection for differential points keeps the last point's walk (with each file's
//! stamp) in `SHADOW_DIR/dir-index.json`, the directory kind's own file; without it (or when
//! it belongs to another point) the next point reads every file, as a full one does.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::point::{
    Entry as PEntry, EntryKind, Manifest, ObjectId, ObjectRef, PointDraft, PointId, PointStore,
    Position, Reason, Resource, ResourceKind, RestoreReport, RestoreRequest, Shadow, ShadowError,
    ShadowMeta, ShadowOptions, ShadowType, Source, SyncReport, Timestamp, FORMAT,
};

use super::tree::{ChunkRef, Entry, LinkTarget, Node, RelPath, Tree, TREE_FORMAT};
use super::walk::walk;
use super::{check_shadow_outside, restore_tree, DirError, ObjectStore, WalkStats};

/// The directory entry points.
#[derive(Debug, Clone, Copy, Default)]
pub struct Dir;

impl Resource for Dir {
    fn kind(&self) -> ResourceKind {
        ResourceKind::Dir
    }

    fn start(&self, opts: &ShadowOptions) -> Result<Box<dyn Shadow>, ShadowError> {
        Ok(Box::new(DirShadow::start(opts)?))
    }

    fn restore(&self, req: &RestoreRequest) -> Result<RestoreReport, ShadowError> {
        restore(req)
    }
}

impl ObjectStore for PointStore {
    fn contains(&self, id: &str) -> io::Result<bool> {
        let id: ObjectId = id.parse().map_err(io::Error::other)?;
        Ok(self.has_object(&id))
    }

    fn put(&self, id: &str, bytes: &[u8]) -> io::Result<bool> {
        let (r, new) = self.put_object(bytes).map_err(io::Error::other)?;
        if r.id.hex() != id {
            return Err(io::Error::other(format!(
                "the store named chunk {id} {}",
                r.id.hex()
            )));
        }
        Ok(new)
    }

    fn get(&self, id: &str) -> io::Result<Vec<u8>> {
        let oid: ObjectId = id.parse().map_err(io::Error::other)?;
        let stored = std::fs::read(self.object_path(&oid))?;
        if crate::delta::chunk_patch(&stored).is_none_or(|_| ObjectId::of(&stored) == oid) {
            return Ok(stored);
        }
        // A patched chunk: its length is not in the object, but the patch says it.
        let body = crate::delta::chunk_patch(&stored).map_or(stored.len(), |p| p.body);
        let len = crate::delta::patched_len(&stored[body..])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        let r = ObjectRef { id: oid, len };
        crate::delta::chunk_bytes(self.dir(), &r, stored).map_err(|why| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("stored as a patch: {why}"),
            )
        })
    }

    fn put_over(&self, id: &str, bytes: &[u8], old: &[(&ChunkRef, i64)]) -> io::Result<u64> {
        let r = ObjectRef {
            id: id.parse().map_err(io::Error::other)?,
            len: bytes.len() as u64,
        };
        let how = (
            crate::delta::PatchKind::Ranges,
            usize::from(crate::delta::CHUNK_CHAIN),
        );
        match self.put_patched(&r, bytes, bases_over(old, bytes.len()), how) {
            Ok(Some(stored)) => return Ok(stored),
            Ok(None) => {}
            Err(e) => return Err(io::Error::other(e)),
        }
        Ok(if self.put(id, bytes)? {
            bytes.len() as u64
        } else {
            0
        })
    }
}

/// The bases of a new chunk of `len` bytes patched against the chunks of the file's previous
/// version it overlaps (`old`: each with the new chunk's offset in the file minus its own):
/// each old chunk is a base over the range of the new chunk it overlaps, so the reference is
/// the old file's bytes at the new chunk's place ([`PointStore::patch_against`]).
fn bases_over(old: &[(&ChunkRef, i64)], len: usize) -> Vec<crate::delta::ChunkBase> {
    let len = len as i64;
    old.iter()
        .filter_map(|(c, shift)| {
            let from = shift.checked_neg()?.clamp(0, len);
            let to = i64::from(c.len).checked_sub(*shift)?.clamp(0, len);
            (from < to).then_some(crate::delta::ChunkBase {
                base: ObjectRef {
                    id: c.id.parse().ok()?,
                    len: u64::from(c.len),
                },
                shift: *shift,
                from: from as u32,
                to: to as u32,
            })
        })
        .collect()
}

/// `dir-index.json`: the last point's walk, for change detection.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct IndexFile {
    seq: u64,
    tree: Tree,
}

/// A running shadow of one directory.
#[derive(Debug)]
pub struct DirShadow {
    store: PointStore,
    root: PathBuf,
    differential: bool,
    last: Option<(u64, Tree)>,
    /// What the last point's walk did (for the CLI and the benchmarks).
    pub last_walk: Option<WalkStats>,
}

fn source_error(path: &Path, e: DirError) -> ShadowError {
    match e {
        DirError::Io { path, source, .. } => ShadowError::Io { path, source },
        other => ShadowError::Source {
            source_name: path.display().to_string(),
            reason: other.to_string(),
        },
    }
}

impl DirShadow {
    /// Opens or creates the shadow of `opts.source` (a directory) and takes its base point
    /// when it has none.
    pub fn start(opts: &ShadowOptions) -> Result<DirShadow, ShadowError> {
        let Source::Path(src) = &opts.source else {
            return Err(ShadowError::Unsupported(
                "a directory shadow follows a path (--path DIR), not a URL".into(),
            ));
        };
        let differential = match opts.shadow_type {
            ShadowType::Full => false,
            ShadowType::Differential => true,
            ShadowType::Transactional => {
                return Err(ShadowError::Unsupported(format!(
                "{}: a plain directory has no commits to follow; use --type full or differential",
                src.display()
            )))
            }
        };
        // The walk refuses a link or a file as the root; say so before creating anything.
        let fd = super::walk::open_root(src).map_err(|e| source_error(src, e))?;
        drop(fd);
        let root = super::resolve(src);
        check_shadow_outside(&root, &opts.dir).map_err(|e| source_error(&root, e))?;
        let mut store = PointStore::create(
            &opts.dir,
            ShadowMeta {
                format: FORMAT,
                kind: ResourceKind::Dir,
                source: root.display().to_string(),
                shadow_type: opts.shadow_type,
                created_at: Timestamp::now(),
                retention: opts.retention,
            },
        )?;
        store.lock_writer()?;
        let last = load_index(&store);
        let mut s = DirShadow {
            store,
            root,
            differential,
            last,
            last_walk: None,
        };
        if s.store.points()?.is_empty() {
            s.take_point(Reason::Base)?;
        }
        Ok(s)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

fn load_index(store: &PointStore) -> Option<(u64, Tree)> {
    let text = std::fs::read(store.dir().join("dir-index.json")).ok()?;
    let idx: IndexFile = serde_json::from_slice(&text).ok()?;
    let head = store.points().ok()?.last()?.seq;
    (idx.seq == head && idx.tree.validate().is_ok()).then_some((idx.seq, idx.tree))
}

impl Shadow for DirShadow {
    fn store(&self) -> &PointStore {
        &self.store
    }

    /// A directory has no change stream to follow between points: the work is done by the
    /// walk of each point, so a sync does nothing.
    fn sync(&mut self) -> Result<SyncReport, ShadowError> {
        Ok(SyncReport::default())
    }

    fn take_point(&mut self, reason: Reason) -> Result<Manifest, ShadowError> {
        let taken_at = Timestamp::now();
        let prev = if self.differential {
            self.last.as_ref().map(|(_, t)| t)
        } else {
            None
        };
        let (tree, stats) =
            walk(&self.root, prev, &self.store).map_err(|e| source_error(&self.root, e))?;
        let consistent_at = Timestamp::now();
        let entries = tree_to_entries(&tree).map_err(|reason| ShadowError::Source {
            source_name: self.root.display().to_string(),
            reason,
        })?;
        let m = self.store.commit_point(PointDraft {
            taken_at,
            consistent_at,
            reason,
            position: Position::Dir {
                files: stats.files,
                bytes: tree.data_bytes(),
            },
            entries,
            new_bytes: stats.new_bytes,
        })?;
        let idx = IndexFile { seq: m.seq, tree };
        let json = serde_json::to_vec(&idx).map_err(|e| ShadowError::BadFile {
            path: self.store.dir().join("dir-index.json"),
            reason: e.to_string(),
        })?;
        // Only a cache: a failure to keep it costs the next point a full read.
        let _ = bellwether_fs::write_atomic(&self.store.dir().join("dir-index.json"), &json);
        self.last = Some((idx.seq, idx.tree));
        self.last_walk = Some(stats);
        Ok(m)
    }

    fn poll_interval(&self) -> Duration {
        Duration::from_secs(1)
    }
}

fn ns_to_ts(ns: i64) -> Timestamp {
    Timestamp::from_micros(ns.div_euclid(1000))
}

fn utf8(b: &[u8], what: &str) -> Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|_| {
        format!(
            "{what} {:?} is not UTF-8; a directory point keeps UTF-8 names and link targets only",
            String::from_utf8_lossy(b)
        )
    })
}

/// A walk's tree as a manifest's entries (the root first, as `.`).
pub fn tree_to_entries(tree: &Tree) -> Result<Vec<PEntry>, String> {
    let mut out = Vec::with_capacity(tree.entries.len() + 1);
    out.push(PEntry {
        path: ".".into(),
        kind: EntryKind::Dir,
        mode: tree.root_mode,
        size: 0,
        mtime: Some(ns_to_ts(tree.root_mtime_ns)),
        objects: Vec::new(),
    });
    for e in &tree.entries {
        let path = utf8(e.path.as_bytes(), "name")?;
        out.push(match &e.node {
            Node::Dir { mode, mtime_ns } => PEntry {
                path,
                kind: EntryKind::Dir,
                mode: *mode,
                size: 0,
                mtime: Some(ns_to_ts(*mtime_ns)),
                objects: Vec::new(),
            },
            Node::File {
                mode,
                mtime_ns,
                size,
                chunks,
                ..
            } => PEntry {
                path,
                kind: EntryKind::File,
                mode: *mode,
                size: *size,
                mtime: Some(ns_to_ts(*mtime_ns)),
                objects: chunks
                    .iter()
                    .map(|c| {
                        Ok(ObjectRef {
                            id: c.id.parse().map_err(|e| format!("chunk {}: {e}", c.id))?,
                            len: u64::from(c.len),
                        })
                    })
                    .collect::<Result<_, String>>()?,
            },
            Node::Symlink { target, mtime_ns } => PEntry {
                path,
                kind: EntryKind::Symlink {
                    target: utf8(&target.0, "link target")?,
                },
                mode: 0o777,
                size: 0,
                mtime: Some(ns_to_ts(*mtime_ns)),
                objects: Vec::new(),
            },
        });
    }
    Ok(out)
}

/// A manifest's entries back as a tree, checked ([`Tree::validate`]).
pub fn tree_from_manifest(m: &Manifest) -> Result<Tree, String> {
    let mut it = m.entries.iter();
    let root = it
        .next()
        .filter(|e| e.path == "." && e.kind == EntryKind::Dir)
        .ok_or("its first entry is not the root directory `.`")?;
    let us = |t: Option<Timestamp>| t.map_or(0, |t| t.as_micros().saturating_mul(1000));
    let mut entries = Vec::with_capacity(m.entries.len());
    for e in it {
        let path = RelPath(e.path.as_bytes().to_vec());
        let node = match &e.kind {
            EntryKind::Dir => Node::Dir {
                mode: e.mode,
                mtime_ns: us(e.mtime),
            },
            EntryKind::File => Node::File {
                mode: e.mode,
                mtime_ns: us(e.mtime),
                size: e.size,
                sha256: None,
                chunks: e
                    .objects
                    .iter()
                    .map(|o| {
                        Ok(ChunkRef {
                            id: o.id.hex(),
                            len: u32::try_from(o.len)
                                .map_err(|_| format!("{}: a chunk of {} bytes", e.path, o.len))?,
                        })
                    })
                    .collect::<Result<_, String>>()?,
                stamp: None,
                read_at_ns: 0,
            },
            EntryKind::Symlink { target } => Node::Symlink {
                target: LinkTarget(target.as_bytes().to_vec()),
                mtime_ns: us(e.mtime),
            },
        };
        entries.push(Entry { path, node });
    }
    let tree = Tree {
        format: TREE_FORMAT,
        root_mode: root.mode,
        root_mtime_ns: us(root.mtime),
        entries,
    };
    tree.validate()?;
    Ok(tree)
}

/// Restores a directory shadow's point over `req.dest` (see [`Resource::restore`]).
pub fn restore(req: &RestoreRequest) -> Result<RestoreReport, ShadowError> {
    let started = Instant::now();
    let store = PointStore::open(&req.dir)?;
    let dest = super::resolve(&req.dest);
    let meta = store.meta();
    if meta.kind != ResourceKind::Dir
        || (!req.elsewhere && meta.source != dest.display().to_string())
    {
        return Err(ShadowError::OtherResource {
            dir: req.dir.clone(),
            shadows: format!("{} {}", meta.kind, meta.source),
            asked: format!("dir {}", dest.display()),
        });
    }
    // A restore swaps the whole destination: a shadow inside it would go with the old tree.
    check_shadow_outside(&dest, &req.dir).map_err(|e| source_error(&dest, e))?;
    let found = store.find(&req.target)?;
    // Held until the restore is done: retention cannot remove the point or its objects.
    let _lease = store.lease(found.id())?;
    let m = store.point(found.id())?;
    store.verify_point(&m)?;
    let tree = tree_from_manifest(&m).map_err(|reason| ShadowError::DamagedPoint {
        dir: req.dir.clone(),
        id: m.id(),
        reason,
    })?;
    let r = restore_tree(&tree, &store, &req.dest)
        .map_err(|e| restore_error(&store, m.id(), &req.dest, e))?;
    Ok(RestoreReport {
        dest: req.dest.clone(),
        point: m.id(),
        point_taken_at: m.taken_at,
        restored_to: m.consistent_at,
        commits_replayed: 0,
        bytes: r.bytes,
        checks: vec![format!(
            "checksums ({} chunks of {} files)",
            r.chunks_verified, r.files
        )],
        elapsed_ms: started.elapsed().as_millis() as u64,
    })
}

fn restore_error(store: &PointStore, point: PointId, dest: &Path, e: DirError) -> ShadowError {
    let object = |id: &str| id.parse::<ObjectId>().ok();
    match e {
        DirError::ChunkMissing { id, file } => match object(&id) {
            Some(object) => ShadowError::BadObject {
                dir: store.dir().to_path_buf(),
                point,
                object,
                what: format!("missing (a chunk of {file}); the live directory was not changed"),
            },
            None => ShadowError::DamagedPoint {
                dir: store.dir().to_path_buf(),
                id: point,
                reason: format!("chunk name {id:?} of {file}"),
            },
        },
        DirError::ChunkDamaged { id, file, detail } => match object(&id) {
            Some(object) => ShadowError::BadObject {
                dir: store.dir().to_path_buf(),
                point,
                object,
                what: format!(
                    "damaged (a chunk of {file}: {detail}); the live directory was not changed"
                ),
            },
            None => ShadowError::DamagedPoint {
                dir: store.dir().to_path_buf(),
                id: point,
                reason: format!("chunk name {id:?} of {file}"),
            },
        },
        DirError::BadTree { detail } => ShadowError::DamagedPoint {
            dir: store.dir().to_path_buf(),
            id: point,
            reason: detail,
        },
        DirError::FileDamaged {
            file,
            expected,
            got,
        } => ShadowError::Verify {
            dest: dest.to_path_buf(),
            check: "checksums".into(),
            reason: format!("{file} hashes to {got}, the point says {expected}"),
        },
        DirError::Io { path, source, .. } => ShadowError::Io { path, source },
        other => ShadowError::Source {
            source_name: dest.display().to_string(),
            reason: other.to_string(),
        },
    }
}
