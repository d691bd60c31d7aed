//! What the server-driven patch tests share (`patch_server.rs`, `ha_patch.rs`): real processes
//! killed on drop, a blocking HTTP client, the agent of host `db1` allowed the three process
//! built-ins, and [`PgPair`]: two PostgreSQL clusters (the patched one optionally with a bad
//! configuration), a long-running `bellwether proxy` with both as backends, and the patch plan.
#![allow(dead_code)]

#[path = "../../../bellwether-proxy/tests/support/mod.rs"]
pub mod pgsupport;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pgsupport::{client_bin, free_port, PgCluster};
use serde_json::Value;

pub const EXE: &str = env!("CARGO_BIN_EXE_bellwether");
pub const OPERATOR: &str = "op-token-0123456789abcdef0123456789";
pub const ENROL: &str = "enrol-token-0123456789abcdef01234567";

/// A child process killed (and reaped) when dropped.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn spawn_logged(args: &[String], log: &Path) -> KillOnDrop {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    KillOnDrop(
        Command::new(EXE)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .env("NO_COLOR", "1")
            .env("BELLWETHER_OPERATOR_TOKEN", OPERATOR)
            .env("BELLWETHER_ENROL_TOKEN", ENROL)
            .env_remove("BELLWETHER_DATABASE")
            .spawn()
            .unwrap(),
    )
}

