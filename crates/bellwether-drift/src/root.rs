//! Where collection reads from: a directory on disk (`/` or a mounted root) or, for synthetic
//! hosts and tests, a set of files held in memory.
//!
//! A root on disk ([`FsRoot`]) resolves every path inside itself ([`crate::inroot`]): a
//! symbolic link in the root is followed as a process `chroot`ed into it would follow it, so
//! no file outside the root is ever read, watched files included.
//!
//! Collection goes through [`Root`] so that [`crate::synth::profile_of`] runs exactly the same
//! parsers as [`crate::collect::collect`], without touching the disk.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use crate::inroot::InRoot;

/// Read access to a host's files by path relative to the host's root, such as `proc/loadavg`.
pub trait Root {
    /// The whole file as text.
    fn read(&self, rel: &str) -> io::Result<String>;
    /// The names of the entries of a directory, sorted.
    fn list(&self, rel: &str) -> io::Result<Vec<String>>;
    /// Whether a file or directory exists.
    fn exists(&self, rel: &str) -> bool;
    /// The SHA-256 (lower-case hex) and size in bytes of a file's contents, for watched files.
    /// Roots on disk stream the file, so a large one is never held in memory.
    fn digest(&self, rel: &str) -> io::Result<(String, u64)> {
        let text = self.read(rel)?;
        Ok((sha256_hex(text.as_bytes()), text.len() as u64))
    }
    /// The file's path on disk, for readers that need one (the rpm sqlite database); `None`
    /// for roots held in memory.
    fn local_path(&self, _rel: &str) -> Option<PathBuf> {
        None
    }
    /// Whether this root is the calling process's own `/`, so that facts can also be asked of
    /// the kernel directly (netlink) rather than through files.
    fn is_own_root(&self) -> bool {
        false
    }
}

/// SHA-256 of `bytes` as 64 lower-case hex digits.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex(&sha2::Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A host root on disk.
#[derive(Debug, Clone)]
pub struct FsRoot {
    dir: PathBuf,
    own: bool,
}

impl FsRoot {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        let own = std::fs::canonicalize(&dir).is_ok_and(|d| d == Path::new("/"));
        FsRoot { dir, own }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl FsRoot {
    /// A handle of the root, through which every path resolves inside it
    /// ([`crate::inroot`]: links are followed as in a chroot of the root, never out of it).
    fn handle(&self) -> io::Result<InRoot> {
        InRoot::open(&self.dir)
    }
}

impl Root for FsRoot {
    fn read(&self, rel: &str) -> io::Result<String> {
        let bytes = self.handle()?.read(rel)?;
        // Files under /proc and /etc are ASCII in practice; a stray non-UTF-8 byte (a package
        // description in Latin-1, say) must not lose the whole file.
        Ok(match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    fn list(&self, rel: &str) -> io::Result<Vec<String>> {
        Ok(self.handle()?.list(rel)?)
    }

    fn exists(&self, rel: &str) -> bool {
        self.handle().is_ok_and(|h| h.exists(rel))
    }

    /// The path, only if it names the same file as the resolution inside the root: a path
    /// whose links lead elsewhere (out of the root) is not given to readers that open by path.
    fn local_path(&self, rel: &str) -> Option<PathBuf> {
        use std::os::unix::fs::MetadataExt as _;
        let path = self.dir.join(rel);
        let inside = self.handle().ok()?.open_file(rel).ok()?.metadata().ok()?;
        let plain = std::fs::metadata(&path).ok()?;
        (inside.dev() == plain.dev() && inside.ino() == plain.ino()).then_some(path)
    }

    fn digest(&self, rel: &str) -> io::Result<(String, u64)> {
        use sha2::Digest as _;
        use std::io::Read as _;
        let mut file = self.handle()?.open_file(rel)?;
        if file.metadata()?.is_dir() {
            return Err(io::Error::other("is a directory, not a file"));
        }
        let mut hasher = sha2::Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut size = 0u64;
        loop {
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    hasher.update(&buf[..n]);
                    size += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok((hex(&hasher.finalize()), size))
    }

    fn is_own_root(&self) -> bool {
        self.own
    }
}

/// A host root held in memory: relative path to file contents. Directories are implied by the
/// paths of the files under them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemRoot {
    pub files: BTreeMap<String, String>,
}

impl MemRoot {
    pub fn insert(&mut self, rel: impl Into<String>, contents: impl Into<String>) {
        self.files.insert(rel.into(), contents.into());
    }
}

impl Root for MemRoot {
    fn read(&self, rel: &str) -> io::Result<String> {
        self.files
            .get(rel)
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))
    }

