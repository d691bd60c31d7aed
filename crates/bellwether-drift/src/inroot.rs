//! Files inside a host root, never outside it.
//!
//! The agent runs as root and reads and writes files under `--rootfs`, a tree whose contents
//! it does not control: a service, a package or an intruder on that host can put symbolic
//! links in it. Every path here is resolved relative to a handle of the root directory, the
//! way a process `chroot`ed into the root would resolve it (the semantics of `openat2`'s
//! `RESOLVE_IN_ROOT`, of systemd's `chase()` and of runc's and containerd's `securejoin`):
//!
//! - a symbolic link inside the root is followed, and its target is read as a path *of the
//!   root*: an absolute target starts again at the root, not at the agent's `/`, and `..`
//!   stops at the root. No link can therefore lead out: `etc/websvc -> /srv/elsewhere` is the
//!   root's own `srv/elsewhere`, and `etc/websvc -> ../../..` is the root itself;
//! - "magic" links (`/proc/PID/fd/N`, `/proc/PID/root`) never jump: `openat2` refuses them,
//!   and the walk reads them as the text they show, resolved inside the root like any link;
//! - a write never follows the last component: it goes to a temporary file created
//!   exclusively (`O_CREAT | O_EXCL | O_NOFOLLOW`, a random name, never reused) in the
//!   resolved directory, then renamed over the name. A link at the name is replaced, not
//!   written through; a link planted at a temporary name is never opened;
//! - a missing directory on the way of a write is created, but never through a link: a link
//!   to a directory that does not exist in the root is an error.
//!
//! Where the kernel has `openat2` (Linux 5.6), the kernel does the resolution
//! (`RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS`). Where it does not, or a seccomp filter refuses
//! it (`ENOSYS`, `EPERM`), the same rules are applied by a walk, one component at a time:
//! each opened with `O_NOFOLLOW` relative to the directory handle before it, each link read
//! through the handle of the link itself, at most 40 links per path. Both give the same
//! answers (magic links aside, above); the tests run every case through both.
//!
//! An error names the path (relative to the root) and, when a symbolic link is on the way,
//! the link and its target.

use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::io::{self, Read as _, Write as _};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// The most symbolic links one resolution follows, as Linux's own limit.
pub const MAX_LINKS: usize = 40;

/// How paths are resolved: by the kernel's `openat2` where it can, or always by the walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Resolver {
    /// `openat2(RESOLVE_IN_ROOT)`, falling back to the walk where the kernel refuses it.
    #[default]
    Auto,
    /// The component-by-component walk only (what a kernel without `openat2` gets).
    Walk,
}

/// Set once `openat2` answered `ENOSYS`: the kernel (or its seccomp filter) does not have it.
static OPENAT2_MISSING: AtomicBool = AtomicBool::new(false);

/// A handle of a root directory; every path given to it is resolved inside it.
#[derive(Debug)]
pub struct InRoot {
    fd: OwnedFd,
    dir: PathBuf,
    resolver: Resolver,
}

/// A failed access inside a root: the path (relative to the root), the cause, and the first
/// symbolic link on the path, if any, with its target.
#[derive(Debug)]
pub struct Error {
    path: String,
    source: io::Error,
    link: Option<(String, String)>,
}

impl Error {
    /// The path, relative to the root, that could not be accessed.
    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn kind(&self) -> io::ErrorKind {
        self.source.kind()
    }

