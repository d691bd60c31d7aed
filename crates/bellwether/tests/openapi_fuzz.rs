//! docs/openapi.yaml against the running server: every route the server's code registers is
//! described (method and path, with its responses), and schemathesis (PyPI, pinned below)
//! sends generated valid and invalid requests to a real `bellwether server`, checking that no
//! answer is a 500 and that every answer matches the schema (status, content type, body).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;

/// The schemathesis release this test is written against (its flags change between majors).
const SCHEMATHESIS: &str = "4.32.5";

const OP: &str = "operator-token-for-openapi-fuzz-1";
const ENROL: &str = "enrol-token-for-openapi-fuzz-0001";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every (METHOD, path) the server's code routes, read from its source: the entries of each
/// `*ROUTES` list (`("GET", "/api/v1/hosts")`) and each `.route("/path", get(…).post(…))`
/// with a literal path. A route added anywhere under crates/bellwether-server/src is found.
fn routes_in_code() -> BTreeSet<(String, String)> {
    let mut files = Vec::new();
    let mut dirs = vec![root().join("crates/bellwether-server/src")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    let methods = ["GET", "POST", "PUT", "PATCH", "DELETE"];
    let mut out = BTreeSet::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        // Tests inside the file route things of their own.
        let text = text.split("#[cfg(test)]").next().unwrap();
        // The dashboard's static files (`ui.rs`: `/ui`, `/ui/{*path}`) are pages, not API
        // operations: docs/dashboard.md describes them and tests/stream.rs checks them.
        if f.file_name().is_some_and(|n| n == "ui.rs") {
            continue;
        }
        // ("METHOD", "/path") tuples.
        for m in methods {
            let pat = format!("(\"{m}\", \"/");
            for (i, _) in text.match_indices(&pat) {
                let rest = &text[i + pat.len() - 1..];
                let path = &rest[..rest.find('"').unwrap()];
                out.insert((m.to_string(), path.to_string()));
            }
        }
        // .route("/path", handlers) with a literal path.
        for (i, _) in text.match_indices(".route(\"/") {
            let rest = &text[i + ".route(\"".len()..];
            let end = rest.find('"').unwrap();
            let path = &rest[..end];
            // The handler expression: up to the call's closing parenthesis.
            let mut depth = 1;
            let mut stop = rest.len();
            for (j, c) in rest[end..].char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            stop = end + j;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let handlers = &rest[end..stop];
            for m in methods {
                let lower = m.to_lowercase();
                let called = handlers.match_indices(&format!("{lower}(")).any(|(k, _)| {
                    k == 0
                        || !handlers.as_bytes()[k - 1].is_ascii_alphanumeric()
                            && handlers.as_bytes()[k - 1] != b'_'
                });
                if called {
                    out.insert((m.to_string(), path.to_string()));
                }
            }
        }
    }
    out
}

fn spec() -> serde_json::Value {
    let text = std::fs::read_to_string(root().join("docs/openapi.yaml")).unwrap();
    serde_saphyr::from_str(&text).expect("docs/openapi.yaml parses as YAML")
}

