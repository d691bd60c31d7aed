//! The engine driven by a simulated clock and a simulated world: instances whose offsets move
//! with writes, that replicate, fail, freeze and slow down, and that answer the engine's actions
//! the way the IO side does (a promotion waits for `catch_up_to` and fails when the mirror
//! cannot reach it).

use std::collections::{BTreeMap, BTreeSet};

use bellwether_model::mirror::{DepKind, DependencySpec, MirrorPolicy, ModeSetting, Tier};
use bellwether_model::Dur;
use serde_json::{json, Value};

use super::score::{self, HealthInputs};
use super::*;

const INTERVAL: i64 = 250;

/// A critical dependency (JSON, so that fields added to the record with defaults do not break
/// the tests).
fn spec(kind: DepKind) -> DependencySpec {
    let mut s: DependencySpec = serde_json::from_value(json!({
        "name": "cache", "kind": kind, "primary": "127.0.0.1:6379", "tier": "critical",
        "impact": 0.9, "mirror_cost": 0.1,
        "policy": {"min_mirrors": 1, "max_mirrors": 3, "mode": "active-passive"}
    }))
    .unwrap();
    s.validate().unwrap();
    s.policy.mode = ModeSetting::ActivePassive;
    s
}

#[derive(Debug, Clone)]
struct WInst {
    up: bool,
    latency: f64,
    error_rate: f64,
    offset: u64,
    /// Follows the primary's offset while up.
    replicating: bool,
    sessions: u32,
    rps: f64,
    role: ObservedRole,
    /// Writes are refused (fenced).
    paused: bool,
}

impl WInst {
    fn new(role: ObservedRole, offset: u64) -> WInst {
        WInst {
            up: true,
            latency: 0.5,
            error_rate: 0.0,
            offset,
            replicating: role == ObservedRole::Replica,
            sessions: 0,
            rps: 0.0,
            role,
            paused: false,
        }
    }
}

/// The world the engine looks at, and the IO side that carries out its actions.
struct Sim {
    e: MirrorEngine,
    now: i64,
    w: BTreeMap<String, WInst>,
    /// Who really takes writes.
    writer: String,
    writes_per_tick: u64,
    /// The last acknowledged write's offset.
    acked: u64,
    routed: Option<(String, Vec<String>)>,
    queue: Vec<Action>,
    /// Actions the test answers itself (not auto-answered).
    hold: BTreeSet<&'static str>,
    events: Vec<Event>,
    actions: Vec<Action>,
    provision_fails: Option<bool>,
    promote_fails: BTreeSet<String>,
    route_fails: u32,
    /// A fence with a new primary makes the instance replicate from it (Redis `REPLICAOF`);
    /// false is PostgreSQL's local driver (read-only, no repoint).
    fence_repoints: bool,
    /// Instances left out of the observations (no data).
    hidden: BTreeSet<String>,
    rps: f64,
}

impl Sim {
    fn new(spec: DependencySpec) -> Sim {
        let (e, out) = MirrorEngine::new(spec, 0).unwrap();
        let mut w = BTreeMap::new();
        w.insert(
            PRIMARY_ID.to_string(),
            WInst::new(ObservedRole::Primary, 1000),
        );
        let mut s = Sim {
            e,
            now: 0,
            w,
            writer: PRIMARY_ID.into(),
            writes_per_tick: 100,
            acked: 1000,
            routed: None,
            queue: Vec::new(),
            hold: BTreeSet::new(),
            events: Vec::new(),
            actions: Vec::new(),
            provision_fails: None,
            promote_fails: BTreeSet::new(),
            route_fails: 0,
            fence_repoints: true,
            hidden: BTreeSet::new(),
            rps: 0.0,
        };
        s.absorb(out);
        s.answer_all();
        s
    }

    fn absorb(&mut self, out: Output) {
        self.actions.extend(out.actions.iter().cloned());
        self.queue.extend(out.actions);
        self.events.extend(out.events);
    }

    fn step(&mut self, input: Input) {
        let out = self.e.step(input, self.now);
        self.absorb(out);
    }

    fn observations(&self) -> Vec<Observation> {
        self.w
            .iter()
            .filter(|(id, _)| !self.hidden.contains(*id))
            .map(|(id, i)| Observation {
                instance: id.clone(),
                check: if i.up { Check::Ok } else { Check::Down },
                latency_ms: i.up.then_some(i.latency),
                error_rate: i.up.then_some(i.error_rate),
                requests_per_s: Some(if *id == self.writer { self.rps } else { i.rps }),
                offset: i.up.then_some(i.offset),
                sessions: Some(i.sessions),
                role: i.up.then_some(i.role),
            })
            .collect()
    }

    /// One health interval: writes land on the writer, replicas follow, the engine observes,
    /// and its actions are answered.
    fn tick(&mut self) {
        self.now += INTERVAL;
        if let Some(p) = self.w.get_mut(&self.writer) {
            if p.up && !p.paused {
                p.offset += self.writes_per_tick;
                self.acked = p.offset;
            }
        }
        let head = self.w[&self.writer].offset;
        for (id, i) in self.w.iter_mut() {
            if *id != self.writer && i.up && i.replicating {
                i.offset = i.offset.max(head);
            }
        }
        let obs = self.observations();
        self.step(Input::Observe {
            at_ms: self.now,
            observations: obs,
        });
        self.answer_all();
    }

    fn run(&mut self, ticks: usize) {
        for _ in 0..ticks {
            self.tick();
        }
    }

