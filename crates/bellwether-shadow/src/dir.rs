//! Directory shadows: a plain directory under churn kept as content-defined chunks (FastCDC,
//! [`chunk`]) in the shadow's content-addressed object store, one [`tree::Tree`] index per
//! point, and restored beside the live directory then swapped in ([`restore`]).
//!
//! Two types: **full** reads and chunks every file at every point; **differential** reads only
//! the files whose stamp (device, inode, size, modification and status-change times) changed
//! since the last point and reuses the previous point's chunk list for the rest. Both store
//! only chunks the store does not have yet, and both write a complete index per point, so any
//! point restores on its own and retention may drop any other point.
//!
//! What this module must never do: follow a symbolic link under the root (links are recorded
//! as links), write outside the restore's staging directory before the final swap, or touch
//! the live directory when a restore fails.

pub mod chunk;
pub mod resource;
pub mod restore;
pub mod tree;
pub mod walk;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

pub use resource::{Dir, DirShadow};
pub use restore::{restore_tree, RestoreReport, Swap};
pub use tree::Tree;
pub use walk::{walk, WalkStats};

/// Nanoseconds since the Unix epoch.
pub(crate) fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error("cannot {op} {path}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        source: io::Error,
    },
    #[error("{0} is a symbolic link; give the directory itself")]
    RootIsLink(PathBuf),
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("{0} is more than 256 directories deep")]
    TooDeep(PathBuf),
    #[error("{path} changed during each of {tries} reads (rewritten in place without pause); the point was not taken")]
    Unstable { path: PathBuf, tries: u32 },
    #[error("the shadow directory {shadow} is inside the directory it shadows, {source_dir}")]
    ShadowInsideSource {
        shadow: PathBuf,
        source_dir: PathBuf,
    },
    #[error("the point's index is damaged: {detail}")]
    BadTree { detail: String },
    #[error("chunk {id} of {file} is missing from the shadow's object store")]
    ChunkMissing { id: String, file: String },
    #[error("chunk {id} of {file} is damaged: {detail}")]
    ChunkDamaged {
        id: String,
        file: String,
        detail: String,
    },
    #[error("{file} restored with SHA-256 {got}, the point says {expected}")]
    FileDamaged {
        file: String,
        expected: String,
        got: String,
    },
}

/// The object store a directory shadow writes chunks to and restores them from: objects named
/// by the SHA-256 of their bytes. `put` returns whether the object was new.
pub trait ObjectStore {
    fn contains(&self, id: &str) -> io::Result<bool>;
    fn put(&self, id: &str, bytes: &[u8]) -> io::Result<bool>;
    /// Like [`ObjectStore::put`], with every chunk of the file's previous version that the
    /// new one overlaps, in file order, each with the new chunk's offset in the file minus its
    /// own, which a store may keep the new chunk as a patch against ([`crate::delta`],
    /// format 2; the point store does). Returns the bytes written (0 when the store had the
    /// chunk). The default stores it whole.
    fn put_over(&self, id: &str, bytes: &[u8], old: &[(&tree::ChunkRef, i64)]) -> io::Result<u64> {
        let _ = old;
        Ok(if self.put(id, bytes)? {
            bytes.len() as u64
        } else {
            0
        })
    }
    /// The object's bytes as stored (the caller verifies them); `NotFound` when absent.
    fn get(&self, id: &str) -> io::Result<Vec<u8>>;
}

/// Refuses a shadow directory inside the directory it shadows (each point would chunk the
/// shadow itself, and a restore would swap the shadow away).
pub fn check_shadow_outside(source: &Path, shadow: &Path) -> Result<(), DirError> {
    let (s, d) = (resolve(source), resolve(shadow));
    if d.starts_with(&s) {
        return Err(DirError::ShadowInsideSource {
            shadow: shadow.to_path_buf(),
            source_dir: source.to_path_buf(),
        });
    }
    Ok(())
}

/// `p` made absolute and canonical (links resolved) as far as it exists: its longest existing
/// ancestor canonicalized, the components not made yet joined on. So a shadow directory
/// `--dir data/shadow` that `shadow start` has yet to create still compares inside `data`.
pub fn resolve(p: &Path) -> PathBuf {
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let mut rest = Vec::new();
    let mut at = abs.as_path();
    loop {
        if let Ok(c) = fs::canonicalize(at) {
            return rest.iter().rev().fold(c, |acc, name| acc.join(name));
        }
        match (at.parent(), at.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                at = parent;
            }
            // `..` or the root itself: nothing more to resolve.
            _ => return abs,
        }
    }
}

/// A plain object directory (`objects/ab/cdef…`), each object written atomically with
/// `bellwether-fs`. The directory tests and benchmarks use it; shadows use the point store's.
#[derive(Debug, Clone)]
pub struct FsObjects {
    root: PathBuf,
}

impl FsObjects {
    pub fn new(root: impl Into<PathBuf>) -> FsObjects {
        FsObjects { root: root.into() }
    }

    pub fn path_of(&self, id: &str) -> PathBuf {
        let (a, b) = id.split_at(2.min(id.len()));
        self.root.join(a).join(b)
    }
}

impl ObjectStore for FsObjects {
    fn contains(&self, id: &str) -> io::Result<bool> {
        self.path_of(id).try_exists()
    }

    fn put(&self, id: &str, bytes: &[u8]) -> io::Result<bool> {
        let p = self.path_of(id);
        if p.try_exists()? {
            return Ok(false);
        }
        bellwether_fs::AtomicWrite::new()
            .create_parent()
            .mode(0o444)
            .write(&p, bytes)?;
        Ok(true)
    }

    fn get(&self, id: &str) -> io::Result<Vec<u8>> {
        fs::read(self.path_of(id))
    }
}
