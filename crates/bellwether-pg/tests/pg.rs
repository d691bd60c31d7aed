//! bellwether-pg against real PostgreSQL clusters started by the test (initdb/pg_ctl from
//! /usr/lib/postgresql/*/bin, as the postgres user when root).

use std::time::Duration;

use bellwether_pg::testing::{TestCluster, TestClusterOptions};
use bellwether_pg::{apply, connect, read_conf_files, read_settings, PgError, Sampler};

fn cluster() -> TestCluster {
    TestCluster::start(TestClusterOptions::default())
}

/// The `postgresql.auto.conf` entries `pg_file_settings` shows.
async fn auto_conf(url: &str) -> Vec<(String, String)> {
    let inst = connect(url).await.unwrap();
    inst.client
        .query(
            "SELECT name, setting FROM pg_file_settings WHERE sourcefile LIKE '%/postgresql.auto.conf' ORDER BY seqno",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test]
async fn bad_url_and_refused_connection_are_clear_errors_without_the_password() {
    let err = connect("postgres://bob:s3cret@127.0.0.1:notaport/db")
        .await
        .err()
        .expect("a bad URL is refused");
    let text = err.to_string();
    assert!(matches!(err, PgError::Connect { .. }), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
    assert!(text.contains("not a valid connection"), "{text}");

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = connect(&format!("postgres://bob:s3cret@127.0.0.1:{port}/db"))
        .await
        .err()
        .expect("nothing listens there");
    let text = err.to_string();
    assert!(!text.contains("s3cret"), "{text}");
    assert!(text.contains(&format!("bob@127.0.0.1:{port}/db")), "{text}");
    assert!(text.to_lowercase().contains("refused"), "{text}");
}

#[tokio::test]
async fn reads_every_setting_with_its_columns() {
    let c = cluster();
    let inst = connect(&c.url()).await.unwrap();
    let cat = read_settings(&inst).await.unwrap();
    assert!(
        cat.server_version_num >= 100_000,
        "{}",
        cat.server_version_num
    );
    assert!(cat.settings.len() > 300, "{} settings", cat.settings.len());
    let wm = cat.get("work_mem").unwrap();
    assert_eq!(wm.unit.as_deref(), Some("kB"));
    assert_eq!(wm.vartype, bellwether_config::setting::VarType::Integer);
    assert_eq!(wm.min, Some(64.0));
    assert_eq!(wm.context, bellwether_config::setting::Context::User);
    let wl = cat.get("wal_level").unwrap();
    assert_eq!(wl.context, bellwether_config::setting::Context::Postmaster);
    assert!(
        wl.enumvals.contains(&"minimal".to_string()),
        "{:?}",
        wl.enumvals
    );
    let port = cat.get("port").unwrap();
    assert_eq!(port.value, c.port.to_string());
    assert_eq!(port.source, "configuration file");
    assert!(port
        .sourcefile
        .as_deref()
        .unwrap()
        .ends_with("postgresql.conf"));
    assert!(!cat.get("shared_buffers").unwrap().pending_restart);
}

#[tokio::test]
async fn reads_the_conf_files_with_includes_and_auto_conf() {
    let c = cluster();
    let extra = c.data_dir.join("extra.conf");
    std::fs::write(&extra, "work_mem = '12MB'\n").unwrap();
    let conf = c.data_dir.join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str("include 'extra.conf'\n");
    std::fs::write(&conf, text).unwrap();
    let inst = connect(&c.url()).await.unwrap();
    inst.client
        .batch_execute("ALTER SYSTEM SET random_page_cost = 1.5")
        .await
        .unwrap();
    let entries = read_conf_files(&inst).await.unwrap();
    let wm = entries.iter().find(|e| e.name == "work_mem").unwrap();
    assert_eq!(wm.value, "12MB");
    assert!(wm.file.ends_with("extra.conf"), "{}", wm.file);
    let last = entries.last().unwrap();
    assert_eq!(last.name, "random_page_cost");
    assert!(last.file.ends_with("postgresql.auto.conf"), "{}", last.file);

    // A malformed file is an error naming the file and line.
    std::fs::write(&extra, "work_mem = '12MB'\nthis is not = = valid\n").unwrap();
    let err = read_conf_files(&inst).await.expect_err("malformed");
    let text = err.to_string();
    assert!(text.contains("extra.conf:2"), "{text}");
}

#[tokio::test]
async fn apply_reloads_and_verifies() {
    let c = cluster();
    let report = apply(
        &c.url(),
        &[
            ("work_mem".into(), Some("8MB".into())),
            ("random_page_cost".into(), Some("1.5".into())),
            ("timezone".into(), Some("Europe/Paris".into())),
        ],
        false,
        None,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert!(report.reloaded && !report.restarted);
    assert_eq!(report.values["work_mem"], "8192");
    assert_eq!(report.values["random_page_cost"], "1.5");
    assert_eq!(report.values["TimeZone"], "Europe/Paris");
    assert!(report.pending_restart.is_empty());
    assert!(report.applied_at_ms > 0);
    // A new session sees them as defaults.
    let inst = connect(&c.url()).await.unwrap();
    let wm: String = inst
        .client
        .query_one("SHOW work_mem", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(wm, "8MB");

    // Reset puts the default back.
    let report = apply(
        &c.url(),
        &[("work_mem".into(), None)],
        false,
        None,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(report.values["work_mem"], "4096");
    assert!(!auto_conf(&c.url())
        .await
        .iter()
        .any(|(k, _)| k == "work_mem"));
}

#[tokio::test]
async fn apply_restarts_for_a_postmaster_setting() {
    let c = cluster();
    let argv = c.restart_argv();
    let report = apply(
        &c.url(),
        &[("shared_buffers".into(), Some("48MB".into()))],
        false,
        Some(&argv),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert!(report.restarted && !report.reloaded, "{report:?}");
    assert_eq!(report.values["shared_buffers"], "6144");
    assert!(report.pending_restart.is_empty());

    // Without a restart command nothing is changed.
    let before = auto_conf(&c.url()).await;
    let err = apply(
        &c.url(),
        &[
            ("work_mem".into(), Some("8MB".into())),
            ("max_connections".into(), Some("50".into())),
        ],
        false,
        None,
        Duration::from_secs(10),
    )
    .await
    .expect_err("no restart command");
    assert!(matches!(err, PgError::Restart(_)), "{err}");
    assert!(err.to_string().contains("max_connections"), "{err}");
    assert_eq!(auto_conf(&c.url()).await, before);
}

#[tokio::test]
async fn bad_values_are_refused_before_any_change() {
    let c = cluster();
    let before = auto_conf(&c.url()).await;
    for (set, needle) in [
        (vec![("work_mem", "8MB"), ("wrok_mem", "1MB")], "wrok_mem"),
        (
            vec![("work_mem", "8MB"), ("max_connections", "0")],
            "max_connections",
        ),
        (
            vec![("work_mem", "8MB"), ("work_mem", "12 parsecs")],
            "work_mem",
        ),
        (vec![("wal_level", "extreme")], "wal_level"),
        (vec![("server_version", "99")], "server_version"),
    ] {
        let set: Vec<(String, Option<String>)> = set
            .into_iter()
            .map(|(k, v)| (k.to_string(), Some(v.to_string())))
            .collect();
        let err = apply(&c.url(), &set, false, None, Duration::from_secs(10))
            .await
            .err()
            .unwrap_or_else(|| panic!("{set:?} accepted"));
        assert!(matches!(err, PgError::Value(_)), "{set:?}: {err}");
        assert!(err.to_string().contains(needle), "{set:?}: {err}");
        assert_eq!(
            auto_conf(&c.url()).await,
            before,
            "{set:?} changed the file"
        );
    }
}

#[tokio::test]
async fn a_statement_failing_midway_puts_the_earlier_ones_back() {
    let c = cluster();
    let inst = connect(&c.url()).await.unwrap();
    inst.client
        .batch_execute("ALTER SYSTEM SET random_page_cost = 2.5")
        .await
        .unwrap();
    let before = auto_conf(&c.url()).await;
    // Valid for the catalog (a string), refused by the server's own check.
    let err = apply(
        &c.url(),
        &[
            ("work_mem".into(), Some("8MB".into())),
            ("random_page_cost".into(), Some("1.1".into())),
            ("TimeZone".into(), Some("Not/AZone".into())),
        ],
        false,
        None,
        Duration::from_secs(10),
    )
    .await
    .expect_err("the time zone is refused by the server");
    // Refused by the server's ALTER SYSTEM (after two statements ran), not by validation.
    assert!(matches!(err, PgError::Query { .. }), "{err}");
    assert!(err.to_string().contains("TimeZone"), "{err}");
    assert_eq!(auto_conf(&c.url()).await, before);
}

#[tokio::test]
async fn a_role_without_rights_gets_a_permission_error_and_nothing_changes() {
    let c = cluster();
    let inst = connect(&c.url()).await.unwrap();
    inst.client
        .batch_execute("CREATE ROLE bob LOGIN NOSUPERUSER")
        .await
        .unwrap();
    let before = auto_conf(&c.url()).await;
    let err = apply(
        &c.url_for("bob", "postgres"),
        &[("work_mem".into(), Some("8MB".into()))],
        false,
        None,
        Duration::from_secs(10),
    )
    .await
    .expect_err("bob may not ALTER SYSTEM");
    assert!(matches!(err, PgError::Permission { .. }), "{err}");
    assert!(err.to_string().contains("permission denied"), "{err}");
    assert_eq!(auto_conf(&c.url()).await, before);
}

#[tokio::test]
async fn the_sampler_turns_counters_into_rates_and_reports_down() {
    let mut c = cluster();
    let inst = connect(&c.url()).await.unwrap();
    let worker = connect(&c.url()).await.unwrap();
    let mut s = Sampler::default();
    let first = s.sample(&inst, 1_000).await.unwrap();
    assert_eq!(first.get("up"), Some(&1.0));
    assert!(!first.contains_key("tps"));
    for _ in 0..20 {
        worker
            .client
            .batch_execute("BEGIN; SELECT 1; COMMIT")
            .await
            .unwrap();
    }
    assert!(worker.client.batch_execute("SELECT 1/0").await.is_err());
    // The worker's counters reach pg_stat_database when it flushes: force it (PG 15+).
    worker
        .client
        .batch_execute("SELECT pg_stat_force_next_flush()")
        .await
        .unwrap();
    let rates = s.sample(&inst, 2_000).await.unwrap();
    assert_eq!(rates["up"], 1.0);
    assert!(rates["tps"] >= 20.0, "{rates:?}");
    assert!(rates["errors_per_s"] >= 1.0, "{rates:?}");
    assert!(rates.contains_key("temp_bytes_per_s"), "{rates:?}");
    assert!(rates.contains_key("blks_read_per_s"), "{rates:?}");
    // The control: the reference query's time, on every read that reached the instance.
    for m in [&first, &rates] {
        let rtt = m["ref_latency_ms"];
        assert!(rtt.is_finite() && rtt > 0.0, "{m:?}");
    }
    c.stop().unwrap();
    let down = s.sample(&inst, 3_000).await.unwrap();
    assert_eq!(down.get("up"), Some(&0.0));
    assert_eq!(down.len(), 1);
}

#[test]
fn find_bindir_finds_the_instance_major_and_refuses_a_wrong_dir() {
    let test_bin = bellwether_pg::testing::find_test_bindir().unwrap();
    let major: u32 = test_bin
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .parse()
        .unwrap();
    let found = bellwether_pg::find_bindir(major * 10_000 + 3, None).unwrap();
    assert_eq!(found, test_bin);
    let err = bellwether_pg::find_bindir(major * 10_000, Some("/nonexistent".into()))
        .err()
        .unwrap();
    assert!(err.to_string().contains("/nonexistent"), "{err}");
    let err = bellwether_pg::find_bindir(90_000, None).err().unwrap();
    assert!(err.to_string().contains("PostgreSQL 9.0 binaries"), "{err}");
}
