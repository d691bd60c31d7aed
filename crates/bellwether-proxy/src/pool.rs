//! The backends: weights, the operator's admin state, the measured health, passive ejection,
//! and the choice of a backend for a new connection.
//!
//! Admin state and health are kept apart: what a person set never hides what the checks
//! measured, and a backend is eligible only when both allow it.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::{AdminState, EjectionConfig, RawBackend, Role};
use crate::metrics::{BackendMetrics, MetricsSnapshot};

/// What the checks and the passive observations measured.
#[derive(Debug, Clone)]
pub struct Health {
    /// The active checks' verdict (true until a check says otherwise).
    pub up: bool,
    pub consecutive_ok: u32,
    pub consecutive_fail: u32,
    pub checks: u64,
    pub last_error: Option<String>,
    /// Passive ejection: out of rotation until this instant.
    pub ejected_until: Option<Instant>,
    pub ejections: u32,
    pub consecutive_connect_errors: u32,
    /// What the last `redis` check read from `ROLE`: the server's own role and replication
    /// offset.
    pub observed: Option<Observed>,
}

/// A server's replication state as its last check reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Observed {
    /// `master`, `slave` or `sentinel` (Redis's words).
    pub role: String,
    /// The replication offset: `master_repl_offset` on a master, the processed offset on a
    /// replica.
    pub offset: Option<i64>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            up: true,
            consecutive_ok: 0,
            consecutive_fail: 0,
            checks: 0,
            last_error: None,
            ejected_until: None,
            ejections: 0,
            consecutive_connect_errors: 0,
            observed: None,
        }
    }
}

/// One backend.
#[derive(Debug)]
pub struct Backend {
    pub name: String,
    pub address: String,
    pub password: Option<String>,
    pub(crate) state: Mutex<BackendState>,
    pub metrics: BackendMetrics,
}

#[derive(Debug, Clone)]
pub(crate) struct BackendState {
    pub weight: u32,
    pub admin: AdminState,
    pub role: Option<Role>,
    pub health: Health,
    /// Smooth weighted round-robin's running score.
    current: i64,
}

impl Backend {
    fn state(&self) -> std::sync::MutexGuard<'_, BackendState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn admin(&self) -> AdminState {
        self.state().admin
    }

    pub fn weight(&self) -> u32 {
        self.state().weight
    }

    pub fn role(&self) -> Option<Role> {
        self.state().role
    }

    /// Ready (admin), up and not ejected: may take a session as primary or replica.
    pub fn serving(&self, now: Instant) -> bool {
        let s = self.state();
        s.admin == AdminState::Ready
            && s.health.up
            && s.health.ejected_until.is_none_or(|t| t <= now)
    }

    pub fn health(&self) -> Health {
        self.state().health.clone()
    }

    /// Whether the health side allows traffic now.
    pub fn available(&self, now: Instant) -> bool {
        let s = self.state();
        s.health.up && s.health.ejected_until.is_none_or(|t| t <= now)
    }

    /// Whether a session on this backend should leave it at its next boundary. A weight of
    /// zero only stops new connections; the admin state `drain` (or failing health) moves the
    /// sessions that are there.
    pub fn should_leave(&self, now: Instant) -> bool {
        let s = self.state();
        s.admin != AdminState::Ready
            || !s.health.up
            || s.health.ejected_until.is_some_and(|t| t > now)
    }
}

/// A backend as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct BackendView {
    pub name: String,
    pub address: String,
    pub weight: u32,
    pub admin: AdminState,
    /// `primary`, `replica`, or null (no role).
    pub role: Option<Role>,
    pub healthy: bool,
    pub ejected: bool,
    pub ejected_for_seconds: Option<f64>,
    pub ejections: u32,
    pub consecutive_ok: u32,
    pub consecutive_fail: u32,
    pub checks: u64,
    pub last_error: Option<String>,
    /// The role and offset the last `redis` check read (`ROLE`).
    pub observed: Option<Observed>,
    pub metrics: MetricsSnapshot,
    /// Rates and latency over the last few seconds (the mirror engine's health inputs).
    pub window: crate::metrics::WindowView,
}

