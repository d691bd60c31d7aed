//! PostgreSQL shadows on real clusters (initdb/pg_ctl from /usr/lib/postgresql/*/bin, as the
//! `postgres` user when root): a transactional shadow under a write workload restored to a
//! point (every commit acknowledged before the point back, none issued after it), a crash of
//! the primary restored to the end of the shadow (no acknowledged commit lost), and bad input
//! (a time before the first point, another cluster's data directory, a missing WAL segment,
//! a role that may not register the synchronous standby): clear errors, live data untouched.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use bellwether_pg::testing::{TestCluster, TestClusterOptions};
use bellwether_shadow::pg::{restore_with, PgOptions, PgShadow, RestoreMode, SyncSetup};
use bellwether_shadow::point::{PointStore, Reason, Retention, Shadow, ShadowOptions, Source};
use bellwether_shadow::{RestoreRequest, ShadowError, ShadowType, Target, Timestamp};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn sql(url: &str, text: &str) -> Vec<tokio_postgres::Row> {
    rt().block_on(async {
        let c = bellwether_pg::connect(url).await.expect("connect");
        c.client
            .query(text, &[])
            .await
            .unwrap_or_else(|e| panic!("{text}: {e:?}"))
    })
}

fn exec(url: &str, text: &str) {
    rt().block_on(async {
        let c = bellwether_pg::connect(url).await.expect("connect");
        c.client
            .batch_execute(text)
            .await
            .unwrap_or_else(|e| panic!("{text}: {e:?}"))
    })
}

fn ids(url: &str) -> Vec<i64> {
    sql(url, "SELECT id FROM public.t ORDER BY id")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn options(dir: &Path, url: &str, t: ShadowType) -> (ShadowOptions, PgOptions) {
    (
        ShadowOptions {
            dir: dir.to_path_buf(),
            source: Source::Url(url.to_string()),
            shadow_type: t,
            points_every: None,
            retention: Retention::default(),
            poll: None,
            clones: bellwether_shadow::point::Clones::Auto,
        },
        PgOptions::new(url, t),
    )
}

/// A client inserting ids 1, 2, … one transaction each, recording which were acknowledged
/// and which it had begun to issue.
struct Writer {
    stop: Arc<AtomicBool>,
    /// The next id to be issued (every id below it was issued).
    next: Arc<AtomicU64>,
    /// The acknowledged ids, and a signal for each new one (or the writer's end).
    acked: Arc<(Mutex<Acked>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct Acked {
    ids: Vec<i64>,
    done: bool,
}

impl Writer {
    fn start(url: &str) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicU64::new(1));
        let acked = Arc::new((Mutex::new(Acked::default()), Condvar::new()));
        let (s, n, a, url) = (stop.clone(), next.clone(), acked.clone(), url.to_string());
        let thread = std::thread::spawn(move || {
            rt().block_on(async move {
                let c = bellwether_pg::connect(&url).await.expect("writer connects");
                while !s.load(Ordering::SeqCst) {
                    let id = n.fetch_add(1, Ordering::SeqCst) as i64;
                    match c
                        .client
                        .execute("INSERT INTO public.t VALUES ($1)", &[&id])
                        .await
                    {
                        Ok(_) => a.0.lock().unwrap().ids.push(id),
                        // The primary went away (the crash test): stop writing.
                        Err(_) => break,
                    }
                    a.1.notify_all();
                }
                a.0.lock().unwrap().done = true;
                a.1.notify_all();
            })
        });
        Writer {
            stop,
            next,
            acked,
            thread: Some(thread),
        }
    }

    fn acked(&self) -> Vec<i64> {
        self.acked.0.lock().unwrap().ids.clone()
    }

    /// Waits until at least `n` more commits were acknowledged (the workload's own pace), or
    /// the writer ended.
    fn wait_for(&self, n: usize) {
        let (lock, cv) = &*self.acked;
        let mut g = lock.lock().unwrap();
        let want = g.ids.len() + n;
        while g.ids.len() < want && !g.done {
            g = cv.wait(g).unwrap();
        }
    }

    fn stop(mut self) -> Vec<i64> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("writer thread");
        }
        self.acked()
    }
}

/// The restored ids hold every id acknowledged before the point and none issued after it.
fn assert_exactly_before(restored: &[i64], acked_before: &[i64], issued_after: i64) {
    let missing: Vec<_> = acked_before
        .iter()
        .filter(|i| !restored.contains(i))
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged before the point but not restored: {missing:?}"
    );
    let extra: Vec<_> = restored.iter().filter(|i| **i >= issued_after).collect();
    assert!(
        extra.is_empty(),
        "issued after the point but restored: {extra:?}"
    );
}

/// `pg_ctl ACTION -D DIR` as the server's user (the restored cluster, which the test
/// cluster's own handle no longer stops after a crash).
fn pg_ctl(cluster: &TestCluster, args: &[&str]) -> std::process::Output {
    bellwether_pg::testing::run_as_pg_user(&cluster.bindir.join("pg_ctl"), args)
        .expect("pg_ctl runs")
}

/// A cluster of its own with an empty table `public.t (id, pad)`, and its URL.
fn cluster_with_t() -> (TestCluster, String) {
    let cluster = TestCluster::start(TestClusterOptions::default());
    let url = cluster.url();
    exec(
        &url,
        "CREATE TABLE public.t (id bigint PRIMARY KEY, pad text)",
    );
    (cluster, url)
}

fn shadow_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("bw-pg-shadow-")
        .tempdir()
        .expect("tempdir")
}

