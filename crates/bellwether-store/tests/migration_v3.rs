//! Migration 3 on a store written by version 2: every queued action gets a random wire id, and
//! an aborted rollout that stopped before its reverts reported (no finish time in its engine
//! state) counts as unsettled, so a server resumes it; a finished one stays settled.

use bellwether_store::{testing, Store, StoreConfig};
use sqlx::Connection;

#[tokio::test]
async fn a_version_2_store_gets_action_uids_and_its_stuck_aborted_rollout_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bellwether.db");
    let config = StoreConfig::Sqlite { path: path.clone() };
    Store::open(&config).await.unwrap().close().await;

    // Take the file back to version 2 and write what a version-2 server left behind.
    let url = format!("sqlite://{}", path.display());
    let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
    // Back before migration 6 (tasks) first, then before 3.
    for statement in testing::UNDO_MIGRATION_6.iter().copied().chain([
        "DROP INDEX actions_uid",
        "ALTER TABLE actions DROP COLUMN uid",
        "ALTER TABLE rollouts DROP COLUMN settled",
        "DELETE FROM bw_migrations WHERE version = 3",
        r#"INSERT INTO rollouts (id, created_at_ms, updated_at_ms, phase, plan_file, plan_yaml, hosts, state)
           VALUES ('r-stuck', 1, 1, 'aborted', 'p.yaml', '', '["a"]', '{"engine":{"finished_ms":null}}'),
                  ('r-done', 2, 2, 'aborted', 'p.yaml', '', '["b"]', '{"engine":{"finished_ms":5}}'),
                  ('r-run', 3, 3, 'running', 'p.yaml', '', '["c"]', '{"engine":{"finished_ms":null}}')"#,
        "INSERT INTO actions (rollout_id, action_id, host, kind, spec, created_at_ms, observed) \
         VALUES ('r-stuck', 1, 'a', 'revert', '{}', 1, 0), ('r-run', 1, 'c', 'apply', '{}', 1, 0)",
    ]) {
        sqlx::query(statement).execute(&mut c).await.unwrap();
    }
    c.close().await.unwrap();

    let store = Store::open(&config).await.unwrap();
    let applied = store.applied_migrations().await.unwrap();
    assert!(
        applied.contains(&3) && applied.contains(&5) && applied.contains(&6),
        "{applied:?}"
    );
    let mut unsettled: Vec<String> = store
        .rollouts(true)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    unsettled.sort();
    assert_eq!(unsettled, ["r-run", "r-stuck"]);
    assert!(store.rollout("r-done").await.unwrap().unwrap().settled);
    let mut uids = Vec::new();
    for id in ["r-stuck", "r-run"] {
        for a in store.rollout_actions(id).await.unwrap() {
            assert_eq!(a.uid.len(), 32, "{a:?}");
            assert!(a.uid.bytes().all(|b| b.is_ascii_hexdigit()), "{a:?}");
            uids.push(a.uid);
        }
    }
    assert_eq!(uids.len(), 2);
    assert_ne!(uids[0], uids[1]);
    store.close().await;
}
