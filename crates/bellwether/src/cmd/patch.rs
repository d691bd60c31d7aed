//! `bellwether patch`: the phased patch of one service instance.
//!
//! This module parses the arguments and prints; the patch itself runs in
//! `bellwether_patch::local` (the one-machine IO loop around the pure
//! `bellwether_engine::patch` state machine: in-process proxy, local processes, `/proc`
//! sampling, webhooks, the report file that `patch status` and `patch report` read).

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::SystemTime;

use anyhow::Context as _;
use bellwether_engine::patch::{Event, PatchPlan, PatchReport, Stage};
use bellwether_model::text::Escaped;
use bellwether_patch::local;
use bellwether_proxy::ProxyHandle;
use serde_json::json;

use super::{OutputFormat, UsageError};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    verb: Verb,
    /// Where patch reports are kept (one JSON file per patch, plus its log).
    #[arg(
        long,
        global = true,
        env = "BELLWETHER_PATCH_DIR",
        default_value = ".bellwether/patches"
    )]
    state_dir: PathBuf,
    /// `--server URL` and its flags: the patch runs in the server (see patch_remote.rs).
    #[command(flatten)]
    remote: super::patch_remote::RemoteArgs,
}

#[derive(Debug, clap::Subcommand)]
enum Verb {
    /// Abort a patch running in the server (--server): it rolls back, or fails before
    /// anything changed. A local patch stops with SIGINT.
    Abort {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Start a patch from a YAML plan (see docs/patch.md). Without --wait it runs in the
    /// background and prints its ID; with --wait it runs here and prints each event.
    Start(StartArgs),
    /// List the patches in the state directory with their stage and outcome.
    Status(StatusArgs),
    /// Show one patch's report: events, triggering metric, phase durations.
    Report(ReportArgs),
}

#[derive(Debug, clap::Args)]
struct StartArgs {
    /// The plan file.
    plan: PathBuf,
    /// Run in the foreground and print events as they happen.
    #[arg(long)]
    wait: bool,
    /// Stop the proxy as soon as the patch is finished, instead of serving until SIGINT or
    /// SIGTERM. Clients still connected are closed at their next transaction boundary.
    #[arg(long)]
    exit_when_done: bool,
    /// The patch ID (default: the plan's name and the start time): 1 to 64 of A–Z, a–z, 0–9,
    /// `.`, `_` and `-`, starting with a letter or digit. It names the report file in the
    /// state directory.
    #[arg(long, value_parser = patch_id)]
    id: Option<String>,
    /// `json` prints the final report as JSON instead of the human summary.
    #[arg(long, value_enum, default_value = "human")]
    output: OutputFormat,
    /// The protection of the plan's `proxy.admin` API, as for `bellwether proxy`; the token
    /// file defaults to `<state-dir>/<id>.admin.token` (kept or generated, mode 0600).
    #[command(flatten)]
    admin: super::proxy::AdminArgs,
}

#[derive(Debug, clap::Args)]
struct StatusArgs {
    #[arg(long, value_enum, default_value = "human")]
    output: OutputFormat,
}

#[derive(Debug, clap::Args)]
struct ReportArgs {
    /// The patch ID, as `patch status` lists it.
    id: String,
    #[arg(long, value_enum, default_value = "human")]
    output: OutputFormat,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.remote.server.is_some() {
        use super::patch_remote::Verb as R;
        let verb = match args.verb {
            Verb::Start(a) => R::Start {
                plan: a.plan,
                wait: a.wait,
                id: a.id,
                output: a.output,
            },
            Verb::Status(a) => R::Status { output: a.output },
            Verb::Report(a) => R::Report {
                id: a.id,
                output: a.output,
            },
            Verb::Abort { id, reason } => R::Abort { id, reason },
        };
        return super::patch_remote::run(&args.remote, verb);
    }
    match args.verb {
        Verb::Abort { .. } => Err(UsageError(
            "patch abort needs --server URL: a local patch stops with SIGINT".into(),
        )
        .into()),
        Verb::Start(a) => start(a, &args.state_dir),
        Verb::Status(a) => status(a, &args.state_dir),
        Verb::Report(a) => report(a, &args.state_dir),
    }
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn load_plan(path: &Path) -> anyhow::Result<PatchPlan> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| UsageError(format!("cannot read {}: {e}", path.display())))?;
    PatchPlan::parse(&path.display().to_string(), &text)
        .map_err(|e| UsageError(e.to_string()).into())
}

