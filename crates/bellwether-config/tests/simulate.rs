//! The change simulator on a small PostgreSQL 15 catalog and the shipped rules.

use std::collections::BTreeMap;

use bellwether_config::graph::Graph;
use bellwether_config::perf::{PerfModel, PerfObservation};
use bellwether_config::rules::shipped_rules;
use bellwether_config::setting::{ApplyKind, Catalog, Context, Setting, VarType};
use bellwether_config::simulate::{proposed_values, simulate, SimInput, StartTrial, Verdict};

#[allow(clippy::too_many_arguments)]
fn setting(
    name: &str,
    value: &str,
    vartype: VarType,
    context: Context,
    unit: Option<&str>,
    range: Option<(f64, f64)>,
    enumvals: &[&str],
) -> Setting {
    Setting {
        name: name.to_string(),
        value: value.to_string(),
        unit: unit.map(str::to_string),
        vartype,
        context,
        min: range.map(|r| r.0),
        max: range.map(|r| r.1),
        enumvals: enumvals.iter().map(|s| s.to_string()).collect(),
        boot_val: Some(value.to_string()),
        reset_val: Some(value.to_string()),
        source: "default".to_string(),
        sourcefile: None,
        sourceline: None,
        pending_restart: false,
        category: String::new(),
        short_desc: String::new(),
    }
}

fn catalog() -> Catalog {
    use Context::*;
    use VarType::*;
    let list = vec![
        setting(
            "wal_level",
            "replica",
            Enum,
            Postmaster,
            None,
            None,
            &["minimal", "replica", "logical"],
        ),
        setting(
            "max_wal_senders",
            "10",
            Integer,
            Postmaster,
            None,
            Some((0.0, 262143.0)),
            &[],
        ),
        setting(
            "max_connections",
            "100",
            Integer,
            Postmaster,
            None,
            Some((1.0, 262143.0)),
            &[],
        ),
        setting(
            "superuser_reserved_connections",
            "3",
            Integer,
            Postmaster,
            None,
            Some((0.0, 262143.0)),
            &[],
        ),
        setting(
            "work_mem",
            "4096",
            Integer,
            User,
            Some("kB"),
            Some((64.0, 2147483647.0)),
            &[],
        ),
        setting(
            "shared_buffers",
            "16384",
            Integer,
            Postmaster,
            Some("8kB"),
            Some((16.0, 1073741823.0)),
            &[],
        ),
        setting(
            "random_page_cost",
            "4",
            Real,
            User,
            None,
            Some((0.0, 1.79769e308)),
            &[],
        ),
        setting(
            "archive_mode",
            "off",
            Enum,
            Postmaster,
            None,
            None,
            &["always", "on", "off"],
        ),
        setting(
            "archive_command",
            "",
            VarType::String,
            Sighup,
            None,
            None,
            &[],
        ),
        setting(
            "log_directory",
            "log",
            VarType::String,
            Sighup,
            None,
            None,
            &[],
        ),
        setting(
            "logging_collector",
            "off",
            Bool,
            Postmaster,
            None,
            None,
            &[],
        ),
        setting("data_checksums", "off", Bool, Internal, None, None, &[]),
    ];
    Catalog {
        server_version_num: 150_004,
        settings: list.into_iter().map(|s| (s.name.clone(), s)).collect(),
    }
}

fn graph() -> Graph {
    let mut g = Graph::default();
    g.merge(
        vec![],
        shipped_rules(150_004).into_iter().map(|r| r.edge).collect(),
    );
    g
}

fn set(pairs: &[(&str, Option<&str>)]) -> Vec<(String, Option<String>)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
        .collect()
}

fn run(
    pairs: &[(&str, Option<&str>)],
    trial: Option<StartTrial>,
    perf: Option<&PerfModel>,
) -> bellwether_config::simulate::SimReport {
    let c = catalog();
    let g = graph();
    simulate(
        &SimInput {
            catalog: &c,
            graph: &g,
            perf,
            history: &[],
            trial,
        },
        &set(pairs),
    )
}

#[test]
fn a_broken_dependency_is_refused_with_the_rule() {
    let r = run(&[("wal_level", Some("minimal"))], None, None);
    assert_eq!(r.verdict, Verdict::Refuse);
    assert_eq!(r.violations.len(), 1);
    assert_eq!(r.violations[0].rule, "wal_level_minimal_no_wal_senders");
    assert!(
        r.reasons
            .iter()
            .any(|s| s.contains("wal_level = minimal requires max_wal_senders = 0 (it is 10)")),
        "{:?}",
        r.reasons
    );
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["verdict"], "refuse");
    // Changing both together is fine, and takes a restart.
    let r = run(
        &[
            ("wal_level", Some("minimal")),
            ("max_wal_senders", Some("0")),
        ],
        None,
        None,
    );
    assert_eq!(r.verdict, Verdict::Restart, "{:?}", r.reasons);
    assert!(r.violations.is_empty());
    let r = run(
        &[("superuser_reserved_connections", Some("100"))],
        None,
        None,
    );
    assert_eq!(r.verdict, Verdict::Refuse);
    assert!(r.violations[0]
        .message
        .contains("less than max_connections (100)"));
}

