//! `bellwether bench rollout-engine`: the rollout engine's decision time on a large fleet, and
//! the rollout watch's reaction time and false failures on synthetic sample streams.

use std::time::{Duration, Instant};

use bellwether_engine::rollout::plan::parse_plan;
use bellwether_engine::rollout::watch::synthetic::{
    false_failure_rate, scenario, Fault, WATCH_PLAN,
};
use bellwether_engine::rollout::{
    ActionResult, Decision, HostInput, HostState, Observation, Phase, Rollout, WatchVerdict,
};
use bellwether_model::HostName;
use serde::Serialize;

use crate::{ensure, BenchError, Context as _, Output, Result, Verdict};

#[derive(Debug, Clone)]
pub struct Options {
    /// Hosts in the simulated rollout whose decision time is measured.
    pub hosts: usize,
    /// Seeded healthy canaries for the false-failure rate (30 s of post-apply samples each).
    pub healthy_runs: u64,
    /// Seeded faulty canaries per fault kind for the reaction time.
    pub fault_runs: u64,
    /// human (default) or json.
    pub output: Output,
}

/// The plan of the decision-time run: fixed waves after a pilot, 10 s bake.
const ENGINE_PLAN: &str = r#"name: bench
update:
  name: websvc
  version: "2"
  apply:  { builtin: set_service_version, version: "2" }
  revert: { builtin: set_service_version, version: "1" }
risk: { low: 0.2, high: 0.5, pilot: { min: 5, max: 20 }, high_risk: include_last }
waves: { fixed: [1, 10, 50, 100] }
bake: 10s
analysis:
  interval: 1s
  metrics:
    - { name: svc_error_ratio, threshold_pct: 50, for: 3s, floor: 0.01 }
rollback:
  pause_when: { hosts: 1000 }
  slow_down_when: { hosts: 500 }
remediation:
  - { match: { attribute: "file:etc/*" }, action: { builtin: restore_file } }
"#;

#[derive(Debug, Serialize)]
struct StepTimes {
    steps: usize,
    mean_us: f64,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
}

impl StepTimes {
    fn of(mut v: Vec<Duration>) -> StepTimes {
        v.sort();
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let n = v.len().max(1);
        let q = |p: f64| {
            v.get(((v.len() as f64 - 1.0) * p).round() as usize)
                .copied()
                .map_or(0.0, us)
        };
        StepTimes {
            steps: v.len(),
            mean_us: v.iter().map(|d| us(*d)).sum::<f64>() / n as f64,
            p50_us: q(0.5),
            p99_us: q(0.99),
            max_us: v.last().copied().map_or(0.0, us),
        }
    }
}

#[derive(Debug, Serialize)]
struct EngineFigures {
    hosts: usize,
    start_ms: f64,
    all_steps: StepTimes,
    /// Ticks, which end waves and dispatch the next wave's applies.
    tick_steps: StepTimes,
    waves: u32,
    failed_hosts: usize,
    final_state: &'static str,
    state_json_bytes: usize,
    state_serialise_ms: f64,
    state_deserialise_ms: f64,
}

#[derive(Debug, Serialize)]
struct Reaction {
    fault: String,
    runs: u64,
    detected: u64,
    mean_intervals: f64,
    max_intervals: f64,
}

#[derive(Debug, Serialize)]
struct Figures {
    engine: EngineFigures,
    reaction: Vec<Reaction>,
    /// Flagger's defaults for comparison: a 1 min analysis interval and a failure threshold of
    /// 5, so about 5 minutes (300 one-second intervals) from a fault to its rollback.
    flagger_default_intervals: f64,
    false_failures: usize,
    healthy_runs: u64,
    false_failure_pct: f64,
}

fn engine_run(hosts: usize) -> Result<EngineFigures> {
    let plan = parse_plan(ENGINE_PLAN, "bench-plan.yaml").context("the bench plan")?;
    let fleet: Vec<HostInput> = (0..hosts)
        .map(|i| HostInput {
            name: HostName::new(format!("host-{i:05}")).expect("a valid name"),
            labels: [("role".to_string(), "web".to_string())].into(),
            attributes: Default::default(),
            probability: ((i * 7919) % 1000) as f64 / 1600.0,
            factors: vec![
                ("package:libssl".into(), 0.1),
                ("drift_overall".into(), 0.05),
            ],
            drift: None,
        })
        .collect();
    let t = Instant::now();
    let (mut r, first) = Rollout::start("r-bench".into(), plan, fleet, 0);
    let start_ms = t.elapsed().as_secs_f64() * 1e3;
    let mut pending: Vec<u64> = dispatched(&first);
    let mut all = Vec::new();
    let mut ticks = Vec::new();
    let mut now = 0i64;
    // One in 200 hosts fails its bake: targeted rollbacks along the way.
    let bad = |h: &HostName| {
        h.as_str()[5..]
            .parse::<usize>()
            .is_ok_and(|i| i % 200 == 17)
    };
    for _ in 0..10_000 {
        if r.phase.is_final() && pending.is_empty() {
            break;
        }
        now += 1000;
        for id in std::mem::take(&mut pending) {
            let t = Instant::now();
            let d = r.step(Observation::ActionFinished {
                action_id: id,
                result: ActionResult::Ok,
                now_ms: now,
            });
            all.push(t.elapsed());
            pending.extend(dispatched(&d));
        }
        let watched: Vec<HostName> = r
            .hosts
            .values()
            .filter(|h| h.state == HostState::Baking)
            .map(|h| h.name.clone())
            .collect();
        for h in watched {
            let verdict = if bad(&h) {
                WatchVerdict::Failing {
                    reason: "svc_error_ratio breached".into(),
                    figures: serde_json::json!({}),
                }
            } else {
                WatchVerdict::Healthy
            };
            let t = Instant::now();
            let d = r.step(Observation::HostWatch {
                host: h,
                verdict,
                now_ms: now,
                data_ms: None,
            });
            all.push(t.elapsed());
            pending.extend(dispatched(&d));
        }
        let t = Instant::now();
        let d = r.step(Observation::Tick { now_ms: now });
        let took = t.elapsed();
        all.push(took);
        ticks.push(took);
        pending.extend(dispatched(&d));
    }
    let t = Instant::now();
    let json = serde_json::to_string(&r)?;
    let ser = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let back: Rollout = serde_json::from_str(&json)?;
    let de = t.elapsed().as_secs_f64() * 1e3;
    ensure!(back == r, "the state did not round-trip");
    Ok(EngineFigures {
        hosts,
        start_ms,
        all_steps: StepTimes::of(all),
        tick_steps: StepTimes::of(ticks),
        waves: r.wave + 1,
        failed_hosts: r.failed_total,
        final_state: match r.phase {
            Phase::Completed => "completed",
            Phase::Paused => "paused",
            Phase::Aborted => "aborted",
            Phase::Running => "running",
        },
        state_json_bytes: json.len(),
        state_serialise_ms: ser,
        state_deserialise_ms: de,
    })
}

