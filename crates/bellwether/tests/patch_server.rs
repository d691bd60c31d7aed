//! A patch run by the server, end to end, on real processes: two PostgreSQL clusters (the
//! "patched" one with index scans disabled, a bad configuration patch), a long-running
//! `bellwether proxy` with both as backends, `bellwether server` driving it over the proxy's
//! admin API, an agent on the database host that starts, stops and samples the instances, and
//! pgbench through the proxy. The server is SIGKILLed while the patch bakes and started again:
//! the patch resumes from the store and rolls back in four phases with no failed client
//! transaction, `patch start --wait` follows it across the restart, and every step is in the
//! event log once.
//!
//! The agent is the real `bellwether agent`, allowed only the three process built-ins
//! `start_process`, `stop_process` and `sample_processes`.

mod patch_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use patch_support::pgsupport::{free_port, parse_pgbench};
use patch_support::*;
use serde_json::{json, Value};

fn server_args(data_dir: &Path, port: u16, token_file: &Path) -> Vec<String> {
    vec![
        "--log".into(),
        "info".into(),
        "server".into(),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--proxy-token-file".into(),
        format!("main={}", token_file.display()),
    ]
}

fn wait_listening(port: u16, server: &mut KillOnDrop, log: &Path) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(s) = server.0.try_wait().unwrap() {
            panic!(
                "the server exited ({s}):\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the server did not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Everything a server-driven patch needs, on real processes (dropped in reverse order of
/// creation: agent, server, then the proxy and the clusters).
struct Rig {
    _agent: KillOnDrop,
    server: KillOnDrop,
    pg: PgPair,
    port: u16,
    url: String,
    server_log: PathBuf,
}

impl std::ops::Deref for Rig {
    type Target = PgPair;
    fn deref(&self) -> &PgPair {
        &self.pg
    }
}

impl Rig {
    /// The clusters and the proxy ([`PgPair::start`]), the server and the agent of host `db1`.
    fn start(bad: bool, bake: &str) -> Rig {
        let pg = PgPair::start(bad, bake);
        let d = pg.d().to_path_buf();
        // The server, on a fixed port so the agent and the CLI find it again after a restart.
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let server_log = d.join("server.log");
        let mut server = spawn_logged(
            &server_args(&d.join("server"), port, &pg.token_file),
            &server_log,
        );
        wait_listening(port, &mut server, &server_log);
        let agent = start_agent(&url, &d);
        wait_for("the agent to enrol", Duration::from_secs(30), || {
            pg.http
                .call("GET", &format!("{url}/api/v1/hosts/db1"), OPERATOR, None)
                .0
                == 200
        });
        Rig {
            _agent: agent,
            server,
            pg,
            port,
            url,
            server_log,
        }
    }

    /// `bellwether patch ARGS --server URL --token OPERATOR`.
    fn cli(&self, args: &[&str]) -> Command {
        let mut c = Command::new(EXE);
        c.args(["patch"])
            .args(args)
            .args(["--server", &self.url, "--token", OPERATOR])
            .env_remove("BELLWETHER_TOKEN");
        c
    }

    fn status(&self, id: &str) -> (u16, Value) {
        self.http.call(
            "GET",
            &format!("{}/api/v1/patches/{id}", self.url),
            OPERATOR,
            None,
        )
    }

    fn logs(&self) -> String {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        format!(
            "cli:\n{}\n{}\nserver:\n{}\nproxy:\n{}\nagent:\n{}",
            read(&self.d().join("cli.out")),
            read(&self.d().join("cli.err")),
            read(&self.server_log),
            read(&self.proxy_log),
            read(&self.d().join("agent.log"))
        )
    }

    /// Waits until patch `id`'s report holds an event of `kind`; its status then.
    fn wait_event(&self, id: &str, kind: &str, limit: Duration) -> Value {
        let start = Instant::now();
        loop {
            let (s, v) = self.status(id);
            if s == 200
                && v["report"]["events"]
                    .as_array()
                    .is_some_and(|e| e.iter().any(|e| e["kind"] == kind))
            {
                return v;
            }
            assert!(
                start.elapsed() < limit,
                "patch {id} had no {kind} event: {v}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn server_driven_patch_rolls_back_across_a_server_sigkill_without_failed_transactions() {
    let mut rig = Rig::start(true, "120s");
    let url = rig.url.clone();

    // A plan error is refused by the API with its line and column.
    let (s, v) = rig.http.call(
        "POST",
        &format!("{url}/api/v1/patches"),
        OPERATOR,
        Some(&json!({"plan_yaml": rig.plan.replace("latency_p50", "happiness"), "file": "bad.yaml", "host": "db1", "proxy": {"token": "main"}})),
    );
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("bad.yaml: line 19, column"),
        "{v}"
    );

    let bench = rig.pgbench(25);
    // `patch start --wait` follows the patch, across the server's restart.
    let plan_path = rig.plan_path.display().to_string();
    let mut cli = KillOnDrop(
        rig.cli(&["start", &plan_path, "--wait", "--id", "t1"])
            .args(["--host", "db1", "--proxy-token", "main"])
            .stdout(std::fs::File::create(rig.d().join("cli.out")).unwrap())
            .stderr(std::fs::File::create(rig.d().join("cli.err")).unwrap())
            .spawn()
            .unwrap(),
    );

    // SIGKILL the server once traffic is on the patched instance and it bakes.
    let v = rig.wait_event("t1", "bake.started", Duration::from_secs(60));
    assert_eq!(
        v["stage"],
        "baking",
        "killed mid-patch, not after it\n{}",
        rig.logs()
    );
    rig.server.0.kill().unwrap();
    rig.server.0.wait().unwrap();
    rig.server = spawn_logged(
        &server_args(&rig.d().join("server"), rig.port, &rig.token_file),
        &rig.server_log,
    );
    wait_listening(rig.port, &mut rig.server, &rig.server_log);

    // The resumed task rolls the patch back; the CLI sees it and exits 1.
    let start = Instant::now();
    let code = loop {
        if let Some(s) = cli.0.try_wait().unwrap() {
            break s.code();
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "the patch did not finish\n{}",
            rig.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let (_, v) = rig.status("t1");
    let log = rig.logs();
    assert_eq!(v["stage"], "rolled_back", "{v}\n{log}");
    assert_eq!(code, Some(1), "exit 1 for a rolled-back patch\n{log}");
    let printed = std::fs::read_to_string(rig.d().join("cli.out")).unwrap();
    assert!(printed.contains("rollback.finished"), "{printed}");
    assert!(printed.contains("patch t1: rolled_back"), "{printed}");

    // The report: a latency trigger and four phases, all done, none forced.
    let report = &v["report"];
    assert!(
        report["trigger"]["metric"]
            .as_str()
            .unwrap()
            .starts_with("latency_"),
        "{report}"
    );
    let phases = report["phases"].as_array().unwrap();
    assert_eq!(phases.len(), 4, "{report}");
    for p in phases {
        assert_eq!(p["ok"], true, "{p}");
    }
    assert_eq!(phases[1]["detail"]["forced"], 0, "{}", phases[1]);
    assert!(!rig.patched.data_dir().join("postmaster.pid").exists());

    // pgbench saw nothing.
    let r = parse_pgbench(&bench.wait_with_output().unwrap());
    assert!(r.success, "pgbench failed:\n{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.failed, 0, "{}", r.stdout);
    assert!(!r.aborted_clients, "{}", r.stderr);
    assert!(r.processed > 200, "{}", r.stdout);

    // Each engine event is in the event log once, with the host and the patch's id; the
    // patched instance was started once and stopped once, across the restart.
    let (_, events) = rig.http.call(
        "GET",
        &format!("{url}/api/v1/events?limit=10000"),
        OPERATOR,
        None,
    );
    let patch_events: Vec<&Value> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["figures"]["patch"] == "t1")
        .collect();
    for kind in [
        "patch.baseline.captured",
        "patch.patched.started",
        "patch.patched.healthy",
        "patch.shift.routed",
        "patch.bake.started",
        "patch.rollback.triggered",
        "patch.rollback.phase1",
        "patch.rollback.phase2",
        "patch.rollback.phase3",
        "patch.rollback.phase4",
        "patch.rollback.finished",
    ] {
        let n = patch_events.iter().filter(|e| e["kind"] == kind).count();
        assert_eq!(n, 1, "{kind} logged {n} times: {patch_events:?}");
    }
    assert!(patch_events.iter().all(|e| e["host"] == "db1"));
    assert_eq!(
        patch_events.len(),
        report["events"].as_array().unwrap().len(),
        "the event log and the report hold the same events"
    );
    assert_eq!(journal_count(rig.d(), "start_process"), 1);
    assert_eq!(journal_count(rig.d(), "stop_process"), 1);
    assert!(journal_count(rig.d(), "sample_processes") > 2);
    // The proxy serves the original alone again.
    assert_eq!(rig.backend("original")["weight"], 100);
    assert_eq!(rig.backend("original")["admin"], "ready");
    assert_eq!(rig.backend("patched")["admin"], "maintenance");

    // `patch status` and `patch report` read the server.
    let out = rig.cli(&["status"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("t1") && text.contains("rolled_back"),
        "{text}"
    );
    let out = rig
        .cli(&["report", "t1", "--output", "json"])
        .output()
        .unwrap();
    let again: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(again["trigger"], report["trigger"]);
}

#[test]
fn an_operator_aborts_a_baking_patch_and_the_api_refuses_what_it_cannot_do() {
    let rig = Rig::start(false, "10m");
    let url = rig.url.clone();
    let post = |body: Value| {
        rig.http.call(
            "POST",
            &format!("{url}/api/v1/patches"),
            OPERATOR,
            Some(&body),
        )
    };
    let body = |host: &str, token: &str| json!({"plan_yaml": rig.plan, "file": "patch.yaml", "host": host, "proxy": {"token": token}, "original_pid": rig.original.pid()});
    // A proxy token the server was not given, and a host without an agent, are refused.
    let (s, v) = post(body("db1", "other"));
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("--proxy-token-file other=FILE"),
        "{v}"
    );
    let (s, v) = post(body("db9", "main"));
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("db9 is not enrolled"),
        "{v}"
    );
    // Without --wait the CLI prints the ID and returns.
    let bench = rig.pgbench(20);
    let plan_path = rig.plan_path.display().to_string();
    let out = rig
        .cli(&[
            "start",
            &plan_path,
            "--id",
            "t2",
            "--host",
            "db1",
            "--proxy-token",
            "main",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "t2");
    // One running patch per host.
    let (s, v) = post(body("db1", "main"));
    assert_eq!(s, 409, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("running patch t2"),
        "{v}"
    );

    rig.wait_event("t2", "bake.started", Duration::from_secs(60));
    let out = rig
        .cli(&["abort", "t2", "--reason", "change window closed"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        rig.logs()
    );
    let v = rig.wait_event("t2", "rollback.finished", Duration::from_secs(60));
    assert_eq!(v["stage"], "rolled_back", "{v}");
    let triggered = v["report"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "rollback.triggered")
        .cloned()
        .unwrap();
    assert_eq!(triggered["figures"]["aborted"], true, "{triggered}");
    assert!(
        triggered["message"]
            .as_str()
            .unwrap()
            .contains("change window closed"),
        "{triggered}"
    );
    // A finished patch cannot be aborted again.
    let (s, v) = rig.http.call(
        "POST",
        &format!("{url}/api/v1/patches/t2/abort"),
        OPERATOR,
        None,
    );
    assert_eq!(s, 409, "{v}");
    // The request is in the event log too, and the clients saw nothing.
    let (_, events) = rig.http.call(
        "GET",
        &format!("{url}/api/v1/events?kind=patch.abort.requested"),
        OPERATOR,
        None,
    );
    assert_eq!(events.as_array().unwrap().len(), 1, "{events}");
    let r = parse_pgbench(&bench.wait_with_output().unwrap());
    assert!(r.success, "pgbench failed:\n{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.failed, 0, "{}", r.stdout);
    assert_eq!(rig.backend("original")["weight"], 100);
    assert_eq!(rig.backend("patched")["admin"], "maintenance");
}
