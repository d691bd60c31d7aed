//! Several `bellwether server` replicas on one PostgreSQL store, with real processes: real
//! agents (with `--state-dir`, running the actions on synthetic host roots) talk to a
//! follower, which forwards their writes and long-polls to the leader; the operator's CLI
//! talks to another follower.
//!
//! - The leader is killed with SIGKILL while the rollout's pilot bakes: a follower takes the
//!   lease within the lease's ttl and a retry (goal: ≤ 5 s with the defaults), resumes the
//!   rollout from the store, and it completes with every host applied exactly once (the agents'
//!   journals and the actions table agree).
//! - The leader is paused with SIGSTOP past its lease: another replica leads under a larger
//!   epoch; when the old one runs again, it says at once that it follows, its runner stops
//!   without pausing or alerting, and nothing is dispatched twice.

mod support;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bellwether_drift::synth::{write_host_root, HostSpec};
use serde_json::Value;
use support::cluster::Cluster;
use support::*;

const OP: &str = "operator-token-ha-replicas";
const ENROL: &str = "enrol-token-ha-replicas";

/// websvc version 2, a one-host pilot baking BAKE, then two waves; steady synthetic hosts, so
/// every host is healthy.
const PLAN: &str = r#"name: web-v2
update:
  name: websvc
  version: "2"
  apply:  { builtin: set_service_version, version: "2" }
  revert: { builtin: set_service_version, version: "1" }
targets:
  labels: { role: web }
risk:
  low: 0.9
  high: 0.99
  moderate_share: 0.0
  pilot: { min: 1, max: 1 }
  high_risk: include_last
waves: { fixed: [50, 100] }
bake: BAKE
analysis:
  interval: 200ms
  baseline: 1s
  metrics:
    - { name: memory_available_ratio, threshold_pct: 50, for: 2s, floor: 0.05 }
  judge: { enabled: false }
no_data: { after: 30s }
"#;

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A cluster of replicas, agents pointed at one replica, and the test's directory.
struct Fleet {
    agents: Vec<Guard>,
    names: Vec<String>,
    cluster: Cluster,
    tmp: tempfile::TempDir,
}

impl Fleet {
    /// `replicas` servers (replica 0 leads), a trained model, and `hosts` agents that talk to
    /// replica `agents_at`.
    fn start(test: &str, replicas: usize, hosts: usize, agents_at: usize) -> Fleet {
        let tmp = tempfile::tempdir().unwrap();
        let cluster = Cluster::start(tmp.path(), test, replicas, OP, ENROL, &[]);
        let names: Vec<String> = (0..hosts).map(|i| format!("web-{i:02}")).collect();
        let mut fleet = Fleet {
            agents: Vec::new(),
            names,
            cluster,
            tmp,
        };
        // Through a follower: the import and the training are forwarded to the leader.
        train_model(fleet.dir(), &fleet.cluster.replicas[1].url);
        for (i, name) in fleet.names.clone().iter().enumerate() {
            let agent = start_actions_agent(
                fleet.dir(),
                &fleet.cluster.replicas[agents_at].url,
                name,
                i as u64,
            );
            fleet.agents.push(agent);
        }
        fleet.wait_enrolled(agents_at);
        fleet
    }

    fn dir(&self) -> &Path {
        self.tmp.path()
    }

    fn cli(&self, at: usize, args: &[&str]) -> std::process::Output {
        let url = &self.cluster.replicas[at].url;
        let mut all = vec!["rollout", "--server", url, "--token", OP];
        all.extend_from_slice(args);
        run(&all)
    }

