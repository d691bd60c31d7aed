//! The one-machine runner: drives a [`MirrorEngine`] with real IO on this host. Its prober
//! ([`crate::prober::run`], the server's `mirror` task runs the same) checks each instance and
//! reads the proxy's per-backend figures (a [`Router`]) every health interval, sooner when the
//! primary looks silent or unhealthy, and gives the engine one observation each time; the
//! runner carries out the engine's actions concurrently (provisioning through a [`Provisioner`], promote and fence through
//! this crate, routing through the [`Router`]), each answered back to the engine. It is what
//! `bellwether mirror drill` runs; the server's `mirror` task steps the same engine with the
//! agent doing the IO.
//!
//! Time is the wall clock in milliseconds since the Unix epoch (the engine only needs it to be
//! monotonic between inputs; the runner never feeds it an older observation).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bellwether_engine::mirror::{
    Action, Backend, Command, Event, Input, MirrorEngine, Observation, Status,
};
use bellwether_model::mirror::DependencySpec;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::prober::{Checks, Gone, PgSync, ProbeSettings};
use crate::{DepKind, Instance, MirrorError, ProvisionRequest, Provisioner, Role};

/// What the proxy measured for one backend over the last interval.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BackendFigures {
    pub requests_per_s: Option<f64>,
    pub error_rate: Option<f64>,
    pub sessions: Option<u32>,
}

/// The proxy, as the runner uses it: set the routing, read the figures. Backends are named by
/// the engine's instance ids.
#[async_trait::async_trait]
pub trait Router: Send + Sync {
    /// Routes writes (everything, in active-passive) to `primary`, reads also to `readers`;
    /// atomic at the proxy.
    async fn route(&self, primary: &Backend, readers: &[Backend]) -> Result<(), String>;
    /// Leaves no primary: new commands wait in the proxy (bounded) until the next
    /// [`Router::route`]. Waits up to `wait` for the commands in flight on the primary it had,
    /// then closes the sessions still busy there (their replies never reach a client, so
    /// nothing unconfirmed is acknowledged).
    async fn hold(&self, wait: Duration) -> Result<(), String>;
    /// Per-backend figures since the previous call, for every backend the proxy has. An
    /// instance the proxy does not have holds no session there: the runner reports 0 sessions
    /// for it (so a standby mirror can be retired). `None` when the proxy could not be read
    /// (then nothing is reported about sessions: no data is not zero).
    async fn figures(&self) -> Option<BTreeMap<String, BackendFigures>>;
}

/// Now, in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

enum Msg {
    /// One check's observations, and where to send the primary's health score once the engine
    /// has judged them (`None` before it has one).
    Observe(i64, Vec<Observation>, oneshot::Sender<Option<f64>>),
    Done {
        action_id: u64,
        ok: bool,
        output: Value,
        error: Option<String>,
    },
    Command(Command),
    Stop,
}

/// What the runner shares with its handle.
#[derive(Default)]
struct Shared {
    status: Option<Status>,
    events: Vec<Event>,
    made: BTreeMap<String, Instance>,
    endpoints: BTreeMap<String, String>,
    watch: Option<watch::Sender<Option<Status>>>,
    /// PostgreSQL: whether each server's commits wait for standbys, as the prober's samplers
    /// read it.
    pg_sync: PgSync,
}

/// A running engine. Drop it only after [`LocalRunner::stop`].
pub struct LocalRunner {
    tx: mpsc::UnboundedSender<Msg>,
    shared: Arc<Mutex<Shared>>,
    main: Option<JoinHandle<MirrorEngine>>,
    prober: JoinHandle<()>,
    provisioner: Arc<dyn Provisioner>,
    status_rx: watch::Receiver<Option<Status>>,
}

/// Settings of the IO around the engine.
#[derive(Debug, Clone)]
pub struct RunnerOptions {
    /// How long a probe may take; at most the health interval (a probe that takes longer is a
    /// `down` check).
    pub probe_timeout: Duration,
    /// How long a fence or an unfence may take.
    pub fence_timeout: Duration,
}

impl RunnerOptions {
    /// A probe timeout of 80 % of the interval, a fence timeout of 1 s.
    pub fn for_spec(spec: &DependencySpec) -> RunnerOptions {
        RunnerOptions {
            probe_timeout: spec.policy.health_interval.get().mul_f64(0.8),
            fence_timeout: Duration::from_secs(1),
        }
    }
}

