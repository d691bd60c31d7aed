//! Sub-page and sub-chunk deltas: how a changed SQLite page or directory chunk is stored when
//! only part of it changed.
//!
//! A **patch** turns an old version of a block into the new one: the new length, then the
//! byte ranges where the new block differs from the old, each as the gap since the end of the
//! previous range, its length and the new bytes (LEB128 varints):
//!
//! ```text
//! new_len: varint   then repeated { gap: varint  len: varint (≥ 1)  bytes: len }
//! ```
//!
//! Bytes of the new block past the old block's end are always in a range. Ranges closer than
//! [`MERGE_GAP`] bytes are merged (a range costs two varints, two to four bytes). Applying a
//! patch needs the old block and nothing else; what it rebuilds is checked by its caller
//! against the block's content hash (SQLite: eight bytes of the page's SHA-256 kept beside the
//! patch; directories: the chunk's name, its SHA-256).
//!
//! The rows these shadows see are mostly random bytes (compressed or encrypted payloads, or
//! the benchmarks' `randomblob`), which no general compressor shrinks; what makes a changed
//! page or chunk small is leaving out the bytes that did not change, which is all a patch
//! does. Chains of patches are bounded by the callers: [`crate::sqlite::pages`] stores a page
//! whole after [`crate::sqlite::pages::PAGE_CHAIN`] patches, [`crate::dir::resource`] keeps
//! the objects a chunk's rebuild reads within [`CHUNK_CHAIN`].

use std::collections::HashSet;
use std::io::{self, Read};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::point::{ObjectId, ObjectRef};

/// Differing ranges this close together are stored as one range.
pub const MERGE_GAP: usize = 4;
/// The most objects besides its own a rebuild of a directory chunk stored as a patch reads
/// (its bases, their bases, and so on, each once): a restore reads at most this many objects
/// plus one for a chunk. A writer past it patches against older chunks or stores the chunk
/// whole. Why 16: a chunk of a file edited every point reaches the bound every few points
/// (sooner with several bases per patch) and then stores about a whole chunk again; with 16
/// the 1 GiB `edits` bench stores 1.296 × the data after 24 points, with 8 1.335 ×; the
/// restore of its last point took 1.4–1.8 × the base point's with either (BENCHMARKS.md,
/// "Data shadows (issue 13)").
pub const CHUNK_CHAIN: u8 = 16;

/// What is wrong with a patch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    #[error("patch cut short at byte {at}")]
    Truncated { at: usize },
    #[error("patch says {len} bytes, more than the {limit} allowed")]
    TooLong { len: u64, limit: usize },
    #[error("patch range {start}..{end} is outside the {len}-byte block")]
    OutOfRange { start: u64, end: u64, len: usize },
    #[error("patch has an empty range at byte {at}")]
    EmptyRange { at: usize },
    #[error("patch leaves bytes {from}..{len} past the old block's end unwritten")]
    Unwritten { from: usize, len: usize },
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(b: &[u8], at: &mut usize) -> Result<u64, PatchError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let Some(&byte) = b.get(*at) else {
            return Err(PatchError::Truncated { at: *at });
        };
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(PatchError::Truncated { at: *at })
}

/// The patch that turns `old` into `new`.
pub fn diff(old: &[u8], new: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    put_varint(&mut out, new.len() as u64);
    let differs = |i: usize| i >= old.len() || old[i] != new[i];
    let mut end = 0; // end of the last range written
    let mut i = 0;
    while i < new.len() {
        if !differs(i) {
            i += 1;
            continue;
        }
        // A run of differing bytes from `i`, extended over gaps shorter than MERGE_GAP.
        let start = i;
        let mut stop = i + 1;
        let mut j = stop;
        while j < new.len() {
            if differs(j) {
                stop = j + 1;
            } else if j - stop >= MERGE_GAP {
                break;
            }
            j += 1;
        }
        put_varint(&mut out, (start - end) as u64);
        put_varint(&mut out, (stop - start) as u64);
        out.extend_from_slice(&new[start..stop]);
        end = stop;
        i = stop;
    }
    out
}

/// The new length a patch declares, without applying it.
pub fn patched_len(patch: &[u8]) -> Result<u64, PatchError> {
    get_varint(patch, &mut 0)
}

/// Rebuilds the new block from `old` and a patch; `limit` bounds the new length (a damaged
/// patch must not allocate gigabytes).
pub fn apply(old: &[u8], patch: &[u8], limit: usize) -> Result<Vec<u8>, PatchError> {
    let mut at = 0;
    let len = get_varint(patch, &mut at)?;
    if len > limit as u64 {
        return Err(PatchError::TooLong { len, limit });
    }
    let len = len as usize;
    let mut out = vec![0u8; len];
    let keep = old.len().min(len);
    out[..keep].copy_from_slice(&old[..keep]);
    let mut end = 0u64;
    while at < patch.len() {
        let range_at = at;
        let gap = get_varint(patch, &mut at)?;
        let n = get_varint(patch, &mut at)?;
        if n == 0 {
            return Err(PatchError::EmptyRange { at: range_at });
        }
        let start = end.saturating_add(gap);
        let stop = start.saturating_add(n);
        if stop > len as u64 {
            return Err(PatchError::OutOfRange {
                start,
                end: stop,
                len,
            });
        }
        let (s, e) = (start as usize, stop as usize);
        let bytes = patch
            .get(at..at + (e - s))
            .ok_or(PatchError::Truncated { at: patch.len() })?;
        // Bytes past the old block must come from ranges, in order.
        if s > keep.max(end as usize) {
            return Err(PatchError::Unwritten {
                from: keep.max(end as usize),
                len,
            });
        }
        out[s..e].copy_from_slice(bytes);
        at += e - s;
        end = stop;
    }
    if (end as usize).max(keep) < len {
        return Err(PatchError::Unwritten {
            from: (end as usize).max(keep),
            len,
        });
    }
    Ok(out)
}

