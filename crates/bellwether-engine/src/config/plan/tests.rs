use super::*;

const FULL: &str = "\
description: lower work_mem
author: alice
targets:
  - {host: db1, database: main}
  - {host: db2, database: main}
set:
  work_mem: 64kB
  random_page_cost: 4
  enable_seqscan: off
  jit: null
watch:
  baseline: 15s
  min_baseline_samples: 6
  bake: 30s
  confirm: 3s
  confirm_timeout: 90s
  rules:
    - {metric: tps, direction: decrease, percent: 30, for: 5s, weight: 2}
    - {metric: latency_ms, direction: increase, percent: 50, floor: 2}
risk_threshold: 0.4
trial: false
";

#[test]
fn a_full_plan_parses_in_order() {
    let p = parse_plan(FULL, "plan.yaml").unwrap();
    assert_eq!(p.description, "lower work_mem");
    assert_eq!(p.author, "alice");
    assert_eq!(p.targets.len(), 2);
    assert_eq!(p.targets[1].host, "db2");
    assert_eq!(
        p.set,
        vec![
            ("work_mem".to_string(), Some("64kB".to_string())),
            ("random_page_cost".to_string(), Some("4".to_string())),
            // YAML reads a bare `off` as false; PostgreSQL takes both.
            ("enable_seqscan".to_string(), Some("false".to_string())),
            ("jit".to_string(), None),
        ]
    );
    assert_eq!(p.watch.baseline_ms, 15_000);
    assert_eq!(p.watch.min_baseline_samples, 6);
    assert_eq!(p.watch.bake_ms, 30_000);
    assert_eq!(p.watch.confirm_ms, 3_000);
    assert_eq!(p.watch.confirm_timeout_ms, 90_000);
    assert_eq!(p.watch.rules.len(), 2);
    assert_eq!(p.watch.rules[0].for_ms, 5_000);
    assert_eq!(p.watch.rules[0].weight, 2.0);
    assert_eq!(p.watch.rules[1].for_ms, 4_000);
    assert_eq!(p.watch.rules[1].weight, 1.0);
    // The floor: the rule's own where given, else the metric's default.
    assert_eq!(p.watch.rules[1].floor(), 2.0);
    assert_eq!(p.watch.rules[0].floor, None);
    assert_eq!(p.watch.rules[0].floor(), 1.0);
    assert_eq!(p.risk_threshold, 0.4);
    assert!(!p.trial);
    p.validate().unwrap();
    // The JSON form round-trips and validates the same.
    let back: ConfigPlan = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
    assert_eq!(back, p);
}

#[test]
fn a_minimal_plan_takes_the_defaults() {
    let p = parse_plan(
        "description: d\ntargets: [{host: h, database: db}]\nset: {work_mem: 8MB}\n",
        "p",
    )
    .unwrap();
    assert_eq!(p.watch, WatchSpec::defaults());
    assert_eq!(p.risk_threshold, DEFAULT_RISK_THRESHOLD);
    assert!(p.trial);
    assert_eq!(p.author, "unknown");
    let d = WatchSpec::defaults();
    assert_eq!(d.expected_interval_ms(), 2_000);
    assert_eq!(d.no_data_after_ms(), 4_000);
    d.check().unwrap();
}

fn err(text: &str) -> String {
    parse_plan(text, "bad.yaml").unwrap_err().to_string()
}

const HEAD: &str = "description: d\ntargets: [{host: h, database: db}]\n";

