//! The rollout state machine. See the module docs of [`crate::rollout`] and docs/rollout.md.

use std::collections::BTreeMap;

use bellwether_model::text::count;
use bellwether_model::{ActionSpec, DriftScore, HostName};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::plan::{Band, HighRiskPolicy, Plan, Waves};

/// One target host as the server knows it when the rollout starts: its labels and profile
/// attributes (for the plan's target selector), and the current model's prediction for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostInput {
    pub name: HostName,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Flat profile attributes the plan's `targets.where` predicates test (`os.version_id`,
    /// `package:libssl3`, …). Hosts without them simply fail predicates on them.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// The predicted failure probability of this update on this host, in [0, 1] (values
    /// outside are clamped, NaN counts as 1: an unknown risk is a high risk).
    pub probability: f64,
    /// The model's top contributing factors, `(feature, contribution)`, largest first.
    #[serde(default)]
    pub factors: Vec<(String, f64)>,
    /// The host's drift from its baseline, whose findings remediation rules match.
    #[serde(default)]
    pub drift: Option<DriftScore>,
}

/// What an action does, as the agent and the report see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ActionKind {
    Apply,
    Revert,
    /// A remediation, by the index of the plan's remediation rule that matched.
    Remediate {
        rule: usize,
    },
}

impl ActionKind {
    /// `apply`, `revert` or `remediate`: the wire name of the agent API.
    pub fn name(self) -> &'static str {
        match self {
            ActionKind::Apply => "apply",
            ActionKind::Revert => "revert",
            ActionKind::Remediate { .. } => "remediate",
        }
    }
}

/// How an action ended on its host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "result")]
pub enum ActionResult {
    Ok,
    /// The action ran and failed; `error` is kept in the host's report.
    Failed {
        error: String,
    },
    TimedOut,
}

/// A watcher's verdict on one updated host (see [`super::watch`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "verdict")]
pub enum WatchVerdict {
    Healthy,
    /// The host breached its thresholds, lost to the controls or drifted too far.
    Failing {
        reason: String,
        figures: Value,
    },
    /// A critical metric breached.
    Critical {
        reason: String,
        figures: Value,
    },
    /// No samples since `since_ms`: never a reason to promote or roll back. `missing` names
    /// the metric read from Prometheus that has no data, its query and why.
    NoData {
        since_ms: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        missing: Option<MissingData>,
    },
}

/// A metric read from Prometheus that gave no value: which, the query as sent for the host,
/// and why (an empty result, an error, Prometheus unreachable).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MissingData {
    pub metric: String,
    pub query: String,
    pub problem: String,
}

impl std::fmt::Display for MissingData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (Prometheus query `{}`): {}",
            self.metric, self.query, self.problem
        )
    }
}

/// An operator's command. The unit commands serialize as their names (`"pause"`), as they
/// always have; `RollBack` as `{"roll_back": {"host": …}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperatorCommand {
    /// Start no new wave and promote nothing until resumed; failing hosts are still rolled
    /// back.
    Pause,
    Resume,
    /// Stop the rollout and revert every host it updated.
    Abort,
    /// End the current wave's bake now (in-flight actions are still awaited) and go on.
    Promote,
    /// Revert one updated host (baking or updated) now, as if its watch had failed it: the
    /// operator saw what the metrics did not. It counts as a failure of its wave and is
    /// learnt from as one; with `rollback.targeted: false` it aborts the rollout, as any
    /// failure does.
    RollBack {
        host: HostName,
    },
}

impl OperatorCommand {
    /// The command's name in the API and the CLI.
    pub fn name(&self) -> &'static str {
        match self {
            OperatorCommand::Pause => "pause",
            OperatorCommand::Resume => "resume",
            OperatorCommand::Abort => "abort",
            OperatorCommand::Promote => "promote",
            OperatorCommand::RollBack { .. } => "roll back",
        }
    }
}

/// What the engine is told. Each carries the time it happened, in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Observation {
    Tick {
        now_ms: i64,
    },
    ActionFinished {
        action_id: u64,
        result: ActionResult,
        now_ms: i64,
    },
    HostWatch {
        host: HostName,
        verdict: WatchVerdict,
        now_ms: i64,
        /// The time of the newest sample behind the verdict; `None` means `now_ms`. A host is
        /// promoted only once its samples reach the end of its bake, so a host whose data
        /// lags or stops is never promoted on the strength of older samples.
        #[serde(default)]
        data_ms: Option<i64>,
    },
    Operator {
        command: OperatorCommand,
        now_ms: i64,
    },
    /// The driver could not carry out its steps (its store refused to save them) and has
    /// held the rollout: a running rollout pauses, and a critical alert says why, so a human
    /// looks before it goes on (`Resume`).
    Hold {
        reason: String,
        now_ms: i64,
    },
}

impl Observation {
    pub fn now_ms(&self) -> i64 {
        match self {
            Observation::Tick { now_ms }
            | Observation::ActionFinished { now_ms, .. }
            | Observation::HostWatch { now_ms, .. }
            | Observation::Operator { now_ms, .. }
            | Observation::Hold { now_ms, .. } => *now_ms,
        }
    }
}

/// Why a rollout is paused: typed, so a client decides on the kind of pause (the quickstart
/// resumes after [`PauseReason::FailuresSpread`] and stops on any other) instead of matching
/// on text. It serialises as `{"kind": "failures_spread", "failed_total": 3, …}`; its
/// [`Display`](std::fmt::Display) is the sentence the status and report print, unchanged from
/// when the reason was a string. A rollout state saved with that string still loads (see
/// [`PauseReason::from_text`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum PauseReason {
    /// The plan's `rollback.pause_when` limit was reached.
    FailuresSpread {
        failed_total: usize,
        failed_in_wave: usize,
        wave_size: usize,
        wave: u32,
    },
    /// Every target is high risk: no host may go first.
    NoEligiblePilot,
    /// Rolling a failed host back did not work: the host is in an unknown state.
    RevertFailed { host: HostName },
    /// A host sent no samples past the plan's no-data time; `missing` when it is a metric
    /// read from Prometheus.
    NoData {
        host: HostName,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        missing: Option<MissingData>,
    },
    /// `bellwether rollout pause`.
    Operator,
    /// The server held the rollout because it could not carry out its steps (its store
    /// refused to save them); `reason` is the server's.
    Held { reason: String },
}

impl std::fmt::Display for PauseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PauseReason::FailuresSpread {
                failed_total,
                failed_in_wave,
                wave_size,
                wave,
            } => write!(
                f,
                "failures spread: {} failed, {failed_in_wave} of the {wave_size} in wave {wave}",
                count(*failed_total, "host")
            ),
            PauseReason::NoEligiblePilot => {
                f.write_str("no host is eligible for the pilot (every target is high risk)")
            }
            PauseReason::RevertFailed { host } => write!(f, "the revert of {host} failed"),
            PauseReason::NoData {
                host,
                missing: None,
            } => write!(f, "no data from {host}"),
            PauseReason::NoData {
                host,
                missing: Some(m),
            } => write!(f, "no data from {host}: {m}"),
            PauseReason::Operator => f.write_str("paused by the operator"),
            PauseReason::Held { reason } => f.write_str(reason),
        }
    }
}

impl PauseReason {
    /// Reads a pause reason saved as text, before it was typed: each sentence the engine
    /// wrote becomes its variant again. The engine's only free-text pause was the server's
    /// hold, so any other text is a [`PauseReason::Held`] with that text.
    pub fn from_text(text: &str) -> PauseReason {
        let spread = || {
            let rest = text.strip_prefix("failures spread: ")?;
            let (total, rest) = rest.split_once(" hosts failed, ")?;
            let (in_wave, rest) = rest.split_once(" of the ")?;
            let (size, wave) = rest.split_once(" in wave ")?;
            Some(PauseReason::FailuresSpread {
                failed_total: total.parse().ok()?,
                failed_in_wave: in_wave.parse().ok()?,
                wave_size: size.parse().ok()?,
                wave: wave.parse().ok()?,
            })
        };
        let host = |prefix: &str, suffix: &str| {
            let name = text.strip_prefix(prefix)?.strip_suffix(suffix)?;
            HostName::new(name.to_string()).ok()
        };
        if let Some(r) = spread() {
            r
        } else if let Some(host) = host("the revert of ", " failed") {
            PauseReason::RevertFailed { host }
        } else if let Some(host) = host("no data from ", "") {
            PauseReason::NoData {
                host,
                missing: None,
            }
        } else if text == "paused by the operator" {
            PauseReason::Operator
        } else if text == PauseReason::NoEligiblePilot.to_string() {
            PauseReason::NoEligiblePilot
        } else {
            PauseReason::Held {
                reason: text.to_string(),
            }
        }
    }
}

