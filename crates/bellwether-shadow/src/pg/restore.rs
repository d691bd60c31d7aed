//! Restores: a new data directory beside the live one, built from a point (its base backup
//! and WAL, every object's hash checked as it is read; for `latest` or a time after the last
//! point also the WAL streamed since), checked by `pg_verifybackup`, started once to prove
//! it reaches the target (recovery with `recovery_target_action = 'promote'`), stopped, then
//! either left where the caller asked (a `dest` that does not exist) or swapped in for the
//! live cluster's data directory (stop the live cluster with `pg_ctl`, exchange the two
//! directories with one `renameat2(RENAME_EXCHANGE)`, start). On any error before the
//! exchange the live data directory is untouched; a restored cluster that fails to start
//! after it is exchanged back and the previous one started again.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::point::{
    Manifest, PointStore, Position, ResourceKind, RestoreReport, RestoreRequest, ShadowError,
    ShadowType, Target, Timestamp,
};

use super::base;
use super::lsn::{pg_timestamp, SegmentName};
use super::proc::{as_user, chown_tree, is_root, owner_of, run, tail};
use super::shadow::{block, OwnedRuntime, WAL_PREFIX};
use super::{now_us, pg_dir, read_info, Lsn, PgShadowError, PgShadowInfo};

/// Where the restored data directory goes.
#[derive(Debug, Clone, PartialEq)]
pub enum RestoreMode {
    /// Leave it at `dest` (which does not exist) for a server the caller runs: point the
    /// server's `-D` / `data_directory` at it. It runs as `owner` (`postgres` when this
    /// process is root and none is given).
    Beside {
        dest: PathBuf,
        owner: Option<String>,
    },
    /// Swap it in for the cluster whose data directory is `data_dir` (its configuration must
    /// live inside it): stop with `pg_ctl stop -m fast`, exchange, start with `pg_ctl start
    /// -l log_file`, as the directory's owner. The previous directory stays beside it as
    /// `NAME.before-restore-TIME`.
    Swap {
        data_dir: PathBuf,
        log_file: PathBuf,
    },
}

impl RestoreMode {
    /// A `dest` that exists is the live data directory to swap (its server's log in
    /// `dest/log/bellwether-restore.log`); one that does not is where to leave the copy.
    pub fn for_dest(dest: &Path) -> RestoreMode {
        if dest.exists() {
            RestoreMode::Swap {
                data_dir: dest.to_path_buf(),
                log_file: dest.join("log").join("bellwether-restore.log"),
            }
        } else {
            RestoreMode::Beside {
                dest: dest.to_path_buf(),
                owner: None,
            }
        }
    }
}

const MARK: &str = "\n# bellwether restore (removed once the restored copy reached its target)\n";
const STAGE: &str = "bw_restore_wal";
const LOG: &str = "bw_restore.log";

/// Restores a PostgreSQL shadow over `req.dest` ([`crate::point::Resource::restore`]),
/// with the programs of the shadowed version and a 10-minute limit on the recovery.
pub fn restore(req: &RestoreRequest) -> Result<RestoreReport, ShadowError> {
    restore_with(
        req,
        &RestoreMode::for_dest(&req.dest),
        None,
        Duration::from_secs(600),
    )
}

