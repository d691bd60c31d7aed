//! A scenario sandbox with real processes: `sandbox up --scenario` writes each host's faults,
//! the web services apply them when their version changes, and the generated history trains a
//! model. (The rollout itself — server runner and API — is tested where it is built.)

mod support;

use std::time::{Duration, Instant};

use support::*;

const SCENARIO: &str = r#"
seed: 3
groups:
  - { name: web, count: 1, role: web, packages: { libssl3: "3.0.11-1" }, disk_free_pct: 45 }
  - { name: old, count: 1, role: web, packages: { libssl1.1: "1.1.1n-0" }, disk_free_pct: 40 }
  - { name: full, count: 1, role: web, disk_free_pct: 5 }
faults:
  - { when: { version: "2", package: { libssl1.1: "*" } }, effect: { error_rate: 0.3 } }
  - { when: { version: "2", disk_free_below_pct: 10 }, effect: { latency_factor: 4 }, onset: 1s }
history: { deployments: 400, seed: 2 }
"#;

fn http_get(addr: &str, path: &str) -> String {
    http_get_auth(addr, path, None)
}

fn http_get_auth(addr: &str, path: &str, token: Option<&str>) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or(out)
}

fn snapshot(addr: &str, ts_ms: i64) -> bellwether_agent::scrape::Snapshot {
    let body = http_get(addr, "/metrics");
    bellwether_agent::scrape::snapshot(&bellwether_agent::scrape::parse(&body).unwrap(), ts_ms)
        .unwrap()
}

/// Error ratio and p50 over a window of about `window` of the service's own load.
fn measure(addr: &str, window: Duration) -> (f64, f64) {
    let mut rates = bellwether_agent::scrape::Rates::default();
    let t0 = Instant::now();
    rates.push(snapshot(addr, 0));
    // The window is the measurement: the service's load generator fills it.
    std::thread::sleep(window);
    let got = rates.push(snapshot(addr, t0.elapsed().as_millis() as i64));
    let get = |n: &str| got.iter().find(|s| s.name == n).map(|s| s.value).unwrap();
    (get("svc_error_ratio"), get("svc_latency_p50_ms"))
}

#[test]
fn a_scenario_sandbox_applies_its_faults_to_the_matching_hosts_only() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sbx");
    let file = tmp.path().join("scenario.yaml");
    std::fs::write(&file, SCENARIO).unwrap();
    let d = dir.to_str().unwrap();
    let _down = Down(&dir);
    let up = run(&[
        "sandbox",
        "up",
        "--scenario",
        file.to_str().unwrap(),
        "--dir",
        d,
        "--interval",
        "300ms",
    ]);
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );

    // The faults each host got.
    let faults = |h: &str| {
        std::fs::read_to_string(dir.join("hosts").join(h).join("etc/websvc/faults.json")).unwrap()
    };
    assert_eq!(faults("web-01"), "[]");
    assert_eq!(
        faults("old-01"),
        r#"[{"version":"2","error_rate":0.3,"latency_factor":1.0,"onset_ms":0}]"#
    );
    assert_eq!(
        faults("full-01"),
        r#"[{"version":"2","error_rate":0.0,"latency_factor":4.0,"onset_ms":1000}]"#
    );

    let status = run(&["sandbox", "status", "--dir", d, "--output", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let addr = |h: &str| {
        v["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == h)
            .unwrap()["service_addr"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (web, old, full) = (addr("web-01"), addr("old-01"), addr("full-01"));

    // Version 1 is healthy everywhere.
    let (e_old_1, p50_full_1) = (
        measure(&old, Duration::from_millis(1500)).0,
        measure(&full, Duration::from_millis(1500)).1,
    );
    assert_eq!(e_old_1, 0.0);

    // Version 2, written as the agent's set_service_version would.
    for h in ["web-01", "old-01", "full-01"] {
        std::fs::write(dir.join("hosts").join(h).join("etc/websvc/version"), "2\n").unwrap();
    }
    let page = eventually_blocking(|| http_get(&web, "/").contains("websvc 2"));
    assert!(page, "the service picks up the new version");
    // The full-disk fault shows once its 1 s onset has passed: measure the full host until
    // its latency has risen (each window a measurement of its own), rather than sleep past
    // the onset and hope.
    let deadline = Instant::now() + Duration::from_secs(15);
    let (e_full, p50_full_2) = loop {
        let (e, p50) = measure(&full, Duration::from_millis(1000));
        if p50 > 2.5 * p50_full_1 {
            break (e, p50);
        }
        assert!(
            Instant::now() < deadline,
            "full-disk p50 {p50_full_1} → {p50}, its fault never showed"
        );
    };
    assert_eq!(
        e_full, 0.0,
        "the full-disk fault slows requests, never fails them"
    );
    assert!(p50_full_2 > 2.5 * p50_full_1);
    let (e_web, _) = measure(&web, Duration::from_millis(2000));
    let (e_old, _) = measure(&old, Duration::from_millis(2000));
    assert_eq!(e_web, 0.0);
    assert!(
        (0.15..0.45).contains(&e_old),
        "libssl 1.1 host error ratio {e_old}"
    );

    // `up` imported the generated history into the server.
    let server = std::fs::read_to_string(dir.join("server.addr")).unwrap();
    let token = std::fs::read_to_string(dir.join("operator.token")).unwrap();
    let events = http_get_auth(
        server.trim(),
        "/api/v1/events?limit=100",
        Some(token.trim()),
    );
    assert!(
        events.contains("400 outcomes imported from a history CSV"),
        "{events}"
    );

    // The generated history trains a model.
    let history = dir.join("history.csv");
    let model = tmp.path().join("model.json");
    let train = run(&[
        "model",
        "train",
        "--history",
        history.to_str().unwrap(),
        "--out",
        model.to_str().unwrap(),
    ]);
    assert!(
        train.status.success(),
        "{}",
        String::from_utf8_lossy(&train.stderr)
    );
    assert!(model.exists());
}

/// Polls `f` every 50 ms for up to 10 s.
fn eventually_blocking(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn a_bad_scenario_is_refused_with_its_line_and_column() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("bad.yaml");
    std::fs::write(
        &file,
        "groups:\n  - name: web\n    count: 2\n    role: web\n    colour: red\n",
    )
    .unwrap();
    let dir = tmp.path().join("sbx");
    let out = run(&[
        "sandbox",
        "up",
        "--scenario",
        file.to_str().unwrap(),
        "--dir",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml:5:5: groups[0]: unknown field `colour`"),
        "{err}"
    );
}