    fn wait_enrolled(&self, at: usize) {
        let url = &self.cluster.replicas[at].url;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let o = run(&["hosts", "--server", url, "--token", OP, "--output", "json"]);
            let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
            let ready = v.as_array().is_some_and(|a| {
                a.len() == self.names.len() && a.iter().all(|h| !h["last_seen_ms"].is_null())
            });
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "hosts did not enrol: {}\n{}",
                text(&o),
                self.cluster.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts the rollout through replica `at`; returns its id.
    fn start_rollout(&self, at: usize, bake: &str) -> String {
        let plan = self.dir().join("plan.yaml");
        std::fs::write(&plan, PLAN.replace("BAKE", bake)).unwrap();
        let o = self.cli(at, &["start", plan.to_str().unwrap()]);
        assert!(o.status.success(), "{}\n{}", text(&o), self.cluster.logs());
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        let id = out.split_whitespace().nth(2).unwrap().to_string();
        assert!(id.starts_with("r-"), "{out}");
        id
    }

    fn status(&self, at: usize, id: &str) -> Value {
        let o = self.cli(at, &["status", id, "--output", "json"]);
        assert!(o.status.success(), "{}", text(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    }

    /// Polls replica `at` for the rollout's status until `ok` holds.
    fn wait_status(
        &self,
        at: usize,
        id: &str,
        what: &str,
        secs: u64,
        ok: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let v = self.status(at, id);
            if ok(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "waiting for {what}: {v}\n{}",
                self.cluster.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The journal entries of `host` whose action is `describe`.
    fn journal_count(&self, host: &str, describe: &str) -> usize {
        let path = self
            .dir()
            .join("agent-state")
            .join(host)
            .join("actions.json");
        let j =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let j: Value = serde_json::from_str(&j).unwrap();
        j["entries"]
            .as_object()
            .unwrap()
            .values()
            .filter(|e| e["describe"] == describe)
            .count()
    }

    fn version(&self, host: &str) -> String {
        std::fs::read_to_string(root_of(self.dir(), host).join("etc/websvc/version"))
            .unwrap_or_else(|e| format!("<{e}>"))
    }

    /// The rollout completed and every host was applied exactly once: one apply action in the
    /// store, one entry in its agent's journal, version 2 on disk.
    fn assert_each_host_applied_once(&self, id: &str) {
        let actions = {
            let id = id.to_string();
            self.cluster
                .with_store(move |s| Box::pin(async move { s.rollout_actions(&id).await.unwrap() }))
        };
        for name in &self.names {
            let applies: Vec<_> = actions
                .iter()
                .filter(|a| &a.host == name && a.kind == "apply")
                .collect();
            assert_eq!(
                applies.len(),
                1,
                "{name}'s applies in the store: {applies:?}"
            );
            assert!(applies[0].result.is_some(), "{name}'s apply reported");
            assert_eq!(
                self.journal_count(name, "set_service_version 2"),
                1,
                "{name}'s journal"
            );
            assert_eq!(self.version(name), "2\n", "{name} runs version 2");
        }
        assert!(
            actions.iter().all(|a| a.kind == "apply"),
            "nothing was reverted: {actions:?}"
        );
    }
}

fn root_of(dir: &Path, host: &str) -> PathBuf {
    dir.join("hosts").join(host)
}

/// A real agent with `--state-dir` on a fresh synthetic root of websvc version 1, talking to
/// the server at `url`.
fn start_actions_agent(dir: &Path, url: &str, name: &str, seed: u64) -> Guard {
    let root = root_of(dir, name);
    write_host_root(&root, &HostSpec::generate(700 + seed, name, 40)).unwrap();
    std::fs::create_dir_all(root.join("etc/websvc")).unwrap();
    std::fs::write(root.join("etc/websvc/version"), "1\n").unwrap();
    let state = dir.join("agent-state").join(name);
    let args = [
        "--log",
        "info",
        "agent",
        "--server",
        url,
        "--token",
        ENROL,
        "--rootfs",
        root.to_str().unwrap(),
        "--name",
        name,
        "--label",
        "role=web",
        "--interval",
        "200ms",
        "--max-backoff",
        "500ms",
        "--state-dir",
        state.to_str().unwrap(),
    ];
    Guard::spawn(
        &format!("agent {name}"),
        &args,
        &[],
        &dir.join(format!("agent-{name}.log")),
    )
}

/// Imports a history in which a low disk fails and trains the model a rollout needs.
fn train_model(dir: &Path, url: &str) {
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
    let h = dir.join("history.csv");
    std::fs::write(&h, csv).unwrap();
    let o = run(&[
        "model",
        "import",
        "--server",
        url,
        "--token",
        OP,
        "--history",
        h.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = run(&["model", "train", "--server", url, "--token", OP]);
    assert!(o.status.success(), "{}", text(&o));
}

fn host_states(status: &Value) -> Vec<String> {
    status["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["state"].as_str().unwrap().to_string())
        .collect()
}

/// The epochs of the `leader.elected` events, in order, with their holders' URLs.
fn elections(fleet: &Fleet) -> Vec<(i64, String)> {
    let events = fleet
        .cluster
        .with_store(|s| Box::pin(async move { s.events(None, 1000).await.unwrap() }));
    let mut out: Vec<(i64, i64, String)> = events
        .into_iter()
        .filter(|e| e.kind == "leader.elected")
        .map(|e| {
            (
                e.id,
                e.figures["epoch"].as_i64().unwrap(),
                e.figures["url"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    out.sort();
    out.into_iter().map(|(_, e, u)| (e, u)).collect()
}

/// The takeover goal with the default settings (3 s lease, 500 ms retries) is 5 s; the slack
/// is for a loaded 2-core machine.
const TAKEOVER_LIMIT: Duration = Duration::from_millis(6_500);

#[test]
fn a_follower_takes_over_when_the_leader_is_killed_mid_rollout() {
    // Agents and the CLI talk to replica 2; replica 0 leads and is killed.
    let mut fleet = Fleet::start("ha_kill", 3, 4, 2);
    let h = fleet.cluster.health(2).unwrap();
    assert!(!h.leads, "replica 2 follows: {h:?}");
    assert_eq!(
        h.leader.as_deref(),
        Some(fleet.cluster.replicas[0].url.as_str())
    );
    let first_epoch = fleet.cluster.health(0).unwrap().epoch.unwrap();
    // A write to a follower is answered by the leader, through the follower.
    let (status, headers) = fleet
        .cluster
        .post(2, "/api/v1/rollouts/r-nope/pause")
        .expect("the follower answers");
    assert_eq!(status, 404, "the leader's answer: no such rollout");
    assert_eq!(
        headers["x-bellwether-leader"],
        fleet.cluster.replicas[0].url.as_str()
    );

    let id = fleet.start_rollout(2, "3s");
    fleet.wait_status(2, &id, "the pilot baking", 60, |v| {
        host_states(v).contains(&"baking".into())
    });
    fleet.cluster.kill(0);
    // Until the dead leader's lease runs out (at least 2 s: it renewed at most 1 s ago), a
    // follower cannot reach a leader: a write gets 503, Retry-After and the leader it tried.
    let (status, headers) = fleet
        .cluster
        .post(2, "/api/v1/rollouts/r-nope/pause")
        .expect("the follower answers");
    assert_eq!(status, 503, "{headers:?}");
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(
        headers["x-bellwether-leader"],
        fleet.cluster.replicas[0].url.as_str()
    );
    let (new_leader, epoch, took) = fleet.cluster.wait_leader(&[0], Duration::from_secs(30));
    eprintln!(
        "takeover after kill -9 of the leader: {} ms (replica {new_leader}, epoch {first_epoch} -> {epoch})",
        took.as_millis()
    );
    assert!(epoch > first_epoch, "a new term: {epoch} > {first_epoch}");
    assert!(
        took <= TAKEOVER_LIMIT,
        "the takeover took {took:?}; logs:\n{}",
        fleet.cluster.logs()
    );
    // The other survivor follows the new leader.
    let other = if new_leader == 1 { 2 } else { 1 };
    let h = fleet.cluster.health(other).unwrap();
    assert!(!h.leads);

    let done = fleet.wait_status(2, &id, "the rollout to complete", 90, |v| {
        v["state"] != "running"
    });
    assert_eq!(done["state"], "completed", "{done}");
    fleet.assert_each_host_applied_once(&id);
    let log = fleet.cluster.log(new_leader);
    assert!(log.contains("Resuming a task from the store"), "{log}");
    // The event log names each term.
    let terms = elections(&fleet);
    assert_eq!(
        terms.iter().map(|(e, _)| *e).collect::<Vec<_>>(),
        vec![first_epoch, epoch],
        "{terms:?}"
    );
    assert_eq!(terms[1].1, fleet.cluster.replicas[new_leader].url);
    drop(fleet.agents.drain(..));
}

#[test]
fn a_paused_leader_cannot_save_after_its_lease_and_steps_down_when_it_wakes() {
    // Agents talk to replica 2, the CLI to replica 1; replica 0 leads and is paused.
    let mut fleet = Fleet::start("ha_pause", 3, 4, 2);
    let first_epoch = fleet.cluster.health(0).unwrap().epoch.unwrap();
    let id = fleet.start_rollout(1, "3s");
    fleet.wait_status(1, &id, "the pilot baking", 60, |v| {
        host_states(v).contains(&"baking".into())
    });
    fleet.cluster.pause(0);
    let paused_at = Instant::now();
    let (new_leader, epoch, took) = fleet.cluster.wait_leader(&[0], Duration::from_secs(30));
    eprintln!(
        "takeover after SIGSTOP of the leader: {} ms (replica {new_leader}, epoch {first_epoch} -> {epoch})",
        took.as_millis()
    );
    assert!(epoch > first_epoch);
    assert!(took <= TAKEOVER_LIMIT, "{took:?}\n{}", fleet.cluster.logs());
    // The new leader drives on while the old one is frozen: the first wave is dispatched.
    fleet.wait_status(1, &id, "wave 1", 60, |v| v["wave"].as_u64() >= Some(1));
    assert!(
        paused_at.elapsed() > Duration::from_secs(3),
        "past the 3 s lease"
    );

    // Wake the old leader: its first answer already says it follows (its local deadline
    // passed while it was frozen), and it never leads alongside the new one.
    fleet.cluster.resume(0);
    let h = (0..50)
        .find_map(|_| {
            let h = fleet.cluster.health(0);
            if h.is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
            h
        })
        .expect("the resumed replica answers");
    assert!(!h.leads, "the woken replica must not lead: {h:?}");
    let leaders = fleet.cluster.leaders(&[0, 1, 2]);
    assert_eq!(leaders, vec![(new_leader, epoch)], "one leader");
    // Its runner stopped (without a pause or an alert), and it follows the new leader.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = fleet.cluster.log(0);
        let h = fleet.cluster.health(0).unwrap();
        if log.contains("Task runner stopped")
            && h.leader.as_deref() == Some(fleet.cluster.replicas[new_leader].url.as_str())
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replica 0 did not stop driving: {h:?}\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let done = fleet.wait_status(1, &id, "the rollout to complete", 90, |v| {
        v["state"] != "running"
    });
    assert_eq!(done["state"], "completed", "{done}");
    fleet.assert_each_host_applied_once(&id);
    // No pause, hold or alert came from the old leader's stop.
    let report = fleet.cli(1, &["report", &id, "--output", "json"]);
    let report: Value = serde_json::from_slice(&report.stdout).unwrap();
    let kinds: Vec<&str> = report["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(
        !kinds
            .iter()
            .any(|k| k.contains("alert") || k.contains("paused") || k.contains("hold")),
        "{kinds:?}"
    );
    let log0 = fleet.cluster.log(0);
    assert!(!log0.contains("Rollout held"), "{log0}");
    assert!(log0.contains("Lost the leader lease"), "{log0}");
    if std::env::var_os("HA_TEST_LOGS").is_some() {
        eprintln!("{}", fleet.cluster.logs());
    }
    let terms = elections(&fleet);
    assert_eq!(
        terms.iter().map(|(e, _)| *e).collect::<Vec<_>>(),
        vec![first_epoch, epoch],
        "the woken replica took no term of its own: {terms:?}"
    );
    drop(fleet.agents.drain(..));
}

#[test]
fn the_replica_flags_are_checked_before_anything_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let d = data.to_str().unwrap();
    // A SQLite store has one server: no lease to tune.
    let o = run(&["server", "--data-dir", d, "--lease-ttl", "3s"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("PostgreSQL store"), "{}", text(&o));
    let o = run(&[
        "server",
        "--data-dir",
        d,
        "--advertise-url",
        "http://10.0.0.5:7878",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = run(&["server", "--data-dir", d, "--replica-ca-file", "ca.pem"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let db = "postgres://postgres@127.0.0.1:5432/test";
    let o = run(&[
        "server",
        "--data-dir",
        d,
        "--database",
        db,
        "--lease-ttl",
        "10ms",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("--lease-ttl 10ms: must be between 300ms and 1h"),
        "{}",
        text(&o)
    );
    let o = run(&[
        "server",
        "--data-dir",
        d,
        "--database",
        db,
        "--advertise-url",
        "10.0.0.5:7878",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("--advertise-url \"10.0.0.5:7878\""),
        "{}",
        text(&o)
    );
    let o = run(&[
        "server",
        "--data-dir",
        d,
        "--database",
        db,
        "--replica-ca-file",
        "/nonexistent/ca.pem",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("/nonexistent/ca.pem"), "{}", text(&o));
    assert!(!data.join("bellwether.db").exists(), "nothing was opened");
}

#[test]
fn a_follower_forwards_to_an_https_leader_it_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = bellwether_tls::generate::ca_and_server("ha CA", &["127.0.0.1".to_string()])
        .unwrap()
        .write_to(&tmp.path().join("tls"))
        .unwrap();
    let cluster = Cluster::start_tls(
        tmp.path(),
        "ha_tls",
        2,
        OP,
        ENROL,
        &[],
        (&certs.ca_file, &certs.server_cert, &certs.server_key),
    );
    assert!(cluster.replicas[0].url.starts_with("https://"));
    let h = cluster.health(1).unwrap();
    assert!(!h.leads);
    assert_eq!(h.leader.as_deref(), Some(cluster.replicas[0].url.as_str()));
    // The follower forwards the write over TLS, verifying the leader with --replica-ca-file:
    // the leader's own answer (no such rollout) comes back.
    let (status, headers) = cluster
        .post(1, "/api/v1/rollouts/r-nope/pause")
        .expect("the follower answers");
    assert_eq!(status, 404, "{headers:?}\n{}", cluster.logs());
    assert_eq!(
        headers["x-bellwether-leader"],
        cluster.replicas[0].url.as_str()
    );
}
