//! `bellwether bench load` end to end, small: 20 simulated agents against a real server
//! subprocess, samples every second for a 3 s window, and a rollout across them that the
//! simulated agents answer. The figures themselves are not checked (they depend on the
//! machine); that every part ran and was counted is.

use std::process::Command;

fn bellwether() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bellwether"))
}

fn run_load(store: &str) -> serde_json::Value {
    let out = bellwether()
        .args([
            "bench",
            "load",
            "--agents",
            "20",
            "--interval",
            "1s",
            "--duration",
            "3s",
        ])
        .args([
            "--rollout-after",
            "2s",
            "--bake",
            "1s",
            "--rollout-timeout",
            "120s",
        ])
        .args(["--packages", "40", "--output", "json", "--store", store])
        .output()
        .expect("run bellwether bench load");
    assert!(
        out.status.success(),
        "bench load on {store} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", String::from_utf8_lossy(&out.stdout)))
}

fn check(r: &serde_json::Value, store: &str) {
    assert_eq!(r["store"], store, "{r:#}");
    assert_eq!(r["agents"], 20, "{r:#}");
    let (offered, accepted) = (
        r["ingest"]["offered"].as_u64().unwrap(),
        r["ingest"]["accepted"].as_u64().unwrap(),
    );
    // Every agent sent a batch a second over the window, and the server took them.
    assert!(offered >= 20 * 2, "{r:#}");
    assert!(accepted > 0, "{r:#}");
    let routes: Vec<&str> = r["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["route"].as_str().unwrap())
        .collect();
    for route in [
        "POST /api/v1/enrol",
        "POST /api/v1/agent/profile",
        "POST /api/v1/agent/samples",
        "POST /api/v1/agent/actions/{id}/result",
        "GET /api/v1/rollouts/{id}",
    ] {
        assert!(routes.contains(&route), "{route} missing: {r:#}");
    }
    let enrol = r["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["route"] == "POST /api/v1/enrol")
        .unwrap();
    assert_eq!(enrol["count"], 20, "{r:#}");
    assert_eq!(r["errors"].as_array().unwrap().len(), 0, "{r:#}");
    assert!(r["server"]["rss_peak_mb"].as_f64().unwrap() > 0.0, "{r:#}");
    assert!(r["server"]["cpu_seconds"].as_f64().unwrap() > 0.0, "{r:#}");
    // The rollout reached every simulated agent, once each, and completed.
    let rollout = &r["rollout"];
    assert_eq!(rollout["state"], "completed", "{r:#}");
    assert_eq!(rollout["hosts"], 20, "{r:#}");
    assert_eq!(rollout["actions"]["apply"], 20, "{r:#}");
    assert!(rollout["duration_seconds"].as_f64().is_some(), "{r:#}");
}

#[test]
fn load_runs_end_to_end_on_sqlite() {
    let r = run_load("sqlite");
    check(&r, "sqlite");
}

#[test]
fn load_runs_end_to_end_on_postgres() {
    let url = std::env::var("BELLWETHER_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
    let r = run_load(&url);
    check(&r, "postgres");
}

#[test]
fn a_store_that_is_neither_sqlite_nor_postgres_is_refused() {
    let out = bellwether()
        .args(["bench", "load", "--store", "mysql://h/db"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--store") && err.contains("mysql://h/db"),
        "{err}"
    );
}
