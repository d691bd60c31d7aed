//! Two real `bellwether server` processes on one PostgreSQL store (a schema of its own): the
//! first dies (SIGKILL), and the CLI and a real agent, each given both addresses, carry on
//! through the second: the agent's samples and a changed profile reach the store through the
//! second server, and CLI reads and writes are answered by it. With both gone the CLI says so
//! (exit 3) within its failover budget. (The action loop's failover, with no action run or
//! reported twice, is tested in the agent crate against local listeners.)

mod support;

use std::time::{Duration, Instant};

use bellwether_drift::synth::{write_host_root, Drift, HostSpec};
use bellwether_drift::version::ChangeLevel;
use support::*;

const OP: &str = "operator-token-failover";
const ENROL: &str = "enrol-token-failover";
const WAIT: Duration = Duration::from_secs(30);

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// `bellwether ARGS…` with `BELLWETHER_SERVER` set to `servers`.
fn cli(servers: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(EXE)
        .args(args)
        .env("BELLWETHER_SERVER", servers)
        .env("BELLWETHER_TOKEN", OP)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

async fn last_seen(api: &Api, host: &str) -> Option<i64> {
    match api.get(&format!("/api/v1/hosts/{host}")).await {
        (200, v) => v["last_seen_ms"].as_i64(),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_and_an_agent_carry_on_through_the_second_server_when_the_first_dies() {
    let backend = Backend::postgres("failover");
    let tmp = tempfile::tempdir().unwrap();
    let (d1, d2) = (tmp.path().join("s1"), tmp.path().join("s2"));
    std::fs::create_dir_all(&d1).unwrap();
    std::fs::create_dir_all(&d2).unwrap();
    let mut first = Server::start(&d1, &backend, "127.0.0.1:0", OP, ENROL);
    let mut second = Server::start(&d2, &backend, "127.0.0.1:0", OP, ENROL);
    let both = format!("{},{}", first.url, second.url);

    let name = "fo-host";
    let mut spec = HostSpec::generate(7, name, 40);
    spec.packages.insert("nginx".into(), "1.22.1-9".into());
    let root = tmp.path().join("root");
    write_host_root(&root, &spec).unwrap();
    let state = tmp.path().join("agent-state");
    // The repeated form of the flag; the CLI below uses the comma-separated environment.
    let mut agent = Guard::spawn(
        "agent",
        &[
            "--log",
            "info",
            "agent",
            "--server",
            &first.url,
            "--server",
            &second.url,
            "--token",
            ENROL,
            "--rootfs",
            root.to_str().unwrap(),
            "--name",
            name,
            "--interval",
            "200ms",
            "--max-backoff",
            "500ms",
            "--state-dir",
            state.to_str().unwrap(),
            "--action-wait",
            "1s",
        ],
        &[],
        &tmp.path().join("agent.log"),
    );

    let api1 = first.api();
    let api2 = second.api();
    let before = eventually("the agent's first profile", WAIT, || api1.profile(name)).await;
    assert_eq!(
        before
            .packages
            .as_ref()
            .unwrap()
            .get("nginx")
            .map(String::as_str),
        Some("1.22.1-9")
    );
    // Both servers read the one store.
    eventually("the host seen through the second server", WAIT, || {
        api2.profile(name)
    })
    .await;
    let o = cli(&both, &["hosts", "--output", "json"]);
    assert!(o.status.success(), "{}", text(&o));

    first.guard.kill();
    let killed_at = now_ms();

    // Samples keep arriving, through the second server.
    eventually("samples after the first server died", WAIT, || async {
        last_seen(&api2, name)
            .await
            .filter(|t| *t > killed_at + 500)
    })
    .await;
    // A configuration change reaches the store as a new profile.
    spec.apply(&Drift::UpgradePackage {
        name: "nginx".into(),
        level: ChangeLevel::Major,
    });
    write_host_root(&root, &spec).unwrap();
    let want = spec.packages.get("nginx").cloned();
    eventually(
        "the changed profile through the second server",
        WAIT,
        || async {
            api2.profile(name)
                .await
                .filter(|p| p.packages.as_ref().and_then(|m| m.get("nginx")) == want.as_ref())
        },
    )
    .await;
    agent.assert_running();

    // The CLI, given the dead server first, reads and writes through the second.
    let started = Instant::now();
    let o = cli(&both, &["hosts", "--output", "json"]);
    assert!(o.status.success(), "{}", text(&o));
    let hosts: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(hosts[0]["name"], name, "{hosts}");
    let o = std::process::Command::new(EXE)
        .args([
            "baseline",
            "capture",
            "--all",
            "--server",
            &first.url,
            "--server",
            &second.url,
            "--token",
            OP,
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("Captured 1 baseline."), "{}", text(&o));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a refused connection fails over at once: {:?}",
        started.elapsed()
    );
    let (status, body) = api2.get(&format!("/api/v1/hosts/{name}")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["baseline_at_ms"].as_i64().is_some(), "{body}");

    agent.assert_running();

    // With every server gone the CLI says so, naming them, within its budget (10 s).
    second.guard.kill();
    let started = Instant::now();
    let o = cli(&both, &["hosts"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("no bellwether server took the request within 10000 ms")
            && t.contains(&first.url)
            && t.contains(&second.url),
        "{t}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
}
