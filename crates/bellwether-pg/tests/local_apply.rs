//! The one-machine runner on real clusters with pgbench running: a harmful change is detected,
//! traced and reverted; a harmless one is kept; a change that would stop the server is refused
//! by the trial and never reaches the instance; a restart-context change is applied and
//! reverted with a restart. Each test starts its own cluster (initdb/pg_ctl from
//! /usr/lib/postgresql/*/bin, as `postgres` when run as root).

use std::time::Duration;

mod support;

use bellwether_engine::config::{Phase, WatchSpec};
use bellwether_pg::local::{run, LocalOptions};
use bellwether_pg::testing::{psql, sort_workload, TestCluster, TestClusterOptions};
use support::{names, one_at_a_time, rt};

fn watch() -> WatchSpec {
    // Shorter than the defaults so each test stays under ~40 s; the defaults are what the
    // corpus bench runs with.
    let mut w = WatchSpec::defaults();
    w.baseline_ms = 6_000;
    w.min_baseline_samples = 4;
    w.bake_ms = 12_000;
    w.confirm_ms = 4_000;
    w.confirm_timeout_ms = 30_000;
    w
}

fn opts(set: &[(&str, Option<&str>)], desc: &str) -> LocalOptions {
    let mut o = LocalOptions::new(
        set.iter()
            .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
            .collect(),
        desc,
    );
    o.watch = watch();
    o.max_duration = Duration::from_secs(90);
    o
}