fn lock(s: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

impl LocalRunner {
    /// Starts the engine for `spec` (validated) and its loops.
    pub fn start(
        spec: DependencySpec,
        provisioner: Arc<dyn Provisioner>,
        router: Arc<dyn Router>,
        opts: RunnerOptions,
    ) -> Result<LocalRunner, bellwether_model::mirror::MirrorSpecError> {
        let (engine, first) = MirrorEngine::new(spec.clone(), now_ms())?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (status_tx, status_rx) = watch::channel(None);
        let shared = Arc::new(Mutex::new(Shared {
            watch: Some(status_tx),
            ..Shared::default()
        }));
        let io = Io {
            kind: spec.kind,
            dependency: spec.name.clone(),
            provisioner: provisioner.clone(),
            router: router.clone(),
            shared: shared.clone(),
            opts: opts.clone(),
        };
        let main = tokio::spawn(main_loop(engine, first, rx, tx.clone(), io));
        let checks = LocalChecks {
            settings: ProbeSettings::for_spec(&spec, opts.probe_timeout),
            router,
            shared: shared.clone(),
            tx: tx.clone(),
        };
        let pg_sync = lock(&shared).pg_sync.clone();
        let prober = tokio::spawn(crate::prober::run(Arc::new(checks), Some(pg_sync)));
        Ok(LocalRunner {
            tx,
            shared,
            main: Some(main),
            prober,
            provisioner,
            status_rx,
        })
    }

    /// Waits until the status satisfies `pred` (checked after every engine step), at most
    /// `limit`; the last status either way, and whether it was satisfied.
    pub async fn wait_for(
        &self,
        limit: Duration,
        mut pred: impl FnMut(&Status) -> bool,
    ) -> (Option<Status>, bool) {
        let mut rx = self.status_rx.clone();
        let r =
            tokio::time::timeout(limit, rx.wait_for(|s| s.as_ref().is_some_and(&mut pred))).await;
        let ok = matches!(r, Ok(Ok(_)));
        (self.status(), ok)
    }

    /// The engine's status after its last step.
    pub fn status(&self) -> Option<Status> {
        lock(&self.shared).status.clone()
    }

    /// Every event so far.
    pub fn events(&self) -> Vec<Event> {
        lock(&self.shared).events.clone()
    }

    /// Gives the engine an operator's command.
    pub fn command(&self, c: Command) {
        let _ = self.tx.send(Msg::Command(c));
    }

    /// The mirrors the provisioner made that are not retired yet.
    pub fn made(&self) -> Vec<Instance> {
        lock(&self.shared).made.values().cloned().collect()
    }

    /// Stops the loops (actions in flight are abandoned) and, with `retire`, retires every
    /// mirror the runner made. Returns the engine as it stands.
    pub async fn stop(mut self, retire: bool) -> Option<MirrorEngine> {
        self.prober.abort();
        let _ = self.tx.send(Msg::Stop);
        let engine = match self.main.take() {
            Some(h) => h.await.ok(),
            None => None,
        };
        if retire {
            let made: Vec<Instance> = lock(&self.shared).made.values().cloned().collect();
            for inst in made {
                if let Err(e) = self.provisioner.retire(&inst).await {
                    tracing::warn!(instance = %inst.id, error = %e, "Could not retire a mirror at the end.");
                }
            }
            lock(&self.shared).made.clear();
        }
        engine
    }
}

/// The prober's view of the runner: the status its main loop shares, the router's figures,
/// and the main loop's mailbox.
struct LocalChecks {
    settings: ProbeSettings,
    router: Arc<dyn Router>,
    shared: Arc<Mutex<Shared>>,
    tx: mpsc::UnboundedSender<Msg>,
}

#[async_trait::async_trait]
impl Checks for LocalChecks {
    fn status(&self) -> Option<Status> {
        lock(&self.shared).status.clone()
    }

    fn settings(&self) -> ProbeSettings {
        self.settings
    }

    async fn figures(&self) -> Option<BTreeMap<String, BackendFigures>> {
        self.router.figures().await
    }

    async fn observe(
        &self,
        at_ms: i64,
        observations: Vec<Observation>,
    ) -> Result<Option<f64>, Gone> {
        let (reply, verdict) = oneshot::channel();
        self.tx
            .send(Msg::Observe(at_ms, observations, reply))
            .map_err(|_| Gone)?;
        // A verdict dropped unanswered (an observation older than the last) is no verdict.
        Ok(verdict.await.ok().flatten())
    }
}

/// The IO side of the actions.
#[derive(Clone)]
struct Io {
    kind: DepKind,
    dependency: String,
    provisioner: Arc<dyn Provisioner>,
    router: Arc<dyn Router>,
    shared: Arc<Mutex<Shared>>,
    opts: RunnerOptions,
}

async fn main_loop(
    mut engine: MirrorEngine,
    first: bellwether_engine::mirror::Output,
    mut rx: mpsc::UnboundedReceiver<Msg>,
    tx: mpsc::UnboundedSender<Msg>,
    io: Io,
) -> MirrorEngine {
    let mut last_obs = i64::MIN;
    handle_output(&engine, first, &tx, &io);
    while let Some(msg) = rx.recv().await {
        // Where an observation's verdict goes (the prober's recheck waits for it).
        let mut reply = None;
        let input = match msg {
            Msg::Stop => break,
            Msg::Observe(at, obs, r) => {
                if at <= last_obs {
                    continue;
                }
                last_obs = at;
                reply = Some(r);
                Input::Observe {
                    at_ms: at,
                    observations: obs,
                }
            }
            Msg::Done {
                action_id,
                ok,
                output,
                error,
            } => Input::ActionDone {
                action_id,
                ok,
                output,
                error,
            },
            Msg::Command(c) => Input::Command(c),
        };
        let out = engine.step(input, now_ms().max(last_obs));
        handle_output(&engine, out, &tx, &io);
        if let Some(r) = reply {
            let st = engine.status();
            let _ = r.send(st.verdict());
        }
    }
    engine
}

fn handle_output(
    engine: &MirrorEngine,
    out: bellwether_engine::mirror::Output,
    tx: &mpsc::UnboundedSender<Msg>,
    io: &Io,
) {
    {
        let mut s = lock(&io.shared);
        for e in &out.events {
            tracing::info!(event = %e.name, alert = e.alert, "{}", e.reason);
        }
        s.events.extend(out.events);
        s.status = Some(engine.status());
        if let Some(w) = &s.watch {
            w.send_replace(s.status.clone());
        }
        // Retired, failed and half-made instances are not probed.
        s.endpoints = s
            .status
            .as_ref()
            .map(crate::prober::probed)
            .unwrap_or_default();
    }
    for a in out.actions {
        let io = io.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let id = a.id();
            let (ok, output, error) = io.carry_out(a).await;
            let _ = tx.send(Msg::Done {
                action_id: id,
                ok,
                output,
                error,
            });
        });
    }
}

