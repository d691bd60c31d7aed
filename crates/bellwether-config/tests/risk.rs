//! Risk scores: the factors add up to the log-odds, each factor moves the way it should.

use bellwether_config::cochange::ChangeOutcome;
use bellwether_config::graph::{EdgeKind, ImpactPath};
use bellwether_config::perf::PerfPrediction;
use bellwether_config::risk::{
    anomaly_risk, change_risk, AnomalyEvidence, Breach, ChangeEvidence, Risk, Timing, NO_PATH,
};
use bellwether_config::setting::ApplyKind;
use proptest::prelude::*;

fn path(to: &str, confidence: f64) -> ImpactPath {
    ImpactPath {
        setting: to.to_string(),
        path: vec!["work_mem".to_string(), to.to_string()],
        kinds: vec![EdgeKind::Influences],
        confidence,
    }
}

fn outcome(keys: &[&str], reverted: bool) -> ChangeOutcome {
    ChangeOutcome {
        keys: keys.iter().map(|k| k.to_string()).collect(),
        metric_shift: vec![],
        reverted,
        time_ms: 0,
    }
}

fn factor(r: &Risk, name: &str) -> f64 {
    r.factors.iter().find(|f| f.name == name).unwrap().log_odds
}

#[test]
fn anomaly_risk_factors_move_the_right_way() {
    let changed = vec!["work_mem".to_string()];
    let metric = [path("metric:latency_ms", 0.8)];
    let base = AnomalyEvidence {
        severity: 0.9,
        changed: &changed,
        impacted: &metric,
        history: &[],
        breaches: &[],
        timing: None,
        control: None,
    };
    let r = anomaly_risk(&base);
    assert!(r.residual().abs() < 1e-9);
    assert!((factor(&r, "severity") - 1.6).abs() < 1e-12);
    assert!((factor(&r, "edge_confidence") - 1.6).abs() < 1e-12);
    assert_eq!(factor(&r, "history"), 0.0, "no history: the prior applies");
    // No path at all lowers the risk; a path only to settings is in between.
    let none = anomaly_risk(&AnomalyEvidence {
        impacted: &[],
        ..base.clone()
    });
    let settings = [path("hash_mem_multiplier", 0.8)];
    let some = anomaly_risk(&AnomalyEvidence {
        impacted: &settings,
        ..base.clone()
    });
    assert!(none.score < some.score && some.score < r.score);
    assert_eq!(factor(&none, "edge_confidence"), NO_PATH);
    // A history of reverts of the same key raises it; of other keys leaves it.
    let bad_history: Vec<_> = (0..6).map(|_| outcome(&["work_mem"], true)).collect();
    let other_history: Vec<_> = (0..6).map(|_| outcome(&["shared_buffers"], true)).collect();
    let good_history: Vec<_> = (0..6).map(|_| outcome(&["work_mem", "x"], false)).collect();
    let hb = anomaly_risk(&AnomalyEvidence {
        history: &bad_history,
        ..base.clone()
    });
    let ho = anomaly_risk(&AnomalyEvidence {
        history: &other_history,
        ..base.clone()
    });
    let hg = anomaly_risk(&AnomalyEvidence {
        history: &good_history,
        ..base.clone()
    });
    assert!(hb.score > r.score && hg.score < r.score);
    assert_eq!(ho.score, r.score);
    // (1 + 6) / (5 + 6) = 7/11 against the prior 0.2.
    let expect = (7.0f64 / 4.0).ln() - (0.25f64).ln();
    assert!((factor(&hb, "history") - expect).abs() < 1e-12);
    assert!(hb.factors[1].detail.contains("6 of 6"));
    // Severity: low severity lowers the risk; NaN counts as 0.5.
    let low = anomaly_risk(&AnomalyEvidence {
        severity: 0.1,
        ..base.clone()
    });
    assert!(low.score < r.score);
    let nan = anomaly_risk(&AnomalyEvidence {
        severity: f64::NAN,
        ..base
    });
    assert_eq!(factor(&nan, "severity"), 0.0);
}

#[test]
fn change_risk_weighs_context_fanout_and_predicted_drop() {
    let changed = vec!["shared_buffers".to_string()];
    let ev = ChangeEvidence {
        changed: &changed,
        apply: Some(ApplyKind::Restart),
        impacted: &[],
        history: &[],
        performance: None,
    };
    let restart = change_risk(&ev);
    let session = change_risk(&ChangeEvidence {
        apply: Some(ApplyKind::Session),
        ..ev.clone()
    });
    assert!(restart.score > session.score);
    let many: Vec<_> = (0..50).map(|i| path(&format!("s{i}"), 0.9)).collect();
    let wide = change_risk(&ChangeEvidence {
        impacted: &many,
        ..ev.clone()
    });
    assert!(wide.score > restart.score);
    assert!(factor(&wide, "fanout") <= 1.5);
    let drop = PerfPrediction {
        tps: 50.0,
        latency_ms: 20.0,
        tps_change: -0.5,
        latency_change: 1.0,
        tps_rel_error: 0.1,
        latency_rel_error: 0.1,
    };
    let slow = change_risk(&ChangeEvidence {
        performance: Some(&drop),
        ..ev.clone()
    });
    assert!((factor(&slow, "performance") - 3.0).abs() < 1e-12);
    let within = PerfPrediction {
        tps_change: -0.05,
        latency_change: 0.05,
        ..drop
    };
    let ok = change_risk(&ChangeEvidence {
        performance: Some(&within),
        ..ev
    });
    assert_eq!(
        factor(&ok, "performance"),
        0.0,
        "a change within the model's error"
    );
    for r in [restart, session, wide, slow, ok] {
        assert!(r.residual().abs() < 1e-9);
    }
}

