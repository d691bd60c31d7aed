//! `bellwether shadow drill`: the chaos drill of data shadows (`bellwether_shadow::drill`). A
//! real writer (this binary again, in a hidden mode) commits to a SQLite database in WAL mode
//! or churns a directory; a shadow follows it; a fault is injected; the data is restored to
//! the latest point before the fault and checked against the writer's own log. Exit code 0
//! when every run restored whole data with nothing lost and nothing from after the point, 1
//! otherwise.

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::Context as _;
use bellwether_shadow::drill::{self, writer, DrillOptions, DrillReport, Fault, WriterKind};

use super::{OutputFormat, UsageError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FaultArg {
    /// Overwrite 256 bytes of the live data in place.
    Corrupt,
    /// SIGKILL the writer in the middle of a transaction.
    KillWriter,
    /// Fill the live data's file system (a tmpfs the drill mounts; needs root).
    DiskFull,
    /// Each run picks one of the three.
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KindArg {
    Sqlite,
    Dir,
}

#[derive(Debug, clap::Args)]
#[command(after_long_help = "\
Examples:
  bellwether shadow drill --fault kill-writer --kind sqlite --runs 20
  bellwether shadow drill --fault all --runs 200 --seed 13 --output json

Each run: a writer process commits numbered transactions (SQLite in WAL mode, or files
replaced and deleted in a directory) and logs each commit outside the data; a shadow (full,
differential or, for SQLite, transactional, chosen by the seed) takes points on a schedule
and one for a predicted failure; the fault comes; the writer is stopped; the live data is
restored to the latest point before the fault and checked: SQLite's integrity_check, every
byte against what the writer wrote, every transaction committed before the point present,
none begun after it. With disk-full the first restore is tried on the full disk (it must fail
without touching the live data, or succeed whole), then the disk is freed and it is retried.
See docs/shadow-drill.md.")]
pub struct Args {
    /// The fault to inject (repeat the flag to mix several; `all` mixes the three).
    #[arg(long, value_enum, required_unless_present = "writer_kind")]
    fault: Vec<FaultArg>,
    /// The kind of data (repeat to mix; default both).
    #[arg(long, value_enum)]
    kind: Vec<KindArg>,
    /// How many runs.
    #[arg(long, default_value_t = 10)]
    runs: u32,
    /// The seed of the first run (each run's own seed derives from it); default: the clock.
    #[arg(long)]
    seed: Option<u64>,
    /// Where runs make their directories (default: the system's temporary directory).
    #[arg(long, value_name = "DIR")]
    work_dir: Option<std::path::PathBuf>,
    #[arg(long, value_enum, default_value = "human")]
    output: OutputFormat,

    // The writer's own mode: the drill starts this binary again with these.
    #[arg(long, hide = true, value_name = "KIND")]
    writer_kind: Option<String>,
    #[arg(long, hide = true, value_name = "PATH", requires = "writer_kind")]
    writer_target: Option<OsString>,
    #[arg(long, hide = true, value_name = "PATH", requires = "writer_kind")]
    writer_log: Option<OsString>,
    #[arg(long, hide = true, value_name = "N", requires = "writer_kind")]
    writer_seed: Option<String>,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    if let Some(kind) = a.writer_kind {
        return run_writer(kind, a.writer_target, a.writer_log, a.writer_seed);
    }
    if !(1..=100_000).contains(&a.runs) {
        return Err(UsageError(format!("--runs {} is outside [1, 100000]", a.runs)).into());
    }
    let faults = if a.fault.contains(&FaultArg::All) {
        Fault::ALL.to_vec()
    } else {
        a.fault
            .iter()
            .map(|f| match f {
                FaultArg::Corrupt => Fault::Corrupt,
                FaultArg::KillWriter => Fault::KillWriter,
                FaultArg::DiskFull => Fault::DiskFull,
                FaultArg::All => Fault::Corrupt,
            })
            .collect()
    };
    let mut kinds: Vec<WriterKind> = a
        .kind
        .iter()
        .map(|k| match k {
            KindArg::Sqlite => WriterKind::Sqlite,
            KindArg::Dir => WriterKind::Dir,
        })
        .collect();
    if kinds.is_empty() {
        kinds = vec![WriterKind::Sqlite, WriterKind::Dir];
    }
    let work_dir = a.work_dir.unwrap_or_else(std::env::temp_dir);
    if !work_dir.is_dir() {
        return Err(UsageError(format!(
            "--work-dir {} is not a directory",
            work_dir.display()
        ))
        .into());
    }
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let exe = std::env::current_exe().context("finding this program to start the writer")?;
    let opts = DrillOptions {
        kinds,
        faults,
        runs: a.runs,
        seed,
        writer: vec![exe.into_os_string(), "shadow".into(), "drill".into()],
        work_dir,
    };
    let human = a.output == OutputFormat::Human;
    let report = drill::run(&opts, |r| {
        if human {
            eprintln!("{}", run_line(r));
        }
    });
    match a.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        OutputFormat::Human => print_human(&report),
    }
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn run_writer(
    kind: String,
    target: Option<OsString>,
    log: Option<OsString>,
    seed: Option<String>,
) -> anyhow::Result<ExitCode> {
    let mut args: Vec<OsString> = vec!["--writer-kind".into(), kind.into()];
    for (flag, v) in [
        ("--writer-target", target),
        ("--writer-log", log),
        ("--writer-seed", seed.map(OsString::from)),
    ] {
        if let Some(v) = v {
            args.push(flag.into());
            args.push(v);
        }
    }
    let cfg = writer::WriterConfig::from_args(args).map_err(UsageError)?;
    match writer::run(&cfg) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if e.is_full() => Ok(ExitCode::from(writer::EXIT_FULL as u8)),
        Err(e) => Err(e.into()),
    }
}

fn run_line(r: &drill::RunReport) -> String {
    let kind = match r.kind {
        WriterKind::Sqlite => "sqlite",
        WriterKind::Dir => "dir",
    };
    let fault = serde_json::to_value(r.fault)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    match (&r.error, &r.verdict) {
        (Some(e), _) => format!("run {:>3} {kind:<6} {fault:<11} seed {:>20}: could not run: {e}", r.run, r.seed),
        (None, Some(v)) => format!(
            "run {:>3} {kind:<6} {fault:<11} {:<14} seed {:>20}: restored {} ({}), {} committed before it, lost {}, after it {}, {}{}",
            r.run,
            r.shadow_type,
            r.seed,
            r.restored_point.as_deref().unwrap_or("-"),
            r.restore_ms.map_or("-".into(), |ms| format!("{ms:.0} ms")),
            v.committed_before_point,
            v.lost,
            v.after_point,
            if v.corrupt.is_empty() { "whole".to_string() } else { format!("CORRUPT: {}", v.corrupt.join("; ")) },
            if r.live_untouched_after_failed_restore == Some(false) { "; a failed restore changed the live data" } else { "" },
        ),
        (None, None) => format!("run {:>3}: no verdict", r.run),
    }
}

fn print_human(r: &DrillReport) {
    println!(
        "drill: {} runs (seed {}), {} could not run",
        r.runs, r.seed, r.failed_runs
    );
    for (f, n) in &r.by_fault {
        if *n > 0 {
            println!(
                "  {n} × {}",
                serde_json::to_value(f)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            );
        }
    }
    println!("  corrupt restores: {}", r.corrupt_restores);
    println!(
        "  committed transactions before the points: {}, lost: {}",
        r.committed_before_points, r.lost_commits
    );
    println!(
        "  transactions from after the point restored: {}",
        r.after_point
    );
    if let (Some(med), Some(max)) = (r.restore_ms_median, r.restore_ms_max) {
        println!("  restore time: median {med:.0} ms, max {max:.0} ms");
    }
    println!("  verdict: {}", if r.passed() { "pass" } else { "FAIL" });
}
