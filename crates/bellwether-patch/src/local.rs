//! The one-machine patch: the IO loop around the pure `bellwether_engine::patch` state
//! machine, with everything on this host.
//!
//! It runs the proxy in-process, starts and stops the instances' processes
//! ([`crate::process`]), samples CPU and RSS from `/proc` and latency, throughput and errors
//! from the proxy, feeds them to the engine, carries out the actions it returns, posts
//! webhooks, and keeps the report on disk (`STATE_DIR/ID.json`) for `patch status` and
//! `patch report`. What the user sees (events as they happen, the summary) is the caller's:
//! it is told through an [`Observer`].

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime};

use bellwether_engine::patch::{
    Action, Event, Input, Instance, MetricKind, PatchEngine, PatchPlan, PatchReport, PlanError,
    Sample,
};
use bellwether_proxy::config::{
    AdminState, CheckKind, Dur, HostPort, Protocol, RawBackend, RawConfig, RawListener,
};
use bellwether_proxy::metrics::HistSnapshot;
use bellwether_proxy::{ProxyConfig, ProxyHandle};
use serde_json::json;

use crate::process::{self, ProcessError};

/// Why a local patch could not start. Each is a problem with the plan or its inputs.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("original.pidfile: {0}")]
    OriginalPidfile(ProcessError),
    #[error("original: give `pid` or `pidfile`")]
    NoOriginal,
    #[error("{0}")]
    Proxy(String),
    #[error(transparent)]
    Plan(#[from] PlanError),
}

/// What the runner tells its caller as the patch goes.
pub trait Observer {
    /// The proxy is listening (before the first event).
    fn proxy_started(&mut self, _proxy: &ProxyHandle) {}
    /// `new` are the report's events since the last call.
    fn events(&mut self, _report: &PatchReport, _new: &[Event]) {}
    /// The patch reached a final stage, or a signal stopped it (`interrupted`).
    fn finished(&mut self, _report: &PatchReport, _interrupted: bool) {}
    /// The patch is finished and the proxy goes on serving until the shutdown future ends.
    fn still_serving(&mut self, _report: &PatchReport, _proxy: &ProxyHandle) {}
}

/// One local patch to run.
pub struct LocalPatch {
    pub plan: PatchPlan,
    pub id: String,
    pub state_dir: PathBuf,
    /// The proxy's configuration: [`proxy_config`] with the caller's admin settings applied.
    pub proxy: ProxyConfig,
    /// Stop the proxy as soon as the patch is finished instead of serving until `shutdown`.
    pub exit_when_done: bool,
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The original instance's PID, from the plan's `pid` or its pidfile.
pub fn original_pid(plan: &PatchPlan) -> Result<u32, LocalError> {
    match (&plan.original.pid, &plan.original.pidfile) {
        (Some(p), _) => Ok(*p),
        (None, Some(f)) => process::read_pidfile(f).map_err(LocalError::OriginalPidfile),
        (None, None) => Err(LocalError::NoOriginal),
    }
}

/// The proxy the plan asks for: one listener, the original as the one backend, the plan's
/// health checks and drain grace. The caller adds its admin settings and validates.
pub fn proxy_config(plan: &PatchPlan) -> RawConfig {
    let protocol = if plan.proxy.protocol == "tcp" {
        Protocol::Tcp
    } else {
        Protocol::Postgres
    };
    let mut raw = RawConfig::new(
        vec![RawListener {
            address: plan.proxy.listen.clone(),
            protocol,
            mode: Default::default(),
        }],
        vec![RawBackend {
            name: plan.original.name.clone(),
            address: HostPort(plan.original.address.clone()),
            weight: 100,
            admin: AdminState::Ready,
            password: plan.original.password.clone(),
            role: None,
        }],
    );
    raw.admin = plan.proxy.admin.clone();
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
    raw
}

/// Writes the report whole (`bellwether_fs`: a temporary file, fsync, rename, directory
/// fsync), so a reader never sees half a report and a crash leaves the previous one.
fn write_report(dir: &Path, id: &str, bytes: &[u8]) -> std::io::Result<()> {
    bellwether_fs::write_atomic(&dir.join(format!("{id}.json")), bytes)
}

/// Process-tree CPU and memory of one instance.
#[derive(Default)]
struct ProcSampler {
    last: Option<(u64, tokio::time::Instant)>,
}

impl ProcSampler {
    /// CPU in percent of one core since the last call, and RSS in bytes.
    fn sample(&mut self, pid: Option<u32>) -> (Option<f64>, Option<f64>) {
        let Some(u) = pid.and_then(process::usage) else {
            self.last = None;
            return (None, None);
        };
        let now = tokio::time::Instant::now();
        let hz = process::ticks_per_s() as f64;
        let cpu = self.last.map(|(t0, at)| {
            let dt = (now - at).as_secs_f64().max(1e-3);
            u.cpu_ticks.saturating_sub(t0) as f64 / hz / dt * 100.0
        });
        self.last = Some((u.cpu_ticks, now));
        (cpu, Some(u.rss_bytes as f64))
    }
}

const PROXY_KINDS: [MetricKind; 4] = [
    MetricKind::LatencyP50,
    MetricKind::LatencyP99,
    MetricKind::Throughput,
    MetricKind::ErrorRate,
];

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
            for k in PROXY_KINDS {
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
            for k in PROXY_KINDS {
                out.insert(k, None);
            }
        }
        self.last = Some((q, e, h, now));
    }
}

