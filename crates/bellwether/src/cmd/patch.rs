//! `bellwether patch`: the phased patch of one service instance.
//!
//! This module is the IO loop around the pure `bellwether_engine::patch` state machine: it
//! runs the proxy in-process, starts and stops the instances' processes, samples CPU and RSS
//! from `/proc` and latency, throughput and errors from the proxy, feeds them to the engine,
//! carries out the actions it returns, posts webhooks, and keeps the report on disk for
//! `patch status` and `patch report`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use bellwether_engine::patch::{
    Action, Input, Instance, MetricKind, PatchEngine, PatchPlan, PatchReport, Sample, Stage,
};
use bellwether_model::text::Escaped;
use bellwether_proxy::config::{
    AdminState, CheckKind, Dur, HostPort, Protocol, RawBackend, RawConfig, RawListener,
};
use bellwether_proxy::metrics::HistSnapshot;
use bellwether_proxy::ProxyHandle;
use serde_json::json;

use super::{OutputFormat, UsageError};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    verb: Verb,
    /// Where patch reports are kept (one JSON file per patch, plus its log).
    #[arg(
        long,
        global = true,
        env = "BELLWETHER_PATCH_DIR",
        default_value = ".bellwether/patches"
    )]
    state_dir: PathBuf,
    /// `--server URL` and its flags: the patch runs in the server (see patch_remote.rs).
    #[command(flatten)]
    remote: super::patch_remote::RemoteArgs,
}

#[derive(Debug, clap::Subcommand)]
enum Verb {
    /// Abort a patch running in the server (--server): it rolls back, or fails before
    /// anything changed. A local patch stops with SIGINT.
    Abort {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Start a patch from a YAML plan (see docs/patch.md). Without --wait it runs in the
    /// background and prints its ID; with --wait it runs here and prints each event.
    Start(StartArgs),
    /// List the patches in the state directory with their stage and outcome.
    Status(StatusArgs),
    /// Show one patch's report: events, triggering metric, phase durations.
    Report(ReportArgs),
}

#[derive(Debug, clap::Args)]
struct StartArgs {
    /// The plan file.
    plan: PathBuf,
    /// Run in the foreground and print events as they happen.
    #[arg(long)]
    wait: bool,
    /// Stop the proxy as soon as the patch is finished, instead of serving until SIGINT or
    /// SIGTERM. Clients still connected are closed at their next transaction boundary.
    #[arg(long)]
    exit_when_done: bool,
    /// The patch ID (default: the plan's name and the start time): 1 to 64 of A–Z, a–z, 0–9,
    /// `.`, `_` and `-`, starting with a letter or digit. It names the report file in the
    /// state directory.
    #[arg(long, value_parser = patch_id)]
    id: Option<String>,
    /// `json` prints the final report as JSON instead of the human summary.
    #[arg(long, value_enum, default_value = "human")]
    output: OutputFormat,
    /// The protection of the plan's `proxy.admin` API, as for `bellwether proxy`; the token
    /// file defaults to `<state-dir>/<id>.admin.token` (kept or generated, mode 0600).
    #[command(flatten)]
    admin: super::proxy::AdminArgs,
}

#[derive(Debug, clap::Args)]
struct StatusArgs {
    #[arg(long, value_enum, default_value = "human")]
    output: OutputFormat,
}

#[derive(Debug, clap::Args)]
struct ReportArgs {
    /// The patch ID, as `patch status` lists it.
    id: String,
    #[arg(long, value_enum, default_value = "human")]
    output: OutputFormat,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.remote.server.is_some() {
        use super::patch_remote::Verb as R;
        let verb = match args.verb {
            Verb::Start(a) => R::Start {
                plan: a.plan,
                wait: a.wait,
                id: a.id,
                output: a.output,
            },
            Verb::Status(a) => R::Status { output: a.output },
            Verb::Report(a) => R::Report {
                id: a.id,
                output: a.output,
            },
            Verb::Abort { id, reason } => R::Abort { id, reason },
        };
        return super::patch_remote::run(&args.remote, verb);
    }
    match args.verb {
        Verb::Abort { .. } => Err(UsageError(
            "patch abort needs --server URL: a local patch stops with SIGINT".into(),
        )
        .into()),
        Verb::Start(a) => start(a, &args.state_dir),
        Verb::Status(a) => status(a, &args.state_dir),
        Verb::Report(a) => report(a, &args.state_dir),
    }
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn load_plan(path: &Path) -> anyhow::Result<PatchPlan> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| UsageError(format!("cannot read {}: {e}", path.display())))?;
    PatchPlan::parse(&path.display().to_string(), &text)
        .map_err(|e| UsageError(e.to_string()).into())
}

