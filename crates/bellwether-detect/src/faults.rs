//! Seeded deployment-fault series with labelled fault windows, and the scoring of a detector's
//! alerts on them: recall, detection delay and false alarms per 10,000 normal points.
//!
//! NAB is one corpus, chosen by others, and the default detector was tuned on it. A watcher after
//! a deployment sees other things: a metric that shifts, gets noisier, freezes, spikes, ramps, drops
//! to zero or whose error rate rises, on top of noise, trend and a daily rhythm. This module makes
//! such series from a seed ([`bellwether_model::rng::SplitMix64`]), so a figure is the same on
//! every machine, and two seed families: [`Split::Dev`] to choose a detector on, and
//! [`Split::Heldout`] to report once, at the end.
//!
//! Pure: no IO, no clock; the benchmark (`bellwether bench detect-faults`) only times it.

use bellwether_model::rng::SplitMix64;
use serde::Serialize;

use crate::anomaly::{Detector, Verdict};

/// The kinds of fault the generator injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// The level moves by 3–10 noise standard deviations (either way) and stays.
    LevelShift,
    /// The noise's standard deviation grows 2.5–6 times.
    VarianceChange,
    /// The metric repeats its last value exactly (a frozen exporter or a hung process).
    Stuck,
    /// One to three points 6–20 standard deviations off.
    Spike,
    /// A linear drift reaching 5–15 standard deviations over the fault.
    Ramp,
    /// The metric drops to 0–5 % of its level (a service stops serving).
    Outage,
    /// An error rate (errors over requests, binomial noise) rises 2–6 times.
    ErrorRateRise,
}

impl FaultKind {
    pub const ALL: [FaultKind; 7] = [
        FaultKind::LevelShift,
        FaultKind::VarianceChange,
        FaultKind::Stuck,
        FaultKind::Spike,
        FaultKind::Ramp,
        FaultKind::Outage,
        FaultKind::ErrorRateRise,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::LevelShift => "level-shift",
            FaultKind::VarianceChange => "variance-change",
            FaultKind::Stuck => "stuck",
            FaultKind::Spike => "spike",
            FaultKind::Ramp => "ramp",
            FaultKind::Outage => "outage",
            FaultKind::ErrorRateRise => "error-rate-rise",
        }
    }
}

/// Which seed family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Split {
    /// The series detectors are chosen on.
    Dev,
    /// Series from another seed family, looked at only to report.
    Heldout,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Dev => "dev",
            Split::Heldout => "heldout",
        }
    }

    /// The seed of series `i`: the two families share no seed (the high 16 bits differ).
    fn seed(self, i: u64) -> u64 {
        let family: u64 = match self {
            Split::Dev => 0xDE70,
            Split::Heldout => 0x4E1D,
        };
        (family << 48) | (i & 0xFFFF_FFFF_FFFF)
    }
}

/// One injected fault: rows `start..end` are the fault.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Fault {
    pub kind: FaultKind,
    pub start: usize,
    pub end: usize,
    /// How large it is, in the kind's unit (standard deviations, a factor, or the share of the
    /// level that is left for an outage).
    pub size: f64,
}

/// One generated series.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FaultSeries {
    pub seed: u64,
    pub ts_ms: Vec<i64>,
    pub values: Vec<f64>,
    /// Rows before this are the history a watcher starts from (two days): they hold no fault and
    /// are not scored.
    pub scored_from: usize,
    /// The fault, or none for a healthy series (one series in eight).
    pub fault: Option<Fault>,
}

/// Points of a day for each sampling interval the generator uses.
const INTERVALS_S: [i64; 2] = [60, 300];
/// Days of history before a fault can start, and days after it.
const HISTORY_DAYS: i64 = 2;
const SCORED_DAYS: i64 = 2;

