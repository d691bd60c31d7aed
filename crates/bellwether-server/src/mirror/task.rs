//! The `mirror` durable task: one per dependency, long-lived, stepping the pure engine
//! `bellwether_engine::mirror::MirrorEngine`.
//!
//! The stored state is the engine (wholly serde) and the driver's few notes beside it. The
//! task observes through its own observer ([`DurableTask::observer`]): the prober the
//! one-machine runner uses too (`bellwether_mirror::prober::run`: a sampler per instance, the
//! passive signal that checks a silent primary at once, the confirming check, the recheck).
//! At each check it reads the dependency's row (a changed policy becomes
//! `Command::SetPolicy`, a removal `Command::Remove`) and the proxy's per-backend counters,
//! and the engine is fed one `Input::Observe`, saved before the prober is answered. The
//! prober learns the primary and the instances to probe from the status published after
//! every saved step ([`DurableTask::saved`]). The engine's actions are carried out as:
//!
//! - `promote`, `fence`, `unfence`: effects, run by the server itself against the instance
//!   (`bellwether_mirror::promote`/`fence`/`unfence`);
//! - `route`: an effect on the dependency's proxy (its admin API: `POST /primary`, the
//!   readers' admin states, `POST /mode`; a new mirror added with `PUT /backends/{id}`), or, without a proxy,
//!   answered at once (`routed: false`: clients must be pointed at the new primary by other
//!   means; the event says so);
//! - `provision`, `retire`: agent actions on the dependency's host
//!   ([`agent_action`] says which `ActionSpec` carries them).
//!
//! Every answer comes back to the engine as `Input::ActionDone` under the engine's action id
//! (dispatches use the engine's ids, so the store queues each once). Effects are not durable:
//! a resumed task issues again what the engine still waits on ([`MirrorTask::pending_effects`]);
//! each is idempotent (a promote of an instance that already is the primary answers ok).
//!
//! The task settles once the engine is `removed` with nothing in flight.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bellwether_engine::mirror::{
    Action, Command, Input as EngineInput, MirrorEngine, Observation, Output, Phase, Status,
};
use bellwether_mirror::local::BackendFigures;
use bellwether_mirror::prober::{Checks, Gone, ProbeSettings};
use bellwether_model::mirror::{DepKind, ProxyRef};
use bellwether_model::wire::{ActionOutcome, ActionResult};
use bellwether_store::{ActionRecord, DependencyRecord, NewEvent, TaskRecord};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::watch;

use super::proxy;

use crate::error::ApiError;
use crate::task::{Dispatch, DurableTask, Input, Observe, ObserverLoop, Step};
use crate::AppState;

pub use bellwether_store::MIRROR;

/// The longest a probe of one instance may take, whatever the health interval (otherwise
/// 80 % of it, as the one-machine runner).
const MAX_PROBE: Duration = Duration::from_secs(2);
/// How long a fence or unfence may take.
const FENCE_TIMEOUT: Duration = Duration::from_secs(3);
/// The most immediate answers fed back within one step (a guard against a loop).
const MAX_IMMEDIATE: usize = 64;

/// The driver's notes beside the engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Driver {
    pub name: String,
    pub created_ms: i64,
    /// The dependency row's `updated_at_ms` last taken in (its policy).
    pub spec_seen_ms: i64,
    /// The removal was handed to the engine.
    pub removal_sent: bool,
    /// Engine actions carried by agent actions (answered by the agent's result).
    pub dispatched: BTreeSet<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Persisted {
    engine: MirrorEngine,
    driver: Driver,
}

/// A dependency's mirroring as a durable task.
#[derive(Clone)]
pub(crate) struct MirrorTask {
    pub id: String,
    pub engine: MirrorEngine,
    pub driver: Driver,
    /// What the prober reads between checks: the status and probe settings after the last
    /// saved step (shared by the runner's copies; not stored).
    published: Arc<watch::Sender<Option<(Status, ProbeSettings)>>>,
}

/// What one check of the prober read.
pub(crate) struct Observed {
    at_ms: i64,
    /// The dependency's row (`None` when it is gone from the store), or why it could not be
    /// read (the policy and removal are then looked at again at the next check).
    dependency: Result<Option<DependencyRecord>, String>,
    observations: Vec<Observation>,
    /// Why the dependency's proxy did not answer, when it has one and it did not.
    proxy_error: Option<String>,
}

