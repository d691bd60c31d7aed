//! Base backups and how files go into and out of the point store.
//!
//! A base backup is `pg_basebackup` in plain format with its WAL streamed alongside (`-X
//! stream`), so each is consistent on its own, and a `backup_manifest` (SHA-256 per file)
//! that `pg_verifybackup` checks on the restored copy. It is written into the store's `tmp/`
//! and then taken into the store: a file of at most [`CHUNK`] bytes as one object, a larger
//! one as fixed [`CHUNK`]-byte objects, each stored zstd-compressed where that saves an
//! eighth (WAL full of full-page images shrinks about tenfold), so that relation files that changed
//! in a few pages, WAL segments that grew, and the zeros of a segment `pg_receivewal` has not
//! filled yet are stored once across points.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use crate::point::{Entry, EntryKind, ObjectId, ObjectRef, PointId, PointStore, ShadowError};

use super::proc::run;
use super::{now_us, Lsn, PgShadowError};

/// Objects are at most this long (1 MiB: 128 pages of 8 kB, 1/16 of a WAL segment).
pub(crate) const CHUNK: usize = 1 << 20;

/// What a finished base backup needs: the WAL from `start_lsn` to `end_lsn` on `timeline`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct BaseInfo {
    pub timeline: u32,
    pub start_lsn: Lsn,
    pub end_lsn: Lsn,
    pub started_us: i64,
    pub finished_us: i64,
}

/// Takes a base backup of `url` into `dir` (which must not exist).
pub(crate) async fn take(
    bindir: &Path,
    url: &str,
    dir: &Path,
    limit: Duration,
) -> Result<BaseInfo, PgShadowError> {
    let started_us = now_us();
    let argv = vec![
        bindir.join("pg_basebackup").display().to_string(),
        "-d".into(),
        url.to_string(),
        "-D".into(),
        dir.display().to_string(),
        "-F".into(),
        "p".into(),
        "-X".into(),
        "stream".into(),
        "-c".into(),
        "fast".into(),
        "--manifest-checksums=SHA256".into(),
    ];
    run(
        &argv,
        &[("PGAPPNAME", "bellwether_base_backup")],
        "base backup of the primary",
        limit,
    )
    .await?;
    let finished_us = now_us();
    let (timeline, start_lsn, end_lsn) = manifest_range(
        &std::fs::read(dir.join("backup_manifest"))
            .map_err(|e| PgShadowError::io("reading", &dir.join("backup_manifest"), e))?,
    )
    .map_err(|m| PgShadowError::Io {
        what: format!("reading {}", dir.join("backup_manifest").display()),
        message: m,
    })?;
    Ok(BaseInfo {
        timeline,
        start_lsn,
        end_lsn,
        started_us,
        finished_us,
    })
}

/// The timeline and WAL range a base needs, from its `backup_manifest` (`WAL-Ranges`).
pub(crate) fn manifest_range(bytes: &[u8]) -> Result<(u32, Lsn, Lsn), String> {
    #[derive(serde::Deserialize)]
    struct Range {
        #[serde(rename = "Timeline")]
        timeline: u32,
        #[serde(rename = "Start-LSN")]
        start: Lsn,
        #[serde(rename = "End-LSN")]
        end: Lsn,
    }
    #[derive(serde::Deserialize)]
    struct Manifest {
        #[serde(rename = "WAL-Ranges")]
        wal_ranges: Vec<Range>,
    }
    let m: Manifest = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let first = m.wal_ranges.first().ok_or("no WAL-Ranges entry")?;
    let last = m.wal_ranges.last().unwrap_or(first);
    Ok((last.timeline, first.start, last.end))
}

