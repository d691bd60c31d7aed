//! `bellwether drift BASELINE CURRENT`, `bellwether drift fleet …` (in `fleet.rs`) and
//! `bellwether bench drift`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bellwether_drift::score::{fmt_num, score_checked};
use bellwether_drift::synth::{perturb, profile_of, HostSpec, SplitMix64};
use bellwether_drift::{score_prepared, PreparedProfile};
use bellwether_model::profile::DependencyStatus;
use bellwether_model::text::escape;
use bellwether_model::{DriftScore, HostProfile};

use super::{OutputFormat, UsageError};

/// Score how far a host has drifted from its known-good baseline: configuration (packages, OS,
/// kernel, hardware, network), performance (metrics) and dependency (reachability, latency,
/// DNS), each in [0, 1], with the findings behind them. docs/drift.md explains the formula.
///
/// `bellwether drift fleet` shows the drift of every host a server knows instead.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct Args {
    #[command(subcommand)]
    command: Option<Sub>,
    /// The known-good profile, JSON as `bellwether profile --output json` prints it.
    #[arg(value_name = "BASELINE.json", required = true)]
    baseline: Option<PathBuf>,
    /// The profile to compare with the baseline.
    #[arg(value_name = "CURRENT.json", required = true)]
    current: Option<PathBuf>,
    /// Compare profiles even when their hostnames differ (by default that is refused, since it
    /// is usually a mistake).
    #[arg(long)]
    force: bool,
    /// `human` prints the scores and a findings table; `json` prints the DriftScore.
    #[arg(long, value_enum, default_value_t)]
    output: OutputFormat,
}

#[derive(Debug, clap::Subcommand)]
enum Sub {
    /// List a server's hosts by overall drift, with their top findings and peer outliers.
    Fleet(super::fleet::Args),
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if let Some(Sub::Fleet(a)) = args.command {
        return super::fleet::run(a);
    }
    let (Some(bpath), Some(cpath)) = (args.baseline, args.current) else {
        return Err(
            UsageError("give BASELINE.json and CURRENT.json, or `drift fleet`".into()).into(),
        );
    };
    let baseline = read_profile(&bpath)?;
    let current = read_profile(&cpath)?;
    let score = score_checked(&baseline, &current, args.force)
        .map_err(|e| UsageError(format!("{e}; pass --force to compare them anyway")))?;
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&score)?),
        OutputFormat::Human => print!("{}", human(&score, current.hostname.as_deref())),
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads a profile; errors name the file, line, column and field.
pub fn read_profile(path: &Path) -> anyhow::Result<HostProfile> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| UsageError(format!("could not read {}: {e}", path.display())))?;
    bellwether_drift::json::parse_profile(&text)
        .map_err(|e| UsageError(format!("{} is not a host profile: {e}", path.display())).into())
}

