//! Metric samples as agents send them.

use serde::{Deserialize, Serialize};

/// One observation of one metric on one host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricSample {
    /// Milliseconds since the Unix epoch, taken on the agent.
    pub ts_ms: i64,
    /// Metric name, such as `load1` or `memory_available_ratio`.
    pub name: String,
    pub value: f64,
}
