//! Patches as durable server tasks ([`crate::task::DurableTask`]): the server steps the pure
//! patch engine (`bellwether_engine::patch`) with samples, ticks, action results and an
//! operator's abort.
//!
//! The engine's actions are carried out two ways. Starting and stopping an instance go to the
//! agent on the database host as the built-ins `start_process` and `stop_process` (durable
//! dispatches, queued with the step under the patch's id and long-polled by the agent like a
//! rollout's); routing, draining and the health wait go to the long-running `bellwether
//! proxy` over its admin API ([`proxy::ProxyClient`]) as the task's *effects*, run by the
//! runner once the step is saved, their results fed back as the engine's `Done`. Samples
//! combine both: per interval the server reads the proxy's per-backend counters and latency
//! histogram (latency p50/p99, throughput and error rate over the interval) and asks the agent
//! for `sample_processes` (CPU as % of one core from the tick deltas of two samples, RSS); a
//! value that is missing or stale is `None`, and the engine never acts on no data. Webhooks
//! are effects too, posted by the server.
//!
//! What is stored with each step ([`DurableTask::persist`]) is the driver's state, the
//! engine's report, and the engine's inputs so far: the engine is pure, so [`PatchTask`] is
//! restored by replaying them. After a restart the runner re-issues
//! [`DurableTask::pending_effects`]: the routing last set on the proxy, then the proxy action
//! the engine waits for (each is idempotent: weights and admin states are set, not toggled, and
//! a drain of a drained backend answers at once); an awaited agent action is re-delivered by
//! the queue until its result arrives (the agent's journal never runs one id twice).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use bellwether_engine::patch::{
    Action, Input as EngineInput, Instance, MetricKind, PatchEngine, PatchPlan, PatchReport,
    Sample, Stage,
};
use bellwether_store::{ActionRecord, NewEvent, NewTask, TaskRecord};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::auth::{Operator, Viewer};
use crate::body::JsonBody;
use crate::error::ApiError;
use crate::task::{self, Dispatch, DurableTask, Input, Step};
use crate::{now_ms, AppState};

pub mod proxy;
use proxy::{BackendPoint, ProxyClient};

/// The task kind, as stored and as it prefixes the events (`patch.rollback.phase1`).
pub const PATCH: &str = "patch";

/// The routes of this module, as (method, path); docs/api.md and docs/openapi.yaml describe
/// each (a test checks).
pub const PATCH_ROUTES: &[(&str, &str)] = &[
    ("POST", "/api/v1/patches"),
    ("GET", "/api/v1/patches"),
    ("GET", "/api/v1/patches/{id}"),
    ("GET", "/api/v1/patches/{id}/report"),
    ("GET", "/api/v1/patches/{id}/connections"),
    ("POST", "/api/v1/patches/{id}/abort"),
];

pub(crate) fn routes() -> axum::Router<AppState> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/api/v1/patches", post(create).get(list))
        .route("/api/v1/patches/{id}", get(status))
        .route("/api/v1/patches/{id}/report", get(report))
        .route("/api/v1/patches/{id}/connections", get(connections))
        .route("/api/v1/patches/{id}/abort", post(abort))
}

/// How long past its own timeout an agent action may stay unreported before the engine is
/// told it failed.
const AGENT_GRACE_MS: i64 = 60_000;
/// The timeout of `stop_process`.
const STOP_TIMEOUT_MS: u64 = 60_000;

