//! Store behaviour, with every test body run against SQLite and against PostgreSQL.

use std::collections::BTreeMap;

use bellwether_model::{DriftScore, HostName, HostProfile, MetricSample, Unit};
use bellwether_store::testing::with_each_backend;
use bellwether_store::{Enrolment, EventKind, Store, StoreConfig, StoreError, TokenKind};

/// Declares a tokio test whose body runs once per backend with an open, migrated store.
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

fn host(s: &str) -> HostName {
    HostName::new(s).unwrap()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn profile(kernel: &str) -> HostProfile {
    HostProfile {
        hostname: Some("web-01".into()),
        kernel: Some(kernel.into()),
        packages: Some(BTreeMap::from([(
            "openssl".to_string(),
            "3.0.11".to_string(),
        )])),
        metrics: BTreeMap::from([("load1".to_string(), 0.5)]),
        ..HostProfile::default()
    }
}

fn sample(ts_ms: i64, name: &str, value: f64) -> MetricSample {
    MetricSample {
        ts_ms,
        name: name.into(),
        value,
    }
}

both_backends!(
    migrations_are_applied_once_and_reopen_is_idempotent,
    |store| {
        assert_eq!(
            store.applied_migrations().await.unwrap(),
            vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
        );
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopening_keeps_data_and_does_not_rerun_migrations() {
    with_each_backend(|config: StoreConfig| async move {
        let store = Store::open(&config).await.unwrap();
        store
            .enrol(&host("a"), &BTreeMap::new(), "agent-token-aaaaaaaa", 1)
            .await
            .unwrap();
        store.close().await;
        let again = Store::open(&config).await.unwrap();
        assert_eq!(
            again.applied_migrations().await.unwrap(),
            vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
        );
        assert_eq!(
            again.count_hosts().await.unwrap(),
            1,
            "{}",
            again.backend_name()
        );
        again.close().await;
    })
    .await;
}

both_backends!(fleet_tokens_are_stored_hashed_and_replaced, |store| {
    assert!(!store.has_token(TokenKind::Operator).await.unwrap());
    store
        .set_fleet_token(TokenKind::Operator, "operator-secret-0001", "test", 1)
        .await
        .unwrap();
    assert!(store.has_token(TokenKind::Operator).await.unwrap());
    let grant = store
        .authenticate("operator-secret-0001")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((grant.kind, grant.host), (TokenKind::Operator, None));
    // Setting a new one revokes the old one.
    store
        .set_fleet_token(TokenKind::Operator, "operator-secret-0002", "test", 2)
        .await
        .unwrap();
    assert_eq!(
        store.authenticate("operator-secret-0001").await.unwrap(),
        None
    );
    assert!(store
        .authenticate("operator-secret-0002")
        .await
        .unwrap()
        .is_some());
    assert_eq!(store.authenticate("").await.unwrap(), None);
});

both_backends!(bad_tokens_are_refused, |store| {
    let short = store
        .set_fleet_token(TokenKind::Enrol, "short", "test", 1)
        .await;
    assert!(
        matches!(short, Err(StoreError::BadInput { .. })),
        "{short:?}"
    );
    let agent = store
        .set_fleet_token(TokenKind::Agent, "agent-token-long-enough", "test", 1)
        .await;
    assert!(
        matches!(agent, Err(StoreError::BadInput { .. })),
        "{agent:?}"
    );
    assert!(!store.has_token(TokenKind::Enrol).await.unwrap());
});

both_backends!(enrol_issues_and_reenrol_revokes_agent_tokens, |store| {
    let web = host("web-01");
    let l = labels(&[("role", "web")]);
    assert_eq!(
        store
            .enrol(&web, &l, "agent-token-first-000", 10)
            .await
            .unwrap(),
        Enrolment::New
    );
    let grant = store
        .authenticate("agent-token-first-000")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (grant.kind, grant.host),
        (TokenKind::Agent, Some(web.clone()))
    );
    let l2 = labels(&[("role", "web"), ("zone", "b")]);
    assert_eq!(
        store
            .enrol(&web, &l2, "agent-token-second-00", 20)
            .await
            .unwrap(),
        Enrolment::Renewed
    );
    assert_eq!(
        store.authenticate("agent-token-first-000").await.unwrap(),
        None
    );
    assert!(store
        .authenticate("agent-token-second-00")
        .await
        .unwrap()
        .is_some());
    let rec = store.get_host(&web).await.unwrap().unwrap();
    assert_eq!(rec.labels, l2);
    assert_eq!(rec.enrolled_at_ms, 10);
    assert!(!rec.has_baseline());
    let events = store.events(Some(&web), 10).await.unwrap();
    assert_eq!(events.len(), 2);
    assert!(events.iter().all(|e| e.kind == "enrolled"));
    assert!(events[0].reason.contains("re-enrolled"), "{:?}", events[0]);
});

both_backends!(enrol_rejects_bad_labels_and_stores_nothing, |store| {
    let err = store
        .enrol(&host("x"), &labels(&[("", "v")]), "agent-token-xxxxxxxx", 1)
        .await;
    assert!(
        matches!(&err, Err(StoreError::BadInput { field, .. }) if field == "labels"),
        "{err:?}"
    );
    let long = "v".repeat(2000);
    let err = store
        .enrol(
            &host("x"),
            &labels(&[("k", &long)]),
            "agent-token-xxxxxxxx",
            1,
        )
        .await;
    assert!(
        matches!(&err, Err(StoreError::BadInput { field, .. }) if field == "labels.k"),
        "{err:?}"
    );
    assert_eq!(store.count_hosts().await.unwrap(), 0);
    assert_eq!(
        store.authenticate("agent-token-xxxxxxxx").await.unwrap(),
        None
    );
});

both_backends!(
    concurrent_enrolments_profiles_and_samples_all_succeed,
    |store| {
        let mut tasks = Vec::new();
        for i in 0..16 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let h = host(&format!("host-{i:02}"));
                let token = format!("agent-token-concurrent-{i:02}");
                store.enrol(&h, &BTreeMap::new(), &token, i).await?;
                store.put_profile(&h, &profile("6.1.0"), i).await?;
                let batch: Vec<MetricSample> = (0..50).map(|t| sample(t, "load1", 1.0)).collect();
                store.insert_samples(&h, &batch, i).await?;
                store
                    .enrol(&h, &BTreeMap::new(), &format!("{token}-again"), i)
                    .await?;
                Ok::<_, StoreError>(())
            }));
        }
        for t in tasks {
            t.await
                .unwrap()
                .unwrap_or_else(|e| panic!("{}: {e}", store.backend_name()));
        }
        assert_eq!(store.count_hosts().await.unwrap(), 16);
        assert_eq!(store.count_samples(&host("host-07")).await.unwrap(), 50);
    }
);

