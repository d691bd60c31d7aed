//! Issue 10, part 1, end to end with real processes: a host that failed a release is never
//! tried again blind. A scenario sandbox (server, web services, agents) where version 2 breaks
//! on two kinds of host the history never showed: the `edge` group (only its group label sets
//! it apart) and the hosts with glibc 2.37 (a package the old feature vector never named; the
//! plan's `update.depends_on` names it now). Rollout 1 updates every host at once and rolls
//! the failing ones back alone; the server retrains when it settles; rollout 2 of the same
//! release holds back every host that failed in rollout 1, and no other.
//!
//! The test prints the benchmark figure (docs/predict.md, "Direct evidence"):
//! `cargo test -p bellwether --test risk_evidence -- --nocapture`.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use support::*;

/// Nine web hosts: four healthy ones, three `edge` hosts (broken by their group) and two
/// whose glibc 2.37 breaks version 2 (`blue` and `green` differ from `web` only in glibc).
const SCENARIO: &str = r#"
seed: 5
groups:
  - { name: web, count: 4, role: web, packages: { libssl3: "3.0.11-1", glibc: "2.36-9" }, disk_free_pct: 45 }
  - { name: edge, count: 3, role: web, packages: { libssl3: "3.0.11-1", glibc: "2.36-9" }, disk_free_pct: 45 }
  - { name: blue, count: 1, role: web, packages: { libssl3: "3.0.11-1", glibc: "2.37-1" }, disk_free_pct: 45 }
  - { name: green, count: 1, role: web, packages: { libssl3: "3.0.11-1", glibc: "2.37-2" }, disk_free_pct: 45 }
faults:
  - name: edge hosts break version 2
    when: { version: "2", group: edge }
    effect: { error_rate: 0.3 }
    onset: 2s
    in_history: false
  - name: glibc 2.37 breaks version 2
    when: { version: "2", package: { glibc: "2.37*" } }
    effect: { error_rate: 0.3 }
    onset: 2s
    in_history: false
history: { deployments: 300, seed: 1 }
"#;

/// The example plan with `depends_on: [glibc]`, a pilot of `pilot`, no pause on spreading
/// failures (rollout 1 meets five at once, on purpose) and a bake long enough for a loaded
/// 2-core machine.
fn plan(pilot: &str) -> String {
    let example = include_str!("../../../examples/plans/web-v2.yaml");
    for needle in [
        "pilot: { min: 2, max: 4 }",
        "bake: 10s",
        "pause_when: { hosts: 3, wave_pct: 30 }",
        "slow_down_when: { hosts: 2 }",
        "  revert: { builtin: set_service_version, version: \"1\" }\n",
    ] {
        assert!(example.contains(needle), "{needle}");
    }
    example
        .replace("pilot: { min: 2, max: 4 }", pilot)
        .replace("bake: 10s", "bake: 25s")
        .replace(
            "pause_when: { hosts: 3, wave_pct: 30 }",
            "pause_when: { hosts: 20, wave_pct: 100 }",
        )
        .replace(
            "slow_down_when: { hosts: 2 }",
            "slow_down_when: { hosts: 20 }",
        )
        .replace(
            "  revert: { builtin: set_service_version, version: \"1\" }\n",
            "  revert: { builtin: set_service_version, version: \"1\" }\n  depends_on: [glibc]\n",
        )
}

/// `GET path` of the sandbox's server with its operator token; the body.
fn http_get(dir: &Path, path: &str) -> String {
    use std::io::{Read, Write};
    let (url, token) = sandbox_server_env(dir);
    let addr = url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or(out)
}

