//! `bellwether bench ingest`: metric samples stored per second, through the store API and
//! through the server's HTTP endpoint, on SQLite and PostgreSQL.

use std::time::Instant;

use bellwether_model::{HostName, MetricSample};
use bellwether_server::{Server, ServerConfig};
use bellwether_store::{Store, StoreConfig};

use crate::{ensure, BenchError, Context as _, Output, Result, Verdict};

/// `bellwether bench ingest`: metric samples stored per second, through the store API on
/// SQLite (and on PostgreSQL with --database), and through the HTTP endpoint.
#[derive(Debug, Clone)]
pub struct Options {
    /// Also measure PostgreSQL at this URL (postgres://…), in a throwaway schema that is
    /// dropped afterwards.
    pub database: Option<String>,
    /// Samples to store per run.
    pub samples: usize,
    /// Samples per batch (one agent request, one store transaction).
    pub batch: usize,
    /// Hosts the samples are spread over.
    pub hosts: usize,
    /// Concurrent HTTP clients in the HTTP runs.
    pub clients: usize,
    /// Skip the runs through the HTTP endpoint.
    pub no_http: bool,
    /// `human` or `json`.
    pub output: Output,
}

#[derive(Debug, serde::Serialize)]
struct IngestResult {
    backend: &'static str,
    path: &'static str,
    samples: usize,
    batch: usize,
    seconds: f64,
    samples_per_second: f64,
}

const METRICS: [&str; 8] = [
    "load1",
    "load5",
    "memory_available_ratio",
    "cpu_busy_ratio",
    "psi_cpu_some_avg10",
    "psi_io_some_avg10",
    "disk_busy_ratio",
    "net_rx_bytes_per_s",
];

fn make_batches(samples: usize, batch: usize) -> Vec<Vec<MetricSample>> {
    // Timestamps end now, five seconds apart per metric (closer when that would reach back more
    // than 12 hours), so the server's retention keeps them and its --sample-max-age (24 h)
    // accepts them.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let rows = (samples / METRICS.len()).max(1) as i64;
    let step = (12 * 3_600_000 / rows).clamp(1, 5_000);
    let start = now - rows * step;
    let all: Vec<MetricSample> = (0..samples)
        .map(|i| MetricSample {
            ts_ms: start + (i / METRICS.len()) as i64 * step,
            name: METRICS[i % METRICS.len()].to_string(),
            value: ((i * 7919) % 1000) as f64 / 100.0,
        })
        .collect();
    all.chunks(batch).map(|c| c.to_vec()).collect()
}

fn host_names(n: usize) -> Vec<HostName> {
    (0..n)
        .map(|i| HostName::new(format!("bench-{i:03}")).expect("valid name"))
        .collect()
}

async fn bench_store(
    config: &StoreConfig,
    batches: &[Vec<MetricSample>],
    hosts: &[HostName],
) -> Result<f64> {
    let store = Store::open(config).await?;
    for (i, h) in hosts.iter().enumerate() {
        store
            .enrol(
                h,
                &Default::default(),
                &format!("bench-agent-token-{i:08}"),
                0,
            )
            .await?;
    }
    let start = Instant::now();
    for (i, b) in batches.iter().enumerate() {
        store.insert_samples(&hosts[i % hosts.len()], b, 1).await?;
    }
    let secs = start.elapsed().as_secs_f64();
    let mut stored = 0;
    for h in hosts {
        stored += store.count_samples(h).await?;
    }
    ensure!(
        stored as usize == batches.iter().map(Vec::len).sum::<usize>(),
        "stored {stored} samples, expected all"
    );
    store.close().await;
    Ok(secs)
}

