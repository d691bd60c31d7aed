//! Patches as durable server tasks: one task per patch steps the pure engine
//! (`bellwether_engine::patch`) with samples, ticks, action results and an operator's abort.
//!
//! The engine's actions are carried out two ways. Starting and stopping an instance go to the
//! agent on the database host as the built-ins `start_process` and `stop_process` (queued in
//! the store's action queue under the patch's id, long-polled by the agent like a rollout's);
//! routing, draining and the health wait go to the long-running `bellwether proxy` over its
//! admin API ([`proxy::ProxyClient`]). Samples combine both: per interval the server reads the
//! proxy's per-backend counters and latency histogram (latency p50/p99, throughput and error
//! rate over the interval) and asks the agent for `sample_processes` (CPU as % of one core
//! from the tick deltas of two samples, RSS); a value that is missing or stale is `None`, and
//! the engine never acts on no data. Webhooks are posted by the server.
//!
//! Durability follows the rollouts' rule: each step is taken on a copy of the driver (engine
//! and driver state), the step's inputs, events, dispatched agent actions and consumed results
//! are stored in one transaction ([`bellwether_store::Store::save_patch_step`]), and only then
//! is the copy kept and the proxy or the webhook called. The engine is rebuilt on resume by
//! replaying its stored inputs (it is pure). An awaited proxy action is re-issued after a
//! restart (each is idempotent: weights and admin states are set, not toggled, and a drain of
//! a drained backend answers at once), the routing last set is re-applied, and an awaited
//! agent action is re-delivered by the queue until its result arrives (the agent's journal
//! never runs one id twice).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use bellwether_engine::patch::{
    Action, Input, Instance, MetricKind, PatchEngine, PatchPlan, PatchReport, Sample, Stage,
};
use bellwether_store::{NewAction, NewEvent, NewPatch, PatchStep};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, Mutex};

use crate::auth::{Operator, Viewer};
use crate::body::JsonBody;
use crate::error::ApiError;
use crate::{now_ms, AppState};

pub mod proxy;
use proxy::{BackendPoint, ProxyClient};

/// The routes of this module, as (method, path); docs/api.md and docs/openapi.yaml describe
/// each (a test checks).
pub const PATCH_ROUTES: &[(&str, &str)] = &[
    ("POST", "/api/v1/patches"),
    ("GET", "/api/v1/patches"),
    ("GET", "/api/v1/patches/{id}"),
    ("GET", "/api/v1/patches/{id}/report"),
    ("POST", "/api/v1/patches/{id}/abort"),
];

pub(crate) fn routes() -> axum::Router<AppState> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/api/v1/patches", post(create).get(list))
        .route("/api/v1/patches/{id}", get(status))
        .route("/api/v1/patches/{id}/report", get(report))
        .route("/api/v1/patches/{id}/abort", post(abort))
}

/// How long past its own timeout an agent action may stay unreported before the engine is
/// told it failed.
const AGENT_GRACE_MS: i64 = 60_000;
/// The timeout of `stop_process`.
const STOP_TIMEOUT_MS: u64 = 60_000;

enum Msg {
    /// A result was stored for one of this patch's actions.
    Result,
    Abort(String, oneshot::Sender<Result<StatusResponse, ApiError>>),
}

/// The running patches of this process, and the proxy admin tokens the server may use.
#[derive(Default)]
pub struct Patches {
    running: Mutex<HashMap<String, mpsc::UnboundedSender<Msg>>>,
    /// `--proxy-token-file NAME=FILE`: the files that hold the proxies' admin tokens. A patch
    /// names one; the token is read from its file at each use and never stored.
    proxy_tokens: BTreeMap<String, PathBuf>,
}

impl std::fmt::Debug for Patches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Patches")
            .field(
                "proxy_tokens",
                &self.proxy_tokens.keys().collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Patches {
    /// With the proxy token files a server was started with (`--proxy-token-file`).
    pub fn new(proxy_tokens: BTreeMap<String, PathBuf>) -> Patches {
        Patches {
            running: Mutex::default(),
            proxy_tokens,
        }
    }
}

/// Tells the task of patch `id`, when it runs here, that a result of one of its actions was
/// stored (the agent API calls it for every stored result).
pub(crate) async fn result_stored(state: &AppState, id: &str) {
    if let Some(tx) = state.patches.running.lock().await.get(id) {
        let _ = tx.send(Msg::Result);
    }
}

/// An engine action the driver waits for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Awaiting {
    action: Action,
    /// The agent action carrying it out (start, stop); `None` for a proxy action.
    agent_action: Option<u64>,
    since_ms: i64,
    timeout_ms: u64,
}

/// The last process sample of one PID.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct ProcPoint {
    at_ms: i64,
    cpu_ticks: u64,
    ticks_per_s: u64,
}

/// CPU and RSS of one instance, as of `at_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct ProcValues {
    at_ms: i64,
    cpu: Option<f64>,
    rss: Option<f64>,
}

/// What a backend was last set to, re-applied after a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Routing {
    weight: Option<u32>,
    admin: Option<String>,
}

