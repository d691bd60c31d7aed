//! `bellwether bench …`: the benchmarks whose figures BENCHMARKS.md records. This module only
//! parses the flags; the harnesses are in the `bellwether-bench` crate, one module each.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use bellwether_bench::{BenchError, Output, Verdict};

use super::{OutputFormat, Unreachable, UsageError};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    which: Which,
}

#[derive(Debug, clap::Subcommand)]
enum Which {
    /// Time to collect one host profile.
    Profile(ProfileArgs),
    /// L4 proxy: pgbench and redis-benchmark direct, through Bellwether and through HAProxy.
    Proxy(ProxyArgs),
    /// Drift scoring of many profile pairs on one core.
    Drift(DriftArgs),
    /// Resident memory of an idle agent (goal ≤ 15 MB).
    AgentMemory(AgentMemoryArgs),
    /// Metric samples stored per second, through the store API and HTTP (goal ≥ 50,000/s on SQLite).
    Ingest(IngestArgs),
    /// Failure model: training time for 100,000 rows (goal ≤ 5 s), prediction rows/s (goal ≥ 200,000), and with --quality the AUC ratio to the oracle on synthetic histories.
    Model(ModelArgs),
    /// Anomaly detectors on the NAB corpus: normalised NAB scores (standard, low FP, low FN) at
    /// the detector's own alerts and at the best threshold, throughput and memory.
    Nab(NabArgs),
    /// Anomaly detectors on seeded deployment-fault series: recall, median delay, false alarms
    /// per 10,000 normal points, throughput and memory (goals 0.9, 5, 1, 2 M/s, 64 KiB).
    DetectFaults(DetectFaultsArgs),
    /// Rollout engine: decision time per step for 10,000 hosts (goal ≤ 100 ms), reaction from fault onset to the failing verdict (goal ≤ 3 intervals), false failures of healthy canaries (goal ≤ 1 %).
    RolloutEngine(RolloutEngineArgs),
    /// Sandbox services scraped and watched: intervals from fault onset to the failing verdict (goal ≤ 3) and healthy canaries judged failing (goal ≤ 1 %).
    RolloutReaction(RolloutReactionArgs),
    /// Simulated agents against a real server: sustained ingest, API latency per route, the
    /// server's CPU and memory, and a rollout across the fleet.
    Load(LoadArgs),
    /// Configuration change simulator on a synthetic graph of 100,000 settings: latency p50/p99 (goal ≤ 100 ms).
    ConfigSimulate(ConfigSimulateArgs),
    /// PostgreSQL configuration graph learned by probing scratch clusters: time for every
    /// setting (goal ≤ 15 min on 2 cores) and the recall of the edges a server start verifies.
    ConfigLearn(ConfigLearnArgs),
    /// PostgreSQL performance model: leave-one-configuration-out relative error of predicted
    /// pgbench throughput over a grid of work_mem, random_page_cost and shared_buffers.
    ConfigPerf(ConfigPerfArgs),
    /// Configuration changes (harmful, harmless, would-not-start) on real PostgreSQL clusters
    /// with pgbench, through the local runner: caught %, harmless reverted %, refused %, and
    /// bad change to recovered (goals ≥ 95 %, ≤ 2 %, 100 %, ≤ 30 s).
    ConfigCorpus(ConfigCorpusArgs),
}

#[derive(Debug, clap::Args)]
pub struct ConfigLearnArgs {
    /// Trial starts at a time.
    #[arg(long, default_value_t = 2)]
    parallel: usize,
    /// Probe only this setting; repeat for more (default: every changeable setting).
    #[arg(long = "key")]
    keys: Vec<String>,
    /// human (default) or json.
    #[arg(long, value_enum, default_value_t = OutputFormat::Human)]
    output: OutputFormat,
}

#[derive(Debug, clap::Args)]
pub struct ConfigPerfArgs {
    /// Seconds of pgbench per run.
    #[arg(long, default_value_t = 3)]
    seconds: u32,
    /// Runs per configuration.
    #[arg(long, default_value_t = 1)]
    reps: usize,
    /// human (default) or json.
    #[arg(long, value_enum, default_value_t = OutputFormat::Human)]
    output: OutputFormat,
}

