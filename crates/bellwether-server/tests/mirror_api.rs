//! The mirror API in-process, on a real `redis-server` primary: bad input on every handler
//! (400 for a body that is not the shape, 422 naming the field or the endpoint, 404, 409),
//! roles, declaring a dependency whose mirror task starts, policy changes taken in by the
//! running task, an operator's failover, removal until the task settles and the name is free
//! again, and a task resumed after a restart. Every body runs against SQLite and PostgreSQL.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use bellwether_mirror::testing::TestRedis;
use bellwether_server::{Server, ServerConfig};
use bellwether_store::testing::with_each_backend;
use bellwether_store::StoreConfig;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

const ADMIN: &str = "admin-token-for-tests-000001";
const OP: &str = "operator-token-for-tests-0001";
const ENROL: &str = "enrol-token-for-tests-000001";
const DEPS: &str = "/api/v1/mirror/dependencies";

fn config(store: StoreConfig) -> ServerConfig {
    let mut c = ServerConfig::new(store, None);
    c.admin_token = Some(ADMIN.into());
    c.operator_token = Some(OP.into());
    c.enrol_token = Some(ENROL.into());
    c.retrain_after = 0;
    c
}

struct Resp {
    status: StatusCode,
    json: Value,
    text: String,
}

async fn send_raw(
    app: &Router,
    method: Method,
    uri: &str,
    token: &str,
    body: Option<String>,
) -> Resp {
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
    let text = String::from_utf8_lossy(&bytes).into_owned();
    Resp {
        status,
        json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        text,
    }
}

async fn send(app: &Router, method: Method, uri: &str, token: &str, body: Option<Value>) -> Resp {
    send_raw(app, method, uri, token, body.map(|b| b.to_string())).await
}

