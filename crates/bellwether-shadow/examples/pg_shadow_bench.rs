//! Figures for PostgreSQL shadows (BENCHMARKS.md, "Data shadows (issue 13)"), on real
//! clusters started here (initdb/pg_ctl from /usr/lib/postgresql/*/bin):
//!
//! 1. `rpo`: pgbench (TPC-B) and a client recording acknowledged ids run against a primary
//!    with a transactional shadow (synchronous); the primary is crashed (`pg_ctl stop -m
//!    immediate`) mid-run; the shadow is restored to `latest` and swapped in. Lost =
//!    transactions pgbench reported processed minus `pgbench_history` rows restored, and ids
//!    acknowledged but not restored. Also pgbench's tps without and with the shadow.
//! 2. `restore`: a pgbench database of `--scale` (68 is about 1 GiB), a transactional shadow
//!    (its base point timed), points two seconds apart under pgbench churn of `--rate`
//!    transactions a second (default 200; 0: unthrottled), the shadow's sync at its poll
//!    interval between them as its run loop does (time and new bytes of each point), then
//!    a restore of the database to a point, swapped in (timed).
//! 3. `space` (not part of `all`): the "24 hourly points at 1 %/h churn". A pgbench
//!    database of `--scale` (default here 10, about 160 MiB), then for each shadow type of
//!    `--types` (default `differential,transactional`) a new shadow and 24 rounds, each an
//!    hour's worth of churn: a `CHECKPOINT` (an hour holds twelve at the default
//!    `checkpoint_timeout`), 1 % of `pgbench_accounts` rows updated at random, and a point.
//!    Reports the shadow directory's size (logical, and the blocks the file system counts)
//!    against the database's, and what the WAL held of it. `--wal-compression lz4|pglz|zstd`
//!    sets the server's `wal_compression` for the run. `--churn contiguous` updates one
//!    range of rows a round (time-ordered data) instead of rows at random (`scattered`).
//!    `--filler hex` fills each row's 84-byte filler with random hex digits first: pgbench's
//!    own rows are blanks, which compress about 40 ×; hex text about 2 ×. `--rounds N`
//!    runs N rounds instead of 24 (a quicker look; each round's progress goes to stderr).
//!
//! `cargo run --release -p bellwether-shadow --example pg_shadow_bench -- [rpo|restore|all|space]
//! [--scale N] [--seconds S] [--points N] [--rate TPS] [--on LIST] [--image-gib N] [--types LIST]
//! [--wal-compression METHOD] [--churn scattered|contiguous] [--filler blank|hex] [--rounds N]`
//!
//! `--on /var/tmp,btrfs,xfs` runs the benchmarks once per place, one after the other: a
//! directory is used as it is, `btrfs` / `xfs` is a loop mount of a sparse image of
//! `--image-gib` GiB (default 8) the bench makes under `$TMPDIR` and removes (root). The
//! cluster, the shadow and the restore all live there (`$TMPDIR` is set to it). Where the
//! file system clones, a restore assembles the data files from reflinks of the objects
//! (still hashing each); the points are not clones (see docs/shadow-postgres.md).

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bellwether_pg::testing::{TestCluster, TestClusterOptions};
use bellwether_shadow::pg::{restore_with, PgOptions, PgShadow, RestoreMode};
use bellwether_shadow::point::loopfs::{CowFs, LoopFs};
use bellwether_shadow::point::{PointStore, Reason, Retention, Shadow, ShadowOptions, Source};
use bellwether_shadow::{RestoreRequest, ShadowType, Target};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn query_i64(url: &str, sql: &str) -> i64 {
    rt().block_on(async {
        let c = bellwether_pg::connect(url).await.expect("connect");
        c.client.query_one(sql, &[]).await.expect(sql).get(0)
    })
}

fn exec(url: &str, sql: &str) {
    rt().block_on(async {
        let c = bellwether_pg::connect(url).await.expect("connect");
        c.client.batch_execute(sql).await.expect(sql)
    })
}