/// Takes the tree under `root` into the store as entries under `prefix` (`""` for the data
/// directory's root). Files are read into objects, and removed as they are when `adopt`
/// (the tree is the store's temporary). Returns the entries (sorted by path) and the bytes newly stored.
///
/// `previous` (a path's objects in the previous base backup) lets a file's changed chunks be
/// stored as patches against the chunk at the same place in that backup ([`Previous`]).
pub(crate) fn store_tree(
    store: &PointStore,
    root: &Path,
    adopt: bool,
    previous: &Previous,
) -> Result<(Vec<Entry>, u64), ShadowError> {
    let mut entries = Vec::new();
    let mut new_bytes = 0;
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((path, rel)) = stack.pop() {
        let md = std::fs::symlink_metadata(&path).map_err(ShadowError::io(&path))?;
        let mode = md.permissions().mode() & 0o7777;
        if md.is_dir() {
            if !rel.is_empty() {
                entries.push(Entry {
                    path: rel.clone(),
                    kind: EntryKind::Dir,
                    mode,
                    size: 0,
                    mtime: None,
                    objects: Vec::new(),
                });
            }
            for e in std::fs::read_dir(&path).map_err(ShadowError::io(&path))? {
                let e = e.map_err(ShadowError::io(&path))?;
                let name = e.file_name().to_string_lossy().into_owned();
                let child = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                stack.push((e.path(), child));
            }
        } else if md.file_type().is_symlink() {
            let target = std::fs::read_link(&path).map_err(ShadowError::io(&path))?;
            entries.push(Entry {
                path: rel,
                kind: EntryKind::Symlink {
                    target: target.to_string_lossy().into_owned(),
                },
                mode,
                size: 0,
                mtime: None,
                objects: Vec::new(),
            });
        } else {
            let prev = previous.objects_of(&rel);
            let (entry, n) = store_file(store, &path, rel, mode, adopt, prev)?;
            new_bytes += n;
            entries.push(entry);
        }
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok((entries, new_bytes))
}

/// The previous base backup's files, by path: a new base backup's chunk that changed is
/// stored as a patch against the chunk at the same place of the same file there
/// ([`PointStore::put_patched`]), where a page or a row changed but not the rest (the 1 MiB
/// chunk of a relation file holds 128 pages; an update changes a few hundred bytes of one).
/// A PostgreSQL full point is a new base backup each time, so this is what keeps it near the
/// bytes that changed rather than the chunks they fell in.
#[derive(Debug, Default)]
pub(crate) struct Previous(std::collections::HashMap<String, Vec<ObjectRef>>);

impl Previous {
    /// The files of a base point's entries (its WAL staged for recovery left out).
    pub(crate) fn of(entries: &[Entry]) -> Previous {
        Previous(
            entries
                .iter()
                .filter(|e| matches!(e.kind, EntryKind::File))
                .filter(|e| !e.path.starts_with(super::shadow::WAL_PREFIX))
                .map(|e| (e.path.clone(), e.objects.clone()))
                .collect(),
        )
    }

    fn objects_of(&self, path: &str) -> &[ObjectRef] {
        self.0.get(path).map_or(&[], Vec::as_slice)
    }
}

/// Where [`clear_before`] keeps a segment's bytes: from multiples of this (every WAL block
/// size PostgreSQL can be built with divides it, so the block holding the backup's start is
/// kept whole).
const KEEP_ALIGN: u64 = 64 << 10;

/// Zeroes what a base backup's WAL holds from before the backup began: `pg_basebackup -X
/// stream` streams from the start of the segment that holds the backup's start, so its first
/// segment carries up to a segment of earlier WAL (mostly full-page images after a
/// checkpoint) that neither recovery nor `pg_verifybackup` reads: both start at the backup's
/// start (`START WAL LOCATION`). The segment's first block is kept (a reader checks its long
/// header whenever it opens the segment), and everything from the block that holds the
/// start on. Zeros are stored once ([`zero_chunk`]), so a full point no longer stores that
/// earlier WAL again each time.
pub(crate) fn clear_before(root: &Path, start: Lsn, seg: u64) -> Result<(), ShadowError> {
    use std::os::unix::fs::FileExt;
    let wal = root.join("pg_wal");
    let keep_from = start.0 - start.0 % KEEP_ALIGN;
    let entries = match std::fs::read_dir(&wal) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ShadowError::io(&wal)(e)),
    };
    for e in entries {
        let e = e.map_err(ShadowError::io(&wal))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(s) = super::lsn::SegmentName::parse(&name, seg) else {
            continue;
        };
        let begins = s.segno * seg;
        if begins + KEEP_ALIGN >= keep_from {
            continue;
        }
        let path = e.path();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(ShadowError::io(&path))?;
        let upto = (keep_from - begins).min(seg);
        let zeros = vec![0u8; CHUNK];
        let mut at = KEEP_ALIGN;
        while at < upto {
            let n = (upto - at).min(CHUNK as u64) as usize;
            f.write_all_at(&zeros[..n], at)
                .map_err(ShadowError::io(&path))?;
            at += n as u64;
        }
    }
    Ok(())
}

/// How [`store_chunks`] stores a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Put {
    /// Compressed at zstd's default level, synced by the next point.
    Compressed,
    /// Compressed at zstd's faster level, synced by the next point.
    Fast,
    /// As it is, synced by no point ([`PointStore::put_object_unsynced`]): the caller
    /// settles it, and can rebuild it from the file it was read from.
    Unsynced,
}

