//! `bellwether rollout`: start a predictive canary rollout from a plan, follow it, steer it
//! (pause, resume, abort, promote) and read its report. The server runs the rollout; this is
//! its operator client.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bellwether_model::text::{escape, Escaped};
use serde_json::{json, Value};

use super::model_server::api_error;
use super::token::{print_table, runtime, ClientArgs};
use super::{OutputFormat, UsageError};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Debug, clap::Subcommand)]
enum Verb {
    /// Start a rollout from a plan (YAML, see docs/rollout.md). The server scores every target
    /// host with its latest model, picks the pilot by risk and runs the waves.
    Start {
        /// The plan file.
        plan: PathBuf,
        /// Follow the rollout until it pauses, or completes or aborts and its last action has
        /// reported, with its waves and each host's state (a live view on a terminal, plain
        /// lines otherwise). Exits 0 when it completed, 1 when it paused or aborted.
        #[arg(long)]
        wait: bool,
    },
    /// List the server's rollouts, newest first.
    List {
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// A rollout's phase, wave and per-host states.
    Status {
        id: String,
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Start no new wave until resumed (failing hosts are still rolled back).
    Pause { id: String },
    /// Resume a paused rollout.
    Resume { id: String },
    /// Stop the rollout and revert every host it updated.
    Abort { id: String },
    /// End the current wave's bake now and go on to the next wave.
    Promote { id: String },
    /// Roll back one host that this rollout updated (baking or updated), now: for what you
    /// saw and the metrics did not. It counts as a failure of its wave, is learnt from as one,
    /// and the rollout goes on with the other hosts (or aborts, with `rollback.targeted:
    /// false`).
    Rollback { id: String, host: String },
    /// The report: final state, and per host the failure probability and its top factors, the
    /// risk band, the wave (0 is the pilot), the action, timestamps and the reason.
    Report {
        id: String,
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let rt = runtime()?;
    match args.verb {
        Verb::Start { plan, wait } => {
            let yaml = std::fs::read_to_string(&plan)
                .map_err(|e| UsageError(format!("{}: cannot read: {e}", plan.display())))?;
            let body = json!({"plan_yaml": yaml, "file": plan.display().to_string()});
            let v = rt
                .block_on(client.post_json("/api/v1/rollouts", Some(&body)))
                .map_err(api_error)?;
            let id = v["id"].as_str().unwrap_or_default().to_string();
            println!(
                "Started rollout {} over {} (scored by model version {}).",
                Escaped(&id),
                bellwether_model::text::count(v["hosts"].as_u64().unwrap_or(0) as usize, "host"),
                v["model_version"]
            );
            if !wait {
                println!(
                    "Follow it with `bellwether rollout status {}`.",
                    Escaped(&id)
                );
                return Ok(ExitCode::SUCCESS);
            }
            follow(&rt, &client, &id)
        }
        Verb::List { output } => {
            let v = rt
                .block_on(client.get_json("/api/v1/rollouts"))
                .map_err(api_error)?;
            if output == OutputFormat::Json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = v
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| {
                    vec![
                        text(&r["id"]),
                        text(&r["plan"]),
                        text(&r["phase"]),
                        text(&r["model_version"]),
                        super::token::age(r["created_at_ms"].as_i64()),
                    ]
                })
                .collect();
            print_table(&["ID", "PLAN", "STATE", "MODEL", "STARTED"], &rows);
            Ok(ExitCode::SUCCESS)
        }
        Verb::Status { id, output } => {
            let v = rt
                .block_on(client.get_json(&format!("/api/v1/rollouts/{id}")))
                .map_err(api_error)?;
            if output == OutputFormat::Json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_status(&v);
            }
            Ok(ExitCode::SUCCESS)
        }
        Verb::Pause { id } => command(&rt, &client, &id, "pause"),
        Verb::Resume { id } => command(&rt, &client, &id, "resume"),
        Verb::Abort { id } => command(&rt, &client, &id, "abort"),
        Verb::Promote { id } => command(&rt, &client, &id, "promote"),
        Verb::Rollback { id, host } => {
            let host = bellwether_model::HostName::new(&host)
                .map_err(|e| UsageError(format!("bad host name {host:?}: {e}")))?;
            let v = rt
                .block_on(client.post_json(
                    &format!("/api/v1/rollouts/{id}/hosts/{host}/rollback"),
                    None,
                ))
                .map_err(api_error)?;
            println!(
                "Rollout {id}: rolling back {host}; the rollout is {}.",
                text(&v["state"])
            );
            Ok(ExitCode::SUCCESS)
        }
        Verb::Report { id, output } => {
            let v = rt
                .block_on(client.get_json(&format!("/api/v1/rollouts/{id}/report")))
                .map_err(api_error)?;
            if output == OutputFormat::Json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_report(&v);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A field of the server's answer as text for a human, control characters escaped (host names,
/// plans and reasons come from other people).
fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => escape(s).into_owned(),
        other => other.to_string(),
    }
}

fn command(
    rt: &tokio::runtime::Runtime,
    client: &bellwether_server::client::Client,
    id: &str,
    verb: &str,
) -> anyhow::Result<ExitCode> {
    let v = rt
        .block_on(client.post_json(&format!("/api/v1/rollouts/{id}/{verb}"), None))
        .map_err(api_error)?;
    println!(
        "Rollout {id}: {verb} accepted; it is now {}.",
        text(&v["state"])
    );
    Ok(ExitCode::SUCCESS)
}

fn summary(v: &Value) -> String {
    let counts: Vec<String> = v["by_state"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, n)| format!("{} {n}", Escaped(k)))
        .collect();
    format!(
        "{} · wave {} · {}",
        text(&v["state"]),
        text(&v["wave"]),
        counts.join(", ")
    )
}

fn print_status(v: &Value) {
    println!(
        "Rollout {} ({}): {}",
        text(&v["id"]),
        text(&v["plan"]),
        summary(v)
    );
    if let Some(r) = v["pause_reason"].as_str() {
        println!("Paused: {}", Escaped(r));
    }
    let rows: Vec<Vec<String>> = v["hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| {
            vec![
                text(&h["host"]),
                text(&h["wave"]),
                text(&h["band"]),
                text(&h["state"]),
            ]
        })
        .collect();
    print_table(&["HOST", "WAVE", "BAND", "STATE"], &rows);
}

