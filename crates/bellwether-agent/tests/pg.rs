//! The agent's PostgreSQL side against a real cluster: the pg built-ins through the executor,
//! the metrics it adds to a collection, the configuration reports it sends, and bad flags.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bellwether_agent::exec::{AllowList, Executor};
use bellwether_agent::pg::{
    config_loop, parse_database, parse_restart, ConfigLoopSettings, ConfigTransport, PgCollector,
    PgDatabases,
};
use bellwether_agent::SendError;
use bellwether_model::wire::{ActionOutcome, ConfigGraphRequest, ConfigReportRequest};
use bellwether_model::ActionSpec;
use bellwether_pg::testing::{TestCluster, TestClusterOptions};

fn executor(dbs: PgDatabases, allow: &[&str]) -> (Executor, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("root")).unwrap();
    let ex = Executor::new(
        dir.path().join("root"),
        &dir.path().join("state"),
        &[],
        None,
    )
    .unwrap()
    .with_allow_list(AllowList::parse(allow).unwrap())
    .with_databases(dbs);
    (ex, dir)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pg_builtins_read_apply_and_trial_on_a_real_instance() {
    let c = TestCluster::start(TestClusterOptions::default());
    let restart = c.restart_argv();
    let dbs = PgDatabases::new(
        vec![("main".into(), c.url())],
        vec![("main".into(), restart)],
    )
    .unwrap();
    let (ex, _dir) = executor(dbs, &[]);

    let r = ex
        .run(&ActionSpec::PgReadSettings {
            database: "main".into(),
        })
        .await;
    assert_eq!(r.outcome, ActionOutcome::Ok, "{r:?}");
    let out = r.output.unwrap();
    assert_eq!(out["settings"]["port"]["value"], c.port.to_string());

    let r = ex
        .run(&ActionSpec::PgTrial {
            database: "main".into(),
            settings: vec![("wal_level".into(), Some("minimal".into()))],
            timeout_ms: Some(60_000),
        })
        .await;
    assert_eq!(r.outcome, ActionOutcome::Ok, "{r:?}");
    let trial = r.output.unwrap();
    assert_eq!(trial["started"], false, "{trial}");
    assert!(
        trial["message"]
            .as_str()
            .unwrap()
            .contains("max_wal_senders"),
        "{trial}"
    );

    let r = ex
        .run(&ActionSpec::PgTrial {
            database: "main".into(),
            settings: vec![("work_mem".into(), Some("64MB".into()))],
            timeout_ms: Some(60_000),
        })
        .await;
    assert_eq!(r.output.unwrap()["started"], true);

    let r = ex
        .run(&ActionSpec::PgApply {
            database: "main".into(),
            settings: vec![("max_connections".into(), Some("90".into()))],
            restart: false,
            timeout_ms: Some(60_000),
        })
        .await;
    assert_eq!(r.outcome, ActionOutcome::Ok, "{r:?}");
    let report = r.output.unwrap();
    assert_eq!(report["restarted"], true, "{report}");
    assert_eq!(report["values"]["max_connections"], "90", "{report}");

    // An unknown database and a bad value fail with the name, and change nothing.
    let r = ex
        .run(&ActionSpec::PgReadSettings {
            database: "other".into(),
        })
        .await;
    match r.outcome {
        ActionOutcome::Failed { error, .. } => {
            assert!(error.contains("no database \"other\""), "{error}")
        }
        o => panic!("{o:?}"),
    }
    let r = ex
        .run(&ActionSpec::PgApply {
            database: "main".into(),
            settings: vec![("work_mem".into(), Some("1 parsec".into()))],
            restart: false,
            timeout_ms: None,
        })
        .await;
    match r.outcome {
        ActionOutcome::Failed { error, .. } => assert!(error.contains("work_mem"), "{error}"),
        o => panic!("{o:?}"),
    }
}

#[tokio::test]
async fn the_allow_list_names_the_pg_builtins() {
    let dbs = PgDatabases::new(
        vec![("main".into(), "postgres://u@127.0.0.1:1/db".into())],
        vec![],
    )
    .unwrap();
    let (ex, _dir) = executor(dbs, &["pg_read_settings"]);
    let r = ex
        .run(&ActionSpec::PgApply {
            database: "main".into(),
            settings: vec![("work_mem".into(), Some("8MB".into()))],
            restart: false,
            timeout_ms: None,
        })
        .await;
    assert!(matches!(r.outcome, ActionOutcome::Refused { .. }), "{r:?}");
    // A refused connection is a clear failure naming the target, not the password.
    let r = ex
        .run(&ActionSpec::PgReadSettings {
            database: "main".into(),
        })
        .await;
    match r.outcome {
        ActionOutcome::Failed { error, .. } => {
            assert!(error.contains("u@127.0.0.1:1/db"), "{error}")
        }
        o => panic!("{o:?}"),
    }
}

#[tokio::test]
async fn metrics_are_added_as_pg_samples_and_down_is_zero() {
    let mut c = TestCluster::start(TestClusterOptions::default());
    let dbs = PgDatabases::new(vec![("main".into(), c.url())], vec![]).unwrap();
    let mut col = PgCollector::new((), dbs);
    let first = col.sample(1_000).await;
    // No interval yet: no rates, only `up` and the control (the reference query's time).
    assert_eq!(
        first.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        vec!["pg.main.up", "pg.main.ref_latency_ms"]
    );
    assert_eq!(first[0].value, 1.0);
    assert!(first[1].value > 0.0, "{first:?}");
    let second = col.sample(2_000).await;
    let names: Vec<&str> = second.iter().map(|s| s.name.as_str()).collect();
    for m in [
        "pg.main.up",
        "pg.main.tps",
        "pg.main.errors_per_s",
        "pg.main.temp_bytes_per_s",
    ] {
        assert!(names.contains(&m), "{names:?}");
    }
    c.stop().unwrap();
    let down = col.sample(3_000).await;
    assert_eq!(down.len(), 1);
    assert_eq!(down[0].name, "pg.main.up");
    assert_eq!(down[0].value, 0.0);
}

