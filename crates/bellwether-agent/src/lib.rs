//! The per-host agent: it collects the host profile and metric samples (through
//! `bellwether-drift`), enrols with the server, sends the profile when it changes and samples
//! every interval, backs off while the server is away and buffers a bounded number of samples
//! meanwhile.
//!
//! The agent runs only the actions the server sends (apply, revert, remediate, from a rollout
//! plan the server holds): [`actions`] long-polls for them and keeps a journal so none runs
//! twice, and [`exec`] carries each out (argv without a shell, or a built-in inside the rootfs).
//!
//! Pure parts, each unit-tested: [`buffer`] (the bounded queue), [`backoff`] (the reconnect
//! schedule), [`change`] (when a profile is news). [`agent`] is the loop, tested on tokio's
//! paused clock with fakes; [`transport`] and [`host`] are its real edges.

#![forbid(unsafe_code)]

pub mod actions;
pub mod agent;
pub mod backoff;
pub mod buffer;
pub mod change;
pub mod exec;
pub mod host;
pub mod pg;
pub mod scrape;
pub mod transport;

pub use agent::{Agent, Collected, Collector, Settings, Stats};
pub use backoff::{Backoff, BackoffPolicy};
pub use transport::{HttpTransport, SendError, Transport, TransportError};
