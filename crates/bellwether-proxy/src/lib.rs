//! bellwether-proxy: the L4 traffic manager in front of a service's instances.
//!
//! It forwards TCP connections to weighted backends, keeps the operator's admin state apart
//! from measured health (active checks with rise and fall, passive ejection with a growing
//! ejection time, never more than a configured share out), registers every client connection,
//! and measures latency, throughput and errors per backend. On PostgreSQL listeners it follows
//! the protocol to know transaction boundaries, time each query, and move a session to another
//! backend at a boundary without the client noticing, or close it gracefully when the session
//! holds state.
//!
//! The crate owns sockets and tasks; it never decides *when* to shift traffic. That is the
//! patch engine's job (`bellwether-engine`), which drives this crate through [`ProxyHandle`].
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
mod conn;
pub mod health;
pub mod metrics;
pub mod pg;
pub mod pool;
pub mod redis;
mod redis_conn;
pub mod registry;
pub mod scram;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use config::{AdminState, ProxyConfig, RedisMode, Role};
pub use pool::{BackendView, Pool};
pub use registry::Registry;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the data-plane threads: {0}")]
    Workers(std::io::Error),
    #[error(transparent)]
    Admin(#[from] admin::AdminError),
}

/// What every task of one proxy shares.
#[derive(Debug)]
pub struct Shared {
    pub config: ProxyConfig,
    pub pool: Pool,
    pub registry: Registry,
    /// Set when shutdown begins: sessions close at their next boundary.
    pub closing: AtomicBool,
    /// The Redis mode set through the admin API (`POST /mode`), over every listener's own:
    /// 0 none, 1 active-passive, 2 active-active.
    mode_override: std::sync::atomic::AtomicU8,
}

impl Shared {
    /// Overrides every Redis listener's mode (`None`: back to each one's configured mode).
    pub fn set_mode_override(&self, mode: Option<RedisMode>) {
        let v = match mode {
            None => 0,
            Some(RedisMode::ActivePassive) => 1,
            Some(RedisMode::ActiveActive) => 2,
        };
        self.mode_override.store(v, Relaxed);
        self.pool.bump();
    }

    /// The mode in force for a listener configured with `configured`.
    pub fn mode(&self, configured: RedisMode) -> RedisMode {
        match self.mode_override.load(Relaxed) {
            1 => RedisMode::ActivePassive,
            2 => RedisMode::ActiveActive,
            _ => configured,
        }
    }
}

/// A running proxy.
pub struct ProxyHandle {
    shared: Arc<Shared>,
    listen: Vec<SocketAddr>,
    admin: Option<SocketAddr>,
    admin_guard: Option<Arc<admin::Guard>>,
    admin_tls: bool,
    stop_accepting: CancellationToken,
    tasks: JoinSet<()>,
    workers: Arc<Workers>,
}

/// The data plane: threads that each run a current-thread runtime and own the connections
/// handed to them for their whole life.
///
/// A connection's task is woken by its own thread's event loop and never migrates, so a
/// forwarded message costs no cross-thread wake-up (no futex) and no work stealing. Accepting,
/// the admin API and health checks stay on the caller's runtime.
struct Workers {
    handles: Vec<tokio::runtime::Handle>,
    next: std::sync::atomic::AtomicUsize,
    stop: CancellationToken,
    threads: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl Workers {
    fn start(n: usize) -> std::io::Result<Workers> {
        let stop = CancellationToken::new();
        let mut handles = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(rt.handle().clone());
            let stop = stop.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("bw-proxy-{i}"))
                    .spawn(move || rt.block_on(stop.cancelled()))?,
            );
        }
        Ok(Workers {
            handles,
            next: std::sync::atomic::AtomicUsize::new(0),
            stop,
            threads: std::sync::Mutex::new(threads),
        })
    }

    /// The next worker, round robin.
    fn pick(&self) -> &tokio::runtime::Handle {
        let i = self.next.fetch_add(1, Relaxed) % self.handles.len();
        &self.handles[i]
    }

    /// Stops the threads; connections still on them are dropped.
    fn stop(&self) -> Vec<std::thread::JoinHandle<()>> {
        self.stop.cancel();
        std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Drop for ProxyHandle {
    /// A handle dropped without [`ProxyHandle::shutdown`] stops everything at once.
    fn drop(&mut self) {
        self.stop_accepting.cancel();
        drop(self.workers.stop());
    }
}

/// How a drain ended.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DrainOutcome {
    pub backend: String,
    /// Sessions on the backend when the drain began.
    pub sessions_at_start: usize,
    /// Sessions still there at the timeout, closed by force.
    pub forced: usize,
    pub took_ms: u64,
}

