//! The model: features, a fitted estimator, a calibration, and how it was chosen.
//!
//! Training fits both estimators (boosted trees and the logistic baseline), calibrates each on
//! margins of rows it did not train on, and keeps the one with the lower held-out log loss. The
//! trees are fitted once per part of the history ([`TrainOptions::folds`]), each stopped early
//! on its own held-out part, and averaged. The model file is JSON with a format name and a
//! version; anything else is refused.

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
use crate::gbdt::{self, Gbdt, GbdtLog, GbdtParams, Node, Tree};
use crate::logistic::Logistic;
use crate::metrics::{self, sigmoid, Scores};
use crate::shap::{tree_shap_with_depth, ShapBuffer};

/// The `format` field of every model file.
pub const FORMAT: &str = "bellwether-predict-model";
/// The model file version this build writes and reads.
pub const VERSION: u32 = 1;
/// Fewer rows than this cannot be split into training and held-out parts usefully.
pub const MIN_TRAINING_ROWS: usize = 20;

/// Tree models fitted by default (see [`TrainOptions::folds`]): one, at 0.12 with trees of 4
/// leaves (8 leaves at 0.1 until issue 10's calibration on new categories). Four (`--folds 4`: each on three quarters of the history, learning at 0.5 with trees
/// of 4 leaves, [`GbdtParams::for_folds`], averaged and calibrated on every row's out-of-fold
/// margin) are closer to the true probability on rows with new categories and cost about the
/// same (issue 10, BENCHMARKS.md), but as the default they put a host the history marks as
/// risky at p 0.499, below the quickstart's `high: 0.5`, after the retrain on rollout 1's
/// outcomes (`rollout_e2e::quickstart_tells_the_whole_story`), so they are not the default yet.
pub const FOLDS: usize = 1;

fn one() -> usize {
    1
}

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
    /// Tree models to fit, each holding out its own part (1/`folds`) of the rows for early
    /// stopping; their mean is the model and the calibration is fitted on every row's margin
    /// from the model that did not train on it. With 1, one model holds out `holdout`.
    pub folds: usize,
    /// A category needs this many rows to get its own code.
    pub min_category_rows: usize,
    pub seed: u64,
}

impl TrainOptions {
    /// The default options for a model that is the mean of `folds` fits, with the tree
    /// parameters that go with that many ([`GbdtParams::for_folds`]).
    pub fn with_folds(folds: usize) -> TrainOptions {
        TrainOptions {
            gbdt: GbdtParams::for_folds(folds),
            folds,
            ..TrainOptions::default()
        }
    }
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
            folds: FOLDS,
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

    /// The margin with the features in `unknown` averaged over the training rows: at a split
    /// on such a feature the trees take both branches, weighted by their cover (the rows
    /// training sent each way); the logistic baseline drops their contributions, which puts
    /// them at their training mean.
    fn margin_marginal(&self, x: &[f64], unknown: &[bool]) -> f64 {
        match self {
            Estimator::Gbdt(g) => {
                g.init
                    + g.trees
                        .iter()
                        .map(|t| marginal_value(t, 0, x, unknown))
                        .sum::<f64>()
            }
            Estimator::Logistic(l) => {
                let mut phi = vec![0.0; x.len()];
                l.contributions(x, &mut phi);
                l.margin(x)
                    - phi
                        .iter()
                        .zip(unknown)
                        .filter(|(_, u)| **u)
                        .map(|(p, _)| p)
                        .sum::<f64>()
            }
        }
    }