/// What patches need beside their tasks: the proxy admin tokens the server may use.
#[derive(Default)]
pub struct Patches {
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
        Patches { proxy_tokens }
    }

    /// The file of the proxy token named `name` (the mirror kind's proxies use them too).
    pub(crate) fn proxy_token_file(&self, name: &str) -> Option<PathBuf> {
        self.proxy_tokens.get(name).cloned()
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
    /// The started instance is being registered with the proxy (weight 0, ready); this is
    /// the `Done` detail to feed once that is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    registering: Option<Value>,
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
pub(crate) struct Routing {
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
    /// The engine's inputs, in order: replayed on restore.
    inputs: Vec<Value>,
}

/// Something the server does on the proxy (or a webhook) after a saved step.
#[derive(Debug, Clone)]
pub(crate) struct Effect {
    admin_url: String,
    proxy_token: String,
    /// Set first, in order (after a restart: what the backends were last set to).
    reapply: Vec<(String, Routing)>,
    what: EffectWhat,
}

#[derive(Debug, Clone, PartialEq)]
enum EffectWhat {
    /// Nothing besides the re-applied routing.
    Nothing,
    /// An engine action carried out on the proxy: `names` are (original, patched).
    Engine {
        action: Action,
        names: (String, String),
    },
    /// Register the started patched instance: weight 0, ready (checked, no traffic).
    Register { name: String },
    /// POST this body to the plan's webhook.
    Webhook { url: String, body: Value },
}

/// An effect's result.
#[derive(Debug, Clone)]
pub(crate) struct EffectDone {
    what: EffectWhat,
    ok: bool,
    detail: Value,
}

/// A patch as a durable task.
#[derive(Clone)]
pub(crate) struct PatchTask {
    id: String,
    engine: PatchEngine,
    st: DriverState,
    inputs: Vec<Value>,
    /// The previous proxy reading per backend, for rates over the interval (not stored: the
    /// first interval after a restart has no data).
    proxy_prev: BTreeMap<String, (i64, BackendPoint)>,
}

/// An operator's command to a patch.
pub(crate) enum Command {
    Abort(String),
}

/// What a tick reads: the proxy's backends, when the stage samples.
pub(crate) struct Observed {
    points: Option<Result<Vec<BackendPoint>, String>>,
}

/// The stage as one word (`rolling_back`, `baking`…), the form stored and listed.
pub fn stage_name(s: Stage) -> String {
    match serde_json::to_value(s) {
        Ok(Value::String(s)) => s,
        Ok(Value::Object(m)) => m.keys().next().cloned().unwrap_or_default(),
        _ => String::new(),
    }
}

fn instance_key(i: Instance) -> &'static str {
    match i {
        Instance::Original => "original",
        Instance::Patched => "patched",
    }
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

impl PatchTask {
    fn plan(&self) -> &PatchPlan {
        self.engine.plan()
    }

    fn name(&self, i: Instance) -> String {
        match i {
            Instance::Original => self.plan().original.name.clone(),
            Instance::Patched => self.plan().patched.name.clone(),
        }
    }

    fn effect(&self, what: EffectWhat) -> Effect {
        Effect {
            admin_url: self.st.admin_url.clone(),
            proxy_token: self.st.proxy_token.clone(),
            reapply: Vec::new(),
            what,
        }
    }

    fn dispatch(&mut self, step: &mut Step<Effect>, spec: Value) -> u64 {
        let id = self.st.next_action_id;
        self.st.next_action_id += 1;
        step.dispatches.push(Dispatch {
            action_id: id,
            host: self.st.host.clone(),
            kind: spec["builtin"].as_str().unwrap_or("patch").to_string(),
            spec,
        });
        id
    }

    /// Feeds one input to the engine, records it, and turns the engine's actions into
    /// dispatches, an awaited action, proxy effects and webhooks.
    fn feed(&mut self, step: &mut Step<Effect>, input: EngineInput, now: i64) {
        self.inputs
            .push(serde_json::to_value(&input).expect("an input serialises"));
        for action in self.engine.step(input) {
            match action {
                Action::Webhook { body } => {
                    if let Some(url) = self.plan().webhook.clone() {
                        step.effects
                            .push(self.effect(EffectWhat::Webhook { url, body }));
                    }
                }
                Action::StartPatched => {
                    let p = &self.plan().patched;
                    let timeout_ms = (self.plan().health.timeout.0.as_millis() as u64)
                        .clamp(bellwether_model::action::MIN_TIMEOUT_MS, 3_600_000);
                    let mut spec = json!({"builtin": "start_process", "argv": p.start, "timeout_ms": timeout_ms});
                    if let Some(f) = &p.pidfile {
                        spec["pidfile"] = json!(f);
                    }
                    let id = self.dispatch(step, spec);
                    self.st.awaiting = Some(Awaiting {
                        action: Action::StartPatched,
                        agent_action: Some(id),
                        since_ms: now,
                        timeout_ms,
                        registering: None,
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
                    let id = self.dispatch(step, spec);
                    self.st.awaiting = Some(Awaiting {
                        action: Action::Stop { instance },
                        agent_action: Some(id),
                        since_ms: now,
                        timeout_ms: STOP_TIMEOUT_MS,
                        registering: None,
                    });
                }
                other => {
                    let timeout_ms = match &other {
                        Action::WaitPatchedHealthy { timeout_ms }
                        | Action::Drain { timeout_ms, .. } => *timeout_ms,
                        _ => 0,
                    };
                    let names = (self.name(Instance::Original), self.name(Instance::Patched));
                    step.effects.push(self.effect(EffectWhat::Engine {
                        action: other.clone(),
                        names,
                    }));
                    self.st.awaiting = Some(Awaiting {
                        action: other,
                        agent_action: None,
                        since_ms: now,
                        timeout_ms,
                        registering: None,
                    });
                }
            }
        }
    }

    /// Moves the report's new events into the step (the event log).
    fn log_events(&mut self, step: &mut Step<Effect>) {
        let report = self.engine.report();
        let from = self.st.events_logged.min(report.events.len());
        step.events
            .extend(report.events[from..].iter().map(|e| NewEvent {
                ts_ms: e.at_ms,
                kind: e.kind.clone(),
                host: Some(self.st.host.clone()),
                reason: e.message.clone(),
                figures: e.figures.clone(),
            }));
        self.st.events_logged = report.events.len();
    }

    fn watches(&self, kinds: &[MetricKind]) -> bool {
        self.plan()
            .metrics
            .iter()
            .any(|m| kinds.contains(&m.metric))
    }

    /// One sampling interval: the proxy's counters, the last process sample, a tick, a new
    /// process sample asked for, a pending abort delivered, an overdue agent action failed.
    fn on_tick(&mut self, step: &mut Step<Effect>, observed: Observed, now: i64) {
        let stage = self.engine.stage();
        if let Some(points) = observed.points {
            let points = points.unwrap_or_else(|e| {
                tracing::warn!(patch = %self.id, error = %e, "Cannot read the proxy's counters; this interval has no proxy data.");
                Vec::new()
            });
            let mut wanted = vec![Instance::Original];
            if stage == Stage::Baking {
                wanted.push(Instance::Patched);
            }
            let interval_ms = self.plan().sample_interval.0.as_millis() as i64;
            for i in wanted {
                let name = self.name(i);
                let mut values = BTreeMap::new();
                let point = points.iter().find(|p| p.name == name);
                proxy_values(self.proxy_prev.get(&name), point, now, &mut values);
                match point {
                    Some(p) => {
                        self.proxy_prev.insert(name, (now, p.clone()));
                    }
                    None => {
                        self.proxy_prev.remove(&name);
                    }
                }
                let pv = self
                    .st
                    .proc_values
                    .get(instance_key(i))
                    .filter(|v| now - v.at_ms <= 3 * interval_ms);
                values.insert(MetricKind::Cpu, pv.and_then(|v| v.cpu));
                values.insert(MetricKind::Rss, pv.and_then(|v| v.rss));
                self.feed(
                    step,
                    EngineInput::Sample(Sample {
                        at_ms: now,
                        instance: i,
                        values,
                    }),
                    now,
                );
            }
        }
        if self.engine.stage() == Stage::Baseline {
            self.feed(step, EngineInput::Tick { at_ms: now }, now);
        }
        let overdue = self.st.awaiting.as_ref().is_some_and(|w| {
            w.agent_action.is_some() && now - w.since_ms > w.timeout_ms as i64 + AGENT_GRACE_MS
        });
        if overdue {
            self.st.awaiting = None;
            let detail = json!({"error": format!("the agent on {} did not report the action in time", self.st.host)});
            self.feed(
                step,
                EngineInput::Done {
                    at_ms: now,
                    ok: false,
                    detail,
                },
                now,
            );
        }
        self.deliver_abort(step, now);
        let stage = self.engine.stage();
        if self.watches(&[MetricKind::Cpu, MetricKind::Rss])
            && matches!(stage, Stage::Baseline | Stage::Baking)
            && self.st.sample_action.is_none()
        {
            let pids: Vec<u32> = [self.st.original_pid, self.st.patched_pid]
                .into_iter()
                .flatten()
                .collect();
            if !pids.is_empty() {
                let id = self.dispatch(step, json!({"builtin": "sample_processes", "pids": pids}));
                self.st.sample_action = Some(id);
            }
        }
    }

    /// Delivers a pending abort when the engine can take it (nothing awaited, in the baseline
    /// or baking); drops it once the patch is final.
    fn deliver_abort(&mut self, step: &mut Step<Effect>, now: i64) {
        let Some(reason) = self.st.abort.clone() else {
            return;
        };
        let stage = self.engine.stage();
        if stage.is_final() {
            self.st.abort = None;
        } else if self.st.awaiting.is_none() && matches!(stage, Stage::Baseline | Stage::Baking) {
            self.st.abort = None;
            self.feed(step, EngineInput::Abort { at_ms: now, reason }, now);
        }
    }

    /// An agent's result: a process sample, or the awaited start or stop.
    fn on_result(&mut self, step: &mut Step<Effect>, a: &ActionRecord, now: i64) {
        // The one wire type reads both the typed outcome and the older flat form.
        let result = a
            .result
            .as_ref()
            .map(|v| {
                bellwether_model::wire::ActionResult::deserialize(v).map_err(|e| e.to_string())
            })
            .unwrap_or_else(|| Err("no result was stored".to_owned()));
        let output = result
            .as_ref()
            .ok()
            .and_then(|r| r.output.clone())
            .unwrap_or(Value::Null);
        let ok = result.as_ref().is_ok_and(|r| r.is_ok());
        if self.st.sample_action == Some(a.action_id) {
            self.st.sample_action = None;
            if ok {
                let interval_ms = self.plan().sample_interval.0.as_millis() as i64;
                let (op, pp) = (self.st.original_pid, self.st.patched_pid);
                absorb_sample(&mut self.st, &output, op, pp, interval_ms);
            }
            return;
        }
        let awaited = self
            .st
            .awaiting
            .as_ref()
            .filter(|w| w.agent_action == Some(a.action_id) && w.registering.is_none())
            .cloned();
        // A result nobody waits for any more (a sample from before a restart, an action that
        // timed out) is consumed, not fed.
        let Some(w) = awaited else { return };
        let mut detail = match &output {
            Value::Object(_) => output.clone(),
            _ => json!({}),
        };
        if !ok {
            match &result {
                Ok(r) => {
                    detail["error"] = json!(r.error_text());
                    detail["stderr_tail"] = json!(r.stderr_tail);
                }
                Err(e) => {
                    detail["error"] = json!(format!("the stored result could not be read: {e}"))
                }
            }
        }
        if ok && w.action == Action::StartPatched {
            match output["pid"].as_u64().and_then(|p| u32::try_from(p).ok()) {
                Some(pid) => {
                    // Registered with the proxy (checked, without traffic) before the engine
                    // hears that the instance started.
                    self.st.patched_pid = Some(pid);
                    detail["argv"] = json!(self.plan().patched.start);
                    let name = self.name(Instance::Patched);
                    step.effects
                        .push(self.effect(EffectWhat::Register { name }));
                    if let Some(w) = self.st.awaiting.as_mut() {
                        w.agent_action = None;
                        w.registering = Some(detail);
                    }
                    return;
                }
                None => {
                    self.st.awaiting = None;
                    let detail = json!({"error": "the agent's result names no pid"});
                    self.feed(
                        step,
                        EngineInput::Done {
                            at_ms: now,
                            ok: false,
                            detail,
                        },
                        now,
                    );
                    return;
                }
            }
        }
        self.st.awaiting = None;
        self.feed(
            step,
            EngineInput::Done {
                at_ms: now,
                ok,
                detail,
            },
            now,
        );
    }

    /// A proxy effect finished: the awaited engine action's `Done`.
    fn on_effect(&mut self, step: &mut Step<Effect>, done: EffectDone, now: i64) {
        match done.what {
            EffectWhat::Nothing | EffectWhat::Webhook { .. } => {}
            EffectWhat::Register { name } => {
                let Some(w) = self.st.awaiting.clone() else {
                    return;
                };
                let Some(mut detail) = w.registering else {
                    return;
                };
                self.st.awaiting = None;
                if done.ok {
                    self.st.routing.insert(
                        name,
                        Routing {
                            weight: Some(0),
                            admin: Some("ready".into()),
                        },
                    );
                } else {
                    detail["error"] = json!(format!(
                        "started, but the proxy: {}",
                        done.detail["error"].as_str().unwrap_or("")
                    ));
                }
                self.feed(
                    step,
                    EngineInput::Done {
                        at_ms: now,
                        ok: done.ok,
                        detail,
                    },
                    now,
                );
            }
            EffectWhat::Engine { action, .. } => {
                let awaited = self
                    .st
                    .awaiting
                    .as_ref()
                    .is_some_and(|w| w.agent_action.is_none() && w.action == action);
                if !awaited {
                    return;
                }
                self.st.awaiting = None;
                for (name, r) in self.routing_after(&action) {
                    self.st.routing.insert(name, r);
                }
                self.feed(
                    step,
                    EngineInput::Done {
                        at_ms: now,
                        ok: done.ok,
                        detail: done.detail,
                    },
                    now,
                );
            }
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
                    .st
                    .routing
                    .get(&self.name(i))
                    .and_then(|r| r.admin.as_deref()));
                (self.name(i), set(Some(w), admin))
            })
            .collect(),
            Action::Drain { instance, .. } => {
                let w = self
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

    fn status_response(&self, created: i64) -> StatusResponse {
        status_of(&self.id, created, &self.st, self.engine.report())
    }
}

impl DurableTask for PatchTask {
    const KIND: &'static str = PATCH;
    type Command = Command;
    type Status = StatusResponse;
    type Observed = Observed;
    type Effect = Effect;
    type EffectDone = EffectDone;

    async fn restore(_state: AppState, rec: TaskRecord) -> Result<Self, ApiError> {
        let p: Persisted = serde_json::from_value(rec.state).map_err(|e| {
            internal(format!(
                "stored state of patch {} is not readable: {e}",
                rec.id
            ))
        })?;
        let plan = PatchPlan::parse(&rec.plan_file, &rec.plan_yaml)
            .map_err(|e| internal(format!("stored plan of patch {}: {e}", rec.id)))?;
        let mut engine = PatchEngine::new(&rec.id, plan, p.report.started_ms)
            .map_err(|e| internal(format!("stored plan of patch {}: {e}", rec.id)))?;
        // The engine is pure: its stored inputs bring it back to where it was. The actions
        // it returns now were carried out (or are awaited) when first taken.
        for (seq, input) in p.inputs.iter().enumerate() {
            let input: EngineInput = serde_json::from_value(input.clone()).map_err(|e| {
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
        Ok(PatchTask {
            id: rec.id,
            engine,
            st: p.driver,
            inputs: p.inputs,
            proxy_prev: BTreeMap::new(),
        })
    }

    fn id(&self) -> &str {
        &self.id
    }

    fn phase(&self) -> String {
        stage_name(self.engine.stage())
    }

    fn is_settled(&self) -> bool {
        self.engine.stage().is_final() && self.st.awaiting.is_none()
    }

    fn persist(&self) -> Value {
        json!({
            "driver": self.st,
            "report": self.engine.report(),
            "inputs": self.inputs,
        })
    }

    fn tick_every(&self) -> Duration {
        self.plan().sample_interval.0
    }

    async fn observe(&self, state: &AppState) -> Result<Observed, ApiError> {
        if !matches!(self.engine.stage(), Stage::Baseline | Stage::Baking) {
            return Ok(Observed { points: None });
        }
        let points = match proxy_client(state, &self.st.admin_url, &self.st.proxy_token) {
            Ok(c) => c.backends().await,
            Err(e) => Err(e.message),
        };
        Ok(Observed {
            points: Some(points),
        })
    }

    fn step(&mut self, input: Input<Self>, now: i64) -> Step<Effect> {
        let mut step = Step::default();
        match input {
            Input::Tick(observed) => self.on_tick(&mut step, observed, now),
            Input::Result(a) => self.on_result(&mut step, &a, now),
            Input::Effect(done) => self.on_effect(&mut step, done, now),
            Input::Command(Command::Abort(reason)) => {
                step.events.push(NewEvent {
                    ts_ms: now,
                    kind: "abort.requested".into(),
                    host: Some(self.st.host.clone()),
                    reason: format!("An operator asked to abort: {reason}"),
                    figures: json!({ "reason": reason }),
                });
                if !self.engine.stage().is_final() {
                    self.st.abort = Some(reason);
                }
                self.deliver_abort(&mut step, now);
            }
            Input::Hold { reason } => step.events.push(NewEvent {
                ts_ms: now,
                kind: "held".into(),
                host: Some(self.st.host.clone()),
                reason: format!("The patch was held: {reason}; it goes on now."),
                figures: json!({ "reason": reason }),
            }),
        }
        self.log_events(&mut step);
        step
    }

    fn status(&self) -> StatusResponse {
        self.status_response(0)
    }

    fn pending_effects(&self) -> Vec<Effect> {
        // The routing last set first (the proxy may have restarted too), then the awaited
        // proxy action, in one effect so they run in this order.
        let what = match &self.st.awaiting {
            Some(w) if w.registering.is_some() => EffectWhat::Register {
                name: self.name(Instance::Patched),
            },
            Some(w) if w.agent_action.is_none() => EffectWhat::Engine {
                action: w.action.clone(),
                names: (self.name(Instance::Original), self.name(Instance::Patched)),
            },
            _ => EffectWhat::Nothing,
        };
        let mut e = self.effect(what);
        e.reapply = self
            .st
            .routing
            .iter()
            .map(|(n, r)| (n.clone(), r.clone()))
            .collect();
        vec![e]
    }

    async fn run_effect(state: AppState, effect: Effect) -> EffectDone {
        let what = effect.what.clone();
        if let EffectWhat::Webhook { url, body } = &effect.what {
            post_webhook(url.clone(), body.clone()).await;
            return EffectDone {
                what,
                ok: true,
                detail: json!({}),
            };
        }
        let proxy = match proxy_client(&state, &effect.admin_url, &effect.proxy_token) {
            Ok(p) => p,
            Err(e) => {
                return EffectDone {
                    what,
                    ok: false,
                    detail: json!({ "error": e.message }),
                }
            }
        };
        for (name, r) in &effect.reapply {
            if let Err(e) = proxy.set(name, r.weight, r.admin.as_deref()).await {
                tracing::warn!(backend = %name, error = %e, "Could not re-apply the proxy's routing.");
            }
        }
        let r = match &effect.what {
            EffectWhat::Nothing | EffectWhat::Webhook { .. } => Ok(json!({})),
            EffectWhat::Register { name } => proxy.set(name, Some(0), Some("ready")).await,
            EffectWhat::Engine { action, names } => execute(&proxy, action, names).await,
        };
        match r {
            Ok(detail) => EffectDone {
                what,
                ok: true,
                detail,
            },
            Err(e) => {
                tracing::warn!(effect = ?what, error = %e, "Patch proxy action failed.");
                EffectDone {
                    what,
                    ok: false,
                    detail: json!({ "error": e }),
                }
            }
        }
    }
}

/// Carries out one engine action on the proxy; the `Done` detail, or the error.
async fn execute(
    proxy: &ProxyClient,
    action: &Action,
    (original, patched): &(String, String),
) -> Result<Value, String> {
    let name = |i: Instance| match i {
        Instance::Original => original.clone(),
        Instance::Patched => patched.clone(),
    };
    match action {
        Action::WaitPatchedHealthy { timeout_ms } => {
            let deadline = tokio::time::Instant::now() + Duration::from_millis(*timeout_ms);
            let mut last = String::from("no check passed");
            loop {
                match proxy.backend(patched).await {
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
        Action::Route {
            original: wo,
            patched: wp,
        } => {
            for (i, w) in [(Instance::Original, *wo), (Instance::Patched, *wp)] {
                let admin = (w > 0).then_some("ready");
                proxy.set(&name(i), Some(w), admin).await?;
            }
            Ok(json!({ "original_weight": wo, "patched_weight": wp }))
        }
        Action::Drain {
            instance,
            timeout_ms,
        } => {
            let n = name(*instance);
            let mut v = proxy.drain(&n, *timeout_ms).await?;
            if let Ok(b) = proxy.backend(&n).await {
                v["graceful_closes_total"] = json!(b.metrics.graceful_closes);
            }
            Ok(v)
        }
        Action::ServeOnly { instance } => {
            let keep = name(*instance);
            let other = match instance {
                Instance::Original => name(Instance::Patched),
                Instance::Patched => name(Instance::Original),
            };
            proxy.set(&keep, Some(100), Some("ready")).await?;
            proxy.set(&other, Some(0), Some("maintenance")).await?;
            Ok(json!({ "serving": keep, "out_of_rotation": other }))
        }
        // Carried out by the agent or as a webhook effect; never a proxy action.
        Action::StartPatched | Action::Stop { .. } | Action::Webhook { .. } => Ok(json!({})),
    }
}

fn proxy_client(state: &AppState, admin_url: &str, token: &str) -> Result<ProxyClient, ApiError> {
    let Some(file) = state.patches.proxy_tokens.get(token) else {
        return Err(ApiError::bad_request(format!(
            "no proxy token named {token:?}: start the server with --proxy-token-file {token}=FILE"
        )));
    };
    ProxyClient::new(admin_url, file.clone()).map_err(ApiError::bad_request)
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
        awaiting: None,
        sample_action: None,
        abort: None,
        routing: BTreeMap::new(),
        procs: BTreeMap::new(),
        proc_values: BTreeMap::new(),
        events_logged: 0,
    };
    let proxy = proxy_client(&state, &st.admin_url, &st.proxy_token)?;
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
    if state.store.task(&id).await?.is_some() {
        return Err(ApiError::conflict(format!("a task {id} exists already")));
    }
    let engine =
        PatchEngine::new(&id, plan, now).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let mut t = PatchTask {
        id: id.clone(),
        engine,
        st,
        inputs: Vec::new(),
        proxy_prev: BTreeMap::new(),
    };
    let mut first = Step::default();
    t.log_events(&mut first);
    let status = t.status_response(now);
    let new = NewTask {
        id: id.clone(),
        kind: PATCH.into(),
        model_version: None,
        plan_file: file,
        plan_yaml: req.plan_yaml,
        hosts: vec![(host.to_string(), BTreeMap::new())],
    };
    if let Some(busy) = task::create(&state, &new, t, first).await? {
        return Err(ApiError::conflict(format!(
            "host {host} is already in running {} {}; wait for it, or abort it",
            busy.kind, busy.task
        )));
    }
    tracing::info!(patch = %id, host = %host, "Started a patch.");
    Ok((StatusCode::CREATED, Json(status)))
}

async fn load(state: &AppState, id: &str) -> Result<(i64, Persisted), ApiError> {
    let rec = state.store.task(id).await?.filter(|r| r.kind == PATCH);
    let Some(rec) = rec else {
        return Err(ApiError::not_found(format!("unknown patch {id}")));
    };
    let p: Persisted = serde_json::from_value(rec.state)
        .map_err(|e| internal(format!("stored state of patch {id} is not readable: {e}")))?;
    Ok((rec.created_at_ms, p))
}

async fn list(State(state): State<AppState>, _auth: Viewer) -> Result<Json<Vec<Value>>, ApiError> {
    let mut out = Vec::new();
    for rec in state.store.tasks(Some(PATCH), false).await? {
        let r = &rec.state["report"];
        out.push(json!({
            "id": rec.id, "host": rec.state["driver"]["host"], "plan": r["plan_name"], "stage": rec.phase,
            "outcome": match rec.phase.as_str() {
                "rolled_back" | "promoted" | "failed" => rec.phase.as_str(),
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
    let (created, p) = load(&state, &id).await?;
    Ok(Json(status_of(&id, created, &p.driver, &p.report)))
}

async fn report(
    State(state): State<AppState>,
    _auth: Viewer,
    Path(id): Path<String>,
) -> Result<Json<PatchReport>, ApiError> {
    let (_, p) = load(&state, &id).await?;
    Ok(Json(p.report))
}

/// `GET /api/v1/patches/{id}/connections`: what the patch's proxy holds now, read from its
/// admin API with the token the server keeps (a viewer never sees the token, and the server
/// only ever calls the proxy a stored patch names): `{"patch", "admin_url", "backends",
/// "connections"}`, both lists as the proxy answers `GET /backends` and `GET /connections`.
/// 502 when the proxy cannot be reached or refuses the token.
async fn connections(
    State(state): State<AppState>,
    _auth: Viewer,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (_, p) = load(&state, &id).await?;
    let proxy = proxy_client(&state, &p.driver.admin_url, &p.driver.proxy_token)?;
    let bad_gateway =
        |e: String| ApiError::new(StatusCode::BAD_GATEWAY, format!("patch {id}: {e}"));
    let backends = proxy.backends_raw().await.map_err(bad_gateway)?;
    let connections = proxy.connections().await.map_err(bad_gateway)?;
    Ok(Json(json!({
        "patch": id, "admin_url": p.driver.admin_url,
        "backends": backends, "connections": connections,
    })))
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
    let (_, p) = load(&state, &id).await?;
    if p.report.stage.is_final() {
        return Err(ApiError::conflict(format!(
            "patch {id} is {}; abort applies to a running patch",
            stage_name(p.report.stage)
        )));
    }
    let (created, _) = load(&state, &id).await?;
    let mut status = state
        .tasks
        .command::<PatchTask>(&id, Command::Abort(reason))
        .await?;
    status.created_at_ms = created;
    Ok(Json(status))
}
