use super::*;

pub(crate) const EXAMPLE: &str = r#"name: web-v2
update:
  name: websvc
  version: "2"
  apply:  { builtin: set_service_version, version: "2" }
  revert: { builtin: set_service_version, version: "1" }
targets:
  labels: { role: web }
  where:
    - { attribute: "os.version_id", op: eq, value: "12" }
risk:
  low: 0.2
  high: 0.5
  moderate_share: 0.25
  pilot: { min: 2, max: 5 }
  high_risk: defer
waves: { fixed: [10, 50, 100] }
bake: 30s
analysis:
  interval: 1s
  metrics:
    - { name: svc_error_ratio, direction: increase, threshold_pct: 50, for: 3s, weight: 1.0, critical: false, floor: 0.01 }
    - { name: svc_latency_p99_ms, direction: increase, threshold_pct: 100, for: 3s, weight: 0.5 }
  judge: { enabled: true, confidence: 0.98, marginal: 50, pass: 75 }
  drift_rise_limit: 0.3
  severity_fail: 0.5
rollback:
  targeted: true
  pause_when: { hosts: 3, wave_pct: 30 }
  slow_down_when: { hosts: 2 }
  abort_on_critical: true
remediation:
  - { match: { category: configuration, attribute: "file:etc/websvc.conf" }, action: { builtin: restore_file, path: etc/websvc.conf } }
  - { match: { attribute: "package:*" }, action: { builtin: reinstall_package } }
  - { match: { attribute: "metric:memory_available_ratio" }, action: { builtin: set_cgroup, memory_max: "512M" } }
no_data: { after: 5s }
"#;

const MINIMAL: &str = "name: m
update:
  name: websvc
  version: 2
  apply: { argv: [/usr/bin/websvc-update, '2'], timeout: 30s }
  revert: { argv: [/usr/bin/websvc-update, '1'] }
analysis:
  metrics:
    - { name: svc_error_ratio, threshold_pct: 50 }
";

#[test]
fn parses_the_contract_example() {
    let p = parse_plan(EXAMPLE, "plan.yaml").unwrap();
    assert_eq!(p.name.0, "web-v2");
    assert_eq!(
        p.update.apply,
        ActionSpec::SetServiceVersion {
            version: "2".into(),
            timeout_ms: None
        }
    );
    assert_eq!(
        p.targets.labels.get("role").map(String::as_str),
        Some("web")
    );
    assert_eq!(p.targets.predicates[0].op, Op::Eq);
    assert_eq!(p.risk.pilot, PilotSize { min: 2, max: 5 });
    assert_eq!(p.waves, Waves::Fixed(vec![10.0, 50.0, 100.0]));
    assert_eq!(p.bake_ms(), 30_000);
    assert_eq!(p.analysis.metrics.len(), 2);
    assert_eq!(p.analysis.metrics[0].for_.0, Duration::from_secs(3));
    assert_eq!(p.analysis.metrics[0].floor, 0.01);
    assert_eq!(p.analysis.judge.pass, 75.0);
    assert_eq!(p.analysis.drift_rise_limit, Some(0.3));
    assert_eq!(
        p.rollback.pause_when,
        Limit {
            hosts: Some(3),
            wave_pct: Some(30.0)
        }
    );
    assert_eq!(
        p.rollback.slow_down_when,
        Limit {
            hosts: Some(2),
            wave_pct: None
        }
    );
    assert_eq!(p.remediation.len(), 3);
    assert_eq!(p.no_data.after_ms(), 5000);
}

#[test]
fn defaults_fill_a_minimal_plan() {
    let p = parse_plan(MINIMAL, "m.yaml").unwrap();
    assert_eq!(p.update.version.0, "2");
    assert_eq!(
        p.update.apply,
        ActionSpec::Argv {
            argv: vec!["/usr/bin/websvc-update".into(), "2".into()],
            timeout_ms: 30_000
        }
    );
    assert_eq!(
        p.update.revert.timeout_ms(),
        bellwether_model::action::DEFAULT_TIMEOUT_MS
    );
    assert_eq!(p.risk, RiskPolicy::default());
    assert_eq!(p.waves, Waves::default());
    assert_eq!(p.bake_ms(), 30_000);
    assert_eq!(p.analysis.interval_ms(), 1000);
    assert_eq!(p.analysis.metrics[0].direction, Direction::Increase);
    assert_eq!(p.analysis.metrics[0].for_.0, Duration::from_secs(3));
    assert_eq!(p.analysis.judge, JudgeSettings::default());
    assert_eq!(p.analysis.severity_fail, 0.3);
    assert_eq!(p.rollback, RollbackPolicy::default());
    assert!(p.remediation.is_empty());
    assert_eq!(p.no_data, NoDataRule::default());
    assert!(p.targets.matches(&BTreeMap::new(), &BTreeMap::new()));
}

