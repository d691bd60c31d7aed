//! Rollouts whose analysis reads Prometheus, driven in-process: the checks at `rollout start`
//! (an address to read from, the labels the queries name), `--prometheus-url`, and a
//! Prometheus that does not answer, which is no data: the rollout pauses naming the host and
//! the query, and never promotes. (A real Prometheus scraping a real fleet is
//! crates/bellwether/tests/rollout_prometheus.rs.)

mod support;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use axum::Router;
use bellwether_server::{Server, ServerConfig, ServerError};
use bellwether_store::testing::with_each_backend;
use bellwether_store::StoreConfig;
use serde_json::json;
use support::{now_ms, send, OP};

/// `ADDRESS` and `QUERY` are replaced by each test.
const PLAN: &str = r#"name: web-v2
update:
  name: websvc
  version: "2"
  apply:  { builtin: set_service_version, version: "2" }
  revert: { builtin: set_service_version, version: "1" }
targets:
  labels: { role: web }
risk: { low: 0.3, high: 0.7, pilot: { min: 1, max: 2 } }
waves: { fixed: [50, 100] }
bake: 300ms
analysis:
  interval: 100ms
  baseline: 200ms
ADDRESS
  metrics:
    - name: error_ratio
      source: prometheus
      query: 'QUERY'
      threshold_pct: 50
      floor: 0.01
  judge: { enabled: false }
no_data: { after: 1s }
"#;

fn plan(address: Option<&str>, query: &str) -> String {
    let a = match address {
        Some(a) => format!("  prometheus: {{ address: \"{a}\", timeout: 1s }}"),
        None => String::new(),
    };
    PLAN.replace("ADDRESS\n", &if a.is_empty() { a } else { a + "\n" })
        .replace("QUERY", query)
}

fn config(store: StoreConfig, prometheus_url: Option<&str>) -> ServerConfig {
    let mut c = support::config(store);
    c.prometheus_url = prometheus_url.map(str::to_string);
    c
}

/// Enrols `n` web hosts (label `role=web`, no `zone`) and trains a model; returns their agent
/// tokens.
async fn fleet(app: &Router, n: usize) -> Vec<(String, String)> {
    support::train(app, 200).await;
    support::enrol_web(app, n, |_| 40.0).await
}

/// A simulated agent that runs every action it is sent, until `stop`.
fn agent(
    app: Router,
    token: String,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while !*stop.borrow() {
            let (s, v) = send(
                &app,
                Method::GET,
                "/api/v1/agent/actions?wait_ms=100",
                &token,
                None,
            )
            .await;
            assert_eq!(s, StatusCode::OK, "{v}");
            for a in v["actions"].as_array().unwrap() {
                let id = a["id"].as_str().unwrap();
                let t = now_ms();
                let result = json!({"ok": true, "exit_code": 0, "error": null, "stdout_tail": "", "stderr_tail": "", "started_ms": t, "finished_ms": t});
                let (s, v) = send(
                    &app,
                    Method::POST,
                    &format!("/api/v1/agent/actions/{id}/result"),
                    &token,
                    Some(result.to_string()),
                )
                .await;
                assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
            }
        }
    })
}

fn start_body(plan: &str) -> Option<String> {
    Some(json!({"plan_yaml": plan, "file": "web.yaml"}).to_string())
}

/// A loopback address where nothing listens (bound, then released).
fn dead_address() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    a
}

