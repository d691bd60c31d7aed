//! The formulas: weight, health score, replication factor and mode. Pure functions of their
//! arguments; docs/mirror-engine.md has them in the long form.

use bellwether_model::mirror::{DepKind, DependencySpec, MirrorPolicy, Mode, ModeSetting};

/// The request rate (req/s, summed over the dependency's instances) at which the traffic term
/// of the weight is 1 − 1/e ≈ 0.63. A dependency at a few req/s weighs little more than one
/// without traffic; one at several hundred req/s has a traffic term near 1.
pub const RATE_SCALE: f64 = 100.0;

/// Default time constant of the smoothed request rate the weight uses (ms): a burst moves the
/// weight little, a lasting change moves it fully within a few minutes. A dependency's
/// `policy.rate_smoothing` sets its own (the engine uses that; this is its default).
pub const RATE_TAU_MS: f64 = 60_000.0;

/// Time constant of the smoothed primary health the replication factor uses (ms), so that a
/// health that oscillates interval by interval does not move the mirror count.
pub const HEALTH_TAU_MS: f64 = 30_000.0;

/// A latency up to this many times the instance's baseline costs no health.
pub const LATENCY_TOLERANCE: f64 = 2.0;

/// Baselines below this (ms) count as this, so a latency under `LATENCY_TOLERANCE ×` 5 ms =
/// 10 ms never costs health: below that a check's round trip varies with the host's load (a
/// mirror being copied, a busy scheduler) more than with the dependency's health.
pub const LATENCY_FLOOR_MS: f64 = 5.0;

/// Weight of the latency baseline's newest normal sample (an exponential moving average over
/// samples within [`LATENCY_TOLERANCE`] of the baseline only, so a slowdown does not become
/// the baseline).
pub const LATENCY_BASELINE_ALPHA: f64 = 0.05;

/// Each 1 % of failed requests costs this many % of health: 12.5 % errors halve it, 25 %
/// zero it.
pub const ERROR_PENALTY: f64 = 4.0;

/// A mirror lagging by up to this many health intervals is caught up (costs no health).
pub const LAG_FREE_INTERVALS: f64 = 2.0;

/// Auto mode: active-active from `weight ≥ (1 + MODE_BAND) × mirror_cost`, active-passive from
/// `weight ≤ (1 − MODE_BAND) × mirror_cost`; in between the mode stays.
pub const MODE_BAND: f64 = 0.1;

/// Exponential smoothing factor for a step of `dt_ms` with time constant `tau_ms`.
pub fn alpha(dt_ms: i64, tau_ms: f64) -> f64 {
    if dt_ms <= 0 {
        return 0.0;
    }
    1.0 - (-(dt_ms as f64) / tau_ms).exp()
}

/// The traffic term in [0, 1): `1 − exp(−rps / RATE_SCALE)`; 0 without a figure.
pub fn traffic(rps: Option<f64>) -> f64 {
    match rps {
        Some(r) if r.is_finite() && r > 0.0 => 1.0 - (-r / RATE_SCALE).exp(),
        _ => 0.0,
    }
}

/// The weight (criticality) in [0, 1]:
///
/// `weight = tier_factor × (0.5 + 0.5 × impact) × (0.25 + 0.75 × traffic(rps))`
///
/// with the tier factor of [`bellwether_model::mirror::Tier::factor`] (critical 1, high 0.7,
/// medium 0.4, low 0.15), the declared impact in [0, 1] and the smoothed request rate the
/// proxy measures. The impact can halve the weight and the traffic quarter it; neither can
/// zero it: a critical dependency without traffic (yet) still weighs 0.125 to 0.25.
pub fn weight(spec: &DependencySpec, rps: Option<f64>) -> f64 {
    let impact = if spec.impact.is_finite() {
        spec.impact.clamp(0.0, 1.0)
    } else {
        0.5
    };
    (spec.tier.factor() * (0.5 + 0.5 * impact) * (0.25 + 0.75 * traffic(rps))).clamp(0.0, 1.0)
}

/// The figures the health score of one instance is made of.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthInputs {
    pub up: bool,
    pub latency_ms: Option<f64>,
    /// The instance's latency baseline (ms), if it has one yet.
    pub baseline_ms: Option<f64>,
    pub error_rate: Option<f64>,
    /// Replication lag in time (mirrors only), ms.
    pub lag_ms: Option<i64>,
}