both_backends!(unknown_hosts_are_errors_naming_the_host, |store| {
    let ghost = host("ghost");
    assert!(store.get_host(&ghost).await.unwrap().is_none());
    let err = store
        .put_profile(&ghost, &profile("6.1"), 1)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "unknown host ghost");
    assert!(matches!(
        store
            .insert_samples(&ghost, &[sample(1, "load1", 1.0)], 1)
            .await,
        Err(StoreError::UnknownHost(_))
    ));
    assert!(matches!(
        store.baseline(&ghost).await,
        Err(StoreError::UnknownHost(_))
    ));
    assert!(matches!(
        store.drift(&ghost).await,
        Err(StoreError::UnknownHost(_))
    ));
    assert!(matches!(
        store.recent_metric_means(&ghost, 60_000).await,
        Err(StoreError::UnknownHost(_))
    ));
});

both_backends!(profiles_keep_current_and_distinct_history, |store| {
    let web = host("web-01");
    store
        .enrol(&web, &BTreeMap::new(), "agent-token-web-0001", 1)
        .await
        .unwrap();
    assert_eq!(store.current_profile(&web).await.unwrap(), None);
    let p1 = profile("6.1.0");
    assert!(
        store.put_profile(&web, &p1, 100).await.unwrap(),
        "first profile is a change"
    );
    // Same configuration, other metrics and time: current is replaced, history is not grown.
    let mut p1b = p1.clone();
    p1b.collected_at_ms = 999;
    p1b.metrics.insert("load1".into(), 7.0);
    assert!(!store.put_profile(&web, &p1b, 200).await.unwrap());
    assert_eq!(
        store.current_profile(&web).await.unwrap(),
        Some(p1b.clone())
    );
    let p2 = profile("6.5.0");
    assert!(store.put_profile(&web, &p2, 300).await.unwrap());
    let hist = store.profile_history(&web, 10).await.unwrap();
    assert_eq!(
        hist.iter()
            .map(|(ts, p)| (*ts, p.kernel.clone()))
            .collect::<Vec<_>>(),
        vec![
            (300, Some("6.5.0".to_string())),
            (100, Some("6.1.0".to_string()))
        ]
    );
    assert_eq!(
        store.get_host(&web).await.unwrap().unwrap().last_seen_ms,
        Some(300)
    );
    assert_eq!(
        store.current_profiles().await.unwrap(),
        vec![(web.clone(), p2)]
    );
    let kinds: Vec<String> = store
        .events(Some(&web), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        vec!["profile_changed", "profile_changed", "enrolled"]
    );
});

