//! The Bellwether control plane over HTTP+JSON: agent enrolment with tokens, hosts, profiles,
//! metric samples, baselines, per-host and fleet drift, `/healthz` and `/metrics`.
//!
//! The server owns no state of its own beyond counters: everything lives in
//! [`bellwether_store::Store`], and the event log there is the truth about what happened
//! (enrolments, baselines, drift recomputations). It never scores drift itself — that is
//! `bellwether_drift`'s job — and it never stores a plain token.
//!
//! [`Server::open`] opens the store and makes sure the operator and enrolment tokens exist;
//! [`Server::serve`] answers on a bound listener until the shutdown future completes, then
//! drains in-flight requests for at most the grace period.

#![forbid(unsafe_code)]

pub mod alerts;
mod api;
mod auth;
mod body;
pub mod client;
pub mod config;
mod drift;
mod error;
mod forward;
pub mod leader;
mod listener;
mod metrics;
pub mod mirror;
pub mod model_api;
pub mod patch;
mod peers;
pub mod prometheus;
pub mod rollout;
pub mod shadow;
mod stream;
mod task;
mod tokens;
pub mod types;
mod ui;

use std::future::{Future, IntoFuture};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::Router;
use bellwether_store::{Store, StoreConfig, StoreError};

pub use api::ROUTES;
pub use auth::{Access, REFUSALS_LOGGED_PER_MINUTE, RULES};
pub use body::parse_json;
pub use error::ApiError;
pub use forward::{FORWARDED_HEADER, LEADER_HEADER};
pub use leader::{HaSettings, Role};
pub use metrics::Metrics;
pub use task::Tasks;
pub use tokens::{generate_token, CreateToken, CreatedToken, TokenNotice, TokenSource};

/// The default request body limit: 4 MiB.
pub const DEFAULT_BODY_LIMIT: usize = 4 * 1024 * 1024;

/// Everything the server needs to start.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub store: StoreConfig,
    /// Where `admin.token`, `operator.token` and `enrol.token` are written; `None` means the
    /// operator and enrolment tokens must be given (and there is no admin token unless given).
    pub data_dir: Option<PathBuf>,
    /// Use this admin token instead of a generated one.
    pub admin_token: Option<String>,
    /// Use this operator token instead of a generated one.
    pub operator_token: Option<String>,
    /// Use this enrolment token instead of a generated one.
    pub enrol_token: Option<String>,
    /// Largest request body accepted, in bytes.
    pub body_limit: usize,
    /// How long in-flight requests may finish after shutdown is asked for.
    pub grace: Duration,
    /// The window of recent samples whose mean stands for a host's metrics in baselines and
    /// drift.
    pub metric_window: Duration,
    /// Samples older than this (by their agent timestamp) are deleted, once a minute.
    pub sample_retention: Duration,
    /// Retrain the failure model after this many new outcomes; 0 never retrains by itself.
    pub retrain_after: u64,
    /// A sample batch holding a timestamp older than this (by the server's clock) is refused.
    pub sample_max_age: Duration,
    /// A sample batch holding a timestamp further ahead of the server's clock than this is
    /// refused: the metric window is anchored on a host's newest sample, so one sample from the
    /// far future would freeze it.
    pub sample_max_ahead: Duration,
    /// `--proxy-token-file NAME=FILE`: the admin tokens of the proxies patches drive, by name.
    pub proxy_tokens: std::collections::BTreeMap<String, PathBuf>,
    /// `Some`: this server is one of several replicas sharing a PostgreSQL store; it leads
    /// (and drives the durable tasks) only while it holds the store's leader lease, and
    /// forwards writes to the leader otherwise (see `leader` and docs/ha.md). `None`: it owns
    /// the store alone and always leads.
    pub ha: Option<HaSettings>,
    /// `--prometheus-url`: the Prometheus server a plan's `source: prometheus` metrics are
    /// read from when the plan names none (`analysis.prometheus.address`).
    pub prometheus_url: Option<String>,
    /// The retry policy of alert deliveries (docs/alerts.md).
    pub alerts: alerts::AlertPolicy,
    /// How many alert deliveries run at once and how long the delivery log keeps settled
    /// ones (docs/alerts.md).
    pub alert_limits: alerts::AlertLimits,
}

/// The default of [`ServerConfig::sample_max_age`]: 24 hours.
pub const DEFAULT_SAMPLE_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// The default of [`ServerConfig::sample_max_ahead`]: 5 minutes, Kerberos' clock-skew
/// tolerance.
pub const DEFAULT_SAMPLE_MAX_AHEAD: Duration = Duration::from_secs(5 * 60);

