//! Rollouts as durable tasks: [`RolloutTask`] is the rollout's implementation of
//! [`DurableTask`] (the pure engine `bellwether_engine::rollout` with each host's watcher), and
//! this module's routes create, list, show and command rollouts and serve the agents' action
//! queue (which every kind shares).
//!
//! The runner is [`crate::task`]'s, the same for every kind: each step is taken on a copy and
//! stored with its events, dispatches (queued as agent actions) and outcomes in one transaction
//! before the copy is kept and agents are woken; a save that keeps failing holds the task, and
//! a held rollout records the hold as an [`Observation::Hold`]: it pauses with a critical alert,
//! and stays paused until an operator resumes it (a store that filled up once deserves a look
//! first).
//!
//! A rollout's runner ends when it is settled ([`Rollout::is_settled`]): final AND every
//! dispatched action reported or timed out. An aborted rollout's reverts report after the
//! phase turned final, and are still fed to the engine. An action result is stored by the
//! agent API first and fed to the engine afterwards, marked observed in the same transaction
//! as the step it caused. So a server killed at any point restarts from the store
//! ([`crate::task::resume_all`]) with every dispatched action queued exactly once and every
//! consumed result consumed once: no host is applied twice and none is lost.
//!
//! The watch is the engine's pure [`HostWatcher`]: every analysis interval the task reads each
//! host's new stored samples and drift ([`DurableTask::observe`]), and its step feeds them to
//! the watchers, asks for a verdict on every applied host (with the not-updated hosts as
//! controls), and hands the verdicts to the engine.
//!
//! A plan's `source: prometheus` metrics are read in the same observation: each host's query
//! (the template filled with the host) as a range query from the last value read to now, one
//! point per analysis interval, fed to the same watcher. An empty result, an error or an
//! unreachable Prometheus is no data for that metric (`HostWatcher::observe_missing`): the
//! watcher then says `NoData` with the query and the reason, and the engine pauses.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use bellwether_engine::rollout::plan::parse_plan;
use bellwether_engine::rollout::promql::HostVars;
use bellwether_engine::rollout::watch::{HostWatcher, WatcherSnapshot};
use bellwether_engine::rollout::{
    ActionResult, Decision, HostInput, HostState, Observation, OperatorCommand, Rollout,
    RolloutReport, RolloutStatus,
};
use bellwether_model::wire::{ActionOutcome, ActionResult as AgentResult};
use bellwether_model::{HostName, HostProfile, MetricSample};
use bellwether_store::{
    ActionFinish, ActionRecord, NewEvent, NewOutcome, NewTask, OutcomeSource, TaskRecord,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::auth::{Agent, Operator, Viewer};
use crate::body::JsonBody;
use crate::error::ApiError;
use crate::model_api::{self, UpdateInfo};
use crate::task::{self, Dispatch, DurableTask, Input, NoEffect, Step};
use crate::{now_ms, prometheus, AppState};

/// The routes of this module, as (method, path); docs/api.md and docs/openapi.yaml describe
/// each (a test checks).
pub const ROLLOUT_ROUTES: &[(&str, &str)] = &[
    ("POST", "/api/v1/rollouts"),
    ("GET", "/api/v1/rollouts"),
    ("GET", "/api/v1/rollouts/{id}"),
    ("GET", "/api/v1/rollouts/{id}/report"),
    ("POST", "/api/v1/rollouts/{id}/{command}"),
    ("POST", "/api/v1/rollouts/{id}/hosts/{host}/rollback"),
    ("GET", "/api/v1/agent/actions"),
    ("POST", "/api/v1/agent/actions/{id}/result"),
];

pub(crate) fn routes() -> axum::Router<AppState> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/api/v1/rollouts", post(create).get(list))
        .route("/api/v1/rollouts/{id}", get(status))
        .route("/api/v1/rollouts/{id}/report", get(report))
        .route("/api/v1/rollouts/{id}/{command}", post(command))
        .route(
            "/api/v1/rollouts/{id}/hosts/{host}/rollback",
            post(roll_back_host),
        )
        .route("/api/v1/agent/actions", get(agent_actions))
        .route("/api/v1/agent/actions/{id}/result", post(agent_result))
}

/// The longest an agent's long-poll waits.
const MAX_WAIT_MS: u64 = 30_000;

/// How far back samples seed a host's pre-change baseline when a rollout starts.
const BASELINE_LOOKBACK_MS: i64 = 5 * 60 * 1000;

/// The top factors kept per host.
const FACTORS: usize = 5;