/// Adds the typed pause reason to a `rollout.paused` event's figures (an object).
fn with_pause_reason(figures: &mut Value, why: &PauseReason) {
    if !figures.is_object() {
        *figures = json!({});
    }
    if let (Some(map), Ok(v)) = (figures.as_object_mut(), serde_json::to_value(why)) {
        map.insert("pause_reason".into(), v);
    }
}

/// Reads [`Rollout::pause_reason`] in its typed form or as the text older versions saved.
fn pause_reason_typed_or_text<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<PauseReason>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Typed(PauseReason),
        Text(String),
    }
    Ok(match Option::<Either>::deserialize(d)? {
        None => None,
        Some(Either::Typed(r)) => Some(r),
        Some(Either::Text(t)) => Some(PauseReason::from_text(&t)),
    })
}

/// One decision or observation worth keeping, with its reason and figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutEvent {
    pub ts_ms: i64,
    /// Such as `pilot.selected`, `host.failed`, `wave.passed`, `rollout.paused`; the full list
    /// is in docs/rollout.md.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<HostName>,
    pub reason: String,
    pub figures: Value,
}

/// How urgent an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertSeverity {
    Warning,
    Critical,
}

/// What the server must do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Decision {
    /// Send `spec` to `host`'s agent under `action_id`, and answer with
    /// [`Observation::ActionFinished`]. Ids are unique within a rollout and never reused.
    Dispatch {
        action_id: u64,
        host: HostName,
        kind: ActionKind,
        spec: ActionSpec,
    },
    /// Record the event (it is also kept in the report).
    Event(RolloutEvent),
    /// Tell a human (the rollout paused, a revert failed, …).
    Alert {
        severity: AlertSeverity,
        message: String,
        figures: Value,
    },
    /// A host's outcome for the training history: `features` are JSON numbers, strings or
    /// null (feature values), `failed` the label. A later outcome for the same host in the
    /// same rollout supersedes an earlier one.
    Outcome {
        host: HostName,
        failed: bool,
        features: BTreeMap<String, Value>,
    },
}

/// Where the rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Running,
    Paused,
    Completed,
    Aborted,
}

impl Phase {
    pub fn is_final(self) -> bool {
        matches!(self, Phase::Completed | Phase::Aborted)
    }

    pub fn name(self) -> &'static str {
        match self {
            Phase::Running => "running",
            Phase::Paused => "paused",
            Phase::Completed => "completed",
            Phase::Aborted => "aborted",
        }
    }
}

/// A host state's name as the API writes it (`rolling_back`).
fn state_name(s: HostState) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{s:?}"))
}

/// Where one host stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostState {
    /// Waiting for its wave.
    Waiting,
    /// High risk: not updated by this rollout.
    HeldBack,
    /// A remediation is in flight.
    Remediating,
    /// The apply action is in flight.
    Applying,
    /// Updated and watched through its bake.
    Baking,
    /// Updated and passed its wave's bake.
    Updated,
    /// The revert action is in flight.
    RollingBack,
    RolledBack,
    /// The revert failed: the host needs a human.
    RevertFailed,
    /// Never updated (the rollout was aborted or completed without it).
    Skipped,
}

/// The action a host's row in the report shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostAction {
    Updated,
    RolledBack,
    HeldBack,
    Remediated,
    /// Not reached yet: the rollout is still running or paused and the host waits for its
    /// wave (or for a remediation before it).
    Waiting,
    /// Never reached: the rollout ended (aborted, or completed without it).
    Skipped,
}

/// Why a host was remediated, which decides what follows a successful remediation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RemediationStage {
    /// A high-risk host before any update (`high_risk: remediate_then_defer`): on success it
    /// joins the last wave.
    BeforeUpdate,
    /// A failing updated host (`rollback.remediate_first`): on success it bakes again.
    AfterFailure,
}

/// One host's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostRecord {
    pub name: HostName,
    pub probability: f64,
    /// Top contributing factors, at most five.
    pub factors: Vec<(String, f64)>,
    pub band: Band,
    pub labels: BTreeMap<String, String>,
    pub drift: Option<DriftScore>,
    /// 0 is the pilot.
    pub wave: Option<u32>,
    pub state: HostState,
    /// Set when the apply is dispatched; an applied host is never applied again.
    pub applied: bool,
    pub remediated: bool,
    pub remediation: Option<RemediationStage>,
    /// Counted in the failure limits (once per host).
    pub failed: bool,
    /// Revert as soon as the in-flight action ends (the rollout was aborted meanwhile).
    pub revert_pending: bool,
    pub scheduled_ms: Option<i64>,
    pub applied_ms: Option<i64>,
    /// When the current bake started (apply finished, or remediation after a failure).
    pub bake_from_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    pub last_verdict: Option<VerdictKind>,
    pub last_verdict_ms: Option<i64>,
    /// The newest sample time behind the latest healthy verdict.
    #[serde(default)]
    pub last_data_ms: Option<i64>,
    pub reason: String,
    pub figures: Value,
    /// The error of a failed or timed-out action, kept for the report.
    pub error: Option<String>,
}

/// The kind of a host's latest verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerdictKind {
    Healthy,
    Failing,
    Critical,
    NoData,
}

impl HostRecord {
    /// The report's action for this host.
    pub fn action(&self) -> HostAction {
        match self.state {
            HostState::RolledBack | HostState::RollingBack | HostState::RevertFailed => {
                HostAction::RolledBack
            }
            HostState::HeldBack => HostAction::HeldBack,
            _ if self.remediated => HostAction::Remediated,
            HostState::Updated | HostState::Baking | HostState::Applying => HostAction::Updated,
            // A failing updated host being remediated still runs the new version.
            HostState::Remediating if self.applied => HostAction::Updated,
            HostState::Waiting | HostState::Remediating => HostAction::Waiting,
            HostState::Skipped => HostAction::Skipped,
        }
    }

    fn in_flight(&self) -> bool {
        matches!(
            self.state,
            HostState::Applying | HostState::RollingBack | HostState::Remediating
        )
    }
}

/// An action sent and not yet finished.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingAction {
    pub host: HostName,
    pub kind: ActionKind,
    pub spec: ActionSpec,
    pub dispatched_ms: i64,
}

/// The rollout: plan, hosts, waves, pending actions and the event log. Serialise it after every
/// step; a deserialised rollout continues exactly where it stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub id: String,
    pub plan: Plan,
    pub phase: Phase,
    /// Why it is paused; `None` unless `phase` is paused. Saved states from before the
    /// reason was typed hold it as text, which still loads.
    #[serde(default, deserialize_with = "pause_reason_typed_or_text")]
    pub pause_reason: Option<PauseReason>,
    pub started_ms: i64,
    pub finished_ms: Option<i64>,
    /// The latest observation time seen.
    pub now_ms: i64,
    /// The current wave; 0 is the pilot.
    pub wave: u32,
    /// Hosts of the current wave.
    pub current: Vec<HostName>,
    /// Hosts for later waves, safest first.
    pub queue: Vec<HostName>,
    /// Hosts that go after every other (high-risk `include_last`, remediated high-risk).
    pub last: Vec<HostName>,
    /// Hosts after the pilot, for the fixed wave percentages.
    pub after_pilot: usize,
    /// Hosts assigned to waves after the pilot so far.
    pub assigned: usize,
    /// Index into the fixed percentages of the next wave.
    pub plan_step: usize,
    /// The adaptive size of the next wave.
    pub next_size: usize,
    /// The next wave is halved (slow-down limit reached).
    pub slowed: bool,
    pub failed_total: usize,
    pub failed_in_wave: usize,
    /// The operator asked to end the current wave's bake now.
    pub promote_requested: bool,
    pub next_action_id: u64,
    pub pending: BTreeMap<u64, PendingAction>,
    pub hosts: BTreeMap<HostName, HostRecord>,
    pub events: Vec<RolloutEvent>,
}

