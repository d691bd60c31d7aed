//! Copy-on-write points: where the file system shares blocks between files (btrfs, XFS with
//! reflink, bcachefs), a point's content is a **clone** of the consistent state (`FICLONE`,
//! milliseconds whatever the size) kept as `clones/NNNNNNNNNN-I`, and the point is durable
//! once the clone and its manifest are synced. Hashing comes after: a sealing thread reads
//! each clone, and writes `points/NNNNNNNNNN.seal` with its SHA-256 and the manifest's
//! checksum, under `shadow.lock` (so it never races retention).
//!
//! What is verified when:
//! - when the point is committed: its manifest's checksum and its link to the previous
//!   point (the chain, as for every point), and each clone's length;
//! - once sealed (seconds later: one read of the clone): each clone's SHA-256, checked by
//!   every later restore of the point (the restored file is hashed) and by `verify --deep`;
//! - a restore of a point not sealed yet checks the chain and the clone's length, then the
//!   kind's own check of the result (SQLite's `PRAGMA integrity_check`), and says in its
//!   report that the content hash was not checked.
//!
//! A clone is read-only (mode 0444) and never written after its point is committed; the
//! file system copies a block only when the live file changes it, so a point costs the
//! blocks that changed since, as the file system counts them (`du`, `btrfs filesystem du`,
//! not the logical sizes [`super::PointStore::disk_usage`] adds up).
//!
//! Points come before seals: a shadow taking a point holds a [`SealPause`], and the sealing
//! thread waits between its reads (1 MiB each) while any is held, so the seal's reads of a
//! large clone do not queue in front of the point's syncs.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use super::objects::{self, ObjectId};
use super::{ClonedFile, Manifest, PointDraft, PointId, ShadowError, Timestamp};
use crate::PointStore;

/// `points/NNNNNNNNNN.seal`: the content hashes of a copy-on-write point's clones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seal {
    pub seq: u64,
    /// The sealed manifest's checksum: a seal of another manifest does not count.
    pub checksum: String,
    pub objects: Vec<SealedObject>,
    pub sealed_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedObject {
    pub file: String,
    pub id: ObjectId,
    pub len: u64,
}

/// What the points of a store and its sealing threads share: how many points are being
/// taken, which the sealing threads wait out between reads.
#[derive(Debug, Default)]
pub(crate) struct SealGate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    /// Points being taken now.
    points: u32,
    /// How many times a sealing thread found a point being taken and waited for it.
    waits: u64,
}

