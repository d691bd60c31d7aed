//! The shipped rules and the constraint evaluator: every hard rule is checked on a
//! configuration that keeps it and one that breaks it.

use std::collections::{BTreeMap, BTreeSet};

use bellwether_config::graph::{EvidenceSource, Graph};
use bellwether_config::rules::{check, holds, no_effect, shipped_rules, Constraint, Pred, Rule};
use bellwether_config::setting::Catalog;

const PG15: u32 = 150_004;

fn vals(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn rule(id: &str, version: u32) -> Rule {
    shipped_rules(version)
        .into_iter()
        .find(|r| r.id == id)
        .unwrap_or_else(|| panic!("no rule {id} for {version}"))
}

/// (rule id, version, a configuration that keeps it, one that breaks it, words the violation
/// must contain).
type Pairs = Vec<(&'static str, &'static str)>;
type Case = (&'static str, u32, Pairs, Pairs, Vec<&'static str>);

fn hard_cases() -> Vec<Case> {
    vec![
        (
            "wal_level_minimal_no_wal_senders",
            PG15,
            vec![("wal_level", "minimal"), ("max_wal_senders", "0")],
            vec![("wal_level", "minimal"), ("max_wal_senders", "10")],
            vec!["wal_level = minimal", "max_wal_senders = 0", "it is 10"],
        ),
        (
            "archive_mode_needs_wal_level",
            PG15,
            vec![("archive_mode", "on"), ("wal_level", "replica")],
            vec![("archive_mode", "always"), ("wal_level", "minimal")],
            vec!["archive_mode = always", "wal_level != minimal"],
        ),
        (
            "superuser_reserved_below_max_connections",
            PG15,
            vec![
                ("superuser_reserved_connections", "3"),
                ("max_connections", "4"),
            ],
            vec![
                ("superuser_reserved_connections", "3"),
                ("max_connections", "3"),
            ],
            vec![
                "superuser_reserved_connections (3)",
                "less than max_connections (3)",
            ],
        ),
        (
            "reserved_connections_below_max_connections",
            160_000,
            vec![
                ("superuser_reserved_connections", "3"),
                ("reserved_connections", "2"),
                ("max_connections", "6"),
            ],
            vec![
                ("superuser_reserved_connections", "3"),
                ("reserved_connections", "2"),
                ("max_connections", "5"),
            ],
            vec!["= 5 must be less than max_connections (5)"],
        ),
        (
            "max_backends_wal_senders",
            PG15,
            vec![
                ("max_connections", "100"),
                ("autovacuum_max_workers", "3"),
                ("max_worker_processes", "8"),
                ("max_wal_senders", "10"),
            ],
            vec![
                ("max_connections", "262000"),
                ("autovacuum_max_workers", "3"),
                ("max_worker_processes", "8"),
                ("max_wal_senders", "200"),
            ],
            vec!["max_wal_senders (200)", "must be at most 262142"],
        ),
        (
            "max_backends_worker_processes",
            PG15,
            vec![
                ("max_connections", "262000"),
                ("autovacuum_max_workers", "3"),
                ("max_worker_processes", "139"),
                ("max_wal_senders", "0"),
            ],
            vec![
                ("max_connections", "262000"),
                ("autovacuum_max_workers", "3"),
                ("max_worker_processes", "140"),
                ("max_wal_senders", "0"),
            ],
            vec!["= 262143 must be at most 262142"],
        ),
        (
            "max_backends_autovacuum_workers",
            PG15,
            vec![
                ("max_connections", "100"),
                ("autovacuum_max_workers", "3"),
                ("max_worker_processes", "8"),
                ("max_wal_senders", "10"),
            ],
            vec![
                ("max_connections", "262100"),
                ("autovacuum_max_workers", "100"),
                ("max_worker_processes", "8"),
                ("max_wal_senders", "10"),
            ],
            vec!["autovacuum_max_workers (100)"],
        ),
        (
            "min_wal_size_two_segments",
            PG15,
            vec![("wal_segment_size", "16777216"), ("min_wal_size", "32")],
            vec![("wal_segment_size", "16777216"), ("min_wal_size", "16")],
            vec!["wal_segment_size (16777216)", "min_wal_size (16)"],
        ),
        (
            "max_wal_size_two_segments",
            PG15,
            vec![("wal_segment_size", "16777216"), ("max_wal_size", "1024")],
            vec![("wal_segment_size", "67108864"), ("max_wal_size", "64")],
            vec!["max_wal_size (64)"],
        ),
        (
            "archive_library_xor_command",
            160_000,
            vec![
                ("archive_library", "basic_archive"),
                ("archive_command", ""),
            ],
            vec![
                ("archive_library", "basic_archive"),
                ("archive_command", "cp %p /a/%f"),
            ],
            vec!["archive_library = basic_archive", "archive_command = ''"],
        ),
        (
            "summarize_wal_needs_wal_level",
            170_000,
            vec![("summarize_wal", "on"), ("wal_level", "replica")],
            vec![("summarize_wal", "on"), ("wal_level", "minimal")],
            vec!["summarize_wal = on", "wal_level != minimal"],
        ),
    ]
}

#[test]
fn every_hard_rule_keeps_and_breaks_as_documented() {
    let catalog = Catalog::default();
    let cases = hard_cases();
    for (id, version, good, bad, words) in &cases {
        let r = rule(id, *version);
        assert_eq!(
            r.edge.confidence, 1.0,
            "{id}: documented hard rules are certain"
        );
        let edges = [r.edge.clone()];
        let ok = check(&edges, &vals(good), &catalog);
        assert!(
            ok.is_empty(),
            "{id} reported on a good configuration: {ok:?}"
        );
        let broken = check(&edges, &vals(bad), &catalog);
        assert_eq!(broken.len(), 1, "{id} missed a bad configuration");
        assert_eq!(&broken[0].rule, id);
        for w in words {
            assert!(
                broken[0].message.contains(w),
                "{id}: {:?} lacks {w:?}",
                broken[0].message
            );
        }
        // A configuration that lacks one of the settings is skipped, not refused.
        let mut partial = vals(bad);
        let first = partial.keys().next().unwrap().clone();
        partial.remove(&first);
        assert!(
            check(&edges, &partial, &catalog).is_empty(),
            "{id} without {first}"
        );
    }
    // Every hard rule shipped (any version) has a case above.
    let tested: BTreeSet<&str> = cases.iter().map(|c| c.0).collect();
    for version in [PG15, 160_000, 170_000] {
        for r in shipped_rules(version) {
            if r.edge.condition.as_ref().is_some_and(Constraint::is_hard) {
                assert!(
                    tested.contains(r.id.as_str()),
                    "hard rule {} has no test case",
                    r.id
                );
            }
        }
    }
}

#[test]
fn hard_rules_catch_the_same_break_in_other_spellings() {
    let catalog = Catalog::default();
    let r = rule("wal_level_minimal_no_wal_senders", PG15);
    let edges = [r.edge];
    // Case and quotes do not matter; a number compares as a number.
    assert_eq!(
        check(
            &edges,
            &vals(&[("wal_level", "'MINIMAL'"), ("max_wal_senders", "5")]),
            &catalog
        )
        .len(),
        1
    );
    assert!(check(
        &edges,
        &vals(&[("wal_level", "minimal"), ("max_wal_senders", "0.0")]),
        &catalog
    )
    .is_empty());
    // A value that cannot be read as a number is not a violation (no refusal on a guess).
    let r = rule("superuser_reserved_below_max_connections", PG15);
    assert!(check(
        &[r.edge],
        &vals(&[
            ("superuser_reserved_connections", "lots"),
            ("max_connections", "3")
        ]),
        &catalog
    )
    .is_empty());
}

#[test]
fn predicates() {
    let c = Catalog::default();
    assert_eq!(holds(&Pred::Eq("on".into()), "x", "true", &c), Some(true));
    assert_eq!(holds(&Pred::Eq("off".into()), "x", "on", &c), Some(false));
    assert_eq!(
        holds(&Pred::Ne("off".into()), "x", "always", &c),
        Some(true)
    );
    assert_eq!(
        holds(
            &Pred::In(vec!["on".into(), "always".into()]),
            "x",
            "Always",
            &c
        ),
        Some(true)
    );
    assert_eq!(holds(&Pred::Gt(0.0), "x", "3", &c), Some(true));
    assert_eq!(holds(&Pred::Le(0.0), "x", "off", &c), Some(true));
    assert_eq!(holds(&Pred::Gt(0.0), "x", "many", &c), None);
    let list = "'pg_stat_statements, auto_explain'";
    assert_eq!(
        holds(&Pred::Contains("auto_explain".into()), "x", list, &c),
        Some(true)
    );
    assert_eq!(
        holds(&Pred::Contains("pg_stat".into()), "x", list, &c),
        Some(false)
    );
    assert_eq!(holds(&Pred::Contains("x".into()), "x", "", &c), Some(false));
}

#[test]
fn does_nothing_unless_is_a_note_never_a_violation() {
    let catalog = Catalog::default();
    let rules = shipped_rules(PG15);
    let edges: Vec<_> = rules.iter().map(|r| r.edge.clone()).collect();
    let v = vals(&[
        ("archive_command", "cp %p /x/%f"),
        ("archive_mode", "off"),
        ("log_directory", "/var/log/pg"),
        ("logging_collector", "on"),
        ("pg_stat_statements.max", "10000"),
        ("shared_preload_libraries", ""),
    ]);
    assert!(check(&edges, &v, &catalog).is_empty());
    let changed: Vec<String> = ["archive_command", "log_directory", "pg_stat_statements.max"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let notes = no_effect(&edges, &v, &changed, &catalog);
    let keys: Vec<&str> = notes.iter().map(|n| n.key.as_str()).collect();
    assert_eq!(
        keys,
        vec!["archive_command", "pg_stat_statements.max"],
        "{notes:?}"
    );
    assert!(notes[0]
        .message
        .contains("archive_command does nothing unless archive_mode != off (it is off)"));
    assert_eq!(notes[0].rule, "archive_command_needs_archive_mode");
}

#[test]
fn shipped_rules_are_many_documented_and_form_a_valid_graph() {
    for version in [0, 130_000, PG15, 160_000, 170_000] {
        let rules = shipped_rules(version);
        let ids: BTreeSet<&str> = rules.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids.len(), rules.len(), "rule ids are unique");
        for r in &rules {
            assert!((0.0..=1.0).contains(&r.edge.confidence));
            let ev = &r.edge.evidence[0];
            assert_eq!(ev.source, EvidenceSource::Rule);
            assert!(
                ev.detail.starts_with(&format!("rule {}: ", r.id)),
                "{}",
                ev.detail
            );
            assert!(
                ev.detail.contains("https://www.postgresql.org/docs/"),
                "{}",
                ev.detail
            );
        }
        let mut g = Graph::default();
        g.merge(vec![], rules.iter().map(|r| r.edge.clone()).collect());
        g.check().unwrap();
    }
    let pg15 = shipped_rules(PG15);
    assert!(pg15.len() >= 40, "{} rules", pg15.len());
    assert!(pg15
        .iter()
        .all(|r| r.edge.evidence[0].detail.contains("/docs/15/")));
    // Version bounds: reserved_connections arrives in 16, old_snapshot_threshold leaves in 17.
    let has = |v: u32, id: &str| shipped_rules(v).iter().any(|r| r.id == id);
    assert!(!has(PG15, "reserved_connections_below_max_connections"));
    assert!(has(160_000, "reserved_connections_below_max_connections"));
    assert!(has(PG15, "old_snapshot_threshold_errors"));
    assert!(!has(170_000, "old_snapshot_threshold_errors"));
    assert!(!has(120_000, "archive_library_needs_archive_mode"));
}
