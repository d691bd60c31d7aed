//! The drill (`bellwether mirror drill`): a real primary and its mirrors on this host, served
//! through the proxy at an address of the user's choice from the first seconds to the end, under
//! a load that counts acknowledged writes; a fault injected into the primary a third of the way
//! through; and a report of detection and switch times, client errors, acknowledged writes
//! lost and the switch history.
//!
//! The primary is a throwaway: a `redis-server` without persistence, or a PostgreSQL cluster
//! (`initdb` in a temporary directory) whose commits wait for one synchronous standby
//! (`synchronous_standby_names = '*'`), so an acknowledged commit is on a mirror. The mirrors
//! are made by [`crate::LocalProcess`] and driven by the same engine as the server's, through
//! [`crate::local::LocalRunner`].
//!
//! Load: `clients` connections through the proxy, each alternating a write (Redis `SET
//! drill:C:N N`; PostgreSQL `INSERT INTO bellwether_drill VALUES (C, N)`, autocommit) and an
//! idempotent read of its last acknowledged write. A write counts as acknowledged when its
//! reply is `OK` (the commit returned). Redis replication is asynchronous, so a Redis client
//! also sends `WAIT 1 1000` after each acknowledged `SET`: the writes a mirror confirmed are
//! counted apart (`replicated_writes`); a write the primary acknowledged but had not yet sent
//! to any mirror when it was killed can be lost, as with any asynchronous Redis replica. A client whose connection fails reconnects at once.
//! At the end every acknowledged write is looked up on the final primary.
//!
//! Faults: `kill` (SIGKILL to the server's processes), `stop` (SIGSTOP: frozen, connections
//! hang; SIGCONT at the end), `slow` (the processes are stopped for 47 ms of every 53 ms: a
//! throttled server that still answers, about ten times slower).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bellwether_engine::mirror::{Event, Status, SwitchRecord};
use bellwether_model::mirror::{DepKind, DependencySpec};
use bellwether_model::Dur;
use serde::Serialize;
use serde_json::json;

use crate::local::{now_ms, LocalRunner, Router, RunnerOptions};
use crate::LocalProcess;

/// What is done to the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Fault {
    Kill,
    Stop,
    Slow,
}