fn dispatched(d: &[Decision]) -> Vec<u64> {
    d.iter()
        .filter_map(|d| match d {
            Decision::Dispatch { action_id, .. } => Some(*action_id),
            _ => None,
        })
        .collect()
}

fn reaction(runs: u64) -> Result<Vec<Reaction>> {
    let plan = parse_plan(WATCH_PLAN, "watch-plan.yaml")?;
    let mut out = Vec::new();
    for (name, fault) in [
        ("error ratio 30 %", Fault::ErrorRate(0.3)),
        ("latency ×4", Fault::LatencyFactor(4.0)),
    ] {
        let mut delays = Vec::new();
        for seed in 0..runs {
            let onset = 5 + (seed as i64 % 20);
            if let Some((at, v)) = scenario(&plan, seed, 60, fault, onset) {
                if matches!(
                    v,
                    WatchVerdict::Failing { .. } | WatchVerdict::Critical { .. }
                ) && at >= onset * 1000
                {
                    delays.push((at - onset * 1000) as f64 / 1000.0);
                }
            }
        }
        let n = delays.len().max(1) as f64;
        out.push(Reaction {
            fault: name.into(),
            runs,
            detected: delays.len() as u64,
            mean_intervals: delays.iter().sum::<f64>() / n,
            max_intervals: delays.iter().copied().fold(0.0, f64::max),
        });
    }
    Ok(out)
}

pub fn run(args: &Options) -> Result<Verdict> {
    if args.hosts == 0 {
        return Err(BenchError::Usage("--hosts must be at least 1".into()));
    }
    let engine = engine_run(args.hosts)?;
    let reaction = reaction(args.fault_runs)?;
    let plan = parse_plan(WATCH_PLAN, "watch-plan.yaml")?;
    let (false_failures, healthy_runs) = false_failure_rate(&plan, args.healthy_runs, 30);
    let figures = Figures {
        engine,
        reaction,
        flagger_default_intervals: 300.0,
        false_failures,
        healthy_runs,
        false_failure_pct: false_failures as f64 * 100.0 / healthy_runs.max(1) as f64,
    };
    if args.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&figures)?);
        return Ok(Verdict::Met);
    }
    let e = &figures.engine;
    println!(
        "Rollout engine, {} hosts ({} waves, {} failed hosts, {}):",
        e.hosts, e.waves, e.failed_hosts, e.final_state
    );
    println!(
        "  start (scoring bands, pilot, waves): {:.2} ms",
        e.start_ms
    );
    for (name, s) in [
        ("every step", &e.all_steps),
        ("ticks (wave ends)", &e.tick_steps),
    ] {
        println!(
            "  {name:<18} {:>7} steps: mean {:.1} µs, p50 {:.1} µs, p99 {:.1} µs, max {:.3} ms (goal ≤ 100 ms)",
            s.steps,
            s.mean_us,
            s.p50_us,
            s.p99_us,
            s.max_us / 1000.0
        );
    }
    println!(
        "  state: {} bytes of JSON, serialised in {:.1} ms, restored in {:.1} ms",
        e.state_json_bytes, e.state_serialise_ms, e.state_deserialise_ms
    );
    println!("Reaction, fault onset to the failing verdict (the engine dispatches the rollback in the same step):");
    for r in &figures.reaction {
        println!(
            "  {:<18} detected {}/{}: mean {:.2}, max {:.0} sampling intervals (goal ≤ 3; Flagger defaults ≈ {:.0})",
            r.fault, r.detected, r.runs, r.mean_intervals, r.max_intervals, figures.flagger_default_intervals
        );
    }
    println!(
        "False failures of healthy canaries: {} of {} ({:.2} %, goal ≤ 1 %)",
        figures.false_failures, figures.healthy_runs, figures.false_failure_pct
    );
    Ok(Verdict::Met)
}
