//! Outcomes, models, rollouts and the action queue, every test body run against SQLite and
//! PostgreSQL.

use std::collections::BTreeMap;

use bellwether_store::testing::with_each_backend;
use bellwether_store::{
    ActionFinish, NewAction, NewEvent, NewModel, NewOutcome, NewRollout, OutcomeSource, StepRecord,
    Store, StoreConfig, StoreError,
};
use serde_json::json;

macro_rules! both_backends {
    ($name:ident, |$store:ident| $body:block) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            with_each_backend(|config: StoreConfig| async move {
                let $store = Store::open(&config).await.expect("open store");
                $body
                $store.close().await;
            })
            .await;
        }
    };
}

fn outcome(deployment: &str, host: &str, failed: bool, disk: f64) -> NewOutcome {
    NewOutcome {
        source: OutcomeSource::Import,
        deployment: deployment.into(),
        host: host.into(),
        features: BTreeMap::from([
            ("disk_free_pct".to_string(), json!(disk)),
            ("os".to_string(), json!("debian-12")),
            ("kernel".to_string(), json!(null)),
        ]),
        failed,
    }
}

fn of_update(deployment: &str, host: &str, update: &str, version: serde_json::Value) -> NewOutcome {
    NewOutcome {
        source: OutcomeSource::Rollout,
        deployment: deployment.into(),
        host: host.into(),
        features: BTreeMap::from([
            ("update".to_string(), json!(update)),
            ("update_version".to_string(), version),
        ]),
        failed: true,
    }
}

both_backends!(outcomes_of_one_update_and_version_are_found, |store| {
    store
        .record_outcomes(
            &[
                of_update("r1", "a", "websvc", json!("2")),
                of_update("r1", "b", "websvc", json!("3")),
                of_update("r1", "c", "web%", json!("2")),
                of_update("r2", "d", "websvc", json!(2)),
                of_update("r2", "e", "websvc_x", json!("2")),
                outcome("d9", "f", true, 1.0),
            ],
            1_000,
        )
        .await
        .unwrap();
    let hosts =
        |v: Vec<bellwether_store::OutcomeRecord>| v.into_iter().map(|o| o.host).collect::<Vec<_>>();
    // A version stored as the number 2 (an imported history's cell) is version "2".
    assert_eq!(
        hosts(store.outcomes_of_update("websvc", "2").await.unwrap()),
        ["a", "d"]
    );
    // LIKE's wildcards in a name match only themselves.
    assert_eq!(
        hosts(store.outcomes_of_update("web%", "2").await.unwrap()),
        ["c"]
    );
    assert!(store
        .outcomes_of_update("web_svc", "2")
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .outcomes_of_update("websvc", "9")
        .await
        .unwrap()
        .is_empty());
});

both_backends!(outcomes_are_recorded_replaced_and_counted, |store| {
    assert_eq!(store.outcomes_since(0).await.unwrap(), (0, 0));
    let n = store
        .record_outcomes(
            &[
                outcome("d1", "a", false, 50.0),
                outcome("d1", "b", true, 5.0),
            ],
            1_000,
        )
        .await
        .unwrap();
    assert_eq!(n, 2);
    let all = store.outcomes().await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].host, "b");
    assert!(all[1].failed);
    assert_eq!(all[1].features["disk_free_pct"], json!(5.0));
    assert_eq!(all[1].features["kernel"], json!(null));
    let (count, newest) = store.outcomes_since(0).await.unwrap();
    assert_eq!(count, 2);
    // A later outcome for the same (deployment, host) replaces the earlier one and is new.
    store
        .record_outcomes(&[outcome("d1", "a", true, 40.0)], 2_000)
        .await
        .unwrap();
    let all = store.outcomes().await.unwrap();
    assert_eq!(all.len(), 2);
    let a = all.iter().find(|o| o.host == "a").unwrap();
    assert!(a.failed);
    assert!(a.id > newest);
    assert_eq!(store.outcomes_since(newest).await.unwrap().0, 1);
    assert_eq!(store.host_failures_since("a", 1_500).await.unwrap(), 1);
    assert_eq!(store.host_failures_since("b", 1_500).await.unwrap(), 0);
    assert_eq!(store.host_failures_since("b", 0).await.unwrap(), 1);
});

