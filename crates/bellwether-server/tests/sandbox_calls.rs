//! The client calls the sandbox and the quickstart use (`client/sandbox_calls.rs`), against a
//! server on a real loopback socket: `None` until a host has reported, typed answers after,
//! and the API's errors kept apart.

use std::collections::BTreeMap;

use bellwether_model::{HostName, HostProfile};
use bellwether_server::client::{Client, ClientError};
use bellwether_server::types::BaselineRequest;
use bellwether_server::ServerConfig;

const OP: &str = "operator-token-for-tests-0001";
const ENROL: &str = "enrol-token-for-tests-000001";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_has_no_profile_or_drift_until_it_reports_and_rollout_errors_are_the_apis() {
    let (store, _dir) = bellwether_store::testing::fresh_sqlite();
    let mut config = ServerConfig::new(store, None);
    config.operator_token = Some(OP.into());
    config.enrol_token = Some(ENROL.into());
    config.sample_max_age = std::time::Duration::MAX;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(bellwether_server::serve(config, listener, async {
        let _ = stop_rx.await;
    }));
    let client = Client::new(&format!("http://{addr}"), OP).unwrap();
    let web = HostName::new("web-01").unwrap();

    // Unknown host: no profile, no drift, and no error.
    assert_eq!(client.host_profile(&web).await.unwrap(), None);
    assert_eq!(client.host_drift_if_any(&web).await.unwrap(), None);

    // The agent enrols and reports its profile.
    let http = reqwest::Client::new();
    let enrolled: serde_json::Value = http
        .post(format!("http://{addr}/api/v1/enrol"))
        .bearer_auth(ENROL)
        .json(&serde_json::json!({"name": "web-01"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let agent = enrolled["agent_token"].as_str().unwrap();
    let profile = HostProfile {
        hostname: Some("web-01".into()),
        packages: Some(BTreeMap::from([(
            "nginx".to_string(),
            "1.22.1".to_string(),
        )])),
        ..HostProfile::default()
    };
    let r = http
        .post(format!("http://{addr}/api/v1/agent/profile"))
        .bearer_auth(agent)
        .json(&profile)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let got = client.host_profile(&web).await.unwrap().expect("reported");
    assert_eq!(got.packages, profile.packages);
    // Known, but no baseline yet: still no drift.
    assert_eq!(client.host_drift_if_any(&web).await.unwrap(), None);
    client
        .capture_baselines(&BaselineRequest {
            hosts: vec![web.clone()],
            all: false,
        })
        .await
        .unwrap();
    let drift = client
        .host_drift_if_any(&web)
        .await
        .unwrap()
        .expect("drift");
    assert_eq!(drift.overall.get(), 0.0);

    // Rollout calls: the API's errors come back as such, not as "not yet".
    match client.rollout_report("r-nope").await {
        Err(ClientError::Api { status: 404, .. }) => {}
        other => panic!("{other:?}"),
    }
    match client.resume_rollout("r-nope").await {
        Err(ClientError::Api { status: 404, .. }) => {}
        other => panic!("{other:?}"),
    }
    match client.start_rollout("name: [", Some("bad.yaml")).await {
        Err(ClientError::Api {
            status: 400,
            message,
            ..
        }) => assert!(message.contains("bad.yaml"), "{message}"),
        other => panic!("{other:?}"),
    }
    // A wrong token is refused, not taken for a host that has not reported.
    let stranger = Client::new(&format!("http://{addr}"), "not-the-token-0000000000").unwrap();
    assert!(matches!(
        stranger.host_profile(&web).await,
        Err(ClientError::Unauthorized { .. })
    ));

    stop_tx.send(()).unwrap();
    task.await.unwrap().unwrap();
}
