//! bellwether-predict: the failure-probability model.
//!
//! It turns deployment history (one row per deployment and host, with an outcome) into a
//! calibrated, explainable model: gradient-boosted trees with exact TreeSHAP contributions and
//! Platt calibration, chosen over a logistic-regression baseline by held-out log loss.
//!
//! This crate never opens files, sockets or clocks: histories come in through readers or as
//! in-memory rows, models go out through writers. The CLI and the server do the IO.
#![forbid(unsafe_code)]

pub mod calibrate;
pub mod error;
pub mod evidence;
pub mod features;
pub mod frame;
pub mod gbdt;
pub mod logistic;
pub mod metrics;
pub mod model;
pub mod rng;
pub mod shap;
pub mod synth;

pub use error::PredictError;
pub use features::{Feature, FeatureKind, SkipReason, SkippedColumn};
pub use frame::{FeatureValue, Frame};
pub use gbdt::GbdtParams;
pub use metrics::Scores;
pub use model::{
    format_factors, Evaluation, FramePredictions, Method, MethodScore, Model, PartScores,
    Prediction, TrainOptions, TrainSummary, TrainingRow, UnseenSplit,
};
