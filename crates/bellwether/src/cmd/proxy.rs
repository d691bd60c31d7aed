//! `bellwether proxy`: run the L4 traffic manager from a YAML file or from flags.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use bellwether_proxy::config::{
    self, AdminState, CheckKind, HostPort, Protocol, RawBackend, RawConfig, RawListener,
};
use bellwether_proxy::ProxyHandle;

use super::UsageError;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A YAML configuration file (see docs/proxy.md). Flags given beside it add listeners and
    /// backends and override the admin address.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to accept clients on, as IP:PORT (port 0 picks a free one). Repeatable.
    #[arg(long, value_name = "ADDR")]
    listen: Vec<String>,
    /// How the flag listeners treat traffic: `tcp` copies bytes; `postgres` follows the
    /// protocol (transaction boundaries, query timing, re-homing).
    #[arg(long, value_enum, default_value = "tcp")]
    protocol: ProtocolArg,
    /// A backend as NAME=HOST:PORT, optionally followed by `,weight=N` and `,admin=drain`.
    /// Repeatable.
    #[arg(long, value_name = "NAME=HOST:PORT")]
    backend: Vec<String>,
    /// Address of the admin HTTP API (backends, connections, /metrics), as IP:PORT.
    #[arg(long, value_name = "ADDR")]
    admin: Option<String>,
    /// Active health check for flag configurations: tcp, postgres or none.
    #[arg(long, value_enum)]
    health_check: Option<CheckArg>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ProtocolArg {
    Tcp,
    Postgres,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum CheckArg {
    Tcp,
    Postgres,
    None,
}

/// Parses `NAME=HOST:PORT[,weight=N][,admin=STATE][,password=P]`.
fn parse_backend(s: &str) -> Result<RawBackend, String> {
    let mut parts = s.split(',');
    let first = parts.next().unwrap_or_default();
    let (name, addr) = first
        .split_once('=')
        .ok_or_else(|| format!("--backend `{s}`: expected NAME=HOST:PORT"))?;
    let address = HostPort::parse(addr).map_err(|e| format!("--backend `{s}`: {e}"))?;
    let mut b = RawBackend {
        name: name.to_string(),
        address,
        weight: 100,
        admin: AdminState::Ready,
        password: None,
    };
    for opt in parts {
        match opt.split_once('=') {
            Some(("weight", w)) => {
                b.weight = w
                    .parse()
                    .map_err(|_| format!("--backend `{s}`: bad weight `{w}`"))?
            }
            Some(("admin", a)) => {
                b.admin = a.parse().map_err(|e| format!("--backend `{s}`: {e}"))?
            }
            Some(("password", p)) => b.password = Some(p.to_string()),
            _ => {
                return Err(format!(
                    "--backend `{s}`: unknown option `{opt}` (weight=, admin=, password=)"
                ))
            }
        }
    }
    Ok(b)
}

/// Builds the validated configuration from the file and flags.
pub fn build_config(args: &Args) -> anyhow::Result<config::ProxyConfig> {
    let mut raw = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            config::parse_raw(&path.display().to_string(), &text)
                .map_err(|e| UsageError(e.to_string()))?
        }
        None => RawConfig::new(Vec::new(), Vec::new()),
    };
    let protocol = match args.protocol {
        ProtocolArg::Tcp => Protocol::Tcp,
        ProtocolArg::Postgres => Protocol::Postgres,
    };
    for l in &args.listen {
        raw.listeners.push(RawListener {
            address: l.clone(),
            protocol,
        });
    }
    for b in &args.backend {
        raw.backends.push(parse_backend(b).map_err(UsageError)?);
    }
    if let Some(a) = &args.admin {
        raw.admin = Some(a.clone());
    }
    if let Some(c) = args.health_check {
        raw.health.check = match c {
            CheckArg::Tcp => CheckKind::Tcp,
            CheckArg::Postgres => CheckKind::Postgres,
            CheckArg::None => CheckKind::None,
        };
    } else if args.config.is_none() && protocol == Protocol::Postgres {
        raw.health.check = CheckKind::Postgres;
    }
    let source = args
        .config
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "flags".into());
    raw.validate(&source)
        .map_err(|e| UsageError(e.to_string()).into())
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = build_config(&args)?;
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    rt.block_on(async move {
        let handle = ProxyHandle::start(config)
            .await
            .map_err(|e| UsageError(e.to_string()))?;
        for (l, a) in handle
            .shared()
            .config
            .listeners
            .iter()
            .zip(handle.listen_addrs())
        {
            println!(
                "listening on {a} ({})",
                match l.protocol {
                    Protocol::Tcp => "tcp",
                    Protocol::Postgres => "postgres",
                }
            );
        }
        if let Some(a) = handle.admin_addr() {
            println!("admin api on http://{a}");
        }
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        wait_for_signal().await;
        tracing::info!(
            grace_seconds = handle.shared().config.shutdown_grace.as_secs_f64(),
            "Shutting down."
        );
        handle.shutdown().await;
        Ok(ExitCode::SUCCESS)
    })
}

