//! The `config` durable task: one configuration change (`bellwether config apply`, a restore
//! of a snapshot) stepped through `bellwether_engine::config::ConfigChangeEngine`.
//!
//! The engine is pure and wholly serde, so the stored state is the engine itself plus what
//! the driver keeps beside it (per target, the timestamp of the newest sample already fed).
//! A tick feeds each target's `pg.DB.*` samples stored since then (`Input::Sample`, one per
//! timestamp, oldest first) and then `Input::Tick`; an agent's stored result is `Input::Done`
//! with the typed outcome and the built-in's output; an operator's abort or revert is
//! `Input::Command`. The engine's actions become dispatches under its own action ids (so the
//! store queues each once) and its events `config.NAME` events with the task's id.
//!
//! The plan's contemporaneous controls (`controls:`, untouched peers whose agents sample
//! them as `--database NAME=URL` like any instance) are read the same way and fed as
//! `Input::ControlSample` before the targets' samples of the tick, so a target's breach is
//! judged with the peers' samples of the same seconds that have arrived. A control's samples
//! that arrive later than the target's (another agent's flush) are not waited for: the
//! comparison then has fewer control samples, and without enough it takes nothing away.

use std::collections::BTreeMap;
use std::time::Duration;

use bellwether_engine::config::{
    Action as EngineAction, Command as EngineCommand, ConfigChangeEngine, Input as EngineInput,
    Output, Phase,
};
use bellwether_model::wire::{ActionOutcome, ActionResult};
use bellwether_store::{ActionRecord, NewEvent, TaskRecord};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::task::{Dispatch, DurableTask, Input, NoEffect, Step};
use crate::types::{ConfigTargetBody, ConfigTaskStatus};
use crate::AppState;

/// The task kind, as stored and as it prefixes the events (`config.applied`).
pub const CONFIG: &str = "config";

/// How often a config task ticks: the agents sample every few seconds, and the engine's
/// windows are seconds long.
const TICK: Duration = Duration::from_secs(1);

/// The most samples read per target per tick; the rest follow on the next tick.
const SAMPLES_PER_TICK: i64 = 20_000;

/// The driver's state beside the engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Driver {
    pub created_ms: i64,
    /// Per target (by index), the timestamp of the newest sample fed to the engine.
    pub fed_until_ms: Vec<i64>,
    /// The same per contemporaneous control (`plan.controls`); absent from state saved
    /// before controls existed.
    #[serde(default)]
    pub control_fed_until_ms: Vec<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Persisted {
    engine: ConfigChangeEngine,
    driver: Driver,
}

/// A configuration change as a durable task.
#[derive(Clone)]
pub(crate) struct ConfigTask {
    pub id: String,
    pub engine: ConfigChangeEngine,
    pub driver: Driver,
}

/// An operator's command.
pub(crate) enum Command {
    Abort(String),
    Revert(String),
}

/// What a tick read: per target the samples since the last one fed, grouped by timestamp.
pub(crate) struct Observed {
    /// (target, at_ms, metric name → value), oldest first per target.
    samples: Vec<(usize, i64, BTreeMap<String, f64>)>,
    /// Per target, the newest timestamp read (unchanged when nothing was read).
    until: Vec<i64>,
    /// The same for the contemporaneous controls.
    control_samples: Vec<(usize, i64, BTreeMap<String, f64>)>,
    control_until: Vec<i64>,
}

pub(crate) fn phase_name(p: Phase) -> String {
    match serde_json::to_value(p) {
        Ok(Value::String(s)) => s,
        _ => format!("{p:?}").to_lowercase(),
    }
}

/// The engine's events as event-log entries (the store prefixes `config.` and adds the id).
pub(crate) fn log_events(out: &Output, step: &mut Step<NoEffect>) {
    step.events.extend(out.events.iter().map(|e| NewEvent {
        ts_ms: e.at_ms,
        kind: e.name.clone(),
        host: e.host.clone(),
        reason: e.reason.clone(),
        figures: e.figures.clone(),
    }));
}

/// The engine's actions as agent dispatches, under the engine's ids.
pub(crate) fn dispatches(actions: &[EngineAction], step: &mut Step<NoEffect>) {
    step.dispatches.extend(
        actions
            .iter()
            .map(|a| Dispatch::new(a.id, &a.host, a.kind.as_str(), &a.spec)),
    );
}

