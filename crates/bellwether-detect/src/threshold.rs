//! Dynamic thresholds: a moving-average baseline per metric, a band of a configured percentage
//! around it, and a breach that counts only once it has lasted a configured time.
//!
//! This is the watching rule of the patch-orchestration design, and the rollout, patch, config
//! and mirror engines all call it. It is pure: the caller hands in each sample with its own
//! timestamp (milliseconds since the Unix epoch, as in [`bellwether_model::MetricSample`]) and
//! gets back the state of the watch. The module never reads a clock, so a test or a replay of
//! the event log sees exactly what production saw.
//!
//! Memory is bounded: a [`ThresholdWatch`] keeps at most
//! [`ThresholdConfig::max_window_samples`] samples for its baseline, whatever the window.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use bellwether_detect::threshold::{Direction, ThresholdConfig, ThresholdWatch, WatchState};
//!
//! // Latency is bad when it rises more than 50 % above its 5-minute average for 30 s.
//! let config = ThresholdConfig::new(Duration::from_secs(300), 50.0, Direction::Increase)
//!     .with_min_duration(Duration::from_secs(30))
//!     .with_min_baseline_samples(5);
//! let mut watch = ThresholdWatch::new(config).unwrap();
//! for i in 0..30 {
//!     watch.observe(i * 1_000, 100.0).unwrap();
//! }
//! // A spike starts; it is pending until it has lasted 30 s.
//! assert!(matches!(watch.observe(30_000, 200.0).unwrap().state, WatchState::Pending { .. }));
//! let obs = watch.observe(60_000, 210.0).unwrap();
//! assert!(obs.state.is_breached());
//! ```

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Which way a metric goes wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// A rise is bad (latency, error rate, CPU).
    #[default]
    Increase,
    /// A fall is bad (throughput, success rate, free memory).
    Decrease,
    /// Any move out of the band is bad.
    Either,
}

impl Direction {
    /// Parses `increase`, `decrease` or `either`.
    pub fn parse(s: &str) -> Option<Direction> {
        match s.trim().to_ascii_lowercase().as_str() {
            "increase" => Some(Direction::Increase),
            "decrease" => Some(Direction::Decrease),
            "either" => Some(Direction::Either),
            _ => None,
        }
    }
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Direction::Increase => "increase",
            Direction::Decrease => "decrease",
            Direction::Either => "either",
        })
    }
}

/// Why a threshold configuration or an observation was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ThresholdError {
    #[error("threshold percentage {0} must be finite and not negative")]
    BadPercentage(f64),
    #[error("absolute threshold floor {0} must be finite and not negative")]
    BadFloor(f64),
    #[error("baseline window must be longer than zero")]
    EmptyWindow,
    #[error("max_window_samples must be at least 1")]
    NoSamples,
    #[error("min_baseline_samples {min} is larger than max_window_samples {max}")]
    MinAboveMax { min: usize, max: usize },
    #[error("timestamp {ts_ms} ms is not after the previous sample at {previous_ms} ms")]
    NonIncreasingTimestamp { ts_ms: i64, previous_ms: i64 },
    #[error("value {value} at {ts_ms} ms is not a finite number")]
    NotFinite { ts_ms: i64, value: f64 },
    #[error("fixed baseline {0} is not a finite number")]
    BadBaseline(f64),
    #[error("weight {weight} of metric {metric} must be finite and not negative")]
    BadWeight { metric: String, weight: f64 },
}

/// How one metric is watched. Build it with [`ThresholdConfig::new`] and the `with_*` methods,
/// then validate it by passing it to [`ThresholdWatch::new`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThresholdConfig {
    /// Length of the moving-average window, in sample time.
    #[serde(with = "duration_ms")]
    pub window: Duration,
    /// Width of the band around the baseline, in percent of |baseline|. `20.0` means ±20 %.
    pub pct: f64,
    /// Which side of the band is bad.
    pub direction: Direction,
    /// How long a sample must stay out of the band before the watch reports a breach.
    /// Zero means the first bad sample breaches.
    #[serde(with = "duration_ms")]
    pub min_duration: Duration,
    /// The band is at least this wide in absolute units, so that a baseline of 0 does not turn
    /// every small positive value into a breach. Default 0.
    pub abs_floor: f64,
    /// Samples needed in the window before the watch judges anything. Default 1.
    pub min_baseline_samples: usize,
    /// Upper bound on the samples kept for the baseline (bounded memory). Default 4096; a
    /// window that holds more samples than this averages over the most recent ones.
    pub max_window_samples: usize,
}

