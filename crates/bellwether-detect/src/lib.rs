//! bellwether-detect: baselines, dynamic thresholds, online anomaly detectors and the canary
//! judge.
//!
//! Everything here is pure computation over values the caller hands in: the crate never opens a
//! file or a socket and never reads a clock. Timestamps come with the samples. That is what lets
//! the engines replay a decision from the event log, and what lets the tests feed observations
//! and assert the result.
//!
//! - [`threshold`]: the moving-average baseline, the ± percentage band, breaches that must last
//!   a configured time, and the combined severity score with its reasons.
#![forbid(unsafe_code)]

pub mod anomaly;
pub mod judge;
pub mod nab;
pub mod series;
pub mod stats;
pub mod threshold;