    fn answer_all(&mut self) {
        let mut guard = 0;
        loop {
            let pos = self
                .queue
                .iter()
                .position(|a| !self.hold.contains(a.kind()));
            let Some(pos) = pos else { break };
            let a = self.queue.remove(pos);
            let (ok, output, error) = self.carry_out(&a);
            self.step(Input::ActionDone {
                action_id: a.id(),
                ok,
                output,
                error,
            });
            guard += 1;
            assert!(guard < 1000, "the engine keeps asking for actions");
        }
    }

    /// What the IO side would do.
    fn carry_out(&mut self, a: &Action) -> (bool, Value, Option<String>) {
        match a {
            Action::Provision { instance, .. } => match self.provision_fails {
                Some(permanent) => (
                    false,
                    json!({"permanent": permanent}),
                    Some("redis-server not found".into()),
                ),
                None => {
                    let n = self.w.len();
                    let mut i = WInst::new(ObservedRole::Replica, 0);
                    i.offset = 0;
                    self.w.insert(instance.clone(), i);
                    (
                        true,
                        json!({"endpoint": format!("127.0.0.1:{}", 7000 + n), "pid": 1234}),
                        None,
                    )
                }
            },
            Action::Retire { instance, .. } => {
                assert_eq!(
                    self.w[&instance.instance].sessions, 0,
                    "retired with sessions"
                );
                self.w.remove(&instance.instance);
                (true, Value::Null, None)
            }
            Action::Promote {
                instance,
                catch_up_to,
                ..
            } => {
                let id = &instance.instance;
                let i = self.w.get_mut(id).unwrap();
                let reached = catch_up_to.is_none_or(|t| i.offset >= t);
                if self.promote_fails.contains(id) || !i.up {
                    return (false, Value::Null, Some("connection refused".into()));
                }
                if !reached {
                    return (
                        false,
                        json!({"offset": i.offset}),
                        Some("timed out waiting for the offset".into()),
                    );
                }
                i.role = ObservedRole::Primary;
                i.replicating = false;
                self.writer = id.clone();
                (true, json!({"offset": i.offset}), None)
            }
            Action::Fence {
                instance,
                new_primary,
                ..
            } => {
                let i = self.w.get_mut(&instance.instance).unwrap();
                if !i.up {
                    return (false, Value::Null, Some("connection refused".into()));
                }
                i.paused = true;
                let mut out = json!({"offset": i.offset});
                if new_primary.is_some() && !self.fence_repoints {
                    i.replicating = false;
                    out["mirror"] = json!(false);
                } else if new_primary.is_some() {
                    i.role = ObservedRole::Replica;
                    i.replicating = true;
                    i.paused = false;
                    out["mirror"] = json!(true);
                }
                (true, out, None)
            }
            Action::Unfence { instance, .. } => {
                self.w.get_mut(&instance.instance).unwrap().paused = false;
                (true, Value::Null, None)
            }
            Action::Route {
                primary, readers, ..
            } => {
                if self.route_fails > 0 {
                    self.route_fails -= 1;
                    return (false, Value::Null, Some("admin API refused".into()));
                }
                self.routed = Some((
                    primary.instance.clone(),
                    readers.iter().map(|r| r.instance.clone()).collect(),
                ));
                (true, Value::Null, None)
            }
        }
    }

    fn events_named(&self, name: &str) -> Vec<&Event> {
        self.events.iter().filter(|e| e.name == name).collect()
    }

    fn count(&self, kind: &str) -> usize {
        self.actions.iter().filter(|a| a.kind() == kind).count()
    }

    fn ready_mirrors(&self) -> usize {
        self.e
            .status()
            .instances
            .iter()
            .filter(|i| i.role == Role::Mirror && i.state == InstanceState::Ready)
            .count()
    }

    fn set(&mut self, id: &str, f: impl FnOnce(&mut WInst)) {
        f(self.w.get_mut(id).unwrap())
    }

    /// A dependency with `n` ready mirrors (min = max = n).
    fn with_mirrors(kind: DepKind, n: u32) -> Sim {
        let mut sp = spec(kind);
        sp.policy.min_mirrors = n;
        sp.policy.max_mirrors = n;
        let mut s = Sim::new(sp);
        s.run(4 * n as usize + 4);
        assert_eq!(s.ready_mirrors(), n as usize, "{:#?}", s.e.status());
        s
    }
}

// ---- formulas ------------------------------------------------------------------------------

#[test]
fn weight_formula() {
    let mut s = spec(DepKind::Redis);
    s.impact = 1.0;
    assert!((score::weight(&s, None) - 0.25).abs() < 1e-9);
    assert!(score::weight(&s, Some(1e9)) > 0.999);
    let at_scale = score::weight(&s, Some(score::RATE_SCALE));
    assert!((at_scale - (0.25 + 0.75 * (1.0 - (-1.0f64).exp()))).abs() < 1e-9);
    s.tier = Tier::Low;
    s.impact = 0.0;
    assert!((score::weight(&s, None) - 0.15 * 0.5 * 0.25).abs() < 1e-9);
    // Nonsense request rates are no traffic.
    assert_eq!(score::traffic(Some(f64::NAN)), 0.0);
    assert_eq!(score::traffic(Some(-5.0)), 0.0);
}