    /// The cause, with the link on the way if there is one, but without the path.
    pub fn cause(&self) -> String {
        match &self.link {
            Some((link, target)) => format!(
                "{} ({link} is a symbolic link to {target:?}; links are resolved inside the root and never lead out of it)",
                self.source
            ),
            None => self.source.to_string(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.cause())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl From<Error> for io::Error {
    /// The same kind; the message is the cause (the caller names the path).
    fn from(e: Error) -> io::Error {
        match e.link {
            None => e.source,
            Some(_) => io::Error::new(e.source.kind(), e.cause()),
        }
    }
}

fn errno(e: Errno) -> io::Error {
    io::Error::from(e)
}

/// The components of a path given to this module; empty ones and `.` are dropped.
fn components(rel: &[u8]) -> Vec<OsString> {
    rel.split(|b| *b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .map(|c| OsString::from_vec(c.to_vec()))
        .collect()
}

impl InRoot {
    /// Opens a handle of `dir` (the root itself may be reached through links: the operator
    /// named it).
    pub fn open(dir: &Path) -> io::Result<InRoot> {
        let fd = rustix::fs::open(
            dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno)?;
        Ok(InRoot {
            fd,
            dir: dir.to_path_buf(),
            resolver: Resolver::Auto,
        })
    }

    /// The same root, resolved with `resolver` (tests force [`Resolver::Walk`]).
    pub fn with_resolver(mut self, resolver: Resolver) -> InRoot {
        self.resolver = resolver;
        self
    }

    /// The root's path as given.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn err(&self, rel: &str, source: io::Error) -> Error {
        let link = self.first_link(rel);
        Error {
            path: rel.to_owned(),
            source,
            link,
        }
    }

    /// The first component of `rel` that is a symbolic link, with its target (for errors).
    fn first_link(&self, rel: &str) -> Option<(String, String)> {
        let comps = components(rel.as_bytes());
        let mut prefix = String::new();
        for c in comps {
            let c = c.to_string_lossy().into_owned();
            if c == ".." {
                return None;
            }
            let parent = self
                .resolve(&prefix, OFlags::PATH | OFlags::DIRECTORY)
                .ok()?;
            let name = if prefix.is_empty() {
                c.clone()
            } else {
                format!("{prefix}/{c}")
            };
            if let Ok(target) = rustix::fs::readlinkat(&parent, c.as_str(), Vec::new()) {
                return Some((name, target.to_string_lossy().into_owned()));
            }
            prefix = name;
        }
        None
    }

    /// Opens `rel` inside the root with `flags` (`O_CLOEXEC` is added).
    fn resolve(&self, rel: &str, flags: OFlags) -> io::Result<OwnedFd> {
        let flags = flags | OFlags::CLOEXEC;
        if self.resolver == Resolver::Auto && !OPENAT2_MISSING.load(Ordering::Relaxed) {
            let how = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
            // A rename anywhere on the system during an IN_ROOT resolution makes the kernel
            // answer EAGAIN, to be safe; it is retried.
            let mut again = 0;
            loop {
                let path = if rel.is_empty() { "." } else { rel };
                match rustix::fs::openat2(&self.fd, path, flags, Mode::empty(), how) {
                    Ok(fd) => return Ok(fd),
                    Err(Errno::AGAIN) if again < 16 => again += 1,
                    Err(Errno::NOSYS) => {
                        OPENAT2_MISSING.store(true, Ordering::Relaxed);
                        break;
                    }
                    // A seccomp filter may answer EPERM (or EINVAL for flags it does not
                    // know): the walk decides, and gives the real error if there is one.
                    Err(Errno::PERM) | Err(Errno::INVAL) => break,
                    Err(e) => return Err(errno(e)),
                }
            }
        }
        self.walk(rel.as_bytes(), flags)
    }

    /// The resolution without `openat2`, with the same rules.
    fn walk(&self, rel: &[u8], flags: OFlags) -> io::Result<OwnedFd> {
        // The directories from the root down to the current one (the root is not in it).
        let mut stack: Vec<OwnedFd> = Vec::new();
        // What is left to resolve, last component first.
        let mut todo: Vec<OsString> = components(rel);
        todo.reverse();
        let mut links = 0usize;
        loop {
            let cur: BorrowedFd<'_> = stack.last().map_or(self.fd.as_fd(), |f| f.as_fd());
            let Some(c) = todo.pop() else {
                return rustix::fs::openat(cur, ".", flags, Mode::empty()).map_err(errno);
            };
            if c.as_bytes() == b".." {
                // `..` of the root is the root.
                stack.pop();
                continue;
            }
            let last = todo.is_empty();
            // The entry itself, never what it points to.
            let entry = rustix::fs::openat(
                cur,
                c.as_os_str(),
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(errno)?;
            let st = rustix::fs::fstat(&entry).map_err(errno)?;
            match FileType::from_raw_mode(st.st_mode) {
                FileType::Symlink => {
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(errno(Errno::LOOP));
                    }
                    // Read through the link's own handle, so it is the link just checked.
                    let target = rustix::fs::readlinkat(&entry, "", Vec::new()).map_err(errno)?;
                    let target = target.as_bytes();
                    if target.first() == Some(&b'/') {
                        stack.clear();
                    }
                    let mut more = components(target);
                    more.reverse();
                    todo.extend(more);
                }
                FileType::Directory if !last => stack.push(entry),
                _ if !last => return Err(errno(Errno::NOTDIR)),
                _ => {
                    // Reopen for real, still without following: if the entry was swapped
                    // for a link since, this fails rather than follows it.
                    let fd = rustix::fs::openat(
                        cur,
                        c.as_os_str(),
                        flags | OFlags::NOFOLLOW,
                        Mode::empty(),
                    )
                    .map_err(errno)?;
                    return Ok(fd);
                }
            }
        }
    }

    /// Opens a file for reading.
    pub fn open_file(&self, rel: &str) -> Result<File, Error> {
        self.resolve(rel, OFlags::RDONLY)
            .map(File::from)
            .map_err(|e| self.err(rel, e))
    }

    /// The whole file.
    pub fn read(&self, rel: &str) -> Result<Vec<u8>, Error> {
        let mut f = self.open_file(rel)?;
        let mut out = Vec::new();
        f.read_to_end(&mut out).map_err(|e| self.err(rel, e))?;
        Ok(out)
    }

    /// The names of a directory's entries (without `.` and `..`), sorted.
    pub fn list(&self, rel: &str) -> Result<Vec<String>, Error> {
        let fd = self
            .resolve(rel, OFlags::RDONLY | OFlags::DIRECTORY)
            .map_err(|e| self.err(rel, e))?;
        let mut names = Vec::new();
        let dir = rustix::fs::Dir::new(fd).map_err(|e| self.err(rel, errno(e)))?;
        for entry in dir {
            let entry = entry.map_err(|e| self.err(rel, errno(e)))?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(String::from_utf8_lossy(name).into_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    /// Whether `rel` exists inside the root (a link whose target does not is absent).
    pub fn exists(&self, rel: &str) -> bool {
        self.resolve(rel, OFlags::PATH).is_ok()
    }

    /// Whether `rel` resolves to a directory inside the root.
    pub fn is_dir(&self, rel: &str) -> bool {
        self.resolve(rel, OFlags::PATH | OFlags::DIRECTORY).is_ok()
    }

    /// Replaces the file `rel` with `bytes`: a new file created exclusively under a random
    /// name in the resolved directory, synced, renamed over the name, and the directory
    /// synced. A file that was there keeps its permissions and (when the agent may set it)
    /// its owner; a new one is created `0644`. Missing directories on the way are created
    /// (`0755`), never through a link. Files of Bellwether's own, outside a host root, go
    /// through `bellwether_fs` instead: this one stays separate because every step here must
    /// stay inside the root.
    pub fn write_atomic(&self, rel: &str, bytes: &[u8]) -> Result<(), Error> {
        let (parent, name) = split(rel).map_err(|e| self.err(rel, e))?;
        let dir = self.dir_creating(parent).map_err(|e| self.err(rel, e))?;
        replace(&dir, name, bytes).map_err(|e| self.err(rel, e))
    }

    /// Writes `bytes` into the existing file `rel`, in place (for files that cannot be
    /// renamed over, such as cgroup control files).
    pub fn write_in_place(&self, rel: &str, bytes: &[u8]) -> Result<(), Error> {
        let fd = self
            .resolve(rel, OFlags::WRONLY | OFlags::TRUNC)
            .map_err(|e| self.err(rel, e))?;
        let mut f = File::from(fd);
        f.write_all(bytes).map_err(|e| self.err(rel, e))
    }

    /// The directory `rel`, created (with its missing parents) if it does not exist.
    fn dir_creating(&self, rel: &str) -> io::Result<OwnedFd> {
        let want = OFlags::RDONLY | OFlags::DIRECTORY;
        match self.resolve(rel, want) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            other => return other,
        }
        let mut prefix = String::new();
        for c in rel.split('/').filter(|c| !c.is_empty() && *c != ".") {
            let next = if prefix.is_empty() {
                c.to_owned()
            } else {
                format!("{prefix}/{c}")
            };
            match self.resolve(&next, OFlags::PATH | OFlags::DIRECTORY) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound && c != ".." => {
                    let parent = self.resolve(&prefix, OFlags::PATH | OFlags::DIRECTORY)?;
                    // EEXIST: made meanwhile, or a link (dangling inside the root), which
                    // the next resolution refuses: nothing is created through a link.
                    match rustix::fs::mkdirat(&parent, c, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(errno(e)),
                    }
                    self.resolve(&next, OFlags::PATH | OFlags::DIRECTORY)?;
                }
                Err(e) => return Err(e),
            }
            prefix = next;
        }
        self.resolve(rel, want)
    }
}

/// `rel` as its parent directory and its last component, which must be a name.
fn split(rel: &str) -> io::Result<(&str, &str)> {
    let rel = rel.trim_end_matches('/');
    let (parent, name) = rel.rsplit_once('/').unwrap_or(("", rel));
    if name.is_empty() || name == "." || name == ".." {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a file name",
        ));
    }
    Ok((parent, name))
}

/// A random 64-bit value in hex, for temporary names.
fn random_suffix() -> io::Result<String> {
    let mut buf = [0u8; 8];
    let mut filled = 0;
    while filled < buf.len() {
        filled +=
            rustix::rand::getrandom(&mut buf[filled..], rustix::rand::GetRandomFlags::empty())
                .map_err(errno)?;
    }
    Ok(format!("{:016x}", u64::from_le_bytes(buf)))
}

/// Creates `name` in `dir` exclusively: fails with `AlreadyExists` if anything (a file, a
/// link, planted or not) is there, and never follows a link.
fn create_exclusive(dir: &OwnedFd, name: &str, mode: u32) -> io::Result<File> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    )
    .map(File::from)
    .map_err(errno)
}

