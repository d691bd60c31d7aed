//! Seeded synthetic deployment histories with a known failure probability.
//!
//! A [`World`] is a random data-generating process: numeric and categorical columns, effects
//! on the log-odds that are linear, thresholds, hinges or bumps, interactions (a numeric effect
//! that only acts for one category, two thresholds that only matter together), informative
//! missing cells, and a base rate. Samples from one world share the process but not the rows,
//! so a model trained on one sample can be scored on another, against the true probability
//! `_p`. Test samples may carry categories the training sample never had.
//!
//! Pure: no IO, no clock; the same seed gives the same history.

use crate::frame::{FeatureValue, Frame};
use crate::metrics::sigmoid;
use crate::rng::Rng;

/// The shape of a world.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    pub numeric: usize,
    pub categorical: usize,
    /// Share of cells left empty.
    pub missing_rate: f64,
    /// Target share of failures.
    pub base_rate: f64,
}

impl Default for Shape {
    fn default() -> Self {
        Shape {
            numeric: 8,
            categorical: 3,
            missing_rate: 0.05,
            base_rate: 0.15,
        }
    }
}

#[derive(Debug, Clone)]
enum Dist {
    Uniform { low: f64, high: f64 },
    Normal { mean: f64, sd: f64 },
    LogNormal { mu: f64, sigma: f64 },
    Count { mean: f64 },
}

#[derive(Debug, Clone)]
enum Effect {
    None,
    Linear(f64),
    Step { at: f64, weight: f64 },
    Hinge { at: f64, weight: f64 },
    Bump { at: f64, width: f64, weight: f64 },
}

#[derive(Debug, Clone)]
struct NumericColumn {
    name: String,
    dist: Dist,
    effect: Effect,
    missing_effect: f64,
}

#[derive(Debug, Clone)]
struct CategoricalColumn {
    name: String,
    levels: Vec<String>,
    shares: Vec<f64>,
    effects: Vec<f64>,
    missing_effect: f64,
}

#[derive(Debug, Clone)]
enum Interaction {
    /// `weight · z(numeric)` only when the category column holds `level`.
    ByCategory {
        numeric: usize,
        category: usize,
        level: usize,
        weight: f64,
    },
    /// `weight` when both numerics are above their thresholds (z-scores).
    BothHigh {
        a: usize,
        b: usize,
        at_a: f64,
        at_b: f64,
        weight: f64,
    },
}

/// A data-generating process.
#[derive(Debug, Clone)]
pub struct World {
    numeric: Vec<NumericColumn>,
    categorical: Vec<CategoricalColumn>,
    interactions: Vec<Interaction>,
    intercept: f64,
    missing_rate: f64,
}

const NUMERIC_NAMES: &[&str] = &[
    "disk_free_pct",
    "uptime_days",
    "config_drift",
    "package_drift",
    "mem_used_pct",
    "open_files",
    "change_size",
    "restarts_7d",
    "latency_p99_ms",
    "error_rate",
    "age_days",
    "queue_depth",
];
const CATEGORY_NAMES: &[&str] = &[
    "region",
    "runtime",
    "update_kind",
    "team",
    "hardware",
    "channel",
];

/// A sample: the frame (with an id column `run_id`, the label `outcome` and the truth `_p`),
/// and the labels and true probabilities as vectors.
#[derive(Debug, Clone)]
pub struct Sample {
    pub frame: Frame,
    pub failed: Vec<bool>,
    pub p: Vec<f64>,
}

