//! `bellwether agent`: the per-host reporter. Flags are parsed here and validated into the
//! agent crate's settings; the loop itself lives in `bellwether-agent`.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use bellwether_agent::actions::{ActionLoop, ActionSettings, Journal};
use bellwether_agent::exec::{AllowList, Executor};
use bellwether_agent::host::HostCollector;
use bellwether_agent::{Agent, BackoffPolicy, HttpTransport, Settings};
use bellwether_model::wire::servers::ServerList;
use bellwether_model::HostName;

use super::UsageError;

/// Collect this host's profile (or a mounted root's) and stream it to a server.
///
/// The agent enrols with the enrolment token, then sends its profile at start and whenever the
/// configuration changes, and metric samples every interval. While the server is away it backs
/// off (capped, jittered) and buffers samples; when the buffer is full the oldest go, and the
/// server is told how many on the next successful send.
///
/// With --state-dir it also carries out the actions the server sends during a rollout (apply,
/// revert, remediate): it long-polls for them, runs each once (argv lists without a shell, with
/// the rootfs as working directory, killed at their timeout; or a built-in inside the rootfs),
/// reports the result, and keeps a journal in the state directory so that no action runs twice,
/// across server re-sends and agent restarts. It runs nothing the server did not send, and
/// with --allow-action only what the list allows. Built-ins read and write inside --rootfs
/// only: symbolic links resolve as in a chroot of the root, never out of it.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The server's base URL. Several servers (replicas on one PostgreSQL store): repeat the
    /// flag or give a comma-separated list. Every call tries the server that last answered
    /// first, and moves to the next when one is down, answers 503 or names another as the
    /// leader; a write that may have reached a server is not sent to another in the same call
    /// (the journal keeps every action run and reported once).
    #[arg(
        long,
        env = "BELLWETHER_SERVER",
        default_value = "http://127.0.0.1:7878",
        action = clap::ArgAction::Append,
        value_name = "URL[,URL...]"
    )]
    server: Vec<String>,
    #[command(flatten)]
    tls: super::tls::ClientTlsArgs,
    /// The enrolment token (the server writes it to <data-dir>/enrol.token). The agent trades
    /// it for its own agent token at start, and again if the server forgets that one.
    #[arg(
        long,
        env = "BELLWETHER_ENROL_TOKEN",
        required_unless_present = "token_file",
        hide_env_values = true
    )]
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
    /// The host's address as Prometheus knows it (an IP address or a DNS name, no port),
    /// declared at enrolment: a rollout's PromQL queries read it as {{address}}, as in
    /// instance="{{address}}:9100". See docs/prometheus.md.
    #[arg(long, value_name = "HOST", value_parser = host_address)]
    address: Option<String>,
    /// A dependency to probe with a TCP connect every interval; repeat for more. Adds to (and
    /// overrides by name) the root's etc/bellwether/dependencies, which is re-read every time.
    #[arg(long = "dependency", value_name = "NAME=HOST:PORT")]
    dependencies: Vec<String>,
    /// How often to collect and send samples, such as `5s` or `500ms`.
    #[arg(long, default_value = "5s", value_parser = bellwether_model::duration::parse)]
    interval: Duration,
    /// How many samples to keep while the server is away; past that the oldest are dropped.
    #[arg(long, default_value_t = 10_000)]
    buffer: usize,
    /// The longest wait between reconnection attempts.
    #[arg(long, default_value = "30s", value_parser = bellwether_model::duration::parse)]
    max_backoff: Duration,
    /// The longest one request to the server may take.
    #[arg(long, default_value = "10s", value_parser = bellwether_model::duration::parse)]
    request_timeout: Duration,
    /// The overall deadline for probing all dependencies in one collection.
    #[arg(long, default_value = "1s", value_parser = bellwether_model::duration::parse)]
    probe_timeout: Duration,
    /// Where the agent keeps its action journal and the start-time snapshots of protected
    /// files. Without it the agent runs no actions (it only reports).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// A file (relative to --rootfs) to snapshot at first start, so a `restore_file` action can
    /// put it back; repeat for more. The snapshot is kept across restarts. The dpkg status
    /// (var/lib/dpkg/status) is always snapshotted when present, for `reinstall_package`.
    /// A protected file is also watched (see --watch-file).
    #[arg(long = "protect", value_name = "PATH", requires = "state_dir")]
    protect: Vec<String>,
    /// A file (relative to --rootfs, such as etc/websvc.conf) whose SHA-256 and size every
    /// profile records, so drift shows a `file:PATH` finding when it changes; repeat for
    /// more. Adds to the paths the root lists in etc/bellwether/watch-files (re-read every
    /// collection) and to the --protect files.
    #[arg(long = "watch-file", value_name = "PATH")]
    watch_files: Vec<String>,
    /// The cgroup v2 directory of the host's service (such as /sys/fs/cgroup/websvc) that
    /// `set_cgroup` actions write cpu.max and memory.max into.
    #[arg(long, value_name = "DIR", requires = "state_dir")]
    cgroup: Option<PathBuf>,
    /// A Prometheus text endpoint of the host's service (such as http://127.0.0.1:8080/metrics)
    /// to scrape every interval; adds svc_requests_rate, svc_error_ratio, svc_latency_p50_ms and
    /// svc_latency_p99_ms to the samples (from websvc_requests_total, websvc_errors_total and the
    /// websvc_request_duration_seconds histogram).
    #[arg(long, value_name = "URL")]
    scrape: Option<String>,
    /// Run only the actions this allows; repeat for more. KIND is a built-in
    /// (set_service_version, restore_file, reinstall_package, set_cgroup, start_process,
    /// stop_process, sample_processes, pg_read_settings, pg_apply, pg_trial, mirror_provision,
    /// mirror_retire, mirror_promote, mirror_fence);
    /// exec:PROGRAM[,ARG...] allows an argv action whose argv starts with exactly these
    /// strings (`exec:/usr/bin/systemctl,restart,websvc`). Without this flag every action the
    /// server sends runs: an operator token can run any argv as the agent's user. A refused
    /// action is reported to the server as failed, with the reason.
    #[arg(
        long = "allow-action",
        value_name = "KIND|exec:PROGRAM[,ARG...]",
        requires = "state_dir"
    )]
    allow_actions: Vec<String>,
    /// How long one long-poll for actions waits on the server.
    #[arg(long, default_value = "5s", value_parser = bellwether_model::duration::parse)]
    action_wait: Duration,
    /// A PostgreSQL instance on this host to watch, as NAME=URL
    /// (postgres://user@host:port/db) or NAME=@FILE (the URL on the file's first line, which
    /// keeps a password out of the process list); repeat for more. The agent sends its
    /// metrics as pg.NAME.tps, pg.NAME.latency_ms…, reports its settings to the server at start
    /// and on change, learns its dependency graph on scratch clusters, and carries out the
    /// pg_read_settings, pg_apply and pg_trial actions naming NAME.
    #[arg(long = "database", value_name = "NAME=URL|NAME=@FILE")]
    databases: Vec<String>,
    /// The command that restarts the instance NAME, such as
    /// `NAME=systemctl restart postgresql@15-main`; split into argv with shell-word rules and
    /// run without a shell. Without it, a change that needs a restart is refused before
    /// anything is changed.
    #[arg(long = "database-restart", value_name = "NAME=COMMAND")]
    database_restarts: Vec<String>,
    /// A plain config file of another service (relative to --rootfs) to report to the server
    /// at start and on change, as PATH or PATH:FORMAT (kv, ini, yaml, json, toml; else from
    /// the extension); repeat for more.
    #[arg(long = "config-file", value_name = "PATH[:FORMAT]")]
    config_files: Vec<String>,
    /// How often the --database settings and --config-file files are read again (a report is
    /// sent only when something changed).
    #[arg(long, default_value = "30s", value_parser = bellwether_model::duration::parse)]
    config_interval: Duration,
    /// Learn each --database's dependency graph at start, in the background, by trial starts
    /// of a scratch cluster made with the instance's own binaries (one at a time; a few
    /// minutes of one core), and send it to the server. On by default; --learn-graph=false
    /// turns it off.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    learn_graph: bool,
}

