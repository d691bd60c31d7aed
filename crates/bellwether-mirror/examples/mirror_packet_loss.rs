//! Benchmark: under 20 % packet loss to the primary, how many switches (issue 12's goal: at most
//! one per 5 minutes).
//!
//! Real packet loss, not a lossy relay: the primary `redis-server` runs in its own network
//! namespace joined to this one by a veth pair, and an nftables rule in that namespace drops
//! each packet arriving at the primary with probability `LOSS` % (default 20:
//! `numgen random mod 100 < 20 drop`, counted, so the report gives the ratio actually
//! dropped). Everything else is on this side: `MIRRORS` mirrors (default 2) made by the local
//! process driver (their replication from the primary crosses the lossy link too), the
//! in-process proxy, the engine (`LocalRunner`) with the default policy (250 ms health
//! interval, `switch_after` 2, `min_switch_gap` 5 min, `failback_after` 5 min), and 4 clients
//! (`SET` then `GET`) through the proxy. The loss starts once the mirrors are ready and lasts
//! `SECONDS` (default 600). With `BOTH=1` packets leaving the primary are dropped too.
//!
//! Needs root (network namespaces), `ip` (iproute2) and `nft` (`apt-get install nftables`).
//!
//! ```sh
//! cargo run --release -p bellwether-mirror --features drill --example mirror_packet_loss
//! ```

