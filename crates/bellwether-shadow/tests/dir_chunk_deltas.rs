//! Directory chunks stored as patches (`bellwether_shadow::delta`): small edits in place store
//! about the bytes they change instead of the 64 KiB chunks they touch, every point restores
//! byte for byte, retention keeps what a patch is rebuilt from, a chain of patches stays
//! within `CHUNK_CHAIN`, and a damaged patch is named without touching the live directory.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bellwether_model::Dur;
use bellwether_shadow::delta::{self, CHUNK_CHAIN};
use bellwether_shadow::dir::Dir;
use bellwether_shadow::point::{ObjectRef, Retention, Source};
use bellwether_shadow::{
    Manifest, PointStore, Reason, Resource, RestoreRequest, ShadowError, ShadowOptions, ShadowType,
    Target, Timestamp,
};

/// Deterministic incompressible bytes (xorshift).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

struct Fixture {
    _tmp: tempfile::TempDir,
    live: PathBuf,
    shadow: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let live = tmp.path().join("live");
    fs::create_dir_all(&live).unwrap();
    fs::write(live.join("big.bin"), noise(1, 2 << 20)).unwrap();
    fs::write(live.join("small.bin"), noise(2, 100_000)).unwrap();
    Fixture {
        shadow: tmp.path().join("shadow"),
        live,
        _tmp: tmp,
    }
}

fn opts(f: &Fixture) -> ShadowOptions {
    ShadowOptions {
        dir: f.shadow.clone(),
        source: Source::Path(f.live.clone()),
        shadow_type: ShadowType::Differential,
        points_every: None,
        retention: Retention::default(),
        poll: None,
        clones: bellwether_shadow::point::Clones::Auto,
    }
}

fn restore(f: &Fixture, m: &Manifest) -> Result<(), ShadowError> {
    Dir.restore(&RestoreRequest {
        dir: f.shadow.clone(),
        target: Target::Point(m.id()),
        dest: f.live.clone(),
        elsewhere: false,
    })
    .map(|_| ())
}

fn edit(path: &Path, at: u64, bytes: &[u8]) {
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, at).unwrap();
}

/// The chunks of `file` in a point, and how each is stored (0 whole, 1.. patched).
fn stored(store: &Path, m: &Manifest, file: &str) -> Vec<(ObjectRef, u8)> {
    let e = m.entries.iter().find(|e| e.path == file).unwrap();
    e.objects
        .iter()
        .map(|r| (*r, delta::stored_depth(store, r).expect("stored")))
        .collect()
}

#[test]
fn small_edits_in_place_store_patches_and_every_point_restores_exactly() {
    let f = fixture();
    let mut sh = Dir.start(&opts(&f)).unwrap();
    let mut expect = Vec::new();
    for round in 0..6u64 {
        let edit_len = 4096 + 1024 * round as usize;
        edit(
            &f.live.join("big.bin"),
            round * 300_001 + 12_345,
            &noise(100 + round, edit_len),
        );
        let m = sh.take_point(Reason::OnDemand).unwrap();
        // A whole chunk is at least 16 KiB; the edit touches one or two.
        assert!(
            m.new_bytes <= 2 * edit_len as u64 + 1024,
            "round {round}: {} bytes stored for a {edit_len}-byte edit",
            m.new_bytes
        );
        let patched = stored(&f.shadow, &m, "big.bin")
            .iter()
            .filter(|(_, d)| *d > 0)
            .count();
        assert!(patched >= 1, "round {round}: the edited chunk is a patch");
        expect.push((m, fs::read(f.live.join("big.bin")).unwrap()));
    }
    sh.store().verify(true).unwrap();
    // Retention down to the last point: what its patches are rebuilt from stays.
    let zero = Retention {
        keep_all_for: Dur::from_secs(0),
        hourly_for: Dur::from_secs(0),
        daily_for: Dur::from_secs(0),
    };
    let r = sh
        .store()
        .thin(
            &zero,
            Timestamp::from_micros(Timestamp::now().as_micros() + 1_000_000),
        )
        .unwrap();
    assert_eq!(r.removed.len(), 6, "all but the last point thinned");
    let referenced: std::collections::HashSet<_> =
        expect.last().unwrap().0.objects().map(|r| r.id).collect();
    assert!(
        r.gc.objects_kept as usize > referenced.len(),
        "the chunks its patches are rebuilt from are kept: {} kept, {} referenced",
        r.gc.objects_kept,
        referenced.len()
    );
    sh.store().verify(true).unwrap();
    drop(sh);
    fs::write(f.live.join("big.bin"), b"overwritten").unwrap();
    let (last, want) = expect.last().unwrap();
    restore(&f, last).unwrap();
    assert!(
        fs::read(f.live.join("big.bin")).unwrap() == *want,
        "exact bytes"
    );
}

