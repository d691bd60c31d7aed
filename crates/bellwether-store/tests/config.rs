//! Configuration reports, versioned graphs and the `config.*` event queries (migration 7),
//! every body run against SQLite and PostgreSQL.

use std::collections::BTreeMap;

use bellwether_model::HostName;
use bellwether_store::testing::with_each_backend;
use bellwether_store::{
    ConfigEventFilter, ConfigReport, NewEvent, StepRecord, Store, StoreConfig, StoreError,
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

async fn enrol(store: &Store, name: &str) {
    let h = HostName::new(name).unwrap();
    store
        .enrol(
            &h,
            &BTreeMap::new(),
            &format!("agent-token-of-{name}-0000"),
            1,
        )
        .await
        .unwrap();
}

fn report(host: &str, source: &str, values: &[(&str, &str)], at_ms: i64) -> ConfigReport {
    ConfigReport {
        host: host.into(),
        source: source.into(),
        kind: "postgres".into(),
        values: values
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        catalog: Some(json!({"server_version_num": 150000, "settings": {}})),
        at_ms,
    }
}

fn change_event(host: &str, source: &str, key: &str, new: &str, ts: i64) -> NewEvent {
    NewEvent {
        ts_ms: ts,
        kind: "config.changed".into(),
        host: Some(host.into()),
        reason: format!("{key} changed"),
        figures: json!({"host": host, "source_name": source, "key": key, "new": new}),
    }
}

both_backends!(a_report_replaces_the_previous_one_and_returns_it, |store| {
    enrol(&store, "db-01").await;
    let first = report(
        "db-01",
        "main",
        &[("work_mem", "4096"), ("max_connections", "100")],
        10,
    );
    let prev = store
        .put_config_report(&first, 11, |prev| {
            assert!(prev.is_none());
            Vec::new()
        })
        .await
        .unwrap();
    assert!(prev.is_none());
    let second = report(
        "db-01",
        "main",
        &[("work_mem", "64"), ("max_connections", "100")],
        20,
    );
    let prev = store
        .put_config_report(&second, 21, |prev| {
            let p = prev.expect("the first report");
            assert_eq!(p.values["work_mem"], "4096");
            vec![change_event("db-01", "main", "work_mem", "64", 20)]
        })
        .await
        .unwrap()
        .expect("the first report comes back");
    assert_eq!(prev.values["work_mem"], "4096");
    assert_eq!((prev.at_ms, prev.updated_ms), (10, 11));
    let now = store.config_report("db-01", "main").await.unwrap().unwrap();
    assert_eq!(now.values["work_mem"], "64");
    assert_eq!(
        (now.at_ms, now.updated_ms, now.kind.as_str()),
        (20, 21, "postgres")
    );
    assert_eq!(now.catalog.unwrap()["server_version_num"], 150000);
    // The event committed with the report, without a task.
    let events = store
        .config_events(
            &ConfigEventFilter {
                host: Some("db-01"),
                ..Default::default()
            },
            10,
        )
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].kind.as_str(), events[0].task.as_deref()),
        ("config.changed", None)
    );
    assert!(store
        .config_report("db-01", "other")
        .await
        .unwrap()
        .is_none());
});

both_backends!(bad_reports_are_refused_and_store_nothing, |store| {
    enrol(&store, "db-01").await;
    let unknown = report("db-99", "main", &[("a", "1")], 1);
    match store.put_config_report(&unknown, 1, |_| Vec::new()).await {
        Err(StoreError::UnknownHost(h)) => assert_eq!(h.as_str(), "db-99"),
        other => panic!("unknown host accepted: {other:?}"),
    }
    let mut bad_kind = report("db-01", "main", &[("a", "1")], 1);
    bad_kind.kind = "redis".into();
    let e = store
        .put_config_report(&bad_kind, 1, |_| Vec::new())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("redis"), "{e}");
    let empty_source = report("db-01", "", &[("a", "1")], 1);
    let e = store
        .put_config_report(&empty_source, 1, |_| Vec::new())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("source"), "{e}");
    let empty_key = report("db-01", "main", &[("", "1")], 1);
    let e = store
        .put_config_report(&empty_key, 1, |_| Vec::new())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("empty key"), "{e}");
    let bad_host = report("not a host!", "main", &[("a", "1")], 1);
    assert!(store
        .put_config_report(&bad_host, 1, |_| Vec::new())
        .await
        .is_err());
    assert!(store.config_sources().await.unwrap().is_empty());
    assert!(store
        .config_events(&ConfigEventFilter::default(), 10)
        .await
        .unwrap()
        .is_empty());
    // A kind outside config.* is refused rather than read.
    let e = store
        .config_events(
            &ConfigEventFilter {
                kinds: &["audit"],
                ..Default::default()
            },
            10,
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("audit"), "{e}");
});

