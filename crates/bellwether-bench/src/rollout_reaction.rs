//! `bellwether bench rollout-reaction`: the sandbox's side of the reaction-time and
//! false-rollback figures, on real processes.
//!
//! Each run starts `--hosts` sandbox web services (real `sandbox service` processes with their
//! built-in load). Every interval it scrapes each `/metrics` with the agent's parser and rates,
//! and feeds the samples to the engine's `HostWatcher` built from the example plan
//! (examples/plans/web-v2.yaml). After the baseline it writes version 2 on the canaries (the
//! faulty hosts plus half the healthy ones), as the agent's `set_service_version` does; the
//! faulty hosts' services fail 30 % of requests from `--onset` after that. The other healthy
//! hosts are the controls. The figures: for each faulty host, the sampling intervals from the
//! fault's onset to the first `Failing` verdict (the engine dispatches the targeted rollback in
//! the step that receives it); for each healthy canary, whether it ever got a `Failing` verdict
//! (a false rollback).
//!
//! What it does not include: the server (samples take one agent interval and one HTTP request
//! to arrive there) — so the end-to-end figure through the server is this plus at most one
//! interval.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bellwether_agent::scrape::{parse, snapshot, Rates};
use bellwether_engine::rollout::watch::HostWatcher;
use bellwether_engine::rollout::WatchVerdict;
use bellwether_model::HostName;

use crate::proc::Reaped;
use crate::{bail, BenchError, Context as _, Output, Result, Verdict};

const PLAN: &str = include_str!("../../../examples/plans/web-v2.yaml");

#[derive(Debug, Clone)]
pub struct Options {
    /// The `bellwether` binary whose `sandbox service` runs the services.
    pub exe: std::path::PathBuf,
    /// Where a service reads its faults, relative to its root (the sandbox's `FAULTS_FILE`).
    pub faults_file: String,
    /// Sandbox runs.
    pub runs: usize,
    /// Hosts per run.
    pub hosts: usize,
    /// Faulty hosts per run (version 2 fails 30 % of their requests).
    pub faulty: usize,
    /// Time before the apply: the baseline.
    pub baseline: Duration,
    /// Time watched after the apply.
    pub watch: Duration,
    /// Delay from the apply to the fault.
    pub onset: Duration,
    pub output: Output,
}

