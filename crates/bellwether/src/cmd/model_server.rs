//! The server side of `bellwether model`: `model train` without `--history` (the server trains
//! from its stored outcomes), `model import --history H.csv` and `model list`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use bellwether_server::client::ClientError;
use bellwether_store::ModelInfo;

use super::token::{client_error, runtime, ClientArgs};
use super::{OutputFormat, UsageError};

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The history CSV, in the format `bellwether model train --history` takes: a header, one
    /// row per (deployment, host), an outcome column. `deployment_id` (or `deployment`) and
    /// `host` columns, when present, identify a row: importing a row again replaces it.
    #[arg(long, value_name = "H.csv")]
    history: PathBuf,
    /// The outcome column (1/0, true/false or failure/success).
    #[arg(long, default_value = "outcome")]
    label: String,
    #[command(flatten)]
    client: ClientArgs,
    /// Print human text or JSON.
    #[arg(long, value_enum, default_value_t)]
    output: OutputFormat,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Print a table or the API's JSON.
    #[arg(long, value_enum, default_value_t)]
    output: OutputFormat,
}

/// API answers about the user's input (400, 404, 413) are usage errors (exit 2); the rest go
/// through the shared mapping (unreachable → 3, refused token → 1 with a hint).
pub fn api_error(err: ClientError) -> anyhow::Error {
    match err {
        ClientError::Api {
            status: 400 | 404 | 413,
            message,
            ..
        } => UsageError(message).into(),
        ClientError::Api { message, .. } => anyhow::anyhow!("{message}"),
        other => client_error(other),
    }
}

fn metric(m: &ModelInfo, key: &str) -> String {
    m.metrics[key]
        .as_f64()
        .map(|v| format!("{v:.3}"))
        .unwrap_or_else(|| "-".into())
}

fn print_model(m: &ModelInfo) {
    println!(
        "Model version {} trained ({}) on {} ({}) with {}: held-out ROC AUC {}, Brier {}, log loss {}.",
        m.version,
        bellwether_model::text::Escaped(&m.cause),
        bellwether_model::text::count(m.rows as usize, "outcome"),
        bellwether_model::text::count(m.failures as usize, "failure"),
        m.metrics["method"].as_str().unwrap_or("?").replace('_', " "),
        metric(m, "roc_auc"),
        metric(m, "brier"),
        metric(m, "log_loss"),
    );
}

/// `bellwether model train` without `--history`.
pub fn train(
    out: Option<&Path>,
    client: &ClientArgs,
    output: OutputFormat,
) -> anyhow::Result<ExitCode> {
    if let Some(out) = out {
        return Err(UsageError(format!(
            "--out {} needs --history; without --history the server trains and keeps the model in its store (`bellwether model list`)",
            out.display()
        ))
        .into());
    }
    let client = client.client()?;
    let progress = bellwether_stdout::Progress::spinner("the server is training a model");
    let m = runtime()?
        .block_on(client.train_model())
        .map_err(api_error)?;
    drop(progress);
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&m)?),
        OutputFormat::Human => print_model(&m),
    }
    Ok(ExitCode::SUCCESS)
}

/// `bellwether model import --history H.csv`.
pub fn import(a: ImportArgs) -> anyhow::Result<ExitCode> {
    let csv = std::fs::read(&a.history)
        .map_err(|e| UsageError(format!("{}: cannot read: {e}", a.history.display())))?;
    let client = a.client.client()?;
    let r = runtime()?
        .block_on(client.import_history(csv, Some(&a.label)))
        .map_err(|e| match api_error(e) {
            err if err.is::<UsageError>() => {
                UsageError(format!("{}: {err}", a.history.display())).into()
            }
            err => err,
        })?;
    match a.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&r)?),
        OutputFormat::Human => println!(
            "Imported {} ({}) from {}; the server now holds {}.",
            bellwether_model::text::count(r.imported as usize, "outcome"),
            bellwether_model::text::count(r.failures as usize, "failure"),
            a.history.display(),
            r.outcomes
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// `bellwether model list`.
pub fn list(a: ListArgs) -> anyhow::Result<ExitCode> {
    let client = a.client.client()?;
    let models = runtime()?.block_on(client.models()).map_err(api_error)?;
    match a.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&models)?),
        OutputFormat::Human if models.is_empty() => {
            println!("The server at {} has trained no model yet.", client.base())
        }
        OutputFormat::Human => {
            let rows: Vec<Vec<String>> = models
                .iter()
                .map(|m| {
                    vec![
                        m.version.to_string(),
                        super::token::age(Some(m.created_at_ms)),
                        m.cause.clone(),
                        m.rows.to_string(),
                        m.failures.to_string(),
                        metric(m, "roc_auc"),
                        metric(m, "brier"),
                    ]
                })
                .collect();
            super::token::print_table(
                &[
                    "VERSION", "TRAINED", "CAUSE", "ROWS", "FAILURES", "AUC", "BRIER",
                ],
                &rows,
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
