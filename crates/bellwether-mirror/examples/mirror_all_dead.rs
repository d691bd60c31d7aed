//! Benchmark: every primary dead at once (issue 12; envoy#28304 keeps sending to ejected hosts
//! for about a second when every host of a cluster dies).
//!
//! Several dependencies (`REDIS` Redis ones, default 3, and `PG` PostgreSQL ones, default 1),
//! each a real primary with one mirror made by the local process driver, each served by its
//! own in-process `bellwether proxy` listener and driven by its own engine
//! (`bellwether_mirror::local::LocalRunner`, 250 ms health interval, `switch_after` 2), under
//! load (`CLIENTS` connections per dependency, default 4: Redis `SET` then `GET` of it,
//! PostgreSQL `INSERT` then `SELECT` of it, autocommit). After `BEFORE_S` seconds (default 4)
//! every dependency's current primary (its processes) gets SIGKILL in one loop; the load goes on until `AFTER_S` seconds
//! (default 8) after the kill. `RUNS` runs (default 3).
//!
//! Counted per dependency, by the load itself:
//! - **in flight at the kill**: requests sent before its primary's first kill(2) and not
//!   answered then (every request's start and end are recorded), the strict count the goal
//!   is checked against; and, looser, those in flight at any moment of the kill(2) calls of
//!   that primary (a few µs for Redis, up to tens of ms for PostgreSQL's processes on a
//!   loaded machine);
//! - the proxy's own `in_flight` metric summed over the Redis backends, read just before the
//!   kill (the PostgreSQL listener does not count it);
//! - **failed requests**: an error reply, a lost connection or a timeout (5 s Redis, 20 s
//!   PostgreSQL), split into those sent before the kill and after it; and connection attempts
//!   through the proxy that failed (reported apart: no request was sent);
//! - fault → switched (the engine's history record: the proxy routed to the promoted mirror).
//!
//! Goal: failed requests ≤ requests in flight at the kill.
//!
//! ```sh
//! cargo run --release -p bellwether-mirror --features drill --example mirror_all_dead
//! ```

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bellwether_mirror::local::{now_ms, LocalRunner, RunnerOptions};
use bellwether_mirror::resp::{Conn, Value};
use bellwether_mirror::testing::TestRedis;
use bellwether_mirror::{DepKind, LocalProcess};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One request as the load saw it: start and end in µs since the run's epoch, and whether it
/// was answered.
#[derive(Clone, Copy)]
struct Req {
    start: u64,
    end: u64,
    ok: bool,
}

#[derive(Default)]
struct Load {
    reqs: Mutex<Vec<Req>>,
    connect_failures: AtomicU64,
    stop: AtomicBool,
}

struct Clock(Instant);

impl Clock {
    fn us(&self) -> u64 {
        self.0.elapsed().as_micros() as u64
    }
}

enum Primary {
    Redis(TestRedis),
    Pg(Box<bellwether_pg::testing::TestCluster>),
}

impl Primary {
    fn endpoint(&self) -> String {
        match self {
            Primary::Redis(r) => r.endpoint(),
            Primary::Pg(c) => format!("127.0.0.1:{}", c.port),
        }
    }
    fn pids(&self) -> Vec<i32> {
        match self {
            Primary::Redis(r) => vec![r.pid() as i32],
            Primary::Pg(c) => support::postmaster_pid(c)
                .map(support::processes)
                .unwrap_or_default(),
        }
    }
}

struct Dep {
    name: String,
    kind: DepKind,
    primary: Primary,
    proxy: support::BenchProxy,
    runner: LocalRunner,
    load: Arc<Load>,
}

const REDIS_TIMEOUT: Duration = Duration::from_secs(5);
const PG_TIMEOUT: Duration = Duration::from_secs(20);