#[test]
fn a_plan_round_trips_through_json_and_yaml() {
    for text in [EXAMPLE, MINIMAL] {
        let p = parse_plan(text, "p.yaml").unwrap();
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<Plan>(&json).unwrap(), p, "{json}");
        let yaml = serde_saphyr::to_string(&p).unwrap();
        assert_eq!(parse_plan(&yaml, "again.yaml").unwrap(), p, "{yaml}");
    }
    let w = parse_plan(
        &MINIMAL.replace(
            "analysis:",
            "waves: { adaptive: { start: 5, factor: 3 } }\nanalysis:",
        ),
        "a.yaml",
    )
    .unwrap();
    assert_eq!(
        w.waves,
        Waves::Adaptive {
            start: 5.0,
            factor: 3.0
        }
    );
    let json = serde_json::to_string(&w).unwrap();
    assert_eq!(serde_json::from_str::<Plan>(&json).unwrap(), w);
    // Durations of the shared grammar, compound ones too, are written back in the largest
    // exact unit; the older `NNNms` form of stored plans still parses.
    let c = parse_plan(&EXAMPLE.replace("bake: 30s", "bake: 1m30s"), "c.yaml").unwrap();
    assert_eq!(c.bake.0, std::time::Duration::from_secs(90));
    let json = serde_json::to_value(&c).unwrap();
    assert_eq!(json["bake"], "90s");
    let old = parse_plan(&EXAMPLE.replace("bake: 30s", "bake: 90000ms"), "o.yaml").unwrap();
    assert_eq!(old, c);
}

/// Replaces `from` (which must occur once) in the example and parses it.
fn err_of(from: &str, to: &str) -> PlanError {
    assert_eq!(EXAMPLE.matches(from).count(), 1, "{from}");
    parse_plan(&EXAMPLE.replacen(from, to, 1), "plan.yaml").unwrap_err()
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap() + 1
}

#[track_caller]
fn expect(e: &PlanError, line: usize, want: &str) {
    assert_eq!(e.file, "plan.yaml");
    assert_eq!(e.line, line, "{e}");
    assert!(e.column >= 1);
    assert!(e.to_string().contains(want), "{e} lacks {want:?}");
    assert!(
        e.to_string()
            .starts_with(&format!("plan.yaml:{line}:{}: ", e.column)),
        "{e}"
    );
}

