//! Restores: a new data directory beside the live one, built from a verified base backup plus
//! the shadow's WAL up to the target, started once to prove it reaches the target (recovery
//! with `recovery_target_action = 'promote'`), stopped, then either left where the caller
//! asked or swapped in for the live cluster's data directory (stop the live cluster, exchange
//! the two directories with one `renameat2(RENAME_EXCHANGE)`, start). On any error before the
//! exchange the live data directory is untouched; a restored cluster that fails to start
//! after it is exchanged back and the previous one started again.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::lsn::{pg_timestamp, SegmentName};
use super::proc::{as_user, chown_tree, is_root, owner_of, run, tail};
use super::receive::base_for_lsn;
use super::{
    base, list_bases, list_points, now_us, pg_dir, read_info, Lsn, PgBase, PgShadowError,
    PgShadowInfo, PgShadowType, PgTarget,
};

/// Where the restored data directory goes.
#[derive(Debug, Clone)]
pub enum RestoreMode {
    /// Leave it at `dest` (which must not exist) for a server the caller runs: point the
    /// server's `-D` / `data_directory` at it. `owner` is the OS user the server runs as
    /// (`postgres` when this process is root and none is given).
    Beside {
        dest: PathBuf,
        owner: Option<String>,
    },
    /// Swap it in for the cluster whose data directory is `data_dir` (its configuration must
    /// live inside it): stop with `pg_ctl stop -m fast`, exchange, start with `pg_ctl start
    /// -l log_file` (`data_dir/log/bellwether-restore.log` when `None`), as the directory's
    /// owner. The previous directory stays beside it as `NAME.before-restore-TIME`.
    Swap {
        data_dir: PathBuf,
        log_file: Option<PathBuf>,
    },
}

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub shadow_dir: PathBuf,
    pub target: PgTarget,
    pub mode: RestoreMode,
    /// PostgreSQL's programs; found from the shadowed server's version when `None`.
    pub bindir: Option<PathBuf>,
    /// How long the verification start may take to reach the target.
    pub timeout: Duration,
}

impl RestoreOptions {
    pub fn new(shadow_dir: impl Into<PathBuf>, target: PgTarget, mode: RestoreMode) -> Self {
        RestoreOptions {
            shadow_dir: shadow_dir.into(),
            target,
            mode,
            bindir: None,
            timeout: Duration::from_secs(600),
        }
    }
}

/// What a restore did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RestoreReport {
    /// The data directory now holding the restored cluster.
    pub data_dir: PathBuf,
    /// The previous data directory, kept beside it (swap).
    pub previous: Option<PathBuf>,
    pub base: String,
    /// The recovery target as PostgreSQL was given it.
    pub recovery_target: String,
    pub wal_segments: usize,
    /// A time target past the last commit in the shadow: everything shadowed was replayed
    /// (every commit in it is at or before the time).
    pub replayed_to_end: bool,
    pub build_ms: u64,
    pub verify_ms: u64,
    pub swap_ms: u64,
    /// How to start the restored cluster (beside) or how it was started (swap).
    pub how_to_start: String,
}

/// What PostgreSQL is told to stop at.
#[derive(Debug, Clone, PartialEq)]
enum Recovery {
    /// `recovery_target = 'immediate'`: the base backup's consistent end.
    Immediate,
    Name(String),
    Lsn(Lsn),
    Time(i64),
    /// No target: replay every shadowed WAL record.
    End,
}

impl Recovery {
    fn conf(&self) -> String {
        match self {
            Recovery::Immediate => "recovery_target = 'immediate'\n".into(),
            Recovery::Name(n) => format!("recovery_target_name = '{}'\n", n.replace('\'', "''")),
            Recovery::Lsn(l) => format!("recovery_target_lsn = '{l}'\n"),
            Recovery::Time(t) => format!("recovery_target_time = '{}'\n", pg_timestamp(*t)),
            Recovery::End => String::new(),
        }
    }

