//! `GET /api/v1/events/stream` (server-sent events) and the dashboard's files under `/ui`,
//! against a real server on a socket and both stores.

mod support;

use bellwether_store::testing::with_each_backend;
use bellwether_store::StoreConfig;
use serde_json::{json, Value};
use support::{ADMIN, ENROL, OP};

/// A server with an admin token on a free port; answers its URL, a client, and the sender
/// that shuts it down.
async fn start(
    store: StoreConfig,
) -> (
    String,
    reqwest::Client,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let mut config = support::config(store);
    config.admin_token = Some(ADMIN.into());
    support::serve(config).await
}

/// Reads SSE messages from a streaming response, one `(id, data)` at a time.
struct Sse {
    resp: reqwest::Response,
    buf: String,
}

impl Sse {
    /// The next message with data, skipping keep-alive comments; `None` when the stream ends.
    async fn next(&mut self) -> Option<(Option<String>, String, Option<String>)> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut id, mut data, mut event) = (None, Vec::new(), None);
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().to_string());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push(v.trim_start().to_string());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = Some(v.trim().to_string());
                    }
                }
                if data.is_empty() {
                    continue;
                }
                return Some((id, data.join("\n"), event));
            }
            let chunk = self.resp.chunk().await.ok()??;
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    async fn next_event(&mut self) -> Value {
        let (id, data, event) = self.next().await.expect("the stream ended");
        assert_eq!(event, None, "{data}");
        let v: Value = serde_json::from_str(&data).unwrap();
        assert_eq!(id.as_deref(), Some(v["id"].to_string().as_str()), "{data}");
        v
    }

    /// The next event of `kind`, skipping the others (the audit events of the requests).
    async fn next_kind(&mut self, kind: &str) -> Value {
        loop {
            let v = self.next_event().await;
            if v["kind"] == kind {
                return v;
            }
        }
    }
}

async fn open(client: &reqwest::Client, url: &str, token: &str, last: Option<&str>) -> Sse {
    let mut req = client.get(url).bearer_auth(token);
    if let Some(l) = last {
        req = req.header("Last-Event-ID", l);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200, "{url}");
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    Sse {
        resp,
        buf: String::new(),
    }
}

