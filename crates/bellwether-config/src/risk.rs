//! Risk scores whose factors add up to their log-odds (the same invariant as
//! `bellwether-predict`'s explanations): `logit(score) = base + Σ factors[i].log_odds`.
//!
//! OWNER: helper `confgraph`.

use serde::{Deserialize, Serialize};

use crate::cochange::ChangeOutcome;
use crate::graph::ImpactPath;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RiskFactor {
    /// `severity`, `history`, `edge_confidence`, `context`, `fanout`, `performance`…
    pub name: String,
    pub log_odds: f64,
    /// A sentence with the figures.
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Risk {
    /// Probability in (0, 1).
    pub score: f64,
    /// The prior's log-odds.
    pub base: f64,
    pub factors: Vec<RiskFactor>,
}

/// What the risk of an observed anomaly after a change is made of.
#[derive(Debug, Clone, PartialEq)]
pub struct AnomalyEvidence<'a> {
    /// The watch's severity in [0, 1] (`bellwether_detect::threshold::MultiWatch`).
    pub severity: f64,
    /// The changed keys.
    pub changed: &'a [String],
    /// The impacted settings with their paths (from `Graph::impacts`).
    pub impacted: &'a [ImpactPath],
    /// Outcomes of earlier changes on this instance (and its role).
    pub history: &'a [ChangeOutcome],
}

/// The risk that an anomaly seen after a change is that change's fault and will not pass.
pub fn anomaly_risk(evidence: &AnomalyEvidence<'_>) -> Risk {
    let _ = evidence;
    todo!("confgraph")
}

impl Risk {
    /// `logit(score) - (base + Σ factors)`: zero up to rounding (tests check 1e-9).
    pub fn residual(&self) -> f64 {
        let l = (self.score / (1.0 - self.score)).ln();
        l - (self.base + self.factors.iter().map(|f| f.log_odds).sum::<f64>())
    }
}
