//! `bellwether server`: the control plane (API, store, drift, /metrics).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use bellwether_server::{Server, ServerConfig, DEFAULT_BODY_LIMIT};
use bellwether_store::StoreConfig;

use super::UsageError;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on. Port 0 picks a free port; the chosen address is printed as the
    /// first line (`listening on http://ADDR`, or https) and written to --addr-file. Plain
    /// HTTP is served on loopback addresses only, unless --insecure-listen.
    #[arg(long, default_value = "127.0.0.1:7878")]
    listen: String,
    /// Serve HTTPS with this certificate chain (PEM, the server's certificate first, then
    /// any intermediates). Needs --tls-key.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Allow plain HTTP on an address that is not loopback (such as 0.0.0.0). Tokens then
    /// cross the network unencrypted: only behind a TLS-terminating proxy or on a network
    /// you trust.
    #[arg(long)]
    insecure_listen: bool,
    /// Directory for the SQLite store (bellwether.db) and the token files admin.token,
    /// operator.token and enrol.token. Created when missing. With --database, only the token files go here.
    #[arg(long, env = "BELLWETHER_DATA_DIR", default_value = super::token::DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// Use PostgreSQL instead of SQLite: postgres://USER[:PASSWORD]@HOST:PORT/DB.
    #[arg(long, env = "BELLWETHER_DATABASE", hide_env_values = true)]
    database: Option<String>,
    /// Use this operator token (for the CLI and operators) instead of a generated one.
    #[arg(long, env = "BELLWETHER_OPERATOR_TOKEN", hide_env_values = true)]
    operator_token: Option<String>,
    /// Use this enrolment token (for agents enrolling) instead of a generated one.
    #[arg(long, env = "BELLWETHER_ENROL_TOKEN", hide_env_values = true)]
    enrol_token: Option<String>,
    /// Use this admin token (to make, list and revoke tokens) instead of a generated one.
    #[arg(long, env = "BELLWETHER_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Write the bound address (ADDR:PORT) to this file once listening, atomically.
    #[arg(long, value_name = "FILE")]
    addr_file: Option<PathBuf>,
    /// How long in-flight requests may finish after SIGINT or SIGTERM.
    #[arg(long, default_value = "10s", value_parser = bellwether_model::duration::parse)]
    grace: Duration,
    /// Largest request body accepted, in bytes; larger ones get 413 before they are read.
    #[arg(long, default_value_t = DEFAULT_BODY_LIMIT)]
    body_limit: usize,
    /// Recent samples over this window stand for a host's metrics in baselines and drift.
    #[arg(long, default_value = "60s", value_parser = bellwether_model::duration::parse)]
    metric_window: Duration,
    /// Samples older than this are deleted (checked once a minute).
    #[arg(long, default_value = "7d", value_parser = bellwether_model::duration::parse)]
    sample_retention: Duration,
    /// Retrain the failure model after this many new deployment outcomes (finished rollout
    /// hosts and imported history rows); 0 retrains only when asked (`bellwether model train`).
    #[arg(long, default_value_t = bellwether_server::model_api::DEFAULT_RETRAIN_AFTER, value_name = "N")]
    retrain_after: u64,
    /// Refuse a sample batch holding a timestamp older than this by the server's clock.
    #[arg(long, default_value = "24h", value_parser = bellwether_model::duration::parse)]
    sample_max_age: Duration,
    /// Refuse a sample batch holding a timestamp further ahead of the server's clock than this
    /// (a host's metric window is anchored on its newest sample).
    #[arg(long, default_value = "5m", value_parser = bellwether_model::duration::parse)]
    sample_max_ahead: Duration,
    /// The Prometheus server (`http://127.0.0.1:9090`) that rollouts' `source: prometheus`
    /// metrics are read from when their plan names none (`analysis.prometheus.address`). See
    /// docs/prometheus.md.
    #[arg(long, value_name = "URL", value_parser = parse_prometheus_url)]
    prometheus_url: Option<String>,
    /// With a PostgreSQL store, any number of servers may share it: the one holding the
    /// store's leader lease drives the rollouts, the others serve reads and forward writes to
    /// it, and take over within about the lease's length when it dies. The leader renews every
    /// third of it, the others try to take it every sixth (default 3s: renewed every 1s, tried
    /// every 500ms). Expiry is measured on the database's clock. See docs/ha.md.
    #[arg(long, value_name = "DURATION", value_parser = bellwether_model::duration::parse)]
    lease_ttl: Option<Duration>,
    /// The URL other replicas (and clients sent here) reach this server at, as in
    /// http://10.0.0.5:7878; default: the scheme and the bound address. PostgreSQL store only.
    #[arg(long, value_name = "URL")]
    advertise_url: Option<String>,
    /// Trust this CA (PEM) when forwarding to a leader whose --advertise-url is https://,
    /// instead of the system roots. PostgreSQL store only.
    #[arg(long, value_name = "PEM")]
    replica_ca_file: Option<PathBuf>,
    /// NAME=FILE: the admin token of a `bellwether proxy` that patches drive, read from FILE
    /// (mode 0600) at each use; a patch names it (`patch start --proxy-token NAME`), so the
    /// token is never in the store. Repeat for several proxies.
    #[arg(long, value_name = "NAME=FILE", value_parser = proxy_token_file)]
    proxy_token_file: Vec<(String, PathBuf)>,
    /// Attempts in all at each alert delivery, the first included (1 to 100); a webhook that
    /// fails with 408, 429, 5xx, a timeout or a refused connection is tried again until then.
    /// See docs/alerts.md.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = alert_attempts)]
    alert_attempts: u32,
    /// The wait after an alert delivery's first failed attempt, before jitter; it doubles
    /// with each failure up to --alert-backoff-max (10ms to 24h).
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = alert_backoff)]
    alert_backoff: Duration,
    /// The longest wait between two attempts at an alert delivery (10ms to 24h; at least
    /// --alert-backoff). A receiver's Retry-After is honoured up to an hour.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = alert_backoff)]
    alert_backoff_max: Duration,
    /// How long one alert POST may take, connecting included (100ms to 10m).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = alert_timeout)]
    alert_timeout: Duration,
    /// How often the alert dispatcher reads the event log and the due deliveries (10ms to 1m).
    #[arg(long, value_name = "DURATION", default_value = "500ms", value_parser = alert_poll)]
    alert_poll: Duration,
    /// The most alert deliveries in flight at once (1 to 256).
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = alert_concurrency)]
    alert_concurrency: usize,
    /// Delete settled alert deliveries (delivered or failed) and their attempts from the
    /// delivery log once they are this old (1m to 10 years). Pending ones are never deleted.
    #[arg(long, value_name = "DURATION", default_value = "30d", value_parser = alert_keep_for)]
    alert_log_keep_for: Duration,
    /// Keep at most this many settled alert deliveries in the delivery log, the newest
    /// (1 to 100000000).
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = alert_keep_last)]
    alert_log_keep_last: u64,
}

