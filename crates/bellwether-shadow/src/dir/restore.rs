//! Restore of a directory to a point: build the whole tree beside the live directory, verify
//! every chunk and every file against its SHA-256 while writing it, then swap the two
//! directories in one `renameat2(RENAME_EXCHANGE)`.
//!
//! What is atomic: the name. At every instant the live path names either the old tree or the
//! restored one, never a mix and never nothing; a crash before the exchange leaves the live
//! tree as it was (and a `.NAME.bellwether-restore.PID` directory beside it), a crash after leaves the
//! restored tree in place. What is not: a process that holds a descriptor or its working
//! directory inside the old tree keeps seeing the old tree (it moved, it was not changed), and
//! the writes of a process in the middle of writing through the live path land in whichever
//! tree the name pointed at when it opened the file; so stop or pause the writers first (the
//! drill kills its writer before it restores). A file system without `RENAME_EXCHANGE`
//! refuses the swap, and the live tree stays as it was. Nor is the removal of the old tree
//! after the swap atomic: a crash then leaves it beside the live one, under the hidden name.
//!
//! On any error before the exchange the staging tree is removed and the live directory has not
//! been touched at all.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, Timespec, Timestamps, CWD};
use sha2::{Digest, Sha256};

use super::chunk::sha256_hex;
use super::tree::{Node, Tree};
use super::{DirError, ObjectStore};

/// How the restored tree took the live directory's place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Swap {
    /// One `renameat2(RENAME_EXCHANGE)`: atomic.
    Exchanged,
    /// The live directory did not exist: one `rename`: atomic.
    Created,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RestoreReport {
    pub dest: PathBuf,
    pub dirs: u64,
    pub files: u64,
    pub symlinks: u64,
    pub bytes: u64,
    pub chunks_verified: u64,
    pub swap: Swap,
}

fn io_err(path: &Path, op: &'static str, source: std::io::Error) -> DirError {
    DirError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

fn ts(ns: i64) -> Timespec {
    Timespec {
        tv_sec: ns.div_euclid(1_000_000_000),
        tv_nsec: ns.rem_euclid(1_000_000_000),
    }
}

fn times(mtime_ns: i64) -> Timestamps {
    Timestamps {
        last_access: ts(mtime_ns),
        last_modification: ts(mtime_ns),
    }
}

/// The live directory's parent and name; `dest` must name a directory (or nothing yet),
/// never a link.
pub(crate) fn split_dest(dest: &Path) -> Result<(PathBuf, &OsStr, bool), DirError> {
    let name = dest
        .file_name()
        .ok_or_else(|| DirError::NotADirectory(dest.to_path_buf()))?;
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let exists = match fs::symlink_metadata(dest) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(DirError::RootIsLink(dest.to_path_buf()))
        }
        Ok(m) if !m.is_dir() => return Err(DirError::NotADirectory(dest.to_path_buf())),
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(io_err(dest, "stat", e)),
    };
    Ok((parent, name, exists))
}

/// Restores `tree` (objects from `store`) at `dest`; see the module docs for what is atomic.
/// The swap is [`crate::point::replace_beside`], the one every kind of shadow uses.
pub fn restore_tree(
    tree: &Tree,
    store: &dyn ObjectStore,
    dest: &Path,
) -> Result<RestoreReport, DirError> {
    tree.validate()
        .map_err(|detail| DirError::BadTree { detail })?;
    let (_, _, exists) = split_dest(dest)?;
    // Every chunk must be there before anything is written.
    for e in &tree.entries {
        if let Node::File { chunks, .. } = &e.node {
            for c in chunks {
                if !store
                    .contains(&c.id)
                    .map_err(|err| io_err(dest, "look up chunks for", err))?
                {
                    return Err(DirError::ChunkMissing {
                        id: c.id.clone(),
                        file: e.path.to_string(),
                    });
                }
            }
        }
    }
    let mut failed: Option<DirError> = None;
    let mut built = None;
    let swapped = crate::point::replace_beside(dest, |staging| {
        let r = fs::DirBuilder::new()
            .mode(0o700)
            .create(staging)
            .map_err(|e| io_err(staging, "create", e))
            .and_then(|()| build(tree, store, staging));
        match r {
            Ok(r) => {
                built = Some(r);
                Ok(())
            }
            Err(e) => {
                let msg = e.to_string();
                failed = Some(e);
                Err(crate::point::ShadowError::Unsupported(msg))
            }
        }
    });
    match (swapped, failed, built) {
        (Ok(()), _, Some(mut r)) => {
            r.dest = dest.to_path_buf();
            r.swap = if exists {
                Swap::Exchanged
            } else {
                Swap::Created
            };
            Ok(r)
        }
        (_, Some(e), _) => Err(e),
        (Err(crate::point::ShadowError::Io { path, source }), None, _) => Err(DirError::Io {
            path,
            op: "swap",
            source,
        }),
        (Err(e), None, _) => Err(io_err(dest, "swap", std::io::Error::other(e.to_string()))),
        (Ok(()), None, None) => Err(io_err(
            dest,
            "restore",
            std::io::Error::other("the build did not run"),
        )),
    }
}

