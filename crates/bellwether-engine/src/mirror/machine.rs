//! The state machine behind [`super::MirrorEngine`]. docs/mirror-engine.md describes it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bellwether_model::mirror::{check_endpoint, DepKind, DependencySpec, Mode};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::score::{self, HealthInputs};
use super::*;

/// The most primary offsets kept for the lag (about two minutes at the default interval).
pub const MAX_OFFSETS: usize = 512;
/// A failed provisioning is retried after `interval × 2^failures`, at most this long (ms).
pub const MAX_PROVISION_BACKOFF_MS: i64 = 300_000;
/// After this many failed provisionings in a row, provisioning stops with an alert until the
/// policy changes or the engine is resumed.
pub const MAX_PROVISION_FAILURES: u32 = 5;
/// Observation times past this (ms since the epoch, about the year 285,000) are not times.
pub const MAX_TIME_MS: i64 = 1 << 53;
/// A mirror down in every observation for this many intervals is dead: it no longer counts,
/// and one Bellwether made is retired and replaced.
pub const DEAD_AFTER_INTERVALS: i64 = 20;
/// A failed route during a switch is re-sent this many times before the engine pauses.
pub const MAX_ROUTE_ATTEMPTS: u32 = 3;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Inst {
    pub role: Role,
    pub state: InstanceState,
    pub endpoint: Option<String>,
    pub provisioned: bool,
    pub since_ms: i64,
    pub detail: Value,
    /// When it was last in an observation.
    pub obs_ms: Option<i64>,
    pub up: Option<bool>,
    pub latency_ms: Option<f64>,
    pub error_rate: Option<f64>,
    pub rps: Option<f64>,
    pub offset: Option<u64>,
    pub sessions: Option<u32>,
    pub observed_role: Option<ObservedRole>,
    pub baseline_ms: Option<f64>,
    pub health: Option<f64>,
    pub lag_ms: Option<i64>,
    /// Health at or above `failback_above` in every observation since.
    pub healthy_since_ms: Option<i64>,
    /// Down in every observation since.
    #[serde(default)]
    pub down_since_ms: Option<i64>,
    /// Retry time of a failed retire.
    pub retry_at_ms: Option<i64>,
}

impl Inst {
    fn new(role: Role, state: InstanceState, endpoint: Option<String>, now_ms: i64) -> Inst {
        Inst {
            role,
            state,
            endpoint,
            provisioned: role == Role::Mirror,
            since_ms: now_ms,
            detail: Value::Null,
            obs_ms: None,
            up: None,
            latency_ms: None,
            error_rate: None,
            rps: None,
            offset: None,
            sessions: None,
            observed_role: None,
            baseline_ms: None,
            health: None,
            lag_ms: None,
            healthy_since_ms: None,
            down_since_ms: None,
            retry_at_ms: None,
        }
    }

    fn set(&mut self, state: InstanceState, now_ms: i64) {
        self.state = state;
        self.since_ms = now_ms;
    }

    /// A mirror that counts toward the replication factor.
    fn live_mirror(&self) -> bool {
        self.role == Role::Mirror
            && matches!(
                self.state,
                InstanceState::Provisioning
                    | InstanceState::Syncing
                    | InstanceState::Ready
                    | InstanceState::Fencing
            )
    }