    fn describe(&self) -> String {
        match self {
            Recovery::Immediate => "immediate (the base backup's end)".into(),
            Recovery::Name(n) => format!("restore point {n}"),
            Recovery::Lsn(l) => format!("LSN {l}"),
            Recovery::Time(t) => format!("time {}", pg_timestamp(*t)),
            Recovery::End => "end of the shadowed WAL".into(),
        }
    }
}

const MARK: &str = "\n# bellwether restore (removed once the restored copy reached its target)\n";
const STAGE: &str = "bw_restore_wal";
const LOG: &str = "bw_restore.log";

/// Restores the shadow in `opts.shadow_dir` to `opts.target` (see the module's documentation).
pub async fn restore(opts: &RestoreOptions) -> Result<RestoreReport, PgShadowError> {
    let info = read_info(&opts.shadow_dir)?.ok_or_else(|| PgShadowError::BadShadow {
        path: opts.shadow_dir.clone(),
        message: "not a PostgreSQL shadow (no pg/shadow-pg.json)".into(),
    })?;
    let bindir = match &opts.bindir {
        Some(b) => b.clone(),
        None => bellwether_pg::find_bindir(info.server_version_num, None)?,
    };
    let bases = list_bases(&opts.shadow_dir)?;
    let (base, recovery, upper) = resolve(opts, &info, &bases)?;

    // Where the restored copy is built, and as whom the server runs.
    let (live, owner) = match &opts.mode {
        RestoreMode::Beside { dest, owner } => {
            if dest.exists() {
                return Err(PgShadowError::BadDestination {
                    path: dest.clone(),
                    message: "exists already; a restore beside writes a new directory".into(),
                });
            }
            let owner = match owner {
                Some(o) => Some(o.clone()),
                None if is_root() => Some("postgres".to_string()),
                None => None,
            };
            (dest.clone(), owner)
        }
        RestoreMode::Swap { data_dir, .. } => {
            check_live(&bindir, data_dir, &info)?;
            if !base::path_of(&pg_dir(&opts.shadow_dir).join("base"), &base.id)
                .join("postgresql.conf")
                .is_file()
            {
                return Err(PgShadowError::BadDestination {
                    path: data_dir.clone(),
                    message: "the shadowed server keeps its configuration outside its data directory; restore beside it and point the server at the restored directory".into(),
                });
            }
            (data_dir.clone(), Some(owner_of(data_dir)?))
        }
    };
    let parent = live
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = live
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".into());
    let stamp = now_us();
    let work = parent.join(format!(".{name}.bw-restore-{stamp}"));

    let started = Instant::now();
    verify_base(&bindir, &opts.shadow_dir, &base)?;
    let mut attempt = build(
        opts,
        &info,
        &base,
        &recovery,
        upper,
        &work,
        owner.as_deref(),
    );
    let mut build_ms = started.elapsed().as_millis() as u64;
    let mut verify_ms = 0;
    let mut replayed_to_end = false;
    let mut used = recovery.clone();
    let wal_segments = match attempt {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&work);
            return Err(e);
        }
    };
    let v = Instant::now();
    let mut verified = verify(&bindir, &work, owner.as_deref(), &used, opts.timeout).await;
    if let (Err(PgShadowError::TargetNotReached { .. }), Recovery::Time(_)) = (&verified, &recovery)
    {
        // No commit after the time was shadowed: every commit the shadow holds is at or
        // before it, so the whole shadowed WAL is the answer.
        let _ = std::fs::remove_dir_all(&work);
        used = Recovery::End;
        replayed_to_end = true;
        let b = Instant::now();
        attempt = build(opts, &info, &base, &used, None, &work, owner.as_deref());
        build_ms += b.elapsed().as_millis() as u64;
        if let Err(e) = attempt {
            let _ = std::fs::remove_dir_all(&work);
            return Err(e);
        }
        verified = verify(&bindir, &work, owner.as_deref(), &used, opts.timeout).await;
    }
    verify_ms += v.elapsed().as_millis() as u64;
    if let Err(e) = verified.and_then(|_| finish(&work, &info, &opts.shadow_dir, stamp)) {
        let _ = std::fs::remove_dir_all(&work);
        return Err(e);
    }

    let s = Instant::now();
    let (data_dir, previous, how_to_start) = match &opts.mode {
        RestoreMode::Beside { dest, .. } => {
            std::fs::rename(&work, dest).map_err(|e| PgShadowError::io("renaming", &work, e))?;
            let how = format!(
                "pg_ctl start -D {} (as {}), or set data_directory = '{}' in the server's configuration; it keeps the shadowed server's port and settings, so stop that server first or change the port",
                dest.display(),
                owner.clone().unwrap_or_else(|| "the server's user".into()),
                dest.display()
            );
            (dest.clone(), None, how)
        }
        RestoreMode::Swap { data_dir, log_file } => {
            let log = match log_file {
                Some(l) => l.clone(),
                None => data_dir.join("log").join("bellwether-restore.log"),
            };
            let previous = parent.join(format!("{name}.before-restore-{stamp}"));
            swap(
                &bindir,
                data_dir,
                &work,
                &previous,
                &log,
                owner.as_deref(),
                opts.timeout,
            )
            .await?;
            let how = format!(
                "started with pg_ctl start -D {} -l {}",
                data_dir.display(),
                log.display()
            );
            (data_dir.clone(), Some(previous), how)
        }
    };
    Ok(RestoreReport {
        data_dir,
        previous,
        base: base.id.clone(),
        recovery_target: used.describe(),
        wal_segments,
        replayed_to_end,
        build_ms,
        verify_ms,
        swap_ms: s.elapsed().as_millis() as u64,
        how_to_start,
    })
}