/// One host's row in a [`RolloutReport`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostReport {
    pub host: HostName,
    pub probability: f64,
    pub factors: Vec<(String, f64)>,
    pub band: Band,
    /// 0 is the pilot; absent for hosts never scheduled.
    pub wave: Option<u32>,
    pub action: HostAction,
    pub state: HostState,
    pub scheduled_ms: Option<i64>,
    pub applied_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    pub reason: String,
    pub figures: Value,
    pub error: Option<String>,
}

/// The body of `bellwether rollout report ID --output json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutReport {
    pub id: String,
    pub plan: String,
    pub update: String,
    pub version: String,
    /// running, paused, completed or aborted.
    pub state: Phase,
    /// Why it is paused, as the sentence printed (`failures spread: …`).
    pub pause_reason: Option<String>,
    /// Why it is paused, typed: what a client decides on.
    #[serde(default)]
    pub pause: Option<PauseReason>,
    pub started_ms: i64,
    pub finished_ms: Option<i64>,
    pub wave: u32,
    /// Hosts per report action.
    pub counts: BTreeMap<HostAction, usize>,
    pub hosts: Vec<HostReport>,
    pub events: Vec<RolloutEvent>,
}

/// One host's line in a [`RolloutStatus`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostStatus {
    pub host: HostName,
    pub wave: Option<u32>,
    pub band: Band,
    pub state: HostState,
}

/// A compact view for `rollout status` and the live progress view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutStatus {
    pub id: String,
    pub plan: String,
    pub state: Phase,
    /// Why it is paused, as the sentence printed (`failures spread: …`).
    pub pause_reason: Option<String>,
    /// Why it is paused, typed: what a client decides on.
    #[serde(default)]
    pub pause: Option<PauseReason>,
    pub wave: u32,
    pub hosts_total: usize,
    pub by_state: BTreeMap<HostState, usize>,
    pub failed_total: usize,
    pub pending_actions: usize,
    pub hosts: Vec<HostStatus>,
}

impl Ord for HostState {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (*self as u8).cmp(&(*other as u8))
    }
}

impl PartialOrd for HostState {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// The pilot-size rule's spread scale: a standard deviation of the scores at or above this
/// takes the pilot to its maximum.
pub const SPREAD_FOR_MAX_PILOT: f64 = 0.25;

/// The pilot selection, with the figures behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PilotChoice {
    pub hosts: Vec<HostName>,
    /// Standard deviation of the target hosts' probabilities.
    pub spread: f64,
    /// The size the spread asks for, before the judge's minimum and the eligible hosts.
    pub size_for_spread: usize,
    pub size: usize,
    pub from_low: usize,
    pub from_moderate: usize,
    pub eligible_low: usize,
    pub eligible_moderate: usize,
}

/// Picks `n` of `sorted` (ascending probability) evenly spread by rank, so the pilot covers
/// the band rather than its safest corner.
fn spread_pick(sorted: &[(f64, HostName)], n: usize) -> Vec<HostName> {
    let len = sorted.len();
    if n == 0 || len == 0 {
        return Vec::new();
    }
    if n >= len {
        return sorted.iter().map(|(_, h)| h.clone()).collect();
    }
    (0..n)
        .map(|i| sorted[(2 * i + 1) * len / (2 * n)].1.clone())
        .collect()
}

/// Selects the pilot: never from the high band; `moderate_share` of it from the moderate band;
/// its size between `pilot.min` and `pilot.max` by the spread of the scores, and never below
/// the judge's `min_canaries` (when the judge is enabled) unless too few hosts are eligible.
/// `hosts` are `(probability, name)` of every target.
pub fn select_pilot(plan: &Plan, hosts: &[(f64, HostName)]) -> PilotChoice {
    let risk = &plan.risk;
    let n = hosts.len() as f64;
    let spread = if hosts.is_empty() {
        0.0
    } else {
        let mean = hosts.iter().map(|(p, _)| p).sum::<f64>() / n;
        (hosts.iter().map(|(p, _)| (p - mean).powi(2)).sum::<f64>() / n).sqrt()
    };
    let (min, max) = (risk.pilot.min as f64, risk.pilot.max as f64);
    let size_for_spread =
        (min + (max - min) * (spread / SPREAD_FOR_MAX_PILOT).min(1.0)).round() as usize;
    let mut low: Vec<(f64, HostName)> = Vec::new();
    let mut moderate: Vec<(f64, HostName)> = Vec::new();
    for (p, h) in hosts {
        match risk.band(*p) {
            Band::Low => low.push((*p, h.clone())),
            Band::Moderate => moderate.push((*p, h.clone())),
            Band::High => {}
        }
    }
    let by_risk =
        |a: &(f64, HostName), b: &(f64, HostName)| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1));
    low.sort_by(by_risk);
    moderate.sort_by(by_risk);
    let judge_min = if plan.analysis.judge.enabled {
        plan.analysis.judge.min_canaries as usize
    } else {
        0
    };
    let size = size_for_spread
        .max(judge_min)
        .min(low.len() + moderate.len());
    let mut from_moderate = ((size as f64) * risk.moderate_share).round() as usize;
    from_moderate = from_moderate.min(moderate.len());
    let mut from_low = (size - from_moderate).min(low.len());
    if from_low + from_moderate < size {
        from_moderate = (size - from_low).min(moderate.len());
    }
    from_low = from_low.min(size - from_moderate);
    let mut picked = spread_pick(&low, from_low);
    picked.extend(spread_pick(&moderate, from_moderate));
    PilotChoice {
        hosts: picked,
        spread,
        size_for_spread,
        size,
        from_low,
        from_moderate,
        eligible_low: low.len(),
        eligible_moderate: moderate.len(),
    }
}

fn round4(v: f64) -> f64 {
    (v * 10_000.0).round() / 10_000.0
}

