//! One way to replace a file of Bellwether's own (a token, the agent's journal, a sandbox's
//! state, a report) so that a reader, or the same process after a crash or a power cut,
//! sees the old file or the new one, never half of one:
//!
//! 1. write to a new file created exclusively (`O_EXCL`) under a unique name in the same
//!    directory, with the requested mode from the start (a secret is never readable by
//!    others, not even for an instant);
//! 2. `fsync` the file, so its bytes are on disk before its name is;
//! 3. rename it over the target (atomic within one file system);
//! 4. `fsync` the directory, so the rename itself survives a crash.
//!
//! A failed write removes its temporary file and leaves the target as it was.
//!
//! What this crate must never do: follow untrusted paths. It is for paths the process
//! chooses (its data and state directories). Writes *inside a managed host's root*, where a
//! link planted by the host must not redirect the write, go through
//! `bellwether_drift::inroot::InRoot::write_atomic`, which resolves every component with
//! `openat2(RESOLVE_IN_ROOT)`; that one stays separate on purpose.

#![forbid(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// How to write: the defaults create a file with the process's default mode (`0666` less the
/// umask) in an existing directory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AtomicWrite {
    mode: Option<u32>,
    create_parent: bool,
}

impl AtomicWrite {
    pub fn new() -> AtomicWrite {
        AtomicWrite::default()
    }

    /// The new file's permission bits, such as `0o600` for a secret (Unix only; ignored
    /// elsewhere). The file has them from its creation, before any byte is written.
    pub fn mode(self, mode: u32) -> AtomicWrite {
        AtomicWrite {
            mode: Some(mode),
            ..self
        }
    }

    /// Creates the target's directory (and its parents) when missing.
    pub fn create_parent(self) -> AtomicWrite {
        AtomicWrite {
            create_parent: true,
            ..self
        }
    }

    /// Replaces `path` with `bytes`. The error is the underlying IO error; callers name
    /// `path` in their own error.
    pub fn write(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let name = path.file_name().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} does not name a file", path.display()),
            )
        })?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if self.create_parent {
            std::fs::create_dir_all(dir)?;
        }
        let (tmp, mut file) = self.create_temp(dir, &name.to_string_lossy())?;
        let written = file
            .write_all(bytes)
            .and_then(|()| file.sync_all())
            .and_then(|()| {
                drop(file);
                std::fs::rename(&tmp, path)
            });
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        sync_dir(dir)
    }

    /// A new file `.NAME.PID.N.tmp` in `dir`, created exclusively; a name taken by another
    /// writer (or left by a crash) is skipped, never truncated.
    fn create_temp(&self, dir: &Path, name: &str) -> io::Result<(PathBuf, File)> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let salt = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let mut last = None;
        for _ in 0..64 {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let tmp = dir.join(format!(".{name}.{}.{salt:x}{n}.tmp", std::process::id()));
            let mut opts = OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            if let Some(mode) = self.mode {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(mode);
            }
            match opts.open(&tmp) {
                Ok(f) => {
                    // The umask may have cleared bits that were asked for; a mode given
                    // explicitly is the mode the file gets.
                    #[cfg(unix)]
                    if let Some(mode) = self.mode {
                        use std::os::unix::fs::PermissionsExt;
                        if let Err(e) = f.set_permissions(std::fs::Permissions::from_mode(mode)) {
                            let _ = std::fs::remove_file(&tmp);
                            return Err(e);
                        }
                    }
                    return Ok((tmp, f));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no free temporary name")))
    }
}

/// Replaces `path` with `bytes` with the default options (see [`AtomicWrite`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    AtomicWrite::new().write(path, bytes)
}

/// Makes a rename in `dir` durable. A no-op where directories cannot be opened as files.
fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
