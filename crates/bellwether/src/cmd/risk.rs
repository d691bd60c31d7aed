//! `bellwether risk`: each host's failure probability for a proposed update, and the factors
//! behind it, from the server's latest model.

use std::process::ExitCode;

use super::model_server::api_error;
use super::token::{print_table, runtime, ClientArgs};
use super::OutputFormat;
use bellwether_model::text::Escaped;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum UpdateType {
    Major,
    Minor,
    Patch,
}

#[derive(Debug, clap::Args)]
#[command(disable_version_flag = true)]
pub struct Args {
    /// The update's name, such as `websvc` or `openssl`.
    #[arg(long)]
    update: String,
    /// The update's version.
    #[arg(long)]
    version: String,
    /// What kind of version change it is; models trained on histories with `update_type`
    /// weigh it.
    #[arg(long = "type", value_enum)]
    update_type: Option<UpdateType>,
    /// Only these hosts (repeat or comma-separate); every enrolled host when absent.
    #[arg(long = "host", value_name = "NAME", value_delimiter = ',')]
    hosts: Vec<String>,
    /// How many factors to show per host in the table.
    #[arg(long, default_value_t = 3)]
    factors: usize,
    #[command(flatten)]
    client: ClientArgs,
    /// A table (riskiest first) or the API's JSON.
    #[arg(long, value_enum, default_value_t)]
    output: OutputFormat,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let client = a.client.client()?;
    let t = a.update_type.map(|t| match t {
        UpdateType::Major => "major",
        UpdateType::Minor => "minor",
        UpdateType::Patch => "patch",
    });
    let r = runtime()?
        .block_on(client.risk(&a.update, &a.version, t, &a.hosts))
        .map_err(api_error)?;
    if a.output == OutputFormat::Json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(ExitCode::SUCCESS);
    }
    if r.hosts.is_empty() {
        println!(
            "No hosts are enrolled with {}; nothing to score.",
            client.base()
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "Risk of {} {} by model version {}:",
        Escaped(&r.update.name),
        Escaped(&r.update.version),
        r.model_version
    );
    let rows: Vec<Vec<String>> = r
        .hosts
        .iter()
        .map(|h| {
            let factors: Vec<String> = h
                .contributing_factors
                .iter()
                .take(a.factors)
                .map(|f| {
                    let value = match &f.value {
                        serde_json::Value::Null => "?".to_string(),
                        serde_json::Value::String(s) => s.clone(),
                        v => v.to_string(),
                    };
                    format!(
                        "{}={} ({:+.2})",
                        Escaped(&f.feature),
                        Escaped(&value),
                        f.contribution
                    )
                })
                .collect();
            vec![
                h.host.to_string(),
                format!("{:.3}", h.probability),
                factors.join("; "),
            ]
        })
        .collect();
    print_table(&["HOST", "P(FAIL)", "TOP FACTORS (log-odds)"], &rows);
    Ok(ExitCode::SUCCESS)
}
