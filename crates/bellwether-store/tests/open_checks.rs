//! What `Store::open` refuses, on SQLite and PostgreSQL: a schema version newer than this
//! binary, Bellwether's tables without their schema record, and a migrated store with a table
//! missing. Each refusal names the store; nothing is written to it.

use bellwether_store::testing::with_each_backend;
use bellwether_store::{FailureKind, Store, StoreConfig, StoreError};
use sqlx::Connection;

/// Runs one statement on the store outside Bellwether, as damage or a newer release would.
async fn tamper(config: &StoreConfig, sql: &str) {
    match config {
        StoreConfig::Sqlite { path } => {
            let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
                .await
                .unwrap();
            sqlx::query(sql).execute(&mut c).await.unwrap();
            c.close().await.unwrap();
        }
        StoreConfig::Postgres { url, schema } => {
            let mut c = sqlx::PgConnection::connect(url).await.unwrap();
            let schema = schema.as_deref().unwrap();
            sqlx::query(&format!("SET search_path TO \"{schema}\""))
                .execute(&mut c)
                .await
                .unwrap();
            sqlx::query(sql).execute(&mut c).await.unwrap();
            c.close().await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_newer_than_the_binary_is_refused() {
    with_each_backend(|config: StoreConfig| async move {
        let store = Store::open(&config).await.unwrap();
        let known = *store.applied_migrations().await.unwrap().last().unwrap();
        store.close().await;
        tamper(
            &config,
            "INSERT INTO bw_migrations (version, name, applied_at_ms) VALUES (9999, 'from the future', 0)",
        )
        .await;
        let err = Store::open(&config).await.unwrap_err();
        match &err {
            StoreError::TooNew { found, supported, .. } => {
                assert_eq!(*found, 9999);
                assert_eq!(*supported, known);
            }
            other => panic!("expected TooNew, got {other}"),
        }
        let text = err.to_string();
        assert!(text.contains("schema version 9999") && text.contains("newer"), "{text}");
        if let StoreConfig::Sqlite { path } = &config {
            assert!(text.contains(&path.display().to_string()), "{text}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_table_or_a_lost_schema_record_is_refused() {
    with_each_backend(|config: StoreConfig| async move {
        Store::open(&config).await.unwrap().close().await;
        tamper(&config, "DROP TABLE events").await;
        let err = Store::open(&config).await.unwrap_err();
        assert!(
            matches!(&err, StoreError::Damaged { reason, .. } if reason.contains("events")),
            "{err}"
        );
        tamper(&config, "DROP TABLE bw_migrations").await;
        let err = Store::open(&config).await.unwrap_err();
        assert!(
            matches!(&err, StoreError::Damaged { reason, .. } if reason.contains("bw_migrations")),
            "{err}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_disk_full_and_lost_connections_are_classified_for_a_503() {
    // PostgreSQL's own disk cannot be filled from a test on a shared server; its error codes
    // are raised as they come from the server instead, and classified as they arrive.
    let config = bellwether_store::testing::fresh_postgres().await;
    let StoreConfig::Postgres { url, .. } = &config else {
        unreachable!()
    };
    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
    for (code, kind) in [
        ("53100", FailureKind::DiskFull),
        ("57P01", FailureKind::Unavailable),
        ("40001", FailureKind::Unavailable),
        ("23505", FailureKind::Other),
    ] {
        let source = sqlx::query(&format!(
            "DO $$ BEGIN RAISE EXCEPTION 'raised by a test' USING ERRCODE = '{code}'; END $$"
        ))
        .execute(&mut c)
        .await
        .unwrap_err();
        let err = StoreError::Query { op: "test", source };
        assert_eq!(err.failure_kind(), kind, "{code}: {err}");
    }
    c.close().await.unwrap();
}
