//! `seasonal-cusum`: a robust seasonal baseline with change-point statistics on its residual,
//! built for what a watcher sees after a deployment (level shifts, noisier or frozen metrics,
//! spikes, ramps, outages, error-rate rises) on noisy, trending, daily-seasonal metrics.
//!
//! The baseline is additive Holt-Winters without a trend term: a level (exponentially weighted)
//! plus a time-of-day profile of [`BINS`] bins of five minutes (each a weighted mean of what the
//! level left), read smoothed over its two neighbours. Updates are Huber-clipped, so an incident
//! does not teach the baseline its own values. The residual `r` is then whitened for
//! autocorrelation (an AR(1) coefficient learnt online) into the innovation `u = r − φ·r₋₁`.
//!
//! Four statistics watch the residual, each against a fixed threshold:
//! - **point**: `|u|` in innovation scales reaches `z_point` (spikes, outages, large shifts);
//! - **shift**: two-sided CUSUMs (Page 1954) on the residual in its own scale, with reference
//!   `k` and decision interval `h`; an alarm re-anchors the level by the CUSUM's estimate of
//!   the shift, so a lasting shift raises one alarm, not one per point;
//! - **variance**: a CUSUM on the squared innovation, for noise that grows;
//! - **stuck**: a run of exactly equal values, judged against how often the series repeats a
//!   value (a counter that often repeats is never called stuck).
//!
//! The score is `s/(1 + s)` where `s` is the largest of the four statistics over its threshold,
//! so 0.5 is the alert line and the score still orders what lies below and above it. Memory is
//! fixed: the profile and a few numbers (about 3.5 KiB). Nothing is learnt from labels; the
//! constants were chosen on the development split of [`crate::faults`] (docs/detect.md).

use crate::anomaly::{Detector, Verdict};

/// Time-of-day bins of the profile: five minutes each.
pub const BINS: usize = 288;
const DAY_MS: i64 = 86_400_000;

/// Settings of [`SeasonalCusum`]; the defaults are the chosen ones.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CusumConfig {
    /// Weight of a new point in the level.
    pub alpha_level: f64,
    /// Weight of a new point in its profile bin (after the bin's first few points, which are
    /// averaged).
    pub gamma_season: f64,
    /// Weight of a new point in the scales and the autocorrelation.
    pub alpha_scale: f64,
    /// Alert when the innovation reaches this many scales.
    pub z_point: f64,
    /// CUSUM reference value, in residual scales.
    pub cusum_k: f64,
    /// CUSUM decision interval, in residual scales.
    pub cusum_h: f64,
    /// Reference of the variance CUSUM (on the squared innovation, whose mean is 1).
    pub var_k: f64,
    /// Decision interval of the variance CUSUM.
    pub var_h: f64,
    /// A run of equal values is stuck when the chance of it, at the series' own rate of
    /// repeats, falls below this.
    pub stuck_p: f64,
    /// Points after an alert during which no further alert is raised (scores halved).
    pub suppress: u32,
    /// Points before the first alert (the baseline also waits for a day of timestamps, or
    /// `warmup_max` points).
    pub warmup: u64,
    pub warmup_max: u64,
    /// An alert also needs the statistic to reach this many times the series' own record
    /// (the largest statistic it has shown, decaying); 0 turns the record off.
    pub record_margin: f64,
    /// Points in which the record halves.
    pub record_half_life: f64,
    /// The record takes in no statistic above this (one huge incident must not blind it).
    pub record_cap: f64,
    /// Largest single-point step of the variance CUSUM, in its decision intervals.
    pub var_step_cap: f64,
}

impl Default for CusumConfig {
    fn default() -> Self {
        CusumConfig {
            alpha_level: 0.02,
            gamma_season: 0.1,
            alpha_scale: 0.01,
            z_point: 6.0,
            cusum_k: 1.0,
            cusum_h: 14.0,
            var_k: 3.0,
            var_h: 30.0,
            stuck_p: 1e-7,
            suppress: 200,
            warmup: 64,
            warmup_max: 2000,
            record_margin: 1.0,
            record_half_life: 5000.0,
            record_cap: 3.0,
            var_step_cap: 10.0,
        }
    }
}

