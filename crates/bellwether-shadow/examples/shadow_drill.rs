//! The chaos drill's benchmark: `bellwether shadow drill` without the rest of the CLI, so
//! the figures in BENCHMARKS.md come from a release build of this crate alone:
//!
//!     cargo run --release -p bellwether-shadow --example shadow_drill -- RUNS SEED [KINDS] [FAULTS] [--json]
//!
//! KINDS is `sqlite,dir` (default both), FAULTS `corrupt,kill-writer,disk-full` (default all
//! three). The example starts itself again as the writer. Prints one line per run, then the
//! totals; exit code 1 when the drill did not pass.

use std::ffi::OsString;
use std::process::ExitCode;

use bellwether_shadow::drill::{self, writer, DrillOptions, Fault, WriterKind};

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if args.first().and_then(|a| a.to_str()) == Some("--writer-kind") {
        let cfg = match writer::WriterConfig::from_args(args) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        };
        return match writer::run(&cfg) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) if e.is_full() => ExitCode::from(writer::EXIT_FULL as u8),
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let args: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let json = args.iter().any(|a| a == "--json");
    let pos: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let runs: u32 = pos.first().and_then(|s| s.parse().ok()).unwrap_or(20);
    let seed: u64 = pos.get(1).and_then(|s| s.parse().ok()).unwrap_or(2026);
    let kinds: Vec<WriterKind> = pos
        .get(2)
        .map_or("sqlite,dir", |s| s.as_str())
        .split(',')
        .filter_map(|k| match k {
            "sqlite" => Some(WriterKind::Sqlite),
            "dir" => Some(WriterKind::Dir),
            _ => None,
        })
        .collect();
    let faults: Vec<Fault> = pos
        .get(3)
        .map_or("corrupt,kill-writer,disk-full", |s| s.as_str())
        .split(',')
        .filter_map(|f| match f {
            "corrupt" => Some(Fault::Corrupt),
            "kill-writer" => Some(Fault::KillWriter),
            "disk-full" => Some(Fault::DiskFull),
            _ => None,
        })
        .collect();
    if kinds.is_empty() || faults.is_empty() {
        eprintln!(
            "usage: shadow_drill RUNS SEED [sqlite,dir] [corrupt,kill-writer,disk-full] [--json]"
        );
        return ExitCode::from(2);
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: cannot find this program: {e}");
            return ExitCode::FAILURE;
        }
    };
    let opts = DrillOptions {
        kinds,
        faults,
        runs,
        seed,
        writer: vec![exe.into_os_string()],
        work_dir: std::env::temp_dir(),
    };
    let report = drill::run(&opts, |r| {
        let v = r.verdict.as_ref();
        eprintln!(
            "run {:>3} {:?} {:?} {} restored {:?} in {:.0} ms: committed before {}, lost {}, after {}, corrupt {:?}{}",
            r.run,
            r.kind,
            r.fault,
            r.shadow_type,
            r.restored_point,
            r.restore_ms.unwrap_or(f64::NAN),
            v.map_or(0, |v| v.committed_before_point),
            v.map_or(0, |v| v.lost),
            v.map_or(0, |v| v.after_point),
            v.map(|v| &v.corrupt),
            r.error.as_ref().map_or(String::new(), |e| format!(" ERROR {e}"))
                + &r.point_after_fault_failed.as_ref().map_or(String::new(), |e| format!(" (no point after the fault: {e})")),
        );
    });
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    }
    let predicted = report
        .runs_detail
        .iter()
        .filter(|r| r.restored_point.is_some() && r.restored_point == r.predicted_point)
        .count();
    println!(
        "runs {} (seed {}): restored the predicted point in {predicted}; corrupt restores {}, lost commits {} of {} committed before the points, after the point {}, runs that could not run {}; by fault {:?}; by kind {:?}; restore median {:.0} ms, max {:.0} ms; {}",
        report.runs,
        report.seed,
        report.corrupt_restores,
        report.lost_commits,
        report.committed_before_points,
        report.after_point,
        report.failed_runs,
        report.by_fault,
        report.by_kind,
        report.restore_ms_median.unwrap_or(f64::NAN),
        report.restore_ms_max.unwrap_or(f64::NAN),
        if report.passed() { "PASS" } else { "FAIL" }
    );
    if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