#[test]
fn transactional_shadow_restores_to_a_point_with_every_commit_before_it_and_none_after() {
    let cluster = TestCluster::start(TestClusterOptions::default());
    let url = cluster.url();
    exec(&url, "CREATE TABLE public.t (id bigint PRIMARY KEY)");
    let sd = shadow_dir();
    let (opts, pg) = options(sd.path(), &url, ShadowType::Transactional);
    let mut shadow = PgShadow::start(&opts, &pg).expect("the shadow starts");
    let name = shadow.info().name.clone();
    // The primary now waits for the shadow on every commit.
    let rows = sql(&url, "SELECT current_setting('synchronous_standby_names')");
    assert_eq!(rows[0].get::<_, String>(0), name);
    let rows = sql(
        &url,
        &format!("SELECT sync_state FROM pg_stat_replication WHERE application_name = '{name}'"),
    );
    assert_eq!(rows[0].get::<_, String>(0), "sync");

    let writer = Writer::start(&url);
    writer.wait_for(200);
    let acked_before: Vec<i64> = writer.acked();
    let point = shadow.take_point(Reason::OnDemand).expect("a point");
    let issued_after = writer.next.load(Ordering::SeqCst) as i64;
    writer.wait_for(200);
    let later = shadow.take_point(Reason::Schedule).expect("a later point");
    writer.wait_for(100);
    let all_acked = writer.stop();
    assert!(all_acked.len() >= 500 && later.seq > point.seq);
    drop(shadow);
    // Dropping the shadow released the primary.
    let rows = sql(&url, "SELECT current_setting('synchronous_standby_names'), (SELECT count(*) FROM pg_replication_slots)");
    assert_eq!(rows[0].get::<_, String>(0), "");
    assert_eq!(rows[0].get::<_, i64>(1), 0);

    let req = RestoreRequest {
        dir: sd.path().to_path_buf(),
        target: Target::Point(point.id()),
        dest: cluster.data_dir.clone(),
        elsewhere: false,
    };
    let report = restore_with(
        &req,
        &RestoreMode::for_dest(&cluster.data_dir),
        None,
        Duration::from_secs(300),
    )
    .unwrap_or_else(|e| panic!("restore: {e}\n{}", cluster.log()));
    assert_eq!(report.point, point.id());
    assert_exactly_before(&ids(&url), &acked_before, issued_after);
    // The restored cluster is the primary again (promoted) and takes writes.
    exec(&url, "INSERT INTO public.t VALUES (-1)");
    let previous: Vec<PathBuf> = std::fs::read_dir(cluster.data_dir.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains(".before-restore-"))
        .collect();
    assert_eq!(
        previous.len(),
        1,
        "the previous data directory is kept beside"
    );
}

#[test]
fn a_crashed_primary_restores_to_the_end_of_the_shadow_without_losing_an_acknowledged_commit() {
    let mut cluster = TestCluster::start(TestClusterOptions::default());
    let url = cluster.url();
    exec(&url, "CREATE TABLE public.t (id bigint PRIMARY KEY)");
    let sd = shadow_dir();
    let (opts, pg) = options(sd.path(), &url, ShadowType::Transactional);
    let shadow = PgShadow::start(&opts, &pg).expect("the shadow starts");
    let writer = Writer::start(&url);
    writer.wait_for(300);
    let before_crash = Timestamp::now();
    // Crash: every server process stopped at once (`pg_ctl stop -m immediate`).
    cluster.stop().expect("immediate stop");
    let acked = writer.stop();
    drop(shadow);

    // A time before the crash (a restore to a time, beside) and the end of the shadow (swap).
    let beside = cluster.dir().join("restored-at-time");
    let req = RestoreRequest {
        dir: sd.path().to_path_buf(),
        target: Target::Time(before_crash),
        dest: beside.clone(),
        elsewhere: true,
    };
    let r = restore_with(
        &req,
        &RestoreMode::for_dest(&beside),
        None,
        Duration::from_secs(300),
    )
    .expect("restore to a time");
    assert!(beside.join("PG_VERSION").is_file() && r.restored_to <= before_crash);

    let req = RestoreRequest {
        dir: sd.path().to_path_buf(),
        target: Target::Latest,
        dest: cluster.data_dir.clone(),
        elsewhere: false,
    };
    let result = restore_with(
        &req,
        &RestoreMode::for_dest(&cluster.data_dir),
        None,
        Duration::from_secs(300),
    );
    let restored = result.as_ref().ok().map(|_| ids(&url));
    let stop = pg_ctl(
        &cluster,
        &[
            "stop",
            "-w",
            "-m",
            "immediate",
            "-D",
            &cluster.data_dir.display().to_string(),
        ],
    );
    result.unwrap_or_else(|e| panic!("restore: {e}"));
    assert!(
        stop.status.success(),
        "{}",
        String::from_utf8_lossy(&stop.stderr)
    );
    let restored = restored.unwrap_or_default();
    let lost: Vec<_> = acked.iter().filter(|i| !restored.contains(i)).collect();
    assert!(acked.len() >= 300);
    assert!(
        lost.is_empty(),
        "{} acknowledged commits lost: {lost:?}",
        lost.len()
    );
}

