use super::*;
use bellwether_model::shadow::ShadowSpec;
use proptest::prelude::*;

const MIN: i64 = 60_000;

fn spec(kind: &str, webhook: bool) -> ShadowSpec {
    let mut v = json!({
        "name": "orders", "host": "db-1",
        "resource": {"kind": "sqlite", "path": "srv/orders.db"},
        "type": kind, "dir": "var/shadow/orders",
        "points_every": "1m",
        "locations": [{"id": "primary", "path": "srv/orders.db", "dependencies": 3},
                      {"id": "cell-b", "path": "srv/b/orders.db"},
                      {"id": "cell-c", "path": "srv/c/orders.db"}],
        "routing": {"link": "srv/current.db"}
    });
    if webhook {
        v["webhook"] = json!("http://127.0.0.1:9/hook");
    }
    serde_json::from_value(v).unwrap()
}

/// A driver that answers actions as a healthy agent would.
struct H {
    e: ShadowEngine,
    now: i64,
    seq: u64,
    log: Vec<Event>,
}

impl H {
    fn new(kind: &str) -> (H, Output) {
        let (e, out) = ShadowEngine::new(spec(kind, true), 0).unwrap();
        let h = H {
            e,
            now: 0,
            seq: 0,
            log: out.events.clone(),
        };
        (h, out)
    }

    fn step(&mut self, input: Input) -> Output {
        let out = self.e.step(input, self.now);
        self.log.extend(out.events.clone());
        out
    }

    fn ok(&mut self, a: &Action, output: Value) -> Output {
        self.step(Input::ActionDone {
            action_id: a.id(),
            ok: true,
            output,
            error: None,
        })
    }

    fn fail(&mut self, a: &Action, output: Value) -> Output {
        self.step(Input::ActionDone {
            action_id: a.id(),
            ok: false,
            output,
            error: Some("it broke".into()),
        })
    }

    /// Answers a point action with a point consistent at `at`.
    fn point_done(&mut self, a: &Action, at: i64) -> Output {
        self.seq += 1;
        let p = json!({"point": {"id": format!("p{}", self.seq), "seq": self.seq, "consistent_at_ms": at, "reason": "schedule"}});
        self.ok(a, p)
    }

    fn observe(&mut self, at: i64, obs: &[(&str, bool, f64)]) -> Output {
        self.step(Input::Observe {
            at_ms: at,
            observations: obs
                .iter()
                .map(|(l, up, lat)| LocationObservation {
                    location: l.to_string(),
                    up: *up,
                    health: None,
                    latency_ms: Some(*lat),
                    errors: Some(0),
                    rollback_bytes: None,
                })
                .collect(),
        })
    }

    fn names(&self) -> Vec<&str> {
        self.log.iter().map(|e| e.name.as_str()).collect()
    }
}

fn only<'a>(out: &'a Output, kind: &str) -> &'a Action {
    let found: Vec<&Action> = out.actions.iter().filter(|a| a.kind() == kind).collect();
    assert_eq!(found.len(), 1, "one {kind} in {:?}", out.actions);
    found[0]
}

/// Started, routed to the primary, with points at 1, 2 and 3 minutes.
fn running(kind: &str) -> H {
    let (mut h, out) = H::new(kind);
    let start = only(&out, "start").clone();
    let route = only(&out, "route").clone();
    h.ok(&route, json!({}));
    let out = h.ok(&start, json!({}));
    // The first scheduled point comes as soon as it runs.
    let p = only(&out, "point").clone();
    h.point_done(&p, 0);
    for m in 1..=3 {
        h.now = m * MIN;
        let out = h.step(Input::Tick { at_ms: h.now });
        let p = only(&out, "point").clone();
        h.point_done(&p, h.now);
    }
    h
}

#[test]
fn points_follow_the_schedule_and_one_is_in_flight_at_a_time() {
    let mut h = running("full");
    assert_eq!(h.e.points().count(), 4);
    h.now = 4 * MIN;
    let out = h.step(Input::Tick { at_ms: h.now });
    let p = only(&out, "point").clone();
    // Still in flight a minute later: no second one.
    h.now = 5 * MIN;
    let out = h.step(Input::Tick { at_ms: h.now });
    assert!(out.actions.is_empty(), "{:?}", out.actions);
    h.point_done(&p, 4 * MIN);
    let out = h.step(Input::Tick { at_ms: h.now });
    only(&out, "point");
}