impl Which {
    /// The subcommand's name, for the progress line.
    fn name(&self) -> &'static str {
        match self {
            Which::Profile(_) => "profile",
            Which::Proxy(_) => "proxy",
            Which::Drift(_) => "drift",
            Which::AgentMemory(_) => "agent-memory",
            Which::Ingest(_) => "ingest",
            Which::Model(_) => "model",
            Which::Nab(_) => "nab",
            Which::DetectFaults(_) => "detect-faults",
            Which::RolloutEngine(_) => "rollout-engine",
            Which::RolloutReaction(_) => "rollout-reaction",
            Which::Load(_) => "load",
            Which::ConfigSimulate(_) => "config-simulate",
            Which::ConfigLearn(_) => "config-learn",
            Which::ConfigPerf(_) => "config-perf",
            Which::ConfigCorpus(_) => "config-corpus",
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    use bellwether_bench as b;
    // A spinner with the elapsed time on a terminal (benches run for minutes); the figures
    // print around it.
    let _progress = bellwether_stdout::Progress::spinner(format!("bench {}", args.which.name()));
    let verdict = match args.which {
        Which::Profile(a) => b::profile::run(&b::profile::Options {
            rootfs: a.rootfs,
            synthetic_packages: a.synthetic_packages,
            iterations: a.iterations,
            watch_files: a.watch_files,
            peer_iterations: a.peer_iterations,
        }),
        Which::Proxy(a) => b::proxy::run(&b::proxy::Options {
            clients: a.clients,
            seconds: a.seconds,
            redis_requests: a.redis_requests,
            no_haproxy: a.no_haproxy,
            no_redis: a.no_redis,
            rounds: a.rounds,
            workers: a.workers,
        }),
        Which::Drift(a) => b::drift::run(&b::drift::Options {
            pairs: a.pairs,
            packages: a.packages,
            seed: a.seed,
            hosts: a.hosts,
            repeat: a.repeat,
            batch: a.batch,
            plain: a.plain,
        }),
        Which::AgentMemory(a) => b::agent_memory::run(&b::agent_memory::Options {
            exe: this_exe()?,
            rootfs: a.rootfs,
            interval: a.interval,
            idle: a.idle,
            output: output(a.output),
        }),
        Which::Ingest(a) => b::ingest::run(&b::ingest::Options {
            database: a.database,
            samples: a.samples,
            batch: a.batch,
            hosts: a.hosts,
            clients: a.clients,
            no_http: a.no_http,
            output: output(a.output),
        }),
        Which::Model(a) => b::model::run(&b::model::Options {
            rows: a.rows,
            quality: a.quality,
            output: output(a.output),
        }),
        Which::Nab(a) => b::nab::run(&b::nab::Options {
            nab_dir: a.nab_dir,
            detector: a.detector,
            output: output(a.output),
        }),
        Which::DetectFaults(a) => b::detect_faults::run(&b::detect_faults::Options {
            split: a.split,
            series: a.series,
            detector: a.detector,
            output: output(a.output),
        }),
        Which::RolloutEngine(a) => b::rollout_engine::run(&b::rollout_engine::Options {
            hosts: a.hosts,
            healthy_runs: a.healthy_runs,
            fault_runs: a.fault_runs,
            output: output(a.output),
        }),
        Which::RolloutReaction(a) => b::rollout_reaction::run(&b::rollout_reaction::Options {
            exe: this_exe()?,
            faults_file: bellwether_sandbox::service::FAULTS_FILE.to_owned(),
            runs: a.runs,
            hosts: a.hosts,
            faulty: a.faulty,
            baseline: a.baseline,
            watch: a.watch,
            onset: a.onset,
            output: output(a.output),
        }),
        Which::Load(a) => return load(a),
        Which::ConfigSimulate(a) => b::config_sim::run(&b::config_sim::Options {
            settings: a.settings,
            runs: a.runs,
            keys: a.keys,
            seed: a.seed,
            output: output(a.output),
        }),
        Which::ConfigLearn(a) => b::config_learn::run_learn(&b::config_learn::LearnOptions {
            parallel: a.parallel,
            keys: a.keys,
            output: output(a.output),
        }),
        Which::ConfigPerf(a) => b::config_learn::run_perf(&b::config_learn::PerfOptions {
            seconds: a.seconds,
            reps: a.reps,
            output: output(a.output),
        }),
        Which::ConfigCorpus(a) => b::config_corpus::run(&b::config_corpus::Options {
            changes: a.changes,
            only: a.only,
            workers: a.workers,
            control: !a.no_control,
            output: output(a.output),
        }),
    };
    match verdict.map_err(bench_error)? {
        Verdict::Met => Ok(ExitCode::SUCCESS),
        Verdict::Missed => Ok(ExitCode::from(1)),
    }
}

fn output(o: OutputFormat) -> Output {
    match o {
        OutputFormat::Human => Output::Human,
        OutputFormat::Json => Output::Json,
    }
}

/// This binary: harnesses start it as `bellwether server`, `agent` or `sandbox service`.
fn this_exe() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("could not find the bellwether executable")
}

