//! Carrying out one [`ActionSpec`] on the agent's host.
//!
//! Argv actions run the program directly (never through a shell) with the rootfs as working
//! directory; a program still running at its timeout is killed, and the result says it timed
//! out. Built-ins act on files inside the rootfs:
//!
//! - `set_service_version` writes `etc/websvc/version` (the sandbox service re-reads it);
//! - `restore_file` copies back the snapshot the agent took at start of a `--protect`ed file;
//! - `reinstall_package` puts the package's stanza in `var/lib/dpkg/status` back as it was in
//!   the agent's start-time snapshot. That is what a reinstall changes in the package database;
//!   it does not download or unpack anything (on a real host that is apt's job, run as an argv
//!   action);
//! - `set_cgroup` writes `cpu.max` and `memory.max` in the cgroup v2 directory given with
//!   `--cgroup`; the files must exist (a missing file means the controller is not enabled).
//!
//! The process built-ins act on the host's processes through [`bellwether_patch::process`]
//! (a patch's instances): `start_process` starts an argv in a process group of its own (stdin
//! from `/dev/null`, stdout and stderr appended to `STATE_DIR/processes.log`), or a launcher
//! and reads the PID from its pidfile; `stop_process` runs a stop argv or sends SIGTERM to one
//! PID (never a process group, never 0 or 1) and waits for it to exit; `sample_processes`
//! reads the CPU ticks and resident memory of process trees from `/proc`. Their result carries
//! a structured `output` (the PID, whether it exited, the samples).
//!
//! Every write is a write to a temporary file and a rename, so a host never sees half a file.
//!
//! Every path a built-in touches, in the rootfs, in the snapshots and in the cgroup directory,
//! resolves inside that directory through [`bellwether_drift::inroot`]: a symbolic link is
//! followed as a process `chroot`ed into the root would follow it, so no link leads out, and
//! the temporary file is created exclusively under a random name, so a link planted at a
//! temporary name is never opened. A write that cannot stay inside fails with the path and
//! the link in its reason.
//!
//! The PostgreSQL built-ins act on the instances of `--database NAME=URL` through
//! [`crate::pg`]: `pg_read_settings` returns the catalog, `pg_apply` runs
//! `bellwether_pg::apply` (validated first, `ALTER SYSTEM`, reload or the
//! `--database-restart` command), `pg_trial` starts a scratch cluster with the instance's
//! configuration plus the proposed settings. Their result's `output` is that JSON.
//!
//! Before anything runs, the action is checked against the agent's [`AllowList`]
//! (`--allow-action`); a refused one is reported failed with the reason, and nothing runs.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bellwether_drift::inroot::InRoot;
use bellwether_model::action::check_relative_path;
use bellwether_model::wire::ActionOutcome;
use bellwether_model::ActionSpec;

/// The most bytes of stdout and of stderr kept in a result.
pub const TAIL_BYTES: usize = 4096;

/// The file the version is written to, relative to the rootfs.
pub const VERSION_FILE: &str = "etc/websvc/version";
/// The dpkg database, relative to the rootfs.
pub const DPKG_STATUS: &str = "var/lib/dpkg/status";

/// How an action ended, as the agent reports it (`POST /api/v1/agent/actions/{id}/result`):
/// the one wire type, with a typed [`ActionOutcome`].
pub type ActionReport = bellwether_model::wire::ActionResult;

/// Where the built-ins act and where the agent keeps its snapshots.
#[derive(Debug, Clone)]
pub struct Executor {
    rootfs: PathBuf,
    /// `STATE_DIR/protected`: the start-time copies of protected files and of the dpkg status.
    snapshots: PathBuf,
    cgroup: Option<PathBuf>,
    allow: AllowList,
    /// `STATE_DIR/processes.log`: the output of the processes `start_process` and
    /// `stop_process` run.
    process_log: PathBuf,
    /// The PostgreSQL instances of `--database` (the pg built-ins).
    pg: crate::pg::PgDatabases,
    /// `STATE_DIR/mirrors`: the mirror built-ins' instances.
    mirrors: crate::actions::mirror::Mirrors,
    /// The shadow built-ins' followers, of paths inside the rootfs.
    shadows: crate::actions::shadow::Shadows,
}

