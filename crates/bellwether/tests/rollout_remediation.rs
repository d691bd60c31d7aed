//! Remediation of a drifted file, end to end with real processes: a sandbox whose agents
//! protect (snapshot and watch) the web service's `etc/websvc.conf`, baselines captured, then
//! two hosts' configuration drifted to `workers = 0`, which version 1 ignores and version 2
//! cannot serve with. The rollout of version 2 restores the known-good file by the example
//! plan's rule for the `file:etc/websvc.conf` drift finding (`restore_file`, the agent's
//! start-time snapshot), in the two ways a plan allows:
//!
//! - `risk.high_risk: remediate_then_defer`: the model has learnt that hosts whose
//!   configuration drifted tend to fail, so the two are high risk, kept out of the pilot,
//!   remediated at the start and updated last, healthy;
//! - `rollback.remediate_first`: the model sees nothing, the two are in the pilot, fail on
//!   version 2, are remediated instead of rolled back, recover and bake again.
//!
//! Either way they end `remediated` on version 2 with the known-good file back on disk, and
//! nothing is rolled back.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use support::*;

/// What `sandbox up` writes to every root's `etc/websvc.conf` (the agents' snapshot).
const GOOD_CONFIG: &str = "workers = 4\nlisten = 127.0.0.1\n";
/// What `sandbox drift --kind file` writes by default.
const DRIFTED_CONFIG: &str = "workers = 0\nlisten = 127.0.0.1\n";
const DRIFTED: [&str; 2] = ["drift-01", "drift-02"];

/// Six hosts alike; two will drift after their baselines. No generated history: a test adds
/// the history it needs.
const SCENARIO: &str = r#"
seed: 3
groups:
  - { name: web, count: 4, role: web, packages: { libssl3: "3.0.11-1" }, disk_free_pct: 45 }
  - { name: drift, count: 2, role: web, packages: { libssl3: "3.0.11-1" }, disk_free_pct: 45 }
"#;

/// The same six hosts with a generated history: the version-9 rule only gives it some
/// failures, so a model exists. It knows nothing of configuration drift (the generated
/// history has no drift columns), so it rates all six alike.
const SCENARIO_BLIND: &str = r#"
seed: 3
groups:
  - { name: web, count: 4, role: web, packages: { libssl3: "3.0.11-1" }, disk_free_pct: 45 }
  - { name: drift, count: 2, role: web, packages: { libssl3: "3.0.11-1" }, disk_free_pct: 45 }
faults:
  - { when: { version: "9" }, effect: { error_rate: 0.5 } }
history: { deployments: 100, seed: 1 }
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
        csv.push_str(&format!("hist-{d},websvc,{version},{drift},{failed}\n"));
    }
    csv
}

/// A whole sandbox per test; the tests of one file run as threads of one process, so they
/// take turns (as in rollout_e2e.rs).
fn file_finding(d: &bellwether_model::DriftScore) -> Option<&bellwether_model::Finding> {
    d.findings
        .iter()
        .find(|f| f.attribute == "file:etc/websvc.conf")
}

/// A running sandbox whose two `drift-*` hosts have a drifted configuration that the server
/// already sees as a drift finding.
struct Drifted {
    tmp: tempfile::TempDir,
    dir: PathBuf,
    api: Api,
    rt: tokio::runtime::Runtime,
}

impl Drifted {
    fn start(scenario: &str) -> Drifted {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("sbx");
        let file = tmp.path().join("scenario.yaml");
        std::fs::write(&file, scenario).unwrap();
        let d = dir.to_str().unwrap();
        let up = run(&[
            "sandbox",
            "up",
            "--scenario",
            file.to_str().unwrap(),
            "--dir",
            d,
        ]);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let api = Api {
            client: reqwest::Client::new(),
            base: String::new(),
            token: String::new(),
        };
        // From here on, dropping `s` (also on a failed assertion) stops the sandbox.
        let mut s = Drifted { tmp, dir, api, rt };
        assert_ok("sandbox up", &up);
        let (base, token) = sandbox_server_env(&s.dir);
        s.api.base = base;
        s.api.token = token;
        s.drift_two();
        s
    }