#[test]
fn bad_input_gets_a_clear_error_and_leaves_the_live_data_alone() {
    let a = TestCluster::start(TestClusterOptions::default());
    let b = TestCluster::start(TestClusterOptions::default());
    exec(
        &a.url(),
        "CREATE TABLE public.t (id bigint PRIMARY KEY); INSERT INTO public.t VALUES (1)",
    );
    exec(
        &b.url(),
        "CREATE TABLE public.t (id bigint PRIMARY KEY); INSERT INTO public.t VALUES (2)",
    );
    let sd = shadow_dir();
    let (opts, pg) = options(sd.path(), &a.url(), ShadowType::Transactional);
    let mut shadow = PgShadow::start(&opts, &pg).expect("the shadow starts");
    let first = shadow.store().points().unwrap()[0].clone();

    // A time before the first point.
    let early = RestoreRequest {
        dir: sd.path().to_path_buf(),
        target: Target::Time(Timestamp::from_micros(
            first.consistent_at.as_micros() - 60_000_000,
        )),
        dest: a.data_dir.clone(),
        elsewhere: false,
    };
    let e = restore_with(
        &early,
        &RestoreMode::for_dest(&a.data_dir),
        None,
        Duration::from_secs(60),
    )
    .unwrap_err();
    assert!(matches!(e, ShadowError::BeforeFirstPoint { .. }), "{e}");
    assert!(e.to_string().contains("before the first point"), "{e}");

    // Another cluster's data directory: refused before anything is stopped or moved.
    let other = RestoreRequest {
        dir: sd.path().to_path_buf(),
        target: Target::Latest,
        dest: b.data_dir.clone(),
        elsewhere: false,
    };
    let e = restore_with(
        &other,
        &RestoreMode::for_dest(&b.data_dir),
        None,
        Duration::from_secs(60),
    )
    .unwrap_err();
    assert!(matches!(e, ShadowError::OtherResource { .. }), "{e}");
    assert!(e.to_string().contains("system identifier"), "{e}");
    assert_eq!(ids(&b.url()), vec![2]);

    // A WAL segment missing from the stream after the latest point.
    shadow.take_point(Reason::OnDemand).expect("a point");
    for i in 10..14 {
        exec(
            &a.url(),
            &format!("INSERT INTO public.t VALUES ({i}); SELECT pg_switch_wal()"),
        );
    }
    // The switches' segments are complete once the shadow flushed past them.
    let last = sql(&a.url(), "SELECT pg_walfile_name(pg_current_wal_lsn())")[0].get::<_, String>(0);
    let wal = sd.path().join("pg").join("wal");
    let mut segments: Vec<String> = Vec::new();
    // pg_receivewal's files are another process's state: polled.
    while !wal.join(&last).exists() && !wal.join(format!("{last}.partial")).exists() {
        std::thread::sleep(Duration::from_millis(10));
    }
    for e in std::fs::read_dir(&wal).unwrap().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.len() == 24 {
            segments.push(n);
        }
    }
    segments.sort();
    let gone = segments[segments.len() - 2].clone();
    std::fs::remove_file(wal.join(&gone)).unwrap();
    let dest = a.dir().join("restored");
    let latest = RestoreRequest {
        dir: sd.path().to_path_buf(),
        target: Target::Latest,
        dest: dest.clone(),
        elsewhere: true,
    };
    let e = restore_with(
        &latest,
        &RestoreMode::for_dest(&dest),
        None,
        Duration::from_secs(120),
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains(&format!("WAL segment {gone} is missing")),
        "{e}"
    );
    assert!(
        !dest.exists(),
        "nothing is left where the restore would have gone"
    );
    assert!(std::fs::read_dir(a.dir())
        .unwrap()
        .flatten()
        .all(|e| !e.file_name().to_string_lossy().contains("bw-restore")));
    drop(shadow);
    assert_eq!(ids(&a.url()), vec![1, 10, 11, 12, 13]);

    // A role that may stream but not change synchronous_standby_names.
    exec(&a.url(), "CREATE ROLE shadow_norights LOGIN REPLICATION");
    let url = a.url_for("shadow_norights", "postgres");
    let sd2 = shadow_dir();
    let (opts, mut pg) = options(sd2.path(), &url, ShadowType::Transactional);
    pg.sync = SyncSetup::Configure;
    let e = PgShadow::start(&opts, &pg).err().expect("refused");
    let text = e.to_string();
    assert!(
        text.contains("cannot set synchronous_standby_names")
            && text.contains("GRANT ALTER SYSTEM ON PARAMETER"),
        "{text}"
    );
    let rows = sql(&a.url(), "SELECT current_setting('synchronous_standby_names'), (SELECT count(*) FROM pg_replication_slots)");
    assert_eq!(
        rows[0].get::<_, String>(0),
        "",
        "the primary is left as it was"
    );
    assert_eq!(rows[0].get::<_, i64>(1), 0, "the slot is dropped again");
}

