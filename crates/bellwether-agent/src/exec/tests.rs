//! The executor against real short processes and temporary roots.

use super::*;

/// The parts of a report the tests look at.
trait ReportView {
    fn error(&self) -> Option<&str>;
    fn exit_code(&self) -> Option<i32>;
    fn timed_out(&self) -> bool;
}

impl ReportView for ActionReport {
    fn error(&self) -> Option<&str> {
        match &self.outcome {
            ActionOutcome::Failed { error, .. } => Some(error),
            ActionOutcome::Refused { reason } => Some(reason),
            ActionOutcome::Ok | ActionOutcome::TimedOut { .. } => None,
        }
    }

    fn exit_code(&self) -> Option<i32> {
        match &self.outcome {
            ActionOutcome::Ok => Some(0),
            ActionOutcome::Failed { exit_code, .. } => *exit_code,
            _ => None,
        }
    }

    fn timed_out(&self) -> bool {
        matches!(self.outcome, ActionOutcome::TimedOut { .. })
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    state: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let state = dir.path().join("state");
    std::fs::create_dir_all(root.join("etc/websvc")).unwrap();
    std::fs::create_dir_all(root.join("var/lib/dpkg")).unwrap();
    std::fs::write(root.join("etc/websvc.conf"), "workers = 4\n").unwrap();
    std::fs::write(
        root.join(DPKG_STATUS),
        "Package: libssl1.1\nStatus: install ok installed\nVersion: 1.1.1n-0\n\nPackage: zlib1g\nStatus: install ok installed\nVersion: 1:1.2.13\n",
    )
    .unwrap();
    Fixture {
        _dir: dir,
        root,
        state,
    }
}

fn argv(args: &[&str], timeout_ms: u64) -> ActionSpec {
    ActionSpec::Argv {
        argv: args.iter().map(|s| s.to_string()).collect(),
        timeout_ms,
    }
}

#[tokio::test]
async fn argv_runs_in_the_rootfs_and_keeps_the_output() {
    let f = fixture();
    let ex = Executor::new(f.root.clone(), &f.state, &[], None).unwrap();
    let r = ex.run(&argv(&["pwd"], 10_000)).await;
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(r.exit_code(), Some(0));
    assert_eq!(
        r.stdout_tail.trim(),
        f.root.canonicalize().unwrap().display().to_string()
    );
    assert!(r.finished_ms >= r.started_ms);

    let r = ex.run(&argv(&["ls", "no-such-file"], 10_000)).await;
    assert!(!r.is_ok());
    assert_eq!(r.exit_code(), Some(2));
    assert!(r.error().unwrap().contains("exited with status 2"), "{r:?}");
    assert!(r.stderr_tail.contains("no-such-file"), "{r:?}");
    assert!(!r.timed_out());

    let r = ex.run(&argv(&["/nonexistent/program"], 10_000)).await;
    assert!(!r.is_ok());
    assert!(
        r.error()
            .unwrap()
            .starts_with("could not start \"/nonexistent/program\""),
        "{r:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn argv_past_its_timeout_is_killed_and_reported_timed_out() {
    let f = fixture();
    let ex = Executor::new(f.root.clone(), &f.state, &[], None).unwrap();
    let before = tokio::time::Instant::now();
    let r = ex.run(&argv(&["sleep", "600"], 250)).await;
    assert_eq!(
        r.outcome,
        ActionOutcome::TimedOut { after_ms: 250 },
        "{r:?}"
    );
    assert_eq!(
        tokio::time::Instant::now() - before,
        Duration::from_millis(250)
    );
}

#[test]
fn tails_keep_the_last_bytes() {
    let long = "x".repeat(TAIL_BYTES) + "END";
    let t = tail(long.as_bytes());
    assert_eq!(t.len(), TAIL_BYTES);
    assert!(t.ends_with("END"));
    assert_eq!(tail(b"short"), "short");
}

#[tokio::test]
async fn set_service_version_writes_the_version_file() {
    let f = fixture();
    let ex = Executor::new(f.root.clone(), &f.state, &[], None).unwrap();
    let r = ex
        .run(&ActionSpec::SetServiceVersion {
            version: "2".into(),
            timeout_ms: None,
        })
        .await;
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(
        std::fs::read_to_string(f.root.join(VERSION_FILE)).unwrap(),
        "2\n"
    );
}

#[tokio::test]
async fn restore_file_brings_back_the_start_time_copy_even_after_a_restart() {
    let f = fixture();
    let protect = vec!["etc/websvc.conf".to_string()];
    let _first = Executor::new(f.root.clone(), &f.state, &protect, None).unwrap();
    std::fs::write(f.root.join("etc/websvc.conf"), "workers = 1\n").unwrap();
    // A restarted agent keeps the first snapshot rather than adopting the drift.
    let ex = Executor::new(f.root.clone(), &f.state, &protect, None).unwrap();
    let r = ex
        .run(&ActionSpec::RestoreFile {
            path: "etc/websvc.conf".into(),
            timeout_ms: None,
        })
        .await;
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(
        std::fs::read_to_string(f.root.join("etc/websvc.conf")).unwrap(),
        "workers = 4\n"
    );

    let r = ex
        .run(&ActionSpec::RestoreFile {
            path: "etc/other.conf".into(),
            timeout_ms: None,
        })
        .await;
    assert_eq!(
        r.error(),
        Some("etc/other.conf has no snapshot; start the agent with --protect etc/other.conf")
    );
}

#[test]
fn protect_paths_are_checked_and_must_exist() {
    let f = fixture();
    let err = Executor::new(f.root.clone(), &f.state, &["../etc/passwd".into()], None).unwrap_err();
    assert!(
        err.to_string().starts_with("--protect \"../etc/passwd\": "),
        "{err}"
    );
    let err = Executor::new(f.root.clone(), &f.state, &["etc/missing".into()], None).unwrap_err();
    assert!(
        err.to_string().starts_with("--protect etc/missing: "),
        "{err}"
    );
    let err = Executor::new(f.root.clone(), &f.state, &[], Some(f.root.join("nope"))).unwrap_err();
    assert!(err.to_string().ends_with("nope: not a directory"), "{err}");
}

#[tokio::test]
async fn reinstall_package_restores_its_dpkg_stanza_only() {
    let f = fixture();
    let ex = Executor::new(f.root.clone(), &f.state, &[], None).unwrap();
    std::fs::write(
        f.root.join(DPKG_STATUS),
        "Package: libssl1.1\nStatus: install ok installed\nVersion: 1.1.1n-0+evil\n\nPackage: zlib1g\nStatus: install ok installed\nVersion: 1:1.2.14\n",
    )
    .unwrap();
    let r = ex
        .run(&ActionSpec::ReinstallPackage {
            package: "libssl1.1".into(),
            timeout_ms: None,
        })
        .await;
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(
        std::fs::read_to_string(f.root.join(DPKG_STATUS)).unwrap(),
        "Package: libssl1.1\nStatus: install ok installed\nVersion: 1.1.1n-0\n\nPackage: zlib1g\nStatus: install ok installed\nVersion: 1:1.2.14\n",
        "only the reinstalled package goes back"
    );
    // A package removed since is put back.
    std::fs::write(
        f.root.join(DPKG_STATUS),
        "Package: zlib1g\nVersion: 1:1.2.13\n",
    )
    .unwrap();
    let r = ex
        .run(&ActionSpec::ReinstallPackage {
            package: "libssl1.1".into(),
            timeout_ms: None,
        })
        .await;
    assert!(r.is_ok(), "{r:?}");
    let text = std::fs::read_to_string(f.root.join(DPKG_STATUS)).unwrap();
    assert!(
        text.contains("Package: libssl1.1\nStatus: install ok installed\nVersion: 1.1.1n-0"),
        "{text}"
    );
    let r = ex
        .run(&ActionSpec::ReinstallPackage {
            package: "nginx".into(),
            timeout_ms: None,
        })
        .await;
    assert_eq!(
        r.error(),
        Some("package nginx was not installed when the agent started")
    );
}

#[tokio::test]
async fn set_cgroup_writes_the_control_files() {
    let f = fixture();
    // A temporary directory stands in for /sys/fs/cgroup/<group>: the control files exist.
    let cg = f.root.parent().unwrap().join("cgroup");
    std::fs::create_dir_all(&cg).unwrap();
    std::fs::write(cg.join("cpu.max"), "max 100000\n").unwrap();
    std::fs::write(cg.join("memory.max"), "max\n").unwrap();
    let ex = Executor::new(f.root.clone(), &f.state, &[], Some(cg.clone())).unwrap();
    let spec = ActionSpec::SetCgroup {
        cpu_max: Some("50000 100000".into()),
        memory_max: Some("512M".into()),
        timeout_ms: None,
    };
    let r = ex.run(&spec).await;
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(
        std::fs::read_to_string(cg.join("cpu.max")).unwrap(),
        "50000 100000\n"
    );
    assert_eq!(
        std::fs::read_to_string(cg.join("memory.max")).unwrap(),
        "512M\n"
    );

    std::fs::remove_file(cg.join("memory.max")).unwrap();
    let r = ex.run(&spec).await;
    assert!(
        r.error().unwrap().ends_with(
            "memory.max does not exist; is the memory controller enabled for this cgroup?"
        ),
        "{r:?}"
    );

    let no_cgroup = Executor::new(f.root.clone(), &f.state, &[], None).unwrap();
    let r = no_cgroup.run(&spec).await;
    assert_eq!(
        r.error(),
        Some("set_cgroup needs the agent started with --cgroup DIR")
    );
}

/// A directory next to the fixture's root, outside it, holding files a built-in must never
/// touch.
fn outside(f: &Fixture) -> PathBuf {
    let dir = f.root.parent().unwrap().join("outside");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("version"), "outside\n").unwrap();
    std::fs::write(dir.join("websvc.conf"), "outside = true\n").unwrap();
    dir
}

#[tokio::test]
async fn set_service_version_never_writes_through_a_directory_linked_outside() {
    let f = fixture();
    let out = outside(&f);
    std::fs::remove_dir(f.root.join("etc/websvc")).unwrap();
    std::os::unix::fs::symlink(&out, f.root.join("etc/websvc")).unwrap();
    let ex = Executor::new(f.root.clone(), &f.state, &[], None).unwrap();
    let r = ex
        .run(&ActionSpec::SetServiceVersion {
            version: "2".into(),
            timeout_ms: None,
        })
        .await;
    assert!(!r.is_ok(), "{r:?}");
    let err = r.error().unwrap().to_owned();
    assert!(
        err.starts_with(&format!(
            "could not write etc/websvc/version in the rootfs {}: ",
            f.root.display()
        )) && err.contains(&format!(
            "etc/websvc is a symbolic link to {:?}",
            out.display().to_string()
        )),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("version")).unwrap(),
        "outside\n"
    );
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 2, "nothing new");
}

