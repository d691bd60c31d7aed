//! Several `bellwether server` replicas on one PostgreSQL store (a schema of the test's own):
//! start them, find the leader, kill or pause it, and read the shared store. Every wait polls
//! with a deadline.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{create_postgres_schema, drop_schema, Guard, POSTGRES_URL};

/// One replica: its process, URL and directory (`DIR/replica-N`).
pub struct Replica {
    pub guard: Guard,
    pub url: String,
    pub dir: PathBuf,
}

/// N replicas sharing one schema; dropped: every process killed, the schema dropped.
pub struct Cluster {
    pub schema: String,
    pub replicas: Vec<Replica>,
    pub operator_token: String,
    pub enrol_token: String,
    dir: PathBuf,
    extra: Vec<String>,
    /// With TLS: (CA, server certificate, key) every replica serves with and trusts.
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
    http: Http,
}

/// What `/healthz` says about leadership.
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    pub leads: bool,
    pub epoch: Option<i64>,
    pub leader: Option<String>,
}

impl Cluster {
    /// Starts `n` replicas on a fresh schema named after `test`: replica 0 first, waited for
    /// until it leads, then the others (followers). `extra` is added to every server's
    /// arguments (such as `--lease-ttl 2s`).
    pub fn start(
        dir: &Path,
        test: &str,
        n: usize,
        operator: &str,
        enrol: &str,
        extra: &[&str],
    ) -> Cluster {
        Cluster::start_with(dir, test, n, operator, enrol, extra, None)
    }

    /// As [`Cluster::start`], every replica serving HTTPS with `server_cert`/`server_key` and
    /// trusting `ca` when it forwards to the leader (`--replica-ca-file`).
    pub fn start_tls(
        dir: &Path,
        test: &str,
        n: usize,
        operator: &str,
        enrol: &str,
        extra: &[&str],
        (ca, server_cert, server_key): (&Path, &Path, &Path),
    ) -> Cluster {
        let tls = Some((
            ca.to_path_buf(),
            server_cert.to_path_buf(),
            server_key.to_path_buf(),
        ));
        Cluster::start_with(dir, test, n, operator, enrol, extra, tls)
    }

