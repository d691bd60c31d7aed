//! Points and restores on copy-on-write file systems (btrfs, XFS with reflink): each test
//! makes a small loop-mounted file system of its own (as root; CI runs as root), or fails
//! saying how to get one. Points there are clones (`clones/…`), sealed with their SHA-256
//! after they are durable; the same correctness checks as on any disk must hold: a real
//! writer process in WAL mode (the drill's), killed or its file corrupted, every commit
//! before a point restored and none begun after it.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bellwether_shadow::drill::{self, DrillOptions, Fault, WriterKind};
use bellwether_shadow::point::loopfs::{CowFs, LoopFs};
use bellwether_shadow::point::Retention;
use bellwether_shadow::sqlite::{integrity_check, restore, SqliteShadow};
use bellwether_shadow::{
    PointId, PointStore, Reason, RestoreRequest, Shadow, ShadowOptions, ShadowType, Source, Target,
};
use rusqlite::Connection;

/// 320 MiB sparse images: XFS needs 300 MiB at least; the data is a few MiB.
const IMAGE: u64 = 320 << 20;

fn mount(fs: CowFs, tmp: &Path) -> LoopFs {
    match LoopFs::mount(
        fs,
        &tmp.join(format!("{fs}.img")),
        &tmp.join(fs.to_string()),
        IMAGE,
    ) {
        Ok(m) => m,
        Err(e) => panic!("this test runs on a {fs} loop mount it makes itself: {e}"),
    }
}

fn opts(dir: &Path, db: &Path, ty: ShadowType) -> ShadowOptions {
    ShadowOptions {
        dir: dir.to_owned(),
        source: Source::Path(db.to_owned()),
        shadow_type: ty,
        points_every: None,
        retention: Retention::default(),
        poll: None,
        clones: bellwether_shadow::point::Clones::Auto,
    }
}

fn req(dir: &Path, db: &Path, target: Target) -> RestoreRequest {
    RestoreRequest {
        dir: dir.to_owned(),
        target,
        dest: db.to_owned(),
        elsewhere: false,
    }
}

fn rows(db: &Path) -> i64 {
    Connection::open(db)
        .unwrap()
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap()
}

/// A writer's connection to a new database in WAL mode, with the table the tests fill.
fn wal_writer(db: &Path) -> Connection {
    let w = Connection::open(db).unwrap();
    w.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
        .unwrap();
    w.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, body BLOB)")
        .unwrap();
    w
}

fn insert(c: &Connection, from: i64, to: i64) {
    c.execute_batch("BEGIN").unwrap();
    for i in from..to {
        c.execute("INSERT INTO t(id, body) VALUES (?1, randomblob(1500))", [i])
            .unwrap();
    }
    c.execute_batch("COMMIT").unwrap();
}

fn corrupt(db: &Path) {
    let f = OpenOptions::new().write(true).open(db).unwrap();
    f.write_all_at(&[0xA5; 8192], 4096).unwrap();
    f.sync_all().unwrap();
    assert!(integrity_check(db).is_err(), "the corruption is seen");
}

