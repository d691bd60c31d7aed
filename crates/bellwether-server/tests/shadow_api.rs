//! The shadow API in-process: bad input on every handler (400 for a body or query that is
//! not the shape, 422 naming the field, 404, 409), roles, a declaration whose task starts and
//! dispatches `shadow_start` to the host's agent, commands handed to the running task, and
//! removal. Every body runs against SQLite and PostgreSQL.

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use bellwether_server::{Server, ServerConfig};
use bellwether_store::testing::with_each_backend;
use bellwether_store::StoreConfig;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

const ADMIN: &str = "admin-token-for-tests-000001";
const OP: &str = "operator-token-for-tests-0001";
const ENROL: &str = "enrol-token-for-tests-000001";
const SHADOWS: &str = "/api/v1/shadow/shadows";

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

fn shadow(name: &str) -> Value {
    json!({
        "name": name, "host": "db-1",
        "resource": {"kind": "sqlite", "path": "srv/app.db"},
        "type": "transactional", "dir": "var/shadow/app",
        "locations": [{"id": "primary", "path": "srv/app.db"}, {"id": "cell-b", "path": "srv/b/app.db"}],
        "routing": {"link": "srv/current.db"}
    })
}

fn expect(r: &Resp, status: StatusCode, needle: &str) {
    assert_eq!(r.status, status, "{}", r.text);
    let error = r.json["error"].as_str().unwrap_or_default();
    assert!(error.contains(needle), "{needle:?} not in {error:?}");
}