/// A rollout as a durable task: the engine, each host's watcher, and what the server derived
/// for it from the store.
#[derive(Clone)]
pub(crate) struct RolloutTask {
    rollout: Rollout,
    watchers: BTreeMap<HostName, HostWatcher>,
    /// The newest sample timestamp fed per host (not stored: a resumed rollout re-reads the
    /// lookback, which the watchers' windows absorb).
    fed_until: BTreeMap<HostName, i64>,
    /// Each target host's feature vector at scoring time, for its outcome.
    features: BTreeMap<String, BTreeMap<String, Value>>,
    /// The time of the newest value read from Prometheus per host and metric (not stored,
    /// like `fed_until`).
    prom_fed: BTreeMap<(HostName, String), i64>,
    /// Each target host's declared address (`{{address}}`), as the store had it when the
    /// rollout started or was resumed.
    addresses: BTreeMap<HostName, String>,
}

/// What is stored as a rollout's state: the engine and each host's watcher snapshot.
#[derive(Serialize, Deserialize)]
struct Persisted {
    engine: Rollout,
    watchers: BTreeMap<HostName, WatcherSnapshot>,
}

/// [`Persisted`], borrowed, to write it.
#[derive(Serialize)]
struct PersistedRef<'a> {
    engine: &'a Rollout,
    watchers: BTreeMap<&'a HostName, WatcherSnapshot>,
}

/// One analysis interval's reads: each host's new samples and current drift, and the
/// values of the plan's Prometheus metrics.
pub(crate) struct Observed {
    samples: BTreeMap<HostName, Vec<MetricSample>>,
    drift: BTreeMap<HostName, f64>,
    prom: Vec<PromRead>,
}

/// One host's read of one Prometheus metric: its points, or why there are none.
pub(crate) struct PromRead {
    host: HostName,
    metric: String,
    /// The query as sent (the template filled for the host).
    query: String,
    result: Result<Vec<prometheus::Point>, String>,
}

/// The `source` of the samples a rollout's analysis read from Prometheus, in the store and in
/// `GET /api/v1/hosts/{name}/samples`.
pub const PROMETHEUS_SOURCE: &str = "prometheus";

/// Stores the values read from Prometheus as the hosts' samples (source `prometheus`), so the
/// samples API, the dashboard's chart of a failed metric and a later look at a rollout's
/// figures see what the analysis saw. A value the store has already is skipped. A failure to
/// store is logged, not fatal: the analysis has the values either way.
async fn store_prometheus_reads(state: &AppState, rollout: &str, reads: &[PromRead]) {
    let mut by_host: BTreeMap<&HostName, Vec<MetricSample>> = BTreeMap::new();
    for r in reads {
        if let Ok(points) = &r.result {
            by_host
                .entry(&r.host)
                .or_default()
                .extend(points.iter().map(|p| MetricSample {
                    ts_ms: p.ts_ms,
                    name: r.metric.clone(),
                    value: p.value,
                }));
        }
    }
    for (host, samples) in by_host {
        if let Err(e) = state
            .store
            .insert_read_samples(host, PROMETHEUS_SOURCE, &samples)
            .await
        {
            tracing::warn!(rollout, host = %host, error = %e, "Cannot store the values read from Prometheus.");
        }
    }
}

/// Every host's declared address.
async fn host_addresses(state: &AppState) -> Result<BTreeMap<HostName, String>, ApiError> {
    Ok(state
        .store
        .list_hosts()
        .await?
        .into_iter()
        .filter_map(|h| Some((h.name, h.address?)))
        .collect())
}

/// At most this many Prometheus queries in flight per rollout.
const PROM_CONCURRENCY: usize = 8;