#[test]
fn health_formula() {
    let p = MirrorPolicy::default();
    let h = |up, lat, base, err, lag| {
        score::health(
            &HealthInputs {
                up,
                latency_ms: lat,
                baseline_ms: base,
                error_rate: err,
                lag_ms: lag,
            },
            &p,
        )
    };
    assert_eq!(h(false, Some(0.1), Some(0.1), Some(0.0), None), 0.0);
    assert_eq!(h(true, None, None, None, None), 1.0);
    // Latency within twice the baseline (floored at 5 ms) costs nothing; 8× costs 3/4.
    assert_eq!(h(true, Some(9.9), Some(0.2), None, None), 1.0);
    assert!((h(true, Some(80.0), Some(10.0), None, None) - 0.25).abs() < 1e-9);
    // 12.5 % errors halve the score; 25 % zero it.
    assert!((h(true, None, None, Some(0.125), None) - 0.5).abs() < 1e-9);
    assert_eq!(h(true, None, None, Some(0.3), None), 0.0);
    // Lag: free up to two intervals, zero at two intervals plus catch_up_timeout.
    assert_eq!(h(true, None, None, None, Some(500)), 1.0);
    assert!((h(true, None, None, None, Some(500 + 2500)) - 0.5).abs() < 1e-9);
    assert_eq!(h(true, None, None, None, Some(60_000)), 0.0);
    // The factors multiply.
    assert!((h(true, Some(20.0), Some(1.0), Some(0.125), None) - 0.25).abs() < 1e-9);
}

#[test]
fn target_formula_and_hysteresis() {
    let s = spec(DepKind::Redis);
    let p = &s.policy;
    assert_eq!(score::target_raw(&s, 0.0, 1.0), 1.0);
    let full = score::target_raw(&s, 1.0, 1.0);
    assert!((full - (1.0 + 2.0 / 1.1)).abs() < 1e-9);
    // An unhealthy primary asks for more mirrors than a healthy one at the same weight.
    assert!(score::target_raw(&s, 0.4, 0.3) > score::target_raw(&s, 0.4, 1.0));
    // Hysteresis 0.5: the count follows round(raw) once raw is 0.25 past the midpoint.
    assert_eq!(score::target_mirrors(1, 1.7, p), 1);
    assert_eq!(score::target_mirrors(1, 1.75, p), 2);
    assert_eq!(score::target_mirrors(2, 1.3, p), 2);
    assert_eq!(score::target_mirrors(2, 1.25, p), 1);
    assert_eq!(score::target_mirrors(3, 1.5, p), 2);
    assert_eq!(score::target_mirrors(3, 1.2, p), 1);
    assert_eq!(score::target_mirrors(1, 9.0, p), 3);
    assert_eq!(score::target_mirrors(3, 0.0, p), 1);
    // No hysteresis: plain rounding.
    let p0 = MirrorPolicy {
        hysteresis: 0.0,
        ..p.clone()
    };
    assert_eq!(score::target_mirrors(1, 1.5, &p0), 2);
    assert_eq!(score::target_mirrors(2, 1.49, &p0), 1);
    // A target oscillating within the dead band never moves the count.
    let mut n = 2;
    for i in 0..100 {
        let raw = if i % 2 == 0 { 1.3 } else { 2.7 };
        n = score::target_mirrors(n, raw, p);
        assert_eq!(n, 2);
    }
}

#[test]
fn mode_choice() {
    let mut s = spec(DepKind::Redis);
    s.policy.mode = ModeSetting::Auto;
    s.mirror_cost = 0.5;
    use bellwether_model::mirror::Mode;
    assert_eq!(
        score::mode(&s, 0.6, Mode::ActivePassive),
        Mode::ActiveActive
    );
    assert_eq!(
        score::mode(&s, 0.5, Mode::ActivePassive),
        Mode::ActivePassive
    );
    assert_eq!(score::mode(&s, 0.5, Mode::ActiveActive), Mode::ActiveActive);
    assert_eq!(
        score::mode(&s, 0.4, Mode::ActiveActive),
        Mode::ActivePassive
    );
    s.policy.mode = ModeSetting::ActivePassive;
    assert_eq!(
        score::mode(&s, 1.0, Mode::ActiveActive),
        Mode::ActivePassive
    );
    s.policy.mode = ModeSetting::Auto;
    s.kind = DepKind::Tcp;
    assert_eq!(
        score::mode(&s, 1.0, Mode::ActiveActive),
        Mode::ActivePassive
    );
}

// ---- the machine ---------------------------------------------------------------------------

#[test]
fn routes_to_the_primary_and_provisions_only_after_seeing_it() {
    let mut sp = spec(DepKind::Redis);
    sp.policy.max_mirrors = 1;
    let mut s = Sim::new(sp);
    assert_eq!(s.routed, Some((PRIMARY_ID.to_string(), vec![])));
    // No observation of the primary: nothing is provisioned on no data.
    s.hidden.insert(PRIMARY_ID.into());
    s.run(10);
    assert_eq!(s.count("provision"), 0);
    assert_eq!(s.events_named("no_data").len(), 1);
    s.hidden.clear();
    s.run(1);
    assert_eq!(s.count("provision"), 1);
    // The new mirror is syncing: it starts at offset 0 and is not ready until caught up.
    let st = s.e.status();
    let m = st.instances.iter().find(|i| i.id == "cache-m1").unwrap();
    assert_eq!(m.state, InstanceState::Syncing);
    s.run(2);
    assert_eq!(s.ready_mirrors(), 1);
    assert_eq!(s.events_named("mirror_ready").len(), 1);
}

