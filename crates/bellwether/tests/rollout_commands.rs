//! Operator commands and the end of a rollout, through the real CLI, server and agents (with
//! `--state-dir`, so they run the actions on synthetic host roots): `pause`, `resume`,
//! `promote` and `abort` at the pilot, in the waves and while paused, clear refusals once a
//! rollout is completed or aborted, an abort that settles only when its reverts have reported,
//! a server restarted on a fresh store whose new actions an agent's journal must never answer
//! from an old entry, and a rollout whose store fills up (a real tmpfs as the SQLite data
//! dir): held and paused with an alert, nothing lost or repeated, completed once space is
//! freed and the operator resumes. Every wait polls the server with a deadline.

mod support;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bellwether_drift::synth::{write_host_root, HostSpec};
use serde_json::Value;
use support::*;

const OP: &str = "operator-token-rollout-commands";
const ENROL: &str = "enrol-token-rollout-commands";

/// Version `VERSION` of websvc, a one-host pilot, short bakes; the synthetic roots' memory
/// figure is steady, so every host is healthy and only the operator changes the course.
const PLAN: &str = r#"name: web-vVERSION
update:
  name: websvc
  version: "VERSION"
  apply:  { builtin: set_service_version, version: "VERSION" }
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
no_data: { after: 20s }
"#;

/// Fields drop in order: the processes stop, then the tmpfs is unmounted, then the
/// directory goes.
pub struct Fleet {
    pub server: Server,
    pub agents: Vec<Guard>,
    pub names: Vec<String>,
    pub mount: Option<Tmpfs>,
    pub tmp: tempfile::TempDir,
}

