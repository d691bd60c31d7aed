//! `bellwether quickstart`: the whole story on one machine. A sandbox fleet of 20 hosts comes
//! up from a scenario (examples/scenarios/quickstart.yaml); its baselines are captured; a few
//! hosts drift and the fleet drift report shows which moved and why. Then version 2 of the web
//! service is rolled out by risk: the hosts the model predicts will fail are held back, the
//! pilot goes first, a fault nobody predicted hits a few hosts, each is rolled back alone, the
//! rollout pauses when the failures spread and goes on when resumed, and the report tells
//! every host's story. The server learns from those outcomes, and a second rollout of the same
//! release holds the hosts like the ones that failed back.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bellwether_drift::version::ChangeLevel;
use bellwether_engine::rollout::{HostAction, PauseReason, Phase, RolloutEvent};
use bellwether_model::text::{count, escape};
use bellwether_model::{DriftCategory, DriftScore};
use bellwether_server::client::Client;
use bellwether_server::rollout::ReportResponse;
use bellwether_server::types::{BaselineRequest, FleetDrift};

use crate::lifecycle::{client, host_name};
use crate::state::State;
use crate::{fleet, scenario, DriftRequest, Output, Result, SandboxError, UpOptions};

/// The quickstart's fleet: web hosts where version 2 breaks on libssl 1.1 (the history shows
/// it) and on a full disk (new), plus db and cache hosts.
pub const SCENARIO: &str = include_str!("../../../examples/scenarios/quickstart.yaml");
/// The release rolled out: version 2 of the web service, pilot first, by risk.
pub const PLAN: &str = include_str!("../../../examples/plans/web-v2.yaml");