async fn redis_client(c: usize, listen: String, load: Arc<Load>, clock: Arc<Clock>) {
    let mut conn: Option<Conn> = None;
    let mut seq = 0u64;
    while !load.stop.load(Ordering::Relaxed) {
        let Some(cn) = conn.as_mut() else {
            match Conn::connect(&listen, REDIS_TIMEOUT).await {
                Ok(cn) => conn = Some(cn),
                Err(_) => {
                    load.connect_failures.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            continue;
        };
        seq += 1;
        let key = format!("bench:{c}:{seq}");
        for cmd in [vec!["SET", key.as_str(), "v"], vec!["GET", key.as_str()]] {
            let start = clock.us();
            let r = cn.cmd_within(&cmd, REDIS_TIMEOUT).await;
            let ok = matches!(
                &r,
                Ok(Value::Simple(_)) | Ok(Value::Bulk(_)) | Ok(Value::Int(_))
            );
            load.reqs.lock().unwrap().push(Req {
                start,
                end: clock.us(),
                ok,
            });
            if r.is_err() {
                conn = None;
                break;
            }
        }
    }
}

async fn pg_client(c: usize, listen: String, load: Arc<Load>, clock: Arc<Clock>) {
    let mut conn: Option<tokio_postgres::Client> = None;
    let mut seq = 0u64;
    while !load.stop.load(Ordering::Relaxed) {
        let Some(cn) = conn.as_ref() else {
            match support::pg_connect(&listen).await {
                Ok(cn) => conn = Some(cn),
                Err(_) => {
                    load.connect_failures.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            continue;
        };
        seq += 1;
        for sql in [
            format!("INSERT INTO bench VALUES ({c}, {seq})"),
            format!("SELECT seq FROM bench WHERE client = {c} AND seq = {seq}"),
        ] {
            let start = clock.us();
            let r = tokio::time::timeout(PG_TIMEOUT, cn.simple_query(&sql)).await;
            let ok = matches!(r, Ok(Ok(_)));
            load.reqs.lock().unwrap().push(Req {
                start,
                end: clock.us(),
                ok,
            });
            let closed = match &r {
                Ok(Ok(_)) => false,
                Ok(Err(e)) => e.is_closed(),
                Err(_) => true,
            };
            if closed {
                conn = None;
                break;
            }
            if !ok {
                break;
            }
        }
    }
}

async fn start_dep(name: &str, kind: DepKind, base: &std::path::Path) -> Result<Dep, String> {
    let primary = match kind {
        DepKind::Redis => Primary::Redis(
            tokio::task::spawn_blocking(|| TestRedis::try_start(&[]))
                .await
                .map_err(|e| e.to_string())??,
        ),
        _ => Primary::Pg(Box::new(
            tokio::task::spawn_blocking(|| support::start_pg_primary(&[]))
                .await
                .map_err(|e| e.to_string())??,
        )),
    };
    let endpoint = primary.endpoint();
    let proxy = support::start_proxy(kind, &endpoint).await?;
    let spec = support::spec(name, kind, &endpoint, 1, 250, serde_json::json!({}));
    let provisioner = Arc::new(LocalProcess::new(base.join(name)));
    let ropts = RunnerOptions::for_spec(&spec);
    let runner = LocalRunner::start(spec, provisioner, proxy.router.clone(), ropts)
        .map_err(|e| e.to_string())?;
    Ok(Dep {
        name: name.to_string(),
        kind,
        primary,
        proxy,
        runner,
        load: Arc::new(Load::default()),
    })
}

fn ready_mirrors(s: &bellwether_engine::mirror::Status) -> usize {
    s.instances
        .iter()
        .filter(|i| {
            i.role == bellwether_engine::mirror::Role::Mirror
                && i.state == bellwether_engine::mirror::InstanceState::Ready
        })
        .count()
}

async fn run_once(
    run: u64,
    redis: u64,
    pg: u64,
    clients: u64,
) -> Result<serde_json::Value, String> {
    let work = tempfile::Builder::new()
        .prefix("bw-all-dead-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let _cleanup = support::KillUnder(work.path().to_path_buf());
    let mut deps = Vec::new();
    for i in 0..redis {
        deps.push(start_dep(&format!("cache{i}"), DepKind::Redis, work.path()).await?);
    }
    for i in 0..pg {
        deps.push(start_dep(&format!("db{i}"), DepKind::Postgres, work.path()).await?);
    }
    for d in &deps {
        let (_, ok) = d
            .runner
            .wait_for(Duration::from_secs(180), |s| ready_mirrors(s) >= 1)
            .await;
        if !ok {
            return Err(format!("{}: its mirror was not ready within 180 s", d.name));
        }
        if d.kind == DepKind::Postgres {
            let c = support::pg_connect(&d.primary.endpoint()).await?;
            c.batch_execute(
                "CREATE TABLE bench (client int, seq bigint, PRIMARY KEY (client, seq))",
            )
            .await
            .map_err(|e| format!("{}: creating the table: {e}", d.name))?;
        }
    }
    let clock = Arc::new(Clock(Instant::now()));
    let mut tasks = Vec::new();
    for d in &deps {
        for c in 0..clients as usize {
            let (l, load, clock) = (d.proxy.listen.clone(), d.load.clone(), clock.clone());
            tasks.push(match d.kind {
                DepKind::Redis => tokio::spawn(redis_client(c, l, load, clock)),
                _ => tokio::spawn(pg_client(c, l, load, clock)),
            });
        }
    }
    tokio::time::sleep(Duration::from_secs(env("BEFORE_S", 4))).await;
    // Every dependency's current primary (a mirror, if a switch came before the kill), every
    // pid first, so that the kill itself is one loop of kill(2).
    let mut pids: Vec<Vec<i32>> = Vec::new();
    let mut primaries = Vec::new();
    let mut switches_before = Vec::new();
    let mut before_detail = Vec::new();
    for d in &deps {
        let st = d.runner.status().ok_or("no status")?;
        switches_before.push(st.history.len());
        // A switch before the kill leaves a mirror as the primary that is killed: why it came.
        before_detail.push(
            st.history
                .iter()
                .map(|h| format!("{} -> {} [{}]: {}", h.from, h.to, h.trigger, h.cause))
                .collect::<Vec<_>>(),
        );
        let p = if st.primary == bellwether_engine::mirror::PRIMARY_ID {
            d.primary.pids()
        } else {
            let inst = d
                .runner
                .made()
                .into_iter()
                .find(|i| i.id == st.primary)
                .ok_or_else(|| format!("{}: the primary {} is unknown", d.name, st.primary))?;
            let pid = inst.pid.ok_or("a mirror without a pid")?;
            support::processes(pid)
        };
        primaries.push(st.primary.clone());
        pids.push(p);
    }
    let proxy_in_flight: Vec<u64> = deps.iter().map(|d| d.proxy.router.in_flight()).collect();
    let kill_ms = now_ms();
    // Per dependency: just before and just after its primary's kill(2) calls.
    let mut windows = Vec::new();
    for p in &pids {
        let a = clock.us();
        support::sigkill(p);
        windows.push((a, clock.us()));
    }
    let (t0, t1) = (windows[0].0, windows[windows.len() - 1].1);
    tokio::time::sleep(Duration::from_secs(env("AFTER_S", 8))).await;
    for d in &deps {
        d.load.stop.store(true, Ordering::Relaxed);
    }
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(25), t).await;
    }
    let mut out = Vec::new();
    let (mut tot_in_flight, mut tot_failed) = (0u64, 0u64);
    for (i, d) in deps.iter().enumerate() {
        let reqs = d.load.reqs.lock().unwrap().clone();
        // Sent before its primary's kill returned and not answered before the kill began.
        let (a, b) = windows[i];
        let in_window = reqs.iter().filter(|r| r.start <= b && r.end >= a).count() as u64;
        // The strict count: in flight at the instant its kill began.
        let in_flight = reqs.iter().filter(|r| r.start <= a && r.end >= a).count() as u64;
        let failed_before = reqs.iter().filter(|r| !r.ok && r.start <= b).count() as u64;
        let failed_after = reqs.iter().filter(|r| !r.ok && r.start > b).count() as u64;
        let status = d.runner.status();
        // The first switch not in the history at the kill. Not "decided after the kill": a
        // switch is stamped with the start of the check that decided it, which can begin
        // before the kill and end after it.
        let switched = status
            .as_ref()
            .and_then(|s| s.history.get(switches_before[i]).cloned());
        let last_fail_ms = reqs
            .iter()
            .filter(|r| !r.ok)
            .map(|r| (r.end as i64 - t0 as i64) / 1000)
            .max();
        tot_in_flight += in_flight;
        tot_failed += failed_before + failed_after;
        // Why a dependency was not switched: the engine's events since the kill.
        let why_not: Vec<String> = if switched.is_none() {
            d.runner
                .events()
                .iter()
                .filter(|e| e.at_ms >= kill_ms)
                .take(12)
                .map(|e| format!("+{} ms {}: {}", e.at_ms - kill_ms, e.name, e.reason))
                .collect()
        } else {
            Vec::new()
        };
        out.push(serde_json::json!({
            "dependency": d.name, "kind": d.kind.as_str(),
            "primary_at_kill": primaries[i],
            "switches_before_kill": switches_before[i],
            "switches_before_kill_detail": before_detail[i],
            "kill_window_us": b - a,
            "requests": reqs.len(),
            "in_flight_at_kill": in_flight,
            "in_flight_during_kill_window": in_window,
            "proxy_in_flight_metric_before_kill": proxy_in_flight[i],
            "proxy_lost_in_flight": d.proxy.router.lost_in_flight(),
            "failed_sent_before_kill": failed_before,
            "failed_sent_after_kill": failed_after,
            "connect_failures": d.load.connect_failures.load(Ordering::Relaxed),
            "last_failure_after_kill_ms": last_fail_ms,
            "switched_after_kill_ms": switched.as_ref().map(|h| h.routed_ms - kill_ms),
            "switch": switched.as_ref().map(|h| format!("{} -> {} [{}]", h.from, h.to, h.trigger)),
            "events_without_a_switch": why_not,
        }));
    }
    for d in deps {
        d.runner.stop(true).await;
        d.proxy.handle.shutdown().await;
        drop(d.primary);
    }
    drop(work);
    Ok(serde_json::json!({
        "run": run,
        "kill_took_us": t1 - t0,
        "in_flight_at_kill": tot_in_flight,
        "failed_requests": tot_failed,
        "goal_met": tot_failed <= tot_in_flight,
        "dependencies": out,
    }))
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let (redis, pg, clients, runs) = (
        env("REDIS", 3),
        env("PG", 1),
        env("CLIENTS", 4),
        env("RUNS", 3),
    );
    println!(
        "every primary dead at once: {redis} redis + {pg} postgres dependencies, 1 mirror each, {clients} clients each, {runs} runs"
    );
    for run in 1..=runs {
        match rt.block_on(run_once(run, redis, pg, clients)) {
            Ok(r) => println!("{}", serde_json::to_string(&r).unwrap_or_default()),
            Err(e) => {
                eprintln!("run {run} failed: {e}");
                std::process::exit(1);
            }
        }
    }
}