/// Starts a restored copy left beside (a restore to a new directory) on a free port, runs
/// `f` with its URL, and stops it.
fn with_copy<T>(cluster: &TestCluster, dir: &Path, f: impl FnOnce(&str) -> T) -> T {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let auto = dir.join("postgresql.auto.conf");
    let mut conf = std::fs::read_to_string(&auto).unwrap_or_default();
    conf.push_str(&format!("port = {port}\nunix_socket_directories = ''\n"));
    std::fs::write(&auto, conf).unwrap();
    let d = dir.display().to_string();
    let log = dir.join("copy.log").display().to_string();
    let out = pg_ctl(cluster, &["start", "-w", "-D", &d, "-l", &log]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let result = f(&format!("postgres://postgres@127.0.0.1:{port}/postgres"));
    let out = pg_ctl(cluster, &["stop", "-w", "-m", "fast", "-D", &d]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    result
}

/// Restores the shadow in `dir` to `target` beside the cluster (under `name` in its
/// directory) and returns the ids the restored copy holds.
fn restore_beside(cluster: &TestCluster, dir: &Path, target: Target, name: &str) -> Vec<i64> {
    restore_beside_then(cluster, dir, target, name, ids)
}

/// [`restore_beside`], then `f` on the restored copy (started, given its URL, then stopped).
fn restore_beside_then<T>(
    cluster: &TestCluster,
    dir: &Path,
    target: Target,
    name: &str,
    f: impl FnOnce(&str) -> T,
) -> T {
    let dest = cluster.dir().join(name);
    let req = RestoreRequest {
        dir: dir.to_path_buf(),
        target,
        dest: dest.clone(),
        elsewhere: true,
    };
    restore_with(
        &req,
        &RestoreMode::for_dest(&dest),
        None,
        Duration::from_secs(300),
    )
    .unwrap_or_else(|e| panic!("restore {name}: {e}"));
    with_copy(cluster, &dest, f)
}

#[test]
fn differential_and_full_shadows_restore_their_points() {
    let cluster = TestCluster::start(TestClusterOptions::default());
    let url = cluster.url();
    exec(&url, "CREATE TABLE public.t (id bigint PRIMARY KEY)");
    let (dd, fd) = (shadow_dir(), shadow_dir());
    let (o, p) = options(dd.path(), &url, ShadowType::Differential);
    let mut diff = PgShadow::start(&o, &p).expect("a differential shadow starts");
    let (o, p) = options(fd.path(), &url, ShadowType::Full);
    let mut full = PgShadow::start(&o, &p).expect("a full shadow starts");
    exec(&url, "INSERT INTO public.t SELECT generate_series(1, 100)");
    let d1 = diff
        .take_point(Reason::OnDemand)
        .expect("differential point");
    let f1 = full.take_point(Reason::OnDemand).expect("full point");
    exec(
        &url,
        "INSERT INTO public.t SELECT generate_series(101, 200)",
    );
    let d2 = diff
        .take_point(Reason::Schedule)
        .expect("differential point");
    let f2 = full.take_point(Reason::Schedule).expect("full point");
    exec(
        &url,
        "INSERT INTO public.t SELECT generate_series(201, 300)",
    );
    // A later point stores only what changed (objects are shared): the differential one its
    // new WAL, the full one the chunks of the relation files that changed.
    for m in [&d2, &f2] {
        assert!(
            m.new_bytes * 4 < m.bytes,
            "{}: {} new of {} bytes",
            m.id(),
            m.new_bytes,
            m.bytes
        );
    }
    drop(diff);
    drop(full);

    let restore_to =
        |dir: &Path, target: Target, name: &str| restore_beside(&cluster, dir, target, name);
    let expect = |n: i64| (1..=n).collect::<Vec<_>>();
    assert_eq!(
        restore_to(dd.path(), Target::Point(d1.id()), "diff-1"),
        expect(100)
    );
    assert_eq!(
        restore_to(dd.path(), Target::Point(d2.id()), "diff-2"),
        expect(200)
    );
    assert_eq!(
        restore_to(fd.path(), Target::Point(f1.id()), "full-1"),
        expect(100)
    );
    // A time between the full points: the latest full point at or before it.
    let between =
        Timestamp::from_micros((f1.consistent_at.as_micros() + f2.taken_at.as_micros()) / 2);
    assert_eq!(
        restore_to(fd.path(), Target::Time(between), "full-t"),
        expect(100)
    );
    // The live cluster was never touched.
    assert_eq!(ids(&url), expect(300));
}

/// A transactional shadow whose WAL since its base passes the bound takes a new base (the
/// run loop's image, `image_due`): the backup, then a point on the old base whose mark follows
/// the backup's end, then the base point. A time before the new base, one after it and each
/// of the new points restore every commit acknowledged before them and none issued after.
#[test]
fn a_new_base_leaves_every_commit_restorable_on_either_side_of_it() {
    let cluster = TestCluster::start(TestClusterOptions::default());
    let url = cluster.url();
    exec(&url, "CREATE TABLE public.t (id bigint PRIMARY KEY)");
    let sd = shadow_dir();
    let (opts, mut pg) = options(sd.path(), &url, ShadowType::Transactional);
    // Past a base backup's end the primary switches to a new WAL segment: the rest of that
    // segment (up to 16 MiB) counts as WAL since the base.
    pg.rebase_after = Some(24 << 20);
    let mut shadow = PgShadow::start(&opts, &pg).expect("the shadow starts");
    let writer = Writer::start(&url);
    writer.wait_for(100);
    let first = shadow.take_point(Reason::Schedule).expect("a point");
    assert!(!shadow.image_due(), "no new base due yet");
    // About 40 MiB of WAL past the base.
    exec(
        &url,
        "CREATE TABLE public.pad AS SELECT g, repeat(md5(g::text), 30) AS v FROM generate_series(1, 40000) g",
    );
    writer.wait_for(100);
    shadow.sync().expect("sync");
    assert!(shadow.image_due(), "a new base is due past 24 MiB of WAL");
    let (acked_a, at_a) = (writer.acked(), Timestamp::now());
    let issued_a = writer.next.load(Ordering::SeqCst) as i64;
    writer.wait_for(100);
    let base = shadow.take_point(Reason::Base).expect("the new base");
    assert!(!shadow.image_due(), "the WAL is counted from the new base");
    let points = shadow.store().points().unwrap();
    let label = |m: &bellwether_shadow::point::Manifest| {
        m.entries
            .iter()
            .find(|e| e.path == "backup_label")
            .map(|e| e.objects.clone())
    };
    let closing = &points[points.len() - 2];
    assert_eq!(base.seq, first.seq + 2, "a closing point, then the base");
    assert_eq!(
        label(closing),
        label(&first),
        "the closing point is on the old base"
    );
    assert_ne!(label(&base), label(&first), "a new base backup");
    assert!(closing.consistent_at > base.consistent_at);
    writer.wait_for(100);
    let (acked_b, at_b) = (writer.acked(), Timestamp::now());
    let issued_b = writer.next.load(Ordering::SeqCst) as i64;
    writer.wait_for(100);
    let acked_l = writer.acked();
    let later = shadow
        .take_point(Reason::Schedule)
        .expect("a point on the new base");
    let issued_l = writer.next.load(Ordering::SeqCst) as i64;
    writer.wait_for(50);
    drop(writer.stop());
    drop(shadow);

    let restore = |target: Target, name: &str| restore_beside(&cluster, sd.path(), target, name);
    // Before the new base: from the old one, through the closing point's WAL.
    assert_exactly_before(
        &restore(Target::Time(at_a), "before-base"),
        &acked_a,
        issued_a,
    );
    // After it: from the new base.
    assert_exactly_before(
        &restore(Target::Time(at_b), "after-base"),
        &acked_b,
        issued_b,
    );
    assert_exactly_before(
        &restore(Target::Point(later.id()), "later"),
        &acked_l,
        issued_l,
    );
}

/// The rows of `public.h` as one digest (count and md5 of every row in id order).
fn digest(url: &str) -> String {
    sql(
        url,
        "SELECT count(*)::text || ' ' || md5(string_agg(id::text || v, ',' ORDER BY id)) FROM public.h",
    )[0]
    .get(0)
}

/// The bytes the objects of the shadow in `dir` take.
fn stored_bytes(dir: &Path) -> u64 {
    let mut n = 0;
    let mut todo = vec![dir.join("objects")];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let md = e.metadata().unwrap();
            if md.is_dir() {
                todo.push(e.path());
            } else {
                n += md.len();
            }
        }
    }
    n
}

/// How many objects of the shadow in `dir` are stored as patches (`BWCHDLT2` or `3` first).
fn patched_objects(dir: &Path) -> usize {
    objects_starting(dir, b"BWCHDLT")
}

/// How many objects of the shadow in `dir` start with `magic`.
fn objects_starting(dir: &Path, magic: &[u8]) -> usize {
    let mut n = 0;
    let mut todo = vec![dir.join("objects")];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else if std::fs::read(&p).unwrap().starts_with(magic) {
                n += 1;
            }
        }
    }
    n
}

/// `public.h`: 50,000 rows of 64 random hex digits (about 5 MiB, compressing about 2 ×).
fn hex_rows(url: &str) {
    exec(
        url,
        "CREATE TABLE public.h (id int PRIMARY KEY, v text);
         INSERT INTO public.h SELECT g, md5(g::text || random()::text) || md5(random()::text)
           FROM generate_series(1, 50000) g",
    );
    exec(url, "VACUUM ANALYZE public.h");
}

/// About 500 rows of `public.h` at random (`id % 97 = round`) given new hex: nearly every
/// page of the table changes a little.
fn update_hex_rows(url: &str, round: i32) {
    exec(
        url,
        &format!(
            "UPDATE public.h SET v = md5(random()::text) || md5(random()::text) WHERE id % 97 = {round}"
        ),
    );
}