/// What `bellwether quickstart` is given.
#[derive(Debug, Clone)]
pub struct Options {
    /// A scenario file instead of the built-in one (docs/scenario.md). It needs web hosts
    /// (the plan targets `role: web`), and at least one db and one cache host for the drift
    /// part.
    pub scenario: Option<PathBuf>,
    /// A rollout plan instead of the built-in one (examples/plans/web-v2.yaml).
    pub plan: Option<PathBuf>,
    /// The sandbox's work directory.
    pub dir: PathBuf,
    /// Leave the sandbox running afterwards, to look around.
    pub keep: bool,
    /// How long to wait for each stage (agents reporting, drift being recomputed, a rollout).
    pub timeout: Duration,
    /// `Json` prints one document at the end instead of the story.
    pub output: Output,
    /// Run the sandbox over HTTPS, with a CA and server certificate generated in DIR/tls.
    pub tls: bool,
    /// Draw progress bars on stderr.
    pub progress: bool,
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
fn plan_injections(state: &State) -> Result<Vec<Injection>> {
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
        return Err(SandboxError::Usage(
            "--hosts: need at least 4 hosts (two web, one db, one cache)".into(),
        ));
    };
    let (pkg, _) = fleet::role_package("web");
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
            attribute: format!("dependency:{}", fleet::role_dependency("web")),
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

/// Brings up a sandbox fleet and tells the whole story: baselines, drift, risk scores, a
/// pilot, a fault on a few hosts, targeted rollbacks, a pause, the report, and a second
/// rollout that has learnt from the first. Takes the sandbox down at the end unless `keep`.
pub fn run(args: &Options) -> Result<()> {
    let read = |path: &PathBuf| {
        std::fs::read_to_string(path)
            .map_err(|e| SandboxError::Usage(format!("{}: cannot read: {e}", path.display())))
    };
    let (scenario_text, scenario_file) = match &args.scenario {
        Some(p) => (read(p)?, p.display().to_string()),
        None => (
            SCENARIO.to_string(),
            "quickstart.yaml (built in)".to_string(),
        ),
    };
    let plan_text = match &args.plan {
        Some(p) => read(p)?,
        None => PLAN.to_string(),
    };
    let sc = scenario::parse(&scenario_text, &scenario_file)?;
    let hosts = sc.hosts().len();
    let progress = args.progress;
    let t0 = Instant::now();
    let state = crate::up(&UpOptions {
        hosts,
        seed: sc.seed,
        dir: args.dir.clone(),
        interval: Duration::from_secs(1),
        timeout: args.timeout,
        progress,
        scenario: Some(sc),
        tls: args.tls,
    })?;
    let result = story(&state, args, &plan_text, t0, progress);
    if args.keep {
        if result.is_ok() {
            print_keep(&state);
        }
    } else {
        crate::down(&state.dir, Duration::from_secs(5), true)?;
    }
    result
}

fn say(output: Output, text: impl AsRef<str>) {
    if output == Output::Human {
        println!("{}", text.as_ref());
    }
}

fn story(state: &State, args: &Options, plan: &str, t0: Instant, progress: bool) -> Result<()> {
    let out = args.output;
    let token = std::fs::read_to_string(&state.operator_token_file)
        .map_err(|e| SandboxError::io("read", &state.operator_token_file, e))?;
    let api = client(&state.server_url, token.trim(), state.ca_file.as_deref())?;
    let rt = crate::runtime()?;
    let roles = |role: &str| state.hosts.iter().filter(|h| h.role == role).count();

    say(
        out,
        format!(
            "Bellwether quickstart: a sandbox fleet of {} on SQLite",
            count(state.hosts.len(), "host"),
        ),
    );
    say(out, "");
    say(
        out,
        format!(
            "1. Fleet up in {:.1}s: {} reported their profiles (web ×{}, db ×{}, cache ×{}) to {}.",
            t0.elapsed().as_secs_f64(),
            count(state.hosts.len(), "agent"),
            roles("web"),
            roles("db"),
            roles("cache"),
            state.server_url
        ),
    );

    let captured = rt
        .block_on(api.capture_baselines(&BaselineRequest {
            hosts: vec![],
            all: true,
        }))
        .map_err(SandboxError::server("could not capture the baselines"))?;
    if captured.captured.len() != state.hosts.len() {
        let skipped: Vec<String> = captured
            .skipped
            .iter()
            .map(|s| format!("{} ({})", s.host, s.reason))
            .collect();
        return Err(SandboxError::Story(format!(
            "baselines were captured for {} of {}; skipped: {}",
            captured.captured.len(),
            count(state.hosts.len(), "host"),
            skipped.join(", ")
        )));
    }
    say(
        out,
        format!(
            "2. Known-good baselines captured for {}.",
            if captured.captured.len() == 1 {
                "the one host".to_string()
            } else {
                format!("all {} hosts", captured.captured.len())
            }
        ),
    );

    let mut injections = plan_injections(state)?;
    for inj in &mut injections {
        inj.what = crate::inject(&state.dir, &inj.host, inj.request.clone())?;
    }
    say(
        out,
        format!("3. Drift injected on {}:", count(injections.len(), "host")),
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
            "   The agents noticed and the server recomputed drift in {:.1}s.",
            t_drift.elapsed().as_secs_f64()
        ),
    );
    let fleet: FleetDrift = rt
        .block_on(api.fleet_drift(None))
        .map_err(SandboxError::server("could not read the fleet drift view"))?;
    if out == Output::Human {
        print_report(&fleet);
        println!();
    }

    // The first rollout, scored by the model trained on the imported history.
    say(
        out,
        "4. Rollout 1: version 2 of the web service, scored by the model trained on the imported history.",
    );
    let first = rt.block_on(rollout(&api, plan, args.timeout, out, "rollout 1"))?;
    if out == Output::Human {
        print_hosts(&first);
    }
    let failed: BTreeSet<String> = first
        .report
        .hosts
        .iter()
        .filter(|h| h.action == HostAction::RolledBack)
        .map(|h| h.host.to_string())
        .collect();

