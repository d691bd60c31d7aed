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

/// One schemathesis run with `token` over the operations `filter` selects.
fn fuzz(st: &Path, url: &str, token: &str, filter: &[&str], dir: &Path, what: &str) -> String {
    let spec_path = root().join("docs/openapi.yaml");
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
        .arg(&spec_path)
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
        .args(["--report", "junit"])
        .arg("--report-junit-path")
        .arg(dir.join(format!("{what}.xml")))
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
    // An agent token, as an agent gets one.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let agent: serde_json::Value = rt.block_on(async {
        reqwest::Client::new()
            .post(format!("{}/api/v1/enrol", server.url))
            .bearer_auth(ENROL)
            .json(&serde_json::json!({"name": "fuzz-01", "labels": {"role": "web"}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    let agent = agent["agent_token"]
        .as_str()
        .expect("agent_token")
        .to_string();

    let spec = spec();
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
            &server.url,
            &admin,
            &with(&["--include-path-regex", "^/api/v1/tokens"]),
            dir,
            "admin",
        ),
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
