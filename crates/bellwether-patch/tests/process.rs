//! `bellwether_patch::process` on real processes: `sleep`, a launcher script that writes a
//! pidfile, a process tree that burns CPU, zombies, and the refusals.

use std::path::Path;
use std::time::{Duration, Instant};

use bellwether_patch::process::{self, ProcessError};

/// Kills the started process group when a test ends, even a failed one.
struct Group(u32);

impl Drop for Group {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.0 as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// An executable shell script. `install` writes it in a process of its own: written here, the
/// open file could be inherited by another test's fork in that instant, and running it then
/// fails with "Text file busy".
fn script(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    let src = dir.join(format!("{name}.src"));
    std::fs::write(&src, format!("#!/bin/sh\n{body}")).unwrap();
    let st = std::process::Command::new("install")
        .args(["-m", "0755"])
        .arg(&src)
        .arg(&p)
        .status()
        .unwrap();
    assert!(st.success(), "install {} failed", p.display());
    p.display().to_string()
}

fn log(dir: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("processes.log"))
        .unwrap()
}

/// `argv` started as a launcher that writes `pidfile`, with 10 s to do it and `dir`'s log.
async fn launch(
    dir: &Path,
    argv: &[String],
    pidfile: &str,
) -> Result<process::Started, ProcessError> {
    process::start(argv, Some(pidfile), Duration::from_secs(10), log(dir), None).await
}

fn argv(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Polls `cond` until it holds; fails with `what` after 20 s.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

#[tokio::test]
async fn sleep_starts_in_its_own_group_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let started = process::start(
        &argv(&["sleep", "600"]),
        None,
        Duration::from_secs(10),
        log(dir.path()),
        Some(dir.path()),
    )
    .await
    .unwrap();
    let pid = started.pid;
    let _g = Group(pid);
    assert!(
        started.child.is_some(),
        "without a pidfile the child is the instance"
    );
    assert!(process::alive(pid));
    let pgid = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid as i32))).unwrap();
    assert_eq!(pgid.as_raw() as u32, pid, "a process group of its own");
    assert_ne!(
        nix::unistd::getpgid(None).unwrap(),
        pgid,
        "not the test's group"
    );
    // Spawned is not yet exec'd: until `sleep` runs, the child has no memory of its own.
    until("sleep to have memory of its own", || {
        process::sample(&[pid]).processes[&pid].rss_bytes > 0
    })
    .await;
    let s = process::sample(&[pid]);
    let me = s.processes[&pid];
    assert!(me.alive && me.rss_bytes > 0 && me.ticks_per_s > 0, "{s:?}");
    let stopped = process::stop(pid, None, Duration::from_secs(10), None)
        .await
        .unwrap();
    assert_eq!(
        stopped,
        process::Stopped { pid, exited: true },
        "SIGTERM ends sleep"
    );
    assert!(!process::alive(pid));
    let s = process::sample(&[pid]);
    assert_eq!(
        s.processes[&pid],
        process::ProcessSample {
            alive: false,
            cpu_ticks: 0,
            ticks_per_s: process::ticks_per_s(),
            rss_bytes: 0
        }
    );
    assert_eq!(
        serde_json::to_value(&s).unwrap()["processes"][pid.to_string()]["alive"],
        false,
        "the JSON is keyed by the PID as a string"
    );
}

#[tokio::test]
async fn a_launcher_writes_a_pidfile_and_a_stop_argv_stops_the_instance() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("instance.pid").display().to_string();
    let launcher = script(
        dir.path(),
        "launch",
        "sleep 600 </dev/null >/dev/null 2>&1 &\necho $! > \"$1\"\necho launched\n",
    );
    let stopper = script(dir.path(), "stop", "kill \"$(head -n1 \"$1\")\"\n");
    let started = launch(dir.path(), &[launcher, pidfile.clone()], &pidfile)
        .await
        .unwrap();
    let pid = started.pid;
    let _g = Group(pid);
    assert!(started.child.is_none(), "the launcher is not the instance");
    assert_eq!(process::read_pidfile(&pidfile).unwrap(), pid);
    assert!(process::alive(pid));
    assert!(
        std::fs::read_to_string(dir.path().join("processes.log"))
            .unwrap()
            .contains("launched"),
        "the launcher's stdout is in the log"
    );
    let stopped = process::stop(
        pid,
        Some(&[stopper, pidfile.clone()]),
        Duration::from_secs(10),
        Some(log(dir.path())),
    )
    .await
    .unwrap();
    assert!(stopped.exited, "{stopped:?}");
    assert!(!process::alive(pid));
}

