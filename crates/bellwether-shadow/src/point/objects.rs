//! Content-addressed objects: `objects/ab/cdef…`, named by the SHA-256 of their bytes, each
//! written once (a second write of the same content is a no-op: deduplication).
//!
//! An object is written to `tmp/` and renamed into place, so a reader never sees half of
//! one. Objects are not synced as they are written: [`super::PointStore::commit_point`]
//! makes them durable before it writes the manifest that references them, which is the
//! moment they must be. A point's few new objects (at most 256) are synced one by one with
//! their directories, which leaves alone whatever else is dirty on the file system (the
//! database's own pages, when the shadow shares its disk); more (a base's thousands of
//! chunks, where thousands of `fsync`s would take seconds), or objects a store just opened
//! may reuse from a process that never synced them, take one `syncfs`.
//!
//! Compression: PostgreSQL objects (base backup files, WAL) are stored compressed with zstd
//! ([`put_compressed`]) when that saves at least an eighth; SQLite and directory objects are
//! not (their clones share blocks with the data, and their benchmarks' rows are random
//! bytes). A compressed object is told apart by two things together: it is shorter than the
//! length every reference gives (`ObjectRef::len`, the content's), and it begins with zstd's
//! frame magic. Its name stays the SHA-256 of the content, so every check hashes what it
//! decompressed ([`decode`]); a whole object is never shorter than its reference says.
//!
//! Copy-on-write: a whole file is cloned into the store with `FICLONE` (btrfs, XFS, bcachefs
//! share the blocks; ext4 refuses and the bytes are copied), and an object is cloned out the
//! same way on restore. Hard links are not used: a restored file is written to afterwards,
//! and a link would let that write change the object.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// The SHA-256 of an object's content.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectId(pub [u8; 32]);

impl ObjectId {
    pub fn of(bytes: &[u8]) -> ObjectId {
        ObjectId(Sha256::digest(bytes).into())
    }

    pub fn hex(&self) -> String {
        let b = self.hex_bytes();
        String::from_utf8_lossy(&b).into_owned()
    }

    /// The 64 lower-case hex digits, without allocating (a manifest serializes thousands).
    fn hex_bytes(&self) -> [u8; 64] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 64];
        for (i, b) in self.0.iter().enumerate() {
            out[2 * i] = DIGITS[(b >> 4) as usize];
            out[2 * i + 1] = DIGITS[(b & 0xf) as usize];
        }
        out
    }

    /// `objects/ab/cdef…` under a shadow directory.
    pub fn path_in(&self, dir: &Path) -> PathBuf {
        let hex = self.hex();
        dir.join("objects").join(&hex[..2]).join(&hex[2..])
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId({})", self.hex())
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl FromStr for ObjectId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let b = s.as_bytes();
        if b.len() != 64 {
            return Err(format!("`{s}` is not a SHA-256 (64 hex digits)"));
        }
        let mut out = [0u8; 32];
        for (i, pair) in b.chunks(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16);
            let lo = (pair[1] as char).to_digit(16);
            match (hi, lo) {
                (Some(h), Some(l)) if !pair.iter().any(u8::is_ascii_uppercase) => {
                    out[i] = (h * 16 + l) as u8
                }
                _ => return Err(format!("`{s}` is not a SHA-256 (lower-case hex digits)")),
            }
        }
        Ok(ObjectId(out))
    }
}

impl Serialize for ObjectId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let b = self.hex_bytes();
        // Hex digits are ASCII.
        s.serialize_str(std::str::from_utf8(&b).unwrap_or_default())
    }
}

impl<'de> Deserialize<'de> for ObjectId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An object as a point references it: its id and its length in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectRef {
    pub id: ObjectId,
    pub len: u64,
}

/// Writes `bytes` as an object of the store at `dir` unless it is there already. Returns the
/// reference and whether it was new.
pub(crate) fn put(dir: &Path, tmp: &Path, bytes: &[u8]) -> io::Result<(ObjectRef, bool)> {
    put_as(dir, tmp, bytes, None)
}

/// The first four bytes of a zstd frame (RFC 8878).
pub(crate) const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// zstd's default level: the WAL of a pgbench run after a checkpoint (full-page images)
/// shrinks 12 × at about 650 MB/s on one core here (level 1: 9.7 × at 820 MB/s; 9: 13.4 ×
/// at a fifth of the speed).
pub(crate) const ZSTD_LEVEL: i32 = 3;
/// Where the time matters more than the last tenth of the space: the chunk a PostgreSQL
/// point ends in, read while the point waits (and stored again, whole, by a later point).
const ZSTD_FAST: i32 = 1;

