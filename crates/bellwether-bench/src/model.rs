//! `bellwether bench model`: training time, prediction throughput and, with --quality, how
//! close the model comes to the true probability on synthetic histories of several shapes, and
//! on histories whose test rows hold categories training never saw (several worlds, with and
//! without the averaging of unseen values, so the difference is measured in one run).

use std::time::Instant;

use bellwether_predict::synth::{Shape, World};
use bellwether_predict::{Method, Model, PredictError, TrainOptions};

use crate::{BenchError, Output, Result, Verdict};

fn usage(e: PredictError) -> BenchError {
    BenchError::Usage(e.to_string())
}

/// `bellwether bench model`: training time, prediction throughput and, with --quality, how
/// close the model comes to the true probability on synthetic histories of several shapes.
#[derive(Debug, Clone)]
pub struct Options {
    /// Rows of the synthetic history to train on (world 1 of `bellwether model synth`: 8
    /// numeric and 3 categorical columns, 5 % missing cells).
    pub rows: usize,
    /// Also score trees and the logistic baseline on four synthetic worlds against `_p`.
    pub quality: bool,
    /// Print human text or JSON.
    pub output: Output,
}

#[derive(Debug, serde::Serialize)]
struct QualityRow {
    world: u64,
    numeric: usize,
    categorical: usize,
    missing_rate: f64,
    novel_rate: f64,
    train_rows: usize,
    test_rows: usize,
    oracle_auc: Option<f64>,
    gbdt_auc: Option<f64>,
    gbdt_auc_ratio: Option<f64>,
    gbdt_brier_ratio: Option<f64>,
    gbdt_calibration_error: f64,
    logistic_auc: Option<f64>,
    logistic_auc_ratio: Option<f64>,
    logistic_brier_ratio: Option<f64>,
}

/// One world of the shift table: trained on rows without new categories, scored on rows with
/// them (`shift`) and on rows without (`clean`), with unseen values averaged (`after`) and
/// routed as the trees routed their empty codes (`before`).
#[derive(Debug, serde::Serialize)]
struct ShiftRow {
    world: u64,
    chosen: Method,
    unseen_rows: usize,
    oracle_auc: Option<f64>,
    auc_ratio_after: Option<f64>,
    brier_ratio_after: Option<f64>,
    unseen_brier_ratio_after: Option<f64>,
    ece_after: f64,
    unseen_ece_after: Option<f64>,
    auc_ratio_before: Option<f64>,
    brier_ratio_before: Option<f64>,
    unseen_brier_ratio_before: Option<f64>,
    ece_before: f64,
    unseen_ece_before: Option<f64>,
    clean_brier_ratio_after: Option<f64>,
    clean_brier_ratio_before: Option<f64>,
    clean_auc_ratio: Option<f64>,
}

/// The shape of the shift worlds: 8 numeric columns (some without effect: noise), 3
/// categorical ones, 20 % missing cells; the test rows hold new categories in 10 % of their
/// categorical cells (as world 4 of the quality table).
const SHIFT_SHAPE: Shape = Shape {
    numeric: 8,
    categorical: 3,
    missing_rate: 0.20,
    base_rate: 0.15,
};
const SHIFT_NOVEL: f64 = 0.10;
/// The worlds of the shift table: every seed from 1 to this.
const SHIFT_WORLDS: u64 = 10;

