//! `bellwether bench proxy`: pgbench and redis-benchmark direct, through Bellwether's proxy
//! (plain TCP, PostgreSQL-aware and Redis-aware) and through HAProxy in TCP mode, side by side
//! in one run.

use bellwether_proxy::config::{
    AdminState, CheckKind, HostPort, Protocol, RawBackend, RawConfig, RawListener,
};
use bellwether_proxy::ProxyHandle;

use crate::{ensure, Context as _, Result, Verdict};

/// `bellwether bench proxy`: pgbench and redis-benchmark direct, through Bellwether's proxy
/// (plain TCP and PostgreSQL-aware) and through HAProxy in TCP mode, side by side in one run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Client counts to run, comma-separated.
    pub clients: Vec<u32>,
    /// Seconds per pgbench run.
    pub seconds: u32,
    /// Requests per redis-benchmark run.
    pub redis_requests: u32,
    /// Skip HAProxy (it is measured by default; needs the Debian package `haproxy`).
    pub no_haproxy: bool,
    /// Skip the Redis part.
    pub no_redis: bool,
    /// Rounds per cell, interleaving the targets; the table shows the median of the rounds,
    /// which keeps a busy machine's noise from favouring whichever target ran last.
    pub rounds: u32,
    /// Data-plane worker counts to measure Bellwether with, comma-separated; each count
    /// gets its own proxies and its own rows (default: the proxy's default).
    pub workers: Vec<usize>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

/// Where a target's CPU time is read: nowhere (direct), this process (Bellwether runs
/// in-process) or another process (HAProxy).
#[derive(Clone, Copy)]
enum CpuOf {
    Nothing,
    This,
    Pid(u32),
}

/// Clock ticks of user and system time of a process (`/proc/PID/stat` counts in USER_HZ,
/// 100 per second on Linux).
fn process_ticks(of: CpuOf) -> Option<u64> {
    let path = match of {
        CpuOf::Nothing => return None,
        CpuOf::This => "/proc/self/stat".to_string(),
        CpuOf::Pid(p) => format!("/proc/{p}/stat"),
    };
    let text = std::fs::read_to_string(path).ok()?;
    // The command name may hold spaces; the fields after it are space-separated.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Busy clock ticks of the whole machine, all CPUs (`/proc/stat`, everything but idle and
/// iowait).
fn machine_ticks() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    Some(total - v.get(3)? - v.get(4)?)
}

/// One thing to measure: a name, a port, and whose CPU time is the proxy's.
struct Target {
    name: String,
    port: u16,
    cpu: CpuOf,
}

/// One run's figures.
#[derive(Clone, Copy)]
struct Run {
    tps: f64,
    p50: f64,
    p99: f64,
    /// Transactions (or requests) completed.
    count: f64,
}

