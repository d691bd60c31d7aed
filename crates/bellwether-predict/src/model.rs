//! The model: features, a fitted estimator, a calibration, and how it was chosen.
//!
//! Training fits both estimators (boosted trees and the logistic baseline) on the same rows,
//! calibrates each on a held-out share of the history, and keeps the one with the lower
//! held-out log loss. The model file is JSON with a format name and a version; anything else
//! is refused.

use std::collections::HashMap;
use std::io::{Read, Write};

use bellwether_model::Unit;
use serde::{Deserialize, Serialize};

use crate::calibrate::Platt;
use crate::error::PredictError;
use crate::features::{
    infer_features, prepare_frame, prepare_row, Feature, Prepared, SchemaOptions, SkippedColumn,
};
use crate::frame::{FeatureValue, Frame};
use crate::gbdt::{self, Gbdt, GbdtLog, GbdtParams};
use crate::logistic::Logistic;
use crate::metrics::{self, sigmoid, Scores};
use crate::shap::{tree_shap_with_depth, ShapBuffer};

/// The `format` field of every model file.
pub const FORMAT: &str = "bellwether-predict-model";
/// The model file version this build writes and reads.
pub const VERSION: u32 = 1;
/// Fewer rows than this cannot be split into training and held-out parts usefully.
pub const MIN_TRAINING_ROWS: usize = 20;

/// Which estimator to fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    Gbdt,
    Logistic,
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Method::Gbdt => "gradient-boosted trees",
            Method::Logistic => "logistic regression",
        })
    }
}

/// Training options.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// The outcome column: 1/0, true/false or failure/success.
    pub label: String,
    /// Columns to leave out.
    pub ignore: Vec<String>,
    /// Fit only this method; `None` fits both and keeps the better on held-out rows.
    pub method: Option<Method>,
    pub gbdt: GbdtParams,
    /// L2 penalty of the logistic baseline.
    pub logistic_l2: f64,
    /// Share of rows held out for early stopping, calibration and the choice of method.
    pub holdout: f64,
    /// A category needs this many rows to get its own code.
    pub min_category_rows: usize,
    pub seed: u64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            label: "outcome".into(),
            ignore: Vec::new(),
            method: None,
            gbdt: GbdtParams::default(),
            logistic_l2: 1.0,
            holdout: 0.2,
            min_category_rows: 10,
            seed: 7,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum Estimator {
    Gbdt(Gbdt),
    Logistic(Logistic),
}

impl Estimator {
    #[inline]
    fn margin(&self, x: &[f64]) -> f64 {
        match self {
            Estimator::Gbdt(g) => g.margin(x),
            Estimator::Logistic(l) => l.margin(x),
        }
    }

    fn expected_margin(&self) -> f64 {
        match self {
            Estimator::Gbdt(g) => g.expected_margin(),
            Estimator::Logistic(l) => l.expected_margin(),
        }
    }

    fn contributions(&self, x: &[f64], phi: &mut [f64], buf: &mut ShapBuffer) {
        phi.iter_mut().for_each(|p| *p = 0.0);
        match self {
            Estimator::Gbdt(g) => {
                for (t, &depth) in g.trees.iter().zip(g.depths()) {
                    tree_shap_with_depth(t, depth, x, phi, buf);
                }
            }
            Estimator::Logistic(l) => l.contributions(x, phi),
        }
    }

    fn method(&self) -> Method {
        match self {
            Estimator::Gbdt(_) => Method::Gbdt,
            Estimator::Logistic(_) => Method::Logistic,
        }
    }
}

/// How one method scored on the held-out rows, after calibration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MethodScore {
    pub method: Method,
    pub roc_auc: Option<f64>,
    pub brier: f64,
    pub log_loss: f64,
    pub calibration_error: f64,
}

