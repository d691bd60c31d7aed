//! The configuration-change engine: one change (a set of settings) applied to one or more
//! PostgreSQL instances of a role, canary first, each watched against its own baseline and
//! reverted to its last good snapshot when an anomaly is traced to the change.
//!
//! The server's `config` task and the local runner (`bellwether_pg::local`) both step it.
//!
//! Per target, in order: `trial` (a scratch cluster's trial start with the instance's
//! configuration plus the change; a refusal ends the task before anything touches an instance)
//! → `snapshot` (`pg_read_settings`: the last good configuration, and the catalog that gives
//! each setting's context) → `apply` (`pg_apply`, with restart when a setting's context needs
//! it) → `bake` (the instance's metrics against the baseline taken strictly before the apply's
//! `applied_at_ms`, with `bellwether_detect::threshold`) → on an anomaly: trace the impacted
//! settings through the graph, score the risk (`bellwether_config::risk::anomaly_risk`); at or
//! above the threshold: `snapshot` the bad state, `revert` (the snapshot's values for the
//! changed keys, in an order safe for restart-context settings, one restart at most), then
//! `confirm` recovery (metrics back in the band). A target that passes its bake is promoted and
//! the next starts; a canary that is reverted stops the change for the rest.
//!
//! Pure: no IO, no clock; every input carries its time. Missing data never reverts and never
//! promotes: it pauses the bake clock and raises a `no_data` event.
//!
//! How it decides (docs/config-apply.md has the long form):
//!
//! - **Trials first.** With `plan.trial`, every target's trial runs (one at a time) before any
//!   instance is touched, so a refusal really ends the change with nothing changed. The
//!   snapshot then checks the change against the instance's own catalog (unknown or internal
//!   settings, `Catalog::validate`) and refuses it there too.
//! - **Baseline.** The apply waits until every rule metric has `min_baseline_samples` samples
//!   within `baseline_ms` and the newest is fresh. The baseline is the data samples up to the
//!   newest sample known when the apply was dispatched *and* strictly before the apply's
//!   `applied_at_ms`; samples in between (a restart's transition) are in neither side. The
//!   samples are kept and replayed through `bellwether_detect::threshold::MultiWatch` on each
//!   step, so a late sample from before the apply joins the baseline whatever order results
//!   and samples arrive in.
//! - **Bake clock in sample time.** The bake counts the time between consecutive post-apply
//!   data samples (every rule metric present, instance up), leaving out gaps longer than
//!   `WatchSpec::no_data_after_ms`. No samples, or samples without the watched metrics, stop
//!   the clock and raise `no_data` once per episode; they are never evidence either way.
//! - **Down is not no data.** Samples that arrive saying `up` = 0 mean the agent is alive and
//!   the instance does not answer; after the apply, that lasting the longest rule's `for` is an
//!   anomaly of severity 1 that is reverted whatever the risk score (a change that stops the
//!   server must be undone; the change is the one thing that happened to it). No samples at
//!   all is different: the observer (agent, network) may be what is broken, and reverting
//!   blind would act on no evidence, so it stays `no_data`. A failed or timed-out apply (the
//!   change may be partly in place, or a restart did not come back) and an apply after which
//!   settings still wait for a restart are likewise reverted; an apply the agent refused to
//!   run changed nothing and only fails the change.
//! - **Anomaly → trace → risk.** A breached rule (bellwether-detect's severity > 0) is
//!   traced through `context.graph.impacts(changed)` and scored by
//!   `bellwether_config::risk::anomaly_risk`; at or above `risk_threshold` the target is
//!   reverted, below it the engine keeps watching (traced again only when the breached
//!   metrics change or the severity rises by 0.1). A target is promoted once its bake is
//!   done and no metric is mid-excursion.
//! - **Revert.** The bad state is snapshotted, then one `pg_apply` sets the snapshot's values
//!   for the changed keys ([`revert_values`]: a reset when the old value did not come from
//!   `postgresql.auto.conf`), ordered so that what a key `requires` comes first
//!   ([`revert_order`]), with `restart` when any changed key's context is `postmaster`.
//!   Recovery is every rule metric in its band against the pre-apply baseline for
//!   `confirm_ms`, or `not_recovered` after `confirm_timeout_ms`.

use std::collections::BTreeMap;
use std::time::Duration;

use bellwether_config::cochange::ChangeOutcome;
use bellwether_config::graph::{EdgeKind, Graph};
use bellwether_config::risk::{
    anomaly_risk, from_factors, host_factor, AnomalyEvidence, Breach, Control, RiskFactor, Timing,
};
use bellwether_config::setting::{ApplyKind, Catalog, Context};
use bellwether_config::simulate::StartTrial;
use bellwether_config::snapshot::{ChangeSource, ConfigChange, Snapshot};
use bellwether_detect::threshold::{MultiWatch, ThresholdConfig, WatchState};
use bellwether_model::wire::ActionOutcome;
use bellwether_model::ActionSpec;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub mod plan;

pub use plan::{ConfigPlan, MetricRule, Target, WatchSpec};

/// What the server (or the local runner) gives the engine at the start besides the plan.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineContext {
    /// The graph around the changed keys (the stored graph of the role, or shipped rules plus
    /// probing in local mode).
    pub graph: Graph,
    /// Outcomes of earlier changes of these instances' role, for the risk's history factor.
    pub history: Vec<ChangeOutcome>,
}

/// One observation.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Time passed.
    Tick,
    /// One sample of target `target`'s instance metrics (`bellwether_config::metrics` names →
    /// value) at `at_ms`; an absent metric is no data.
    Sample {
        target: usize,
        at_ms: i64,
        metrics: BTreeMap<String, f64>,
    },
    /// One sample of control `control`'s metrics (`plan.controls[control]`: an untouched peer
    /// sampled over the same intervals as the targets), the same names as [`Input::Sample`].
    /// An index outside the plan's controls is ignored.
    ControlSample {
        control: usize,
        at_ms: i64,
        metrics: BTreeMap<String, f64>,
    },
    /// An action the engine dispatched finished; `output` is the built-in's structured output.
    Done {
        action_id: u64,
        outcome: ActionOutcome,
        output: Option<serde_json::Value>,
    },
    /// An operator's command.
    Command(Command),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "command")]
pub enum Command {
    /// Stop after what is in flight; applied targets stay as they are.
    Abort { reason: String },
    /// Revert every applied target to its snapshot now.
    Revert { reason: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    Trial,
    Snapshot,
    Apply,
    /// The snapshot of the bad state taken before a revert.
    RevertSnapshot,
    Revert,
}

impl ActionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Trial => "trial",
            ActionKind::Snapshot => "snapshot",
            ActionKind::Apply => "apply",
            ActionKind::RevertSnapshot => "revert_snapshot",
            ActionKind::Revert => "revert",
        }
    }
}

/// An action for the agent on `host` (or the local runner).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Action {
    /// Unique within the change; re-sent on resume while pending.
    pub id: u64,
    pub target: usize,
    pub host: String,
    pub kind: ActionKind,
    pub spec: ActionSpec,
}

/// A decision or observation with its reason and figures. Stored as `config.NAME`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub at_ms: i64,
    /// `trial_passed`, `trial_refused`, `snapshot` (figures: the snapshot), `changed` (figures:
    /// a `bellwether_config::snapshot::ConfigChange`), `applied`, `no_data`, `anomaly`, `traced`
    /// (figures: impacted settings with paths, the risk with its factors), `reverted`,
    /// `recovered`, `not_recovered`, `promoted`, `completed`, `rolled_back`, `aborted`,
    /// `failed`.
    pub name: String,
    pub host: Option<String>,
    pub reason: String,
    pub figures: serde_json::Value,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Output {
    pub actions: Vec<Action>,
    pub events: Vec<Event>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Running,
    /// Every target passed its bake.
    Completed,
    /// An anomaly was traced to the change and the change was reverted (recovered or not).
    RolledBack,
    /// The simulator/trial refused it; nothing touched an instance.
    Refused,
    Aborted,
    /// An action failed in a way the engine cannot go on from (a revert that failed).
    Failed,
}

impl Phase {
    pub fn is_final(self) -> bool {
        self != Phase::Running
    }
}

/// One configuration change in flight. The whole value is serde state the server persists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigChangeEngine {
    pub plan: ConfigPlan,
    pub context: EngineContext,
    pub phase: Phase,
    /// Implementation-defined per-target state (owner: confengine).
    pub state: serde_json::Value,
}

/// The most samples kept per target after its apply (the oldest are folded into the bake
/// clock and dropped): about an hour at the agent's 1 s sampling.
pub const MAX_SAMPLES: usize = 4096;
/// How far the trace follows the graph from the changed keys.
pub const TRACE_DEPTH: usize = 3;
/// A traced anomaly is traced again only when the breached metrics change or its severity
/// rises by at least this much.
const RETRACE_SEVERITY_STEP: f64 = 0.1;
/// ... or when the `host` factor (the control's verdict on the host) moved by this much.
const RETRACE_HOST_STEP: f64 = 0.25;
/// The most samples kept per contemporaneous control (the oldest are dropped).
pub const MAX_CONTROL_SAMPLES: usize = 2 * MAX_SAMPLES;

/// Where one target stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Not started.
    Waiting,
    /// Its scratch trial is running.
    Trial,
    /// Its trial passed; it waits for its turn.
    TrialPassed,
    /// Reading its settings (the snapshot).
    Snapshot,
    /// Waiting for enough baseline samples before the apply.
    Baseline,
    /// `pg_apply` in flight.
    Apply,
    /// Applied and watched.
    Bake,
    /// Reading the bad state before the revert.
    RevertSnapshot,
    /// The revert's `pg_apply` in flight.
    Revert,
    /// Reverted; waiting for the metrics to come back.
    Confirm,
    /// Passed its bake: the change stays.
    Promoted,
    /// Reverted and back in the band.
    Recovered,
    /// Reverted, but not back in the band within the confirm timeout.
    NotRecovered,
    /// Its trial or its instance's settings refused the change; nothing touched.
    Refused,
    /// An action failed.
    Failed,
    /// Never touched (the change stopped before its turn).
    Skipped,
    /// Left as it was when the operator aborted.
    Aborted,
}