impl ProxyHandle {
    /// Binds the listeners (and the admin API, if configured) and starts serving.
    pub async fn start(config: ProxyConfig) -> Result<ProxyHandle, ProxyError> {
        let shared = Arc::new(Shared {
            pool: Pool::new(&config.backends, config.ejection.clone()),
            registry: Registry::default(),
            closing: AtomicBool::new(false),
            mode_override: std::sync::atomic::AtomicU8::new(0),
            config,
        });
        let workers = Arc::new(Workers::start(shared.config.workers).map_err(ProxyError::Workers)?);
        let stop_accepting = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let limit = Arc::new(Semaphore::new(shared.config.max_connections));
        let mut listen = Vec::new();
        for l in shared.config.listeners.clone() {
            let listener =
                TcpListener::bind(l.address)
                    .await
                    .map_err(|source| ProxyError::Bind {
                        address: l.address,
                        source,
                    })?;
            let local = listener.local_addr().map_err(|source| ProxyError::Bind {
                address: l.address,
                source,
            })?;
            listen.push(local);
            tracing::info!(address = %local, protocol = ?l.protocol, "Listening.");
            tasks.spawn(accept_loop(
                shared.clone(),
                listener,
                local,
                l.clone(),
                limit.clone(),
                workers.clone(),
                stop_accepting.clone(),
            ));
        }
        let (mut admin_guard, mut admin_tls) = (None, false);
        let admin = match shared.config.admin {
            Some(a) => {
                let security = &shared.config.admin_security;
                let tls = match &security.tls {
                    Some((cert, key)) => Some(admin::tls_acceptor(cert, key)?),
                    None => None,
                };
                let guard = Arc::new(admin::Guard {
                    token: admin::AdminToken::prepare(security)?,
                    allow_hosts: security.allow_hosts.clone(),
                });
                let listener = TcpListener::bind(a)
                    .await
                    .map_err(|source| ProxyError::Bind { address: a, source })?;
                let local = listener
                    .local_addr()
                    .map_err(|source| ProxyError::Bind { address: a, source })?;
                tracing::info!(
                    address = %local,
                    tls = tls.is_some(),
                    token_file = %guard.token.file().display(),
                    "Admin API listening."
                );
                admin_tls = tls.is_some();
                tasks.spawn(admin::serve(
                    admin::router(shared.clone(), guard.clone()),
                    listener,
                    tls,
                    stop_accepting.clone(),
                ));
                admin_guard = Some(guard);
                Some(local)
            }
            None => None,
        };
        tasks.spawn(health::run(shared.clone(), stop_accepting.clone()));
        tasks.spawn(metrics::sample_loop(shared.clone(), stop_accepting.clone()));
        Ok(ProxyHandle {
            shared,
            listen,
            admin,
            admin_guard,
            admin_tls,
            stop_accepting,
            tasks,
            workers,
        })
    }