    // What the server learnt: every host's outcome went into the store as it was decided.
    let model = rt
        .block_on(api.train_model())
        .map_err(SandboxError::server("could not retrain the model"))?;
    say(
        out,
        format!(
            "5. The server recorded each host's outcome as training history and retrained: model version {} from {} ({}).",
            model.version, count(model.rows as usize, "row"), count(model.failures as usize, "failure")
        ),
    );
    say(out, "");
    say(
        out,
        "6. Rollout 2: the same release again, scored by the retrained model.",
    );
    let second = rt.block_on(rollout(&api, plan, args.timeout, out, "rollout 2"))?;
    let held: Vec<&bellwether_engine::rollout::HostReport> = second
        .report
        .hosts
        .iter()
        .filter(|h| h.action == HostAction::HeldBack)
        .collect();
    if out == Output::Human {
        println!("   Held back by the learnt risk:");
        for h in &held {
            let before = first.report.hosts.iter().find(|x| x.host == h.host);
            println!(
                "     {:<12} p={:.2} (rollout 1: p={:.2}{})  top factors: {}",
                h.host.to_string(),
                h.probability,
                before.map_or(f64::NAN, |b| b.probability),
                if failed.contains(h.host.as_str()) {
                    ", failed and rolled back"
                } else {
                    ""
                },
                factors(&h.factors)
            );
        }
        let learnt = held
            .iter()
            .filter(|h| {
                first
                    .report
                    .hosts
                    .iter()
                    .any(|b| b.host == h.host && b.action != HostAction::HeldBack)
            })
            .count();
        println!(
            "   {} not held back in rollout 1: the model learnt that from rollout 1's outcomes.",
            if learnt == 1 {
                "1 of them was".to_string()
            } else {
                format!("{learnt} of them were")
            }
        );
        println!();
        println!(
            "Done in {:.0}s. Reports: `{} rollout report {}` and `… {}` (with --keep).",
            t0.elapsed().as_secs_f64(),
            crate::command_name(),
            first.report.id,
            second.report.id
        );
    } else {
        let injected: Vec<serde_json::Value> = injections
            .iter()
            .map(|i| serde_json::json!({"host": i.host, "kind": i.kind, "change": i.what}))
            .collect();
        let v = serde_json::json!({
            "server_url": state.server_url, "hosts": state.hosts.len(),
            "injected": injected, "fleet": fleet,
            "model_after_rollout_1": model,
            "rollouts": [first, second],
        });
        println!("{v:#}");
    }
    Ok(())
}

