//! The data-shadow engine: when rollback points are taken, when and where a rollback goes,
//! and to which point.
//!
//! One [`ShadowEngine`] per shadow ([`ShadowSpec`]). The server's `shadow` task steps it with
//! [`Input`]s: a schedule [`Input::Tick`], each location's [`Input::Observe`] (health,
//! latency, errors, the data volume a restore into it would write), [`Input::Predict`] from
//! Bellwether's own risk sources (the failure model, a detector, a rollout's risk: a
//! probability with an expected failure time), [`Input::Failure`] seen by a watcher, the
//! [`Input::ActionDone`] of each [`Action`] it asked for, and the operator's [`Command`]s.
//!
//! Decisions, each an [`Event`] with its reason and figures:
//! - a **point** every `points_every`, on demand, and at once when a prediction reaches the
//!   policy's `point_above` (one point in flight at a time; a prediction while one is in
//!   flight is covered by it);
//! - a **rollback** (seed 004's `initiateRollback`) on a failure, on a prediction at or above
//!   `rollback_above` (with `auto_rollback`), or on the operator's word: idempotent while one
//!   is in progress (a second trigger is recorded, nothing else); it waits for the predicted
//!   point in flight, picks the latest point at or before the failure time (never one after
//!   it), picks the location by **merit** ([`merit`]; the failing location excluded, the
//!   current one kept within the hysteresis), restores it, routes to it, then notifies
//!   (an event and the webhook). A point found damaged or missing at restore is skipped for
//!   the next older one (at most [`MAX_POINT_TRIES`]); a rollback that fails pauses the engine
//!   with an alert.
//!
//! The order differs from the seed's on purpose: the location is restored **before** the
//! routing moves, so no request ever reaches a copy that still holds data from after the
//! failure (the seed routes first, then restores).
//!
//! Pure: no IO, no clock (every input has its time), the whole engine is serde state. It
//! never acts on no data: an automatic rollback needs a point at or before the failure time
//! and an observed location with a merit above 0; without either it raises a `no_data` or
//! `no_point` alert and does nothing.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bellwether_model::shadow::{PointReason, RestoreTo, ShadowSpec, ShadowSpecError, ShadowType};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub mod merit;
#[cfg(test)]
mod tests;

/// The most points the engine remembers (newest kept); the agent's store keeps all that
/// its retention keeps.
pub const MAX_POINTS: usize = 4096;
/// The most rollbacks kept in the state's history (the event log keeps all).
pub const MAX_HISTORY: usize = 100;
/// Damaged or missing points skipped before a rollback fails.
pub const MAX_POINT_TRIES: u32 = 3;
/// A failed route is re-sent this many times before the rollback fails.
pub const MAX_ROUTE_ATTEMPTS: u32 = 3;
/// A failed start is retried after `points_every × 2^failures`, at most this long (ms).
pub const MAX_START_BACKOFF_MS: i64 = 300_000;
/// A removal whose stop on the agent failed retries it (with the start's backoff) this long
/// after the removal began, then settles as removed all the same (ms): an agent that comes
/// back within it is told to stop following, and forgets its record of the shadow.
pub const STOP_RETRY_FOR_MS: i64 = 24 * 3_600_000;
/// Times past this (ms since the epoch) are not times.
pub const MAX_TIME_MS: i64 = 1 << 53;

/// Which of Bellwether's risk sources made a prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RiskSource {
    /// The failure-probability model (`/api/v1/risk`) for the shadow's host.
    FailureModel,
    /// An anomaly detector watching the resource or its host.
    Detector,
    /// A rollout in progress on the host, with its predicted probability.
    Rollout,
    /// Told through the API by a person or another system.
    External,
}

impl RiskSource {
    pub fn as_str(self) -> &'static str {
        match self {
            RiskSource::FailureModel => "failure_model",
            RiskSource::Detector => "detector",
            RiskSource::Rollout => "rollout",
            RiskSource::External => "external",
        }
    }
}

/// A prediction that the resource will fail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub source: RiskSource,
    /// What made it (a model version, a detector and metric, a rollout id).
    pub detail: String,
    /// In [0, 1].
    pub probability: f64,
    /// When the failure is expected (ms since the epoch).
    pub expected_failure_ms: i64,
    /// The location expected to fail; `None`: the one routed now.
    #[serde(default)]
    pub location: Option<String>,
}

/// One check of one location. Absent figures are no data and change nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocationObservation {
    pub location: String,
    /// It answered (the proxy's check; the file opened and its check passed).
    pub up: bool,
    /// In [0, 1] (see [`merit::MeritInputs::health`]).
    #[serde(default)]
    pub health: Option<f64>,
    #[serde(default)]
    pub latency_ms: Option<f64>,
    /// Errors since its previous observation.
    #[serde(default)]
    pub errors: Option<u64>,
    /// Bytes a restore into it would write (its data volume).
    #[serde(default)]
    pub rollback_bytes: Option<u64>,
}

/// A point the agent took (from a `Point` action's output).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointInfo {
    pub id: String,
    pub seq: u64,
    /// The time the point's data is consistent at (ms since the epoch).
    pub consistent_at_ms: i64,
    /// `schedule`, `on_demand`, `predicted`, `before_restore`.
    pub reason: String,
}

/// What a rollback goes back to, as the operator asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// The latest consistent state at or before this time.
    Time(i64),
    /// This point.
    Point(String),
}

/// An operator's command (API, CLI).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "command")]
pub enum Command {
    /// Take a point now.
    TakePoint {
        reason: String,
    },
    /// Roll back now: to `to` (the latest point by default), into `location` (by merit by
    /// default). Not limited by `min_rollback_gap` nor by a pause, never by the rule that a
    /// rollback is in progress.
    Rollback {
        to: Option<Target>,
        location: Option<String>,
        reason: String,
    },
    /// No automatic rollback (points are still taken) until resumed.
    Pause {
        reason: String,
    },
    Resume {
        reason: String,
    },
    /// Stop the shadow on the agent and settle.
    Remove {
        reason: String,
    },
}

/// What the engine is told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "input")]
pub enum Input {
    /// Time passed (the schedule of points, retries).
    Tick {
        at_ms: i64,
    },
    /// Checks of the locations at `at_ms`; locations not listed are no data.
    Observe {
        at_ms: i64,
        observations: Vec<LocationObservation>,
    },
    Predict {
        at_ms: i64,
        prediction: Prediction,
    },
    /// The resource failed at `failed_at_ms` (at `location`, or the routed one).
    Failure {
        at_ms: i64,
        failed_at_ms: i64,
        #[serde(default)]
        location: Option<String>,
        reason: String,
    },
    /// The action `action_id` finished (see each [`Action`] for the output it reads).
    ActionDone {
        action_id: u64,
        ok: bool,
        #[serde(default)]
        output: Value,
        #[serde(default)]
        error: Option<String>,
    },
    Command(Command),
}