impl Fault {
    pub fn parse(s: &str) -> Option<Fault> {
        match s {
            "kill" => Some(Fault::Kill),
            "stop" => Some(Fault::Stop),
            "slow" => Some(Fault::Slow),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct DrillOptions {
    pub kind: DepKind,
    pub fault: Fault,
    /// Where the proxy listens for clients, `HOST:PORT`.
    pub listen: String,
    /// How long the load runs; the fault comes at a third.
    pub seconds: u64,
    pub mirrors: u32,
    pub health_interval: Dur,
    pub clients: usize,
}

impl DrillOptions {
    pub fn new(kind: DepKind, fault: Fault, listen: &str) -> DrillOptions {
        DrillOptions {
            kind,
            fault,
            listen: listen.to_string(),
            seconds: 30,
            mirrors: 2,
            health_interval: Dur::from_millis(250),
            clients: 4,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error("the drill's options: {0}")]
    Options(String),
    #[error("starting the primary: {0}")]
    Primary(String),
    #[error("starting the proxy at {listen}: {message}")]
    Proxy { listen: String, message: String },
    #[error("the mirrors: {0}")]
    Mirrors(String),
    #[error("{0}")]
    Other(String),
}

/// What the drill measured.
#[derive(Debug, Clone, Serialize)]
pub struct DrillReport {
    pub kind: &'static str,
    pub fault: Fault,
    pub listen: String,
    pub seconds: u64,
    pub health_interval_ms: u64,
    pub mirrors: u32,
    pub primary: String,
    /// Since the load began.
    pub fault_at_ms: i64,
    /// Fault → the engine's first `primary_unhealthy` event.
    pub detected_after_ms: Option<i64>,
    /// Fault → the switch was decided.
    pub decided_after_ms: Option<i64>,
    /// Fault → the proxy routed to the new primary.
    pub switched_after_ms: Option<i64>,
    /// Fault → the first write acknowledged after the route (PostgreSQL: a commit waits for a
    /// synchronous standby of the new primary).
    pub first_ack_after_switch_ms: Option<i64>,
    /// The longest time without an acknowledged write from the fault to the end (ms).
    pub longest_ack_gap_ms: Option<i64>,
    /// What the promotion took, from the engine's `promoted` event: the IO side's preparation
    /// (hold, repointing the other standbys), the wait for the target position and the
    /// promotion itself.
    pub promotion: Option<serde_json::Value>,
    pub new_primary: String,
    pub writes: u64,
    pub acknowledged_writes: u64,
    pub write_errors: u64,
    pub reads: u64,
    pub read_errors: u64,
    /// Errors the load saw, by the time since the fault (ms) of the first and the last.
    pub first_error_after_fault_ms: Option<i64>,
    pub last_error_after_fault_ms: Option<i64>,
    /// Acknowledged writes missing on the final primary.
    pub acknowledged_writes_lost: u64,
    /// Writes acknowledged and confirmed on a mirror before the client counted them (Redis:
    /// `WAIT 1 1000` answered ≥ 1 after the `SET`; PostgreSQL: every acknowledged commit).
    pub replicated_writes: u64,
    /// Of those, missing on the final primary.
    pub replicated_writes_lost: u64,
    pub lost_examples: Vec<String>,
    pub history: Vec<SwitchRecord>,
    pub status: Option<Status>,
    pub events: Vec<Event>,
}

/// The load's counters.
#[derive(Default)]
struct Load {
    writes: AtomicU64,
    write_errors: AtomicU64,
    reads: AtomicU64,
    read_errors: AtomicU64,
    error_times: Mutex<(Option<i64>, Option<i64>)>,
    /// Acknowledged (client, seq).
    acked: Mutex<Vec<(u32, u64)>>,
    /// When each write was acknowledged (ms since the epoch).
    ack_times: Mutex<Vec<i64>>,
    /// Acknowledged and confirmed on a mirror (Redis `WAIT 1` ≥ 1; PostgreSQL: every commit,
    /// which waits for the synchronous standby).
    replicated: Mutex<Vec<(u32, u64)>>,
    stop: AtomicBool,
}

impl Load {
    fn ack(&self, c: u32, seq: u64) {
        self.acked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((c, seq));
        self.ack_times
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(now_ms());
    }

    fn error(&self, write: bool) {
        if write {
            self.write_errors.fetch_add(1, Ordering::Relaxed);
        } else {
            self.read_errors.fetch_add(1, Ordering::Relaxed);
        }
        let t = now_ms();
        let mut g = self.error_times.lock().unwrap_or_else(|p| p.into_inner());
        g.0.get_or_insert(t);
        g.1 = Some(t);
    }
}

/// The server processes of the primary (for the fault): its pid and, for PostgreSQL, its
/// children.
fn processes(root: u32) -> Vec<i32> {
    let mut out = vec![root as i32];
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            // pid (comm) state ppid ...: comm may hold spaces; split after the last ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if ppid == Some(root) {
                out.push(pid);
            }
        }
    }
    out
}

fn signal(pids: &[i32], sig: nix::sys::signal::Signal) {
    for p in pids {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*p), sig);
    }
}

/// The throwaway primary.
enum Primary {
    Redis(crate::testing::TestRedis),
    Postgres(Box<bellwether_pg::testing::TestCluster>),
}

impl Primary {
    async fn start(kind: DepKind) -> Result<Primary, DrillError> {
        match kind {
            DepKind::Redis => {
                tokio::task::spawn_blocking(|| crate::testing::TestRedis::try_start(&[]))
                    .await
                    .map_err(|e| DrillError::Primary(e.to_string()))?
                    .map(Primary::Redis)
                    .map_err(DrillError::Primary)
            }
            DepKind::Postgres => tokio::task::spawn_blocking(|| {
                bellwether_pg::testing::TestCluster::try_start(
                    bellwether_pg::testing::TestClusterOptions {
                        conf: vec![
                            ("synchronous_standby_names".into(), "'*'".into()),
                            ("wal_level".into(), "replica".into()),
                        ],
                    },
                )
            })
            .await
            .map_err(|e| DrillError::Primary(e.to_string()))?
            .map(|c| Primary::Postgres(Box::new(c)))
            .map_err(|e| DrillError::Primary(e.to_string())),
            DepKind::Tcp => Err(DrillError::Options(
                "the drill runs redis or postgres (a tcp dependency has no replication to mirror)"
                    .into(),
            )),
        }
    }

    fn endpoint(&self) -> String {
        match self {
            Primary::Redis(r) => r.endpoint(),
            Primary::Postgres(c) => format!("127.0.0.1:{}", c.port),
        }
    }