#[test]
fn the_verdict_is_what_applying_takes() {
    let r = run(&[("work_mem", Some("64kB"))], None, None);
    assert_eq!(r.verdict, Verdict::Session, "{:?}", r.reasons);
    assert_eq!(r.changes[0].new.as_deref(), Some("64"));
    assert_eq!(r.changes[0].apply, Some(ApplyKind::Session));
    assert!(
        r.impacted
            .iter()
            .any(|p| p.setting == "metric:temp_bytes_per_s"),
        "{:?}",
        r.impacted
    );
    assert!(r.risk.residual().abs() < 1e-9);
    let r = run(
        &[
            ("work_mem", Some("8MB")),
            ("archive_command", Some("cp %p /x/%f")),
        ],
        None,
        None,
    );
    assert_eq!(r.verdict, Verdict::Reload);
    // archive_command with archive_mode off does nothing: said, not refused.
    assert!(
        r.reasons
            .iter()
            .any(|s| s.contains("archive_command does nothing unless archive_mode != off")),
        "{:?}",
        r.reasons
    );
    let r = run(
        &[("work_mem", Some("8MB")), ("shared_buffers", Some("1GB"))],
        None,
        None,
    );
    assert_eq!(r.verdict, Verdict::Restart);
    assert!(
        r.reasons.iter().any(|s| s
            .contains("shared_buffers 16384 → 131072 takes a server restart (context postmaster)")),
        "{:?}",
        r.reasons
    );
}

#[test]
fn bad_values_are_refused_naming_setting_value_and_range() {
    let r = run(&[("work_mem", Some("1kB"))], None, None);
    assert_eq!(r.verdict, Verdict::Refuse);
    let e = r.changes[0].error.as_deref().unwrap();
    assert!(
        e.contains("work_mem") && e.contains("1kB") && e.contains("64"),
        "{e}"
    );
    // A refused value is reported as given, not as a reset to the default.
    assert_eq!(r.changes[0].new.as_deref(), Some("1kB"));
    let r = run(&[("wrok_mem", Some("4MB"))], None, None);
    assert_eq!(r.verdict, Verdict::Refuse);
    assert!(r.changes[0].error.as_deref().unwrap().contains("wrok_mem"));
    let r = run(&[("data_checksums", Some("on"))], None, None);
    assert_eq!(r.verdict, Verdict::Refuse);
    let r = run(&[("data_checksums", None)], None, None);
    assert_eq!(r.verdict, Verdict::Refuse);
    let r = run(
        &[("work_mem", Some("4MB")), ("work_mem", Some("8MB"))],
        None,
        None,
    );
    assert_eq!(r.verdict, Verdict::Refuse);
    assert!(r.changes[1].error.as_deref().unwrap().contains("set twice"));
}

#[test]
fn a_failed_trial_start_is_refused_with_the_servers_message() {
    let trial = StartTrial {
        started: false,
        message: "FATAL:  could not map anonymous shared memory".to_string(),
        ms: 90,
    };
    let r = run(
        &[("shared_buffers", Some("1TB"))],
        Some(trial.clone()),
        None,
    );
    assert_eq!(r.verdict, Verdict::Refuse);
    assert!(r
        .reasons
        .iter()
        .any(|s| s.contains("did not start: FATAL:  could not map")));
    assert_eq!(r.scratch, Some(trial));
    let ok = StartTrial {
        started: true,
        message: String::new(),
        ms: 80,
    };
    assert_eq!(
        run(&[("shared_buffers", Some("1GB"))], Some(ok), None).verdict,
        Verdict::Restart
    );
}

#[test]
fn resets_and_no_ops() {
    let r = run(&[("work_mem", None)], None, None);
    assert_eq!(r.changes[0].new, None);
    assert!(
        r.reasons.iter().any(|s| s.contains("already is 4096")),
        "{:?}",
        r.reasons
    );
    assert_eq!(r.verdict, Verdict::Session);
    let r = run(&[("work_mem", Some("4MB"))], None, None);
    assert!(r
        .reasons
        .iter()
        .any(|s| s.contains("no setting changes value")));
    assert!(r.impacted.is_empty());
    let r = run(&[], None, None);
    assert_eq!(r.verdict, Verdict::Session);
}