#[test]
fn a_harmful_work_mem_is_traced_and_reverted() {
    let _serial = one_at_a_time();
    let c = TestCluster::start(TestClusterOptions::default());
    let (_dir, _bench) = sort_workload(&c);
    let o = opts(&[("work_mem", Some("64kB"))], "work_mem 64kB");
    let r = rt()
        .block_on(run(&c.url(), &o, Some(&c.restart_argv())))
        .unwrap();
    assert_eq!(r.phase, Phase::RolledBack, "{:#?}", names(&r));
    // An anomaly may first be traced below the risk threshold (keep watching) and retraced
    // as its severity grows; the trace that ends the bake decides to revert.
    let traces: Vec<_> = r.events.iter().filter(|e| e.name == "traced").collect();
    let last = traces.last().expect("traced");
    assert_eq!(last.figures["decision"], "revert", "{:#?}", names(&r));
    assert!(
        traces[..traces.len() - 1]
            .iter()
            .all(|t| t.figures["decision"] == "keep_watching"
                || t.figures["decision"] == "confirm"),
        "only the last trace reverts: {:#?}",
        names(&r)
    );
    // A trace of one metric alone waits for its second reading: the revert came on a newer
    // sample than the trace that asked for it.
    if traces.len() >= 2 && traces[traces.len() - 2].figures["decision"] == "confirm" {
        assert!(
            last.at_ms > traces[traces.len() - 2].at_ms,
            "{:#?}",
            names(&r)
        );
    }
    // The control was measured on the real instance, before the apply and during the
    // anomaly, and it is in the trace with the risk's `host` factor.
    let control = &last.figures["control"];
    assert_eq!(control["metric"], "ref_latency_ms", "{:#?}", last.figures);
    assert!(control["baseline"].as_f64().unwrap() > 0.0, "{control}");
    assert!(
        control["baseline_samples"].as_u64().unwrap() >= 2,
        "{control}"
    );
    assert!(
        control["during_samples"].as_u64().unwrap() >= 2,
        "{control}"
    );
    assert!(
        last.figures["risk"]["factors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["name"] == "host"),
        "{:#?}",
        last.figures["risk"]
    );
    assert!(r.event("reverted").is_some());
    assert!(r.event("recovered").is_some(), "{:#?}", names(&r));
    assert_eq!(psql(&c, "SHOW work_mem"), "4MB");
    // The revert reset it: nothing of the change is left in postgresql.auto.conf.
    assert_eq!(
        psql(&c, "SELECT count(*) FROM pg_file_settings WHERE name = 'work_mem' AND sourcefile LIKE '%auto.conf'"),
        "0"
    );
}

#[test]
fn a_harmless_change_is_kept() {
    let _serial = one_at_a_time();
    let c = TestCluster::start(TestClusterOptions::default());
    let (_dir, _bench) = sort_workload(&c);
    let o = opts(
        &[("log_min_duration_statement", Some("10s"))],
        "log slow statements",
    );
    let r = rt()
        .block_on(run(&c.url(), &o, Some(&c.restart_argv())))
        .unwrap();
    assert_eq!(r.phase, Phase::Completed, "{:#?}", names(&r));
    assert!(r.event("promoted").is_some());
    assert!(r.event("reverted").is_none());
    assert_eq!(psql(&c, "SHOW log_min_duration_statement"), "10s");
}

#[test]
fn a_change_that_would_not_start_is_refused_and_the_instance_untouched() {
    let _serial = one_at_a_time();
    let c = TestCluster::start(TestClusterOptions::default());
    let before = psql(
        &c,
        "SELECT string_agg(name || '=' || setting, ',' ORDER BY name) FROM pg_settings",
    );
    let o = opts(&[("wal_level", Some("minimal"))], "wal_level minimal");
    let r = rt()
        .block_on(run(&c.url(), &o, Some(&c.restart_argv())))
        .unwrap();
    assert_eq!(r.phase, Phase::Refused, "{:#?}", names(&r));
    let refused = r.event("trial_refused").expect("trial_refused");
    assert!(
        refused.reason.contains("max_wal_senders") || refused.reason.contains("wal_level"),
        "{}",
        refused.reason
    );
    assert!(r.event("applied").is_none());
    assert!(r.event("snapshot").is_none());
    let after = psql(
        &c,
        "SELECT string_agg(name || '=' || setting, ',' ORDER BY name) FROM pg_settings",
    );
    assert_eq!(before, after);
    assert_eq!(
        psql(
            &c,
            "SELECT count(*) FROM pg_file_settings WHERE sourcefile LIKE '%auto.conf'"
        ),
        "0"
    );
}

#[test]
fn a_restart_context_change_is_applied_and_reverted_with_a_restart() {
    let _serial = one_at_a_time();
    let c = TestCluster::start(TestClusterOptions::default());
    let (_dir, _bench) = sort_workload(&c);
    let sb = psql(&c, "SHOW shared_buffers");
    let o = opts(
        &[("shared_buffers", Some("1MB")), ("work_mem", Some("64kB"))],
        "tiny shared_buffers and work_mem",
    );
    let r = rt()
        .block_on(run(&c.url(), &o, Some(&c.restart_argv())))
        .unwrap();
    assert_eq!(r.phase, Phase::RolledBack, "{:#?}", names(&r));
    let applied = r.event("applied").expect("applied");
    assert_eq!(applied.figures["report"]["restarted"], true, "{applied:?}");
    let reverted = r.event("reverted").expect("reverted");
    assert_eq!(reverted.figures["restart"], true);
    assert_eq!(
        reverted.figures["report"]["restarted"], true,
        "{reverted:?}"
    );
    let recovered = r.event("recovered").expect("recovered");
    // Where the time went, from the apply's restart to the end of the confirm window
    // (`-- --nocapture` prints it; docs/config-apply.md has the breakdown).
    let applied_at = applied.figures["applied_at_ms"]
        .as_i64()
        .expect("applied_at_ms");
    for e in r
        .events
        .iter()
        .filter(|e| e.name != "changed" && e.name != "snapshot")
    {
        eprintln!(
            "{:>7.2} s {:<12} {}",
            (e.at_ms - applied_at) as f64 / 1000.0,
            e.name,
            e.reason
        );
    }
    assert!(
        recovered.figures["bad_change_to_recovered_ms"]
            .as_i64()
            .is_some_and(|ms| ms > 0),
        "{recovered:?}"
    );
    assert_eq!(psql(&c, "SHOW shared_buffers"), sb);
    assert_eq!(psql(&c, "SHOW work_mem"), "4MB");
}

/// A change that sets session limits on the whole instance (`statement_timeout = 5ms`,
/// `default_transaction_read_only = on`, a tiny `lock_timeout` and `idle_session_timeout`, a
/// `search_path` that names nothing) must not lock Bellwether out: its own sessions set their
/// own values at startup, so reading the instance, applying and reverting still work, and the
/// snapshot shows the instance's values, not the session's.
#[test]
fn the_instance_s_session_limits_do_not_lock_bellwether_out() {
    let _serial = one_at_a_time();
    let c = TestCluster::start(TestClusterOptions::default());
    for sql in [
        "ALTER SYSTEM SET statement_timeout = '5ms'",
        "ALTER SYSTEM SET default_transaction_read_only = on",
        "ALTER SYSTEM SET lock_timeout = '1ms'",
        "ALTER SYSTEM SET idle_session_timeout = '50ms'",
        "ALTER SYSTEM SET search_path = 'nowhere'",
    ] {
        psql(&c, sql);
    }
    psql(&c, "SELECT pg_reload_conf()");
    // The trap is set for an ordinary session.
    assert_eq!(psql(&c, "SHOW statement_timeout"), "5ms");
    assert_eq!(psql(&c, "SHOW default_transaction_read_only"), "on");
    let url = c.url();
    rt().block_on(async {
        let inst = bellwether_pg::connect(&url).await.unwrap();
        // Longer than the instance's statement_timeout, idle longer than its
        // idle_session_timeout, then a write: the session's own settings hold.
        inst.client
            .batch_execute("SELECT pg_sleep(0.1)")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        inst.client
            .batch_execute("CREATE TEMP TABLE bellwether_probe (x int)")
            .await
            .unwrap();
        // The snapshot shows the instance's values, where they came from.
        let cat = bellwether_pg::read_settings(&inst).await.unwrap();
        let st = &cat.settings["statement_timeout"];
        assert_eq!(st.value, "5");
        assert_eq!(st.source, "configuration file");
        assert!(st
            .sourcefile
            .as_deref()
            .is_some_and(|f| f.ends_with("postgresql.auto.conf")));
        assert_eq!(cat.settings["default_transaction_read_only"].value, "on");
        let mut sampler = bellwether_pg::Sampler::default();
        sampler.sample(&inst, 1_000).await.unwrap();
        let m = sampler.sample(&inst, 2_000).await.unwrap();
        assert_eq!(m.get("up"), Some(&1.0));
        assert!(m.contains_key("tps"), "{m:?}");

        // An apply under the trap, then the revert of the trap itself.
        let timeout = Duration::from_secs(30);
        let applied = bellwether_pg::apply(
            &url,
            &[("work_mem".into(), Some("1MB".into()))],
            false,
            None,
            timeout,
        )
        .await
        .unwrap();
        assert!(applied.reloaded);
        assert_eq!(applied.values["work_mem"], "1024");
        let reverted = bellwether_pg::apply(
            &url,
            &[
                ("statement_timeout".into(), None),
                ("default_transaction_read_only".into(), None),
                ("lock_timeout".into(), None),
                ("idle_session_timeout".into(), None),
                ("search_path".into(), None),
            ],
            false,
            None,
            timeout,
        )
        .await
        .unwrap();
        // The instance's values after the revert, not this session's.
        assert_eq!(reverted.values["statement_timeout"], "0");
        assert_eq!(reverted.values["default_transaction_read_only"], "off");
        assert_eq!(reverted.values["search_path"], "\"$user\", public");
        // A session-limit change applied with a restart works too (the reconnect after the
        // restart sets its own values again).
        psql(&c, "ALTER SYSTEM SET statement_timeout = '5ms'");
        let restarted = bellwether_pg::apply(
            &url,
            &[("statement_timeout".into(), None)],
            true,
            Some(&c.restart_argv()),
            timeout,
        )
        .await
        .unwrap();
        assert!(restarted.restarted);
        assert_eq!(restarted.values["statement_timeout"], "0");
    });
    assert_eq!(psql(&c, "SHOW statement_timeout"), "0");
    assert_eq!(psql(&c, "SHOW default_transaction_read_only"), "off");
    assert_eq!(psql(&c, "SHOW search_path"), "\"$user\", public");
}