/// Something the server does itself after a saved step.
#[derive(Debug, Clone)]
pub(crate) struct Effect {
    kind: DepKind,
    proxy: Option<ProxyRef>,
    action: Action,
    /// For a PostgreSQL promotion: the other standbys (id, endpoint), pointed at the one
    /// being promoted before it is (see [`before_pg_promotion`]).
    standbys: Vec<(String, String)>,
}

impl MirrorTask {
    /// The effect that carries `action` out.
    fn effect(&self, action: Action) -> Effect {
        let spec = self.engine.spec();
        let standbys = match &action {
            Action::Promote {
                instance,
                old_primary,
                ..
            } if spec.kind == DepKind::Postgres => other_standbys(
                &self.engine.status(),
                &[&instance.instance, &old_primary.instance],
            ),
            _ => Vec::new(),
        };
        Effect {
            kind: spec.kind,
            proxy: spec.proxy.clone(),
            action,
            standbys,
        }
    }
}

/// The instances that may stream from a PostgreSQL primary of this dependency (every one with
/// an endpoint that is not being made, retired or failed, nor the primary it serves as), except
/// `except`: before a promotion each is pointed at the one being promoted.
fn other_standbys(status: &Status, except: &[&str]) -> Vec<(String, String)> {
    use bellwether_engine::mirror::{InstanceState as S, Role as R};
    status
        .instances
        .iter()
        .filter(|i| !except.contains(&i.id.as_str()))
        .filter(|i| i.role == R::Mirror)
        .filter(|i| !matches!(i.state, S::Provisioning | S::Retired | S::Failed))
        .filter_map(|i| i.endpoint.clone().map(|e| (i.id.clone(), e)))
        .collect()
}

/// An effect's answer, for the engine.
#[derive(Debug, Clone)]
pub(crate) struct EffectDone {
    action_id: u64,
    ok: bool,
    output: Value,
    error: Option<String>,
}

/// The agent action that carries a provision or retire (`mirror_provision`,
/// `mirror_retire` on the dependency's host), or why none can: no host, or a spec the agent
/// would refuse (a `tcp` dependency has no mirrors Bellwether can make).
pub(crate) fn agent_action(
    spec: &bellwether_model::mirror::DependencySpec,
    action: &Action,
) -> Result<(String, bellwether_model::ActionSpec), String> {
    use bellwether_model::ActionSpec;
    let Some(host) = spec.host.as_deref() else {
        return Err(format!(
            "dependency {} names no agent host to {} mirrors on (set `host`)",
            spec.name,
            action.kind()
        ));
    };
    let agent_spec = match action {
        Action::Provision { instance, of, .. } => ActionSpec::MirrorProvision {
            dependency: spec.name.clone(),
            kind: spec.kind,
            primary: of.endpoint.clone(),
            instance: instance.clone(),
            port: None,
            timeout_ms: None,
        },
        Action::Retire { instance, .. } => ActionSpec::MirrorRetire {
            instance: instance.instance.clone(),
            timeout_ms: None,
        },
        other => return Err(format!("{} is not an agent action", other.kind())),
    };
    agent_spec
        .validate()
        .map_err(|e| format!("the {} action for {host} is refused: {e}", action.kind()))?;
    Ok((host.to_string(), agent_spec))
}

pub(crate) fn phase_name(p: Phase) -> String {
    match serde_json::to_value(p) {
        Ok(Value::String(s)) => s,
        _ => format!("{p:?}").to_lowercase(),
    }
}

/// The first step of a new dependency's task: what `MirrorEngine::new` returned, with the
/// answers it needs at once.
pub(crate) fn first_step(task: &mut MirrorTask, out: Output, now: i64) -> Step<Effect> {
    let mut step = Step::default();
    step.events.push(NewEvent {
        ts_ms: now,
        kind: "declared".into(),
        host: None,
        reason: format!(
            "Dependency {} ({}, primary {}) is mirrored from now on.",
            task.driver.name,
            task.engine.spec().kind.as_str(),
            task.engine.spec().primary
        ),
        figures: json!({ "dependency": task.driver.name, "spec": task.engine.spec() }),
    });
    task.take(out, &mut step, now);
    step
}

impl MirrorTask {
    /// A new task for a dependency declared now.
    pub(crate) fn new(id: String, engine: MirrorEngine, now: i64) -> MirrorTask {
        MirrorTask {
            id,
            published: Arc::default(),
            driver: Driver {
                name: engine.spec().name.clone(),
                created_ms: now,
                spec_seen_ms: now,
                removal_sent: false,
                dispatched: BTreeSet::new(),
            },
            engine,
        }
    }

