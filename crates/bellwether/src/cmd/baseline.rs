//! `bellwether baseline capture`: store hosts' current profiles (with their recent metric
//! means) as their known-good baselines.

use std::process::ExitCode;

use bellwether_model::HostName;
use bellwether_server::types::BaselineRequest;

use super::token::{client_error, runtime, ClientArgs};
use super::{OutputFormat, UsageError};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    cmd: BaselineCmd,
}

#[derive(Debug, clap::Subcommand)]
enum BaselineCmd {
    /// Capture baselines on the server, for the named hosts or for all of them. Hosts that
    /// have sent no profile yet are skipped and listed.
    Capture(CaptureArgs),
}

#[derive(Debug, clap::Args)]
struct CaptureArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// A host to capture; repeat for several.
    #[arg(
        long = "host",
        value_name = "H",
        required_unless_present = "all",
        conflicts_with = "all"
    )]
    hosts: Vec<String>,
    /// Capture every enrolled host.
    #[arg(long)]
    all: bool,
    /// `human` or `json` (the API's JSON).
    #[arg(long, value_enum, default_value_t = OutputFormat::Human)]
    output: OutputFormat,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let BaselineCmd::Capture(a) = args.cmd;
    let hosts = a
        .hosts
        .iter()
        .map(|h| HostName::new(h.clone()).map_err(|e| UsageError(format!("--host {h}: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let client = a.client.client()?;
    let rt = runtime()?;
    let resp = rt
        .block_on(client.capture_baselines(&BaselineRequest { hosts, all: a.all }))
        .map_err(client_error)?;
    if a.output == OutputFormat::Json {
        println!("{}", serde_json::to_string_pretty(&resp)?);
    } else {
        println!(
            "Captured {}.",
            bellwether_model::text::count(resp.captured.len(), "baseline")
        );
        for h in &resp.captured {
            println!("  captured  {h}");
        }
        for s in &resp.skipped {
            println!(
                "  skipped   {}: {}",
                s.host,
                bellwether_model::text::Escaped(&s.reason)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
