//! The dependency-mirroring engine: how many mirrors a dependency keeps, whether they serve,
//! and when and to which mirror its traffic is switched.
//!
//! One [`MirrorEngine`] per dependency ([`DependencySpec`]). The server's `mirror` task and the
//! local runner (`bellwether_mirror::local`, the drill) both step it: every `health_interval`
//! they give it an [`Input::Observe`] (per instance: the active check, latency, error rate and
//! request rate the proxy measures, the replication offset or LSN, the sessions), and the
//! result of every [`Action`] it asked for as an [`Input::ActionDone`]. It answers with an
//! [`Output`]: the actions to carry out (provision, retire, promote, fence, route) and the
//! [`Event`]s that record each decision with its reason and figures.
//!
//! Pure: no IO, no clock (every input comes with `now_ms`), the whole engine is serde state the
//! server persists ([`MirrorEngine::state`], [`MirrorEngine::restore`]). It never acts on no
//! data: an instance without an observation is unknown, not down, and counts neither toward a
//! switch nor toward health.
//!
//! The formulas (weight, health, replication factor, mode) are in [`score`] and, in the long
//! form, in docs/mirror-engine.md with the switchover state machine.

use std::collections::BTreeMap;

use bellwether_model::mirror::{DependencySpec, MirrorPolicy, MirrorSpecError, Mode};
use serde::{Deserialize, Serialize};
use serde_json::Value;

mod machine;
pub mod score;
#[cfg(test)]
mod tests;

/// What the active check of one instance said this interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Check {
    /// It answered (Redis `PING`/`ROLE`, PostgreSQL a query, TCP a connect).
    Ok,
    /// It did not answer within the check's timeout, or refused the connection.
    Down,
}

/// The role an instance reports for itself (Redis `ROLE`, PostgreSQL `pg_is_in_recovery()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObservedRole {
    Primary,
    Replica,
}

/// One interval's measurements of one instance. Every field but `instance` and `check` may
/// be absent: an absent figure is no data and changes nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// The instance id the engine gave it (the original primary is [`PRIMARY_ID`]).
    pub instance: String,
    pub check: Check,
    /// The check's (or the proxy's mean) latency over the interval, milliseconds.
    #[serde(default)]
    pub latency_ms: Option<f64>,
    /// Share of the proxy's requests to it that failed over the interval, in [0, 1].
    #[serde(default)]
    pub error_rate: Option<f64>,
    /// Requests per second the proxy sent it over the interval.
    #[serde(default)]
    pub requests_per_s: Option<f64>,
    /// Redis: `master_repl_offset` of a primary, `slave_repl_offset` of a replica.
    /// PostgreSQL: the primary's flush LSN, a standby's replay LSN, as a `u64`. Absent for TCP.
    #[serde(default)]
    pub offset: Option<u64>,
    /// Client sessions the proxy holds on it now.
    #[serde(default)]
    pub sessions: Option<u32>,
    #[serde(default)]
    pub role: Option<ObservedRole>,
}

/// An operator's command (API, CLI).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "command")]
pub enum Command {
    /// Replace the policy (validated; a refused policy is an event and changes nothing).
    SetPolicy {
        policy: MirrorPolicy,
    },
    /// Switch now: to `to` (a ready mirror's id) or to the best mirror. Ignores
    /// `min_switch_gap` (the operator asked), never the catch-up rule.
    Failover {
        to: Option<String>,
        reason: String,
    },
    /// Stop every automatic decision (switches, provisioning, retiring); observations are
    /// still kept, actions in flight finish.
    Pause {
        reason: String,
    },
    Resume {
        reason: String,
    },
    /// The dependency is being removed: routing goes to the primary only, every mirror
    /// Bellwether made is retired, then the engine is [`Phase::Removed`].
    Remove {
        reason: String,
    },
}

/// What the engine is told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "input")]
pub enum Input {
    /// One health interval's observations, taken at `at_ms`. Instances not listed are no data.
    Observe {
        at_ms: i64,
        observations: Vec<Observation>,
    },
    /// The action `action_id` finished. `output` is the IO side's structured result (see each
    /// [`Action`] for what the engine reads from it); `error` says why it failed.
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

/// An instance as the proxy should know it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backend {
    pub instance: String,
    /// `HOST:PORT`.
    pub endpoint: String,
}