impl ThresholdConfig {
    /// A configuration with the given window, band in percent and bad direction; no minimum
    /// duration, no absolute floor.
    pub fn new(window: Duration, pct: f64, direction: Direction) -> ThresholdConfig {
        ThresholdConfig {
            window,
            pct,
            direction,
            min_duration: Duration::ZERO,
            abs_floor: 0.0,
            min_baseline_samples: 1,
            max_window_samples: 4096,
        }
    }

    /// Sets how long an excursion must last before it is a breach.
    pub fn with_min_duration(mut self, d: Duration) -> Self {
        self.min_duration = d;
        self
    }

    /// Sets the absolute minimum half-width of the band.
    pub fn with_abs_floor(mut self, floor: f64) -> Self {
        self.abs_floor = floor;
        self
    }

    /// Sets how many samples the baseline needs before the watch judges.
    pub fn with_min_baseline_samples(mut self, n: usize) -> Self {
        self.min_baseline_samples = n;
        self
    }

    /// Sets the cap on samples kept for the baseline.
    pub fn with_max_window_samples(mut self, n: usize) -> Self {
        self.max_window_samples = n;
        self
    }

    fn validate(&self) -> Result<(), ThresholdError> {
        if !self.pct.is_finite() || self.pct < 0.0 {
            return Err(ThresholdError::BadPercentage(self.pct));
        }
        if !self.abs_floor.is_finite() || self.abs_floor < 0.0 {
            return Err(ThresholdError::BadFloor(self.abs_floor));
        }
        if self.window.is_zero() {
            return Err(ThresholdError::EmptyWindow);
        }
        if self.max_window_samples == 0 {
            return Err(ThresholdError::NoSamples);
        }
        if self.min_baseline_samples > self.max_window_samples {
            return Err(ThresholdError::MinAboveMax {
                min: self.min_baseline_samples,
                max: self.max_window_samples,
            });
        }
        Ok(())
    }

    /// The band `(lower, upper)` around `baseline`. A side that is not bad is infinite.
    pub fn band(&self, baseline: f64) -> (f64, f64) {
        let half = (baseline.abs() * self.pct / 100.0).max(self.abs_floor);
        let lower = match self.direction {
            Direction::Increase => f64::NEG_INFINITY,
            Direction::Decrease | Direction::Either => baseline - half,
        };
        let upper = match self.direction {
            Direction::Decrease => f64::INFINITY,
            Direction::Increase | Direction::Either => baseline + half,
        };
        (lower, upper)
    }
}

/// Where the watch stands after a sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum WatchState {
    /// Not enough samples in the window to judge yet.
    Warming { samples: usize },
    /// Inside the band.
    Normal,
    /// Outside the band since `since_ms`, but not yet for `min_duration`.
    Pending { since_ms: i64 },
    /// Outside the band since `since_ms` for at least `min_duration`.
    Breached { since_ms: i64 },
}

impl WatchState {
    /// True once an excursion has lasted the configured duration.
    pub fn is_breached(&self) -> bool {
        matches!(self, WatchState::Breached { .. })
    }

    /// When the current excursion started, if there is one.
    pub fn since_ms(&self) -> Option<i64> {
        match *self {
            WatchState::Pending { since_ms } | WatchState::Breached { since_ms } => Some(since_ms),
            _ => None,
        }
    }
}

