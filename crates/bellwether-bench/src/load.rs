//! `bellwether bench load`: a fleet of simulated agents against one real server.
//!
//! The server is a `bellwether server` subprocess of the same binary (so the CPU and memory
//! measured are the server's alone) on a fresh store: a SQLite file in a temporary directory,
//! or a fresh schema of a PostgreSQL database that is dropped afterwards. The agents are tokio
//! tasks of this process sharing one keep-alive HTTP client; each does what a real agent does
//! on the wire, with the agent's own wire types: enrol with the enrolment token, send its
//! profile once, send its metrics as samples every interval (queueing what a failed send could
//! not deliver, as the agent's buffer does), and long-poll for rollout actions, answering each
//! with a result (nothing is run: the simulated agent reports success at once). Once every
//! agent sends, the operator captures baselines, and after `rollout_after` starts a rollout of
//! a plan like `examples/plans/web-v2.yaml` across all of them and follows its status until it
//! settles.
//!
//! Reported: samples offered and accepted per second over the measured window, latency
//! percentiles per route, errors by route and status, the server's CPU (% of one core, from
//! `/proc/PID/stat`) and resident memory (mean and peak), this generator's own CPU, and the
//! rollout's duration.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

// The agent's wire types, the one definition the server and the agent share.
use bellwether_drift::synth::{profile_of, HostSpec, SplitMix64};
use bellwether_model::wire::{
    ActionOutcome, ActionResult as ActionReport, ActionsResponse, EnrolRequest, EnrolResponse,
    SamplesRequest, SamplesResponse,
};
use bellwether_model::{HostName, MetricSample};
use bellwether_store::{Store, StoreConfig};
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::proc::{ServerProcess, ServerTokens};
use crate::{bail, BenchError, Context as _, Result};

/// Where the server keeps its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadStore {
    /// A fresh SQLite file in a temporary directory.
    Sqlite,
    /// A fresh schema in the PostgreSQL database at this URL, dropped afterwards.
    Postgres { url: String },
}

impl LoadStore {
    /// `sqlite`, or a `postgres://` / `postgresql://` URL.
    pub fn parse(s: &str) -> Result<LoadStore> {
        if s == "sqlite" {
            Ok(LoadStore::Sqlite)
        } else if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Ok(LoadStore::Postgres { url: s.to_owned() })
        } else {
            Err(BenchError::Usage(format!(
                "--store: `{}` is neither `sqlite` nor a postgres:// URL",
                bellwether_model::text::quote(s)
            )))
        }
    }

    fn name(&self) -> &'static str {
        match self {
            LoadStore::Sqlite => "sqlite",
            LoadStore::Postgres { .. } => "postgres",
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The `bellwether` binary started as `bellwether server`.
    pub exe: PathBuf,
    pub store: LoadStore,
    /// Simulated agents.
    pub agents: usize,
    /// How often each agent sends its samples.
    pub interval: Duration,
    /// The measured window, from the moment every agent sends; it is extended until the
    /// rollout settles (up to `rollout_timeout`).
    pub duration: Duration,
    /// Packages in each simulated host's profile.
    pub packages: usize,
    /// How long each action long-poll waits on the server (the agent's default is 5 s).
    pub poll_wait: Duration,
    /// Start a rollout across the agents; `None` runs ingest only.
    pub rollout: Option<RolloutOptions>,
}

#[derive(Debug, Clone)]
pub struct RolloutOptions {
    /// Time from the start of the window to the rollout's start: the hosts' baseline samples.
    pub after: Duration,
    /// The plan's `bake`.
    pub bake: Duration,
    /// Give up following the rollout after this long.
    pub timeout: Duration,
}

impl LoadOptions {
    fn check(&self) -> Result<()> {
        let usage = |m: &str| Err(BenchError::Usage(m.to_owned()));
        if self.agents == 0 || self.agents > 100_000 {
            return usage("--agents must be between 1 and 100000");
        }
        if self.interval < Duration::from_millis(10) {
            return usage("--interval must be at least 10ms");
        }
        if self.duration.is_zero() {
            return usage("--duration must be more than 0s");
        }
        if self.poll_wait > Duration::from_secs(30) {
            return usage("--poll-wait is at most 30s (the server's longest long-poll)");
        }
        if let Some(r) = &self.rollout {
            if r.bake < Duration::from_secs(1) {
                return usage("--bake must be at least 1s");
            }
        }
        Ok(())
    }
}