/// The detector; see the module docs.
#[derive(Debug, Clone)]
pub struct SeasonalCusum {
    cfg: CusumConfig,
    n: u64,
    first_ts: i64,
    warm: bool,
    level: f64,
    season: Box<[f64; BINS]>,
    seen: Box<[u16; BINS]>,
    /// Previous (clipped) residual, for the AR(1) whitening.
    prev_r: f64,
    /// Exponentially weighted `r·r₋₁` and `r₋₁²`.
    c01: f64,
    c00: f64,
    /// Exponentially weighted scales (mean absolute values × √(π/2)) of the innovation and of
    /// the residual.
    scale_u: f64,
    scale_r: f64,
    pos: f64,
    neg: f64,
    pos_n: u32,
    neg_n: u32,
    var: f64,
    prev_value: f64,
    repeat_rate: f64,
    repeat_run: u32,
    quiet_for: u32,
    record: f64,
    /// Per-point decay of the record (from `record_half_life`, computed once).
    record_decay: f64,
    /// The last residual `x − level − profile` (before the baseline learnt the point).
    last_r: f64,
}

/// √(π/2): a normal's standard deviation over its mean absolute deviation.
const MAD_TO_SD: f64 = 1.253_314_137_315_500_3;

impl SeasonalCusum {
    pub fn new(cfg: CusumConfig) -> Self {
        SeasonalCusum {
            cfg,
            n: 0,
            first_ts: 0,
            warm: false,
            level: 0.0,
            season: Box::new([0.0; BINS]),
            seen: Box::new([0; BINS]),
            prev_r: 0.0,
            c01: 0.0,
            c00: 0.0,
            scale_u: 0.0,
            scale_r: 0.0,
            pos: 0.0,
            neg: 0.0,
            pos_n: 0,
            neg_n: 0,
            var: 0.0,
            prev_value: f64::NAN,
            repeat_rate: 0.0,
            repeat_run: 0,
            quiet_for: 0,
            record: 0.0,
            record_decay: 0.5f64.powf(1.0 / cfg.record_half_life.max(1.0)),
            last_r: 0.0,
        }
    }

    /// The residual of the last point: its value less the level and the time-of-day profile
    /// the baseline held before it learnt the point (0 before the second point).
    pub fn residual(&self) -> f64 {
        self.last_r
    }

    fn bin(ts_ms: i64) -> usize {
        (ts_ms.rem_euclid(DAY_MS) / (DAY_MS / BINS as i64)) as usize % BINS
    }

    /// The profile at `b`, smoothed with its neighbours (weights 1, 2, 1 over the bins seen).
    fn profile(&self, b: usize) -> f64 {
        let mut sum = 0.0;
        let mut weight = 0.0;
        for (j, w) in [
            ((b + BINS - 1) % BINS, 1.0),
            (b, 2.0),
            ((b + 1) % BINS, 1.0),
        ] {
            if self.seen[j] > 0 {
                sum += w * self.season[j];
                weight += w;
            }
        }
        if weight > 0.0 {
            sum / weight
        } else {
            0.0
        }
    }

    fn phi(&self) -> f64 {
        if self.c00 > 0.0 {
            (self.c01 / self.c00).clamp(0.0, 0.95)
        } else {
            0.0
        }
    }

    /// A floor for the scales: a constant series has none, and a change of it is then
    /// infinitely many scales away; the floor keeps the arithmetic finite.
    fn floor(&self) -> f64 {
        (self.level.abs() * 1e-9).max(1e-12)
    }
}

impl Default for SeasonalCusum {
    fn default() -> Self {
        SeasonalCusum::new(CusumConfig::default())
    }
}