mod support;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bellwether_mirror::local::{now_ms, LocalRunner, RunnerOptions};
use bellwether_mirror::resp::{Conn, Value};
use bellwether_mirror::{DepKind, LocalProcess};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn run(argv: &[&str]) -> Result<String, String> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .map_err(|e| {
            format!(
                "cannot run {}: {e} (this benchmark needs iproute2 and nftables: apt-get install iproute2 nftables)",
                argv[0]
            )
        })?;
    if !out.status.success() {
        return Err(format!(
            "{} failed ({}): {}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The namespace, its veth pair and the primary in it; removed on drop.
struct LossyPrimary {
    ns: String,
    host_if: String,
    ns_if: String,
    child: Option<Child>,
    _dir: tempfile::TempDir,
    endpoint: String,
}

const HOST_IP: &str = "10.213.77.1";
const NS_IP: &str = "10.213.77.2";

impl LossyPrimary {
    fn start() -> Result<LossyPrimary, String> {
        let pid = std::process::id();
        let ns = format!("bwloss{pid}");
        let host_if = format!("bwl{}a", pid % 100_000);
        let ns_if = format!("bwl{}b", pid % 100_000);
        let dir = tempfile::Builder::new()
            .prefix("bw-loss-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let mut me = LossyPrimary {
            ns: ns.clone(),
            host_if: host_if.clone(),
            ns_if: ns_if.clone(),
            child: None,
            _dir: dir,
            endpoint: format!("{NS_IP}:6379"),
        };
        run(&["ip", "netns", "add", &ns])?;
        run(&[
            "ip", "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ])?;
        run(&["ip", "link", "set", &ns_if, "netns", &ns])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{HOST_IP}/24"),
            "dev",
            &host_if,
        ])?;
        run(&["ip", "link", "set", &host_if, "up"])?;
        run(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{NS_IP}/24"),
            "dev",
            &ns_if,
        ])?;
        run(&["ip", "-n", &ns, "link", "set", &ns_if, "up"])?;
        run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        let d = me._dir.path().display().to_string();
        let child = Command::new("ip")
            .args(["netns", "exec", &ns, "redis-server", "--port", "6379"])
            .args(["--bind", NS_IP, "--protected-mode", "no"])
            .args(["--save", "", "--appendonly", "no", "--dir", &d])
            .args(["--logfile", &format!("{d}/redis.log")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run redis-server in {ns}: {e}"))?;
        me.child = Some(child);
        Ok(me)
    }

    fn nft(&self, args: &[&str]) -> Result<String, String> {
        let mut argv = vec!["ip", "netns", "exec", &self.ns, "nft"];
        argv.extend_from_slice(args);
        run(&argv)
    }

    /// Drops `pct` % of the packets arriving at the primary (and leaving it, with `both`).
    fn lose(&self, pct: u64, both: bool) -> Result<(), String> {
        self.nft(&["add", "table", "inet", "bwloss"])?;
        let mut hooks = vec![("inb", "input", "iifname")];
        if both {
            hooks.push(("outb", "output", "oifname"));
        }
        let pct = pct.to_string();
        for (chain, hook, dev) in hooks {
            let base = format!("{{ type filter hook {hook} priority 0; }}");
            self.nft(&["add", "chain", "inet", "bwloss", chain, &base])?;
            // Only the veth: the namespace's loopback is not the path to the primary.
            let rule = ["add", "rule", "inet", "bwloss", chain, dev, &self.ns_if];
            let mut count = rule.to_vec();
            count.push("counter");
            self.nft(&count)?;
            let mut drop = rule.to_vec();
            drop.extend([
                "numgen", "random", "mod", "100", "<", &pct, "counter", "drop",
            ]);
            self.nft(&drop)?;
        }
        Ok(())
    }

    /// (packets seen, packets dropped) by the rules.
    fn counters(&self) -> Result<(u64, u64), String> {
        let text = self.nft(&["list", "table", "inet", "bwloss"])?;
        let (mut seen, mut dropped) = (0, 0);
        for line in text.lines() {
            let Some(i) = line.find("counter packets ") else {
                continue;
            };
            let n: u64 = line[i + 16..]
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if line.contains("drop") {
                dropped += n;
            } else {
                seen += n;
            }
        }
        Ok((seen, dropped))
    }
}

impl Drop for LossyPrimary {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = run(&["ip", "link", "del", &self.host_if]);
        let _ = run(&["ip", "netns", "del", &self.ns]);
    }
}

#[derive(Default)]
struct Load {
    requests: AtomicU64,
    errors: AtomicU64,
    stop: AtomicBool,
}

async fn client(c: usize, listen: String, load: Arc<Load>) {
    let t = Duration::from_secs(5);
    let mut conn: Option<Conn> = None;
    let mut seq = 0u64;
    while !load.stop.load(Ordering::Relaxed) {
        let Some(cn) = conn.as_mut() else {
            match Conn::connect(&listen, t).await {
                Ok(cn) => conn = Some(cn),
                Err(_) => {
                    load.errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            continue;
        };
        seq += 1;
        let key = format!("loss:{c}:{seq}");
        for cmd in [vec!["SET", key.as_str(), "v"], vec!["GET", key.as_str()]] {
            load.requests.fetch_add(1, Ordering::Relaxed);
            match cn.cmd_within(&cmd, t).await {
                Ok(Value::Error(_)) => {
                    load.errors.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(_) => {
                    load.errors.fetch_add(1, Ordering::Relaxed);
                    conn = None;
                    break;
                }
            }
        }
    }
}

async fn bench() -> Result<serde_json::Value, String> {
    let (loss, seconds, mirrors) = (env("LOSS", 20), env("SECONDS", 600), env("MIRRORS", 2));
    let both = env("BOTH", 0) == 1;
    let primary = tokio::task::spawn_blocking(LossyPrimary::start)
        .await
        .map_err(|e| e.to_string())??;
    // The server gives no readiness signal but its answer.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match bellwether_mirror::probe(DepKind::Redis, &primary.endpoint, Duration::from_secs(1))
            .await
        {
            Ok(st) if st.reachable => break,
            _ if tokio::time::Instant::now() > deadline => {
                return Err(format!(
                    "the primary at {} did not answer",
                    primary.endpoint
                ))
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let work = tempfile::Builder::new()
        .prefix("bw-loss-mirrors-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let _cleanup = support::KillUnder(work.path().to_path_buf());
    let proxy = support::start_proxy(DepKind::Redis, &primary.endpoint).await?;
    let spec = support::spec(
        "lossy",
        DepKind::Redis,
        &primary.endpoint,
        mirrors as u32,
        250,
        serde_json::json!({"failback_after": "5m"}),
    );
    let provisioner = Arc::new(LocalProcess::new(work.path().join("mirrors")));
    let runner = LocalRunner::start(
        spec.clone(),
        provisioner.clone(),
        proxy.router.clone(),
        RunnerOptions::for_spec(&spec),
    )
    .map_err(|e| e.to_string())?;
    let (_, ok) = runner
        .wait_for(Duration::from_secs(180), |s| {
            s.instances
                .iter()
                .filter(|i| {
                    i.role == bellwether_engine::mirror::Role::Mirror
                        && i.state == bellwether_engine::mirror::InstanceState::Ready
                })
                .count()
                >= mirrors as usize
        })
        .await;
    if !ok {
        runner.stop(true).await;
        return Err("the mirrors were not ready within 180 s".into());
    }
    let load = Arc::new(Load::default());
    let tasks: Vec<_> = (0..4)
        .map(|c| tokio::spawn(client(c, proxy.listen.clone(), load.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The loss is to the original primary: a switch before it (on a loaded machine a slow
    // check alone can cause one) would leave nothing lossy to measure.
    let before = runner.status().map(|s| (s.primary, s.history.len()));
    if before.as_ref().map(|(p, _)| p.as_str()) != Some(bellwether_engine::mirror::PRIMARY_ID) {
        load.stop.store(true, Ordering::Relaxed);
        runner.stop(true).await;
        return Err(format!(
            "the primary was switched away from before the loss began ({before:?}): nothing lossy to measure; run again"
        ));
    }
    let loss_from = now_ms();
    primary.lose(loss, both)?;
    println!("{loss} % loss to the primary from now, for {seconds} s");
    let mut last_report = 0;
    for s in 1..=seconds {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if s - last_report >= 60 || s == seconds {
            last_report = s;
            let n = runner
                .status()
                .map(|st| st.history.iter().filter(|h| h.at_ms >= loss_from).count())
                .unwrap_or(0);
            let (seen, dropped) = primary.counters().unwrap_or((0, 0));
            println!(
                "  {s} s: switches {n}, packets to the primary {seen}, dropped {dropped}, requests {}, client errors {}",
                load.requests.load(Ordering::Relaxed),
                load.errors.load(Ordering::Relaxed)
            );
        }
    }
    let (seen, dropped) = primary.counters()?;
    load.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    let status = runner.status();
    let events = runner.events();
    runner.stop(true).await;
    for inst in provisioner.list().unwrap_or_default() {
        let _ = bellwether_mirror::Provisioner::retire(provisioner.as_ref(), &inst).await;
    }
    proxy.handle.shutdown().await;
    drop(primary);
    let history = status.map(|s| s.history).unwrap_or_default();
    let count = |name: &str| {
        events
            .iter()
            .filter(|e| e.name == name && e.at_ms >= loss_from)
            .count()
    };
    let switches: Vec<serde_json::Value> = history
        .iter()
        .filter(|h| h.at_ms >= loss_from)
        .map(|h| {
            serde_json::json!({
                "after_loss_began_s": (h.at_ms - loss_from) as f64 / 1000.0,
                "from": h.from, "to": h.to, "trigger": h.trigger, "cause": h.cause,
            })
        })
        .collect();
    let per_5min = switches.len() as f64 * 300.0 / seconds as f64;
    // The most switches in any 5-minute window.
    let times: Vec<i64> = history
        .iter()
        .filter(|h| h.at_ms >= loss_from)
        .map(|h| h.at_ms)
        .collect();
    let max_in_5min = times
        .iter()
        .map(|t| {
            times
                .iter()
                .filter(|u| **u >= *t && **u < t + 300_000)
                .count()
        })
        .max()
        .unwrap_or(0);
    Ok(serde_json::json!({
        "loss_percent": loss, "both_directions": both, "seconds": seconds, "mirrors": mirrors,
        "packets_to_primary": seen, "packets_dropped": dropped,
        "dropped_ratio": if seen > 0 { dropped as f64 / seen as f64 } else { 0.0 },
        "switches": switches.len(), "switches_per_5_min": per_5min,
        "max_switches_in_any_5_min": max_in_5min,
        "goal_met": max_in_5min <= 1,
        "switch_held_events": count("switch_held"),
        "primary_unhealthy_events": count("primary_unhealthy"),
        "no_healthy_mirror_events": count("no_healthy_mirror"),
        "requests": load.requests.load(Ordering::Relaxed),
        "client_errors": load.errors.load(Ordering::Relaxed),
        "history": switches,
    }))
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match rt.block_on(bench()) {
        Ok(r) => println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default()),
        Err(e) => {
            eprintln!("the benchmark failed: {e}");
            std::process::exit(1);
        }
    }
}