/// A full point is a new base backup; rows of hex text updated at random touch nearly every
/// 1 MiB chunk of their table, and a chunk that changed is stored as a patch against the same
/// chunk of the last backup (the WAL streamed before the backup began is not kept). The
/// points restore exactly their rows (the last of three, and one taken after the shadow
/// started again, also after retention thinned all but the newest).
#[test]
fn full_points_store_changed_chunks_as_patches_and_restore_exactly() {
    let cluster = TestCluster::start(TestClusterOptions::default());
    let url = cluster.url();
    hex_rows(&url);
    let table: i64 = sql(&url, "SELECT pg_relation_size('public.h')")[0].get(0);
    assert!(table > 4 << 20, "the table is {table} bytes");
    let fd = shadow_dir();
    let (o, p) = options(fd.path(), &url, ShadowType::Full);
    let mut full = PgShadow::start(&o, &p).expect("a full shadow starts");
    let mut points = Vec::new();
    for round in 1..=3 {
        // About 500 rows at random: every chunk of the table changes a little.
        update_hex_rows(&url, round);
        let before = stored_bytes(fd.path());
        let m = full.take_point(Reason::Schedule).expect("full point");
        // Without patches the table's changed chunks alone (compressed about 2 ×) would be
        // over 2 MiB; with them, the rows' bytes, the index's changed chunks (an insertion
        // shifts a leaf page's items, so those are stored whole) and the backup's own files.
        let added = stored_bytes(fd.path()) - before;
        assert!(
            added < (1 << 20),
            "point {} stored {added} bytes for a {table}-byte table",
            m.id(),
        );
        points.push((m.id(), digest(&url)));
    }
    assert!(
        patched_objects(fd.path()) > 0,
        "no chunk was stored as a patch"
    );
    drop(full);
    // Started again: its base backup is patched against the last one the store holds.
    exec(&url, "UPDATE public.h SET v = upper(v) WHERE id % 89 = 0");
    let before = stored_bytes(fd.path());
    let full = PgShadow::start(&o, &p).expect("the full shadow starts again");
    let m = full
        .store()
        .points()
        .unwrap()
        .pop()
        .expect("the new base point");
    let added = stored_bytes(fd.path()) - before;
    assert!(added < (1 << 20), "the new base stored {added} bytes");
    points.push((m.id(), digest(&url)));
    drop(full);
    // The last point of the three (its chunks patched against the first backup's) and the
    // base taken after the restart.
    for (i, (id, want)) in points.iter().enumerate().skip(2) {
        let name = format!("full-patched-{i}");
        let got = restore_beside_then(&cluster, fd.path(), Target::Point(*id), &name, digest);
        assert_eq!(&got, want, "point {id}");
    }
    // Every patched object's bases are whole in the store.
    let mut store = PointStore::open(fd.path()).unwrap();
    store.verify(true).expect("deep verify");
    // Retention down to the newest point: what its patches are rebuilt from stays, and it
    // still restores exactly.
    store.lock_writer().unwrap();
    let zero = Retention {
        keep_all_for: bellwether_model::Dur::ZERO,
        hourly_for: bellwether_model::Dur::ZERO,
        daily_for: bellwether_model::Dur::ZERO,
    };
    let later = Timestamp::from_micros(Timestamp::now().as_micros() + 1_000_000);
    let thinned = store.thin(&zero, later).unwrap();
    assert_eq!(
        thinned.removed.len(),
        points.len(),
        "all but the newest point"
    );
    store.verify(true).expect("deep verify after thinning");
    drop(store);
    let (id, want) = points.last().unwrap();
    let got = restore_beside_then(
        &cluster,
        fd.path(),
        Target::Point(*id),
        "full-patched-thinned",
        digest,
    );
    assert_eq!(&got, want, "point {id} after thinning");
}

/// After a checkpoint the first change to each page puts the whole page into the WAL; rows
/// of hex text updated at random make that nearly all of it. A WAL chunk is stored as a patch
/// against the base backup's copies of those pages (format 4): each point stores a fraction
/// of the chunks compressed whole, and every point restores exactly, the WAL rebuilt from
/// the pages the restore just wrote (and, in `verify`, from the objects).
#[test]
fn wal_chunks_are_patches_against_the_base_pages_and_restore_exactly() {
    for ty in [ShadowType::Differential, ShadowType::Transactional] {
        let cluster = TestCluster::start(TestClusterOptions::default());
        let url = cluster.url();
        hex_rows(&url);
        let fd = shadow_dir();
        let (o, p) = options(fd.path(), &url, ty);
        let mut shadow = PgShadow::start(&o, &p).expect("the shadow starts");
        let mut points = Vec::new();
        let lsn = |url: &str| -> i64 {
            sql(url, "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint")[0].get(0)
        };
        let (before, wal_before) = (stored_bytes(fd.path()), lsn(&url));
        for round in 1..=3 {
            exec(&url, "CHECKPOINT");
            update_hex_rows(&url, round);
            let m = shadow.take_point(Reason::Schedule).expect("point");
            // A transactional point's WAL is settled (and patched) by the next sync.
            shadow.sync().expect("sync");
            points.push((m.id(), digest(&url)));
        }
        let added = stored_bytes(fd.path()) - before;
        let wal = (lsn(&url) - wal_before) as u64;
        // The WAL is mostly images of pages of 64 random hex digits a row, which zstd alone
        // halves; against the base's pages they cost their changed rows.
        assert!(
            objects_starting(fd.path(), b"BWCHDLT4") > 0,
            "{ty}: no WAL chunk was stored as a patch against the base's pages"
        );
        assert!(
            added * 5 < wal,
            "{ty}: 3 points stored {added} bytes for {wal} bytes of WAL"
        );
        drop(shadow);
        // The first point and the last (its WAL patched against the same base).
        for (i, (id, want)) in points.iter().enumerate().step_by(2) {
            let name = format!("wal-pages-{ty}-{i}");
            let got = restore_beside_then(&cluster, fd.path(), Target::Point(*id), &name, digest);
            assert_eq!(&got, want, "{ty}: point {id}");
        }
        // Read from the objects alone (no restore's files at hand), every object is whole.
        let store = PointStore::open(fd.path()).unwrap();
        store.verify(true).expect("deep verify");
    }
}