/// The result of one [`ThresholdWatch::observe`] call: the sample, the baseline it was judged
/// against and the state.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    pub ts_ms: i64,
    pub value: f64,
    /// The moving average the sample was judged against (before the sample itself joined it);
    /// `None` while warming up.
    pub baseline: Option<f64>,
    /// Lower edge of the band (−∞ when a decrease is not bad).
    pub lower: f64,
    /// Upper edge of the band (+∞ when an increase is not bad).
    pub upper: f64,
    /// Signed relative deviation from the baseline, `(value − baseline) / |baseline|`; `0.2`
    /// means 20 % above. When the baseline is 0 it is the absolute deviation divided by the
    /// band's floor, or 0 if there is no floor.
    pub deviation: f64,
    /// How far out of the band, as a multiple of the band's half-width: 0 inside the band, 1
    /// when the value is twice as far from the baseline as the band edge.
    pub excess: f64,
    /// How long the current excursion has lasted, in milliseconds (0 when inside the band).
    pub excursion_ms: i64,
    pub state: WatchState,
}

#[derive(Debug, Clone, Copy)]
enum Baseline {
    Moving,
    Frozen(f64),
}

/// Streaming dynamic threshold over one metric series.
///
/// The baseline is the mean of the samples of the last [`ThresholdConfig::window`] that were
/// inside the band: samples out of the band do not join the baseline, so a long incident does not
/// drag its own threshold along with it. Call [`ThresholdWatch::freeze`] to keep the
/// pre-change baseline fixed for the length of a rollout.
#[derive(Debug, Clone)]
pub struct ThresholdWatch {
    config: ThresholdConfig,
    window: VecDeque<(i64, f64)>,
    sum: f64,
    last_ts: Option<i64>,
    excursion_since: Option<i64>,
    baseline: Baseline,
}

impl ThresholdWatch {
    /// Validates `config` and starts an empty watch.
    pub fn new(config: ThresholdConfig) -> Result<ThresholdWatch, ThresholdError> {
        config.validate()?;
        Ok(ThresholdWatch {
            window: VecDeque::with_capacity(config.max_window_samples.min(1024)),
            config,
            sum: 0.0,
            last_ts: None,
            excursion_since: None,
            baseline: Baseline::Moving,
        })
    }

    /// A watch whose baseline is fixed at `baseline` (for example a pre-change profile's mean)
    /// and never moves.
    pub fn with_fixed_baseline(
        config: ThresholdConfig,
        baseline: f64,
    ) -> Result<ThresholdWatch, ThresholdError> {
        if !baseline.is_finite() {
            return Err(ThresholdError::BadBaseline(baseline));
        }
        let mut w = ThresholdWatch::new(config)?;
        w.baseline = Baseline::Frozen(baseline);
        Ok(w)
    }

    /// The configuration this watch runs with.
    pub fn config(&self) -> &ThresholdConfig {
        &self.config
    }

    /// The current baseline, if enough samples are in the window (or it is frozen).
    pub fn baseline(&self) -> Option<f64> {
        match self.baseline {
            Baseline::Frozen(b) => Some(b),
            Baseline::Moving => (self.window.len() >= self.config.min_baseline_samples
                && !self.window.is_empty())
            .then(|| {
                let n = self.window.len() as f64;
                if self.sum.is_finite() {
                    self.sum / n
                } else {
                    // Values near ±1.8e308 overflow the sum, not the mean.
                    self.window.iter().map(|&(_, v)| v / n).sum()
                }
            }),
        }
    }

    /// Fixes the baseline at its current value. Returns the frozen value, or `None` (and stays
    /// moving) while the watch is still warming up.
    pub fn freeze(&mut self) -> Option<f64> {
        let b = self.baseline()?;
        self.baseline = Baseline::Frozen(b);
        Some(b)
    }

    /// Lets a frozen baseline move again, from the samples still in the window.
    pub fn unfreeze(&mut self) {
        self.baseline = Baseline::Moving;
    }

