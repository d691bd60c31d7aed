//! WAL chunks stored as patches against the base backup's copies of the pages their
//! full-page images copy ([`super::fpi`], [`crate::delta`] format 4).
//!
//! A full-page image is a relation page as it was when it was first changed after a
//! checkpoint: under scattered churn that is the base backup's page plus a few tuples. The
//! chunk's reference is those pages of the current base, one after the other in the order
//! their images appear (neighbouring pages of one object are one range); a zstd frame against
//! it then pays a match for each unchanged run of an image, and the chunk's records and
//! changed tuples as compressed bytes.
//!
//! Costs are bounded: the base chunks a patch reads are decoded once and kept in a cache of
//! [`CACHE_BYTES`]; a chunk decodes at most [`DECODES_PER_CHUNK`] more (an image whose page
//! is not at hand then is compressed as it is), and reads at most
//! [`crate::delta::MAX_OBJECTS4`] objects. A patch is kept only when it is a quarter smaller
//! than the chunk compressed whole.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::delta::ChunkBase;
use crate::point::cache::ChunkCache;
use crate::point::{Entry, ObjectId, ObjectRef, PointStore};

use super::base::CHUNK;
use super::fpi::{self, BLCKSZ};

/// Decoded base chunks kept between WAL chunks (the pages a checkpoint's images copy recur
/// in the chunks after it): a database up to this size is decoded once a base.
pub(crate) const CACHE_BYTES: usize = 512 << 20;
/// Base chunks a WAL chunk may decode beyond those cached: at about a millisecond each, a
/// WAL chunk's patch costs at most a few times its compression.
pub(crate) const DECODES_PER_CHUNK: usize = 48;
/// The longest reference a WAL chunk is patched against.
const MAX_REFERENCE: usize = 4 << 20;

/// The current base's files and the base chunks at hand.
#[derive(Default)]
pub(crate) struct WalPages {
    /// Each file of the base by its path in the data directory: its chunks.
    files: HashMap<String, Vec<ObjectRef>>,
    cache: Option<ChunkCache>,
    /// The objects a rebuild of each base chunk reads (itself and its own bases).
    reads: HashMap<ObjectId, Option<HashSet<ObjectId>>>,
}

impl WalPages {
    /// Patches are made against this base's files from now on.
    pub(crate) fn set_base(&mut self, entries: &[Entry]) {
        self.files = entries
            .iter()
            .filter(|e| matches!(e.kind, crate::point::EntryKind::File))
            .map(|e| (e.path.clone(), e.objects.clone()))
            .collect();
        self.reads.clear();
    }

    fn reads_of(&mut self, store: &PointStore, r: &ObjectRef) -> Option<HashSet<ObjectId>> {
        self.reads
            .entry(r.id)
            .or_insert_with(|| {
                let mut set = HashSet::from([r.id]);
                match crate::delta::stored_patch(store.dir(), r)? {
                    None => {}
                    Some(p) => set.extend(crate::delta::objects_read(
                        store.dir(),
                        &p,
                        crate::delta::MAX_OBJECTS4,
                    )),
                }
                Some(set)
            })
            .clone()
    }

    fn content(
        &mut self,
        store: &PointStore,
        r: &ObjectRef,
        decodes: &mut usize,
    ) -> Option<Arc<Vec<u8>>> {
        let cache = self
            .cache
            .get_or_insert_with(|| ChunkCache::new(CACHE_BYTES));
        if let Some(b) = cache.get(&r.id) {
            return Some(b);
        }
        if *decodes == 0 {
            return None;
        }
        *decodes -= 1;
        let b = Arc::new(store.content(r).ok()?);
        cache.insert(r.id, b.clone());
        Some(b)
    }

    /// The object that stores WAL chunk `bytes` (beginning at `lsn`) as a patch against the
    /// base's pages its full-page images copy, when one is a quarter smaller than the chunk
    /// compressed whole; `None` otherwise.
    pub(crate) fn patch(
        &mut self,
        store: &PointStore,
        bytes: &[u8],
        lsn: u64,
        server_version_num: u32,
    ) -> Option<Vec<u8>> {
        if self.files.is_empty() {
            return None;
        }
        let images = fpi::images(bytes, lsn, server_version_num);
        if images.is_empty() {
            return None;
        }
        let page = BLCKSZ as usize;
        let mut decodes = DECODES_PER_CHUNK;
        let mut bases: Vec<ChunkBase> = Vec::new();
        let mut layers: Vec<Arc<Vec<u8>>> = Vec::new();
        let mut reads: HashSet<ObjectId> = HashSet::new();
        let mut at = 0usize;
        for p in images {
            if at + page > MAX_REFERENCE || bases.len() >= crate::delta::MAX_RANGES4 {
                break;
            }
            let Some((path, offset)) = p.file() else {
                continue;
            };
            let Some(o) = self
                .files
                .get(&path)
                .and_then(|objects| objects.get(offset as usize / CHUNK))
                .copied()
            else {
                continue;
            };
            let within = offset as usize % CHUNK;
            if within + page > o.len as usize {
                continue;
            }
            let Some(r) = self.reads_of(store, &o) else {
                continue;
            };
            if reads.union(&r).count() > crate::delta::MAX_OBJECTS4 {
                continue;
            }
            let Some(content) = self.content(store, &o, &mut decodes) else {
                continue;
            };
            reads.extend(r);
            let shift = within as i64 - at as i64;
            match bases.last_mut() {
                // The next page of the same object: one range.
                Some(last)
                    if last.base == o && i64::from(last.to) + last.shift == within as i64 =>
                {
                    last.to += page as u32;
                }
                _ => {
                    bases.push(ChunkBase {
                        base: o,
                        shift,
                        from: at as u32,
                        to: (at + page) as u32,
                    });
                    layers.push(content);
                }
            }
            at += page;
        }
        if bases.is_empty() {
            return None;
        }
        let with: Vec<(ChunkBase, &[u8])> = bases
            .iter()
            .zip(&layers)
            .map(|(b, l)| (*b, &l[..]))
            .collect();
        let reference = crate::delta::reference(at, &with);
        let body = crate::delta::zstd_patch(&reference, bytes).ok()?;
        let depth = u8::try_from(reads.len()).ok()?;
        let object = crate::delta::chunk_object4(depth, &bases, &body)?;
        if !crate::delta::worth_a_patch(object.len(), bytes.len()) {
            return None;
        }
        // A patch of a 32nd of the chunk or less is kept without compressing the chunk whole
        // to compare (at most a few kilobytes lost where the chunk compresses better still).
        if object.len() * 32 <= bytes.len() {
            return Some(object);
        }
        let whole = zstd::bulk::compress(bytes, crate::point::objects::ZSTD_LEVEL).ok()?;
        (object.len() * 4 <= whole.len() * 3).then_some(object)
    }
}