// ----- directory chunks stored as patches -----
//
// A directory chunk keeps its name (the SHA-256 of its bytes: every manifest, deduplication
// and restore uses it) whatever its object file holds: the chunk's bytes, or a patch against
// other chunks of the store, as git keeps objects named by their content in delta form. Two
// formats; both are read, the second is the one written:
//
//     "BWCHDLT1"  depth: u8  base: SHA-256 (32 bytes)  base_len: u32 BE  shift: i64 BE
//     then the patch, against the base shifted by `shift` bytes (`aligned`)
//
//     "BWCHDLT2"  depth: u8  n: u8
//     then n times { base: SHA-256 (32 bytes)  base_len: u32 BE  shift: i64 BE  from: u32 BE  to: u32 BE }
//     then the patch, against the chunk's reference (`reference`): zeros, over which bytes
//     from..to are bytes from + shift .. to + shift of that base (where the base reaches)
//
// Format 1 (shadow-delta) patched a new chunk against the one chunk of the file's previous
// version that overlapped it most. Format 2 patches it against every chunk of the previous
// version it overlaps, each over the range it overlaps, so the reference is the old file's
// bytes at the new chunk's place: an edit that moved a chunk boundary (two old chunks merged
// into one new chunk, or a new chunk straddling the old boundary) still patches to about the
// bytes it changed. A base range may also point into an older chunk than the previous
// version's (see `ChunkBase`), which is how a writer keeps within the bound below.
//
// `depth` is how many other objects a rebuild reads: its bases, their bases and so on, each
// object once (a chunk stored whole has depth 0); for a chain of format 1 patches that is the
// chain's length. It is at most CHUNK_CHAIN, so a restore reads at most CHUNK_CHAIN + 1
// objects for a chunk; a rebuild reads each object once, counts them and refuses a patch that
// reads more than its depth says. A patch is kept only when its object is at most 3/4 of the chunk
// (see `worth_a_patch`), so such an object is always shorter than its chunk: the point store
// tells the two apart by length (a chunk stored whole has its chunk's length) and checks,
// reads and collects a patched chunk through the functions below.

const CHUNK_MAGIC: &[u8; 8] = b"BWCHDLT1";
const CHUNK_MAGIC2: &[u8; 8] = b"BWCHDLT2";
/// Format 3: format 2's header, and a body that is a zstd frame compressed with the reference
/// as its prefix (so bytes that moved within the chunk are matched where they went).
const CHUNK_MAGIC3: &[u8; 8] = b"BWCHDLT3";
/// Format 4: a zstd frame like format 3's, against a reference of its own length made of
/// ranges of other objects one after the other (a WAL chunk against the base backup's copies
/// of the pages its full-page images copy, [`crate::pg`]): a compact header of the objects
/// once each and the ranges by index.
const CHUNK_MAGIC4: &[u8; 8] = b"BWCHDLT4";
/// Format 4's header before its objects: magic, depth, objects (u16), ranges (u16), the
/// reference's length (u32).
const HEADER4: usize = 8 + 1 + 2 + 2 + 4;
/// One object in a format 4 header (its name and length), and one range (the object's
/// index, where in it, how long).
const OBJECT4: usize = 32 + 4;
const RANGE4: usize = 2 + 4 + 4;
/// The most objects and ranges a format 4 chunk has.
pub const MAX_OBJECTS4: usize = 255;
pub const MAX_RANGES4: usize = 1024;
/// The length of a format 1 header.
pub const CHUNK_HEADER: usize = 8 + 1 + 32 + 4 + 8;
/// The length of one base in a format 2 header, and of the header before the bases.
const BASE_ENTRY: usize = 32 + 4 + 8 + 4 + 4;
const HEADER2: usize = 8 + 1 + 1;
/// The most bases a patched chunk has (one object may be the base of several ranges, at
/// different shifts).
pub const MAX_BASES: usize = 2 * CHUNK_CHAIN as usize;
/// The longest header of any format (format 4's).
const MAX_HEADER: usize = HEADER4 + MAX_OBJECTS4 * OBJECT4 + MAX_RANGES4 * RANGE4;

/// One base of a patched chunk: bytes `from..to` of the chunk's reference are bytes
/// `from + shift .. to + shift` of `base` (zeros where it does not reach).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkBase {
    pub base: ObjectRef,
    pub shift: i64,
    pub from: u32,
    pub to: u32,
}

/// A patched chunk's header: its depth (the other objects its rebuild reads), its bases in
/// order, and where the patch starts in the object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkPatch {
    pub depth: u8,
    pub bases: Vec<ChunkBase>,
    pub body: usize,
    /// The body is a zstd frame against the reference (format 3), not ranges.
    pub zstd: bool,
    /// The reference's length where it is not the chunk's (format 4).
    pub reference_len: Option<usize>,
}

/// How a patched chunk's body says what changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    /// The ranges that differ at the same place ([`diff`]): an edit in place, as in the
    /// directory kind's files, where the chunking already follows moved bytes.
    Ranges,
    /// A zstd frame compressed with the reference as its prefix ([`zstd_patch`]): bytes that
    /// moved within the chunk (a PostgreSQL page whose tuples were compacted) cost a match,
    /// and new bytes are compressed.
    Zstd,
}

/// The zstd frame of `new` compressed (level 3) with `reference` as its prefix.
pub fn zstd_patch(reference: &[u8], new: &[u8]) -> io::Result<Vec<u8>> {
    use std::io::Write;
    use zstd::stream::raw::{CParameter, Encoder};
    let mut raw = Encoder::with_ref_prefix(3, reference)?;
    // A window over the prefix and the chunk both (at most 1 MiB each).
    let log = (reference.len() + new.len())
        .max(1 << 10)
        .next_power_of_two()
        .trailing_zeros();
    raw.set_parameter(CParameter::WindowLog(log.max(10)))?;
    raw.set_parameter(CParameter::ChecksumFlag(false))?;
    let mut enc =
        zstd::stream::write::Encoder::with_encoder(Vec::with_capacity(new.len() / 8), raw);
    enc.write_all(new)?;
    enc.finish()
}

/// The chunk a [`zstd_patch`] body rebuilds from `reference`, at most `limit` bytes.
pub fn zstd_apply(reference: &[u8], body: &[u8], limit: usize) -> Result<Vec<u8>, String> {
    let mut d = zstd::stream::read::Decoder::with_ref_prefix(body, reference)
        .map_err(|e| format!("its zstd frame cannot be read: {e}"))?;
    d.window_log_max(31)
        .map_err(|e| format!("its zstd frame cannot be read: {e}"))?;
    let mut out = Vec::with_capacity(limit);
    (&mut d)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("its zstd frame does not decompress: {e}"))?;
    if out.len() > limit {
        return Err(format!("its zstd frame holds more than {limit} bytes"));
    }
    Ok(out)
}

