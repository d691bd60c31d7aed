//! Chunks stored as patches against older chunks ([`crate::delta`], format 2): the writer's
//! side, shared by the directory kind (a new chunk against the chunks of the file's previous
//! version it overlaps) and PostgreSQL full points (a relation file's chunk against the same
//! chunk of the previous base backup).

use std::collections::{HashMap, HashSet};

use crate::delta::{ChunkBase, ChunkPatch, PatchKind};

use super::objects;
use super::{ObjectId, ObjectRef, PointStore, ShadowError};

impl PointStore {
    /// The object of `bytes` stored as a patch against the reference `bases` make (each base's
    /// bytes over its range; zeros elsewhere), when that is worth it
    /// ([`crate::delta::worth_a_patch`]); `None` stores it whole.
    ///
    /// The bases' reads must stay within `limit` (the objects a rebuild reads, each counted
    /// once; [`crate::delta::CHUNK_CHAIN`] for directories, 1 for PostgreSQL): while they do
    /// not, the base that reads most is replaced by its own bases over the same range (the
    /// patch then also carries what that base changed there), and when every base is a whole
    /// chunk and there are still too many, the narrowest is left out (its bytes go into the
    /// patch). A base that is missing is left out. `kind` says how the body is written.
    pub(crate) fn patch_against(
        &self,
        mut bases: Vec<ChunkBase>,
        bytes: &[u8],
        (kind, limit): (PatchKind, usize),
    ) -> Option<Vec<u8>> {
        // How each base is stored (None: missing, so left out), and the other objects its
        // rebuild reads.
        type Stored = Option<(Option<ChunkPatch>, HashSet<ObjectId>)>;
        let mut headers: HashMap<ObjectId, Stored> = HashMap::new();
        let mut header = |r: &ObjectRef| -> Stored {
            headers
                .entry(r.id)
                .or_insert_with(|| {
                    let p = crate::delta::stored_patch(self.dir(), r)?;
                    let reads = p
                        .as_ref()
                        .map(|p| crate::delta::objects_read(self.dir(), p, limit))
                        .unwrap_or_default();
                    Some((p, reads))
                })
                .clone()
        };
        let mut rounds = 0;
        let depth = loop {
            // Each round moves a base down its chain or leaves one out; a damaged store whose
            // patches form a loop must not keep this going.
            rounds += 1;
            if rounds > 64 {
                return None;
            }
            bases.retain(|b| header(&b.base).is_some());
            // Neighbouring ranges of one base at one shift are one range.
            bases.dedup_by(|b, a| {
                let one = a.base == b.base && a.shift == b.shift && a.to == b.from;
                if one {
                    a.to = b.to;
                }
                one
            });
            // The objects a rebuild reads: every base and what it reads, each once.
            let mut reads = HashSet::new();
            let mut own = Vec::with_capacity(bases.len());
            for b in &bases {
                let (_, r) = header(&b.base).unwrap_or_default();
                reads.insert(b.base.id);
                own.push(r.len());
                reads.extend(r);
            }
            if reads.len() <= limit && bases.len() <= crate::delta::MAX_BASES {
                break reads.len();
            }
            // The base that reads most is replaced by its own bases.
            let deepest = (0..bases.len())
                .filter(|i| own[*i] > 0)
                .max_by_key(|i| (own[*i], std::cmp::Reverse(*i)));
            match deepest {
                Some(i) => {
                    let b = bases.remove(i);
                    let Some((Some(p), _)) = header(&b.base) else {
                        return None;
                    };
                    // Byte i of the new chunk is byte i + b.shift of the base, whose reference
                    // byte k is byte k + sub.shift of the sub-base.
                    let subs = p.bases.iter().filter_map(|sub| {
                        let from = i64::from(b.from).max(i64::from(sub.from) - b.shift);
                        let to = i64::from(b.to).min(i64::from(sub.to) - b.shift);
                        (from < to).then_some(ChunkBase {
                            base: sub.base,
                            shift: b.shift.checked_add(sub.shift)?,
                            from: from as u32,
                            to: to as u32,
                        })
                    });
                    let subs: Vec<ChunkBase> = subs.collect();
                    bases.splice(i..i, subs);
                }
                None => {
                    let narrowest =
                        (0..bases.len()).min_by_key(|i| bases[*i].to - bases[*i].from)?;
                    bases.remove(narrowest);
                }
            }
        };
        if bases.is_empty() {
            return None;
        }
        let mut loaded = HashMap::new();
        let patch = self.patch_from(&mut loaded, &bases, bytes, kind)?;
        let depth = u8::try_from(depth).ok()?;
        let object = match kind {
            PatchKind::Ranges => crate::delta::chunk_object2(depth, &bases, &patch),
            PatchKind::Zstd => crate::delta::chunk_object3(depth, &bases, &patch),
        };
        if !crate::delta::worth_a_patch(object.len(), bytes.len()) {
            return None;
        }
        // A zstd patch against a base far behind (its changes add up, point after point)
        // is also weighed against the chunk compressed whole, which reads no base: a large
        // one must save a quarter of that, or the chunk is stored whole (a new base).
        if kind == PatchKind::Zstd && object.len() * 8 > bytes.len() {
            let whole = zstd::bulk::compress(bytes, 3).ok()?.len();
            return (object.len() * 4 <= whole * 3).then_some(object);
        }
        Some(object)
    }