#[test]
fn every_point_of_a_chain_of_patches_restores_exactly() {
    let f = fixture();
    let mut sh = Dir.start(&opts(&f)).unwrap();
    let mut expect = Vec::new();
    // The same chunk edited again and again: a chain, bounded by CHUNK_CHAIN (the objects a
    // rebuild reads besides the chunk's own).
    let rounds = 3 * usize::from(CHUNK_CHAIN) + 1;
    let mut depths = Vec::new();
    let mut stored_bytes = Vec::new();
    for round in 0..rounds {
        edit(
            &f.live.join("small.bin"),
            20_000 + 64 * round as u64,
            &noise(500 + round as u64, 2000),
        );
        let m = sh.take_point(Reason::OnDemand).unwrap();
        let d = stored(&f.shadow, &m, "small.bin");
        let deepest = d.iter().map(|(_, d)| *d).max().unwrap();
        assert!(deepest <= CHUNK_CHAIN, "round {round}: depth {deepest}");
        depths.push(deepest);
        stored_bytes.push(m.new_bytes);
        expect.push((m, fs::read(f.live.join("small.bin")).unwrap()));
    }
    assert!(
        depths.contains(&CHUNK_CHAIN),
        "the chain reaches its bound: {depths:?}"
    );
    // Past the bound the chunk is patched against an older version (its base's base, which
    // keeps the reads within the bound) rather than stored whole: these edits overlap, so
    // the patch against the older version stays small.
    let max_at = depths.iter().position(|d| *d == CHUNK_CHAIN).unwrap();
    assert!(
        depths[max_at + 1..].iter().all(|d| *d >= 1),
        "past the bound the chunk is still a patch: {depths:?}"
    );
    assert!(
        stored_bytes.iter().all(|b| *b < 10_000),
        "each point stores about its 2000-byte edit: {stored_bytes:?}"
    );
    drop(sh);
    for (m, want) in &expect {
        restore(&f, m).unwrap();
        assert!(
            fs::read(f.live.join("small.bin")).unwrap() == *want,
            "point {}",
            m.id()
        );
    }
}

