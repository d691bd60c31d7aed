//! The chaos drill behind `bellwether shadow drill`: a real writer process (a SQLite database
//! in WAL mode or a directory under churn, [`writer`]), a shadow kept of its data with points
//! taken on a schedule and when a failure is "predicted", a fault injected (bytes of the live
//! data overwritten, the writer killed with SIGKILL in the middle of a transaction, or the
//! disk filled up), a restore to the latest point before the fault, and a check of the
//! restored data against the writer's own log ([`check`]): no corrupt restore, no transaction
//! committed before the point lost, none begun after it present.
//!
//! Each run is reproduced by its seed: the fault, the number of commits between points, the
//! bytes overwritten and the writer's data all derive from it.
//!
//! What the drill must never do: touch anything outside its own work directory (the tmpfs it
//! mounts for the disk-full fault is inside it and unmounted at the end of the run).

pub mod check;
pub mod rng;
pub mod tmpfs;
pub mod writer;

use std::ffi::OsString;
use std::fs;
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use std::sync::Arc;

use crate::dir;
use crate::point::{
    self, Control, Reason, Resource, ResourceKind, RestoreRequest, Retention, RunEvent,
    ShadowError, ShadowOptions, ShadowType, Source, Target, Timestamp,
};
use check::{check_dir, check_sqlite, Verdict, WriterLog};
use rng::{noise, Rng};
pub use writer::WriterKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// Bytes of the live data overwritten in place.
    Corrupt,
    /// SIGKILL to the writer in the middle of a transaction.
    KillWriter,
    /// The live data's file system filled up (by another file) under the writer.
    DiskFull,
}

impl Fault {
    pub const ALL: [Fault; 3] = [Fault::Corrupt, Fault::KillWriter, Fault::DiskFull];
}

/// A point as the shadow took it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TakenPoint {
    pub id: String,
}

/// What a restore brought back: the point, and the window the restored state lies in (every
/// transaction committed before its start is in it, none begun after its end), in ns since
/// the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub point: String,
    pub window_ns: (i64, i64),
}

/// The shadow under test, one kind behind one trait.
pub trait DrillShadow {
    fn take_point(&mut self, reason: Reason) -> Result<TakenPoint, String>;
    /// Restores the live data to the latest consistent state at or before `t_ns`.
    fn restore_to(&mut self, t_ns: i64) -> Result<Restored, String>;
}

/// A shadow started through its kind's [`Resource`] and driven by [`point::run`] in a
/// thread of its own, as `bellwether shadow start` drives it; points are asked of it through
/// its [`Control`], restores go through the kind's [`Resource::restore`].
pub struct LiveShadow {
    resource: &'static dyn Resource,
    dir: PathBuf,
    dest: PathBuf,
    ctl: Arc<Control>,
    events: mpsc::Receiver<RunEvent>,
    thread: Option<std::thread::JoinHandle<Result<(), ShadowError>>>,
    /// Failures the shadow's loop reported that did not stop it (retention).
    pub warnings: Vec<String>,
}

impl LiveShadow {
    pub fn start(
        kind: ResourceKind,
        source: &Path,
        dir: &Path,
        shadow_type: ShadowType,
    ) -> Result<LiveShadow, String> {
        let resource =
            crate::resource(kind).ok_or_else(|| format!("this build has no {kind} shadow"))?;
        let mut shadow = resource
            .start(&ShadowOptions {
                dir: dir.to_path_buf(),
                source: Source::Path(source.to_path_buf()),
                shadow_type,
                points_every: None,
                retention: Retention::default(),
                poll: None,
                clones: crate::point::Clones::Auto,
            })
            .map_err(|e| e.to_string())?;
        let ctl = Arc::new(Control::new());
        let (tx, rx) = mpsc::channel();
        let c = ctl.clone();
        let thread = std::thread::spawn(move || {
            point::run(&mut *shadow, None, &c, &mut |ev: &RunEvent| {
                let _ = tx.send(ev.clone());
            })
        });
        Ok(LiveShadow {
            resource,
            dir: dir.to_path_buf(),
            dest: source.to_path_buf(),
            ctl,
            events: rx,
            thread: Some(thread),
            warnings: Vec::new(),
        })
    }
}

