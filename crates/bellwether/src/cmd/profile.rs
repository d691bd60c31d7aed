//! `bellwether profile`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use bellwether_drift::collect::CollectOptions;
use bellwether_drift::deps::{merge_dependencies, read_declared_dependencies, Dependency};
use bellwether_model::HostProfile;

use super::{OutputFormat, UsageError};

/// Collect the profile of this host, or of a host root mounted at DIR: OS, kernel, packages,
/// hardware, network, listening ports, declared dependencies and load metrics.
///
/// Files that cannot be read leave their part out and add a note; collection never fails.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Read the host from this root directory instead of `/`, as node_exporter's
    /// --path.rootfs (for a container's view of its host, or a sandbox host).
    #[arg(long, value_name = "DIR", default_value = "/")]
    rootfs: PathBuf,
    /// Probe a dependency with a TCP connect: NAME=HOST:PORT, such as db=10.0.0.5:5432.
    /// Repeat for more. These add to the ones the host declares in
    /// DIR/etc/bellwether/dependencies (one NAME=HOST:PORT a line) and win on equal names.
    #[arg(long = "dependency", value_name = "NAME=HOST:PORT", value_parser = parse_dependency_flag)]
    dependencies: Vec<Dependency>,
    /// Label the profile, as K=V (such as role=web); peers are grouped by labels. Repeatable.
    #[arg(long = "label", value_name = "K=V", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Record the SHA-256 and size of this file (relative to --rootfs, such as
    /// etc/websvc.conf), so drift shows a `file:PATH` finding when it changes. Repeatable; adds
    /// to the paths listed in DIR/etc/bellwether/watch-files (one a line).
    #[arg(long = "watch-file", value_name = "PATH", value_parser = parse_watch_file)]
    watch_files: Vec<String>,
    /// How long all dependency probes together may take, such as 500ms or 2s.
    #[arg(long, value_name = "DURATION", default_value = "500ms", value_parser = parse_probe_timeout)]
    probe_timeout: Duration,
    /// `human` prints a summary; `json` prints the HostProfile that `bellwether drift` reads.
    #[arg(long, value_enum, default_value_t)]
    output: OutputFormat,
}

pub(crate) fn parse_watch_file(s: &str) -> Result<String, String> {
    bellwether_drift::watch::check_watch_path(s).map(|()| s.to_owned())
}

fn parse_dependency_flag(s: &str) -> Result<Dependency, String> {
    bellwether_drift::parse_dependency(s).map_err(|e| e.to_string())
}

/// `K=V` with a non-empty key.
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
        _ => Err(format!(
            "bad label {s:?}: expected KEY=VALUE, such as role=web"
        )),
    }
}

/// A probe timeout: a duration of the shared grammar (docs/durations.md) of at most a day.
pub fn parse_probe_timeout(s: &str) -> Result<Duration, String> {
    let d = bellwether_model::duration::parse(s).map_err(|e| e.to_string())?;
    if d > Duration::from_secs(86_400) {
        return Err(format!(
            "{s:?} is longer than a day, the longest probe timeout"
        ));
    }
    Ok(d)
}

/// The collect options for a root: its declared dependencies, then the flags'.
fn options(
    rootfs: &Path,
    flags: &[Dependency],
    labels: &[(String, String)],
    timeout: Duration,
) -> anyhow::Result<CollectOptions> {
    let declared = read_declared_dependencies(rootfs).map_err(|e| UsageError(e.to_string()))?;
    Ok(CollectOptions {
        dependencies: merge_dependencies(&[&declared, flags]),
        probe_timeout: timeout,
        labels: labels.iter().cloned().collect::<BTreeMap<_, _>>(),
        watch_files: Vec::new(),
    })
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if !args.rootfs.is_dir() {
        return Err(UsageError(format!(
            "--rootfs {}: not a directory",
            args.rootfs.display()
        ))
        .into());
    }
    let mut opts = options(
        &args.rootfs,
        &args.dependencies,
        &args.labels,
        args.probe_timeout,
    )?;
    opts.watch_files = args.watch_files;
    let profile = bellwether_drift::collect(&args.rootfs, &opts);
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&profile)?),
        OutputFormat::Human => print!("{}", human(&profile)),
    }
    Ok(ExitCode::SUCCESS)
}