both_backends!(
    a_bad_outcome_in_a_batch_stores_nothing_and_is_named,
    |store| {
        let mut bad = outcome("d2", "c", false, 1.0);
        bad.features.insert("packages".into(), json!(["x"]));
        let err = store
            .record_outcomes(&[outcome("d2", "a", false, 1.0), bad], 1)
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::BadInput { ref field, .. } if field == "outcomes[1].features.packages"),
            "{err}"
        );
        let err = store
            .record_outcomes(&[outcome("", "a", false, 1.0)], 1)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("outcomes[0].deployment"), "{err}");
        assert!(store.outcomes().await.unwrap().is_empty());
    }
);

both_backends!(
    models_get_increasing_versions_and_the_latest_is_served,
    |store| {
        assert!(store.latest_model().await.unwrap().is_none());
        assert!(store.models().await.unwrap().is_empty());
        let m = |rows, text: &str| NewModel {
            rows,
            failures: 3,
            last_outcome_id: rows,
            cause: "operator".into(),
            metrics: json!({"roc_auc": 0.8}),
            model: text.into(),
        };
        let v1 = store.put_model(&m(10, "{\"m\":1}"), 5).await.unwrap();
        let v2 = store.put_model(&m(20, "{\"m\":2}"), 6).await.unwrap();
        assert!(v2 > v1);
        let (info, text) = store.latest_model().await.unwrap().unwrap();
        assert_eq!(info.version, v2);
        assert_eq!(info.rows, 20);
        assert_eq!(info.metrics["roc_auc"], json!(0.8));
        assert_eq!(text, "{\"m\":2}");
        let list = store.models().await.unwrap();
        assert_eq!(
            list.iter().map(|m| m.version).collect::<Vec<_>>(),
            vec![v2, v1]
        );
    }
);

