use std::collections::{BTreeMap, BTreeSet};

use bellwether_model::{DriftCategory, DriftScore, Finding, HostName, Unit};
use serde_json::json;

use super::*;
use crate::rollout::plan::parse_plan;

pub(crate) const PLAN: &str = r#"name: web-v2
update:
  name: websvc
  version: "2"
  apply:  { builtin: set_service_version, version: "2" }
  revert: { builtin: set_service_version, version: "1" }
targets:
  labels: { role: web }
risk:
  low: 0.2
  high: 0.5
  moderate_share: 0.25
  pilot: { min: 2, max: 5 }
  high_risk: defer
waves: { fixed: [10, 50, 100] }
bake: 10s
analysis:
  interval: 1s
  metrics:
    - { name: svc_error_ratio, threshold_pct: 50, for: 3s, floor: 0.01 }
rollback:
  pause_when: { hosts: 3, wave_pct: 50 }
  slow_down_when: { hosts: 2 }
remediation:
  - { match: { category: configuration, attribute: "file:etc/websvc.conf" }, action: { builtin: restore_file, path: etc/websvc.conf } }
no_data: { after: 5s }
"#;

pub(crate) fn plan_with(replace: &[(&str, &str)]) -> Plan {
    let mut text = PLAN.to_string();
    for (a, b) in replace {
        assert!(text.contains(a), "{a}");
        text = text.replacen(a, b, 1);
    }
    parse_plan(&text, "plan.yaml").unwrap()
}

pub(crate) fn host(name: &str, p: f64) -> HostInput {
    HostInput {
        name: HostName::new(name).unwrap(),
        labels: [("role".to_string(), "web".to_string())].into(),
        attributes: BTreeMap::new(),
        probability: p,
        factors: vec![("package:libssl".into(), p / 2.0)],
        drift: None,
    }
}

fn drifted(mut h: HostInput, attribute: &str) -> HostInput {
    h.drift = Some(DriftScore {
        configuration: Unit::saturating(0.4),
        overall: Unit::saturating(0.2),
        findings: vec![Finding {
            category: DriftCategory::Configuration,
            attribute: attribute.into(),
            baseline: Some("a".into()),
            current: Some("b".into()),
            weight: Unit::ONE,
        }],
        ..DriftScore::default()
    });
    h
}

pub(crate) fn fleet(n: usize) -> Vec<HostInput> {
    // Probabilities spread over all three bands, deterministic.
    (0..n)
        .map(|i| host(&format!("web-{i:03}"), ((i * 37) % 100) as f64 / 160.0))
        .collect()
}

fn hn(s: &str) -> HostName {
    HostName::new(s).unwrap()
}

/// A fake server: keeps the decisions, answers actions, sends verdicts.
pub(crate) struct Sim {
    pub r: Rollout,
    pub now: i64,
    pub log: Vec<Decision>,
    pub pending: Vec<(u64, HostName, ActionKind)>,
    /// Every action id answered with `ActionFinished`.
    pub answered: Vec<u64>,
}

impl Sim {
    pub(crate) fn new(plan: Plan, hosts: Vec<HostInput>) -> Sim {
        let (r, d) = Rollout::start("r-1".into(), plan, hosts, 0);
        let mut s = Sim {
            r,
            now: 0,
            log: Vec::new(),
            pending: Vec::new(),
            answered: Vec::new(),
        };
        s.take(d);
        s
    }

    pub(crate) fn take(&mut self, ds: Vec<Decision>) {
        for d in &ds {
            if let Decision::Dispatch {
                action_id,
                host,
                kind,
                ..
            } = d
            {
                self.pending.push((*action_id, host.clone(), *kind));
            }
        }
        self.log.extend(ds);
    }

    pub(crate) fn step(&mut self, obs: Observation) -> Vec<Decision> {
        if let Observation::ActionFinished { action_id, .. } = &obs {
            self.answered.push(*action_id);
        }
        let d = self.r.step(obs);
        self.take(d.clone());
        d
    }

    pub(crate) fn answer(&mut self, result: impl Fn(&HostName, ActionKind) -> ActionResult) {
        let now = self.now;
        for (id, h, k) in std::mem::take(&mut self.pending) {
            let res = result(&h, k);
            self.step(Observation::ActionFinished {
                action_id: id,
                result: res,
                now_ms: now,
            });
        }
    }

    pub(crate) fn watched(&self) -> Vec<HostName> {
        self.r
            .hosts
            .values()
            .filter(|h| matches!(h.state, HostState::Baking | HostState::Updated))
            .map(|h| h.name.clone())
            .collect()
    }

    pub(crate) fn verdicts(&mut self, verdict: impl Fn(&HostName) -> Option<WatchVerdict>) {
        let now = self.now;
        for h in self.watched() {
            if let Some(v) = verdict(&h) {
                self.step(Observation::HostWatch {
                    host: h,
                    verdict: v,
                    now_ms: now,
                    data_ms: None,
                });
            }
        }
    }

    pub(crate) fn tick(&mut self, ms: i64) {
        self.now += ms;
        let now = self.now;
        self.step(Observation::Tick { now_ms: now });
    }

    /// Runs rounds of one second: answer actions Ok, send verdicts, tick.
    pub(crate) fn run(
        &mut self,
        seconds: usize,
        verdict: impl Fn(&HostName) -> Option<WatchVerdict>,
    ) {
        for _ in 0..seconds {
            self.answer(|_, _| ActionResult::Ok);
            self.tick(1000);
            self.verdicts(&verdict);
            if self.r.phase.is_final() && self.pending.is_empty() {
                break;
            }
        }
    }

    pub(crate) fn dispatches(&self, kind: ActionKind) -> Vec<HostName> {
        self.log
            .iter()
            .filter_map(|d| match d {
                Decision::Dispatch { host, kind: k, .. } if *k == kind => Some(host.clone()),
                _ => None,
            })
            .collect()
    }

    pub(crate) fn events(&self, kind: &str) -> Vec<&RolloutEvent> {
        self.r.events.iter().filter(|e| e.kind == kind).collect()
    }
}

fn failing(reason: &str) -> WatchVerdict {
    WatchVerdict::Failing {
        reason: reason.into(),
        figures: json!({ "svc_error_ratio": 0.3 }),
    }
}

#[test]
fn the_pilot_never_holds_a_high_risk_host_and_mixes_bands() {
    let s = Sim::new(plan_with(&[]), fleet(40));
    let pilot: Vec<&HostRecord> = s.r.hosts.values().filter(|h| h.wave == Some(0)).collect();
    assert!(!pilot.is_empty());
    assert!(pilot.iter().all(|h| h.band != Band::High));
    assert!(
        pilot.iter().any(|h| h.band == Band::Moderate),
        "moderate_share 0.25 of a pilot of 5 is one host"
    );
    let ev = &s.events("pilot.selected")[0];
    assert_eq!(ev.figures["size"], json!(pilot.len()));
    // Every high-risk host is held back with its figures.
    for h in s.r.hosts.values().filter(|h| h.band == Band::High) {
        assert_eq!(h.state, HostState::HeldBack);
        assert!(h.reason.contains("held back"), "{}", h.reason);
        assert!(h.figures["probability"].as_f64().unwrap() >= 0.5);
    }
    assert_eq!(s.dispatches(ActionKind::Apply).len(), pilot.len());
}