/// A number within [lo, hi], for the `--alert-…` flags (clap names the flag; the config file
/// names its key and line).
fn number_in(s: &str, lo: u64, hi: u64) -> Result<u64, String> {
    let v: u64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number"))?;
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is out of range: it must be {lo} to {hi}"))
    }
}

/// A duration within [lo, hi].
fn span_in(s: &str, lo: Duration, hi: Duration) -> Result<Duration, String> {
    let d = bellwether_model::duration::parse(s).map_err(|e| e.to_string())?;
    if (lo..=hi).contains(&d) {
        Ok(d)
    } else {
        use bellwether_server::alerts::span;
        Err(format!(
            "{s} is out of range: it must be {} to {}",
            span(lo),
            span(hi)
        ))
    }
}

fn alert_attempts(s: &str) -> Result<u32, String> {
    number_in(s, 1, bellwether_server::alerts::MAX_ATTEMPTS).map(|v| v as u32)
}

fn alert_concurrency(s: &str) -> Result<usize, String> {
    number_in(s, 1, bellwether_server::alerts::MAX_CONCURRENCY).map(|v| v as usize)
}

fn alert_keep_last(s: &str) -> Result<u64, String> {
    number_in(s, 1, bellwether_server::alerts::MAX_KEEP_LAST)
}

fn alert_backoff(s: &str) -> Result<Duration, String> {
    use bellwether_server::alerts::{MAX_BACKOFF, MIN_BACKOFF};
    span_in(s, MIN_BACKOFF, MAX_BACKOFF)
}

fn alert_timeout(s: &str) -> Result<Duration, String> {
    use bellwether_server::alerts::{MAX_TIMEOUT, MIN_TIMEOUT};
    span_in(s, MIN_TIMEOUT, MAX_TIMEOUT)
}

