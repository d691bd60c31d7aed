//! `bellwether drift BASELINE CURRENT` and `bellwether drift fleet …` (in `fleet.rs`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use bellwether_drift::score::score_checked;
use bellwether_model::text::escape;
use bellwether_model::{DriftScore, HostProfile};

use super::{OutputFormat, UsageError};

/// Score how far a host has drifted from its known-good baseline: configuration (packages, OS,
/// kernel, hardware, network), performance (metrics) and dependency (reachability, latency,
/// DNS), each in [0, 1], with the findings behind them. docs/drift.md explains the formula.
///
/// `bellwether drift fleet` shows the drift of every host a server knows instead.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct Args {
    #[command(subcommand)]
    command: Option<Sub>,
    /// The known-good profile, JSON as `bellwether profile --output json` prints it.
    #[arg(value_name = "BASELINE.json", required = true)]
    baseline: Option<PathBuf>,
    /// The profile to compare with the baseline.
    #[arg(value_name = "CURRENT.json", required = true)]
    current: Option<PathBuf>,
    /// Compare profiles even when their hostnames differ (by default that is refused, since it
    /// is usually a mistake).
    #[arg(long)]
    force: bool,
    /// `human` prints the scores and a findings table; `json` prints the DriftScore.
    #[arg(long, value_enum, default_value_t)]
    output: OutputFormat,
}

#[derive(Debug, clap::Subcommand)]
enum Sub {
    /// List a server's hosts by overall drift, with their top findings and peer outliers.
    Fleet(super::fleet::Args),
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if let Some(Sub::Fleet(a)) = args.command {
        return super::fleet::run(a);
    }
    let (Some(bpath), Some(cpath)) = (args.baseline, args.current) else {
        return Err(
            UsageError("give BASELINE.json and CURRENT.json, or `drift fleet`".into()).into(),
        );
    };
    let baseline = read_profile(&bpath)?;
    let current = read_profile(&cpath)?;
    let score = score_checked(&baseline, &current, args.force)
        .map_err(|e| UsageError(format!("{e}; pass --force to compare them anyway")))?;
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&score)?),
        OutputFormat::Human => print!("{}", human(&score, current.hostname.as_deref())),
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads a profile; errors name the file, line, column and field.
pub fn read_profile(path: &Path) -> anyhow::Result<HostProfile> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| UsageError(format!("could not read {}: {e}", path.display())))?;
    bellwether_drift::json::parse_profile(&text)
        .map_err(|e| UsageError(format!("{} is not a host profile: {e}", path.display())).into())
}

/// The four scores and a findings table.
pub fn human(s: &DriftScore, host: Option<&str>) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Drift of {} from its baseline",
        escape(host.unwrap_or("the host"))
    );
    for (name, v) in [
        ("configuration", s.configuration),
        ("performance", s.performance),
        ("dependency", s.dependency),
        ("overall", s.overall),
    ] {
        let _ = writeln!(out, "  {name:<14} {v}");
    }
    if s.findings.is_empty() {
        out.push_str("\nNo findings: the profiles match.\n");
        return out;
    }
    let cell = |v: &Option<String>| {
        let v = escape(v.as_deref().unwrap_or("-"));
        if v.chars().count() > 40 {
            format!("{}…", v.chars().take(39).collect::<String>())
        } else {
            v.into_owned()
        }
    };
    let rows: Vec<[String; 5]> = s
        .findings
        .iter()
        .map(|f| {
            let cat = serde_json::to_value(f.category)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            [
                f.weight.to_string(),
                cat,
                escape(&f.attribute).into_owned(),
                cell(&f.baseline),
                cell(&f.current),
            ]
        })
        .collect();
    let head = ["WEIGHT", "CATEGORY", "ATTRIBUTE", "BASELINE", "CURRENT"];
    let mut width = head.map(|h| h.chars().count());
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    out.push('\n');
    for r in std::iter::once(head.map(str::to_owned)).chain(rows) {
        let line: Vec<String> = r
            .iter()
            .zip(width)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bellwether_drift::synth::{profile_of, Drift, HostSpec};

    #[test]
    fn human_report_lists_scores_and_findings() {
        let spec = HostSpec::generate(2, "web-2", 40);
        let b = profile_of(&spec);
        let mut s2 = spec.clone();
        s2.apply(&Drift::Kernel("9.0.0-1-amd64".into()));
        let s = bellwether_drift::score(&b, &profile_of(&s2));
        let text = human(&s, Some("web-2"));
        let expected = format!(
            "Drift of web-2 from its baseline\n  configuration  0.600\n  performance    0.000\n  dependency     0.000\n  overall        0.600\n\n\
             WEIGHT  CATEGORY       ATTRIBUTE  BASELINE{pad}  CURRENT\n\
             0.600   configuration  kernel     {k}  9.0.0-1-amd64\n",
            pad = " ".repeat(spec.kernel.len().saturating_sub(8)),
            k = spec.kernel,
        );
        assert_eq!(text, expected);
        assert!(human(&DriftScore::default(), None).ends_with("No findings: the profiles match.\n"));
    }

    #[test]
    fn read_profile_errors_name_file_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.json");
        std::fs::write(
            &path,
            "{\n \"hostname\": \"a\",\n \"hardware\": {\"cpu_count\": -1}\n}\n",
        )
        .unwrap();
        let err = format!("{:#}", read_profile(&path).unwrap_err());
        assert!(
            err.contains("b.json is not a host profile: line 3, column"),
            "{err}"
        );
        assert!(err.contains("field hardware.cpu_count"), "{err}");
        let missing = format!(
            "{:#}",
            read_profile(&dir.path().join("nope.json")).unwrap_err()
        );
        assert!(
            missing.starts_with("could not read ") && missing.contains("nope.json"),
            "{missing}"
        );
    }
}