/// The driver's state besides the engine: stored with every step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct DriverState {
    host: String,
    admin_url: String,
    /// The name of the proxy token (`--proxy-token-file NAME=FILE`), never the token.
    proxy_token: String,
    original_pid: Option<u32>,
    patched_pid: Option<u32>,
    next_action_id: u64,
    next_seq: i64,
    awaiting: Option<Awaiting>,
    /// The `sample_processes` action in flight.
    sample_action: Option<u64>,
    abort: Option<String>,
    routing: BTreeMap<String, Routing>,
    procs: BTreeMap<u32, ProcPoint>,
    proc_values: BTreeMap<String, ProcValues>,
    /// How many of the report's events are in the event log.
    events_logged: usize,
}

/// What is stored as a patch's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Persisted {
    driver: DriverState,
    report: PatchReport,
}

#[derive(Clone)]
struct Core {
    engine: PatchEngine,
    st: DriverState,
}

/// The effects of one step, besides the new core.
#[derive(Default)]
struct Effects {
    inputs: Vec<(i64, Value)>,
    dispatches: Vec<NewAction>,
    webhooks: Vec<Value>,
    extra_events: Vec<NewEvent>,
    observed: Vec<i64>,
}

fn instance_key(i: Instance) -> &'static str {
    match i {
        Instance::Original => "original",
        Instance::Patched => "patched",
    }
}

/// The stage as one word (`rolling_back`, `baking`…), the form stored and listed.
pub fn stage_name(s: Stage) -> String {
    match serde_json::to_value(s) {
        Ok(Value::String(s)) => s,
        Ok(Value::Object(m)) => m.keys().next().cloned().unwrap_or_default(),
        _ => String::new(),
    }
}

fn new_uid() -> String {
    let mut b = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
    hex::encode(b)
}

impl Core {
    fn plan(&self) -> &PatchPlan {
        self.engine.plan()
    }

    fn settled(&self) -> bool {
        self.engine.stage().is_final() && self.st.awaiting.is_none()
    }

    fn dispatch(&mut self, fx: &mut Effects, spec: Value) -> u64 {
        let id = self.st.next_action_id;
        self.st.next_action_id += 1;
        fx.dispatches.push(NewAction {
            action_id: id,
            uid: new_uid(),
            host: self.st.host.clone(),
            kind: spec["builtin"].as_str().unwrap_or("patch").to_string(),
            spec,
        });
        id
    }

    /// Feeds one input to the engine, records it, and turns the engine's actions into
    /// dispatches, an awaited action and webhooks.
    fn feed(&mut self, fx: &mut Effects, input: Input, now: i64) {
        let seq = self.st.next_seq;
        self.st.next_seq += 1;
        fx.inputs.push((
            seq,
            serde_json::to_value(&input).expect("an input serialises"),
        ));
        for action in self.engine.step(input) {
            match action {
                Action::Webhook { body } => fx.webhooks.push(body),
                Action::StartPatched => {
                    let p = &self.plan().patched;
                    let timeout_ms = (self.plan().health.timeout.0.as_millis() as u64)
                        .clamp(bellwether_model::action::MIN_TIMEOUT_MS, 3_600_000);
                    let mut spec = json!({"builtin": "start_process", "argv": p.start, "timeout_ms": timeout_ms});
                    if let Some(f) = &p.pidfile {
                        spec["pidfile"] = json!(f);
                    }
                    let id = self.dispatch(fx, spec);
                    self.st.awaiting = Some(Awaiting {
                        action: Action::StartPatched,
                        agent_action: Some(id),
                        since_ms: now,
                        timeout_ms,
                    });
                }
                Action::Stop { instance } => {
                    let mut spec =
                        json!({"builtin": "stop_process", "timeout_ms": STOP_TIMEOUT_MS});
                    match instance {
                        Instance::Patched => {
                            spec["argv"] = json!(self.plan().patched.stop);
                            // The agent waits for this one process to exit (its PID, else the
                            // pidfile's: a start that failed may have left no PID behind).
                            match (self.st.patched_pid, &self.plan().patched.pidfile) {
                                (Some(pid), _) => spec["pid"] = json!(pid),
                                (None, Some(f)) => spec["pidfile"] = json!(f),
                                (None, None) => {}
                            }
                        }
                        Instance::Original => {
                            let o = &self.plan().original;
                            if let Some(argv) = &o.stop {
                                spec["argv"] = json!(argv);
                            }
                            match (self.st.original_pid, &o.pidfile) {
                                (_, Some(f)) if o.pid.is_none() => spec["pidfile"] = json!(f),
                                (Some(pid), _) => spec["pid"] = json!(pid),
                                _ => {}
                            }
                        }
                    }
                    let id = self.dispatch(fx, spec);
                    self.st.awaiting = Some(Awaiting {
                        action: Action::Stop { instance },
                        agent_action: Some(id),
                        since_ms: now,
                        timeout_ms: STOP_TIMEOUT_MS,
                    });
                }
                other => {
                    let timeout_ms = match &other {
                        Action::WaitPatchedHealthy { timeout_ms }
                        | Action::Drain { timeout_ms, .. } => *timeout_ms,
                        _ => 0,
                    };
                    self.st.awaiting = Some(Awaiting {
                        action: other,
                        agent_action: None,
                        since_ms: now,
                        timeout_ms,
                    });
                }
            }
        }
    }

