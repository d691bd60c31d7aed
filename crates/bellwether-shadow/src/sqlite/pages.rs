//! Page deltas of differential and transactional SQLite points.
//!
//! A point's file is a **base** (the file in [`super::CHUNK`] chunks, shared with every
//! point whose chunk did not change) followed by a chain of **page deltas**: each point after
//! the base stores only the pages that differ from the previous point's image, found by
//! comparing the SHA-256 of every page against the page map the shadow keeps in memory. A
//! delta object holds runs of changed pages, at most [`DELTA_OBJECT`] bytes each:
//!
//! ```text
//! "BWPGDLT1"  page_size: u32 BE  db_pages: u32 BE  count: u32 BE  pgno: u32 BE × count
//! then the count pages, in pgno order
//! ```
//!
//! `db_pages` is the database's size after the delta (it shrinks or grows the file). The
//! manifest lists the base's chunks in the file's entry and the whole chain, oldest first,
//! in a second entry named `FILE#page-deltas` (size 0: the file's entry holds the restored
//! size), so retention and `gc` keep every object a point needs. Restore writes the base,
//! then applies each delta in order, every object hashed as it is read.
//!
//! A new base is taken when the page size changes (`VACUUM`), when the chain's deltas would
//! reach the file's size ([`rebase_due`]), and at the first point of a shadow started again
//! (the page map lives in memory only).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::point::{ObjectRef, ShadowError};
use crate::PointStore;

const MAGIC: &[u8; 8] = b"BWPGDLT1";
/// The largest delta object (runs of changed pages beyond it go to the next object).
pub const DELTA_OBJECT: usize = 8 * 1024 * 1024;
/// The longest chain of deltas after a base.
pub const MAX_CHAIN: usize = 256;
/// The name suffix of a point's delta entry.
pub const DELTAS_SUFFIX: &str = "#page-deltas";

/// The SHA-256 of every page of the last point's image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageMap {
    pub page_size: u32,
    pub hashes: Vec<[u8; 32]>,
}

/// Hashes every page of `f` (`pages` pages of `page_size` bytes).
pub fn hash_pages(f: &File, page_size: u32, pages: u32) -> io::Result<PageMap> {
    let ps = page_size as usize;
    let per_read = (1 << 20) / ps.min(1 << 20);
    let mut buf = vec![0u8; ps * per_read.max(1)];
    let mut hashes = Vec::with_capacity(pages as usize);
    let mut pgno = 0u32;
    while pgno < pages {
        let n = (pages - pgno).min(per_read.max(1) as u32) as usize;
        let b = &mut buf[..n * ps];
        f.read_exact_at(b, u64::from(pgno) * u64::from(page_size))?;
        for page in b.chunks_exact(ps) {
            hashes.push(Sha256::digest(page).into());
        }
        pgno += n as u32;
    }
    Ok(PageMap { page_size, hashes })
}

/// The pages (1-based numbers) of `new` that differ from `old` or are past its end.
pub fn changed(old: &PageMap, new: &PageMap) -> Vec<u32> {
    new.hashes
        .iter()
        .enumerate()
        .filter(|(i, h)| old.hashes.get(*i) != Some(h))
        .map(|(i, _)| i as u32 + 1)
        .collect()
}

/// Whether a delta of `delta_bytes` after a chain of `chain` deltas (`chain_bytes` in all)
/// should be a new base instead: once the chain would hold as many bytes as the file, a
/// restore would write more from the deltas than from a base.
pub fn rebase_due(chain: usize, chain_bytes: u64, delta_bytes: u64, file_bytes: u64) -> bool {
    chain >= MAX_CHAIN || chain_bytes + delta_bytes > file_bytes
}

/// Stores the `changed` pages of `f` as delta objects. Returns them and the bytes newly
/// written to the store.
pub fn put_deltas(
    store: &PointStore,
    f: &File,
    path: &Path,
    map: &PageMap,
    changed: &[u32],
) -> Result<(Vec<ObjectRef>, u64), ShadowError> {
    let ps = map.page_size as usize;
    let per_object = (DELTA_OBJECT / ps).max(1);
    let db_pages = map.hashes.len() as u32;
    let mut out = Vec::new();
    let mut new_bytes = 0;
    let groups: Vec<&[u32]> = if changed.is_empty() {
        // Only the size changed (the file shrank): one object says so.
        vec![&[]]
    } else {
        changed.chunks(per_object).collect()
    };
    for group in groups {
        let mut obj = Vec::with_capacity(20 + group.len() * (4 + ps));
        obj.extend_from_slice(MAGIC);
        obj.extend_from_slice(&map.page_size.to_be_bytes());
        obj.extend_from_slice(&db_pages.to_be_bytes());
        obj.extend_from_slice(&(group.len() as u32).to_be_bytes());
        for pgno in group {
            obj.extend_from_slice(&pgno.to_be_bytes());
        }
        let start = obj.len();
        obj.resize(start + group.len() * ps, 0);
        // Read runs of consecutive pages at once.
        let mut i = 0;
        while i < group.len() {
            let mut j = i + 1;
            while j < group.len() && group[j] == group[j - 1] + 1 {
                j += 1;
            }
            let at = start + i * ps;
            f.read_exact_at(
                &mut obj[at..at + (j - i) * ps],
                u64::from(group[i] - 1) * ps as u64,
            )
            .map_err(ShadowError::io(path))?;
            i = j;
        }
        let (r, new) = store.put_object(&obj)?;
        if new {
            new_bytes += r.len;
        }
        out.push(r);
    }
    Ok((out, new_bytes))
}

/// A decoded delta object.
#[derive(Debug, PartialEq, Eq)]
pub struct Delta<'a> {
    pub page_size: u32,
    pub db_pages: u32,
    pub pages: Vec<(u32, &'a [u8])>,
}

/// Decodes a delta object (already checked against its hash), or says what is wrong.
pub fn decode(b: &[u8]) -> Result<Delta<'_>, String> {
    let u32_at = |i: usize| -> Option<u32> {
        b.get(i..i + 4)
            .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    };
    if b.get(..8) != Some(MAGIC.as_slice()) {
        return Err("not a page delta (bad magic)".into());
    }
    let (Some(page_size), Some(db_pages), Some(count)) = (u32_at(8), u32_at(12), u32_at(16)) else {
        return Err("page delta header cut short".into());
    };
    if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
        return Err(format!("page delta with page size {page_size}"));
    }
    let count = count as usize;
    let ps = page_size as usize;
    let body = 20 + count * 4;
    if b.len() != body + count * ps {
        return Err(format!(
            "page delta of {} bytes, {} expected for {count} pages",
            b.len(),
            body + count * ps
        ));
    }
    let mut pages = Vec::with_capacity(count);
    for k in 0..count {
        let pgno = u32_at(20 + k * 4).unwrap_or(0);
        if pgno == 0 || pgno > db_pages {
            return Err(format!(
                "page delta names page {pgno} of a {db_pages}-page database"
            ));
        }
        let at = body + k * ps;
        pages.push((pgno, &b[at..at + ps]));
    }
    Ok(Delta {
        page_size,
        db_pages,
        pages,
    })
}