fn pgbench(c: &TestCluster, args: &[&str]) -> Command {
    let mut args = args.to_vec();
    args.push("postgres");
    let argv = c.pgbench_argv(&args);
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// pgbench's "number of transactions actually processed: N" and "tps = X".
fn pgbench_figures(out: &str) -> (i64, f64) {
    let processed = out
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(-1);
    let tps = out
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(f64::NAN);
    (processed, tps)
}

fn options(dir: &Path, url: &str) -> (ShadowOptions, PgOptions) {
    options_of(dir, url, ShadowType::Transactional)
}

fn options_of(dir: &Path, url: &str, ty: ShadowType) -> (ShadowOptions, PgOptions) {
    (
        ShadowOptions {
            dir: dir.to_path_buf(),
            source: Source::Url(url.to_string()),
            shadow_type: ty,
            points_every: None,
            retention: Retention::default(),
            poll: None,
            clones: bellwether_shadow::point::Clones::Auto,
        },
        PgOptions::new(url, ty),
    )
}

/// 24 hourly points at 1 % churn an hour: the shadow's size against the database's.
fn space(
    scale: u32,
    types: &[ShadowType],
    wal_compression: Option<&str>,
    filler: &str,
    churn_kind: &str,
    rounds: usize,
) {
    let mut conf = vec![
        ("max_wal_size".into(), "'4GB'".into()),
        ("checkpoint_timeout".into(), "'30min'".into()),
    ];
    if let Some(c) = wal_compression {
        conf.push(("wal_compression".into(), format!("'{c}'")));
    }
    let cluster = TestCluster::start(TestClusterOptions { conf });
    let url = cluster.url();
    bellwether_pg::testing::pgbench_init(&cluster, scale);
    match filler {
        "blank" => {}
        // 84 random hex digits a row (4 bits of entropy a byte, as text ids and hashes
        // have): zstd shrinks such rows about 2 ×, not the ~40 × of pgbench's blanks.
        "hex" => {
            exec(
                &url,
                "UPDATE public.pgbench_accounts SET filler = substr(md5(random()::text) || md5(random()::text) || md5(random()::text), 1, 84)",
            );
            exec(&url, "VACUUM FULL public.pgbench_accounts");
        }
        other => panic!("--filler {other}: blank or hex"),
    }
    exec(&url, "VACUUM ANALYZE");
    let accounts = query_i64(&url, "SELECT count(*) FROM public.pgbench_accounts");
    let churn = accounts / 100;
    let root = std::env::temp_dir();
    for ty in types {
        let size = query_i64(&url, "SELECT pg_database_size(current_database())") as u64;
        let cluster_bytes = dir_size(&cluster.data_dir);
        let sd = tempfile::Builder::new()
            .prefix("bw-pg-space-")
            .tempdir()
            .expect("tempdir");
        let used_before = bellwether_shadow::point::loopfs::blocks_in_use(&root).expect("statvfs");
        let (o, p) = options_of(sd.path(), &url, *ty);
        let mut shadow = PgShadow::start(&o, &p).expect("shadow");
        let base = dir_size(sd.path());
        let wal_start = query_i64(
            &url,
            "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint",
        );
        let mut times = Vec::new();
        let mut rebases = Vec::new();
        let started = Instant::now();
        for round in 0..rounds as i64 {
            exec(&url, "CHECKPOINT");
            let rows = match churn_kind {
                "scattered" => format!(
                    "SELECT 1 + (random() * {})::bigint FROM generate_series(1, {churn})",
                    accounts - 1
                ),
                // Time-ordered data: this hour's rows are one range.
                "contiguous" => format!(
                    "SELECT generate_series({}, {})",
                    round * churn + 1,
                    (round + 1) * churn
                ),
                other => panic!("--churn {other}: scattered or contiguous"),
            };
            exec(
                &url,
                &format!(
                    "UPDATE public.pgbench_accounts SET abalance = abalance + 1 WHERE aid IN ({rows})"
                ),
            );
            // The run loop syncs every quarter of a second between points (a transactional
            // shadow stores the WAL flushed so far; every shadow removes from `pg/wal` what
            // the last point holds): once here stands for the hour's.
            shadow.sync().expect("sync");
            let t = Instant::now();
            shadow.take_point(Reason::Schedule).expect("point");
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            // The run loop's new base once the WAL since the base passed its bound (timed
            // apart: the loop takes it after the points asked for).
            if shadow.image_due() {
                let t = Instant::now();
                shadow.take_point(Reason::Base).expect("new base");
                rebases.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            // Progress (a long run cut short still says where it was).
            let objects = dir_size(&sd.path().join("objects"));
            eprintln!(
                "space ({ty}): round {} of {rounds}: objects {:.1} MiB = {:.2} x the database, {} new bases, {:.0} s",
                round + 1,
                objects as f64 / (1u64 << 20) as f64,
                objects as f64 / size as f64,
                rebases.len(),
                started.elapsed().as_secs_f64()
            );
        }
        // The sync after the last point (the space is measured as the run loop leaves it).
        shadow.sync().expect("sync");
        let wal = query_i64(
            &url,
            "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint",
        ) - wal_start;
        drop(shadow);
        let held = dir_size(sd.path());
        let in_objects = dir_size(&sd.path().join("objects"));
        let in_wal = dir_size(&sd.path().join("pg").join("wal"));
        let keep = std::env::var_os("BW_BENCH_KEEP").is_some();
        let used = bellwether_shadow::point::loopfs::blocks_in_use(&root)
            .expect("statvfs")
            .saturating_sub(used_before);
        times.sort_by(|a, b| a.total_cmp(b));
        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        println!(
            "space ({}, wal_compression {}, filler {filler}, churn {churn_kind}): database {:.1} MiB (cluster directory {:.1} MiB); {rounds} points at 1 % churn ({churn} rows each, a CHECKPOINT before each): shadow {:.1} MiB = {:.2} x the database ({:.2} x the cluster directory; objects {:.1} MiB, pg/wal {:.1} MiB); base {:.1} MiB; file system blocks {:.1} MiB; WAL written {:.1} MiB; point p50 {:.0} ms, max {:.0} ms",
            ty,
            wal_compression.unwrap_or("off"),
            mib(size),
            mib(cluster_bytes),
            mib(held),
            held as f64 / size as f64,
            held as f64 / cluster_bytes as f64,
            mib(in_objects),
            mib(in_wal),
            mib(base),
            mib(used),
            mib(wal as u64),
            times[times.len() / 2],
            times[times.len() - 1],
        );
        if !rebases.is_empty() {
            rebases.sort_by(|a, b| a.total_cmp(b));
            println!(
                "space ({ty}): {} new bases taken by the shadow (the WAL since its base passed half the database), p50 {:.0} ms, max {:.0} ms",
                rebases.len(),
                rebases[rebases.len() / 2],
                rebases[rebases.len() - 1]
            );
        }
        // What a restore of the base point and of the last point costs (beside the cluster:
        // written, verified by starting it, left there and removed).
        let points = PointStore::open(sd.path())
            .and_then(|s| s.points())
            .expect("points");
        // Where the bytes went: the points that took a new base, and the others (the WAL).
        let (bases_new, wal_new) = points.iter().fold((0u64, 0u64), |(b, w), m| {
            if m.reason == Reason::Base {
                (b + m.new_bytes, w)
            } else {
                (b, w + m.new_bytes)
            }
        });
        println!(
            "space ({ty}): new bytes stored by points that took a base {:.1} MiB, by the others {:.1} MiB",
            mib(bases_new),
            mib(wal_new)
        );
        for (label, m) in [("base", &points[0]), ("last", &points[points.len() - 1])] {
            let dest = cluster.dir().join(format!("bw-restored-{ty}-{label}"));
            let req = RestoreRequest {
                dir: sd.path().to_path_buf(),
                target: Target::Point(m.id()),
                dest: dest.clone(),
                elsewhere: true,
            };
            let t = Instant::now();
            let report = restore_with(
                &req,
                &RestoreMode::for_dest(&dest),
                None,
                Duration::from_secs(600),
            )
            .expect("restore");
            println!(
                "space ({ty}): restore of the {label} point {} beside the cluster: {:.2} s ({:.1} MiB written)",
                m.id(),
                t.elapsed().as_secs_f64(),
                mib(report.bytes)
            );
            let _ = std::fs::remove_dir_all(&dest);
        }
        if keep {
            println!("kept: {}", sd.keep().display());
        }
    }
}

fn rpo(seconds: u64) {
    let mut cluster = TestCluster::start(TestClusterOptions::default());
    let url = cluster.url();
    bellwether_pg::testing::pgbench_init(&cluster, 1);
    exec(&url, "CREATE TABLE public.acked (id bigint PRIMARY KEY)");
    let t = seconds.to_string();
    let plain = pgbench(&cluster, &["-n", "-c", "4", "-j", "2", "-T", &t])
        .output()
        .expect("pgbench");
    let (_, tps_plain) = pgbench_figures(&String::from_utf8_lossy(&plain.stdout));

    let sd = tempfile::Builder::new()
        .prefix("bw-pg-bench-")
        .tempdir()
        .expect("tempdir");
    let (o, p) = options(sd.path(), &url);
    let shadow = PgShadow::start(&o, &p).expect("shadow");
    let synced = pgbench(&cluster, &["-n", "-c", "4", "-j", "2", "-T", &t])
        .output()
        .expect("pgbench");
    let (_, tps_sync) = pgbench_figures(&String::from_utf8_lossy(&synced.stdout));

    // The crash run: pgbench plus a client recording acknowledged ids.
    let history_before = query_i64(&url, "SELECT count(*) FROM public.pgbench_history");
    let long = (seconds * 4).to_string();
    let bench = pgbench(&cluster, &["-n", "-c", "4", "-j", "2", "-T", &long])
        .spawn()
        .expect("pgbench");
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<i64>::new()));
    let (s, a, u) = (stop.clone(), acked.clone(), url.clone());
    let writer = std::thread::spawn(move || {
        rt().block_on(async move {
            let c = bellwether_pg::connect(&u).await.expect("connect");
            let mut id = 0i64;
            while !s.load(Ordering::SeqCst) {
                id += 1;
                if c.client
                    .execute("INSERT INTO public.acked VALUES ($1)", &[&id])
                    .await
                    .is_err()
                {
                    return;
                }
                a.lock().unwrap().push(id);
            }
        })
    });
    // The crash comes after `seconds` of load (a timer is the point of this step).
    std::thread::sleep(Duration::from_secs(seconds));
    cluster.stop().expect("crash");
    let out = bench.wait_with_output().expect("pgbench ends");
    stop.store(true, Ordering::SeqCst);
    let _ = writer.join();
    drop(shadow);
    let (processed, _) = pgbench_figures(&String::from_utf8_lossy(&out.stdout));
    let acked = acked.lock().unwrap().clone();

    let started = Instant::now();
    let req = RestoreRequest {
        dir: sd.path().to_path_buf(),
        target: Target::Latest,
        dest: cluster.data_dir.clone(),
        elsewhere: false,
    };
    let report = restore_with(
        &req,
        &RestoreMode::for_dest(&cluster.data_dir),
        None,
        Duration::from_secs(600),
    )
    .expect("restore");
    let restore_s = started.elapsed().as_secs_f64();
    let history = query_i64(&url, "SELECT count(*) FROM public.pgbench_history") - history_before;
    let restored_ids = query_i64(&url, "SELECT count(*) FROM public.acked");
    let max_id = query_i64(&url, "SELECT coalesce(max(id), 0) FROM public.acked");
    let lost_ids = acked.iter().filter(|i| **i > max_id).count() as i64
        + (acked.len() as i64 - restored_ids).max(0);
    let d = cluster.data_dir.display().to_string();
    let argv = {
        let bin = cluster.bindir.join("pg_ctl").display().to_string();
        let mut v = Vec::new();
        if std::fs::metadata("/proc/self")
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
            .unwrap_or(false)
        {
            v.extend(["runuser", "-u", "postgres", "--"].map(String::from));
        }
        v.push(bin);
        v.extend(["stop", "-m", "immediate", "-D", &d].map(String::from));
        v
    };
    let _ = Command::new(&argv[0]).args(&argv[1..]).output();
    println!(
        "rpo: pgbench tps without shadow {tps_plain:.0}, with synchronous shadow {tps_sync:.0}"
    );
    println!(
        "rpo: crash after {seconds} s: pgbench processed {processed}, restored {history} history rows, lost {}; client acknowledged {} ids, restored {restored_ids}, lost {lost_ids}; restore to latest {restore_s:.1} s ({} bytes)",
        (processed - history).max(0),
        acked.len(),
        report.bytes
    );
}