async fn bench_http(
    config: StoreConfig,
    batches: &[Vec<MetricSample>],
    hosts: &[HostName],
    clients: usize,
) -> Result<f64> {
    const OP: &str = "bench-operator-token-0000000001";
    const ENROL: &str = "bench-enrol-token-00000000000001";
    let mut sc = ServerConfig::new(config, None);
    sc.operator_token = Some(OP.into());
    sc.enrol_token = Some(ENROL.into());
    let server = Server::open(sc).await?;
    let store = server.store().clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(listener, async {
        let _ = stop_rx.await;
    }));
    let http = reqwest::Client::new();
    let mut tokens = Vec::new();
    for h in hosts {
        let r: serde_json::Value = http
            .post(format!("http://{addr}/api/v1/enrol"))
            .bearer_auth(ENROL)
            .json(&serde_json::json!({"name": h}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        tokens.push(
            r["agent_token"]
                .as_str()
                .context("no agent_token")?
                .to_string(),
        );
    }
    // Bodies are serialised before the clock starts: the figure is the server's cost.
    let bodies: Vec<(String, Vec<u8>)> = batches
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let body = serde_json::to_vec(&serde_json::json!({"samples": b, "dropped": 0}))
                .expect("serialise");
            (tokens[i % tokens.len()].clone(), body)
        })
        .collect();
    let shared = std::sync::Arc::new(std::sync::Mutex::new(bodies.into_iter()));
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..clients.max(1) {
        let shared = shared.clone();
        let http = http.clone();
        let url = format!("http://{addr}/api/v1/agent/samples");
        workers.push(tokio::spawn(async move {
            loop {
                let next = shared.lock().unwrap_or_else(|e| e.into_inner()).next();
                let Some((token, body)) = next else { break };
                http.post(&url)
                    .bearer_auth(&token)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await?
                    .error_for_status()?;
            }
            Ok::<_, reqwest::Error>(())
        }));
    }
    for w in workers {
        w.await??;
    }
    let secs = start.elapsed().as_secs_f64();
    let mut stored = 0;
    for h in hosts {
        stored += store.count_samples(h).await?;
    }
    ensure!(
        stored as usize == batches.iter().map(Vec::len).sum::<usize>(),
        "stored {stored} samples, expected all"
    );
    let _ = stop_tx.send(());
    task.await??;
    Ok(secs)
}

pub fn run(args: &Options) -> Result<Verdict> {
    if args.samples == 0 || args.batch == 0 || args.hosts == 0 {
        return Err(BenchError::Usage(
            "--samples, --batch and --hosts must be at least 1".into(),
        ));
    }
    let pg_url = match &args.database {
        Some(url) => {
            match StoreConfig::from_url(url)
                .map_err(|e| BenchError::Usage(format!("--database: {e}")))?
            {
                StoreConfig::Postgres { url, .. } => Some(url),
                StoreConfig::Sqlite { .. } => {
                    return Err(BenchError::Usage(
                        "--database: the SQLite run always happens; give a postgres:// URL".into(),
                    ))
                }
            }
        }
        None => None,
    };
    let batches = make_batches(args.samples, args.batch);
    let hosts = host_names(args.hosts);
    let rt = tokio::runtime::Runtime::new()?;
    let results = rt.block_on(async {
        let mut results = Vec::new();
        let mut record = |backend, path, secs: f64| {
            results.push(IngestResult {
                backend,
                path,
                samples: args.samples,
                batch: args.batch,
                seconds: secs,
                samples_per_second: args.samples as f64 / secs,
            })
        };
        let (sqlite, dir) = bellwether_store::testing::fresh_sqlite();
        let secs = bench_store(&sqlite, &batches, &hosts).await;
        bellwether_store::testing::cleanup(&sqlite, Some(&dir)).await;
        record("sqlite", "store API", secs?);
        if !args.no_http {
            let (sqlite, dir) = bellwether_store::testing::fresh_sqlite();
            let secs = bench_http(sqlite.clone(), &batches, &hosts, args.clients).await;
            bellwether_store::testing::cleanup(&sqlite, Some(&dir)).await;
            record("sqlite", "HTTP", secs?);
        }
        if let Some(url) = &pg_url {
            let schema = bellwether_store::testing::unique_name("bw_bench");
            let pg = StoreConfig::Postgres {
                url: url.clone(),
                schema: Some(schema),
            };
            let secs = bench_store(&pg, &batches, &hosts).await;
            bellwether_store::testing::cleanup(&pg, None).await;
            record("postgres", "store API", secs?);
            if !args.no_http {
                let schema = bellwether_store::testing::unique_name("bw_bench");
                let pg = StoreConfig::Postgres {
                    url: url.clone(),
                    schema: Some(schema),
                };
                let secs = bench_http(pg.clone(), &batches, &hosts, args.clients).await;
                bellwether_store::testing::cleanup(&pg, None).await;
                record("postgres", "HTTP", secs?);
            }
        }
        Ok::<_, BenchError>(results)
    })?;
    if args.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        println!(
            "Ingest of {} samples in batches of {} over {} hosts ({} HTTP clients):",
            args.samples, args.batch, args.hosts, args.clients
        );
        for r in &results {
            println!(
                "  {:<9} {:<10} {:>8.3} s  {:>10.0} samples/s",
                r.backend, r.path, r.seconds, r.samples_per_second
            );
        }
    }
    Ok(Verdict::Met)
}