/// The first step of a new task: what `ConfigChangeEngine::start` returned.
pub(crate) fn first_step(out: &Output) -> Step<NoEffect> {
    let mut step = Step::default();
    dispatches(&out.actions, &mut step);
    log_events(out, &mut step);
    step
}

/// An agent's stored result as the engine's `Done`: the typed outcome and the output.
pub(crate) fn done_input(a: &ActionRecord) -> EngineInput {
    let (outcome, output) = match a.result.as_ref().map(ActionResult::deserialize) {
        Some(Ok(r)) => (r.outcome, r.output),
        Some(Err(e)) => (
            ActionOutcome::Failed {
                exit_code: None,
                error: format!("the stored result could not be read: {e}"),
            },
            None,
        ),
        None => (
            ActionOutcome::Failed {
                exit_code: None,
                error: "no result was stored".into(),
            },
            None,
        ),
    };
    EngineInput::Done {
        action_id: a.action_id,
        outcome,
        output,
    }
}

/// Groups one host's samples of database `db` by timestamp, metric names without the
/// `pg.DB.` prefix.
pub(crate) fn group_samples(
    db: &str,
    samples: &[bellwether_model::MetricSample],
) -> Vec<(i64, BTreeMap<String, f64>)> {
    let prefix = bellwether_config::metric_key(db, "");
    let mut by_ts: BTreeMap<i64, BTreeMap<String, f64>> = BTreeMap::new();
    for s in samples {
        if let Some(m) = s.name.strip_prefix(&prefix) {
            by_ts
                .entry(s.ts_ms)
                .or_default()
                .insert(m.to_string(), s.value);
        }
    }
    by_ts.into_iter().collect()
}

/// Each instance's samples stored since `until[i]` (its newest already fed), grouped by
/// timestamp; `until` is moved to the newest read.
async fn read_samples(
    state: &AppState,
    instances: &[bellwether_engine::config::Target],
    until: &mut [i64],
) -> Result<Vec<(usize, i64, BTreeMap<String, f64>)>, ApiError> {
    let mut samples = Vec::new();
    for (i, t) in instances.iter().enumerate() {
        let after = until.get(i).copied().unwrap_or(0);
        let mut page = state
            .store
            .samples_since(&t.host, after, SAMPLES_PER_TICK)
            .await?;
        // A full page may end inside one timestamp's samples: leave that timestamp for the
        // next tick (unless the page is that one timestamp).
        if page.len() as i64 == SAMPLES_PER_TICK {
            let last = page.last().map(|s| s.ts_ms).unwrap_or(after);
            if page.first().map(|s| s.ts_ms) != Some(last) {
                page.retain(|s| s.ts_ms < last);
            }
        }
        let newest = page.iter().map(|s| s.ts_ms).max();
        for (at, metrics) in group_samples(&t.database, &page) {
            samples.push((i, at, metrics));
        }
        if let (Some(n), Some(u)) = (newest, until.get_mut(i)) {
            *u = n;
        }
    }
    Ok(samples)
}

impl ConfigTask {
    pub(crate) fn status_of(&self) -> ConfigTaskStatus {
        status(&self.id, &self.engine, &self.driver)
    }

    fn feed(&mut self, step: &mut Step<NoEffect>, input: EngineInput, now: i64) {
        let out = self.engine.step(input, now);
        dispatches(&out.actions, step);
        log_events(&out, step);
    }
}

pub(crate) fn status(id: &str, engine: &ConfigChangeEngine, driver: &Driver) -> ConfigTaskStatus {
    ConfigTaskStatus {
        id: id.to_string(),
        phase: phase_name(engine.phase),
        settled: engine.is_settled(),
        created_at_ms: driver.created_ms,
        description: engine.plan.description.clone(),
        targets: engine
            .plan
            .targets
            .iter()
            .map(|t| ConfigTargetBody {
                host: t.host.clone(),
                database: t.database.clone(),
            })
            .collect(),
        set: engine.plan.set.clone(),
        report: engine.report(),
    }
}

/// A stored config task's engine and driver state.
pub(crate) fn load(rec: &TaskRecord) -> Result<(ConfigChangeEngine, Driver), ApiError> {
    let p: Persisted = serde_json::from_value(rec.state.clone()).map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "stored state of config task {} is not readable: {e}",
                rec.id
            ),
        )
    })?;
    Ok((p.engine, p.driver))
}

