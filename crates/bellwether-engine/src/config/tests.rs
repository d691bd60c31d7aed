use super::*;
use bellwether_config::graph::{Edge, Evidence, EvidenceSource};
use bellwether_config::setting::{Setting, VarType};
use proptest::prelude::*;

pub(crate) fn setting(name: &str, value: &str, context: Context, source: &str) -> Setting {
    Setting {
        name: name.into(),
        value: value.into(),
        unit: None,
        vartype: VarType::String,
        context,
        min: None,
        max: None,
        enumvals: Vec::new(),
        boot_val: None,
        reset_val: None,
        source: source.into(),
        sourcefile: None,
        sourceline: None,
        pending_restart: false,
        category: String::new(),
        short_desc: String::new(),
    }
}

/// A small catalog: `work_mem` set by ALTER SYSTEM, `shared_buffers` (restart) from
/// postgresql.conf, `random_page_cost` at its default, an internal one.
pub(crate) fn catalog() -> Catalog {
    let mut wm = setting("work_mem", "4096", Context::User, "configuration file");
    wm.sourcefile = Some("/data/postgresql.auto.conf".into());
    let mut sb = setting(
        "shared_buffers",
        "16384",
        Context::Postmaster,
        "configuration file",
    );
    sb.sourcefile = Some("/etc/postgresql/postgresql.conf".into());
    let mut c = Catalog {
        server_version_num: 150000,
        settings: BTreeMap::new(),
    };
    for s in [
        wm,
        sb,
        setting("random_page_cost", "4", Context::User, "default"),
        setting("max_wal_senders", "10", Context::Postmaster, "default"),
        setting("wal_level", "replica", Context::Postmaster, "default"),
        setting("block_size", "8192", Context::Internal, "default"),
    ] {
        c.settings.insert(s.name.clone(), s);
    }
    c
}

fn target(h: &str) -> Target {
    Target {
        host: h.into(),
        database: "main".into(),
    }
}

/// Resets only (values need the instance's catalog to validate, which the engine asks
/// `Catalog::validate` for; resets need nothing).
fn plan(targets: usize, set: &[(&str, Option<&str>)]) -> ConfigPlan {
    ConfigPlan::new(
        "test change",
        "alice",
        (0..targets).map(|i| target(&format!("db{i}"))).collect(),
        set.iter()
            .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
            .collect(),
    )
}

fn healthy() -> BTreeMap<String, f64> {
    metrics(1000.0, 5.0)
}

fn metrics(tps: f64, lat: f64) -> BTreeMap<String, f64> {
    BTreeMap::from([
        ("tps".to_string(), tps),
        ("latency_ms".to_string(), lat),
        ("errors_per_s".to_string(), 0.0),
        ("up".to_string(), 1.0),
    ])
}

fn down() -> BTreeMap<String, f64> {
    BTreeMap::from([("up".to_string(), 0.0)])
}

/// A driver for tests: the engine, its clock, every event and action so far.
struct Rig {
    e: ConfigChangeEngine,
    now: i64,
    events: Vec<Event>,
    actions: Vec<Action>,
}

impl Rig {
    fn new(p: ConfigPlan, graph: Graph) -> Rig {
        let (e, out) = ConfigChangeEngine::start(
            p,
            EngineContext {
                graph,
                history: Vec::new(),
            },
            1_000_000,
        );
        let mut r = Rig {
            e,
            now: 1_000_000,
            events: Vec::new(),
            actions: Vec::new(),
        };
        r.take(out);
        r
    }

    fn take(&mut self, out: Output) -> Output {
        self.events.extend(out.events.clone());
        self.actions.extend(out.actions.clone());
        out
    }

    fn step(&mut self, input: Input) -> Output {
        let out = self.e.step(input, self.now);
        self.take(out)
    }

    /// Also round-trips the engine through JSON every step, as the server persists it.
    fn step_persisted(&mut self, input: Input) -> Output {
        let json = serde_json::to_string(&self.e).unwrap();
        self.e = serde_json::from_str(&json).unwrap();
        self.step(input)
    }

    fn pending(&self, kind: ActionKind) -> Action {
        self.e
            .pending()
            .into_iter()
            .find(|a| a.kind == kind)
            .unwrap_or_else(|| panic!("no pending {kind:?}: {:?}", self.e.pending()))
    }

    fn done(&mut self, kind: ActionKind, output: Value) -> Output {
        let a = self.pending(kind);
        self.step(Input::Done {
            action_id: a.id,
            outcome: ActionOutcome::Ok,
            output: Some(output),
        })
    }

    /// One sample per second for `secs` seconds on `target`.
    fn samples(&mut self, target: usize, secs: usize, m: &BTreeMap<String, f64>) {
        for _ in 0..secs {
            self.now += 1000;
            self.step_persisted(Input::Sample {
                target,
                at_ms: self.now,
                metrics: m.clone(),
            });
        }
    }

    fn names(&self) -> Vec<&str> {
        self.events.iter().map(|e| e.name.as_str()).collect()
    }

    fn count(&self, name: &str) -> usize {
        self.events.iter().filter(|e| e.name == name).count()
    }

    fn apply_report(&self, values: &[(&str, &str)]) -> Value {
        json!({
            "applied": [], "reloaded": true, "restarted": false, "pending_restart": [],
            "values": values.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
            "applied_at_ms": self.now,
        })
    }

    fn trial_ok(&mut self) {
        self.done(
            ActionKind::Trial,
            json!({"started": true, "message": "", "ms": 900}),
        );
    }

    /// Trials, snapshot, baseline and apply of target `i` (trials of all targets first).
    fn bring_to_bake(&mut self, i: usize, trials: usize) {
        self.bring_to_bake_from(i, trials, &healthy());
    }

    /// As `bring_to_bake`, with `baseline` as the samples before the apply.
    fn bring_to_bake_from(&mut self, i: usize, trials: usize, baseline: &BTreeMap<String, f64>) {
        for _ in 0..trials {
            self.trial_ok();
        }
        self.done(ActionKind::Snapshot, json!(catalog()));
        assert_eq!(self.e.stages()[i], Stage::Baseline);
        self.samples(i, 12, baseline);
        let apply = self.pending(ActionKind::Apply);
        assert_eq!(apply.target, i);
        self.now += 300;
        let report = self.apply_report(&[("random_page_cost", "4")]);
        self.done(ActionKind::Apply, report);
        assert_eq!(self.e.stages()[i], Stage::Bake);
    }
}

fn requires(from: &str, to: &str) -> Edge {
    Edge {
        from: from.into(),
        to: to.into(),
        kind: EdgeKind::Requires,
        confidence: 0.9,
        evidence: vec![Evidence {
            source: EvidenceSource::Rule,
            detail: "test".into(),
        }],
        condition: None,
    }
}

#[test]
fn a_harmless_change_is_promoted_on_every_target_canary_first() {
    let mut r = Rig::new(plan(2, &[("random_page_cost", None)]), Graph::default());
    // Trials of both targets before anything touches an instance.
    assert_eq!(r.pending(ActionKind::Trial).target, 0);
    r.trial_ok();
    assert_eq!(r.pending(ActionKind::Trial).target, 1);
    r.trial_ok();
    r.bring_to_bake(0, 0);
    assert!(r.e.pending().is_empty());
    r.samples(0, 25, &healthy());
    assert_eq!(r.e.stages()[0], Stage::Promoted);
    assert_eq!(r.count("promoted"), 1);
    // The second target starts only now.
    r.bring_to_bake(1, 0);
    r.samples(1, 25, &healthy());
    assert_eq!(r.e.phase, Phase::Completed);
    assert!(r.e.is_settled());
    assert_eq!(r.names().last(), Some(&"completed"));
    assert_eq!(r.count("snapshot"), 2);
    assert_eq!(r.count("applied"), 2);
    let changed: Vec<&Event> = r.events.iter().filter(|e| e.name == "changed").collect();
    assert_eq!(changed.len(), 2);
    let c: ConfigChange = serde_json::from_value(changed[0].figures.clone()).unwrap();
    assert_eq!(c.source, ChangeSource::Apply);
    assert_eq!(c.key, "random_page_cost");
    assert_eq!(c.old.as_deref(), Some("4"));
    assert_eq!(c.author, "alice");
    assert_eq!(c.host, "db0");
    let s = r.events.iter().find(|e| e.name == "snapshot").unwrap();
    let snap: Snapshot = serde_json::from_value(s.figures["snapshot"].clone()).unwrap();
    assert!(snap.is_whole());
    assert_eq!(
        snap.values.get("work_mem").map(String::as_str),
        Some("4096")
    );
    assert_eq!(r.e.report()["phase"], "completed");
    assert_eq!(r.e.report()["targets"][1]["stage"], "promoted");
}