/// The built-in kinds, by the names `--allow-action` and the JSON use.
pub const BUILTIN_KINDS: [&str; 19] = [
    "set_service_version",
    "restore_file",
    "reinstall_package",
    "set_cgroup",
    "start_process",
    "stop_process",
    "sample_processes",
    "pg_read_settings",
    "pg_apply",
    "pg_trial",
    "mirror_provision",
    "mirror_retire",
    "mirror_promote",
    "mirror_fence",
    "shadow_start",
    "shadow_stop",
    "shadow_point",
    "shadow_restore",
    "shadow_route",
];

/// What an agent agrees to run (`--allow-action`, repeatable). Empty, the default, allows
/// every action the server sends. Otherwise an action runs only if a rule matches it:
///
/// - `KIND`, one of [`BUILTIN_KINDS`]: that built-in, whatever its arguments;
/// - `exec:PROGRAM[,ARG...]`: an argv action whose argv starts with exactly these strings,
///   compared one by one as given (`exec:/usr/bin/systemctl,restart` allows
///   `["/usr/bin/systemctl", "restart", "websvc"]`, not `["systemctl", "restart", "websvc"]`
///   nor `["/usr/bin/systemctl", "stop", "websvc"]`). Commas separate the strings, so an
///   argument containing a comma cannot be named; allow a shorter prefix instead.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    rules: Vec<AllowRule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum AllowRule {
    Builtin(&'static str),
    ArgvPrefix(Vec<String>),
}

impl std::fmt::Display for AllowRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AllowRule::Builtin(k) => f.write_str(k),
            AllowRule::ArgvPrefix(p) => write!(f, "exec:{}", p.join(",")),
        }
    }
}

impl AllowList {
    /// Parses the values of `--allow-action`; the error names the bad value.
    pub fn parse<S: AsRef<str>>(values: &[S]) -> Result<AllowList, String> {
        let mut rules = Vec::new();
        for v in values {
            let v = v.as_ref();
            let rule = if let Some(rest) = v.strip_prefix("exec:") {
                let parts: Vec<String> = rest.split(',').map(str::to_owned).collect();
                if let Some(i) = parts.iter().position(String::is_empty) {
                    return Err(format!(
                        "--allow-action {v:?}: {} is empty; expected exec:PROGRAM[,ARG...]",
                        if i == 0 {
                            "the program".to_owned()
                        } else {
                            format!("argument {i}")
                        }
                    ));
                }
                AllowRule::ArgvPrefix(parts)
            } else if let Some(k) = BUILTIN_KINDS.iter().find(|k| **k == v) {
                AllowRule::Builtin(k)
            } else {
                return Err(format!(
                    "--allow-action {v:?}: expected a built-in ({}) or exec:PROGRAM[,ARG...]",
                    BUILTIN_KINDS.join(", ")
                ));
            };
            if !rules.contains(&rule) {
                rules.push(rule);
            }
        }
        Ok(AllowList { rules })
    }

    /// Whether every action is allowed (no `--allow-action` given).
    pub fn allows_everything(&self) -> bool {
        self.rules.is_empty()
    }

    /// Ok if `spec` may run; else the reason, naming the action and the rules.
    pub fn check(&self, spec: &ActionSpec) -> Result<(), String> {
        if self.rules.is_empty() {
            return Ok(());
        }
        let allowed = self.rules.iter().any(|r| match (r, spec) {
            (AllowRule::ArgvPrefix(prefix), ActionSpec::Argv { argv, .. }) => {
                argv.len() >= prefix.len() && argv.iter().zip(prefix).all(|(a, p)| a == p)
            }
            (AllowRule::Builtin(kind), spec) => spec.builtin_name() == Some(*kind),
            _ => false,
        });
        if allowed {
            return Ok(());
        }
        let what = match spec {
            ActionSpec::Argv { argv, .. } => format!("argv {argv:?}"),
            other => format!("built-in {}", other.builtin_name().unwrap_or("?")),
        };
        Err(format!(
            "refused by this agent's --allow-action list: {what} matches none of {}",
            self
        ))
    }
}

impl std::fmt::Display for AllowList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.rules.is_empty() {
            return f.write_str("everything");
        }
        let rules: Vec<String> = self.rules.iter().map(ToString::to_string).collect();
        f.write_str(&rules.join(", "))
    }
}

