//! Set-up shared by the server's API tests (rollout_api, prometheus_api, alerts_api, stream):
//! the tokens and configuration, one in-process request, a fleet with a trained model, and a
//! server on a socket. Each test binary uses only part of it.

#![allow(dead_code)]

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use bellwether_server::{Server, ServerConfig};
use bellwether_store::StoreConfig;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

pub const ADMIN: &str = "admin-token-for-tests-000001";
pub const OP: &str = "operator-token-for-tests-0001";
pub const ENROL: &str = "enrol-token-for-tests-000001";

/// A server configuration with the operator and enrolment tokens above and automatic
/// retraining off (a test trains when it means to).
pub fn config(store: StoreConfig) -> ServerConfig {
    let mut c = ServerConfig::new(store, None);
    c.operator_token = Some(OP.into());
    c.enrol_token = Some(ENROL.into());
    c.retrain_after = 0;
    c
}

/// One request through the router; the answer's status and JSON body (`Null` when the body is
/// not JSON).
pub async fn send(
    app: &Router,
    method: Method,
    uri: &str,
    token: &str,
    body: Option<String>,
) -> (StatusCode, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {token}"));
    let body = match body {
        Some(b) => {
            req = req.header(header::CONTENT_TYPE, "application/json");
            Body::from(b)
        }
        None => Body::empty(),
    };
    let resp = app.clone().oneshot(req.body(body).unwrap()).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Imports `rows` rows of history where a full disk fails (`disk_free_pct` under 10 mostly
/// fails, the rest rarely) and trains the model on them.
pub async fn train(app: &Router, rows: usize) {
    let mut csv = String::from("deployment_id,host,disk_free_pct,outcome\n");
    for i in 0..rows {
        let disk = (i * 7 % 60) as f64;
        let failed = if disk < 10.0 {
            i % 10 != 0
        } else {
            i % 17 == 0
        };
        csv.push_str(&format!("d{},h{i},{disk},{}\n", i / 10, failed as u8));
    }
    let req = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/history/import")
        .header(header::AUTHORIZATION, format!("Bearer {OP}"))
        .body(Body::from(csv))
        .unwrap();
    assert_eq!(
        app.clone().oneshot(req).await.unwrap().status(),
        StatusCode::CREATED
    );
    let (s, v) = send(app, Method::POST, "/api/v1/model/train", OP, None).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
}

/// Enrols `n` hosts `web-00`, `web-01`, … labelled `role=web`, each with a profile whose
/// `disk_free_pct` is `disk(i)`; returns their names and agent tokens.
pub async fn enrol_web(
    app: &Router,
    n: usize,
    disk: impl Fn(usize) -> f64,
) -> Vec<(String, String)> {
    let mut agents = Vec::new();
    for i in 0..n {
        let name = format!("web-{i:02}");
        let (s, v) = send(
            app,
            Method::POST,
            "/api/v1/enrol",
            ENROL,
            Some(json!({"name": name, "labels": {"role": "web"}}).to_string()),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let token = v["agent_token"].as_str().unwrap().to_string();
        let (s, _) = send(
            app,
            Method::POST,
            "/api/v1/agent/profile",
            &token,
            Some(json!({"metrics": {"disk_free_pct": disk(i)}}).to_string()),
        )
        .await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        agents.push((name, token));
    }
    agents
}

/// A model trained on 400 rows of history and `n` enrolled web hosts with profiles
/// (`disk_free_pct` 40, 41, …), as a rollout needs; returns the hosts' agent tokens.
pub async fn fleet(app: &Router, n: usize) -> Vec<(String, String)> {
    train(app, 400).await;
    enrol_web(app, n, |i| 40.0 + i as f64).await
}

/// `config`'s server on a free loopback port; answers its URL, a client, the sender that
/// shuts it down and its task.
pub async fn serve(
    config: ServerConfig,
) -> (
    String,
    reqwest::Client,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let server = Server::open(config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server
            .serve(listener, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    (url, reqwest::Client::new(), tx, task)
}