fn get(addr: &str, path: &str) -> Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)
        .with_context(|| format!("could not connect to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or(out))
}

struct RunResult {
    reactions: Vec<Option<u64>>,
    healthy_canaries: usize,
    false_failures: usize,
}

fn one_run(args: &Options, run: usize, work: &std::path::Path) -> Result<RunResult> {
    let plan = bellwether_engine::rollout::plan::parse_plan(PLAN, "web-v2.yaml")
        .map_err(|e| BenchError::Failed(e.to_string()))?;
    let interval_ms = plan.analysis.interval.0.as_millis() as i64;
    let exe = &args.exe;
    let mut procs = Vec::new();
    let mut addrs = Vec::new();
    for i in 0..args.hosts {
        let root = work.join(format!("run{run}/h{i}"));
        std::fs::create_dir_all(root.join("etc/websvc"))?;
        std::fs::write(root.join("etc/websvc/version"), "1\n")?;
        let faults = if i < args.faulty {
            format!(
                r#"[{{"version":"2","error_rate":0.3,"onset_ms":{}}}]"#,
                args.onset.as_millis()
            )
        } else {
            "[]".into()
        };
        std::fs::write(root.join(&args.faults_file), faults)?;
        let addr_file = root.join("addr");
        procs.push(Reaped(
            Command::new(exe)
                .args(["sandbox", "service", "--root"])
                .arg(&root)
                .arg("--addr-file")
                .arg(&addr_file)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("could not start a service")?,
        ));
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = loop {
            match std::fs::read_to_string(&addr_file) {
                Ok(a) if !a.trim().is_empty() => break a.trim().to_string(),
                _ if Instant::now() > deadline => bail!("service {i} did not start"),
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        addrs.push((root, addr));
    }
    // Canaries: the faulty hosts and half the healthy ones; the rest are controls.
    let healthy = args.hosts - args.faulty;
    let canary = |i: usize| i < args.faulty + healthy / 2;
    let mut watchers: Vec<HostWatcher> = (0..args.hosts)
        .map(|i| HostWatcher::new(&plan, HostName::new(format!("h{i}")).expect("valid name")))
        .collect::<Result<_, _>>()
        .map_err(|e| BenchError::Failed(e.to_string()))?;
    let mut rates: Vec<Rates> = (0..args.hosts).map(|_| Rates::default()).collect();
    let t0 = Instant::now();
    let apply_at = args.baseline.as_millis() as i64;
    let end = apply_at + args.watch.as_millis() as i64;
    let mut applied = false;
    let mut first_fail: Vec<Option<i64>> = vec![None; args.hosts];
    let mut tick = 0i64;
    loop {
        let next = Duration::from_millis((tick * interval_ms) as u64);
        if let Some(wait) = next.checked_sub(t0.elapsed()) {
            // The sampling interval is the measurement's clock.
            std::thread::sleep(wait);
        }
        tick += 1;
        let now = t0.elapsed().as_millis() as i64;
        if now > end {
            break;
        }
        for (i, (_, addr)) in addrs.iter().enumerate() {
            let body = get(addr, "/metrics")?;
            let samples = parse(&body).map_err(|e| BenchError::Failed(format!("host {i}: {e}")))?;
            let snap = snapshot(&samples, now).context("no websvc counters")?;
            for s in rates[i].push(snap) {
                let _ = watchers[i].observe(s.ts_ms, &s.name, s.value);
            }
        }
        if !applied && now >= apply_at {
            applied = true;
            for (i, (root, _)) in addrs.iter().enumerate().filter(|(i, _)| canary(*i)) {
                std::fs::write(root.join("etc/websvc/version"), "2\n")?;
                watchers[i].mark_applied(now);
            }
        }
        if applied {
            let controls: Vec<&HostWatcher> = (0..args.hosts)
                .filter(|i| !canary(*i))
                .map(|i| &watchers[i])
                .collect();
            for i in (0..args.hosts).filter(|i| canary(*i)) {
                if first_fail[i].is_none() {
                    if let WatchVerdict::Failing { .. } | WatchVerdict::Critical { .. } =
                        watchers[i].verdict(now, &controls)
                    {
                        first_fail[i] = Some(now);
                    }
                }
            }
        }
    }
    drop(procs);
    // The fault starts when the service sees the version (≤ 100 ms after the write) plus the onset.
    let onset_at = apply_at + args.onset.as_millis() as i64;
    let reactions = (0..args.faulty)
        .map(|i| {
            first_fail[i].map(|t| ((t - onset_at).max(0) as f64 / interval_ms as f64).ceil() as u64)
        })
        .collect();
    let false_failures = (args.faulty..args.hosts)
        .filter(|i| canary(*i) && first_fail[*i].is_some())
        .count();
    Ok(RunResult {
        reactions,
        healthy_canaries: healthy / 2,
        false_failures,
    })
}

pub fn run(args: &Options) -> Result<Verdict> {
    if args.faulty > args.hosts || args.hosts < 3 {
        return Err(BenchError::Usage(
            "need at least 3 hosts and no more faulty hosts than hosts".into(),
        ));
    }
    let work =
        std::env::temp_dir().join(format!("bellwether-bench-reaction-{}", std::process::id()));
    let mut reactions = Vec::new();
    let (mut canaries, mut false_failures) = (0, 0);
    for run in 0..args.runs {
        let r = one_run(args, run, &work);
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&work);
                return Err(e);
            }
        };
        reactions.extend(r.reactions);
        canaries += r.healthy_canaries;
        false_failures += r.false_failures;
    }
    let _ = std::fs::remove_dir_all(&work);
    let detected: Vec<u64> = reactions.iter().flatten().copied().collect();
    let mean = detected.iter().sum::<u64>() as f64 / detected.len().max(1) as f64;
    let max = detected.iter().max().copied();
    let rate = false_failures as f64 / canaries.max(1) as f64;
    if args.output == Output::Json {
        println!(
            "{}",
            serde_json::json!({
                "runs": args.runs, "hosts": args.hosts, "faulty_per_run": args.faulty,
                "reactions_intervals": reactions, "detected": detected.len(), "faulty": reactions.len(),
                "mean_intervals": mean, "max_intervals": max,
                "healthy_canaries": canaries, "false_failures": false_failures, "false_rate": rate,
            })
        );
    } else {
        println!(
            "rollout reaction on sandbox services ({} runs × {} hosts, {} faulty each):",
            args.runs, args.hosts, args.faulty
        );
        println!(
            "  fault onset → failing verdict: {}/{} detected, mean {mean:.2}, max {} intervals (goal ≤ 3)",
            detected.len(),
            reactions.len(),
            max.map_or("-".into(), |m| m.to_string())
        );
        println!(
            "  healthy canaries judged failing: {false_failures}/{canaries} ({:.2} %, goal ≤ 1 %)",
            rate * 100.0
        );
    }
    Ok(Verdict::Met)
}
