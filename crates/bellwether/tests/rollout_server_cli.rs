//! `bellwether rollout` against a real server process that is killed with SIGKILL in the
//! middle of a rollout and restarted: the rollout resumes from the store, no host is applied
//! twice and none is lost. The agents are simulated over HTTP (the real agent's side is tested
//! in rollout_sandbox.rs), so the test can count every action each host was sent.

mod support;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;

const OP: &str = "operator-token-rollout-cli";
const PLAN: &str = r#"name: web-v2
update:
  name: websvc
  version: "2"
  apply:  { builtin: set_service_version, version: "2" }
  revert: { builtin: set_service_version, version: "1" }
targets:
  labels: { role: web }
risk:
  low: 0.3
  high: 0.7
  moderate_share: 0.25
  pilot: { min: 1, max: 1 }
  high_risk: defer
waves: { fixed: [50, 100] }
bake: 1s
analysis:
  interval: 100ms
  baseline: 200ms
  metrics:
    - { name: svc_error_ratio, threshold_pct: 50, for: 300ms, floor: 0.01 }
  judge: { enabled: false }
no_data: { after: 10s }
"#;

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

/// Which (action id, kind) each host was sent.
type Sent = Arc<Mutex<BTreeMap<String, BTreeMap<String, String>>>>;

/// How many sample batches the server accepted from each host.
type Accepted = Arc<Mutex<BTreeMap<String, usize>>>;

/// A simulated agent thread: enrols, reports a profile, then sends healthy samples and runs
/// the actions it is sent, against whatever URL `base` holds (it changes on a restart).
fn agent(
    name: String,
    base: Arc<Mutex<String>>,
    sent: Sent,
    accepted: Accepted,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _in_runtime = rt.enter();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let url = |p: &str| format!("{}{p}", base.lock().unwrap());
        let token = loop {
            if let Ok(r) = rt.block_on(
                http.post(url("/api/v1/enrol"))
                    .bearer_auth("enrol-token-rollout-cli")
                    .json(&serde_json::json!({"name": name, "labels": {"role": "web"}}))
                    .send(),
            ) {
                break rt.block_on(r.json::<serde_json::Value>()).unwrap()["agent_token"]
                    .as_str()
                    .unwrap()
                    .to_string();
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let _ = rt.block_on(
            http.post(url("/api/v1/agent/profile"))
                .bearer_auth(&token)
                .json(&serde_json::json!({"metrics": {"disk_free_pct": 40.0}}))
                .send(),
        );
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let t = now_ms();
            let r = rt.block_on(
                http.post(url("/api/v1/agent/samples"))
                    .bearer_auth(&token)
                    .json(&serde_json::json!({"samples": [{"ts_ms": t, "name": "svc_error_ratio", "value": 0.001}]}))
                    .send(),
            );
            if r.is_ok_and(|r| r.status() == reqwest::StatusCode::ACCEPTED) {
                *accepted.lock().unwrap().entry(name.clone()).or_default() += 1;
            }
            let Ok(r) = rt.block_on(
                http.get(url("/api/v1/agent/actions?wait_ms=200"))
                    .bearer_auth(&token)
                    .send(),
            ) else {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            };
            let Ok(v) = rt.block_on(r.json::<serde_json::Value>()) else {
                continue;
            };
            for a in v["actions"].as_array().into_iter().flatten() {
                let id = a["id"].as_str().unwrap().to_string();
                sent.lock()
                    .unwrap()
                    .entry(name.clone())
                    .or_default()
                    .insert(
                        id.clone(),
                        format!(
                            "{}:{}",
                            a["rollout"].as_str().unwrap(),
                            a["kind"].as_str().unwrap()
                        ),
                    );
                let _ = rt.block_on(
                    http.post(url(&format!("/api/v1/agent/actions/{id}/result")))
                        .bearer_auth(&token)
                        .json(&serde_json::json!({"ok": true, "exit_code": 0, "error": null, "stdout_tail": "", "stderr_tail": "", "started_ms": t, "finished_ms": now_ms()}))
                        .send(),
                );
            }
        }
    })
}

