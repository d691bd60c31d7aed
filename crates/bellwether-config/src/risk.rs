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
    /// The watch's severity in [0, 1] (`bellwether_detect::threshold::MultiWatch`). Used by the
    /// score only when `breaches` is empty (a caller that knows no more than this).
    pub severity: f64,
    /// The changed keys.
    pub changed: &'a [String],
    /// The impacted settings with their paths (from `Graph::impacts`).
    pub impacted: &'a [ImpactPath],
    /// Outcomes of earlier changes on this instance (and its role).
    pub history: &'a [ChangeOutcome],
    /// The breached metrics, one each (the watch's reasons). Empty: not known, and the
    /// combined `severity` stands in for their magnitude and number.
    pub breaches: &'a [Breach],
    /// When the anomaly was seen relative to the apply. `None`: not known (no timing factor).
    pub timing: Option<Timing>,
    /// A control measurement the change cannot move, in the baseline and while the anomaly
    /// lasted. `None`: not measured (no `host` factor).
    pub control: Option<Control>,
}

/// A control: a measurement of the instance's host that no setting of the watched workload
/// changes (`bellwether_config::metrics::REF_LATENCY_MS`, the time of a fixed CPU-bound
/// reference query on the sampler's own connection). It moves with the host — CPU contention from other
/// processes, steal, the network — so a deviation the watched metrics share with it is the
/// host's, not the change's.
#[derive(Debug, Clone, PartialEq)]
pub struct Control {
    pub metric: String,
    /// Its mean over the baseline (before the apply).
    pub baseline: f64,
    /// Its mean over the anomaly's window (the samples of the longest breach).
    pub during: f64,
    /// How many samples each mean has (fewer than [`CONTROL_MIN_SAMPLES`] in either: no
    /// factor).
    pub baseline_samples: usize,
    pub during_samples: usize,
}

/// One breached metric, as the watch reports it (`bellwether_detect::threshold::Reason`).
#[derive(Debug, Clone, PartialEq)]
pub struct Breach {
    pub metric: String,
    /// This metric's own severity in [0.5, 1]: 0.5 just past its band's edge, 1 at twice the
    /// edge's distance from the baseline or beyond.
    pub severity: f64,
    /// How long the metric has been out of its band, in milliseconds.
    pub for_ms: i64,
    /// The rule's weight; a metric of weight 0 is shown but counts for nothing.
    pub weight: f64,
}

impl Breach {
    /// From one reason as the engine records it in its `anomaly` event (`metric`,
    /// `severity`, `for_ms`, `weight`). A missing severity counts as 1 and a missing weight as
    /// 1 (the engine's `up` = 0 reason has neither); `None` without a metric name.
    pub fn from_reason(v: &serde_json::Value) -> Option<Breach> {
        Some(Breach {
            metric: v.get("metric")?.as_str()?.to_string(),
            severity: v.get("severity").and_then(|x| x.as_f64()).unwrap_or(1.0),
            for_ms: v.get("for_ms").and_then(|x| x.as_i64()).unwrap_or(0),
            weight: v.get("weight").and_then(|x| x.as_f64()).unwrap_or(1.0),
        })
    }
}

/// When an anomaly was seen relative to the change, in sample time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// From the apply to the newest sample judged; the anomaly began `max(for_ms)` of its
    /// breaches before that.
    pub since_apply_ms: i64,
    /// The bake: the window after the apply in which the anomaly was looked for.
    pub bake_ms: i64,
    /// How finely an onset can be dated: the shortest rule `for` (a breach is known only once
    /// it has lasted that long).
    pub resolution_ms: i64,
    /// Other configuration changes on the instance since the baseline; `None`: not known (the
    /// pre-apply baseline in its bands is then the only sign the instance was quiet).
    pub other_changes: Option<usize>,
    /// The apply restarted the server.
    pub restarted: bool,
    /// After a restart, the warm-up at the start of the bake whose samples were not judged
    /// (the restart's own transient); 0 when there was none. The onset is counted from its
    /// end.
    pub warmup_ms: i64,
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