/// What the IO side must do. Every action is answered with [`Input::ActionDone`] with its
/// `action_id`; the engine waits for the answer (a resumed driver re-sends
/// [`MirrorEngine::pending`]; ids are stable and unique within the engine).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum Action {
    /// Make a new mirror of the current primary `of`, named `instance`. Output:
    /// `{"endpoint": "HOST:PORT", ...}` (anything else is kept as the instance's detail).
    /// A failure whose output has `"permanent": true` (no binary, no driver for the kind, no
    /// room) stops provisioning until the policy changes or the engine is resumed.
    Provision {
        action_id: u64,
        instance: String,
        of: Backend,
    },
    /// Stop and delete a mirror Bellwether made (it has no sessions left and no traffic).
    Retire { action_id: u64, instance: Backend },
    /// Promote the mirror to primary, but only once it has reached `catch_up_to` (the last
    /// acknowledged write the engine knows of: the old primary's offset/LSN); give up after
    /// `timeout_ms` with ok = false (the mirror is then not promoted). `None` for TCP
    /// (nothing to wait for). Output: `{"offset": N}` (where it was when promoted), optional.
    Promote {
        action_id: u64,
        instance: Backend,
        catch_up_to: Option<u64>,
        timeout_ms: u64,
        /// The instance it replaced (for the IO side's log; it may be dead).
        old_primary: Backend,
    },
    /// Stop the old primary from taking writes (Redis `CLIENT PAUSE WRITE`, then `REPLICAOF
    /// new_primary`; PostgreSQL stop or read-only). Sent before the promotion when the old
    /// primary still answers (so its last offset is final; output `{"offset": N}`), and after
    /// the route when it was down. Output `"mirror": true` when it now replicates from
    /// `new_primary` (it becomes a mirror again, the failback candidate). Sent to the other
    /// mirrors after a switch, it repoints them at `new_primary` (`"mirror": true` when they
    /// follow it).
    ///
    /// Before a fence without `new_primary` (the fence ahead of a promotion) the IO side may
    /// hold the proxy's commands (no primary: they wait instead of failing); the engine always
    /// follows it with a `Route`: to the new primary, or back to the old one when the switch
    /// failed.
    Fence {
        action_id: u64,
        instance: Backend,
        new_primary: Option<Backend>,
    },
    /// Undo a fence sent before a promotion that then failed on every mirror (Redis `CLIENT
    /// UNPAUSE`); the old primary serves again.
    Unfence { action_id: u64, instance: Backend },
    /// Point the proxy's writes (and everything in active-passive) at `primary`, reads in
    /// active-active also at `readers`. Atomic at the proxy.
    Route {
        action_id: u64,
        primary: Backend,
        readers: Vec<Backend>,
    },
}

impl Action {
    pub fn id(&self) -> u64 {
        match self {
            Action::Provision { action_id, .. }
            | Action::Retire { action_id, .. }
            | Action::Promote { action_id, .. }
            | Action::Fence { action_id, .. }
            | Action::Unfence { action_id, .. }
            | Action::Route { action_id, .. } => *action_id,
        }
    }

    /// `provision`, `retire`, `promote`, `fence`, `unfence` or `route`.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Provision { .. } => "provision",
            Action::Retire { .. } => "retire",
            Action::Promote { .. } => "promote",
            Action::Fence { .. } => "fence",
            Action::Unfence { .. } => "unfence",
            Action::Route { .. } => "route",
        }
    }
}

/// A decision or observation with its reason and figures. Stored as `mirror.NAME`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub at_ms: i64,
    /// See docs/mirror-engine.md for the list (`switched`, `no_healthy_mirror`, ...).
    pub name: String,
    pub reason: String,
    pub figures: Value,
    /// Someone should look (a switch that failed, no healthy mirror, an impossible
    /// provisioning, a split brain).
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
    /// Deciding on its own.
    Running,
    /// Paused by the operator or after a switch that failed on every mirror: observes, but
    /// decides nothing until resumed (or until a command).
    Paused,
    /// Retiring its mirrors before removal.
    Removing,
    /// Nothing left to do.
    Removed,
}

/// What an instance is to the dependency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Primary,
    Mirror,
    /// A former primary that was fenced (or could not be: it was down) and does not
    /// replicate from the new primary.
    Fenced,
}

/// Where an instance stands in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    /// Its provisioning is in flight.
    Provisioning,
    /// Provisioned; not yet caught up with the primary (never routed to).
    Syncing,
    /// Caught up and healthy enough to serve or be promoted.
    Ready,
    /// Taken out of the readers, waiting for its sessions to end before it is retired.
    Draining,
    Retiring,
    /// Retired (kept in the status for the record).
    Retired,
    /// Its provisioning failed: never routed to, never promoted.
    Failed,
    /// Serving as primary.
    Serving,
    /// Being promoted.
    Promoting,
    /// Being fenced.
    Fencing,
    /// Fenced: takes no writes.
    Fenced,
    /// A former primary that could not be fenced (it was down); fenced again when it answers.
    Lost,
}