/// Rows after a fault's end in which an alert still counts as its detection (a detector that
/// needs a few points to confirm a one-point spike is not wrong).
pub const DETECT_GRACE: usize = 10;
/// Rows after a fault's end that are neither fault nor normal: the metric returning to its level
/// is a change too, and an alert on it is not a false alarm.
pub const RECOVERY_ROWS: usize = 60;

fn log_uniform(rng: &mut SplitMix64, lo: f64, hi: f64) -> f64 {
    (lo.ln() + rng.unit() * (hi.ln() - lo.ln())).exp()
}

fn uniform(rng: &mut SplitMix64, lo: f64, hi: f64) -> f64 {
    lo + rng.unit() * (hi - lo)
}

/// A Poisson deviate: Knuth's product for small means, a rounded normal above 30.
fn poisson(rng: &mut SplitMix64, mean: f64) -> f64 {
    if mean > 30.0 {
        return (mean + mean.sqrt() * rng.normal()).round().max(0.0);
    }
    let limit = (-mean).exp();
    let (mut k, mut p) = (0.0, 1.0);
    loop {
        p *= rng.unit();
        if p <= limit {
            return k;
        }
        k += 1.0;
    }
}

/// Generates series `index` of `split`. Series `i` with `i % 8 == 7` is healthy; the others carry
/// one fault of kind `FaultKind::ALL[i % 8]`, so every kind is equally common.
pub fn generate_one(split: Split, index: u64) -> FaultSeries {
    let seed = split.seed(index);
    let mut rng = SplitMix64::new(seed);
    let kind = FaultKind::ALL.get((index % 8) as usize).copied();
    let interval_s = *rng.pick(&INTERVALS_S);
    let per_day = (86_400 / interval_s) as usize;
    let n = per_day * (HISTORY_DAYS + SCORED_DAYS) as usize;
    let scored_from = per_day * HISTORY_DAYS as usize;
    // Start somewhere in 2014–2024, on a sample boundary, at any time of day.
    let t0 = (1_400_000_000 + rng.below(300_000_000) as i64) / interval_s * interval_s * 1000;
    let ts_ms: Vec<i64> = (0..n as i64).map(|i| t0 + i * interval_s * 1000).collect();
    let day_phase = |i: usize| {
        let s = (ts_ms[i] / 1000).rem_euclid(86_400) as f64 / 86_400.0;
        std::f64::consts::TAU * s
    };

    // Healthy series are gauges or error rates in the same proportion as the faulty ones.
    let error_rate = match kind {
        Some(FaultKind::ErrorRateRise) => true,
        Some(_) => false,
        None => rng.below(7) == 0,
    };

    // The fault: it starts in the scored part, lasts 30–200 rows (a spike 1–3), and may run to
    // the end of the series.
    let fault = kind.map(|k| {
        let dur = match k {
            FaultKind::Spike => 1 + rng.below(3) as usize,
            _ => 30 + rng.below(171) as usize,
        };
        let latest = n - dur.min(n - scored_from - 1) - 1;
        let start = scored_from + rng.below((latest - scored_from).max(1) as u64) as usize;
        let size = match k {
            FaultKind::LevelShift => {
                log_uniform(&mut rng, 3.0, 10.0) * if rng.below(2) == 0 { 1.0 } else { -1.0 }
            }
            FaultKind::VarianceChange => log_uniform(&mut rng, 2.5, 6.0),
            FaultKind::Stuck => 0.0,
            FaultKind::Spike => {
                log_uniform(&mut rng, 6.0, 20.0) * if rng.below(2) == 0 { 1.0 } else { -1.0 }
            }
            FaultKind::Ramp => {
                log_uniform(&mut rng, 5.0, 15.0) * if rng.below(2) == 0 { 1.0 } else { -1.0 }
            }
            FaultKind::Outage => uniform(&mut rng, 0.0, 0.05),
            FaultKind::ErrorRateRise => log_uniform(&mut rng, 2.0, 6.0),
        };
        Fault {
            kind: k,
            start,
            end: (start + dur).min(n),
            size,
        }
    });
    let in_fault = |i: usize| fault.filter(|f| (f.start..f.end).contains(&i));

    let mut values = Vec::with_capacity(n);
    if error_rate {
        // Requests per interval follow the day; errors are Poisson with the rate's mean.
        let requests = log_uniform(&mut rng, 500.0, 5000.0) * interval_s as f64 / 60.0;
        let traffic_swing = uniform(&mut rng, 0.0, 0.6);
        let p0 = log_uniform(&mut rng, 0.002, 0.02) / (interval_s as f64 / 60.0).sqrt();
        let phase = uniform(&mut rng, 0.0, std::f64::consts::TAU);
        for i in 0..n {
            let req = (requests * (1.0 + traffic_swing * (day_phase(i) + phase).sin())).max(1.0);
            let p = match in_fault(i) {
                Some(f) if f.kind == FaultKind::ErrorRateRise => (p0 * f.size).min(1.0),
                _ => p0,
            };
            let req = req.round();
            values.push(poisson(&mut rng, req * p).min(req) / req);
        }
    } else {
        let level = log_uniform(&mut rng, 1.0, 1000.0);
        let sigma = level * log_uniform(&mut rng, 0.005, 0.1);
        // The day's swing is up to 8 deviations, but never more than 40 % of the level, so the
        // metric stays positive and an outage is a drop.
        let amplitude = (sigma * uniform(&mut rng, 0.0, 8.0)).min(0.4 * level);
        let second = uniform(&mut rng, 0.0, 0.5);
        let phase = uniform(&mut rng, 0.0, std::f64::consts::TAU);
        let trend = sigma * uniform(&mut rng, -5.0, 5.0) / n as f64;
        // Half the series have autocorrelated noise (AR(1), the marginal deviation kept).
        let phi = if rng.below(2) == 0 {
            0.0
        } else {
            uniform(&mut rng, 0.3, 0.8)
        };
        let innovation = (1.0 - phi * phi).sqrt();
        let mut ar = 0.0;
        let mut last_clean = level;
        for i in 0..n {
            ar = phi * ar + innovation * rng.normal();
            let a = day_phase(i) + phase;
            let base = level + trend * i as f64 + amplitude * (a.sin() + second * (2.0 * a).sin());
            let v = match in_fault(i) {
                None => base + sigma * ar,
                Some(f) => match f.kind {
                    FaultKind::LevelShift => base + sigma * (ar + f.size),
                    FaultKind::VarianceChange => base + sigma * ar * f.size,
                    FaultKind::Stuck => last_clean,
                    FaultKind::Spike => base + sigma * (ar + f.size),
                    FaultKind::Ramp => {
                        let done = (i + 1 - f.start) as f64 / (f.end - f.start) as f64;
                        base + sigma * (ar + f.size * done)
                    }
                    FaultKind::Outage => base * f.size + sigma * f.size * ar,
                    FaultKind::ErrorRateRise => base + sigma * ar,
                },
            };
            if in_fault(i).is_none() {
                last_clean = v;
            }
            values.push(v);
        }
    }
    FaultSeries {
        seed,
        ts_ms,
        values,
        scored_from,
        fault,
    }
}