/// What [`store_chunks`] may store a chunk as a patch against.
pub(crate) enum Against<'a> {
    /// Nothing: each chunk whole (compressed where `put` says).
    Nothing,
    /// Chunk `i` against `previous[i]` where that names another chunk and a patch is worth
    /// it ([`Previous`]).
    Previous(&'a [ObjectRef]),
    /// Chunk `i` as `encode(i, bytes)` gives it where it gives one (a WAL chunk against the
    /// base's pages, [`super::pages`]), when `put` is [`Put::Compressed`].
    Encode(ChunkEncoder<'a>),
}

/// Gives chunk `i`'s bytes another way to be stored ([`Against::Encode`]).
pub(crate) type ChunkEncoder<'a> = &'a mut dyn FnMut(usize, &[u8]) -> Option<Vec<u8>>;

/// Stores chunks `from..upto` of the open file `f` (`path` names it in errors), each cut at
/// byte `end` of the file (fewer, or a shorter last one, where the file or `end` comes
/// first), as `put` says. Returns their objects and the bytes new to the store. Reads by
/// offset, so the file may be renamed meanwhile (`pg_receivewal` renames `NAME.partial` to
/// `NAME` once it is complete).
///
/// Chunks may be stored as patches ([`Against`]).
pub(crate) fn store_chunks(
    store: &PointStore,
    f: &std::fs::File,
    path: &Path,
    (from, upto): (usize, usize),
    end: u64,
    put: Put,
    mut against: Against<'_>,
) -> Result<(Vec<ObjectRef>, u64), ShadowError> {
    let previous = match &against {
        Against::Previous(p) => *p,
        _ => &[],
    };
    use std::os::unix::fs::FileExt;
    let mut objects = Vec::new();
    let mut new_bytes = 0;
    if from >= upto {
        return Ok((objects, 0));
    }
    let mut buf = vec![0u8; CHUNK];
    for i in from..upto {
        let at = (i * CHUNK) as u64;
        let want = end.saturating_sub(at).min(CHUNK as u64) as usize;
        let mut n = 0;
        while n < want {
            match f.read_at(&mut buf[n..want], at + n as u64) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ShadowError::io(path)(e)),
            }
        }
        if n == 0 {
            break;
        }
        if let Some(prev) = previous.get(i) {
            if let Some((r, stored)) = put_against(store, &buf[..n], prev)? {
                new_bytes += stored;
                objects.push(r);
                if n < CHUNK {
                    break;
                }
                continue;
            }
        }
        // Another way to store it (a WAL chunk as a patch against the base's pages).
        // Hashed only when it is one (`put_chunk` hashes the others).
        if let (Put::Compressed, Against::Encode(encode)) = (put, &mut against) {
            if let Some(stored) = encode(i, &buf[..n]) {
                let r = ObjectRef {
                    id: ObjectId::of(&buf[..n]),
                    len: n as u64,
                };
                new_bytes += store.put_encoded(&r, &stored)?;
                objects.push(r);
                if n < CHUNK {
                    break;
                }
                continue;
            }
        }
        let (r, new) = match put {
            Put::Unsynced => store.put_object_unsynced(&buf[..n])?,
            Put::Fast if !is_zero(&buf[..n]) => store.put_object_compressed_fast(&buf[..n])?,
            _ => put_chunk(store, &buf[..n])?,
        };
        if new {
            new_bytes += r.len;
        }
        objects.push(r);
        if n < CHUNK {
            break;
        }
    }
    Ok((objects, new_bytes))
}

/// A WAL segment `pg_receivewal` wrote: complete (`NAME`), or still being written
/// (`NAME.partial`, renamed to `NAME` once complete, so it is looked for again under that
/// name if it is gone). `None` if neither exists.
pub(crate) fn open_segment(
    complete: &Path,
    partial: &Path,
) -> Result<Option<(std::fs::File, bool)>, ShadowError> {
    use std::io::ErrorKind::NotFound;
    for (path, is_complete) in [(complete, true), (partial, false), (complete, true)] {
        match std::fs::File::open(path) {
            Ok(f) => return Ok(Some((f, is_complete))),
            Err(e) if e.kind() == NotFound => {}
            Err(e) => return Err(ShadowError::io(path)(e)),
        }
    }
    Ok(None)
}

/// The object of `len` zero bytes (stored if the store lacks it): what a point records for
/// the part of the segment being written that lies past the point's WAL. Those bytes are
/// not read: `pg_receivewal` fills a new segment with zeros and writes the stream over
/// them, and a restore to the point reads no WAL past it.
pub(crate) fn zero_chunk(store: &PointStore, len: usize) -> Result<ObjectRef, ShadowError> {
    let r = ObjectRef {
        id: zeros_id(),
        len: CHUNK as u64,
    };
    if len == CHUNK && store.has_object(&r.id) {
        return Ok(r);
    }
    Ok(put_chunk(store, &vec![0u8; len])?.0)
}