impl World {
    /// Draws a world of the given shape from `seed`.
    pub fn new(seed: u64, shape: &Shape) -> World {
        let mut rng = crate::rng::seeded(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0xA5A5);
        let mut names: Vec<&str> = NUMERIC_NAMES.to_vec();
        rng.shuffle(&mut names);
        let numeric: Vec<NumericColumn> = (0..shape.numeric)
            .map(|j| {
                let name = names
                    .get(j)
                    .map_or_else(|| format!("metric_{j}"), |n| n.to_string());
                let dist = match rng.index(4) {
                    0 => Dist::Uniform {
                        low: 0.0,
                        high: 100.0,
                    },
                    1 => Dist::Normal {
                        mean: 10.0 * rng.unit(),
                        sd: 1.0 + 3.0 * rng.unit(),
                    },
                    2 => Dist::LogNormal {
                        mu: 1.0 + rng.unit(),
                        sigma: 0.6,
                    },
                    _ => Dist::Count {
                        mean: 0.5 + 3.0 * rng.unit(),
                    },
                };
                let sign = if rng.unit() < 0.5 { -1.0 } else { 1.0 };
                let effect = match rng.index(6) {
                    0 => Effect::None,
                    1 => Effect::Linear(sign * (0.3 + 0.5 * rng.unit())),
                    2 | 3 => Effect::Step {
                        at: rng.normal() * 0.7,
                        weight: sign * (0.8 + 0.8 * rng.unit()),
                    },
                    4 => Effect::Hinge {
                        at: rng.normal() * 0.5,
                        weight: 0.6 + 0.6 * rng.unit(),
                    },
                    _ => Effect::Bump {
                        at: rng.normal() * 0.5,
                        width: 0.5,
                        weight: sign * (0.8 + 0.6 * rng.unit()),
                    },
                };
                NumericColumn {
                    name,
                    dist,
                    effect,
                    missing_effect: rng.normal() * 0.5,
                }
            })
            .collect();
        let mut cnames: Vec<&str> = CATEGORY_NAMES.to_vec();
        rng.shuffle(&mut cnames);
        let categorical: Vec<CategoricalColumn> = (0..shape.categorical)
            .map(|j| {
                let name = cnames
                    .get(j)
                    .map_or_else(|| format!("group_{j}"), |n| n.to_string());
                let k = 3 + rng.index(6);
                let levels = (0..k)
                    .map(|i| format!("{}-{}", &name[..name.len().min(3)], i))
                    .collect();
                let raw: Vec<f64> = (0..k).map(|_| 0.2 + rng.unit()).collect();
                let total: f64 = raw.iter().sum();
                let shares = raw.iter().map(|r| r / total).collect();
                let effects = (0..k).map(|_| rng.normal() * 0.7).collect();
                CategoricalColumn {
                    name,
                    levels,
                    shares,
                    effects,
                    missing_effect: rng.normal() * 0.5,
                }
            })
            .collect();
        let mut interactions = Vec::new();
        if shape.numeric >= 1 && shape.categorical >= 1 {
            let level = rng.index(categorical[0].levels.len());
            interactions.push(Interaction::ByCategory {
                numeric: 0,
                category: 0,
                level,
                weight: 1.2,
            });
        }
        if shape.numeric >= 3 {
            interactions.push(Interaction::BothHigh {
                a: 1,
                b: 2,
                at_a: 0.3,
                at_b: 0.0,
                weight: 1.5,
            });
        }
        let mut world = World {
            numeric,
            categorical,
            interactions,
            intercept: 0.0,
            missing_rate: shape.missing_rate,
        };
        // Find the intercept that gives the base rate, on a calibration sample.
        let mut crng = crate::rng::seeded(seed ^ 0x51DE);
        let logits: Vec<f64> = (0..4000)
            .map(|_| world.draw_row(&mut crng, 0.0).1)
            .collect();
        let (mut lo, mut hi) = (-15.0, 15.0);
        for _ in 0..60 {
            let mid = (lo + hi) / 2.0;
            let rate = logits.iter().map(|l| sigmoid(l + mid)).sum::<f64>() / logits.len() as f64;
            if rate < shape.base_rate {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        world.intercept = (lo + hi) / 2.0;
        world
    }

    /// The column names of a sample, in order.
    pub fn column_names(&self) -> Vec<String> {
        let mut names = vec!["run_id".to_string()];
        names.extend(self.numeric.iter().map(|c| c.name.clone()));
        names.extend(self.categorical.iter().map(|c| c.name.clone()));
        names.push("outcome".into());
        names.push("_p".into());
        names
    }

    /// Draws one row: its cells and its log-odds without the intercept.
    fn draw_row(&self, rng: &mut Rng, novel_rate: f64) -> (Vec<FeatureValue>, f64) {
        let mut cells = Vec::with_capacity(self.numeric.len() + self.categorical.len());
        let mut z = vec![0.0; self.numeric.len()];
        let mut present = vec![true; self.numeric.len()];
        let mut logit = 0.0;
        for (j, c) in self.numeric.iter().enumerate() {
            let (v, zz) = match c.dist {
                Dist::Uniform { low, high } => {
                    let u = rng.unit();
                    (low + (high - low) * u, (u - 0.5) / 0.2887)
                }
                Dist::Normal { mean, sd } => {
                    let n = rng.normal();
                    (mean + sd * n, n)
                }
                Dist::LogNormal { mu, sigma } => {
                    let n = rng.normal();
                    ((mu + sigma * n).exp(), n)
                }
                Dist::Count { mean } => {
                    // A Poisson draw by inversion.
                    let (mut k, mut p, u) = (0u32, (-mean).exp(), rng.unit());
                    let mut cdf = p;
                    while u > cdf && k < 100 {
                        k += 1;
                        p *= mean / k as f64;
                        cdf += p;
                    }
                    (k as f64, (k as f64 - mean) / mean.sqrt())
                }
            };
            z[j] = zz;
            if rng.unit() < self.missing_rate {
                present[j] = false;
                cells.push(FeatureValue::Missing);
                logit += c.missing_effect;
            } else {
                let v = (v * 1000.0).round() / 1000.0;
                cells.push(FeatureValue::Number(v));
                logit += match c.effect {
                    Effect::None => 0.0,
                    Effect::Linear(w) => w * zz,
                    Effect::Step { at, weight } => weight * (zz > at) as u8 as f64,
                    Effect::Hinge { at, weight } => weight * (zz - at).max(0.0),
                    Effect::Bump { at, width, weight } => {
                        weight * (-((zz - at) / width).powi(2)).exp()
                    }
                };
            }
        }
        let mut level = vec![None; self.categorical.len()];
        for (j, c) in self.categorical.iter().enumerate() {
            if rng.unit() < self.missing_rate {
                cells.push(FeatureValue::Missing);
                logit += c.missing_effect;
            } else if rng.unit() < novel_rate {
                cells.push(FeatureValue::Category(format!(
                    "{}-new{}",
                    c.name,
                    rng.index(3)
                )));
            } else {
                let u = rng.unit();
                let mut acc = 0.0;
                let mut k = c.levels.len() - 1;
                for (i, s) in c.shares.iter().enumerate() {
                    acc += s;
                    if u < acc {
                        k = i;
                        break;
                    }
                }
                level[j] = Some(k);
                cells.push(FeatureValue::Category(c.levels[k].clone()));
                logit += c.effects[k];
            }
        }
        for i in &self.interactions {
            match *i {
                Interaction::ByCategory {
                    numeric,
                    category,
                    level: l,
                    weight,
                } => {
                    if present[numeric] && level[category] == Some(l) {
                        logit += weight * z[numeric];
                    }
                }
                Interaction::BothHigh {
                    a,
                    b,
                    at_a,
                    at_b,
                    weight,
                } => {
                    if present[a] && present[b] && z[a] > at_a && z[b] > at_b {
                        logit += weight;
                    }
                }
            }
        }
        (cells, logit)
    }

    /// Draws `rows` rows from `seed`. A share `novel_rate` of categorical cells hold a
    /// category that no sample drawn with `novel_rate = 0` contains (its effect is zero).
    pub fn sample(&self, rows: usize, seed: u64, novel_rate: f64) -> Sample {
        let mut rng = crate::rng::seeded(seed);
        let names = self.column_names();
        let mut columns: Vec<Vec<FeatureValue>> = vec![Vec::with_capacity(rows); names.len()];
        let mut failed = Vec::with_capacity(rows);
        let mut ps = Vec::with_capacity(rows);
        for r in 0..rows {
            let (cells, logit) = self.draw_row(&mut rng, novel_rate);
            let p = sigmoid(logit + self.intercept);
            let y = rng.unit() < p;
            columns[0].push(FeatureValue::Category(format!("run-{seed}-{r}")));
            for (j, c) in cells.into_iter().enumerate() {
                columns[j + 1].push(c);
            }
            let n = names.len();
            columns[n - 2].push(FeatureValue::Number(y as u8 as f64));
            columns[n - 1].push(FeatureValue::Number(p));
            failed.push(y);
            ps.push(p);
        }
        let frame =
            Frame::from_columns("synthetic", names, columns).expect("columns have equal length");
        Sample {
            frame,
            failed,
            p: ps,
        }
    }
}

/// Writes a frame as CSV (used to hand synthetic histories to the CLI).
pub fn write_csv<W: std::io::Write>(frame: &Frame, w: W) -> Result<(), csv::Error> {
    let mut out = csv::Writer::from_writer(w);
    out.write_record(frame.names())?;
    let cols: Vec<&[FeatureValue]> = (0..frame.names().len())
        .map(|i| frame.column_at(i))
        .collect();
    for r in 0..frame.rows() {
        out.write_record(cols.iter().map(|c| c[r].to_string()))?;
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_history_and_base_rate_is_near_target() {
        let w = World::new(5, &Shape::default());
        let a = w.sample(3000, 1, 0.0);
        let b = World::new(5, &Shape::default()).sample(3000, 1, 0.0);
        assert_eq!(a.p, b.p);
        let rate = a.failed.iter().filter(|v| **v).count() as f64 / 3000.0;
        assert!((rate - 0.15).abs() < 0.03, "{rate}");
        let c = w.sample(3000, 2, 0.0);
        assert_ne!(a.p, c.p);
    }
}