impl Rollout {
    /// Starts a rollout at `now_ms`. `hosts` may be the whole fleet: hosts the plan's targets do
    /// not select are left out. Selects the pilot by risk band (its size adapts to the spread
    /// of the scores and to the judge's sample), holds back, remediates or schedules last the
    /// high-risk hosts per `risk.high_risk`, orders the rest safest first for the waves, and
    /// returns the first decisions (the pilot's applies and any remediations).
    pub fn start(
        id: String,
        plan: Plan,
        hosts: Vec<HostInput>,
        now_ms: i64,
    ) -> (Rollout, Vec<Decision>) {
        let mut r = Rollout {
            id,
            plan,
            phase: Phase::Running,
            pause_reason: None,
            started_ms: now_ms,
            finished_ms: None,
            now_ms,
            wave: 0,
            current: Vec::new(),
            queue: Vec::new(),
            last: Vec::new(),
            after_pilot: 0,
            assigned: 0,
            plan_step: 0,
            next_size: 0,
            slowed: false,
            failed_total: 0,
            failed_in_wave: 0,
            promote_requested: false,
            next_action_id: 1,
            pending: BTreeMap::new(),
            hosts: BTreeMap::new(),
            events: Vec::new(),
        };
        let mut out = Vec::new();
        let total = hosts.len();
        for h in hosts {
            if !r.plan.targets.matches(&h.labels, &h.attributes) || r.hosts.contains_key(&h.name) {
                continue;
            }
            let p = if h.probability.is_nan() {
                1.0
            } else {
                h.probability.clamp(0.0, 1.0)
            };
            let mut factors = h.factors;
            factors.truncate(5);
            let rec = HostRecord {
                band: r.plan.risk.band(p),
                name: h.name.clone(),
                probability: p,
                factors,
                labels: h.labels,
                drift: h.drift,
                wave: None,
                state: HostState::Waiting,
                applied: false,
                remediated: false,
                remediation: None,
                failed: false,
                revert_pending: false,
                scheduled_ms: None,
                applied_ms: None,
                bake_from_ms: None,
                finished_ms: None,
                last_verdict: None,
                last_verdict_ms: None,
                last_data_ms: None,
                reason: String::new(),
                figures: Value::Null,
                error: None,
            };
            r.hosts.insert(h.name, rec);
        }
        let scores: Vec<(f64, HostName)> = r
            .hosts
            .values()
            .map(|h| (h.probability, h.name.clone()))
            .collect();
        let count = |b: Band| r.hosts.values().filter(|h| h.band == b).count();
        let (n_low, n_mod, n_high) = (count(Band::Low), count(Band::Moderate), count(Band::High));
        r.event(
            &mut out,
            "rollout.started",
            None,
            format!(
                "Rolling out {} {} to {} of {} ({} low, {} moderate, {} high risk).",
                r.plan.update.name, r.plan.update.version, r.hosts.len(), bellwether_model::text::count(total, "host"), n_low, n_mod, n_high
            ),
            json!({ "targets": r.hosts.len(), "hosts_seen": total, "low": n_low, "moderate": n_mod, "high": n_high,
                    "low_below": r.plan.risk.low, "high_from": r.plan.risk.high }),
        );
        let pilot = select_pilot(&r.plan, &scores);
        r.event(
            &mut out,
            "pilot.selected",
            None,
            format!(
                "Pilot of {} ({} low, {} moderate risk): the scores' spread {:.3} asks for {}, the judge for at least {}.",
                bellwether_model::text::count(pilot.hosts.len(), "host"), pilot.from_low, pilot.from_moderate, pilot.spread, pilot.size_for_spread,
                if r.plan.analysis.judge.enabled { r.plan.analysis.judge.min_canaries } else { 0 }
            ),
            json!({ "hosts": pilot.hosts, "spread": round4(pilot.spread), "size_for_spread": pilot.size_for_spread,
                    "size": pilot.size, "from_low": pilot.from_low, "from_moderate": pilot.from_moderate,
                    "eligible_low": pilot.eligible_low, "eligible_moderate": pilot.eligible_moderate,
                    "pilot_min": r.plan.risk.pilot.min, "pilot_max": r.plan.risk.pilot.max }),
        );
        let in_pilot: std::collections::BTreeSet<&HostName> = pilot.hosts.iter().collect();
        // The rest, safest first.
        let mut rest: Vec<(f64, HostName)> = scores
            .iter()
            .filter(|(_, h)| !in_pilot.contains(h))
            .cloned()
            .collect();
        rest.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        let policy = r.plan.risk.high_risk;
        let mut later = 0usize;
        for (p, name) in rest {
            if r.hosts[&name].band != Band::High {
                r.queue.push(name);
                later += 1;
                continue;
            }
            let figures = json!({ "probability": round4(p), "high_from": r.plan.risk.high, "policy": policy });
            match policy {
                HighRiskPolicy::IncludeLast => {
                    r.last.push(name.clone());
                    later += 1;
                    r.set_reason(
                        &name,
                        format!(
                            "High risk (p = {p:.3} ≥ {}): scheduled in the last wave.",
                            r.plan.risk.high
                        ),
                        figures.clone(),
                    );
                    r.event(
                        &mut out,
                        "host.scheduled_last",
                        Some(name),
                        "High risk: scheduled after every other host.".into(),
                        figures,
                    );
                }
                HighRiskPolicy::RemediateThenDefer => {
                    let matched = r.hosts[&name].drift.as_ref().and_then(|d| {
                        r.plan
                            .remediation_for(&d.findings)
                            .map(|(i, f, s)| (i, f.attribute.clone(), s))
                    });
                    match matched {
                        Some((rule, attribute, spec)) => {
                            later += 1;
                            r.hosts.get_mut(&name).expect("known host").remediation =
                                Some(RemediationStage::BeforeUpdate);
                            r.set_state(&name, HostState::Remediating);
                            let fig = json!({ "probability": round4(p), "high_from": r.plan.risk.high, "rule": rule, "finding": attribute, "action": spec.describe() });
                            r.event(&mut out, "host.remediating", Some(name.clone()), format!("High risk with drift on {attribute}: remediating ({}) before it may join the last wave.", spec.describe()), fig);
                            r.dispatch(&mut out, &name, ActionKind::Remediate { rule }, spec);
                        }
                        None => r.hold_back(&mut out, &name, p, figures),
                    }
                }
                HighRiskPolicy::Defer => r.hold_back(&mut out, &name, p, figures),
            }
        }
        r.after_pilot = later;
        if let Waves::Adaptive { start, .. } = r.plan.waves {
            r.next_size = ((later as f64) * start / 100.0).ceil().max(1.0) as usize;
        }
        if r.hosts.is_empty() {
            r.finish(
                &mut out,
                Phase::Completed,
                "No host matches the plan's targets.".into(),
            );
            return (r, out);
        }
        if pilot.hosts.is_empty() {
            r.current = Vec::new();
            r.pause(
                &mut out,
                PauseReason::NoEligiblePilot,
                json!({ "high": n_high }),
            );
            return (r, out);
        }
        r.current = pilot.hosts.clone();
        for h in &pilot.hosts {
            r.schedule(&mut out, h, 0);
        }
        (r, out)
    }

    /// Advances the machine by one observation. Observations older than the latest one seen
    /// are taken at the latest time (time never runs backwards inside the engine).
    pub fn step(&mut self, obs: Observation) -> Vec<Decision> {
        let now = obs.now_ms().max(self.now_ms);
        self.now_ms = now;
        let mut out = Vec::new();
        // The checks that look at a whole wave run on ticks and operator commands only, so a
        // verdict or an action result costs O(log hosts) even in a wave of thousands; a wave
        // therefore ends on the tick after its last healthy verdict.
        let sweep = matches!(obs, Observation::Tick { .. } | Observation::Operator { .. });
        match obs {
            Observation::Tick { .. } => {}
            Observation::ActionFinished {
                action_id, result, ..
            } => self.on_action(&mut out, action_id, result),
            Observation::HostWatch {
                host,
                verdict,
                now_ms,
                data_ms,
            } => self.on_verdict(&mut out, &host, verdict, data_ms.unwrap_or(now_ms)),
            Observation::Operator { command, .. } => self.on_operator(&mut out, command),
            Observation::Hold { reason, .. } => self.on_hold(&mut out, reason),
        }
        if sweep {
            self.check_overdue(&mut out);
            self.check_no_data(&mut out);
            self.check_wave(&mut out);
        }
        self.check_finished(&mut out);
        out
    }

    /// Whether the rollout is over: its phase is final and every action it dispatched has
    /// reported or timed out. A driver keeps feeding results and ticks until then; a final
    /// phase alone is not the end (an abort's reverts are still in flight).
    pub fn is_settled(&self) -> bool {
        self.phase.is_final() && self.pending.is_empty()
    }

    /// The actions dispatched and not yet finished, as `Dispatch` decisions to re-send after a
    /// restart (the agent runs each id at most once).
    pub fn pending_dispatches(&self) -> Vec<Decision> {
        self.pending
            .iter()
            .map(|(id, p)| Decision::Dispatch {
                action_id: *id,
                host: p.host.clone(),
                kind: p.kind,
                spec: p.spec.clone(),
            })
            .collect()
    }

    /// The hosts this rollout covers (for the one-rollout-per-host rule).
    pub fn host_names(&self) -> impl Iterator<Item = &HostName> {
        self.hosts.keys()
    }

    /// The report: final state, every host with its probability, factors, band, wave, action,
    /// timestamps and reason, and the event log.
    pub fn report(&self) -> RolloutReport {
        let mut counts = BTreeMap::new();
        let hosts: Vec<HostReport> = self
            .hosts
            .values()
            .map(|h| {
                let action = h.action();
                *counts.entry(action).or_insert(0) += 1;
                HostReport {
                    host: h.name.clone(),
                    probability: h.probability,
                    factors: h.factors.clone(),
                    band: h.band,
                    wave: h.wave,
                    action,
                    state: h.state,
                    scheduled_ms: h.scheduled_ms,
                    applied_ms: h.applied_ms,
                    finished_ms: h.finished_ms,
                    reason: h.reason.clone(),
                    figures: h.figures.clone(),
                    error: h.error.clone(),
                }
            })
            .collect();
        RolloutReport {
            id: self.id.clone(),
            plan: self.plan.name.0.clone(),
            update: self.plan.update.name.0.clone(),
            version: self.plan.update.version.0.clone(),
            state: self.phase,
            pause_reason: self.pause_reason.as_ref().map(|r| r.to_string()),
            pause: self.pause_reason.clone(),
            started_ms: self.started_ms,
            finished_ms: self.finished_ms,
            wave: self.wave,
            counts,
            hosts,
            events: self.events.clone(),
        }
    }