#[test]
fn a_point_nobody_followed_starts_the_shadow_again_once() {
    let mut h = running("transactional");
    // An agent that follows the shadow says so, or says nothing (older agents): no start.
    for answer in [json!(true), Value::Null] {
        h.now += MIN;
        let out = h.step(Input::Tick { at_ms: h.now });
        let p = only(&out, "point").clone();
        let mut body = json!({"point": {"id": format!("f{}", h.now), "seq": 100 + h.now, "consistent_at_ms": h.now, "reason": "schedule"}});
        if !answer.is_null() {
            body["following"] = answer;
        }
        let out = h.ok(&p, body);
        assert!(out.actions.is_empty(), "{:?}", out.actions);
    }
    // The agent restarted without its record: the point was taken, and nobody follows.
    let not_followed = |h: &mut H, id: &str| {
        h.now += MIN;
        let out = h.step(Input::Tick { at_ms: h.now });
        let p = only(&out, "point").clone();
        h.ok(
            &p,
            json!({"following": false, "point": {"id": id, "seq": 200 + h.now, "consistent_at_ms": h.now, "reason": "schedule"}}),
        )
    };
    let out = not_followed(&mut h, "lost-1");
    let start = only(&out, "start").clone();
    assert!(h.names().contains(&"follower.lost"), "{:?}", h.names());
    assert!(
        h.e.points().any(|p| p.id == "lost-1"),
        "the point still counts"
    );
    // Another such answer while the start is in flight asks for no second start.
    let out = not_followed(&mut h, "lost-2");
    assert!(out.actions.is_empty(), "{:?}", out.actions);
    // Started: the shadow runs and points go on as before.
    h.ok(&start, json!({"running": true}));
    assert_eq!(h.e.phase(), Phase::Running);
    h.now += MIN;
    let out = h.step(Input::Tick { at_ms: h.now });
    only(&out, "point");
}

#[test]
fn a_prediction_takes_a_point_once_per_interval() {
    let mut h = running("full");
    h.now = 3 * MIN + 10_000;
    let pred = Prediction {
        source: RiskSource::FailureModel,
        detail: "model v3".into(),
        probability: 0.6,
        expected_failure_ms: h.now + 30_000,
        location: None,
    };
    let out = h.step(Input::Predict {
        at_ms: h.now,
        prediction: pred.clone(),
    });
    let p = only(&out, "point").clone();
    assert!(
        matches!(&p, Action::Point { reason: PointReason::Predicted { probability, .. }, .. } if *probability == 0.6)
    );
    h.point_done(&p, h.now);
    h.now += 5_000;
    let out = h.step(Input::Predict {
        at_ms: h.now,
        prediction: pred,
    });
    assert!(out.actions.is_empty(), "{:?}", out.actions);
    // Below the rollback threshold: no rollback.
    assert!(!h.names().contains(&"rollback.started"));
}

#[test]
fn a_sure_prediction_rolls_back_to_the_predicted_point_by_merit() {
    let mut h = running("full");
    // cell-b is fast, cell-c slow; the primary is the one predicted to fail.
    h.now = 3 * MIN + 20_000;
    h.observe(
        h.now,
        &[
            ("primary", true, 5.0),
            ("cell-b", true, 2.0),
            ("cell-c", true, 80.0),
        ],
    );
    let out = h.step(Input::Predict {
        at_ms: h.now,
        prediction: Prediction {
            source: RiskSource::Detector,
            detail: "two-scale-entropy on latency".into(),
            probability: 0.97,
            expected_failure_ms: h.now + 60_000,
            location: None,
        },
    });
    // It waits for the predicted point before choosing.
    let p = only(&out, "point").clone();
    assert!(!out.actions.iter().any(|a| a.kind() == "restore"));
    assert_eq!(
        h.e.status().rollback.unwrap().step,
        RollbackStep::AwaitingPoint
    );
    h.now += 100;
    let out = h.point_done(&p, 3 * MIN + 20_000);
    let r = only(&out, "restore").clone();
    match &r {
        Action::Restore { location, to, .. } => {
            assert_eq!(location, "cell-b");
            assert_eq!(to, &RestoreTo::Point("p5".into()));
        }
        other => panic!("{other:?}"),
    }
    // Idempotent while in progress: a failure now changes nothing.
    let out = h.step(Input::Failure {
        at_ms: h.now,
        failed_at_ms: h.now,
        location: None,
        reason: "disk I/O error".into(),
    });
    assert!(out.actions.is_empty());
    assert!(h.names().contains(&"rollback.in_progress"));
    let out = h.ok(&r, json!({"restored_to": "p5"}));
    let route = only(&out, "route").clone();
    let out = h.ok(&route, json!({}));
    only(&out, "notify");
    let s = h.e.status();
    assert_eq!(s.routed, "cell-b");
    assert!(s.rollback.is_none());
    assert_eq!(s.history.len(), 1);
    assert!(s.history[0].ok);
    assert_eq!(s.history[0].point.as_ref().unwrap().id, "p5");
    assert!(h.e.pending().is_empty());
}