/// Waits for SIGINT or SIGTERM.
pub async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_flags() {
        let b = parse_backend("a=127.0.0.1:5432,weight=5,admin=drain").unwrap();
        assert_eq!(
            (b.name.as_str(), b.weight, b.admin),
            ("a", 5, AdminState::Drain)
        );
        assert!(parse_backend("a").unwrap_err().contains("NAME=HOST:PORT"));
        assert!(parse_backend("a=h:x").unwrap_err().contains("bad port"));
        assert!(parse_backend("a=h:1,color=red")
            .unwrap_err()
            .contains("unknown option"));
    }
}

/// `bellwether bench proxy`: pgbench and redis-benchmark direct, through Bellwether's proxy
/// (plain TCP and PostgreSQL-aware) and through HAProxy in TCP mode, side by side in one run.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Client counts to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,10,50")]
    clients: Vec<u32>,
    /// Seconds per pgbench run.
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    /// Requests per redis-benchmark run.
    #[arg(long, default_value_t = 200_000)]
    redis_requests: u32,
    /// Skip HAProxy (it is measured by default; needs the Debian package `haproxy`).
    #[arg(long)]
    no_haproxy: bool,
    /// Skip the Redis part.
    #[arg(long)]
    no_redis: bool,
    /// Rounds per cell, interleaving the targets; the table shows the median of the rounds,
    /// which keeps a busy machine's noise from favouring whichever target ran last.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Worker threads of the in-process proxy's runtime (default: one per core).
    #[arg(long)]
    proxy_threads: Option<usize>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

/// Runs `run` for every target `rounds` times, interleaved, and keeps the medians.
fn measure(
    label: &str,
    clients: &[u32],
    targets: &[(String, u16)],
    rounds: u32,
    mut run: impl FnMut(u16, u32) -> anyhow::Result<(f64, f64, f64)>,
) -> anyhow::Result<Vec<BenchRow>> {
    let mut rows = Vec::new();
    for &c in clients {
        let mut got: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); targets.len()];
        for round in 0..rounds.max(1) {
            for (i, (name, port)) in targets.iter().enumerate() {
                let (tps, p50, p99) = run(*port, c)?;
                eprintln!(
                    "{label} -c {c} round {round} {name}: {tps:.0}/s p50 {p50:.0}us p99 {p99:.0}us"
                );
                got[i].push((tps, p50, p99));
            }
        }
        for (i, (name, _)) in targets.iter().enumerate() {
            rows.push(BenchRow {
                target: name.clone(),
                clients: c,
                tps: median(got[i].iter().map(|g| g.0).collect()),
                p50_us: median(got[i].iter().map(|g| g.1).collect()),
                p99_us: median(got[i].iter().map(|g| g.2).collect()),
            });
        }
    }
    Ok(rows)
}

