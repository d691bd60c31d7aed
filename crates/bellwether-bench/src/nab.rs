//! `bellwether bench nab`: run a detector over the Numenta Anomaly Benchmark corpus and print
//! its normalised NAB scores, the artificial-file alert figures, throughput and memory.
//!
//! The scorer is `bellwether_detect::nab` (pure); this module only reads the corpus files.

use std::path::{Path, PathBuf};

use bellwether_detect::anomaly::{Detector, DetectorKind, RelativeEntropy};
use bellwether_detect::cad::{Cad, CadConfig, CadRange};
use bellwether_detect::nab::probation_len;
use bellwether_detect::nab::{parse_windows, score_verdicts, CorpusFile, Evaluation, LabelledFile};
use bellwether_detect::series::parse_series;

use crate::detect_faults::timed;
use crate::{BenchError, Context as _, Output, Result, Verdict};

#[derive(Debug, Clone)]
pub struct Options {
    /// The NAB checkout (holding `data/` and `labels/`).
    pub nab_dir: PathBuf,
    /// The detector to run (see `bellwether detect --help`); `all` runs every detector, and
    /// `nab-relative-entropy` runs the port of NAB's relativeEntropy with NAB's lookahead of each
    /// file's range (to check the scorer against NAB's published 54.6 / 47.6 / 58.8), and
    /// `nab-cad` the CAD OSE port as NAB runs it (each file's range, rest period probation / 5;
    /// published 69.9 / 67.0 / 73.2).
    pub detector: String,
    /// human (default) or json.
    pub output: Output,
}

/// The NAB scoreboard (NAB README, v1.1): standard, reward low FP, reward low FN.
const SCOREBOARD: [(&str, f64, f64, f64); 6] = [
    ("ARTime", 74.9, 65.1, 80.4),
    ("Numenta HTM", 70.5, 62.6, 75.2),
    ("CAD OSE", 69.9, 67.0, 73.2),
    ("Random Cut Forest", 51.7, 38.4, 59.7),
    ("Twitter ADVec", 47.1, 33.6, 53.5),
    ("Windowed Gaussian", 39.6, 20.9, 47.4),
];

fn load(dir: &Path) -> Result<Vec<CorpusFile>> {
    let labels = dir.join("labels").join("combined_windows.json");
    let text = std::fs::read_to_string(&labels)
        .map_err(|e| BenchError::Usage(format!("{}: cannot read: {e}", labels.display())))?;
    let windows = parse_windows(&labels.display().to_string(), &text)
        .map_err(|e| BenchError::Usage(e.to_string()))?;
    let mut corpus = Vec::with_capacity(windows.len());
    for (name, limits) in &windows {
        let path = dir.join("data").join(name);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| BenchError::Usage(format!("{}: cannot read: {e}", path.display())))?;
        // The parser `bellwether detect` uses: NAB's files repeat timestamps at clock changes
        // and a few step back; such rows are kept in order (NAB scores by row), with warnings.
        let series = parse_series(&path.display().to_string(), &text)
            .map_err(|e| BenchError::Usage(e.to_string()))?;
        for w in &series.warnings {
            tracing::debug!(warning = %w, "A timestamp goes back.");
        }
        let ts: Vec<i64> = series.points.iter().map(|p| p.ts_ms).collect();
        let labels =
            LabelledFile::new(name, &ts, limits).map_err(|e| BenchError::Usage(e.to_string()))?;
        corpus.push(CorpusFile {
            labels,
            points: series.points,
        });
    }
    Ok(corpus)
}

#[derive(Debug, serde::Serialize)]
struct Run {
    detector: &'static str,
    evaluation: Evaluation,
    /// Points per second of the thread's CPU time (per core; the wall clock where the CPU clock
    /// cannot be read), as `bench detect-faults` times them.
    points_per_second: f64,
    points_per_wall_second: f64,
}

/// Which detector a run uses: one of the crate's online detectors, or the port of NAB's
/// `relativeEntropy` that reads each file's minimum and maximum first (a lookahead only NAB's
/// harness allows), kept to check the scorer against NAB's published figure.
#[derive(Debug, Clone, Copy)]
enum Which {
    Online(DetectorKind),
    NabRelativeEntropy,
    NabCad,
}

impl Which {
    fn name(self) -> &'static str {
        match self {
            Which::Online(k) => k.name(),
            Which::NabRelativeEntropy => "nab-relative-entropy",
            Which::NabCad => "nab-cad",
        }
    }

    fn build(self, f: &CorpusFile) -> Box<dyn Detector> {
        match self {
            Which::Online(k) => k.build(),
            Which::NabRelativeEntropy => {
                let values = f.points.iter().map(|p| p.value).filter(|v| !v.is_nan());
                let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                    (lo.min(v), hi.max(v))
                });
                Box::new(RelativeEntropy::with_known_range(lo, hi))
            }
            Which::NabCad => {
                let values = f.points.iter().map(|p| p.value).filter(|v| !v.is_nan());
                let (min, max) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                    (lo.min(v), hi.max(v))
                });
                let cfg = CadConfig {
                    rest_period: probation_len(f.points.len()) / 5,
                    max_contexts: usize::MAX,
                    ..CadConfig::default()
                };
                Box::new(Cad::new(cfg, CadRange::Fixed { min, max }))
            }
        }
    }
}

