//! The agent's process built-ins (`start_process`, `stop_process`, `sample_processes`) run by
//! its executor on real processes, with their structured output, refusals and allow-list.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use bellwether_agent::exec::{ActionReport, AllowList, Executor};
use bellwether_model::wire::ActionOutcome;
use bellwether_model::ActionSpec;

fn executor(dir: &Path) -> Executor {
    let rootfs = dir.join("root");
    std::fs::create_dir_all(&rootfs).unwrap();
    Executor::new(rootfs, &dir.join("state"), &[], None).unwrap()
}

fn spec(json: serde_json::Value) -> ActionSpec {
    serde_json::from_value(json).unwrap()
}

fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, a)| a.trim_start().starts_with(['Z', 'X']))
        })
        .is_some_and(|zombie| !zombie)
}

/// The error or refusal reason of an outcome that is neither ok nor timed out.
fn error(r: &ActionReport) -> Option<&str> {
    match &r.outcome {
        ActionOutcome::Failed { error, .. } => Some(error),
        ActionOutcome::Refused { reason } => Some(reason),
        _ => None,
    }
}

fn output(r: &ActionReport) -> &serde_json::Value {
    assert!(r.is_ok(), "{r:?}");
    r.output.as_ref().expect("a process built-in has an output")
}

/// Kills a started process at the end of a test, even a failed one (the test's own cleanup:
/// the agent never signals a group).
struct Kill(u64);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0 as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

#[tokio::test]
async fn start_sample_and_stop_a_process_with_their_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let ex = executor(dir.path());
    let r = ex
        .run(&spec(serde_json::json!({
            "builtin": "start_process",
            "argv": ["sh", "-c", "echo started; exec sleep 600"],
        })))
        .await;
    let pid = output(&r)["pid"].as_u64().unwrap();
    let _k = Kill(pid);
    assert_eq!(output(&r).as_object().unwrap().len(), 1, "{r:?}");
    assert!(alive(pid));
    // Started is not yet exec'd: until `sleep` runs (the shell execs it), the child has no
    // memory of its own to sample (a loaded CI machine sampled RSS 0 here).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::fs::read(format!("/proc/{pid}/cmdline")).map_or(true, |c| !c.starts_with(b"sleep\0"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "sleep did not start within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = ex
        .run(&spec(
            serde_json::json!({"builtin": "sample_processes", "pids": [pid]}),
        ))
        .await;
    let p = &output(&r)["processes"][pid.to_string()];
    assert_eq!(p["alive"], true, "{r:?}");
    assert!(p["rss_bytes"].as_u64().unwrap() > 0, "{r:?}");
    assert!(p["ticks_per_s"].as_u64().unwrap() > 0, "{r:?}");
    assert!(p["cpu_ticks"].is_u64(), "{r:?}");
    assert!(output(&r)["at_ms"].as_i64().unwrap() >= r.started_ms);
    let r = ex
        .run(&spec(serde_json::json!({
            "builtin": "stop_process", "pid": pid, "timeout_ms": 10000,
        })))
        .await;
    assert_eq!(output(&r), &serde_json::json!({"pid": pid, "exited": true}));
    assert!(!alive(pid));
    let r = ex
        .run(&spec(
            serde_json::json!({"builtin": "sample_processes", "pids": [pid]}),
        ))
        .await;
    assert_eq!(output(&r)["processes"][pid.to_string()]["alive"], false);
    // The instance's output went to the agent's process log.
    let log = std::fs::read_to_string(dir.path().join("state/processes.log")).unwrap();
    assert!(log.contains("started"), "{log}");
    // The output is in the JSON the agent posts, and reads back.
    let json = serde_json::to_value(&r).unwrap();
    assert!(json["output"]["processes"].is_object(), "{json}");
    assert_eq!(serde_json::from_value::<ActionReport>(json).unwrap(), r);
}