/// Every type's points are clones, restorable before and after they are sealed; a clone
/// whose content changed is refused by its seal and the live file is left as it was.
fn points_are_clones_sealed_after(fs: CowFs) {
    let tmp = tempfile::tempdir().unwrap();
    let m = mount(fs, tmp.path());
    for ty in [
        ShadowType::Full,
        ShadowType::Differential,
        ShadowType::Transactional,
    ] {
        let work = m.path().join(ty.to_string());
        std::fs::create_dir_all(&work).unwrap();
        let db = work.join("app.db");
        let dir = work.join("shadow");
        // The writer holds its connection open in WAL mode all along, its commits partly
        // in the WAL when points are taken.
        let w = wal_writer(&db);
        insert(&w, 0, 500);
        let mut s = SqliteShadow::start(&opts(&dir, &db, ty)).unwrap();
        // Every point an image: this test is about clones (a transactional shadow would
        // take p2 from its commit log; those points are tested in the crate's sqlite tests).
        s.set_log_point_limit(0);
        insert(&w, 500, 700);
        let p2 = s.take_point(Reason::OnDemand).unwrap();
        insert(&w, 700, 750);
        s.sync().unwrap();
        s.store().wait_sealed();
        for p in [PointId(1), p2.id()] {
            let mf = s.store().point(p).unwrap();
            assert!(
                !mf.clones.is_empty(),
                "{fs} {ty}: point {p} is a clone: {mf:?}"
            );
            assert!(mf.entries[0].objects.is_empty());
            assert!(
                s.store().seal(&mf).unwrap().is_some(),
                "{fs} {ty}: {p} sealed"
            );
        }
        drop(s);
        drop(w);

        corrupt(&db);
        let r = restore(&req(&dir, &db, Target::Point(PointId(1)))).unwrap();
        assert_eq!(rows(&db), 500, "{fs} {ty}: {r:?}");
        assert!(r.checks.contains(&"checksums".to_string()), "{r:?}");
        let r = restore(&req(&dir, &db, Target::Point(p2.id()))).unwrap();
        assert_eq!(rows(&db), 700, "{fs} {ty}: {r:?}");
        if ty == ShadowType::Transactional {
            let r = restore(&req(&dir, &db, Target::Latest)).unwrap();
            assert_eq!(rows(&db), 750, "{fs} {ty}: {r:?}");
            assert_eq!(r.commits_replayed, 1);
        }

        // Unsealed (its seal not written yet): restorable, and the report says the content
        // hash was not checked.
        let seal = dir.join("points/0000000002.seal");
        std::fs::remove_file(&seal).unwrap();
        let r = restore(&req(&dir, &db, Target::Point(p2.id()))).unwrap();
        assert_eq!(rows(&db), 700);
        assert!(
            r.checks.iter().any(|c| c.contains("not sealed yet")),
            "{r:?}"
        );
        let store = PointStore::open(&dir).unwrap();
        assert_eq!(store.seal_pending().unwrap(), 1);
        store.verify(true).unwrap();

        // A clone altered after sealing: the restore fails naming it, the live file stays.
        let clone = dir.join("clones/0000000002-0");
        let live = std::fs::read(&db).unwrap();
        let f = OpenOptions::new().write(true).open(&clone).unwrap();
        f.write_all_at(b"not what was sealed", 8192).unwrap();
        drop(f);
        let e = restore(&req(&dir, &db, Target::Point(p2.id()))).unwrap_err();
        assert!(
            e.to_string().contains("clones/0000000002-0") && e.to_string().contains("sealed as"),
            "{e}"
        );
        assert_eq!(std::fs::read(&db).unwrap(), live, "the live file untouched");
        let e = store.verify(true).unwrap_err();
        assert!(e.to_string().contains("clones/0000000002-0"), "{e}");
    }
}

/// Retention removes a thinned point's clone and seal with it.
fn retention_removes_clones(fs: CowFs) {
    let tmp = tempfile::tempdir().unwrap();
    let m = mount(fs, tmp.path());
    let db = m.path().join("app.db");
    let dir = m.path().join("shadow");
    let w = wal_writer(&db);
    insert(&w, 0, 100);
    let mut s = SqliteShadow::start(&opts(&dir, &db, ShadowType::Differential)).unwrap();
    insert(&w, 100, 200);
    s.take_point(Reason::Schedule).unwrap();
    s.store().wait_sealed();
    let none = Retention {
        keep_all_for: bellwether_model::Dur::ZERO,
        hourly_for: bellwether_model::Dur::ZERO,
        daily_for: bellwether_model::Dur::ZERO,
    };
    let later = bellwether_shadow::Timestamp::now().plus(std::time::Duration::from_secs(3600));
    let r = s.store().thin(&none, later).unwrap();
    assert_eq!(r.removed, vec![PointId(1)]);
    assert!(!dir.join("clones/0000000001-0").exists());
    assert!(!dir.join("points/0000000001.seal").exists());
    assert!(dir.join("clones/0000000002-0").exists());
    s.store().verify(true).unwrap();
    drop(s);
    drop(w);
    corrupt(&db);
    restore(&req(&dir, &db, Target::Latest)).unwrap();
    assert_eq!(rows(&db), 200);
}