/// A sample as kept: only finite values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Kept {
    at_ms: i64,
    metrics: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct TargetState {
    stage: Stage,
    /// When the stage began (this engine's clock).
    since_ms: i64,
    snapshot: Option<Snapshot>,
    /// The changed keys whose context needs a restart (from the snapshot's catalog).
    restart_keys: Vec<String>,
    /// What the revert sets, in its order (`None` = reset to the default).
    revert_to: Vec<(String, Option<String>)>,
    /// The newest sample time known when the apply was dispatched: the baseline ends there
    /// (and strictly before `applied_at_ms`), so a restart's transition is in neither side.
    baseline_last_ms: Option<i64>,
    apply_dispatched_ms: Option<i64>,
    applied_at_ms: Option<i64>,
    samples: Vec<Kept>,
    /// Bake time of post-apply samples dropped by the cap.
    baked_dropped_ms: i64,
    /// Time of the newest post-apply sample dropped by the cap.
    dropped_last_ms: Option<i64>,
    baked_ms: i64,
    /// An open no-data episode was reported.
    no_data_open: bool,
    /// The last trace: breached metrics and severity.
    traced: Option<(Vec<String>, f64)>,
    /// Why it is being reverted (the traced anomaly, the failed apply, the operator).
    revert_cause: Option<Value>,
    revert_requested: Option<String>,
    bad_snapshot: Option<Snapshot>,
    revert_done_ms: Option<i64>,
    reverted_at_ms: Option<i64>,
    recovered_at_ms: Option<i64>,
    promoted_at_ms: Option<i64>,
    note: Option<String>,
    /// The `host` factor's log-odds at the last trace.
    #[serde(default)]
    traced_host: f64,
    /// A single-metric anomaly scored at or above the threshold waits for its second
    /// reading: the newest data sample's time when it was traced.
    #[serde(default)]
    confirming: Option<i64>,
    /// The current single-metric breach outlasted its second reading (reset when every
    /// metric is back in its band).
    #[serde(default)]
    confirmed: bool,
    /// The `peer` factor's log-odds at the last trace (the contemporaneous control's verdict).
    #[serde(default)]
    traced_peer: f64,
}

impl TargetState {
    fn new(now_ms: i64) -> TargetState {
        TargetState {
            stage: Stage::Waiting,
            since_ms: now_ms,
            snapshot: None,
            restart_keys: Vec::new(),
            revert_to: Vec::new(),
            baseline_last_ms: None,
            apply_dispatched_ms: None,
            applied_at_ms: None,
            samples: Vec::new(),
            baked_dropped_ms: 0,
            dropped_last_ms: None,
            baked_ms: 0,
            no_data_open: false,
            traced: None,
            revert_cause: None,
            revert_requested: None,
            bad_snapshot: None,
            revert_done_ms: None,
            reverted_at_ms: None,
            recovered_at_ms: None,
            promoted_at_ms: None,
            note: None,
            traced_host: 0.0,
            confirming: None,
            confirmed: false,
            traced_peer: 0.0,
        }
    }

    fn set_stage(&mut self, stage: Stage, now_ms: i64) {
        self.stage = stage;
        self.since_ms = now_ms;
        self.no_data_open = false;
    }

    /// Nothing more will be judged on this target.
    fn stage_is_final(&self) -> bool {
        matches!(
            self.stage,
            Stage::Promoted
                | Stage::Recovered
                | Stage::NotRecovered
                | Stage::Refused
                | Stage::Failed
                | Stage::Skipped
                | Stage::Aborted
        )
    }

    fn reverting(&self) -> bool {
        matches!(
            self.stage,
            Stage::RevertSnapshot | Stage::Revert | Stage::Confirm
        )
    }
}

/// Why the change stopped going forward.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "halt")]
enum Halt {
    Refused { reason: String },
    Failed { reason: String },
    RolledBack { reason: String },
    Abort { reason: String },
    Revert { reason: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct State {
    next_id: u64,
    pending: Vec<Action>,
    targets: Vec<TargetState>,
    halt: Option<Halt>,
    root_cause: Option<Value>,
    started_ms: i64,
    finished_ms: Option<i64>,
    final_reason: Option<String>,
    /// Per contemporaneous control (`plan.controls`, by index), its samples. Absent from
    /// state saved before controls existed: none.
    #[serde(default)]
    controls: Vec<ControlSeries>,
}

/// One contemporaneous control's samples (only finite values of rule metrics and `up`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct ControlSeries {
    samples: Vec<Kept>,
}

/// What the watch saw in one target's samples.
#[derive(Debug, Default)]
struct Judgement {
    /// The baseline has enough samples of every rule metric.
    baseline_ready: bool,
    baselines: BTreeMap<String, f64>,
    severity: f64,
    /// The breached metrics with their reasons (bellwether_detect's).
    reasons: Vec<Value>,
    breached: Vec<String>,
    /// A metric is out of its band but not yet for its duration.
    pending: bool,
    /// Post-apply bake time covered by data (sample time, gaps of no data left out).
    baked_ms: i64,
    /// The newest data sample judged (post-apply or post-revert).
    last_data_ms: Option<i64>,
    /// `up` = 0 without a break since this time (the instance does not answer).
    down_since: Option<i64>,
    down_last: Option<i64>,
    /// First sample time of the current run of data samples with no metric breached (confirm).
    in_band_since: Option<i64>,
    in_band_last: Option<i64>,
    /// The control (`ref_latency_ms`) over the baseline and over the breach's window.
    control: Option<Control>,
    /// Confirm samples out of band while the control said the host was disturbed (skipped).
    host_skipped: usize,
}

fn is_down(s: &Kept) -> bool {
    s.metrics
        .get(bellwether_config::metrics::UP)
        .is_some_and(|v| *v < 0.5)
}

impl ConfigChangeEngine {
    /// Starts the change: the first target's trial (or snapshot when the plan skips trials).
    pub fn start(plan: ConfigPlan, context: EngineContext, now_ms: i64) -> (Self, Output) {
        let st = State {
            next_id: 1,
            pending: Vec::new(),
            targets: plan
                .targets
                .iter()
                .map(|_| TargetState::new(now_ms))
                .collect(),
            halt: None,
            root_cause: None,
            started_ms: now_ms,
            finished_ms: None,
            final_reason: None,
            controls: vec![ControlSeries::default(); plan.controls.len()],
        };
        let mut e = ConfigChangeEngine {
            plan,
            context,
            phase: Phase::Running,
            state: Value::Null,
        };
        let mut out = Output::default();
        let mut st = st;
        if let Err(err) = e.plan.validate() {
            st.halt = Some(Halt::Failed {
                reason: format!("the plan is not valid: {err}"),
            });
            for t in &mut st.targets {
                t.set_stage(Stage::Skipped, now_ms);
            }
        }
        e.drive(&mut st, now_ms, &mut out);
        e.save(&st);
        (e, out)
    }

    pub fn step(&mut self, input: Input, now_ms: i64) -> Output {
        let mut out = Output::default();
        let Some(mut st) = self.load() else {
            return out;
        };
        if self.phase.is_final() && st.pending.is_empty() {
            return out;
        }
        match input {
            Input::Tick => {}
            Input::Sample {
                target,
                at_ms,
                metrics,
            } => self.on_sample(&mut st, target, at_ms, metrics),
            Input::ControlSample {
                control,
                at_ms,
                metrics,
            } => self.on_control_sample(&mut st, control, at_ms, metrics),
            Input::Done {
                action_id,
                outcome,
                output,
            } => self.on_done(&mut st, action_id, outcome, output, now_ms, &mut out),
            Input::Command(c) => self.on_command(&mut st, c, now_ms, &mut out),
        }
        self.drive(&mut st, now_ms, &mut out);
        self.save(&st);
        out
    }

    /// Final and no action in flight.
    pub fn is_settled(&self) -> bool {
        self.phase.is_final() && self.load().is_none_or(|s| s.pending.is_empty())
    }

    /// Dispatched actions without a result yet (a resumed driver re-sends them; ids are
    /// stable).
    pub fn pending(&self) -> Vec<Action> {
        self.load().map(|s| s.pending).unwrap_or_default()
    }

    /// The stage of each target (for drivers and tests).
    pub fn stages(&self) -> Vec<Stage> {
        self.load()
            .map(|s| s.targets.iter().map(|t| t.stage).collect())
            .unwrap_or_default()
    }

    /// The status for people and `--output json`: per target its state, snapshot, timings,
    /// and for a rollback the root-cause change, the traced settings and the risk.
    pub fn report(&self) -> Value {
        let Some(st) = self.load() else {
            return json!({ "phase": self.phase, "error": "the engine state cannot be read" });
        };
        let targets: Vec<Value> = self
            .plan
            .targets
            .iter()
            .zip(&st.targets)
            .enumerate()
            .map(|(i, (t, s))| {
                json!({
                    "index": i,
                    "canary": i == 0,
                    "host": t.host,
                    "database": t.database,
                    "stage": s.stage,
                    "snapshot_id": s.snapshot.as_ref().map(|x| x.id.clone()),
                    "snapshot_checksum": s.snapshot.as_ref().map(|x| x.checksum.clone()),
                    "bad_snapshot_id": s.bad_snapshot.as_ref().map(|x| x.id.clone()),
                    "restart": !s.restart_keys.is_empty(),
                    "restart_keys": s.restart_keys,
                    "revert_to": s.revert_to,
                    "applied_at_ms": s.applied_at_ms,
                    "baked_ms": s.baked_ms,
                    "promoted_at_ms": s.promoted_at_ms,
                    "reverted_at_ms": s.reverted_at_ms,
                    "recovered_at_ms": s.recovered_at_ms,
                    "recovered_after_ms": match (s.applied_at_ms, s.recovered_at_ms) {
                        (Some(a), Some(r)) => Some(r - a),
                        _ => None,
                    },
                    "revert_cause": s.revert_cause,
                    "note": s.note,
                })
            })
            .collect();
        json!({
            "phase": self.phase,
            "description": self.plan.description,
            "author": self.plan.author,
            "set": self.plan.set,
            "risk_threshold": self.plan.risk_threshold,
            "started_ms": st.started_ms,
            "finished_ms": st.finished_ms,
            "reason": st.final_reason,
            "root_cause": st.root_cause,
            "pending": st.pending.iter().map(|a| json!({"id": a.id, "host": a.host, "kind": a.kind, "action": a.spec.describe()})).collect::<Vec<_>>(),
            "targets": targets,
        })
    }

    fn load(&self) -> Option<State> {
        serde_json::from_value(self.state.clone()).ok()
    }

    fn save(&mut self, st: &State) {
        self.state = serde_json::to_value(st).unwrap_or(Value::Null);
    }

    fn host(&self, i: usize) -> Option<String> {
        self.plan.targets.get(i).map(|t| t.host.clone())
    }

    fn event(
        &self,
        out: &mut Output,
        now_ms: i64,
        name: &str,
        target: Option<usize>,
        reason: String,
        figures: Value,
    ) {
        out.events.push(Event {
            at_ms: now_ms,
            name: name.to_string(),
            host: target.and_then(|i| self.host(i)),
            reason,
            figures,
        });
    }

    fn dispatch(
        &self,
        st: &mut State,
        out: &mut Output,
        target: usize,
        kind: ActionKind,
        spec: ActionSpec,
    ) {
        let action = Action {
            id: st.next_id,
            target,
            host: self.plan.targets[target].host.clone(),
            kind,
            spec,
        };
        st.next_id += 1;
        st.pending.push(action.clone());
        out.actions.push(action);
    }

    fn database(&self, i: usize) -> String {
        self.plan.targets[i].database.clone()
    }

    // ---- inputs ------------------------------------------------------------------------