/// A patch ID names a file in the state directory, so it must stay a plain file name: `../x`
/// or `/etc/x` would write the report outside it.
fn patch_id(s: &str) -> Result<String, String> {
    let ok = (1..=64).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{} is not a patch ID: use 1 to 64 of A-Z, a-z, 0-9, '.', '_' and '-', starting with a letter or digit",
            bellwether_model::text::quote(s)
        ))
    }
}

fn start(args: StartArgs, state_dir: &Path) -> anyhow::Result<ExitCode> {
    let plan = load_plan(&args.plan)?;
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("cannot create {}", state_dir.display()))?;
    let id = args.id.clone().unwrap_or_else(|| {
        let clean: String = plan
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        format!("{clean}-{}", unix_ms() / 1000)
    });
    // Fail here, not in a background log, when the original cannot be found.
    if let Some(f) = &plan.original.pidfile {
        read_pidfile(f).map_err(|e| UsageError(format!("original.pidfile: {e:#}")))?;
    }
    if !args.wait {
        // Run the same command in the foreground of a detached child, logging to a file.
        let log_path = state_dir.join(format!("{id}.log"));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        let exe = std::env::current_exe().context("cannot find this program's path")?;
        let mut cmd = std::process::Command::new(exe);
        cmd.arg("patch")
            .arg("--state-dir")
            .arg(state_dir)
            .arg("start")
            .arg(&args.plan)
            .arg("--wait")
            .arg("--id")
            .arg(&id);
        if args.exit_when_done {
            cmd.arg("--exit-when-done");
        }
        cmd.args(args.admin.to_args());
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start the patch in the background")?;
        println!("{id}");
        eprintln!(
            "patch {id} running in the background (pid {}); log: {}",
            child.id(),
            log_path.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let mut admin = args.admin.clone();
    if admin.admin_token_file.is_none() {
        admin.admin_token_file = Some(state_dir.join(format!("{id}.admin.token")));
    }
    let report = rt.block_on(run_patch(
        plan,
        id,
        state_dir.to_path_buf(),
        &admin,
        args.exit_when_done,
        args.output == OutputFormat::Human,
    ))?;
    if args.output == OutputFormat::Json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(match report.stage {
        Stage::Promoted => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    })
}

/// Process-tree CPU and memory from `/proc`.
struct ProcSampler {
    last: Option<(u64, tokio::time::Instant)>,
}

fn proc_tree(root: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                if let Some(after) = stat.rsplit_once(')').map(|(_, a)| a) {
                    if let Some(ppid) = after.split_whitespace().nth(1).and_then(|p| p.parse().ok())
                    {
                        parents.push((pid, ppid));
                    }
                }
            }
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        tree.extend(parents.iter().filter(|&&(_, pp)| pp == p).map(|&(c, _)| c));
        i += 1;
    }
    tree
}

/// Total CPU ticks (user + system) and resident bytes of a process tree; `None` if the root
/// is gone.
fn proc_usage(root: u32) -> Option<(u64, u64)> {
    std::fs::metadata(format!("/proc/{root}")).ok()?;
    let mut ticks = 0;
    let mut rss = 0;
    for pid in proc_tree(root) {
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            if let Some((_, after)) = stat.rsplit_once(')') {
                let f: Vec<&str> = after.split_whitespace().collect();
                // After the command: state is field 3, utime 14 and stime 15 (1-based).
                ticks += f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                ticks += f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            }
        }
        if let Ok(statm) = std::fs::read_to_string(format!("/proc/{pid}/statm")) {
            rss += statm
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
                * 4096;
        }
    }
    Some((ticks, rss))
}

