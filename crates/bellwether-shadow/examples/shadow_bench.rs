//! Figures for BENCHMARKS.md, "Data shadows (issue 13)": SQLite shadows on this machine.
//!
//! ```text
//! cargo run --release -p bellwether-shadow --example shadow_bench -- rpo
//! cargo run --release -p bellwether-shadow --example shadow_bench -- points [MIB]
//! cargo run --release -p bellwether-shadow --example shadow_bench -- restore [MIB]
//! # the same on several file systems, one after the other in one run (btrfs and xfs are
//! # loop mounts the bench makes and removes, which needs root; a path is used as it is):
//! cargo run --release -p bellwether-shadow --example shadow_bench -- restore 1024 --on /var/tmp,btrfs,xfs
//! ```
//!
//! - `rpo`: a writer commits one row every 2 ms (its own connection, WAL mode) while a
//!   transactional shadow follows; for each commit, the time from `COMMIT` returning to the
//!   commit being durable in the shadow's commit log (p50, p99, max).
//! - `points`: a database of MIB (default 256) MiB; 24 rounds of 1 % churn, each followed by
//!   a differential point: the time of a point, the bytes it stored, and the shadow's size
//!   against the data's after 24 points. With `--type transactional`, a transactional
//!   shadow logs each round's commit (timed apart: the follower does it as commits come),
//!   then takes the point, twice: points from the commit log where it can, then the same
//!   with every point an image (the comparison, in the same run). `SEAL_WAIT=1` waits for
//!   each image's seal before the next round (a diagnostic: it takes the sealing thread's
//!   reads out of the next points' cost). Churn is measured twice: rows updated in one
//!   contiguous range (time-ordered data) and rows updated at random.
//! - `restore-log`: a transactional shadow of MIB (default 1024) MiB whose log since its
//!   image is churned up to the bound past which it takes an image, a point from that log,
//!   and the restore to it (the image and the whole log replayed).
//! - `head-write`: what a small file rewritten after every point (`points/HEAD`) costs,
//!   while another thread writes 64 random 4 KiB blocks of a 256 MiB file and `fsync`s,
//!   over and over (a database under churn on the same file system): 150 rounds of each of
//!   a new file renamed over it (write, `fsync`, rename, directory `fsync`: how HEAD was
//!   written), the same bytes written over themselves in place with one `fdatasync` (how it
//!   is written now), a new name each time (how a manifest is written), and 64 KiB written
//!   in place in a file without copy-on-write (`chattr +C`: a journal of manifests).
//!   p50/p90/max.
//! - `restore`: a database of MIB (default 1024) MiB, one point (full and differential),
//!   the live file corrupted, then a restore to the point: total time, and the
//!   `integrity_check` part of it.
//!
//! The data lives under `$TMPDIR` (the same disk as the repository here), or on each place
//! `--on` names: a directory, or `btrfs` / `xfs` for a loop mount of a sparse image made
//! under `$TMPDIR` (`--image-gib`, default 8). Each result line names the file system and
//! the load average when it started. Where the file system can clone (btrfs, XFS), points
//! are clones sealed after they are durable: `points` also reports the time to seal, and
//! the space as the file system counts it (blocks in use), since shared blocks are counted
//! once there and not in the logical sizes. `--clones never` takes page deltas there too
//! (the shadow's `--clones never`).

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bellwether_shadow::point::loopfs::{CowFs, LoopFs};
use bellwether_shadow::point::{run, Clones, Control, Retention, RunEvent};
use bellwether_shadow::sqlite::SqliteShadow;
use bellwether_shadow::{
    PointStore, Reason, RestoreRequest, Shadow, ShadowOptions, ShadowType, Source, Target,
    Timestamp,
};
use rusqlite::Connection;

fn opts(dir: &Path, db: &Path, ty: ShadowType) -> ShadowOptions {
    ShadowOptions {
        dir: dir.to_owned(),
        source: Source::Path(db.to_owned()),
        shadow_type: ty,
        points_every: None,
        retention: Retention::default(),
        poll: None,
        clones: *CLONES.get().unwrap_or(&Clones::Auto),
    }
}

/// `--clones auto|never` (the shadow's choice on file systems that clone).
static CLONES: std::sync::OnceLock<Clones> = std::sync::OnceLock::new();