/// `len` bytes of `base` as seen from a chunk starting `shift` bytes after it (zeros where
/// the base does not reach): the reference of a format 1 patch.
pub fn aligned(base: &[u8], shift: i64, len: usize) -> Vec<u8> {
    let whole = ChunkBase {
        base: ObjectRef {
            id: ObjectId([0; 32]),
            len: base.len() as u64,
        },
        shift,
        from: 0,
        to: u32::MAX,
    };
    reference(len, &[(whole, base)])
}

/// The `len`-byte reference a patch with these bases (and their bytes) applies to.
pub fn reference(len: usize, bases: &[(ChunkBase, &[u8])]) -> Vec<u8> {
    let mut out = vec![0u8; len];
    for (b, bytes) in bases {
        // i in from..to with i + shift in 0..bytes.len().
        let lo = (i64::from(b.from)).max(b.shift.checked_neg().unwrap_or(i64::MAX));
        let hi = (i64::from(b.to))
            .min(len as i64)
            .min((bytes.len() as i64).saturating_sub(b.shift));
        if lo < hi {
            let (lo, hi) = (lo as usize, hi as usize);
            let at = (lo as i64 + b.shift) as usize;
            out[lo..hi].copy_from_slice(&bytes[at..at + (hi - lo)]);
        }
    }
    out
}

/// Whether a patched chunk's object of `object_len` bytes (header included) is worth storing
/// instead of the `chunk_len`-byte chunk: at most 3/4 of it (a patched chunk costs a restore
/// more reads, of its bases).
pub fn worth_a_patch(object_len: usize, chunk_len: usize) -> bool {
    object_len * 4 <= chunk_len * 3
}

/// The object bytes of a chunk stored in format 1, as `patch` against `base` (of depth
/// `base_depth`) shifted by `shift`. New chunks are written in format 2 ([`chunk_object2`]);
/// this stays for the tests of old shadows.
pub fn chunk_object(base: &ObjectRef, base_depth: u8, shift: i64, patch: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(CHUNK_HEADER + patch.len());
    b.extend_from_slice(CHUNK_MAGIC);
    b.push(base_depth + 1);
    b.extend_from_slice(&base.id.0);
    b.extend_from_slice(&(base.len as u32).to_be_bytes());
    b.extend_from_slice(&shift.to_be_bytes());
    b.extend_from_slice(patch);
    b
}

/// The object bytes of a chunk stored in format 2, as `patch` against the reference of
/// `bases` (1 to [`MAX_BASES`] of them); `depth` is the other objects its rebuild reads.
pub fn chunk_object2(depth: u8, bases: &[ChunkBase], patch: &[u8]) -> Vec<u8> {
    chunk_object_with(CHUNK_MAGIC2, depth, bases, patch)
}

/// The object bytes of a chunk stored in format 3: format 2's header, then `body`, a
/// [`zstd_patch`] against the reference of `bases`.
pub fn chunk_object3(depth: u8, bases: &[ChunkBase], body: &[u8]) -> Vec<u8> {
    chunk_object_with(CHUNK_MAGIC3, depth, bases, body)
}

fn chunk_object_with(magic: &[u8; 8], depth: u8, bases: &[ChunkBase], patch: &[u8]) -> Vec<u8> {
    debug_assert!((1..=MAX_BASES).contains(&bases.len()));
    let mut b = Vec::with_capacity(HEADER2 + bases.len() * BASE_ENTRY + patch.len());
    b.extend_from_slice(magic);
    b.push(depth);
    b.push(bases.len() as u8);
    for e in bases {
        b.extend_from_slice(&e.base.id.0);
        b.extend_from_slice(&(e.base.len as u32).to_be_bytes());
        b.extend_from_slice(&e.shift.to_be_bytes());
        b.extend_from_slice(&e.from.to_be_bytes());
        b.extend_from_slice(&e.to.to_be_bytes());
    }
    b.extend_from_slice(patch);
    b
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be_i64(b: &[u8]) -> i64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[..8]);
    i64::from_be_bytes(v)
}

fn object_ref(b: &[u8]) -> ObjectRef {
    let mut id = [0u8; 32];
    id.copy_from_slice(&b[..32]);
    ObjectRef {
        id: ObjectId(id),
        len: u64::from(be_u32(&b[32..36])),
    }
}

/// The header of a patched chunk's object (either format), or `None` when `b` is not one.
pub fn chunk_patch(b: &[u8]) -> Option<ChunkPatch> {
    if b.len() >= CHUNK_HEADER && &b[..8] == CHUNK_MAGIC {
        let depth = b[8];
        return (1..=CHUNK_CHAIN).contains(&depth).then(|| ChunkPatch {
            depth,
            bases: vec![ChunkBase {
                base: object_ref(&b[9..45]),
                shift: be_i64(&b[45..53]),
                from: 0,
                to: u32::MAX,
            }],
            body: CHUNK_HEADER,
            zstd: false,
            reference_len: None,
        });
    }
    if b.len() >= HEADER4 && &b[..8] == CHUNK_MAGIC4 {
        return chunk_patch4(b);
    }
    if b.len() < HEADER2 || (&b[..8] != CHUNK_MAGIC2 && &b[..8] != CHUNK_MAGIC3) {
        return None;
    }
    let zstd = &b[..8] == CHUNK_MAGIC3;
    let (depth, n) = (b[8], usize::from(b[9]));
    if !(1..=CHUNK_CHAIN).contains(&depth) || n == 0 || n > MAX_BASES {
        return None;
    }
    let body = HEADER2 + n * BASE_ENTRY;
    if b.len() < body {
        return None;
    }
    let bases = b[HEADER2..body]
        .chunks_exact(BASE_ENTRY)
        .map(|e| ChunkBase {
            base: object_ref(&e[..36]),
            shift: be_i64(&e[36..44]),
            from: be_u32(&e[44..48]),
            to: be_u32(&e[48..52]),
        })
        .collect::<Vec<_>>();
    bases.iter().all(|e| e.from <= e.to).then_some(ChunkPatch {
        depth,
        bases,
        body,
        zstd,
        reference_len: None,
    })
}