/// The magnitude factor's centre: a breach whose own severity is this (a quarter of the way
/// from its band's edge to twice the edge's distance) is as likely noise as harm.
pub const MAGNITUDE_CENTRE: f64 = 0.625;
/// Log-odds per unit of a breach's own severity (so from −0.5 at the band's edge to +1.5 at
/// twice its distance).
pub const MAGNITUDE_SCALE: f64 = 4.0;
/// Log-odds per breached metric beyond the first, and their cap.
pub const BREADTH_PER_METRIC: f64 = 1.0;
pub const BREADTH_CAP: f64 = 2.0;
/// The share of a harmless change's anomalies that are the apply's own transient after a
/// reload (every backend re-reads its configuration, the runner reads `pg_settings` at the
/// apply): as likely as an unrelated disturbance anywhere in the bake. After a restart whose
/// warm-up was left out of the watch, the same (what is left of the restart's transient
/// begins where the watch begins, like a reload's); after a restart judged from its first
/// sample, 1 (the restart is itself a disturbance at the apply).
pub const APPLY_TRANSIENT_SHARE: f64 = 0.5;
/// The onset factor's cap, ln 20: a coincidence rarer than 1 in 20 would lean on disturbances
/// being spread evenly over a long bake (load has its own cycles). The `other_changes` factor
/// is kept within the same bound: other changes can take away at most what the coincidence
/// gave.
pub const ONSET_CAP: f64 = 2.995_732_273_553_991;
/// The `edge_confidence` factor when no path links the changed keys to anything: the shipped
/// graph's metric edges are incomplete, so the absence of a path is weak evidence.
pub const NO_PATH: f64 = -0.5;

/// How much a control's mean may rise over its baseline and still be the host's ordinary
/// jitter (a query of a few milliseconds wanders by tens of percent from second to second
/// on a busy host): the `host` factor counts only the rise beyond it.
pub const CONTROL_MARGIN: f64 = 0.5;
/// Log-odds taken away per unit of `ln(during / (baseline × (1 + CONTROL_MARGIN)))`: a
/// control at three times its baseline (twice the margin's edge) takes away `2 ln 2` = 1.39,
/// as much as the prior gives; at most [`ONSET_CAP`].
pub const CONTROL_SCALE: f64 = 2.0;
/// Samples each of the control's means needs to count.
pub const CONTROL_MIN_SAMPLES: usize = 2;

/// The `host` factor: `−min(ONSET_CAP, CONTROL_SCALE × max(0, ln(r / (1 + CONTROL_MARGIN))))`
/// with `r` the control's mean while the anomaly lasted over its baseline mean. A disturbance
/// of the whole host (another process taking the CPUs) slows the watched workload and the
/// reference query alike; a harmful setting slows the workload and leaves the reference
/// query alone. `None` when the control was not measured well enough to say.
pub fn host_factor(c: &Control) -> Option<RiskFactor> {
    if c.baseline_samples < CONTROL_MIN_SAMPLES
        || c.during_samples < CONTROL_MIN_SAMPLES
        || !(c.baseline.is_finite() && c.baseline > 0.0 && c.during.is_finite() && c.during >= 0.0)
    {
        return None;
    }
    let r = c.during / c.baseline;
    let excess = (r / (1.0 + CONTROL_MARGIN)).ln().max(0.0);
    let log_odds = -(CONTROL_SCALE * excess).min(ONSET_CAP);
    Some(RiskFactor {
        name: "host".to_string(),
        log_odds,
        detail: format!(
            "the control {} (unmoved by any setting) averaged {:.3} while the anomaly lasted \
             against {:.3} before the apply ({:.2}×; up to {:.2}× is the host's own jitter){}",
            c.metric,
            c.during,
            c.baseline,
            r,
            1.0 + CONTROL_MARGIN,
            if log_odds < 0.0 {
                ": the host itself was disturbed, which explains at least part of the anomaly"
            } else {
                ""
            }
        ),
    })
}