#[tokio::test]
async fn restore_file_never_follows_a_link_planted_at_a_temporary_name() {
    let f = fixture();
    let out = outside(&f);
    let protect = vec!["etc/websvc.conf".to_string()];
    let ex = Executor::new(f.root.clone(), &f.state, &protect, None).unwrap();
    std::fs::write(f.root.join("etc/websvc.conf"), "workers = 0\n").unwrap();
    // The temporary name the agent used to write through, planted as a link to a file
    // outside the root.
    std::os::unix::fs::symlink(
        out.join("websvc.conf"),
        f.root.join("etc/.websvc.conf.bellwether-tmp"),
    )
    .unwrap();
    let r = ex
        .run(&ActionSpec::RestoreFile {
            path: "etc/websvc.conf".into(),
            timeout_ms: None,
        })
        .await;
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(
        std::fs::read_to_string(f.root.join("etc/websvc.conf")).unwrap(),
        "workers = 4\n"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("websvc.conf")).unwrap(),
        "outside = true\n",
        "the file outside is untouched"
    );
}

#[tokio::test]
async fn a_protected_file_under_a_directory_linked_outside_is_neither_snapshotted_nor_restored() {
    let f = fixture();
    let out = outside(&f);
    // Snapshot: the agent refuses to start rather than keep a copy of a file outside.
    std::fs::create_dir_all(f.root.join("etc/app")).unwrap();
    std::fs::remove_dir(f.root.join("etc/app")).unwrap();
    std::os::unix::fs::symlink(&out, f.root.join("etc/app")).unwrap();
    let protect = vec!["etc/app/websvc.conf".to_string()];
    let err = Executor::new(f.root.clone(), &f.state, &protect, None).unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("--protect etc/app/websvc.conf: ")
            && text.contains("etc/app is a symbolic link to"),
        "{text}"
    );
    assert!(!f.state.join("protected/etc/app/websvc.conf").exists());

    // Restore: the snapshot was taken while etc/app was a directory; the link comes later.
    std::fs::remove_file(f.root.join("etc/app")).unwrap();
    std::fs::create_dir_all(f.root.join("etc/app")).unwrap();
    std::fs::write(f.root.join("etc/app/websvc.conf"), "workers = 4\n").unwrap();
    let ex = Executor::new(f.root.clone(), &f.state, &protect, None).unwrap();
    std::fs::remove_dir_all(f.root.join("etc/app")).unwrap();
    std::os::unix::fs::symlink(&out, f.root.join("etc/app")).unwrap();
    let r = ex
        .run(&ActionSpec::RestoreFile {
            path: "etc/app/websvc.conf".into(),
            timeout_ms: None,
        })
        .await;
    assert!(!r.is_ok(), "{r:?}");
    assert!(
        r.error()
            .unwrap()
            .starts_with("could not write etc/app/websvc.conf in the rootfs "),
        "{r:?}"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("websvc.conf")).unwrap(),
        "outside = true\n"
    );
}