    fn pid(&self) -> Option<u32> {
        match self {
            Primary::Redis(r) => Some(r.pid()),
            Primary::Postgres(c) => std::fs::read_to_string(c.data_dir.join("postmaster.pid"))
                .ok()
                .and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok())),
        }
    }
}

/// The proxy the drill serves through: its router, the address it listens at (the bound one
/// when `listen` had port 0) and how to stop it.
pub struct DrillProxy {
    pub router: Arc<dyn Router>,
    pub listen: String,
    pub guard: ProxyGuard,
}

/// Runs the drill. The proxy is started by `start_proxy` (given the kind, `opts.listen` and the
/// primary's endpoint, which it serves from the start).
pub async fn run<P, F>(mut opts: DrillOptions, start_proxy: P) -> Result<DrillReport, DrillError>
where
    P: FnOnce(DepKind, String, String) -> F,
    F: std::future::Future<Output = Result<DrillProxy, DrillError>>,
{
    if opts.seconds < 3 {
        return Err(DrillError::Options(format!(
            "--seconds {} is too short: at least 3 (the fault comes at a third)",
            opts.seconds
        )));
    }
    if opts.mirrors == 0 {
        return Err(DrillError::Options("at least one mirror".into()));
    }
    let primary = Primary::start(opts.kind).await?;
    let endpoint = primary.endpoint();
    let DrillProxy {
        router,
        listen,
        guard: proxy,
    } = start_proxy(opts.kind, opts.listen.clone(), endpoint.clone()).await?;
    opts.listen = listen;
    let work = tempfile::Builder::new()
        .prefix("bw-drill-")
        .tempdir()
        .map_err(|e| DrillError::Other(format!("creating a temporary directory: {e}")))?;
    let provisioner = Arc::new(LocalProcess::new(work.path().join("mirrors")));
    let spec: DependencySpec = serde_json::from_value(json!({
        "name": "drill",
        "kind": opts.kind,
        "primary": endpoint,
        "tier": "critical",
        "impact": 1.0,
        "policy": {
            "min_mirrors": opts.mirrors, "max_mirrors": opts.mirrors,
            "mode": "active-passive",
            "health_interval": opts.health_interval,
            "switch_after": 2,
            "failback_after": "1d",
        }
    }))
    .map_err(|e| DrillError::Options(e.to_string()))?;
    let ropts = RunnerOptions::for_spec(&spec);
    let runner = LocalRunner::start(spec, provisioner.clone(), router, ropts)
        .map_err(|e| DrillError::Options(e.to_string()))?;
    let result = drive(&opts, &primary, &endpoint, &runner).await;
    let status = runner.status();
    let events = runner.events();
    runner.stop(true).await;
    // A mirror whose provisioning was still in flight when the runner stopped is not among
    // the runner's; its record in the drill's directory is, so nothing outlives the drill.
    for inst in provisioner.list().unwrap_or_default() {
        let _ = crate::Provisioner::retire(provisioner.as_ref(), &inst).await;
    }
    proxy.stop().await;
    drop(primary);
    drop(work);
    let mut report = result?;
    report.status = status;
    report.events = events;
    Ok(report)
}

/// Stops the proxy the drill started.
pub struct ProxyGuard {
    stop:
        Box<dyn FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send>,
}

impl ProxyGuard {
    pub fn new(
        stop: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
            + Send
            + 'static,
    ) -> ProxyGuard {
        ProxyGuard {
            stop: Box::new(stop),
        }
    }

    async fn stop(self) {
        (self.stop)().await
    }
}

