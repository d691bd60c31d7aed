//! `bellwether bench config-learn` and `bellwether bench config-perf`: the dependency graph of
//! a real PostgreSQL learned by probing scratch clusters (time, and the recall of the edges a
//! server start can verify), and the performance model's error on real pgbench runs.
//!
//! **config-learn.** A test cluster (initdb of the newest `/usr/lib/postgresql/*/bin`) gives
//! the catalog; `bellwether_pg::probe::learn` probes every changeable setting on scratch
//! copies, `--parallel` at a time. The recall counts pairs of settings whose violation a
//! server start refuses: the candidates are the pairs listed in [`KNOWN_PAIRS`] (documented
//! start-time checks, each with a violating configuration) and every shipped rule with an
//! `Implies` condition between two settings (violated by the first value its `if` accepts and
//! a value its `then` refuses). A candidate counts as *verifiable* only when the bench itself
//! starts a scratch server with the violating values and the server refuses while it starts
//! with the same values minus the pair's second setting. A verifiable pair is *found* when the
//! learned graph holds an edge with probe evidence between its two settings (either direction,
//! any kind). Recall = found / verifiable.
//!
//! **config-perf.** pgbench (`-S` select-only plus a sorting script) on a test cluster at a
//! grid of `work_mem` × `random_page_cost` × `shared_buffers`; each configuration applied with
//! `bellwether_pg::apply` (restart for `shared_buffers`) and measured `--reps` times. The
//! relative error is leave-one-configuration-out: train `PerfModel` on the other
//! configurations' runs, predict the held-out one's throughput, compare with its mean measured.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bellwether_config::graph::EvidenceSource;
use bellwether_config::rules::{Constraint, Pred};
use bellwether_pg::scratch::Scratch;
use bellwether_pg::testing::{TestCluster, TestClusterOptions};

use crate::{BenchError, Output, Verdict};

type Result<T> = std::result::Result<T, BenchError>;

pub struct LearnOptions {
    pub parallel: usize,
    /// Only these settings (empty: all).
    pub keys: Vec<String>,
    pub output: Output,
}

/// Pairs a server checks at start: (first setting, its value, second setting, its value).
pub const KNOWN_PAIRS: &[(&str, &str, &str, &str)] = &[
    ("wal_level", "minimal", "max_wal_senders", "10"),
    ("wal_level", "minimal", "archive_mode", "on"),
    (
        "max_connections",
        "3",
        "superuser_reserved_connections",
        "3",
    ),
    ("max_wal_size", "2", "wal_segment_size", ""),
    ("min_wal_size", "2", "wal_segment_size", ""),
    ("ssl", "on", "ssl_cert_file", "server.crt"),
];

/// The values both verification starts of a pair carry, so that the first value alone starts
/// (`wal_level = minimal` refuses with the default `max_wal_senders`).
fn pair_base(a: &str, b: &str) -> BTreeMap<String, String> {
    match (a, b) {
        ("wal_level", "archive_mode") => {
            BTreeMap::from([("max_wal_senders".to_string(), "0".to_string())])
        }
        _ => BTreeMap::new(),
    }
}

#[derive(Debug, serde::Serialize)]
pub struct LearnReport {
    pub server_version_num: u32,
    pub settings: usize,
    pub trials: usize,
    pub refused: usize,
    pub seconds: f64,
    pub edges_probed: usize,
    pub edges_total: usize,
    pub verifiable: Vec<String>,
    pub found: Vec<String>,
    pub missed: Vec<String>,
    pub unverifiable: Vec<String>,
    pub recall: f64,
    pub parallel: usize,
}

fn fail(context: &str) -> impl Fn(bellwether_pg::PgError) -> BenchError + '_ {
    move |e| BenchError::Failed(format!("{context}: {e}"))
}

fn catalog_of(c: &TestCluster) -> Result<bellwether_config::setting::Catalog> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| BenchError::Failed(e.to_string()))?;
    rt.block_on(async {
        let inst = bellwether_pg::connect(&c.url()).await?;
        bellwether_pg::read_settings(&inst).await
    })
    .map_err(fail("reading the test cluster's settings"))
}

/// A value of `key` that `pred` accepts (for `if`) or refuses (for `then`).
fn value_for(pred: &Pred, accept: bool) -> Option<String> {
    match (pred, accept) {
        (Pred::Eq(v), true) => Some(v.clone()),
        (Pred::In(vs), true) => vs.first().cloned(),
        (Pred::Ne(v), false) => Some(v.clone()),
        (Pred::Gt(x), true) | (Pred::Le(x), false) => Some(format!("{}", x + 1.0)),
        (Pred::Ge(x), true) | (Pred::Lt(x), false) => Some(format!("{x}")),
        (Pred::Lt(x), true) | (Pred::Ge(x), false) => Some(format!("{}", x - 1.0)),
        (Pred::Le(x), true) | (Pred::Gt(x), false) => Some(format!("{x}")),
        _ => None,
    }
}