/// A harmful change: throughput collapses after the apply; the canary is traced, reverted in
/// a safe order with a restart (shared_buffers is a restart setting), confirmed, and the
/// second target is never touched.
#[test]
fn a_harmful_change_is_traced_reverted_and_confirmed() {
    let mut p = plan(2, &[("shared_buffers", None), ("random_page_cost", None)]);
    p.risk_threshold = 0.01;
    // shared_buffers requires random_page_cost (made up): random_page_cost goes first.
    let g = Graph {
        version: 0,
        nodes: Vec::new(),
        edges: vec![requires("shared_buffers", "random_page_cost")],
    };
    let mut r = Rig::new(p, g);
    r.bring_to_bake(0, 2);
    let apply = r
        .actions
        .iter()
        .find(|a| a.kind == ActionKind::Apply)
        .unwrap();
    assert!(matches!(
        apply.spec,
        ActionSpec::PgApply { restart: true, .. }
    ));
    r.samples(0, 8, &metrics(300.0, 17.0));
    assert_eq!(r.count("anomaly"), 1, "{:?}", r.events);
    assert_eq!(r.count("traced"), 1);
    let traced = r.events.iter().find(|e| e.name == "traced").unwrap();
    let risk: bellwether_config::risk::Risk =
        serde_json::from_value(traced.figures["risk"].clone()).unwrap();
    assert!(risk.residual().abs() < 1e-9);
    assert_eq!(traced.figures["decision"], "revert");
    assert_eq!(r.e.stages()[0], Stage::RevertSnapshot);
    let mut bad = catalog();
    bad.settings.get_mut("random_page_cost").unwrap().value = "40".into();
    r.done(ActionKind::RevertSnapshot, json!(bad));
    let revert = r.pending(ActionKind::Revert);
    let ActionSpec::PgApply {
        settings, restart, ..
    } = &revert.spec
    else {
        panic!("{revert:?}")
    };
    assert!(*restart);
    // Both were not set by ALTER SYSTEM before: both are reset, dependency first.
    assert_eq!(
        settings,
        &vec![
            ("random_page_cost".to_string(), None),
            ("shared_buffers".to_string(), None)
        ]
    );
    r.now += 2000;
    let rep = r.apply_report(&[("random_page_cost", "4"), ("shared_buffers", "16384")]);
    r.done(ActionKind::Revert, rep);
    let reverted_changes: Vec<ConfigChange> = r
        .events
        .iter()
        .filter(|e| e.name == "changed")
        .map(|e| serde_json::from_value(e.figures.clone()).unwrap())
        .filter(|c: &ConfigChange| c.source == ChangeSource::Revert)
        .collect();
    assert_eq!(reverted_changes.len(), 2);
    assert_eq!(reverted_changes[0].old.as_deref(), Some("40"));
    assert_eq!(reverted_changes[0].new.as_deref(), Some("4"));
    assert_eq!(r.e.stages()[0], Stage::Confirm);
    r.samples(0, 7, &healthy());
    assert_eq!(r.e.stages()[0], Stage::Recovered, "{:?}", r.names());
    assert_eq!(r.e.stages()[1], Stage::Skipped);
    assert_eq!(r.e.phase, Phase::RolledBack);
    assert!(r.e.is_settled());
    assert_eq!(r.names().last(), Some(&"rolled_back"));
    // Nothing was ever sent to the second target but its trial.
    assert!(r
        .actions
        .iter()
        .all(|a| a.target == 0 || a.kind == ActionKind::Trial));
    let rep = r.e.report();
    assert_eq!(rep["root_cause"]["decision"], "revert");
    assert!(rep["targets"][0]["recovered_after_ms"].as_i64().unwrap() > 0);
}

#[test]
fn an_anomaly_below_the_threshold_keeps_watching_and_promotes() {
    let mut p = plan(1, &[("random_page_cost", None)]);
    p.risk_threshold = 0.999_999;
    let mut r = Rig::new(p, Graph::default());
    r.bring_to_bake(0, 1);
    r.samples(0, 6, &metrics(700.0, 5.0));
    assert_eq!(r.count("traced"), 1);
    let traced = r.events.iter().find(|e| e.name == "traced").unwrap();
    assert_eq!(traced.figures["decision"], "keep_watching");
    // The same anomaly is not traced again on every sample.
    r.samples(0, 20, &metrics(700.0, 5.0));
    assert_eq!(r.count("traced"), 1);
    assert_eq!(r.e.phase, Phase::Completed, "{:?}", r.names());
    assert_eq!(r.count("revert"), 0);
}

#[test]
fn no_data_pauses_the_bake_and_never_decides() {
    let mut r = Rig::new(plan(1, &[("random_page_cost", None)]), Graph::default());
    r.bring_to_bake(0, 1);
    for _ in 0..600 {
        r.now += 1000;
        r.step(Input::Tick);
    }
    assert_eq!(r.count("no_data"), 1, "{:?}", r.names());
    assert_eq!(r.e.stages()[0], Stage::Bake);
    // Samples without the rule metrics are no data either.
    r.samples(
        0,
        60,
        &BTreeMap::from([("temp_bytes_per_s".to_string(), 1.0)]),
    );
    assert_eq!(r.e.stages()[0], Stage::Bake);
    assert_eq!(r.count("promoted"), 0);
    // Data again: the bake goes on from where it stopped.
    r.samples(0, 25, &healthy());
    assert_eq!(r.e.phase, Phase::Completed);
}

#[test]
fn the_apply_waits_for_a_baseline() {
    let mut r = Rig::new(plan(1, &[("random_page_cost", None)]), Graph::default());
    r.trial_ok();
    r.done(ActionKind::Snapshot, json!(catalog()));
    for _ in 0..10 {
        r.now += 1000;
        r.step(Input::Tick);
    }
    assert!(r.e.pending().is_empty());
    assert_eq!(r.count("no_data"), 1);
    r.samples(0, 4, &healthy());
    assert!(r.e.pending().is_empty(), "4 samples are not a baseline");
    r.samples(0, 1, &healthy());
    assert_eq!(r.pending(ActionKind::Apply).target, 0);
}

#[test]
fn an_instance_down_after_the_apply_is_reverted_whatever_the_risk() {
    let mut p = plan(1, &[("shared_buffers", None)]);
    p.risk_threshold = 0.999_999;
    let mut r = Rig::new(p, Graph::default());
    r.bring_to_bake(0, 1);
    r.samples(0, 6, &down());
    let traced = r.events.iter().find(|e| e.name == "traced").unwrap();
    assert_eq!(traced.figures["forced"], true);
    assert_eq!(traced.figures["severity"], 1.0);
    // The bad state cannot be read from a down instance: the revert goes on.
    let a = r.pending(ActionKind::RevertSnapshot);
    r.step(Input::Done {
        action_id: a.id,
        outcome: ActionOutcome::Failed {
            exit_code: None,
            error: "connection refused".into(),
        },
        output: None,
    });
    assert!(matches!(
        r.pending(ActionKind::Revert).spec,
        ActionSpec::PgApply { restart: true, .. }
    ));
}