/// Why a change to the pool was refused.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("no backend named `{0}`")]
    Unknown(String),
    #[error("a backend named `{0}` exists already")]
    Exists(String),
    #[error(
        "`{0}` cannot be added as primary: there is one already (use POST /primary to change it)"
    )]
    TwoPrimaries(String),
}

/// The outcome of [`Pool::set_primary`].
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PrimaryChange {
    /// The new primary (null: none; commands wait for one).
    pub primary: Option<String>,
    /// The backend that was primary before, now a replica.
    pub previous: Option<String>,
    /// Whether the previous primary was fenced (admin state `maintenance`).
    pub fenced: bool,
}

/// The set of backends, shared by listeners, health checks and the admin API.
#[derive(Debug)]
pub struct Pool {
    backends: RwLock<Vec<Arc<Backend>>>,
    ejection: EjectionConfig,
    /// Bumped on every change of weight, admin state or health, so sessions can re-check
    /// whether they should move.
    generation: watch::Sender<u64>,
    pub rejected: AtomicU64,
    /// Serialises the smooth weighted round-robin and role changes.
    pick_lock: Mutex<()>,
    /// The last backend that was primary, kept when the primary is cleared (a hold), so the
    /// next [`Pool::set_primary`] can fence it.
    last_primary: Mutex<Option<String>>,
}

/// Which backends a pick may choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Without roles: any ready backend by weight. With roles: the primary only.
    Writer,
    /// Replicas (role `replica`) by weight.
    Replica,
}

impl Pool {
    pub fn new(backends: &[RawBackend], ejection: EjectionConfig) -> Pool {
        let (generation, _) = watch::channel(0);
        let pool = Pool {
            backends: RwLock::new(Vec::new()),
            ejection,
            generation,
            rejected: AtomicU64::new(0),
            pick_lock: Mutex::new(()),
            last_primary: Mutex::new(None),
        };
        for b in backends {
            // Names are unique after validation.
            let _ = pool.add(b);
        }
        pool
    }

