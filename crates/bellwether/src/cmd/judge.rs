//! `bellwether judge`: compare canary (experiment) samples against control samples with the
//! Kayenta-style Mann-Whitney judge of `bellwether-detect`.
//!
//! This module reads the two files and maps flags onto the library's configuration; the
//! statistics and the scoring are in `bellwether_detect::judge`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use bellwether_detect::judge::{
    judge, Classification, EffectMeasure, JudgeConfig, MetricConfig, NanStrategy, Outcome,
};
use bellwether_detect::series::parse_samples;
use bellwether_detect::threshold::Direction;
use bellwether_model::text::Escaped;

use super::{finite_f64, OutputFormat, UsageError};

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Input: each file is a CSV with a header. Either a single `value` column (one metric, named
`value`) or `metric,value` columns (several metrics, rows in any order). `NaN` or an empty value
follows --nan.

Per metric: the Mann-Whitney U test of experiment against control with a 98% confidence interval
for the shift (normal approximation, tie and continuity corrected, as R's
wilcox.test(conf.int=TRUE, exact=FALSE)), widened by --tolerance·|estimate|. The metric is High
(or Low) when the widened interval excludes 0 upwards (downwards), the direction says that is bad
and the effect size passes the allowed limit. The score is the weighted share of passing metrics
per group, out of 100; a critical metric that fails makes it 0.

Exit status: 0 when the canary passes, 1 when it fails, is marginal or has no data, 2 on bad
input.

Example:
  bellwether judge --control control.csv --experiment canary.csv --direction increase --output json")]
pub struct Args {
    /// Samples from the control hosts (not yet updated).
    #[arg(long, value_name = "C.csv")]
    control: PathBuf,
    /// Samples from the experiment (canary) hosts.
    #[arg(long, value_name = "E.csv")]
    experiment: PathBuf,
    /// Which way is bad for every metric: increase, decrease or either.
    #[arg(long, default_value = "increase", value_parser = parse_direction)]
    direction: Direction,
    /// Effect size that must pass the allowed limits: mean-ratio (experiment mean / control
    /// mean) or cles (probability that an experiment sample exceeds a control sample).
    #[arg(long, default_value = "mean-ratio", value_parser = parse_effect)]
    effect: EffectMeasure,
    /// NaN handling: `remove`, or `replace=V` to use the value V instead.
    #[arg(long, default_value = "remove", value_parser = parse_nan)]
    nan: NanStrategy,
    /// Drop values outside [Q1 − K·IQR, Q3 + K·IQR] on each side before testing.
    #[arg(long, value_name = "K", value_parser = finite_f64)]
    iqr: Option<f64>,
    /// An increase only counts when the effect size is above this (default: no change, 1 for
    /// mean-ratio, 0.5 for cles).
    #[arg(long, value_name = "EFFECT", value_parser = finite_f64)]
    allowed_increase: Option<f64>,
    /// A decrease only counts when the effect size is below this.
    #[arg(long, value_name = "EFFECT", value_parser = finite_f64)]
    allowed_decrease: Option<f64>,
    /// Mark a metric critical: if it fails (High or Low against its direction, beyond the
    /// critical limits) the score is 0. Repeat for several.
    #[arg(long, value_name = "METRIC")]
    critical: Vec<String>,
    /// A critical metric fails the judgement only when High with effect size at least this.
    #[arg(long, value_name = "EFFECT", value_parser = finite_f64)]
    critical_increase: Option<f64>,
    /// A critical metric fails the judgement only when Low with effect size at most this.
    #[arg(long, value_name = "EFFECT", value_parser = finite_f64)]
    critical_decrease: Option<f64>,
    /// Put a metric in a group: METRIC=GROUP. Metrics not listed are in group `default`.
    #[arg(long, value_name = "METRIC=GROUP")]
    group: Vec<String>,
    /// Weight of a group: GROUP=W (default 1).
    #[arg(long, value_name = "GROUP=W")]
    weight: Vec<String>,
    /// Confidence of the interval for the shift.
    #[arg(long, default_value_t = 0.98, value_parser = finite_f64)]
    confidence: f64,
    /// The interval is widened by this share of |estimate| on both sides.
    #[arg(long, default_value_t = 0.25, value_parser = finite_f64)]
    tolerance: f64,
    /// Score (out of 100) at or above which the canary passes.
    #[arg(long, default_value_t = 95.0, value_parser = finite_f64)]
    pass: f64,
    /// Score at or above which a canary that does not pass is marginal.
    #[arg(long, default_value_t = 75.0, value_parser = finite_f64)]
    marginal: f64,
    /// human (default) or json.
    #[arg(long, value_enum, default_value_t = OutputFormat::Human)]
    output: OutputFormat,
}

fn parse_direction(s: &str) -> Result<Direction, String> {
    Direction::parse(s)
        .ok_or_else(|| format!("unknown direction `{s}`; expected increase, decrease or either"))
}

fn parse_effect(s: &str) -> Result<EffectMeasure, String> {
    match s {
        "mean-ratio" => Ok(EffectMeasure::MeanRatio),
        "cles" => Ok(EffectMeasure::Cles),
        _ => Err(format!(
            "unknown effect size `{s}`; expected mean-ratio or cles"
        )),
    }
}

