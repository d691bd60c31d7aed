//! `bellwether model`: train, predict with and evaluate the failure-probability model.
//!
//! This module opens and writes the files; `bellwether-predict` does the rest.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use bellwether_model::text::Escaped;
use bellwether_predict::metrics::Scores;
use bellwether_predict::synth::{Shape, World};
use bellwether_predict::{
    format_factors, Evaluation, Frame, Method, Model, PredictError, TrainOptions,
};

use super::{OutputFormat, UsageError};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Debug, clap::Subcommand)]
enum Verb {
    /// Train a model on a deployment-history CSV and write it as JSON.
    ///
    /// Every column except the label becomes a feature, unless its name starts with `_`, it
    /// is named in --ignore, it is an identifier (a distinct value in nearly every row, such
    /// as a deployment id or host name), or it holds one value only. Columns whose cells are
    /// all numbers are numeric; the others are categorical. Empty cells, NA and null are
    /// missing values.
    Train(TrainArgs),
    /// Write the failure probability and its top factors for every row of a CSV.
    Predict(PredictArgs),
    /// Score a model on a labelled CSV: ROC AUC, Brier score, log loss, reliability.
    Evaluate(EvaluateArgs),
    /// Write a synthetic deployment history with a known failure probability `_p`.
    Synth(SynthArgs),
    /// Send a history CSV to a server, which stores its rows as outcomes to train from.
    Import(super::model_server::ImportArgs),
    /// List the model versions a server has trained.
    List(super::model_server::ListArgs),
}

