//! End-to-end: the real `bellwether` binary as server, agents, sandbox and quickstart, on
//! loopback, with host roots made by `bellwether_drift::synth` in temporary directories.
//! Every wait polls with a deadline; every child is killed if a test fails.

mod support;

use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use bellwether_drift::synth::{write_host_root, Drift, HostSpec};
use bellwether_drift::version::ChangeLevel;
use bellwether_model::{DriftCategory, DriftScore};
use support::*;

const WAIT: Duration = Duration::from_secs(30);

fn has_finding(s: &DriftScore, category: DriftCategory, attribute: &str) -> bool {
    s.findings
        .iter()
        .any(|f| f.category == category && f.attribute.starts_with(attribute))
}

/// Three hosts, one change each — a package, a metric, a dependency — and the server's drift
/// for each host shows exactly that change after it lands.
async fn drift_appears_after_changes(backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let server = Server::start(
        dir,
        &backend,
        "127.0.0.1:0",
        "operator-token-e2e-drift",
        "enrol-token-e2e-drift",
    );
    let api = server.api();
    let dependency = TcpListener::bind("127.0.0.1:0").unwrap();
    let dep_addr = dependency.local_addr().unwrap().to_string();

    let names = ["pkg-host", "metric-host", "dep-host"];
    let mut specs = Vec::new();
    let mut agents = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let mut spec = HostSpec::generate(100 + i as u64, name, 60);
        spec.packages.insert("nginx".into(), "1.22.1-9".into());
        spec.dependencies = vec![("db".into(), dep_addr.clone())];
        let root = dir.join("hosts").join(name);
        write_host_root(&root, &spec).unwrap();
        agents.push(start_agent(dir, &server, name, &root, "300ms", &[]));
        specs.push((root, spec));
    }

    for name in names {
        eventually(&format!("{name}'s first profile"), WAIT, || {
            api.profile(name)
        })
        .await;
    }
    let (status, body) = api
        .post("/api/v1/baselines", serde_json::json!({"all": true}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["captured"].as_array().map(Vec::len), Some(3), "{body}");
    for name in names {
        let s = eventually(&format!("{name}'s drift"), WAIT, || api.drift(name)).await;
        assert_eq!(
            s.configuration.get(),
            0.0,
            "{name} before any change: {s:?}"
        );
        assert_eq!(s.dependency.get(), 0.0, "{name} before any change: {s:?}");
    }

    // A package gets a major upgrade.
    let (root, spec) = &mut specs[0];
    spec.apply(&Drift::UpgradePackage {
        name: "nginx".into(),
        level: ChangeLevel::Major,
    });
    write_host_root(root, spec).unwrap();
    // The load goes up fiftyfold.
    let (root, spec) = &mut specs[1];
    let load = spec.load.map(|l| (l + 1.0) * 50.0);
    spec.apply(&Drift::Load(load));
    write_host_root(root, spec).unwrap();
    // The dependency host's endpoint moves to a port where nothing answers.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let (root, spec) = &mut specs[2];
    spec.apply(&Drift::SetDependency {
        name: "db".into(),
        endpoint: closed,
    });
    write_host_root(root, spec).unwrap();

    let expect = [
        ("pkg-host", DriftCategory::Configuration, "package:nginx"),
        ("metric-host", DriftCategory::Performance, "metric:load1"),
        ("dep-host", DriftCategory::Dependency, "dependency:db"),
    ];
    for (name, category, attribute) in expect {
        let s = eventually(&format!("{attribute} drift on {name}"), WAIT, || async {
            api.drift(name)
                .await
                .filter(|s| has_finding(s, category, attribute))
        })
        .await;
        let score = match category {
            DriftCategory::Configuration => s.configuration,
            DriftCategory::Performance => s.performance,
            DriftCategory::Dependency => s.dependency,
        };
        assert!(score.get() > 0.0, "{name}: {s:?}");
        assert!(s.overall.get() > 0.0, "{name}: {s:?}");
    }
    // The package host's change is configuration drift only: no dependency finding but the
    // connect latency's, which is the machine's load, not the change (a loopback connect
    // went from 0.06 to 1.8 ms on CI's two busy cores and scored 0.18).
    let s = api.drift("pkg-host").await.unwrap();
    let other: Vec<_> = s
        .findings
        .iter()
        .filter(|f| f.category == DriftCategory::Dependency)
        .filter(|f| !f.attribute.ends_with(".latency_ms"))
        .collect();
    assert!(other.is_empty(), "{s:?}");
    assert!(s.configuration.get() > 0.0, "{s:?}");

    // The fleet view lists the hosts by overall drift, highest first.
    let (status, fleet) = api.get("/api/v1/fleet/drift").await;
    assert_eq!(status, 200, "{fleet}");
    let overall: Vec<f64> = fleet["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["score"]["overall"].as_f64().unwrap())
        .collect();
    assert_eq!(overall.len(), 3);
    assert!(overall.windows(2).all(|w| w[0] >= w[1]), "{overall:?}");

    drop(dependency);
    for a in &mut agents {
        a.assert_running();
        let status = a.terminate(Duration::from_secs(10));
        assert!(
            status.success(),
            "{} exited with {status} on SIGTERM",
            a.what
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_appears_after_package_metric_and_dependency_changes_on_sqlite() {
    drift_appears_after_changes(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_appears_after_package_metric_and_dependency_changes_on_postgres() {
    drift_appears_after_changes(Backend::postgres("drift")).await;
}

/// The agent keeps collecting while the server is down, drops the oldest samples past its
/// buffer, and tells the restarted server (same port, same data dir) how many it dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_buffers_while_the_server_is_down_and_reports_what_it_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut server = Server::start(
        dir,
        &Backend::Sqlite,
        "127.0.0.1:0",
        "operator-token-e2e-buffer",
        "enrol-token-e2e-buffer",
    );
    let spec = HostSpec::generate(7, "buf-host", 40);
    let root = dir.join("hosts/buf-host");
    write_host_root(&root, &spec).unwrap();
    let mut agent = start_agent(dir, &server, "buf-host", &root, "50ms", &["--buffer", "20"]);
    let api = server.api();
    eventually("the first profile", WAIT, || {
        agent.assert_running();
        api.profile("buf-host")
    })
    .await;

    // The server goes away; the agent must overflow its 20-sample buffer and say so.
    server.guard.kill();
    eventually("the agent to report a full buffer", WAIT, || async {
        agent
            .log_text()
            .contains("Sample buffer is full")
            .then_some(())
    })
    .await;
    agent.assert_running();

    // The same server comes back on the same address with the same store.
    let addr = server.addr.clone();
    let restarted = Server::start(
        dir,
        &Backend::Sqlite,
        &addr,
        "operator-token-e2e-buffer",
        "enrol-token-e2e-buffer",
    );
    assert_eq!(restarted.addr, addr);
    let api = restarted.api();
    let reported = eventually("the agent to report dropped samples", WAIT, || async {
        let log = agent.log_text();
        let line = log
            .lines()
            .find(|l| l.contains("samples dropped while it was away"))?;
        let n: u64 = line
            .split("dropped=")
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        Some(n)
    })
    .await;
    assert!(reported > 0);
    // The server counted them.
    let metrics = api.metrics().await;
    let counted: f64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("bellwether_samples_dropped_by_agents_total ")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0);
    assert_eq!(counted as u64, reported, "server /metrics:\n{metrics}");
    // And samples flow again.
    let (status, host) = api.get("/api/v1/hosts/buf-host").await;
    assert_eq!(status, 200, "{host}");
    agent.assert_running();
    let status = agent.terminate(Duration::from_secs(10));
    assert!(status.success(), "agent exit {status}");
}

/// Stops a sandbox however the test ends.
struct SandboxGuard<'a>(&'a Path);

impl Drop for SandboxGuard<'_> {
    fn drop(&mut self) {
        let _ = run(&[
            "sandbox",
            "down",
            "--dir",
            self.0.to_str().unwrap(),
            "--grace",
            "1s",
        ]);
    }
}

fn text(o: &std::process::Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A plain HTTP/1.0 GET over loopback; the body.
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or(out)
}

#[test]
fn sandbox_up_and_down_leave_no_process_running() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sbx");
    let d = dir.to_str().unwrap();
    let _guard = SandboxGuard(&dir);
    let up = run(&[
        "sandbox",
        "up",
        "--hosts",
        "3",
        "--dir",
        d,
        "--interval",
        "300ms",
    ]);
    assert!(up.status.success(), "{}", text(&up));
    let marker = dir.canonicalize().unwrap().display().to_string();
    // Three agents, three web services, the server and the listener outlive `sandbox up`.
    assert_eq!(processes_mentioning(&marker).len(), 8, "{}", text(&up));

    let again = run(&["sandbox", "up", "--hosts", "3", "--dir", d]);
    assert_eq!(again.status.code(), Some(2), "{}", text(&again));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already running"),
        "{}",
        text(&again)
    );

    let status = run(&["sandbox", "status", "--dir", d, "--output", "json"]);
    assert!(status.status.success(), "{}", text(&status));
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(v["hosts"].as_array().unwrap().len(), 3);
    assert!(
        v["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["agent_running"] == true),
        "{v}"
    );

    // Every host runs its web service; its metrics parse and count the load generator's traffic.
    for h in v["hosts"].as_array().unwrap() {
        assert_eq!(h["service_running"], true, "{v}");
        let addr = h["service_addr"].as_str().unwrap();
        let body = http_get(addr, "/metrics");
        let samples = bellwether_agent::scrape::parse(&body).unwrap();
        let snap = bellwether_agent::scrape::snapshot(&samples, 0).unwrap();
        assert_eq!(snap.buckets.len(), 12, "{body}");
        let page = http_get(addr, "/");
        assert!(page.contains("websvc 1"), "{page}");
    }

    let drift = run(&[
        "sandbox", "drift", "--dir", d, "--host", "web-01", "--kind", "package",
    ]);
    assert!(drift.status.success(), "{}", text(&drift));
    assert!(
        String::from_utf8_lossy(&drift.stdout).contains("nginx 1.22.1-9 → 2."),
        "{}",
        text(&drift)
    );
    let bad = run(&[
        "sandbox", "drift", "--dir", d, "--host", "nope", "--kind", "metric",
    ]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));

    let down = run(&["sandbox", "down", "--dir", d]);
    assert!(down.status.success(), "{}", text(&down));
    assert!(
        String::from_utf8_lossy(&down.stdout).contains("stopped 8 processes"),
        "{}",
        text(&down)
    );
    assert_eq!(processes_mentioning(&marker), Vec::<u32>::new());
    let status = run(&["sandbox", "status", "--dir", d, "--output", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(v["server_running"], false, "{v}");
    let purge = run(&["sandbox", "down", "--dir", d, "--purge"]);
    assert!(purge.status.success(), "{}", text(&purge));
    assert!(
        String::from_utf8_lossy(&purge.stdout).contains("stopped 0 processes"),
        "{}",
        text(&purge)
    );
    assert!(!dir.exists());
}