/// The flags, checked: everything the agent needs, in types that cannot be wrong.
struct Config {
    servers: ServerList,
    tls: bellwether_tls::ClientTls,
    token: String,
    rootfs: PathBuf,
    settings: Settings,
    dependencies: Vec<bellwether_drift::Dependency>,
    /// `--watch-file` then `--protect`, checked, without duplicates.
    watch_files: Vec<String>,
    request_timeout: Duration,
    probe_timeout: Duration,
    actions: Option<ActionConfig>,
    scrape: Option<reqwest::Url>,
    pg: bellwether_agent::pg::PgDatabases,
    config_loop: bellwether_agent::pg::ConfigLoopSettings,
}

struct ActionConfig {
    state_dir: PathBuf,
    protect: Vec<String>,
    cgroup: Option<PathBuf>,
    allow: AllowList,
    wait: Duration,
}

/// `--address`: an IP address or a DNS name, no port.
fn host_address(s: &str) -> Result<String, String> {
    bellwether_model::wire::check_host_address(s)?;
    Ok(s.to_string())
}

fn parse_label(value: &str) -> Result<(String, String), UsageError> {
    let (k, v) = value
        .split_once('=')
        .ok_or_else(|| UsageError(format!("--label {value:?}: expected K=V")))?;
    let k = k.trim();
    if k.is_empty() {
        return Err(UsageError(format!(
            "--label {value:?}: the key before '=' is empty"
        )));
    }
    Ok((k.to_owned(), v.trim().to_owned()))
}