fn print_report(v: &Value) {
    println!(
        "Rollout {} of {} {}: {} (model version {}).",
        text(&v["id"]),
        text(&v["update"]),
        text(&v["version"]),
        text(&v["state"]),
        text(&v["model_version"])
    );
    if let Some(r) = v["pause_reason"].as_str() {
        println!("Paused: {}", Escaped(r));
    }
    let rows: Vec<Vec<String>> = v["hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| {
            let factors: Vec<String> = h["factors"]
                .as_array()
                .into_iter()
                .flatten()
                .take(3)
                .map(|f| format!("{}={:+.2}", text(&f[0]), f[1].as_f64().unwrap_or(0.0)))
                .collect();
            vec![
                text(&h["host"]),
                h["probability"]
                    .as_f64()
                    .map_or("-".into(), |p| format!("{p:.3}")),
                text(&h["band"]),
                text(&h["wave"]),
                text(&h["action"]),
                factors.join(";"),
                text(&h["reason"]),
            ]
        })
        .collect();
    print_table(
        &[
            "HOST",
            "P(FAIL)",
            "BAND",
            "WAVE",
            "ACTION",
            "TOP FACTORS",
            "REASON",
        ],
        &rows,
    );
}

/// Polls the status until the rollout is paused, or completed or aborted with no action in
/// flight (an abort's reverts report after the phase turned final), showing each host's state
/// changes (a live bar on a terminal, plain lines otherwise).
fn follow(
    rt: &tokio::runtime::Runtime,
    client: &bellwether_server::client::Client,
    id: &str,
) -> anyhow::Result<ExitCode> {
    let tty = std::io::stderr().is_terminal();
    let bar = tty.then(|| {
        let b = indicatif::ProgressBar::new_spinner();
        b.enable_steady_tick(Duration::from_millis(120));
        b
    });
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut last_summary = String::new();
    loop {
        let v = rt
            .block_on(client.get_json(&format!("/api/v1/rollouts/{id}")))
            .map_err(api_error)?;
        for h in v["hosts"].as_array().into_iter().flatten() {
            let host = text(&h["host"]);
            let state = text(&h["state"]);
            if seen.get(&host) != Some(&state) {
                let line = format!("wave {:>2}  {host:<24} {state}", text(&h["wave"]));
                match &bar {
                    Some(b) => b.println(line),
                    None => eprintln!("{line}"),
                }
                seen.insert(host, state);
            }
        }
        let s = summary(&v);
        match &bar {
            Some(b) => b.set_message(s.clone()),
            None if s != last_summary => eprintln!("{s}"),
            None => {}
        }
        last_summary = s;
        let state = text(&v["state"]);
        let settled = v["pending_actions"].as_u64() == Some(0);
        if state == "paused" || (matches!(state.as_str(), "completed" | "aborted") && settled) {
            if let Some(b) = &bar {
                b.finish_with_message(last_summary.clone());
            }
            let report = rt
                .block_on(client.get_json(&format!("/api/v1/rollouts/{id}/report")))
                .map_err(api_error)?;
            print_report(&report);
            return Ok(if state == "completed" {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
