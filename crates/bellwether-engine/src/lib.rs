//! bellwether-engine: the decision state machines of the kinds of change.
//!
//! Engines are pure: they take their state plus an observation (with its own timestamp) and
//! return actions and events. They never open a file or a socket and never read a clock, so
//! every decision is unit-testable and replayable from the event log. The IO loops that carry
//! the actions out live in the binary and the proxy.
#![forbid(unsafe_code)]

pub mod alerts;
pub mod config;
pub mod mirror;
pub mod patch;
pub mod rollout;
pub mod shadow;
pub mod yaml;