    fn list(&self, rel: &str) -> io::Result<Vec<String>> {
        let prefix = format!("{}/", rel.trim_end_matches('/'));
        let mut names: Vec<String> = self
            .files
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter_map(|(k, _)| k[prefix.len()..].split('/').next().map(str::to_owned))
            .collect();
        names.dedup();
        if names.is_empty() {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such directory"));
        }
        Ok(names)
    }

    fn exists(&self, rel: &str) -> bool {
        self.files.contains_key(rel) || self.list(rel).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_root_lists_directories_from_file_paths() {
        let mut r = MemRoot::default();
        r.insert("sys/class/net/eth0/mtu", "1500\n");
        r.insert("sys/class/net/eth0/address", "aa\n");
        r.insert("sys/class/net/lo/mtu", "65536\n");
        r.insert("sys/class/netx", "");
        assert_eq!(r.list("sys/class/net").unwrap(), vec!["eth0", "lo"]);
        assert!(r.exists("sys/class/net/eth0"));
        assert!(!r.exists("sys/class/none"));
        assert_eq!(r.read("sys/class/net/lo/mtu").unwrap(), "65536\n");
        assert_eq!(r.read("nope").unwrap_err().kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn disk_and_memory_roots_digest_alike() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        // Larger than the read buffer, so the streaming path is exercised.
        let text = "workers = 4\n".repeat(10_000);
        std::fs::write(dir.path().join("etc/app.conf"), &text).unwrap();
        let mut m = MemRoot::default();
        m.insert("etc/app.conf", text.clone());
        let disk = FsRoot::new(dir.path()).digest("etc/app.conf").unwrap();
        assert_eq!(disk, m.digest("etc/app.conf").unwrap());
        assert_eq!(disk.1, text.len() as u64);
        // sha256sum of the empty file.
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let fs = FsRoot::new(dir.path());
        assert_eq!(
            fs.digest("nope").unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert!(
            fs.digest("etc").is_err(),
            "a directory is not a watched file"
        );
    }

    #[test]
    fn a_watched_file_linked_outside_the_root_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(dir.path().join("outside")).unwrap();
        let secret = dir.path().join("outside/secret.conf");
        std::fs::write(&secret, "password = hunter2\n").unwrap();
        std::os::unix::fs::symlink(&secret, root.join("etc/app.conf")).unwrap();
        std::os::unix::fs::symlink(&secret, root.join("etc/hostname")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("outside"), root.join("etc/linked")).unwrap();
        let fs = FsRoot::new(&root);
        let err = fs.digest("etc/app.conf").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
        assert!(err.to_string().contains("is a symbolic link to"), "{err}");
        assert!(fs.read("etc/hostname").is_err());
        assert!(fs.list("etc/linked").is_err());
        assert!(!fs.exists("etc/linked/secret.conf"));
        assert_eq!(
            fs.local_path("etc/app.conf"),
            None,
            "not given to readers by path"
        );
        // A link inside the root is still followed.
        std::fs::write(root.join("etc/real.conf"), "x = 1\n").unwrap();
        std::os::unix::fs::symlink("real.conf", root.join("etc/alias.conf")).unwrap();
        assert_eq!(
            fs.digest("etc/alias.conf").unwrap(),
            (sha256_hex(b"x = 1\n"), 6)
        );
    }
}