    /// Feeds `input` and takes in what the engine answered.
    fn feed(&mut self, step: &mut Step<Effect>, input: EngineInput, now: i64) {
        let out = self.engine.step(input, now);
        self.take(out, step, now);
    }

    /// Records the engine's events and carries out its actions: agent dispatches, effects,
    /// or answers given at once (fed back, bounded).
    fn take(&mut self, out: Output, step: &mut Step<Effect>, now: i64) {
        let mut queue = vec![out];
        let mut immediate = 0;
        while let Some(out) = queue.pop() {
            self.log(&out, step);
            for action in out.actions {
                if let Some(answer) = self.carry(action, step) {
                    immediate += 1;
                    if immediate > MAX_IMMEDIATE {
                        step.events.push(NewEvent {
                            ts_ms: now,
                            kind: "driver_loop".into(),
                            host: None,
                            reason: "The engine kept asking for actions answered at once; the rest wait for the next interval.".into(),
                            figures: json!({ "dependency": self.driver.name, "alert": true }),
                        });
                        return;
                    }
                    queue.push(self.engine.step(answer, now));
                }
            }
        }
    }

    fn log(&self, out: &Output, step: &mut Step<Effect>) {
        for e in &out.events {
            let mut figures = e.figures.clone();
            if !figures.is_object() {
                figures = json!({ "value": figures });
            }
            if let Value::Object(m) = &mut figures {
                m.insert("dependency".into(), json!(self.driver.name));
                if e.alert {
                    m.insert("alert".into(), json!(true));
                }
            }
            step.events.push(NewEvent {
                ts_ms: e.at_ms,
                kind: e.name.clone(),
                host: None,
                reason: e.reason.clone(),
                figures,
            });
        }
    }

    /// Carries out one action; `Some` is its answer, known now.
    fn carry(&mut self, action: Action, step: &mut Step<Effect>) -> Option<EngineInput> {
        let spec = self.engine.spec();
        match &action {
            Action::Provision { .. } | Action::Retire { .. } => match agent_action(spec, &action) {
                Ok((host, agent_spec)) => {
                    self.driver.dispatched.insert(action.id());
                    step.dispatches.push(Dispatch::new(
                        action.id(),
                        &host,
                        &format!("mirror_{}", action.kind()),
                        &agent_spec,
                    ));
                    None
                }
                Err(why) => Some(EngineInput::ActionDone {
                    action_id: action.id(),
                    ok: false,
                    output: json!({ "permanent": true }),
                    error: Some(why),
                }),
            },
            Action::Route {
                action_id, primary, ..
            } if spec.proxy.is_none() => Some(EngineInput::ActionDone {
                action_id: *action_id,
                ok: true,
                output: json!({
                    "routed": false,
                    "primary": primary.endpoint,
                    "reason": "the dependency has no proxy: clients must be pointed at the new primary by other means",
                }),
                error: None,
            }),
            _ => {
                let effect = self.effect(action);
                step.effects.push(effect);
                None
            }
        }
    }

    /// The prober's settings under the engine's policy.
    fn probe_settings(&self) -> ProbeSettings {
        let spec = self.engine.spec();
        let interval = spec.policy.health_interval.get();
        ProbeSettings::for_spec(spec, interval.mul_f64(0.8).min(MAX_PROBE))
    }

    pub(crate) fn status_of(&self) -> Status {
        self.engine.status()
    }
}

/// A stored mirror task's engine and driver state.
pub(crate) fn load(rec: &TaskRecord) -> Result<(MirrorEngine, Driver), ApiError> {
    let p: Persisted = serde_json::from_value(rec.state.clone()).map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "stored state of mirror task {} is not readable: {e}",
                rec.id
            ),
        )
    })?;
    Ok((p.engine, p.driver))
}

/// An agent's stored result as the engine's `ActionDone`.
fn done_input(a: &ActionRecord) -> EngineInput {
    let r = a.result.as_ref().map(ActionResult::deserialize);
    let (ok, output, error) = match r {
        Some(Ok(r)) => {
            let output = r.output.unwrap_or(Value::Null);
            match r.outcome {
                ActionOutcome::Ok => (true, output, None),
                other => (false, output, Some(format!("{other:?}"))),
            }
        }
        Some(Err(e)) => (
            false,
            Value::Null,
            Some(format!("the stored result could not be read: {e}")),
        ),
        None => (false, Value::Null, Some("no result was stored".into())),
    };
    EngineInput::ActionDone {
        action_id: a.action_id,
        ok,
        output,
        error,
    }
}