impl DrillShadow for LiveShadow {
    fn take_point(&mut self, reason: Reason) -> Result<TakenPoint, String> {
        self.ctl.request_point(reason);
        loop {
            match self.events.recv_timeout(WRITER_STALL) {
                Ok(RunEvent::Point(m)) => {
                    return Ok(TakenPoint {
                        id: m.id().to_string(),
                    })
                }
                // Retention runs after each point; its failure does not fail the next point
                // (the loop goes on), but the drill keeps it.
                Ok(RunEvent::Failed(e)) if e.starts_with("retention:") => self.warnings.push(e),
                Ok(RunEvent::Failed(e)) => return Err(e),
                Ok(_) => {}
                Err(_) => return Err(format!("the shadow took no point in {WRITER_STALL:?}")),
            }
        }
    }

    fn restore_to(&mut self, t_ns: i64) -> Result<Restored, String> {
        let r = self
            .resource
            .restore(&RestoreRequest {
                dir: self.dir.clone(),
                target: Target::Time(Timestamp::from_micros(t_ns.div_euclid(1000))),
                dest: self.dest.clone(),
                elsewhere: false,
            })
            .map_err(|e| e.to_string())?;
        Ok(Restored {
            point: r.point.to_string(),
            window_ns: (
                r.point_taken_at.as_micros() * 1000,
                r.restored_to.as_micros() * 1000 + 999,
            ),
        })
    }
}

