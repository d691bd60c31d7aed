//! The configuration-change engine: one change (a set of settings) applied to one or more
//! PostgreSQL instances of a role, canary first, each watched against its own baseline and
//! reverted to its last good snapshot when an anomaly is traced to the change.
//!
//! OWNER: helper `confengine`. The types and signatures here are the contract the server's
//! `config` task (helper `confserver`) and the local runner code against; change them only
//! additively and say so in the report.
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

use std::collections::BTreeMap;

use bellwether_config::cochange::ChangeOutcome;
use bellwether_config::graph::Graph;
use bellwether_model::wire::ActionOutcome;
use bellwether_model::ActionSpec;
use serde::{Deserialize, Serialize};

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

impl ConfigChangeEngine {
    /// Starts the change: the first target's trial (or snapshot when the plan skips trials).
    pub fn start(plan: ConfigPlan, context: EngineContext, now_ms: i64) -> (Self, Output) {
        let _ = (plan, context, now_ms);
        todo!("confengine")
    }

    pub fn step(&mut self, input: Input, now_ms: i64) -> Output {
        let _ = (input, now_ms);
        todo!("confengine")
    }

    /// Final and no action in flight.
    pub fn is_settled(&self) -> bool {
        todo!("confengine")
    }

    /// Dispatched actions without a result yet (a resumed driver re-sends them; ids are
    /// stable).
    pub fn pending(&self) -> Vec<Action> {
        todo!("confengine")
    }

    /// The status for people and `--output json`: per target its state, snapshot, timings,
    /// and for a rollback the root-cause change, the traced settings and the risk.
    pub fn report(&self) -> serde_json::Value {
        todo!("confengine")
    }
}
