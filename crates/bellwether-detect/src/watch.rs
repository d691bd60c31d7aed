//! `seasonal-entropy`: [`SeasonalCusum`]'s change-point evidence and [`TwoScaleEntropy`]'s
//! distribution-free tests on one series, with one alert decision and one suppression. It is
//! the attempt of issue 10 at one detector for both deployment faults and NAB; it did not get
//! there (docs/detect.md, "Deployment faults", has every variant measured).
//!
//! The two fail in opposite places. The CUSUMs on a seasonal residual are sharp when the
//! seasonal model fits (deployment faults on noisy, daily-seasonal metrics) and raise false
//! alarms where it does not (NAB's bursty metrics; the record bar holds some of them). The
//! histogram tests assume no model, which is what holds them on NAB, and they fire by chance on
//! seasonal, trending series, where a day's shape and a trend leave any histogram of the past.
//!
//! The decision:
//! - the entropy side watches the CUSUM side's seasonal residual (`x − level − profile`), not
//!   the value, so a day's shape and a trend do not move its histograms
//!   ([`WatchConfig::residual`]);
//! - a CUSUM alert is an alert (with [`WatchConfig::support`] above 0, only when the entropy
//!   side has also seen that much evidence over the last points);
//! - an entropy alert is an alert when the CUSUM side has seen at least [`WatchConfig::gate`] of
//!   evidence over the last points (its score, a decaying maximum as in
//!   [`crate::anomaly::Graded`]): the histogram has changed *and* the residual has moved;
//! - after an alert, `suppress` points without alerts (scores halved): one incident, one alert.
//!
//! The score ranks: an alert scores `0.5 + 0.25·e + 0.25·[entropy alert]` (`e` the CUSUM
//! evidence, 0.5 at its bar), so both agreeing scores highest; a point without an alert scores
//! half the larger of the two detectors' scores (below 0.5). Nothing is learnt from labels; the
//! settings were chosen on the development split of [`crate::faults`], with NAB as the check.
//! Memory is the two detectors' (about 6 to 7.5 KiB).

use crate::anomaly::{Detector, TwoScaleEntropy, Verdict, GRADE_DECAY};
use crate::changepoint::{CusumConfig, SeasonalCusum};

/// Settings of [`SeasonalEntropy`]; the defaults are the chosen ones.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WatchConfig {
    /// CUSUM evidence (its score, 0.5 at its bar) an entropy alert needs to be an alert.
    pub gate: f64,
    /// Points after an alert without alerts.
    pub suppress: u32,
    /// Entropy evidence (its score, decaying as the CUSUM's) a CUSUM alert needs; 0 = none.
    pub support: f64,
    /// Feed the entropy side the CUSUM side's seasonal residual instead of the value.
    pub residual: bool,
    /// The CUSUM side's settings (its own suppression is replaced by `suppress`).
    pub cusum: CusumConfig,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            gate: 1.0 / 3.0,
            suppress: 200,
            residual: true,
            support: 0.0,
            cusum: CusumConfig::default(),
        }
    }
}

/// The detector; see the module docs.
#[derive(Debug, Clone)]
pub struct SeasonalEntropy {
    gate: f64,
    suppress: u32,
    residual: bool,
    support: f64,
    e_evidence: f64,
    cusum: SeasonalCusum,
    entropy: TwoScaleEntropy,
    evidence: f64,
    quiet_for: u32,
}

impl SeasonalEntropy {
    pub fn new(cfg: WatchConfig) -> Self {
        SeasonalEntropy {
            gate: cfg.gate,
            suppress: cfg.suppress,
            residual: cfg.residual,
            support: cfg.support,
            e_evidence: 0.0,
            cusum: SeasonalCusum::new(CusumConfig {
                suppress: 0,
                ..cfg.cusum
            }),
            entropy: TwoScaleEntropy::new(),
            evidence: 0.0,
            quiet_for: 0,
        }
    }
}

impl Default for SeasonalEntropy {
    fn default() -> Self {
        SeasonalEntropy::new(WatchConfig::default())
    }
}

