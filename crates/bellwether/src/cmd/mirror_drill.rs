//! `bellwether mirror drill`: a real primary and its mirrors behind the proxy at `--listen`,
//! under load, with a fault injected into the primary a third of the way through; prints the
//! detection and switch times, the client errors, the acknowledged writes lost and the switch
//! history (`bellwether_mirror::drill`).

use std::process::ExitCode;

use anyhow::Context as _;
use bellwether_mirror::drill::{self, DrillOptions, DrillReport, Fault};
use bellwether_model::mirror::DepKind;
use bellwether_model::Dur;

use super::{OutputFormat, UsageError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KindArg {
    Redis,
    Postgres,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FaultArg {
    /// SIGKILL to the primary's processes.
    Kill,
    /// SIGSTOP: the primary freezes (SIGCONT at the end).
    Stop,
    /// The primary's processes run 6 ms of every 53 ms (stopped 47 ms, from a thread of the
    /// drill's own): a throttled, slow primary.
    Slow,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long, value_enum)]
    kind: KindArg,
    #[arg(long, value_enum)]
    fault: FaultArg,
    /// Where the proxy accepts clients during the drill, IP:PORT (port 0 picks one; the report
    /// names it). Point any client at it while the drill runs.
    #[arg(long, value_name = "ADDR")]
    listen: String,
    /// How long the load runs; the fault comes at a third of it.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Mirrors beside the primary.
    #[arg(long, default_value_t = 2)]
    mirrors: u32,
    /// The health interval (the engine observes every instance this often).
    #[arg(long, default_value = "250ms")]
    interval: Dur,
    /// Load connections.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    #[arg(long, value_enum, default_value = "human")]
    output: OutputFormat,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    if !(3..=3600).contains(&a.seconds) {
        return Err(UsageError(format!("--seconds {} is outside [3, 3600]", a.seconds)).into());
    }
    if !(1..=8).contains(&a.mirrors) {
        return Err(UsageError(format!("--mirrors {} is outside [1, 8]", a.mirrors)).into());
    }
    if !(1..=256).contains(&a.clients) {
        return Err(UsageError(format!("--clients {} is outside [1, 256]", a.clients)).into());
    }
    let ms = a.interval.get().as_millis();
    if !(50..=60_000).contains(&ms) {
        return Err(UsageError(format!("--interval {} is outside [50ms, 60s]", a.interval)).into());
    }
    a.listen
        .parse::<std::net::SocketAddr>()
        .map_err(|e| UsageError(format!("--listen {:?} is not IP:PORT: {e}", a.listen)))?;
    let kind = match a.kind {
        KindArg::Redis => DepKind::Redis,
        KindArg::Postgres => DepKind::Postgres,
    };
    let fault = match a.fault {
        FaultArg::Kill => Fault::Kill,
        FaultArg::Stop => Fault::Stop,
        FaultArg::Slow => Fault::Slow,
    };
    let mut opts = DrillOptions::new(kind, fault, &a.listen);
    opts.seconds = a.seconds;
    opts.mirrors = a.mirrors;
    opts.health_interval = a.interval;
    opts.clients = a.clients;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let report = rt.block_on(drill::run(opts, proxy::start))?;
    match a.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        OutputFormat::Human => print_human(&report),
    }
    Ok(ExitCode::SUCCESS)
}

fn ms(v: Option<i64>) -> String {
    v.map_or("—".into(), |v| format!("{v} ms"))
}

fn print_human(r: &DrillReport) {
    println!(
        "drill: {} primary {} with {} mirrors, fault {:?} at {:.1} s of {} s, proxy at {}",
        r.kind,
        r.primary,
        r.mirrors,
        r.fault,
        r.fault_at_ms as f64 / 1000.0,
        r.seconds,
        r.listen
    );
    println!(
        "  detected after {}, switch decided after {}, switched (proxy routed) after {}",
        ms(r.detected_after_ms),
        ms(r.decided_after_ms),
        ms(r.switched_after_ms)
    );
    println!(
        "  first write acknowledged after the switch: {} after the fault; longest time without an acknowledged write: {}",
        ms(r.first_ack_after_switch_ms),
        ms(r.longest_ack_gap_ms)
    );
    if let Some(p) = &r.promotion {
        println!("  promotion: {p}");
    }
    println!("  new primary: {}", r.new_primary);
    println!(
        "  writes {} (acknowledged {}, errors {}), reads {} (errors {})",
        r.writes, r.acknowledged_writes, r.write_errors, r.reads, r.read_errors
    );
    if r.first_error_after_fault_ms.is_some() {
        println!(
            "  client errors from {} to {} after the fault",
            ms(r.first_error_after_fault_ms),
            ms(r.last_error_after_fault_ms)
        );
    }
    println!(
        "  acknowledged writes lost: {}{}",
        r.acknowledged_writes_lost,
        if r.lost_examples.is_empty() {
            String::new()
        } else {
            format!(" (e.g. {})", r.lost_examples.join(", "))
        }
    );
    println!(
        "  replicated (confirmed on a mirror) writes: {}, of them lost: {}",
        r.replicated_writes, r.replicated_writes_lost
    );
    println!("  history:");
    if r.history.is_empty() {
        println!("    (no switch)");
    }
    for h in &r.history {
        println!(
            "    {} → {} [{}] {} (detect {} ms, switch {} ms)",
            h.from, h.to, h.trigger, h.cause, h.figures["detect_ms"], h.figures["switch_ms"]
        );
    }
}