/// [`restore`] with the mode, the programs' directory and the recovery's time limit given.
pub fn restore_with(
    req: &RestoreRequest,
    mode: &RestoreMode,
    bindir: Option<PathBuf>,
    timeout: Duration,
) -> Result<RestoreReport, ShadowError> {
    let started = Instant::now();
    let store = PointStore::open(&req.dir)?;
    if store.meta().kind != ResourceKind::Postgres {
        return Err(ShadowError::OtherResource {
            dir: req.dir.clone(),
            shadows: format!("{} {}", store.meta().kind, store.meta().source),
            asked: format!("the PostgreSQL data directory {}", req.dest.display()),
        });
    }
    let info = read_info(&req.dir)?.ok_or_else(|| ShadowError::BadFile {
        path: pg_dir(&req.dir).join("shadow-pg.json"),
        reason: "missing: this PostgreSQL shadow never started".into(),
    })?;
    let bindir = match bindir {
        Some(b) => b,
        None => bellwether_pg::find_bindir(info.server_version_num, None)
            .map_err(PgShadowError::from)?,
    };
    if !store.writer_running() {
        // A machine that stopped may have lost the unsynced manifests and WAL objects of the
        // last points before the follower synced them; with no follower running to rebuild
        // them at its start, the restore does, from `pg/wal` (a follower that starts
        // meanwhile is told the shadow is busy for that moment).
        let mut w = PointStore::open(&req.dir)?;
        if w.take_writer_lock().is_ok() {
            super::shadow::recover_points(&w, info.wal_segment_size, &info.name)?;
            let n = super::shadow::repair_wal(&w)?;
            if n > 0 {
                tracing::info!(
                    objects = n,
                    "Rebuilt WAL objects a machine's stop had lost, from pg/wal."
                );
            }
        }
    }
    let plan = resolve(&store, &req.target)?;
    let _leases = plan
        .leased
        .iter()
        .map(|id| store.lease(*id))
        .collect::<Result<Vec<_>, _>>()?;
    store.verify_point(&plan.point)?;

    let (live, owner) = match mode {
        RestoreMode::Beside { dest, owner } => {
            if dest.exists() {
                return Err(PgShadowError::BadDestination {
                    path: dest.clone(),
                    message: "exists already; a restore beside writes a new directory".into(),
                }
                .into());
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
            if !plan
                .point
                .entries
                .iter()
                .any(|e| e.path == "postgresql.conf")
            {
                return Err(PgShadowError::BadDestination {
                    path: data_dir.clone(),
                    message: "the shadowed server keeps its configuration outside its data directory; restore to a new directory and point the server at it".into(),
                }
                .into());
            }
            (data_dir.clone(), Some(owner_of(data_dir)?))
        }
    };
    let parent = live
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let name = live
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".into());
    let stamp = now_us();
    let work = parent.join(format!(".{name}.bw-restore-{stamp}"));
    let cleanup = |e: ShadowError| {
        let _ = std::fs::remove_dir_all(&work);
        e
    };

    let owned = OwnedRuntime(Some(super::shadow::runtime()?));
    let rt = owned.get();
    let mut used = plan.recovery.clone();
    let mut replayed_to_end = false;
    let mut bytes = build(
        &store,
        &info,
        &bindir,
        &plan,
        &used,
        &work,
        owner.as_deref(),
    )
    .map_err(cleanup)?;
    let mut verified = block(rt, verify(&bindir, &work, owner.as_deref(), &used, timeout));
    if matches!(verified, Err(PgShadowError::TargetNotReached { .. }))
        && matches!(used, Recovery::Time(_) | Recovery::Lsn(_))
    {
        // The shadowed WAL ends before any record past the target: every record it holds is
        // before the target, so all of it is the answer.
        let _ = std::fs::remove_dir_all(&work);
        used = Recovery::End;
        replayed_to_end = true;
        bytes = build(
            &store,
            &info,
            &bindir,
            &plan,
            &used,
            &work,
            owner.as_deref(),
        )
        .map_err(cleanup)?;
        verified = block(rt, verify(&bindir, &work, owner.as_deref(), &used, timeout));
    }
    let last_commit = verified.map_err(|e| cleanup(e.into()))?;
    finish(&work, &info, &req.dir, stamp).map_err(|e| cleanup(e.into()))?;
    let mut checks = vec![
        "checksums".to_string(),
        "pg_verifybackup".into(),
        format!("recovery reached {}", used.describe()),
    ];
    if let RestoreMode::Swap { data_dir, .. } = mode {
        let kept = keep_configuration(data_dir, &work, &info, owner.as_deref())
            .map_err(|e| cleanup(e.into()))?;
        if !kept.is_empty() {
            checks.push(format!(
                "configuration kept from the live data directory: {}",
                kept.join(", ")
            ));
        }
    }

    match mode {
        RestoreMode::Beside { dest, .. } => {
            std::fs::rename(&work, dest).map_err(|e| cleanup(ShadowError::io(dest)(e)))?;
        }
        RestoreMode::Swap { data_dir, log_file } => {
            let previous = parent.join(format!("{name}.before-restore-{stamp}"));
            block(
                rt,
                swap(
                    &bindir,
                    data_dir,
                    &work,
                    &previous,
                    log_file,
                    owner.as_deref(),
                    timeout,
                ),
            )?;
            tracing::info!(data_dir = %data_dir.display(), previous = %previous.display(), "Restored data directory swapped in; the previous one is kept beside it.");
        }
    }
    let restored_to = match (&plan.recovery, replayed_to_end) {
        (Recovery::Time(t), false) => Timestamp::from_micros(*t),
        _ => last_commit.unwrap_or(plan.point.consistent_at),
    };
    Ok(RestoreReport {
        dest: req.dest.clone(),
        point: plan.point.id(),
        point_taken_at: plan.point.taken_at,
        restored_to,
        commits_replayed: 0,
        bytes,
        checks,
        elapsed_ms: started.elapsed().as_millis() as u64,
    })
}

/// What a restore reads and what recovery is told.
struct Plan {
    /// The point whose files (base and WAL) are materialized.
    point: Manifest,
    /// Points held against retention while the restore runs.
    leased: Vec<crate::point::PointId>,
    recovery: Recovery,
    /// Also stage the WAL streamed after the point (`pg/wal`).
    live_wal: bool,
    target: String,
}

fn has_wal(m: &Manifest) -> bool {
    m.entries.iter().any(|e| e.path.starts_with(WAL_PREFIX))
}

fn base_label(m: &Manifest) -> Option<&crate::point::ObjectRef> {
    m.entries
        .iter()
        .find(|e| e.path == "backup_label")
        .and_then(|e| e.objects.first())
}

fn resolve(store: &PointStore, target: &Target) -> Result<Plan, ShadowError> {
    let full = store.meta().shadow_type == ShadowType::Full;
    let transactional = store.meta().shadow_type == ShadowType::Transactional;
    let lsn_of = |m: &Manifest| match m.position {
        Position::Postgres { lsn, .. } => Lsn(lsn),
        _ => Lsn(0),
    };
    match target {
        Target::Point(_) => {
            let m = store.find(target)?;
            let recovery = if has_wal(&m) {
                Recovery::Lsn(lsn_of(&m))
            } else {
                Recovery::Immediate
            };
            Ok(Plan {
                leased: vec![m.id()],
                point: m,
                recovery,
                live_wal: false,
                target: target.to_string(),
            })
        }
        Target::Latest => {
            let m = store.find(target)?;
            let recovery = if full {
                Recovery::Immediate
            } else {
                Recovery::End
            };
            Ok(Plan {
                leased: vec![m.id()],
                point: m,
                recovery,
                live_wal: transactional,
                target: target.to_string(),
            })
        }
        Target::Time(t) => {
            let k = store.find(target)?;
            if full {
                return Ok(Plan {
                    leased: vec![k.id()],
                    point: k,
                    recovery: Recovery::Immediate,
                    live_wal: false,
                    target: target.to_string(),
                });
            }
            // The next point on the same base holds the WAL through the time.
            let next = store.points()?.into_iter().find(|m| {
                m.seq > k.seq && base_label(m).is_some() && base_label(m) == base_label(&k)
            });
            match next {
                Some(n) => Ok(Plan {
                    leased: vec![k.id(), n.id()],
                    point: n,
                    recovery: Recovery::Time(t.as_micros()),
                    live_wal: false,
                    target: target.to_string(),
                }),
                None => {
                    let latest = store.find(&Target::Latest)?;
                    Ok(Plan {
                        leased: vec![k.id()],
                        live_wal: transactional && latest.seq == k.seq,
                        point: k,
                        recovery: Recovery::Time(t.as_micros()),
                        target: target.to_string(),
                    })
                }
            }
        }
    }
}

/// What PostgreSQL is told to stop at.
#[derive(Debug, Clone, PartialEq)]
enum Recovery {
    /// `recovery_target = 'immediate'`: the base backup's consistent end.
    Immediate,
    Lsn(Lsn),
    Time(i64),
    /// No target: replay every shadowed WAL record.
    End,
}

impl Recovery {
    fn conf(&self) -> String {
        match self {
            Recovery::Immediate => "recovery_target = 'immediate'\n".into(),
            // Stop before the first record at or after the point's LSN: every record before it
            // (the restore point's own included) is replayed, none after.
            Recovery::Lsn(l) => {
                format!("recovery_target_lsn = '{l}'\nrecovery_target_inclusive = off\n")
            }
            Recovery::Time(t) => format!("recovery_target_time = '{}'\n", pg_timestamp(*t)),
            Recovery::End => String::new(),
        }
    }

    fn describe(&self) -> String {
        match self {
            Recovery::Immediate => "immediate (the base backup's end)".into(),
            Recovery::Lsn(l) => format!("LSN {l}"),
            Recovery::Time(t) => format!("time {}", pg_timestamp(*t)),
            Recovery::End => "end of the shadowed WAL".into(),
        }
    }
}

/// Writes the point's files into `work`, adds the WAL streamed since (when the plan says so),
/// checks that no segment is missing and that `pg_verifybackup` accepts the copy, and writes
/// the recovery settings. Returns the bytes written.
fn build(
    store: &PointStore,
    info: &PgShadowInfo,
    bindir: &Path,
    plan: &Plan,
    recovery: &Recovery,
    work: &Path,
    owner: Option<&str>,
) -> Result<u64, ShadowError> {
    // The base files written are read for the pages WAL chunks are patched against, here
    // and in the WAL staged from a newer point; nothing changes them before recovery starts.
    let mut copies = store.copies_at();
    let mut bytes = base::materialize_noting(
        store,
        plan.point.id(),
        &plan.point.entries,
        work,
        &mut copies,
    )?;
    pad_segments(&plan.point, info.wal_segment_size, work)?;
    let stage = work.join(STAGE);
    if !stage.is_dir() {
        std::fs::create_dir(&stage).map_err(ShadowError::io(&stage))?;
    }
    if *recovery != Recovery::Immediate {
        bytes += stage_wal(store, info, plan, work)?;
    }
    drop(copies);
    // Every file's content was just checked against its objects' SHA-256, so the manifest's
    // own checksums (a second full read) are skipped; it still checks that every file of the
    // backup is there with its size, and parses the WAL the backup needs.
    let out = std::process::Command::new(bindir.join("pg_verifybackup"))
        .arg("-q")
        .arg("--skip-checksums")
        .arg("-i")
        .arg(STAGE)
        .arg(work)
        .output()
        .map_err(|e| PgShadowError::Program {
            program: "pg_verifybackup".into(),
            what: format!("checking {}", work.display()),
            output: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(PgShadowError::DamagedBase {
            dir: store.dir().to_path_buf(),
            base: plan.point.id().to_string(),
            message: tail(
                &format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
                800,
            ),
        }
        .into());
    }
    let manifest = work.join("backup_manifest");
    std::fs::remove_file(&manifest).map_err(ShadowError::io(&manifest))?;
    let auto = work.join("postgresql.auto.conf");
    let original = match std::fs::read_to_string(&auto) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(ShadowError::io(&auto)(e)),
    };
    let conf = format!(
        "{original}{MARK}restore_command = 'cp {STAGE}/%f \"%p\"'\nrecovery_target_action = 'promote'\nrecovery_target_timeline = 'current'\n{}\
         listen_addresses = ''\nunix_socket_directories = '.'\narchive_mode = off\nsynchronous_standby_names = ''\nhot_standby = on\n",
        recovery.conf()
    );
    std::fs::write(&auto, conf).map_err(ShadowError::io(&auto))?;
    let signal = work.join("recovery.signal");
    std::fs::write(&signal, b"").map_err(ShadowError::io(&signal))?;
    if let Some(o) = owner {
        chown_tree(work, o)?;
    }
    Ok(bytes)
}

/// Adds the segments `pg_receivewal` wrote after the point (the one it is writing is kept as
/// `NAME.partial` and copied under its own name) and checks that the staged WAL runs without
/// a gap from the base backup's start. Returns the bytes added.
fn stage_wal(
    store: &PointStore,
    info: &PgShadowInfo,
    plan: &Plan,
    work: &Path,
) -> Result<u64, ShadowError> {
    let shadow = store.dir();
    let seg = info.wal_segment_size;
    let stage = work.join(STAGE);
    let timeline = match plan.point.position {
        Position::Postgres { timeline, .. } => timeline,
        _ => 1,
    };
    let mut bytes = 0;
    let wal = pg_dir(shadow).join("wal");
    if plan.live_wal {
        let first_needed = plan
            .point
            .entries
            .iter()
            .filter_map(|e| e.path.strip_prefix(WAL_PREFIX))
            .filter_map(|n| SegmentName::parse(n, seg))
            .map(|s| s.segno)
            .max();
        let rd = std::fs::read_dir(&wal).map_err(ShadowError::io(&wal))?;
        let mut complete = std::collections::BTreeMap::new();
        let mut partial = std::collections::BTreeMap::new();
        for e in rd {
            let e = e.map_err(ShadowError::io(&wal))?;
            let n = e.file_name().to_string_lossy().into_owned();
            if let Some(s) = n
                .strip_suffix(".partial")
                .and_then(|s| SegmentName::parse(s, seg))
            {
                partial.insert(s, e.path());
            } else if let Some(s) = SegmentName::parse(&n, seg) {
                complete.insert(s, e.path());
            }
        }
        let mut names: Vec<SegmentName> = complete.keys().chain(partial.keys()).copied().collect();
        names.sort();
        names.dedup();
        for s in names {
            if s.timeline != timeline || first_needed.is_some_and(|f| s.segno < f) {
                continue;
            }
            // A complete segment wins over a partial copy of the same one.
            let src = complete.get(&s).or_else(|| partial.get(&s)).cloned();
            if let Some(src) = src {
                let dst = stage.join(s.file_name(seg));
                if dst.exists() {
                    std::fs::remove_file(&dst).map_err(ShadowError::io(&dst))?;
                }
                bytes += std::fs::copy(&src, &dst).map_err(ShadowError::io(&src))?;
            }
        }
    }
    // No gap from the base backup's start to the last staged segment.
    let label = std::fs::read_to_string(work.join("backup_label"))
        .map_err(ShadowError::io(work.join("backup_label")))?;
    let start = label
        .lines()
        .find_map(|l| l.strip_prefix("START WAL LOCATION: "))
        .and_then(|r| r.split_whitespace().next())
        .and_then(Lsn::parse)
        .ok_or_else(|| ShadowError::BadFile {
            path: work.join("backup_label"),
            reason: "no START WAL LOCATION".into(),
        })?;
    let mut present = std::collections::BTreeSet::new();
    for e in std::fs::read_dir(&stage).map_err(ShadowError::io(&stage))? {
        let e = e.map_err(ShadowError::io(&stage))?;
        if let Some(s) = SegmentName::parse(&e.file_name().to_string_lossy(), seg) {
            if s.timeline == timeline {
                present.insert(s.segno);
            }
        }
    }
    let first = start.segment(seg);
    let last = present.iter().next_back().copied().unwrap_or(first);
    for segno in first..=last {
        if !present.contains(&segno) {
            let name = SegmentName { timeline, segno }.file_name(seg);
            if plan.live_wal {
                if let Some(n) = stage_from_newer(store, plan, &name, seg, &stage.join(&name))? {
                    bytes += n;
                    continue;
                }
            }
            return Err(PgShadowError::MissingWal {
                dir: if plan.live_wal {
                    wal
                } else {
                    shadow.to_path_buf()
                },
                segment: SegmentName { timeline, segno }.file_name(seg),
                point: plan.point.id().to_string(),
                target: plan.target.clone(),
            }
            .into());
        }
    }
    Ok(bytes)
}

/// Pads each of a point's WAL segments written shorter than a segment (the one a
/// transactional point ends in holds the WAL through the point and nothing after it) to a
/// segment's size with zeros, as `pg_receivewal` lays a segment out before it writes the
/// stream over it: recovery refuses a restored segment of another size, and reads the end
/// of the WAL at the first zeros.
fn pad_segments(point: &Manifest, seg: u64, work: &Path) -> Result<(), ShadowError> {
    for e in &point.entries {
        if !e.path.starts_with(WAL_PREFIX) || e.size >= seg {
            continue;
        }
        let path = work.join(&e.path);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(seg))
            .map_err(ShadowError::io(&path))?;
    }
    Ok(())
}