    /// The stored record of this core after a step with `fx`.
    fn record(&self, fx: &Effects) -> PatchStep {
        let mut st = self.st.clone();
        let report = self.engine.report();
        let mut events = fx.extra_events.clone();
        events.extend(
            report.events[st.events_logged.min(report.events.len())..]
                .iter()
                .map(|e| NewEvent {
                    ts_ms: e.at_ms,
                    kind: e.kind.clone(),
                    host: None,
                    reason: e.message.clone(),
                    figures: e.figures.clone(),
                }),
        );
        st.events_logged = report.events.len();
        PatchStep {
            stage: stage_name(self.engine.stage()),
            settled: self.settled(),
            state: serde_json::to_value(Persisted {
                driver: st,
                report: report.clone(),
            })
            .expect("a patch state serialises"),
            inputs: fx.inputs.clone(),
            events,
            dispatches: fx.dispatches.clone(),
            observed_actions: fx.observed.clone(),
        }
    }

    fn watches(&self, kinds: &[MetricKind]) -> bool {
        self.plan()
            .metrics
            .iter()
            .any(|m| kinds.contains(&m.metric))
    }
}

struct Run {
    state: AppState,
    id: String,
    core: Core,
    proxy: ProxyClient,
    /// The previous proxy reading per backend, for rates over the interval (not stored: the
    /// first interval after a restart has no data).
    proxy_prev: BTreeMap<String, (i64, BackendPoint)>,
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

impl Run {
    /// Steps a copy of the core with `step`, stores it with its effects, and keeps it only
    /// once the store committed; then wakes agents and posts webhooks. A save that keeps
    /// failing leaves the core as it was (the same results stay unobserved, an awaited proxy
    /// action is re-issued on the next round).
    async fn commit(&mut self, step: impl FnOnce(&mut Core, &mut Effects)) -> Result<(), ApiError> {
        let mut next = self.core.clone();
        let mut fx = Effects::default();
        step(&mut next, &mut fx);
        let rec = next.record(&fx);
        let mut delay = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            match self
                .state
                .store
                .save_patch_step(&self.id, &rec, now_ms())
                .await
            {
                Ok(()) => break,
                Err(e) if attempt >= 6 => {
                    tracing::error!(patch = %self.id, error = %e, "Could not save a patch step; it is retried from the same inputs.");
                    return Err(e.into());
                }
                Err(e) => {
                    tracing::warn!(patch = %self.id, attempt, error = %e, "Could not save a patch step; retrying.");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                    attempt += 1;
                }
            }
        }
        next.st.events_logged = next.engine.report().events.len();
        self.core = next;
        if !fx.dispatches.is_empty() {
            self.state.rollouts.actions.notify_waiters();
        }
        if let Some(url) = self.core.plan().webhook.clone() {
            for body in fx.webhooks {
                tokio::spawn(post_webhook(url.clone(), body));
            }
        }
        Ok(())
    }

    /// Runs the awaited proxy action, if any, and feeds its result; repeats while the engine
    /// asks for more.
    async fn follow(&mut self) -> Result<(), ApiError> {
        while let Some(a) = self.core.st.awaiting.clone() {
            if a.agent_action.is_some() {
                return Ok(());
            }
            let (ok, detail) = match self.execute(&a.action).await {
                Ok(d) => (true, d),
                Err(e) => {
                    tracing::warn!(patch = %self.id, action = ?a.action, error = %e, "Patch proxy action failed.");
                    (false, json!({ "error": e }))
                }
            };
            let routing = self.routing_after(&a.action);
            self.commit(|c, fx| {
                c.st.awaiting = None;
                for (name, r) in routing {
                    c.st.routing.insert(name, r);
                }
                let now = now_ms();
                c.feed(
                    fx,
                    Input::Done {
                        at_ms: now,
                        ok,
                        detail,
                    },
                    now,
                );
            })
            .await?;
        }
        Ok(())
    }

    fn name(&self, i: Instance) -> String {
        match i {
            Instance::Original => self.core.plan().original.name.clone(),
            Instance::Patched => self.core.plan().patched.name.clone(),
        }
    }

    /// What the proxy's backends are set to once `action` ran.
    fn routing_after(&self, action: &Action) -> Vec<(String, Routing)> {
        let set = |w: Option<u32>, admin: Option<&str>| Routing {
            weight: w,
            admin: admin.map(str::to_string),
        };
        match action {
            Action::Route { original, patched } => [
                (Instance::Original, *original),
                (Instance::Patched, *patched),
            ]
            .into_iter()
            .map(|(i, w)| {
                let admin = (w > 0).then_some("ready").or(self
                    .core
                    .st
                    .routing
                    .get(&self.name(i))
                    .and_then(|r| r.admin.as_deref()));
                (self.name(i), set(Some(w), admin))
            })
            .collect(),
            Action::Drain { instance, .. } => {
                let w = self
                    .core
                    .st
                    .routing
                    .get(&self.name(*instance))
                    .and_then(|r| r.weight);
                vec![(self.name(*instance), set(w, Some("drain")))]
            }
            Action::ServeOnly { instance } => {
                let other = match instance {
                    Instance::Original => Instance::Patched,
                    Instance::Patched => Instance::Original,
                };
                vec![
                    (self.name(*instance), set(Some(100), Some("ready"))),
                    (self.name(other), set(Some(0), Some("maintenance"))),
                ]
            }
            _ => vec![],
        }
    }