/// The object bytes of a chunk stored in format 4: `body`, a [`zstd_patch`] against the
/// reference that `bases` make one after the other (each base's range `from..to` is where it
/// sits in the reference; they follow each other from 0), reading `depth` other objects.
/// `None` when there are none, or more objects or ranges than the format holds.
pub fn chunk_object4(depth: u8, bases: &[ChunkBase], body: &[u8]) -> Option<Vec<u8>> {
    if bases.is_empty() || bases.len() > MAX_RANGES4 || depth == 0 {
        return None;
    }
    let mut objects: Vec<ObjectRef> = Vec::new();
    let mut index = std::collections::HashMap::new();
    let mut ranges = Vec::with_capacity(bases.len());
    let mut at = 0u32;
    for b in bases {
        if b.from != at || b.to < b.from {
            return None;
        }
        at = b.to;
        let i = *index.entry(b.base.id).or_insert_with(|| {
            objects.push(b.base);
            objects.len() - 1
        });
        let offset = i64::from(b.from) + b.shift;
        let offset = u32::try_from(offset).ok()?;
        ranges.push((i as u16, offset, b.to - b.from));
    }
    if objects.len() > MAX_OBJECTS4 {
        return None;
    }
    let mut out =
        Vec::with_capacity(HEADER4 + objects.len() * OBJECT4 + ranges.len() * RANGE4 + body.len());
    out.extend_from_slice(CHUNK_MAGIC4);
    out.push(depth);
    out.extend_from_slice(&(objects.len() as u16).to_be_bytes());
    out.extend_from_slice(&(ranges.len() as u16).to_be_bytes());
    out.extend_from_slice(&at.to_be_bytes());
    for o in &objects {
        out.extend_from_slice(&o.id.0);
        out.extend_from_slice(&u32::try_from(o.len).ok()?.to_be_bytes());
    }
    for (i, offset, len) in ranges {
        out.extend_from_slice(&i.to_be_bytes());
        out.extend_from_slice(&offset.to_be_bytes());
        out.extend_from_slice(&len.to_be_bytes());
    }
    out.extend_from_slice(body);
    Some(out)
}

fn chunk_patch4(b: &[u8]) -> Option<ChunkPatch> {
    let depth = b[8];
    let n_objects = usize::from(u16::from_be_bytes([b[9], b[10]]));
    let n_ranges = usize::from(u16::from_be_bytes([b[11], b[12]]));
    let reference_len = be_u32(&b[13..17]) as usize;
    if depth == 0 || n_objects == 0 || n_objects > MAX_OBJECTS4 || n_ranges > MAX_RANGES4 {
        return None;
    }
    let ranges_at = HEADER4 + n_objects * OBJECT4;
    let body = ranges_at + n_ranges * RANGE4;
    if b.len() < body {
        return None;
    }
    let objects: Vec<ObjectRef> = b[HEADER4..ranges_at]
        .chunks_exact(OBJECT4)
        .map(object_ref)
        .collect();
    let mut bases = Vec::with_capacity(n_ranges);
    let mut at = 0u32;
    for e in b[ranges_at..body].chunks_exact(RANGE4) {
        let base = *objects.get(usize::from(u16::from_be_bytes([e[0], e[1]])))?;
        let offset = be_u32(&e[2..6]);
        let len = be_u32(&e[6..10]);
        let to = at.checked_add(len)?;
        bases.push(ChunkBase {
            base,
            shift: i64::from(offset) - i64::from(at),
            from: at,
            to,
        });
        at = to;
    }
    (at as usize == reference_len).then_some(ChunkPatch {
        depth,
        bases,
        body,
        zstd: true,
        reference_len: Some(reference_len),
    })
}

/// The first bytes of object `id` as stored (enough for any patch's header) and its stored
/// length. Reads 2 KiB, more only for a format 4 header that says it is longer.
fn read_header(dir: &Path, id: &ObjectId) -> io::Result<(u64, Vec<u8>)> {
    const FIRST: usize = HEADER2 + MAX_BASES * BASE_ENTRY;
    let mut f = std::fs::File::open(id.path_in(dir))?;
    let len = f.metadata()?.len();
    let mut head = Vec::with_capacity(FIRST);
    (&mut f).take(FIRST as u64).read_to_end(&mut head)?;
    if head.len() >= HEADER4 && head.starts_with(CHUNK_MAGIC4) {
        let objects = usize::from(u16::from_be_bytes([head[9], head[10]]));
        let ranges = usize::from(u16::from_be_bytes([head[11], head[12]]));
        let want = (HEADER4 + objects * OBJECT4 + ranges * RANGE4).min(MAX_HEADER);
        if want > head.len() {
            f.take((want - head.len()) as u64).read_to_end(&mut head)?;
        }
    }
    Ok((len, head))
}

/// The header of the chunk `r` as stored: `Some(None)` when it is stored whole,
/// `Some(Some(header))` when patched, `None` when it is missing or neither.
pub fn stored_patch(dir: &Path, r: &ObjectRef) -> Option<Option<ChunkPatch>> {
    let (len, head) = read_header(dir, &r.id).ok()?;
    if len == r.len || compressed(len, r.len, &head) {
        return Some(None);
    }
    chunk_patch(&head).filter(|_| len < r.len).map(Some)
}

/// Whether an object of `stored_len` bytes whose content is `len` bytes, starting `head`,
/// is stored compressed: whole, not a patch (a PostgreSQL object; a patch is never
/// compressed, so its header is read in place).
fn compressed(stored_len: u64, len: u64, head: &[u8]) -> bool {
    stored_len < len && head.starts_with(&crate::point::objects::ZSTD_MAGIC)
}

/// Whether the object `r`, open as `f`, is stored as a patch (shorter than its content and
/// starting with a patch's magic): it must be rebuilt, not cloned or copied.
pub fn is_patched_file(f: &std::fs::File, r: &ObjectRef) -> bool {
    use std::os::unix::fs::FileExt;
    let mut head = [0u8; 8];
    f.metadata().is_ok_and(|md| md.len() < r.len)
        && f.read_exact_at(&mut head, 0).is_ok()
        && [CHUNK_MAGIC, CHUNK_MAGIC2, CHUNK_MAGIC3, CHUNK_MAGIC4].contains(&&head)
}

/// The depth of the chunk `r` as stored (the other objects its rebuild reads): 0 whole,
/// 1.. patched (and `None` when it is missing or neither).
pub fn stored_depth(dir: &Path, r: &ObjectRef) -> Option<u8> {
    stored_patch(dir, r).map(|p| p.map_or(0, |p| p.depth))
}