/// Why the executor could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("--protect {path:?}: {source}")]
    BadProtect {
        path: String,
        source: bellwether_model::ActionSpecError,
    },
    #[error("--protect {path}: {source}")]
    Snapshot {
        path: String,
        source: std::io::Error,
    },
    #[error("--cgroup {dir}: not a directory")]
    BadCgroup { dir: String },
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Executor {
    /// Takes the start-time snapshots: each protected file (relative to `rootfs`) and the dpkg
    /// status if there is one. A snapshot that already exists in `state_dir` is kept, so an
    /// agent restart does not adopt drift that happened while it was down.
    pub fn new(
        rootfs: PathBuf,
        state_dir: &Path,
        protect: &[String],
        cgroup: Option<PathBuf>,
    ) -> Result<Self, SetupError> {
        if let Some(dir) = &cgroup {
            if !dir.is_dir() {
                return Err(SetupError::BadCgroup {
                    dir: dir.display().to_string(),
                });
            }
        }
        let snapshots = state_dir.join("protected");
        let snapshot_setup = |source: std::io::Error| SetupError::Snapshot {
            path: snapshots.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&snapshots).map_err(snapshot_setup)?;
        let snap_dir = InRoot::open(&snapshots).map_err(snapshot_setup)?;
        let root = InRoot::open(&rootfs).map_err(|source| SetupError::Snapshot {
            path: rootfs.display().to_string(),
            source,
        })?;
        let mut files: Vec<(String, bool)> = Vec::new();
        for p in protect {
            check_relative_path(p).map_err(|source| SetupError::BadProtect {
                path: p.clone(),
                source,
            })?;
            files.push((p.clone(), true));
        }
        files.push((DPKG_STATUS.to_string(), false));
        for (rel, required) in files {
            if snap_dir.exists(&rel) {
                continue;
            }
            let snap = |e: bellwether_drift::inroot::Error| SetupError::Snapshot {
                path: rel.clone(),
                source: e.into(),
            };
            // Read inside the rootfs: a protected file under a link that leads out of it is
            // not there, and the agent refuses to start rather than keep a copy of another.
            match root.read(&rel) {
                Ok(bytes) => snap_dir.write_atomic(&rel, &bytes).map_err(snap)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {}
                Err(e) => return Err(snap(e)),
            }
        }
        Ok(Executor {
            snapshots,
            cgroup,
            allow: AllowList::default(),
            process_log: state_dir.join("processes.log"),
            pg: crate::pg::PgDatabases::default(),
            mirrors: crate::actions::mirror::Mirrors::new(state_dir),
            shadows: crate::actions::shadow::Shadows::new(&rootfs, state_dir),
            rootfs,
        })
    }

    /// Runs only what `allow` allows (the default allows everything).
    pub fn with_allow_list(mut self, allow: AllowList) -> Self {
        self.allow = allow;
        self
    }

    /// What starts again the shadows this agent followed before it stopped (recorded in the
    /// state directory by `shadow_start`), each only if the allow-list still lets
    /// `shadow_start` run. Blocking: a start may take a base point, so run it on a thread of
    /// its own.
    pub fn shadow_resumer(
        &self,
    ) -> impl FnOnce() -> Vec<crate::actions::shadow::Resumed> + Send + 'static {
        let shadows = self.shadows.clone();
        let allow = self.allow.clone();
        move || {
            shadows.resume(|call| {
                allow.check(&ActionSpec::Shadow {
                    op: bellwether_model::shadow::ShadowOp::Start,
                    shadow: Box::new(call.clone()),
                    timeout_ms: None,
                })
            })
        }
    }

    /// This executor's shadows (a handle: clones share the followers).
    pub fn shadows(&self) -> crate::actions::shadow::Shadows {
        self.shadows.clone()
    }

    /// The PostgreSQL instances the pg built-ins act on (`--database`).
    pub fn with_databases(mut self, pg: crate::pg::PgDatabases) -> Self {
        self.pg = pg;
        self
    }

    /// The allow-list in force.
    pub fn allow_list(&self) -> &AllowList {
        &self.allow
    }

    /// A handle of the rootfs, through which every built-in's path resolves inside it.
    fn root(&self) -> Result<InRoot, String> {
        InRoot::open(&self.rootfs)
            .map_err(|e| format!("could not open the rootfs {}: {e}", self.rootfs.display()))
    }

    fn snapshots(&self) -> Result<InRoot, String> {
        InRoot::open(&self.snapshots).map_err(|e| {
            format!(
                "could not open the snapshots in {}: {e}",
                self.snapshots.display()
            )
        })
    }

    /// The reason a write inside the rootfs failed: the path, the root, and the cause (with
    /// the symbolic link on the way, if there is one).
    fn write_error(&self, e: &bellwether_drift::inroot::Error) -> String {
        format!(
            "could not write {} in the rootfs {}: {}",
            e.path(),
            self.rootfs.display(),
            e.cause()
        )
    }

    /// Runs one action to its end (success, failure or timeout). Never panics on bad input;
    /// every problem is in the report's `error`.
    pub async fn run(&self, spec: &ActionSpec) -> ActionReport {
        let started_ms = now_ms();
        let timeout = Duration::from_millis(spec.timeout_ms());
        if let Err(reason) = self.allow.check(spec) {
            return ActionReport::new(ActionOutcome::Refused { reason }, started_ms, now_ms());
        }
        let mut report = match spec {
            ActionSpec::Argv { argv, .. } => self.run_argv(argv, timeout).await,
            ActionSpec::StartProcess { .. }
            | ActionSpec::StopProcess { .. }
            | ActionSpec::SampleProcesses { .. } => {
                // Each bounds its own waits by the timeout; the outer one is a backstop.
                let work = self.run_process_builtin(spec, timeout);
                match tokio::time::timeout(timeout + Duration::from_secs(1), work).await {
                    Ok(Ok(output)) => {
                        let mut r = done(ActionOutcome::Ok);
                        r.output = Some(output);
                        r
                    }
                    Ok(Err(e)) => done(failed(e)),
                    Err(_) => done(ActionOutcome::TimedOut {
                        after_ms: timeout.as_millis() as u64,
                    }),
                }
            }
            ActionSpec::PgReadSettings { .. }
            | ActionSpec::PgApply { .. }
            | ActionSpec::PgTrial { .. } => {
                // bellwether_pg::apply bounds its own restart wait by the timeout; the outer
                // one is a backstop.
                let work = self.pg.run(spec, timeout);
                match tokio::time::timeout(timeout + Duration::from_secs(1), work).await {
                    Ok(Ok(output)) => {
                        let mut r = done(ActionOutcome::Ok);
                        r.output = Some(output);
                        r
                    }
                    Ok(Err(e)) => done(failed(e)),
                    Err(_) => done(ActionOutcome::TimedOut {
                        after_ms: timeout.as_millis() as u64,
                    }),
                }
            }
            ActionSpec::MirrorProvision { .. }
            | ActionSpec::MirrorRetire { .. }
            | ActionSpec::MirrorPromote { .. }
            | ActionSpec::MirrorFence { .. } => {
                // Each bounds its own waits by the timeout; the outer one is a backstop.
                let work = self.mirrors.run(spec, timeout);
                match tokio::time::timeout(timeout + Duration::from_secs(5), work).await {
                    Ok(Ok(output)) => {
                        let mut r = done(ActionOutcome::Ok);
                        r.output = Some(output);
                        r
                    }
                    Ok(Err(e)) => done(failed(e)),
                    Err(_) => done(ActionOutcome::TimedOut {
                        after_ms: timeout.as_millis() as u64,
                    }),
                }
            }
            ActionSpec::Shadow { op, shadow, .. } => {
                // The built-in bounds its own waits by the timeout; the outer one is a backstop.
                let work = self.shadows.run(*op, shadow, timeout);
                match tokio::time::timeout(timeout + Duration::from_secs(5), work).await {
                    Ok(Ok(output)) => {
                        let mut r = done(ActionOutcome::Ok);
                        r.output = Some(output);
                        r
                    }
                    Ok(Err((e, output))) => {
                        let mut r = done(failed(e));
                        r.output = Some(output);
                        r
                    }
                    Err(_) => done(ActionOutcome::TimedOut {
                        after_ms: timeout.as_millis() as u64,
                    }),
                }
            }
            builtin => {
                let this = self.clone();
                let spec = builtin.clone();
                let job = tokio::task::spawn_blocking(move || this.run_builtin(&spec));
                match tokio::time::timeout(timeout, job).await {
                    Ok(Ok(Ok(()))) => done(ActionOutcome::Ok),
                    Ok(Ok(Err(e))) => done(failed(e)),
                    Ok(Err(e)) => done(failed(format!("the built-in panicked: {e}"))),
                    Err(_) => done(ActionOutcome::TimedOut {
                        after_ms: timeout.as_millis() as u64,
                    }),
                }
            }
        };
        report.started_ms = started_ms;
        report.finished_ms = now_ms().max(started_ms);
        report
    }

    async fn run_argv(&self, argv: &[String], timeout: Duration) -> ActionReport {
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .current_dir(&self.rootfs)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return done(failed(format!("could not start {:?}: {e}", argv[0]))),
        };
        // Dropping the wait on timeout drops the child, which kills it (kill_on_drop).
        match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Ok(Ok(out)) => {
                let code = out.status.code();
                let outcome = if out.status.success() {
                    ActionOutcome::Ok
                } else {
                    ActionOutcome::Failed {
                        exit_code: code,
                        error: match code {
                            Some(c) => format!("{:?} exited with status {c}", argv[0]),
                            None => format!("{:?} was killed by a signal", argv[0]),
                        },
                    }
                };
                let mut report = done(outcome);
                report.stdout_tail = tail(&out.stdout);
                report.stderr_tail = tail(&out.stderr);
                report
            }
            Ok(Err(e)) => done(failed(format!("could not wait for {:?}: {e}", argv[0]))),
            // The program was killed when the wait was dropped (kill_on_drop).
            Err(_) => done(ActionOutcome::TimedOut {
                after_ms: timeout.as_millis() as u64,
            }),
        }
    }

    /// The log the processes of `start_process` and `stop_process` write to (appended).
    fn open_process_log(&self) -> Result<std::fs::File, String> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.process_log)
            .map_err(|e| format!("could not open {}: {e}", self.process_log.display()))
    }

    /// `start_process`, `stop_process` and `sample_processes`; the `output` on success.
    async fn run_process_builtin(
        &self,
        spec: &ActionSpec,
        timeout: Duration,
    ) -> Result<serde_json::Value, String> {
        use bellwether_patch::process;
        match spec {
            ActionSpec::StartProcess { argv, pidfile, .. } => {
                let log = self.open_process_log()?;
                let from = log.metadata().map(|m| m.len()).unwrap_or(0);
                let started =
                    process::start(argv, pidfile.as_deref(), timeout, log, Some(&self.rootfs))
                        .await
                        .map_err(|e| process::explain_start_failure(&e, &self.process_log, from))?;
                // Without a pidfile the started process is the instance. It is not waited on
                // here: the runtime reaps it when it exits, and it outlives this action.
                drop(started.child);
                Ok(serde_json::json!({ "pid": started.pid }))
            }
            ActionSpec::StopProcess {
                pid, pidfile, argv, ..
            } => {
                let pid = match (pid, pidfile) {
                    (Some(p), _) => *p,
                    (None, Some(f)) => process::read_pidfile(f).map_err(|e| e.to_string())?,
                    (None, None) => return Err("stop_process needs `pid` or `pidfile`".into()),
                };
                let log = match argv {
                    Some(_) => Some(self.open_process_log()?),
                    None => None,
                };
                let stopped = process::stop(pid, argv.as_deref(), timeout, log)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(serde_json::json!({ "pid": stopped.pid, "exited": stopped.exited }))
            }
            ActionSpec::SampleProcesses { pids } => {
                let pids = pids.clone();
                let samples = tokio::task::spawn_blocking(move || process::sample(&pids))
                    .await
                    .map_err(|e| format!("the sampler panicked: {e}"))?;
                serde_json::to_value(samples).map_err(|e| e.to_string())
            }
            other => Err(format!("{} is not a process built-in", other.describe())),
        }
    }

    fn run_builtin(&self, spec: &ActionSpec) -> Result<(), String> {
        match spec {
            ActionSpec::Argv { .. } => Err("an argv action is not a built-in".into()),
            ActionSpec::StartProcess { .. }
            | ActionSpec::StopProcess { .. }
            | ActionSpec::SampleProcesses { .. } => {
                Err("a process built-in runs through run_process_builtin".into())
            }
            ActionSpec::PgReadSettings { .. }
            | ActionSpec::PgApply { .. }
            | ActionSpec::PgTrial { .. } => {
                Err("a pg built-in runs through crate::pg::PgDatabases::run".into())
            }
            ActionSpec::MirrorProvision { .. }
            | ActionSpec::MirrorRetire { .. }
            | ActionSpec::MirrorPromote { .. }
            | ActionSpec::MirrorFence { .. } => {
                Err("a mirror built-in runs through crate::actions::mirror::Mirrors::run".into())
            }
            ActionSpec::Shadow { .. } => {
                Err("a shadow built-in runs through crate::actions::shadow::Shadows::run".into())
            }
            ActionSpec::SetServiceVersion { version, .. } => self
                .root()?
                .write_atomic(VERSION_FILE, format!("{version}\n").as_bytes())
                .map_err(|e| self.write_error(&e)),
            ActionSpec::RestoreFile { path, .. } => {
                check_relative_path(path).map_err(|e| e.to_string())?;
                let bytes = self.snapshots()?.read(path).map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => {
                        format!("{path} has no snapshot; start the agent with --protect {path}")
                    }
                    _ => format!("could not read the snapshot of {path}: {}", e.cause()),
                })?;
                self.root()?
                    .write_atomic(path, &bytes)
                    .map_err(|e| self.write_error(&e))
            }
            ActionSpec::ReinstallPackage { package, .. } => self.reinstall(package),
            ActionSpec::SetCgroup {
                cpu_max,
                memory_max,
                ..
            } => {
                let dir = self
                    .cgroup
                    .as_ref()
                    .ok_or("set_cgroup needs the agent started with --cgroup DIR")?;
                let cg = InRoot::open(dir)
                    .map_err(|e| format!("could not open --cgroup {}: {e}", dir.display()))?;
                for (file, value) in [("cpu.max", cpu_max), ("memory.max", memory_max)] {
                    let Some(value) = value else { continue };
                    let path = dir.join(file);
                    if !cg.exists(file) {
                        return Err(format!(
                            "{} does not exist; is the {} controller enabled for this cgroup?",
                            path.display(),
                            file.trim_end_matches(".max")
                        ));
                    }
                    // Control files are written in place: they cannot be renamed over.
                    cg.write_in_place(file, format!("{value}\n").as_bytes())
                        .map_err(|e| {
                            format!(
                                "could not write {:?} to {}: {}",
                                value,
                                path.display(),
                                e.cause()
                            )
                        })?;
                }
                Ok(())
            }
        }
    }

    fn reinstall(&self, package: &str) -> Result<(), String> {
        let before = self
            .snapshots()?
            .read(DPKG_STATUS)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .map_err(|e| {
                format!(
                    "no snapshot of {DPKG_STATUS} was taken at agent start: {}",
                    e.cause()
                )
            })?;
        let good = stanzas(&before)
            .into_iter()
            .find(|s| stanza_package(s) == Some(package))
            .ok_or_else(|| format!("package {package} was not installed when the agent started"))?;
        let root = self.root()?;
        let now = root
            .read(DPKG_STATUS)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .map_err(|e| {
                format!(
                    "could not read {DPKG_STATUS} in the rootfs {}: {}",
                    self.rootfs.display(),
                    e.cause()
                )
            })?;
        let mut out: Vec<String> = Vec::new();
        let mut replaced = false;
        for s in stanzas(&now) {
            if stanza_package(&s) == Some(package) {
                if !replaced {
                    out.push(good.clone());
                    replaced = true;
                }
            } else {
                out.push(s);
            }
        }
        if !replaced {
            out.push(good);
        }
        let mut text = out.join("\n\n");
        text.push('\n');
        root.write_atomic(DPKG_STATUS, text.as_bytes())
            .map_err(|e| self.write_error(&e))
    }
}

/// A report of `outcome`; `run` fills in the timing.
fn done(outcome: ActionOutcome) -> ActionReport {
    ActionReport::new(outcome, 0, 0)
}

/// A failure without an exit code (a built-in, or a program that did not run to its end).
fn failed(error: String) -> ActionOutcome {
    ActionOutcome::Failed {
        exit_code: None,
        error,
    }
}

/// The last [`TAIL_BYTES`] of an output, as text (invalid UTF-8 replaced).
fn tail(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(TAIL_BYTES);
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

/// The stanzas of a dpkg status file, without their trailing blank lines.
fn stanzas(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Vec<&str> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !cur.is_empty() {
                out.push(cur.join("\n"));
                cur.clear();
            }
        } else {
            cur.push(line);
        }
    }
    if !cur.is_empty() {
        out.push(cur.join("\n"));
    }
    out
}

fn stanza_package(s: &str) -> Option<&str> {
    s.lines()
        .find_map(|l| l.strip_prefix("Package:"))
        .map(str::trim)
}

#[cfg(test)]
mod tests;