#[test]
fn every_bad_input_names_file_line_and_column() {
    let risk_line = line_of(EXAMPLE, "  low: 0.2");
    let cases: Vec<(&str, &str, usize, &str)> = vec![
        (
            "low: 0.2",
            "low: 0.7",
            risk_line,
            "low 0.7 is above high 0.5",
        ),
        ("low: 0.2", "low: -1", risk_line, "low -1 is not in [0, 1]"),
        (
            "moderate_share: 0.25",
            "moderate_share: 2",
            risk_line,
            "moderate_share 2",
        ),
        (
            "pilot: { min: 2, max: 5 }",
            "pilot: { min: 6, max: 5 }",
            line_of(EXAMPLE, "pilot:"),
            "max 5 is below min 6",
        ),
        (
            "pilot: { min: 2, max: 5 }",
            "pilot: { min: 0, max: 5 }",
            line_of(EXAMPLE, "pilot:"),
            "min must be at least 1",
        ),
        (
            "high_risk: defer",
            "high_risk: ignore",
            line_of(EXAMPLE, "high_risk"),
            "unknown variant `ignore`",
        ),
        (
            "fixed: [10, 50, 100]",
            "fixed: [10, 50, 90]",
            line_of(EXAMPLE, "waves:"),
            "must reach 100",
        ),
        (
            "fixed: [10, 50, 100]",
            "fixed: [50, 10, 100]",
            line_of(EXAMPLE, "waves:"),
            "must increase",
        ),
        (
            "fixed: [10, 50, 100]",
            "fixed: []",
            line_of(EXAMPLE, "waves:"),
            "at least one",
        ),
        (
            "{ fixed: [10, 50, 100] }",
            "{ linear: 5 }",
            line_of(EXAMPLE, "waves:"),
            "unknown field `linear`",
        ),
        (
            "bake: 30s",
            "bake: soon",
            line_of(EXAMPLE, "bake:"),
            "`soon` is not a duration",
        ),
        (
            "bake: 30s",
            "bake: 5x",
            line_of(EXAMPLE, "bake:"),
            "`5x` is not a duration such as `2s` or `500ms`: unknown unit `x`",
        ),
        (
            "bake: 30s",
            "bake: 2000000000s",
            line_of(EXAMPLE, "bake:"),
            "`2000000000s` is longer than the longest duration, 1000000000s",
        ),
        (
            "bake: 30s",
            "bake: 10ms",
            1,
            "bake (10ms) must be at least analysis.interval",
        ),
        (
            "threshold_pct: 50,",
            "threshold_pct: -5,",
            line_of(EXAMPLE, "svc_error_ratio"),
            "threshold_pct -5",
        ),
        (
            "direction: increase, threshold_pct: 50",
            "direction: upward, threshold_pct: 50",
            line_of(EXAMPLE, "svc_error_ratio"),
            "unknown variant `upward`",
        ),
        (
            "weight: 0.5",
            "weight: -0.5",
            line_of(EXAMPLE, "svc_latency_p99_ms"),
            "weight -0.5",
        ),
        (
            "name: svc_latency_p99_ms",
            "name: svc_error_ratio",
            line_of(EXAMPLE, "interval: 1s"),
            "metrics[1]: svc_error_ratio is listed twice",
        ),
        (
            "pass: 75",
            "pass: 40",
            line_of(EXAMPLE, "judge:"),
            "marginal ≤ pass",
        ),
        (
            "confidence: 0.98",
            "confidence: 1.5",
            line_of(EXAMPLE, "judge:"),
            "confidence 1.5",
        ),
        (
            "drift_rise_limit: 0.3",
            "drift_rise_limit: 3",
            line_of(EXAMPLE, "interval: 1s"),
            "drift_rise_limit 3",
        ),
        (
            "severity_fail: 0.5",
            "severity_fail: 0",
            line_of(EXAMPLE, "interval: 1s"),
            "severity_fail 0",
        ),
        (
            "pause_when: { hosts: 3,",
            "pause_when: { hosts: 0,",
            line_of(EXAMPLE, "pause_when"),
            "hosts must be at least 1",
        ),
        (
            "wave_pct: 30",
            "wave_pct: 130",
            line_of(EXAMPLE, "pause_when"),
            "wave_pct 130",
        ),
        (
            "abort_on_critical: true",
            "abort_on_critical: maybe",
            line_of(EXAMPLE, "abort_on_critical"),
            "invalid boolean",
        ),
        (
            "path: etc/websvc.conf",
            "path: /etc/websvc.conf",
            line_of(EXAMPLE, "restore_file"),
            "absolute",
        ),
        (
            "path: etc/websvc.conf",
            "path: ../etc/websvc.conf",
            line_of(EXAMPLE, "restore_file"),
            "`..`",
        ),
        (
            "{ attribute: \"package:*\" }",
            "{ attribute: \"kernel\" }",
            line_of(EXAMPLE, "reinstall_package"),
            "must start with `package:`",
        ),
        (
            "memory_max: \"512M\"",
            "memory_max: \"lots\"",
            line_of(EXAMPLE, "set_cgroup"),
            "memory_max \"lots\"",
        ),
        (
            "category: configuration",
            "category: vibes",
            line_of(EXAMPLE, "restore_file"),
            "unknown variant `vibes`",
        ),
        (
            "{ after: 5s }",
            "{ after: 0s }",
            line_of(EXAMPLE, "no_data"),
            "after must be longer than zero",
        ),
        (
            "{ after: 5s }",
            "{ after: 5s, loud: true }",
            line_of(EXAMPLE, "no_data"),
            "unknown field `loud`",
        ),
        (
            "apply:  { builtin: set_service_version, version: \"2\" }",
            "apply: { argv: [] }",
            line_of(EXAMPLE, "apply:"),
            "argv is empty",
        ),
        (
            "apply:  { builtin: set_service_version, version: \"2\" }",
            "apply: { argv: [x], timeout: 0s }",
            line_of(EXAMPLE, "apply:"),
            "timeout_ms 0 is outside",
        ),
        (
            "apply:  { builtin: set_service_version, version: \"2\" }",
            "apply: { argv: [x], timeout: 1s, timeout_ms: 5 }",
            line_of(EXAMPLE, "apply:"),
            "not both",
        ),
        (
            "apply:  { builtin: set_service_version, version: \"2\" }",
            "apply: { builtin: reboot }",
            line_of(EXAMPLE, "apply:"),
            "unknown builtin",
        ),
        (
            "apply:  { builtin: set_service_version, version: \"2\" }",
            "apply: \"ls -l\"",
            line_of(EXAMPLE, "apply:"),
            "invalid type",
        ),
        (
            "revert: { builtin: set_service_version, version: \"1\" }",
            "revert: { builtin: set_service_version }",
            line_of(EXAMPLE, "revert:"),
            "needs the field `version`",
        ),
        (
            "{ attribute: \"os.version_id\", op: eq, value: \"12\" }",
            "{ attribute: \"os.version_id\", op: in, value: \"12\" }",
            line_of(EXAMPLE, "os.version_id"),
            "needs a non-empty `values`",
        ),
        (
            "{ attribute: \"os.version_id\", op: eq, value: \"12\" }",
            "{ attribute: \"os.version_id\", op: gt, value: \"twelve\" }",
            line_of(EXAMPLE, "os.version_id"),
            "must be a number",
        ),
        ("name: web-v2", "name: \"\"", 1, "must not be empty"),
        (
            "targets:",
            "tragets:",
            line_of(EXAMPLE, "targets:"),
            "unknown field `tragets`",
        ),
    ];
    for (from, to, line, want) in cases {
        let e = err_of(from, to);
        expect(&e, line, want);
    }
}

