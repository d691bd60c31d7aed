//! `bellwether risk`: each host's failure probability for a proposed update, and the factors
//! behind it, from the server's latest model and the direct evidence of the same version;
//! `bellwether risk forgive` clears a host's evidence with a reason.

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
#[command(
    disable_version_flag = true,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Args {
    #[command(subcommand)]
    command: Option<RiskCommand>,
    /// The update's name, such as `websvc` or `openssl`.
    #[arg(long, required = true)]
    update: Option<String>,
    /// The update's version.
    #[arg(long, required = true)]
    version: Option<String>,
    /// Packages the update depends on (repeat or comma-separate): each host's version of
    /// each is a feature (`pkg:NAME`).
    #[arg(long = "depends-on", value_name = "PACKAGE", value_delimiter = ',')]
    depends_on: Vec<String>,
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

#[derive(Debug, clap::Subcommand)]
enum RiskCommand {
    /// Clear a host's direct evidence for one update and version (its failures and its
    /// peers' until now no longer count for it), with a reason; recorded as an event.
    Forgive(ForgiveArgs),
}

#[derive(Debug, clap::Args)]
#[command(disable_version_flag = true)]
struct ForgiveArgs {
    /// The host whose evidence is cleared.
    host: String,
    /// The update's name.
    #[arg(long)]
    update: String,
    /// The update's version.
    #[arg(long)]
    version: String,
    /// Why the evidence no longer holds (kept in the event log).
    #[arg(long)]
    reason: String,
    #[command(flatten)]
    client: ClientArgs,
    /// A sentence or the API's JSON.
    #[arg(long, value_enum, default_value_t)]
    output: OutputFormat,
}

fn forgive(a: ForgiveArgs) -> anyhow::Result<ExitCode> {
    if a.reason.trim().is_empty() {
        return Err(super::UsageError(
            "--reason must not be empty: say why the evidence no longer holds".into(),
        )
        .into());
    }
    let client = a.client.client()?;
    let req = bellwether_server::model_api::ForgiveRequest {
        host: a.host,
        update: a.update,
        version: a.version,
        reason: a.reason,
    };
    let r = runtime()?
        .block_on(client.forgive(&req))
        .map_err(api_error)?;
    if a.output == OutputFormat::Json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "Forgave {} for {} {}: {} of its outcomes no longer count ({}).",
            r.host,
            Escaped(&r.update),
            Escaped(&r.version),
            r.outcomes,
            Escaped(&r.reason)
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    if let Some(RiskCommand::Forgive(f)) = a.command {
        return forgive(f);
    }
    let (Some(update), Some(version)) = (a.update, a.version) else {
        return Err(super::UsageError("--update and --version are required".into()).into());
    };
    let client = a.client.client()?;
    let t = a.update_type.map(|t| match t {
        UpdateType::Major => "major",
        UpdateType::Minor => "minor",
        UpdateType::Patch => "patch",
    });
    let r = runtime()?
        .block_on(client.risk(&update, &version, t, &a.hosts, &a.depends_on))
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
                    if let Some(why) = &f.explanation {
                        return format!("{} ({:+.2})", Escaped(why), f.contribution);
                    }
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
