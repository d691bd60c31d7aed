//! The `shadow` durable task: one per shadow, long-lived, stepping the pure engine
//! `bellwether_engine::shadow::ShadowEngine`.
//!
//! The stored state is the engine (wholly serde) and the driver's few notes beside it. Every
//! tick the task reads its shadow's row (a removal becomes `Command::Remove`) and, for a
//! network service, the proxy's per-backend figures (each location's observation), and feeds
//! the engine a `Tick` (the schedule of points) or an `Observe`. The engine's actions are
//! carried out as:
//!
//! - `start`, `stop`, `point`, `restore`, and `route` of file-based data: agent actions on the
//!   shadow's host (`shadow_start`, `shadow_stop`, `shadow_point`, `shadow_restore`,
//!   `shadow_route`; [`agent_action`] builds them). A point's answer also carries each
//!   location's check, fed to the engine as an observation before the answer itself;
//! - `route` of a network service: an effect on the proxy (`POST /primary`, the way the mirror
//!   task moves it); `notify`: an effect that POSTs the webhook.
//!
//! Predictions and failures come from the server's own risk sources, read each tick for the
//! shadow's host ([`super::risk`]: a rollout's score of the host, the failure model scored
//! again with the evidence stored since, the rollout's failed-host verdicts of its watch),
//! and as commands (`POST …/predict`, `POST …/failure`) from any other system or a person.
//! The task settles once the engine is `removed` with nothing in flight.

use std::collections::BTreeSet;
use std::time::Duration;

use bellwether_engine::mirror::Backend;
use bellwether_engine::shadow::{
    Action, Command, Input as EngineInput, LocationObservation, Output, Phase, Prediction,
    ShadowEngine, Status,
};
use bellwether_model::shadow::{ShadowCall, ShadowOp, ShadowSpec};
use bellwether_model::wire::{ActionOutcome, ActionResult};
use bellwether_model::ActionSpec;
use bellwether_store::{ActionRecord, NewEvent, ShadowRecord, TaskRecord};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::risk::{self, RiskMemory, Signal};
use crate::error::ApiError;
use crate::task::{Dispatch, DurableTask, Input, Step};
use crate::AppState;

pub use bellwether_store::SHADOW;

/// The longest the proxy's figures may take to read.
const MAX_PROBE: Duration = Duration::from_secs(2);
/// The most immediate answers fed back within one step (a guard against a loop).
const MAX_IMMEDIATE: usize = 64;
/// The agent's time limits per built-in (a restore of a large database takes a while).
const START_TIMEOUT_MS: u64 = 60_000;
const POINT_TIMEOUT_MS: u64 = 120_000;
const RESTORE_TIMEOUT_MS: u64 = 900_000;
const ROUTE_TIMEOUT_MS: u64 = 30_000;

/// The driver's notes beside the engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Driver {
    pub name: String,
    pub created_ms: i64,
    /// The removal was handed to the engine.
    pub removal_sent: bool,
    /// Engine actions carried by agent actions (answered by the agent's result).
    pub dispatched: BTreeSet<u64>,
    /// What the risk sources said that was fed (`risk`).
    #[serde(default)]
    pub risk: RiskMemory,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Persisted {
    engine: ShadowEngine,
    driver: Driver,
}

/// A shadow as a durable task.
#[derive(Clone)]
pub(crate) struct ShadowTask {
    pub id: String,
    pub engine: ShadowEngine,
    pub driver: Driver,
}

/// What the API hands the task.
#[derive(Debug, Clone)]
pub(crate) enum ShadowCommand {
    Engine(Command),
    Predict(Prediction),
    Failure {
        failed_at_ms: i64,
        location: Option<String>,
        reason: String,
    },
}

impl From<Command> for ShadowCommand {
    fn from(c: Command) -> ShadowCommand {
        ShadowCommand::Engine(c)
    }
}

/// What a tick read.
pub(crate) struct Observed {
    at_ms: i64,
    /// The shadow's row; `None` when it is gone from the store.
    shadow: Option<ShadowRecord>,
    /// The proxy's figures per location, when the shadow routes through a proxy.
    proxy: Option<Result<Vec<LocationObservation>, String>>,
    /// What the risk sources say about the shadow's host (`None` once it is removed).
    risk: Option<Result<Vec<Signal>, String>>,
}

/// Something the server does itself after a saved step.
#[derive(Debug, Clone)]
pub(crate) struct Effect {
    spec: ShadowSpec,
    action: Action,
}

/// An effect's answer, for the engine.
#[derive(Debug, Clone)]
pub(crate) struct EffectDone {
    action_id: u64,
    ok: bool,
    output: Value,
    error: Option<String>,
}