#[test]
fn down_primary_switches_within_switch_after_to_the_caught_up_healthiest() {
    let mut s = Sim::with_mirrors(DepKind::Redis, 2);
    // cache-m2 stops replicating: it falls behind and must not be chosen.
    s.set("cache-m2", |i| i.replicating = false);
    s.run(4);
    s.set(PRIMARY_ID, |i| i.up = false);
    let fault_ms = s.now;
    let acked = s.acked;
    let mut switched_at = None;
    for _ in 0..2 {
        s.tick();
        if s.e.status().history.len() == 1 {
            switched_at = Some(s.now);
            break;
        }
    }
    let at = switched_at.expect("switched within switch_after = 2 intervals");
    assert!(at - fault_ms <= 2 * INTERVAL);
    let st = s.e.status();
    assert_eq!(st.primary, "cache-m1");
    assert_eq!(s.routed.as_ref().unwrap().0, "cache-m1");
    // The promotion carried the last acknowledged write and the new primary had it.
    let promote = s
        .actions
        .iter()
        .find(|a| a.kind() == "promote")
        .unwrap()
        .clone();
    let Action::Promote { catch_up_to, .. } = promote else {
        unreachable!()
    };
    assert_eq!(catch_up_to, Some(acked));
    assert!(s.w["cache-m1"].offset >= acked);
    let rec = &st.history[0];
    assert_eq!(rec.trigger, "down");
    assert_eq!(rec.from, PRIMARY_ID);
    assert_eq!(rec.figures["detect_ms"], json!(INTERVAL));
    assert!(rec.figures["switch_ms"].as_i64().is_some());
    // The old primary is fenced after the route; it is down, so that fails: it is lost, and
    // is fenced again (and becomes a mirror) when it answers.
    let old = st.instances.iter().find(|i| i.id == PRIMARY_ID).unwrap();
    assert_eq!(old.state, InstanceState::Lost);
    s.set(PRIMARY_ID, |i| i.up = true);
    s.tick();
    assert_eq!(s.events_named("fence_again").len(), 1);
    let st = s.e.status();
    let old = st.instances.iter().find(|i| i.id == PRIMARY_ID).unwrap();
    assert_eq!(old.role, Role::Mirror);
    // Writes go on on the new primary; no acknowledged write was lost.
    s.run(4);
    assert!(s.w["cache-m1"].offset >= acked);
}

#[test]
fn of_two_equally_fit_mirrors_the_one_that_received_more_is_promoted() {
    let mut s = Sim::with_mirrors(DepKind::Redis, 2);
    // cache-m1 fails a hair less often; cache-m2 has received more of the primary's writes
    // (sent after the primary's last check). Promoting cache-m1 would cost a wait for data it
    // can only get from cache-m2.
    s.set("cache-m2", |i| i.error_rate = 0.005);
    s.run(4);
    let h = |s: &Sim, id: &str| {
        s.e.status()
            .instances
            .iter()
            .find(|i| i.id == id)
            .and_then(|i| i.health)
            .unwrap()
    };
    let (h1, h2) = (h(&s, "cache-m1"), h(&s, "cache-m2"));
    assert!(
        h1 > h2 && (h1 * 10.0).floor().min(9.0) == (h2 * 10.0).floor().min(9.0),
        "healthier by a hair, in the same tenth: {h1} {h2}"
    );
    s.set("cache-m2", |i| {
        i.replicating = false;
        i.offset += 50;
    });
    s.set(PRIMARY_ID, |i| i.up = false);
    s.run(3);
    let switch = s.events_named("switch_started");
    assert_eq!(switch.len(), 1);
    assert!(
        switch[0]
            .reason
            .contains("Candidates in order: cache-m2, cache-m1"),
        "{}",
        switch[0].reason
    );
    assert_eq!(s.e.status().primary, "cache-m2");
}

#[test]
fn unhealthy_primary_is_fenced_first_and_its_final_offset_is_waited_for() {
    let mut s = Sim::with_mirrors(DepKind::Redis, 1);
    // Slow: 200 ms, 20× the floored baseline.
    s.set(PRIMARY_ID, |i| i.latency = 200.0);
    s.run(2);
    let st = s.e.status();
    assert_eq!(st.primary, "cache-m1", "{:#?}", s.events);
    let kinds: Vec<&str> = s
        .actions
        .iter()
        .filter(|a| a.kind() != "provision")
        .map(|a| a.kind())
        .collect();
    // route (initial), fence (before), promote, route, fence (after: replicate).
    assert_eq!(kinds, ["route", "fence", "promote", "route", "fence"]);
    assert_eq!(st.history[0].trigger, "unhealthy");
    assert_eq!(st.history[0].figures["fenced_first"], json!(true));
    // The old primary replicates from the new one: a mirror again.
    let old = st.instances.iter().find(|i| i.id == PRIMARY_ID).unwrap();
    assert_eq!(
        (old.role, old.state),
        (Role::Mirror, InstanceState::Syncing)
    );
}

#[test]
fn a_mirror_that_cannot_catch_up_is_never_promoted_the_next_is_tried() {
    let mut s = Sim::with_mirrors(DepKind::Redis, 2);
    s.promote_fails.insert("cache-m1".into());
    s.set(PRIMARY_ID, |i| i.up = false);
    s.run(2);
    let st = s.e.status();
    assert_eq!(st.primary, "cache-m2");
    assert_eq!(s.events_named("promote_failed").len(), 1);
    assert_eq!(st.history[0].figures["tried"][0]["instance"], "cache-m1");
    // cache-m1 is still a mirror (its promotion did not happen); it follows the new primary.
    let m1 = st.instances.iter().find(|i| i.id == "cache-m1").unwrap();
    assert_eq!(m1.role, Role::Mirror);
    s.run(2);
    let st = s.e.status();
    let m1 = st.instances.iter().find(|i| i.id == "cache-m1").unwrap();
    assert_eq!(m1.state, InstanceState::Ready);
}

