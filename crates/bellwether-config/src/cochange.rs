//! Edges from the change history: settings changed together (co-change statistics) and
//! metrics that moved after a setting changed (metric impact).
//!
//! OWNER: helper `confgraph`.

use serde::{Deserialize, Serialize};

use crate::graph::Edge;
use crate::snapshot::ConfigChange;

/// What happened after one applied change (the config engine's outcome, from the event log).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeOutcome {
    /// The keys the change set.
    pub keys: Vec<String>,
    /// Per metric name (`tps`, `latency_ms`…), the relative change after the apply
    /// (`+0.25` = 25 % up), when measured.
    pub metric_shift: Vec<(String, f64)>,
    /// The change was reverted as harmful.
    pub reverted: bool,
    pub time_ms: i64,
}

/// `influences` edges between settings changed within `window_ms` of each other by the same
/// author, with confidence from support and lift (documented in the code), evidence the counts.
pub fn co_change_edges(history: &[ConfigChange], window_ms: i64) -> Vec<Edge> {
    let _ = (history, window_ms);
    todo!("confgraph")
}

/// `influences` edges from settings to `metric:NAME` nodes where changes of the setting were
/// followed by a consistent shift of the metric.
pub fn metric_impact_edges(outcomes: &[ChangeOutcome]) -> Vec<Edge> {
    let _ = outcomes;
    todo!("confgraph")
}