/// Time the collection of one profile, as the agent does it every few seconds.
#[derive(Debug, clap::Args)]
pub struct ProfileArgs {
    /// The host root to collect; `/` is this machine.
    #[arg(long, value_name = "DIR", default_value = "/")]
    rootfs: PathBuf,
    /// Collect from a synthetic host root with this many packages (written to a temporary
    /// directory and removed afterwards) instead of --rootfs.
    #[arg(long, value_name = "N")]
    synthetic_packages: Option<usize>,
    /// How many collections to time, after 5 untimed warm-up runs.
    #[arg(long, default_value_t = 200)]
    iterations: usize,
    /// Also watch this file (relative to the root), as the agent does with --watch-file or
    /// --protect; repeatable. With --synthetic-packages, the file is written into the
    /// synthetic root first (a 4 KiB configuration file).
    #[arg(long = "watch-file", value_name = "PATH", value_parser = super::profile::parse_watch_file)]
    watch_files: Vec<String>,
    /// How many `dpkg-query -W` runs to time as the peer (0 to skip).
    #[arg(long, default_value_t = 20)]
    peer_iterations: usize,
}

/// `bellwether bench proxy`: pgbench and redis-benchmark direct, through Bellwether's proxy
/// (plain TCP and PostgreSQL-aware) and through HAProxy in TCP mode, side by side in one run.
#[derive(Debug, clap::Args)]
pub struct ProxyArgs {
    /// Client counts to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,10,50")]
    clients: Vec<u32>,
    /// Seconds per pgbench run.
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    /// Requests per redis-benchmark run.
    #[arg(long, default_value_t = 200_000)]
    redis_requests: u32,
    /// Skip HAProxy (it is measured by default; needs the Debian package `haproxy`).
    #[arg(long)]
    no_haproxy: bool,
    /// Skip the Redis part.
    #[arg(long)]
    no_redis: bool,
    /// Rounds per cell, interleaving the targets; the table shows the median of the rounds,
    /// which keeps a busy machine's noise from favouring whichever target ran last.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Data-plane worker counts to measure Bellwether with, comma-separated; each count
    /// gets its own proxies and its own rows (default: the proxy's default).
    #[arg(long, value_delimiter = ',')]
    workers: Vec<usize>,
}

/// Score many generated profile pairs on one core and print the time.
#[derive(Debug, clap::Args)]
pub struct DriftArgs {
    /// How many baseline/current pairs to score.
    #[arg(long, default_value_t = 100_000)]
    pairs: usize,
    /// Packages per generated profile.
    #[arg(long, default_value_t = 300)]
    packages: usize,
    /// Seed of the generator; the same seed gives the same pairs.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Distinct baseline hosts the pairs are drawn from. Fewer hosts keep the baselines in the
    /// CPU cache; the default makes memory traffic part of the measurement, as in a real fleet.
    #[arg(long, default_value_t = 200)]
    hosts: u64,
    /// Score each pair this many times in a row; above 1 the repeats find the pair in the CPU
    /// cache, which measures the scoring code alone. Figures are per scoring.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Pairs generated at a time, outside the timed region, then scored. A large batch
    /// (the default) has left the current profiles' memory cold by the time they are scored; a
    /// small one (100) scores them while they are still in the cache, as a server does when it
    /// scores a profile right after parsing it.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Score with the plain `score` on the raw profiles (the whole-walk path) instead of
    /// `score_prepared` on profiles prepared beforehand. The pairs are the same either way.
    #[arg(long)]
    plain: bool,
}