impl ProcSampler {
    /// CPU in percent of one core since the last call, and RSS in bytes.
    fn sample(&mut self, pid: Option<u32>) -> (Option<f64>, Option<f64>) {
        let Some((ticks, rss)) = pid.and_then(proc_usage) else {
            self.last = None;
            return (None, None);
        };
        let now = tokio::time::Instant::now();
        let cpu = self.last.map(|(t0, at)| {
            let dt = (now - at).as_secs_f64().max(1e-3);
            // Linux reports in USER_HZ, which is 100 on every mainstream architecture.
            ticks.saturating_sub(t0) as f64 / 100.0 / dt * 100.0
        });
        self.last = Some((ticks, now));
        (cpu, Some(rss as f64))
    }
}

/// Proxy-level metrics of one backend over the last interval.
#[derive(Default)]
struct ProxySampler {
    last: Option<(u64, u64, HistSnapshot, tokio::time::Instant)>,
}

impl ProxySampler {
    fn sample(
        &mut self,
        proxy: &ProxyHandle,
        backend: &str,
        out: &mut BTreeMap<MetricKind, Option<f64>>,
    ) {
        let now = tokio::time::Instant::now();
        let Some(b) = proxy.pool().get(backend) else {
            self.last = None;
            for k in [
                MetricKind::LatencyP50,
                MetricKind::LatencyP99,
                MetricKind::Throughput,
                MetricKind::ErrorRate,
            ] {
                out.insert(k, None);
            }
            return;
        };
        let q = b.metrics.queries.load(Relaxed);
        let e = b.metrics.query_errors.load(Relaxed);
        let h = b.metrics.query_latency.snapshot();
        if let Some((q0, e0, h0, at)) = &self.last {
            let dq = q.saturating_sub(*q0);
            let de = e.saturating_sub(*e0);
            let dh = h.since(h0);
            let dt = (now - *at).as_secs_f64().max(1e-3);
            out.insert(MetricKind::LatencyP50, dh.quantile(0.5));
            out.insert(MetricKind::LatencyP99, dh.quantile(0.99));
            out.insert(MetricKind::Throughput, (dq > 0).then(|| dq as f64 / dt));
            out.insert(
                MetricKind::ErrorRate,
                (dq > 0).then(|| de as f64 / dq as f64),
            );
        } else {
            for k in [
                MetricKind::LatencyP50,
                MetricKind::LatencyP99,
                MetricKind::Throughput,
                MetricKind::ErrorRate,
            ] {
                out.insert(k, None);
            }
        }
        self.last = Some((q, e, h, now));
    }
}

fn read_pidfile(path: &str) -> anyhow::Result<u32> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read pidfile {path}"))?;
    text.lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("pidfile {path} does not start with a PID"))
}

struct Runner {
    plan: PatchPlan,
    proxy: ProxyHandle,
    state_dir: PathBuf,
    original_pid: Option<u32>,
    patched_pid: Option<u32>,
    patched_child: Option<tokio::process::Child>,
    procs: BTreeMap<&'static str, ProcSampler>,
    proxies: BTreeMap<&'static str, ProxySampler>,
    human: bool,
    printed: usize,
}

impl Runner {
    fn name(&self, i: Instance) -> &str {
        match i {
            Instance::Original => &self.plan.original.name,
            Instance::Patched => &self.plan.patched.name,
        }
    }

    fn sample(&mut self, i: Instance) -> Sample {
        let key = match i {
            Instance::Original => "original",
            Instance::Patched => "patched",
        };
        let mut values = BTreeMap::new();
        let name = self.name(i).to_string();
        self.proxies
            .entry(key)
            .or_default()
            .sample(&self.proxy, &name, &mut values);
        let pid = match i {
            Instance::Original => self.original_pid,
            Instance::Patched => self.patched_pid,
        };
        let (cpu, rss) = self
            .procs
            .entry(key)
            .or_insert(ProcSampler { last: None })
            .sample(pid);
        values.insert(MetricKind::Cpu, cpu);
        values.insert(MetricKind::Rss, rss);
        Sample {
            at_ms: unix_ms(),
            instance: i,
            values,
        }
    }