fn status(server_url: &str, id: &str) -> serde_json::Value {
    let o = run(&[
        "rollout", "--server", server_url, "--token", OP, "status", id, "--output", "json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn sigkill_mid_rollout_resumes(backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut server = Server::start(dir, &backend, "127.0.0.1:0", OP, "enrol-token-rollout-cli");
    let base = Arc::new(Mutex::new(server.url.clone()));
    let mut csv = String::from("deployment_id,host,disk_free_pct,outcome\n");
    for i in 0..300 {
        let disk = (i * 7 % 60) as f64;
        let failed = if disk < 10.0 {
            i % 10 != 0
        } else {
            i % 17 == 0
        };
        writeln!(csv, "d{},h{i},{disk},{}", i / 10, failed as u8).unwrap();
    }
    let h = dir.join("h.csv");
    std::fs::write(&h, csv).unwrap();
    let o = run(&[
        "model",
        "import",
        "--server",
        &server.url,
        "--token",
        OP,
        "--history",
        h.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = run(&["model", "train", "--server", &server.url, "--token", OP]);
    assert!(o.status.success(), "{}", text(&o));

    let sent: Sent = Arc::default();
    let accepted: Accepted = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let names: Vec<String> = (0..4).map(|i| format!("web-{i:02}")).collect();
    let agents: Vec<_> = names
        .iter()
        .map(|n| {
            agent(
                n.clone(),
                base.clone(),
                sent.clone(),
                accepted.clone(),
                stop.clone(),
            )
        })
        .collect();
    // Wait until every host has enrolled and sent its profile.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = run(&[
            "hosts",
            "--server",
            &server.url,
            "--token",
            OP,
            "--output",
            "json",
        ]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        if v.as_array().map_or(0, Vec::len) == 4 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "hosts did not enrol: {}",
            text(&o)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Every host has a pre-change baseline: the server accepted three sample batches from
    // each (the plan's baseline is two intervals).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let counts = accepted.lock().unwrap().clone();
        if names.iter().all(|n| counts.get(n).is_some_and(|c| *c >= 3)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no baseline for every host: {counts:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let plan = dir.join("plan.yaml");
    std::fs::write(&plan, PLAN).unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, PLAN.replace("bake: 1s", "bake: [1]")).unwrap();
    let o = run(&[
        "rollout",
        "--server",
        &server.url,
        "--token",
        OP,
        "start",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("bad.yaml:16:"), "{}", text(&o));
    let o = run(&[
        "rollout",
        "--server",
        &server.url,
        "--token",
        OP,
        "start",
        plan.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let id = out.split_whitespace().nth(2).unwrap().to_string();
    assert!(id.starts_with("r-"), "{out}");

    // Once the pilot is applied and baking, SIGKILL the server in the middle of the rollout.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = status(&server.url, &id);
        if v["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["state"] == "baking")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the pilot was never applied: {v}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    server.guard.kill();
    let backend_again = server.backend.clone();
    std::mem::forget(server); // keep the schema: the restarted server uses it
    let server = Server::start(
        dir,
        &backend_again,
        "127.0.0.1:0",
        OP,
        "enrol-token-rollout-cli",
    );
    *base.lock().unwrap() = server.url.clone();

    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        let v = status(&server.url, &id);
        if v["state"] != "running" {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "the rollout did not finish after the restart: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(done["state"], "completed", "{done}");
    // A second rollout over the same hosts, followed with --wait (plain lines: no terminal).
    let o = run(&[
        "rollout",
        "--server",
        &server.url,
        "--token",
        OP,
        "start",
        plan.to_str().unwrap(),
        "--wait",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let progress = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(
        progress.contains("wave  0") && progress.contains("baking") && progress.contains("updated"),
        "{progress}"
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(": completed (model version"),
        "{}",
        text(&o)
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for a in agents {
        a.join().unwrap();
    }
    let o = run(&[
        "rollout",
        "--server",
        &server.url,
        "--token",
        OP,
        "report",
        &id,
        "--output",
        "json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let hosts = report["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 4, "no host lost: {report}");
    assert!(hosts.iter().all(|h| h["action"] == "updated"), "{report}");
    // Every host was sent exactly one apply action id, across the crash.
    let sent = sent.lock().unwrap();
    for n in &names {
        let applies = sent.get(n).map_or(0, |m| {
            m.values().filter(|k| **k == format!("{id}:apply")).count()
        });
        assert_eq!(applies, 1, "{n} was sent {applies} applies: {sent:?}");
    }
    let o = run(&[
        "rollout",
        "--server",
        &server.url,
        "--token",
        OP,
        "report",
        &id,
    ]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("completed"),
        "{}",
        text(&o)
    );
    let o = run(&[
        "rollout",
        "--server",
        &server.url,
        "--token",
        OP,
        "pause",
        &id,
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("is completed"), "{}", text(&o));
    let o = run(&[
        "rollout",
        "--server",
        &server.url,
        "--token",
        OP,
        "status",
        "r-nope",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

#[test]
fn sigkill_mid_rollout_resumes_on_sqlite() {
    sigkill_mid_rollout_resumes(Backend::Sqlite);
}

#[test]
fn sigkill_mid_rollout_resumes_on_postgres() {
    sigkill_mid_rollout_resumes(Backend::postgres("rollout_kill"));
}