impl DurableTask for MirrorTask {
    const KIND: &'static str = MIRROR;
    type Command = Command;
    type Status = Status;
    type Observed = Observed;
    type Effect = Effect;
    type EffectDone = EffectDone;

    async fn restore(_state: AppState, rec: TaskRecord) -> Result<Self, ApiError> {
        let (engine, driver) = load(&rec)?;
        Ok(MirrorTask {
            id: rec.id,
            engine,
            driver,
            published: Arc::default(),
        })
    }

    fn id(&self) -> &str {
        &self.id
    }

    fn phase(&self) -> String {
        phase_name(self.engine.phase())
    }

    fn is_settled(&self) -> bool {
        self.engine.phase() == Phase::Removed && self.engine.pending().is_empty()
    }

    fn persist(&self) -> Value {
        json!({ "engine": self.engine, "driver": self.driver })
    }

    fn tick_every(&self) -> Duration {
        self.engine.spec().policy.health_interval.get()
    }

    fn observer(&self, state: &AppState, observe: Observe<Self>) -> Option<ObserverLoop> {
        let checks = ServerChecks {
            state: state.clone(),
            name: self.driver.name.clone(),
            proxy: self.engine.spec().proxy.clone(),
            published: self.published.subscribe(),
            proxy_error: Mutex::new(None),
            observe,
        };
        Some(Box::pin(bellwether_mirror::prober::run(
            Arc::new(checks),
            None,
        )))
    }

    fn saved(&self) {
        self.published
            .send_replace(Some((self.status_of(), self.probe_settings())));
    }

    fn step(&mut self, input: Input<Self>, now: i64) -> Step<Effect> {
        let mut step = Step::default();
        match input {
            Input::Tick(observed) => {
                match &observed.dependency {
                    // Not read this time: looked at again at the next check.
                    Err(e) => {
                        tracing::warn!(dependency = %self.engine.spec().name, error = %e, "Could not read the dependency's record; its policy and removal are looked at again at the next check.");
                    }
                    Ok(Some(dep))
                        if !dep.is_removed() && dep.updated_at_ms > self.driver.spec_seen_ms =>
                    {
                        self.driver.spec_seen_ms = dep.updated_at_ms;
                        if dep.spec.policy != self.engine.spec().policy {
                            let policy = dep.spec.policy.clone();
                            self.feed(
                                &mut step,
                                EngineInput::Command(Command::SetPolicy { policy }),
                                now,
                            );
                        }
                    }
                    Ok(Some(dep)) if !dep.is_removed() => {}
                    // Removed by the operator (or its row is gone): retire and settle.
                    _ if !self.driver.removal_sent => {
                        self.driver.removal_sent = true;
                        self.feed(
                            &mut step,
                            EngineInput::Command(Command::Remove {
                                reason: "the dependency was removed".into(),
                            }),
                            now,
                        );
                    }
                    _ => {}
                }
                if let Some(e) = &observed.proxy_error {
                    step.events.push(NewEvent {
                        ts_ms: now,
                        kind: "proxy_unreachable".into(),
                        host: None,
                        reason: format!("The dependency's proxy did not answer: {e}; health is measured by the probes alone this interval."),
                        figures: json!({ "dependency": self.driver.name, "error": e }),
                    });
                }
                self.feed(
                    &mut step,
                    EngineInput::Observe {
                        at_ms: observed.at_ms,
                        observations: observed.observations,
                    },
                    now,
                );
            }
            Input::Result(a) => {
                if self.driver.dispatched.remove(&a.action_id) {
                    let input = done_input(&a);
                    self.feed(&mut step, input, now);
                }
            }
            Input::Command(c) => {
                if let Command::Remove { .. } = &c {
                    self.driver.removal_sent = true;
                }
                self.feed(&mut step, EngineInput::Command(c), now);
            }
            Input::Effect(d) => self.feed(
                &mut step,
                EngineInput::ActionDone {
                    action_id: d.action_id,
                    ok: d.ok,
                    output: d.output,
                    error: d.error,
                },
                now,
            ),
            Input::Hold { reason } => step.events.push(NewEvent {
                ts_ms: now,
                kind: "held".into(),
                host: None,
                reason: format!("The mirror task was held: {reason}; it goes on now."),
                figures: json!({ "dependency": self.driver.name, "reason": reason }),
            }),
        }
        step
    }