    fn print_events(&mut self, report: &PatchReport) {
        for e in &report.events[self.printed..] {
            if self.human {
                println!(
                    "[{:>7.2}s] {:<24} {}",
                    (e.at_ms - report.started_ms) as f64 / 1000.0,
                    e.kind,
                    Escaped(&e.message)
                );
            }
            tracing::info!(patch = %report.id, kind = %e.kind, figures = %e.figures, "{}", e.message);
        }
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        self.printed = report.events.len();
    }

    fn save(&self, report: &PatchReport) {
        let path = self.state_dir.join(format!("{}.json", report.id));
        let tmp = self.state_dir.join(format!(".{}.json.tmp", report.id));
        let ok = serde_json::to_vec_pretty(report)
            .ok()
            .and_then(|b| std::fs::write(&tmp, b).ok())
            .and_then(|_| std::fs::rename(&tmp, &path).ok());
        if ok.is_none() {
            tracing::warn!(path = %path.display(), "Cannot write the patch report.");
        }
    }

    /// Carries out one awaited action and returns the engine's Done input.
    async fn execute(&mut self, action: &Action) -> Input {
        let (ok, detail) = match self.try_execute(action).await {
            Ok(d) => (true, d),
            Err(e) => {
                tracing::warn!(action = ?action, error = %format!("{e:#}"), "Patch action failed.");
                (false, json!({ "error": format!("{e:#}") }))
            }
        };
        Input::Done {
            at_ms: unix_ms(),
            ok,
            detail,
        }
    }

