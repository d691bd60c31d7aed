//! Remediation of a drifted file, end to end with real processes: a sandbox whose agents
//! protect (snapshot and watch) the web service's `etc/websvc.conf`, baselines captured, then
//! two hosts' configuration drifted to `workers = 0`, which version 1 ignores and version 2
//! cannot serve with. The server's model has learnt from past deployments that hosts whose
//! configuration drifted tend to fail, so the rollout of version 2 rates the two hosts high
//! risk, keeps them out of the pilot, runs the plan's rule for their `file:etc/websvc.conf`
//! finding (`restore_file`, the agent's start-time snapshot), and updates them last, healthy:
//! `remediated` in the report, the known-good file back on disk, nothing rolled back.
//!
//! (`remediate_first`, remediation after a host fails, is not driven here: see the note on
//! the test.)

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::*;

/// What `sandbox up` writes to every root's `etc/websvc.conf` (the agents' snapshot).
const GOOD_CONFIG: &str = "workers = 4\nlisten = 127.0.0.1\n";

/// Six hosts alike; two will drift after their baselines. No generated history: the test
/// imports its own, with the drift columns the scenario history does not have.
const SCENARIO: &str = r#"
seed: 3
groups:
  - { name: web, count: 4, role: web, packages: { libssl3: "3.0.11-1" }, disk_free_pct: 45 }
  - { name: drift, count: 2, role: web, packages: { libssl3: "3.0.11-1" }, disk_free_pct: 45 }
"#;

/// A deployment history in the columns of the server's feature vector (docs/api.md): past
/// updates of websvc, a quarter of them on hosts whose configuration had drifted from its
/// baseline by a changed file (configuration drift 0.3 to 0.51), which failed four times in
/// five; the others (no drift, or a package bump of 0.05 to 0.12) failed 3 % of the time.
/// Only the configuration drift is given, so that is all the model can learn from.
/// Deterministic for its seed.
fn drift_history() -> String {
    let mut rng = bellwether_drift::synth::SplitMix64::new(7);
    let mut csv = String::from("deployment,update,update_version,configuration_drift,outcome\n");
    for d in 0..400 {
        let version = ["1.1", "1.2", "1.3", "2"][rng.below(4) as usize];
        let (drift, p_fail) = if rng.below(4) == 0 {
            ([0.3, 0.335, 0.51][rng.below(3) as usize], 0.8)
        } else {
            ([0.0, 0.0, 0.05, 0.12][rng.below(4) as usize], 0.03)
        };
        let failed = u8::from(rng.unit() < p_fail);
        csv.push_str(&format!("d{d},websvc,{version},{drift},{failed}\n"));
    }
    csv
}

/// A whole sandbox per test; the tests of one file run as threads of one process, so they
/// take turns (as in rollout_e2e.rs).
static ONE_SANDBOX_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_SANDBOX_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn server_env(dir: &Path) -> (String, String) {
    let server = std::fs::read_to_string(dir.join("server.addr")).unwrap();
    let token = std::fs::read_to_string(dir.join("operator.token")).unwrap();
    (
        format!("http://{}", server.trim()),
        token.trim().to_string(),
    )
}

fn bellwether(dir: &Path, args: &[&str]) -> std::process::Output {
    let (url, token) = server_env(dir);
    Command::new(env!("CARGO_BIN_EXE_bellwether"))
        .args(args)
        .env("BELLWETHER_SERVER", url)
        .env("BELLWETHER_TOKEN", token)
        .output()
        .unwrap()
}