impl Detector for SeasonalEntropy {
    fn observe(&mut self, ts_ms: i64, value: f64) -> Verdict {
        let c = self.cusum.observe(ts_ms, value);
        let e = if self.residual && !value.is_nan() {
            self.entropy.observe(ts_ms, self.cusum.residual())
        } else {
            self.entropy.observe(ts_ms, value)
        };
        if value.is_nan() {
            return Verdict {
                score: 0.0,
                alert: false,
            };
        }
        self.evidence = (self.evidence * GRADE_DECAY).max(c.score);
        let ev = self.evidence.clamp(0.0, 1.0);
        self.e_evidence = (self.e_evidence * GRADE_DECAY).max(e.score);
        let fire = (c.alert && self.e_evidence >= self.support) || (e.alert && ev >= self.gate);
        let score = if fire {
            0.5 + 0.25 * ev + 0.25 * f64::from(u8::from(e.alert))
        } else {
            0.5 * c.score.max(0.9 * e.score).clamp(0.0, 1.0)
        };
        if self.quiet_for > 0 {
            self.quiet_for -= 1;
            return Verdict {
                score: score * 0.5,
                alert: false,
            };
        }
        if fire {
            self.quiet_for = self.suppress;
        }
        Verdict { score, alert: fire }
    }

    fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            - std::mem::size_of::<SeasonalCusum>()
            - std::mem::size_of::<TwoScaleEntropy>()
            + self.cusum.memory_bytes()
            + self.entropy.memory_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anomaly::DetectorKind;
    use crate::faults::{generate, Split};

    #[test]
    fn the_generated_faults_are_mostly_caught() {
        // A small fixed sample of the development split, as a regression guard: the full
        // figures come from `bellwether bench detect-faults --detector seasonal-entropy`.
        let corpus = generate(Split::Dev, 96);
        let r = crate::faults::evaluate(&corpus, || DetectorKind::SeasonalEntropy.build());
        assert!(r.overall.recall >= 0.9, "{r:?}");
        assert!(r.overall.median_delay.is_some_and(|d| d <= 5.0), "{r:?}");
        assert!(r.false_alarms_per_10k <= 2.0, "{r:?}");
        assert!(r.max_memory_bytes <= 64 * 1024, "{r:?}");
    }

    #[test]
    fn one_alert_per_incident_and_the_score_ranks_it() {
        // Five-minute samples, a daily swing and noise, then a lasting shift of 8 noise
        // deviations on day 4.
        let mut rng = bellwether_model::rng::SplitMix64::new(3);
        let at = 3 * 288 + 50;
        let mut d = SeasonalEntropy::default();
        let mut alerts = Vec::new();
        for i in 0..5 * 288 {
            let day = i as f64 / 288.0 * std::f64::consts::TAU;
            let shift = if i >= at { 16.0 } else { 0.0 };
            let x = 100.0 + 20.0 * day.sin() + 2.0 * rng.normal() + shift;
            let v = d.observe(1_700_000_000_000 + i as i64 * 300_000, x);
            assert!((0.0..=1.0).contains(&v.score), "{v:?}");
            if v.alert {
                assert!(v.score >= 0.5, "an alert scores at least 0.5: {v:?}");
                alerts.push(i);
            } else {
                assert!(
                    v.score <= 0.5,
                    "a point without an alert scores at most 0.5: {v:?}"
                );
            }
        }
        let after: Vec<_> = alerts.iter().filter(|&&i| i >= at).collect();
        assert!(
            after.first().is_some_and(|&&i| i - at <= 5),
            "first alert after {at}: {alerts:?}"
        );
        assert!(
            alerts.iter().all(|&i| i < 288 || i >= at),
            "false alarms before the shift: {alerts:?}"
        );
        assert!(after.len() <= 2, "one incident, one alert: {alerts:?}");
    }

    #[test]
    fn nan_changes_nothing_and_memory_is_bounded() {
        let mut a = SeasonalEntropy::default();
        let mut b = SeasonalEntropy::default();
        let mut rng = bellwether_model::rng::SplitMix64::new(8);
        for i in 0..3000 {
            let t = i * 60_000;
            let x = 50.0 + rng.normal();
            assert_eq!(b.observe(t, f64::NAN).score, 0.0);
            assert_eq!(a.observe(t, x), b.observe(t, x));
        }
        assert!(a.memory_bytes() <= 64 * 1024, "{}", a.memory_bytes());
    }
}