fn err_out(e: impl ToString) -> (bool, Value, Option<String>) {
    (false, Value::Null, Some(e.to_string()))
}

impl Io {
    async fn carry_out(&self, a: Action) -> (bool, Value, Option<String>) {
        match a {
            Action::Provision { instance, of, .. } => {
                let req = ProvisionRequest {
                    dependency: self.dependency.clone(),
                    kind: self.kind,
                    primary: of.endpoint.clone(),
                    instance_id: instance.clone(),
                    port: None,
                };
                match self.provisioner.provision(&req).await {
                    Ok(inst) => {
                        let out = json!({"endpoint": inst.endpoint, "pid": inst.pid,
                                         "dir": inst.dir, "provision_ms": inst.provision_ms,
                                         "driver": self.provisioner.name()});
                        lock(&self.shared).made.insert(instance, inst);
                        (true, out, None)
                    }
                    Err(e) => {
                        let permanent = matches!(
                            e,
                            MirrorError::Unsupported { .. } | MirrorError::BadEndpoint { .. }
                        );
                        (false, json!({"permanent": permanent}), Some(e.to_string()))
                    }
                }
            }
            Action::Retire { instance, .. } => {
                let inst = lock(&self.shared).made.get(&instance.instance).cloned();
                let Some(inst) = inst else {
                    return err_out(format!(
                        "{} was not made by this runner's provisioner",
                        instance.instance
                    ));
                };
                match self.provisioner.retire(&inst).await {
                    Ok(()) => {
                        lock(&self.shared).made.remove(&instance.instance);
                        (true, Value::Null, None)
                    }
                    Err(e) => err_out(e),
                }
            }
            Action::Promote {
                instance,
                catch_up_to,
                timeout_ms,
                old_primary,
                ..
            } => {
                let t = Duration::from_millis(timeout_ms);
                let (target, t, prepared) = match self.kind {
                    DepKind::Postgres => {
                        self.before_pg_promotion(&instance, &old_primary, catch_up_to, t)
                            .await
                    }
                    _ => {
                        self.before_promotion(&instance, &old_primary, catch_up_to, t)
                            .await
                    }
                };
                match crate::promote(self.kind, &instance.endpoint, target, t).await {
                    Ok(r) => {
                        // A former primary fenced with min-replicas-to-write keeps that
                        // setting through REPLICAOF; as primary again it must take writes.
                        if self.kind == DepKind::Redis {
                            if let Err(e) = redis_min_replicas(&instance.endpoint, t).await {
                                return err_out(format!(
                                    "promoted, but resetting min-replicas-to-write failed: {e}"
                                ));
                            }
                        }
                        (
                            true,
                            json!({"offset": r.reached_offset, "waited_ms": r.waited_ms,
                                   "promote_ms": r.promote_ms, "catch_up_to": target,
                                   "prepared": prepared}),
                            None,
                        )
                    }
                    Err(e) => err_out(e),
                }
            }
            Action::Fence {
                instance,
                new_primary,
                ..
            } => {
                let t = self.opts.fence_timeout;
                let np = new_primary.as_ref().map(|b| b.endpoint.as_str());
                let sync = if new_primary.is_none() && self.kind == DepKind::Postgres {
                    // As the sampler read it while the primary answered (a throttled primary
                    // may not answer a new question in time); asked now only when unknown.
                    let pg_sync = lock(&self.shared).pg_sync.clone();
                    let known = pg_sync
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(&instance.endpoint)
                        .copied();
                    match known {
                        Some(v) => v,
                        None => {
                            pg_commits_wait_for_standbys(
                                &instance.endpoint,
                                self.opts.probe_timeout,
                            )
                            .await
                        }
                    }
                } else {
                    false
                };
                if sync {
                    // Its commits are acknowledged only once a standby flushed them: the
                    // promotion cuts every other standby off it (see `before_pg_promotion`), so
                    // whatever it acknowledges until then is in the promoted one, and nothing
                    // after. Talking to a slow primary (fence, final position) is not needed
                    // for that; it is made read-only once the switch is routed.
                    if let Err(e) = self.router.hold(Duration::ZERO).await {
                        tracing::warn!(error = %e, "Could not hold the proxy's commands before the promotion.");
                    }
                    return (
                        true,
                        json!({"method": "held at the proxy; its commits wait for standbys, which are repointed away from it at the promotion",
                               "offset": Value::Null, "mirror": false}),
                        None,
                    );
                }
                if new_primary.is_none() {
                    // Ahead of a promotion: writes wait in the proxy rather than fail on the
                    // fenced primary, and none is in flight there when its offset is read.
                    if let Err(e) = self.router.hold(self.opts.fence_timeout).await {
                        tracing::warn!(error = %e, "Could not hold the proxy's commands before the fence.");
                    }
                }
                match crate::fence(self.kind, &instance.endpoint, np, t).await {
                    Ok(r) => {
                        // Its final position: the furthest of what it acknowledged
                        // (`primary_position`) and what it wrote (its probe's offset: a
                        // PostgreSQL primary's local flush LSN, which a synchronous standby may
                        // confirm, and a client see acknowledged, just after the first is read).
                        // It still streams to its mirrors, so they can reach it.
                        let offset = if new_primary.is_none() {
                            let acked = crate::primary_position(self.kind, &instance.endpoint, t)
                                .await
                                .ok();
                            let written = crate::probe(self.kind, &instance.endpoint, t)
                                .await
                                .ok()
                                .filter(|st| st.reachable && st.role == Some(Role::Primary))
                                .and_then(|st| st.offset);
                            acked.max(written)
                        } else {
                            None
                        };
                        let mirror = new_primary.is_some() && r.replicates;
                        (
                            true,
                            json!({"method": r.method, "offset": offset, "mirror": mirror}),
                            None,
                        )
                    }
                    Err(e) => err_out(e),
                }
            }
            Action::Unfence { instance, .. } => match self.kind {
                DepKind::Redis => {
                    match redis_min_replicas(&instance.endpoint, self.opts.fence_timeout).await {
                        Ok(()) => (true, Value::Null, None),
                        Err(e) => err_out(e),
                    }
                }
                DepKind::Postgres => match pg_unfence(&instance.endpoint).await {
                    Ok(()) => (true, Value::Null, None),
                    Err(e) => err_out(e),
                },
                DepKind::Tcp => err_out("a tcp dependency is never fenced"),
            },
            Action::Route {
                primary, readers, ..
            } => match self.router.route(&primary, &readers).await {
                Ok(()) => (true, Value::Null, None),
                Err(e) => err_out(e),
            },
        }
    }
}