impl SealGate {
    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits while a point is being taken (the sealing thread, before each read).
    fn wait_clear(&self) {
        let mut s = self.lock();
        if s.points == 0 {
            return;
        }
        s.waits += 1;
        self.changed.notify_all();
        while s.points > 0 {
            s = self
                .changed
                .wait(s)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// Waits until sealing threads have waited for points `n` times in all.
    #[cfg(test)]
    pub(crate) fn wait_for_waits(&self, n: u64) {
        let mut s = self.lock();
        while s.waits < n {
            s = self
                .changed
                .wait(s)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

/// Held while a point is taken ([`PointStore::pause_seals`]): the store's sealing threads
/// wait before their next read until every pause is dropped.
#[derive(Debug)]
#[must_use = "seals wait only while the pause is held"]
pub struct SealPause(Arc<SealGate>);

impl Drop for SealPause {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.points -= 1;
        if s.points == 0 {
            self.0.changed.notify_all();
        }
    }
}

/// One `FICLONE` of all of `from` into the empty `to`; `false` where the file system cannot
/// (ext4, tmpfs, two file systems), leaving `to` empty.
pub(crate) fn ficlone(from: &File, to: &File) -> bool {
    #[cfg(target_os = "linux")]
    {
        rustix::fs::ioctl_ficlone(to, from).is_ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (from, to);
        false
    }
}

/// Whether files under `dir` can be cloned (a probe: two small files made and removed).
pub fn cow_supported(dir: &Path) -> bool {
    let a = dir.join(format!(".bellwether-cow-probe.{}.a", std::process::id()));
    let b = dir.join(format!(".bellwether-cow-probe.{}.b", std::process::id()));
    let ok = (|| {
        std::fs::write(&a, vec![7u8; 65536])?;
        let from = File::open(&a)?;
        let to = File::create(&b)?;
        Ok::<_, io::Error>(ficlone(&from, &to))
    })()
    .unwrap_or(false);
    let _ = std::fs::remove_file(&a);
    let _ = std::fs::remove_file(&b);
    ok
}

fn sync_dir(dir: &Path) -> Result<(), ShadowError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(ShadowError::io(dir))
}

impl PointStore {
    /// Makes this store's sealing threads wait between reads until the pause is dropped:
    /// held while a point is taken, so a seal's reads of a large clone never queue in front
    /// of the point's own writes and syncs.
    pub fn pause_seals(&self) -> SealPause {
        self.gate.lock().points += 1;
        SealPause(Arc::clone(&self.gate))
    }

    pub(crate) fn clones_dir(&self) -> PathBuf {
        self.dir().join("clones")
    }

    pub(crate) fn seal_path(&self, seq: u64) -> PathBuf {
        self.dir()
            .join("points")
            .join(format!("{}.seal", super::store::seq_name(seq)))
    }

    /// Makes a copy-on-write point durable: each `(entry, file)` of `clones` is a file the
    /// caller made under [`PointStore::temp_path`] (a clone of the consistent state, and
    /// whatever it wrote over it); each is made read-only, synced and moved to `clones/`,
    /// then the manifest (with `draft.entries`, whose objects may be empty for the cloned
    /// entries) and `points/HEAD` are written. No content is read: the clones are hashed
    /// afterwards by a sealing thread ([`PointStore::wait_sealed`]).
    pub fn commit_clone_point(
        &self,
        draft: PointDraft,
        clones: Vec<(String, PathBuf)>,
    ) -> Result<Manifest, ShadowError> {
        let seq = self.next_seq()?;
        let cdir = self.clones_dir();
        std::fs::create_dir_all(&cdir).map_err(ShadowError::io(&cdir))?;
        let mut cloned = Vec::with_capacity(clones.len());
        let started = std::time::Instant::now();
        for (i, (entry, tmp)) in clones.into_iter().enumerate() {
            let f = File::open(&tmp).map_err(ShadowError::io(&tmp))?;
            let len = f.metadata().map_err(ShadowError::io(&tmp))?.len();
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                f.set_permissions(std::fs::Permissions::from_mode(0o444))
                    .map_err(ShadowError::io(&tmp))?;
            }
            f.sync_all().map_err(ShadowError::io(&tmp))?;
            let file = format!("{}-{i}", super::store::seq_name(seq));
            let to = cdir.join(&file);
            std::fs::rename(&tmp, &to).map_err(ShadowError::io(&to))?;
            cloned.push(ClonedFile { entry, file, len });
        }
        let synced_ms = started.elapsed().as_secs_f64() * 1000.0;
        sync_dir(&cdir)?;
        let m = self.commit_manifest(seq, draft, cloned, None)?;
        tracing::debug!(
            seq,
            sync_clones_ms = synced_ms,
            manifest_ms = started.elapsed().as_secs_f64() * 1000.0 - synced_ms,
            "Clone point committed."
        );
        self.seal_in_background(vec![seq]);
        Ok(m)
    }

    /// The seal of point `seq`, when it has one that matches its manifest.
    pub fn seal(&self, m: &Manifest) -> Result<Option<Seal>, ShadowError> {
        let path = self.seal_path(m.seq);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ShadowError::io(path)(e)),
        };
        let seal: Seal = serde_json::from_slice(&bytes).map_err(|e| ShadowError::BadFile {
            path: path.clone(),
            reason: format!("not valid: {e}"),
        })?;
        let same = seal.seq == m.seq
            && seal.checksum == m.checksum
            && seal.objects.len() == m.clones.len()
            && seal
                .objects
                .iter()
                .zip(&m.clones)
                .all(|(s, c)| s.file == c.file && s.len == c.len);
        if !same {
            return Err(ShadowError::DamagedPoint {
                dir: self.dir().to_owned(),
                id: m.id(),
                reason: format!(
                    "its seal {} does not match its manifest (another point's, or altered)",
                    path.display()
                ),
            });
        }
        Ok(Some(seal))
    }

