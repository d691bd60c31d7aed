//! The rollout runner: one task per rollout drives the pure engine
//! (`bellwether_engine::rollout`) with action results, watch verdicts, ticks and operator
//! commands, and persists every step before anything leaves the server.
//!
//! Each engine step is taken on a copy of the state ([`durable::commit`], the one rule for every
//! engine the server drives): the copy (engine and watcher snapshots), the step's events, its
//! dispatches (queued as agent actions) and its outcomes are stored in one transaction
//! ([`bellwether_store::Store::save_rollout_step`]), and only once that commits does the copy
//! become the runner's state and are agents woken. A save that fails is retried with backoff;
//! one that keeps failing leaves the state as it was and *holds* the runner: it takes no step
//! but one, an [`Observation::Hold`] that pauses the rollout with a critical alert, which it
//! tries to save every interval until the store takes writes again. The rollout then stays
//! paused until an operator resumes it (a store that filled up once deserves a look first).
//!
//! A runner ends when its rollout is settled ([`Rollout::is_settled`]): final AND every
//! dispatched action reported or timed out. An aborted rollout's reverts report after the
//! phase turned final, and are still fed to the engine. An action
//! result is stored by the agent API first and fed to the engine afterwards, marked observed
//! in the same transaction as the step it caused. So a server killed at any point restarts
//! from the store ([`resume_all`]) with every dispatched action queued exactly once and every
//! consumed result consumed once: no host is applied twice and none is lost.
//!
//! The watch is the engine's pure [`HostWatcher`]: the runner feeds it each host's stored
//! samples and drift every analysis interval, asks it for a verdict on every applied host
//! (with the not-updated hosts as controls), and hands the verdicts to the engine.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use bellwether_engine::rollout::plan::{parse_plan, Plan};
use bellwether_engine::rollout::watch::{HostWatcher, WatcherSnapshot};
use bellwether_engine::rollout::{
    ActionResult, Decision, HostInput, HostState, Observation, OperatorCommand, Rollout,
    RolloutReport, RolloutStatus,
};
use bellwether_model::wire::{ActionOutcome, ActionResult as AgentResult};
use bellwether_model::{HostName, HostProfile};
use bellwether_store::{
    ActionFinish, NewAction, NewEvent, NewOutcome, NewRollout, OutcomeSource, StepRecord,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, Mutex, Notify};

use crate::auth::{Agent, Operator, Viewer};
use crate::body::JsonBody;
use crate::error::ApiError;
use crate::model_api::{self, UpdateInfo};
use crate::{now_ms, AppState};

mod durable;
use durable::SavePolicy;

/// The routes of this module, as (method, path); docs/api.md and docs/openapi.yaml describe
/// each (a test checks).
pub const ROLLOUT_ROUTES: &[(&str, &str)] = &[
    ("POST", "/api/v1/rollouts"),
    ("GET", "/api/v1/rollouts"),
    ("GET", "/api/v1/rollouts/{id}"),
    ("GET", "/api/v1/rollouts/{id}/report"),
    ("POST", "/api/v1/rollouts/{id}/{command}"),
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
        .route("/api/v1/agent/actions", get(agent_actions))
        .route("/api/v1/agent/actions/{id}/result", post(agent_result))
}

/// The longest an agent's long-poll waits.
const MAX_WAIT_MS: u64 = 30_000;

/// How far back samples seed a host's pre-change baseline when a rollout starts.
const BASELINE_LOOKBACK_MS: i64 = 5 * 60 * 1000;

/// The top factors kept per host.
const FACTORS: usize = 5;

enum Msg {
    Operator(
        OperatorCommand,
        oneshot::Sender<Result<RolloutStatus, ApiError>>,
    ),
    /// A result was stored for one of this rollout's actions.
    Result,
}

/// The running rollouts of this process and the agents' wake-up bell.
#[derive(Debug, Default)]
pub struct Runners {
    running: Mutex<HashMap<String, mpsc::UnboundedSender<Msg>>>,
    /// Rung after dispatches are stored, so long-polling agents look again.
    actions: Notify,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Msg::Operator(..) => "Operator",
            Msg::Result => "Result",
        })
    }
}