    async fn try_execute(&mut self, action: &Action) -> anyhow::Result<serde_json::Value> {
        match action {
            Action::StartPatched => {
                let argv = &self.plan.patched.start;
                let log = std::fs::File::create(self.state_dir.join("patched-start.log"))?;
                let mut child = tokio::process::Command::new(&argv[0])
                    .args(&argv[1..])
                    .stdin(Stdio::null())
                    .stdout(log.try_clone()?)
                    .stderr(log)
                    .spawn()
                    .with_context(|| format!("cannot run {:?}", argv[0]))?;
                let pid = match &self.plan.patched.pidfile {
                    // The start command is a launcher (like `pg_ctl -w start`): wait for it.
                    Some(pidfile) => {
                        let status = tokio::time::timeout(self.plan.health.timeout.0, child.wait())
                            .await
                            .map_err(|_| {
                                anyhow::anyhow!(
                                    "start command still running after the health timeout"
                                )
                            })??;
                        anyhow::ensure!(status.success(), "start command exited with {status}");
                        read_pidfile(pidfile)?
                    }
                    None => {
                        let pid = child.id().context("the started process exited at once")?;
                        self.patched_child = Some(child);
                        pid
                    }
                };
                self.patched_pid = Some(pid);
                let raw = RawBackend {
                    name: self.plan.patched.name.clone(),
                    address: HostPort(self.plan.patched.address.clone()),
                    weight: 0,
                    admin: AdminState::Ready,
                    password: self.plan.patched.password.clone(),
                };
                self.proxy.pool().add(&raw)?;
                self.proxy.pool().mark_down(&raw.name)?;
                Ok(json!({ "pid": pid, "argv": argv }))
            }
            Action::WaitPatchedHealthy { timeout_ms } => {
                let name = self.plan.patched.name.clone();
                let backend = self
                    .proxy
                    .pool()
                    .get(&name)
                    .context("the patched backend is not registered")?;
                let mut gen = self.proxy.pool().subscribe();
                let wait = async {
                    loop {
                        if backend.health().up {
                            return;
                        }
                        if gen.changed().await.is_err() {
                            return;
                        }
                    }
                };
                if tokio::time::timeout(Duration::from_millis(*timeout_ms), wait)
                    .await
                    .is_err()
                {
                    let h = backend.health();
                    anyhow::bail!(
                        "not healthy after {timeout_ms} ms: {}",
                        h.last_error.unwrap_or_else(|| "no check passed".into())
                    );
                }
                let h = backend.health();
                Ok(json!({ "checks": h.checks, "consecutive_ok": h.consecutive_ok }))
            }
            Action::Route { original, patched } => {
                for (name, w) in [
                    (self.plan.original.name.clone(), *original),
                    (self.plan.patched.name.clone(), *patched),
                ] {
                    let admin = (w > 0).then_some(AdminState::Ready);
                    self.proxy.set_backend(&name, Some(w), admin)?;
                }
                Ok(json!({ "original_weight": original, "patched_weight": patched }))
            }
            Action::Drain {
                instance,
                timeout_ms,
            } => {
                let name = self.name(*instance).to_string();
                self.proxy
                    .set_backend(&name, None, Some(AdminState::Drain))?;
                let outcome = self
                    .proxy
                    .wait_drained(&name, Duration::from_millis(*timeout_ms))
                    .await;
                let b = self.proxy.pool().get(&name);
                let graceful = b
                    .map(|b| b.metrics.graceful_closes.load(Relaxed))
                    .unwrap_or(0);
                let mut v = serde_json::to_value(&outcome)?;
                v["graceful_closes_total"] = json!(graceful);
                Ok(v)
            }
            Action::Stop { instance } => match instance {
                Instance::Patched => {
                    let argv = self.plan.patched.stop.clone();
                    let status = tokio::process::Command::new(&argv[0])
                        .args(&argv[1..])
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                        .await
                        .with_context(|| format!("cannot run {:?}", argv[0]))?;
                    if let Some(mut c) = self.patched_child.take() {
                        let _ = tokio::time::timeout(Duration::from_secs(30), c.wait()).await;
                    }
                    anyhow::ensure!(status.success(), "stop command exited with {status}");
                    Ok(json!({ "argv": argv, "status": status.code() }))
                }
                Instance::Original => {
                    let argv = match &self.plan.original.stop {
                        Some(a) => a.clone(),
                        None => {
                            let pid = self.original_pid.context("the original's PID is unknown")?;
                            // One process, never a group: 0, 1 and PIDs that are negative as
                            // a pid_t are refused (a pidfile may hold anything), and a failed
                            // kill(2) fails the phase.
                            let one = bellwether_engine::patch::check_pid(pid)
                                .map_err(|e| anyhow::anyhow!("will not signal PID {pid}: {e}"))?;
                            nix::sys::signal::kill(
                                nix::unistd::Pid::from_raw(one),
                                nix::sys::signal::Signal::SIGTERM,
                            )
                            .with_context(|| format!("cannot send SIGTERM to PID {pid}"))?;
                            return Ok(json!({ "signal": "SIGTERM", "pid": pid }));
                        }
                    };
                    let status = tokio::process::Command::new(&argv[0])
                        .args(&argv[1..])
                        .stdin(Stdio::null())
                        .status()
                        .await?;
                    anyhow::ensure!(status.success(), "stop command exited with {status}");
                    Ok(json!({ "argv": argv, "status": status.code() }))
                }
            },
            Action::ServeOnly { instance } => {
                let keep = self.name(*instance).to_string();
                let other = match instance {
                    Instance::Original => self.plan.patched.name.clone(),
                    Instance::Patched => self.plan.original.name.clone(),
                };
                self.proxy
                    .set_backend(&keep, Some(100), Some(AdminState::Ready))?;
                let _ = self.proxy.pool().remove(&other);
                Ok(
                    json!({ "serving": keep, "removed": other, "sessions": self.proxy.registry().len() }),
                )
            }
            Action::Webhook { body } => {
                if let Some(url) = self.plan.webhook.clone() {
                    let body = body.clone();
                    tokio::spawn(async move {
                        match post_json(&url, &body).await {
                            Ok(status) => tracing::info!(url = %url, status, "Webhook delivered."),
                            Err(e) => tracing::warn!(url = %url, error = %e, "Webhook failed."),
                        }
                    });
                }
                Ok(json!({}))
            }
        }
    }
}