    /// The compact status.
    pub fn status(&self) -> RolloutStatus {
        let mut by_state = BTreeMap::new();
        for h in self.hosts.values() {
            *by_state.entry(h.state).or_insert(0) += 1;
        }
        RolloutStatus {
            id: self.id.clone(),
            plan: self.plan.name.0.clone(),
            state: self.phase,
            pause_reason: self.pause_reason.as_ref().map(|r| r.to_string()),
            pause: self.pause_reason.clone(),
            wave: self.wave,
            hosts_total: self.hosts.len(),
            by_state,
            failed_total: self.failed_total,
            pending_actions: self.pending.len(),
            hosts: self
                .hosts
                .values()
                .map(|h| HostStatus {
                    host: h.name.clone(),
                    wave: h.wave,
                    band: h.band,
                    state: h.state,
                })
                .collect(),
        }
    }

    // ---- internals ----

    fn event(
        &mut self,
        out: &mut Vec<Decision>,
        kind: &str,
        host: Option<HostName>,
        reason: String,
        figures: Value,
    ) {
        let e = RolloutEvent {
            ts_ms: self.now_ms,
            kind: kind.into(),
            host,
            reason,
            figures,
        };
        self.events.push(e.clone());
        out.push(Decision::Event(e));
    }

    fn alert(
        &mut self,
        out: &mut Vec<Decision>,
        severity: AlertSeverity,
        message: String,
        figures: Value,
    ) {
        out.push(Decision::Alert {
            severity,
            message,
            figures,
        });
    }

    fn rec(&mut self, h: &HostName) -> &mut HostRecord {
        self.hosts
            .get_mut(h)
            .expect("the engine only names hosts it knows")
    }

    fn set_state(&mut self, h: &HostName, s: HostState) {
        let now = self.now_ms;
        let r = self.rec(h);
        r.state = s;
        if matches!(
            s,
            HostState::RolledBack
                | HostState::RevertFailed
                | HostState::Updated
                | HostState::Skipped
                | HostState::HeldBack
        ) {
            r.finished_ms = Some(now);
        }
    }

    fn set_reason(&mut self, h: &HostName, reason: String, figures: Value) {
        let r = self.rec(h);
        r.reason = reason;
        r.figures = figures;
    }

    fn hold_back(&mut self, out: &mut Vec<Decision>, h: &HostName, p: f64, figures: Value) {
        let reason = format!(
            "High risk (p = {p:.3} ≥ {}): held back from this rollout.",
            self.plan.risk.high
        );
        self.set_state(h, HostState::HeldBack);
        self.set_reason(h, reason.clone(), figures.clone());
        self.event(out, "host.held_back", Some(h.clone()), reason, figures);
    }

    fn dispatch(
        &mut self,
        out: &mut Vec<Decision>,
        h: &HostName,
        kind: ActionKind,
        spec: ActionSpec,
    ) -> u64 {
        let id = self.next_action_id;
        self.next_action_id += 1;
        self.pending.insert(
            id,
            PendingAction {
                host: h.clone(),
                kind,
                spec: spec.clone(),
                dispatched_ms: self.now_ms,
            },
        );
        out.push(Decision::Dispatch {
            action_id: id,
            host: h.clone(),
            kind,
            spec,
        });
        id
    }

    /// Puts a host in wave `wave` and dispatches its apply (once in its life).
    fn schedule(&mut self, out: &mut Vec<Decision>, h: &HostName, wave: u32) {
        let now = self.now_ms;
        let rec = self.rec(h);
        if rec.applied {
            return;
        }
        rec.applied = true;
        rec.wave = Some(wave);
        rec.scheduled_ms = Some(now);
        rec.state = HostState::Applying;
        let spec = self.plan.update.apply.clone();
        self.dispatch(out, h, ActionKind::Apply, spec);
    }

    fn on_action(&mut self, out: &mut Vec<Decision>, id: u64, result: ActionResult) {
        let Some(p) = self.pending.remove(&id) else {
            // A result for an action already finished (a re-sent result after a restart) or
            // never dispatched: nothing to do, and nothing may be done twice.
            self.event(
                out,
                "action.unknown",
                None,
                format!("Ignored a result for action {id}, which is not pending."),
                json!({ "action_id": id }),
            );
            return;
        };
        let h = p.host.clone();
        let took = self.now_ms - p.dispatched_ms;
        let error = match &result {
            ActionResult::Ok => None,
            ActionResult::Failed { error } => Some(error.clone()),
            ActionResult::TimedOut => Some(format!("timed out after {}ms", p.spec.timeout_ms())),
        };
        let figures = json!({ "action_id": id, "kind": p.kind.name(), "action": p.spec.describe(), "took_ms": took, "error": error });
        match (p.kind, error) {
            (ActionKind::Apply, None) => {
                let now = self.now_ms;
                let rec = self.rec(&h);
                rec.applied_ms = Some(now);
                rec.bake_from_ms = Some(now);
                rec.last_verdict = None;
                rec.last_verdict_ms = None;
                if rec.revert_pending {
                    self.event(
                        out,
                        "host.applied",
                        Some(h.clone()),
                        "Applied, but the rollout was aborted meanwhile: reverting.".into(),
                        figures,
                    );
                    self.revert(out, &h);
                    return;
                }
                self.set_state(&h, HostState::Baking);
                self.set_reason(
                    &h,
                    format!("Updated to {}; baking.", self.plan.update.version),
                    figures.clone(),
                );
                self.event(
                    out,
                    "host.applied",
                    Some(h),
                    format!("Applied in {took}ms; watching the host through its bake."),
                    figures,
                );
            }
            (ActionKind::Apply, Some(err)) => {
                self.rec(&h).error = Some(err.clone());
                let reason = format!("The apply action failed: {err}.");
                self.host_failed(out, &h, reason, figures, false);
            }
            (ActionKind::Revert, None) => {
                self.set_state(&h, HostState::RolledBack);
                if !self.hosts[&h].failed {
                    // Reverted because of the abort: say so, not the "Updated to" of before.
                    self.set_reason(
                        &h,
                        format!("Rolled back in {took}ms: the rollout was aborted."),
                        figures.clone(),
                    );
                }
                self.event(
                    out,
                    "host.rolled_back",
                    Some(h),
                    format!("Reverted in {took}ms."),
                    figures,
                );
            }
            (ActionKind::Revert, Some(err)) => {
                self.rec(&h).error = Some(err.clone());
                self.set_state(&h, HostState::RevertFailed);
                self.set_reason(
                    &h,
                    format!("The revert failed ({err}): the host needs a human."),
                    figures.clone(),
                );
                self.event(
                    out,
                    "host.revert_failed",
                    Some(h.clone()),
                    format!("The revert failed: {err}."),
                    figures.clone(),
                );
                self.alert(
                    out,
                    AlertSeverity::Critical,
                    format!("Reverting {h} failed: {err}; the host needs a human."),
                    figures.clone(),
                );
                if self.phase == Phase::Running {
                    self.pause(out, PauseReason::RevertFailed { host: h.clone() }, figures);
                }
            }
            (ActionKind::Remediate { rule }, None) => {
                self.rec(&h).remediated = true;
                let stage = self.hosts[&h].remediation;
                if self.hosts[&h].revert_pending {
                    self.revert(out, &h);
                    return;
                }
                match stage {
                    Some(RemediationStage::AfterFailure) => {
                        let now = self.now_ms;
                        let rec = self.rec(&h);
                        rec.bake_from_ms = Some(now);
                        rec.last_verdict = None;
                        rec.last_verdict_ms = None;
                        self.set_state(&h, HostState::Baking);
                        self.set_reason(
                            &h,
                            format!("Remediated by rule {rule} after failing; baking again."),
                            figures.clone(),
                        );
                        self.event(
                            out,
                            "host.remediated",
                            Some(h),
                            format!("Remediated in {took}ms; baking again from now."),
                            figures,
                        );
                    }
                    _ => {
                        if self.phase.is_final() {
                            self.set_state(&h, HostState::Skipped);
                        } else {
                            self.set_state(&h, HostState::Waiting);
                            self.last.push(h.clone());
                        }
                        self.set_reason(
                            &h,
                            format!(
                                "High risk, remediated by rule {rule}; scheduled in the last wave."
                            ),
                            figures.clone(),
                        );
                        self.event(
                            out,
                            "host.remediated",
                            Some(h),
                            format!("Remediated in {took}ms; the host joins the last wave."),
                            figures,
                        );
                    }
                }
            }
            (ActionKind::Remediate { .. }, Some(err)) => {
                self.rec(&h).error = Some(err.clone());
                match self.hosts[&h].remediation {
                    Some(RemediationStage::AfterFailure) => {
                        self.event(
                            out,
                            "host.remediation_failed",
                            Some(h.clone()),
                            format!("The remediation failed: {err}; rolling back."),
                            figures,
                        );
                        self.revert(out, &h);
                    }
                    _ => {
                        let reason =
                            format!("High risk and the remediation failed ({err}): held back.");
                        self.set_state(&h, HostState::HeldBack);
                        self.set_reason(&h, reason.clone(), figures.clone());
                        self.event(out, "host.remediation_failed", Some(h), reason, figures);
                    }
                }
            }
        }
    }

