//! The PostgreSQL instances this agent watches (`--database NAME=URL`): the pg built-ins
//! (`pg_read_settings`, `pg_apply`, `pg_trial`) the executor runs, the instance metrics added to
//! every collection (`pg.NAME.tps`…, through the ordinary samples path), and the configuration
//! reports and learned graphs sent to the server.
//!
//! The server never sends a connection string: actions name a database by its `NAME`, and the
//! URL stays on the host (give it as `NAME=@FILE` to keep a password out of the process list).
//! The restart command (`--database-restart NAME=CMD`) is split into argv with shell-word rules
//! and run directly, never through a shell.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bellwether_config::plain::Format;
use bellwether_model::wire::{ConfigGraphRequest, ConfigReportRequest, ConfigSourceKind};
use bellwether_model::{ActionSpec, MetricSample};
use bellwether_pg::scratch::Scratch;

use crate::agent::{Collected, Collector};

/// One watched instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgDatabase {
    pub name: String,
    /// The connection URL (may hold a password: never logged or sent).
    pub url: String,
    pub restart: Option<Vec<String>>,
}

/// The watched instances, and a scratch cluster per instance made on first need.
#[derive(Clone, Default)]
pub struct PgDatabases {
    dbs: Arc<BTreeMap<String, PgDatabase>>,
    scratch: Arc<Mutex<HashMap<String, Arc<Scratch>>>>,
    /// Sampling intervals started when a `pg_apply` finished (a fresh connection and its
    /// first counter read), for [`PgCollector`] to take over on its next round.
    fresh: Arc<Mutex<HashMap<String, Fresh>>>,
}

/// A connection and the sampler whose interval began on it.
type Fresh = (bellwether_pg::Instance, bellwether_pg::Sampler);

impl std::fmt::Debug for PgDatabases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.dbs.keys()).finish()
    }
}

/// A database name: it becomes part of metric keys (`pg.NAME.tps`) and source names.
fn check_name(name: &str, flag: &str, value: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(format!(
            "{flag} {value:?}: the name {name:?} must be 1 to 64 letters, digits, '_' or '-'"
        ));
    }
    Ok(())
}

/// `--database NAME=URL` or `NAME=@FILE` (the URL is the file's first line; FILE is a path on
/// this host). The error never repeats the URL (it may hold a password).
pub fn parse_database(value: &str) -> Result<(String, String), String> {
    let Some((name, rest)) = value.split_once('=') else {
        return Err("--database: expected NAME=URL or NAME=@FILE".to_string());
    };
    let name = name.trim();
    check_name(name, "--database", name)?;
    let url = match rest.strip_prefix('@') {
        Some(file) => std::fs::read_to_string(file)
            .map_err(|e| format!("--database {name}=@{file}: {e}"))?
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string(),
        None => rest.trim().to_string(),
    };
    if url.is_empty() {
        return Err(format!("--database {name}: the URL is empty"));
    }
    if url.parse::<tokio_postgres::Config>().is_err() {
        return Err(format!(
            "--database {name}: not a valid PostgreSQL URL or conninfo (postgres://user@host:port/db)"
        ));
    }
    Ok((name.to_string(), url))
}

/// `--database-restart NAME=CMD`: CMD split into argv with shell-word rules (quotes,
/// backslashes), run without a shell.
pub fn parse_restart(value: &str) -> Result<(String, Vec<String>), String> {
    let Some((name, cmd)) = value.split_once('=') else {
        return Err(format!(
            "--database-restart {value:?}: expected NAME=COMMAND"
        ));
    };
    let name = name.trim();
    check_name(name, "--database-restart", value)?;
    let argv = shlex::split(cmd)
        .ok_or_else(|| format!("--database-restart {value:?}: unbalanced quotes in the command"))?;
    if argv.is_empty() {
        return Err(format!(
            "--database-restart {value:?}: the command is empty"
        ));
    }
    Ok((name.to_string(), argv))
}

/// `--config-file PATH[:FORMAT]`: a path inside the rootfs and its format (else from the
/// file's extension).
pub fn parse_config_file(value: &str) -> Result<(String, Format), String> {
    let (path, format) = match value.rsplit_once(':') {
        Some((p, f)) if Format::parse(f).is_some() => (p, Format::parse(f)),
        _ => (value, None),
    };
    bellwether_model::action::check_relative_path(path)
        .map_err(|e| format!("--config-file {value:?}: {e}"))?;
    let format = format.unwrap_or_else(|| Format::from_path(path));
    Ok((path.to_string(), format))
}