#[test]
fn the_pilot_grows_with_the_spread_of_the_scores() {
    let plan = plan_with(&[("pilot: { min: 2, max: 5 }", "pilot: { min: 2, max: 8 }")]);
    let narrow: Vec<(f64, HostName)> = (0..50)
        .map(|i| (0.05 + i as f64 * 0.0005, hn(&format!("n{i}"))))
        .collect();
    let wide: Vec<(f64, HostName)> = (0..50)
        .map(|i| (i as f64 / 50.0, hn(&format!("w{i}"))))
        .collect();
    let a = select_pilot(&plan, &narrow);
    let b = select_pilot(&plan, &wide);
    assert_eq!(a.size, 2, "{a:?}");
    assert!(b.size > a.size && b.size <= 8, "{b:?}");
    assert!(b.spread > 0.25 && a.spread < 0.02);
    // The judge's sample sets a floor above the spread's size.
    let judged = plan_with(&[
        ("pilot: { min: 2, max: 5 }", "pilot: { min: 1, max: 5 }"),
        ("  metrics:", "  judge: { min_canaries: 4 }\n  metrics:"),
    ]);
    let c = select_pilot(&judged, &narrow);
    assert_eq!(c.size_for_spread, 1);
    assert_eq!(c.size, 4);
    // Never more than the eligible hosts.
    let few: Vec<(f64, HostName)> = vec![(0.1, hn("a")), (0.9, hn("b")), (0.95, hn("c"))];
    let d = select_pilot(&judged, &few);
    assert_eq!(d.hosts, vec![hn("a")]);
}

#[test]
fn a_healthy_rollout_goes_through_every_wave_and_records_outcomes() {
    let mut s = Sim::new(plan_with(&[]), fleet(40));
    s.run(200, |_| Some(WatchVerdict::Healthy));
    assert_eq!(s.r.phase, Phase::Completed, "{:#?}", s.r.events.last());
    let applies = s.dispatches(ActionKind::Apply);
    let unique: BTreeSet<_> = applies.iter().collect();
    assert_eq!(unique.len(), applies.len(), "no host is applied twice");
    let report = s.r.report();
    let held = report
        .hosts
        .iter()
        .filter(|h| h.action == HostAction::HeldBack)
        .count();
    let updated = report
        .hosts
        .iter()
        .filter(|h| h.action == HostAction::Updated)
        .count();
    assert_eq!(held + updated, 40);
    assert_eq!(updated, applies.len());
    // Pilot + the three fixed waves.
    assert_eq!(s.events("wave.passed").len(), 4);
    let sizes: Vec<u64> = s
        .events("wave.started")
        .iter()
        .map(|e| e.figures["size"].as_u64().unwrap())
        .collect();
    assert_eq!(
        sizes.iter().sum::<u64>() as usize
            + s.events("pilot.selected")[0].figures["size"]
                .as_u64()
                .unwrap() as usize,
        updated
    );
    let outcomes = s
        .log
        .iter()
        .filter(|d| matches!(d, Decision::Outcome { failed: false, .. }))
        .count();
    assert_eq!(outcomes, updated);
    for h in &report.hosts {
        if h.action == HostAction::Updated {
            assert!(h.applied_ms.is_some() && h.finished_ms.is_some() && h.wave.is_some());
        }
    }
    // The JSON report has the fields the CLI promises.
    let v = serde_json::to_value(&report).unwrap();
    assert_eq!(v["state"], json!("completed"));
    assert!(v["hosts"][0]["probability"].is_number());
    assert!(v["hosts"][0]["factors"].is_array());
}

#[test]
fn a_failing_host_is_rolled_back_alone() {
    let mut s = Sim::new(plan_with(&[]), fleet(40));
    let victim = s.r.current[0].clone();
    let v2 = victim.clone();
    s.run(3, move |h| {
        Some(if *h == v2 {
            failing("svc_error_ratio is +300% off its baseline")
        } else {
            WatchVerdict::Healthy
        })
    });
    assert_eq!(s.dispatches(ActionKind::Revert), vec![victim.clone()]);
    s.run(200, |_| Some(WatchVerdict::Healthy));
    assert_eq!(s.r.phase, Phase::Completed);
    let rep = s.r.report();
    let row = rep.hosts.iter().find(|h| h.host == victim).unwrap();
    assert_eq!(row.action, HostAction::RolledBack);
    assert!(row.reason.contains("+300%"), "{}", row.reason);
    assert_eq!(
        rep.hosts
            .iter()
            .filter(|h| h.action == HostAction::RolledBack)
            .count(),
        1
    );
    assert!(s
        .log
        .iter()
        .any(|d| matches!(d, Decision::Outcome { host, failed: true, .. } if *host == victim)));
}

#[test]
fn spreading_failures_slow_down_then_pause() {
    let plan = plan_with(&[("pilot: { min: 2, max: 5 }", "pilot: { min: 5, max: 5 }")]);
    let mut s = Sim::new(plan, fleet(40));
    let pilot = s.r.current.clone();
    assert_eq!(pilot.len(), 5);
    let bad: BTreeSet<HostName> = pilot[..2].iter().cloned().collect();
    let b = bad.clone();
    s.run(3, move |h| {
        Some(if b.contains(h) {
            failing("errors")
        } else {
            WatchVerdict::Healthy
        })
    });
    assert_eq!(s.events("rollout.slowed_down").len(), 1);
    assert_eq!(s.r.phase, Phase::Running);
    // The pilot passes with two rolled back; wave 1 is halved.
    s.run(15, |_| Some(WatchVerdict::Healthy));
    let started = &s.events("wave.started")[0];
    assert_eq!(started.figures["halved"], json!(true));
    // A third failure pauses.
    let third = s.r.current[0].clone();
    let t = third.clone();
    s.run(2, move |h| {
        Some(if *h == t {
            failing("errors")
        } else {
            WatchVerdict::Healthy
        })
    });
    assert_eq!(s.r.phase, Phase::Paused);
    assert!(
        matches!(
            s.r.pause_reason,
            Some(PauseReason::FailuresSpread {
                failed_total: 3,
                ..
            })
        ),
        "{:?}",
        s.r.pause_reason
    );
    assert!(
        s.r.status()
            .pause_reason
            .unwrap()
            .starts_with("failures spread: 3 hosts failed, "),
        "the status still says it in words"
    );
    let paused = s.events("rollout.paused");
    assert_eq!(
        serde_json::from_value::<PauseReason>(paused[0].figures["pause_reason"].clone()).ok(),
        s.r.pause_reason,
        "the event carries the typed reason"
    );
    assert!(s.log.iter().any(|d| matches!(d, Decision::Alert { .. })));
    let wave_now = s.r.wave;
    s.run(60, |_| Some(WatchVerdict::Healthy));
    assert_eq!(s.r.wave, wave_now, "no new wave while paused");
    assert_eq!(
        s.r.hosts[&third].state,
        HostState::RolledBack,
        "rollbacks go on while paused"
    );
    s.step(Observation::Operator {
        command: OperatorCommand::Resume,
        now_ms: s.now,
    });
    s.run(300, |_| Some(WatchVerdict::Healthy));
    assert_eq!(s.r.phase, Phase::Completed);
}

