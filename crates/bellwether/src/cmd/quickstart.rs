//! `bellwether quickstart`: the whole story on one machine. A sandbox fleet comes up, its
//! baselines are captured, a few hosts drift in different ways, and the server's fleet drift
//! report shows which hosts moved, why, and which differ from their peers.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bellwether_drift::version::ChangeLevel;
use bellwether_model::{DriftCategory, DriftScore};

use super::sandbox::api::{Api, Captured, FleetDrift};
use super::sandbox::state::State;
use super::sandbox::{self, DriftRequest, UpOptions};
use super::{OutputFormat, UsageError};

/// Bring up a sandbox fleet, capture baselines, inject drift on a few hosts and print the
/// fleet drift report. Takes well under a minute.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// How many hosts (at least 4: each kind of drift goes to a different host).
    #[arg(long, default_value_t = 20)]
    hosts: usize,
    /// Seed for the generated fleet.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The sandbox's work directory.
    #[arg(long, default_value = ".sandbox")]
    dir: PathBuf,
    /// Leave the sandbox running afterwards, to look around.
    #[arg(long)]
    keep: bool,
    /// How long to wait for each stage (agents reporting, drift being recomputed).
    #[arg(long, default_value = "40s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Output format of the final report.
    #[arg(long, value_enum, default_value_t = OutputFormat::Human)]
    output: OutputFormat,
}

/// One planned injection and what the drift report must show for it.
struct Injection {
    host: String,
    kind: &'static str,
    request: DriftRequest,
    category: DriftCategory,
    /// The finding's attribute starts with this.
    attribute: String,
    /// Filled in once injected.
    what: String,
}

/// Picks four different hosts: a web host gets a major package upgrade, a db host a load
/// spike, another web host loses its dependency, a cache host gets new DNS resolvers.
fn plan_injections(state: &State) -> anyhow::Result<Vec<Injection>> {
    let of_role = |role: &'static str| -> Vec<String> {
        state
            .hosts
            .iter()
            .filter(|h| h.role == role)
            .map(|h| h.name.clone())
            .collect()
    };
    let web = of_role("web");
    let (w1, w2) = (web.first().cloned(), web.get(1).cloned());
    let db = of_role("db").first().cloned();
    let cache = of_role("cache").first().cloned();
    let (Some(w1), Some(w2), Some(db), Some(cache)) = (w1, w2, db, cache) else {
        return Err(UsageError(
            "--hosts: need at least 4 hosts (two web, one db, one cache)".into(),
        )
        .into());
    };
    let (pkg, _) = sandbox::fleet::role_package("web");
    Ok(vec![
        Injection {
            host: w1,
            kind: "package",
            request: DriftRequest::Package {
                name: Some(pkg.into()),
                level: ChangeLevel::Major,
            },
            category: DriftCategory::Configuration,
            attribute: format!("package:{pkg}"),
            what: String::new(),
        },
        Injection {
            host: db,
            kind: "metric",
            request: DriftRequest::Load { load1: None },
            category: DriftCategory::Performance,
            attribute: "metric:load1".into(),
            what: String::new(),
        },
        Injection {
            host: w2,
            kind: "dependency",
            request: DriftRequest::Dependency {
                name: None,
                endpoint: None,
            },
            category: DriftCategory::Dependency,
            attribute: format!("dependency:{}", sandbox::fleet::role_dependency("web")),
            what: String::new(),
        },
        Injection {
            host: cache,
            kind: "resolver",
            request: DriftRequest::Resolvers { resolvers: vec![] },
            category: DriftCategory::Dependency,
            attribute: "dns.resolver".into(),
            what: String::new(),
        },
    ])
}

fn shows(score: &DriftScore, inj: &Injection) -> bool {
    score
        .findings
        .iter()
        .any(|f| f.category == inj.category && f.attribute.starts_with(&inj.attribute))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.hosts < 4 {
        return Err(UsageError(format!("--hosts {}: need at least 4 hosts", args.hosts)).into());
    }
    let progress = std::io::stderr().is_terminal();
    let t0 = Instant::now();
    let state = sandbox::up(&UpOptions {
        hosts: args.hosts,
        seed: args.seed,
        dir: args.dir.clone(),
        interval: Duration::from_secs(1),
        timeout: args.timeout,
        progress,
        scenario: None,
    })?;
    let result = story(&state, &args, t0, progress);
    if args.keep {
        if result.is_ok() {
            print_keep(&state);
        }
    } else {
        sandbox::down(&state.dir, Duration::from_secs(5), true)
            .with_context(|| format!("could not stop the sandbox in {}", state.dir.display()))?;
    }
    result
}

fn say(output: OutputFormat, text: impl AsRef<str>) {
    if output == OutputFormat::Human {
        println!("{}", text.as_ref());
    }
}