/// The Prometheus client of a plan: its `analysis.prometheus.address`, else the server's
/// `--prometheus-url`.
fn prom_client(
    plan: &bellwether_engine::rollout::plan::Plan,
    state: &AppState,
) -> Result<prometheus::Client, String> {
    let settings = plan.analysis.prometheus.as_ref();
    let address = match settings.and_then(|p| p.address.as_deref()) {
        Some(a) => bellwether_engine::rollout::promql::check_address(a)?,
        None => state.prometheus.url.clone().ok_or_else(|| {
            "no Prometheus to read from: the plan has no analysis.prometheus.address and the server no --prometheus-url".to_string()
        })?,
    };
    let timeout = settings.map_or(Duration::from_secs(3), |p| p.timeout.0);
    Ok(prometheus::Client::new(
        state.prometheus.http.clone(),
        &address,
        timeout,
    ))
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// Flat profile attributes for the plan's `targets.where`.
fn attributes(p: Option<&HostProfile>) -> BTreeMap<String, String> {
    let mut a = BTreeMap::new();
    let Some(p) = p else { return a };
    if let Some(os) = &p.os {
        a.insert("os.id".into(), os.id.clone());
        if let Some(v) = &os.version_id {
            a.insert("os.version_id".into(), v.clone());
        }
    }
    if let Some(k) = &p.kernel {
        a.insert("kernel".into(), k.clone());
    }
    if let Some(h) = &p.hostname {
        a.insert("hostname".into(), h.clone());
    }
    for (name, version) in p.packages.iter().flatten() {
        a.insert(format!("package:{name}"), version.clone());
    }
    a
}

/// The engine's result of an action from the agent's stored report.
fn action_result(report: &Value) -> ActionResult {
    // The one wire type reads both the typed outcome and the older flat form.
    match AgentResult::deserialize(report) {
        Ok(r) => match r.outcome {
            ActionOutcome::Ok => ActionResult::Ok,
            ActionOutcome::TimedOut { .. } => ActionResult::TimedOut,
            ActionOutcome::Failed { error, .. } => ActionResult::Failed { error },
            ActionOutcome::Refused { reason } => ActionResult::Failed { error: reason },
        },
        Err(e) => ActionResult::Failed {
            error: format!("the stored result of the action could not be read: {e}"),
        },
    }
}

impl RolloutTask {
    /// The step's record of the engine's `decisions`.
    fn effects(&self, decisions: Vec<Decision>) -> Step<NoEffect> {
        let mut step = Step::default();
        for d in decisions {
            match d {
                Decision::Dispatch {
                    action_id,
                    host,
                    kind,
                    spec,
                } => step.dispatches.push(Dispatch::new(
                    action_id,
                    host.as_str(),
                    kind.name(),
                    &spec,
                )),
                Decision::Event(e) => step.events.push(NewEvent {
                    ts_ms: e.ts_ms,
                    kind: e.kind,
                    host: e.host.map(|h| h.to_string()),
                    reason: e.reason,
                    figures: e.figures,
                }),
                Decision::Alert {
                    severity,
                    message,
                    figures,
                } => step.events.push(NewEvent {
                    ts_ms: self.rollout.now_ms,
                    kind: "alert".into(),
                    host: None,
                    reason: message,
                    figures: json!({"severity": severity, "figures": figures}),
                }),
                Decision::Outcome {
                    host,
                    failed,
                    features,
                } => {
                    let mut f = self
                        .features
                        .get(host.as_str())
                        .cloned()
                        .unwrap_or_default();
                    // The engine's own figures (wave, predicted probability…) are kept but
                    // start with `_`, so training skips them: they are not known before a
                    // deployment.
                    for (k, v) in features {
                        f.insert(format!("_{k}"), v);
                    }
                    step.outcomes.push(NewOutcome {
                        source: OutcomeSource::Rollout,
                        deployment: self.rollout.id.clone(),
                        host: host.to_string(),
                        features: f,
                        failed,
                    });
                }
            }
        }
        step
    }

    /// An action's result: the watcher of an applied or remediated host learns it first.
    fn on_result(&mut self, a: &ActionRecord, now: i64) -> Vec<Decision> {
        let report = a.result.clone().unwrap_or(Value::Null);
        let result = action_result(&report);
        let finished = report["finished_ms"]
            .as_i64()
            .or(a.finished_at_ms)
            .unwrap_or(now);
        if result == ActionResult::Ok && (a.kind == "apply" || a.kind == "remediate") {
            if let Ok(host) = HostName::new(a.host.clone()) {
                if let Some(w) = self.watchers.get_mut(&host) {
                    if a.kind == "apply" {
                        w.mark_applied(finished);
                    } else if let Err(e) = w.restart(finished) {
                        // The baselines were valid when frozen; a failure here is a bug.
                        tracing::error!(host = %host, error = %e, "could not restart the watch after a remediation");
                    }
                }
            }
        }
        self.rollout.step(Observation::ActionFinished {
            action_id: a.action_id,
            result,
            now_ms: now,
        })
    }

    /// One analysis interval: new samples and drift into the watchers, a verdict for every
    /// updated host, then a tick. One interval's verdicts and tick are one step: nothing is
    /// dispatched before the store has it, so batching them loses no crash safety.
    fn on_tick(&mut self, observed: Observed, now: i64) -> Vec<Decision> {
        for (h, samples) in observed.samples {
            if let Some(w) = self.watchers.get_mut(&h) {
                for s in &samples {
                    // Metrics the plan does not analyse are not the watcher's business.
                    let _ = w.observe(s.ts_ms, &s.name, s.value);
                }
            }
            if let Some(last) = samples.last() {
                self.fed_until.insert(h, last.ts_ms);
            }
        }
        for (h, d) in observed.drift {
            if let Some(w) = self.watchers.get_mut(&h) {
                w.observe_drift(now, d);
            }
        }
        for r in observed.prom {
            let Some(w) = self.watchers.get_mut(&r.host) else {
                continue;
            };
            match r.result {
                Ok(points) => {
                    for p in &points {
                        // Points already fed (a step that was not kept) are refused; fine.
                        let _ = w.observe(p.ts_ms, &r.metric, p.value);
                    }
                    if let Some(last) = points.last() {
                        self.prom_fed.insert((r.host, r.metric), last.ts_ms);
                    }
                }
                Err(problem) => {
                    let _ = w.observe_missing(&r.metric, &r.query, &problem);
                }
            }
        }
        let watched: Vec<HostName> = self
            .rollout
            .hosts
            .values()
            .filter(|r| r.applied && matches!(r.state, HostState::Baking | HostState::Updated))
            .map(|r| r.name.clone())
            .collect();
        let mut verdicts = Vec::new();
        for h in watched {
            let Some(w) = self.watchers.get(&h) else {
                continue;
            };
            let controls: Vec<&HostWatcher> = self
                .watchers
                .values()
                .filter(|c| c.applied_ms().is_none())
                .collect();
            let verdict = w.verdict(now, &controls);
            // The newest sample's time, but no later than any Prometheus metric's newest.
            let data_ms = w.data_ms();
            verdicts.push(Observation::HostWatch {
                host: h,
                verdict,
                now_ms: now,
                // No sample yet: the engine must not take "now" for the data's time.
                data_ms: Some(data_ms.unwrap_or(i64::MIN)),
            });
        }
        let mut decisions = Vec::new();
        for v in verdicts {
            decisions.extend(self.rollout.step(v));
        }
        decisions.extend(self.rollout.step(Observation::Tick { now_ms: now }));
        decisions
    }
}

impl RolloutTask {
    /// Every host's values of the plan's Prometheus metrics since the last read, one point
    /// per analysis interval (steps aligned to it), up to now.
    async fn read_prometheus(&self, state: &AppState) -> Vec<PromRead> {
        let plan = &self.rollout.plan;
        let metrics: Vec<_> = plan.analysis.prometheus_metrics().collect();
        if metrics.is_empty() || self.rollout.is_settled() {
            return Vec::new();
        }
        let client = prom_client(plan, state);
        let step = plan.analysis.interval_ms().max(1);
        let now = now_ms();
        let end = now - now.rem_euclid(step);
        let mut reads = Vec::new();
        let mut queries = tokio::task::JoinSet::new();
        let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(PROM_CONCURRENCY));
        for (h, rec) in &self.rollout.hosts {
            for (rule, template) in &metrics {
                let metric = rule.name.0.clone();
                let fed = self
                    .prom_fed
                    .get(&(h.clone(), metric.clone()))
                    .copied()
                    .unwrap_or(now - BASELINE_LOOKBACK_MS);
                let start = (fed.div_euclid(step) + 1) * step;
                if start > end {
                    continue;
                }
                let vars = HostVars {
                    name: h.as_str(),
                    labels: &rec.labels,
                    address: self.addresses.get(h).map(String::as_str),
                };
                let query = match template.render_for(&vars, step) {
                    Ok(q) => q,
                    Err(e) => {
                        reads.push(PromRead {
                            host: h.clone(),
                            metric,
                            query: template.as_str().to_string(),
                            result: Err(e.to_string()),
                        });
                        continue;
                    }
                };
                let client = match &client {
                    Ok(c) => c.clone(),
                    Err(e) => {
                        reads.push(PromRead {
                            host: h.clone(),
                            metric,
                            query,
                            result: Err(e.clone()),
                        });
                        continue;
                    }
                };
                let (host, permits) = (h.clone(), permits.clone());
                queries.spawn(async move {
                    let _permit = permits.acquire_owned().await;
                    let result = client
                        .query_range(&query, start, end, step)
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(prometheus::host_points);
                    PromRead {
                        host,
                        metric,
                        query,
                        result,
                    }
                });
            }
        }
        while let Some(r) = queries.join_next().await {
            match r {
                Ok(read) => reads.push(read),
                Err(e) => tracing::error!(error = %e, "a Prometheus query task failed"),
            }
        }
        reads
    }
}