#[test]
fn a_critical_metric_aborts_and_reverts_every_updated_host() {
    let mut s = Sim::new(plan_with(&[]), fleet(40));
    s.run(12, |_| Some(WatchVerdict::Healthy));
    assert!(s.r.wave >= 1);
    let victim = s.r.current[0].clone();
    let v = victim.clone();
    s.run(2, move |h| {
        Some(if *h == v {
            WatchVerdict::Critical {
                reason: "svc_error_ratio critical".into(),
                figures: json!({}),
            }
        } else {
            WatchVerdict::Healthy
        })
    });
    assert_eq!(s.r.phase, Phase::Aborted);
    s.run(5, |_| Some(WatchVerdict::Healthy));
    let applied: BTreeSet<HostName> = s.dispatches(ActionKind::Apply).into_iter().collect();
    let reverted: BTreeSet<HostName> = s.dispatches(ActionKind::Revert).into_iter().collect();
    assert_eq!(applied, reverted);
    assert!(s.r.finished_ms.is_some());
    let rep = s.r.report();
    assert!(rep.hosts.iter().all(|h| matches!(
        h.action,
        HostAction::RolledBack | HostAction::HeldBack | HostAction::Skipped
    )));
    assert_eq!(
        serde_json::to_value(&rep).unwrap()["state"],
        json!("aborted")
    );
}

#[test]
fn a_drifted_failing_host_is_remediated_before_any_rollback() {
    let mut hosts = fleet(20);
    hosts[0] = drifted(host("web-000", 0.05), "file:etc/websvc.conf");
    let plan = plan_with(&[("pilot: { min: 2, max: 5 }", "pilot: { min: 20, max: 20 }")]);
    let mut s = Sim::new(plan, hosts);
    let v = hn("web-000");
    assert_eq!(s.r.hosts[&v].wave, Some(0));
    let vv = v.clone();
    s.run(1, move |h| {
        Some(if *h == vv {
            failing("errors with the drifted config")
        } else {
            WatchVerdict::Healthy
        })
    });
    let rem = s.dispatches(ActionKind::Remediate { rule: 0 });
    assert_eq!(rem, vec![v.clone()]);
    assert!(s.dispatches(ActionKind::Revert).is_empty());
    let spec = s.log.iter().find_map(|d| match d {
        Decision::Dispatch {
            kind: ActionKind::Remediate { .. },
            spec,
            ..
        } => Some(spec.clone()),
        _ => None,
    });
    assert_eq!(
        spec,
        Some(ActionSpec::RestoreFile {
            path: "etc/websvc.conf".into(),
            timeout_ms: None
        })
    );
    s.run(200, |_| Some(WatchVerdict::Healthy));
    assert_eq!(s.r.phase, Phase::Completed);
    let rep = s.r.report();
    let row = rep.hosts.iter().find(|h| h.host == v).unwrap();
    assert_eq!(row.action, HostAction::Remediated);
    assert!(s.dispatches(ActionKind::Revert).is_empty());
    // Failing again after a remediation rolls back.
    let mut hosts = fleet(20);
    hosts[0] = drifted(host("web-000", 0.05), "file:etc/websvc.conf");
    let plan = plan_with(&[("pilot: { min: 2, max: 5 }", "pilot: { min: 20, max: 20 }")]);
    let mut s = Sim::new(plan, hosts);
    let vv = v.clone();
    s.run(30, move |h| {
        Some(if *h == vv {
            failing("errors")
        } else {
            WatchVerdict::Healthy
        })
    });
    assert_eq!(s.dispatches(ActionKind::Revert), vec![v.clone()]);
    assert_eq!(s.r.hosts[&v].state, HostState::RolledBack);
}

#[test]
fn high_risk_hosts_can_be_remediated_then_updated_last() {
    let mut hosts = fleet(10);
    hosts.push(drifted(host("risky-1", 0.9), "file:etc/websvc.conf"));
    hosts.push(host("risky-2", 0.8));
    let plan = plan_with(&[("high_risk: defer", "high_risk: remediate_then_defer")]);
    let mut s = Sim::new(plan, hosts);
    assert_eq!(s.r.hosts[&hn("risky-1")].state, HostState::Remediating);
    assert_eq!(s.r.hosts[&hn("risky-2")].state, HostState::HeldBack);
    s.run(300, |_| Some(WatchVerdict::Healthy));
    assert_eq!(s.r.phase, Phase::Completed);
    let r1 = &s.r.hosts[&hn("risky-1")];
    assert_eq!(r1.state, HostState::Updated);
    assert_eq!(r1.action(), HostAction::Remediated);
    assert_eq!(
        r1.wave,
        Some(s.r.wave),
        "remediated high-risk hosts go in the last wave"
    );
    // include_last: never in the pilot, always in the final wave.
    let plan = plan_with(&[("high_risk: defer", "high_risk: include_last")]);
    let mut s = Sim::new(plan, fleet(30));
    s.run(300, |_| Some(WatchVerdict::Healthy));
    let last_wave = s.r.wave;
    for h in s.r.hosts.values().filter(|h| h.band == Band::High) {
        assert_eq!(h.wave, Some(last_wave));
        assert_eq!(h.state, HostState::Updated);
    }
}

#[test]
fn no_data_pauses_and_alerts_and_never_promotes_or_rolls_back() {
    let mut s = Sim::new(plan_with(&[]), fleet(40));
    let silent = s.r.current[0].clone();
    let sl = silent.clone();
    // The silent host sends nothing at all: the engine's own no-data rule fires.
    s.run(30, move |h| {
        if *h == sl {
            None
        } else {
            Some(WatchVerdict::Healthy)
        }
    });
    assert_eq!(s.r.phase, Phase::Paused);
    assert_eq!(
        s.r.pause_reason,
        Some(PauseReason::NoData {
            host: silent.clone(),
            missing: None,
        })
    );
    assert_eq!(
        s.r.report().pause_reason,
        Some(format!("no data from {silent}"))
    );
    assert_eq!(s.r.wave, 0, "the pilot is not promoted on no data");
    assert!(
        s.dispatches(ActionKind::Revert).is_empty(),
        "no rollback on no data"
    );
    assert!(s
        .log
        .iter()
        .any(|d| matches!(d, Decision::Alert { message, .. } if message.contains("no data"))));
    // Resumed while still silent: the wave still waits.
    s.step(Observation::Operator {
        command: OperatorCommand::Resume,
        now_ms: s.now,
    });
    let sl = silent.clone();
    s.run(30, move |h| {
        if *h == sl {
            Some(WatchVerdict::NoData {
                since_ms: 0,
                missing: None,
            })
        } else {
            Some(WatchVerdict::Healthy)
        }
    });
    assert_eq!(s.r.wave, 0);
    assert_eq!(
        s.r.phase,
        Phase::Running,
        "a host already without data does not pause again"
    );
    // Data back: the wave passes.
    s.run(300, |_| Some(WatchVerdict::Healthy));
    assert_eq!(s.r.phase, Phase::Completed);
    assert!(!s.events("host.data_back").is_empty());
}