/// POSTs JSON to an `http://` URL and returns the status code.
async fn post_json(url: &str, body: &serde_json::Value) -> anyhow::Result<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url
        .strip_prefix("http://")
        .context("only http:// webhooks are supported")?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let hostport = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    let payload = serde_json::to_vec(body)?;
    let work = async {
        let mut s = tokio::net::TcpStream::connect(&hostport).await?;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nUser-Agent: bellwether\r\n\r\n",
            payload.len()
        );
        s.write_all(head.as_bytes()).await?;
        s.write_all(&payload).await?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).await?;
        anyhow::Ok(resp)
    };
    let resp = tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .context("webhook timed out")??;
    let text = String::from_utf8_lossy(&resp);
    text.get(9..12)
        .and_then(|s| s.parse().ok())
        .context("webhook answered without an HTTP status")
}

async fn run_patch(
    plan: PatchPlan,
    id: String,
    state_dir: PathBuf,
    admin: &super::proxy::AdminArgs,
    exit_when_done: bool,
    human: bool,
) -> anyhow::Result<PatchReport> {
    let original_pid = match (&plan.original.pid, &plan.original.pidfile) {
        (Some(p), _) => *p,
        (None, Some(f)) => {
            read_pidfile(f).map_err(|e| UsageError(format!("original.pidfile: {e:#}")))?
        }
        (None, None) => unreachable_plan()?,
    };
    let protocol = if plan.proxy.protocol == "tcp" {
        Protocol::Tcp
    } else {
        Protocol::Postgres
    };
    let mut raw = RawConfig::new(
        vec![RawListener {
            address: plan.proxy.listen.clone(),
            protocol,
        }],
        vec![RawBackend {
            name: plan.original.name.clone(),
            address: HostPort(plan.original.address.clone()),
            weight: 100,
            admin: AdminState::Ready,
            password: plan.original.password.clone(),
        }],
    );
    raw.admin = plan.proxy.admin.clone();
    admin.apply(&mut raw);
    raw.health.check = if plan.health.check == "tcp" {
        CheckKind::Tcp
    } else {
        CheckKind::Postgres
    };
    raw.health.interval = Dur(plan.health.interval.0);
    raw.health.rise = plan.health.rise.max(1);
    raw.health.user = plan.health.user.clone();
    raw.health.database = plan.health.database.clone();
    raw.shutdown_grace = Dur(plan.drain_timeout.0);
    let config = raw
        .validate("plan")
        .map_err(|e| UsageError(e.to_string()))?;
    let proxy = ProxyHandle::start(config)
        .await
        .map_err(|e| UsageError(e.to_string()))?;
    if human {
        println!("patch {id}: proxy listening on {}", proxy.listen_addrs()[0]);
        if let (Some(url), Some(token)) = (proxy.admin_url(), proxy.admin_token()) {
            println!("patch {id}: admin api on {url}");
            println!("patch {id}: admin token in {}", token.file().display());
        }
    }
    let mut engine =
        PatchEngine::new(&id, plan.clone(), unix_ms()).map_err(|e| UsageError(e.to_string()))?;
    let mut r = Runner {
        plan: plan.clone(),
        proxy,
        state_dir,
        original_pid: Some(original_pid),
        patched_pid: None,
        patched_child: None,
        procs: BTreeMap::new(),
        proxies: BTreeMap::new(),
        human,
        printed: 0,
    };
    r.print_events(engine.report());
    r.save(engine.report());
    let mut tick = tokio::time::interval(plan.sample_interval.0);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let signal = super::proxy::wait_for_signal();
    tokio::pin!(signal);
    let mut interrupted = false;
    while !engine.stage().is_final() {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut signal => {
                interrupted = true;
                break;
            }
        }
        let mut queue: Vec<Action> = Vec::new();
        for i in [Instance::Original, Instance::Patched] {
            let s = r.sample(i);
            queue.extend(engine.step(Input::Sample(s)));
        }
        queue.extend(engine.step(Input::Tick { at_ms: unix_ms() }));
        // Awaited actions feed their result back, which may ask for the next one.
        while let Some(action) = (!queue.is_empty()).then(|| queue.remove(0)) {
            r.print_events(engine.report());
            r.save(engine.report());
            let done = r.execute(&action).await;
            if !matches!(action, Action::Webhook { .. }) {
                // Restart the samplers' windows after a change of routing.
                queue.extend(engine.step(done));
            }
        }
        r.print_events(engine.report());
        r.save(engine.report());
    }
    let report = engine.report().clone();
    if interrupted {
        eprintln!(
            "patch {id}: interrupted in stage {:?}; the proxy stops now",
            report.stage
        );
    } else if human {
        print_summary(&report);
    }
    if !exit_when_done && !interrupted {
        if human {
            println!(
                "patch {id}: finished; still proxying on {} until SIGINT or SIGTERM",
                r.proxy.listen_addrs()[0]
            );
            use std::io::Write as _;
            let _ = std::io::stdout().flush();
        }
        super::proxy::wait_for_signal().await;
    }
    r.proxy.shutdown().await;
    Ok(report)
}