#[derive(Debug, clap::Args)]
struct TrainArgs {
    /// The history: a CSV with a header, one row per (deployment, host), and an outcome column.
    /// Without it, the server (--server) trains a new model version from the outcomes in its
    /// store (see `bellwether model import` and docs/predict.md).
    #[arg(long, value_name = "H.csv")]
    history: Option<PathBuf>,
    /// Where to write the model (JSON); required with --history. A model the server trains
    /// stays in its store.
    #[arg(long, value_name = "MODEL.json")]
    out: Option<PathBuf>,
    #[command(flatten)]
    client: super::token::ClientArgs,
    /// The outcome column. Its values are 1/0, true/false or failure/success (any case); 1,
    /// true and failure mean the deployment failed on that host.
    #[arg(long, default_value = "outcome")]
    label: String,
    /// Columns to leave out, comma-separated (for example `--ignore region,owner`).
    #[arg(long, value_name = "COL,…", value_delimiter = ',')]
    ignore: Vec<String>,
    /// Fit only this method instead of fitting both and keeping the better on held-out rows.
    #[arg(long, value_enum)]
    method: Option<MethodArg>,
    /// Seed of the held-out split and of the trees' row sampling.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Print the summary as human text or JSON.
    #[arg(long, value_enum, default_value_t)]
    output: OutputFormat,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum MethodArg {
    /// Gradient-boosted trees (histogram-based, TreeSHAP explanations).
    Gbdt,
    /// L2-regularised logistic regression (the baseline).
    Logistic,
}

#[derive(Debug, clap::Args)]
struct PredictArgs {
    /// A model written by `bellwether model train`.
    #[arg(long, value_name = "MODEL.json")]
    model: PathBuf,
    /// Rows to score: a CSV with a header. Columns are matched to the model's features by
    /// name; extra columns are ignored, absent ones are treated as missing, and categories
    /// never seen in training count as "other".
    #[arg(long, value_name = "X.csv")]
    input: PathBuf,
    /// Where to write `row,probability,top_factors` (row is the 0-based input row).
    #[arg(long, value_name = "P.csv")]
    output: PathBuf,
    /// How many `column=contribution` pairs to put in top_factors (at least 3).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(3..))]
    factors: u16,
}

#[derive(Debug, clap::Args)]
struct EvaluateArgs {
    /// A model written by `bellwether model train`.
    #[arg(long, value_name = "MODEL.json")]
    model: PathBuf,
    /// A labelled CSV (the model's label column must be present). When it has a `_p` column
    /// (the true failure probability of a synthetic history), the oracle's scores and the AUC
    /// ratio (AUC − 0.5) / (AUC of _p − 0.5) are printed too.
    #[arg(long, value_name = "T.csv")]
    input: PathBuf,
    /// Print human text or JSON.
    #[arg(long, value_enum, default_value_t)]
    output: OutputFormat,
}

#[derive(Debug, clap::Args)]
struct SynthArgs {
    /// Where to write the CSV.
    #[arg(long, value_name = "OUT.csv")]
    out: PathBuf,
    /// Number of rows.
    #[arg(long, default_value_t = 20_000)]
    rows: usize,
    /// Seed of the world (its columns and effects).
    #[arg(long, default_value_t = 1)]
    world: u64,
    /// Seed of the rows; use different ones for a training and a test file of one world.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Number of numeric columns.
    #[arg(long, default_value_t = 8)]
    numeric: usize,
    /// Number of categorical columns.
    #[arg(long, default_value_t = 3)]
    categorical: usize,
    /// Share of empty cells.
    #[arg(long, default_value_t = 0.05, value_parser = super::finite_f64)]
    missing: f64,
    /// Share of categorical cells holding a category the world's other files never have.
    #[arg(long, default_value_t = 0.0, value_parser = super::finite_f64)]
    novel: f64,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.verb {
        Verb::Train(a) if a.history.is_none() => {
            super::model_server::train(a.out.as_deref(), &a.client, a.output)
        }
        Verb::Train(a) => train(a),
        Verb::Import(a) => super::model_server::import(a),
        Verb::List(a) => super::model_server::list(a),
        Verb::Predict(a) => predict(a),
        Verb::Evaluate(a) => evaluate(a),
        Verb::Synth(a) => synth(a),
    }
}

/// Errors in the user's files or flags are usage errors (exit 2).
fn usage(e: PredictError) -> anyhow::Error {
    UsageError(e.to_string()).into()
}

fn read_frame(path: &Path) -> anyhow::Result<Frame> {
    let file = File::open(path)
        .map_err(|e| UsageError(format!("{}: cannot open: {e}", path.display())))?;
    Frame::from_csv(BufReader::new(file), &path.display().to_string()).map_err(usage)
}

fn read_model(path: &Path) -> anyhow::Result<Model> {
    let file = File::open(path)
        .map_err(|e| UsageError(format!("{}: cannot open: {e}", path.display())))?;
    Model::read(BufReader::new(file), &path.display().to_string()).map_err(usage)
}

fn train(a: TrainArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let (Some(history), Some(out)) = (a.history, a.out) else {
        return Err(UsageError("--out MODEL.json is required with --history".into()).into());
    };
    let frame = read_frame(&history)?;
    let opts = TrainOptions {
        label: a.label,
        ignore: a
            .ignore
            .into_iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        method: a.method.map(|m| match m {
            MethodArg::Gbdt => Method::Gbdt,
            MethodArg::Logistic => Method::Logistic,
        }),
        seed: a.seed,
        ..TrainOptions::default()
    };
    let model = Model::train(&frame, &opts).map_err(usage)?;
    let seconds = started.elapsed().as_secs_f64();
    let file = File::create(&out).with_context(|| format!("{}: cannot create", out.display()))?;
    let mut w = BufWriter::new(file);
    model.write(&mut w, &out.display().to_string())?;
    w.flush()
        .with_context(|| format!("{}: write failed", out.display()))?;

    let s = model.summary();
    match a.output {
        OutputFormat::Json => {
            let v = serde_json::json!({
                "model": out.display().to_string(),
                "seconds": seconds,
                "features": model.features().iter().map(|f| serde_json::json!({
                    "name": f.name, "kind": if f.is_categorical() { "categorical" } else { "numeric" },
                })).collect::<Vec<_>>(),
                "calibration": model.calibration(),
                "summary": s,
            });
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        OutputFormat::Human => {
            println!(
                "Trained on {} rows of {} ({} failures, {:.1}%): {} for fitting, {} held out.",
                s.rows,
                s.source,
                s.failures,
                100.0 * s.failures as f64 / s.rows as f64,
                s.train_rows,
                s.holdout_rows
            );
            let feats: Vec<String> = model
                .features()
                .iter()
                .map(|f| {
                    format!(
                        "{}{}",
                        f.name,
                        if f.is_categorical() {
                            " (categorical)"
                        } else {
                            ""
                        }
                    )
                })
                .collect();
            println!("Features ({}): {}", feats.len(), Escaped(&feats.join(", ")));
            for sk in &s.skipped {
                println!("Skipped `{}`: {}.", Escaped(&sk.column), sk.reason);
            }
            for c in &s.candidates {
                println!(
                    "Held-out {}: AUC {}, Brier {:.4}, log loss {:.4}.",
                    c.method,
                    c.roc_auc.map_or("n/a".into(), |v| format!("{v:.4}")),
                    c.brier,
                    c.log_loss
                );
            }
            if let Some(g) = &s.gbdt {
                println!(
                    "Trees: {} kept (early stopping after {} rounds).",
                    g.best_rounds, g.rounds_trained
                );
            }
            let cal = model.calibration();
            let why = if s.candidates.len() > 1 {
                "chose"
            } else {
                "fitted only (--method)"
            };
            println!(
                "Model: {} ({why}); Platt calibration slope {:.3}, intercept {:+.3}.",
                s.chosen, cal.slope, cal.intercept
            );
            println!("Wrote {} in {:.2} s.", out.display(), seconds);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn predict(a: PredictArgs) -> anyhow::Result<ExitCode> {
    let model = read_model(&a.model)?;
    let frame = read_frame(&a.input)?;
    let out = model.predict_frame(&frame).map_err(usage)?;
    if !out.absent_columns.is_empty() {
        eprintln!(
            "warning: {} lacks the model's columns {}; they are treated as missing",
            a.input.display(),
            Escaped(&out.absent_columns.join(", "))
        );
    }
    let file = File::create(&a.output)
        .with_context(|| format!("{}: cannot create", a.output.display()))?;
    let mut w = csv::Writer::from_writer(BufWriter::new(file));
    w.write_record(["row", "probability", "top_factors"])?;
    for (i, p) in out.predictions.iter().enumerate() {
        w.write_record([
            i.to_string(),
            format!("{:.6}", p.probability.get()),
            format_factors(p, a.factors as usize),
        ])?;
    }
    w.flush()
        .with_context(|| format!("{}: write failed", a.output.display()))?;
    eprintln!(
        "Wrote {} predictions to {}.",
        out.predictions.len(),
        a.output.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn evaluate(a: EvaluateArgs) -> anyhow::Result<ExitCode> {
    let model = read_model(&a.model)?;
    let frame = read_frame(&a.input)?;
    let ev = model.evaluate(&frame).map_err(usage)?;
    match a.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&ev)?),
        OutputFormat::Human => print!("{}", render_evaluation(&ev, model.method())),
    }
    Ok(ExitCode::SUCCESS)
}

fn render_evaluation(ev: &Evaluation, method: Method) -> String {
    let mut s = String::new();
    let auc = |sc: &Scores| sc.roc_auc.map_or("n/a".to_string(), |v| format!("{v:.4}"));
    s.push_str(&format!(
        "{}: {} rows, {} failures; model: {method}.\n",
        ev.source, ev.model.rows, ev.model.failures
    ));
    if !ev.absent_columns.is_empty() {
        s.push_str(&format!(
            "Columns absent (treated as missing): {}.\n",
            ev.absent_columns.join(", ")
        ));
    }
    s.push_str(&format!(
        "{:<10} {:>8} {:>8} {:>9} {:>8}\n",
        "", "ROC AUC", "Brier", "log loss", "ECE"
    ));
    let line = |name: &str, sc: &Scores| {
        format!(
            "{:<10} {:>8} {:>8.4} {:>9.4} {:>8.4}\n",
            name,
            auc(sc),
            sc.brier,
            sc.log_loss,
            sc.calibration_error
        )
    };
    s.push_str(&line("model", &ev.model));
    if let Some(o) = &ev.oracle {
        s.push_str(&line("oracle _p", o));
    }
    if let Some(r) = ev.auc_ratio {
        s.push_str(&format!(
            "AUC ratio to the oracle (AUC − 0.5)/(AUC_p − 0.5): {r:.4}\n"
        ));
    }
    if let Some(r) = ev.brier_ratio {
        s.push_str(&format!("Brier ratio to the oracle: {r:.4}\n"));
    }
    s.push_str("Reliability (predicted probability bins):\n");
    s.push_str(&format!(
        "{:<12} {:>7} {:>10} {:>10}\n",
        "bin", "rows", "predicted", "observed"
    ));
    for b in &ev.model.reliability {
        s.push_str(&format!(
            "{:<12} {:>7} {:>10.4} {:>10.4}\n",
            format!("[{:.1}, {:.1})", b.low, b.high),
            b.rows,
            b.mean_probability,
            b.observed_rate
        ));
    }
    s
}

fn synth(a: SynthArgs) -> anyhow::Result<ExitCode> {
    if !(0.0..1.0).contains(&a.missing) || !(0.0..1.0).contains(&a.novel) {
        return Err(UsageError("--missing and --novel must be in [0, 1)".into()).into());
    }
    if a.rows == 0 {
        return Err(UsageError("--rows must be at least 1".into()).into());
    }
    let shape = Shape {
        numeric: a.numeric,
        categorical: a.categorical,
        missing_rate: a.missing,
        ..Shape::default()
    };
    let sample = World::new(a.world, &shape).sample(a.rows, a.seed, a.novel);
    let file =
        File::create(&a.out).with_context(|| format!("{}: cannot create", a.out.display()))?;
    bellwether_predict::synth::write_csv(&sample.frame, BufWriter::new(file))
        .with_context(|| format!("{}: write failed", a.out.display()))?;
    eprintln!("Wrote {} rows to {}.", a.rows, a.out.display());
    Ok(ExitCode::SUCCESS)
}

/// `bellwether bench model`: training time, prediction throughput and, with --quality, how
/// close the model comes to the true probability on synthetic histories of several shapes.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Rows of the synthetic history to train on (world 1 of `bellwether model synth`: 8
    /// numeric and 3 categorical columns, 5 % missing cells).
    #[arg(long, default_value_t = 100_000)]
    rows: usize,
    /// Also score trees and the logistic baseline on four synthetic worlds against `_p`.
    #[arg(long)]
    quality: bool,
    /// Print human text or JSON.
    #[arg(long, value_enum, default_value_t)]
    output: OutputFormat,
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

pub fn bench(a: BenchArgs) -> anyhow::Result<ExitCode> {
    if a.rows < 100 {
        return Err(UsageError("--rows must be at least 100".into()).into());
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
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        OutputFormat::Human => {
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
    Ok(ExitCode::SUCCESS)
}

fn quality_table() -> anyhow::Result<Vec<QualityRow>> {
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