/// The candidate pairs with their violating values.
type Pair = (String, String, String, Option<String>, Option<String>);

/// A value of the second setting with which the first value starts, for the known pairs.
fn good_value(b: &str) -> Option<String> {
    match b {
        "max_wal_senders" | "superuser_reserved_connections" => Some("0".into()),
        "archive_mode" => Some("off".into()),
        _ => None,
    }
}

fn candidate_pairs(catalog: &bellwether_config::setting::Catalog) -> Vec<Pair> {
    let mut out: Vec<Pair> = KNOWN_PAIRS
        .iter()
        .map(|(a, av, b, bv)| {
            (
                a.to_string(),
                av.to_string(),
                b.to_string(),
                (!bv.is_empty()).then(|| bv.to_string()),
                good_value(b),
            )
        })
        .collect();
    for rule in bellwether_config::rules::shipped_rules(catalog.server_version_num) {
        if let Some(Constraint::Implies {
            if_key,
            if_pred,
            then_key,
            then_pred,
        }) = &rule.edge.condition
        {
            if let (Some(a), Some(b)) = (value_for(if_pred, true), value_for(then_pred, false)) {
                out.push((
                    if_key.clone(),
                    a,
                    then_key.clone(),
                    Some(b),
                    value_for(then_pred, true),
                ));
            }
        }
    }
    let mut seen = BTreeSet::new();
    out.retain(|(a, _, b, _, _)| {
        catalog.get(a).is_some() && catalog.get(b).is_some() && seen.insert(pair_name(a, b))
    });
    out
}

fn pair_name(a: &str, b: &str) -> String {
    if a < b {
        format!("{a}~{b}")
    } else {
        format!("{b}~{a}")
    }
}

pub fn run_learn(o: &LearnOptions) -> Result<Verdict> {
    let cluster = TestCluster::try_start(TestClusterOptions::default())
        .map_err(|e| BenchError::Unreachable(format!("a test PostgreSQL cluster: {e}")))?;
    let catalog = catalog_of(&cluster)?;
    let scratch = Scratch::init(cluster.bindir.clone()).map_err(fail("initdb of the scratch"))?;
    let started = Instant::now();
    let (graph, stats) = bellwether_pg::probe::learn(
        &scratch,
        &catalog,
        &bellwether_pg::probe::ProbeOptions {
            keys: o.keys.clone(),
            parallel: o.parallel.max(1),
        },
    )
    .map_err(fail("probing"))?;
    let seconds = started.elapsed().as_secs_f64();

    let probed: BTreeSet<String> = graph
        .edges
        .iter()
        .filter(|e| {
            e.evidence
                .iter()
                .any(|ev| ev.source == EvidenceSource::Probe)
        })
        .map(|e| pair_name(&e.from, &e.to))
        .collect();
    let (mut verifiable, mut found, mut missed, mut unverifiable) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (a, av, b, bv, good) in candidate_pairs(&catalog) {
        let mut alone = pair_base(&a, &b);
        alone.insert(a.clone(), av.clone());
        let mut both = alone.clone();
        // "Alone": the first value with the second setting at a value it accepts.
        if let Some(g) = &good {
            alone.insert(b.clone(), g.clone());
        }
        if let Some(bv) = &bv {
            both.insert(b.clone(), bv.clone());
        }
        let t_both = scratch
            .try_start(&both)
            .map_err(fail("a verification start"))?;
        let refused_by_pair = if bv.is_some() {
            !t_both.started
                && scratch
                    .try_start(&alone)
                    .map_err(fail("a verification start"))?
                    .started
        } else {
            // The second setting is fixed (internal): the start refuses and names it.
            !t_both.started && t_both.message.contains(&b)
        };
        let name = pair_name(&a, &b);
        if !refused_by_pair {
            unverifiable.push(name);
            continue;
        }
        verifiable.push(name.clone());
        if probed.contains(&name) {
            found.push(name);
        } else {
            missed.push(name);
        }
    }
    let recall = if verifiable.is_empty() {
        0.0
    } else {
        found.len() as f64 / verifiable.len() as f64
    };
    let report = LearnReport {
        server_version_num: catalog.server_version_num,
        settings: stats.settings,
        trials: stats.trials,
        refused: stats.refused,
        seconds,
        edges_probed: probed.len(),
        edges_total: graph.edges.len(),
        verifiable,
        found,
        missed,
        unverifiable,
        recall,
        parallel: o.parallel,
    };
    match o.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| BenchError::Failed(e.to_string()))?
        ),
        Output::Human => {
            println!(
                "config-learn: PostgreSQL {} — {} settings, {} trial starts ({} refused) in {:.1} s on {} at a time (goal ≤ 900 s)",
                report.server_version_num, report.settings, report.trials, report.refused, report.seconds, report.parallel
            );
            println!(
                "  edges: {} with probe evidence, {} in all (with the shipped rules)",
                report.edges_probed, report.edges_total
            );
            println!(
                "  recall of server-verified pairs: {}/{} = {:.0} %",
                report.found.len(),
                report.verifiable.len(),
                report.recall * 100.0
            );
            println!("  found: {}", report.found.join(", "));
            println!("  missed: {}", report.missed.join(", "));
            println!(
                "  not refused by a start (not counted): {}",
                report.unverifiable.join(", ")
            );
        }
    }
    Ok(if o.keys.is_empty() && report.seconds > 900.0 {
        Verdict::Missed
    } else {
        Verdict::Met
    })
}

