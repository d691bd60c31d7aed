//! Risk scores: the factors add up to the log-odds, each factor moves the way it should.

use bellwether_config::cochange::ChangeOutcome;
use bellwether_config::graph::{EdgeKind, ImpactPath};
use bellwether_config::perf::PerfPrediction;
use bellwether_config::risk::{anomaly_risk, change_risk, AnomalyEvidence, ChangeEvidence, Risk};
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
    assert_eq!(factor(&none, "edge_confidence"), -1.0);
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
    ) {
        let changed = vec!["k".to_string()];
        let impacted: Vec<_> = confs
            .iter()
            .enumerate()
            .map(|(i, c)| path(&if metric { format!("metric:m{i}") } else { format!("s{i}") }, *c))
            .collect();
        let history: Vec<_> = reverts.iter().map(|r| outcome(&["k"], *r)).collect();
        let r = anomaly_risk(&AnomalyEvidence { severity, changed: &changed, impacted: &impacted, history: &history });
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