impl DurableTask for RolloutTask {
    const KIND: &'static str = bellwether_store::ROLLOUT;
    type Command = OperatorCommand;
    type Status = RolloutStatus;
    type Observed = Observed;
    type Effect = NoEffect;
    type EffectDone = NoEffect;

    async fn restore(state: AppState, rec: TaskRecord) -> Result<Self, ApiError> {
        let persisted: Persisted = serde_json::from_value(rec.state).map_err(|e| {
            internal(format!(
                "stored state of rollout {} is not readable: {e}",
                rec.id
            ))
        })?;
        let plan = &persisted.engine.plan;
        let mut watchers = BTreeMap::new();
        for h in persisted.engine.hosts.keys() {
            let w = match persisted.watchers.get(h) {
                Some(s) => HostWatcher::restore(plan, s),
                None => HostWatcher::new(plan, h.clone()),
            }
            .map_err(internal)?;
            watchers.insert(h.clone(), w);
        }
        let features = state.store.task_host_features(&rec.id).await?;
        let addresses = host_addresses(&state).await?;
        let fed_until = persisted
            .engine
            .hosts
            .keys()
            .map(|h| (h.clone(), now_ms() - BASELINE_LOOKBACK_MS))
            .collect();
        Ok(RolloutTask {
            rollout: persisted.engine,
            watchers,
            fed_until,
            features,
            prom_fed: BTreeMap::new(),
            addresses,
        })
    }