    fn status(&self) -> Status {
        self.status_of()
    }

    fn pending_effects(&self) -> Vec<Effect> {
        self.engine
            .pending()
            .into_iter()
            .filter(|a| {
                !matches!(a, Action::Provision { .. } | Action::Retire { .. })
                    && !self.driver.dispatched.contains(&a.id())
            })
            .map(|action| self.effect(action))
            .collect()
    }

    async fn run_effect(state: AppState, effect: Effect) -> EffectDone {
        run(&state, effect).await
    }
}

/// The prober's view of the task: the status published after its last saved step, the
/// proxy's figures, and the runner, which saves each check's step before answering.
struct ServerChecks {
    state: AppState,
    name: String,
    proxy: Option<ProxyRef>,
    published: watch::Receiver<Option<(Status, ProbeSettings)>>,
    /// Why the proxy did not answer at this check's [`Checks::figures`], for its observation.
    proxy_error: Mutex<Option<String>>,
    observe: Observe<MirrorTask>,
}

#[async_trait::async_trait]
impl Checks for ServerChecks {
    fn status(&self) -> Option<Status> {
        self.published.borrow().as_ref().map(|(s, _)| s.clone())
    }

    fn settings(&self) -> ProbeSettings {
        self.published
            .borrow()
            .as_ref()
            .map(|(_, p)| *p)
            .expect("the runner publishes before it starts the observer")
    }

    async fn figures(&self) -> Option<BTreeMap<String, BackendFigures>> {
        let p = self.proxy.as_ref()?;
        let status = self.status()?;
        let endpoints = status
            .instances
            .iter()
            .filter_map(|i| i.endpoint.clone().map(|e| (i.id.clone(), e)))
            .collect();
        let timeout = self.settings().timeout;
        match proxy::backends(&self.state, p, &endpoints, timeout).await {
            Ok(points) => Some(
                points
                    .into_iter()
                    .map(|(id, x)| {
                        let f = BackendFigures {
                            requests_per_s: x.requests_per_s,
                            error_rate: x.error_rate,
                            sessions: x.sessions,
                        };
                        (id, f)
                    })
                    .collect(),
            ),
            Err(e) => {
                *self.proxy_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                None
            }
        }
    }

    async fn observe(
        &self,
        at_ms: i64,
        observations: Vec<Observation>,
    ) -> Result<Option<f64>, Gone> {
        let dependency = self
            .state
            .store
            .dependency(&self.name)
            .await
            .map_err(|e| e.to_string());
        let proxy_error = self
            .proxy_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let observed = Observed {
            at_ms,
            dependency,
            observations,
            proxy_error,
        };
        let status = self.observe.send(observed).await.map_err(|_| Gone)?;
        Ok(status.and_then(|st| st.verdict()))
    }
}