pub fn run(a: &Options) -> Result<Verdict> {
    if a.rows < 100 {
        return Err(BenchError::Usage("--rows must be at least 100".into()));
    }
    let frame = World::new(1, &Shape::default())
        .sample(a.rows, 1, 0.0)
        .frame;
    let opts = TrainOptions::default();
    let clock = Clock::start();
    let model = Model::train(&frame, &opts).map_err(usage)?;
    let (train_wall, train_cpu) = clock.stop();
    let gbdt_opts = TrainOptions {
        method: Some(Method::Gbdt),
        ..opts.clone()
    };
    let clock = Clock::start();
    let gbdt_only = Model::train(&frame, &gbdt_opts).map_err(usage)?;
    let (gbdt_wall, gbdt_cpu) = clock.stop();

    // Prediction from the in-memory frame (no CSV parsing), one thread, five passes.
    let passes = 5;
    let clock = Clock::start();
    let mut checksum = 0.0;
    for _ in 0..passes {
        let (probs, _) = model.probabilities(&frame).map_err(usage)?;
        checksum += probs.iter().sum::<f64>();
    }
    let (predict_wall, predict_cpu) = clock.stop();
    let predicted = (passes * frame.rows()) as f64;
    let explain_rows = frame.rows().min(20_000);
    let head: Vec<usize> = (0..explain_rows).collect();
    let sub = frame.select_rows(&head);
    let clock = Clock::start();
    let explained = model.predict_frame(&sub).map_err(usage)?;
    let (explain_wall, explain_cpu) = clock.stop();
    // On a shared machine the thread's CPU time is the fairer measure of one core's work.
    let train_seconds = train_cpu.unwrap_or(train_wall);
    let gbdt_seconds = gbdt_cpu.unwrap_or(gbdt_wall);
    let predict_seconds = predict_cpu.unwrap_or(predict_wall);
    let explain_seconds = explain_cpu.unwrap_or(explain_wall);

    let (quality, shift) = if a.quality {
        (quality_table()?, shift_table()?)
    } else {
        (Vec::new(), Vec::new())
    };
    let shift_summary = summarise_shift(&shift);
    let trees = gbdt_only
        .summary()
        .gbdt
        .as_ref()
        .map_or(0, |g| g.best_rounds);
    let folds = gbdt_only.summary().folds;
    let report = serde_json::json!({
        "source": "synthetic world 1",
        "rows": frame.rows(),
        "threads": 1,
        "chosen": model.method(),
        "time_basis": if train_cpu.is_some() { "thread cpu time" } else { "wall clock" },
        "train_seconds_both_methods": train_seconds,
        "train_wall_seconds_both_methods": train_wall,
        "train_seconds_gbdt_only": gbdt_seconds,
        "train_wall_seconds_gbdt_only": gbdt_wall,
        "trees": trees,
        "tree_models": folds,
        "predict_rows_per_second": predicted / predict_seconds,
        "predict_rows_per_second_wall": predicted / predict_wall,
        "explain_rows_per_second": explained.predictions.len() as f64 / explain_seconds,
        "mean_probability": checksum / predicted,
        "quality": quality,
        "shift": {
            "shape": format!("{} numeric, {} categorical, {} % missing cells; test rows with new categories in {} % of categorical cells; 20,000 training and 5,000 test rows",
                SHIFT_SHAPE.numeric, SHIFT_SHAPE.categorical, SHIFT_SHAPE.missing_rate * 100.0, SHIFT_NOVEL * 100.0),
            "worlds": shift,
            "summary": shift_summary,
        },
    });
    match a.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Human => {
            println!(
                "Rows: {} ({}), one thread; times are {} (wall clock in brackets).",
                frame.rows(),
                report["source"].as_str().unwrap_or(""),
                report["time_basis"].as_str().unwrap_or("")
            );
            println!(
                "Training (trees and logistic baseline, calibration, choice): {train_seconds:.2} s [{train_wall:.2} s]; trees only: {gbdt_seconds:.2} s [{gbdt_wall:.2} s] ({trees} trees in {folds} averaged models)."
            );
            println!(
                "Prediction: {:.0} rows/s [{:.0}] (probabilities).",
                predicted / predict_seconds,
                predicted / predict_wall
            );
            println!(
                "Prediction with explanations (TreeSHAP): {:.0} rows/s.",
                explained.predictions.len() as f64 / explain_seconds
            );
            if !quality.is_empty() {
                println!(
                    "{:<6} {:>4} {:>4} {:>6} {:>6} {:>8} {:>9} {:>9} {:>7} {:>9} {:>9}",
                    "world",
                    "num",
                    "cat",
                    "miss",
                    "novel",
                    "AUC_p",
                    "gbdt r",
                    "gbdt Br",
                    "ECE",
                    "logit r",
                    "logit Br"
                );
                for q in &quality {
                    let f = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{v:.4}"));
                    println!(
                        "{:<6} {:>4} {:>4} {:>6.2} {:>6.2} {:>8} {:>9} {:>9} {:>7.4} {:>9} {:>9}",
                        q.world,
                        q.numeric,
                        q.categorical,
                        q.missing_rate,
                        q.novel_rate,
                        f(q.oracle_auc),
                        f(q.gbdt_auc_ratio),
                        f(q.gbdt_brier_ratio),
                        q.gbdt_calibration_error,
                        f(q.logistic_auc_ratio),
                        f(q.logistic_brier_ratio)
                    );
                }
            }
            if !shift.is_empty() {
                println!(
                    "Shift: {} worlds of {} numeric, {} categorical columns, {:.0} % missing cells; test rows with new categories in {:.0} % of categorical cells. Brier ratios to _p (after = unseen values averaged; before = routed as trained).",
                    shift.len(),
                    SHIFT_SHAPE.numeric,
                    SHIFT_SHAPE.categorical,
                    SHIFT_SHAPE.missing_rate * 100.0,
                    SHIFT_NOVEL * 100.0
                );
                println!(
                    "{:<6} {:>7} {:>7} {:>8} {:>8} {:>9} {:>9} {:>7} {:>7} {:>8} {:>8}",
                    "world",
                    "unseen",
                    "AUC r",
                    "Br after",
                    "Br befor",
                    "new after",
                    "new befor",
                    "ECE aft",
                    "ECE bef",
                    "clean aft",
                    "clean bef"
                );
                let f = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{v:.4}"));
                for r in &shift {
                    println!(
                        "{:<6} {:>7} {:>7} {:>8} {:>8} {:>9} {:>9} {:>7.4} {:>7.4} {:>8} {:>8}",
                        r.world,
                        r.unseen_rows,
                        f(r.auc_ratio_after),
                        f(r.brier_ratio_after),
                        f(r.brier_ratio_before),
                        f(r.unseen_brier_ratio_after),
                        f(r.unseen_brier_ratio_before),
                        r.ece_after,
                        r.ece_before,
                        f(r.clean_brier_ratio_after),
                        f(r.clean_brier_ratio_before)
                    );
                }
                for (name, v) in shift_summary.as_object().into_iter().flatten() {
                    println!("  {name}: {v}");
                }
            }
        }
    }
    Ok(Verdict::Met)
}

