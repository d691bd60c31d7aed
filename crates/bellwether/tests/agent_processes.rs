//! The process built-ins through a real `bellwether server` and a real `bellwether agent`: a
//! rollout's apply starts an instance with a launcher and a pidfile, and its revert (after an
//! abort) stops it; the agent's results, with their structured `output`, are accepted by the
//! server and drive the rollout.

mod support;

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use support::*;

const OP: &str = "operator-token-agent-processes";
const ENROL: &str = "enrol-token-agent-processes";
const WAIT: Duration = Duration::from_secs(60);

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, a)| !a.trim_start().starts_with(['Z', 'X']))
        })
        .unwrap_or(false)
}

/// SIGKILL to the instance if a test fails half-way.
struct Kill(u32);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0 as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

fn rollout(server: &Server, dir: &Path, n: u32, apply: &str, revert: &str) -> String {
    // No service metric is scraped here, so the rollout never completes on its own: the test
    // aborts it.
    let plan = format!(
        r#"name: processes-{n}
update:
  name: websvc
  version: "{n}"
  apply: {apply}
  revert: {revert}
targets:
  labels: {{ role: procs }}
risk:
  low: 0.98
  high: 0.99
  pilot: {{ min: 1, max: 1 }}
  high_risk: include_last
waves: {{ fixed: [100] }}
bake: 1s
analysis:
  interval: 100ms
  baseline: 200ms
  metrics:
    - {{ name: svc_error_ratio, threshold_pct: 50, for: 300ms, floor: 0.01 }}
  judge: {{ enabled: false }}
no_data: {{ after: 30s }}
"#
    );
    let file = dir.join(format!("plan-{n}.yaml"));
    std::fs::write(&file, plan).unwrap();
    let o = run(&[
        "rollout",
        "--server",
        &server.url,
        "--token",
        OP,
        "start",
        file.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let id = out.split_whitespace().nth(2).unwrap().to_string();
    assert!(id.starts_with("r-"), "{out}");
    id
}

/// Waits for an event of `kind` in the rollout's report; returns its reason.
fn event(rt: &tokio::runtime::Runtime, server: &Server, id: &str, kind: &str) -> String {
    let api = server.api();
    rt.block_on(eventually(
        &format!("a {kind} event in rollout {id}"),
        WAIT,
        || async {
            let (status, report) = api.get(&format!("/api/v1/rollouts/{id}/report")).await;
            if status != 200 {
                return None;
            }
            report["events"].as_array()?.iter().find_map(|e| {
                (e["kind"] == kind).then(|| e["reason"].as_str().unwrap_or("").to_owned())
            })
        },
    ))
}

/// The journal entries of the agent whose spec is the built-in `kind`.
fn journal_outputs(state: &Path, kind: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(state.join("actions.json")).unwrap();
    let j: serde_json::Value = serde_json::from_str(&text).unwrap();
    j["entries"]
        .as_object()
        .unwrap()
        .values()
        .filter(|e| e["spec"]["builtin"] == kind)
        .map(|e| e["report"]["output"].clone())
        .collect()
}

#[test]
fn an_agent_starts_and_stops_an_instance_for_the_server() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path(), &Backend::Sqlite, "127.0.0.1:0", OP, ENROL);
    // A rollout needs a trained model.
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
    let h = tmp.path().join("history.csv");
    std::fs::write(&h, csv).unwrap();
    let url = server.url.clone();
    let o = run(&[
        "model",
        "import",
        "--server",
        &url,
        "--token",
        OP,
        "--history",
        h.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = run(&["model", "train", "--server", &url, "--token", OP]);
    assert!(o.status.success(), "{}", text(&o));

    let root = tmp.path().join("root");
    std::fs::create_dir_all(root.join("etc/websvc")).unwrap();
    std::fs::write(root.join("etc/hostname"), "procs\n").unwrap();
    std::fs::write(root.join("etc/websvc/version"), "1\n").unwrap();
    let state = tmp.path().join("agent-state");
    let mut agent = start_agent(
        tmp.path(),
        &server,
        "procs",
        &root,
        "200ms",
        &[
            "--state-dir",
            state.to_str().unwrap(),
            "--action-wait",
            "500ms",
            "--label",
            "role=procs",
            "--allow-action",
            "start_process",
            "--allow-action",
            "stop_process",
            "--allow-action",
            "sample_processes",
        ],
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let api = server.api();
    rt.block_on(eventually("the agent's first profile", WAIT, || async {
        api.profile("procs").await
    }));
    agent.assert_running();

    // The instance: a launcher that starts `sleep` and writes its PID to a pidfile.
    let pidfile = tmp.path().join("instance.pid");
    let launcher = tmp.path().join("launch");
    std::fs::write(
        &launcher,
        "#!/bin/sh\nsleep 600 </dev/null >/dev/null 2>&1 &\necho $! > \"$1\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&launcher, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (l, p) = (launcher.display(), pidfile.display());
    let id = rollout(
        &server,
        tmp.path(),
        2,
        &format!(r#"{{ builtin: start_process, argv: ["{l}", "{p}"], pidfile: "{p}" }}"#),
        &format!(r#"{{ builtin: stop_process, pidfile: "{p}" }}"#),
    );
    let reason = event(&rt, &server, &id, "host.applied");
    assert!(reason.starts_with("Applied"), "{reason}");
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _k = Kill(pid);
    assert!(alive(pid), "the instance runs");
    assert_eq!(
        journal_outputs(&state, "start_process"),
        [serde_json::json!({ "pid": pid })],
        "the agent's result carries the PID"
    );
    // Aborting the rollout reverts the host: the revert stops the instance.
    let o = run(&[
        "rollout",
        "--server",
        &server.url,
        "--token",
        OP,
        "abort",
        &id,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let reason = event(&rt, &server, &id, "host.rolled_back");
    assert!(reason.starts_with("Reverted"), "{reason}");
    assert!(!alive(pid), "the instance was stopped");
    assert_eq!(
        journal_outputs(&state, "stop_process"),
        [serde_json::json!({ "pid": pid, "exited": true })]
    );
    agent.assert_running();
}