/// The chaos drill (a real writer process, killed or its file corrupted; full, differential
/// and transactional shadows; restores checked against the writer's log) run on the mount.
fn drill_on(fs: CowFs, fault: Fault, seed: u64) {
    let tmp = tempfile::tempdir().unwrap();
    let m = mount(fs, tmp.path());
    let r = drill::run(
        &DrillOptions {
            kinds: vec![WriterKind::Sqlite, WriterKind::Dir],
            faults: vec![fault],
            runs: 4,
            seed,
            writer: vec![OsString::from(env!(
                "CARGO_BIN_EXE_bellwether-shadow-drill-writer"
            ))],
            work_dir: PathBuf::from(m.path()),
        },
        |_| {},
    );
    let json = serde_json::to_string_pretty(&r).unwrap();
    assert!(r.passed(), "{json}");
    assert!(
        r.committed_before_points > 0,
        "the drill checked nothing: {json}"
    );
}

/// A file of several objects (a PostgreSQL data file) is assembled from reflinks of them
/// and hashed: the bytes are the objects' in order; a damaged object is named.
fn objects_are_assembled_from_reflinks(fs: CowFs) {
    let tmp = tempfile::tempdir().unwrap();
    let m = mount(fs, tmp.path());
    let dir = m.path().join("shadow");
    let mut store = PointStore::create(
        &dir,
        bellwether_shadow::point::ShadowMeta {
            format: bellwether_shadow::point::FORMAT,
            kind: bellwether_shadow::ResourceKind::Postgres,
            source: "postgres://test".into(),
            shadow_type: ShadowType::Full,
            created_at: bellwether_shadow::Timestamp::now(),
            retention: Retention::default(),
        },
    )
    .unwrap();
    store.lock_writer().unwrap();
    assert!(store.clones_into(m.path()), "{fs} clones");
    let parts: Vec<Vec<u8>> = (0..3u8)
        .map(|i| {
            (0..(1 << 20) + usize::from(i) * 4096)
                .map(|k| (k % 251) as u8 ^ i)
                .collect()
        })
        .collect();
    let refs: Vec<_> = parts
        .iter()
        .map(|p| store.put_object(p).unwrap().0)
        .collect();
    let out = m.path().join("assembled");
    let n = store.clone_objects_into(PointId(1), &refs, &out).unwrap();
    assert_eq!(n, parts.iter().map(|p| p.len() as u64).sum::<u64>());
    assert_eq!(std::fs::read(&out).unwrap(), parts.concat());
    let obj = store.object_path(&refs[1].id);
    let f = OpenOptions::new().write(true).open(&obj).unwrap();
    f.write_all_at(b"damage", 4096).unwrap();
    drop(f);
    let e = store
        .clone_objects_into(PointId(1), &refs, &m.path().join("again"))
        .unwrap_err();
    assert!(e.to_string().contains(&refs[1].id.to_string()), "{e}");
}

/// With `Clones::Never`, points on a file system that clones are stored as on any other:
/// objects, the later ones page deltas, no clone in the manifest; they restore the same.
fn points_without_clones_are_page_deltas(fs: CowFs) {
    let tmp = tempfile::tempdir().unwrap();
    let m = mount(fs, tmp.path());
    for ty in [ShadowType::Full, ShadowType::Differential] {
        let work = m.path().join(ty.to_string());
        std::fs::create_dir_all(&work).unwrap();
        let db = work.join("app.db");
        let dir = work.join("shadow");
        let w = wal_writer(&db);
        insert(&w, 0, 500);
        let o = ShadowOptions {
            clones: bellwether_shadow::point::Clones::Never,
            ..opts(&dir, &db, ty)
        };
        let mut s = SqliteShadow::start(&o).unwrap();
        insert(&w, 500, 700);
        let p2 = s.take_point(Reason::OnDemand).unwrap();
        insert(&w, 700, 750);
        for p in [PointId(1), p2.id()] {
            let mf = s.store().point(p).unwrap();
            assert!(mf.clones.is_empty(), "{fs} {ty}: point {p} is no clone");
            assert!(
                mf.entries.iter().any(|e| !e.objects.is_empty()),
                "{fs} {ty}: point {p} holds objects"
            );
        }
        if ty == ShadowType::Differential {
            let mf = s.store().point(p2.id()).unwrap();
            assert!(
                mf.entries.len() > 1,
                "{fs}: the second differential point is page deltas: {:?}",
                mf.entries.iter().map(|e| &e.path).collect::<Vec<_>>()
            );
        }
        drop(s);
        drop(w);
        corrupt(&db);
        let r = restore(&req(&dir, &db, Target::Point(PointId(1)))).unwrap();
        assert_eq!(rows(&db), 500, "{fs} {ty}: {r:?}");
        let r = restore(&req(&dir, &db, Target::Point(p2.id()))).unwrap();
        assert_eq!(rows(&db), 700, "{fs} {ty}: {r:?}");
    }
}

