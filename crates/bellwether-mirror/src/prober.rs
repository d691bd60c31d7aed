//! The prober: how a dependency's instances are checked, for whoever steps the engine (the
//! one-machine [`crate::local::LocalRunner`] and the server's `mirror` durable task run the
//! same [`run`], through [`Checks`]).
//!
//! Every health interval it probes each instance ([`crate::probe`]: is it up, its role, its
//! replication offset), reads the proxy's per-backend figures, and hands the engine one
//! observation per instance. Between checks a sampler per instance times round trips on a kept
//! connection ([`SAMPLES_PER_INTERVAL`] an interval, at random moments); an interval's latency
//! is the [`LATENCY_QUANTILE`] of them. Three things make it faster than a fixed tick, each
//! explained where it is: the passive signal (a round trip on the primary's kept connection
//! that waits far past its usual brings the next check forward, [`SUSPECT_FACTOR`]), the
//! confirming check (a primary found answering nothing is given its usual round trip's wait,
//! not the whole probe timeout, the next time), and the recheck (a primary judged unhealthy
//! while it answers is checked again after [`RECHECK_FRACTION`] of an interval).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bellwether_engine::mirror::{Check, InstanceState, Observation, ObservedRole, Status};
use tokio::task::JoinHandle;

use crate::local::{now_ms, BackendFigures};
use crate::{DepKind, MirrorError, Role};
use bellwether_model::mirror::DependencySpec;

/// How a prober checks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbeSettings {
    pub kind: DepKind,
    /// The health interval: one check each.
    pub interval: Duration,
    /// The primary's health score under which the engine switches (`policy.switch_below`):
    /// below it, the recheck comes sooner.
    pub switch_below: f64,
    /// How long a probe may take (a probe that takes longer is a `down` check).
    pub timeout: Duration,
}

impl ProbeSettings {
    /// The settings `spec`'s policy gives (its kind, health interval and `switch_below`),
    /// with probes bounded by `timeout`: the one place both drivers build them.
    pub fn for_spec(spec: &DependencySpec, timeout: Duration) -> ProbeSettings {
        ProbeSettings {
            kind: spec.kind,
            interval: spec.policy.health_interval.get(),
            switch_below: spec.policy.switch_below,
            timeout,
        }
    }
}

/// The engine is gone: the prober ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gone;

/// What the prober needs of whoever steps the engine.
#[async_trait::async_trait]
pub trait Checks: Send + Sync {
    /// The engine's status after its last step (`None` before its first): which instance is
    /// the primary, and which are probed ([`probed`]). Read before every check, so a switch
    /// that completed between two checks is seen at the next one.
    fn status(&self) -> Option<Status>;
    /// The settings in force, read before every check (a changed interval restarts the
    /// samplers at the new pace).
    fn settings(&self) -> ProbeSettings;
    /// The proxy's per-backend figures since the previous call (see
    /// [`crate::local::Router::figures`]).
    async fn figures(&self) -> Option<BTreeMap<String, BackendFigures>>;
    /// Gives the engine one check's observations (`at_ms`, wall clock) and waits until it has
    /// judged them: the primary's health score then, `None` when it has none or a switch is
    /// under way.
    async fn observe(
        &self,
        at_ms: i64,
        observations: Vec<Observation>,
    ) -> Result<Option<f64>, Gone>;
}

/// PostgreSQL: whether the server at an endpoint acknowledges commits only once a standby
/// flushed them, as its sampler last read it (at most [`SYNC_REREAD`] round trips ago).
pub type PgSync = Arc<Mutex<BTreeMap<String, bool>>>;

/// How many round trips a PostgreSQL sampler makes between two reads of whether its server's
/// commits wait for standbys (about every 2 s at the default interval).
const SYNC_REREAD: u32 = 100;