#[tokio::test]
async fn a_launcher_with_a_pidfile_and_a_stop_argv() {
    let dir = tempfile::tempdir().unwrap();
    let ex = executor(dir.path());
    let pidfile = dir.path().join("instance.pid");
    let launcher = dir.path().join("launch");
    std::fs::write(
        &launcher,
        "#!/bin/sh\nsleep 600 </dev/null >/dev/null 2>&1 &\necho $! > \"$1\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&launcher, std::fs::Permissions::from_mode(0o755)).unwrap();
    let r = ex
        .run(&spec(serde_json::json!({
            "builtin": "start_process",
            "argv": [launcher, pidfile],
            "pidfile": pidfile,
            "timeout_ms": 10000,
        })))
        .await;
    let pid = output(&r)["pid"].as_u64().unwrap();
    let _k = Kill(pid);
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap().trim(),
        pid.to_string()
    );
    assert!(alive(pid));
    let r = ex
        .run(&spec(serde_json::json!({
            "builtin": "stop_process",
            "pidfile": pidfile,
            "argv": ["kill", "-TERM", pid.to_string()],
        })))
        .await;
    assert_eq!(output(&r), &serde_json::json!({"pid": pid, "exited": true}));
    assert!(!alive(pid));
}

#[tokio::test]
async fn a_process_that_ignores_sigterm_is_reported_not_exited() {
    let dir = tempfile::tempdir().unwrap();
    let ex = executor(dir.path());
    let r = ex
        .run(&spec(serde_json::json!({
            "builtin": "start_process",
            "argv": ["sh", "-c", "trap '' TERM; echo ready; while :; do sleep 1; done"],
        })))
        .await;
    let pid = output(&r)["pid"].as_u64().unwrap();
    let _k = Kill(pid);
    // The trap is set once the shell printed.
    let log = dir.path().join("state/processes.log");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("ready")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the shell never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = ex
        .run(&spec(serde_json::json!({
            "builtin": "stop_process", "pid": pid, "timeout_ms": 300,
        })))
        .await;
    assert_eq!(
        output(&r),
        &serde_json::json!({"pid": pid, "exited": false})
    );
    assert!(alive(pid));
}