    fn on_sample(&self, st: &mut State, target: usize, at_ms: i64, metrics: BTreeMap<String, f64>) {
        let Some(t) = st.targets.get_mut(target) else {
            return;
        };
        let metrics: BTreeMap<String, f64> = metrics
            .into_iter()
            .filter(|(k, v)| {
                v.is_finite()
                    && (k == bellwether_config::metrics::UP
                        || k == bellwether_config::metrics::REF_LATENCY_MS
                        || self.plan.watch.rules.iter().any(|r| &r.metric == k))
            })
            .collect();
        if t.dropped_last_ms.is_some_and(|d| at_ms <= d) {
            // Older than what the cap already folded into the bake clock.
            return;
        }
        match t.samples.binary_search_by_key(&at_ms, |s| s.at_ms) {
            // One sample per time: the first one stays (a re-sent batch changes nothing).
            Ok(_) => return,
            Err(pos) => t.samples.insert(pos, Kept { at_ms, metrics }),
        }
        self.prune(t);
    }

    /// A contemporaneous control's sample: kept (rule metrics and `up`, finite values only)
    /// for the `peer` comparison; never acted on.
    fn on_control_sample(
        &self,
        st: &mut State,
        control: usize,
        at_ms: i64,
        metrics: BTreeMap<String, f64>,
    ) {
        if control >= self.plan.controls.len() {
            return;
        }
        if st.controls.len() < self.plan.controls.len() {
            st.controls
                .resize(self.plan.controls.len(), ControlSeries::default());
        }
        let metrics: BTreeMap<String, f64> = metrics
            .into_iter()
            .filter(|(k, v)| {
                v.is_finite()
                    && (k == bellwether_config::metrics::UP
                        || self.plan.watch.rules.iter().any(|r| &r.metric == k))
            })
            .collect();
        // What the targets still need: their oldest kept sample, and a baseline's worth
        // before the newest sample for a target whose baseline is still to come.
        let newest = st
            .controls
            .iter()
            .flat_map(|c| c.samples.last().map(|s| s.at_ms))
            .chain(std::iter::once(at_ms))
            .max()
            .unwrap_or(at_ms);
        let keep_from = st
            .targets
            .iter()
            .filter(|t| !t.stage_is_final())
            .filter_map(|t| t.samples.first().map(|s| s.at_ms))
            .chain(std::iter::once(
                newest.saturating_sub(2 * self.plan.watch.baseline_ms as i64),
            ))
            .min()
            .unwrap_or(i64::MIN);
        let c = &mut st.controls[control];
        if at_ms < keep_from {
            return;
        }
        match c.samples.binary_search_by_key(&at_ms, |s| s.at_ms) {
            Ok(_) => return,
            Err(pos) => c.samples.insert(pos, Kept { at_ms, metrics }),
        }
        c.samples.retain(|s| s.at_ms >= keep_from);
        if c.samples.len() > MAX_CONTROL_SAMPLES {
            let drop = c.samples.len() - MAX_CONTROL_SAMPLES;
            c.samples.drain(..drop);
        }
    }

    /// The contemporaneous control's verdict on target `i`'s breach (`j`): for each counted
    /// breached metric, its mean over the rule's `for` up to the newest sample judged against
    /// its baseline (the treated ratio), the same for every control over the same window and
    /// the same baseline window (the median over the controls with data: the control ratio),
    /// and the residual, treated / control: the change's own effect once what the peers saw
    /// at the same time is taken out. A metric is explained when the controls were out of
    /// the same band in the same direction over that window and the residual is back inside
    /// it. `None` without controls in the plan.
    fn peer(&self, st: &State, i: usize, j: &Judgement) -> Option<PeerVerdict> {
        if self.plan.controls.is_empty() {
            return None;
        }
        let w = &self.plan.watch;
        let t = &st.targets[i];
        let applied = t.applied_at_ms?;
        let last = j.last_data_ms?;
        let cut = baseline_cut(t).unwrap_or(applied - 1);
        let base_from = cut - w.baseline_ms as i64;
        let warm_until = self.bake_start(t).unwrap_or(applied);
        let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len().max(1) as f64;
        let mut metrics = Vec::new();
        for reason in &j.reasons {
            let Some(m) = reason["metric"].as_str() else {
                continue;
            };
            let Some(rule) = w.rules.iter().find(|r| r.metric == m) else {
                continue;
            };
            if rule.weight <= 0.0 {
                continue;
            }
            let from = (last - rule.for_ms as i64).max(warm_until);
            let in_window = |s: &&Kept| s.at_ms >= from && s.at_ms <= last && !is_down(s);
            let treated: Vec<f64> = t
                .samples
                .iter()
                .filter(in_window)
                .filter_map(|s| s.metrics.get(m).copied())
                .collect();
            let treated_baseline = j.baselines.get(m).copied().unwrap_or(f64::NAN);
            let treated_ratio = mean(&treated) / treated_baseline;
            let mut ratios = Vec::new();
            // The controls with a baseline and data in the window, with their baseline mean.
            let mut with_data: Vec<(&ControlSeries, f64)> = Vec::new();
            for c in st.controls.iter().take(self.plan.controls.len()) {
                let base: Vec<f64> = c
                    .samples
                    .iter()
                    .filter(|s| s.at_ms > base_from && s.at_ms <= cut && !is_down(s))
                    .filter_map(|s| s.metrics.get(m).copied())
                    .collect();
                let during: Vec<f64> = c
                    .samples
                    .iter()
                    .filter(in_window)
                    .filter_map(|s| s.metrics.get(m).copied())
                    .collect();
                let b = mean(&base);
                if base.len() >= w.min_baseline_samples
                    && during.len() >= bellwether_config::risk::CONTROL_MIN_SAMPLES
                    && b.is_finite()
                    && b > 0.0
                {
                    ratios.push(mean(&during) / b);
                    with_data.push((c, b));
                }
            }
            let mut verdict = PeerMetric::judge(
                rule,
                from,
                last,
                treated_ratio,
                median(&mut ratios),
                ratios.len(),
                self.plan.controls.len(),
            );
            if !verdict.explained && !with_data.is_empty() {
                // A disturbance the hosts share does not end at the same sample on each: a
                // lock is released, a neighbour's burst ends, a second apart. What is left for
                // the change is a breach like any other only once it has lasted the rule's
                // `for` by itself. So a sample of this window at which the controls showed the
                // same breach and the residual was inside the band (judged sample by sample,
                // each control's sample nearest in time, within the sampling interval)
                // explains this reading too; the change's own part is judged once the window
                // has moved past it.
                let near = w.expected_interval_ms() as i64;
                let shared = t
                    .samples
                    .iter()
                    .filter(in_window)
                    .filter_map(|s| Some((s.at_ms, s.metrics.get(m).copied()?)))
                    .filter_map(|(at, v)| {
                        let mut cs: Vec<f64> = with_data
                            .iter()
                            .filter_map(|(c, b)| Some(c.nearest(m, at, near)? / b))
                            .collect();
                        let n = cs.len();
                        let one = PeerMetric::judge(
                            rule,
                            at,
                            at,
                            v / treated_baseline,
                            median(&mut cs),
                            n,
                            self.plan.controls.len(),
                        );
                        one.explained.then_some((at, one))
                    })
                    .next_back();
                if let Some((at, one)) = shared {
                    verdict.explained = true;
                    verdict.shared_until_ms = Some(at);
                    verdict.why = format!(
                        "{}; but {} ms before this window's end the controls still showed the \
                         same breach ({}): the change's own part has not yet lasted the rule's \
                         `for` ({} ms) by itself",
                        verdict.why,
                        last - at,
                        one.why,
                        rule.for_ms
                    );
                }
            }
            metrics.push(verdict);
        }
        if metrics.is_empty() {
            return None;
        }
        Some(PeerVerdict { metrics })
    }

    /// Drops what can no longer matter: before the apply, samples older than twice the
    /// baseline window; after it, the oldest post-apply samples beyond [`MAX_SAMPLES`] (their
    /// bake time is kept).
    fn prune(&self, t: &mut TargetState) {
        let w = &self.plan.watch;
        match baseline_cut(t) {
            None => {
                let newest = t.samples.last().map_or(i64::MIN, |s| s.at_ms);
                let keep_from = newest.saturating_sub(2 * w.baseline_ms as i64);
                t.samples.retain(|s| s.at_ms >= keep_from);
            }
            Some(base_cut) => {
                let base_from = base_cut.saturating_sub(w.baseline_ms as i64);
                t.samples.retain(|s| s.at_ms > base_from);
                let cut = t.applied_at_ms.unwrap_or(base_cut + 1);
                let post = t.samples.iter().filter(|s| s.at_ms >= cut).count();
                if post > MAX_SAMPLES {
                    let drop = post - MAX_SAMPLES;
                    let first_post = t.samples.iter().position(|s| s.at_ms >= cut).unwrap_or(0);
                    let removed: Vec<Kept> =
                        t.samples.drain(first_post..first_post + drop).collect();
                    if let Some(applied) = t.applied_at_ms {
                        let warm = self.bake_start(t).unwrap_or(applied);
                        let mut prev = t.dropped_last_ms.unwrap_or(applied).max(warm);
                        for s in &removed {
                            if self.is_data(s) && s.at_ms >= warm {
                                t.baked_dropped_ms += self.gap(prev, s.at_ms);
                                prev = s.at_ms;
                            }
                        }
                        t.dropped_last_ms = removed.last().map(|s| s.at_ms).or(t.dropped_last_ms);
                    } else {
                        t.dropped_last_ms = removed.last().map(|s| s.at_ms).or(t.dropped_last_ms);
                    }
                }
            }
        }
    }

    /// Bake time between two data samples: the gap, or nothing when it is longer than the
    /// no-data limit (the bake clock stops while there is no data).
    fn gap(&self, prev: i64, at: i64) -> i64 {
        let g = at - prev;
        if g > 0 && g <= self.plan.watch.no_data_after_ms() as i64 {
            g
        } else {
            0
        }
    }

    /// When the bake's judging starts: the apply's time, or the end of the restart warm-up
    /// (`restart_warmup_ms` after it) when the apply restarted the server.
    fn bake_start(&self, t: &TargetState) -> Option<i64> {
        let applied = t.applied_at_ms?;
        Some(if t.restart_keys.is_empty() {
            applied
        } else {
            applied.saturating_add(self.plan.watch.restart_warmup_ms as i64)
        })
    }

    /// A sample with every rule metric and an instance that answered.
    fn is_data(&self, s: &Kept) -> bool {
        !is_down(s)
            && self
                .plan
                .watch
                .rules
                .iter()
                .all(|r| s.metrics.contains_key(&r.metric))
    }

    fn on_done(
        &self,
        st: &mut State,
        action_id: u64,
        outcome: ActionOutcome,
        output: Option<Value>,
        now_ms: i64,
        out: &mut Output,
    ) {
        let Some(pos) = st.pending.iter().position(|a| a.id == action_id) else {
            // Unknown, or its result already came: ignored.
            return;
        };
        let action = st.pending.remove(pos);
        let i = action.target;
        match action.kind {
            ActionKind::Trial => self.on_trial(st, i, outcome, output, now_ms, out),
            ActionKind::Snapshot => self.on_snapshot(st, i, outcome, output, now_ms, out),
            ActionKind::Apply => self.on_apply(st, i, outcome, output, now_ms, out),
            ActionKind::RevertSnapshot => {
                self.on_revert_snapshot(st, i, outcome, output, now_ms, out)
            }
            ActionKind::Revert => self.on_revert(st, i, outcome, output, now_ms, out),
        }
    }