/// The base to start from, what to tell recovery, and the highest LSN the WAL must reach
/// (when known).
fn resolve(
    opts: &RestoreOptions,
    info: &PgShadowInfo,
    bases: &[PgBase],
) -> Result<(PgBase, Recovery, Option<Lsn>), PgShadowError> {
    let first = bases
        .first()
        .ok_or_else(|| PgShadowError::BeforeFirstPoint {
            dir: opts.shadow_dir.clone(),
            target: opts.target.to_string(),
            first: "none (the shadow holds no finished base backup)".into(),
        })?;
    let full = info.kind == PgShadowType::Full;
    match &opts.target {
        PgTarget::Point(id) => {
            let points = list_points(&opts.shadow_dir)?;
            let p =
                points
                    .iter()
                    .find(|p| &p.id == id)
                    .ok_or_else(|| PgShadowError::NoSuchPoint {
                        dir: opts.shadow_dir.clone(),
                        name: id.clone(),
                    })?;
            let base =
                bases
                    .iter()
                    .find(|b| b.id == p.base)
                    .ok_or_else(|| PgShadowError::BadShadow {
                        path: pg_dir(&opts.shadow_dir)
                            .join("base")
                            .join(format!("{}.json", p.base)),
                        message: format!(
                            "point {id} starts from base backup {} which is missing",
                            p.base
                        ),
                    })?;
            // A later base backup at or before the point replays less WAL.
            let base = if full {
                base
            } else {
                base_for_lsn(bases, p.lsn).unwrap_or(base)
            };
            let recovery = if base.id == p.id || base.end_lsn == p.lsn {
                Recovery::Immediate
            } else if let Some(n) = &p.restore_point {
                Recovery::Name(n.clone())
            } else {
                Recovery::Lsn(p.lsn)
            };
            Ok((base.clone(), recovery, Some(p.lsn)))
        }
        PgTarget::Time(t) => {
            let base = bases
                .iter()
                .rev()
                .find(|b| b.finished_at_us <= *t)
                .ok_or_else(|| PgShadowError::BeforeFirstPoint {
                    dir: opts.shadow_dir.clone(),
                    target: opts.target.to_string(),
                    first: format!(
                        "base backup {} finished at {}",
                        first.id,
                        pg_timestamp(first.finished_at_us)
                    ),
                })?;
            let recovery = if full {
                Recovery::Immediate
            } else {
                Recovery::Time(*t)
            };
            Ok((base.clone(), recovery, None))
        }
        PgTarget::Latest => {
            let base = bases.last().unwrap_or(first);
            let recovery = if full {
                Recovery::Immediate
            } else {
                Recovery::End
            };
            Ok((base.clone(), recovery, None))
        }
    }
}

