//! `bellwether drift fleet`: every host of a server by overall drift, with its top findings,
//! and the hosts that differ from their peers (same role, different packages).

use std::process::ExitCode;

use bellwether_model::{DriftCategory, Finding};

use super::token::{client_error, labels_text, print_table, runtime, ClientArgs};
use super::OutputFormat;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    client: ClientArgs,
    /// `human` (a table) or `json` (the API's JSON).
    #[arg(long, value_enum, default_value_t = OutputFormat::Human)]
    output: OutputFormat,
    /// Show only the N most drifted hosts.
    #[arg(long, value_name = "N")]
    top: Option<usize>,
    /// The label whose hosts are peers of each other.
    #[arg(long, default_value = "role")]
    peer_label: String,
}

/// One finding as a line: category, attribute, baseline → current, weight.
pub fn finding_text(f: &Finding) -> String {
    let cat = match f.category {
        DriftCategory::Configuration => "configuration",
        DriftCategory::Performance => "performance",
        DriftCategory::Dependency => "dependency",
    };
    format!(
        "{cat:<13} {}  {} -> {}  (weight {})",
        f.attribute,
        f.baseline.as_deref().unwrap_or("absent"),
        f.current.as_deref().unwrap_or("absent"),
        f.weight
    )
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let rt = runtime()?;
    let mut fleet = rt.block_on(client.fleet_drift(Some(&args.peer_label))).map_err(client_error)?;
    if let Some(n) = args.top {
        fleet.hosts.truncate(n);
    }
    if args.output == OutputFormat::Json {
        println!("{}", serde_json::to_string_pretty(&fleet)?);
        return Ok(ExitCode::SUCCESS);
    }
    if fleet.hosts.is_empty() {
        println!("No hosts have enrolled with {} yet.", client.base());
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = fleet
        .hosts
        .iter()
        .map(|h| {
            let s = &h.score;
            let (o, c, p, d) = if h.has_baseline {
                (s.overall.to_string(), s.configuration.to_string(), s.performance.to_string(), s.dependency.to_string())
            } else {
                ("-".into(), "-".into(), "-".into(), "-".into())
            };
            let top = if !h.has_baseline {
                "no baseline".to_string()
            } else {
                s.findings.first().map(|f| f.attribute.clone()).unwrap_or_else(|| "-".into())
            };
            vec![h.name.to_string(), o, c, p, d, labels_text(&h.labels), top]
        })
        .collect();
    print_table(&["HOST", "OVERALL", "CONFIG", "PERF", "DEPEND", "LABELS", "TOP FINDING"], &rows);
    let drifted: Vec<_> = fleet.hosts.iter().filter(|h| !h.score.findings.is_empty()).collect();
    if !drifted.is_empty() {
        println!();
        println!("Findings (top {} per host):", bellwether_server::types::FLEET_TOP_FINDINGS);
        for h in drifted {
            println!("{} (overall {})", h.name, h.score.overall);
            for f in &h.score.findings {
                println!("  {}", finding_text(f));
            }
        }
    }
    println!();
    if fleet.peer_outliers.is_empty() {
        println!("No host differs from its peers (grouped by label `{}`).", args.peer_label);
    } else {
        println!("Hosts that differ from their peers (grouped by label `{}`):", args.peer_label);
        for o in &fleet.peer_outliers {
            println!("{} ({}={}, {} peers): {} difference(s)", o.host, o.label, o.value, o.peers, o.differences.len());
            for d in o.differences.iter().take(5) {
                println!(
                    "  {}: {} here, {} on {} of {} peers",
                    d.attribute,
                    d.host.as_deref().unwrap_or("absent"),
                    d.majority.as_deref().unwrap_or("absent"),
                    d.majority_hosts,
                    d.compared
                );
            }
            if o.differences.len() > 5 {
                println!("  … and {} more", o.differences.len() - 5);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
