//! `bellwether hosts` and `bellwether hosts show NAME`: what a server knows about its hosts.

use std::process::ExitCode;

use bellwether_model::text::Escaped;
use bellwether_model::HostName;

use super::token::{age, client_error, labels_text, print_table, runtime, ClientArgs};
use super::{OutputFormat, UsageError};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    client: ClientArgs,
    /// `human` (a table) or `json` (the API's JSON).
    #[arg(long, value_enum, default_value_t = OutputFormat::Human, global = true)]
    output: OutputFormat,
    #[command(subcommand)]
    cmd: Option<HostsCmd>,
}

#[derive(Debug, clap::Subcommand)]
enum HostsCmd {
    /// One host: labels, when it was last seen, its profile in brief and its drift.
    Show {
        /// The host's name, as it enrolled.
        name: String,
    },
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let rt = runtime()?;
    match args.cmd {
        None => {
            let hosts = rt.block_on(client.hosts()).map_err(client_error)?;
            if args.output == OutputFormat::Json {
                println!("{}", serde_json::to_string_pretty(&hosts)?);
                return Ok(ExitCode::SUCCESS);
            }
            if hosts.is_empty() {
                println!(
                    "No hosts have enrolled with {} yet.",
                    Escaped(client.base())
                );
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = hosts
                .iter()
                .map(|h| {
                    vec![
                        h.name.to_string(),
                        labels_text(&h.labels),
                        age(h.last_seen_ms),
                        if h.has_baseline { "yes" } else { "no" }.to_string(),
                        h.overall_drift
                            .map(|d| format!("{d:.3}"))
                            .unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            print_table(&["HOST", "LABELS", "LAST SEEN", "BASELINE", "DRIFT"], &rows);
        }
        Some(HostsCmd::Show { name }) => {
            let name = HostName::new(name).map_err(|e| UsageError(format!("NAME: {e}")))?;
            let detail = rt.block_on(client.host(&name)).map_err(client_error)?;
            let drift = if detail.baseline_at_ms.is_some() {
                Some(
                    rt.block_on(client.host_drift(&name))
                        .map_err(client_error)?,
                )
            } else {
                None
            };
            if args.output == OutputFormat::Json {
                println!("{}", serde_json::to_string_pretty(&detail)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!("Host:      {}", detail.name);
            println!("Labels:    {}", labels_text(&detail.labels));
            println!("Enrolled:  {}", age(Some(detail.enrolled_at_ms)));
            println!("Last seen: {}", age(detail.last_seen_ms));
            println!(
                "Baseline:  {}",
                detail
                    .baseline_at_ms
                    .map(|t| format!("captured {}", age(Some(t))))
                    .unwrap_or_else(|| "none".into())
            );
            match &detail.profile {
                None => println!("Profile:   none received yet"),
                Some(p) => {
                    let os = p.os.as_ref().map(|o| {
                        o.pretty_name.clone().unwrap_or_else(|| {
                            format!("{} {}", o.id, o.version_id.clone().unwrap_or_default())
                        })
                    });
                    println!("OS:        {}", Escaped(&os.unwrap_or_else(|| "-".into())));
                    println!("Kernel:    {}", Escaped(p.kernel.as_deref().unwrap_or("-")));
                    println!(
                        "Packages:  {}",
                        p.packages
                            .as_ref()
                            .map(|m| m.len().to_string())
                            .unwrap_or_else(|| "-".into())
                    );
                    if let Some(hw) = &p.hardware {
                        println!(
                            "Hardware:  {} CPUs, {} MiB",
                            hw.cpu_count
                                .map(|c| c.to_string())
                                .unwrap_or_else(|| "?".into()),
                            hw.memory_total_kb
                                .map(|k| (k / 1024).to_string())
                                .unwrap_or_else(|| "?".into())
                        );
                    }
                    for d in &p.dependencies {
                        let state = if d.reachable {
                            format!("reachable in {:.1} ms", d.latency_ms.unwrap_or(0.0))
                        } else {
                            "unreachable".into()
                        };
                        println!(
                            "Depends:   {} ({}) {state}",
                            Escaped(&d.name),
                            Escaped(&d.endpoint.to_string())
                        );
                    }
                    for n in &p.notes {
                        println!("Note:      {}", Escaped(n));
                    }
                }
            }
            if let Some(d) = drift {
                println!(
                    "Drift:     overall {} (configuration {}, performance {}, dependency {})",
                    d.overall, d.configuration, d.performance, d.dependency
                );
                for f in d.findings.iter().take(10) {
                    println!("  {}", super::fleet::finding_text(f));
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