/// The instances a check probes: every one with an endpoint that is not being made, retired
/// or failed.
pub fn probed(status: &Status) -> BTreeMap<String, String> {
    status
        .instances
        .iter()
        .filter(|i| {
            !matches!(
                i.state,
                InstanceState::Retired | InstanceState::Failed | InstanceState::Provisioning
            )
        })
        .filter_map(|i| i.endpoint.clone().map(|e| (i.id.clone(), e)))
        .collect()
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
    pg_sync: Option<PgSync>,
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
            if let Some(pg_sync) = pg_sync
                .as_ref()
                .filter(|_| kind == DepKind::Postgres && n.is_multiple_of(SYNC_REREAD))
            {
                let sync = tokio::time::timeout(interval, conn.commits_wait_for_standbys()).await;
                let mut g = pg_sync.lock().unwrap_or_else(|p| p.into_inner());
                match sync {
                    Ok(Some(v)) => {
                        g.insert(endpoint.clone(), v);
                    }
                    _ => {
                        g.remove(&endpoint);
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
        pg_sync: Option<&PgSync>,
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
                    pg_sync.cloned(),
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

/// Checks the dependency's instances until the engine is gone ([`Checks::observe`] answers
/// [`Gone`]): one check per interval, sooner on the passive signal or for a recheck. With
/// `pg_sync`, PostgreSQL samplers also report, every `SYNC_REREAD` round trips, whether
/// each instance's commits wait for a synchronous standby (the local runner's promotions
/// read it; the server's task does not need it and passes `None`).
pub async fn run(checks: Arc<dyn Checks>, pg_sync: Option<PgSync>) {
    let mut settings = checks.settings();
    let mut tick = tokio::time::interval(settings.interval);
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
    // The next check is a recheck (see below).
    let mut recheck = false;
    loop {
        let watched = checks.status().map(|st| st.primary);
        let early = tokio::select! {
            _ = tick.tick() => None,
            why = async {
                let allowed = primary_ok
                    && last_early.is_none_or(|t| t.elapsed() >= settings.interval);
                let Some(id) = watched.as_deref().filter(|_| allowed) else {
                    return std::future::pending().await;
                };
                loop {
                    tokio::time::sleep(SUSPECT_POLL).await;
                    if let Some(why) = samplers.suspect(id, last_check, settings.timeout) {
                        return why;
                    }
                }
            } => Some(why),
        };
        let now_settings = checks.settings();
        if now_settings != settings {
            // A new policy: the samplers start again at its pace, the next check an interval
            // from now.
            tracing::debug!(?now_settings, "The probe settings changed.");
            settings = now_settings;
            samplers = Samplers::default();
            tick = tokio::time::interval_at(
                tokio::time::Instant::now() + settings.interval,
                settings.interval,
            );
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            primary_ok = false;
            primary_down_since = None;
            recheck = false;
        }
        let ProbeSettings {
            kind,
            interval,
            switch_below,
            timeout,
        } = settings;
        let rechecking = std::mem::take(&mut recheck) && early.is_none();
        if let Some(why) = &early {
            // An early check follows a good one only, and is reported only when the primary
            // answers nothing (see below).
            tracing::debug!(instance = ?watched, reason = %why, "Primary suspect: checked at once.");
            last_early = Some(tokio::time::Instant::now());
        }
        last_check = tokio::time::Instant::now();
        let at = now_ms();
        let status = checks.status();
        let endpoints = status.as_ref().map(probed).unwrap_or_default();
        let primary = status.map(|st| st.primary);
        samplers.sync(kind, interval, &endpoints, pg_sync.as_ref());
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
        // A recheck's probe of the primary has the same short wait: its latency is judged on
        // the sampler's round trips anyway, and a throttled server's probe (a connection and
        // several queries, each stalled) would otherwise end well after the recheck began. A
        // probe cut short there counts as slow, not down (below): `down` would skip
        // `min_switch_gap`, which is what keeps a lossy link from switching over and over.
        let short = confirming.or_else(|| {
            let p = primary.as_deref().filter(|_| rechecking)?;
            Some(samplers.confirm_timeout(p, timeout))
        });
        let mut set = tokio::task::JoinSet::new();
        for (id, ep) in endpoints {
            // A replica's probe also asks the primary it names (for its lag), with the probe's
            // timeout: half each for the others, so that a frozen primary does not make its
            // replicas look down; the primary's own probe has it all.
            let (outer, inner) = if primary.as_deref() == Some(id.as_str()) {
                let t = short.unwrap_or(timeout);
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
        let figures = checks.figures().await;
        let mut obs = Vec::new();
        let mut primary_answered = false;
        for (id, r, started, inner, took) in checked {
            let is_primary = primary.as_deref() == Some(id.as_str());
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
            // connection or a frozen instance answers nothing and stays down. A recheck's
            // probe cut short is slow too (above): the check before it found the primary
            // answering.
            let cut_short = took >= inner.mul_f64(0.9);
            if !st.reachable
                && is_primary
                && cut_short
                && (rechecking || samplers.answered_since(&id, started))
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
                rechecking,
                "latency sample"
            );
            if is_primary {
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
        let Ok(health) = checks.observe(at, obs).await else {
            return;
        };
        // The recheck (see [`RECHECK_FRACTION`]): the primary answered but was judged
        // unhealthy, and no switch is under way. A primary that answered nothing has the
        // confirming check instead (above), an interval after this one began.
        if let Some(p) = primary.as_deref().filter(|_| {
            primary_answered && early.is_none() && health.is_some_and(|h| h < switch_below)
        }) {
            let at = last_check + interval.mul_f64(RECHECK_FRACTION);
            tracing::debug!(instance = %p, health = ?health, "The primary was judged unhealthy: checked again sooner.");
            samplers.hasten(p, at);
            tick.reset_at(at);
            recheck = true;
        }
    }
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