fn models(dir: &Path) -> Vec<serde_json::Value> {
    let o = sandbox_cli(dir, &["model", "list", "--output", "json"]);
    assert_ok("model list", &o);
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn rollout_2_holds_back_every_host_that_failed_rollout_1_and_no_other() {
    let _turn = one_sandbox_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let dir = sandbox_up_with(tmp.path(), SCENARIO);
    let _down = Down(&dir);
    let version = |h: &str| {
        std::fs::read_to_string(dir.join("hosts").join(h).join("etc/websvc/version")).unwrap()
    };

    // Rollout 1: every host in the pilot. The model knows neither fault.
    let plan1 = tmp.path().join("plan1.yaml");
    std::fs::write(&plan1, plan("pilot: { min: 9, max: 9 }")).unwrap();
    let models_before = models(&dir).len();
    let (id1, r1) = rollout_to_report(&dir, &plan1);
    assert_eq!(r1["state"], "completed", "{r1}");
    let mut failed = BTreeSet::new();
    let mut healthy = BTreeSet::new();
    for h in r1["hosts"].as_array().unwrap() {
        let name = h["host"].as_str().unwrap().to_string();
        assert_eq!(h["band"], "low", "neither fault is in the history: {h}");
        match h["action"].as_str().unwrap() {
            "rolled_back" => {
                assert_eq!(version(&name), "1\n", "{name}");
                failed.insert(name);
            }
            "updated" => {
                assert_eq!(version(&name), "2\n", "{name}");
                healthy.insert(name);
            }
            other => panic!("unexpected action {other}: {h}"),
        }
    }
    let expect_failed: BTreeSet<String> = ["edge-01", "edge-02", "edge-03", "blue-01", "green-01"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(failed, expect_failed, "{r1}");
    assert_eq!(healthy.len(), 4, "{r1}");

    // The server retrains once rollout 1 settles, with 9 new outcomes (under the default
    // --retrain-after of 50). The model list is where that shows.
    let deadline = Instant::now() + Duration::from_secs(120);
    while models(&dir).len() <= models_before {
        assert!(
            Instant::now() < deadline,
            "no model was trained after rollout {id1} settled"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // The risk says why: the host's own failure and its peers'.
    let o = sandbox_cli(
        &dir,
        &[
            "risk",
            "--update",
            "websvc",
            "--version",
            "2",
            "--depends-on",
            "glibc",
            "--output",
            "json",
        ],
    );
    assert_ok("risk", &o);
    let risk: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let edge = risk["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host"] == "edge-01")
        .unwrap();
    let explanations: Vec<&str> = edge["contributing_factors"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["explanation"].as_str())
        .collect();
    assert!(
        explanations
            .iter()
            .any(|e| e.starts_with("failed version 2 on ") && e.contains(&id1)),
        "{edge}"
    );
    assert!(
        explanations.contains(&"3 of 3 hosts with group=edge failed version 2 of websvc"),
        "{edge}"
    );

    // Rollout 2 of the same release.
    let plan2 = tmp.path().join("plan2.yaml");
    std::fs::write(&plan2, plan("pilot: { min: 2, max: 9 }")).unwrap();
    let (id2, r2) = rollout_to_report(&dir, &plan2);
    assert!(
        r2["model_version"].as_i64() > r1["model_version"].as_i64(),
        "{r2}"
    );
    let mut held_failed = 0;
    let mut held_healthy = 0;
    for h in r2["hosts"].as_array().unwrap() {
        let name = h["host"].as_str().unwrap();
        let held = h["action"] == "held_back";
        if failed.contains(name) {
            assert!(held, "{name} failed rollout 1 and must be held back: {h}");
            assert_eq!(h["band"], "high", "{h}");
            assert_eq!(version(name), "1\n", "{name} was not touched again");
            held_failed += held as usize;
        } else {
            assert!(!held, "{name} did not fail rollout 1: {h}");
            assert_eq!(h["action"], "updated", "{h}");
            held_healthy += held as usize;
        }
    }
    assert_eq!(r2["state"], "completed", "{r2}");
    // The evidence behind each held-back host is in the rollout's event log.
    let events = http_get(
        &dir,
        &format!("/api/v1/events?task={id2}&kind=rollout.host.evidence"),
    );
    let events: serde_json::Value = serde_json::from_str(&events).unwrap();
    let with_evidence: BTreeSet<&str> = events
        .as_array()
        .unwrap_or_else(|| panic!("{events}"))
        .iter()
        .filter_map(|e| e["host"].as_str())
        .collect();
    for h in &failed {
        assert!(with_evidence.contains(h.as_str()), "{h}: {events}");
    }
    println!(
        "BENCH evidence: rollout 2 held back {held_failed} of {} hosts that failed rollout 1 ({:.0} %) and {held_healthy} of {} healthy hosts ({:.0} %)",
        failed.len(),
        100.0 * held_failed as f64 / failed.len() as f64,
        healthy.len(),
        100.0 * held_healthy as f64 / healthy.len() as f64,
    );
}
