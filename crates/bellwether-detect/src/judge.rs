//! The canary judge: a Kayenta-style comparison of experiment samples (canary hosts) against
//! control samples (hosts not yet updated).
//!
//! Per metric: clean both samples (NaN strategy, optional IQR outlier removal; an empty side is
//! [`Classification::Nodata`]), run the Mann-Whitney U test with the Hodges-Lehmann shift
//! estimate and its confidence interval (normal approximation with tie and continuity
//! correction, as R's `wilcox.test(experiment, control, conf.int = TRUE, exact = FALSE)`),
//! widen the interval by the tolerance `0.25·|estimate|`, and classify:
//!
//! - **High** when the widened interval lies above 0, the effect size is above the allowed
//!   increase and the metric's direction says an increase is bad (`increase` or `either`);
//! - **Low** likewise below 0 for `decrease` or `either`;
//! - **Pass** otherwise.
//!
//! The effect size is the mean ratio `mean(experiment)/mean(control)` or the common-language
//! effect size `P(E > C) + ½·P(E = C)`. A High or Low metric marked critical whose effect size
//! reaches its critical limit fails the whole judgement: the score is 0.
//!
//! The score is out of 100: within each group the share of metrics that passed (Nodata metrics
//! are left out), then the weighted mean over groups. At or above `pass` the canary passes, at or
//! above `marginal` it is marginal, below it fails.

use serde::{Deserialize, Serialize};

use crate::stats::{pnorm, qnorm, quantile_sorted, ranks};
use crate::threshold::Direction;

/// The result of the Mann-Whitney U test with a confidence interval for the shift.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MannWhitney {
    /// R's `W`: the rank sum of the experiment minus `n_e(n_e + 1)/2`.
    pub w: f64,
    /// Two-sided p-value (normal approximation, tie and continuity corrected).
    pub p_value: f64,
    /// Hodges-Lehmann estimate of the shift experiment − control: the median of the pairwise
    /// differences.
    pub estimate: f64,
    pub lower: f64,
    pub upper: f64,
}

