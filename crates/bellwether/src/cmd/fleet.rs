//! `bellwether drift fleet`: every host of a server by overall drift, with its top findings,
//! and the hosts that differ from their peers (same role, different packages).

use std::process::ExitCode;

use bellwether_model::text::{count, escape, Escaped};
use bellwether_model::{DriftCategory, Finding};

use std::fmt::Write;

use bellwether_server::types::FleetDrift;

use super::token::{client_error, labels_text, runtime, table, ClientArgs};
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
        Escaped(&f.attribute),
        Escaped(f.baseline.as_deref().unwrap_or("absent")),
        Escaped(f.current.as_deref().unwrap_or("absent")),
        f.weight
    )
}

/// The human report: the table, each drifted host's findings, and the peer outliers.
pub fn render(fleet: &FleetDrift, peer_label: &str, server: &str) -> String {
    let mut out = String::new();
    if fleet.hosts.is_empty() {
        let _ = writeln!(out, "No hosts have enrolled with {} yet.", Escaped(server));
        return out;
    }
    let rows: Vec<Vec<String>> = fleet
        .hosts
        .iter()
        .map(|h| {
            let s = &h.score;
            let (o, c, p, d) = if h.has_baseline {
                (
                    s.overall.to_string(),
                    s.configuration.to_string(),
                    s.performance.to_string(),
                    s.dependency.to_string(),
                )
            } else {
                ("-".into(), "-".into(), "-".into(), "-".into())
            };
            let top = if !h.has_baseline {
                "no baseline".to_string()
            } else {
                s.findings
                    .first()
                    .map(|f| escape(&f.attribute).into_owned())
                    .unwrap_or_else(|| "-".into())
            };
            vec![h.name.to_string(), o, c, p, d, labels_text(&h.labels), top]
        })
        .collect();
    out.push_str(&table(
        &[
            "HOST",
            "OVERALL",
            "CONFIG",
            "PERF",
            "DEPEND",
            "LABELS",
            "TOP FINDING",
        ],
        &rows,
    ));
    let drifted: Vec<_> = fleet
        .hosts
        .iter()
        .filter(|h| !h.score.findings.is_empty())
        .collect();
    if !drifted.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "Findings (top {} per host):",
            bellwether_server::types::FLEET_TOP_FINDINGS
        );
        for h in drifted {
            let _ = writeln!(out, "{} (overall {})", h.name, h.score.overall);
            for f in &h.score.findings {
                let _ = writeln!(out, "  {}", finding_text(f));
            }
        }
    }
    let _ = writeln!(out);
    if fleet.peer_outliers.is_empty() {
        let _ = writeln!(
            out,
            "No host differs from its peers (grouped by label `{}`).",
            Escaped(peer_label)
        );
    } else {
        let _ = writeln!(
            out,
            "Hosts that differ from their peers (grouped by label `{}`):",
            Escaped(peer_label)
        );
        for o in &fleet.peer_outliers {
            // `peers` and `compared` count the host itself (the API's group size); its peers
            // are the others.
            let _ = writeln!(
                out,
                "{} ({}={}, {}): {}",
                Escaped(&o.host),
                Escaped(&o.label),
                Escaped(&o.value),
                count(o.peers.saturating_sub(1), "peer"),
                count(o.differences.len(), "difference")
            );
            for d in o.differences.iter().take(5) {
                let _ = writeln!(
                    out,
                    "  {}: {} here, {} on {} of {}",
                    Escaped(&d.attribute),
                    Escaped(d.host.as_deref().unwrap_or("absent")),
                    Escaped(d.majority.as_deref().unwrap_or("absent")),
                    d.majority_hosts,
                    count(d.compared.saturating_sub(1), "peer")
                );
            }
            if o.differences.len() > 5 {
                let _ = writeln!(out, "  … and {} more", o.differences.len() - 5);
            }
        }
    }
    out
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let rt = runtime()?;
    let mut fleet = rt
        .block_on(client.fleet_drift(Some(&args.peer_label)))
        .map_err(client_error)?;
    if let Some(n) = args.top {
        fleet.hosts.truncate(n);
    }
    if args.output == OutputFormat::Json {
        println!("{}", serde_json::to_string_pretty(&fleet)?);
    } else {
        print!("{}", render(&fleet, &args.peer_label, client.base()));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use bellwether_drift::peers::PeerDifference;
    use bellwether_model::{DriftScore, HostName, Unit};
    use bellwether_server::types::{FleetHost, PeerOutlierEntry};

    use super::*;

    #[test]
    fn the_report_lists_hosts_findings_and_peer_outliers() {
        let finding = Finding {
            category: DriftCategory::Configuration,
            attribute: "package:openssl".into(),
            baseline: Some("3.0.11".into()),
            current: Some("3.1.4".into()),
            weight: Unit::saturating(0.35),
        };
        let fleet = FleetDrift {
            hosts: vec![
                FleetHost {
                    name: HostName::new("web-02").unwrap(),
                    labels: BTreeMap::from([("role".to_string(), "web".to_string())]),
                    score: DriftScore {
                        configuration: Unit::saturating(0.35),
                        overall: Unit::saturating(0.35),
                        findings: vec![finding],
                        ..DriftScore::default()
                    },
                    has_baseline: true,
                },
                FleetHost {
                    name: HostName::new("db-01").unwrap(),
                    labels: BTreeMap::new(),
                    score: DriftScore::default(),
                    has_baseline: false,
                },
            ],
            peer_outliers: vec![PeerOutlierEntry {
                label: "role".into(),
                value: "web".into(),
                peers: 3,
                host: "web-02".into(),
                differences: vec![PeerDifference {
                    attribute: "package:openssl".into(),
                    majority: Some("3.0.11".into()),
                    host: Some("3.1.4".into()),
                    majority_hosts: 2,
                    compared: 3,
                }],
            }],
        };
        let text = render(&fleet, "role", "http://127.0.0.1:7878");
        let expected = "\
HOST    OVERALL  CONFIG  PERF   DEPEND  LABELS    TOP FINDING
web-02  0.350    0.350   0.000  0.000   role=web  package:openssl
db-01   -        -       -      -       -         no baseline

Findings (top 5 per host):
web-02 (overall 0.350)
  configuration package:openssl  3.0.11 -> 3.1.4  (weight 0.350)

Hosts that differ from their peers (grouped by label `role`):
web-02 (role=web, 2 peers): 1 difference
  package:openssl: 3.1.4 here, 3.0.11 on 2 of 2 peers
";
        assert_eq!(text, expected);
        let empty = FleetDrift {
            hosts: vec![],
            peer_outliers: vec![],
        };
        assert_eq!(
            render(&empty, "role", "http://s"),
            "No hosts have enrolled with http://s yet.\n"
        );
    }
}