fn writer(db: &Path) -> Connection {
    let c = Connection::open(db).unwrap();
    c.busy_timeout(Duration::from_secs(30)).unwrap();
    c.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
        .unwrap();
    c.execute_batch("PRAGMA synchronous=NORMAL; CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, body BLOB)")
        .unwrap();
    c
}

/// A database of about `mib` MiB: rows of 1000 random bytes.
fn fill(db: &Path, mib: u64) -> u64 {
    let c = writer(db);
    let rows = mib * 1024 * 1024 / 1100;
    c.execute_batch("BEGIN").unwrap();
    {
        let mut st = c
            .prepare("INSERT INTO t(id, body) VALUES (?1, randomblob(1000))")
            .unwrap();
        for i in 1..=rows {
            st.execute([i]).unwrap();
        }
    }
    c.execute_batch("COMMIT; PRAGMA wal_checkpoint(TRUNCATE)")
        .unwrap();
    rows
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn rpo(base: &Path) {
    let db = base.join("rpo.db");
    let dir = base.join("rpo-shadow");
    fill(&db, 8);
    let mut shadow = SqliteShadow::start(&opts(&dir, &db, ShadowType::Transactional)).unwrap();
    let ctl = Arc::new(Control::new());
    let (tx, rx) = mpsc::channel::<(u64, Timestamp)>();
    let runner = {
        let ctl = ctl.clone();
        std::thread::spawn(move || {
            let mut total = 0;
            run(&mut shadow, None, &ctl, &mut |e| {
                if let RunEvent::Synced(s) = e {
                    total += s.commits;
                    let _ = tx.send((total, Timestamp::now()));
                }
            })
            .unwrap();
        })
    };
    let n = 3000u64;
    let c = writer(&db);
    let mut ends = Vec::with_capacity(n as usize);
    for i in 0..n {
        c.execute(
            "INSERT INTO t(id, body) VALUES (?1, randomblob(200))",
            [10_000_000 + i],
        )
        .unwrap();
        ends.push(Timestamp::now());
        std::thread::sleep(Duration::from_millis(2));
    }
    // Durable times per commit number.
    let mut durable = Vec::with_capacity(n as usize);
    while (durable.len() as u64) < n {
        let (total, at) = rx.recv().unwrap();
        while (durable.len() as u64) < total.min(n) {
            durable.push(at);
        }
    }
    ctl.stop();
    runner.join().unwrap();
    drop(c);
    let mut lat: Vec<f64> = ends
        .iter()
        .zip(&durable)
        .map(|(e, d)| (d.0 - e.0) as f64 / 1000.0)
        .collect();
    println!(
        "rpo: {n} commits, one every ~2 ms, poll 10 ms: commit -> durable in the shadow's log p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99),
        pct(&mut lat, 1.0)
    );
}

fn dir_size(p: &Path) -> u64 {
    PointStore::open(p).unwrap().disk_usage().unwrap()
}

/// Bytes in use on the file system holding `p` (blocks, shared ones once).
fn fs_used(p: &Path) -> u64 {
    bellwether_shadow::point::loopfs::blocks_in_use(p).unwrap()
}

/// The file system type of `p` and the 1-minute load average, for each result line.
fn label(p: &Path) -> String {
    let fs = std::process::Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(p)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split(' ').next().map(str::to_string))
        .unwrap_or_default();
    let cow = if bellwether_shadow::point::cow_supported(p) {
        "clones"
    } else {
        "no clones"
    };
    format!("[{fs}, {cow}, load {load}]")
}

/// How `points` takes its points: a differential shadow's images, or a transactional
/// shadow's, from its commit log where it can (`log`) or always as images (`images`: the
/// same shadow with [`SqliteShadow::set_log_point_limit`] at 0, the comparison).
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Differential,
    Log,
    Images,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Differential => "differential",
            Mode::Log => "transactional, points from the log",
            Mode::Images => "transactional, every point an image",
        }
    }
}

