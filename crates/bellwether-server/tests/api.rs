//! The HTTP API driven in-process (tower `oneshot`), every test body run against SQLite and
//! PostgreSQL. One test also serves on a real socket and shuts down gracefully.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use bellwether_model::{HostName, HostProfile};
use bellwether_server::{Server, ServerConfig};
use bellwether_store::testing::with_each_backend;
use bellwether_store::StoreConfig;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

const OP: &str = "operator-token-for-tests-0001";
const ENROL: &str = "enrol-token-for-tests-000001";

fn config(store: StoreConfig) -> ServerConfig {
    let mut c = ServerConfig::new(store, None);
    c.operator_token = Some(OP.into());
    c.enrol_token = Some(ENROL.into());
    c.body_limit = 64 * 1024;
    // These tests post timestamps from 1970 (small, readable numbers); the window around the
    // server's clock is tested in `tests/api_input.rs`.
    c.sample_max_age = std::time::Duration::MAX;
    c
}

struct Resp {
    status: StatusCode,
    text: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
    fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error field: {}", self.text))
            .to_string()
    }
}

async fn send(
    app: &Router,
    method: Method,
    uri: &str,
    token: Option<&str>,
    body: Option<String>,
) -> Resp {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let body = match body {
        Some(b) => {
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
    Resp {
        status,
        text: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

async fn get(app: &Router, uri: &str, token: Option<&str>) -> Resp {
    send(app, Method::GET, uri, token, None).await
}

async fn post(app: &Router, uri: &str, token: Option<&str>, body: Value) -> Resp {
    send(app, Method::POST, uri, token, Some(body.to_string())).await
}

async fn enrol(app: &Router, name: &str, labels: Value) -> String {
    let r = post(
        app,
        "/api/v1/enrol",
        Some(ENROL),
        json!({"name": name, "labels": labels}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json()["host"], name);
    r.json()["agent_token"].as_str().unwrap().to_string()
}

fn profile(openssl: &str) -> HostProfile {
    HostProfile {
        hostname: Some("web-01".into()),
        kernel: Some("6.1.0-18-amd64".into()),
        packages: Some(BTreeMap::from([
            ("openssl".to_string(), openssl.to_string()),
            ("nginx".to_string(), "1.22.1".to_string()),
        ])),
        metrics: BTreeMap::from([("load1".to_string(), 0.5)]),
        ..HostProfile::default()
    }
}

fn host(s: &str) -> HostName {
    HostName::new(s).unwrap()
}

/// Declares a test whose body runs against both backends with `app` and `server` in scope.
macro_rules! api_test {
    ($name:ident, |$server:ident, $app:ident| $body:block) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            with_each_backend(|store: StoreConfig| async move {
                let $server = Server::open(config(store)).await.expect("open server");
                let $app = $server.router();
                $body
                $server.store().close().await;
            })
            .await;
        }
    };
}

api_test!(healthz_and_metrics_need_no_token, |server, app| {
    let r = get(&app, "/healthz", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["status"], json!("ok"));
    // One process on its store: it always leads.
    assert_eq!(r.json()["role"], json!("leader"));
    assert_eq!(r.json()["replicated"], json!(false));
    enrol(&app, "web-01", json!({})).await;
    let r = get(&app, "/metrics", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.text
            .contains("# TYPE bellwether_samples_ingested_total counter"),
        "{}",
        r.text
    );
    assert!(r.text.contains("bellwether_hosts 1"), "{}", r.text);
    assert!(
        r.text.contains("bellwether_enrolments_total 1"),
        "{}",
        r.text
    );
    assert!(
        r.text
            .contains("bellwether_http_requests_total{route=\"/healthz\",status=\"200\"} 1"),
        "{}",
        r.text
    );
    assert!(
        r.text
            .contains("bellwether_http_requests_total{route=\"/api/v1/enrol\",status=\"200\"} 1"),
        "{}",
        r.text
    );
});

api_test!(
    enrol_refuses_bad_tokens_and_bodies_and_stores_nothing,
    |server, app| {
        let body = json!({"name": "web-01", "labels": {"role": "web"}});
        let r = post(&app, "/api/v1/enrol", None, body.clone()).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert!(r.error().contains("Authorization"), "{}", r.text);
        let r = post(&app, "/api/v1/enrol", Some(OP), body.clone()).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        assert!(r.error().contains("enrolment token"), "{}", r.text);
        let r = post(
            &app,
            "/api/v1/enrol",
            Some("not-a-token-at-all"),
            body.clone(),
        )
        .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        let r = send(
            &app,
            Method::POST,
            "/api/v1/enrol",
            Some(ENROL),
            Some("{\"labels\": {}}".into()),
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert!(r.error().contains("missing field `name`"), "{}", r.text);
        let r = post(&app, "/api/v1/enrol", Some(ENROL), json!({"name": "a/b"})).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert!(
            r.error().contains("`name`") && r.error().contains("'/'"),
            "{}",
            r.text
        );
        let r = post(
            &app,
            "/api/v1/enrol",
            Some(ENROL),
            json!({"name": "x", "labels": {"role": 5}}),
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert!(r.error().contains("labels.role"), "{}", r.text);
        let r = post(
            &app,
            "/api/v1/enrol",
            Some(ENROL),
            json!({"name": "x", "colour": "red"}),
        )
        .await;
        assert!(r.error().contains("unknown field `colour`"), "{}", r.text);
        let r = send(
            &app,
            Method::POST,
            "/api/v1/enrol",
            Some(ENROL),
            Some("{\"name\": ".into()),
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert!(r.error().contains("line 1"), "{}", r.text);
        let r = send(
            &app,
            Method::POST,
            "/api/v1/enrol",
            Some(ENROL),
            Some(String::new()),
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(server.store().count_hosts().await.unwrap(), 0);
    }
);

api_test!(
    reenrolment_revokes_the_previous_agent_token,
    |server, app| {
        let first = enrol(&app, "web-01", json!({"role": "web"})).await;
        let second = enrol(&app, "web-01", json!({"role": "web"})).await;
        assert_ne!(first, second);
        let body = serde_json::to_value(profile("3.0.11")).unwrap();
        let r = post(&app, "/api/v1/agent/profile", Some(&first), body.clone()).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert!(r.error().contains("revoked"), "{}", r.text);
        let r = post(&app, "/api/v1/agent/profile", Some(&second), body).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
        let kinds: Vec<String> = server
            .store()
            .events(Some(&host("web-01")), 10)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds, vec!["profile_changed", "enrolled", "enrolled"]);
    }
);

api_test!(
    profiles_need_an_agent_token_and_a_valid_body,
    |server, app| {
        let agent = enrol(&app, "web-01", json!({})).await;
        let body = serde_json::to_value(profile("3.0.11")).unwrap();
        for token in [None, Some(OP), Some(ENROL)] {
            let r = post(&app, "/api/v1/agent/profile", token, body.clone()).await;
            let want = match token {
                None => StatusCode::UNAUTHORIZED,
                Some(_) => StatusCode::FORBIDDEN,
            };
            assert_eq!(r.status, want, "{token:?}");
        }
        assert_eq!(
            server
                .store()
                .current_profile(&host("web-01"))
                .await
                .unwrap(),
            None
        );
        let r = post(
            &app,
            "/api/v1/agent/profile",
            Some(&agent),
            json!({"kernel": 5}),
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert!(r.error().contains("`kernel`"), "{}", r.text);
        let r = post(
            &app,
            "/api/v1/agent/profile",
            Some(&agent),
            json!({"hardware": {"cpu_count": -1}}),
        )
        .await;
        assert!(r.error().contains("hardware.cpu_count"), "{}", r.text);
        assert_eq!(
            server
                .store()
                .current_profile(&host("web-01"))
                .await
                .unwrap(),
            None
        );
        let r = post(&app, "/api/v1/agent/profile", Some(&agent), body).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);
        let r = get(&app, "/api/v1/hosts/web-01/profile", Some(OP)).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(
            serde_json::from_value::<HostProfile>(r.json()).unwrap(),
            profile("3.0.11")
        );
        let r = get(&app, "/api/v1/hosts/web-01", Some(OP)).await;
        assert_eq!(r.json()["profile"]["kernel"], "6.1.0-18-amd64");
        assert!(r.json()["last_seen_ms"].as_i64().unwrap() > 0);
    }
);

api_test!(
    samples_need_an_agent_token_and_name_the_bad_field,
    |server, app| {
        let agent = enrol(&app, "web-01", json!({})).await;
        let good = json!({"samples": [{"ts_ms": 1, "name": "load1", "value": 0.5}], "dropped": 0});
        for token in [None, Some(OP), Some(ENROL)] {
            let r = post(&app, "/api/v1/agent/samples", token, good.clone()).await;
            let want = match token {
                None => StatusCode::UNAUTHORIZED,
                Some(_) => StatusCode::FORBIDDEN,
            };
            assert_eq!(r.status, want, "{token:?}");
        }
        let bad = json!({"samples": [{"ts_ms": 1, "name": "load1", "value": 0.5}, {"ts_ms": 2, "name": "load1", "value": "high"}]});
        let r = post(&app, "/api/v1/agent/samples", Some(&agent), bad).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert!(r.error().contains("samples[1].value"), "{}", r.text);
        let r = post(
            &app,
            "/api/v1/agent/samples",
            Some(&agent),
            json!({"dropped": 3}),
        )
        .await;
        assert!(r.error().contains("missing field `samples`"), "{}", r.text);
        let r = post(
            &app,
            "/api/v1/agent/samples",
            Some(&agent),
            json!({"samples": [{"ts_ms": 1, "name": "", "value": 1.0}]}),
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert!(r.error().contains("samples[0].name"), "{}", r.text);
        assert_eq!(
            server.store().count_samples(&host("web-01")).await.unwrap(),
            0
        );
        let batch = json!({"samples": [{"ts_ms": 1, "name": "load1", "value": 0.5}, {"ts_ms": 2, "name": "load1", "value": 1.5}], "dropped": 7});
        let r = post(&app, "/api/v1/agent/samples", Some(&agent), batch).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
        assert_eq!(r.json(), json!({"accepted": 2}));
        assert_eq!(
            server.store().count_samples(&host("web-01")).await.unwrap(),
            2
        );
        let m = get(&app, "/metrics", None).await.text;
        assert!(m.contains("bellwether_samples_ingested_total 2"), "{m}");
        assert!(
            m.contains("bellwether_samples_dropped_by_agents_total 7"),
            "{m}"
        );
        let r = get(&app, "/api/v1/events?host=web-01&limit=1", Some(OP)).await;
        assert_eq!(r.json()[0]["kind"], "samples_dropped");
        assert_eq!(r.json()[0]["figures"]["dropped"], 7);
    }
);

api_test!(
    operator_endpoints_refuse_other_tokens_and_unknown_hosts,
    |server, app| {
        let agent = enrol(&app, "web-01", json!({})).await;
        let reads = [
            "/api/v1/hosts",
            "/api/v1/hosts/web-01",
            "/api/v1/hosts/web-01/profile",
            "/api/v1/hosts/web-01/baseline",
            "/api/v1/hosts/web-01/drift",
            "/api/v1/fleet/drift",
            "/api/v1/events",
        ];
        for uri in reads {
            for token in [None, Some(agent.as_str()), Some(ENROL)] {
                let r = get(&app, uri, token).await;
                let want = match token {
                    None => StatusCode::UNAUTHORIZED,
                    Some(_) => StatusCode::FORBIDDEN,
                };
                assert_eq!(r.status, want, "{uri} {token:?}");
                assert!(!r.error().is_empty());
            }
        }
        let r = post(
            &app,
            "/api/v1/baselines",
            Some(&agent),
            json!({"all": true}),
        )
        .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        for uri in [
            "/api/v1/hosts/ghost",
            "/api/v1/hosts/ghost/profile",
            "/api/v1/hosts/ghost/baseline",
            "/api/v1/hosts/ghost/drift",
        ] {
            let r = get(&app, uri, Some(OP)).await;
            assert_eq!(r.status, StatusCode::NOT_FOUND, "{uri}");
            assert!(r.error().contains("ghost"), "{}", r.text);
        }
        let r = get(&app, "/api/v1/nothing-here", Some(OP)).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert!(r.error().contains("/api/v1/nothing-here"), "{}", r.text);
        let r = send(&app, Method::DELETE, "/api/v1/hosts", Some(OP), None).await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
        assert!(r.error().contains("DELETE"), "{}", r.text);
        let r = get(&app, "/api/v1/hosts/bad%20name", Some(OP)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert!(r.error().contains("host name"), "{}", r.text);
        let r = get(&app, "/api/v1/hosts/web-01/profile", Some(OP)).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "no profile yet");
        let r = get(&app, "/api/v1/events?limit=0", Some(OP)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        let r = get(&app, "/api/v1/events?limit=abc", Some(OP)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert!(r.error().contains("limit"), "{}", r.text);
        let r = get(&app, "/api/v1/hosts", Some(OP)).await;
        assert_eq!(
            r.json(),
            json!([{"name": "web-01", "labels": {}, "last_seen_ms": r.json()[0]["last_seen_ms"], "has_baseline": false, "overall_drift": null}])
        );
    }
);

api_test!(
    baselines_validate_the_body_and_skip_hosts_without_profiles,
    |server, app| {
        let web = enrol(&app, "web-01", json!({})).await;
        enrol(&app, "db-01", json!({})).await;
        for (body, needle) in [
            (json!({}), "`hosts`"),
            (json!({"hosts": [], "all": false}), "`hosts`"),
            (json!({"hosts": ["web-01"], "all": true}), "not both"),
            (json!({"hosts": "web-01"}), "hosts"),
            (json!({"hosts": ["a b"]}), "hosts[0]"),
            (json!({"everything": true}), "unknown field `everything`"),
        ] {
            let r = post(&app, "/api/v1/baselines", Some(OP), body.clone()).await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
            assert!(r.error().contains(needle), "{body}: {}", r.text);
        }
        let r = post(
            &app,
            "/api/v1/baselines",
            Some(OP),
            json!({"hosts": ["web-01", "ghost"]}),
        )
        .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert!(r.error().contains("ghost"));
        assert_eq!(
            server.store().baseline(&host("web-01")).await.unwrap(),
            None,
            "nothing captured"
        );
        let r = post(
            &app,
            "/api/v1/agent/profile",
            Some(&web),
            serde_json::to_value(profile("3.0.11")).unwrap(),
        )
        .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);
        let r = post(&app, "/api/v1/baselines", Some(OP), json!({"all": true})).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(
            r.json(),
            json!({"captured": ["web-01"], "skipped": [{"host": "db-01", "reason": "no profile received yet"}]})
        );
        let r = get(&app, "/api/v1/hosts/web-01/baseline", Some(OP)).await;
        assert_eq!(r.json()["packages"]["openssl"], "3.0.11");
    }
);

api_test!(
    drift_follows_profiles_samples_and_baselines,
    |server, app| {
        let web = enrol(&app, "web-01", json!({"role": "web"})).await;
        let r = get(&app, "/api/v1/hosts/web-01/drift", Some(OP)).await;
        assert_eq!(r.status, StatusCode::CONFLICT);
        assert!(
            r.error().contains("baseline capture --host web-01"),
            "{}",
            r.text
        );
        post(
            &app,
            "/api/v1/agent/profile",
            Some(&web),
            serde_json::to_value(profile("3.0.11")).unwrap(),
        )
        .await;
        let samples = |v: f64, t0: i64| json!({"samples": (0..12).map(|i| json!({"ts_ms": t0 + i * 5000, "name": "load1", "value": v})).collect::<Vec<_>>()});
        let r = post(&app, "/api/v1/agent/samples", Some(&web), samples(0.5, 0)).await;
        assert_eq!(r.status, StatusCode::ACCEPTED);
        let r = post(
            &app,
            "/api/v1/baselines",
            Some(OP),
            json!({"hosts": ["web-01"]}),
        )
        .await;
        assert_eq!(r.json()["captured"], json!(["web-01"]));
        let base = get(&app, "/api/v1/hosts/web-01/baseline", Some(OP))
            .await
            .json();
        assert_eq!(
            base["metrics"]["load1"], 0.5,
            "baseline metrics are the recent sample mean"
        );
        let r = get(&app, "/api/v1/hosts/web-01/drift", Some(OP)).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.json()["overall"], 0.0, "{}", r.text);
        // A package upgrade is configuration drift.
        post(
            &app,
            "/api/v1/agent/profile",
            Some(&web),
            serde_json::to_value(profile("3.1.4")).unwrap(),
        )
        .await;
        let d = get(&app, "/api/v1/hosts/web-01/drift", Some(OP))
            .await
            .json();
        assert!(d["configuration"].as_f64().unwrap() > 0.0, "{d}");
        assert!(
            d["findings"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["attribute"] == "package:openssl"),
            "{d}"
        );
        let config_only = d["overall"].as_f64().unwrap();
        // Load far above the baseline's, for a minute of samples, is performance drift.
        post(
            &app,
            "/api/v1/agent/samples",
            Some(&web),
            samples(40.0, 100_000),
        )
        .await;
        let d = get(&app, "/api/v1/hosts/web-01/drift", Some(OP))
            .await
            .json();
        assert!(d["performance"].as_f64().unwrap() > 0.0, "{d}");
        assert!(d["overall"].as_f64().unwrap() >= config_only, "{d}");
        let hosts = get(&app, "/api/v1/hosts", Some(OP)).await.json();
        assert_eq!(hosts[0]["has_baseline"], true);
        assert_eq!(hosts[0]["overall_drift"], d["overall"]);
        let ev = server
            .store()
            .events(Some(&host("web-01")), 50)
            .await
            .unwrap();
        assert!(
            ev.iter()
                .any(|e| e.kind == "drift_recomputed" && e.reason == "profile received"),
            "{ev:?}"
        );
        assert!(ev.iter().any(|e| e.kind == "baseline_captured"));
        let m = get(&app, "/metrics", None).await.text;
        assert!(
            !m.contains("bellwether_drift_recomputations_total 0"),
            "{m}"
        );
    }
);

api_test!(
    fleet_view_sorts_by_drift_and_cuts_findings,
    |server, app| {
        let mut tokens = Vec::new();
        for name in ["a-01", "b-01", "c-01"] {
            let t = enrol(&app, name, json!({"role": "web"})).await;
            post(
                &app,
                "/api/v1/agent/profile",
                Some(&t),
                serde_json::to_value(profile("3.0.11")).unwrap(),
            )
            .await;
            tokens.push(t);
        }
        enrol(&app, "d-01", json!({})).await;
        let r = post(&app, "/api/v1/baselines", Some(OP), json!({"all": true})).await;
        assert_eq!(r.json()["captured"].as_array().unwrap().len(), 3);
        // b-01 drifts on many packages, c-01 on one.
        let mut many = profile("4.0.0");
        for i in 0..8 {
            many.packages
                .as_mut()
                .unwrap()
                .insert(format!("extra{i}"), "1.0".into());
        }
        post(
            &app,
            "/api/v1/agent/profile",
            Some(&tokens[1]),
            serde_json::to_value(&many).unwrap(),
        )
        .await;
        post(
            &app,
            "/api/v1/agent/profile",
            Some(&tokens[2]),
            serde_json::to_value(profile("3.0.12")).unwrap(),
        )
        .await;
        let f = get(&app, "/api/v1/fleet/drift", Some(OP)).await;
        assert_eq!(f.status, StatusCode::OK);
        let f = f.json();
        let names: Vec<&str> = f["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["name"].as_str().unwrap())
            .collect();
        assert_eq!(names[0], "b-01", "{f}");
        assert_eq!(names[1], "c-01", "{f}");
        assert_eq!(names.len(), 4);
        assert!(f["hosts"][0]["score"]["findings"].as_array().unwrap().len() <= 5);
        let d = f["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["name"] == "d-01")
            .unwrap();
        assert_eq!(d["has_baseline"], false);
        assert_eq!(d["score"]["overall"], 0.0);
        // b-01 alone carries the extra packages its two role=web peers lack; openssl has no
        // majority version among the three, so nobody is flagged for it.
        let outliers = f["peer_outliers"].as_array().unwrap();
        assert_eq!(outliers.len(), 1, "{f}");
        assert_eq!(outliers[0]["host"], "b-01");
        assert_eq!(outliers[0]["label"], "role");
        assert_eq!(outliers[0]["value"], "web");
        assert_eq!(outliers[0]["peers"], 3);
        assert_eq!(
            outliers[0]["differences"].as_array().unwrap().len(),
            8,
            "{f}"
        );
        let by_zone = get(&app, "/api/v1/fleet/drift?peer_label=zone", Some(OP))
            .await
            .json();
        assert_eq!(by_zone["peer_outliers"], json!([]));
        let r = get(&app, "/api/v1/fleet/drift?colour=red", Some(OP)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert!(r.error().contains("colour"), "{}", r.text);
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_refused_before_they_are_read() {
    with_each_backend(|store: StoreConfig| async move {
        let server = Server::open(config(store)).await.unwrap();
        let app = server.router();
        let agent = enrol(&app, "web-01", json!({})).await;
        // Declared length over the limit: refused on the header alone.
        let big = format!(
            "{{\"samples\": [], \"pad\": \"{}\"}}",
            "x".repeat(100 * 1024)
        );
        let r = send(
            &app,
            Method::POST,
            "/api/v1/agent/samples",
            Some(&agent),
            Some(big),
        )
        .await;
        assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(r.error().contains("limit"), "{}", r.text);
        // No declared length (a stream): cut off once it passes the limit.
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
            (0..100).map(|_| Ok(vec![b' '; 4096])).collect();
        let body = Body::from_stream(futures_util::stream::iter(chunks));
        let req = Request::builder()
            .method(Method::POST)
            .uri("/api/v1/agent/samples")
            .header(header::AUTHORIZATION, format!("Bearer {agent}"))
            .body(body)
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            server.store().count_samples(&host("web-01")).await.unwrap(),
            0
        );
        server.store().close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_real_http_and_shuts_down_gracefully() {
    with_each_backend(|store: StoreConfig| async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(bellwether_server::serve(config(store), listener, async {
            let _ = stop_rx.await;
        }));
        let client = reqwest::Client::new();
        // The listener is bound before serve starts, so the first request queues until the
        // store is open; no retry loop is needed.
        let r = client
            .get(format!("http://{addr}/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let r = client
            .post(format!("http://{addr}/api/v1/enrol"))
            .bearer_auth(ENROL)
            .json(&json!({"name": "web-01"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let r = client
            .get(format!("http://{addr}/api/v1/hosts"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        stop_tx.send(()).unwrap();
        task.await.unwrap().unwrap();
        assert!(
            client
                .get(format!("http://{addr}/healthz"))
                .send()
                .await
                .is_err(),
            "stopped"
        );
    })
    .await;
}

#[tokio::test]
async fn tokens_are_generated_into_the_data_dir_once_and_given_tokens_replace_them() {
    let (store, dir) = bellwether_store::testing::fresh_sqlite();
    let first = Server::open(ServerConfig::new(store.clone(), Some(dir.clone())))
        .await
        .unwrap();
    let op_file = dir.join("operator.token");
    let op = std::fs::read_to_string(&op_file)
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(op.len(), 64);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&op_file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    assert!(first
        .tokens
        .iter()
        .all(|t| t.source == bellwether_server::TokenSource::Generated));
    let app = first.router();
    assert_eq!(
        get(&app, "/api/v1/hosts", Some(&op)).await.status,
        StatusCode::OK
    );
    first.store().close().await;
    // A second start keeps the tokens.
    let second = Server::open(ServerConfig::new(store.clone(), Some(dir.clone())))
        .await
        .unwrap();
    assert!(second
        .tokens
        .iter()
        .all(|t| t.source == bellwether_server::TokenSource::Kept));
    assert_eq!(std::fs::read_to_string(&op_file).unwrap().trim(), op);
    second.store().close().await;
    // A given token replaces the generated one, and the file follows.
    let mut c = ServerConfig::new(store.clone(), Some(dir.clone()));
    c.operator_token = Some(OP.into());
    let third = Server::open(c).await.unwrap();
    assert_eq!(std::fs::read_to_string(&op_file).unwrap().trim(), OP);
    let app = third.router();
    assert_eq!(
        get(&app, "/api/v1/hosts", Some(&op)).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(&app, "/api/v1/hosts", Some(OP)).await.status,
        StatusCode::OK
    );
    third.store().close().await;
    // Without a data dir, a missing token cannot be generated.
    let (other, other_dir) = bellwether_store::testing::fresh_sqlite();
    let err = Server::open(ServerConfig::new(other.clone(), None))
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("--operator-token"), "{err}");
    bellwether_store::testing::cleanup(&other, Some(&other_dir)).await;
    bellwether_store::testing::cleanup(&store, Some(&dir)).await;
}