#[test]
fn a_damaged_patch_or_base_is_named_and_the_live_directory_is_untouched() {
    let f = fixture();
    let mut sh = Dir.start(&opts(&f)).unwrap();
    let base = sh.store().points().unwrap().remove(0);
    edit(&f.live.join("big.bin"), 70_000, &noise(9, 5000));
    let m = sh.take_point(Reason::OnDemand).unwrap();
    drop(sh);
    let (patched, _) = stored(&f.shadow, &m, "big.bin")
        .into_iter()
        .find(|(_, d)| *d > 0)
        .expect("a patched chunk");
    let store = PointStore::open(&f.shadow).unwrap();
    let header = delta::chunk_patch(&fs::read(store.object_path(&patched.id)).unwrap()).unwrap();
    assert!(
        base.entries
            .iter()
            .flat_map(|e| &e.objects)
            .any(|r| *r == header.bases[0].base),
        "the patch is against a chunk of the previous point"
    );
    fs::write(f.live.join("small.bin"), b"live now").unwrap();
    let live = fs::read_dir(&f.live).unwrap().count();

    let flip = |id: &bellwether_shadow::point::ObjectId, at_end: bool| {
        let p = store.object_path(id);
        let mut b = fs::read(&p).unwrap();
        let i = if at_end { b.len() - 1 } else { 100 };
        b[i] ^= 0xff;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&p, &b).unwrap();
    };
    use std::os::unix::fs::PermissionsExt;

    // The patch's last byte.
    flip(&patched.id, true);
    let e = restore(&f, &m).unwrap_err();
    assert!(matches!(e, ShadowError::BadObject { .. }), "{e}");
    assert!(e.to_string().contains("big.bin"), "{e}");
    assert_eq!(fs::read(f.live.join("small.bin")).unwrap(), b"live now");
    assert_eq!(fs::read_dir(&f.live).unwrap().count(), live);
    let err = store.verify(true).unwrap_err();
    assert!(err.to_string().contains(&patched.id.hex()), "{err}");
    flip(&patched.id, true);
    restore(&f, &m).unwrap();
    fs::write(f.live.join("small.bin"), b"live now").unwrap();

    // Its base.
    flip(&header.bases[0].base.id, false);
    let e = restore(&f, &m).unwrap_err();
    assert!(e.to_string().contains("base chunk"), "{e}");
    assert_eq!(fs::read(f.live.join("small.bin")).unwrap(), b"live now");

    // Its base gone: the check before the restore says so.
    fs::remove_file(store.object_path(&header.bases[0].base.id)).unwrap();
    let e = restore(&f, &m).unwrap_err();
    assert!(matches!(e, ShadowError::BadObject { .. }), "{e}");
    assert_eq!(fs::read(f.live.join("small.bin")).unwrap(), b"live now");
}

/// Where each chunk of `file` after the first starts, in a point.
fn boundaries(m: &Manifest, file: &str) -> Vec<u64> {
    let e = m.entries.iter().find(|e| e.path == file).unwrap();
    e.objects
        .iter()
        .scan(0u64, |at, r| {
            *at += r.len;
            Some(*at)
        })
        .collect()
}

/// The header of a chunk stored as a patch (`None` when it is stored whole).
fn header(store: &Path, r: &ObjectRef) -> Option<delta::ChunkPatch> {
    delta::stored_patch(store, r).expect("stored")
}

fn writable(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(0o644)).unwrap();
}

