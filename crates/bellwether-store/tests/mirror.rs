//! Mirrored dependencies (migration 8): creation with the task in one transaction, duplicates,
//! policy updates, removal and re-declaration, bad input; every body run against SQLite and
//! PostgreSQL.

use bellwether_model::mirror::{DependencySpec, ModeSetting};
use bellwether_store::testing::with_each_backend;
use bellwether_store::{
    DependencyCreated, DependencyRemoved, EventFilter, NewEvent, NewTask, StepRecord, Store,
    StoreConfig, StoreError, MIRROR,
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

fn spec(name: &str) -> DependencySpec {
    serde_json::from_value(json!({
        "name": name, "kind": "redis", "primary": "127.0.0.1:6390", "tier": "critical"
    }))
    .unwrap()
}

fn task(id: &str) -> NewTask {
    NewTask {
        id: id.into(),
        kind: MIRROR.into(),
        model_version: None,
        plan_file: String::new(),
        plan_yaml: String::new(),
        hosts: Vec::new(),
    }
}

fn first(settled: bool) -> StepRecord {
    StepRecord {
        phase: "watching".into(),
        settled,
        state: json!({"n": 1}),
        events: vec![NewEvent {
            ts_ms: 5,
            kind: "created".into(),
            host: None,
            reason: "declared".into(),
            figures: json!({"dependency": "cache"}),
        }],
        ..Default::default()
    }
}

both_backends!(
    a_dependency_is_created_with_its_task_in_one_transaction,
    |store| {
        let created = store
            .create_dependency(&spec("cache"), &task("m-1"), &first(false), 10)
            .await
            .unwrap();
        let DependencyCreated::Created(rec) = created else {
            panic!("{created:?}")
        };
        assert_eq!(
            (rec.name.as_str(), rec.task_id.as_str(), rec.created_at_ms),
            ("cache", "m-1", 10)
        );
        let back = store.dependency("cache").await.unwrap().unwrap();
        assert_eq!(back, rec);
        assert_eq!(back.spec, spec("cache"));
        let t = store.task("m-1").await.unwrap().unwrap();
        assert_eq!(
            (t.kind.as_str(), t.phase.as_str(), t.settled),
            (MIRROR, "watching", false)
        );
        assert_eq!(t.state, json!({"n": 1}));
        // The first step's events are the task's, prefixed with its kind.
        let events = store
            .find_events(
                &EventFilter {
                    task: Some("m-1"),
                    ..Default::default()
                },
                10,
            )
            .await
            .unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind, "mirror.created");
        assert_eq!(events[0].figures["mirror"], "m-1");
        // The task is driven like every other: it is among the unsettled mirror tasks.
        let unsettled = store.tasks(Some(MIRROR), true).await.unwrap();
        assert_eq!(unsettled.len(), 1);
    }
);

both_backends!(a_duplicate_name_stores_nothing, |store| {
    store
        .create_dependency(&spec("cache"), &task("m-1"), &first(false), 10)
        .await
        .unwrap();
    let mut other = spec("cache");
    other.primary = "127.0.0.1:7000".into();
    let again = store
        .create_dependency(&other, &task("m-2"), &first(false), 20)
        .await
        .unwrap();
    let DependencyCreated::Exists(rec) = again else {
        panic!("{again:?}")
    };
    assert_eq!(rec.task_id, "m-1");
    assert_eq!(rec.spec.primary, "127.0.0.1:6390");
    assert!(store.task("m-2").await.unwrap().is_none(), "no task stored");
    assert_eq!(store.dependencies(true).await.unwrap().len(), 1);
});

