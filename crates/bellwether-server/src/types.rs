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
