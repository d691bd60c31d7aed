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
//!
//! A base larger than the cache has pages out of reach that way: the images of one WAL chunk
//! name a hundred or more base chunks, scattered over the whole base. Chunks stored with pages
//! missing are patched again later, [`WINDOW`] at a time ([`WalPages::repatch`]): the pages all
//! of them name are read ahead, each base chunk decoded once for the window, and a chunk's
//! new patch replaces its stored form where it is smaller (the object's content, and so its
//! name, stays).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use crate::delta::ChunkBase;
use crate::point::cache::ChunkCache;
use crate::point::{Entry, ObjectId, ObjectRef, PointStore, ShadowError};

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
/// WAL chunks patched again together ([`WalPages::repatch`]): their pages read ahead are at
/// most this many MiB (a 1 MiB chunk's images copy at most 128 pages).
pub(crate) const WINDOW: usize = 64;
/// Chunks waiting to be patched again at most: beyond, the oldest stay as they are (WAL
/// written faster than windows are patched).
const MAX_PENDING: usize = 8 * WINDOW;
/// Base chunks a window decodes at most (about a millisecond each; a base of up to this many
/// MiB is decoded at most once a window).
const DECODES_PER_WINDOW: usize = 2048;

/// The current base's files and the base chunks at hand.
pub(crate) struct WalPages {
    /// Each file of the base by its path in the data directory: its chunks.
    files: HashMap<String, Vec<ObjectRef>>,
    /// Bytes of decoded base chunks kept ([`CACHE_BYTES`]).
    cache_bytes: usize,
    /// Base chunks a WAL chunk may decode ([`DECODES_PER_CHUNK`]).
    decodes_per_chunk: usize,
    cache: Option<ChunkCache>,
    /// The objects a rebuild of each base chunk reads (itself and its own bases).
    reads: HashMap<ObjectId, Option<HashSet<ObjectId>>>,
    /// Pages read ahead for a window ([`WalPages::repatch`]): each by its base chunk and
    /// offset there, at its place in `ahead_bytes`.
    ahead: HashMap<(ObjectId, u32), usize>,
    ahead_bytes: Vec<u8>,
    /// WAL chunks stored with pages of their images out of reach, each with the LSN it
    /// begins at: patched again by [`WalPages::repatch`].
    pending: Vec<(ObjectRef, u64)>,
}

/// What [`WalPages::repatch`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Repatched {
    /// Chunks whose stored form was replaced by a smaller patch.
    pub chunks: usize,
    /// Bytes those replacements saved.
    pub saved: u64,
}

/// How a page of an image was looked for.
enum Found {
    /// At hand: copied into the reference.
    Copied(ObjectRef, usize),
    /// In the base, but not at hand within the decodes allowed.
    Missed,
    /// Not in the base (a relation made after it, a page past its end), or past a bound.
    Absent,
}

impl Default for WalPages {
    fn default() -> Self {
        WalPages {
            files: HashMap::new(),
            cache_bytes: CACHE_BYTES,
            decodes_per_chunk: DECODES_PER_CHUNK,
            cache: None,
            reads: HashMap::new(),
            ahead: HashMap::new(),
            ahead_bytes: Vec::new(),
            pending: Vec::new(),
        }
    }
}

impl WalPages {
    /// Patches are made against this base's files from now on (chunks still waiting to be
    /// patched again against the base before are left as they are: the caller patches them
    /// first, [`WalPages::repatch`]).
    pub(crate) fn set_base(&mut self, entries: &[Entry]) {
        self.files = entries
            .iter()
            .filter(|e| matches!(e.kind, crate::point::EntryKind::File))
            .map(|e| (e.path.clone(), e.objects.clone()))
            .collect();
        self.reads.clear();
        self.pending.clear();
        self.forget_ahead();
    }