/// What is stored as a rollout's state: the engine and each host's watcher snapshot.
#[derive(Serialize, Deserialize)]
struct Persisted {
    engine: Rollout,
    watchers: BTreeMap<HostName, WatcherSnapshot>,
}

struct Run {
    state: AppState,
    rollout: Rollout,
    /// Set while the store refuses the runner's saves: the error of the last failed save.
    held: Option<String>,
    save_policy: SavePolicy,
    plan: Plan,
    watchers: BTreeMap<HostName, HostWatcher>,
    /// The newest sample timestamp fed per host.
    fed_until: BTreeMap<HostName, i64>,
    features: BTreeMap<String, BTreeMap<String, Value>>,
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

/// What a step stores: the engine state `rollout`, the watchers' snapshots (`changed`, saved
/// with this step, taking the place of its host's current watcher), and the step's effects.
fn step_record(
    rollout: &Rollout,
    watchers: &BTreeMap<HostName, HostWatcher>,
    changed: Option<&(HostName, HostWatcher)>,
    host_features: &BTreeMap<String, BTreeMap<String, Value>>,
    decisions: &[Decision],
    observed_action: Option<i64>,
) -> StepRecord {
    let mut snapshots: BTreeMap<HostName, WatcherSnapshot> = watchers
        .iter()
        .map(|(h, w)| (h.clone(), w.snapshot()))
        .collect();
    if let Some((h, w)) = changed {
        snapshots.insert(h.clone(), w.snapshot());
    }
    let mut step = StepRecord {
        phase: rollout.phase.name().to_string(),
        settled: rollout.is_settled(),
        state: serde_json::to_value(Persisted {
            engine: rollout.clone(),
            watchers: snapshots,
        })
        .expect("the rollout state serialises"),
        observed_action,
        ..StepRecord::default()
    };
    for d in decisions {
        match d {
            Decision::Dispatch {
                action_id,
                host,
                kind,
                spec,
            } => step.dispatches.push(NewAction {
                action_id: *action_id,
                uid: new_action_uid(),
                host: host.to_string(),
                kind: kind.name().to_string(),
                spec: serde_json::to_value(spec).expect("an action spec serialises"),
            }),
            Decision::Event(e) => step.events.push(NewEvent {
                ts_ms: e.ts_ms,
                kind: e.kind.clone(),
                host: e.host.as_ref().map(|h| h.to_string()),
                reason: e.reason.clone(),
                figures: e.figures.clone(),
            }),
            Decision::Alert {
                severity,
                message,
                figures,
            } => step.events.push(NewEvent {
                ts_ms: rollout.now_ms,
                kind: "alert".into(),
                host: None,
                reason: message.clone(),
                figures: json!({"severity": severity, "figures": figures}),
            }),
            Decision::Outcome {
                host,
                failed,
                features,
            } => {
                let mut f = host_features
                    .get(host.as_str())
                    .cloned()
                    .unwrap_or_default();
                // The engine's own figures (wave, predicted probability…) are kept but start
                // with `_`, so training skips them: they are not known before a deployment.
                for (k, v) in features {
                    f.insert(format!("_{k}"), v.clone());
                }
                step.outcomes.push(NewOutcome {
                    source: OutcomeSource::Rollout,
                    deployment: rollout.id.clone(),
                    host: host.to_string(),
                    features: f,
                    failed: *failed,
                });
            }
        }
    }
    step
}

impl Run {
    /// Steps a copy of the engine with `observe`, saves it (with `changed`, a watcher that
    /// changed with this step), and keeps both only once the save committed; then wakes the
    /// agents and maybe retrains. A save that keeps failing holds the runner.
    async fn commit(
        &mut self,
        observe: impl FnOnce(&mut Rollout) -> Vec<Decision>,
        changed: Option<(HostName, HostWatcher)>,
        observed_action: Option<i64>,
    ) -> Result<(), ApiError> {
        let Run {
            state,
            rollout,
            watchers,
            features,
            save_policy,
            ..
        } = self;
        let id = rollout.id.clone();
        let store = state.store.clone();
        let saved = durable::commit(
            rollout,
            *save_policy,
            observe,
            |r, d| step_record(r, watchers, changed.as_ref(), features, d, observed_action),
            |rec: StepRecord| {
                let (store, id) = (store.clone(), id.clone());
                async move {
                    let saved = store.save_rollout_step(&id, &rec, now_ms()).await;
                    (rec, saved)
                }
            },
        )
        .await;
        match saved {
            Ok((_, step)) => {
                if let Some((h, w)) = changed {
                    self.watchers.insert(h, w);
                }
                if !step.dispatches.is_empty() {
                    self.state.rollouts.actions.notify_waiters();
                }
                if !step.outcomes.is_empty() {
                    model_api::maybe_retrain(&self.state).await?;
                }
                Ok(())
            }
            Err(unsaved) => {
                let error = unsaved.error.to_string();
                tracing::error!(rollout = %id, attempts = unsaved.attempts, error = %error, "Rollout held: the store did not save its step; it will pause with an alert once the store takes writes again.");
                self.held = Some(error.clone());
                Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("rollout {id} is held: the store could not save its step ({error}); it pauses with an alert once the store takes writes again"),
                ))
            }
        }
    }

    /// While held: try to store the hold (a pause with a critical alert). Once it commits the
    /// runner takes steps again, the rollout paused until an operator resumes it.
    async fn hold(&mut self) -> Result<(), ApiError> {
        let Some(error) = self.held.clone() else {
            return Ok(());
        };
        let reason = format!("the store could not save a step ({error})");
        let now = now_ms();
        // One attempt per interval: the runner is already held.
        let once = SavePolicy {
            attempts: 1,
            ..self.save_policy
        };
        let policy = std::mem::replace(&mut self.save_policy, once);
        let r = self
            .commit(
                |r| {
                    r.step(Observation::Hold {
                        reason,
                        now_ms: now,
                    })
                },
                None,
                None,
            )
            .await;
        self.save_policy = policy;
        if r.is_ok() {
            self.held = None;
            tracing::warn!(rollout = %self.rollout.id, phase = self.rollout.phase.name(), "The store takes writes again; the rollout is paused with an alert until an operator resumes it.");
            self.feed_results().await?;
        }
        r
    }

    /// Feeds every stored result the engine has not seen yet.
    async fn feed_results(&mut self) -> Result<(), ApiError> {
        for a in self
            .state
            .store
            .unobserved_results(&self.rollout.id)
            .await?
        {
            // The one wire type reads both the typed outcome and the older flat form.
            let report: Result<AgentResult, String> = match &a.result {
                Some(v) => AgentResult::deserialize(v).map_err(|e| e.to_string()),
                None => Err("no result was stored".to_owned()),
            };
            let ok = report.as_ref().is_ok_and(AgentResult::is_ok);
            let result = match &report {
                Ok(r) => match &r.outcome {
                    ActionOutcome::Ok => ActionResult::Ok,
                    ActionOutcome::TimedOut { .. } => ActionResult::TimedOut,
                    ActionOutcome::Failed { error, .. } => ActionResult::Failed {
                        error: error.clone(),
                    },
                    ActionOutcome::Refused { reason } => ActionResult::Failed {
                        error: reason.clone(),
                    },
                },
                Err(e) => ActionResult::Failed {
                    error: format!("the stored result of the action could not be read: {e}"),
                },
            };
            let finished = report
                .as_ref()
                .map(|r| r.finished_ms)
                .ok()
                .or(a.finished_at_ms)
                .unwrap_or_else(now_ms);
            // The watcher changes on a copy, saved with the step.
            let mut changed = None;
            if ok && (a.kind == "apply" || a.kind == "remediate") {
                if let Ok(host) = HostName::new(a.host.clone()) {
                    if let Some(w) = self.watchers.get(&host) {
                        let mut w = w.clone();
                        if a.kind == "apply" {
                            w.mark_applied(finished);
                        } else if let Err(e) = w.restart(finished) {
                            // The baselines were valid when frozen; a failure here is a bug.
                            tracing::error!(host = %host, error = %e, "could not restart the watch after a remediation");
                        }
                        changed = Some((host, w));
                    }
                }
            }
            let obs = Observation::ActionFinished {
                action_id: a.action_id,
                result,
                now_ms: now_ms(),
            };
            self.commit(|r| r.step(obs), changed, Some(a.id)).await?;
        }
        Ok(())
    }

    /// One analysis interval: new samples and drift into the watchers, a verdict for every
    /// updated host, then a tick.
    async fn tick(&mut self) -> Result<(), ApiError> {
        let hosts: Vec<HostName> = self.rollout.hosts.keys().cloned().collect();
        for h in &hosts {
            let after = self
                .fed_until
                .get(h)
                .copied()
                .unwrap_or(now_ms() - BASELINE_LOOKBACK_MS);
            let samples = self
                .state
                .store
                .samples_since(h.as_str(), after, 100_000)
                .await?;
            if let Some(w) = self.watchers.get_mut(h) {
                for s in &samples {
                    // Metrics the plan does not analyse are not the watcher's business.
                    let _ = w.observe(s.ts_ms, &s.name, s.value);
                }
                if let Some(d) = self.state.store.drift(h).await? {
                    w.observe_drift(now_ms(), d.score.overall.get());
                }
            }
            if let Some(last) = samples.last() {
                self.fed_until.insert(h.clone(), last.ts_ms);
            }
        }
        let now = now_ms();
        let watched: Vec<HostName> = self
            .rollout
            .hosts
            .values()
            .filter(|r| r.applied && matches!(r.state, HostState::Baking | HostState::Updated))
            .map(|r| r.name.clone())
            .collect();
        // One interval's verdicts and tick are stored as one step: nothing is dispatched
        // before the store has it, so batching them loses no crash safety.
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
            let data_ms = w.last_sample_ms();
            verdicts.push(Observation::HostWatch {
                host: h,
                verdict,
                now_ms: now,
                // No sample yet: the engine must not take "now" for the data's time.
                data_ms: Some(data_ms.unwrap_or(i64::MIN)),
            });
        }
        self.commit(
            |r| {
                let mut decisions = Vec::new();
                for v in verdicts {
                    decisions.extend(r.step(v));
                }
                decisions.extend(r.step(Observation::Tick { now_ms: now }));
                decisions
            },
            None,
            None,
        )
        .await
    }
}