    fn revert(&mut self, out: &mut Vec<Decision>, h: &HostName) {
        let rec = self.rec(h);
        rec.revert_pending = false;
        if matches!(
            rec.state,
            HostState::RollingBack | HostState::RolledBack | HostState::RevertFailed
        ) {
            return;
        }
        self.set_state(h, HostState::RollingBack);
        let spec = self.plan.update.revert.clone();
        self.dispatch(out, h, ActionKind::Revert, spec);
    }

    fn outcome(&self, out: &mut Vec<Decision>, h: &HostName, failed: bool) {
        let rec = &self.hosts[h];
        let mut f: BTreeMap<String, Value> = BTreeMap::new();
        f.insert("update".into(), json!(self.plan.update.name.0));
        f.insert("version".into(), json!(self.plan.update.version.0));
        f.insert("predicted_probability".into(), json!(rec.probability));
        f.insert("wave".into(), json!(rec.wave));
        for (k, v) in &rec.labels {
            f.insert(format!("label:{k}"), json!(v));
        }
        if let Some(d) = &rec.drift {
            f.insert("drift_overall".into(), json!(d.overall.get()));
            f.insert("drift_configuration".into(), json!(d.configuration.get()));
            f.insert("drift_performance".into(), json!(d.performance.get()));
            f.insert("drift_dependency".into(), json!(d.dependency.get()));
            f.insert("drift_findings".into(), json!(d.findings.len()));
        }
        out.push(Decision::Outcome {
            host: h.clone(),
            failed,
            features: f,
        });
    }

    /// A host failed (a verdict or its apply action): count it, then remediate it, roll it
    /// back alone, or abort, per the plan; then check the slow-down and pause limits.
    fn host_failed(
        &mut self,
        out: &mut Vec<Decision>,
        h: &HostName,
        reason: String,
        figures: Value,
        may_remediate: bool,
    ) {
        let first = !self.hosts[h].failed;
        if first {
            self.rec(h).failed = true;
            self.failed_total += 1;
            if self.hosts[h].wave == Some(self.wave) {
                self.failed_in_wave += 1;
            }
            self.outcome(out, h, true);
        }
        self.set_reason(h, reason.clone(), figures.clone());
        self.event(
            out,
            "host.failed",
            Some(h.clone()),
            reason.clone(),
            figures.clone(),
        );
        if !self.plan.rollback.targeted && !self.phase.is_final() {
            self.revert(out, h);
            self.abort(
                out,
                format!("{h} failed and rollback is not targeted"),
                figures,
            );
            return;
        }
        let remediation =
            if may_remediate && self.plan.rollback.remediate_first && !self.hosts[h].remediated {
                self.hosts[h].drift.as_ref().and_then(|d| {
                    self.plan
                        .remediation_for(&d.findings)
                        .map(|(i, f, s)| (i, f.attribute.clone(), s))
                })
            } else {
                None
            };
        match remediation {
            Some((rule, attribute, spec)) if !self.phase.is_final() => {
                self.rec(h).remediation = Some(RemediationStage::AfterFailure);
                self.set_state(h, HostState::Remediating);
                let fig = json!({ "rule": rule, "finding": attribute, "action": spec.describe() });
                self.event(
                    out,
                    "host.remediating",
                    Some(h.clone()),
                    format!(
                        "Remediating the drift on {attribute} ({}) before deciding on a rollback.",
                        spec.describe()
                    ),
                    fig,
                );
                self.dispatch(out, h, ActionKind::Remediate { rule }, spec);
            }
            _ => {
                self.event(
                    out,
                    "host.rolling_back",
                    Some(h.clone()),
                    "Rolling this host back alone.".into(),
                    json!({ "failed_total": self.failed_total }),
                );
                self.revert(out, h);
            }
        }
        self.check_limits(out);
    }

    fn check_limits(&mut self, out: &mut Vec<Decision>) {
        if self.phase.is_final() {
            return;
        }
        let size = self.current.len();
        let figures = json!({ "failed_total": self.failed_total, "failed_in_wave": self.failed_in_wave, "wave_size": size, "wave": self.wave });
        if self.phase == Phase::Running
            && self
                .plan
                .rollback
                .pause_when
                .reached(self.failed_total, self.failed_in_wave, size)
        {
            self.pause(
                out,
                PauseReason::FailuresSpread {
                    failed_total: self.failed_total,
                    failed_in_wave: self.failed_in_wave,
                    wave_size: size,
                    wave: self.wave,
                },
                figures,
            );
        } else if !self.slowed
            && self.plan.rollback.slow_down_when.reached(
                self.failed_total,
                self.failed_in_wave,
                size,
            )
        {
            self.slowed = true;
            // Reached while paused (the failure that paused the rollout may already have
            // passed both limits): the halving waits for the resume, and says so.
            let when = if self.phase == Phase::Paused {
                "once the rollout is resumed, its next wave is halved"
            } else {
                "the next wave is halved"
            };
            self.event(
                out,
                "rollout.slowed_down",
                None,
                format!("{} failed: {when}.", count(self.failed_total, "host")),
                figures,
            );
        }
    }

    /// Pauses a running rollout; the `rollout.paused` event carries the typed reason in its
    /// figures, under `pause_reason`.
    fn pause(&mut self, out: &mut Vec<Decision>, why: PauseReason, mut figures: Value) {
        if self.phase != Phase::Running {
            return;
        }
        self.phase = Phase::Paused;
        let reason = why.to_string();
        with_pause_reason(&mut figures, &why);
        self.pause_reason = Some(why);
        self.event(
            out,
            "rollout.paused",
            None,
            format!("Paused: {reason}."),
            figures.clone(),
        );
        self.alert(
            out,
            AlertSeverity::Warning,
            format!("Rollout {} paused: {reason}.", self.id),
            figures,
        );
    }

    fn abort(&mut self, out: &mut Vec<Decision>, reason: String, figures: Value) {
        if self.phase.is_final() {
            return;
        }
        self.phase = Phase::Aborted;
        self.pause_reason = None;
        let names: Vec<HostName> = self.hosts.keys().cloned().collect();
        let mut reverting = 0;
        for h in &names {
            match self.hosts[h].state {
                HostState::Baking | HostState::Updated => {
                    reverting += 1;
                    if !self.hosts[h].failed {
                        self.set_reason(
                            h,
                            format!("Rolling back: the rollout was aborted ({reason})."),
                            Value::Null,
                        );
                    }
                    self.revert(out, h);
                }
                HostState::Applying | HostState::Remediating if self.hosts[h].applied => {
                    reverting += 1;
                    self.rec(h).revert_pending = true;
                    if !self.hosts[h].failed {
                        self.set_reason(
                            h,
                            format!("To roll back once its action ends: the rollout was aborted ({reason})."),
                            Value::Null,
                        );
                    }
                }
                HostState::Waiting => {
                    self.set_state(h, HostState::Skipped);
                    self.set_reason(
                        h,
                        format!("Skipped: the rollout was aborted ({reason})."),
                        Value::Null,
                    );
                }
                _ => {}
            }
        }
        let mut fig = figures;
        if let Value::Object(m) = &mut fig {
            m.insert("reverting".into(), json!(reverting));
        }
        self.event(
            out,
            "rollout.aborted",
            None,
            format!("Aborted: {reason}; reverting {reverting} updated hosts."),
            fig.clone(),
        );
        self.alert(
            out,
            AlertSeverity::Critical,
            format!("Rollout {} aborted: {reason}.", self.id),
            fig,
        );
        self.queue.clear();
        self.last.clear();
    }

