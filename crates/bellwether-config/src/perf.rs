//! A lightweight performance model of one instance, trained on its own measured history:
//! throughput and latency as a function of its settings.
//!
//! The model: ridge regression of `ln(tps)` and `ln(latency_ms)` on the numeric settings that
//! vary among the observations, each scaled as `sign(x) · ln(1 + |x|)` (memory and cost
//! settings act multiplicatively) and standardised, plus an intercept. The penalty is chosen
//! among a few values by leave-one-out error, computed exactly from the hat matrix
//! (`e_i / (1 − h_ii)`), and the model reports that leave-one-out relative error of its
//! predictions, so a reader can judge a predicted change against it.
//!
//! Bounded: at most [`MAX_OBSERVATIONS`] observations (the latest) and [`MAX_FEATURES`]
//! features; a prediction clamps each standardised feature to ±[`Z_CLAMP`] and the predicted
//! log to one unit (×e) beyond the range seen, so an extrapolation is never wild. It needs at
//! least [`MIN_OBSERVATIONS`] observations. Never panics: a model whose parameters cannot be
//! read predicts no change with a relative error of 1 (see [`PerfModel::try_predict`]).

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

/// Fewer observations than this: [`PerfError::TooFew`].
pub const MIN_OBSERVATIONS: usize = 5;
/// At most this many observations are used (the latest ones in the slice).
pub const MAX_OBSERVATIONS: usize = 2000;
/// At most this many settings are used as features (those with the most distinct values).
pub const MAX_FEATURES: usize = 24;
/// Standardised features are clamped to ± this at prediction.
pub const Z_CLAMP: f64 = 4.0;
const LAMBDAS: [f64; 6] = [0.01, 0.1, 1.0, 3.0, 10.0, 100.0];
/// The intercept's penalty: tiny, so the closed-form leave-one-out stays exact.
const INTERCEPT_PENALTY: f64 = 1e-8;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Params {
    lambda: f64,
    mean: Vec<f64>,
    scale: Vec<f64>,
    /// Intercept first, then one weight per feature.
    tps: Vec<f64>,
    latency: Vec<f64>,
    tps_log_range: (f64, f64),
    latency_log_range: (f64, f64),
}

/// A setting's value as a feature: `sign(x) · ln(1 + |x|)` of a plain number or boolean.
fn feature(raw: &str) -> Option<f64> {
    let t = raw.trim().trim_matches('\'');
    let x = match t.to_lowercase().as_str() {
        "on" | "true" | "yes" => 1.0,
        "off" | "false" | "no" => 0.0,
        _ => t.parse::<f64>().ok()?,
    };
    x.is_finite().then(|| x.signum() * x.abs().ln_1p())
}

/// Inverts a small symmetric positive definite matrix (Gauss-Jordan, partial pivoting);
/// `None` when it is singular.
fn invert(a: &[Vec<f64>]) -> Option<Vec<Vec<f64>>> {
    let n = a.len();
    let mut m: Vec<Vec<f64>> = a
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let mut r = row.clone();
            r.extend((0..n).map(|j| if i == j { 1.0 } else { 0.0 }));
            r
        })
        .collect();
    for col in 0..n {
        let pivot = (col..n).max_by(|&x, &y| m[x][col].abs().total_cmp(&m[y][col].abs()))?;
        if m[pivot][col].abs().is_nan() || m[pivot][col].abs() <= 1e-12 {
            return None;
        }
        m.swap(col, pivot);
        let p = m[col][col];
        for v in m[col].iter_mut() {
            *v /= p;
        }
        let pivot_row = m[col].clone();
        for (r, row) in m.iter_mut().enumerate() {
            if r != col {
                let f = row[col];
                if f != 0.0 {
                    for (v, pv) in row.iter_mut().zip(&pivot_row) {
                        *v -= f * pv;
                    }
                }
            }
        }
    }
    Some(m.into_iter().map(|row| row[n..].to_vec()).collect())
}

struct Fit {
    w_tps: Vec<f64>,
    w_lat: Vec<f64>,
    /// Leave-one-out predictions (log space).
    loo_tps: Vec<f64>,
    loo_lat: Vec<f64>,
}

