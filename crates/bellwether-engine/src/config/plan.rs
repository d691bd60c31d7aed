//! A configuration change's plan: from YAML (`bellwether config apply PLAN.yaml`, the API) or
//! built from flags. Every field checked inside the YAML deserialiser (file, line, column and
//! field path in errors), like the rollout and patch plans (`crate::yaml`).
//!
//! OWNER: helper `confengine`.

use serde::{Deserialize, Serialize};

/// One instance: the host whose agent runs the actions, and the agent's name for the database
/// (`--database NAME=URL` on that agent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub host: String,
    pub database: String,
}

/// One metric's band (`bellwether_detect::threshold`): the metric name
/// (`bellwether_config::metrics`), the bad direction, the percentage band around the baseline,
/// how long a breach must last, and its weight in the severity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricRule {
    pub metric: String,
    pub direction: bellwether_detect::threshold::Direction,
    pub percent: f64,
    pub for_ms: u64,
    pub weight: f64,
}

/// How a target is watched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatchSpec {
    /// The baseline is the samples in this window strictly before the apply.
    pub baseline_ms: u64,
    /// At least this many baseline samples, or the target waits (no data).
    pub min_baseline_samples: usize,
    /// Watched this long after the apply before it is promoted.
    pub bake_ms: u64,
    /// After a revert, metrics must be back in the band this long to count as recovered
    /// (given up after `confirm_timeout_ms`).
    pub confirm_ms: u64,
    pub confirm_timeout_ms: u64,
    pub rules: Vec<MetricRule>,
}

/// A configuration change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigPlan {
    pub description: String,
    pub author: String,
    /// Canary first: targets[0] is the canary; the rest follow one at a time once it passes.
    pub targets: Vec<Target>,
    /// Key → new value (`None` resets to the default), in the order given.
    pub set: Vec<(String, Option<String>)>,
    pub watch: WatchSpec,
    /// Revert when the anomaly's risk score is at or above this, in (0, 1).
    pub risk_threshold: f64,
    /// Run a scratch trial start on each target's host before touching it (default true).
    pub trial: bool,
}

/// A plan that is not valid: `file:line:column: field: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PlanError(pub String);

impl WatchSpec {
    /// The documented defaults (docs/config.md).
    pub fn defaults() -> WatchSpec {
        todo!("confengine")
    }
}

/// Parses and validates a YAML plan.
pub fn parse_plan(text: &str, file: &str) -> Result<ConfigPlan, PlanError> {
    let _ = (text, file);
    todo!("confengine")
}

impl ConfigPlan {
    /// Checks a plan built from flags or JSON the same way `parse_plan` checks YAML.
    pub fn validate(&self) -> Result<(), PlanError> {
        todo!("confengine")
    }
}
