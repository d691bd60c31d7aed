//! Risk scores whose factors add up to their log-odds (the same invariant as
//! `bellwether-predict`'s explanations): `logit(score) = base + Σ factors[i].log_odds`.

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

/// The prior share of changes that turn out harmful, before any evidence (log-odds `base`).
pub const PRIOR: f64 = 0.2;
/// The Beta prior on the failure rate of similar changes: Beta(α, β) with mean α/(α+β) =
/// [`PRIOR`] and the weight of α+β = 5 earlier changes.
pub const BETA_ALPHA: f64 = 1.0;
pub const BETA_BETA: f64 = 4.0;
/// The history factor is kept within ± this many log-odds, so a long history cannot drown the
/// other evidence and the score stays far from 0 and 1 (where `logit` loses precision).
pub const HISTORY_CAP: f64 = 4.0;

fn logit(p: f64) -> f64 {
    (p / (1.0 - p)).ln()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Builds a [`Risk`] from its base and factors; the score is `sigmoid(base + Σ)`, so
/// [`Risk::residual`] is zero up to rounding. Non-finite factors count as 0.
pub fn from_factors(base: f64, mut factors: Vec<RiskFactor>) -> Risk {
    for f in &mut factors {
        if !f.log_odds.is_finite() {
            f.log_odds = 0.0;
        }
    }
    let total = base + factors.iter().map(|f| f.log_odds).sum::<f64>();
    Risk {
        score: sigmoid(total),
        base,
        factors,
    }
}

/// The history factor: the failure rate of earlier changes sharing a key with `changed`
/// (reverted as harmful / all), shrunk toward [`PRIOR`] by the Beta prior, as log-odds
/// against the prior.
pub fn history_factor(changed: &[String], history: &[ChangeOutcome]) -> RiskFactor {
    let similar: Vec<&ChangeOutcome> = history
        .iter()
        .filter(|o| o.keys.iter().any(|k| changed.contains(k)))
        .collect();
    let n = similar.len() as f64;
    let failed = similar.iter().filter(|o| o.reverted).count() as f64;
    let rate = (BETA_ALPHA + failed) / (BETA_ALPHA + BETA_BETA + n);
    let log_odds = (logit(rate) - logit(PRIOR)).clamp(-HISTORY_CAP, HISTORY_CAP);
    let detail = if similar.is_empty() {
        "no earlier change of these settings on record: the prior failure rate applies".to_string()
    } else {
        format!(
            "{} of {} earlier changes of these settings were reverted as harmful \
             (failure rate {:.0} % with a Beta({BETA_ALPHA}, {BETA_BETA}) prior)",
            failed as u64,
            similar.len(),
            rate * 100.0
        )
    };
    RiskFactor {
        name: "history".to_string(),
        log_odds,
        detail,
    }
}

/// The risk that an anomaly seen after a change is that change's fault and will not pass.
///
/// Factors (log-odds, added to `base = logit(PRIOR)`):
/// - `severity`: `4 × (severity − 0.5)`, from −2 (barely anomalous) to +2;
/// - `history`: see [`history_factor`];
/// - `edge_confidence`: when the graph links a changed setting to a metric node, `+2 × c`
///   with `c` the best such path's confidence; when it links it only to other settings,
///   `+c`; when it links it to nothing, `−1` (the anomaly may have another cause).
pub fn anomaly_risk(evidence: &AnomalyEvidence<'_>) -> Risk {
    let base = logit(PRIOR);
    let mut factors = Vec::new();
    let severity = if evidence.severity.is_finite() {
        evidence.severity.clamp(0.0, 1.0)
    } else {
        0.5
    };
    factors.push(RiskFactor {
        name: "severity".to_string(),
        log_odds: 4.0 * (severity - 0.5),
        detail: if evidence.severity.is_finite() {
            format!("the watch's severity is {severity:.2} (0 to 1)")
        } else {
            "the watch's severity is unknown; counted as 0.5".to_string()
        },
    });
    factors.push(history_factor(evidence.changed, evidence.history));
    factors.push(path_factor(evidence.impacted));
    from_factors(base, factors)
}

fn path_factor(impacted: &[ImpactPath]) -> RiskFactor {
    let conf = |p: &ImpactPath| {
        if p.confidence.is_finite() {
            p.confidence.clamp(0.0, 1.0)
        } else {
            0.0
        }
    };
    let best_metric = impacted
        .iter()
        .filter(|p| crate::graph::is_metric(&p.setting))
        .max_by(|a, b| conf(a).total_cmp(&conf(b)));
    let best_any = impacted.iter().max_by(|a, b| conf(a).total_cmp(&conf(b)));
    let (log_odds, detail) = match (best_metric, best_any) {
        (Some(p), _) => (
            2.0 * conf(p),
            format!(
                "the graph links the change to {} along {} (confidence {:.2})",
                p.setting,
                p.path.join(" → "),
                conf(p)
            ),
        ),
        (None, Some(p)) => (
            conf(p),
            format!(
                "the graph links the change to the setting {} along {} (confidence {:.2}), \
                 to no metric",
                p.setting,
                p.path.join(" → "),
                conf(p)
            ),
        ),
        (None, None) => (
            -1.0,
            "no path in the graph links the changed settings to anything: the anomaly may \
             have another cause"
                .to_string(),
        ),
    };
    RiskFactor {
        name: "edge_confidence".to_string(),
        log_odds,
        detail,
    }
}

/// What the risk of a proposed change (before it is applied) is made of.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeEvidence<'a> {
    pub changed: &'a [String],
    /// What applying it takes (the highest of the changed settings).
    pub apply: Option<crate::setting::ApplyKind>,
    pub impacted: &'a [ImpactPath],
    pub history: &'a [ChangeOutcome],
    /// The performance model's prediction, when there is a model.
    pub performance: Option<&'a crate::perf::PerfPrediction>,
}

