//! The configuration API in-process: agent reports and the change stream, graph versions,
//! snapshots, the simulator, bad input on every handler, and a config task driven by a fake
//! agent loop (answering `pg_trial`, `pg_read_settings` and `pg_apply` in-test) that resumes
//! after a restart of the server without repeating an action. Every body runs against SQLite
//! and PostgreSQL. (The real agent on a real PostgreSQL is the end-to-end test after the merge.)

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use bellwether_config::setting::{Catalog, Context, Setting, VarType};
use bellwether_server::{Server, ServerConfig};
use bellwether_store::testing::with_each_backend;
use bellwether_store::StoreConfig;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

const ADMIN: &str = "admin-token-for-tests-000001";
const OP: &str = "operator-token-for-tests-0001";
const ENROL: &str = "enrol-token-for-tests-000001";

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

async fn send(app: &Router, method: Method, uri: &str, token: &str, body: Option<Value>) -> Resp {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {token}"));
    let body = match body {
        Some(b) => {
            req = req.header(header::CONTENT_TYPE, "application/json");
            Body::from(b.to_string())
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

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn enrol(app: &Router, name: &str) -> String {
    let r = send(
        app,
        Method::POST,
        "/api/v1/enrol",
        ENROL,
        Some(json!({"name": name})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.json["agent_token"].as_str().unwrap().to_string()
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

fn setting(
    name: &str,
    value: &str,
    vartype: VarType,
    unit: Option<&str>,
    ctx: Context,
    min: f64,
    max: f64,
) -> Setting {
    Setting {
        name: name.into(),
        value: value.into(),
        unit: unit.map(str::to_string),
        vartype,
        context: ctx,
        min: Some(min),
        max: Some(max),
        enumvals: Vec::new(),
        boot_val: Some(value.into()),
        reset_val: Some(value.into()),
        source: "default".into(),
        sourcefile: None,
        sourceline: None,
        pending_restart: false,
        category: String::new(),
        short_desc: String::new(),
    }
}

/// A small PostgreSQL 15 catalog with `values` in force.
fn catalog(values: &BTreeMap<String, String>) -> Catalog {
    let mut settings = BTreeMap::new();
    for s in [
        setting(
            "work_mem",
            "4096",
            VarType::Integer,
            Some("kB"),
            Context::User,
            64.0,
            2147483647.0,
        ),
        setting(
            "max_connections",
            "100",
            VarType::Integer,
            None,
            Context::Postmaster,
            1.0,
            262143.0,
        ),
        setting(
            "superuser_reserved_connections",
            "3",
            VarType::Integer,
            None,
            Context::Postmaster,
            0.0,
            262143.0,
        ),
        setting(
            "random_page_cost",
            "4",
            VarType::Real,
            None,
            Context::User,
            0.0,
            1.79769e308,
        ),
    ] {
        settings.insert(s.name.clone(), s);
    }
    for (k, v) in values {
        if let Some(s) = settings.get_mut(k) {
            s.value = v.clone();
        }
    }
    Catalog {
        server_version_num: 150000,
        settings,
    }
}

fn default_values() -> BTreeMap<String, String> {
    catalog(&BTreeMap::new()).values()
}

async fn report(app: &Router, token: &str, values: &BTreeMap<String, String>, at_ms: i64) -> Resp {
    send(
        app,
        Method::POST,
        "/api/v1/agent/config",
        token,
        Some(
            json!({"source": "main", "kind": "postgres", "values": values,
                    "catalog": catalog(values), "at_ms": at_ms}),
        ),
    )
    .await
}

macro_rules! config_test {
    ($name:ident, |$store:ident| $body:block) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $name() {
            with_each_backend(|$store: StoreConfig| async move $body).await;
        }
    };
}

config_test!(
    bad_input_on_every_config_handler_is_refused_naming_what_is_wrong,
    |store| {
        let server = Server::open(config(store)).await.unwrap();
        let app = server.router();
        let db1 = enrol(&app, "db-01").await;
        let db2 = enrol(&app, "db-02").await;
        let viewer = viewer_token(&app).await;
        let values = default_values();
        assert_eq!(
            report(&app, &db1, &values, now_ms()).await.status,
            StatusCode::OK
        );
        let t = now_ms();
        let post = Method::POST;
        let get = Method::GET;

        // The agent routes.
        let cases: Vec<(Value, &str)> = vec![
            (
                json!({"source": "", "kind": "postgres", "values": {}, "at_ms": t}),
                "source",
            ),
            (
                json!({"source": "file:/etc/a.conf", "kind": "postgres", "values": {}, "at_ms": t}),
                "names a file",
            ),
            (
                json!({"source": "main", "kind": "file", "values": {}, "at_ms": t}),
                "file:PATH",
            ),
            (
                json!({"source": "file:/a", "kind": "file", "values": {}, "catalog": {}, "at_ms": t}),
                "no catalog",
            ),
            (
                json!({"source": "main", "kind": "postgres", "values": {}, "catalog": {"settings": 3}, "at_ms": t}),
                "catalog",
            ),
            (
                json!({"source": "main", "kind": "postgres", "values": {}, "at_ms": t + 3_600_000}),
                "at_ms",
            ),
            (
                json!({"source": "main", "kind": "redis", "values": {}, "at_ms": t}),
                "kind",
            ),
            // The host is the token's: another host cannot be named in the body.
            (
                json!({"host": "db-01", "source": "main", "kind": "postgres", "values": {}, "at_ms": t}),
                "host",
            ),
        ];
        for (body, needle) in cases {
            let r = send(
                &app,
                post.clone(),
                "/api/v1/agent/config",
                &db2,
                Some(body.clone()),
            )
            .await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text);
            assert!(
                r.text.contains(needle),
                "{body}: {} lacks {needle:?}",
                r.text
            );
        }
        let graph_cases: Vec<(Value, &str)> = vec![
            (
                json!({"source": "main", "graph": {"nodes": 1}, "at_ms": t}),
                "graph",
            ),
            (
                json!({"source": "main", "graph": {"nodes": [], "edges": [{"from": "a", "to": "b", "kind": "requires", "confidence": 2.0, "evidence": []}]}, "at_ms": t}),
                "graph of main",
            ),
            (
                json!({"source": "file:/a", "graph": {"nodes": [], "edges": []}, "at_ms": t}),
                "file",
            ),
        ];
        for (body, needle) in graph_cases {
            let r = send(
                &app,
                post.clone(),
                "/api/v1/agent/config/graph",
                &db1,
                Some(body.clone()),
            )
            .await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text);
            assert!(
                r.text.contains(needle),
                "{body}: {} lacks {needle:?}",
                r.text
            );
        }
        // db-02's token wrote nothing for db-01, and nothing at all.
        let r = send(&app, get.clone(), "/api/v1/config/sources", &viewer, None).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.json.as_array().unwrap().len(), 1, "{}", r.text);
        assert_eq!(r.json[0]["host"], "db-01");
        assert_eq!(r.json[0]["graph_version"], Value::Null);

        // People's tokens on the agent routes, agent and viewer tokens on the operator routes.
        for (m, uri) in [
            (post.clone(), "/api/v1/config/snapshots"),
            (post.clone(), "/api/v1/config/snapshots/s-1/restore"),
            (post.clone(), "/api/v1/config/tasks"),
            (post.clone(), "/api/v1/config/tasks/c-1/abort"),
            (post.clone(), "/api/v1/config/tasks/c-1/revert"),
        ] {
            for token in [&viewer, &db1] {
                let r = send(&app, m.clone(), uri, token, Some(json!({}))).await;
                assert_eq!(r.status, StatusCode::FORBIDDEN, "{m} {uri}: {}", r.text);
            }
        }
        for uri in ["/api/v1/agent/config", "/api/v1/agent/config/graph"] {
            let r = send(&app, post.clone(), uri, OP, Some(json!({}))).await;
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{uri}: {}", r.text);
        }

        // The viewer routes.
        let gets: Vec<(&str, StatusCode, &str)> = vec![
            (
                "/api/v1/config/changes?host=db-99",
                StatusCode::NOT_FOUND,
                "db-99",
            ),
            (
                "/api/v1/config/changes?limit=0",
                StatusCode::BAD_REQUEST,
                "limit",
            ),
            (
                "/api/v1/config/changes?colour=red",
                StatusCode::BAD_REQUEST,
                "colour",
            ),
            (
                "/api/v1/config/changes?host=not%20a%20host",
                StatusCode::BAD_REQUEST,
                "host",
            ),
            (
                "/api/v1/config/snapshots?host=db-99",
                StatusCode::NOT_FOUND,
                "db-99",
            ),
            (
                "/api/v1/config/snapshots/s-none",
                StatusCode::NOT_FOUND,
                "s-none",
            ),
            (
                "/api/v1/config/snapshots/..x",
                StatusCode::BAD_REQUEST,
                "snapshot id",
            ),
            (
                "/api/v1/config/graph?host=db-99&source=main",
                StatusCode::NOT_FOUND,
                "db-99",
            ),
            (
                "/api/v1/config/graph?host=db-01&source=other",
                StatusCode::NOT_FOUND,
                "other",
            ),
            (
                "/api/v1/config/graph?host=db-01",
                StatusCode::BAD_REQUEST,
                "source",
            ),
            (
                "/api/v1/config/graph?host=db-01&source=main&format=dot",
                StatusCode::BAD_REQUEST,
                "format",
            ),
            (
                "/api/v1/config/graph?host=db-01&source=main&depth=11",
                StatusCode::BAD_REQUEST,
                "depth",
            ),
            (
                "/api/v1/config/graph?host=db-01&source=main&around=wrok_mem",
                StatusCode::BAD_REQUEST,
                "wrok_mem",
            ),
            (
                "/api/v1/config/tasks/c-none",
                StatusCode::NOT_FOUND,
                "c-none",
            ),
        ];
        for (uri, status, needle) in gets {
            let r = send(&app, get.clone(), uri, &viewer, None).await;
            assert_eq!(r.status, status, "{uri}: {}", r.text);
            assert!(
                r.text.contains(needle),
                "{uri}: {} lacks {needle:?}",
                r.text
            );
        }

        // Snapshots and restores.
        let snaps: Vec<(Value, StatusCode, &str)> = vec![
            (
                json!({"host": "db-99", "source": "main"}),
                StatusCode::NOT_FOUND,
                "db-99",
            ),
            (
                json!({"host": "db-01", "source": "other"}),
                StatusCode::NOT_FOUND,
                "other",
            ),
            (
                json!({"host": "db-01", "source": "main", "colour": 1}),
                StatusCode::BAD_REQUEST,
                "colour",
            ),
            (json!({"host": "db-01"}), StatusCode::BAD_REQUEST, "source"),
        ];
        for (body, status, needle) in snaps {
            let r = send(
                &app,
                post.clone(),
                "/api/v1/config/snapshots",
                OP,
                Some(body.clone()),
            )
            .await;
            assert_eq!(r.status, status, "{body}: {}", r.text);
            assert!(
                r.text.contains(needle),
                "{body}: {} lacks {needle:?}",
                r.text
            );
        }
        let r = send(
            &app,
            post.clone(),
            "/api/v1/config/snapshots/s-none/restore",
            OP,
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
        let r = send(
            &app,
            post.clone(),
            "/api/v1/config/snapshots",
            OP,
            Some(json!({"host": "db-01", "source": "main"})),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        let sid = r.json["id"].as_str().unwrap().to_string();
        let r = send(
            &app,
            post.clone(),
            &format!("/api/v1/config/snapshots/{sid}/restore"),
            OP,
            Some(json!({"colour": 1})),
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
        // Nothing differs from the latest report: nothing to restore.
        let r = send(
            &app,
            post.clone(),
            &format!("/api/v1/config/snapshots/{sid}/restore"),
            OP,
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
        assert!(r.text.contains("already has the values"), "{}", r.text);

        // The simulator.
        let sims: Vec<(Value, StatusCode, &str)> = vec![
            (
                json!({"host": "db-01", "source": "main", "set": [["wrok_mem", "64kB"]]}),
                StatusCode::BAD_REQUEST,
                "wrok_mem",
            ),
            (
                json!({"host": "db-01", "source": "main", "set": []}),
                StatusCode::BAD_REQUEST,
                "set",
            ),
            (
                json!({"host": "db-01", "source": "main", "set": [["work_mem", "1MB"], ["work_mem", "2MB"]]}),
                StatusCode::BAD_REQUEST,
                "twice",
            ),
            (
                json!({"host": "db-01", "source": "main", "set": [["work_mem"]]}),
                StatusCode::BAD_REQUEST,
                "set",
            ),
            (
                json!({"host": "db-99", "source": "main", "set": [["work_mem", "1MB"]]}),
                StatusCode::NOT_FOUND,
                "db-99",
            ),
            (
                json!({"host": "db-01", "source": "main", "set": [["work_mem", "1MB"]], "x": 1}),
                StatusCode::BAD_REQUEST,
                "x",
            ),
        ];
        for (body, status, needle) in sims {
            let r = send(
                &app,
                post.clone(),
                "/api/v1/config/simulate",
                &viewer,
                Some(body.clone()),
            )
            .await;
            assert_eq!(r.status, status, "{body}: {}", r.text);
            assert!(
                r.text.contains(needle),
                "{body}: {} lacks {needle:?}",
                r.text
            );
        }

        // Tasks.
        let tasks: Vec<(Value, StatusCode, &str)> = vec![
            (
                json!({"plan": "targets: [\n  {host: db-01, database: main}\nset: {work_mem: 64kB\n"}),
                StatusCode::BAD_REQUEST,
                "config.yaml:3:",
            ),
            (
                json!({"plan": "description: d\nauthor: a\ntargets: [{host: db-01, database: main}]\nset: {work_mem: 64kB}\nrisk_threshold: 7\n", "file": "change.yaml"}),
                StatusCode::BAD_REQUEST,
                "risk_threshold",
            ),
            (
                json!({"targets": [{"host": "db-01", "database": "main"}], "set": [["wrok_mem", "64kB"]]}),
                StatusCode::BAD_REQUEST,
                "wrok_mem",
            ),
            (
                json!({"targets": [{"host": "db-01", "database": "main"}], "set": [["work_mem", "1kB"]]}),
                StatusCode::BAD_REQUEST,
                "work_mem",
            ),
            (
                json!({"targets": [{"host": "db-99", "database": "main"}], "set": [["work_mem", "64kB"]]}),
                StatusCode::NOT_FOUND,
                "db-99",
            ),
            (
                json!({"targets": [{"host": "db-01", "database": "other"}], "set": [["work_mem", "64kB"]]}),
                StatusCode::NOT_FOUND,
                "other",
            ),
            (
                json!({"targets": [], "set": [["work_mem", "64kB"]]}),
                StatusCode::BAD_REQUEST,
                "targets",
            ),
            (
                json!({"plan": "x: 1", "targets": [{"host": "db-01", "database": "main"}]}),
                StatusCode::BAD_REQUEST,
                "not both",
            ),
            (
                json!({"targets": [{"host": "db-01", "database": "main", "port": 5432}], "set": []}),
                StatusCode::BAD_REQUEST,
                "port",
            ),
            (
                json!({"targets": [{"host": "db-01", "database": "main"}], "set": [["work_mem", "64kB"]], "id": "../x"}),
                StatusCode::BAD_REQUEST,
                "task id",
            ),
        ];
        for (body, status, needle) in tasks {
            let r = send(
                &app,
                post.clone(),
                "/api/v1/config/tasks",
                OP,
                Some(body.clone()),
            )
            .await;
            assert_eq!(r.status, status, "{body}: {}", r.text);
            assert!(
                r.text.contains(needle),
                "{body}: {} lacks {needle:?}",
                r.text
            );
        }
        for verb in ["abort", "revert"] {
            let r = send(
                &app,
                post.clone(),
                &format!("/api/v1/config/tasks/c-none/{verb}"),
                OP,
                None,
            )
            .await;
            assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
            let r = send(
                &app,
                post.clone(),
                &format!("/api/v1/config/tasks/c-none/{verb}"),
                OP,
                Some(json!({"why": 1})),
            )
            .await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
        }
        // Nothing was started.
        let r = send(&app, get.clone(), "/api/v1/config/tasks", &viewer, None).await;
        assert_eq!(r.json, json!([]), "{}", r.text);
        server.store().close().await;
    }
);

config_test!(two_reports_make_the_change_stream, |store| {
    let server = Server::open(config(store)).await.unwrap();
    let app = server.router();
    let db1 = enrol(&app, "db-01").await;
    let mut values = default_values();
    let t0 = now_ms() - 10_000;
    // The first report is the starting point: no change.
    let r = report(&app, &db1, &values, t0).await;
    assert_eq!(
        (r.status, r.json["changed"].clone()),
        (StatusCode::OK, json!(0)),
        "{}",
        r.text
    );
    let r = send(
        &app,
        Method::POST,
        "/api/v1/config/snapshots",
        OP,
        Some(json!({"host": "db-01", "source": "main"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let before = r.json["id"].as_str().unwrap().to_string();
    values.insert("work_mem".into(), "65536".into());
    values.insert("random_page_cost".into(), "1.1".into());
    let r = report(&app, &db1, &values, t0 + 1_000).await;
    assert_eq!(r.json["changed"], 2, "{}", r.text);
    // The same report again changes nothing.
    let r = report(&app, &db1, &values, t0 + 2_000).await;
    assert_eq!(r.json["changed"], 0, "{}", r.text);
    // A file source: its changes are seen on disk.
    let file = |v: &str| json!({"source": "file:/etc/app.ini", "kind": "file", "values": {"server.port": v}, "at_ms": t0 + 3_000});
    assert_eq!(
        send(
            &app,
            Method::POST,
            "/api/v1/agent/config",
            &db1,
            Some(file("80"))
        )
        .await
        .status,
        StatusCode::OK
    );
    assert_eq!(
        send(
            &app,
            Method::POST,
            "/api/v1/agent/config",
            &db1,
            Some(file("8080"))
        )
        .await
        .json["changed"],
        1
    );

    let r = send(
        &app,
        Method::GET,
        "/api/v1/config/changes?host=db-01&source=main",
        OP,
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let events = r.json.as_array().unwrap();
    assert_eq!(events.len(), 2, "{}", r.text);
    let mut keys: Vec<(&str, &str, &str)> = events
        .iter()
        .map(|e| {
            assert_eq!(e["kind"], "config.changed");
            assert_eq!(e["task"], Value::Null);
            assert_eq!(e["figures"]["source"], "instance");
            assert_eq!(e["figures"]["time_ms"], t0 + 1_000);
            (
                e["figures"]["key"].as_str().unwrap(),
                e["figures"]["old"].as_str().unwrap(),
                e["figures"]["new"].as_str().unwrap(),
            )
        })
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        vec![
            ("random_page_cost", "4", "1.1"),
            ("work_mem", "4096", "65536")
        ]
    );
    let r = send(
        &app,
        Method::GET,
        "/api/v1/config/changes?host=db-01&source=file:/etc/app.ini",
        OP,
        None,
    )
    .await;
    let events = r.json.as_array().unwrap();
    assert_eq!(events.len(), 1, "{}", r.text);
    assert_eq!(events[0]["figures"]["source"], "disk");
    assert_eq!(
        (
            events[0]["figures"]["old"].clone(),
            events[0]["figures"]["new"].clone()
        ),
        (json!("80"), json!("8080"))
    );
    // Following the stream: after the first event, the rest oldest first.
    let all = send(&app, Method::GET, "/api/v1/config/changes", OP, None)
        .await
        .json;
    let oldest = all.as_array().unwrap().last().unwrap()["id"]
        .as_i64()
        .unwrap();
    let after = send(
        &app,
        Method::GET,
        &format!("/api/v1/config/changes?after={oldest}"),
        OP,
        None,
    )
    .await
    .json;
    assert_eq!(after.as_array().unwrap().len(), 2);

    // A snapshot of the latest report, listed and read back whole.
    let r = send(
        &app,
        Method::POST,
        "/api/v1/config/snapshots",
        OP,
        Some(json!({"host": "db-01", "source": "main", "reason": "before tuning"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let sid = r.json["id"].as_str().unwrap().to_string();
    let list = send(
        &app,
        Method::GET,
        "/api/v1/config/snapshots?host=db-01&source=main",
        OP,
        None,
    )
    .await
    .json;
    assert_eq!(
        list.as_array().unwrap().len(),
        2,
        "the one before the change and this one"
    );
    assert_eq!(
        (
            list[0]["id"].clone(),
            list[0]["whole"].clone(),
            list[0]["reason"].clone()
        ),
        (json!(sid), json!(true), json!("before tuning"))
    );
    let snap = send(
        &app,
        Method::GET,
        &format!("/api/v1/config/snapshots/{sid}"),
        OP,
        None,
    )
    .await
    .json;
    assert_eq!(snap["values"]["work_mem"], "65536");
    let sources = send(&app, Method::GET, "/api/v1/config/sources", OP, None)
        .await
        .json;
    assert_eq!(sources.as_array().unwrap().len(), 2);
    // Restoring the snapshot from before the change is a config task that sets the two old
    // values; an abort reaches its runner.
    let r = send(
        &app,
        Method::POST,
        &format!("/api/v1/config/snapshots/{before}/restore"),
        OP,
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(
        r.json["set"],
        json!([["random_page_cost", "4"], ["work_mem", "4096"]]),
        "{}",
        r.text
    );
    assert_eq!(r.json["description"], format!("restore snapshot {before}"));
    let id = r.json["id"].as_str().unwrap().to_string();
    let r = send(
        &app,
        Method::POST,
        &format!("/api/v1/config/tasks/{id}/abort"),
        OP,
        Some(json!({"reason": "not now"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = send(
        &app,
        Method::GET,
        &format!("/api/v1/events?task={id}&after=0"),
        OP,
        None,
    )
    .await;
    assert!(
        r.json
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "config.abort.requested"),
        "{}",
        r.text
    );
    server.store().close().await;
});

config_test!(
    a_stored_graph_gets_a_new_version_and_serves_in_three_formats,
    |store| {
        let server = Server::open(config(store)).await.unwrap();
        let app = server.router();
        let db1 = enrol(&app, "db-01").await;
        let values = default_values();
        report(&app, &db1, &values, now_ms()).await;
        let node = |n: &str| json!({"name": n, "value": null, "time_ms": null, "author": null, "context": null});
        let edge = json!({"from": "wal_level", "to": "max_wal_senders", "kind": "conflicts_with", "confidence": 0.9,
                      "evidence": [{"source": "probe", "detail": "FATAL: WAL streaming (max_wal_senders > 0) requires wal_level \"replica\" or \"logical\""}]});
        let g1 = json!({"nodes": [node("wal_level"), node("max_wal_senders")], "edges": [edge]});
        let r = send(
            &app,
            Method::POST,
            "/api/v1/agent/config/graph",
            &db1,
            Some(
                json!({"source": "main", "graph": g1, "stats": {"trials": 12}, "at_ms": now_ms()}),
            ),
        )
        .await;
        assert_eq!(
            (r.status, r.json["version"].clone()),
            (StatusCode::CREATED, json!(1)),
            "{}",
            r.text
        );
        let r = send(
            &app,
            Method::POST,
            "/api/v1/agent/config/graph",
            &db1,
            Some(json!({"source": "main", "graph": g1, "at_ms": now_ms()})),
        )
        .await;
        assert_eq!(r.json["version"], 2, "{}", r.text);
        let sources = send(&app, Method::GET, "/api/v1/config/sources", OP, None)
            .await
            .json;
        assert_eq!(sources[0]["graph_version"], 2);

        let g = send(
            &app,
            Method::GET,
            "/api/v1/config/graph?host=db-01&source=main",
            OP,
            None,
        )
        .await;
        assert_eq!(g.status, StatusCode::OK, "{}", g.text);
        assert_eq!(g.json["version"], 2);
        let edges = g.json["edges"].as_array().unwrap();
        assert!(
            edges.iter().any(|e| e["from"] == "wal_level"
                && e["to"] == "max_wal_senders"
                && e["evidence"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|v| v["source"] == "probe")),
            "the learned edge is served: {}",
            g.text
        );
        // The shipped rules joined it (superuser_reserved_connections < max_connections).
        assert!(
            edges.iter().any(|e| e["evidence"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v["source"] == "rule")),
            "{}",
            g.text
        );
        // The node values come from the latest report.
        let mc = g.json["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == "max_connections");
        if let Some(mc) = mc {
            assert_eq!(mc["value"], "100");
        }
        let around = send(
            &app,
            Method::GET,
            "/api/v1/config/graph?host=db-01&source=main&around=wal_level&depth=1",
            OP,
            None,
        )
        .await;
        assert_eq!(around.status, StatusCode::OK, "{}", around.text);
        let names: Vec<&str> = around.json["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["name"].as_str().unwrap())
            .collect();
        assert!(
            names.contains(&"wal_level") && names.contains(&"max_wal_senders"),
            "{names:?}"
        );
        assert!(
            names.len() < g.json["nodes"].as_array().unwrap().len(),
            "around is a subgraph: {names:?}"
        );
        let gml = send(
            &app,
            Method::GET,
            "/api/v1/config/graph?host=db-01&source=main&around=wal_level&format=graphml",
            OP,
            None,
        )
        .await;
        assert_eq!(gml.status, StatusCode::OK);
        assert!(
            gml.text.contains("<graphml") && gml.text.contains("max_wal_senders"),
            "{}",
            gml.text
        );
        let cy = send(
            &app,
            Method::GET,
            "/api/v1/config/graph?host=db-01&source=main&around=wal_level&format=cypher",
            OP,
            None,
        )
        .await;
        assert!(
            cy.text.contains("MERGE") && cy.text.contains("CONFLICTS_WITH"),
            "{}",
            cy.text
        );

        // The simulator on the stored catalog and graph: a value out of range is refused, naming it.
        let r = send(
            &app,
            Method::POST,
            "/api/v1/config/simulate",
            OP,
            Some(json!({"host": "db-01", "source": "main", "set": [["work_mem", "1kB"]]})),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.json["verdict"], "refuse", "{}", r.text);
        assert!(r.text.contains("work_mem"), "{}", r.text);
        let r = send(
            &app,
            Method::POST,
            "/api/v1/config/simulate",
            OP,
            Some(json!({"host": "db-01", "source": "main", "set": [["work_mem", "64MB"]]})),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.json["verdict"], "session", "{}", r.text);
        assert_eq!(r.json["graph_version"], 2);
        assert_eq!(r.json["performance"], Value::Null);
        assert!(
            r.json["performance_reason"]
                .as_str()
                .unwrap()
                .contains("no change"),
            "{}",
            r.text
        );
        let r = send(
            &app,
            Method::POST,
            "/api/v1/config/simulate",
            OP,
            Some(json!({"host": "db-01", "source": "main", "set": [["max_connections", "2"]]})),
        )
        .await;
        assert_eq!(
            r.json["verdict"], "refuse",
            "superuser_reserved_connections 3 >= max_connections 2: {}",
            r.text
        );
        server.store().close().await;
    }
);

/// A fake agent for one PostgreSQL instance: sends its metrics, answers the config task's
/// actions (`pg_trial` starts, `pg_read_settings` reads the catalog, `pg_apply` sets the
/// values), and records every action id it ran. Stops when `stop` turns true.
fn fake_agent(
    app: Router,
    token: String,
    values: std::sync::Arc<std::sync::Mutex<BTreeMap<String, String>>>,
    ran: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while !*stop.borrow() {
            let t = now_ms();
            let samples = json!({"samples": [
                {"ts_ms": t, "name": "pg.main.tps", "value": 1000.0 + (t % 7) as f64},
                {"ts_ms": t, "name": "pg.main.latency_ms", "value": 2.0 + (t % 3) as f64 * 0.01},
                {"ts_ms": t, "name": "pg.main.errors_per_s", "value": 0.0},
                {"ts_ms": t, "name": "pg.main.up", "value": 1.0},
            ]});
            let r = send(
                &app,
                Method::POST,
                "/api/v1/agent/samples",
                &token,
                Some(samples),
            )
            .await;
            assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
            let r = send(
                &app,
                Method::GET,
                "/api/v1/agent/actions?wait_ms=100",
                &token,
                None,
            )
            .await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text);
            for a in r.json["actions"].as_array().unwrap() {
                let id = a["id"].as_str().unwrap().to_string();
                let spec = &a["spec"];
                let already = ran.lock().unwrap().iter().any(|(i, _)| *i == id);
                let output = match spec["builtin"].as_str().unwrap() {
                    "pg_trial" => json!({"started": true, "message": "", "ms": 80}),
                    "pg_read_settings" => {
                        serde_json::to_value(catalog(&values.lock().unwrap())).unwrap()
                    }
                    "pg_apply" => {
                        let mut v = values.lock().unwrap();
                        if !already {
                            for pair in spec["settings"].as_array().unwrap() {
                                let k = pair[0].as_str().unwrap().to_string();
                                let base = catalog(&BTreeMap::new()).settings[&k].value.clone();
                                let new = match pair[1].as_str() {
                                    Some("64MB") => "65536".to_string(),
                                    Some(other) => other.to_string(),
                                    None => base,
                                };
                                v.insert(k, new);
                            }
                        }
                        json!({"applied_at_ms": now_ms(), "values": *v, "pending_restart": [], "restarted": false})
                    }
                    other => panic!("unexpected action {other}: {a}"),
                };
                if !already {
                    ran.lock()
                        .unwrap()
                        .push((id.clone(), a["kind"].as_str().unwrap().to_string()));
                }
                let result = json!({"outcome": {"status": "ok"}, "started_ms": t, "finished_ms": now_ms(),
                                    "stdout_tail": "", "stderr_tail": "", "output": output});
                let r = send(
                    &app,
                    Method::POST,
                    &format!("/api/v1/agent/actions/{id}/result"),
                    &token,
                    Some(result),
                )
                .await;
                assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
            }
            tokio::select! {
                _ = stop.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    })
}

async fn wait_for(app: &Router, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let r = send(
            app,
            Method::GET,
            &format!("/api/v1/config/tasks/{id}"),
            OP,
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        if done(&r.json) {
            return r.json;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "config task {id} never reached {what}: {}",
            r.text
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn snapshot_of(v: &std::sync::Mutex<BTreeMap<String, String>>) -> BTreeMap<String, String> {
    v.lock().unwrap().clone()
}

const PLAN: &str = "description: raise work_mem for the reports
author: alice
targets:
  - {host: db-01, database: main}
set:
  work_mem: 64MB
watch:
  baseline: 2s
  min_baseline_samples: 3
  bake: 2s
  confirm: 1s
  confirm_timeout: 10s
  rules:
    - {metric: tps, direction: decrease, percent: 50, for: 1s, weight: 1}
risk_threshold: 0.5
trial: true
";

config_test!(
    a_config_task_runs_with_a_fake_agent_and_resumes_after_a_restart_without_repeating_an_action,
    |store| {
        let server = Server::open(config(store.clone())).await.unwrap();
        let app = server.router();
        let db1 = enrol(&app, "db-01").await;
        let values = std::sync::Arc::new(std::sync::Mutex::new(default_values()));
        let ran = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        report(&app, &db1, &snapshot_of(&values), now_ms()).await;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let agent = fake_agent(
            app.clone(),
            db1.clone(),
            values.clone(),
            ran.clone(),
            stop_rx,
        );
        let r = send(
            &app,
            Method::POST,
            "/api/v1/config/tasks",
            OP,
            Some(json!({"plan": PLAN, "file": "work_mem.yaml", "id": "c-work-mem"})),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        assert_eq!(r.json["phase"], "running");
        // A second change on the same host waits for this one.
        let r2 = send(&app, Method::POST, "/api/v1/config/tasks", OP, Some(json!({"targets": [{"host": "db-01", "database": "main"}], "set": [["random_page_cost", "1.1"]]}))).await;
        assert_eq!(r2.status, StatusCode::CONFLICT, "{}", r2.text);
        // Wait until the trial and the snapshot ran, then take the server away mid-change.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while ran.lock().unwrap().len() < 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the agent never got the trial and the snapshot: {:?}",
                ran.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop_tx.send(true).unwrap();
        agent.await.unwrap();
        server.store().close().await;
        drop(app);
        drop(server);

        let server = Server::open(config(store)).await.unwrap();
        let app = server.router();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let agent = fake_agent(
            app.clone(),
            db1.clone(),
            values.clone(),
            ran.clone(),
            stop_rx,
        );
        let done = wait_for(&app, "c-work-mem", "settled", |v| v["settled"] == true).await;
        stop_tx.send(true).unwrap();
        agent.await.unwrap();
        assert_eq!(done["phase"], "completed", "{done}");
        assert_eq!(snapshot_of(&values)["work_mem"], "65536");

        // Every action ran once: one trial, one snapshot, one apply, and no id twice.
        let ran = ran.lock().unwrap().clone();
        let kinds: Vec<&str> = ran.iter().map(|(_, k)| k.as_str()).collect();
        assert_eq!(kinds, vec!["trial", "snapshot", "apply"], "{ran:?}");
        let actions = server.store().task_actions("c-work-mem").await.unwrap();
        assert_eq!(actions.len(), 3, "{actions:?}");
        assert!(actions.iter().all(|a| a.observed), "{actions:?}");

        // The task's events: config.* with its id, including the change it made.
        let r = send(
            &app,
            Method::GET,
            "/api/v1/events?task=c-work-mem&after=0&limit=1000",
            OP,
            None,
        )
        .await;
        let events = r.json.as_array().unwrap();
        let names: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
        for want in [
            "config.trial_passed",
            "config.snapshot",
            "config.applied",
            "config.completed",
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        assert!(
            events
                .iter()
                .all(|e| e["figures"]["config"] == "c-work-mem"),
            "{}",
            r.text
        );
        // The agent's next report shows the applied value: it is the task's change, not a new one.
        let r = report(&app, &db1, &snapshot_of(&values), now_ms()).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(
            (
                r.json["changed"].clone(),
                r.json["attributed_to_tasks"].clone()
            ),
            (json!(0), json!(1)),
            "{}",
            r.text
        );
        let changes = send(
            &app,
            Method::GET,
            "/api/v1/config/changes?host=db-01&source=main",
            OP,
            None,
        )
        .await
        .json;
        let changes = changes.as_array().unwrap();
        assert_eq!(changes.len(), 1, "only the task's own change: {changes:?}");
        assert_eq!(
            (
                changes[0]["task"].clone(),
                changes[0]["figures"]["source"].clone()
            ),
            (json!("c-work-mem"), json!("apply"))
        );
        let list = send(&app, Method::GET, "/api/v1/config/tasks", OP, None)
            .await
            .json;
        assert_eq!(list[0]["id"], "c-work-mem");
        // A finished task takes no command.
        let r = send(
            &app,
            Method::POST,
            "/api/v1/config/tasks/c-work-mem/revert",
            OP,
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
        server.store().close().await;
    }
);