    fn id(&self) -> &str {
        &self.rollout.id
    }

    fn phase(&self) -> String {
        self.rollout.phase.name().to_string()
    }

    fn is_settled(&self) -> bool {
        // Not when the phase turns final: an aborted rollout's reverts report after that.
        self.rollout.is_settled()
    }

    fn persist(&self) -> Value {
        serde_json::to_value(PersistedRef {
            engine: &self.rollout,
            watchers: self
                .watchers
                .iter()
                .map(|(h, w)| (h, w.snapshot()))
                .collect(),
        })
        .expect("the rollout state serialises")
    }

    fn tick_every(&self) -> Duration {
        Duration::from_millis(self.rollout.plan.analysis.interval_ms().max(100) as u64)
    }

    async fn observe(&self, state: &AppState) -> Result<Observed, ApiError> {
        let mut observed = Observed {
            samples: BTreeMap::new(),
            drift: BTreeMap::new(),
            prom: self.read_prometheus(state).await,
        };
        store_prometheus_reads(state, &self.rollout.id, &observed.prom).await;
        for h in self.rollout.hosts.keys() {
            let after = self
                .fed_until
                .get(h)
                .copied()
                .unwrap_or(now_ms() - BASELINE_LOOKBACK_MS);
            let samples = state
                .store
                .samples_since(h.as_str(), after, 100_000)
                .await?;
            observed.samples.insert(h.clone(), samples);
            if let Some(d) = state.store.drift(h).await? {
                observed.drift.insert(h.clone(), d.score.overall.get());
            }
        }
        Ok(observed)
    }

    fn step(&mut self, input: Input<Self>, now: i64) -> Step<NoEffect> {
        let decisions = match input {
            Input::Tick(observed) => self.on_tick(observed, now),
            Input::Result(a) => self.on_result(&a, now),
            Input::Command(command) => self.rollout.step(Observation::Operator {
                command,
                now_ms: now,
            }),
            // A rollout that could not be saved pauses with a critical alert, and stays
            // paused until an operator resumes it (a store that filled up once deserves a
            // look first).
            Input::Hold { reason } => self.rollout.step(Observation::Hold {
                reason,
                now_ms: now,
            }),
            Input::Effect(never) => match never {},
        };
        self.effects(decisions)
    }

    fn status(&self) -> RolloutStatus {
        self.rollout.status()
    }

    async fn run_effect(_state: AppState, effect: NoEffect) -> NoEffect {
        match effect {}
    }
}

/// `POST /api/v1/rollouts`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRollout {
    pub plan_yaml: String,
    /// The plan's file name, for error messages.
    #[serde(default)]
    pub file: Option<String>,
}

fn new_id() -> String {
    let mut b = [0u8; 3];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
    format!("r-{}-{}", now_ms(), hex::encode(b))
}