/// The factors that pushed toward failure, largest first.
fn factors(f: &[(String, f64)]) -> String {
    f.iter()
        .filter(|(_, v)| *v >= 0.01)
        .take(3)
        .map(|(k, v)| format!("{k} {v:+.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The events worth telling as they happen, with the text to print.
fn tell(e: &RolloutEvent) -> Option<String> {
    let host = e.host.as_ref().map(|h| h.to_string()).unwrap_or_default();
    let line = match e.kind.as_str() {
        "rollout.started" => format!(
            "risk bands: {} low, {} moderate, {} high (p ≥ {})",
            e.figures["low"], e.figures["moderate"], e.figures["high"], e.figures["high_from"]
        ),
        "pilot.selected" => format!("pilot: {}", hosts_of(&e.figures["hosts"])),
        "host.held_back" => format!("{host} held back: {}", e.reason),
        "wave.started" => format!(
            "wave {} starts: {}",
            e.figures["wave"],
            count(
                e.figures["size"].as_u64().unwrap_or(0) as usize,
                "host"
            )
        ),
        // The engine's own words: "Wave 1 passed its 10s bake: 3 hosts updated." or "Wave 1
        // finished its 10s bake: 0 of 3 hosts updated, 3 failed."
        "wave.passed" => e.reason.clone(),
        "host.failed" => format!("{host} FAILED: {}", e.reason),
        "host.rolled_back" => format!("{host} rolled back alone: {}", e.reason),
        // "2 hosts failed: the next wave is halved." (or, while paused, "once the rollout is
        // resumed, its next wave is halved").
        "rollout.slowed_down" => e.reason.clone(),
        "rollout.paused" => e.reason.clone(),
        "rollout.resumed" => {
            "resumed by the operator (quickstart): the failed hosts are back on the old version, the rest go on".to_string()
        }
        "rollout.completed" | "rollout.aborted" => e.reason.clone(),
        _ => return None,
    };
    Some(line)
}

fn hosts_of(v: &serde_json::Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_else(|| v.to_string())
}

/// Starts a rollout of `plan`, prints its events as they happen, resumes it once if it
/// pauses on failures (as an operator would, once the failing hosts are rolled back and
/// understood), and returns its final report.
async fn rollout(
    api: &Client,
    plan: &str,
    timeout: Duration,
    out: Output,
    label: &str,
) -> Result<ReportResponse> {
    let started = api
        .start_rollout(plan, Some("web-v2.yaml"))
        .await
        .map_err(SandboxError::server(format!("could not start {label}")))?;
    let id = started.id;
    say(
        out,
        format!(
            "   {label} is {id}: {} target hosts, scored by model version {}.",
            started.hosts,
            started
                .model_version
                .map_or_else(|| "null".to_string(), |v| v.to_string())
        ),
    );
    let t0 = tokio::time::Instant::now();
    let mut shown = 0usize;
    // On a terminal, where the rollout stands between its events (quiet when piped).
    let progress = bellwether_stdout::Progress::spinner(format!("{label}: starting"));
    loop {
        let r = api
            .rollout_report(&id)
            .await
            .map_err(SandboxError::server(format!(
                "could not read the report of {label} ({id})"
            )))?;
        let start_ms = r.report.started_ms;
        for e in r.report.events.iter().skip(shown) {
            if let Some(line) = tell(e) {
                say(
                    out,
                    format!("   [{:>5.1}s] {line}", (e.ts_ms - start_ms) as f64 / 1000.0),
                );
            }
        }
        shown = r.report.events.len();
        let waiting = r
            .report
            .hosts
            .iter()
            .filter(|h| h.state == bellwether_engine::rollout::HostState::Waiting)
            .count();
        progress.set_message(format!(
            "{label}: {}; {waiting} of {} waiting for their wave",
            wire(&r.report.state),
            count(r.report.hosts.len(), "host")
        ));
        match (r.report.state, &r.report.pause) {
            (Phase::Completed | Phase::Aborted, _) => return Ok(r),
            (Phase::Paused, Some(PauseReason::FailuresSpread { .. })) => {
                // A pause on spreading failures: every failing host is already rolled back
                // alone. The operator looks at the report and resumes; quickstart does the
                // same once the rollbacks have finished.
                let reverting = r
                    .report
                    .hosts
                    .iter()
                    .any(|h| h.state == bellwether_engine::rollout::HostState::RollingBack);
                if !reverting {
                    api.resume_rollout(&id)
                        .await
                        .map_err(SandboxError::server(format!(
                            "could not resume {label} ({id})"
                        )))?;
                }
            }
            // Any other pause (no data, a failed revert, an operator, a hold) needs a human:
            // the story cannot go on (the next rollout would find these hosts still taken).
            (Phase::Paused, _) => {
                if out == Output::Human {
                    print_hosts(&r);
                }
                return Err(SandboxError::Story(needs_a_human(label, &r)));
            }
            _ => {}
        }
        if t0.elapsed() > timeout {
            return Err(SandboxError::Story(format!(
                "{label} ({id}) did not finish within {}; it is {}",
                bellwether_model::duration::Dur(timeout),
                wire(&r.report.state)
            )));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Why the story stops at a rollout paused for a reason quickstart does not resume from, and
/// what a person does next.
fn needs_a_human(label: &str, r: &ReportResponse) -> String {
    let id = &r.report.id;
    let why = r
        .report
        .events
        .iter()
        .rev()
        .find(|e| e.kind == "rollout.paused")
        .map(|e| e.reason.trim_end_matches('.').to_string())
        .unwrap_or_else(|| "Paused".to_string());
    let cmd = crate::command_name();
    format!(
        "{label} ({id}) stopped: {why}. Quickstart resumes only a pause on failures that were \
         rolled back; this one needs a person. With --keep the sandbox stays up: read \
         `{cmd} rollout report {id}`, then `{cmd} rollout resume {id}` or `{cmd} rollout abort \
         {id}`. On a loaded machine an agent's samples can arrive late; running quickstart \
         again usually gets through."
    )
}

/// A value's name on the wire (`rolled_back`, `high`, `completed`).
fn wire<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "?".into(),
    }
}

fn print_hosts(r: &ReportResponse) {
    let rep = &r.report;
    println!();
    println!(
        "   Report of {} ({} {}): {}",
        rep.id,
        rep.update,
        rep.version,
        wire(&rep.state)
    );
    println!(
        "     {:<12} {:>7} {:<9} {:>4}  {:<12} REASON",
        "HOST", "P(FAIL)", "BAND", "WAVE", "ACTION"
    );
    let mut hosts: Vec<_> = rep.hosts.iter().collect();
    hosts.sort_by_key(|h| (h.wave.unwrap_or(u32::MAX), h.host.to_string()));
    for h in hosts {
        let mut reason = h.reason.clone();
        if reason.chars().count() > 90 {
            reason = reason.chars().take(89).collect::<String>() + "…";
        }
        println!(
            "     {:<12} {:>7.3} {:<9} {:>4}  {:<12} {}",
            h.host.to_string(),
            h.probability,
            wire(&h.band),
            h.wave.map_or("-".into(), |w| w.to_string()),
            wire(&h.action),
            reason
        );
    }
    println!();
}

/// Polls each drifted host's score until it shows the injected change.
async fn wait_for_drift(
    api: &Client,
    injections: &[Injection],
    timeout: Duration,
    progress: bool,
) -> Result<()> {
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
            let score = api
                .host_drift_if_any(&host_name(&inj.host)?)
                .await
                .map_err(SandboxError::server(format!(
                    "could not read the drift of {}",
                    inj.host
                )))?;
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
            return Err(SandboxError::Story(format!(
                "drift did not show within {} on: {}",
                bellwether_model::duration::Dur(timeout),
                what.join(", ")
            )));
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
        "  {:<12} {:<6} {:>7} {:>7} {:>7} {:>7}  TOP FINDINGS",
        "HOST", "ROLE", "OVERALL", "CONFIG", "PERF", "DEP"
    );
    let mut quiet = 0;
    for h in &fleet.hosts {
        let Some(s) = Some(&h.score).filter(|s| s.overall.get() > 0.0) else {
            quiet += 1;
            continue;
        };
        let role = h.labels.get("role").map(String::as_str).unwrap_or("-");
        // What agents reported is printed with its control characters escaped.
        let role = escape(role);
        let mut findings = s.findings.iter().take(3).map(|f| {
            let line = format!(
                "{} {} → {} ({})",
                f.attribute,
                opt(&f.baseline),
                opt(&f.current),
                f.weight
            );
            escape(&line).into_owned()
        });
        let lead = format!(
            "  {:<12} {:<6} {:>7} {:>7} {:>7} {:>7}  ",
            h.name.as_str(),
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
        println!(
            "  … and {} with no drift from their baselines.",
            count(quiet, "host")
        );
    }
    println!();
    println!("Peer outliers: hosts that differ from others with the same role");
    // As JSON, so that an outlier list of either shape prints.
    let outliers: Vec<serde_json::Value> = fleet
        .peer_outliers
        .iter()
        .filter_map(|o| serde_json::to_value(o).ok())
        .collect();
    let lines = peer_lines(&outliers);
    if lines.is_empty() {
        println!("  none");
    }
    for l in lines {
        println!("  {}", escape(&l));
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
    let bw = crate::command_name();
    println!();
    println!("The sandbox is still running. To look around:");
    println!("  export BELLWETHER_SERVER={}", state.server_url);
    if let Some(ca) = &state.ca_file {
        println!("  export BELLWETHER_CA_FILE={}", ca.display());
    }
    println!(
        "  export BELLWETHER_TOKEN=$(cat {})",
        state.operator_token_file.display()
    );
    println!("  {bw} rollout list");
    println!("  {bw} rollout report ID");
    println!("  {bw} drift fleet");
    println!("  {bw} hosts");
    println!("  {bw} sandbox status --dir {dir}");
    println!(
        "  {bw} sandbox drift --dir {dir} --host {} --kind metric",
        state.hosts.first().map_or("HOST", |h| h.name.as_str())
    );
    println!("Stop it with:");
    println!("  {bw} sandbox down --dir {dir} --purge");
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