pub fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn yaml_list(v: &[String]) -> String {
    format!(
        "[{}]",
        v.iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// A blocking HTTP client over a small runtime of its own.
pub struct Http {
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
}

impl Http {
    pub fn new() -> Http {
        Http {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            // No kept-alive connections: the server is killed and started again.
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(40))
                .build()
                .unwrap(),
        }
    }

    pub fn call(&self, method: &str, url: &str, token: &str, body: Option<&Value>) -> (u16, Value) {
        self.rt.block_on(async {
            let mut req = match method {
                "GET" => self.client.get(url),
                _ => self.client.post(url),
            }
            .bearer_auth(token);
            if let Some(b) = body {
                req = req.json(b);
            }
            match req.send().await {
                Ok(r) => {
                    let status = r.status().as_u16();
                    (status, r.json().await.unwrap_or(Value::Null))
                }
                Err(_) => (0, Value::Null),
            }
        })
    }
}

/// The real agent of host `db1`, allowed the three process built-ins only.
pub fn start_agent(url: &str, dir: &Path) -> KillOnDrop {
    let state = dir.join("agent");
    spawn_logged(
        &[
            "--log",
            "info",
            "agent",
            "--server",
            url,
            "--token",
            ENROL,
            "--name",
            "db1",
            "--state-dir",
            &state.display().to_string(),
            "--interval",
            "5s",
            "--max-backoff",
            "500ms",
            "--allow-action",
            "start_process",
            "--allow-action",
            "stop_process",
            "--allow-action",
            "sample_processes",
        ]
        .map(String::from),
        &dir.join("agent.log"),
    )
}

/// How many actions of built-in `kind` the agent's journal records (each ran once).
pub fn journal_count(dir: &Path, kind: &str) -> usize {
    let text = std::fs::read_to_string(dir.join("agent").join("actions.json")).unwrap_or_default();
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    v["entries"]
        .as_object()
        .map(|m| m.values().filter(|e| e["spec"]["builtin"] == kind).count())
        .unwrap_or(0)
}

/// Two clusters, the proxy with both (the patched one takes no traffic) and the plan.
pub struct PgPair {
    pub proxy: KillOnDrop,
    pub http: Http,
    pub dir: tempfile::TempDir,
    pub original: PgCluster,
    pub patched: PgCluster,
    pub listen: u16,
    pub admin: u16,
    pub token_file: PathBuf,
    pub proxy_log: PathBuf,
    pub plan: String,
    pub plan_path: PathBuf,
}

impl PgPair {
    /// Two clusters (the patched one with index scans off when `bad`) and the proxy with
    /// both; the plan written with `bake` as its bake time.
    pub fn start(bad: bool, bake: &str) -> PgPair {
        let original = PgCluster::start(&[]);
        original.pgbench_init();
        let patched = PgCluster::start(&[]);
        patched.pgbench_init();
        if bad {
            patched.append_conf(&[
                "enable_indexscan = off",
                "enable_bitmapscan = off",
                "enable_indexonlyscan = off",
            ]);
        }
        patched.stop();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();

        // The long-running proxy, with both instances; the patched one takes no traffic.
        let (listen, admin) = (free_port(), free_port());
        let token_file = d.join("proxy-admin.token");
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&token_file)
                .unwrap();
            writeln!(f, "proxy-admin-token-0123456789abcdef").unwrap();
        }
        std::fs::write(
            d.join("proxy.yaml"),
            format!(
                r#"listeners: [{{ address: "127.0.0.1:{listen}", protocol: postgres }}]
backends:
  - {{ name: original, address: "{orig}" }}
  - {{ name: patched, address: "{pat}", weight: 0 }}
admin: "127.0.0.1:{admin}"
admin_token_file: "{tf}"
health: {{ check: postgres, interval: 200ms, rise: 2, user: postgres, database: postgres }}
"#,
                orig = original.addr(),
                pat = patched.addr(),
                tf = token_file.display()
            ),
        )
        .unwrap();
        let proxy_log = d.join("proxy.log");
        let proxy = spawn_logged(
            &[
                "--log".into(),
                "info".into(),
                "proxy".into(),
                "--config".into(),
                d.join("proxy.yaml").display().to_string(),
            ],
            &proxy_log,
        );
        wait_for("the proxy to listen", Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", listen)).is_ok()
                && std::net::TcpStream::connect(("127.0.0.1", admin)).is_ok()
        });

        let plan = format!(
            r#"name: pg-config-patch
proxy:
  listen: "127.0.0.1:{listen}"
  admin: "127.0.0.1:{admin}"
original:
  address: "{orig}"
  pidfile: "{orig_pidfile}"
patched:
  address: "{patched_addr}"
  start: {start}
  stop: {stop}
  pidfile: "{patched_pidfile}"
health:
  check: postgres
  interval: 200ms
  rise: 2
  timeout: 60s
metrics:
  - {{ metric: latency_p50, threshold_pct: 100, duration: 1s, weight: 2 }}
  - {{ metric: latency_p99, threshold_pct: 200, duration: 1s, weight: 2 }}
  - {{ metric: error_rate, threshold_pct: 100, duration: 1s, weight: 1, critical: true }}
  - {{ metric: cpu, threshold_pct: 1000, duration: 5s, weight: 0 }}
sample_interval: 500ms
baseline_window: 3s
bake_time: {bake}
drain_timeout: 10s
severity_threshold: 0.3
"#,
            orig = original.addr(),
            orig_pidfile = original.data_dir().join("postmaster.pid").display(),
            patched_addr = patched.addr(),
            start = yaml_list(&patched.pg_ctl_argv(&[
                "-l",
                &patched.dir.path().join("log").display().to_string(),
                "-w",
                "-t",
                "60",
                "start"
            ])),
            stop = yaml_list(&patched.pg_ctl_argv(&["-m", "fast", "-w", "stop"])),
            patched_pidfile = patched.data_dir().join("postmaster.pid").display(),
        );
        let plan_path = d.join("patch.yaml");
        std::fs::write(&plan_path, &plan).unwrap();
        PgPair {
            proxy,
            http: Http::new(),
            dir,
            original,
            patched,
            listen,
            admin,
            token_file,
            proxy_log,
            plan,
            plan_path,
        }
    }

    pub fn d(&self) -> &Path {
        self.dir.path()
    }

    /// pgbench through the proxy for `seconds`, 4 clients, simple protocol.
    pub fn pgbench(&self, seconds: u32) -> Child {
        Command::new(client_bin("pgbench", "postgresql-contrib"))
            .args([
                "-n",
                "-c",
                "4",
                "-j",
                "2",
                "-T",
                &seconds.to_string(),
                "-M",
                "simple",
            ])
            .args(["-h", "127.0.0.1", "-U", "postgres", "-p"])
            .arg(self.listen.to_string())
            .arg("postgres")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// The proxy's view of backend `name`.
    pub fn backend(&self, name: &str) -> Value {
        let token = std::fs::read_to_string(&self.token_file).unwrap();
        let (_, backends) = self.http.call(
            "GET",
            &format!("http://127.0.0.1:{}/backends", self.admin),
            token.trim(),
            None,
        );
        backends
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == name)
            .cloned()
            .unwrap()
    }
}