#[test]
fn bad_plans_are_refused_with_file_line_column_and_field() {
    let cases: Vec<(String, &str)> = vec![
        (format!("{HEAD}set: {{work_mem: 1MB}}\nbogus: 1\n"), "unknown field `bogus`"),
        (format!("{HEAD}set: {{}}\n"), "at least one setting"),
        (format!("{HEAD}set: {{Work-Mem: 1MB}}\n"), "Work-Mem"),
        (format!("{HEAD}set: {{work_mem: 1MB, work_mem: 2MB}}\n"), "duplicate key"),
        (format!("{HEAD}set: [work_mem]\n"), "mapping"),
        (
            "description: d\ntargets: [{host: 'a b', database: db}]\nset: {x: 1}\n".into(),
            "host",
        ),
        (
            "description: d\ntargets: [{host: h, database: 'a/b'}]\nset: {x: 1}\n".into(),
            "database",
        ),
        (
            "description: d\ntargets: [{host: h, database: db}, {host: h, database: db}]\nset: {x: 1}\n"
                .into(),
            "listed twice",
        ),
        ("description: d\ntargets: []\nset: {x: 1}\n".into(), "at least one target"),
        ("description: ''\ntargets: [{host: h, database: db}]\nset: {x: 1}\n".into(), "description"),
        (format!("{HEAD}set: {{x: 1}}\nrisk_threshold: 1.5\n"), "risk_threshold"),
        (format!("{HEAD}set: {{x: 1}}\nrisk_threshold: 0\n"), "risk_threshold"),
        (format!("{HEAD}set: {{x: 1}}\nwatch: {{bake: soon}}\n"), "bake"),
        (format!("{HEAD}set: {{x: 1}}\nwatch: {{bake: 0s}}\n"), "bake"),
        (format!("{HEAD}set: {{x: 1}}\nwatch: {{bake: 2d}}\n"), "bake"),
        (format!("{HEAD}set: {{x: 1}}\nwatch: {{min_baseline_samples: 0}}\n"), "min_baseline_samples"),
        (format!("{HEAD}set: {{x: 1}}\nwatch: {{confirm: 10s, confirm_timeout: 5s}}\n"), "confirm_timeout"),
        (format!("{HEAD}set: {{x: 1}}\nwatch: {{rules: []}}\n"), "at least one metric rule"),
        (
            format!("{HEAD}set: {{x: 1}}\nwatch: {{rules: [{{metric: qps, direction: increase, percent: 10}}]}}\n"),
            "unknown metric \"qps\"",
        ),
        (
            format!("{HEAD}set: {{x: 1}}\nwatch: {{rules: [{{metric: up, direction: decrease, percent: 10}}]}}\n"),
            "unknown metric \"up\"",
        ),
        (
            format!("{HEAD}set: {{x: 1}}\nwatch: {{rules: [{{metric: tps, direction: down, percent: 10}}]}}\n"),
            "unknown variant `down`",
        ),
        (
            format!("{HEAD}set: {{x: 1}}\nwatch: {{rules: [{{metric: tps, direction: decrease, percent: -1}}]}}\n"),
            "percent",
        ),
        (
            format!("{HEAD}set: {{x: 1}}\nwatch: {{rules: [{{metric: tps, direction: decrease, percent: 10, weight: .nan}}]}}\n"),
            "weight",
        ),
        (
            format!("{HEAD}set: {{x: 1}}\nwatch: {{rules: [{{metric: tps, direction: decrease, percent: 10, weight: 0}}]}}\n"),
            "weight above 0",
        ),
        (
            format!("{HEAD}set: {{x: 1}}\nwatch: {{rules: [{{metric: latency_ms, direction: increase, percent: 10, floor: -0.5}}]}}\n"),
            "floor: -0.5 must be a number of 0 or more",
        ),
        (
            format!("{HEAD}set: {{x: 1}}\nwatch: {{rules: [{{metric: latency_ms, direction: increase, percent: 10, floor: fast}}]}}\n"),
            "floor",
        ),
        (
            format!("{HEAD}set: {{x: 1}}\nwatch: {{bake: 5s, rules: [{{metric: tps, direction: decrease, percent: 10, for: 6s}}]}}\n"),
            "longer than the bake",
        ),
        (
            format!("{HEAD}set: {{x: 1}}\nwatch: {{rules: [{{metric: tps, direction: decrease, percent: 10}}, {{metric: tps, direction: decrease, percent: 20}}]}}\n"),
            "watched twice",
        ),
        (format!("{HEAD}set: {{x: 1}}\ntrial: maybe\n"), "boolean"),
        ("[1, 2]".into(), "mapping"),
        ("".into(), ""),
    ];
    for (text, want) in cases {
        let e = err(&text);
        assert!(e.starts_with("bad.yaml:"), "{e}");
        let loc: Vec<&str> = e.splitn(4, ':').collect();
        assert!(loc.len() == 4, "{e}");
        assert!(loc[1].parse::<usize>().unwrap() >= 1, "{e}");
        assert!(loc[2].parse::<usize>().unwrap() >= 1, "{e}");
        assert!(e.contains(want), "{text:?}: {e} lacks {want:?}");
    }
}

#[test]
fn a_bad_value_is_located_at_its_line() {
    let text = format!("{HEAD}set:\n  work_mem: 1MB\n  Bad-Name: 2\n");
    let e = err(&text);
    assert!(e.starts_with("bad.yaml:5:"), "{e}");
    assert!(e.contains("set"), "{e}");
}

#[test]
fn validate_checks_a_plan_built_from_flags() {
    let ok = ConfigPlan::new(
        "d",
        "a",
        vec![Target {
            host: "h".into(),
            database: "db".into(),
        }],
        vec![("work_mem".into(), Some("4MB".into()))],
    );
    ok.validate().unwrap();
    let mut bad = ok.clone();
    bad.set.push(("work_mem".into(), None));
    assert!(bad
        .validate()
        .unwrap_err()
        .0
        .contains("set.work_mem: set twice"));
    let mut bad = ok.clone();
    bad.set = vec![("x".into(), Some("a\0b".into()))];
    assert!(bad.validate().unwrap_err().0.contains("set.x"));
    let mut bad = ok.clone();
    bad.watch.rules[0].percent = f64::INFINITY;
    assert!(bad
        .validate()
        .unwrap_err()
        .0
        .contains("watch.rules[0].percent"));
    let mut bad = ok.clone();
    bad.risk_threshold = f64::NAN;
    assert!(bad.validate().unwrap_err().0.contains("risk_threshold"));
    let mut bad = ok.clone();
    bad.targets[0].host = String::new();
    assert!(bad.validate().unwrap_err().0.contains("targets[0].host"));
    let mut bad = ok.clone();
    bad.author = " ".into();
    assert!(bad.validate().unwrap_err().0.contains("author"));
    let mut bad = ok;
    bad.set = (0..600).map(|i| (format!("k{i}"), None)).collect();
    assert!(bad.validate().unwrap_err().0.contains("at most 512"));
}