/// Why a test could not be run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JudgeError {
    #[error("sample `{0}` is empty")]
    EmptySample(&'static str),
    #[error("sample `{0}` holds a value that is not finite")]
    NotFinite(&'static str),
    #[error("confidence level {0} must be strictly between 0 and 1")]
    BadConfidence(f64),
    #[error("metric `{metric}`: {message}")]
    BadMetric { metric: String, message: String },
    #[error("thresholds must satisfy 0 <= marginal <= pass <= 100, got marginal {marginal} and pass {pass}")]
    BadThresholds { marginal: f64, pass: f64 },
    #[error("{setting} is {value}; it must be {expected}")]
    BadSetting {
        setting: String,
        value: f64,
        expected: &'static str,
    },
}

/// Checks that a setting is a finite number (and at least 0 when `non_negative`). NaN would make
/// every comparison with it false and switch the check it belongs to off.
fn check_setting(setting: &str, value: f64, non_negative: bool) -> Result<(), JudgeError> {
    let ok = value.is_finite() && (!non_negative || value >= 0.0);
    if ok {
        return Ok(());
    }
    Err(JudgeError::BadSetting {
        setting: setting.to_string(),
        value,
        expected: if non_negative {
            "a finite number >= 0"
        } else {
            "a finite number"
        },
    })
}

/// `(dz − correction)/σ` of R's `wdiff` for the shift `d`, with the tie-corrected σ.
fn standardised(x: &[f64], y: &[f64], d: f64, buf: &mut Vec<f64>) -> Option<f64> {
    let (nx, ny) = (x.len() as f64, y.len() as f64);
    buf.clear();
    buf.extend(x.iter().map(|v| v - d));
    buf.extend_from_slice(y);
    let (r, ties) = ranks(buf);
    let rx: f64 = r[..x.len()].iter().sum();
    let dz = rx - nx * (nx + 1.0) / 2.0 - nx * ny / 2.0;
    let corr = if dz > 0.0 {
        0.5
    } else if dz < 0.0 {
        -0.5
    } else {
        0.0
    };
    let n = nx + ny;
    let tie_sum: f64 = ties.iter().map(|&t| (t as f64).powi(3) - t as f64).sum();
    let sigma = ((nx * ny / 12.0) * ((n + 1.0) - tie_sum / (n * (n - 1.0)))).sqrt();
    (sigma > 0.0).then(|| (dz - corr) / sigma)
}

/// Mann-Whitney U test of `experiment` against `control` with a `confidence` interval for the
/// shift, following R's `wilcox.test(experiment, control, conf.int = TRUE, exact = FALSE)`.
pub fn mann_whitney(
    experiment: &[f64],
    control: &[f64],
    confidence: f64,
) -> Result<MannWhitney, JudgeError> {
    if experiment.is_empty() {
        return Err(JudgeError::EmptySample("experiment"));
    }
    if control.is_empty() {
        return Err(JudgeError::EmptySample("control"));
    }
    if experiment.iter().any(|v| !v.is_finite()) {
        return Err(JudgeError::NotFinite("experiment"));
    }
    if control.iter().any(|v| !v.is_finite()) {
        return Err(JudgeError::NotFinite("control"));
    }
    if !(confidence > 0.0 && confidence < 1.0) {
        return Err(JudgeError::BadConfidence(confidence));
    }
    let (x, y) = (experiment, control);
    let mut buf = Vec::with_capacity(x.len() + y.len());
    let nx = x.len() as f64;

    // The statistic and its p-value at shift 0.
    buf.extend_from_slice(x);
    buf.extend_from_slice(y);
    let (r, _) = ranks(&buf);
    let w = r[..x.len()].iter().sum::<f64>() - nx * (nx + 1.0) / 2.0;
    let z0 = standardised(x, y, 0.0, &mut buf);
    let p_value = match z0 {
        Some(z) => (2.0 * pnorm(z).min(1.0 - pnorm(z))).min(1.0),
        None => 1.0,
    };

    let min_x = x.iter().copied().fold(f64::INFINITY, f64::min);
    let max_x = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let min_y = y.iter().copied().fold(f64::INFINITY, f64::min);
    let max_y = y.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let (mu_min, mu_max) = (min_x - max_y, max_x - min_y);
    if z0.is_none() || mu_min == mu_max {
        // Every observation tied: no spread to estimate from; the shift is the difference.
        let d = mu_min;
        return Ok(MannWhitney {
            w,
            p_value,
            estimate: d,
            lower: d,
            upper: d,
        });
    }

    let alpha = 1.0 - confidence;
    let scale = (mu_max - mu_min).abs().max(f64::MIN_POSITIVE);
    let mut root = |zq: f64| -> f64 {
        let f = |d: f64, buf: &mut Vec<f64>| standardised(x, y, d, buf).map_or(0.0, |s| s - zq);
        let f_lo = f(mu_min, &mut buf);
        let f_hi = f(mu_max, &mut buf);
        if f_lo <= 0.0 {
            return mu_min;
        }
        if f_hi >= 0.0 {
            return mu_max;
        }
        // f is a decreasing step function of d. Bisect to the last d where f > 0 and to the
        // first where f < 0; when f is exactly 0 on a stretch between them (R's uniroot then
        // returns any point of it) take the middle, which keeps the test symmetric.
        let mut edge = |positive: bool| {
            let (mut lo, mut hi) = (mu_min, mu_max);
            while hi - lo > 1e-12 * scale {
                let mid = lo + (hi - lo) / 2.0;
                // Near the top of the range, adjacent floats are further apart than the
                // tolerance: stop when the interval cannot be halved any more.
                if mid <= lo || mid >= hi {
                    break;
                }
                let v = f(mid, &mut buf);
                if (positive && v > 0.0) || (!positive && v >= 0.0) {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            lo + (hi - lo) / 2.0
        };
        let a = edge(true);
        let b = edge(false);
        a + (b - a) / 2.0
    };
    let lower = root(qnorm(1.0 - alpha / 2.0));
    let upper = root(qnorm(alpha / 2.0));
    // R's estimate is the root at zq = 0, but with the continuity correction the function is
    // 0 on a whole stretch around the median of the pairwise differences and uniroot returns
    // any point of it. The median itself (the Hodges-Lehmann estimator) is in that stretch and is
    // well defined, so it is what this returns.
    // Above 4 million pairs (32 MB) it takes the middle of that stretch instead.
    let estimate = if x.len().saturating_mul(y.len()) <= 4_000_000 {
        let mut diffs: Vec<f64> = Vec::with_capacity(x.len() * y.len());
        for a in x {
            diffs.extend(y.iter().map(|b| a - b));
        }
        diffs.sort_by(f64::total_cmp);
        quantile_sorted(&diffs, 0.5)
    } else {
        root(0.0)
    }
    .clamp(lower.min(upper), upper.max(lower));
    Ok(MannWhitney {
        w,
        p_value,
        estimate,
        lower,
        upper,
    })
}

/// What to do with NaN samples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", tag = "strategy", content = "value")]
pub enum NanStrategy {
    /// Drop NaN samples.
    #[default]
    Remove,
    /// Replace NaN samples with this value (often 0 for counters).
    Replace(f64),
}

/// Which effect size decides whether a significant shift matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum EffectMeasure {
    /// `mean(experiment)/mean(control)`; 1 means no change.
    #[default]
    MeanRatio,
    /// Common-language effect size `P(E > C) + ½·P(E = C)`; 0.5 means no change.
    Cles,
}

impl EffectMeasure {
    /// The value that means "no change".
    pub fn neutral(self) -> f64 {
        match self {
            EffectMeasure::MeanRatio => 1.0,
            EffectMeasure::Cles => 0.5,
        }
    }
}

/// How one metric is judged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricConfig {
    pub name: String,
    /// Group for the weighted score.
    #[serde(default = "default_group")]
    pub group: String,
    #[serde(default)]
    pub direction: Direction,
    #[serde(default)]
    pub nan_strategy: NanStrategy,
    /// Remove values outside `[Q1 − k·IQR, Q3 + k·IQR]` of each side before testing.
    #[serde(default)]
    pub iqr_outlier_factor: Option<f64>,
    #[serde(default)]
    pub effect: EffectMeasure,
    /// An increase counts only when the effect size exceeds this (neutral value when unset).
    #[serde(default)]
    pub allowed_increase: Option<f64>,
    /// A decrease counts only when the effect size is below this (neutral value when unset).
    #[serde(default)]
    pub allowed_decrease: Option<f64>,
    /// A critical metric fails the whole judgement when High with effect ≥ this…
    #[serde(default)]
    pub critical_increase: Option<f64>,
    /// …or Low with effect ≤ this.
    #[serde(default)]
    pub critical_decrease: Option<f64>,
    #[serde(default)]
    pub critical: bool,
}

fn default_group() -> String {
    "default".into()
}

impl MetricConfig {
    /// Checks every number in the configuration: the limits and the NaN replacement are finite,
    /// the IQR factor finite and at least 0.
    pub fn validate(&self) -> Result<(), JudgeError> {
        let named = |what: &str| format!("metric `{}`: {what}", self.name);
        for (what, v) in [
            ("allowed_increase", self.allowed_increase),
            ("allowed_decrease", self.allowed_decrease),
            ("critical_increase", self.critical_increase),
            ("critical_decrease", self.critical_decrease),
        ] {
            if let Some(v) = v {
                check_setting(&named(what), v, false)?;
            }
        }
        if let Some(k) = self.iqr_outlier_factor {
            check_setting(&named("iqr_outlier_factor"), k, true)?;
        }
        if let NanStrategy::Replace(v) = self.nan_strategy {
            check_setting(&named("nan_strategy replacement"), v, false)?;
        }
        Ok(())
    }

    /// A metric with defaults: group `default`, direction `increase`, NaN removed, no outlier
    /// removal, mean ratio, no limits, not critical.
    pub fn new(name: impl Into<String>) -> Self {
        MetricConfig {
            name: name.into(),
            group: default_group(),
            direction: Direction::Increase,
            nan_strategy: NanStrategy::Remove,
            iqr_outlier_factor: None,
            effect: EffectMeasure::MeanRatio,
            allowed_increase: None,
            allowed_decrease: None,
            critical_increase: None,
            critical_decrease: None,
            critical: false,
        }
    }
}

/// Settings of one judgement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeConfig {
    /// Confidence of the interval for the shift. Default 0.98.
    pub confidence: f64,
    /// The interval is widened by `tolerance·|estimate|` on both sides. Default 0.25.
    pub tolerance: f64,
    /// Weight per group; groups not listed weigh 1.
    pub group_weights: Vec<(String, f64)>,
    /// Score at or above which the canary passes. Default 95.
    pub pass: f64,
    /// Score at or above which the canary is marginal. Default 75.
    pub marginal: f64,
}

