//! The walk of a shadowed directory under churn. Every name is opened relative to its parent's
//! descriptor with `O_NOFOLLOW` (`openat`), so a symbolic link is recorded as a link and never
//! followed, and a directory swapped for a link while the walk runs cannot lead it out of the
//! root. A file is read through one open descriptor and its `fstat` compared before and after
//! the read: a file rewritten in place while it was read is read again (up to
//! [`READ_TRIES`] times), so every file of a point is one whole version of that file. A name
//! that disappears during the walk is left out (the next point sees what replaced it).

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, CWD};
use rustix::io::Errno;

use super::chunk::{chunk_stream, ChunkSizes};
use super::tree::{ChunkRef, Entry, LinkTarget, Node, RelPath, Stamp, Tree, TREE_FORMAT};
use super::{now_ns, DirError, ObjectStore};

/// How often a file rewritten while it was being read is read again before the point fails.
pub const READ_TRIES: u32 = 5;
/// How deep the walk goes before it refuses the directory (each level holds a descriptor).
pub const MAX_DEPTH: usize = 256;
/// A file whose modification or status change is this close to the moment it was read is read
/// again at the next differential point even when its stamp is unchanged: a write in the same
/// clock tick as the read leaves the stamp as it was (git's "racy clean" problem).
pub const RACY_NS: i64 = 2_000_000_000;

/// What a walk did, for the point's report and the benchmarks.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct WalkStats {
    pub dirs: u64,
    pub files: u64,
    pub symlinks: u64,
    /// Sockets, FIFOs and device nodes: not data, left out (named in `skipped`).
    pub skipped: Vec<String>,
    /// Files read (a differential point reads only the changed ones).
    pub files_read: u64,
    pub bytes_read: u64,
    /// Files whose previous chunk list was reused without reading.
    pub files_reused: u64,
    /// Reads repeated because the file changed while it was read.
    pub reread: u64,
    pub chunks: u64,
    /// Chunks the store did not have yet, and the bytes stored for them (a chunk stored as a
    /// patch counts the patch).
    pub new_chunks: u64,
    pub new_bytes: u64,
}

/// Walks `root` into a [`Tree`], storing every chunk in `store`. With `previous` (a
/// differential point), a file whose stamp is unchanged keeps the previous chunk list without
/// being read; without it (a full point) every file is read. A new chunk of a file read again
/// is handed to the store with every chunk of the previous version it overlaps
/// ([`ObjectStore::put_over`]).
pub fn walk(
    root: &Path,
    previous: Option<&Tree>,
    store: &dyn ObjectStore,
) -> Result<(Tree, WalkStats), DirError> {
    let fd = open_root(root)?;
    let meta = File::from(fd.try_clone().map_err(|e| io_err(root, "open", e))?)
        .metadata()
        .map_err(|e| io_err(root, "stat", e))?;
    let prev: HashMap<&[u8], &Entry> = previous
        .map(|t| t.entries.iter().map(|e| (e.path.as_bytes(), e)).collect())
        .unwrap_or_default();
    let mut w = Walker {
        root,
        prev,
        store,
        entries: Vec::new(),
        stats: WalkStats::default(),
    };
    w.dir(&fd, &[], 0)?;
    let tree = Tree {
        format: TREE_FORMAT,
        root_mode: meta.mode() & 0o7777,
        root_mtime_ns: mtime_ns(&meta),
        entries: w.entries,
    };
    Ok((tree, w.stats))
}

/// Opens the root as a directory, refusing a link (a restore renames the root, so it must
/// be the directory itself).
pub fn open_root(root: &Path) -> Result<OwnedFd, DirError> {
    rfs::openat(
        CWD,
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::LOOP => DirError::RootIsLink(root.to_path_buf()),
        Errno::NOTDIR => match std::fs::symlink_metadata(root) {
            Ok(m) if m.file_type().is_symlink() => DirError::RootIsLink(root.to_path_buf()),
            _ => DirError::NotADirectory(root.to_path_buf()),
        },
        e => io_err(root, "open", e.into()),
    })
}

struct Walker<'a> {
    root: &'a Path,
    prev: HashMap<&'a [u8], &'a Entry>,
    store: &'a dyn ObjectStore,
    entries: Vec<Entry>,
    stats: WalkStats,
}

fn join(prefix: &[u8], name: &[u8]) -> Vec<u8> {
    if prefix.is_empty() {
        name.to_vec()
    } else {
        let mut v = prefix.to_vec();
        v.push(b'/');
        v.extend_from_slice(name);
        v
    }
}

