//! What the mirroring benchmarks share: an in-process `bellwether proxy` listener in front of
//! one dependency, driven by the engine through the [`Router`] trait (the same routing as
//! `bellwether mirror drill`'s proxy, `crates/bellwether/src/cmd/mirror_drill.rs`), throwaway
//! primaries, and the processes of a primary for a fault.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bellwether_engine::mirror::Backend;
use bellwether_mirror::local::{BackendFigures, Router};
use bellwether_mirror::DepKind;
use bellwether_proxy::config::{
    AdminState, CheckKind, HostPort, Protocol, RawBackend, RawConfig, RawListener, Role,
};
use bellwether_proxy::{ProxyHandle, Shared};

/// How long a switch waits for the sessions busy on the previous primary.
const SWITCH_WAIT: Duration = Duration::from_secs(5);

/// A proxy listener for one dependency, its primary the backend `primary` (the engine's
/// `PRIMARY_ID`), with no health checks of its own: the engine decides and routes.
pub struct BenchProxy {
    pub handle: ProxyHandle,
    pub listen: String,
    pub router: Arc<ProxyRouter>,
}

pub async fn start_proxy(kind: DepKind, primary: &str) -> Result<BenchProxy, String> {
    let protocol = match kind {
        DepKind::Redis => Protocol::Redis,
        DepKind::Postgres => Protocol::Postgres,
        DepKind::Tcp => Protocol::Tcp,
    };
    let mut b = RawBackend::new(
        bellwether_engine::mirror::PRIMARY_ID,
        HostPort::parse(primary)?,
    );
    b.role = Some(Role::Primary);
    let mut raw = RawConfig::new(vec![RawListener::new("127.0.0.1:0", protocol)], vec![b]);
    raw.health.check = CheckKind::None;
    let config = raw
        .validate("the benchmark's proxy")
        .map_err(|e| e.to_string())?;
    let handle = ProxyHandle::start(config)
        .await
        .map_err(|e| e.to_string())?;
    let listen = handle
        .listen_addrs()
        .first()
        .map(|a| a.to_string())
        .ok_or("the proxy listens nowhere")?;
    let router = Arc::new(ProxyRouter {
        shared: handle.shared().clone(),
    });
    Ok(BenchProxy {
        handle,
        listen,
        router,
    })
}

pub struct ProxyRouter {
    pub shared: Arc<Shared>,
}

impl ProxyRouter {
    fn ensure(&self, b: &Backend) -> Result<(), String> {
        let pool = &self.shared.pool;
        if pool.get(&b.instance).is_none() {
            let mut raw = RawBackend::new(&b.instance, HostPort::parse(&b.endpoint)?);
            raw.role = Some(Role::Replica);
            pool.add(&raw).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// The proxy's requests in flight (sent to a backend, reply not back), summed over its
    /// backends. Counted by the Redis listener only (a PostgreSQL listener leaves it 0).
    pub fn in_flight(&self) -> u64 {
        self.shared
            .pool
            .view()
            .iter()
            .map(|v| v.metrics.in_flight)
            .sum()
    }

    /// Redis writes the proxy answered with an error because the backend died under them.
    pub fn lost_in_flight(&self) -> u64 {
        self.shared
            .pool
            .view()
            .iter()
            .map(|v| v.metrics.lost_in_flight)
            .sum()
    }
}

#[async_trait::async_trait]
impl Router for ProxyRouter {
    async fn route(&self, primary: &Backend, readers: &[Backend]) -> Result<(), String> {
        self.ensure(primary)?;
        for r in readers {
            self.ensure(r)?;
        }
        let pool = &self.shared.pool;
        let change = pool
            .set_primary(Some(&primary.instance), true)
            .map_err(|e| e.to_string())?;
        for b in pool.backends() {
            if b.name == primary.instance || change.previous.as_deref() == Some(&b.name) {
                continue;
            }
            let admin = if readers.iter().any(|r| r.instance == b.name) {
                AdminState::Ready
            } else {
                AdminState::Maintenance
            };
            pool.set(&b.name, None, Some(admin))
                .map_err(|e| e.to_string())?;
        }
        if let Some(prev) = change.previous.filter(|p| *p != primary.instance) {
            for e in self.shared.registry.on_backend(&prev) {
                if e.busy.load(std::sync::atomic::Ordering::SeqCst) {
                    e.kill.cancel();
                }
            }
        }
        Ok(())
    }

    async fn hold(&self, wait: Duration) -> Result<(), String> {
        let change = self
            .shared
            .pool
            .set_primary(None, false)
            .map_err(|e| e.to_string())?;
        if let Some(prev) = change.previous {
            bellwether_proxy::wait_idle(&self.shared, &prev, wait.min(SWITCH_WAIT)).await;
        }
        Ok(())
    }

    async fn figures(&self) -> Option<BTreeMap<String, BackendFigures>> {
        Some(
            self.shared
                .pool
                .view()
                .into_iter()
                .map(|v| {
                    let w = &v.window;
                    (
                        v.name,
                        BackendFigures {
                            requests_per_s: (w.seconds > 0.0).then_some(w.requests_per_second),
                            error_rate: w.error_rate,
                            sessions: Some(v.metrics.active_connections as u32),
                        },
                    )
                })
                .collect(),
        )
    }
}

/// A PostgreSQL primary whose commits wait for one synchronous standby (as the drill's).
pub fn start_pg_primary(
    extra: &[(&str, &str)],
) -> Result<bellwether_pg::testing::TestCluster, String> {
    let mut conf = vec![
        ("synchronous_standby_names".to_string(), "'*'".to_string()),
        ("wal_level".to_string(), "replica".to_string()),
    ];
    conf.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    bellwether_pg::testing::TestCluster::try_start(bellwether_pg::testing::TestClusterOptions {
        conf,
    })
    .map_err(|e| e.to_string())
}

/// The postmaster's pid of a cluster.
pub fn postmaster_pid(c: &bellwether_pg::testing::TestCluster) -> Option<u32> {
    std::fs::read_to_string(c.data_dir.join("postmaster.pid"))
        .ok()
        .and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok()))
}