both_backends!(graphs_are_versioned_per_source, |store| {
    enrol(&store, "db-01").await;
    let g1 = json!({"nodes": [{"name": "a"}], "edges": []});
    let g2 = json!({"nodes": [{"name": "a"}, {"name": "b"}], "edges": []});
    assert_eq!(
        store
            .put_config_graph("db-01", "main", &g1, &json!({"trials": 3}), 5)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .put_config_graph("db-01", "main", &g2, &json!(null), 6)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        store
            .put_config_graph("db-01", "other", &g1, &json!(null), 7)
            .await
            .unwrap(),
        1
    );
    let latest = store
        .config_graph("db-01", "main", None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((latest.version, latest.created_ms), (2, 6));
    assert_eq!(latest.graph, g2);
    let first = store
        .config_graph("db-01", "main", Some(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (first.graph.clone(), first.stats["trials"].clone()),
        (g1.clone(), json!(3))
    );
    assert!(store
        .config_graph("db-01", "main", Some(3))
        .await
        .unwrap()
        .is_none());
    assert!(store
        .config_graph("db-01", "none", None)
        .await
        .unwrap()
        .is_none());
    // Bad input: an unknown host, a graph that is not an object.
    assert!(matches!(
        store
            .put_config_graph("db-02", "main", &g1, &json!(null), 8)
            .await,
        Err(StoreError::UnknownHost(_))
    ));
    let e = store
        .put_config_graph("db-01", "main", &json!([1]), &json!(null), 8)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not a JSON object"), "{e}");
    // The sources list carries the newest version.
    store
        .put_config_report(
            &report("db-01", "main", &[("a", "1"), ("b", "2")], 9),
            9,
            |_| Vec::new(),
        )
        .await
        .unwrap();
    let sources = store.config_sources().await.unwrap();
    assert_eq!(sources.len(), 1);
    assert_eq!((sources[0].keys, sources[0].graph_version), (2, Some(2)));
});

both_backends!(
    config_events_filter_by_source_kind_task_and_snapshot,
    |store| {
        enrol(&store, "db-01").await;
        enrol(&store, "db-02").await;
        store
            .put_config_report(&report("db-01", "main", &[("a", "1")], 1), 1, |_| {
                vec![
                    change_event("db-01", "main", "a", "1", 1),
                    change_event("db-01", "file:/etc/app.conf", "x", "2", 2),
                ]
            })
            .await
            .unwrap();
        store
            .put_config_report(&report("db-02", "main", &[("a", "1")], 1), 3, |_| {
                vec![change_event("db-02", "main", "a", "3", 3)]
            })
            .await
            .unwrap();
        let snap = json!({"snapshot": {"id": "s-1", "host": "db-01", "source_name": "main", "values": {"a": "1"}}});
        store
            .record_named_event("config.snapshot", Some("db-01"), "on demand", &snap, 4)
            .await
            .unwrap();
        // A task's step writes config.* events with its id.
        let new = bellwether_store::NewTask {
            id: "c-1".into(),
            kind: "config".into(),
            model_version: None,
            plan_file: "plan.yaml".into(),
            plan_yaml: String::new(),
            hosts: vec![("db-01".into(), BTreeMap::new())],
        };
        let first = StepRecord {
            phase: "running".into(),
            state: json!({}),
            events: vec![NewEvent {
                ts_ms: 5,
                kind: "changed".into(),
                host: Some("db-01".into()),
                reason: "applied".into(),
                figures: json!({"source_name": "main", "key": "a", "new": "9"}),
            }],
            ..StepRecord::default()
        };
        assert!(store.create_task(&new, &first, 5).await.unwrap().is_none());
        // Not a config event: never returned.
        store
            .record_named_event(
                "rollout.host.applied",
                Some("db-01"),
                "x",
                &json!({"source_name": "main"}),
                6,
            )
            .await
            .unwrap();

        let kinds =
            |es: &[bellwether_store::Event]| es.iter().map(|e| e.kind.clone()).collect::<Vec<_>>();
        let all = store
            .config_events(&ConfigEventFilter::default(), 100)
            .await
            .unwrap();
        assert_eq!(all.len(), 5, "{:?}", kinds(&all));
        assert!(all.windows(2).all(|w| w[0].id > w[1].id), "newest first");
        let main01 = store
            .config_events(
                &ConfigEventFilter {
                    host: Some("db-01"),
                    source: Some("main"),
                    kinds: &["config.changed"],
                    ..Default::default()
                },
                100,
            )
            .await
            .unwrap();
        assert_eq!(main01.len(), 2);
        assert_eq!(main01[0].task.as_deref(), Some("c-1"));
        assert_eq!(main01[1].task, None);
        let snaps = store
            .config_events(
                &ConfigEventFilter {
                    host: Some("db-01"),
                    source: Some("main"),
                    kinds: &["config.snapshot"],
                    ..Default::default()
                },
                100,
            )
            .await
            .unwrap();
        assert_eq!(snaps.len(), 1);
        let by_id = store
            .config_events(
                &ConfigEventFilter {
                    snapshot_id: Some("s-1"),
                    ..Default::default()
                },
                10,
            )
            .await
            .unwrap();
        assert_eq!(by_id.len(), 1);
        assert!(store
            .config_events(
                &ConfigEventFilter {
                    snapshot_id: Some("s-2"),
                    ..Default::default()
                },
                10
            )
            .await
            .unwrap()
            .is_empty());
        let of_task = store
            .config_events(
                &ConfigEventFilter {
                    task: Some("c-1"),
                    ..Default::default()
                },
                10,
            )
            .await
            .unwrap();
        assert_eq!(kinds(&of_task), vec!["config.changed".to_string()]);
        // Following the stream: oldest after an id first, limited.
        let after = store
            .config_events(
                &ConfigEventFilter {
                    after_id: Some(all[4].id),
                    ..Default::default()
                },
                2,
            )
            .await
            .unwrap();
        assert_eq!(
            after.iter().map(|e| e.id).collect::<Vec<_>>(),
            vec![all[3].id, all[2].id]
        );
    }
);
