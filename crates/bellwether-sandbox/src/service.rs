//! `bellwether sandbox service`: the small versioned web service each sandbox host runs.
//!
//! It serves `/` (answers `websvc VERSION`, or 500 when a fault makes the request fail, after
//! the request's latency) and `/metrics` in the Prometheus text format:
//! `websvc_requests_total`, `websvc_errors_total` (both labelled with the version) and the
//! `websvc_request_duration_seconds` histogram.
//!
//! Its version is `<root>/etc/websvc/version`, re-read every 100 ms: the agent's
//! `set_service_version` action writes it. Its faults are `<root>/etc/websvc/faults.json`,
//! written by `sandbox up --scenario` for the rules whose host conditions match this host:
//! `[{"version": "2", "error_rate": 0.3, "latency_factor": 1.0, "onset_ms": 5000}]`. A fault
//! applies while the running version equals its version, from `onset_ms` after the service
//! started running that version.
//!
//! Its configuration is `<root>/etc/websvc.conf` (`key = value` lines; `sandbox up` writes
//! `workers = 4`), re-read with the version. Version 1 serves every request on its event loop
//! and ignores `workers`; every other version serves through a pool of `workers` workers, so a
//! drifted configuration is a real fault there: `workers = 0` (or a value that is not a
//! number) leaves no worker and every request fails (a 500, counted as an error), and `workers = 1` serialises
//! the load and makes every request 4× slower. A missing file means the default, 4 workers.
//!
//! The load generator is in this process: it simulates `--rps` requests a second through the
//! same code path as `/` (without sleeping out their latency), so every host has steady
//! traffic and the metrics have something to say whether or not anyone calls `/`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::{Result, SandboxError};

/// Histogram bucket bounds, in seconds.
pub const BUCKETS: [f64; 11] = [
    0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0,
];
/// The base latency of a healthy request: 2 ms plus an exponential tail of mean 1.5 ms.
const BASE_MS: f64 = 2.0;
const TAIL_MS: f64 = 1.5;

/// What `sandbox service` is given.
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    /// The host root: the version and faults are read from `<root>/etc/websvc/`.
    pub root: PathBuf,
    /// The address to serve on, such as `127.0.0.1:0`.
    pub listen: String,
    /// Where to write the bound address once listening.
    pub addr_file: PathBuf,
    /// Simulated requests per second from the built-in load generator (1 to 10,000).
    pub rps: u32,
}

/// One fault, as `sandbox up` writes it for a host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    pub version: String,
    #[serde(default)]
    pub error_rate: f64,
    #[serde(default = "one")]
    pub latency_factor: f64,
    #[serde(default)]
    pub onset_ms: u64,
}

fn one() -> f64 {
    1.0
}

pub const FAULTS_FILE: &str = "etc/websvc/faults.json";

/// The service's configuration file, relative to the root. The sandbox agents protect (and so
/// watch) it, so a rollout's `restore_file` can put the known-good copy back.
pub const CONFIG_FILE: &str = "etc/websvc.conf";

/// What `sandbox up` writes to [`CONFIG_FILE`]: the known-good configuration.
pub const DEFAULT_CONFIG: &str = "workers = 4\nlisten = 127.0.0.1\n";

/// The workers when the configuration file is missing or does not set them.
const DEFAULT_WORKERS: u32 = 4;

/// How long a request takes with a single worker, relative to a full pool.
const ONE_WORKER_LATENCY_FACTOR: f64 = 4.0;

/// The service's settings from [`CONFIG_FILE`].
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The worker pool of every version but 1; `Err` names the problem with the value.
    pub workers: Result<u32, String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            workers: Ok(DEFAULT_WORKERS),
        }
    }
}

/// Parses `key = value` lines (`#` comments, blank lines). `workers` is a whole number from 0
/// to 1024; `listen` is accepted (the address comes from `--listen`); any other key, or a line
/// without `=`, is a problem the service logs, and a bad `workers` value leaves the pool
/// without workers, as a real service that cannot read its pool size would not start one.
pub fn parse_config(text: &str) -> (Config, Vec<String>) {
    let mut config = Config::default();
    let mut problems = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let at = format!("{CONFIG_FILE}:{}", i + 1);
        let Some((key, value)) = line.split_once('=') else {
            problems.push(format!("{at}: expected KEY = VALUE"));
            continue;
        };
        match (key.trim(), value.trim()) {
            ("workers", v) => {
                config.workers = match v.parse::<u32>() {
                    Ok(n) if n <= 1024 => Ok(n),
                    _ => Err(format!(
                        "{at}: workers {v:?} is not a number from 0 to 1024"
                    )),
                };
                if let Err(e) = &config.workers {
                    problems.push(e.clone());
                }
            }
            ("listen", _) => {}
            (k, _) => problems.push(format!("{at}: unknown key {k:?}")),
        }
    }
    (config, problems)
}