async fn create(
    State(state): State<AppState>,
    _auth: Operator,
    JsonBody(req): JsonBody<CreateRollout>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let file = req.file.clone().unwrap_or_else(|| "plan.yaml".into());
    // Parsed on a blocking thread: even within its limits a plan costs CPU, never the async
    // threads that answer /healthz and every other request.
    let (text, name) = (req.plan_yaml.clone(), file.clone());
    let plan = tokio::task::spawn_blocking(move || parse_plan(&text, &name))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    if let Some((rule, _)) = plan.analysis.prometheus_metrics().next() {
        prom_client(&plan, &state).map_err(|e| {
            ApiError::bad_request(format!(
                "{file}: analysis.metrics: {} reads Prometheus, but there is {e}",
                rule.name
            ))
        })?;
    }
    let Some((model_version, model)) = model_api::latest_model(&state).await? else {
        return Err(ApiError::conflict(format!(
            "cannot score the hosts of {file}: {}",
            model_api::no_model_error().message
        )));
    };
    let update = UpdateInfo {
        name: plan.update.name.0.clone(),
        version: plan.update.version.0.clone(),
        update_type: None,
        depends_on: plan.update.depends_on.iter().map(|p| p.0.clone()).collect(),
    };
    let mut hosts = Vec::new();
    let mut profiles = BTreeMap::new();
    let mut addresses = BTreeMap::new();
    for h in state.store.list_hosts().await? {
        let p = state.store.current_profile(&h.name).await?;
        let mut labels = p.as_ref().map(|p| p.labels.clone()).unwrap_or_default();
        labels.extend(h.labels.clone());
        if plan.targets.matches(&labels, &attributes(p.as_ref())) {
            // Every query must fill in for every target (a label it names is missing).
            for (rule, q) in plan.analysis.prometheus_metrics() {
                let vars = HostVars {
                    name: h.name.as_str(),
                    labels: &labels,
                    address: h.address.as_deref(),
                };
                q.render_for(&vars, plan.analysis.interval_ms())
                    .map_err(|e| {
                        ApiError::bad_request(format!(
                            "{file}: analysis.metrics: {}: {e}",
                            rule.name
                        ))
                    })?;
            }
            if let Some(a) = &h.address {
                addresses.insert(h.name.clone(), a.clone());
            }
            hosts.push((h.name.clone(), labels.clone()));
            profiles.insert(h.name.clone(), (labels, p));
        }
    }
    if hosts.is_empty() {
        return Err(ApiError::bad_request(format!(
            "{file}: the plan's targets select none of the enrolled hosts"
        )));
    }
    let scored = model_api::score_hosts(&state, model, hosts, &update).await?;
    let now = now_ms();
    let mut inputs = Vec::new();
    let mut features = Vec::new();
    let mut watchers = BTreeMap::new();
    let mut fed_until = BTreeMap::new();
    let mut evidence_events = Vec::new();
    for model_api::HostScore {
        host: name,
        features: f,
        prediction: p,
        evidence,
    } in scored
    {
        // The direct evidence behind a host's risk goes into the log with the rollout, so a
        // held-back host's report says which failures hold it back.
        if !evidence.is_empty() {
            evidence_events.push(NewEvent {
                ts_ms: now,
                kind: "host.evidence".into(),
                host: Some(name.to_string()),
                reason: format!(
                    "Direct evidence: {}.",
                    evidence
                        .iter()
                        .map(|e| e.explanation.as_str())
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
                figures: json!({
                    "probability": p.probability.get(),
                    "evidence": evidence.iter().map(|e| json!({
                        "factor": e.feature, "contribution": e.contribution,
                        "failures": e.failures, "successes": e.successes,
                        "explanation": e.explanation,
                    })).collect::<Vec<_>>(),
                }),
            });
        }
        let (labels, profile) = profiles.remove(&name).unwrap_or_default();
        let drift = state.store.drift(&name).await?.map(|d| d.score);
        let mut w = HostWatcher::new(&plan, name.clone())
            .map_err(|e| ApiError::bad_request(format!("{file}: {e}")))?;
        let samples = state
            .store
            .samples_since(name.as_str(), now - BASELINE_LOOKBACK_MS, 100_000)
            .await?;
        for s in &samples {
            let _ = w.observe(s.ts_ms, &s.name, s.value);
        }
        if let Some(d) = &drift {
            w.observe_drift(now, d.overall.get());
        }
        fed_until.insert(
            name.clone(),
            samples
                .last()
                .map_or(now - BASELINE_LOOKBACK_MS, |s| s.ts_ms),
        );
        watchers.insert(name.clone(), w);
        inputs.push(HostInput {
            name: name.clone(),
            labels,
            attributes: attributes(profile.as_ref()),
            probability: p.probability.get(),
            factors: p
                .contributing_factors
                .iter()
                .take(FACTORS)
                .cloned()
                .collect(),
            drift,
        });
        features.push((name.to_string(), f));
    }
    let id = new_id();
    let (rollout, decisions) = Rollout::start(id.clone(), plan.clone(), inputs, now);
    let targets: Vec<String> = rollout.host_names().map(|h| h.to_string()).collect();
    features.retain(|(h, _)| targets.contains(h));
    watchers.retain(|h, _| targets.contains(&h.to_string()));
    let task = RolloutTask {
        features: features.iter().cloned().collect(),
        rollout,
        watchers,
        fed_until,
        prom_fed: BTreeMap::new(),
        addresses: addresses
            .into_iter()
            .filter(|(h, _)| targets.contains(&h.to_string()))
            .collect(),
    };
    let mut first = task.effects(decisions);
    evidence_events.retain(|e| e.host.as_ref().is_some_and(|h| targets.contains(h)));
    first.events.splice(0..0, evidence_events);
    let new = NewTask {
        id: id.clone(),
        kind: RolloutTask::KIND.to_string(),
        model_version: Some(model_version),
        plan_file: file.clone(),
        plan_yaml: req.plan_yaml,
        hosts: features,
    };
    let phase = task.rollout.phase.name();
    if let Some(busy) = task::create(&state, &new, task, first).await? {
        return Err(ApiError::conflict(format!(
            "host {} is already in running {} {}; wait for it, or abort it",
            busy.host, busy.kind, busy.task
        )));
    }
    tracing::info!(rollout = %id, hosts = targets.len(), model_version, "Started a rollout.");
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"id": id, "model_version": model_version, "hosts": targets.len(), "phase": phase}),
        ),
    ))
}

