//! Deterministic synthetic sample streams: a host's error ratio and p99 latency with seeded
//! noise, optionally with a fault from an onset. The watch's tests and `bellwether bench
//! rollout-engine` measure reaction time and false failures with them; nothing in a real
//! rollout uses this module.

use bellwether_model::HostName;

use super::{HostWatcher, WatchVerdict};
use crate::rollout::plan::Plan;

/// The seeded generator of the streams: the one of [`bellwether_model::rng`].
pub use bellwether_model::rng::SplitMix64 as Rng;

/// What goes wrong on the canary from the onset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    None,
    /// The error ratio jumps to this level.
    ErrorRate(f64),
    /// The p99 latency is multiplied by this.
    LatencyFactor(f64),
}

/// One host's samples: an error ratio near 1 % (σ 0.3 points) and a p99 latency near 50 ms
/// (σ 8 %), with the fault applied.
pub fn sample(rng: &mut Rng, fault: Fault) -> (f64, f64) {
    let mut err = (0.01 + 0.003 * rng.normal()).max(0.0);
    let mut lat = 50.0 * (1.0 + 0.08 * rng.normal()).max(0.5);
    match fault {
        Fault::None => {}
        Fault::ErrorRate(r) => err = (r + 0.02 * rng.normal()).clamp(0.0, 1.0),
        Fault::LatencyFactor(f) => lat *= f,
    }
    (err, lat)
}

fn hn(s: &str) -> HostName {
    HostName::new(s).expect("a valid host name")
}

/// A canary host and its control hosts, fed from one generator.
pub struct Run {
    pub canary: HostWatcher,
    pub controls: Vec<HostWatcher>,
    pub rng: Rng,
}

impl Run {
    /// The plan must watch `svc_error_ratio` and `svc_latency_p99_ms`.
    pub fn new(plan: &Plan, seed: u64, controls: usize) -> Run {
        let w =
            |name: &str| HostWatcher::new(plan, hn(name)).expect("the plan's analysis is valid");
        Run {
            canary: w("canary"),
            controls: (0..controls).map(|i| w(&format!("control-{i}"))).collect(),
            rng: Rng::new(seed),
        }
    }

    /// One round of samples at `t`: the canary with `fault`, the controls healthy.
    pub fn feed(&mut self, t: i64, fault: Fault) {
        let (e, l) = sample(&mut self.rng, fault);
        feed_one(&mut self.canary, t, e, l);
        for c in &mut self.controls {
            let (e, l) = sample(&mut self.rng, Fault::None);
            feed_one(c, t, e, l);
        }
    }

    pub fn verdict(&self, t: i64) -> WatchVerdict {
        let c: Vec<&HostWatcher> = self.controls.iter().collect();
        self.canary.verdict(t, &c)
    }
}

fn feed_one(w: &mut HostWatcher, t: i64, err: f64, lat: f64) {
    // Timestamps increase and both metrics are in the plan, so these cannot fail.
    let _ = w.observe(t, "svc_error_ratio", err);
    let _ = w.observe(t, "svc_latency_p99_ms", lat);
}

const S: i64 = 1000;

/// Runs 40 s of baseline (one sample a second), applies, then `post` seconds with `fault` from
/// `onset` seconds after the apply, asking for a verdict every second. Returns the first
/// non-healthy verdict's time after the apply, with the verdict.
pub fn scenario(
    plan: &Plan,
    seed: u64,
    post: i64,
    fault: Fault,
    onset: i64,
) -> Option<(i64, WatchVerdict)> {
    let mut run = Run::new(plan, seed, 3);
    for t in 0..40 {
        run.feed(t * S, Fault::None);
    }
    let applied = 40 * S;
    run.canary.mark_applied(applied);
    for s in 1..=post {
        let t = applied + s * S;
        run.feed(t, if s >= onset { fault } else { Fault::None });
        let v = run.verdict(t);
        if v != WatchVerdict::Healthy {
            return Some((t - applied, v));
        }
    }
    None
}

/// Over `runs` seeded healthy canaries of `post` seconds each, how many did the watch fail?
/// Returns `(failed, runs)`.
pub fn false_failure_rate(plan: &Plan, runs: u64, post: i64) -> (usize, u64) {
    let failed = (0..runs)
        .filter(|seed| scenario(plan, 10_000 + seed, post, Fault::None, 0).is_some())
        .count();
    (failed, runs)
}

/// The plan the synthetic streams are tuned for: error ratio (50 %, 3 s, floor 0.01) and p99
/// latency (100 %, 3 s, weight 0.5), sampled every second, judged against controls.
pub const WATCH_PLAN: &str = r#"name: watch
update:
  name: websvc
  version: "2"
  apply:  { builtin: set_service_version, version: "2" }
  revert: { builtin: set_service_version, version: "1" }
bake: 30s
analysis:
  interval: 1s
  baseline: 30s
  metrics:
    - { name: svc_error_ratio, direction: increase, threshold_pct: 50, for: 3s, weight: 1.0, floor: 0.01 }
    - { name: svc_latency_p99_ms, direction: increase, threshold_pct: 100, for: 3s, weight: 0.5 }
  judge: { enabled: true, confidence: 0.98, marginal: 50, pass: 75 }
  drift_rise_limit: 0.3
no_data: { after: 5s }
"#;