/// The risk that an anomaly seen after a change is that change's fault and will not pass.
///
/// Factors (log-odds, added to `base = logit(PRIOR)`; docs/config-apply.md has the
/// arithmetic):
/// - `magnitude`: `4 × (s − 0.625)` with `s` the worst breached metric's own severity (0.5 at
///   its band's edge, 1 at twice the edge's distance): from −0.5 to +1.5. Without `breaches`,
///   `severity` instead: `4 × (severity − 0.5)` of the combined score, from −2 to +2;
/// - `breadth`: +1 per breached metric beyond the first, at most +2 (throughput and latency
///   move together under closed-loop clients, so a second symptom corroborates, it does not
///   multiply the evidence);
/// - `onset`: with `timing`, `−ln(ρ + (1 − ρ) × min(max(onset, resolution) / bake, 1))`: how
///   unlikely a harmless change's anomaly is to begin that soon after the apply (after a
///   restart's warm-up: from its end), with `ρ` the share that is the apply's own transient
///   ([`APPLY_TRANSIENT_SHARE`] after a reload or a restart with a warm-up, 1 after a restart
///   without one); from 0 to `−ln 0.6` = 0.51 with the default watch (see `onset_factor`). `other_changes = Some(k)` adds `other_changes`: `−ln(1 + k)` (the
///   coincidence is shared among k + 1 candidate causes; at most [`ONSET_CAP`]);
/// - `host`: with `control`, see [`host_factor`] (0 when the control stayed within its
///   margin, down to −[`ONSET_CAP`] when the whole host was disturbed);
/// - `history`: see [`history_factor`];
/// - `edge_confidence`: when the graph links a changed setting to a metric node, `+2 × c`
///   with `c` the best such path's confidence; when it links it only to other settings,
///   `+c`; when it links it to nothing, [`NO_PATH`] (the graph's metric edges are incomplete,
///   so a missing link is weak evidence, not a veto).
pub fn anomaly_risk(evidence: &AnomalyEvidence<'_>) -> Risk {
    let base = logit(PRIOR);
    let mut factors = Vec::new();
    let counted: Vec<&Breach> = evidence
        .breaches
        .iter()
        .filter(|b| b.weight.is_finite() && b.weight > 0.0)
        .collect();
    if counted.is_empty() {
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
    } else {
        let own = |b: &Breach| {
            if b.severity.is_finite() {
                b.severity.clamp(0.5, 1.0)
            } else {
                0.5
            }
        };
        let worst = counted
            .iter()
            .copied()
            .max_by(|a, b| own(a).total_cmp(&own(b)))
            .expect("counted is not empty");
        factors.push(RiskFactor {
            name: "magnitude".to_string(),
            log_odds: MAGNITUDE_SCALE * (own(worst) - MAGNITUDE_CENTRE),
            detail: format!(
                "the worst breached metric, {}, has severity {:.2} (0.5 at its band's edge, 1 at \
                 twice the edge's distance)",
                worst.metric,
                own(worst)
            ),
        });
        let n = counted.len();
        let names: Vec<&str> = counted.iter().map(|b| b.metric.as_str()).collect();
        factors.push(RiskFactor {
            name: "breadth".to_string(),
            log_odds: (BREADTH_PER_METRIC * (n - 1) as f64).min(BREADTH_CAP),
            detail: format!("{n} metric(s) breached: {}", names.join(", ")),
        });
    }
    if let Some(t) = evidence.timing {
        factors.push(onset_factor(&t, evidence.breaches));
        if let Some(k) = t.other_changes {
            factors.push(RiskFactor {
                name: "other_changes".to_string(),
                log_odds: -(k as f64).ln_1p().min(ONSET_CAP),
                detail: if k == 0 {
                    "no other configuration change on the instance since the baseline".to_string()
                } else {
                    format!(
                        "{k} other configuration change(s) on the instance since the baseline \
                         share the coincidence"
                    )
                },
            });
        }
    }
    if let Some(f) = evidence.control.as_ref().and_then(host_factor) {
        factors.push(f);
    }
    factors.push(history_factor(evidence.changed, evidence.history));
    factors.push(path_factor(evidence.impacted));
    from_factors(base, factors)
}