fn fit(x: &[Vec<f64>], y_tps: &[f64], y_lat: &[f64], lambda: f64) -> Option<Fit> {
    let k = x.first()?.len();
    let mut a = vec![vec![0.0; k]; k];
    for row in x {
        for i in 0..k {
            for j in 0..k {
                a[i][j] += row[i] * row[j];
            }
        }
    }
    for (i, r) in a.iter_mut().enumerate() {
        r[i] += if i == 0 { INTERCEPT_PENALTY } else { lambda };
    }
    let inv = invert(&a)?;
    let solve = |y: &[f64]| -> Vec<f64> {
        let mut xty = vec![0.0; k];
        for (row, yi) in x.iter().zip(y) {
            for i in 0..k {
                xty[i] += row[i] * yi;
            }
        }
        (0..k)
            .map(|i| (0..k).map(|j| inv[i][j] * xty[j]).sum())
            .collect()
    };
    let w_tps = solve(y_tps);
    let w_lat = solve(y_lat);
    let dot = |w: &[f64], row: &[f64]| -> f64 { w.iter().zip(row).map(|(a, b)| a * b).sum() };
    let mut loo_tps = Vec::with_capacity(x.len());
    let mut loo_lat = Vec::with_capacity(x.len());
    for (i, row) in x.iter().enumerate() {
        let h: f64 = (0..k)
            .map(|a| row[a] * (0..k).map(|b| inv[a][b] * row[b]).sum::<f64>())
            .sum();
        let denom = (1.0 - h).max(1e-6);
        let e_t = y_tps[i] - dot(&w_tps, row);
        let e_l = y_lat[i] - dot(&w_lat, row);
        loo_tps.push(y_tps[i] - e_t / denom);
        loo_lat.push(y_lat[i] - e_l / denom);
    }
    Some(Fit {
        w_tps,
        w_lat,
        loo_tps,
        loo_lat,
    })
}

fn rel_error(loo_log: &[f64], y_log: &[f64]) -> f64 {
    let n = y_log.len().max(1) as f64;
    loo_log
        .iter()
        .zip(y_log)
        .map(|(p, y)| ((p.exp() - y.exp()) / y.exp()).abs())
        .sum::<f64>()
        / n
}

impl PerfModel {
    /// Trains on `observations` (oldest first; the latest [`MAX_OBSERVATIONS`] are used).
    /// Every observation needs a positive finite `tps` and `latency_ms`.
    pub fn train(observations: &[PerfObservation]) -> Result<PerfModel, PerfError> {
        for (index, o) in observations.iter().enumerate() {
            if !(o.tps.is_finite() && o.tps > 0.0) {
                return Err(PerfError::Bad {
                    index,
                    message: format!("tps {} is not a positive number", o.tps),
                });
            }
            if !(o.latency_ms.is_finite() && o.latency_ms > 0.0) {
                return Err(PerfError::Bad {
                    index,
                    message: format!("latency_ms {} is not a positive number", o.latency_ms),
                });
            }
        }
        if observations.len() < MIN_OBSERVATIONS {
            return Err(PerfError::TooFew {
                needed: MIN_OBSERVATIONS,
                have: observations.len(),
            });
        }
        let obs = &observations[observations.len().saturating_sub(MAX_OBSERVATIONS)..];
        let n = obs.len();
        // Candidate features: present and numeric in every observation, with >= 2 values.
        let mut candidates: Vec<(usize, String, Vec<f64>)> = Vec::new();
        for key in obs[0].values.keys() {
            let col: Option<Vec<f64>> = obs
                .iter()
                .map(|o| o.values.get(key).and_then(|v| feature(v)))
                .collect();
            let Some(col) = col else { continue };
            let mut distinct = col.clone();
            distinct.sort_by(f64::total_cmp);
            distinct.dedup();
            if distinct.len() >= 2 {
                candidates.push((distinct.len(), key.clone(), col));
            }
        }
        candidates.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        candidates.truncate(MAX_FEATURES);
        candidates.sort_by(|a, b| a.1.cmp(&b.1));
        let features: Vec<String> = candidates.iter().map(|c| c.1.clone()).collect();
        let mut mean = Vec::new();
        let mut scale = Vec::new();
        for (_, _, col) in &candidates {
            let m = col.iter().sum::<f64>() / n as f64;
            let var = col.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / n as f64;
            mean.push(m);
            scale.push(var.sqrt().max(1e-12));
        }
        let x: Vec<Vec<f64>> = (0..n)
            .map(|i| {
                let mut row = vec![1.0];
                row.extend(
                    candidates
                        .iter()
                        .enumerate()
                        .map(|(j, (_, _, col))| (col[i] - mean[j]) / scale[j]),
                );
                row
            })
            .collect();
        let y_tps: Vec<f64> = obs.iter().map(|o| o.tps.ln()).collect();
        let y_lat: Vec<f64> = obs.iter().map(|o| o.latency_ms.ln()).collect();
        let mut best: Option<(f64, f64, Fit)> = None;
        for lambda in LAMBDAS {
            let Some(f) = fit(&x, &y_tps, &y_lat, lambda) else {
                continue;
            };
            let sse: f64 = f
                .loo_tps
                .iter()
                .zip(&y_tps)
                .chain(f.loo_lat.iter().zip(&y_lat))
                .map(|(p, y)| (p - y) * (p - y))
                .sum();
            if sse.is_finite() && best.as_ref().is_none_or(|b| sse < b.0) {
                best = Some((sse, lambda, f));
            }
        }
        let Some((_, lambda, f)) = best else {
            return Err(PerfError::Bad {
                index: 0,
                message: "the observations give no solvable model".to_string(),
            });
        };
        let range = |y: &[f64]| {
            (
                y.iter().copied().fold(f64::INFINITY, f64::min),
                y.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            )
        };
        let params = Params {
            lambda,
            mean,
            scale,
            tps: f.w_tps,
            latency: f.w_lat,
            tps_log_range: range(&y_tps),
            latency_log_range: range(&y_lat),
        };
        Ok(PerfModel {
            features,
            params: serde_json::to_value(&params).unwrap_or(serde_json::Value::Null),
            tps_rel_error: rel_error(&f.loo_tps, &y_tps),
            latency_rel_error: rel_error(&f.loo_lat, &y_lat),
            observations: n,
        })
    }

