//! `bellwether bench drift`: drift scoring of many generated profile pairs on one core.

use std::time::{Duration, Instant};

use bellwether_drift::score::fmt_num;
use bellwether_drift::synth::{perturb, profile_of, HostSpec, SplitMix64};
use bellwether_drift::{score_prepared, PreparedProfile};
use bellwether_model::profile::DependencyStatus;
use bellwether_model::HostProfile;

use crate::{BenchError, Result, Verdict};

/// Score many generated profile pairs on one core and print the time.
#[derive(Debug, Clone)]
pub struct Options {
    /// How many baseline/current pairs to score.
    pub pairs: usize,
    /// Packages per generated profile.
    pub packages: usize,
    /// Seed of the generator; the same seed gives the same pairs.
    pub seed: u64,
    /// Distinct baseline hosts the pairs are drawn from. Fewer hosts keep the baselines in the
    /// CPU cache; the default makes memory traffic part of the measurement, as in a real fleet.
    pub hosts: u64,
    /// Score each pair this many times in a row; above 1 the repeats find the pair in the CPU
    /// cache, which measures the scoring code alone. Figures are per scoring.
    pub repeat: usize,
    /// Pairs generated at a time, outside the timed region, then scored. A large batch
    /// (the default) has left the current profiles' memory cold by the time they are scored; a
    /// small one (100) scores them while they are still in the cache, as a server does when it
    /// scores a profile right after parsing it.
    pub batch: usize,
    /// Score with the plain `score` on the raw profiles (the whole-walk path) instead of
    /// `score_prepared` on profiles prepared beforehand. The pairs are the same either way.
    pub plain: bool,
}

pub fn run(args: &Options) -> Result<Verdict> {
    if args.pairs == 0 || args.hosts == 0 {
        return Err(BenchError::Usage(
            "--pairs and --hosts must be at least 1".into(),
        ));
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
    Ok(Verdict::Met)
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
