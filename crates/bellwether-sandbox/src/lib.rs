//! A local Bellwether fleet on loopback, and the quickstart story told on it.
//!
//! `bellwether sandbox up` generates distinct host roots (from a seed, or from a scenario file:
//! [`scenario`]), then starts a server, one small versioned web service per host
//! ([`service`]), one agent per root and a TCP listener the hosts declare as their dependency —
//! all detached child processes of the `bellwether` executable ([`procs`]), recorded in
//! `DIR/state.json` ([`state`]) so that `status`, `drift` and `down` find them again from
//! another process. [`quickstart`] drives the whole story on such a fleet through the server's
//! API, with the server's own client ([`bellwether_server::client::Client`]).
//!
//! The binary parses the arguments and calls [`up`], [`status`], [`inject`], [`down`],
//! [`listen`], [`service::serve`] and [`quickstart::run`]. Errors are [`SandboxError`]: each
//! names the file, host, process or server call it is about.

use std::path::PathBuf;

use bellwether_server::client::ClientError;

// Every `print!` and `println!` of this crate goes through `bellwether_stdout`: a reader that
// closes the pipe (`… | head`) ends the command quietly instead of with a panic. These macros
// shadow std's; they must stay above the `mod` lines to be seen in every module.
#[allow(unused_macros)]
macro_rules! print {
    ($($t:tt)*) => { ::bellwether_stdout::print(format_args!($($t)*)) };
}
macro_rules! println {
    () => { ::bellwether_stdout::print(format_args!("\n")) };
    ($($t:tt)*) => { ::bellwether_stdout::print(format_args!("{}\n", format_args!($($t)*))) };
}

pub mod drift;
pub mod fleet;
mod lifecycle;
pub mod procs;
pub mod quickstart;
pub mod scenario;
pub mod service;
pub mod state;

pub use drift::{inject, DriftRequest, DRIFTED_CONFIG};
pub use lifecycle::{
    ca_env, command_name, down, listen, print_up, random_token, runtime, status, up, DownReport,
    UpOptions, TLS_DIR,
};
pub use scenario::ScenarioError;

/// `human` prints the story or the table, `json` one document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Output {
    #[default]
    Human,
    Json,
}

/// Why a sandbox or quickstart operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// Input that cannot be used: a flag's value, a host that is not in the sandbox, a
    /// directory that holds a running sandbox or something else. The CLI exits 2 on it.
    #[error("{0}")]
    Usage(String),
    /// A scenario file that does not parse or validate; it names the file (and the line and
    /// column where the parser knows them). The CLI exits 2 on it.
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    /// A file or directory could not be read, written, created or removed.
    #[error("could not {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file the sandbox wrote and reads back (state.json, faults.json) is not valid.
    #[error("{} is not {what}", path.display())]
    BadFile {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// A process of the sandbox could not start, exited early, did not get ready in time or
    /// did not stop; the message names it and, where it has one, ends with its log.
    #[error("{0}")]
    Process(String),
    /// A call to the sandbox's server failed; `context` says which.
    #[error("{context}")]
    Server {
        context: String,
        #[source]
        source: ClientError,
    },
    /// The server answered, but the story cannot go on (baselines skipped, drift that never
    /// showed, a rollout that did not finish in time).
    #[error("{0}")]
    Story(String),
    /// The CA and server certificate of `up --tls` could not be generated or written.
    #[error("could not make the sandbox's TLS files")]
    Tls(#[from] bellwether_tls::TlsError),
}

impl SandboxError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        SandboxError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn server(context: impl Into<String>) -> impl FnOnce(ClientError) -> SandboxError {
        let context = context.into();
        move |source| SandboxError::Server { context, source }
    }

    /// Whether the server could not be reached or its certificate not verified (the CLI
    /// exits 3 on it).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            SandboxError::Server {
                source: ClientError::Unreachable { .. } | ClientError::Untrusted { .. },
                ..
            }
        )
    }

    /// Whether the input was at fault (the CLI exits 2 on it).
    pub fn is_usage(&self) -> bool {
        matches!(self, SandboxError::Usage(_) | SandboxError::Scenario(_))
    }
}

/// An error with its causes, `a: b: c`, as the CLI prints it.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

pub type Result<T, E = SandboxError> = std::result::Result<T, E>;
