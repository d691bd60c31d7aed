//! The `bellwether` binary: a thin clap layer over the library crates.
//!
//! Each subcommand lives in its own module under `cmd/`; this file only parses and dispatches.
//! Exit codes: 0 success, 1 the command ran and found a problem (for example a failing judge
//! verdict), 2 bad input or usage, 3 a service could not be reached.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

// Every `print!` and `println!` of this crate goes through `bellwether_stdout`: a reader that
// closes the pipe (`… | head`) ends the command quietly instead of with a panic. These macros
// shadow std's; they must stay above the `mod` lines to be seen in every module.
macro_rules! print {
    ($($t:tt)*) => { ::bellwether_stdout::print(format_args!($($t)*)) };
}
macro_rules! println {
    () => { ::bellwether_stdout::print(format_args!("\n")) };
    ($($t:tt)*) => { ::bellwether_stdout::print(format_args!("{}\n", format_args!($($t)*))) };
}

mod cmd;

/// Bellwether makes changes to a fleet safe: it predicts where a change will fail, tries it
/// first where that is safe, watches it land, and undoes it per host before users notice.
#[derive(Parser)]
#[command(name = "bellwether", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// Log filter, as in RUST_LOG (for example `info` or `bellwether_server=debug`).
    #[arg(long, global = true, env = "BELLWETHER_LOG", default_value = "warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Collect this host's profile (or a mounted root's) and print it.
    Profile(cmd::profile::Args),
    /// Score drift between two profiles, or show the fleet's drift from a server.
    Drift(cmd::drift::Args),
    /// Run the control plane: API, store, drift engine, /metrics.
    Server(cmd::server::Args),
    /// Run the per-host agent: profile, metrics, actions.
    Agent(cmd::agent::Args),
    /// Capture known-good baselines on a server.
    Baseline(cmd::baseline::Args),
    /// List hosts known to a server.
    Hosts(cmd::hosts::Args),
    /// Make and manage API tokens.
    Token(cmd::token::Args),
    /// Start or stop a local sandbox fleet of distinct hosts on loopback.
    Sandbox(cmd::sandbox::Args),
    /// The whole story on one machine: a sandbox fleet, its drift, and two rollouts of a
    /// release by risk (held-back hosts, a pilot, per-host rollbacks, a pause, learning).
    ///
    /// A sandbox fleet of 20 hosts comes up on loopback (server, agents, a small web service
    /// per host); baselines are captured, drift is injected on four hosts and the fleet drift
    /// report shows why each moved. Then rollout 1 of version 2 of the web service: every host
    /// is scored by a model trained on the scenario's history, the high-risk ones are held
    /// back, a pilot goes first, hosts that fail are rolled back alone, the rollout pauses when
    /// failures spread and is resumed, and the report tells each host's story. The server
    /// learns from those outcomes, and rollout 2 of the same release holds back the hosts like
    /// the ones that failed. About two minutes once built; `--keep` leaves the fleet running.
    Quickstart(cmd::quickstart::Args),
    /// Score a metric series for anomalies (CSV in, CSV out).
    Detect(cmd::detect::Args),
    /// Compare canary samples against control samples (Mann-Whitney, Kayenta-style).
    Judge(cmd::judge::Args),
    /// Train, apply and evaluate the failure-probability model.
    Model(cmd::model::Args),
    /// Each host's failure probability for a proposed update, with its top factors.
    Risk(cmd::risk::Args),
    /// Start, follow, steer and report predictive canary rollouts on a server.
    Rollout(cmd::rollout::Args),
    /// Run the L4 traffic manager.
    Proxy(cmd::proxy::Args),
    /// Patch a stateful service beside its original, with phased rollback.
    Patch(cmd::patch::Args),
    /// Configuration changes on live PostgreSQL: dependency graph, simulator, apply with
    /// predictive revert, snapshots and the change stream.
    Config(cmd::config::Args),
    /// Dependency mirroring: declare critical dependencies (Redis, PostgreSQL, TCP), keep
    /// them mirrored by weight and health, switch their traffic when the primary fails.
    Mirror(cmd::mirror::Args),
    /// Data shadows: follow a SQLite file, a directory or a PostgreSQL cluster, take
    /// rollback points, and restore to just before a failure.
    Shadow(cmd::shadow::Args),
    // The help is cmd::alerts::Args's own (a doc comment here would replace it).
    Alerts(cmd::alerts::Args),
    /// Benchmarks whose figures go into BENCHMARKS.md.
    Bench(cmd::bench::Args),
}

fn main() -> ExitCode {
    let cli: Cli = cmd::config_file::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Profile(a) => cmd::profile::run(a),
        Command::Drift(a) => cmd::drift::run(a),
        Command::Server(a) => cmd::server::run(a),
        Command::Agent(a) => cmd::agent::run(a),
        Command::Baseline(a) => cmd::baseline::run(a),
        Command::Hosts(a) => cmd::hosts::run(a),
        Command::Token(a) => cmd::token::run(a),
        Command::Sandbox(a) => cmd::sandbox::run(a),
        Command::Quickstart(a) => cmd::quickstart::run(a),
        Command::Detect(a) => cmd::detect::run(a),
        Command::Judge(a) => cmd::judge::run(a),
        Command::Model(a) => cmd::model::run(a),
        Command::Risk(a) => cmd::risk::run(a),
        Command::Rollout(a) => cmd::rollout::run(a),
        Command::Proxy(a) => cmd::proxy::run(a),
        Command::Patch(a) => cmd::patch::run(a),
        Command::Config(a) => cmd::config::run(a),
        Command::Mirror(a) => cmd::mirror::run(a),
        Command::Shadow(a) => cmd::shadow::run(a),
        Command::Alerts(a) => cmd::alerts::run(a),
        Command::Bench(a) => cmd::bench::run(a),
    };
    match result {
        Ok(code) => code,
        // A write to a closed stdout that came back as an error (a `writeln!` to a locked
        // stdout) ends quietly, as one through `println!` does.
        Err(err) if bellwether_stdout::is_broken_pipe(err.as_ref()) => {
            ExitCode::from(bellwether_stdout::CLOSED_PIPE_EXIT as u8)
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(cmd::exit_code_for(&err))
        }
    }
}