/// [`put`], storing the bytes compressed (zstd) when that saves at least an eighth of them:
/// data that does not compress (random or already compressed bytes) is stored as it is, and
/// zstd finds that out quickly (GB/s). At [`ZSTD_LEVEL`], or [`ZSTD_FAST`] if `fast`.
pub(crate) fn put_compressed(
    dir: &Path,
    tmp: &Path,
    bytes: &[u8],
    fast: bool,
) -> io::Result<(ObjectRef, bool)> {
    put_as(
        dir,
        tmp,
        bytes,
        Some(if fast { ZSTD_FAST } else { ZSTD_LEVEL }),
    )
}

fn put_as(
    dir: &Path,
    tmp: &Path,
    bytes: &[u8],
    level: Option<i32>,
) -> io::Result<(ObjectRef, bool)> {
    let id = ObjectId::of(bytes);
    let r = ObjectRef {
        id,
        len: bytes.len() as u64,
    };
    let path = id.path_in(dir);
    if path.exists() {
        return Ok((r, false));
    }
    let z = match level {
        Some(l) => Some(zstd::bulk::compress(bytes, l)?),
        None => None,
    };
    let stored = match &z {
        Some(z) if z.len() + bytes.len() / 8 < bytes.len() => z,
        _ => bytes,
    };
    let t = temp_name(tmp);
    let written = File::create(&t).and_then(|mut f| f.write_all(stored));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&t);
        return Err(e);
    }
    install(&t, &path)?;
    Ok((r, true))
}

/// Makes object `r`, written by [`put`] and not synced since, durable: compressed at
/// [`ZSTD_LEVEL`] where that saves an eighth (written beside, synced, renamed over it), or
/// else synced as it is. Returns the directory to sync (the caller syncs each once), or
/// `None` when there is nothing to make durable: the object is gone (`gc` took it: no
/// committed point referenced it), or its content is not its name's (a write the machine
/// lost: left for the kind to rebuild, as `PgShadow` does from `pg/wal`).
///
/// `encode` may give a better way to store it (a patch, [`crate::delta`]): that is written
/// instead, the same way.
pub(crate) fn settle(
    dir: &Path,
    tmp: &Path,
    r: &ObjectRef,
    encode: &mut dyn FnMut(&[u8]) -> Option<Vec<u8>>,
) -> io::Result<Option<PathBuf>> {
    let path = r.id.path_in(dir);
    let stored = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let parent = path.parent().map(Path::to_path_buf);
    if stored.len() as u64 != r.len {
        if (stored.len() as u64) < r.len
            && (stored.starts_with(&ZSTD_MAGIC) || crate::delta::chunk_patch(&stored).is_some())
        {
            // Stored compressed or as a patch already (so by an earlier put): synced as it
            // is.
            File::open(&path)?.sync_all()?;
            return Ok(parent);
        }
        return Ok(None);
    }
    if ObjectId::of(&stored) != r.id {
        return Ok(None);
    }
    let z = match encode(&stored) {
        Some(patched) => patched,
        None => zstd::bulk::compress(&stored, ZSTD_LEVEL)?,
    };
    if z.len() + stored.len() / 8 >= stored.len() {
        File::open(&path)?.sync_all()?;
        return Ok(parent);
    }
    let t = temp_name(tmp);
    if write_synced(&t, &z).is_err() {
        // No room for the compressed copy (a full disk): the object stays as it is,
        // synced; it is whole either way.
        let _ = std::fs::remove_file(&t);
        File::open(&path)?.sync_all()?;
        return Ok(parent);
    }
    install(&t, &path)?;
    Ok(parent)
}

/// Whether an object stored in `stored_len` bytes at `path` is stored compressed (see the
/// module's notes): shorter than its content's `len`, zstd's magic first.
pub(crate) fn is_compressed(path: &Path, stored_len: u64, len: u64) -> bool {
    stored_len < len && File::open(path).is_ok_and(|f| is_compressed_file(&f, len))
}

/// [`is_compressed`] of an object already open as `f` (its first four bytes read in place).
pub(crate) fn is_compressed_file(f: &File, len: u64) -> bool {
    use std::os::unix::fs::FileExt;
    let mut head = [0u8; 4];
    f.metadata().is_ok_and(|md| md.len() < len)
        && f.read_exact_at(&mut head, 0).is_ok()
        && head == ZSTD_MAGIC
}