    /// Carries out one proxy action; the Done detail, or the error.
    async fn execute(&mut self, action: &Action) -> Result<Value, String> {
        match action {
            Action::WaitPatchedHealthy { timeout_ms } => {
                let name = self.name(Instance::Patched);
                let deadline = tokio::time::Instant::now() + Duration::from_millis(*timeout_ms);
                let mut last = String::from("no check passed");
                loop {
                    match self.proxy.backend(&name).await {
                        Ok(b) if b.healthy => {
                            return Ok(
                                json!({ "checks": b.checks, "consecutive_ok": b.consecutive_ok }),
                            )
                        }
                        Ok(b) => {
                            if let Some(e) = b.last_error {
                                last = e;
                            }
                        }
                        Err(e) => last = e,
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Err(format!("not healthy after {timeout_ms} ms: {last}"));
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            Action::Route { original, patched } => {
                for (i, w) in [
                    (Instance::Original, *original),
                    (Instance::Patched, *patched),
                ] {
                    let admin = (w > 0).then_some("ready");
                    self.proxy.set(&self.name(i), Some(w), admin).await?;
                }
                Ok(json!({ "original_weight": original, "patched_weight": patched }))
            }
            Action::Drain {
                instance,
                timeout_ms,
            } => {
                let name = self.name(*instance);
                let mut v = self.proxy.drain(&name, *timeout_ms).await?;
                if let Ok(b) = self.proxy.backend(&name).await {
                    v["graceful_closes_total"] = json!(b.metrics.graceful_closes);
                }
                Ok(v)
            }
            Action::ServeOnly { instance } => {
                let keep = self.name(*instance);
                let other = match instance {
                    Instance::Original => self.name(Instance::Patched),
                    Instance::Patched => self.name(Instance::Original),
                };
                self.proxy.set(&keep, Some(100), Some("ready")).await?;
                self.proxy.set(&other, Some(0), Some("maintenance")).await?;
                Ok(json!({ "serving": keep, "out_of_rotation": other }))
            }
            // Carried out by the agent or posted after the commit; never awaited here.
            Action::StartPatched | Action::Stop { .. } | Action::Webhook { .. } => Ok(json!({})),
        }
    }

    /// Feeds every stored result this patch has not consumed yet.
    async fn results(&mut self) -> Result<(), ApiError> {
        for a in self.state.store.unobserved_results(&self.id).await? {
            let result = a.result.clone().unwrap_or(Value::Null);
            let output = result.get("output").cloned().unwrap_or(Value::Null);
            if self.core.st.sample_action == Some(a.action_id) {
                let interval_ms = self.core.plan().sample_interval.0.as_millis() as i64;
                let (op, pp) = (self.core.st.original_pid, self.core.st.patched_pid);
                self.commit(|c, fx| {
                    c.st.sample_action = None;
                    fx.observed.push(a.id);
                    if result["ok"].as_bool() == Some(true) {
                        absorb_sample(&mut c.st, &output, op, pp, interval_ms);
                    }
                })
                .await?;
                continue;
            }
            let awaited = self
                .core
                .st
                .awaiting
                .as_ref()
                .filter(|w| w.agent_action == Some(a.action_id))
                .cloned();
            let Some(w) = awaited else {
                // A result nobody waits for any more (a sample from before a restart, an
                // action that timed out): consumed, not fed.
                self.commit(|_, fx| fx.observed.push(a.id)).await?;
                continue;
            };
            let mut ok = result["ok"].as_bool() == Some(true);
            let mut detail = match &output {
                Value::Object(_) => output.clone(),
                _ => json!({}),
            };
            if !ok {
                detail["error"] = result["error"].clone();
                detail["stderr_tail"] = result["stderr_tail"].clone();
            }
            let mut patched_pid = None;
            if ok && w.action == Action::StartPatched {
                match output["pid"].as_u64().and_then(|p| u32::try_from(p).ok()) {
                    Some(pid) => {
                        patched_pid = Some(pid);
                        detail["argv"] = json!(self.core.plan().patched.start);
                        // Registered with the proxy, checked but without traffic.
                        let name = self.name(Instance::Patched);
                        if let Err(e) = self.proxy.set(&name, Some(0), Some("ready")).await {
                            ok = false;
                            detail["error"] = json!(format!("started, but the proxy: {e}"));
                        }
                    }
                    None => {
                        ok = false;
                        detail["error"] = json!("the agent's result names no pid");
                    }
                }
            }
            let name = self.name(Instance::Patched);
            self.commit(|c, fx| {
                fx.observed.push(a.id);
                c.st.awaiting = None;
                if let Some(pid) = patched_pid {
                    c.st.patched_pid = Some(pid);
                    c.st.routing.insert(
                        name,
                        Routing {
                            weight: Some(0),
                            admin: Some("ready".into()),
                        },
                    );
                }
                let now = now_ms();
                c.feed(
                    fx,
                    Input::Done {
                        at_ms: now,
                        ok,
                        detail,
                    },
                    now,
                );
            })
            .await?;
            self.follow().await?;
        }
        Ok(())
    }

    /// One sampling interval: the proxy's counters, the last process sample, a tick, a new
    /// process sample asked for, a pending abort delivered, an overdue agent action failed.
    async fn round(&mut self) -> Result<(), ApiError> {
        self.follow().await?;
        let stage = self.core.engine.stage();
        let now = now_ms();
        let mut samples = Vec::new();
        if matches!(stage, Stage::Baseline | Stage::Baking) {
            let points = match self.proxy.backends().await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(patch = %self.id, error = %e, "Cannot read the proxy's counters; this interval has no proxy data.");
                    Vec::new()
                }
            };
            let mut wanted = vec![Instance::Original];
            if stage == Stage::Baking {
                wanted.push(Instance::Patched);
            }
            let interval_ms = self.core.plan().sample_interval.0.as_millis() as i64;
            for i in wanted {
                let name = self.name(i);
                let mut values = BTreeMap::new();
                let point = points.iter().find(|p| p.name == name);
                let prev = self.proxy_prev.get(&name);
                proxy_values(prev, point, now, &mut values);
                match point {
                    Some(p) => {
                        self.proxy_prev.insert(name, (now, p.clone()));
                    }
                    None => {
                        self.proxy_prev.remove(&name);
                    }
                }
                let pv = self
                    .core
                    .st
                    .proc_values
                    .get(instance_key(i))
                    .filter(|v| now - v.at_ms <= 3 * interval_ms);
                values.insert(MetricKind::Cpu, pv.and_then(|v| v.cpu));
                values.insert(MetricKind::Rss, pv.and_then(|v| v.rss));
                samples.push(Sample {
                    at_ms: now,
                    instance: i,
                    values,
                });
            }
        }
        let want_procs = self.core.watches(&[MetricKind::Cpu, MetricKind::Rss])
            && matches!(stage, Stage::Baseline | Stage::Baking)
            && self.core.st.sample_action.is_none();
        let overdue = self.core.st.awaiting.as_ref().is_some_and(|w| {
            w.agent_action.is_some() && now - w.since_ms > w.timeout_ms as i64 + AGENT_GRACE_MS
        });
        let host = self.core.st.host.clone();
        self.commit(|c, fx| {
            for s in samples {
                c.feed(fx, Input::Sample(s), now);
            }
            if c.engine.stage() == Stage::Baseline {
                c.feed(fx, Input::Tick { at_ms: now }, now);
            }
            if overdue {
                c.st.awaiting = None;
                let detail = json!({"error": format!("the agent on {host} did not report the action in time")});
                c.feed(fx, Input::Done { at_ms: now, ok: false, detail }, now);
            }
            deliver_abort(c, fx, now);
            if want_procs && !c.engine.stage().is_final() {
                let pids: Vec<u32> = [c.st.original_pid, c.st.patched_pid]
                    .into_iter()
                    .flatten()
                    .collect();
                if !pids.is_empty() {
                    let id = c.dispatch(fx, json!({"builtin": "sample_processes", "pids": pids}));
                    c.st.sample_action = Some(id);
                }
            }
        })
        .await?;
        self.follow().await
    }

    /// After a restart: the routing last set goes to the proxy again (it may have restarted
    /// too), then an awaited proxy action is re-issued.
    async fn reapply(&mut self) {
        for (name, r) in self.core.st.routing.clone() {
            if let Err(e) = self.proxy.set(&name, r.weight, r.admin.as_deref()).await {
                tracing::warn!(patch = %self.id, backend = %name, error = %e, "Could not re-apply the proxy's routing.");
            }
        }
    }

    fn status(&self, rec_created: i64) -> StatusResponse {
        status_of(
            &self.id,
            rec_created,
            &self.core.st,
            self.core.engine.report(),
        )
    }
}

/// Delivers a pending abort when the engine can take it (nothing awaited, in the baseline or
/// baking); drops it once the patch is final.
fn deliver_abort(c: &mut Core, fx: &mut Effects, now: i64) {
    let Some(reason) = c.st.abort.clone() else {
        return;
    };
    let stage = c.engine.stage();
    if stage.is_final() {
        c.st.abort = None;
    } else if c.st.awaiting.is_none() && matches!(stage, Stage::Baseline | Stage::Baking) {
        c.st.abort = None;
        c.feed(fx, Input::Abort { at_ms: now, reason }, now);
    }
}

/// The proxy-level values of one backend over the interval since `prev`.
fn proxy_values(
    prev: Option<&(i64, BackendPoint)>,
    now: Option<&BackendPoint>,
    now_ms: i64,
    out: &mut BTreeMap<MetricKind, Option<f64>>,
) {
    for k in [
        MetricKind::LatencyP50,
        MetricKind::LatencyP99,
        MetricKind::Throughput,
        MetricKind::ErrorRate,
    ] {
        out.insert(k, None);
    }
    let (Some((at, p0)), Some(p1)) = (prev, now) else {
        return;
    };
    let dq = p1.metrics.queries.saturating_sub(p0.metrics.queries);
    let de = p1
        .metrics
        .query_errors
        .saturating_sub(p0.metrics.query_errors);
    let dh = p1
        .metrics
        .query_latency_histogram
        .since(&p0.metrics.query_latency_histogram);
    let dt = ((now_ms - at) as f64 / 1000.0).max(1e-3);
    out.insert(MetricKind::LatencyP50, dh.quantile(0.5));
    out.insert(MetricKind::LatencyP99, dh.quantile(0.99));
    out.insert(MetricKind::Throughput, (dq > 0).then(|| dq as f64 / dt));
    out.insert(
        MetricKind::ErrorRate,
        (dq > 0).then(|| de as f64 / dq as f64),
    );
}

/// Turns a `sample_processes` output into each instance's CPU (% of one core, from the
/// tick delta since the PID's previous sample) and RSS.
fn absorb_sample(
    st: &mut DriverState,
    output: &Value,
    original: Option<u32>,
    patched: Option<u32>,
    interval_ms: i64,
) {
    let Some(at_ms) = output["at_ms"].as_i64() else {
        return;
    };
    for (key, pid) in [("original", original), ("patched", patched)] {
        let Some(pid) = pid else { continue };
        let p = &output["processes"][pid.to_string()];
        if p.is_null() {
            continue;
        }
        if p["alive"].as_bool() != Some(true) {
            st.procs.remove(&pid);
            st.proc_values.insert(
                key.into(),
                ProcValues {
                    at_ms,
                    cpu: None,
                    rss: None,
                },
            );
            continue;
        }
        let point = ProcPoint {
            at_ms,
            cpu_ticks: p["cpu_ticks"].as_u64().unwrap_or(0),
            ticks_per_s: p["ticks_per_s"].as_u64().unwrap_or(100).max(1),
        };
        let cpu = st.procs.get(&pid).and_then(|prev| {
            let dt = (at_ms - prev.at_ms) as f64 / 1000.0;
            // Two samples too close together say nothing; one too far apart is stale.
            (dt > 0.0 && dt <= 10.0 * interval_ms.max(1) as f64 / 1000.0).then(|| {
                point.cpu_ticks.saturating_sub(prev.cpu_ticks) as f64
                    / point.ticks_per_s as f64
                    / dt
                    * 100.0
            })
        });
        st.procs.insert(pid, point);
        st.proc_values.insert(
            key.into(),
            ProcValues {
                at_ms,
                cpu,
                rss: p["rss_bytes"].as_f64(),
            },
        );
    }
}

/// POSTs a webhook's JSON; its failure is logged, never retried.
async fn post_webhook(url: String, body: Value) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build();
    let r = match client {
        Ok(c) => c.post(&url).json(&body).send().await,
        Err(e) => Err(e),
    };
    match r {
        Ok(resp) => {
            tracing::info!(url = %url, status = resp.status().as_u16(), "Patch webhook delivered.")
        }
        Err(e) => tracing::warn!(url = %url, error = %e, "Patch webhook failed."),
    }
}