    fn list(&self) -> Vec<Arc<Backend>> {
        self.backends
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn backends(&self) -> Vec<Arc<Backend>> {
        self.list()
    }

    pub fn get(&self, name: &str) -> Option<Arc<Backend>> {
        self.list().into_iter().find(|b| b.name == name)
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    pub(crate) fn bump(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// Adds a backend at run time (the patch engine adds the patched instance).
    pub fn add(&self, b: &RawBackend) -> Result<Arc<Backend>, PoolError> {
        let mut list = self.backends.write().unwrap_or_else(|p| p.into_inner());
        if list.iter().any(|o| o.name == b.name) {
            return Err(PoolError::Exists(b.name.clone()));
        }
        if b.role == Some(Role::Primary) && list.iter().any(|o| o.role() == Some(Role::Primary)) {
            return Err(PoolError::TwoPrimaries(b.name.clone()));
        }
        let backend = Arc::new(Backend {
            name: b.name.clone(),
            address: b.address.0.clone(),
            password: b.password.clone(),
            state: Mutex::new(BackendState {
                weight: b.weight,
                admin: b.admin,
                role: b.role,
                health: Health::default(),
                current: 0,
            }),
            metrics: BackendMetrics::default(),
        });
        list.push(backend.clone());
        drop(list);
        self.bump();
        Ok(backend)
    }

    /// Removes a backend; its sessions see it gone and leave at their next boundary.
    pub fn remove(&self, name: &str) -> Result<(), PoolError> {
        let b = self
            .get(name)
            .ok_or_else(|| PoolError::Unknown(name.into()))?;
        b.state().admin = AdminState::Maintenance;
        self.backends
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|o| o.name != name);
        self.bump();
        Ok(())
    }

    /// Makes `name` the primary (or, with `None`, leaves no primary: Redis commands wait for
    /// one, bounded by `primary_wait`), in one step: the previous primary (the current one,
    /// or after a `None` the one before it) becomes a replica,
    /// and with `fence` its admin state becomes `maintenance` (its sessions leave at their
    /// next boundary; the caller closes what is left). The new primary's admin state becomes
    /// `ready`. Every other backend without a role becomes a replica.
    pub fn set_primary(&self, name: Option<&str>, fence: bool) -> Result<PrimaryChange, PoolError> {
        let new = match name {
            Some(n) => Some(self.get(n).ok_or_else(|| PoolError::Unknown(n.into()))?),
            None => None,
        };
        let _g = self.pick_lock.lock().unwrap_or_else(|p| p.into_inner());
        let list = self.list();
        let mut last = self.last_primary.lock().unwrap_or_else(|p| p.into_inner());
        let previous = list
            .iter()
            .find(|b| b.role() == Some(Role::Primary))
            .or_else(|| {
                list.iter()
                    .find(|b| last.as_deref() == Some(b.name.as_str()))
            })
            .cloned();
        let same = matches!((&previous, &new), (Some(p), Some(n)) if p.name == n.name);
        let mut fenced = false;
        for b in &list {
            let mut s = b.state();
            if new.as_ref().is_some_and(|n| n.name == b.name) {
                s.role = Some(Role::Primary);
                s.admin = AdminState::Ready;
            } else {
                let was_previous = previous.as_ref().is_some_and(|p| p.name == b.name);
                if was_previous && fence && !same {
                    s.admin = AdminState::Maintenance;
                    fenced = true;
                }
                s.role = Some(Role::Replica);
            }
        }
        *last = new.as_ref().or(previous.as_ref()).map(|b| b.name.clone());
        drop(last);
        drop(_g);
        let change = PrimaryChange {
            primary: new.map(|n| n.name.clone()),
            previous: previous.map(|p| p.name.clone()),
            fenced,
        };
        tracing::info!(primary = ?change.primary, previous = ?change.previous, fenced, "Primary changed.");
        self.bump();
        Ok(change)
    }

    /// Sets a backend's role. Making one primary demotes the previous one to replica, as
    /// [`Pool::set_primary`] without fencing does.
    pub fn set_role(&self, name: &str, role: Role) -> Result<(), PoolError> {
        match role {
            Role::Primary => self.set_primary(Some(name), false).map(|_| ()),
            Role::Replica => {
                let b = self
                    .get(name)
                    .ok_or_else(|| PoolError::Unknown(name.into()))?;
                b.state().role = Some(Role::Replica);
                tracing::info!(backend = %name, "Backend is now a replica.");
                self.bump();
                Ok(())
            }
        }
    }

    /// Sets a weight and/or admin state.
    pub fn set(
        &self,
        name: &str,
        weight: Option<u32>,
        admin: Option<AdminState>,
    ) -> Result<(), PoolError> {
        let b = self
            .get(name)
            .ok_or_else(|| PoolError::Unknown(name.into()))?;
        {
            let mut s = b.state();
            if let Some(w) = weight {
                s.weight = w;
            }
            if let Some(a) = admin {
                s.admin = a;
            }
        }
        tracing::info!(backend = %name, weight = ?weight, admin = ?admin.map(|a| a.to_string()), "Backend changed by the operator.");
        self.bump();
        Ok(())
    }

    /// Chooses a backend for a new connection by smooth weighted round-robin among those that
    /// are ready, weighted above zero, up and not ejected; `except` are skipped (already tried).
    ///
    /// When any backend has a role, this picks the primary only (see [`Pool::pick_for`]).
    pub fn pick(&self, except: &[String]) -> Option<Arc<Backend>> {
        self.pick_for(Target::Writer, except)
    }

    /// Whether any backend has a role: then writes and new sessions go to the primary.
    pub fn has_roles(&self) -> bool {
        self.list().iter().any(|b| b.role().is_some())
    }

    /// The backend whose role is primary, whatever its state.
    pub fn primary(&self) -> Option<Arc<Backend>> {
        self.list()
            .into_iter()
            .find(|b| b.role() == Some(Role::Primary))
    }

    /// Whether a session now on `backend` should be elsewhere: it should leave its backend
    /// (admin state, health, removed), or roles are in use and it is not the primary.
    pub fn should_move(&self, backend: &Backend, now: Instant) -> bool {
        backend.should_leave(now)
            || self.get(&backend.name).is_none()
            || (self.has_roles() && backend.role() != Some(Role::Primary))
    }

    /// Chooses a backend of the given kind by smooth weighted round-robin; see
    /// [`Target`]. The primary is chosen whatever its weight.
    pub fn pick_for(&self, target: Target, except: &[String]) -> Option<Arc<Backend>> {
        let now = Instant::now();
        let _g = self.pick_lock.lock().unwrap_or_else(|p| p.into_inner());
        let list = self.list();
        let roles = list.iter().any(|b| b.role().is_some());
        if roles && target == Target::Writer {
            return list
                .iter()
                .find(|b| {
                    b.role() == Some(Role::Primary) && !except.contains(&b.name) && b.serving(now)
                })
                .cloned();
        }
        let mut total = 0i64;
        let mut best: Option<(usize, i64)> = None;
        for (i, b) in list.iter().enumerate() {
            if except.contains(&b.name) || !b.available(now) {
                continue;
            }
            let mut s = b.state();
            if s.admin != AdminState::Ready || s.weight == 0 {
                continue;
            }
            if target == Target::Replica && s.role != Some(Role::Replica) {
                continue;
            }
            s.current += i64::from(s.weight);
            total += i64::from(s.weight);
            if best.is_none_or(|(_, c)| s.current > c) {
                best = Some((i, s.current));
            }
        }
        let (i, _) = best?;
        list[i].state().current -= total;
        Some(list[i].clone())
    }

    /// Records the outcome of opening a server connection, ejecting the backend after the
    /// configured run of errors, unless that would put more than the allowed share out.
    pub fn record_connect(&self, backend: &Backend, result: Result<Duration, &str>) {
        let now = Instant::now();
        match result {
            Ok(took) => {
                backend.metrics.connects.fetch_add(1, Relaxed);
                backend.metrics.connect_latency.record(took);
                let mut s = backend.state();
                s.health.consecutive_connect_errors = 0;
                if s.health.ejected_until.is_some_and(|t| t <= now) {
                    s.health.ejected_until = None;
                }
            }
            Err(err) => {
                backend.metrics.connect_errors.fetch_add(1, Relaxed);
                let eject = {
                    let mut s = backend.state();
                    s.health.consecutive_connect_errors += 1;
                    s.health.last_error = Some(err.to_string());
                    s.health.consecutive_connect_errors >= self.ejection.consecutive_errors
                        && s.health.ejected_until.is_none_or(|t| t <= now)
                };
                if eject {
                    self.try_eject(backend, now);
                }
            }
        }
    }

    fn try_eject(&self, backend: &Backend, now: Instant) {
        let list = self.list();
        let ejected = list
            .iter()
            .filter(|b| {
                b.name != backend.name && b.state().health.ejected_until.is_some_and(|t| t > now)
            })
            .count();
        let allowed = (self.ejection.max_share * list.len() as f64).floor() as usize;
        if ejected + 1 > allowed {
            tracing::warn!(backend = %backend.name, ejected, allowed, "Ejection skipped: too many backends are out already.");
            return;
        }
        let mut s = backend.state();
        s.health.ejections += 1;
        let factor = 2u32.saturating_pow(s.health.ejections.saturating_sub(1).min(20));
        let time = self
            .ejection
            .base_time
            .0
            .saturating_mul(factor)
            .min(self.ejection.max_time.0);
        s.health.ejected_until = Some(now + time);
        s.health.consecutive_connect_errors = 0;
        drop(s);
        tracing::warn!(backend = %backend.name, seconds = time.as_secs_f64(), "Backend ejected after connect errors.");
        self.bump();
    }

    /// Records an active check's result, applying rise and fall.
    pub fn record_check(&self, backend: &Backend, ok: Result<(), String>, rise: u32, fall: u32) {
        let changed = {
            let mut s = backend.state();
            s.health.checks += 1;
            let was = s.health.up;
            match ok {
                Ok(()) => {
                    s.health.consecutive_ok += 1;
                    s.health.consecutive_fail = 0;
                    if !s.health.up && s.health.consecutive_ok >= rise {
                        s.health.up = true;
                    }
                }
                Err(e) => {
                    s.health.consecutive_fail += 1;
                    s.health.consecutive_ok = 0;
                    s.health.last_error = Some(e);
                    if s.health.up && s.health.consecutive_fail >= fall {
                        s.health.up = false;
                    }
                }
            }
            (was != s.health.up).then_some(s.health.up)
        };
        if let Some(up) = changed {
            if up {
                tracing::info!(backend = %backend.name, "Backend is up.");
            } else {
                tracing::warn!(backend = %backend.name, error = ?backend.health().last_error, "Backend is down.");
            }
            self.bump();
        }
    }

    /// Records what a Redis check read from `ROLE`.
    pub fn record_observed(&self, backend: &Backend, observed: Option<Observed>) {
        backend.state().health.observed = observed;
    }

    /// Marks a backend down until `rise` checks pass (used for a freshly started instance).
    pub fn mark_down(&self, name: &str) -> Result<(), PoolError> {
        let b = self
            .get(name)
            .ok_or_else(|| PoolError::Unknown(name.into()))?;
        {
            let mut s = b.state();
            s.health.up = false;
            s.health.consecutive_ok = 0;
        }
        self.bump();
        Ok(())
    }

    pub fn view(&self) -> Vec<BackendView> {
        let now = Instant::now();
        self.list()
            .iter()
            .map(|b| {
                let s = b.state().clone();
                let ejected_for = s
                    .health
                    .ejected_until
                    .filter(|&t| t > now)
                    .map(|t| (t - now).as_secs_f64());
                BackendView {
                    name: b.name.clone(),
                    address: b.address.clone(),
                    weight: s.weight,
                    admin: s.admin,
                    role: s.role,
                    healthy: s.health.up,
                    ejected: ejected_for.is_some(),
                    ejected_for_seconds: ejected_for,
                    ejections: s.health.ejections,
                    consecutive_ok: s.health.consecutive_ok,
                    consecutive_fail: s.health.consecutive_fail,
                    checks: s.health.checks,
                    last_error: s.health.last_error.clone(),
                    observed: s.health.observed.clone(),
                    metrics: b.metrics.snapshot(),
                    window: b.metrics.window(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Dur, HostPort};

    fn raw(name: &str, weight: u32) -> RawBackend {
        RawBackend {
            name: name.into(),
            address: HostPort(format!("{name}:1")),
            weight,
            admin: AdminState::Ready,
            password: None,
            role: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn weights_admin_and_health_combine() {
        let pool = Pool::new(&[raw("a", 3), raw("b", 1)], EjectionConfig::default());
        let picks: Vec<String> = (0..8)
            .map(|_| pool.pick(&[]).unwrap().name.clone())
            .collect();
        assert_eq!(picks.iter().filter(|n| *n == "a").count(), 6);
        pool.set("a", None, Some(AdminState::Drain)).unwrap();
        assert!((0..4).all(|_| pool.pick(&[]).unwrap().name == "b"));
        // Health down on b leaves nothing; admin state is untouched by it.
        let b = pool.get("b").unwrap();
        for _ in 0..3 {
            pool.record_check(&b, Err("refused".into()), 2, 3);
        }
        assert!(pool.pick(&[]).is_none());
        assert_eq!(b.admin(), AdminState::Ready);
        pool.record_check(&b, Ok(()), 2, 3);
        assert!(pool.pick(&[]).is_none(), "one success is below rise");
        pool.record_check(&b, Ok(()), 2, 3);
        assert_eq!(pool.pick(&[]).unwrap().name, "b");
    }

    #[tokio::test(start_paused = true)]
    async fn roles_route_to_the_primary_and_switch_atomically() {
        let role = |name: &str, r: Role| RawBackend {
            role: Some(r),
            ..raw(name, 1)
        };
        let pool = Pool::new(
            &[
                role("a", Role::Primary),
                role("b", Role::Replica),
                raw("c", 100),
            ],
            EjectionConfig::default(),
        );
        assert!(pool.has_roles());
        // Writers: the primary only, whatever the weights; replicas by weight.
        assert!((0..5).all(|_| pool.pick(&[]).unwrap().name == "a"));
        assert!((0..5).all(|_| pool.pick_for(Target::Replica, &[]).unwrap().name == "b"));
        let (a, b, c) = (
            pool.get("a").unwrap(),
            pool.get("b").unwrap(),
            pool.get("c").unwrap(),
        );
        let now = Instant::now();
        assert!(!pool.should_move(&a, now));
        assert!(pool.should_move(&b, now) && pool.should_move(&c, now));
        // A second primary cannot be added.
        assert!(matches!(
            pool.add(&role("d", Role::Primary)),
            Err(PoolError::TwoPrimaries(_))
        ));
        // Hold: no primary; nothing to write to.
        let hold = pool.set_primary(None, false).unwrap();
        assert_eq!(hold.previous.as_deref(), Some("a"));
        assert!(pool.pick(&[]).is_none());
        assert!(pool.should_move(&a, now));
        // Route to b and fence the primary of before the hold.
        let routed = pool.set_primary(Some("b"), true).unwrap();
        assert_eq!(
            routed,
            PrimaryChange {
                primary: Some("b".into()),
                previous: Some("a".into()),
                fenced: true
            }
        );
        assert_eq!(a.admin(), AdminState::Maintenance);
        assert_eq!(a.role(), Some(Role::Replica));
        assert_eq!(c.role(), Some(Role::Replica));
        assert_eq!(pool.primary().unwrap().name, "b");
        assert!(!pool.should_move(&b, now));
        // A primary that is down is not picked: writes wait rather than go elsewhere.
        for _ in 0..3 {
            pool.record_check(&b, Err("down".into()), 2, 3);
        }
        assert!(pool.pick(&[]).is_none());
        assert!(pool.set_primary(Some("zz"), false).is_err());
        assert_eq!(
            pool.primary().unwrap().name,
            "b",
            "a refused change changes nothing"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_grows_and_respects_the_share() {
        let ej = EjectionConfig {
            consecutive_errors: 1,
            base_time: Dur(Duration::from_secs(5)),
            max_time: Dur(Duration::from_secs(12)),
            max_share: 0.5,
        };
        let pool = Pool::new(&[raw("a", 1), raw("b", 1)], ej);
        let a = pool.get("a").unwrap();
        let b = pool.get("b").unwrap();
        pool.record_connect(&a, Err("refused"));
        assert!(!a.available(Instant::now()));
        // b may not be ejected too: at most half of two.
        pool.record_connect(&b, Err("refused"));
        assert!(b.available(Instant::now()));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(a.available(Instant::now()));
        pool.record_connect(&a, Err("refused"));
        assert_eq!(a.health().ejections, 2);
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(!a.available(Instant::now()), "second ejection lasts 10 s");
        tokio::time::advance(Duration::from_secs(1)).await;
        pool.record_connect(&a, Err("refused"));
        let until = a.health().ejected_until.unwrap();
        assert_eq!(
            until - Instant::now(),
            Duration::from_secs(12),
            "capped at max_time"
        );
    }
}