/// An action's failure as the engine's `Done` detail shows it.
#[derive(Debug)]
struct Failed(String);

impl<E: std::fmt::Display> From<E> for Failed {
    fn from(e: E) -> Self {
        Failed(e.to_string())
    }
}

fn fail(msg: impl Into<String>) -> Failed {
    Failed(msg.into())
}

struct Runner<'o, O: Observer> {
    plan: PatchPlan,
    proxy: ProxyHandle,
    state_dir: PathBuf,
    original_pid: Option<u32>,
    patched_pid: Option<u32>,
    patched_child: Option<tokio::process::Child>,
    procs: BTreeMap<&'static str, ProcSampler>,
    proxies: BTreeMap<&'static str, ProxySampler>,
    observer: &'o mut O,
    told: usize,
}

impl<O: Observer> Runner<'_, O> {
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
        let (cpu, rss) = self.procs.entry(key).or_default().sample(pid);
        values.insert(MetricKind::Cpu, cpu);
        values.insert(MetricKind::Rss, rss);
        Sample {
            at_ms: unix_ms(),
            instance: i,
            values,
        }
    }

    /// Tells the observer the new events, logs them, and saves the report.
    fn progress(&mut self, report: &PatchReport) {
        let new = &report.events[self.told.min(report.events.len())..];
        for e in new {
            tracing::info!(patch = %report.id, kind = %e.kind, figures = %e.figures, "{}", e.message);
        }
        self.observer.events(report, new);
        self.told = report.events.len();
        self.save(report);
    }

    fn save(&self, report: &PatchReport) {
        let ok = serde_json::to_vec_pretty(report)
            .map_err(std::io::Error::other)
            .and_then(|b| write_report(&self.state_dir, &report.id, &b));
        if let Err(e) = ok {
            tracing::warn!(
                path = %self.state_dir.join(format!("{}.json", report.id)).display(),
                error = %e,
                "Cannot write the patch report."
            );
        }
    }

    /// Carries out one awaited action and returns the engine's Done input.
    async fn execute(&mut self, action: &Action) -> Input {
        let (ok, detail) = match self.try_execute(action).await {
            Ok(d) => (true, d),
            Err(Failed(e)) => {
                tracing::warn!(action = ?action, error = %e, "Patch action failed.");
                (false, json!({ "error": e }))
            }
        };
        Input::Done {
            at_ms: unix_ms(),
            ok,
            detail,
        }
    }

    async fn try_execute(&mut self, action: &Action) -> Result<serde_json::Value, Failed> {
        match action {
            Action::StartPatched => {
                let argv = self.plan.patched.start.clone();
                let log_path = self.state_dir.join("patched-start.log");
                let log = std::fs::File::create(&log_path)?;
                let started = process::start(
                    &argv,
                    self.plan.patched.pidfile.as_deref(),
                    self.plan.health.timeout.0,
                    log,
                    None,
                )
                .await
                .map_err(|e| Failed(process::explain_start_failure(&e, &log_path, 0)))?;
                self.patched_child = started.child;
                self.patched_pid = Some(started.pid);
                let raw = RawBackend {
                    name: self.plan.patched.name.clone(),
                    address: HostPort(self.plan.patched.address.clone()),
                    weight: 0,
                    admin: AdminState::Ready,
                    password: self.plan.patched.password.clone(),
                    role: None,
                };
                self.proxy.pool().add(&raw)?;
                self.proxy.pool().mark_down(&raw.name)?;
                Ok(json!({ "pid": started.pid, "argv": argv }))
            }
            Action::WaitPatchedHealthy { timeout_ms } => {
                let name = self.plan.patched.name.clone();
                let backend = self
                    .proxy
                    .pool()
                    .get(&name)
                    .ok_or_else(|| fail("the patched backend is not registered"))?;
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
                    return Err(fail(format!(
                        "not healthy after {timeout_ms} ms: {}",
                        h.last_error.unwrap_or_else(|| "no check passed".into())
                    )));
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
                    let status =
                        process::run_stop_argv(&argv, None, Stdio::null(), Stdio::null()).await;
                    if let Some(mut c) = self.patched_child.take() {
                        let _ = tokio::time::timeout(Duration::from_secs(30), c.wait()).await;
                    }
                    let status = status?;
                    Ok(json!({ "argv": argv, "status": status.code() }))
                }
                Instance::Original => match self.plan.original.stop.clone() {
                    Some(argv) => {
                        let status =
                            process::run_stop_argv(&argv, None, Stdio::inherit(), Stdio::inherit())
                                .await?;
                        Ok(json!({ "argv": argv, "status": status.code() }))
                    }
                    None => {
                        let pid = self
                            .original_pid
                            .ok_or_else(|| fail("the original's PID is unknown"))?;
                        // One process, never a group; a failed kill(2) fails the phase.
                        process::terminate(pid)?;
                        Ok(json!({ "signal": "SIGTERM", "pid": pid }))
                    }
                },
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
async fn post_json(url: &str, body: &serde_json::Value) -> Result<u16, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// webhooks are supported")?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let hostport = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    let payload = serde_json::to_vec(body).map_err(|e| e.to_string())?;
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
        std::io::Result::Ok(resp)
    };
    let resp = tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .map_err(|_| "webhook timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&resp);
    text.get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| "webhook answered without an HTTP status".to_string())
}

