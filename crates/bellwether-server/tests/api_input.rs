//! Issue 9: bad input that slipped through the API. Each test drives the real router
//! in-process against SQLite and PostgreSQL, as `tests/api.rs` does.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use bellwether_model::HostName;
use bellwether_server::{Server, ServerConfig};
use bellwether_store::testing::with_each_backend;
use bellwether_store::StoreConfig;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

const OP: &str = "operator-token-for-input-01";
const ENROL: &str = "enrol-token-for-input-0001";

fn config(store: StoreConfig) -> ServerConfig {
    let mut c = ServerConfig::new(store, None);
    c.operator_token = Some(OP.into());
    c.enrol_token = Some(ENROL.into());
    c
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn send(
    app: &Router,
    method: Method,
    uri: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, String) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let body = match body {
        Some(b) => {
            let b = b.to_string();
            req = req
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::CONTENT_LENGTH, b.len());
            Body::from(b)
        }
        None => Body::empty(),
    };
    let resp = app.clone().oneshot(req.body(body).unwrap()).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

fn error_of(text: &str) -> String {
    let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error: {text}"))
        .to_string()
}

async fn enrol(app: &Router, name: &str) -> String {
    let (status, text) = send(
        app,
        Method::POST,
        "/api/v1/enrol",
        Some(ENROL),
        Some(json!({"name": name})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    v["agent_token"].as_str().unwrap().to_string()
}

async fn samples(app: &Router, agent: &str, body: Value) -> (StatusCode, String) {
    send(
        app,
        Method::POST,
        "/api/v1/agent/samples",
        Some(agent),
        Some(body),
    )
    .await
}

macro_rules! api_test {
    ($name:ident, $cfg:expr, |$server:ident, $app:ident| $body:block) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            with_each_backend(|store: StoreConfig| async move {
                #[allow(clippy::redundant_closure_call)]
                let $server = Server::open(($cfg)(config(store))).await.expect("open server");
                let $app = $server.router();
                $body
                $server.store().close().await;
            })
            .await;
        }
    };
}

fn defaults(c: ServerConfig) -> ServerConfig {
    c
}

api_test!(
    an_unknown_field_inside_a_sample_is_refused,
    defaults,
    |server, app| {
        let agent = enrol(&app, "web-01").await;
        let t = now_ms();
        let (status, text) = samples(
            &app,
            &agent,
            json!({"samples": [
                {"ts_ms": t, "name": "load1", "value": 0.5},
                {"ts_ms": t, "name": "load1", "value": 0.5, "unit": "ratio"},
            ]}),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
        let err = error_of(&text);
        assert!(
            err.contains("samples[1]") && err.contains("unknown field `unit`"),
            "{err}"
        );
        assert_eq!(
            server
                .store()
                .count_samples(&HostName::new("web-01").unwrap())
                .await
                .unwrap(),
            0
        );
    }
);

api_test!(
    dot_segments_cannot_enrol_as_host_names,
    defaults,
    |server, app| {
        for name in [".", ".."] {
            let (status, text) = send(
                &app,
                Method::POST,
                "/api/v1/enrol",
                Some(ENROL),
                Some(json!({"name": name})),
            )
            .await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{name}: {text}");
            let err = error_of(&text);
            assert!(
                err.contains("`name`") && err.contains("relative path segment"),
                "{err}"
            );
        }
        let (status, text) = send(&app, Method::GET, "/api/v1/hosts", Some(OP), None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), json!([]));
        // A name with dots that is not a dot segment still enrols and is reachable.
        enrol(&app, "...").await;
        let (status, text) = send(&app, Method::GET, "/api/v1/hosts/...", Some(OP), None).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        let _ = &server;
    }
);

api_test!(
    dropped_counts_saturate_instead_of_wrapping,
    defaults,
    |server, app| {
        let agent = enrol(&app, "web-01").await;
        let t = now_ms();
        for _ in 0..2 {
            let (status, text) = samples(
            &app,
            &agent,
            json!({"samples": [{"ts_ms": t, "name": "load1", "value": 0.5}], "dropped": u64::MAX - 1}),
        )
        .await;
            assert_eq!(status, StatusCode::ACCEPTED, "{text}");
        }
        let (_, m) = send(&app, Method::GET, "/metrics", None, None).await;
        assert!(
            m.contains(&format!(
                "bellwether_samples_dropped_by_agents_total {}",
                u64::MAX
            )),
            "{m}"
        );
        let _ = &server;
    }
);

api_test!(
    timestamps_far_from_the_server_clock_are_refused,
    |mut c: ServerConfig| {
        c.sample_max_age = Duration::from_secs(3600);
        c.sample_max_ahead = Duration::from_secs(60);
        c
    },
    |server, app| {
        let agent = enrol(&app, "web-01").await;
        let host = HostName::new("web-01").unwrap();
        let t = now_ms();
        for (bad, expect) in [
            (i64::MAX, "ahead of the server's clock; samples may be at most 1m ahead (server setting --sample-max-ahead)"),
            (t + 10 * 60_000, "ahead of the server's clock"),
            (t - 2 * 3_600_000, "behind the server's clock; samples may be at most 1h old (server setting --sample-max-age)"),
            (i64::MIN, "behind the server's clock"),
            (0, "behind the server's clock"),
        ] {
            let (status, text) = samples(
                &app,
                &agent,
                json!({"samples": [
                    {"ts_ms": t, "name": "load1", "value": 0.5},
                    {"ts_ms": t, "name": "load5", "value": 0.5},
                    {"ts_ms": bad, "name": "load1", "value": 0.5},
                ]}),
            )
            .await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {text}");
            let err = error_of(&text);
            assert!(err.contains("`samples[2].ts_ms`") && err.contains(&bad.to_string()) && err.contains(expect), "{bad}: {err}");
            assert_eq!(server.store().count_samples(&host).await.unwrap(), 0, "{bad}");
        }
        // Inside the window, a little behind and a little ahead, is accepted.
        let (status, text) = samples(
            &app,
            &agent,
            json!({"samples": [
                {"ts_ms": t - 3_000_000, "name": "load1", "value": 0.5},
                {"ts_ms": t + 30_000, "name": "load1", "value": 0.7},
            ]}),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{text}");
        assert_eq!(server.store().count_samples(&host).await.unwrap(), 2);
    }
);

api_test!(
    errors_quote_a_few_hundred_bytes_of_the_body,
    defaults,
    |server, app| {
        let agent = enrol(&app, "web-01").await;
        let huge = "9".repeat(1 << 20) + "x";
        let (status, text) = samples(
            &app,
            &agent,
            json!({"samples": [{"ts_ms": now_ms(), "name": "load1", "value": huge}]}),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let err = error_of(&text);
        assert!(err.len() < 1000, "{} bytes", err.len());
        assert!(
            err.starts_with("invalid JSON body at `samples[0].value`: invalid type: string \"999"),
            "{err}"
        );
        assert!(
            err.contains("bytes) …") && err.contains("line 1 column"),
            "{err}"
        );
        let key = "k".repeat(1 << 20);
        let (status, text) = send(
            &app,
            Method::POST,
            "/api/v1/enrol",
            Some(ENROL),
            Some(json!({"name": "web-02", "labels": {key: 1}})),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(error_of(&text).len() < 1000, "{} bytes", text.len());
        let _ = &server;
    }
);