/// The figures of one run.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub store: &'static str,
    pub agents: usize,
    pub interval_ms: u64,
    /// Metric samples in each agent's batch.
    pub samples_per_batch: usize,
    /// Wall time to enrol every agent and store its profile.
    pub enrol_seconds: f64,
    /// The measured window.
    pub window_seconds: f64,
    pub ingest: Ingest,
    pub routes: Vec<RouteLatency>,
    pub errors: Vec<ErrorCount>,
    pub server: ServerUsage,
    /// This generator's own CPU over the window, in % of one core (it shares the machine).
    pub generator_cpu_pct: f64,
    pub rollout: Option<RolloutFigures>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Ingest {
    /// Samples the agents produced over the window (agents × metrics × intervals).
    pub offered: u64,
    /// Samples the server acknowledged (`accepted` of its answers) over the window.
    pub accepted: u64,
    pub offered_per_second: f64,
    pub accepted_per_second: f64,
    /// Samples the agents' bounded queues dropped because sends failed for too long.
    pub dropped: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RouteLatency {
    pub route: &'static str,
    pub count: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ErrorCount {
    pub route: &'static str,
    /// The HTTP status, or `transport` when no answer came.
    pub status: String,
    pub count: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerUsage {
    pub pid: u32,
    /// CPU time over the window divided by its length, in % of one core.
    pub cpu_pct: f64,
    pub cpu_seconds: f64,
    /// Mean of the once-a-second `VmRSS` readings over the window.
    pub rss_mean_mb: f64,
    /// The highest resident memory of the whole run (`VmHWM`).
    pub rss_peak_mb: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RolloutFigures {
    pub id: String,
    pub hosts: u64,
    /// `completed`, `aborted`, `paused` (with the reason) or `running` (timed out).
    pub state: String,
    pub pause_reason: Option<String>,
    /// From the create request to the status showing a final state.
    pub duration_seconds: Option<f64>,
    /// Actions the agents received, by kind (apply, revert, remediate).
    pub actions: BTreeMap<String, u64>,
}

// ---- routes ------------------------------------------------------------------------------

const ENROL: &str = "POST /api/v1/enrol";
const PROFILE: &str = "POST /api/v1/agent/profile";
const SAMPLES: &str = "POST /api/v1/agent/samples";
/// An empty long-poll: the figure is how late the answer came past `wait_ms`.
const POLL_EMPTY: &str = "GET /api/v1/agent/actions (empty: past wait_ms)";
/// A long-poll answered with actions: from the request to the answer.
const POLL_ACTIONS: &str = "GET /api/v1/agent/actions (with actions)";
const RESULT: &str = "POST /api/v1/agent/actions/{id}/result";
const CREATE: &str = "POST /api/v1/rollouts";
const BASELINES: &str = "POST /api/v1/baselines";
const STATUS: &str = "GET /api/v1/rollouts/{id}";
const ROUTE_ORDER: [&str; 9] = [
    SAMPLES,
    POLL_EMPTY,
    POLL_ACTIONS,
    RESULT,
    STATUS,
    CREATE,
    BASELINES,
    ENROL,
    PROFILE,
];

/// What the agents and the operator share: the client, counters and latencies.
struct Shared {
    client: reqwest::Client,
    base: String,
    measuring: AtomicBool,
    offered: AtomicU64,
    accepted: AtomicU64,
    dropped: AtomicU64,
    latencies: Mutex<HashMap<&'static str, Vec<f64>>>,
    errors: Mutex<BTreeMap<(&'static str, String), u64>>,
    actions: Mutex<BTreeMap<String, u64>>,
}

impl Shared {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn measuring(&self) -> bool {
        self.measuring.load(Ordering::Relaxed)
    }

    /// Records a latency; enrolment and profiles happen before the window and always count.
    fn latency(&self, route: &'static str, ms: f64) {
        if self.measuring() || [ENROL, PROFILE, CREATE, BASELINES].contains(&route) {
            lock(&self.latencies).entry(route).or_default().push(ms);
        }
    }

    fn error(&self, route: &'static str, status: String) {
        *lock(&self.errors).entry((route, status)).or_default() += 1;
    }

    /// Sends a request and records its latency; `Some` with the answer when it is 2xx.
    async fn call(
        &self,
        route: &'static str,
        req: reqwest::RequestBuilder,
    ) -> Option<reqwest::Response> {
        let started = Instant::now();
        let answer = req.send().await;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        match answer {
            Ok(resp) => {
                self.latency(route, ms);
                if resp.status().is_success() {
                    Some(resp)
                } else {
                    self.error(route, resp.status().as_u16().to_string());
                    None
                }
            }
            Err(e) => {
                let kind = if e.is_timeout() {
                    "transport: timeout"
                } else if e.is_connect() {
                    "transport: connect"
                } else {
                    "transport: other"
                };
                self.error(route, kind.into());
                None
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The plan the rollout runs: `examples/plans/web-v2.yaml` with every high-risk host included
/// last (so the rollout reaches every agent) and the bake of the options.
fn plan_yaml(bake: Duration) -> String {
    format!(
        r#"name: load
update:
  name: websvc
  version: "2"
  apply:  {{ builtin: set_service_version, version: "2" }}
  revert: {{ builtin: set_service_version, version: "1" }}
targets:
  labels: {{ role: web }}
risk:
  low: 0.2
  high: 0.5
  moderate_share: 0.25
  pilot: {{ min: 2, max: 4 }}
  high_risk: include_last
waves: {{ fixed: [25, 50, 100] }}
bake: {}ms
analysis:
  interval: 1s
  baseline: 5s
  metrics:
    - {{ name: svc_error_ratio, direction: increase, threshold_pct: 50, for: 2s, weight: 1.0, floor: 0.02 }}
    - {{ name: svc_latency_p50_ms, direction: increase, threshold_pct: 100, for: 2s, weight: 0.5 }}
  judge: {{ enabled: true, confidence: 0.98, marginal: 50, pass: 75 }}
  drift_rise_limit: 0.3
  severity_fail: 0.3
rollback:
  targeted: true
  pause_when: {{ hosts: 3, wave_pct: 30 }}
  slow_down_when: {{ hosts: 2 }}
  abort_on_critical: true
no_data: {{ after: 5s }}
"#,
        bake.as_millis()
    )
}

/// A deployment history for the failure model: 400 past updates, 4 % failed at random, so
/// every host scores low risk and none is singled out.
fn history_csv() -> String {
    let mut rng = SplitMix64::new(0x10AD);
    let mut out = String::from("deployment,host,update,update_version,os,outcome\n");
    for i in 0..400 {
        let os = ["debian-12", "debian-11", "ubuntu-22.04", "ubuntu-24.04"][i % 4];
        let failed = u8::from(rng.below(25) == 0);
        out.push_str(&format!(
            "d-{},h-{},websvc,1.{},{os},{failed}\n",
            i / 8,
            i % 50,
            i % 3
        ));
    }
    out
}

/// One simulated agent.
struct SimAgent {
    token: String,
    /// The metrics it reports and their levels (the profile's own, plus the service's).
    metrics: Vec<(String, f64)>,
    seed: u64,
}

/// Enrols agent `i` and sends its profile, retrying a refused or failed call a few times.
async fn enrol(shared: &Shared, enrol_token: &str, i: usize, packages: usize) -> Result<SimAgent> {
    let name = HostName::new(format!("load-{i:05}"))
        .map_err(|e| BenchError::Failed(format!("agent name: {e}")))?;
    let spec = HostSpec::generate(i as u64, name.as_str(), packages);
    let mut profile = profile_of(&spec);
    profile.collected_at_ms = now_ms();
    profile.labels.insert("role".into(), "web".into());
    let body = EnrolRequest {
        name: name.clone(),
        labels: [("role".to_string(), "web".to_string())].into(),
        address: None,
    };
    let mut token = None;
    for attempt in 0..10u32 {
        let req = shared
            .client
            .post(shared.url("/api/v1/enrol"))
            .bearer_auth(enrol_token)
            .json(&body);
        if let Some(resp) = shared.call(ENROL, req).await {
            let answer: EnrolResponse = resp.json().await?;
            token = Some(answer.agent_token);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100 << attempt.min(5))).await;
    }
    let token = token.with_context(|| format!("agent {name} could not enrol in 10 attempts"))?;
    let mut sent = false;
    for attempt in 0..10u32 {
        let req = shared
            .client
            .post(shared.url("/api/v1/agent/profile"))
            .bearer_auth(&token)
            .json(&profile);
        if shared.call(PROFILE, req).await.is_some() {
            sent = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100 << attempt.min(5))).await;
    }
    if !sent {
        bail!("agent {name} could not send its profile in 10 attempts");
    }
    let mut metrics: Vec<(String, f64)> = profile.metrics.into_iter().collect();
    metrics.push(("svc_error_ratio".into(), 0.002));
    metrics.push(("svc_latency_p50_ms".into(), 20.0));
    Ok(SimAgent {
        token,
        metrics,
        seed: i as u64,
    })
}

/// How long the operator's fleet-wide calls (baselines, starting the rollout) may take.
const OPERATOR_TIMEOUT: Duration = Duration::from_secs(600);

/// The largest queue of unsent samples an agent keeps (the real agent's buffer is bounded too).
const MAX_QUEUE: usize = 10_000;

/// Sends the agent's samples every interval from `start`, until aborted.
async fn send_samples(
    shared: Arc<Shared>,
    agent: Arc<SimAgent>,
    start: Instant,
    interval: Duration,
) {
    let mut rng = SplitMix64::new(agent.seed ^ 0x5A3B_1E55);
    let mut queue: Vec<MetricSample> = Vec::new();
    let mut next: u32 = 0;
    let url = shared.url("/api/v1/agent/samples");
    loop {
        // Every interval that came due adds one batch, also while a slow send held the loop.
        let due = start.elapsed().as_nanos() / interval.as_nanos().max(1);
        while u128::from(next) <= due {
            let ts = now_ms();
            for (name, level) in &agent.metrics {
                // ±2 % around the host's level: steady, so no watch fails a healthy host.
                let value = level * (1.0 + (rng.unit() - 0.5) * 0.04);
                queue.push(MetricSample {
                    ts_ms: ts,
                    name: name.clone(),
                    value,
                });
            }
            if shared.measuring() {
                shared
                    .offered
                    .fetch_add(agent.metrics.len() as u64, Ordering::Relaxed);
            }
            next += 1;
        }
        if queue.len() > MAX_QUEUE {
            let drop = queue.len() - MAX_QUEUE;
            queue.drain(..drop);
            shared.dropped.fetch_add(drop as u64, Ordering::Relaxed);
        }
        let body = SamplesRequest {
            samples: std::mem::take(&mut queue),
            dropped: 0,
        };
        let req = shared
            .client
            .post(&url)
            .bearer_auth(&agent.token)
            .json(&body);
        match shared.call(SAMPLES, req).await {
            Some(resp) => {
                if let Ok(a) = resp.json::<SamplesResponse>().await {
                    if shared.measuring() {
                        shared.accepted.fetch_add(a.accepted, Ordering::Relaxed);
                    }
                }
            }
            // Kept for the next send, as the agent's buffer keeps them.
            None => queue = body.samples,
        }
        tokio::time::sleep_until((start + interval * next).into()).await;
    }
}

/// Long-polls for actions and answers each at once with success, until aborted.
async fn answer_actions(shared: Arc<Shared>, agent: Arc<SimAgent>, wait: Duration) {
    let url = format!(
        "{}?wait_ms={}",
        shared.url("/api/v1/agent/actions"),
        wait.as_millis()
    );
    loop {
        let started = Instant::now();
        let answer = shared
            .client
            .get(&url)
            .bearer_auth(&agent.token)
            .timeout(wait + Duration::from_secs(30))
            .send()
            .await;
        let elapsed = started.elapsed();
        let resp = match answer {
            Ok(r) if r.status().is_success() => r,
            Ok(r) => {
                shared.error(POLL_EMPTY, r.status().as_u16().to_string());
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(_) => {
                shared.error(POLL_EMPTY, "transport".into());
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let Ok(body) = resp.json::<ActionsResponse>().await else {
            shared.error(POLL_ACTIONS, "unreadable answer".into());
            continue;
        };
        if body.actions.is_empty() {
            shared.latency(
                POLL_EMPTY,
                elapsed.saturating_sub(wait).as_secs_f64() * 1000.0,
            );
            continue;
        }
        shared.latency(POLL_ACTIONS, elapsed.as_secs_f64() * 1000.0);
        for a in body.actions {
            *lock(&shared.actions).entry(a.kind.clone()).or_default() += 1;
            let now = now_ms();
            let report = ActionReport::new(ActionOutcome::Ok, now, now);
            let req = shared
                .client
                .post(shared.url(&format!("/api/v1/agent/actions/{}/result", a.id)))
                .bearer_auth(&agent.token)
                .json(&report);
            // A result that did not arrive is sent again by the server's re-dispatch.
            let _ = shared.call(RESULT, req).await;
        }
    }
}

/// An operator call that must succeed.
async fn operator<T: serde::de::DeserializeOwned>(
    shared: &Shared,
    route: &'static str,
    req: reqwest::RequestBuilder,
    what: &str,
) -> Result<T> {
    let resp = req
        .send()
        .await
        .with_context(|| format!("{what}: the server did not answer"))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        shared.error(route, status.as_u16().to_string());
        bail!("{what}: the server answered {status}: {text}");
    }
    serde_json::from_str(&text).with_context(|| format!("{what}: unreadable answer {text:?}"))
}

/// Follows the rollout until it is final or paused, or the timeout passes.
async fn follow_rollout(
    shared: &Shared,
    operator_token: &str,
    id: String,
    hosts: u64,
    timeout: Duration,
) -> RolloutFigures {
    let started = Instant::now();
    let url = shared.url(&format!("/api/v1/rollouts/{id}"));
    let mut figures = RolloutFigures {
        id,
        hosts,
        state: "running".into(),
        pause_reason: None,
        duration_seconds: None,
        actions: BTreeMap::new(),
    };
    while started.elapsed() < timeout {
        let req = shared.client.get(&url).bearer_auth(operator_token);
        if let Some(resp) = shared.call(STATUS, req).await {
            if let Ok(v) = resp.json::<serde_json::Value>().await {
                let state = v["state"].as_str().unwrap_or("unknown").to_owned();
                match state.as_str() {
                    "completed" | "aborted" => {
                        figures.duration_seconds = Some(started.elapsed().as_secs_f64());
                        figures.state = state;
                        break;
                    }
                    "paused" => {
                        figures.pause_reason = v["pause_reason"].as_str().map(str::to_owned);
                        figures.state = state;
                        break;
                    }
                    _ => figures.state = state,
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    figures
}

/// Runs the load and returns its figures.
pub fn run(opts: &LoadOptions) -> Result<LoadReport> {
    opts.check()?;
    let work = std::env::temp_dir().join(bellwether_store::testing::unique_name("bellwether-load"));
    let rt = tokio::runtime::Runtime::new().context("could not start the async runtime")?;
    let schema = match &opts.store {
        LoadStore::Postgres { url } => {
            let schema = bellwether_store::testing::unique_name("bw_load");
            Some((url.clone(), schema))
        }
        LoadStore::Sqlite => None,
    };
    let result = rt.block_on(async {
        let database = match &schema {
            Some((url, schema)) => Some(prepare_schema(url, schema).await?),
            None => None,
        };
        run_against(opts, &work, database.as_deref()).await
    });
    if let Some((url, schema)) = &schema {
        if let Err(e) = rt.block_on(bellwether_store::drop_postgres_schema(url, schema)) {
            tracing::warn!(schema, error = %e, "could not drop the load run's schema");
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    result
}

/// Creates the schema with the store's migrations and returns a URL whose sessions use it.
async fn prepare_schema(url: &str, schema: &str) -> Result<String> {
    let config = StoreConfig::Postgres {
        url: url.to_owned(),
        schema: Some(schema.to_owned()),
    };
    let store = Store::open(&config).await.map_err(|e| {
        BenchError::Unreachable(format!(
            "--store: could not open a schema at {url}: {e}; {}",
            bellwether_store::testing::START_POSTGRES_HINT
        ))
    })?;
    store.close().await;
    let sep = if url.contains('?') { '&' } else { '?' };
    Ok(format!("{url}{sep}options[search_path]={schema}"))
}

async fn run_against(
    opts: &LoadOptions,
    work: &Path,
    database: Option<&str>,
) -> Result<LoadReport> {
    let tokens = ServerTokens::random()?;
    let server = ServerProcess::start(&opts.exe, work, database, &tokens, &[])?;
    let pid = server.pid();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(usize::MAX)
        .timeout(Duration::from_secs(30))
        .build()?;
    let shared = Arc::new(Shared {
        client,
        base: server.url.clone(),
        measuring: AtomicBool::new(false),
        offered: AtomicU64::new(0),
        accepted: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
        latencies: Mutex::new(HashMap::new()),
        errors: Mutex::new(BTreeMap::new()),
        actions: Mutex::new(BTreeMap::new()),
    });
    let op = tokens.operator.clone();

    // A failure model, so the rollout can score its hosts.
    if opts.rollout.is_some() {
        let req = shared
            .client
            .post(shared.url("/api/v1/history/import"))
            .bearer_auth(&op)
            .header("content-type", "text/csv")
            .body(history_csv());
        let _: serde_json::Value = operator(&shared, CREATE, req, "importing the history").await?;
        let req = shared
            .client
            .post(shared.url("/api/v1/model/train"))
            .bearer_auth(&op)
            .timeout(Duration::from_secs(120));
        let _: serde_json::Value = operator(&shared, CREATE, req, "training the model").await?;
    }

    // Enrolment, 64 agents at a time: a fleet that starts together, not one connection storm.
    let enrolled_at = Instant::now();
    let gate = Arc::new(Semaphore::new(64));
    let mut enrolling = tokio::task::JoinSet::new();
    for i in 0..opts.agents {
        let (shared, gate, enrol_token) = (shared.clone(), gate.clone(), tokens.enrol.clone());
        let packages = opts.packages;
        enrolling.spawn(async move {
            let _slot = gate.acquire_owned().await;
            enrol(&shared, &enrol_token, i, packages).await
        });
    }
    let mut agents = Vec::with_capacity(opts.agents);
    while let Some(a) = enrolling.join_next().await {
        agents.push(Arc::new(a??));
    }
    let enrol_seconds = enrolled_at.elapsed().as_secs_f64();

    // Baselines of every host, captured once from the profiles before samples flow (one
    // request for the whole fleet; under full ingest on SQLite it queued behind the sample
    // writes for minutes).
    let req = shared
        .client
        .post(shared.url("/api/v1/baselines"))
        .bearer_auth(&op)
        .timeout(OPERATOR_TIMEOUT)
        .json(&serde_json::json!({"all": true}));
    let t = Instant::now();
    let _: serde_json::Value = operator(&shared, BASELINES, req, "capturing baselines").await?;
    shared.latency(BASELINES, t.elapsed().as_secs_f64() * 1000.0);

    // Every agent sends from now on, spread over one interval; long-polls start with them.
    let mut fleet = tokio::task::JoinSet::new();
    let start = Instant::now();
    for (k, agent) in agents.iter().enumerate() {
        let offset = opts.interval.mul_f64(k as f64 / opts.agents as f64);
        fleet.spawn(send_samples(
            shared.clone(),
            agent.clone(),
            start + offset,
            opts.interval,
        ));
        if opts.rollout.is_some() {
            fleet.spawn(answer_actions(
                shared.clone(),
                agent.clone(),
                opts.poll_wait,
            ));
        }
    }
    // The first interval fills the pipes; the window starts after it.
    tokio::time::sleep_until((start + opts.interval).into()).await;

    let window = Instant::now();
    let usage0 = crate::proc::usage(pid)?;
    let me0 = crate::proc::usage(std::process::id())?;
    shared.measuring.store(true, Ordering::Relaxed);
    let rss = Arc::new(Mutex::new(Vec::new()));
    let sampler = {
        let rss = rss.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                if let Ok(u) = crate::proc::usage(pid) {
                    lock(&rss).push(u.rss_kb);
                }
            }
        })
    };

    let mut rollout = None;
    if let Some(r) = &opts.rollout {
        tokio::time::sleep(r.after).await;
        let req = shared
            .client
            .post(shared.url("/api/v1/rollouts"))
            .bearer_auth(&op)
            .timeout(OPERATOR_TIMEOUT)
            .json(&serde_json::json!({"plan_yaml": plan_yaml(r.bake), "file": "load-plan.yaml"}));
        let t = Instant::now();
        let created: Result<serde_json::Value> =
            operator(&shared, CREATE, req, "starting the rollout").await;
        shared.latency(CREATE, t.elapsed().as_secs_f64() * 1000.0);
        // A rollout the server did not start is a figure of the run, not the end of it.
        let figures = match created {
            Ok(created) => {
                let id = created["id"]
                    .as_str()
                    .with_context(|| format!("the rollout's answer has no id: {created}"))?
                    .to_owned();
                let hosts = created["hosts"].as_u64().unwrap_or(0);
                let mut figures = follow_rollout(&shared, &op, id, hosts, r.timeout).await;
                figures.actions = lock(&shared.actions).clone();
                figures
            }
            Err(e) => RolloutFigures {
                id: String::new(),
                hosts: 0,
                state: "not started".into(),
                pause_reason: Some(e.to_string()),
                duration_seconds: None,
                actions: BTreeMap::new(),
            },
        };
        rollout = Some(figures);
    }
    tokio::time::sleep_until((window + opts.duration).into()).await;

    shared.measuring.store(false, Ordering::Relaxed);
    let window_seconds = window.elapsed().as_secs_f64();
    let usage1 = crate::proc::usage(pid)?;
    let me1 = crate::proc::usage(std::process::id())?;
    sampler.abort();
    fleet.shutdown().await;
    let mut server = server;
    if let Ok(Some(status)) = server.child.0.try_wait() {
        bail!(
            "the server exited during the run ({status}); its log ends:\n{}",
            crate::proc::log_tail(&server.log, 10)
        );
    }
    drop(server);

    let offered = shared.offered.load(Ordering::Relaxed);
    let accepted = shared.accepted.load(Ordering::Relaxed);
    let rss = lock(&rss).clone();
    let mb = |kb: u64| kb as f64 / 1024.0;
    let cpu_seconds = usage1.cpu_seconds - usage0.cpu_seconds;
    let mut routes = Vec::new();
    let lat = lock(&shared.latencies);
    for route in ROUTE_ORDER {
        if let Some(v) = lat.get(route) {
            let mut v = v.clone();
            v.sort_by(f64::total_cmp);
            routes.push(RouteLatency {
                route,
                count: v.len(),
                p50_ms: crate::percentile(&v, 50.0),
                p95_ms: crate::percentile(&v, 95.0),
                p99_ms: crate::percentile(&v, 99.0),
                max_ms: v.last().copied().unwrap_or(0.0),
            });
        }
    }
    let errors = lock(&shared.errors)
        .iter()
        .map(|((route, status), count)| ErrorCount {
            route,
            status: status.clone(),
            count: *count,
        })
        .collect();
    Ok(LoadReport {
        store: opts.store.name(),
        agents: opts.agents,
        interval_ms: opts.interval.as_millis() as u64,
        samples_per_batch: agents.first().map_or(0, |a| a.metrics.len()),
        enrol_seconds,
        window_seconds,
        ingest: Ingest {
            offered,
            accepted,
            offered_per_second: offered as f64 / window_seconds,
            accepted_per_second: accepted as f64 / window_seconds,
            dropped: shared.dropped.load(Ordering::Relaxed),
        },
        routes,
        errors,
        server: ServerUsage {
            pid,
            cpu_pct: 100.0 * cpu_seconds / window_seconds,
            cpu_seconds,
            rss_mean_mb: if rss.is_empty() {
                mb(usage1.rss_kb)
            } else {
                mb(rss.iter().sum::<u64>()) / rss.len() as f64
            },
            rss_peak_mb: mb(usage1.hwm_kb),
        },
        generator_cpu_pct: 100.0 * (me1.cpu_seconds - me0.cpu_seconds) / window_seconds,
        rollout,
    })
}

/// The report as the human output prints it.
pub fn render(r: &LoadReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Load on {}: {} agents, samples every {} ms ({} a batch), window {:.1} s (enrolment took {:.1} s)",
        r.store, r.agents, r.interval_ms, r.samples_per_batch, r.window_seconds, r.enrol_seconds
    );
    let _ = writeln!(
        s,
        "  ingest: {:.0} samples/s accepted of {:.0} offered ({} of {}; {} dropped by agents)",
        r.ingest.accepted_per_second,
        r.ingest.offered_per_second,
        r.ingest.accepted,
        r.ingest.offered,
        r.ingest.dropped
    );
    let _ = writeln!(
        s,
        "  server: {:.1} % of one core ({:.1} s CPU), RSS mean {:.1} MB, peak {:.1} MB; generator {:.1} % of one core",
        r.server.cpu_pct, r.server.cpu_seconds, r.server.rss_mean_mb, r.server.rss_peak_mb, r.generator_cpu_pct
    );
    match &r.rollout {
        Some(ro) => {
            let _ = writeln!(
                s,
                "  rollout {} over {} hosts: {}{}{}; actions answered {:?}",
                ro.id,
                ro.hosts,
                ro.state,
                ro.pause_reason
                    .as_deref()
                    .map(|p| format!(" ({p})"))
                    .unwrap_or_default(),
                ro.duration_seconds
                    .map(|d| format!(" in {d:.1} s"))
                    .unwrap_or_default(),
                ro.actions
            );
        }
        None => {
            let _ = writeln!(s, "  rollout: not run");
        }
    }
    let _ = writeln!(
        s,
        "  {:<50} {:>7} {:>9} {:>9} {:>9} {:>9}",
        "latency (ms)", "count", "p50", "p95", "p99", "max"
    );
    for l in &r.routes {
        let _ = writeln!(
            s,
            "  {:<50} {:>7} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
            l.route, l.count, l.p50_ms, l.p95_ms, l.p99_ms, l.max_ms
        );
    }
    if r.errors.is_empty() {
        let _ = writeln!(s, "  errors: none");
    } else {
        for e in &r.errors {
            let _ = writeln!(s, "  errors: {} {}: {}", e.route, e.status, e.count);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_are_sqlite_or_a_postgres_url() {
        assert_eq!(LoadStore::parse("sqlite").unwrap(), LoadStore::Sqlite);
        assert_eq!(
            LoadStore::parse("postgres://u@h:5432/db").unwrap(),
            LoadStore::Postgres {
                url: "postgres://u@h:5432/db".into()
            }
        );
        let e = LoadStore::parse("mysql://x").unwrap_err();
        assert!(matches!(e, BenchError::Usage(_)), "{e}");
        assert!(e.to_string().contains("--store"), "{e}");
    }

    #[test]
    fn the_plan_is_a_valid_rollout_plan_with_the_bake_given() {
        let yaml = plan_yaml(Duration::from_millis(1500));
        let plan = bellwether_engine::rollout::plan::parse_plan(&yaml, "load-plan.yaml")
            .unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        assert_eq!(plan.bake.0, Duration::from_millis(1500));
    }

    #[test]
    fn the_history_has_failures_and_successes() {
        let csv = history_csv();
        let rows: Vec<&str> = csv.lines().skip(1).collect();
        assert_eq!(rows.len(), 400);
        let failed = rows.iter().filter(|r| r.ends_with(",1")).count();
        assert!(failed > 0 && failed < 40, "{failed}");
    }
}
