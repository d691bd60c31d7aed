//! Edges from the change history.

use bellwether_config::cochange::{co_change_edges, metric_impact_edges, ChangeOutcome};
use bellwether_config::graph::{EdgeKind, EvidenceSource};
use bellwether_config::snapshot::{ChangeSource, ConfigChange};

fn change(key: &str, author: &str, t: i64, source: ChangeSource) -> ConfigChange {
    ConfigChange {
        host: "db1".into(),
        source_name: "main".into(),
        key: key.into(),
        old: None,
        new: Some("1".into()),
        author: author.into(),
        time_ms: t,
        description: String::new(),
        source,
    }
}

#[test]
fn settings_changed_together_get_influence_edges() {
    let mut h = Vec::new();
    // work_mem and hash_mem_multiplier together three times; shared_buffers alone twice;
    // a different author's change within the window is another set.
    for (i, t) in [0i64, 100_000, 200_000].iter().enumerate() {
        h.push(change("work_mem", "ann", *t, ChangeSource::Apply));
        h.push(change(
            "hash_mem_multiplier",
            "ann",
            t + 1_000,
            ChangeSource::Apply,
        ));
        if i < 2 {
            h.push(change(
                "shared_buffers",
                "bob",
                t + 500,
                ChangeSource::Apply,
            ));
        }
    }
    // Reverts do not count.
    h.push(change("work_mem", "ann", 300_000, ChangeSource::Revert));
    h.push(change(
        "shared_buffers",
        "ann",
        300_100,
        ChangeSource::Revert,
    ));
    h.push(change("work_mem", "ann", 400_000, ChangeSource::Apply));
    let edges = co_change_edges(&h, 10_000);
    assert_eq!(edges.len(), 2, "{edges:?}");
    let wm = edges.iter().find(|e| e.from == "work_mem").unwrap();
    assert_eq!(wm.to, "hash_mem_multiplier");
    assert_eq!(wm.kind, EdgeKind::Influences);
    assert_eq!(wm.evidence[0].source, EvidenceSource::CoChange);
    // n_ab = 3, n_work_mem = 4: 3/4 × 3/5.
    assert!((wm.confidence - 0.45).abs() < 1e-12, "{}", wm.confidence);
    assert!(
        wm.evidence[0].detail.contains("3 of 6 change sets"),
        "{}",
        wm.evidence[0].detail
    );
    let hm = edges
        .iter()
        .find(|e| e.from == "hash_mem_multiplier")
        .unwrap();
    assert!((hm.confidence - 0.6).abs() < 1e-12);
    // A window too small to join them: no edges.
    assert!(co_change_edges(&h, 10).is_empty());
    assert!(co_change_edges(&[], 1000).is_empty());
}

#[test]
fn consistent_metric_shifts_give_metric_edges() {
    let o = |keys: &[&str], shift: f64, reverted: bool| ChangeOutcome {
        keys: keys.iter().map(|k| k.to_string()).collect(),
        metric_shift: vec![("latency_ms".to_string(), shift), ("tps".to_string(), 0.01)],
        reverted,
        time_ms: 0,
    };
    let outcomes = vec![
        o(&["work_mem"], 0.4, true),
        o(&["work_mem"], 0.3, true),
        o(&["work_mem"], 0.5, false),
        o(&["work_mem"], -0.1, false),
        o(&["random_page_cost"], 0.3, false),
        o(&["random_page_cost"], f64::NAN, false),
    ];
    let edges = metric_impact_edges(&outcomes);
    assert_eq!(edges.len(), 1, "{edges:?}");
    let e = &edges[0];
    assert_eq!(
        (e.from.as_str(), e.to.as_str()),
        ("work_mem", "metric:latency_ms")
    );
    // 3 of 4 the same way, × 4/6.
    assert!((e.confidence - 0.5).abs() < 1e-12, "{}", e.confidence);
    assert!(
        e.evidence[0].detail.contains("+27.5 %"),
        "{}",
        e.evidence[0].detail
    );
    assert!(e.evidence[0].detail.contains("2 reverted"));
}
