//! The dispatcher and the delivery against a real HTTP receiver (an axum server on a free port
//! that records every request and answers from a script), on both store backends. The
//! dispatcher's clock is a test clock the test moves, so backoff schedules are checked
//! without waiting; the POST timeout runs on tokio's paused clock.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use axum::http::HeaderMap;
use bellwether_store::testing::with_each_backend;
use bellwether_store::{EventKind, StoreConfig};

use super::*;

/// What the receiver answers to the next request.
#[derive(Debug, Clone)]
pub(crate) enum Reply {
    Status(u16),
    /// A status with `Retry-After: VALUE`.
    RetryAfter(u16, &'static str),
    /// Never answers.
    Hang,
}

/// A webhook receiver: records each request's path, headers and JSON body.
#[derive(Clone)]
pub(crate) struct Receiver {
    pub url: String,
    pub got: Arc<Mutex<Vec<(String, HeaderMap, Value)>>>,
    script: Arc<Mutex<VecDeque<Reply>>>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let got: Arc<Mutex<Vec<(String, HeaderMap, Value)>>> = Arc::default();
        let script: Arc<Mutex<VecDeque<Reply>>> = Arc::default();
        let (g, s) = (got.clone(), script.clone());
        let app = axum::Router::new().fallback(
            move |uri: axum::http::Uri, headers: HeaderMap, body: axum::body::Bytes| {
                let (g, s) = (g.clone(), s.clone());
                async move {
                    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    g.lock().unwrap().push((uri.to_string(), headers, json));
                    let reply = s.lock().unwrap().pop_front().unwrap_or(Reply::Status(200));
                    match reply {
                        Reply::Status(code) => axum::http::Response::builder()
                            .status(code)
                            .body(axum::body::Body::empty())
                            .unwrap(),
                        Reply::RetryAfter(code, v) => axum::http::Response::builder()
                            .status(code)
                            .header("retry-after", v)
                            .body(axum::body::Body::empty())
                            .unwrap(),
                        Reply::Hang => std::future::pending().await,
                    }
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver {
            url: format!("http://{addr}"),
            got,
            script,
        }
    }

    pub fn answer(&self, replies: &[Reply]) {
        self.script.lock().unwrap().extend(replies.iter().cloned());
    }

    pub fn count(&self) -> usize {
        self.got.lock().unwrap().len()
    }

    pub fn bodies(&self) -> Vec<Value> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|(_, _, b)| b.clone())
            .collect()
    }
}

fn rule(name: &str, url: &str, format: &str, events: &[&str]) -> Value {
    let r = AlertRule::new(
        name,
        url,
        format,
        events.iter().map(|s| s.to_string()).collect(),
        None,
    )
    .unwrap();
    serde_json::to_value(r).unwrap()
}

fn policy() -> AlertPolicy {
    AlertPolicy {
        attempts: 4,
        base: Duration::from_secs(1),
        max: Duration::from_secs(3),
        timeout: Duration::from_secs(30),
        poll: Duration::from_millis(50),
    }
}

async fn log(store: &Store) -> Vec<AttemptRecord> {
    let mut l = store
        .alert_attempts(&AttemptFilter::default(), 100)
        .await
        .unwrap();
    l.reverse();
    l
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_is_retried_with_backoff_and_retry_after_then_delivered_and_every_attempt_is_logged(
) {
    with_each_backend(|config: StoreConfig| async move {
        let store = Store::open(&config).await.unwrap();
        let rx = Receiver::start().await;
        let url = format!("{}/hooks/T0/B0/SECRET?token=abc", rx.url);
        let AlertRuleCreated::Created(r) = store
            .create_alert_rule("oncall", &rule("oncall", &url, "generic", &["enrolled"]), 1)
            .await
            .unwrap()
        else {
            panic!()
        };
        let clock_ms = Arc::new(AtomicI64::new(1_000_000));
        let c = clock_ms.clone();
        let clock = Clock::new(move || c.load(Ordering::SeqCst));
        let mut d = Dispatcher::new(store.clone(), policy(), clock);
        let web = bellwether_model::HostName::new("web-01").unwrap();
        store
            .record_event(
                EventKind::Enrolled,
                Some(&web),
                "Host web-01 enrolled.",
                &json!({"labels": {}}),
                999_000,
            )
            .await
            .unwrap();
        // An event no rule matches queues nothing.
        store
            .record_event(
                EventKind::BaselineCaptured,
                Some(&web),
                "b",
                &json!({}),
                999_001,
            )
            .await
            .unwrap();

        rx.answer(&[
            Reply::Status(500),
            Reply::RetryAfter(503, "7"),
            Reply::Status(204),
        ]);
        assert_eq!(d.pass().await.unwrap(), (1, 1));
        assert_eq!(rx.count(), 1);
        let l = log(&store).await;
        assert_eq!(l.len(), 1);
        assert_eq!(
            (l[0].attempt, l[0].status, l[0].outcome.as_str()),
            (1, Some(500), "retry")
        );
        assert_eq!(l[0].error.as_deref(), Some("HTTP 500"));
        assert_eq!(l[0].rule, "oncall");
        assert_eq!(l[0].event_kind, "enrolled");
        // The URL without its secrets.
        assert_eq!(l[0].url, format!("{}/hooks/…?…", rx.url));
        // Backoff after the first failure: base 1 s with equal jitter, within [0.5 s, 1 s].
        let next = l[0].next_attempt_ms.unwrap();
        assert!((1_000_500..=1_001_000).contains(&next), "{next}");

        // Not due yet: nothing is sent, nothing is queued again.
        clock_ms.store(next - 1, Ordering::SeqCst);
        assert_eq!(d.pass().await.unwrap(), (0, 0));
        assert_eq!(rx.count(), 1);

        // Due: a 503 with Retry-After: 7 waits exactly 7 s.
        clock_ms.store(next, Ordering::SeqCst);
        assert_eq!(d.pass().await.unwrap(), (0, 1));
        let l = log(&store).await;
        assert_eq!(
            (l[1].attempt, l[1].status, l[1].outcome.as_str()),
            (2, Some(503), "retry")
        );
        assert_eq!(l[1].next_attempt_ms, Some(next + 7_000));

        clock_ms.store(next + 7_000, Ordering::SeqCst);
        assert_eq!(d.pass().await.unwrap(), (0, 1));
        let l = log(&store).await;
        assert_eq!(
            (l[2].attempt, l[2].status, l[2].outcome.as_str()),
            (3, Some(204), "delivered")
        );
        assert!(l.iter().all(|a| a.delivery_state == "delivered"));
        assert_eq!(rx.count(), 3);
        // Every attempt posted the same generic body.
        let bodies = rx.bodies();
        assert!(bodies.iter().all(|b| *b == bodies[0]));
        let b = &bodies[0];
        assert_eq!(b["rule"], "oncall");
        assert_eq!(b["event"]["kind"], "enrolled");
        assert_eq!(b["event"]["host"], "web-01");
        assert_eq!(b["summary"], "enrolled on web-01: Host web-01 enrolled.");
        assert!(b["links"]["event"]
            .as_str()
            .unwrap()
            .starts_with("/api/v1/events?after="));
        let (path, headers, _) = rx.got.lock().unwrap()[0].clone();
        assert_eq!(path, "/hooks/T0/B0/SECRET?token=abc");
        assert_eq!(headers["content-type"], "application/json");

        // Delivered: never sent again, whatever the clock says.
        clock_ms.store(i64::MAX / 2, Ordering::SeqCst);
        assert_eq!(d.pass().await.unwrap(), (0, 0));

        // A restarted dispatcher resumes after the cursor: nothing is queued twice.
        let mut again = Dispatcher::new(store.clone(), policy(), Clock::new(|| 2_000_000));
        assert_eq!(again.pass().await.unwrap(), (0, 0));
        assert_eq!(rx.count(), 3);
        let _ = r;
        store.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4xx_fails_at_once_a_408_and_429_retry_and_the_last_attempt_gives_up() {
    with_each_backend(|config: StoreConfig| async move {
        let store = Store::open(&config).await.unwrap();
        let rx = Receiver::start().await;
        store
            .create_alert_rule(
                "a",
                &rule("a", &format!("{}/a", rx.url), "slack", &["enrolled"]),
                1,
            )
            .await
            .unwrap();
        let clock_ms = Arc::new(AtomicI64::new(10_000_000));
        let c = clock_ms.clone();
        let mut d = Dispatcher::new(
            store.clone(),
            policy(),
            Clock::new(move || c.load(Ordering::SeqCst)),
        );
        let h = bellwether_model::HostName::new("db-01").unwrap();

        // 404: failed at once.
        store
            .record_event(EventKind::Enrolled, Some(&h), "one", &json!({}), 1)
            .await
            .unwrap();
        rx.answer(&[Reply::Status(404)]);
        assert_eq!(d.pass().await.unwrap(), (1, 1));
        let l = log(&store).await;
        assert_eq!(
            (l[0].outcome.as_str(), l[0].status, l[0].next_attempt_ms),
            ("failed", Some(404), None)
        );
        assert!(
            l[0].error.as_deref().unwrap().contains("not retried"),
            "{:?}",
            l[0].error
        );

        // 408, 429, 500, 502: four attempts in all, then it gives up.
        store
            .record_event(EventKind::Enrolled, Some(&h), "two", &json!({}), 2)
            .await
            .unwrap();
        rx.answer(&[
            Reply::Status(408),
            Reply::Status(429),
            Reply::Status(500),
            Reply::Status(502),
        ]);
        for n in 1..=4 {
            let (_, started) = d.pass().await.unwrap();
            assert_eq!(started, 1, "attempt {n}");
            let last = log(&store).await.pop().unwrap();
            assert_eq!(last.attempt, n);
            if n < 4 {
                assert_eq!(last.outcome, "retry");
                // Backoff doubles up to the cap: ceilings 1 s, 2 s, 3 s, jittered into [½, 1].
                let ceiling = [1_000, 2_000, 3_000][n as usize - 1];
                let wait = last.next_attempt_ms.unwrap() - last.at_ms;
                assert!(
                    (ceiling / 2..=ceiling).contains(&wait),
                    "attempt {n} waits {wait}"
                );
                clock_ms.store(last.next_attempt_ms.unwrap(), Ordering::SeqCst);
            } else {
                assert_eq!(last.outcome, "failed");
                assert!(last
                    .error
                    .as_deref()
                    .unwrap()
                    .contains("gave up after 4 attempts"));
            }
        }
        assert_eq!(rx.count(), 5);
        // The Slack shape.
        let b = &rx.bodies()[1];
        assert_eq!(b["text"], "enrolled on db-01: two");
        assert_eq!(b["blocks"][0]["type"], "section");
        assert_eq!(b["blocks"][0]["text"]["text"], "*enrolled* on `db-01`\ntwo");
        assert!(b["blocks"][1]["elements"][0]["text"]
            .as_str()
            .unwrap()
            .contains("rule `a`"));
        store.close().await;
    })
    .await;
}

/// The cursor waits at a missing event id (a transaction that has not committed yet) and
/// queues the events after it meanwhile; the late event is queued when it appears, nothing is
/// queued twice, and a hole that never fills is passed after the grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cursor_waits_at_a_gap_and_queues_each_event_once() {
    let (config, dir) = bellwether_store::testing::fresh_sqlite();
    let store = Store::open(&config).await.unwrap();
    let rx = Receiver::start().await;
    store
        .create_alert_rule("all", &rule("all", &rx.url, "generic", &["*"]), 1)
        .await
        .unwrap();
    let clock_ms = Arc::new(AtomicI64::new(5_000_000));
    let c = clock_ms.clone();
    let mut d = Dispatcher::new(
        store.clone(),
        policy(),
        Clock::new(move || c.load(Ordering::SeqCst)),
    );
    let StoreConfig::Sqlite { path } = &config else {
        unreachable!()
    };
    let raw = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let insert = |id: i64| {
        let raw = raw.clone();
        async move {
            sqlx::query("INSERT INTO events (id, ts_ms, kind, host, reason, figures) VALUES ($1, 1, 'enrolled', NULL, 'r', '{}')")
                .bind(id)
                .execute(&raw)
                .await
                .unwrap();
        }
    };
    insert(1).await;
    insert(2).await;
    insert(4).await;
    assert_eq!(d.scan().await.unwrap(), 3);
    assert_eq!(store.alert_cursor().await.unwrap(), 2);
    insert(3).await; // commits late
    clock_ms.fetch_add(1, Ordering::SeqCst);
    assert_eq!(d.scan().await.unwrap(), 1);
    assert_eq!(store.alert_cursor().await.unwrap(), 4);
    insert(6).await; // 5 never commits
    assert_eq!(d.scan().await.unwrap(), 1);
    assert_eq!(store.alert_cursor().await.unwrap(), 4);
    clock_ms.fetch_add(GAP_GRACE_MS, Ordering::SeqCst);
    assert_eq!(d.scan().await.unwrap(), 0);
    assert_eq!(store.alert_cursor().await.unwrap(), 6);
    let (_, started) = d.pass().await.unwrap();
    assert_eq!(started, 5);
    let mut ids: Vec<i64> = rx
        .bodies()
        .iter()
        .map(|b| b["event"]["id"].as_i64().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, vec![1, 2, 3, 4, 6]);
    raw.close().await;
    store.close().await;
    bellwether_store::testing::cleanup(&config, Some(&dir)).await;
}

/// A receiver that never answers: the POST times out on tokio's (paused) clock and is retried;
/// a port nobody listens on is a connection error, retried; neither error quotes the URL.
#[tokio::test(start_paused = true)]
async fn a_timeout_and_a_refused_connection_are_retried_and_never_quote_the_url() {
    let rx = Receiver::start().await;
    rx.answer(&[Reply::Hang]);
    let client = http_client();
    let t = post_once(
        &client,
        &format!("{}/x?secret=1", rx.url),
        &json!({}),
        Duration::from_secs(10),
        0,
    )
    .await;
    assert_eq!(t.status, None);
    assert_eq!(t.error.as_deref(), Some("timed out after 10000 ms"));
    assert_eq!(t.verdict(), Verdict::Retry);

    let free = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let t = post_once(
        &client,
        &format!("http://127.0.0.1:{port}/x?secret=1"),
        &json!({}),
        Duration::from_secs(10),
        0,
    )
    .await;
    assert_eq!(t.verdict(), Verdict::Retry);
    let e = t.error.unwrap();
    assert!(
        e.starts_with("cannot connect") || e.starts_with("timed out"),
        "{e}"
    );
    assert!(!e.contains("secret"), "{e}");
}

#[test]
fn retry_after_is_read_as_seconds_or_an_http_date_and_capped() {
    assert_eq!(parse_retry_after("7", 0), Some(7_000));
    assert_eq!(parse_retry_after(" 120 ", 0), Some(120_000));
    assert_eq!(parse_retry_after("999999999", 0), Some(MAX_RETRY_AFTER_MS));
    // Sun, 06 Nov 1994 08:49:37 GMT is 784111777 s.
    assert_eq!(
        parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", 784_111_770_000),
        Some(7_000)
    );
    assert_eq!(
        parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", 784_111_800_000),
        Some(0)
    );
    assert_eq!(parse_retry_after("soon", 0), None);
    assert_eq!(parse_retry_after("-1", 0), None);
}

#[test]
fn verdicts_follow_the_status() {
    let v = |s: Option<u16>| {
        Tried {
            status: s,
            retry_after_ms: None,
            error: None,
        }
        .verdict()
    };
    assert_eq!(v(Some(200)), Verdict::Delivered);
    assert_eq!(v(Some(299)), Verdict::Delivered);
    assert_eq!(v(Some(301)), Verdict::Permanent);
    assert_eq!(v(Some(400)), Verdict::Permanent);
    assert_eq!(v(Some(410)), Verdict::Permanent);
    assert_eq!(v(Some(408)), Verdict::Retry);
    assert_eq!(v(Some(429)), Verdict::Retry);
    assert_eq!(v(Some(500)), Verdict::Retry);
    assert_eq!(v(Some(503)), Verdict::Retry);
    assert_eq!(v(None), Verdict::Retry);
}

#[test]
fn slack_text_is_escaped_and_the_generic_shape_links_the_task() {
    let ev = Event {
        id: 42,
        ts_ms: 1_700_000_000_123,
        kind: "rollout.host.rolled_back".into(),
        host: Some("web-03".into()),
        reason: "error ratio <0.3> & rising".into(),
        figures: json!({"rollout": "r-1"}),
        task: Some("r-1".into()),
    };
    let s = render(AlertFormat::Slack, "oncall", &ev);
    assert_eq!(
        s["text"],
        "rollout.host.rolled_back on web-03 (task r-1): error ratio &lt;0.3&gt; &amp; rising"
    );
    let ctx = s["blocks"][1]["elements"][0]["text"].as_str().unwrap();
    assert!(
        ctx.contains("event 42")
            && ctx.contains("task `r-1`")
            && ctx.contains("<!date^1700000000^"),
        "{ctx}"
    );
    let g = render(AlertFormat::Generic, "oncall", &ev);
    assert_eq!(g["links"]["task"], "/api/v1/rollouts/r-1");
    assert_eq!(g["links"]["task_events"], "/api/v1/events?task=r-1");
    assert_eq!(g["event"]["figures"]["rollout"], "r-1");
}

#[test]
fn a_configuration_change_alerts_from_its_yaml_or_its_json_form() {
    let yaml = "description: lower work_mem\ntargets:\n  - {host: db1, database: main}\nset:\n  work_mem: 8MB\nalerts:\n  - {name: dba, url: \"http://127.0.0.1:9/hook\", events: [\"config.*\"]}\n";
    let rules = plan_alerts(crate::config::task::CONFIG, "change.yaml", yaml);
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].name, "dba");
    assert!(rules[0].matches("config.reverted", Some("db1")));
    // A plan built from flags or a JSON body is kept in its JSON form.
    let plan = bellwether_engine::config::plan::parse_plan(yaml, "change.yaml").unwrap();
    let json = serde_json::to_string_pretty(&plan).unwrap();
    assert_eq!(
        plan_alerts(crate::config::task::CONFIG, "request.json", &json),
        rules
    );
    // Without alerts, or unreadable, a change has no rules of its own (the server's apply).
    let without = yaml.split("alerts:").next().unwrap();
    assert!(plan_alerts(crate::config::task::CONFIG, "change.yaml", without).is_empty());
    assert!(plan_alerts(crate::config::task::CONFIG, "x.yaml", "{not a plan").is_empty());
}
