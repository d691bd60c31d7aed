//! The one-machine runner of a configuration change (`bellwether config apply --database
//! URL`): steps the same `bellwether_engine::config` engine as the server's `config` task,
//! carrying out its actions directly with this crate (trial, snapshot, apply, revert) and
//! feeding it this crate's [`crate::Sampler`] rates. No second engine.
//!
//! The loop: every `interval` one [`crate::Sampler`] read (a failed read, or no connection,
//! is a sample with `up` = 0; the sampler's connection is re-opened after a failure, so a
//! restart does not leave it dead) and a tick; each action the engine asks for runs in its own
//! task, so sampling goes on while an apply restarts the server; its result is fed back as
//! [`Input::Done`]. When an apply or a revert finishes, the connection is re-opened and a new
//! sampling interval starts at once, so no later rate mixes time before and after the change
//! (or the revert) took effect, and the first one comes a full interval after it rather than
//! after a read that only re-opens a connection. The graph is the shipped rules plus, with [`LocalOptions::probe`], what
//! probing the changed keys on a scratch cluster from the instance's own binaries learns
//! ([`crate::probe::learn`]). The run ends when the engine is settled, or after
//! [`LocalOptions::max_duration`] with an abort (what is in flight is still finished).
//!
//! With [`LocalOptions::controls`] (untouched peers of the same role, under the same
//! workload), each tick reads every control at the same moment as the instance, on its own
//! connection, and feeds it as [`Input::ControlSample`] before the instance's sample, so the
//! engine compares each breach with what the peers did over the same seconds (the `peer`
//! factor). After an apply or a revert the controls are read at the same moment as the
//! instance's fresh interval starts, so their intervals stay aligned. Nothing is ever done
//! to a control but reading its statistics.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bellwether_config::cochange::ChangeOutcome;
use bellwether_config::graph::Graph;
use bellwether_config::setting::Catalog;
use bellwether_engine::config::{
    Action, ActionKind, Command, ConfigChangeEngine, ConfigPlan, EngineContext, Event, Input,
    Phase, Target, WatchSpec,
};
use bellwether_model::wire::ActionOutcome;
use bellwether_model::ActionSpec;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::scratch::Scratch;
use crate::{PgError, Sampler};

/// What to change and how to watch it.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// The name the instance goes by in events and snapshots (`--database NAME=URL`).
    pub database: String,
    /// The host name in events.
    pub host: String,
    pub set: Vec<(String, Option<String>)>,
    pub description: String,
    pub author: String,
    pub watch: WatchSpec,
    pub risk_threshold: f64,
    /// Trial-start a scratch cluster with the change first.
    pub trial: bool,
    /// Learn the graph around the changed keys by probing (else the shipped rules only).
    pub probe: bool,
    /// The instance's binaries (found from its version when not given).
    pub bindir: Option<PathBuf>,
    /// The sampling interval.
    pub interval: Duration,
    /// How long one apply (with its restart) may take.
    pub apply_timeout: Duration,
    /// The whole run's limit.
    pub max_duration: Duration,
    /// Earlier changes of this instance, for the risk's history factor.
    pub history: Vec<ChangeOutcome>,
    /// Connection URLs of contemporaneous controls: untouched instances of the same role
    /// under the same workload, only ever sampled (`plan.controls`, named `control0`, …).
    pub controls: Vec<String>,
}

impl LocalOptions {
    /// A change with the documented defaults.
    pub fn new(set: Vec<(String, Option<String>)>, description: impl Into<String>) -> Self {
        LocalOptions {
            database: "local".into(),
            host: "localhost".into(),
            set,
            description: description.into(),
            author: "bellwether".into(),
            watch: WatchSpec::defaults(),
            risk_threshold: bellwether_engine::config::plan::DEFAULT_RISK_THRESHOLD,
            trial: true,
            probe: false,
            bindir: None,
            interval: Duration::from_secs(1),
            apply_timeout: Duration::from_secs(60),
            max_duration: Duration::from_secs(600),
            history: Vec::new(),
            controls: Vec::new(),
        }
    }

    /// The name control `i` goes by in the plan (its host is [`LocalOptions::host`]).
    pub fn control_name(i: usize) -> String {
        format!("control{i}")
    }