/// What the IO side must do; each is answered with [`Input::ActionDone`] under its id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum Action {
    /// Start keeping the shadow on the agent.
    Start { action_id: u64 },
    /// Stop it.
    Stop { action_id: u64 },
    /// Take a point. Output: `{"point": {"id", "seq", "consistent_at_ms", "reason"}}`.
    Point { action_id: u64, reason: PointReason },
    /// Restore `location` to `to`, beside its data then swapped in. A failure with output
    /// `"point_unusable": true` (the point is damaged or gone) makes the engine try the next
    /// older point. Output: `{"restored_to": …}`.
    Restore {
        action_id: u64,
        rollback: u64,
        location: String,
        to: RestoreTo,
    },
    /// Route the service to `location` (a link swap, or the proxy's primary).
    Route {
        action_id: u64,
        rollback: Option<u64>,
        location: String,
    },
    /// POST `body` to the shadow's webhook (answered at once by the IO side; its failure is
    /// recorded, never retried).
    Notify { action_id: u64, body: Value },
}

impl Action {
    pub fn id(&self) -> u64 {
        match self {
            Action::Start { action_id }
            | Action::Stop { action_id }
            | Action::Point { action_id, .. }
            | Action::Restore { action_id, .. }
            | Action::Route { action_id, .. }
            | Action::Notify { action_id, .. } => *action_id,
        }
    }

    /// `start`, `stop`, `point`, `restore`, `route` or `notify`.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Start { .. } => "start",
            Action::Stop { .. } => "stop",
            Action::Point { .. } => "point",
            Action::Restore { .. } => "restore",
            Action::Route { .. } => "route",
            Action::Notify { .. } => "notify",
        }
    }
}

/// A decision or observation with its reason and figures. Stored as `shadow.NAME`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub at_ms: i64,
    /// docs/shadow-engine.md lists them (`point.requested`, `rollback.started`, …).
    pub name: String,
    pub reason: String,
    pub figures: Value,
    #[serde(default)]
    pub alert: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Output {
    pub actions: Vec<Action>,
    pub events: Vec<Event>,
}

/// The engine's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Its start on the agent is in flight (or being retried).
    Starting,
    Running,
    /// No automatic rollback (the operator, or a rollback that failed).
    Paused,
    /// Stopping on the agent.
    Removing,
    Removed,
}

/// Why a rollback started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Prediction,
    Failure,
    /// The routed location was down in `down_after` observations in a row.
    Down,
    Operator,
}

/// Where a rollback stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RollbackStep {
    /// Waiting for the point in flight (taken for the prediction).
    AwaitingPoint,
    Restoring,
    Routing,
}

/// The rollback in progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollback {
    pub id: u64,
    pub trigger: Trigger,
    pub cause: String,
    /// The failure (observed or predicted) it goes back before.
    pub failure_ms: i64,
    pub decided_ms: i64,
    pub step: RollbackStep,
    /// The operator's target, if any.
    pub target: Option<Target>,
    pub location: Option<String>,
    /// The point restored (or being restored).
    pub point: Option<PointInfo>,
    pub to: Option<RestoreTo>,
    /// The location routed when it started.
    pub from: String,
    /// The location that fails (never chosen).
    pub excluded: Option<String>,
    pub tried: Vec<String>,
    pub route_attempts: u32,
    /// When its first route was sent (the restored location was ready): `route_ms` in the
    /// figures is the switch of routing, from then to routed.
    #[serde(default)]
    pub routing_since_ms: Option<i64>,
    /// Triggers that came while it ran.
    pub repeats: u32,
    pub merits: Value,
}

/// One finished rollback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RollbackRecord {
    pub id: u64,
    pub trigger: Trigger,
    pub cause: String,
    pub failure_ms: i64,
    pub decided_ms: i64,
    pub done_ms: i64,
    pub ok: bool,
    pub from: String,
    pub location: Option<String>,
    pub point: Option<PointInfo>,
    pub to: Option<RestoreTo>,
    pub error: Option<String>,
    /// `decide_to_done_ms`, `route_ms` (the switch of routing, when it routed), the merits,
    /// the points tried, the repeats.
    pub figures: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Loc {
    obs_ms: Option<i64>,
    up: Option<bool>,
    health: Option<f64>,
    latency_ms: Option<f64>,
    errors: f64,
    errors_ms: Option<i64>,
    rollback_bytes: Option<u64>,
    down_count: u32,
    first_down_ms: Option<i64>,
}

/// One location in the status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocationStatus {
    pub id: String,
    pub routed: bool,
    pub up: Option<bool>,
    /// In [0, 1]; `None` before any observation.
    pub merit: Option<f64>,
    pub latency_ms: Option<f64>,
    pub errors: f64,
    pub rollback_bytes: Option<u64>,
    pub observed_ms: Option<i64>,
}

/// The status view for the API and the CLI.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub name: String,
    pub phase: Phase,
    pub pause_reason: Option<String>,
    pub routed: String,
    pub locations: Vec<LocationStatus>,
    pub points: usize,
    pub latest_point: Option<PointInfo>,
    pub point_in_flight: bool,
    pub rollback: Option<Rollback>,
    pub history: Vec<RollbackRecord>,
    /// The last prediction of each source.
    pub predictions: Vec<(i64, Prediction)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct State {
    phase: Phase,
    pause_reason: Option<String>,
    next_id: u64,
    pending: BTreeMap<u64, Action>,
    start_failures: u32,
    start_retry_at_ms: Option<i64>,
    /// Removing: when it began, the stops that failed, and when the next is sent.
    #[serde(default)]
    removing_since_ms: Option<i64>,
    #[serde(default)]
    stop_failures: u32,
    #[serde(default)]
    stop_retry_at_ms: Option<i64>,
    locs: BTreeMap<String, Loc>,
    routed: String,
    /// Oldest first.
    points: VecDeque<PointInfo>,
    point_in_flight: Option<u64>,
    /// When the last point was asked for (the schedule runs from it).
    last_point_ms: Option<i64>,
    /// Per source, when its last predicted point was asked for.
    predicted_point_ms: BTreeMap<String, i64>,
    predictions: BTreeMap<String, (i64, Prediction)>,
    rollback: Option<Rollback>,
    last_auto_rollback_ms: Option<i64>,
    history: Vec<RollbackRecord>,
    next_rollback: u64,
    /// Episodes reported once (`no_data`, `gap`…).
    open: BTreeSet<String>,
}