/// Series `0..count` of `split`.
pub fn generate(split: Split, count: u64) -> Vec<FaultSeries> {
    (0..count).map(|i| generate_one(split, i)).collect()
}

/// What a detector's alerts did on one series.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct SeriesOutcome {
    /// Rows after the first fault row at which the first alert came (0 = on it), if it came in
    /// the fault or within [`DETECT_GRACE`] rows after it.
    pub delay: Option<usize>,
    /// Alerts on normal rows: scored, not in a fault, its grace or its recovery.
    pub false_alarms: usize,
    pub normal_rows: usize,
}

/// Scores the alert decisions `alerts` (one per row) on `series`.
pub fn score_alerts(series: &FaultSeries, alerts: &[bool]) -> SeriesOutcome {
    let mut out = SeriesOutcome::default();
    let (detect_end, quiet_end) = match series.fault {
        Some(f) => (f.end + DETECT_GRACE, f.end + DETECT_GRACE + RECOVERY_ROWS),
        None => (0, 0),
    };
    for (i, &alert) in alerts.iter().enumerate().skip(series.scored_from) {
        match series.fault {
            Some(f) if i >= f.start && i < detect_end => {
                if alert && out.delay.is_none() {
                    out.delay = Some(i - f.start);
                }
            }
            Some(f) if i >= f.start && i < quiet_end => {}
            _ => {
                out.normal_rows += 1;
                out.false_alarms += usize::from(alert);
            }
        }
    }
    out
}

