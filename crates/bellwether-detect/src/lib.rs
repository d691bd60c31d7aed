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
//! - [`anomaly`]: online single-series detectors (score in [0, 1] and an alert decision per
//!   point, bounded memory); `two-scale-entropy` is the default, chosen on NAB.
//! - [`changepoint`]: `seasonal-cusum`, built for deployment faults; [`faults`] generates and
//!   scores them; [`watch`] is `seasonal-entropy`, the two families with one decision.
//! - [`judge`]: the Kayenta-style canary judge (Mann-Whitney with a confidence interval for the
//!   shift, effect sizes, limits, weighted score out of 100).
//! - [`nab`]: the Numenta Anomaly Benchmark scorer used to choose and measure the detectors.
//! - [`series`]: CSV parsing of series and samples, with the file, line and column in errors.
//! - [`stats`]: the normal distribution, ranks and quantiles.
//!
//! docs/detect.md is the user guide, with the measurements behind the defaults.
#![forbid(unsafe_code)]

pub mod anomaly;
pub mod cad;
pub mod changepoint;
pub mod faults;
pub mod judge;
pub mod nab;
pub mod series;
pub mod stats;
pub mod threshold;
pub mod watch;
