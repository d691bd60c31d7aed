//! `bellwether bench …`: the benchmarks whose figures BENCHMARKS.md records. Each variant lives
//! in the module of the subsystem it measures.

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    which: Which,
}

#[derive(Debug, clap::Subcommand)]
enum Which {
    /// Time to collect one host profile.
    Profile(super::profile::BenchArgs),
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.which {
        Which::Profile(a) => super::profile::bench(a),
    }
}
