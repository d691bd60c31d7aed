//! The chaos drill on the SQLite kind: a real writer process committing in WAL mode, the
//! SQLite shadow of `bellwether_shadow::sqlite` following it, each fault, and the verdicts.

use std::ffi::OsString;

use bellwether_shadow::drill::{self, DrillOptions, Fault, WriterKind};

fn opts(fault: Fault, runs: u32, seed: u64, work: &std::path::Path) -> DrillOptions {
    DrillOptions {
        kinds: vec![WriterKind::Sqlite],
        faults: vec![fault],
        runs,
        seed,
        writer: vec![OsString::from(env!(
            "CARGO_BIN_EXE_bellwether-shadow-drill-writer"
        ))],
        work_dir: work.to_path_buf(),
    }
}

fn assert_passed(r: &drill::DrillReport) {
    let json = serde_json::to_string_pretty(r).unwrap();
    if let Some(e) = r.runs_detail.iter().find_map(|x| x.error.as_ref()) {
        assert!(
            !e.contains("mount -t tmpfs"),
            "this test needs root to mount a tmpfs: {e}"
        );
    }
    assert!(r.passed(), "{json}");
    assert!(
        r.committed_before_points > 0,
        "the drill checked nothing: {json}"
    );
    for run in &r.runs_detail {
        let v = run.verdict.as_ref().expect("a verdict");
        assert!(v.restored > 0, "{json}");
    }
}

#[test]
fn sqlite_kill_writer() {
    let tmp = tempfile::tempdir().unwrap();
    assert_passed(&drill::run(
        &opts(Fault::KillWriter, 3, 11, tmp.path()),
        |_| {},
    ));
}

#[test]
fn sqlite_corrupt() {
    let tmp = tempfile::tempdir().unwrap();
    assert_passed(&drill::run(
        &opts(Fault::Corrupt, 3, 12, tmp.path()),
        |_| {},
    ));
}

#[test]
fn sqlite_disk_full() {
    let tmp = tempfile::tempdir().unwrap();
    let r = drill::run(&opts(Fault::DiskFull, 2, 13, tmp.path()), |_| {});
    assert_passed(&r);
    for run in &r.runs_detail {
        assert_eq!(run.writer_hit_full_disk, Some(true), "{run:?}");
        if run
            .restore_on_full_disk
            .as_deref()
            .is_some_and(|s| s.starts_with("failed"))
        {
            assert_eq!(
                run.live_untouched_after_failed_restore,
                Some(true),
                "{run:?}"
            );
        }
    }
}