both_backends!(the_policy_changes_but_not_the_kind, |store| {
    store
        .create_dependency(&spec("cache"), &task("m-1"), &first(false), 10)
        .await
        .unwrap();
    let mut s = spec("cache");
    s.policy.max_mirrors = 5;
    s.policy.mode = ModeSetting::ActivePassive;
    let rec = store.update_dependency(&s, 30).await.unwrap().unwrap();
    assert_eq!(rec.spec.policy.max_mirrors, 5);
    assert_eq!((rec.created_at_ms, rec.updated_at_ms), (10, 30));
    assert_eq!(store.dependency("cache").await.unwrap().unwrap(), rec);
    // Unknown: nothing.
    assert!(store
        .update_dependency(&spec("nope"), 31)
        .await
        .unwrap()
        .is_none());
    // Another kind: refused, naming the field.
    let mut pg = spec("cache");
    pg.kind = bellwether_model::mirror::DepKind::Postgres;
    let err = store.update_dependency(&pg, 32).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::BadInput { field, .. } if field == "kind"),
        "{err}"
    );
    // An invalid policy: refused, naming the policy field.
    let mut bad = spec("cache");
    bad.policy.min_mirrors = 9;
    bad.policy.max_mirrors = 2;
    let err = store.update_dependency(&bad, 33).await.unwrap_err();
    assert!(err.to_string().contains("min_mirrors"), "{err}");
    assert_eq!(
        store
            .dependency("cache")
            .await
            .unwrap()
            .unwrap()
            .spec
            .policy
            .max_mirrors,
        5
    );
});

both_backends!(a_removed_name_is_free_once_its_task_settled, |store| {
    store
        .create_dependency(&spec("cache"), &task("m-1"), &first(false), 10)
        .await
        .unwrap();
    let DependencyRemoved::Removed(rec) = store.remove_dependency("cache", 40).await.unwrap()
    else {
        panic!("not removed")
    };
    assert_eq!(rec.removed_at_ms, Some(40));
    assert!(matches!(
        store.remove_dependency("cache", 41).await.unwrap(),
        DependencyRemoved::AlreadyRemoved(r) if r.removed_at_ms == Some(40)
    ));
    assert_eq!(
        store.remove_dependency("other", 41).await.unwrap(),
        DependencyRemoved::Unknown
    );
    assert!(store.dependencies(false).await.unwrap().is_empty());
    assert_eq!(store.dependencies(true).await.unwrap().len(), 1);
    // A removed dependency's policy no longer changes.
    assert!(store
        .update_dependency(&spec("cache"), 42)
        .await
        .unwrap()
        .is_none());
    // Its task still retires the mirrors: the name stays taken.
    assert!(matches!(
        store
            .create_dependency(&spec("cache"), &task("m-2"), &first(false), 50)
            .await
            .unwrap(),
        DependencyCreated::Exists(_)
    ));
    // Once the task settled, the name may be declared again, with a new task.
    store
        .save_task_step(MIRROR, "m-1", &first(true), 60)
        .await
        .unwrap();
    let again = store
        .create_dependency(&spec("cache"), &task("m-2"), &first(false), 70)
        .await
        .unwrap();
    assert!(
        matches!(&again, DependencyCreated::Created(r) if r.task_id == "m-2" && r.removed_at_ms.is_none()),
        "{again:?}"
    );
    assert!(store.task("m-1").await.unwrap().unwrap().settled);
});

both_backends!(bad_input_is_refused_and_names_the_field, |store| {
    let mut s = spec("cache");
    s.primary = "no-port".into();
    let err = store
        .create_dependency(&s, &task("m-1"), &first(false), 10)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("primary"), "{err}");
    let mut t = task("m-1");
    t.kind = "patch".into();
    let err = store
        .create_dependency(&spec("cache"), &t, &first(false), 10)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::BadInput { field, .. } if field == "kind"),
        "{err}"
    );
    let mut t = task("m-1");
    t.hosts = vec![("db-1".into(), Default::default())];
    assert!(store
        .create_dependency(&spec("cache"), &t, &first(false), 10)
        .await
        .is_err());
    assert!(store.dependencies(true).await.unwrap().is_empty());
    assert!(store.tasks(None, false).await.unwrap().is_empty());
});