/// A patch ID names a file in the state directory, so it must stay a plain file name: `../x`
/// or `/etc/x` would write the report outside it.
fn patch_id(s: &str) -> Result<String, String> {
    let ok = (1..=64).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{} is not a patch ID: use 1 to 64 of A-Z, a-z, 0-9, '.', '_' and '-', starting with a letter or digit",
            bellwether_model::text::quote(s)
        ))
    }
}

fn start(args: StartArgs, state_dir: &Path) -> anyhow::Result<ExitCode> {
    // The server mode (`--server`, cmd/patch_remote.rs) branches off here, before anything
    // local: it posts the plan and follows the events. Below is the one-machine mode.
    let plan = load_plan(&args.plan)?;
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("cannot create {}", state_dir.display()))?;
    let id = args.id.clone().unwrap_or_else(|| {
        let clean: String = plan
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        format!("{clean}-{}", unix_ms() / 1000)
    });
    // Fail here, not in a background log, when the original cannot be found.
    local::original_pid(&plan).map_err(|e| UsageError(e.to_string()))?;
    if !args.wait {
        // Run the same command in the foreground of a detached child, logging to a file.
        let log_path = state_dir.join(format!("{id}.log"));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        let exe = std::env::current_exe().context("cannot find this program's path")?;
        let mut cmd = std::process::Command::new(exe);
        cmd.arg("patch")
            .arg("--state-dir")
            .arg(state_dir)
            .arg("start")
            .arg(&args.plan)
            .arg("--wait")
            .arg("--id")
            .arg(&id);
        if args.exit_when_done {
            cmd.arg("--exit-when-done");
        }
        cmd.args(args.admin.to_args());
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start the patch in the background")?;
        println!("{id}");
        eprintln!(
            "patch {id} running in the background (pid {}); log: {}",
            child.id(),
            log_path.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let mut admin = args.admin.clone();
    if admin.admin_token_file.is_none() {
        admin.admin_token_file = Some(state_dir.join(format!("{id}.admin.token")));
    }
    let report = rt.block_on(run_local(
        plan,
        id,
        state_dir.to_path_buf(),
        &admin,
        args.exit_when_done,
        args.output == OutputFormat::Human,
    ))?;
    if args.output == OutputFormat::Json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(match report.stage {
        Stage::Promoted => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    })
}

/// Prints a local patch as it goes: the proxy's addresses, each event, the summary.
struct Printer {
    id: String,
    human: bool,
}

impl local::Observer for Printer {
    fn proxy_started(&mut self, proxy: &ProxyHandle) {
        if self.human {
            let id = &self.id;
            println!("patch {id}: proxy listening on {}", proxy.listen_addrs()[0]);
            if let (Some(url), Some(token)) = (proxy.admin_url(), proxy.admin_token()) {
                println!("patch {id}: admin api on {url}");
                println!("patch {id}: admin token in {}", token.file().display());
            }
        }
    }

    fn events(&mut self, report: &PatchReport, new: &[Event]) {
        if self.human {
            for e in new {
                print_event(report, e);
            }
        }
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
    }

    fn finished(&mut self, report: &PatchReport, interrupted: bool) {
        if interrupted {
            eprintln!(
                "patch {}: interrupted in stage {:?}; the proxy stops now",
                self.id, report.stage
            );
        } else if self.human {
            print_summary(report);
        }
    }

    fn still_serving(&mut self, _report: &PatchReport, proxy: &ProxyHandle) {
        if self.human {
            println!(
                "patch {}: finished; still proxying on {} until SIGINT or SIGTERM",
                self.id,
                proxy.listen_addrs()[0]
            );
            use std::io::Write as _;
            let _ = std::io::stdout().flush();
        }
    }
}

fn print_event(report: &PatchReport, e: &Event) {
    println!(
        "[{:>7.2}s] {:<24} {}",
        (e.at_ms - report.started_ms) as f64 / 1000.0,
        e.kind,
        Escaped(&e.message)
    );
}

/// Runs the patch on this machine (`bellwether_patch::local`) in the foreground.
async fn run_local(
    plan: PatchPlan,
    id: String,
    state_dir: PathBuf,
    admin: &super::proxy::AdminArgs,
    exit_when_done: bool,
    human: bool,
) -> anyhow::Result<PatchReport> {
    let mut raw = local::proxy_config(&plan);
    admin.apply(&mut raw);
    let proxy = raw
        .validate("plan")
        .map_err(|e| UsageError(e.to_string()))?;
    let patch = local::LocalPatch {
        plan,
        id: id.clone(),
        state_dir,
        proxy,
        exit_when_done,
    };
    let mut printer = Printer { id, human };
    local::run(patch, super::proxy::wait_for_signal(), &mut printer)
        .await
        .map_err(|e| UsageError(e.to_string()).into())
}

/// Where a patch stands, in the words of its report: `rolled_back`, `promoted` or `failed`
/// once final (as `outcome` in `--output json`), else `running (baking)` and the like.
pub(crate) fn stage_text(report: &PatchReport) -> String {
    let running = match report.stage {
        Stage::RolledBack | Stage::Promoted | Stage::Failed => return report.outcome().to_string(),
        Stage::Baseline => "collecting the baseline".to_string(),
        Stage::Starting => "starting the patched instance".to_string(),
        Stage::WaitingHealthy => "waiting for the patched instance to be healthy".to_string(),
        Stage::Shifting => "shifting new connections".to_string(),
        Stage::ShiftDraining => "moving the sessions".to_string(),
        Stage::Baking => "baking".to_string(),
        Stage::RollingBack { phase } => format!("rolling back, phase {phase} of 4"),
        Stage::Promoting { phase } => format!("promoting, phase {phase} of 4"),
    };
    format!("{} ({running})", report.outcome())
}

fn print_summary(report: &PatchReport) {
    println!("patch {}: {}", Escaped(&report.id), stage_text(report));
    if let Some(t) = &report.trigger {
        println!(
            "  triggered by {} against the {}: value {:.6} vs baseline {:.6} ({:+.0}%), for {:.1}s, severity {:.2}",
            t.metric, t.against, t.value, t.baseline, t.deviation * 100.0, t.for_ms as f64 / 1000.0, t.severity_score
        );
    }
    for p in &report.phases {
        println!(
            "  {} phase {}: {} — {} ms{}",
            p.kind,
            p.phase,
            Escaped(&p.name),
            p.took_ms,
            if p.ok { "" } else { " (failed)" }
        );
    }
}

fn read_reports(state_dir: &Path) -> anyhow::Result<Vec<PatchReport>> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(state_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", state_dir.display())),
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "json")
            && !e.file_name().to_string_lossy().starts_with('.')
        {
            let text = std::fs::read_to_string(&p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            let r: PatchReport = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a patch report", p.display()))?;
            out.push(r);
        }
    }
    out.sort_by_key(|r| r.started_ms);
    Ok(out)
}