fn points(base: &Path, mib: u64, mode: Mode) {
    for clustered in [true, false] {
        let label = if clustered { "contiguous" } else { "random" };
        let db = base.join(format!("points-{label}.db"));
        let dir = base.join(format!("points-{label}-shadow"));
        let _ = std::fs::remove_file(&db);
        let _ = std::fs::remove_dir_all(&dir);
        let rows = fill(&db, mib);
        let data = std::fs::metadata(&db).unwrap().len();
        let t = Instant::now();
        let ty = if mode == Mode::Differential {
            ShadowType::Differential
        } else {
            ShadowType::Transactional
        };
        let mut shadow = SqliteShadow::start(&opts(&dir, &db, ty)).unwrap();
        if mode == Mode::Images {
            shadow.set_log_point_limit(0);
        }
        let base_ms = t.elapsed().as_secs_f64() * 1000.0;
        let mut follow = Vec::new();
        let mut refresh = Vec::new();
        let mut from_log = 0;
        let c = writer(&db);
        let churn = rows / 100;
        let mut times = Vec::new();
        let mut seals = Vec::new();
        let mut stored = Vec::new();
        shadow.store().wait_sealed();
        let used_before = fs_used(base);
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..24u64 {
            c.execute_batch("BEGIN").unwrap();
            {
                let mut st = c
                    .prepare("UPDATE t SET body = randomblob(1000) WHERE id = ?1")
                    .unwrap();
                for k in 0..churn {
                    let id = if clustered {
                        (round * churn + k) % rows + 1
                    } else {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        seed % rows + 1
                    };
                    st.execute([id]).unwrap();
                }
            }
            c.execute_batch("COMMIT").unwrap();
            if ty == ShadowType::Transactional {
                // What the follower does every 10 ms between points: log the commit.
                let t = Instant::now();
                while shadow.sync().unwrap().commits > 0 {}
                follow.push(t.elapsed().as_secs_f64() * 1000.0);
                if shadow.image_due() {
                    // What the run loop does when the log since the last image passed the
                    // bound and no point is asked for: a new image.
                    let t = Instant::now();
                    shadow.take_point(Reason::Base).unwrap();
                    refresh.push(t.elapsed().as_secs_f64() * 1000.0);
                    tracing::debug!(round, ms = refresh[refresh.len() - 1], "image");
                    if std::env::var_os("SEAL_WAIT").is_some() {
                        shadow.store().wait_sealed();
                    }
                }
            }
            let t = Instant::now();
            let m = shadow.take_point(Reason::Schedule).unwrap();
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            tracing::debug!(round, ms = times[times.len() - 1], "point");
            from_log += usize::from(m.from_log.is_some());
            if !m.clones.is_empty() {
                shadow.store().wait_sealed();
                seals.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            stored.push(m.new_bytes as f64 / (1024.0 * 1024.0));
        }
        drop(c);
        shadow.store().wait_sealed();
        // Before the restores below replace the live file (a restored clone shares blocks).
        let used = fs_used(base).saturating_sub(used_before);
        let log_bytes: u64 = std::fs::read_dir(dir.join("log"))
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        let size = dir_size(&dir);
        let last_seq = shadow.store().points().unwrap().last().unwrap().seq;
        drop(shadow);
        // The restore of the base point and of the last one (base + 24 page deltas).
        let mut restore_s = Vec::new();
        for id in [1, last_seq] {
            restore_s.push(restore_to(&dir, &db, bellwether_shadow::PointId(id)).1);
        }
        let last = PointStore::open(&dir)
            .unwrap()
            .point(bellwether_shadow::PointId(last_seq))
            .unwrap();
        println!(
            "restore ({label}, {}): the base point {:.2} s, the last point ({}) {:.2} s",
            mode.name(),
            restore_s[0],
            match &last.from_log {
                Some(f) => format!(
                    "from the log: p{}'s image + {:.1} MiB of commits",
                    f.image,
                    f.log_bytes as f64 / (1024.0 * 1024.0)
                ),
                None => format!(
                    "base + {} page-delta objects",
                    last.entries.get(1).map_or(0, |e| e.objects.len())
                ),
            },
            restore_s[1]
        );
        if !follow.is_empty() {
            println!(
                "  following ({label}): logging a round's commit p50 {:.1} ms, max {:.1} ms; {from_log} of 24 points taken from the log; {} images the run loop took by itself{}",
                pct(&mut follow.clone(), 0.5),
                pct(&mut follow, 1.0),
                refresh.len(),
                if refresh.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (p50 {:.1} ms, max {:.1} ms)",
                        pct(&mut refresh.clone(), 0.5),
                        pct(&mut refresh, 1.0)
                    )
                }
            );
        }
        if !seals.is_empty() {
            println!(
                "  {} clone points: sealed (hashed) p50 {:.0} ms, max {:.0} ms after the point began",
                seals.len(),
                pct(&mut seals.clone(), 0.5),
                pct(&mut seals, 1.0),
            );
        }
        println!(
            "  file system blocks used by the points, their log and the churn: {} MiB ({:.2} x the data, the data itself not counted); the commit log: {} MiB",
            used / (1024 * 1024),
            used as f64 / data as f64,
            log_bytes / (1024 * 1024),
        );
        println!(
            "points {} [{}] ({label} 1% churn, {mib} MiB data, {} rows changed per round): base point {:.0} ms; a point: p50 {:.1} ms, max {:.1} ms, stores p50 {:.1} MiB; 24 points: shadow {:.2} x the data ({} MiB for {} MiB, logical sizes)",
            label_of(base),
            mode.name(),
            churn,
            base_ms,
            pct(&mut times.clone(), 0.5),
            pct(&mut times, 1.0),
            pct(&mut stored, 0.5),
            size as f64 / data as f64,
            size / (1024 * 1024),
            data / (1024 * 1024)
        );
    }
}