impl Io {
    /// Before a Redis promotion: holds the proxy's commands (no primary; they wait instead of
    /// failing, and nothing is in flight on the old primary when the target is read), then
    /// raises the target to the furthest other mirror. The target and the wait for it.
    async fn before_promotion(
        &self,
        instance: &Backend,
        old_primary: &Backend,
        catch_up_to: Option<u64>,
        timeout: Duration,
    ) -> (Option<u64>, Duration, Value) {
        let started = tokio::time::Instant::now();
        // A primary that answered was held (and waited for) by the fence before this; one
        // that is down or frozen will not answer what is in flight there: those commands give
        // up at once (reads are re-sent to the new primary, writes answered "lost"), so no
        // reply of the old primary reaches a client after the target is read.
        if let Err(e) = self.router.hold(PROMOTION_HOLD_WAIT).await {
            tracing::warn!(error = %e, "Could not hold the proxy's commands before the promotion.");
        }
        let hold_ms = started.elapsed().as_millis() as u64;
        let mut t = timeout;
        let mut target = catch_up_to;
        if let Some(want) = catch_up_to {
            // A mirror may hold writes the engine never saw on the primary: the promoted one
            // must reach the furthest mirror too. When another is ahead, this one gets a short
            // wait and the engine tries the next.
            let ahead = self
                .furthest_peer(&[&instance.instance, &old_primary.instance])
                .await;
            if let Some((peer, o)) = ahead.filter(|(_, o)| *o > want) {
                tracing::info!(peer = %peer, offset = o, "A mirror is ahead of the primary's last known offset.");
                target = Some(o);
                t = t.min(self.opts.probe_timeout * 4);
            }
        }
        let details =
            json!({"hold_ms": hold_ms, "prepare_ms": started.elapsed().as_millis() as u64});
        (target, t, details)
    }