impl ServerConfig {
    /// Defaults for a store: 4 MiB bodies, 10 s grace, 60 s metric window, no fixed tokens.
    pub fn new(store: StoreConfig, data_dir: Option<PathBuf>) -> ServerConfig {
        ServerConfig {
            store,
            data_dir,
            admin_token: None,
            operator_token: None,
            enrol_token: None,
            body_limit: DEFAULT_BODY_LIMIT,
            grace: Duration::from_secs(10),
            metric_window: Duration::from_secs(60),
            sample_retention: Duration::from_secs(7 * 24 * 3600),
            retrain_after: model_api::DEFAULT_RETRAIN_AFTER,
            sample_max_age: DEFAULT_SAMPLE_MAX_AGE,
            sample_max_ahead: DEFAULT_SAMPLE_MAX_AHEAD,
            proxy_tokens: Default::default(),
            ha: None,
            prometheus_url: None,
            alerts: alerts::AlertPolicy::default(),
            alert_limits: alerts::AlertLimits::default(),
        }
    }
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write token file {path}: {source}")]
    TokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no {kind} token exists and there is no data dir to write a generated one to; pass --{kind}-token")]
    NoTokenDestination { kind: &'static str },
    #[error("the admin, operator and enrolment tokens must differ: one token cannot be of two kinds; pass different values (`bellwether token new` makes one)")]
    SameTokens,
    #[error("the given {kind} token is already this server's {other} token; one token cannot be of two kinds, pass another value (`bellwether token new` makes one)")]
    TokenOfOtherKind {
        kind: &'static str,
        other: &'static str,
    },
    #[error("cannot set up forwarding to the leader: {0}")]
    Forward(String),
    #[error("cannot resume the stored tasks: {0}")]
    Resume(String),
    #[error("serving HTTP failed: {0}")]
    Serve(std::io::Error),
    #[error("--prometheus-url: {0}")]
    PrometheusUrl(String),
    #[error("{0}")]
    AlertSettings(String),
}

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    pub(crate) store: Store,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) metric_window_ms: i64,
    /// How far behind and ahead of the server's clock a sample's timestamp may be.
    pub(crate) sample_max_age_ms: i64,
    pub(crate) sample_max_ahead_ms: i64,
    pub(crate) predict: Arc<model_api::Predictor>,
    /// The durable tasks (rollouts, patches…) this process drives.
    pub(crate) tasks: Arc<task::Tasks>,
    /// What patches need beside their tasks: the proxies' admin token files.
    pub(crate) patches: Arc<patch::Patches>,
    /// Whether this replica leads, and the terms its task runners hold.
    pub(crate) leader: Arc<leader::Leadership>,
    pub(crate) forward: forward::Forwarder,
    /// Turns true when the server shuts down, so long-lived answers (the event stream) end.
    pub(crate) stop: Arc<tokio::sync::watch::Sender<bool>>,
    /// The retry policy of alert deliveries.
    pub(crate) alerts: Arc<alerts::AlertPolicy>,
    /// The dispatcher's concurrency and the delivery log's retention.
    pub(crate) alert_limits: Arc<alerts::AlertLimits>,
    /// The default Prometheus of rollouts' `source: prometheus` metrics, and the client
    /// their queries share.
    pub(crate) prometheus: Arc<PrometheusDefault>,
}

/// `--prometheus-url` (checked) and the HTTP client of every Prometheus query.
pub(crate) struct PrometheusDefault {
    pub(crate) url: Option<String>,
    pub(crate) http: reqwest::Client,
}

/// An opened server, ready to serve.
pub struct Server {
    state: AppState,
    body_limit: usize,
    grace: Duration,
    sample_retention: Duration,
    /// Whether [`Server::start_leadership`] ran.
    leadership_started: bool,
    /// Where the operator and enrolment tokens come from, for the operator to read.
    pub tokens: Vec<TokenNotice>,
}