impl JudgeConfig {
    /// Checks every number: confidence strictly between 0 and 1, a finite tolerance and group
    /// weights of at least 0, and `0 <= marginal <= pass <= 100`.
    pub fn validate(&self) -> Result<(), JudgeError> {
        if !(self.confidence > 0.0 && self.confidence < 1.0) {
            return Err(JudgeError::BadConfidence(self.confidence));
        }
        check_setting("tolerance", self.tolerance, true)?;
        for (g, w) in &self.group_weights {
            check_setting(&format!("weight of group `{g}`"), *w, true)?;
        }
        if !(0.0..=100.0).contains(&self.marginal) || !(self.marginal..=100.0).contains(&self.pass)
        {
            return Err(JudgeError::BadThresholds {
                marginal: self.marginal,
                pass: self.pass,
            });
        }
        Ok(())
    }
}

impl Default for JudgeConfig {
    fn default() -> Self {
        JudgeConfig {
            confidence: 0.98,
            tolerance: 0.25,
            group_weights: Vec::new(),
            pass: 95.0,
            marginal: 75.0,
        }
    }
}

/// A metric's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Classification {
    Pass,
    High,
    Low,
    Nodata,
}

/// One metric's result, with the figures behind it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricResult {
    pub name: String,
    pub group: String,
    pub classification: Classification,
    /// Whether this failure (High or Low against the direction) counts as critical.
    pub critical_failure: bool,
    pub test: Option<MannWhitney>,
    pub effect_size: Option<f64>,
    pub control_count: usize,
    pub experiment_count: usize,
    pub reason: String,
}