/// `root` and its children (a PostgreSQL server's backends).
pub fn processes(root: u32) -> Vec<i32> {
    let mut out = vec![root as i32];
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if ppid == Some(root) {
                out.push(pid);
            }
        }
    }
    out
}

pub fn sigkill(pids: &[i32]) {
    for p in pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*p),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

pub fn pg_url(endpoint: &str) -> String {
    format!("postgres://postgres@{endpoint}/postgres?connect_timeout=5")
}

pub async fn pg_connect(endpoint: &str) -> Result<tokio_postgres::Client, String> {
    let (client, connection) = tokio_postgres::connect(&pg_url(endpoint), tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("{endpoint}: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// A spec for the benchmarks: `mirrors` mirrors exactly, active-passive, the given interval.
pub fn spec(
    name: &str,
    kind: DepKind,
    primary: &str,
    mirrors: u32,
    interval_ms: u64,
    extra_policy: serde_json::Value,
) -> bellwether_model::mirror::DependencySpec {
    let mut policy = serde_json::json!({
        "min_mirrors": mirrors, "max_mirrors": mirrors,
        "mode": "active-passive",
        "health_interval": format!("{interval_ms}ms"),
        "switch_after": 2,
        "failback_after": "1d",
    });
    if let (Some(p), Some(x)) = (policy.as_object_mut(), extra_policy.as_object()) {
        for (k, v) in x {
            p.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(serde_json::json!({
        "name": name, "kind": kind, "primary": primary,
        "tier": "critical", "impact": 1.0, "policy": policy,
    }))
    .unwrap_or_else(|e| panic!("the benchmark's spec: {e}"))
}

/// Kills every process whose working directory is under `dir`: the mirrors a driver started
/// there (`redis-server --dir D` and a PostgreSQL standby work in their directory), including
/// one whose provisioning was cut off before its record was written, so that a benchmark or a
/// test that fails leaves none behind.
pub fn kill_processes_under(dir: &std::path::Path) {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cwd) = std::fs::read_link(e.path().join("cwd")) else {
            continue;
        };
        if cwd.starts_with(dir) && pid != std::process::id() as i32 {
            sigkill(&[pid]);
        }
    }
}

/// Calls [`kill_processes_under`] on drop.
pub struct KillUnder(pub std::path::PathBuf);

impl Drop for KillUnder {
    fn drop(&mut self) {
        kill_processes_under(&self.0);
    }
}
