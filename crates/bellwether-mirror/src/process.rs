//! The local process driver: each mirror is a server process on this host, under
//! `BASE_DIR/ID/`. Redis: `redis-server --replicaof PRIMARY --port N --dir D` (no persistence:
//! a restarted mirror resyncs). PostgreSQL: `pg_basebackup -R` of the primary into
//! `D/data`, then `pg_ctl start` on a free port, as the `postgres` user when this process is
//! root. Ports are found by binding port 0 and releasing it (another process may take it in
//! between: the start then fails and is retried on a new port, up to three times).
//!
//! The instance's record is `BASE_DIR/ID/instance.json`, so an agent that restarts can still
//! retire what it made. A provisioning that fails stops what it started and removes the
//! directory before it returns the error.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;
use tokio::time::Instant;

use crate::provision::{check_instance_id, Instance, ProvisionRequest, Provisioner};
use crate::{ms, DepKind, Endpoint, InstanceStatus, MirrorError, Role};

/// The OS user PostgreSQL runs as when this process is root.
const PG_USER: &str = "postgres";
/// How often readiness is asked again (a server says it is ready only by answering).
const READY_POLL: Duration = Duration::from_millis(20);
/// How long a retired process gets to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// The timeout of each probe during readiness and of `status`.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs mirrors as local processes under one base directory.
#[derive(Debug, Clone)]
pub struct LocalProcess {
    base_dir: PathBuf,
    redis_server: PathBuf,
    pg_bindir: Option<PathBuf>,
    ready_timeout: Duration,
}

impl LocalProcess {
    /// A driver keeping its instances under `base_dir` (created when missing), with
    /// `redis-server` from `$PATH`, PostgreSQL's binaries found from the primary's version
    /// (`bellwether_pg::find_bindir`), and 60 s for an instance to be serving and caught up.
    pub fn new(base_dir: impl Into<PathBuf>) -> LocalProcess {
        LocalProcess {
            base_dir: base_dir.into(),
            redis_server: PathBuf::from("redis-server"),
            pg_bindir: None,
            ready_timeout: Duration::from_secs(60),
        }
    }

    /// The `redis-server` to run (a path, or a name looked up in `$PATH`).
    pub fn with_redis_server(mut self, program: impl Into<PathBuf>) -> LocalProcess {
        self.redis_server = program.into();
        self
    }

    /// PostgreSQL's binaries (`pg_basebackup`, `pg_ctl`); found from the primary's version
    /// when not given.
    pub fn with_pg_bindir(mut self, dir: impl Into<PathBuf>) -> LocalProcess {
        self.pg_bindir = Some(dir.into());
        self
    }

    /// How long a new instance may take to serve with its replication link up.
    pub fn with_ready_timeout(mut self, timeout: Duration) -> LocalProcess {
        self.ready_timeout = timeout;
        self
    }

    pub fn base_dir(&self) -> &Path {
        &self.base_dir
    }