#[tokio::test]
async fn a_bad_prometheus_url_is_refused_at_start() {
    // Checked before the store is opened: this path is never created.
    let store = StoreConfig::Sqlite {
        path: std::env::temp_dir().join("bellwether-never-opened/b.db"),
    };
    let e = Server::open(config(store, Some("127.0.0.1:9090")))
        .await
        .err()
        .expect("refused");
    assert!(matches!(e, ServerError::PrometheusUrl(_)), "{e}");
    assert_eq!(
        e.to_string(),
        "--prometheus-url: address \"127.0.0.1:9090\" must start with http:// or https://"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_plan_needs_an_address_and_every_label_its_queries_name() {
    with_each_backend(|store| async move {
        let server = Server::open(config(store, None)).await.unwrap();
        let app = server.router();
        fleet(&app, 2).await;
        let q = r#"sum(rate(errors{instance="{{host}}"}[1s]))"#;
        // No address in the plan, none on the server.
        let (s, v) = send(&app, Method::POST, "/api/v1/rollouts", OP, start_body(&plan(None, q))).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert_eq!(
            v["error"],
            "web.yaml: analysis.metrics: error_ratio reads Prometheus, but there is no Prometheus to read from: the plan has no analysis.prometheus.address and the server no --prometheus-url"
        );
        // A label the hosts do not have.
        let q = r#"sum(rate(errors{instance="{{host}}", zone="{{labels.zone}}"}[1s]))"#;
        let (s, v) = send(
            &app,
            Method::POST,
            "/api/v1/rollouts",
            OP,
            start_body(&plan(Some("http://127.0.0.1:9"), q)),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert_eq!(
            v["error"],
            "web.yaml: analysis.metrics: error_ratio: host web-00 has no label `zone`, which the query's {{labels.zone}} needs"
        );
        // A template error is a plan error, with its line and column.
        let (s, v) = send(
            &app,
            Method::POST,
            "/api/v1/rollouts",
            OP,
            start_body(&plan(None, r#"up{instance={{host}}}"#)),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        let e = v["error"].as_str().unwrap();
        assert!(e.starts_with("web.yaml:18:"), "{e}");
        assert!(e.contains("analysis.metrics[0].query: {{host}} must be inside a quoted string"), "{e}");
        // Nothing was started.
        let (s, v) = send(&app, Method::GET, "/api/v1/rollouts", OP, None).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v, json!([]));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_prometheus_is_no_data_and_pauses_naming_host_and_query() {
    with_each_backend(|store| async move {
        // The server's default Prometheus answers nothing; the plan names none, so it is used.
        let dead = dead_address();
        let server = Server::open(config(store, Some(&dead))).await.unwrap();
        let app = server.router();
        let agents = fleet(&app, 2).await;
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let sims: Vec<_> = agents
            .iter()
            .map(|(_, t)| agent(app.clone(), t.clone(), stop.clone()))
            .collect();
        let q = r#"sum(rate(errors{instance="{{host}}"}[1s]))"#;
        let (s, v) = send(
            &app,
            Method::POST,
            "/api/v1/rollouts",
            OP,
            start_body(&plan(None, q)),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let id = v["id"].as_str().unwrap().to_string();
        // Wait for the pause (an event, polled through the API).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let status = loop {
            let (s, v) = send(
                &app,
                Method::GET,
                &format!("/api/v1/rollouts/{id}"),
                OP,
                None,
            )
            .await;
            assert_eq!(s, StatusCode::OK, "{v}");
            if v["state"] == "paused" {
                break v;
            }
            assert_ne!(v["state"], "completed", "promoted without data: {v}");
            assert!(tokio::time::Instant::now() < deadline, "never paused: {v}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let pause = &status["pause"];
        assert_eq!(pause["kind"], "no_data", "{status}");
        let host = pause["host"].as_str().unwrap();
        assert_eq!(
            pause["missing"]["query"],
            format!(r#"sum(rate(errors{{instance="{host}"}}[1s]))"#)
        );
        let problem = pause["missing"]["problem"].as_str().unwrap();
        assert!(
            problem.starts_with(&format!("Prometheus at {dead} did not answer: ")),
            "{problem}"
        );
        assert_eq!(status["wave"], 0, "nothing promoted: {status}");
        let (_, r) = send(
            &app,
            Method::GET,
            &format!("/api/v1/rollouts/{id}/report"),
            OP,
            None,
        )
        .await;
        let kinds: Vec<&str> = r["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap())
            .collect();
        assert!(!kinds.contains(&"wave.passed"), "{kinds:?}");
        assert!(
            !kinds.contains(&"host.failed"),
            "no data fails no host: {kinds:?}"
        );
        assert!(!kinds.contains(&"host.rolling_back"), "{kinds:?}");
        let ev = r["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["kind"] == "host.no_data")
            .expect("a host.no_data event");
        assert_eq!(ev["host"], host);
        assert_eq!(ev["figures"]["source"], "prometheus");
        assert!(ev["reason"].as_str().unwrap().contains(host), "{ev}");
        let (s, _) = send(
            &app,
            Method::POST,
            &format!("/api/v1/rollouts/{id}/abort"),
            OP,
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        stop_tx.send(true).unwrap();
        for s in sims {
            s.await.unwrap();
        }
    })
    .await;
}