    /// Before a PostgreSQL promotion, without waiting on the old primary (frozen, slow or
    /// dead: it is never asked anything here). The proxy holds at once (new connections and
    /// commands wait for the new primary; a session the proxy cannot move yet keeps its server
    /// connection, so a statement may still reach the old primary), and every other standby is
    /// pointed at the one being promoted (cascading replication). From then on the only
    /// standby that can confirm a commit of the old primary is the one being promoted, so any
    /// commit it acknowledges, now or when it thaws, is in the promoted one; after the
    /// promotion none can be acknowledged (its commits wait for a standby that never comes).
    /// The target is the furthest of `catch_up_to` and what the other standbys had received
    /// when they were cut off: the promoted one must hold it (a promotion replays everything
    /// it received). The other standbys then follow the new timeline with no copy.
    async fn before_pg_promotion(
        &self,
        instance: &Backend,
        old_primary: &Backend,
        catch_up_to: Option<u64>,
        timeout: Duration,
    ) -> (Option<u64>, Duration, Value) {
        let started = tokio::time::Instant::now();
        let others: Vec<(String, String)> = lock(&self.shared)
            .endpoints
            .iter()
            .filter(|(id, _)| **id != instance.instance && **id != old_primary.instance)
            .map(|(id, e)| (id.clone(), e.clone()))
            .collect();
        let t = self.opts.fence_timeout;
        let cut = async {
            let mut set = tokio::task::JoinSet::new();
            for (id, ep) in others {
                let up = instance.endpoint.clone();
                set.spawn(async move {
                    let s = tokio::time::Instant::now();
                    let r = crate::repoint(DepKind::Postgres, &ep, &up, t).await;
                    (id, r, s.elapsed())
                });
            }
            let mut furthest: Option<u64> = None;
            let mut done = Vec::new();
            while let Some(r) = set.join_next().await {
                let Ok((id, r, took)) = r else { continue };
                done.push(
                    json!({"instance": id, "ok": r.is_ok(), "ms": took.as_millis() as u64,
                                 "position": r.as_ref().ok()}),
                );
                match r {
                    Ok(pos) => furthest = furthest.max(Some(pos)),
                    // A standby that cannot be reached confirms nothing we could count on; one
                    // that refused (it is a primary) is not a standby of the old primary.
                    Err(e) => {
                        tracing::warn!(instance = %id, error = %e, "Could not point a standby at the mirror being promoted.")
                    }
                }
            }
            (furthest, done)
        };
        let hold = async {
            let s = tokio::time::Instant::now();
            (self.router.hold(Duration::ZERO).await, s.elapsed())
        };
        let ((held, hold_took), (furthest, repointed)) = tokio::join!(hold, cut);
        if let Err(e) = held {
            tracing::warn!(error = %e, "Could not hold the proxy's commands before the promotion.");
        }
        let mut t = timeout;
        let target = match (catch_up_to, furthest) {
            (Some(a), Some(b)) if b > a => {
                tracing::info!(
                    offset = b,
                    "A standby had received more than the primary's last known position."
                );
                // When another standby is ahead, this one gets a short wait and the engine
                // tries the next.
                t = t.min(self.opts.probe_timeout * 4);
                Some(b)
            }
            (a, b) => a.or(b),
        };
        let details = json!({"hold_ms": hold_took.as_millis() as u64, "repointed": repointed,
                             "prepare_ms": started.elapsed().as_millis() as u64});
        (target, t, details)
    }