/// A tmpfs mounted for the test, unmounted when dropped.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (such as `16m`) at `path`, or fails the test saying why.
    pub fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .unwrap_or_else(|e| {
                panic!("could not run `mount` (util-linux) for the full-disk test: {e}")
            });
        assert!(
            out.status.success(),
            "could not mount a {size} tmpfs at {}: {}; this test needs root (or CAP_SYS_ADMIN) to give the server a real full disk",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Tmpfs(path.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy, so a process still holding a file cannot leave the mount behind.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

impl Fleet {
    /// A server (SQLite in `TMP/server`, which may already be a mount point) with a trained
    /// model, and `n` agents that run actions.
    pub fn start_in(tmp: tempfile::TempDir, n: usize) -> Fleet {
        Fleet::start_with(tmp, None, n)
    }

    pub fn start_with(tmp: tempfile::TempDir, mount: Option<Tmpfs>, n: usize) -> Fleet {
        let dir = tmp.path().to_path_buf();
        let server = Server::start(&dir, &Backend::Sqlite, "127.0.0.1:0", OP, ENROL);
        train_model(&dir, &server.url);
        let names: Vec<String> = (0..n).map(|i| format!("web-{i:02}")).collect();
        let agents = names
            .iter()
            .enumerate()
            .map(|(i, name)| start_actions_agent(&dir, &server, name, i as u64))
            .collect();
        let fleet = Fleet {
            server,
            agents,
            names,
            mount,
            tmp,
        };
        fleet.wait_enrolled();
        fleet
    }

    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut all = vec!["rollout", "--server", &self.server.url, "--token", OP];
        all.extend_from_slice(args);
        run(&all)
    }

    fn wait_enrolled(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let o = run(&[
                "hosts",
                "--server",
                &self.server.url,
                "--token",
                OP,
                "--output",
                "json",
            ]);
            let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
            // Every host enrolled and has sent a profile and samples.
            let ready = v.as_array().is_some_and(|a| {
                a.len() == self.names.len() && a.iter().all(|h| !h["last_seen_ms"].is_null())
            });
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "hosts did not enrol: {}",
                text(&o)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts a rollout of websvc `version` with bake `bake`; returns its id.
    pub fn start(&self, version: &str, bake: &str) -> String {
        let plan = self.dir().join(format!("plan-{version}-{bake}.yaml"));
        std::fs::write(
            &plan,
            PLAN.replace("VERSION", version).replace("BAKE", bake),
        )
        .unwrap();
        let o = self.cli(&["start", plan.to_str().unwrap()]);
        assert!(o.status.success(), "{}", text(&o));
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        let id = out.split_whitespace().nth(2).unwrap().to_string();
        assert!(id.starts_with("r-"), "{out}");
        id
    }

    pub fn status(&self, id: &str) -> Value {
        let o = self.cli(&["status", id, "--output", "json"]);
        assert!(o.status.success(), "{}", text(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    }

    pub fn report(&self, id: &str) -> Value {
        let o = self.cli(&["report", id, "--output", "json"]);
        assert!(o.status.success(), "{}", text(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    }

    /// Polls the status until `ok` holds, failing with the last status after `secs`.
    pub fn wait_status(
        &self,
        id: &str,
        what: &str,
        secs: u64,
        ok: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let v = self.status(id);
            if ok(&v) {
                return v;
            }
            assert!(Instant::now() < deadline, "waiting for {what}: {v}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Polls the report until it is finished (`finished_ms` set).
    pub fn wait_finished(&self, id: &str, secs: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let r = self.report(id);
            if !r["finished_ms"].is_null() {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "rollout {id} never finished: {r}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `rollout VERB ID`, which must succeed and leave the rollout in `phase`.
    pub fn command_ok(&self, verb: &str, id: &str, phase: &str) {
        let o = self.cli(&[verb, id]);
        assert!(o.status.success(), "{verb}: {}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stdout)
                .contains(&format!("{verb} accepted; it is now {phase}.")),
            "{verb}: {}",
            text(&o)
        );
    }

    /// Every command on a rollout in the final `phase` is refused, naming the phase.
    pub fn commands_refused(&self, id: &str, phase: &str) {
        for verb in ["pause", "resume", "abort", "promote"] {
            let o = self.cli(&[verb, id]);
            assert_eq!(
                o.status.code(),
                Some(1),
                "{verb} on a {phase} rollout: {}",
                text(&o)
            );
            assert!(
                text(&o).contains(&format!(
                    "rollout {id} is {phase}; {verb} applies to running or paused rollouts"
                )),
                "{verb}: {}",
                text(&o)
            );
        }
    }

    pub fn version(&self, host: &str) -> String {
        std::fs::read_to_string(root_of(self.dir(), host).join("etc/websvc/version"))
            .unwrap_or_else(|e| format!("<{e}>"))
    }

    /// The journal entries of `host` whose action is `describe`.
    pub fn journal_count(&self, host: &str, describe: &str) -> usize {
        let j = std::fs::read_to_string(state_of(self.dir(), host).join("actions.json")).unwrap();
        let j: Value = serde_json::from_str(&j).unwrap();
        j["entries"]
            .as_object()
            .unwrap()
            .values()
            .filter(|e| e["describe"] == describe)
            .count()
    }
}

fn root_of(dir: &Path, host: &str) -> PathBuf {
    dir.join("hosts").join(host)
}

fn state_of(dir: &Path, host: &str) -> PathBuf {
    dir.join("agent-state").join(host)
}

/// An agent with `--state-dir` on a fresh synthetic root of websvc version 1.
fn start_actions_agent(dir: &Path, server: &Server, name: &str, seed: u64) -> Guard {
    let root = root_of(dir, name);
    if !root.exists() {
        write_host_root(&root, &HostSpec::generate(500 + seed, name, 40)).unwrap();
        std::fs::create_dir_all(root.join("etc/websvc")).unwrap();
        std::fs::write(root.join("etc/websvc/version"), "1\n").unwrap();
    }
    let state = state_of(dir, name);
    start_agent(
        dir,
        server,
        name,
        &root,
        "200ms",
        &["--state-dir", state.to_str().unwrap()],
    )
}

/// Imports a history in which a low disk fails and trains the model a rollout needs.
pub fn train_model(dir: &Path, url: &str) {
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

fn events_of<'a>(report: &'a Value, kind: &str) -> Vec<&'a Value> {
    report["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == kind)
        .collect()
}

fn host_states(status: &Value) -> Vec<String> {
    status["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["state"].as_str().unwrap().to_string())
        .collect()
}

/// Asserts an aborted rollout settled: every host it updated was reverted on disk and in the
/// report, `rollout.finished` came once, `finished_ms` is set and no reason still claims the
/// update.
fn assert_abort_settled(fleet: &Fleet, id: &str) -> Value {
    let r = fleet.wait_finished(id, 60);
    assert_eq!(r["state"], "aborted", "{r}");
    assert_eq!(events_of(&r, "rollout.finished").len(), 1, "{r}");
    for h in r["hosts"].as_array().unwrap() {
        let name = h["host"].as_str().unwrap();
        match h["state"].as_str().unwrap() {
            "rolled_back" => {
                assert_eq!(fleet.version(name), "1\n", "the revert ran on {name}");
                assert_eq!(h["action"], "rolled_back");
                let reason = h["reason"].as_str().unwrap();
                // Reverted by the abort, or by the operator's own roll back before it.
                assert!(
                    reason.starts_with("Rolled back")
                        && (reason.contains("aborted") || reason.contains("by the operator")),
                    "{h}"
                );
            }
            "skipped" => {
                assert_eq!(fleet.version(name), "1\n", "{name} was never updated");
                assert_eq!(h["action"], "skipped");
            }
            other => panic!("{name} left {other} after the abort: {r}"),
        }
        assert!(!h["finished_ms"].is_null(), "{h}");
    }
    r
}

#[test]
fn every_command_at_every_phase_and_an_abort_that_settles() {
    let fleet = Fleet::start_in(tempfile::tempdir().unwrap(), 3);

    // Rollout 1: pause, resume, promote at the pilot and in the waves, then abort in a wave.
    let id = fleet.start("2", "60s");
    fleet.wait_status(&id, "the pilot baking", 30, |v| {
        host_states(v).contains(&"baking".into())
    });
    fleet.command_ok("pause", &id, "paused");
    // Paused: the hosts still waiting for their wave are `waiting`, not `skipped`.
    let r = fleet.report(&id);
    assert_eq!(r["state"], "paused");
    assert_eq!(r["counts"]["waiting"], 2, "{r}");
    assert!(r["counts"].get("skipped").is_none(), "{r}");
    let waiting: Vec<&Value> = r["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["action"] == "waiting")
        .collect();
    assert_eq!(waiting.len(), 2, "{r}");
    let o = fleet.cli(&["report", &id]);
    assert!(text(&o).contains(" waiting "), "{}", text(&o));
    // A second pause is accepted and changes nothing.
    fleet.command_ok("pause", &id, "paused");
    fleet.command_ok("resume", &id, "running");
    // Resume on a running rollout: accepted, still running.
    fleet.command_ok("resume", &id, "running");
    // Promote at the pilot ends its 60 s bake at once: wave 1 starts.
    fleet.command_ok("promote", &id, "running");
    let baking = |v: &Value| host_states(v).iter().filter(|s| *s == "baking").count();
    let v = fleet.wait_status(&id, "wave 1 baking", 30, |v| {
        v["wave"] == 1 && baking(v) == 1
    });
    assert_eq!(v["state"], "running");
    // In the waves: pause, then promote from paused (it resumes and ends the bake).
    fleet.command_ok("pause", &id, "paused");
    fleet.command_ok("promote", &id, "running");
    let v = fleet.wait_status(&id, "wave 2 baking", 30, |v| {
        v["wave"] == 2 && baking(v) == 1
    });
    assert_eq!(
        host_states(&v).iter().filter(|s| *s == "updated").count(),
        2,
        "the promoted waves' hosts are updated: {v}"
    );
    fleet.command_ok("abort", &id, "aborted");
    let r = assert_abort_settled(&fleet, &id);
    assert_eq!(r["counts"]["rolled_back"], 3, "{r}");
    for h in &fleet.names {
        assert_eq!(
            fleet.journal_count(h, "set_service_version 2"),
            1,
            "{h} applied once"
        );
        assert_eq!(
            fleet.journal_count(h, "set_service_version 1"),
            1,
            "{h} reverted once"
        );
    }
    fleet.commands_refused(&id, "aborted");

    // Rollout 2: the operator rolls the pilot back by hand while paused, then aborts; the
    // waiting hosts are skipped.
    let id = fleet.start("2", "60s");
    let v = fleet.wait_status(&id, "the pilot baking", 30, |v| {
        host_states(v).contains(&"baking".into())
    });
    fleet.command_ok("pause", &id, "paused");
    let in_state = |v: &Value, state: &str| -> Option<String> {
        v["hosts"]
            .as_array()?
            .iter()
            .find(|h| h["state"] == state)
            .map(|h| h["host"].as_str().unwrap().to_string())
    };
    let pilot = in_state(&v, "baking").unwrap();
    let waiting = in_state(&fleet.status(&id), "waiting").unwrap();
    let o = fleet.cli(&["rollback", &id, &waiting]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("only an updated or baking host can be rolled back"),
        "{}",
        text(&o)
    );
    let o = fleet.cli(&["rollback", &id, "not a host"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = fleet.cli(&["rollback", &id, &pilot]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("rolling back {pilot}")),
        "{}",
        text(&o)
    );
    fleet.wait_status(&id, "the pilot rolled back by hand", 30, |v| {
        in_state(v, "rolled_back").as_deref() == Some(pilot.as_str())
    });
    assert_eq!(fleet.version(&pilot), "1\n", "the revert ran on {pilot}");
    fleet.command_ok("abort", &id, "aborted");
    let r = assert_abort_settled(&fleet, &id);
    assert_eq!(r["counts"]["rolled_back"], 1, "{r}");
    assert_eq!(r["counts"]["skipped"], 2, "{r}");
    fleet.commands_refused(&id, "aborted");

    // Rollout 3: abort at once, while the pilot's apply may still be in flight.
    let id = fleet.start("2", "60s");
    fleet.command_ok("abort", &id, "aborted");
    assert_abort_settled(&fleet, &id);

    // Rollout 4: runs to completion with `--wait`; then every command is refused.
    let plan = fleet.dir().join("plan-complete.yaml");
    std::fs::write(&plan, PLAN.replace("VERSION", "2").replace("BAKE", "1s")).unwrap();
    let o = fleet.cli(&["start", plan.to_str().unwrap(), "--wait"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let id = out.split_whitespace().nth(2).unwrap().to_string();
    let r = fleet.wait_finished(&id, 30);
    assert_eq!(r["state"], "completed", "{r}");
    assert_eq!(r["counts"]["updated"], 3, "{r}");
    for h in &fleet.names {
        assert_eq!(fleet.version(h), "2\n");
    }
    fleet.commands_refused(&id, "completed");
    let o = fleet.cli(&["frobnicate", &id]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

#[test]
fn a_server_on_a_fresh_store_never_gets_a_new_action_answered_from_an_old_journal() {
    let tmp = tempfile::tempdir().unwrap();
    let mut fleet = Fleet::start_in(tmp, 2);
    let id = fleet.start("2", "1s");
    let r = fleet.wait_finished(&id, 60);
    assert_eq!(r["state"], "completed", "{r}");
    for h in &fleet.names {
        assert_eq!(fleet.version(h), "2\n");
    }
    // The server restarts on a fresh store with the same tokens and the same address: its
    // action row ids start again at 1, and the agents (not restarted) re-enrol.
    let addr = fleet.server.addr.clone();
    fleet.server.guard.kill();
    std::fs::rename(fleet.dir().join("server"), fleet.dir().join("server-old")).unwrap();
    fleet.server = Server::start(fleet.dir(), &Backend::Sqlite, &addr, OP, ENROL);
    train_model(fleet.dir(), &fleet.server.url);
    fleet.wait_enrolled();
    let id = fleet.start("3", "1s");
    let r = fleet.wait_finished(&id, 60);
    assert_eq!(r["state"], "completed", "{r}");
    for h in r["hosts"].as_array().unwrap() {
        let name = h["host"].as_str().unwrap();
        // The report is true about the disk: the agent ran version 3's apply.
        assert_eq!(h["action"], "updated", "{h}");
        assert_eq!(fleet.version(name), "3\n", "{name}: {r}");
        assert_eq!(fleet.journal_count(name, "set_service_version 3"), 1);
        assert_eq!(fleet.journal_count(name, "set_service_version 2"), 1);
    }
}

/// Writes `path` until the file system is full; returns the bytes written.
fn fill(path: &Path) -> u64 {
    use std::io::Write as _;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0x5a_u8; 64 * 1024];
    let mut n = 0;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(k) => n += k as u64,
            Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    let _ = f.sync_all();
    n
}

#[test]
fn a_full_disk_holds_the_rollout_with_an_alert_and_it_completes_after_space_is_freed() {
    let tmp = tempfile::tempdir().unwrap();
    let mount = Tmpfs::mount(&tmp.path().join("server"), "24m");
    let fleet = Fleet::start_with(tmp, Some(mount), 3);
    let id = fleet.start("2", "3s");
    fleet.wait_status(&id, "the pilot baking", 30, |v| {
        host_states(v).contains(&"baking".into())
    });
    // The agents pause (SIGSTOP) while the disk is full, so the rollout's own step is the
    // write that meets it (the sample path's answer to a full disk is tested with the API).
    for a in &fleet.agents {
        signal(a.pid(), "STOP");
    }
    // The disk fills up: the next step's save fails (every tick saves one).
    let filler = fleet.dir().join("server").join("filler");
    let filled = fill(&filler);
    assert!(filled > 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !fleet.server.guard.log_text().contains("Task held") {
        assert!(
            Instant::now() < deadline,
            "no step failed on the full disk; server log:\n{}",
            fleet.server.guard.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Held: an operator's command is answered with the reason, not taken.
    let o = fleet.cli(&["pause", &id]);
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("is held: the store could not save its step"),
        "{}",
        text(&o)
    );
    // Space comes back: the hold is stored, the rollout paused with a critical alert.
    std::fs::remove_file(&filler).unwrap();
    for a in &fleet.agents {
        signal(a.pid(), "CONT");
    }
    let v = fleet.wait_status(&id, "the held rollout paused", 60, |v| {
        v["state"] == "paused"
    });
    let reason = v["pause_reason"].as_str().unwrap();
    assert!(
        reason.starts_with("the store could not save a step ("),
        "{v}"
    );
    let api = fleet.server.api();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (status, events) = rt.block_on(api.get("/api/v1/events?limit=1000"));
    assert_eq!(status, 200, "{events}");
    let alerts: Vec<&Value> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "rollout.alert" && e["figures"]["severity"] == "critical")
        .collect();
    assert_eq!(
        alerts.len(),
        1,
        "one critical alert: {events}\nserver log:\n{}",
        tail(&fleet.server.guard.log_text())
    );
    assert!(
        alerts[0]["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("Rollout {id} held")),
        "{events}"
    );
    let r = fleet.report(&id);
    assert_eq!(events_of(&r, "rollout.held").len(), 1, "{r}");
    // The operator resumes; the rollout completes.
    fleet.command_ok("resume", &id, "running");
    let r = fleet.wait_finished(&id, 60);
    assert_eq!(r["state"], "completed", "{r}");
    // Nothing lost: every host updated on disk and in the report. Nothing repeated: one apply
    // per host in the engine's log and in each agent's journal.
    for h in &fleet.names {
        assert_eq!(fleet.version(h), "2\n", "{h}");
        assert_eq!(
            fleet.journal_count(h, "set_service_version 2"),
            1,
            "{h} applied once"
        );
        let applied = events_of(&r, "host.applied")
            .iter()
            .filter(|e| e["host"] == h.as_str())
            .count();
        assert_eq!(applied, 1, "{h}: {r}");
    }
    assert_eq!(r["counts"]["updated"], 3, "{r}");
    let mut waves: Vec<i64> = events_of(&r, "wave.passed")
        .iter()
        .map(|e| e["figures"]["wave"].as_i64().unwrap())
        .collect();
    let n = waves.len();
    waves.dedup();
    assert_eq!(waves.len(), n, "a wave passed twice: {r}");
}

/// The end of a log, for failure messages.
fn tail(log: &str) -> &str {
    let mut from = log.len().saturating_sub(6000);
    while !log.is_char_boundary(from) {
        from += 1;
    }
    &log[from..]
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid}");
}