/// The complete WAL segments (`24 hex digits`, no suffix) in a shadow's `pg/wal`.
fn complete_segments(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join("pg").join("wal"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect();
    v.sort();
    v
}

#[test]
fn a_shadow_holds_its_wal_once_compressed_and_restores_past_its_last_point() {
    let cluster = TestCluster::start(TestClusterOptions::default());
    let url = cluster.url();
    exec(&url, "CREATE TABLE public.t (id bigint PRIMARY KEY)");
    let sd = shadow_dir();
    let (o, p) = options(sd.path(), &url, ShadowType::Transactional);
    let mut shadow = PgShadow::start(&o, &p).expect("the shadow starts");
    let mut points = Vec::new();
    for round in 0..4i64 {
        exec(
            &url,
            &format!(
                "INSERT INTO public.t SELECT generate_series({}, {}); SELECT pg_switch_wal()",
                round * 100 + 1,
                round * 100 + 100
            ),
        );
        points.push(shadow.take_point(Reason::Schedule).expect("a point"));
    }
    // Committed after the last point: only pg/wal has it.
    exec(
        &url,
        "INSERT INTO public.t SELECT generate_series(401, 450)",
    );
    let last = points.last().unwrap();
    let held: Vec<&str> = last
        .entries
        .iter()
        .filter_map(|e| e.path.strip_prefix("bw_restore_wal/"))
        .collect();
    assert!(
        held.len() >= 4,
        "the last point holds the WAL since its base: {held:?}"
    );
    // The run loop's next sync removes what the last point holds from pg/wal.
    shadow.sync().expect("sync");
    // Segments the points hold whole are not kept in pg/wal as well (the newest complete
    // one stays for pg_receivewal's restart).
    let twice: Vec<String> = complete_segments(sd.path())
        .into_iter()
        .filter(|n| held.contains(&n.as_str()) && Some(&n.as_str()) != held.last())
        .collect();
    assert!(twice.len() <= 1, "segments kept twice: {twice:?}");
    // The objects are stored compressed: WAL padded with zeros after each switch, catalogs.
    let store = bellwether_shadow::point::PointStore::open(sd.path()).unwrap();
    let mut content = 0;
    let mut seen = std::collections::HashSet::new();
    for m in store.points().unwrap() {
        for r in m.objects() {
            if seen.insert(r.id) {
                content += r.len;
            }
        }
    }
    fn size(p: &Path) -> u64 {
        std::fs::read_dir(p)
            .unwrap()
            .flatten()
            .map(|e| match e.metadata().unwrap() {
                m if m.is_dir() => size(&e.path()),
                m => m.len(),
            })
            .sum()
    }
    let stored = size(&sd.path().join("objects"));
    assert!(
        stored * 3 < content,
        "{stored} bytes on disk for {content} bytes of objects"
    );
    drop(shadow);

    let restore_to = |target: Target, name: &str| restore_beside(&cluster, sd.path(), target, name);
    assert_eq!(
        restore_to(Target::Point(points[1].id()), "second"),
        (1..=200).collect::<Vec<_>>()
    );
    // The latest: the last point and the WAL streamed after it.
    assert_eq!(
        restore_to(Target::Latest, "latest"),
        (1..=450).collect::<Vec<_>>()
    );
}

/// The objects in a shadow directory's store.
fn object_count(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("objects"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| std::fs::read_dir(e.path()).unwrap().count())
        .sum()
}

/// A transactional shadow's sync stores the WAL flushed so far ahead of the next point;
/// `gc` keeps those objects though no point references them yet; the point then reads only
/// what came after, records the rest of the segment being written as zeros, and restores
/// exactly to itself.
#[test]
fn a_transactional_shadow_stores_its_wal_ahead_of_the_point_and_gc_keeps_it() {
    let (cluster, url) = cluster_with_t();
    let sd = shadow_dir();
    let (o, p) = options(sd.path(), &url, ShadowType::Transactional);
    let mut shadow = PgShadow::start(&o, &p).expect("the shadow starts");
    let first = shadow.take_point(Reason::Schedule).expect("a first point");
    // A complete segment and more than a chunk (1 MiB) of the next one, every commit of it
    // flushed by the synchronous shadow before the statement returned.
    exec(
        &url,
        "INSERT INTO public.t SELECT g, md5(g::text) FROM generate_series(1, 1000) g; SELECT pg_switch_wal()",
    );
    exec(
        &url,
        "INSERT INTO public.t SELECT g, repeat(md5(g::text), 8) FROM generate_series(1001, 12000) g",
    );
    let before = object_count(sd.path());
    shadow.sync().expect("sync");
    let staged = object_count(sd.path());
    assert!(
        staged >= before + 2,
        "the sync stored the complete segment and the flushed chunks ({before} -> {staged} objects)"
    );
    let gc = shadow.store().gc().expect("gc");
    assert_eq!(
        object_count(sd.path()),
        staged,
        "gc removed objects a point is about to reference: {gc:?}"
    );
    exec(
        &url,
        "INSERT INTO public.t SELECT g, 'x' FROM generate_series(12001, 12010) g",
    );
    let point = shadow.take_point(Reason::OnDemand).expect("a point");
    exec(
        &url,
        "INSERT INTO public.t SELECT g, 'after' FROM generate_series(12011, 12020) g",
    );
    // What the sync stored counts as the point's.
    assert!(
        point.new_bytes > (1 << 20) / 2,
        "new bytes of the point: {}",
        point.new_bytes
    );
    // The segment being written: the WAL through the point and nothing past it (no zeros
    // read or referenced; a restore pads the segment).
    let last = point
        .entries
        .iter()
        .filter(|e| e.path.starts_with("bw_restore_wal/"))
        .max_by(|a, b| a.path.cmp(&b.path))
        .unwrap()
        .clone();
    let zeros = bellwether_shadow::point::ObjectId::of(&vec![0u8; 1 << 20]);
    assert!(
        last.size > 1 << 20 && last.size < 16 << 20,
        "{} is {} bytes",
        last.path,
        last.size
    );
    assert!(last.objects.iter().all(|o| o.id != zeros), "{}", last.path);
    // Every object of every point is whole, and gc leaves them all.
    shadow.store().gc().expect("gc");
    let report = shadow.store().verify(true).expect("every point is whole");
    assert!(report.points >= 3 && point.seq > first.seq, "{report:?}");
    // The point's own objects are not synced by it; the next sync settles them (stored
    // compressed: this WAL compresses).
    let tail = *last.objects.last().unwrap();
    let tail_path = tail.id.path_in(sd.path());
    assert_eq!(std::fs::metadata(&tail_path).unwrap().len(), tail.len);
    shadow.sync().expect("sync");
    assert!(std::fs::metadata(&tail_path).unwrap().len() < tail.len);
    drop(shadow);

    assert_eq!(
        restore_beside(&cluster, sd.path(), Target::Point(point.id()), "at-point"),
        (1..=12010).collect::<Vec<_>>()
    );

    // What a machine that stops before that sync can leave: the point's last object gone,
    // the one before it written but not its content. Both are rebuilt from `pg/wal` (the
    // stream made those bytes durable before the point was committed): by a restore while
    // no follower runs, and by the follower's next start.
    let before_tail = last.objects[last.objects.len() - 2];
    let torn = before_tail.id.path_in(sd.path());
    let lose = || {
        std::fs::remove_file(&tail_path).unwrap();
        std::fs::remove_file(&torn).unwrap();
        std::fs::write(&torn, vec![0u8; before_tail.len as usize]).unwrap();
        let err = PointStore::open(sd.path())
            .unwrap()
            .verify(true)
            .expect_err("the damage is seen");
        assert!(matches!(err, ShadowError::BadObject { .. }), "{err}");
    };
    lose();
    assert_eq!(
        restore_beside(&cluster, sd.path(), Target::Point(point.id()), "rebuilt"),
        (1..=12010).collect::<Vec<_>>()
    );
    PointStore::open(sd.path())
        .unwrap()
        .verify(true)
        .expect("rebuilt by the restore");
    lose();
    let shadow = PgShadow::start(&o, &p).expect("the shadow starts again");
    shadow.store().verify(true).expect("rebuilt by the start");
}

/// The pids of the `pg_receivewal` processes streaming into slot `slot`.
fn receivers(slot: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.first().is_some_and(|a| a.ends_with("pg_receivewal"))
            && args.iter().any(|a| a == slot)
        {
            out.push(pid);
        }
    }
    out
}

