//! Real services for the integration tests: PostgreSQL clusters made with `initdb` in a
//! temporary directory and started with `pg_ctl` on a free port, Redis on a free port, and a
//! tiny PostgreSQL client that speaks the protocol directly. Each service stops on drop.
//!
//! A missing binary fails the test with the Debian package that provides it.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use bellwether_proxy::pg;

/// A free TCP port on loopback, below the ephemeral range: a cluster stopped and started
/// again on its port would otherwise find it taken by some client's connection
/// ([`bellwether_pg::listen_port`]).
pub fn free_port() -> u16 {
    bellwether_pg::listen_port().expect("finding a free port on 127.0.0.1")
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// The directory of the newest installed PostgreSQL server binaries.
pub fn pg_bin() -> PathBuf {
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
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin: install the Debian package `postgresql` (apt-get install -y postgresql)"),
    }
}

/// A client binary on PATH or beside the server binaries.
pub fn client_bin(name: &str, package: &str) -> PathBuf {
    let local = pg_bin().join(name);
    if local.exists() {
        return local;
    }
    which(name).unwrap_or_else(|| {
        panic!("`{name}` is not installed: install the Debian package `{package}`")
    })
}

pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|p| p.exists())
    })
}

/// Runs a PostgreSQL program, as the `postgres` user when this process is root.
fn pg_command(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run_ok(mut c: Command, what: &str) -> Output {
    let out = c
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A PostgreSQL cluster in a temporary directory.
pub struct PgCluster {
    pub dir: tempfile::TempDir,
    pub port: u16,
    bin: PathBuf,
}

impl PgCluster {
    /// initdb (trust auth, superuser `postgres`), extra `postgresql.conf` lines, start.
    pub fn start(extra_conf: &[&str]) -> PgCluster {
        let bin = pg_bin();
        let dir = tempfile::Builder::new()
            .prefix("bellwether-pg")
            .tempdir()
            .unwrap();
        if is_root() {
            run_ok(
                {
                    let mut c = Command::new("chown");
                    c.arg("postgres:postgres").arg(dir.path());
                    c
                },
                "chown",
            );
        }
        let data = dir.path().join("data");
        let mut c = pg_command(&bin.join("initdb"));
        c.arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"]);
        run_ok(c, "initdb");
        let mut conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 200\n",
            dir.path().display()
        );
        for l in extra_conf {
            conf.push_str(l);
            conf.push('\n');
        }
        let conf_path = data.join("postgresql.conf");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&conf_path)
            .unwrap();
        f.write_all(conf.as_bytes()).unwrap();
        // The port goes in postgresql.auto.conf, rewritten per attempt: another test may take
        // a free port between our probe and the server's bind, and then we try another.
        let mut cluster = PgCluster { dir, port: 0, bin };
        for attempt in 0..5 {
            cluster.port = free_port();
            std::fs::write(
                data.join("postgresql.auto.conf"),
                format!("port = {}\n", cluster.port),
            )
            .unwrap();
            let mut c = pg_command(&cluster.bin.join("pg_ctl"));
            c.arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(cluster.dir.path().join("log"))
                .args(["-w", "-t", "60", "start"]);
            match c.output() {
                Ok(out) if out.status.success() => return cluster,
                Ok(out) if attempt < 4 => {
                    eprintln!(
                        "pg_ctl start on port {} failed, retrying: {}",
                        cluster.port,
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                other => panic!(
                    "pg_ctl start failed: {other:?}\n{}",
                    std::fs::read_to_string(cluster.dir.path().join("log")).unwrap_or_default()
                ),
            }
        }
        unreachable!("the last attempt panics or returns")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The argv that runs `pg_ctl` on this cluster with these arguments (as `postgres` when
    /// root), for plans that start and stop an instance.
    pub fn pg_ctl_argv(&self, args: &[&str]) -> Vec<String> {
        let mut v = Vec::new();
        if is_root() {
            v.extend(["runuser", "-u", "postgres", "--"].map(String::from));
        }
        v.push(self.bin.join("pg_ctl").display().to_string());
        v.push("-D".into());
        v.push(self.data_dir().display().to_string());
        v.extend(args.iter().map(|a| a.to_string()));
        v
    }

    /// Appends lines to `postgresql.conf` (they apply at the next start).
    pub fn append_conf(&self, lines: &[&str]) {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.data_dir().join("postgresql.conf"))
            .unwrap();
        for l in lines {
            writeln!(f, "{l}").unwrap();
        }
    }

    pub fn pg_ctl_start(&self) {
        let mut c = pg_command(&self.bin.join("pg_ctl"));
        c.arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.dir.path().join("log"))
            .args(["-w", "-t", "60", "start"]);
        run_ok(c, "pg_ctl start");
    }

    pub fn stop(&self) {
        let mut c = pg_command(&self.bin.join("pg_ctl"));
        c.arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "-w", "stop"]);
        let _ = c.stdout(Stdio::null()).stderr(Stdio::null()).status();
    }

    /// The postmaster's PID, from `postmaster.pid`.
    pub fn pid(&self) -> u32 {
        let text = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).unwrap();
        text.lines().next().unwrap().trim().parse().unwrap()
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Runs SQL with psql and returns its unaligned output.
    pub fn psql(&self, sql: &str) -> String {
        let mut c = Command::new(client_bin("psql", "postgresql-client"));
        c.args([
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-p",
        ])
        .arg(self.port.to_string())
        .args(["-c", sql]);
        String::from_utf8_lossy(&run_ok(c, "psql").stdout)
            .trim()
            .to_string()
    }

    /// Gives `postgres` a password and makes TCP connections authenticate with SCRAM-SHA-256
    /// (the unix socket stays trusted).
    pub fn require_scram(&self, password: &str) {
        self.psql("SET password_encryption = 'scram-sha-256'");
        self.psql(&format!("ALTER USER postgres PASSWORD '{password}'"));
        std::fs::write(
            self.data_dir().join("pg_hba.conf"),
            "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n",
        )
        .unwrap();
        self.psql("SELECT pg_reload_conf()");
    }

    /// `pgbench -i` at scale 1.
    pub fn pgbench_init(&self) {
        let mut c = Command::new(client_bin("pgbench", "postgresql-contrib"));
        c.args([
            "-i",
            "-q",
            "-s",
            "1",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-p",
        ])
        .arg(self.port.to_string())
        .arg("postgres");
        run_ok(c, "pgbench -i");
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What pgbench reported.
#[derive(Debug)]
pub struct PgbenchResult {
    pub processed: u64,
    pub failed: u64,
    pub aborted_clients: bool,
    pub tps: f64,
    pub latency_ms: f64,
    pub stdout: String,
    pub stderr: String,
    pub success: bool,
}

/// Parses pgbench's summary.
pub fn parse_pgbench(out: &Output) -> PgbenchResult {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let num_after = |key: &str| -> Option<f64> {
        stdout.lines().find_map(|l| {
            let rest = l.trim().strip_prefix(key)?;
            rest.trim().split(['/', ' ']).next()?.parse().ok()
        })
    };
    PgbenchResult {
        processed: num_after("number of transactions actually processed:").unwrap_or(0.0) as u64,
        failed: num_after("number of failed transactions:").unwrap_or(0.0) as u64,
        aborted_clients: stderr.contains("aborted") || stdout.contains("aborted"),
        tps: num_after("tps =").unwrap_or(0.0),
        latency_ms: num_after("latency average =").unwrap_or(0.0),
        success: out.status.success(),
        stdout,
        stderr,
    }
}

/// A Redis server on a free port, without persistence.
pub struct Redis {
    pub port: u16,
    child: Child,
}

impl Redis {
    pub fn start() -> Redis {
        Redis::start_with(&[])
    }

    /// A replica of the server on `primary_port`.
    pub fn replica_of(primary_port: u16) -> Redis {
        Redis::start_with(&["--replicaof", "127.0.0.1", &primary_port.to_string()])
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Sends a signal (`KILL`, `STOP`, `CONT`) to the server.
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(st.success(), "kill -{sig} failed");
    }

    /// Starts a server with extra arguments.
    pub fn start_with(extra: &[&str]) -> Redis {
        let bin = which("redis-server").unwrap_or_else(|| {
            panic!("`redis-server` is not installed: install the Debian package `redis-server`")
        });
        let port = free_port();
        let child = Command::new(bin)
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
            .args(extra)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        // Dropping the guard kills the server if it never comes up.
        let redis = Redis { port, child };
        for _ in 0..500 {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return redis;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server did not listen on port {port}");
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal blocking PostgreSQL client: enough to start a session and run simple queries.
pub struct MiniClient {
    pub s: TcpStream,
    /// The BackendKeyData the session was given (process id, secret key).
    pub key: Option<(i32, i32)>,
}

/// One backend message.
#[derive(Debug, Clone)]
pub struct Msg {
    pub tag: u8,
    pub body: Vec<u8>,
}

impl MiniClient {
    pub fn connect(addr: &str) -> MiniClient {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(&pg::encode_startup(&[
            ("user".into(), "postgres".into()),
            ("database".into(), "postgres".into()),
        ]))
        .unwrap();
        let mut c = MiniClient { s, key: None };
        let msgs = c.read_until_ready().expect("startup");
        c.key = msgs
            .iter()
            .find(|m| m.tag == b'K' && m.body.len() == 8)
            .map(|m| {
                let b = &m.body;
                (
                    i32::from_be_bytes([b[0], b[1], b[2], b[3]]),
                    i32::from_be_bytes([b[4], b[5], b[6], b[7]]),
                )
            });
        assert!(
            msgs.iter().any(|m| m.tag == b'R'),
            "no authentication message: {msgs:?}"
        );
        c
    }

    pub fn read_msg(&mut self) -> std::io::Result<Msg> {
        let mut head = [0u8; 5];
        self.s.read_exact(&mut head)?;
        let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len - 4];
        self.s.read_exact(&mut body)?;
        Ok(Msg { tag: head[0], body })
    }

    pub fn read_until_ready(&mut self) -> std::io::Result<Vec<Msg>> {
        let mut out = Vec::new();
        loop {
            let m = self.read_msg()?;
            let done = m.tag == b'Z';
            out.push(m);
            if done {
                return Ok(out);
            }
        }
    }

    /// Runs one query; returns the first column of each row, or the error message.
    pub fn query(&mut self, sql: &str) -> Result<Vec<String>, String> {
        self.s
            .write_all(&pg::encode_query(sql))
            .map_err(|e| e.to_string())?;
        let msgs = self.read_until_ready().map_err(|e| e.to_string())?;
        if let Some(e) = msgs.iter().find(|m| m.tag == b'E') {
            return Err(pg::error_field(&e.body, b'M').unwrap_or_default());
        }
        Ok(msgs
            .iter()
            .filter(|m| m.tag == b'D')
            .map(|m| {
                let len = i32::from_be_bytes([m.body[2], m.body[3], m.body[4], m.body[5]]) as usize;
                String::from_utf8_lossy(&m.body[6..6 + len]).into_owned()
            })
            .collect())
    }
}

/// Sends one raw HTTP/1.1 request (written as given, `Connection: close` expected in it) and
/// returns the status, the response head and the body. A connection closed without an answer
/// (a handler that panicked) fails the test.
pub fn http_raw(addr: std::net::SocketAddr, request: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(
        out.starts_with("HTTP/1.1 "),
        "no HTTP answer to {request:?}: {out:?}"
    );
    let status = out[9..12].parse().unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (status, head.to_string(), body.to_string())
}

/// An admin API request as a client should send it: `Host` the address, the bearer token
/// when given, and `Content-Type: application/json` with a body.
pub fn admin_http(
    addr: std::net::SocketAddr,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let ct = if body.is_empty() {
        ""
    } else {
        "Content-Type: application/json\r\n"
    };
    let (status, _, body) = http_raw(
        addr,
        &format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}{ct}Connection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    (status, body)
}