    fn on_trial(
        &self,
        st: &mut State,
        i: usize,
        outcome: ActionOutcome,
        output: Option<Value>,
        now_ms: i64,
        out: &mut Output,
    ) {
        let trial: Option<StartTrial> = output.and_then(|o| serde_json::from_value(o).ok());
        let t = &mut st.targets[i];
        match (outcome.is_ok(), trial) {
            (true, Some(tr)) if tr.started => {
                t.set_stage(Stage::TrialPassed, now_ms);
                self.event(out, now_ms, "trial_passed", Some(i),
                    format!("a scratch cluster started with the instance's configuration plus the change in {} ms", tr.ms),
                    json!({ "trial": tr, "database": self.database(i) }));
            }
            (true, Some(tr)) => {
                t.set_stage(Stage::Refused, now_ms);
                let reason = format!(
                    "a scratch cluster with the change would not start: {}",
                    first_line(&tr.message)
                );
                self.event(
                    out,
                    now_ms,
                    "trial_refused",
                    Some(i),
                    reason.clone(),
                    json!({ "trial": tr, "database": self.database(i), "set": self.plan.set }),
                );
                halt(st, Halt::Refused { reason });
            }
            (true, None) => {
                t.set_stage(Stage::Failed, now_ms);
                let reason =
                    "the trial gave no readable result (expected a StartTrial)".to_string();
                self.event(
                    out,
                    now_ms,
                    "failed",
                    Some(i),
                    reason.clone(),
                    json!({ "action": "trial" }),
                );
                halt(st, Halt::Failed { reason });
            }
            (false, _) => {
                t.set_stage(Stage::Failed, now_ms);
                let reason = format!("the trial could not run: {outcome}; nothing was changed");
                self.event(
                    out,
                    now_ms,
                    "failed",
                    Some(i),
                    reason.clone(),
                    json!({ "action": "trial", "outcome": outcome }),
                );
                halt(st, Halt::Failed { reason });
            }
        }
    }

    fn on_snapshot(
        &self,
        st: &mut State,
        i: usize,
        outcome: ActionOutcome,
        output: Option<Value>,
        now_ms: i64,
        out: &mut Output,
    ) {
        let catalog: Option<Catalog> = output.and_then(|o| serde_json::from_value(o).ok());
        let stopping = st.halt.is_some();
        let t = &mut st.targets[i];
        let catalog = match (outcome.is_ok(), catalog) {
            (true, Some(c)) => c,
            (ok, _) => {
                t.set_stage(Stage::Failed, now_ms);
                let reason = if ok {
                    "the snapshot gave no readable settings catalog; nothing was changed"
                        .to_string()
                } else {
                    format!("the snapshot could not be taken: {outcome}; nothing was changed")
                };
                self.event(
                    out,
                    now_ms,
                    "failed",
                    Some(i),
                    reason.clone(),
                    json!({ "action": "snapshot", "outcome": outcome }),
                );
                halt(st, Halt::Failed { reason });
                return;
            }
        };
        let target = &self.plan.targets[i];
        let snap = Snapshot::new(
            format!("{}/{}@{}", target.host, target.database, now_ms),
            target.host.clone(),
            target.database.clone(),
            now_ms,
            format!("before change: {}", self.plan.description),
            catalog.values(),
        );
        self.event(
            out,
            now_ms,
            "snapshot",
            Some(i),
            format!(
                "the last good configuration of {} ({} settings)",
                target.database,
                snap.values.len()
            ),
            json!({ "snapshot": snap }),
        );
        t.snapshot = Some(snap);
        // What the instance says about the change before anything touches it.
        let mut problems = Vec::new();
        for (k, v) in &self.plan.set {
            match catalog.get(k) {
                None => problems.push(format!("unknown setting {k:?} on this instance")),
                Some(s) if s.context == Context::Internal => {
                    problems.push(format!("{k} cannot be changed (context internal)"))
                }
                Some(_) => {
                    if let Some(v) = v {
                        if let Err(e) = catalog.validate(k, v) {
                            problems.push(e.to_string());
                        }
                    }
                }
            }
        }
        if !problems.is_empty() {
            t.set_stage(Stage::Refused, now_ms);
            let reason = format!(
                "the instance's settings refuse the change: {}",
                problems.join("; ")
            );
            self.event(
                out,
                now_ms,
                "trial_refused",
                Some(i),
                reason.clone(),
                json!({ "problems": problems, "database": target.database }),
            );
            halt(st, Halt::Refused { reason });
            return;
        }
        t.restart_keys = self
            .plan
            .set
            .iter()
            .filter(|(k, _)| {
                catalog.get(k).and_then(|s| s.context.apply_kind()) == Some(ApplyKind::Restart)
            })
            .map(|(k, _)| k.clone())
            .collect();
        t.revert_to = revert_order(
            &revert_values(&self.plan.set, &catalog),
            &self.context.graph,
        );
        if stopping {
            t.set_stage(Stage::Skipped, now_ms);
        } else {
            t.set_stage(Stage::Baseline, now_ms);
        }
    }

    fn on_apply(
        &self,
        st: &mut State,
        i: usize,
        outcome: ActionOutcome,
        output: Option<Value>,
        now_ms: i64,
        out: &mut Output,
    ) {
        let report = output.as_ref().and_then(ApplyOut::read);
        if let ActionOutcome::Refused { reason } = &outcome {
            // The agent did not run it: nothing changed.
            let t = &mut st.targets[i];
            t.set_stage(Stage::Failed, now_ms);
            let why = format!("the agent refused the apply ({reason}); nothing was changed");
            self.event(
                out,
                now_ms,
                "failed",
                Some(i),
                why.clone(),
                json!({ "action": "apply", "outcome": outcome }),
            );
            halt(st, Halt::Failed { reason: why });
            return;
        }
        let applied_at = report
            .as_ref()
            .and_then(|r| r.applied_at_ms)
            .unwrap_or(now_ms);
        let t = &mut st.targets[i];
        t.applied_at_ms = Some(applied_at);
        t.set_stage(Stage::Bake, now_ms);
        if !outcome.is_ok() {
            let reason = format!("the apply failed ({outcome}); the change may be partly in place, so it is reverted");
            self.event(
                out,
                now_ms,
                "anomaly",
                Some(i),
                reason.clone(),
                json!({ "severity": 1.0, "cause": "apply_failed", "outcome": outcome }),
            );
            let cause = self.trace(
                st,
                i,
                Trace::forced(vec![json!({ "cause": "apply_failed", "text": reason })]),
                now_ms,
                out,
            );
            self.begin_revert(st, i, cause, now_ms, out);
            return;
        }
        let old = t
            .snapshot
            .as_ref()
            .map(|s| s.values.clone())
            .unwrap_or_default();
        let mut figures =
            json!({ "applied_at_ms": applied_at, "restart": !t.restart_keys.is_empty() });
        if !t.restart_keys.is_empty() {
            figures["restart_warmup_ms"] = json!(self.plan.watch.restart_warmup_ms);
        }
        if let Some(r) = &report {
            figures["report"] = r.raw.clone();
        }
        self.event(
            out,
            now_ms,
            "applied",
            Some(i),
            format!(
                "{} set on {}{}",
                describe(&self.plan.set),
                self.database(i),
                if t.restart_keys.is_empty() {
                    " with a reload".to_string()
                } else {
                    format!(" with a restart ({})", t.restart_keys.join(", "))
                }
            ),
            figures,
        );
        for (k, v) in &self.plan.set {
            let new = report
                .as_ref()
                .and_then(|r| r.values.get(k).cloned())
                .or_else(|| v.clone());
            let change = self.change(
                i,
                k,
                old.get(k).cloned(),
                new,
                ChangeSource::Apply,
                applied_at,
                self.plan.author.clone(),
                self.plan.description.clone(),
            );
            self.event(
                out,
                now_ms,
                "changed",
                Some(i),
                format!("{k} changed by the apply"),
                json!(change),
            );
        }
        let pending_restart: Vec<String> = report.map(|r| r.pending_restart).unwrap_or_default();
        if !pending_restart.is_empty() {
            let reason = format!("after the apply {} still wait for a restart: the change is not in force, so it is reverted", pending_restart.join(", "));
            self.event(out, now_ms, "anomaly", Some(i), reason.clone(),
                json!({ "severity": 1.0, "cause": "pending_restart", "pending_restart": pending_restart }));
            let cause = self.trace(
                st,
                i,
                Trace::forced(vec![json!({ "cause": "pending_restart", "text": reason })]),
                now_ms,
                out,
            );
            self.begin_revert(st, i, cause, now_ms, out);
            return;
        }
        if let Some(reason) = st.targets[i].revert_requested.clone() {
            self.begin_revert(
                st,
                i,
                json!({ "cause": "operator", "reason": reason }),
                now_ms,
                out,
            );
        } else if matches!(st.halt, Some(Halt::Abort { .. })) {
            st.targets[i].set_stage(Stage::Aborted, now_ms);
        }
    }

    fn on_revert_snapshot(
        &self,
        st: &mut State,
        i: usize,
        outcome: ActionOutcome,
        output: Option<Value>,
        now_ms: i64,
        out: &mut Output,
    ) {
        let catalog: Option<Catalog> = output.and_then(|o| serde_json::from_value(o).ok());
        let target = &self.plan.targets[i];
        let t = &mut st.targets[i];
        match (outcome.is_ok(), catalog) {
            (true, Some(c)) => {
                let snap = Snapshot::new(
                    format!("{}/{}@{}", target.host, target.database, now_ms),
                    target.host.clone(),
                    target.database.clone(),
                    now_ms,
                    format!("before revert: {}", self.plan.description),
                    c.values(),
                );
                self.event(
                    out,
                    now_ms,
                    "snapshot",
                    Some(i),
                    format!("the configuration of {} before the revert", target.database),
                    json!({ "snapshot": snap }),
                );
                t.bad_snapshot = Some(snap);
            }
            _ => {
                // The bad state could not be read (often: the instance is down). The revert
                // goes on: putting the last good values back does not depend on it.
                t.note = Some(format!(
                    "the snapshot before the revert failed ({outcome}); reverted without it"
                ));
            }
        }
        self.dispatch_revert(st, i, now_ms, out);
    }

    fn dispatch_revert(&self, st: &mut State, i: usize, now_ms: i64, out: &mut Output) {
        let t = &mut st.targets[i];
        t.set_stage(Stage::Revert, now_ms);
        let settings = if t.revert_to.is_empty() {
            // No snapshot catalog (cannot happen after an apply, which needs one): reset.
            self.plan
                .set
                .iter()
                .map(|(k, _)| (k.clone(), None))
                .collect()
        } else {
            t.revert_to.clone()
        };
        let restart = !t.restart_keys.is_empty();
        let spec = ActionSpec::PgApply {
            database: self.database(i),
            settings,
            restart,
            timeout_ms: None,
        };
        self.dispatch(st, out, i, ActionKind::Revert, spec);
    }

