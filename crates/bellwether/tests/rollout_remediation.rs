//! Remediation of a drifted file, end to end with real processes: a sandbox whose agents
//! protect (snapshot and watch) the web service's `etc/websvc.conf`, baselines captured, then
//! two hosts' configuration drifted to `workers = 0`, which version 1 ignores and version 2
//! cannot serve with. The rollout of version 2 finds them failing, runs the plan's rule for
//! the `file:etc/websvc.conf` drift finding (`restore_file`), and they recover and stay on
//! version 2: `remediated` in the report, the known-good file back on disk.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::*;

/// What `sandbox up` writes to every root's `etc/websvc.conf` (the agents' snapshot).
const GOOD_CONFIG: &str = "workers = 4\nlisten = 127.0.0.1\n";

/// Six hosts alike, so the model gives them the same risk; two will drift after their
/// baselines. The version-9 rule only gives the generated history some failures to learn.
const SCENARIO: &str = r#"
seed: 3
groups:
  - { name: web, count: 4, role: web, packages: { libssl3: "3.0.11-1" }, disk_free_pct: 45 }
  - { name: drift, count: 2, role: web, packages: { libssl3: "3.0.11-1" }, disk_free_pct: 45 }
faults:
  - { when: { version: "9" }, effect: { error_rate: 0.5 } }
history: { deployments: 100, seed: 1 }
"#;

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

#[test]
fn a_drifted_config_is_restored_by_its_remediation_rule_and_the_hosts_recover() {
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

    // The example plan, every host in the pilot so the drifted ones are updated. Two of six
    // fail before their remediation; the example pauses at 30 % of a wave failing, which
    // would stop the story there, so this variant pauses at 50 %.
    let example = include_str!("../../../examples/plans/web-v2.yaml");
    for needle in [
        "pilot: { min: 2, max: 4 }",
        "bake: 10s",
        "pause_when: { hosts: 3, wave_pct: 30 }",
        "attribute: \"file:etc/websvc.conf\" }, action: { builtin: restore_file, path: etc/websvc.conf }",
    ] {
        assert!(example.contains(needle), "the example plan changed: {needle}");
    }
    assert!(!example.contains("remediate_first: false"));
    let plan = tmp.path().join("plan.yaml");
    std::fs::write(
        &plan,
        example
            .replace("pilot: { min: 2, max: 4 }", "pilot: { min: 6, max: 6 }")
            .replace("bake: 10s", "bake: 15s")
            .replace(
                "pause_when: { hosts: 3, wave_pct: 30 }",
                "pause_when: { hosts: 3, wave_pct: 50 }",
            ),
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
    assert_eq!(r["state"], "completed", "{r}");
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
            "{name} was not rolled back: {journal}"
        );
        assert_eq!(read(name, "etc/websvc/version"), "2\n", "{name}");
        assert_eq!(read(name, "etc/websvc.conf"), GOOD_CONFIG, "{name}");
        if name.starts_with("drift-") {
            assert_eq!(h["action"], "remediated", "{h}");
            assert_eq!(h["state"], "updated", "{name} stays on version 2: {h}");
            assert_eq!(ran("restore_file etc/websvc.conf"), 1, "{name}: {journal}");
        } else {
            assert_eq!(h["action"], "updated", "{h}");
            assert_eq!(ran("restore_file etc/websvc.conf"), 0, "{name}: {journal}");
        }
    }
    // The event log tells why: each drifted host failed on its error ratio, the rule for its
    // finding ran, it was remediated and baked again; nothing was rolled back.
    let events = r["events"].as_array().unwrap();
    let of = |host: &str, kind: &str| -> Vec<&serde_json::Value> {
        events
            .iter()
            .filter(|e| e["host"] == host && e["kind"] == kind)
            .collect()
    };
    for h in ["drift-01", "drift-02"] {
        let failed = of(h, "host.failed");
        assert_eq!(failed.len(), 1, "{h}: {events:?}");
        assert!(
            failed[0]["reason"]
                .as_str()
                .unwrap()
                .contains("svc_error_ratio"),
            "{}",
            failed[0]
        );
        let remediating = of(h, "host.remediating");
        assert_eq!(remediating.len(), 1, "{h}: {events:?}");
        let fig = &remediating[0]["figures"];
        assert_eq!(fig["rule"], 0, "{fig}");
        assert_eq!(fig["finding"], "file:etc/websvc.conf", "{fig}");
        assert_eq!(fig["action"], "restore_file etc/websvc.conf", "{fig}");
        assert_eq!(of(h, "host.remediated").len(), 1, "{h}: {events:?}");
        let pos = |e: &serde_json::Value| events.iter().position(|x| x == e).unwrap();
        assert!(pos(failed[0]) < pos(remediating[0]));
        assert!(pos(remediating[0]) < pos(of(h, "host.remediated")[0]));
    }
    assert!(
        !events.iter().any(|e| e["kind"] == "host.rolling_back"
            || e["kind"] == "host.failed"
                && !e["host"].as_str().unwrap_or("").starts_with("drift-")),
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
