//! Edges from the change history: settings changed together (co-change statistics) and
//! metrics that moved after a setting changed (metric impact).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::graph::{metric_node, Edge, EdgeKind, Evidence, EvidenceSource};
use crate::snapshot::ConfigChange;

/// What happened after one applied change (the config engine's outcome, from the event log).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeOutcome {
    /// The keys the change set.
    pub keys: Vec<String>,
    /// Per metric name (`tps`, `latency_ms`…), the relative change after the apply
    /// (`+0.25` = 25 % up), when measured.
    pub metric_shift: Vec<(String, f64)>,
    /// The change was reverted as harmful.
    pub reverted: bool,
    pub time_ms: i64,
}

/// A change set with more keys than this (a snapshot restore, a bulk import) is left out of
/// co-change counts: it says nothing about which settings belong together, and its pairs
/// would grow quadratically.
pub const MAX_KEYS_PER_SET: usize = 64;
/// A pair needs at least this many change sets in common to become an edge.
pub const MIN_PAIR_SUPPORT: usize = 2;
/// Co-change is never proof: its confidence stays at or below this.
pub const MAX_CO_CHANGE_CONFIDENCE: f64 = 0.9;
/// A metric-impact edge needs at least this many measured changes of the setting.
pub const MIN_METRIC_OBSERVATIONS: usize = 3;
/// And a mean shift at least this large (relative, 0.05 = 5 %).
pub const MIN_METRIC_SHIFT: f64 = 0.05;

/// `influences` edges between settings changed within `window_ms` of each other by the same
/// author, with confidence from support and lift, evidence the counts.
///
/// Changes are grouped into change sets: per (host, source, author), a set starts at a change
/// and takes every change up to `window_ms` after it. For settings `a`, `b` in `n_ab` of `N`
/// sets (`a` in `n_a`, `b` in `n_b`): support = `n_ab / N`, lift = `n_ab · N / (n_a · n_b)`.
/// A pair with `n_ab >= MIN_PAIR_SUPPORT` and lift > 1 gives two edges, `a → b` with
/// confidence `P(b | a) · n_ab / (n_ab + 2)` (the estimate shrunk for few sets), capped at
/// [`MAX_CO_CHANGE_CONFIDENCE`], and `b → a` likewise. Reverts are left out (they undo
/// changes, not make them). Deterministic: sorted by (from, to).
pub fn co_change_edges(history: &[ConfigChange], window_ms: i64) -> Vec<Edge> {
    use crate::snapshot::ChangeSource;
    let window = window_ms.max(0);
    let mut sorted: Vec<&ConfigChange> = history
        .iter()
        .filter(|c| c.source != ChangeSource::Revert)
        .collect();
    sorted.sort_by(|a, b| {
        (&a.host, &a.source_name, &a.author, a.time_ms).cmp(&(
            &b.host,
            &b.source_name,
            &b.author,
            b.time_ms,
        ))
    });
    let mut sets: Vec<Vec<&str>> = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    let mut start: Option<(&str, &str, &str, i64)> = None;
    for c in sorted {
        let same = start.is_some_and(|(h, s, a, t)| {
            h == c.host
                && s == c.source_name
                && a == c.author
                && c.time_ms.saturating_sub(t) <= window
        });
        if !same {
            if !current.is_empty() {
                sets.push(std::mem::take(&mut current));
            }
            start = Some((&c.host, &c.source_name, &c.author, c.time_ms));
        }
        if !current.contains(&c.key.as_str()) {
            current.push(&c.key);
        }
    }
    if !current.is_empty() {
        sets.push(current);
    }
    sets.retain(|s| s.len() <= MAX_KEYS_PER_SET);
    let n_sets = sets.len();
    let mut single: BTreeMap<&str, usize> = BTreeMap::new();
    let mut pairs: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for set in &sets {
        let mut keys = set.clone();
        keys.sort_unstable();
        for (i, a) in keys.iter().enumerate() {
            *single.entry(a).or_default() += 1;
            for b in &keys[i + 1..] {
                *pairs.entry((a, b)).or_default() += 1;
            }
        }
    }
    let mut edges = Vec::new();
    for (&(a, b), &n_ab) in &pairs {
        if n_ab < MIN_PAIR_SUPPORT {
            continue;
        }
        let n_a = single[a];
        let n_b = single[b];
        let support = n_ab as f64 / n_sets as f64;
        let lift = (n_ab * n_sets) as f64 / (n_a * n_b) as f64;
        if lift <= 1.0 {
            continue;
        }
        let shrink = n_ab as f64 / (n_ab as f64 + 2.0);
        for (from, to, n_from) in [(a, b, n_a), (b, a, n_b)] {
            let conf = ((n_ab as f64 / n_from as f64) * shrink).min(MAX_CO_CHANGE_CONFIDENCE);
            edges.push(Edge {
                from: from.to_string(),
                to: to.to_string(),
                kind: EdgeKind::Influences,
                confidence: conf,
                evidence: vec![Evidence {
                    source: EvidenceSource::CoChange,
                    detail: format!(
                        "changed together in {n_ab} of {n_sets} change sets (window {window} ms): \
                         {from} in {n_from}, {to} in {}; support {support:.3}, lift {lift:.2}",
                        if from == a { n_b } else { n_a }
                    ),
                }],
                condition: None,
            });
        }
    }
    edges.sort_by(|x, y| (&x.from, &x.to).cmp(&(&y.from, &y.to)));
    edges
}