    /// Contributions with the features in `unknown` averaged over the training rows: they get
    /// zero, and the others are the exact Shapley values of the averaged model (the trees are
    /// rewritten without their splits on unknown features; see [`split_unknown`]).
    fn contributions_marginal(
        &self,
        x: &[f64],
        unknown: &[bool],
        phi: &mut [f64],
        buf: &mut ShapBuffer,
    ) {
        phi.iter_mut().for_each(|p| *p = 0.0);
        match self {
            Estimator::Gbdt(g) => {
                let mut parts = Vec::new();
                for t in &g.trees {
                    parts.clear();
                    split_unknown(t, unknown, 1.0, &mut parts);
                    for p in &parts {
                        tree_shap_with_depth(p, p.depth(), x, phi, buf);
                    }
                }
            }
            Estimator::Logistic(l) => {
                l.contributions(x, phi);
                for (p, u) in phi.iter_mut().zip(unknown) {
                    if *u {
                        *p = 0.0;
                    }
                }
            }
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
    /// Rows the first tree model (and the logistic baseline) was fitted on.
    pub train_rows: usize,
    /// Rows the first tree model held out (and the methods were compared on); with more than
    /// one fold, each model fitted on `train_rows` rows and held out the rest.
    pub holdout_rows: usize,
    /// How many tree models were fitted, each holding out its own part of the rows; the
    /// model is their mean. Files of older builds had one.
    #[serde(default = "one")]
    pub folds: usize,
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
    /// Whether values training never learnt are averaged over the training rows (the default)
    /// or routed as the trees happened to route their empty codes (the behaviour before; kept
    /// for `bellwether bench model` to measure the difference).
    average_unknown: bool,
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
    /// The rows split by whether they hold a value training never saw (a new category, a
    /// missing cell where training had none): scores on each part, so that calibration on
    /// unseen categories is visible apart from the rest. Absent in output of older builds.
    #[serde(default)]
    pub unseen_split: Option<UnseenSplit>,
}

/// Scores on the rows holding a value training never saw, and on the others.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnseenSplit {
    /// Rows with at least one such value (for example a category that is not in the model).
    pub unseen: Option<PartScores>,
    /// The other rows.
    pub seen: Option<PartScores>,
    /// For each feature with such values, how many rows hold one.
    pub unseen_by_feature: Vec<(String, usize)>,
}

/// Scores on a part of the rows; `None` parts had no rows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartScores {
    pub model: Scores,
    pub oracle: Option<Scores>,
    /// The model's Brier score over the oracle's on these rows.
    pub brier_ratio: Option<f64>,
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

        // Stratified parts, so every part sees failures. With one fold, `hold` is a share
        // `holdout` of the rows; with k folds, the rows are dealt into k parts and each part
        // is held out by one of k tree models.
        let mut rng = crate::rng::seeded(opts.seed);
        let mut pos: Vec<usize> = (0..labels.len()).filter(|&i| labels[i]).collect();
        let mut neg: Vec<usize> = (0..labels.len()).filter(|&i| !labels[i]).collect();
        rng.shuffle(&mut pos);
        rng.shuffle(&mut neg);
        let folds = opts.folds.clamp(1, pos.len().min(neg.len()).max(1));
        let holds: Vec<Vec<usize>> = if folds == 1 {
            let take = |v: &[usize]| {
                // At least one row of each class on each side when there are two.
                ((v.len() as f64 * opts.holdout).round() as usize)
                    .max(1)
                    .min(v.len() - 1)
            };
            let (hp, hn) = (take(&pos), take(&neg));
            vec![pos[..hp].iter().chain(&neg[..hn]).copied().collect()]
        } else {
            let mut parts = vec![Vec::new(); folds];
            for (i, &r) in pos.iter().chain(&neg).enumerate() {
                parts[i % folds].push(r);
            }
            parts
        };
        let split = |hold: &[usize]| {
            let mut held = vec![false; labels.len()];
            hold.iter().for_each(|&r| held[r] = true);
            let fit: Vec<usize> = (0..labels.len()).filter(|&r| !held[r]).collect();
            let mut hold = hold.to_vec();
            hold.sort_unstable();
            (fit, hold)
        };
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
        let held_margins = |est: &Estimator, hx: &Prepared| -> Vec<f64> {
            (0..hx.rows())
                .map(|i| {
                    let x = hx.row(i);
                    match unknown_in(&features, x) {
                        None => est.margin(x),
                        Some(u) => est.margin_marginal(x, &u),
                    }
                })
                .collect()
        };
        // Methods are compared on the first part's held-out rows.
        let (fit0, hold0) = split(&holds[0]);
        let hy0: Vec<bool> = hold0.iter().map(|&r| labels[r]).collect();