    fn start_with(
        dir: &Path,
        test: &str,
        n: usize,
        operator: &str,
        enrol: &str,
        extra: &[&str],
        tls: Option<(PathBuf, PathBuf, PathBuf)>,
    ) -> Cluster {
        let schema = match super::Backend::postgres(test) {
            super::Backend::Postgres { schema } => schema,
            super::Backend::Sqlite => unreachable!(),
        };
        create_postgres_schema(&schema);
        let mut c = Cluster {
            schema,
            replicas: Vec::new(),
            operator_token: operator.into(),
            enrol_token: enrol.into(),
            dir: dir.to_path_buf(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            http: Http::new(tls.as_ref().map(|(ca, _, _)| ca.as_path())),
            tls,
        };
        for i in 0..n {
            c.add_replica();
            if i == 0 {
                c.wait_leader(&[], Duration::from_secs(30));
            }
        }
        c
    }

    /// `postgres://…` selecting the cluster's schema.
    pub fn database_url(&self) -> String {
        format!("{POSTGRES_URL}?options=-c%20search_path%3D{}", self.schema)
    }

    /// Starts one more replica and waits for its address; returns its index.
    pub fn add_replica(&mut self) -> usize {
        let i = self.replicas.len();
        let dir = self.dir.join(format!("replica-{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let addr_file = dir.join("server.addr");
        let _ = std::fs::remove_file(&addr_file);
        let db = self.database_url();
        let mut args: Vec<String> = vec![
            "--log".into(),
            "info".into(),
            "server".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--addr-file".into(),
            addr_file.display().to_string(),
            "--data-dir".into(),
            dir.display().to_string(),
            "--database".into(),
            db,
        ];
        if let Some((ca, cert, key)) = &self.tls {
            for (flag, path) in [
                ("--tls-cert", cert),
                ("--tls-key", key),
                ("--replica-ca-file", ca),
            ] {
                args.extend([flag.to_string(), path.display().to_string()]);
            }
        }
        args.extend(self.extra.iter().cloned());
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut guard = Guard::spawn(
            &format!("replica {i}"),
            &argv,
            &[
                ("BELLWETHER_OPERATOR_TOKEN", self.operator_token.as_str()),
                ("BELLWETHER_ENROL_TOKEN", self.enrol_token.as_str()),
            ],
            &dir.join("server.log"),
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
                "replica {i} did not write its address; log:\n{}",
                guard.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        self.replicas.push(Replica {
            guard,
            url: format!("{scheme}://{addr}"),
            dir,
        });
        i
    }

    /// Replica `i`'s `/healthz`, `None` when it does not answer within a second.
    pub fn health(&self, i: usize) -> Option<Health> {
        let v = self
            .http
            .get_json(&format!("{}/healthz", self.replicas[i].url))?;
        Some(Health {
            leads: v["role"] == "leader",
            epoch: v["epoch"].as_i64(),
            leader: v["leader"].as_str().map(str::to_string),
        })
    }

    /// The replicas (among those still running) that say they lead, with their epochs.
    pub fn leaders(&self, among: &[usize]) -> Vec<(usize, i64)> {
        among
            .iter()
            .filter_map(|&i| {
                let h = self.health(i)?;
                h.leads.then(|| (i, h.epoch.unwrap_or(-1)))
            })
            .collect()
    }

    /// Polls every 20 ms until one replica not in `except` leads; returns it, its epoch and
    /// how long it took. Fails if two say they lead at once.
    pub fn wait_leader(&self, except: &[usize], within: Duration) -> (usize, i64, Duration) {
        let started = Instant::now();
        let among: Vec<usize> = (0..self.replicas.len())
            .filter(|i| !except.contains(i))
            .collect();
        loop {
            let leaders = self.leaders(&among);
            assert!(leaders.len() <= 1, "two replicas lead at once: {leaders:?}");
            if let Some(&(i, epoch)) = leaders.first() {
                return (i, epoch, started.elapsed());
            }
            assert!(
                started.elapsed() < within,
                "no replica of {among:?} led within {within:?}; logs:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// POST `path` on replica `i` with the operator token: status and headers.
    pub fn post(&self, i: usize, path: &str) -> Option<(u16, reqwest::header::HeaderMap)> {
        self.http.post(
            &format!("{}{path}", self.replicas[i].url),
            &self.operator_token,
        )
    }

    /// SIGKILL replica `i` (and reap it).
    pub fn kill(&mut self, i: usize) {
        self.replicas[i].guard.kill();
    }

    /// SIGSTOP replica `i`: it is frozen, sockets and all, until [`Cluster::resume`].
    pub fn pause(&self, i: usize) {
        self.signal(i, nix::sys::signal::Signal::SIGSTOP);
    }

    /// SIGCONT replica `i`.
    pub fn resume(&self, i: usize) {
        self.signal(i, nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, i: usize, sig: nix::sys::signal::Signal) {
        let pid = self.replicas[i].guard.pid();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig)
            .unwrap_or_else(|e| panic!("could not send {sig} to replica {i}: {e}"));
    }

    /// Replica `i`'s log so far.
    pub fn log(&self, i: usize) -> String {
        self.replicas[i].guard.log_text()
    }

    /// Every replica's log, for a failure message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (i, r) in self.replicas.iter().enumerate() {
            let log = r.guard.log_text();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            out.push_str(&format!("--- replica {i} ({}), last lines:\n", r.url));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// Runs `body` with an open handle on the cluster's store (on a thread of its own, so it
    /// can be called from anywhere).
    pub fn with_store<T: Send + 'static>(
        &self,
        body: impl FnOnce(
                bellwether_store::Store,
            ) -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>
            + Send
            + 'static,
    ) -> T {
        let config = bellwether_store::StoreConfig::Postgres {
            url: POSTGRES_URL.into(),
            schema: Some(self.schema.clone()),
        };
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let store = bellwether_store::Store::open(&config).await.unwrap();
                let out = body(store.clone()).await;
                store.close().await;
                out
            })
        })
        .join()
        .unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for r in &mut self.replicas {
            // A paused process takes SIGKILL too.
            r.guard.kill();
        }
        drop_schema(&self.schema);
    }
}

/// A tiny blocking JSON GET over a current-thread runtime (the tests are synchronous).
pub struct Http {
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
}

impl Http {
    /// A client trusting the system roots and, when given, the CA in `ca` (PEM).
    pub fn new(ca: Option<&Path>) -> Http {
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(1));
        if let Some(ca) = ca {
            let pem = std::fs::read(ca).unwrap();
            builder = builder.add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap());
        }
        Http {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            http: builder.build().unwrap(),
        }
    }

    /// POST `url` with `token` and an empty JSON object: the status and the answer's headers
    /// (`None` when nothing answered).
    pub fn post(&self, url: &str, token: &str) -> Option<(u16, reqwest::header::HeaderMap)> {
        self.rt.block_on(async {
            let r = self
                .http
                .post(url)
                .bearer_auth(token)
                .json(&serde_json::json!({}))
                .send()
                .await
                .ok()?;
            Some((r.status().as_u16(), r.headers().clone()))
        })
    }

    /// The JSON body of a 2xx answer to GET `url`; `None` on any failure.
    pub fn get_json(&self, url: &str) -> Option<serde_json::Value> {
        self.rt.block_on(async {
            let r = self.http.get(url).send().await.ok()?;
            if !r.status().is_success() {
                return None;
            }
            r.json().await.ok()
        })
    }
}