#[test]
fn every_promotion_failing_pauses_with_an_alert_and_undoes_the_fence() {
    let mut s = Sim::with_mirrors(DepKind::Redis, 2);
    s.promote_fails.insert("cache-m1".into());
    s.promote_fails.insert("cache-m2".into());
    s.set(PRIMARY_ID, |i| i.error_rate = 0.3);
    s.run(2);
    let st = s.e.status();
    assert_eq!(st.primary, PRIMARY_ID);
    assert_eq!(st.phase, Phase::Paused);
    assert!(st.history.is_empty());
    let failed = s.events_named("switch_failed");
    assert_eq!(failed.len(), 1);
    assert!(failed[0].alert);
    assert_eq!(s.count("unfence"), 1);
    // The route to the primary that stays is sent again (the proxy may have held commands).
    assert!(
        matches!(s.actions.last(), Some(Action::Route { primary, .. }) if primary.instance == PRIMARY_ID)
    );
    assert!(!s.w[PRIMARY_ID].paused);
    assert_eq!(s.routed.as_ref().unwrap().0, PRIMARY_ID);
    // Paused: nothing more is decided while it stays bad.
    let n = s.actions.len();
    s.run(20);
    assert_eq!(s.actions.len(), n);
    // Resumed with a working mirror, it switches.
    s.promote_fails.clear();
    s.step(Input::Command(Command::Resume {
        reason: "fixed".into(),
    }));
    s.run(2);
    assert_eq!(s.e.status().primary, "cache-m1");
}

#[test]
fn flaky_primary_switches_at_most_once_per_min_switch_gap_but_down_always() {
    let mut sp = spec(DepKind::Redis);
    sp.policy.min_mirrors = 2;
    sp.policy.max_mirrors = 2;
    sp.policy.min_switch_gap = Dur::from_secs(300);
    sp.policy.failback_after = Dur::from_secs(3600);
    let mut s = Sim::new(sp);
    s.run(12);
    assert_eq!(s.ready_mirrors(), 2);
    // Whoever is primary loses a third of its requests in two of every three intervals
    // (packet loss): health 0 in those.
    let start = s.now;
    for k in 0..(600_000 / INTERVAL) {
        let p = s.e.status().primary;
        for (id, i) in s.w.iter_mut() {
            i.error_rate = if *id == p && k % 3 != 2 { 0.35 } else { 0.0 };
        }
        s.tick();
    }
    let times: Vec<i64> = s.e.status().history.iter().map(|h| h.at_ms).collect();
    assert!(!times.is_empty());
    for w in times.windows(2) {
        assert!(w[1] - w[0] >= 300_000, "switches {times:?} (start {start})");
    }
    assert!(times.len() <= 2, "{times:?}");
    assert!(!s.events_named("switch_held").is_empty());
    // Within the gap, a primary that is down is switched regardless.
    let p = s.e.status().primary;
    for i in s.w.values_mut() {
        i.error_rate = 0.0;
    }
    s.set(&p, |i| i.up = false);
    let before = s.e.status().history.len();
    s.run(2);
    let st = s.e.status();
    assert_eq!(st.history.len(), before + 1);
    assert_ne!(st.primary, p);
    assert_eq!(st.history.last().unwrap().trigger, "down");
}

#[test]
fn failback_only_after_failback_after_of_good_health() {
    let mut sp = spec(DepKind::Redis);
    sp.policy.failback_after = Dur::from_secs(60);
    sp.policy.min_switch_gap = Dur::from_secs(10);
    let mut s = Sim::new(sp);
    s.run(8);
    s.set(PRIMARY_ID, |i| i.up = false);
    s.run(2);
    assert_eq!(s.e.status().primary, "cache-m1");
    s.set(PRIMARY_ID, |i| i.up = true);
    // It comes back, is fenced into a mirror and catches up; its health oscillates for a
    // while (above switch_below, below failback_above now and then): no failback.
    for k in 0..=(120_000 / INTERVAL) {
        s.set(PRIMARY_ID, |i| {
            i.error_rate = if k % 10 == 0 { 0.05 } else { 0.0 }
        });
        s.tick();
    }
    assert_eq!(s.e.status().primary, "cache-m1", "{:#?}", s.e.status());
    assert_eq!(s.e.status().history.len(), 1);
    // Steadily healthy for failback_after: back to the original.
    s.set(PRIMARY_ID, |i| i.error_rate = 0.0);
    let healthy_from = s.now;
    s.run((59_000 / INTERVAL) as usize);
    assert_eq!(s.e.status().primary, "cache-m1");
    s.run((2_000 / INTERVAL) as usize);
    let st = s.e.status();
    assert_eq!(st.primary, PRIMARY_ID);
    let rec = st.history.last().unwrap();
    assert_eq!(rec.trigger, "failback");
    assert!(rec.at_ms - healthy_from >= 60_000);
    // A planned switch fences first: nothing acknowledged on cache-m1 was lost.
    assert!(s.w[PRIMARY_ID].offset >= s.acked - s.writes_per_tick);
}