/// `bellwether bench agent-memory`: start a server and one agent against it, let the agent run
/// idle (profile sent, samples every interval), and read its resident memory from
/// /proc/PID/status.
#[derive(Debug, clap::Args)]
pub struct AgentMemoryArgs {
    /// The host root the agent reads; `/` measures it on this machine's real files.
    #[arg(long, default_value = "/")]
    rootfs: PathBuf,
    /// The agent's collection interval.
    #[arg(long, default_value = "1s", value_parser = bellwether_model::duration::parse)]
    interval: Duration,
    /// How long to watch the agent idle after its first profile arrived.
    #[arg(long, default_value = "20s", value_parser = bellwether_model::duration::parse)]
    idle: Duration,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Human)]
    output: OutputFormat,
}

/// `bellwether bench ingest`: metric samples stored per second, through the store API on
/// SQLite (and on PostgreSQL with --database), and through the HTTP endpoint.
#[derive(Debug, clap::Args)]
pub struct IngestArgs {
    /// Also measure PostgreSQL at this URL (postgres://…), in a throwaway schema that is
    /// dropped afterwards.
    #[arg(long)]
    database: Option<String>,
    /// Samples to store per run.
    #[arg(long, default_value_t = 200_000)]
    samples: usize,
    /// Samples per batch (one agent request, one store transaction).
    #[arg(long, default_value_t = 1_000)]
    batch: usize,
    /// Hosts the samples are spread over.
    #[arg(long, default_value_t = 8)]
    hosts: usize,
    /// Concurrent HTTP clients in the HTTP runs.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Skip the runs through the HTTP endpoint.
    #[arg(long)]
    no_http: bool,
    /// `human` or `json`.
    #[arg(long, value_enum, default_value_t = OutputFormat::Human)]
    output: OutputFormat,
}

/// `bellwether bench model`: training time, prediction throughput and, with --quality, how
/// close the model comes to the true probability on synthetic histories of several shapes.
#[derive(Debug, clap::Args)]
pub struct ModelArgs {
    /// Rows of the synthetic history to train on (world 1 of `bellwether model synth`: 8
    /// numeric and 3 categorical columns, 5 % missing cells).
    #[arg(long, default_value_t = 100_000)]
    rows: usize,
    /// Also score trees and the logistic baseline on four synthetic worlds against `_p`.
    #[arg(long)]
    quality: bool,
    /// Print human text or JSON.
    #[arg(long, value_enum, default_value_t)]
    output: OutputFormat,
}

/// `bellwether bench nab`: a detector over the Numenta Anomaly Benchmark corpus.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Reads DIR/labels/combined_windows.json and DIR/data/<category>/<file>.csv (the layout of
github.com/numenta/NAB) and scores with NAB v1.1's rules: probation min(15%, 750) rows, scaled
sigmoid, best detection per window, false positives weighted by the distance from the previous
window, normalised 100·(S − S_null)/(S_perfect − S_null). Two figures per profile: at the
detector's own alerts, and at the best corpus-wide threshold on its score (the scoreboard's
convention).

The corpus: `git clone --depth 1 https://github.com/numenta/NAB.git nab` (58 files, the
figures of docs/detect.md). A clone of Bellwether carries a two-file sample in the same layout,
examples/nab (see its README.md), enough to check that the scorer runs.

Examples:
  bellwether bench nab --nab-dir nab --detector two-scale-entropy
  bellwether bench nab --nab-dir examples/nab")]