    /// The bound listener addresses, in configuration order.
    pub fn listen_addrs(&self) -> &[SocketAddr] {
        &self.listen
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// The admin API's base URL (`https://` with TLS), when it is configured.
    pub fn admin_url(&self) -> Option<String> {
        let scheme = if self.admin_tls { "https" } else { "http" };
        self.admin.map(|a| format!("{scheme}://{a}"))
    }

    /// The admin API's bearer token and its file, when the admin API is configured.
    pub fn admin_token(&self) -> Option<&admin::AdminToken> {
        self.admin_guard.as_ref().map(|g| &g.token)
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub fn pool(&self) -> &Pool {
        &self.shared.pool
    }

    pub fn registry(&self) -> &Registry {
        &self.shared.registry
    }

    /// Changes a backend's weight or admin state; maintenance closes its sessions now.
    pub fn set_backend(
        &self,
        name: &str,
        weight: Option<u32>,
        admin: Option<AdminState>,
    ) -> Result<(), pool::PoolError> {
        set_backend(&self.shared, name, weight, admin)
    }

    /// Waits until no session is on `backend`, or `limit` passes; then closes what is left.
    /// The caller sets the backend to drain (or weight 0) first, so sessions move at their
    /// transaction boundaries while this waits.
    pub async fn wait_drained(&self, backend: &str, limit: Duration) -> DrainOutcome {
        wait_drained(&self.shared, backend, limit).await
    }

    /// Stops accepting, lets sessions close at their boundaries for up to the grace period,
    /// then closes the rest.
    pub async fn shutdown(mut self) {
        self.stop_accepting.cancel();
        self.shared.closing.store(true, Relaxed);
        self.shared.pool.bump();
        let grace = self.shared.config.shutdown_grace;
        let deadline = Instant::now() + grace;
        loop {
            let notified = self.shared.registry.changed.notified();
            if self.shared.registry.is_empty() {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let left = self.shared.registry.all();
                tracing::warn!(
                    sessions = left.len(),
                    "Grace period over; closing the remaining connections."
                );
                for e in left {
                    e.kill.cancel();
                }
                break;
            }
        }
        while self.tasks.join_next().await.is_some() {}
        let threads = self.workers.stop();
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
        tracing::info!("Proxy stopped.");
    }
}

pub(crate) fn set_backend(
    shared: &Shared,
    name: &str,
    weight: Option<u32>,
    admin: Option<AdminState>,
) -> Result<(), pool::PoolError> {
    shared.pool.set(name, weight, admin)?;
    if admin == Some(AdminState::Maintenance) {
        for e in shared.registry.on_backend(name) {
            e.kill.cancel();
        }
    }
    Ok(())
}

/// How a wait for the sessions busy on a backend ended (see [`wait_idle`]).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct IdleOutcome {
    pub backend: String,
    /// Sessions busy there when the wait began: a Redis reply outstanding, MULTI or WATCH, a
    /// blocking command, subscriber mode; a PostgreSQL transaction.
    pub busy_at_start: usize,
    /// Sessions still busy at the timeout: closed, or for Redis sessions not bound by MULTI,
    /// WATCH or subscriber mode, cut loose from the server (reads re-sent, other commands
    /// answered "backend lost").
    pub forced: usize,
    /// Idle sessions still registered there (they move when a primary is available).
    pub idle_left: usize,
    pub took_ms: u64,
}

fn busy_on(shared: &Shared, backend: &str) -> Vec<Arc<registry::ConnEntry>> {
    shared
        .registry
        .on_backend(backend)
        .into_iter()
        .filter(|e| e.busy.load(std::sync::atomic::Ordering::SeqCst))
        .collect()
}

/// Waits until no session on `backend` is busy, or `limit` passes; then closes those that
/// still are. Sessions set themselves busy before they look where to send a request, so once
/// this returns no request reaches `backend` through the proxy unless the pool points there.
pub async fn wait_idle(shared: &Shared, backend: &str, limit: Duration) -> IdleOutcome {
    let _watching = shared.registry.watch();
    // Pairs with the fence a session passes between marking itself busy and reading the pool.
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    let started = Instant::now();
    let deadline = started + limit;
    let busy_at_start = busy_on(shared, backend).len();
    let mut forced = 0;
    while !limit.is_zero() {
        let notified = shared.registry.changed.notified();
        if busy_on(shared, backend).is_empty() {
            break;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            let left = busy_on(shared, backend);
            forced = left.len();
            if forced > 0 {
                tracing::warn!(
                    backend,
                    sessions = forced,
                    "Sessions still busy on the previous primary; closing them."
                );
            }
            for e in &left {
                // A Redis session gives up what is outstanding there (reads re-sent to the
                // new primary, writes answered "lost"); others are closed.
                if e.protocol == "redis" {
                    e.abandon.notify_one();
                } else {
                    e.kill.cancel();
                }
            }
            while !busy_on(shared, backend).is_empty() {
                let n = shared.registry.changed.notified();
                if busy_on(shared, backend).is_empty() {
                    break;
                }
                let _ = tokio::time::timeout(Duration::from_secs(1), n).await;
            }
            break;
        }
    }
    IdleOutcome {
        backend: backend.to_string(),
        busy_at_start,
        forced,
        idle_left: shared.registry.on_backend(backend).len(),
        took_ms: started.elapsed().as_millis() as u64,
    }
}

pub(crate) async fn wait_drained(shared: &Shared, backend: &str, limit: Duration) -> DrainOutcome {
    let started = Instant::now();
    let deadline = started + limit;
    let sessions_at_start = shared.registry.on_backend(backend).len();
    let mut forced = 0;
    loop {
        let notified = shared.registry.changed.notified();
        let left = shared.registry.on_backend(backend);
        if left.is_empty() {
            break;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            let left = shared.registry.on_backend(backend);
            forced = left.len();
            tracing::warn!(
                backend,
                sessions = forced,
                "Drain timed out; closing the sessions still there."
            );
            for e in &left {
                e.kill.cancel();
            }
            // Wait for the closed sessions to leave the registry so the caller sees it empty.
            while !shared.registry.on_backend(backend).is_empty() {
                let n = shared.registry.changed.notified();
                if shared.registry.on_backend(backend).is_empty() {
                    break;
                }
                let _ = tokio::time::timeout(Duration::from_secs(1), n).await;
            }
            break;
        }
    }
    DrainOutcome {
        backend: backend.to_string(),
        sessions_at_start,
        forced,
        took_ms: started.elapsed().as_millis() as u64,
    }
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    local: SocketAddr,
    listener_config: config::ListenerConfig,
    limit: Arc<Semaphore>,
    workers: Arc<Workers>,
    stop: CancellationToken,
) {
    loop {
        // Take a slot before accepting, so excess clients wait in the listen backlog.
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.cancelled() => return,
        };
        let (sock, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "Accept failed.");
                    // Out of file descriptors and similar: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let shared = shared.clone();
        let protocol = listener_config.protocol;
        let mode = listener_config.mode;
        let span = tracing::info_span!("conn", client = %peer, listener = %local);
        // The socket moves to a worker's event loop: out of this runtime's reactor here, into
        // the worker's inside the task.
        let sock = match sock.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(client = %peer, error = %e, "Cannot hand the connection over.");
                continue;
            }
        };
        workers.pick().spawn(
            async move {
                match tokio::net::TcpStream::from_std(sock) {
                    Ok(sock) => match protocol {
                        config::Protocol::Tcp => conn::serve_tcp(shared, sock, peer, local).await,
                        config::Protocol::Postgres => {
                            conn::serve_postgres(shared, sock, peer, local).await
                        }
                        config::Protocol::Redis => {
                            redis_conn::serve_redis(shared, sock, peer, local, mode).await
                        }
                    },
                    Err(e) => tracing::warn!(error = %e, "Cannot register the connection."),
                }
                drop(permit);
            }
            .instrument(span),
        );
    }
}