async fn load(
    state: &AppState,
    id: &str,
) -> Result<(bellwether_store::RolloutRecord, Rollout), ApiError> {
    let Some(rec) = state.store.rollout(id).await? else {
        return Err(ApiError::not_found(format!("unknown rollout {id}")));
    };
    let p: Persisted = serde_json::from_value(rec.state.clone())
        .map_err(|e| internal(format!("stored state of rollout {id} is not readable: {e}")))?;
    Ok((rec, p.engine))
}

/// A rollout's status and the model version that scored it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusResponse {
    #[serde(flatten)]
    pub status: RolloutStatus,
    pub model_version: Option<i64>,
    pub created_at_ms: i64,
}

async fn list(State(state): State<AppState>, _auth: Viewer) -> Result<Json<Vec<Value>>, ApiError> {
    let mut out = Vec::new();
    for rec in state.store.rollouts(false).await? {
        out.push(json!({
            "id": rec.id, "phase": rec.phase, "plan": rec.state["engine"]["plan"]["name"],
            "plan_file": rec.plan_file, "model_version": rec.model_version,
            "created_at_ms": rec.created_at_ms, "updated_at_ms": rec.updated_at_ms,
        }));
    }
    Ok(Json(out))
}

async fn status(
    State(state): State<AppState>,
    _auth: Viewer,
    Path(id): Path<String>,
) -> Result<Json<StatusResponse>, ApiError> {
    let (rec, r) = load(&state, &id).await?;
    Ok(Json(StatusResponse {
        status: r.status(),
        model_version: rec.model_version,
        created_at_ms: rec.created_at_ms,
    }))
}

/// A rollout's report and the model version that scored it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportResponse {
    #[serde(flatten)]
    pub report: RolloutReport,
    pub model_version: Option<i64>,
}

async fn report(
    State(state): State<AppState>,
    _auth: Viewer,
    Path(id): Path<String>,
) -> Result<Json<ReportResponse>, ApiError> {
    let (rec, r) = load(&state, &id).await?;
    Ok(Json(ReportResponse {
        report: r.report(),
        model_version: rec.model_version,
    }))
}