impl PgDatabases {
    /// The databases and their restart commands; a restart for an unknown name is refused.
    pub fn new(
        dbs: Vec<(String, String)>,
        restarts: Vec<(String, Vec<String>)>,
    ) -> Result<PgDatabases, String> {
        let mut map = BTreeMap::new();
        for (name, url) in dbs {
            if map.contains_key(&name) {
                return Err(format!("--database {name} is given twice"));
            }
            map.insert(
                name.clone(),
                PgDatabase {
                    name,
                    url,
                    restart: None,
                },
            );
        }
        for (name, argv) in restarts {
            match map.get_mut(&name) {
                Some(db) => db.restart = Some(argv),
                None => {
                    return Err(format!(
                        "--database-restart {name}: no --database {name}=URL is given"
                    ))
                }
            }
        }
        Ok(PgDatabases {
            dbs: Arc::new(map),
            scratch: Arc::default(),
            fresh: Arc::default(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.dbs.is_empty()
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.dbs.keys()
    }

    pub fn get(&self, name: &str) -> Result<&PgDatabase, String> {
        self.dbs.get(name).ok_or_else(|| {
            format!(
                "this agent has no database {name:?} (its --database names: {})",
                if self.dbs.is_empty() {
                    "none".to_string()
                } else {
                    self.dbs.keys().cloned().collect::<Vec<_>>().join(", ")
                }
            )
        })
    }

    /// The instance's catalog.
    pub async fn catalog(&self, name: &str) -> Result<bellwether_config::setting::Catalog, String> {
        let db = self.get(name)?;
        let inst = bellwether_pg::connect(&db.url)
            .await
            .map_err(|e| e.to_string())?;
        bellwether_pg::read_settings(&inst)
            .await
            .map_err(|e| e.to_string())
    }

    /// The scratch cluster of `name` (initdb'd with the instance's own binaries on first use).
    async fn scratch(&self, name: &str, version: u32) -> Result<Arc<Scratch>, String> {
        if let Some(s) = self
            .scratch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            return Ok(s.clone());
        }
        let s = tokio::task::spawn_blocking(move || {
            let bindir = bellwether_pg::find_bindir(version, None)?;
            Scratch::init(bindir)
        })
        .await
        .map_err(|e| format!("the scratch cluster setup panicked: {e}"))?
        .map_err(|e| e.to_string())?;
        let s = Arc::new(s);
        self.scratch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), s.clone());
        Ok(s)
    }

    /// After an apply (or a revert): a new sampling interval on a fresh connection (a restart
    /// ended the collector's), so the collector's next rate covers only time after the change
    /// took effect and comes one interval after it, not after a round that only re-opens the
    /// connection. Nothing when the instance does not answer (the collector reconnects).
    async fn start_interval(&self, name: &str, url: &str) {
        let connected =
            tokio::time::timeout(Duration::from_secs(2), bellwether_pg::connect(url)).await;
        let Ok(Ok(inst)) = connected else {
            return;
        };
        let mut sampler = bellwether_pg::Sampler::default();
        let now = crate::exec::now_ms();
        if sampler.sample(&inst, now).await.is_ok() && sampler.last.is_some() {
            self.fresh
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(name.to_string(), (inst, sampler));
        }
    }

    /// Carries out a pg built-in; its structured output.
    pub async fn run(
        &self,
        spec: &ActionSpec,
        timeout: Duration,
    ) -> Result<serde_json::Value, String> {
        match spec {
            ActionSpec::PgReadSettings { database } => {
                let cat = self.catalog(database).await?;
                serde_json::to_value(cat).map_err(|e| e.to_string())
            }
            ActionSpec::PgApply {
                database,
                settings,
                restart,
                ..
            } => {
                let db = self.get(database)?;
                let report = bellwether_pg::apply(
                    &db.url,
                    settings,
                    *restart,
                    db.restart.as_deref(),
                    timeout,
                )
                .await;
                self.start_interval(database, &db.url).await;
                let report = report.map_err(|e| format!("{database}: {e}"))?;
                serde_json::to_value(report).map_err(|e| e.to_string())
            }
            ActionSpec::PgTrial {
                database, settings, ..
            } => {
                let cat = self.catalog(database).await?;
                let values = bellwether_pg::trial_values(&cat, settings);
                let scratch = self.scratch(database, cat.server_version_num).await?;
                let trial = tokio::task::spawn_blocking(move || scratch.try_start(&values))
                    .await
                    .map_err(|e| format!("the trial panicked: {e}"))?
                    .map_err(|e| e.to_string())?;
                serde_json::to_value(trial).map_err(|e| e.to_string())
            }
            other => Err(format!("{} is not a pg built-in", other.describe())),
        }
    }
}