    /// Predicts throughput and latency for `proposed` against `current` (name →
    /// `pg_settings.setting`). A feature missing from a map, or not a number, takes its
    /// training mean. A model whose parameters cannot be read predicts no change with a
    /// relative error of 1.
    pub fn predict(
        &self,
        current: &BTreeMap<String, String>,
        proposed: &BTreeMap<String, String>,
    ) -> PerfPrediction {
        self.try_predict(current, proposed)
            .unwrap_or(PerfPrediction {
                tps: 0.0,
                latency_ms: 0.0,
                tps_change: 0.0,
                latency_change: 0.0,
                tps_rel_error: 1.0,
                latency_rel_error: 1.0,
            })
    }

    /// [`PerfModel::predict`], with an error when the model's parameters cannot be read.
    pub fn try_predict(
        &self,
        current: &BTreeMap<String, String>,
        proposed: &BTreeMap<String, String>,
    ) -> Result<PerfPrediction, PerfError> {
        let bad = |message: String| PerfError::Bad { index: 0, message };
        let p: Params = serde_json::from_value(self.params.clone())
            .map_err(|e| bad(format!("the model's parameters cannot be read: {e}")))?;
        let k = self.features.len();
        if p.mean.len() != k
            || p.scale.len() != k
            || p.tps.len() != k + 1
            || p.latency.len() != k + 1
        {
            return Err(bad(format!(
                "the model's parameters do not match its {k} features"
            )));
        }
        let row = |values: &BTreeMap<String, String>| -> Vec<f64> {
            let mut row = vec![1.0];
            for (j, f) in self.features.iter().enumerate() {
                let z = values
                    .get(f)
                    .and_then(|v| feature(v))
                    .map(|x| (x - p.mean[j]) / p.scale[j])
                    .filter(|z| z.is_finite())
                    .unwrap_or(0.0);
                row.push(z.clamp(-Z_CLAMP, Z_CLAMP));
            }
            row
        };
        let eval = |w: &[f64], row: &[f64], (lo, hi): (f64, f64)| -> f64 {
            let y: f64 = w.iter().zip(row).map(|(a, b)| a * b).sum();
            let y = if y.is_finite() { y } else { (lo + hi) / 2.0 };
            y.clamp(lo - 1.0, hi + 1.0).exp()
        };
        let (rc, rp) = (row(current), row(proposed));
        let tps_c = eval(&p.tps, &rc, p.tps_log_range);
        let tps_p = eval(&p.tps, &rp, p.tps_log_range);
        let lat_c = eval(&p.latency, &rc, p.latency_log_range);
        let lat_p = eval(&p.latency, &rp, p.latency_log_range);
        let change = |new: f64, old: f64| {
            let c = new / old - 1.0;
            if c.is_finite() {
                c
            } else {
                0.0
            }
        };
        Ok(PerfPrediction {
            tps: tps_p,
            latency_ms: lat_p,
            tps_change: change(tps_p, tps_c),
            latency_change: change(lat_p, lat_c),
            tps_rel_error: self.tps_rel_error,
            latency_rel_error: self.latency_rel_error,
        })
    }
}