    /// The record of instance `id` (`BASE_DIR/ID/instance.json`).
    pub fn load(&self, id: &str) -> Result<Instance, MirrorError> {
        check_instance_id(id)?;
        let path = self.base_dir.join(id).join("instance.json");
        let text = std::fs::read_to_string(&path).map_err(|e| io("reading", &path, e))?;
        serde_json::from_str(&text).map_err(|e| MirrorError::Io {
            what: "parsing",
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// Every instance this driver's base directory holds a record of.
    pub fn list(&self) -> Result<Vec<Instance>, MirrorError> {
        let mut out = Vec::new();
        let rd = match std::fs::read_dir(&self.base_dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io("listing", &self.base_dir, e)),
        };
        for e in rd.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            if e.path().join("instance.json").is_file() {
                out.push(self.load(&id)?);
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    async fn provision_in(
        &self,
        req: &ProvisionRequest,
        dir: &Path,
        started: Instant,
    ) -> Result<Instance, MirrorError> {
        let (endpoint, pid) = match req.kind {
            DepKind::Redis => self.start_redis(req, dir).await?,
            DepKind::Postgres => self.start_pg(req, dir).await?,
            DepKind::Tcp => unreachable!("refused before"),
        };
        let inst = Instance {
            id: req.instance_id.clone(),
            dependency: req.dependency.clone(),
            kind: req.kind,
            endpoint,
            primary: req.primary.clone(),
            pid: Some(pid),
            dir: Some(dir.to_path_buf()),
            provision_ms: ms(started.elapsed()),
        };
        let record = dir.join("instance.json");
        let json = serde_json::to_string_pretty(&inst).unwrap_or_default();
        std::fs::write(&record, json).map_err(|e| io("writing", &record, e))?;
        Ok(inst)
    }

    /// Starts `redis-server --replicaof` and waits for its link to be up; returns the
    /// endpoint and pid. On failure the process is gone.
    async fn start_redis(
        &self,
        req: &ProvisionRequest,
        dir: &Path,
    ) -> Result<(String, u32), MirrorError> {
        let program = find_program(&self.redis_server)?;
        let primary = Endpoint::parse(&req.primary)?;
        let log = dir.join("redis.log");
        let mut last = None;
        for _ in 0..if req.port.is_some() { 1 } else { 3 } {
            let port = match req.port {
                Some(p) => p,
                None => free_port().map_err(|m| provision_err("finding a free port", m))?,
            };
            let mut child = Command::new(&program)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--replicaof", &primary.host, &primary.port.to_string()])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .arg("--dir")
                .arg(dir)
                .arg("--logfile")
                .arg(&log)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                // Its own process group: a signal to the agent's group does not reach it.
                .process_group(0)
                .spawn()
                .map_err(|e| provision_err(&format!("running {}", program.display()), e))?;
            let pid = child.id().unwrap_or(0);
            let endpoint = format!("127.0.0.1:{port}");
            let deadline = Instant::now() + self.ready_timeout;
            let failure = loop {
                if let Ok(Some(status)) = child.try_wait() {
                    break format!(
                        "redis-server on port {port} exited with {status}: {}",
                        log_tail(&log)
                    );
                }
                let st = crate::probe(DepKind::Redis, &endpoint, PROBE_TIMEOUT).await?;
                if st.reachable && st.role == Some(Role::Replica) && st.link_up == Some(true) {
                    // tokio reaps it when it exits; the record keeps its pid for retire.
                    drop(child);
                    return Ok((endpoint, pid));
                }
                if Instant::now() > deadline {
                    let _ = child.kill().await;
                    return Err(provision_err(
                        &format!("redis mirror {} of {}", req.instance_id, req.primary),
                        format!(
                            "its replication link was not up within {} ms ({}): {}",
                            ms(self.ready_timeout),
                            st.error.unwrap_or_else(|| "link down".into()),
                            log_tail(&log)
                        ),
                    ));
                }
                tokio::time::sleep(READY_POLL).await;
            };
            last = Some(failure);
        }
        Err(provision_err(
            &format!("redis mirror {} of {}", req.instance_id, req.primary),
            last.unwrap_or_default(),
        ))
    }

    /// `pg_basebackup -R` of the primary, then `pg_ctl start` on a free port; waits until
    /// the standby streams. On failure the server is stopped.
    async fn start_pg(
        &self,
        req: &ProvisionRequest,
        dir: &Path,
    ) -> Result<(String, u32), MirrorError> {
        let cfg = crate::pg::config(&req.primary, PROBE_TIMEOUT)?;
        let bindir = match &self.pg_bindir {
            Some(d) => d.clone(),
            None => {
                let c = crate::pg::connect(&req.primary, &cfg, PROBE_TIMEOUT).await?;
                let row = c
                    .query_one("SELECT current_setting('server_version_num')::int", &[])
                    .await
                    .map_err(|e| {
                        provision_err(&format!("asking {} its version", req.primary), e)
                    })?;
                let num: i32 = row.get(0);
                bellwether_pg::find_bindir(num as u32, None)
                    .map_err(|e| provision_err("PostgreSQL binaries for the mirror", e))?
            }
        };
        chown_to_pg_user(dir)?;
        if is_root() {
            let probe = pg_argv(Path::new("test"), &["-w".into(), dir.display().to_string()]);
            if run(&probe, "checking the mirror directory", self.ready_timeout)
                .await
                .is_err()
            {
                return Err(provision_err(
                    &format!("mirror directory {}", dir.display()),
                    format!("the {PG_USER} user cannot write it: a parent directory is not searchable by it; make {} and its parents searchable (chmod o+x) or choose another base directory", self.base_dir.display()),
                ));
            }
        }
        let data = dir.join("data");
        let conninfo = if req.primary.contains("://") {
            req.primary.clone()
        } else {
            let ep = Endpoint::parse(&req.primary)?;
            format!("host={} port={} user={PG_USER}", ep.host, ep.port)
        };
        let basebackup = pg_argv(
            &bindir.join("pg_basebackup"),
            &[
                "-d".into(),
                conninfo,
                "-D".into(),
                data.display().to_string(),
                "-R".into(),
                "-X".into(),
                "stream".into(),
                "-c".into(),
                "fast".into(),
                // Without a replication slot pg_basebackup's WAL stream reports no flush
                // position, so it is never a synchronous standby. With its default temporary
                // slot it is one under `synchronous_standby_names = '*'` (or any pattern its
                // name matches), and when it is chosen (the real standby reconnecting after a
                // promotion, say) every commit waits for it, that is for the end of the copy:
                // 9.3–9.6 s for a commit during a throttled copy, 0.19–0.21 s with this flag
                // (`examples/pg_basebackup_sync.sh`). The cost: a checkpoint during the copy
                // may recycle WAL the stream has not read yet; the copy then fails with a
                // clear error and the engine provisions again.
                "--no-slot".into(),
                // The standby's own start syncs its whole data directory (it starts from a
                // backup label, not a clean shutdown), so syncing here too only doubles the
                // cost (3.4 s of 4 s for 31 MB on the test machine).
                "--no-sync".into(),
            ],
        );
        run(
            &basebackup,
            "pg_basebackup of the primary",
            self.ready_timeout,
        )
        .await?;
        for file in ["postgresql.conf", "pg_hba.conf"] {
            if !data.join(file).is_file() {
                return Err(provision_err(
                    &format!("the base backup of {}", req.primary),
                    format!("it has no {file}: the primary's configuration lives outside its data directory, which this driver does not copy"),
                ));
            }
        }
        let sock = dir.join("sock");
        std::fs::create_dir_all(&sock).map_err(|e| io("creating", &sock, e))?;
        chown_to_pg_user(&sock)?;
        let log = dir.join("server.log");
        let auto = data.join("postgresql.auto.conf");
        let base_auto = std::fs::read_to_string(&auto).map_err(|e| io("reading", &auto, e))?;
        let mut last = None;
        for _ in 0..if req.port.is_some() { 1 } else { 3 } {
            let port = match req.port {
                Some(p) => p,
                None => free_port().map_err(|m| provision_err("finding a free port", m))?,
            };
            // The last occurrence wins: these override what the primary's files say.
            let conf = format!(
                "{base_auto}\n# bellwether mirror\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nhot_standby = on\n",
                sock.display()
            );
            std::fs::write(&auto, conf).map_err(|e| io("writing", &auto, e))?;
            let secs = self.ready_timeout.as_secs().max(1).to_string();
            let start = pg_argv(
                &bindir.join("pg_ctl"),
                &[
                    "start".into(),
                    "-w".into(),
                    "-t".into(),
                    secs,
                    "-D".into(),
                    data.display().to_string(),
                    "-l".into(),
                    log.display().to_string(),
                ],
            );
            match run(
                &start,
                "pg_ctl start of the mirror",
                self.ready_timeout + Duration::from_secs(5),
            )
            .await
            {
                Ok(_) => {}
                Err(e) => {
                    last = Some(format!("{e}: {}", log_tail(&log)));
                    continue;
                }
            }
            let endpoint = format!("127.0.0.1:{port}");
            let deadline = Instant::now() + self.ready_timeout;
            loop {
                let st = crate::probe(DepKind::Postgres, &endpoint, PROBE_TIMEOUT).await?;
                if st.reachable && st.role == Some(Role::Replica) && st.link_up == Some(true) {
                    let pid = postmaster_pid(&data).unwrap_or(0);
                    return Ok((endpoint, pid));
                }
                if Instant::now() > deadline {
                    return Err(provision_err(
                        &format!("postgres mirror {} of {}", req.instance_id, req.primary),
                        format!(
                            "it was not streaming within {} ms ({}): {}",
                            ms(self.ready_timeout),
                            st.error.unwrap_or_else(|| "no WAL receiver".into()),
                            log_tail(&log)
                        ),
                    ));
                }
                tokio::time::sleep(READY_POLL).await;
            }
        }
        Err(provision_err(
            &format!("postgres mirror {} of {}", req.instance_id, req.primary),
            last.unwrap_or_default(),
        ))
    }

    /// Stops whatever runs in `dir` (found from its files, so a failed provisioning is
    /// cleaned up too) and removes the directory.
    async fn stop_and_remove(
        &self,
        kind: DepKind,
        dir: &Path,
        pid: Option<u32>,
    ) -> Result<(), MirrorError> {
        match kind {
            DepKind::Postgres => {
                let data = dir.join("data");
                if let Some(pid) = postmaster_pid(&data) {
                    if alive(pid) {
                        let bindir = match &self.pg_bindir {
                            Some(d) => Some(d.clone()),
                            None => pg_version_of(&data)
                                .and_then(|v| bellwether_pg::find_bindir(v, None).ok()),
                        };
                        let stopped = match bindir {
                            Some(b) => {
                                let stop = pg_argv(
                                    &b.join("pg_ctl"),
                                    &[
                                        "stop".into(),
                                        "-w".into(),
                                        "-m".into(),
                                        "fast".into(),
                                        "-D".into(),
                                        data.display().to_string(),
                                    ],
                                );
                                run(
                                    &stop,
                                    "pg_ctl stop of the mirror",
                                    STOP_GRACE + Duration::from_secs(5),
                                )
                                .await
                                .is_ok()
                            }
                            None => false,
                        };
                        if !stopped {
                            terminate(pid).await;
                        }
                    }
                }
            }
            _ => {
                if let Some(pid) = pid {
                    // The pid of a process that exited may belong to another by now: only
                    // a process started in this directory is signalled.
                    if alive(pid) && runs_in(pid, dir) {
                        terminate(pid).await;
                    }
                }
            }
        }
        match std::fs::remove_dir_all(dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("removing", dir, e)),
        }
    }
}

#[async_trait::async_trait]
impl Provisioner for LocalProcess {
    fn name(&self) -> &'static str {
        "local-process"
    }

    async fn provision(&self, req: &ProvisionRequest) -> Result<Instance, MirrorError> {
        let started = Instant::now();
        check_instance_id(&req.instance_id)?;
        if req.kind == DepKind::Tcp {
            return Err(MirrorError::Unsupported {
                operation: "provision",
                kind: "tcp",
            });
        }
        if req.port == Some(0) {
            return Err(provision_err(
                "port 0",
                "name a port from 1 to 65535, or none to let the driver choose",
            ));
        }
        // Nothing is made for a primary that does not answer as a primary.
        let st = crate::probe(req.kind, &req.primary, PROBE_TIMEOUT).await?;
        if !st.reachable {
            return Err(provision_err(
                &format!("primary {}", req.primary),
                format!("it is unreachable: {}", st.error.unwrap_or_default()),
            ));
        }
        if st.role != Some(Role::Primary) {
            return Err(MirrorError::WrongRole {
                endpoint: req.primary.clone(),
                expected: "primary",
                actual: "replica".to_string(),
            });
        }
        std::fs::create_dir_all(&self.base_dir).map_err(|e| io("creating", &self.base_dir, e))?;
        let dir = self.base_dir.join(&req.instance_id);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(provision_err(
                    &format!("instance {}", req.instance_id),
                    format!(
                        "{} already exists; retire it first or choose another id",
                        dir.display()
                    ),
                ))
            }
            Err(e) => return Err(io("creating", &dir, e)),
        }
        match self.provision_in(req, &dir, started).await {
            Ok(inst) => {
                tracing::info!(dependency = %req.dependency, instance = %inst.id, endpoint = %inst.endpoint, provision_ms = inst.provision_ms, "Provisioned a mirror.");
                Ok(inst)
            }
            Err(e) => {
                if let Err(clean) = self.stop_and_remove(req.kind, &dir, None).await {
                    tracing::warn!(dir = %dir.display(), error = %clean, "Cleaning up a failed provisioning failed.");
                }
                Err(e)
            }
        }
    }