/// The onset factor: `−ln(P(onset this early | the change is harmless))`, within
/// `[0, ONSET_CAP]`. With `t = max(onset, resolution)` and `onset = since_apply − warmup −
/// max(for_ms)` (the anomaly's start after the apply, or after a restart's warm-up), a
/// harmless change's anomaly is either the apply's own transient, which begins where the watch
/// begins (share [`APPLY_TRANSIENT_SHARE`] after a reload or a restart whose warm-up was left
/// out, all of it after a restart judged from its first sample), or an unrelated disturbance
/// that is as likely to begin anywhere in the bake: `P = ρ + (1 − ρ) × min(t / bake, 1)`. A
/// harmful change's anomaly begins where the watch begins (`P ≈ 1`), so this is the
/// log-likelihood ratio of the onset.
fn onset_factor(t: &Timing, breaches: &[Breach]) -> RiskFactor {
    let longest = breaches.iter().map(|b| b.for_ms.max(0)).max().unwrap_or(0);
    let warmup = if t.restarted { t.warmup_ms.max(0) } else { 0 };
    let onset = t
        .since_apply_ms
        .saturating_sub(warmup)
        .saturating_sub(longest)
        .max(0);
    let resolution = t.resolution_ms.max(1);
    let share = if t.restarted && warmup == 0 {
        1.0
    } else {
        APPLY_TRANSIENT_SHARE
    };
    let within = if t.bake_ms <= 0 {
        1.0
    } else {
        (onset.max(resolution) as f64 / t.bake_ms as f64).min(1.0)
    };
    let p_null = share + (1.0 - share) * within;
    let log_odds = (-p_null.ln()).clamp(0.0, ONSET_CAP);
    let detail = format!(
        "the anomaly began {:.1}s after the {}, in a bake of {:.1}s (dated to within {:.1}s); \
         a harmless change's anomaly would begin that early with probability {:.2}{}",
        onset as f64 / 1000.0,
        if warmup > 0 {
            "restart's warm-up"
        } else {
            "apply"
        },
        t.bake_ms as f64 / 1000.0,
        resolution as f64 / 1000.0,
        p_null,
        if t.restarted && warmup == 0 {
            " (the apply restarted the server, itself a disturbance at the apply: the onset \
             cannot tell the setting from the restart)"
        } else {
            ""
        }
    );
    RiskFactor {
        name: "onset".to_string(),
        log_odds,
        detail,
    }
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
            NO_PATH,
            "no path in the graph links the changed settings to anything (its metric edges are \
             incomplete; the other factors decide)"
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

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(since_apply_ms: i64, restarted: bool, warmup_ms: i64) -> Timing {
        Timing {
            since_apply_ms,
            bake_ms: 20_000,
            resolution_ms: 4_000,
            other_changes: None,
            restarted,
            warmup_ms,
        }
    }

    /// After a restart whose warm-up was left out of the watch, the onset is dated from the
    /// warm-up's end and weighs as after a reload; without a warm-up a restart's onset tells
    /// nothing.
    #[test]
    fn a_restart_with_a_warm_up_dates_the_onset_from_its_end() {
        let b = [Breach {
            metric: "tps".into(),
            severity: 1.0,
            for_ms: 5_000,
            weight: 1.0,
        }];
        let reload = onset_factor(&timing(6_000, false, 0), &b);
        let warm = onset_factor(&timing(9_000, true, 3_000), &b);
        let cold = onset_factor(&timing(6_000, true, 0), &b);
        assert!((reload.log_odds + 0.6f64.ln()).abs() < 1e-12, "{reload:?}");
        assert!((warm.log_odds - reload.log_odds).abs() < 1e-12, "{warm:?}");
        assert!(warm.detail.contains("warm-up"), "{warm:?}");
        assert_eq!(cold.log_odds, 0.0);
        // The warm-up is ignored when the apply did not restart.
        let no_restart = onset_factor(&timing(6_000, false, 3_000), &b);
        assert_eq!(no_restart.log_odds, reload.log_odds);
    }

    fn control(baseline: f64, during: f64) -> Control {
        Control {
            metric: "ref_latency_ms".into(),
            baseline,
            during,
            baseline_samples: 8,
            during_samples: 4,
        }
    }

    /// The host factor takes away only what rises beyond the control's margin, grows with
    /// the rise, is capped, and says nothing without enough samples.
    #[test]
    fn the_host_factor_discounts_a_disturbance_of_the_whole_host() {
        let quiet = host_factor(&control(0.2, 0.29)).unwrap();
        assert_eq!(quiet.log_odds, 0.0, "{quiet:?}");
        let faster = host_factor(&control(0.2, 0.05)).unwrap();
        assert_eq!(faster.log_odds, 0.0, "a quicker control is no excuse");
        let triple = host_factor(&control(0.2, 0.6)).unwrap();
        assert!(
            (triple.log_odds + 2.0 * 2f64.ln()).abs() < 1e-12,
            "{triple:?}"
        );
        assert!(triple.detail.contains("disturbed"), "{triple:?}");
        let huge = host_factor(&control(0.2, 200.0)).unwrap();
        assert_eq!(huge.log_odds, -ONSET_CAP);
        let mut few = control(0.2, 2.0);
        few.during_samples = 1;
        assert!(host_factor(&few).is_none());
        assert!(host_factor(&control(0.0, 2.0)).is_none());
        assert!(host_factor(&control(f64::NAN, 2.0)).is_none());
    }
}
