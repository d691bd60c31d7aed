//! Platt scaling: a logistic fit of the outcome on the raw margin, on rows the model did not
//! train on. It is linear in log-odds, so the explanations stay exact after calibration: each
//! contribution is multiplied by the slope and the base value becomes `slope·base + intercept`.

use serde::{Deserialize, Serialize};

use crate::metrics::sigmoid;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Platt {
    pub slope: f64,
    pub intercept: f64,
}

impl Platt {
    pub const IDENTITY: Platt = Platt {
        slope: 1.0,
        intercept: 0.0,
    };

    pub fn logit(&self, margin: f64) -> f64 {
        self.slope * margin + self.intercept
    }

    pub fn probability(&self, margin: f64) -> f64 {
        sigmoid(self.logit(margin))
    }

    /// Fits slope and intercept by Newton's method on the log loss, with a small ridge that
    /// pulls toward the identity so that a tiny held-out set cannot produce a wild slope.
    pub fn fit(margins: &[f64], y: &[bool]) -> Platt {
        let ridge = 1.0;
        let (mut a, mut b) = (1.0f64, 0.0f64);
        for _ in 0..50 {
            let (mut ga, mut gb, mut haa, mut hab, mut hbb) =
                (ridge * (a - 1.0), ridge * b, ridge, 0.0, ridge);
            for (&m, &t) in margins.iter().zip(y) {
                let p = sigmoid(a * m + b);
                let r = p - if t { 1.0 } else { 0.0 };
                let w = (p * (1.0 - p)).max(1e-12);
                ga += r * m;
                gb += r;
                haa += w * m * m;
                hab += w * m;
                hbb += w;
            }
            let det = haa * hbb - hab * hab;
            if det.abs() < 1e-300 {
                break;
            }
            let da = (hbb * ga - hab * gb) / det;
            let db = (haa * gb - hab * ga) / det;
            a -= da;
            b -= db;
            if da.abs() < 1e-10 && db.abs() < 1e-10 {
                break;
            }
        }
        if a.is_finite() && b.is_finite() && a > 0.0 {
            Platt {
                slope: a,
                intercept: b,
            }
        } else {
            Platt::IDENTITY
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platt_recovers_a_known_distortion() {
        let mut rng = crate::rng::seeded(3);
        let mut m = Vec::new();
        let mut y = Vec::new();
        for _ in 0..20_000 {
            let z = rng.normal() * 2.0;
            // The true log-odds are 0.5·z − 1; the "model" reports z.
            y.push(rng.unit() < sigmoid(0.5 * z - 1.0));
            m.push(z);
        }
        let p = Platt::fit(&m, &y);
        assert!((p.slope - 0.5).abs() < 0.05, "{p:?}");
        assert!((p.intercept + 1.0).abs() < 0.08, "{p:?}");
    }
}