/// Runs futures concurrently and collects their outputs in order.
async fn futures_join<F>(futs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

fn done(action_id: u64, r: Result<Value, String>) -> EffectDone {
    match r {
        Ok(output) => EffectDone {
            action_id,
            ok: true,
            output,
            error: None,
        },
        Err(e) => EffectDone {
            action_id,
            ok: false,
            output: Value::Null,
            error: Some(e),
        },
    }
}

/// Carries out one effect against the instance or the proxy.
async fn run(state: &AppState, effect: Effect) -> EffectDone {
    let kind = effect.kind;
    let id = effect.action.id();
    match effect.action {
        Action::Promote {
            instance,
            catch_up_to,
            timeout_ms,
            ..
        } => {
            let mut timeout = Duration::from_millis(timeout_ms);
            let (target, prepared) = if kind == DepKind::Postgres {
                let (target, short, prepared) =
                    before_pg_promotion(&instance.endpoint, &effect.standbys, catch_up_to).await;
                if short {
                    timeout = timeout.min(AHEAD_WAIT);
                }
                (target, prepared)
            } else {
                (catch_up_to, Value::Null)
            };
            let r = bellwether_mirror::promote(kind, &instance.endpoint, target, timeout).await;
            done(
                id,
                match r {
                    Ok(rep) => Ok(json!({
                        "offset": rep.reached_offset,
                        "waited_ms": rep.waited_ms,
                        "promote_ms": rep.promote_ms,
                        "catch_up_to": target,
                        "prepared": prepared,
                    })),
                    // A resumed task may promote again what it promoted before it stopped.
                    Err(bellwether_mirror::MirrorError::WrongRole { actual, .. })
                        if actual == "primary" =>
                    {
                        Ok(json!({ "already_primary": true }))
                    }
                    Err(e) => Err(e.to_string()),
                },
            )
        }
        Action::Fence {
            instance,
            new_primary,
            ..
        } => {
            let new = new_primary.as_ref().map(|b| b.endpoint.as_str());
            let r = bellwether_mirror::fence(kind, &instance.endpoint, new, FENCE_TIMEOUT).await;
            done(
                id,
                match r {
                    Ok(rep) => {
                        // Its last position, final now that it takes no writes.
                        let offset = bellwether_mirror::probe(kind, &instance.endpoint, MAX_PROBE)
                            .await
                            .ok()
                            .and_then(|p| p.offset);
                        Ok(json!({
                            "method": rep.method,
                            "offset": offset,
                            // A Redis instance given a new primary replicates from it; a
                            // PostgreSQL standby was repointed at it; a former PostgreSQL
                            // primary is read-only and does not (it would need pg_rewind).
                            "mirror": new.is_some() && rep.replicates,
                        }))
                    }
                    Err(e) => Err(e.to_string()),
                },
            )
        }
        Action::Unfence { instance, .. } => done(id, unfence(kind, &instance.endpoint).await),
        Action::Route {
            primary, readers, ..
        } => {
            let r = match &effect.proxy {
                Some(p) => proxy::route(state, p, &primary, &readers).await,
                None => Ok(json!({ "routed": false })),
            };
            done(id, r)
        }
        // Agent actions never become effects.
        Action::Provision { .. } | Action::Retire { .. } => done(
            id,
            Err("a provision or retire is an agent action, not the server's".into()),
        ),
    }
}

/// How long a promotion waits for its target when another standby had received more than the
/// primary's last known position (the engine then tries the next mirror).
const AHEAD_WAIT: Duration = Duration::from_secs(1);

/// Before a PostgreSQL promotion, without asking the old primary anything (it may be dead,
/// frozen or slow): every other standby is pointed at the one being promoted (cascading
/// replication). From then on the only standby that can confirm a commit of the old primary
/// is the one being promoted, so a commit it acknowledged (now, or when it thaws) is in the
/// promoted one; after the promotion the others follow the new timeline with no copy, and the
/// first of them is the new primary's synchronous standby at once (its configuration came
/// with the copy). The target is the furthest of `catch_up_to` and what the others had
/// received when they were cut off; `true` when that is past `catch_up_to` (a short wait).
/// The same as the drill's runner (`bellwether_mirror::local`), which also holds its proxy.
async fn before_pg_promotion(
    promoted: &str,
    standbys: &[(String, String)],
    catch_up_to: Option<u64>,
) -> (Option<u64>, bool, Value) {
    let started = std::time::Instant::now();
    let results = futures_join(standbys.iter().cloned().map(|(id, ep)| {
        let up = promoted.to_string();
        async move {
            let s = std::time::Instant::now();
            let r = bellwether_mirror::repoint(DepKind::Postgres, &ep, &up, FENCE_TIMEOUT).await;
            (id, r.map_err(|e| e.to_string()), s.elapsed())
        }
    }))
    .await;
    let mut furthest: Option<u64> = None;
    let mut repointed = Vec::new();
    for (id, r, took) in results {
        repointed.push(json!({
            "instance": id,
            "ok": r.is_ok(),
            "ms": took.as_millis() as u64,
            "position": r.as_ref().ok(),
            "error": r.as_ref().err(),
        }));
        match r {
            Ok(pos) => furthest = furthest.max(Some(pos)),
            // Unreachable: it confirms nothing we could count on. Refused (a primary): it is
            // no standby of the old primary.
            Err(e) => {
                tracing::warn!(instance = %id, error = %e, "Could not point a standby at the mirror being promoted.")
            }
        }
    }
    let (target, short) = match (catch_up_to, furthest) {
        (Some(a), Some(b)) if b > a => (Some(b), true),
        (a, b) => (a.or(b), false),
    };
    let prepared = json!({
        "repointed": repointed,
        "prepare_ms": started.elapsed().as_millis() as u64,
    });
    (target, short, prepared)
}

/// Undoes a fence: the old primary takes writes again (`bellwether_mirror::unfence`).
async fn unfence(kind: DepKind, endpoint: &str) -> Result<Value, String> {
    bellwether_mirror::unfence(kind, endpoint, FENCE_TIMEOUT)
        .await
        .map(|r| json!({ "method": r.method }))
        .map_err(|e| e.to_string())
}