async fn viewer_token(client: &reqwest::Client, url: &str) -> String {
    let r = client
        .post(format!("{url}/api/v1/tokens"))
        .bearer_auth(ADMIN)
        .json(&json!({"role": "viewer", "name": "dashboard"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn enrol(client: &reqwest::Client, url: &str, name: &str) {
    let r = client
        .post(format!("{url}/api/v1/enrol"))
        .bearer_auth(ENROL)
        .json(&json!({"name": name}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_sends_each_new_event_as_it_is_written_and_resumes_after_last_event_id() {
    with_each_backend(|store| async move {
        let (url, client, stop, task) = start(store).await;
        let viewer = viewer_token(&client, &url).await;
        let stream_url = format!("{url}/api/v1/events/stream");
        // Without a cursor it starts at the newest event: the next one is the enrolment below.
        let mut live = open(&client, &stream_url, &viewer, None).await;
        enrol(&client, &url, "web-01").await;
        let first = live.next_kind("enrolled").await;
        assert_eq!(first["kind"], "enrolled");
        assert_eq!(first["host"], "web-01");
        enrol(&client, &url, "web-02").await;
        let second = live.next_kind("enrolled").await;
        assert_eq!(second["host"], "web-02");
        assert!(second["id"].as_i64() > first["id"].as_i64());

        // A reconnect with Last-Event-ID gets what came after it, oldest first, then goes on.
        let mut again = open(
            &client,
            &stream_url,
            &viewer,
            Some(&first["id"].to_string()),
        )
        .await;
        // (The first event after it is the audit event of web-01's enrolment.)
        assert_eq!(again.next_kind("enrolled").await["id"], second["id"]);
        enrol(&client, &url, "web-03").await;
        assert_eq!(again.next_kind("enrolled").await["host"], "web-03");
        // `?after=` does the same; Last-Event-ID wins over it.
        let mut after = open(&client, &format!("{stream_url}?after=0"), &viewer, None).await;
        let oldest = after.next_event().await;
        assert!(oldest["id"].as_i64() <= first["id"].as_i64());
        let mut both = open(
            &client,
            &format!("{stream_url}?after=0"),
            &viewer,
            Some(&second["id"].to_string()),
        )
        .await;
        assert_eq!(both.next_kind("enrolled").await["host"], "web-03");

        // The events are the ones GET /api/v1/events lists.
        let listed: Vec<Value> = client
            .get(format!("{url}/api/v1/events?kind=enrolled&limit=10"))
            .bearer_auth(OP)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(listed.contains(&first), "{listed:?}");

        // Shutting the server down ends every open stream (so the shutdown does not wait on it).
        // (What was written before the shutdown still comes first.)
        let _ = stop.send(());
        while live.next().await.is_some() {}
        while again.next().await.is_some() {}
        task.await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_refuses_bad_cursors_and_tokens_that_are_not_a_persons() {
    with_each_backend(|store| async move {
        let (url, client, stop, task) = start(store).await;
        let stream_url = format!("{url}/api/v1/events/stream");
        for (header, query, want) in [
            (Some("soon"), "", "bad Last-Event-ID \"soon\""),
            (Some("1.5"), "", "bad Last-Event-ID"),
            (None, "?after=x", "bad query string"),
            (None, "?since=3", "bad query string"),
        ] {
            let mut req = client.get(format!("{stream_url}{query}")).bearer_auth(OP);
            if let Some(h) = header {
                req = req.header("Last-Event-ID", h);
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 400, "{header:?} {query}");
            let body: Value = r.json().await.unwrap();
            assert!(
                body["error"].as_str().unwrap().contains(want),
                "{header:?} {query}: {body}"
            );
        }
        let r = client.get(&stream_url).send().await.unwrap();
        assert_eq!(r.status(), 401);
        let r = client
            .get(&stream_url)
            .bearer_auth(ENROL)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        let body: Value = r.json().await.unwrap();
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("enrol token may not GET /api/v1/events/stream"),
            "{body}"
        );
        // whoami names the role of a person's token, and refuses the others.
        let me: Value = client
            .get(format!("{url}/api/v1/whoami"))
            .bearer_auth(OP)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(me["role"], "operator");
        assert!(me["token_id"].as_i64().is_some(), "{me}");
        let r = client
            .get(format!("{url}/api/v1/whoami"))
            .bearer_auth(ENROL)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        let _ = stop.send(());
        task.await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_is_served_without_a_token_with_its_content_types() {
    with_each_backend(|store| async move {
        let (url, client, stop, task) = start(store).await;
        for (path, kind, holds) in [
            ("/ui", "text/html; charset=utf-8", "app.js"),
            ("/ui/", "text/html; charset=utf-8", "app.js"),
            (
                "/ui/app.js",
                "text/javascript; charset=utf-8",
                "export function register",
            ),
            ("/ui/style.css", "text/css; charset=utf-8", "body"),
            (
                "/ui/lib/chart.js",
                "text/javascript; charset=utf-8",
                "export function histogram",
            ),
            (
                "/ui/pages/index.js",
                "text/javascript; charset=utf-8",
                "import",
            ),
        ] {
            let r = client.get(format!("{url}{path}")).send().await.unwrap();
            assert_eq!(r.status(), 200, "{path}");
            assert_eq!(r.headers()["content-type"], kind, "{path}");
            assert_eq!(r.headers()["x-content-type-options"], "nosniff", "{path}");
            assert!(
                r.headers().contains_key("content-security-policy"),
                "{path}"
            );
            assert!(r.text().await.unwrap().contains(holds), "{path}");
        }
        for path in [
            "/ui/nope.js",
            "/ui/../Cargo.toml",
            "/ui/%2e%2e/Cargo.toml",
            "/ui/lib",
        ] {
            let r = client.get(format!("{url}{path}")).send().await.unwrap();
            assert_eq!(r.status(), 404, "{path}");
        }
        let _ = stop.send(());
        task.await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hosts_samples_of_one_metric_come_oldest_first_in_their_range() {
    with_each_backend(|store| async move {
        let (url, client, stop, task) = start(store).await;
        let r = client
            .post(format!("{url}/api/v1/enrol"))
            .bearer_auth(ENROL)
            .json(&json!({"name": "web-01"}))
            .send()
            .await
            .unwrap();
        let agent = r.json::<Value>().await.unwrap()["agent_token"]
            .as_str()
            .unwrap()
            .to_string();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let t0 = now - 10_000;
        let mut samples = Vec::new();
        for i in 0..5 {
            samples.push(json!({"ts_ms": t0 + i * 1000, "name": "svc_error_ratio", "value": i as f64 / 10.0}));
            samples.push(json!({"ts_ms": t0 + i * 1000, "name": "load1", "value": 1.0}));
        }
        let r = client
            .post(format!("{url}/api/v1/agent/samples"))
            .bearer_auth(&agent)
            .json(&json!({"samples": samples}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let get = |q: String| {
            let client = client.clone();
            let url = url.clone();
            async move {
                let r = client
                    .get(format!("{url}/api/v1/hosts/{q}"))
                    .bearer_auth(OP)
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                (status, r.json::<Value>().await.unwrap())
            }
        };
        let (status, all) = get("web-01/samples?metric=svc_error_ratio".into()).await;
        assert_eq!(status, 200, "{all}");
        let values: Vec<f64> = all["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["value"].as_f64().unwrap())
            .collect();
        assert_eq!(values, vec![0.0, 0.1, 0.2, 0.3, 0.4]);
        assert_eq!(all["metric"], "svc_error_ratio");
        let (_, some) = get(format!(
            "web-01/samples?metric=svc_error_ratio&after_ms={}&before_ms={}&limit=2",
            t0,
            t0 + 3000
        ))
        .await;
        let ts: Vec<i64> = some["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["ts_ms"].as_i64().unwrap())
            .collect();
        assert_eq!(ts, vec![t0 + 1000, t0 + 2000]);
        for (q, status, says) in [
            ("web-01/samples", 400, "give `metric`"),
            ("web-01/samples?metric=", 400, "bad metric"),
            ("web-01/samples?metric=a%20b", 400, "bad metric"),
            ("web-01/samples?metric=x&limit=0", 400, "limit 0 is outside"),
            ("web-01/samples?metric=x&limit=10001", 400, "limit 10001 is outside"),
            ("web-01/samples?metric=x&after_ms=5&before_ms=5", 400, "is not before"),
            ("web-01/samples?metric=x&from=1", 400, "bad query string"),
            ("web-01/samples?metric=x&after_ms=soon", 400, "bad query string"),
            ("web-99/samples?metric=x", 404, "unknown host web-99"),
        ] {
            let (got, body) = get(q.into()).await;
            assert_eq!(got, status, "{q}: {body}");
            assert!(body["error"].as_str().unwrap().contains(says), "{q}: {body}");
        }
        let _ = stop.send(());
        task.await.unwrap();
    })
    .await;
}