fn alert_poll(s: &str) -> Result<Duration, String> {
    use bellwether_server::alerts::{MAX_POLL, MIN_POLL};
    span_in(s, MIN_POLL, MAX_POLL)
}

fn alert_keep_for(s: &str) -> Result<Duration, String> {
    use bellwether_server::alerts::{MAX_KEEP_FOR, MIN_KEEP_FOR};
    span_in(s, MIN_KEEP_FOR, MAX_KEEP_FOR)
}

/// The alert settings of the flags, checked together (a first wait longer than the longest).
fn alert_settings(
    args: &Args,
) -> Result<
    (
        bellwether_server::alerts::AlertPolicy,
        bellwether_server::alerts::AlertLimits,
    ),
    UsageError,
> {
    let policy = bellwether_server::alerts::AlertPolicy {
        attempts: args.alert_attempts,
        base: args.alert_backoff,
        max: args.alert_backoff_max,
        timeout: args.alert_timeout,
        poll: args.alert_poll,
    };
    let limits = bellwether_server::alerts::AlertLimits {
        concurrency: args.alert_concurrency,
        keep_for: args.alert_log_keep_for,
        keep_last: args.alert_log_keep_last,
        ..Default::default()
    };
    policy.check().map_err(UsageError)?;
    limits.check().map_err(UsageError)?;
    Ok((policy, limits))
}

fn proxy_token_file(s: &str) -> Result<(String, PathBuf), String> {
    let (name, file) = s
        .split_once('=')
        .filter(|(n, f)| !n.is_empty() && !f.is_empty())
        .ok_or_else(|| format!("{s:?} is not NAME=FILE"))?;
    bellwether_engine::patch::check_name(name).map_err(|e| format!("NAME: {e}"))?;
    Ok((name.to_string(), PathBuf::from(file)))
}

/// The default of --lease-ttl.
const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(3);

/// The replica settings of a PostgreSQL store, from --lease-ttl and --advertise-url.
fn ha_settings(args: &Args) -> anyhow::Result<Option<bellwether_server::HaSettings>> {
    if args.database.is_none() {
        if args.lease_ttl.is_some()
            || args.advertise_url.is_some()
            || args.replica_ca_file.is_some()
        {
            return Err(UsageError(
                "--lease-ttl, --advertise-url and --replica-ca-file apply to servers sharing a PostgreSQL store (--database postgres://…); a SQLite store has one server, which always leads".into(),
            )
            .into());
        }
        return Ok(None);
    }
    let ttl = args.lease_ttl.unwrap_or(DEFAULT_LEASE_TTL);
    if ttl < Duration::from_millis(300) || ttl > Duration::from_secs(3600) {
        return Err(UsageError(format!(
            "--lease-ttl {}: must be between 300ms and 1h",
            bellwether_model::duration::Dur(ttl)
        ))
        .into());
    }
    let advertise_url = match &args.advertise_url {
        None => None,
        Some(u) => {
            let rest = u
                .strip_prefix("http://")
                .or_else(|| u.strip_prefix("https://"))
                .unwrap_or("");
            if rest.is_empty() || rest.contains(char::is_whitespace) {
                return Err(UsageError(format!(
                    "--advertise-url {u:?}: must be an http:// or https:// URL with a host, as in http://10.0.0.5:7878"
                ))
                .into());
            }
            Some(u.trim_end_matches('/').to_string())
        }
    };
    let tls = bellwether_tls::ClientTls::from_flags(args.replica_ca_file.clone(), &[])
        .map_err(|e| UsageError(e.to_string()))?;
    if let Some(ca) = &tls.ca_file {
        // Read now, so a bad file is a usage error before anything starts.
        bellwether_tls::client_config(&tls)
            .map_err(|e| UsageError(format!("--replica-ca-file {}: {e}", ca.display())))?;
    }
    Ok(Some(bellwether_server::HaSettings {
        lease_ttl: ttl,
        renew_every: ttl / 3,
        retry_every: ttl / 6,
        advertise_url,
        tls,
    }))
}

fn store_config(database: Option<&str>, data_dir: &Path) -> anyhow::Result<StoreConfig> {
    match database {
        Some(url) => {
            Ok(StoreConfig::from_url(url).map_err(|e| UsageError(format!("--database: {e}")))?)
        }
        None => {
            std::fs::create_dir_all(data_dir)
                .with_context(|| format!("cannot create the data dir {}", data_dir.display()))?;
            Ok(StoreConfig::sqlite_in(data_dir))
        }
    }
}

fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    bellwether_fs::write_atomic(path, text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The stop signals (SIGINT, SIGTERM), registered when this is called rather than when the
/// future is first polled: a signal that arrives as soon as the address is announced (a test
/// or a supervisor that stops the server at once) then stops it gracefully instead of killing it.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    let (mut term, mut int) = {
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
        )
    };
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("Received a stop signal.");
    })
}

/// A store the server refuses to start on (damaged, or written by a newer bellwether) is bad
/// input the operator must fix: exit code 2, like any unusable file.
fn refused_store(err: bellwether_server::ServerError) -> anyhow::Error {
    use bellwether_server::ServerError;
    use bellwether_store::StoreError;
    match err {
        ServerError::Store(e @ (StoreError::Damaged { .. } | StoreError::TooNew { .. })) => {
            UsageError(e.to_string()).into()
        }
        other => other.into(),
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.body_limit == 0 {
        return Err(UsageError("--body-limit must be at least 1 byte".into()).into());
    }
    let given = [&args.admin_token, &args.operator_token, &args.enrol_token];
    if given
        .iter()
        .enumerate()
        .any(|(i, t)| t.is_some() && given[i + 1..].contains(t))
    {
        return Err(UsageError(
            "--admin-token, --operator-token and --enrol-token must differ: one token cannot be of two kinds (`bellwether token new` makes another)".into(),
        )
        .into());
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            Some(bellwether_tls::server_config(cert, key).map_err(|e| UsageError(e.to_string()))?)
        }
        _ => {
            super::tls::check_plain_listen(&args.listen, args.insecure_listen)?;
            None
        }
    };
    let ha = ha_settings(&args)?;
    let (alert_policy, alert_limits) = alert_settings(&args)?;
    let store = store_config(args.database.as_deref(), &args.data_dir)?;
    let backend = match &store {
        StoreConfig::Sqlite { path } => format!("sqlite at {}", path.display()),
        StoreConfig::Postgres { .. } => "postgres".to_string(),
    };
    let mut config = ServerConfig::new(store, Some(args.data_dir.clone()));
    config.operator_token = args.operator_token.clone();
    config.enrol_token = args.enrol_token.clone();
    config.admin_token = args.admin_token.clone();
    config.grace = args.grace;
    config.body_limit = args.body_limit;
    config.metric_window = args.metric_window;
    config.sample_retention = args.sample_retention;
    config.retrain_after = args.retrain_after;
    config.sample_max_age = args.sample_max_age;
    config.sample_max_ahead = args.sample_max_ahead;
    config.proxy_tokens = args.proxy_token_file.iter().cloned().collect();
    config.ha = ha;
    config.prometheus_url = args.prometheus_url.clone();
    config.alerts = alert_policy;
    config.alert_limits = alert_limits;
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    rt.block_on(async {
        // The store is opened and checked before any token file is written, so a damaged
        // store leaves the token files as they were.
        let mut server = Server::open(config).await.map_err(refused_store)?;
        let stop = shutdown_signal()?;
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let addr = listener
            .local_addr()
            .context("cannot read the bound address")?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        // A replica alone on its store leads before it announces its address.
        server
            .start_leadership(&format!("{scheme}://{addr}"))
            .await;
        if tls.is_none() && !addr.ip().to_canonical().is_loopback() {
            tracing::warn!(addr = %addr, "Serving plain HTTP off loopback (--insecure-listen): tokens cross the network unencrypted.");
        }
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {scheme}://{addr}")?;
        if let Some(f) = &args.addr_file {
            write_atomically(f, &format!("{addr}\n"))?;
        }
        writeln!(out, "store: {backend}")?;
        for notice in &server.tokens {
            writeln!(out, "{notice}")?;
        }
        out.flush()?;
        drop(out);
        tracing::info!(addr = %addr, scheme, "Serving.");
        match tls {
            Some(tls) => server.serve_tls(listener, tls, stop).await?,
            None => server.serve(listener, stop).await?,
        }
        tracing::info!("Stopped.");
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `--prometheus-url`: `http://` or `https://` with a host, no query.
fn parse_prometheus_url(s: &str) -> Result<String, String> {
    bellwether_engine::rollout::promql::check_address(s)
}