/// A collector that adds each database's metrics to another collector's samples.
pub struct PgCollector<C> {
    inner: C,
    dbs: PgDatabases,
    conns: HashMap<String, (Option<bellwether_pg::Instance>, bellwether_pg::Sampler)>,
}

impl<C> PgCollector<C> {
    pub fn new(inner: C, dbs: PgDatabases) -> Self {
        PgCollector {
            inner,
            dbs,
            conns: HashMap::new(),
        }
    }

    /// One sample round of every database: `pg.NAME.METRIC` samples (`up` 0 when the instance
    /// does not answer).
    pub async fn sample(&mut self, now_ms: i64) -> Vec<MetricSample> {
        let mut out = Vec::new();
        for (name, db) in self.dbs.dbs.iter() {
            let entry = self.conns.entry(name.clone()).or_default();
            let fresh = self
                .dbs
                .fresh
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(name);
            if let Some((inst, sampler)) = fresh {
                // An apply just finished: its interval replaces this one.
                *entry = (Some(inst), sampler);
            }
            if entry.0.is_none() {
                match bellwether_pg::connect(&db.url).await {
                    Ok(inst) => entry.0 = Some(inst),
                    Err(e) => {
                        tracing::warn!(database = %name, error = %e, "Cannot connect to the database.");
                        entry.1.last = None;
                    }
                }
            }
            let rates = match &entry.0 {
                Some(inst) => entry.1.sample(inst, now_ms).await.unwrap_or_default(),
                None => BTreeMap::new(),
            };
            let up = rates
                .get(bellwether_config::metrics::UP)
                .copied()
                .unwrap_or(0.0);
            if up == 0.0 {
                entry.0 = None;
            }
            out.push(MetricSample {
                ts_ms: now_ms,
                name: bellwether_config::metric_key(name, bellwether_config::metrics::UP),
                value: up,
            });
            for (m, v) in rates {
                if m != bellwether_config::metrics::UP {
                    out.push(MetricSample {
                        ts_ms: now_ms,
                        name: bellwether_config::metric_key(name, &m),
                        value: v,
                    });
                }
            }
        }
        out
    }
}

impl<C: Collector> Collector for PgCollector<C> {
    async fn collect(&mut self) -> Collected {
        let mut c = self.inner.collect().await;
        let now = c
            .samples
            .first()
            .map(|s| s.ts_ms)
            .unwrap_or_else(crate::exec::now_ms);
        let pg = self.sample(now).await;
        c.samples.extend(pg);
        c
    }
}

/// The configuration reports of every source, as they are now. A source that cannot be read
/// is left out (and logged); the next round tries again.
pub async fn read_reports(
    dbs: &PgDatabases,
    files: &[(String, Format)],
    rootfs: &Path,
) -> Vec<ConfigReportRequest> {
    let mut out = Vec::new();
    for name in dbs.names() {
        match dbs.catalog(name).await {
            Ok(cat) => out.push(ConfigReportRequest {
                source: name.clone(),
                kind: ConfigSourceKind::Postgres,
                values: cat.values(),
                catalog: serde_json::to_value(&cat).ok(),
                at_ms: crate::exec::now_ms(),
            }),
            Err(e) => {
                tracing::warn!(database = %name, error = %e, "Cannot read the database's settings.")
            }
        }
    }
    for (path, format) in files {
        match read_file_report(rootfs, path, *format) {
            Ok(r) => out.push(r),
            Err(e) => tracing::warn!(file = %path, error = %e, "Cannot read the config file."),
        }
    }
    out
}

/// One plain config file inside the rootfs (symbolic links resolved as in a chroot).
pub fn read_file_report(
    rootfs: &Path,
    path: &str,
    format: Format,
) -> Result<ConfigReportRequest, String> {
    let root = bellwether_drift::inroot::InRoot::open(rootfs)
        .map_err(|e| format!("the rootfs {}: {e}", rootfs.display()))?;
    let bytes = root
        .read(path)
        .map_err(|e| format!("{path}: {}", e.cause()))?;
    let text = String::from_utf8(bytes).map_err(|_| format!("{path}: not UTF-8 text"))?;
    let values = bellwether_config::plain::parse(&text, format, path).map_err(|e| e.to_string())?;
    Ok(ConfigReportRequest {
        source: format!("file:{path}"),
        kind: ConfigSourceKind::File,
        values,
        catalog: None,
        at_ms: crate::exec::now_ms(),
    })
}