/// The prior log-odds of a proposed change being harmful: `logit(0.1)`.
pub const CHANGE_PRIOR: f64 = 0.1;

/// The risk of a proposed change, before it is applied. Factors:
/// - `context`: +1 for a restart (the instance goes down), 0 for a reload, −0.5 for a session
///   setting;
/// - `fanout`: `0.3 × ln(1 + Σ confidence of the impacted paths)`, at most 1.5;
/// - `history`: see [`history_factor`];
/// - `performance`: when the model predicts a throughput drop or a latency rise beyond its own
///   relative error, `10 ×` the excess, at most 3 (a predicted improvement counts 0).
pub fn change_risk(evidence: &ChangeEvidence<'_>) -> Risk {
    use crate::setting::ApplyKind;
    let base = logit(CHANGE_PRIOR);
    let mut factors = Vec::new();
    let (log_odds, detail) = match evidence.apply {
        Some(ApplyKind::Restart) => (1.0, "applying it restarts the server".to_string()),
        Some(ApplyKind::Reload) => (0.0, "applying it takes a reload".to_string()),
        Some(ApplyKind::Session) => (
            -0.5,
            "it can be tried per session (SET) before it is made the default".to_string(),
        ),
        None => (0.0, "what applying it takes is not known".to_string()),
    };
    factors.push(RiskFactor {
        name: "context".to_string(),
        log_odds,
        detail,
    });
    let mass: f64 = evidence
        .impacted
        .iter()
        .map(|p| {
            if p.confidence.is_finite() {
                p.confidence.clamp(0.0, 1.0)
            } else {
                0.0
            }
        })
        .sum();
    factors.push(RiskFactor {
        name: "fanout".to_string(),
        log_odds: (0.3 * (1.0 + mass).ln()).min(1.5),
        detail: format!(
            "it reaches {} settings or metrics in the graph (summed confidence {mass:.2})",
            evidence.impacted.len()
        ),
    });
    factors.push(history_factor(evidence.changed, evidence.history));
    if let Some(p) = evidence.performance {
        let tps_excess = (-p.tps_change - p.tps_rel_error.abs()).max(0.0);
        let lat_excess = (p.latency_change - p.latency_rel_error.abs()).max(0.0);
        let excess = if tps_excess.is_finite() && lat_excess.is_finite() {
            tps_excess.max(lat_excess)
        } else {
            0.0
        };
        factors.push(RiskFactor {
            name: "performance".to_string(),
            log_odds: (10.0 * excess).min(3.0),
            detail: format!(
                "the performance model predicts throughput {:+.1} % (error {:.1} %) and latency \
                 {:+.1} % (error {:.1} %)",
                p.tps_change * 100.0,
                p.tps_rel_error * 100.0,
                p.latency_change * 100.0,
                p.latency_rel_error * 100.0
            ),
        });
    }
    from_factors(base, factors)
}

impl Risk {
    /// `logit(score) - (base + Σ factors)`: zero up to rounding (tests check 1e-9).
    pub fn residual(&self) -> f64 {
        let l = (self.score / (1.0 - self.score)).ln();
        l - (self.base + self.factors.iter().map(|f| f.log_odds).sum::<f64>())
    }
}