#[test]
fn mirror_count_follows_weight_with_hysteresis_and_does_not_flap() {
    let mut sp = spec(DepKind::Redis);
    sp.tier = Tier::Medium;
    sp.impact = 1.0;
    sp.mirror_cost = 0.0;
    sp.policy.failback_after = Dur::from_secs(30);
    let mut s = Sim::new(sp);
    s.run(20);
    assert_eq!(s.e.status().target_mirrors, 1);
    // Traffic rises: the weight rises and more mirrors are provisioned.
    s.rps = 5000.0;
    s.run((300_000 / INTERVAL) as usize);
    let st = s.e.status();
    assert!(st.weight > 0.35, "{}", st.weight);
    assert_eq!(st.target_mirrors, 2, "{st:#?}");
    assert_eq!(s.ready_mirrors(), st.target_mirrors as usize);
    assert!(!s.events_named("target_changed").is_empty());
    let provisioned = s.count("provision");
    // Health oscillating every interval between 0.55 and 1 moves nothing.
    let (n, retired) = (st.target_mirrors, s.count("retire"));
    for k in 0..(300_000 / INTERVAL) {
        s.set(PRIMARY_ID, |i| {
            i.error_rate = if k % 2 == 0 { 0.11 } else { 0.0 }
        });
        s.tick();
    }
    assert_eq!(s.e.status().target_mirrors, n);
    assert_eq!(s.count("provision"), provisioned);
    assert_eq!(s.count("retire"), retired);
    s.set(PRIMARY_ID, |i| i.error_rate = 0.0);
    // Traffic falls: mirrors are retired, but only without sessions.
    s.set("cache-m2", |i| i.sessions = 3);
    s.rps = 0.0;
    s.run((600_000 / INTERVAL) as usize);
    assert_eq!(s.e.status().target_mirrors, 1);
    assert!(s.w.contains_key("cache-m2"), "retired with sessions");
    assert!(!s.events_named("retire_waiting").is_empty());
    s.set("cache-m2", |i| i.sessions = 0);
    // No data about its sessions is not zero sessions.
    s.hidden.insert("cache-m2".into());
    s.run(10);
    assert!(s.w.contains_key("cache-m2"));
    s.hidden.clear();
    s.run(2);
    assert!(!s.w.contains_key("cache-m2"));
    let live =
        s.e.status()
            .instances
            .iter()
            .filter(|i| i.role == Role::Mirror && i.state == InstanceState::Ready)
            .count();
    assert_eq!(live, 1);
}

#[test]
fn request_rate_smoothing_follows_the_policy_time_constant() {
    // The same step of traffic, smoothed with the default 60 s and with a 6 s time constant:
    // after 24 s (four short time constants) the short one has (nearly) the full weight, the
    // default is still at 1 − e^−0.4 of the rate; after 5 more minutes both have it.
    let full = |sp: &DependencySpec| score::weight(sp, Some(100.0));
    let mut short_spec = spec(DepKind::Redis);
    short_spec.policy.rate_smoothing = Dur::from_secs(6);
    let default_spec = spec(DepKind::Redis);
    assert_eq!(
        default_spec.policy.rate_smoothing,
        Dur::from_millis(score::RATE_TAU_MS as u64)
    );
    let (mut short, mut default) = (Sim::new(short_spec.clone()), Sim::new(default_spec.clone()));
    for s in [&mut short, &mut default] {
        s.run(4);
        s.rps = 100.0;
        s.run((24_000 / INTERVAL) as usize);
    }
    let (ws, wd) = (short.e.status().weight, default.e.status().weight);
    let partial = score::weight(&default_spec, Some(100.0 * (1.0 - (-0.4f64).exp())));
    assert!(
        (ws - full(&short_spec)).abs() < 0.02,
        "{ws} against {}",
        full(&short_spec)
    );
    assert!((wd - partial).abs() < 0.02, "{wd} against {partial}");
    default.run((300_000 / INTERVAL) as usize);
    let wd = default.e.status().weight;
    assert!((wd - full(&default_spec)).abs() < 0.02, "{wd}");
}

#[test]
fn failed_provisioning_is_never_routed_backs_off_and_becomes_impossible() {
    let mut sp = spec(DepKind::Redis);
    sp.policy.mode = ModeSetting::ActiveActive;
    let mut s = Sim::new(sp);
    s.provision_fails = Some(false);
    s.run(400);
    let failed = s.events_named("provision_failed").len();
    assert!(failed >= 2);
    assert!(failed <= super::machine::MAX_PROVISION_FAILURES as usize);
    // Backoff: far fewer attempts than intervals.
    assert!(s.count("provision") < 10);
    let imp = s.events_named("provision_impossible");
    assert_eq!(imp.len(), 1);
    assert!(imp[0].alert);
    // Never routed to, never a candidate.
    assert_eq!(s.routed.as_ref().unwrap().1, Vec::<String>::new());
    s.set(PRIMARY_ID, |i| i.up = false);
    s.run(4);
    assert_eq!(s.e.status().primary, PRIMARY_ID);
    assert_eq!(s.count("promote"), 0);
    assert_eq!(s.events_named("no_healthy_mirror").len(), 1);
    // A permanent failure stops at once.
    let mut s = Sim::new(spec(DepKind::Redis));
    s.provision_fails = Some(true);
    s.run(100);
    assert_eq!(s.count("provision"), 1);
    assert_eq!(s.events_named("provision_impossible").len(), 1);
    assert!(s.e.status().provision_blocked.is_some());
    // A new policy lets it try again.
    s.provision_fails = None;
    let p = s.e.spec().policy.clone();
    s.step(Input::Command(Command::SetPolicy { policy: p }));
    s.run(4);
    assert_eq!(s.ready_mirrors(), s.e.status().target_mirrors as usize);
}

#[test]
fn tcp_provisioning_is_a_clear_event() {
    let mut s = Sim::new(spec(DepKind::Tcp));
    s.run(20);
    assert_eq!(s.count("provision"), 0);
    let imp = s.events_named("provision_impossible");
    assert_eq!(imp.len(), 1);
    assert!(imp[0].reason.contains("tcp"));
}