/// What training saw and decided; stored in the model file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSummary {
    pub source: String,
    pub rows: usize,
    pub failures: usize,
    pub train_rows: usize,
    pub holdout_rows: usize,
    pub skipped: Vec<SkippedColumn>,
    pub chosen: Method,
    pub candidates: Vec<MethodScore>,
    pub gbdt: Option<GbdtLog>,
}

/// A trained, calibrated failure model.
#[derive(Debug, Clone)]
pub struct Model {
    label: String,
    features: Vec<Feature>,
    estimator: Estimator,
    calibration: Platt,
    summary: TrainSummary,
}

#[derive(Serialize, Deserialize)]
struct ModelFile {
    format: String,
    version: u32,
    label: String,
    features: Vec<Feature>,
    calibration: Platt,
    estimator: Estimator,
    summary: TrainSummary,
}

/// One explained prediction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// The calibrated probability of failure.
    pub probability: Unit,
    /// The calibrated log-odds when nothing is known about the row.
    pub base_value: f64,
    /// Every feature's contribution to the calibrated log-odds, most toward failure first.
    /// `base_value` plus the contributions is the log-odds of `probability`.
    pub contributing_factors: Vec<(String, f64)>,
}

/// Predictions for a frame, and the model's features the frame lacked (treated as missing).
#[derive(Debug, Clone)]
pub struct FramePredictions {
    pub predictions: Vec<Prediction>,
    pub absent_columns: Vec<String>,
}

/// Scores of a model on a labelled frame.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Evaluation {
    pub source: String,
    pub model: Scores,
    /// Scores of the true probability, when the frame carries `_p`.
    pub oracle: Option<Scores>,
    /// `(AUC − 0.5) / (AUC of _p − 0.5)`.
    pub auc_ratio: Option<f64>,
    /// The model's Brier score over the oracle's.
    pub brier_ratio: Option<f64>,
    pub absent_columns: Vec<String>,
}

/// A row for training from memory: feature values by column name, and whether it failed.
#[derive(Debug, Clone)]
pub struct TrainingRow {
    pub features: HashMap<String, FeatureValue>,
    pub failed: bool,
}

impl Model {
    /// Trains from in-memory rows (the server's store). The label column is `opts.label`.
    pub fn train_rows(rows: &[TrainingRow], opts: &TrainOptions) -> Result<Model, PredictError> {
        let maps: Vec<HashMap<String, FeatureValue>> = rows
            .iter()
            .map(|r| {
                let mut m = r.features.clone();
                m.insert(
                    opts.label.clone(),
                    FeatureValue::Number(r.failed as u8 as f64),
                );
                m
            })
            .collect();
        let frame = Frame::from_rows("training rows", &maps)?;
        Model::train(&frame, opts)
    }