#[tokio::test]
async fn a_failed_launcher_is_explained_by_what_it_printed_after_the_offset() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("processes.log");
    std::fs::write(&log_path, "an earlier process's words\n").unwrap();
    let from = std::fs::metadata(&log_path).unwrap().len();
    let pidfile = dir.path().join("x.pid").display().to_string();
    let failing = script(
        dir.path(),
        "fail",
        "echo 'pg_ctl: could not start server' >&2\nexit 1\n",
    );
    let e = launch(dir.path(), &[failing], &pidfile).await.unwrap_err();
    let msg = process::explain_start_failure(&e, &log_path, from);
    assert_eq!(
        msg,
        "start command exited with exit status: 1; it printed: pg_ctl: could not start server"
    );
    // Another error is itself, and a silent launcher adds nothing.
    let silent = script(dir.path(), "silent", "exit 2\n");
    let from = std::fs::metadata(&log_path).unwrap().len();
    let e = launch(dir.path(), &[silent], &pidfile).await.unwrap_err();
    assert_eq!(
        process::explain_start_failure(&e, &log_path, from),
        "start command exited with exit status: 2"
    );
    let e = ProcessError::EmptyArgv;
    assert_eq!(
        process::explain_start_failure(&e, &log_path, 0),
        "argv is empty"
    );
}

#[tokio::test]
async fn a_launcher_that_fails_or_writes_no_pid_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("x.pid").display().to_string();
    let failing = script(dir.path(), "fail", "exit 3\n");
    let e = launch(dir.path(), &[failing], &pidfile).await.unwrap_err();
    assert!(
        matches!(e, ProcessError::LauncherFailed { .. })
            && e.to_string().contains("exit status: 3"),
        "{e}"
    );
    let garbage = script(dir.path(), "garbage", "echo nope > \"$1\"\n");
    let e = launch(dir.path(), &[garbage, pidfile.clone()], &pidfile)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("does not start with a PID"), "{e}");
    let e = process::start(
        &argv(&["/nonexistent/program"]),
        None,
        Duration::from_secs(10),
        log(dir.path()),
        None,
    )
    .await
    .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("cannot run \"/nonexistent/program\""),
        "{e}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_launcher_still_running_at_the_timeout_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("x.pid").display().to_string();
    let marker = dir.path().join("launcher.pid");
    let hanging = script(
        dir.path(),
        "hang",
        &format!("echo $$ > {}\nexec sleep 600\n", marker.display()),
    );
    let e = process::start(
        &[hanging],
        Some(&pidfile),
        Duration::from_secs(30),
        log(dir.path()),
        None,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e, ProcessError::LauncherTimeout { ms: 30_000 }),
        "{e}"
    );
    // The launcher was killed and reaped before the error (if it got as far as writing its
    // marker: killed between the shell's open and its write, the marker is empty).
    let marked = std::fs::read_to_string(&marker).ok();
    if let Some(pid) = marked.and_then(|t| t.trim().parse::<u32>().ok()) {
        assert!(!process::alive(pid), "the launcher {pid} still runs");
    }
}

