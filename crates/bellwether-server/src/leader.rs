//! Leadership among several server replicas that share one PostgreSQL store.
//!
//! Every replica runs [`run`]: a follower tries to take the store's leader lease
//! (`bellwether_store::Store::acquire_lease`) every `retry_every`; the leader renews it every
//! `renew_every`. The lease lasts `lease_ttl` on the database's clock. Only the leader drives
//! durable tasks: on gaining the lease it tells the store its fence (holder and epoch, checked
//! inside every durable save) and resumes every unsettled task (`task::resume_all`);
//! every task runner holds a [`Term`] and stops the moment [`Term::lost`] resolves.
//!
//! The leader also keeps a local deadline: the lease is certainly its own until `lease_ttl`
//! (less a tenth for clock-rate drift) after it *sent* the last successful acquire or renew, on
//! its monotonic clock. Past that deadline it counts itself a follower without asking the
//! database, so a leader that was paused (SIGSTOP, a long GC-like stall, a frozen VM) steps
//! down the moment it runs again. Whatever it does in between, the store's fencing check
//! refuses its saves once the lease has moved on.
//!
//! On SQLite (one process) there is one [`Leadership::single`]: always the leader, epoch 0, no
//! lease, no fencing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bellwether_store::Fence;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::AppState;

/// The lease and its timing. The defaults give a takeover within `lease_ttl + retry_every`
/// (3.5 s) of a leader's death.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaSettings {
    /// How long a lease lasts without renewal (default 3 s).
    pub lease_ttl: Duration,
    /// How often the leader renews (default 1 s; at most a third of the ttl is sensible).
    pub renew_every: Duration,
    /// How often a follower tries to take the lease (default 500 ms).
    pub retry_every: Duration,
    /// The URL other replicas and clients reach this server at (`--advertise-url`); `None`
    /// takes `http(s)://` and the bound address.
    pub advertise_url: Option<String>,
    /// What a follower trusts when it forwards to an `https://` leader (`--replica-ca-file`;
    /// the system roots by default).
    pub tls: bellwether_tls::ClientTls,
}

impl Default for HaSettings {
    fn default() -> Self {
        HaSettings {
            lease_ttl: Duration::from_secs(3),
            renew_every: Duration::from_secs(1),
            retry_every: Duration::from_millis(500),
            advertise_url: None,
            tls: bellwether_tls::ClientTls::system(),
        }
    }
}

/// What this replica is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Leader,
    Follower,
}

/// This replica's view of the leadership, published on a watch channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub role: Role,
    /// This replica's epoch while it leads; the epoch of the lease it saw while it follows
    /// (`None` before it read one).
    pub epoch: Option<i64>,
    /// Where the leader is reached (this replica's own URL while it leads); `None` when no
    /// leader is known.
    pub leader_url: Option<String>,
    /// While leading: until when the lease is certainly this replica's (monotonic clock).
    /// `None` with [`Leadership::single`].
    valid_until: Option<Instant>,
}

impl View {
    fn follower(epoch: Option<i64>, leader_url: Option<String>) -> View {
        View {
            role: Role::Follower,
            epoch,
            leader_url,
            valid_until: None,
        }
    }

    /// Leading, and (with a lease) before the local deadline.
    fn leads_at(&self, now: Instant) -> bool {
        self.role == Role::Leader && self.valid_until.is_none_or(|u| now < u)
    }
}

/// This replica's leadership: its id, its view, and the terms handed to task runners.
#[derive(Debug)]
pub struct Leadership {
    /// The lease holder id: random per process start.
    holder: String,
    /// `None` with [`Leadership::single`].
    settings: Option<HaSettings>,
    /// This replica's own URL, once known.
    url: Mutex<Option<String>>,
    view: watch::Sender<View>,
    /// The current lease while leading (the loop's own record).
    fence: Mutex<Option<Fence>>,
    /// Held (cloned) by every runner of the current term; a new term starts only once the
    /// previous term's runners have all let go of theirs.
    term_token: Mutex<Arc<()>>,
}

/// A runner's hold on the term it was started in.
#[derive(Debug)]
pub struct Term {
    pub epoch: i64,
    rx: watch::Receiver<View>,
    _token: Arc<()>,
}