proptest! {
    #[test]
    fn factors_add_up_to_the_log_odds(
        severity in prop::num::f64::ANY,
        confs in prop::collection::vec(prop::num::f64::ANY, 0..6),
        metric in any::<bool>(),
        reverts in prop::collection::vec(any::<bool>(), 0..200),
        tps_change in -10.0f64..10.0,
        lat_change in -10.0f64..10.0,
        err in 0.0f64..2.0,
        own in prop::collection::vec(
            (prop::num::f64::ANY, any::<i64>(), prop::num::f64::ANY), 0..4),
        timing in prop::option::of((any::<i64>(), any::<i64>(), any::<i64>(),
            prop::option::of(any::<usize>()))),
    ) {
        let changed = vec!["k".to_string()];
        let impacted: Vec<_> = confs
            .iter()
            .enumerate()
            .map(|(i, c)| path(&if metric { format!("metric:m{i}") } else { format!("s{i}") }, *c))
            .collect();
        let history: Vec<_> = reverts.iter().map(|r| outcome(&["k"], *r)).collect();
        let breaches: Vec<_> = own
            .iter()
            .enumerate()
            .map(|(i, (s, f, w))| Breach { metric: format!("m{i}"), severity: *s, for_ms: *f, weight: *w })
            .collect();
        let timing = timing.map(|(since_apply_ms, bake_ms, resolution_ms, other)| Timing {
            since_apply_ms, bake_ms, resolution_ms, other_changes: other, restarted: since_apply_ms % 2 == 0, warmup_ms: 0,
        });
        let r = anomaly_risk(&AnomalyEvidence {
            severity, changed: &changed, impacted: &impacted, history: &history,
            breaches: &breaches, timing, control: None,
        });
        prop_assert!(r.score > 0.0 && r.score < 1.0);
        prop_assert!(r.residual().abs() < 1e-9, "residual {}", r.residual());
        let perf = PerfPrediction {
            tps: 1.0, latency_ms: 1.0, tps_change, latency_change: lat_change,
            tps_rel_error: err, latency_rel_error: err,
        };
        let c = change_risk(&ChangeEvidence {
            changed: &changed, apply: Some(ApplyKind::Reload), impacted: &impacted,
            history: &history, performance: Some(&perf),
        });
        prop_assert!(c.score > 0.0 && c.score < 1.0);
        prop_assert!(c.residual().abs() < 1e-9, "residual {}", c.residual());
    }
}

fn breach(metric: &str, severity: f64, for_ms: i64) -> Breach {
    Breach {
        metric: metric.to_string(),
        severity,
        for_ms,
        weight: 1.0,
    }
}

/// The default watch: a 20 s bake, breaches dated by a 4 s `for`, nothing else changed.
fn timing(since_apply_ms: i64) -> Timing {
    Timing {
        since_apply_ms,
        bake_ms: 20_000,
        resolution_ms: 4_000,
        other_changes: None,
        restarted: false,
        warmup_ms: 0,
    }
}

/// The decision at the default threshold, for a change with no history.
fn reverts(impacted: &[ImpactPath], breaches: &[Breach], t: Option<Timing>) -> (bool, Risk) {
    let changed = vec!["some_setting".to_string()];
    let r = anomaly_risk(&AnomalyEvidence {
        severity: 0.0,
        changed: &changed,
        impacted,
        history: &[],
        breaches,
        timing: t,
        control: None,
    });
    assert!(r.residual().abs() < 1e-9, "{r:?}");
    (r.score >= 0.5, r)
}

#[test]
fn a_severe_sustained_single_metric_anomaly_right_after_an_unlinked_change_reverts() {
    // tps at twice its band's distance (severity 1), out of its band since the first sample
    // after the apply: the graph knows nothing of the setting, and it still reverts.
    let b = [breach("tps", 1.0, 5_000)];
    let (revert, r) = reverts(&[], &b, Some(timing(6_000)));
    assert!(revert, "{r:?}");
    assert_eq!(factor(&r, "edge_confidence"), NO_PATH);
    assert!((factor(&r, "onset") + 0.6f64.ln()).abs() < 1e-12, "{r:?}");
    // After a restart the onset tells nothing: the restart disturbs every workload.
    let (_, rr) = reverts(
        &[],
        &b,
        Some(Timing {
            restarted: true,
            ..timing(6_000)
        }),
    );
    assert_eq!(factor(&rr, "onset"), 0.0);
    // The old model's reading of the same anomaly (combined severity 1/3, no link) was far
    // below the threshold; without timing the new one keeps that reading.
    let (old, _) = reverts(&[], &[], None);
    assert!(!old);
}