        let mut candidates = Vec::new();
        let mut gbdt_log = None;
        let mut fitted: Vec<(Estimator, Platt, MethodScore)> = Vec::new();
        let methods = match opts.method {
            Some(m) => vec![m],
            None => vec![Method::Gbdt, Method::Logistic],
        };
        for method in methods {
            // Margins of rows the model that scores them did not train on, with calibration
            // fitted on them; `first` holds those of the first part.
            let (est, platt, first) = match method {
                Method::Gbdt => {
                    let mut init = 0.0;
                    let mut trees = Vec::new();
                    let mut margins = Vec::with_capacity(labels.len());
                    let mut ys = Vec::with_capacity(labels.len());
                    let mut first = Vec::new();
                    let mut log = GbdtLog {
                        rounds_trained: 0,
                        best_rounds: 0,
                        valid_log_loss: 0.0,
                    };
                    for (k, hold) in holds.iter().enumerate() {
                        let (fit, hold) = split(hold);
                        let (fx, fy) = pick(&fit);
                        let (hx, hy) = pick(&hold);
                        let params = GbdtParams {
                            seed: opts.gbdt.seed.wrapping_add(k as u64),
                            ..opts.gbdt.clone()
                        };
                        let (g, l) = gbdt::train(&features, (&fx, &fy), (&hx, &hy), &params)?;
                        let est = Estimator::Gbdt(g);
                        let m = held_margins(&est, &hx);
                        if k == 0 {
                            first = m.clone();
                        }
                        margins.extend(m);
                        ys.extend(hy);
                        log.rounds_trained += l.rounds_trained;
                        log.best_rounds += l.best_rounds;
                        log.valid_log_loss += l.valid_log_loss * hold.len() as f64;
                        let Estimator::Gbdt(g) = est else {
                            unreachable!("a tree model was fitted")
                        };
                        init += g.init;
                        trees.extend(g.trees);
                    }
                    // The model is the mean of the parts' models: a sum of their trees, each
                    // leaf divided by the number of parts, so explanations stay exact.
                    let scale = 1.0 / holds.len() as f64;
                    for t in &mut trees {
                        t.scale_leaves(scale);
                    }
                    log.valid_log_loss /= ys.len() as f64;
                    gbdt_log = Some(log);
                    let platt = Platt::fit(&margins, &ys);
                    (
                        Estimator::Gbdt(Gbdt::new(init * scale, trees)),
                        platt,
                        first,
                    )
                }
                Method::Logistic => {
                    let (fx, fy) = pick(&fit0);
                    let (hx, hy) = pick(&hold0);
                    let est =
                        Estimator::Logistic(Logistic::fit(&features, &fx, &fy, opts.logistic_l2));
                    let m = held_margins(&est, &hx);
                    let platt = Platt::fit(&m, &hy);
                    (est, platt, m)
                }
            };
            let probs: Vec<f64> = first.iter().map(|m| platt.probability(*m)).collect();
            let s = metrics::score(&probs, &hy0);
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
            train_rows: fit0.len(),
            holdout_rows: hold0.len(),
            folds: holds.len(),
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
            average_unknown: true,
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

    /// Which features of a prepared row hold a value training never learnt (see
    /// [`Feature::is_unknown`]); `None` when there is none, the common case.
    pub fn unknown_features(&self, x: &[f64]) -> Option<Vec<bool>> {
        if !self.average_unknown {
            return None;
        }
        unknown_in(&self.features, x)
    }

    /// Turns the averaging of values training never learnt on (the default) or off (route
    /// them down the branch the trees gave their empty code, as models did before). For
    /// measuring the difference; predictions should keep the default.
    pub fn set_average_unknown(&mut self, on: bool) {
        self.average_unknown = on;
    }

    /// The raw (uncalibrated) log-odds for a prepared row. Features holding a value training
    /// never learnt are averaged over the training rows.
    pub fn margin_prepared(&self, x: &[f64]) -> f64 {
        match self.unknown_features(x) {
            None => self.estimator.margin(x),
            Some(u) => self.estimator.margin_marginal(x, &u),
        }
    }

    /// The calibrated probability for a prepared row.
    #[inline]
    pub fn probability_prepared(&self, x: &[f64]) -> f64 {
        self.calibration.probability(self.margin_prepared(x))
    }

    /// Raw contributions (log-odds, before calibration) and the raw base value, for a prepared
    /// row. Their sum is [`Model::margin_prepared`].
    pub fn raw_contributions(&self, x: &[f64], phi: &mut [f64], buf: &mut ShapBuffer) -> f64 {
        match self.unknown_features(x) {
            None => self.estimator.contributions(x, phi, buf),
            Some(u) => self.estimator.contributions_marginal(x, &u, phi, buf),
        }
        self.estimator.expected_margin()
    }

    fn explain_prepared(
        &self,
        x: &[f64],
        base: f64,
        phi: &mut [f64],
        buf: &mut ShapBuffer,
    ) -> Prediction {
        let margin = match self.unknown_features(x) {
            None => {
                self.estimator.contributions(x, phi, buf);
                self.estimator.margin(x)
            }
            Some(u) => {
                self.estimator.contributions_marginal(x, &u, phi, buf);
                self.estimator.margin_marginal(x, &u)
            }
        };
        let slope = self.calibration.slope;
        let mut factors: Vec<(String, f64)> = self
            .features
            .iter()
            .zip(phi.iter())
            .map(|(f, p)| (f.name.clone(), slope * p))
            .collect();
        factors.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Prediction {
            probability: Unit::saturating(self.calibration.probability(margin)),
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
        if self.average_unknown && self.features.iter().any(Feature::can_be_unknown) {
            for (i, m) in out.iter_mut().enumerate() {
                if let Some(u) = self.unknown_features(x.row(i)) {
                    *m = self.estimator.margin_marginal(x.row(i), &u);
                }
            }
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
        let (x, absent_columns) = self.prepare(frame)?;
        let p = self.probabilities_prepared(&x);
        let model = metrics::score(&p, &y);
        let oracle_p: Option<Vec<f64>> = frame.column("_p").and_then(|c| {
            c.iter()
                .map(|v| match v {
                    FeatureValue::Number(x) if (0.0..=1.0).contains(x) => Some(*x),
                    _ => None,
                })
                .collect()
        });
        let oracle = oracle_p.as_ref().map(|op| metrics::score(op, &y));
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
            unseen_split: Some(self.unseen_split(&x, &p, &y, oracle_p.as_deref())),
        })
    }

    /// Scores the rows holding a value training never saw apart from the others.
    fn unseen_split(
        &self,
        x: &Prepared,
        p: &[f64],
        y: &[bool],
        oracle: Option<&[f64]>,
    ) -> UnseenSplit {
        let mut by_feature = vec![0usize; self.features.len()];
        let mut unseen_rows = Vec::new();
        let mut seen_rows = Vec::new();
        for i in 0..x.rows() {
            let mut any = false;
            for (j, (f, &v)) in self.features.iter().zip(x.row(i)).enumerate() {
                if f.is_unknown(v) {
                    by_feature[j] += 1;
                    any = true;
                }
            }
            if any {
                unseen_rows.push(i);
            } else {
                seen_rows.push(i);
            }
        }
        let part = |rows: &[usize]| -> Option<PartScores> {
            if rows.is_empty() {
                return None;
            }
            let take = |v: &[f64]| rows.iter().map(|&i| v[i]).collect::<Vec<f64>>();
            let ys: Vec<bool> = rows.iter().map(|&i| y[i]).collect();
            let model = metrics::score(&take(p), &ys);
            let oracle = oracle.map(|o| metrics::score(&take(o), &ys));
            let brier_ratio = oracle
                .as_ref()
                .filter(|o| o.brier > 0.0)
                .map(|o| model.brier / o.brier);
            Some(PartScores {
                model,
                oracle,
                brier_ratio,
            })
        };
        UnseenSplit {
            unseen: part(&unseen_rows),
            seen: part(&seen_rows),
            unseen_by_feature: self
                .features
                .iter()
                .zip(by_feature)
                .filter(|(_, n)| *n > 0)
                .map(|(f, n)| (f.name.clone(), n))
                .collect(),
        }
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
            average_unknown: true,
        })
    }
}