fn unreachable_plan() -> anyhow::Result<u32> {
    Err(UsageError("original: give `pid` or `pidfile`".into()).into())
}

fn print_summary(report: &PatchReport) {
    println!(
        "patch {}: {} ({:?})",
        Escaped(&report.id),
        report.outcome(),
        report.stage
    );
    if let Some(t) = &report.trigger {
        println!(
            "  triggered by {} against the {}: value {:.6} vs baseline {:.6} ({:+.0}%), for {:.1}s, severity {:.2}",
            t.metric, t.against, t.value, t.baseline, t.deviation * 100.0, t.for_ms as f64 / 1000.0, t.severity_score
        );
    }
    for p in &report.phases {
        println!(
            "  {} phase {}: {} — {} ms{}",
            p.kind,
            p.phase,
            Escaped(&p.name),
            p.took_ms,
            if p.ok { "" } else { " (failed)" }
        );
    }
}

fn read_reports(state_dir: &Path) -> anyhow::Result<Vec<PatchReport>> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(state_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", state_dir.display())),
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "json")
            && !e.file_name().to_string_lossy().starts_with('.')
        {
            let text = std::fs::read_to_string(&p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            let r: PatchReport = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a patch report", p.display()))?;
            out.push(r);
        }
    }
    out.sort_by_key(|r| r.started_ms);
    Ok(out)
}

fn status(args: StatusArgs, state_dir: &Path) -> anyhow::Result<ExitCode> {
    let reports = read_reports(state_dir)?;
    if args.output == OutputFormat::Json {
        let rows: Vec<serde_json::Value> = reports
            .iter()
            .map(|r| {
                json!({
                    "id": r.id, "plan": r.plan_name, "stage": r.stage, "outcome": r.outcome(),
                    "started_ms": r.started_ms, "finished_ms": r.finished_ms,
                    "trigger": r.trigger.as_ref().map(|t| &t.metric), "last_severity": r.last_severity,
                    "last_event": r.events.last().map(|e| &e.message),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    if reports.is_empty() {
        println!("no patches in {}", state_dir.display());
    }
    for r in &reports {
        let trigger = r
            .trigger
            .as_ref()
            .map(|t| format!(" trigger={}", t.metric))
            .unwrap_or_default();
        println!(
            "{:<32} {:<12} severity={:.2}{trigger}  {}",
            Escaped(&r.id),
            r.outcome(),
            r.last_severity,
            Escaped(r.events.last().map(|e| e.message.as_str()).unwrap_or(""))
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn report(args: ReportArgs, state_dir: &Path) -> anyhow::Result<ExitCode> {
    let reports = read_reports(state_dir)?;
    let r = reports
        .into_iter()
        .find(|r| r.id == args.id)
        .ok_or_else(|| UsageError(format!("no patch `{}` in {}", args.id, state_dir.display())))?;
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&r)?),
        OutputFormat::Human => {
            print_summary(&r);
            for e in &r.events {
                println!(
                    "[{:>7.2}s] {:<24} {}",
                    (e.at_ms - r.started_ms) as f64 / 1000.0,
                    e.kind,
                    Escaped(&e.message)
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