/// Runs a one-target change of `key` (risk threshold 0.01: any traced anomaly reverts) with
/// the given restart warm-up: `dip` seconds of a throughput collapse right after the apply,
/// then healthy samples until the bake ends. Gives the rig.
fn after_a_dip(key: &str, warmup_ms: u64, dip: usize) -> Rig {
    let mut p = plan(1, &[(key, None)]);
    p.risk_threshold = 0.01;
    p.watch.restart_warmup_ms = warmup_ms;
    let mut r = Rig::new(p, Graph::default());
    r.bring_to_bake(0, 1);
    r.samples(0, dip, &metrics(300.0, 17.0));
    if !r.e.stages()[0].eq(&Stage::RevertSnapshot) {
        r.samples(0, 30, &healthy());
    }
    r
}

/// A restart empties caches and drops connections: a dip in the warm-up after it is the
/// restart's transient, not the change's effect, while a dip that outlasts the warm-up by a
/// rule's `for` is judged like any other; a reload has no warm-up; a down instance is reverted
/// within the warm-up (`an_instance_down_after_the_apply_is_reverted_whatever_the_risk`).
#[test]
fn a_restart_transient_in_the_warm_up_is_not_the_change() {
    let d = WatchSpec::defaults();
    assert_eq!(d.restart_warmup_ms, 3_000);
    // Five 1-s samples out of band right after a restart: long enough to breach (for = 4 s)
    // without a warm-up, inside warm-up + for with the default one.
    let kept = after_a_dip("max_wal_senders", d.restart_warmup_ms, 5);
    assert_eq!(kept.count("anomaly"), 0, "{:?}", kept.names());
    assert_eq!(kept.e.stages()[0], Stage::Promoted, "{:?}", kept.names());
    let applied = kept.events.iter().find(|e| e.name == "applied").unwrap();
    assert_eq!(applied.figures["restart_warmup_ms"], 3_000);
    // The warm-up adds no bake time: promoted only after the bake's 20 s of judged samples.
    let promoted = kept.events.iter().find(|e| e.name == "promoted").unwrap();
    let applied_at = applied.figures["applied_at_ms"].as_i64().unwrap();
    assert!(promoted.at_ms - applied_at >= 23_000, "{promoted:?}");
    // The same dip without a warm-up reverts.
    let cold = after_a_dip("max_wal_senders", 0, 5);
    assert_eq!(
        cold.e.stages()[0],
        Stage::RevertSnapshot,
        "{:?}",
        cold.names()
    );
    // After a reload there is no warm-up: the same dip reverts.
    let reload = after_a_dip("random_page_cost", d.restart_warmup_ms, 5);
    assert_eq!(
        reload.e.stages()[0],
        Stage::RevertSnapshot,
        "{:?}",
        reload.names()
    );
    // A dip that goes on past the warm-up is the change's: reverted once it has lasted its
    // `for` after the warm-up (samples at 3..7 s), and the onset is dated from the warm-up's
    // end.
    let sustained = after_a_dip("max_wal_senders", d.restart_warmup_ms, 10);
    assert_eq!(sustained.e.stages()[0], Stage::RevertSnapshot);
    let anomaly = sustained
        .events
        .iter()
        .find(|e| e.name == "anomaly")
        .unwrap();
    let applied_at = sustained
        .events
        .iter()
        .find(|e| e.name == "applied")
        .unwrap()
        .figures["applied_at_ms"]
        .as_i64()
        .unwrap();
    assert!(anomaly.at_ms - applied_at <= 8_000, "{anomaly:?}");
    let traced = sustained
        .events
        .iter()
        .find(|e| e.name == "traced")
        .unwrap();
    let risk: bellwether_config::risk::Risk =
        serde_json::from_value(traced.figures["risk"].clone()).unwrap();
    let onset = risk.factors.iter().find(|f| f.name == "onset").unwrap();
    assert!(onset.detail.contains("warm-up"), "{onset:?}");
    assert!(onset.log_odds > 0.0, "{onset:?}");
}

#[test]
fn a_failed_apply_is_reverted_and_a_refused_one_is_not() {
    let mut r = Rig::new(plan(1, &[("random_page_cost", None)]), Graph::default());
    r.trial_ok();
    r.done(ActionKind::Snapshot, json!(catalog()));
    r.samples(0, 12, &healthy());
    let a = r.pending(ActionKind::Apply);
    r.step(Input::Done {
        action_id: a.id,
        outcome: ActionOutcome::TimedOut { after_ms: 60_000 },
        output: None,
    });
    assert_eq!(r.e.stages()[0], Stage::RevertSnapshot);

    let mut r = Rig::new(plan(2, &[("random_page_cost", None)]), Graph::default());
    r.trial_ok();
    r.trial_ok();
    r.done(ActionKind::Snapshot, json!(catalog()));
    r.samples(0, 12, &healthy());
    let a = r.pending(ActionKind::Apply);
    r.step(Input::Done {
        action_id: a.id,
        outcome: ActionOutcome::Refused {
            reason: "not allowed".into(),
        },
        output: None,
    });
    assert_eq!(r.e.phase, Phase::Failed);
    assert_eq!(r.e.stages(), vec![Stage::Failed, Stage::Skipped]);
    assert_eq!(r.count("reverted"), 0);
}

#[test]
fn a_trial_refusal_ends_it_before_any_instance_is_touched() {
    let mut r = Rig::new(plan(3, &[("random_page_cost", None)]), Graph::default());
    r.trial_ok();
    r.done(
        ActionKind::Trial,
        json!({"started": false, "message": "FATAL:  WAL streaming (max_wal_senders > 0) requires wal_level \"replica\" or \"logical\"\n", "ms": 120}),
    );
    assert_eq!(r.e.phase, Phase::Refused);
    assert!(r.e.is_settled());
    let ev = r.events.iter().find(|e| e.name == "trial_refused").unwrap();
    assert!(ev.reason.contains("max_wal_senders"), "{}", ev.reason);
    assert!(r.actions.iter().all(|a| a.kind == ActionKind::Trial));
    assert_eq!(
        r.e.stages(),
        vec![Stage::TrialPassed, Stage::Refused, Stage::Waiting]
            .into_iter()
            .map(|s| if s == Stage::Waiting || s == Stage::TrialPassed {
                Stage::Skipped
            } else {
                s
            })
            .collect::<Vec<_>>()
    );
}

#[test]
fn an_unknown_or_internal_setting_is_refused_at_the_snapshot() {
    for key in ["no_such_setting", "block_size"] {
        let mut r = Rig::new(plan(1, &[(key, None)]), Graph::default());
        r.trial_ok();
        r.done(ActionKind::Snapshot, json!(catalog()));
        assert_eq!(r.e.phase, Phase::Refused, "{key}");
        let ev = r.events.iter().find(|e| e.name == "trial_refused").unwrap();
        assert!(ev.reason.contains(key), "{}", ev.reason);
        assert!(r.actions.iter().all(|a| a.kind != ActionKind::Apply));
    }
}

#[test]
fn results_for_unknown_or_finished_ids_are_ignored() {
    let mut r = Rig::new(plan(1, &[("random_page_cost", None)]), Graph::default());
    let trial = r.pending(ActionKind::Trial);
    let before = r.e.clone();
    let out = r.step(Input::Done {
        action_id: 999,
        outcome: ActionOutcome::Ok,
        output: None,
    });
    assert_eq!(out, Output::default());
    assert_eq!(r.e, before);
    r.trial_ok();
    let out = r.step(Input::Done {
        action_id: trial.id,
        outcome: ActionOutcome::Failed {
            exit_code: None,
            error: "late duplicate".into(),
        },
        output: None,
    });
    assert!(out.events.is_empty());
    assert_eq!(r.e.phase, Phase::Running);
}

#[test]
fn a_late_sample_from_before_the_apply_joins_the_baseline() {
    let mut p = plan(1, &[("random_page_cost", None)]);
    p.risk_threshold = 0.01;
    p.trial = false;
    let mut r = Rig::new(p, Graph::default());
    r.done(ActionKind::Snapshot, json!(catalog()));
    r.samples(0, 12, &healthy());
    let t_late = r.now + 500;
    r.now += 1000;
    let rep = r.apply_report(&[]);
    r.done(ActionKind::Apply, rep);
    // A sample from before the apply's time arrives after it: a bad value there is baseline,
    // not evidence against the change.
    r.step(Input::Sample {
        target: 0,
        at_ms: t_late,
        metrics: metrics(990.0, 5.0),
    });
    r.samples(0, 25, &healthy());
    assert_eq!(r.e.phase, Phase::Completed);
}