/// The content of an object stored as `stored` whose content is `len` bytes long:
/// decompressed when it is stored compressed, otherwise `stored` itself. A frame that does
/// not decompress, or holds more than `len` bytes, is an error; the caller checks the hash.
pub(crate) fn decode(stored: Vec<u8>, len: u64) -> Result<Vec<u8>, String> {
    if stored.len() as u64 >= len || !stored.starts_with(&ZSTD_MAGIC) {
        return Ok(stored);
    }
    let cap = usize::try_from(len).map_err(|_| format!("{len} bytes cannot be held here"))?;
    zstd::bulk::decompress(&stored, cap)
        .map_err(|e| format!("its zstd frame does not decompress: {e}"))
}

/// Stores a whole file as one object: cloned (copy-on-write) when the file system can,
/// copied otherwise, then hashed from the store's copy (so a source that changes meanwhile
/// cannot make the name and the content disagree).
pub(crate) fn put_file(dir: &Path, tmp: &Path, src: &Path) -> io::Result<(ObjectRef, bool)> {
    let t = temp_name(tmp);
    let result = (|| {
        let from = File::open(src)?;
        let to = File::create(&t)?;
        clone_or_copy(&from, &to)?;
        let (id, len) = hash_file(&t)?;
        Ok::<_, io::Error>((ObjectRef { id, len }, id.path_in(dir)))
    })();
    match result {
        Ok((r, path)) if path.exists() => {
            let _ = std::fs::remove_file(&t);
            Ok((r, false))
        }
        Ok((r, path)) => {
            install(&t, &path)?;
            Ok((r, true))
        }
        Err(e) => {
            let _ = std::fs::remove_file(&t);
            Err(e)
        }
    }
}

/// Moves a finished file (already written in `tmp/`) into the store under its hash.
pub(crate) fn adopt(dir: &Path, file: &Path) -> io::Result<(ObjectRef, bool)> {
    let (id, len) = hash_file(file)?;
    let path = id.path_in(dir);
    if path.exists() {
        std::fs::remove_file(file)?;
        return Ok((ObjectRef { id, len }, false));
    }
    install(file, &path)?;
    Ok((ObjectRef { id, len }, true))
}

pub(crate) fn install(tmp: &Path, path: &Path) -> io::Result<()> {
    if let Some(parent) = path.parent() {
        if !parent.is_dir() {
            // A new fan-out directory is made durable at once (a store makes at most 256),
            // so that a point syncs only its objects and their directories.
            std::fs::create_dir_all(parent)?;
            if let Some(up) = parent.parent() {
                File::open(up)?.sync_all()?;
            }
        }
    }
    // Objects are immutable: read-only for everyone, so a stray writer is refused.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o444))?;
    }
    std::fs::rename(tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(tmp);
    })
}

/// Writes `bytes` as the new file `t` and syncs it (before it is installed in an object's
/// place, [`install`]).
pub(crate) fn write_synced(t: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = File::create(t)?;
    f.write_all(bytes)?;
    f.sync_all()
}

pub(crate) fn temp_name(tmp: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    tmp.join(format!("{}.{n}.part", std::process::id()))
}

/// The SHA-256 and length of a file's content.
pub(crate) fn hash_file(path: &Path) -> io::Result<(ObjectId, u64)> {
    hash_file_with(path, || {})
}

/// [`hash_file`], calling `before_read` before each read of 1 MiB (a sealing thread waits
/// there while a point is taken).
pub(crate) fn hash_file_with(
    path: &Path,
    mut before_read: impl FnMut(),
) -> io::Result<(ObjectId, u64)> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        before_read();
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
        len += n as u64;
    }
    Ok((ObjectId(h.finalize().into()), len))
}

/// Makes `to` a copy of `from`: one `FICLONE` where the file system shares blocks, a byte
/// copy elsewhere. `to` must be empty.
pub(crate) fn clone_or_copy(from: &File, to: &File) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    if rustix::fs::ioctl_ficlone(to, from).is_ok() {
        return Ok(());
    }
    let mut r = from;
    let mut w = to;
    io::copy(&mut r, &mut w)?;
    Ok(())
}