impl Term {
    /// Resolves once this term is over: this replica no longer leads at this epoch, its local
    /// deadline passed, or the server is shutting down.
    pub async fn lost(&mut self) {
        loop {
            let (still, until) = {
                let v = self.rx.borrow_and_update();
                (
                    v.leads_at(Instant::now()) && v.epoch == Some(self.epoch),
                    v.valid_until,
                )
            };
            if !still {
                return;
            }
            match until {
                Some(u) => {
                    tokio::select! {
                        r = self.rx.changed() => if r.is_err() { return },
                        () = tokio::time::sleep_until(u) => return,
                    }
                }
                None => {
                    if self.rx.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

fn new_holder_id() -> String {
    let mut b = [0u8; 6];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
    format!("bw-{}-{}", std::process::id(), hex::encode(b))
}

impl Leadership {
    /// One process owns the store (SQLite): always the leader, epoch 0, nothing to renew.
    pub fn single() -> Leadership {
        Leadership {
            holder: new_holder_id(),
            settings: None,
            url: Mutex::new(None),
            view: watch::Sender::new(View {
                role: Role::Leader,
                epoch: Some(0),
                leader_url: None,
                valid_until: None,
            }),
            fence: Mutex::new(None),
            term_token: Mutex::new(Arc::new(())),
        }
    }

    /// A replica of several on one store: a follower until [`Leadership::first_attempt`] or
    /// [`run`] takes the lease.
    pub fn replicated(settings: HaSettings) -> Leadership {
        Leadership {
            holder: new_holder_id(),
            url: Mutex::new(settings.advertise_url.clone()),
            settings: Some(settings),
            view: watch::Sender::new(View::follower(None, None)),
            fence: Mutex::new(None),
            term_token: Mutex::new(Arc::new(())),
        }
    }

    /// Whether this server shares its store with other replicas (and so holds a lease).
    pub fn is_replicated(&self) -> bool {
        self.settings.is_some()
    }

    /// This replica's lease holder id.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// This replica's own URL, once known.
    pub fn own_url(&self) -> Option<String> {
        lock(&self.url).clone()
    }

    /// The current view.
    pub fn view(&self) -> View {
        self.view.borrow().clone()
    }

    /// Follows the view.
    pub fn subscribe(&self) -> watch::Receiver<View> {
        self.view.subscribe()
    }

    /// Whether this replica leads at this instant (by its view and its local deadline).
    pub fn leads_now(&self) -> bool {
        self.view.borrow().leads_at(Instant::now())
    }

    /// A hold on the current term for a task runner; `None` when this replica does not lead.
    pub fn term(&self) -> Option<Term> {
        let rx = self.view.subscribe();
        let epoch = {
            let v = rx.borrow();
            if !v.leads_at(Instant::now()) {
                return None;
            }
            v.epoch?
        };
        Some(Term {
            epoch,
            rx,
            _token: lock(&self.term_token).clone(),
        })
    }

    /// Called by a runner whose save the store refused as fenced: this replica steps down at
    /// once (its lease is gone, whatever its local deadline says).
    pub fn fenced(&self) {
        if self.is_replicated() {
            // The loop wakes on the change and steps down (fence cleared, lease re-read).
            self.view.send_if_modified(|v| {
                if v.role == Role::Leader {
                    *v = View::follower(v.epoch, None);
                    true
                } else {
                    false
                }
            });
        }
    }

    /// The `/healthz` figures.
    pub fn health(&self) -> serde_json::Value {
        let v = self.view();
        let leads = v.leads_at(Instant::now());
        serde_json::json!({
            "status": "ok",
            "role": if leads { Role::Leader } else { Role::Follower },
            "replicated": self.is_replicated(),
            "leader": if leads { self.own_url() } else { v.leader_url },
            "epoch": v.epoch,
            "holder": self.holder,
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A tenth of the ttl, at least 50 ms: the margin the local deadline keeps before the lease's
/// expiry, for clocks that run at slightly different rates.
fn margin(ttl: Duration) -> Duration {
    (ttl / 10).max(Duration::from_millis(50)).min(ttl / 2)
}

/// Resumes every unsettled task of every kind (`task::resume_all`, a new kind joins in
/// `task::kinds()`) for a term that has just begun; every runner holds a [`Term`] from
/// [`Leadership::term`] and stops when it is lost.
fn resume_tasks(state: &AppState) {
    let state = state.clone();
    tokio::spawn(async move {
        match crate::task::resume_all(&state).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(tasks = n, "Resumed durable tasks as the leader."),
            Err(e) => tracing::error!(error = %e, "Could not resume durable tasks as the leader."),
        }
    });
}

/// One attempt to take the lease; on success this replica leads (fence set, view published,
/// tasks resumed). Returns whether it leads.
async fn try_acquire(state: &AppState, lead: &Leadership, settings: &HaSettings) -> bool {
    let url = lead.own_url().unwrap_or_default();
    let sent = Instant::now();
    let attempt = tokio::time::timeout(
        settings.lease_ttl,
        state
            .store
            .acquire_lease(&lead.holder, &url, settings.lease_ttl),
    )
    .await;
    match attempt {
        Ok(Ok(Some(grant))) => {
            // The previous term's runners must have stopped before this term's start.
            let old = std::mem::replace(&mut *lock(&lead.term_token), Arc::new(()));
            let drain_deadline = Instant::now() + settings.lease_ttl;
            while Arc::strong_count(&old) > 1 && Instant::now() < drain_deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if Arc::strong_count(&old) > 1 {
                tracing::warn!(
                    "Runners of the previous term are still stopping; the store's fence refuses their saves."
                );
            }
            let valid_until = sent + settings.lease_ttl - margin(settings.lease_ttl);
            if Instant::now() >= valid_until {
                // Too slow to be sure of it: let it lapse, and try again.
                return false;
            }
            state.store.set_fence(Some(grant.fence.clone()));
            *lock(&lead.fence) = Some(grant.fence.clone());
            lead.view.send_replace(View {
                role: Role::Leader,
                epoch: Some(grant.fence.epoch),
                leader_url: Some(url.clone()),
                valid_until: Some(valid_until),
            });
            tracing::info!(epoch = grant.fence.epoch, holder = %lead.holder, url = %url, "Gained the leader lease; driving the durable tasks.");
            // The event log names every term: who led from when, under which epoch.
            let figures = serde_json::json!({
                "epoch": grant.fence.epoch,
                "holder": lead.holder,
                "url": url,
                "lease_ttl_ms": settings.lease_ttl.as_millis() as u64,
            });
            let reason = format!(
                "{} leads the replicas under epoch {}",
                if url.is_empty() {
                    lead.holder.as_str()
                } else {
                    url.as_str()
                },
                grant.fence.epoch
            );
            if let Err(e) = state
                .store
                .record_named_event("leader.elected", None, &reason, &figures, crate::now_ms())
                .await
            {
                tracing::warn!(error = %e, "Could not record the election in the event log.");
            }
            resume_tasks(state);
            true
        }
        Ok(Ok(None)) => {
            match state.store.leader_lease().await {
                Ok(rec) => {
                    let leader = rec
                        .is_live()
                        .then(|| rec.holder_url.clone())
                        .flatten()
                        .filter(|u| !u.is_empty());
                    lead.view.send_if_modified(|v| {
                        let next = View::follower(Some(rec.epoch), leader.clone());
                        if *v != next {
                            *v = next;
                            true
                        } else {
                            false
                        }
                    });
                }
                Err(e) => tracing::warn!(error = %e, "Could not read the leader lease."),
            }
            false
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "Could not try to take the leader lease.");
            false
        }
        Err(_) => {
            tracing::warn!("Trying to take the leader lease timed out.");
            false
        }
    }
}

/// Steps down: saves refused from now on, runners stopped, leader unknown until the next read.
fn step_down(state: &AppState, lead: &Leadership, why: &str) {
    state.store.set_fence(None);
    let fence = lock(&lead.fence).take();
    let epoch = fence.as_ref().map(|f| f.epoch);
    lead.view.send_replace(View::follower(epoch, None));
    tracing::warn!(
        epoch,
        reason = why,
        "Lost the leader lease; no longer driving durable tasks."
    );
}

impl Leadership {
    /// The first attempt at the lease, before the server announces its address, so a server
    /// that starts alone on a store answers writes at once. `url` is where others reach it
    /// (unless `--advertise-url` gave one).
    pub(crate) async fn first_attempt(&self, state: &AppState, url: String) {
        let Some(settings) = self.settings.clone() else {
            return;
        };
        {
            let mut own = lock(&self.url);
            if own.is_none() {
                *own = Some(url);
            }
        }
        try_acquire(state, self, &settings).await;
    }
}

/// The leadership loop of a replica, until `stop` turns true; then a leader releases the lease
/// so another replica takes over at once.
pub(crate) async fn run(state: AppState, mut stop: watch::Receiver<bool>) {
    let lead = state.leader.clone();
    let Some(settings) = lead.settings.clone() else {
        return;
    };
    let mut changes = lead.subscribe();
    loop {
        if lead.leads_now() {
            // Leading: renew every `renew_every`, step down at the local deadline, on a refused
            // renewal, or when a runner's save was fenced.
            let Some(fence) = lock(&lead.fence).clone() else {
                step_down(&state, &lead, "no fence recorded");
                continue;
            };
            let until = lead.view().valid_until.unwrap_or_else(Instant::now);
            let next = (Instant::now() + settings.renew_every).min(until);
            changes.borrow_and_update();
            tokio::select! {
                () = tokio::time::sleep_until(next) => {}
                // A renewal of ours, or a runner's save refused by the fence ([`Leadership::fenced`]):
                // look again from the top.
                _ = changes.changed() => continue,
                () = stopped(&mut stop) => {
                    state.store.set_fence(None);
                    lead.view.send_replace(View::follower(Some(fence.epoch), None));
                    match state.store.release_lease(&fence).await {
                        Ok(_) => tracing::info!(epoch = fence.epoch, "Released the leader lease."),
                        Err(e) => tracing::warn!(error = %e, "Could not release the leader lease; it expires by itself."),
                    }
                    return;
                }
            }
            let now = Instant::now();
            let until = lead.view().valid_until.unwrap_or(now);
            if now >= until {
                step_down(
                    &state,
                    &lead,
                    "the lease's local deadline passed before a renewal (was this process paused?)",
                );
                continue;
            }
            let sent = now;
            match tokio::time::timeout_at(
                until,
                state.store.renew_lease(&fence, settings.lease_ttl),
            )
            .await
            {
                Ok(Ok(Some(_))) => {
                    let valid_until = sent + settings.lease_ttl - margin(settings.lease_ttl);
                    lead.view.send_modify(|v| {
                        if v.role == Role::Leader && v.epoch == Some(fence.epoch) {
                            v.valid_until = Some(valid_until);
                        }
                    });
                }
                Ok(Ok(None)) => step_down(
                    &state,
                    &lead,
                    "the store refused the renewal: the lease expired or another replica holds it",
                ),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "Could not renew the leader lease; trying again before it runs out.");
                }
                Err(_) => step_down(
                    &state,
                    &lead,
                    "renewing the lease took until its local deadline",
                ),
            }
        } else {
            if lock(&lead.fence).is_some() {
                step_down(
                    &state,
                    &lead,
                    "the lease's local deadline passed, or a save was refused by the store's fence",
                );
            }
            if try_acquire(&state, &lead, &settings).await {
                continue;
            }
            tokio::select! {
                () = tokio::time::sleep(settings.retry_every) => {}
                () = stopped(&mut stop) => return,
            }
        }
    }
}

/// The `/healthz` body of this server.
pub(crate) fn health(state: &AppState) -> serde_json::Value {
    state.leader.health()
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leading(lead: &Leadership, epoch: i64, for_: Duration) {
        lead.view.send_replace(View {
            role: Role::Leader,
            epoch: Some(epoch),
            leader_url: Some("http://me".into()),
            valid_until: Some(Instant::now() + for_),
        });
    }

    /// On tokio's paused clock: the term ends at the local deadline by itself, with no
    /// renewal and no database call, which is how a replica woken from a pause steps down.
    #[tokio::test(start_paused = true)]
    async fn a_term_ends_at_the_local_deadline_without_asking_anyone() {
        let lead = Leadership::replicated(HaSettings::default());
        assert!(lead.term().is_none(), "a follower has no term");
        assert!(!lead.leads_now());
        leading(&lead, 3, Duration::from_secs(2));
        assert!(lead.leads_now());
        let mut term = lead.term().expect("leading");
        assert_eq!(term.epoch, 3);
        let started = Instant::now();
        term.lost().await;
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert!(
            !lead.leads_now(),
            "past the deadline it counts itself a follower"
        );
        assert!(lead.term().is_none());
        assert_eq!(lead.health()["role"], "follower");
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_extends_the_term_and_a_fenced_save_ends_it_at_once() {
        let lead = Leadership::replicated(HaSettings::default());
        leading(&lead, 5, Duration::from_secs(2));
        let mut term = lead.term().unwrap();
        // A renewal moves the deadline: the term outlives the first one.
        tokio::time::sleep(Duration::from_secs(1)).await;
        lead.view
            .send_modify(|v| v.valid_until = Some(Instant::now() + Duration::from_secs(2)));
        let lost = tokio::time::timeout(Duration::from_millis(1500), term.lost()).await;
        assert!(lost.is_err(), "still leading after the first deadline");
        // A save refused by the store's fence ends it now.
        lead.fenced();
        let started = Instant::now();
        term.lost().await;
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert!(!lead.leads_now());
        // Another epoch's term does not count as this one.
        leading(&lead, 6, Duration::from_secs(2));
        term.lost().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_single_server_always_leads() {
        let lead = Leadership::single();
        assert!(lead.leads_now());
        let mut term = lead.term().unwrap();
        assert_eq!(term.epoch, 0);
        lead.fenced();
        let lost = tokio::time::timeout(Duration::from_secs(3600), term.lost()).await;
        assert!(lost.is_err(), "a single server's term never ends");
        assert_eq!(lead.health()["replicated"], false);
    }
}