    async fn retire(&self, inst: &Instance) -> Result<(), MirrorError> {
        check_instance_id(&inst.id)?;
        // Only this driver's own directory is ever removed, whatever the record says.
        let dir = self.base_dir.join(&inst.id);
        self.stop_and_remove(inst.kind, &dir, inst.pid).await?;
        tracing::info!(instance = %inst.id, "Retired a mirror.");
        Ok(())
    }

    async fn status(&self, inst: &Instance) -> Result<InstanceStatus, MirrorError> {
        if let Some(pid) = inst.pid {
            if !alive(pid) {
                return Ok(InstanceStatus::unreachable(
                    0.0,
                    format!("its process {pid} is gone"),
                ));
            }
        }
        crate::probe(inst.kind, &inst.endpoint, PROBE_TIMEOUT).await
    }
}

fn io(what: &'static str, path: &Path, e: std::io::Error) -> MirrorError {
    MirrorError::Io {
        what,
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

fn provision_err(what: &str, message: impl std::fmt::Display) -> MirrorError {
    MirrorError::Provision {
        what: what.to_string(),
        message: message.to_string(),
    }
}

/// A free TCP port on the loopback for a mirror to listen on, below the ephemeral range so
/// that no client connection holds it when the mirror starts again ([`bellwether_pg::listen_port`]).
pub(crate) fn free_port() -> Result<u16, String> {
    bellwether_pg::listen_port().map_err(|e| format!("finding a port to listen on: {e}"))
}

/// `program` as a path: as given when it has a `/`, else the first in `$PATH`.
fn find_program(program: &Path) -> Result<PathBuf, MirrorError> {
    if program.components().count() > 1 {
        if program.is_file() {
            return Ok(program.to_path_buf());
        }
        return Err(provision_err(
            &program.display().to_string(),
            "no such program; install Redis (apt install redis-server) or give its path",
        ));
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            provision_err(
                &program.display().to_string(),
                "not found in $PATH; install Redis (apt install redis-server) or give its path",
            )
        })
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(5).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

/// Whether `pid` runs (a zombie counts as gone).
fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesised command name.
    !matches!(
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next()),
        Some("Z") | Some("X") | None
    )
}