/// The overall outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Pass,
    Marginal,
    Fail,
    /// No metric had data on both sides: never act on no data.
    Nodata,
}

/// The judgement.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Judgement {
    /// Out of 100.
    pub score: f64,
    pub outcome: Outcome,
    pub metrics: Vec<MetricResult>,
}

/// Applies the NaN strategy and the optional IQR outlier removal.
pub fn clean(values: &[f64], nan: NanStrategy, iqr_factor: Option<f64>) -> Vec<f64> {
    let mut v: Vec<f64> = match nan {
        NanStrategy::Remove => values.iter().copied().filter(|x| !x.is_nan()).collect(),
        NanStrategy::Replace(r) => values
            .iter()
            .map(|&x| if x.is_nan() { r } else { x })
            .collect(),
    };
    v.retain(|x| x.is_finite());
    if let Some(k) = iqr_factor {
        if v.len() >= 4 {
            let mut s = v.clone();
            s.sort_by(f64::total_cmp);
            let (q1, q3) = (quantile_sorted(&s, 0.25), quantile_sorted(&s, 0.75));
            let iqr = q3 - q1;
            let (lo, hi) = (q1 - k * iqr, q3 + k * iqr);
            v.retain(|&x| x >= lo && x <= hi);
        }
    }
    v
}

/// The mean of finite values, without overflow: when the plain sum overflows (values near
/// ±1.8e308), the values are divided by the count first.
fn mean(v: &[f64]) -> f64 {
    let n = v.len() as f64;
    let sum = v.iter().sum::<f64>();
    if sum.is_finite() {
        sum / n
    } else {
        v.iter().map(|x| x / n).sum()
    }
}

/// The effect size of `experiment` against `control`.
pub fn effect_size(measure: EffectMeasure, experiment: &[f64], control: &[f64]) -> f64 {
    match measure {
        EffectMeasure::MeanRatio => {
            let (me, mc) = (mean(experiment), mean(control));
            if mc == 0.0 {
                if me == 0.0 {
                    1.0
                } else if me > 0.0 {
                    f64::INFINITY
                } else {
                    f64::NEG_INFINITY
                }
            } else {
                me / mc
            }
        }
        EffectMeasure::Cles => {
            let mut c = control.to_vec();
            c.sort_by(f64::total_cmp);
            let mut wins = 0.0;
            for &e in experiment {
                let below = c.partition_point(|&v| v < e) as f64;
                let le = c.partition_point(|&v| v <= e) as f64;
                wins += below + 0.5 * (le - below);
            }
            wins / (experiment.len() as f64 * control.len() as f64)
        }
    }
}