    /// The patch of `bytes` against the reference of `bases` (their bytes read once, `loaded`;
    /// a base stored compressed or as a patch is decoded, and checked against its name).
    fn patch_from(
        &self,
        loaded: &mut HashMap<ObjectId, Vec<u8>>,
        bases: &[ChunkBase],
        bytes: &[u8],
        kind: PatchKind,
    ) -> Option<Vec<u8>> {
        for b in bases {
            if loaded.contains_key(&b.base.id) {
                continue;
            }
            let v = self.content(&b.base).ok()?;
            loaded.insert(b.base.id, v);
        }
        let layers: Vec<(ChunkBase, &[u8])> = bases
            .iter()
            .map(|b| (*b, &loaded[&b.base.id][..]))
            .collect();
        let reference = crate::delta::reference(bytes.len(), &layers);
        match kind {
            PatchKind::Ranges => Some(crate::delta::diff(&reference, bytes)),
            PatchKind::Zstd => crate::delta::zstd_patch(&reference, bytes).ok(),
        }
    }

    /// The content of object `r`, checked; why not, when it cannot be had.
    pub(crate) fn content(&self, r: &ObjectRef) -> Result<Vec<u8>, String> {
        let stored = std::fs::read(self.object_path(&r.id)).map_err(|e| e.to_string())?;
        self.decode_object(r, stored)
    }

    /// Stores object `r` as `stored`, bytes a patch's writer made ([`crate::delta`]) and
    /// checked: their length, or 0 when the store holds `r` already. Synced by the next
    /// point, as any new object.
    pub(crate) fn put_encoded(&self, r: &ObjectRef, stored: &[u8]) -> Result<u64, ShadowError> {
        if self.has_object(&r.id) {
            return Ok(0);
        }
        let path = self.object_path(&r.id);
        let t = self.temp_path();
        std::fs::write(&t, stored)
            .and_then(|()| objects::install(&t, &path))
            .inspect_err(|_| {
                let _ = std::fs::remove_file(&t);
            })
            .map_err(ShadowError::io(&path))?;
        self.written(&r.id, true);
        Ok(stored.len() as u64)
    }

    /// Replaces the stored form of object `r` with `stored`, another way to store the same
    /// content that a patch's writer made (a WAL chunk patched again with more of the base's
    /// pages at hand, [`crate::pg`]), where it saves at least an eighth: written and synced
    /// beside it, then renamed over it, so a reader finds one form or the other, each whole.
    /// The bytes saved; `None` when it saves less, or the store no longer holds `r`.
    pub(crate) fn replace_encoded(
        &self,
        r: &ObjectRef,
        stored: &[u8],
    ) -> Result<Option<u64>, ShadowError> {
        self.require_writer()?;
        let path = self.object_path(&r.id);
        let now = match std::fs::metadata(&path) {
            Ok(md) => md.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ShadowError::io(&path)(e)),
        };
        let len = stored.len() as u64;
        if len + now / 8 > now {
            return Ok(None);
        }
        let t = self.temp_path();
        objects::write_synced(&t, stored)
            .and_then(|()| objects::install(&t, &path))
            .inspect_err(|_| {
                let _ = std::fs::remove_file(&t);
            })
            .map_err(ShadowError::io(&path))?;
        Ok(Some(now - len))
    }

    /// Stores `bytes` (named `r`: the caller hashed them) as a patch against `bases`
    /// ([`PointStore::patch_against`]) when that is worth it: the stored bytes' length, `None`
    /// when it was not (the caller stores it whole). An object the store holds already is not
    /// stored again (`Some(0)`).
    pub(crate) fn put_patched(
        &self,
        r: &ObjectRef,
        bytes: &[u8],
        bases: Vec<ChunkBase>,
        how: (PatchKind, usize),
    ) -> Result<Option<u64>, ShadowError> {
        debug_assert_eq!(r.len, bytes.len() as u64);
        if self.has_object(&r.id) {
            return Ok(Some(0));
        }
        let Some(stored) = self.patch_against(bases, bytes, how) else {
            return Ok(None);
        };
        debug_assert_eq!(
            crate::delta::chunk_bytes(self.dir(), r, stored.clone())
                .ok()
                .as_deref(),
            Some(bytes)
        );
        let path = self.object_path(&r.id);
        let t = self.temp_path();
        std::fs::write(&t, &stored)
            .and_then(|()| objects::install(&t, &path))
            .inspect_err(|_| {
                let _ = std::fs::remove_file(&t);
            })
            .map_err(ShadowError::io(&path))?;
        self.written(&r.id, true);
        Ok(Some(stored.len() as u64))
    }
}