/// Whether `pid`'s working directory is `dir` (redis-server changes into its `--dir`), also
/// when the directory was removed under it (the kernel then shows `DIR (deleted)`).
fn runs_in(pid: u32, dir: &Path) -> bool {
    let Ok(cwd) = std::fs::read_link(format!("/proc/{pid}/cwd")) else {
        return false;
    };
    let want = dir
        .canonicalize()
        .or_else(|_| std::path::absolute(dir))
        .unwrap_or_else(|_| dir.to_path_buf());
    let cwd = cwd.to_string_lossy();
    let want = want.to_string_lossy();
    cwd == want || cwd.strip_suffix(" (deleted)") == Some(&*want)
}

/// SIGTERM, then SIGKILL after [`STOP_GRACE`]; returns once the process is gone.
async fn terminate(pid: u32) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let p = Pid::from_raw(pid as i32);
    let _ = kill(p, Signal::SIGTERM);
    let deadline = Instant::now() + STOP_GRACE;
    while alive(pid) {
        if Instant::now() > deadline {
            let _ = kill(p, Signal::SIGKILL);
            break;
        }
        tokio::time::sleep(READY_POLL).await;
    }
    // After SIGKILL the kernel ends it at once; wait for that too.
    let deadline = Instant::now() + STOP_GRACE;
    while alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(READY_POLL).await;
    }
}

