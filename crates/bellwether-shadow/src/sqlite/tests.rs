//! SQLite shadows of a database another process writes: the writer is Python's `sqlite3`
//! module (not Bellwether, not rusqlite), in WAL mode, journaling each transaction's
//! begin and end times so restores are checked against what was committed when.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;

use bellwether_model::Dur;
use rusqlite::Connection;

use super::*;
use crate::point::{run, Control, PointId, Retention, RunEvent};

/// The foreign writer: one row per transaction (id = the transaction's number), every
/// seventh transaction also updates an older row, and a journal line before `BEGIN` and
/// after `COMMIT` with the time in microseconds.
const WRITER: &str = r#"
import sqlite3, sys, time, random
db, journal, start, count, payload, pause = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
c = sqlite3.connect(db, isolation_level=None, timeout=30)
c.execute("PRAGMA journal_mode=WAL")
c.execute("PRAGMA synchronous=NORMAL")
c.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, body BLOB, note TEXT)")
j = open(journal, "a", buffering=1)
i = start
while count < 0 or i < start + count:
    j.write("begin %d %d\n" % (i, time.time_ns() // 1000))
    c.execute("BEGIN IMMEDIATE")
    c.execute("INSERT INTO t(id, body) VALUES (?, randomblob(?))", (i, payload))
    if i % 7 == 0:
        c.execute("UPDATE t SET note = ? WHERE id = ?", (str(i), random.randint(1, i)))
    c.execute("COMMIT")
    j.write("end %d %d\n" % (i, time.time_ns() // 1000))
    i += 1
    if pause > 0:
        time.sleep(pause)
print("done", flush=True)
"#;

fn python() -> Command {
    let ok = Command::new("python3")
        .args(["-c", "import sqlite3"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "these tests drive a foreign SQLite writer with python3 and its sqlite3 module: install python3 (apt-get install python3)"
    );
    Command::new("python3")
}

fn writer(db: &Path, journal: &Path, start: u64, count: i64, payload: u32, pause: f64) -> Child {
    python()
        .arg("-c")
        .arg(WRITER)
        .arg(db)
        .arg(journal)
        .arg(start.to_string())
        .arg(count.to_string())
        .arg(payload.to_string())
        .arg(pause.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 starts")
}

fn write_batch(db: &Path, journal: &Path, start: u64, count: i64, payload: u32) {
    let out = writer(db, journal, start, count, payload, 0.0)
        .wait_with_output()
        .expect("writer runs");
    assert!(out.status.success(), "writer failed: {out:?}");
}

/// The writer's journal: each transaction's begin time and, if it saw its commit, end time.
fn journal(path: &Path) -> BTreeMap<u64, (i64, Option<i64>)> {
    let mut out = BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap().lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let (Ok(i), Ok(t)) = (f[1].parse::<u64>(), f.get(2).unwrap_or(&"").parse::<i64>()) else {
            continue; // a line cut by the kill
        };
        match f[0] {
            "begin" => {
                out.insert(i, (t, None));
            }
            "end" => {
                if let Some(e) = out.get_mut(&i) {
                    e.1 = Some(t);
                }
            }
            _ => {}
        }
    }
    out
}

/// The row ids of a database file, checking they are 1..=k without a gap.
fn prefix_rows(db: &Path) -> u64 {
    let c = Connection::open(db).unwrap();
    let ids: Vec<u64> = c
        .prepare("SELECT id FROM t ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for (n, id) in ids.iter().enumerate() {
        assert_eq!(*id, n as u64 + 1, "rows are a prefix of the transactions");
    }
    ids.len() as u64
}

fn opts(dir: &Path, db: &Path, ty: ShadowType) -> ShadowOptions {
    ShadowOptions {
        dir: dir.to_owned(),
        source: Source::Path(db.to_owned()),
        shadow_type: ty,
        points_every: None,
        retention: Retention::default(),
        poll: None,
        clones: crate::point::Clones::Auto,
    }
}

/// Syncs until a sync finds nothing new (the writer has stopped).
fn catch_up(s: &mut SqliteShadow) {
    while s.sync().unwrap().commits > 0 {}
}

fn req(dir: &Path, db: &Path, target: Target) -> RestoreRequest {
    RestoreRequest {
        dir: dir.to_owned(),
        target,
        dest: db.to_owned(),
        elsewhere: false,
    }
}

/// Overwrites a stretch of the live file with garbage, as a failing disk or a stray write
/// would: SQLite then reports it malformed.
fn corrupt(db: &Path) {
    let f = OpenOptions::new().write(true).open(db).unwrap();
    f.write_all_at(&[0xA5; 8192], 4096).unwrap();
    f.sync_all().unwrap();
    let _ = std::fs::remove_file(wal_path(db));
    let _ = std::fs::remove_file(shm_path(db));
    assert!(integrity_check(db).is_err(), "the corruption is seen");
}

fn tmpdirs() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let db = t.path().join("app.db");
    let journal = t.path().join("journal");
    let dir = t.path().join("shadow");
    (t, db, journal, dir)
}

#[test]
fn transactional_restore_to_a_time_brings_back_exactly_the_commits_before_it() {
    let (_t, db, jp, dir) = tmpdirs();
    write_batch(&db, &jp, 1, 50, 300);
    let mut s = SqliteShadow::start(&opts(&dir, &db, ShadowType::Transactional)).unwrap();
    write_batch(&db, &jp, 51, 250, 300);
    catch_up(&mut s);
    let t = Timestamp::now();
    // Large rows: the WAL passes WAL_LIMIT, so the shadow checkpoints and follows the
    // writer into the WAL's next generation.
    let salt_before = wal::read_header(&File::open(wal_path(&db)).unwrap())
        .unwrap()
        .unwrap()
        .salt;
    write_batch(&db, &jp, 301, 1500, 4000);
    catch_up(&mut s);
    // The next commits start a new WAL generation (the shadow let the WAL restart).
    write_batch(&db, &jp, 1801, 10, 300);
    catch_up(&mut s);
    let salt_after = wal::read_header(&File::open(wal_path(&db)).unwrap())
        .unwrap()
        .unwrap()
        .salt;
    assert_ne!(salt_before, salt_after, "the WAL restarted");
    assert_eq!(s.commits(), 1760, "every commit logged");
    drop(s);
    corrupt(&db);

    let r = restore(&req(&dir, &db, Target::Time(t))).unwrap();
    assert_eq!(
        prefix_rows(&db),
        300,
        "exactly the commits before {t}: {r:?}"
    );
    assert_eq!(r.commits_replayed, 250);
    integrity_check(&db).unwrap();

    let r = restore(&req(&dir, &db, Target::Latest)).unwrap();
    assert_eq!(prefix_rows(&db), 1810, "{r:?}");
    assert!(r.restored_to > t);

    let r = restore(&req(&dir, &db, Target::Point(PointId(1)))).unwrap();
    assert_eq!(prefix_rows(&db), 50, "the base point alone: {r:?}");
    assert_eq!(r.commits_replayed, 0);
    // The whole shadow checks out.
    let v = PointStore::open(&dir).unwrap().verify(true).unwrap();
    assert_eq!(v.points, 1);
    assert_eq!(v.log_records, 1760);
}

#[test]
fn continuous_writer_killed_and_file_corrupted_restores_every_commit_before_the_point() {
    let (_t, db, jp, dir) = tmpdirs();
    write_batch(&db, &jp, 1, 20, 500);
    let mut w = writer(&db, &jp, 21, -1, 500, 0.001);
    let shadow = Resource::start(
        &Sqlite,
        &ShadowOptions {
            points_every: Some(Dur::from_millis(400)),
            ..opts(&dir, &db, ShadowType::Transactional)
        },
    )
    .unwrap();
    let ctl = Arc::new(Control::new());
    let (tx, rx) = mpsc::channel();
    let runner = {
        let ctl = ctl.clone();
        std::thread::spawn(move || {
            let mut shadow = shadow;
            run(
                shadow.as_mut(),
                Some(Dur::from_millis(400)),
                &ctl,
                &mut |e| {
                    let _ = tx.send(e.clone());
                },
            )
        })
    };
    // Three scheduled points and one predicted, under the running writer.
    let mut points = Vec::new();
    let mut predicted = false;
    while points.len() < 4 {
        if let RunEvent::Point(m) = rx.recv().unwrap() {
            points.push(m);
            if !predicted {
                ctl.request_point(Reason::Predicted {
                    source: "test".into(),
                    failure_at: Timestamp::now(),
                    probability: 0.9,
                });
                predicted = true;
            }
        }
    }
    // Kill -9 the writer wherever it is (often inside a transaction).
    w.kill().unwrap();
    w.wait().unwrap();
    // A point after the kill holds every commit the writer made.
    ctl.request_point(Reason::OnDemand);
    let last = loop {
        if let RunEvent::Point(m) = rx.recv().unwrap() {
            break m;
        }
    };
    ctl.stop();
    runner.join().unwrap().unwrap();
    let live_rows = prefix_rows(&db);
    corrupt(&db);
    let j = journal(&jp);

    assert!(points
        .iter()
        .any(|m| matches!(m.reason, Reason::Predicted { .. })));
    for m in &points {
        let r = restore(&req(&dir, &db, Target::Point(m.id()))).unwrap();
        let k = prefix_rows(&db);
        for (i, (begin, end)) in &j {
            if end.is_some_and(|e| e < m.taken_at.0) {
                assert!(
                    *i <= k,
                    "{} misses transaction {i} committed before it",
                    m.id()
                );
            }
            if *begin > m.consistent_at.0 {
                assert!(*i > k, "{} holds transaction {i} begun after it", m.id());
            }
        }
        // A point from the commit log replays the commits since its image, no more.
        let chain = m.from_log.as_ref().map_or(0, |f| f.records);
        assert!(
            r.commits_replayed >= chain && (m.from_log.is_some() || r.commits_replayed == 0),
            "{}: {} commits replayed ({:?})",
            m.id(),
            r.commits_replayed,
            m.from_log
        );
    }
    // A time between points: the point before it plus the commits logged up to it.
    let t = Timestamp((points[1].consistent_at.0 + points[3].consistent_at.0) / 2);
    let r = restore(&req(&dir, &db, Target::Time(t))).unwrap();
    let k = prefix_rows(&db);
    for (i, (begin, _)) in &j {
        if *begin > t.0 {
            assert!(
                *i > k,
                "restore to {t} holds transaction {i} begun after it"
            );
        }
    }
    assert!(r.point < last.id());
    // Each transaction is one commit: the rows are the point's plus the commits replayed
    // after it (a point from the commit log replays those since its image as well).
    let (point_rows, to_point) = {
        let r = restore(&req(&dir, &db, Target::Point(r.point))).unwrap();
        (prefix_rows(&db), r.commits_replayed)
    };
    assert_eq!(k, point_rows + r.commits_replayed - to_point, "{r:?}");
    // The latest state is everything the writer committed before it was killed.
    restore(&req(&dir, &db, Target::Point(last.id()))).unwrap();
    assert_eq!(
        prefix_rows(&db),
        live_rows,
        "every commit the live file had"
    );
    restore(&req(&dir, &db, Target::Latest)).unwrap();
    assert_eq!(prefix_rows(&db), live_rows);
    PointStore::open(&dir).unwrap().verify(true).unwrap();
}

#[test]
fn full_and_differential_points_restore_and_share_what_did_not_change() {
    for ty in [ShadowType::Full, ShadowType::Differential] {
        let (_t, db, jp, dir) = tmpdirs();
        write_batch(&db, &jp, 1, 2000, 1000);
        let mut s = SqliteShadow::start(&opts(&dir, &db, ty)).unwrap();
        write_batch(&db, &jp, 2001, 20, 1000);
        let p2 = s.take_point(Reason::OnDemand).unwrap();
        assert_eq!(s.sync().unwrap(), SyncReport::default());
        drop(s);
        if ty == ShadowType::Differential {
            assert!(
                p2.new_bytes * 4 < p2.bytes,
                "a differential point stores only what changed: {} of {}",
                p2.new_bytes,
                p2.bytes
            );
        } else {
            assert_eq!(p2.entries[0].objects.len(), 1);
        }
        corrupt(&db);
        restore(&req(&dir, &db, Target::Point(PointId(1)))).unwrap();
        assert_eq!(prefix_rows(&db), 2000, "{ty}");
        restore(&req(&dir, &db, Target::Time(p2.consistent_at))).unwrap();
        assert_eq!(prefix_rows(&db), 2020, "{ty}");
    }
}

fn digest(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

#[test]
fn bad_restores_are_refused_and_leave_the_live_file_alone() {
    let (t, db, jp, dir) = tmpdirs();
    write_batch(&db, &jp, 1, 100, 1000);
    let s = SqliteShadow::start(&opts(&dir, &db, ShadowType::Differential)).unwrap();
    let p1 = s.store().points().unwrap().remove(0);
    drop(s);
    let before = digest(&db);

    // Before the first point.
    let e = restore(&req(
        &dir,
        &db,
        Target::Time(Timestamp(p1.consistent_at.0 - 1)),
    ))
    .unwrap_err();
    assert!(matches!(e, ShadowError::BeforeFirstPoint { .. }), "{e}");
    assert!(e.to_string().contains("before the first point"), "{e}");
    // No such point.
    let e = restore(&req(&dir, &db, Target::Point(PointId(9)))).unwrap_err();
    assert!(e.to_string().contains("has no point p9"), "{e}");
    // Another resource.
    let other = t.path().join("other.db");
    write_batch(&other, &jp, 1, 5, 10);
    let other_before = digest(&other);
    let e = restore(&req(&dir, &other, Target::Latest)).unwrap_err();
    assert!(matches!(e, ShadowError::OtherResource { .. }), "{e}");
    assert!(e.to_string().contains("nothing was changed"), "{e}");
    assert_eq!(digest(&other), other_before);
    // Not a shadow directory.
    let e = restore(&req(t.path(), &db, Target::Latest)).unwrap_err();
    assert!(matches!(e, ShadowError::NotAShadow { .. }), "{e}");
    assert_eq!(digest(&db), before);

    // A damaged object: named with its point.
    let store = PointStore::open(&dir).unwrap();
    let obj = store.object_path(&p1.entries[0].objects[1].id);
    let mut bytes = std::fs::read(&obj).unwrap();
    bytes[100] ^= 0xff;
    std::fs::set_permissions(&obj, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&obj, &bytes).unwrap();
    let e = restore(&req(&dir, &db, Target::Latest)).unwrap_err();
    assert!(matches!(e, ShadowError::BadObject { .. }), "{e}");
    assert!(e.to_string().contains("of point p1"), "{e}");
    assert!(
        e.to_string().contains(&p1.entries[0].objects[1].id.hex()),
        "{e}"
    );
    assert_eq!(digest(&db), before);
    assert!(store.verify(true).is_err());
    // A missing object.
    std::fs::remove_file(&obj).unwrap();
    let e = restore(&req(&dir, &db, Target::Latest)).unwrap_err();
    assert!(e.to_string().contains("is missing"), "{e}");
    assert_eq!(digest(&db), before);

    // A damaged manifest.
    let mp = dir.join("points").join("0000000001.json");
    let text = std::fs::read_to_string(&mp).unwrap();
    std::fs::write(
        &mp,
        text.replace("\"on_demand\"", "\"schedule\"")
            .replace("\"base\"", "\"schedule\""),
    )
    .unwrap();
    let e = restore(&req(&dir, &db, Target::Latest)).unwrap_err();
    assert!(matches!(e, ShadowError::DamagedPoint { .. }), "{e}");
    assert!(e.to_string().contains("point p1"), "{e}");
    assert_eq!(digest(&db), before);
    // No temporary left beside the live file.
    let leftovers: Vec<_> = std::fs::read_dir(t.path())
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .contains("bellwether-restore")
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_transactional_shadow_needs_wal_mode_and_a_shadow_dir_keeps_its_resource() {
    let (t, db, _jp, dir) = tmpdirs();
    let c = Connection::open(&db).unwrap();
    c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY); INSERT INTO t VALUES (1);")
        .unwrap();
    drop(c);
    let e = SqliteShadow::start(&opts(&dir, &db, ShadowType::Transactional)).unwrap_err();
    assert!(e.to_string().contains("journal mode is delete"), "{e}");
    assert!(e.to_string().contains(&db.display().to_string()), "{e}");
    // Bad input (the CLI's exit 2), not an unreachable source.
    assert!(e.is_usage(), "{e:?}");
    // A rollback-journal database can have a differential shadow.
    let s = SqliteShadow::start(&opts(&dir, &db, ShadowType::Differential)).unwrap();
    // A second follower of the same shadow is refused while the first runs.
    let e = SqliteShadow::start(&opts(&dir, &db, ShadowType::Differential)).unwrap_err();
    assert!(matches!(e, ShadowError::Busy { .. }), "{e}");
    drop(s);
    // The same directory for another file is refused.
    let other = t.path().join("b.db");
    std::fs::copy(&db, &other).unwrap();
    let e = SqliteShadow::start(&opts(&dir, &other, ShadowType::Differential)).unwrap_err();
    assert!(matches!(e, ShadowError::OtherResource { .. }), "{e}");
    let e = SqliteShadow::start(&opts(&dir, &t.path().join("missing.db"), ShadowType::Full))
        .unwrap_err();
    assert!(
        e.to_string().contains("no such SQLite database file"),
        "{e}"
    );
}

#[test]
fn retention_thins_points_but_never_one_a_restore_holds() {
    let (_t, db, jp, dir) = tmpdirs();
    write_batch(&db, &jp, 1, 50, 2000);
    let mut s = SqliteShadow::start(&opts(&dir, &db, ShadowType::Differential)).unwrap();
    for n in 0..3 {
        write_batch(&db, &jp, 51 + n * 50, 50, 2000);
        if n == 2 {
            // A restarted shadow takes a new base, so the chain of page deltas before it is
            // referenced only by the points that retention may thin (a newer point in the
            // same chain would keep every delta of the chain).
            drop(s);
            s = SqliteShadow::start(&opts(&dir, &db, ShadowType::Differential)).unwrap();
        }
        s.take_point(Reason::Schedule).unwrap();
    }
    let policy = Retention {
        keep_all_for: Dur::ZERO,
        hourly_for: Dur::ZERO,
        daily_for: Dur::ZERO,
    };
    let later = Timestamp::now().plus(Duration::from_secs(3600));
    let lease = s.store().lease(PointId(2)).unwrap();
    let r = s.store().thin(&policy, later).unwrap();
    assert_eq!(r.removed, vec![PointId(1), PointId(3)]);
    assert_eq!(r.leased, vec![PointId(2)]);
    assert!(r.gc.objects_removed > 0, "{r:?}");
    restore(&req(&dir, &db, Target::Point(PointId(2)))).unwrap();
    assert_eq!(prefix_rows(&db), 100);
    drop(lease);
    let r = s.store().thin(&policy, later).unwrap();
    assert_eq!(r.removed, vec![PointId(2)]);
    let e = restore(&req(&dir, &db, Target::Point(PointId(2)))).unwrap_err();
    assert!(e.to_string().contains("retention removed it"), "{e}");
    restore(&req(&dir, &db, Target::Latest)).unwrap();
    assert_eq!(prefix_rows(&db), 200);
    let v = s.store().verify(true).unwrap();
    assert_eq!((v.points, v.thinned), (1, 3));
}

// ----- page deltas (see `pages`) -----

/// A writer connection of this process (a real SQLite; the foreign writer above is for the
/// concurrency tests).
fn local_writer(db: &Path, journal_mode: &str) -> Connection {
    let c = Connection::open(db).unwrap();
    c.query_row(&format!("PRAGMA journal_mode={journal_mode}"), [], |_| {
        Ok(())
    })
    .unwrap();
    c.execute_batch("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, body BLOB)")
        .unwrap();
    c
}

fn insert_rows(c: &Connection, from: u64, to: u64) {
    c.execute_batch("BEGIN").unwrap();
    for i in from..=to {
        c.execute("INSERT INTO t(id, body) VALUES (?1, randomblob(1000))", [i])
            .unwrap();
    }
    c.execute_batch("COMMIT").unwrap();
}

/// Every row of `t` in id order, hashed, and the row count.
fn table_digest(db: &Path) -> (u64, [u8; 32]) {
    use sha2::{Digest, Sha256};
    let c = Connection::open(db).unwrap();
    let mut h = Sha256::new();
    let mut n = 0;
    let mut st = c.prepare("SELECT id, body FROM t ORDER BY id").unwrap();
    let mut rows = st.query([]).unwrap();
    while let Some(r) = rows.next().unwrap() {
        h.update(r.get::<_, i64>(0).unwrap().to_be_bytes());
        h.update(r.get::<_, Vec<u8>>(1).unwrap());
        n += 1;
    }
    (n, h.finalize().into())
}

/// Restores every point in `expect` (point → digest of the table then) over the live file
/// and checks the table and the file's size.
fn restore_each(dir: &Path, db: &Path, expect: &[(Manifest, (u64, [u8; 32]))]) {
    for (m, want) in expect {
        let r = restore(&req(dir, db, Target::Point(m.id()))).unwrap();
        assert_eq!(table_digest(db), *want, "point {}", m.id());
        assert_eq!(std::fs::metadata(db).unwrap().len(), m.entries[0].size);
        assert_eq!(r.bytes, m.entries[0].size);
        integrity_check(db).unwrap();
    }
}

fn xorshift(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

#[test]
fn random_scattered_changes_store_only_the_changed_pages() {
    for ty in [ShadowType::Differential, ShadowType::Transactional] {
        let (_t, db, _jp, dir) = tmpdirs();
        let c = local_writer(&db, "wal");
        insert_rows(&c, 1, 4000);
        let mut s = SqliteShadow::start(&opts(&dir, &db, ty)).unwrap();
        // Every point an image (a transactional shadow takes them from its log otherwise).
        s.set_log_point_limit(0);
        let base = s.store().points().unwrap().pop().unwrap();
        assert_eq!(base.entries.len(), 1, "the first point is a base");
        let mut expect = vec![(base.clone(), table_digest(&db))];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for round in 0..6 {
            c.execute_batch("BEGIN").unwrap();
            for _ in 0..40 {
                let id = xorshift(&mut seed) % 4000 + 1;
                c.execute("UPDATE t SET body = randomblob(1000) WHERE id = ?1", [id])
                    .unwrap();
            }
            c.execute_batch("COMMIT").unwrap();
            catch_up(&mut s);
            let m = s.take_point(Reason::OnDemand).unwrap();
            let Position::Sqlite { page_size, .. } = m.position else {
                panic!("a SQLite position");
            };
            // 40 rows touch at most 40 leaf pages, plus page 1 and interior pages.
            assert!(
                m.new_bytes <= 60 * u64::from(page_size) + 1024,
                "{ty} round {round}: a point stores the changed pages only, not {} bytes",
                m.new_bytes
            );
            assert_eq!(m.entries.len(), 2, "{ty} round {round}: a delta point");
            assert_eq!(m.entries[1].objects.len(), round + 1, "one delta per point");
            assert_eq!(
                m.entries[0].objects, base.entries[0].objects,
                "the base is shared"
            );
            expect.push((m, table_digest(&db)));
        }
        drop(s);
        s_verify_deep(&dir);
        drop(c);
        corrupt(&db);
        restore_each(&dir, &db, &expect);
    }
}

#[test]
fn frames_a_checkpoint_copied_are_not_laid_again_and_every_point_restores_exactly() {
    for ty in [
        ShadowType::Full,
        ShadowType::Differential,
        ShadowType::Transactional,
    ] {
        let (_t, db, _jp, dir) = tmpdirs();
        let c = local_writer(&db, "wal");
        // No automatic checkpoint: this test says when one runs.
        c.execute_batch("PRAGMA wal_autocheckpoint=0").unwrap();
        insert_rows(&c, 1, 2000);
        let mut s = SqliteShadow::start(&opts(&dir, &db, ty)).unwrap();
        let mut expect = vec![(
            s.store().points().unwrap().pop().unwrap(),
            table_digest(&db),
        )];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..4 {
            let update = |seed: &mut u64, n: usize| {
                c.execute_batch("BEGIN").unwrap();
                for _ in 0..n {
                    let id = xorshift(seed) % 2000 + 1;
                    c.execute("UPDATE t SET body = randomblob(1000) WHERE id = ?1", [id])
                        .unwrap();
                }
                c.execute_batch("COMMIT").unwrap();
            };
            update(&mut seed, 60);
            if ty == ShadowType::Transactional {
                // The follower's read transaction holds the checkpoint back: let it see
                // the commits and move on first, as it does between polls.
                catch_up(&mut s);
            }
            // A checkpoint copies those frames into the file; later frames change some of
            // the same pages again, so both kinds of frame meet in one point.
            let (busy, log, done): (i64, i64, i64) = c
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .unwrap();
            assert_eq!(busy, 0, "{ty} round {round}");
            let shm = File::open(shm_path(&db)).unwrap();
            let h = wal::read_header(&File::open(wal_path(&db)).unwrap())
                .unwrap()
                .unwrap();
            if ty != ShadowType::Transactional {
                assert!(
                    done > 0 && done == log,
                    "{ty}: checkpointed {done} of {log}"
                );
                assert_eq!(
                    wal::backfilled(&shm, h.salt),
                    done as u32,
                    "{ty}: the wal-index's nBackfill is the checkpoint's count"
                );
            }
            // Another generation's salts read as nothing copied.
            assert_eq!(wal::backfilled(&shm, [h.salt[0] ^ 1, h.salt[1]]), 0);
            update(&mut seed, 30);
            catch_up(&mut s);
            let m = s.take_point(Reason::OnDemand).unwrap();
            expect.push((m, table_digest(&db)));
        }
        drop(s);
        drop(c);
        corrupt(&db);
        restore_each(&dir, &db, &expect);
    }
}

fn s_verify_deep(dir: &Path) {
    let r = PointStore::open(dir).unwrap().verify(true).unwrap();
    assert!(r.objects > 0);
}

#[test]
fn a_page_size_change_by_vacuum_takes_a_new_base() {
    let (_t, db, _jp, dir) = tmpdirs();
    let c = local_writer(&db, "delete");
    insert_rows(&c, 1, 500);
    let mut s = SqliteShadow::start(&opts(&dir, &db, ShadowType::Differential)).unwrap();
    let p1 = s.store().points().unwrap().pop().unwrap();
    let mut expect = vec![(p1, table_digest(&db))];
    c.execute("UPDATE t SET body = randomblob(1000) WHERE id = 7", [])
        .unwrap();
    let p2 = s.take_point(Reason::OnDemand).unwrap();
    assert_eq!(p2.entries.len(), 2, "a delta point");
    expect.push((p2, table_digest(&db)));
    c.execute_batch("PRAGMA page_size=8192; VACUUM").unwrap();
    let p3 = s.take_point(Reason::OnDemand).unwrap();
    assert!(matches!(
        p3.position,
        Position::Sqlite {
            page_size: 8192,
            ..
        }
    ));
    assert_eq!(p3.entries.len(), 1, "a new page size needs a new base");
    expect.push((p3, table_digest(&db)));
    c.execute("UPDATE t SET body = randomblob(1000) WHERE id = 300", [])
        .unwrap();
    let p4 = s.take_point(Reason::OnDemand).unwrap();
    assert_eq!(
        p4.entries.len(),
        2,
        "deltas of 8 KiB pages after the new base"
    );
    assert!(p4.new_bytes < 8 * 8192, "{}", p4.new_bytes);
    expect.push((p4, table_digest(&db)));
    drop(s);
    drop(c);
    restore_each(&dir, &db, &expect);
}

#[test]
fn a_file_that_shrinks_and_grows_is_restored_to_each_size() {
    let (_t, db, _jp, dir) = tmpdirs();
    {
        let c = Connection::open(&db).unwrap();
        // Set before the first table: every commit then truncates the freed pages.
        c.execute_batch("PRAGMA auto_vacuum=FULL").unwrap();
    }
    let c = local_writer(&db, "wal");
    insert_rows(&c, 1, 1500);
    let mut s = SqliteShadow::start(&opts(&dir, &db, ShadowType::Differential)).unwrap();
    let p1 = s.store().points().unwrap().pop().unwrap();
    let mut expect = vec![(p1.clone(), table_digest(&db))];
    c.execute("DELETE FROM t WHERE id > 1200", []).unwrap();
    let p2 = s.take_point(Reason::OnDemand).unwrap();
    assert!(
        p2.entries[0].size < p1.entries[0].size,
        "the file shrank: {} then {}",
        p1.entries[0].size,
        p2.entries[0].size
    );
    assert_eq!(p2.entries.len(), 2, "a delta point");
    expect.push((p2.clone(), table_digest(&db)));
    insert_rows(&c, 1201, 2500);
    let p3 = s.take_point(Reason::OnDemand).unwrap();
    assert!(p3.entries[0].size > p1.entries[0].size, "the file grew");
    assert_eq!(p3.entries.len(), 2, "a delta point");
    expect.push((p3, table_digest(&db)));
    drop(s);
    drop(c);
    restore_each(&dir, &db, &expect);
}

#[test]
fn a_damaged_page_delta_fails_the_restore_and_leaves_the_live_file() {
    let (_t, db, _jp, dir) = tmpdirs();
    let c = local_writer(&db, "wal");
    insert_rows(&c, 1, 300);
    let mut s = SqliteShadow::start(&opts(&dir, &db, ShadowType::Differential)).unwrap();
    c.execute("UPDATE t SET body = randomblob(1000) WHERE id = 5", [])
        .unwrap();
    let p2 = s.take_point(Reason::OnDemand).unwrap();
    drop(s);
    drop(c);
    let live = table_digest(&db);
    let delta = p2.entries[1].objects[0];
    let path = PointStore::open(&dir).unwrap().object_path(&delta.id);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&path, &bytes).unwrap();
    let e = restore(&req(&dir, &db, Target::Point(p2.id()))).unwrap_err();
    assert!(
        matches!(e, ShadowError::BadObject { object, .. } if object == delta.id),
        "{e}"
    );
    assert_eq!(table_digest(&db), live, "the live file is untouched");
}

#[test]
fn page_delta_decoding_refuses_bad_objects() {
    assert!(pages::decode(b"nonsense").unwrap_err().contains("magic"));
    let mut b = b"BWPGDLT1".to_vec();
    b.extend_from_slice(&4096u32.to_be_bytes());
    b.extend_from_slice(&2u32.to_be_bytes());
    b.extend_from_slice(&1u32.to_be_bytes());
    b.extend_from_slice(&3u32.to_be_bytes());
    b.extend_from_slice(&[0u8; 4096]);
    assert!(pages::decode(&b)
        .unwrap_err()
        .contains("page 3 of a 2-page"));
    b[20..24].copy_from_slice(&2u32.to_be_bytes());
    let d = pages::decode(&b).unwrap();
    assert_eq!((d.page_size, d.db_pages, d.pages.len()), (4096, 2, 1));
    b.pop();
    assert!(pages::decode(&b).unwrap_err().contains("expected"));
}

// ----- patched pages (see `pages` and `crate::delta`) -----

/// A foreign writer updating rows in place: each transaction rewrites three random rows with
/// fresh bytes, their SHA-256 and its number, then journals `end NUMBER ROW ROW ROW`.
const UPDATER: &str = r#"
import sqlite3, sys, os, hashlib, random
db, journal, rows, count, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
c = sqlite3.connect(db, isolation_level=None, timeout=30)
c.execute("PRAGMA journal_mode=WAL")
c.execute("PRAGMA synchronous=NORMAL")
rnd = random.Random(seed)
j = open(journal, "a", buffering=1)
for i in range(1, count + 1):
    c.execute("BEGIN IMMEDIATE")
    ids = [rnd.randint(1, rows) for _ in range(3)]
    for r in ids:
        b = os.urandom(1000)
        c.execute("UPDATE t SET body = ?, h = ?, ver = ? WHERE id = ?", (b, hashlib.sha256(b).digest(), i, r))
    c.execute("COMMIT")
    j.write("end %d %s\n" % (i, " ".join(map(str, ids))))
print("done", flush=True)
"#;

/// A table of `rows` rows of 1000 pseudo-random bytes, each with its SHA-256 and version 0.
fn hashed_rows(db: &Path, rows: u64) {
    use sha2::{Digest, Sha256};
    let c = Connection::open(db).unwrap();
    c.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
        .unwrap();
    c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, body BLOB, h BLOB, ver INTEGER)")
        .unwrap();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    c.execute_batch("BEGIN").unwrap();
    for i in 1..=rows {
        let body: Vec<u8> = (0..1000).map(|_| xorshift(&mut seed) as u8).collect();
        let h = Sha256::digest(&body).to_vec();
        c.execute(
            "INSERT INTO t(id, body, h, ver) VALUES (?1, ?2, ?3, 0)",
            rusqlite::params![i, body, h],
        )
        .unwrap();
    }
    c.execute_batch("COMMIT").unwrap();
}

/// Checks a restored database of the updater: whole (`integrity_check`), every body matches
/// its hash, and the transactions present are a prefix 1..=k (each row of a transaction up to
/// k has that version or a later one, none is past k). Returns k.
fn check_updates(db: &Path, rows_of: &BTreeMap<u64, Vec<u64>>) -> u64 {
    use sha2::{Digest, Sha256};
    integrity_check(db).unwrap();
    let c = Connection::open(db).unwrap();
    let mut ver = BTreeMap::new();
    let mut st = c.prepare("SELECT id, body, h, ver FROM t").unwrap();
    let mut rows = st.query([]).unwrap();
    while let Some(r) = rows.next().unwrap() {
        let id: u64 = r.get(0).unwrap();
        let body: Vec<u8> = r.get(1).unwrap();
        let h: Vec<u8> = r.get(2).unwrap();
        assert_eq!(
            Sha256::digest(&body).to_vec(),
            h,
            "row {id}'s body is exact"
        );
        ver.insert(id, r.get::<_, u64>(3).unwrap());
    }
    let k = ver.values().copied().max().unwrap_or(0);
    for (i, ids) in rows_of.iter().take_while(|(i, _)| **i <= k) {
        for id in ids {
            assert!(
                ver[id] >= *i,
                "transaction {i} (row {id}) is in a point of {k}"
            );
        }
    }
    k
}

fn updater_journal(path: &Path) -> BTreeMap<u64, Vec<u64>> {
    let mut out = BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap().lines() {
        let f: Vec<u64> = line
            .split(' ')
            .skip(1)
            .map(|x| x.parse().unwrap())
            .collect();
        out.insert(f[0], f[1..].to_vec());
    }
    out
}

/// Counts the pages stored whole and patched in a point's page deltas.
fn page_kinds(store: &PointStore, m: &Manifest) -> Vec<Vec<(u32, bool)>> {
    m.entries
        .get(1)
        .map(|e| {
            e.objects
                .iter()
                .map(|r| {
                    let b = store.read_object(m.id(), r).unwrap();
                    pages::decode(&b)
                        .unwrap()
                        .pages
                        .iter()
                        .map(|(p, body)| (*p, matches!(body, pages::PageBody::Patch { .. })))
                        .collect()
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn patched_pages_restore_exactly_while_a_foreign_writer_updates_rows() {
    let (t, db, _jp, dir) = tmpdirs();
    let journal = t.path().join("updates");
    hashed_rows(&db, 3000);
    let mut s = SqliteShadow::start(&opts(&dir, &db, ShadowType::Differential)).unwrap();
    let mut child = python()
        .arg("-c")
        .arg(UPDATER)
        .args([&db, &journal])
        .args(["3000", "1500", "7"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 starts");
    let mut points = Vec::new();
    while child.try_wait().unwrap().is_none() && points.len() < 40 {
        points.push(s.take_point(Reason::OnDemand).unwrap());
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "updater failed: {out:?}");
    let last = s.take_point(Reason::OnDemand).unwrap();
    let live = table_digest(&db);
    points.push(last.clone());
    drop(s);
    let rows_of = updater_journal(&journal);
    assert_eq!(rows_of.len(), 1500);

    let store = PointStore::open(&dir).unwrap();
    // Each point's own delta (a point may also be a new base: a writer this fast changes
    // more than CHAIN_PAGES times the file's pages within a few points).
    let (mut whole, mut patched) = (0, 0);
    for m in &points {
        for obj in page_kinds(&store, m).last().into_iter().flatten() {
            if obj.1 {
                patched += 1;
            } else {
                whole += 1;
            }
        }
    }
    assert!(
        patched > whole,
        "rows rewritten in place are stored as patches: {patched} patched, {whole} whole"
    );
    s_verify_deep(&dir);

    let mut prev = 0;
    for m in &points {
        restore(&req(&dir, &db, Target::Point(m.id()))).unwrap();
        let k = check_updates(&db, &rows_of);
        assert!(
            k >= prev,
            "point {} holds {k} transactions, an earlier one {prev}",
            m.id()
        );
        prev = k;
    }
    assert_eq!(prev, 1500, "the last point holds every transaction");
    assert_eq!(table_digest(&db), live, "the last point is the live table");
}

#[test]
fn a_page_is_stored_whole_again_after_page_chain_patches() {
    let (_t, db, _jp, dir) = tmpdirs();
    let c = local_writer(&db, "wal");
    insert_rows(&c, 1, 200);
    let mut s = SqliteShadow::start(&opts(&dir, &db, ShadowType::Differential)).unwrap();
    let mut expect = Vec::new();
    for round in 0..(2 * pages::PAGE_CHAIN + 3) {
        c.execute(
            "UPDATE t SET body = randomblob(1000) WHERE id = ?1",
            [100 + round as i64 % 2],
        )
        .unwrap();
        let m = s.take_point(Reason::OnDemand).unwrap();
        expect.push((m, table_digest(&db)));
    }
    drop(s);
    let store = PointStore::open(&dir).unwrap();
    // Per page, the kinds in point order: never more than PAGE_CHAIN patches in a row.
    let mut runs: BTreeMap<u32, usize> = BTreeMap::new();
    let mut longest = 0;
    let mut wholes_after_a_full_run = 0;
    for (m, _) in &expect {
        for (pgno, patched) in page_kinds(&store, m)
            .into_iter()
            .last()
            .into_iter()
            .flatten()
        {
            let run = runs.entry(pgno).or_default();
            if patched {
                *run += 1;
                assert!(
                    *run <= pages::PAGE_CHAIN,
                    "page {pgno}: {run} patches in a row"
                );
                longest = longest.max(*run);
            } else {
                if *run == pages::PAGE_CHAIN {
                    wholes_after_a_full_run += 1;
                }
                *run = 0;
            }
        }
    }
    assert_eq!(longest, pages::PAGE_CHAIN, "pages reach the bound");
    assert!(wholes_after_a_full_run > 0, "then are stored whole");
    drop(c);
    corrupt(&db);
    restore_each(&dir, &db, &expect);
}

#[test]
fn the_chain_is_rebased_when_it_would_write_chain_pages_times_the_file() {
    let ps = 4096;
    let file = 100 * u64::from(ps);
    // Bytes alone: the old rule.
    assert!(!pages::rebase_due(3, 1000, 1000, (10, 10), file, ps));
    assert!(pages::rebase_due(3, file - 10, 11, (10, 10), file, ps));
    // Pages written on a restore: at most CHAIN_PAGES × the file's pages.
    let limit = pages::CHAIN_PAGES * 100;
    assert!(!pages::rebase_due(
        3,
        1000,
        1000,
        (limit - 10, 10),
        file,
        ps
    ));
    assert!(pages::rebase_due(3, 1000, 1000, (limit - 10, 11), file, ps));
    // Points.
    assert!(pages::rebase_due(pages::MAX_CHAIN, 0, 0, (0, 0), file, ps));
}

#[test]
fn small_patches_to_every_page_rebase_by_pages_written_not_by_bytes() {
    let (_t, db, _jp, dir) = tmpdirs();
    let c = local_writer(&db, "wal");
    c.execute_batch(
        "CREATE TABLE u(id INTEGER PRIMARY KEY, n INTEGER, pad BLOB);
         WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < 400)
         INSERT INTO u SELECT i, 1000000, randomblob(1000) FROM k;",
    )
    .unwrap();
    let mut s = SqliteShadow::start(&opts(&dir, &db, ShadowType::Differential)).unwrap();
    let base = s.store().points().unwrap().pop().unwrap();
    let size = base.entries[0].size;
    let sum = |db: &Path| -> i64 {
        Connection::open(db)
            .unwrap()
            .query_row("SELECT sum(n) FROM u", [], |r| r.get(0))
            .unwrap()
    };
    let mut expect = vec![(base, sum(&db))];
    let mut rebased = false;
    for _ in 0..(2 * pages::CHAIN_PAGES + 2) {
        // A counter of the same width in every row: every leaf page changes by a few bytes.
        c.execute("UPDATE u SET n = n + 1", []).unwrap();
        let m = s.take_point(Reason::OnDemand).unwrap();
        if let Some(d) = m.entries.get(1) {
            let chain_bytes: u64 = d.objects.iter().map(|r| r.len).sum();
            assert!(
                chain_bytes * 10 < size,
                "patches of a few bytes a page: {chain_bytes} bytes for a {size}-byte file"
            );
        } else {
            rebased = true;
        }
        expect.push((m, sum(&db)));
    }
    assert!(
        rebased,
        "a chain writing every page at every point is rebased within {} points",
        2 * pages::CHAIN_PAGES + 2
    );
    drop(s);
    drop(c);
    for (m, want) in &expect {
        restore(&req(&dir, &db, Target::Point(m.id()))).unwrap();
        integrity_check(&db).unwrap();
        assert_eq!(sum(&db), *want, "point {}", m.id());
    }
}

#[test]
fn a_patch_that_does_not_rebuild_its_page_is_refused_and_bad_v2_objects_too() {
    use sha2::{Digest, Sha256};
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("f");
    let old = vec![3u8; 1024];
    std::fs::write(&path, &old).unwrap();
    let mut new_page = old[..512].to_vec();
    new_page[100..140].fill(9);
    let patch = crate::delta::diff(&old[..512], &new_page);
    let obj = |check: &[u8], kind: u8, len: u32, body: &[u8]| {
        let mut b = b"BWPGDLT2".to_vec();
        for v in [512u32, 2, 1, 1] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        b.push(kind);
        b.extend_from_slice(&len.to_be_bytes());
        b.extend_from_slice(check);
        b.extend_from_slice(body);
        b
    };
    let len = 8 + patch.len() as u32;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    // A check that is not the new page's.
    let bad = obj(&[0u8; 8], 1, len, &patch);
    let d = pages::decode(&bad).unwrap();
    match pages::apply(&f, &d) {
        Err(pages::ApplyError::Bad(why)) => assert!(why.contains("page 1"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(std::fs::read(&path).unwrap(), old, "nothing written");
    // The right one.
    let good = obj(&Sha256::digest(&new_page)[..8], 1, len, &patch);
    pages::apply(&f, &pages::decode(&good).unwrap()).unwrap();
    assert_eq!(std::fs::read(&path).unwrap()[..512], new_page[..]);
    // Malformed entries.
    assert!(pages::decode(&obj(&[0u8; 8], 2, len, &patch))
        .unwrap_err()
        .contains("kind 2"));
    assert!(pages::decode(&obj(&[0u8; 8], 1, 600, &patch))
        .unwrap_err()
        .contains("600 bytes"));
    assert!(pages::decode(&obj(&[0u8; 8], 1, len + 1, &patch))
        .unwrap_err()
        .contains("more expected"));
    let mut long = good.clone();
    long.push(0);
    assert!(pages::decode(&long).unwrap_err().contains("expected"));
    let mut huge = good.clone();
    huge[16..20].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(pages::decode(&huge).unwrap_err().contains("cannot list"));
}

#[test]
fn points_from_the_commit_log_restore_exactly_and_keep_what_they_are_rebuilt_from() {
    let (_t, db, _jp, dir) = tmpdirs();
    let c = local_writer(&db, "wal");
    insert_rows(&c, 1, 2000);
    let mut s = SqliteShadow::start(&opts(&dir, &db, ShadowType::Transactional)).unwrap();
    let base = s.store().points().unwrap().pop().unwrap();
    assert!(base.from_log.is_none(), "the base is an image");
    let mut expect = vec![(base.clone(), table_digest(&db))];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut churn = |c: &Connection, round: u64| {
        c.execute_batch("BEGIN").unwrap();
        for _ in 0..30 {
            let id = xorshift(&mut seed) % 2000 + 1;
            c.execute("UPDATE t SET body = randomblob(1000) WHERE id = ?1", [id])
                .unwrap();
        }
        // The file grows at some rounds and shrinks at others.
        if round.is_multiple_of(2) {
            insert_rows_in_tx(c, 10_000 + round * 100, 10_000 + round * 100 + 49);
        } else {
            c.execute("DELETE FROM t WHERE id > 10000", []).unwrap();
        }
        c.execute_batch("COMMIT").unwrap();
    };
    for round in 0..4 {
        churn(&c, round);
        catch_up(&mut s);
        let m = s.take_point(Reason::OnDemand).unwrap();
        let from = m.from_log.clone().expect("a point from the commit log");
        assert_eq!(from.image, base.seq, "round {round}");
        assert!(from.records >= 1 && from.log_bytes > 0, "{from:?}");
        assert!(m.entries[0].objects.is_empty(), "no image of its own");
        expect.push((m, table_digest(&db)));
    }
    // Past the limit the next point is an image, and the points after it build on it.
    s.set_log_point_limit(1);
    churn(&c, 4);
    catch_up(&mut s);
    let image = s.take_point(Reason::Schedule).unwrap();
    assert!(image.from_log.is_none(), "past the limit: an image");
    expect.push((image.clone(), table_digest(&db)));
    s.set_log_point_limit(u64::MAX);
    for round in 5..7 {
        churn(&c, round);
        catch_up(&mut s);
        let m = s.take_point(Reason::OnDemand).unwrap();
        assert_eq!(m.from_log.as_ref().map(|f| f.image), Some(image.seq));
        expect.push((m, table_digest(&db)));
    }
    // Commits after the last point, restorable by time.
    churn(&c, 7);
    catch_up(&mut s);
    let after = (Timestamp::now(), table_digest(&db));
    s_verify_deep(&dir);
    restore_each(&dir, &db, &expect);
    let r = restore(&req(&dir, &db, Target::Time(after.0))).unwrap();
    assert_eq!(
        table_digest(&db),
        after.1,
        "the commits after the last point"
    );
    assert!(r.commits_replayed >= 1, "{r:?}");

    // Retention keeps what a kept point is rebuilt from, and nothing older.
    let policy = Retention {
        keep_all_for: Dur::ZERO,
        hourly_for: Dur::ZERO,
        daily_for: Dur::ZERO,
    };
    let last = expect.last().unwrap().0.clone();
    let later = Timestamp::now().plus(Duration::from_secs(3600));
    let t = s.store().thin(&policy, later).unwrap();
    assert_eq!(
        t.removed,
        (1..image.seq).map(PointId).collect::<Vec<_>>(),
        "{t:?}"
    );
    assert_eq!(
        t.rebuilt_from,
        (image.seq..last.seq).map(PointId).collect::<Vec<_>>()
    );
    s.store().verify(true).unwrap();
    restore(&req(&dir, &db, Target::Point(last.id()))).unwrap();
    assert_eq!(table_digest(&db), expect.last().unwrap().1);

    // The point before it missing: named, and the live file left alone.
    drop(s);
    let before = digest(&db);
    let prev_manifest = dir
        .join("points")
        .join(format!("{:010}.json", last.seq - 1));
    let aside = dir.join("aside.json");
    std::fs::rename(&prev_manifest, &aside).unwrap();
    let e = restore(&req(&dir, &db, Target::Point(last.id()))).unwrap_err();
    assert!(
        e.to_string()
            .contains(&format!("p{} is gone", last.seq - 1)),
        "{e}"
    );
    assert_eq!(digest(&db), before, "the live file is untouched");
    std::fs::rename(&aside, &prev_manifest).unwrap();
    // A segment a point is rebuilt from, cut short: named, and the live file left alone.
    let seg = dir.join("log").join(format!("{:010}.log", last.seq - 1));
    let len = std::fs::metadata(&seg).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    let before = digest(&db);
    let e = restore(&req(&dir, &db, Target::Point(last.id()))).unwrap_err();
    assert!(
        e.to_string()
            .contains(&format!("logged after p{}", last.seq - 1)),
        "{e}"
    );
    assert_eq!(digest(&db), before, "the live file is untouched");
    let e = PointStore::open(&dir).unwrap().verify(false).unwrap_err();
    assert!(
        e.to_string().contains(&format!("{:010}.log", last.seq - 1)),
        "{e}"
    );
}

fn insert_rows_in_tx(c: &Connection, from: u64, to: u64) {
    for i in from..=to {
        c.execute("INSERT INTO t(id, body) VALUES (?1, randomblob(1000))", [i])
            .unwrap();
    }
}

#[test]
fn the_run_loop_refreshes_the_image_by_itself_once_the_log_passes_the_limit() {
    let (_t, db, _jp, dir) = tmpdirs();
    let c = local_writer(&db, "wal");
    insert_rows(&c, 1, 200);
    let mut s = SqliteShadow::start(&opts(&dir, &db, ShadowType::Transactional)).unwrap();
    s.set_log_point_limit(64 * 1024);
    let ctl = Arc::new(Control::new());
    let (tx, rx) = mpsc::channel();
    let runner = {
        let ctl = ctl.clone();
        std::thread::spawn(move || {
            run(&mut s, None, &ctl, &mut |e| {
                let _ = tx.send(e.clone());
            })
        })
    };
    let next_point = || loop {
        if let RunEvent::Point(m) = rx.recv().unwrap() {
            break m;
        }
    };
    // Within the limit: the point asked for comes from the log.
    insert_rows(&c, 201, 220);
    ctl.request_point(Reason::OnDemand);
    let p2 = next_point();
    assert_eq!(p2.from_log.as_ref().map(|f| f.image), Some(1), "{p2:?}");
    // 200 rows of 1 KB pass 64 KiB of log: the loop takes an image with nobody asking.
    insert_rows(&c, 221, 420);
    let refreshed = loop {
        match rx.recv().unwrap() {
            RunEvent::Image(m) => break m,
            RunEvent::Point(m) => panic!("a point nobody asked for: {m:?}"),
            _ => {}
        }
    };
    assert_eq!(refreshed.reason, Reason::Base);
    assert!(refreshed.from_log.is_none(), "{refreshed:?}");
    let want_refreshed = table_digest(&db);
    insert_rows(&c, 421, 430);
    ctl.request_point(Reason::OnDemand);
    let p4 = next_point();
    assert_eq!(
        p4.from_log.as_ref().map(|f| f.image),
        Some(refreshed.seq),
        "{p4:?}"
    );
    let want_p4 = table_digest(&db);
    ctl.stop();
    runner.join().unwrap().unwrap();
    drop(c);
    restore(&req(&dir, &db, Target::Point(refreshed.id()))).unwrap();
    assert_eq!(table_digest(&db), want_refreshed);
    restore(&req(&dir, &db, Target::Point(p4.id()))).unwrap();
    assert_eq!(table_digest(&db), want_p4);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Folding commits (each page once, in file order) leaves exactly the file replaying them
    /// one by one leaves, through shrinks and growths.
    #[test]
    fn folded_commits_leave_what_replaying_them_leaves(
        image_pages in 1u32..24,
        commits in proptest::collection::vec(
            (1u32..24, proptest::collection::vec((1u32..24, proptest::prelude::any::<u8>()), 0..8)),
            1..12,
        ),
    ) {
        const PS: u32 = 512;
        let t = tempfile::tempdir().unwrap();
        let image: Vec<u8> = (0..image_pages * PS).map(|i| (i % 251) as u8).collect();
        let seq = t.path().join("seq");
        let fold = t.path().join("fold");
        std::fs::write(&seq, &image).unwrap();
        std::fs::write(&fold, &image).unwrap();
        let commits: Vec<wal::Commit> = commits
            .into_iter()
            .map(|(db_pages, pages)| wal::Commit {
                db_pages,
                pages: pages
                    .into_iter()
                    .filter(|(pgno, _)| *pgno <= db_pages)
                    .map(|(pgno, b)| (pgno, vec![b; PS as usize]))
                    .collect(),
            })
            .collect();
        // One by one, as a restore did before folding.
        let f = OpenOptions::new().write(true).open(&seq).unwrap();
        for c in &commits {
            for (pgno, page) in &c.pages {
                f.write_all_at(page, u64::from(pgno - 1) * u64::from(PS)).unwrap();
            }
            f.set_len(u64::from(c.db_pages) * u64::from(PS)).unwrap();
        }
        let mut folded = Folded::default();
        for c in commits.clone() {
            folded.add((PS, c));
        }
        let f = OpenOptions::new().write(true).open(&fold).unwrap();
        let size = folded.write(&f, u64::from(image_pages * PS)).unwrap();
        proptest::prop_assert_eq!(size, u64::from(commits.last().unwrap().db_pages * PS));
        proptest::prop_assert_eq!(std::fs::read(&fold).unwrap(), std::fs::read(&seq).unwrap());
    }
}