#[tokio::test]
async fn a_tree_is_sampled_with_its_descendants() {
    let dir = tempfile::tempdir().unwrap();
    // The root shell only waits; one child burns CPU, another sleeps.
    let tree = script(
        dir.path(),
        "tree",
        "sh -c 'while :; do :; done' &\nsleep 600 &\nwait\n",
    );
    let started = process::start(
        &[tree],
        None,
        Duration::from_secs(10),
        log(dir.path()),
        None,
    )
    .await
    .unwrap();
    let pid = started.pid;
    let _g = Group(pid);
    let own_ticks = |pid: u32| -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let f: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    };
    let hz = process::ticks_per_s();
    // A fifth of a second of CPU in the tree.
    until("the tree to use CPU", || {
        process::usage(pid).is_some_and(|u| u.cpu_ticks >= hz / 5)
    })
    .await;
    let u = process::usage(pid).unwrap();
    assert!(
        u.cpu_ticks > own_ticks(pid),
        "the busy child's ticks count: tree {} vs root {}",
        u.cpu_ticks,
        own_ticks(pid)
    );
    let root_rss: u64 = std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        u.rss_bytes > root_rss * 4096,
        "the children's memory counts"
    );
    // Another process's tree is not this one's.
    let s = process::sample(&[pid, std::process::id()]);
    assert!(s.processes[&pid].cpu_ticks >= hz / 5);
    assert!(s.processes[&std::process::id()].alive);
}

#[tokio::test]
async fn a_zombie_counts_as_exited() {
    let dir = tempfile::tempdir().unwrap();
    let started = process::start(
        &argv(&["true"]),
        None,
        Duration::from_secs(10),
        log(dir.path()),
        None,
    )
    .await
    .unwrap();
    let pid = started.pid;
    // The child is held and not waited on: it stays a zombie.
    let _child = started.child;
    until("true to exit", || state(pid) == Some('Z')).await;
    assert!(!process::alive(pid));
    assert_eq!(process::usage(pid), None);
    assert!(!process::sample(&[pid]).processes[&pid].alive);
    assert!(process::wait_exit(pid, Duration::from_secs(1)).await);
}

#[tokio::test]
async fn refuses_pids_that_are_not_one_process_and_bad_inputs() {
    for (pid, why) in [
        (0, "kill(0) signals the whole process group"),
        (1, "1 is init"),
        (4_194_305, "above the largest PID"),
        (u32::MAX, "above the largest PID"),
    ] {
        let e = process::terminate(pid).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("will not signal PID {pid}: ")) && e.contains(why),
            "{e}"
        );
        let e = process::stop(pid, Some(&argv(&["true"])), Duration::from_secs(1), None)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(why),
            "a stop argv waits on the PID, so it is checked too: {e}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let e = process::start(
        &argv(&["sleep", "1"]),
        Some("run/x.pid"),
        Duration::from_secs(1),
        log(dir.path()),
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "pidfile \"run/x.pid\" is not usable: it is not absolute"
    );
    let e = process::start(
        &argv(&["sleep", "1\0"]),
        None,
        Duration::from_secs(1),
        log(dir.path()),
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(e.to_string(), "argv[1] contains a NUL byte");
    let e = process::start(&[], None, Duration::from_secs(1), log(dir.path()), None)
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "argv is empty");
    let e = process::read_pidfile("/nonexistent/x.pid")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("cannot read pidfile /nonexistent/x.pid: "),
        "{e}"
    );
    // A PID that is gone: SIGTERM fails with the errno.
    let gone = {
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        pid
    };
    let e = process::terminate(gone).unwrap_err().to_string();
    assert!(
        e.contains(&format!("cannot send SIGTERM to PID {gone}")),
        "{e}"
    );
    // A stop argv that fails is an error, with its status.
    let e = process::stop(
        std::process::id(),
        Some(&argv(&["false"])),
        Duration::from_secs(5),
        None,
    )
    .await
    .unwrap_err()
    .to_string();
    assert_eq!(e, "stop command exited with exit status: 1");
}

#[test]
fn the_model_and_the_engine_agree_on_the_largest_pid() {
    assert_eq!(
        bellwether_model::action::PID_MAX,
        bellwether_engine::patch::PID_MAX
    );
}