/// Stages segment `name` whole from a point newer than the plan's, if one holds it: a point
/// committed after the plan was made removes the segments it holds from `pg/wal`
/// (`PgShadow::prune_wal`). Returns the bytes staged, or `None` if no point has it.
fn stage_from_newer(
    store: &PointStore,
    plan: &Plan,
    name: &str,
    seg: u64,
    dst: &Path,
) -> Result<Option<u64>, ShadowError> {
    let rel = format!("{WAL_PREFIX}{name}");
    let mut newer = store.points()?;
    newer.retain(|m| m.seq > plan.point.seq);
    for m in newer.iter().rev() {
        let Some(e) = m.entries.iter().find(|e| e.path == rel && e.size == seg) else {
            continue;
        };
        // Held while it is read; a point thinned meanwhile is passed over.
        let Ok(_lease) = store.lease(m.id()) else {
            continue;
        };
        return store.clone_objects_into(m.id(), &e.objects, dst).map(Some);
    }
    Ok(None)
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
) -> Result<Option<Timestamp>, PgShadowError> {
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
        Ok(()) => stopped.map(|_| last_commit(&log_text)),
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

/// The time of the last transaction recovery replayed, from the server's log (`last
/// completed transaction was at log time 2026-12-05 18:00:00.123456+00`).
fn last_commit(log: &str) -> Option<Timestamp> {
    let key = "last completed transaction was at log time ";
    let text = log.lines().rev().find_map(|l| l.split(key).nth(1))?.trim();
    // `YYYY-MM-DD HH:MM:SS.ffffff+00` into RFC 3339.
    let (date_time, zone) = match text.rfind(['+', '-']) {
        Some(i) if i > 10 => (&text[..i], &text[i..]),
        _ => (text, "+00"),
    };
    let zone = if zone.len() == 3 {
        format!("{zone}:00")
    } else {
        zone.to_string()
    };
    Timestamp::parse(&format!("{}{zone}", date_time.replacen(' ', "T", 1))).ok()
}

/// Removes the restore's settings and staging from the verified copy and keeps its log in
/// the shadow directory.
/// The configuration files a restore swapped in keeps from the live data directory: a data
/// rollback does not roll back the server's configuration (a change of its own kind), and a
/// restore into another instance of the cluster (a standby in another cell) keeps that
/// instance's port, listen addresses and access rules.
const CONFIG_FILES: [&str; 4] = [
    "postgresql.conf",
    "postgresql.auto.conf",
    "pg_hba.conf",
    "pg_ident.conf",
];

/// The base backup carries the shadow's own synchronous standby name; a cluster with it
/// would wait for a stream that is not there.
fn without_own_sync_name(text: &str, info: &PgShadowInfo) -> String {
    text.lines()
        .filter(|l| {
            let t = l.trim_start();
            !(t.starts_with("synchronous_standby_names") && t.contains(&info.name))
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Copies [`CONFIG_FILES`] from `live` over the restored copy in `work` (the shadow's own
/// synchronous standby name left out), owned by `owner`; the names it copied.
fn keep_configuration(
    live: &Path,
    work: &Path,
    info: &PgShadowInfo,
    owner: Option<&str>,
) -> Result<Vec<String>, PgShadowError> {
    let mut kept = Vec::new();
    for name in CONFIG_FILES {
        let from = live.join(name);
        let text = match std::fs::read_to_string(&from) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(PgShadowError::io("reading", &from, e)),
        };
        let text = if name == "postgresql.auto.conf" {
            without_own_sync_name(&text, info)
        } else {
            text
        };
        let to = work.join(name);
        std::fs::write(&to, text).map_err(|e| PgShadowError::io("writing", &to, e))?;
        if let Some(o) = owner {
            chown_tree(&to, o)?;
        }
        kept.push(name.to_string());
    }
    Ok(kept)
}

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
    let kept = without_own_sync_name(original, info);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::point::{Reason, Retention, Shadow, ShadowOptions, Source};
    use bellwether_pg::testing::{TestCluster, TestClusterOptions};

    fn exec(url: &str, text: &str) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let c = bellwether_pg::connect(url).await.expect("connect");
                c.client.batch_execute(text).await.expect(text)
            })
    }

    /// A restore that chose the latest point before a newer one was committed (which then
    /// removed the segments it holds from `pg/wal`) and leased it after still stages every
    /// segment since: those no longer in `pg/wal` from the newer point.
    #[test]
    fn a_restore_planned_before_a_newer_point_stages_the_wal_that_point_removed() {
        let cluster = TestCluster::start(TestClusterOptions::default());
        let url = cluster.url();
        exec(&url, "CREATE TABLE public.t (id bigint PRIMARY KEY)");
        let sd = tempfile::tempdir().unwrap();
        let opts = ShadowOptions {
            dir: sd.path().to_path_buf(),
            source: Source::Url(url.clone()),
            shadow_type: ShadowType::Transactional,
            points_every: None,
            retention: Retention::default(),
            poll: None,
            clones: crate::point::Clones::Auto,
        };
        let pg = super::super::PgOptions::new(&url, ShadowType::Transactional);
        let mut shadow = super::super::PgShadow::start(&opts, &pg).expect("the shadow starts");
        exec(
            &url,
            "INSERT INTO public.t VALUES (1); SELECT pg_switch_wal()",
        );
        let first = shadow.take_point(Reason::Schedule).unwrap();
        for i in 2..5 {
            exec(
                &url,
                &format!("INSERT INTO public.t VALUES ({i}); SELECT pg_switch_wal()"),
            );
        }
        let newer = shadow.take_point(Reason::Schedule).unwrap();
        exec(&url, "INSERT INTO public.t VALUES (5)");
        let store = PointStore::open(sd.path()).unwrap();
        let info = read_info(sd.path()).unwrap().unwrap();
        let seg = info.wal_segment_size;
        let segnos = |m: &Manifest| -> Vec<u64> {
            m.entries
                .iter()
                .filter_map(|e| e.path.strip_prefix(WAL_PREFIX))
                .filter_map(|n| SegmentName::parse(n, seg))
                .map(|s| s.segno)
                .collect()
        };
        let after_first = segnos(&first).into_iter().max().unwrap();
        let gone: Vec<u64> = segnos(&newer)
            .into_iter()
            .filter(|s| *s > after_first)
            .filter(|s| {
                let name = SegmentName {
                    timeline: 1,
                    segno: *s,
                }
                .file_name(seg);
                !pg_dir(sd.path()).join("wal").join(name).exists()
            })
            .collect();
        assert!(
            !gone.is_empty(),
            "the newer point removed segments after the first point's"
        );
        let plan = Plan {
            point: first.clone(),
            leased: vec![first.id()],
            recovery: Recovery::End,
            live_wal: true,
            target: "latest".into(),
        };
        let work = sd.path().join("tmp").join("work");
        base::materialize_noting(
            &store,
            first.id(),
            &first.entries,
            &work,
            &mut store.copies_at(),
        )
        .unwrap();
        stage_wal(&store, &info, &plan, &work).expect("staged, the gap from the newer point");
        for s in gone {
            let name = SegmentName {
                timeline: 1,
                segno: s,
            }
            .file_name(seg);
            let staged = work.join(STAGE).join(&name);
            assert_eq!(
                std::fs::metadata(&staged).map(|m| m.len()).ok(),
                Some(seg),
                "{name}"
            );
        }
        drop(shadow);
    }

    #[test]
    fn last_commit_time_is_read_from_the_log() {
        let log = "2026-12-05 18:00:01.000 UTC [1] LOG:  recovery stopping before commit of transaction 750\n\
                   2026-12-05 18:00:01.000 UTC [1] LOG:  last completed transaction was at log time 2026-12-05 17:54:49.123456+00\n";
        assert_eq!(
            last_commit(log),
            Some(Timestamp::from_micros(1_796_493_289_123_456))
        );
        assert_eq!(last_commit("nothing"), None);
    }

    #[test]
    fn control_fields_are_read() {
        let text = "pg_control version number:            1300\nDatabase system identifier:           7434100000000000001\nDatabase cluster state:               in production\n";
        assert_eq!(
            control_field(text, "Database system identifier").as_deref(),
            Some("7434100000000000001")
        );
        assert_eq!(
            control_field(text, "Database cluster state").as_deref(),
            Some("in production")
        );
    }
}