fn unknown_in(features: &[Feature], x: &[f64]) -> Option<Vec<bool>> {
    let any = features.iter().zip(x).any(|(f, &v)| f.is_unknown(v));
    any.then(|| {
        features
            .iter()
            .zip(x)
            .map(|(f, &v)| f.is_unknown(v))
            .collect()
    })
}

/// A tree's output with the features in `unknown` averaged over the training rows: at a split
/// on an unknown feature, both children weighted by their cover.
fn marginal_value(t: &Tree, i: usize, x: &[f64], unknown: &[bool]) -> f64 {
    match &t.nodes[i] {
        Node::Leaf { value, .. } => *value,
        Node::Split {
            feature,
            rule,
            left,
            right,
            cover,
        } => {
            let f = *feature as usize;
            let (l, r) = (*left as usize, *right as usize);
            if unknown[f] {
                (t.nodes[l].cover() * marginal_value(t, l, x, unknown)
                    + t.nodes[r].cover() * marginal_value(t, r, x, unknown))
                    / cover
            } else if rule.goes_left(x[f]) {
                marginal_value(t, l, x, unknown)
            } else {
                marginal_value(t, r, x, unknown)
            }
        }
    }
}

/// Rewrites `t` (its leaves scaled by `scale`) as a sum of trees without splits on the
/// features in `unknown`, pushed to `out`. A split on an unknown feature is replaced by its
/// left child in one copy and by its right child in another, each copy's leaves scaled by the
/// child's share of the split's cover, and the kept child's covers scaled up to the split's,
/// so every cover-weighted average above it is unchanged. The sum of the copies equals
/// [`marginal_value`] on every row, and their expected values sum to the tree's, so TreeSHAP on
/// the copies gives exact contributions of the averaged tree (zero for unknown features).
fn split_unknown(t: &Tree, unknown: &[bool], scale: f64, out: &mut Vec<Tree>) {
    let at = t
        .nodes
        .iter()
        .position(|n| matches!(n, Node::Split { feature, .. } if unknown[*feature as usize]));
    let Some(n) = at else {
        let mut t = t.clone();
        if scale != 1.0 {
            for node in &mut t.nodes {
                if let Node::Leaf { value, .. } = node {
                    *value *= scale;
                }
            }
        }
        out.push(t);
        return;
    };
    let Node::Split {
        left, right, cover, ..
    } = t.nodes[n]
    else {
        unreachable!("position found a split")
    };
    for child in [left as usize, right as usize] {
        let share = t.nodes[child].cover() / cover;
        if share > 0.0 {
            let mut nodes = vec![Node::Leaf {
                value: 0.0,
                cover: 0.0,
            }];
            copy_replacing(
                t,
                0,
                0,
                n,
                child,
                cover / t.nodes[child].cover(),
                false,
                &mut nodes,
            );
            split_unknown(&Tree { nodes }, unknown, scale * share, out);
        }
    }
}

