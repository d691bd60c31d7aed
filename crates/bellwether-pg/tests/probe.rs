//! Probing on a real scratch cluster: the settings of a real instance (a test cluster's
//! pg_settings), trial starts of real postgres.

use bellwether_config::graph::EdgeKind;
use bellwether_config::rules::{Constraint, Pred};
use bellwether_pg::probe::{learn, ProbeOptions};
use bellwether_pg::scratch::Scratch;
use bellwether_pg::testing::{TestCluster, TestClusterOptions};

#[tokio::test(flavor = "multi_thread")]
async fn probing_finds_the_wal_level_and_connection_constraints_with_conditions() {
    let c = TestCluster::start(TestClusterOptions::default());
    let inst = bellwether_pg::connect(&c.url()).await.unwrap();
    let catalog = bellwether_pg::read_settings(&inst).await.unwrap();
    let bindir = bellwether_pg::find_bindir(catalog.server_version_num, None).unwrap();
    let (graph, stats) = tokio::task::spawn_blocking(move || {
        let scratch = Scratch::init(bindir).unwrap();
        learn(
            &scratch,
            &catalog,
            &ProbeOptions {
                keys: vec!["wal_level".into(), "max_connections".into()],
                parallel: 2,
            },
        )
        .unwrap()
    })
    .await
    .unwrap();
    eprintln!("{stats:?}");
    assert_eq!(stats.settings, 2);
    assert!(stats.refused >= 2, "{stats:?}");
    let probed: Vec<_> = graph
        .edges
        .iter()
        .filter(|e| {
            e.evidence
                .iter()
                .any(|ev| ev.source == bellwether_config::graph::EvidenceSource::Probe)
        })
        .collect();
    let wal = probed
        .iter()
        .find(|e| {
            e.from == "max_wal_senders" && e.to == "wal_level" && e.kind == EdgeKind::Requires
        })
        .unwrap_or_else(|| panic!("no wal_level edge in {probed:#?}"));
    let ev = &wal
        .evidence
        .iter()
        .find(|e| e.detail.starts_with("trial"))
        .unwrap()
        .detail;
    assert!(ev.contains("wal_level = minimal"), "{ev}");
    assert!(ev.contains("max_wal_senders"), "{ev}");
    assert!(wal.condition.is_some(), "{wal:?}");
    assert!(
        probed.iter().any(|e| e.condition
            == Some(Constraint::Implies {
                if_key: "wal_level".into(),
                if_pred: Pred::Eq("minimal".into()),
                then_key: "max_wal_senders".into(),
                then_pred: Pred::Eq("0".into()),
            })),
        "{probed:#?}"
    );
    let conn = probed
        .iter()
        .find(|e| {
            [&e.from, &e.to].contains(&&"superuser_reserved_connections".to_string())
                && [&e.from, &e.to].contains(&&"max_connections".to_string())
        })
        .unwrap_or_else(|| panic!("no max_connections edge in {probed:#?}"));
    assert!(conn.condition.is_some(), "{conn:?}");
    // Second order: once max_wal_senders = 0 lets wal_level = minimal start, archive_mode
    // = on is tried on top and refused.
    let arch = probed
        .iter()
        .find(|e| e.from == "archive_mode" && e.to == "wal_level")
        .unwrap_or_else(|| panic!("no archive_mode edge in {probed:#?}"));
    assert_eq!(
        arch.condition,
        Some(Constraint::Implies {
            if_key: "wal_level".into(),
            if_pred: Pred::Eq("minimal".into()),
            then_key: "archive_mode".into(),
            then_pred: Pred::Eq("off".into()),
        })
    );
    // The graph holds every setting as a node and the shipped rules too.
    assert!(graph.nodes.len() > 300);
    assert!(graph.edges.len() > probed.len());
}