#[tokio::test]
async fn reinstall_package_reads_and_writes_inside_the_root_only() {
    let f = fixture();
    let out = outside(&f);
    let ex = Executor::new(f.root.clone(), &f.state, &[], None).unwrap();
    std::fs::write(out.join("status"), "Package: outside\n").unwrap();
    std::fs::remove_file(f.root.join(DPKG_STATUS)).unwrap();
    std::os::unix::fs::symlink(out.join("status"), f.root.join(DPKG_STATUS)).unwrap();
    let r = ex
        .run(&ActionSpec::ReinstallPackage {
            package: "libssl1.1".into(),
            timeout_ms: None,
        })
        .await;
    assert!(!r.is_ok(), "{r:?}");
    assert!(
        r.error().unwrap().contains("is a symbolic link to"),
        "{r:?}"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("status")).unwrap(),
        "Package: outside\n"
    );
}

#[test]
fn allow_list_grammar() {
    let a = AllowList::parse(&[
        "set_service_version",
        "exec:/usr/bin/systemctl,restart",
        "exec:/bin/true",
    ])
    .unwrap();
    assert_eq!(
        a.to_string(),
        "set_service_version, exec:/usr/bin/systemctl,restart, exec:/bin/true"
    );
    let ok = |s: &ActionSpec| a.check(s).is_ok();
    assert!(ok(&ActionSpec::SetServiceVersion {
        version: "2".into(),
        timeout_ms: None
    }));
    assert!(!ok(&ActionSpec::RestoreFile {
        path: "etc/x".into(),
        timeout_ms: None
    }));
    assert!(ok(&argv(
        &["/usr/bin/systemctl", "restart", "websvc"],
        1000
    )));
    assert!(ok(&argv(&["/usr/bin/systemctl", "restart"], 1000)));
    assert!(
        !ok(&argv(&["/usr/bin/systemctl"], 1000)),
        "shorter than the prefix"
    );
    assert!(!ok(&argv(&["/usr/bin/systemctl", "stop", "websvc"], 1000)));
    assert!(!ok(&argv(&["systemctl", "restart", "websvc"], 1000)));
    assert!(ok(&argv(&["/bin/true", "anything"], 1000)));
    assert_eq!(
        a.check(&argv(&["rm", "-rf", "/"], 1000)).unwrap_err(),
        "refused by this agent's --allow-action list: argv [\"rm\", \"-rf\", \"/\"] matches none of \
         set_service_version, exec:/usr/bin/systemctl,restart, exec:/bin/true"
    );
    assert!(AllowList::parse::<&str>(&[]).unwrap().allows_everything());
    assert!(AllowList::parse::<&str>(&[])
        .unwrap()
        .check(&argv(&["rm"], 1000))
        .is_ok());
    for (bad, why) in [
        ("exec:", "the program is empty"),
        ("exec:/bin/x,", "argument 1 is empty"),
        ("exec:/bin/x,,y", "argument 1 is empty"),
        ("restore", "expected a built-in"),
        ("exec", "expected a built-in"),
        ("", "expected a built-in"),
    ] {
        let e = AllowList::parse(&[bad]).unwrap_err();
        assert!(
            e.starts_with(&format!("--allow-action {bad:?}: ")) && e.contains(why),
            "{bad:?}: {e}"
        );
    }
}

#[tokio::test]
async fn a_refused_action_runs_nothing_and_fails_with_the_reason() {
    let f = fixture();
    let ex = Executor::new(f.root.clone(), &f.state, &[], None)
        .unwrap()
        .with_allow_list(AllowList::parse(&["restore_file"]).unwrap());
    let marker = f.root.join("ran");
    let r = ex
        .run(&argv(&["touch", marker.to_str().unwrap()], 10_000))
        .await;
    assert!(!r.is_ok() && !r.timed_out(), "{r:?}");
    assert!(
        r.error()
            .unwrap()
            .starts_with("refused by this agent's --allow-action list: argv [\"touch\""),
        "{r:?}"
    );
    assert!(!marker.exists(), "nothing ran");
    let r = ex
        .run(&ActionSpec::SetServiceVersion {
            version: "2".into(),
            timeout_ms: None,
        })
        .await;
    assert_eq!(
        r.error(),
        Some("refused by this agent's --allow-action list: built-in set_service_version matches none of restore_file")
    );
    assert!(!f.root.join(VERSION_FILE).exists());
}
