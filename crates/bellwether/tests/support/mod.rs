//! Helpers for the end-to-end tests: real `bellwether` processes on loopback, a guard that
//! kills them when a test fails, and polling with deadlines (never fixed sleeps).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use bellwether_model::{DriftScore, HostProfile};

pub const EXE: &str = env!("CARGO_BIN_EXE_bellwether");
pub const POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A child process that is killed (and reaped) when dropped, so a failing test leaves
/// nothing running.
pub struct Guard {
    pub child: Option<Child>,
    pub what: String,
    pub log: PathBuf,
}

impl Guard {
    pub fn spawn(what: &str, args: &[&str], envs: &[(&str, &str)], log: &Path) -> Guard {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let err = out.try_clone().unwrap();
        let mut cmd = Command::new(EXE);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .env("NO_COLOR", "1");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {what}: {e}"));
        Guard {
            child: Some(child),
            what: what.to_owned(),
            log: log.to_owned(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Fails the test if the process has exited, with its log.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
            panic!(
                "{} exited ({status}); its log:\n{}",
                self.what,
                self.log_text()
            );
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!("{} did not exit within {within:?} of SIGTERM", self.what);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `f` every 100 ms until it returns `Some`, failing with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Which store the server uses.
#[derive(Debug, Clone)]
pub enum Backend {
    Sqlite,
    /// A PostgreSQL schema of its own, dropped when the test ends.
    Postgres {
        schema: String,
    },
}

impl Backend {
    pub fn postgres(test: &str) -> Backend {
        if std::net::TcpStream::connect_timeout(
            &"127.0.0.1:5432".parse().unwrap(),
            Duration::from_secs(2),
        )
        .is_err()
        {
            panic!(
                "PostgreSQL is not reachable at 127.0.0.1:5432; these tests need it (database `test`, \
                 user postgres, trust auth). Start it with `pg_ctlcluster 15 main start` (or run `.ci/run`, \
                 which starts it), or install it with `apt-get install postgresql`"
            );
        }
        let schema = format!("e2e_{test}_{}_{}", std::process::id(), rand_suffix());
        Backend::Postgres { schema }
    }
}

fn rand_suffix() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    t.subsec_nanos() % 1_000_000
}

/// Creates (and migrates) `schema` in the test database, on a thread of its own so it can be
/// called from inside a tokio test.
fn create_postgres_schema(schema: &str) {
    let schema = schema.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let config = bellwether_store::StoreConfig::Postgres {
                url: POSTGRES_URL.into(),
                schema: Some(schema.clone()),
            };
            let store = bellwether_store::Store::open(&config)
                .await
                .unwrap_or_else(|e| {
                    panic!("could not create schema {schema} in {POSTGRES_URL}: {e}")
                });
            store.close().await;
        })
    })
    .join()
    .unwrap();
}

pub struct Server {
    pub guard: Guard,
    pub addr: String,
    pub url: String,
    pub operator_token: String,
    pub enrol_token: String,
    pub data_dir: PathBuf,
    pub backend: Backend,
}

impl Server {
    /// Starts `bellwether server` on `listen` (use `127.0.0.1:0` for a free port) and waits
    /// for its address file.
    pub fn start(
        dir: &Path,
        backend: &Backend,
        listen: &str,
        operator_token: &str,
        enrol_token: &str,
    ) -> Server {
        Server::start_with(dir, backend, listen, operator_token, enrol_token, &[])
    }