/// Runs a patch to its end on this host and returns its final report. `shutdown` (SIGINT or
/// SIGTERM in the CLI) interrupts the patch where it stands; after a finished patch the proxy
/// goes on serving until it completes, unless `exit_when_done`.
pub async fn run<O: Observer>(
    patch: LocalPatch,
    shutdown: impl Future<Output = ()>,
    observer: &mut O,
) -> Result<PatchReport, LocalError> {
    let LocalPatch {
        plan,
        id,
        state_dir,
        proxy,
        exit_when_done,
    } = patch;
    let original_pid = original_pid(&plan)?;
    let proxy = ProxyHandle::start(proxy)
        .await
        .map_err(|e| LocalError::Proxy(e.to_string()))?;
    observer.proxy_started(&proxy);
    let mut engine = PatchEngine::new(&id, plan.clone(), unix_ms())?;
    let mut r = Runner {
        plan: plan.clone(),
        proxy,
        state_dir,
        original_pid: Some(original_pid),
        patched_pid: None,
        patched_child: None,
        procs: BTreeMap::new(),
        proxies: BTreeMap::new(),
        observer,
        told: 0,
    };
    r.progress(engine.report());
    let mut tick = tokio::time::interval(plan.sample_interval.0);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    let mut interrupted = false;
    while !engine.stage().is_final() {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut shutdown => {
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
            r.progress(engine.report());
            let done = r.execute(&action).await;
            if !matches!(action, Action::Webhook { .. }) {
                queue.extend(engine.step(done));
            }
        }
        r.progress(engine.report());
    }
    let report = engine.report().clone();
    r.observer.finished(&report, interrupted);
    if !exit_when_done && !interrupted {
        r.observer.still_serving(&report, &r.proxy);
        shutdown.await;
    }
    r.proxy.shutdown().await;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        write_report(dir.path(), "p1", b"{\"a\":1}").unwrap();
        write_report(dir.path(), "p1", b"{\"a\":2}").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("p1.json")).unwrap(),
            "{\"a\":2}"
        );
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["p1.json"], "no temporary file is left");
    }
}
