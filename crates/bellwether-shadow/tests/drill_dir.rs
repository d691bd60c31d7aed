//! The chaos drill on the directory kind with a real writer process: each fault, a few
//! seeded runs, and the verdicts the benchmark counts.

use std::ffi::OsString;

use bellwether_shadow::drill::{self, DrillOptions, Fault, WriterKind};

fn opts(fault: Fault, runs: u32, seed: u64, work: &std::path::Path) -> DrillOptions {
    DrillOptions {
        kinds: vec![WriterKind::Dir],
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
    assert!(r.passed(), "{json}");
    assert!(
        r.committed_before_points > 0,
        "the drill checked nothing: {json}"
    );
    for run in &r.runs_detail {
        let v = run.verdict.as_ref().expect("a verdict");
        assert!(v.restored > 0, "{json}");
        assert_ne!(run.restored_point, None);
    }
}

#[test]
fn kill_writer_restores_every_commit_before_the_point_and_nothing_after() {
    let tmp = tempfile::tempdir().unwrap();
    let r = drill::run(&opts(Fault::KillWriter, 3, 1, tmp.path()), |_| {});
    assert_passed(&r);
}

#[test]
fn corruption_of_a_live_file_is_undone_by_the_restore() {
    let tmp = tempfile::tempdir().unwrap();
    let r = drill::run(&opts(Fault::Corrupt, 3, 2, tmp.path()), |_| {});
    assert_passed(&r);
}

#[test]
fn a_full_disk_fails_the_first_restore_cleanly_and_the_second_succeeds() {
    let tmp = tempfile::tempdir().unwrap();
    let r = drill::run(&opts(Fault::DiskFull, 2, 3, tmp.path()), |_| {});
    let json = serde_json::to_string_pretty(&r).unwrap();
    if let Some(e) = r.runs_detail.iter().find_map(|x| x.error.as_ref()) {
        assert!(
            !e.contains("mount -t tmpfs"),
            "this test needs root to mount a tmpfs: {e}"
        );
    }
    assert_passed(&r);
    for run in &r.runs_detail {
        assert_eq!(run.writer_hit_full_disk, Some(true), "{json}");
        let first = run.restore_on_full_disk.as_deref().unwrap();
        if first.starts_with("failed") {
            assert!(first.contains("No space left"), "{json}");
            assert_eq!(
                run.live_untouched_after_failed_restore,
                Some(true),
                "{json}"
            );
        }
    }
}