fn build(tree: &Tree, store: &dyn ObjectStore, staging: &Path) -> Result<RestoreReport, DirError> {
    let mut r = RestoreReport {
        dest: PathBuf::new(),
        dirs: 0,
        files: 0,
        symlinks: 0,
        bytes: 0,
        chunks_verified: 0,
        swap: Swap::Exchanged,
    };
    for e in &tree.entries {
        let p = staging.join(OsStr::from_bytes(e.path.as_bytes()));
        match &e.node {
            Node::Dir { .. } => {
                fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&p)
                    .map_err(|err| io_err(&p, "create", err))?;
                r.dirs += 1;
            }
            Node::File {
                mode,
                mtime_ns,
                size,
                sha256,
                chunks,
                ..
            } => {
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                    .open(&p)
                    .map_err(|err| io_err(&p, "create", err))?;
                let mut whole = Sha256::new();
                for c in chunks {
                    let bytes = store.get(&c.id).map_err(|err| match err.kind() {
                        std::io::ErrorKind::NotFound => DirError::ChunkMissing {
                            id: c.id.clone(),
                            file: e.path.to_string(),
                        },
                        _ => DirError::ChunkDamaged {
                            id: c.id.clone(),
                            file: e.path.to_string(),
                            detail: err.to_string(),
                        },
                    })?;
                    if bytes.len() != c.len as usize || sha256_hex(&bytes) != c.id {
                        return Err(DirError::ChunkDamaged {
                            id: c.id.clone(),
                            file: e.path.to_string(),
                            detail: format!(
                                "{} bytes with SHA-256 {}, expected {} bytes",
                                bytes.len(),
                                sha256_hex(&bytes),
                                c.len
                            ),
                        });
                    }
                    r.chunks_verified += 1;
                    whole.update(&bytes);
                    f.write_all(&bytes)
                        .map_err(|err| io_err(&p, "write", err))?;
                }
                let got = hex::encode(whole.finalize());
                if let Some(expected) = sha256.as_ref().filter(|s| **s != got) {
                    return Err(DirError::FileDamaged {
                        file: e.path.to_string(),
                        expected: expected.clone(),
                        got,
                    });
                }
                f.set_permissions(fs::Permissions::from_mode(*mode))
                    .map_err(|err| io_err(&p, "chmod", err))?;
                rfs::futimens(&f, &times(*mtime_ns))
                    .map_err(|err| io_err(&p, "set times of", err.into()))?;
                f.sync_all().map_err(|err| io_err(&p, "fsync", err))?;
                r.files += 1;
                r.bytes += size;
            }
            Node::Symlink { target, mtime_ns } => {
                std::os::unix::fs::symlink(OsStr::from_bytes(&target.0), &p)
                    .map_err(|err| io_err(&p, "create link", err))?;
                rfs::utimensat(CWD, &p, &times(*mtime_ns), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|err| io_err(&p, "set times of", err.into()))?;
                r.symlinks += 1;
            }
        }
    }
    // Directories last, deepest first: creating their contents changed their times.
    for e in tree.entries.iter().rev() {
        if let Node::Dir { mode, mtime_ns } = &e.node {
            let p = staging.join(OsStr::from_bytes(e.path.as_bytes()));
            finish_dir(&p, *mode, *mtime_ns)?;
        }
    }
    finish_dir(staging, tree.root_mode, tree.root_mtime_ns)?;
    Ok(r)
}

fn finish_dir(p: &Path, mode: u32, mtime_ns: i64) -> Result<(), DirError> {
    let d = File::open(p).map_err(|err| io_err(p, "open", err))?;
    d.sync_all().map_err(|err| io_err(p, "fsync", err))?;
    d.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|err| io_err(p, "chmod", err))?;
    rfs::futimens(&d, &times(mtime_ns)).map_err(|err| io_err(p, "set times of", err.into()))?;
    Ok(())
}
