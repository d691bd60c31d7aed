//! `bellwether patch` end to end on two real PostgreSQL clusters: the "patched" instance runs
//! with index scans disabled (a bad configuration patch), pgbench runs through the embedded
//! proxy, and the patch must roll back in its four phases on a latency breach measured by the
//! proxy, with no failed transaction and no client disconnected.

#[path = "../../bellwether-proxy/tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{client_bin, free_port, parse_pgbench, PgCluster};

/// A webhook receiver that keeps the bodies it is sent.
fn webhook_server() -> (u16, Arc<Mutex<Vec<serde_json::Value>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let keep = bodies.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let mut r = BufReader::new(s);
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; len];
            if r.read_exact(&mut body).is_ok() {
                if let Ok(v) = serde_json::from_slice(&body) {
                    keep.lock().unwrap().push(v);
                }
            }
            let _ = r
                .get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (port, bodies)
}

/// A child process killed (and reaped) when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn yaml_list(v: &[String]) -> String {
    format!(
        "[{}]",
        v.iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

#[test]
fn bad_patch_rolls_back_in_four_phases_without_failed_transactions() {
    let original = PgCluster::start(&[]);
    original.pgbench_init();
    let patched = PgCluster::start(&[]);
    patched.pgbench_init();
    // The bad patch: the planner may no longer use indexes, so every pgbench statement scans.
    patched.append_conf(&[
        "enable_indexscan = off",
        "enable_bitmapscan = off",
        "enable_indexonlyscan = off",
    ]);
    patched.stop();

    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let listen = free_port();
    let (hook_port, hooks) = webhook_server();
    // Latency is timed per statement, and five of TPC-B's seven statements never touch
    // pgbench_accounts, so the patched instance's p50 rises only when its slow statements
    // hold the branch row long enough to queue the others; with four clients that depends on
    // the machine's load. Its p99 always rises, so p99 alone (weight 2 of 5) can reach the
    // severity threshold.
    let plan = format!(
        r#"name: pg-config-patch
proxy:
  listen: "127.0.0.1:{listen}"
original:
  address: "{orig}"
  pidfile: "{orig_pidfile}"
patched:
  address: "{patched_addr}"
  start: {start}
  stop: {stop}
  pidfile: "{patched_pidfile}"
health:
  check: postgres
  interval: 200ms
  rise: 2
  timeout: 60s
metrics:
  - {{ metric: latency_p50, threshold_pct: 100, duration: 1s, weight: 2 }}
  - {{ metric: latency_p99, threshold_pct: 200, duration: 1s, weight: 2 }}
  - {{ metric: error_rate, threshold_pct: 100, duration: 1s, weight: 1, critical: true }}
  - {{ metric: cpu, threshold_pct: 1000, duration: 5s, weight: 0 }}
sample_interval: 500ms
baseline_window: 3s
bake_time: 60s
drain_timeout: 10s
severity_threshold: 0.3
webhook: "http://127.0.0.1:{hook_port}/hook"
"#,
        orig = original.addr(),
        orig_pidfile = original.data_dir().join("postmaster.pid").display(),
        patched_addr = patched.addr(),
        start = yaml_list(&patched.pg_ctl_argv(&[
            "-l",
            &patched.dir.path().join("log").display().to_string(),
            "-w",
            "-t",
            "60",
            "start"
        ])),
        stop = yaml_list(&patched.pg_ctl_argv(&["-m", "fast", "-w", "stop"])),
        patched_pidfile = patched.data_dir().join("postmaster.pid").display(),
    );
    let plan_path = dir.path().join("patch.yaml");
    std::fs::write(&plan_path, plan).unwrap();
    let out_path = dir.path().join("patch.out");
    // Killed when the test fails half-way, so no `patch start --wait` outlives it.
    let mut patch = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_bellwether"))
            .args(["--log", "info", "patch", "--state-dir"])
            .arg(&state)
            .args(["start", "--wait", "--id", "t1"])
            .arg(&plan_path)
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(dir.path().join("patch.err")).unwrap())
            .spawn()
            .unwrap(),
    );
    let show = || {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            std::fs::read_to_string(&out_path).unwrap_or_default(),
            std::fs::read_to_string(dir.path().join("patch.err")).unwrap_or_default()
        )
    };
    wait_for("the proxy to listen", Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", listen)).is_ok()
    });
    let bench = Command::new(client_bin("pgbench", "postgresql-contrib"))
        .args([
            "-n",
            "-c",
            "4",
            "-j",
            "2",
            "-T",
            "20",
            "-M",
            "simple",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-p",
        ])
        .arg(listen.to_string())
        .arg("postgres")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let report_path = state.join("t1.json");
    let read_report = || -> Option<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(&report_path).ok()?).ok()
    };
    let finished = || {
        read_report().is_some_and(|r| {
            ["rolled_back", "promoted", "failed"].contains(&r["stage"].as_str().unwrap_or(""))
        })
    };
    let start = Instant::now();
    while !finished() {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "timed out waiting for the patch to finish\n{}\nreport:\n{}",
            show(),
            std::fs::read_to_string(&report_path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = parse_pgbench(&bench.wait_with_output().unwrap());
    Command::new("kill")
        .args(["-TERM", &patch.0.id().to_string()])
        .status()
        .unwrap();
    let status = patch.0.wait().unwrap();
    let report = read_report().unwrap();
    let log = show();
    assert_eq!(report["stage"], "rolled_back", "{log}");
    // pgbench saw nothing: every transaction committed, no client was dropped.
    assert!(
        r.success,
        "pgbench failed:\n{}\n{}\n{log}",
        r.stdout, r.stderr
    );
    assert_eq!(r.failed, 0, "{}", r.stdout);
    assert!(!r.aborted_clients, "{}", r.stderr);
    assert!(r.processed > 200, "{}", r.stdout);
    // The trigger is a latency metric, measured against the original's baseline.
    let trigger = &report["trigger"];
    assert!(
        trigger["metric"].as_str().unwrap().starts_with("latency_"),
        "{trigger}"
    );
    assert_eq!(trigger["against"], "baseline");
    assert!(trigger["deviation"].as_f64().unwrap() > 1.0, "{trigger}");
    // The event sequence, in order.
    let kinds: Vec<&str> = report["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    let expected = [
        "baseline.captured",
        "patched.started",
        "patched.healthy",
        "shift.routed",
        "shift.sessions_moved",
        "bake.started",
        "rollback.triggered",
        "rollback.phase1",
        "rollback.phase2",
        "rollback.phase3",
        "rollback.phase4",
        "rollback.finished",
    ];
    let mut at = 0;
    for k in expected {
        let found = kinds[at..].iter().position(|x| *x == k);
        assert!(
            found.is_some(),
            "{k} missing or out of order in {kinds:?}\n{log}"
        );
        at += found.unwrap() + 1;
    }
    let phases = report["phases"].as_array().unwrap();
    assert_eq!(phases.len(), 4);
    for (i, p) in phases.iter().enumerate() {
        assert_eq!(p["phase"], i as u64 + 1);
        assert_eq!(p["ok"], true, "{p}");
        assert!(p["took_ms"].as_i64().unwrap() >= 0);
    }
    // Phase 2 moved the sessions back; none had to be forced.
    assert_eq!(phases[1]["detail"]["forced"], 0, "{}", phases[1]);
    // Phase 3 stopped the patched instance.
    assert!(!patched.data_dir().join("postmaster.pid").exists());
    // The webhook got the rollback alert and the final report.
    wait_for("webhooks", Duration::from_secs(10), || {
        hooks
            .lock()
            .unwrap()
            .iter()
            .any(|b| b["kind"] == "rolled_back")
    });
    let bodies = hooks.lock().unwrap().clone();
    assert!(bodies
        .iter()
        .any(|b| b["kind"] == "rollback" && b["trigger"]["metric"] == trigger["metric"]));
    assert!(status.success() || status.code() == Some(1), "{status:?}");
    // status and report read the same state.
    let out = Command::new(env!("CARGO_BIN_EXE_bellwether"))
        .args(["patch", "--state-dir"])
        .arg(&state)
        .args(["status"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("t1") && text.contains("rolled_back"),
        "{text}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_bellwether"))
        .args(["patch", "--state-dir"])
        .arg(&state)
        .args(["report", "t1", "--output", "json"])
        .output()
        .unwrap();
    let again: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(again["trigger"], report["trigger"]);
}

#[test]
fn malformed_plan_is_refused_with_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("bad.yaml");
    std::fs::write(
        &plan,
        "name: x\nproxy:\n  listen: \"127.0.0.1:1\"\nbake_time: later\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_bellwether"))
        .args(["patch", "--state-dir"])
        .arg(dir.path())
        .arg("start")
        .arg(&plan)
        .arg("--wait")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml: line ") && err.contains("column"),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_bellwether"))
        .args(["patch", "--state-dir"])
        .arg(dir.path())
        .args(["report", "nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no patch `nope`"));
}