async fn drive(mut run: Run, mut rx: mpsc::UnboundedReceiver<Msg>, created: i64) {
    let id = run.id.clone();
    let mut tick = tokio::time::interval(run.core.plan().sample_interval.0);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Results stored while the server was away.
    if let Err(e) = run.results().await {
        tracing::error!(patch = %id, error = %e.message, "Patch step failed; retrying on the next interval.");
    }
    while !run.core.settled() {
        let r = tokio::select! {
            _ = tick.tick() => match run.results().await {
                Ok(()) => run.round().await,
                Err(e) => Err(e),
            },
            msg = rx.recv() => match msg {
                None => break,
                Some(Msg::Result) => run.results().await,
                Some(Msg::Abort(reason, reply)) => {
                    let r = run
                        .commit(|c, fx| {
                            fx.extra_events.push(NewEvent {
                                ts_ms: now_ms(),
                                kind: "abort.requested".into(),
                                host: None,
                                reason: format!("An operator asked to abort: {reason}"),
                                figures: json!({ "reason": reason }),
                            });
                            c.st.abort = Some(reason);
                            deliver_abort(c, fx, now_ms());
                        })
                        .await;
                    let r = match r {
                        Ok(()) => run.follow().await,
                        Err(e) => Err(e),
                    };
                    let _ = reply.send(match &r {
                        Ok(()) => Ok(run.status(created)),
                        Err(e) => Err(e.clone()),
                    });
                    r
                }
            },
        };
        if let Err(e) = r {
            tracing::error!(patch = %id, error = %e.message, "Patch step failed; retrying on the next interval.");
        }
    }
    tracing::info!(patch = %id, stage = %stage_name(run.core.engine.stage()), "Patch finished.");
    run.state.patches.running.lock().await.remove(&id);
}