/// The agent action that carries an engine action on the shadow's host, or `None` for
/// those the server carries out itself (a proxy route, a webhook).
pub(crate) fn agent_action(
    spec: &ShadowSpec,
    action: &Action,
) -> Option<Result<ActionSpec, String>> {
    let mut call = ShadowCall::of(spec);
    let (op, timeout) = match action {
        Action::Start { .. } => (ShadowOp::Start, START_TIMEOUT_MS),
        Action::Stop { .. } => (ShadowOp::Stop, START_TIMEOUT_MS),
        Action::Point { reason, .. } => {
            call.reason = Some(reason.clone());
            (ShadowOp::Point, POINT_TIMEOUT_MS)
        }
        Action::Restore { location, to, .. } => {
            call.location = Some(location.clone());
            call.to = Some(to.clone());
            (ShadowOp::Restore, RESTORE_TIMEOUT_MS)
        }
        Action::Route { location, .. } if spec.routing.link.is_some() => {
            call.location = Some(location.clone());
            call.link = spec.routing.link.clone();
            (ShadowOp::Route, ROUTE_TIMEOUT_MS)
        }
        Action::Route { .. } | Action::Notify { .. } => return None,
    };
    let a = ActionSpec::Shadow {
        op,
        shadow: Box::new(call),
        timeout_ms: Some(timeout),
    };
    Some(a.validate().map(|()| a.clone()).map_err(|e| {
        format!(
            "the {} action for {} is refused: {e}",
            op.builtin(),
            spec.host
        )
    }))
}

pub(crate) fn phase_name(p: Phase) -> String {
    match serde_json::to_value(p) {
        Ok(Value::String(s)) => s,
        _ => format!("{p:?}").to_lowercase(),
    }
}

/// The first step of a new shadow's task: what `ShadowEngine::new` returned.
pub(crate) fn first_step(task: &mut ShadowTask, out: Output, now: i64) -> Step<Effect> {
    let mut step = Step::default();
    let spec = task.engine.spec();
    step.events.push(NewEvent {
        ts_ms: now,
        kind: "declared".into(),
        host: Some(spec.host.clone()),
        reason: format!(
            "Shadow {} of {} on {} is kept from now on.",
            spec.name,
            spec.resource.kind.as_str(),
            spec.host
        ),
        figures: json!({ "shadow": spec.name, "spec": spec }),
    });
    task.take(out, &mut step, now);
    step
}

impl ShadowTask {
    pub(crate) fn new(id: String, engine: ShadowEngine, now: i64) -> ShadowTask {
        ShadowTask {
            id,
            driver: Driver {
                name: engine.spec().name.clone(),
                created_ms: now,
                removal_sent: false,
                dispatched: BTreeSet::new(),
                risk: RiskMemory::default(),
            },
            engine,
        }
    }

    /// Feeds what the risk sources said (each once) to the engine.
    fn risk(
        &mut self,
        step: &mut Step<Effect>,
        read: Result<Vec<Signal>, String>,
        at_ms: i64,
        now: i64,
    ) {
        let signals = match read {
            Ok(s) => {
                self.driver.risk.unreadable = false;
                s
            }
            Err(e) => {
                if !self.driver.risk.unreadable {
                    self.driver.risk.unreadable = true;
                    step.events.push(NewEvent {
                        ts_ms: now,
                        kind: "risk_unreadable".into(),
                        host: Some(self.engine.spec().host.clone()),
                        reason: format!("The risk sources of the shadow's host could not be read: {e}; points and rollbacks on prediction wait until they can."),
                        figures: json!({ "shadow": self.driver.name, "error": e, "alert": true }),
                    });
                }
                return;
            }
        };
        for s in signals {
            match s {
                Signal::Rollout {
                    rollout,
                    prediction,
                } => {
                    self.driver.risk.remember_prediction(&rollout);
                    self.feed(step, EngineInput::Predict { at_ms, prediction }, now);
                }
                Signal::Rescored {
                    rollout,
                    prediction,
                } => {
                    self.driver
                        .risk
                        .remember_rescore(&rollout, prediction.probability);
                    self.feed(step, EngineInput::Predict { at_ms, prediction }, now);
                }
                Signal::Failure {
                    event_id,
                    failed_at_ms,
                    reason,
                    source,
                } => {
                    self.driver.risk.remember_failure(event_id);
                    self.feed(
                        step,
                        EngineInput::Failure {
                            at_ms,
                            failed_at_ms,
                            location: None,
                            reason: format!("{}: {reason}", source.as_str()),
                        },
                        now,
                    );
                }
            }
        }
    }

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
                            figures: json!({ "shadow": self.driver.name, "alert": true }),
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
                m.insert("shadow".into(), json!(self.driver.name));
                if e.alert {
                    m.insert("alert".into(), json!(true));
                }
            }
            step.events.push(NewEvent {
                ts_ms: e.at_ms,
                kind: e.name.clone(),
                host: Some(self.engine.spec().host.clone()),
                reason: e.reason.clone(),
                figures,
            });
        }
    }

    /// Carries out one action; `Some` is its answer, known now.
    fn carry(&mut self, action: Action, step: &mut Step<Effect>) -> Option<EngineInput> {
        let spec = self.engine.spec();
        match agent_action(spec, &action) {
            Some(Ok(agent_spec)) => {
                self.driver.dispatched.insert(action.id());
                step.dispatches.push(Dispatch::new(
                    action.id(),
                    &spec.host,
                    &format!("shadow_{}", action.kind()),
                    &agent_spec,
                ));
                None
            }
            Some(Err(why)) => Some(EngineInput::ActionDone {
                action_id: action.id(),
                ok: false,
                output: Value::Null,
                error: Some(why),
            }),
            None => {
                step.effects.push(Effect {
                    spec: spec.clone(),
                    action,
                });
                None
            }
        }
    }
}