impl DurableTask for ConfigTask {
    const KIND: &'static str = CONFIG;
    type Command = Command;
    type Status = ConfigTaskStatus;
    type Observed = Observed;
    type Effect = NoEffect;
    type EffectDone = NoEffect;

    async fn restore(_state: AppState, rec: TaskRecord) -> Result<Self, ApiError> {
        let (engine, driver) = load(&rec)?;
        Ok(ConfigTask {
            id: rec.id,
            engine,
            driver,
        })
    }

    fn id(&self) -> &str {
        &self.id
    }

    fn phase(&self) -> String {
        phase_name(self.engine.phase)
    }

    fn is_settled(&self) -> bool {
        self.engine.is_settled()
    }

    fn persist(&self) -> Value {
        json!({ "engine": self.engine, "driver": self.driver })
    }

    fn tick_every(&self) -> Duration {
        TICK
    }

    async fn observe(&self, state: &AppState) -> Result<Observed, ApiError> {
        let mut until = self.driver.fed_until_ms.clone();
        let mut control_until = self.driver.control_fed_until_ms.clone();
        control_until.resize(self.engine.plan.controls.len(), 0);
        if self.engine.phase.is_final() {
            return Ok(Observed {
                samples: Vec::new(),
                until,
                control_samples: Vec::new(),
                control_until,
            });
        }
        let samples = read_samples(state, &self.engine.plan.targets, &mut until).await?;
        let control_samples =
            read_samples(state, &self.engine.plan.controls, &mut control_until).await?;
        Ok(Observed {
            samples,
            until,
            control_samples,
            control_until,
        })
    }

    fn step(&mut self, input: Input<Self>, now: i64) -> Step<NoEffect> {
        let mut step = Step::default();
        match input {
            Input::Tick(observed) => {
                // The controls first: a target's sample is judged with the peers' samples of
                // the same seconds already in.
                let fed = &mut self.driver.control_fed_until_ms;
                fed.resize(self.engine.plan.controls.len(), 0);
                let control_fed = fed.clone();
                for (control, at_ms, metrics) in observed.control_samples {
                    if control_fed.get(control).is_some_and(|&f| at_ms <= f) {
                        continue;
                    }
                    self.feed(
                        &mut step,
                        EngineInput::ControlSample {
                            control,
                            at_ms,
                            metrics,
                        },
                        now,
                    );
                }
                for (i, u) in observed.control_until.into_iter().enumerate() {
                    if let Some(f) = self.driver.control_fed_until_ms.get_mut(i) {
                        *f = (*f).max(u);
                    }
                }
                for (target, at_ms, metrics) in observed.samples {
                    // Samples read before a restart were fed already.
                    if self
                        .driver
                        .fed_until_ms
                        .get(target)
                        .is_some_and(|&f| at_ms <= f)
                    {
                        continue;
                    }
                    self.feed(
                        &mut step,
                        EngineInput::Sample {
                            target,
                            at_ms,
                            metrics,
                        },
                        now,
                    );
                }
                for (i, u) in observed.until.into_iter().enumerate() {
                    if let Some(f) = self.driver.fed_until_ms.get_mut(i) {
                        *f = (*f).max(u);
                    }
                }
                self.feed(&mut step, EngineInput::Tick, now);
            }
            Input::Result(a) => {
                let input = done_input(&a);
                self.feed(&mut step, input, now);
            }
            Input::Command(c) => {
                let (name, reason, command) = match c {
                    Command::Abort(r) => ("abort", r.clone(), EngineCommand::Abort { reason: r }),
                    Command::Revert(r) => {
                        ("revert", r.clone(), EngineCommand::Revert { reason: r })
                    }
                };
                step.events.push(NewEvent {
                    ts_ms: now,
                    kind: format!("{name}.requested"),
                    host: None,
                    reason: format!("An operator asked to {name}: {reason}"),
                    figures: json!({ "reason": reason }),
                });
                self.feed(&mut step, EngineInput::Command(command), now);
            }
            Input::Effect(never) => match never {},
            Input::Hold { reason } => step.events.push(NewEvent {
                ts_ms: now,
                kind: "held".into(),
                host: None,
                reason: format!("The config task was held: {reason}; it goes on now."),
                figures: json!({ "reason": reason }),
            }),
        }
        step
    }

    fn status(&self) -> ConfigTaskStatus {
        self.status_of()
    }

    async fn run_effect(_state: AppState, effect: NoEffect) -> NoEffect {
        match effect {}
    }
}