/// Fills the file system holding `dir` with a ballast file until a write fails.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("ballast");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0xa5u8; 1 << 16];
    loop {
        if let Err(e) = f.write_all(&block) {
            assert_eq!(
                e.raw_os_error(),
                Some(28),
                "the ballast stops at ENOSPC: {e}"
            );
            break;
        }
    }
    path
}

/// The chaos on PostgreSQL: pgbench and a client recording acknowledged ids write to a
/// primary with a transactional (synchronous) shadow kept on a small tmpfs (mounted here:
/// root). A failure is predicted (a `predicted` point); then the shadow's disk fills (a point
/// fails with the reason and commits nothing, and once space is back points go on), its
/// stream is killed with SIGKILL (started again), and the live data is corrupted. The restore
/// to the predicted point brings back every commit acknowledged before it and none issued
/// after it; the restore to `latest` every commit acknowledged at all.
#[test]
fn under_pgbench_a_full_disk_a_killed_stream_and_corruption_lose_nothing_before_the_predicted_point(
) {
    let cluster = TestCluster::start(TestClusterOptions::default());
    let url = cluster.url();
    exec(&url, "CREATE TABLE public.t (id bigint PRIMARY KEY)");
    bellwether_pg::testing::pgbench_init(&cluster, 1);
    let mnt = tempfile::tempdir().unwrap();
    let tmpfs = bellwether_shadow::drill::tmpfs::Tmpfs::mount(mnt.path(), 160 << 20)
        .unwrap_or_else(|e| panic!("this test keeps the shadow on a tmpfs it mounts: {e}"));
    let sd = tmpfs.path().join("shadow");
    let (o, mut p) = options(&sd, &url, ShadowType::Transactional);
    // A point on the full disk fails on its own write, or, if the stream had to begin a new
    // segment meanwhile, when its wait for the stream ends: then with the stream's error.
    p.step_timeout = Duration::from_secs(60);
    let mut shadow = PgShadow::start(&o, &p).expect("the shadow starts");
    let slot = shadow.info().name.clone();
    let argv = cluster.pgbench_argv(&["-n", "-c", "2", "-T", "600", "-R", "100", "postgres"]);
    let mut pgbench = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("pgbench runs");
    let writer = Writer::start(&url);
    writer.wait_for(100);

    let acked_before = writer.acked();
    let predicted = shadow
        .take_point(Reason::Predicted {
            source: "test".into(),
            failure_at: Timestamp::from_micros(Timestamp::now().as_micros() + 60_000_000),
            probability: 0.9,
        })
        .expect("the predicted point");
    let issued_after = writer.next.load(Ordering::SeqCst) as i64;
    writer.wait_for(100);

    // The shadow's disk fills: a point fails, says why, and leaves the latest point as it was.
    let ballast = fill(tmpfs.path());
    let e = shadow
        .take_point(Reason::Schedule)
        .expect_err("no point on a full disk");
    assert!(e.to_string().contains("No space left"), "{e}");
    let store = bellwether_shadow::point::PointStore::open(&sd).unwrap();
    assert_eq!(store.find(&Target::Latest).unwrap().seq, predicted.seq);
    std::fs::remove_file(&ballast).unwrap();
    writer.wait_for(50);
    let after_full = shadow
        .take_point(Reason::Schedule)
        .expect("points go on once space is back");
    assert!(after_full.seq > predicted.seq);

    // Its stream is killed; the shadow starts it again and the next point waits for it.
    let pids = receivers(&slot);
    assert!(!pids.is_empty(), "pg_receivewal streams into {slot}");
    for pid in pids {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }
    writer.wait_for(50);
    shadow
        .take_point(Reason::Schedule)
        .expect("a point after the stream was killed");
    let _ = pgbench.kill();
    let _ = pgbench.wait();
    let acked = writer.stop();
    drop(shadow);
    store.verify(true).expect("every point whole");

    // Everything acknowledged is in the shadow: `latest`, beside.
    let latest = restore_beside(&cluster, &sd, Target::Latest, "latest");
    let lost: Vec<_> = acked.iter().filter(|i| !latest.contains(i)).collect();
    assert!(lost.is_empty(), "acknowledged but not in latest: {lost:?}");

    // The live data is corrupted (the table's file overwritten), then the predicted point is
    // restored over it.
    let rel: String = sql(&url, "SELECT pg_relation_filepath('public.t')")[0].get(0);
    let file = cluster.data_dir.join(rel);
    std::fs::write(&file, vec![0xffu8; 8192]).unwrap();
    let req = RestoreRequest {
        dir: sd.clone(),
        target: Target::Point(predicted.id()),
        dest: cluster.data_dir.clone(),
        elsewhere: false,
    };
    restore_with(
        &req,
        &RestoreMode::for_dest(&cluster.data_dir),
        None,
        Duration::from_secs(300),
    )
    .unwrap_or_else(|e| panic!("restore the predicted point: {e}\n{}", cluster.log()));
    assert_exactly_before(&ids(&url), &acked_before, issued_after);
}