fn hex_of(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn new_rollout(id: &str, hosts: &[&str]) -> (NewRollout, StepRecord) {
    let new = NewRollout {
        id: id.into(),
        phase: "running".into(),
        model_version: Some(1),
        plan_file: "plan.yaml".into(),
        plan_yaml: "name: x\n".into(),
        state: json!({"step": 0}),
        hosts: hosts
            .iter()
            .map(|h| {
                (
                    h.to_string(),
                    BTreeMap::from([("os".to_string(), json!("debian-12"))]),
                )
            })
            .collect(),
    };
    let first = StepRecord {
        phase: "running".into(),
        settled: false,
        state: json!({"step": 0}),
        events: vec![NewEvent {
            ts_ms: 10,
            kind: "pilot.selected".into(),
            host: None,
            reason: "pilot".into(),
            figures: json!({"n": 1}),
        }],
        dispatches: vec![NewAction {
            action_id: 1,
            // A distinct wire id per rollout (the server draws them at random).
            uid: format!("{:0>32}", hex_of(id)),
            host: hosts[0].into(),
            kind: "apply".into(),
            spec: json!({"builtin": "set_service_version", "version": "2"}),
        }],
        outcomes: vec![],
        observed_action: None,
    };
    (new, first)
}

both_backends!(rollouts_hold_their_hosts_and_queue_actions_once, |store| {
    let (new, first) = new_rollout("r-1", &["a", "b"]);
    assert_eq!(store.create_rollout(&new, &first, 10).await.unwrap(), None);
    // Another rollout over host b is refused while r-1 runs.
    let (other, first2) = new_rollout("r-2", &["b", "c"]);
    assert_eq!(
        store.create_rollout(&other, &first2, 11).await.unwrap(),
        Some(("b".into(), "r-1".into()))
    );
    assert!(store.rollout("r-2").await.unwrap().is_none());
    // The event went to the log with the rollout's id.
    let events = store.events(None, 10).await.unwrap();
    assert_eq!(events[0].kind, "rollout.pilot.selected");
    assert_eq!(events[0].figures["rollout"], json!("r-1"));
    // The agent of a polls: it gets the action, again on the next poll until a result comes.
    let open = store.take_open_actions("a", 20).await.unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].spec["builtin"], json!("set_service_version"));
    assert_eq!(open[0].delivered_at_ms, Some(20));
    assert_eq!(store.take_open_actions("a", 21).await.unwrap().len(), 1);
    assert!(store.take_open_actions("b", 21).await.unwrap().is_empty());
    let gid = open[0].id;
    // The wire id is 128 random bits in hex, not the row id.
    let uid = open[0].uid.clone();
    assert_eq!(uid, format!("{:0>32}", hex_of("r-1")));
    assert!(store
        .finish_action(&gid.to_string(), "a", &json!({"ok": true}), 22)
        .await
        .unwrap()
        .is_none());
    // Wrong host: nothing.
    assert_eq!(
        store
            .finish_action(&uid, "b", &json!({"ok": true}), 22)
            .await
            .unwrap(),
        None
    );
    let done = store
        .finish_action(&uid, "a", &json!({"ok": true}), 22)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(done, ActionFinish::Stored(ref r) if r.finished_at_ms == Some(22)));
    // Idempotent: the second report is ignored and the first kept.
    let again = store
        .finish_action(&uid, "a", &json!({"ok": false}), 23)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(again, ActionFinish::AlreadyFinished(ref r) if r.result == Some(json!({"ok": true})))
    );
    assert!(store.take_open_actions("a", 24).await.unwrap().is_empty());
    assert_eq!(store.unobserved_results("r-1").await.unwrap().len(), 1);
    // A step consumes it; re-queuing the same engine action id is a no-op.
    // Final but with an action in flight: r-1 still holds its hosts.
    let aborting = StepRecord {
        phase: "aborted".into(),
        settled: false,
        state: json!({"step": 1}),
        ..StepRecord::default()
    };
    store.save_rollout_step("r-1", &aborting, 25).await.unwrap();
    assert_eq!(
        store.create_rollout(&other, &first2, 26).await.unwrap(),
        Some(("b".into(), "r-1".into()))
    );
    assert_eq!(store.rollouts(true).await.unwrap().len(), 1);
    let step = StepRecord {
        phase: "completed".into(),
        settled: true,
        state: json!({"step": 1}),
        events: vec![],
        dispatches: vec![NewAction {
            action_id: 1,
            uid: "ffeeddccbbaa99887766554433221100".into(),
            host: "a".into(),
            kind: "apply".into(),
            spec: json!({}),
        }],
        outcomes: vec![NewOutcome {
            source: OutcomeSource::Rollout,
            ..outcome("r-1", "a", false, 30.0)
        }],
        observed_action: Some(gid),
    };
    store.save_rollout_step("r-1", &step, 30).await.unwrap();
    assert!(store.unobserved_results("r-1").await.unwrap().is_empty());
    assert_eq!(store.rollout_actions("r-1").await.unwrap().len(), 1);
    let rec = store.rollout("r-1").await.unwrap().unwrap();
    assert_eq!(rec.phase, "completed");
    assert_eq!(rec.state, json!({"step": 1}));
    assert_eq!(rec.model_version, Some(1));
    assert_eq!(store.outcomes().await.unwrap()[0].source, "rollout");
    assert_eq!(
        store.rollout_host_features("r-1").await.unwrap()["b"]["os"],
        json!("debian-12")
    );
    // r-1 is over, so b is free for r-2 now.
    assert_eq!(
        store.create_rollout(&other, &first2, 40).await.unwrap(),
        None
    );
    assert_eq!(
        store
            .rollouts(true)
            .await
            .unwrap()
            .iter()
            .map(|r| r.id.as_str())
            .collect::<Vec<_>>(),
        vec!["r-2"]
    );
    assert_eq!(store.rollouts(false).await.unwrap().len(), 2);
    let err = store.save_rollout_step("r-9", &step, 50).await.unwrap_err();
    assert!(err.to_string().contains("unknown rollout r-9"), "{err}");
});