    /// Judges one sample. Timestamps must increase strictly; values must be finite (apply the
    /// caller's NaN strategy first).
    pub fn observe(&mut self, ts_ms: i64, value: f64) -> Result<Observation, ThresholdError> {
        if let Some(previous_ms) = self.last_ts {
            if ts_ms <= previous_ms {
                return Err(ThresholdError::NonIncreasingTimestamp { ts_ms, previous_ms });
            }
        }
        if !value.is_finite() {
            return Err(ThresholdError::NotFinite { ts_ms, value });
        }
        self.last_ts = Some(ts_ms);
        self.expire(ts_ms);

        let baseline = self.baseline();
        let Some(base) = baseline else {
            self.push(ts_ms, value);
            return Ok(Observation {
                ts_ms,
                value,
                baseline: None,
                lower: f64::NEG_INFINITY,
                upper: f64::INFINITY,
                deviation: 0.0,
                excess: 0.0,
                excursion_ms: 0,
                state: WatchState::Warming {
                    samples: self.window.len(),
                },
            });
        };

        let (lower, upper) = self.config.band(base);
        let half = (base.abs() * self.config.pct / 100.0).max(self.config.abs_floor);
        let outside = value > upper || value < lower;
        let deviation = if base != 0.0 {
            (value - base) / base.abs()
        } else if self.config.abs_floor > 0.0 {
            (value - base) / self.config.abs_floor
        } else {
            0.0
        };
        let excess = if outside {
            if half > 0.0 {
                ((value - base).abs() - half) / half
            } else {
                // A zero-width band: any excursion is as bad as it gets.
                1.0
            }
        } else {
            0.0
        };

        let state = if outside {
            let since = *self.excursion_since.get_or_insert(ts_ms);
            let lasted = ts_ms.saturating_sub(since);
            if lasted as u128 >= self.config.min_duration.as_millis() {
                WatchState::Breached { since_ms: since }
            } else {
                WatchState::Pending { since_ms: since }
            }
        } else {
            self.excursion_since = None;
            self.push(ts_ms, value);
            WatchState::Normal
        };
        let excursion_ms = state.since_ms().map_or(0, |s| ts_ms - s);
        Ok(Observation {
            ts_ms,
            value,
            baseline,
            lower,
            upper,
            deviation,
            excess,
            excursion_ms,
            state,
        })
    }

    fn push(&mut self, ts_ms: i64, value: f64) {
        if self.window.len() == self.config.max_window_samples {
            if let Some((_, v)) = self.window.pop_front() {
                self.subtract(v);
            }
        }
        self.window.push_back((ts_ms, value));
        self.sum += value;
    }

    /// Takes a value that left the window out of the sum. When it dwarfed what remains (one
    /// 1e300 among tens) or the sum had overflowed, subtracting leaves only rounding error or
    /// NaN, and a baseline built on that would judge every later sample against nonsense: the
    /// sum is added up again instead.
    fn subtract(&mut self, v: f64) {
        self.sum -= v;
        if !self.sum.is_finite() || v.abs() > 1e8 * self.sum.abs() {
            self.sum = self.window.iter().map(|&(_, v)| v).sum();
        }
    }

    fn expire(&mut self, now_ms: i64) {
        let width = i64::try_from(self.config.window.as_millis()).unwrap_or(i64::MAX);
        let oldest_kept = now_ms.saturating_sub(width);
        let mut removed = false;
        while let Some(&(ts, v)) = self.window.front() {
            if ts > oldest_kept {
                break;
            }
            self.window.pop_front();
            self.subtract(v);
            removed = true;
        }
        if removed {
            // Re-add to stop floating-point drift from accumulating over a long run.
            self.sum = self.window.iter().map(|&(_, v)| v).sum();
        }
    }
}

/// One metric's part of a [`Severity`]: which metric, how far off and for how long.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reason {
    pub metric: String,
    pub value: f64,
    pub baseline: f64,
    /// Signed relative deviation from the baseline (0.35 = 35 % above).
    pub deviation: f64,
    /// How long the metric has been out of its band, in milliseconds.
    pub for_ms: i64,
    /// This metric's contribution in [0, 1] before weighting.
    pub severity: f64,
    pub weight: f64,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let seconds = self.for_ms as f64 / 1000.0;
        if self.baseline == 0.0 {
            // A percentage of nothing says nothing: name the value against the zero baseline.
            return write!(
                f,
                "{} is {} against a baseline of 0 for {seconds:.1}s",
                self.metric,
                significant(self.value)
            );
        }
        write!(
            f,
            "{} is {:+.1}% off its baseline {} (value {}) for {seconds:.1}s",
            self.metric,
            self.deviation * 100.0,
            significant(self.baseline),
            significant(self.value),
        )
    }
}