#[test]
fn every_instance_dead_at_once_alerts_once_and_leaves_routing() {
    let mut s = Sim::with_mirrors(DepKind::Redis, 2);
    let routes = s.count("route");
    for i in s.w.values_mut() {
        i.up = false;
    }
    s.run(200);
    let st = s.e.status();
    assert_eq!(st.primary, PRIMARY_ID);
    let alerts = s.events_named("no_healthy_mirror");
    assert_eq!(alerts.len(), 1);
    assert!(alerts[0].alert);
    assert_eq!(s.count("route"), routes);
    assert_eq!(s.count("promote"), 0);
    assert_eq!(s.count("provision"), 2);
    // A mirror comes back: the switch happens then.
    s.set("cache-m2", |i| i.up = true);
    s.run(3);
    assert_eq!(s.e.status().primary, "cache-m2");
}

#[test]
fn missing_data_never_switches() {
    let mut s = Sim::with_mirrors(DepKind::Redis, 1);
    s.hidden.insert(PRIMARY_ID.into());
    s.run(100);
    assert_eq!(s.e.status().primary, PRIMARY_ID);
    assert_eq!(s.count("promote"), 0);
    assert_eq!(s.events_named("no_data").len(), 1);
}

#[test]
fn state_round_trips_in_the_middle_of_a_switch() {
    let mut s = Sim::with_mirrors(DepKind::Redis, 1);
    s.hold.insert("promote");
    s.set(PRIMARY_ID, |i| i.up = false);
    s.run(2);
    let pending = s.e.pending();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].kind(), "promote");
    assert!(s.e.status().switching.is_some());
    let restored = MirrorEngine::restore(s.e.state()).unwrap();
    assert_eq!(restored, s.e);
    s.e = restored;
    s.hold.clear();
    s.answer_all();
    assert_eq!(s.e.status().primary, "cache-m1");
    assert_eq!(s.e.status().history.len(), 1);
}

#[test]
fn operator_failover_to_a_named_mirror_and_refusals() {
    let mut s = Sim::with_mirrors(DepKind::Postgres, 2);
    s.step(Input::Command(Command::Failover {
        to: Some("nope".into()),
        reason: "test".into(),
    }));
    assert_eq!(s.events_named("failover_refused").len(), 1);
    s.step(Input::Command(Command::Failover {
        to: Some("cache-m2".into()),
        reason: "maintenance".into(),
    }));
    s.answer_all();
    let st = s.e.status();
    assert_eq!(st.primary, "cache-m2");
    assert_eq!(st.history[0].trigger, "operator");
    assert!(st.history[0].cause.contains("maintenance"));
    // No bad check came before an operator's switch: its reason gives the routing time only.
    let switched = s.events_named("switched");
    let reason = &switched[0].reason;
    assert!(reason.contains("ms after the decision"), "{reason}");
    assert!(!reason.contains('?'), "{reason}");
}

#[test]
fn a_switch_on_a_dead_primary_says_how_long_the_decision_took() {
    let mut s = Sim::with_mirrors(DepKind::Redis, 1);
    s.set(PRIMARY_ID, |i| i.up = false);
    s.run(2);
    let switched = s.events_named("switched");
    let reason = &switched[0].reason;
    assert!(
        reason.contains("ms after the first bad check, routed"),
        "{reason}"
    );
}

#[test]
fn route_failure_during_a_switch_is_retried_then_pauses() {
    let mut s = Sim::with_mirrors(DepKind::Redis, 1);
    s.route_fails = 1;
    s.set(PRIMARY_ID, |i| i.up = false);
    s.run(2);
    assert_eq!(s.e.status().primary, "cache-m1");
    assert_eq!(s.e.status().history.len(), 1);
    let mut s = Sim::with_mirrors(DepKind::Redis, 1);
    s.route_fails = 10;
    s.set(PRIMARY_ID, |i| i.up = false);
    s.run(2);
    let st = s.e.status();
    assert_eq!(st.phase, Phase::Paused);
    assert!(s.events_named("route_failed").iter().any(|e| e.alert));
}

#[test]
fn active_active_routes_reads_to_ready_mirrors_with_a_dead_band() {
    let mut sp = spec(DepKind::Redis);
    sp.policy.mode = ModeSetting::ActiveActive;
    sp.policy.min_mirrors = 2;
    let mut s = Sim::new(sp);
    s.run(12);
    let (p, readers) = s.routed.clone().unwrap();
    assert_eq!(p, PRIMARY_ID);
    assert_eq!(readers, ["cache-m1", "cache-m2"]);
    // A reader at health 0.6 stays (above switch_below); at 0 it leaves.
    s.set("cache-m1", |i| i.error_rate = 0.1);
    s.run(4);
    assert_eq!(s.routed.as_ref().unwrap().1.len(), 2);
    s.set("cache-m1", |i| i.up = false);
    s.run(1);
    assert_eq!(s.routed.as_ref().unwrap().1, ["cache-m2"]);
}

#[test]
fn remove_retires_what_it_made() {
    let mut s = Sim::with_mirrors(DepKind::Redis, 2);
    s.step(Input::Command(Command::Remove {
        reason: "gone".into(),
    }));
    s.answer_all();
    s.run(3);
    let st = s.e.status();
    assert_eq!(st.phase, Phase::Removed);
    assert_eq!(s.count("retire"), 2);
    assert!(s.w.keys().eq([PRIMARY_ID]));
    let n = s.actions.len();
    s.run(5);
    assert_eq!(s.actions.len(), n);
}