    /// Chunks waiting to be patched again.
    #[cfg(test)]
    pub(crate) fn pending(&self) -> usize {
        self.pending.len()
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

    fn cache(&mut self) -> &mut ChunkCache {
        let bytes = self.cache_bytes;
        self.cache.get_or_insert_with(|| ChunkCache::new(bytes))
    }

    fn content(
        &mut self,
        store: &PointStore,
        r: &ObjectRef,
        decodes: &mut usize,
    ) -> Option<Arc<Vec<u8>>> {
        if let Some(b) = self.cache().get(&r.id) {
            return Some(b);
        }
        if *decodes == 0 {
            return None;
        }
        *decodes -= 1;
        let b = Arc::new(store.content(r).ok()?);
        self.cache().insert(r.id, b.clone());
        Some(b)
    }

    /// The base chunk holding page `p`, and the page's offset in it.
    fn locate(&self, p: &fpi::PageRef) -> Option<(ObjectRef, usize)> {
        let (path, offset) = p.file()?;
        let o = *self.files.get(&path)?.get(offset as usize / CHUNK)?;
        let within = offset as usize % CHUNK;
        (within + BLCKSZ as usize <= o.len as usize).then_some((o, within))
    }

    /// Copies page `p` of the base to the end of `out`: from the pages read ahead, else from
    /// a base chunk at hand or decoded within `decodes`.
    fn copy_page(
        &mut self,
        store: &PointStore,
        p: &fpi::PageRef,
        decodes: &mut usize,
        out: &mut Vec<u8>,
    ) -> Found {
        let page = BLCKSZ as usize;
        let Some((o, within)) = self.locate(p) else {
            return Found::Absent;
        };
        if let Some(&at) = self.ahead.get(&(o.id, within as u32)) {
            out.extend_from_slice(&self.ahead_bytes[at..at + page]);
            return Found::Copied(o, within);
        }
        match self.content(store, &o, decodes) {
            Some(content) => {
                out.extend_from_slice(&content[within..within + page]);
                Found::Copied(o, within)
            }
            None => Found::Missed,
        }
    }

    /// The object that stores WAL chunk `bytes` (beginning at `lsn`) as a patch against the
    /// base's pages its full-page images copy, when one is a quarter smaller than the chunk
    /// compressed whole; `None` otherwise. Also whether some of its pages were out of reach:
    /// the caller, which names the chunk's object, notes it to be patched again
    /// ([`WalPages::note_missed`]).
    pub(crate) fn patch(
        &mut self,
        store: &PointStore,
        bytes: &[u8],
        lsn: u64,
        server_version_num: u32,
    ) -> (Option<Vec<u8>>, bool) {
        let decodes = self.decodes_per_chunk;
        self.patch_with(store, bytes, lsn, server_version_num, decodes)
    }

    /// Notes WAL chunk `r` (beginning at `lsn`), patched with pages out of reach, to be
    /// patched again ([`WalPages::repatch`]).
    pub(crate) fn note_missed(&mut self, r: ObjectRef, lsn: u64) {
        if self.pending.len() >= MAX_PENDING {
            self.pending.remove(0);
        }
        self.pending.push((r, lsn));
    }

    /// [`WalPages::patch`] decoding at most `decodes` base chunks not at hand; also whether
    /// a page was missed for want of decodes.
    fn patch_with(
        &mut self,
        store: &PointStore,
        bytes: &[u8],
        lsn: u64,
        server_version_num: u32,
        mut decodes: usize,
    ) -> (Option<Vec<u8>>, bool) {
        if self.files.is_empty() {
            return (None, false);
        }
        let images = fpi::images(bytes, lsn, server_version_num);
        if images.is_empty() {
            return (None, false);
        }
        let page = BLCKSZ as usize;
        let mut bases: Vec<ChunkBase> = Vec::new();
        let mut reads: HashSet<ObjectId> = HashSet::new();
        let mut reference: Vec<u8> = Vec::new();
        let mut missed = false;
        for p in images {
            let at = reference.len();
            if at + page > MAX_REFERENCE || bases.len() >= crate::delta::MAX_RANGES4 {
                break;
            }
            let Some((o, _)) = self.locate(&p) else {
                continue;
            };
            let Some(r) = self.reads_of(store, &o) else {
                continue;
            };
            if reads.union(&r).count() > crate::delta::MAX_OBJECTS4 {
                continue;
            }
            let (o, within) = match self.copy_page(store, &p, &mut decodes, &mut reference) {
                Found::Copied(o, within) => (o, within),
                Found::Missed => {
                    missed = true;
                    continue;
                }
                Found::Absent => continue,
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
                _ => bases.push(ChunkBase {
                    base: o,
                    shift,
                    from: at as u32,
                    to: (at + page) as u32,
                }),
            }
        }
        if bases.is_empty() {
            return (None, missed);
        }
        let object = (|| {
            let body = crate::delta::zstd_patch(&reference, bytes).ok()?;
            let depth = u8::try_from(reads.len()).ok()?;
            let object = crate::delta::chunk_object4(depth, &bases, &body)?;
            if !crate::delta::worth_a_patch(object.len(), bytes.len()) {
                return None;
            }
            // A patch of a 32nd of the chunk or less is kept without compressing the chunk
            // whole to compare (at most a few kilobytes lost where the chunk compresses
            // better still).
            if object.len() * 32 <= bytes.len() {
                return Some(object);
            }
            let whole = zstd::bulk::compress(bytes, crate::point::objects::ZSTD_LEVEL).ok()?;
            (object.len() * 4 <= whole.len() * 3).then_some(object)
        })();
        (object, missed)
    }

    fn forget_ahead(&mut self) {
        self.ahead = HashMap::new();
        self.ahead_bytes = Vec::new();
    }

    /// Patches again the chunks stored with pages out of reach ([`WalPages::patch`]), a
    /// window of [`WINDOW`] at a time while that many wait (all of them when `all`): the
    /// pages the window's images name are read ahead, each base chunk decoded once for the
    /// window (at most [`DECODES_PER_WINDOW`]), and each chunk's new patch replaces its
    /// stored form where it saves an eighth ([`PointStore::replace_encoded`]). A chunk the
    /// store no longer holds (its points removed) is passed over.
    pub(crate) fn repatch(
        &mut self,
        store: &PointStore,
        server_version_num: u32,
        all: bool,
    ) -> Result<Repatched, ShadowError> {
        let mut done = Repatched::default();
        while self.pending.len() >= WINDOW || (all && !self.pending.is_empty()) {
            let n = self.pending.len().min(WINDOW);
            let window: Vec<(ObjectRef, u64)> = self.pending.drain(..n).collect();
            let result = self.repatch_window(store, server_version_num, &window, &mut done);
            self.forget_ahead();
            result?;
        }
        Ok(done)
    }

    fn repatch_window(
        &mut self,
        store: &PointStore,
        server_version_num: u32,
        window: &[(ObjectRef, u64)],
        done: &mut Repatched,
    ) -> Result<(), ShadowError> {
        let page = BLCKSZ as usize;
        // The chunks, each read once (and checked against its name).
        let mut chunks: Vec<(ObjectRef, u64, Vec<u8>)> = Vec::new();
        for (r, lsn) in window {
            if let Ok(bytes) = store.content(r) {
                chunks.push((*r, *lsn, bytes));
            }
        }
        // The pages their images name, by base chunk.
        let mut want: BTreeMap<ObjectId, (ObjectRef, BTreeSet<usize>)> = BTreeMap::new();
        for (_, lsn, bytes) in &chunks {
            for p in fpi::images(bytes, *lsn, server_version_num) {
                if let Some((o, within)) = self.locate(&p) {
                    want.entry(o.id)
                        .or_insert_with(|| (o, BTreeSet::new()))
                        .1
                        .insert(within);
                }
            }
        }
        // Each base chunk decoded once (those cached first, so a bound on decodes spends
        // itself on the others).
        let (cached, other): (Vec<_>, Vec<_>) = want
            .into_values()
            .partition(|(o, _)| self.cache().get(&o.id).is_some());
        let mut decodes = DECODES_PER_WINDOW;
        for (o, pages) in cached.into_iter().chain(other) {
            let Some(content) = self.content(store, &o, &mut decodes) else {
                continue;
            };
            for within in pages {
                self.ahead
                    .insert((o.id, within as u32), self.ahead_bytes.len());
                self.ahead_bytes
                    .extend_from_slice(&content[within..within + page]);
            }
        }
        for (r, lsn, bytes) in &chunks {
            let (object, _) = self.patch_with(store, bytes, *lsn, server_version_num, 0);
            let Some(object) = object else {
                continue;
            };
            if let Some(saved) = store.replace_encoded(r, &object)? {
                done.chunks += 1;
                done.saved += saved;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::point::{
        EntryKind, ResourceKind, Retention, ShadowMeta, ShadowType, Timestamp, FORMAT,
    };
    use fpi::tests::{page, record_images, wal};

    /// Bytes of random hex digits (as text ids and hashes: zstd halves them).
    fn hex(n: usize, seed: &mut u64) -> Vec<u8> {
        (0..n)
            .map(|_| {
                *seed = seed
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                b"0123456789abcdef"[(*seed >> 60) as usize]
            })
            .collect()
    }

    fn store(dir: &std::path::Path) -> PointStore {
        let meta = ShadowMeta {
            format: FORMAT,
            kind: ResourceKind::Postgres,
            source: "postgresql://localhost/test".into(),
            shadow_type: ShadowType::Differential,
            created_at: Timestamp(0),
            retention: Retention::default(),
        };
        let mut s = PointStore::create(dir, meta).unwrap();
        s.lock_writer().unwrap();
        s
    }

    /// A base of one relation file of `chunks` MiB of hex, stored; and WAL chunks whose
    /// images are its pages at random with a few bytes changed (as scattered updates make).
    fn base_and_wal(
        s: &PointStore,
        chunks: usize,
        wal_chunks: usize,
    ) -> (Vec<Entry>, Vec<(u64, Vec<u8>)>) {
        let mut seed = 7u64;
        let file = hex(chunks * CHUNK, &mut seed);
        let objects: Vec<ObjectRef> = file
            .chunks(CHUNK)
            .map(|c| s.put_object_compressed(c).unwrap().0)
            .collect();
        let entry = Entry {
            path: "base/5/16384".into(),
            kind: EntryKind::File,
            mode: 0o600,
            size: file.len() as u64,
            mtime: None,
            objects,
        };
        let pages = (file.len() / BLCKSZ as usize) as u64;
        let mut out = Vec::new();
        for i in 0..wal_chunks {
            let lsn = (16 << 20) + (i * CHUNK) as u64;
            let records: Vec<Vec<u8>> = (0..120)
                .map(|j| {
                    // Pages scattered over the file, none twice (37 and a power of two
                    // times 3 share no factor).
                    let block = ((i * 120 + j) as u64 * 37 + 11) % pages;
                    let at = block as usize * BLCKSZ as usize;
                    let mut image = file[at..at + BLCKSZ as usize].to_vec();
                    // A changed row: a few bytes in the middle of the page.
                    let k = 1000 + (seed % 6000) as usize;
                    image[k..k + 12].copy_from_slice(&hex(12, &mut seed));
                    record_images(&[(page(16384, block as u32), &image)])
                })
                .collect();
            let w = wal(lsn, &records, CHUNK / fpi::XLOG_BLCKSZ, 0);
            assert_eq!(w.len(), CHUNK);
            assert_eq!(
                fpi::images(&w, lsn, 160_000).len(),
                120,
                "chunk {i}'s images"
            );
            out.push((lsn, w));
        }
        (vec![entry], out)
    }

    /// Pages of `entries` with a cache of one base chunk and `decodes` a WAL chunk.
    fn small(entries: &[Entry], decodes: usize) -> WalPages {
        let mut pages = WalPages {
            cache_bytes: CHUNK,
            decodes_per_chunk: decodes,
            ..WalPages::default()
        };
        pages.set_base(entries);
        pages
    }

    fn stored_len(s: &PointStore, r: &ObjectRef) -> u64 {
        std::fs::metadata(s.object_path(&r.id)).unwrap().len()
    }

    #[test]
    fn chunks_with_pages_out_of_reach_are_patched_again_in_a_window() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let (entries, chunks) = base_and_wal(&s, 6, 3);
        // One decoded base chunk kept, one decoded a WAL chunk: most pages out of reach.
        let mut pages = small(&entries, 1);
        let mut refs = Vec::new();
        for (lsn, bytes) in &chunks {
            let (object, missed) = pages.patch(&s, bytes, *lsn, 160_000);
            let r = match object {
                Some(object) => {
                    let r = ObjectRef {
                        id: ObjectId::of(bytes),
                        len: bytes.len() as u64,
                    };
                    s.put_encoded(&r, &object).unwrap();
                    r
                }
                None => s.put_object_compressed(bytes).unwrap().0,
            };
            assert!(missed, "{lsn}");
            pages.note_missed(r, *lsn);
            refs.push(r);
        }
        assert_eq!(pages.pending(), 3, "each chunk missed pages");
        let before: u64 = refs.iter().map(|r| stored_len(&s, r)).sum();
        // Fewer than a window wait: nothing yet, unless asked for all.
        assert_eq!(
            pages.repatch(&s, 160_000, false).unwrap(),
            Repatched::default()
        );
        let done = pages.repatch(&s, 160_000, true).unwrap();
        assert_eq!(pages.pending(), 0);
        assert_eq!(done.chunks, 3, "{done:?}");
        let after: u64 = refs.iter().map(|r| stored_len(&s, r)).sum();
        assert_eq!(before - after, done.saved);
        // Each image is a base page with 12 bytes changed: patched with every page at hand,
        // a chunk costs its changes and records, far below the half of hex compressed.
        assert!(
            after * 8 < before,
            "stored {before} bytes before, {after} after"
        );
        for ((_, bytes), r) in chunks.iter().zip(&refs) {
            assert_eq!(&s.content(r).unwrap(), bytes, "chunk {}", r.id);
            assert!(crate::delta::stored_patch(s.dir(), r).unwrap().is_some());
        }
    }

    #[test]
    fn a_new_base_forgets_the_chunks_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let (entries, chunks) = base_and_wal(&s, 3, 1);
        let mut pages = small(&entries, 0);
        let (lsn, bytes) = &chunks[0];
        let r = ObjectRef {
            id: ObjectId::of(bytes),
            len: bytes.len() as u64,
        };
        assert_eq!(pages.patch(&s, bytes, *lsn, 160_000), (None, true));
        pages.note_missed(r, *lsn);
        assert_eq!(pages.pending(), 1);
        pages.set_base(&entries);
        assert_eq!(pages.pending(), 0);
        // A chunk the store does not hold is passed over.
        pages.note_missed(r, *lsn);
        assert_eq!(
            pages.repatch(&s, 160_000, true).unwrap(),
            Repatched::default()
        );
    }
}