async fn drive(
    opts: &DrillOptions,
    primary: &Primary,
    endpoint: &str,
    runner: &LocalRunner,
) -> Result<DrillReport, DrillError> {
    let want = opts.mirrors as usize;
    let (st, ok) = runner
        .wait_for(Duration::from_secs(180), |s| {
            s.instances
                .iter()
                .filter(|i| {
                    i.role == bellwether_engine::mirror::Role::Mirror
                        && i.state == bellwether_engine::mirror::InstanceState::Ready
                })
                .count()
                >= want
        })
        .await;
    if !ok {
        return Err(DrillError::Mirrors(format!(
            "{want} mirrors were not ready within 180 s; events: {}",
            runner
                .events()
                .iter()
                .rev()
                .take(5)
                .map(|e| format!("{}: {}", e.name, e.reason))
                .collect::<Vec<_>>()
                .join(" | ")
        )));
    }
    let _ = st;
    if opts.kind == DepKind::Postgres {
        setup_pg(endpoint).await?;
    }
    let load = Arc::new(Load::default());
    let mut tasks = Vec::new();
    for c in 0..opts.clients {
        let load = load.clone();
        let listen = opts.listen.clone();
        let kind = opts.kind;
        tasks.push(tokio::spawn(async move {
            match kind {
                DepKind::Redis => redis_client(c as u32, &listen, &load).await,
                _ => pg_client(c as u32, &listen, &load).await,
            }
        }));
    }
    let started = now_ms();
    let total = Duration::from_secs(opts.seconds);
    tokio::time::sleep(total / 3).await;
    let pids = primary.pid().map(processes).unwrap_or_default();
    if pids.is_empty() {
        return Err(DrillError::Other(
            "the primary's process id is unknown".into(),
        ));
    }
    let fault_at = now_ms();
    let throttle = Arc::new(AtomicBool::new(true));
    let mut throttler = None;
    match opts.fault {
        Fault::Kill => signal(&pids, nix::sys::signal::Signal::SIGKILL),
        Fault::Stop => signal(&pids, nix::sys::signal::Signal::SIGSTOP),
        Fault::Slow => {
            let root = primary.pid().unwrap_or_default();
            let on = throttle.clone();
            // A thread of its own, not a task: the duty cycle must not stretch when the
            // runtime is busy with the load (a stretched running phase is a milder fault).
            throttler = Some(std::thread::spawn(move || {
                while on.load(Ordering::Relaxed) {
                    // Every round: PostgreSQL forks a process per new connection.
                    let pids = processes(root);
                    signal(&pids, nix::sys::signal::Signal::SIGSTOP);
                    std::thread::sleep(SLOW_STOPPED);
                    signal(&pids, nix::sys::signal::Signal::SIGCONT);
                    std::thread::sleep(SLOW_RUNNING);
                }
            }));
        }
    }
    let end = tokio::time::Instant::now() + total - total / 3;
    tokio::time::sleep_until(end).await;
    load.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    throttle.store(false, Ordering::Relaxed);
    if let Some(t) = throttler {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    if opts.fault != Fault::Kill {
        if let Some(root) = primary.pid() {
            signal(&processes(root), nix::sys::signal::Signal::SIGCONT);
        }
    }
    let status = runner.status();
    let events = runner.events();
    let after = |name: &str| {
        events
            .iter()
            .find(|e| e.name == name && e.at_ms >= fault_at)
            .map(|e| e.at_ms - fault_at)
    };
    let history: Vec<SwitchRecord> = status
        .as_ref()
        .map(|s| s.history.clone())
        .unwrap_or_default();
    let switched = history.iter().find(|h| h.at_ms >= fault_at);
    let new_primary_id = status
        .as_ref()
        .map(|s| s.primary.clone())
        .unwrap_or_default();
    let new_primary = status
        .as_ref()
        .and_then(|s| s.instances.iter().find(|i| i.id == new_primary_id))
        .and_then(|i| i.endpoint.clone())
        .unwrap_or_else(|| endpoint.to_string());
    let acked: Vec<(u32, u64)> = load.acked.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let replicated: BTreeSet<(u32, u64)> = match opts.kind {
        DepKind::Redis => load
            .replicated
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect(),
        _ => acked.iter().copied().collect(),
    };
    let lost = match opts.kind {
        DepKind::Redis => redis_missing(&new_primary, &acked).await?,
        _ => pg_missing(&new_primary, &acked).await?,
    };
    let (first_err, last_err) = *load.error_times.lock().unwrap_or_else(|p| p.into_inner());
    let mut ack_times = load
        .ack_times
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    ack_times.sort_unstable();
    let first_ack_after_switch_ms = switched.and_then(|h| {
        ack_times
            .iter()
            .find(|t| **t >= h.routed_ms)
            .map(|t| t - fault_at)
    });
    let mut longest_ack_gap_ms = None;
    let mut prev = fault_at;
    for t in ack_times.iter().filter(|t| **t >= fault_at) {
        longest_ack_gap_ms = longest_ack_gap_ms.max(Some(t - prev));
        prev = *t;
    }
    let promotion = switched.and_then(|h| {
        events
            .iter()
            .find(|e| e.name == "promoted" && e.at_ms >= h.at_ms && e.figures["instance"] == h.to)
            .map(|e| e.figures["output"].clone())
    });
    Ok(DrillReport {
        kind: opts.kind.as_str(),
        fault: opts.fault,
        listen: opts.listen.clone(),
        seconds: opts.seconds,
        health_interval_ms: opts.health_interval.get().as_millis() as u64,
        mirrors: opts.mirrors,
        primary: endpoint.to_string(),
        fault_at_ms: fault_at - started,
        // The first failed check of the run of failed checks that led to the switch (0 when
        // the checks were already failing at the fault); without a switch, the first
        // `primary_unhealthy` after the fault.
        detected_after_ms: switched
            .and_then(|h| {
                h.figures["detect_ms"]
                    .as_i64()
                    .map(|d| (h.at_ms - d - fault_at).max(0))
            })
            .or_else(|| after("primary_unhealthy")),
        decided_after_ms: after("switch_started"),
        switched_after_ms: switched.map(|h| h.routed_ms - fault_at),
        first_ack_after_switch_ms,
        longest_ack_gap_ms,
        promotion,
        new_primary,
        writes: load.writes.load(Ordering::Relaxed),
        acknowledged_writes: acked.len() as u64,
        write_errors: load.write_errors.load(Ordering::Relaxed),
        reads: load.reads.load(Ordering::Relaxed),
        read_errors: load.read_errors.load(Ordering::Relaxed),
        first_error_after_fault_ms: first_err.map(|t| t - fault_at),
        last_error_after_fault_ms: last_err.map(|t| t - fault_at),
        acknowledged_writes_lost: lost.len() as u64,
        replicated_writes: replicated.len() as u64,
        replicated_writes_lost: lost
            .iter()
            .filter(|(c, s)| replicated.contains(&(*c, *s)))
            .count() as u64,
        lost_examples: lost
            .iter()
            .take(10)
            .map(|(c, s)| match opts.kind {
                DepKind::Redis => format!("drill:{c}:{s}"),
                _ => format!("({c}, {s})"),
            })
            .collect(),
        history,
        status: None,
        events: Vec::new(),
    })
}

/// The `slow` fault's cycle: stopped, then running. Its period (53 ms) divides no health
/// interval a user is likely to choose, so checks do not lock onto one phase of it.
const SLOW_STOPPED: Duration = Duration::from_millis(47);
const SLOW_RUNNING: Duration = Duration::from_millis(6);

const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

async fn redis_client(c: u32, listen: &str, load: &Load) {
    let mut seq: u64 = 0;
    let mut last_acked: Option<u64> = None;
    let mut conn: Option<crate::resp::Conn> = None;
    while !load.stop.load(Ordering::Relaxed) {
        let Some(cn) = conn.as_mut() else {
            match crate::resp::Conn::connect(listen, CLIENT_TIMEOUT).await {
                Ok(cn) => conn = Some(cn),
                Err(_) => {
                    load.error(true);
                    // The proxy does not take connections: try again shortly.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            continue;
        };
        seq += 1;
        let key = format!("drill:{c}:{seq}");
        let v = seq.to_string();
        load.writes.fetch_add(1, Ordering::Relaxed);
        match cn.cmd_within(&["SET", &key, &v], CLIENT_TIMEOUT).await {
            Ok(crate::resp::Value::Simple(s)) if s == "OK" => {
                load.ack(c, seq);
                last_acked = Some(seq);
                match cn.cmd_within(&["WAIT", "1", "1000"], CLIENT_TIMEOUT).await {
                    Ok(crate::resp::Value::Int(n)) if n >= 1 => load
                        .replicated
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((c, seq)),
                    Ok(crate::resp::Value::Int(_)) => {}
                    Ok(_) => load.error(true),
                    Err(_) => {
                        load.error(true);
                        conn = None;
                        continue;
                    }
                }
            }
            Ok(_) => load.error(true),
            Err(_) => {
                load.error(true);
                conn = None;
                continue;
            }
        }
        if let Some(s) = last_acked {
            load.reads.fetch_add(1, Ordering::Relaxed);
            let key = format!("drill:{c}:{s}");
            match cn.cmd_within(&["GET", &key], CLIENT_TIMEOUT).await {
                Ok(crate::resp::Value::Bulk(_)) => {}
                Ok(_) => load.error(false),
                Err(_) => {
                    load.error(false);
                    conn = None;
                }
            }
        }
    }
}

fn pg_url(endpoint: &str) -> String {
    format!("postgres://postgres@{endpoint}/postgres?connect_timeout=5")
}

async fn pg_connect(endpoint: &str) -> Result<tokio_postgres::Client, String> {
    let (client, connection) = tokio_postgres::connect(&pg_url(endpoint), tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("{endpoint}: {}", crate::pg::db_message(&e)))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

async fn setup_pg(endpoint: &str) -> Result<(), DrillError> {
    // The primary has just started: a connection refused or a server still starting up is
    // retried for a few seconds; the last error is the one reported.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let attempt = async {
            let c = pg_connect(endpoint).await?;
            c.batch_execute(
                "CREATE TABLE IF NOT EXISTS bellwether_drill (client int, seq bigint, PRIMARY KEY (client, seq))",
            )
            .await
            .map_err(|e| crate::pg::db_message(&e))
        };
        match attempt.await {
            Ok(()) => return Ok(()),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(DrillError::Other(format!(
                    "creating the drill's table on {endpoint}: {e}"
                )))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

async fn pg_client(c: u32, listen: &str, load: &Load) {
    let mut seq: u64 = 0;
    let mut conn: Option<tokio_postgres::Client> = None;
    while !load.stop.load(Ordering::Relaxed) {
        let Some(cn) = conn.as_ref() else {
            match pg_connect(listen).await {
                Ok(cn) => conn = Some(cn),
                Err(_) => {
                    load.error(true);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            continue;
        };
        seq += 1;
        load.writes.fetch_add(1, Ordering::Relaxed);
        let sql = format!("INSERT INTO bellwether_drill VALUES ({c}, {seq})");
        match tokio::time::timeout(CLIENT_TIMEOUT * 4, cn.batch_execute(&sql)).await {
            Ok(Ok(())) => load.ack(c, seq),
            Ok(Err(e)) => {
                load.error(true);
                if connection_gone(&e) {
                    conn = None;
                }
                continue;
            }
            Err(_) => {
                load.error(true);
                conn = None;
                continue;
            }
        }
        // The write was acknowledged: read it back.
        {
            load.reads.fetch_add(1, Ordering::Relaxed);
            let sql =
                format!("SELECT seq FROM bellwether_drill WHERE client = {c} AND seq = {seq}");
            match tokio::time::timeout(CLIENT_TIMEOUT, cn.simple_query(&sql)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    load.error(false);
                    if connection_gone(&e) {
                        conn = None;
                    }
                }
                Err(_) => {
                    load.error(false);
                    conn = None;
                }
            }
        }
    }
}

/// The connection cannot be used again: closed, or the server ended the session (a FATAL
/// error, as a connection pool would discard it) rather than failing one statement.
fn connection_gone(e: &tokio_postgres::Error) -> bool {
    e.is_closed()
        || e.as_db_error()
            .is_some_and(|d| matches!(d.severity(), "FATAL" | "PANIC"))
}

/// The acknowledged keys missing on the primary at `endpoint`.
async fn redis_missing(
    endpoint: &str,
    acked: &[(u32, u64)],
) -> Result<Vec<(u32, u64)>, DrillError> {
    let mut c = crate::resp::Conn::connect(endpoint, CLIENT_TIMEOUT)
        .await
        .map_err(|e| DrillError::Other(format!("checking the writes on {endpoint}: {e}")))?;
    let mut missing = Vec::new();
    for chunk in acked.chunks(500) {
        let mut args = vec!["MGET".to_string()];
        args.extend(chunk.iter().map(|(c, s)| format!("drill:{c}:{s}")));
        let v = c
            .cmd_within(&args, CLIENT_TIMEOUT)
            .await
            .map_err(|e| DrillError::Other(format!("MGET on {endpoint}: {e}")))?;
        let crate::resp::Value::Array(Some(items)) = v else {
            return Err(DrillError::Other(format!(
                "MGET on {endpoint} answered {v:?}"
            )));
        };
        for (k, item) in chunk.iter().zip(items) {
            if matches!(item, crate::resp::Value::Bulk(None)) {
                missing.push(*k);
            }
        }
    }
    Ok(missing)
}

async fn pg_missing(endpoint: &str, acked: &[(u32, u64)]) -> Result<Vec<(u32, u64)>, DrillError> {
    let c = pg_connect(endpoint).await.map_err(DrillError::Other)?;
    let rows = c
        .query("SELECT client, seq FROM bellwether_drill", &[])
        .await
        .map_err(|e| DrillError::Other(format!("reading the writes on {endpoint}: {e}")))?;
    let have: BTreeSet<(i32, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    Ok(acked
        .iter()
        .filter(|(c, s)| !have.contains(&(*c as i32, *s as i64)))
        .copied()
        .collect())
}
