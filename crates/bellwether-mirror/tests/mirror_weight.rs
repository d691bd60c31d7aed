//! Mirrors follow the weight, on real parts: a real Redis primary behind the real proxy, the
//! engine stepped by the `LocalRunner` with the local process driver. With no traffic the
//! dependency weighs too little for a mirror; load through the proxy raises the request rate
//! the proxy measures, the weight rises and a real replica is provisioned; the load stops, the
//! rate decays, the weight falls and the replica is retired (process gone, directory removed).
//!
//! The policy makes the thresholds reachable by a test's load: `min_mirrors` 0, `max_mirrors`
//! 1, no mirror cost, hysteresis 0.2, so the engine wants a mirror once the smoothed rate
//! passes about 63 requests/s and lets it go below about 22 (docs/mirror-engine.md: weight =
//! 0.25 + 0.75 × (1 − exp(−rps/100)) for a critical dependency of impact 1). The rate is
//! smoothed with the policy's `rate_smoothing`, 5 s here instead of the default 60 s (five
//! health intervals: still a smoothed rate, the same rise and fall on a shorter time scale), so
//! the fall takes some 30 s after the load stops rather than five minutes.

#[path = "../examples/support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bellwether_engine::mirror::{Event, InstanceState, Role, Status};
use bellwether_mirror::local::{LocalRunner, RunnerOptions};
use bellwether_mirror::resp::Conn;
use bellwether_mirror::testing::TestRedis;
use bellwether_mirror::{DepKind, LocalProcess};

fn live_mirrors(s: &Status) -> Vec<&bellwether_engine::mirror::InstanceStatus> {
    s.instances
        .iter()
        .filter(|i| i.role == Role::Mirror && i.state != InstanceState::Retired)
        .collect()
}

fn position(events: &[Event], pred: impl Fn(&Event) -> bool) -> Option<usize> {
    events.iter().position(pred)
}