async fn command(
    State(state): State<AppState>,
    _auth: Operator,
    Path((id, command)): Path<(String, String)>,
) -> Result<Json<StatusResponse>, ApiError> {
    let cmd = match command.as_str() {
        "pause" => OperatorCommand::Pause,
        "resume" => OperatorCommand::Resume,
        "abort" => OperatorCommand::Abort,
        "promote" => OperatorCommand::Promote,
        other => {
            return Err(ApiError::not_found(format!(
                "no rollout command {other:?}; use pause, resume, abort or promote"
            )))
        }
    };
    let (rec, r) = load(&state, &id).await?;
    if r.phase.is_final() {
        return Err(ApiError::conflict(format!(
            "rollout {id} is {}; {command} applies to running or paused rollouts",
            r.phase.name()
        )));
    }
    let status = state.tasks.command::<RolloutTask>(&id, cmd).await?;
    Ok(Json(StatusResponse {
        status,
        model_version: rec.model_version,
        created_at_ms: rec.created_at_ms,
    }))
}

/// Roll back one updated host of a running or paused rollout now (the operator saw what the
/// metrics did not): it fails the host as a failing verdict would.
async fn roll_back_host(
    State(state): State<AppState>,
    _auth: Operator,
    Path((id, host)): Path<(String, String)>,
) -> Result<Json<StatusResponse>, ApiError> {
    let host = HostName::new(&host)
        .map_err(|e| ApiError::bad_request(format!("bad host name in path: {e}")))?;
    let (rec, r) = load(&state, &id).await?;
    if let Err(why) = r.can_roll_back(&host) {
        return Err(
            if r.host_names().any(|h| *h == host) || r.phase.is_final() {
                ApiError::conflict(why)
            } else {
                ApiError::not_found(why)
            },
        );
    }
    let status = state
        .tasks
        .command::<RolloutTask>(&id, OperatorCommand::RollBack { host })
        .await?;
    Ok(Json(StatusResponse {
        status,
        model_version: rec.model_version,
        created_at_ms: rec.created_at_ms,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionsQuery {
    wait_ms: Option<u64>,
}

/// One action for an agent: the one wire type, shared with the agent.
pub use bellwether_model::wire::AgentAction;

async fn agent_actions(
    State(state): State<AppState>,
    Agent(host): Agent,
    q: Result<Query<ActionsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) =
        q.map_err(|e| ApiError::bad_request(format!("bad query string: {}", e.body_text())))?;
    let wait = Duration::from_millis(q.wait_ms.unwrap_or(0).min(MAX_WAIT_MS));
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        // Listen before looking, so a dispatch stored in between still wakes us.
        let bell = state.tasks.actions.notified();
        tokio::pin!(bell);
        bell.as_mut().enable();
        let open = state
            .store
            .take_open_actions(host.as_str(), now_ms())
            .await?;
        if !open.is_empty() || tokio::time::Instant::now() >= deadline {
            let actions: Vec<AgentAction> = open
                .into_iter()
                .filter_map(|a| match serde_json::from_value(a.spec) {
                    Ok(spec) => Some(AgentAction::new(a.uid, a.task_id, a.kind, spec)),
                    Err(e) => {
                        // Written by this type, so only a downgrade gets here; the action
                        // then times out in its engine rather than block the host's others.
                        tracing::error!(action = %a.uid, error = %e, "A stored action spec cannot be read; not sending it.");
                        None
                    }
                })
                .collect();
            return Ok(Json(json!({ "actions": actions })));
        }
        let _ = tokio::time::timeout_at(deadline, bell).await;
    }
}

/// `POST /api/v1/agent/actions/{id}/result`: the one wire type, shared with the agent. It
/// reads the typed outcome and the older flat form; it is stored in the typed form.
pub use bellwether_model::wire::ActionResult as ActionResultBody;

async fn agent_result(
    State(state): State<AppState>,
    Agent(host): Agent,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ActionResultBody>,
) -> Result<StatusCode, ApiError> {
    if !bellwether_model::wire::is_action_id(&id) {
        return Err(ApiError::bad_request(format!(
            "action id {id:?} is not an action id (32 lower-case hex characters)"
        )));
    }
    let value = serde_json::to_value(&body).expect("a result serialises");
    let Some(done) = state
        .store
        .finish_action(&id, host.as_str(), &value, now_ms())
        .await?
    else {
        return Err(ApiError::not_found(format!(
            "host {host} has no action {id}"
        )));
    };
    if let ActionFinish::Stored(rec) = done {
        tracing::info!(host = %host, action = id, task = %rec.task_id, outcome = body.outcome.status(), "Stored an action result.");
        state.tasks.result_stored(&rec.task_id);
    }
    Ok(StatusCode::NO_CONTENT)
}
