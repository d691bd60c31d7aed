//! The executor against real short processes and temporary roots.

use super::*;

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
    assert!(r.ok, "{r:?}");
    assert_eq!(r.exit_code, Some(0));
    assert_eq!(
        r.stdout_tail.trim(),
        f.root.canonicalize().unwrap().display().to_string()
    );
    assert!(r.finished_ms >= r.started_ms);

    let r = ex.run(&argv(&["ls", "no-such-file"], 10_000)).await;
    assert!(!r.ok);
    assert_eq!(r.exit_code, Some(2));
    assert!(
        r.error.as_deref().unwrap().contains("exited with status 2"),
        "{r:?}"
    );
    assert!(r.stderr_tail.contains("no-such-file"), "{r:?}");
    assert!(!r.timed_out());

    let r = ex.run(&argv(&["/nonexistent/program"], 10_000)).await;
    assert!(!r.ok);
    assert!(
        r.error
            .as_deref()
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
    assert!(r.timed_out(), "{r:?}");
    assert_eq!(
        r.error.as_deref(),
        Some("timed out after 250 ms; \"sleep\" was killed")
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
    assert!(r.ok, "{r:?}");
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
    assert!(r.ok, "{r:?}");
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
        r.error.as_deref(),
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
    assert!(r.ok, "{r:?}");
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
    assert!(r.ok, "{r:?}");
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
        r.error.as_deref(),
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
    assert!(r.ok, "{r:?}");
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
        r.error.as_deref().unwrap().ends_with(
            "memory.max does not exist; is the memory controller enabled for this cgroup?"
        ),
        "{r:?}"
    );

    let no_cgroup = Executor::new(f.root.clone(), &f.state, &[], None).unwrap();
    let r = no_cgroup.run(&spec).await;
    assert_eq!(
        r.error.as_deref(),
        Some("set_cgroup needs the agent started with --cgroup DIR")
    );
}