/// Whether an object of `stored_len` bytes named by `r` is a patched chunk whose bases are all
/// present with their lengths (what [`crate::PointStore::verify_point`] checks of an object
/// without reading it whole).
pub fn patched_chunk_present(dir: &Path, r: &ObjectRef, stored_len: u64) -> bool {
    if stored_len >= r.len {
        return false;
    }
    let Ok((_, head)) = read_header(dir, &r.id) else {
        return false;
    };
    let Some(p) = chunk_patch(&head) else {
        return false;
    };
    let mut seen = HashSet::from([r.id]);
    let mut todo: Vec<ObjectRef> = p.bases.iter().map(|b| b.base).collect();
    let mut read = 0;
    while let Some(b) = todo.pop() {
        if !seen.insert(b.id) {
            continue;
        }
        read += 1;
        if read > p.depth {
            return false;
        }
        match std::fs::metadata(b.id.path_in(dir)) {
            Ok(m) if m.len() == b.len => {}
            Ok(m) if m.len() < b.len => {
                let Ok((_, h)) = read_header(dir, &b.id) else {
                    return false;
                };
                if compressed(m.len(), b.len, &h) {
                    continue;
                }
                match chunk_patch(&h) {
                    Some(bp) => todo.extend(bp.bases.iter().map(|x| x.base)),
                    None => return false,
                }
            }
            _ => return false,
        }
    }
    true
}

/// The objects a rebuild of the patched chunk `p` reads besides its own (its bases, their
/// bases, …), as far as they are present: what a writer counts against [`CHUNK_CHAIN`]. Stops
/// once more than `limit` are found.
pub fn objects_read(dir: &Path, p: &ChunkPatch, limit: usize) -> HashSet<ObjectId> {
    let mut seen = HashSet::new();
    let mut todo: Vec<ObjectRef> = p.bases.iter().map(|b| b.base).collect();
    while let Some(b) = todo.pop() {
        if seen.len() > limit || !seen.insert(b.id) {
            continue;
        }
        if let Some(Some(bp)) = stored_patch(dir, &b) {
            todo.extend(bp.bases.iter().map(|x| x.base));
        }
    }
    seen
}

/// Adds to `keep` the bases (and their bases) of every patched chunk among `refs`, so
/// garbage collection keeps what a kept chunk is rebuilt from.
pub fn add_bases<'a>(
    dir: &Path,
    refs: impl Iterator<Item = &'a ObjectRef>,
    keep: &mut HashSet<ObjectId>,
) {
    let mut todo: Vec<ObjectRef> = refs.copied().collect();
    let mut seen = HashSet::new();
    while let Some(r) = todo.pop() {
        if !seen.insert(r.id) {
            continue;
        }
        // Only a chunk shorter than its name says can be a patch: one stat for the others.
        if std::fs::metadata(r.id.path_in(dir)).map_or(true, |m| m.len() >= r.len) {
            continue;
        }
        let Ok((_, head)) = read_header(dir, &r.id) else {
            continue;
        };
        if let Some(p) = chunk_patch(&head) {
            for b in p.bases {
                keep.insert(b.base.id);
                todo.push(b.base);
            }
        }
    }
}

/// A chunk's bytes from its object at `dir`, rebuilt when it is stored as a patch (every
/// base checked against its name on the way); the result is checked against `r` too. A
/// chunk stored whole is returned as read (`stored`), its check left to the caller.
pub fn chunk_bytes(dir: &Path, r: &ObjectRef, stored: Vec<u8>) -> Result<Vec<u8>, String> {
    chunk_bytes_with(dir, r, stored, &|_, _, _| false)
}

/// Reads bytes `at..at + out.len()` of an object from a copy of it elsewhere, if there is
/// one (what it reads is checked with the chunk it rebuilds).
pub type Copies<'a> = &'a dyn Fn(&ObjectRef, u64, &mut [u8]) -> bool;

/// [`chunk_bytes`], the ranges of a format 4 chunk read from `copies` where it has them
/// (a restore's files just written) instead of from their objects decoded whole.
pub fn chunk_bytes_with(
    dir: &Path,
    r: &ObjectRef,
    stored: Vec<u8>,
    copies: Copies<'_>,
) -> Result<Vec<u8>, String> {
    if stored.len() as u64 == r.len {
        return Ok(stored);
    }
    let Some(p) = chunk_patch(&stored).filter(|_| (stored.len() as u64) < r.len) else {
        return Ok(stored);
    };
    let mut done = Rebuilt {
        read: HashSet::from([r.id]),
        bytes: std::collections::HashMap::new(),
    };
    if let Some(len) = p.reference_len {
        return rebuild_from_ranges(dir, r, &stored, &p, len, copies, &mut done);
    }
    rebuild(dir, r, &stored, &p, usize::from(p.depth) + 1, &mut done)
}

/// Rebuilds a format 4 chunk: its reference's ranges read from `copies` where it has them,
/// from their objects (each decoded once, and at most the chunk's depth of them) elsewhere.
fn rebuild_from_ranges(
    dir: &Path,
    r: &ObjectRef,
    stored: &[u8],
    p: &ChunkPatch,
    len: usize,
    copies: Copies<'_>,
    done: &mut Rebuilt,
) -> Result<Vec<u8>, String> {
    let limit = usize::from(p.depth) + 1;
    let mut reference = vec![0u8; len];
    for b in &p.bases {
        let (lo, hi) = (b.from as usize, (b.to as usize).min(len));
        let at = i64::from(b.from) + b.shift;
        if lo >= hi {
            continue;
        }
        if at >= 0 && copies(&b.base, at as u64, &mut reference[lo..hi]) {
            continue;
        }
        load_base(dir, &b.base, limit, done)?;
        // Bytes at..at + (hi - lo) of the base, zeros where it does not reach.
        let base = &done.bytes[&b.base.id];
        let from = at.max(0);
        let to = (at + (hi - lo) as i64).min(base.len() as i64);
        if from < to {
            let dst = lo + (from - at) as usize;
            reference[dst..dst + (to - from) as usize]
                .copy_from_slice(&base[from as usize..to as usize]);
        }
    }
    let out = zstd_apply(&reference, &stored[p.body..], r.len as usize)
        .map_err(|e| format!("its patch is damaged: {e}"))?;
    if out.len() as u64 != r.len || Sha256::digest(&out).as_slice() != r.id.0 {
        return Err("its patch does not rebuild the chunk's bytes".into());
    }
    Ok(out)
}