/// Copies the subtree of `t` at `i` into slot `at` of `nodes`, with node `n` replaced by its
/// child `child`, whose covers are multiplied by `grow`.
#[allow(clippy::too_many_arguments)]
fn copy_replacing(
    t: &Tree,
    i: usize,
    at: usize,
    n: usize,
    child: usize,
    grow: f64,
    inside: bool,
    nodes: &mut Vec<Node>,
) {
    let (i, inside) = if i == n { (child, true) } else { (i, inside) };
    let k = if inside { grow } else { 1.0 };
    nodes[at] = match &t.nodes[i] {
        Node::Leaf { value, cover } => Node::Leaf {
            value: *value,
            cover: cover * k,
        },
        Node::Split {
            feature,
            rule,
            left,
            right,
            cover,
        } => {
            let slot = nodes.len();
            let blank = Node::Leaf {
                value: 0.0,
                cover: 0.0,
            };
            nodes.push(blank.clone());
            nodes.push(blank);
            copy_replacing(t, *left as usize, slot, n, child, grow, inside, nodes);
            copy_replacing(t, *right as usize, slot + 1, n, child, grow, inside, nodes);
            Node::Split {
                feature: *feature,
                rule: rule.clone(),
                left: slot as u32,
                right: slot as u32 + 1,
                cover: cover * k,
            }
        }
    };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shap::tree_shap;
    use crate::synth::{Shape, World};

    /// A model of one categorical feature (`os`: debian, rhel) and one tree: debian left
    /// (cover 30, −1), rhel right (cover 10, +1). "other" has no training rows; the tree's
    /// set sends it left, as training sends empty codes to the heavier side.
    fn tiny() -> Model {
        let csv = "os,outcome\n".to_string() + &"debian,0\n".repeat(30) + &"rhel,1\n".repeat(10);
        let frame = Frame::from_csv(csv.as_bytes(), "t.csv").unwrap();
        let schema = SchemaOptions {
            label: "outcome".into(),
            ignore: vec![],
            min_category_rows: 10,
        };
        let (features, _) = infer_features(&frame, &schema).unwrap();
        let debian = features[0]
            .prepare(&FeatureValue::Category("debian".into()))
            .unwrap();
        let mut left = [0u64; 4];
        left[0] = 1 << crate::features::CAT_OTHER | 1 << (debian as u64);
        let tree = Tree {
            nodes: vec![
                Node::Split {
                    feature: 0,
                    rule: crate::gbdt::Rule::Categorical { left },
                    left: 1,
                    right: 2,
                    cover: 40.0,
                },
                Node::Leaf {
                    value: -1.0,
                    cover: 30.0,
                },
                Node::Leaf {
                    value: 1.0,
                    cover: 10.0,
                },
            ],
        };
        let summary = TrainSummary {
            source: "t.csv".into(),
            rows: 40,
            failures: 10,
            train_rows: 40,
            holdout_rows: 0,
            folds: 1,
            skipped: vec![],
            chosen: Method::Gbdt,
            candidates: vec![],
            gbdt: None,
        };
        Model {
            label: "outcome".into(),
            features,
            estimator: Estimator::Gbdt(Gbdt::new(0.5, vec![tree])),
            calibration: Platt {
                slope: 2.0,
                intercept: -0.25,
            },
            summary,
            average_unknown: true,
        }
    }

    fn os(v: &str) -> HashMap<String, FeatureValue> {
        HashMap::from([("os".to_string(), FeatureValue::parse(v))])
    }

    #[test]
    fn tree_parameters_go_with_the_number_of_fits() {
        let d = TrainOptions::default();
        assert_eq!(d.folds, FOLDS);
        assert_eq!((d.gbdt.learning_rate, d.gbdt.max_leaves), (0.12, 4));
        let four = TrainOptions::with_folds(4);
        assert_eq!((four.gbdt.learning_rate, four.gbdt.max_leaves), (0.5, 4));
        let one = TrainOptions::with_folds(1);
        assert_eq!(one.folds, 1);
        assert_eq!((one.gbdt.learning_rate, one.gbdt.max_leaves), (0.12, 4));
        let three = TrainOptions::with_folds(3);
        assert_eq!((three.folds, three.gbdt.learning_rate), (3, 0.375));
        // The rate never leaves the range the learner accepts.
        let ten = TrainOptions::with_folds(10);
        assert_eq!(ten.gbdt.learning_rate, 1.0);
        for k in 1..=10 {
            TrainOptions::with_folds(k).gbdt.validate().unwrap();
        }
    }

    #[test]
    fn an_unseen_category_takes_the_cover_weighted_average_not_a_branch() {
        let mut m = tiny();
        let known = m.predict_row(&os("rhel")).unwrap();
        assert!((log_odds(known.probability.get()) - (2.0 * 1.5 - 0.25)).abs() < 1e-12);
        // Unseen: 0.5 + (30·(−1) + 10·1)/40 = 0.0 raw, −0.25 calibrated; its factor is 0 and
        // the base is the calibrated expected margin.
        let p = m.predict_row(&os("windows")).unwrap();
        assert!(
            (log_odds(p.probability.get()) - (-0.25)).abs() < 1e-12,
            "{p:?}"
        );
        assert_eq!(p.contributing_factors, vec![("os".to_string(), 0.0)]);
        assert!((p.base_value - (-0.25)).abs() < 1e-12);
        // A missing cell, which training never had, is unknown too.
        let empty = m.predict_row(&HashMap::new()).unwrap();
        assert_eq!(empty.probability, p.probability);
        // The fast path agrees with the explained one.
        let frame = Frame::from_csv("os\nwindows\nrhel\n".as_bytes(), "x.csv").unwrap();
        let (probs, _) = m.probabilities(&frame).unwrap();
        assert!((probs[0] - p.probability.get()).abs() < 1e-15);
        // Before: the unseen code followed the heavier branch, as debian.
        m.set_average_unknown(false);
        let routed = m.predict_row(&os("windows")).unwrap();
        assert!((log_odds(routed.probability.get()) - (2.0 * -0.5 - 0.25)).abs() < 1e-12);
    }

    #[test]
    fn the_trees_are_the_mean_of_one_fit_per_part_and_one_fold_is_the_single_split() {
        let world = World::new(
            2,
            &Shape {
                numeric: 4,
                categorical: 2,
                missing_rate: 0.1,
                base_rate: 0.2,
            },
        );
        let s = world.sample(3000, 1, 0.0);
        let train = |folds| {
            let opts = TrainOptions {
                method: Some(Method::Gbdt),
                folds,
                ..TrainOptions::default()
            };
            Model::train(&s.frame, &opts).unwrap()
        };
        let one = train(1);
        assert_eq!(one.summary.folds, 1);
        assert!((599..=601).contains(&one.summary.holdout_rows));
        assert_eq!(one.summary.train_rows + one.summary.holdout_rows, 3000);
        let three = train(3);
        assert_eq!(three.summary.folds, 3);
        assert_eq!(three.summary.holdout_rows, 1000);
        assert_eq!(three.summary.train_rows, 2000);
        let Estimator::Gbdt(g) = &three.estimator else {
            panic!("trees were asked for")
        };
        let log = three.summary.gbdt.as_ref().unwrap();
        assert_eq!(g.trees.len(), log.best_rounds);
        // Three fits of about the same size: the leaves are a third of a single fit's.
        let biggest = |g: &Gbdt| {
            g.trees
                .iter()
                .flat_map(|t| &t.nodes)
                .filter_map(|n| match n {
                    Node::Leaf { value, .. } => Some(value.abs()),
                    Node::Split { .. } => None,
                })
                .fold(0.0, f64::max)
        };
        let Estimator::Gbdt(g1) = &one.estimator else {
            panic!("trees were asked for")
        };
        assert!(
            biggest(g) < 0.6 * biggest(g1),
            "{} vs {}",
            biggest(g),
            biggest(g1)
        );
        // Both are calibrated and rank alike on new rows of the same world.
        let test = world.sample(3000, 2, 0.0);
        let (a, b) = (
            one.evaluate(&test.frame).unwrap(),
            three.evaluate(&test.frame).unwrap(),
        );
        assert!(b.model.calibration_error < 0.03, "{:?}", b.model);
        assert!(b.auc_ratio.unwrap() > a.auc_ratio.unwrap() - 0.02);
    }

    #[test]
    fn one_failure_in_the_history_trains() {
        let csv = "os,outcome\n".to_string() + &"debian,0\n".repeat(30) + "rhel,1\n";
        let frame = Frame::from_csv(csv.as_bytes(), "t.csv").unwrap();
        let model = Model::train(&frame, &TrainOptions::default()).unwrap();
        assert_eq!(model.summary.folds, 1);
        let p = model.predict_row(&os("debian")).unwrap();
        assert!(p.probability.get() < 0.5, "{p:?}");
    }

    #[test]
    fn trees_without_unknown_splits_add_up_to_the_averaged_tree_and_explain_it_exactly() {
        let world = World::new(
            6,
            &Shape {
                numeric: 4,
                categorical: 3,
                missing_rate: 0.1,
                base_rate: 0.2,
            },
        );
        let s = world.sample(3000, 1, 0.0);
        let opts = TrainOptions {
            method: Some(Method::Gbdt),
            ..TrainOptions::default()
        };
        let model = Model::train(&s.frame, &opts).unwrap();
        let Estimator::Gbdt(g) = &model.estimator else {
            panic!("trees were asked for")
        };
        let (x, _) = model.prepare(&s.frame).unwrap();
        let nf = model.features.len();
        let mut rng = crate::rng::seeded(9);
        let mut buf = ShapBuffer::default();
        let mut checked = 0;
        for i in 0..200 {
            let row = x.row(i);
            let unknown: Vec<bool> = (0..nf).map(|_| rng.unit() < 0.3).collect();
            for t in &g.trees {
                let mut parts = Vec::new();
                split_unknown(t, &unknown, 1.0, &mut parts);
                let sum: f64 = parts.iter().map(|p| p.predict(row)).sum();
                let want = marginal_value(t, 0, row, &unknown);
                assert!((sum - want).abs() < 1e-12, "{sum} vs {want}");
                let e: f64 = parts.iter().map(Tree::expected_value).sum();
                assert!((e - t.expected_value()).abs() < 1e-12);
                for p in &parts {
                    p.check(nf).unwrap();
                    assert!(p.nodes.iter().all(|n| !matches!(n,
                        Node::Split { feature, .. } if unknown[*feature as usize])));
                }
                let mut phi = vec![0.0; nf];
                for p in &parts {
                    tree_shap(p, row, &mut phi, &mut buf);
                }
                assert!((phi.iter().sum::<f64>() + t.expected_value() - want).abs() < 1e-9);
                for (j, u) in unknown.iter().enumerate() {
                    if *u {
                        assert_eq!(phi[j], 0.0);
                    }
                }
                checked += 1;
            }
        }
        assert!(checked > 200);
    }
}