/// The id of [`CHUNK`] zero bytes (hashed once).
fn zeros_id() -> ObjectId {
    static ZEROS: std::sync::OnceLock<ObjectId> = std::sync::OnceLock::new();
    *ZEROS.get_or_init(|| ObjectId::of(&vec![0u8; CHUNK]))
}

pub(crate) fn store_file(
    store: &PointStore,
    path: &Path,
    rel: String,
    mode: u32,
    adopt: bool,
    previous: &[ObjectRef],
) -> Result<(Entry, u64), ShadowError> {
    let size = std::fs::metadata(path)
        .map_err(ShadowError::io(path))?
        .len();
    let mut objects = Vec::new();
    let mut new_bytes = 0;
    if size as usize <= CHUNK {
        // Read whole and stored compressed (a catalog, a small relation, a label).
        let bytes = std::fs::read(path).map_err(ShadowError::io(path))?;
        let patched = match previous.first() {
            Some(prev) => put_against(store, &bytes, prev)?,
            None => None,
        };
        let (r, new) = match patched {
            Some((r, stored)) => {
                new_bytes += stored;
                (r, false)
            }
            None => store.put_object_compressed(&bytes)?,
        };
        if adopt {
            std::fs::remove_file(path).map_err(ShadowError::io(path))?;
        }
        if new {
            new_bytes += r.len;
        }
        objects.push(r);
    } else {
        let f = std::fs::File::open(path).map_err(ShadowError::io(path))?;
        let (o, n) = store_chunks(
            store,
            &f,
            path,
            (0, usize::MAX),
            u64::MAX,
            Put::Compressed,
            Against::Previous(previous),
        )?;
        objects = o;
        new_bytes += n;
        if adopt {
            std::fs::remove_file(path).map_err(ShadowError::io(path))?;
        }
    }
    let size = objects.iter().map(|o| o.len).sum();
    Ok((
        Entry {
            path: rel,
            kind: EntryKind::File,
            mode,
            size,
            mtime: None,
            objects,
        },
        new_bytes,
    ))
}

/// Stores `bytes` as a patch against `prev` (the same place in the previous base backup)
/// where that is worth it: its reference and the bytes stored (0 when the store holds it
/// already, as the same chunk or another file's). `None` when it is stored some other way:
/// a chunk of zeros, or one no patch shrinks (the caller stores it whole, compressed).
fn put_against(
    store: &PointStore,
    bytes: &[u8],
    prev: &ObjectRef,
) -> Result<Option<(ObjectRef, u64)>, ShadowError> {
    if is_zero(bytes) {
        return Ok(None);
    }
    let r = ObjectRef {
        id: ObjectId::of(bytes),
        len: bytes.len() as u64,
    };
    if r.id == prev.id {
        return Ok(Some((r, 0)));
    }
    let base = crate::delta::ChunkBase {
        base: *prev,
        shift: 0,
        from: 0,
        to: bytes.len().min(prev.len as usize) as u32,
    };
    if base.to == 0 {
        return Ok(None);
    }
    // Against the newest whole version of the chunk (a patch's own base, where the last
    // backup's chunk is a patch): a restore reads two objects for it, never a chain.
    let how = (crate::delta::PatchKind::Zstd, 1);
    Ok(store
        .put_patched(&r, bytes, vec![base], how)?
        .map(|stored| (r, stored)))
}

/// Stores one chunk. A chunk of zeros (most of a WAL segment `pg_receivewal` has just
/// begun) is not hashed again once its object exists: its SHA-256 is computed once.
fn put_chunk(store: &PointStore, chunk: &[u8]) -> Result<(ObjectRef, bool), ShadowError> {
    if chunk.len() == CHUNK && is_zero(chunk) {
        let id = zeros_id();
        if store.has_object(&id) {
            return Ok((
                ObjectRef {
                    id,
                    len: CHUNK as u64,
                },
                false,
            ));
        }
    }
    store.put_object_compressed(chunk)
}

fn is_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|b| *b == 0)
}