    /// The plan the engine runs (one target).
    pub fn plan(&self) -> ConfigPlan {
        ConfigPlan {
            description: self.description.clone(),
            author: self.author.clone(),
            targets: vec![Target {
                host: self.host.clone(),
                database: self.database.clone(),
            }],
            set: self.set.clone(),
            watch: self.watch.clone(),
            risk_threshold: self.risk_threshold,
            trial: self.trial,
            controls: (0..self.controls.len())
                .map(|i| Target {
                    host: self.host.clone(),
                    database: Self::control_name(i),
                })
                .collect(),
            alerts: Vec::new(),
        }
    }
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct LocalReport {
    pub phase: Phase,
    /// [`ConfigChangeEngine::report`].
    pub report: Value,
    /// Every event, in order.
    pub events: Vec<Event>,
    /// The graph the engine traced with.
    pub graph: Graph,
    /// Wall time of the run.
    pub elapsed_ms: u64,
}

impl LocalReport {
    /// The first event named `name`.
    pub fn event(&self, name: &str) -> Option<&Event> {
        self.events.iter().find(|e| e.name == name)
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Runs the change on the instance at `url`; `restart_argv` is the command that restarts it
/// (run directly, no shell), needed when a changed setting's context is `postmaster`.
pub async fn run(
    url: &str,
    opts: &LocalOptions,
    restart_argv: Option<&[String]>,
) -> Result<LocalReport, PgError> {
    run_with(url, opts, restart_argv, &mut |_| {}).await
}

/// [`run`], calling `on_event` with each event as it happens (the CLI prints them).
pub async fn run_with(
    url: &str,
    opts: &LocalOptions,
    restart_argv: Option<&[String]>,
    on_event: &mut (dyn FnMut(&Event) + Send),
) -> Result<LocalReport, PgError> {
    let started = std::time::Instant::now();
    let plan = opts.plan();
    plan.validate().map_err(|e| PgError::Query {
        what: "the change".into(),
        message: e.to_string(),
    })?;
    let inst = crate::connect(url).await?;
    let catalog = crate::read_settings(&inst).await?;
    drop(inst);
    // A scratch cluster only when something needs one (trials or probing).
    let scratch: Option<Arc<Scratch>> = if opts.trial || opts.probe {
        let bindir = crate::find_bindir(catalog.server_version_num, opts.bindir.clone())?;
        let s = tokio::task::spawn_blocking(move || Scratch::init(bindir))
            .await
            .map_err(join_error)??;
        Some(Arc::new(s))
    } else {
        None
    };
    let graph = learn_graph(&catalog, &plan.keys(), opts.probe, scratch.clone()).await?;

    let context = EngineContext {
        graph: graph.clone(),
        history: opts.history.clone(),
    };
    let (mut engine, out) = ConfigChangeEngine::start(plan, context, now_ms());
    let mut events = Vec::new();
    let (tx, mut rx) = mpsc::unbounded_channel::<Done>();
    let exec = Exec {
        url: url.to_string(),
        restart_argv: restart_argv.map(<[String]>::to_vec),
        apply_timeout: opts.apply_timeout,
        scratch,
        set: opts.set.clone(),
    };
    let mut handle = |engine: &ConfigChangeEngine, out: bellwether_engine::config::Output| {
        for e in out.events {
            on_event(&e);
            events.push(e);
        }
        for a in out.actions {
            exec.spawn(a, tx.clone());
        }
        let _ = engine;
    };
    handle(&engine, out);

    let mut sampler = Sampler::default();
    let mut conn: Option<crate::Instance> = None;
    let mut controls: Vec<Probe> = opts.controls.iter().map(|u| Probe::new(u)).collect();
    let mut ticker = tokio::time::interval(opts.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut aborted = false;
    while !engine.is_settled() {
        tokio::select! {
            Some((id, kind, outcome, output)) = rx.recv() => {
                let out = engine.step(Input::Done { action_id: id, outcome, output }, now_ms());
                handle(&engine, out);
                if matches!(kind, ActionKind::Apply | ActionKind::Revert) {
                    // A new sampling interval starts now, on a fresh connection (a restart
                    // ended the old one): every later rate covers only time after the change
                    // or the revert took effect, and the first one comes a full interval
                    // after it instead of up to two (a read that only re-opens the connection
                    // gives no rate).
                    conn = None;
                    let (metrics, peers) =
                        sample_with_controls(&mut conn, &mut sampler, url, &mut controls).await;
                    let at = now_ms();
                    for (c, m) in peers.into_iter().enumerate() {
                        let out = engine.step(Input::ControlSample { control: c, at_ms: at, metrics: m }, at);
                        handle(&engine, out);
                    }
                    let out = engine.step(Input::Sample { target: 0, at_ms: at, metrics }, at);
                    handle(&engine, out);
                    ticker.reset();
                }
            }
            _ = ticker.tick() => {
                let (metrics, peers) =
                    sample_with_controls(&mut conn, &mut sampler, url, &mut controls).await;
                let at = now_ms();
                // The controls first: the instance's sample is judged with the peers' sample
                // of the same moment already in.
                for (c, m) in peers.into_iter().enumerate() {
                    let out = engine.step(Input::ControlSample { control: c, at_ms: at, metrics: m }, at);
                    handle(&engine, out);
                }
                let out = engine.step(Input::Sample { target: 0, at_ms: at, metrics }, at);
                handle(&engine, out);
                let out = engine.step(Input::Tick, now_ms());
                handle(&engine, out);
                if !aborted && started.elapsed() > opts.max_duration {
                    aborted = true;
                    let reason = format!("the local run's limit of {:?} passed", opts.max_duration);
                    let out = engine.step(Input::Command(Command::Abort { reason }), now_ms());
                    handle(&engine, out);
                }
                if aborted && started.elapsed() > opts.max_duration + opts.apply_timeout * 2 {
                    return Err(PgError::Query {
                        what: "the local run".into(),
                        message: "an action did not finish after the abort".into(),
                    });
                }
            }
        }
    }
    Ok(LocalReport {
        phase: engine.phase,
        report: engine.report(),
        events,
        graph,
        elapsed_ms: started.elapsed().as_millis() as u64,
    })
}

/// A contemporaneous control: its URL, connection and sampler.
struct Probe {
    url: String,
    conn: Option<crate::Instance>,
    sampler: Sampler,
}

impl Probe {
    fn new(url: &str) -> Probe {
        Probe {
            url: url.to_string(),
            conn: None,
            sampler: Sampler::default(),
        }
    }
}

/// The instance's sample and every control's, read at the same moment (each control on its
/// own task, the instance on this one). A control whose task failed gives no data (and a
/// fresh probe next time).
async fn sample_with_controls(
    conn: &mut Option<crate::Instance>,
    sampler: &mut Sampler,
    url: &str,
    controls: &mut [Probe],
) -> (BTreeMap<String, f64>, Vec<BTreeMap<String, f64>>) {
    let handles: Vec<_> = controls
        .iter_mut()
        .map(|p| {
            let mut p = std::mem::replace(p, Probe::new(&p.url));
            tokio::spawn(async move {
                let m = sample(&mut p.conn, &mut p.sampler, &p.url).await;
                (p, m)
            })
        })
        .collect();
    let metrics = sample(conn, sampler, url).await;
    let mut peers = Vec::with_capacity(handles.len());
    for (slot, h) in controls.iter_mut().zip(handles) {
        match h.await {
            Ok((p, m)) => {
                *slot = p;
                peers.push(m);
            }
            Err(_) => peers.push(BTreeMap::new()),
        }
    }
    (metrics, peers)
}

/// One sample: the sampler's rates (with `up`), or `up` = 0 when the instance cannot be
/// reached; the connection is dropped after a failed read and re-opened on the next.
async fn sample(
    conn: &mut Option<crate::Instance>,
    sampler: &mut Sampler,
    url: &str,
) -> BTreeMap<String, f64> {
    let down = || BTreeMap::from([(bellwether_config::metrics::UP.to_string(), 0.0)]);
    if conn.is_none() {
        match tokio::time::timeout(Duration::from_secs(2), crate::connect(url)).await {
            Ok(Ok(c)) => {
                *sampler = Sampler::default();
                *conn = Some(c);
            }
            _ => return down(),
        }
    }
    let Some(c) = conn.as_ref() else {
        return down();
    };
    match sampler.sample(c, now_ms()).await {
        Ok(m) => {
            if m.get(bellwether_config::metrics::UP)
                .is_some_and(|v| *v < 0.5)
            {
                *conn = None;
            }
            m
        }
        Err(_) => {
            *conn = None;
            down()
        }
    }
}

/// The shipped rules, plus (with `probe`) what trial starts around `keys` learn.
async fn learn_graph(
    catalog: &Catalog,
    keys: &[String],
    probe: bool,
    scratch: Option<Arc<Scratch>>,
) -> Result<Graph, PgError> {
    match (probe, scratch) {
        (true, Some(s)) => {
            let catalog = catalog.clone();
            let opts = crate::probe::ProbeOptions {
                keys: keys.to_vec(),
                parallel: 2,
            };
            let (g, _) =
                tokio::task::spawn_blocking(move || crate::probe::learn(&s, &catalog, &opts))
                    .await
                    .map_err(join_error)??;
            Ok(g)
        }
        _ => {
            let mut g = Graph::default();
            for r in bellwether_config::rules::shipped_rules(catalog.server_version_num) {
                g.add_edge(r.edge);
            }
            Ok(g)
        }
    }
}

fn join_error(e: tokio::task::JoinError) -> PgError {
    PgError::Io {
        what: "a blocking task".into(),
        message: e.to_string(),
    }
}

pub use crate::trial_values;

/// Carries out the engine's actions with this crate.
struct Exec {
    url: String,
    restart_argv: Option<Vec<String>>,
    apply_timeout: Duration,
    scratch: Option<Arc<Scratch>>,
    set: Vec<(String, Option<String>)>,
}

/// An action's id and kind, and its result.
type Done = (u64, ActionKind, ActionOutcome, Option<Value>);

fn failed(e: impl std::fmt::Display) -> ActionOutcome {
    ActionOutcome::Failed {
        exit_code: None,
        error: e.to_string(),
    }
}

impl Exec {
    fn spawn(&self, a: Action, tx: mpsc::UnboundedSender<Done>) {
        let url = self.url.clone();
        let restart_argv = self.restart_argv.clone();
        let timeout = self.apply_timeout;
        let scratch = self.scratch.clone();
        let set = self.set.clone();
        tokio::spawn(async move {
            let (outcome, output) = match (&a.kind, &a.spec) {
                (ActionKind::Trial, _) => trial(&url, scratch, &set).await,
                (ActionKind::Snapshot | ActionKind::RevertSnapshot, _) => match read(&url).await {
                    Ok(c) => (ActionOutcome::Ok, serde_json::to_value(c).ok()),
                    Err(e) => (failed(e), None),
                },
                (
                    ActionKind::Apply | ActionKind::Revert,
                    ActionSpec::PgApply {
                        settings, restart, ..
                    },
                ) => {
                    match crate::apply(&url, settings, *restart, restart_argv.as_deref(), timeout)
                        .await
                    {
                        Ok(r) => (ActionOutcome::Ok, serde_json::to_value(r).ok()),
                        // Refused before any ALTER SYSTEM: nothing changed.
                        Err(e @ (PgError::Value(_) | PgError::Connect { .. })) => (
                            ActionOutcome::Refused {
                                reason: e.to_string(),
                            },
                            None,
                        ),
                        Err(e) => (failed(e), None),
                    }
                }
                (kind, spec) => (
                    failed(format!(
                        "{} cannot run as a {} here",
                        spec.describe(),
                        kind.as_str()
                    )),
                    None,
                ),
            };
            let _ = tx.send((a.id, a.kind, outcome, output));
        });
    }
}

async fn read(url: &str) -> Result<Catalog, PgError> {
    let inst = crate::connect(url).await?;
    crate::read_settings(&inst).await
}

async fn trial(
    url: &str,
    scratch: Option<Arc<Scratch>>,
    set: &[(String, Option<String>)],
) -> (ActionOutcome, Option<Value>) {
    let Some(scratch) = scratch else {
        return (failed("no scratch cluster for the trial"), None);
    };
    let catalog = match read(url).await {
        Ok(c) => c,
        Err(e) => return (failed(e), None),
    };
    let values = trial_values(&catalog, set);
    match tokio::task::spawn_blocking(move || scratch.try_start(&values)).await {
        Ok(Ok(t)) => (ActionOutcome::Ok, serde_json::to_value(t).ok()),
        Ok(Err(e)) => (failed(e), None),
        Err(e) => (failed(e), None),
    }
}
