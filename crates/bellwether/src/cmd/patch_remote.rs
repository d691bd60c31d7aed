//! `bellwether patch … --server URL`: the patch runs in the server as a durable task; this is
//! its operator client. `start` posts the plan with the host whose agent runs the instances
//! and the proxy the server drives; `--wait` follows the patch's events as they are stored
//! (`GET /api/v1/events?task=ID&after=N`, across a restart or a failover to another replica)
//! until it is settled and exits 0 when it was promoted, 1 when it was rolled back or failed. `status`, `report`
//! and `abort` read and steer the server's patches.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use bellwether_engine::patch::PatchReport;
use bellwether_model::text::Escaped;
use serde_json::{json, Value};

use super::model_server::api_error;
use super::token::{runtime, ClientArgs};
use super::{OutputFormat, UsageError};

/// The flags of the server mode; `--server` switches it on.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RemoteArgs {
    /// Run the patch in this Bellwether server (a durable task) instead of here. Without it
    /// the patch runs in this process (one-machine mode). Replicas on one PostgreSQL store: a
    /// comma-separated list; each call fails over to another when one is down or not leading.
    #[arg(long, global = true, value_name = "URL[,URL...]")]
    pub server: Option<String>,
    /// The operator token (with --server). When absent, BELLWETHER_TOKEN or
    /// ./bellwether-data/operator.token.
    #[arg(long, env = "BELLWETHER_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// With --server: the enrolled host whose agent starts, stops and samples the instances.
    #[arg(long, global = true)]
    pub host: Option<String>,
    /// With --server: the name of the proxy's admin token in the server
    /// (`bellwether server --proxy-token-file NAME=FILE`).
    #[arg(long, global = true, value_name = "NAME")]
    pub proxy_token: Option<String>,
    /// With --server: the proxy's admin URL, when not `http://` and the plan's `proxy.admin`.
    #[arg(long, global = true, value_name = "URL")]
    pub proxy_admin_url: Option<String>,
    /// With --server: the original's PID, when the plan gives a pidfile that only the host
    /// can read (read here when it is readable).
    #[arg(long, global = true)]
    pub original_pid: Option<u32>,
    #[command(flatten)]
    pub tls: super::tls::ClientTlsArgs,
}

/// What to do on the server.
pub enum Verb {
    Start {
        plan: PathBuf,
        wait: bool,
        id: Option<String>,
        output: OutputFormat,
    },
    Status {
        output: OutputFormat,
    },
    Report {
        id: String,
        output: OutputFormat,
    },
    Abort {
        id: String,
        reason: Option<String>,
    },
}