/// A stored shadow task's engine and driver state.
pub(crate) fn load(rec: &TaskRecord) -> Result<(ShadowEngine, Driver), ApiError> {
    let p: Persisted = serde_json::from_value(rec.state.clone()).map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "stored state of shadow task {} is not readable: {e}",
                rec.id
            ),
        )
    })?;
    Ok((p.engine, p.driver))
}

/// An agent's stored result as the engine's `ActionDone`, and the location checks a point's
/// output carries.
fn done_input(a: &ActionRecord) -> (EngineInput, Vec<LocationObservation>) {
    let r = a.result.as_ref().map(ActionResult::deserialize);
    let (ok, output, error) = match r {
        Some(Ok(r)) => {
            let output = r.output.unwrap_or(Value::Null);
            match r.outcome {
                ActionOutcome::Ok => (true, output, None),
                ActionOutcome::Failed { error, .. } => (false, output, Some(error)),
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
    let checks = output
        .get("locations")
        .cloned()
        .and_then(|v| serde_json::from_value::<Vec<LocationObservation>>(v).ok())
        .unwrap_or_default();
    (
        EngineInput::ActionDone {
            action_id: a.action_id,
            ok,
            output,
            error,
        },
        checks,
    )
}

impl DurableTask for ShadowTask {
    const KIND: &'static str = SHADOW;
    type Command = ShadowCommand;
    type Status = Status;
    type Observed = Observed;
    type Effect = Effect;
    type EffectDone = EffectDone;

    async fn restore(_state: AppState, rec: TaskRecord) -> Result<Self, ApiError> {
        let (engine, driver) = load(&rec)?;
        Ok(ShadowTask {
            id: rec.id,
            engine,
            driver,
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
        self.engine
            .spec()
            .points_every
            .get()
            .min(Duration::from_secs(2))
    }

    async fn observe(&self, state: &AppState) -> Result<Observed, ApiError> {
        let shadow = state.store.shadow(&self.driver.name).await?;
        let spec = self.engine.spec();
        let proxy = match &spec.routing.proxy {
            Some(p) => {
                let backends: std::collections::BTreeMap<String, String> = spec
                    .locations
                    .iter()
                    .filter_map(|l| l.backend.clone().map(|b| (b, String::new())))
                    .collect();
                let read = crate::mirror::proxy::backends(state, p, &backends, MAX_PROBE)
                    .await
                    .map(|points| {
                        spec.locations
                            .iter()
                            .map(|l| {
                                let point = l.backend.as_ref().and_then(|b| points.get(b));
                                LocationObservation {
                                    location: l.id.clone(),
                                    // A backend the proxy does not list serves nothing.
                                    up: point.is_some(),
                                    health: point.and_then(|x| x.error_rate).map(|e| 1.0 - e),
                                    latency_ms: point.and_then(|x| x.latency_ms),
                                    errors: None,
                                    rollback_bytes: None,
                                }
                            })
                            .collect()
                    });
                Some(read)
            }
            None => None,
        };
        let at_ms = crate::now_ms();
        let live = shadow.as_ref().is_some_and(|s| !s.is_removed())
            && self.engine.phase() != Phase::Removed;
        let risk = if live {
            Some(
                risk::read(
                    state,
                    &spec.host,
                    self.driver.created_ms,
                    &self.driver.risk,
                    at_ms,
                )
                .await
                .map_err(|e| e.message),
            )
        } else {
            None
        };
        Ok(Observed {
            at_ms,
            shadow,
            proxy,
            risk,
        })
    }

    fn step(&mut self, input: Input<Self>, now: i64) -> Step<Effect> {
        let mut step = Step::default();
        match input {
            Input::Tick(observed) => {
                let removed = observed.shadow.as_ref().is_none_or(|s| s.is_removed());
                if removed && !self.driver.removal_sent {
                    self.driver.removal_sent = true;
                    self.feed(
                        &mut step,
                        EngineInput::Command(Command::Remove {
                            reason: "the shadow was removed".into(),
                        }),
                        now,
                    );
                }
                let at_ms = observed.at_ms;
                if let Some(risk) = observed.risk {
                    self.risk(&mut step, risk, at_ms, now);
                }
                match observed.proxy {
                    Some(Ok(observations)) => self.feed(
                        &mut step,
                        EngineInput::Observe {
                            at_ms,
                            observations,
                        },
                        now,
                    ),
                    Some(Err(e)) => {
                        step.events.push(NewEvent {
                            ts_ms: now,
                            kind: "proxy_unreachable".into(),
                            host: None,
                            reason: format!("The shadow's proxy did not answer: {e}; no observation this interval."),
                            figures: json!({ "shadow": self.driver.name, "error": e }),
                        });
                        self.feed(&mut step, EngineInput::Tick { at_ms }, now);
                    }
                    None => self.feed(&mut step, EngineInput::Tick { at_ms }, now),
                }
            }
            Input::Result(a) => {
                if self.driver.dispatched.remove(&a.action_id) {
                    let (input, checks) = done_input(&a);
                    if !checks.is_empty() {
                        let at_ms = a.finished_at_ms.unwrap_or(now);
                        self.feed(
                            &mut step,
                            EngineInput::Observe {
                                at_ms,
                                observations: checks,
                            },
                            now,
                        );
                    }
                    self.feed(&mut step, input, now);
                }
            }
            Input::Command(c) => {
                let input = match c {
                    ShadowCommand::Engine(c) => {
                        if let Command::Remove { .. } = &c {
                            self.driver.removal_sent = true;
                        }
                        EngineInput::Command(c)
                    }
                    ShadowCommand::Predict(prediction) => EngineInput::Predict {
                        at_ms: now,
                        prediction,
                    },
                    ShadowCommand::Failure {
                        failed_at_ms,
                        location,
                        reason,
                    } => EngineInput::Failure {
                        at_ms: now,
                        failed_at_ms,
                        location,
                        reason,
                    },
                };
                self.feed(&mut step, input, now);
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
                reason: format!("The shadow task was held: {reason}; it goes on now."),
                figures: json!({ "shadow": self.driver.name, "reason": reason, "alert": true }),
            }),
        }
        step
    }

    fn status(&self) -> Status {
        self.engine.status()
    }

    fn pending_effects(&self) -> Vec<Effect> {
        let spec = self.engine.spec();
        self.engine
            .pending()
            .into_iter()
            .filter(|a| {
                agent_action(spec, a).is_none() && !self.driver.dispatched.contains(&a.id())
            })
            .map(|action| Effect {
                spec: spec.clone(),
                action,
            })
            .collect()
    }

    async fn run_effect(state: AppState, effect: Effect) -> EffectDone {
        run(&state, effect).await
    }
}

/// Carries out one effect: a proxy route or a webhook.
async fn run(state: &AppState, effect: Effect) -> EffectDone {
    let id = effect.action.id();
    let done = |r: Result<Value, String>| match r {
        Ok(output) => EffectDone {
            action_id: id,
            ok: true,
            output,
            error: None,
        },
        Err(e) => EffectDone {
            action_id: id,
            ok: false,
            output: Value::Null,
            error: Some(e),
        },
    };
    match effect.action {
        Action::Route { location, .. } => {
            let spec = &effect.spec;
            let backend = spec.location(&location).and_then(|l| l.backend.clone());
            let r = match (&spec.routing.proxy, backend) {
                (Some(p), Some(b)) => {
                    let primary = Backend {
                        instance: b,
                        endpoint: String::new(),
                    };
                    crate::mirror::proxy::route(state, p, &primary, &[]).await
                }
                _ => Err(format!(
                    "location {location} has no proxy backend to route to"
                )),
            };
            done(r)
        }
        Action::Notify { body, .. } => {
            let Some(url) = effect.spec.webhook.clone() else {
                return done(Ok(json!({ "sent": false })));
            };
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build();
            let r = match client {
                Ok(c) => c.post(&url).json(&body).send().await,
                Err(e) => Err(e),
            };
            match r {
                Ok(resp) => {
                    tracing::info!(url = %url, status = resp.status().as_u16(), "Shadow webhook delivered.");
                    done(Ok(
                        json!({ "sent": true, "status": resp.status().as_u16() }),
                    ))
                }
                Err(e) => {
                    tracing::warn!(url = %url, error = %e, "Shadow webhook failed.");
                    done(Err(e.to_string()))
                }
            }
        }
        other => done(Err(format!(
            "{} is an agent action, not the server's",
            other.kind()
        ))),
    }
}