pub struct NabArgs {
    /// The NAB checkout, or any directory in its layout (`labels/combined_windows.json` and
    /// the `data/<category>/<file>.csv` it names).
    #[arg(long, value_name = "DIR")]
    nab_dir: PathBuf,
    /// The detector to run (see `bellwether detect --help`); `all` runs every detector, and
    /// `nab-relative-entropy` runs the port of NAB's relativeEntropy with NAB's lookahead of each
    /// file's range (to check the scorer against NAB's published 54.6 / 47.6 / 58.8), and
    /// `nab-cad` the CAD OSE port as NAB runs it (each file's range, rest period probation / 5;
    /// published 69.9 / 67.0 / 73.2).
    #[arg(long, value_name = "NAME", default_value = "two-scale-entropy")]
    detector: String,
    /// human (default) or json.
    #[arg(long, value_enum, default_value_t = OutputFormat::Human)]
    output: OutputFormat,
}

/// `bellwether bench detect-faults`: detectors on seeded deployment-fault series.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Series are made from seeds (bellwether_detect::faults): level shifts, variance changes, stuck
values, spikes, ramps, outages and error-rate rises, at varied sizes, on noise (white or AR(1)),
trend and a daily cycle, after two days of unscored history. `dev` is the seed family the
detectors were chosen on; `heldout` is another family, for reporting. An alert in a fault or
within 10 points after it detects it (delay = points after its first point); an alert on a
normal point (not in a fault or the 70 points after it) is a false alarm. Exit 1 when no
detector run meets every goal.

Examples:
  bellwether bench detect-faults --split heldout --detector seasonal-cusum
  bellwether bench detect-faults --split both --detector all")]
pub struct DetectFaultsArgs {
    /// dev, heldout or both.
    #[arg(long, default_value = "dev")]
    split: String,
    /// Series per split.
    #[arg(long, default_value_t = 800)]
    series: u64,
    /// A detector (see `bellwether detect --help`) or `all` (every one but cad and
    /// windowed-gaussian).
    #[arg(long, value_name = "NAME", default_value = "seasonal-cusum")]
    detector: String,
    /// human (default) or json.
    #[arg(long, value_enum, default_value_t = OutputFormat::Human)]
    output: OutputFormat,
}

#[derive(Debug, clap::Args)]
pub struct ConfigSimulateArgs {
    /// Settings in the synthetic catalog and graph.
    #[arg(long, default_value_t = 100_000)]
    settings: usize,
    /// Simulations timed.
    #[arg(long, default_value_t = 200)]
    runs: usize,
    /// Settings changed per simulation.
    #[arg(long, default_value_t = 3)]
    keys: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// human (default) or json.
    #[arg(long, value_enum, default_value_t = OutputFormat::Human)]
    output: OutputFormat,
}

#[derive(Debug, clap::Args)]
pub struct RolloutEngineArgs {
    /// Hosts in the simulated rollout whose decision time is measured.
    #[arg(long, default_value_t = 10_000)]
    hosts: usize,
    /// Seeded healthy canaries for the false-failure rate (30 s of post-apply samples each).
    #[arg(long, default_value_t = 1_000)]
    healthy_runs: u64,
    /// Seeded faulty canaries per fault kind for the reaction time.
    #[arg(long, default_value_t = 200)]
    fault_runs: u64,
    /// human (default) or json.
    #[arg(long, value_enum, default_value_t = OutputFormat::Human)]
    output: OutputFormat,
}

#[derive(Debug, clap::Args)]
pub struct ConfigCorpusArgs {
    /// Run only the first N changes of the corpus (it interleaves the three kinds).
    #[arg(long)]
    changes: Option<usize>,
    /// Run only the changes whose name contains this text, e.g. "(restart)".
    #[arg(long)]
    only: Option<String>,
    /// PostgreSQL clusters run side by side.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Judge without the untouched control cluster each worker runs beside its changed one.
    #[arg(long)]
    no_control: bool,
    /// human (default) or json.
    #[arg(long, value_enum, default_value_t = OutputFormat::Human)]
    output: OutputFormat,
}

