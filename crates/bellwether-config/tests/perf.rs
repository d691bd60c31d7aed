//! The performance model: learns a known relation, reports its leave-one-out error, refuses
//! bad input, stays bounded on extrapolation.

use std::collections::BTreeMap;

use bellwether_config::perf::{PerfError, PerfModel, PerfObservation, MIN_OBSERVATIONS};
use proptest::prelude::*;

fn obs(work_mem: f64, rpc: f64, noise: f64) -> PerfObservation {
    // tps ∝ work_mem^0.3 × rpc^-0.5, latency its inverse: a relation on log scale.
    let tps = 1000.0 * work_mem.powf(0.3) * rpc.powf(-0.5) * (1.0 + noise);
    PerfObservation {
        values: BTreeMap::from([
            ("work_mem".to_string(), format!("{work_mem}")),
            ("random_page_cost".to_string(), format!("{rpc}")),
            ("max_connections".to_string(), "100".to_string()),
            ("synchronous_commit".to_string(), "on".to_string()),
        ]),
        tps,
        latency_ms: 10_000.0 / tps,
    }
}

fn map(work_mem: &str, rpc: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("work_mem".to_string(), work_mem.to_string()),
        ("random_page_cost".to_string(), rpc.to_string()),
    ])
}

#[test]
fn learns_a_log_linear_relation_with_a_small_error() {
    let mut data = Vec::new();
    let mut k = 0;
    for wm in [1024.0, 4096.0, 16384.0, 65536.0] {
        for rpc in [1.1, 2.0, 4.0] {
            k += 1;
            data.push(obs(wm, rpc, if k % 2 == 0 { 0.01 } else { -0.01 }));
        }
    }
    let m = PerfModel::train(&data).unwrap();
    assert_eq!(
        m.features,
        vec!["random_page_cost", "work_mem"],
        "only what varies"
    );
    assert_eq!(m.observations, 12);
    assert!(m.tps_rel_error < 0.1, "{}", m.tps_rel_error);
    assert!(m.latency_rel_error < 0.1, "{}", m.latency_rel_error);
    // More work_mem, more throughput; a higher random_page_cost, less.
    let p = m.predict(&map("4096", "2"), &map("16384", "2"));
    assert!(p.tps_change > 0.2 && p.latency_change < 0.0, "{p:?}");
    let p = m.predict(&map("4096", "1.1"), &map("4096", "4"));
    assert!(p.tps_change < -0.2, "{p:?}");
    // Far outside the data: bounded (one unit of log beyond the range seen).
    let p = m.predict(&map("4096", "2"), &map("1e300", "0.0001"));
    assert!(
        p.tps.is_finite() && p.tps_change.is_finite() && p.tps_change < 10.0,
        "{p:?}"
    );
    // Unknown or unreadable values fall back to the training mean.
    let p = m.predict(&map("4096", "2"), &map("4096", "banana"));
    assert!(p.tps_change.is_finite());
    // Serde round trip keeps the model.
    let back: PerfModel = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
    assert_eq!(
        back.predict(&map("1", "1"), &map("2", "2")),
        m.predict(&map("1", "1"), &map("2", "2"))
    );
}

#[test]
fn bad_input_is_refused_with_its_index() {
    let data: Vec<_> = (0..MIN_OBSERVATIONS - 1)
        .map(|i| obs(1024.0 * (i + 1) as f64, 2.0, 0.0))
        .collect();
    assert_eq!(
        PerfModel::train(&data),
        Err(PerfError::TooFew {
            needed: MIN_OBSERVATIONS,
            have: MIN_OBSERVATIONS - 1
        })
    );
    let mut data: Vec<_> = (0..8)
        .map(|i| obs(1024.0 * (i + 1) as f64, 2.0, 0.0))
        .collect();
    data[3].tps = f64::NAN;
    let err = PerfModel::train(&data).unwrap_err();
    assert!(matches!(err, PerfError::Bad { index: 3, .. }), "{err}");
    data[3].tps = 10.0;
    data[5].latency_ms = -1.0;
    assert!(matches!(
        PerfModel::train(&data),
        Err(PerfError::Bad { index: 5, .. })
    ));
}

#[test]
fn a_model_with_unreadable_parameters_predicts_no_change() {
    let data: Vec<_> = (0..8)
        .map(|i| obs(1024.0 * (i + 1) as f64, 2.0, 0.0))
        .collect();
    let mut m = PerfModel::train(&data).unwrap();
    m.params = serde_json::json!({"nonsense": true});
    assert!(m.try_predict(&map("1", "1"), &map("2", "2")).is_err());
    let p = m.predict(&map("1", "1"), &map("2", "2"));
    assert_eq!((p.tps_change, p.tps_rel_error), (0.0, 1.0));
}

proptest! {
    #[test]
    fn never_panics_and_predictions_stay_finite(
        rows in prop::collection::vec((0.0f64..1e9, -5.0f64..5.0, 1e-3f64..1e6, 1e-3f64..1e4), 0..30),
        probe in (prop::num::f64::ANY, "[a-z0-9.]{0,6}"),
    ) {
        let data: Vec<_> = rows.iter().map(|(a, b, t, l)| PerfObservation {
            values: BTreeMap::from([("a".to_string(), a.to_string()), ("b".to_string(), b.to_string())]),
            tps: *t,
            latency_ms: *l,
        }).collect();
        if let Ok(m) = PerfModel::train(&data) {
            prop_assert!(m.tps_rel_error.is_finite() && m.latency_rel_error.is_finite());
            let cur = BTreeMap::from([("a".to_string(), "1".to_string())]);
            let new = BTreeMap::from([("a".to_string(), probe.0.to_string()), ("b".to_string(), probe.1.clone())]);
            let p = m.predict(&cur, &new);
            prop_assert!(p.tps.is_finite() && p.latency_ms.is_finite());
            prop_assert!(p.tps_change.is_finite() && p.latency_change.is_finite());
        }
    }
}