async fn enrol(app: &Router, name: &str) {
    let r = send(
        app,
        Method::POST,
        "/api/v1/enrol",
        ENROL,
        Some(json!({"name": name})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_on_every_handler_is_refused_and_named() {
    with_each_backend(|store| async move {
        let server = Server::open(config(store)).await.unwrap();
        let app = server.router();

        // Declaring: not JSON, not the shape (400), out of range (422), unknown host (422).
        let r = send_raw(&app, Method::POST, SHADOWS, OP, Some("{nope".into())).await;
        expect(&r, StatusCode::BAD_REQUEST, "invalid JSON body");
        let mut body = shadow("app");
        body["polcy"] = json!({});
        expect(
            &send(&app, Method::POST, SHADOWS, OP, Some(body)).await,
            StatusCode::BAD_REQUEST,
            "polcy",
        );
        let mut body = shadow("app");
        body["type"] = json!("incremental");
        expect(
            &send(&app, Method::POST, SHADOWS, OP, Some(body)).await,
            StatusCode::BAD_REQUEST,
            "type",
        );
        for (path, value, needle) in [
            ("name", json!("App!"), "name"),
            ("dir", json!("/var/shadow"), "dir"),
            ("dir", json!("srv/app.db/x"), "overlaps"),
            ("points_every", json!("10ms"), "points_every"),
            ("webhook", json!("ftp://x"), "webhook"),
            ("merit.hysteresis", json!(3.0), "merit.hysteresis"),
            ("policy.rollback_above", json!(0.1), "policy.rollback_above"),
        ] {
            let mut body = shadow("app");
            match path.split_once('.') {
                Some((a, b)) => body[a] = json!({ b: value }),
                None => body[path] = value,
            }
            expect(
                &send(&app, Method::POST, SHADOWS, OP, Some(body)).await,
                StatusCode::UNPROCESSABLE_ENTITY,
                needle,
            );
        }
        let mut body = shadow("app");
        body["locations"][1]["path"] = json!("../../etc/passwd");
        expect(
            &send(&app, Method::POST, SHADOWS, OP, Some(body)).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "locations[1].path",
        );
        expect(
            &send(&app, Method::POST, SHADOWS, OP, Some(shadow("app"))).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "db-1 has never enrolled",
        );
        assert!(server.store().shadows(true).await.unwrap().is_empty());
        assert!(server
            .store()
            .tasks(Some("shadow"), false)
            .await
            .unwrap()
            .is_empty());

        // Unknown and malformed names on every per-shadow route.
        for (m, suffix, body) in [
            (Method::GET, "", None),
            (Method::DELETE, "", None),
            (Method::GET, "/points", None),
            (Method::POST, "/points", Some(json!({}))),
            (Method::POST, "/rollback", Some(json!({"reason": "x"}))),
            (
                Method::POST,
                "/predict",
                Some(json!({"source": "detector", "probability": 0.5, "expected_failure": "1796493600"})),
            ),
            (Method::POST, "/failure", Some(json!({"reason": "x"}))),
            (Method::GET, "/history", None),
        ] {
            let r = send(&app, m.clone(), &format!("{SHADOWS}/nope{suffix}"), OP, body.clone()).await;
            expect(&r, StatusCode::NOT_FOUND, "no shadow named nope");
            let r = send(&app, m, &format!("{SHADOWS}/Bad!{suffix}"), OP, body).await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
        }

        // A declared shadow: its task starts and asks the host's agent to start it.
        enrol(&app, "db-1").await;
        let r = send(&app, Method::POST, SHADOWS, OP, Some(shadow("app"))).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        let task = r.json["task"].as_str().unwrap().to_string();
        assert_eq!(r.json["phase"], "starting");
        assert_eq!(r.json["routed"], "primary");
        let actions = server.store().task_actions(&task).await.unwrap();
        let kinds: Vec<&str> = actions.iter().map(|a| a.kind.as_str()).collect();
        assert_eq!(kinds, ["shadow_start", "shadow_route"], "{actions:?}");
        assert!(actions.iter().all(|a| a.host == "db-1"));
        assert_eq!(actions[0].spec["builtin"], "shadow_start");
        assert_eq!(actions[0].spec["shadow"]["dir"], "var/shadow/app");
        expect(
            &send(&app, Method::POST, SHADOWS, OP, Some(shadow("app"))).await,
            StatusCode::CONFLICT,
            "exists already",
        );
        let base = format!("{SHADOWS}/app");

        // Commands with bad bodies: 400 for the shape, 422 naming the field.
        expect(
            &send(&app, Method::POST, &format!("{base}/points"), OP, Some(json!({"why": "x"}))).await,
            StatusCode::BAD_REQUEST,
            "why",
        );
        for (body, needle) in [
            (json!({}), "reason"),
            (json!({"reason": "  "}), "reason"),
            (json!({"reason": "x\u{7}"}), "reason"),
            (json!({"reason": "x", "to": "yesterday"}), "to"),
            (json!({"reason": "x", "location": "mars"}), "location"),
        ] {
            expect(
                &send(&app, Method::POST, &format!("{base}/rollback"), OP, Some(body)).await,
                StatusCode::UNPROCESSABLE_ENTITY,
                needle,
            );
        }
        for (body, status, needle) in [
            (
                json!({"source": "oracle", "probability": 0.5, "expected_failure": "1796493600"}),
                StatusCode::BAD_REQUEST,
                "source",
            ),
            (
                json!({"source": "detector", "probability": 1.5, "expected_failure": "1796493600"}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "probability",
            ),
            (
                json!({"source": "detector", "probability": 0.5, "expected_failure": "soon"}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "expected_failure",
            ),
            (
                json!({"source": "detector", "probability": 0.5, "expected_failure": "1796493600", "location": "mars"}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "location",
            ),
        ] {
            expect(
                &send(&app, Method::POST, &format!("{base}/predict"), OP, Some(body)).await,
                status,
                needle,
            );
        }
        for (body, status, needle) in [
            (json!({}), StatusCode::BAD_REQUEST, "reason"),
            (
                json!({"reason": "x", "failed_at": "4102444800"}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "failed_at",
            ),
            (
                json!({"reason": "x", "failed_at": "2026-13-40T00:00:00Z"}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "failed_at",
            ),
        ] {
            expect(
                &send(&app, Method::POST, &format!("{base}/failure"), OP, Some(body)).await,
                status,
                needle,
            );
        }
        for q in ["?limit=0", "?limit=99999", "?lmit=3"] {
            let r = send(&app, Method::GET, &format!("{base}/history{q}"), OP, None).await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{q}: {}", r.text);
        }

        // A viewer reads but never steers.
        let r = send(
            &app,
            Method::POST,
            "/api/v1/tokens",
            ADMIN,
            Some(json!({"role": "viewer", "name": "dash"})),
        )
        .await;
        let viewer = r.json["token"].as_str().unwrap().to_string();
        assert_eq!(send(&app, Method::GET, &base, &viewer, None).await.status, StatusCode::OK);
        let r = send(&app, Method::POST, &format!("{base}/rollback"), &viewer, Some(json!({"reason": "x"}))).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);

        // Good commands reach the running task. The agent never answered the start: a
        // failure rolls nothing back on its own (the shadow is not running), and the
        // operator's rollback, with no observation of any location, restores nothing either
        // (never acting on no data); the events say both.
        let r = send(&app, Method::POST, &format!("{base}/failure"), OP, Some(json!({"reason": "disk I/O error"}))).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let r = send(&app, Method::POST, &format!("{base}/rollback"), OP, Some(json!({"reason": "drill", "to": "2026-12-05T18:00:00Z"}))).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let r = send(&app, Method::GET, &format!("{base}/history"), OP, None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let kinds: Vec<&str> = r.json["events"].as_array().unwrap().iter().filter_map(|e| e["kind"].as_str()).collect();
        assert!(kinds.contains(&"shadow.rollback.held"), "{kinds:?}");
        assert!(kinds.contains(&"shadow.rollback.no_data"), "{kinds:?}");
        assert_eq!(r.json["rollbacks"][0]["ok"], false, "{}", r.text);
        assert!(server.store().task_actions(&task).await.unwrap().iter().all(|a| a.kind != "shadow_restore"));
        let r = send(&app, Method::GET, &format!("{base}/points"), OP, None).await;
        assert_eq!(r.json["points"], json!([]), "{}", r.text);
        let r = send(&app, Method::GET, SHADOWS, OP, None).await;
        assert_eq!(r.json.as_array().unwrap().len(), 1, "{}", r.text);

        // Removal: 202, then commands are refused with 409.
        let r = send(&app, Method::DELETE, &base, OP, None).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
        assert_eq!(r.json["phase"], "removing");
        expect(
            &send(&app, Method::POST, &format!("{base}/rollback"), OP, Some(json!({"reason": "x"}))).await,
            StatusCode::CONFLICT,
            "was removed",
        );
        server.tasks().stop_all();
        server.tasks().wait_idle().await;
        server.store().close().await;
    })
    .await;
}