#[test]
fn numbers_and_booleans_are_taken_as_their_text() {
    let p = parse_plan(
        &format!("{HEAD}set: {{max_connections: 200, random_page_cost: 1.5, jit: true}}\n"),
        "p",
    )
    .unwrap();
    assert_eq!(p.set[0].1.as_deref(), Some("200"));
    assert_eq!(p.set[1].1.as_deref(), Some("1.5"));
    assert_eq!(p.set[2].1.as_deref(), Some("true"));
}

#[test]
fn controls_parse_and_a_control_must_be_untouched() {
    let p = parse_plan(
        "description: d\ntargets: [{host: db1, database: main}]\n\
         controls: [{host: db2, database: main}, {host: db3, database: main}]\n\
         set: {work_mem: 8MB}\n",
        "p",
    )
    .unwrap();
    assert_eq!(p.controls.len(), 2);
    assert_eq!(p.controls[1].host, "db3");
    // The JSON form round-trips; a plan stored before controls existed reads as none.
    let back: ConfigPlan = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
    assert_eq!(back, p);
    let mut old = serde_json::to_value(&p).unwrap();
    old.as_object_mut().unwrap().remove("controls");
    let old: ConfigPlan = serde_json::from_value(old).unwrap();
    assert!(old.controls.is_empty());
    // Without `controls:` there are none.
    let p = parse_plan(&format!("{HEAD}set: {{x: 1}}\n"), "p").unwrap();
    assert!(p.controls.is_empty());
    let cases = [
        ("controls: [{host: h, database: db}]\n", "is also a target"),
        (
            "controls: [{host: c, database: db}, {host: c, database: db}]\n",
            "listed twice",
        ),
        ("controls: [{host: 'a b', database: db}]\n", "host"),
        ("controls: [{host: c}]\n", "database"),
        ("controls: {host: c, database: db}\n", "expected a list"),
    ];
    for (extra, want) in cases {
        let text = format!("{HEAD}set: {{x: 1}}\n{extra}");
        let e = err(&text);
        assert!(e.starts_with("bad.yaml:"), "{e}");
        assert!(e.contains(want), "{text:?}: {e} lacks {want:?}");
    }
    let mut bad = ConfigPlan::new(
        "d",
        "a",
        vec![Target {
            host: "h".into(),
            database: "db".into(),
        }],
        vec![("work_mem".into(), Some("4MB".into()))],
    );
    bad.controls = bad.targets.clone();
    assert!(bad
        .validate()
        .unwrap_err()
        .0
        .contains("controls[0]: host h database db is also a target"));
}

#[test]
fn a_config_plan_carries_its_alerts_and_refuses_bad_ones_with_their_place() {
    let with = |alerts: &str| format!("{FULL}alerts:\n{alerts}");
    let p = parse_plan(
        &with("  - {name: dba, url: \"https://hooks.example.com/dba\", format: slack, events: [\"config.*\"]}\n"),
        "plan.yaml",
    )
    .unwrap();
    assert_eq!(p.alerts.len(), 1);
    assert!(p.alerts[0].matches("config.applied", Some("db1")));
    assert!(!p.alerts[0].matches("rollout.rollout.started", None));
    // The JSON form (state, API bodies) keeps them and checks them the same way.
    let json = serde_json::to_string(&p).unwrap();
    let back: ConfigPlan = serde_json::from_str(&json).unwrap();
    assert_eq!(back, p);
    back.validate().unwrap();
    // A plan without alerts has none, and its JSON form does not name the field.
    let none = parse_plan(FULL, "plan.yaml").unwrap();
    assert!(none.alerts.is_empty());
    assert!(!serde_json::to_string(&none).unwrap().contains("alerts"));
    // Bad rules are refused with the file, line and field.
    let e = parse_plan(
        &with("  - {name: dba, url: \"ftp://hooks.example.com/x\", events: [\"config.*\"]}\n"),
        "plan.yaml",
    )
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("plan.yaml:"), "{e}");
    assert!(e.contains("ftp://"), "{e}");
    let twice = "  - {name: a, url: \"http://h/\", events: [\"config.*\"]}\n  - {name: a, url: \"http://h/\", events: [\"config.*\"]}\n";
    let e = parse_plan(&with(twice), "plan.yaml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("the name a is used twice"), "{e}");
    let mut bad = p.clone();
    bad.alerts.push(bad.alerts[0].clone());
    assert!(bad
        .validate()
        .unwrap_err()
        .to_string()
        .contains("used twice"));
}