/// The temporary-file-and-rename write of `name` in the directory `dir`.
fn replace(dir: &OwnedFd, name: &str, bytes: &[u8]) -> io::Result<()> {
    let existing = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .ok()
        .filter(|st| FileType::from_raw_mode(st.st_mode) == FileType::RegularFile);
    let mode = existing.as_ref().map_or(0o644, |st| st.st_mode & 0o7777);
    let mut attempts = 0;
    let (tmp, mut file) = loop {
        let tmp = format!(".{name}.bellwether-{}", random_suffix()?);
        match create_exclusive(dir, &tmp, 0o600) {
            Ok(f) => break (tmp, f),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < 8 => attempts += 1,
            Err(e) => return Err(e),
        }
    };
    let written = (|| {
        file.write_all(bytes)?;
        if let Some(st) = &existing {
            // As root the agent keeps the owner; as another user it cannot, and the file is
            // then the agent's, which is what writing it as that user means.
            match rustix::fs::fchown(
                &file,
                Some(rustix::fs::Uid::from_raw(st.st_uid)),
                Some(rustix::fs::Gid::from_raw(st.st_gid)),
            ) {
                Ok(()) | Err(Errno::PERM) => {}
                Err(e) => return Err(errno(e)),
            }
        }
        rustix::fs::fchmod(&file, Mode::from_raw_mode(mode)).map_err(errno)?;
        file.sync_all()?;
        rustix::fs::renameat(dir, tmp.as_str(), dir, name).map_err(errno)
    })();
    if let Err(e) = written {
        let _ = rustix::fs::unlinkat(dir, tmp.as_str(), AtFlags::empty());
        return Err(e);
    }
    // The rename is durable once the directory is.
    rustix::fs::fsync(dir).map_err(errno)
}

#[cfg(test)]
mod tests;