/// A detector by its name, as `bellwether detect --detector` takes it.
fn parse_detector(s: &str) -> Result<DetectorKind> {
    DetectorKind::parse(s).ok_or_else(|| {
        let names: Vec<&str> = DetectorKind::ALL.iter().map(|k| k.name()).collect();
        BenchError::Usage(format!(
            "unknown detector `{s}`; expected one of {}",
            names.join(", ")
        ))
    })
}

fn run_one(corpus: &[CorpusFile], kind: Which) -> Run {
    let ((verdicts, max_mem), cpu, wall) = timed(|| {
        let mut verdicts = Vec::with_capacity(corpus.len());
        let mut max_mem = 0;
        for f in corpus {
            let mut d = kind.build(f);
            let v: Vec<_> = f
                .points
                .iter()
                .map(|p| d.observe(p.ts_ms, p.value))
                .collect();
            max_mem = max_mem.max(d.memory_bytes());
            verdicts.push(v);
        }
        (verdicts, max_mem)
    });
    let evaluation = score_verdicts(corpus, &verdicts, max_mem);
    let points = evaluation.points as f64;
    let points_per_wall_second = points / wall.max(1e-9);
    Run {
        detector: kind.name(),
        evaluation,
        points_per_second: cpu.map_or(points_per_wall_second, |c| points / c.max(1e-9)),
        points_per_wall_second,
    }
}

pub fn run(args: &Options) -> Result<Verdict> {
    let kinds: Vec<Which> = match args.detector.as_str() {
        "all" => DetectorKind::ALL
            .into_iter()
            .map(Which::Online)
            .chain([Which::NabRelativeEntropy, Which::NabCad])
            .collect(),
        "nab-relative-entropy" => vec![Which::NabRelativeEntropy],
        "nab-cad" => vec![Which::NabCad],
        name => vec![Which::Online(parse_detector(name)?)],
    };
    let corpus = load(&args.nab_dir)
        .with_context(|| format!("loading NAB from {}", args.nab_dir.display()))?;
    let runs: Vec<Run> = kinds.into_iter().map(|k| run_one(&corpus, k)).collect();
    if args.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&runs)?);
        return Ok(Verdict::Met);
    }
    let e0 = &runs[0].evaluation;
    println!(
        "NAB corpus: {} files, {} points, {} windows ({})",
        e0.files,
        e0.points,
        e0.windows,
        args.nab_dir.display()
    );
    println!();
    println!(
        "{:<20} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "detector", "std/own", "std/best", "lowFP/own", "lowFP/best", "lowFN/own", "lowFN/best"
    );
    for r in &runs {
        let p = &r.evaluation.profiles;
        println!(
            "{:<20} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1}",
            r.detector,
            p[0].at_decision,
            p[0].at_best_threshold,
            p[1].at_decision,
            p[1].at_best_threshold,
            p[2].at_decision,
            p[2].at_best_threshold
        );
    }
    for (name, s, fp, fn_) in SCOREBOARD {
        println!(
            "{:<20} {:>10} {:>10.1} {:>10} {:>10.1} {:>10} {:>10.1}",
            format!("({name})"),
            "",
            s,
            "",
            fp,
            "",
            fn_
        );
    }
    println!();
    println!(
        "{:<20} {:>14} {:>14} {:>18} {:>14} {:>12}",
        "detector", "points/s core", "memory B", "art. detected", "mean delay", "FA/10k pts"
    );
    for r in &runs {
        let a = r.evaluation.artificial;
        let delay = if a.detected > 0 {
            format!("{:.1} rows", a.delay_rows_sum as f64 / a.detected as f64)
        } else {
            "-".into()
        };
        println!(
            "{:<20} {:>14.0} {:>14} {:>18} {:>14} {:>12.2}",
            r.detector,
            r.points_per_second,
            r.evaluation.max_memory_bytes,
            format!("{}/{}", a.detected, a.windows),
            delay,
            a.false_alarms as f64 * 10_000.0 / a.scored_rows.max(1) as f64
        );
    }
    println!();
    println!(
        "Best thresholds (score >= t): {}",
        runs.iter()
            .map(|r| format!(
                "{} {:.6}",
                r.detector, r.evaluation.profiles[0].best_threshold
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(Verdict::Met)
}