    fn on_revert(
        &self,
        st: &mut State,
        i: usize,
        outcome: ActionOutcome,
        output: Option<Value>,
        now_ms: i64,
        out: &mut Output,
    ) {
        let report = output.as_ref().and_then(ApplyOut::read);
        if !outcome.is_ok() {
            st.targets[i].set_stage(Stage::Failed, now_ms);
            let reason =
                format!("the revert failed: {outcome}; the instance may still carry the change");
            self.event(
                out,
                now_ms,
                "failed",
                Some(i),
                reason.clone(),
                json!({ "action": "revert", "outcome": outcome }),
            );
            st.halt = Some(Halt::Failed { reason });
            return;
        }
        let at = report
            .as_ref()
            .and_then(|r| r.applied_at_ms)
            .unwrap_or(now_ms);
        let t = &mut st.targets[i];
        t.reverted_at_ms = Some(at);
        t.revert_done_ms = Some(now_ms);
        t.set_stage(Stage::Confirm, now_ms);
        let bad = t.bad_snapshot.as_ref().map(|s| s.values.clone());
        let restart = !t.restart_keys.is_empty();
        let revert_to = t.revert_to.clone();
        let snapshot_id = t.snapshot.as_ref().map(|s| s.id.clone());
        self.event(out, now_ms, "reverted", Some(i),
            format!("{} put back on {} from snapshot {}{}", describe(&revert_to), self.database(i),
                snapshot_id.as_deref().unwrap_or("-"), if restart { " with a restart" } else { " with a reload" }),
            json!({ "reverted_at_ms": at, "settings": revert_to, "restart": restart, "snapshot_id": snapshot_id,
                    "report": report.as_ref().map(|r| r.raw.clone()) }));
        for (k, v) in &revert_to {
            let new = report
                .as_ref()
                .and_then(|r| r.values.get(k).cloned())
                .or_else(|| v.clone());
            let old = bad.as_ref().and_then(|b| b.get(k).cloned());
            let change = self.change(
                i,
                k,
                old,
                new,
                ChangeSource::Revert,
                at,
                "bellwether".into(),
                format!("revert of: {}", self.plan.description),
            );
            self.event(
                out,
                now_ms,
                "changed",
                Some(i),
                format!("{k} put back by the revert"),
                json!(change),
            );
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn change(
        &self,
        i: usize,
        key: &str,
        old: Option<String>,
        new: Option<String>,
        source: ChangeSource,
        at: i64,
        author: String,
        description: String,
    ) -> ConfigChange {
        ConfigChange {
            host: self.plan.targets[i].host.clone(),
            source_name: self.plan.targets[i].database.clone(),
            key: key.to_string(),
            old,
            new,
            author,
            time_ms: at,
            description,
            source,
        }
    }

    fn on_command(&self, st: &mut State, c: Command, now_ms: i64, out: &mut Output) {
        if self.phase.is_final() {
            return;
        }
        match c {
            Command::Abort { reason } => {
                if matches!(
                    st.halt,
                    Some(
                        Halt::Abort { .. }
                            | Halt::Revert { .. }
                            | Halt::RolledBack { .. }
                            | Halt::Failed { .. }
                            | Halt::Refused { .. }
                    )
                ) {
                    // Already stopping or reverting: the abort changes nothing.
                    return;
                }
                for t in &mut st.targets {
                    if t.stage == Stage::Bake {
                        t.set_stage(Stage::Aborted, now_ms);
                    }
                }
                st.halt = Some(Halt::Abort { reason });
            }
            Command::Revert { reason } => {
                if matches!(
                    st.halt,
                    Some(Halt::Revert { .. } | Halt::Failed { .. } | Halt::Refused { .. })
                ) {
                    return;
                }
                st.halt = Some(Halt::Revert {
                    reason: reason.clone(),
                });
                for i in 0..st.targets.len() {
                    let t = &mut st.targets[i];
                    match t.stage {
                        Stage::Apply => t.revert_requested = Some(reason.clone()),
                        Stage::Bake | Stage::Promoted => self.begin_revert(
                            st,
                            i,
                            json!({ "cause": "operator", "reason": reason }),
                            now_ms,
                            out,
                        ),
                        Stage::Aborted if t.applied_at_ms.is_some() => self.begin_revert(
                            st,
                            i,
                            json!({ "cause": "operator", "reason": reason }),
                            now_ms,
                            out,
                        ),
                        _ => {}
                    }
                }
            }
        }
    }

    // ---- the revert --------------------------------------------------------------------

    fn begin_revert(&self, st: &mut State, i: usize, cause: Value, now_ms: i64, out: &mut Output) {
        let t = &mut st.targets[i];
        if t.reverting() || matches!(t.stage, Stage::Recovered | Stage::NotRecovered) {
            return;
        }
        t.revert_cause = Some(cause);
        t.set_stage(Stage::RevertSnapshot, now_ms);
        let spec = ActionSpec::PgReadSettings {
            database: self.database(i),
        };
        self.dispatch(st, out, i, ActionKind::RevertSnapshot, spec);
    }

    // ---- driving -----------------------------------------------------------------------

    /// Judges what the samples say, moves targets on, dispatches the next action, and
    /// settles the phase.
    fn drive(&mut self, st: &mut State, now_ms: i64, out: &mut Output) {
        if self.phase.is_final() {
            return;
        }
        for i in 0..st.targets.len() {
            match st.targets[i].stage {
                Stage::Bake => self.judge_bake(st, i, now_ms, out),
                Stage::Confirm => self.judge_confirm(st, i, now_ms, out),
                _ => {}
            }
        }
        if st.halt.is_none() {
            self.forward(st, now_ms, out);
        } else {
            // Stopping: targets that were waiting will not be touched.
            for t in &mut st.targets {
                if matches!(
                    t.stage,
                    Stage::Waiting | Stage::TrialPassed | Stage::Baseline
                ) {
                    t.set_stage(Stage::Skipped, now_ms);
                }
            }
        }
        self.settle(st, now_ms, out);
    }

    fn forward(&self, st: &mut State, now_ms: i64, out: &mut Output) {
        if !st.pending.is_empty() {
            return;
        }
        let n = st.targets.len();
        if self.plan.trial {
            if let Some(i) = st.targets.iter().position(|t| t.stage == Stage::Waiting) {
                st.targets[i].set_stage(Stage::Trial, now_ms);
                let spec = ActionSpec::PgTrial {
                    database: self.database(i),
                    settings: self.plan.set.clone(),
                    timeout_ms: None,
                };
                self.dispatch(st, out, i, ActionKind::Trial, spec);
                return;
            }
        }
        let Some(i) = (0..n).find(|&i| st.targets[i].stage != Stage::Promoted) else {
            return;
        };
        match st.targets[i].stage {
            Stage::Waiting | Stage::TrialPassed => {
                st.targets[i].set_stage(Stage::Snapshot, now_ms);
                let spec = ActionSpec::PgReadSettings {
                    database: self.database(i),
                };
                self.dispatch(st, out, i, ActionKind::Snapshot, spec);
            }
            Stage::Baseline => self.try_apply(st, i, now_ms, out),
            _ => {}
        }
    }

    /// Dispatches the apply once the baseline has enough fresh samples of every rule metric.
    fn try_apply(&self, st: &mut State, i: usize, now_ms: i64, out: &mut Output) {
        let w = &self.plan.watch;
        let t = &mut st.targets[i];
        let newest = t.samples.last().map(|s| s.at_ms);
        let fresh = newest.is_some_and(|n| now_ms - n <= w.no_data_after_ms() as i64);
        let ready = newest.is_some_and(|n| {
            let from = n - w.baseline_ms as i64;
            w.rules.iter().all(|r| {
                t.samples
                    .iter()
                    .filter(|s| s.at_ms > from && !is_down(s) && s.metrics.contains_key(&r.metric))
                    .count()
                    >= w.min_baseline_samples
            })
        });
        if !(ready && fresh) {
            let quiet_since = newest.unwrap_or(t.since_ms).max(t.since_ms);
            if now_ms - quiet_since > w.no_data_after_ms() as i64 && !t.no_data_open {
                t.no_data_open = true;
                let reason = format!(
                    "no samples of {} for {:.1}s: the apply waits for a baseline ({} samples in {:.0}s)",
                    self.database(i), (now_ms - quiet_since) as f64 / 1000.0, w.min_baseline_samples, w.baseline_ms as f64 / 1000.0);
                self.event(
                    out,
                    now_ms,
                    "no_data",
                    Some(i),
                    reason,
                    json!({ "stage": "baseline", "last_sample_ms": newest }),
                );
            }
            return;
        }
        t.no_data_open = false;
        t.baseline_last_ms = newest;
        t.apply_dispatched_ms = Some(now_ms);
        t.set_stage(Stage::Apply, now_ms);
        let spec = ActionSpec::PgApply {
            database: self.database(i),
            settings: self.plan.set.clone(),
            restart: !t.restart_keys.is_empty(),
            timeout_ms: None,
        };
        self.dispatch(st, out, i, ActionKind::Apply, spec);
    }

    /// Replays the target's samples through `bellwether_detect`: the baseline from the data
    /// samples up to `baseline_last_ms` and strictly before `applied_at_ms`, frozen, then the
    /// samples from `from_ms` on judged against it. In the bake (`from_ms` = the apply) after
    /// a restart, the samples of the restart warm-up are not judged and add no bake time; an
    /// instance that does not answer is down in it all the same.
    fn judge(&self, t: &TargetState, from_ms: i64) -> Judgement {
        let w = &self.plan.watch;
        let mut j = Judgement::default();
        let Some(applied) = t.applied_at_ms else {
            return j;
        };
        let cut = baseline_cut(t).unwrap_or(applied - 1);
        let configs = w.rules.iter().map(|r| {
            (
                r.metric.clone(),
                ThresholdConfig::new(Duration::from_millis(w.baseline_ms), r.percent, r.direction)
                    .with_min_duration(Duration::from_millis(r.for_ms))
                    .with_abs_floor(r.floor())
                    .with_min_baseline_samples(w.min_baseline_samples),
                r.weight,
            )
        });
        let Ok(mut mw) = MultiWatch::new(configs) else {
            return j;
        };
        let base_from = cut - w.baseline_ms as i64;
        for s in t
            .samples
            .iter()
            .filter(|s| s.at_ms > base_from && s.at_ms <= cut && !is_down(s))
        {
            for (m, v) in &s.metrics {
                let _ = mw.observe(m, s.at_ms, *v);
            }
        }
        let warming = mw.freeze_all();
        j.baseline_ready = warming.is_empty();
        let ctl = bellwether_config::metrics::REF_LATENCY_MS;
        let ctl_base: Vec<f64> = t
            .samples
            .iter()
            .filter(|s| s.at_ms > base_from && s.at_ms <= cut && !is_down(s))
            .filter_map(|s| s.metrics.get(ctl).copied())
            .collect();
        let ctl_base_mean = (ctl_base.len() >= bellwether_config::risk::CONTROL_MIN_SAMPLES)
            .then(|| ctl_base.iter().sum::<f64>() / ctl_base.len() as f64)
            .filter(|m| *m > 0.0);
        // In the confirm (after a revert), a sample whose control says the host is disturbed
        // is no evidence either way: a breach on it does not end the run of in-band samples,
        // and it does not add to it.
        let confirming = from_ms != applied;
        let host_disturbed = |s: &Kept| {
            confirming
                && ctl_base_mean.is_some_and(|b| {
                    s.metrics
                        .get(ctl)
                        .is_some_and(|v| *v > b * (1.0 + bellwether_config::risk::CONTROL_MARGIN))
                })
        };
        for r in &w.rules {
            if let Some(b) = mw.watch(&r.metric).and_then(|x| x.baseline()) {
                j.baselines.insert(r.metric.clone(), b);
            }
        }
        if !j.baseline_ready {
            return j;
        }
        let mut last_states: BTreeMap<String, WatchState> = BTreeMap::new();
        let warm_until = if from_ms == applied {
            self.bake_start(t).unwrap_or(applied)
        } else {
            from_ms
        };
        let mut prev_data = t
            .dropped_last_ms
            .filter(|_| from_ms == applied)
            .unwrap_or(from_ms)
            .max(warm_until);
        let mut baked = if from_ms == applied {
            t.baked_dropped_ms
        } else {
            0
        };
        for s in t.samples.iter().filter(|s| s.at_ms >= from_ms) {
            if is_down(s) {
                j.down_since.get_or_insert(s.at_ms);
                j.down_last = Some(s.at_ms);
                j.in_band_since = None;
                continue;
            }
            if s.at_ms < warm_until {
                // The restart's warm-up: the instance answers, but what it shows is the
                // restart's transient (cold caches, clients reconnecting), not the change.
                if self.is_data(s) {
                    j.down_since = None;
                    j.last_data_ms = Some(s.at_ms);
                }
                continue;
            }
            // Recovered is the mirror of failed: no metric out of its band for its `for`
            // duration. A blip shorter than that (Pending) neither fails a bake nor resets the
            // confirm window.
            let mut all_normal = true;
            for (m, v) in &s.metrics {
                if let Some(Ok(o)) = mw.observe(m, s.at_ms, *v) {
                    if o.state.is_breached() {
                        all_normal = false;
                    }
                    last_states.insert(m.clone(), o.state);
                }
            }
            if self.is_data(s) {
                j.down_since = None;
                baked += self.gap(prev_data, s.at_ms);
                prev_data = s.at_ms;
                j.last_data_ms = Some(s.at_ms);
                if all_normal {
                    j.in_band_since.get_or_insert(s.at_ms);
                    j.in_band_last = Some(s.at_ms);
                } else if host_disturbed(s) {
                    j.host_skipped += 1;
                } else {
                    j.in_band_since = None;
                }
            }
        }
        j.baked_ms = baked;
        let sev = mw.severity();
        j.severity = sev.score;
        j.breached = sev.reasons.iter().map(|r| r.metric.clone()).collect();
        j.reasons = sev
            .reasons
            .iter()
            .map(|r| json!({ "metric": r.metric, "value": r.value, "baseline": r.baseline, "deviation": r.deviation,
                             "for_ms": r.for_ms, "severity": r.severity, "weight": r.weight, "text": r.to_string() }))
            .collect();
        j.pending = last_states
            .values()
            .any(|s| matches!(s, WatchState::Pending { .. }));
        // The control over the baseline and over the breach's latest stretch (the shortest
        // rule's `for`: what the host was doing while the metric is out of its band now, so
        // a host that was disturbed earlier in a long breach no longer excuses it).
        let window = w.rules.iter().map(|r| r.for_ms).min().unwrap_or(0) as i64;
        if let (false, Some(last)) = (sev.reasons.is_empty(), j.last_data_ms) {
            let mean = |xs: Vec<f64>| (xs.iter().sum::<f64>() / xs.len().max(1) as f64, xs.len());
            let (baseline, baseline_samples) = mean(ctl_base);
            let (during, during_samples) = mean(
                t.samples
                    .iter()
                    .filter(|s| {
                        s.at_ms >= warm_until && s.at_ms >= last - window && s.at_ms <= last
                    })
                    .filter(|s| !is_down(s))
                    .filter_map(|s| s.metrics.get(ctl).copied())
                    .collect(),
            );
            j.control = Some(Control {
                metric: ctl.to_string(),
                baseline,
                during,
                baseline_samples,
                during_samples,
            });
        }
        j
    }

    fn judge_bake(&self, st: &mut State, i: usize, now_ms: i64, out: &mut Output) {
        let w = &self.plan.watch;
        let Some(applied) = st.targets[i].applied_at_ms else {
            return;
        };
        let j = self.judge(&st.targets[i], applied);
        {
            let t = &mut st.targets[i];
            t.baked_ms = j.baked_ms;
        }
        // An instance that does not answer after the change: the change is the only thing
        // that happened to it, so it is an anomaly of maximal severity.
        let down_for = w.rules.iter().map(|r| r.for_ms).max().unwrap_or(0) as i64;
        if let (Some(since), Some(last)) = (j.down_since, j.down_last) {
            if last - since >= down_for {
                let reason = format!(
                    "{} does not answer (up = 0) for {:.1}s after the apply",
                    self.database(i),
                    (last - since) as f64 / 1000.0
                );
                self.event(out, now_ms, "anomaly", Some(i), reason.clone(),
                    json!({ "severity": 1.0, "cause": "down", "down_since_ms": since, "applied_at_ms": applied }));
                let cause = self.trace(st, i, Trace::forced(vec![json!({ "metric": "up", "value": 0.0, "for_ms": last - since, "text": reason })]), now_ms, out);
                self.begin_revert(st, i, cause, now_ms, out);
                return;
            }
        }
        if !j.baseline_ready {
            let t = &mut st.targets[i];
            if !t.no_data_open && now_ms - t.since_ms > w.no_data_after_ms() as i64 {
                t.no_data_open = true;
                let reason = format!(
                    "the baseline of {} before the apply has too few samples; the bake waits",
                    self.database(i)
                );
                self.event(
                    out,
                    now_ms,
                    "no_data",
                    Some(i),
                    reason,
                    json!({ "stage": "bake", "baselines": j.baselines }),
                );
            }
            return;
        }
        let host = j
            .control
            .as_ref()
            .and_then(host_factor)
            .map_or(0.0, |f| f.log_odds);
        let peer = if j.breached.is_empty() {
            None
        } else {
            self.peer(st, i, &j)
        };
        let peer_log_odds = peer.as_ref().map_or(0.0, |p| p.factor(&j.reasons).log_odds);
        if j.breached.is_empty() {
            let t = &mut st.targets[i];
            t.confirmed = false;
            if let (Some(c), Some(last)) = (t.confirming, j.last_data_ms) {
                if last > c {
                    // The second reading is back in its band: the breach did not outlast it.
                    t.confirming = None;
                    t.traced = None;
                    t.traced_host = 0.0;
                    t.traced_peer = 0.0;
                    self.event(out, now_ms, "unconfirmed", Some(i),
                        format!("the second reading of {} after the anomaly is back in its band: kept, and watching on",
                            self.database(i)),
                        json!({ "traced_at_sample_ms": c, "sample_ms": last, "baselines": j.baselines, "control": control_json(j.control.as_ref()) }));
                }
            }
        } else {
            let t = &st.targets[i];
            let retrace = match (&t.traced, t.confirming) {
                // Waiting for the second reading: retraced once it came.
                (_, Some(c)) => j.last_data_ms.is_some_and(|l| l > c),
                (None, None) => true,
                (Some((b, s)), None) => {
                    *b != j.breached
                        || j.severity >= s + RETRACE_SEVERITY_STEP
                        || (host - t.traced_host).abs() >= RETRACE_HOST_STEP
                        || (peer_log_odds - t.traced_peer).abs() >= RETRACE_HOST_STEP
                }
            };
            if retrace {
                let counted = j
                    .reasons
                    .iter()
                    .filter(|r| r["weight"].as_f64().is_none_or(|w| w > 0.0))
                    .count();
                let t = &mut st.targets[i];
                if t.confirming.is_some() {
                    // Its second reading is still out of its band.
                    t.confirmed = true;
                    t.confirming = None;
                }
                let confirm_first = counted <= 1 && !t.confirmed;
                let text: Vec<&str> = j
                    .reasons
                    .iter()
                    .filter_map(|r| r["text"].as_str())
                    .collect();
                let reason = format!("severity {:.2}: {}", j.severity, text.join("; "));
                self.event(out, now_ms, "anomaly", Some(i), reason,
                    json!({ "severity": j.severity, "reasons": j.reasons, "baselines": j.baselines, "applied_at_ms": applied }));
                let cause = self.trace(
                    st,
                    i,
                    Trace {
                        severity: j.severity,
                        reasons: j.reasons.clone(),
                        forced: false,
                        control: j.control.clone(),
                        confirm_first,
                        peer,
                    },
                    now_ms,
                    out,
                );
                let t = &mut st.targets[i];
                t.traced = Some((j.breached.clone(), j.severity));
                t.traced_host = host;
                t.traced_peer = peer_log_odds;
                if cause["decision"] == "confirm" {
                    t.confirming = j.last_data_ms;
                } else if cause["decision"] == "revert" {
                    self.begin_revert(st, i, cause, now_ms, out);
                    return;
                }
            }
        }
        // No data: the bake clock (sample time) stops by itself; say so once per episode.
        let last = j.last_data_ms.unwrap_or(applied).max(applied);
        let t = &mut st.targets[i];
        if now_ms - last > w.no_data_after_ms() as i64 {
            if !t.no_data_open {
                t.no_data_open = true;
                let reason = format!(
                    "no samples of {} for {:.1}s: the bake clock stops at {:.1}s of {:.1}s",
                    self.database(i),
                    (now_ms - last) as f64 / 1000.0,
                    j.baked_ms as f64 / 1000.0,
                    w.bake_ms as f64 / 1000.0
                );
                self.event(out, now_ms, "no_data", Some(i), reason, json!({ "stage": "bake", "last_sample_ms": j.last_data_ms, "baked_ms": j.baked_ms }));
            }
            return;
        }
        t.no_data_open = false;
        if j.baked_ms >= w.bake_ms as i64 && !j.pending && t.confirming.is_none() {
            t.set_stage(Stage::Promoted, now_ms);
            t.promoted_at_ms = Some(now_ms);
            let note = if j.breached.is_empty() {
                "every metric in its band".to_string()
            } else {
                format!(
                    "an anomaly (severity {:.2}) stayed below the risk threshold {}",
                    j.severity, self.plan.risk_threshold
                )
            };
            self.event(out, now_ms, "promoted", Some(i),
                format!("{} baked {:.1}s of data: {note}", self.database(i), j.baked_ms as f64 / 1000.0),
                json!({ "baked_ms": j.baked_ms, "baselines": j.baselines, "severity": j.severity, "reasons": j.reasons }));
        }
    }

    /// Traces the anomaly through the graph and scores its risk; records the `traced` event
    /// and, when it decides to revert, the root cause. Returns the cause (with `decision`).
    fn trace(&self, st: &mut State, i: usize, tr: Trace, now_ms: i64, out: &mut Output) -> Value {
        let Trace {
            severity,
            reasons,
            forced,
            control,
            confirm_first,
            peer,
        } = tr;
        let changed = self.plan.keys();
        let impacted = self.context.graph.impacts(&changed, TRACE_DEPTH);
        let breaches: Vec<Breach> = reasons.iter().filter_map(Breach::from_reason).collect();
        let t = &st.targets[i];
        let newest = t.samples.iter().map(|s| s.at_ms).max();
        let timing = t.applied_at_ms.zip(newest).map(|(a, n)| Timing {
            since_apply_ms: n - a,
            bake_ms: self.plan.watch.bake_ms as i64,
            resolution_ms: self
                .plan
                .watch
                .rules
                .iter()
                .map(|r| r.for_ms)
                .min()
                .unwrap_or(0) as i64,
            other_changes: None,
            restarted: !t.restart_keys.is_empty(),
            warmup_ms: if t.restart_keys.is_empty() {
                0
            } else {
                self.plan.watch.restart_warmup_ms as i64
            },
        });
        let mut risk = anomaly_risk(&AnomalyEvidence {
            severity: severity.clamp(0.0, 1.0),
            changed: &changed,
            impacted: &impacted,
            history: &self.context.history,
            breaches: &breaches,
            timing,
            control: control.clone(),
        });
        if let Some(p) = &peer {
            let mut factors = risk.factors.clone();
            factors.push(p.factor(&reasons));
            risk = from_factors(risk.base, factors);
        }
        // Every breached metric seen on the untouched peers at the same time, with what is
        // left for the change inside its band: no anomaly is left to blame on the change.
        let explained = !forced && peer.as_ref().is_some_and(PeerVerdict::all_explained);
        let above = risk.score >= self.plan.risk_threshold;
        let confirm = !forced && !explained && above && confirm_first;
        let revert = forced || (above && !confirm && !explained);
        let decision = if revert {
            "revert"
        } else if confirm {
            "confirm"
        } else if explained {
            "explained"
        } else {
            "keep_watching"
        };
        let factors: Vec<String> = risk
            .factors
            .iter()
            .map(|f| format!("{} {:+.2}", f.name, f.log_odds))
            .collect();
        // The peers' comparison in one line (the figures have it in full).
        let peer_line = peer.as_ref().map_or(String::new(), |p| {
            let each: Vec<String> = p
                .metrics
                .iter()
                .map(|m| {
                    format!(
                        "{} {:.2}× vs the controls' {} ({}/{} with data)",
                        m.metric,
                        m.treated_ratio,
                        m.control_ratio
                            .map_or("unknown".to_string(), |c| format!("{c:.2}×")),
                        m.controls_with_data,
                        m.controls
                    )
                })
                .collect();
            format!(" [peer: {}]", each.join("; "))
        });
        let reason = format!(
            "risk {:.2} {} threshold {:.2} ({}){}{peer_line}: {}",
            risk.score,
            if risk.score >= self.plan.risk_threshold {
                "≥"
            } else {
                "<"
            },
            self.plan.risk_threshold,
            factors.join(", "),
            if forced {
                "; the instance is down, so it is reverted whatever the risk"
            } else {
                ""
            },
            if revert {
                "revert"
            } else if confirm {
                "one metric alone: its second reading decides"
            } else if explained {
                "the contemporaneous control(s) show the same breach at the same time: not \
                 the change's; keep watching"
            } else {
                "keep watching"
            }
        );
        let cause = json!({
            "target": i,
            "host": self.plan.targets[i].host,
            "database": self.plan.targets[i].database,
            "change": self.plan.set,
            "description": self.plan.description,
            "author": self.plan.author,
            "severity": severity,
            "reasons": reasons,
            "impacted": impacted,
            "risk": risk,
            "threshold": self.plan.risk_threshold,
            "forced": forced,
            "control": control_json(control.as_ref()),
            "peer": peer,
            "decision": decision,
        });
        self.event(out, now_ms, "traced", Some(i), reason, cause.clone());
        if revert {
            st.root_cause = Some(cause.clone());
            if st.halt.is_none() {
                st.halt = Some(Halt::RolledBack {
                    reason: format!(
                        "{} on {} was traced to the change",
                        if forced {
                            "the instance went down"
                        } else {
                            "an anomaly"
                        },
                        self.plan.targets[i].host
                    ),
                });
            }
        }
        cause
    }

    fn judge_confirm(&self, st: &mut State, i: usize, now_ms: i64, out: &mut Output) {
        let w = &self.plan.watch;
        let Some(reverted) = st.targets[i].reverted_at_ms else {
            return;
        };
        let j = self.judge(&st.targets[i], reverted);
        let t = &mut st.targets[i];
        if let (Some(since), Some(last)) = (j.in_band_since, j.in_band_last) {
            if last - since >= w.confirm_ms as i64 {
                t.set_stage(Stage::Recovered, now_ms);
                t.recovered_at_ms = Some(last);
                let after = t.applied_at_ms.map(|a| last - a);
                self.event(out, now_ms, "recovered", Some(i),
                    format!("{} back in its bands (no breach) for {:.1}s after the revert{}", self.database(i),
                        (last - since) as f64 / 1000.0,
                        after.map(|a| format!("; {:.1}s from the apply", a as f64 / 1000.0)).unwrap_or_default()),
                    json!({ "recovered_at_ms": last, "reverted_at_ms": reverted, "applied_at_ms": t.applied_at_ms,
                            "bad_change_to_recovered_ms": after, "baselines": j.baselines,
                            "host_disturbed_samples": j.host_skipped }));
                return;
            }
        }
        let started = t.revert_done_ms.unwrap_or(t.since_ms);
        if now_ms - started > w.confirm_timeout_ms as i64 {
            t.set_stage(Stage::NotRecovered, now_ms);
            let why = if !j.baseline_ready {
                "there is no baseline to compare with".to_string()
            } else if j.last_data_ms.is_none() {
                "no data came after the revert".to_string()
            } else if j.down_since.is_some() {
                "the instance does not answer".to_string()
            } else {
                format!(
                    "still out of band: {}",
                    j.reasons
                        .iter()
                        .filter_map(|r| r["text"].as_str())
                        .collect::<Vec<_>>()
                        .join("; ")
                )
            };
            self.event(out, now_ms, "not_recovered", Some(i),
                format!("{} not back in its bands {:.0}s after the revert: {why}", self.database(i), w.confirm_timeout_ms as f64 / 1000.0),
                json!({ "reverted_at_ms": reverted, "severity": j.severity, "reasons": j.reasons, "last_sample_ms": j.last_data_ms }));
        }
    }

    /// Ends the change once nothing is in flight and nothing is reverting.
    fn settle(&mut self, st: &mut State, now_ms: i64, out: &mut Output) {
        if self.phase.is_final() || !st.pending.is_empty() {
            return;
        }
        if st.targets.iter().any(|t| t.reverting()) {
            return;
        }
        let all_promoted = st.targets.iter().all(|t| t.stage == Stage::Promoted);
        let (phase, name, reason) = match st.halt.clone() {
            None if all_promoted => (
                Phase::Completed,
                "completed",
                format!("every target ({}) passed its bake", st.targets.len()),
            ),
            None => return,
            Some(Halt::Refused { reason }) => (Phase::Refused, "failed", reason),
            Some(Halt::Failed { reason }) => (Phase::Failed, "failed", reason),
            Some(Halt::RolledBack { reason }) => (Phase::RolledBack, "rolled_back", reason),
            Some(Halt::Abort { reason }) => (Phase::Aborted, "aborted", reason),
            Some(Halt::Revert { reason }) => {
                if st.targets.iter().any(|t| t.reverted_at_ms.is_some()) {
                    (
                        Phase::RolledBack,
                        "rolled_back",
                        format!("reverted by the operator: {reason}"),
                    )
                } else {
                    (
                        Phase::Aborted,
                        "aborted",
                        format!("revert asked ({reason}) but nothing was applied"),
                    )
                }
            }
        };
        self.phase = phase;
        st.finished_ms = Some(now_ms);
        st.final_reason = Some(reason.clone());
        // A refusal's own event (trial_refused) already ended it.
        if phase != Phase::Refused {
            let summary: Vec<Value> = st
                .targets
                .iter()
                .zip(&self.plan.targets)
                .map(|(t, p)| json!({ "host": p.host, "database": p.database, "stage": t.stage }))
                .collect();
            self.event(
                out,
                now_ms,
                name,
                None,
                reason,
                json!({ "phase": phase, "targets": summary, "root_cause": st.root_cause }),
            );
        }
    }
}

/// What one trace weighs.
struct Trace {
    severity: f64,
    reasons: Vec<Value>,
    /// Reverted whatever the risk (the instance is down, the apply failed).
    forced: bool,
    control: Option<Control>,
    /// At or above the threshold, wait for the breach's second reading before reverting
    /// (one metric alone, not yet confirmed).
    confirm_first: bool,
    /// The contemporaneous controls' verdict (`None`: the plan has none).
    peer: Option<PeerVerdict>,
}

impl Trace {
    fn forced(reasons: Vec<Value>) -> Trace {
        Trace {
            severity: 1.0,
            reasons,
            forced: true,
            control: None,
            confirm_first: false,
            peer: None,
        }
    }
}

impl ControlSeries {
    /// `metric` in the sample nearest to `at_ms`, within `near` ms either side, not down.
    fn nearest(&self, metric: &str, at_ms: i64, near: i64) -> Option<f64> {
        self.samples
            .iter()
            .filter(|x| (x.at_ms - at_ms).abs() <= near && !is_down(x))
            .filter_map(|x| Some(((x.at_ms - at_ms).abs(), *x.metrics.get(metric)?)))
            .min_by_key(|(d, _)| *d)
            .map(|(_, v)| v)
    }
}

/// The contemporaneous control's verdict on one breached metric (see
/// [`ConfigChangeEngine::peer`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
struct PeerMetric {
    metric: String,
    /// The window compared: the rule's `for` up to the newest sample judged.
    from_ms: i64,
    to_ms: i64,
    /// The treated instance's mean over the window / its baseline.
    treated_ratio: f64,
    /// The same for the controls (the median over those with data); `None`: no control had
    /// enough samples in the baseline window and in this one.
    control_ratio: Option<f64>,
    controls_with_data: usize,
    controls: usize,
    /// treated / control: the change's own effect once the peers' is taken out, if the
    /// disturbance scaled the metric.
    residual: Option<f64>,
    /// 1 + treated − control: the same if the disturbance took a fixed amount away (in units
    /// of the baseline). A lock that stalls the workload leaves each instance its background
    /// (the sampler's own queries, autovacuum), so both ratios are near 0 and their quotient
    /// is noise (0.04 / 0.07) while their difference is not (0.03 of the baseline).
    residual_absolute: Option<f64>,
    /// The controls were out of the same band in the same direction, and either residual is
    /// back inside it: over the window, or at one of its samples (`shared_until_ms`).
    explained: bool,
    /// When the window's means leave the change a breach but at a sample of the window the
    /// controls still shared it: the newest such sample. The change's own part has not lasted
    /// the rule's `for` yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    shared_until_ms: Option<i64>,
    why: String,
}

impl PeerMetric {
    fn judge(
        rule: &MetricRule,
        from_ms: i64,
        to_ms: i64,
        treated_ratio: f64,
        control_ratio: Option<f64>,
        controls_with_data: usize,
        controls: usize,
    ) -> PeerMetric {
        use bellwether_detect::threshold::Direction;
        let band = rule.percent / 100.0;
        let (lo, hi) = match rule.direction {
            Direction::Decrease => (1.0 - band, f64::INFINITY),
            Direction::Increase => (f64::NEG_INFINITY, 1.0 + band),
            Direction::Either => (1.0 - band, 1.0 + band),
        };
        let inside = |r: f64| r >= lo && r <= hi;
        let residual = control_ratio.and_then(|c| {
            if !treated_ratio.is_finite() {
                None
            } else if c > 0.0 {
                Some(treated_ratio / c)
            } else if treated_ratio == 0.0 {
                // Both stopped altogether: nothing is left for the change.
                Some(1.0)
            } else {
                None
            }
        });
        let residual_absolute = control_ratio
            .filter(|_| treated_ratio.is_finite())
            .map(|c| 1.0 + treated_ratio - c);
        // The reading closer to 1 (inside the band when either is): the one that fits how
        // this disturbance acted.
        let (residual_closer, how) = match (residual, residual_absolute) {
            (Some(r), Some(a)) if (a - 1.0).abs() < (r - 1.0).abs() => {
                (Some(a), " (1 + treated − controls)")
            }
            (Some(r), _) => (Some(r), ""),
            (None, a) => (a, " (1 + treated − controls)"),
        };
        let same_way = |c: f64| (c < lo && treated_ratio < 1.0) || (c > hi && treated_ratio > 1.0);
        let (explained, why) = match (control_ratio, residual_closer) {
            (None, _) => (
                false,
                format!(
                    "no control had enough samples of {} (a baseline of {} and 2 in the window): \
                     nothing is taken away",
                    rule.metric, controls
                ),
            ),
            (Some(c), _) if !same_way(c) => (
                false,
                format!(
                    "the controls' {} stayed at {:.2}× their baseline while the treated was at \
                     {:.2}×: the drop is the treated instance's alone",
                    rule.metric, c, treated_ratio
                ),
            ),
            (Some(c), Some(r)) if inside(r) => (
                true,
                format!(
                    "the controls' {} moved the same way at the same time ({:.2}× their \
                     baseline, the treated {:.2}×): what is left for the change, {:.2}×{}, \
                     is inside the band",
                    rule.metric, c, treated_ratio, r, how
                ),
            ),
            (Some(c), r) => (
                false,
                format!(
                    "the controls' {} moved too ({:.2}× their baseline, the treated {:.2}×) \
                     but what is left for the change, {}{}, is still out of the band",
                    rule.metric,
                    c,
                    treated_ratio,
                    r.map_or("unknown".to_string(), |r| format!("{r:.2}×")),
                    how
                ),
            ),
        };
        PeerMetric {
            metric: rule.metric.clone(),
            from_ms,
            to_ms,
            treated_ratio,
            control_ratio,
            controls_with_data,
            controls,
            residual,
            residual_absolute,
            explained,
            shared_until_ms: None,
            why,
        }
    }
}

/// The contemporaneous control's verdict on one breach: one entry per counted breached metric.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct PeerVerdict {
    metrics: Vec<PeerMetric>,
}

impl PeerVerdict {
    fn explained(&self) -> usize {
        self.metrics.iter().filter(|m| m.explained).count()
    }