/// Overwrites 1 MiB of the live file, as a failing disk would.
fn corrupt(db: &Path) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(db).unwrap();
    f.write_all_at(&vec![0xA5; 1 << 20], 4096).unwrap();
}

/// Restores `dir`'s point `id` over `db`: the report and the seconds it took.
fn restore_to(
    dir: &Path,
    db: &Path,
    id: bellwether_shadow::PointId,
) -> (bellwether_shadow::RestoreReport, f64) {
    let t = Instant::now();
    let r = bellwether_shadow::restore(&RestoreRequest {
        dir: dir.to_owned(),
        target: Target::Point(id),
        dest: db.to_owned(),
        elsewhere: false,
    })
    .unwrap();
    (r, t.elapsed().as_secs_f64())
}

fn restore(base: &Path, mib: u64) {
    let db = base.join("restore.db");
    fill(&db, mib);
    let data = std::fs::metadata(&db).unwrap().len();
    for ty in [ShadowType::Full, ShadowType::Differential] {
        let dir = base.join(format!("restore-{ty}-shadow"));
        let t = Instant::now();
        let shadow = SqliteShadow::start(&opts(&dir, &db, ty)).unwrap();
        let point_ms = t.elapsed().as_millis();
        // Sealed before the restore, so the restore checks the clone's hash.
        let t = Instant::now();
        shadow.store().wait_sealed();
        let seal_ms = t.elapsed().as_millis();
        drop(shadow);
        corrupt(&db);
        let (r, total) = restore_to(&dir, &db, bellwether_shadow::PointId(1));
        let t = Instant::now();
        bellwether_shadow::sqlite::integrity_check(&db).unwrap();
        let check = t.elapsed().as_secs_f64();
        println!(
            "restore {} ({ty}, {} MiB): point {} ms (then sealed in {} ms); restore to the point {:.2} s (of which PRAGMA integrity_check about {:.2} s), {} bytes, checks {:?}",
            label_of(base),
            data / (1024 * 1024),
            point_ms,
            seal_ms,
            total,
            check,
            r.bytes,
            r.checks
        );
    }
}