#[test]
fn syntax_errors_and_missing_sections_have_locations() {
    let e = parse_plan("name: x\nupdate: [1,\n", "bad.yaml").unwrap_err();
    assert_eq!(e.file, "bad.yaml");
    assert!(e.line >= 2, "{e}");
    let e = parse_plan(
        &EXAMPLE.replace("analysis:\n", "analysis_gone:\n"),
        "plan.yaml",
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("unknown field `analysis_gone`"),
        "{e}"
    );
    let e = parse_plan("name: x\n", "p.yaml").unwrap_err();
    assert!(e.to_string().starts_with("p.yaml:1:"), "{e}");
    assert!(e.to_string().contains("missing field `update`"), "{e}");
    let e = parse_plan("", "empty.yaml").unwrap_err();
    assert!(e.to_string().starts_with("empty.yaml:"), "{e}");
    let e = parse_plan("- a\n- b\n", "list.yaml").unwrap_err();
    assert!(e.to_string().starts_with("list.yaml:1:1: "), "{e}");
}

#[test]
fn targets_match_labels_and_attributes() {
    let p = parse_plan(EXAMPLE, "plan.yaml").unwrap();
    let labels: BTreeMap<String, String> = [("role".to_string(), "web".to_string())].into();
    let mut attrs: BTreeMap<String, String> =
        [("os.version_id".to_string(), "12".to_string())].into();
    assert!(p.targets.matches(&labels, &attrs));
    attrs.insert("os.version_id".into(), "11".into());
    assert!(!p.targets.matches(&labels, &attrs));
    assert!(!p.targets.matches(&BTreeMap::new(), &attrs));
    let pred = |op: Op, value: Option<&str>, values: Option<Vec<&str>>| Predicate {
        attribute: Text("a".into()),
        op,
        value: value.map(|v| Text(v.into())),
        values: values.map(|v| v.into_iter().map(|s| Text(s.into())).collect()),
    };
    assert!(pred(Op::Lt, Some("0.1"), None).holds(Some("0.05")));
    assert!(!pred(Op::Lt, Some("0.1"), None).holds(Some("0.5")));
    assert!(!pred(Op::Lt, Some("0.1"), None).holds(Some("n/a")));
    assert!(pred(Op::Ge, Some("2"), None).holds(Some("2")));
    assert!(pred(Op::In, None, Some(vec!["a", "b"])).holds(Some("b")));
    assert!(pred(Op::NotIn, None, Some(vec!["a", "b"])).holds(None));
    assert!(pred(Op::Exists, None, None).holds(Some("")));
    assert!(!pred(Op::Exists, None, None).holds(None));
    assert!(pred(Op::Glob, Some("1.1*"), None).holds(Some("1.1.1w")));
    assert!(pred(Op::Ne, Some("x"), None).holds(None));
}