/// The live data directory must be the shadowed cluster's (same system identifier).
fn check_live(bindir: &Path, data_dir: &Path, info: &PgShadowInfo) -> Result<(), PgShadowError> {
    if !data_dir.join("PG_VERSION").is_file() {
        return Err(PgShadowError::BadDestination {
            path: data_dir.to_path_buf(),
            message: "not a PostgreSQL data directory (no PG_VERSION)".into(),
        });
    }
    let out = std::process::Command::new(bindir.join("pg_controldata"))
        .arg("-D")
        .arg(data_dir)
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| PgShadowError::Program {
            program: "pg_controldata".into(),
            what: format!("reading {}", data_dir.display()),
            output: e.to_string(),
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let id = control_field(&text, "Database system identifier").ok_or_else(|| {
        PgShadowError::Program {
            program: "pg_controldata".into(),
            what: format!("reading {}", data_dir.display()),
            output: tail(
                &format!("{text}{}", String::from_utf8_lossy(&out.stderr)),
                600,
            ),
        }
    })?;
    if id != info.system_identifier {
        return Err(PgShadowError::OtherDatabase {
            dir: data_dir.to_path_buf(),
            theirs: format!("the cluster with system identifier {id}"),
            ours: format!(
                "the shadow's {} (system identifier {})",
                info.source, info.system_identifier
            ),
        });
    }
    Ok(())
}

fn control_field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        l.strip_prefix(key)
            .and_then(|r| r.strip_prefix(':'))
            .map(|v| v.trim().to_string())
    })
}

/// `pg_verifybackup` of the base (every file's SHA-256 against its manifest, and its WAL).
fn verify_base(bindir: &Path, shadow: &Path, base: &PgBase) -> Result<(), PgShadowError> {
    let path = base::path_of(&pg_dir(shadow).join("base"), &base.id);
    let out = std::process::Command::new(bindir.join("pg_verifybackup"))
        .arg("-q")
        .arg(&path)
        .output()
        .map_err(|e| PgShadowError::Program {
            program: "pg_verifybackup".into(),
            what: format!("checking {}", path.display()),
            output: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(PgShadowError::DamagedBase {
            dir: shadow.to_path_buf(),
            base: base.id.clone(),
            message: tail(
                &format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
                800,
            ),
        });
    }
    Ok(())
}

/// Copies the base into `work`, stages the WAL it needs and writes the recovery settings.
/// Returns the number of WAL segments staged.
fn build(
    opts: &RestoreOptions,
    info: &PgShadowInfo,
    base: &PgBase,
    recovery: &Recovery,
    upper: Option<Lsn>,
    work: &Path,
    owner: Option<&str>,
) -> Result<usize, PgShadowError> {
    let from = base::path_of(&pg_dir(&opts.shadow_dir).join("base"), &base.id);
    base::copy_tree(&from, work)?;
    let manifest = work.join("backup_manifest");
    if manifest.exists() {
        std::fs::remove_file(&manifest).map_err(|e| PgShadowError::io("removing", &manifest, e))?;
    }
    let stage = work.join(STAGE);
    std::fs::create_dir(&stage).map_err(|e| PgShadowError::io("creating", &stage, e))?;
    let segments = if *recovery == Recovery::Immediate {
        0
    } else {
        stage_wal(
            &opts.shadow_dir,
            info,
            base,
            upper,
            &opts.target.to_string(),
            &stage,
        )?
    };
    let auto = work.join("postgresql.auto.conf");
    let original = match std::fs::read_to_string(&auto) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(PgShadowError::io("reading", &auto, e)),
    };
    let conf = format!(
        "{original}{MARK}restore_command = 'cp {STAGE}/%f \"%p\"'\nrecovery_target_action = 'promote'\nrecovery_target_timeline = 'current'\n{}\
         listen_addresses = ''\nunix_socket_directories = '.'\narchive_mode = off\nsynchronous_standby_names = ''\nhot_standby = on\n",
        recovery.conf()
    );
    std::fs::write(&auto, conf).map_err(|e| PgShadowError::io("writing", &auto, e))?;
    let signal = work.join("recovery.signal");
    std::fs::write(&signal, b"").map_err(|e| PgShadowError::io("writing", &signal, e))?;
    if let Some(o) = owner {
        chown_tree(work, o)?;
    }
    Ok(segments)
}