impl Server {
    /// Opens and migrates the store, and makes sure an operator and an enrolment token exist.
    pub async fn open(config: ServerConfig) -> Result<Server, ServerError> {
        let given = [
            &config.admin_token,
            &config.operator_token,
            &config.enrol_token,
        ];
        for (i, a) in given.iter().enumerate() {
            if a.is_some() && given[i + 1..].contains(a) {
                return Err(ServerError::SameTokens);
            }
        }
        config.alerts.check().map_err(ServerError::AlertSettings)?;
        config
            .alert_limits
            .check()
            .map_err(ServerError::AlertSettings)?;
        let prometheus_url = config
            .prometheus_url
            .as_deref()
            .map(bellwether_engine::rollout::promql::check_address)
            .transpose()
            .map_err(ServerError::PrometheusUrl)?;
        let store = Store::open(&config.store).await?;
        let tokens = tokens::bootstrap(&store, &config).await?;
        let forwarder = forward::Forwarder::new(
            &config
                .ha
                .as_ref()
                .map(|h| h.tls.clone())
                .unwrap_or_default(),
        )
        .map_err(ServerError::Forward)?;
        let leader = match (&config.ha, &config.store) {
            (Some(settings), StoreConfig::Postgres { .. }) => {
                // Fencing on from the start: nothing is saved before this replica leads.
                store.set_fence(None);
                leader::Leadership::replicated(settings.clone())
            }
            // SQLite is one process's store: always the leader.
            _ => leader::Leadership::single(),
        };
        let server = Server {
            state: AppState {
                store,
                metrics: Arc::new(Metrics::default()),
                metric_window_ms: config.metric_window.as_millis().min(i64::MAX as u128) as i64,
                sample_max_age_ms: config.sample_max_age.as_millis().min(i64::MAX as u128) as i64,
                sample_max_ahead_ms: config.sample_max_ahead.as_millis().min(i64::MAX as u128)
                    as i64,
                predict: Arc::new(model_api::Predictor::new(config.retrain_after)),
                tasks: Arc::new(task::Tasks::default()),
                patches: Arc::new(patch::Patches::new(config.proxy_tokens.clone())),
                leader: Arc::new(leader),
                forward: forwarder,
                prometheus: Arc::new(PrometheusDefault {
                    url: prometheus_url,
                    http: reqwest::Client::new(),
                }),
                alerts: Arc::new(config.alerts.clone()),
                alert_limits: Arc::new(config.alert_limits.clone()),
                stop: Arc::new(tokio::sync::watch::channel(false).0),
            },
            body_limit: config.body_limit,
            grace: config.grace,
            sample_retention: config.sample_retention,
            leadership_started: false,
            tokens,
        };
        if !server.state.leader.is_replicated() {
            // One process: it leads from the start. Replicas resume their tasks each time they
            // gain the lease (`leader`).
            let resumed = task::resume_all(&server.state)
                .await
                .map_err(|e| ServerError::Resume(e.message))?;
            if resumed > 0 {
                tracing::info!(tasks = resumed, "Resumed durable tasks from the store.");
            }
        }
        Ok(server)
    }

    /// For a replica (`ServerConfig::ha`): the first try at the leader lease, with `url` as the
    /// address other replicas and clients reach this one at (unless the settings name one).
    /// Call it once bound and before announcing the address, so a replica alone on its store
    /// leads before its first request. [`Server::serve`] calls it when it was not called.
    pub async fn start_leadership(&mut self, url: &str) {
        if self.state.leader.is_replicated() && !self.leadership_started {
            self.leadership_started = true;
            self.state
                .leader
                .first_attempt(&self.state, url.to_string())
                .await;
        }
    }

    /// This replica's leadership (always the leader without `ServerConfig::ha`).
    pub fn leadership(&self) -> Arc<leader::Leadership> {
        self.state.leader.clone()
    }

    /// The store this server uses.
    pub fn store(&self) -> &Store {
        &self.state.store
    }

    /// The durable tasks (rollouts, patches…) this server drives.
    pub fn tasks(&self) -> &Tasks {
        &self.state.tasks
    }

    /// Follows the newest failure-model version this server trained (0 before the first),
    /// so a caller can await an automatic retraining.
    pub fn trained_models(&self) -> tokio::sync::watch::Receiver<i64> {
        self.state.predict.subscribe()
    }