#[test]
fn glob_patterns() {
    assert!(glob("package:*", "package:libssl3"));
    assert!(glob("*", ""));
    assert!(glob("a*b*c", "aXbYc"));
    assert!(!glob("a*b*c", "aXc"));
    assert!(!glob("ab*ba", "aba"));
    assert!(glob("file:etc/*", "file:etc/websvc.conf"));
    assert!(!glob("file:etc/websvc.conf", "file:etc/other.conf"));
}

#[test]
fn remediation_templates_take_their_operand_from_the_finding() {
    let p = parse_plan(EXAMPLE, "plan.yaml").unwrap();
    let f = |cat, attr: &str| Finding {
        category: cat,
        attribute: attr.into(),
        baseline: Some("a".into()),
        current: Some("b".into()),
        weight: bellwether_model::Unit::ONE,
    };
    let (i, _, spec) = p
        .remediation_for(&[f(DriftCategory::Dependency, "package:libssl1.1")])
        .unwrap();
    assert_eq!(i, 1);
    assert_eq!(
        spec,
        ActionSpec::ReinstallPackage {
            package: "libssl1.1".into(),
            timeout_ms: None
        }
    );
    let (i, _, spec) = p
        .remediation_for(&[f(DriftCategory::Configuration, "file:etc/websvc.conf")])
        .unwrap();
    assert_eq!(i, 0);
    assert_eq!(
        spec,
        ActionSpec::RestoreFile {
            path: "etc/websvc.conf".into(),
            timeout_ms: None
        }
    );
    // The category must match too.
    assert!(p
        .remediation_for(&[f(DriftCategory::Performance, "file:etc/websvc.conf")])
        .is_none());
    assert!(p
        .remediation_for(&[f(DriftCategory::Configuration, "kernel")])
        .is_none());
    let plan = parse_plan(
        &MINIMAL.replace(
            "analysis:",
            "remediation:\n  - { match: { attribute: \"file:etc/*\" }, action: { builtin: restore_file } }\nanalysis:",
        ),
        "r.yaml",
    )
    .unwrap();
    let (_, _, spec) = plan
        .remediation_for(&[f(DriftCategory::Configuration, "file:etc/a.conf?mode=1")])
        .unwrap();
    assert_eq!(
        spec,
        ActionSpec::RestoreFile {
            path: "etc/a.conf".into(),
            timeout_ms: None
        }
    );
    // A finding path that would leave the rootfs resolves to nothing.
    assert!(plan
        .remediation_for(&[f(DriftCategory::Configuration, "file:etc/../../x")])
        .is_none());
}

#[test]
fn limits() {
    let l = Limit {
        hosts: Some(3),
        wave_pct: Some(30.0),
    };
    assert!(!l.reached(2, 2, 10));
    assert!(l.reached(3, 0, 10));
    assert!(l.reached(1, 3, 10));
    assert!(!l.reached(0, 0, 0));
    let none = Limit {
        hosts: None,
        wave_pct: None,
    };
    assert!(!none.reached(100, 100, 100));
}

proptest::proptest! {
    #[test]
    fn the_parser_never_panics(text in "[a-z_:{}\\[\\], 0-9.\\n\"-]{0,300}") {
        let r = parse_plan(&text, "fuzz.yaml");
        if let Err(e) = r {
            proptest::prop_assert!(e.line >= 1 && e.column >= 1);
            proptest::prop_assert!(e.to_string().starts_with("fuzz.yaml:"));
        }
    }

    #[test]
    fn mutated_examples_never_panic(pos in 0usize..2000, junk in ".{0,12}") {
        let mut s = EXAMPLE.to_string();
        let mut p = pos % (s.len() + 1);
        while !s.is_char_boundary(p) { p -= 1; }
        s.insert_str(p, &junk);
        if let Err(e) = parse_plan(&s, "fuzz.yaml") {
            proptest::prop_assert!(e.line >= 1 && e.column >= 1);
        }
    }
}