async fn drive(mut run: Run, mut rx: mpsc::UnboundedReceiver<Msg>) {
    let id = run.rollout.id.clone();
    let interval = Duration::from_millis(run.plan.analysis.interval_ms().max(100) as u64);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    if let Err(e) = run.feed_results().await {
        tracing::error!(rollout = %id, error = %e, "Could not feed stored action results.");
    }
    // Not when the phase turns final: an aborted rollout's reverts report after that.
    while !run.rollout.is_settled() {
        let r = tokio::select! {
            _ = ticker.tick() => if run.held.is_some() { run.hold().await } else { run.tick().await },
            msg = rx.recv() => match msg {
                None => break,
                // While held, results wait in the store (unobserved) for the hold to end.
                Some(Msg::Result) if run.held.is_some() => Ok(()),
                Some(Msg::Result) => run.feed_results().await,
                Some(Msg::Operator(_, reply)) if run.held.is_some() => {
                    let _ = reply.send(Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("rollout {id} is held: the store could not save its step ({}); try again once the store takes writes", run.held.clone().unwrap_or_default()),
                    )));
                    Ok(())
                }
                Some(Msg::Operator(cmd, reply)) => {
                    let now = now_ms();
                    let r = run.commit(|r| r.step(Observation::Operator { command: cmd, now_ms: now }), None, None).await;
                    let answer = r.as_ref().map(|_| run.rollout.status()).map_err(Clone::clone);
                    let _ = reply.send(answer);
                    r
                }
            },
        };
        if let Err(e) = r {
            tracing::error!(rollout = %id, error = %e, "Rollout step failed; retrying on the next interval.");
        }
    }
    tracing::info!(rollout = %id, phase = run.rollout.phase.name(), "Rollout finished: its last action has reported.");
    run.state.rollouts.running.lock().await.remove(&id);
}