#[test]
fn an_edit_across_a_chunk_boundary_is_patched_against_every_chunk_it_overlaps() {
    let f = fixture();
    let mut sh = Dir.start(&opts(&f)).unwrap();
    let big = f.live.join("big.bin");
    let mut m = sh.store().points().unwrap().remove(0);
    let mut expect = Vec::new();
    let mut several = Vec::new();
    for round in 0..4usize {
        // New bytes over a chunk boundary (a different one each round): the boundary was cut
        // where the rolling hash of the bytes before it matched, so it moves, and a new chunk
        // overlaps the two old chunks on either side.
        let len = 6144u64;
        let at = boundaries(&m, "big.bin")[3 * round] - len / 2;
        edit(&big, at, &noise(700 + round as u64, len as usize));
        m = sh.take_point(Reason::OnDemand).unwrap();
        assert!(
            m.new_bytes <= len + 2048,
            "round {round}: {} bytes stored for a {len}-byte edit",
            m.new_bytes
        );
        let e = m.entries.iter().find(|e| e.path == "big.bin").unwrap();
        several.extend(
            e.objects
                .iter()
                .filter(|r| header(&f.shadow, r).is_some_and(|h| h.bases.len() >= 2))
                .copied(),
        );
        expect.push((m.clone(), fs::read(&big).unwrap()));
    }
    assert!(
        !several.is_empty(),
        "some new chunk is patched against several old ones"
    );
    sh.store().verify(true).unwrap();
    drop(sh);
    for (m, want) in &expect {
        restore(&f, m).unwrap();
        assert!(fs::read(&big).unwrap() == *want, "point {}", m.id());
    }

    // A damaged base of such a chunk, any of them, is named and nothing is restored.
    let store = PointStore::open(&f.shadow).unwrap();
    let (last, want) = expect.last().unwrap();
    let r = several
        .iter()
        .find(|r| last.objects().any(|o| o == *r))
        .copied()
        .unwrap_or(several[several.len() - 1]);
    let h = header(&f.shadow, &r).unwrap();
    let second = h.bases[1].base;
    let p = store.object_path(&second.id);
    let good = fs::read(&p).unwrap();
    let mut bad = good.clone();
    bad[good.len() / 2] ^= 0x55;
    writable(&p);
    fs::write(&p, &bad).unwrap();
    fs::write(f.live.join("small.bin"), b"live now").unwrap();
    let point = expect
        .iter()
        .map(|(m, _)| m)
        .find(|m| m.objects().any(|o| *o == r))
        .unwrap();
    let e = restore(&f, point).unwrap_err();
    assert!(matches!(e, ShadowError::BadObject { .. }), "{e}");
    assert!(e.to_string().contains("base chunk"), "{e}");
    assert!(e.to_string().contains(&second.id.hex()), "{e}");
    assert_eq!(fs::read(f.live.join("small.bin")).unwrap(), b"live now");
    fs::write(&p, &good).unwrap();

    // Retention down to the last point keeps every base of its patches.
    let mut store = store;
    store.lock_writer().unwrap();
    let zero = Retention {
        keep_all_for: Dur::from_secs(0),
        hourly_for: Dur::from_secs(0),
        daily_for: Dur::from_secs(0),
    };
    store
        .thin(
            &zero,
            Timestamp::from_micros(Timestamp::now().as_micros() + 1_000_000),
        )
        .unwrap();
    store.verify(true).unwrap();
    restore(&f, last).unwrap();
    assert!(fs::read(&big).unwrap() == *want, "the last point");
}

#[test]
fn chunks_patched_in_the_first_format_still_restore() {
    // A chunk as a shadow written before several bases kept it: a format 1 patch against one
    // chunk of the previous version.
    let f = fixture();
    let mut sh = Dir.start(&opts(&f)).unwrap();
    edit(&f.live.join("big.bin"), 70_000, &noise(9, 5000));
    let m = sh.take_point(Reason::OnDemand).unwrap();
    drop(sh);
    let want = fs::read(f.live.join("big.bin")).unwrap();
    let store = PointStore::open(&f.shadow).unwrap();
    let mut rewritten = 0;
    for (r, depth) in stored(&f.shadow, &m, "big.bin") {
        if depth == 0 {
            continue;
        }
        let bytes = store.read_object(m.id(), &r).unwrap();
        let h = header(&f.shadow, &r).unwrap();
        let b = h.bases.iter().max_by_key(|b| b.to - b.from).unwrap();
        let old = store.read_object(m.id(), &b.base).unwrap();
        let patch = delta::diff(&delta::aligned(&old, b.shift, bytes.len()), &bytes);
        let v1 = delta::chunk_object(&b.base, 0, b.shift, &patch);
        assert!(v1.len() < bytes.len());
        let p = store.object_path(&r.id);
        writable(&p);
        fs::write(&p, &v1).unwrap();
        let h1 = header(&f.shadow, &r).unwrap();
        assert_eq!((h1.bases.len(), h1.body), (1, delta::CHUNK_HEADER));
        rewritten += 1;
    }
    assert!(rewritten >= 1);
    store.verify(true).unwrap();
    fs::write(f.live.join("big.bin"), b"overwritten").unwrap();
    restore(&f, &m).unwrap();
    assert!(fs::read(f.live.join("big.bin")).unwrap() == want);
}
