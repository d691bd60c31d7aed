//! One module per subcommand. Shared flags and exit-code mapping live here.

pub mod agent;
pub mod baseline;
pub mod bench;
pub mod detect;
pub mod drift;
pub mod fleet;
pub mod hosts;
pub mod judge;
pub mod model;
pub mod model_server;
pub mod nab;
pub mod patch;
pub mod profile;
pub mod proxy;
pub mod quickstart;
pub mod risk;
pub mod rollout;
pub mod rollout_bench;
pub mod sandbox;
pub mod server;
pub mod tls;
pub mod token;

/// `--output human|json`, for commands that print a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    #[default]
    Human,
    Json,
}

/// Bad input: a file, flag or body that could not be used. Exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// A server or service that could not be reached. Exit code 3.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unreachable(pub String);

/// Maps an error to the documented exit code: 2 bad input, 3 unreachable, 1 otherwise.
pub fn exit_code_for(err: &anyhow::Error) -> u8 {
    if err.chain().any(|e| e.is::<UsageError>()) {
        2
    } else if err.chain().any(|e| e.is::<Unreachable>()) {
        3
    } else {
        1
    }
}
