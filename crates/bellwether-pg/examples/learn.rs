//! Learns the graph of a fresh test cluster and prints the probed edges and the statistics:
//! `cargo run -p bellwether-pg --features testing --example learn -- [PARALLEL] [KEY…]`.
//! (`bellwether bench config-learn` is the benchmark, with the recall.)

fn main() {
    let mut args = std::env::args().skip(1);
    let parallel: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2);
    let keys: Vec<String> = args.collect();
    let c = bellwether_pg::testing::TestCluster::start(Default::default());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let catalog = rt
        .block_on(async {
            let inst = bellwether_pg::connect(&c.url()).await?;
            bellwether_pg::read_settings(&inst).await
        })
        .expect("the test cluster's settings");
    let scratch = bellwether_pg::scratch::Scratch::init(c.bindir.clone()).expect("initdb");
    let (graph, stats) = bellwether_pg::probe::learn(
        &scratch,
        &catalog,
        &bellwether_pg::probe::ProbeOptions { keys, parallel },
    )
    .expect("probing");
    for e in &graph.edges {
        if e.evidence
            .iter()
            .any(|ev| ev.source == bellwether_config::graph::EvidenceSource::Probe)
        {
            println!(
                "{} -{:?}-> {} ({:.2}) {:?}",
                e.from, e.kind, e.to, e.confidence, e.condition
            );
        }
    }
    println!("{stats:?}");
}