    /// The replica (other than `except`) with the highest replication offset now.
    async fn furthest_peer(&self, except: &[&str]) -> Option<(String, u64)> {
        let peers: Vec<(String, String)> = lock(&self.shared)
            .endpoints
            .iter()
            .filter(|(id, _)| !except.contains(&id.as_str()))
            .map(|(id, e)| (id.clone(), e.clone()))
            .collect();
        let t = self.opts.probe_timeout;
        // Their own offsets only, all at once: a full probe would also ask the primary each
        // names, which is the one that failed.
        let mut set = tokio::task::JoinSet::new();
        for (id, ep) in peers {
            set.spawn(async move {
                let read = async {
                    let mut r = crate::redis::Redis::connect(&ep, t).await.ok()?;
                    r.info_replication().await.ok()
                };
                (id, tokio::time::timeout(t, read).await.ok().flatten())
            });
        }
        let mut best: Option<(String, u64)> = None;
        while let Some(r) = set.join_next().await {
            let Ok((id, Some(rep))) = r else { continue };
            if rep.role == Role::Replica && best.as_ref().is_none_or(|(_, b)| rep.offset > *b) {
                best = Some((id, rep.offset));
            }
        }
        best
    }
}

/// How long a Redis promotion's hold waits for the commands in flight on the old primary
/// before they give up (a reply already on its way gets through).
const PROMOTION_HOLD_WAIT: Duration = Duration::from_millis(10);

/// Whether the PostgreSQL primary at `endpoint` acknowledges commits only once a standby
/// flushed them (`synchronous_standby_names` set, `synchronous_commit` `on` or `remote_apply`); false
/// when it cannot tell within `timeout`.
async fn pg_commits_wait_for_standbys(endpoint: &str, timeout: Duration) -> bool {
    let ask = async {
        let url = if endpoint.starts_with("postgres://") {
            endpoint.to_string()
        } else {
            format!("postgres://postgres@{endpoint}/postgres")
        };
        let inst = bellwether_pg::connect(&url).await.ok()?;
        let row = inst
            .client
            .query_one(crate::SYNC_COMMITS_SQL, &[])
            .await
            .ok()?;
        row.try_get::<_, bool>(0).ok()
    };
    matches!(tokio::time::timeout(timeout, ask).await, Ok(Some(true)))
}

/// `CONFIG SET min-replicas-to-write 0`: undoes [`crate::fence`]'s write refusal.
async fn redis_min_replicas(endpoint: &str, timeout: Duration) -> Result<(), String> {
    let mut c = crate::resp::Conn::connect(endpoint, timeout)
        .await
        .map_err(|e| format!("{endpoint}: {e}"))?;
    c.cmd_ok(&["CONFIG", "SET", "min-replicas-to-write", "0"])
        .await
        .map_err(|e| format!("{endpoint}: {e}"))?;
    Ok(())
}

/// Undoes the PostgreSQL fence (`default_transaction_read_only`).
async fn pg_unfence(endpoint: &str) -> Result<(), String> {
    let url = if endpoint.starts_with("postgres://") {
        endpoint.to_string()
    } else {
        format!("postgres://postgres@{endpoint}/postgres")
    };
    let inst = bellwether_pg::connect(&url)
        .await
        .map_err(|e| format!("{endpoint}: {e}"))?;
    for q in [
        "ALTER SYSTEM RESET default_transaction_read_only",
        "SELECT pg_reload_conf()",
    ] {
        inst.client
            .batch_execute(q)
            .await
            .map_err(|e| format!("{endpoint}: {q}: {e}"))?;
    }
    Ok(())
}