fn shift_table() -> Result<Vec<ShiftRow>> {
    let mut rows = Vec::new();
    for w in 1..=SHIFT_WORLDS {
        let world = World::new(w, &SHIFT_SHAPE);
        let train = world.sample(20_000, 100 + w, 0.0);
        let shift = world.sample(5_000, 200 + w, SHIFT_NOVEL);
        let clean = world.sample(5_000, 300 + w, 0.0);
        let after = Model::train(&train.frame, &TrainOptions::default()).map_err(usage)?;
        let mut before = after.clone();
        before.set_average_unknown(false);
        let sa = after.evaluate(&shift.frame).map_err(usage)?;
        let sb = before.evaluate(&shift.frame).map_err(usage)?;
        let ca = after.evaluate(&clean.frame).map_err(usage)?;
        let cb = before.evaluate(&clean.frame).map_err(usage)?;
        let unseen = |e: &bellwether_predict::Evaluation| {
            e.unseen_split
                .as_ref()
                .and_then(|s| s.unseen.as_ref())
                .map(|u| (u.model.rows, u.brier_ratio, u.model.calibration_error))
        };
        let (ua, ub) = (unseen(&sa), unseen(&sb));
        rows.push(ShiftRow {
            world: w,
            chosen: after.method(),
            unseen_rows: ua.map_or(0, |u| u.0),
            oracle_auc: sa.oracle.as_ref().and_then(|o| o.roc_auc),
            auc_ratio_after: sa.auc_ratio,
            brier_ratio_after: sa.brier_ratio,
            unseen_brier_ratio_after: ua.and_then(|u| u.1),
            ece_after: sa.model.calibration_error,
            unseen_ece_after: ua.map(|u| u.2),
            auc_ratio_before: sb.auc_ratio,
            brier_ratio_before: sb.brier_ratio,
            unseen_brier_ratio_before: ub.and_then(|u| u.1),
            ece_before: sb.model.calibration_error,
            unseen_ece_before: ub.map(|u| u.2),
            clean_brier_ratio_after: ca.brier_ratio,
            clean_brier_ratio_before: cb.brier_ratio,
            clean_auc_ratio: ca.auc_ratio,
        });
    }
    Ok(rows)
}