pub struct PerfOptions {
    /// Seconds of pgbench per run.
    pub seconds: u32,
    pub reps: usize,
    pub output: Output,
}

#[derive(Debug, serde::Serialize)]
pub struct PerfRun {
    pub values: BTreeMap<String, String>,
    pub tps: Vec<f64>,
    pub predicted_tps: f64,
    pub rel_error: f64,
    /// The error of the null model (the mean throughput of the other configurations).
    pub null_rel_error: f64,
}

#[derive(Debug, serde::Serialize)]
pub struct PerfReport {
    pub runs: Vec<PerfRun>,
    pub mean_rel_error: f64,
    pub median_rel_error: f64,
    /// The same for the null model, which predicts every configuration's throughput as the
    /// mean of the others': the model is worth what it gains on this.
    pub null_mean_rel_error: f64,
    pub null_median_rel_error: f64,
    pub seconds_per_run: u32,
}

/// The sorting workload: a full sort of the 20,001 rows of a range read (about 2.6 MB: it
/// spills to disk below that work_mem and sorts in memory above; the `OFFSET` keeps PostgreSQL
/// from a top-N heap sort, which would need almost no memory), and the range read itself, whose
/// plan (index, bitmap or sequential scan) moves with random_page_cost.
const SORT_SCRIPT: &str = "\\set a random(1, 80000)\n\
SELECT abalance FROM pgbench_accounts WHERE aid BETWEEN :a AND :a + 20000 ORDER BY filler DESC, abalance OFFSET 20000 LIMIT 1;\n";