#[test]
fn a_failure_restores_the_latest_point_before_it_never_after() {
    let mut h = running("differential");
    h.now = 3 * MIN + 1;
    h.observe(h.now, &[("primary", true, 5.0), ("cell-b", true, 5.0)]);
    // Failed at 2.5 min: the point at 2 min, not the one at 3 min.
    let out = h.step(Input::Failure {
        at_ms: h.now,
        failed_at_ms: 2 * MIN + 30_000,
        location: Some("primary".into()),
        reason: "corrupt page".into(),
    });
    match only(&out, "restore") {
        Action::Restore { location, to, .. } => {
            assert_eq!(location, "cell-b");
            assert_eq!(to, &RestoreTo::Point("p3".into()));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_transactional_shadow_restores_to_the_failure_time() {
    let mut h = running("transactional");
    h.now = 3 * MIN + 1;
    h.observe(h.now, &[("primary", true, 5.0), ("cell-b", true, 5.0)]);
    let out = h.step(Input::Failure {
        at_ms: h.now,
        failed_at_ms: 2 * MIN + 30_000,
        location: None,
        reason: "bad migration".into(),
    });
    match only(&out, "restore") {
        Action::Restore { to, .. } => assert_eq!(to, &RestoreTo::Time(2 * MIN + 30_000)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn no_data_and_no_point_do_nothing_but_alert() {
    let mut h = running("full");
    h.now = 4 * MIN;
    let out = h.step(Input::Failure {
        at_ms: h.now,
        failed_at_ms: h.now,
        location: None,
        reason: "x".into(),
    });
    assert!(!out
        .actions
        .iter()
        .any(|a| matches!(a, Action::Restore { .. } | Action::Route { .. })));
    assert!(out
        .events
        .iter()
        .any(|e| e.name == "rollback.no_data" && e.alert));
    assert_eq!(h.e.phase(), Phase::Paused);

    let mut h = running("full");
    h.now = 4 * MIN;
    h.observe(h.now, &[("primary", true, 5.0), ("cell-b", true, 5.0)]);
    let out = h.step(Input::Failure {
        at_ms: h.now,
        failed_at_ms: 1, // before any point but the one at 0 ms
        location: None,
        reason: "x".into(),
    });
    // The point at 0 ms is at or before 1 ms.
    only(&out, "restore");
    let mut h = running("full");
    h.e.st.points.clear();
    h.now = 4 * MIN;
    h.observe(h.now, &[("primary", true, 5.0), ("cell-b", true, 5.0)]);
    let out = h.step(Input::Failure {
        at_ms: h.now,
        failed_at_ms: h.now,
        location: None,
        reason: "x".into(),
    });
    assert!(out.actions.iter().all(|a| a.kind() != "restore"));
    assert!(out
        .events
        .iter()
        .any(|e| e.name == "rollback.no_point" && e.alert));
}

#[test]
fn a_damaged_point_is_skipped_for_the_next_older() {
    let mut h = running("full");
    h.now = 4 * MIN;
    h.observe(h.now, &[("primary", true, 5.0), ("cell-b", true, 5.0)]);
    let out = h.step(Input::Failure {
        at_ms: h.now,
        failed_at_ms: h.now,
        location: None,
        reason: "x".into(),
    });
    let r = only(&out, "restore").clone();
    let out = h.fail(&r, json!({"point_unusable": true}));
    match only(&out, "restore") {
        Action::Restore { to, .. } => assert_eq!(to, &RestoreTo::Point("p3".into())),
        other => panic!("{other:?}"),
    }
    assert!(h.e.points().all(|p| p.id != "p4"));
}

#[test]
fn the_routed_location_down_is_a_failure_after_down_after() {
    let mut h = running("full");
    for i in 0..3 {
        h.now = 3 * MIN + 1000 * (i + 1);
        let out = h.observe(
            h.now,
            &[
                ("primary", false, 0.0),
                ("cell-b", true, 3.0),
                ("cell-c", true, 3.0),
            ],
        );
        let restores = out.actions.iter().filter(|a| a.kind() == "restore").count();
        assert_eq!(restores, usize::from(i == 2), "observation {i}");
    }
    let rb = h.e.status().rollback.unwrap();
    assert_eq!(rb.trigger, Trigger::Down);
    assert_eq!(rb.failure_ms, 3 * MIN + 1000);
    assert_eq!(rb.excluded.as_deref(), Some("primary"));
}

#[test]
fn automatic_rollbacks_keep_their_gap_and_the_operator_is_not_bound_by_it() {
    let mut h = running("full");
    h.now = 4 * MIN;
    h.observe(h.now, &[("primary", true, 5.0), ("cell-b", true, 5.0)]);
    let out = h.step(Input::Failure {
        at_ms: h.now,
        failed_at_ms: h.now,
        location: None,
        reason: "x".into(),
    });
    let r = only(&out, "restore").clone();
    let out = h.ok(&r, json!({}));
    let route = only(&out, "route").clone();
    h.ok(&route, json!({}));
    h.now += 1000;
    h.observe(h.now, &[("primary", true, 5.0), ("cell-b", true, 5.0)]);
    let out = h.step(Input::Failure {
        at_ms: h.now,
        failed_at_ms: h.now,
        location: None,
        reason: "y".into(),
    });
    assert!(out.actions.iter().all(|a| a.kind() != "restore"));
    assert!(out.events.iter().any(|e| e.name == "rollback.gap"));
    let out = h.step(Input::Command(Command::Rollback {
        to: Some(Target::Point("p2".into())),
        location: Some("cell-c".into()),
        reason: "drill".into(),
    }));
    match only(&out, "restore") {
        Action::Restore { location, to, .. } => {
            assert_eq!(location, "cell-c");
            assert_eq!(to, &RestoreTo::Point("p2".into()));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_failed_route_is_retried_then_the_rollback_fails_and_pauses() {
    let mut h = running("full");
    h.now = 4 * MIN;
    h.observe(h.now, &[("primary", true, 5.0), ("cell-b", true, 5.0)]);
    let out = h.step(Input::Failure {
        at_ms: h.now,
        failed_at_ms: h.now,
        location: None,
        reason: "x".into(),
    });
    let r = only(&out, "restore").clone();
    let mut out = h.ok(&r, json!({}));
    for _ in 0..MAX_ROUTE_ATTEMPTS {
        let route = only(&out, "route").clone();
        out = h.fail(&route, json!({}));
    }
    assert!(out
        .events
        .iter()
        .any(|e| e.name == "rollback.failed" && e.alert));
    only(&out, "notify");
    assert_eq!(h.e.phase(), Phase::Paused);
    assert_eq!(h.e.status().routed, "primary");
}

#[test]
fn remove_stops_after_the_rollback_and_settles() {
    let mut h = running("full");
    h.now = 4 * MIN;
    h.observe(h.now, &[("primary", true, 5.0), ("cell-b", true, 5.0)]);
    let out = h.step(Input::Failure {
        at_ms: h.now,
        failed_at_ms: h.now,
        location: None,
        reason: "x".into(),
    });
    let r = only(&out, "restore").clone();
    let out = h.step(Input::Command(Command::Remove {
        reason: "done".into(),
    }));
    assert!(out.actions.is_empty());
    let out = h.ok(&r, json!({}));
    let route = only(&out, "route").clone();
    let out = h.ok(&route, json!({}));
    // The scheduled point the observation asked for is still in flight: the stop waits.
    assert!(out.actions.iter().all(|a| a.kind() != "stop"));
    let p =
        h.e.pending()
            .into_iter()
            .find(|a| a.kind() == "point")
            .unwrap();
    let out = h.point_done(&p, h.now);
    let stop = only(&out, "stop").clone();
    h.ok(&stop, json!({}));
    assert_eq!(h.e.phase(), Phase::Removed);
    assert!(h.e.pending().is_empty());
}

#[test]
fn a_stop_the_agent_did_not_take_is_retried_until_the_window_ends() {
    let mut h = running("transactional");
    h.now = 4 * MIN;
    let out = h.step(Input::Command(Command::Remove {
        reason: "decommissioned".into(),
    }));
    let stop = only(&out, "stop").clone();
    // The host's agent is away: the stop fails, the shadow stays removing, and nothing is
    // sent again before the backoff (points every minute: 2 minutes after one failure).
    let out = h.fail(&stop, Value::Null);
    assert!(out.actions.is_empty(), "{:?}", out.actions);
    assert_eq!(h.e.phase(), Phase::Removing);
    h.now += MIN;
    let out = h.step(Input::Tick { at_ms: h.now });
    assert!(out.actions.is_empty(), "{:?}", out.actions);
    h.now += MIN;
    let out = h.step(Input::Tick { at_ms: h.now });
    let stop = only(&out, "stop").clone();
    assert!(h.names().contains(&"stop.retried"), "{:?}", h.names());
    // The state round-trips with a retry pending.
    let back = ShadowEngine::restore(h.e.state()).unwrap();
    assert_eq!(back, h.e);
    // The agent is back: the stop is taken and the removal settles.
    h.ok(&stop, json!({"stopped": true}));
    assert_eq!(h.e.phase(), Phase::Removed);

    // Past the window, a failed stop settles as removed all the same, saying what remains.
    let mut h = running("full");
    h.now = 4 * MIN;
    let out = h.step(Input::Command(Command::Remove {
        reason: "gone".into(),
    }));
    let mut stop = only(&out, "stop").clone();
    loop {
        h.now += 6 * MIN;
        h.fail(&stop, Value::Null);
        if h.e.phase() == Phase::Removed {
            break;
        }
        assert!(
            h.now < 4 * MIN + STOP_RETRY_FOR_MS + 12 * MIN,
            "never settled"
        );
        h.now += MAX_START_BACKOFF_MS;
        let out = h.step(Input::Tick { at_ms: h.now });
        stop = only(&out, "stop").clone();
    }
    assert!(h.now >= 4 * MIN + STOP_RETRY_FOR_MS);
    let last = h
        .log
        .iter()
        .rev()
        .find(|e| e.name == "stop.failed")
        .unwrap();
    assert!(
        last.reason.contains("removed all the same"),
        "{}",
        last.reason
    );
    assert!(
        last.reason.contains("STATE_DIR/shadows/orders.json"),
        "{}",
        last.reason
    );
}

#[test]
fn the_state_round_trips_mid_rollback() {
    let mut h = running("full");
    h.now = 4 * MIN;
    h.observe(h.now, &[("primary", true, 5.0), ("cell-b", true, 5.0)]);
    let out = h.step(Input::Failure {
        at_ms: h.now,
        failed_at_ms: h.now,
        location: None,
        reason: "x".into(),
    });
    let r = only(&out, "restore").clone();
    let back = ShadowEngine::restore(h.e.state()).unwrap();
    assert_eq!(back, h.e);
    h.e = back;
    let out = h.ok(&r, json!({}));
    only(&out, "route");
}

#[test]
fn bad_predictions_are_refused() {
    let mut h = running("full");
    for p in [f64::NAN, -0.1, 1.5] {
        let out = h.step(Input::Predict {
            at_ms: h.now,
            prediction: Prediction {
                source: RiskSource::External,
                detail: String::new(),
                probability: p,
                expected_failure_ms: 1,
                location: None,
            },
        });
        assert!(out.actions.is_empty());
        assert_eq!(out.events[0].name, "prediction.refused");
    }
    let out = h.step(Input::Predict {
        at_ms: h.now,
        prediction: Prediction {
            source: RiskSource::External,
            detail: String::new(),
            probability: 0.99,
            expected_failure_ms: 1,
            location: Some("mars".into()),
        },
    });
    assert_eq!(out.events[0].name, "prediction.refused");
}

// ---- Properties over arbitrary input sequences.

#[derive(Debug, Clone)]
enum Op {
    Tick(u16),
    Observe(u16, Vec<(u8, bool, u16, u8)>),
    Predict(u16, u8, u16),
    Failure(u16, u16, Option<u8>),
    /// Answer the n-th pending action: ok?, unusable point?
    Answer(u8, bool, bool),
    Rollback(Option<u16>, Option<u8>),
    Pause,
    Resume,
    Remove,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u16..600).prop_map(Op::Tick),
        (
            0u16..600,
            proptest::collection::vec((0u8..4, any::<bool>(), 0u16..500, 0u8..5), 0..4)
        )
            .prop_map(|(t, v)| Op::Observe(t, v)),
        (0u16..600, 0u8..=100, 0u16..600).prop_map(|(t, p, f)| Op::Predict(t, p, f)),
        (0u16..600, 0u16..600, proptest::option::of(0u8..4))
            .prop_map(|(t, f, l)| Op::Failure(t, f, l)),
        (any::<u8>(), any::<bool>(), any::<bool>()).prop_map(|(n, ok, u)| Op::Answer(n, ok, u)),
        (
            proptest::option::of(0u16..600),
            proptest::option::of(0u8..4)
        )
            .prop_map(|(t, l)| Op::Rollback(t, l)),
        Just(Op::Pause),
        Just(Op::Resume),
        Just(Op::Remove),
    ]
}

fn loc(i: u8) -> String {
    ["primary", "cell-b", "cell-c", "nowhere"][i as usize % 4].to_string()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn invariants_hold_over_any_inputs(kind in prop_oneof![Just("full"), Just("transactional")], ops in proptest::collection::vec(op(), 1..80)) {
        let (mut e, first) = ShadowEngine::new(spec(kind, true), 0).unwrap();
        let mut seq = 0u64;
        let mut clock = 0i64;
        let mut observed_up = false;
        let mut outs = vec![first];
        for op in ops {
            let t = |s: u16| i64::from(s) * 1000;
            let input = match op {
                Op::Tick(s) => Input::Tick { at_ms: t(s) },
                Op::Observe(s, v) => {
                    if v.iter().any(|(l, up, _, _)| *up && *l < 3) { observed_up = true; }
                    Input::Observe { at_ms: t(s), observations: v.into_iter().map(|(l, up, lat, err)| LocationObservation {
                        location: loc(l), up, health: None, latency_ms: Some(f64::from(lat)), errors: Some(u64::from(err)), rollback_bytes: Some(u64::from(lat) << 20),
                    }).collect() }
                }
                Op::Predict(s, p, f) => Input::Predict { at_ms: t(s), prediction: Prediction {
                    source: RiskSource::FailureModel, detail: String::new(), probability: f64::from(p) / 100.0, expected_failure_ms: t(f), location: None } },
                Op::Failure(s, f, l) => Input::Failure { at_ms: t(s), failed_at_ms: t(f), location: l.map(loc), reason: "x".into() },
                Op::Answer(n, ok, unusable) => {
                    let pending = e.pending();
                    if pending.is_empty() { continue; }
                    let a = &pending[n as usize % pending.len()];
                    let output = match a {
                        Action::Point { .. } => { seq += 1; json!({"point": {"id": format!("p{seq}"), "seq": seq, "consistent_at_ms": clock, "reason": "schedule"}}) }
                        _ => json!({"point_unusable": unusable}),
                    };
                    Input::ActionDone { action_id: a.id(), ok, output, error: None }
                }
                Op::Rollback(tm, l) => Input::Command(Command::Rollback { to: tm.map(|s| Target::Time(t(s))), location: l.map(loc).filter(|l| l != "nowhere"), reason: "r".into() }),
                Op::Pause => Input::Command(Command::Pause { reason: "p".into() }),
                Op::Resume => Input::Command(Command::Resume { reason: "r".into() }),
                Op::Remove => Input::Command(Command::Remove { reason: "r".into() }),
            };
            if let Input::Tick { at_ms } | Input::Observe { at_ms, .. } = &input { clock = clock.max(*at_ms); }
            let operator = matches!(input, Input::Command(Command::Rollback { location: Some(_), .. }));
            let out = e.step(input, clock);
            // At most one rollback in flight: one restore or rollback route pending at most.
            let in_flight = e.pending().iter().filter(|a| matches!(a, Action::Restore { .. } | Action::Route { rollback: Some(_), .. })).count();
            prop_assert!(in_flight <= 1, "{:?}", e.pending());
            let points = e.pending().iter().filter(|a| matches!(a, Action::Point { .. })).count();
            prop_assert!(points <= 1);
            if in_flight == 1 { prop_assert!(e.status().rollback.is_some()); }
            for a in &out.actions {
                if let Action::Restore { to, .. } = a {
                    let rb = e.status().rollback.expect("a restore belongs to a rollback");
                    // Never a point after the failure time.
                    match to {
                        RestoreTo::Time(t) => prop_assert!(*t <= rb.failure_ms),
                        RestoreTo::Point(_) => if let Some(p) = &rb.point { prop_assert!(p.consistent_at_ms <= rb.failure_ms) },
                    }
                    // Never act on no data (the operator naming a location is data enough).
                    prop_assert!(observed_up || operator || rb.location.is_some() && rb.trigger == Trigger::Operator);
                }
            }
            for (_, m) in e.merits() {
                if let Some(m) = m { prop_assert!((0.0..=1.0).contains(&m)); }
            }
            outs.push(out);
        }
        prop_assert_eq!(ShadowEngine::restore(e.state()).unwrap(), e);
    }
}