#[test]
fn operator_revert_abort_and_their_repeats_are_harmless() {
    let mut r = Rig::new(plan(2, &[("random_page_cost", None)]), Graph::default());
    r.bring_to_bake(0, 2);
    r.samples(0, 3, &healthy());
    r.step(Input::Command(Command::Revert {
        reason: "operator".into(),
    }));
    assert_eq!(r.e.stages()[0], Stage::RevertSnapshot);
    let n = r.e.pending().len();
    // Repeats while reverting change nothing.
    for c in [
        Command::Revert {
            reason: "again".into(),
        },
        Command::Abort {
            reason: "stop".into(),
        },
    ] {
        let out = r.step(Input::Command(c));
        assert!(out.actions.is_empty());
    }
    assert_eq!(r.e.pending().len(), n);
    r.done(ActionKind::RevertSnapshot, json!(catalog()));
    let rep = r.apply_report(&[]);
    r.done(ActionKind::Revert, rep);
    r.samples(0, 7, &healthy());
    assert_eq!(r.e.phase, Phase::RolledBack);
    assert_eq!(r.e.stages(), vec![Stage::Recovered, Stage::Skipped]);

    // Abort in the bake: the applied target stays as it is.
    let mut r = Rig::new(plan(2, &[("random_page_cost", None)]), Graph::default());
    r.bring_to_bake(0, 2);
    r.step(Input::Command(Command::Abort {
        reason: "enough".into(),
    }));
    assert_eq!(r.e.phase, Phase::Aborted);
    assert_eq!(r.e.stages(), vec![Stage::Aborted, Stage::Skipped]);
    assert_eq!(r.count("reverted"), 0);
    // After the end, commands do nothing.
    let out = r.step(Input::Command(Command::Revert {
        reason: "late".into(),
    }));
    assert_eq!(out, Output::default());

    // Revert while the apply is in flight: reverted once the apply's result comes.
    let mut r = Rig::new(plan(1, &[("random_page_cost", None)]), Graph::default());
    r.trial_ok();
    r.done(ActionKind::Snapshot, json!(catalog()));
    r.samples(0, 12, &healthy());
    r.step(Input::Command(Command::Revert {
        reason: "no".into(),
    }));
    assert_eq!(r.e.stages()[0], Stage::Apply);
    let rep = r.apply_report(&[]);
    r.done(ActionKind::Apply, rep);
    assert_eq!(r.e.stages()[0], Stage::RevertSnapshot);
}

#[test]
fn not_recovered_after_the_confirm_timeout() {
    let mut p = plan(1, &[("random_page_cost", None)]);
    p.risk_threshold = 0.01;
    let mut r = Rig::new(p, Graph::default());
    r.bring_to_bake(0, 1);
    r.samples(0, 8, &metrics(100.0, 50.0));
    r.done(ActionKind::RevertSnapshot, json!(catalog()));
    let rep = r.apply_report(&[]);
    r.done(ActionKind::Revert, rep);
    r.samples(0, 70, &metrics(100.0, 50.0));
    assert_eq!(r.e.stages()[0], Stage::NotRecovered);
    assert_eq!(r.e.phase, Phase::RolledBack);
    assert_eq!(r.count("not_recovered"), 1);
}

#[test]
fn revert_values_reset_what_alter_system_did_not_set() {
    let c = catalog();
    let set = vec![
        ("work_mem".to_string(), Some("64kB".to_string())),
        ("shared_buffers".to_string(), Some("128kB".to_string())),
        ("random_page_cost".to_string(), Some("100".to_string())),
    ];
    assert_eq!(
        revert_values(&set, &c),
        vec![
            ("work_mem".to_string(), Some("4096".to_string())),
            ("shared_buffers".to_string(), None),
            ("random_page_cost".to_string(), None),
        ]
    );
}

#[test]
fn revert_order_puts_requirements_first_and_survives_cycles() {
    let s = |k: &[&str]| -> Vec<(String, Option<String>)> {
        k.iter().map(|k| (k.to_string(), None)).collect()
    };
    let names = |v: Vec<(String, Option<String>)>| -> Vec<String> {
        v.into_iter().map(|(k, _)| k).collect()
    };
    let g = Graph {
        version: 0,
        nodes: Vec::new(),
        edges: vec![requires("a", "b"), requires("b", "c"), requires("x", "a")],
    };
    assert_eq!(
        names(revert_order(&s(&["a", "b", "c"]), &g)),
        ["c", "b", "a"]
    );
    assert_eq!(
        names(revert_order(&s(&["d", "a", "c"]), &g)),
        ["d", "a", "c"]
    );
    let cyc = Graph {
        version: 0,
        nodes: Vec::new(),
        edges: vec![requires("a", "b"), requires("b", "a")],
    };
    assert_eq!(
        names(revert_order(&s(&["a", "b", "z"]), &cyc)),
        ["z", "a", "b"]
    );
}

#[test]
fn an_invalid_plan_fails_at_once() {
    let mut p = plan(1, &[("random_page_cost", None)]);
    p.targets.clear();
    let (e, out) = ConfigChangeEngine::start(p, EngineContext::default(), 0);
    assert_eq!(e.phase, Phase::Failed);
    assert!(out.actions.is_empty());
    assert!(out.events[0].reason.contains("targets"));
    assert!(e.is_settled());
}

// ---- properties ------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Tick(u16),
    Sample { target: u8, dt: i16, kind: u8 },
    Done { pick: u8, outcome: u8, output: u8 },
    Unknown(u64),
    Abort,
    Revert,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u16..5000).prop_map(Op::Tick),
        (0u8..3, -3000i16..3000, 0u8..6).prop_map(|(target, dt, kind)| Op::Sample {
            target,
            dt,
            kind
        }),
        (0u8..4, 0u8..4, 0u8..6).prop_map(|(pick, outcome, output)| Op::Done {
            pick,
            outcome,
            output
        }),
        any::<u64>().prop_map(Op::Unknown),
        Just(Op::Abort),
        Just(Op::Revert),
    ]
}

fn sample_of(kind: u8) -> BTreeMap<String, f64> {
    match kind {
        0 => healthy(),
        1 => metrics(200.0, 40.0),
        2 => down(),
        3 => BTreeMap::new(),
        4 => BTreeMap::from([
            ("tps".to_string(), f64::NAN),
            ("latency_ms".to_string(), f64::INFINITY),
        ]),
        _ => metrics(1e300, -5.0),
    }
}

fn output_of(kind: ActionKind, output: u8, now: i64) -> Option<Value> {
    match (output, kind) {
        (0, _) => None,
        (1, _) => Some(json!("garbage")),
        (_, ActionKind::Trial) => {
            Some(json!({"started": output != 2, "message": "FATAL: no", "ms": 1}))
        }
        (_, ActionKind::Snapshot | ActionKind::RevertSnapshot) => Some(json!(catalog())),
        (2, _) => {
            Some(json!({"applied_at_ms": now, "values": {}, "pending_restart": ["shared_buffers"]}))
        }
        (3, _) => Some(json!({"applied_at_ms": "later"})),
        _ => Some(json!({"applied_at_ms": now - 100, "values": {}, "pending_restart": []})),
    }
}

fn outcome_of(o: u8) -> ActionOutcome {
    match o {
        0 | 1 => ActionOutcome::Ok,
        2 => ActionOutcome::Failed {
            exit_code: None,
            error: "x".into(),
        },
        _ => ActionOutcome::TimedOut { after_ms: 1 },
    }
}