#[test]
fn no_data_from_prometheus_pauses_naming_the_host_and_the_query() {
    let mut s = Sim::new(plan_with(&[]), fleet(40));
    let silent = s.r.current[0].clone();
    let missing = MissingData {
        metric: "error_ratio".into(),
        query: format!("sum(rate(errors{{host=\"{silent}\"}}[5s]))"),
        problem: "the query returned no series".into(),
    };
    let (sl, m) = (silent.clone(), missing.clone());
    s.run(30, move |h| {
        Some(if *h == sl {
            WatchVerdict::NoData {
                since_ms: 0,
                missing: Some(m.clone()),
            }
        } else {
            WatchVerdict::Healthy
        })
    });
    assert_eq!(s.r.phase, Phase::Paused);
    assert_eq!(
        s.r.pause_reason,
        Some(PauseReason::NoData {
            host: silent.clone(),
            missing: Some(missing.clone()),
        })
    );
    assert_eq!(
        s.r.report().pause_reason,
        Some(format!(
            "no data from {silent}: error_ratio (Prometheus query `{}`): the query returned no series",
            missing.query
        ))
    );
    assert_eq!(s.r.wave, 0, "the pilot is not promoted on no data");
    assert!(s.dispatches(ActionKind::Revert).is_empty());
    let ev = s.events("host.no_data");
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].host.as_ref(), Some(&silent));
    assert!(ev[0].reason.contains(&missing.query), "{}", ev[0].reason);
    assert_eq!(ev[0].figures["query"], missing.query.as_str());
    assert_eq!(ev[0].figures["metric"], "error_ratio");
    let paused = s.events("rollout.paused");
    assert_eq!(paused[0].figures["pause_reason"]["kind"], "no_data");
    assert_eq!(
        paused[0].figures["pause_reason"]["missing"]["query"],
        missing.query.as_str()
    );
    // The typed reason survives the state's round trip.
    let back: Rollout = serde_json::from_value(serde_json::to_value(&s.r).unwrap()).unwrap();
    assert_eq!(back.pause_reason, s.r.pause_reason);
}

#[test]
fn failed_and_timed_out_actions_count_as_host_failures_with_the_error_kept() {
    let plan = plan_with(&[(
        "pause_when: { hosts: 3, wave_pct: 50 }",
        "pause_when: { hosts: 10 }",
    )]);
    let mut s = Sim::new(plan, fleet(40));
    let pilot = s.r.current.clone();
    let (a, b) = (pilot[0].clone(), pilot[1].clone());
    let (a2, b2) = (a.clone(), b.clone());
    s.answer(move |h, _| {
        if *h == a2 {
            ActionResult::Failed {
                error: "exit status 3: version 2 refused".into(),
            }
        } else if *h == b2 {
            ActionResult::TimedOut
        } else {
            ActionResult::Ok
        }
    });
    assert_eq!(s.r.failed_total, 2);
    assert_eq!(
        s.r.hosts[&a].error.as_deref(),
        Some("exit status 3: version 2 refused")
    );
    assert!(s.r.hosts[&b]
        .error
        .as_deref()
        .unwrap()
        .contains("timed out"));
    let reverts = s.dispatches(ActionKind::Revert);
    assert!(reverts.contains(&a) && reverts.contains(&b));
    // An agent that never answers: the action is overdue after timeout + no_data.after.
    let mut s = Sim::new(plan_with(&[]), fleet(40));
    let first = s.pending.remove(0);
    s.answer(|_, _| ActionResult::Ok);
    s.tick(60_000 + 5_000 + 1);
    assert!(!s.events("action.overdue").is_empty());
    assert_eq!(s.r.hosts[&first.1].state, HostState::RollingBack);
    assert!(s.r.hosts[&first.1]
        .error
        .as_deref()
        .unwrap()
        .contains("timed out"));
    // A result for an unknown or finished action changes nothing.
    let before = s.r.clone();
    s.step(Observation::ActionFinished {
        action_id: 9999,
        result: ActionResult::Ok,
        now_ms: s.now,
    });
    assert_eq!(s.r.hosts, before.hosts);
}

#[test]
fn operator_commands() {
    let mut s = Sim::new(plan_with(&[]), fleet(40));
    s.step(Observation::Operator {
        command: OperatorCommand::Pause,
        now_ms: 0,
    });
    assert_eq!(s.r.phase, Phase::Paused);
    s.run(30, |_| Some(WatchVerdict::Healthy));
    assert_eq!(s.r.wave, 0);
    s.step(Observation::Operator {
        command: OperatorCommand::Promote,
        now_ms: s.now,
    });
    assert_eq!(s.r.phase, Phase::Running);
    assert_eq!(s.r.wave, 1, "promote ends the bake at once");
    assert_eq!(
        s.events("wave.passed")[0].figures["forced_by_operator"],
        json!(true)
    );
    s.run(1, |_| Some(WatchVerdict::Healthy));
    s.step(Observation::Operator {
        command: OperatorCommand::Abort,
        now_ms: s.now,
    });
    assert_eq!(s.r.phase, Phase::Aborted);
    s.step(Observation::Operator {
        command: OperatorCommand::Resume,
        now_ms: s.now,
    });
    assert_eq!(s.r.phase, Phase::Aborted);
    assert_eq!(s.events("operator.ignored").len(), 1);
    s.run(5, |_| Some(WatchVerdict::Healthy));
    let rep = s.r.report();
    assert!(rep.hosts.iter().any(|h| h.action == HostAction::Skipped));
    assert!(rep.hosts.iter().all(|h| h.action != HostAction::Updated));
}

#[test]
fn a_paused_rollout_reports_its_waiting_hosts_as_waiting_not_skipped() {
    let mut s = Sim::new(plan_with(&[]), fleet(40));
    s.step(Observation::Operator {
        command: OperatorCommand::Pause,
        now_ms: 0,
    });
    let rep = s.r.report();
    assert_eq!(rep.state, Phase::Paused);
    assert!(rep.counts.get(&HostAction::Waiting).copied().unwrap_or(0) > 0);
    assert_eq!(
        rep.counts.get(&HostAction::Skipped),
        None,
        "{:?}",
        rep.counts
    );
    assert_eq!(
        serde_json::to_value(HostAction::Waiting).unwrap(),
        json!("waiting")
    );
    // After an abort the hosts never reached are skipped.
    s.step(Observation::Operator {
        command: OperatorCommand::Abort,
        now_ms: 0,
    });
    let rep = s.r.report();
    assert_eq!(
        rep.counts.get(&HostAction::Waiting),
        None,
        "{:?}",
        rep.counts
    );
    assert!(rep.counts[&HostAction::Skipped] > 0);
}

