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
//! Since shadow-delta, points write `BWPGDLT2` objects, in which a changed page is stored
//! either whole or as a patch ([`crate::delta`]) against its version in the previous point,
//! whichever is smaller:
//!
//! ```text
//! "BWPGDLT2"  page_size: u32 BE  db_pages: u32 BE  count: u32 BE
//! { pgno: u32 BE  kind: u8 (0 whole, 1 patch)  len: u32 BE } × count
//! then the count bodies, in that order: a whole page (page_size bytes), or the first 8 bytes
//! of the new page's SHA-256 followed by the patch
//! ```
//!
//! A restore applies a patch to the page as the chain so far left it in the file it builds,
//! and refuses the object (its hash was right, so the shadow wrote it wrong) when the result's
//! SHA-256 does not start with the 8 bytes kept. `BWPGDLT1` objects (every page whole) of
//! older shadows still restore.
//!
//! To write a patch the shadow needs the page's previous version, which it does not keep: a
//! [`PageIndex`] in memory says where each page changed since the base is stored (the object
//! and offset of its last whole copy, or the base's chunk, then its patches since), the page is
//! rebuilt from those and checked against the previous point's page hash before it is used;
//! any doubt stores the page whole. Bounds:
//! - per page, at most [`PAGE_CHAIN`] patches after a whole copy (or the base): rebuilding
//!   the previous version reads at most `PAGE_CHAIN + 1` pieces;
//! - per chain, a new base when the deltas' bytes would reach the file's size, when their
//!   pages would reach [`CHAIN_PAGES`] times the file's pages (what a restore writes after the
//!   base), or after [`MAX_CHAIN`] points ([`rebase_due`]).
//!
//! A new base is taken when the page size changes (`VACUUM`), when [`rebase_due`] says so,
//! and at the first point of a shadow started again (the page map and index live in memory
//! only).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::delta;
use crate::point::{ObjectId, ObjectRef, ShadowError};
use crate::PointStore;

const MAGIC: &[u8; 8] = b"BWPGDLT1";
const MAGIC2: &[u8; 8] = b"BWPGDLT2";
/// The most patches stored for a page after its last whole copy (or the base). Eight keeps the
/// rebuild of a previous version at nine reads of at most a page each, while a page of random
/// churn (changed at about one point in 25 in the benchmark) almost never reaches it.
pub const PAGE_CHAIN: usize = 8;
/// A chain's deltas may write at most this many times the file's pages on a restore.
pub const CHAIN_PAGES: u64 = 2;
/// The bytes of a page's hash kept beside its patch.
const CHECK: usize = 8;
/// The largest delta object (runs of changed pages beyond it go to the next object).
pub const DELTA_OBJECT: usize = 8 * 1024 * 1024;
/// The longest chain of deltas after a base.
pub const MAX_CHAIN: usize = 256;
/// The name suffix of a point's delta entry.
pub const DELTAS_SUFFIX: &str = "#page-deltas";

/// The SHA-256 of every page of the last point's image, and where the pages changed since the
/// base are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageMap {
    pub page_size: u32,
    pub hashes: Vec<[u8; 32]>,
    pub index: PageIndex,
}

/// Where the versions of the pages changed since the chain's base are stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageIndex {
    /// Per page: its last whole copy (if any since the base) then its patches, oldest first.
    pieces: HashMap<u32, Vec<Piece>>,
    /// Pages the chain's deltas write on a restore (whole or patched).
    pub chain_pages: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Piece {
    obj: ObjectId,
    /// Offset of the body in the object, and its length.
    at: u64,
    len: u32,
    patch: bool,
}