/// Mean, median and worst of each ratio over the shift worlds.
fn summarise_shift(rows: &[ShiftRow]) -> serde_json::Value {
    let stats = |get: &dyn Fn(&ShiftRow) -> Option<f64>, higher_is_worse: bool| {
        let mut v: Vec<f64> = rows.iter().filter_map(get).collect();
        if v.is_empty() {
            return serde_json::Value::Null;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        let worst = if higher_is_worse { v[n - 1] } else { v[0] };
        let r = |x: f64| (x * 10_000.0).round() / 10_000.0;
        serde_json::json!({
            "mean": r(v.iter().sum::<f64>() / n as f64),
            "median": r(median),
            "worst": r(worst),
        })
    };
    serde_json::json!({
        "worlds": rows.len(),
        "brier_ratio_after": stats(&|r| r.brier_ratio_after, true),
        "brier_ratio_before": stats(&|r| r.brier_ratio_before, true),
        "unseen_rows_brier_ratio_after": stats(&|r| r.unseen_brier_ratio_after, true),
        "unseen_rows_brier_ratio_before": stats(&|r| r.unseen_brier_ratio_before, true),
        "ece_after": stats(&|r| Some(r.ece_after), true),
        "ece_before": stats(&|r| Some(r.ece_before), true),
        "auc_ratio_after": stats(&|r| r.auc_ratio_after, false),
        "auc_ratio_before": stats(&|r| r.auc_ratio_before, false),
        "clean_brier_ratio_after": stats(&|r| r.clean_brier_ratio_after, true),
        "clean_brier_ratio_before": stats(&|r| r.clean_brier_ratio_before, true),
    })
}

fn quality_table() -> Result<Vec<QualityRow>> {
    let worlds = [
        (1u64, Shape::default(), 0.05),
        (
            2,
            Shape {
                numeric: 12,
                categorical: 4,
                missing_rate: 0.10,
                base_rate: 0.10,
            },
            0.05,
        ),
        (
            3,
            Shape {
                numeric: 5,
                categorical: 2,
                missing_rate: 0.0,
                base_rate: 0.25,
            },
            0.0,
        ),
        (
            4,
            Shape {
                numeric: 8,
                categorical: 3,
                missing_rate: 0.20,
                base_rate: 0.15,
            },
            0.10,
        ),
    ];
    let mut rows = Vec::new();
    for (w, shape, novel) in worlds {
        let world = World::new(w, &shape);
        let train = world.sample(20_000, 100 + w, 0.0);
        let test = world.sample(5_000, 200 + w, novel);
        let mut evs = Vec::new();
        for method in [Method::Gbdt, Method::Logistic] {
            let opts = TrainOptions {
                method: Some(method),
                ..TrainOptions::default()
            };
            let m = Model::train(&train.frame, &opts).map_err(usage)?;
            evs.push(m.evaluate(&test.frame).map_err(usage)?);
        }
        rows.push(QualityRow {
            world: w,
            numeric: shape.numeric,
            categorical: shape.categorical,
            missing_rate: shape.missing_rate,
            novel_rate: novel,
            train_rows: train.frame.rows(),
            test_rows: test.frame.rows(),
            oracle_auc: evs[0].oracle.as_ref().and_then(|o| o.roc_auc),
            gbdt_auc: evs[0].model.roc_auc,
            gbdt_auc_ratio: evs[0].auc_ratio,
            gbdt_brier_ratio: evs[0].brier_ratio,
            gbdt_calibration_error: evs[0].model.calibration_error,
            logistic_auc: evs[1].model.roc_auc,
            logistic_auc_ratio: evs[1].auc_ratio,
            logistic_brier_ratio: evs[1].brier_ratio,
        });
    }
    Ok(rows)
}

/// Wall-clock and this thread's CPU time. CPU time comes from Linux's
/// /proc/thread-self/schedstat (nanoseconds on a CPU); elsewhere it is `None`.
struct Clock {
    wall: Instant,
    cpu: Option<f64>,
}

impl Clock {
    fn start() -> Clock {
        Clock {
            wall: Instant::now(),
            cpu: thread_cpu_seconds(),
        }
    }

    fn stop(&self) -> (f64, Option<f64>) {
        let wall = self.wall.elapsed().as_secs_f64();
        let cpu = match (self.cpu, thread_cpu_seconds()) {
            (Some(a), Some(b)) if b > a => Some(b - a),
            _ => None,
        };
        (wall, cpu)
    }
}

fn thread_cpu_seconds() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: f64 = text.split_whitespace().next()?.parse().ok()?;
    Some(ns / 1e9)
}