#[test]
fn an_aborted_rollout_finishes_only_when_its_reverts_have_reported() {
    let mut s = Sim::new(plan_with(&[]), fleet(40));
    s.answer(|_, _| ActionResult::Ok);
    let pilot = s.r.current.clone();
    assert!(pilot
        .iter()
        .all(|h| s.r.hosts[h].state == HostState::Baking));
    s.step(Observation::Operator {
        command: OperatorCommand::Abort,
        now_ms: 1000,
    });
    assert_eq!(s.r.phase, Phase::Aborted);
    assert!(!s.r.is_settled(), "the reverts are in flight");
    assert_eq!(s.r.finished_ms, None);
    for h in &pilot {
        assert_eq!(s.r.hosts[h].state, HostState::RollingBack);
        assert!(
            s.r.hosts[h].reason.contains("aborted"),
            "{}",
            s.r.hosts[h].reason
        );
    }
    s.now = 2000;
    s.answer(|_, _| ActionResult::Ok);
    assert!(s.r.is_settled());
    assert_eq!(s.r.finished_ms, Some(2000));
    assert_eq!(s.events("rollout.finished").len(), 1);
    for h in &pilot {
        let rec = &s.r.hosts[h];
        assert_eq!(rec.state, HostState::RolledBack);
        assert!(rec.reason.starts_with("Rolled back"), "{}", rec.reason);
    }
}

#[test]
fn a_completed_rollout_with_a_revert_in_flight_finishes_when_it_reports() {
    // A pilot host fails after its wave passed: its revert is in flight while the last wave
    // passes, so the rollout completes with an action pending and is finished only when the
    // revert reports.
    let hosts = (0..4)
        .map(|i| host(&format!("web-{i}"), 0.01 * (i + 1) as f64))
        .collect();
    let mut s = Sim::new(plan_with(&[]), hosts);
    while s.r.wave == 0 {
        s.run(1, |_| Some(WatchVerdict::Healthy));
    }
    let p =
        s.r.hosts
            .values()
            .find(|h| h.wave == Some(0))
            .map(|h| h.name.clone())
            .unwrap();
    s.answer(|_, _| ActionResult::Ok);
    let q = p.clone();
    s.verdicts(move |h| {
        Some(if *h == q {
            failing("late")
        } else {
            WatchVerdict::Healthy
        })
    });
    assert_eq!(s.r.hosts[&p].state, HostState::RollingBack);
    let revert: Vec<_> = s
        .pending
        .iter()
        .filter(|a| a.2 == ActionKind::Revert)
        .cloned()
        .collect();
    assert_eq!(revert.len(), 1);
    s.pending.retain(|a| a.2 != ActionKind::Revert);
    for _ in 0..100 {
        if s.r.phase == Phase::Completed {
            break;
        }
        s.answer(|_, _| ActionResult::Ok);
        s.tick(1000);
        s.verdicts(|_| Some(WatchVerdict::Healthy));
    }
    assert_eq!(s.r.phase, Phase::Completed);
    assert!(!s.r.is_settled());
    assert_eq!(s.r.finished_ms, None, "finished with a revert in flight");
    s.now += 500;
    s.pending = revert;
    s.answer(|_, _| ActionResult::Ok);
    assert!(s.r.is_settled());
    assert_eq!(s.r.finished_ms, Some(s.now));
    assert_eq!(s.events("rollout.finished").len(), 1);
    assert_eq!(s.r.hosts[&p].state, HostState::RolledBack);
}

#[test]
fn a_hold_pauses_with_a_critical_alert_until_the_operator_resumes() {
    let mut s = Sim::new(plan_with(&[]), fleet(40));
    s.answer(|_, _| ActionResult::Ok);
    let out = s.step(Observation::Hold {
        reason: "the store could not save a step (disk full)".into(),
        now_ms: 10,
    });
    assert_eq!(s.r.phase, Phase::Paused);
    assert_eq!(
        s.r.pause_reason,
        Some(PauseReason::Held {
            reason: "the store could not save a step (disk full)".into()
        })
    );
    assert_eq!(
        s.r.status().pause_reason.as_deref(),
        Some("the store could not save a step (disk full)")
    );
    assert_eq!(s.events("rollout.held").len(), 1);
    assert!(out.iter().any(|d| matches!(d, Decision::Alert { severity: AlertSeverity::Critical, message, .. } if message.contains("held"))));
    // Held and paused: no wave starts until the operator resumes.
    s.run(30, |_| Some(WatchVerdict::Healthy));
    assert_eq!(s.r.wave, 0);
    s.step(Observation::Operator {
        command: OperatorCommand::Resume,
        now_ms: s.now,
    });
    assert_eq!(s.r.phase, Phase::Running);
    // A hold of a final rollout still alerts, and changes no phase.
    s.step(Observation::Operator {
        command: OperatorCommand::Abort,
        now_ms: s.now,
    });
    let out = s.step(Observation::Hold {
        reason: "again".into(),
        now_ms: s.now,
    });
    assert_eq!(s.r.phase, Phase::Aborted);
    assert!(out.iter().any(|d| matches!(d, Decision::Alert { .. })));
}

#[test]
fn untargeted_rollback_aborts_on_the_first_failure() {
    let plan = plan_with(&[("  pause_when:", "  targeted: false\n  pause_when:")]);
    let mut s = Sim::new(plan, fleet(40));
    let v = s.r.current[0].clone();
    s.run(3, move |h| {
        Some(if *h == v {
            failing("errors")
        } else {
            WatchVerdict::Healthy
        })
    });
    assert_eq!(s.r.phase, Phase::Aborted);
}

#[test]
fn a_restored_state_resumes_without_redispatching_or_losing_actions() {
    // The same script twice: straight through, and with a serialise/deserialise at every step.
    fn script(restore_every_step: bool) -> (Rollout, Vec<Decision>) {
        let mut s = Sim::new(plan_with(&[]), fleet(40));
        let bad = s.r.current[1].clone();
        for round in 0..120 {
            // Answer only half of the pending actions each round, so some are pending at
            // every snapshot.
            let keep = s.pending.split_off(s.pending.len().div_ceil(2));
            s.answer(|_, _| ActionResult::Ok);
            s.pending.extend(keep);
            s.tick(1000);
            let b = bad.clone();
            s.verdicts(|h| {
                Some(if *h == b && round < 5 {
                    failing("errors")
                } else {
                    WatchVerdict::Healthy
                })
            });
            if restore_every_step {
                let json = serde_json::to_string(&s.r).unwrap();
                let restored: Rollout = serde_json::from_str(&json).unwrap();
                assert_eq!(restored, s.r);
                // The server re-sends what is pending; it is exactly what the fake agent holds.
                let resend: BTreeSet<u64> = restored
                    .pending_dispatches()
                    .iter()
                    .map(|d| match d {
                        Decision::Dispatch { action_id, .. } => *action_id,
                        _ => unreachable!(),
                    })
                    .collect();
                let held: BTreeSet<u64> = s.pending.iter().map(|p| p.0).collect();
                assert_eq!(resend, held);
                s.r = restored;
            }
        }
        (s.r, s.log)
    }
    let (a, log_a) = script(false);
    let (b, log_b) = script(true);
    assert_eq!(a, b);
    assert_eq!(log_a, log_b);
    assert_eq!(a.phase, Phase::Completed);
    let applies = log_a
        .iter()
        .filter(|d| {
            matches!(
                d,
                Decision::Dispatch {
                    kind: ActionKind::Apply,
                    ..
                }
            )
        })
        .count();
    assert_eq!(applies, a.hosts.values().filter(|h| h.applied).count());
}