fn pgbench(c: &TestCluster, args: &[&str]) -> Result<String> {
    let argv = c.pgbench_argv(args);
    let out = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .output()
        .map_err(|e| BenchError::Unreachable(format!("pgbench: {e}")))?;
    if !out.status.success() {
        return Err(BenchError::Failed(format!(
            "pgbench {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn tps_of(out: &str) -> Option<f64> {
    out.lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l["tps = ".len()..].split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

pub fn run_perf(o: &PerfOptions) -> Result<Verdict> {
    let cluster = TestCluster::try_start(TestClusterOptions::default())
        .map_err(|e| BenchError::Unreachable(format!("a test PostgreSQL cluster: {e}")))?;
    pgbench(&cluster, &["-i", "-q", "-s", "1", "postgres"])?;
    let script = tempfile_path("bw-config-perf.sql")?;
    std::fs::write(&script, SORT_SCRIPT).map_err(|e| BenchError::Failed(e.to_string()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| BenchError::Failed(e.to_string()))?;
    let restart = cluster.restart_argv();
    let mut grid = Vec::new();
    for sb in ["16MB", "128MB"] {
        for wm in ["64kB", "1MB", "16MB"] {
            for rpc in ["1.1", "4", "100"] {
                grid.push([
                    ("shared_buffers", sb),
                    ("work_mem", wm),
                    ("random_page_cost", rpc),
                ]);
            }
        }
    }
    let secs = o.seconds.to_string();
    let script_arg = format!("{}@1", script.display());
    let mut measured: Vec<(BTreeMap<String, String>, Vec<f64>)> = Vec::new();
    for cfg in &grid {
        let set: Vec<(String, Option<String>)> = cfg
            .iter()
            .map(|(k, v)| (k.to_string(), Some(v.to_string())))
            .collect();
        let report = rt
            .block_on(bellwether_pg::apply(
                &cluster.url(),
                &set,
                false,
                Some(&restart),
                Duration::from_secs(60),
            ))
            .map_err(fail("applying a configuration"))?;
        // One discarded second after the restart, so the runs do not measure a cold cache.
        pgbench(
            &cluster,
            &[
                "-n",
                "-c",
                "2",
                "-j",
                "1",
                "-T",
                "1",
                "-S",
                "-f",
                &script_arg,
                "postgres",
            ],
        )?;
        let mut tps = Vec::new();
        for _ in 0..o.reps.max(1) {
            let out = pgbench(
                &cluster,
                &[
                    "-n",
                    "-c",
                    "2",
                    "-j",
                    "1",
                    "-T",
                    &secs,
                    "-S",
                    "-f",
                    &script_arg,
                    "postgres",
                ],
            )?;
            tps.push(tps_of(&out).ok_or_else(|| BenchError::Failed(format!("no tps in {out}")))?);
        }
        eprintln!("config-perf: {:?} → tps {tps:?}", report.values);
        measured.push((report.values.clone(), tps));
    }
    let _ = std::fs::remove_file(&script);
    let mut runs = Vec::new();
    for i in 0..measured.len() {
        let train: Vec<bellwether_config::perf::PerfObservation> = measured
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .flat_map(|(_, (values, tps))| {
                tps.iter()
                    .map(|t| bellwether_config::perf::PerfObservation {
                        values: values.clone(),
                        tps: *t,
                        latency_ms: 2_000.0 / t.max(1e-9),
                    })
            })
            .collect();
        let model = bellwether_config::perf::PerfModel::train(&train)
            .map_err(|e| BenchError::Failed(format!("training the perf model: {e}")))?;
        let (values, tps) = &measured[i];
        let current = &measured[(i + 1) % measured.len()].0;
        let p = model
            .try_predict(current, values)
            .map_err(|e| BenchError::Failed(format!("predicting: {e}")))?;
        let actual = tps.iter().sum::<f64>() / tps.len() as f64;
        let others: Vec<f64> = train.iter().map(|o| o.tps).collect();
        let null = others.iter().sum::<f64>() / others.len().max(1) as f64;
        runs.push(PerfRun {
            values: values.clone(),
            tps: tps.clone(),
            predicted_tps: p.tps,
            rel_error: (p.tps - actual).abs() / actual,
            null_rel_error: (null - actual).abs() / actual,
        });
    }
    let (mean_rel_error, median_rel_error) = mean_median(runs.iter().map(|r| r.rel_error));
    let (null_mean_rel_error, null_median_rel_error) =
        mean_median(runs.iter().map(|r| r.null_rel_error));
    let report = PerfReport {
        mean_rel_error,
        median_rel_error,
        null_mean_rel_error,
        null_median_rel_error,
        runs,
        seconds_per_run: o.seconds,
    };
    match o.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| BenchError::Failed(e.to_string()))?
        ),
        Output::Human => {
            println!(
                "config-perf: {} configurations × {} runs of {} s; leave-one-configuration-out relative error of predicted tps: mean {:.1} %, median {:.1} % (null model, the other configurations' mean: {:.1} %, {:.1} %)",
                report.runs.len(),
                o.reps,
                o.seconds,
                report.mean_rel_error * 100.0,
                report.median_rel_error * 100.0,
                report.null_mean_rel_error * 100.0,
                report.null_median_rel_error * 100.0
            );
            for r in &report.runs {
                println!(
                    "  {:<60} measured {:>8.1} predicted {:>8.1} error {:>5.1} %",
                    format!("{:?}", r.values),
                    r.tps.iter().sum::<f64>() / r.tps.len() as f64,
                    r.predicted_tps,
                    r.rel_error * 100.0
                );
            }
        }
    }
    Ok(Verdict::Met)
}

/// The mean and the median (the upper one for an even count) of some errors.
fn mean_median(errs: impl Iterator<Item = f64>) -> (f64, f64) {
    let mut errs: Vec<f64> = errs.collect();
    if errs.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    errs.sort_by(f64::total_cmp);
    (
        errs.iter().sum::<f64>() / errs.len() as f64,
        errs[errs.len() / 2],
    )
}

fn tempfile_path(name: &str) -> Result<std::path::PathBuf> {
    let p = std::env::temp_dir().join(format!("{}-{name}", std::process::id()));
    Ok(p)
}