/// Links (complete segments) or copies (the segment `pg_receivewal` is still writing, kept
/// as `NAME.partial`) the shadow's WAL of the base's timeline into `stage`; checks that no
/// segment is missing from the base's start to `upper` (or to the last one).
fn stage_wal(
    shadow: &Path,
    info: &PgShadowInfo,
    base: &PgBase,
    upper: Option<Lsn>,
    target: &str,
    stage: &Path,
) -> Result<usize, PgShadowError> {
    let wal = pg_dir(shadow).join("wal");
    let seg = info.wal_segment_size;
    let mut full = std::collections::BTreeMap::new();
    let mut partial = std::collections::BTreeMap::new();
    let mut history = Vec::new();
    for e in std::fs::read_dir(&wal).map_err(|e| PgShadowError::io("listing", &wal, e))? {
        let e = e.map_err(|e| PgShadowError::io("listing", &wal, e))?;
        let n = e.file_name().to_string_lossy().into_owned();
        if n.ends_with(".history") {
            history.push(e.path());
        } else if let Some(s) = n
            .strip_suffix(".partial")
            .and_then(|s| SegmentName::parse(s, seg))
        {
            if s.timeline == base.timeline {
                partial.insert(s.segno, e.path());
            }
        } else if let Some(s) = SegmentName::parse(&n, seg) {
            if s.timeline == base.timeline {
                full.insert(s.segno, e.path());
            }
        }
    }
    let start = base.start_lsn.segment(seg);
    let last = full
        .keys()
        .chain(partial.keys())
        .copied()
        .max()
        .unwrap_or(start);
    let need = upper.map(|u| u.segment(seg)).unwrap_or(last);
    for segno in start..=need.max(start) {
        if !full.contains_key(&segno) && !partial.contains_key(&segno) {
            return Err(PgShadowError::MissingWal {
                dir: wal.clone(),
                segment: SegmentName {
                    timeline: base.timeline,
                    segno,
                }
                .file_name(seg),
                base: base.id.clone(),
                target: target.to_string(),
            });
        }
    }
    let mut count = 0;
    for segno in start..=last {
        let name = SegmentName {
            timeline: base.timeline,
            segno,
        }
        .file_name(seg);
        let dst = stage.join(&name);
        if let Some(src) = full.get(&segno) {
            if std::fs::hard_link(src, &dst).is_err() {
                std::fs::copy(src, &dst).map_err(|e| PgShadowError::io("copying", src, e))?;
            }
            count += 1;
        } else if let Some(src) = partial.get(&segno) {
            // Copied, not linked: pg_receivewal goes on writing it in place.
            std::fs::copy(src, &dst).map_err(|e| PgShadowError::io("copying", src, e))?;
            count += 1;
        } else {
            break;
        }
    }
    for h in history {
        if let Some(n) = h.file_name() {
            std::fs::copy(&h, stage.join(n)).map_err(|e| PgShadowError::io("copying", &h, e))?;
        }
    }
    Ok(count)
}

fn pg_ctl(bindir: &Path, owner: Option<&str>, args: &[&str]) -> Vec<String> {
    as_user(
        owner,
        &bindir.join("pg_ctl"),
        &args.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
    )
}

