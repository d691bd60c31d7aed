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
//! whole after [`crate::sqlite::pages::PAGE_CHAIN`] patches, [`crate::dir::resource`] a chunk
//! whole after [`CHUNK_CHAIN`] patches.

use std::collections::HashSet;
use std::io::{self, Read};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::point::{ObjectId, ObjectRef};

/// Differing ranges this close together are stored as one range.
pub const MERGE_GAP: usize = 4;
/// The longest chain of chunk patches (a patch against a patch against …) a directory shadow
/// stores before it stores a chunk whole: a restore reads at most this many objects plus one
/// for a chunk.
pub const CHUNK_CHAIN: u8 = 4;

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
// another chunk of the store, as git keeps objects named by their content in delta form:
//
//     "BWCHDLT1"  depth: u8  base: SHA-256 (32 bytes)  base_len: u32 BE  shift: i64 BE
//     then the patch, against the base shifted by `shift` bytes (`aligned`)
//
// The base is the chunk of the file's previous version that overlaps the new chunk most, and
// `shift` the new chunk's offset in the file minus the base's: an edit that moved a chunk
// boundary still lines the unchanged bytes up.
//
// `depth` is 1 for a patch against a whole chunk, and one more than the base's otherwise, at
// most CHUNK_CHAIN. A patch is kept only when it is at most 3/4 of the chunk (see
// `worth_a_patch`), so such an object is always shorter than its chunk: the point store tells
// the two apart by length (a chunk stored whole has its chunk's length) and checks, reads and
// collects a patched chunk through the functions below.

const CHUNK_MAGIC: &[u8; 8] = b"BWCHDLT1";
pub const CHUNK_HEADER: usize = 8 + 1 + 32 + 4 + 8;

/// A patched chunk's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkPatch {
    pub depth: u8,
    pub base: ObjectRef,
    pub shift: i64,
}

/// `len` bytes of `base` as seen from a chunk starting `shift` bytes after it (zeros where
/// the base does not reach).
pub fn aligned(base: &[u8], shift: i64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    for (i, b) in out.iter_mut().enumerate() {
        if let Some(v) = (i as i64)
            .checked_add(shift)
            .and_then(|j| usize::try_from(j).ok())
            .and_then(|j| base.get(j))
        {
            *b = *v;
        }
    }
    out
}

/// Whether a patch of `patch_len` bytes is worth storing instead of a `chunk_len`-byte chunk:
/// at most 3/4 of it (a patched chunk costs a restore one more read, of its base).
pub fn worth_a_patch(patch_len: usize, chunk_len: usize) -> bool {
    (CHUNK_HEADER + patch_len) * 4 <= chunk_len * 3
}

/// The object bytes of a chunk stored as `patch` against `base` (of depth `base_depth`)
/// shifted by `shift`.
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

/// The header of a patched chunk's object, or `None` when `b` is not one.
pub fn chunk_patch(b: &[u8]) -> Option<ChunkPatch> {
    if b.len() < CHUNK_HEADER || &b[..8] != CHUNK_MAGIC {
        return None;
    }
    let mut id = [0u8; 32];
    id.copy_from_slice(&b[9..41]);
    let depth = b[8];
    let mut shift = [0u8; 8];
    shift.copy_from_slice(&b[45..53]);
    (1..=CHUNK_CHAIN).contains(&depth).then_some(ChunkPatch {
        depth,
        base: ObjectRef {
            id: ObjectId(id),
            len: u64::from(u32::from_be_bytes([b[41], b[42], b[43], b[44]])),
        },
        shift: i64::from_be_bytes(shift),
    })
}

fn read_header(dir: &Path, id: &ObjectId) -> io::Result<(u64, Vec<u8>)> {
    let f = std::fs::File::open(id.path_in(dir))?;
    let len = f.metadata()?.len();
    let mut head = Vec::with_capacity(CHUNK_HEADER);
    f.take(CHUNK_HEADER as u64).read_to_end(&mut head)?;
    Ok((len, head))
}

/// The depth of the chunk `r` as stored: 0 whole, 1.. patched (and `None` when it is
/// missing or neither).
pub fn stored_depth(dir: &Path, r: &ObjectRef) -> Option<u8> {
    let (len, head) = read_header(dir, &r.id).ok()?;
    if len == r.len {
        return Some(0);
    }
    chunk_patch(&head).filter(|_| len < r.len).map(|p| p.depth)
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
    match chunk_patch(&head) {
        Some(p) if p.depth == 1 => {
            std::fs::metadata(p.base.id.path_in(dir)).is_ok_and(|m| m.len() == p.base.len)
        }
        Some(p) => std::fs::metadata(p.base.id.path_in(dir))
            .is_ok_and(|m| m.len() == p.base.len || patched_chunk_present(dir, &p.base, m.len())),
        None => false,
    }
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
            keep.insert(p.base.id);
            todo.push(p.base);
        }
    }
}

/// A chunk's bytes from its object at `dir`, rebuilt when it is stored as a patch (every
/// base checked against its name on the way); the result is checked against `r` too. A
/// chunk stored whole is returned as read (`stored`), its check left to the caller.
pub fn chunk_bytes(dir: &Path, r: &ObjectRef, stored: Vec<u8>) -> Result<Vec<u8>, String> {
    if stored.len() as u64 == r.len {
        return Ok(stored);
    }
    let Some(p) = chunk_patch(&stored).filter(|_| (stored.len() as u64) < r.len) else {
        return Ok(stored);
    };
    let base_stored = std::fs::read(p.base.id.path_in(dir))
        .map_err(|e| format!("its base chunk {} cannot be read: {e}", p.base.id))?;
    let base_depth = chunk_patch(&base_stored)
        .filter(|_| (base_stored.len() as u64) < p.base.len)
        .map_or(0, |b| b.depth);
    if base_depth >= p.depth {
        return Err(format!(
            "a patch of depth {} against a chunk of depth {base_depth}",
            p.depth
        ));
    }
    let base = chunk_bytes(dir, &p.base, base_stored)
        .map_err(|e| format!("its base chunk {}: {e}", p.base.id))?;
    if base.len() as u64 != p.base.len || ObjectId::of(&base) != p.base.id {
        return Err(format!("its base chunk {} is damaged", p.base.id));
    }
    let out = apply(
        &aligned(&base, p.shift, r.len as usize),
        &stored[CHUNK_HEADER..],
        r.len as usize,
    )
    .map_err(|e| format!("its patch is damaged: {e}"))?;
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
        fn any_chunk_stored_as_a_patch_rebuilds_exactly(
            old in proptest::collection::vec(any::<u8>(), 1..3000),
            new in block(),
            shift in -4000i64..4000,
            depth in 0u8..CHUNK_CHAIN,
        ) {
            let t = tempfile::tempdir().unwrap();
            let put = |bytes: &[u8]| {
                let id = ObjectId::of(bytes);
                let p = id.path_in(t.path());
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(&p, bytes).unwrap();
                ObjectRef { id, len: bytes.len() as u64 }
            };
            let base = put(&old);
            let patch = diff(&aligned(&old, shift, new.len()), &new);
            let obj = chunk_object(&base, depth, shift, &patch);
            let r = ObjectRef { id: ObjectId::of(&new), len: new.len() as u64 };
            let header = chunk_patch(&obj).unwrap();
            prop_assert_eq!(header, ChunkPatch { depth: depth + 1, base, shift });
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
        fn apply_never_panics(old in proptest::collection::vec(any::<u8>(), 0..64), patch in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = apply(&old, &patch, 1 << 16);
        }
    }
}