pub fn run(args: &RemoteArgs, verb: Verb) -> anyhow::Result<ExitCode> {
    let server = args.server.clone().unwrap_or_default();
    let client = ClientArgs {
        server: vec![server],
        token: args.token.clone(),
        tls: args.tls.clone(),
    }
    .client()?;
    let rt = runtime()?;
    match verb {
        Verb::Start {
            plan,
            wait,
            id,
            output,
        } => {
            let body = start_body(args, &plan, id)?;
            let v = rt
                .block_on(client.post_json("/api/v1/patches", Some(&body)))
                .map_err(api_error)?;
            let id = v["id"].as_str().unwrap_or_default().to_string();
            if !wait {
                println!("{id}");
                eprintln!(
                    "patch {id} runs in the server at {}; follow it with `bellwether patch report {id} --server {}`",
                    client.base(),
                    client.base()
                );
                return Ok(ExitCode::SUCCESS);
            }
            let human = output == OutputFormat::Human;
            if human {
                println!("patch {id}: started in the server at {}", client.base());
            }
            let report = rt.block_on(follow(&client, &id, human))?;
            if output == OutputFormat::Json {
                // Every line is one JSON value: the events, then the final report.
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print_summary(&report);
            }
            Ok(if report.outcome() == "promoted" {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Verb::Status { output } => {
            let rows = rt
                .block_on(client.get_json("/api/v1/patches"))
                .map_err(api_error)?;
            if output == OutputFormat::Json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(ExitCode::SUCCESS);
            }
            let rows = rows.as_array().cloned().unwrap_or_default();
            if rows.is_empty() {
                println!("no patches in the server at {}", client.base());
            }
            for r in rows {
                let trigger = r["trigger"]
                    .as_str()
                    .map(|t| format!(" trigger={}", Escaped(t)))
                    .unwrap_or_default();
                println!(
                    "{:<32} {:<12} {:<16} severity={:.2}{trigger}  {}",
                    Escaped(r["id"].as_str().unwrap_or("")),
                    Escaped(r["outcome"].as_str().unwrap_or("")),
                    Escaped(r["host"].as_str().unwrap_or("")),
                    r["last_severity"].as_f64().unwrap_or(0.0),
                    Escaped(r["last_event"].as_str().unwrap_or(""))
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Verb::Report { id, output } => {
            let v = rt
                .block_on(client.get_json(&format!("/api/v1/patches/{id}/report")))
                .map_err(api_error)?;
            let r: PatchReport = serde_json::from_value(v)?;
            match output {
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&r)?),
                OutputFormat::Human => {
                    print_summary(&r);
                    for e in &r.events {
                        print_event(&r, e);
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Verb::Abort { id, reason } => {
            let body = json!({ "reason": reason });
            let v = rt
                .block_on(client.post_json(&format!("/api/v1/patches/{id}/abort"), Some(&body)))
                .map_err(api_error)?;
            println!(
                "patch {}: abort requested (stage {})",
                Escaped(&id),
                Escaped(&stage_text(&v["stage"]))
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn stage_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Object(m) => m
            .iter()
            .next()
            .map(|(k, v)| format!("{k} {}", v["phase"]))
            .unwrap_or_default(),
        _ => String::new(),
    }
}

/// The request body of `patch start --server`.
fn start_body(args: &RemoteArgs, plan: &Path, id: Option<String>) -> anyhow::Result<Value> {
    let yaml = std::fs::read_to_string(plan)
        .map_err(|e| UsageError(format!("{}: cannot read: {e}", plan.display())))?;
    let file = plan.display().to_string();
    // Checked here too, so a bad plan is exit 2 with its line and column before any call.
    let parsed = bellwether_engine::patch::PatchPlan::parse(&file, &yaml)
        .map_err(|e| UsageError(e.to_string()))?;
    let host = args.host.clone().ok_or_else(|| {
        UsageError(
            "patch start --server needs --host: the enrolled host whose agent runs the instances"
                .into(),
        )
    })?;
    let token = args.proxy_token.clone().ok_or_else(|| {
        UsageError("patch start --server needs --proxy-token NAME: the name of the proxy's admin token in the server (bellwether server --proxy-token-file NAME=FILE)".into())
    })?;
    // A pidfile readable here (the CLI runs on the database host) gives the original's PID.
    let original_pid = args.original_pid.or_else(|| {
        parsed
            .original
            .pidfile
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok()))
    });
    let mut proxy = json!({ "token": token });
    if let Some(u) = &args.proxy_admin_url {
        proxy["admin_url"] = json!(u);
    }
    let mut body = json!({ "plan_yaml": yaml, "file": file, "host": host, "proxy": proxy });
    if let Some(pid) = original_pid {
        body["original_pid"] = json!(pid);
    }
    if let Some(id) = id {
        body["id"] = json!(id);
    }
    Ok(body)
}

/// Follows the patch's events (`GET /api/v1/events?task=ID&after=N`, oldest first), printing
/// each one as it is stored (a line of text, or with `--output json` the event as a JSON line),
/// until the patch is settled (final, no action in flight); then prints what was stored last
/// and returns the patch's report. A server that cannot be reached, or replicas without a
/// leader, are retried for a minute (a restart, a failover to another replica).
async fn follow(
    client: &bellwether_server::client::Client,
    id: &str,
    human: bool,
) -> anyhow::Result<PatchReport> {
    let mut after = 0i64;
    let mut origin: Option<i64> = None;
    let mut trouble_since: Option<tokio::time::Instant> = None;
    loop {
        let step = async {
            print_new_events(client, id, &mut after, &mut origin, human).await?;
            let v = client.get_json(&format!("/api/v1/patches/{id}")).await?;
            let report: PatchReport = serde_json::from_value(v["report"].clone()).map_err(|e| {
                bellwether_server::client::ClientError::Api {
                    url: client.base().to_string(),
                    status: 200,
                    message: format!("not a patch report: {e}"),
                }
            })?;
            let settled = report.stage.is_final() && v["awaiting"].is_null();
            if settled {
                // The events stored before the patch settled, that the last call missed.
                print_new_events(client, id, &mut after, &mut origin, human).await?;
            }
            Ok::<_, bellwether_server::client::ClientError>(settled.then_some(report))
        };
        match step.await {
            Ok(Some(report)) => return Ok(report),
            Ok(None) => trouble_since = None,
            Err(e) if retryable(&e) => {
                let since = *trouble_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() > Duration::from_secs(60) {
                    anyhow::bail!("no server has answered for a minute: {e}");
                }
                eprintln!("patch {id}: {e}; retrying");
            }
            Err(e) => return Err(api_error(e)),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A failure that a restart or a failover heals: nothing answered, or no replica led.
fn retryable(e: &bellwether_server::client::ClientError) -> bool {
    use bellwether_server::client::ClientError as E;
    matches!(
        e,
        E::Unreachable { .. }
            | E::NoServer { .. }
            | E::Api {
                status: 502..=504,
                ..
            }
    )
}

/// Prints the events of task `id` stored after event `after` (page by page), moving `after`.
async fn print_new_events(
    client: &bellwether_server::client::Client,
    id: &str,
    after: &mut i64,
    origin: &mut Option<i64>,
    human: bool,
) -> Result<(), bellwether_server::client::ClientError> {
    use std::io::Write as _;
    const PAGE: usize = 500;
    loop {
        let v = client
            .get_json(&format!(
                "/api/v1/events?task={id}&after={after}&limit={PAGE}"
            ))
            .await?;
        let events: Vec<bellwether_store::Event> =
            serde_json::from_value(v).map_err(|e| bellwether_server::client::ClientError::Api {
                url: client.base().to_string(),
                status: 200,
                message: format!("not a list of events: {e}"),
            })?;
        let mut out = std::io::stdout().lock();
        for e in &events {
            *after = (*after).max(e.id);
            if human {
                let t0 = *origin.get_or_insert(e.ts_ms);
                let _ = writeln!(
                    out,
                    "[{:>7.2}s] {:<24} {}",
                    (e.ts_ms - t0) as f64 / 1000.0,
                    Escaped(e.kind.strip_prefix("patch.").unwrap_or(&e.kind)),
                    Escaped(&e.reason)
                );
            } else if let Ok(line) = serde_json::to_string(e) {
                let _ = writeln!(out, "{line}");
            }
        }
        let _ = out.flush();
        if events.len() < PAGE {
            return Ok(());
        }
    }
}

fn print_event(r: &PatchReport, e: &bellwether_engine::patch::Event) {
    println!(
        "[{:>7.2}s] {:<24} {}",
        (e.at_ms - r.started_ms) as f64 / 1000.0,
        Escaped(&e.kind),
        Escaped(&e.message)
    );
}

fn print_summary(report: &PatchReport) {
    println!(
        "patch {}: {}",
        Escaped(&report.id),
        super::patch::stage_text(report)
    );
    if let Some(t) = &report.trigger {
        println!(
            "  triggered by {} against the {}: value {:.6} vs baseline {:.6} ({:+.0}%), for {:.1}s, severity {:.2}",
            Escaped(&t.metric), Escaped(&t.against), t.value, t.baseline, t.deviation * 100.0, t.for_ms as f64 / 1000.0, t.severity_score
        );
    }
    for p in &report.phases {
        println!(
            "  {} phase {}: {} — {} ms{}",
            Escaped(&p.kind),
            p.phase,
            Escaped(&p.name),
            p.took_ms,
            if p.ok { "" } else { " (failed)" }
        );
    }
}