/// `v` with four significant digits and no trailing zeros (`3.387`, `12.12`, `100`, `0.01`):
/// what a person reads in a reason, not the 17 digits of an `f64`.
fn significant(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let magnitude = v.abs().log10().floor() as i32;
    let decimals = (3 - magnitude).clamp(0, 6) as usize;
    let text = format!("{v:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

/// Several metrics combined into one score in [0, 1], with the reasons behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Severity {
    /// Weighted mean of the breached metrics' severities over all weighted metrics.
    pub score: f64,
    /// One entry per breached metric, worst first.
    pub reasons: Vec<Reason>,
}

/// Combines the latest [`Observation`] of several metrics into one [`Severity`].
///
/// A metric contributes only when it is [`WatchState::Breached`]. Its severity is
/// `0.5 + 0.5·min(excess, 1)`: a breach just past the band edge counts half, one twice as far
/// from the baseline as the edge counts fully. The score is `Σ wᵢ·sᵢ / Σ wᵢ` over all metrics with
/// a weight, so one breached metric of weight 1 among three of weight 1 just past its edge
/// scores 1/6.
#[derive(Debug, Clone, Default)]
pub struct SeverityScorer {
    weights: Vec<(String, f64)>,
}

impl SeverityScorer {
    /// A scorer with the given per-metric weights. Metrics not listed are ignored.
    pub fn new<I, S>(weights: I) -> Result<SeverityScorer, ThresholdError>
    where
        I: IntoIterator<Item = (S, f64)>,
        S: Into<String>,
    {
        let mut out = Vec::new();
        for (m, w) in weights {
            let metric = m.into();
            if !w.is_finite() || w < 0.0 {
                return Err(ThresholdError::BadWeight { metric, weight: w });
            }
            out.push((metric, w));
        }
        Ok(SeverityScorer { weights: out })
    }

    /// The weight configured for `metric`, if any.
    pub fn weight(&self, metric: &str) -> Option<f64> {
        self.weights
            .iter()
            .find(|(m, _)| m == metric)
            .map(|&(_, w)| w)
    }

    /// Scores the latest observation of each metric. `latest` yields `(metric, observation)`;
    /// a metric with no observation counts as not breached.
    pub fn score<'a, I>(&self, latest: I) -> Severity
    where
        I: IntoIterator<Item = (&'a str, &'a Observation)>,
    {
        let total: f64 = self.weights.iter().map(|&(_, w)| w).sum();
        let mut reasons = Vec::new();
        let mut acc = 0.0;
        for (metric, obs) in latest {
            let Some(weight) = self.weight(metric) else {
                continue;
            };
            if !obs.state.is_breached() {
                continue;
            }
            let sev = 0.5 + 0.5 * obs.excess.clamp(0.0, 1.0);
            acc += weight * sev;
            reasons.push(Reason {
                metric: metric.to_string(),
                value: obs.value,
                baseline: obs.baseline.unwrap_or(f64::NAN),
                deviation: obs.deviation,
                for_ms: obs.excursion_ms,
                severity: sev,
                weight,
            });
        }
        reasons.sort_by(|a, b| (b.severity * b.weight).total_cmp(&(a.severity * a.weight)));
        let score = if total > 0.0 {
            (acc / total).clamp(0.0, 1.0)
        } else {
            0.0
        };
        Severity { score, reasons }
    }
}

/// A set of named [`ThresholdWatch`]es with a [`SeverityScorer`]: the usual way an engine
/// watches one host or one backend.
#[derive(Debug, Clone)]
pub struct MultiWatch {
    watches: Vec<(String, ThresholdWatch, Option<Observation>)>,
    scorer: SeverityScorer,
}

impl MultiWatch {
    /// One watch per `(metric, config, weight)`.
    pub fn new<I, S>(metrics: I) -> Result<MultiWatch, ThresholdError>
    where
        I: IntoIterator<Item = (S, ThresholdConfig, f64)>,
        S: Into<String>,
    {
        let mut watches = Vec::new();
        let mut weights = Vec::new();
        for (m, c, w) in metrics {
            let m = m.into();
            watches.push((m.clone(), ThresholdWatch::new(c)?, None));
            weights.push((m, w));
        }
        Ok(MultiWatch {
            watches,
            scorer: SeverityScorer::new(weights)?,
        })
    }

    /// Feeds one sample of `metric`. Returns `None` for a metric that is not watched.
    pub fn observe(
        &mut self,
        metric: &str,
        ts_ms: i64,
        value: f64,
    ) -> Option<Result<Observation, ThresholdError>> {
        let (_, watch, last) = self.watches.iter_mut().find(|(m, _, _)| m == metric)?;
        let r = watch.observe(ts_ms, value);
        if let Ok(o) = &r {
            *last = Some(*o);
        }
        Some(r)
    }

    /// Freezes every metric's baseline (call it just before the change lands). Returns the
    /// metrics that were still warming up and so stay moving.
    pub fn freeze_all(&mut self) -> Vec<String> {
        self.watches
            .iter_mut()
            .filter_map(|(m, w, _)| w.freeze().is_none().then(|| m.clone()))
            .collect()
    }

    /// The watch of one metric.
    pub fn watch(&self, metric: &str) -> Option<&ThresholdWatch> {
        self.watches
            .iter()
            .find(|(m, _, _)| m == metric)
            .map(|(_, w, _)| w)
    }

    /// The combined severity of the latest samples.
    pub fn severity(&self) -> Severity {
        self.scorer.score(
            self.watches
                .iter()
                .filter_map(|(m, _, o)| o.as_ref().map(|o| (m.as_str(), o))),
        )
    }
}

mod duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg(pct: f64, dir: Direction, min_s: u64) -> ThresholdConfig {
        ThresholdConfig::new(Duration::from_secs(60), pct, dir)
            .with_min_duration(Duration::from_secs(min_s))
            .with_min_baseline_samples(3)
    }

    #[test]
    fn warms_up_then_judges() {
        let mut w = ThresholdWatch::new(cfg(10.0, Direction::Increase, 0)).unwrap();
        assert_eq!(
            w.observe(0, 10.0).unwrap().state,
            WatchState::Warming { samples: 1 }
        );
        assert_eq!(
            w.observe(1000, 10.0).unwrap().state,
            WatchState::Warming { samples: 2 }
        );
        assert_eq!(
            w.observe(2000, 10.0).unwrap().state,
            WatchState::Warming { samples: 3 }
        );
        let o = w.observe(3000, 10.5).unwrap();
        assert_eq!(o.state, WatchState::Normal);
        assert_eq!(o.baseline, Some(10.0));
        assert_eq!(o.upper, 11.0);
        assert_eq!(o.lower, f64::NEG_INFINITY);
        // The in-band 10.5 joined the baseline: (10 + 10 + 10 + 10.5) / 4 = 10.125.
        let o = w.observe(4000, 12.15).unwrap();
        assert_eq!(o.baseline, Some(10.125));
        assert_eq!(o.state, WatchState::Breached { since_ms: 4000 });
        assert!((o.deviation - 0.2).abs() < 1e-9);
    }

    /// Issue 9: one huge sample in the window left the sum at rounding error once it left, or
    /// at ∞ for good, and the watch judged every later sample against that.
    #[test]
    fn a_huge_sample_does_not_blind_the_watch_once_it_has_left() {
        for (huge, count) in [(1e300, 1), (1e308, 3), (f64::MAX, 5)] {
            let c = cfg(10.0, Direction::Increase, 0).with_max_window_samples(8);
            let mut w = ThresholdWatch::new(c).unwrap();
            let mut t = 0;
            for _ in 0..count {
                w.observe(t, huge).unwrap();
                t += 1000;
            }
            for _ in 0..20 {
                w.observe(t, 10.0).unwrap();
                t += 1000;
            }
            let o = w.observe(t, 10.0).unwrap();
            assert_eq!(o.baseline, Some(10.0), "{huge}");
            assert_eq!(o.state, WatchState::Normal, "{huge}");
            let o = w.observe(t + 1000, 20.0).unwrap();
            assert!(o.state.is_breached(), "{huge}: {o:?}");
        }
    }

    #[test]
    fn breach_needs_duration_and_resets_when_back_in_band() {
        let mut w = ThresholdWatch::new(cfg(10.0, Direction::Increase, 10)).unwrap();
        for i in 0..5 {
            w.observe(i * 1000, 100.0).unwrap();
        }
        assert_eq!(
            w.observe(5000, 150.0).unwrap().state,
            WatchState::Pending { since_ms: 5000 }
        );
        assert_eq!(
            w.observe(14_000, 150.0).unwrap().state,
            WatchState::Pending { since_ms: 5000 }
        );
        let o = w.observe(15_000, 150.0).unwrap();
        assert_eq!(o.state, WatchState::Breached { since_ms: 5000 });
        assert_eq!(o.excursion_ms, 10_000);
        assert_eq!(w.observe(16_000, 100.0).unwrap().state, WatchState::Normal);
        assert_eq!(
            w.observe(17_000, 150.0).unwrap().state,
            WatchState::Pending { since_ms: 17_000 }
        );
    }

    #[test]
    fn direction_decides_which_side_is_bad() {
        for (dir, low_bad, high_bad) in [
            (Direction::Increase, false, true),
            (Direction::Decrease, true, false),
            (Direction::Either, true, true),
        ] {
            let mut w = ThresholdWatch::with_fixed_baseline(cfg(10.0, dir, 0), 100.0).unwrap();
            assert_eq!(
                w.observe(0, 80.0).unwrap().state.is_breached(),
                low_bad,
                "{dir}"
            );
            assert!(!w.observe(1, 100.0).unwrap().state.is_breached(), "{dir}");
            assert_eq!(
                w.observe(2, 120.0).unwrap().state.is_breached(),
                high_bad,
                "{dir}"
            );
        }
    }

    #[test]
    fn baseline_moves_with_time_window_and_ignores_excursions() {
        let mut w = ThresholdWatch::new(ThresholdConfig::new(
            Duration::from_secs(10),
            50.0,
            Direction::Either,
        ))
        .unwrap();
        for i in 0..10 {
            w.observe(i * 1000, 10.0).unwrap();
        }
        // An excursion does not join the baseline.
        w.observe(10_000, 1000.0).unwrap();
        assert_eq!(w.baseline(), Some(10.0));
        // A slow drift does; the old samples leave the 10 s window.
        for i in 11..40 {
            w.observe(i * 1000, 12.0).unwrap();
        }
        assert_eq!(w.baseline(), Some(12.0));
    }

    #[test]
    fn frozen_baseline_stays() {
        let mut w = ThresholdWatch::new(cfg(10.0, Direction::Either, 0)).unwrap();
        for i in 0..5 {
            w.observe(i, 10.0).unwrap();
        }
        assert_eq!(w.freeze(), Some(10.0));
        for i in 5..100 {
            w.observe(i, 10.9).unwrap();
        }
        assert_eq!(w.baseline(), Some(10.0));
        w.unfreeze();
        assert!(w.baseline().unwrap() > 10.5);
    }

    #[test]
    fn zero_baseline_uses_floor() {
        let c = cfg(10.0, Direction::Increase, 0).with_abs_floor(2.0);
        let mut w = ThresholdWatch::with_fixed_baseline(c, 0.0).unwrap();
        assert_eq!(w.observe(0, 1.0).unwrap().state, WatchState::Normal);
        let o = w.observe(1, 3.0).unwrap();
        assert!(o.state.is_breached());
        assert!((o.excess - 0.5).abs() < 1e-12);
    }

    #[test]
    fn rejects_bad_input() {
        assert!(matches!(
            ThresholdWatch::new(cfg(-1.0, Direction::Either, 0)),
            Err(ThresholdError::BadPercentage(_))
        ));
        assert!(matches!(
            ThresholdWatch::new(ThresholdConfig::new(Duration::ZERO, 1.0, Direction::Either)),
            Err(ThresholdError::EmptyWindow)
        ));
        let mut w = ThresholdWatch::new(cfg(10.0, Direction::Either, 0)).unwrap();
        w.observe(10, 1.0).unwrap();
        assert_eq!(
            w.observe(10, 1.0),
            Err(ThresholdError::NonIncreasingTimestamp {
                ts_ms: 10,
                previous_ms: 10
            })
        );
        assert!(matches!(
            w.observe(11, f64::NAN),
            Err(ThresholdError::NotFinite { .. })
        ));
        assert_eq!(
            ThresholdError::NonIncreasingTimestamp {
                ts_ms: 1,
                previous_ms: 2
            }
            .to_string(),
            "timestamp 1 ms is not after the previous sample at 2 ms"
        );
    }

    #[test]
    fn a_reason_reads_as_a_person_would_write_it() {
        let reason = |baseline: f64, value: f64| Reason {
            metric: "error_ratio".into(),
            value,
            baseline,
            deviation: if baseline == 0.0 {
                value / 0.05
            } else {
                (value - baseline) / baseline
            },
            for_ms: 3_000,
            severity: 1.0,
            weight: 1.0,
        };
        // A zero baseline has no percentage: the value is named against it.
        assert_eq!(
            reason(0.0, 0.2344).to_string(),
            "error_ratio is 0.2344 against a baseline of 0 for 3.0s"
        );
        // Four significant digits, no trailing zeros, whatever the scale.
        assert_eq!(
            reason(3.3872, 12.1154).to_string(),
            "error_ratio is +257.7% off its baseline 3.387 (value 12.12) for 3.0s"
        );
        assert_eq!(
            reason(0.01, 0.3).to_string(),
            "error_ratio is +2900.0% off its baseline 0.01 (value 0.3) for 3.0s"
        );
        assert_eq!(significant(123_456.7), "123457");
        assert_eq!(significant(-0.000_012_34), "-0.000012");
        assert_eq!(significant(f64::NAN), "NaN");
    }

    #[test]
    fn severity_combines_weights_with_reasons() {
        let c = |pct| {
            ThresholdConfig::new(Duration::from_secs(60), pct, Direction::Increase)
                .with_min_duration(Duration::from_secs(5))
        };
        let mut mw = MultiWatch::new([
            ("latency_ms", c(20.0), 2.0),
            ("error_rate", c(50.0), 1.0),
            ("cpu", c(30.0), 1.0),
        ])
        .unwrap();
        for i in 0..10 {
            mw.observe("latency_ms", i * 1000, 100.0).unwrap().unwrap();
            mw.observe("error_rate", i * 1000, 0.01).unwrap().unwrap();
            mw.observe("cpu", i * 1000, 0.5).unwrap().unwrap();
        }
        assert!(mw.observe("unknown", 0, 1.0).is_none());
        assert_eq!(mw.freeze_all(), Vec::<String>::new());
        // Latency at 160 (band edge 120, excess 40/20 = 2 → severity 1) for 6 s.
        for i in 10..17 {
            mw.observe("latency_ms", i * 1000, 160.0).unwrap().unwrap();
            mw.observe("error_rate", i * 1000, 0.01).unwrap().unwrap();
        }
        let s = mw.severity();
        assert!((s.score - 2.0 / 4.0).abs() < 1e-12, "{s:?}");
        assert_eq!(s.reasons.len(), 1);
        let r = &s.reasons[0];
        assert_eq!(r.metric, "latency_ms");
        assert_eq!(r.for_ms, 6000);
        assert!((r.deviation - 0.6).abs() < 1e-12);
        assert_eq!(
            r.to_string(),
            "latency_ms is +60.0% off its baseline 100 (value 160) for 6.0s"
        );
    }

    proptest! {
        #[test]
        fn never_panics_and_stays_bounded(
            values in proptest::collection::vec(-1e12f64..1e12, 1..400),
            steps in proptest::collection::vec(1i64..5000, 400),
            pct in 0.0f64..200.0,
            cap in 1usize..16,
        ) {
            let c = ThresholdConfig::new(Duration::from_secs(3), pct, Direction::Either)
                .with_max_window_samples(cap)
                .with_min_duration(Duration::from_millis(1500));
            let mut w = ThresholdWatch::new(c).unwrap();
            let mut ts = 0i64;
            for (v, s) in values.iter().zip(&steps) {
                ts += s;
                let o = w.observe(ts, *v).unwrap();
                prop_assert!(w.window.len() <= cap);
                prop_assert!(o.excess >= 0.0);
                if let Some(b) = o.baseline { prop_assert!(b.is_finite()); }
                let sev = SeverityScorer::new([("m", 1.0)]).unwrap().score([("m", &o)]);
                prop_assert!((0.0..=1.0).contains(&sev.score));
            }
        }
    }
}
