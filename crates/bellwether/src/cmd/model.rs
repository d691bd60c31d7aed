//! `bellwether model`: train, predict with and evaluate the failure-probability model.
//!
//! This module opens and writes the files; `bellwether-predict` does the rest.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use bellwether_model::text::{count, Escaped};
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
    /// Score a model on a labelled CSV: ROC AUC, Brier score, log loss, ECE, reliability; and
    /// the same on the rows holding categories training never saw, apart from the others.
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
    /// Tree models to fit and average, each holding out its own 1/N of the rows (N ≥ 2 also
    /// fits the calibration on every row's out-of-fold margin). Each of N fits learns at
    /// 0.125·N with trees of 4 leaves, so the mean costs about one fit (docs/predict.md); 1
    /// holds out a fifth once and learns at 0.12 with trees of 4 leaves.
    #[arg(long, default_value_t = bellwether_predict::model::FOLDS as u64, value_parser = clap::value_parser!(u64).range(1..=10))]
    folds: u64,
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
        ..TrainOptions::with_folds(a.folds as usize)
    };
    let progress = bellwether_stdout::Progress::spinner(format!(
        "training on {} rows of {}",
        frame.rows(),
        history.display()
    ));
    let model = Model::train(&frame, &opts).map_err(usage)?;
    drop(progress);
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
                "Trained on {} of {} ({}, {:.1}%): {} for fitting, {} held out.",
                count(s.rows, "row"),
                s.source,
                count(s.failures, "failure"),
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
                    "Trees: {} kept (early stopping after {}).",
                    g.best_rounds,
                    count(g.rounds_trained, "round")
                );
            }
            let cal = model.calibration();
            let why = match s.candidates.iter().find(|c| c.method != s.chosen) {
                Some(other) => format!(
                    "chosen over {}: lower held-out log loss, {:.4} against {:.4}",
                    other.method,
                    s.candidates
                        .iter()
                        .find(|c| c.method == s.chosen)
                        .map_or(f64::NAN, |c| c.log_loss),
                    other.log_loss
                ),
                None => "the only method fitted (--method)".to_string(),
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
        "Wrote {} to {}.",
        count(out.predictions.len(), "prediction"),
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
        "{}: {}, {}; model: {method}.\n",
        ev.source,
        count(ev.model.rows, "row"),
        count(ev.model.failures, "failure")
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
    if let Some(split) = &ev.unseen_split {
        let parts: Vec<String> = split
            .unseen_by_feature
            .iter()
            .map(|(f, n)| format!("{} in {n}", Escaped(f)))
            .collect();
        s.push_str(&format!(
            "Rows holding values training never saw (new categories, or missing cells where training had none): {}{}.\n",
            split.unseen.as_ref().map_or(0, |u| u.model.rows),
            if parts.is_empty() {
                String::new()
            } else {
                format!(" ({})", parts.join(", "))
            }
        ));
        s.push_str(&format!(
            "{:<10} {:>7} {:>8} {:>8} {:>9} {:>8} {:>12}\n",
            "rows", "count", "ROC AUC", "Brier", "log loss", "ECE", "Brier/oracle"
        ));
        for (name, part) in [("unseen", &split.unseen), ("seen", &split.seen)] {
            if let Some(p) = part {
                s.push_str(&format!(
                    "{:<10} {:>7} {:>8} {:>8.4} {:>9.4} {:>8.4} {:>12}\n",
                    name,
                    p.model.rows,
                    auc(&p.model),
                    p.model.brier,
                    p.model.log_loss,
                    p.model.calibration_error,
                    p.brier_ratio
                        .map_or("n/a".to_string(), |r| format!("{r:.4}"))
                ));
            }
        }
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
    eprintln!("Wrote {} to {}.", count(a.rows, "row"), a.out.display());
    Ok(ExitCode::SUCCESS)
}