/// One shadow's decisions, as serde state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowEngine {
    spec: ShadowSpec,
    st: State,
}

fn quote(s: &str) -> String {
    bellwether_model::text::quote(s)
}

fn valid_time(t: i64) -> bool {
    (0..=MAX_TIME_MS).contains(&t)
}

impl ShadowEngine {
    /// A new engine for a valid spec at `now_ms`; its first output starts the shadow on the
    /// agent (and routes to the first location when routing is configured).
    pub fn new(spec: ShadowSpec, now_ms: i64) -> Result<(ShadowEngine, Output), ShadowSpecError> {
        spec.validate()?;
        let routed = spec.locations[0].id.clone();
        let locs = spec
            .locations
            .iter()
            .map(|l| {
                (
                    l.id.clone(),
                    Loc {
                        obs_ms: None,
                        up: None,
                        health: None,
                        latency_ms: None,
                        errors: 0.0,
                        errors_ms: None,
                        rollback_bytes: None,
                        down_count: 0,
                        first_down_ms: None,
                    },
                )
            })
            .collect();
        let mut e = ShadowEngine {
            spec,
            st: State {
                phase: Phase::Starting,
                pause_reason: None,
                next_id: 1,
                pending: BTreeMap::new(),
                start_failures: 0,
                start_retry_at_ms: None,
                removing_since_ms: None,
                stop_failures: 0,
                stop_retry_at_ms: None,
                locs,
                routed,
                points: VecDeque::new(),
                point_in_flight: None,
                last_point_ms: None,
                predicted_point_ms: BTreeMap::new(),
                predictions: BTreeMap::new(),
                rollback: None,
                last_auto_rollback_ms: None,
                history: Vec::new(),
                next_rollback: 1,
                open: BTreeSet::new(),
            },
        };
        let mut out = Output::default();
        e.act(&mut out, |id| Action::Start { action_id: id });
        if e.spec.routing.link.is_some() || e.spec.routing.proxy.is_some() {
            let location = e.st.routed.clone();
            e.act(&mut out, |id| Action::Route {
                action_id: id,
                rollback: None,
                location,
            });
        }
        e.event(
            &mut out,
            now_ms,
            "started",
            format!(
                "Shadow {} of {} {} ({}) starts; points every {}.",
                e.spec.name,
                e.spec.resource.kind.as_str(),
                e.resource_name(),
                e.spec.shadow_type.as_str(),
                e.spec.points_every
            ),
            json!({ "locations": e.spec.locations.len(), "routed": e.st.routed }),
            false,
        );
        Ok((e, out))
    }