fn io_err(path: &Path, op: &'static str, source: io::Error) -> DirError {
    DirError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

fn ns(secs: i64, nsec: i64) -> i64 {
    secs.saturating_mul(1_000_000_000).saturating_add(nsec)
}

fn mtime_ns(m: &std::fs::Metadata) -> i64 {
    ns(m.mtime(), m.mtime_nsec())
}

fn stamp_of(m: &std::fs::Metadata) -> Stamp {
    Stamp {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime_ns: mtime_ns(m),
        ctime_ns: ns(m.ctime(), m.ctime_nsec()),
    }
}

/// Whether the content read through one descriptor is one version: same file, same size,
/// same modification time. The status-change time is left out here: it moves when the file
/// is renamed over or unlinked by a writer that replaces files (the version read stays
/// whole), and a write always moves the modification time.
fn same_content(a: &Stamp, b: &Stamp) -> bool {
    (a.dev, a.ino, a.size, a.mtime_ns) == (b.dev, b.ino, b.size, b.mtime_ns)
}

impl Walker<'_> {
    fn abs(&self, rel: &[u8]) -> PathBuf {
        self.root.join(std::ffi::OsStr::from_bytes(rel))
    }

    fn dir(&mut self, fd: &OwnedFd, prefix: &[u8], depth: usize) -> Result<(), DirError> {
        if depth > MAX_DEPTH {
            return Err(DirError::TooDeep(self.abs(prefix)));
        }
        let mut names: Vec<CString> = Vec::new();
        let rd =
            rfs::Dir::read_from(fd).map_err(|e| io_err(&self.abs(prefix), "list", e.into()))?;
        for ent in rd {
            let ent = ent.map_err(|e| io_err(&self.abs(prefix), "list", e.into()))?;
            let n = ent.file_name();
            if n.to_bytes() != b"." && n.to_bytes() != b".." {
                names.push(n.to_owned());
            }
        }
        names.sort_by(|a, b| a.to_bytes().cmp(b.to_bytes()));
        for name in names {
            let rel = join(prefix, name.to_bytes());
            let st = match rfs::statat(fd, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(io_err(&self.abs(&rel), "stat", e.into())),
            };
            match FileType::from_raw_mode(st.st_mode) {
                FileType::Directory => self.subdir(fd, &name, rel, depth)?,
                FileType::RegularFile => self.file(fd, &name, rel)?,
                FileType::Symlink => {
                    let target = match rfs::readlinkat(fd, name.as_c_str(), Vec::new()) {
                        Ok(t) => t,
                        Err(Errno::NOENT | Errno::INVAL) => continue,
                        Err(e) => return Err(io_err(&self.abs(&rel), "read link", e.into())),
                    };
                    #[allow(clippy::unnecessary_cast)]
                    let mtime = ns(st.st_mtime as i64, st.st_mtime_nsec as i64);
                    self.stats.symlinks += 1;
                    self.entries.push(Entry {
                        path: RelPath(rel),
                        node: Node::Symlink {
                            target: LinkTarget(target.into_bytes()),
                            mtime_ns: mtime,
                        },
                    });
                }
                _ => self
                    .stats
                    .skipped
                    .push(String::from_utf8_lossy(&rel).into_owned()),
            }
        }
        Ok(())
    }

    fn subdir(
        &mut self,
        parent: &OwnedFd,
        name: &CStr,
        rel: Vec<u8>,
        depth: usize,
    ) -> Result<(), DirError> {
        let fd = match rfs::openat(
            parent,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            // Removed, or replaced by a file or a link, since it was listed.
            Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => return Ok(()),
            Err(e) => return Err(io_err(&self.abs(&rel), "open", e.into())),
        };
        let meta = File::from(
            fd.try_clone()
                .map_err(|e| io_err(&self.abs(&rel), "open", e))?,
        )
        .metadata()
        .map_err(|e| io_err(&self.abs(&rel), "stat", e))?;
        self.stats.dirs += 1;
        self.entries.push(Entry {
            path: RelPath(rel.clone()),
            node: Node::Dir {
                mode: meta.mode() & 0o7777,
                mtime_ns: mtime_ns(&meta),
            },
        });
        self.dir(&fd, &rel, depth + 1)
    }

    fn reusable(&self, rel: &[u8], stamp: &Stamp, mode: u32) -> Option<Node> {
        let prev = self.prev.get(rel)?;
        match &prev.node {
            Node::File {
                stamp: s,
                read_at_ns,
                mode: m,
                ..
            } if s.as_ref() == Some(stamp)
                && *m == mode
                && stamp.mtime_ns.max(stamp.ctime_ns) < read_at_ns - RACY_NS =>
            {
                Some(prev.node.clone())
            }
            _ => None,
        }
    }

    fn file(&mut self, parent: &OwnedFd, name: &CStr, rel: Vec<u8>) -> Result<(), DirError> {
        let path = self.abs(&rel);
        for _ in 0..READ_TRIES {
            let fd = match rfs::openat(
                parent,
                name,
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
                Mode::empty(),
            ) {
                Ok(fd) => fd,
                Err(Errno::NOENT | Errno::LOOP) => return Ok(()),
                Err(e) => return Err(io_err(&path, "open", e.into())),
            };
            let file = File::from(fd);
            let before = file.metadata().map_err(|e| io_err(&path, "stat", e))?;
            if !before.is_file() {
                return Ok(());
            }
            let stamp = stamp_of(&before);
            let mode = before.mode() & 0o7777;
            if let Some(node) = self.reusable(&rel, &stamp, mode) {
                self.stats.files += 1;
                self.stats.files_reused += 1;
                if let Node::File { chunks, .. } = &node {
                    self.stats.chunks += chunks.len() as u64;
                }
                self.entries.push(Entry {
                    path: RelPath(rel),
                    node,
                });
                return Ok(());
            }
            let read_at = now_ns();
            let mut chunks = Vec::new();
            let (mut new_chunks, mut new_bytes) = (0u64, 0u64);
            let store = self.store;
            // The previous version's chunks by offset: a new chunk may be stored as a patch
            // against those at its place (an edit in place; crate::delta).
            let old: Vec<(u64, &ChunkRef)> = match self.prev.get(rel.as_slice()).map(|e| &e.node) {
                Some(Node::File { chunks, .. }) => chunks
                    .iter()
                    .scan(0u64, |at, c| {
                        let start = *at;
                        *at += u64::from(c.len);
                        Some((start, c))
                    })
                    .collect(),
                _ => Vec::new(),
            };
            let mut at = 0u64;
            let (sha256, len) = chunk_stream(&file, ChunkSizes::DEFAULT, |c| {
                let end = at + c.data.len() as u64;
                // The old chunks overlapping [at, end): among those starting before `end`, the
                // last few (chunks are at least 16 KiB, at most 256 KiB long), in file order,
                // each with the new chunk's offset minus its own.
                let upto = old.partition_point(|(start, _)| *start < end);
                let bases: Vec<(&ChunkRef, i64)> = old[upto.saturating_sub(17)..upto]
                    .iter()
                    .filter(|(start, o)| {
                        let stop = start + u64::from(o.len);
                        stop.min(end) > (*start).max(at) && o.id != c.sha256
                    })
                    .map(|(start, o)| (*o, at as i64 - *start as i64))
                    .collect();
                at = end;
                let stored = store.put_over(&c.sha256, &c.data, &bases).map_err(|e| {
                    io::Error::new(e.kind(), format!("storing a chunk in the shadow: {e}"))
                })?;
                if stored > 0 {
                    new_chunks += 1;
                    new_bytes += stored;
                }
                chunks.push(ChunkRef {
                    id: c.sha256,
                    len: c.data.len() as u32,
                });
                Ok(())
            })
            .map_err(|e| io_err(&path, "read", e))?;
            self.stats.bytes_read += len;
            self.stats.new_chunks += new_chunks;
            self.stats.new_bytes += new_bytes;
            let after = file.metadata().map_err(|e| io_err(&path, "stat", e))?;
            if !same_content(&stamp_of(&after), &stamp) || len != stamp.size {
                self.stats.reread += 1;
                continue;
            }
            self.stats.files += 1;
            self.stats.files_read += 1;
            self.stats.chunks += chunks.len() as u64;
            self.entries.push(Entry {
                path: RelPath(rel),
                node: Node::File {
                    mode,
                    mtime_ns: stamp.mtime_ns,
                    size: len,
                    sha256: Some(sha256),
                    chunks,
                    stamp: Some(stamp),
                    read_at_ns: read_at,
                },
            });
            return Ok(());
        }
        Err(DirError::Unstable {
            path,
            tries: READ_TRIES,
        })
    }
}