both_backends!(baselines_replace_and_log, |store| {
    let web = host("web-01");
    store
        .enrol(&web, &BTreeMap::new(), "agent-token-web-0001", 1)
        .await
        .unwrap();
    assert_eq!(store.baseline(&web).await.unwrap(), None);
    store
        .set_baseline(&web, &profile("6.1.0"), 5)
        .await
        .unwrap();
    store
        .set_baseline(&web, &profile("6.2.0"), 6)
        .await
        .unwrap();
    assert_eq!(
        store
            .baseline(&web)
            .await
            .unwrap()
            .unwrap()
            .kernel
            .as_deref(),
        Some("6.2.0")
    );
    let rec = store.get_host(&web).await.unwrap().unwrap();
    assert_eq!(rec.baseline_at_ms, Some(6));
    let ev = store.events(Some(&web), 1).await.unwrap();
    assert_eq!(ev[0].kind, "baseline_captured");
    assert_eq!(ev[0].figures["metrics"]["load1"], 0.5);
});

both_backends!(samples_batch_insert_and_windowed_means, |store| {
    let web = host("web-01");
    let db = host("db-01");
    store
        .enrol(&web, &BTreeMap::new(), "agent-token-web-0001", 1)
        .await
        .unwrap();
    store
        .enrol(&db, &BTreeMap::new(), "agent-token-db-00001", 1)
        .await
        .unwrap();
    assert!(store
        .recent_metric_means(&web, 60_000)
        .await
        .unwrap()
        .is_empty());
    // A batch larger than one SQLite statement chunk.
    let batch: Vec<MetricSample> = (0..1_203)
        .map(|i| {
            sample(
                i * 100,
                if i % 2 == 0 { "load1" } else { "mem" },
                (i % 10) as f64,
            )
        })
        .collect();
    assert_eq!(store.insert_samples(&web, &batch, 50).await.unwrap(), 1_203);
    assert_eq!(store.count_samples(&web).await.unwrap(), 1_203);
    assert_eq!(store.count_samples(&db).await.unwrap(), 0);
    // Window: the last second before the newest sample (ts 120_200) holds ts 119_300..=120_200.
    let means = store.recent_metric_means(&web, 1_000).await.unwrap();
    let expect = |parity: i64| {
        let v: Vec<f64> = (1_193..1_203)
            .filter(|i| i % 2 == parity)
            .map(|i| (i % 10) as f64)
            .collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    assert!((means["load1"] - expect(0)).abs() < 1e-9, "{means:?}");
    assert!((means["mem"] - expect(1)).abs() < 1e-9, "{means:?}");
    assert_eq!(
        store.get_host(&web).await.unwrap().unwrap().last_seen_ms,
        Some(50)
    );
    assert_eq!(store.insert_samples(&web, &[], 60).await.unwrap(), 0);
});

both_backends!(old_samples_are_pruned_per_host, |store| {
    let web = host("web-01");
    let db = host("db-01");
    store
        .enrol(&web, &BTreeMap::new(), "agent-token-web-0001", 1)
        .await
        .unwrap();
    store
        .enrol(&db, &BTreeMap::new(), "agent-token-db-00001", 1)
        .await
        .unwrap();
    let batch: Vec<MetricSample> = (0..10).map(|i| sample(i * 1000, "load1", 1.0)).collect();
    store.insert_samples(&web, &batch, 1).await.unwrap();
    store.insert_samples(&db, &batch, 1).await.unwrap();
    assert_eq!(store.prune_samples(5_000).await.unwrap(), 10);
    assert_eq!(store.count_samples(&web).await.unwrap(), 5);
    assert_eq!(store.count_samples(&db).await.unwrap(), 5);
    assert_eq!(store.prune_samples(5_000).await.unwrap(), 0);
});

both_backends!(bad_samples_store_nothing_and_name_the_sample, |store| {
    let web = host("web-01");
    store
        .enrol(&web, &BTreeMap::new(), "agent-token-web-0001", 1)
        .await
        .unwrap();
    let batch = vec![sample(1, "load1", 1.0), sample(2, "load1", f64::NAN)];
    let err = store.insert_samples(&web, &batch, 2).await.unwrap_err();
    assert!(err.to_string().contains("samples[1].value"), "{err}");
    let batch = vec![sample(1, "", 1.0)];
    let err = store.insert_samples(&web, &batch, 2).await.unwrap_err();
    assert!(err.to_string().contains("samples[0].name"), "{err}");
    let batch = vec![sample(1, "load1", f64::INFINITY)];
    assert!(store.insert_samples(&web, &batch, 2).await.is_err());
    assert_eq!(store.count_samples(&web).await.unwrap(), 0);
});

both_backends!(drift_scores_round_trip_and_show_in_listing, |store| {
    let web = host("web-01");
    let db = host("db-01");
    store
        .enrol(&web, &BTreeMap::new(), "agent-token-web-0001", 1)
        .await
        .unwrap();
    store
        .enrol(&db, &BTreeMap::new(), "agent-token-db-00001", 1)
        .await
        .unwrap();
    assert_eq!(store.drift(&web).await.unwrap(), None);
    let score = DriftScore {
        configuration: Unit::saturating(0.4),
        overall: Unit::saturating(0.25),
        ..DriftScore::default()
    };
    store.put_drift(&web, &score, 9).await.unwrap();
    let stored = store.drift(&web).await.unwrap().unwrap();
    assert_eq!(stored.score, score);
    assert_eq!(stored.computed_at_ms, 9);
    let hosts = store.list_hosts().await.unwrap();
    assert_eq!(
        hosts.iter().map(|h| h.name.as_str()).collect::<Vec<_>>(),
        vec!["db-01", "web-01"]
    );
    assert_eq!(hosts[1].overall_drift, Some(0.25));
    assert_eq!(hosts[0].overall_drift, None);
    assert_eq!(store.all_drift().await.unwrap().len(), 1);
});

both_backends!(events_are_appended_and_filtered, |store| {
    let web = host("web-01");
    store
        .record_event(
            EventKind::SamplesDropped,
            Some(&web),
            "agent dropped samples",
            &serde_json::json!({"dropped": 12}),
            7,
        )
        .await
        .unwrap();
    store
        .record_event(
            EventKind::DriftRecomputed,
            None,
            "fleet",
            &serde_json::json!({}),
            8,
        )
        .await
        .unwrap();
    let all = store.events(None, 10).await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].kind, "drift_recomputed");
    let mine = store.events(Some(&web), 10).await.unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].figures["dropped"], 12);
    assert_eq!(mine[0].ts_ms, 7);
});

