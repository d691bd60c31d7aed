//! `bellwether quickstart`: the arguments of the whole story on one machine. The story itself
//! is `bellwether_sandbox::quickstart`.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bellwether_sandbox::quickstart::Options;
use bellwether_sandbox::Output;

use super::sandbox::sandbox_error;
use super::OutputFormat;

/// The flags of `bellwether quickstart`; the story is told in main.rs's help text.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A scenario file instead of the built-in one (docs/scenario.md). It needs web hosts
    /// (the plan targets `role: web`), and at least one db and one cache host for the drift
    /// part.
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// A rollout plan instead of the built-in one (examples/plans/web-v2.yaml).
    #[arg(long)]
    plan: Option<PathBuf>,
    /// The sandbox's work directory.
    #[arg(long, default_value = ".sandbox")]
    dir: PathBuf,
    /// Leave the sandbox running afterwards, to look around.
    #[arg(long)]
    keep: bool,
    /// How long to wait for each stage (agents reporting, drift being recomputed, a rollout).
    #[arg(long, default_value = "180s", value_parser = bellwether_model::duration::parse)]
    timeout: Duration,
    /// Output format: `json` prints one document at the end instead of the story.
    #[arg(long, value_enum, default_value_t = OutputFormat::Human)]
    output: OutputFormat,
    /// Run the sandbox over HTTPS, with a CA and server certificate generated in DIR/tls
    /// (as `sandbox up --tls`).
    #[arg(long)]
    tls: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let opts = Options {
        scenario: args.scenario,
        plan: args.plan,
        dir: args.dir,
        keep: args.keep,
        timeout: args.timeout,
        output: match args.output {
            OutputFormat::Human => Output::Human,
            OutputFormat::Json => Output::Json,
        },
        tls: args.tls,
        progress: std::io::stderr().is_terminal(),
    };
    bellwether_sandbox::quickstart::run(&opts).map_err(sandbox_error)?;
    Ok(ExitCode::SUCCESS)
}
