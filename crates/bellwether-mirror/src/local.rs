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
use tokio::sync::{mpsc, oneshot, watch};
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
    /// PostgreSQL: whether the server at an endpoint acknowledges commits only once a standby
    /// flushed them, as its sampler last read it (at most [`SYNC_REREAD`] round trips ago).
    pg_sync: BTreeMap<String, bool>,
}

/// How many round trips a PostgreSQL sampler makes between two reads of whether its server's
/// commits wait for standbys (about every 2 s at the default interval).
const SYNC_REREAD: u32 = 100;

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
            spec.policy.switch_below,
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
            let _ = r.send(st.health.filter(|_| st.switching.is_none()));
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

/// Latency samples per health interval, besides the probe's own round trip.
pub const SAMPLES_PER_INTERVAL: u32 = 12;

/// The quantile of an interval's latency samples the engine is given as the instance's
/// latency: a primary that stalls more than a quarter of the time (a CPU-throttled process, a
/// duty cycle of pauses) shows it, while fewer stalls than that (a busy host's scheduler, a
/// retransmitted packet) do not.
pub const LATENCY_QUANTILE: f64 = 0.75;

/// One instance's latency samples since the last health check.
#[derive(Default)]
struct SampleBuf {
    /// Round trips (ms) that completed.
    done: Vec<f64>,
    /// A round trip sent and not answered yet: at a health check it counts as the time it has
    /// waited so far (a frozen instance's samples are not missing, they are long).
    outstanding_since: Option<tokio::time::Instant>,
    /// When the last round trip was answered.
    last_answer: Option<tokio::time::Instant>,
    /// The last [`RECENT`] answered round trips (ms), kept across health checks: the
    /// instance's usual round trip, against which a long wait is judged.
    recent: std::collections::VecDeque<f64>,
    /// When the kept connection last failed (a round trip answered by an error or a closed
    /// connection, or a connection that could not be opened).
    failed: Option<tokio::time::Instant>,
    /// Until then the sampler's gaps between round trips are [`RECHECK_FRACTION`] of the
    /// usual (see [`RECHECK_FRACTION`]).
    hasten_until: Option<tokio::time::Instant>,
}

/// The recheck: after a check that judged the primary unhealthy while it answered (slow, not
/// down), the next check comes this fraction of an interval after that one began, and the
/// primary's sampler's gaps between round trips shrink by the same fraction until then, so the
/// recheck judges as many samples as a whole interval's in half the time. The same evidence,
/// gathered faster, as Envoy's `unhealthy_edge_interval` checks again sooner after a failed
/// check: a throttled primary is switched about 1.5 intervals after its first bad interval
/// began instead of 2, and a slowdown must still hold for two checks in a row.
pub const RECHECK_FRACTION: f64 = 0.5;

/// How many answered round trips [`SampleBuf::recent`] keeps.
const RECENT: usize = 64;

/// The passive signal (see [`Samplers::suspect`]): a round trip to the primary on its kept
/// connection still unanswered after this many times its usual round trip (the p90 of the
/// last [`RECENT`]) ...
pub const SUSPECT_FACTOR: f64 = 10.0;
/// ... and at least this long (a busy host's scheduler stalls a healthy server for some ms) ...
pub const SUSPECT_MIN: Duration = Duration::from_millis(50);
/// ... makes the runner check at once instead of at the next tick.
const SUSPECT_POLL: Duration = Duration::from_millis(5);

/// An instance's usual round trip (ms; the p90 of the last [`RECENT`]) and the wait past which
/// a round trip is suspect: [`SUSPECT_FACTOR`] × the usual, at least [`SUSPECT_MIN`], at most
/// `cap`. `None` before any round trip was answered.
fn suspect_limit(g: &SampleBuf, cap: Duration) -> Option<(f64, Duration)> {
    let recent: Vec<f64> = g.recent.iter().copied().collect();
    let usual = quantile(&recent, 0.9)?;
    let limit = Duration::from_secs_f64(usual * SUSPECT_FACTOR / 1000.0)
        .max(SUSPECT_MIN)
        .min(cap);
    Some((usual, limit))
}