/// Starts the restored copy, waits until it left recovery (promoted: the target was
/// reached), and stops it.
async fn verify(
    bindir: &Path,
    work: &Path,
    owner: Option<&str>,
    recovery: &Recovery,
    timeout: Duration,
) -> Result<(), PgShadowError> {
    let d = work.display().to_string();
    let log = work.join(LOG).display().to_string();
    let secs = timeout.as_secs().max(1).to_string();
    let start = pg_ctl(
        bindir,
        owner,
        &["start", "-w", "-t", &secs, "-D", &d, "-l", &log],
    );
    let started = run(
        &start,
        &[],
        "starting the restored copy",
        timeout + Duration::from_secs(5),
    )
    .await;
    let result = match started {
        Err(e) => Err(e),
        Ok(_) => wait_promoted(bindir, work, owner, timeout).await,
    };
    let stop = pg_ctl(
        bindir,
        owner,
        &["stop", "-w", "-t", "60", "-m", "fast", "-D", &d],
    );
    let stopped = run(
        &stop,
        &[],
        "stopping the restored copy",
        Duration::from_secs(65),
    )
    .await;
    let log_text = std::fs::read_to_string(work.join(LOG)).unwrap_or_default();
    match result {
        Ok(()) => stopped.map(|_| ()),
        Err(e) => {
            if log_text.contains("recovery ended before configured recovery target was reached")
                || log_text.contains("before consistent recovery point")
            {
                Err(PgShadowError::TargetNotReached {
                    target: recovery.describe(),
                    log: tail(&log_text, 1200),
                })
            } else {
                Err(PgShadowError::Program {
                    program: "postgres".into(),
                    what: format!("recovering the restored copy to {}", recovery.describe()),
                    output: format!("{e}; server log: {}", tail(&log_text, 1200)),
                })
            }
        }
    }
}

