use proptest::prelude::*;
use serde_json::json;

use super::*;

fn result(v: Value) -> Result<ActionResult, String> {
    serde_json::from_value(v).map_err(|e| e.to_string())
}

#[test]
fn a_result_is_written_with_a_typed_outcome() {
    let mut r = ActionResult::new(
        ActionOutcome::Failed {
            exit_code: Some(3),
            error: "\"x\" exited with status 3".into(),
        },
        10,
        25,
    );
    r.stderr_tail = "boom".into();
    assert_eq!(
        serde_json::to_value(&r).unwrap(),
        json!({"outcome": {"status": "failed", "exit_code": 3, "error": "\"x\" exited with status 3"},
               "started_ms": 10, "finished_ms": 25, "stdout_tail": "", "stderr_tail": "boom"})
    );
    r.outcome = ActionOutcome::TimedOut { after_ms: 5000 };
    r.output = Some(json!({"pid": 42}));
    assert_eq!(
        serde_json::to_value(&r).unwrap()["outcome"],
        json!({"status": "timed_out", "after_ms": 5000})
    );
    assert_eq!(
        serde_json::to_value(&r).unwrap()["output"],
        json!({"pid": 42})
    );
    assert_eq!(
        serde_json::to_value(ActionOutcome::Ok).unwrap(),
        json!({"status": "ok"})
    );
    assert_eq!(
        serde_json::to_value(ActionOutcome::Refused {
            reason: "no".into()
        })
        .unwrap(),
        json!({"status": "refused", "reason": "no"})
    );
}

/// Results stored by agents before the typed outcome keep their meaning.
#[test]
fn results_of_the_older_form_still_parse() {
    let ok = result(
        json!({"ok": true, "exit_code": 0, "error": null, "stdout_tail": "hi",
        "stderr_tail": "", "started_ms": 1, "finished_ms": 2}),
    )
    .unwrap();
    assert_eq!(ok.outcome, ActionOutcome::Ok);
    assert_eq!(ok.stdout_tail, "hi");
    assert_eq!(ok.output, None);
    // The shortest body the server ever took.
    assert!(
        result(json!({"ok": true, "started_ms": 1, "finished_ms": 2}))
            .unwrap()
            .is_ok()
    );
    let failed = result(
        json!({"ok": false, "exit_code": 2, "error": "\"false\" exited with status 2",
        "stdout_tail": "", "stderr_tail": "", "started_ms": 1, "finished_ms": 2}),
    )
    .unwrap();
    assert_eq!(
        failed.outcome,
        ActionOutcome::Failed {
            exit_code: Some(2),
            error: "\"false\" exited with status 2".into()
        }
    );
    let timed_out = result(json!({"ok": false, "exit_code": null,
        "error": "timed out after 5000 ms; \"sleep\" was killed",
        "stdout_tail": "", "stderr_tail": "", "started_ms": 1000, "finished_ms": 6010}))
    .unwrap();
    assert_eq!(
        timed_out.outcome,
        ActionOutcome::TimedOut { after_ms: 5000 }
    );
    // A timeout message without a figure takes the time it ran.
    let timed_out = result(json!({"ok": false, "error": "timed out",
        "started_ms": 1000, "finished_ms": 1700}))
    .unwrap();
    assert_eq!(timed_out.outcome, ActionOutcome::TimedOut { after_ms: 700 });
    // "timed out" with an exit code was a failure, as the server used to read it.
    let failed = result(
        json!({"ok": false, "exit_code": 1, "error": "timed out waiting for x",
        "started_ms": 1, "finished_ms": 2}),
    )
    .unwrap();
    assert!(matches!(
        failed.outcome,
        ActionOutcome::Failed {
            exit_code: Some(1),
            ..
        }
    ));
    let bare =
        result(json!({"ok": false, "exit_code": 7, "started_ms": 1, "finished_ms": 2})).unwrap();
    assert_eq!(
        bare.outcome,
        ActionOutcome::Failed {
            exit_code: Some(7),
            error: "exit code 7".into()
        }
    );
}