    /// Hashes point `seq`'s clones and writes its seal (nothing when it has no clones, is
    /// sealed already, or was removed meanwhile).
    pub fn seal_point(&self, seq: u64) -> Result<Option<Seal>, ShadowError> {
        let m = match self.point(PointId(seq)) {
            Ok(m) => m,
            Err(ShadowError::NoSuchPoint { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        if m.clones.is_empty() {
            return Ok(None);
        }
        if let Some(s) = self.seal(&m)? {
            return Ok(Some(s));
        }
        let mut sealed = Vec::with_capacity(m.clones.len());
        for c in &m.clones {
            let path = self.clones_dir().join(&c.file);
            let (id, len) = match objects::hash_file_with(&path, || self.gate.wait_clear()) {
                Ok(x) => x,
                // Retention removed the point while it was being sealed.
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(ShadowError::io(path)(e)),
            };
            if len != c.len {
                return Err(self.damaged_clone(&m, c, format!("{len} bytes, not {}", c.len)));
            }
            sealed.push(SealedObject {
                file: c.file.clone(),
                id,
                len,
            });
        }
        let seal = Seal {
            seq,
            checksum: m.checksum.clone(),
            objects: sealed,
            sealed_at: Timestamp::now(),
        };
        let _lock = self.short_lock()?;
        if self.point(PointId(seq)).is_err() {
            return Ok(None);
        }
        super::store::write_json(&self.seal_path(seq), &seal)?;
        Ok(Some(seal))
    }

    /// Seals every point that has clones but no seal yet (a follower that stopped before
    /// sealing); returns how many it sealed.
    pub fn seal_pending(&self) -> Result<u64, ShadowError> {
        let mut n = 0;
        for m in self.points()? {
            if !m.clones.is_empty()
                && !self.seal_path(m.seq).exists()
                && self.seal_point(m.seq)?.is_some()
            {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Waits until every seal this store started has been written (or failed: the failure
    /// is logged, and the point stays unsealed until [`PointStore::seal_pending`]).
    pub fn wait_sealed(&self) {
        let handles: Vec<_> = std::mem::take(&mut *self.sealing());
        for h in handles {
            let _ = h.join();
        }
    }

    pub(crate) fn seal_in_background(&self, seqs: Vec<u64>) {
        let dir = self.dir().to_owned();
        let gate = Arc::clone(&self.gate);
        let spawned = std::thread::Builder::new()
            .name("shadow-seal".into())
            .spawn(move || {
                let store = match PointStore::open(&dir) {
                    Ok(mut s) => {
                        s.gate = gate;
                        s
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "sealing copy-on-write points");
                        return;
                    }
                };
                let result = if seqs.is_empty() {
                    store.seal_pending().map(|_| ())
                } else {
                    seqs.iter()
                        .try_for_each(|s| store.seal_point(*s).map(|_| ()))
                };
                if let Err(e) = result {
                    tracing::warn!(error = %e, "sealing copy-on-write points");
                }
            });
        match spawned {
            Ok(h) => {
                let mut list = self.sealing();
                list.retain(|h| !h.is_finished());
                list.push(h);
            }
            Err(e) => tracing::warn!(error = %e, "cannot start the sealing thread"),
        }
    }

    /// Checks a point's clones are there with their lengths, and its seal (if any) matches.
    pub(crate) fn verify_clones(&self, m: &Manifest) -> Result<Option<Seal>, ShadowError> {
        for c in &m.clones {
            let path = self.clones_dir().join(&c.file);
            match std::fs::metadata(&path) {
                Ok(md) if md.len() == c.len => {}
                Ok(md) => {
                    return Err(self.damaged_clone(
                        m,
                        c,
                        format!("{} bytes, not {}", md.len(), c.len),
                    ))
                }
                Err(_) => return Err(self.damaged_clone(m, c, "missing".into())),
            }
        }
        self.seal(m)
    }

    fn damaged_clone(&self, m: &Manifest, c: &ClonedFile, what: String) -> ShadowError {
        ShadowError::DamagedPoint {
            dir: self.dir().to_owned(),
            id: m.id(),
            reason: format!("its clone clones/{} of {} is {what}", c.file, c.entry),
        }
    }

    /// Makes `to` (a new file) the content of clone `c` of point `m`: cloned where the file
    /// system can, copied otherwise. Its length is checked, and, when the point is sealed,
    /// its SHA-256 (read from `to`). Returns whether the hash was checked.
    pub fn clone_file_into(
        &self,
        m: &Manifest,
        c: &ClonedFile,
        to: &Path,
    ) -> Result<bool, ShadowError> {
        let seal = self.verify_clones(m)?;
        let path = self.clones_dir().join(&c.file);
        let from = File::open(&path).map_err(ShadowError::io(&path))?;
        // Read and write: a clone is hashed from `to` itself.
        let out = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(to)
            .map_err(ShadowError::io(to))?;
        let sealed = seal
            .as_ref()
            .and_then(|s| s.objects.iter().find(|o| o.file == c.file));
        match sealed {
            Some(s) => {
                let (got, len) = objects::copy_hashing(&from, &out).map_err(ShadowError::io(to))?;
                if got != s.id || len != s.len {
                    return Err(self.damaged_clone(
                        m,
                        c,
                        format!(
                            "damaged (its content hashes to {got}, {len} bytes; sealed as {})",
                            s.id
                        ),
                    ));
                }
                Ok(true)
            }
            None => {
                objects::clone_or_copy(&from, &out).map_err(ShadowError::io(to))?;
                let len = out.metadata().map_err(ShadowError::io(to))?.len();
                if len != c.len {
                    return Err(self.damaged_clone(m, c, format!("{len} bytes, not {}", c.len)));
                }
                Ok(false)
            }
        }
    }

    /// `verify --deep` of a point's clones: each hashed against its seal. Returns the bytes
    /// read and whether the point was sealed.
    pub(crate) fn verify_clones_deep(&self, m: &Manifest) -> Result<(u64, bool), ShadowError> {
        let Some(seal) = self.verify_clones(m)? else {
            return Ok((0, false));
        };
        let mut bytes = 0;
        for (s, c) in seal.objects.iter().zip(&m.clones) {
            let path = self.clones_dir().join(&c.file);
            let (got, len) = objects::hash_file(&path).map_err(ShadowError::io(&path))?;
            if got != s.id || len != s.len {
                return Err(self.damaged_clone(
                    m,
                    c,
                    format!(
                        "damaged (its content hashes to {got}, {len} bytes; sealed as {})",
                        s.id
                    ),
                ));
            }
            bytes += len;
        }
        Ok((bytes, true))
    }

    /// Removes a thinned point's clones and seal.
    pub(crate) fn remove_clones(&self, m: &Manifest) -> Result<(), ShadowError> {
        for c in &m.clones {
            let path = self.clones_dir().join(&c.file);
            remove_if_there(&path)?;
        }
        remove_if_there(&self.seal_path(m.seq))
    }

    /// Removes clones and seals of points that have no manifest (a follower that died
    /// between moving a clone in and writing its manifest). Returns files and bytes removed.
    pub(crate) fn gc_clones(&self, present: &std::collections::HashSet<u64>) -> (u64, u64) {
        let mut removed = (0, 0);
        if let Ok(entries) = std::fs::read_dir(self.clones_dir()) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let seq = name.split('-').next().and_then(|s| s.parse::<u64>().ok());
                if seq.is_some_and(|s| !present.contains(&s)) {
                    let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                    if std::fs::remove_file(e.path()).is_ok() {
                        removed.0 += 1;
                        removed.1 += len;
                    }
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir(self.dir().join("points")) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let seq = name
                    .strip_suffix(".seal")
                    .and_then(|s| s.parse::<u64>().ok());
                if seq.is_some_and(|s| !present.contains(&s)) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        removed
    }
}

fn remove_if_there(path: &Path) -> Result<(), ShadowError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ShadowError::io(path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seal_reads_nothing_more_while_a_point_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clone");
        let data: Vec<u8> = (0..(3 << 20) + 17).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let gate = Arc::new(SealGate::default());
        gate.lock().points += 1;
        let pause = SealPause(Arc::clone(&gate));
        let sealing = {
            let (gate, path) = (Arc::clone(&gate), path.clone());
            std::thread::spawn(move || objects::hash_file_with(&path, || gate.wait_clear()))
        };
        // The sealing thread counts its wait under the gate's lock, then waits for the
        // pause to go: it cannot finish while the pause is held.
        gate.wait_for_waits(1);
        assert!(!sealing.is_finished());
        drop(pause);
        let sealed = sealing.join().unwrap().unwrap();
        assert_eq!(sealed, objects::hash_file(&path).unwrap());
        assert_eq!(sealed.1, data.len() as u64);
        // With no point being taken it never waits.
        let again = objects::hash_file_with(&path, || gate.wait_clear()).unwrap();
        assert_eq!(again, sealed);
        assert_eq!(gate.lock().waits, 1);
    }
}