/// Each route in the code has an operation in docs/openapi.yaml with a success response and,
/// behind a token, the 401 and 403 answers; each documented operation exists in the code.
#[test]
fn every_route_in_the_code_is_described_in_openapi_yaml() {
    let routes = routes_in_code();
    assert!(
        routes.contains(&("GET".into(), "/api/v1/hosts".into()))
            && routes.contains(&("POST".into(), "/api/v1/rollouts".into())),
        "the route scan found neither GET /api/v1/hosts nor POST /api/v1/rollouts: {routes:?}"
    );
    let spec = spec();
    let paths = spec["paths"].as_object().expect("paths");
    let mut problems = Vec::new();
    for (m, p) in &routes {
        let Some(op) = paths.get(p).and_then(|o| o.get(m.to_lowercase())) else {
            problems.push(format!(
                "{m} {p} is routed by crates/bellwether-server/src but docs/openapi.yaml has no \
                 `{}:` under `  {p}:` (describe it: parameters, request body, responses)",
                m.to_lowercase()
            ));
            continue;
        };
        let responses = op["responses"].as_object();
        let codes: Vec<&String> = responses.map(|r| r.keys().collect()).unwrap_or_default();
        if !codes
            .iter()
            .any(|c| c.starts_with('2') || c.starts_with('3'))
        {
            problems.push(format!("{m} {p}: no success response in docs/openapi.yaml"));
        }
        let open = op
            .get("security")
            .and_then(|s| s.as_array())
            .is_some_and(|s| s.is_empty());
        if !open {
            for code in ["401", "403"] {
                if !codes.iter().any(|c| *c == code) {
                    problems.push(format!(
                        "{m} {p}: needs a token but docs/openapi.yaml lists no {code} response"
                    ));
                }
            }
        }
    }
    for (p, item) in paths {
        for m in item.as_object().unwrap().keys() {
            if ["get", "post", "put", "patch", "delete"].contains(&m.as_str())
                && !routes.contains(&(m.to_uppercase(), p.clone()))
            {
                problems.push(format!(
                    "docs/openapi.yaml describes {} {p}, which the server's code does not route",
                    m.to_uppercase()
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The paths whose answer is a stream (text/event-stream): no request to them ends, so they
/// are checked by their own tests, not fuzzed.
fn streamed_paths(spec: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    for (p, item) in spec["paths"].as_object().unwrap() {
        if item.to_string().contains("text/event-stream") {
            out.push(p.clone());
        }
    }
    out
}

fn schemathesis() -> PathBuf {
    let missing = format!(
        "schemathesis {SCHEMATHESIS} is needed to check docs/openapi.yaml against the server: \
         install it: pip install schemathesis=={SCHEMATHESIS}"
    );
    let out = Command::new("st")
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("{missing} (running `st --version`: {e})"));
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(
        version.contains(SCHEMATHESIS),
        "{missing} (found `{}`)",
        version.trim()
    );
    PathBuf::from("st")
}

/// The plan of the seeded rollout: the `role=web` hosts, a small pilot and a short bake. No
/// agent carries out its actions, so it stays running (then pauses for no data): its status
/// and report have every field to check.
const PLAN: &str = r#"name: web-v2
update:
  name: websvc
  version: "2"
  apply:  { builtin: set_service_version, version: "2" }
  revert: { builtin: set_service_version, version: "1" }
targets:
  labels: { role: web }
risk: { low: 0.3, high: 0.7, moderate_share: 0.25, pilot: { min: 1, max: 2 }, high_risk: defer }
waves: { fixed: [50, 100] }
bake: 300ms
analysis:
  interval: 100ms
  baseline: 200ms
  metrics:
    - { name: svc_error_ratio, threshold_pct: 50, for: 300ms, floor: 0.01 }
  judge: { enabled: false }
no_data: { after: 3s }
"#;

/// What the seeding made, by the ids the server gave it.
struct Seeded {
    rollout: String,
    snapshot: String,
    config_task: String,
    rule: i64,
    /// A second rule, for the example of DELETE (the first stays to be read).
    doomed_rule: i64,
    dependency: String,
    shadow: String,
    /// A viewer token's id (revoked by the admin pass's examples).
    token: i64,
    /// The agent token of `db-01` (the config source, the dependency's and the shadow's host).
    db_agent: String,
}

/// One call the seeding needs; panics naming the call unless the answer is `expect`.
async fn call(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    (method, path): (reqwest::Method, &str),
    body: Option<serde_json::Value>,
    expect: u16,
) -> serde_json::Value {
    let mut req = client
        .request(method.clone(), format!("{url}{path}"))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    assert_eq!(status, expect, "seeding: {method} {path}: {text}");
    serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
}

fn setting(name: &str, value: &str, vartype: &str, context: &str, max: f64) -> serde_json::Value {
    serde_json::json!({
        "name": name, "value": value, "unit": null, "vartype": vartype, "context": context,
        "min": 0.0, "max": max, "enumvals": [], "boot_val": value, "reset_val": value,
        "source": "default", "sourcefile": null, "sourceline": null, "pending_restart": false,
        "category": "", "short_desc": "",
    })
}

/// Fills the server through its own API, as agents and an operator would: a trained model,
/// three hosts with profiles, samples and baselines (one drifted), a running rollout, a
/// PostgreSQL configuration source with a change, a graph, a snapshot and a config task, an
/// alert rule, a mirrored dependency (a TCP one whose primary is this server's own port) and a
/// data shadow, and a viewer token.
async fn seed(url: &str, admin: &str) -> Seeded {
    use reqwest::Method;
    use serde_json::json;
    let c = reqwest::Client::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut csv = String::from("deployment_id,host,disk_free_pct,outcome\n");
    for i in 0..200 {
        let disk = i * 7 % 60;
        let failed = if disk < 10 { i % 10 != 0 } else { i % 17 == 0 };
        csv.push_str(&format!("d{},h{i},{disk},{}\n", i / 10, failed as u8));
    }
    let r = c
        .post(format!("{url}/api/v1/history/import"))
        .bearer_auth(OP)
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        201,
        "seeding: history import: {}",
        r.text().await.unwrap()
    );
    call(
        &c,
        url,
        OP,
        (Method::POST, "/api/v1/model/train"),
        None,
        201,
    )
    .await;
    let mut agents = BTreeMap::new();
    for (i, name) in ["web-00", "web-01", "db-01"].into_iter().enumerate() {
        let role = if name.starts_with("db") { "db" } else { "web" };
        let v = call(
            &c,
            url,
            ENROL,
            (Method::POST, "/api/v1/enrol"),
            Some(json!({"name": name, "labels": {"role": role}})),
            200,
        )
        .await;
        let token = v["agent_token"].as_str().unwrap().to_string();
        let profile = json!({
            "hostname": name, "kernel": "6.1.0",
            "packages": {"websvc": "1", "openssl": "3.0.1"},
            "metrics": {"disk_free_pct": 40.0 + i as f64},
            "dependencies": [{"name": "db", "endpoint": "127.0.0.1:5432", "reachable": true, "latency_ms": 1.5}],
        });
        call(
            &c,
            url,
            &token,
            (Method::POST, "/api/v1/agent/profile"),
            Some(profile),
            204,
        )
        .await;
        let samples: Vec<_> = (0..5)
            .map(|k| json!({"ts_ms": now - 1000 * k, "name": "svc_error_ratio", "value": 0.01 * k as f64}))
            .collect();
        call(
            &c,
            url,
            &token,
            (Method::POST, "/api/v1/agent/samples"),
            Some(json!({ "samples": samples })),
            202,
        )
        .await;
        agents.insert(name, token);
    }
    call(
        &c,
        url,
        OP,
        (Method::POST, "/api/v1/baselines"),
        Some(json!({"all": true})),
        200,
    )
    .await;
    // web-01 drifts from its baseline: a kernel, a package, a metric and a lost dependency.
    let drifted = json!({"hostname": "web-01", "kernel": "6.1.1",
        "packages": {"websvc": "1", "openssl": "3.0.9"}, "metrics": {"disk_free_pct": 12.0}});
    call(
        &c,
        url,
        &agents["web-01"],
        (Method::POST, "/api/v1/agent/profile"),
        Some(drifted),
        204,
    )
    .await;

    // A PostgreSQL source on db-01 whose work_mem changes, its graph and a snapshot.
    let db = agents["db-01"].clone();
    let settings = [
        setting("work_mem", "4096", "integer", "user", 2147483647.0),
        setting("max_connections", "100", "integer", "postmaster", 262143.0),
        setting("random_page_cost", "4", "real", "user", 1e300),
    ];
    let catalog = json!({
        "server_version_num": 150000,
        "settings": settings.iter().map(|s| (s["name"].as_str().unwrap().to_string(), s.clone())).collect::<serde_json::Map<_, _>>(),
    });
    for (work_mem, at) in [("4096", now - 5000), ("8192", now)] {
        let values =
            json!({"work_mem": work_mem, "max_connections": "100", "random_page_cost": "4"});
        call(
            &c,
            url,
            &db,
            (Method::POST, "/api/v1/agent/config"),
            Some(json!({"source": "main", "kind": "postgres", "values": values, "catalog": catalog, "at_ms": at})),
            200,
        )
        .await;
    }
    call(
        &c,
        url,
        &db,
        (Method::POST, "/api/v1/agent/config/graph"),
        Some(json!({"source": "main", "graph": {"nodes": [], "edges": []}, "at_ms": now})),
        201,
    )
    .await;
    let snap = call(
        &c,
        url,
        OP,
        (Method::POST, "/api/v1/config/snapshots"),
        Some(json!({"host": "db-01", "source": "main", "reason": "openapi fuzz"})),
        201,
    )
    .await;
    let task = call(
        &c,
        url,
        OP,
        (Method::POST, "/api/v1/config/tasks"),
        Some(json!({"targets": [{"host": "db-01", "database": "main"}],
            "set": [["work_mem", "16384"]], "description": "openapi fuzz", "id": "cfg-1"})),
        201,
    )
    .await;
    let rollout = call(
        &c,
        url,
        OP,
        (Method::POST, "/api/v1/rollouts"),
        Some(json!({"plan_yaml": PLAN, "file": "web.yaml"})),
        201,
    )
    .await;
    let rule = call(
        &c,
        url,
        OP,
        (Method::POST, "/api/v1/alerts/rules"),
        Some(json!({"name": "fuzz", "url": "http://127.0.0.1:9/hook", "events": ["rollout.*"]})),
        201,
    )
    .await;
    let doomed = call(
        &c,
        url,
        OP,
        (Method::POST, "/api/v1/alerts/rules"),
        Some(json!({"name": "doomed", "url": "http://127.0.0.1:9/hook", "events": ["patch.*"]})),
        201,
    )
    .await;
    let primary = url.trim_start_matches("http://");
    let dep = call(
        &c,
        url,
        OP,
        (Method::POST, "/api/v1/mirror/dependencies"),
        Some(json!({"name": "cache", "kind": "tcp", "primary": primary, "host": "db-01", "tier": "high"})),
        201,
    )
    .await;
    let shadow = call(
        &c,
        url,
        OP,
        (Method::POST, "/api/v1/shadow/shadows"),
        Some(json!({"name": "app", "host": "db-01",
            "resource": {"kind": "sqlite", "path": "srv/app.db"},
            "type": "transactional", "dir": "var/shadow/app",
            "locations": [{"id": "primary", "path": "srv/app.db"}, {"id": "cell-b", "path": "srv/b/app.db"}],
            "routing": {"link": "srv/current.db"}})),
        201,
    )
    .await;
    let token = call(
        &c,
        url,
        admin,
        (Method::POST, "/api/v1/tokens"),
        Some(json!({"role": "viewer", "name": "fuzz-viewer"})),
        201,
    )
    .await;
    Seeded {
        rollout: rollout["id"].as_str().unwrap().to_string(),
        snapshot: snap["id"].as_str().unwrap().to_string(),
        config_task: task["id"].as_str().unwrap().to_string(),
        rule: rule["id"].as_i64().unwrap(),
        doomed_rule: doomed["id"].as_i64().unwrap(),
        dependency: dep["name"].as_str().unwrap().to_string(),
        shadow: shadow["name"].as_str().unwrap().to_string(),
        token: token["id"].as_i64().unwrap(),
        db_agent: db,
    }
}

/// docs/openapi.yaml with the seeded ids as the `example` of the path and query parameters
/// that name them (and a few request bodies), so schemathesis's examples phase reaches the
/// success answers and checks them against their schemas; its other phases generate the rest.
fn with_examples(mut spec: serde_json::Value, s: &Seeded) -> serde_json::Value {
    use serde_json::json;
    // (parameter, path prefix, value): the longest matching prefix wins.
    let table: Vec<(&str, &str, serde_json::Value)> = vec![
        ("id", "/api/v1/rollouts", json!(s.rollout)),
        ("command", "/api/v1/rollouts", json!("pause")),
        ("host", "/api/v1/rollouts", json!("web-01")),
        ("id", "/api/v1/config/snapshots", json!(s.snapshot)),
        ("id", "/api/v1/config/tasks", json!(s.config_task)),
        ("id", "/api/v1/alerts/rules", json!(s.rule.to_string())),
        ("id", "/api/v1/tokens", json!(s.token)),
        ("name", "/api/v1/mirror", json!(s.dependency)),
        ("name", "/api/v1/shadow", json!(s.shadow)),
        ("host", "/api/v1/", json!("db-01")),
        ("source", "/api/v1/config", json!("main")),
        ("metric", "/api/v1/hosts", json!("svc_error_ratio")),
        ("update", "/api/v1/risk", json!("websvc")),
        ("version", "/api/v1/risk", json!("2")),
    ];
    spec["components"]["parameters"]["HostNamePath"]["example"] = json!("web-01");
    let bodies: Vec<(&str, &str, serde_json::Value)> = vec![
        (
            "/api/v1/config/simulate",
            "post",
            json!({"host": "db-01", "source": "main", "set": [["work_mem", "1024"]]}),
        ),
        (
            "/api/v1/config/snapshots",
            "post",
            json!({"host": "db-01", "source": "main"}),
        ),
        (
            "/api/v1/alerts/rules",
            "post",
            json!({"name": "fuzz-2", "url": "http://127.0.0.1:9/b", "events": ["patch.*"], "format": "slack"}),
        ),
        (
            "/api/v1/mirror/dependencies/{name}",
            "patch",
            json!({"policy": {"max_mirrors": 2}}),
        ),
    ];
    let paths = spec["paths"].as_object_mut().unwrap();
    for (path, item) in paths.iter_mut() {
        for (method, op) in item.as_object_mut().unwrap().iter_mut() {
            let Some(params) = op.get_mut("parameters").and_then(|p| p.as_array_mut()) else {
                continue;
            };
            for p in params {
                let Some(name) = p.get("name").and_then(|n| n.as_str()) else {
                    continue;
                };
                let best = table
                    .iter()
                    .filter(|(n, prefix, _)| *n == name && path.starts_with(prefix))
                    .max_by_key(|(_, prefix, _)| prefix.len());
                if let Some((_, _, v)) = best {
                    p["example"] = v.clone();
                }
            }
            // A removed rule is gone, unlike a dependency or a shadow (marked removed, still
            // readable): DELETE's example is a rule of its own.
            if path == "/api/v1/alerts/rules/{id}" && method == "delete" {
                for p in op["parameters"].as_array_mut().unwrap() {
                    if p["name"] == "id" {
                        p["example"] = json!(s.doomed_rule.to_string());
                    }
                }
            }
        }
        for (p, m, body) in &bodies {
            if path == p {
                item[*m]["requestBody"]["content"]["application/json"]["example"] = body.clone();
            }
        }
    }
    spec
}

/// The (METHOD, path) of every request in schemathesis's HAR report `har` that was answered
/// with a 2xx: what the run reached beyond the error answers.
fn successes(har: &Path) -> BTreeSet<(String, String)> {
    let text = std::fs::read_to_string(har)
        .unwrap_or_else(|e| panic!("schemathesis wrote no HAR report at {}: {e}", har.display()));
    let har: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut out = BTreeSet::new();
    for e in har["log"]["entries"].as_array().expect("log.entries") {
        let status = e["response"]["status"].as_u64().unwrap_or(0);
        if !(200..300).contains(&status) {
            continue;
        }
        let url = e["request"]["url"].as_str().unwrap_or_default();
        let path = url
            .split_once("://")
            .and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..]))
            .unwrap_or(url);
        let path = path.split('?').next().unwrap_or(path);
        let method = e["request"]["method"].as_str().unwrap_or_default();
        out.insert((method.to_string(), path.to_string()));
    }
    out
}

/// One schemathesis run with `token` over the operations `filter` selects.
fn fuzz(
    st: &Path,
    spec_path: &Path,
    url: &str,
    token: &str,
    filter: &[&str],
    dir: &Path,
    what: &str,
) -> String {
    // The agents' long poll waits up to wait_ms (at most 30 s, by design): fuzzing it would
    // only make requests slow, so it is fixed at 0; the operation's other inputs are fuzzed.
    let config = dir.join("schemathesis.toml");
    std::fs::write(
        &config,
        "[[operations]]\ninclude-name = \"GET /api/v1/agent/actions\"\n\
         parameters = { \"query.wait_ms\" = 0 }\n",
    )
    .unwrap();
    let mut cmd = Command::new(st);
    cmd.arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(spec_path)
        .args(["--url", url])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        ])
        // Bounded: a few examples of each operation, one worker, a fixed seed.
        .args(["--max-examples", "12", "--workers", "1", "--seed", "15"])
        .args(["--phases", "examples,coverage,fuzzing"])
        // A guard against a request that never ends, not a speed check.
        .args(["--request-timeout", "60", "--no-shrink"])
        .args(["--suppress-health-check", "all"])
        .args(["--warnings", "off"])
        .args(["--report", "junit,har"])
        .arg("--report-junit-path")
        .arg(dir.join(format!("{what}.xml")))
        .arg("--report-har-path")
        .arg(dir.join(format!("{what}.har")))
        .args(filter)
        .env("NO_COLOR", "1")
        .current_dir(dir);
    let out = cmd.output().expect("run schemathesis");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "schemathesis found answers that break docs/openapi.yaml ({what}); reproduce with \
         `st run docs/openapi.yaml --url URL --header 'Authorization: Bearer TOKEN' …`:\n{text}"
    );
    text
}