/// Makes `to` (empty) a copy of `from` and returns the SHA-256 and length of what it wrote:
/// cloned then hashed from `to` where the file system shares blocks (reading shared blocks
/// is the only pass), otherwise copied and hashed in the same pass.
pub(crate) fn copy_hashing(from: &File, to: &File) -> io::Result<(ObjectId, u64)> {
    #[cfg(target_os = "linux")]
    if rustix::fs::ioctl_ficlone(to, from).is_ok() {
        let mut h = Sha256::new();
        let mut r = to;
        let mut buf = vec![0u8; 1 << 20];
        let mut len = 0u64;
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            len += n as u64;
        }
        return Ok((ObjectId(h.finalize().into()), len));
    }
    let mut r = from;
    let mut w = to;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        w.write_all(&buf[..n])?;
        len += n as u64;
    }
    Ok((ObjectId(h.finalize().into()), len))
}

/// Appends `len` bytes of `from` (from its start) to `to` at `at` with `copy_file_range`,
/// which shares the blocks where the file system can (btrfs, XFS: a reflink of the range)
/// and copies in the kernel elsewhere; then hashes what `to` holds at that range. Returns
/// the SHA-256 and the bytes appended.
pub(crate) fn append_hashing(
    from: &File,
    to: &File,
    at: u64,
    len: u64,
) -> io::Result<(ObjectId, u64)> {
    use std::os::unix::fs::FileExt;
    let mut off_in = 0u64;
    let mut off_out = at;
    while off_in < len {
        let want = (len - off_in).min(1 << 30) as usize;
        match rustix::fs::copy_file_range(from, Some(&mut off_in), to, Some(&mut off_out), want) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    while done < off_in {
        let want = (off_in - done).min(buf.len() as u64) as usize;
        let n = to.read_at(&mut buf[..want], at + done)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        done += n as u64;
    }
    Ok((ObjectId(h.finalize().into()), done))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An object put without a sync is settled compressed where that saves (named as
    /// before, read back the same); one whose content is not its name's, or gone, is
    /// reported, not synced.
    #[test]
    fn settling_compresses_what_saves_and_reports_what_was_lost() {
        let t = tempfile::tempdir().unwrap();
        let (dir, tmp) = (t.path().join("s"), t.path().join("tmp"));
        std::fs::create_dir_all(&tmp).unwrap();
        let text = b"a WAL record, and another like it; ".repeat(1000);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..30_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 56) as u8
            })
            .collect();
        let (a, _) = put(&dir, &tmp, &text).unwrap();
        let (b, _) = put(&dir, &tmp, &noise).unwrap();
        assert!(settle(&dir, &tmp, &a, &mut |_| None).unwrap().is_some());
        assert!(settle(&dir, &tmp, &b, &mut |_| None).unwrap().is_some());
        let stored = std::fs::read(a.id.path_in(&dir)).unwrap();
        assert!(stored.len() < text.len() / 4 && stored.starts_with(&ZSTD_MAGIC));
        assert_eq!(decode(stored, a.len).unwrap(), text);
        assert_eq!(
            std::fs::read(b.id.path_in(&dir)).unwrap(),
            noise,
            "kept as it is"
        );
        // Settled twice: still whole, still compressed.
        assert!(settle(&dir, &tmp, &a, &mut |_| None).unwrap().is_some());
        assert!(std::fs::read(a.id.path_in(&dir)).unwrap().len() < text.len());
        // A write the machine lost: zeros where the content was, or no file at all.
        let p = b.id.path_in(&dir);
        std::fs::remove_file(&p).unwrap();
        std::fs::write(&p, vec![0u8; noise.len()]).unwrap();
        assert_eq!(settle(&dir, &tmp, &b, &mut |_| None).unwrap(), None);
        std::fs::remove_file(&p).unwrap();
        assert_eq!(settle(&dir, &tmp, &b, &mut |_| None).unwrap(), None);
        assert!(
            std::fs::read_dir(&tmp).unwrap().next().is_none(),
            "no temporary file left"
        );
    }

    #[test]
    fn an_id_is_its_sha256_in_lower_case_hex_and_parses_back() {
        let id = ObjectId::of(b"abc");
        let hex = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(id.hex(), hex);
        assert_eq!(id.to_string(), hex);
        assert_eq!(serde_json::to_string(&id).unwrap(), format!("\"{hex}\""));
        assert_eq!(hex.parse::<ObjectId>().unwrap(), id);
        assert_eq!(
            serde_json::from_str::<ObjectId>(&format!("\"{hex}\"")).unwrap(),
            id
        );
        assert!(hex.to_uppercase().parse::<ObjectId>().is_err());
        assert!(hex[1..].parse::<ObjectId>().is_err());
    }
}
