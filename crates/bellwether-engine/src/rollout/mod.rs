//! Predictive canary rollouts across a fleet.

pub mod plan;