#[test]
fn btrfs_points_without_clones_are_page_deltas() {
    points_without_clones_are_page_deltas(CowFs::Btrfs);
}

#[test]
fn xfs_points_without_clones_are_page_deltas() {
    points_without_clones_are_page_deltas(CowFs::Xfs);
}

#[test]
fn btrfs_objects_are_assembled_from_reflinks() {
    objects_are_assembled_from_reflinks(CowFs::Btrfs);
}

#[test]
fn xfs_objects_are_assembled_from_reflinks() {
    objects_are_assembled_from_reflinks(CowFs::Xfs);
}

#[test]
fn btrfs_points_are_clones_sealed_after() {
    points_are_clones_sealed_after(CowFs::Btrfs);
}

#[test]
fn xfs_points_are_clones_sealed_after() {
    points_are_clones_sealed_after(CowFs::Xfs);
}

#[test]
fn btrfs_retention_removes_clones() {
    retention_removes_clones(CowFs::Btrfs);
}

#[test]
fn xfs_retention_removes_clones() {
    retention_removes_clones(CowFs::Xfs);
}

#[test]
fn btrfs_drill_kill_writer_and_corrupt() {
    drill_on(CowFs::Btrfs, Fault::KillWriter, 31);
    drill_on(CowFs::Btrfs, Fault::Corrupt, 32);
}

#[test]
fn xfs_drill_kill_writer_and_corrupt() {
    drill_on(CowFs::Xfs, Fault::KillWriter, 33);
    drill_on(CowFs::Xfs, Fault::Corrupt, 34);
}

/// A transactional shadow's points after a clone are taken from its commit log: no clone of
/// their own; a restore clones the image and replays the commits since, each point exactly.
#[test]
fn btrfs_points_from_the_log_build_on_a_clone() {
    let tmp = tempfile::tempdir().unwrap();
    let m = mount(CowFs::Btrfs, tmp.path());
    let db = m.path().join("app.db");
    let dir = m.path().join("shadow");
    let w = wal_writer(&db);
    insert(&w, 0, 300);
    let mut s = SqliteShadow::start(&opts(&dir, &db, ShadowType::Transactional)).unwrap();
    let mut points = Vec::new();
    for n in 1..=3 {
        insert(&w, 300 * n, 300 * n + 100);
        while s.sync().unwrap().commits > 0 {}
        let p = s.take_point(Reason::OnDemand).unwrap();
        assert!(p.clones.is_empty(), "{p:?}");
        assert_eq!(p.from_log.as_ref().map(|f| f.image), Some(1), "{p:?}");
        points.push((p.id(), rows(&db)));
    }
    s.store().wait_sealed();
    drop(s);
    drop(w);
    let image = PointStore::open(&dir).unwrap().point(PointId(1)).unwrap();
    assert!(!image.clones.is_empty(), "the base is a clone: {image:?}");
    corrupt(&db);
    for (id, want) in points {
        let r = restore(&req(&dir, &db, Target::Point(id))).unwrap();
        assert_eq!(rows(&db), want, "{r:?}");
        assert!(r.checks.contains(&"checksums".to_string()), "{r:?}");
    }
}