    /// The HTTP application, for tests that drive it without a socket.
    pub fn router(&self) -> Router {
        let limit = body::BodyLimit(self.body_limit);
        api::routes()
            .merge(model_api::routes())
            .merge(rollout::routes())
            .merge(patch::routes())
            .merge(config::routes())
            .merge(mirror::routes())
            .merge(shadow::routes())
            .merge(alerts::routes())
            // Inside the request counter, so refusals are counted too.
            .route_layer(axum::middleware::from_fn_with_state(
                auth::AuthState::new(self.state.clone()),
                auth::authorize,
            ))
            .route_layer(axum::middleware::from_fn_with_state(
                self.state.metrics.clone(),
                metrics::count_requests,
            ))
            // The dashboard's page and assets need no token (the page asks for one, and every
            // API call it makes carries it).
            .merge(ui::routes())
            .layer(DefaultBodyLimit::max(self.body_limit))
            // A follower sends writes and the agents' long-poll to the leader, before its own
            // routing and authentication: the leader authenticates and audits them.
            .layer(axum::middleware::from_fn_with_state(
                self.state.clone(),
                forward::to_leader,
            ))
            .layer(axum::middleware::from_fn_with_state(limit, body::reject_oversized))
            .layer(
                tower_http::trace::TraceLayer::new_for_http().make_span_with(
                    |req: &axum::http::Request<axum::body::Body>| {
                        tracing::info_span!("request", method = %req.method(), path = %req.uri().path())
                    },
                ),
            )
            .with_state(self.state.clone())
    }

    /// Serves plain HTTP on `listener` until `shutdown` completes, then lets in-flight
    /// requests finish for at most the grace period, and closes the store.
    pub async fn serve(
        mut self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        if let Ok(addr) = listener.local_addr() {
            self.start_leadership(&format!("http://{addr}")).await;
        }
        self.serve_on(listener, shutdown).await
    }

    /// As [`Server::serve`], over TLS with `tls` (see `bellwether_tls::server_config`):
    /// handshakes run concurrently, each bounded in time, before a connection reaches HTTP.
    pub async fn serve_tls(
        mut self,
        listener: tokio::net::TcpListener,
        tls: Arc<rustls::ServerConfig>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        if let Ok(addr) = listener.local_addr() {
            self.start_leadership(&format!("https://{addr}")).await;
        }
        let incoming = listener::Tls(
            bellwether_tls::TlsIncoming::new(listener, tls).map_err(ServerError::Serve)?,
        );
        self.serve_on(incoming, shutdown).await
    }

    async fn serve_on<L>(
        self,
        listener: L,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError>
    where
        L: axum::serve::Listener,
        L::Addr: std::fmt::Debug,
    {
        let app = self.router();
        let stop_tx = self.state.stop.clone();
        let mut stop_rx = stop_tx.subscribe();
        let server = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop_rx.wait_for(|stop| *stop).await;
            })
            .into_future();
        tokio::pin!(server);
        let pruner = tokio::spawn(prune_samples_every_minute(
            self.state.store.clone(),
            self.sample_retention,
            stop_tx.subscribe(),
        ));
        let leadership = tokio::spawn(leader::run(self.state.clone(), stop_tx.subscribe()));
        // Alerts are sent by the leader only; the dispatcher waits for a term.
        let alerts = tokio::spawn(alerts::run(self.state.clone(), stop_tx.subscribe()));
        let result = tokio::select! {
            r = &mut server => r,
            () = shutdown => {
                tracing::info!(grace_ms = self.grace.as_millis() as u64, "Shutting down; draining in-flight requests.");
                stop_tx.send_replace(true);
                match tokio::time::timeout(self.grace, &mut server).await {
                    Ok(r) => r,
                    Err(_) => {
                        tracing::warn!(grace_ms = self.grace.as_millis() as u64, "Grace period over; closing remaining connections.");
                        Ok(())
                    }
                }
            }
        };
        stop_tx.send_replace(true);
        let _ = pruner.await;
        let _ = alerts.await;
        // A leader releases its lease, so another replica takes over at once.
        let _ = leadership.await;
        self.state.store.close().await;
        result.map_err(ServerError::Serve)
    }
}

/// Deletes samples older than `retention` once a minute until `stop` turns true, so the
/// samples table stays bounded.
async fn prune_samples_every_minute(
    store: Store,
    retention: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let retention_ms = retention.as_millis().min(i64::MAX as u128) as i64;
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        match store
            .prune_samples(now_ms().saturating_sub(retention_ms))
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "Pruned old samples."),
            Err(e) => tracing::warn!(error = %e, "Could not prune old samples."),
        }
    }
}

/// Opens the server from `config` and serves on `listener` until `shutdown` completes.
pub async fn serve(
    config: ServerConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    Server::open(config).await?.serve(listener, shutdown).await
}

/// Milliseconds since the Unix epoch, from the server's clock.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
