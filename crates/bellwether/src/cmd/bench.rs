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
    /// L4 proxy: pgbench and redis-benchmark direct, through Bellwether and through HAProxy.
    Proxy(super::proxy::BenchArgs),
    /// Drift scoring of many profile pairs on one core.
    Drift(super::drift::BenchArgs),
    /// Resident memory of an idle agent (goal ≤ 15 MB).
    AgentMemory(super::agent::BenchArgs),
    /// Metric samples stored per second, through the store API and HTTP (goal ≥ 50,000/s on SQLite).
    Ingest(super::server::BenchArgs),
    /// Failure model: training time for 100,000 rows (goal ≤ 5 s), prediction rows/s (goal ≥ 200,000), and with --quality the AUC ratio to the oracle on synthetic histories.
    Model(super::model::BenchArgs),
    /// Anomaly detectors on the NAB corpus: normalised NAB scores (standard, low FP, low FN) at
    /// the detector's own alerts and at the best threshold, throughput and memory.
    Nab(super::nab::BenchArgs),
    /// Rollout engine: decision time per step for 10,000 hosts (goal ≤ 100 ms), reaction from fault onset to the failing verdict (goal ≤ 3 intervals), false failures of healthy canaries (goal ≤ 1 %).
    RolloutEngine(super::rollout_bench::BenchArgs),
    /// Sandbox services scraped and watched: intervals from fault onset to the failing verdict (goal ≤ 3) and healthy canaries judged failing (goal ≤ 1 %).
    RolloutReaction(super::sandbox::reaction::BenchArgs),
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.which {
        Which::Profile(a) => super::profile::bench(a),
        Which::Proxy(a) => super::proxy::bench(a),
        Which::AgentMemory(a) => super::agent::bench(a),
        Which::Drift(a) => super::drift::bench(a),
        Which::Ingest(a) => super::server::bench(a),
        Which::Model(a) => super::model::bench(a),
        Which::Nab(a) => super::nab::bench(a),
        Which::RolloutEngine(a) => super::rollout_bench::bench(a),
        Which::RolloutReaction(a) => super::sandbox::reaction::bench(a),
    }
}