mod bench_support {
    //! Throwaway servers for the benchmark: a PostgreSQL cluster from `initdb`, a Redis, and
    //! HAProxy with its own configuration, all on free loopback ports and removed afterwards.

    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};

    use anyhow::Context as _;

    pub fn free_port() -> anyhow::Result<u16> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    }

    fn is_root() -> bool {
        std::fs::metadata("/proc/self")
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
            .unwrap_or(false)
    }

    pub fn which(name: &str, package: &str) -> anyhow::Result<PathBuf> {
        std::env::var_os("PATH")
            .and_then(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join(name))
                    .find(|p| p.exists())
            })
            .ok_or_else(|| {
                anyhow::anyhow!("`{name}` is not installed: install the Debian package `{package}`")
            })
    }

    fn pg_bin() -> anyhow::Result<PathBuf> {
        let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
                let bin = e.path().join("bin");
                bin.join("initdb").exists().then_some((v, bin))
            })
            .collect();
        found.sort();
        found
            .pop()
            .map(|(_, b)| b)
            .context("no /usr/lib/postgresql/*/bin/initdb: install the Debian package `postgresql`")
    }

    fn as_postgres(program: &Path) -> Command {
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    }

    fn ok(mut c: Command, what: &str) -> anyhow::Result<()> {
        let out = c.output().with_context(|| format!("cannot run {what}"))?;
        anyhow::ensure!(
            out.status.success(),
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// A directory under the system temp dir, removed on drop.
    pub struct TempDir(PathBuf);

    impl TempDir {
        pub fn new(prefix: &str) -> anyhow::Result<TempDir> {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let p = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
            std::fs::create_dir_all(&p)
                .with_context(|| format!("cannot create {}", p.display()))?;
            Ok(TempDir(p))
        }
        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    pub struct Cluster {
        pub dir: TempDir,
        pub port: u16,
        bin: PathBuf,
    }

    impl Cluster {
        pub fn start() -> anyhow::Result<Cluster> {
            let bin = pg_bin()?;
            let dir = TempDir::new("bellwether-bench-pg")?;
            if is_root() {
                let mut c = Command::new("chown");
                c.arg("postgres:postgres").arg(dir.path());
                ok(c, "chown")?;
            }
            let data = dir.path().join("data");
            let mut c = as_postgres(&bin.join("initdb"));
            c.arg("-D")
                .arg(&data)
                .args(["-A", "trust", "-U", "postgres", "--no-sync"]);
            ok(c, "initdb")?;
            let port = free_port()?;
            let conf = format!(
                "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nmax_connections = 200\nfsync = off\nsynchronous_commit = off\n",
                dir.path().display()
            );
            std::fs::OpenOptions::new()
                .append(true)
                .open(data.join("postgresql.conf"))
                .and_then(|mut f| {
                    use std::io::Write as _;
                    f.write_all(conf.as_bytes())
                })?;
            let mut c = as_postgres(&bin.join("pg_ctl"));
            c.arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(dir.path().join("log"))
                .args(["-w", "start"]);
            ok(c, "pg_ctl start")?;
            Ok(Cluster { dir, port, bin })
        }
    }

    impl Drop for Cluster {
        fn drop(&mut self) {
            let mut c = as_postgres(&self.bin.join("pg_ctl"));
            c.arg("-D")
                .arg(self.dir.path().join("data"))
                .args(["-m", "immediate", "-w", "stop"]);
            let _ = c.stdout(Stdio::null()).stderr(Stdio::null()).status();
        }
    }

    /// A child process killed on drop.
    pub struct Proc(pub Child);

    impl Drop for Proc {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// Waits until something listens on the port (the child offers no readiness signal).
    pub fn wait_listening(port: u16) -> anyhow::Result<()> {
        for _ in 0..500 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        anyhow::bail!("nothing listens on port {port}")
    }
}

struct BenchRow {
    target: String,
    clients: u32,
    tps: f64,
    p50_us: f64,
    p99_us: f64,
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn run_pgbench(
    port: u16,
    clients: u32,
    seconds: u32,
    logdir: &std::path::Path,
) -> anyhow::Result<(f64, f64, f64)> {
    for e in std::fs::read_dir(logdir)?.flatten() {
        let _ = std::fs::remove_file(e.path());
    }
    let bin = bench_support::which("pgbench", "postgresql-client")?;
    let out = std::process::Command::new(bin)
        .current_dir(logdir)
        .args([
            "-n",
            "-S",
            "-M",
            "simple",
            "-l",
            "--log-prefix",
            "tx",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
        ])
        .arg("-p")
        .arg(port.to_string())
        .arg("-c")
        .arg(clients.to_string())
        .arg("-j")
        .arg(clients.min(2).to_string())
        .arg("-T")
        .arg(seconds.to_string())
        .arg("postgres")
        .output()
        .context("cannot run pgbench")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "pgbench failed on port {port}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tps = stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix("tps = ")?
                .split_whitespace()
                .next()?
                .parse::<f64>()
                .ok()
        })
        .context("pgbench printed no tps")?;
    let mut lat = Vec::new();
    for e in std::fs::read_dir(logdir)?.flatten() {
        let text = std::fs::read_to_string(e.path())?;
        lat.extend(
            text.lines()
                .filter_map(|l| l.split_whitespace().nth(2)?.parse::<f64>().ok()),
        );
    }
    lat.sort_by(f64::total_cmp);
    Ok((tps, percentile(&lat, 0.5), percentile(&lat, 0.99)))
}

fn run_redis_benchmark(port: u16, clients: u32, requests: u32) -> anyhow::Result<(f64, f64, f64)> {
    let bin = bench_support::which("redis-benchmark", "redis-tools")?;
    let out = std::process::Command::new(bin)
        .args(["-h", "127.0.0.1", "-t", "get", "--csv"])
        .arg("-p")
        .arg(port.to_string())
        .arg("-c")
        .arg(clients.to_string())
        .arg("-n")
        .arg(requests.to_string())
        .output()
        .context("cannot run redis-benchmark")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("\"GET\""))
        .with_context(|| format!("redis-benchmark printed no GET row: {stdout}"))?;
    let f: Vec<f64> = line
        .split(',')
        .skip(1)
        .filter_map(|v| v.trim_matches('"').parse().ok())
        .collect();
    anyhow::ensure!(f.len() >= 7, "unexpected redis-benchmark row {line}");
    Ok((f[0], f[3] * 1000.0, f[5] * 1000.0))
}

pub fn bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    use bench_support::*;
    let cluster = Cluster::start()?;
    let init = std::process::Command::new(which("pgbench", "postgresql-client")?)
        .args([
            "-i",
            "-q",
            "-s",
            "10",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-p",
        ])
        .arg(cluster.port.to_string())
        .arg("postgres")
        .output()?;
    anyhow::ensure!(
        init.status.success(),
        "pgbench -i failed: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let redis = if args.no_redis {
        None
    } else {
        let port = free_port()?;
        let child = std::process::Command::new(which("redis-server", "redis-server")?)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()?;
        let p = Proc(child);
        wait_listening(port)?;
        Some((port, p))
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(n) = args.proxy_threads {
        builder.worker_threads(n.max(1));
    }
    let rt = builder.build()?;
    let backend = |name: &str, port: u16| RawBackend {
        name: name.into(),
        address: HostPort(format!("127.0.0.1:{port}")),
        weight: 100,
        admin: AdminState::Ready,
        password: None,
    };
    let mut listeners = vec![
        RawListener {
            address: "127.0.0.1:0".into(),
            protocol: Protocol::Tcp,
        },
        RawListener {
            address: "127.0.0.1:0".into(),
            protocol: Protocol::Postgres,
        },
    ];
    let mut cfg = RawConfig::new(listeners.clone(), vec![backend("pg", cluster.port)]);
    cfg.health.check = CheckKind::Tcp;
    let pg_proxy = rt.block_on(ProxyHandle::start(cfg.validate("bench")?))?;
    let redis_proxy = match &redis {
        Some((port, _)) => {
            listeners.truncate(1);
            let cfg = RawConfig::new(listeners, vec![backend("redis", *port)]);
            Some(rt.block_on(ProxyHandle::start(cfg.validate("bench")?))?)
        }
        None => None,
    };
    let haproxy = if args.no_haproxy {
        None
    } else {
        let bin = which("haproxy", "haproxy")?;
        let dir = TempDir::new("bellwether-bench-haproxy")?;
        let pg_port = free_port()?;
        let redis_port = free_port()?;
        let mut conf = format!(
            "global\n  maxconn 4096\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\nlisten pg\n  bind 127.0.0.1:{pg_port}\n  server pg 127.0.0.1:{}\n",
            cluster.port
        );
        if let Some((port, _)) = &redis {
            conf.push_str(&format!(
                "listen redis\n  bind 127.0.0.1:{redis_port}\n  server redis 127.0.0.1:{port}\n"
            ));
        }
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, conf)?;
        let child = std::process::Command::new(bin)
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .spawn()?;
        let p = Proc(child);
        wait_listening(pg_port)?;
        Some((pg_port, redis_port, p, dir))
    };
    let logdir = TempDir::new("bellwether-bench-pgbench")?;
    let mut targets: Vec<(String, u16)> = vec![
        ("direct".into(), cluster.port),
        ("bellwether tcp".into(), pg_proxy.listen_addrs()[0].port()),
        (
            "bellwether postgres".into(),
            pg_proxy.listen_addrs()[1].port(),
        ),
    ];
    if let Some((p, _, _, _)) = &haproxy {
        targets.push(("haproxy tcp".into(), *p));
    }
    let rows = measure(
        "pgbench -S",
        &args.clients,
        &targets,
        args.rounds,
        |port, c| run_pgbench(port, c, args.seconds, logdir.path()),
    )?;
    print_table(&format!("pgbench -S (select only, simple protocol), scale 10, {} s per run, median of {} rounds", args.seconds, args.rounds), &rows);
    if let Some((rport, _)) = &redis {
        let mut targets: Vec<(String, u16)> = vec![("direct".into(), *rport)];
        if let Some(p) = &redis_proxy {
            targets.push(("bellwether tcp".into(), p.listen_addrs()[0].port()));
        }
        if let Some((_, hp, _, _)) = &haproxy {
            targets.push(("haproxy tcp".into(), *hp));
        }
        let rows = measure(
            "redis-benchmark GET",
            &args.clients,
            &targets,
            args.rounds,
            |port, c| run_redis_benchmark(port, c, args.redis_requests),
        )?;
        print_table(
            &format!(
                "redis-benchmark -t get, {} requests per run, median of {} rounds",
                args.redis_requests, args.rounds
            ),
            &rows,
        );
    }
    rt.block_on(async {
        pg_proxy.shutdown().await;
        if let Some(p) = redis_proxy {
            p.shutdown().await;
        }
    });
    Ok(ExitCode::SUCCESS)
}

fn print_table(title: &str, rows: &[BenchRow]) {
    println!("\n{title}\n");
    println!("| clients | target | TPS | ratio to direct | p50 µs | p99 µs | p99 added µs |");
    println!("| ---: | --- | ---: | ---: | ---: | ---: | ---: |");
    for r in rows {
        let direct = rows
            .iter()
            .find(|d| d.clients == r.clients && d.target == "direct");
        let ratio = direct.map(|d| r.tps / d.tps).unwrap_or(f64::NAN);
        let added = direct.map(|d| r.p99_us - d.p99_us).unwrap_or(f64::NAN);
        println!(
            "| {} | {} | {:.0} | {:.3} | {:.0} | {:.0} | {:+.0} |",
            r.clients, r.target, r.tps, ratio, r.p50_us, r.p99_us, added
        );
    }
}