fn story(state: &State, args: &Args, t0: Instant, progress: bool) -> anyhow::Result<ExitCode> {
    let out = args.output;
    let token = std::fs::read_to_string(&state.operator_token_file)
        .with_context(|| format!("could not read {}", state.operator_token_file.display()))?;
    let api = Api::new(&state.server_url, token.trim())?;
    let rt = sandbox::runtime()?;
    let roles = |role: &str| state.hosts.iter().filter(|h| h.role == role).count();

    say(
        out,
        format!(
            "Bellwether quickstart: a sandbox fleet of {} hosts on SQLite (seed {})",
            state.hosts.len(),
            args.seed
        ),
    );
    say(out, "");
    say(
        out,
        format!(
            "1. Fleet up in {:.1}s: {} agents reported their profiles (web ×{}, db ×{}, cache ×{}) to {}.",
            t0.elapsed().as_secs_f64(),
            state.hosts.len(),
            roles("web"),
            roles("db"),
            roles("cache"),
            state.server_url
        ),
    );

    let captured: Captured =
        rt.block_on(api.post("/api/v1/baselines", &serde_json::json!({"all": true})))?;
    if captured.captured.len() != state.hosts.len() {
        anyhow::bail!(
            "baselines were captured for {} of {} hosts; skipped: {}",
            captured.captured.len(),
            state.hosts.len(),
            serde_json::to_string(&captured.skipped)?
        );
    }
    say(
        out,
        format!(
            "2. Known-good baselines captured for all {} hosts.",
            captured.captured.len()
        ),
    );

    let mut injections = plan_injections(state)?;
    for inj in &mut injections {
        inj.what = sandbox::inject(&state.dir, &inj.host, inj.request.clone())?;
    }
    say(
        out,
        format!("3. Drift injected on {} hosts:", injections.len()),
    );
    for inj in &injections {
        say(
            out,
            format!("     {:<10} {:<11} {}", inj.host, inj.kind, inj.what),
        );
    }

    let t_drift = Instant::now();
    rt.block_on(wait_for_drift(&api, &injections, args.timeout, progress))?;
    say(
        out,
        format!(
            "4. The agents noticed and the server recomputed drift in {:.1}s.",
            t_drift.elapsed().as_secs_f64()
        ),
    );

    let fleet: FleetDrift = rt
        .block_on(api.get("/api/v1/fleet/drift"))?
        .context("the server has no fleet drift view")?;
    if out == OutputFormat::Json {
        let injected: Vec<serde_json::Value> = injections
            .iter()
            .map(|i| serde_json::json!({"host": i.host, "kind": i.kind, "change": i.what}))
            .collect();
        let v = serde_json::json!({
            "server_url": state.server_url, "hosts": state.hosts.len(), "seed": args.seed,
            "injected": injected, "fleet": fleet,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_report(&fleet);
        println!();
        println!("Done in {:.1}s.", t0.elapsed().as_secs_f64());
    }
    Ok(ExitCode::SUCCESS)
}

/// Polls each drifted host's score until it shows the injected change.
async fn wait_for_drift(
    api: &Api,
    injections: &[Injection],
    timeout: Duration,
    progress: bool,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    let pb = if progress {
        let pb = indicatif::ProgressBar::new(injections.len() as u64);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} waiting for drift to show [{bar:20}] {pos}/{len} ({elapsed})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        pb.enable_steady_tick(Duration::from_millis(100));
        pb
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut pending: Vec<&Injection> = injections.iter().collect();
    loop {
        let mut still = Vec::new();
        for inj in pending {
            let score: Option<DriftScore> = api
                .get(&format!("/api/v1/hosts/{}/drift", inj.host))
                .await?;
            if score.as_ref().is_some_and(|s| shows(s, inj)) {
                pb.inc(1);
            } else {
                still.push(inj);
            }
        }
        pending = still;
        if pending.is_empty() {
            pb.finish_and_clear();
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            pb.abandon();
            let what: Vec<String> = pending
                .iter()
                .map(|i| format!("{} ({} drift, {})", i.host, i.kind, i.attribute))
                .collect();
            anyhow::bail!(
                "drift did not show within {} on: {}",
                humantime::format_duration(timeout),
                what.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn opt(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("-")
}

fn print_report(fleet: &FleetDrift) {
    println!();
    println!("Fleet drift, highest first");
    println!("  Scores are in [0, 1]: configuration (packages, OS, kernel, hardware, network),");
    println!(
        "  performance (metrics against the baseline's), dependency (reachability, latency, DNS)."
    );
    println!();
    println!(
        "  {:<10} {:<6} {:>7} {:>7} {:>7} {:>7}  TOP FINDINGS",
        "HOST", "ROLE", "OVERALL", "CONFIG", "PERF", "DEP"
    );
    let mut quiet = 0;
    for h in &fleet.hosts {
        let Some(s) = h.score.as_ref().filter(|s| s.overall.get() > 0.0) else {
            quiet += 1;
            continue;
        };
        let role = h.labels.get("role").map(String::as_str).unwrap_or("-");
        let mut findings = s.findings.iter().take(3).map(|f| {
            format!(
                "{} {} → {} ({})",
                f.attribute,
                opt(&f.baseline),
                opt(&f.current),
                f.weight
            )
        });
        let lead = format!(
            "  {:<10} {:<6} {:>7} {:>7} {:>7} {:>7}  ",
            h.name,
            role,
            s.overall.to_string(),
            s.configuration.to_string(),
            s.performance.to_string(),
            s.dependency.to_string()
        );
        println!("{lead}{}", findings.next().unwrap_or_default());
        for f in findings {
            println!("{:width$}{f}", "", width = lead.chars().count());
        }
    }
    if quiet > 0 {
        println!("  … and {quiet} hosts with no drift from their baselines.");
    }
    println!();
    println!("Peer outliers: hosts that differ from others with the same role");
    let lines = peer_lines(&fleet.peer_outliers);
    if lines.is_empty() {
        println!("  none");
    }
    for l in lines {
        println!("  {l}");
    }
}

/// Renders the server's peer outliers, whether it sends them one per host or grouped by label.
fn peer_lines(values: &[serde_json::Value]) -> Vec<String> {
    let mut out = Vec::new();
    let mut one = |group: Option<String>, v: &serde_json::Value| {
        let host = v.get("host").and_then(|h| h.as_str()).unwrap_or("?");
        let group = group
            .or_else(|| {
                let label = v.get("label").and_then(|x| x.as_str())?;
                let value = v.get("value").and_then(|x| x.as_str())?;
                Some(format!("{label}={value}"))
            })
            .map(|g| format!("({g})"))
            .unwrap_or_default();
        let diffs: Vec<String> = v
            .get("differences")
            .and_then(|d| d.as_array())
            .map(|d| {
                d.iter()
                    .map(|x| {
                        let s = |k: &str| {
                            x.get(k)
                                .and_then(|y| y.as_str())
                                .unwrap_or("not installed")
                                .to_owned()
                        };
                        format!(
                            "{} {} (peers: {})",
                            s("attribute"),
                            s("host"),
                            s("majority")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let shown: Vec<&str> = diffs.iter().take(3).map(String::as_str).collect();
        let more = if diffs.len() > 3 {
            format!(" (+{} more)", diffs.len() - 3)
        } else {
            String::new()
        };
        out.push(format!("{host:<10} {group:<14} {}{more}", shown.join("; ")));
    };
    for v in values {
        match v.get("outliers").and_then(|o| o.as_array()) {
            Some(outliers) => {
                let group = v.get("value").and_then(|x| x.as_str()).map(|val| {
                    let label = v.get("label").and_then(|x| x.as_str()).unwrap_or("role");
                    format!("{label}={val}")
                });
                for o in outliers {
                    one(group.clone(), o);
                }
            }
            None => one(None, v),
        }
    }
    out
}

fn print_keep(state: &State) {
    let dir = state.dir.display();
    println!();
    println!("The sandbox is still running. To look around:");
    println!("  export BELLWETHER_SERVER={}", state.server_url);
    println!(
        "  export BELLWETHER_TOKEN=$(cat {})",
        state.operator_token_file.display()
    );
    println!("  bellwether drift fleet");
    println!("  bellwether hosts");
    println!("  bellwether sandbox status --dir {dir}");
    println!(
        "  bellwether sandbox drift --dir {dir} --host {} --kind metric",
        state.hosts[0].name
    );
    println!("Stop it with:");
    println!("  bellwether sandbox down --dir {dir} --purge");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_lines_accept_flat_and_grouped_outliers() {
        let flat = serde_json::json!([{
            "host": "web-04", "label": "role", "value": "web",
            "differences": [{"attribute": "package:strace", "majority": null, "host": "6.1-0.1", "majority_hosts": 9, "compared": 10}]
        }]);
        let lines = peer_lines(flat.as_array().unwrap());
        assert_eq!(
            lines,
            vec!["web-04     (role=web)     package:strace 6.1-0.1 (peers: not installed)"]
        );
        let grouped = serde_json::json!([{
            "label": "role", "value": "db", "hosts": ["db-01", "db-02"],
            "outliers": [{"host": "db-02", "differences": [{"attribute": "os", "majority": "debian 12", "host": "ubuntu 22.04"}]}]
        }]);
        let lines = peer_lines(grouped.as_array().unwrap());
        assert_eq!(
            lines,
            vec!["db-02      (role=db)      os ubuntu 22.04 (peers: debian 12)"]
        );
    }
}
