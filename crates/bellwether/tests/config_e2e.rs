//! Configuration changes through the server, end to end, on real parts: a PostgreSQL cluster
//! started here (initdb/pg_ctl), the real `bellwether agent` on its host with `--database`
//! (it samples `pg_stat_database`, reports `pg_settings`, and carries out the trial, snapshot,
//! apply and revert), the real `bellwether server` running each change as a durable `config`
//! task, the real CLI (`bellwether config …`), and pgbench as the workload.
//!
//! - a harmless change (`log_min_duration_statement`) completes and stays;
//! - a harmful one (`work_mem = 64kB` under a sort-heavy workload) is detected, traced through
//!   the graph and reverted, and the instance is back at 4MB;
//! - one that would stop the server (`wal_level = minimal` with `max_wal_senders` > 0) is
//!   refused by the scratch trial and never reaches the instance;
//! - a restart-context change (`max_connections`) is applied with a restart and, on the
//!   operator's `config revert`, put back with another;
//! - the change stream, the snapshots and the server-side simulator answer for it.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bellwether_pg::testing::{KeepRunning, TestCluster, TestClusterOptions};
use serde_json::Value;
use support::{Backend, Guard, Server, EXE};

const OPERATOR: &str = "config-e2e-operator-token-0123456789";
const ENROL: &str = "config-e2e-enrol-token-0123456789abc";

fn psql(c: &TestCluster, sql: &str) -> String {
    let out = Command::new(c.bindir.join("psql"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &c.port.to_string(),
            "-U",
            "postgres",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
            "postgres",
        ])
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `bellwether ARGS…` against the server; (exit code, stdout, stderr).
fn cli(server: &Server, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(EXE)
        .args(args)
        .args(["--server", &server.url, "--token", OPERATOR])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn cli_json(server: &Server, args: &[&str]) -> Value {
    let (code, out, err) = cli(server, args);
    assert_eq!(code, 0, "bellwether {args:?} failed: {err}\n{out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
}

/// Polls `f` every 100 ms until it returns `Some`.
fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A plan with a short watch (the defaults are longer; see docs/config-apply.md).
fn plan(dir: &Path, name: &str, set: &str) -> String {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!(
            "description: {name}\nauthor: e2e\ntargets:\n  - {{host: db1, database: main}}\n\
             set:\n{set}watch:\n  baseline: 6s\n  min_baseline_samples: 4\n  bake: 12s\n  \
             confirm: 3s\n  confirm_timeout: 40s\n"
        ),
    )
    .unwrap();
    path.display().to_string()
}

/// Runs `config apply PLAN --wait --output json`; returns the exit code and the final status
/// (the last line).
fn apply(server: &Server, plan: &str) -> (i32, Value) {
    let (code, out, err) = cli(
        server,
        &["config", "apply", plan, "--wait", "--output", "json"],
    );
    let last = out.lines().last().unwrap_or_default();
    let v: Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("apply {plan}: no final status ({e}):\n{out}\n{err}"));
    (code, v)
}

fn events_of(server: &Server, task: &str) -> Vec<Value> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (code, v) = rt.block_on(
        server
            .api()
            .get(&format!("/api/v1/events?task={task}&limit=1000")),
    );
    assert_eq!(code, 200, "events of {task}: {v}");
    v.as_array().cloned().unwrap_or_default()
}

fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| e["kind"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn config_changes_through_the_server_on_a_real_instance() {
    let dir = tempfile::tempdir().unwrap();
    let pg = TestCluster::start(TestClusterOptions::default());
    let server = Server::start(dir.path(), &Backend::Sqlite, "127.0.0.1:0", OPERATOR, ENROL);
    let restart = pg
        .restart_argv()
        .iter()
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join(" ");
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let state = dir.path().join("agent-state");
    let database = format!("main={}", pg.url());
    let restart_flag = format!("main={restart}");
    let mut agent = Guard::spawn(
        "agent db1",
        &[
            "--log",
            "info",
            "agent",
            "--server",
            &server.url,
            "--token",
            ENROL,
            "--rootfs",
            root.to_str().unwrap(),
            "--name",
            "db1",
            "--interval",
            "1s",
            "--max-backoff",
            "500ms",
            "--database",
            &database,
            "--database-restart",
            &restart_flag,
            "--learn-graph=false",
            "--state-dir",
            state.to_str().unwrap(),
            "--allow-action",
            "pg_read_settings",
            "--allow-action",
            "pg_apply",
            "--allow-action",
            "pg_trial",
        ],
        &[],
        &dir.path().join("agent.log"),
    );

    // The agent reports the instance's settings.
    wait_for(
        "the agent's report of main",
        Duration::from_secs(60),
        || {
            agent.assert_running();
            let (code, out, _) = cli(&server, &["config", "sources", "--output", "json"]);
            (code == 0 && out.contains("\"main\"")).then_some(())
        },
    );

    // The server-side simulator refuses a change that breaks a hard constraint, exit 1.
    let (code, out, err) = cli(
        &server,
        &[
            "config",
            "simulate",
            "--host",
            "db1",
            "--set",
            "wal_level=minimal",
            "--output",
            "json",
        ],
    );
    assert_eq!(code, 1, "simulate should refuse: {out}{err}");
    let sim: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(sim["verdict"], "refuse", "{sim}");
    // Bad input names the setting and the allowed range.
    let (code, out, err) = cli(
        &server,
        &[
            "config",
            "simulate",
            "--host",
            "db1",
            "--set",
            "work_mem=1kB",
        ],
    );
    assert!(
        code != 0 && (err.contains("work_mem") || out.contains("work_mem")),
        "{code} {out} {err}"
    );

    // A workload the harmful change hurts: each transaction de-duplicates 20,000 rows (inside
    // 4MB of work_mem; spills to disk at 64kB).
    psql(
        &pg,
        "CREATE TABLE sortme AS SELECT (random()*1e6)::int AS k, md5(i::text) AS v \
         FROM generate_series(1, 20000) i; ANALYZE sortme;",
    );
    let script = dir.path().join("sort.sql");
    std::fs::write(
        &script,
        "SELECT count(*) FROM (SELECT DISTINCT v FROM sortme) s;\n",
    )
    .unwrap();
    let _bench = KeepRunning::start(pg.pgbench_argv(&[
        "-n",
        "-c",
        "2",
        "-j",
        "2",
        "-T",
        "600",
        "-f",
        script.to_str().unwrap(),
        "postgres",
    ]));

    // 1. Harmless: kept.
    let p = plan(
        dir.path(),
        "harmless",
        "  log_min_duration_statement: 10s\n",
    );
    let (code, status) = apply(&server, &p);
    assert_eq!(code, 0, "a harmless change should complete: {status:#}");
    assert_eq!(status["phase"], "completed", "{status:#}");
    assert_eq!(psql(&pg, "SHOW log_min_duration_statement"), "10s");

    // 2. Harmful: detected, traced, reverted.
    let p = plan(dir.path(), "harmful", "  work_mem: 64kB\n");
    let (code, status) = apply(&server, &p);
    assert_eq!(
        code, 1,
        "a harmful change should be rolled back: {status:#}"
    );
    assert_eq!(status["phase"], "rolled_back", "{status:#}");
    assert_eq!(psql(&pg, "SHOW work_mem"), "4MB");
    let id = status["id"].as_str().unwrap().to_string();
    let ev = events_of(&server, &id);
    let k = kinds(&ev);
    for want in [
        "config.trial_passed",
        "config.snapshot",
        "config.applied",
        "config.anomaly",
        "config.traced",
        "config.reverted",
    ] {
        assert!(k.iter().any(|x| x == want), "no {want} in {k:?}");
    }
    let traced = ev.iter().find(|e| e["kind"] == "config.traced").unwrap();
    let risk = &traced["figures"]["risk"];
    let sum: f64 = risk["base"].as_f64().unwrap()
        + risk["factors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["log_odds"].as_f64().unwrap())
            .sum::<f64>();
    let p = risk["score"].as_f64().unwrap();
    assert!(
        (sum - (p / (1.0 - p)).ln()).abs() < 1e-6,
        "the risk's factors add up to its log-odds: {risk}"
    );
    // The change stream has the change and its revert; the snapshot is listed and whole.
    let changes = cli_json(
        &server,
        &["config", "changes", "--host", "db1", "--output", "json"],
    );
    let work_mem: Vec<&Value> = changes
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["figures"]["key"] == "work_mem")
        .collect();
    assert!(
        work_mem.iter().any(|e| e["figures"]["source"] == "apply")
            && work_mem.iter().any(|e| e["figures"]["source"] == "revert"),
        "{changes:#}"
    );
    let snaps = cli_json(
        &server,
        &["config", "snapshots", "--host", "db1", "--output", "json"],
    );
    assert!(
        snaps
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["task"] == id.as_str() && s["whole"] == true),
        "{snaps:#}"
    );

    // 3. Would not start: refused by the trial; the instance never sees it.
    let p = plan(dir.path(), "wont-start", "  wal_level: minimal\n");
    let (code, status) = apply(&server, &p);
    assert_eq!(code, 1, "{status:#}");
    assert_eq!(status["phase"], "refused", "{status:#}");
    assert_eq!(psql(&pg, "SHOW wal_level"), "replica");
    let k = kinds(&events_of(&server, status["id"].as_str().unwrap()));
    assert!(!k.iter().any(|x| x == "config.applied"), "{k:?}");

    // 4. Restart context: applied with a restart, and reverted with another when the
    // operator asks.
    let started0 = psql(&pg, "SELECT pg_postmaster_start_time()");
    let p = plan(dir.path(), "restart", "  max_connections: 90\n");
    let (code, out, err) = cli(&server, &["config", "apply", &p]);
    assert_eq!(code, 0, "{out}{err}");
    let id = out.trim().to_string();
    wait_for(
        "the restart-context change applied",
        Duration::from_secs(60),
        || {
            kinds(&events_of(&server, &id))
                .iter()
                .any(|k| k == "config.applied")
                .then_some(())
        },
    );
    assert_eq!(psql(&pg, "SHOW max_connections"), "90");
    let started1 = psql(&pg, "SELECT pg_postmaster_start_time()");
    assert_ne!(started0, started1, "the apply restarted the server");
    let (code, out, err) = cli(&server, &["config", "revert", &id, "--reason", "e2e"]);
    assert_eq!(code, 0, "{out}{err}");
    let status = wait_for("the revert settled", Duration::from_secs(90), || {
        let v = cli_json(&server, &["config", "status", &id, "--output", "json"]);
        (v["settled"] == true).then_some(v)
    });
    assert_eq!(status["phase"], "rolled_back", "{status:#}");
    assert_eq!(psql(&pg, "SHOW max_connections"), "100");
    let started2 = psql(&pg, "SELECT pg_postmaster_start_time()");
    assert_ne!(started1, started2, "the revert restarted the server");
    agent.assert_running();
}