/// The four scores and a findings table.
pub fn human(s: &DriftScore, host: Option<&str>) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Drift of {} from its baseline",
        escape(host.unwrap_or("the host"))
    );
    for (name, v) in [
        ("configuration", s.configuration),
        ("performance", s.performance),
        ("dependency", s.dependency),
        ("overall", s.overall),
    ] {
        let _ = writeln!(out, "  {name:<14} {v}");
    }
    if s.findings.is_empty() {
        out.push_str("\nNo findings: the profiles match.\n");
        return out;
    }
    let cell = |v: &Option<String>| {
        let v = escape(v.as_deref().unwrap_or("-"));
        if v.chars().count() > 40 {
            format!("{}…", v.chars().take(39).collect::<String>())
        } else {
            v.into_owned()
        }
    };
    let rows: Vec<[String; 5]> = s
        .findings
        .iter()
        .map(|f| {
            let cat = serde_json::to_value(f.category)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            [
                f.weight.to_string(),
                cat,
                escape(&f.attribute).into_owned(),
                cell(&f.baseline),
                cell(&f.current),
            ]
        })
        .collect();
    let head = ["WEIGHT", "CATEGORY", "ATTRIBUTE", "BASELINE", "CURRENT"];
    let mut width = head.map(|h| h.chars().count());
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    out.push('\n');
    for r in std::iter::once(head.map(str::to_owned)).chain(rows) {
        let line: Vec<String> = r
            .iter()
            .zip(width)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

/// Score many generated profile pairs on one core and print the time.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
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

pub fn bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if args.pairs == 0 || args.hosts == 0 {
        return Err(UsageError("--pairs and --hosts must be at least 1".into()).into());
    }
    // A fleet of distinct hosts (four releases, varied package sets and hardware), each
    // with two declared dependencies; every pair is one of them against a random perturbation.
    let hosts: Vec<HostProfile> = (0..args.hosts)
        .map(|i| {
            let mut p = profile_of(&HostSpec::generate(
                args.seed.wrapping_mul(1000) + i,
                &format!("host-{i}"),
                args.packages,
            ));
            p.dependencies = vec![
                DependencyStatus {
                    name: "db".into(),
                    endpoint: "10.0.0.5:5432".into(),
                    reachable: true,
                    latency_ms: Some(0.8),
                },
                DependencyStatus {
                    name: "cache".into(),
                    endpoint: "10.0.0.6:6379".into(),
                    reachable: true,
                    latency_ms: Some(0.3),
                },
            ];
            p
        })
        .collect();
    // The baselines are prepared once, as a server prepares a baseline when it is captured.
    let prepared: Vec<PreparedProfile> = if args.plain {
        Vec::new()
    } else {
        hosts.iter().cloned().map(PreparedProfile::new).collect()
    };
    let mut rng = SplitMix64::new(args.seed);
    let mut scored = 0usize;
    let (mut timed, mut prep) = (Clock::default(), Clock::default());
    let (mut findings, mut overall_sum) = (0usize, 0.0f64);
    while scored < args.pairs {
        // Pairs are generated in batches, outside the timed region, so memory stays small
        // while every pair is distinct.
        let n = args.batch.max(1).min(args.pairs - scored);
        let pairs: Vec<(usize, HostProfile)> = (0..n)
            .map(|_| {
                let i = rng.below(hosts.len() as u64) as usize;
                (i, perturb(&hosts[i], &mut rng))
            })
            .collect();
        if args.plain {
            timed.run(|| {
                for (i, current) in &pairs {
                    for _ in 0..args.repeat.max(1) {
                        let s = bellwether_drift::score(&hosts[*i], current);
                        findings += s.findings.len();
                        overall_sum += s.overall.get();
                    }
                }
            });
        } else {
            // Preparing a current profile is paid once when it arrives, not on each scoring; it
            // is timed apart. The batch is generated whole first, so the preparation reads cold
            // profiles too.
            let currents: Vec<(usize, PreparedProfile)> = prep.run(|| {
                pairs
                    .into_iter()
                    .map(|(i, p)| (i, PreparedProfile::new(p)))
                    .collect()
            });
            timed.run(|| {
                for (i, current) in &currents {
                    for _ in 0..args.repeat.max(1) {
                        let s = score_prepared(&prepared[*i], current);
                        findings += s.findings.len();
                        overall_sum += s.overall.get();
                    }
                }
            });
        }
        scored += n;
    }
    let scorings = scored * args.repeat.max(1);
    println!(
        "scored {scored} profile pairs ({} packages each, {} baseline hosts, {scorings} scorings, {}) on one core in {:.3} s: {:.2} µs a scoring, {:.0} scorings/s",
        args.packages,
        hosts.len(),
        if args.plain { "plain score" } else { "score_prepared" },
        timed.wall.as_secs_f64(),
        timed.wall.as_secs_f64() * 1e6 / scorings as f64,
        scorings as f64 / timed.wall.as_secs_f64()
    );
    if let Some(cpu) = timed.cpu {
        // On a busy machine the wall clock includes time the thread waited for a core.
        println!(
            "CPU time of the scoring thread {:.3} s: {:.2} µs a scoring",
            cpu.as_secs_f64(),
            cpu.as_secs_f64() * 1e6 / scorings as f64
        );
    }
    if !args.plain {
        println!(
            "preparing the {scored} current profiles (once each, when they arrive): {:.3} s wall, {} CPU: {:.2} µs a profile",
            prep.wall.as_secs_f64(),
            prep.cpu.map_or("unknown".to_owned(), |c| format!("{:.3} s", c.as_secs_f64())),
            prep.cpu.unwrap_or(prep.wall).as_secs_f64() * 1e6 / scored as f64
        );
    }
    println!(
        "mean findings a pair {:.2}, mean overall drift {}",
        findings as f64 / scorings as f64,
        fmt_num(overall_sum / scorings as f64)
    );
    Ok(ExitCode::SUCCESS)
}

/// Accumulated wall and thread CPU time of the timed regions; `cpu` is `None` where the CPU
/// time cannot be read.
struct Clock {
    wall: Duration,
    cpu: Option<Duration>,
}

impl Default for Clock {
    fn default() -> Self {
        Clock {
            wall: Duration::ZERO,
            cpu: Some(Duration::ZERO),
        }
    }
}

impl Clock {
    fn run<T>(&mut self, work: impl FnOnce() -> T) -> T {
        let (t, c0) = (Instant::now(), thread_cpu_time());
        let out = work();
        self.wall += t.elapsed();
        self.cpu = match (self.cpu, c0, thread_cpu_time()) {
            (Some(acc), Some(a), Some(b)) => Some(acc + b.saturating_sub(a)),
            _ => None,
        };
        out
    }
}

/// CPU time this thread has run, from `/proc/thread-self/schedstat` (Linux).
pub fn thread_cpu_time() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    Some(Duration::from_nanos(
        s.split_whitespace().next()?.parse().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bellwether_drift::synth::Drift;

    #[test]
    fn human_report_lists_scores_and_findings() {
        let spec = HostSpec::generate(2, "web-2", 40);
        let b = profile_of(&spec);
        let mut s2 = spec.clone();
        s2.apply(&Drift::Kernel("9.0.0-1-amd64".into()));
        let s = bellwether_drift::score(&b, &profile_of(&s2));
        let text = human(&s, Some("web-2"));
        let expected = format!(
            "Drift of web-2 from its baseline\n  configuration  0.600\n  performance    0.000\n  dependency     0.000\n  overall        0.600\n\n\
             WEIGHT  CATEGORY       ATTRIBUTE  BASELINE{pad}  CURRENT\n\
             0.600   configuration  kernel     {k}  9.0.0-1-amd64\n",
            pad = " ".repeat(spec.kernel.len().saturating_sub(8)),
            k = spec.kernel,
        );
        assert_eq!(text, expected);
        assert!(human(&DriftScore::default(), None).ends_with("No findings: the profiles match.\n"));
    }

    #[test]
    fn read_profile_errors_name_file_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.json");
        std::fs::write(
            &path,
            "{\n \"hostname\": \"a\",\n \"hardware\": {\"cpu_count\": -1}\n}\n",
        )
        .unwrap();
        let err = format!("{:#}", read_profile(&path).unwrap_err());
        assert!(
            err.contains("b.json is not a host profile: line 3, column"),
            "{err}"
        );
        assert!(err.contains("field hardware.cpu_count"), "{err}");
        let missing = format!(
            "{:#}",
            read_profile(&dir.path().join("nope.json")).unwrap_err()
        );
        assert!(
            missing.starts_with("could not read ") && missing.contains("nope.json"),
            "{missing}"
        );
    }
}
