//! A harness that runs one test body against each backend, for this crate's tests, the
//! server's tests and the ingest benchmark.
//!
//! SQLite runs get a fresh directory under the system temp dir; PostgreSQL runs get a fresh
//! schema named `bw_test_<pid>_<nanos>_<n>` in the database at [`postgres_test_url`], which is
//! dropped afterwards even when the body panics. A run never reads or writes another run's
//! schema. When PostgreSQL cannot be reached the harness panics with the command that starts
//! it: a test that needs it must fail, never pass silently.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::Connection;

use crate::StoreConfig;

/// The database the PostgreSQL tests use: `BELLWETHER_TEST_DATABASE_URL`, else the machine's
/// server at 127.0.0.1:5432, database `test`, user `postgres`.
pub fn postgres_test_url() -> String {
    std::env::var("BELLWETHER_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// How to start the machine's PostgreSQL, for failure messages.
pub const START_POSTGRES_HINT: &str =
    "start it with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`, \
     or point BELLWETHER_TEST_DATABASE_URL at a server whose database you may create schemas in";

/// A name no other run (process, time, counter) will produce.
pub fn unique_name(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        nanos % 1_000_000_000_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Panics with the start command unless PostgreSQL at `url` answers within 5 seconds.
pub async fn require_postgres(url: &str) {
    let attempt =
        tokio::time::timeout(Duration::from_secs(5), sqlx::PgConnection::connect(url)).await;
    match attempt {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
        }
        Ok(Err(e)) => panic!("PostgreSQL at {url} is unreachable ({e}); {START_POSTGRES_HINT}"),
        Err(_) => panic!("PostgreSQL at {url} did not answer within 5 s; {START_POSTGRES_HINT}"),
    }
}

/// A fresh SQLite store location; the directory is removed by [`cleanup`].
pub fn fresh_sqlite() -> (StoreConfig, PathBuf) {
    let dir = std::env::temp_dir().join(unique_name("bellwether-test"));
    std::fs::create_dir_all(&dir).expect("create a temp dir for the test store");
    (StoreConfig::sqlite_in(&dir), dir)
}

/// A fresh PostgreSQL schema location (after checking that PostgreSQL answers).
pub async fn fresh_postgres() -> StoreConfig {
    let url = postgres_test_url();
    require_postgres(&url).await;
    StoreConfig::Postgres {
        url,
        schema: Some(unique_name("bw_test")),
    }
}

/// Removes what a fresh location made: the SQLite directory or the PostgreSQL schema.
pub async fn cleanup(config: &StoreConfig, sqlite_dir: Option<&PathBuf>) {
    match config {
        StoreConfig::Sqlite { .. } => {
            if let Some(dir) = sqlite_dir {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
        StoreConfig::Postgres {
            url,
            schema: Some(schema),
        } => {
            if let Err(e) = crate::drop_postgres_schema(url, schema).await {
                eprintln!("could not drop test schema {schema}: {e}");
            }
        }
        StoreConfig::Postgres { schema: None, .. } => {}
    }
}

/// Runs `body` once with a fresh SQLite location and once with a fresh PostgreSQL schema,
/// cleaning each up afterwards; a panic in a body is re-raised after the cleanup.
pub async fn with_each_backend<F, Fut>(body: F)
where
    F: Fn(StoreConfig) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (sqlite, dir) = fresh_sqlite();
    let outcome = tokio::spawn(body(sqlite.clone())).await;
    cleanup(&sqlite, Some(&dir)).await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
    let pg = fresh_postgres().await;
    let outcome = tokio::spawn(body(pg.clone())).await;
    cleanup(&pg, None).await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// Migration 6 (durable tasks of every kind) undone, statement by statement, the same SQL on
/// both backends: for tests that write what a store before it held.
pub const UNDO_MIGRATION_6: &[&str] = &[
    "DROP INDEX events_task",
    "ALTER TABLE events DROP COLUMN task",
    "DROP INDEX actions_task_action",
    "ALTER TABLE actions RENAME COLUMN task_id TO rollout_id",
    "CREATE UNIQUE INDEX actions_rollout_action ON actions (rollout_id, action_id)",
    "DROP INDEX task_hosts_host",
    "ALTER TABLE task_hosts RENAME COLUMN task_id TO rollout_id",
    "ALTER TABLE task_hosts RENAME TO rollout_hosts",
    "CREATE INDEX rollout_hosts_host ON rollout_hosts (host)",
    "DROP INDEX tasks_kind_settled",
    "ALTER TABLE tasks DROP COLUMN kind",
    "ALTER TABLE tasks RENAME TO rollouts",
    "DELETE FROM bw_migrations WHERE version = 6",
];
