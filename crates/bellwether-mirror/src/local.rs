//! The one-machine runner: drives a [`MirrorEngine`] with real IO on this host. Every health
//! interval it probes each instance ([`crate::probe`]) and reads the proxy's per-backend
//! figures (a [`Router`]), gives the engine one observation, and carries out the engine's
//! actions concurrently (provisioning through a [`Provisioner`], promote and fence through
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
    Action, Backend, Check, Command, Event, Input, MirrorEngine, Observation, ObservedRole, Status,
};
use bellwether_model::mirror::DependencySpec;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

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
    /// [`Router::route`]; returns once nothing is in flight on the primary it had.
    async fn hold(&self) -> Result<(), String>;
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
    Observe(i64, Vec<Observation>),
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
        let prober = tokio::spawn(probe_loop(
            spec.kind,
            spec.policy.health_interval.get(),
            opts.probe_timeout,
            router,
            shared.clone(),
            tx.clone(),
        ));
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
        let input = match msg {
            Msg::Stop => break,
            Msg::Observe(at, obs) => {
                if at <= last_obs {
                    continue;
                }
                last_obs = at;
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
        s.endpoints = engine.endpoints();
        // Retired and failed instances are not probed.
        let st = s.status.clone();
        if let Some(st) = st {
            for i in &st.instances {
                use bellwether_engine::mirror::InstanceState as S;
                if matches!(i.state, S::Retired | S::Failed | S::Provisioning) {
                    s.endpoints.remove(&i.id);
                }
            }
        }
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

async fn probe_loop(
    kind: DepKind,
    interval: Duration,
    timeout: Duration,
    router: Arc<dyn Router>,
    shared: Arc<Mutex<Shared>>,
    tx: mpsc::UnboundedSender<Msg>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let at = now_ms();
        let endpoints = lock(&shared).endpoints.clone();
        let mut set = tokio::task::JoinSet::new();
        for (id, ep) in endpoints {
            set.spawn(async move {
                let r = tokio::time::timeout(timeout, crate::probe(kind, &ep, timeout)).await;
                (id, r)
            });
        }
        let figures = router.figures().await;
        let mut obs = Vec::new();
        while let Some(r) = set.join_next().await {
            let Ok((id, r)) = r else { continue };
            let st = match r {
                Ok(Ok(st)) => Some(st),
                // A bad endpoint is not an observation of the instance; any other failure
                // (a reset mid-reply, an error answer) is a failed check.
                Ok(Err(MirrorError::BadEndpoint { .. })) => None,
                Ok(Err(e)) => Some(crate::InstanceStatus::unreachable(
                    timeout.as_secs_f64() * 1000.0,
                    e.to_string(),
                )),
                Err(_) => Some(crate::InstanceStatus::unreachable(
                    timeout.as_secs_f64() * 1000.0,
                    "probe timed out".into(),
                )),
            };
            let Some(st) = st else { continue };
            let f = match &figures {
                Some(all) => all.get(&id).cloned().unwrap_or(BackendFigures {
                    sessions: Some(0),
                    ..BackendFigures::default()
                }),
                None => BackendFigures::default(),
            };
            obs.push(Observation {
                instance: id,
                check: if st.reachable { Check::Ok } else { Check::Down },
                latency_ms: st.reachable.then_some(st.latency_ms),
                error_rate: f.error_rate,
                requests_per_s: f.requests_per_s,
                offset: st.offset,
                sessions: f.sessions,
                role: st.role.map(|r| match r {
                    Role::Primary => ObservedRole::Primary,
                    Role::Replica => ObservedRole::Replica,
                }),
            });
        }
        obs.sort_by(|a, b| a.instance.cmp(&b.instance));
        if tx.send(Msg::Observe(at, obs)).is_err() {
            return;
        }
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
                ..
            } => {
                let t = Duration::from_millis(timeout_ms);
                match crate::promote(self.kind, &instance.endpoint, catch_up_to, t).await {
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
                                   "promote_ms": r.promote_ms}),
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
                if new_primary.is_none() {
                    // Ahead of a promotion: writes wait in the proxy rather than fail on the
                    // fenced primary, and none is in flight there when its offset is read.
                    if let Err(e) = self.router.hold().await {
                        tracing::warn!(error = %e, "Could not hold the proxy's commands before the fence.");
                    }
                }
                match crate::fence(self.kind, &instance.endpoint, np, t).await {
                    Ok(r) => {
                        let offset = if new_primary.is_none() {
                            crate::primary_position(self.kind, &instance.endpoint, t)
                                .await
                                .ok()
                        } else {
                            None
                        };
                        let mirror = new_primary.is_some() && self.kind == DepKind::Redis;
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