impl PageIndex {
    /// Patches stored for `pgno` since its last whole copy or the base.
    pub fn patches(&self, pgno: u32) -> usize {
        self.pieces
            .get(&pgno)
            .map_or(0, |p| p.iter().filter(|p| p.patch).count())
    }
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
    Ok(PageMap {
        page_size,
        hashes,
        index: PageIndex::default(),
    })
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

/// Whether a delta of at most `delta_bytes` writing `delta_pages` pages, after a chain of
/// `chain` deltas (`chain_bytes` stored, `chain_pages` pages written in all), should be a new
/// base instead: once the chain would hold as many bytes as the file, a restore would read
/// more from the deltas than from a base; once it would write [`CHAIN_PAGES`] times the
/// file's pages, a restore would take about that many times longer than from a base.
pub fn rebase_due(
    chain: usize,
    chain_bytes: u64,
    delta_bytes: u64,
    (chain_pages, delta_pages): (u64, u64),
    file_bytes: u64,
    page_size: u32,
) -> bool {
    let file_pages = file_bytes / u64::from(page_size.max(1));
    chain >= MAX_CHAIN
        || chain_bytes + delta_bytes > file_bytes
        || chain_pages + delta_pages > CHAIN_PAGES * file_pages.max(1)
}

/// Reads `len` bytes at `at` of an object (a piece of a page; checked by the caller).
fn read_piece(store: &PointStore, obj: &ObjectId, at: u64, len: usize) -> Option<Vec<u8>> {
    let f = File::open(store.object_path(obj)).ok()?;
    let mut b = vec![0u8; len];
    f.read_exact_at(&mut b, at).ok()?;
    Some(b)
}

/// The previous version of page `pgno`, rebuilt from the store (`base`: the chain's base
/// chunks of [`super::CHUNK`] bytes) and checked against its hash in `prev`; `None` when it
/// cannot be (the page is new, or a piece is unreadable or wrong).
fn previous_page(
    store: &PointStore,
    base: &[ObjectRef],
    prev: &PageMap,
    pgno: u32,
) -> Option<Vec<u8>> {
    let ps = prev.page_size as usize;
    let want = prev.hashes.get(pgno as usize - 1)?;
    let pieces = prev.index.pieces.get(&pgno).map_or(&[][..], Vec::as_slice);
    let (mut page, rest) = match pieces.split_first() {
        Some((first, rest)) if !first.patch => (read_piece(store, &first.obj, first.at, ps)?, rest),
        _ => {
            let off = u64::from(pgno - 1) * ps as u64;
            let chunk = base.get((off / super::CHUNK as u64) as usize)?;
            let at = off % super::CHUNK as u64;
            if at + ps as u64 > chunk.len {
                return None;
            }
            (read_piece(store, &chunk.id, at, ps)?, pieces)
        }
    };
    for p in rest {
        let body = read_piece(store, &p.obj, p.at, p.len as usize)?;
        page = delta::apply(&page, body.get(CHECK..)?, ps).ok()?;
    }
    (page.len() == ps && Sha256::digest(&page).as_slice() == want).then_some(page)
}

/// Stores the `changed` pages of `f` (the new image, whose hashes are `map`) as delta
/// objects, each page whole or as a patch against its version in the previous point (`prev`,
/// whose chain starts at the `base` chunks), and records in `map.index` where each went.
/// Returns the objects and the bytes newly written to the store.
pub fn put_deltas(
    store: &PointStore,
    f: &File,
    path: &Path,
    (prev, base): (&PageMap, &[ObjectRef]),
    map: &mut PageMap,
    changed: &[u32],
) -> Result<(Vec<ObjectRef>, u64), ShadowError> {
    let ps = map.page_size as usize;
    let per_object = (DELTA_OBJECT / ps).max(1);
    let db_pages = map.hashes.len() as u32;
    let mut index = prev.index.clone();
    let mut out = Vec::new();
    let mut new_bytes = 0;
    let groups: Vec<&[u32]> = if changed.is_empty() {
        // Only the size changed (the file shrank): one object says so.
        vec![&[]]
    } else {
        changed.chunks(per_object).collect()
    };
    let mut page = vec![0u8; ps];
    for group in groups {
        let mut bodies: Vec<(u32, bool, Vec<u8>)> = Vec::with_capacity(group.len());
        for &pgno in group {
            f.read_exact_at(&mut page, u64::from(pgno - 1) * ps as u64)
                .map_err(ShadowError::io(path))?;
            let patch = (prev.page_size == map.page_size && index.patches(pgno) < PAGE_CHAIN)
                .then(|| previous_page(store, base, prev, pgno))
                .flatten()
                .map(|old| delta::diff(&old, &page))
                .filter(|p| CHECK + p.len() < ps);
            match patch {
                Some(p) => {
                    let mut body = Vec::with_capacity(CHECK + p.len());
                    body.extend_from_slice(&Sha256::digest(&page)[..CHECK]);
                    body.extend_from_slice(&p);
                    bodies.push((pgno, true, body));
                }
                None => bodies.push((pgno, false, page.clone())),
            }
        }
        let header = 20 + bodies.len() * 9;
        let total = header + bodies.iter().map(|b| b.2.len()).sum::<usize>();
        let mut obj = Vec::with_capacity(total);
        obj.extend_from_slice(MAGIC2);
        obj.extend_from_slice(&map.page_size.to_be_bytes());
        obj.extend_from_slice(&db_pages.to_be_bytes());
        obj.extend_from_slice(&(bodies.len() as u32).to_be_bytes());
        for (pgno, patch, body) in &bodies {
            obj.extend_from_slice(&pgno.to_be_bytes());
            obj.push(u8::from(*patch));
            obj.extend_from_slice(&(body.len() as u32).to_be_bytes());
        }
        for (_, _, body) in &bodies {
            obj.extend_from_slice(body);
        }
        let (r, new) = store.put_object(&obj)?;
        if new {
            new_bytes += r.len;
        }
        let mut at = header as u64;
        for (pgno, patch, body) in &bodies {
            let piece = Piece {
                obj: r.id,
                at,
                len: body.len() as u32,
                patch: *patch,
            };
            let pieces = index.pieces.entry(*pgno).or_default();
            if !*patch {
                pieces.clear();
            }
            pieces.push(piece);
            at += body.len() as u64;
        }
        index.chain_pages += bodies.len() as u64;
        out.push(r);
    }
    map.index = index;
    Ok((out, new_bytes))
}

/// How a delta object stores a page.
#[derive(Debug, PartialEq, Eq)]
pub enum PageBody<'a> {
    Whole(&'a [u8]),
    /// The first bytes of the new page's SHA-256 and the patch against the page as the chain
    /// left it.
    Patch {
        check: &'a [u8],
        patch: &'a [u8],
    },
}

/// A decoded delta object.
#[derive(Debug, PartialEq, Eq)]
pub struct Delta<'a> {
    pub page_size: u32,
    pub db_pages: u32,
    pub pages: Vec<(u32, PageBody<'a>)>,
}

/// Decodes a delta object (already checked against its hash), or says what is wrong.
pub fn decode(b: &[u8]) -> Result<Delta<'_>, String> {
    let u32_at = |i: usize| -> Option<u32> {
        b.get(i..i + 4)
            .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    };
    let v2 = match b.get(..8) {
        Some(m) if m == MAGIC.as_slice() => false,
        Some(m) if m == MAGIC2.as_slice() => true,
        _ => return Err("not a page delta (bad magic)".into()),
    };
    let (Some(page_size), Some(db_pages), Some(count)) = (u32_at(8), u32_at(12), u32_at(16)) else {
        return Err("page delta header cut short".into());
    };
    if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
        return Err(format!("page delta with page size {page_size}"));
    }
    let count = count as usize;
    let ps = page_size as usize;
    let entry = if v2 { 9 } else { 4 };
    let body = count
        .checked_mul(entry)
        .and_then(|n| n.checked_add(20))
        .filter(|n| *n <= b.len())
        .ok_or_else(|| format!("page delta of {} bytes cannot list {count} pages", b.len()))?;
    let mut pages = Vec::with_capacity(count);
    let mut at = body;
    for k in 0..count {
        let e = 20 + k * entry;
        let pgno = u32_at(e).unwrap_or(0);
        if pgno == 0 || pgno > db_pages {
            return Err(format!(
                "page delta names page {pgno} of a {db_pages}-page database"
            ));
        }
        let (patch, len) = if v2 {
            match (b[e + 4], u32_at(e + 5).unwrap_or(0) as usize) {
                (0, len) if len == ps => (false, len),
                (1, len) if len > CHECK && len < ps => (true, len),
                (kind, len) => {
                    return Err(format!(
                    "page delta stores page {pgno} as kind {kind} of {len} bytes (page size {ps})"
                ))
                }
            }
        } else {
            (false, ps)
        };
        let Some(bytes) = b.get(at..at + len) else {
            return Err(format!(
                "page delta of {} bytes, more expected for {count} pages",
                b.len()
            ));
        };
        pages.push((
            pgno,
            if patch {
                PageBody::Patch {
                    check: &bytes[..CHECK],
                    patch: &bytes[CHECK..],
                }
            } else {
                PageBody::Whole(bytes)
            },
        ));
        at += len;
    }
    if at != b.len() {
        return Err(format!(
            "page delta of {} bytes, {at} expected for {count} pages",
            b.len()
        ));
    }
    Ok(Delta {
        page_size,
        db_pages,
        pages,
    })
}