fn run_ops(p: ConfigPlan, ops: &[Op], mut check: impl FnMut(&ConfigChangeEngine, &Output)) {
    let (mut e, out) = ConfigChangeEngine::start(p, EngineContext::default(), 0);
    check(&e, &out);
    let mut now = 0i64;
    for op in ops {
        let input = match op {
            Op::Tick(dt) => {
                now += i64::from(*dt);
                Input::Tick
            }
            Op::Sample { target, dt, kind } => {
                now += 1000;
                Input::Sample {
                    target: usize::from(*target),
                    at_ms: now + i64::from(*dt),
                    metrics: sample_of(*kind),
                }
            }
            Op::Done {
                pick,
                outcome,
                output,
            } => {
                let pending = e.pending();
                if pending.is_empty() {
                    continue;
                }
                let a = &pending[usize::from(*pick) % pending.len()];
                Input::Done {
                    action_id: a.id,
                    outcome: outcome_of(*outcome),
                    output: output_of(a.kind, *output, now),
                }
            }
            Op::Unknown(id) => Input::Done {
                action_id: *id | (1 << 40),
                outcome: ActionOutcome::Ok,
                output: None,
            },
            Op::Abort => Input::Command(Command::Abort { reason: "p".into() }),
            Op::Revert => Input::Command(Command::Revert { reason: "p".into() }),
        };
        let out = e.step(input, now);
        check(&e, &out);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Whatever arrives in whatever order: no panic, each target's apply dispatched at most
    /// once, ids unique, a final phase has nothing in flight, traced risks add up.
    #[test]
    fn arbitrary_inputs_never_panic_and_apply_once(ops in proptest::collection::vec(op(), 0..200), trial in any::<bool>()) {
        let mut p = plan(2, &[("random_page_cost", None), ("shared_buffers", None)]);
        p.trial = trial;
        p.risk_threshold = 0.3;
        let mut applies = BTreeMap::new();
        let mut ids = std::collections::BTreeSet::new();
        run_ops(p, &ops, |e, out| {
            for a in &out.actions {
                assert!(ids.insert(a.id), "id {} dispatched twice", a.id);
                if a.kind == ActionKind::Apply {
                    *applies.entry(a.target).or_insert(0) += 1;
                    assert_eq!(applies[&a.target], 1, "apply twice on target {}", a.target);
                }
            }
            for ev in &out.events {
                if ev.name == "traced" {
                    let risk: bellwether_config::risk::Risk = serde_json::from_value(ev.figures["risk"].clone()).unwrap();
                    assert!(risk.residual().abs() < 1e-9, "{risk:?}");
                }
            }
            if e.phase.is_final() {
                assert!(e.pending().is_empty());
            }
            let _ = e.report();
        });
    }

    /// With no data after the apply (no samples, or samples without the watched metrics),
    /// the engine never reverts and never promotes.
    #[test]
    fn no_data_never_reverts_or_promotes(ops in proptest::collection::vec(
        prop_oneof![
            (0u16..5000).prop_map(Op::Tick),
            (0u8..1, -900i16..900, 3u8..5).prop_map(|(target, dt, kind)| Op::Sample { target, dt, kind }),
            (0u8..1, 0u8..1, 0u8..1).prop_map(|(pick, outcome, output)| Op::Done { pick, outcome, output }),
        ], 0..300)) {
        let mut p = plan(1, &[("random_page_cost", None)]);
        p.risk_threshold = 0.01;
        p.trial = false;
        // Bring it to the bake with real samples first, then only no data.
        let mut r = Rig::new(p, Graph::default());
        r.done(ActionKind::Snapshot, json!(catalog()));
        r.samples(0, 12, &healthy());
        let rep = r.apply_report(&[]);
        r.done(ActionKind::Apply, rep);
        let mut now = r.now;
        for op in &ops {
            let input = match op {
                Op::Tick(dt) => { now += i64::from(*dt); Input::Tick }
                Op::Sample { dt, kind, .. } => {
                    now += 1000;
                    Input::Sample { target: 0, at_ms: now + i64::from(*dt), metrics: sample_of(*kind) }
                }
                _ => Input::Tick,
            };
            let out = r.e.step(input, now);
            for ev in &out.events {
                prop_assert!(!matches!(ev.name.as_str(), "promoted" | "traced" | "anomaly" | "reverted"), "{ev:?}");
            }
            prop_assert!(out.actions.is_empty());
            prop_assert_eq!(r.e.stages()[0], Stage::Bake);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// From the bake on (so anomalies, traces and reverts happen), arbitrary inputs: no
    /// panic, no second apply or revert of a target, traced risks add up, and every revert
    /// follows a traced decision to revert or an operator's command.
    #[test]
    fn from_the_bake_arbitrary_inputs_keep_the_invariants(ops in proptest::collection::vec(op(), 0..150)) {
        let mut p = plan(2, &[("random_page_cost", None)]);
        p.risk_threshold = 0.2;
        let mut r = Rig::new(p, Graph::default());
        r.bring_to_bake(0, 2);
        let mut now = r.now;
        let mut reverts = BTreeMap::new();
        let mut revert_allowed = false;
        for op in &ops {
            let input = match op {
                Op::Tick(dt) => { now += i64::from(*dt); Input::Tick }
                Op::Sample { target, dt, kind } => {
                    now += 1000;
                    Input::Sample { target: usize::from(*target), at_ms: now + i64::from(*dt), metrics: sample_of(*kind) }
                }
                Op::Done { pick, outcome, output } => {
                    let pending = r.e.pending();
                    if pending.is_empty() { continue; }
                    let a = &pending[usize::from(*pick) % pending.len()];
                    Input::Done { action_id: a.id, outcome: outcome_of(*outcome), output: output_of(a.kind, *output, now) }
                }
                Op::Unknown(id) => Input::Done { action_id: *id | (1 << 40), outcome: ActionOutcome::Ok, output: None },
                Op::Abort => Input::Command(Command::Abort { reason: "p".into() }),
                Op::Revert => { revert_allowed = true; Input::Command(Command::Revert { reason: "p".into() }) }
            };
            let out = r.e.step(input, now);
            for ev in &out.events {
                if ev.name == "traced" {
                    let risk: bellwether_config::risk::Risk = serde_json::from_value(ev.figures["risk"].clone()).unwrap();
                    prop_assert!(risk.residual().abs() < 1e-9);
                    let sum: f64 = risk.base + risk.factors.iter().map(|f| f.log_odds).sum::<f64>();
                    prop_assert!(((1.0 / (1.0 + (-sum).exp())) - risk.score).abs() < 1e-9);
                    if ev.figures["decision"] == "revert" { revert_allowed = true; }
                }
            }
            for a in &out.actions {
                prop_assert!(a.kind != ActionKind::Apply || a.target != 0, "second apply on the canary");
                if a.kind == ActionKind::RevertSnapshot {
                    prop_assert!(revert_allowed, "a revert without a traced decision or command");
                    *reverts.entry(a.target).or_insert(0) += 1;
                    prop_assert_eq!(reverts[&a.target], 1);
                }
            }
        }
    }
}

fn with_control(mut m: BTreeMap<String, f64>, ref_ms: f64) -> BTreeMap<String, f64> {
    m.insert(
        bellwether_config::metrics::REF_LATENCY_MS.to_string(),
        ref_ms,
    );
    m
}

fn decisions(r: &Rig) -> Vec<String> {
    r.events
        .iter()
        .filter(|e| e.name == "traced")
        .map(|e| e.figures["decision"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// One metric out of its band for its `for` is not reverted on that reading alone: the next
/// sample (a new interval) is its second reading. A breach that does not outlast it is kept
/// (`unconfirmed`) and the change is promoted; one that does is reverted on it.
#[test]
fn a_single_metric_breach_waits_for_its_second_reading() {
    let mut p = plan(1, &[("random_page_cost", None)]);
    p.risk_threshold = 0.01;
    let mut r = Rig::new(p.clone(), Graph::default());
    r.bring_to_bake(0, 1);
    // tps alone at half its baseline: out of its band for 4 s after five samples.
    r.samples(0, 5, &metrics(500.0, 5.0));
    assert_eq!(decisions(&r), ["confirm"], "{:?}", r.names());
    assert_eq!(r.e.stages()[0], Stage::Bake);
    let traced = r.events.iter().find(|e| e.name == "traced").unwrap();
    assert!(
        traced.reason.contains("second reading"),
        "{}",
        traced.reason
    );
    // The second reading is back in the band: kept.
    r.samples(0, 1, &healthy());
    assert_eq!(r.count("unconfirmed"), 1, "{:?}", r.names());
    assert_eq!(r.count("reverted"), 0);
    assert_eq!(r.count("revert_snapshot"), 0);
    r.samples(0, 25, &healthy());
    assert_eq!(r.e.phase, Phase::Completed, "{:?}", r.names());

    // The same breach that outlasts its second reading is reverted on it.
    let mut r = Rig::new(p, Graph::default());
    r.bring_to_bake(0, 1);
    r.samples(0, 5, &metrics(500.0, 5.0));
    assert_eq!(decisions(&r), ["confirm"]);
    r.samples(0, 1, &metrics(500.0, 5.0));
    assert_eq!(decisions(&r), ["confirm", "revert"], "{:?}", r.names());
    assert_eq!(r.e.stages()[0], Stage::RevertSnapshot);
    assert_eq!(r.count("unconfirmed"), 0);
}

/// A statement latency of tens of microseconds doubles with the host's scheduler, not with a
/// setting: a relative breach counts only once the rise is also above the rule's floor (0.5 ms
/// by default for `latency_ms`), and `floor: 0` gives the purely relative band back.
#[test]
fn a_sub_millisecond_latency_rise_under_the_floor_is_not_a_breach() {
    let quick = metrics(1000.0, 0.05);
    let mut p = plan(1, &[("random_page_cost", None)]);
    p.risk_threshold = 0.01;

    // 0.05 → 0.11 ms (+120 %, +0.06 ms) for the whole bake: no anomaly, promoted.
    let mut r = Rig::new(p.clone(), Graph::default());
    r.bring_to_bake_from(0, 1, &quick);
    r.samples(0, 25, &metrics(1000.0, 0.11));
    assert_eq!(r.count("anomaly"), 0, "{:?}", r.names());
    assert_eq!(r.e.phase, Phase::Completed, "{:?}", r.names());

    // 0.05 → 0.8 ms (+0.75 ms, above the floor): a breach, traced and reverted.
    let mut r = Rig::new(p.clone(), Graph::default());
    r.bring_to_bake_from(0, 1, &quick);
    r.samples(0, 7, &metrics(1000.0, 0.8));
    assert!(r.count("anomaly") >= 1, "{:?}", r.names());
    assert_eq!(decisions(&r), ["confirm", "revert"], "{:?}", r.names());

    // The rule's own floor of 0: the same +0.06 ms is a breach again.
    let lat = bellwether_config::metrics::LATENCY_MS;
    let rule = p.watch.rules.iter_mut().find(|r| r.metric == lat).unwrap();
    rule.floor = Some(0.0);
    p.validate().unwrap();
    let mut r = Rig::new(p.clone(), Graph::default());
    r.bring_to_bake_from(0, 1, &quick);
    r.samples(0, 7, &metrics(1000.0, 0.11));
    assert!(r.count("anomaly") >= 1, "{:?}", r.names());

    // A floor that is not a number of 0 or more is refused, naming the rule.
    let rule = p.watch.rules.iter_mut().find(|r| r.metric == lat).unwrap();
    rule.floor = Some(-1.0);
    let e = p.validate().unwrap_err().to_string();
    assert!(e.contains("rules[1].floor"), "{e}");
}

/// Two metrics out of their bands corroborate each other: reverted on the first reading.
#[test]
fn a_breach_of_two_metrics_needs_no_second_reading() {
    let mut p = plan(1, &[("random_page_cost", None)]);
    p.risk_threshold = 0.01;
    let mut r = Rig::new(p, Graph::default());
    r.bring_to_bake(0, 1);
    r.samples(0, 5, &metrics(500.0, 10.0));
    assert_eq!(decisions(&r), ["revert"], "{:?}", r.names());
}

/// The control (`ref_latency_ms`, a reference query's round trip) rose with the metric: the
/// host was disturbed, and the `host` factor takes the risk below the threshold. When the
/// host is quiet again and the metric is still out of its band, it is traced again and
/// reverted: a disturbance of the host delays a harmful change's revert, it does not hide it.
#[test]
fn a_breach_the_control_shares_is_discounted_until_the_host_is_quiet() {
    let p = plan(1, &[("random_page_cost", None)]);
    assert_eq!(p.risk_threshold, plan::DEFAULT_RISK_THRESHOLD);
    let mut r = Rig::new(p, Graph::default());
    r.trial_ok();
    r.done(ActionKind::Snapshot, json!(catalog()));
    r.samples(0, 12, &with_control(healthy(), 0.2));
    r.now += 300;
    let report = r.apply_report(&[("random_page_cost", "4")]);
    r.done(ActionKind::Apply, report);
    // tps at a third of its baseline (severity 1): without the control it would be reverted
    // (−1.39 + 1.5 + 0.51 − 0.5 > 0); the reference query is ten times slower as well.
    r.samples(0, 5, &with_control(metrics(330.0, 5.0), 2.0));
    assert_eq!(decisions(&r), ["keep_watching"], "{:?}", r.names());
    let traced = r.events.iter().find(|e| e.name == "traced").unwrap();
    let risk: bellwether_config::risk::Risk =
        serde_json::from_value(traced.figures["risk"].clone()).unwrap();
    let host = risk.factors.iter().find(|f| f.name == "host").unwrap();
    assert!(host.log_odds < -2.0, "{host:?}");
    assert!(risk.residual().abs() < 1e-9);
    assert_eq!(traced.figures["control"]["baseline"], 0.2);
    // The host is quiet again; the throughput is not.
    r.samples(0, 6, &with_control(metrics(330.0, 5.0), 0.2));
    let d = decisions(&r);
    assert_eq!(d.last().map(String::as_str), Some("revert"), "{d:?}");
    assert_eq!(r.e.stages()[0], Stage::RevertSnapshot);
}

/// The same anomaly with a control that stayed within its margin is reverted as before (after
/// its second reading): the control discounts only what the host shares.
#[test]
fn a_quiet_control_takes_nothing_away() {
    let mut r = Rig::new(plan(1, &[("random_page_cost", None)]), Graph::default());
    r.trial_ok();
    r.done(ActionKind::Snapshot, json!(catalog()));
    r.samples(0, 12, &with_control(healthy(), 0.2));
    r.now += 300;
    let report = r.apply_report(&[("random_page_cost", "4")]);
    r.done(ActionKind::Apply, report);
    r.samples(0, 6, &with_control(metrics(330.0, 5.0), 0.25));
    assert_eq!(decisions(&r), ["confirm", "revert"], "{:?}", r.names());
    let traced = r.events.iter().rfind(|e| e.name == "traced").unwrap();
    let risk: bellwether_config::risk::Risk =
        serde_json::from_value(traced.figures["risk"].clone()).unwrap();
    assert_eq!(
        risk.factors
            .iter()
            .find(|f| f.name == "host")
            .unwrap()
            .log_odds,
        0.0
    );
}

/// After the revert, a breach while the control says the host is disturbed neither ends the
/// run of in-band samples nor adds to it; the same breach on a quiet host ends it.
#[test]
fn a_disturbed_host_does_not_restart_the_confirm_window() {
    let run = |disturbed_ref_ms: f64| -> (Rig, i64) {
        let mut p = plan(1, &[("random_page_cost", None)]);
        p.risk_threshold = 0.01;
        let mut r = Rig::new(p, Graph::default());
        r.trial_ok();
        r.done(ActionKind::Snapshot, json!(catalog()));
        r.samples(0, 12, &with_control(healthy(), 0.2));
        r.now += 300;
        let report = r.apply_report(&[("random_page_cost", "40")]);
        r.done(ActionKind::Apply, report);
        r.samples(0, 5, &with_control(metrics(300.0, 17.0), 0.2));
        r.done(ActionKind::RevertSnapshot, json!(catalog()));
        r.now += 300;
        let report = r.apply_report(&[("random_page_cost", "4")]);
        r.done(ActionKind::Revert, report);
        let reverted = r.now;
        // One in-band sample, an 8-s slump of throughput (a breach from its fifth second),
        // then in band again.
        r.samples(0, 1, &with_control(healthy(), 0.2));
        r.samples(0, 8, &with_control(metrics(300.0, 5.0), disturbed_ref_ms));
        assert_eq!(r.e.stages()[0], Stage::Confirm, "{:?}", r.names());
        for _ in 0..10 {
            if r.e.stages()[0] == Stage::Recovered {
                break;
            }
            r.samples(0, 1, &with_control(healthy(), 0.2));
        }
        assert_eq!(r.e.stages()[0], Stage::Recovered, "{:?}", r.names());
        let at = r.e.report()["targets"][0]["recovered_at_ms"]
            .as_i64()
            .unwrap();
        (r, at - reverted)
    };
    let (host, host_after) = run(2.0);
    let (quiet, quiet_after) = run(0.2);
    let skipped = |r: &Rig| {
        r.events
            .iter()
            .find(|e| e.name == "recovered")
            .unwrap()
            .figures["host_disturbed_samples"]
            .as_u64()
            .unwrap()
    };
    assert!(skipped(&host) >= 1, "{:?}", host.events.last());
    assert_eq!(skipped(&quiet), 0);
    // On the quiet host the slump's breach restarted the window: recovered later.
    assert!(host_after < quiet_after, "{host_after} vs {quiet_after}");
}

// ---- the contemporaneous control (`plan.controls`) ------------------------------------------

fn plan_with_control() -> ConfigPlan {
    let mut p = plan(1, &[("random_page_cost", None)]);
    p.controls = vec![target("peer0")];
    p
}

impl Rig {
    /// One sample per second for `secs` seconds on target 0 and, when given, control 0 at
    /// the same times.
    fn both(
        &mut self,
        secs: usize,
        treated: &BTreeMap<String, f64>,
        control: Option<&BTreeMap<String, f64>>,
    ) {
        for _ in 0..secs {
            self.now += 1000;
            self.step_persisted(Input::Sample {
                target: 0,
                at_ms: self.now,
                metrics: treated.clone(),
            });
            if let Some(c) = control {
                self.step_persisted(Input::ControlSample {
                    control: 0,
                    at_ms: self.now,
                    metrics: c.clone(),
                });
            }
        }
    }

    /// Trial, snapshot, a 12-s baseline on the target (and the control when `control`), apply.
    fn apply_with_control(&mut self, control: bool) {
        self.trial_ok();
        self.done(ActionKind::Snapshot, json!(catalog()));
        self.both(12, &healthy(), control.then(healthy).as_ref());
        self.now += 300;
        let report = self.apply_report(&[("random_page_cost", "4")]);
        self.done(ActionKind::Apply, report);
        assert_eq!(self.e.stages()[0], Stage::Bake);
    }

    fn last_traced(&self) -> &Event {
        self.events.iter().rfind(|e| e.name == "traced").unwrap()
    }
}

fn peer_factor(e: &Event) -> Option<f64> {
    let risk: bellwether_config::risk::Risk =
        serde_json::from_value(e.figures["risk"].clone()).unwrap();
    assert!(risk.residual().abs() < 1e-9, "{risk:?}");
    risk.factors
        .iter()
        .find(|f| f.name == "peer")
        .map(|f| f.log_odds)
}

/// A drop of throughput that the untouched peer shows over the same seconds is not blamed on
/// the change (decision `explained`, the `peer` factor at its cap), and the change is kept.
/// The same samples without a control are reverted, as before controls existed.
#[test]
fn a_breach_the_peer_shows_at_the_same_time_is_not_the_change() {
    let mut r = Rig::new(plan_with_control(), Graph::default());
    r.apply_with_control(true);
    // Both at a third of their baseline for 5 s (a disturbance of the machine).
    r.both(5, &metrics(330.0, 5.0), Some(&metrics(340.0, 5.0)));
    assert_eq!(decisions(&r), ["explained"], "{:?}", r.names());
    let traced = r.last_traced();
    let peer = &traced.figures["peer"]["metrics"][0];
    assert_eq!(peer["metric"], "tps");
    assert_eq!(peer["explained"], true);
    let residual = peer["residual"].as_f64().unwrap();
    assert!((residual - 330.0 / 340.0).abs() < 1e-9, "{peer}");
    assert!(
        (peer_factor(traced).unwrap() + bellwether_config::risk::ONSET_CAP).abs() < 1e-9,
        "{traced:?}"
    );
    assert!(traced.reason.contains("peer -3.00"), "{}", traced.reason);
    // Still a third for two more seconds on both: nothing new to trace, no revert.
    r.both(2, &metrics(330.0, 5.0), Some(&metrics(340.0, 5.0)));
    assert_eq!(decisions(&r), ["explained"]);
    r.both(25, &healthy(), Some(&healthy()));
    assert_eq!(r.e.phase, Phase::Completed, "{:?}", r.names());
    assert_eq!(r.count("reverted"), 0);

    // Without a control: the same treated samples are reverted after their second reading.
    let mut r = Rig::new(plan(1, &[("random_page_cost", None)]), Graph::default());
    r.apply_with_control(false);
    r.both(6, &metrics(330.0, 5.0), None);
    assert_eq!(decisions(&r), ["confirm", "revert"], "{:?}", r.names());
    assert_eq!(peer_factor(r.last_traced()), None);
    assert_eq!(r.last_traced().figures["peer"], Value::Null);
}

/// A stall both show (a lock on their workload) leaves each instance only its background, a
/// few percent of its baseline that differs between them: 4 % on the treated, 7 % on the
/// control. Their quotient (0.57×) is noise; what the change could have taken is their
/// difference, 3 % of the baseline (`residual_absolute` 0.97×), so the breach is explained.
/// Over a real pair of clusters this is `bellwether-pg`'s `tests/control.rs`.
#[test]
fn a_stall_both_show_near_zero_is_judged_by_the_difference_not_the_quotient() {
    let mut r = Rig::new(plan_with_control(), Graph::default());
    r.apply_with_control(true);
    let (t, c) = (0.04 * 1000.0, 0.07 * 1000.0);
    r.both(5, &metrics(t, 5.0), Some(&metrics(c, 5.0)));
    assert_eq!(decisions(&r), ["explained"], "{:?}", r.names());
    let peer = &r.last_traced().figures["peer"]["metrics"][0];
    assert_eq!(peer["explained"], true, "{peer}");
    assert!(
        (peer["residual"].as_f64().unwrap() - t / c).abs() < 1e-9,
        "{peer}"
    );
    let a = peer["residual_absolute"].as_f64().unwrap();
    assert!((a - (1.0 + (t - c) / 1000.0)).abs() < 1e-9, "{peer}");
    assert!(
        peer["why"].as_str().unwrap().contains("1 + treated"),
        "{peer}"
    );
    // The treated stalled, the control kept 30 % of its throughput: what is left for the
    // change is 0.70× by the difference (0 by the quotient), out of the band either way.
    let mut r = Rig::new(plan_with_control(), Graph::default());
    r.apply_with_control(true);
    r.both(6, &metrics(0.0, 5.0), Some(&metrics(300.0, 5.0)));
    assert_eq!(decisions(&r), ["confirm", "revert"], "{:?}", r.names());
}

/// A harmful drop on the treated instance alone (the peer steady) is reverted as without a
/// control: the `peer` factor is 0 and says why.
#[test]
fn a_drop_only_on_the_treated_instance_is_still_reverted() {
    let mut r = Rig::new(plan_with_control(), Graph::default());
    r.apply_with_control(true);
    r.both(6, &metrics(330.0, 5.0), Some(&metrics(990.0, 5.0)));
    assert_eq!(decisions(&r), ["confirm", "revert"], "{:?}", r.names());
    let traced = r.last_traced();
    assert_eq!(peer_factor(traced), Some(0.0));
    let peer = &traced.figures["peer"]["metrics"][0];
    assert_eq!(peer["explained"], false);
    assert!(peer["why"].as_str().unwrap().contains("alone"), "{peer}");
    assert_eq!(r.e.stages()[0], Stage::RevertSnapshot);

    // Two metrics breached, only one of them on the peer: the other (latency 2.4×) is the
    // change's. The factor takes away what the explained metric added (the breadth of a
    // second metric, +1), and what is left is reverted.
    let mut r = Rig::new(plan_with_control(), Graph::default());
    r.apply_with_control(true);
    r.both(5, &metrics(330.0, 12.0), Some(&metrics(340.0, 5.0)));
    assert_eq!(decisions(&r), ["revert"], "{:?}", r.names());
    let f = peer_factor(r.last_traced()).unwrap();
    assert!(
        (f + bellwether_config::risk::BREADTH_PER_METRIC).abs() < 1e-9,
        "{f}"
    );

    // The peer dropped too, but far less: what is left for the change is still out of its
    // band (0.33 / 0.70 = 0.47×), so nothing is taken away.
    let mut r = Rig::new(plan_with_control(), Graph::default());
    r.apply_with_control(true);
    r.both(6, &metrics(330.0, 5.0), Some(&metrics(700.0, 5.0)));
    assert_eq!(decisions(&r), ["confirm", "revert"], "{:?}", r.names());
    let peer = &r.last_traced().figures["peer"]["metrics"][0];
    assert_eq!(peer["explained"], false);
    assert!(
        peer["why"]
            .as_str()
            .unwrap()
            .contains("still out of the band"),
        "{peer}"
    );
}

/// A control without the data to compare takes nothing away: no baseline of its own (its
/// samples began after the apply), down over the breach's window, or without the metric.
#[test]
fn a_control_without_data_takes_nothing_away() {
    let cases: Vec<(&str, BTreeMap<String, f64>, bool)> = vec![
        ("no baseline", metrics(340.0, 5.0), false),
        ("down", down(), true),
        (
            "no tps",
            BTreeMap::from([("up".to_string(), 1.0), ("latency_ms".to_string(), 5.0)]),
            true,
        ),
    ];
    for (name, during, with_baseline) in cases {
        let mut r = Rig::new(plan_with_control(), Graph::default());
        r.apply_with_control(with_baseline);
        r.both(6, &metrics(330.0, 5.0), Some(&during));
        assert_eq!(
            decisions(&r),
            ["confirm", "revert"],
            "{name}: {:?}",
            r.names()
        );
        let traced = r.last_traced();
        assert_eq!(peer_factor(traced), Some(0.0), "{name}");
        let peer = &traced.figures["peer"]["metrics"][0];
        assert_eq!(peer["control_ratio"], Value::Null, "{name}: {peer}");
        assert_eq!(peer["controls_with_data"], 0, "{name}");
    }
    // No control samples at all: the same.
    let mut r = Rig::new(plan_with_control(), Graph::default());
    r.apply_with_control(false);
    r.both(6, &metrics(330.0, 5.0), None);
    assert_eq!(decisions(&r), ["confirm", "revert"], "{:?}", r.names());
}

/// A disturbance of the peers delays a harmful change's revert, it does not hide it: when the
/// peer is back in its band and the treated is not, the breach is traced again and reverted.
#[test]
fn a_peer_disturbance_that_ends_while_the_treated_stays_down_is_reverted() {
    let mut r = Rig::new(plan_with_control(), Graph::default());
    r.apply_with_control(true);
    r.both(5, &metrics(330.0, 5.0), Some(&metrics(330.0, 5.0)));
    assert_eq!(decisions(&r), ["explained"]);
    r.both(8, &metrics(330.0, 5.0), Some(&healthy()));
    assert_eq!(
        decisions(&r),
        ["explained", "confirm", "revert"],
        "{:?}",
        r.names()
    );
    assert_eq!(r.e.stages()[0], Stage::RevertSnapshot);
}

/// A stall both show ends a sample or two apart: the control's lock is released first. Over
/// the `for` window the control's mean is then back near its band while the treated's is
/// not (0.14× against 0.63× in `bellwether-pg`'s `tests/control.rs` on a loaded CI
/// machine). What is left for the change has not lasted `for` by itself, so the reading is
/// explained; once the treated is back too, the change is kept. A treated instance that
/// stays down for `for` after the control's recovery is still reverted (the test above).
#[test]
fn a_shared_stall_that_ends_a_little_later_on_the_treated_is_not_the_change() {
    let run = |lag: usize| {
        let mut r = Rig::new(plan_with_control(), Graph::default());
        r.apply_with_control(true);
        let (t, c) = (metrics(40.0, 5.0), metrics(70.0, 5.0));
        r.both(6, &t, Some(&c));
        assert_eq!(decisions(&r), ["explained"], "{:?}", r.names());
        // The control recovers `lag` samples before the treated does.
        r.both(lag, &t, Some(&healthy()));
        r.both(25, &healthy(), Some(&healthy()));
        r
    };
    // Three samples (less than the rule's 4-s `for`): still the shared stall. Judged on the
    // window's means alone, the third reading would be reverted.
    let r = run(3);
    let reasons: Vec<&String> = r
        .events
        .iter()
        .filter(|e| e.name == "traced")
        .map(|e| &e.reason)
        .collect();
    assert_eq!(decisions(&r), ["explained"], "{reasons:#?}");
    assert_eq!(r.count("reverted"), 0);
    assert_eq!(r.e.phase, Phase::Completed, "{:?}", r.names());
    // Down for longer than `for` after the control is back: the change's own breach, reverted.
    let r = run(7);
    let d = decisions(&r);
    assert_eq!(d.last().map(String::as_str), Some("revert"), "{d:?}");
    let last = r.last_traced();
    let peer = &last.figures["peer"]["metrics"][0];
    assert_eq!(peer["explained"], false, "{peer}");
    assert!(peer.get("shared_until_ms").is_none(), "{peer}");
}

/// The control is only ever observed: every action goes to a target, whatever the samples;
/// a control sample with an index the plan does not have is ignored; and a state saved
/// before controls existed still loads and runs.
#[test]
fn controls_are_never_acted_on_and_old_state_loads() {
    let mut p = plan(2, &[("random_page_cost", None)]);
    p.controls = vec![target("peer0"), target("peer1")];
    let mut r = Rig::new(p, Graph::default());
    r.trial_ok();
    r.trial_ok();
    r.done(ActionKind::Snapshot, json!(catalog()));
    for _ in 0..12 {
        r.now += 1000;
        r.step(Input::Sample {
            target: 0,
            at_ms: r.now,
            metrics: healthy(),
        });
        for c in 0..3 {
            r.step(Input::ControlSample {
                control: c,
                at_ms: r.now,
                metrics: healthy(),
            });
        }
    }
    r.now += 300;
    let report = r.apply_report(&[("random_page_cost", "4")]);
    r.done(ActionKind::Apply, report);
    r.both(6, &metrics(330.0, 5.0), Some(&healthy()));
    assert_eq!(decisions(&r), ["confirm", "revert"], "{:?}", r.names());
    assert!(!r.actions.is_empty());
    for a in &r.actions {
        assert!(a.host == "db0" || a.host == "db1", "{a:?}");
    }
    // A state written before controls existed: no `controls` in the plan or the state.
    let mut v = serde_json::to_value(&r.e).unwrap();
    v["plan"].as_object_mut().unwrap().remove("controls");
    v["state"].as_object_mut().unwrap().remove("controls");
    for t in v["state"]["targets"].as_array_mut().unwrap() {
        t.as_object_mut().unwrap().remove("traced_peer");
    }
    let mut e: ConfigChangeEngine = serde_json::from_value(v).unwrap();
    assert!(e.plan.controls.is_empty());
    let out = e.step(
        Input::ControlSample {
            control: 0,
            at_ms: r.now + 1000,
            metrics: healthy(),
        },
        r.now + 1000,
    );
    assert!(out.actions.is_empty());
    assert_eq!(e.stages()[0], Stage::RevertSnapshot);
}