async fn spawn(state: &AppState, run: Run, created: i64) {
    let (tx, rx) = mpsc::unbounded_channel();
    state
        .patches
        .running
        .lock()
        .await
        .insert(run.id.clone(), tx);
    tokio::spawn(drive(run, rx, created));
}

fn proxy_client(state: &AppState, st: &DriverState) -> Result<ProxyClient, ApiError> {
    let Some(file) = state.patches.proxy_tokens.get(&st.proxy_token) else {
        return Err(ApiError::bad_request(format!(
            "no proxy token named {:?}: start the server with --proxy-token-file {}=FILE",
            st.proxy_token, st.proxy_token
        )));
    };
    ProxyClient::new(&st.admin_url, file.clone()).map_err(ApiError::bad_request)
}

/// Restarts the task of every patch the store holds as unsettled; returns how many. The
/// engine is rebuilt by replaying its stored inputs.
pub async fn resume_all(state: &AppState) -> Result<usize, ApiError> {
    let mut n = 0;
    for rec in state.store.patches(true).await? {
        let p: Persisted = serde_json::from_value(rec.state.clone()).map_err(|e| {
            internal(format!(
                "stored state of patch {} is not readable: {e}",
                rec.id
            ))
        })?;
        let plan = PatchPlan::parse(&rec.plan_file, &rec.plan_yaml)
            .map_err(|e| internal(format!("stored plan of patch {}: {e}", rec.id)))?;
        let mut engine = PatchEngine::new(&rec.id, plan, p.report.started_ms)
            .map_err(|e| internal(format!("stored plan of patch {}: {e}", rec.id)))?;
        for (seq, input) in state.store.patch_inputs(&rec.id).await? {
            let input: Input = serde_json::from_value(input).map_err(|e| {
                internal(format!(
                    "stored input {seq} of patch {} is not readable: {e}",
                    rec.id
                ))
            })?;
            let _ = engine.step(input);
        }
        if engine.stage() != p.report.stage || engine.report().events.len() != p.report.events.len()
        {
            tracing::error!(patch = %rec.id, "The replayed patch differs from its stored report; going on from the replay.");
        }
        let proxy = match proxy_client(state, &p.driver) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(patch = %rec.id, error = %e.message, "Cannot resume the patch: its proxy is not usable.");
                continue;
            }
        };
        tracing::info!(patch = %rec.id, stage = %rec.stage, "Resuming a patch from the store.");
        let mut run = Run {
            state: state.clone(),
            id: rec.id.clone(),
            core: Core {
                engine,
                st: p.driver,
            },
            proxy,
            proxy_prev: BTreeMap::new(),
        };
        run.reapply().await;
        spawn(state, run, rec.created_at_ms).await;
        n += 1;
    }
    Ok(n)
}

