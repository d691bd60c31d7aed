//! The JSON bodies of the API, shared with the `bellwether` CLI so that both sides agree on
//! one shape. API.md in the repository's docs is the contract they implement. The bodies an
//! agent sends and receives live in [`bellwether_model::wire`], shared with the agent.

use std::collections::BTreeMap;

use bellwether_model::{DriftScore, HostName, HostProfile};
use serde::{Deserialize, Serialize};

/// The agent's bodies (enrolment, samples) are the one definition in
/// [`bellwether_model::wire`], shared with the agent.
pub use bellwether_model::wire::{EnrolRequest, EnrolResponse, SamplesRequest, SamplesResponse};

/// One row of `GET /api/v1/hosts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostSummary {
    pub name: HostName,
    pub labels: BTreeMap<String, String>,
    pub last_seen_ms: Option<i64>,
    pub has_baseline: bool,
    pub overall_drift: Option<f64>,
}

/// `GET /api/v1/hosts/{name}`. `enrolled_at_ms`, `baseline_at_ms` and `overall_drift` are
/// additions to the v1 contract.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostDetail {
    pub name: HostName,
    pub labels: BTreeMap<String, String>,
    pub last_seen_ms: Option<i64>,
    pub profile: Option<HostProfile>,
    #[serde(default)]
    pub enrolled_at_ms: i64,
    #[serde(default)]
    pub baseline_at_ms: Option<i64>,
    #[serde(default)]
    pub overall_drift: Option<f64>,
}

/// `POST /api/v1/baselines`: either `hosts` or `all: true`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaselineRequest {
    #[serde(default)]
    pub hosts: Vec<HostName>,
    #[serde(default)]
    pub all: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    pub host: HostName,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaselineResponse {
    pub captured: Vec<HostName>,
    pub skipped: Vec<Skipped>,
}

/// One host of `GET /api/v1/fleet/drift`; `score` is all zeros when `has_baseline` is false.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetHost {
    pub name: HostName,
    pub labels: BTreeMap<String, String>,
    pub score: DriftScore,
    pub has_baseline: bool,
}

/// `GET /api/v1/fleet/drift`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetDrift {
    /// Sorted by overall drift, highest first; findings cut to the top 5.
    pub hosts: Vec<FleetHost>,
    /// Hosts whose configuration differs from the majority of their peers (hosts with the same
    /// value of the peer label, `role` by default), most differences first.
    pub peer_outliers: Vec<PeerOutlierEntry>,
}

/// One host that differs from its peers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerOutlierEntry {
    /// The label the peers share, such as `role`.
    pub label: String,
    /// Its value, such as `web`.
    pub value: String,
    /// How many hosts share that value, this one included.
    pub peers: usize,
    pub host: String,
    /// What differs from the majority, by attribute.
    pub differences: Vec<bellwether_drift::peers::PeerDifference>,
}

/// The top findings kept per host in the fleet view.
pub const FLEET_TOP_FINDINGS: usize = 5;

// ---- configuration (docs/api.md, "Configuration") ---------------------------------------------

/// One row of `GET /api/v1/config/sources`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigSourceSummary {
    pub host: String,
    /// `NAME` of a database (the agent's `--database NAME=URL`), `file:PATH` of a file.
    pub source: String,
    /// `postgres` or `file`.
    pub kind: String,
    pub updated_ms: i64,
    /// How many keys its latest report has.
    pub keys: usize,
    /// The newest stored graph version, `None` before the agent sent one.
    pub graph_version: Option<i64>,
}

/// `POST /api/v1/config/snapshots`: a snapshot of a source's latest report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TakeSnapshotRequest {
    pub host: String,
    pub source: String,
    #[serde(default)]
    pub reason: Option<String>,
}

/// `POST /api/v1/config/snapshots/{id}/restore` (an empty object).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreSnapshotRequest {
    /// Overrides the change's description (default `restore snapshot ID`).
    #[serde(default)]
    pub description: Option<String>,
}

/// `POST /api/v1/config/simulate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulateRequest {
    pub host: String,
    pub source: String,
    /// `[[KEY, VALUE]]`, `null` resetting to the default.
    pub set: Vec<(String, Option<String>)>,
}

/// One instance of a configuration change: the host whose agent runs the actions, and the
/// agent's name for the database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigTargetBody {
    pub host: String,
    pub database: String,
}

/// `POST /api/v1/config/tasks`: either `plan` (the YAML of docs/config-apply.md) or `targets`
/// and `set` (with the optional fields; the watch takes its documented defaults).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigTaskRequest {
    #[serde(default)]
    pub plan: Option<String>,
    /// The plan's file name, for error messages.
    #[serde(default)]
    pub file: Option<String>,
    #[serde(default)]
    pub targets: Vec<ConfigTargetBody>,
    #[serde(default)]
    pub set: Vec<(String, Option<String>)>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub author: Option<String>,
    #[serde(default)]
    pub risk_threshold: Option<f64>,
    #[serde(default)]
    pub trial: Option<bool>,
    /// The task id (default `c-<ms>-<random>`).
    #[serde(default)]
    pub id: Option<String>,
}

/// `POST /api/v1/config/tasks/{id}/abort` and `…/revert` (the body is optional).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigCommandRequest {
    #[serde(default)]
    pub reason: Option<String>,
}

/// A config task as answered by `POST /api/v1/config/tasks`, `GET …/{id}` and the commands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigTaskStatus {
    pub id: String,
    /// `running`, `completed`, `rolled_back`, `refused`, `aborted` or `failed`.
    pub phase: String,
    /// Final and no action in flight.
    pub settled: bool,
    pub created_at_ms: i64,
    pub description: String,
    pub targets: Vec<ConfigTargetBody>,
    pub set: Vec<(String, Option<String>)>,
    /// The engine's report (per target its state, snapshot, timings; for a rollback the
    /// root-cause change, the traced settings and the risk).
    pub report: serde_json::Value,
}
