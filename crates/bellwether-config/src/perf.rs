//! A lightweight performance model of one instance, trained on its own measured history:
//! throughput and latency as a function of its settings.
//!
//! OWNER: helper `confgraph`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One measurement: the settings in force and what the instance did under its workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerfObservation {
    pub values: BTreeMap<String, String>,
    pub tps: f64,
    pub latency_ms: f64,
}

/// A trained model (serde: kept in the store with the graph).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerfModel {
    /// The settings it uses as features.
    pub features: Vec<String>,
    /// Implementation-defined parameters.
    pub params: serde_json::Value,
    /// Relative error of throughput on held-out observations (leave-one-out), e.g. 0.08.
    pub tps_rel_error: f64,
    pub latency_rel_error: f64,
    pub observations: usize,
}

/// The model's prediction for a proposed configuration, against the current one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerfPrediction {
    pub tps: f64,
    pub latency_ms: f64,
    /// Relative change against the prediction for the current configuration.
    pub tps_change: f64,
    pub latency_change: f64,
    /// The model's measured relative errors (so a reader can judge the change).
    pub tps_rel_error: f64,
    pub latency_rel_error: f64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PerfError {
    #[error("the performance model needs at least {needed} observations, has {have}")]
    TooFew { needed: usize, have: usize },
    #[error("observation {index}: {message}")]
    Bad { index: usize, message: String },
}

impl PerfModel {
    pub fn train(observations: &[PerfObservation]) -> Result<PerfModel, PerfError> {
        let _ = observations;
        todo!("confgraph")
    }

    pub fn predict(
        &self,
        current: &BTreeMap<String, String>,
        proposed: &BTreeMap<String, String>,
    ) -> PerfPrediction {
        let _ = (current, proposed);
        todo!("confgraph")
    }
}