fn host_name(name: Option<&str>, rootfs: &Path) -> Result<HostName, UsageError> {
    let (raw, origin) = match name {
        Some(n) => (n.to_owned(), "--name".to_owned()),
        None => {
            let path = rootfs.join("etc/hostname");
            let text = std::fs::read_to_string(&path).map_err(|e| {
                UsageError(format!(
                    "no --name given and {} could not be read: {e}",
                    path.display()
                ))
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
            bellwether_model::Dur(args.interval)
        )));
    }
    let buffer = NonZeroUsize::new(args.buffer)
        .ok_or_else(|| UsageError("--buffer: must be at least 1 sample".into()))?;
    let labels: BTreeMap<String, String> = args
        .labels
        .iter()
        .map(|l| parse_label(l))
        .collect::<Result<_, _>>()?;
    let dependencies = args
        .dependencies
        .iter()
        .map(|d| {
            bellwether_drift::parse_dependency(d)
                .map_err(|e| UsageError(format!("--dependency: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if !args.rootfs.is_dir() {
        return Err(UsageError(format!(
            "--rootfs {}: not a directory",
            args.rootfs.display()
        )));
    }
    let mut watch_files: Vec<String> = Vec::new();
    for p in &args.watch_files {
        bellwether_drift::watch::check_watch_path(p)
            .map_err(|e| UsageError(format!("--watch-file: {e}")))?;
        if !watch_files.contains(p) {
            watch_files.push(p.clone());
        }
    }
    for p in &args.protect {
        // Checked again (with the restore_file wording) when the executor snapshots it.
        if bellwether_drift::watch::check_watch_path(p).is_ok() && !watch_files.contains(p) {
            watch_files.push(p.clone());
        }
    }
    let name = host_name(args.name.as_deref(), &args.rootfs)?;
    let mut settings = Settings::new(name);
    settings.labels = labels;
    settings.address = args.address.clone();
    settings.interval = args.interval;
    settings.buffer = buffer;
    settings.backoff = BackoffPolicy {
        base: BackoffPolicy::default().base.min(args.max_backoff),
        cap: args.max_backoff,
    };
    if args.action_wait < Duration::from_millis(100) || args.action_wait > Duration::from_secs(60) {
        return Err(UsageError(format!(
            "--action-wait {}: must be between 100ms and 60s",
            bellwether_model::Dur(args.action_wait)
        )));
    }
    let allow = AllowList::parse(&args.allow_actions).map_err(UsageError)?;
    if args.state_dir.is_none() && !args.databases.is_empty() {
        // Reports and samples work without it; configuration changes do not.
        eprintln!(
            "warning: --database without --state-dir: the agent reports the instance's settings \
             and metrics but carries out no actions, so `bellwether config apply` on this host \
             will wait for it; add --state-dir DIR to run them"
        );
    }
    let actions = args.state_dir.map(|state_dir| ActionConfig {
        state_dir,
        protect: args.protect,
        cgroup: args.cgroup,
        allow,
        wait: args.action_wait,
    });
    let scrape = match &args.scrape {
        Some(u) => {
            let url =
                reqwest::Url::parse(u).map_err(|e| UsageError(format!("--scrape {u:?}: {e}")))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(UsageError(format!(
                    "--scrape {u:?}: not an http or https url"
                )));
            }
            Some(url)
        }
        None => None,
    };
    let pg = {
        use bellwether_agent::pg::{parse_database, parse_restart, PgDatabases};
        let dbs = args
            .databases
            .iter()
            .map(|d| parse_database(d))
            .collect::<Result<Vec<_>, _>>()
            .map_err(UsageError)?;
        let restarts = args
            .database_restarts
            .iter()
            .map(|d| parse_restart(d))
            .collect::<Result<Vec<_>, _>>()
            .map_err(UsageError)?;
        PgDatabases::new(dbs, restarts).map_err(UsageError)?
    };
    let files = args
        .config_files
        .iter()
        .map(|f| bellwether_agent::pg::parse_config_file(f))
        .collect::<Result<Vec<_>, _>>()
        .map_err(UsageError)?;
    if args.config_interval < Duration::from_secs(1) {
        return Err(UsageError(format!(
            "--config-interval {}: must be at least 1s",
            bellwether_model::Dur(args.config_interval)
        )));
    }
    let config_loop = bellwether_agent::pg::ConfigLoopSettings {
        files,
        rootfs: args.rootfs.clone(),
        interval: args.config_interval,
        learn_graph: args.learn_graph,
    };
    let tls = args.tls.tls()?;
    let servers =
        ServerList::parse(&args.server).map_err(|e| UsageError(format!("--server: {e}")))?;
    Ok(Config {
        scrape,
        actions,
        servers,
        tls,
        token,
        rootfs: args.rootfs,
        settings,
        dependencies,
        watch_files,
        request_timeout: args.request_timeout,
        probe_timeout: args.probe_timeout,
        pg,
        config_loop,
    })
}

/// Completes on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
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
    let transport =
        HttpTransport::with_servers(&cfg.servers, cfg.token, cfg.request_timeout, &cfg.tls)
            .map_err(|e| UsageError(e.to_string()))?;
    let mut collector = HostCollector::new(cfg.rootfs.clone(), cfg.dependencies, cfg.probe_timeout)
        .with_watch_files(cfg.watch_files.clone());
    if let Some(url) = cfg.scrape.clone() {
        collector = collector.with_scrape(url);
    }
    let action_parts = match &cfg.actions {
        Some(a) => {
            std::fs::create_dir_all(&a.state_dir)
                .map_err(|e| UsageError(format!("--state-dir {}: {e}", a.state_dir.display())))?;
            let executor = Executor::new(
                cfg.rootfs.clone(),
                &a.state_dir,
                &a.protect,
                a.cgroup.clone(),
            )
            .map_err(|e| UsageError(e.to_string()))?
            .with_allow_list(a.allow.clone())
            .with_databases(cfg.pg.clone());
            tracing::info!(allowed = %a.allow, "Actions this agent runs.");
            // The shadows this agent followed before it stopped: followed again at once, on a
            // thread of their own (a start may take a base point), not after the server's
            // next call.
            let resume = executor.shadow_resumer();
            std::thread::Builder::new()
                .name("shadow-resume".into())
                .spawn(move || {
                    for r in resume() {
                        match r.result {
                            Ok(out) => tracing::info!(shadow = %r.name, output = %out, "Shadow followed again after the agent's restart."),
                            Err(e) => tracing::warn!(shadow = %r.name, error = %e, "Shadow not resumed; the server's task will start it again if it still keeps it."),
                        }
                    }
                })
                .context("could not start the shadow-resume thread")?;
            let journal = Journal::open(&a.state_dir).map_err(|e| UsageError(e.to_string()))?;
            let settings = ActionSettings {
                wait: a.wait,
                backoff: cfg.settings.backoff,
            };
            Some((executor, journal, settings))
        }
        None => None,
    };
    // One thread: the agent's work is a few file reads and one request per interval, and the
    // idle-memory goal (15 MB) leaves no room for a worker pool.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")?;
    tracing::info!(host = %cfg.settings.name, server = %cfg.servers, rootfs = %cfg.rootfs.display(),
        interval_ms = cfg.settings.interval.as_millis() as u64, actions = action_parts.is_some(), "Agent started.");
    // A certificate the agent does not trust will not become trusted by retrying: say so and
    // stop (exit 3). A server that is only down is waited for, as always.
    rt.block_on(transport.verify_server())
        .map_err(super::Unreachable)?;
    let name = cfg.settings.name.clone();
    let collector = bellwether_agent::pg::PgCollector::new(collector, cfg.pg.clone());
    let agent = Agent::new(cfg.settings, transport.clone(), collector);
    let token = agent.token_watch();
    let config_token = agent.token_watch();
    let config_transport = transport.clone();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let (stats, action_stats) = rt.block_on(async {
        let signal = async {
            shutdown_signal().await;
            stop_tx.send_replace(true);
        };
        let actions = async {
            match action_parts {
                Some((executor, journal, settings)) => Some(
                    ActionLoop::new(settings, transport, executor, journal, token)
                        .run(stopped(stop_rx.clone()))
                        .await,
                ),
                None => None,
            }
        };
        let config = async {
            if !cfg.pg.is_empty() || !cfg.config_loop.files.is_empty() {
                bellwether_agent::pg::config_loop(
                    config_transport,
                    config_token,
                    cfg.pg.clone(),
                    cfg.config_loop.clone(),
                    stopped(stop_rx.clone()),
                )
                .await;
            }
        };
        let work = async {
            let (s, a, ()) = tokio::join!(agent.run(stopped(stop_rx.clone())), actions, config);
            (s, a)
        };
        tokio::pin!(work);
        tokio::select! {
            r = &mut work => r,
            // After the signal both loops see the stop and finish.
            () = signal => work.await,
        }
    });
    tracing::info!(host = %name, collections = stats.collections, profiles_sent = stats.profiles_sent,
        samples_sent = stats.samples_sent, dropped = stats.dropped_total,
        buffered_at_exit = stats.buffered_at_exit, "Agent stopped.");
    if let Some(a) = action_stats {
        tracing::info!(host = %name, actions_run = a.ran, actions_replayed = a.replayed,
            reports_sent = a.reports_sent, "Action loop stopped.");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_need_a_key() {
        assert_eq!(
            parse_label("role=web").unwrap(),
            ("role".into(), "web".into())
        );
        assert_eq!(parse_label("role=").unwrap(), ("role".into(), "".into()));
        assert!(parse_label("role").unwrap_err().0.contains("expected K=V"));
        assert!(parse_label("=web")
            .unwrap_err()
            .0
            .contains("key before '='"));
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