/// Reads [`CONFIG_FILE`]; a missing file is the default configuration.
pub fn read_config(root: &Path) -> (Config, Vec<String>) {
    match std::fs::read_to_string(root.join(CONFIG_FILE)) {
        Ok(text) => parse_config(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Config::default(), Vec::new()),
        Err(e) => (
            Config {
                workers: Err(format!("could not read {CONFIG_FILE}: {e}")),
            },
            vec![format!("could not read {CONFIG_FILE}: {e}")],
        ),
    }
}

/// The error rate and latency factor the configuration gives `version`: none on version 1,
/// which has no worker pool; every request failing without workers; 4× latency with one.
pub fn config_effect(config: &Config, version: &str) -> (f64, f64) {
    if version == "1" {
        return (0.0, 1.0);
    }
    match config.workers {
        Ok(0) | Err(_) => (1.0, 1.0),
        Ok(1) => (0.0, ONE_WORKER_LATENCY_FACTOR),
        Ok(_) => (0.0, 1.0),
    }
}

#[derive(Debug, Default)]
struct Counters {
    /// (version, requests, errors)
    by_version: Vec<(String, u64, u64)>,
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum_s: f64,
}

struct Live {
    version: String,
    since: Instant,
    faults: Vec<Fault>,
    config: Config,
}

struct Service {
    root: PathBuf,
    live: Mutex<Live>,
    counters: Mutex<Counters>,
}

fn read_version(root: &Path) -> String {
    std::fs::read_to_string(root.join(bellwether_agent::exec::VERSION_FILE))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "1".to_string())
}

pub fn read_faults(root: &Path) -> Result<Vec<Fault>> {
    let path = root.join(FAULTS_FILE);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|source| SandboxError::BadFile {
            path,
            what: "valid",
            source,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(SandboxError::io("read", path, e)),
    }
}

/// The error rate and latency factor in force for `version`, `elapsed` after it started.
pub fn effect(faults: &[Fault], version: &str, elapsed: Duration) -> (f64, f64) {
    let mut err = 0.0_f64;
    let mut lat = 1.0_f64;
    for f in faults
        .iter()
        .filter(|f| f.version == version && elapsed >= Duration::from_millis(f.onset_ms))
    {
        // Independent faults: a request survives each error rate in turn.
        err = 1.0 - (1.0 - err) * (1.0 - f.error_rate.clamp(0.0, 1.0));
        lat *= f.latency_factor.max(0.0);
    }
    (err, lat)
}

impl Service {
    /// Re-reads the version file and the configuration; a new version restarts the onset
    /// clock.
    fn refresh(&self) {
        let v = read_version(&self.root);
        let (config, problems) = read_config(&self.root);
        let mut live = self.live.lock().expect("not poisoned");
        if v != live.version {
            tracing::info!(from = %live.version, to = %v, "Service version changed.");
            live.version = v;
            live.since = Instant::now();
        }
        if config != live.config {
            match &config.workers {
                Ok(n) => tracing::info!(workers = n, "Service configuration changed."),
                Err(_) => {
                    tracing::warn!(problems = ?problems, "Service configuration changed; it sets no usable worker count.")
                }
            }
            live.config = config;
        }
    }

