//! `bellwether agent`: the per-host reporter. Flags are parsed here and validated into the
//! agent crate's settings; the loop itself lives in `bellwether-agent`.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use bellwether_agent::host::HostCollector;
use bellwether_agent::{Agent, BackoffPolicy, HttpTransport, Settings};
use bellwether_model::HostName;

use super::UsageError;

/// Collect this host's profile (or a mounted root's) and stream it to a server.
///
/// The agent enrols with the enrolment token, then sends its profile at start and whenever the
/// configuration changes, and metric samples every interval. While the server is away it backs
/// off (capped, jittered) and buffers samples; when the buffer is full the oldest go, and the
/// server is told how many on the next successful send. It never runs anything on the host.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The server's base URL.
    #[arg(long, env = "BELLWETHER_SERVER", default_value = "http://127.0.0.1:7878")]
    server: String,
    /// The enrolment token (the server writes it to <data-dir>/enrol.token). The agent trades
    /// it for its own agent token at start, and again if the server forgets that one.
    #[arg(long, env = "BELLWETHER_ENROL_TOKEN", required_unless_present = "token_file", hide_env_values = true)]
    token: Option<String>,
    /// Read the enrolment token from this file instead (keeps it out of the process list).
    #[arg(long, value_name = "FILE", conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// Read the host from this root instead of `/` (as node_exporter's --path.rootfs).
    #[arg(long, value_name = "DIR", default_value = "/")]
    rootfs: PathBuf,
    /// The host's name in the fleet. Default: the root's etc/hostname.
    #[arg(long)]
    name: Option<String>,
    /// A label for the host, such as `role=web`; repeat for more. Peers are hosts that share
    /// a label.
    #[arg(long = "label", value_name = "K=V")]
    labels: Vec<String>,
    /// A dependency to probe with a TCP connect every interval; repeat for more. Adds to (and
    /// overrides by name) the root's etc/bellwether/dependencies, which is re-read every time.
    #[arg(long = "dependency", value_name = "NAME=HOST:PORT")]
    dependencies: Vec<String>,
    /// How often to collect and send samples, such as `5s` or `500ms`.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// How many samples to keep while the server is away; past that the oldest are dropped.
    #[arg(long, default_value_t = 10_000)]
    buffer: usize,
    /// The longest wait between reconnection attempts.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    max_backoff: Duration,
    /// The longest one request to the server may take.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    request_timeout: Duration,
    /// The overall deadline for probing all dependencies in one collection.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    probe_timeout: Duration,
}

/// The flags, checked: everything the agent needs, in types that cannot be wrong.
struct Config {
    server: String,
    token: String,
    rootfs: PathBuf,
    settings: Settings,
    dependencies: Vec<bellwether_drift::Dependency>,
    request_timeout: Duration,
    probe_timeout: Duration,
}

fn parse_label(value: &str) -> Result<(String, String), UsageError> {
    let (k, v) = value
        .split_once('=')
        .ok_or_else(|| UsageError(format!("--label {value:?}: expected K=V")))?;
    let k = k.trim();
    if k.is_empty() {
        return Err(UsageError(format!("--label {value:?}: the key before '=' is empty")));
    }
    Ok((k.to_owned(), v.trim().to_owned()))
}

fn host_name(name: Option<&str>, rootfs: &Path) -> Result<HostName, UsageError> {
    let (raw, origin) = match name {
        Some(n) => (n.to_owned(), "--name".to_owned()),
        None => {
            let path = rootfs.join("etc/hostname");
            let text = std::fs::read_to_string(&path).map_err(|e| {
                UsageError(format!("no --name given and {} could not be read: {e}", path.display()))
            })?;
            (text.trim().to_owned(), path.display().to_string())
        }
    };
    HostName::new(raw).map_err(|e| UsageError(format!("{origin}: {e}")))
}

fn validate(args: Args) -> Result<Config, UsageError> {
    let token = match (&args.token, &args.token_file) {
        (Some(t), _) => t.trim().to_owned(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| UsageError(format!("--token-file {}: {e}", path.display())))?
            .trim()
            .to_owned(),
        (None, None) => return Err(UsageError("give --token or --token-file".into())),
    };
    if token.is_empty() {
        return Err(UsageError("the enrolment token is empty".into()));
    }
    if args.interval < Duration::from_millis(50) {
        return Err(UsageError(format!(
            "--interval {}: must be at least 50ms",
            humantime::format_duration(args.interval)
        )));
    }
    let buffer = NonZeroUsize::new(args.buffer)
        .ok_or_else(|| UsageError("--buffer: must be at least 1 sample".into()))?;
    let labels: BTreeMap<String, String> =
        args.labels.iter().map(|l| parse_label(l)).collect::<Result<_, _>>()?;
    let dependencies = args
        .dependencies
        .iter()
        .map(|d| bellwether_drift::parse_dependency(d).map_err(|e| UsageError(format!("--dependency: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    if !args.rootfs.is_dir() {
        return Err(UsageError(format!("--rootfs {}: not a directory", args.rootfs.display())));
    }
    let name = host_name(args.name.as_deref(), &args.rootfs)?;
    let mut settings = Settings::new(name);
    settings.labels = labels;
    settings.interval = args.interval;
    settings.buffer = buffer;
    settings.backoff = BackoffPolicy {
        base: BackoffPolicy::default().base.min(args.max_backoff),
        cap: args.max_backoff,
    };
    Ok(Config {
        server: args.server,
        token,
        rootfs: args.rootfs,
        settings,
        dependencies,
        request_timeout: args.request_timeout,
        probe_timeout: args.probe_timeout,
    })
}

/// Completes on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        // Without signal handlers the process still dies on the default action.
        _ => std::future::pending().await,
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let cfg = validate(args)?;
    let transport = HttpTransport::new(&cfg.server, cfg.token, cfg.request_timeout)
        .map_err(|e| UsageError(e.to_string()))?;
    let collector = HostCollector::new(cfg.rootfs.clone(), cfg.dependencies, cfg.probe_timeout);
    // One thread: the agent's work is a few file reads and one request per interval, and the
    // idle-memory goal (15 MB) leaves no room for a worker pool.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")?;
    tracing::info!(host = %cfg.settings.name, server = %cfg.server, rootfs = %cfg.rootfs.display(),
        interval_ms = cfg.settings.interval.as_millis() as u64, "Agent started.");
    let name = cfg.settings.name.clone();
    let stats = rt.block_on(Agent::new(cfg.settings, transport, collector).run(shutdown_signal()));
    tracing::info!(host = %name, collections = stats.collections, profiles_sent = stats.profiles_sent,
        samples_sent = stats.samples_sent, dropped = stats.dropped_total,
        buffered_at_exit = stats.buffered_at_exit, "Agent stopped.");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_need_a_key() {
        assert_eq!(parse_label("role=web").unwrap(), ("role".into(), "web".into()));
        assert_eq!(parse_label("role=").unwrap(), ("role".into(), "".into()));
        assert!(parse_label("role").unwrap_err().0.contains("expected K=V"));
        assert!(parse_label("=web").unwrap_err().0.contains("key before '='"));
    }

    #[test]
    fn host_name_comes_from_the_root_and_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let err = host_name(None, dir.path()).unwrap_err().0;
        assert!(err.contains("no --name given"), "{err}");
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/hostname"), "db-02\n").unwrap();
        assert_eq!(host_name(None, dir.path()).unwrap().as_str(), "db-02");
        let err = host_name(Some("a b"), dir.path()).unwrap_err().0;
        assert!(err.starts_with("--name: "), "{err}");
    }
}
