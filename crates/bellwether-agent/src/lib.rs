//! The per-host agent: it collects the host profile and metric samples (through
//! `bellwether-drift`), enrols with the server, sends the profile when it changes and samples
//! every interval, backs off while the server is away and buffers a bounded number of samples
//! meanwhile.
//!
//! The agent never runs anything on its host. Actions (apply, revert, remediate) will only ever
//! come from a plan the server holds; until that exists, the agent is a reporter.
//!
//! Pure parts, each unit-tested: [`buffer`] (the bounded queue), [`backoff`] (the reconnect
//! schedule), [`change`] (when a profile is news). [`agent`] is the loop, tested on tokio's
//! paused clock with fakes; [`transport`] and [`host`] are its real edges.

#![forbid(unsafe_code)]

pub mod agent;
pub mod backoff;
pub mod buffer;
pub mod change;
pub mod host;
pub mod transport;

pub use agent::{Agent, Collected, Collector, Settings, Stats};
pub use backoff::{Backoff, BackoffPolicy};
pub use transport::{HttpTransport, SendError, Transport, TransportError};