#[test]
fn bad_results_are_refused_with_the_reason() {
    let bad = |v: Value| result(v).unwrap_err();
    let t = |o: Value| json!({"outcome": o, "started_ms": 1, "finished_ms": 2});
    assert!(bad(json!({"started_ms": 1, "finished_ms": 2})).contains("missing field `outcome`"));
    assert!(bad(
        json!({"ok": true, "outcome": {"status": "ok"}, "started_ms": 1, "finished_ms": 2})
    )
    .contains("not both"));
    assert!(bad(
        json!({"outcome": {"status": "ok"}, "exit_code": 1, "started_ms": 1, "finished_ms": 2})
    )
    .contains("`exit_code` belongs to the older form"));
    assert!(
        bad(json!({"ok": true, "started_ms": 1, "finished_ms": 2, "extra": 1}))
            .contains("unknown field `extra`")
    );
    assert!(bad(json!({"ok": "yes", "started_ms": 1, "finished_ms": 2})).contains("invalid type"));
    assert!(bad(json!({"ok": true, "started_ms": 5, "finished_ms": 2}))
        .contains("finished_ms 2 is before started_ms 5"));
    assert!(bad(json!({"ok": true, "finished_ms": 2})).contains("missing field `started_ms`"));
    assert!(bad(t(json!({"status": "done"}))).contains("unknown status \"done\""));
    assert!(bad(t(json!({"status": "failed"}))).contains("needs the field `error`"));
    assert!(bad(t(json!({"status": "timed_out"}))).contains("needs the field `after_ms`"));
    assert!(bad(t(json!({"status": "refused"}))).contains("needs the field `reason`"));
    assert!(bad(t(json!({"status": "ok", "error": "x"})))
        .contains("field `error` does not belong to a ok outcome"));
    assert!(bad(t(
        json!({"status": "timed_out", "after_ms": 1, "exit_code": 9})
    ))
    .contains("field `exit_code` does not belong to a timed_out outcome"));
    assert!(bad(t(json!({"status": "ok", "colour": "red"}))).contains("unknown field `colour`"));
    assert!(bad(t(json!({"status": "timed_out", "after_ms": -1}))).contains("invalid value"));
}

#[test]
fn actions_carry_a_checked_id_and_the_resolved_timeout() {
    let spec: ActionSpec =
        serde_json::from_value(json!({"builtin": "set_service_version", "version": "2"})).unwrap();
    let a = AgentAction::new(
        "0123456789abcdef0123456789abcdef",
        "r-1",
        "apply",
        spec.clone(),
    );
    assert_eq!(a.timeout_ms, crate::action::DEFAULT_TIMEOUT_MS);
    let v = serde_json::to_value(&a).unwrap();
    assert_eq!(
        v,
        json!({"id": "0123456789abcdef0123456789abcdef", "rollout": "r-1", "kind": "apply",
               "spec": {"builtin": "set_service_version", "version": "2"}, "timeout_ms": 60000})
    );
    assert_eq!(serde_json::from_value::<AgentAction>(v).unwrap(), a);
    // An older server sends no timeout: the spec's is taken.
    let old: ActionsResponse = serde_json::from_value(json!({"actions": [
        {"id": "0123456789abcdef0123456789abcdef", "rollout": "r-1", "kind": "apply",
         "spec": {"argv": ["true"], "timeout_ms": 1500}}]}))
    .unwrap();
    assert_eq!(old.actions[0].timeout_ms, 1500);
    let bad = |v: Value| {
        serde_json::from_value::<AgentAction>(v)
            .unwrap_err()
            .to_string()
    };
    assert!(
        bad(json!({"id": "1", "spec": {"argv": ["true"], "timeout_ms": 1500}}))
            .contains("action id \"1\" is not 32 lower-case hex")
    );
    assert!(bad(json!({"id": "0123456789ABCDEF0123456789ABCDEF", "spec": {"argv": ["true"], "timeout_ms": 1500}}))
        .contains("not 32 lower-case hex"));
    assert!(bad(json!({"id": "0123456789abcdef0123456789abcdef",
        "spec": {"argv": ["true"], "timeout_ms": 1500}, "timeout_ms": 99}))
    .contains("timeout_ms 99 disagrees with its spec's timeout 1500"));
    assert!(
        bad(json!({"id": "0123456789abcdef0123456789abcdef", "spec": {"argv": []}}))
            .contains("argv is empty")
    );
}

#[test]
fn request_bodies_refuse_unknown_fields() {
    let e = serde_json::from_value::<EnrolRequest>(json!({"name": "web-01", "lables": {}}))
        .unwrap_err();
    assert!(e.to_string().contains("unknown field `lables`"), "{e}");
    let e =
        serde_json::from_value::<SamplesRequest>(json!({"samples": [], "droped": 1})).unwrap_err();
    assert!(e.to_string().contains("unknown field `droped`"), "{e}");
    let r: SamplesRequest = serde_json::from_value(json!({"samples": []})).unwrap();
    assert_eq!(r.dropped, 0);
    let r: EnrolRequest = serde_json::from_value(json!({"name": "web-01"})).unwrap();
    assert!(r.labels.is_empty());
    // Answers may grow: a newer server's extra field is not an error.
    let a: EnrolResponse =
        serde_json::from_value(json!({"host": "web-01", "agent_token": "t", "since": 1})).unwrap();
    assert_eq!(a.agent_token, "t");
}

#[test]
fn wire_shapes_match_the_api_contract() {
    let body = SamplesRequest {
        samples: vec![MetricSample {
            ts_ms: 5,
            name: "load1".into(),
            value: 0.5,
        }],
        dropped: 3,
    };
    assert_eq!(
        serde_json::to_string(&body).unwrap(),
        r#"{"samples":[{"ts_ms":5,"name":"load1","value":0.5}],"dropped":3}"#
    );
    let enrol = EnrolRequest {
        name: HostName::new("web-01").unwrap(),
        labels: [("role".to_string(), "web".to_string())].into(),
        address: None,
    };
    assert_eq!(
        serde_json::to_string(&enrol).unwrap(),
        r#"{"name":"web-01","labels":{"role":"web"}}"#
    );
}