/// The health score in [0, 1]:
///
/// `health = 0` when the check is down, else `lat × err × lag` with
/// - `lat = min(1, LATENCY_TOLERANCE / (latency / max(baseline, LATENCY_FLOOR_MS)))`
///   (1 without a latency or a baseline),
/// - `err = max(0, 1 − ERROR_PENALTY × error_rate)` (1 without an error rate),
/// - `lag = clamp(1 − (lag − LAG_FREE_INTERVALS × interval) / catch_up_timeout, 0, 1)`
///   (1 for the primary and without a lag).
pub fn health(h: &HealthInputs, policy: &MirrorPolicy) -> f64 {
    if !h.up {
        return 0.0;
    }
    let lat = match (h.latency_ms, h.baseline_ms) {
        (Some(l), Some(b)) if l.is_finite() && l > 0.0 && b.is_finite() => {
            let ratio = l / b.max(LATENCY_FLOOR_MS);
            (LATENCY_TOLERANCE / ratio).min(1.0)
        }
        _ => 1.0,
    };
    let err = match h.error_rate {
        Some(e) if e.is_finite() => (1.0 - ERROR_PENALTY * e.clamp(0.0, 1.0)).max(0.0),
        _ => 1.0,
    };
    let lag = match h.lag_ms {
        Some(l) => {
            let free = LAG_FREE_INTERVALS * policy.health_interval.get().as_millis() as f64;
            let span = (policy.catch_up_timeout.get().as_millis() as f64).max(1.0);
            (1.0 - (l as f64 - free) / span).clamp(0.0, 1.0)
        }
        None => 1.0,
    };
    (lat * err * lag).clamp(0.0, 1.0)
}

/// The replication factor before rounding, in [min_mirrors, max_mirrors] (the seed's
/// `adjust_dependencies`: weight × (1 + health impact), damped by the cost):
///
/// `demand = weight × (1 + (1 − health)) / (1 + mirror_cost)`,
/// `target = min + (max − min) × min(1, demand)`
///
/// with `health` the primary's smoothed health (1 before any observation: no data asks for
/// nothing).
pub fn target_raw(spec: &DependencySpec, weight: f64, health: f64) -> f64 {
    let p = &spec.policy;
    let impact = 1.0 - health.clamp(0.0, 1.0);
    let cost = if spec.mirror_cost.is_finite() {
        spec.mirror_cost.max(0.0)
    } else {
        0.0
    };
    let demand = (weight * (1.0 + impact) / (1.0 + cost)).clamp(0.0, 1.0);
    p.min_mirrors as f64 + (p.max_mirrors as f64 - p.min_mirrors as f64) * demand
}

/// The mirror count after the hysteresis `h`, from the current count `n` and the raw target.
/// The count follows `round(raw)`, but only once `raw` has passed the rounding midpoint by
/// `h / 2`: up to `floor(raw + 0.5 − h/2)` when `raw ≥ n + 0.5 + h/2`, down to
/// `ceil(raw − 0.5 + h/2)` when `raw ≤ n − 0.5 − h/2`, else `n`; always within the bounds.
/// A target oscillating inside a dead band of width `h` around a midpoint never moves the
/// count. (The engine also holds a fall for `failback_after`.)
pub fn target_mirrors(n: u32, raw: f64, policy: &MirrorPolicy) -> u32 {
    let half = policy.hysteresis.max(0.0) / 2.0;
    let nf = n as f64;
    let next = if raw >= nf + 0.5 + half {
        (raw + 0.5 - half).floor()
    } else if raw <= nf - 0.5 - half {
        (raw - 0.5 + half).ceil()
    } else {
        nf
    };
    (next.max(0.0) as u32).clamp(policy.min_mirrors, policy.max_mirrors)
}

/// The mode in force: the operator's, or under `auto` active-active when the weight is worth
/// the cost of a serving mirror (with the band [`MODE_BAND`] around it). TCP dependencies are
/// always active-passive (the proxy cannot tell their reads from their writes).
pub fn mode(spec: &DependencySpec, weight: f64, current: Mode) -> Mode {
    if spec.kind == DepKind::Tcp {
        return Mode::ActivePassive;
    }
    match spec.policy.mode {
        ModeSetting::ActiveActive => Mode::ActiveActive,
        ModeSetting::ActivePassive => Mode::ActivePassive,
        ModeSetting::Auto => {
            let c = spec.mirror_cost.max(0.0);
            if weight >= (1.0 + MODE_BAND) * c {
                Mode::ActiveActive
            } else if weight <= (1.0 - MODE_BAND) * c {
                Mode::ActivePassive
            } else {
                current
            }
        }
    }
}