/// A transactional shadow of MIB MiB; rounds of 1 % of rows updated at random, each logged,
/// until the log since the base image is within one round of the bound past which the
/// shadow takes an image; then a point (from the log), the live file corrupted, and a restore
/// to it: the image and that whole log replayed, the deepest restore such a point needs.
fn restore_log(base: &Path, mib: u64) {
    let db = base.join("restore-log.db");
    let dir = base.join("restore-log-shadow");
    let _ = std::fs::remove_file(&db);
    let _ = std::fs::remove_dir_all(&dir);
    let rows = fill(&db, mib);
    let data = std::fs::metadata(&db).unwrap().len();
    let mut shadow = SqliteShadow::start(&opts(&dir, &db, ShadowType::Transactional)).unwrap();
    let c = writer(&db);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut round_bytes = 0;
    let mut rounds = 0;
    while shadow.log_since_image() + round_bytes <= shadow.log_limit() {
        let before = shadow.log_since_image();
        c.execute_batch("BEGIN").unwrap();
        {
            let mut st = c
                .prepare("UPDATE t SET body = randomblob(1000) WHERE id = ?1")
                .unwrap();
            for _ in 0..rows / 100 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                st.execute([seed % rows + 1]).unwrap();
            }
        }
        c.execute_batch("COMMIT").unwrap();
        while shadow.sync().unwrap().commits > 0 {}
        round_bytes = shadow.log_since_image() - before;
        rounds += 1;
    }
    drop(c);
    let t = Instant::now();
    let m = shadow.take_point(Reason::OnDemand).unwrap();
    let point_ms = t.elapsed().as_secs_f64() * 1000.0;
    let from = m.from_log.clone().expect("a point from the log");
    shadow.store().wait_sealed();
    drop(shadow);
    corrupt(&db);
    let (r, total) = restore_to(&dir, &db, m.id());
    println!(
        "restore-log {} ({} MiB, {rounds} rounds of 1 % churn): point {:.1} ms, from the log: p{}'s image + {} commits, {:.1} MiB (bound {:.0} MiB); restore to it {:.2} s, {} commits replayed, checks {:?}",
        label_of(base),
        data / (1024 * 1024),
        point_ms,
        from.image,
        from.records,
        from.log_bytes as f64 / (1024.0 * 1024.0),
        bellwether_shadow::sqlite::log_point_limit(data) as f64 / (1024.0 * 1024.0),
        total,
        r.commits_replayed,
        r.checks
    );
}

fn label_of(p: &Path) -> String {
    label(p)
}

fn main() {
    // RUST_LOG=bellwether_shadow=debug prints what each point cost, by part.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let mut pos = Vec::new();
    let mut on: Vec<String> = Vec::new();
    let mut image_gib = 8u64;
    let mut modes = vec![Mode::Differential];
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--on" => on.extend(
                args.next()
                    .expect("--on LIST")
                    .split(',')
                    .map(str::to_string),
            ),
            "--type" => {
                modes = match args.next().as_deref() {
                    Some("differential") => vec![Mode::Differential],
                    Some("transactional") => vec![Mode::Log, Mode::Images],
                    other => panic!("--type differential|transactional, not {other:?}"),
                }
            }
            "--clones" => {
                let c = args
                    .next()
                    .and_then(|s| s.parse::<Clones>().ok())
                    .expect("--clones auto|never");
                CLONES.set(c).expect("--clones once");
            }
            "--image-gib" => {
                image_gib = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .expect("--image-gib N")
            }
            _ => pos.push(a),
        }
    }
    let what = pos.first().cloned().unwrap_or_else(|| "all".into());
    let mib: Option<u64> = pos.get(1).map(|s| s.parse().expect("MIB is a number"));
    if on.is_empty() {
        on.push(std::env::temp_dir().display().to_string());
    }
    for place in on {
        // A loop mount made here, or a directory used as it is.
        let (_mount, root) = match place.parse::<CowFs>() {
            Ok(fs) => {
                let work = tempfile::tempdir().unwrap().keep();
                let m = LoopFs::mount(fs, &work.join("fs.img"), &work.join("mnt"), image_gib << 30)
                    .unwrap_or_else(|e| panic!("{e}"));
                let root = m.path().to_owned();
                (Some((m, work)), root)
            }
            Err(_) => (None, PathBuf::from(place)),
        };
        let base: PathBuf = tempfile::tempdir_in(&root).unwrap().keep();
        println!(
            "shadow_bench on {} cores; data in {} {}",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            base.display(),
            label(&base)
        );
        match what.as_str() {
            "rpo" => rpo(&base),
            "points" => {
                for &mode in &modes {
                    points(&base, mib.unwrap_or(256), mode);
                }
            }
            "restore" => restore(&base, mib.unwrap_or(1024)),
            "restore-log" => restore_log(&base, mib.unwrap_or(1024)),
            "head-write" => head_write(&base),
            "all" => {
                rpo(&base);
                for &mode in &modes {
                    points(&base, mib.unwrap_or(256), mode);
                }
                restore(&base, mib.unwrap_or(1024));
            }
            other => panic!(
                "unknown benchmark {other}: rpo, points, restore, restore-log, head-write or all"
            ),
        }
        let _ = std::fs::remove_dir_all(&base);
        if let Some((m, work)) = _mount {
            drop(m);
            let _ = std::fs::remove_dir_all(work);
        }
    }
}