#[test]
fn performance_comes_from_the_model() {
    let data: Vec<_> = (0..10)
        .map(|i| {
            let wm = 1024.0 * 2f64.powi(i % 5);
            let tps = 500.0 * wm.powf(0.2) * if i % 2 == 0 { 1.01 } else { 0.99 };
            PerfObservation {
                values: BTreeMap::from([("work_mem".to_string(), format!("{wm}"))]),
                tps,
                latency_ms: 1000.0 / tps,
            }
        })
        .collect();
    let model = PerfModel::train(&data).unwrap();
    let r = run(&[("work_mem", Some("1MB"))], None, Some(&model));
    let p = r.performance.as_ref().unwrap();
    assert!(p.tps_change < -0.1, "{p:?}");
    assert!(
        r.risk
            .factors
            .iter()
            .any(|f| f.name == "performance" && f.log_odds > 0.0),
        "{:?}",
        r.risk
    );
    assert!(r
        .reasons
        .iter()
        .any(|s| s.contains("predicts throughput -")));
}

#[test]
fn proposed_values_are_normalised() {
    let c = catalog();
    let v = proposed_values(
        &c,
        &set(&[
            ("shared_buffers", Some("1GB")),
            ("work_mem", Some("1kB")),
            ("nope", Some("1")),
        ]),
    );
    assert_eq!(v["shared_buffers"], "131072");
    assert_eq!(
        v["work_mem"], "4096",
        "an invalid value leaves the current one"
    );
    assert!(!v.contains_key("nope"));
    assert_eq!(v.len(), c.settings.len());
}

/// A real PostgreSQL 15 `pg_settings` (confcore's fixture, from `fixtures/pg15_settings.sh`).
fn pg15() -> Catalog {
    serde_json::from_str(include_str!("fixtures/pg15_settings.json")).unwrap()
}

#[test]
fn every_setting_a_shipped_rule_names_exists_in_postgresql_15() {
    let c = pg15();
    for r in shipped_rules(c.server_version_num) {
        for key in [&r.edge.from, &r.edge.to] {
            // Metric nodes, and extension settings that exist only once the library is loaded.
            if key.starts_with("metric:") || key.contains('.') {
                continue;
            }
            assert!(
                c.get(key).is_some(),
                "rule {} names {key}, unknown to PostgreSQL 15",
                r.id
            );
        }
        if let Some(cond) = &r.edge.condition {
            for key in cond.keys().filter(|k| !k.contains('.')) {
                assert!(
                    c.get(key).is_some(),
                    "rule {} reads {key}, unknown to PostgreSQL 15",
                    r.id
                );
            }
        }
    }
}

#[test]
fn the_issues_examples_on_a_real_postgresql_15_catalog() {
    let c = pg15();
    let g = {
        let mut g = Graph::default();
        g.merge(
            vec![],
            shipped_rules(c.server_version_num)
                .into_iter()
                .map(|r| r.edge)
                .collect(),
        );
        g
    };
    let sim = |pairs: &[(&str, Option<&str>)]| {
        simulate(
            &SimInput {
                catalog: &c,
                graph: &g,
                perf: None,
                history: &[],
                trial: None,
            },
            &set(pairs),
        )
    };
    // wal_level = minimal with the default max_wal_senders (10): the server would not start.
    let r = sim(&[("wal_level", Some("minimal"))]);
    assert_eq!(r.verdict, Verdict::Refuse, "{:?}", r.reasons);
    assert_eq!(r.violations[0].rule, "wal_level_minimal_no_wal_senders");
    // superuser_reserved_connections must stay below max_connections.
    let maxc = c.get("max_connections").unwrap().value.clone();
    let r = sim(&[("superuser_reserved_connections", Some(maxc.as_str()))]);
    assert_eq!(r.verdict, Verdict::Refuse, "{:?}", r.reasons);
    // min_wal_size of one segment (16MB): refused before a restart finds out.
    let r = sim(&[("min_wal_size", Some("16MB"))]);
    assert_eq!(r.verdict, Verdict::Refuse, "{:?}", r.reasons);
    assert_eq!(r.violations[0].rule, "min_wal_size_two_segments");
    assert_eq!(
        sim(&[("min_wal_size", Some("32MB"))]).verdict,
        Verdict::Reload
    );
    // work_mem of 64kB: allowed, per session, and it reaches the temp-file metric.
    let r = sim(&[("work_mem", Some("64kB"))]);
    assert_eq!(r.verdict, Verdict::Session, "{:?}", r.reasons);
    assert!(r
        .impacted
        .iter()
        .any(|p| p.setting == "metric:temp_bytes_per_s"));
    let r = sim(&[("random_page_cost", Some("40"))]);
    assert_eq!(r.verdict, Verdict::Session);
    assert!(r.impacted.iter().any(|p| p.setting == "metric:latency_ms"));
    let r = sim(&[("shared_buffers", Some("256MB"))]);
    assert_eq!(r.verdict, Verdict::Restart);
    assert!(r.impacted.iter().any(|p| p.setting == "wal_buffers"));
    // An out-of-range value names the setting, the value and the range.
    let r = sim(&[("max_connections", Some("0"))]);
    assert_eq!(r.verdict, Verdict::Refuse);
    let e = r.changes[0].error.as_deref().unwrap();
    assert!(e.contains("max_connections") && e.contains("262143"), "{e}");
}