    fn finish(&mut self, out: &mut Vec<Decision>, phase: Phase, reason: String) {
        self.phase = phase;
        // Finished only once nothing is in flight; otherwise `check_finished` sets it when the
        // last pending action reports.
        if self.pending.is_empty() {
            self.finished_ms = Some(self.now_ms);
        }
        let figures = json!({ "hosts": self.hosts.len(), "failed_total": self.failed_total, "waves": self.wave + 1 });
        self.event(out, "rollout.completed", None, reason, figures);
    }

    fn on_verdict(
        &mut self,
        out: &mut Vec<Decision>,
        h: &HostName,
        verdict: WatchVerdict,
        data_ms: i64,
    ) {
        let now = self.now_ms;
        let Some(rec) = self.hosts.get_mut(h) else {
            return;
        };
        let watched = matches!(rec.state, HostState::Baking | HostState::Updated);
        let was_no_data = rec.last_verdict == Some(VerdictKind::NoData);
        if !watched || self.phase.is_final() {
            return;
        }
        rec.last_verdict_ms = Some(now);
        match verdict {
            WatchVerdict::Healthy => {
                rec.last_verdict = Some(VerdictKind::Healthy);
                rec.last_data_ms = Some(data_ms);
                if was_no_data {
                    self.event(
                        out,
                        "host.data_back",
                        Some(h.clone()),
                        "Samples arrive again.".into(),
                        json!({}),
                    );
                }
            }
            WatchVerdict::NoData { since_ms, missing } => {
                rec.last_verdict = Some(VerdictKind::NoData);
                if !was_no_data {
                    self.no_data(out, h, since_ms, missing);
                }
            }
            WatchVerdict::Critical { reason, figures } => {
                rec.last_verdict = Some(VerdictKind::Critical);
                if self.plan.rollback.abort_on_critical {
                    self.host_failed_critical(out, h, reason, figures);
                } else {
                    self.host_failed(out, h, format!("Critical: {reason}"), figures, true);
                }
            }
            WatchVerdict::Failing { reason, figures } => {
                rec.last_verdict = Some(VerdictKind::Failing);
                self.host_failed(out, h, reason, figures, true);
            }
        }
    }

    fn host_failed_critical(
        &mut self,
        out: &mut Vec<Decision>,
        h: &HostName,
        reason: String,
        figures: Value,
    ) {
        if !self.hosts[h].failed {
            self.rec(h).failed = true;
            self.failed_total += 1;
            if self.hosts[h].wave == Some(self.wave) {
                self.failed_in_wave += 1;
            }
            self.outcome(out, h, true);
        }
        let reason = format!("Critical: {reason}");
        self.set_reason(h, reason.clone(), figures.clone());
        self.event(
            out,
            "host.failed",
            Some(h.clone()),
            reason.clone(),
            figures.clone(),
        );
        self.abort(
            out,
            format!("a critical metric breached on {h}"),
            json!({ "host": h, "reason": reason, "figures": figures }),
        );
    }

    fn no_data(
        &mut self,
        out: &mut Vec<Decision>,
        h: &HostName,
        since_ms: i64,
        missing: Option<MissingData>,
    ) {
        let mut figures = json!({ "since_ms": since_ms, "silent_ms": self.now_ms - since_ms, "after_ms": self.plan.no_data.after_ms() });
        let reason = match &missing {
            None => format!(
                "No samples for {}ms: neither promoting nor rolling back on no data.",
                self.now_ms - since_ms
            ),
            Some(m) => {
                figures["metric"] = json!(m.metric);
                figures["query"] = json!(m.query);
                figures["problem"] = json!(m.problem);
                figures["source"] = json!("prometheus");
                format!(
                    "No data from Prometheus for {}ms: {m}. Neither promoting nor rolling back on no data.",
                    self.now_ms - since_ms
                )
            }
        };
        self.event(
            out,
            "host.no_data",
            Some(h.clone()),
            reason,
            figures.clone(),
        );
        if self.phase == Phase::Running {
            self.pause(
                out,
                PauseReason::NoData {
                    host: h.clone(),
                    missing,
                },
                figures,
            );
        } else {
            self.alert(
                out,
                AlertSeverity::Warning,
                format!("No data from {h} in rollout {}.", self.id),
                figures,
            );
        }
    }

    fn on_hold(&mut self, out: &mut Vec<Decision>, reason: String) {
        let figures = json!({ "phase": self.phase, "wave": self.wave, "pending_actions": self.pending.len() });
        self.event(
            out,
            "rollout.held",
            None,
            format!("Held by the server: {reason}."),
            figures.clone(),
        );
        if self.phase == Phase::Running {
            self.phase = Phase::Paused;
            let why = PauseReason::Held {
                reason: reason.clone(),
            };
            let mut paused = figures.clone();
            with_pause_reason(&mut paused, &why);
            self.pause_reason = Some(why);
            self.event(
                out,
                "rollout.paused",
                None,
                format!("Paused: {reason}."),
                paused,
            );
        }
        self.alert(
            out,
            AlertSeverity::Critical,
            format!(
                "Rollout {} held: {reason}; resume it once the cause is fixed.",
                self.id
            ),
            figures,
        );
    }

    fn on_operator(&mut self, out: &mut Vec<Decision>, c: OperatorCommand) {
        let fig = json!({ "command": c, "phase": self.phase, "wave": self.wave });
        if self.phase.is_final() {
            self.event(
                out,
                "operator.ignored",
                None,
                format!(
                    "Ignored {}: the rollout is {}.",
                    c.name(),
                    self.phase.name()
                ),
                fig,
            );
            return;
        }
        match c {
            OperatorCommand::Pause => {
                if self.phase == Phase::Running {
                    self.pause(out, PauseReason::Operator, fig);
                }
            }
            OperatorCommand::Resume => {
                if self.phase == Phase::Paused {
                    self.phase = Phase::Running;
                    self.pause_reason = None;
                    let silent: Vec<&HostName> = self
                        .hosts
                        .values()
                        .filter(|h| h.last_verdict == Some(VerdictKind::NoData))
                        .map(|h| &h.name)
                        .collect();
                    let figures = json!({ "wave": self.wave, "hosts_without_data": silent });
                    self.event(
                        out,
                        "rollout.resumed",
                        None,
                        "Resumed by the operator.".into(),
                        figures,
                    );
                }
            }
            OperatorCommand::Abort => self.abort(out, "aborted by the operator".into(), fig),
            OperatorCommand::Promote => {
                self.promote_requested = true;
                if self.phase == Phase::Paused {
                    self.phase = Phase::Running;
                    self.pause_reason = None;
                }
                self.event(
                    out,
                    "rollout.promote_requested",
                    None,
                    format!("The operator ends wave {}'s bake now.", self.wave),
                    fig,
                );
            }
            OperatorCommand::RollBack { host } => {
                let state = self.hosts.get(&host).map(|h| h.state);
                match state {
                    Some(HostState::Baking | HostState::Updated) => {
                        self.rec(&host).last_verdict = Some(VerdictKind::Failing);
                        self.host_failed(
                            out,
                            &host,
                            "Rolled back by the operator.".into(),
                            json!({ "command": "roll_back", "wave": self.wave }),
                            false,
                        );
                    }
                    other => {
                        let why = match other {
                            None => "it is not in this rollout".to_string(),
                            Some(s) => format!("it is {}, not updated or baking", state_name(s)),
                        };
                        self.event(
                            out,
                            "operator.ignored",
                            Some(host.clone()),
                            format!("Ignored roll back of {host}: {why}."),
                            json!({ "command": "roll_back", "host": host, "state": other }),
                        );
                    }
                }
            }
        }
    }

    /// Whether `host` is one an operator may roll back now: in this rollout, which is not
    /// over, and updated or baking. `Err` says why not, for the API's 409.
    pub fn can_roll_back(&self, host: &HostName) -> Result<(), String> {
        if self.phase.is_final() {
            return Err(format!(
                "rollout {} is {}; a host is rolled back by hand only while it runs or is paused",
                self.id,
                self.phase.name()
            ));
        }
        match self.hosts.get(host).map(|h| h.state) {
            None => Err(format!("{host} is not in rollout {}", self.id)),
            Some(HostState::Baking | HostState::Updated) => Ok(()),
            Some(s) => Err(format!(
                "{host} is {}; only an updated or baking host can be rolled back",
                state_name(s)
            )),
        }
    }