/// The error examples quoted in docs/rollout.md, on the complete plan of that page.
#[test]
fn the_documented_error_messages() {
    let doc = include_str!("../../../../../docs/rollout.md");
    let start = doc.find("```yaml\nname: web-v2").unwrap() + "```yaml\n".len();
    let plan = &doc[start..start + doc[start..].find("```").unwrap()];
    parse_plan(plan, "plan.yaml").unwrap();
    let cases = [
        ("  low: 0.2", "  low: 0.7"),
        ("fixed: [10, 50, 100]", "fixed: [10, 50, 90]"),
        ("direction: increase, threshold_pct: 50", "direction: upward, threshold_pct: 50"),
        ("apply:  { builtin: set_service_version, version: \"2\" }     # or { argv: [..], timeout: 30s }", "apply: { argv: [] }"),
        ("restore_file, path: etc/websvc.conf", "restore_file, path: /etc/websvc.conf"),
    ];
    let missing: Vec<String> = cases
        .iter()
        .map(|(from, to)| {
            assert_eq!(plan.matches(from).count(), 1, "{from}");
            parse_plan(&plan.replacen(from, to, 1), "plan.yaml")
                .unwrap_err()
                .to_string()
        })
        .filter(|e| !doc.contains(e.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/rollout.md should quote:\n{}",
        missing.join("\n")
    );
}

/// A plan nested 100,000 levels deep (flow or block, where a text, a section or a list is
/// expected) is refused at once with its line and column: it used to be parsed in full
/// (quadratically), which stalled the server's async threads for half a minute. The parser
/// streams into the plan's types, so it stops at the first value of the wrong shape; the
/// depth budget (see `crate::yaml`) bounds whatever a type would accept.
#[test]
fn a_deeply_nested_plan_is_refused_quickly() {
    let cases = [
        format!("name: {}", "[".repeat(100_000)),
        format!("name: x\nupdate: {}", "{a: ".repeat(100_000)),
        format!("{EXAMPLE}remediation:\n{}", "- ".repeat(100_000)),
        (0..1000)
            .map(|i| format!("{}name:\n", " ".repeat(i)))
            .collect(),
        format!("targets:\n  where: {}", "[".repeat(100_000)),
    ];
    for text in cases {
        let t = std::time::Instant::now();
        let e = parse_plan(&text, "deep.yaml").unwrap_err();
        assert!(
            t.elapsed() < std::time::Duration::from_secs(2),
            "took {:?}: {e}",
            t.elapsed()
        );
        assert!(e.line >= 1 && e.column >= 1, "{e}");
        assert!(e.line <= 40, "{e}");
        assert!(
            e.message.contains("invalid type")
                || e.message.contains("unknown field")
                || e.message.contains("deeper than")
                || e.message.contains("duplicate key"),
            "{e}"
        );
    }
}

#[test]
fn an_oversized_plan_is_refused_before_it_is_parsed() {
    let text = format!("{EXAMPLE}# {}\n", "x".repeat(crate::yaml::MAX_BYTES));
    let e = parse_plan(&text, "big.yaml").unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "big.yaml:1:1: the text is {} bytes; the limit is 1048576 bytes",
            text.len()
        )
    );
    // Many small values: the node limit.
    let many = EXAMPLE.replacen(
        "fixed: [10, 50, 100]",
        &format!("fixed: [{}]", vec!["1"; crate::yaml::MAX_NODES].join(",")),
        1,
    );
    let e = parse_plan(&many, "many.yaml").unwrap_err();
    assert!(e.message.contains("more than 100000 values"), "{e}");
}

