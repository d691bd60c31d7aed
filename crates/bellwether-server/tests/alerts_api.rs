//! Alerts end to end through a served server and a real HTTP receiver, on SQLite and
//! PostgreSQL: a server-wide rule and a rollout plan's `alerts:` rules receive the rollout's
//! events (a 500 retried, then delivered), the delivery log shows every attempt without the
//! URL's secrets, `test` posts at once, and every handler refuses bad input with a message
//! that names the field.

mod support;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{Method, StatusCode};
use axum::Router;
use bellwether_server::alerts::{AlertPolicy, NewRule};
use bellwether_server::client::{Client, ClientError};
use bellwether_server::Server;
use bellwether_store::testing::with_each_backend;
use bellwether_store::StoreConfig;
use serde_json::{json, Value};
use support::OP;

/// A webhook receiver on a free port: records (path, JSON body) and answers from a script of
/// (path, status) pairs, each used once by the first request to that path (200 otherwise), so
/// deliveries to other rules, which run concurrently, cannot take another rule's answer.
#[derive(Clone)]
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<(String, Value)>>>,
    script: Arc<Mutex<VecDeque<(String, u16)>>>,
    arrived: Arc<tokio::sync::Notify>,
}

impl Receiver {
    async fn start() -> Receiver {
        let got: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
        let script: Arc<Mutex<VecDeque<(String, u16)>>> = Arc::default();
        let arrived = Arc::new(tokio::sync::Notify::new());
        let (g, s, a) = (got.clone(), script.clone(), arrived.clone());
        let app = Router::new().fallback(move |uri: axum::http::Uri, body: axum::body::Bytes| {
            let (g, s, a) = (g.clone(), s.clone(), a.clone());
            async move {
                let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                g.lock().unwrap().push((uri.path().to_string(), json));
                a.notify_waiters();
                let code = {
                    let mut script = s.lock().unwrap();
                    match script.iter().position(|(p, _)| p == uri.path()) {
                        Some(i) => script.remove(i).map_or(200, |(_, c)| c),
                        None => 200,
                    }
                };
                StatusCode::from_u16(code).unwrap()
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver {
            url: format!("http://{addr}"),
            got,
            script,
            arrived,
        }
    }

    fn at(&self, path: &str) -> Vec<Value> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, b)| b.clone())
            .collect()
    }

    /// Waits (each request wakes it) until `path` has received `n` requests.
    async fn wait_for(&self, path: &str, n: usize) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let notified = self.arrived.notified();
            let got = self.at(path);
            if got.len() >= n {
                return got;
            }
            assert!(
                tokio::time::timeout_at(deadline, notified).await.is_ok(),
                "{path} received {} requests, not {n}: {got:?}",
                got.len()
            );
        }
    }
}

/// A request with the operator token.
async fn send(
    app: &Router,
    method: Method,
    uri: &str,
    body: Option<String>,
) -> (StatusCode, Value) {
    support::send(app, method, uri, OP, body).await
}

/// A trained model and `n` enrolled web hosts with profiles, as a rollout needs.
async fn fleet(app: &Router, n: usize) {
    support::fleet(app, n).await;
}

fn plan(hook: &str) -> String {
    format!(
        r#"name: web-v2
update:
  name: websvc
  version: "2"
  apply:  {{ builtin: set_service_version, version: "2" }}
  revert: {{ builtin: set_service_version, version: "1" }}
targets:
  labels: {{ role: web }}
waves: {{ fixed: [50, 100] }}
bake: 300ms
analysis:
  interval: 100ms
  baseline: 200ms
  metrics:
    - {{ name: svc_error_ratio, threshold_pct: 50, for: 300ms, floor: 0.01 }}
  judge: {{ enabled: false }}
no_data: {{ after: 3s }}
alerts:
  - name: plan-hook
    url: "{hook}"
    events: [rollout.rollout.started, "rollout.pilot.*"]
"#
    )
}