#[test]
fn a_mild_blip_does_not_revert() {
    // One metric just past its band's edge, even right after the apply and on a setting the
    // graph links to nothing.
    let b = [breach("latency_ms", 0.5, 4_000)];
    let (revert, r) = reverts(&[], &b, Some(timing(5_000)));
    assert!(!revert, "{r:?}");
    // The same blip late in the bake on a linked setting: a coincidence is as likely.
    let linked = [path("metric:latency_ms", 0.5)];
    let (revert, r) = reverts(&linked, &b, Some(timing(20_000)));
    assert!(!revert, "{r:?}");
}

#[test]
fn harmless_changes_keep_when_the_evidence_points_elsewhere() {
    let b = [breach("tps", 0.6, 4_000)];
    let linked = [path("metric:tps", 0.6)];
    // An anomaly that began 14 s into the bake, not at the apply.
    let (late, r) = reverts(&[], &b, Some(timing(18_000)));
    assert!(!late, "{r:?}");
    // Other changes on the instance share the coincidence.
    let busy = Timing {
        other_changes: Some(3),
        ..timing(5_000)
    };
    let (_, quiet) = reverts(&linked, &b, Some(timing(5_000)));
    let (_, shared) = reverts(&linked, &b, Some(busy));
    assert!(shared.score < quiet.score);
    assert!((factor(&shared, "other_changes") + 4f64.ln()).abs() < 1e-12);
    // Without timing, a single moderate breach on a linked setting stays below.
    let (unknown, r) = reverts(&linked, &b, None);
    assert!(!unknown, "{r:?}");
}

#[test]
fn each_new_factor_moves_the_right_way() {
    let one = [breach("tps", 0.75, 4_000)];
    let two = [breach("tps", 0.75, 4_000), breach("latency_ms", 0.6, 4_000)];
    let three = [
        breach("tps", 0.75, 4_000),
        breach("latency_ms", 0.6, 4_000),
        breach("errors_per_s", 0.5, 4_000),
    ];
    let t = Some(timing(10_000));
    let (_, r1) = reverts(&[], &one, t);
    let (_, r2) = reverts(&[], &two, t);
    let (_, r3) = reverts(&[], &three, t);
    assert!(r1.score < r2.score && r2.score < r3.score);
    assert_eq!(factor(&r3, "breadth"), 2.0);
    // Magnitude: the worst metric's own severity, from −0.5 at the edge to +1.5.
    assert!((factor(&r1, "magnitude") - 0.5).abs() < 1e-12);
    let (_, edge) = reverts(&[], &[breach("tps", 0.5, 4_000)], t);
    let (_, far) = reverts(&[], &[breach("tps", 1.0, 4_000)], t);
    assert!((factor(&edge, "magnitude") + 0.5).abs() < 1e-12);
    assert!((factor(&far, "magnitude") - 1.5).abs() < 1e-12);
    // Onset: the earlier the anomaly began after the apply, the higher; never below 0.
    let onset = |since, for_ms| {
        let (_, r) = reverts(&[], &[breach("tps", 0.75, for_ms)], Some(timing(since)));
        factor(&r, "onset")
    };
    assert!(onset(6_000, 6_000) > onset(12_000, 4_000));
    assert!(onset(12_000, 4_000) > onset(20_000, 4_000));
    assert_eq!(onset(20_000, 0), 0.0);
    assert_eq!(onset(60_000, 4_000), 0.0, "after the bake");
    assert!((onset(12_000, 4_000) + 0.7f64.ln()).abs() < 1e-12);
    // A breach that has lasted since the apply dates the onset at the apply.
    assert!((onset(16_000, 16_000) + 0.6f64.ln()).abs() < 1e-12);
    // A graph link raises it; a weight-0 metric counts for nothing.
    let linked = [path("metric:tps", 0.5)];
    let (_, rl) = reverts(&linked, &one, t);
    assert!(rl.score > r1.score);
    let ignored = [Breach {
        weight: 0.0,
        ..breach("errors_per_s", 1.0, 4_000)
    }];
    let (_, rw) = reverts(&[], &[one[0].clone(), ignored[0].clone()], t);
    assert_eq!(rw.score, r1.score);
}

#[test]
fn breaches_read_from_the_engines_reasons() {
    let v = serde_json::json!({"metric": "tps", "severity": 0.8, "for_ms": 5000, "weight": 2.0,
                               "text": "tps is -40% off"});
    assert_eq!(
        Breach::from_reason(&v),
        Some(Breach {
            metric: "tps".into(),
            severity: 0.8,
            for_ms: 5000,
            weight: 2.0
        })
    );
    let up = serde_json::json!({"metric": "up", "value": 0.0, "for_ms": 4000});
    assert_eq!(Breach::from_reason(&up).unwrap().severity, 1.0);
    assert_eq!(Breach::from_reason(&serde_json::json!({"value": 1})), None);
}

#[test]
fn onset_cap_is_ln_20() {
    assert!((bellwether_config::risk::ONSET_CAP - 20f64.ln()).abs() < 1e-15);
}
