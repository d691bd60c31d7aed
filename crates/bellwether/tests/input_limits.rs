//! Deep and oversized input against the real programs: a rollout plan nested 100,000 levels
//! deep posted to a running server is refused at once while `/healthz` keeps answering, every
//! JSON route refuses deep JSON, and the YAML files the CLI reads (patch plans, proxy
//! configurations, sandbox scenarios) are refused with the file, line and column.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

const OP: &str = "operator-token-input-limits";
const ENROL: &str = "enrol-token-input-limits-01";

/// How long a refusal may take: parsing the input at all used to take 36 s.
const PROMPT: Duration = Duration::from_secs(2);

async fn post_raw(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    body: String,
) -> (u16, serde_json::Value, Duration) {
    let t = Instant::now();
    let r = client
        .post(url)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = r.status().as_u16();
    let v = r.json().await.unwrap_or(serde_json::Value::Null);
    (status, v, t.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_plans_and_deep_json_are_refused_at_once_while_healthz_answers() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &Backend::Sqlite, "127.0.0.1:0", OP, ENROL);
    let client = reqwest::Client::new();

    // /healthz is polled throughout; every answer must come promptly.
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (client, url, stop) = (client.clone(), server.url.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut worst, mut answers) = (Duration::ZERO, 0u32);
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let r = client
                    .get(format!("{url}/healthz"))
                    .timeout(Duration::from_secs(30))
                    .send()
                    .await
                    .expect("/healthz answers");
                assert_eq!(r.status().as_u16(), 200);
                worst = worst.max(t.elapsed());
                answers += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (worst, answers)
        })
    };

    let rollouts = format!("{}/api/v1/rollouts", server.url);
    let plans = [
        (
            format!("name: {}", "[".repeat(100_000)),
            "deep.yaml:1:1: name: invalid type",
        ),
        (
            format!("name: x\nupdate: {}", "{a: ".repeat(100_000)),
            "deep.yaml:2:",
        ),
        (
            format!(
                "name: x\ntargets:\n  labels: {{ role: web, role: db }}\nupdate: {}",
                "[".repeat(100_000)
            ),
            "deep.yaml:3:24: targets.labels: duplicate key `role`",
        ),
        (
            format!("name: x\n# {}\n", "x".repeat(2 << 20)),
            "deep.yaml:1:1: the text is ",
        ),
    ];
    for (plan, want) in plans {
        let body = serde_json::json!({ "plan_yaml": plan, "file": "deep.yaml" }).to_string();
        let (status, v, took) = post_raw(&client, &rollouts, OP, body).await;
        let error = v["error"].as_str().unwrap_or_default();
        assert_eq!(status, 400, "{v}");
        assert!(error.starts_with(want), "{error:.300} lacks {want}");
        assert!(took < PROMPT, "the plan took {took:?} to refuse");
    }

    // Deep JSON on every route that takes a JSON body: refused with a 400 at once, before
    // anything is stored: where the type takes any value (an action result's `detail`),
    // serde_json's recursion limit (128) stops it; elsewhere the first value of the wrong
    // shape does.
    let (status, v, _) = post_raw(
        &client,
        &format!("{}/api/v1/enrol", server.url),
        ENROL,
        r#"{"name": "web-1", "labels": {"role": "web"}}"#.into(),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let agent = v["agent_token"].as_str().unwrap().to_string();
    let deep = "[".repeat(100_000);
    let routes = [
        (
            "/api/v1/enrol",
            ENROL,
            format!(r#"{{"name": "web-2", "labels": {deep}"#),
        ),
        (
            "/api/v1/agent/profile",
            agent.as_str(),
            format!(r#"{{"host": {deep}"#),
        ),
        (
            "/api/v1/agent/samples",
            agent.as_str(),
            format!(r#"{{"samples": {deep}"#),
        ),
        ("/api/v1/baselines", OP, format!(r#"{{"hosts": {deep}"#)),
        ("/api/v1/rollouts", OP, format!(r#"{{"plan_yaml": {deep}"#)),
        (
            "/api/v1/agent/actions/1/result",
            agent.as_str(),
            format!(r#"{{"ok": {deep}"#),
        ),
        ("/api/v1/enrol", ENROL, deep.clone()),
    ];
    for (path, token, body) in routes {
        let (status, v, took) =
            post_raw(&client, &format!("{}{path}", server.url), token, body).await;
        let error = v["error"].as_str().unwrap_or_default();
        assert_eq!(status, 400, "{path}: {v}");
        assert!(
            error.starts_with("invalid JSON body"),
            "{path}: {error:.300}"
        );
        assert!(took < PROMPT, "{path} took {took:?} to refuse");
    }
    let (_, hosts) = server.api().get("/api/v1/hosts").await;
    assert_eq!(hosts.as_array().map(Vec::len), Some(1), "{hosts}");

    stop.store(true, Ordering::Relaxed);
    let (worst, answers) = poller.await.unwrap();
    assert!(answers >= 1);
    assert!(worst < PROMPT, "/healthz took up to {worst:?}");
}

/// The YAML files the CLI reads: refused with exit code 2, the file, line and column, at once.
#[test]
fn deep_and_repeated_yaml_files_are_refused_by_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let deep_patch = write(
        "patch.yaml",
        &format!("name: p\nproxy: {}", "{a: ".repeat(100_000)),
    );
    let dup_patch = write(
        "dup-patch.yaml",
        "name: p\nproxy: { listen: '127.0.0.1:1', listen: '127.0.0.1:2' }\n",
    );
    let pid0 = write(
        "pid0.yaml",
        "name: p\nproxy: { listen: '127.0.0.1:1' }\noriginal: { address: 'h:1', pid: 0 }\n",
    );
    let deep_proxy = write("proxy.yaml", &format!("listeners: {}", "[".repeat(100_000)));
    let dup_proxy = write(
        "dup-proxy.yaml",
        "listeners: []\nbackends:\n  - { name: a, address: 'h:1', name: b }\n",
    );
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["patch", "--state-dir", "st", "start", &deep_patch],
            format!("{deep_patch}: line 2, column 9: proxy: unknown field `a`"),
        ),
        (
            vec!["patch", "--state-dir", "st", "start", &dup_patch],
            format!("{dup_patch}: line 2, column 33: proxy: duplicate key `listen`"),
        ),
        (
            vec!["patch", "--state-dir", "st", "start", &pid0],
            format!("{pid0}: line 3, column 34: original.pid: 0 is not one process"),
        ),
        // The ID names the report file in the state directory: it must not lead out of it.
        (
            vec![
                "patch",
                "--state-dir",
                "st",
                "start",
                &pid0,
                "--id",
                "../escaped",
            ],
            "../escaped is not a patch ID".to_string(),
        ),
        (
            vec!["proxy", "--config", &deep_proxy],
            format!("{deep_proxy}: line 1, column "),
        ),
        (
            vec!["proxy", "--config", &dup_proxy],
            format!("{dup_proxy}: line 3, column 32: backends[0]: duplicate key `name`"),
        ),
    ];
    for (args, want) in cases {
        let t = Instant::now();
        let out = std::process::Command::new(EXE)
            .args(&args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(&want), "{args:?}: {err:.400} lacks {want}");
        assert!(t.elapsed() < PROMPT * 2, "{args:?} took {:?}", t.elapsed());
    }
}