/// What applying a delta to a file being restored can meet.
#[derive(Debug)]
pub enum ApplyError {
    Io(io::Error),
    /// The object is whole (its hash is right) but does not rebuild the page.
    Bad(String),
}

/// Writes a decoded delta's pages into `f` (the file as the chain so far left it), patching
/// patched pages in place and checking each against its kept hash bytes.
pub fn apply(f: &File, d: &Delta<'_>) -> Result<(), ApplyError> {
    let ps = d.page_size as usize;
    let mut page = vec![0u8; ps];
    for (pgno, body) in &d.pages {
        let off = u64::from(pgno - 1) * ps as u64;
        match body {
            PageBody::Whole(bytes) => f.write_all_at(bytes, off).map_err(ApplyError::Io)?,
            PageBody::Patch { check, patch } => {
                f.read_exact_at(&mut page, off).map_err(|e| {
                    ApplyError::Bad(format!(
                        "page {pgno} is patched but the file before it ends sooner ({e})"
                    ))
                })?;
                let new = delta::apply(&page, patch, ps)
                    .map_err(|e| ApplyError::Bad(format!("page {pgno}: {e}")))?;
                if new.len() != ps || Sha256::digest(&new)[..CHECK] != **check {
                    return Err(ApplyError::Bad(format!(
                        "page {pgno} rebuilt from its patch does not match its hash"
                    )));
                }
                f.write_all_at(&new, off).map_err(ApplyError::Io)?;
            }
        }
    }
    Ok(())
}