    /// Baselines, then the drift of the two `drift-*` hosts, until the server sees it.
    fn drift_two(&self) {
        let (dir, api, rt) = (&self.dir, &self.api, &self.rt);
        let d = dir.to_str().unwrap();
        for h in ["web-01", "drift-01"] {
            let conf = std::fs::read_to_string(dir.join("hosts").join(h).join("etc/websvc.conf"));
            assert_eq!(conf.unwrap(), GOOD_CONFIG, "{h}");
        }
        // Baselines from the known-good state, then the drift: by hand, after the agents took
        // their snapshots.
        assert_ok(
            "baseline capture",
            &sandbox_cli(dir, &["baseline", "capture", "--all"]),
        );
        for h in DRIFTED {
            let out = run(&[
                "sandbox", "drift", "--dir", d, "--host", h, "--kind", "file",
            ]);
            assert_ok("sandbox drift --kind file", &out);
            let said = String::from_utf8_lossy(&out.stdout);
            assert!(said.contains("etc/websvc.conf: 31 bytes"), "{said}");
            assert_eq!(
                std::fs::read_to_string(dir.join("hosts").join(h).join("etc/websvc.conf")).unwrap(),
                DRIFTED_CONFIG
            );
        }
        // The agents report the new hash; the server's drift has the finding the rule matches.
        for h in DRIFTED {
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
    }

    /// Starts the example plan with `edits` applied (each `(from, to)` must be in it), waits
    /// for the end and returns the report.
    fn rollout(&self, edits: &[(&str, &str)]) -> serde_json::Value {
        let mut plan = include_str!("../../../examples/plans/web-v2.yaml").to_string();
        assert!(
            plan.contains("attribute: \"file:etc/websvc.conf\" }, action: { builtin: restore_file, path: etc/websvc.conf }"),
            "the example plan's first remediation rule changed"
        );
        for (from, to) in edits {
            assert!(plan.contains(from), "the example plan changed: {from}");
            plan = plan.replace(from, to);
        }
        let path = self.tmp.path().join("plan.yaml");
        std::fs::write(&path, plan).unwrap();
        let (_, r) = rollout_to_report(&self.dir, &path);
        assert_eq!(
            r["state"], "completed",
            "paused for: {}\n{r}",
            r["pause_reason"]
        );
        r
    }

    /// What both stories end with: every host on version 2 with the known-good file, each
    /// version change run once, nothing reverted; the drifted hosts `remediated` by one
    /// `restore_file` each, announced by `host.remediating` (rule 0, its finding, its action)
    /// and `host.remediated`; the finding gone from the server's drift.
    fn check_remediated(&self, r: &serde_json::Value) {
        let read = |h: &str, f: &str| {
            std::fs::read_to_string(self.dir.join("hosts").join(h).join(f)).unwrap()
        };
        for h in r["hosts"].as_array().unwrap() {
            let name = h["host"].as_str().unwrap();
            let journal: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(
                    self.dir.join("agent-state").join(name).join("actions.json"),
                )
                .unwrap(),
            )
            .unwrap();
            let ran = |what: &str| {
                journal["entries"]
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
            if DRIFTED.contains(&name) {
                assert_eq!(h["action"], "remediated", "{h}");
                assert_eq!(h["state"], "updated", "{name} ends on version 2: {h}");
                assert_eq!(ran("restore_file etc/websvc.conf"), 1, "{name}: {journal}");
            } else {
                assert_eq!(h["action"], "updated", "{h}");
                assert_eq!(ran("restore_file etc/websvc.conf"), 0, "{name}: {journal}");
            }
        }
        let events = r["events"].as_array().unwrap();
        for h in DRIFTED {
            let remediating = kinds_at(r, h, "host.remediating");
            assert_eq!(remediating.len(), 1, "{h}: {events:?}");
            let fig = &events[remediating[0]]["figures"];
            assert_eq!(fig["rule"], 0, "{fig}");
            assert_eq!(fig["finding"], "file:etc/websvc.conf", "{fig}");
            assert_eq!(fig["action"], "restore_file etc/websvc.conf", "{fig}");
            let remediated = kinds_at(r, h, "host.remediated");
            assert_eq!(remediated.len(), 1, "{h}: {events:?}");
            assert!(remediating[0] < remediated[0], "{events:?}");
        }
        assert!(
            !events.iter().any(|e| e["kind"] == "host.rolling_back"),
            "{events:?}"
        );
        // The agents report the restored file: the finding leaves the server's drift.
        for h in DRIFTED {
            self.rt.block_on(eventually(
                &format!("the file finding of {h} to clear"),
                Duration::from_secs(10),
                || async {
                    self.api
                        .drift(h)
                        .await
                        .filter(|d| file_finding(d).is_none())
                },
            ));
        }
    }
}

impl Drop for Drifted {
    fn drop(&mut self) {
        drop(Down(&self.dir));
    }
}

/// The positions in the event log of `host`'s events of `kind`.
fn kinds_at(r: &serde_json::Value, host: &str, kind: &str) -> Vec<usize> {
    r["events"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .filter(|(_, e)| e["host"] == host && e["kind"] == kind)
        .map(|(i, _)| i)
        .collect()
}

#[test]
fn predicted_risky_drifted_hosts_are_restored_first_and_updated_last() {
    let _turn = one_sandbox_at_a_time();
    let s = Drifted::start(SCENARIO);
    // The model learns that drifted configurations fail: the drifted hosts are high risk.
    let history = s.tmp.path().join("history.csv");
    std::fs::write(&history, drift_history()).unwrap();
    assert_ok(
        "model import",
        &sandbox_cli(
            &s.dir,
            &["model", "import", "--history", history.to_str().unwrap()],
        ),
    );
    assert_ok("model train", &sandbox_cli(&s.dir, &["model", "train"]));
    // High-risk hosts remediated, then updated last, in one wave after the pilot.
    let r = s.rollout(&[
        ("high_risk: defer", "high_risk: remediate_then_defer"),
        ("waves: { fixed: [25, 50, 100] }", "waves: { fixed: [100] }"),
    ]);
    s.check_remediated(&r);
    for h in r["hosts"].as_array().unwrap() {
        let drifted = DRIFTED.contains(&h["host"].as_str().unwrap());
        assert_eq!(h["band"], if drifted { "high" } else { "low" }, "{h}");
        assert_eq!(h["wave"] == 0, !drifted, "only the others are pilots: {h}");
    }
    // Restored before the update, so they never failed.
    for h in DRIFTED {
        let e = &r["events"][kinds_at(&r, h, "host.remediating")[0]];
        assert!(e["figures"]["probability"].as_f64().unwrap() >= 0.5, "{e}");
        assert!(
            kinds_at(&r, h, "host.remediated")[0] < kinds_at(&r, h, "host.applied")[0],
            "{r}"
        );
    }
    assert!(
        !r["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "host.failed"),
        "{r}"
    );
}

#[test]
fn drifted_hosts_that_fail_the_update_are_remediated_and_recover() {
    let _turn = one_sandbox_at_a_time();
    let s = Drifted::start(SCENARIO_BLIND);
    // The watch judges a host against a baseline of `analysis.baseline` (5 s in the example)
    // of samples from before its update: wait until the server has heard from every host for
    // that long (plus two scrape intervals), rather than have the drifted hosts judged against
    // a baseline still warming up.
    let hosts = [
        "web-01", "web-02", "web-03", "web-04", "drift-01", "drift-02",
    ];
    s.rt.block_on(
        s.api
            .wait_for_history(&hosts, Duration::from_secs(7), Duration::from_secs(60)),
    );
    // The model rates every host alike and low, so all six are pilots; two of them fail
    // before their remediation, and the example pauses at 30 % of a wave failing, which
    // would stop the story there, so this variant pauses at 50 %.
    let r = s.rollout(&[
        ("pilot: { min: 2, max: 4 }", "pilot: { min: 6, max: 6 }"),
        (
            "pause_when: { hosts: 3, wave_pct: 30 }",
            "pause_when: { hosts: 3, wave_pct: 50 }",
        ),
    ]);
    s.check_remediated(&r);
    let events = r["events"].as_array().unwrap();
    for h in DRIFTED {
        // Failed once, on its errors against a clean baseline; then remediated, and it
        // baked healthy afterwards (the rollout completed with it updated).
        let failed = kinds_at(&r, h, "host.failed");
        assert_eq!(failed.len(), 1, "{h} failed once: {events:?}");
        let e = &events[failed[0]];
        let reasons = e["figures"]["reasons"].as_array().unwrap();
        assert!(
            reasons
                .iter()
                .any(|x| x["metric"] == "svc_error_ratio" && x["baseline"].as_f64() == Some(0.0)),
            "{e}"
        );
        assert!(
            failed[0] < kinds_at(&r, h, "host.remediating")[0],
            "{events:?}"
        );
    }
    assert!(
        !events
            .iter()
            .any(|e| e["kind"] == "host.failed"
                && !DRIFTED.contains(&e["host"].as_str().unwrap_or(""))),
        "{events:?}"
    );
}
