//! The merit of a location: health × performance, less the cost of rolling it back, decaying
//! with its errors. Pure functions of their arguments; docs/shadow-engine.md has them in the
//! long form with worked figures.

use bellwether_model::shadow::MeritWeights;
use serde::{Deserialize, Serialize};

/// What the merit of one location is computed from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MeritInputs {
    /// The location answered its last check.
    pub up: bool,
    /// What the check measured of it, in [0, 1] (the share of requests that succeeded, a
    /// file's integrity check); `None`: 1 while up.
    pub health: Option<f64>,
    /// Its last latency (ms); `None`: no figure (no penalty).
    pub latency_ms: Option<f64>,
    /// The bytes a restore into it would write; `None`: no figure (no volume cost).
    pub rollback_bytes: Option<u64>,
    /// Services depending on its data.
    pub dependencies: u32,
    /// Its remembered error count (decayed, see [`decay_errors`]).
    pub errors: f64,
}

/// The performance factor in (0, 1]: `ref / (ref + latency)`, one half at the reference
/// latency; 1 without a figure.
pub fn performance(latency_ms: Option<f64>, w: &MeritWeights) -> f64 {
    match latency_ms {
        Some(l) if l.is_finite() && l >= 0.0 => w.latency_ref_ms / (w.latency_ref_ms + l),
        _ => 1.0,
    }
}

/// The rollback cost in [0, 1): `1 − exp(−(bytes / volume_ref + dependencies ×
/// dependency_cost))`.
pub fn rollback_cost(rollback_bytes: Option<u64>, dependencies: u32, w: &MeritWeights) -> f64 {
    let volume = rollback_bytes.map_or(0.0, |b| b as f64 / w.volume_ref_bytes);
    let x = volume + dependencies as f64 * w.dependency_cost;
    if x.is_finite() && x > 0.0 {
        1.0 - (-x).exp()
    } else if x.is_finite() {
        0.0
    } else {
        1.0
    }
}

/// The remembered error count at `now_ms`: `previous × 0.5^(Δt / half_life) + new`. A clock
/// going back forgets nothing.
pub fn decay_errors(previous: f64, since_ms: i64, now_ms: i64, new: u64, w: &MeritWeights) -> f64 {
    let dt = (now_ms - since_ms).max(0) as f64;
    let half = w.error_half_life.get().as_millis().max(1) as f64;
    let kept = previous.max(0.0) * 0.5f64.powf(dt / half);
    let total = kept + new as f64;
    if total.is_finite() {
        total
    } else {
        f64::MAX
    }
}

/// The error factor in (0, 1]: `0.5^(errors / errors_half)`.
pub fn error_factor(errors: f64, w: &MeritWeights) -> f64 {
    let f = 0.5f64.powf(errors.max(0.0) / w.errors_half);
    if f.is_finite() {
        f
    } else {
        0.0
    }
}

/// The merit in [0, 1]: 0 when down, else
/// `max(0, health^wh × performance^wp − rollback_cost_weight × cost) × error_factor`.
pub fn merit(i: &MeritInputs, w: &MeritWeights) -> f64 {
    if !i.up {
        return 0.0;
    }
    let h = match i.health {
        Some(h) if h.is_finite() => h.clamp(0.0, 1.0),
        Some(_) => 0.0,
        None => 1.0,
    };
    let base = h.powf(w.health) * performance(i.latency_ms, w).powf(w.performance);
    let cost = w.rollback_cost * rollback_cost(i.rollback_bytes, i.dependencies, w);
    let m = (base - cost).max(0.0) * error_factor(i.errors, w);
    if m.is_finite() {
        m.clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// The location to serve from, given each candidate's merit (in the spec's order) and the
/// one routed now: the best, unless the current one is within `hysteresis` of it (then the
/// current one stays). `excluded` (a location known to fail) is never chosen. `None` when no
/// candidate has a merit above 0.
pub fn choose<'a>(
    merits: &[(&'a str, Option<f64>)],
    current: &str,
    excluded: Option<&str>,
    hysteresis: f64,
) -> Option<&'a str> {
    let eligible = |(id, m): &(&'a str, Option<f64>)| {
        let m = (*m)?;
        (Some(*id) != excluded && m > 0.0).then_some((*id, m))
    };
    let mut best: Option<(&'a str, f64)> = None;
    for c in merits.iter().filter_map(eligible) {
        if best.is_none_or(|(_, m)| c.1 > m) {
            best = Some(c);
        }
    }
    let (best_id, best_m) = best?;
    let cur = merits
        .iter()
        .filter_map(eligible)
        .find(|(id, _)| *id == current);
    match cur {
        Some((id, m)) if best_m < m + hysteresis => Some(id),
        _ => Some(best_id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn worked_figures_of_the_docs() {
        let w = MeritWeights::default();
        // 10 ms at a 10 ms reference: performance one half.
        assert!((performance(Some(10.0), &w) - 0.5).abs() < 1e-12);
        // 1 GiB to restore and two dependants: 1 − e^(−1.2) = 0.6988.
        let c = rollback_cost(Some(1 << 30), 2, &w);
        assert!((c - (1.0 - (-1.2f64).exp())).abs() < 1e-12);
        let i = MeritInputs {
            up: true,
            health: None,
            latency_ms: Some(10.0),
            rollback_bytes: None,
            dependencies: 0,
            errors: 5.0,
        };
        // 0.5 × 0.5^(5/5) = 0.25.
        assert!((merit(&i, &w) - 0.25).abs() < 1e-12);
        // Down is 0 whatever else.
        assert_eq!(merit(&MeritInputs { up: false, ..i }, &w), 0.0);
        // Five minutes halve the remembered errors.
        assert!((decay_errors(8.0, 0, 300_000, 1, &w) - 5.0).abs() < 1e-9);
    }

    #[test]
    fn hysteresis_keeps_the_current_location() {
        let m = [("a", Some(0.80)), ("b", Some(0.85))];
        assert_eq!(choose(&m, "a", None, 0.1), Some("a"));
        assert_eq!(choose(&m, "a", None, 0.01), Some("b"));
        assert_eq!(choose(&m, "a", Some("a"), 0.1), Some("b"));
        assert_eq!(
            choose(&[("a", None), ("b", Some(0.0))], "a", None, 0.1),
            None
        );
    }

    proptest! {
        #[test]
        fn merit_stays_in_range(
            up in any::<bool>(),
            health in proptest::option::of(prop_oneof![Just(f64::NAN), -2.0f64..2.0]),
            lat in proptest::option::of(prop_oneof![Just(f64::NAN), Just(f64::INFINITY), -1e9f64..1e12]),
            bytes in proptest::option::of(any::<u64>()),
            deps in any::<u32>(),
            errors in prop_oneof![Just(f64::INFINITY), 0.0f64..1e300],
            wh in 0.0f64..4.0, wp in 0.0f64..4.0, wc in 0.0f64..1.0,
        ) {
            let w = MeritWeights { health: wh, performance: wp, rollback_cost: wc, ..MeritWeights::default() };
            let i = MeritInputs { up, health, latency_ms: lat, rollback_bytes: bytes, dependencies: deps, errors };
            let m = merit(&i, &w);
            prop_assert!((0.0..=1.0).contains(&m), "{m}");
            let c = rollback_cost(bytes, deps, &w);
            prop_assert!((0.0..=1.0).contains(&c));
            // More errors never raise the merit.
            let worse = MeritInputs { errors: errors + 1.0, ..i };
            prop_assert!(merit(&worse, &w) <= m);
        }
    }
}