async fn spawn(state: &AppState, run: Run) {
    let (tx, rx) = mpsc::unbounded_channel();
    state
        .rollouts
        .running
        .lock()
        .await
        .insert(run.rollout.id.clone(), tx);
    tokio::spawn(drive(run, rx));
}

/// Restarts the runner of every rollout the store holds as unsettled: running, paused, or final
/// with an action still in flight (after a restart of the server). Returns how many.
pub async fn resume_all(state: &AppState) -> Result<usize, ApiError> {
    let mut n = 0;
    for rec in state.store.rollouts(true).await? {
        let persisted: Persisted = serde_json::from_value(rec.state.clone()).map_err(|e| {
            internal(format!(
                "stored state of rollout {} is not readable: {e}",
                rec.id
            ))
        })?;
        let plan = persisted.engine.plan.clone();
        let mut watchers = BTreeMap::new();
        for h in persisted.engine.hosts.keys() {
            let w = match persisted.watchers.get(h) {
                Some(s) => HostWatcher::restore(&plan, s),
                None => HostWatcher::new(&plan, h.clone()),
            }
            .map_err(internal)?;
            watchers.insert(h.clone(), w);
        }
        let features = state.store.rollout_host_features(&rec.id).await?;
        let fed_until = persisted
            .engine
            .hosts
            .keys()
            .map(|h| (h.clone(), now_ms() - BASELINE_LOOKBACK_MS))
            .collect();
        tracing::info!(rollout = %rec.id, phase = %rec.phase, "Resuming a rollout from the store.");
        spawn(
            state,
            Run {
                state: state.clone(),
                rollout: persisted.engine,
                held: None,
                save_policy: SavePolicy::default(),
                plan,
                watchers,
                fed_until,
                features,
            },
        )
        .await;
        n += 1;
    }
    Ok(n)
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

/// A new action's wire id: 128 random bits from the OS as 32 lower-case hex characters.
fn new_action_uid() -> String {
    let mut b = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
    hex::encode(b)
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
    };
    let mut hosts = Vec::new();
    let mut profiles = BTreeMap::new();
    for h in state.store.list_hosts().await? {
        let p = state.store.current_profile(&h.name).await?;
        let mut labels = p.as_ref().map(|p| p.labels.clone()).unwrap_or_default();
        labels.extend(h.labels.clone());
        if plan.targets.matches(&labels, &attributes(p.as_ref())) {
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
    for (name, f, p) in scored {
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
    let run = Run {
        state: state.clone(),
        features: features.iter().cloned().collect(),
        rollout,
        held: None,
        save_policy: SavePolicy::default(),
        plan,
        watchers,
        fed_until,
    };
    let first = step_record(
        &run.rollout,
        &run.watchers,
        None,
        &run.features,
        &decisions,
        None,
    );
    let new = NewRollout {
        id: id.clone(),
        phase: first.phase.clone(),
        model_version: Some(model_version),
        plan_file: file.clone(),
        plan_yaml: req.plan_yaml,
        state: first.state.clone(),
        hosts: features,
    };
    if let Some((host, other)) = state.store.create_rollout(&new, &first, now).await? {
        return Err(ApiError::conflict(format!(
            "host {host} is already in running rollout {other}; wait for it, or abort it"
        )));
    }
    state.rollouts.actions.notify_waiters();
    tracing::info!(rollout = %id, hosts = targets.len(), model_version, "Started a rollout.");
    let phase = run.rollout.phase.name();
    spawn(&state, run).await;
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
    let tx = state.rollouts.running.lock().await.get(&id).cloned();
    let Some(tx) = tx else {
        return Err(ApiError::conflict(format!(
            "rollout {id} is not running in this server process"
        )));
    };
    let (reply, answer) = oneshot::channel();
    tx.send(Msg::Operator(cmd, reply))
        .map_err(|_| ApiError::conflict(format!("rollout {id} has just finished")))?;
    let status = answer
        .await
        .map_err(|_| ApiError::conflict(format!("rollout {id} has just finished")))??;
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
        let bell = state.rollouts.actions.notified();
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
                    Ok(spec) => Some(AgentAction::new(a.uid, a.rollout_id, a.kind, spec)),
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
        tracing::info!(host = %host, action = id, rollout = %rec.rollout_id, outcome = body.outcome.status(), "Stored an action result.");
        if let Some(tx) = state.rollouts.running.lock().await.get(&rec.rollout_id) {
            let _ = tx.send(Msg::Result);
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Shared handle type for the state.
pub type SharedRunners = Arc<Runners>;
