//! Restore of a directory to a point: build the whole tree beside the live directory, verify
//! every chunk and every file against its SHA-256 while writing it, then swap the two
//! directories in one `renameat2(RENAME_EXCHANGE)`.
//!
//! What is atomic: the name. At every instant the live path names either the old tree or the
//! restored one, never a mix and never nothing; a crash before the exchange leaves the live
//! tree as it was (and a `.NAME.restore-*` directory beside it), a crash after leaves the
//! restored tree in place. What is not: a process that holds a descriptor or its working
//! directory inside the old tree keeps seeing the old tree (it moved, it was not changed), and
//! the writes of a process in the middle of writing through the live path land in whichever
//! tree the name pointed at when it opened the file; so stop or pause the writers first (the
//! drill kills its writer before it restores). A file system without `RENAME_EXCHANGE` gets
//! two renames, old tree aside then new tree in, with a short window in which the live path
//! does not exist; the report says which was used.
//!
//! On any error before the exchange the staging tree is removed and the live directory has not
//! been touched at all.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, RenameFlags, Timespec, Timestamps, CWD};
use rustix::io::Errno;
use sha2::{Digest, Sha256};

use super::chunk::sha256_hex;
use super::tree::{Node, Tree};
use super::{now_ns, DirError, ObjectStore};

/// How the restored tree took the live directory's place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Swap {
    /// One `renameat2(RENAME_EXCHANGE)`: atomic.
    Exchanged,
    /// The live directory did not exist: one `renameat2(RENAME_NOREPLACE)`: atomic.
    Created,
    /// Two renames (the file system has no `RENAME_EXCHANGE`): not atomic.
    TwoRenames,
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
    /// Where the replaced tree was left when it could not be removed.
    pub old_tree_left_at: Option<PathBuf>,
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
pub fn restore_tree(
    tree: &Tree,
    store: &dyn ObjectStore,
    dest: &Path,
) -> Result<RestoreReport, DirError> {
    tree.validate()
        .map_err(|detail| DirError::BadTree { detail })?;
    let (parent, name, exists) = split_dest(dest)?;
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
    let mut staging_name = std::ffi::OsString::from(".");
    staging_name.push(name);
    staging_name.push(format!(".restore-{}-{}", std::process::id(), now_ns()));
    let staging = parent.join(&staging_name);
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .map_err(|e| io_err(&staging, "create", e))?;
    let built = build(tree, store, &staging);
    let mut report = match built {
        Ok(r) => r,
        Err(e) => {
            let _ = fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    report.dest = dest.to_path_buf();
    let flags = if exists {
        RenameFlags::EXCHANGE
    } else {
        RenameFlags::NOREPLACE
    };
    match rfs::renameat_with(CWD, &staging, CWD, dest, flags) {
        Ok(()) => {
            report.swap = if exists {
                Swap::Exchanged
            } else {
                Swap::Created
            }
        }
        Err(Errno::INVAL | Errno::NOSYS) if exists => {
            let mut aside_name = staging_name.clone();
            aside_name.push(".old");
            let aside = parent.join(aside_name);
            if let Err(e) = fs::rename(dest, &aside) {
                let _ = fs::remove_dir_all(&staging);
                return Err(io_err(dest, "move aside", e));
            }
            if let Err(e) = fs::rename(&staging, dest) {
                // Put the live tree back: the restore failed, nothing may change.
                let _ = fs::rename(&aside, dest);
                let _ = fs::remove_dir_all(&staging);
                return Err(io_err(dest, "rename into place", e));
            }
            fs::rename(&aside, &staging).map_err(|e| io_err(&aside, "rename", e))?;
            report.swap = Swap::TwoRenames;
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&staging);
            return Err(io_err(dest, "swap", e.into()));
        }
    }
    if let Ok(d) = File::open(&parent) {
        let _ = d.sync_all();
    }
    if exists {
        // The old tree now sits at the staging name.
        if fs::remove_dir_all(&staging).is_err() {
            report.old_tree_left_at = Some(staging);
        }
    }
    Ok(report)
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
        old_tree_left_at: None,
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
                if &got != sha256 {
                    return Err(DirError::FileDamaged {
                        file: e.path.to_string(),
                        expected: sha256.clone(),
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
