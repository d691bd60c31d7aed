//! Data shadows (migration 9): creation with the task in one transaction, duplicates, removal
//! and re-declaration, bad input; every body run against SQLite and PostgreSQL.

use bellwether_model::shadow::ShadowSpec;
use bellwether_store::testing::with_each_backend;
use bellwether_store::{
    EventFilter, NewEvent, NewTask, ShadowCreated, ShadowRemoved, StepRecord, Store, StoreConfig,
    StoreError, SHADOW,
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

fn spec(name: &str) -> ShadowSpec {
    serde_json::from_value(json!({
        "name": name, "host": "db-1",
        "resource": {"kind": "sqlite", "path": "srv/orders.db"},
        "type": "full", "dir": "var/shadow/orders",
        "locations": [{"id": "primary", "path": "srv/orders.db"}]
    }))
    .unwrap()
}

fn task(id: &str) -> NewTask {
    NewTask {
        id: id.into(),
        kind: SHADOW.into(),
        model_version: None,
        plan_file: String::new(),
        plan_yaml: String::new(),
        hosts: Vec::new(),
    }
}

fn first(settled: bool) -> StepRecord {
    StepRecord {
        phase: "starting".into(),
        settled,
        state: json!({"n": 1}),
        events: vec![NewEvent {
            ts_ms: 5,
            kind: "declared".into(),
            host: None,
            reason: "declared".into(),
            figures: json!({"shadow": "orders"}),
        }],
        ..Default::default()
    }
}

both_backends!(
    a_shadow_is_created_with_its_task_in_one_transaction,
    |store| {
        let created = store
            .create_shadow(&spec("orders"), &task("s-1"), &first(false), 10)
            .await
            .unwrap();
        let ShadowCreated::Created(rec) = created else {
            panic!("{created:?}")
        };
        assert_eq!(
            (rec.name.as_str(), rec.task_id.as_str(), rec.created_at_ms),
            ("orders", "s-1", 10)
        );
        assert_eq!(store.shadow("orders").await.unwrap().unwrap(), rec);
        let t = store.task("s-1").await.unwrap().unwrap();
        assert_eq!((t.kind.as_str(), t.settled), (SHADOW, false));
        let events = store
            .find_events(
                &EventFilter {
                    task: Some("s-1"),
                    ..Default::default()
                },
                10,
            )
            .await
            .unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind, "shadow.declared");
        assert_eq!(store.tasks(Some(SHADOW), true).await.unwrap().len(), 1);
        // A duplicate name stores nothing.
        let again = store
            .create_shadow(&spec("orders"), &task("s-2"), &first(false), 20)
            .await
            .unwrap();
        assert!(matches!(again, ShadowCreated::Exists(r) if r.task_id == "s-1"));
        assert!(store.task("s-2").await.unwrap().is_none());
    }
);

both_backends!(a_removed_name_is_free_once_its_task_settled, |store| {
    store
        .create_shadow(&spec("orders"), &task("s-1"), &first(false), 10)
        .await
        .unwrap();
    let ShadowRemoved::Removed(rec) = store.remove_shadow("orders", 40).await.unwrap() else {
        panic!("not removed")
    };
    assert_eq!(rec.removed_at_ms, Some(40));
    assert!(matches!(
        store.remove_shadow("orders", 41).await.unwrap(),
        ShadowRemoved::AlreadyRemoved(_)
    ));
    assert_eq!(
        store.remove_shadow("nope", 41).await.unwrap(),
        ShadowRemoved::Unknown
    );
    assert!(store.shadows(false).await.unwrap().is_empty());
    assert!(matches!(
        store
            .create_shadow(&spec("orders"), &task("s-2"), &first(false), 50)
            .await
            .unwrap(),
        ShadowCreated::Exists(_)
    ));
    store
        .save_task_step(SHADOW, "s-1", &first(true), 60)
        .await
        .unwrap();
    let again = store
        .create_shadow(&spec("orders"), &task("s-2"), &first(false), 70)
        .await
        .unwrap();
    assert!(matches!(&again, ShadowCreated::Created(r) if r.task_id == "s-2"));
});

both_backends!(bad_input_is_refused_and_names_the_field, |store| {
    let mut s = spec("orders");
    s.dir = "/abs".into();
    let err = store
        .create_shadow(&s, &task("s-1"), &first(false), 10)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("dir"), "{err}");
    let mut t = task("s-1");
    t.kind = "mirror".into();
    let err = store
        .create_shadow(&spec("orders"), &t, &first(false), 10)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::BadInput { field, .. } if field == "kind"),
        "{err}"
    );
    assert!(store.shadows(true).await.unwrap().is_empty());
    assert!(store.tasks(None, false).await.unwrap().is_empty());
});
