//! The alert delivery log's retention and the dispatcher's limits, against a real HTTP
//! receiver: settled deliveries beyond the newest `keep_last`, or older than `keep_for`, go
//! with their attempts; a pending one (due later, or in flight while the log is pruned) never
//! does, and its attempt is logged when it ends; the concurrency limit holds; bad settings are
//! refused naming the server flag and config key.

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::Router;
use bellwether_engine::alerts::AlertRule;
use bellwether_server::alerts::{AlertLimits, AlertPolicy, Clock, Dispatcher};
use bellwether_server::{Server, ServerConfig, ServerError};
use bellwether_store::testing::with_each_backend;
use bellwether_store::{AlertRuleCreated, AttemptFilter, EventKind, Store, StoreConfig};
use serde_json::json;

/// A receiver that answers 200, 500 on `/fail`, and on `/slow` holds each request until the
/// test opens the gate; it counts the requests it holds at once.
struct Receiver {
    url: String,
    gate: Arc<tokio::sync::Semaphore>,
    held: Arc<AtomicUsize>,
    most_held: Arc<AtomicUsize>,
    arrived: Arc<tokio::sync::Notify>,
}

impl Receiver {
    async fn start() -> Receiver {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let held = Arc::new(AtomicUsize::new(0));
        let most_held = Arc::new(AtomicUsize::new(0));
        let arrived = Arc::new(tokio::sync::Notify::new());
        let (g, h, m, a) = (
            gate.clone(),
            held.clone(),
            most_held.clone(),
            arrived.clone(),
        );
        let app = Router::new().fallback(move |uri: axum::http::Uri| {
            let (g, h, m, a) = (g.clone(), h.clone(), m.clone(), a.clone());
            async move {
                match uri.path() {
                    "/fail" => StatusCode::INTERNAL_SERVER_ERROR,
                    "/slow" => {
                        let now = h.fetch_add(1, Ordering::SeqCst) + 1;
                        m.fetch_max(now, Ordering::SeqCst);
                        a.notify_waiters();
                        g.acquire().await.unwrap().forget();
                        h.fetch_sub(1, Ordering::SeqCst);
                        StatusCode::OK
                    }
                    _ => StatusCode::OK,
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver {
            url: format!("http://{addr}"),
            gate,
            held,
            most_held,
            arrived,
        }
    }

    /// Waits until `n` requests are held at `/slow`.
    async fn wait_held(&self, n: usize) {
        loop {
            let arrived = self.arrived.notified();
            if self.held.load(Ordering::SeqCst) >= n {
                return;
            }
            arrived.await;
        }
    }
}

fn rule(name: &str, url: &str, events: &[&str]) -> serde_json::Value {
    let r = AlertRule::new(
        name,
        url,
        "generic",
        events.iter().map(|s| s.to_string()).collect(),
        None,
    )
    .unwrap();
    serde_json::to_value(r).unwrap()
}

fn policy() -> AlertPolicy {
    AlertPolicy {
        attempts: 3,
        base: Duration::from_secs(60),
        max: Duration::from_secs(60),
        timeout: Duration::from_secs(60),
        poll: Duration::from_millis(50),
    }
}

async fn enrolled(store: &Store, n: usize, at_ms: i64) {
    for i in 0..n {
        let h = bellwether_model::HostName::new(format!("web-{i:02}")).unwrap();
        store
            .record_event(EventKind::Enrolled, Some(&h), "enrolled", &json!({}), at_ms)
            .await
            .unwrap();
    }
}

/// `(delivery id, state)` of every delivery in the log, by id.
async fn deliveries(store: &Store) -> Vec<(i64, String)> {
    let mut seen = std::collections::BTreeMap::new();
    for a in store
        .alert_attempts(&AttemptFilter::default(), 10_000)
        .await
        .unwrap()
    {
        seen.insert(a.delivery, a.delivery_state);
    }
    seen.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_log_keeps_the_newest_and_the_recent_and_never_a_pending_delivery() {
    with_each_backend(|config: StoreConfig| async move {
        let store = Store::open(&config).await.unwrap();
        let rx = Receiver::start().await;
        let ok = format!("{}/ok", rx.url);
        let fail = format!("{}/fail", rx.url);
        let AlertRuleCreated::Created(_) = store
            .create_alert_rule("ok", &rule("ok", &ok, &["enrolled"]), 1)
            .await
            .unwrap()
        else {
            panic!()
        };
        let clock_ms = Arc::new(AtomicI64::new(10_000_000));
        let c = clock_ms.clone();
        let limits = AlertLimits {
            concurrency: 8,
            keep_for: Duration::from_secs(3600),
            keep_last: 3,
            prune_every: Duration::from_secs(60),
        };
        let mut d = Dispatcher::new(
            store.clone(),
            policy(),
            Clock::new(move || c.load(Ordering::SeqCst)),
        )
        .with_limits(limits.clone());

        // Five events, five deliveries, all delivered.
        enrolled(&store, 5, 9_999_000).await;
        assert_eq!(d.pass().await.unwrap(), (5, 5));
        // A second rule whose receiver fails: its deliveries stay pending (retry in 60 s).
        let AlertRuleCreated::Created(_) = store
            .create_alert_rule("fail", &rule("fail", &fail, &["baseline_captured"]), 2)
            .await
            .unwrap()
        else {
            panic!()
        };
        let h = bellwether_model::HostName::new("web-00").unwrap();
        store
            .record_event(
                EventKind::BaselineCaptured,
                Some(&h),
                "b",
                &json!({}),
                9_999_500,
            )
            .await
            .unwrap();
        assert_eq!(d.pass().await.unwrap(), (1, 1));
        let before = deliveries(&store).await;
        assert_eq!(before.len(), 6);
        let pending: Vec<i64> = before
            .iter()
            .filter(|(_, s)| s == "pending")
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(pending.len(), 1, "{before:?}");

        // By count: the newest three settled deliveries stay, the pending one too.
        assert_eq!(d.prune().await.unwrap(), 2);
        let after = deliveries(&store).await;
        let settled: Vec<i64> = before
            .iter()
            .filter(|(_, s)| s == "delivered")
            .map(|(id, _)| *id)
            .collect();
        let mut want: Vec<i64> = settled[2..].to_vec();
        want.extend(&pending);
        want.sort();
        assert_eq!(after.iter().map(|(id, _)| *id).collect::<Vec<_>>(), want);
        // Their attempts went with them.
        for id in &settled[..2] {
            assert!(store.alert_delivery(*id).await.unwrap().is_none());
            let log = store
                .alert_attempts(&AttemptFilter::default(), 10_000)
                .await
                .unwrap();
            assert!(log.iter().all(|a| a.delivery != *id));
        }
        // Nothing more to prune.
        assert_eq!(d.prune().await.unwrap(), 0);

        // By age: an hour and a minute later every settled delivery goes; the pending one,
        // which has failed once and waits for its retry, stays.
        clock_ms.fetch_add(3_660_000, Ordering::SeqCst);
        assert_eq!(d.prune().await.unwrap(), 3);
        assert_eq!(
            deliveries(&store)
                .await
                .iter()
                .map(|(id, _)| *id)
                .collect::<Vec<_>>(),
            pending
        );
        store.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pruning_while_deliveries_are_in_flight_loses_none_and_concurrency_holds() {
    with_each_backend(|config: StoreConfig| async move {
        let store = Store::open(&config).await.unwrap();
        let rx = Receiver::start().await;
        let slow = format!("{}/slow", rx.url);
        let AlertRuleCreated::Created(_) = store
            .create_alert_rule("slow", &rule("slow", &slow, &["enrolled"]), 1)
            .await
            .unwrap()
        else {
            panic!()
        };
        let clock_ms = Arc::new(AtomicI64::new(10_000_000));
        let c = clock_ms.clone();
        let mut d = Dispatcher::new(
            store.clone(),
            policy(),
            Clock::new(move || c.load(Ordering::SeqCst)),
        )
        .with_limits(AlertLimits {
            concurrency: 2,
            keep_for: Duration::from_secs(60),
            keep_last: 1,
            prune_every: Duration::from_secs(60),
        });
        enrolled(&store, 5, 9_999_000).await;
        assert_eq!(d.scan().await.unwrap(), 5);
        // Two at once, no more: the others wait for a free place.
        assert_eq!(d.start_due().await.unwrap(), 2);
        rx.wait_held(2).await;
        assert_eq!(d.start_due().await.unwrap(), 0);
        // The log is pruned with everything pending, two of them in flight: nothing goes, even
        // long after (keep_for and keep_last apply to settled deliveries only).
        clock_ms.fetch_add(86_400_000, Ordering::SeqCst);
        assert_eq!(d.prune().await.unwrap(), 0);
        // The held deliveries end; their attempts are logged.
        rx.gate.add_permits(2);
        d.settle().await;
        let log = store
            .alert_attempts(&AttemptFilter::default(), 100)
            .await
            .unwrap();
        assert_eq!(log.len(), 2, "{log:?}");
        assert!(
            log.iter().all(|a| a.outcome.as_str() == "delivered"),
            "{log:?}"
        );
        // The rest go two at a time.
        rx.gate.add_permits(3);
        while d.start_due().await.unwrap() > 0 {
            d.settle().await;
        }
        assert_eq!(rx.most_held.load(Ordering::SeqCst), 2);
        let log = store
            .alert_attempts(&AttemptFilter::default(), 100)
            .await
            .unwrap();
        assert_eq!(log.len(), 5);
        // Now settled: the newest is kept.
        assert_eq!(d.prune().await.unwrap(), 4);
        assert_eq!(deliveries(&store).await.len(), 1);
        store.close().await;
    })
    .await;
}

/// Sets one bad value in a server's configuration.
type Setter = Box<dyn Fn(&mut ServerConfig)>;

#[tokio::test]
async fn bad_alert_settings_are_refused_naming_the_flag_and_the_key() {
    let dir =
        std::env::temp_dir().join(bellwether_store::testing::unique_name("bw_alert_settings"));
    let cases: Vec<(Setter, &str)> = vec![
        (
            Box::new(|c: &mut ServerConfig| c.alerts.attempts = 0),
            "--alert-attempts (config key alert_attempts) is 0; it must be 1 to 100",
        ),
        (
            Box::new(|c: &mut ServerConfig| c.alerts.timeout = Duration::from_millis(5)),
            "--alert-timeout (config key alert_timeout) is 5ms; it must be 100ms to 10m",
        ),
        (
            Box::new(|c: &mut ServerConfig| {
                c.alerts.base = Duration::from_secs(600);
                c.alerts.max = Duration::from_secs(60);
            }),
            "--alert-backoff (config key alert_backoff) is 10m, longer than --alert-backoff-max (alert_backoff_max) 1m: the first wait cannot exceed the longest",
        ),
        (
            Box::new(|c: &mut ServerConfig| c.alert_limits.concurrency = 0),
            "--alert-concurrency (config key alert_concurrency) is 0; it must be 1 to 256",
        ),
        (
            Box::new(|c: &mut ServerConfig| c.alert_limits.keep_for = Duration::from_secs(1)),
            "--alert-log-keep-for (config key alert_log_keep_for) is 1s; it must be 1m to 3660d",
        ),
        (
            Box::new(|c: &mut ServerConfig| c.alert_limits.keep_last = 0),
            "--alert-log-keep-last (config key alert_log_keep_last) is 0; it must be 1 to 100000000",
        ),
    ];
    for (set, want) in cases {
        let mut c = ServerConfig::new(
            StoreConfig::Sqlite {
                path: dir.join("bellwether.db"),
            },
            None,
        );
        set(&mut c);
        match Server::open(c).await {
            Err(e @ ServerError::AlertSettings(_)) => assert_eq!(e.to_string(), want),
            Err(e) => panic!("{want}: another error: {e}"),
            Ok(_) => panic!("{want}: accepted"),
        }
    }
    // Refused before the store is opened: nothing was created.
    assert!(!dir.exists());
}