fn api_error(e: ClientError) -> (u16, String) {
    match e {
        ClientError::Api {
            status, message, ..
        } => (status, message),
        other => panic!("not an API error: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rollouts_events_reach_a_server_rule_and_its_plans_rules_through_a_served_server() {
    with_each_backend(|store: StoreConfig| async move {
        let rx = Receiver::start().await;
        let mut config = support::config(store);
        config.alerts = AlertPolicy {
            attempts: 3,
            base: Duration::from_millis(50),
            max: Duration::from_millis(200),
            timeout: Duration::from_secs(10),
            poll: Duration::from_millis(50),
        };
        let server = Server::open(config).await.unwrap();
        let app = server.router();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(server.serve(listener, async move {
            let _ = stop_rx.await;
        }));
        let client = Client::new(&base, OP).unwrap();

        // Bad input: each refused naming what is wrong, nothing stored.
        let rule = |name: &str, url: &str, format: &str, events: &[&str]| NewRule {
            name: name.into(),
            url: url.into(),
            format: Some(format.into()),
            events: events.iter().map(|s| s.to_string()).collect(),
            hosts: None,
        };
        for (bad, status, want) in [
            (
                rule("x", "ftp://h/x", "generic", &["rollout.*"]),
                422,
                "url: ftp://… is not an http:// or https:// URL",
            ),
            (
                rule("x", "http://h/", "teams", &["rollout.*"]),
                422,
                "format: unknown format teams",
            ),
            (
                rule("x", "http://h/", "generic", &["rolout.*"]),
                422,
                "events[0]: rolout.* matches no event kind",
            ),
            (
                rule("x", "http://h/", "generic", &[]),
                422,
                "events: name at least one",
            ),
            (
                rule("12", "http://h/", "generic", &["rollout.*"]),
                422,
                "must not be a number",
            ),
            (
                rule("a b", "http://h/", "generic", &["rollout.*"]),
                422,
                "name: ",
            ),
        ] {
            let (s, m) = api_error(client.alert_add(&bad).await.unwrap_err());
            assert_eq!(s, status, "{m}");
            assert!(m.contains(want), "{m} lacks {want}");
        }
        let (s, v) = send(
            &app,
            Method::POST,
            "/api/v1/alerts/rules",
            Some(
                json!({"name": "x", "url": "http://h/", "events": ["rollout.*"], "retries": 3})
                    .to_string(),
            ),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .contains("unknown field `retries`"),
            "{v}"
        );
        let (s, v) = send(&app, Method::POST, "/api/v1/alerts/rules", Some("{".into())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        for (m, path) in [
            (Method::GET, "/api/v1/alerts/rules/999999"),
            (Method::DELETE, "/api/v1/alerts/rules/999999"),
            (Method::POST, "/api/v1/alerts/rules/nope/test"),
        ] {
            let (s, v) = send(&app, m.clone(), path, None).await;
            assert_eq!(s, StatusCode::NOT_FOUND, "{m} {path}: {v}");
            assert!(
                v["error"]
                    .as_str()
                    .unwrap()
                    .starts_with("unknown alert rule"),
                "{v}"
            );
        }
        for (q, want) in [
            ("limit=0", "limit must be from 1 to 10000"),
            ("limit=x", "limit"),
            ("rule=a%20b", "rule: "),
            ("colour=red", "unknown field `colour`"),
        ] {
            let (s, v) = send(
                &app,
                Method::GET,
                &format!("/api/v1/alerts/deliveries?{q}"),
                None,
            )
            .await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{q}: {v}");
            assert!(v["error"].as_str().unwrap().contains(want), "{q}: {v}");
        }
        assert!(client.alert_rules().await.unwrap().is_empty());

        // A server-wide Slack rule for the rollout's start; its receiver fails once.
        let secret_url = format!("{}/ops/T0/B0/SECRET", rx.url);
        let added = client
            .alert_add(&rule(
                "ops",
                &secret_url,
                "slack",
                &["rollout.rollout.started"],
            ))
            .await
            .unwrap();
        assert_eq!(added.url, format!("{}/ops/…", rx.url));
        let (s, m) = api_error(
            client
                .alert_add(&rule("ops", &secret_url, "slack", &["rollout.*"]))
                .await
                .unwrap_err(),
        );
        assert_eq!(s, 409, "{m}");
        rx.script
            .lock()
            .unwrap()
            .push_back(("/ops/T0/B0/SECRET".into(), 500));

        // A plan whose own rule is bad is refused with its place.
        fleet(&app, 4).await;
        let bad = plan("ftp://h/x");
        let (s, v) = send(
            &app,
            Method::POST,
            "/api/v1/rollouts",
            Some(json!({"plan_yaml": bad, "file": "web.yaml"}).to_string()),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .starts_with("web.yaml:19:5: alerts[0]: url: ftp://…"),
            "{v}"
        );

        let (s, v) = send(
            &app,
            Method::POST,
            "/api/v1/rollouts",
            Some(
                json!({"plan_yaml": plan(&format!("{}/plan", rx.url)), "file": "web.yaml"})
                    .to_string(),
            ),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let id = v["id"].as_str().unwrap().to_string();

        // The plan's rule: the start and the pilot, generic JSON.
        let got = rx.wait_for("/plan", 2).await;
        let kinds: Vec<&str> = got
            .iter()
            .map(|b| b["event"]["kind"].as_str().unwrap())
            .collect();
        assert!(
            kinds.contains(&"rollout.rollout.started") && kinds.contains(&"rollout.pilot.selected"),
            "{kinds:?}"
        );
        for b in &got {
            assert_eq!(b["rule"], "plan-hook");
            assert_eq!(b["event"]["task"], id.as_str());
            assert_eq!(b["links"]["task"], format!("/api/v1/rollouts/{id}"));
            assert!(b["summary"]
                .as_str()
                .unwrap()
                .contains(&format!("(task {id})")));
        }
        // The server rule: a 500, then delivered; Slack's shape.
        let ops = rx.wait_for("/ops/T0/B0/SECRET", 2).await;
        assert_eq!(ops[0], ops[1]);
        assert!(
            ops[0]["text"]
                .as_str()
                .unwrap()
                .starts_with("rollout.rollout.started (task "),
            "{}",
            ops[0]
        );
        assert_eq!(ops[0]["blocks"][0]["type"], "section");

        // The delivery log, once the second attempt is logged.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let log = loop {
            let log = client
                .alert_deliveries(Some("ops"), None, 100)
                .await
                .unwrap();
            if log.attempts.iter().any(|a| a.outcome == "delivered") {
                break log;
            }
            assert!(tokio::time::Instant::now() < deadline, "{log:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let a: Vec<(i64, Option<u16>, &str)> = log
            .attempts
            .iter()
            .map(|a| (a.attempt, a.status, a.outcome.as_str()))
            .collect();
        assert_eq!(
            a,
            vec![(2, Some(200), "delivered"), (1, Some(500), "retry")]
        );
        assert!(log.attempts[1].next_attempt_ms.unwrap() > log.attempts[1].at_ms);
        let text = serde_json::to_string(&log).unwrap();
        assert!(!text.contains("SECRET"), "{text}");
        let all = client.alert_deliveries(None, None, 100).await.unwrap();
        assert!(all
            .attempts
            .iter()
            .any(|a| a.rule == "plan-hook" && a.task.as_deref() == Some(id.as_str())));

        // `test` posts now, once, and logs it.
        let t = client.alert_test("ops").await.unwrap();
        assert!(t.delivered, "{t:?}");
        assert_eq!(t.status, Some(200));
        let last = rx.at("/ops/T0/B0/SECRET").pop().unwrap();
        assert!(
            last["text"].as_str().unwrap().starts_with("alert.test"),
            "{last}"
        );
        rx.script
            .lock()
            .unwrap()
            .push_back(("/ops/T0/B0/SECRET".into(), 410));
        let t = client.alert_test(&added.id.to_string()).await.unwrap();
        assert!(!t.delivered);
        assert_eq!(
            t.error.as_deref(),
            Some("HTTP 410 (not retried: the receiver refused the alert)")
        );

        let removed = client.alert_remove("ops").await.unwrap();
        assert_eq!(removed.id, added.id);
        assert!(client.alert_rules().await.unwrap().is_empty());

        let _ = stop_tx.send(());
        served.await.unwrap().unwrap();
    })
    .await;
}