#[test]
fn database_urls_are_parsed_or_refused_with_the_field() {
    assert!(matches!(
        StoreConfig::from_url("postgres://u@h/db"),
        Ok(StoreConfig::Postgres { schema: None, .. })
    ));
    assert!(matches!(
        StoreConfig::from_url("sqlite:///tmp/x.db"),
        Ok(StoreConfig::Sqlite { .. })
    ));
    let err = StoreConfig::from_url("mysql://x").unwrap_err().to_string();
    assert!(err.starts_with("bad database:"), "{err}");
    assert!(StoreConfig::from_url("sqlite://").is_err());
}

#[tokio::test]
async fn bad_schema_names_are_refused() {
    let config = StoreConfig::Postgres {
        url: "postgres://postgres@127.0.0.1:5432/test".into(),
        schema: Some("x\"; drop".into()),
    };
    let err = Store::open(&config).await.unwrap_err();
    assert!(err.to_string().starts_with("bad schema:"), "{err}");
}

#[tokio::test]
async fn an_unopenable_sqlite_path_names_the_path() {
    let config = StoreConfig::Sqlite {
        path: "/nonexistent-dir-bw/sub/bellwether.db".into(),
    };
    let err = Store::open(&config).await.unwrap_err().to_string();
    assert!(
        err.contains("/nonexistent-dir-bw/sub/bellwether.db"),
        "{err}"
    );
}
