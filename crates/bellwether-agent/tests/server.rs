//! The agent against a real server over HTTP on loopback: enrolment, profile, samples, a
//! configuration change, and re-enrolment after the server revoked the agent's token.

use std::time::{Duration, Instant};

use bellwether_agent::host::HostCollector;
use bellwether_agent::{Agent, HttpTransport, Settings};
use bellwether_drift::synth::{write_host_root, Drift, HostSpec};
use bellwether_model::{HostName, HostProfile};
use bellwether_server::ServerConfig;
use bellwether_store::StoreConfig;

const OP: &str = "operator-token-agent-tests";
const ENROL: &str = "enrol-token-agent-tests";

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    async fn get(&self, path: &str, token: Option<&str>) -> (u16, String) {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    async fn profile(&self, host: &str) -> Option<HostProfile> {
        match self
            .get(&format!("/api/v1/hosts/{host}/profile"), Some(OP))
            .await
        {
            (200, body) => Some(serde_json::from_str(&body).unwrap()),
            _ => None,
        }
    }

    /// The value of an unlabelled counter in /metrics.
    async fn counter(&self, name: &str) -> f64 {
        let (_, text) = self.get("/metrics", None).await;
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|rest| rest.trim().parse().ok())
            })
            .unwrap_or(0.0)
    }
}

async fn eventually<T, Fut: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut f: impl FnMut() -> Fut,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_reports_to_a_real_server_and_survives_token_revocation() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new(StoreConfig::sqlite_in(tmp.path()), None);
    config.operator_token = Some(OP.into());
    config.enrol_token = Some(ENROL.into());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(bellwether_server::serve(config, listener, async {
        let _ = server_stopped.await;
    }));

    let root = tmp.path().join("root");
    let mut spec = HostSpec::generate(11, "agent-test-01", 50);
    write_host_root(&root, &spec).unwrap();
    let mut settings = Settings::new(HostName::new("agent-test-01").unwrap());
    settings.interval = Duration::from_millis(200);
    settings.labels.insert("role".into(), "web".into());
    let transport = HttpTransport::new(&base, ENROL, Duration::from_secs(5)).unwrap();
    let collector = HostCollector::new(root.clone(), vec![], Duration::from_millis(500));
    let (stop_agent, agent_stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(Agent::new(settings, transport, collector).run(async {
        let _ = agent_stopped.await;
    }));

    let client = Client {
        http: reqwest::Client::new(),
        base: base.clone(),
    };
    let first = eventually("the first profile", || client.profile("agent-test-01")).await;
    assert_eq!(first.labels.get("role").map(String::as_str), Some("web"));
    assert_eq!(first.packages.as_ref().map(|p| p.len()), Some(50));
    eventually("samples", || async {
        (client.counter("bellwether_samples_ingested_total").await >= 10.0).then_some(())
    })
    .await;

    // A configuration change reaches the server as a new profile.
    spec.apply(&Drift::SetPackage {
        name: "strace".into(),
        version: "6.1-0.1".into(),
    });
    write_host_root(&root, &spec).unwrap();
    eventually("the changed profile", || async {
        client.profile("agent-test-01").await.filter(|p| {
            p.packages
                .as_ref()
                .is_some_and(|p| p.contains_key("strace"))
        })
    })
    .await;

    // Someone enrols the same name: the agent's token is revoked, it must enrol again and go
    // on reporting.
    let r = client
        .http
        .post(format!("{base}/api/v1/enrol"))
        .bearer_auth(ENROL)
        .json(&serde_json::json!({"name": "agent-test-01", "labels": {"role": "web"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    spec.apply(&Drift::SetPackage {
        name: "htop".into(),
        version: "3.2.2-2".into(),
    });
    write_host_root(&root, &spec).unwrap();
    eventually("a profile sent after re-enrolment", || async {
        client
            .profile("agent-test-01")
            .await
            .filter(|p| p.packages.as_ref().is_some_and(|p| p.contains_key("htop")))
    })
    .await;

    stop_agent.send(()).unwrap();
    let stats = tokio::time::timeout(Duration::from_secs(10), agent)
        .await
        .expect("agent stops")
        .unwrap();
    assert_eq!(stats.enrolments, 2, "{stats:?}");
    assert!(stats.profiles_sent >= 3, "{stats:?}");
    assert_eq!(stats.buffered_at_exit, 0, "{stats:?}");
    assert_eq!(stats.dropped_total, 0, "{stats:?}");
    stop_server.send(()).unwrap();
    server.await.unwrap().unwrap();
}