/// One instance in the status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub id: String,
    pub endpoint: Option<String>,
    pub role: Role,
    pub state: InstanceState,
    /// The last health score, in [0, 1]; `None` before any observation.
    pub health: Option<f64>,
    pub offset: Option<u64>,
    /// How far behind the primary it is in time (mirrors), milliseconds.
    pub lag_ms: Option<i64>,
    pub sessions: Option<u32>,
    /// Bellwether made it (and may retire it); the original primary is not.
    pub provisioned: bool,
    pub since_ms: i64,
}

/// One switch of the primary, as kept in the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwitchRecord {
    /// When it was decided.
    pub at_ms: i64,
    /// When the proxy's routing moved (the switch was done).
    pub routed_ms: i64,
    pub from: String,
    pub to: String,
    /// `unhealthy`, `down`, `operator` or `failback`.
    pub trigger: String,
    pub cause: String,
    /// `detect_ms` (first bad observation → decision), `switch_ms` (decision → routed),
    /// `since_last_good_ms` (last good observation → routed: a bound on fault → switched),
    /// the health scores, the offsets, the mirrors tried.
    pub figures: Value,
}

/// The status view for the API, the CLI and the drill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub name: String,
    pub phase: Phase,
    /// Why it is paused (the operator, a switch that failed).
    pub pause_reason: Option<String>,
    /// Why provisioning is stopped (an impossible provisioning), if it is.
    pub provision_blocked: Option<String>,
    /// In [0, 1]; see [`score::weight`].
    pub weight: f64,
    /// The primary's last health score.
    pub health: Option<f64>,
    /// The replication factor the engine keeps (mirrors besides the primary).
    pub target_mirrors: u32,
    /// The unrounded target before the hysteresis (see [`score::target_mirrors`]).
    pub target_raw: f64,
    pub mode: Mode,
    pub primary: String,
    pub instances: Vec<InstanceStatus>,
    /// A switch in progress: its step.
    pub switching: Option<String>,
    pub history: Vec<SwitchRecord>,
}

impl Status {
    /// What the prober's recheck judges by: the primary's health, unless a switch is under
    /// way (then the primary is about to change and its score says nothing of the next).
    pub fn verdict(&self) -> Option<f64> {
        self.health.filter(|_| self.switching.is_none())
    }
}

/// The id of the dependency's original primary (the instance the operator declared).
pub const PRIMARY_ID: &str = "primary";

/// The most switch records kept in the state (the event log keeps all).
pub const MAX_HISTORY: usize = 100;

/// One dependency's mirroring, as serde state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MirrorEngine {
    spec: DependencySpec,
    st: machine::State,
}

impl MirrorEngine {
    /// A new engine for a validated spec at `now_ms`. Its first output routes the proxy to
    /// the primary.
    pub fn new(
        spec: DependencySpec,
        now_ms: i64,
    ) -> Result<(MirrorEngine, Output), MirrorSpecError> {
        spec.validate()?;
        let st = machine::State::new(&spec, now_ms);
        let mut e = MirrorEngine { spec, st };
        let out = e.start(now_ms);
        Ok((e, out))
    }

    /// The state to persist.
    pub fn state(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// An engine from [`MirrorEngine::state`].
    pub fn restore(state: Value) -> Result<MirrorEngine, serde_json::Error> {
        serde_json::from_value(state)
    }

    pub fn spec(&self) -> &DependencySpec {
        &self.spec
    }

    pub fn phase(&self) -> Phase {
        self.st.phase
    }

    /// Actions dispatched without an answer yet.
    pub fn pending(&self) -> Vec<Action> {
        self.st.pending.values().cloned().collect()
    }

    /// Advances the engine by one input at `now_ms`.
    pub fn step(&mut self, input: Input, now_ms: i64) -> Output {
        let mut out = Output::default();
        self.apply(input, now_ms, &mut out);
        out
    }

    /// The status view.
    pub fn status(&self) -> Status {
        self.status_view()
    }

    /// The endpoint of each instance that has one (for the proxy's backend list).
    pub fn endpoints(&self) -> BTreeMap<String, String> {
        self.st
            .instances
            .iter()
            .filter_map(|(id, i)| i.endpoint.clone().map(|e| (id.clone(), e)))
            .collect()
    }
}