/// `influences` edges from settings to `metric:NAME` nodes where changes of the setting were
/// followed by a consistent shift of the metric.
///
/// For each (setting, metric) with at least [`MIN_METRIC_OBSERVATIONS`] measured changes
/// whose mean shift is at least [`MIN_METRIC_SHIFT`] in size: confidence = the share of the
/// shifts in the mean's direction, times `n / (n + 2)`, times `1 / k̄` where `k̄` is the mean
/// number of settings the changes set together (a shift after a change of five settings is a
/// fifth as much evidence about each), capped at 0.95. Non-finite shifts are ignored.
pub fn metric_impact_edges(outcomes: &[ChangeOutcome]) -> Vec<Edge> {
    #[derive(Default)]
    struct Acc {
        shifts: Vec<f64>,
        keys_per_change: Vec<usize>,
        reverted: usize,
    }
    let mut acc: BTreeMap<(&str, &str), Acc> = BTreeMap::new();
    for o in outcomes {
        let mut keys: Vec<&str> = o.keys.iter().map(String::as_str).collect();
        keys.sort_unstable();
        keys.dedup();
        for key in &keys {
            for (metric, shift) in &o.metric_shift {
                if !shift.is_finite() {
                    continue;
                }
                let a = acc.entry((key, metric.as_str())).or_default();
                a.shifts.push(*shift);
                a.keys_per_change.push(keys.len());
                if o.reverted {
                    a.reverted += 1;
                }
            }
        }
    }
    let mut edges = Vec::new();
    for ((key, metric), a) in acc {
        let n = a.shifts.len();
        if n < MIN_METRIC_OBSERVATIONS {
            continue;
        }
        let mean = a.shifts.iter().sum::<f64>() / n as f64;
        if mean.abs() < MIN_METRIC_SHIFT {
            continue;
        }
        let same = a
            .shifts
            .iter()
            .filter(|s| s.signum() == mean.signum() && **s != 0.0)
            .count();
        let k_mean = a.keys_per_change.iter().sum::<usize>() as f64 / n as f64;
        let conf = (same as f64 / n as f64) * (n as f64 / (n as f64 + 2.0)) / k_mean.max(1.0);
        let conf = conf.min(0.95);
        if conf <= 0.0 {
            continue;
        }
        edges.push(Edge {
            from: key.to_string(),
            to: metric_node(metric),
            kind: EdgeKind::Influences,
            confidence: conf,
            evidence: vec![Evidence {
                source: EvidenceSource::MetricImpact,
                detail: format!(
                    "{n} measured changes of {key} were followed by {metric} moving {:+.1} % on \
                     average, {same} of {n} in that direction ({} reverted as harmful; {k_mean:.1} \
                     settings changed per change on average)",
                    mean * 100.0,
                    a.reverted
                ),
            }],
            condition: None,
        });
    }
    edges
}