/// Learns the graph of `name` on a scratch cluster (one trial at a time, so the database host
/// keeps its CPU).
pub async fn learn_graph(dbs: &PgDatabases, name: &str) -> Result<ConfigGraphRequest, String> {
    let cat = dbs.catalog(name).await?;
    let scratch = dbs.scratch(name, cat.server_version_num).await?;
    let (graph, stats) = tokio::task::spawn_blocking(move || {
        bellwether_pg::probe::learn(
            &scratch,
            &cat,
            &bellwether_pg::probe::ProbeOptions {
                keys: Vec::new(),
                parallel: 1,
            },
        )
    })
    .await
    .map_err(|e| format!("learning panicked: {e}"))?
    .map_err(|e| e.to_string())?;
    Ok(ConfigGraphRequest {
        source: name.to_string(),
        graph: serde_json::to_value(graph).map_err(|e| e.to_string())?,
        stats: serde_json::to_value(stats).map_err(|e| e.to_string())?,
        at_ms: crate::exec::now_ms(),
    })
}

/// What the configuration loop sends, validated.
#[derive(Debug, Clone)]
pub struct ConfigLoopSettings {
    pub files: Vec<(String, Format)>,
    pub rootfs: PathBuf,
    /// How often sources are read again (a report is sent only when its values changed).
    pub interval: Duration,
    pub learn_graph: bool,
}

/// Where the loop sends (the server's config routes).
pub trait ConfigTransport {
    fn send_config(
        &self,
        token: &str,
        req: &ConfigReportRequest,
    ) -> impl std::future::Future<Output = Result<(), crate::SendError>>;
    fn send_graph(
        &self,
        token: &str,
        req: &ConfigGraphRequest,
    ) -> impl std::future::Future<Output = Result<(), crate::SendError>>;
}

/// Sends every source's report at start and whenever its values change, and each database's
/// learned graph once; a failed send (the server away, or without these routes yet) is logged
/// and retried next round, never fatal.
pub async fn config_loop<T: ConfigTransport>(
    transport: T,
    mut token: tokio::sync::watch::Receiver<Option<String>>,
    dbs: PgDatabases,
    settings: ConfigLoopSettings,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut sent: HashMap<String, BTreeMap<String, String>> = HashMap::new();
    let mut graphs: BTreeMap<String, Option<ConfigGraphRequest>> = BTreeMap::new();
    let mut learning = tokio::task::JoinSet::new();
    if settings.learn_graph {
        for name in dbs.names() {
            let dbs = dbs.clone();
            let name = name.clone();
            learning.spawn(async move {
                let r = learn_graph(&dbs, &name).await;
                (name, r)
            });
        }
    }
    loop {
        let tok = loop {
            if let Some(t) = token.borrow_and_update().clone() {
                break t;
            }
            tokio::select! {
                r = token.changed() => if r.is_err() { return },
                () = &mut shutdown => return,
            }
        };
        for r in read_reports(&dbs, &settings.files, &settings.rootfs).await {
            if sent.get(&r.source) == Some(&r.values) {
                continue;
            }
            match transport.send_config(&tok, &r).await {
                Ok(()) => {
                    tracing::info!(source = %r.source, keys = r.values.len(), "Configuration report sent.");
                    sent.insert(r.source.clone(), r.values.clone());
                }
                Err(e) => {
                    tracing::warn!(source = %r.source, error = %e, "Sending the configuration report failed; will retry.")
                }
            }
        }
        for (name, pending) in graphs.iter_mut() {
            if let Some(req) = pending {
                match transport.send_graph(&tok, req).await {
                    Ok(()) => {
                        tracing::info!(database = %name, "Learned graph sent.");
                        *pending = None;
                    }
                    Err(e) => {
                        tracing::warn!(database = %name, error = %e, "Sending the learned graph failed; will retry.")
                    }
                }
            }
        }
        let sleep = tokio::time::sleep(settings.interval);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => break,
                () = &mut shutdown => return,
                Some(done) = learning.join_next(), if !learning.is_empty() => {
                    match done {
                        Ok((name, Ok(req))) => {
                            tracing::info!(database = %name, edges = req.graph["edges"].as_array().map_or(0, Vec::len), "Graph learned.");
                            graphs.insert(name, Some(req));
                            break;
                        }
                        Ok((name, Err(e))) => tracing::warn!(database = %name, error = %e, "Learning the graph failed."),
                        Err(e) => tracing::warn!(error = %e, "Learning the graph panicked."),
                    }
                }
            }
        }
    }
}