/// How many points' marks (their messages' prefix) the segments in `wal` hold.
fn marks_in(wal: &Path) -> usize {
    std::fs::read_dir(wal)
        .unwrap()
        .flatten()
        .map(|e| {
            let bytes = std::fs::read(e.path()).unwrap();
            bytes
                .windows(16)
                .filter(|w| *w == b"bellwether.point")
                .count()
        })
        .sum()
}

/// A transactional point does not sync its manifest (its mark is a message in the WAL the
/// stream flushed before the point returned; the follower's next sync makes the manifest
/// durable). What a machine's stop can leave of the newest manifests (the last one gone,
/// the one before it named but empty or torn) is rebuilt from those marks in `pg/wal`: by a
/// restore while no follower runs, and by the follower's next start. The rebuilt points
/// have their numbers, positions, times taken and reasons, and restore exactly.
#[test]
fn points_whose_manifests_a_stopped_machine_lost_are_rebuilt_from_their_marks() {
    let (cluster, url) = cluster_with_t();
    let sd = shadow_dir();
    let (o, p) = options(sd.path(), &url, ShadowType::Transactional);
    let mut shadow = PgShadow::start(&o, &p).expect("the shadow starts");
    let mut points = Vec::new();
    for round in 0..4i64 {
        exec(
            &url,
            &format!(
                "INSERT INTO public.t SELECT g, md5(g::text) FROM generate_series({}, {}) g",
                round * 100 + 1,
                round * 100 + 100
            ),
        );
        if round == 1 {
            // The points after this one read their WAL from the next segment.
            exec(&url, "SELECT pg_switch_wal()");
        }
        let reason = if round == 3 {
            Reason::Predicted {
                source: "failure model: disk of host-7 full".into(),
                failure_at: Timestamp::now(),
                probability: 0.93,
            }
        } else {
            Reason::OnDemand
        };
        points.push(shadow.take_point(reason).expect("a point"));
    }
    exec(
        &url,
        "INSERT INTO public.t SELECT g, 'after' FROM generate_series(401, 410) g",
    );
    assert!(
        marks_in(&sd.path().join("pg").join("wal")) >= 2,
        "the points' marks are in the WAL"
    );
    drop(shadow);

    let manifest = |seq: u64| sd.path().join("points").join(format!("{seq:010}.json"));
    let (p2, p3) = (points[2].clone(), points[3].clone());
    let check = |store: &PointStore| {
        store.verify(true).expect("every point whole again");
        for want in [&p2, &p3] {
            let got = store.point(want.id()).expect("rebuilt");
            assert_eq!(
                (&got.position, got.taken_at, &got.reason),
                (&want.position, want.taken_at, &want.reason),
                "{}",
                want.id()
            );
            assert!(got.consistent_at >= got.taken_at && got.consistent_at <= want.consistent_at);
        }
    };
    // The last manifest gone, the one before it named but empty; `HEAD` names the last.
    std::fs::remove_file(manifest(p3.seq)).unwrap();
    std::fs::write(manifest(p2.seq), b"").unwrap();
    let err = PointStore::open(sd.path())
        .unwrap()
        .verify(false)
        .expect_err("the damage is seen");
    assert!(
        matches!(
            err,
            ShadowError::DamagedPoint { .. } | ShadowError::NoSuchPoint { .. }
        ),
        "{err}"
    );
    assert_eq!(
        restore_beside(&cluster, sd.path(), Target::Point(p2.id()), "at-p2"),
        (1..=300).collect::<Vec<_>>()
    );
    check(&PointStore::open(sd.path()).unwrap());

    // Again, torn the other way (the last one's bytes half there), and the follower's start
    // rebuilds them.
    let bytes = std::fs::read(manifest(p3.seq)).unwrap();
    std::fs::write(manifest(p3.seq), &bytes[..bytes.len() / 2]).unwrap();
    std::fs::remove_file(manifest(p2.seq)).unwrap();
    let shadow = PgShadow::start(&o, &p).expect("the shadow starts again");
    check(shadow.store());
    drop(shadow);
    assert_eq!(
        restore_beside(&cluster, sd.path(), Target::Point(p3.id()), "at-p3"),
        (1..=400).collect::<Vec<_>>()
    );

    // A role whose right to write the message is revoked while its shadow runs: the next
    // point is marked the other way (the insert position) and its manifest synced by the
    // point; both restore exactly.
    let each_message_fn = |verb: &str| {
        format!(
            "DO $$ DECLARE f regprocedure; BEGIN \
               FOR f IN SELECT oid::regprocedure FROM pg_proc WHERE proname = 'pg_logical_emit_message' LOOP \
                 EXECUTE format('{verb}', f); \
               END LOOP; END $$"
        )
    };
    exec(
        &url,
        "CREATE ROLE shadow_marks LOGIN REPLICATION; GRANT SELECT ON public.t TO shadow_marks",
    );
    exec(
        &url,
        &each_message_fn("REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC"),
    );
    exec(
        &url,
        &each_message_fn("GRANT EXECUTE ON FUNCTION %s TO shadow_marks"),
    );
    let sd2 = shadow_dir();
    let (o2, mut p2o) = options(
        sd2.path(),
        &cluster.url_for("shadow_marks", "postgres"),
        ShadowType::Transactional,
    );
    p2o.sync = SyncSetup::Off;
    let mut shadow = PgShadow::start(&o2, &p2o).expect("the shadow starts");
    let marked = shadow.take_point(Reason::OnDemand).expect("a point");
    exec(
        &url,
        &each_message_fn("REVOKE EXECUTE ON FUNCTION %s FROM shadow_marks"),
    );
    exec(
        &url,
        "INSERT INTO public.t SELECT g, 'later' FROM generate_series(411, 420) g",
    );
    let unmarked = shadow
        .take_point(Reason::OnDemand)
        .expect("a point without a message");
    exec(
        &url,
        "INSERT INTO public.t SELECT g, 'last' FROM generate_series(421, 430) g",
    );
    assert_eq!(marks_in(&sd2.path().join("pg").join("wal")), 1);
    drop(shadow);
    assert_eq!(
        restore_beside(&cluster, sd2.path(), Target::Point(marked.id()), "marked"),
        (1..=410).collect::<Vec<_>>()
    );
    assert_eq!(
        restore_beside(
            &cluster,
            sd2.path(),
            Target::Point(unmarked.id()),
            "unmarked"
        ),
        (1..=420).collect::<Vec<_>>()
    );
}