#[tokio::test]
async fn refusals_are_reported_failed_and_nothing_runs() {
    let dir = tempfile::tempdir().unwrap();
    let ex = executor(dir.path());
    // Specs built by hand skip validation: the executor checks again.
    for (pid, why) in [
        (0, "will not signal PID 0: 0 is not one process"),
        (1, "will not signal PID 1: 1 is init"),
        (4_194_305, "will not signal PID 4194305"),
    ] {
        let r = ex
            .run(&ActionSpec::StopProcess {
                pid: Some(pid),
                pidfile: None,
                argv: None,
                timeout_ms: None,
            })
            .await;
        assert!(!r.is_ok() && r.output.is_none(), "{r:?}");
        assert!(error(&r).unwrap().starts_with(why), "{r:?}");
    }
    let marker = dir.path().join("ran");
    let r = ex
        .run(&ActionSpec::StartProcess {
            argv: vec!["touch".into(), marker.display().to_string()],
            pidfile: Some("relative/x.pid".into()),
            timeout_ms: None,
        })
        .await;
    assert_eq!(
        error(&r),
        Some("pidfile \"relative/x.pid\" is not usable: it is not absolute"),
        "{r:?}"
    );
    let r = ex
        .run(&ActionSpec::StartProcess {
            argv: vec!["touch".into(), format!("{}\0", marker.display())],
            pidfile: None,
            timeout_ms: None,
        })
        .await;
    assert_eq!(error(&r), Some("argv[1] contains a NUL byte"));
    assert!(!marker.exists(), "a refused start ran");
    let r = ex
        .run(&ActionSpec::StopProcess {
            pid: None,
            pidfile: Some(dir.path().join("missing.pid").display().to_string()),
            argv: None,
            timeout_ms: None,
        })
        .await;
    assert!(
        error(&r).unwrap().starts_with("cannot read pidfile "),
        "{r:?}"
    );
    // The JSON an agent receives never gets this far: validation refuses it.
    for bad in [
        serde_json::json!({"builtin": "stop_process", "pid": 1}),
        serde_json::json!({"builtin": "start_process", "argv": ["x"], "pidfile": "x.pid"}),
        serde_json::json!({"builtin": "sample_processes", "pids": []}),
    ] {
        assert!(
            serde_json::from_value::<ActionSpec>(bad.clone()).is_err(),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn the_allow_list_names_the_process_builtins() {
    let dir = tempfile::tempdir().unwrap();
    let ex = executor(dir.path()).with_allow_list(AllowList::parse(&["sample_processes"]).unwrap());
    let me = std::process::id();
    let r = ex
        .run(&spec(
            serde_json::json!({"builtin": "sample_processes", "pids": [me]}),
        ))
        .await;
    assert_eq!(output(&r)["processes"][me.to_string()]["alive"], true);
    let marker = dir.path().join("ran");
    let r = ex
        .run(&spec(serde_json::json!({
            "builtin": "start_process",
            "argv": ["touch", marker],
        })))
        .await;
    assert!(!r.is_ok(), "{r:?}");
    assert_eq!(
        error(&r),
        Some("refused by this agent's --allow-action list: built-in start_process matches none of sample_processes")
    );
    assert!(!marker.exists());
    for kind in ["start_process", "stop_process", "sample_processes"] {
        assert_eq!(AllowList::parse(&[kind]).unwrap().to_string(), kind);
    }
}

/// A server that hands out scripted batches and records the reports.
#[derive(Clone, Default)]
struct Scripted(std::sync::Arc<std::sync::Mutex<ScriptedState>>);

#[derive(Default)]
struct ScriptedState {
    batches: std::collections::VecDeque<Vec<bellwether_agent::actions::PendingAction>>,
    reports: Vec<(String, ActionReport)>,
}

impl bellwether_agent::actions::ActionTransport for Scripted {
    async fn poll_actions(
        &mut self,
        _token: &str,
        wait: Duration,
    ) -> Result<Vec<bellwether_agent::actions::PendingAction>, bellwether_agent::SendError> {
        let batch = self.0.lock().unwrap().batches.pop_front();
        match batch {
            Some(b) => Ok(b),
            None => {
                tokio::time::sleep(wait).await;
                Ok(Vec::new())
            }
        }
    }

    async fn report_action(
        &mut self,
        _token: &str,
        id: &str,
        report: &ActionReport,
    ) -> Result<(), bellwether_agent::SendError> {
        self.0
            .lock()
            .unwrap()
            .reports
            .push((id.to_string(), report.clone()));
        Ok(())
    }
}

#[tokio::test]
async fn a_resent_start_process_is_answered_from_the_journal_and_starts_nothing() {
    use bellwether_agent::actions::{ActionLoop, ActionSettings, Journal, PendingAction};
    let dir = tempfile::tempdir().unwrap();
    let ex = executor(dir.path());
    let counter = dir.path().join("starts");
    // Each start appends a line, so a second start would show.
    let action = PendingAction::new(
        format!("{:032x}", 7),
        String::new(),
        "apply",
        spec(serde_json::json!({
            "builtin": "start_process",
            "argv": ["sh", "-c", format!("echo x >> {}; exec sleep 600", counter.display())],
        })),
    );
    let fake = Scripted::default();
    {
        let mut s = fake.0.lock().unwrap();
        s.batches.push_back(vec![action.clone()]);
        // The server restarted from its store and sends the same action again.
        s.batches.push_back(vec![action.clone()]);
    }
    let journal = Journal::open(&dir.path().join("state")).unwrap();
    let (_tx, token) = tokio::sync::watch::channel(Some("agent-token".to_string()));
    let settings = ActionSettings {
        wait: Duration::from_millis(20),
        ..ActionSettings::default()
    };
    let watched = fake.clone();
    let two_reports = async move {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while watched.0.lock().unwrap().reports.len() < 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "two reports never came"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let stats = ActionLoop::new(settings, fake.clone(), ex, journal, token)
        .run(two_reports)
        .await;
    assert_eq!((stats.ran, stats.replayed), (1, 1), "{stats:?}");
    let reports = fake.0.lock().unwrap().reports.clone();
    let pid = output(&reports[0].1)["pid"].as_u64().unwrap();
    let _k = Kill(pid);
    assert_eq!(reports[0], reports[1], "the stored result, output included");
    assert!(alive(pid));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !counter.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the instance never ran"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        std::fs::read_to_string(&counter).unwrap(),
        "x\n",
        "started once"
    );
}
