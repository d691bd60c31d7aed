//! The failure model in the server: history import, training from stored outcomes, versioned
//! models, automatic retraining and per-host risk, every test body run against SQLite and
//! PostgreSQL.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use bellwether_model::HostProfile;
use bellwether_server::{Server, ServerConfig, ServerError};
use bellwether_store::testing::with_each_backend;
use bellwether_store::StoreConfig;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

const OP: &str = "operator-token-for-tests-0001";
const ENROL: &str = "enrol-token-for-tests-000001";
const ADMIN: &str = "admin-token-for-tests-0000001";

fn config(store: StoreConfig, retrain_after: u64) -> ServerConfig {
    let mut c = ServerConfig::new(store, None);
    c.operator_token = Some(OP.into());
    c.enrol_token = Some(ENROL.into());
    c.admin_token = Some(ADMIN.into());
    c.body_limit = 256 * 1024;
    c.retrain_after = retrain_after;
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
    body: Option<(&str, String)>,
) -> Resp {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let body = match body {
        Some((ct, b)) => {
            req = req
                .header(header::CONTENT_TYPE, ct)
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

async fn import(app: &Router, csv: String) -> Resp {
    send(
        app,
        Method::POST,
        "/api/v1/history/import",
        Some(OP),
        Some(("text/csv", csv)),
    )
    .await
}

/// A history where a deployment fails when disk is short (under 10 %), and major updates fail
/// more on hosts with high configuration drift; deterministic.
fn history(rows: usize, seed: u64) -> String {
    let mut s = String::from(
        "deployment_id,host,os,disk_free_pct,configuration_drift,update_type,outcome\n",
    );
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 33) as f64 / (1u64 << 31) as f64
    };
    for i in 0..rows {
        let disk = (next() * 60.0 * 10.0).round() / 10.0;
        let drift = (next() * 100.0).round() / 100.0;
        let major = next() < 0.4;
        let os = if next() < 0.5 {
            "debian-12"
        } else {
            "ubuntu-24.04"
        };
        let p = if disk < 10.0 {
            0.85
        } else if major && drift > 0.6 {
            0.6
        } else {
            0.05
        };
        let failed = next() < p;
        s.push_str(&format!(
            "d{},host-{},{os},{disk},{drift},{},{}\n",
            i / 10,
            i,
            if major { "major" } else { "patch" },
            failed as u8
        ));
    }
    s
}

async fn enrol_with_profile(app: &Router, name: &str, disk: f64) {
    let r = send(
        app,
        Method::POST,
        "/api/v1/enrol",
        Some(ENROL),
        Some((
            "application/json",
            json!({"name": name, "labels": {"role": "web"}}).to_string(),
        )),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let agent = r.json()["agent_token"].as_str().unwrap().to_string();
    let profile = HostProfile {
        os: Some(bellwether_model::profile::OsInfo {
            id: "debian".into(),
            version_id: Some("12".into()),
            pretty_name: None,
        }),
        metrics: BTreeMap::from([("disk_free_pct".to_string(), disk)]),
        ..HostProfile::default()
    };
    let r = send(
        app,
        Method::POST,
        "/api/v1/agent/profile",
        Some(&agent),
        Some(("application/json", serde_json::to_string(&profile).unwrap())),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
}

/// Enrols `name` with the labels `role=web` and `group=GROUP`, and a profile with `glibc`.
async fn enrol_in_group(app: &Router, name: &str, group: &str, glibc: &str) {
    let r = send(
        app,
        Method::POST,
        "/api/v1/enrol",
        Some(ENROL),
        Some((
            "application/json",
            json!({"name": name, "labels": {"role": "web", "group": group}}).to_string(),
        )),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let agent = r.json()["agent_token"].as_str().unwrap().to_string();
    let profile = HostProfile {
        packages: Some(BTreeMap::from([("glibc".to_string(), glibc.to_string())])),
        metrics: BTreeMap::from([("disk_free_pct".to_string(), 40.0)]),
        ..HostProfile::default()
    };
    let r = send(
        app,
        Method::POST,
        "/api/v1/agent/profile",
        Some(&agent),
        Some(("application/json", serde_json::to_string(&profile).unwrap())),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
}

/// The outcomes a rollout of websvc 2 would have recorded: `edge-01..03` failed,
/// `core-01..03` did not.
fn rollout_outcomes() -> Vec<bellwether_store::NewOutcome> {
    [
        ("edge-01", true),
        ("edge-02", true),
        ("edge-03", true),
        ("core-01", false),
        ("core-02", false),
        ("core-03", false),
    ]
    .into_iter()
    .map(|(host, failed)| bellwether_store::NewOutcome {
        source: bellwether_store::OutcomeSource::Rollout,
        deployment: "r-test".into(),
        host: host.into(),
        features: BTreeMap::from([
            ("update".to_string(), json!("websvc")),
            ("update_version".to_string(), json!("2")),
            ("label:group".to_string(), json!(&host[..4])),
            ("label:role".to_string(), json!("web")),
            ("disk_free_pct".to_string(), json!(40.0)),
        ]),
        failed,
    })
    .collect()
}

macro_rules! model_test {
    ($name:ident, $retrain:expr, |$server:ident, $app:ident| $body:block) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            with_each_backend(|store: StoreConfig| async move {
                let $server = Server::open(config(store, $retrain)).await.expect("open server");
                let $app = $server.router();
                $body
                $server.store().close().await;
            })
            .await;
        }
    };
}

model_test!(
    every_model_endpoint_needs_the_operator_token,
    0,
    |server, app| {
        for (method, uri) in [
            (Method::POST, "/api/v1/history/import"),
            (Method::POST, "/api/v1/model/train"),
            (Method::GET, "/api/v1/models"),
            (Method::GET, "/api/v1/risk?update=a&version=1"),
        ] {
            let r = send(&app, method.clone(), uri, None, None).await;
            assert_eq!(
                r.status,
                StatusCode::UNAUTHORIZED,
                "{method} {uri}: {}",
                r.text
            );
            let r = send(&app, method.clone(), uri, Some(ENROL), None).await;
            assert_eq!(
                r.status,
                StatusCode::FORBIDDEN,
                "{method} {uri}: {}",
                r.text
            );
            assert!(r.error().contains("operator token"), "{}", r.text);
        }
        // A refused import stores nothing.
        let r = send(
            &app,
            Method::POST,
            "/api/v1/history/import",
            None,
            Some(("text/csv", history(50, 1))),
        )
        .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert!(server.store().outcomes().await.unwrap().is_empty());
    }
);

model_test!(
    bad_histories_get_400_naming_the_row_or_column_and_store_nothing,
    0,
    |server, app| {
        let r = import(&app, String::new()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert!(r.error().contains("request body is empty"), "{}", r.text);
        let r = import(&app, "a,outcome\n1,0\n2\n3,1\n".into()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert!(
            r.error()
                .contains("line 3 has 1 fields but the header has 2"),
            "{}",
            r.text
        );
        let r = import(&app, "a,outcome\n1,0\n2,perhaps\n".into()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert!(
            r.error()
                .contains("line 3, column `outcome`: label `perhaps`"),
            "{}",
            r.text
        );
        let r = import(&app, "a,result\n1,0\n".into()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert!(
            r.error()
                .contains("no label column `outcome` (the columns are: a, result)"),
            "{}",
            r.text
        );
        // ?label= names another column.
        let r = send(
            &app,
            Method::POST,
            "/api/v1/history/import?label=result",
            Some(OP),
            Some(("text/csv", "a,result\n1,0\n".into())),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        assert_eq!(r.json()["imported"], json!(1));
        let r = send(
            &app,
            Method::POST,
            "/api/v1/history/import?lable=x",
            Some(OP),
            Some(("text/csv", "a\n".into())),
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert!(r.error().contains("lable"), "{}", r.text);
        assert_eq!(server.store().outcomes().await.unwrap().len(), 1);
    }
);

model_test!(a_history_over_the_body_limit_gets_413, 0, |server, app| {
    let r = import(&app, history(10_000, 3)).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text);
    assert!(server.store().outcomes().await.unwrap().is_empty());
});

model_test!(
    training_needs_outcomes_of_both_classes_409,
    0,
    |server, app| {
        let r = send(&app, Method::POST, "/api/v1/model/train", Some(OP), None).await;
        assert_eq!(r.status, StatusCode::CONFLICT);
        assert!(
            r.error().contains("no outcomes are stored yet"),
            "{}",
            r.text
        );
        let mut csv = String::from("disk_free_pct,outcome\n");
        for i in 0..40 {
            csv.push_str(&format!("{i},0\n"));
        }
        assert_eq!(import(&app, csv).await.status, StatusCode::CREATED);
        let r = send(&app, Method::POST, "/api/v1/model/train", Some(OP), None).await;
        assert_eq!(r.status, StatusCode::CONFLICT);
        assert!(
            r.error().contains("holds only success rows (40 of them)"),
            "{}",
            r.text
        );
        assert!(server.store().models().await.unwrap().is_empty());
    }
);

model_test!(import_train_list_and_risk_end_to_end, 0, |server, app| {
    // No model yet: risk is a conflict that says what to do.
    enrol_with_profile(&app, "web-full", 4.0).await;
    enrol_with_profile(&app, "web-roomy", 55.0).await;
    let r = get(
        &app,
        "/api/v1/risk?update=websvc&version=2&type=major",
        Some(OP),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert!(
        r.error().contains("no failure model has been trained yet"),
        "{}",
        r.text
    );

    let r = import(&app, history(1_500, 11)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json()["imported"], json!(1_500));
    assert_eq!(r.json()["outcomes"], json!(1_500));
    let r = send(&app, Method::POST, "/api/v1/model/train", Some(OP), None).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let v1 = r.json()["version"].as_i64().unwrap();
    assert_eq!(r.json()["rows"], json!(1_500));
    assert_eq!(r.json()["cause"], json!("operator"));
    assert!(
        r.json()["metrics"]["roc_auc"].as_f64().unwrap() > 0.75,
        "{}",
        r.text
    );
    let r = send(&app, Method::POST, "/api/v1/model/train", Some(OP), None).await;
    let v2 = r.json()["version"].as_i64().unwrap();
    assert!(v2 > v1);
    let r = get(&app, "/api/v1/models", Some(OP)).await;
    assert_eq!(r.status, StatusCode::OK);
    let versions: Vec<i64> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, vec![v2, v1]);
    assert!(
        r.json()[0].get("model").is_none(),
        "the listing leaves the model file out"
    );

    let r = get(
        &app,
        "/api/v1/risk?update=websvc&version=2&type=major",
        Some(OP),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let body = r.json();
    assert_eq!(body["model_version"], json!(v2));
    let hosts = body["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 2);
    assert_eq!(
        hosts[0]["host"],
        json!("web-full"),
        "the full disk is the riskier: {body}"
    );
    let (full, roomy) = (
        hosts[0]["probability"].as_f64().unwrap(),
        hosts[1]["probability"].as_f64().unwrap(),
    );
    assert!(full > 0.5 && roomy < 0.3, "{full} {roomy}");
    let top = &hosts[0]["contributing_factors"][0];
    assert_eq!(top["feature"], json!("disk_free_pct"), "{body}");
    assert!(top["contribution"].as_f64().unwrap() > 0.0);
    assert_eq!(top["value"], json!(4.0));
    assert!(hosts[0]["contributing_factors"].as_array().unwrap().len() >= 3);

    // One host, by name.
    let r = get(
        &app,
        "/api/v1/risk?update=websvc&version=2&hosts=web-roomy",
        Some(OP),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json()["hosts"].as_array().unwrap().len(), 1);
    // Bad input.
    let r = get(
        &app,
        "/api/v1/risk?update=websvc&version=2&hosts=web-roomy,nope",
        Some(OP),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.error().contains("unknown host nope"), "{}", r.text);
    let r = get(
        &app,
        "/api/v1/risk?update=websvc&version=2&type=huge",
        Some(OP),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.error()
            .contains("type \"huge\" is not one of major, minor, patch"),
        "{}",
        r.text
    );
    let r = get(&app, "/api/v1/risk?version=2", Some(OP)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.error().starts_with("update is required"), "{}", r.text);
    let r = get(&app, "/api/v1/risk?update=websvc", Some(OP)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.error().starts_with("version is required"), "{}", r.text);
    let r = get(
        &app,
        "/api/v1/risk?update=websvc&version=2&colour=red",
        Some(OP),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.error().contains("colour"), "{}", r.text);
    // The event log says what happened.
    let events = server.store().events(None, 50).await.unwrap();
    assert!(events.iter().any(|e| e.kind == "model_trained"));
    assert!(events.iter().any(|e| e.kind == "history_imported"));
});

model_test!(
    the_server_retrains_after_the_configured_number_of_new_outcomes,
    100,
    |server, app| {
        let mut trained = server.trained_models();
        // 60 outcomes: below the threshold, nothing trains.
        assert_eq!(
            import(&app, history(60, 5)).await.status,
            StatusCode::CREATED
        );
        // 120 more: over it, a model is trained in the background.
        assert_eq!(
            import(&app, history(120, 6).replace("\nd", "\nx"))
                .await
                .status,
            StatusCode::CREATED
        );
        let v = tokio::time::timeout(Duration::from_secs(60), trained.wait_for(|v| *v > 0))
            .await
            .expect("retrained in time")
            .unwrap()
            .to_owned();
        let models = server.store().models().await.unwrap();
        assert_eq!(models.len(), 1);
        assert_eq!(models[0].version, v);
        assert_eq!(models[0].cause, "automatic");
        assert_eq!(models[0].rows, 180);
        // Fewer than 100 new ones since: no second model.
        assert_eq!(
            import(&app, history(30, 7).replace("\nd", "\ny"))
                .await
                .status,
            StatusCode::CREATED
        );
        let r = get(&app, "/api/v1/models", Some(OP)).await;
        assert_eq!(r.json().as_array().unwrap().len(), 1);
    }
);

#[tokio::test]
async fn one_token_for_two_kinds_is_a_clear_error() {
    let (store, dir) = bellwether_store::testing::fresh_sqlite();
    let mut c = ServerConfig::new(store.clone(), Some(dir.clone()));
    c.operator_token = Some(OP.into());
    c.enrol_token = Some(OP.into());
    let err = Server::open(c).await.err().unwrap();
    assert!(matches!(err, ServerError::SameTokens), "{err}");
    assert!(err.to_string().contains("must differ"), "{err}");
    // A token given as the enrolment token that is already the operator token.
    let mut c = ServerConfig::new(store.clone(), Some(dir.clone()));
    c.operator_token = Some(OP.into());
    Server::open(c).await.unwrap().store().close().await;
    let mut c = ServerConfig::new(store.clone(), Some(dir.clone()));
    c.enrol_token = Some(OP.into());
    let err = Server::open(c).await.err().unwrap();
    assert!(
        err.to_string()
            .contains("already this server's operator token"),
        "{err}"
    );
    bellwether_store::testing::cleanup(&store, Some(&dir)).await;
}

#[test]
fn every_model_and_rollout_route_is_documented_in_api_md_and_openapi_yaml() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let api_md = std::fs::read_to_string(root.join("docs/api.md")).expect("docs/api.md");
    let openapi =
        std::fs::read_to_string(root.join("docs/openapi.yaml")).expect("docs/openapi.yaml");
    let routes = bellwether_server::model_api::MODEL_ROUTES
        .iter()
        .chain(bellwether_server::rollout::ROLLOUT_ROUTES)
        .chain(bellwether_server::patch::PATCH_ROUTES)
        .chain(bellwether_server::config::CONFIG_ROUTES)
        .chain(bellwether_server::mirror::MIRROR_ROUTES)
        .chain(bellwether_server::shadow::SHADOW_ROUTES)
        .chain(bellwether_server::alerts::ALERT_ROUTES);
    for (method, path) in routes {
        let heading = format!("### `{method} {path}");
        assert!(
            api_md.contains(&format!("{heading}`"))
                || api_md.contains(&format!("{heading}["))
                || api_md.contains(&format!("{heading}?")),
            "docs/api.md lacks a section for {method} {path}"
        );
        assert!(
            openapi.contains(&format!("  {path}:\n")),
            "docs/openapi.yaml lacks {path}"
        );
    }
}

fn factor<'a>(host: &'a Value, feature: &str) -> Option<&'a Value> {
    host["contributing_factors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["feature"] == feature)
}

model_test!(
    risk_reads_the_direct_evidence_of_the_same_version_and_forgive_clears_it,
    0,
    |server, app| {
        let r = import(&app, history(400, 5)).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        server
            .store()
            .record_outcomes(
                &rollout_outcomes(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis() as i64,
            )
            .await
            .unwrap();
        let r = send(&app, Method::POST, "/api/v1/model/train", Some(OP), None).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        enrol_in_group(&app, "edge-01", "edge", "2.36-9").await;
        enrol_in_group(&app, "edge-09", "edge", "2.36-9").await;
        enrol_in_group(&app, "core-01", "core", "2.31-13").await;
        let risk = |app: Router| async move {
            let r = get(
                &app,
                "/api/v1/risk?update=websvc&version=2&depends_on=glibc",
                Some(OP),
            )
            .await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text);
            let v = r.json();
            let by: BTreeMap<String, Value> = v["hosts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| (h["host"].as_str().unwrap().to_string(), h.clone()))
                .collect();
            (v, by)
        };
        let (v, by) = risk(app.clone()).await;
        assert_eq!(v["update"]["depends_on"], json!(["glibc"]));
        // The host's own failure, named with its date and deployment.
        let own = factor(&by["edge-01"], "evidence:host").expect("own evidence");
        assert!(own["contribution"].as_f64().unwrap() > 0.0, "{own}");
        let text = own["explanation"].as_str().unwrap();
        assert!(
            text.starts_with("failed version 2 on ") && text.contains("(rollout r-test)"),
            "{text}"
        );
        // Peers: read through `group`, the label that separates version 2's outcomes.
        let peers = factor(&by["edge-09"], "evidence:peers:group=edge").expect("peer evidence");
        assert_eq!(
            peers["explanation"],
            "3 of 3 hosts with group=edge failed version 2 of websvc"
        );
        let core = factor(&by["core-01"], "evidence:host").expect("core-01's own success");
        assert!(core["contribution"].as_f64().unwrap() < 0.0, "{core}");
        let p = |h: &str| by[h]["probability"].as_f64().unwrap();
        assert!(p("edge-01") > p("edge-09"), "{v}");
        assert!(p("edge-09") > p("core-01"), "{v}");

        // Forgive edge-01: its evidence no longer counts, for it or its peers.
        let forgive = |token: Option<&str>, body: Value| {
            let app = app.clone();
            let token = token.map(str::to_string);
            async move {
                send(
                    &app,
                    Method::POST,
                    "/api/v1/risk/forgive",
                    token.as_deref(),
                    Some(("application/json", body.to_string())),
                )
                .await
            }
        };
        let ok = json!({"host": "edge-01", "update": "websvc", "version": "2", "reason": "disk replaced"});
        let r = forgive(None, ok.clone()).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
        let r = forgive(Some(ENROL), ok.clone()).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
        let r = send(
            &app,
            Method::POST,
            "/api/v1/tokens",
            Some(ADMIN),
            Some((
                "application/json",
                json!({"role": "viewer", "name": "dash"}).to_string(),
            )),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        let viewer = r.json()["token"].as_str().unwrap().to_string();
        let r = forgive(Some(&viewer), ok.clone()).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
        // A viewer reads the risk, evidence and all.
        let r = get(&app, "/api/v1/risk?update=websvc&version=2", Some(&viewer)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        for (body, status, want) in [
            (
                json!({"host": "edge-77", "update": "websvc", "version": "2", "reason": "x"}),
                StatusCode::NOT_FOUND,
                "unknown host edge-77",
            ),
            (
                json!({"host": "edge-01", "update": "websvc", "version": "2", "reason": "  "}),
                StatusCode::BAD_REQUEST,
                "reason is required",
            ),
            (
                json!({"host": "edge-01", "update": "", "version": "2", "reason": "x"}),
                StatusCode::BAD_REQUEST,
                "update is required",
            ),
            (
                json!({"host": "edge-01", "update": "websvc", "version": "2"}),
                StatusCode::BAD_REQUEST,
                "reason",
            ),
            (
                json!({"host": "edge 01", "update": "websvc", "version": "2", "reason": "x"}),
                StatusCode::BAD_REQUEST,
                "host: bad host name",
            ),
            (
                json!({"host": "edge-01", "update": "websvc", "version": "2", "reason": "x", "why": 1}),
                StatusCode::BAD_REQUEST,
                "why",
            ),
            (
                json!({"host": "edge-01", "update": "websvc", "version": "2", "reason": "x".repeat(1025)}),
                StatusCode::BAD_REQUEST,
                "at most 1024",
            ),
        ] {
            let r = forgive(Some(OP), body.clone()).await;
            assert_eq!(r.status, status, "{body}: {}", r.text);
            assert!(r.error().contains(want), "{body}: {}", r.text);
        }
        let bad = get(
            &app,
            "/api/v1/risk?update=websvc&version=2&depends_on=lib%20c",
            Some(OP),
        )
        .await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.text);
        assert!(
            bad.error().contains("depends_on: package name"),
            "{}",
            bad.text
        );
        let r = forgive(Some(OP), ok).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        assert_eq!(r.json()["outcomes"], 1);
        let (_, after) = risk(app.clone()).await;
        assert!(
            factor(&after["edge-01"], "evidence:host").is_none(),
            "{}",
            after["edge-01"]
        );
        assert!(factor(&after["edge-01"], "evidence:peers:group=edge").is_none());
        assert_eq!(
            factor(&after["edge-09"], "evidence:peers:group=edge").unwrap()["explanation"],
            "2 of 2 hosts with group=edge failed version 2 of websvc"
        );
        // The forgiveness is an event with its reason.
        let events = server
            .store()
            .events_where(None, Some("evidence_forgiven"), 10)
            .await
            .unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].host.as_deref(), Some("edge-01"));
        assert!(
            events[0].reason.ends_with("forgiven: disk replaced"),
            "{}",
            events[0].reason
        );
        assert_eq!(events[0].figures["update"], "websvc");
    }
);