#[test]
fn the_running_server_answers_as_openapi_yaml_says() {
    let st = schemathesis();
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path(), &Backend::Sqlite, "127.0.0.1:0", OP, ENROL);
    let admin = std::fs::read_to_string(server.data_dir.join("admin.token"))
        .unwrap()
        .trim()
        .to_string();
    // The server holds data of every kind before it is fuzzed, and the spec names the seeded
    // ids as examples: the success answers are checked, not only the 404s of an empty server.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let seeded = rt.block_on(seed(&server.url, &admin));
    let agent = seeded.db_agent.clone();
    let spec = spec();
    let spec_path = tmp.path().join("openapi-seeded.json");
    std::fs::write(
        &spec_path,
        serde_json::to_string(&with_examples(spec.clone(), &seeded)).unwrap(),
    )
    .unwrap();
    let mut skip: Vec<String> = Vec::new();
    for p in streamed_paths(&spec) {
        skip.push("--exclude-path".into());
        skip.push(p);
    }
    let skip: Vec<&str> = skip.iter().map(String::as_str).collect();
    let with = |extra: &[&'static str]| -> Vec<&str> {
        let mut v: Vec<&str> = extra.to_vec();
        v.extend(&skip);
        v
    };
    let dir = tmp.path();
    let mut summaries = BTreeMap::new();
    // The operator's surface (everything but the agents' routes and the tokens).
    summaries.insert(
        "operator",
        fuzz(
            &st,
            &spec_path,
            &server.url,
            OP,
            &with(&["--exclude-path-regex", "^/api/v1/(agent/|enrol$|tokens)"]),
            dir,
            "operator",
        ),
    );
    // The agents' routes with an agent token, enrolment with the enrolment token.
    summaries.insert(
        "agent",
        fuzz(
            &st,
            &spec_path,
            &server.url,
            &agent,
            &with(&["--include-path-regex", "^/api/v1/agent/"]),
            dir,
            "agent",
        ),
    );
    summaries.insert(
        "enrol",
        fuzz(
            &st,
            &spec_path,
            &server.url,
            ENROL,
            &with(&["--include-path", "/api/v1/enrol"]),
            dir,
            "enrol",
        ),
    );
    // The tokens last: fuzzing DELETE /api/v1/tokens/{id} may revoke any token.
    summaries.insert(
        "admin",
        fuzz(
            &st,
            &spec_path,
            &server.url,
            &admin,
            &with(&["--include-path-regex", "^/api/v1/tokens"]),
            dir,
            "admin",
        ),
    );
    // The seeded objects' success answers were reached (and so checked against their schemas):
    // a missing one means an example no longer leads to its object.
    let mut reached = BTreeSet::new();
    for what in summaries.keys() {
        reached.extend(successes(&dir.join(format!("{what}.har"))));
    }
    let s = &seeded;
    let expected: Vec<(&str, String)> = vec![
        ("GET", "/api/v1/hosts/web-01".into()),
        ("GET", "/api/v1/hosts/web-01/drift".into()),
        ("GET", "/api/v1/hosts/web-01/samples".into()),
        ("GET", "/api/v1/fleet/drift".into()),
        ("GET", "/api/v1/risk".into()),
        ("GET", "/api/v1/models".into()),
        ("GET", format!("/api/v1/rollouts/{}", s.rollout)),
        ("GET", format!("/api/v1/rollouts/{}/report", s.rollout)),
        ("GET", "/api/v1/config/sources".into()),
        ("GET", "/api/v1/config/changes".into()),
        ("GET", "/api/v1/config/graph".into()),
        ("GET", format!("/api/v1/config/snapshots/{}", s.snapshot)),
        ("GET", format!("/api/v1/config/tasks/{}", s.config_task)),
        ("POST", "/api/v1/config/simulate".into()),
        ("GET", format!("/api/v1/alerts/rules/{}", s.rule)),
        ("GET", "/api/v1/alerts/deliveries".into()),
        (
            "GET",
            format!("/api/v1/mirror/dependencies/{}", s.dependency),
        ),
        (
            "GET",
            format!("/api/v1/mirror/dependencies/{}/history", s.dependency),
        ),
        ("GET", format!("/api/v1/shadow/shadows/{}", s.shadow)),
        ("GET", format!("/api/v1/shadow/shadows/{}/points", s.shadow)),
        (
            "GET",
            format!("/api/v1/shadow/shadows/{}/history", s.shadow),
        ),
        ("GET", "/api/v1/agent/actions".into()),
        ("DELETE", format!("/api/v1/tokens/{}", s.token)),
    ];
    let missing: Vec<String> = expected
        .iter()
        .filter(|(m, p)| !reached.contains(&(m.to_string(), p.clone())))
        .map(|(m, p)| format!("{m} {p}"))
        .collect();
    assert!(
        missing.is_empty(),
        "schemathesis never got a success answer from these seeded objects, so their schemas \
         went unchecked: {missing:?}"
    );
    // The server is still up and none of it was a 500.
    let log = server.guard.log_text();
    assert!(
        !log.contains("panicked"),
        "the server panicked under schemathesis:\n{log}"
    );
    for (what, text) in &summaries {
        eprintln!(
            "schemathesis ({what}):\n{}",
            text.lines().rev().take(8).collect::<Vec<_>>().join("\n")
        );
    }
}
