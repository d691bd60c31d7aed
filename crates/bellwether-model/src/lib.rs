//! Shared types of Bellwether: host profiles, drift scores, metric samples and the
//! identifiers that every other crate speaks in.
//!
//! This crate does no IO and owns no behaviour beyond validation of its own invariants, so
//! that every other crate (and the JSON on the wire) agrees on one shape.

#![forbid(unsafe_code)]

pub mod action;
pub mod drift;
pub mod duration;
pub mod ids;
pub mod mirror;
pub mod profile;
pub mod rng;
pub mod sample;
pub mod shadow;
pub mod text;
pub mod wire;

pub use action::{ActionSpec, ActionSpecError};
pub use drift::{DriftCategory, DriftScore, Finding};
pub use duration::{Dur, DurationError};
pub use ids::{HostName, HostNameError};
pub use profile::HostProfile;
pub use sample::MetricSample;

/// A value in the closed interval [0, 1].
///
/// Scores, probabilities and ratios are carried as `Unit` so that a value outside the range
/// cannot be constructed by mistake.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default, serde::Serialize)]
#[serde(transparent)]
pub struct Unit(f64);

impl Unit {
    pub const ZERO: Unit = Unit(0.0);
    pub const ONE: Unit = Unit(1.0);

    /// Clamps `v` into [0, 1]; NaN becomes 0.
    pub fn saturating(v: f64) -> Unit {
        if v.is_nan() {
            Unit(0.0)
        } else {
            Unit(v.clamp(0.0, 1.0))
        }
    }

    /// Returns `None` when `v` is outside [0, 1] or NaN.
    pub fn new(v: f64) -> Option<Unit> {
        (0.0..=1.0).contains(&v).then_some(Unit(v))
    }

    pub fn get(self) -> f64 {
        self.0
    }
}

impl<'de> serde::Deserialize<'de> for Unit {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        Unit::new(v).ok_or_else(|| {
            serde::de::Error::custom(format!("value {v} is outside the range [0, 1]"))
        })
    }
}

impl std::fmt::Display for Unit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.3}", self.0)
    }
}