/// Reads, decodes and checks base `b` into `done` unless it is there; at most `limit`
/// objects read in all.
fn load_base(dir: &Path, b: &ObjectRef, limit: usize, done: &mut Rebuilt) -> Result<(), String> {
    if done.bytes.contains_key(&b.id) {
        return Ok(());
    }
    if !done.read.insert(b.id) {
        return Err(format!("its base chunk {} is its own base", b.id));
    }
    if done.read.len() > limit {
        return Err(format!(
            "a patch of depth {} reads more objects than that",
            limit - 1
        ));
    }
    let base_stored = std::fs::read(b.id.path_in(dir))
        .map_err(|e| format!("its base chunk {} cannot be read: {e}", b.id))?;
    // A base stored compressed (a PostgreSQL chunk) is whole once decompressed.
    let base_stored = crate::point::objects::decode(base_stored, b.len)
        .map_err(|e| format!("its base chunk {}: {e}", b.id))?;
    let base = match chunk_patch(&base_stored).filter(|_| (base_stored.len() as u64) < b.len) {
        Some(bp) => rebuild(dir, b, &base_stored, &bp, limit, done)
            .map_err(|e| format!("its base chunk {}: {e}", b.id))?,
        None => base_stored,
    };
    if base.len() as u64 != b.len || ObjectId::of(&base) != b.id {
        return Err(format!("its base chunk {} is damaged", b.id));
    }
    done.bytes.insert(b.id, base);
    Ok(())
}

/// The objects a rebuild read (the chunk's own included) and the bases it rebuilt.
struct Rebuilt {
    read: HashSet<ObjectId>,
    bytes: std::collections::HashMap<ObjectId, Vec<u8>>,
}