    /// [`Server::start`] with more `server` flags (e.g. `--proxy-token-file NAME=FILE`).
    pub fn start_with(
        dir: &Path,
        backend: &Backend,
        listen: &str,
        operator_token: &str,
        enrol_token: &str,
        extra: &[&str],
    ) -> Server {
        let data_dir = dir.join("server");
        std::fs::create_dir_all(&data_dir).unwrap();
        // Drops the test's schema if the server fails to start (once it has started, the
        // `Server`'s own `Drop` does).
        let mut schema_guard: Option<SchemaGuard> = None;
        let addr_file = dir.join("server.addr");
        let _ = std::fs::remove_file(&addr_file);
        let mut args: Vec<String> = vec![
            "--log".into(),
            "info".into(),
            "server".into(),
            "--listen".into(),
            listen.into(),
            "--addr-file".into(),
            addr_file.display().to_string(),
        ];
        match backend {
            Backend::Sqlite => args.extend(["--data-dir".into(), data_dir.display().to_string()]),
            Backend::Postgres { schema } => {
                // The server takes a plain URL; the test's own schema (created and migrated
                // here, dropped by `Drop`) is selected through the connection's search_path.
                create_postgres_schema(schema);
                schema_guard = Some(SchemaGuard(schema.clone()));
                args.extend([
                    "--data-dir".into(),
                    data_dir.display().to_string(),
                    "--database".into(),
                    format!("{POSTGRES_URL}?options=-c%20search_path%3D{schema}"),
                ])
            }
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let log = dir.join("server.log");
        let mut guard = Guard::spawn(
            "server",
            &argv,
            &[
                ("BELLWETHER_OPERATOR_TOKEN", operator_token),
                ("BELLWETHER_ENROL_TOKEN", enrol_token),
            ],
            &log,
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            if let Ok(a) = std::fs::read_to_string(&addr_file) {
                if !a.trim().is_empty() {
                    break a.trim().to_owned();
                }
            }
            guard.assert_running();
            assert!(
                Instant::now() < deadline,
                "the server did not write its address; log:\n{}",
                guard.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(g) = schema_guard.take() {
            std::mem::forget(g);
        }
        Server {
            guard,
            url: format!("http://{addr}"),
            addr,
            operator_token: operator_token.into(),
            enrol_token: enrol_token.into(),
            data_dir,
            backend: backend.clone(),
        }
    }

    pub fn api(&self) -> Api {
        Api {
            client: reqwest::Client::new(),
            base: self.url.clone(),
            token: self.operator_token.clone(),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.guard.kill();
        if let Backend::Postgres { schema } = &self.backend {
            drop_schema(schema);
        }
    }
}

struct SchemaGuard(String);

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        drop_schema(&self.0);
    }
}

fn drop_schema(schema: &str) {
    let schema = schema.to_owned();
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _ = rt.block_on(bellwether_store::drop_postgres_schema(
            POSTGRES_URL,
            &schema,
        ));
    })
    .join();
}

pub struct Api {
    pub client: reqwest::Client,
    pub base: String,
    pub token: String,
}

impl Api {
    /// GET returning the status and the body as JSON (or `Null`).
    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        match self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
        {
            Ok(r) => {
                let status = r.status().as_u16();
                (status, r.json().await.unwrap_or(serde_json::Value::Null))
            }
            Err(_) => (0, serde_json::Value::Null),
        }
    }

    pub async fn post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    pub async fn profile(&self, host: &str) -> Option<HostProfile> {
        match self.get(&format!("/api/v1/hosts/{host}/profile")).await {
            (200, v) => Some(serde_json::from_value(v).expect("a HostProfile")),
            _ => None,
        }
    }

    pub async fn drift(&self, host: &str) -> Option<DriftScore> {
        match self.get(&format!("/api/v1/hosts/{host}/drift")).await {
            (200, v) => Some(serde_json::from_value(v).expect("a DriftScore")),
            _ => None,
        }
    }

    /// Waits until the server has heard from each of `hosts` for at least `span`: its latest
    /// report at least `span` after its enrolment, both by the server's clock. A rollout seeds
    /// every host's pre-change baseline from the samples stored before it starts, so this is
    /// the history a baseline of `span` needs.
    pub async fn wait_for_history(&self, hosts: &[&str], span: Duration, timeout: Duration) {
        let span_ms = span.as_millis() as i64;
        for h in hosts {
            eventually(
                &format!("{span:?} of reports from {h}"),
                timeout,
                || async {
                    let (status, v) = self.get(&format!("/api/v1/hosts/{h}")).await;
                    let (enrolled, seen) =
                        (v["enrolled_at_ms"].as_i64(), v["last_seen_ms"].as_i64());
                    (status == 200 && seen.zip(enrolled).is_some_and(|(s, e)| s - e >= span_ms))
                        .then_some(())
                },
            )
            .await;
        }
    }

    pub async fn metrics(&self) -> String {
        let r = self
            .client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap();
        r.text().await.unwrap()
    }
}

/// Starts an agent for the host root `root`, collecting every `interval`.
pub fn start_agent(
    dir: &Path,
    server: &Server,
    name: &str,
    root: &Path,
    interval: &str,
    extra: &[&str],
) -> Guard {
    let mut args = vec![
        "--log",
        "info",
        "agent",
        "--server",
        &server.url,
        "--token",
        &server.enrol_token,
        "--rootfs",
        root.to_str().unwrap(),
        "--name",
        name,
        "--label",
        "role=web",
        "--interval",
        interval,
        "--max-backoff",
        "500ms",
    ];
    args.extend_from_slice(extra);
    Guard::spawn(
        &format!("agent {name}"),
        &args,
        &[],
        &dir.join(format!("agent-{name}.log")),
    )
}