/// The postmaster's pid, the first line of `DATA/postmaster.pid`.
fn postmaster_pid(data: &Path) -> Option<u32> {
    std::fs::read_to_string(data.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// A `server_version_num`-like number from `DATA/PG_VERSION` (`15` → 150000).
fn pg_version_of(data: &Path) -> Option<u32> {
    let v = std::fs::read_to_string(data.join("PG_VERSION")).ok()?;
    let major: u32 = v.trim().split('.').next()?.parse().ok()?;
    Some(major * 10_000)
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The argv that runs `bin args…` as the PostgreSQL user when this process is root.
fn pg_argv(bin: &Path, args: &[String]) -> Vec<String> {
    let mut argv = Vec::with_capacity(args.len() + 4);
    if is_root() {
        argv.extend(["runuser", "-u", PG_USER, "--"].map(String::from));
    }
    argv.push(bin.display().to_string());
    argv.extend(args.iter().cloned());
    argv
}

/// Gives `path` to the PostgreSQL user when this process is root.
fn chown_to_pg_user(path: &Path) -> Result<(), MirrorError> {
    if !is_root() {
        return Ok(());
    }
    let user = nix::unistd::User::from_name(PG_USER)
        .ok()
        .flatten()
        .ok_or_else(|| provision_err(&format!("user {PG_USER}"), "running as root needs the postgres user to run the server as; create it (apt install postgresql creates it)"))?;
    std::os::unix::fs::chown(path, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
        .map_err(|e| io("chown to postgres", path, e))
}

/// Runs `argv` to the end within `timeout`; the error names the step and carries the
/// output's tail.
async fn run(argv: &[String], what: &str, timeout: Duration) -> Result<String, MirrorError> {
    let child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| provision_err(what, format!("cannot run {}: {e}", argv[0])))?;
    let out = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| provision_err(what, format!("it did not finish within {} ms", ms(timeout))))?
        .map_err(|e| provision_err(what, e))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        let tail: String = text
            .chars()
            .rev()
            .take(1000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        return Err(provision_err(
            what,
            format!("exited with {}: {}", out.status, tail.trim()),
        ));
    }
    Ok(text)
}