/// `POST /api/v1/patches`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreatePatch {
    /// The plan (docs/patch.md).
    pub plan_yaml: String,
    /// The plan's file name, for error messages.
    #[serde(default)]
    pub file: Option<String>,
    /// The enrolled host whose agent runs the instances.
    pub host: String,
    /// The long-running proxy the server drives.
    pub proxy: ProxyTarget,
    /// The original's PID when the plan names a `pidfile` the server cannot read (it is on
    /// the host); needed only to sample its CPU and RSS.
    #[serde(default)]
    pub original_pid: Option<u32>,
    /// The patch ID (default `p-<plan name>-<ms>`).
    #[serde(default)]
    pub id: Option<String>,
}

/// Where the proxy's admin API is and which token opens it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyTarget {
    /// `http://HOST:PORT` or `https://…`; default `http://` and the plan's `proxy.admin`.
    #[serde(default)]
    pub admin_url: Option<String>,
    /// The name of a `--proxy-token-file NAME=FILE` the server was started with.
    pub token: String,
}

/// `GET /api/v1/patches/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusResponse {
    pub id: String,
    pub host: String,
    pub plan: String,
    pub stage: Stage,
    /// `running`, `rolled_back`, `promoted` or `failed`.
    pub outcome: String,
    pub created_at_ms: i64,
    /// The engine action the server waits for, if any.
    pub awaiting: Option<Action>,
    pub abort_requested: bool,
    pub admin_url: String,
    pub report: PatchReport,
}

fn status_of(id: &str, created: i64, st: &DriverState, report: &PatchReport) -> StatusResponse {
    StatusResponse {
        id: id.to_string(),
        host: st.host.clone(),
        plan: report.plan_name.clone(),
        stage: report.stage,
        outcome: report.outcome().to_string(),
        created_at_ms: created,
        awaiting: st.awaiting.as_ref().map(|a| a.action.clone()),
        abort_requested: st.abort.is_some(),
        admin_url: st.admin_url.clone(),
        report: report.clone(),
    }
}

fn check_id(id: &str) -> Result<(), ApiError> {
    let ok = (1..=64).contains(&id.len())
        && id.starts_with(|c: char| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "id: {} is not a patch ID: use 1 to 64 of A-Z, a-z, 0-9, '.', '_' and '-', starting with a letter or digit",
            bellwether_model::text::quote(id)
        )))
    }
}