/// Runs `bellwether ARGS…` to completion.
pub fn run(args: &[&str]) -> Output {
    Command::new(EXE)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Live (non-zombie) processes whose command line mentions `marker`.
pub fn processes_mentioning(marker: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().next().map(str::to_owned));
        if matches!(state.as_deref(), Some("Z") | Some("X") | None) {
            continue;
        }
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            if String::from_utf8_lossy(&cmd).contains(marker) {
                out.push(pid);
            }
        }
    }
    out
}

/// Stops the sandbox in a directory when dropped, so a failing test leaves no process behind.
pub struct Down<'a>(pub &'a Path);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = run(&[
            "sandbox",
            "down",
            "--dir",
            self.0.to_str().unwrap(),
            "--grace",
            "1s",
        ]);
    }
}

static ONE_SANDBOX_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Each sandbox test runs a whole fleet (server, services, agents); on a 2-core machine two at
/// once starve each other's agents of samples, so the sandbox tests of one file take turns.
pub fn one_sandbox_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_SANDBOX_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The address and operator token of the sandbox in `dir`, as `BELLWETHER_SERVER` and
/// `BELLWETHER_TOKEN` want them.
pub fn sandbox_server_env(dir: &Path) -> (String, String) {
    let server = std::fs::read_to_string(dir.join("server.addr")).unwrap();
    let token = std::fs::read_to_string(dir.join("operator.token")).unwrap();
    (
        format!("http://{}", server.trim()),
        token.trim().to_string(),
    )
}

/// Runs `bellwether ARGS` against the sandbox's server in `dir`.
pub fn sandbox_cli(dir: &Path, args: &[&str]) -> Output {
    let (url, token) = sandbox_server_env(dir);
    Command::new(EXE)
        .args(args)
        .env("BELLWETHER_SERVER", url)
        .env("BELLWETHER_TOKEN", token)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Panics with both outputs unless the command succeeded.
pub fn assert_ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `rollout start PLAN --wait` on the sandbox in `dir`, then its JSON report: `(id, report)`.
pub fn rollout_to_report(dir: &Path, plan: &Path) -> (String, serde_json::Value) {
    let start = sandbox_cli(dir, &["rollout", "start", plan.to_str().unwrap(), "--wait"]);
    let out = String::from_utf8_lossy(&start.stdout).to_string();
    let id = out
        .split_whitespace()
        .find(|w| w.starts_with("r-"))
        .map(|w| w.trim_end_matches('.').to_string())
        .unwrap_or_else(|| {
            panic!(
                "no rollout id in:\n{out}\n{}",
                String::from_utf8_lossy(&start.stderr)
            )
        });
    let report = sandbox_cli(dir, &["rollout", "report", &id, "--output", "json"]);
    assert_ok("rollout report", &report);
    (id, serde_json::from_slice(&report.stdout).unwrap())
}

/// `sandbox up --scenario` with `scenario` (YAML text) in `tmp/sbx`; returns that directory.
/// A failed `up` stops what it started before it exits, so nothing is left behind.
pub fn sandbox_up_with(tmp: &Path, scenario: &str) -> PathBuf {
    let dir = tmp.join("sbx");
    let file = tmp.join("scenario.yaml");
    std::fs::write(&file, scenario).unwrap();
    let up = run(&[
        "sandbox",
        "up",
        "--scenario",
        file.to_str().unwrap(),
        "--dir",
        dir.to_str().unwrap(),
    ]);
    assert_ok("sandbox up", &up);
    dir
}

/// `rollout start PLAN` (without waiting) on the sandbox in `dir`; returns the rollout's id.
pub fn rollout_start(dir: &Path, plan: &Path) -> String {
    let start = sandbox_cli(dir, &["rollout", "start", plan.to_str().unwrap()]);
    assert_ok("rollout start", &start);
    let out = String::from_utf8_lossy(&start.stdout).to_string();
    out.split_whitespace()
        .find(|w| w.starts_with("r-"))
        .map(|w| w.trim_end_matches('.').to_string())
        .unwrap_or_else(|| panic!("no rollout id in:\n{out}"))
}

/// Several server replicas on one PostgreSQL store (tests/ha.rs and the mid-patch kill test).
pub mod cluster;
pub mod proxy;