    /// Trains on a frame holding features and the label column.
    pub fn train(frame: &Frame, opts: &TrainOptions) -> Result<Model, PredictError> {
        let src = || frame.source().to_string();
        let labels = frame.labels(&opts.label)?;
        let failures = labels.iter().filter(|v| **v).count();
        if failures == 0 || failures == labels.len() {
            return Err(PredictError::OneClass {
                source_name: src(),
                label: opts.label.clone(),
                class: if failures == 0 { "success" } else { "failure" },
                rows: labels.len(),
            });
        }
        if labels.len() < MIN_TRAINING_ROWS {
            return Err(PredictError::TooFewRows {
                source_name: src(),
                rows: labels.len(),
                needed: MIN_TRAINING_ROWS,
            });
        }
        if !(opts.holdout > 0.0 && opts.holdout < 0.9) {
            return Err(PredictError::BadParameter(
                "holdout must be in (0, 0.9)".into(),
            ));
        }
        let schema = SchemaOptions {
            label: opts.label.clone(),
            ignore: opts.ignore.clone(),
            min_category_rows: opts.min_category_rows,
        };
        let (features, skipped) = infer_features(frame, &schema)?;
        let (all, _) = prepare_frame(&features, frame)?;

        // A stratified split, so both parts see failures.
        let mut rng = crate::rng::seeded(opts.seed);
        let mut pos: Vec<usize> = (0..labels.len()).filter(|&i| labels[i]).collect();
        let mut neg: Vec<usize> = (0..labels.len()).filter(|&i| !labels[i]).collect();
        rng.shuffle(&mut pos);
        rng.shuffle(&mut neg);
        let take =
            |v: &[usize]| ((v.len() as f64 * opts.holdout).round() as usize).clamp(1, v.len() - 1);
        let (hp, hn) = (take(&pos), take(&neg));
        let mut hold: Vec<usize> = pos[..hp].iter().chain(&neg[..hn]).copied().collect();
        let mut fit: Vec<usize> = pos[hp..].iter().chain(&neg[hn..]).copied().collect();
        hold.sort_unstable();
        fit.sort_unstable();
        let pick = |rows: &[usize]| {
            let nf = all.features;
            let mut values = Vec::with_capacity(rows.len() * nf);
            for &r in rows {
                values.extend_from_slice(all.row(r));
            }
            (
                Prepared {
                    features: nf,
                    values,
                },
                rows.iter().map(|&r| labels[r]).collect::<Vec<bool>>(),
            )
        };
        let (fx, fy) = pick(&fit);
        let (hx, hy) = pick(&hold);

        let mut candidates = Vec::new();
        let mut gbdt_log = None;
        let mut fitted: Vec<(Estimator, Platt, MethodScore)> = Vec::new();
        let methods = match opts.method {
            Some(m) => vec![m],
            None => vec![Method::Gbdt, Method::Logistic],
        };
        for method in methods {
            let est = match method {
                Method::Gbdt => {
                    let (g, log) = gbdt::train(&features, (&fx, &fy), (&hx, &hy), &opts.gbdt)?;
                    gbdt_log = Some(log);
                    Estimator::Gbdt(g)
                }
                Method::Logistic => {
                    Estimator::Logistic(Logistic::fit(&features, &fx, &fy, opts.logistic_l2))
                }
            };
            let margins: Vec<f64> = (0..hx.rows()).map(|i| est.margin(hx.row(i))).collect();
            let platt = Platt::fit(&margins, &hy);
            let probs: Vec<f64> = margins.iter().map(|m| platt.probability(*m)).collect();
            let s = metrics::score(&probs, &hy);
            let score = MethodScore {
                method,
                roc_auc: s.roc_auc,
                brier: s.brier,
                log_loss: s.log_loss,
                calibration_error: s.calibration_error,
            };
            candidates.push(score.clone());
            fitted.push((est, platt, score));
        }
        let (estimator, calibration, _) = fitted
            .into_iter()
            .min_by(|a, b| a.2.log_loss.total_cmp(&b.2.log_loss))
            .expect("at least one method was fitted");
        let summary = TrainSummary {
            source: frame.source().to_string(),
            rows: labels.len(),
            failures,
            train_rows: fit.len(),
            holdout_rows: hold.len(),
            skipped,
            chosen: estimator.method(),
            candidates,
            gbdt: gbdt_log,
        };
        Ok(Model {
            label: opts.label.clone(),
            features,
            estimator,
            calibration,
            summary,
        })
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn features(&self) -> &[Feature] {
        &self.features
    }

    pub fn summary(&self) -> &TrainSummary {
        &self.summary
    }

    pub fn method(&self) -> Method {
        self.estimator.method()
    }

    pub fn calibration(&self) -> Platt {
        self.calibration
    }

    /// The raw (uncalibrated) log-odds for a prepared row.
    pub fn margin_prepared(&self, x: &[f64]) -> f64 {
        self.estimator.margin(x)
    }

    /// The calibrated probability for a prepared row.
    #[inline]
    pub fn probability_prepared(&self, x: &[f64]) -> f64 {
        self.calibration.probability(self.estimator.margin(x))
    }

    /// Raw contributions (log-odds, before calibration) and the raw base value, for a prepared
    /// row. Their sum is [`Model::margin_prepared`].
    pub fn raw_contributions(&self, x: &[f64], phi: &mut [f64], buf: &mut ShapBuffer) -> f64 {
        self.estimator.contributions(x, phi, buf);
        self.estimator.expected_margin()
    }

    fn explain_prepared(
        &self,
        x: &[f64],
        base: f64,
        phi: &mut [f64],
        buf: &mut ShapBuffer,
    ) -> Prediction {
        self.estimator.contributions(x, phi, buf);
        let slope = self.calibration.slope;
        let mut factors: Vec<(String, f64)> = self
            .features
            .iter()
            .zip(phi.iter())
            .map(|(f, p)| (f.name.clone(), slope * p))
            .collect();
        factors.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Prediction {
            probability: Unit::saturating(self.probability_prepared(x)),
            base_value: self.calibration.logit(base),
            contributing_factors: factors,
        }
    }

    /// Predicts one row given by column name. Absent columns are missing; categories never
    /// seen in training are "other".
    pub fn predict_row(
        &self,
        row: &HashMap<String, FeatureValue>,
    ) -> Result<Prediction, PredictError> {
        let x = prepare_row(&self.features, row)?;
        let mut phi = vec![0.0; self.features.len()];
        Ok(self.explain_prepared(
            &x,
            self.estimator.expected_margin(),
            &mut phi,
            &mut ShapBuffer::default(),
        ))
    }

    /// Prepares the rows of a frame for this model.
    pub fn prepare(&self, frame: &Frame) -> Result<(Prepared, Vec<String>), PredictError> {
        prepare_frame(&self.features, frame)
    }

    /// Calibrated probabilities only (the fast path).
    pub fn probabilities(&self, frame: &Frame) -> Result<(Vec<f64>, Vec<String>), PredictError> {
        let (x, absent) = self.prepare(frame)?;
        Ok((self.probabilities_prepared(&x), absent))
    }

    /// Calibrated probabilities of prepared rows.
    pub fn probabilities_prepared(&self, x: &Prepared) -> Vec<f64> {
        let mut out = vec![0.0; x.rows()];
        match &self.estimator {
            Estimator::Gbdt(g) => g.margins(x, &mut out),
            Estimator::Logistic(l) => out
                .iter_mut()
                .enumerate()
                .for_each(|(i, m)| *m = l.margin(x.row(i))),
        }
        out.iter_mut()
            .for_each(|m| *m = self.calibration.probability(*m));
        out
    }

    /// Explained predictions for every row of a frame.
    pub fn predict_frame(&self, frame: &Frame) -> Result<FramePredictions, PredictError> {
        let (x, absent_columns) = self.prepare(frame)?;
        let base = self.estimator.expected_margin();
        let mut phi = vec![0.0; self.features.len()];
        let mut buf = ShapBuffer::default();
        let predictions = (0..x.rows())
            .map(|i| self.explain_prepared(x.row(i), base, &mut phi, &mut buf))
            .collect();
        Ok(FramePredictions {
            predictions,
            absent_columns,
        })
    }

    /// Scores the model on a frame with the label column (and, if present, `_p`).
    pub fn evaluate(&self, frame: &Frame) -> Result<Evaluation, PredictError> {
        let y = frame.labels(&self.label)?;
        let (p, absent_columns) = self.probabilities(frame)?;
        let model = metrics::score(&p, &y);
        let oracle_p: Option<Vec<f64>> = frame.column("_p").and_then(|c| {
            c.iter()
                .map(|v| match v {
                    FeatureValue::Number(x) if (0.0..=1.0).contains(x) => Some(*x),
                    _ => None,
                })
                .collect()
        });
        let oracle = oracle_p.map(|op| metrics::score(&op, &y));
        let auc_ratio = match (&oracle, model.roc_auc) {
            (Some(o), Some(a)) => o
                .roc_auc
                .filter(|oa| *oa > 0.5)
                .map(|oa| (a - 0.5) / (oa - 0.5)),
            _ => None,
        };
        let brier_ratio = oracle
            .as_ref()
            .filter(|o| o.brier > 0.0)
            .map(|o| model.brier / o.brier);
        Ok(Evaluation {
            source: frame.source().to_string(),
            model,
            oracle,
            auc_ratio,
            brier_ratio,
            absent_columns,
        })
    }

    /// Writes the model as JSON.
    pub fn write<W: Write>(&self, w: W, target: &str) -> Result<(), PredictError> {
        let file = ModelFile {
            format: FORMAT.to_string(),
            version: VERSION,
            label: self.label.clone(),
            features: self.features.clone(),
            calibration: self.calibration,
            estimator: self.estimator.clone(),
            summary: self.summary.clone(),
        };
        serde_json::to_writer(w, &file).map_err(|e| PredictError::Write {
            target: target.to_string(),
            source: std::io::Error::other(e),
        })
    }

    /// Reads a model written by [`Model::write`], refusing other formats, other versions and
    /// damaged files.
    pub fn read<R: Read>(r: R, source: &str) -> Result<Model, PredictError> {
        let corrupt = |message: String| PredictError::CorruptModel {
            source_name: source.to_string(),
            message,
        };
        let value: serde_json::Value =
            serde_json::from_reader(r).map_err(|e| corrupt(e.to_string()))?;
        let format = value
            .get("format")
            .and_then(|f| f.as_str())
            .unwrap_or("(none)");
        if format != FORMAT {
            return Err(PredictError::WrongFormat {
                source_name: source.to_string(),
                found: format.to_string(),
                expected: FORMAT,
            });
        }
        match value.get("version").and_then(|v| v.as_u64()) {
            Some(v) if v == VERSION as u64 => {}
            Some(v) => {
                return Err(PredictError::WrongVersion {
                    source_name: source.to_string(),
                    found: v,
                    supported: VERSION,
                })
            }
            None => return Err(corrupt("no numeric `version` field".into())),
        }
        let mut file: ModelFile =
            serde_json::from_value(value).map_err(|e| corrupt(e.to_string()))?;
        let mut features = file.features;
        features.iter_mut().for_each(Feature::rebuild);
        if features.is_empty() {
            return Err(corrupt("the model has no features".into()));
        }
        match &file.estimator {
            Estimator::Gbdt(g) => {
                if g.trees.is_empty() {
                    return Err(corrupt("the model has no trees".into()));
                }
                for (i, t) in g.trees.iter().enumerate() {
                    t.check(features.len())
                        .map_err(|m| corrupt(format!("tree {i}: {m}")))?;
                }
            }
            Estimator::Logistic(l) => {
                if l.blocks.len() != features.len() {
                    return Err(corrupt(format!(
                        "{} weight blocks for {} features",
                        l.blocks.len(),
                        features.len()
                    )));
                }
            }
        }
        if let Estimator::Gbdt(g) = &mut file.estimator {
            g.compile();
        }
        if !(file.calibration.slope.is_finite() && file.calibration.intercept.is_finite()) {
            return Err(corrupt("the calibration is not finite".into()));
        }
        Ok(Model {
            label: file.label,
            features,
            estimator: file.estimator,
            calibration: file.calibration,
            summary: file.summary,
        })
    }
}

/// Formats the top `n` factors as `column=contribution` pairs joined by `;`.
pub fn format_factors(p: &Prediction, n: usize) -> String {
    p.contributing_factors
        .iter()
        .take(n)
        .map(|(c, v)| format!("{c}={v:+.4}"))
        .collect::<Vec<_>>()
        .join(";")
}

/// The calibrated log-odds of a probability (for checking explanations).
pub fn log_odds(p: f64) -> f64 {
    metrics::logit(p)
}

/// `sigmoid(base + Σ contributions)`, which equals the prediction's probability.
pub fn probability_from_factors(p: &Prediction) -> f64 {
    sigmoid(p.base_value + p.contributing_factors.iter().map(|(_, v)| v).sum::<f64>())
}
