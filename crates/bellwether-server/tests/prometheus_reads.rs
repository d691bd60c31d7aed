//! A rollout's Prometheus reads against a real Prometheus (Debian's `prometheus`, started by
//! the test on a free port) that scrapes the server's own `/metrics`: the query selects the
//! target by `instance="{{address}}:PORT"`, with the address each host's agent declared at
//! enrolment, and every value the analysis read is stored as the host's samples, marked
//! `source: prometheus`, where `GET /api/v1/hosts/{name}/samples` answers it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use bellwether_server::{Server, ServerConfig};
use bellwether_store::testing::with_each_backend;
use bellwether_store::StoreConfig;
use serde_json::{json, Value};

const OP: &str = "operator-token-for-tests-0001";
const ENROL: &str = "enrol-token-for-tests-000001";

/// A `prometheus` process of the test's own, killed when dropped.
struct Prometheus {
    child: std::process::Child,
    url: String,
    log: PathBuf,
    dir: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts Prometheus scraping `target`'s `/metrics` every second as job `bw`.
fn start_prometheus(dir: &Path, target: &str) -> Prometheus {
    let have = Command::new("prometheus")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !have.is_ok_and(|s| s.success()) {
        panic!("`prometheus` is not on the PATH; this test runs a real one. install it: apt-get install -y prometheus");
    }
    std::fs::create_dir_all(dir).unwrap();
    let file = dir.join("prometheus.yml");
    std::fs::write(
        &file,
        format!(
            "global: {{ scrape_interval: 1s, scrape_timeout: 1s }}\nscrape_configs:\n  - job_name: bw\n    static_configs:\n      - targets: [\"{target}\"]\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let log = dir.join("prometheus.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", file.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("could not start prometheus: {e}"));
    Prometheus {
        child,
        url: format!("http://127.0.0.1:{port}"),
        log,
        dir: dir.to_path_buf(),
    }
}

impl Prometheus {
    /// Waits until Prometheus has scraped its target at least once (`up == 1`).
    async fn wait_scraped(&self, http: &reqwest::Client) {
        for _ in 0..600 {
            let answer: Option<Value> = match http
                .get(format!("{}/api/v1/query", self.url))
                .query(&[("query", "up{job=\"bw\"}")])
                .send()
                .await
            {
                Ok(r) => r.json().await.ok(),
                Err(_) => None,
            };
            let up = answer.as_ref().and_then(|a| {
                a["data"]["result"][0]["value"][1]
                    .as_str()
                    .map(str::to_string)
            });
            if up.as_deref() == Some("1") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "Prometheus never scraped the server; its log:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }
}

fn plan(prometheus: &str, query: &str) -> String {
    format!(
        r#"name: web-v2
update:
  name: websvc
  version: "2"
  apply:  {{ builtin: set_service_version, version: "2" }}
  revert: {{ builtin: set_service_version, version: "1" }}
targets:
  labels: {{ role: web }}
risk: {{ low: 0.3, high: 0.7, pilot: {{ min: 1, max: 1 }} }}
waves: {{ fixed: [100] }}
bake: 60s
analysis:
  interval: 500ms
  baseline: 1s
  prometheus: {{ address: "{prometheus}", timeout: 2s }}
  metrics:
    - name: bw_hosts
      source: prometheus
      query: '{query}'
      threshold_pct: 50
  judge: {{ enabled: false }}
no_data: {{ after: 30s }}
"#
    )
}

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn enrol(&self, name: &str, address: Option<&str>) -> (u16, Value) {
        let mut body = json!({"name": name, "labels": {"role": "web"}});
        if let Some(a) = address {
            body["address"] = json!(a);
        }
        self.send(reqwest::Method::POST, "/api/v1/enrol", ENROL, Some(body))
            .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prometheus_reads_select_the_hosts_address_and_are_stored_as_its_samples() {
    with_each_backend(|store: StoreConfig| async move {
        let mut config = ServerConfig::new(store, None);
        config.operator_token = Some(OP.into());
        config.enrol_token = Some(ENROL.into());
        config.retrain_after = 0;
        let server = Server::open(config).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(server.serve(listener, async move {
            let _ = stop_rx.await;
        }));
        let api = Api {
            http: reqwest::Client::new(),
            base: format!("http://{addr}"),
        };
        let dir = std::env::temp_dir().join(bellwether_store::testing::unique_name("bw_prom_reads"));
        let prom = start_prometheus(&dir, &addr.to_string());

        // A model to score the hosts with.
        let mut csv = String::from("deployment_id,host,disk_free_pct,outcome\n");
        for i in 0..200 {
            let disk = (i * 7 % 60) as f64;
            let failed = if disk < 10.0 { i % 10 != 0 } else { i % 17 == 0 };
            csv.push_str(&format!("d{},h{i},{disk},{}\n", i / 10, failed as u8));
        }
        let r = api
            .http
            .post(format!("{}/api/v1/history/import", api.base))
            .bearer_auth(OP)
            .body(csv)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
        let (s, v) = api.send(reqwest::Method::POST, "/api/v1/model/train", OP, None).await;
        assert_eq!(s, 201, "{v}");

        // Bad addresses are refused at enrolment, naming what is wrong.
        for (bad, want) in [
            ("127.0.0.1:9100", "has a port: give the host alone"),
            ("a\"} or vector(1)", "is neither an IP address nor a DNS name"),
            ("", "must be 1 to 253 bytes"),
        ] {
            let (s, v) = api.enrol("web-00", Some(bad)).await;
            assert_eq!(s, 400, "{bad:?}: {v}");
            assert!(v["error"].as_str().unwrap().contains(want), "{bad:?}: {v}");
        }

        // Two hosts declare the address Prometheus scrapes the server at; one declares none.
        let (s, v) = api.enrol("web-00", Some("127.0.0.1")).await;
        assert_eq!(s, 200, "{v}");
        let (s, v) = api.enrol("web-01", Some("127.0.0.1")).await;
        assert_eq!(s, 200, "{v}");
        let (s, v) = api.enrol("web-02", None).await;
        assert_eq!(s, 200, "{v}");
        for h in ["web-00", "web-01", "web-02"] {
            // A profile, so each host has the features the model scores.
            let (s, v) = api.enrol(h, if h == "web-02" { None } else { Some("127.0.0.1") }).await;
            assert_eq!(s, 200, "{v}");
            let token = v["agent_token"].as_str().unwrap().to_string();
            let (s, v) = api
                .send(reqwest::Method::POST, "/api/v1/agent/profile", &token, Some(json!({"metrics": {"disk_free_pct": 40.0}})))
                .await;
            assert_eq!(s, 204, "{v}");
        }

        let query = format!(r#"max(bellwether_hosts{{job="bw", instance="{{{{address}}}}:{}"}})"#, addr.port());
        let start = |plan: String| json!({"plan_yaml": plan, "file": "web.yaml"});
        // A target host without an address cannot fill {{address}} in: refused, naming it.
        let (s, v) = api
            .send(reqwest::Method::POST, "/api/v1/rollouts", OP, Some(start(plan(&prom.url, &query))))
            .await;
        assert_eq!(s, 400, "{v}");
        assert_eq!(
            v["error"],
            "web.yaml: analysis.metrics: bw_hosts: host web-02 has no address, which the query's {{address}} needs: start its agent with --address (the host's IP address or DNS name)"
        );
        // Declared (a re-enrolment, as an agent restarted with --address), it starts.
        let (s, v) = api.enrol("web-02", Some("127.0.0.1")).await;
        assert_eq!(s, 200, "{v}");

        prom.wait_scraped(&api.http).await;
        let (s, v) = api
            .send(reqwest::Method::POST, "/api/v1/rollouts", OP, Some(start(plan(&prom.url, &query))))
            .await;
        assert_eq!(s, 201, "{v}");

        // Every host's reads land in its samples, marked with their source; the value is what
        // Prometheus scraped from /metrics: three hosts enrolled.
        let mut stored = Vec::new();
        for _ in 0..600 {
            let (s, v) = api
                .send(reqwest::Method::GET, "/api/v1/hosts/web-01/samples?metric=bw_hosts&source=prometheus", OP, None)
                .await;
            assert_eq!(s, 200, "{v}");
            stored = v["samples"].as_array().unwrap().clone();
            if stored.len() >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            stored.len() >= 3,
            "the rollout's Prometheus reads were not stored: {stored:?}; Prometheus log:\n{}",
            std::fs::read_to_string(&prom.log).unwrap_or_default()
        );
        for p in &stored {
            assert_eq!(p["source"], "prometheus", "{p}");
            assert_eq!(p["value"], 3.0, "{p}");
        }
        // Each step once, in time order (a value read twice is stored once).
        let times: Vec<i64> = stored.iter().map(|p| p["ts_ms"].as_i64().unwrap()).collect();
        assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");
        // The same points with no source filter; none from the agent; a bad source refused.
        let (_, all) = api
            .send(reqwest::Method::GET, "/api/v1/hosts/web-01/samples?metric=bw_hosts", OP, None)
            .await;
        assert!(all["samples"].as_array().unwrap().len() >= stored.len(), "{all}");
        let (_, agent) = api
            .send(reqwest::Method::GET, "/api/v1/hosts/web-01/samples?metric=bw_hosts&source=agent", OP, None)
            .await;
        assert_eq!(agent["samples"], json!([]));
        let (s, v) = api
            .send(reqwest::Method::GET, "/api/v1/hosts/web-01/samples?metric=bw_hosts&source=graphite", OP, None)
            .await;
        assert_eq!(s, 400, "{v}");
        assert_eq!(v["error"], "bad source graphite: give `agent` or `prometheus`");

        let _ = stop_tx.send(());
        served.await.unwrap().unwrap();
        drop(prom);
    })
    .await;
}