    pub fn state(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    pub fn restore(state: Value) -> Result<ShadowEngine, serde_json::Error> {
        serde_json::from_value(state)
    }

    pub fn spec(&self) -> &ShadowSpec {
        &self.spec
    }

    pub fn phase(&self) -> Phase {
        self.st.phase
    }

    /// Actions dispatched without an answer yet.
    pub fn pending(&self) -> Vec<Action> {
        self.st.pending.values().cloned().collect()
    }

    /// The points the engine knows, oldest first.
    pub fn points(&self) -> impl Iterator<Item = &PointInfo> {
        self.st.points.iter()
    }

    /// The current merit of each location (in the spec's order); `None` before any
    /// observation.
    pub fn merits(&self) -> Vec<(String, Option<f64>)> {
        self.spec
            .locations
            .iter()
            .map(|l| (l.id.clone(), self.merit_of(&l.id)))
            .collect()
    }

    pub fn status(&self) -> Status {
        Status {
            name: self.spec.name.clone(),
            phase: self.st.phase,
            pause_reason: self.st.pause_reason.clone(),
            routed: self.st.routed.clone(),
            locations: self
                .spec
                .locations
                .iter()
                .map(|l| {
                    let s = &self.st.locs[&l.id];
                    LocationStatus {
                        id: l.id.clone(),
                        routed: l.id == self.st.routed,
                        up: s.up,
                        merit: self.merit_of(&l.id),
                        latency_ms: s.latency_ms,
                        errors: s.errors,
                        rollback_bytes: s.rollback_bytes,
                        observed_ms: s.obs_ms,
                    }
                })
                .collect(),
            points: self.st.points.len(),
            latest_point: self.st.points.back().cloned(),
            point_in_flight: self.st.point_in_flight.is_some(),
            rollback: self.st.rollback.clone(),
            history: self.st.history.clone(),
            predictions: self.st.predictions.values().cloned().collect(),
        }
    }

    /// Advances the engine by one input at `now_ms`.
    pub fn step(&mut self, input: Input, now_ms: i64) -> Output {
        let mut out = Output::default();
        match input {
            Input::Tick { at_ms } => self.tick(at_ms, &mut out),
            Input::Observe {
                at_ms,
                observations,
            } => self.observe(at_ms, observations, &mut out),
            Input::Predict { at_ms, prediction } => self.predict(at_ms, prediction, &mut out),
            Input::Failure {
                at_ms,
                failed_at_ms,
                location,
                reason,
            } => self.failure(at_ms, failed_at_ms, location, reason, &mut out),
            Input::ActionDone {
                action_id,
                ok,
                output,
                error,
            } => self.done(now_ms, action_id, ok, output, error, &mut out),
            Input::Command(c) => self.command(now_ms, c, &mut out),
        }
        out
    }

    fn resource_name(&self) -> String {
        self.spec
            .resource
            .path
            .clone()
            .or_else(|| self.spec.resource.url.clone())
            .unwrap_or_default()
    }

    fn act(&mut self, out: &mut Output, make: impl FnOnce(u64) -> Action) -> u64 {
        let id = self.st.next_id;
        self.st.next_id += 1;
        let a = make(id);
        if !matches!(a, Action::Notify { .. }) {
            self.st.pending.insert(id, a.clone());
        }
        out.actions.push(a);
        id
    }

    fn event(
        &self,
        out: &mut Output,
        at_ms: i64,
        name: &str,
        reason: String,
        figures: Value,
        alert: bool,
    ) {
        out.events.push(Event {
            at_ms,
            name: name.to_string(),
            reason,
            figures,
            alert,
        });
    }

    /// An event once per episode `key` (cleared by [`ShadowEngine::close`]).
    #[allow(clippy::too_many_arguments)]
    fn once(
        &mut self,
        out: &mut Output,
        key: &str,
        at_ms: i64,
        name: &str,
        reason: String,
        figures: Value,
        alert: bool,
    ) {
        if self.st.open.insert(key.to_string()) {
            self.event(out, at_ms, name, reason, figures, alert);
        }
    }

    fn close(&mut self, key: &str) {
        self.st.open.remove(key);
    }

    fn merit_of(&self, id: &str) -> Option<f64> {
        let s = self.st.locs.get(id)?;
        let up = s.up?;
        let l = self.spec.location(id)?;
        Some(merit::merit(
            &merit::MeritInputs {
                up,
                health: s.health,
                latency_ms: s.latency_ms,
                rollback_bytes: s.rollback_bytes,
                dependencies: l.dependencies,
                errors: s.errors,
            },
            &self.spec.merit,
        ))
    }

    fn running(&self) -> bool {
        matches!(
            self.st.phase,
            Phase::Starting | Phase::Running | Phase::Paused
        )
    }

    fn tick(&mut self, at_ms: i64, out: &mut Output) {
        if !valid_time(at_ms) {
            return;
        }
        if self.st.phase == Phase::Removing && self.st.stop_retry_at_ms.is_some_and(|t| at_ms >= t)
        {
            self.st.stop_retry_at_ms = None;
            self.event(
                out,
                at_ms,
                "stop.retried",
                format!(
                    "Stopping shadow {} on {} again (attempt {}).",
                    self.spec.name,
                    self.spec.host,
                    self.st.stop_failures + 1
                ),
                json!({ "failures": self.st.stop_failures }),
                false,
            );
            self.maybe_stop(at_ms, out);
            return;
        }
        if self.st.phase == Phase::Starting
            && !self
                .st
                .pending
                .values()
                .any(|a| matches!(a, Action::Start { .. }))
            && self.st.start_retry_at_ms.is_some_and(|t| at_ms >= t)
        {
            self.st.start_retry_at_ms = None;
            self.act(out, |id| Action::Start { action_id: id });
            self.event(
                out,
                at_ms,
                "start.retried",
                format!(
                    "Starting shadow {} on {} again (attempt {}).",
                    self.spec.name,
                    self.spec.host,
                    self.st.start_failures + 1
                ),
                json!({ "failures": self.st.start_failures }),
                false,
            );
        }
        let due = match self.st.last_point_ms {
            None => true,
            Some(t) => at_ms - t >= self.spec.points_every.get().as_millis() as i64,
        };
        if due && self.can_point() {
            self.point(at_ms, PointReason::Schedule, out);
        }
    }

    /// A point may be asked for: started, not removing, none in flight.
    fn can_point(&self) -> bool {
        matches!(self.st.phase, Phase::Running | Phase::Paused) && self.st.point_in_flight.is_none()
    }

    fn point(&mut self, at_ms: i64, reason: PointReason, out: &mut Output) -> u64 {
        self.st.last_point_ms = Some(at_ms);
        let why = reason.as_str();
        let figures = json!({ "reason": reason });
        let id = self.act(out, |id| Action::Point {
            action_id: id,
            reason,
        });
        self.st.point_in_flight = Some(id);
        self.event(
            out,
            at_ms,
            "point.requested",
            format!("A rollback point of {} is taken ({why}).", self.spec.name),
            figures,
            false,
        );
        id
    }

    fn observe(&mut self, at_ms: i64, obs: Vec<LocationObservation>, out: &mut Output) {
        if !valid_time(at_ms) {
            return;
        }
        let w = self.spec.merit.clone();
        let mut down_failure: Option<(i64, u32)> = None;
        for o in obs {
            let routed = o.location == self.st.routed;
            let Some(s) = self.st.locs.get_mut(&o.location) else {
                continue;
            };
            // An older observation than the last one taken in changes nothing.
            if s.obs_ms.is_some_and(|t| at_ms < t) {
                continue;
            }
            let new_errors = o.errors.unwrap_or(0);
            s.errors = merit::decay_errors(
                s.errors,
                s.errors_ms.unwrap_or(at_ms),
                at_ms,
                new_errors,
                &w,
            );
            s.errors_ms = Some(at_ms);
            s.obs_ms = Some(at_ms);
            s.up = Some(o.up);
            if o.health.is_some() || !o.up {
                s.health = o
                    .health
                    .filter(|h| h.is_finite())
                    .map(|h| h.clamp(0.0, 1.0));
            }
            if let Some(l) = o.latency_ms.filter(|l| l.is_finite() && *l >= 0.0) {
                s.latency_ms = Some(l);
            }
            if o.rollback_bytes.is_some() {
                s.rollback_bytes = o.rollback_bytes;
            }
            if o.up {
                s.down_count = 0;
                s.first_down_ms = None;
            } else {
                s.down_count = s.down_count.saturating_add(1);
                let first = *s.first_down_ms.get_or_insert(at_ms);
                if routed {
                    down_failure = Some((first, s.down_count));
                }
            }
        }
        if let Some((first, n)) = down_failure {
            if n >= self.spec.policy.down_after {
                let routed = self.st.routed.clone();
                let cause = format!(
                    "location {routed} was down in {n} observations in a row (since {first} ms)"
                );
                self.initiate(
                    at_ms,
                    Trigger::Down,
                    first,
                    Some(routed),
                    None,
                    None,
                    cause,
                    out,
                );
            }
        }
        self.tick(at_ms, out);
    }

    fn predict(&mut self, at_ms: i64, p: Prediction, out: &mut Output) {
        if !valid_time(at_ms)
            || !valid_time(p.expected_failure_ms)
            || !p.probability.is_finite()
            || !(0.0..=1.0).contains(&p.probability)
            || p.location
                .as_deref()
                .is_some_and(|l| self.spec.location(l).is_none())
        {
            self.event(
                out,
                at_ms,
                "prediction.refused",
                format!(
                    "A prediction from {} was refused: its probability, time or location is not valid.",
                    p.source.as_str()
                ),
                json!({ "prediction": p }),
                false,
            );
            return;
        }
        let src = p.source.as_str().to_string();
        self.st.predictions.insert(src.clone(), (at_ms, p.clone()));
        let pol = self.spec.policy.clone();
        if p.probability < pol.point_above {
            self.close(&format!("predicted:{src}"));
            return;
        }
        let figures = json!({
            "source": src, "detail": p.detail, "probability": p.probability,
            "expected_failure_ms": p.expected_failure_ms, "point_above": pol.point_above,
            "rollback_above": pol.rollback_above,
        });
        self.once(
            out,
            &format!("predicted:{src}"),
            at_ms,
            "prediction.received",
            format!(
                "{} predicts a failure of {} at {} ms with probability {:.3} ({}).",
                src,
                self.spec.name,
                p.expected_failure_ms,
                p.probability,
                quote(&p.detail)
            ),
            figures.clone(),
            false,
        );
        let every = self.spec.points_every.get().as_millis() as i64;
        let recent = self
            .st
            .predicted_point_ms
            .get(&src)
            .is_some_and(|t| at_ms - t < every && at_ms >= *t);
        let mut point_id = None;
        if self.st.point_in_flight.is_some() {
            point_id = self.st.point_in_flight;
        } else if !recent && self.can_point() {
            self.st.predicted_point_ms.insert(src.clone(), at_ms);
            point_id = Some(self.point(
                at_ms,
                PointReason::Predicted {
                    source: src.clone(),
                    expected_failure_ms: p.expected_failure_ms,
                    probability: p.probability,
                },
                out,
            ));
        }
        if p.probability >= pol.rollback_above && pol.auto_rollback {
            let cause = format!(
                "{src} predicts a failure at {} ms with probability {:.3} (at or above {:.3})",
                p.expected_failure_ms, p.probability, pol.rollback_above
            );
            let location = p.location.clone().or_else(|| Some(self.st.routed.clone()));
            // Before the predicted failure, but never after what has been observed.
            let failure_ms = p.expected_failure_ms.min(at_ms);
            self.initiate(
                at_ms,
                Trigger::Prediction,
                failure_ms,
                location,
                None,
                point_id,
                cause,
                out,
            );
        }
    }

    fn failure(
        &mut self,
        at_ms: i64,
        failed_at_ms: i64,
        location: Option<String>,
        reason: String,
        out: &mut Output,
    ) {
        if !valid_time(at_ms)
            || !valid_time(failed_at_ms)
            || location
                .as_deref()
                .is_some_and(|l| self.spec.location(l).is_none())
        {
            self.event(
                out,
                at_ms,
                "failure.refused",
                "A failure report was refused: its time or location is not valid.".into(),
                json!({ "failed_at_ms": failed_at_ms, "location": location }),
                false,
            );
            return;
        }
        let cause = format!("failure at {failed_at_ms} ms: {}", quote(&reason));
        let location = location.or_else(|| Some(self.st.routed.clone()));
        self.initiate(
            at_ms,
            Trigger::Failure,
            failed_at_ms,
            location,
            None,
            None,
            cause,
            out,
        );
    }

    /// Seed 004's `initiateRollback`: idempotent while one is in progress.
    #[allow(clippy::too_many_arguments)]
    fn initiate(
        &mut self,
        at_ms: i64,
        trigger: Trigger,
        failure_ms: i64,
        excluded: Option<String>,
        target: Option<(Option<Target>, Option<String>)>,
        await_point: Option<u64>,
        cause: String,
        out: &mut Output,
    ) {
        let operator = trigger == Trigger::Operator;
        if let Some(rb) = &mut self.st.rollback {
            rb.repeats += 1;
            let (id, repeats) = (rb.id, rb.repeats);
            self.once(
                out,
                &format!("repeat:{id}"),
                at_ms,
                "rollback.in_progress",
                format!("Rollback {id} is in progress; {cause} is covered by it."),
                json!({ "rollback": id, "repeats": repeats, "trigger": trigger }),
                false,
            );
            return;
        }
        if !operator {
            if !self.spec.policy.auto_rollback {
                self.once(
                    out,
                    "manual",
                    at_ms,
                    "rollback.manual_only",
                    format!("{cause}; automatic rollback is off: the operator decides."),
                    json!({ "trigger": trigger }),
                    true,
                );
                return;
            }
            if !matches!(self.st.phase, Phase::Running) {
                self.once(out, "not_running", at_ms, "rollback.held",
                    format!("{cause}; the shadow is {:?}: no automatic rollback.", self.st.phase).to_lowercase(),
                    json!({ "trigger": trigger, "phase": self.st.phase, "pause_reason": self.st.pause_reason }), true);
                return;
            }
            let gap = self.spec.policy.min_rollback_gap.get().as_millis() as i64;
            if let Some(last) = self.st.last_auto_rollback_ms {
                if at_ms >= last && at_ms - last < gap {
                    self.once(out, "gap", at_ms, "rollback.gap",
                        format!("{cause}; the last automatic rollback was {} ms ago, within min_rollback_gap ({gap} ms).", at_ms - last),
                        json!({ "trigger": trigger, "since_last_ms": at_ms - last, "min_rollback_gap_ms": gap }), true);
                    return;
                }
            }
        } else if !self.running() {
            self.event(
                out,
                at_ms,
                "rollback.refused",
                format!("The shadow is {:?}: nothing is rolled back.", self.st.phase)
                    .to_lowercase(),
                json!({}),
                false,
            );
            return;
        }
        self.close("gap");
        self.close("manual");
        self.close("not_running");
        let (target_to, target_loc) = target.unwrap_or((None, None));
        let id = self.st.next_rollback;
        self.st.next_rollback += 1;
        let rb = Rollback {
            id,
            trigger,
            cause: cause.clone(),
            failure_ms,
            decided_ms: at_ms,
            step: RollbackStep::AwaitingPoint,
            target: target_to,
            location: target_loc,
            point: None,
            to: None,
            from: self.st.routed.clone(),
            excluded,
            tried: Vec::new(),
            route_attempts: 0,
            routing_since_ms: None,
            repeats: 0,
            merits: json!(self.merits()),
        };
        self.event(
            out,
            at_ms,
            "rollback.started",
            format!("Rollback {id} of {} starts: {cause}.", self.spec.name),
            json!({ "rollback": id, "trigger": trigger, "failure_ms": failure_ms, "from": rb.from, "merits": rb.merits }),
            false,
        );
        if !operator {
            self.st.last_auto_rollback_ms = Some(at_ms);
        }
        self.st.rollback = Some(rb);
        if await_point.is_some() && self.st.point_in_flight == await_point {
            self.event(out, at_ms, "rollback.awaiting_point",
                format!("Rollback {id} waits for the point in flight, taken before the predicted failure."),
                json!({ "rollback": id, "point_action": await_point }), false);
            return;
        }
        self.restore_next(at_ms, out);
    }

    /// Chooses the point and the location and sends the restore; fails the rollback when
    /// there is none (never acting on no data).
    fn restore_next(&mut self, at_ms: i64, out: &mut Output) {
        let Some(rb) = self.st.rollback.clone() else {
            return;
        };
        // The location: the operator's, else by merit.
        let location = match &rb.location {
            Some(l) => Some(l.clone()),
            None => {
                let merits = self.merits();
                let refs: Vec<(&str, Option<f64>)> =
                    merits.iter().map(|(id, m)| (id.as_str(), *m)).collect();
                merit::choose(
                    &refs,
                    &self.st.routed,
                    rb.excluded.as_deref(),
                    self.spec.merit.hysteresis,
                )
                .map(str::to_string)
            }
        };
        let Some(location) = location else {
            self.finish(at_ms, false, "no location has a merit above 0 (no observation of a healthy location): nothing is restored or routed".into(), "no_data", out);
            return;
        };
        // The point: the latest known at or before the failure, not tried yet.
        let (point, to) = match &rb.target {
            Some(Target::Point(p)) => match self.st.points.iter().find(|x| &x.id == p) {
                Some(x) if !rb.tried.contains(p) => (Some(x.clone()), RestoreTo::Point(p.clone())),
                // A point the engine does not know (thinned from its memory): the agent
                // decides whether it exists.
                None if rb.tried.is_empty() => (None, RestoreTo::Point(p.clone())),
                _ => {
                    self.finish(
                        at_ms,
                        false,
                        format!("point {} could not be restored", quote(p)),
                        "no_point",
                        out,
                    );
                    return;
                }
            },
            _ => {
                let cutoff = match &rb.target {
                    Some(Target::Time(t)) => (*t).min(rb.failure_ms),
                    _ => rb.failure_ms,
                };
                let found = self
                    .st
                    .points
                    .iter()
                    .rev()
                    .find(|x| x.consistent_at_ms <= cutoff && !rb.tried.contains(&x.id))
                    .cloned();
                match found {
                    None => {
                        self.finish(
                            at_ms,
                            false,
                            format!("no usable point at or before {cutoff} ms"),
                            "no_point",
                            out,
                        );
                        return;
                    }
                    // A transactional shadow replays the commits up to the failure too.
                    Some(x)
                        if self.spec.shadow_type == ShadowType::Transactional
                            && rb.tried.is_empty() =>
                    {
                        (Some(x), RestoreTo::Time(cutoff))
                    }
                    Some(x) => {
                        let id = x.id.clone();
                        (Some(x), RestoreTo::Point(id))
                    }
                }
            }
        };
        let rid = rb.id;
        let figures = json!({
            "rollback": rid, "location": location, "point": point, "to": to,
            "failure_ms": rb.failure_ms, "merits": self.merits(), "tried": rb.tried,
        });
        let (loc2, to2) = (location.clone(), to.clone());
        self.act(out, |id| Action::Restore {
            action_id: id,
            rollback: rid,
            location: loc2,
            to: to2,
        });
        if let Some(r) = &mut self.st.rollback {
            r.step = RollbackStep::Restoring;
            r.location = Some(location.clone());
            r.point = point.clone();
            r.to = Some(to.clone());
        }
        self.event(
            out,
            at_ms,
            "rollback.restoring",
            format!(
                "Rollback {rid} restores location {location} to {}.",
                match &to {
                    RestoreTo::Point(p) => format!("point {p}"),
                    RestoreTo::Time(t) => format!("the last commit at or before {t} ms"),
                }
            ),
            figures,
            false,
        );
    }

    fn route(&mut self, at_ms: i64, out: &mut Output) {
        let Some(rb) = self.st.rollback.clone() else {
            return;
        };
        let location = rb.location.clone().unwrap_or_default();
        let routed_somewhere =
            self.spec.routing.link.is_some() || self.spec.routing.proxy.is_some();
        if location == self.st.routed || !routed_somewhere {
            self.finish(at_ms, true, String::new(), "", out);
            return;
        }
        let rid = rb.id;
        let loc2 = location.clone();
        self.act(out, |id| Action::Route {
            action_id: id,
            rollback: Some(rid),
            location: loc2,
        });
        if let Some(r) = &mut self.st.rollback {
            r.step = RollbackStep::Routing;
            r.route_attempts += 1;
            r.routing_since_ms.get_or_insert(at_ms);
        }
        self.event(
            out,
            at_ms,
            "rollback.routing",
            format!(
                "Rollback {rid} routes {} from {} to {location}.",
                self.spec.name, self.st.routed
            ),
            json!({ "rollback": rid, "from": self.st.routed, "to": location }),
            false,
        );
    }

    /// Ends the rollback in progress: recorded, notified; a failed one pauses the engine.
    fn finish(&mut self, at_ms: i64, ok: bool, error: String, kind: &str, out: &mut Output) {
        let Some(rb) = self.st.rollback.take() else {
            return;
        };
        let figures = json!({
            "rollback": rb.id, "trigger": rb.trigger, "failure_ms": rb.failure_ms,
            "decide_to_done_ms": at_ms - rb.decided_ms, "from": rb.from,
            "route_ms": rb.routing_since_ms.map(|t| at_ms - t),
            "location": rb.location, "point": rb.point, "to": rb.to,
            "tried": rb.tried, "repeats": rb.repeats, "merits": rb.merits,
            "error": if ok { Value::Null } else { json!(error) }, "kind": kind,
        });
        let rec = RollbackRecord {
            id: rb.id,
            trigger: rb.trigger,
            cause: rb.cause.clone(),
            failure_ms: rb.failure_ms,
            decided_ms: rb.decided_ms,
            done_ms: at_ms,
            ok,
            from: rb.from.clone(),
            location: rb.location.clone(),
            point: rb.point.clone(),
            to: rb.to.clone(),
            error: (!ok).then(|| error.clone()),
            figures: figures.clone(),
        };
        self.st.history.push(rec.clone());
        if self.st.history.len() > MAX_HISTORY {
            self.st.history.remove(0);
        }
        self.close(&format!("repeat:{}", rb.id));
        if ok {
            self.event(
                out,
                at_ms,
                "rollback.completed",
                format!(
                    "Rollback {} of {} is done: location {} holds {} and is routed ({}).",
                    rb.id,
                    self.spec.name,
                    rb.location.as_deref().unwrap_or("?"),
                    match &rb.to {
                        Some(RestoreTo::Point(p)) => format!("point {p}"),
                        Some(RestoreTo::Time(t)) => format!("the data as of {t} ms"),
                        None => "?".into(),
                    },
                    rb.cause
                ),
                figures,
                false,
            );
        } else {
            let name = if kind.is_empty() {
                "rollback.failed".to_string()
            } else {
                format!("rollback.{kind}")
            };
            self.event(
                out,
                at_ms,
                &name,
                format!("Rollback {} of {} failed: {error}; automatic rollbacks pause until an operator resumes.", rb.id, self.spec.name),
                figures,
                true,
            );
            if self.st.phase == Phase::Running {
                self.st.phase = Phase::Paused;
                self.st.pause_reason = Some(format!("rollback {} failed: {error}", rb.id));
            }
        }
        if self.spec.webhook.is_some() {
            let body = json!({
                "shadow": self.spec.name, "host": self.spec.host,
                "event": if ok { "rollback.completed" } else { "rollback.failed" },
                "rollback": rec,
            });
            self.act(out, |id| Action::Notify {
                action_id: id,
                body,
            });
        }
        self.maybe_stop(at_ms, out);
    }

    fn done(
        &mut self,
        now_ms: i64,
        action_id: u64,
        ok: bool,
        output: Value,
        error: Option<String>,
        out: &mut Output,
    ) {
        let Some(action) = self.st.pending.remove(&action_id) else {
            return;
        };
        let error = error.unwrap_or_else(|| "no error given".into());
        match action {
            Action::Start { .. } => {
                if ok {
                    self.st.start_failures = 0;
                    if self.st.phase == Phase::Starting {
                        self.st.phase = Phase::Running;
                    }
                    self.event(
                        out,
                        now_ms,
                        "running",
                        format!("Shadow {} runs on {}.", self.spec.name, self.spec.host),
                        json!({ "output": output }),
                        false,
                    );
                    self.tick(now_ms, out);
                } else {
                    self.st.start_failures += 1;
                    let wait = self.backoff_ms(self.st.start_failures);
                    self.st.start_retry_at_ms = Some(now_ms.saturating_add(wait));
                    self.event(out, now_ms, "start.failed",
                        format!("Shadow {} could not start on {}: {}; retried in {wait} ms.", self.spec.name, self.spec.host, quote(&error)),
                        json!({ "error": error, "failures": self.st.start_failures, "retry_in_ms": wait }), true);
                }
            }
            Action::Stop { .. } => {
                let since = self.st.removing_since_ms.unwrap_or(now_ms);
                if !ok && now_ms.saturating_sub(since) < STOP_RETRY_FOR_MS {
                    // The agent may be away: its record would make it follow the shadow
                    // again when it comes back. Tell it again, later.
                    self.st.stop_failures += 1;
                    let wait = self.backoff_ms(self.st.stop_failures);
                    self.st.stop_retry_at_ms = Some(now_ms.saturating_add(wait));
                    self.event(out, now_ms, "stop.failed",
                        format!("Shadow {} did not stop on {}: {}; retried in {wait} ms (until {} h after the removal began).", self.spec.name, self.spec.host, quote(&error), STOP_RETRY_FOR_MS / 3_600_000),
                        json!({ "error": error, "failures": self.st.stop_failures, "retry_in_ms": wait }), true);
                    return;
                }
                if !ok {
                    self.event(
                        out,
                        now_ms,
                        "stop.failed",
                        format!(
                            "Shadow {} did not stop on {}: {}; it is removed all the same after {} tries (its agent, if it comes back, may follow it until its record STATE_DIR/shadows/{}.json is deleted).",
                            self.spec.name,
                            self.spec.host,
                            quote(&error),
                            self.st.stop_failures + 1,
                            self.spec.name
                        ),
                        json!({ "error": error, "failures": self.st.stop_failures + 1 }),
                        true,
                    );
                }
                self.st.stop_retry_at_ms = None;
                self.st.phase = Phase::Removed;
                self.event(
                    out,
                    now_ms,
                    "removed",
                    format!("Shadow {} is removed.", self.spec.name),
                    json!({}),
                    false,
                );
            }
            Action::Point { reason, .. } => {
                if self.st.point_in_flight == Some(action_id) {
                    self.st.point_in_flight = None;
                }
                let parsed = output
                    .get("point")
                    .cloned()
                    .and_then(|p| serde_json::from_value::<PointInfo>(p).ok())
                    .filter(|p| valid_time(p.consistent_at_ms));
                match (ok, parsed) {
                    (true, Some(p)) => {
                        self.close("point_failed");
                        self.event(out, now_ms, "point.taken",
                            format!("Point {} (#{}) of {} is consistent at {} ms ({}).", p.id, p.seq, self.spec.name, p.consistent_at_ms, reason.as_str()),
                            json!({ "point": p }), false);
                        // Kept in order of consistency time (a late answer is inserted).
                        if !self.st.points.iter().any(|x| x.id == p.id) {
                            let at = self.st.points.iter().rposition(|x| x.consistent_at_ms <= p.consistent_at_ms).map_or(0, |i| i + 1);
                            self.st.points.insert(at, p);
                            while self.st.points.len() > MAX_POINTS {
                                self.st.points.pop_front();
                            }
                        }
                    }
                    (true, None) => self.event(out, now_ms, "point.unreadable",
                        "The agent took a point but its answer names none readable; it is not counted.".into(),
                        json!({ "output": output }), true),
                    (false, _) => self.once(out, "point_failed", now_ms, "point.failed",
                        format!("A point of {} failed: {}.", self.spec.name, quote(&error)),
                        json!({ "error": error, "reason": reason }), true),
                }
                // The agent took the point itself: nobody follows the shadow there (it
                // restarted and lost its record of it). Start it again: a transactional
                // shadow logs no commit while nobody follows it.
                if ok
                    && output.get("following") == Some(&Value::Bool(false))
                    && matches!(self.st.phase, Phase::Running | Phase::Paused)
                    && !self
                        .st
                        .pending
                        .values()
                        .any(|a| matches!(a, Action::Start { .. }))
                {
                    self.act(out, |id| Action::Start { action_id: id });
                    self.event(
                        out,
                        now_ms,
                        "follower.lost",
                        format!(
                            "Nobody follows shadow {} on {} (the agent restarted without it); it is started again.",
                            self.spec.name, self.spec.host
                        ),
                        json!({}),
                        true,
                    );
                }
                if self
                    .st
                    .rollback
                    .as_ref()
                    .is_some_and(|r| r.step == RollbackStep::AwaitingPoint)
                {
                    self.restore_next(now_ms, out);
                }
            }
            Action::Restore { rollback, .. } => {
                if self.st.rollback.as_ref().map(|r| r.id) != Some(rollback) {
                    return;
                }
                if ok {
                    self.event(
                        out,
                        now_ms,
                        "rollback.restored",
                        format!("Rollback {rollback} restored its location."),
                        json!({ "rollback": rollback, "output": output }),
                        false,
                    );
                    self.route(now_ms, out);
                    return;
                }
                let unusable = output.get("point_unusable").and_then(Value::as_bool) == Some(true);
                let rb = self.st.rollback.as_mut().expect("checked above");
                let tried_point = match &rb.to {
                    Some(RestoreTo::Point(p)) => Some(p.clone()),
                    _ => rb.point.as_ref().map(|p| p.id.clone()),
                };
                if let Some(p) = &tried_point {
                    rb.tried.push(p.clone());
                }
                let tries = rb.tried.len() as u32;
                self.event(out, now_ms, "rollback.restore_failed",
                    format!("Rollback {rollback}: the restore failed: {}.", quote(&error)),
                    json!({ "rollback": rollback, "error": error, "point_unusable": unusable, "tried": tries }), true);
                if unusable && tries < MAX_POINT_TRIES && tried_point.is_some() {
                    if let Some(p) = tried_point {
                        self.st.points.retain(|x| x.id != p);
                    }
                    self.restore_next(now_ms, out);
                } else {
                    self.finish(
                        now_ms,
                        false,
                        format!("the restore failed: {error}"),
                        "failed",
                        out,
                    );
                }
            }
            Action::Route {
                rollback, location, ..
            } => {
                if ok {
                    let from = std::mem::replace(&mut self.st.routed, location.clone());
                    self.event(out, now_ms, "routed",
                        format!("{} is routed to {location} (from {from}).", self.spec.name),
                        json!({ "from": from, "to": location, "rollback": rollback, "output": output }), false);
                    if rollback.is_some() && self.st.rollback.as_ref().map(|r| r.id) == rollback {
                        self.finish(now_ms, true, String::new(), "", out);
                    }
                } else if rollback.is_some() && self.st.rollback.as_ref().map(|r| r.id) == rollback
                {
                    let attempts = self.st.rollback.as_ref().map_or(0, |r| r.route_attempts);
                    self.event(
                        out,
                        now_ms,
                        "route.failed",
                        format!(
                            "Routing to {location} failed: {} (attempt {attempts}).",
                            quote(&error)
                        ),
                        json!({ "error": error, "attempts": attempts, "location": location }),
                        true,
                    );
                    if attempts < MAX_ROUTE_ATTEMPTS {
                        self.route(now_ms, out);
                    } else {
                        self.finish(now_ms, false, format!("location {location} is restored but routing to it failed {attempts} times: {error}"), "failed", out);
                    }
                } else {
                    self.event(
                        out,
                        now_ms,
                        "route.failed",
                        format!("Routing to {location} failed: {}.", quote(&error)),
                        json!({ "error": error, "location": location }),
                        true,
                    );
                }
            }
            Action::Notify { .. } => {}
        }
        self.maybe_stop(now_ms, out);
    }

    fn command(&mut self, now_ms: i64, c: Command, out: &mut Output) {
        match c {
            Command::TakePoint { reason } => {
                if self.can_point() {
                    self.point(now_ms, PointReason::OnDemand, out);
                    self.event(
                        out,
                        now_ms,
                        "operator.point",
                        format!("The operator asked for a point: {}.", quote(&reason)),
                        json!({ "reason": reason }),
                        false,
                    );
                } else {
                    self.event(
                        out,
                        now_ms,
                        "operator.point_refused",
                        format!(
                            "No point now: {}.",
                            if self.st.point_in_flight.is_some() {
                                "one is in flight"
                            } else {
                                "the shadow is not running"
                            }
                        ),
                        json!({ "reason": reason }),
                        false,
                    );
                }
            }
            Command::Rollback {
                to,
                location,
                reason,
            } => {
                let cutoff = match &to {
                    Some(Target::Time(t)) => *t,
                    _ => now_ms,
                };
                let cause = format!("the operator asked: {}", quote(&reason));
                self.initiate(
                    now_ms,
                    Trigger::Operator,
                    cutoff,
                    None,
                    Some((to, location)),
                    None,
                    cause,
                    out,
                );
            }
            Command::Pause { reason } => {
                if self.st.phase == Phase::Running {
                    self.st.phase = Phase::Paused;
                    self.st.pause_reason = Some(format!("the operator: {reason}"));
                }
                self.event(
                    out,
                    now_ms,
                    "paused",
                    format!(
                        "Automatic rollbacks of {} are paused: {}.",
                        self.spec.name,
                        quote(&reason)
                    ),
                    json!({ "reason": reason }),
                    false,
                );
            }
            Command::Resume { reason } => {
                if self.st.phase == Phase::Paused {
                    self.st.phase = Phase::Running;
                    self.st.pause_reason = None;
                }
                self.st.open.clear();
                self.event(
                    out,
                    now_ms,
                    "resumed",
                    format!(
                        "{} decides on its own again: {}.",
                        self.spec.name,
                        quote(&reason)
                    ),
                    json!({ "reason": reason }),
                    false,
                );
            }
            Command::Remove { reason } => {
                if matches!(self.st.phase, Phase::Removing | Phase::Removed) {
                    return;
                }
                self.st.phase = Phase::Removing;
                self.st.removing_since_ms = Some(now_ms);
                self.event(
                    out,
                    now_ms,
                    "removing",
                    format!("{} is being removed: {}.", self.spec.name, quote(&reason)),
                    json!({ "reason": reason }),
                    false,
                );
                self.maybe_stop(now_ms, out);
            }
        }
    }

    /// How long to wait before sending a start or a stop again after `failures` in a row:
    /// `points_every × 2^failures`, at most [`MAX_START_BACKOFF_MS`].
    fn backoff_ms(&self, failures: u32) -> i64 {
        let every = self.spec.points_every.get().as_millis() as i64;
        every
            .saturating_mul(1i64 << failures.min(20))
            .min(MAX_START_BACKOFF_MS)
    }

    /// Removing: once nothing else is in flight, stop the shadow on the agent.
    fn maybe_stop(&mut self, now_ms: i64, out: &mut Output) {
        if self.st.phase != Phase::Removing || self.st.rollback.is_some() {
            return;
        }
        // A failed stop waits for its retry (sent by `tick`).
        if self.st.stop_retry_at_ms.is_some_and(|t| now_ms < t) {
            return;
        }
        if self
            .st
            .pending
            .values()
            .any(|a| !matches!(a, Action::Notify { .. }))
        {
            return;
        }
        self.act(out, |id| Action::Stop { action_id: id });
    }
}