/// A key repeated inside a nested mapping was silently last-wins (`labels`); every mapping
/// now refuses it as the top level does, at the repeated key.
#[test]
fn a_key_repeated_in_any_mapping_is_refused_with_its_place() {
    let cases = [
        (
            "labels: { role: web }",
            "labels: { role: web, role: db }",
            "role",
        ),
        (
            "labels: { role: web }",
            "labels:\n    role: web\n    role: db",
            "role",
        ),
        ("  low: 0.2\n", "  low: 0.2\n  low: 0.1\n", "low"),
        ("bake: 30s\n", "bake: 30s\nbake: 10s\n", "bake"),
        ("{ after: 5s }", "{ after: 5s, after: 6s }", "after"),
        (
            "pause_when: { hosts: 3, wave_pct: 30 }",
            "pause_when: { hosts: 3, wave_pct: 30, hosts: 9 }",
            "hosts",
        ),
        (
            "action: { builtin: reinstall_package }",
            "action: { builtin: reinstall_package, builtin: restore_file }",
            "builtin",
        ),
    ];
    for (from, to, key) in cases {
        assert_eq!(EXAMPLE.matches(from).count(), 1, "{from}");
        let text = EXAMPLE.replacen(from, to, 1);
        let e = parse_plan(&text, "plan.yaml").unwrap_err();
        assert!(
            e.message.contains(&format!("duplicate key `{key}`")),
            "{to}: {e}"
        );
        // The line and column are those of the second occurrence of the key.
        let line = text.lines().nth(e.line - 1).unwrap();
        let at: String = line.chars().skip(e.column - 1).take(key.len()).collect();
        assert_eq!(at, key, "{to}: {e} points at {line:?}");
        let first = text.find(&format!("{key}:")).unwrap();
        let before = text[..first].lines().count();
        assert!(
            e.line > before || line.matches(&format!("{key}:")).count() == 2,
            "{e}"
        );
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

    /// Any text at all, including control characters, tabs, anchors, aliases, tags and
    /// unbalanced brackets, gives a plan or an error with a place: never a panic.
    #[test]
    fn arbitrary_text_never_panics_the_parser(text in "(?s).{0,400}") {
        if let Err(e) = parse_plan(&text, "fuzz.yaml") {
            proptest::prop_assert!(e.line >= 1 && e.column >= 1);
            proptest::prop_assert!(!e.message.chars().any(char::is_control), "{e}");
        }
    }

    #[test]
    fn yaml_shaped_text_never_panics_the_parser(
        parts in proptest::collection::vec(
            proptest::sample::select(vec![
                "name", "update", ":", " ", "\n", "  ", "- ", "[", "]", "{", "}", ",", "&a ",
                "*a", "<<: ", "!!str ", "? ", "|\n", ">-\n", "\"", "'", "#", "---\n", "...\n",
                "\t", "1e309", "~", "\u{feff}", "%YAML 1.2\n", "labels", "role", "\\",
            ]),
            0..120,
        )
    ) {
        let text: String = parts.concat();
        if let Err(e) = parse_plan(&text, "fuzz.yaml") {
            proptest::prop_assert!(e.line >= 1 && e.column >= 1);
        }
    }
}

#[test]
fn update_depends_on_lists_package_names_once_each() {
    let with = |list: &str| {
        EXAMPLE.replacen(
            "  revert: { builtin: set_service_version, version: \"1\" }\n",
            &format!("  revert: {{ builtin: set_service_version, version: \"1\" }}\n  depends_on: {list}\n"),
            1,
        )
    };
    let p = parse_plan(&with("[libc6, python3, libssl1.1]"), "plan.yaml").unwrap();
    let names: Vec<&str> = p.update.depends_on.iter().map(|n| n.0.as_str()).collect();
    assert_eq!(names, ["libc6", "python3", "libssl1.1"]);
    assert!(parse_plan(EXAMPLE, "plan.yaml")
        .unwrap()
        .update
        .depends_on
        .is_empty());
    let text = with("[libc6, libc6]");
    let e = parse_plan(&text, "plan.yaml").unwrap_err();
    expect(
        &e,
        line_of(&text, "depends_on"),
        "package libc6 is listed twice",
    );
    let text = with("[\"lib c6\"]");
    let e = parse_plan(&text, "plan.yaml").unwrap_err();
    expect(
        &e,
        line_of(&text, "depends_on"),
        "package name \"lib c6\" is not",
    );
    let text = with("[\"\"]");
    let e = parse_plan(&text, "plan.yaml").unwrap_err();
    expect(&e, line_of(&text, "depends_on"), "update.depends_on");
    let text = with("libc6");
    let e = parse_plan(&text, "plan.yaml").unwrap_err();
    expect(&e, line_of(&text, "depends_on"), "update.depends_on");
}

const PROM: &str = r#"name: p
update: { name: websvc, version: 2, apply: { argv: [/bin/true] }, revert: { argv: [/bin/true] } }
analysis:
  prometheus: { address: "http://127.0.0.1:9090/", timeout: 2s }
  metrics:
    - { name: svc_error_ratio, threshold_pct: 50 }
    - name: http_5xx
      source: prometheus
      query: 'sum(rate(http_requests_total{instance="{{host}}",code=~"5.."}[1m]))'
      threshold_pct: 50
      floor: 0.01
"#;

#[test]
fn prometheus_metrics_parse_and_round_trip() {
    let p = parse_plan(PROM, "p.yaml").unwrap();
    let m = &p.analysis.metrics[1];
    assert_eq!(m.source, MetricSource::Prometheus);
    assert_eq!(
        m.query.as_ref().unwrap().as_str(),
        r#"sum(rate(http_requests_total{instance="{{host}}",code=~"5.."}[1m]))"#
    );
    assert_eq!(p.analysis.metrics[0].source, MetricSource::Agent);
    let prom = p.analysis.prometheus.as_ref().unwrap();
    assert_eq!(prom.address.as_deref(), Some("http://127.0.0.1:9090/"));
    assert_eq!(prom.timeout.0, Duration::from_secs(2));
    assert_eq!(
        p.analysis
            .prometheus_metrics()
            .map(|(m, _)| m.name.0.as_str())
            .collect::<Vec<_>>(),
        ["http_5xx"]
    );
    let json = serde_json::to_value(&p).unwrap();
    assert_eq!(json["analysis"]["metrics"][1]["source"], "prometheus");
    assert!(json["analysis"]["metrics"][0].get("source").is_none());
    assert_eq!(serde_json::from_value::<Plan>(json).unwrap(), p);
    let yaml = serde_saphyr::to_string(&p).unwrap();
    assert_eq!(parse_plan(&yaml, "again.yaml").unwrap(), p, "{yaml}");
    // The default timeout, and no address (the server's --prometheus-url then).
    let d = parse_plan(
        &PROM.replace(
            r#"  prometheus: { address: "http://127.0.0.1:9090/", timeout: 2s }
"#,
            "",
        ),
        "d.yaml",
    )
    .unwrap();
    assert!(d.analysis.prometheus.is_none());
}

#[test]
fn bad_prometheus_settings_name_their_place() {
    let line = |needle: &str| line_of(PROM, needle);
    let cases: Vec<(&str, &str, usize, &str)> = vec![
        (
            "      source: prometheus\n",
            "",
            line("name: http_5xx"),
            "http_5xx has a `query` but reads the agents' samples: add `source: prometheus`",
        ),
        (
            "      query: 'sum(rate(http_requests_total{instance=\"{{host}}\",code=~\"5..\"}[1m]))'\n",
            "",
            line("name: http_5xx"),
            "http_5xx reads Prometheus: give its PromQL `query`",
        ),
        (
            "instance=\"{{host}}\"",
            "instance={{host}}",
            line("query:"),
            "analysis.metrics[1].query: {{host}} must be inside a quoted string",
        ),
        (
            "{{host}}",
            "{{hostname}}",
            line("query:"),
            "unknown placeholder {{hostname}}",
        ),
        (
            "instance=\"{{host}}\"",
            "instance=\"{{address}}:{{port}}\"",
            line("query:"),
            "unknown placeholder {{port}}: use {{host}}, {{address}}, {{labels.NAME}} or {{interval}} (the host record has no port",
        ),
        (
            "source: prometheus",
            "source: graphite",
            line("source:"),
            "unknown variant `graphite`, expected `agent` or `prometheus`",
        ),
        (
            "address: \"http://127.0.0.1:9090/\"",
            "address: \"127.0.0.1:9090\"",
            line("prometheus:"),
            "analysis.prometheus: address \"127.0.0.1:9090\" must start with http:// or https://",
        ),
        (
            "timeout: 2s",
            "timeout: 1ms",
            line("prometheus:"),
            "timeout 1ms is not between 10ms and 300s",
        ),
        (
            "timeout: 2s",
            "timeout: 2s, token: x",
            line("prometheus:"),
            "unknown field `token`",
        ),
    ];
    for (from, to, line, want) in cases {
        assert_eq!(PROM.matches(from).count(), 1, "{from}");
        let e = parse_plan(&PROM.replacen(from, to, 1), "plan.yaml").unwrap_err();
        expect(&e, line, want);
    }
}

#[test]
fn the_prometheus_example_plan_parses() {
    let text = include_str!("../../../../../examples/plans/web-v2-prometheus.yaml");
    let p = parse_plan(text, "web-v2-prometheus.yaml").unwrap();
    assert_eq!(p.analysis.prometheus_metrics().count(), 1);
    assert_eq!(p.analysis.metrics.len(), 2);
}
