//! Installed packages from rpm's sqlite database (`var/lib/rpm/rpmdb.sqlite`, the format of
//! rpm ≥ 4.16: Fedora 33 and later, RHEL 9 and later).
//!
//! The database holds one header blob per package in the `Packages` table; a header is a count
//! of index entries and of data bytes, the entries (tag, type, offset, count, all big-endian),
//! then the data. We read NAME, VERSION, RELEASE, EPOCH and ARCH and nothing else. The database
//! is opened read-only and `immutable`, so collection takes no lock that could stall rpm.
//!
//! The older Berkeley DB (`Packages`) and ndb (`Packages.db`) formats are not read; collection
//! notes that it found them.

use std::collections::BTreeMap;
use std::path::Path;

const TAG_NAME: u32 = 1000;
const TAG_VERSION: u32 = 1001;
const TAG_RELEASE: u32 = 1002;
const TAG_EPOCH: u32 = 1003;
const TAG_ARCH: u32 = 1022;
const TYPE_INT32: u32 = 4;
const TYPE_STRING: u32 = 6;

/// One package as a header describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpmPackage {
    pub name: String,
    pub epoch: Option<u32>,
    pub version: String,
    pub release: String,
    pub arch: Option<String>,
}

impl RpmPackage {
    /// `[epoch:]version-release`, the form `rpm -q --qf '%{EPOCH}:%{VERSION}-%{RELEASE}'` gives.
    pub fn evr(&self) -> String {
        match self.epoch {
            Some(e) => format!("{e}:{}-{}", self.version, self.release),
            None => format!("{}-{}", self.version, self.release),
        }
    }
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

/// Parses one header blob. Errors say what is wrong with it.
pub fn parse_header(blob: &[u8]) -> Result<RpmPackage, &'static str> {
    let il = be32(blob, 0).ok_or("header shorter than 8 bytes")? as usize;
    let dl = be32(blob, 4).ok_or("header shorter than 8 bytes")? as usize;
    let data_start = il
        .checked_mul(16)
        .and_then(|n| n.checked_add(8))
        .ok_or("header index too large")?;
    let data = blob
        .get(data_start..data_start.checked_add(dl).ok_or("header data too large")?)
        .ok_or("header shorter than its index and data lengths")?;
    let (mut name, mut version, mut release, mut epoch, mut arch) = (None, None, None, None, None);
    for i in 0..il {
        let e = 8 + i * 16;
        let (tag, ty, off) = (be32(blob, e), be32(blob, e + 4), be32(blob, e + 8));
        let (Some(tag), Some(ty), Some(off)) = (tag, ty, off) else {
            return Err("truncated index entry");
        };
        let off = off as usize;
        let string = || -> Option<String> {
            let rest = data.get(off..)?;
            let end = rest.iter().position(|&b| b == 0)?;
            Some(String::from_utf8_lossy(&rest[..end]).into_owned())
        };
        match (tag, ty) {
            (TAG_NAME, TYPE_STRING) => name = string(),
            (TAG_VERSION, TYPE_STRING) => version = string(),
            (TAG_RELEASE, TYPE_STRING) => release = string(),
            (TAG_ARCH, TYPE_STRING) => arch = string(),
            (TAG_EPOCH, TYPE_INT32) => epoch = be32(data, off),
            _ => {}
        }
    }
    Ok(RpmPackage {
        name: name.ok_or("no NAME tag")?,
        epoch,
        version: version.ok_or("no VERSION tag")?,
        release: release.ok_or("no RELEASE tag")?,
        arch,
    })
}