    /// An action that has not reported within its timeout plus the no-data time counts as
    /// timed out: the agent may be gone, and the host must not wait forever.
    fn check_overdue(&mut self, out: &mut Vec<Decision>) {
        let grace = self.plan.no_data.after_ms();
        let now = self.now_ms;
        let overdue: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| now > p.dispatched_ms + p.spec.timeout_ms() as i64 + grace)
            .map(|(id, _)| *id)
            .collect();
        for id in overdue {
            let p = &self.pending[&id];
            let figures = json!({ "action_id": id, "host": p.host, "timeout_ms": p.spec.timeout_ms(), "grace_ms": grace });
            let host = p.host.clone();
            self.event(
                out,
                "action.overdue",
                Some(host),
                "No result within the action's timeout and the no-data time: counted as timed out."
                    .into(),
                figures,
            );
            self.on_action(out, id, ActionResult::TimedOut);
        }
    }

    /// A baking host whose last verdict is older than `no_data.after` has no data.
    fn check_no_data(&mut self, out: &mut Vec<Decision>) {
        if self.phase.is_final() {
            return;
        }
        let after = self.plan.no_data.after_ms();
        let now = self.now_ms;
        let silent: Vec<(HostName, i64)> = self
            .current
            .iter()
            .filter_map(|h| {
                let r = &self.hosts[h];
                if r.state != HostState::Baking || r.last_verdict == Some(VerdictKind::NoData) {
                    return None;
                }
                let since = r.last_verdict_ms.or(r.bake_from_ms)?;
                (now - since > after).then(|| (h.clone(), since))
            })
            .collect();
        for (h, since) in silent {
            self.rec(&h).last_verdict = Some(VerdictKind::NoData);
            self.no_data(out, &h, since, None);
        }
    }

    /// Ends the current wave when every host in it is settled: each updated host baked for the
    /// bake time with a fresh healthy verdict (never on no data), no action in flight. Then
    /// starts the next wave or completes.
    fn check_wave(&mut self, out: &mut Vec<Decision>) {
        if self.phase != Phase::Running {
            return;
        }
        let bake = self.plan.bake_ms();
        let now = self.now_ms;
        let forced = self.promote_requested;
        let mut baking = 0usize;
        for h in &self.current {
            let r = &self.hosts[h];
            if r.in_flight() {
                return;
            }
            if r.state == HostState::Baking {
                baking += 1;
                if forced {
                    continue;
                }
                let Some(from) = r.bake_from_ms else { return };
                if now - from < bake {
                    return;
                }
                // Healthy on samples that reach the end of the bake: a verdict given now on
                // samples from before the bake ended proves nothing about its end.
                let fresh = r.last_verdict == Some(VerdictKind::Healthy)
                    && r.last_verdict_ms.is_some_and(|t| t >= from)
                    && r.last_data_ms.is_some_and(|t| t >= from + bake);
                if !fresh {
                    return;
                }
            }
        }
        self.promote_requested = false;
        let wave_hosts = self.current.clone();
        for h in &wave_hosts {
            if self.hosts[h].state == HostState::Baking {
                self.set_state(h, HostState::Updated);
                if !self.hosts[h].remediated {
                    let reason = format!(
                        "Updated to {}: healthy through the bake.",
                        self.plan.update.version
                    );
                    self.set_reason(h, reason, json!({ "bake_ms": bake, "wave": self.wave }));
                }
                if !self.hosts[h].failed {
                    self.outcome(out, h, false);
                }
            }
        }
        let failed = wave_hosts.iter().filter(|h| self.hosts[*h].failed).count();
        let figures = json!({ "wave": self.wave, "hosts": wave_hosts.len(), "updated": baking, "failed": failed, "bake_ms": bake, "forced_by_operator": forced });
        let bake_text = bellwether_model::Dur(std::time::Duration::from_millis(
            u64::try_from(bake).unwrap_or(0),
        ));
        let n = wave_hosts.len();
        let reason = match (forced, failed) {
            (true, 0) => format!(
                "Wave {} promoted by the operator: {} updated.",
                self.wave,
                count(baking, "host")
            ),
            (true, _) => format!(
                "Wave {} promoted by the operator: {baking} of {} updated, {failed} failed.",
                self.wave,
                count(n, "host")
            ),
            (false, 0) => format!(
                "Wave {} passed its {bake_text} bake: {} updated.",
                self.wave,
                count(baking, "host")
            ),
            // Not "passed" when hosts failed in it: the wave's bake is over, the rollout
            // goes on with the hosts that did not fail.
            (false, _) => format!(
                "Wave {} finished its {bake_text} bake: {baking} of {} updated, {failed} failed.",
                self.wave,
                count(n, "host")
            ),
        };
        self.event(out, "wave.passed", None, reason, figures);
        self.next_wave(out);
    }

    fn next_wave(&mut self, out: &mut Vec<Decision>) {
        if self.queue.is_empty() && self.last.is_empty() {
            self.current.clear();
            let in_state = |s: HostState| self.hosts.values().filter(|h| h.state == s).count();
            let mut parts = vec![format!(
                "{} of {} updated",
                in_state(HostState::Updated),
                count(self.hosts.len(), "host")
            )];
            let held = in_state(HostState::HeldBack);
            if held > 0 {
                parts.push(format!("{held} held back"));
            }
            let skipped = in_state(HostState::Skipped);
            if skipped > 0 {
                parts.push(format!("{skipped} skipped"));
            }
            parts.push(format!("{} failed", self.failed_total));
            let reason = format!("Completed: {}.", parts.join(", "));
            self.finish(out, Phase::Completed, reason);
            return;
        }
        let remaining = self.queue.len() + self.last.len();
        let (mut size, rule) = match &self.plan.waves {
            Waves::Fixed(pcts) => {
                let step = self.plan_step.min(pcts.len() - 1);
                let target = ((self.after_pilot as f64) * pcts[step] / 100.0).ceil() as usize;
                (
                    target.saturating_sub(self.assigned).max(1),
                    format!("fixed {}%", pcts[step]),
                )
            }
            Waves::Adaptive { .. } => (
                self.next_size.max(1),
                format!("adaptive size {}", self.next_size.max(1)),
            ),
        };
        let slowed = self.slowed;
        if slowed {
            size = (size / 2).max(1);
        } else {
            self.plan_step += 1;
            if let Waves::Adaptive { factor, .. } = self.plan.waves {
                self.next_size = ((self.next_size.max(1) as f64) * factor).ceil() as usize;
            }
        }
        self.slowed = false;
        size = size.min(remaining);
        self.wave += 1;
        self.failed_in_wave = 0;
        let take_q = size.min(self.queue.len());
        let mut hosts: Vec<HostName> = self.queue.drain(..take_q).collect();
        let take_l = (size - take_q).min(self.last.len());
        hosts.extend(self.last.drain(..take_l));
        self.assigned += hosts.len();
        let figures = json!({ "wave": self.wave, "size": hosts.len(), "rule": rule, "halved": slowed, "remaining_after": self.queue.len() + self.last.len() });
        self.event(
            out,
            "wave.started",
            None,
            format!(
                "Wave {} starts on {} ({rule}{}).",
                self.wave,
                count(hosts.len(), "host"),
                if slowed {
                    ", halved after failures"
                } else {
                    ""
                }
            ),
            figures,
        );
        self.current = hosts.clone();
        let wave = self.wave;
        for h in &hosts {
            self.schedule(out, h, wave);
        }
    }

    /// Sets `finished_ms` when a final rollout's last pending action has reported (or timed
    /// out), with the event `rollout.finished`.
    fn check_finished(&mut self, out: &mut Vec<Decision>) {
        if !self.is_settled() || self.finished_ms.is_some() {
            return;
        }
        self.finished_ms = Some(self.now_ms);
        let rolled = self
            .hosts
            .values()
            .filter(|h| h.state == HostState::RolledBack)
            .count();
        let failed = self
            .hosts
            .values()
            .filter(|h| h.state == HostState::RevertFailed)
            .count();
        let what = if self.phase == Phase::Aborted {
            "Aborted"
        } else {
            "Completed"
        };
        self.event(
            out,
            "rollout.finished",
            None,
            format!(
                "{what} rollout settled: its last action has reported; {} rolled back, {} failed.",
                count(rolled, "host"),
                count(failed, "revert")
            ),
            json!({ "rolled_back": rolled, "revert_failed": failed, "phase": self.phase }),
        );
    }
}

#[cfg(test)]
mod tests;