    /// Every breached metric is explained by the controls.
    fn all_explained(&self) -> bool {
        !self.metrics.is_empty() && self.explained() == self.metrics.len()
    }

    /// The `peer` factor. Every breached metric explained: `−ONSET_CAP` (and the decision is
    /// `explained` whatever the score). None: 0. Some: the breach is weighed as if the
    /// explained metrics were in their bands, i.e. the `magnitude` and `breadth` evidence of
    /// the unexplained breaches minus that of all of them (`reasons`: the watch's, with each
    /// metric's own severity).
    fn factor(&self, reasons: &[Value]) -> RiskFactor {
        use bellwether_config::risk::{
            BREADTH_CAP, BREADTH_PER_METRIC, MAGNITUDE_CENTRE, MAGNITUDE_SCALE, ONSET_CAP,
        };
        let evidence = |keep: &dyn Fn(&str) -> bool| -> f64 {
            let own: Vec<f64> = reasons
                .iter()
                .filter_map(Breach::from_reason)
                .filter(|b| b.weight.is_finite() && b.weight > 0.0 && keep(&b.metric))
                .map(|b| {
                    if b.severity.is_finite() {
                        b.severity.clamp(0.5, 1.0)
                    } else {
                        0.5
                    }
                })
                .collect();
            match own.iter().copied().reduce(f64::max) {
                None => 0.0,
                Some(worst) => {
                    MAGNITUDE_SCALE * (worst - MAGNITUDE_CENTRE)
                        + (BREADTH_PER_METRIC * (own.len() - 1) as f64).min(BREADTH_CAP)
                }
            }
        };
        let explained: Vec<&str> = self
            .metrics
            .iter()
            .filter(|m| m.explained)
            .map(|m| m.metric.as_str())
            .collect();
        let log_odds = if self.all_explained() {
            -ONSET_CAP
        } else if explained.is_empty() {
            0.0
        } else {
            (evidence(&|m| !explained.contains(&m)) - evidence(&|_| true)).min(0.0)
        };
        RiskFactor {
            name: "peer".to_string(),
            log_odds,
            detail: format!(
                "{} of {} breached metric(s) seen on the contemporaneous control(s) at the same \
                 time: {}",
                self.explained(),
                self.metrics.len(),
                self.metrics
                    .iter()
                    .map(|m| m.why.clone())
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        }
    }
}

fn median(xs: &mut [f64]) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    Some(if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    })
}

fn control_json(c: Option<&Control>) -> Value {
    match c {
        None => Value::Null,
        Some(c) => json!({ "metric": c.metric, "baseline": c.baseline, "during": c.during,
                           "baseline_samples": c.baseline_samples, "during_samples": c.during_samples }),
    }
}

/// The newest time a baseline sample may have: the newest sample known when the apply was
/// dispatched, and strictly before the apply's time.
fn baseline_cut(t: &TargetState) -> Option<i64> {
    match (t.baseline_last_ms, t.applied_at_ms) {
        (Some(b), Some(a)) => Some(b.min(a - 1)),
        (Some(b), None) => Some(b),
        (None, Some(a)) => Some(a - 1),
        (None, None) => None,
    }
}

fn halt(st: &mut State, h: Halt) {
    if st.halt.is_none() || matches!(st.halt, Some(Halt::Abort { .. })) {
        st.halt = Some(h);
    }
}

fn first_line(s: &str) -> String {
    let line = s
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    let mut line: String = line.chars().take(300).collect();
    if line.is_empty() {
        line = "(no message)".into();
    }
    line
}

fn describe(set: &[(String, Option<String>)]) -> String {
    set.iter()
        .map(|(k, v)| match v {
            Some(v) => format!("{k} = {v}"),
            None => format!("{k} = DEFAULT"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The fields of `bellwether_pg::ApplyReport` the engine reads (it cannot depend on that
/// crate, which depends on this one).
struct ApplyOut {
    applied_at_ms: Option<i64>,
    values: BTreeMap<String, String>,
    pending_restart: Vec<String>,
    raw: Value,
}

impl ApplyOut {
    fn read(v: &Value) -> Option<ApplyOut> {
        Some(ApplyOut {
            applied_at_ms: v.get("applied_at_ms").and_then(Value::as_i64),
            values: v
                .get("values")
                .and_then(|x| serde_json::from_value(x.clone()).ok())
                .unwrap_or_default(),
            pending_restart: v
                .get("pending_restart")
                .and_then(|x| serde_json::from_value(x.clone()).ok())
                .unwrap_or_default(),
            raw: v.clone(),
        })
    }
}

/// What the revert sets for each changed key, from the snapshot's catalog: the old value, or
/// a reset (`None`) when the old value did not come from `postgresql.auto.conf` (it was the
/// default, or `postgresql.conf` set it): `ALTER SYSTEM RESET` then gives back exactly what
/// was in force, where setting the value would leave an `ALTER SYSTEM` entry behind.
pub fn revert_values(
    set: &[(String, Option<String>)],
    catalog: &Catalog,
) -> Vec<(String, Option<String>)> {
    set.iter()
        .map(|(k, _)| {
            let old = catalog.get(k).and_then(|s| {
                let from_other_file = s.source == "configuration file"
                    && s.sourcefile
                        .as_deref()
                        .is_some_and(|f| !f.ends_with("postgresql.auto.conf"));
                if s.source == "default" || from_other_file {
                    None
                } else {
                    Some(s.value.clone())
                }
            });
            (k.clone(), old)
        })
        .collect()
}

/// Orders the revert so that what a setting `requires` (the graph's `requires` edges among
/// the reverted keys) is set before it; otherwise the plan's order. A cycle keeps the plan's
/// order for the keys on it.
pub fn revert_order(
    settings: &[(String, Option<String>)],
    graph: &Graph,
) -> Vec<(String, Option<String>)> {
    let keys: Vec<&str> = settings.iter().map(|(k, _)| k.as_str()).collect();
    // before[a] = the keys that must come before a (a requires them).
    let mut before: Vec<Vec<usize>> = vec![Vec::new(); keys.len()];
    for e in &graph.edges {
        if e.kind != EdgeKind::Requires {
            continue;
        }
        if let (Some(a), Some(b)) = (
            keys.iter().position(|k| *k == e.from),
            keys.iter().position(|k| *k == e.to),
        ) {
            if a != b && !before[a].contains(&b) {
                before[a].push(b);
            }
        }
    }
    let mut done = vec![false; keys.len()];
    let mut order = Vec::with_capacity(keys.len());
    while order.len() < keys.len() {
        // The first key (in plan order) whose prerequisites are all placed; on a cycle the
        // first key not placed.
        let next = (0..keys.len())
            .find(|&i| !done[i] && before[i].iter().all(|&b| done[b]))
            .or_else(|| (0..keys.len()).find(|&i| !done[i]));
        let Some(i) = next else { break };
        done[i] = true;
        order.push(settings[i].clone());
    }
    order
}

#[cfg(test)]
mod tests;
