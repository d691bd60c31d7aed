//! `bellwether bench model`: training time, prediction throughput and, with --quality, how
//! close the model comes to the true probability on synthetic histories of several shapes.

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

    let quality = if a.quality {
        quality_table()?
    } else {
        Vec::new()
    };
    let trees = gbdt_only
        .summary()
        .gbdt
        .as_ref()
        .map_or(0, |g| g.best_rounds);
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
        "predict_rows_per_second": predicted / predict_seconds,
        "predict_rows_per_second_wall": predicted / predict_wall,
        "explain_rows_per_second": explained.predictions.len() as f64 / explain_seconds,
        "mean_probability": checksum / predicted,
        "quality": quality,
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
                "Training (trees and logistic baseline, calibration, choice): {train_seconds:.2} s [{train_wall:.2} s]; trees only: {gbdt_seconds:.2} s [{gbdt_wall:.2} s] ({trees} trees)."
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
        }
    }
    Ok(Verdict::Met)
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