/// Waits until `pg_controldata` says the restored copy is in production (it promoted at its
/// target), failing when its server exited.
async fn wait_promoted(
    bindir: &Path,
    work: &Path,
    owner: Option<&str>,
    timeout: Duration,
) -> Result<(), PgShadowError> {
    let deadline = Instant::now() + timeout;
    let d = work.display().to_string();
    loop {
        let out = tokio::process::Command::new(bindir.join("pg_controldata"))
            .arg("-D")
            .arg(work)
            .env("LC_ALL", "C")
            .output()
            .await
            .map_err(|e| PgShadowError::Program {
                program: "pg_controldata".into(),
                what: format!("reading {}", work.display()),
                output: e.to_string(),
            })?;
        let text = String::from_utf8_lossy(&out.stdout);
        if control_field(&text, "Database cluster state").as_deref() == Some("in production") {
            return Ok(());
        }
        let status = pg_ctl(bindir, owner, &["status", "-D", &d]);
        if run(
            &status,
            &[],
            "checking the restored copy",
            Duration::from_secs(30),
        )
        .await
        .is_err()
        {
            return Err(PgShadowError::Program {
                program: "postgres".into(),
                what: "recovering the restored copy".into(),
                output: "the server exited before promoting".into(),
            });
        }
        if Instant::now() > deadline {
            return Err(PgShadowError::Program {
                program: "postgres".into(),
                what: "recovering the restored copy".into(),
                output: format!("not promoted within {} s", timeout.as_secs()),
            });
        }
        // The server's state is in its control file; there is no event to await.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Removes the restore's settings and staging from the verified copy and keeps its log in
/// the shadow directory.
fn finish(
    work: &Path,
    info: &PgShadowInfo,
    shadow: &Path,
    stamp: i64,
) -> Result<(), PgShadowError> {
    let auto = work.join("postgresql.auto.conf");
    let text =
        std::fs::read_to_string(&auto).map_err(|e| PgShadowError::io("reading", &auto, e))?;
    let original = text.split(MARK).next().unwrap_or_default();
    // The base backup carries the shadow's own synchronous standby name: a restored cluster
    // with it would wait for a stream that is not there.
    let kept: String = original
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            !(t.starts_with("synchronous_standby_names") && t.contains(&info.name))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&auto, kept).map_err(|e| PgShadowError::io("writing", &auto, e))?;
    let stage = work.join(STAGE);
    std::fs::remove_dir_all(&stage).map_err(|e| PgShadowError::io("removing", &stage, e))?;
    for leftover in ["recovery.signal", "backup_label.old"] {
        let p = work.join(leftover);
        if p.exists() {
            std::fs::remove_file(&p).map_err(|e| PgShadowError::io("removing", &p, e))?;
        }
    }
    let logs = pg_dir(shadow).join("restore-logs");
    std::fs::create_dir_all(&logs).map_err(|e| PgShadowError::io("creating", &logs, e))?;
    let log = work.join(LOG);
    if log.exists() {
        let kept = logs.join(format!("{stamp}.log"));
        std::fs::copy(&log, &kept).map_err(|e| PgShadowError::io("copying", &log, e))?;
        std::fs::remove_file(&log).map_err(|e| PgShadowError::io("removing", &log, e))?;
    }
    Ok(())
}

/// Stops the live cluster, exchanges the directories, starts the restored one; puts the
/// previous one back and starts it when the restored one does not start.
async fn swap(
    bindir: &Path,
    live: &Path,
    work: &Path,
    previous: &Path,
    log: &Path,
    owner: Option<&str>,
    timeout: Duration,
) -> Result<(), PgShadowError> {
    let d = live.display().to_string();
    let status = pg_ctl(bindir, owner, &["status", "-D", &d]);
    if run(
        &status,
        &[],
        "checking the live cluster",
        Duration::from_secs(30),
    )
    .await
    .is_ok()
    {
        let stop = pg_ctl(
            bindir,
            owner,
            &["stop", "-w", "-t", "120", "-m", "fast", "-D", &d],
        );
        if let Err(e) = run(
            &stop,
            &[],
            "stopping the live cluster",
            Duration::from_secs(125),
        )
        .await
        {
            let _ = std::fs::remove_dir_all(work);
            return Err(e);
        }
    }
    exchange(work, live)?;
    std::fs::rename(work, previous).map_err(|e| PgShadowError::io("renaming", work, e))?;
    if let Some(dir) = log.parent() {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(|e| PgShadowError::io("creating", dir, e))?;
            if let Some(o) = owner {
                chown_tree(dir, o)?;
            }
        }
    }
    let l = log.display().to_string();
    let secs = timeout.as_secs().max(1).to_string();
    let start = pg_ctl(
        bindir,
        owner,
        &["start", "-w", "-t", &secs, "-D", &d, "-l", &l],
    );
    match run(
        &start,
        &[],
        "starting the restored cluster",
        timeout + Duration::from_secs(5),
    )
    .await
    {
        Ok(_) => Ok(()),
        Err(e) => {
            let stop = pg_ctl(bindir, owner, &["stop", "-w", "-m", "immediate", "-D", &d]);
            let _ = run(
                &stop,
                &[],
                "stopping the restored cluster",
                Duration::from_secs(65),
            )
            .await;
            std::fs::rename(previous, work)
                .map_err(|e| PgShadowError::io("renaming", previous, e))?;
            exchange(work, live)?;
            let restarted = match run(
                &start,
                &[],
                "starting the previous cluster",
                timeout + Duration::from_secs(5),
            )
            .await
            {
                Ok(_) => " and started".to_string(),
                Err(e2) => format!(", but did not start: {e2}"),
            };
            Err(PgShadowError::SwapRolledBack {
                data_dir: live.to_path_buf(),
                message: format!("{e}; the restored copy is kept in {}", work.display()),
                restarted,
            })
        }
    }
}

/// Exchanges two directories in one step (`renameat2(RENAME_EXCHANGE)`).
fn exchange(a: &Path, b: &Path) -> Result<(), PgShadowError> {
    rustix::fs::renameat_with(
        rustix::fs::CWD,
        a,
        rustix::fs::CWD,
        b,
        rustix::fs::RenameFlags::EXCHANGE,
    )
    .map_err(|e| PgShadowError::Io {
        what: format!("exchanging {} and {}", a.display(), b.display()),
        message: format!("{e} (the filesystem must support renameat2 RENAME_EXCHANGE)"),
    })
}