#[derive(Clone, Default)]
struct Sent {
    reports: Arc<Mutex<Vec<ConfigReportRequest>>>,
    fail_first: Arc<Mutex<usize>>,
}

impl ConfigTransport for Sent {
    async fn send_config(&self, _token: &str, req: &ConfigReportRequest) -> Result<(), SendError> {
        let mut f = self.fail_first.lock().unwrap();
        if *f > 0 {
            *f -= 1;
            return Err(SendError::Unavailable("404: no such route".into()));
        }
        self.reports.lock().unwrap().push(req.clone());
        Ok(())
    }
    async fn send_graph(&self, _token: &str, _req: &ConfigGraphRequest) -> Result<(), SendError> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn reports_are_sent_at_start_retried_and_sent_again_on_change() {
    let c = TestCluster::start(TestClusterOptions::default());
    let dbs = PgDatabases::new(vec![("main".into(), c.url())], vec![]).unwrap();
    let sent = Sent::default();
    *sent.fail_first.lock().unwrap() = 1;
    let (_tx, rx) = tokio::sync::watch::channel(Some("tok".to_string()));
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let settings = ConfigLoopSettings {
        files: vec![],
        rootfs: "/".into(),
        interval: Duration::from_millis(200),
        learn_graph: false,
    };
    let task = tokio::spawn(config_loop(sent.clone(), rx, dbs, settings, async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    }));
    let wait_for = |n: usize| {
        let sent = sent.clone();
        async move {
            for _ in 0..200 {
                if sent.reports.lock().unwrap().len() >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("fewer than {n} reports");
        }
    };
    wait_for(1).await;
    let first = sent.reports.lock().unwrap()[0].clone();
    assert_eq!(first.source, "main");
    assert_eq!(first.values["port"], c.port.to_string());
    assert!(first.catalog.is_some());
    let inst = bellwether_pg::connect(&c.url()).await.unwrap();
    inst.client
        .batch_execute("ALTER SYSTEM SET work_mem = '7MB'")
        .await
        .unwrap();
    inst.client
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    wait_for(2).await;
    let second = sent.reports.lock().unwrap()[1].clone();
    assert_eq!(second.values["work_mem"], "7168");
    stop_tx.send_replace(true);
    task.await.unwrap();
}

#[test]
fn bad_flags_are_named_and_passwords_never_repeated() {
    assert_eq!(
        parse_database("main=postgres://u@h:5432/db").unwrap(),
        ("main".into(), "postgres://u@h:5432/db".into())
    );
    let e = parse_database("main").unwrap_err();
    assert!(e.contains("NAME=URL"), "{e}");
    let e = parse_database("pg.1=postgres://u@h/db").unwrap_err();
    assert!(e.contains("\"pg.1\""), "{e}");
    let e = parse_database("main=postgres://u:s3cret@h:notaport/db").unwrap_err();
    assert!(!e.contains("s3cret") && e.contains("main"), "{e}");
    let e = parse_database("main=@/nonexistent/url").unwrap_err();
    assert!(e.contains("/nonexistent/url"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("url");
    std::fs::write(&f, "postgres://u:pw@h:5/db\n").unwrap();
    assert_eq!(
        parse_database(&format!("main=@{}", f.display())).unwrap().1,
        "postgres://u:pw@h:5/db"
    );

    assert_eq!(
        parse_restart("main=systemctl restart 'postgresql@15-main'").unwrap(),
        (
            "main".into(),
            vec![
                "systemctl".into(),
                "restart".into(),
                "postgresql@15-main".into()
            ]
        )
    );
    assert!(parse_restart("main=pg_ctl 'restart")
        .unwrap_err()
        .contains("quotes"));
    assert!(parse_restart("main=").unwrap_err().contains("empty"));
    let e = PgDatabases::new(vec![], vec![("x".into(), vec!["true".into()])]).unwrap_err();
    assert!(e.contains("--database-restart x"), "{e}");
    let e = PgDatabases::new(
        vec![
            ("a".into(), "postgres://h/db".into()),
            ("a".into(), "postgres://h/db".into()),
        ],
        vec![],
    )
    .unwrap_err();
    assert!(e.contains("twice"), "{e}");
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A `pg_apply` with a restart ends the collector's connection; the agent starts a new
/// sampling interval on a fresh connection when the apply finishes, so the collector's first
/// round after it already has rates (without it: `up` 0, then a round with no rates).
#[tokio::test(flavor = "multi_thread")]
async fn after_an_apply_the_next_round_has_an_interval_begun_at_its_end() {
    let c = TestCluster::start(TestClusterOptions::default());
    let dbs = PgDatabases::new(
        vec![("main".into(), c.url())],
        vec![("main".into(), c.restart_argv())],
    )
    .unwrap();
    let mut col = PgCollector::new((), dbs.clone());
    col.sample(wall_ms()).await;
    let spec = ActionSpec::PgApply {
        database: "main".into(),
        settings: vec![("max_wal_senders".into(), Some("5".into()))],
        restart: true,
        timeout_ms: None,
    };
    let report = dbs.run(&spec, Duration::from_secs(60)).await.unwrap();
    assert_eq!(report["restarted"], true, "{report}");
    let after = col.sample(wall_ms()).await;
    let names: Vec<&str> = after.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"pg.main.tps"), "{after:?}");
    assert_eq!(after[0].name, "pg.main.up");
    assert_eq!(after[0].value, 1.0, "{after:?}");
}