/// Runs `run` for every target `rounds` times, interleaved, and keeps the medians. Every run
/// is also printed to stderr, so all rounds are on record, not only the medians.
fn measure(
    label: &str,
    clients: &[u32],
    targets: &[Target],
    rounds: u32,
    mut run: impl FnMut(u16, u32) -> Result<Run>,
) -> Result<Vec<BenchRow>> {
    let mut rows = Vec::new();
    let us_per_tick = 1e6 / 100.0;
    for &c in clients {
        let mut got: Vec<Vec<(Run, f64, f64)>> = vec![Vec::new(); targets.len()];
        for round in 0..rounds.max(1) {
            for (i, t) in targets.iter().enumerate() {
                let (p0, m0) = (process_ticks(t.cpu), machine_ticks());
                let r = run(t.port, c)?;
                let (p1, m1) = (process_ticks(t.cpu), machine_ticks());
                let per_tx = |a: Option<u64>, b: Option<u64>| match (a, b) {
                    (Some(a), Some(b)) if r.count > 0.0 => {
                        b.saturating_sub(a) as f64 * us_per_tick / r.count
                    }
                    _ => f64::NAN,
                };
                let (proxy_cpu, machine_cpu) = (per_tx(p0, p1), per_tx(m0, m1));
                eprintln!(
                    "{label} -c {c} round {round} {}: {:.0}/s p50 {:.0}us p99 {:.0}us proxy cpu {proxy_cpu:.1}us/tx machine cpu {machine_cpu:.1}us/tx",
                    t.name, r.tps, r.p50, r.p99
                );
                got[i].push((r, proxy_cpu, machine_cpu));
            }
        }
        for (i, t) in targets.iter().enumerate() {
            let col = |f: &dyn Fn(&(Run, f64, f64)) -> f64| median(got[i].iter().map(f).collect());
            rows.push(BenchRow {
                target: t.name.clone(),
                clients: c,
                tps: col(&|g| g.0.tps),
                p50_us: col(&|g| g.0.p50),
                p99_us: col(&|g| g.0.p99),
                proxy_cpu_us: col(&|g| g.1),
                machine_cpu_us: col(&|g| g.2),
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

    use crate::{ensure, BenchError, Context as _, Result};

    pub fn free_port() -> Result<u16> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    }

    fn is_root() -> bool {
        std::fs::metadata("/proc/self")
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
            .unwrap_or(false)
    }

    pub fn which(name: &str, package: &str) -> Result<PathBuf> {
        std::env::var_os("PATH")
            .and_then(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join(name))
                    .find(|p| p.exists())
            })
            .ok_or_else(|| {
                BenchError::Failed(format!(
                    "`{name}` is not installed: install the Debian package `{package}`"
                ))
            })
    }

    fn pg_bin() -> Result<PathBuf> {
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

    fn ok(mut c: Command, what: &str) -> Result<()> {
        let out = c.output().with_context(|| format!("cannot run {what}"))?;
        ensure!(
            out.status.success(),
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// A directory under the system temp dir, removed on drop.
    pub struct TempDir(PathBuf);

    impl TempDir {
        pub fn new(prefix: &str) -> Result<TempDir> {
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
        pub fn start() -> Result<Cluster> {
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
    pub fn wait_listening(port: u16) -> Result<()> {
        for _ in 0..500 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        crate::bail!("nothing listens on port {port}")
    }
}

struct BenchRow {
    target: String,
    clients: u32,
    tps: f64,
    p50_us: f64,
    p99_us: f64,
    /// CPU time of the proxy process per transaction (NaN for direct).
    proxy_cpu_us: f64,
    /// Busy CPU time of the whole machine per transaction.
    machine_cpu_us: f64,
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn run_pgbench(port: u16, clients: u32, seconds: u32, logdir: &std::path::Path) -> Result<Run> {
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
    ensure!(
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
    let count = stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix("number of transactions actually processed: ")?
                .split('/')
                .next()?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .context("pgbench printed no transaction count")?;
    let mut lat = Vec::new();
    for e in std::fs::read_dir(logdir)?.flatten() {
        let text = std::fs::read_to_string(e.path())?;
        lat.extend(
            text.lines()
                .filter_map(|l| l.split_whitespace().nth(2)?.parse::<f64>().ok()),
        );
    }
    lat.sort_by(f64::total_cmp);
    Ok(Run {
        tps,
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
        count,
    })
}

fn run_redis_benchmark(port: u16, clients: u32, requests: u32) -> Result<Run> {
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
    ensure!(f.len() >= 7, "unexpected redis-benchmark row {line}");
    Ok(Run {
        tps: f[0],
        p50: f[3] * 1000.0,
        p99: f[5] * 1000.0,
        count: f64::from(requests),
    })
}

pub fn run(args: &Options) -> Result<Verdict> {
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
    ensure!(
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
    // The proxies' connections run on their own worker threads; this runtime only accepts
    // and checks health, as in `bellwether proxy`. It needs a thread of its own because this
    // one waits on the benchmark tools.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let backend = |name: &str, port: u16| RawBackend {
        name: name.into(),
        address: HostPort(format!("127.0.0.1:{port}")),
        weight: 100,
        admin: AdminState::Ready,
        password: None,
        role: None,
    };
    let listener = |protocol| RawListener {
        address: "127.0.0.1:0".into(),
        protocol,
        mode: Default::default(),
    };
    let worker_counts: Vec<Option<usize>> = if args.workers.is_empty() {
        vec![None]
    } else {
        args.workers.iter().map(|&w| Some(w)).collect()
    };
    // Per worker count: a PostgreSQL proxy (a TCP and a PostgreSQL-aware listener) and a
    // Redis proxy.
    let mut pg_proxies = Vec::new();
    let mut redis_proxies = Vec::new();
    for w in &worker_counts {
        let mut cfg = RawConfig::new(
            vec![listener(Protocol::Tcp), listener(Protocol::Postgres)],
            vec![backend("pg", cluster.port)],
        );
        cfg.health.check = CheckKind::Tcp;
        cfg.workers = *w;
        let cfg = cfg.validate("bench")?;
        let suffix = if worker_counts.len() > 1 {
            format!(" w{}", cfg.workers)
        } else {
            String::new()
        };
        pg_proxies.push((suffix.clone(), rt.block_on(ProxyHandle::start(cfg))?));
        if let Some((port, _)) = &redis {
            // A plain TCP listener and a Redis-aware one (RESP parsing, request/reply pairing).
            let mut cfg = RawConfig::new(
                vec![listener(Protocol::Tcp), listener(Protocol::Redis)],
                vec![backend("redis", *port)],
            );
            cfg.workers = *w;
            redis_proxies.push((
                suffix,
                rt.block_on(ProxyHandle::start(cfg.validate("bench")?))?,
            ));
        }
    }
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
    let target = |name: String, port: u16, cpu: CpuOf| Target { name, port, cpu };
    let mut targets = vec![target("direct".into(), cluster.port, CpuOf::Nothing)];
    for (suffix, p) in &pg_proxies {
        targets.push(target(
            format!("bellwether tcp{suffix}"),
            p.listen_addrs()[0].port(),
            CpuOf::This,
        ));
        targets.push(target(
            format!("bellwether postgres{suffix}"),
            p.listen_addrs()[1].port(),
            CpuOf::This,
        ));
    }
    if let Some((p, _, child, _)) = &haproxy {
        targets.push(target("haproxy tcp".into(), *p, CpuOf::Pid(child.0.id())));
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
        let mut targets = vec![target("direct".into(), *rport, CpuOf::Nothing)];
        for (suffix, p) in &redis_proxies {
            targets.push(target(
                format!("bellwether tcp{suffix}"),
                p.listen_addrs()[0].port(),
                CpuOf::This,
            ));
            targets.push(target(
                format!("bellwether redis{suffix}"),
                p.listen_addrs()[1].port(),
                CpuOf::This,
            ));
        }
        if let Some((_, hp, child, _)) = &haproxy {
            targets.push(target("haproxy tcp".into(), *hp, CpuOf::Pid(child.0.id())));
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
        for (_, p) in pg_proxies.into_iter().chain(redis_proxies) {
            p.shutdown().await;
        }
    });
    Ok(Verdict::Met)
}

fn print_table(title: &str, rows: &[BenchRow]) {
    println!("\n{title}\n");
    println!("| clients | target | TPS | ratio to direct | p50 µs | p99 µs | p99 added µs | proxy CPU µs/tx | machine CPU µs/tx |");
    println!("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in rows {
        let direct = rows
            .iter()
            .find(|d| d.clients == r.clients && d.target == "direct");
        let ratio = direct.map(|d| r.tps / d.tps).unwrap_or(f64::NAN);
        let added = direct.map(|d| r.p99_us - d.p99_us).unwrap_or(f64::NAN);
        let cpu = if r.proxy_cpu_us.is_nan() {
            "—".to_string()
        } else {
            format!("{:.1}", r.proxy_cpu_us)
        };
        println!(
            "| {} | {} | {:.0} | {:.3} | {:.0} | {:.0} | {:+.0} | {cpu} | {:.1} |",
            r.clients, r.target, r.tps, ratio, r.p50_us, r.p99_us, added, r.machine_cpu_us
        );
    }
}