/// Rewriting a small file after every point: renamed over, in place, or a new name each
/// time, while another thread keeps the file system busy with random writes and fsyncs.
fn head_write(base: &Path) {
    use std::io::Write;
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let dir = base.join("points");
    std::fs::create_dir_all(&dir).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let (stop, path) = (stop.clone(), base.join("db"));
        std::thread::spawn(move || {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .unwrap();
            f.set_len(256 << 20).unwrap();
            let block = [0x5au8; 4096];
            let mut seed = 0x2545_f491_4f6c_dd1du64;
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..64 {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    f.write_all_at(&block, (seed % 65536) * 4096).unwrap();
                }
                f.sync_all().unwrap();
            }
        })
    };
    let sync_dir = |d: &Path| std::fs::File::open(d).unwrap().sync_all().unwrap();
    let body = |i: u64| {
        let mut b = format!("{{\"seq\":{i},\"checksum\":\"{}\"}}\n", "ab".repeat(32)).into_bytes();
        b.resize(256, b' ');
        b
    };
    let head = dir.join("HEAD2");
    let in_place = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&head)
        .unwrap();
    // A file the file system does not copy on write (`chattr +C`, set while it is empty;
    // ignored where there is no such flag), written once so its blocks are allocated, then
    // 64 KiB written over in place: what a journal of manifests would cost.
    let nocow_path = dir.join("journal");
    let nocow = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&nocow_path)
        .unwrap();
    let _ = std::process::Command::new("chattr")
        .arg("+C")
        .arg(&nocow_path)
        .status();
    let slot = vec![0x6bu8; 64 << 10];
    for k in 0..16u64 {
        nocow.write_all_at(&slot, k * (64 << 10)).unwrap();
    }
    nocow.sync_all().unwrap();
    let mut times: [Vec<f64>; 4] = Default::default();
    // Let the churn start.
    std::thread::sleep(std::time::Duration::from_secs(2));
    for i in 0..150u64 {
        let t = Instant::now();
        let tmp = dir.join(".HEAD.tmp");
        let mut f = std::fs::File::create(&tmp).unwrap();
        f.write_all(&body(i)).unwrap();
        f.sync_all().unwrap();
        drop(f);
        std::fs::rename(&tmp, dir.join("HEAD")).unwrap();
        sync_dir(&dir);
        times[0].push(t.elapsed().as_secs_f64() * 1000.0);

        let t = Instant::now();
        in_place.write_all_at(&body(i), 0).unwrap();
        in_place.sync_data().unwrap();
        times[1].push(t.elapsed().as_secs_f64() * 1000.0);

        let t = Instant::now();
        let tmp = dir.join(".m.tmp");
        let mut f = std::fs::File::create(&tmp).unwrap();
        f.write_all(&[b'x'; 900]).unwrap();
        f.sync_all().unwrap();
        drop(f);
        std::fs::rename(&tmp, dir.join(format!("{i:010}.json"))).unwrap();
        sync_dir(&dir);
        times[2].push(t.elapsed().as_secs_f64() * 1000.0);

        let t = Instant::now();
        nocow.write_all_at(&slot, (i % 16) * (64 << 10)).unwrap();
        nocow.sync_data().unwrap();
        times[3].push(t.elapsed().as_secs_f64() * 1000.0);
        // Points are not back to back.
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    churn.join().unwrap();
    for (name, t) in [
        "renamed over (write, fsync, rename, directory fsync)",
        "in place (pwrite, fdatasync)",
        "a new name (write, fsync, rename, directory fsync)",
        "64 KiB in place in a file without copy-on-write (chattr +C; pwrite, fdatasync)",
    ]
    .iter()
    .zip(times.iter_mut())
    {
        println!(
            "head-write {}: {name}: p50 {:.2} ms, p90 {:.2} ms, max {:.2} ms",
            label(base),
            pct(&mut t.clone(), 0.5),
            pct(&mut t.clone(), 0.9),
            pct(t, 1.0)
        );
    }
}