fn restore(scale: u32, points: usize, rate: u64) {
    let cluster = TestCluster::start(TestClusterOptions {
        conf: vec![
            ("max_wal_size".into(), "'4GB'".into()),
            ("checkpoint_timeout".into(), "'30min'".into()),
        ],
    });
    let url = cluster.url();
    let t = Instant::now();
    bellwether_pg::testing::pgbench_init(&cluster, scale);
    let size = query_i64(&url, "SELECT pg_database_size(current_database())");
    println!(
        "restore: pgbench -i -s {scale}: {:.2} GiB in {:.0} s",
        size as f64 / (1u64 << 30) as f64,
        t.elapsed().as_secs_f64()
    );

    let sd = tempfile::Builder::new()
        .prefix("bw-pg-bench-")
        .tempdir()
        .expect("tempdir");
    let (o, p) = options(sd.path(), &url);
    let t = Instant::now();
    let mut shadow = PgShadow::start(&o, &p).expect("shadow");
    println!(
        "restore: shadow start with its base point {:.1} s",
        t.elapsed().as_secs_f64()
    );
    // Churn at a fixed rate (0: as fast as it goes) while points are taken.
    let rate_arg = rate.to_string();
    let mut argv = vec!["-n", "-c", "2", "-T", "3600"];
    if rate > 0 {
        argv.extend(["-R", rate_arg.as_str()]);
    }
    let mut churn = pgbench(&cluster, &argv).spawn().expect("pgbench");
    let mut times = Vec::new();
    let mut news = Vec::new();
    let mut target = None;
    for i in 0..points {
        // Two seconds between points, with the shadow's sync at its poll interval as the
        // run loop does it (a transactional shadow stores the WAL flushed so far).
        let next = Instant::now() + Duration::from_secs(2);
        while Instant::now() < next {
            std::thread::sleep(shadow.poll_interval().min(next - Instant::now()));
            shadow.sync().expect("sync");
        }
        let t = Instant::now();
        let m = shadow.take_point(Reason::Schedule).expect("point");
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        news.push(m.new_bytes);
        if i == points / 2 {
            target = Some(m.id());
        }
    }
    let _ = churn.kill();
    let _ = churn.wait();
    drop(shadow);
    times.sort_by(|a, b| a.total_cmp(b));
    let mut sorted = news.clone();
    sorted.sort();
    println!(
        "restore: {points} points under pgbench -R {rate}: time p50 {:.1} ms, max {:.1} ms; new bytes p50 {:.1} MiB, max {:.1} MiB",
        times[times.len() / 2],
        times[times.len() - 1],
        sorted[sorted.len() / 2] as f64 / (1u64 << 20) as f64,
        sorted[sorted.len() - 1] as f64 / (1u64 << 20) as f64
    );
    let disk: u64 = dir_size(sd.path());
    println!(
        "restore: shadow directory {:.2} GiB for a {:.2} GiB database and {points} points",
        disk as f64 / (1u64 << 30) as f64,
        size as f64 / (1u64 << 30) as f64
    );

    let target = target.expect("a point");
    let t = Instant::now();
    let req = RestoreRequest {
        dir: sd.path().to_path_buf(),
        target: Target::Point(target),
        dest: cluster.data_dir.clone(),
        elsewhere: false,
    };
    let report = restore_with(
        &req,
        &RestoreMode::for_dest(&cluster.data_dir),
        None,
        Duration::from_secs(1800),
    )
    .expect("restore");
    println!(
        "restore: to point {target} of the {:.2} GiB database, swapped in and started: {:.1} s ({} bytes written, {})",
        size as f64 / (1u64 << 30) as f64,
        t.elapsed().as_secs_f64(),
        report.bytes,
        report.checks.join(", ")
    );
    let history = query_i64(&url, "SELECT count(*) FROM public.pgbench_history");
    println!("restore: the restored cluster answers (pgbench_history {history} rows)");
}

