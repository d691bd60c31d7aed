//! Roles and the audit log, through the real router: every route × every kind of token (and
//! none, a malformed header, an unknown and a revoked token) gets the answer its rule says —
//! 401 without a valid token, 403 for a valid token of another role — and a refused request
//! stores nothing but its audit event. Every body runs against SQLite and PostgreSQL.

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use bellwether_model::HostName;
use bellwether_server::{Access, Server, ServerConfig, RULES};
use bellwether_store::testing::with_each_backend;
use bellwether_store::{Store, StoreConfig, TokenKind};
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
    c
}

struct Resp {
    status: StatusCode,
    json: Value,
}

/// Sends a request with a raw `Authorization` value (or none) and an optional JSON body.
async fn send(
    app: &Router,
    method: &str,
    uri: &str,
    auth: Option<&str>,
    body: Option<&Value>,
) -> Resp {
    let mut req = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).unwrap())
        .uri(uri);
    if let Some(a) = auth {
        req = req.header(header::AUTHORIZATION, a);
    }
    let body = match body {
        Some(b) => {
            req = req.header(header::CONTENT_TYPE, "application/json");
            Body::from(b.to_string())
        }
        None => Body::empty(),
    };
    let resp = app.clone().oneshot(req.body(body).unwrap()).await.unwrap();
    let status = resp.status();
    if status == StatusCode::OK && uri.starts_with("/api/v1/events/stream") {
        // The event stream never ends by itself: its status is the answer.
        return Resp {
            status,
            json: Value::Null,
        };
    }
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Resp { status, json }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Makes a token of `role` through the admin API.
async fn make_token(app: &Router, role: &str, name: &str) -> (i64, String) {
    let r = send(
        app,
        "POST",
        "/api/v1/tokens",
        Some(&bearer(ADMIN)),
        Some(&json!({"role": role, "name": name})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    assert_eq!(r.json["role"], role);
    (
        r.json["id"].as_i64().unwrap(),
        r.json["token"].as_str().unwrap().to_string(),
    )
}

async fn enrol(app: &Router, name: &str) -> String {
    let r = send(
        app,
        "POST",
        "/api/v1/enrol",
        Some(&bearer(ENROL)),
        Some(&json!({"name": name})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    r.json["agent_token"].as_str().unwrap().to_string()
}

/// Everything a request could have stored, except the audit log.
#[derive(Debug, PartialEq)]
struct Snapshot {
    tokens: Vec<bellwether_store::TokenInfo>,
    hosts: Vec<bellwether_store::HostRecord>,
    profile: Option<bellwether_model::HostProfile>,
    baseline: Option<bellwether_model::HostProfile>,
    samples: i64,
    rollouts: usize,
    outcomes: usize,
    models: usize,
    events: Vec<bellwether_store::Event>,
}

async fn snapshot(store: &Store) -> Snapshot {
    let web = HostName::new("web-01").unwrap();
    Snapshot {
        tokens: store.tokens().await.unwrap(),
        hosts: store.list_hosts().await.unwrap(),
        profile: store.current_profile(&web).await.unwrap(),
        baseline: store.baseline(&web).await.unwrap(),
        samples: store.count_samples(&web).await.unwrap(),
        rollouts: store.rollouts(false).await.unwrap().len(),
        outcomes: store.outcomes().await.unwrap().len(),
        models: store.models().await.unwrap().len(),
        events: store
            .events(None, 10_000)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.kind != "audit")
            .collect(),
    }
}

async fn audit_events(store: &Store) -> Vec<bellwether_store::Event> {
    store
        .events_where(None, Some("audit"), 10_000)
        .await
        .unwrap()
}

/// A concrete path for a route template.
fn concrete(path: &str) -> String {
    path.replace("{name}", "web-01")
        .replace("{command}", "pause")
        .replace(
            "{id}",
            if path.starts_with("/api/v1/rollouts") {
                "r-none"
            } else {
                "999999"
            },
        )
}

/// A body that gets as far as the handler's own checks without doing harm there.
fn body_for(method: &str, path: &str) -> Option<Value> {
    match (method, path) {
        ("GET", _) | ("DELETE", _) => None,
        ("POST", "/api/v1/agent/samples") => Some(json!({"samples": []})),
        _ => Some(json!({})),
    }
}

#[test]
fn the_rules_cover_exactly_the_routes_the_server_serves() {
    let served: BTreeSet<(&str, &str)> = bellwether_server::ROUTES
        .iter()
        .chain(bellwether_server::rollout::ROLLOUT_ROUTES)
        .chain(bellwether_server::patch::PATCH_ROUTES)
        .chain(bellwether_server::model_api::MODEL_ROUTES)
        .chain(bellwether_server::config::CONFIG_ROUTES)
        .chain(bellwether_server::mirror::MIRROR_ROUTES)
        .chain(bellwether_server::shadow::SHADOW_ROUTES)
        .copied()
        .collect();
    let ruled: BTreeSet<(&str, &str)> = RULES.iter().map(|(m, p, _)| (*m, *p)).collect();
    assert_eq!(RULES.len(), ruled.len(), "a route has two rules");
    assert_eq!(
        served.difference(&ruled).collect::<Vec<_>>(),
        Vec::<&(&str, &str)>::new(),
        "routes without an access rule (add them to auth::RULES)"
    );
    assert_eq!(
        ruled.difference(&served).collect::<Vec<_>>(),
        Vec::<&(&str, &str)>::new(),
        "rules for routes the server does not serve"
    );
    // Only the two probes are open, and every change but an agent's own or an enrolment needs
    // an operator or an admin.
    for (m, p, a) in RULES {
        if *a == Access::Public {
            assert!(["/healthz", "/metrics"].contains(p), "{m} {p} is public");
        }
        let read_only = bellwether_server::config::READ_ONLY_POSTS.contains(p);
        if *m != "GET"
            && p.starts_with("/api/v1/")
            && !p.starts_with("/api/v1/agent/")
            && !read_only
        {
            assert!(
                [Access::Operator, Access::Admin, Access::Enrol].contains(a),
                "{m} {p} changes state but needs only {a:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_every_token_its_rule_does_not_allow_and_stores_nothing() {
    with_each_backend(|store| async move {
        let server = Server::open(config(store)).await.unwrap();
        let app = server.router();
        let (_, viewer) = make_token(&app, "viewer", "dashboards").await;
        let (revoked_id, revoked) = make_token(&app, "admin", "left the team").await;
        let r = send(
            &app,
            "DELETE",
            &format!("/api/v1/tokens/{revoked_id}"),
            Some(&bearer(ADMIN)),
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.json);
        let agent = enrol(&app, "web-01").await;
        let ids: std::collections::BTreeMap<String, i64> = server
            .store()
            .tokens()
            .await
            .unwrap()
            .into_iter()
            .map(|t| (t.kind.as_str().to_string(), t.id))
            .collect();

        // (label, Authorization header, the valid token's kind)
        let creds: Vec<(&str, Option<String>, Option<TokenKind>)> = vec![
            ("no header", None, None),
            ("not bearer", Some(format!("Basic {OP}")), None),
            ("empty bearer", Some("Bearer ".into()), None),
            ("unknown", Some(bearer("never-issued-token-00000000")), None),
            ("revoked admin", Some(bearer(&revoked)), None),
            ("viewer", Some(bearer(&viewer)), Some(TokenKind::Viewer)),
            ("operator", Some(bearer(OP)), Some(TokenKind::Operator)),
            ("admin", Some(bearer(ADMIN)), Some(TokenKind::Admin)),
            ("enrol", Some(bearer(ENROL)), Some(TokenKind::Enrol)),
            ("agent", Some(bearer(&agent)), Some(TokenKind::Agent)),
        ];
        let mut checked = 0;
        for &(method, path, access) in RULES {
            // A fresh router per route keeps the refusals under the audit log's per-minute
            // budget, so each one can be checked.
            let app = server.router();
            let uri = concrete(path);
            let body = body_for(method, path);
            for (label, auth, kind) in &creds {
                let allowed = match kind {
                    Some(k) => access.allows(*k),
                    None => access == Access::Public,
                };
                let before = snapshot(server.store()).await;
                let audits_before = audit_events(server.store()).await.len();
                let r = send(&app, method, &uri, auth.as_deref(), body.as_ref()).await;
                let case = format!("{method} {path} with {label}: {} {}", r.status, r.json);
                if allowed {
                    assert!(
                        r.status != StatusCode::UNAUTHORIZED && r.status != StatusCode::FORBIDDEN,
                        "{case}: should pass the role check"
                    );
                    continue;
                }
                let want = if kind.is_some() {
                    StatusCode::FORBIDDEN
                } else {
                    StatusCode::UNAUTHORIZED
                };
                assert_eq!(r.status, want, "{case}");
                let msg = r.json["error"].as_str().unwrap_or_default();
                assert!(
                    msg.contains("this endpoint needs"),
                    "{case}: the error says what is needed"
                );
                if let Some(k) = kind {
                    assert!(
                        msg.contains(&format!("{k} token may not {method} {path}")),
                        "{case}"
                    );
                }
                assert_eq!(
                    snapshot(server.store()).await,
                    before,
                    "{case}: stored something"
                );
                let audits = audit_events(server.store()).await;
                assert_eq!(audits.len(), audits_before + 1, "{case}: one audit event");
                let f = &audits[0].figures;
                assert_eq!(f["method"], method, "{case}");
                assert_eq!(f["route"], path, "{case}");
                assert_eq!(f["path"], uri.as_str(), "{case}");
                assert_eq!(f["status"], want.as_u16(), "{case}");
                assert_eq!(f["refused"], true, "{case}");
                match kind {
                    Some(k) => {
                        assert_eq!(f["role"], k.as_str(), "{case}");
                        assert_eq!(f["token_id"], ids[k.as_str()], "{case}");
                    }
                    None => {
                        assert_eq!(f["role"], Value::Null, "{case}");
                        assert_eq!(f["token_id"], Value::Null, "{case}");
                    }
                }
                checked += 1;
            }
        }
        assert!(checked > 150, "only {checked} refusals checked");
        server.store().close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_says_who_did_what_and_never_holds_a_token() {
    with_each_backend(|store| async move {
        let server = Server::open(config(store)).await.unwrap();
        let app = server.router();
        let (viewer_id, viewer) = make_token(&app, "viewer", "grafana").await;
        let agent = enrol(&app, "web-01").await;
        let admin_id = server
            .store()
            .authenticate(ADMIN)
            .await
            .unwrap()
            .unwrap()
            .id;
        let op_id = server.store().authenticate(OP).await.unwrap().unwrap().id;
        let enrol_id = server
            .store()
            .authenticate(ENROL)
            .await
            .unwrap()
            .unwrap()
            .id;

        // A change by an operator, a read (not logged), a refused change, an agent's data (not
        // logged: its effects have their own events), and a bad request (logged: it was tried).
        let r = send(
            &app,
            "POST",
            "/api/v1/baselines",
            Some(&bearer(OP)),
            Some(&json!({"all": true})),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.json);
        let r = send(&app, "GET", "/api/v1/hosts", Some(&bearer(&viewer)), None).await;
        assert_eq!(r.status, StatusCode::OK);
        let r = send(
            &app,
            "POST",
            "/api/v1/rollouts/r-1/abort",
            Some(&bearer(&viewer)),
            Some(&json!({})),
        )
        .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        let r = send(
            &app,
            "POST",
            "/api/v1/agent/samples",
            Some(&bearer(&agent)),
            Some(&json!({"samples": []})),
        )
        .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
        let r = send(
            &app,
            "POST",
            "/api/v1/baselines",
            Some(&bearer(OP)),
            Some(&json!({})),
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);

        let r = send(
            &app,
            "GET",
            "/api/v1/events?kind=audit&limit=100",
            Some(&bearer(&viewer)),
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.json);
        let got: Vec<(Value, Value, Value, Value, Value)> = r
            .json
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .map(|e| {
                assert_eq!(e["kind"], "audit");
                assert!(e["ts_ms"].as_i64().unwrap() > 1_600_000_000_000, "{e}");
                let f = &e["figures"];
                (
                    f["token_id"].clone(),
                    f["role"].clone(),
                    f["method"].clone(),
                    f["route"].clone(),
                    f["status"].clone(),
                )
            })
            .collect();
        let row = |id: i64, role: &str, m: &str, route: &str, status: u16| {
            (
                json!(id),
                json!(role),
                json!(m),
                json!(route),
                json!(status),
            )
        };
        assert_eq!(
            got,
            vec![
                row(admin_id, "admin", "POST", "/api/v1/tokens", 201),
                row(enrol_id, "enrol", "POST", "/api/v1/enrol", 200),
                row(op_id, "operator", "POST", "/api/v1/baselines", 200),
                row(
                    viewer_id,
                    "viewer",
                    "POST",
                    "/api/v1/rollouts/{id}/{command}",
                    403
                ),
                row(op_id, "operator", "POST", "/api/v1/baselines", 400),
            ]
        );
        let text = r.json.to_string();
        assert!(
            text.contains("/api/v1/rollouts/r-1/abort"),
            "the concrete path is kept: {text}"
        );
        assert!(
            text.contains("POST /api/v1/rollouts/{id}/{command} by viewer token"),
            "{text}"
        );
        // The kind filter keeps other events out, and no event anywhere holds a token.
        let all = send(
            &app,
            "GET",
            "/api/v1/events?limit=1000",
            Some(&bearer(ADMIN)),
            None,
        )
        .await;
        let all_text = all.json.to_string();
        assert!(all_text.contains("token_created") && all_text.contains("\"enrolled\""));
        for secret in [ADMIN, OP, ENROL, viewer.as_str(), agent.as_str()] {
            assert!(!all_text.contains(secret), "an event holds a token");
        }
        for bad in ["", "AUDIT", "a b", "x;drop"] {
            let r = send(
                &app,
                "GET",
                &format!("/api/v1/events?kind={}", bad.replace(' ', "%20")),
                Some(&bearer(&viewer)),
                None,
            )
            .await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad:?}: {}", r.json);
        }
        server.store().close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_refusals_is_logged_up_to_the_budget_only() {
    let (store, dir) = bellwether_store::testing::fresh_sqlite();
    let server = Server::open(config(store)).await.unwrap();
    let app = server.router();
    for i in 0..100 {
        let r = send(
            &app,
            "GET",
            "/api/v1/hosts",
            Some(&bearer(&format!("junk-{i:020}"))),
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    let audits = audit_events(server.store()).await;
    assert_eq!(
        audits.len() as u64,
        bellwether_server::REFUSALS_LOGGED_PER_MINUTE,
        "the rest are counted, to be logged as one event"
    );
    // A person's change is always logged, budget or not.
    let r = send(
        &app,
        "POST",
        "/api/v1/baselines",
        Some(&bearer(OP)),
        Some(&json!({"all": true})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        audit_events(server.store()).await.len() as u64,
        bellwether_server::REFUSALS_LOGGED_PER_MINUTE + 1
    );
    server.store().close().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_made_listed_and_revoked_by_admins_only() {
    with_each_backend(|store| async move {
        let server = Server::open(config(store)).await.unwrap();
        let app = server.router();
        let (op2_id, op2) = make_token(&app, "operator", "alice").await;
        // The new operator token works at once, and can start changes but not make tokens.
        let r = send(
            &app,
            "POST",
            "/api/v1/baselines",
            Some(&bearer(&op2)),
            Some(&json!({"all": true})),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.json);
        let r = send(
            &app,
            "POST",
            "/api/v1/tokens",
            Some(&bearer(&op2)),
            Some(&json!({"role": "admin", "name": "me"})),
        )
        .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.json);
        assert!(
            r.json["error"].as_str().unwrap().contains("admin token"),
            "{}",
            r.json
        );
        // Bad requests name the field.
        for (body, needle) in [
            (json!({"role": "agent", "name": "x"}), "role"),
            (json!({"role": "enrol", "name": "x"}), "role"),
            (json!({"role": "root", "name": "x"}), "root"),
            (json!({"role": "viewer", "name": ""}), "name"),
            (json!({"role": "viewer"}), "name"),
            (json!({"role": "viewer", "name": "x", "ttl": 5}), "ttl"),
        ] {
            let r = send(
                &app,
                "POST",
                "/api/v1/tokens",
                Some(&bearer(ADMIN)),
                Some(&body),
            )
            .await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.json);
            assert!(
                r.json["error"].as_str().unwrap().contains(needle),
                "{body}: {}",
                r.json
            );
        }
        // The listing shows ids, roles and names, never a token or its hash.
        let r = send(&app, "GET", "/api/v1/tokens", Some(&bearer(ADMIN)), None).await;
        assert_eq!(r.status, StatusCode::OK);
        let text = r.json.to_string();
        assert!(
            !text.contains(&op2) && !text.contains(OP) && !text.contains("hash"),
            "{text}"
        );
        let roles: Vec<(&str, &str, bool)> = r
            .json
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["role"].as_str().unwrap(),
                    t["name"].as_str().unwrap(),
                    t["bootstrap"].as_bool().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            roles,
            vec![
                ("admin", "admin.token", true),
                ("operator", "operator.token", true),
                ("enrol", "enrol.token", true),
                ("operator", "alice", false),
            ]
        );
        // Revocation: the token stops working at once; a second revocation is a 404.
        for (uri, want) in [
            (format!("/api/v1/tokens/{op2_id}"), StatusCode::OK),
            (format!("/api/v1/tokens/{op2_id}"), StatusCode::NOT_FOUND),
            ("/api/v1/tokens/abc".to_string(), StatusCode::BAD_REQUEST),
        ] {
            let r = send(&app, "DELETE", &uri, Some(&bearer(ADMIN)), None).await;
            assert_eq!(r.status, want, "{uri}: {}", r.json);
        }
        let r = send(&app, "GET", "/api/v1/hosts", Some(&bearer(&op2)), None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        let revoked = server
            .store()
            .events_where(None, Some("token_revoked"), 10)
            .await
            .unwrap();
        assert_eq!(revoked.len(), 1);
        assert_eq!(revoked[0].figures["token_id"], op2_id);
        server.store().close().await;
    })
    .await;
}

#[tokio::test]
async fn an_admin_token_is_generated_beside_the_others_and_a_restart_keeps_made_tokens() {
    let (store, dir) = bellwether_store::testing::fresh_sqlite();
    let first = Server::open(ServerConfig::new(store.clone(), Some(dir.clone())))
        .await
        .unwrap();
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .unwrap()
            .trim()
            .to_string()
    };
    let (admin, op) = (read("admin.token"), read("operator.token"));
    assert_eq!(admin.len(), 64);
    assert_ne!(admin, op);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("admin.token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let kinds: Vec<&str> = first.tokens.iter().map(|t| t.kind).collect();
    assert_eq!(kinds, ["admin", "operator", "enrol"]);
    let app = first.router();
    let r = send(
        &app,
        "POST",
        "/api/v1/tokens",
        Some(&bearer(&admin)),
        Some(&json!({"role": "operator", "name": "ci"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    let made = r.json["token"].as_str().unwrap().to_string();
    // The operator.token of an existing deployment keeps its rights, and no more.
    let r = send(
        &app,
        "POST",
        "/api/v1/baselines",
        Some(&bearer(&op)),
        Some(&json!({"all": true})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = send(&app, "GET", "/api/v1/tokens", Some(&bearer(&op)), None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    first.store().close().await;

    // A restart with a new operator token replaces operator.token only; the made token stays.
    let mut c = ServerConfig::new(store.clone(), Some(dir.clone()));
    c.operator_token = Some(OP.into());
    let second = Server::open(c).await.unwrap();
    assert_eq!(read("operator.token"), OP);
    assert_eq!(read("admin.token"), admin);
    let app = second.router();
    for (token, want) in [
        (op.as_str(), StatusCode::UNAUTHORIZED),
        (OP, StatusCode::OK),
        (made.as_str(), StatusCode::OK),
        (admin.as_str(), StatusCode::OK),
    ] {
        let r = send(&app, "GET", "/api/v1/hosts", Some(&bearer(token)), None).await;
        assert_eq!(r.status, want, "{}", r.json);
    }
    second.store().close().await;

    // One token cannot hold two roles.
    let mut c = ServerConfig::new(store.clone(), Some(dir.clone()));
    c.admin_token = Some(OP.into());
    c.operator_token = Some(OP.into());
    assert!(Server::open(c).await.is_err());
    let _ = std::fs::remove_dir_all(dir);
}

/// docs/openapi.yaml's security requirements say the same as the rules: each operation's
/// `security:` list (or the file's default: viewer, operator, admin) names the roles its rule
/// allows.
#[test]
fn openapi_security_matches_the_rules() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let yaml = std::fs::read_to_string(root.join("docs/openapi.yaml")).expect("docs/openapi.yaml");
    let names = |list: &str| -> BTreeSet<String> {
        list.split('{')
            .skip(1)
            .map(|item| item.split(':').next().unwrap().trim().to_string())
            .collect()
    };
    let mut declared = std::collections::BTreeMap::new();
    let (mut path, mut method) = (String::new(), String::new());
    for line in yaml.lines() {
        if let Some(p) = line.strip_prefix("  /").and_then(|l| l.strip_suffix(':')) {
            path = format!("/{p}");
        } else if let Some(m) = line.strip_prefix("    ").and_then(|l| l.strip_suffix(':')) {
            if ["get", "post", "patch", "delete"].contains(&m) {
                method = m.to_uppercase();
                declared.insert((method.clone(), path.clone()), None);
            }
        } else if let Some(list) = line.strip_prefix("      security: ") {
            declared.insert((method.clone(), path.clone()), Some(names(list)));
        }
    }
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    for (method, path, access) in RULES {
        let want = match access {
            Access::Public => set(&[]),
            Access::Enrol => set(&["enrol"]),
            Access::Agent => set(&["agent"]),
            Access::Viewer => set(&["viewer", "operator", "admin"]),
            Access::Operator => set(&["operator", "admin"]),
            Access::Admin => set(&["admin"]),
        };
        let Some(got) = declared.get(&(method.to_string(), path.to_string())) else {
            panic!("docs/openapi.yaml lacks {method} {path}");
        };
        let got = got
            .clone()
            .unwrap_or_else(|| set(&["viewer", "operator", "admin"]));
        assert_eq!(
            got, want,
            "docs/openapi.yaml's security for {method} {path}"
        );
    }
}