fn outcome() -> impl Strategy<Value = ActionOutcome> {
    prop_oneof![
        Just(ActionOutcome::Ok),
        (proptest::option::of(any::<i32>()), ".{0,40}")
            .prop_map(|(exit_code, error)| ActionOutcome::Failed { exit_code, error }),
        any::<u64>().prop_map(|after_ms| ActionOutcome::TimedOut { after_ms }),
        ".{0,40}".prop_map(|reason| ActionOutcome::Refused { reason }),
    ]
}

proptest! {
    #[test]
    fn results_round_trip(
        outcome in outcome(),
        started in any::<i64>(),
        ran in 0i64..1_000_000,
        out in ".{0,40}",
        err in ".{0,40}",
        pid in proptest::option::of(any::<u32>()),
    ) {
        let started = started.min(i64::MAX - ran);
        let r = ActionResult {
            outcome,
            started_ms: started,
            finished_ms: started + ran,
            stdout_tail: out,
            stderr_tail: err,
            output: pid.map(|p| json!({"pid": p})),
        };
        let text = serde_json::to_string(&r).unwrap();
        prop_assert_eq!(serde_json::from_str::<ActionResult>(&text).unwrap(), r);
    }

    /// An older agent's result means what the server used to infer from it.
    #[test]
    fn older_results_keep_their_meaning(
        ok in any::<bool>(),
        exit_code in proptest::option::of(any::<i32>()),
        error in proptest::option::of(prop_oneof![".{0,20}", "timed out.{0,20}"]),
    ) {
        let v = json!({"ok": ok, "exit_code": exit_code, "error": error, "started_ms": 1, "finished_ms": 2});
        let r: ActionResult = serde_json::from_value(v).unwrap();
        let timed_out = !ok && exit_code.is_none() && error.as_deref().is_some_and(|e| e.starts_with("timed out"));
        prop_assert_eq!(r.is_ok(), ok);
        prop_assert_eq!(matches!(r.outcome, ActionOutcome::TimedOut { .. }), timed_out);
        if let (false, false, Some(e)) = (ok, timed_out, &error) {
            prop_assert_eq!(&r.outcome, &ActionOutcome::Failed { exit_code, error: e.clone() });
        }
    }

    #[test]
    fn arbitrary_json_never_panics(s in ".{0,200}") {
        let _ = serde_json::from_str::<ActionResult>(&s);
        let _ = serde_json::from_str::<AgentAction>(&s);
        let _ = serde_json::from_str::<ActionOutcome>(&s);
    }

    #[test]
    fn arbitrary_objects_never_panic(
        keys in proptest::collection::vec(prop_oneof![
            Just("ok"), Just("outcome"), Just("exit_code"), Just("error"), Just("started_ms"),
            Just("finished_ms"), Just("status"), Just("after_ms"), Just("reason"), Just("output")], 0..6),
        vals in proptest::collection::vec(prop_oneof![
            Just(json!(null)), Just(json!(true)), Just(json!(-1)), Just(json!("timed out")),
            Just(json!({"status": "ok"})), Just(json!(i64::MAX))], 6),
    ) {
        let obj: serde_json::Map<String, Value> = keys.iter().zip(&vals).map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
        if let Ok(r) = serde_json::from_value::<ActionResult>(Value::Object(obj)) {
            prop_assert!(r.finished_ms >= r.started_ms);
        }
    }
}

#[test]
fn a_host_address_is_an_ip_or_a_dns_name_without_a_port() {
    for ok in [
        "10.0.0.5",
        "::1",
        "[2001:db8::1]",
        "web-01.example.com",
        "web_1",
        "localhost",
    ] {
        assert_eq!(check_host_address(ok), Ok(()), "{ok}");
    }
    let cases = [
        ("", "must be 1 to 253 bytes"),
        ("10.0.0.5:9100", "has a port: give the host alone"),
        ("web-01:9100", "has a port"),
        ("[::1]:9100", "has a port"),
        ("http://web-01", "is neither an IP address nor a DNS name"),
        ("web 01", "is neither"),
        ("a\"} or vector(1)", "is neither"),
        ("-web", "is neither"),
        ("web..01", "is neither"),
    ];
    for (bad, want) in cases {
        let e = check_host_address(bad).unwrap_err();
        assert!(e.contains(want), "{bad:?}: {e}");
    }
    assert!(check_host_address(&"a".repeat(254)).is_err());
    // Declared, it goes on the wire; not declared, the field is left out (older servers).
    let enrol: EnrolRequest =
        serde_json::from_str(r#"{"name":"web-01","address":"10.0.0.5"}"#).unwrap();
    assert_eq!(enrol.address.as_deref(), Some("10.0.0.5"));
}
