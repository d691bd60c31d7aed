//! Predictive canary rollouts across a fleet, as a pure state machine.
//!
//! [`Rollout::start`] takes a validated [`plan::Plan`] and every host with its predicted failure
//! probability, selects the pilot by risk band, plans the waves and returns the first
//! [`Decision`]s. [`Rollout::step`] takes one [`Observation`] (a tick, an action's result, a
//! host's watch verdict or an operator command), each with its own timestamp, and returns what
//! to do next. Every decision is also an [`RolloutEvent`] with its reason and figures.
//!
//! The engine never does IO and never reads a clock: the server runs it, persists it (the whole
//! [`Rollout`] is serde-serialisable) after every step, and sends the [`Decision::Dispatch`]es
//! to agents. Action ids are allocated here and are part of the state, so a restarted server
//! re-sends [`Rollout::pending_dispatches`] and an agent that already ran an id reports its
//! stored result instead of running it twice.
//!
//! [`watch`] turns metric samples into the [`WatchVerdict`]s this machine consumes.

pub mod plan;
pub mod promql;
pub mod watch;

mod machine;

pub use machine::*;