/// Judges one metric.
pub fn judge_metric(
    cfg: &MetricConfig,
    control: &[f64],
    experiment: &[f64],
    jc: &JudgeConfig,
) -> Result<MetricResult, JudgeError> {
    cfg.validate()?;
    jc.validate()?;
    let c = clean(control, cfg.nan_strategy, cfg.iqr_outlier_factor);
    let e = clean(experiment, cfg.nan_strategy, cfg.iqr_outlier_factor);
    let mut out = MetricResult {
        name: cfg.name.clone(),
        group: cfg.group.clone(),
        classification: Classification::Nodata,
        critical_failure: false,
        test: None,
        effect_size: None,
        control_count: c.len(),
        experiment_count: e.len(),
        reason: String::new(),
    };
    if c.is_empty() || e.is_empty() {
        out.reason = format!(
            "no data: {} control and {} experiment samples after cleaning",
            c.len(),
            e.len()
        );
        return Ok(out);
    }
    let t = mann_whitney(&e, &c, jc.confidence)?;
    let effect = effect_size(cfg.effect, &e, &c);
    let up_bad = matches!(cfg.direction, Direction::Increase | Direction::Either);
    let down_bad = matches!(cfg.direction, Direction::Decrease | Direction::Either);
    if !(t.estimate.is_finite() && t.lower.is_finite() && t.upper.is_finite()) || effect.is_nan() {
        // The difference of two finite samples can overflow (−1e308 against +1e308): the shift
        // is then ±∞ or NaN, every comparison with NaN is false, and the metric would pass
        // however bad it is. A comparison that cannot be computed never passes: it counts as
        // a failure in the bad direction, and as critical when the metric is.
        out.classification = if up_bad && !(down_bad && t.estimate < 0.0) {
            Classification::High
        } else {
            Classification::Low
        };
        out.critical_failure = cfg.critical;
        out.reason = format!(
            "the shift ({}) or the effect size ({effect}) is not a finite number: the values \
             are too large to compare, so the metric counts as failing",
            t.estimate
        );
        out.test = Some(t);
        out.effect_size = Some(effect);
        return Ok(out);
    }
    let tol = jc.tolerance * t.estimate.abs();
    let (lo, hi) = (t.lower - tol, t.upper + tol);
    let neutral = cfg.effect.neutral();
    let allowed_inc = cfg.allowed_increase.unwrap_or(neutral);
    let allowed_dec = cfg.allowed_decrease.unwrap_or(neutral);
    out.classification = if up_bad && lo > 0.0 && effect > allowed_inc {
        Classification::High
    } else if down_bad && hi < 0.0 && effect < allowed_dec {
        Classification::Low
    } else {
        Classification::Pass
    };
    out.critical_failure = cfg.critical
        && match out.classification {
            Classification::High => cfg.critical_increase.is_none_or(|l| effect >= l),
            Classification::Low => cfg.critical_decrease.is_none_or(|l| effect <= l),
            _ => false,
        };
    out.reason = format!(
        "shift {:.6} in [{:.6}, {:.6}] at {}% (±{:.6} tolerance), effect size {:.4}, p = {:.4}",
        t.estimate,
        t.lower,
        t.upper,
        jc.confidence * 100.0,
        tol,
        effect,
        t.p_value
    );
    out.test = Some(t);
    out.effect_size = Some(effect);
    Ok(out)
}

/// Judges every metric and scores the canary. `samples` yields `(metric, control, experiment)`;
/// each must have a config in `metrics` (by name), and metrics without samples are Nodata.
pub fn judge(
    metrics: &[MetricConfig],
    samples: &[(String, Vec<f64>, Vec<f64>)],
    jc: &JudgeConfig,
) -> Result<Judgement, JudgeError> {
    jc.validate()?;
    for m in metrics {
        m.validate()?;
    }
    for (name, _, _) in samples {
        if !metrics.iter().any(|m| &m.name == name) {
            return Err(JudgeError::BadMetric {
                metric: name.clone(),
                message: "has samples but no configuration".into(),
            });
        }
    }
    let empty = Vec::new();
    let mut results = Vec::with_capacity(metrics.len());
    for m in metrics {
        let (c, e) = samples
            .iter()
            .find(|(n, _, _)| n == &m.name)
            .map_or((&empty, &empty), |(_, c, e)| (c, e));
        results.push(judge_metric(m, c, e, jc)?);
    }
    // Group scores.
    let mut groups: Vec<(String, usize, usize)> = Vec::new();
    for r in &results {
        if r.classification == Classification::Nodata {
            continue;
        }
        let pass = usize::from(r.classification == Classification::Pass);
        match groups.iter_mut().find(|(g, _, _)| g == &r.group) {
            Some(g) => {
                g.1 += pass;
                g.2 += 1;
            }
            None => groups.push((r.group.clone(), pass, 1)),
        }
    }
    if groups.is_empty() {
        return Ok(Judgement {
            score: 0.0,
            outcome: Outcome::Nodata,
            metrics: results,
        });
    }
    let weight = |g: &str| {
        jc.group_weights
            .iter()
            .find(|(n, _)| n == g)
            .map_or(1.0, |&(_, w)| w)
    };
    let total_w: f64 = groups.iter().map(|(g, _, _)| weight(g)).sum();
    let mut score = if total_w > 0.0 {
        100.0
            * groups
                .iter()
                .map(|(g, p, n)| weight(g) * *p as f64 / *n as f64)
                .sum::<f64>()
            / total_w
    } else {
        0.0
    };
    if results.iter().any(|r| r.critical_failure) {
        score = 0.0;
    }
    let outcome = if score >= jc.pass {
        Outcome::Pass
    } else if score >= jc.marginal {
        Outcome::Marginal
    } else {
        Outcome::Fail
    };
    Ok(Judgement {
        score,
        outcome,
        metrics: results,
    })
}

#[cfg(test)]
mod tests;
