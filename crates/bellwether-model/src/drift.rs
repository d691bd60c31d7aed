//! Drift scores and the findings behind them.

use serde::{Deserialize, Serialize};

use crate::Unit;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftCategory {
    Configuration,
    Performance,
    Dependency,
}

/// One difference between a baseline and a current profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub category: DriftCategory,
    /// Such as `package:openssl`, `kernel`, `metric:load1`, `dependency:db`.
    pub attribute: String,
    pub baseline: Option<String>,
    pub current: Option<String>,
    /// The finding's contribution weight, in [0, 1].
    pub weight: Unit,
}

/// How far a host has moved from its baseline, by category, with the findings behind it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DriftScore {
    pub configuration: Unit,
    pub performance: Unit,
    pub dependency: Unit,
    pub overall: Unit,
    /// Sorted by decreasing weight.
    pub findings: Vec<Finding>,
}