/// A readable summary of a profile.
pub fn human(p: &HostProfile) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    // Every value comes from the host root's files: control characters are shown escaped.
    let mut line = |k: &str, v: String| {
        let _ = writeln!(s, "{k:<13}{}", bellwether_model::text::Escaped(&v));
    };
    let dash = || "-".to_owned();
    line("Host", p.hostname.clone().unwrap_or_else(dash));
    if !p.labels.is_empty() {
        line(
            "Labels",
            p.labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" "),
        );
    }
    line(
        "OS",
        p.os.as_ref()
            .map(|o| {
                o.pretty_name.clone().unwrap_or_else(|| {
                    format!("{} {}", o.id, o.version_id.as_deref().unwrap_or(""))
                })
            })
            .unwrap_or_else(dash),
    );
    line("Kernel", p.kernel.clone().unwrap_or_else(dash));
    line(
        "Packages",
        p.packages
            .as_ref()
            .map(|m| format!("{} installed", m.len()))
            .unwrap_or_else(dash),
    );
    if let Some(h) = &p.hardware {
        line(
            "CPU",
            match (h.cpu_count, &h.cpu_model) {
                (Some(n), Some(m)) => format!("{n} x {m}"),
                (Some(n), None) => format!("{n}"),
                (None, Some(m)) => m.clone(),
                (None, None) => dash(),
            },
        );
        let avail = p
            .metrics
            .get("memory_available_ratio")
            .map(|r| format!(", {:.0}% available", r * 100.0))
            .unwrap_or_default();
        line(
            "Memory",
            h.memory_total_kb
                .map(|kb| format!("{:.1} GiB{avail}", kb as f64 / 1024.0 / 1024.0))
                .unwrap_or_else(dash),
        );
        line(
            "Disks",
            if h.disks.is_empty() {
                dash()
            } else {
                h.disks.join(", ")
            },
        );
    }
    if let Some(n) = &p.network {
        let ifs: Vec<String> = n
            .interfaces
            .iter()
            .map(|i| {
                format!(
                    "{} ({}{})",
                    i.name,
                    i.operstate.as_deref().unwrap_or("?"),
                    i.mtu.map(|m| format!(", mtu {m}")).unwrap_or_default()
                )
            })
            .collect();
        line(
            "Interfaces",
            if ifs.is_empty() {
                dash()
            } else {
                ifs.join(", ")
            },
        );
        line(
            "DNS",
            if n.dns_resolvers.is_empty() {
                dash()
            } else {
                n.dns_resolvers.join(", ")
            },
        );
        line(
            "Listening",
            if n.listening.is_empty() {
                dash()
            } else {
                n.listening.join(", ")
            },
        );
    }
    if !p.metrics.is_empty() {
        let m: Vec<String> = p
            .metrics
            .iter()
            .map(|(k, v)| format!("{k}={}", bellwether_drift::score::fmt_num(*v)))
            .collect();
        line("Metrics", m.join(" "));
    }
    for d in &p.dependencies {
        let state = match (d.reachable, d.latency_ms) {
            (true, Some(ms)) => format!("reachable in {ms:.2} ms"),
            (true, None) => "reachable".to_owned(),
            (false, _) => "UNREACHABLE".to_owned(),
        };
        line("Dependency", format!("{} {} {state}", d.name, d.endpoint));
    }
    for (path, f) in &p.files {
        line("File", format!("{path} {}", f.summary()));
    }
    for n in &p.notes {
        line("Note", n.clone());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_parsers() {
        assert_eq!(
            parse_probe_timeout("500ms").unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(
            parse_probe_timeout("1.5s").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(parse_probe_timeout("5").unwrap(), Duration::from_secs(5));
        assert_eq!(
            parse_probe_timeout("1d").unwrap(),
            Duration::from_secs(86_400)
        );
        assert!(parse_probe_timeout("-1s")
            .unwrap_err()
            .contains("a duration cannot be negative"));
        assert_eq!(
            parse_probe_timeout("25h").unwrap_err(),
            "\"25h\" is longer than a day, the longest probe timeout"
        );
        assert_eq!(
            parse_label("role=web").unwrap(),
            ("role".to_owned(), "web".to_owned())
        );
        assert!(parse_label("=web").unwrap_err().contains("\"=web\""));
        assert!(parse_dependency_flag("db").unwrap_err().contains("\"db\""));
        assert_eq!(
            parse_watch_file("etc/websvc.conf").unwrap(),
            "etc/websvc.conf"
        );
        assert!(parse_watch_file("/etc/passwd")
            .unwrap_err()
            .contains("relative to the root: it is absolute"));
    }

    #[test]
    fn human_summary_of_a_synthetic_host() {
        let spec = bellwether_drift::synth::HostSpec::generate(4, "web-7", 30);
        let text = human(&bellwether_drift::synth::profile_of(&spec));
        assert!(text.starts_with("Host         web-7\n"), "{text}");
        assert!(
            text.contains(&format!("Kernel       {}\n", spec.kernel)),
            "{text}"
        );
        assert!(text.contains("Packages     30 installed\n"), "{text}");
        assert!(text.contains("load1="), "{text}");
        let mut p = bellwether_drift::synth::profile_of(&spec);
        p.files.insert(
            "etc/websvc.conf".into(),
            bellwether_model::profile::WatchedFile::default(),
        );
        assert!(
            human(&p).contains("File         etc/websvc.conf absent\n"),
            "{}",
            human(&p)
        );
    }

    #[test]
    fn flags_add_to_and_override_the_declared_dependencies() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = bellwether_drift::synth::HostSpec::generate(4, "web-7", 10);
        spec.dependencies = vec![
            ("db".into(), "127.0.0.1:5432".into()),
            ("cache".into(), "127.0.0.1:6379".into()),
        ];
        bellwether_drift::synth::write_host_root(dir.path(), &spec).unwrap();
        let flag = parse_dependency_flag("db=127.0.0.1:6432").unwrap();
        let opts = options(
            dir.path(),
            &[flag],
            &[("role".into(), "web".into())],
            Duration::from_millis(100),
        )
        .unwrap();
        let deps: Vec<(&str, &str)> = opts
            .dependencies
            .iter()
            .map(|d| (d.name.as_str(), d.endpoint.as_str()))
            .collect();
        assert_eq!(
            deps,
            vec![("cache", "127.0.0.1:6379"), ("db", "127.0.0.1:6432")]
        );
        assert_eq!(opts.labels["role"], "web");
        std::fs::write(dir.path().join("etc/bellwether/dependencies"), "db=nope\n").unwrap();
        let err = options(dir.path(), &[], &[], Duration::from_millis(100)).unwrap_err();
        assert!(
            super::super::exit_code_for(&err) == 2 && err.to_string().contains("dependencies:1:"),
            "{err}"
        );
    }
}