fn lock_buf(b: &Mutex<SampleBuf>) -> std::sync::MutexGuard<'_, SampleBuf> {
    b.lock().unwrap_or_else(|p| p.into_inner())
}

/// Takes the samples gathered since the last call (an outstanding round trip counts, and stays
/// outstanding).
fn take_samples(b: &Mutex<SampleBuf>) -> Vec<f64> {
    let mut g = lock_buf(b);
    let mut v = std::mem::take(&mut g.done);
    if let Some(s) = g.outstanding_since {
        v.push(s.elapsed().as_secs_f64() * 1000.0);
    }
    v
}

/// The `q`-quantile (nearest rank) of `v`; `None` when empty.
pub fn quantile(v: &[f64], q: f64) -> Option<f64> {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((q.clamp(0.0, 1.0) * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

/// A small xorshift generator for the samples' random spacing (no need for a crate: it only
/// keeps the samples from locking onto one phase of a periodic stall).
struct Jitter(u64);

impl Jitter {
    fn new(seed: &str) -> Jitter {
        let mut x = now_ms() as u64 ^ 0x9E37_79B9_7F4A_7C15;
        for b in seed.bytes() {
            x = (x ^ u64::from(b)).wrapping_mul(0x100_0000_01B3);
        }
        Jitter(x | 1)
    }

    /// Uniform in [0, 1).
    fn next(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Samples one instance's latency on a kept connection, [`SAMPLES_PER_INTERVAL`] round trips
/// per health interval at random moments (gaps uniform in [0.5, 1.5] × the mean), so that a
/// periodic stall is seen in proportion to the time it takes. A round trip unanswered for two
/// intervals drops the connection and opens another; a failed connection is retried every
/// interval (the probe reports the instance down meanwhile).
async fn sample_loop(
    kind: DepKind,
    endpoint: String,
    interval: Duration,
    buf: Arc<Mutex<SampleBuf>>,
    shared: Arc<Mutex<Shared>>,
) {
    let mean_gap = interval / SAMPLES_PER_INTERVAL;
    let mut jitter = Jitter::new(&endpoint);
    loop {
        let opened = tokio::time::timeout(
            interval,
            crate::PingConn::open(kind, &endpoint, interval * 2),
        )
        .await;
        let Ok(Ok(mut conn)) = opened else {
            lock_buf(&buf).failed = Some(tokio::time::Instant::now());
            tokio::time::sleep(interval).await;
            continue;
        };
        let mut n: u32 = 0;
        loop {
            if kind == DepKind::Postgres && n.is_multiple_of(SYNC_REREAD) {
                let sync = tokio::time::timeout(interval, conn.commits_wait_for_standbys()).await;
                let mut g = lock(&shared);
                match sync {
                    Ok(Some(v)) => {
                        g.pg_sync.insert(endpoint.clone(), v);
                    }
                    _ => {
                        g.pg_sync.remove(&endpoint);
                    }
                }
            }
            n = n.wrapping_add(1);
            let hasten = lock_buf(&buf)
                .hasten_until
                .is_some_and(|t| t > tokio::time::Instant::now());
            let gap = if hasten {
                mean_gap.mul_f64(RECHECK_FRACTION)
            } else {
                mean_gap
            };
            tokio::time::sleep(gap.mul_f64(0.5 + jitter.next())).await;
            let sent = tokio::time::Instant::now();
            lock_buf(&buf).outstanding_since = Some(sent);
            let r = tokio::time::timeout(interval * 2, conn.ping()).await;
            let mut g = lock_buf(&buf);
            g.outstanding_since = None;
            if !matches!(r, Ok(Ok(()))) {
                g.failed = Some(tokio::time::Instant::now());
                break;
            }
            // Nobody collects (the runner stopped probing): keep the newest.
            if g.done.len() >= 4 * SAMPLES_PER_INTERVAL as usize {
                g.done.remove(0);
            }
            let ms = sent.elapsed().as_secs_f64() * 1000.0;
            g.done.push(ms);
            if g.recent.len() >= RECENT {
                g.recent.pop_front();
            }
            g.recent.push_back(ms);
            g.last_answer = Some(tokio::time::Instant::now());
        }
    }
}

/// One instance's sampler: the endpoint it samples, its samples, its task.
type Sampler = (String, Arc<Mutex<SampleBuf>>, JoinHandle<()>);

/// The samplers of the instances being probed, by instance id.
#[derive(Default)]
struct Samplers {
    by_id: BTreeMap<String, Sampler>,
}

impl Samplers {
    /// Starts a sampler for each new endpoint and stops those of instances no longer probed
    /// (or whose endpoint changed).
    fn sync(
        &mut self,
        kind: DepKind,
        interval: Duration,
        endpoints: &BTreeMap<String, String>,
        shared: &Arc<Mutex<Shared>>,
    ) {
        self.by_id.retain(|id, (ep, _, h)| {
            let keep = endpoints.get(id) == Some(ep);
            if !keep {
                h.abort();
            }
            keep
        });
        if kind == DepKind::Tcp {
            return;
        }
        for (id, ep) in endpoints {
            if !self.by_id.contains_key(id) {
                let buf = Arc::new(Mutex::new(SampleBuf::default()));
                let h = tokio::spawn(sample_loop(
                    kind,
                    ep.clone(),
                    interval,
                    buf.clone(),
                    shared.clone(),
                ));
                self.by_id.insert(id.clone(), (ep.clone(), buf, h));
            }
        }
    }

    /// Whether the instance answered a round trip after `t`.
    fn answered_since(&self, id: &str, t: tokio::time::Instant) -> bool {
        self.by_id
            .get(id)
            .and_then(|(_, b, _)| lock_buf(b).last_answer)
            .is_some_and(|a| a > t)
    }

    /// The passive signal on `id`'s kept connection that began after `since` (the start of
    /// the last check): its connection failed, or a round trip has waited longer than
    /// [`SUSPECT_FACTOR`] × its usual round trip (at least [`SUSPECT_MIN`], at most `cap`).
    /// `None` without one, or before any round trip was answered (no usual to judge by).
    fn suspect(&self, id: &str, since: tokio::time::Instant, cap: Duration) -> Option<String> {
        let (_, b, _) = self.by_id.get(id)?;
        let g = lock_buf(b);
        if let Some(f) = g.failed.filter(|f| *f > since) {
            return Some(format!(
                "its kept connection failed {} ms ago",
                f.elapsed().as_millis()
            ));
        }
        let sent = g.outstanding_since.filter(|s| *s > since)?;
        let (usual, limit) = suspect_limit(&g, cap)?;
        let waited = sent.elapsed();
        (waited > limit).then(|| {
            format!(
                "a round trip on its kept connection has waited {} ms (usual {:.1} ms)",
                waited.as_millis(),
                usual
            )
        })
    }

    /// The probe timeout of a check that confirms a silent primary: [`SUSPECT_FACTOR`] × its
    /// usual round trip, at least [`SUSPECT_MIN`], at most `cap`; `cap` when there is no usual
    /// round trip to judge by.
    fn confirm_timeout(&self, id: &str, cap: Duration) -> Duration {
        self.by_id
            .get(id)
            .and_then(|(_, b, _)| suspect_limit(&lock_buf(b), cap))
            .map_or(cap, |(_, limit)| limit)
    }

    /// Shrinks `id`'s sampler's gaps to [`RECHECK_FRACTION`] of the usual until `until`.
    fn hasten(&self, id: &str, until: tokio::time::Instant) {
        if let Some((_, b, _)) = self.by_id.get(id) {
            lock_buf(b).hasten_until = Some(until);
        }
    }

    fn take(&self, id: &str) -> Vec<f64> {
        self.by_id
            .get(id)
            .map(|(_, b, _)| take_samples(b))
            .unwrap_or_default()
    }
}

impl Drop for Samplers {
    fn drop(&mut self) {
        for (_, _, h) in self.by_id.values() {
            h.abort();
        }
    }
}

async fn probe_loop(
    kind: DepKind,
    interval: Duration,
    switch_below: f64,
    timeout: Duration,
    router: Arc<dyn Router>,
    shared: Arc<Mutex<Shared>>,
    tx: mpsc::UnboundedSender<Msg>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut samplers = Samplers::default();
    // The start of the last check, and whether it found the primary answering within its usual
    // time: only then may the passive signal bring the next check forward.
    let mut last_check = tokio::time::Instant::now();
    let mut primary_ok = false;
    // At most one early check per interval (each probes every instance).
    let mut last_early: Option<tokio::time::Instant> = None;
    // The start of the last check that found the primary answering nothing (None once a
    // check finds it answering, or after a switch).
    let mut primary_down_since: Option<(String, tokio::time::Instant)> = None;
    loop {
        let watched = lock(&shared).status.as_ref().map(|st| st.primary.clone());
        let early = tokio::select! {
            _ = tick.tick() => None,
            why = async {
                let allowed = primary_ok && last_early.is_none_or(|t| t.elapsed() >= interval);
                let Some(id) = watched.as_deref().filter(|_| allowed) else {
                    return std::future::pending().await;
                };
                loop {
                    tokio::time::sleep(SUSPECT_POLL).await;
                    if let Some(why) = samplers.suspect(id, last_check, timeout) {
                        return why;
                    }
                }
            } => Some(why),
        };
        if let Some(why) = &early {
            // An early check follows a good one only, and is reported only when the primary
            // answers nothing (see below).
            tracing::debug!(instance = ?watched, reason = %why, "Primary suspect: checked at once.");
            last_early = Some(tokio::time::Instant::now());
        }
        last_check = tokio::time::Instant::now();
        let at = now_ms();
        let (endpoints, primary) = {
            let s = lock(&shared);
            (
                s.endpoints.clone(),
                s.status.as_ref().map(|st| st.primary.clone()),
            )
        };
        samplers.sync(kind, interval, &endpoints, &shared);
        // A check that confirms a silent primary: the last check found it answering nothing,
        // and nothing has answered on its kept connection since that check began (a whole
        // interval ago, at least). Such a primary is given the passive signal's wait (10 × its
        // usual round trip, at least 50 ms) instead of the whole probe timeout: a frozen
        // primary is then confirmed down about an interval after it was first found so, not
        // an interval and a probe timeout. One that answers within that wait is up; one whose
        // kept connection answers meanwhile is slow, not down (below).
        let confirming = primary_down_since.as_ref().and_then(|(id, since)| {
            (primary.as_deref() == Some(id.as_str()) && !samplers.answered_since(id, *since))
                .then(|| samplers.confirm_timeout(id, timeout))
        });
        let mut set = tokio::task::JoinSet::new();
        for (id, ep) in endpoints {
            // A replica's probe also asks the primary it names (for its lag), with the probe's
            // timeout: half each for the others, so that a frozen primary does not make its
            // replicas look down; the primary's own probe has it all.
            let (outer, inner) = if primary.as_deref() == Some(id.as_str()) {
                let t = confirming.unwrap_or(timeout);
                (t, t)
            } else {
                (timeout, timeout / 2)
            };
            set.spawn(async move {
                let started = tokio::time::Instant::now();
                let r = tokio::time::timeout(outer, crate::probe(kind, &ep, inner)).await;
                (id, r, started, inner)
            });
        }
        // Each probe's outcome, with how long it took (measured as it ends).
        let mut checked = Vec::new();
        while let Some(r) = set.join_next().await {
            if let Ok((id, r, started, inner)) = r {
                checked.push((id, r, started, inner, started.elapsed()));
            }
        }
        if early.is_some() {
            // The early check is for a primary that answers nothing (killed, frozen): when it
            // answered (or its kept connection did while the probe waited), nothing is
            // reported and its samples stay for the regular check, which judges its latency
            // over a whole interval.
            let primary_down = checked.iter().any(|(id, r, started, inner, took)| {
                if primary.as_deref() != Some(id.as_str()) {
                    return false;
                }
                let answered = match r {
                    Ok(Ok(st)) => st.reachable,
                    // Not an observation of the instance at all.
                    Ok(Err(MirrorError::BadEndpoint { .. })) => true,
                    _ => false,
                };
                let kept_answered =
                    *took >= inner.mul_f64(0.9) && samplers.answered_since(id, *started);
                !answered && !kept_answered
            });
            if !primary_down {
                tracing::debug!(instance = ?primary, "The suspect primary answered: no early check reported.");
                continue;
            }
            // Reported: the next regular check comes one interval after this one began, so
            // two checks that judge the primary bad are never closer than an interval (start
            // to start), and the confirming check does not wait out this one's probe timeout
            // on top of the interval.
            tick.reset_at(last_check + interval);
        }
        let figures = router.figures().await;
        let mut obs = Vec::new();
        let mut primary_answered = false;
        for (id, r, started, inner, took) in checked {
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
            let Some(mut st) = st else { continue };
            // The primary's probe ran out of time, but its kept connection answered while the
            // probe waited: it is slow (a starved host, a lost packet, a connection slow to
            // open), not down. Down means no answer at all; slow is judged by its latency
            // (the wait counts as a sample), where `min_switch_gap` applies. A refused
            // connection or a frozen instance answers nothing and stays down.
            if !st.reachable
                && primary.as_deref() == Some(id.as_str())
                && took >= inner.mul_f64(0.9)
                && samplers.answered_since(&id, started)
            {
                st = crate::InstanceStatus {
                    reachable: true,
                    role: None,
                    offset: None,
                    replica_of: None,
                    link_up: None,
                    latency_ms: took.as_secs_f64() * 1000.0,
                    lag: None,
                    error: st.error,
                };
            }
            let f = match &figures {
                Some(all) => all.get(&id).cloned().unwrap_or(BackendFigures {
                    sessions: Some(0),
                    ..BackendFigures::default()
                }),
                None => BackendFigures::default(),
            };
            // The interval's latency: a quantile of the sampler's round trips and the probe's.
            let mut samples = samplers.take(&id);
            samples.push(st.latency_ms);
            let latency_ms = quantile(&samples, LATENCY_QUANTILE).unwrap_or(st.latency_ms);
            tracing::debug!(
                instance = %id,
                reachable = st.reachable,
                probe_ms = st.latency_ms,
                latency_ms,
                samples = samples.len(),
                early = early.is_some(),
                "latency sample"
            );
            if primary.as_deref() == Some(id.as_str()) {
                primary_ok = st.reachable && latency_ms <= SUSPECT_MIN.as_secs_f64() * 1000.0;
                primary_down_since = (!st.reachable).then(|| (id.clone(), last_check));
                primary_answered = st.reachable;
            }
            obs.push(Observation {
                instance: id,
                check: if st.reachable { Check::Ok } else { Check::Down },
                latency_ms: st.reachable.then_some(latency_ms),
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
        let (reply, verdict) = oneshot::channel();
        if tx.send(Msg::Observe(at, obs, reply)).is_err() {
            return;
        }
        // The recheck (see [`RECHECK_FRACTION`]): the primary answered but was judged
        // unhealthy, and no switch is under way. A primary that answered nothing has the
        // confirming check instead (above), an interval after this one began.
        let health = verdict.await.ok().flatten();
        if let Some(p) = primary.as_deref().filter(|_| {
            primary_answered && early.is_none() && health.is_some_and(|h| h < switch_below)
        }) {
            let at = last_check + interval.mul_f64(RECHECK_FRACTION);
            tracing::debug!(instance = %p, health = ?health, "The primary was judged unhealthy: checked again sooner.");
            samplers.hasten(p, at);
            tick.reset_at(at);
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
                    let known = lock(&self.shared).pg_sync.get(&instance.endpoint).copied();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quantile_is_the_nearest_rank() {
        assert_eq!(quantile(&[], 0.75), None);
        assert_eq!(quantile(&[3.0], 0.75), Some(3.0));
        // 13 samples: the 10th smallest.
        let v: Vec<f64> = (1..=13).rev().map(f64::from).collect();
        assert_eq!(quantile(&v, 0.75), Some(10.0));
        assert_eq!(quantile(&[1.0, f64::NAN, 2.0], 1.0), Some(2.0));
    }

    #[tokio::test(start_paused = true)]
    async fn an_unanswered_sample_counts_as_its_wait_so_far() {
        let b = Mutex::new(SampleBuf::default());
        lock_buf(&b).done.extend([1.0, 2.0]);
        lock_buf(&b).outstanding_since = Some(tokio::time::Instant::now());
        tokio::time::advance(Duration::from_millis(40)).await;
        let v = take_samples(&b);
        assert_eq!(v.len(), 3);
        assert!((v[2] - 40.0).abs() < 1.0, "{v:?}");
        // Taken: only the outstanding one is left, still counting.
        tokio::time::advance(Duration::from_millis(10)).await;
        let v = take_samples(&b);
        assert_eq!(v.len(), 1);
        assert!((v[0] - 50.0).abs() < 1.0, "{v:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_primary_is_suspect_after_a_long_wait_or_a_failed_connection_since_the_last_check() {
        let buf = Arc::new(Mutex::new(SampleBuf::default()));
        let mut samplers = Samplers::default();
        samplers.by_id.insert(
            "p".into(),
            ("127.0.0.1:1".into(), buf.clone(), tokio::spawn(async {})),
        );
        let cap = Duration::from_millis(200);
        let checked = tokio::time::Instant::now();
        tokio::time::advance(Duration::from_millis(1)).await;
        // No usual round trip yet: nothing to judge a wait by.
        lock_buf(&buf).outstanding_since = Some(tokio::time::Instant::now());
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(samplers.suspect("p", checked, cap), None);
        assert_eq!(samplers.suspect("other", checked, cap), None);
        // Usual 2 ms: suspect once a round trip waited past 50 ms (10 × 2 ms is below the floor).
        lock_buf(&buf).recent.extend([1.0, 2.0, 2.0, 1.5]);
        lock_buf(&buf).outstanding_since = Some(tokio::time::Instant::now());
        tokio::time::advance(Duration::from_millis(40)).await;
        assert_eq!(samplers.suspect("p", checked, cap), None);
        tokio::time::advance(Duration::from_millis(20)).await;
        let why = samplers
            .suspect("p", checked, cap)
            .expect("suspect at 60 ms");
        assert!(why.contains("waited 60 ms"), "{why}");
        // A round trip sent before the last check is not a new signal.
        assert_eq!(
            samplers.suspect("p", tokio::time::Instant::now(), cap),
            None
        );
        // Usual 30 ms: 10 × is 300 ms, capped at the probe's 200 ms.
        lock_buf(&buf).recent.extend([30.0; RECENT]);
        lock_buf(&buf).outstanding_since = Some(tokio::time::Instant::now());
        tokio::time::advance(Duration::from_millis(150)).await;
        assert_eq!(samplers.suspect("p", checked, cap), None);
        tokio::time::advance(Duration::from_millis(60)).await;
        assert!(samplers.suspect("p", checked, cap).is_some());
        // A failed connection is suspect at once, but only when it failed after the check.
        lock_buf(&buf).outstanding_since = None;
        lock_buf(&buf).failed = Some(tokio::time::Instant::now());
        let why = samplers
            .suspect("p", checked, cap)
            .expect("a failed connection");
        assert!(why.contains("failed"), "{why}");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(
            samplers.suspect("p", tokio::time::Instant::now(), cap),
            None
        );
    }
}