/// The proxy the drill serves through, in-process: a `redis` or `postgres` listener whose
/// backends are the engine's instances, switched with the pool's roles (docs/proxy.md, "Roles
/// and switching the primary").
mod proxy {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::time::Duration;

    use bellwether_engine::mirror::Backend;
    use bellwether_mirror::drill::{DrillError, DrillProxy, ProxyGuard};
    use bellwether_mirror::local::{BackendFigures, Router};
    use bellwether_proxy::config::{
        AdminState, CheckKind, HostPort, Protocol, RawBackend, RawConfig, RawListener, Role,
    };
    use bellwether_proxy::{ProxyHandle, Shared};

    use super::DepKind;

    /// How long a switch waits for the sessions busy on the previous primary.
    const SWITCH_WAIT: Duration = Duration::from_secs(5);

    pub async fn start(
        kind: DepKind,
        listen: String,
        primary: String,
    ) -> Result<DrillProxy, DrillError> {
        let err = |message: String| DrillError::Proxy {
            listen: listen.clone(),
            message,
        };
        let protocol = match kind {
            DepKind::Redis => Protocol::Redis,
            DepKind::Postgres => Protocol::Postgres,
            DepKind::Tcp => Protocol::Tcp,
        };
        let mut b = RawBackend::new(
            bellwether_engine::mirror::PRIMARY_ID,
            HostPort::parse(&primary).map_err(&err)?,
        );
        b.role = Some(Role::Primary);
        let mut raw = RawConfig::new(vec![RawListener::new(&listen, protocol)], vec![b]);
        // The engine decides who is up and switches; the proxy only routes.
        raw.health.check = CheckKind::None;
        let config = raw
            .validate("the drill's proxy")
            .map_err(|e| err(e.to_string()))?;
        let handle = ProxyHandle::start(config)
            .await
            .map_err(|e| err(e.to_string()))?;
        let bound = handle
            .listen_addrs()
            .first()
            .map(|a| a.to_string())
            .ok_or_else(|| err("the proxy listens nowhere".into()))?;
        let shared = handle.shared().clone();
        let router: Arc<dyn Router> = Arc::new(ProxyRouter { shared });
        let guard = ProxyGuard::new(move || Box::pin(async move { handle.shutdown().await }));
        Ok(DrillProxy {
            router,
            listen: bound,
            guard,
        })
    }

    struct ProxyRouter {
        shared: Arc<Shared>,
    }

    impl ProxyRouter {
        fn ensure(&self, b: &Backend) -> Result<(), String> {
            let pool = &self.shared.pool;
            if pool.get(&b.instance).is_none() {
                let mut raw = RawBackend::new(&b.instance, HostPort::parse(&b.endpoint)?);
                raw.role = Some(Role::Replica);
                pool.add(&raw).map_err(|e| e.to_string())?;
            }
            Ok(())
        }

        /// Waits until no session is busy on `backend`, at most `wait` (and [`SWITCH_WAIT`]),
        /// as the proxy's own switch does (`bellwether_proxy::wait_idle`).
        async fn wait_idle(&self, backend: &str, wait: Duration) {
            bellwether_proxy::wait_idle(&self.shared, backend, wait.min(SWITCH_WAIT)).await;
        }
    }

    #[async_trait::async_trait]
    impl Router for ProxyRouter {
        async fn route(&self, primary: &Backend, readers: &[Backend]) -> Result<(), String> {
            self.ensure(primary)?;
            for r in readers {
                self.ensure(r)?;
            }
            let pool = &self.shared.pool;
            let change = pool
                .set_primary(Some(&primary.instance), true)
                .map_err(|e| e.to_string())?;
            for b in pool.backends() {
                if b.name == primary.instance || change.previous.as_deref() == Some(&b.name) {
                    continue;
                }
                let admin = if readers.iter().any(|r| r.instance == b.name) {
                    AdminState::Ready
                } else {
                    AdminState::Maintenance
                };
                pool.set(&b.name, None, Some(admin))
                    .map_err(|e| e.to_string())?;
            }
            // The engine routes away from a primary that is down (its commands in flight will
            // not be answered: they are closed now rather than at a timeout), or after a hold
            // that already waited for them.
            if let Some(prev) = change.previous.filter(|p| *p != primary.instance) {
                for e in self.shared.registry.on_backend(&prev) {
                    if e.busy.load(std::sync::atomic::Ordering::SeqCst) {
                        e.kill.cancel();
                    }
                }
            }
            Ok(())
        }

        async fn hold(&self, wait: Duration) -> Result<(), String> {
            let change = self
                .shared
                .pool
                .set_primary(None, false)
                .map_err(|e| e.to_string())?;
            if let Some(prev) = change.previous {
                self.wait_idle(&prev, wait).await;
            }
            Ok(())
        }

        async fn figures(&self) -> Option<BTreeMap<String, BackendFigures>> {
            Some(
                self.shared
                    .pool
                    .view()
                    .into_iter()
                    .map(|v| {
                        let w = &v.window;
                        (
                            v.name,
                            BackendFigures {
                                requests_per_s: (w.seconds > 0.0).then_some(w.requests_per_second),
                                error_rate: w.error_rate,
                                sessions: Some(v.metrics.active_connections as u32),
                            },
                        )
                    })
                    .collect(),
            )
        }
    }
}