/// Encodes a header with the five tags this module reads, as rpm stores it (for synthetic roots
/// and tests).
pub fn encode_header(p: &RpmPackage) -> Vec<u8> {
    let mut entries: Vec<(u32, u32, Vec<u8>)> = Vec::new();
    let s = |v: &str| {
        let mut b = v.as_bytes().to_vec();
        b.push(0);
        b
    };
    entries.push((TAG_NAME, TYPE_STRING, s(&p.name)));
    entries.push((TAG_VERSION, TYPE_STRING, s(&p.version)));
    entries.push((TAG_RELEASE, TYPE_STRING, s(&p.release)));
    if let Some(e) = p.epoch {
        entries.push((TAG_EPOCH, TYPE_INT32, e.to_be_bytes().to_vec()));
    }
    if let Some(a) = &p.arch {
        entries.push((TAG_ARCH, TYPE_STRING, s(a)));
    }
    let mut index = Vec::new();
    let mut data: Vec<u8> = Vec::new();
    for (tag, ty, bytes) in entries {
        if ty == TYPE_INT32 {
            while data.len() & 3 != 0 {
                data.push(0);
            }
        }
        index.extend_from_slice(&tag.to_be_bytes());
        index.extend_from_slice(&ty.to_be_bytes());
        index.extend_from_slice(&(data.len() as u32).to_be_bytes());
        index.extend_from_slice(&1u32.to_be_bytes());
        data.extend_from_slice(&bytes);
    }
    let mut out = Vec::with_capacity(8 + index.len() + data.len());
    out.extend_from_slice(&((index.len() / 16) as u32).to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(&index);
    out.extend_from_slice(&data);
    out
}

/// The installed packages of an `rpmdb.sqlite`, name to `[epoch:]version-release`; a second
/// architecture of a name is keyed `name:arch`. `gpg-pubkey` entries (imported signing keys, not
/// packages) are left out. Headers that do not parse are counted in the second value.
pub fn read_sqlite(path: &Path) -> Result<(BTreeMap<String, String>, usize), String> {
    use rusqlite::OpenFlags;
    let uri = format!(
        "file:{}?immutable=1",
        path.to_string_lossy()
            .replace('%', "%25")
            .replace('?', "%3f")
            .replace('#', "%23")
    );
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let db = rusqlite::Connection::open_with_flags(uri, flags).map_err(|e| e.to_string())?;
    let mut stmt = db
        .prepare("SELECT blob FROM Packages")
        .map_err(|e| e.to_string())?;
    let mut rows = stmt.query([]).map_err(|e| e.to_string())?;
    let mut out = BTreeMap::new();
    let mut bad = 0;
    while let Some(row) = rows.next().map_err(|e| e.to_string())? {
        let blob: Vec<u8> = match row.get(0) {
            Ok(b) => b,
            Err(_) => {
                bad += 1;
                continue;
            }
        };
        match parse_header(&blob) {
            Ok(p) if p.name == "gpg-pubkey" => {}
            Ok(p) => {
                let key = if out.contains_key(&p.name) {
                    format!("{}:{}", p.name, p.arch.as_deref().unwrap_or("noarch"))
                } else {
                    p.name.clone()
                };
                out.insert(key, p.evr());
            }
            Err(_) => bad += 1,
        }
    }
    Ok((out, bad))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn write_rpmdb(path: &Path, pkgs: &[RpmPackage], junk: bool) {
        let db = rusqlite::Connection::open(path).unwrap();
        db.execute_batch(
            "CREATE TABLE Packages (hnum INTEGER PRIMARY KEY AUTOINCREMENT, blob BLOB NOT NULL);",
        )
        .unwrap();
        for p in pkgs {
            db.execute(
                "INSERT INTO Packages (blob) VALUES (?1)",
                [encode_header(p)],
            )
            .unwrap();
        }
        if junk {
            db.execute(
                "INSERT INTO Packages (blob) VALUES (?1)",
                [vec![0u8, 0, 0, 9, 0]],
            )
            .unwrap();
        }
    }

    pub(crate) fn pkg(name: &str, epoch: Option<u32>, v: &str, r: &str, arch: &str) -> RpmPackage {
        RpmPackage {
            name: name.into(),
            epoch,
            version: v.into(),
            release: r.into(),
            arch: Some(arch.into()),
        }
    }

    #[test]
    fn headers_round_trip() {
        let p = pkg("openssl-libs", Some(1), "3.0.7", "27.el9", "x86_64");
        assert_eq!(parse_header(&encode_header(&p)).unwrap(), p);
        assert_eq!(p.evr(), "1:3.0.7-27.el9");
        let blob = encode_header(&p);
        for cut in 0..blob.len() {
            assert!(parse_header(&blob[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn reads_a_sqlite_rpmdb() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rpmdb.sqlite");
        write_rpmdb(
            &path,
            &[
                pkg("bash", None, "5.1.8", "9.el9", "x86_64"),
                pkg("glibc", None, "2.34", "100.el9", "x86_64"),
                pkg("glibc", None, "2.34", "100.el9", "i686"),
                pkg("gpg-pubkey", None, "fd431d51", "4ae0493b", "(none)"),
            ],
            true,
        );
        let (pkgs, bad) = read_sqlite(&path).unwrap();
        assert_eq!(bad, 1);
        assert_eq!(pkgs.len(), 3);
        assert_eq!(pkgs["bash"], "5.1.8-9.el9");
        assert_eq!(pkgs["glibc:i686"], "2.34-100.el9");
        assert!(read_sqlite(&dir.path().join("missing.sqlite")).is_err());
    }
}