#[test]
fn a_fleet_without_targets_completes_and_an_all_high_fleet_pauses() {
    let (r, _) = Rollout::start("r".into(), plan_with(&[]), vec![], 0);
    assert_eq!(r.phase, Phase::Completed);
    let hosts = vec![host("a", 0.9), host("b", 0.95)];
    let plan = plan_with(&[("high_risk: defer", "high_risk: include_last")]);
    let (mut r, d) = Rollout::start("r".into(), plan, hosts, 0);
    assert_eq!(r.phase, Phase::Paused);
    assert!(d.iter().all(|d| !matches!(d, Decision::Dispatch { .. })));
    let d = r.step(Observation::Operator {
        command: OperatorCommand::Promote,
        now_ms: 1,
    });
    // 10 % of the two hosts after the (empty) pilot, rounded up.
    assert_eq!(
        d.iter()
            .filter(|d| matches!(
                d,
                Decision::Dispatch {
                    kind: ActionKind::Apply,
                    ..
                }
            ))
            .count(),
        1
    );
    assert_eq!(r.wave, 1);
}

#[test]
fn adaptive_waves_grow_while_healthy() {
    let plan = plan_with(&[
        (
            "waves: { fixed: [10, 50, 100] }",
            "waves: { adaptive: { start: 10, factor: 2 } }",
        ),
        ("high_risk: defer", "high_risk: include_last"),
    ]);
    let mut s = Sim::new(plan, fleet(100));
    s.run(400, |_| Some(WatchVerdict::Healthy));
    assert_eq!(s.r.phase, Phase::Completed);
    let sizes: Vec<u64> = s
        .events("wave.started")
        .iter()
        .map(|e| e.figures["size"].as_u64().unwrap())
        .collect();
    assert!(sizes.len() >= 3, "{sizes:?}");
    assert!(
        sizes[1] >= 2 * sizes[0] || sizes[1] as usize == s.r.hosts.len(),
        "{sizes:?}"
    );
    assert_eq!(s.dispatches(ActionKind::Apply).len(), 100);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
    #[test]
    fn random_observations_keep_the_machine_sound(
        probs in proptest::collection::vec(0.0f64..1.0, 1..25),
        ops in proptest::collection::vec((0u8..10, 0usize..64, 0u8..6, 1i64..4000), 1..150),
        policy in 0u8..3,
    ) {
        let policy = ["defer", "remediate_then_defer", "include_last"][policy as usize];
        let plan = plan_with(&[("high_risk: defer", &format!("high_risk: {policy}")), ("  pause_when:", "  abort_on_critical: false\n  pause_when:")]);
        let hosts: Vec<HostInput> = probs.iter().enumerate().map(|(i, p)| {
            let h = host(&format!("h{i}"), *p);
            if i % 3 == 0 { drifted(h, "file:etc/websvc.conf") } else { h }
        }).collect();
        let names: Vec<HostName> = hosts.iter().map(|h| h.name.clone()).collect();
        let mut s = Sim::new(plan, hosts);
        let mut latest: BTreeMap<HostName, VerdictKind> = BTreeMap::new();
        let mut failed_action: BTreeSet<HostName> = BTreeSet::new();
        for (op, pick, v, dt) in ops {
            s.now += dt;
            let now = s.now;
            let obs = match op {
                0..=2 => Observation::Tick { now_ms: now },
                3..=4 if !s.pending.is_empty() => {
                    let (id, h, _) = s.pending.remove(pick % s.pending.len());
                    let result = match v { 0 => ActionResult::Failed { error: "boom".into() }, 1 => ActionResult::TimedOut, _ => ActionResult::Ok };
                    if result != ActionResult::Ok { failed_action.insert(h); }
                    Observation::ActionFinished { action_id: id, result, now_ms: now }
                }
                9 => {
                    // Abort rarely, so most runs also explore the waves.
                    let command = if pick % 16 == 0 {
                        OperatorCommand::Abort
                    } else if pick % 16 == 1 {
                        // A host rolled back by hand, whatever its state.
                        OperatorCommand::RollBack { host: names[(pick / 16) % names.len()].clone() }
                    } else {
                        [OperatorCommand::Pause, OperatorCommand::Resume, OperatorCommand::Promote][pick % 3].clone()
                    };
                    Observation::Operator { command, now_ms: now }
                }
                _ => {
                    let h = names[pick % names.len()].clone();
                    let verdict = match v {
                        0 => failing("x"),
                        1 => WatchVerdict::NoData { since_ms: now - 1, missing: None },
                        2 => WatchVerdict::Critical { reason: "c".into(), figures: json!({}) },
                        _ => WatchVerdict::Healthy,
                    };
                    Observation::HostWatch { host: h, verdict, now_ms: now, data_ms: None }
                }
            };
            let obs_host = match &obs { Observation::HostWatch { host, .. } => Some(host.clone()), _ => None };
            let before: BTreeMap<HostName, HostState> = s.r.hosts.iter().map(|(k, v)| (k.clone(), v.state)).collect();
            let out = s.step(obs);
            for (k, rec) in &s.r.hosts {
                if let Some(v) = rec.last_verdict { latest.insert(k.clone(), v); }
            }
            for d in &out {
                if let Decision::Event(e) = d {
                    if e.kind == "action.overdue" {
                        failed_action.insert(e.host.clone().unwrap());
                    }
                }
            }
            for d in &out {
                if let Decision::Dispatch { host, kind: ActionKind::Revert, .. } = d {
                    // A revert comes from a failing verdict on that host, a failed action or
                    // an abort; never from no data.
                    let l = latest.get(host).copied();
                    proptest::prop_assert!(
                        s.r.phase == Phase::Aborted
                            || failed_action.contains(host)
                            || matches!(l, Some(VerdictKind::Failing) | Some(VerdictKind::Critical)),
                        "revert of {host} with latest verdict {l:?}"
                    );
                }
                if let Decision::Event(e) = d {
                    if e.kind == "wave.passed" && e.figures["forced_by_operator"] == json!(false) {
                        for (k, rec) in &s.r.hosts {
                            if before.get(k) == Some(&HostState::Baking) && rec.state == HostState::Updated {
                                proptest::prop_assert_eq!(rec.last_verdict, Some(VerdictKind::Healthy), "{} promoted without a healthy verdict", k);
                            }
                        }
                    }
                }
            }
            let _ = obs_host;
            // Invariants.
            let applies = s.dispatches(ActionKind::Apply);
            let unique: BTreeSet<_> = applies.iter().collect();
            proptest::prop_assert_eq!(unique.len(), applies.len(), "a host was applied twice");
            for rec in s.r.hosts.values() {
                if rec.wave == Some(0) {
                    proptest::prop_assert!(rec.band != Band::High, "high-risk {} in the pilot", rec.name);
                }
            }
            // Every pending action was dispatched and not yet answered; the only ones the engine
            // drops on its own are overdue (counted as timed out).
            let held: BTreeSet<u64> = s.pending.iter().map(|p| p.0).collect();
            proptest::prop_assert!(s.r.pending.keys().all(|id| held.contains(id)));
            let engine_pending = s.r.pending.clone();
            s.pending.retain(|p| engine_pending.contains_key(&p.0));
            // Never finished while an action is in flight.
            if s.r.finished_ms.is_some() {
                proptest::prop_assert!(s.r.pending.is_empty(), "finished with {} actions pending", s.r.pending.len());
                proptest::prop_assert!(s.r.phase.is_final());
            }
        }
        // Every action the engine dispatched ends reported or timed out: abort, then let the
        // clock run past every timeout, answering nothing. The rollout settles, and only then
        // is it finished, once.
        s.step(Observation::Operator { command: OperatorCommand::Abort, now_ms: s.now });
        for _ in 0..4 {
            s.tick(24 * 3600 * 1000);
        }
        proptest::prop_assert!(s.r.is_settled(), "still {} pending after every timeout", s.r.pending.len());
        proptest::prop_assert!(s.r.finished_ms.is_some());
        // `rollout.finished` marks a settle that came after the phase turned final; a rollout
        // that completed with nothing in flight was finished at once.
        let finished_events = s.events("rollout.finished").len();
        proptest::prop_assert!(finished_events <= 1);
        if finished_events == 0 {
            proptest::prop_assert_eq!(s.r.phase, Phase::Completed);
        }
        let mut answered: BTreeSet<u64> = BTreeSet::new();
        for d in &s.log {
            if let Decision::Event(e) = d {
                if e.kind == "action.overdue" {
                    answered.insert(e.figures["action_id"].as_u64().unwrap());
                }
            }
        }
        answered.extend(s.answered.iter().copied());
        for d in &s.log {
            if let Decision::Dispatch { action_id, .. } = d {
                proptest::prop_assert!(answered.contains(action_id), "action {} never ended", action_id);
            }
        }
        for h in s.r.hosts.values() {
            proptest::prop_assert!(!matches!(h.state, HostState::Applying | HostState::RollingBack | HostState::Remediating | HostState::Waiting), "{} left {:?}", h.name, h.state);
        }
        // Serialisation of any reachable state round-trips.
        let json = serde_json::to_string(&s.r).unwrap();
        let back: Rollout = serde_json::from_str(&json).unwrap();
        proptest::prop_assert_eq!(back, s.r.clone());
        let _ = s.r.report();
        let _ = s.r.status();
    }
}

