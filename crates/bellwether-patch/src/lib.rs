//! What is IO around the pure patch engine (`bellwether_engine::patch`), shared by the CLI's
//! one-machine mode and the agent.
//!
//! - [`process`]: start an instance, stop it, and sample a process tree from `/proc`. Light on
//!   purpose (no proxy, no HTTP): the agent links it for its `start_process`, `stop_process`
//!   and `sample_processes` built-ins.
//! - [`local`] (feature `local`, on by default): the one-machine runner, with the proxy
//!   in-process, local processes, webhooks and the report file.

pub mod process;

#[cfg(feature = "local")]
pub mod local;