#[test]
fn bad_policy_is_refused() {
    let mut s = Sim::new(spec(DepKind::Redis));
    let policy = MirrorPolicy {
        min_mirrors: 5,
        max_mirrors: 2,
        ..MirrorPolicy::default()
    };
    s.step(Input::Command(Command::SetPolicy { policy }));
    let r = s.events_named("policy_refused");
    assert_eq!(r.len(), 1);
    assert!(r[0].reason.contains("min_mirrors"));
    assert_eq!(s.e.spec().policy.max_mirrors, 3);
    let mut bad = spec(DepKind::Redis);
    bad.impact = 7.0;
    assert!(MirrorEngine::new(bad, 0).is_err());
}

#[test]
fn other_mirrors_follow_the_new_primary_or_are_replaced() {
    let mut s = Sim::with_mirrors(DepKind::Redis, 2);
    s.set(PRIMARY_ID, |i| i.up = false);
    s.run(8);
    assert_eq!(s.e.status().primary, "cache-m1");
    assert_eq!(s.events_named("repointed").len(), 1);
    // cache-m2 follows the new primary and is ready again; no replacement was needed for it.
    let st = s.e.status();
    let m2 = st.instances.iter().find(|i| i.id == "cache-m2").unwrap();
    assert_eq!(m2.state, InstanceState::Ready);
    assert_eq!(s.ready_mirrors(), 2, "{st:#?}");

    let mut s = Sim::with_mirrors(DepKind::Postgres, 2);
    s.fence_repoints = false;
    s.set(PRIMARY_ID, |i| i.up = false);
    s.run(12);
    assert_eq!(s.e.status().primary, "cache-m1");
    assert_eq!(s.events_named("repoint_failed").len(), 1);
    assert!(!s.w.contains_key("cache-m2"), "cache-m2 was not retired");
    assert_eq!(s.ready_mirrors(), 2, "{:#?}", s.e.status());
}

#[test]
fn a_dead_mirror_is_replaced_but_not_while_everything_is_down() {
    let mut s = Sim::with_mirrors(DepKind::Redis, 2);
    s.set("cache-m2", |i| i.up = false);
    s.run(super::machine::DEAD_AFTER_INTERVALS as usize + 4);
    assert_eq!(s.events_named("mirror_dead").len(), 1);
    assert!(!s.w.contains_key("cache-m2"));
    assert_eq!(s.ready_mirrors(), 2, "{:#?}", s.e.status());
    assert_eq!(s.count("provision"), 3);
}

#[test]
fn a_degraded_primary_is_left_only_for_a_mirror_healthy_by_the_failback_standard() {
    let mut s = Sim::with_mirrors(DepKind::Redis, 1);
    // The whole host is slow: the primary at 40 ms (health 0.25, below switch_below), the
    // mirror at 15 ms (health 0.67: above switch_below, below failback_above 0.9).
    s.set(PRIMARY_ID, |i| i.latency = 40.0);
    s.set("cache-m1", |i| i.latency = 15.0);
    s.run(6);
    let st = s.e.status();
    assert_eq!(st.primary, PRIMARY_ID, "{:#?}", s.events);
    assert!(st.history.is_empty());
    let held = s.events_named("no_healthy_mirror");
    assert_eq!(held.len(), 1, "one alert while it lasts");
    assert_eq!(held[0].figures["min_health"], json!(0.9));
    // The mirror recovers: now the degraded primary is left.
    s.set("cache-m1", |i| i.latency = 0.5);
    s.run(3);
    let st = s.e.status();
    assert_eq!(st.primary, "cache-m1");
    assert_eq!(st.history[0].trigger, "unhealthy");
}

#[test]
fn a_down_primary_is_left_for_any_mirror_above_switch_below() {
    let mut s = Sim::with_mirrors(DepKind::Redis, 1);
    s.set("cache-m1", |i| i.latency = 15.0);
    s.set(PRIMARY_ID, |i| i.up = false);
    s.run(3);
    let st = s.e.status();
    assert_eq!(st.primary, "cache-m1", "{:#?}", s.events);
    assert_eq!(st.history[0].trigger, "down");
}

#[test]
fn a_fenced_postgres_primary_that_still_calls_itself_primary_is_no_split_brain() {
    // Slow but answering: fenced first (read-only), and it stays a primary by its own account.
    let mut s = Sim::with_mirrors(DepKind::Postgres, 2);
    s.fence_repoints = false;
    s.set(PRIMARY_ID, |i| i.latency = 200.0);
    s.run(2);
    let st = s.e.status();
    assert_eq!(st.primary, "cache-m1", "{:#?}", s.events);
    let old = st.instances.iter().find(|i| i.id == PRIMARY_ID).unwrap();
    assert_eq!((old.role, old.state), (Role::Fenced, InstanceState::Fenced));
    assert_eq!(s.w[PRIMARY_ID].role, ObservedRole::Primary);
    s.run(6);
    assert!(
        s.events_named("split_brain").is_empty(),
        "{:#?}",
        s.events_named("split_brain")
    );

    // A former primary whose fence failed (it was down) and that answers again as a primary
    // is one.
    let mut s = Sim::with_mirrors(DepKind::Postgres, 2);
    s.fence_repoints = false;
    s.set(PRIMARY_ID, |i| i.up = false);
    s.run(4);
    assert_eq!(s.e.status().primary, "cache-m1");
    let old = s.e.status();
    let old = old.instances.iter().find(|i| i.id == PRIMARY_ID).unwrap();
    assert_eq!(old.state, InstanceState::Lost, "{old:?}");
    s.hold.insert("fence");
    s.set(PRIMARY_ID, |i| i.up = true);
    s.run(1);
    assert_eq!(s.events_named("split_brain").len(), 1, "{:#?}", s.events);
}