/// The worked example of docs/rollout.md, "Selecting the pilot".
#[test]
fn the_documented_pilot_example() {
    let ps = [0.02, 0.05, 0.08, 0.10, 0.15, 0.25, 0.30, 0.42, 0.55, 0.80];
    let hosts: Vec<HostInput> = ps
        .iter()
        .enumerate()
        .map(|(i, p)| host(&format!("h{}", i + 1), *p))
        .collect();
    let (r, _) = Rollout::start("r".into(), plan_with(&[]), hosts, 0);
    let ev = r
        .events
        .iter()
        .find(|e| e.kind == "pilot.selected")
        .unwrap();
    assert_eq!(ev.figures["spread"], json!(0.2394));
    assert_eq!(ev.figures["size_for_spread"], json!(5));
    assert_eq!(ev.figures["from_low"], json!(4));
    assert_eq!(ev.figures["from_moderate"], json!(1));
    assert_eq!(ev.figures["hosts"], json!(["h1", "h2", "h4", "h5", "h7"]));
    assert_eq!(r.queue, vec![hn("h3"), hn("h6"), hn("h8")]);
    assert_eq!(r.hosts[&hn("h9")].state, HostState::HeldBack);
    assert_eq!(r.hosts[&hn("h10")].state, HostState::HeldBack);
}

#[test]
fn healthy_verdicts_on_data_older_than_the_bake_end_never_promote() {
    // A bake (10 s) shorter than no_data.after (30 s): a host whose samples stopped during
    // the bake is still called healthy by its watcher until no_data.after has passed. The
    // engine must wait for samples that reach the end of the bake, and never promote.
    let plan = plan_with(&[("no_data: { after: 5s }", "no_data: { after: 30s }")]);
    let mut s = Sim::new(plan, fleet(40));
    let lagging = s.r.current[0].clone();
    s.answer(|_, _| ActionResult::Ok);
    let applied = s.now;
    for _ in 0..25 {
        s.tick(1_000);
        let now = s.now;
        for h in s.watched() {
            // The lagging host's newest sample is from 2 s after its apply.
            let data_ms = if h == lagging { applied + 2_000 } else { now };
            s.step(Observation::HostWatch {
                host: h,
                verdict: WatchVerdict::Healthy,
                now_ms: now,
                data_ms: Some(data_ms),
            });
        }
    }
    assert_eq!(s.r.wave, 0, "the pilot is not promoted on stale samples");
    assert_eq!(s.r.hosts[&lagging].state, HostState::Baking);
    // Its samples catch up past the bake end: the wave passes on the next tick.
    let now = s.now;
    s.step(Observation::HostWatch {
        host: lagging.clone(),
        verdict: WatchVerdict::Healthy,
        now_ms: now,
        data_ms: Some(now),
    });
    s.tick(1_000);
    assert_eq!(s.r.wave, 1, "promoted once the samples cover the bake");
}

#[test]
fn a_state_saved_with_the_pause_reason_as_text_still_loads_typed() {
    let mut s = Sim::new(plan_with(&[]), fleet(40));
    s.step(Observation::Operator {
        command: OperatorCommand::Pause,
        now_ms: 10,
    });
    assert_eq!(s.r.pause_reason, Some(PauseReason::Operator));
    let saved = serde_json::to_value(&s.r).unwrap();
    assert_eq!(saved["pause_reason"], json!({"kind": "operator"}));
    let restored: Rollout = serde_json::from_value(saved.clone()).unwrap();
    assert_eq!(restored, s.r);

    // What versions before the typed reason saved: the sentence itself.
    let web = hn("web-07");
    let cases = [
        (
            "failures spread: 3 hosts failed, 1 of the 10 in wave 2",
            PauseReason::FailuresSpread {
                failed_total: 3,
                failed_in_wave: 1,
                wave_size: 10,
                wave: 2,
            },
        ),
        (
            "the revert of web-07 failed",
            PauseReason::RevertFailed { host: web.clone() },
        ),
        (
            "no data from web-07",
            PauseReason::NoData {
                host: web,
                missing: None,
            },
        ),
        ("paused by the operator", PauseReason::Operator),
        (
            "no host is eligible for the pilot (every target is high risk)",
            PauseReason::NoEligiblePilot,
        ),
        (
            "the store could not save a step (disk full)",
            PauseReason::Held {
                reason: "the store could not save a step (disk full)".into(),
            },
        ),
    ];
    for (text, typed) in cases {
        let mut old = saved.clone();
        old["pause_reason"] = json!(text);
        let loaded: Rollout = serde_json::from_value(old).unwrap();
        assert_eq!(loaded.pause_reason.as_ref(), Some(&typed), "{text}");
        assert_eq!(typed.to_string(), text, "the printed sentence is unchanged");
        assert_eq!(loaded.status().pause_reason.as_deref(), Some(text));
        assert_eq!(loaded.report().pause.as_ref(), Some(&typed));
    }
    // No reason, saved as null or not at all.
    for none in [Some(Value::Null), None] {
        let mut old = saved.clone();
        match none {
            Some(v) => old["pause_reason"] = v,
            None => {
                old.as_object_mut().unwrap().remove("pause_reason");
            }
        }
        let loaded: Rollout = serde_json::from_value(old).unwrap();
        assert_eq!(loaded.pause_reason, None);
    }
    // A typed reason of an unknown kind is refused, not read as text.
    let mut bad = saved.clone();
    bad["pause_reason"] = json!({"kind": "solar_flare"});
    assert!(serde_json::from_value::<Rollout>(bad).is_err());

    // A rollout loaded from the old text resumes as any other.
    let mut old = saved;
    old["pause_reason"] = json!("failures spread: 3 hosts failed, 1 of the 10 in wave 2");
    s.r = serde_json::from_value(old).unwrap();
    s.step(Observation::Operator {
        command: OperatorCommand::Resume,
        now_ms: 20,
    });
    assert_eq!(
        (s.r.phase, s.r.pause_reason.clone()),
        (Phase::Running, None)
    );
}