/// Writes `entries` of point `point` under `dest` (which must not exist), every object's
/// hash checked as it is read, noting in `copies` each file it writes: a WAL chunk stored as
/// a patch against base pages (written later in the same call, or by the caller while
/// `copies` lives and nothing else touches the files) reads those pages from them.
pub(crate) fn materialize_noting(
    store: &PointStore,
    point: PointId,
    entries: &[Entry],
    dest: &Path,
    copies: &mut crate::point::Copies<'_>,
) -> Result<u64, ShadowError> {
    std::fs::create_dir(dest).map_err(ShadowError::io(dest))?;
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o700))
        .map_err(ShadowError::io(dest))?;
    let mut bytes = 0;
    // Where the store and `dest` share a file system that clones, multi-object files are
    // assembled from reflinks of their objects instead of being written byte by byte.
    let clones = store.clones_into(dest);
    for e in entries {
        if e.path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(ShadowError::DamagedPoint {
                dir: store.dir().to_path_buf(),
                id: point,
                reason: format!("entry path {:?} leaves the data directory", e.path),
            });
        }
        let path = dest.join(&e.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(ShadowError::io(parent))?;
        }
        match &e.kind {
            EntryKind::Dir => {
                if !path.is_dir() {
                    std::fs::create_dir(&path).map_err(ShadowError::io(&path))?;
                }
            }
            EntryKind::Symlink { target } => {
                std::os::unix::fs::symlink(target, &path).map_err(ShadowError::io(&path))?;
                continue;
            }
            EntryKind::File => {
                if e.objects.len() == 1 {
                    store.clone_object_into(point, &e.objects[0], &path)?;
                } else if clones {
                    store.clone_objects_into(point, &e.objects, &path)?;
                } else {
                    use std::io::Write;
                    let mut out = std::fs::File::create(&path).map_err(ShadowError::io(&path))?;
                    for r in &e.objects {
                        let b = store.read_object(point, r)?;
                        out.write_all(&b).map_err(ShadowError::io(&path))?;
                    }
                }
                bytes += e.size;
                copies.add(&path, &e.objects);
            }
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(e.mode))
            .map_err(ShadowError::io(&path))?;
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segment_is_opened_under_either_name_and_read_by_offset_across_its_rename() {
        let t = tempfile::tempdir().unwrap();
        let complete = t.path().join("000000010000000000000003");
        let partial = t.path().join("000000010000000000000003.partial");
        assert!(open_segment(&complete, &partial).unwrap().is_none());
        let mut bytes = vec![0u8; 2 * CHUNK + 10];
        bytes[..7].copy_from_slice(b"record1");
        std::fs::write(&partial, &bytes).unwrap();
        let (f, is_complete) = open_segment(&complete, &partial).unwrap().unwrap();
        assert!(!is_complete);
        // `pg_receivewal` completes the segment while it is being read: the open file is
        // read on, by offset, whatever its name.
        std::fs::rename(&partial, &complete).unwrap();
        let mut s = crate::point::PointStore::create(
            &t.path().join("shadow"),
            crate::point::ShadowMeta {
                format: crate::point::FORMAT,
                kind: crate::point::ResourceKind::Postgres,
                source: "postgres://x@h/db".into(),
                shadow_type: crate::ShadowType::Transactional,
                created_at: crate::point::Timestamp(0),
                retention: crate::point::Retention::default(),
            },
        )
        .unwrap();
        s.lock_writer().unwrap();
        let (objects, _) = store_chunks(
            &s,
            &f,
            &partial,
            (0, 8),
            u64::MAX,
            Put::Compressed,
            Against::Nothing,
        )
        .unwrap();
        let lens: Vec<u64> = objects.iter().map(|o| o.len).collect();
        assert_eq!(
            lens,
            vec![CHUNK as u64, CHUNK as u64, 10],
            "stops at the file's end"
        );
        assert_eq!(objects[0].id, ObjectId::of(&bytes[..CHUNK]));
        assert_eq!(
            objects[1].id,
            zeros_id(),
            "a chunk of zeros is the zero chunk"
        );
        // A chunk range past the end stores nothing; the complete name is found now.
        assert!(store_chunks(
            &s,
            &f,
            &partial,
            (5, 8),
            u64::MAX,
            Put::Fast,
            Against::Nothing
        )
        .unwrap()
        .0
        .is_empty());
        // Cut at a byte: the chunk it falls in is stored up to it.
        let (cut, _) = store_chunks(
            &s,
            &f,
            &partial,
            (0, 8),
            CHUNK as u64 + 5,
            Put::Unsynced,
            Against::Nothing,
        )
        .unwrap();
        let lens: Vec<u64> = cut.iter().map(|o| o.len).collect();
        assert_eq!(lens, vec![CHUNK as u64, 5]);
        assert_eq!(cut[1].id, ObjectId::of(&bytes[CHUNK..CHUNK + 5]));
        let (_, is_complete) = open_segment(&complete, &partial).unwrap().unwrap();
        assert!(is_complete);
    }
}