#[derive(Debug, clap::Args)]
pub struct RolloutReactionArgs {
    /// Sandbox runs.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Hosts per run.
    #[arg(long, default_value_t = 10)]
    hosts: usize,
    /// Faulty hosts per run (version 2 fails 30 % of their requests).
    #[arg(long, default_value_t = 2)]
    faulty: usize,
    /// Time before the apply: the baseline.
    #[arg(long, default_value = "10s", value_parser = bellwether_model::duration::parse)]
    baseline: Duration,
    /// Time watched after the apply.
    #[arg(long, default_value = "20s", value_parser = bellwether_model::duration::parse)]
    watch: Duration,
    /// Delay from the apply to the fault.
    #[arg(long, default_value = "3s", value_parser = bellwether_model::duration::parse)]
    onset: Duration,
    #[arg(long, value_enum, default_value_t = OutputFormat::Human)]
    output: OutputFormat,
}

/// `bellwether bench load`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  bellwether bench load --agents 1000 --interval 1s --duration 60s --store sqlite\n  bellwether bench load --agents 1000 --store postgres://postgres@127.0.0.1:5432/test"
)]
pub struct LoadArgs {
    /// Simulated agents (tokio tasks sharing one keep-alive HTTP client).
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// How often each agent sends its samples.
    #[arg(long, default_value = "1s", value_parser = bellwether_model::duration::parse)]
    interval: Duration,
    /// The measured window; it is extended until the rollout settles.
    #[arg(long, default_value = "60s", value_parser = bellwether_model::duration::parse)]
    duration: Duration,
    /// `sqlite` (a fresh file in a temporary directory) or a postgres:// URL (a fresh schema
    /// in that database, dropped afterwards).
    #[arg(long, default_value = "sqlite")]
    store: String,
    /// Packages in each simulated host's profile.
    #[arg(long, default_value_t = 300)]
    packages: usize,
    /// How long each action long-poll waits on the server (the agent's default).
    #[arg(long, default_value = "5s", value_parser = bellwether_model::duration::parse)]
    poll_wait: Duration,
    /// Run no rollout: ingest only.
    #[arg(long)]
    no_rollout: bool,
    /// Time from the start of the window to the rollout's start (the hosts' baselines).
    #[arg(long, default_value = "10s", value_parser = bellwether_model::duration::parse)]
    rollout_after: Duration,
    /// The rollout plan's bake per wave.
    #[arg(long, default_value = "10s", value_parser = bellwether_model::duration::parse)]
    bake: Duration,
    /// Stop following the rollout after this long.
    #[arg(long, default_value = "10m", value_parser = bellwether_model::duration::parse)]
    rollout_timeout: Duration,
    #[arg(long, value_enum, default_value_t = OutputFormat::Human)]
    output: OutputFormat,
}

fn load(a: LoadArgs) -> anyhow::Result<ExitCode> {
    let opts = bellwether_bench::load::LoadOptions {
        exe: this_exe()?,
        store: bellwether_bench::load::LoadStore::parse(&a.store).map_err(bench_error)?,
        agents: a.agents,
        interval: a.interval,
        duration: a.duration,
        packages: a.packages,
        poll_wait: a.poll_wait,
        rollout: (!a.no_rollout).then_some(bellwether_bench::load::RolloutOptions {
            after: a.rollout_after,
            bake: a.bake,
            timeout: a.rollout_timeout,
        }),
    };
    let report = bellwether_bench::load::run(&opts).map_err(bench_error)?;
    match a.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        OutputFormat::Human => print!("{}", bellwether_bench::load::render(&report)),
    }
    Ok(ExitCode::SUCCESS)
}

/// A harness's error with the binary's exit code: bad input 2, unreachable 3, otherwise 1
/// (also when the bad input is wrapped in context, as "loading NAB from DIR: …").
fn bench_error(e: BenchError) -> anyhow::Error {
    if e.is_usage() {
        UsageError(chain(&e)).into()
    } else if e.is_unreachable() {
        Unreachable(chain(&e)).into()
    } else {
        e.into()
    }
}

/// An error and its causes as one line, as `{:#}` prints an anyhow error.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
