//! `bellwether detect`: score a metric series for anomalies, CSV in and CSV out.
//!
//! The parsing and the detectors live in `bellwether-detect`; this module only opens the files.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use bellwether_detect::anomaly::DetectorKind;
use bellwether_detect::series::parse_series;
use bellwether_model::text::{count, Escaped};

use super::UsageError;

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Input: a CSV with a header naming `timestamp` and `value` (other columns are ignored).
Timestamps are `YYYY-MM-DD HH:MM:SS[.fff]` (UTC; `T`, `Z` and offsets such as `+01:00` accepted,
offsets converted to UTC) or Unix seconds; the day must exist (`2024-02-30` is an error). Rows keep their order: equal timestamps are accepted (a
clock change repeats an hour), and a timestamp before the previous row's is accepted with a
warning naming the file and line. `NaN` or an empty value is skipped by
the detector (score 0, alert 0); `inf`, magnitudes above 1e150 and values a million times the
recent range outside it score 1 and alert, but are never learnt (docs/detect.md).

Output: one row per input row, `timestamp,value,score,alert`; `score` is in [0, 1] and `alert`
is the detector's own decision (0 or 1).

On success it prints a summary (rows, alerts, detector) on stderr, or on stdout when
the scores go to a file.

Example (from a clone: examples/nab holds two series of the NAB corpus, github.com/numenta/NAB):
  bellwether detect --input examples/nab/data/realKnownCause/ec2_request_latency_system_failure.csv \
    --output latency.csv")]
pub struct Args {
    /// The series to score (CSV with `timestamp,value`).
    #[arg(long, value_name = "SERIES.csv")]
    input: PathBuf,
    /// Where to write `timestamp,value,score,alert` (`-` for standard output).
    #[arg(long, value_name = "OUT.csv")]
    output: PathBuf,
    /// The detector: two-scale-entropy (default; best on NAB), seasonal-cusum (best on
    /// deployment faults: recall, delay and false alarms; weaker on NAB), seasonal-entropy (the
    /// two together; see docs/detect.md), relative-entropy, seasonal,
    /// bellwether, robust-z, ewma, record, windowed-gaussian (NAB's baseline: scores only, never
    /// alerts), or cad (CAD OSE with its range learnt from the first 750 points; slow and
    /// memory-hungry).
    #[arg(long, value_name = "NAME", default_value = "two-scale-entropy", value_parser = parse_detector)]
    detector: DetectorKind,
}

/// `Scored 4032 rows of latency.csv with two-scale-entropy: 12 alerts; wrote scores.csv.`
fn summary(
    input: &str,
    rows: usize,
    alerts: usize,
    detector: &str,
    wrote: Option<&std::path::Path>,
) -> String {
    let wrote = wrote.map_or(String::new(), |p| format!("; wrote {}", p.display()));
    format!(
        "Scored {} of {} with {detector}: {}{wrote}.",
        count(rows, "row"),
        Escaped(input),
        count(alerts, "alert"),
    )
}

pub(crate) fn parse_detector(s: &str) -> Result<DetectorKind, String> {
    DetectorKind::parse(s).ok_or_else(|| {
        let names: Vec<&str> = DetectorKind::ALL.iter().map(|k| k.name()).collect();
        format!(
            "unknown detector `{s}`; expected one of {}",
            names.join(", ")
        )
    })
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let name = args.input.display().to_string();
    let text = std::fs::read_to_string(&args.input)
        .map_err(|e| UsageError(format!("{name}: cannot read: {e}")))?;
    let series = parse_series(&name, &text).map_err(|e| UsageError(e.to_string()))?;
    for w in &series.warnings {
        tracing::warn!(warning = %w, "A timestamp goes back.");
    }
    if series.backwards > series.warnings.len() {
        tracing::warn!(
            input = %name,
            rows = series.backwards,
            shown = series.warnings.len(),
            "More timestamps go back than are shown."
        );
    }
    let mut detector = args.detector.build();
    let mut out = String::with_capacity(text.len() + series.points.len() * 12);
    out.push_str("timestamp,value,score,alert\n");
    let mut alerts = 0usize;
    for (p, ts) in series.points.iter().zip(&series.timestamp_text) {
        let v = detector.observe(p.ts_ms, p.value);
        alerts += usize::from(v.alert);
        let value = if p.value.is_nan() {
            "NaN".to_string()
        } else {
            p.value.to_string()
        };
        let _ = writeln!(out, "{ts},{value},{:.6},{}", v.score, u8::from(v.alert));
    }
    let to_stdout = args.output.as_os_str() == "-";
    if to_stdout {
        print!("{out}");
    } else {
        std::fs::write(&args.output, out)
            .with_context(|| format!("{}: cannot write", args.output.display()))?;
    }
    let summary = summary(
        &name,
        series.points.len(),
        alerts,
        args.detector.name(),
        (!to_stdout).then_some(args.output.as_path()),
    );
    // Beside the scores on stdout the summary goes to stderr, so that the CSV stays clean.
    if to_stdout {
        eprintln!("{summary}");
    } else {
        println!("{summary}");
    }
    tracing::info!(
        input = %name,
        points = series.points.len(),
        alerts,
        detector = %args.detector,
        "Scored the series."
    );
    Ok(ExitCode::SUCCESS)
}