/// Figures for one fault kind (or all).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct KindReport {
    pub kind: String,
    pub faults: usize,
    pub detected: usize,
    pub recall: f64,
    /// Median delay in rows over the detected faults; `None` when none was detected.
    pub median_delay: Option<f64>,
}

/// A detector's figures on a set of generated series.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FaultReport {
    pub series: usize,
    pub points: usize,
    pub overall: KindReport,
    pub by_kind: Vec<KindReport>,
    pub false_alarms: usize,
    pub normal_rows: usize,
    pub false_alarms_per_10k: f64,
    /// The largest `memory_bytes()` at the end of a series.
    pub max_memory_bytes: usize,
}

fn median(v: &mut [usize]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m] as f64
    } else {
        (v[m - 1] + v[m]) as f64 / 2.0
    })
}

fn kind_report(
    kind: &str,
    outcomes: &[(Option<FaultKind>, SeriesOutcome)],
    pick: impl Fn(FaultKind) -> bool,
) -> KindReport {
    let mut delays: Vec<usize> = Vec::new();
    let mut faults = 0;
    for (k, o) in outcomes {
        if k.is_some_and(&pick) {
            faults += 1;
            delays.extend(o.delay);
        }
    }
    KindReport {
        kind: kind.to_string(),
        faults,
        detected: delays.len(),
        recall: delays.len() as f64 / faults.max(1) as f64,
        median_delay: median(&mut delays),
    }
}

/// Runs a fresh detector from `make` over each series and scores its alerts.
pub fn evaluate<F>(series: &[FaultSeries], mut make: F) -> FaultReport
where
    F: FnMut() -> Box<dyn Detector>,
{
    let mut outcomes = Vec::with_capacity(series.len());
    let mut max_memory_bytes = 0;
    let mut alerts = Vec::new();
    for s in series {
        let mut d = make();
        alerts.clear();
        alerts.extend(
            s.ts_ms
                .iter()
                .zip(&s.values)
                .map(|(&t, &v)| d.observe(t, v).alert),
        );
        max_memory_bytes = max_memory_bytes.max(d.memory_bytes());
        outcomes.push((s.fault.map(|f| f.kind), score_alerts(s, &alerts)));
    }
    report(series, &outcomes, max_memory_bytes)
}

/// Scores verdicts already computed, one list per series.
pub fn evaluate_verdicts(
    series: &[FaultSeries],
    verdicts: &[Vec<Verdict>],
    max_memory_bytes: usize,
) -> FaultReport {
    let outcomes: Vec<_> = series
        .iter()
        .zip(verdicts)
        .map(|(s, v)| {
            let alerts: Vec<bool> = v.iter().map(|v| v.alert).collect();
            (s.fault.map(|f| f.kind), score_alerts(s, &alerts))
        })
        .collect();
    report(series, &outcomes, max_memory_bytes)
}