async fn create(
    State(state): State<AppState>,
    _auth: Operator,
    JsonBody(req): JsonBody<CreatePatch>,
) -> Result<(StatusCode, Json<StatusResponse>), ApiError> {
    let file = req.file.clone().unwrap_or_else(|| "patch.yaml".into());
    let (text, name) = (req.plan_yaml.clone(), file.clone());
    let plan = tokio::task::spawn_blocking(move || PatchPlan::parse(&name, &text))
        .await
        .map_err(internal)?
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let host = bellwether_model::HostName::new(req.host.clone())
        .map_err(|e| ApiError::bad_request(format!("host: {e}")))?;
    if state.store.get_host(&host).await?.is_none() {
        return Err(ApiError::bad_request(format!(
            "host: {host} is not enrolled; its agent runs the instances (start `bellwether agent` there with --state-dir)"
        )));
    }
    if let Some(id) = &req.id {
        check_id(id)?;
    }
    let admin_url = match (&req.proxy.admin_url, &plan.proxy.admin) {
        (Some(u), _) => u.trim_end_matches('/').to_string(),
        (None, Some(a)) => format!("http://{a}"),
        (None, None) => {
            return Err(ApiError::bad_request(format!(
                "{file}: proxy.admin: the server drives the proxy over its admin API; give its address in the plan or proxy.admin_url in the request"
            )))
        }
    };
    let original_pid = plan.original.pid.or(req.original_pid);
    if let Some(pid) = original_pid {
        bellwether_engine::patch::check_pid(pid)
            .map_err(|e| ApiError::bad_request(format!("original_pid: {e}")))?;
    }
    let watches_procs = plan
        .metrics
        .iter()
        .any(|m| matches!(m.metric, MetricKind::Cpu | MetricKind::Rss));
    if watches_procs && original_pid.is_none() {
        return Err(ApiError::bad_request(format!(
            "{file}: original.pidfile is on host {host}, which the server cannot read, and the plan watches cpu or rss: give original_pid (patch start --original-pid) or original.pid"
        )));
    }
    let st = DriverState {
        host: host.to_string(),
        admin_url,
        proxy_token: req.proxy.token.clone(),
        original_pid,
        patched_pid: None,
        next_action_id: 1,
        next_seq: 0,
        awaiting: None,
        sample_action: None,
        abort: None,
        routing: BTreeMap::new(),
        procs: BTreeMap::new(),
        proc_values: BTreeMap::new(),
        events_logged: 0,
    };
    let proxy = proxy_client(&state, &st)?;
    // Both instances must be backends of the proxy: the server moves traffic, never adds one.
    let backends = proxy.backends().await.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            format!("cannot use the proxy's admin API at {}: {e}", st.admin_url),
        )
    })?;
    for n in [&plan.original.name, &plan.patched.name] {
        if !backends.iter().any(|b| &b.name == n) {
            return Err(ApiError::bad_request(format!(
                "{file}: the proxy at {} has no backend `{n}`; configure both instances in it (the patched one with weight 0)",
                st.admin_url
            )));
        }
    }
    let now = now_ms();
    let id = req.id.clone().unwrap_or_else(|| {
        let clean: String = plan
            .name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(40)
            .collect();
        format!("p-{clean}-{now}")
    });
    if state.store.patch(&id).await?.is_some() {
        return Err(ApiError::conflict(format!("patch {id} exists already")));
    }
    let engine =
        PatchEngine::new(&id, plan, now).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let core = Core { engine, st };
    let first = core.record(&Effects::default());
    let new = NewPatch {
        id: id.clone(),
        host: host.to_string(),
        plan_file: file,
        plan_yaml: req.plan_yaml,
    };
    if let Some(other) = state.store.create_patch(&new, &first, now).await? {
        return Err(ApiError::conflict(format!(
            "host {host} is already in running patch {other}; wait for it, or abort it"
        )));
    }
    let mut core = core;
    core.st.events_logged = core.engine.report().events.len();
    tracing::info!(patch = %id, host = %host, "Started a patch.");
    let run = Run {
        state: state.clone(),
        id: id.clone(),
        core,
        proxy,
        proxy_prev: BTreeMap::new(),
    };
    let status = run.status(now);
    spawn(&state, run, now).await;
    Ok((StatusCode::CREATED, Json(status)))
}

async fn load(state: &AppState, id: &str) -> Result<(i64, bool, Persisted), ApiError> {
    let Some(rec) = state.store.patch(id).await? else {
        return Err(ApiError::not_found(format!("unknown patch {id}")));
    };
    let p: Persisted = serde_json::from_value(rec.state)
        .map_err(|e| internal(format!("stored state of patch {id} is not readable: {e}")))?;
    Ok((rec.created_at_ms, rec.settled, p))
}

async fn list(State(state): State<AppState>, _auth: Viewer) -> Result<Json<Vec<Value>>, ApiError> {
    let mut out = Vec::new();
    for rec in state.store.patches(false).await? {
        let r = &rec.state["report"];
        out.push(json!({
            "id": rec.id, "host": rec.host, "plan": r["plan_name"], "stage": rec.stage,
            "outcome": match rec.stage.as_str() {
                "rolled_back" | "promoted" | "failed" => rec.stage.as_str(),
                _ => "running",
            },
            "settled": rec.settled, "last_severity": r["last_severity"],
            "trigger": r["trigger"]["metric"],
            "last_event": r["events"].as_array().and_then(|e| e.last()).map(|e| e["message"].clone()),
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
    let (created, _, p) = load(&state, &id).await?;
    Ok(Json(status_of(&id, created, &p.driver, &p.report)))
}

async fn report(
    State(state): State<AppState>,
    _auth: Viewer,
    Path(id): Path<String>,
) -> Result<Json<PatchReport>, ApiError> {
    let (_, _, p) = load(&state, &id).await?;
    Ok(Json(p.report))
}

/// `POST /api/v1/patches/{id}/abort` (the body is optional).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbortPatch {
    #[serde(default)]
    pub reason: Option<String>,
}

async fn abort(
    State(state): State<AppState>,
    _auth: Operator,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<StatusResponse>, ApiError> {
    let body: AbortPatch = if body.iter().all(u8::is_ascii_whitespace) {
        AbortPatch::default()
    } else {
        crate::body::parse_json(&body)?
    };
    let reason = body.reason.unwrap_or_else(|| "no reason given".into());
    let reason: String = reason.chars().take(200).collect();
    let (_, _, p) = load(&state, &id).await?;
    if p.report.stage.is_final() {
        return Err(ApiError::conflict(format!(
            "patch {id} is {}; abort applies to a running patch",
            stage_name(p.report.stage)
        )));
    }
    let tx = state.patches.running.lock().await.get(&id).cloned();
    let Some(tx) = tx else {
        return Err(ApiError::conflict(format!(
            "patch {id} is not running in this server process"
        )));
    };
    let (reply, answer) = oneshot::channel();
    tx.send(Msg::Abort(reason, reply))
        .map_err(|_| ApiError::conflict(format!("patch {id} has just finished")))?;
    let status = answer
        .await
        .map_err(|_| ApiError::conflict(format!("patch {id} has just finished")))??;
    Ok(Json(status))
}