/// Rebuilds a patched chunk; every base is read once (`done`), and at most `limit` objects in
/// all.
fn rebuild(
    dir: &Path,
    r: &ObjectRef,
    stored: &[u8],
    p: &ChunkPatch,
    limit: usize,
    done: &mut Rebuilt,
) -> Result<Vec<u8>, String> {
    for b in &p.bases {
        load_base(dir, &b.base, limit, done)?;
    }
    let layers: Vec<(ChunkBase, &[u8])> = p
        .bases
        .iter()
        .map(|b| (*b, &done.bytes[&b.base.id][..]))
        .collect();
    let reference = reference(p.reference_len.unwrap_or(r.len as usize), &layers);
    let out = if p.zstd {
        zstd_apply(&reference, &stored[p.body..], r.len as usize)
            .map_err(|e| format!("its patch is damaged: {e}"))?
    } else {
        apply(&reference, &stored[p.body..], r.len as usize)
            .map_err(|e| format!("its patch is damaged: {e}"))?
    };
    if out.len() as u64 != r.len || Sha256::digest(&out).as_slice() != r.id.0 {
        return Err("its patch does not rebuild the chunk's bytes".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_unchanged_block_patches_to_its_length_only() {
        let b = vec![7u8; 4096];
        assert_eq!(diff(&b, &b), vec![0x80, 0x20]);
        assert_eq!(apply(&b, &diff(&b, &b), 4096).unwrap(), b);
    }

    #[test]
    fn a_changed_row_costs_its_bytes_and_a_few_more() {
        let old: Vec<u8> = (0..4096u32).map(|i| (i * 31 % 251) as u8).collect();
        let mut new = old.clone();
        for b in &mut new[1000..2000] {
            *b = b.wrapping_add(1);
        }
        new[3] ^= 1;
        let p = diff(&old, &new);
        assert!(p.len() <= 1000 + 1 + 10, "{} bytes", p.len());
        assert_eq!(apply(&old, &p, 4096).unwrap(), new);
    }

    #[test]
    fn close_ranges_merge() {
        let old = vec![0u8; 64];
        let mut new = old.clone();
        new[10] = 1;
        new[13] = 1;
        new[40] = 1;
        // new_len, then (10, 4, 4 bytes) and (26, 1, 1 byte).
        assert_eq!(diff(&old, &new).len(), 1 + 2 + 4 + 2 + 1);
    }

    #[test]
    fn a_moved_row_costs_a_match_in_a_zstd_patch() {
        // 8 KiB of incompressible bytes whose rows were compacted: every byte after the first
        // removed row moved 100 bytes down. A patch of ranges pays for every moved byte;
        // a zstd patch against the old page pays for the matches.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let old: Vec<u8> = (0..8192)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let mut new = old.clone();
        new.drain(1000..1100);
        new.extend_from_slice(&[0u8; 100]);
        let ranges = diff(&old, &new);
        let z = zstd_patch(&old, &new).unwrap();
        assert!(ranges.len() > 7000, "{}", ranges.len());
        assert!(z.len() < 200, "{}", z.len());
        assert_eq!(zstd_apply(&old, &z, new.len()).unwrap(), new);
        // Against another reference, the frame does not rebuild the chunk.
        assert_ne!(
            zstd_apply(&new, &z, new.len()).ok().as_deref(),
            Some(&new[..])
        );
    }

    #[test]
    fn bad_patches_are_refused_with_the_reason() {
        let old = vec![0u8; 16];
        assert_eq!(apply(&old, &[], 16), Err(PatchError::Truncated { at: 0 }));
        assert_eq!(
            apply(&old, &[0xff, 0xff, 0xff, 0x7f], 1 << 20),
            Err(PatchError::TooLong {
                len: 0x0fff_ffff,
                limit: 1 << 20
            })
        );
        // A range past the end.
        assert!(matches!(
            apply(&old, &[16, 15, 2, 1, 2], 16),
            Err(PatchError::OutOfRange { .. })
        ));
        // A range with fewer bytes than it says.
        assert!(matches!(
            apply(&old, &[16, 0, 4, 1], 16),
            Err(PatchError::Truncated { .. })
        ));
        assert!(matches!(
            apply(&old, &[16, 0, 0], 16),
            Err(PatchError::EmptyRange { .. })
        ));
        // A longer block whose new tail is not written.
        assert_eq!(
            apply(&old, &[20], 64),
            Err(PatchError::Unwritten { from: 16, len: 20 })
        );
    }

    /// Writes `bytes` as an object of a store at `dir`.
    fn put_in(dir: &std::path::Path, bytes: &[u8]) -> ObjectRef {
        let id = ObjectId::of(bytes);
        let p = id.path_in(dir);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
        ObjectRef {
            id,
            len: bytes.len() as u64,
        }
    }

    fn block() -> impl Strategy<Value = Vec<u8>> {
        // Small alphabets make equal bytes common, so runs and gaps of every length show up.
        (1u8..=255, proptest::collection::vec(any::<u8>(), 0..600))
            .prop_map(|(m, v)| v.into_iter().map(|b| b % m).collect())
    }

    proptest! {
        #[test]
        fn any_block_round_trips(old in block(), new in block()) {
            let p = diff(&old, &new);
            prop_assert_eq!(apply(&old, &p, new.len()).unwrap(), new);
        }

        #[test]
        fn edits_round_trip_and_cost_about_what_changed(
            old in proptest::collection::vec(any::<u8>(), 1..8192),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), proptest::collection::vec(any::<u8>(), 1..64)), 0..12),
            grow in proptest::collection::vec(any::<u8>(), 0..100),
            cut in 0usize..100,
        ) {
            let mut new = old.clone();
            let mut changed = 0;
            for (at, bytes) in &edits {
                let at = at.index(new.len());
                let n = bytes.len().min(new.len() - at);
                new[at..at + n].copy_from_slice(&bytes[..n]);
                changed += n;
            }
            new.truncate(new.len().saturating_sub(cut).max(1));
            new.extend_from_slice(&grow);
            let p = diff(&old, &new);
            prop_assert_eq!(apply(&old, &p, new.len()).unwrap(), new.clone());
            // Each edit costs its bytes, at most two merged gaps and two varints per range.
            prop_assert!(p.len() <= 3 + changed + grow.len() + edits.len() * (2 * MERGE_GAP + 8) + 8);
        }

        #[test]
        fn a_chunk_against_pages_of_other_objects_rebuilds_exactly(
            objects in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 64..3000), 1..5),
            picks in proptest::collection::vec((0usize..5, 0usize..3000, 1usize..700), 1..12),
            new in proptest::collection::vec(any::<u8>(), 1..4000),
        ) {
            // A reference of ranges of several objects, one after the other (format 4), and a
            // chunk made partly of them.
            let t = tempfile::tempdir().unwrap();
            let refs: Vec<ObjectRef> = objects.iter().map(|o| put_in(t.path(), o)).collect();
            let mut bases = Vec::new();
            let mut at = 0u32;
            let mut chunk = Vec::new();
            for (o, from, len) in picks {
                let o = o % objects.len();
                let from = from % objects[o].len();
                let len = len.min(objects[o].len() - from);
                bases.push(ChunkBase { base: refs[o], shift: from as i64 - i64::from(at), from: at, to: at + len as u32 });
                at += len as u32;
                chunk.extend_from_slice(&objects[o][from..from + len]);
                chunk.extend_from_slice(&new[..new.len().min(50)]);
            }
            chunk.extend_from_slice(&new);
            chunk.extend(std::iter::repeat_n(7u8, 20_000));
            let layers: Vec<(ChunkBase, &[u8])> = bases.iter().map(|b| (*b, &objects[refs.iter().position(|r| r.id == b.base.id).unwrap()][..])).collect();
            let body = zstd_patch(&reference(at as usize, &layers), &chunk).unwrap();
            let distinct = refs.iter().map(|r| r.id).collect::<HashSet<_>>().len() as u8;
            let obj = chunk_object4(distinct, &bases, &body).unwrap();
            let header = chunk_patch(&obj).unwrap();
            prop_assert_eq!(&header.bases, &bases);
            prop_assert_eq!(header.reference_len, Some(at as usize));
            let r = ObjectRef { id: ObjectId::of(&chunk), len: chunk.len() as u64 };
            // The store tells a patch by its being shorter than its chunk.
            if (obj.len() as u64) < r.len {
                prop_assert_eq!(chunk_bytes(t.path(), &r, obj.clone()).unwrap(), chunk.clone());
                // Ranges read from copies elsewhere: the right bytes rebuild it, wrong ones
                // never give a wrong chunk (it is refused, or their bytes were not needed).
                let right = |b: &ObjectRef, at: u64, out: &mut [u8]| {
                    let o = &objects[refs.iter().position(|r| r.id == b.id).unwrap()];
                    let at = at as usize;
                    if at + out.len() > o.len() {
                        return false;
                    }
                    out.copy_from_slice(&o[at..at + out.len()]);
                    true
                };
                prop_assert_eq!(chunk_bytes_with(t.path(), &r, obj.clone(), &right).unwrap(), chunk.clone());
                let wrong = |_: &ObjectRef, _: u64, out: &mut [u8]| {
                    out.fill(0x5A);
                    true
                };
                if let Ok(got) = chunk_bytes_with(t.path(), &r, obj.clone(), &wrong) {
                    prop_assert_eq!(got, chunk.clone());
                }
            }
            // Cut anywhere in its header, it is not read as a patch.
            for cut in [0, 8, HEADER4, header.body - 1] {
                prop_assert!(chunk_patch(&obj[..cut]).is_none());
            }
        }

        #[test]
        fn any_chunk_stored_as_a_patch_rebuilds_exactly(
            old in proptest::collection::vec(any::<u8>(), 1..3000),
            new in block(),
            shift in -4000i64..4000,
            depth in 0u8..CHUNK_CHAIN,
        ) {
            let t = tempfile::tempdir().unwrap();
            let put = |bytes: &[u8]| put_in(t.path(), bytes);
            let base = put(&old);
            let patch = diff(&aligned(&old, shift, new.len()), &new);
            let obj = chunk_object(&base, depth, shift, &patch);
            let r = ObjectRef { id: ObjectId::of(&new), len: new.len() as u64 };
            let header = chunk_patch(&obj).unwrap();
            prop_assert_eq!(header, ChunkPatch {
                depth: depth + 1,
                bases: vec![ChunkBase { base, shift, from: 0, to: u32::MAX }],
                body: CHUNK_HEADER,
                zstd: false,
                reference_len: None,
            });
            if (obj.len() as u64) < r.len {
                // As the store reads it: rebuilt from its base and checked.
                prop_assert_eq!(chunk_bytes(t.path(), &r, obj.clone()).unwrap(), new.clone());
                // A damaged base is named, never returned as the chunk.
                std::fs::write(base.id.path_in(t.path()), [&old[..old.len() - 1], &[old[old.len() - 1] ^ 1]].concat()).unwrap();
                let e = chunk_bytes(t.path(), &r, obj).unwrap_err();
                prop_assert!(e.contains("base chunk"), "{}", e);
            }
        }

        #[test]
        fn any_chunk_patched_against_several_bases_rebuilds_exactly(
            olds in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..2000), 1..=usize::from(CHUNK_CHAIN)),
            new in block(),
            cuts in proptest::collection::vec((0u32..700, -3000i64..3000), usize::from(CHUNK_CHAIN)),
        ) {
            let t = tempfile::tempdir().unwrap();
            let put = |bytes: &[u8]| put_in(t.path(), bytes);
            // Bases over consecutive ranges of the new chunk, at any shift.
            let mut from = 0u32;
            let bases: Vec<ChunkBase> = olds.iter().zip(&cuts).map(|(old, (w, shift))| {
                let b = ChunkBase { base: put(old), shift: *shift, from, to: from + w };
                from += w;
                b
            }).collect();
            let layers: Vec<(ChunkBase, &[u8])> = bases.iter().zip(&olds).map(|(b, o)| (*b, &o[..])).collect();
            let refr = reference(new.len(), &layers);
            for (i, byte) in refr.iter().enumerate() {
                let want = bases.iter().rev()
                    .find(|b| (b.from as usize..b.to as usize).contains(&i))
                    .and_then(|b| usize::try_from(i as i64 + b.shift).ok().and_then(|j| olds[bases.iter().position(|x| x == b).unwrap()].get(j)))
                    .copied()
                    .unwrap_or(0);
                prop_assert_eq!(*byte, want, "reference byte {}", i);
            }
            let patch = diff(&refr, &new);
            let depth = bases.iter().map(|b| b.base.id).collect::<HashSet<_>>().len() as u8;
            let obj = chunk_object2(depth, &bases, &patch);
            let header = chunk_patch(&obj).unwrap();
            prop_assert_eq!(&header.bases, &bases);
            prop_assert_eq!(header.depth, depth);
            let r = ObjectRef { id: ObjectId::of(&new), len: new.len() as u64 };
            if (obj.len() as u64) < r.len {
                prop_assert_eq!(chunk_bytes(t.path(), &r, obj.clone()).unwrap(), new.clone());
                let at = r.id.path_in(t.path());
                std::fs::create_dir_all(at.parent().unwrap()).unwrap();
                std::fs::write(&at, &obj).unwrap();
                prop_assert!(patched_chunk_present(t.path(), &r, obj.len() as u64));
                let mut keep = HashSet::new();
                add_bases(t.path(), [r].iter(), &mut keep);
                prop_assert_eq!(keep.len(), bases.iter().map(|b| b.base.id).collect::<HashSet<_>>().len());
                // A depth that understates the reads is refused.
                if depth > 1 {
                    let mut lying = obj.clone();
                    lying[8] = depth - 1;
                    prop_assert!(chunk_bytes(t.path(), &r, lying).is_err());
                }
                // A damaged base is named, never returned as the chunk.
                let last = &olds[olds.len() - 1];
                std::fs::write(bases[bases.len() - 1].base.id.path_in(t.path()), [&last[..last.len() - 1], &[last[last.len() - 1] ^ 1]].concat()).unwrap();
                let e = chunk_bytes(t.path(), &r, obj).unwrap_err();
                prop_assert!(e.contains("base chunk"), "{}", e);
            }
        }

        #[test]
        fn any_chunk_stored_as_a_zstd_patch_rebuilds_exactly_from_a_compressed_base(
            old in proptest::collection::vec(any::<u8>(), 1..6000),
            moves in proptest::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>(), 1usize..300), 0..6),
            fresh in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let t = tempfile::tempdir().unwrap();
            // The new chunk: ranges of the old one moved elsewhere, and some new bytes.
            let mut new = old.clone();
            for (from, to, n) in &moves {
                let from = from.index(old.len());
                let n = (*n).min(old.len() - from);
                let to = to.index(new.len());
                let piece = old[from..from + n].to_vec();
                new.splice(to..to, piece);
            }
            new.extend_from_slice(&fresh);
            // A chunk the same as its base is that object already, never a patch of itself
            // (no moves and nothing new: a case proptest draws now and then).
            prop_assume!(new != old);
            // The base stored compressed, as a PostgreSQL chunk is.
            let base = ObjectRef { id: ObjectId::of(&old), len: old.len() as u64 };
            let p = base.id.path_in(t.path());
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            let packed = zstd::bulk::compress(&old, 3).unwrap();
            let compressed = packed.len() < old.len();
            std::fs::write(&p, if compressed { &packed[..] } else { &old[..] }).unwrap();
            let b = ChunkBase { base, shift: 0, from: 0, to: new.len().min(old.len()) as u32 };
            let body = zstd_patch(&reference(new.len(), &[(b, &old[..])]), &new).unwrap();
            let obj = chunk_object3(1, &[b], &body);
            let header = chunk_patch(&obj).unwrap();
            prop_assert!(header.zstd);
            prop_assert_eq!(&header.bases, &vec![b]);
            let r = ObjectRef { id: ObjectId::of(&new), len: new.len() as u64 };
            if (obj.len() as u64) < r.len {
                prop_assert_eq!(chunk_bytes(t.path(), &r, obj.clone()).unwrap(), new.clone());
                let f = r.id.path_in(t.path());
                std::fs::create_dir_all(f.parent().unwrap()).unwrap();
                std::fs::write(&f, &obj).unwrap();
                prop_assert!(is_patched_file(&std::fs::File::open(&f).unwrap(), &r));
                prop_assert!(patched_chunk_present(t.path(), &r, obj.len() as u64));
                prop_assert_eq!(stored_patch(t.path(), &base), Some(None));
                // A damaged body is refused, never returned as the chunk.
                let mut bad = obj.clone();
                let last = bad.len() - 1;
                bad[last] ^= 0x55;
                prop_assert!(chunk_bytes(t.path(), &r, bad).is_err());
            }
        }

        #[test]
        fn zstd_apply_never_panics(old in proptest::collection::vec(any::<u8>(), 0..64), body in proptest::collection::vec(any::<u8>(), 0..128)) {
            let mut framed = vec![0x28, 0xb5, 0x2f, 0xfd];
            framed.extend_from_slice(&body);
            let _ = zstd_apply(&old, &body, 1 << 16);
            let _ = zstd_apply(&old, &framed, 1 << 16);
        }

        #[test]
        fn apply_never_panics(old in proptest::collection::vec(any::<u8>(), 0..64), patch in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = apply(&old, &patch, 1 << 16);
        }
    }
}