impl Detector for SeasonalCusum {
    fn observe(&mut self, ts_ms: i64, x: f64) -> Verdict {
        if x.is_nan() {
            return Verdict {
                score: 0.0,
                alert: false,
            };
        }
        let cfg = self.cfg;
        self.n += 1;
        if self.n == 1 {
            self.first_ts = ts_ms;
            self.level = x;
            self.prev_value = x;
            return Verdict {
                score: 0.0,
                alert: false,
            };
        }
        let b = Self::bin(ts_ms);
        let s = self.profile(b);
        let r = x - self.level - s;
        self.last_r = r;
        let phi = self.phi();
        let u = r - phi * self.prev_r;
        let floor = self.floor();
        let su = self.scale_u.max(floor);
        let sr = self.scale_r.max(floor);
        let z = u / su;
        let zr = r / sr;

        // Repeats: how often the series repeats its last value, and the current run.
        let repeat = x == self.prev_value;
        self.prev_value = x;
        self.repeat_run = if repeat { self.repeat_run + 1 } else { 0 };

        if !self.warm {
            self.warm = self.n >= cfg.warmup
                && (ts_ms.saturating_sub(self.first_ts) >= DAY_MS || self.n >= cfg.warmup_max);
        }
        let learning = 1.0 / self.n as f64;
        let a_s = cfg.alpha_scale.max(learning);

        // The change statistics, in units of their thresholds.
        let mut stat = 0.0f64;
        if self.warm {
            let zc = zr.clamp(-1e6, 1e6);
            self.pos = (self.pos + zc - cfg.cusum_k).max(0.0);
            self.neg = (self.neg - zc - cfg.cusum_k).max(0.0);
            self.pos_n = if self.pos > 0.0 { self.pos_n + 1 } else { 0 };
            self.neg_n = if self.neg > 0.0 { self.neg_n + 1 } else { 0 };
            let step = (z * z).min(cfg.var_step_cap * cfg.var_h);
            self.var = (self.var + step - cfg.var_k).max(0.0);
            let stuck = if repeat {
                let p = self.repeat_rate + 0.002;
                (f64::from(self.repeat_run) * p.ln()) / cfg.stuck_p.ln()
            } else {
                0.0
            };
            stat = (z.abs() / cfg.z_point)
                .max(self.pos.max(self.neg) / cfg.cusum_h)
                .max(self.var / cfg.var_h)
                .max(stuck);
        }
        self.repeat_rate += a_s * (f64::from(u8::from(repeat)) - self.repeat_rate);

        // Learn, with the residual clipped at three scales (at once for the first points).
        let warmish = self.n > 16;
        let clip = |v: f64, scale: f64| {
            if warmish {
                v.clamp(-3.0 * scale, 3.0 * scale)
            } else {
                v
            }
        };
        let rc = clip(r, sr);
        let uc = clip(u, su);
        let a_l = cfg.alpha_level.max(learning);
        self.level += a_l * rc;
        let count = self.seen[b];
        let g = cfg.gamma_season.max(1.0 / (f64::from(count) + 1.0));
        // The bin learns what the level leaves, from its own value (not the smoothed one).
        let own = x - self.level;
        let own_r = own - self.season[b];
        let own_c = if count > 0 { clip(own_r, sr) } else { own_r };
        self.season[b] += g * own_c;
        self.seen[b] = count.saturating_add(1);
        self.c01 += a_s * (rc * self.prev_r - self.c01);
        self.c00 += a_s * (self.prev_r * self.prev_r - self.c00);
        self.prev_r = rc;
        self.scale_u += a_s * (uc.abs() * MAD_TO_SD - self.scale_u);
        self.scale_r += a_s * (rc.abs() * MAD_TO_SD - self.scale_r);

        if !self.warm {
            return Verdict {
                score: 0.0,
                alert: false,
            };
        }
        // Alarms re-anchor what they found, so a lasting change is one alarm.
        let bar = (cfg.record_margin * self.record).max(1.0);
        let fired = stat >= bar;
        self.record = (self.record * self.record_decay).max(stat.min(cfg.record_cap));
        let stat = stat / bar;
        if self.pos >= cfg.cusum_h || self.neg >= cfg.cusum_h {
            let (sum, n, sign) = if self.pos >= self.neg {
                (self.pos, self.pos_n, 1.0)
            } else {
                (self.neg, self.neg_n, -1.0)
            };
            let shift = cfg.cusum_k + sum / f64::from(n.max(1));
            self.level += sign * shift * sr;
            self.prev_r = 0.0;
            self.pos = 0.0;
            self.neg = 0.0;
        }
        if self.var >= cfg.var_h {
            self.var = 0.0;
        }
        let score = stat / (1.0 + stat);
        let score = if score.is_finite() { score } else { 1.0 };
        if self.quiet_for > 0 {
            self.quiet_for -= 1;
            return Verdict {
                score: score * 0.5,
                alert: false,
            };
        }
        if fired {
            self.quiet_for = cfg.suppress;
        }
        Verdict {
            score,
            alert: fired,
        }
    }

    fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + BINS * (8 + 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anomaly::{DetectorKind, Graded, Suppressed, TwoScaleEntropy, RE_SUPPRESS_POINTS};
    use crate::faults::{generate, FaultKind, Split};
    use bellwether_model::rng::SplitMix64;

    /// Five-minute samples over `days` days: level 100, a daily swing of 20, white noise of 2.
    fn healthy(days: usize, seed: u64) -> Vec<(i64, f64)> {
        let mut rng = SplitMix64::new(seed);
        (0..days * 288)
            .map(|i| {
                let day = i as f64 / 288.0 * std::f64::consts::TAU;
                let t = 1_700_000_000_000 + i as i64 * 300_000;
                (t, 100.0 + 20.0 * day.sin() + 2.0 * rng.normal())
            })
            .collect()
    }

    /// Changes row `i` of value `x`, given the clean value (or the value to stick at).
    type Inject = Box<dyn Fn(usize, f64, f64) -> f64>;

    fn alerts(series: &[(i64, f64)]) -> Vec<usize> {
        let mut d = DetectorKind::SeasonalCusum.build();
        series
            .iter()
            .enumerate()
            .filter(|&(_, &(t, x))| d.observe(t, x).alert)
            .map(|(i, _)| i)
            .collect()
    }

    #[test]
    fn quiet_on_a_healthy_seasonal_series() {
        // 20 days, 5,760 points, with a daily swing ten times the noise.
        for seed in 0..3 {
            let a = alerts(&healthy(20, seed));
            assert!(a.iter().all(|&i| i < 288), "seed {seed}: {a:?}");
        }
    }

    #[test]
    fn each_kind_is_caught_within_a_few_points() {
        const AT: usize = 3 * 288 + 100;
        let at = AT;
        let cases: [(&str, Inject); 5] = [
            (
                "level shift of 4 sd",
                Box::new(|i, x, _| if i >= AT { x + 8.0 } else { x }),
            ),
            (
                "spike of 8 sd",
                Box::new(|i, x, _| if i == AT { x + 16.0 } else { x }),
            ),
            ("outage", Box::new(|i, x, _| if i >= AT { 0.0 } else { x })),
            (
                "stuck",
                Box::new(|i, x, stuck| if i >= AT { stuck } else { x }),
            ),
            (
                "noise four times larger",
                Box::new(|i, x, clean| {
                    if i >= AT {
                        clean + (x - clean) * 4.0
                    } else {
                        x
                    }
                }),
            ),
        ];
        let base = healthy(5, 9);
        let clean: Vec<f64> = (0..base.len())
            .map(|i| 100.0 + 20.0 * (i as f64 / 288.0 * std::f64::consts::TAU).sin())
            .collect();
        for (name, f) in cases {
            let s: Vec<(i64, f64)> = base
                .iter()
                .enumerate()
                .map(|(i, &(t, x))| {
                    let other = if name == "stuck" {
                        base[at - 1].1
                    } else {
                        clean[i]
                    };
                    (t, f(i, x, other))
                })
                .collect();
            let a = alerts(&s);
            let first = a.iter().find(|&&i| i >= at).copied();
            assert!(
                first.is_some_and(|i| i - at <= 5),
                "{name}: first alert {first:?} after {at}; all {a:?}"
            );
            assert!(a.iter().all(|&i| i < 288 || i >= at), "{name}: {a:?}");
        }
    }

    #[test]
    fn memory_is_fixed_and_nan_changes_nothing() {
        let s = healthy(10, 4);
        let mut a = SeasonalCusum::default();
        let mut b = SeasonalCusum::default();
        let m0 = a.memory_bytes();
        for &(t, x) in &s {
            assert_eq!(b.observe(t, f64::NAN).score, 0.0);
            assert_eq!(a.observe(t, x), b.observe(t, x));
        }
        assert_eq!(a.memory_bytes(), m0);
        assert!(m0 <= 8 * 1024, "{m0}");
    }

    #[test]
    fn constant_and_hostile_input_stays_in_range() {
        let mut d = SeasonalCusum::default();
        for i in 0..3000 {
            let v = d.observe(i * 60_000, 42.0);
            assert!(!v.alert && v.score == 0.0, "row {i}: {v:?}");
        }
        // A constant series that changes: infinitely many scales away, still a score of 1.
        let v = d.observe(3000 * 60_000, 43.0);
        assert!(v.alert && (0.0..=1.0).contains(&v.score), "{v:?}");
        for (i, x) in [1e300, -1e300, f64::MAX, f64::MIN, 0.0, 1e-300]
            .into_iter()
            .enumerate()
        {
            let v = d.observe(4_000 * 60_000 + i as i64, x);
            assert!((0.0..=1.0).contains(&v.score), "{x}: {v:?}");
        }
        // Time going back or standing still is judged as it comes.
        for t in [10, 10, 5, -86_400_000_000] {
            assert!((0.0..=1.0).contains(&d.observe(t, 42.0).score));
        }
    }

    /// The score column is a score: grading keeps every alert decision of the graded detector
    /// and only moves its scores.
    #[test]
    fn grading_keeps_the_alerts() {
        for s in generate(Split::Dev, 24) {
            let mut plain = Suppressed::new(TwoScaleEntropy::new(), RE_SUPPRESS_POINTS);
            let mut graded = Graded::new(
                Suppressed::new(TwoScaleEntropy::new(), RE_SUPPRESS_POINTS),
                SeasonalCusum::default(),
            );
            for (&t, &x) in s.ts_ms.iter().zip(&s.values) {
                let (p, g) = (plain.observe(t, x), graded.observe(t, x));
                assert_eq!(p.alert, g.alert);
                assert!(
                    if g.alert {
                        g.score >= 0.5
                    } else {
                        g.score <= 0.25
                    },
                    "{g:?}"
                );
            }
        }
    }

    #[test]
    fn the_generated_faults_are_mostly_caught() {
        // A small fixed sample of the development split, as a regression guard: the full figures
        // come from `bellwether bench detect-faults`.
        let corpus = generate(Split::Dev, 96);
        let r = crate::faults::evaluate(&corpus, || DetectorKind::SeasonalCusum.build());
        assert!(r.overall.recall >= 0.9, "{r:?}");
        assert!(r.overall.median_delay.is_some_and(|d| d <= 5.0), "{r:?}");
        assert!(r.false_alarms_per_10k <= 1.0, "{r:?}");
        let stuck = r
            .by_kind
            .iter()
            .find(|k| k.kind == FaultKind::Stuck.name())
            .unwrap();
        assert_eq!(stuck.recall, 1.0, "{stuck:?}");
    }
}
