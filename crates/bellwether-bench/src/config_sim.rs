//! `bellwether bench config-simulate`: the change simulator's latency on a synthetic graph of
//! 100,000 settings (goal ≤ 100 ms), with a catalog to match.
//!
//! The graph is seeded and shaped like a large configuration: settings in categories of a few
//! hundred that mostly link within their category, about 1 % hub settings that many others
//! link to (as `max_connections` or `shared_buffers` are), and a third of the settings
//! influencing one of a few metric nodes; about 3 edges per setting in all. A fifth of the
//! edges carry a checkable condition (the simulator evaluates the ones a change touches).
//! Each run proposes new, valid values for a few random numeric settings.
//!
//! Three figures: `simulate` as a caller without state sees it (the graph index is built in the
//! call), `simulate_with_index` with an index the caller keeps, and for comparison the impact
//! search done naively (a full scan of the edges per depth level, no index).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use bellwether_config::graph::{
    metric_node, Edge, EdgeKind, Evidence, EvidenceSource, Graph, Node,
};
use bellwether_config::rules::{Constraint, Pred};
use bellwether_config::setting::{Catalog, Context, Setting, VarType};
use bellwether_config::simulate::{
    simulate, simulate_with_index, SimInput, Verdict as SimVerdict, IMPACT_DEPTH,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::{ensure, Output, Result, Verdict};

#[derive(Debug, Clone)]
pub struct Options {
    /// Settings in the synthetic catalog and graph.
    pub settings: usize,
    /// Simulations timed (each with fresh keys).
    pub runs: usize,
    /// Settings changed per simulation.
    pub keys: usize,
    pub seed: u64,
    pub output: Output,
}

/// The goal: p99 of a stateless `simulate` call.
pub const GOAL_MS: f64 = 100.0;
const CATEGORY: usize = 300;
const METRICS: &[&str] = &[
    "tps",
    "latency_ms",
    "errors_per_s",
    "temp_bytes_per_s",
    "blks_read_per_s",
];

#[derive(Debug, Serialize)]
pub struct Times {
    pub runs: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Times {
    fn of(mut d: Vec<Duration>) -> Times {
        d.sort();
        let ms = |x: Duration| x.as_secs_f64() * 1000.0;
        let at = |q: f64| ms(d[((d.len() as f64 - 1.0) * q).round() as usize]);
        Times {
            runs: d.len(),
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            max_ms: ms(*d.last().unwrap_or(&Duration::ZERO)),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Figures {
    pub settings: usize,
    pub nodes: usize,
    pub edges: usize,
    pub conditional_edges: usize,
    pub keys_per_change: usize,
    pub build_graph_ms: f64,
    pub build_index_ms: f64,
    /// `simulate` (index built in the call).
    pub simulate: Times,
    /// `simulate_with_index` (index kept by the caller).
    pub simulate_warm: Times,
    /// The impact search alone, naive (a scan of every edge per depth level).
    pub naive_impacts: Times,
    pub mean_impacted: f64,
    pub goal_ms: f64,
}

/// A synthetic setting's type, unit, bounds, value and enum values.
type Shape = (
    VarType,
    Option<&'static str>,
    Option<f64>,
    Option<f64>,
    String,
    Vec<String>,
);

/// A synthetic catalog and graph of `n` settings (seeded).
pub fn synthetic(n: usize, seed: u64) -> (Catalog, Graph) {
    let mut rng = StdRng::seed_from_u64(seed);
    let name = |i: usize| format!("s{i:06}");
    let mut settings = BTreeMap::new();
    let mut nodes = Vec::with_capacity(n + METRICS.len());
    for i in 0..n {
        let r: f64 = rng.gen();
        let (vartype, unit, min, max, value, enumvals): Shape = if r < 0.6 {
            let max = 10f64.powi(rng.gen_range(2..9));
            let v = rng.gen_range(1.0..max / 4.0).round();
            let unit = [None, Some("kB"), Some("8kB"), Some("ms"), Some("s")][rng.gen_range(0..5)];
            (
                VarType::Integer,
                unit,
                Some(0.0),
                Some(max),
                format!("{v}"),
                vec![],
            )
        } else if r < 0.8 {
            (
                VarType::Real,
                None,
                Some(0.0),
                Some(100.0),
                format!("{:.2}", rng.gen_range(0.0..50.0)),
                vec![],
            )
        } else if r < 0.9 {
            (
                VarType::Bool,
                None,
                None,
                None,
                if rng.gen_bool(0.5) { "on" } else { "off" }.to_string(),
                vec![],
            )
        } else {
            let vals = vec!["low".to_string(), "medium".to_string(), "high".to_string()];
            (
                VarType::Enum,
                None,
                None,
                None,
                vals[rng.gen_range(0..3)].clone(),
                vals,
            )
        };
        let context = match rng.gen_range(0..10) {
            0..=3 => Context::User,
            4..=6 => Context::Sighup,
            7..=8 => Context::Postmaster,
            _ => Context::Superuser,
        };
        nodes.push(Node {
            name: name(i),
            value: Some(value.clone()),
            time_ms: None,
            author: None,
            context: Some(context),
        });
        settings.insert(
            name(i),
            Setting {
                name: name(i),
                value: value.clone(),
                unit: unit.map(str::to_string),
                vartype,
                context,
                min,
                max,
                enumvals,
                boot_val: Some(value.clone()),
                reset_val: Some(value),
                source: "default".to_string(),
                sourcefile: None,
                sourceline: None,
                pending_restart: false,
                category: format!("category {}", i / CATEGORY),
                short_desc: String::new(),
            },
        );
    }
    for m in METRICS {
        nodes.push(Node::named(metric_node(m)));
    }
    let hubs = (n / 100).max(1);
    let ev = |detail: &str| {
        vec![Evidence {
            source: EvidenceSource::Probe,
            detail: detail.to_string(),
        }]
    };
    let mut edges = Vec::with_capacity(n * 3 + n / 3);
    for i in 0..n.max(1) {
        if n < 2 {
            break;
        }
        // 1 to 4 edges to other settings, mostly within the category, a tenth to a hub.
        for _ in 0..rng.gen_range(1..=4) {
            let j = if rng.gen_bool(0.1) {
                rng.gen_range(0..hubs) * 100
            } else {
                let base = (i / CATEGORY) * CATEGORY;
                (base + rng.gen_range(0..CATEGORY)).min(n - 1)
            };
            if j == i {
                continue;
            }
            let roll: f64 = rng.gen();
            let (kind, confidence, condition) = if roll < 0.8 {
                (EdgeKind::Influences, rng.gen_range(0.2..0.95), None)
            } else if roll < 0.95 {
                let cond = Constraint::NoEffectUnless {
                    key: name(i),
                    unless_key: name(j),
                    unless_pred: Pred::Ne("off".to_string()),
                };
                (EdgeKind::Requires, 1.0, Some(cond))
            } else {
                // A hard constraint the current values keep: from > 1e12 ⇒ to <= 0 (never
                // triggered by the proposed values, which stay within the settings' bounds,
                // so every run is evaluated in full rather than refused early).
                let cond = Constraint::Implies {
                    if_key: name(i),
                    if_pred: Pred::Gt(1e12),
                    then_key: name(j),
                    then_pred: Pred::Le(0.0),
                };
                (EdgeKind::ConflictsWith, 1.0, Some(cond))
            };
            edges.push(Edge {
                from: name(i),
                to: name(j),
                kind,
                confidence,
                evidence: ev("synthetic"),
                condition,
            });
        }
        if rng.gen_bool(0.33) {
            edges.push(Edge {
                from: name(i),
                to: metric_node(METRICS[rng.gen_range(0..METRICS.len())]),
                kind: EdgeKind::Influences,
                confidence: rng.gen_range(0.1..0.8),
                evidence: ev("synthetic metric impact"),
                condition: None,
            });
        }
    }
    let mut graph = Graph::default();
    graph.merge(nodes, edges);
    (
        Catalog {
            server_version_num: 150_004,
            settings,
        },
        graph,
    )
}

/// A change of `keys` random numeric settings to valid new values.
fn proposal(
    catalog: &Catalog,
    names: &[&String],
    keys: usize,
    rng: &mut StdRng,
) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    while out.len() < keys {
        let name = names[rng.gen_range(0..names.len())];
        let Some(s) = catalog.get(name) else { continue };
        if !seen.insert(name.clone()) {
            continue;
        }
        let v = match s.vartype {
            VarType::Integer => {
                let cur: f64 = s.value.parse().unwrap_or(1.0);
                format!("{}", (cur * 2.0 + 1.0).min(s.max.unwrap_or(1e6)).round())
            }
            VarType::Real => format!("{:.2}", rng.gen_range(0.0..100.0)),
            VarType::Bool => if s.value == "on" { "off" } else { "on" }.to_string(),
            _ => "high".to_string(),
        };
        out.push((name.clone(), Some(v)));
    }
    out
}

/// The impact search without an index: every depth level scans every edge.
fn naive_impacts(graph: &Graph, changed: &[String], depth: usize) -> usize {
    let mut best: HashMap<&str, f64> = changed.iter().map(|k| (k.as_str(), 1.0)).collect();
    let mut frontier: HashMap<&str, f64> = best.clone();
    for _ in 0..depth {
        let mut next: HashMap<&str, f64> = HashMap::new();
        for e in &graph.edges {
            let mut steps: [Option<(&str, &str)>; 2] = [Some((&e.from, &e.to)), None];
            if e.kind != EdgeKind::Influences {
                steps[1] = Some((&e.to, &e.from));
            }
            for (a, b) in steps.into_iter().flatten() {
                if let Some(c) = frontier.get(a) {
                    let v = c * e.confidence;
                    if best.get(b).is_none_or(|old| v > *old)
                        && next.get(b).is_none_or(|old| v > *old)
                    {
                        next.insert(b, v);
                    }
                }
            }
        }
        for (k, v) in &next {
            best.insert(k, *v);
        }
        if next.is_empty() {
            break;
        }
        frontier = next;
    }
    best.len() - changed.len()
}

pub fn run(args: &Options) -> Result<Verdict> {
    ensure!(args.settings >= 10, "--settings must be at least 10");
    ensure!(args.runs >= 1, "--runs must be at least 1");
    ensure!(
        args.keys >= 1 && args.keys <= args.settings / 2,
        "--keys must be between 1 and half the settings"
    );
    let t = Instant::now();
    let (catalog, graph) = synthetic(args.settings, args.seed);
    let build_graph_ms = t.elapsed().as_secs_f64() * 1000.0;
    ensure!(
        graph.check().is_ok(),
        "the synthetic graph is not valid: {:?}",
        graph.check()
    );
    let numeric: Vec<&String> = catalog
        .settings
        .iter()
        .filter(|(_, s)| matches!(s.vartype, VarType::Integer | VarType::Real))
        .map(|(k, _)| k)
        .collect();
    let mut rng = StdRng::seed_from_u64(args.seed ^ 0x5eed);
    let input = SimInput {
        catalog: &catalog,
        graph: &graph,
        perf: None,
        history: &[],
        trial: None,
    };
    let t = Instant::now();
    let index = graph.index();
    let build_index_ms = t.elapsed().as_secs_f64() * 1000.0;
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    let mut naive = Vec::new();
    let mut impacted = 0usize;
    for _ in 0..args.runs {
        let change = proposal(&catalog, &numeric, args.keys, &mut rng);
        let t = Instant::now();
        let report = simulate(&input, &change);
        cold.push(t.elapsed());
        ensure!(
            report.verdict != SimVerdict::Refuse,
            "a valid synthetic change was refused: {:?}",
            report.reasons
        );
        let t = Instant::now();
        let again = simulate_with_index(&input, &index, &change);
        warm.push(t.elapsed());
        ensure!(again == report, "the kept index gave another report");
        let keys: Vec<String> = change.iter().map(|(k, _)| k.clone()).collect();
        let t = Instant::now();
        let n = naive_impacts(&graph, &keys, IMPACT_DEPTH);
        naive.push(t.elapsed());
        impacted += n;
    }
    let figures = Figures {
        settings: args.settings,
        nodes: graph.nodes.len(),
        edges: graph.edges.len(),
        conditional_edges: graph.edges.iter().filter(|e| e.condition.is_some()).count(),
        keys_per_change: args.keys,
        build_graph_ms,
        build_index_ms,
        simulate: Times::of(cold),
        simulate_warm: Times::of(warm),
        naive_impacts: Times::of(naive),
        mean_impacted: impacted as f64 / args.runs as f64,
        goal_ms: GOAL_MS,
    };
    let verdict = if figures.simulate.p99_ms <= GOAL_MS {
        Verdict::Met
    } else {
        Verdict::Missed
    };
    if args.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&figures)?);
        return Ok(verdict);
    }
    println!(
        "Synthetic graph: {} settings, {} nodes, {} edges ({} with a condition); built in {:.0} ms, indexed in {:.1} ms.",
        figures.settings, figures.nodes, figures.edges, figures.conditional_edges, figures.build_graph_ms, figures.build_index_ms
    );
    println!(
        "Change of {} settings, {} runs, {:.0} settings or metrics impacted on average (depth {IMPACT_DEPTH}).",
        args.keys, args.runs, figures.mean_impacted
    );
    for (what, t) in [
        ("simulate (index built in the call)", &figures.simulate),
        ("simulate with a kept index", &figures.simulate_warm),
        (
            "impact search by full scans (no index)",
            &figures.naive_impacts,
        ),
    ] {
        println!(
            "  {what:<40} p50 {:>8.2} ms  p99 {:>8.2} ms  max {:>8.2} ms",
            t.p50_ms, t.p99_ms, t.max_ms
        );
    }
    println!(
        "Goal: simulate p99 ≤ {GOAL_MS:.0} ms: {}.",
        if verdict == Verdict::Met {
            "met"
        } else {
            "MISSED"
        }
    );
    Ok(verdict)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_synthetic_graph_is_valid_and_seeded() {
        let (catalog, graph) = synthetic(2_000, 7);
        graph.check().unwrap();
        assert_eq!(catalog.settings.len(), 2_000);
        assert_eq!(graph.nodes.len(), 2_000 + METRICS.len());
        let per_setting = graph.edges.len() as f64 / 2_000.0;
        assert!(
            (2.0..4.0).contains(&per_setting),
            "{per_setting} edges per setting"
        );
        let (_, again) = synthetic(2_000, 7);
        assert_eq!(graph, again);
        // The naive search and the index agree on how many nodes a change reaches.
        let keys = vec!["s000010".to_string(), "s001500".to_string()];
        assert_eq!(
            naive_impacts(&graph, &keys, 3),
            graph.impacts(&keys, 3).len()
        );
    }
}