    /// Serves one request: whether it failed and how long it took.
    fn handle(&self, rng: &mut impl rand::Rng) -> (String, bool, f64) {
        let (version, error_rate, factor) = {
            let live = self.live.lock().expect("not poisoned");
            let (fe, fl) = effect(&live.faults, &live.version, live.since.elapsed());
            let (ce, cl) = config_effect(&live.config, &live.version);
            // The configuration and the faults fail requests independently.
            (live.version.clone(), 1.0 - (1.0 - fe) * (1.0 - ce), fl * cl)
        };
        let u: f64 = rng.gen_range(f64::EPSILON..1.0);
        let latency_ms = (BASE_MS - TAIL_MS * u.ln()) * factor;
        let failed = rng.gen_bool(error_rate.clamp(0.0, 1.0));
        let secs = latency_ms / 1000.0;
        let mut c = self.counters.lock().expect("not poisoned");
        match c.by_version.iter_mut().find(|(v, _, _)| *v == version) {
            Some(e) => {
                e.1 += 1;
                e.2 += u64::from(failed);
            }
            None => c.by_version.push((version.clone(), 1, u64::from(failed))),
        }
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                c.buckets[i] += 1;
            }
        }
        c.count += 1;
        c.sum_s += secs;
        (version, failed, latency_ms)
    }

    fn exposition(&self) -> String {
        use std::fmt::Write as _;
        let version = self.live.lock().expect("not poisoned").version.clone();
        let mut c = self.counters.lock().expect("not poisoned");
        if c.by_version.is_empty() {
            // Counters exist from the start, at zero, so the first scrape opens a window.
            c.by_version.push((version, 0, 0));
        }
        let mut s = String::new();
        s.push_str(
            "# HELP websvc_requests_total Requests served.\n# TYPE websvc_requests_total counter\n",
        );
        for (v, r, _) in &c.by_version {
            let _ = writeln!(s, "websvc_requests_total{{version=\"{v}\"}} {r}");
        }
        s.push_str("# HELP websvc_errors_total Requests that failed.\n# TYPE websvc_errors_total counter\n");
        for (v, _, e) in &c.by_version {
            let _ = writeln!(s, "websvc_errors_total{{version=\"{v}\"}} {e}");
        }
        s.push_str("# HELP websvc_request_duration_seconds Request latency.\n# TYPE websvc_request_duration_seconds histogram\n");
        for (b, n) in BUCKETS.iter().zip(c.buckets) {
            let _ = writeln!(
                s,
                "websvc_request_duration_seconds_bucket{{le=\"{b}\"}} {n}"
            );
        }
        let _ = writeln!(
            s,
            "websvc_request_duration_seconds_bucket{{le=\"+Inf\"}} {}",
            c.count
        );
        let _ = writeln!(s, "websvc_request_duration_seconds_sum {}", c.sum_s);
        let _ = writeln!(s, "websvc_request_duration_seconds_count {}", c.count);
        s
    }
}

/// Serves until the process is stopped. Bad options, and a faults file that is not valid,
/// are usage errors.
pub fn serve(args: ServiceOptions) -> Result<()> {
    use axum::http::StatusCode;
    if !args.root.is_dir() {
        return Err(SandboxError::Usage(format!(
            "--root {}: not a directory",
            args.root.display()
        )));
    }
    if args.rps == 0 || args.rps > 10_000 {
        return Err(SandboxError::Usage(
            "--rps: must be between 1 and 10000".into(),
        ));
    }
    let faults =
        read_faults(&args.root).map_err(|e| SandboxError::Usage(crate::error_chain(&e)))?;
    let (config, problems) = read_config(&args.root);
    if !problems.is_empty() {
        tracing::warn!(problems = ?problems, "The service configuration has problems.");
    }
    let svc = Arc::new(Service {
        live: Mutex::new(Live {
            version: read_version(&args.root),
            since: Instant::now(),
            faults,
            config,
        }),
        root: args.root.clone(),
        counters: Mutex::new(Counters::default()),
    });
    let rt = crate::runtime()?;
    rt.block_on(async move {
        let bind = |e| SandboxError::Process(format!("could not listen on {}: {e}", args.listen));
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .map_err(bind)?;
        let addr = listener.local_addr().map_err(bind)?.to_string();
        crate::state::write_atomic(&args.addr_file, addr.as_bytes())?;
        tracing::info!(addr = %addr, root = %args.root.display(), "Service ready.");
        let watcher = svc.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                watcher.refresh();
            }
        });
        let load = svc.clone();
        let period = Duration::from_secs_f64(1.0 / f64::from(args.rps));
        tokio::spawn(async move {
            let mut rng = rand::rngs::SmallRng::from_entropy();
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                load.handle(&mut rng);
            }
        });
        let root_svc = svc.clone();
        let app = axum::Router::new()
            .route(
                "/",
                axum::routing::get(move || {
                    let svc = root_svc.clone();
                    async move {
                        let (version, failed, ms) =
                            svc.handle(&mut rand::rngs::SmallRng::from_entropy());
                        tokio::time::sleep(Duration::from_secs_f64(ms / 1000.0)).await;
                        if failed {
                            (
                                StatusCode::INTERNAL_SERVER_ERROR,
                                format!(
                                    "websvc {version}: request failed (a fault or no workers)\n"
                                ),
                            )
                        } else {
                            (StatusCode::OK, format!("websvc {version}\n"))
                        }
                    }
                }),
            )
            .route(
                "/metrics",
                axum::routing::get(move || {
                    let svc = svc.clone();
                    async move {
                        (
                            [("content-type", "text/plain; version=0.0.4")],
                            svc.exposition(),
                        )
                    }
                }),
            );
        axum::serve(listener, app)
            .await
            .map_err(|e| SandboxError::Process(format!("the service stopped: {e}")))
    })
}

