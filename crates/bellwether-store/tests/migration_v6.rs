//! Migration 6 on a store written before it, on both backends: the rollouts become tasks of
//! kind `rollout` with their hosts, actions and results, a rollout's old events get its id in
//! `events.task`, and an unsettled rollout still holds its hosts against a task of another
//! kind.

use bellwether_store::{
    testing, BusyHost, EventFilter, NewAction, NewTask, StepRecord, Store, StoreConfig,
};
use serde_json::json;
use sqlx::Connection;

/// What a server before migration 6 left behind: a running rollout on web-01 with a reported,
/// unconsumed action, a finished one, and their events.
const OLD_ROWS: &[&str] = &[
    r#"INSERT INTO rollouts (id, created_at_ms, updated_at_ms, phase, plan_file, plan_yaml, hosts, state, settled)
       VALUES ('r-run', 1, 1, 'running', 'p.yaml', '', '["web-01"]', '{"engine":{}}', 0),
              ('r-done', 2, 2, 'completed', 'p.yaml', '', '["web-02"]', '{"engine":{}}', 1)"#,
    r#"INSERT INTO rollout_hosts (rollout_id, host, features) VALUES ('r-run', 'web-01', '{"os":"debian-12"}'), ('r-done', 'web-02', '{}')"#,
    "INSERT INTO actions (rollout_id, action_id, host, kind, spec, created_at_ms, finished_at_ms, result, observed, uid) \
     VALUES ('r-run', 1, 'web-01', 'apply', '{}', 1, 2, '{\"ok\":true}', 0, '0123456789abcdef0123456789abcdef')",
    r#"INSERT INTO events (ts_ms, kind, host, reason, figures)
       VALUES (1, 'rollout.pilot.selected', NULL, 'pilot', '{"rollout":"r-run"}'),
              (2, 'enrolled', 'web-01', 'enrolled', '{}'),
              (3, 'rollout.host.applied', 'web-02', 'applied', '{"rollout":"r-done"}')"#,
];

async fn run_sql(config: &StoreConfig, statements: &[&str]) {
    match config {
        StoreConfig::Sqlite { path } => {
            let url = format!("sqlite://{}", path.display());
            let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
            for s in statements {
                sqlx::query(s)
                    .execute(&mut c)
                    .await
                    .unwrap_or_else(|e| panic!("{s}: {e}"));
            }
            c.close().await.unwrap();
        }
        StoreConfig::Postgres { url, schema } => {
            let mut c = sqlx::PgConnection::connect(url).await.unwrap();
            let schema = schema.as_deref().expect("the test harness names a schema");
            sqlx::query(&format!("SET search_path TO {schema}"))
                .execute(&mut c)
                .await
                .unwrap();
            for s in statements {
                sqlx::query(s)
                    .execute(&mut c)
                    .await
                    .unwrap_or_else(|e| panic!("{s}: {e}"));
            }
            c.close().await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollouts_stored_before_migration_6_become_tasks_of_kind_rollout() {
    testing::with_each_backend(|config: StoreConfig| async move {
        Store::open(&config).await.unwrap().close().await;
        run_sql(&config, testing::UNDO_MIGRATION_6).await;
        run_sql(&config, OLD_ROWS).await;

        let store = Store::open(&config).await.unwrap();
        assert!(store.applied_migrations().await.unwrap().contains(&6));
        let unsettled = store.tasks(None, true).await.unwrap();
        assert_eq!(unsettled.len(), 1);
        assert_eq!(
            (unsettled[0].id.as_str(), unsettled[0].kind.as_str()),
            ("r-run", "rollout")
        );
        assert_eq!(store.rollouts(false).await.unwrap().len(), 2);
        assert_eq!(
            store.task_host_features("r-run").await.unwrap()["web-01"]["os"],
            json!("debian-12")
        );
        // The reported action is still there, unconsumed, under its task.
        let results = store.unobserved_results("r-run").await.unwrap();
        assert_eq!(results.len(), 1);
        assert_eq!(results[0].task_id, "r-run");
        assert_eq!(results[0].uid, "0123456789abcdef0123456789abcdef");
        // Old rollout events are found by their task; others have none.
        let of_run = store
            .find_events(
                &EventFilter {
                    task: Some("r-run"),
                    ..EventFilter::default()
                },
                10,
            )
            .await
            .unwrap();
        assert_eq!(
            of_run.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
            ["rollout.pilot.selected"]
        );
        assert_eq!(of_run[0].task.as_deref(), Some("r-run"));
        let all = store.events(None, 10).await.unwrap();
        assert_eq!(
            all.iter().map(|e| e.task.as_deref()).collect::<Vec<_>>(),
            [Some("r-done"), None, Some("r-run")]
        );
        // The running rollout still holds web-01 against a task of another kind.
        let patch = NewTask {
            id: "p-1".into(),
            kind: "patch".into(),
            model_version: None,
            plan_file: "patch.yaml".into(),
            plan_yaml: String::new(),
            hosts: vec![("web-01".into(), Default::default())],
        };
        let first = StepRecord {
            phase: "baseline".into(),
            state: json!({}),
            ..StepRecord::default()
        };
        assert_eq!(
            store.create_task(&patch, &first, 10).await.unwrap(),
            Some(BusyHost {
                host: "web-01".into(),
                kind: "rollout".into(),
                task: "r-run".into()
            })
        );
        // Its step consumes the result; the engine's action 1 is queued once (the renamed
        // unique index), and a step saved under another kind is refused.
        let step = StepRecord {
            phase: "running".into(),
            state: json!({"engine": {"step": 2}}),
            dispatches: vec![NewAction {
                action_id: 1,
                uid: "ffeeddccbbaa99887766554433221100".into(),
                host: "web-01".into(),
                kind: "apply".into(),
                spec: json!({}),
            }],
            observed_action: Some(results[0].id),
            ..StepRecord::default()
        };
        let err = store
            .save_task_step("patch", "r-run", &step, 11)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("unknown patch r-run"), "{err}");
        store
            .save_task_step("rollout", "r-run", &step, 12)
            .await
            .unwrap();
        assert!(store.unobserved_results("r-run").await.unwrap().is_empty());
        let actions = store.task_actions("r-run").await.unwrap();
        assert_eq!(actions.len(), 1);
        assert_eq!(actions[0].uid, "0123456789abcdef0123456789abcdef");
        store.close().await;
    })
    .await;
}