impl Drop for LiveShadow {
    fn drop(&mut self) {
        self.ctl.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The options of [`run`].
#[derive(Debug, Clone)]
pub struct DrillOptions {
    pub kinds: Vec<WriterKind>,
    pub faults: Vec<Fault>,
    pub runs: u32,
    pub seed: u64,
    /// How to start the writer: the program and its first arguments; the drill appends
    /// `--writer-kind K --writer-target PATH --writer-log PATH --writer-seed N`.
    pub writer: Vec<OsString>,
    /// Where each run makes its own directory (removed after the run).
    pub work_dir: PathBuf,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RunReport {
    pub run: u32,
    pub seed: u64,
    pub kind: WriterKind,
    pub fault: Fault,
    pub shadow_type: String,
    pub points_taken: u32,
    pub predicted_point: Option<String>,
    pub restored_point: Option<String>,
    /// Commits the writer had announced when the fault came.
    pub commits_at_fault: u64,
    /// For disk-full: whether the writer itself ran into the full disk.
    pub writer_hit_full_disk: Option<bool>,
    /// The writer's last words when it ended by itself (`E k full …`).
    pub writer_ended: Option<String>,
    /// For disk-full: the restore tried while the disk was still full, and whether the live
    /// data was untouched after it (when it failed).
    pub restore_on_full_disk: Option<String>,
    pub live_untouched_after_failed_restore: Option<bool>,
    pub restore_ms: Option<f64>,
    pub verdict: Option<Verdict>,
    /// Why the point after the fault could not be taken, when it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub point_after_fault_failed: Option<String>,
    /// What the shadow's loop reported without stopping (retention failures).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shadow_warnings: Vec<String>,
    /// A run that could not be carried out (not a verdict on the shadow).
    pub error: Option<String>,
}

impl RunReport {
    pub fn corrupt(&self) -> bool {
        self.verdict.as_ref().is_some_and(|v| !v.corrupt.is_empty())
            || self.live_untouched_after_failed_restore == Some(false)
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct DrillReport {
    pub runs: u32,
    pub seed: u64,
    pub corrupt_restores: u32,
    pub lost_commits: u64,
    pub after_point: u64,
    pub committed_before_points: u64,
    pub failed_runs: u32,
    pub by_fault: Vec<(Fault, u32)>,
    pub by_kind: Vec<(WriterKind, u32)>,
    pub restore_ms_median: Option<f64>,
    pub restore_ms_max: Option<f64>,
    pub runs_detail: Vec<RunReport>,
}

impl DrillReport {
    /// The drill passed: every run carried out, no corrupt restore, nothing lost, nothing
    /// after the point.
    pub fn passed(&self) -> bool {
        self.failed_runs == 0
            && self.corrupt_restores == 0
            && self.lost_commits == 0
            && self.after_point == 0
    }
}

/// Runs the drill: `runs` runs, each with its own seed derived from `seed`.
pub fn run(opts: &DrillOptions, mut progress: impl FnMut(&RunReport)) -> DrillReport {
    let mut master = Rng::new(opts.seed);
    let mut runs = Vec::new();
    for i in 0..opts.runs {
        let seed = master.next_u64();
        let mut r = Rng::new(seed);
        let kind = opts.kinds[r.below(opts.kinds.len() as u64) as usize];
        let fault = opts.faults[r.below(opts.faults.len() as u64) as usize];
        let report = one_run(opts, i, seed, kind, fault);
        progress(&report);
        runs.push(report);
    }
    summarise(opts, runs)
}

fn summarise(opts: &DrillOptions, runs: Vec<RunReport>) -> DrillReport {
    let mut times: Vec<f64> = runs.iter().filter_map(|r| r.restore_ms).collect();
    times.sort_by(f64::total_cmp);
    let count_fault = |f: Fault| runs.iter().filter(|r| r.fault == f).count() as u32;
    let count_kind = |k: WriterKind| runs.iter().filter(|r| r.kind == k).count() as u32;
    DrillReport {
        runs: runs.len() as u32,
        seed: opts.seed,
        corrupt_restores: runs.iter().filter(|r| r.corrupt()).count() as u32,
        lost_commits: runs
            .iter()
            .filter_map(|r| r.verdict.as_ref())
            .map(|v| v.lost)
            .sum(),
        after_point: runs
            .iter()
            .filter_map(|r| r.verdict.as_ref())
            .map(|v| v.after_point)
            .sum(),
        committed_before_points: runs
            .iter()
            .filter_map(|r| r.verdict.as_ref())
            .map(|v| v.committed_before_point)
            .sum(),
        failed_runs: runs.iter().filter(|r| r.error.is_some()).count() as u32,
        by_fault: Fault::ALL.iter().map(|f| (*f, count_fault(*f))).collect(),
        by_kind: [WriterKind::Sqlite, WriterKind::Dir]
            .iter()
            .map(|k| (*k, count_kind(*k)))
            .collect(),
        restore_ms_median: times.get(times.len() / 2).copied(),
        restore_ms_max: times.last().copied(),
        runs_detail: runs,
    }
}

/// What the writer said on its standard output.
enum Event {
    Commit(u64),
    Ended(String),
}

struct WriterProc {
    child: Child,
    events: mpsc::Receiver<Event>,
    last: u64,
    ended: Option<String>,
}

/// How long the drill waits for the writer's next event before it calls the run failed: a
/// bound on a stuck writer, not a pace.
const WRITER_STALL: Duration = Duration::from_secs(60);

impl WriterProc {
    fn spawn(
        opts: &DrillOptions,
        kind: WriterKind,
        target: &Path,
        log: &Path,
        seed: u64,
        err: &Path,
    ) -> Result<WriterProc, String> {
        let (prog, args) = opts
            .writer
            .split_first()
            .ok_or_else(|| "no writer command".to_string())?;
        let stderr = fs::File::create(err).map_err(|e| format!("{}: {e}", err.display()))?;
        let mut child = Command::new(prog)
            .args(args)
            .arg("--writer-kind")
            .arg(match kind {
                WriterKind::Sqlite => "sqlite",
                WriterKind::Dir => "dir",
            })
            .arg("--writer-target")
            .arg(target)
            .arg("--writer-log")
            .arg(log)
            .arg("--writer-seed")
            .arg(seed.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("cannot start the writer {}: {e}", prog.to_string_lossy()))?;
        let stdout = child.stdout.take().ok_or("the writer has no stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let ev = match line.strip_prefix("C ").and_then(|k| k.parse().ok()) {
                    Some(k) => Event::Commit(k),
                    None => Event::Ended(line),
                };
                if tx.send(ev).is_err() {
                    return;
                }
            }
            let _ = tx.send(Event::Ended("exited".into()));
        });
        Ok(WriterProc {
            child,
            events: rx,
            last: 0,
            ended: None,
        })
    }

    /// Waits for `n` more commits; returns false when the writer ended first.
    fn commits(&mut self, n: u64) -> Result<bool, String> {
        let goal = self.last + n;
        while self.last < goal {
            if self.ended.is_some() {
                return Ok(false);
            }
            match self.events.recv_timeout(WRITER_STALL) {
                Ok(Event::Commit(k)) => self.last = k,
                Ok(Event::Ended(why)) => {
                    self.ended.get_or_insert(why);
                }
                Err(_) => {
                    return Err(format!(
                        "the writer stalled for {WRITER_STALL:?} after commit {}",
                        self.last
                    ))
                }
            }
        }
        Ok(true)
    }

    /// Takes in every event already sent, without waiting, so `last` is the writer's latest
    /// announced commit.
    fn drain(&mut self) {
        while let Ok(ev) = self.events.try_recv() {
            match ev {
                Event::Commit(k) => self.last = k,
                Event::Ended(why) => {
                    self.ended.get_or_insert(why);
                }
            }
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for WriterProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The SHA-256 of everything under `root`: names, types, modes and contents.
pub fn digest_tree(root: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let mut h = Sha256::new();
    let mut stack = vec![root.to_path_buf()];
    let mut all = Vec::new();
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if let Ok(m) = fs::symlink_metadata(&p) {
                if m.is_dir() {
                    stack.push(p.clone());
                }
                all.push((p, m.mode()));
            }
        }
    }
    all.sort();
    for (p, mode) in all {
        h.update(p.as_os_str().as_encoded_bytes());
        h.update(mode.to_le_bytes());
        if let Ok(bytes) = fs::read(&p) {
            h.update(Sha256::digest(&bytes));
        } else if let Ok(t) = fs::read_link(&p) {
            h.update(t.as_os_str().as_encoded_bytes());
        }
    }
    hex::encode(h.finalize())
}

const TMPFS_BYTES: u64 = 48 << 20;

fn one_run(opts: &DrillOptions, i: u32, seed: u64, kind: WriterKind, fault: Fault) -> RunReport {
    let mut report = RunReport {
        run: i,
        seed,
        kind,
        fault,
        shadow_type: String::new(),
        points_taken: 0,
        predicted_point: None,
        restored_point: None,
        commits_at_fault: 0,
        writer_hit_full_disk: None,
        writer_ended: None,
        restore_on_full_disk: None,
        live_untouched_after_failed_restore: None,
        restore_ms: None,
        verdict: None,
        shadow_warnings: Vec::new(),
        point_after_fault_failed: None,
        error: None,
    };
    let work = opts
        .work_dir
        .join(format!("bw-drill-{}-{i}-{seed:016x}", std::process::id()));
    if let Err(e) = run_in(opts, &work, seed, kind, fault, &mut report) {
        report.error = Some(e);
    }
    let _ = fs::remove_dir_all(&work);
    report
}

fn run_in(
    opts: &DrillOptions,
    work: &Path,
    seed: u64,
    kind: WriterKind,
    fault: Fault,
    report: &mut RunReport,
) -> Result<(), String> {
    let mut rng = Rng::new(seed ^ 0x5eed);
    fs::create_dir_all(work).map_err(|e| format!("{}: {e}", work.display()))?;
    let _fs = if fault == Fault::DiskFull {
        Some(tmpfs::Tmpfs::mount(&work.join("small-fs"), TMPFS_BYTES)?)
    } else {
        None
    };
    let base = if fault == Fault::DiskFull {
        work.join("small-fs")
    } else {
        work.to_path_buf()
    };
    let live = base.join("live");
    fs::create_dir_all(&live).map_err(|e| format!("{}: {e}", live.display()))?;
    let target = match kind {
        WriterKind::Sqlite => live.join("db.sqlite"),
        WriterKind::Dir => live.clone(),
    };
    let log = work.join("writer.log");
    let shadow_dir = work.join("shadow");
    fs::create_dir_all(&shadow_dir).map_err(|e| format!("{}: {e}", shadow_dir.display()))?;
    // Directories: full or differential; SQLite also transactional (every commit logged).
    let stype = match (kind, rng.below(3)) {
        (_, 0) => ShadowType::Full,
        (WriterKind::Sqlite, 2) => ShadowType::Transactional,
        _ => ShadowType::Differential,
    };
    report.shadow_type = stype.to_string();
    let mut w = WriterProc::spawn(opts, kind, &target, &log, seed, &work.join("writer.err"))?;
    if !w.commits(rng.range(3, 12))? {
        return Err(format!(
            "the writer ended before the drill began: {:?}",
            w.ended
        ));
    }
    let (rkind, source) = match kind {
        WriterKind::Sqlite => (ResourceKind::Sqlite, target.clone()),
        WriterKind::Dir => (ResourceKind::Dir, live.clone()),
    };
    let mut shadow = LiveShadow::start(rkind, &source, &shadow_dir, stype)?;
    let take = |shadow: &mut LiveShadow,
                reason: Reason,
                report: &mut RunReport|
     -> Result<String, String> {
        let p = shadow.take_point(reason)?;
        report.points_taken += 1;
        Ok(p.id)
    };
    for _ in 0..rng.range(1, 3) {
        take(&mut shadow, Reason::Schedule, report)?;
        if !w.commits(rng.range(5, 25))? {
            return Err(format!("the writer ended before the fault: {:?}", w.ended));
        }
    }
    // The prediction: a failure expected a little later; a point is taken now for it.
    let predicted = take(
        &mut shadow,
        Reason::Predicted {
            source: "drill".into(),
            failure_at: Timestamp::now().plus(Duration::from_millis(200)),
            probability: 0.9,
        },
        report,
    )?;
    report.predicted_point = Some(predicted);
    if !w.commits(rng.range(1, 10))? {
        return Err(format!("the writer ended before the fault: {:?}", w.ended));
    }
    w.drain();
    let fault_at = dir::now_ns();
    report.commits_at_fault = w.last;
    let mut ballast = None;
    match fault {
        Fault::KillWriter => {
            // Right after a commit was announced, the writer is inside the next transaction.
            w.kill();
        }
        Fault::Corrupt => {
            corrupt(kind, &target, &mut rng)?;
            let _ = w.commits(rng.range(0, 5))?;
        }
        Fault::DiskFull => {
            let b = base.join("ballast");
            fill(&b)?;
            ballast = Some(b);
            // The writer runs into the full disk at its next write that needs a new block (a
            // directory delete needs none).
            // A SQLite writer may go on for a while in the WAL's already allocated pages.
            w.drain();
            let _ = w.commits(20_000)?;
            report.writer_hit_full_disk =
                Some(w.ended.as_deref().is_some_and(|e| e.contains("full")));
        }
    }
    report.writer_ended = w.ended.clone();
    w.kill();
    // A point after the failure: the restore must not choose it. Taking it may fail (a SQLite
    // shadow cannot read a database whose disk is full); the run goes on without it.
    if let Err(e) = take(&mut shadow, Reason::Schedule, report) {
        report.point_after_fault_failed = Some(e);
    }

    let mut window = None;
    if let Some(b) = &ballast {
        let before = digest_tree(&live);
        let started = Instant::now();
        match shadow.restore_to(fault_at) {
            Ok(r) => {
                report.restore_on_full_disk = Some(format!("succeeded (point {})", r.point));
                report.restored_point = Some(r.point);
                report.restore_ms = Some(started.elapsed().as_secs_f64() * 1e3);
                window = Some(r.window_ns);
            }
            Err(e) => {
                report.restore_on_full_disk = Some(format!("failed: {e}"));
                report.live_untouched_after_failed_restore = Some(digest_tree(&live) == before);
            }
        }
        fs::remove_file(b).map_err(|e| format!("{}: {e}", b.display()))?;
    }
    let window = match window {
        Some(w) => w,
        None => {
            let started = Instant::now();
            let r = shadow.restore_to(fault_at)?;
            report.restore_ms = Some(started.elapsed().as_secs_f64() * 1e3);
            report.restored_point = Some(r.point);
            r.window_ns
        }
    };
    let restored = report.restored_point.clone().unwrap_or_default();
    let wlog = WriterLog::read(&log)?;
    let mut verdict = match kind {
        WriterKind::Sqlite => check_sqlite(&target, &wlog, seed, window),
        WriterKind::Dir => check_dir(&live, &wlog, seed, window),
    };
    if window.1 > fault_at + 999 {
        verdict
            .corrupt
            .push(format!("restored point {restored} ends after the fault"));
    }
    report.verdict = Some(verdict);
    report.shadow_warnings = std::mem::take(&mut shadow.warnings);
    Ok(())
}

/// Overwrites 256 bytes of the live data in place (a file of the directory, or the database).
fn corrupt(kind: WriterKind, target: &Path, rng: &mut Rng) -> Result<(), String> {
    let file = match kind {
        WriterKind::Sqlite => target.to_path_buf(),
        WriterKind::Dir => {
            let mut files = Vec::new();
            for s in 0..writer::DIR_SLOTS {
                let p = target.join(writer::slot_path(s));
                if p.is_file() {
                    files.push(p);
                }
            }
            if files.is_empty() {
                return Err("no file to corrupt".into());
            }
            files.swap_remove(rng.below(files.len() as u64) as usize)
        }
    };
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&file)
        .map_err(|e| format!("{}: {e}", file.display()))?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let at = rng.below(len.saturating_sub(256).max(1));
    f.seek(SeekFrom::Start(at))
        .and_then(|_| f.write_all(&noise(rng.next_u64(), 256)))
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("{}: {e}", file.display()))
}

/// Fills the file system of `path` with one file until it is full.
fn fill(path: &Path) -> Result<(), String> {
    let mut f = fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let block = vec![0xa5u8; 64 * 1024];
    loop {
        match f.write(&block) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(28) => return Ok(()),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
    }
}