    fn backend(&self, id: &str) -> Option<Backend> {
        self.endpoint.as_ref().map(|e| Backend {
            instance: id.to_string(),
            endpoint: e.clone(),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Step {
    /// The old primary is fenced before the promotion (it still answered).
    Fencing,
    Promoting,
    Routing,
    /// Every promotion failed: the fence sent first is being undone.
    Unfencing,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Switch {
    pub trigger: String,
    pub cause: String,
    pub from: String,
    pub to: Option<String>,
    pub step: Step,
    pub decided_ms: i64,
    pub first_bad_ms: Option<i64>,
    pub last_good_ms: Option<i64>,
    pub candidates: VecDeque<String>,
    pub tried: Vec<Value>,
    pub catch_up_to: Option<u64>,
    pub fenced_first: bool,
    pub route_attempts: u32,
    pub figures: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct State {
    pub phase: Phase,
    pub pause_reason: Option<String>,
    pub next_id: u64,
    pub pending: BTreeMap<u64, Action>,
    pub instances: BTreeMap<String, Inst>,
    pub primary: String,
    pub mode: Mode,
    pub next_mirror: u32,
    pub last_obs_ms: Option<i64>,
    pub rps_smooth: Option<f64>,
    pub health_smooth: Option<f64>,
    pub weight: f64,
    pub target_raw: f64,
    pub target: u32,
    /// Since when the hysteresis has asked for fewer mirrors.
    pub shrink_since_ms: Option<i64>,
    /// The primary's offsets (time, offset), oldest first.
    pub offsets: VecDeque<(i64, u64)>,
    /// Consecutive observations of the primary below `switch_below` (or down).
    pub bad_count: u32,
    pub first_bad_ms: Option<i64>,
    pub last_good_ms: Option<i64>,
    /// Consecutive observations without the primary.
    pub no_data_count: u32,
    pub last_switch_ms: Option<i64>,
    pub switch: Option<Switch>,
    pub history: Vec<SwitchRecord>,
    /// The routing the proxy has confirmed: primary id and reader ids.
    pub routed: Option<(String, Vec<String>)>,
    pub route_retry_at_ms: Option<i64>,
    pub provision_failures: u32,
    pub provision_retry_at_ms: Option<i64>,
    /// Why provisioning is impossible (stops it until the policy changes or a resume).
    pub provision_blocked: Option<String>,
    /// Episodes already reported (an event once per episode, not per interval).
    pub open: BTreeSet<String>,
    /// The primary answered at least once (no provisioning before).
    pub primary_seen: bool,
}

impl State {
    pub fn new(spec: &DependencySpec, now_ms: i64) -> State {
        let mut instances = BTreeMap::new();
        instances.insert(
            PRIMARY_ID.to_string(),
            Inst::new(
                Role::Primary,
                InstanceState::Serving,
                Some(spec.primary.clone()),
                now_ms,
            ),
        );
        let mode = score::mode(spec, 0.0, Mode::ActivePassive);
        State {
            phase: Phase::Running,
            pause_reason: None,
            next_id: 1,
            pending: BTreeMap::new(),
            instances,
            primary: PRIMARY_ID.to_string(),
            mode,
            next_mirror: 1,
            last_obs_ms: None,
            rps_smooth: None,
            health_smooth: None,
            weight: score::weight(spec, None),
            target_raw: spec.policy.min_mirrors as f64,
            target: spec.policy.min_mirrors,
            shrink_since_ms: None,
            offsets: VecDeque::new(),
            bad_count: 0,
            first_bad_ms: None,
            last_good_ms: None,
            no_data_count: 0,
            last_switch_ms: None,
            switch: None,
            history: Vec::new(),
            routed: None,
            route_retry_at_ms: None,
            provision_failures: 0,
            provision_retry_at_ms: None,
            provision_blocked: None,
            open: BTreeSet::new(),
            primary_seen: false,
        }
    }

    /// How far behind the primary an instance at `offset` is, in time, at `now_ms`: the time
    /// since the primary was first seen past that offset (0 when it has every offset seen).
    pub fn lag_ms(&self, offset: u64, now_ms: i64) -> Option<i64> {
        let newest = self.offsets.back()?;
        if offset >= newest.1 {
            return Some(0);
        }
        let past = self.offsets.iter().find(|(_, o)| *o > offset)?;
        Some((now_ms - past.0).max(0))
    }

    fn newest_offset(&self) -> Option<u64> {
        self.offsets.back().map(|(_, o)| *o)
    }
}

fn ev(out: &mut Output, at_ms: i64, name: &str, reason: String, figures: Value, alert: bool) {
    out.events.push(Event {
        at_ms,
        name: name.to_string(),
        reason,
        figures,
        alert,
    });
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

impl MirrorEngine {
    fn interval_ms(&self) -> i64 {
        (self.spec.policy.health_interval.get().as_millis() as i64).max(1)
    }

    /// The request rate's smoothing time constant (`policy.rate_smoothing`, by default
    /// [`score::RATE_TAU_MS`]).
    fn rate_tau_ms(&self) -> f64 {
        (self.spec.policy.rate_smoothing.get().as_millis() as f64).max(1.0)
    }

    fn has_offsets(&self) -> bool {
        self.spec.kind != DepKind::Tcp
    }

    fn dispatch(&mut self, out: &mut Output, make: impl FnOnce(u64) -> Action) -> u64 {
        let id = self.st.next_id;
        self.st.next_id += 1;
        let a = make(id);
        self.st.pending.insert(id, a.clone());
        out.actions.push(a);
        id
    }

    fn pending_kind(&self, kind: &str) -> bool {
        self.st.pending.values().any(|a| a.kind() == kind)
    }

    fn pending_for(&self, kind: &str, id: &str) -> bool {
        self.st.pending.values().any(|a| {
            a.kind() == kind
                && match a {
                    Action::Provision { instance, .. } => instance == id,
                    Action::Retire { instance, .. }
                    | Action::Promote { instance, .. }
                    | Action::Fence { instance, .. }
                    | Action::Unfence { instance, .. } => instance.instance == id,
                    Action::Route { .. } => false,
                }
        })
    }

    fn backend(&self, id: &str) -> Option<Backend> {
        self.st.instances.get(id).and_then(|i| i.backend(id))
    }

    /// Opens an episode; true when it was not open (so its event is due).
    fn open(&mut self, key: &str) -> bool {
        self.st.open.insert(key.to_string())
    }

    fn close(&mut self, key: &str) {
        self.st.open.remove(key);
    }

    pub(super) fn start(&mut self, now_ms: i64) -> Output {
        let mut out = Output::default();
        ev(
            &mut out,
            now_ms,
            "started",
            format!(
                "Mirroring {} ({} at {}): {} to {} mirrors; the primary is routed to until it is observed.",
                self.spec.name,
                self.spec.kind.as_str(),
                self.spec.primary,
                self.spec.policy.min_mirrors,
                self.spec.policy.max_mirrors
            ),
            json!({"weight": round3(self.st.weight), "target_mirrors": self.st.target,
                   "mode": self.st.mode}),
            false,
        );
        self.route_if_needed(now_ms, &mut out);
        out
    }

    pub(super) fn apply(&mut self, input: Input, now_ms: i64, out: &mut Output) {
        if self.st.phase == Phase::Removed {
            if let Input::ActionDone { action_id, .. } = input {
                self.st.pending.remove(&action_id);
            }
            return;
        }
        match input {
            Input::Observe {
                at_ms,
                observations,
            } => self.on_observe(at_ms, observations, out),
            Input::ActionDone {
                action_id,
                ok,
                output,
                error,
            } => self.on_done(action_id, ok, output, error, now_ms, out),
            Input::Command(c) => self.on_command(c, now_ms, out),
        }
        self.drive(now_ms, out);
    }

    // ---- observations -------------------------------------------------------------------

    fn on_observe(&mut self, at: i64, observations: Vec<Observation>, out: &mut Output) {
        let policy = self.spec.policy.clone();
        let dt = self.st.last_obs_ms.map(|t| at - t).unwrap_or(0);
        if !(0..=MAX_TIME_MS).contains(&at) || self.st.last_obs_ms.is_some_and(|t| at < t) {
            ev(
                out,
                at,
                "observation_ignored",
                format!("An observation at {at} ms is older than the last one; it is ignored."),
                json!({"at_ms": at, "last_ms": self.st.last_obs_ms}),
                false,
            );
            return;
        }
        self.st.last_obs_ms = Some(at);
        let mut by_id: BTreeMap<String, Observation> = BTreeMap::new();
        for o in observations {
            if self.st.instances.contains_key(&o.instance) {
                by_id.insert(o.instance.clone(), o);
            } else if self.open(&format!("unknown:{}", o.instance)) {
                ev(
                    out,
                    at,
                    "unknown_instance",
                    format!(
                        "An observation names {:?}, which is not an instance of {}; it is ignored.",
                        o.instance, self.spec.name
                    ),
                    json!({"instance": o.instance}),
                    false,
                );
            }
        }
        // The primary's offset first: the mirrors' lag is measured against it.
        let primary = self.st.primary.clone();
        if let Some(o) = by_id.get(&primary) {
            if let (Check::Ok, Some(off)) = (o.check, o.offset) {
                if self.st.offsets.back().is_none_or(|(_, last)| off >= *last) {
                    self.st.offsets.push_back((at, off));
                    while self.st.offsets.len() > MAX_OFFSETS {
                        self.st.offsets.pop_front();
                    }
                }
            }
        }
        let mut total_rps: Option<f64> = None;
        let ids: Vec<String> = by_id.keys().cloned().collect();
        for id in ids {
            let o = &by_id[&id];
            let lag = if id != primary {
                o.offset.and_then(|off| self.st.lag_ms(off, at))
            } else {
                None
            };
            let inst = self.st.instances.get_mut(&id).expect("checked above");
            let up = o.check == Check::Ok;
            let finite = |v: Option<f64>| v.filter(|x| x.is_finite() && *x >= 0.0);
            inst.obs_ms = Some(at);
            inst.up = Some(up);
            if up {
                inst.down_since_ms = None;
            } else {
                inst.down_since_ms.get_or_insert(at);
            }
            inst.latency_ms = finite(o.latency_ms);
            inst.error_rate = finite(o.error_rate).map(|e| e.min(1.0));
            inst.rps = finite(o.requests_per_s);
            if up {
                inst.offset = o.offset.or(inst.offset);
                inst.observed_role = o.role.or(inst.observed_role);
            }
            inst.sessions = o.sessions;
            inst.lag_ms = if up { lag } else { None };
            let h = score::health(
                &HealthInputs {
                    up,
                    latency_ms: inst.latency_ms,
                    baseline_ms: inst.baseline_ms,
                    error_rate: inst.error_rate,
                    lag_ms: inst.lag_ms,
                },
                &policy,
            );
            inst.health = Some(h);
            if let (true, Some(l)) = (up, inst.latency_ms) {
                inst.baseline_ms = Some(match inst.baseline_ms {
                    None => l,
                    Some(b) if l <= score::LATENCY_TOLERANCE * b.max(score::LATENCY_FLOOR_MS) => {
                        b + score::LATENCY_BASELINE_ALPHA * (l - b)
                    }
                    Some(b) => b,
                });
            }
            if h >= policy.failback_above {
                inst.healthy_since_ms.get_or_insert(at);
            } else {
                inst.healthy_since_ms = None;
            }
            if let Some(r) = inst.rps {
                *total_rps.get_or_insert(0.0) += r;
            }
        }
        if let Some(r) = total_rps {
            self.st.rps_smooth = Some(match self.st.rps_smooth {
                None => r,
                Some(s) => s + score::alpha(dt, self.rate_tau_ms()) * (r - s),
            });
        }
        self.judge_primary(at, by_id.get(&primary), out);
        self.update_target(at, out);
        self.update_instances(at, out);
    }

    /// Counts the primary's bad intervals and starts a switch when they reach `switch_after`.
    fn judge_primary(&mut self, at: i64, o: Option<&Observation>, out: &mut Output) {
        let policy = self.spec.policy.clone();
        let primary = self.st.primary.clone();
        let Some(o) = o else {
            self.st.no_data_count += 1;
            if self.st.no_data_count >= policy.switch_after && self.open("no_data") {
                ev(
                    out,
                    at,
                    "no_data",
                    format!(
                        "No observation of the primary {primary} for {} intervals: nothing is decided on no data.",
                        self.st.no_data_count
                    ),
                    json!({"primary": primary, "intervals": self.st.no_data_count}),
                    false,
                );
            }
            return;
        };
        self.st.no_data_count = 0;
        self.close("no_data");
        let inst = &self.st.instances[&primary];
        let h = inst.health.unwrap_or(0.0);
        self.st.health_smooth = Some(match self.st.health_smooth {
            None => h,
            Some(s) => {
                let dt = self.interval_ms();
                s + score::alpha(dt, score::HEALTH_TAU_MS) * (h - s)
            }
        });
        let down = o.check == Check::Down;
        if !down {
            self.st.primary_seen = true;
        }
        if o.role == Some(ObservedRole::Replica) && o.check == Check::Ok {
            if self.open("primary_is_replica") {
                ev(
                    out,
                    at,
                    "primary_is_replica",
                    format!("The primary {primary} reports itself a replica: it takes no writes."),
                    json!({"primary": primary}),
                    true,
                );
            }
        } else {
            self.close("primary_is_replica");
        }
        let bad = down || h < policy.switch_below;
        if !bad {
            self.st.bad_count = 0;
            self.st.first_bad_ms = None;
            self.st.last_good_ms = Some(at);
            for k in ["switch_held", "no_healthy_mirror", "primary_unhealthy"] {
                self.close(k);
            }
            return;
        }
        self.st.bad_count += 1;
        self.st.first_bad_ms.get_or_insert(at);
        if self.open("primary_unhealthy") {
            ev(
                out,
                at,
                "primary_unhealthy",
                if down {
                    format!("The primary {primary} does not answer its check.")
                } else {
                    format!(
                        "The primary {primary}'s health {:.2} is below switch_below {}.",
                        h, policy.switch_below
                    )
                },
                self.health_figures(&primary),
                false,
            );
        }
        if self.st.bad_count >= policy.switch_after
            && self.st.phase == Phase::Running
            && self.st.switch.is_none()
        {
            let trigger = if down { "down" } else { "unhealthy" };
            let cause = if down {
                format!(
                    "the primary {primary} did not answer {} checks in a row",
                    self.st.bad_count
                )
            } else {
                format!(
                    "the primary {primary}'s health stayed below {} for {} intervals (now {:.2})",
                    policy.switch_below, self.st.bad_count, h
                )
            };
            self.try_switch(at, trigger, cause, None, out);
        }
    }

    fn health_figures(&self, id: &str) -> Value {
        match self.st.instances.get(id) {
            Some(i) => json!({
                "instance": id,
                "health": i.health.map(round3),
                "up": i.up,
                "latency_ms": i.latency_ms,
                "baseline_ms": i.baseline_ms.map(round3),
                "error_rate": i.error_rate,
                "offset": i.offset,
                "lag_ms": i.lag_ms,
            }),
            None => Value::Null,
        }
    }

    fn update_target(&mut self, at: i64, out: &mut Output) {
        let w = score::weight(&self.spec, self.st.rps_smooth);
        self.st.weight = w;
        let h = self.st.health_smooth.unwrap_or(1.0);
        let raw = score::target_raw(&self.spec, w, h);
        self.st.target_raw = raw;
        let next = score::target_mirrors(self.st.target, raw, &self.spec.policy);
        let old = self.st.target;
        if next > old {
            self.st.target = next;
            self.st.shrink_since_ms = None;
        } else if next < old {
            let since = *self.st.shrink_since_ms.get_or_insert(at);
            let hold = self.spec.policy.failback_after.get().as_millis() as i64;
            if at - since >= hold {
                self.st.target = next;
                self.st.shrink_since_ms = None;
            }
        } else {
            self.st.shrink_since_ms = None;
        }
        if self.st.target != old {
            ev(
                out,
                at,
                "target_changed",
                format!(
                    "The replication factor goes from {old} to {} mirrors (weight {:.2}, primary health {:.2}, raw target {:.2}).",
                    self.st.target, w, h, raw
                ),
                json!({"from": old, "to": self.st.target, "weight": round3(w),
                       "health": round3(h), "target_raw": round3(raw),
                       "requests_per_s": self.st.rps_smooth.map(round3),
                       "hysteresis": self.spec.policy.hysteresis}),
                false,
            );
        }
        let mode = score::mode(&self.spec, w, self.st.mode);
        if mode != self.st.mode {
            ev(
                out,
                at,
                "mode_changed",
                format!(
                    "The mode goes from {:?} to {:?} (weight {:.2}, mirror cost {}).",
                    self.st.mode, mode, w, self.spec.mirror_cost
                ),
                json!({"from": self.st.mode, "to": mode, "weight": round3(w),
                       "mirror_cost": self.spec.mirror_cost}),
                false,
            );
            self.st.mode = mode;
        }
    }

    /// Lifecycle changes that follow from observations: mirrors catching up, a lost old
    /// primary answering again, a fenced one replicating.
    fn update_instances(&mut self, at: i64, out: &mut Output) {
        let policy = self.spec.policy.clone();
        let free = (score::LAG_FREE_INTERVALS * self.interval_ms() as f64) as i64;
        let has_offsets = self.has_offsets();
        let ids: Vec<String> = self.st.instances.keys().cloned().collect();
        let mut primaries = Vec::new();
        for id in ids {
            let i = &self.st.instances[&id];
            if i.obs_ms != Some(at) {
                continue;
            }
            // A former primary whose fence was confirmed (a PostgreSQL primary made read-only,
            // which cannot follow the new one without pg_rewind; a Redis primary refusing
            // writes) still calls itself primary but takes no writes: not a split brain. One
            // whose fence failed (`lost`) and answers again is one until it is fenced.
            let fenced = i.role == Role::Fenced && i.state == InstanceState::Fenced;
            if i.up == Some(true) && i.observed_role == Some(ObservedRole::Primary) && !fenced {
                primaries.push(id.clone());
            }
            match (i.role, i.state) {
                (Role::Mirror, InstanceState::Syncing) => {
                    let caught_up = !has_offsets || i.lag_ms.is_some_and(|l| l <= free);
                    if i.up == Some(true)
                        && caught_up
                        && i.health.is_some_and(|h| h >= policy.switch_below)
                    {
                        let figures = self.health_figures(&id);
                        let i = self.st.instances.get_mut(&id).expect("listed");
                        i.set(InstanceState::Ready, at);
                        ev(
                            out,
                            at,
                            "mirror_ready",
                            format!(
                                "The mirror {id} has caught up with the primary and is healthy."
                            ),
                            figures,
                            false,
                        );
                    }
                }
                (Role::Fenced, InstanceState::Fenced)
                    if i.up == Some(true) && i.observed_role == Some(ObservedRole::Replica) =>
                {
                    let i = self.st.instances.get_mut(&id).expect("listed");
                    i.role = Role::Mirror;
                    i.set(InstanceState::Syncing, at);
                    ev(
                        out,
                        at,
                        "fenced_replicates",
                        format!("The former primary {id} now replicates from the primary: it is a mirror again."),
                        json!({"instance": id}),
                        false,
                    );
                }
                (Role::Fenced, InstanceState::Lost)
                    if i.up == Some(true) && !self.pending_for("fence", &id) =>
                {
                    if let Some(b) = i.backend(&id) {
                        let new_primary = self.backend(&self.st.primary.clone());
                        ev(
                            out,
                            at,
                            "fence_again",
                            format!("The former primary {id}, which could not be fenced while it was down, answers again: fencing it now."),
                            json!({"instance": id}),
                            false,
                        );
                        self.dispatch(out, |action_id| Action::Fence {
                            action_id,
                            instance: b,
                            new_primary,
                        });
                        let i = self.st.instances.get_mut(&id).expect("listed");
                        i.set(InstanceState::Fencing, at);
                    }
                }
                _ => {}
            }
        }
        // A mirror down for DEAD_AFTER_INTERVALS is replaced, once the primary is up to make
        // its replacement from (while everything is down, nothing is retired).
        let dead_before = at - DEAD_AFTER_INTERVALS * self.interval_ms();
        let primary_up = self.st.instances[&self.st.primary].up == Some(true);
        if primary_up && self.st.phase == Phase::Running && self.st.switch.is_none() {
            let dead: Vec<String> = self
                .st
                .instances
                .iter()
                .filter(|(_, i)| {
                    i.provisioned
                        && i.role == Role::Mirror
                        && matches!(i.state, InstanceState::Syncing | InstanceState::Ready)
                        && i.down_since_ms.is_some_and(|d| d <= dead_before)
                })
                .map(|(id, _)| id.clone())
                .collect();
            for id in dead {
                let since = self.st.instances[&id].down_since_ms.unwrap_or(at);
                ev(
                    out,
                    at,
                    "mirror_dead",
                    format!(
                        "The mirror {id} has not answered for {} ms: it is retired and replaced.",
                        at - since
                    ),
                    json!({"instance": id, "down_ms": at - since}),
                    false,
                );
                let i = self.st.instances.get_mut(&id).expect("listed");
                i.set(InstanceState::Draining, at);
            }
        }
        if primaries.len() > 1 {
            if self.open("split_brain") {
                ev(
                    out,
                    at,
                    "split_brain",
                    format!(
                        "{} instances report themselves primary ({}); only {} is routed to.",
                        primaries.len(),
                        primaries.join(", "),
                        self.st.primary
                    ),
                    json!({"primaries": primaries, "routed": self.st.primary}),
                    true,
                );
            }
        } else {
            self.close("split_brain");
        }
    }

    // ---- switching ----------------------------------------------------------------------

    /// Mirrors that may be promoted, best first: caught up first, then healthiest by tenths
    /// of health, then furthest along, then healthiest. A mirror's health must be at least
    /// `min_health`.
    ///
    /// Health is compared in tenths before the offset (1.0 counts as 0.9…): two mirrors of
    /// health 0.99 and 0.98 are equally fit, and promoting the one that received less costs a
    /// wait (the IO side raises the target to the furthest position any other mirror holds,
    /// which the one behind can only reach from the one ahead) and, should it time out, the
    /// next candidate.
    fn candidates(&self, catch_up_to: Option<u64>, min_health: f64) -> Vec<String> {
        let free = (score::LAG_FREE_INTERVALS * self.interval_ms() as f64) as i64;
        let mut c: Vec<(bool, i64, u64, f64, String)> = self
            .st
            .instances
            .iter()
            .filter(|(id, i)| {
                **id != self.st.primary
                    && i.role == Role::Mirror
                    && i.state == InstanceState::Ready
                    && i.endpoint.is_some()
                    && i.up == Some(true)
                    && i.health.is_some_and(|h| h >= min_health)
                    && (!self.has_offsets() || i.offset.is_some())
            })
            .map(|(id, i)| {
                let caught = match (catch_up_to, i.offset) {
                    (Some(t), Some(o)) => o >= t || i.lag_ms.is_some_and(|l| l <= free),
                    _ => true,
                };
                let health = i.health.unwrap_or(0.0);
                (
                    caught,
                    ((health * 10.0).floor() as i64).min(9),
                    i.offset.unwrap_or(0),
                    health,
                    id.clone(),
                )
            })
            .collect();
        c.sort_by(|a, b| {
            b.0.cmp(&a.0)
                .then(b.1.cmp(&a.1))
                .then(b.2.cmp(&a.2))
                .then(b.3.total_cmp(&a.3))
                .then(a.4.cmp(&b.4))
        });
        c.into_iter().map(|x| x.4).collect()
    }

    fn try_switch(
        &mut self,
        at: i64,
        trigger: &str,
        cause: String,
        to: Option<String>,
        out: &mut Output,
    ) {
        let policy = self.spec.policy.clone();
        let gap = policy.min_switch_gap.get().as_millis() as i64;
        let from = self.st.primary.clone();
        if trigger == "unhealthy" || trigger == "failback" {
            if let Some(last) = self.st.last_switch_ms {
                if at - last < gap {
                    if trigger == "unhealthy" && self.open("switch_held") {
                        ev(
                            out,
                            at,
                            "switch_held",
                            format!(
                                "Not switching: {cause}, but the last switch was {} ms ago and min_switch_gap is {} (a primary that is down would be switched regardless).",
                                at - last,
                                policy.min_switch_gap
                            ),
                            json!({"since_last_switch_ms": at - last, "min_switch_gap_ms": gap}),
                            false,
                        );
                    }
                    return;
                }
            }
        }
        let catch_up_to = if self.has_offsets() {
            match self.st.newest_offset() {
                Some(o) => Some(o),
                None => {
                    if self.open("switch_held") {
                        ev(
                            out,
                            at,
                            "switch_held",
                            format!("Not switching: {cause}, but no replication offset of the primary was ever observed, so no mirror can be shown to have its writes."),
                            json!({"primary": from}),
                            true,
                        );
                    }
                    return;
                }
            }
        } else {
            None
        };
        // Away from a primary that is degraded but answers, only to a mirror that is healthy
        // by the failback standard: trading one slow instance for another (a loaded host
        // slows every instance on it) buys nothing and costs a failover. Away from a primary
        // that is down, or at an operator's word, any mirror above `switch_below` will do.
        let min_health = if trigger == "unhealthy" {
            policy.failback_above
        } else {
            policy.switch_below
        };
        let mut candidates = self.candidates(catch_up_to, min_health);
        if let Some(t) = &to {
            if !candidates.contains(t) {
                if trigger != "operator" {
                    return;
                }
                ev(
                    out,
                    at,
                    "failover_refused",
                    format!(
                        "{t:?} is not a ready, healthy mirror of {}; candidates: [{}].",
                        self.spec.name,
                        candidates.join(", ")
                    ),
                    json!({"to": t, "candidates": candidates}),
                    false,
                );
                return;
            }
            candidates = vec![t.clone()];
        }
        if candidates.is_empty() {
            if self.open("no_healthy_mirror") || trigger == "operator" {
                ev(
                    out,
                    at,
                    "no_healthy_mirror",
                    format!(
                        "{cause}, but no mirror is ready, caught up and healthy (health at least {min_health}): routing stays on {from}."
                    ),
                    json!({"primary": from, "trigger": trigger, "min_health": min_health,
                           "mirrors": self.st.instances.iter()
                               .filter(|(id, _)| **id != from)
                               .map(|(id, _)| self.health_figures(id))
                               .collect::<Vec<_>>()}),
                    true,
                );
            }
            return;
        }
        let p = &self.st.instances[&from];
        let alive = p.up == Some(true) && trigger != "down";
        let figures = json!({
            "trigger": trigger,
            "primary": self.health_figures(&from),
            "bad_intervals": self.st.bad_count,
            "candidates": candidates.iter().map(|c| self.health_figures(c)).collect::<Vec<_>>(),
            "catch_up_to": catch_up_to,
        });
        ev(
            out,
            at,
            "switch_started",
            format!(
                "Switching away from {from}: {cause}. Candidates in order: {}.",
                candidates.join(", ")
            ),
            figures.clone(),
            false,
        );
        let mut sw = Switch {
            trigger: trigger.to_string(),
            cause,
            from: from.clone(),
            to: None,
            step: Step::Fencing,
            decided_ms: at,
            first_bad_ms: self.st.first_bad_ms,
            last_good_ms: self.st.last_good_ms,
            candidates: candidates.into(),
            tried: Vec::new(),
            catch_up_to,
            fenced_first: alive,
            route_attempts: 0,
            figures,
        };
        if alive {
            let b = self.backend(&from).expect("the primary has an endpoint");
            self.dispatch(out, |action_id| Action::Fence {
                action_id,
                instance: b,
                new_primary: None,
            });
            self.st.switch = Some(sw);
        } else {
            sw.step = Step::Promoting;
            self.st.switch = Some(sw);
            self.promote_next(at, out);
        }
    }

    /// Promotes the next candidate, or ends the switch as failed.
    fn promote_next(&mut self, at: i64, out: &mut Output) {
        let timeout_ms = self.spec.policy.catch_up_timeout.get().as_millis() as u64;
        let Some(mut sw) = self.st.switch.take() else {
            return;
        };
        let old = self.backend(&sw.from).expect("the primary has an endpoint");
        while let Some(c) = sw.candidates.pop_front() {
            let Some(b) = self.backend(&c) else { continue };
            sw.step = Step::Promoting;
            sw.to = Some(c.clone());
            let catch_up_to = sw.catch_up_to;
            self.dispatch(out, |action_id| Action::Promote {
                action_id,
                instance: b,
                catch_up_to,
                timeout_ms,
                old_primary: old,
            });
            if let Some(i) = self.st.instances.get_mut(&c) {
                i.set(InstanceState::Promoting, at);
            }
            self.st.switch = Some(sw);
            return;
        }
        // Every candidate failed.
        let reason = format!(
            "Switching away from {} failed: no mirror could be promoted ({} tried). Automatic decisions are paused; routing stays on {}.",
            sw.from,
            sw.tried.len(),
            sw.from
        );
        ev(
            out,
            at,
            "switch_failed",
            reason.clone(),
            json!({"from": sw.from, "tried": sw.tried, "cause": sw.cause}),
            true,
        );
        // The IO side may have held the proxy's commands for the switch: the route to the
        // primary that stays is sent again once the switch is over.
        self.st.routed = None;
        if sw.fenced_first {
            sw.step = Step::Unfencing;
            sw.to = None;
            self.dispatch(out, |action_id| Action::Unfence {
                action_id,
                instance: old,
            });
            self.st.switch = Some(sw);
        } else {
            self.pause(at, reason, out);
        }
    }

    fn pause(&mut self, at: i64, reason: String, out: &mut Output) {
        self.st.phase = Phase::Paused;
        self.st.pause_reason = Some(reason.clone());
        ev(out, at, "paused", reason, Value::Null, false);
    }

    fn finish_switch(&mut self, sw: Switch, at: i64, out: &mut Output) {
        let to = sw.to.clone().unwrap_or_default();
        let detect_ms = sw.first_bad_ms.map(|f| sw.decided_ms - f);
        let figures = json!({
            "detect_ms": detect_ms,
            "switch_ms": at - sw.decided_ms,
            "since_last_good_ms": sw.last_good_ms.map(|g| at - g),
            "catch_up_to": sw.catch_up_to,
            "tried": sw.tried,
            "fenced_first": sw.fenced_first,
            "at_decision": sw.figures,
        });
        let rec = SwitchRecord {
            at_ms: sw.decided_ms,
            routed_ms: at,
            from: sw.from.clone(),
            to: to.clone(),
            trigger: sw.trigger.clone(),
            cause: sw.cause.clone(),
            figures: figures.clone(),
        };
        ev(
            out,
            at,
            "switched",
            match detect_ms {
                Some(d) => format!(
                    "{} → {}: {} (decided {d} ms after the first bad check, routed {} ms later).",
                    sw.from,
                    to,
                    sw.cause,
                    at - sw.decided_ms
                ),
                // No bad check came before it (an operator's failover, say): only the routing
                // time is known.
                None => format!(
                    "{} → {}: {} (routed {} ms after the decision).",
                    sw.from,
                    to,
                    sw.cause,
                    at - sw.decided_ms
                ),
            },
            serde_json::to_value(&rec).unwrap_or(Value::Null),
            false,
        );
        self.st.history.push(rec);
        if self.st.history.len() > MAX_HISTORY {
            self.st.history.remove(0);
        }
        self.st.last_switch_ms = Some(at);
        self.st.bad_count = 0;
        self.st.first_bad_ms = None;
        self.st.last_good_ms = None;
        self.st.health_smooth = None;
        self.st.offsets.clear();
        for k in ["switch_held", "no_healthy_mirror", "primary_unhealthy"] {
            self.close(k);
        }
        // Fence (again) the old primary, now that the new one is known: it replicates from it
        // (Redis) or stays stopped (PostgreSQL). When it was down this is the first fence.
        let new_primary = self.backend(&to);
        if let Some(b) = self.backend(&sw.from) {
            self.dispatch(out, |action_id| Action::Fence {
                action_id,
                instance: b,
                new_primary,
            });
        }
        if let Some(i) = self.st.instances.get_mut(&sw.from) {
            i.role = Role::Fenced;
            i.healthy_since_ms = None;
            i.set(InstanceState::Fencing, at);
        }
        // The other mirrors replicated from the old primary: point them at the new one (a
        // fence of a replica with `new_primary` is a repoint). One that cannot follow is
        // retired and replaced.
        let others: Vec<String> = self
            .st
            .instances
            .iter()
            .filter(|(id, i)| {
                **id != to
                    && **id != sw.from
                    && i.role == Role::Mirror
                    && matches!(i.state, InstanceState::Syncing | InstanceState::Ready)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in others {
            let (Some(b), Some(np)) = (self.backend(&id), self.backend(&to)) else {
                continue;
            };
            self.dispatch(out, |action_id| Action::Fence {
                action_id,
                instance: b,
                new_primary: Some(np),
            });
            if let Some(i) = self.st.instances.get_mut(&id) {
                i.set(InstanceState::Fencing, at);
            }
        }
    }

    // ---- action results -----------------------------------------------------------------

    fn on_done(
        &mut self,
        action_id: u64,
        ok: bool,
        output: Value,
        error: Option<String>,
        now: i64,
        out: &mut Output,
    ) {
        let Some(action) = self.st.pending.remove(&action_id) else {
            ev(
                out,
                now,
                "unknown_action",
                format!("A result for action {action_id}, which is not pending, is ignored."),
                json!({"action_id": action_id}),
                false,
            );
            return;
        };
        let err = error.unwrap_or_else(|| "no error given".into());
        match action {
            Action::Provision { instance, .. } => {
                self.provision_done(&instance, ok, output, err, now, out)
            }
            Action::Retire { instance, .. } => {
                let id = instance.instance;
                let retry = now + 10 * self.interval_ms();
                let Some(i) = self.st.instances.get_mut(&id) else {
                    return;
                };
                if ok {
                    i.set(InstanceState::Retired, now);
                    i.endpoint = None;
                    ev(
                        out,
                        now,
                        "retired",
                        format!("The mirror {id} ({}) was retired.", instance.endpoint),
                        json!({"instance": id, "endpoint": instance.endpoint, "output": output}),
                        false,
                    );
                } else {
                    i.set(InstanceState::Draining, now);
                    i.retry_at_ms = Some(retry);
                    ev(
                        out,
                        now,
                        "retire_failed",
                        format!("Retiring the mirror {id} failed: {err}; it is retried."),
                        json!({"instance": id, "error": err}),
                        false,
                    );
                }
            }
            Action::Fence {
                instance,
                new_primary,
                ..
            } => self.fence_done(&instance, new_primary.is_none(), ok, output, err, now, out),
            Action::Promote { instance, .. } => {
                self.promote_done(&instance, ok, output, err, now, out)
            }
            Action::Unfence { instance, .. } => {
                let reason = if ok {
                    format!(
                        "The fence of {} was undone: it serves again.",
                        instance.instance
                    )
                } else {
                    format!(
                        "Undoing the fence of {} failed: {err}. It may refuse writes.",
                        instance.instance
                    )
                };
                ev(
                    out,
                    now,
                    if ok { "unfenced" } else { "unfence_failed" },
                    reason,
                    json!({"instance": instance.instance, "error": (!ok).then_some(&err)}),
                    !ok,
                );
                if let Some(sw) = self.st.switch.take() {
                    let why = format!(
                        "switching away from {} failed on every mirror ({})",
                        sw.from, sw.cause
                    );
                    self.pause(now, why, out);
                }
            }
            Action::Route {
                primary, readers, ..
            } => self.route_done(primary, readers, ok, err, now, out),
        }
    }

    fn provision_done(
        &mut self,
        id: &str,
        ok: bool,
        output: Value,
        err: String,
        now: i64,
        out: &mut Output,
    ) {
        let endpoint = output
            .get("endpoint")
            .and_then(|e| e.as_str())
            .map(str::to_string);
        let bad_endpoint = match &endpoint {
            Some(e) => check_endpoint(e).err().map(|x| x.to_string()),
            None => Some("the provisioner gave no endpoint".into()),
        };
        if ok && bad_endpoint.is_none() {
            let i = self.st.instances.get_mut(id).expect("provisioned instance");
            i.endpoint = endpoint.clone();
            i.detail = output.clone();
            let removing = self.st.phase == Phase::Removing;
            i.set(
                if removing {
                    InstanceState::Draining
                } else {
                    InstanceState::Syncing
                },
                now,
            );
            self.st.provision_failures = 0;
            self.st.provision_retry_at_ms = None;
            ev(
                out,
                now,
                "provisioned",
                format!(
                    "The mirror {id} was provisioned at {}; it is routed to only once it has caught up.",
                    endpoint.unwrap_or_default()
                ),
                json!({"instance": id, "output": output}),
                false,
            );
            return;
        }
        let err = if ok {
            bad_endpoint.unwrap_or_default()
        } else {
            err
        };
        if let Some(i) = self.st.instances.get_mut(id) {
            i.set(InstanceState::Failed, now);
            i.detail = output.clone();
            i.endpoint = None;
        }
        self.st.provision_failures += 1;
        let n = self.st.provision_failures;
        let backoff = (self.interval_ms() << n.min(20)).min(MAX_PROVISION_BACKOFF_MS);
        self.st.provision_retry_at_ms = Some(now + backoff);
        let permanent = output.get("permanent").and_then(|p| p.as_bool()) == Some(true);
        ev(
            out,
            now,
            "provision_failed",
            format!("Provisioning the mirror {id} failed: {err}. It is never routed to."),
            json!({"instance": id, "error": err, "failures_in_a_row": n,
                   "retry_in_ms": (!permanent).then_some(backoff), "output": output}),
            false,
        );
        if permanent || n >= MAX_PROVISION_FAILURES {
            let why = if permanent {
                format!("the provisioner says it cannot be done: {err}")
            } else {
                format!("{n} provisionings in a row failed, the last with: {err}")
            };
            self.block_provisioning(now, why, out);
        }
    }

    fn block_provisioning(&mut self, now: i64, why: String, out: &mut Output) {
        ev(
            out,
            now,
            "provision_impossible",
            format!(
                "Mirrors of {} cannot be provisioned: {why}. It keeps {} of {} mirrors until the policy changes or the engine is resumed.",
                self.spec.name,
                self.live_mirrors(),
                self.st.target
            ),
            json!({"reason": why, "target_mirrors": self.st.target,
                   "mirrors": self.live_mirrors()}),
            true,
        );
        self.st.provision_blocked = Some(why);
    }

    #[allow(clippy::too_many_arguments)]
    fn fence_done(
        &mut self,
        instance: &Backend,
        first: bool,
        ok: bool,
        output: Value,
        err: String,
        now: i64,
        out: &mut Output,
    ) {
        let id = instance.instance.clone();
        let final_offset = output.get("offset").and_then(|o| o.as_u64());
        let in_switch = self
            .st
            .switch
            .as_ref()
            .is_some_and(|s| s.step == Step::Fencing && s.from == id);
        if first && in_switch {
            let mut sw = self.st.switch.take().expect("checked");
            if ok {
                if let Some(o) = final_offset {
                    sw.catch_up_to = Some(sw.catch_up_to.map_or(o, |c| c.max(o)));
                }
                ev(
                    out,
                    now,
                    "fenced",
                    format!(
                        "The old primary {id} takes no more writes; its last offset is {}.",
                        final_offset.map_or("unknown".into(), |o| o.to_string())
                    ),
                    json!({"instance": id, "offset": final_offset, "catch_up_to": sw.catch_up_to}),
                    false,
                );
            } else {
                sw.fenced_first = false;
                ev(
                    out,
                    now,
                    "fence_failed",
                    format!("Fencing the old primary {id} before the promotion failed: {err}. Promoting anyway (the proxy stops sending it writes); writes it takes from elsewhere are not carried over."),
                    json!({"instance": id, "error": err}),
                    true,
                );
            }
            self.st.switch = Some(sw);
            self.promote_next(now, out);
            return;
        }
        let Some(i) = self.st.instances.get_mut(&id) else {
            return;
        };
        if i.role == Role::Mirror {
            // A repoint of a mirror after a switch.
            let mirror = ok && output.get("mirror").and_then(|m| m.as_bool()) == Some(true);
            if mirror {
                i.set(InstanceState::Syncing, now);
                ev(
                    out,
                    now,
                    "repointed",
                    format!("The mirror {id} now replicates from the new primary."),
                    json!({"instance": id, "output": output}),
                    false,
                );
            } else {
                let provisioned = i.provisioned;
                if provisioned {
                    i.set(InstanceState::Draining, now);
                } else {
                    i.role = Role::Fenced;
                    i.set(InstanceState::Fenced, now);
                }
                ev(
                    out,
                    now,
                    "repoint_failed",
                    format!(
                        "The mirror {id} cannot replicate from the new primary ({}); {}.",
                        if ok {
                            "the driver cannot repoint it".to_string()
                        } else {
                            err
                        },
                        if provisioned {
                            "it is retired and replaced"
                        } else {
                            "it is left fenced"
                        }
                    ),
                    json!({"instance": id, "output": output}),
                    false,
                );
            }
            return;
        }
        if ok {
            let mirror = output.get("mirror").and_then(|m| m.as_bool()) == Some(true);
            if mirror {
                i.role = Role::Mirror;
                i.set(InstanceState::Syncing, now);
            } else {
                i.role = Role::Fenced;
                i.set(InstanceState::Fenced, now);
            }
            ev(
                out,
                now,
                "fenced",
                if mirror {
                    format!("The former primary {id} is fenced and replicates from the new primary: a mirror again.")
                } else {
                    format!("The former primary {id} is fenced.")
                },
                json!({"instance": id, "mirror": mirror, "output": output}),
                false,
            );
        } else {
            i.role = Role::Fenced;
            i.set(InstanceState::Lost, now);
            ev(
                out,
                now,
                "fence_failed",
                format!("Fencing the former primary {id} failed: {err}. It is fenced again as soon as it answers; the proxy sends it nothing."),
                json!({"instance": id, "error": err}),
                false,
            );
        }
    }

    fn promote_done(
        &mut self,
        instance: &Backend,
        ok: bool,
        output: Value,
        err: String,
        now: i64,
        out: &mut Output,
    ) {
        let id = instance.instance.clone();
        let Some(mut sw) = self.st.switch.take() else {
            return;
        };
        if ok {
            ev(
                out,
                now,
                "promoted",
                format!(
                    "The mirror {id} was promoted after reaching offset {}.",
                    sw.catch_up_to.map_or("(none)".into(), |o| o.to_string())
                ),
                json!({"instance": id, "catch_up_to": sw.catch_up_to, "output": output}),
                false,
            );
            let old = sw.from.clone();
            if let Some(i) = self.st.instances.get_mut(&id) {
                i.role = Role::Primary;
                i.lag_ms = None;
                i.set(InstanceState::Serving, now);
            }
            self.st.primary = id.clone();
            sw.step = Step::Routing;
            sw.route_attempts = 1;
            let primary = instance.clone();
            let readers = self.desired_readers(&[old.as_str(), id.as_str()]);
            self.st.switch = Some(sw);
            self.dispatch(out, |action_id| Action::Route {
                action_id,
                primary,
                readers,
            });
        } else {
            sw.tried
                .push(json!({"instance": id, "error": err, "output": output}));
            if let Some(i) = self.st.instances.get_mut(&id) {
                i.set(InstanceState::Ready, now);
            }
            ev(
                out,
                now,
                "promote_failed",
                format!("Promoting the mirror {id} failed: {err}. Trying the next mirror, if any."),
                json!({"instance": id, "error": err, "catch_up_to": sw.catch_up_to,
                       "left": sw.candidates}),
                false,
            );
            self.st.switch = Some(sw);
            self.promote_next(now, out);
        }
    }

    fn route_done(
        &mut self,
        primary: Backend,
        readers: Vec<Backend>,
        ok: bool,
        err: String,
        now: i64,
        out: &mut Output,
    ) {
        let routing = self
            .st
            .switch
            .as_ref()
            .is_some_and(|s| s.step == Step::Routing);
        if ok {
            self.st.routed = Some((
                primary.instance.clone(),
                readers.iter().map(|b| b.instance.clone()).collect(),
            ));
            self.st.route_retry_at_ms = None;
            ev(
                out,
                now,
                "routed",
                format!(
                    "The proxy routes writes to {} ({}){}.",
                    primary.instance,
                    primary.endpoint,
                    if readers.is_empty() {
                        String::new()
                    } else {
                        format!(
                            " and reads also to {}",
                            readers
                                .iter()
                                .map(|r| r.instance.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    }
                ),
                json!({"primary": primary, "readers": readers}),
                false,
            );
            if routing {
                let sw = self.st.switch.take().expect("checked");
                self.finish_switch(sw, now, out);
            }
            return;
        }
        if routing {
            let mut sw = self.st.switch.take().expect("checked");
            if sw.route_attempts < MAX_ROUTE_ATTEMPTS {
                sw.route_attempts += 1;
                ev(
                    out,
                    now,
                    "route_failed",
                    format!(
                        "Routing to the new primary {} failed: {err}; retrying (attempt {}).",
                        primary.instance, sw.route_attempts
                    ),
                    json!({"primary": primary, "error": err, "attempt": sw.route_attempts}),
                    false,
                );
                self.st.switch = Some(sw);
                self.dispatch(out, |action_id| Action::Route {
                    action_id,
                    primary,
                    readers,
                });
            } else {
                let reason = format!(
                    "{} was promoted, but the proxy could not be routed to it after {} attempts ({err}); the proxy may still send writes to {}. Paused: route it by hand.",
                    primary.instance, sw.route_attempts, sw.from
                );
                ev(
                    out,
                    now,
                    "route_failed",
                    reason.clone(),
                    json!({"primary": primary, "error": err, "from": sw.from}),
                    true,
                );
                self.pause(now, reason, out);
            }
            return;
        }
        self.st.route_retry_at_ms = Some(now + self.interval_ms());
        ev(
            out,
            now,
            "route_failed",
            format!("Routing the proxy failed: {err}; retried next interval."),
            json!({"primary": primary, "readers": readers, "error": err}),
            false,
        );
    }

    // ---- commands -----------------------------------------------------------------------

    fn on_command(&mut self, c: Command, now: i64, out: &mut Output) {
        match c {
            Command::SetPolicy { policy } => {
                let mut spec = self.spec.clone();
                spec.policy = policy;
                match spec.validate() {
                    Ok(()) => {
                        ev(
                            out,
                            now,
                            "policy_set",
                            "The policy was replaced.".into(),
                            json!({"from": self.spec.policy, "to": spec.policy}),
                            false,
                        );
                        self.spec = spec;
                        self.st.provision_blocked = None;
                        self.st.provision_failures = 0;
                        self.st.provision_retry_at_ms = None;
                        // The new bounds apply at once.
                        let p = &self.spec.policy;
                        self.st.target = self.st.target.clamp(p.min_mirrors, p.max_mirrors);
                        self.update_target(now, out);
                    }
                    Err(e) => ev(
                        out,
                        now,
                        "policy_refused",
                        format!("The policy was refused: {e}."),
                        json!({"error": e.to_string()}),
                        false,
                    ),
                }
            }
            Command::Failover { to, reason } => {
                if matches!(self.st.phase, Phase::Removing) {
                    ev(
                        out,
                        now,
                        "failover_refused",
                        "The dependency is being removed.".into(),
                        Value::Null,
                        false,
                    );
                } else if self.st.switch.is_some() {
                    ev(
                        out,
                        now,
                        "failover_refused",
                        "A switch is already in progress.".into(),
                        Value::Null,
                        false,
                    );
                } else {
                    let cause = format!("the operator asked: {reason}");
                    self.try_switch(now, "operator", cause, to, out);
                }
            }
            Command::Pause { reason } => {
                if self.st.phase == Phase::Running {
                    self.pause(now, format!("the operator paused it: {reason}"), out);
                }
            }
            Command::Resume { reason } => {
                if self.st.phase == Phase::Paused {
                    self.st.phase = Phase::Running;
                    self.st.pause_reason = None;
                    self.st.provision_blocked = None;
                    self.st.provision_failures = 0;
                    self.st.provision_retry_at_ms = None;
                    self.st.open.clear();
                    ev(
                        out,
                        now,
                        "resumed",
                        format!("Resumed: {reason}."),
                        Value::Null,
                        false,
                    );
                }
            }
            Command::Remove { reason } => {
                self.st.phase = Phase::Removing;
                ev(
                    out,
                    now,
                    "removing",
                    format!("Removing {}: {reason}. Routing goes to the primary only; the mirrors Bellwether made are retired once their sessions end.", self.spec.name),
                    Value::Null,
                    false,
                );
                let primary = self.st.primary.clone();
                for (id, i) in self.st.instances.iter_mut() {
                    if *id != primary
                        && i.provisioned
                        && matches!(i.state, InstanceState::Syncing | InstanceState::Ready)
                    {
                        i.set(InstanceState::Draining, now);
                    }
                }
            }
        }
    }

    // ---- the steady state ---------------------------------------------------------------

    /// Mirrors that count toward the replication factor: live, and not down for
    /// [`DEAD_AFTER_INTERVALS`] (a dead mirror Bellwether did not make is not retired, but a
    /// replacement is made beside it).
    fn live_mirrors(&self) -> u32 {
        let Some(last) = self.st.last_obs_ms else {
            return self
                .st
                .instances
                .values()
                .filter(|i| i.live_mirror())
                .count() as u32;
        };
        let dead_before = last - DEAD_AFTER_INTERVALS * self.interval_ms();
        self.st
            .instances
            .values()
            .filter(|i| i.live_mirror() && i.down_since_ms.is_none_or(|d| d > dead_before))
            .count() as u32
    }

    /// Ready mirrors fit to serve reads (active-active): healthy at `failback_above` to join,
    /// kept while at `switch_below` or above (a dead band, so readers do not flap).
    fn desired_readers(&self, except: &[&str]) -> Vec<Backend> {
        if self.st.mode != Mode::ActiveActive || self.st.phase == Phase::Removing {
            return Vec::new();
        }
        let p = &self.spec.policy;
        let current: Vec<String> = self
            .st
            .routed
            .as_ref()
            .map(|r| r.1.clone())
            .unwrap_or_default();
        self.st
            .instances
            .iter()
            .filter(|(id, i)| {
                !except.contains(&id.as_str())
                    && **id != self.st.primary
                    && i.role == Role::Mirror
                    && i.state == InstanceState::Ready
                    && i.up == Some(true)
                    && i.health.is_some_and(|h| {
                        if current.contains(id) {
                            h >= p.switch_below
                        } else {
                            h >= p.failback_above
                        }
                    })
            })
            .filter_map(|(id, i)| i.backend(id))
            .collect()
    }

    fn route_if_needed(&mut self, now: i64, out: &mut Output) {
        if self.st.switch.is_some() || self.pending_kind("route") {
            return;
        }
        if self.st.route_retry_at_ms.is_some_and(|t| now < t) {
            return;
        }
        let Some(primary) = self.backend(&self.st.primary.clone()) else {
            return;
        };
        let readers = self.desired_readers(&[]);
        let want = (
            primary.instance.clone(),
            readers
                .iter()
                .map(|b| b.instance.clone())
                .collect::<Vec<_>>(),
        );
        if self.st.routed.as_ref() == Some(&want) {
            return;
        }
        self.dispatch(out, |action_id| Action::Route {
            action_id,
            primary,
            readers,
        });
    }

    fn drive(&mut self, now: i64, out: &mut Output) {
        if self.st.phase == Phase::Removed {
            return;
        }
        if self.st.phase == Phase::Running && self.st.switch.is_none() {
            self.maybe_failback(now, out);
        }
        self.route_if_needed(now, out);
        if self.st.switch.is_some() {
            return;
        }
        match self.st.phase {
            Phase::Running => {
                self.maybe_provision(now, out);
                self.maybe_shrink(now);
                self.retire_drained(now, out);
            }
            Phase::Removing => {
                self.retire_drained(now, out);
                let busy = self.st.instances.iter().any(|(id, i)| {
                    *id != self.st.primary
                        && i.provisioned
                        && matches!(
                            i.state,
                            InstanceState::Draining
                                | InstanceState::Retiring
                                | InstanceState::Provisioning
                        )
                });
                if !busy && self.st.pending.is_empty() {
                    self.st.phase = Phase::Removed;
                    let kept: Vec<&String> = self
                        .st
                        .instances
                        .iter()
                        .filter(|(id, i)| {
                            **id == self.st.primary
                                || !matches!(
                                    i.state,
                                    InstanceState::Retired | InstanceState::Failed
                                )
                        })
                        .map(|(id, _)| id)
                        .collect();
                    ev(
                        out,
                        now,
                        "removed",
                        format!(
                            "{} is no longer mirrored; left running: {}.",
                            self.spec.name,
                            kept.iter()
                                .map(|s| s.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                        json!({"kept": kept, "primary": self.st.primary}),
                        false,
                    );
                }
            }
            Phase::Paused | Phase::Removed => {}
        }
    }

    fn maybe_failback(&mut self, now: i64, out: &mut Output) {
        let home = PRIMARY_ID;
        if self.st.primary == home {
            return;
        }
        let Some(h) = self.st.instances.get(home) else {
            return;
        };
        let hold = self.spec.policy.failback_after.get().as_millis() as i64;
        if h.role == Role::Mirror
            && h.state == InstanceState::Ready
            && h.up == Some(true)
            && h.healthy_since_ms.is_some_and(|s| now - s >= hold)
        {
            let since = h.healthy_since_ms.unwrap_or(now);
            let cause = format!(
                "the original primary {home} has been a caught-up mirror with health ≥ {} for {} ms",
                self.spec.policy.failback_above,
                now - since
            );
            self.st.first_bad_ms = None;
            self.st.last_good_ms = None;
            self.try_switch(now, "failback", cause, Some(home.to_string()), out);
        }
    }

    fn maybe_provision(&mut self, now: i64, out: &mut Output) {
        if !self.st.primary_seen || self.pending_kind("provision") {
            return;
        }
        if self.live_mirrors() >= self.st.target || self.st.provision_blocked.is_some() {
            return;
        }
        if self.spec.kind == DepKind::Tcp {
            self.block_provisioning(
                now,
                "a tcp dependency has no replication Bellwether can set up; its mirrors are made by the operator".into(),
                out,
            );
            return;
        }
        if self.st.provision_retry_at_ms.is_some_and(|t| now < t) {
            return;
        }
        let Some(of) = self.backend(&self.st.primary.clone()) else {
            return;
        };
        if self.st.instances[&self.st.primary].up != Some(true) {
            return;
        }
        let id = loop {
            let id = format!("{}-m{}", self.spec.name, self.st.next_mirror);
            self.st.next_mirror += 1;
            if !self.st.instances.contains_key(&id) {
                break id;
            }
        };
        let mut inst = Inst::new(Role::Mirror, InstanceState::Provisioning, None, now);
        inst.provisioned = true;
        self.st.instances.insert(id.clone(), inst);
        ev(
            out,
            now,
            "provision_requested",
            format!(
                "Provisioning the mirror {id} of {} ({} of {} mirrors, weight {:.2}).",
                of.instance,
                self.live_mirrors(),
                self.st.target,
                self.st.weight
            ),
            json!({"instance": id, "of": of, "target_mirrors": self.st.target,
                   "weight": round3(self.st.weight)}),
            false,
        );
        self.dispatch(out, |action_id| Action::Provision {
            action_id,
            instance: id,
            of,
        });
    }

    /// Picks the mirrors to retire when there are more than the target: provisioned ones only,
    /// those still syncing first, then the least healthy, then the newest. They are taken out
    /// of the readers first (draining) and retired once the proxy holds no session on them.
    fn maybe_shrink(&mut self, now: i64) {
        let live = self.live_mirrors();
        if live <= self.st.target {
            return;
        }
        let excess = (live - self.st.target) as usize;
        let mut c: Vec<(u8, f64, i64, String)> = self
            .st
            .instances
            .iter()
            .filter(|(id, i)| {
                i.provisioned
                    && **id != self.st.primary
                    && i.role == Role::Mirror
                    && matches!(i.state, InstanceState::Syncing | InstanceState::Ready)
            })
            .map(|(id, i)| {
                (
                    u8::from(i.state == InstanceState::Ready),
                    i.health.unwrap_or(0.0),
                    -i.since_ms,
                    id.clone(),
                )
            })
            .collect();
        c.sort_by(|a, b| {
            a.0.cmp(&b.0)
                .then(a.1.total_cmp(&b.1))
                .then(a.2.cmp(&b.2))
                .then(a.3.cmp(&b.3))
        });
        for (_, _, _, id) in c.into_iter().take(excess) {
            if let Some(i) = self.st.instances.get_mut(&id) {
                i.set(InstanceState::Draining, now);
            }
        }
    }

    /// Retires draining mirrors the proxy no longer routes to and holds no session on (seen in
    /// an observation taken after the drain began: never on no data).
    fn retire_drained(&mut self, now: i64, out: &mut Output) {
        let routed: Vec<String> = self
            .st
            .routed
            .as_ref()
            .map(|r| r.1.clone())
            .unwrap_or_default();
        let ids: Vec<String> = self
            .st
            .instances
            .iter()
            .filter(|(id, i)| {
                i.state == InstanceState::Draining
                    && !routed.contains(id)
                    && i.retry_at_ms.is_none_or(|t| now >= t)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            let i = &self.st.instances[&id];
            let Some(b) = i.backend(&id) else {
                let i = self.st.instances.get_mut(&id).expect("listed");
                i.set(InstanceState::Retired, now);
                continue;
            };
            let idle = i.sessions == Some(0) && i.obs_ms.is_some_and(|t| t >= i.since_ms);
            let sessions = i.sessions;
            if !idle || self.pending_for("retire", &id) {
                if !idle && self.open(&format!("draining:{id}")) {
                    ev(
                        out,
                        now,
                        "retire_waiting",
                        format!(
                            "The mirror {id} is to be retired; it waits until the proxy holds no session on it (now {}).",
                            sessions.map_or("unknown".into(), |s| s.to_string())
                        ),
                        json!({"instance": id, "sessions": sessions}),
                        false,
                    );
                }
                continue;
            }
            self.close(&format!("draining:{id}"));
            ev(
                out,
                now,
                "retire_requested",
                format!(
                    "Retiring the mirror {id}: {} mirrors for a target of {}.",
                    self.live_mirrors() + 1,
                    self.st.target
                ),
                json!({"instance": id, "target_mirrors": self.st.target,
                       "weight": round3(self.st.weight), "target_raw": round3(self.st.target_raw)}),
                false,
            );
            let i = self.st.instances.get_mut(&id).expect("listed");
            i.set(InstanceState::Retiring, now);
            i.retry_at_ms = None;
            self.dispatch(out, |action_id| Action::Retire {
                action_id,
                instance: b,
            });
        }
    }

    pub(super) fn status_view(&self) -> Status {
        Status {
            name: self.spec.name.clone(),
            phase: self.st.phase,
            pause_reason: self.st.pause_reason.clone(),
            provision_blocked: self.st.provision_blocked.clone(),
            weight: round3(self.st.weight),
            health: self
                .st
                .instances
                .get(&self.st.primary)
                .and_then(|i| i.health)
                .map(round3),
            target_mirrors: self.st.target,
            target_raw: round3(self.st.target_raw),
            mode: self.st.mode,
            primary: self.st.primary.clone(),
            instances: self
                .st
                .instances
                .iter()
                .map(|(id, i)| InstanceStatus {
                    id: id.clone(),
                    endpoint: i.endpoint.clone(),
                    role: i.role,
                    state: i.state,
                    health: i.health.map(round3),
                    offset: i.offset,
                    lag_ms: i.lag_ms,
                    sessions: i.sessions,
                    provisioned: i.provisioned,
                    since_ms: i.since_ms,
                })
                .collect(),
            switching: self.st.switch.as_ref().map(|s| {
                format!(
                    "{:?} ({} → {})",
                    s.step,
                    s.from,
                    s.to.as_deref().unwrap_or("?")
                )
                .to_lowercase()
            }),
            history: self.st.history.clone(),
        }
    }
}
