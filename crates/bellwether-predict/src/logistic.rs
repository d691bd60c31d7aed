//! L2-regularised logistic regression: the baseline the trees must beat.
//!
//! Numeric features are standardised (missing cells become the mean, plus a 0/1 "was
//! missing" column when training saw gaps); categorical features are one-hot over their codes,
//! so "other" and "missing" get their own weights. Fitted by Newton's method (IRLS).
//! Contributions are `weight · (x − training mean)` summed over a feature's columns: exact
//! Shapley values for a linear model with independent features.

use serde::{Deserialize, Serialize};

use crate::features::{Feature, FeatureKind, Prepared};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Logistic {
    pub intercept: f64,
    /// One block per feature, in feature order.
    pub blocks: Vec<Block>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Block {
    Numeric {
        mean: f64,
        std: f64,
        weight: f64,
        /// Weight of the "was missing" column, when there is one.
        missing_weight: Option<f64>,
        /// Training means of the standardised value and of the missing column.
        center: [f64; 2],
    },
    Categorical {
        /// Weight per category code.
        weights: Vec<f64>,
        /// Training share of each code.
        shares: Vec<f64>,
    },
}

impl Block {
    fn columns(&self) -> usize {
        match self {
            Block::Numeric { missing_weight, .. } => 1 + missing_weight.is_some() as usize,
            Block::Categorical { weights, .. } => weights.len(),
        }
    }

    /// Writes this block's design columns for value `v` into `out`.
    fn encode(&self, v: f64, out: &mut [f64]) {
        match self {
            Block::Numeric {
                mean,
                std,
                missing_weight,
                ..
            } => {
                out[0] = if v.is_nan() { 0.0 } else { (v - mean) / std };
                if missing_weight.is_some() {
                    out[1] = v.is_nan() as u8 as f64;
                }
            }
            Block::Categorical { weights, .. } => {
                out.iter_mut().for_each(|o| *o = 0.0);
                let c = v as usize;
                if c < weights.len() {
                    out[c] = 1.0;
                }
            }
        }
    }

    fn weights(&self) -> Vec<f64> {
        match self {
            Block::Numeric {
                weight,
                missing_weight,
                ..
            } => {
                let mut w = vec![*weight];
                w.extend(missing_weight);
                w
            }
            Block::Categorical { weights, .. } => weights.clone(),
        }
    }

    fn set_weights(&mut self, w: &[f64]) {
        match self {
            Block::Numeric {
                weight,
                missing_weight,
                ..
            } => {
                *weight = w[0];
                if let Some(m) = missing_weight {
                    *m = w[1];
                }
            }
            Block::Categorical { weights, .. } => weights.copy_from_slice(w),
        }
    }

    fn centers(&self) -> Vec<f64> {
        match self {
            Block::Numeric {
                center,
                missing_weight,
                ..
            } => center[..1 + missing_weight.is_some() as usize].to_vec(),
            Block::Categorical { shares, .. } => shares.clone(),
        }
    }

    /// This feature's contribution for value `v`.
    fn contribution(&self, v: f64) -> f64 {
        let mut x = vec![0.0; self.columns()];
        self.encode(v, &mut x);
        self.weights()
            .iter()
            .zip(&x)
            .zip(&self.centers())
            .map(|((w, x), c)| w * (x - c))
            .sum()
    }

    fn dot(&self, v: f64) -> f64 {
        match self {
            Block::Numeric {
                mean,
                std,
                weight,
                missing_weight,
                ..
            } => {
                if v.is_nan() {
                    missing_weight.unwrap_or(0.0)
                } else {
                    weight * (v - mean) / std
                }
            }
            Block::Categorical { weights, .. } => weights.get(v as usize).copied().unwrap_or(0.0),
        }
    }
}

impl Logistic {
    pub fn margin(&self, x: &[f64]) -> f64 {
        self.intercept
            + self
                .blocks
                .iter()
                .zip(x)
                .map(|(b, &v)| b.dot(v))
                .sum::<f64>()
    }

    /// The margin at the training means: the base of the explanations.
    pub fn expected_margin(&self) -> f64 {
        self.intercept
            + self
                .blocks
                .iter()
                .map(|b| {
                    b.weights()
                        .iter()
                        .zip(&b.centers())
                        .map(|(w, c)| w * c)
                        .sum::<f64>()
                })
                .sum::<f64>()
    }

    /// Per-feature contributions; with [`Logistic::expected_margin`] they sum to the margin.
    pub fn contributions(&self, x: &[f64], phi: &mut [f64]) {
        for ((p, b), &v) in phi.iter_mut().zip(&self.blocks).zip(x) {
            *p = b.contribution(v);
        }
    }

    /// Fits by Newton's method with an L2 penalty `l2` on the weights (not the intercept).
    pub fn fit(features: &[Feature], x: &Prepared, y: &[bool], l2: f64) -> Logistic {
        let n = x.rows();
        let mut blocks: Vec<Block> = features
            .iter()
            .map(|f| match &f.kind {
                FeatureKind::Numeric {
                    mean,
                    std,
                    missing_seen,
                    ..
                } => Block::Numeric {
                    mean: *mean,
                    std: *std,
                    weight: 0.0,
                    missing_weight: missing_seen.then_some(0.0),
                    center: [0.0; 2],
                },
                FeatureKind::Categorical { .. } => Block::Categorical {
                    weights: vec![0.0; f.bins()],
                    shares: vec![0.0; f.bins()],
                },
            })
            .collect();
        let p: usize = blocks.iter().map(Block::columns).sum::<usize>() + 1;
        // The design matrix, row-major, with the intercept last.
        let mut design = vec![0.0; n * p];
        for i in 0..n {
            let row = x.row(i);
            let out = &mut design[i * p..(i + 1) * p];
            let mut k = 0;
            for (b, &v) in blocks.iter().zip(row) {
                let c = b.columns();
                b.encode(v, &mut out[k..k + c]);
                k += c;
            }
            out[p - 1] = 1.0;
        }
        // Column means, for centring the explanations.
        let mut means = vec![0.0; p];
        for i in 0..n {
            for (m, v) in means.iter_mut().zip(&design[i * p..(i + 1) * p]) {
                *m += v;
            }
        }
        means.iter_mut().for_each(|m| *m /= n as f64);

        let rate = (y.iter().filter(|v| **v).count() as f64 / n as f64).clamp(1e-6, 1.0 - 1e-6);
        let mut w = vec![0.0; p];
        w[p - 1] = (rate / (1.0 - rate)).ln();
        let mut hess = vec![0.0; p * p];
        let mut grad = vec![0.0; p];
        let mut nz: Vec<usize> = Vec::with_capacity(p);
        for _ in 0..50 {
            hess.iter_mut().for_each(|h| *h = 0.0);
            grad.iter_mut().for_each(|g| *g = 0.0);
            for i in 0..n {
                let row = &design[i * p..(i + 1) * p];
                let z: f64 = row.iter().zip(&w).map(|(a, b)| a * b).sum();
                let pr = crate::metrics::sigmoid(z);
                let r = pr - if y[i] { 1.0 } else { 0.0 };
                let s = (pr * (1.0 - pr)).max(1e-12);
                nz.clear();
                nz.extend((0..p).filter(|&a| row[a] != 0.0));
                for (ai, &a) in nz.iter().enumerate() {
                    grad[a] += r * row[a];
                    let sa = s * row[a];
                    for &b in &nz[ai..] {
                        hess[a * p + b] += sa * row[b];
                    }
                }
            }
            for a in 0..p {
                for b in 0..a {
                    hess[a * p + b] = hess[b * p + a];
                }
            }
            for a in 0..p - 1 {
                grad[a] += l2 * w[a];
                hess[a * p + a] += l2;
            }
            hess[(p - 1) * p + p - 1] += 1e-9;
            let Some(step) = cholesky_solve(&hess, &grad, p) else {
                break;
            };
            let mut max_step: f64 = 0.0;
            for (wi, si) in w.iter_mut().zip(&step) {
                *wi -= si;
                max_step = max_step.max(si.abs());
            }
            if max_step < 1e-8 {
                break;
            }
        }
        let mut k = 0;
        for b in &mut blocks {
            let c = b.columns();
            b.set_weights(&w[k..k + c]);
            match b {
                Block::Numeric { center, .. } => {
                    center[0] = means[k];
                    if c > 1 {
                        center[1] = means[k + 1];
                    }
                }
                Block::Categorical { shares, .. } => shares.copy_from_slice(&means[k..k + c]),
            }
            k += c;
        }
        Logistic {
            intercept: w[p - 1],
            blocks,
        }
    }
}

/// Solves `a · x = b` for a symmetric positive-definite `a` (p × p, row-major).
fn cholesky_solve(a: &[f64], b: &[f64], p: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0; p * p];
    for i in 0..p {
        for j in 0..=i {
            let mut s = a[i * p + j];
            for k in 0..j {
                s -= l[i * p + k] * l[j * p + k];
            }
            if i == j {
                if s <= 0.0 {
                    return None;
                }
                l[i * p + i] = s.sqrt();
            } else {
                l[i * p + j] = s / l[j * p + j];
            }
        }
    }
    let mut z = vec![0.0; p];
    for i in 0..p {
        let mut s = b[i];
        for k in 0..i {
            s -= l[i * p + k] * z[k];
        }
        z[i] = s / l[i * p + i];
    }
    let mut x = vec![0.0; p];
    for i in (0..p).rev() {
        let mut s = z[i];
        for k in i + 1..p {
            s -= l[k * p + i] * x[k];
        }
        x[i] = s / l[i * p + i];
    }
    Some(x)
}