use rand::SeedableRng as _;

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(faults: Vec<Fault>) -> Service {
        Service {
            root: PathBuf::new(),
            live: Mutex::new(Live {
                version: "2".into(),
                since: Instant::now(),
                faults,
                config: Config::default(),
            }),
            counters: Mutex::new(Counters::default()),
        }
    }

    #[test]
    fn the_configuration_breaks_every_version_but_1_when_it_leaves_no_workers() {
        let (good, problems) = parse_config(DEFAULT_CONFIG);
        assert_eq!((good.clone(), problems.len()), (Config::default(), 0));
        let (none, _) = parse_config("# drifted\nworkers = 0\nlisten = 127.0.0.1\n");
        let (bad, problems) = parse_config("workers = four\ncolour = blue\nnonsense\n");
        assert!(bad.workers.is_err());
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            problems[0].starts_with("etc/websvc.conf:1: workers \"four\""),
            "{problems:?}"
        );
        let (one, _) = parse_config("workers = 1\n");
        for c in [&good, &none, &bad, &one] {
            assert_eq!(config_effect(c, "1"), (0.0, 1.0), "version 1 has no pool");
        }
        assert_eq!(config_effect(&good, "2"), (0.0, 1.0));
        assert_eq!(config_effect(&none, "2"), (1.0, 1.0));
        assert_eq!(config_effect(&bad, "2"), (1.0, 1.0));
        assert_eq!(config_effect(&one, "2"), (0.0, 4.0));
        // A missing file is the default; the service measures the drifted one as failures.
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_config(dir.path()).0, Config::default());
        let s = svc(Vec::new());
        s.live.lock().unwrap().config = none;
        let mut rng = rand::rngs::SmallRng::seed_from_u64(3);
        assert!(
            (0..100).all(|_| s.handle(&mut rng).1),
            "every request fails"
        );
    }

    #[test]
    fn faults_apply_to_their_version_after_the_onset() {
        let f = vec![
            Fault {
                version: "2".into(),
                error_rate: 0.3,
                latency_factor: 1.0,
                onset_ms: 5000,
            },
            Fault {
                version: "2".into(),
                error_rate: 0.0,
                latency_factor: 4.0,
                onset_ms: 0,
            },
        ];
        assert_eq!(effect(&f, "1", Duration::from_secs(60)), (0.0, 1.0));
        assert_eq!(effect(&f, "2", Duration::from_secs(1)), (0.0, 4.0));
        let (e, l) = effect(&f, "2", Duration::from_secs(5));
        assert!((e - 0.3).abs() < 1e-12 && l == 4.0);
    }

    #[test]
    fn the_exposition_parses_and_yields_the_service_samples() {
        let healthy = svc(Vec::new());
        let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
        let mut rates = bellwether_agent::scrape::Rates::default();
        let scrape = |s: &Service, ts| {
            let parsed = bellwether_agent::scrape::parse(&s.exposition()).unwrap();
            bellwether_agent::scrape::snapshot(&parsed, ts).unwrap()
        };
        rates.push(scrape(&healthy, 0));
        for _ in 0..1000 {
            healthy.handle(&mut rng);
        }
        let got: std::collections::BTreeMap<String, f64> = rates
            .push(scrape(&healthy, 1000))
            .into_iter()
            .map(|s| (s.name, s.value))
            .collect();
        assert_eq!(got["svc_requests_rate"], 1000.0);
        assert_eq!(got["svc_error_ratio"], 0.0);
        let p50 = got["svc_latency_p50_ms"];
        assert!((2.0..5.0).contains(&p50), "{p50}");

        let faulty = svc(vec![Fault {
            version: "2".into(),
            error_rate: 0.3,
            latency_factor: 4.0,
            onset_ms: 0,
        }]);
        let mut rates = bellwether_agent::scrape::Rates::default();
        rates.push(scrape(&faulty, 0));
        for _ in 0..2000 {
            faulty.handle(&mut rng);
        }
        let got: std::collections::BTreeMap<String, f64> = rates
            .push(scrape(&faulty, 1000))
            .into_iter()
            .map(|s| (s.name, s.value))
            .collect();
        assert!((got["svc_error_ratio"] - 0.3).abs() < 0.04, "{got:?}");
        assert!(
            got["svc_latency_p50_ms"] > 3.0 * p50,
            "{got:?} vs healthy p50 {p50}"
        );
    }

    #[test]
    fn a_faults_file_with_a_typo_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc/websvc")).unwrap();
        assert!(read_faults(dir.path()).unwrap().is_empty());
        std::fs::write(
            dir.path().join(FAULTS_FILE),
            r#"[{"version": "2", "eror_rate": 0.3}]"#,
        )
        .unwrap();
        let err = read_faults(dir.path()).unwrap_err();
        assert!(matches!(err, SandboxError::BadFile { .. }), "{err:?}");
        let e = crate::error_chain(&err);
        assert!(
            e.contains("faults.json is not valid") && e.contains("unknown field `eror_rate`"),
            "{e}"
        );
    }
}