fn status(args: StatusArgs, state_dir: &Path) -> anyhow::Result<ExitCode> {
    let reports = read_reports(state_dir)?;
    if args.output == OutputFormat::Json {
        let rows: Vec<serde_json::Value> = reports
            .iter()
            .map(|r| {
                json!({
                    "id": r.id, "plan": r.plan_name, "stage": r.stage, "outcome": r.outcome(),
                    "started_ms": r.started_ms, "finished_ms": r.finished_ms,
                    "trigger": r.trigger.as_ref().map(|t| &t.metric), "last_severity": r.last_severity,
                    "last_event": r.events.last().map(|e| &e.message),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    if reports.is_empty() {
        println!("no patches in {}", state_dir.display());
    }
    for r in &reports {
        let trigger = r
            .trigger
            .as_ref()
            .map(|t| format!(" trigger={}", t.metric))
            .unwrap_or_default();
        println!(
            "{:<32} {:<12} severity={:.2}{trigger}  {}",
            Escaped(&r.id),
            r.outcome(),
            r.last_severity,
            Escaped(r.events.last().map(|e| e.message.as_str()).unwrap_or(""))
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn report(args: ReportArgs, state_dir: &Path) -> anyhow::Result<ExitCode> {
    let reports = read_reports(state_dir)?;
    let r = reports
        .into_iter()
        .find(|r| r.id == args.id)
        .ok_or_else(|| UsageError(format!("no patch `{}` in {}", args.id, state_dir.display())))?;
    match args.output {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 15: the walkthrough printed `patch walkthrough: rolled_back (RolledBack)`, the
    /// outcome and then the same stage in Rust's debug form.
    #[test]
    fn the_summary_names_the_stage_once_in_words() {
        let mut r = PatchReport {
            id: "walkthrough".into(),
            plan_name: "pg-config-patch".into(),
            stage: Stage::RolledBack,
            started_ms: 0,
            finished_ms: Some(1),
            baselines: Default::default(),
            trigger: None,
            phases: vec![],
            last_severity: 0.5,
            baked_ms: 0,
            events: vec![],
        };
        assert_eq!(stage_text(&r), "rolled_back");
        r.stage = Stage::Promoted;
        assert_eq!(stage_text(&r), "promoted");
        r.stage = Stage::Baking;
        assert_eq!(stage_text(&r), "running (baking)");
        r.stage = Stage::RollingBack { phase: 2 };
        assert_eq!(stage_text(&r), "running (rolling back, phase 2 of 4)");
    }
}