fn dir_size(p: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += dir_size(&e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

fn main() {
    // RUST_LOG=bellwether_shadow=debug prints what each point cost, by part.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str, default: u64| -> u64 {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let what = args.first().map(String::as_str).unwrap_or("all");
    let seconds = flag("--seconds", 10);
    let scale = flag("--scale", 68) as u32;
    let points = flag("--points", 10) as usize;
    let image_gib = flag("--image-gib", 8);
    let text = |name: &str| {
        args.iter().position(|a| a == name).map(|i| {
            args.get(i + 1)
                .unwrap_or_else(|| panic!("{name} needs a value"))
                .clone()
        })
    };
    let types: Vec<ShadowType> = text("--types")
        .unwrap_or_else(|| "differential,transactional".into())
        .split(',')
        .map(|t| t.parse().unwrap_or_else(|e| panic!("--types: {e}")))
        .collect();
    let wal_compression = text("--wal-compression");
    let on: Vec<String> = match args.iter().position(|a| a == "--on") {
        Some(i) => args
            .get(i + 1)
            .expect("--on LIST")
            .split(',')
            .map(str::to_string)
            .collect(),
        None => vec![std::env::temp_dir().display().to_string()],
    };
    let outer = std::env::temp_dir();
    for place in on {
        let (mount, root) = match place.parse::<CowFs>() {
            Ok(fs) => {
                let work = tempfile::tempdir_in(&outer).unwrap().keep();
                let m = LoopFs::mount(fs, &work.join("fs.img"), &work.join("mnt"), image_gib << 30)
                    .unwrap_or_else(|e| panic!("{e}"));
                let root = m.path().to_owned();
                (Some((m, work)), root)
            }
            Err(_) => (None, std::path::PathBuf::from(place)),
        };
        // The cluster (initdb as the PostgreSQL user) and the shadow live under TMPDIR.
        std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).ok();
        std::env::set_var("TMPDIR", &root);
        println!(
            "pg_shadow_bench in {} [{}, {}, load {}]",
            root.display(),
            fs_type(&root),
            if bellwether_shadow::point::cow_supported(&root) {
                "clones"
            } else {
                "no clones"
            },
            std::fs::read_to_string("/proc/loadavg")
                .ok()
                .and_then(|l| l.split(' ').next().map(str::to_string))
                .unwrap_or_default()
        );
        if matches!(what, "rpo" | "all") {
            rpo(seconds);
        }
        if matches!(what, "restore" | "all") {
            restore(scale, points, flag("--rate", 200));
        }
        if what == "space" {
            space(
                flag("--scale", 10) as u32,
                &types,
                wal_compression.as_deref(),
                text("--filler").as_deref().unwrap_or("blank"),
                text("--churn").as_deref().unwrap_or("scattered"),
                flag("--rounds", 24) as usize,
            );
        }
        std::env::set_var("TMPDIR", &outer);
        if let Some((m, work)) = mount {
            drop(m);
            let _ = std::fs::remove_dir_all(work);
        }
    }
}

fn fs_type(p: &Path) -> String {
    Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(p)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