/// Issue 15: "Completed: 16 hosts, 0 failed." with 9 of them held back never said so, and
/// "Wave 1 passed …: 0 hosts updated, 3 failed." called a wave passed whose hosts all failed.
#[test]
fn the_messages_count_held_back_hosts_and_do_not_call_a_failed_wave_passed() {
    let mut s = Sim::new(plan_with(&[]), fleet(40));
    s.run(200, |_| Some(WatchVerdict::Healthy));
    assert_eq!(s.r.phase, Phase::Completed);
    let held =
        s.r.hosts
            .values()
            .filter(|h| h.state == HostState::HeldBack)
            .count();
    let updated =
        s.r.hosts
            .values()
            .filter(|h| h.state == HostState::Updated)
            .count();
    assert!(held > 0, "the fleet has high-risk hosts");
    let done = &s.events("rollout.completed")[0];
    assert_eq!(
        done.reason,
        format!("Completed: {updated} of 40 hosts updated, {held} held back, 0 failed.")
    );
    // A healthy wave passed, with every host updated.
    let first = &s.events("wave.passed")[0];
    assert!(
        first.reason.starts_with("Wave 0 passed its 10s bake: ")
            && first.reason.ends_with(" updated."),
        "{}",
        first.reason
    );

    // A pilot of two where both fail: the wave is over, not passed.
    let plan = plan_with(&[
        ("pilot: { min: 2, max: 5 }", "pilot: { min: 2, max: 2 }"),
        (
            "pause_when: { hosts: 3, wave_pct: 50 }",
            "pause_when: { hosts: 30 }",
        ),
    ]);
    let mut s = Sim::new(
        plan,
        vec![
            host("web-a", 0.01),
            host("web-b", 0.02),
            host("web-c", 0.03),
        ],
    );
    let pilot: BTreeSet<HostName> = s.r.current.iter().cloned().collect();
    assert_eq!(pilot.len(), 2);
    s.run(30, move |h| {
        Some(if pilot.contains(h) {
            failing("errors")
        } else {
            WatchVerdict::Healthy
        })
    });
    let wave0 = &s.events("wave.passed")[0];
    assert_eq!(
        wave0.reason,
        "Wave 0 finished its 10s bake: 0 of 2 hosts updated, 2 failed."
    );
    // One host in the next wave: singular.
    let started = &s.events("wave.started")[0];
    assert!(
        started.reason.starts_with("Wave 1 starts on 1 host ("),
        "{}",
        started.reason
    );
}

/// Issue 15: quickstart printed "slowing down" right after "Paused": a failure that came
/// while the rollout was paused reached the slow-down limit. The halving waits for the resume,
/// and the message says so.
#[test]
fn a_slow_down_reached_while_paused_says_it_waits_for_the_resume() {
    let plan = plan_with(&[
        ("pilot: { min: 2, max: 5 }", "pilot: { min: 5, max: 5 }"),
        (
            "pause_when: { hosts: 3, wave_pct: 50 }",
            "pause_when: { hosts: 1 }",
        ),
    ]);
    let mut s = Sim::new(plan, fleet(40));
    let pilot = s.r.current.clone();
    let first = pilot[0].clone();
    let f = first.clone();
    s.run(4, move |h| {
        Some(if *h == f {
            failing("errors")
        } else {
            WatchVerdict::Healthy
        })
    });
    assert_eq!(s.r.phase, Phase::Paused);
    assert!(s.events("rollout.slowed_down").is_empty());
    let second = pilot[1].clone();
    let g = second.clone();
    s.run(4, move |h| {
        Some(if *h == g {
            failing("errors")
        } else {
            WatchVerdict::Healthy
        })
    });
    let slowed = s.events("rollout.slowed_down");
    assert_eq!(slowed.len(), 1);
    assert_eq!(
        slowed[0].reason,
        "2 hosts failed: once the rollout is resumed, its next wave is halved."
    );
}

#[test]
fn an_operator_rolls_back_one_baking_host_and_only_an_updated_one() {
    let mut s = Sim::new(plan_with(&[]), fleet(40));
    s.answer(|_, _| ActionResult::Ok);
    let pilot = s.r.current.clone();
    let target = pilot[0].clone();
    assert_eq!(s.r.hosts[&target].state, HostState::Baking);
    assert_eq!(s.r.can_roll_back(&target), Ok(()));
    // A host still waiting for its wave, and one the rollout does not hold, are refused with
    // a reason, and the engine ignores the command if it comes anyway.
    let waiting =
        s.r.hosts
            .values()
            .find(|h| h.state == HostState::Waiting)
            .map(|h| h.name.clone())
            .expect("a waiting host");
    let why = s.r.can_roll_back(&waiting).unwrap_err();
    assert!(why.contains("waiting"), "{why}");
    let stranger = HostName::new("not-in-it").unwrap();
    let why = s.r.can_roll_back(&stranger).unwrap_err();
    assert!(why.contains("not in rollout r-1"), "{why}");
    s.step(Observation::Operator {
        command: OperatorCommand::RollBack {
            host: waiting.clone(),
        },
        now_ms: 500,
    });
    assert_eq!(s.r.hosts[&waiting].state, HostState::Waiting);
    assert_eq!(s.events("operator.ignored").len(), 1);

    s.step(Observation::Operator {
        command: OperatorCommand::RollBack {
            host: target.clone(),
        },
        now_ms: 1000,
    });
    assert_eq!(s.r.hosts[&target].state, HostState::RollingBack);
    assert_eq!(s.dispatches(ActionKind::Revert), vec![target.clone()]);
    let failed = s.events("host.failed");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].host.as_ref(), Some(&target));
    assert!(failed[0].reason.contains("by the operator"));
    // The other pilot hosts go on baking.
    for h in pilot.iter().skip(1) {
        assert_eq!(s.r.hosts[h].state, HostState::Baking);
    }
    s.answer(|_, _| ActionResult::Ok);
    assert_eq!(s.r.hosts[&target].state, HostState::RolledBack);
    let why = s.r.can_roll_back(&target).unwrap_err();
    assert!(why.contains("rolled_back"), "{why}");
}

#[test]
fn operator_commands_keep_their_wire_names() {
    assert_eq!(
        serde_json::to_value(OperatorCommand::Pause).unwrap(),
        json!("pause")
    );
    let rb = OperatorCommand::RollBack {
        host: HostName::new("web-01").unwrap(),
    };
    let v = serde_json::to_value(&rb).unwrap();
    assert_eq!(v, json!({"roll_back": {"host": "web-01"}}));
    assert_eq!(serde_json::from_value::<OperatorCommand>(v).unwrap(), rb);
}