fn ok(what: &str, out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn file_finding(d: &bellwether_model::DriftScore) -> Option<&bellwether_model::Finding> {
    d.findings
        .iter()
        .find(|f| f.attribute == "file:etc/websvc.conf")
}

/// Not driven: `rollback.remediate_first`, where a host fails on the new version and is then
/// remediated. With warm baselines the server's watcher keeps the failing breach (and the
/// sample whose scrape window straddles the restore) after the remediation, and the engine
/// takes that stale verdict as a second failure and rolls the host back; the fix belongs in
/// bellwether-engine's watch and the server's runner.
#[test]
fn a_drifted_config_is_restored_before_the_update_and_the_hosts_end_remediated() {
    let _turn = one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sbx");
    let file = tmp.path().join("scenario.yaml");
    std::fs::write(&file, SCENARIO).unwrap();
    let _down = Down(&dir);
    let d = dir.to_str().unwrap();
    ok(
        "sandbox up",
        &run(&[
            "sandbox",
            "up",
            "--scenario",
            file.to_str().unwrap(),
            "--dir",
            d,
        ]),
    );
    for h in ["web-01", "drift-01"] {
        let conf = std::fs::read_to_string(dir.join("hosts").join(h).join("etc/websvc.conf"));
        assert_eq!(conf.unwrap(), GOOD_CONFIG, "{h}");
    }
    // Baselines from the known-good state, then the drift: by hand, after the agents took
    // their snapshots.
    ok(
        "baseline capture",
        &bellwether(&dir, &["baseline", "capture", "--all"]),
    );
    for h in ["drift-01", "drift-02"] {
        let out = run(&[
            "sandbox", "drift", "--dir", d, "--host", h, "--kind", "file",
        ]);
        ok("sandbox drift --kind file", &out);
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(said.contains("etc/websvc.conf: 31 bytes"), "{said}");
        assert_eq!(
            std::fs::read_to_string(dir.join("hosts").join(h).join("etc/websvc.conf")).unwrap(),
            "workers = 0\nlisten = 127.0.0.1\n"
        );
    }
    // The agents report the new hash; the server's drift has the finding the rule matches.
    let (url, token) = server_env(&dir);
    let api = Api {
        client: reqwest::Client::new(),
        base: url,
        token,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for h in ["drift-01", "drift-02"] {
        let f = rt.block_on(eventually(
            &format!("a file:etc/websvc.conf finding on {h}"),
            Duration::from_secs(20),
            || async { api.drift(h).await.and_then(|d| file_finding(&d).cloned()) },
        ));
        assert_eq!(f.category, bellwether_model::DriftCategory::Configuration);
        assert_eq!(f.weight.get(), 0.30);
        assert!(f
            .baseline
            .as_deref()
            .unwrap()
            .starts_with("31 bytes, sha256 "));
        assert_ne!(f.baseline, f.current);
    }
    let healthy = rt
        .block_on(api.drift("web-01"))
        .expect("web-01 has a drift score");
    assert!(file_finding(&healthy).is_none(), "{healthy:?}");

    // The model learns that drifted configurations fail: the drifted hosts are high risk.
    let history = tmp.path().join("history.csv");
    std::fs::write(&history, drift_history()).unwrap();
    ok(
        "model import",
        &bellwether(
            &dir,
            &["model", "import", "--history", history.to_str().unwrap()],
        ),
    );
    ok("model train", &bellwether(&dir, &["model", "train"]));

    // The example plan, with high-risk hosts remediated and then updated last, in one wave,
    // and without the drift-rise limit: with baselines captured, a loopback dependency probe
    // that takes a few milliseconds on a loaded 2-core machine (0.1 ms in the baseline) scores
    // 0.6 of dependency drift, which would roll a healthy host back; that noise is not what
    // this test is about.
    let example = include_str!("../../../examples/plans/web-v2.yaml");
    for needle in [
        "high_risk: defer",
        "waves: { fixed: [25, 50, 100] }",
        "  drift_rise_limit: 0.3\n",
        "attribute: \"file:etc/websvc.conf\" }, action: { builtin: restore_file, path: etc/websvc.conf }",
    ] {
        assert!(example.contains(needle), "the example plan changed: {needle}");
    }
    let plan = tmp.path().join("plan.yaml");
    std::fs::write(
        &plan,
        example
            .replace("high_risk: defer", "high_risk: remediate_then_defer")
            .replace("waves: { fixed: [25, 50, 100] }", "waves: { fixed: [100] }")
            .replace("  drift_rise_limit: 0.3\n", ""),
    )
    .unwrap();
    let start = bellwether(
        &dir,
        &["rollout", "start", plan.to_str().unwrap(), "--wait"],
    );
    let out = String::from_utf8_lossy(&start.stdout).to_string();
    let id = out
        .split_whitespace()
        .find(|w| w.starts_with("r-"))
        .map(|w| w.trim_end_matches('.').to_string())
        .unwrap_or_else(|| panic!("no rollout id in:\n{out}"));
    let report = bellwether(&dir, &["rollout", "report", &id, "--output", "json"]);
    ok("rollout report", &report);
    let r: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    assert_eq!(
        r["state"],
        "completed",
        "paused for: {}\n{r}",
        r["pause_reason"]
    );
    let read =
        |h: &str, f: &str| std::fs::read_to_string(dir.join("hosts").join(h).join(f)).unwrap();
    for h in r["hosts"].as_array().unwrap() {
        let name = h["host"].as_str().unwrap();
        let journal: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("agent-state").join(name).join("actions.json"))
                .unwrap(),
        )
        .unwrap();
        let ran = |what: &str| {
            journal
                .as_object()
                .unwrap()
                .values()
                .filter(|e| e["describe"] == what)
                .count()
        };
        assert_eq!(ran("set_service_version 2"), 1, "{name}: {journal}");
        assert_eq!(
            ran("set_service_version 1"),
            0,
            "{name} was not rolled back: {h}\n{journal}"
        );
        assert_eq!(read(name, "etc/websvc/version"), "2\n", "{name}");
        assert_eq!(read(name, "etc/websvc.conf"), GOOD_CONFIG, "{name}");
        if name.starts_with("drift-") {
            assert_eq!(h["band"], "high", "the learnt risk of a drifted host: {h}");
            assert_ne!(h["wave"], 0, "never in the pilot: {h}");
            assert_eq!(h["action"], "remediated", "{h}");
            assert_eq!(h["state"], "updated", "{name} ends on version 2: {h}");
            assert_eq!(ran("restore_file etc/websvc.conf"), 1, "{name}: {journal}");
        } else {
            assert_eq!(h["band"], "low", "{h}");
            assert_eq!(h["action"], "updated", "{h}");
            assert_eq!(ran("restore_file etc/websvc.conf"), 0, "{name}: {journal}");
        }
    }
    // The event log says why: each drifted host was remediated by rule 0 for its finding,
    // before its update; no host failed.
    let events = r["events"].as_array().unwrap();
    let pos = |host: &str, kind: &str| -> Vec<usize> {
        events
            .iter()
            .enumerate()
            .filter(|(_, e)| e["host"] == host && e["kind"] == kind)
            .map(|(i, _)| i)
            .collect()
    };
    for h in ["drift-01", "drift-02"] {
        let remediating = pos(h, "host.remediating");
        assert_eq!(remediating.len(), 1, "{h}: {events:?}");
        let e = &events[remediating[0]];
        let fig = &e["figures"];
        assert_eq!(fig["rule"], 0, "{e}");
        assert_eq!(fig["finding"], "file:etc/websvc.conf", "{e}");
        assert_eq!(fig["action"], "restore_file etc/websvc.conf", "{e}");
        assert!(fig["probability"].as_f64().unwrap() >= 0.5, "{e}");
        let remediated = pos(h, "host.remediated");
        let applied = pos(h, "host.applied");
        assert_eq!((remediated.len(), applied.len()), (1, 1), "{h}: {events:?}");
        assert!(
            remediating[0] < remediated[0] && remediated[0] < applied[0],
            "{events:?}"
        );
    }
    assert!(
        !events
            .iter()
            .any(|e| e["kind"] == "host.failed" || e["kind"] == "host.rolling_back"),
        "{events:?}"
    );
    // The agents report the restored file: the finding is gone from the server's drift.
    for h in ["drift-01", "drift-02"] {
        rt.block_on(eventually(
            &format!("the file finding of {h} to clear"),
            Duration::from_secs(10),
            || async { api.drift(h).await.filter(|d| file_finding(d).is_none()) },
        ));
    }
}