fn describe(events: &[Event]) -> String {
    events
        .iter()
        .map(|e| format!("{}: {}", e.name, e.reason))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrors_are_provisioned_as_the_weight_rises_and_retired_as_it_falls() {
    let primary = TestRedis::start();
    let endpoint = primary.endpoint();
    let proxy = support::start_proxy(DepKind::Redis, &endpoint)
        .await
        .expect("the proxy starts");
    let spec: bellwether_model::mirror::DependencySpec =
        serde_json::from_value(serde_json::json!({
            "name": "weighted", "kind": "redis", "primary": endpoint,
            "tier": "critical", "impact": 1.0, "mirror_cost": 0.0,
            "policy": {
                "min_mirrors": 0, "max_mirrors": 1, "hysteresis": 0.2,
                "mode": "active-passive", "health_interval": "1s",
                "failback_after": "2s",
                // This test is about the count of mirrors, not switches: on a loaded
                // machine a check of 20 ms against a 1 ms baseline halves the health
                // (docs/mirror-engine.md), which the default threshold (0.5) switches on.
                "switch_below": 0.05, "min_switch_gap": "1d",
                "rate_smoothing": "5s",
            }
        }))
        .expect("a valid spec");
    let work = tempfile::tempdir().expect("a temporary directory");
    // Dropped before `work`: no mirror outlives the test, even a failing one.
    let _cleanup = support::KillUnder(work.path().to_path_buf());
    let provisioner = Arc::new(LocalProcess::new(work.path().join("mirrors")));
    let runner = LocalRunner::start(
        spec.clone(),
        provisioner.clone(),
        proxy.router.clone(),
        RunnerOptions::for_spec(&spec),
    )
    .expect("the runner starts");

    // No traffic: the engine has scored the primary and wants no mirror.
    let (st, ok) = runner
        .wait_for(Duration::from_secs(60), |s| s.health.is_some())
        .await;
    let st = st.expect("a status");
    assert!(
        ok,
        "no observation within 60 s: {}",
        describe(&runner.events())
    );
    assert_eq!(st.target_mirrors, 0, "{st:?}");
    assert!(st.target_raw < 0.6, "{st:?}");
    assert!(live_mirrors(&st).is_empty(), "{st:?}");

    // Load through the proxy: the weight rises, a mirror is made and gets ready.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for c in 0..4 {
        let (listen, stop, served) = (proxy.listen.clone(), stop.clone(), served.clone());
        clients.push(tokio::spawn(async move {
            let mut conn = Conn::connect(&listen, Duration::from_secs(5))
                .await
                .expect("a client connects through the proxy");
            let key = format!("weight:{c}");
            while !stop.load(Ordering::Relaxed) {
                conn.cmd_within(&["SET", key.as_str(), "v"], Duration::from_secs(5))
                    .await
                    .expect("the proxy answers");
                served.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let (st, ok) = runner
        .wait_for(Duration::from_secs(180), |s| {
            live_mirrors(s)
                .iter()
                .any(|i| i.state == InstanceState::Ready)
        })
        .await;
    let st = st.expect("a status");
    assert!(
        ok,
        "no ready mirror within 180 s under load ({} requests served): {}",
        served.load(Ordering::Relaxed),
        describe(&runner.events())
    );
    assert_eq!(st.target_mirrors, 1, "{st:?}");
    let mirror = live_mirrors(&st)[0].clone();
    let mirror_ep = mirror
        .endpoint
        .clone()
        .expect("a ready mirror has an endpoint");
    let probed = bellwether_mirror::probe(DepKind::Redis, &mirror_ep, Duration::from_secs(2))
        .await
        .expect("the mirror answers");
    assert_eq!(
        probed.role,
        Some(bellwether_mirror::Role::Replica),
        "{probed:?}"
    );
    assert_eq!(provisioner.list().expect("the records").len(), 1);
    let events = runner.events();
    let rose = position(&events, |e| {
        e.name == "target_changed" && e.figures["from"] == 0 && e.figures["to"] == 1
    })
    .unwrap_or_else(|| panic!("no rise of the target: {}", describe(&events)));
    assert!(
        events[rose].figures["requests_per_s"]
            .as_f64()
            .unwrap_or(0.0)
            > 20.0,
        "the rise came from the measured traffic: {:?}",
        events[rose]
    );
    let requested = position(&events, |e| e.name == "provision_requested")
        .unwrap_or_else(|| panic!("no provisioning: {}", describe(&events)));
    assert!(rose < requested, "{}", describe(&events));

    // The load stops: the smoothed rate decays, the weight falls, the mirror is retired.
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("a client ends cleanly");
    }
    let (st, ok) = runner
        .wait_for(Duration::from_secs(600), |s| {
            // Retired (or, if the engine forgets retired instances, gone), and no other
            // mirror in its place.
            s.target_mirrors == 0
                && s.instances
                    .iter()
                    .all(|i| i.role != Role::Mirror || i.state == InstanceState::Retired)
        })
        .await;
    let st = st.expect("a status");
    assert!(
        ok,
        "the mirror was not retired within 600 s of the load stopping: {st:?}\n{}",
        describe(&runner.events())
    );
    assert!(st.history.is_empty(), "no switch: {:?}", st.history);
    let events = runner.events();
    let fell = position(&events, |e| {
        e.name == "target_changed" && e.figures["from"] == 1 && e.figures["to"] == 0
    })
    .unwrap_or_else(|| panic!("no fall of the target: {}", describe(&events)));
    let retire = position(&events, |e| e.name == "retire_requested")
        .unwrap_or_else(|| panic!("no retirement: {}", describe(&events)));
    let retired = position(&events, |e| e.name == "retired")
        .unwrap_or_else(|| panic!("no retirement: {}", describe(&events)));
    assert!(
        requested < fell && fell < retire && retire < retired,
        "{}",
        describe(&events)
    );
    assert!(
        events[fell].figures["weight"].as_f64().unwrap_or(1.0)
            < events[rose].figures["weight"].as_f64().unwrap_or(0.0),
        "{:?} then {:?}",
        events[rose],
        events[fell]
    );
    // Really gone: no record, no directory, nothing answering at its address.
    assert!(provisioner.list().expect("the records").is_empty());
    assert!(!work.path().join("mirrors").join(&mirror.id).exists());
    let gone = bellwether_mirror::probe(DepKind::Redis, &mirror_ep, Duration::from_secs(1))
        .await
        .map(|s| s.reachable)
        .unwrap_or(false);
    assert!(!gone, "the retired mirror at {mirror_ep} still answers");

    runner.stop(true).await;
    proxy.handle.shutdown().await;
}