async fn viewer_token(app: &Router) -> String {
    let r = send(
        app,
        Method::POST,
        "/api/v1/tokens",
        ADMIN,
        Some(json!({"role": "viewer", "name": "dashboards"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    r.json["token"].as_str().unwrap().to_string()
}

fn dep(name: &str, primary: &str) -> Value {
    json!({
        "name": name, "kind": "redis", "primary": primary, "tier": "critical",
        "impact": 0.9,
        "policy": {"min_mirrors": 1, "max_mirrors": 3, "health_interval": "100ms"}
    })
}

/// The status, error text and the count of dependencies after a request that must store
/// nothing.
async fn refused(server: &Server, r: &Resp, status: StatusCode, needle: &str) {
    assert_eq!(r.status, status, "{}", r.text);
    let error = r.json["error"].as_str().unwrap_or_default();
    assert!(error.contains(needle), "{needle:?} not in {error:?}");
    assert!(
        server.store().dependencies(true).await.unwrap().is_empty(),
        "a refused declaration stored something"
    );
    assert!(server
        .store()
        .tasks(Some("mirror"), false)
        .await
        .unwrap()
        .is_empty());
}

/// A loopback port nothing listens on.
async fn closed_port() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap().to_string();
    drop(l);
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declaration_that_is_not_acceptable_stores_nothing() {
    with_each_backend(|store| async move {
        let redis = TestRedis::start();
        let primary = redis.endpoint();
        let server = Server::open(config(store)).await.unwrap();
        let app = server.router();

        // Not JSON, not the shape: 400 naming the field.
        let r = send_raw(&app, Method::POST, DEPS, OP, Some("{nope".into())).await;
        refused(&server, &r, StatusCode::BAD_REQUEST, "invalid JSON body").await;
        let mut body = dep("cache", &primary);
        body["polcy"] = json!({});
        let r = send(&app, Method::POST, DEPS, OP, Some(body)).await;
        refused(&server, &r, StatusCode::BAD_REQUEST, "polcy").await;
        let mut body = dep("cache", &primary);
        body["policy"]["max_mirors"] = json!(2);
        let r = send(&app, Method::POST, DEPS, OP, Some(body)).await;
        refused(&server, &r, StatusCode::BAD_REQUEST, "policy.max_mirors").await;
        let mut body = dep("cache", &primary);
        body["kind"] = json!("mysql");
        let r = send(&app, Method::POST, DEPS, OP, Some(body)).await;
        refused(&server, &r, StatusCode::BAD_REQUEST, "kind").await;

        // The shape, but values out of range: 422 naming the field.
        for (path, value, needle) in [
            ("name", json!("Cache!"), "name"),
            ("primary", json!("no-port"), "primary"),
            ("impact", json!(1.5), "impact"),
            ("policy.switch_below", json!(2.0), "policy.switch_below"),
            ("policy.failback_above", json!(0.1), "failback_above"),
            (
                "policy.min_mirrors",
                json!(9),
                "min_mirrors 9 is more than max_mirrors 3",
            ),
            (
                "policy.health_interval",
                json!("1ms"),
                "policy.health_interval",
            ),
            ("policy.max_mirrors", json!(99), "policy.max_mirrors"),
        ] {
            let mut body = dep("cache", &primary);
            match path.split_once('.') {
                Some((a, b)) => body[a][b] = value,
                None => body[path] = value,
            }
            let r = send(&app, Method::POST, DEPS, OP, Some(body)).await;
            refused(&server, &r, StatusCode::UNPROCESSABLE_ENTITY, needle).await;
        }
        let mut body = dep("cache", &primary);
        body["proxy"] = json!({"admin_url": "ftp://x", "token": "p"});
        let r = send(&app, Method::POST, DEPS, OP, Some(body)).await;
        refused(
            &server,
            &r,
            StatusCode::UNPROCESSABLE_ENTITY,
            "proxy.admin_url",
        )
        .await;
        let mut body = dep("cache", &primary);
        body["proxy"] = json!({"admin_url": "http://127.0.0.1:9901", "token": "edge"});
        let r = send(&app, Method::POST, DEPS, OP, Some(body)).await;
        refused(
            &server,
            &r,
            StatusCode::UNPROCESSABLE_ENTITY,
            "--proxy-token-file edge=FILE",
        )
        .await;

        // A primary that does not answer: 422 naming the endpoint.
        let closed = closed_port().await;
        let r = send(&app, Method::POST, DEPS, OP, Some(dep("cache", &closed))).await;
        refused(
            &server,
            &r,
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("primary {closed} (redis) is unreachable"),
        )
        .await;
        // Something answers, but not as a PostgreSQL server does (a PostgreSQL-kind
        // declaration on the Redis port).
        let mut body = dep("cache", &primary);
        body["kind"] = json!("postgres");
        let r = send(&app, Method::POST, DEPS, OP, Some(body)).await;
        refused(
            &server,
            &r,
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("primary {primary} (postgres) is unreachable"),
        )
        .await;

        // Roles: a viewer reads but does not declare.
        let viewer = viewer_token(&app).await;
        let r = send(
            &app,
            Method::POST,
            DEPS,
            &viewer,
            Some(dep("cache", &primary)),
        )
        .await;
        refused(&server, &r, StatusCode::FORBIDDEN, "operator").await;
        let r = send(&app, Method::GET, DEPS, &viewer, None).await;
        assert_eq!(
            (r.status, r.json.clone()),
            (StatusCode::OK, json!([])),
            "{}",
            r.text
        );

        // Unknown names on every route: 404; names that are not names: 400.
        for (m, p) in [
            (Method::GET, format!("{DEPS}/cache")),
            (Method::GET, format!("{DEPS}/cache/history")),
            (Method::DELETE, format!("{DEPS}/cache")),
        ] {
            let r = send(&app, m, &p, OP, None).await;
            assert_eq!(r.status, StatusCode::NOT_FOUND, "{p}: {}", r.text);
        }
        let r = send(
            &app,
            Method::PATCH,
            &format!("{DEPS}/cache"),
            OP,
            Some(json!({"policy": {"max_mirrors": 2}})),
        )
        .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
        let r = send(
            &app,
            Method::POST,
            &format!("{DEPS}/cache/failover"),
            OP,
            Some(json!({"reason": "drill"})),
        )
        .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
        let r = send(&app, Method::GET, &format!("{DEPS}/Bad%20Name"), OP, None).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
        drop(redis);
    })
    .await;
}

/// Waits (20 s at most) until `$check` (an async block's value) holds. The task steps every
/// 100 ms; the API is looked at again after one interval.
macro_rules! wait_for {
    ($what:expr, $check:expr) => {{
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if $check {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {}",
                $what
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependency_lives_from_declaration_to_removal() {
    with_each_backend(|store| async move {
        let redis = TestRedis::start();
        let primary = redis.endpoint();
        let server = Server::open(config(store)).await.unwrap();
        let app = server.router();
        let viewer = viewer_token(&app).await;

        let r = send(&app, Method::POST, DEPS, OP, Some(dep("cache", &primary))).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        let task = r.json["task"].as_str().unwrap().to_string();
        assert!(task.starts_with("m-cache-"), "{task}");
        assert_eq!(r.json["spec"]["primary"], primary.as_str());
        assert_eq!(r.json["phase"], "running");
        let weight = r.json["weight"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&weight), "{weight}");
        assert!(server.tasks().is_running(&task));

        // A second declaration of the name: 409, nothing changed.
        let r = send(&app, Method::POST, DEPS, OP, Some(dep("cache", &primary))).await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
        assert!(r.json["error"].as_str().unwrap().contains("exists already"));

        // The task observes the real primary: its health is measured.
        let show = format!("{DEPS}/cache");
        wait_for!("the primary's first health score", {
            let r = send(&app, Method::GET, &show, &viewer, None).await;
            r.json["health"].as_f64().is_some()
        });
        let r = send(&app, Method::GET, DEPS, &viewer, None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let list = r.json.as_array().unwrap();
        assert_eq!(list.len(), 1);
        let row = &list[0];
        assert_eq!(row["name"], "cache");
        assert_eq!(row["primary_endpoint"], primary.as_str());
        // Measured (its value depends on the machine's latency against the baseline).
        assert!(
            (0.0..=1.0).contains(&row["health"].as_f64().unwrap()),
            "{row}"
        );
        assert!(row["instances"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["id"] == row["primary"]));
        assert!(["active-active", "active-passive"].contains(&row["mode"].as_str().unwrap()));

        // Policy: bad patches are refused and name the field; a good one is taken in.
        let uri = format!("{DEPS}/cache");
        for (body, status, needle) in [
            (
                json!({"policy": {"max_mirors": 2}}),
                StatusCode::BAD_REQUEST,
                "max_mirors",
            ),
            (
                json!({"primary": "127.0.0.1:1"}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "primary: only the policy",
            ),
            (
                json!({"policy": {}}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "at least one policy field",
            ),
            (
                json!({"policy": {"min_mirrors": 5}}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "min_mirrors 5 is more than max_mirrors 3",
            ),
            (
                json!({"policy": {"switch_below": -1}}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "policy.switch_below is -1",
            ),
            (
                json!({"policy": {"switch_after": "two"}}),
                StatusCode::BAD_REQUEST,
                "policy.switch_after",
            ),
            (
                json!({"policy": {"switch_below": 0.95}}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "failback_above",
            ),
            (
                json!({"policy": {"mode": "sideways"}}),
                StatusCode::BAD_REQUEST,
                "policy.mode",
            ),
        ] {
            let r = send(&app, Method::PATCH, &uri, OP, Some(body.clone())).await;
            assert_eq!(r.status, status, "{body}: {}", r.text);
            assert!(
                r.json["error"].as_str().unwrap().contains(needle),
                "{body}: {}",
                r.text
            );
        }
        let r = send(
            &app,
            Method::PATCH,
            &uri,
            &viewer,
            Some(json!({"policy": {"max_mirrors": 2}})),
        )
        .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
        let stored = server.store().dependency("cache").await.unwrap().unwrap();
        assert_eq!(
            stored.spec.policy.max_mirrors, 3,
            "refused patches changed nothing"
        );
        let r = send(
            &app,
            Method::PATCH,
            &uri,
            OP,
            Some(json!({"policy": {"max_mirrors": 2, "mode": "active-passive"}})),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.json["spec"]["policy"]["max_mirrors"], 2);
        assert_eq!(
            r.json["spec"]["policy"]["min_mirrors"], 1,
            "fields not given are kept"
        );
        assert_eq!(
            r.json["mode"], "active-passive",
            "the running task took the policy in"
        );

        // Failover: a reason is required, the target must be an instance; then it is the
        // task's decision, recorded in its history.
        let fo = format!("{DEPS}/cache/failover");
        let r = send(&app, Method::POST, &fo, OP, Some(json!({}))).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
        assert!(r.json["error"].as_str().unwrap().starts_with("reason"));
        let r = send(
            &app,
            Method::POST,
            &fo,
            OP,
            Some(json!({"reason": "drill", "to": "ghost"})),
        )
        .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
        assert!(
            r.json["error"]
                .as_str()
                .unwrap()
                .contains("has no instance ghost"),
            "{}",
            r.text
        );
        let r = send(
            &app,
            Method::POST,
            &fo,
            OP,
            Some(json!({"reason": "x\u{7}"})),
        )
        .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
        let r = send(
            &app,
            Method::POST,
            &fo,
            &viewer,
            Some(json!({"reason": "drill"})),
        )
        .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
        // No mirror could be made (the dependency names no agent host): the switch has
        // nowhere to go, and the task says so; the primary stays.
        let r = send(
            &app,
            Method::POST,
            &fo,
            OP,
            Some(json!({"reason": "drill"})),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.json["primary_endpoint"], primary.as_str());
        let r = send(
            &app,
            Method::GET,
            &format!("{DEPS}/cache/history?limit=1000"),
            &viewer,
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let kinds: Vec<&str> = r.json["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap())
            .collect();
        assert!(kinds.contains(&"mirror.declared"), "{kinds:?}");
        assert!(kinds.iter().all(|k| k.starts_with("mirror.")), "{kinds:?}");
        // The provisioning it asked for was refused with the reason, as an event.
        assert!(r.text.contains("names no agent host"), "{}", r.text);
        for bad in ["limit=0", "limit=x", "limit=100001", "lmit=3"] {
            let r = send(
                &app,
                Method::GET,
                &format!("{DEPS}/cache/history?{bad}"),
                &viewer,
                None,
            )
            .await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.text);
        }

        // Removal: accepted, the task retires and settles, the name is free again.
        let r = send(&app, Method::DELETE, &uri, &viewer, None).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
        let r = send(&app, Method::DELETE, &uri, OP, None).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
        assert!(r.json["removed_at_ms"].as_i64().is_some());
        let r = send(
            &app,
            Method::PATCH,
            &uri,
            OP,
            Some(json!({"policy": {"max_mirrors": 3}})),
        )
        .await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
        let r = send(
            &app,
            Method::POST,
            &fo,
            OP,
            Some(json!({"reason": "drill"})),
        )
        .await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
        tokio::time::timeout(Duration::from_secs(20), server.tasks().wait_stopped(&task))
            .await
            .expect("the removed dependency's task settles");
        let rec = server.store().task(&task).await.unwrap().unwrap();
        assert!(rec.settled, "{}", rec.phase);
        assert_eq!(rec.phase, "removed");
        let r = send(&app, Method::DELETE, &uri, OP, None).await;
        assert_eq!(
            r.status,
            StatusCode::ACCEPTED,
            "removing again changes nothing: {}",
            r.text
        );
        let r = send(&app, Method::POST, DEPS, OP, Some(dep("cache", &primary))).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        assert_ne!(r.json["task"].as_str().unwrap(), task);
        server.tasks().stop_all();
        server.tasks().wait_idle().await;
        drop(redis);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_task_resumes_after_a_restart() {
    with_each_backend(|store| async move {
        let redis = TestRedis::start();
        let primary = redis.endpoint();
        let server = Server::open(config(store.clone())).await.unwrap();
        let app = server.router();
        let r = send(&app, Method::POST, DEPS, OP, Some(dep("cache", &primary))).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        let task = r.json["task"].as_str().unwrap().to_string();
        // Stopped at once, right after its creation (a stop before the runner's first
        // poll must stop it too).
        server.tasks().stop_all();
        tokio::time::timeout(Duration::from_secs(10), server.tasks().wait_idle())
            .await
            .expect("the mirror task's runner stops when the registry stops every task");
        server.store().close().await;
        drop(server);

        let server = Server::open(config(store)).await.unwrap();
        assert!(
            server.tasks().is_running(&task),
            "the mirror task was resumed"
        );
        let app = server.router();
        // It goes on observing: the health appears (or stays) and the phase is running.
        let show = format!("{DEPS}/cache");
        wait_for!("the resumed task's observations", {
            let r = send(&app, Method::GET, &show, OP, None).await;
            r.json["health"].as_f64().is_some() && r.json["phase"] == "running"
        });
        server.tasks().stop_all();
        server.tasks().wait_idle().await;
        drop(redis);
    })
    .await;
}
