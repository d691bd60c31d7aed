//! Scores of probabilistic predictions: ROC AUC, Brier score, log loss and a reliability table.

use serde::{Deserialize, Serialize};

#[inline]
pub fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

#[inline]
pub fn logit(p: f64) -> f64 {
    let p = p.clamp(1e-15, 1.0 - 1e-15);
    (p / (1.0 - p)).ln()
}

/// Mean negative log-likelihood; probabilities are clipped to [1e-15, 1 − 1e-15].
pub fn log_loss(p: &[f64], y: &[bool]) -> f64 {
    let s: f64 = p
        .iter()
        .zip(y)
        .map(|(&p, &y)| {
            let p = p.clamp(1e-15, 1.0 - 1e-15);
            if y {
                -p.ln()
            } else {
                -(1.0 - p).ln()
            }
        })
        .sum();
    s / p.len().max(1) as f64
}

/// Mean squared error of the probability against the 0/1 outcome.
pub fn brier(p: &[f64], y: &[bool]) -> f64 {
    let s: f64 = p
        .iter()
        .zip(y)
        .map(|(&p, &y)| (p - if y { 1.0 } else { 0.0 }).powi(2))
        .sum();
    s / p.len().max(1) as f64
}

/// Area under the ROC curve, ties counted as one half. `None` when one class is absent.
pub fn roc_auc(p: &[f64], y: &[bool]) -> Option<f64> {
    let mut idx: Vec<usize> = (0..p.len()).collect();
    idx.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let pos = y.iter().filter(|v| **v).count() as f64;
    let neg = y.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return None;
    }
    // Sum of the (mid-)ranks of the positives.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && p[idx[j + 1]] == p[idx[i]] {
            j += 1;
        }
        let mid = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            if y[k] {
                rank_sum += mid;
            }
        }
        i = j + 1;
    }
    Some((rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg))
}

/// One row of a reliability table: the rows whose probability fell in `[low, high)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReliabilityBin {
    pub low: f64,
    pub high: f64,
    pub rows: usize,
    pub mean_probability: f64,
    pub observed_rate: f64,
}

/// The number of bins of the reliability table and of the ECE in [`score`].
pub const ECE_BINS: usize = 10;

/// `bins` equal-width bins of predicted probability: bin `k` holds the rows with
/// `k/bins <= p < (k+1)/bins`, and the last bin also holds `p = 1`. Empty bins are left out.
pub fn reliability(p: &[f64], y: &[bool], bins: usize) -> Vec<ReliabilityBin> {
    let mut acc = vec![(0usize, 0.0f64, 0usize); bins];
    for (&p, &y) in p.iter().zip(y) {
        let b = ((p * bins as f64) as usize).min(bins - 1);
        acc[b].0 += 1;
        acc[b].1 += p;
        acc[b].2 += y as usize;
    }
    acc.iter()
        .enumerate()
        .filter(|(_, a)| a.0 > 0)
        .map(|(b, &(n, sp, sy))| ReliabilityBin {
            low: b as f64 / bins as f64,
            high: (b + 1) as f64 / bins as f64,
            rows: n,
            mean_probability: sp / n as f64,
            observed_rate: sy as f64 / n as f64,
        })
        .collect()
}

/// Expected calibration error of a reliability table: over its bins, the gap between the mean
/// predicted probability and the observed failure rate, weighted by the bin's share of rows,
/// `Σ_k (n_k / n) · |mean p_k − rate_k|`. With [`score`] the bins are [`ECE_BINS`] equal-width
/// bins of predicted probability (see [`reliability`]). 0 for an empty table.
pub fn calibration_error(table: &[ReliabilityBin]) -> f64 {
    let n: usize = table.iter().map(|b| b.rows).sum();
    table
        .iter()
        .map(|b| b.rows as f64 * (b.mean_probability - b.observed_rate).abs())
        .sum::<f64>()
        / n.max(1) as f64
}

/// All scores of one set of predictions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    pub rows: usize,
    pub failures: usize,
    pub roc_auc: Option<f64>,
    pub brier: f64,
    pub log_loss: f64,
    pub calibration_error: f64,
    pub reliability: Vec<ReliabilityBin>,
}

pub fn score(p: &[f64], y: &[bool]) -> Scores {
    let reliability = reliability(p, y, ECE_BINS);
    Scores {
        rows: p.len(),
        failures: y.iter().filter(|v| **v).count(),
        roc_auc: roc_auc(p, y),
        brier: brier(p, y),
        log_loss: log_loss(p, y),
        calibration_error: calibration_error(&reliability),
        reliability,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_counts_ties_as_half() {
        assert_eq!(
            roc_auc(&[0.1, 0.2, 0.3, 0.4], &[false, false, true, true]),
            Some(1.0)
        );
        assert_eq!(
            roc_auc(&[0.4, 0.3, 0.2, 0.1], &[false, false, true, true]),
            Some(0.0)
        );
        assert_eq!(roc_auc(&[0.5, 0.5], &[false, true]), Some(0.5));
        assert_eq!(roc_auc(&[0.5, 0.5], &[true, true]), None);
    }

    #[test]
    fn brier_and_log_loss_of_a_coin() {
        let p = [0.5; 4];
        let y = [true, false, true, false];
        assert!((brier(&p, &y) - 0.25).abs() < 1e-12);
        assert!((log_loss(&p, &y) - std::f64::consts::LN_2).abs() < 1e-12);
    }

    #[test]
    fn ece_is_the_row_weighted_gap_of_equal_width_bins() {
        // Bin [0.1, 0.2): rows 0.1 and 0.1, one failure: mean 0.1, rate 0.5, gap 0.4.
        // Bin [0.9, 1.0]: rows 0.9 and 1.0, both failures: mean 0.95, rate 1, gap 0.05.
        let p = [0.1, 0.1, 0.9, 1.0];
        let y = [true, false, true, true];
        let t = reliability(&p, &y, ECE_BINS);
        assert_eq!(t.len(), 2);
        assert_eq!((t[0].low, t[0].high, t[0].rows), (0.1, 0.2, 2));
        assert_eq!((t[1].low, t[1].high, t[1].rows), (0.9, 1.0, 2));
        let ece = calibration_error(&t);
        assert!((ece - (0.5 * 0.4 + 0.5 * 0.05)).abs() < 1e-12, "{ece}");
        assert!((score(&p, &y).calibration_error - ece).abs() < 1e-15);
        // Calibrated within each bin: zero; no rows: zero, not NaN.
        let p = [0.25, 0.25, 0.25, 0.25];
        let y = [true, false, false, false];
        assert!(calibration_error(&reliability(&p, &y, ECE_BINS)).abs() < 1e-12);
        assert_eq!(calibration_error(&[]), 0.0);
    }

    #[test]
    fn reliability_bins_cover_every_row() {
        let p = [0.05, 0.15, 0.95, 1.0];
        let t = reliability(&p, &[false, true, true, true], 10);
        assert_eq!(t.iter().map(|b| b.rows).sum::<usize>(), 4);
        assert_eq!(t.last().unwrap().rows, 2);
    }
}