fn report(
    series: &[FaultSeries],
    outcomes: &[(Option<FaultKind>, SeriesOutcome)],
    max_memory_bytes: usize,
) -> FaultReport {
    let false_alarms = outcomes.iter().map(|(_, o)| o.false_alarms).sum();
    let normal_rows = outcomes.iter().map(|(_, o)| o.normal_rows).sum();
    FaultReport {
        series: series.len(),
        points: series.iter().map(|s| s.values.len()).sum(),
        overall: kind_report("all", outcomes, |_| true),
        by_kind: FaultKind::ALL
            .iter()
            .map(|&k| kind_report(k.name(), outcomes, |x| x == k))
            .collect(),
        false_alarms,
        normal_rows,
        false_alarms_per_10k: false_alarms as f64 * 10_000.0 / (normal_rows as f64).max(1.0),
        max_memory_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic_and_the_splits_differ() {
        let a = generate(Split::Dev, 16);
        assert_eq!(a, generate(Split::Dev, 16));
        let b = generate(Split::Heldout, 16);
        assert!(a.iter().zip(&b).all(|(x, y)| x.values != y.values));
        assert!(a
            .iter()
            .chain(&b)
            .all(|s| s.values.iter().all(|v| v.is_finite())));
    }

    #[test]
    fn every_kind_appears_inside_the_scored_part() {
        let s = generate(Split::Dev, 64);
        for k in FaultKind::ALL {
            let with: Vec<&FaultSeries> = s
                .iter()
                .filter(|s| s.fault.map(|f| f.kind) == Some(k))
                .collect();
            assert_eq!(with.len(), 8, "{}", k.name());
            for x in with {
                let f = x.fault.unwrap();
                assert!(f.start >= x.scored_from && f.end <= x.values.len() && f.start < f.end);
            }
        }
        assert_eq!(s.iter().filter(|s| s.fault.is_none()).count(), 8);
    }

    #[test]
    fn faults_change_the_series_as_named() {
        for s in generate(Split::Dev, 64) {
            let Some(f) = s.fault else { continue };
            let v = &s.values[f.start..f.end];
            match f.kind {
                FaultKind::Stuck => assert!(v.iter().all(|&x| x == s.values[f.start - 1])),
                FaultKind::Outage => {
                    let before = s.values[f.start - 50..f.start].iter().sum::<f64>() / 50.0;
                    assert!(v.iter().all(|&x| x.abs() < before.abs() * 0.5), "{f:?}");
                }
                FaultKind::ErrorRateRise => assert!(v.iter().all(|&x| (0.0..=1.0).contains(&x))),
                _ => {}
            }
        }
    }

    #[test]
    fn scoring_counts_delay_and_false_alarms() {
        let mut s = generate_one(Split::Dev, 0);
        s.fault = Some(Fault {
            kind: FaultKind::LevelShift,
            start: s.scored_from + 100,
            end: s.scored_from + 150,
            size: 5.0,
        });
        let mut alerts = vec![false; s.values.len()];
        alerts[10] = true; // history: not scored
        alerts[s.scored_from + 3] = true; // a false alarm
        alerts[s.scored_from + 104] = true; // detection, delay 4
        alerts[s.scored_from + 106] = true; // the same fault again
        alerts[s.scored_from + 150 + DETECT_GRACE + 5] = true; // recovery: neither
        alerts[s.scored_from + 150 + DETECT_GRACE + RECOVERY_ROWS] = true; // a false alarm
        let o = score_alerts(&s, &alerts);
        assert_eq!(o.delay, Some(4));
        assert_eq!(o.false_alarms, 2);
        let scored = s.values.len() - s.scored_from;
        assert_eq!(o.normal_rows, scored - (50 + DETECT_GRACE + RECOVERY_ROWS));
        let r = evaluate_verdicts(
            std::slice::from_ref(&s),
            &[alerts
                .iter()
                .map(|&a| Verdict {
                    score: f64::from(u8::from(a)),
                    alert: a,
                })
                .collect()],
            0,
        );
        assert_eq!(r.overall.recall, 1.0);
        assert_eq!(r.overall.median_delay, Some(4.0));
        assert_eq!(median(&mut [5, 1, 3, 2]), Some(2.5));
    }
}