fn parse_nan(s: &str) -> Result<NanStrategy, String> {
    if s == "remove" {
        return Ok(NanStrategy::Remove);
    }
    let v = s
        .strip_prefix("replace=")
        .ok_or_else(|| format!("unknown NaN strategy `{s}`; expected remove or replace=V"))?;
    v.parse::<f64>()
        .ok()
        .filter(|x| x.is_finite())
        .map(NanStrategy::Replace)
        .ok_or_else(|| format!("replacement `{v}` is not a finite number"))
}

fn pairs(flag: &str, items: &[String]) -> Result<Vec<(String, String)>, UsageError> {
    items
        .iter()
        .map(|i| {
            i.split_once('=')
                .filter(|(k, v)| !k.is_empty() && !v.is_empty())
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| UsageError(format!("--{flag} {i:?}: expected NAME=VALUE")))
        })
        .collect()
}

fn read(path: &Path) -> Result<Vec<(String, Vec<f64>)>, UsageError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| UsageError(format!("{name}: cannot read: {e}")))?;
    parse_samples(&name, &text).map_err(|e| UsageError(e.to_string()))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let control = read(&args.control)?;
    let experiment = read(&args.experiment)?;
    let groups = pairs("group", &args.group)?;
    let mut weights = Vec::new();
    for (g, w) in pairs("weight", &args.weight)? {
        let w: f64 = w
            .parse()
            .ok()
            .filter(|x: &f64| x.is_finite() && *x >= 0.0)
            .ok_or_else(|| {
                UsageError(format!("--weight {g}={w}: the weight is not a number >= 0"))
            })?;
        weights.push((g, w));
    }
    // Every metric named in either file, in order of first appearance.
    let mut names: Vec<String> = Vec::new();
    for (m, _) in control.iter().chain(&experiment) {
        if !names.contains(m) {
            names.push(m.clone());
        }
    }
    for c in &args.critical {
        if !names.contains(c) {
            return Err(UsageError(format!(
                "--critical {c}: no metric of that name in either file"
            ))
            .into());
        }
    }
    let metrics: Vec<MetricConfig> = names
        .iter()
        .map(|n| MetricConfig {
            group: groups
                .iter()
                .find(|(m, _)| m == n)
                .map_or("default".into(), |(_, g)| g.clone()),
            direction: args.direction,
            nan_strategy: args.nan,
            iqr_outlier_factor: args.iqr,
            effect: args.effect,
            allowed_increase: args.allowed_increase,
            allowed_decrease: args.allowed_decrease,
            critical_increase: args.critical_increase,
            critical_decrease: args.critical_decrease,
            critical: args.critical.contains(n),
            ..MetricConfig::new(n.clone())
        })
        .collect();
    let find = |set: &[(String, Vec<f64>)], n: &str| {
        set.iter()
            .find(|(m, _)| m == n)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let samples: Vec<(String, Vec<f64>, Vec<f64>)> = names
        .iter()
        .map(|n| (n.clone(), find(&control, n), find(&experiment, n)))
        .collect();
    let jc = JudgeConfig {
        confidence: args.confidence,
        tolerance: args.tolerance,
        group_weights: weights,
        pass: args.pass,
        marginal: args.marginal,
    };
    let j = judge(&metrics, &samples, &jc).map_err(|e| UsageError(e.to_string()))?;
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&j)?),
        OutputFormat::Human => {
            println!(
                "{:<24} {:<8} {:>12} {:>26} {:>9} {:>8}",
                "METRIC", "RESULT", "SHIFT", "98% INTERVAL", "EFFECT", "P"
            );
            for m in &j.metrics {
                let class = match m.classification {
                    Classification::Pass => "pass",
                    Classification::High => "HIGH",
                    Classification::Low => "LOW",
                    Classification::Nodata => "nodata",
                };
                match (&m.test, m.effect_size) {
                    (Some(t), Some(e)) => println!(
                        "{:<24} {:<8} {:>12.4} {:>26} {:>9.4} {:>8.4}{}",
                        Escaped(&m.name),
                        class,
                        t.estimate,
                        format!("[{:.4}, {:.4}]", t.lower, t.upper),
                        e,
                        t.p_value,
                        if m.critical_failure { "  CRITICAL" } else { "" }
                    ),
                    _ => println!("{:<24} {:<8} {}", Escaped(&m.name), class, m.reason),
                }
            }
            let outcome = match j.outcome {
                Outcome::Pass => "pass",
                Outcome::Marginal => "marginal",
                Outcome::Fail => "fail",
                Outcome::Nodata => "no data",
            };
            println!("Score {:.1}/100: {outcome}", j.score);
        }
    }
    Ok(if j.outcome == Outcome::Pass {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_parsers() {
        assert_eq!(parse_direction("either"), Ok(Direction::Either));
        assert!(parse_direction("up")
            .unwrap_err()
            .contains("expected increase, decrease or either"));
        assert_eq!(parse_effect("cles"), Ok(EffectMeasure::Cles));
        assert_eq!(parse_nan("remove"), Ok(NanStrategy::Remove));
        assert_eq!(parse_nan("replace=0"), Ok(NanStrategy::Replace(0.0)));
        assert_eq!(
            parse_nan("replace=x").unwrap_err(),
            "replacement `x` is not a finite number"
        );
        assert_eq!(
            pairs("weight", &["a=1".into()]).unwrap(),
            vec![("a".to_string(), "1".to_string())]
        );
        assert_eq!(
            pairs("group", &["=x".into()]).unwrap_err().to_string(),
            "--group \"=x\": expected NAME=VALUE"
        );
    }
}
