//! `bellwether bench agent-memory`: start a server and one agent against it, let the agent run
//! idle (profile sent, samples every interval), and read its resident memory from
//! /proc/PID/status.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::proc::{log_tail, Reaped, ServerProcess, ServerTokens};
use crate::{bail, Context as _, Output, Result, Verdict};

/// The goal: an idle agent stays within 15 MB resident.
const GOAL_KB: u64 = 15 * 1024;

#[derive(Debug, Clone)]
pub struct Options {
    /// The `bellwether` binary started as the server and the agent.
    pub exe: PathBuf,
    /// The host root the agent reads; `/` measures it on this machine's real files.
    pub rootfs: PathBuf,
    /// The agent's collection interval.
    pub interval: Duration,
    /// How long to watch the agent idle after its first profile arrived.
    pub idle: Duration,
    pub output: Output,
}

pub fn run(args: &Options) -> Result<Verdict> {
    let work = std::env::temp_dir().join(format!("bellwether-bench-agent-{}", std::process::id()));
    std::fs::create_dir_all(&work)
        .with_context(|| format!("could not create {}", work.display()))?;
    let result = measure(args, &work);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn measure(args: &Options, work: &std::path::Path) -> Result<Verdict> {
    let tokens = ServerTokens::random()?;
    let server = ServerProcess::start(&args.exe, &work.join("server"), None, &tokens, &[])?;
    let agent_log = work.join("agent.log");
    let agent = Reaped(
        Command::new(&args.exe)
            .args(["agent", "--server", &server.url, "--token", &tokens.enrol])
            .args([
                "--name",
                "bench-agent",
                "--interval",
                &bellwether_model::duration::Dur(args.interval).to_string(),
            ])
            .arg("--rootfs")
            .arg(&args.rootfs)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(&agent_log)
                    .with_context(|| format!("could not create {}", agent_log.display()))?,
            )
            .spawn()
            .context("could not start the agent")?,
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")?;
    let client = reqwest::Client::new();
    let url = format!("{}/api/v1/hosts/bench-agent/profile", server.url);
    let profile: bellwether_model::HostProfile = rt.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let resp = client
                .get(&url)
                .bearer_auth(&tokens.operator)
                .send()
                .await
                .context("the server did not answer")?;
            if resp.status().is_success() {
                return Ok(resp.json().await?);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "the agent did not report; its log ends:\n{}",
                    log_tail(&agent_log, 10)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })?;
    let pid = agent.id();
    let rss = |pid| crate::proc::usage(pid).map(|u| (u.rss_kb, u.hwm_kb));
    let first = rss(pid)?.0;
    let started = std::time::Instant::now();
    let mut readings = vec![first];
    // The measurement is the idle period itself: read RSS once a second across it.
    while started.elapsed() < args.idle {
        std::thread::sleep(Duration::from_secs(1).min(args.idle));
        readings.push(rss(pid)?.0);
    }
    let (last, peak) = rss(pid)?;
    let max_idle = readings.iter().copied().max().unwrap_or(last);
    let packages = profile.packages.as_ref().map_or(0, |p| p.len());
    let mb = |kb: u64| kb as f64 / 1024.0;
    if args.output == Output::Json {
        println!(
            "{}",
            serde_json::json!({
                "rootfs": args.rootfs, "interval_ms": args.interval.as_millis() as u64,
                "idle_s": args.idle.as_secs_f64(), "packages": packages,
                "rss_kb_after_first_profile": first, "rss_kb_idle_last": last,
                "rss_kb_idle_max": max_idle, "rss_kb_peak_hwm": peak, "goal_kb": GOAL_KB,
            })
        );
    } else {
        println!(
            "agent resident memory, rootfs {} ({packages} packages), interval {}, idle {}:",
            args.rootfs.display(),
            bellwether_model::duration::Dur(args.interval),
            bellwether_model::duration::Dur(args.idle)
        );
        println!("  after first profile  {:>6.1} MB", mb(first));
        println!("  idle, last reading   {:>6.1} MB", mb(last));
        println!("  idle, highest        {:>6.1} MB", mb(max_idle));
        println!("  peak (VmHWM)         {:>6.1} MB", mb(peak));
        println!("  goal                 {:>6.1} MB", 15.0);
    }
    drop(agent);
    drop(server);
    Ok(if max_idle <= GOAL_KB {
        Verdict::Met
    } else {
        Verdict::Missed
    })
}
