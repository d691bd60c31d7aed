//! The rollout runner and the agent action API, driven in-process with simulated agents, every
//! test body run against SQLite and PostgreSQL.

mod support;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use axum::Router;
use bellwether_server::Server;
use bellwether_store::testing::with_each_backend;
use bellwether_store::StoreConfig;
use serde_json::{json, Value};
use support::{config, fleet, now_ms, send, ENROL, OP};

const PLAN: &str = r#"name: web-v2
update:
  name: websvc
  version: "2"
  apply:  { builtin: set_service_version, version: "2" }
  revert: { builtin: set_service_version, version: "1" }
targets:
  labels: { role: web }
risk:
  low: 0.3
  high: 0.7
  moderate_share: 0.25
  pilot: { min: 1, max: 2 }
  high_risk: defer
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

/// A simulated agent: reports healthy samples and runs every action it is sent (each id once),
/// until `stop`.
fn simulate(
    app: Router,
    token: String,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Vec<String>> {
    simulate_with(app, token, stop, false)
}

/// As [`simulate`]; a `faulty` host's error ratio jumps to 30 % once the update is applied and
/// drops back when it is reverted.
fn simulate_with(
    app: Router,
    token: String,
    stop: tokio::sync::watch::Receiver<bool>,
    faulty: bool,
) -> tokio::task::JoinHandle<Vec<String>> {
    simulate_full(app, token, stop, faulty, false)
}

/// As [`simulate_with`]; a `dies` agent stops (no samples, no polls) once it has applied.
fn simulate_full(
    app: Router,
    token: String,
    stop: tokio::sync::watch::Receiver<bool>,
    faulty: bool,
    dies: bool,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut ran: Vec<String> = Vec::new();
        let mut updated = false;
        while !(*stop.borrow() || (dies && updated)) {
            let t = now_ms();
            let ratio = if faulty && updated { 0.3 } else { 0.001 };
            let samples =
                json!({"samples": [{"ts_ms": t, "name": "svc_error_ratio", "value": ratio}]});
            let (s, _) = send(
                &app,
                Method::POST,
                "/api/v1/agent/samples",
                &token,
                Some(samples.to_string()),
            )
            .await;
            assert_eq!(s, StatusCode::ACCEPTED);
            let (s, v) = send(
                &app,
                Method::GET,
                "/api/v1/agent/actions?wait_ms=100",
                &token,
                None,
            )
            .await;
            assert_eq!(s, StatusCode::OK, "{v}");
            for a in v["actions"].as_array().unwrap() {
                let id = a["id"].as_str().unwrap().to_string();
                if !ran.contains(&id) {
                    ran.push(id.clone());
                    updated = a["kind"] == "apply";
                }
                let result = json!({"ok": true, "exit_code": 0, "error": null, "stdout_tail": "", "stderr_tail": "", "started_ms": t, "finished_ms": now_ms()});
                let (s, v) = send(
                    &app,
                    Method::POST,
                    &format!("/api/v1/agent/actions/{id}/result"),
                    &token,
                    Some(result.to_string()),
                )
                .await;
                assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
            }
        }
        ran
    })
}

/// Waits until the store holds at least `n` samples of every host: the pre-change history a
/// rollout seeds each host's baseline from when it starts (the plan's baseline is two
/// intervals; five samples are the history the test used to sleep 600 ms for).
async fn wait_for_samples(server: &Server, agents: &[(String, String)], n: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for (name, _) in agents {
        let host = bellwether_model::HostName::new(name).unwrap();
        loop {
            let have = server.store().count_samples(&host).await.unwrap();
            if have >= n {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} has {have} samples stored, not {n}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn wait_phase(app: &Router, id: &str, phase: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (s, v) = send(
            app,
            Method::GET,
            &format!("/api/v1/rollouts/{id}"),
            OP,
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        if v["state"] == phase {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "rollout {id} never reached {phase}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

macro_rules! rollout_test {
    ($name:ident, |$config:ident| $body:block) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $name() {
            with_each_backend(|$config: StoreConfig| async move $body).await;
        }
    };
}

rollout_test!(
    a_rollout_runs_to_completion_with_agents_and_records_outcomes,
    |store| {
        let server = Server::open(config(store)).await.unwrap();
        let app = server.router();
        let body = json!({"plan_yaml": PLAN, "file": "web.yaml"}).to_string();
        // No model yet: 409.
        let (s, v) = send(
            &app,
            Method::POST,
            "/api/v1/rollouts",
            OP,
            Some(body.clone()),
        )
        .await;
        assert_eq!(s, StatusCode::CONFLICT, "{v}");
        assert!(
            v["error"].as_str().unwrap().contains("no failure model"),
            "{v}"
        );
        let agents = fleet(&app, 4).await;
        // Bad plans: 400 with file:line:column.
        let bad =
            json!({"plan_yaml": PLAN.replace("bake: 300ms", "bake: soon"), "file": "web.yaml"})
                .to_string();
        let (s, v) = send(&app, Method::POST, "/api/v1/rollouts", OP, Some(bad)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(
            v["error"].as_str().unwrap().starts_with("web.yaml:16:"),
            "{v}"
        );
        let (s, v) = send(
            &app,
            Method::POST,
            "/api/v1/rollouts",
            OP,
            Some(json!({"plan": "x"}).to_string()),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        let (s, _) = send(
            &app,
            Method::POST,
            "/api/v1/rollouts",
            "nope-token-0000000000",
            Some(body.clone()),
        )
        .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);

        let (s, v) = send(
            &app,
            Method::POST,
            "/api/v1/rollouts",
            OP,
            Some(body.clone()),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let id = v["id"].as_str().unwrap().to_string();
        assert_eq!(v["hosts"], json!(4));
        // A second rollout over the same hosts: 409 naming the host and the rollout.
        let (s, v) = send(
            &app,
            Method::POST,
            "/api/v1/rollouts",
            OP,
            Some(body.clone()),
        )
        .await;
        assert_eq!(s, StatusCode::CONFLICT, "{v}");
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .contains(&format!("running rollout {id}")),
            "{v}"
        );
        // Agent API bad input.
        let (s, _) = send(&app, Method::GET, "/api/v1/agent/actions", OP, None).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        let (s, v) = send(
            &app,
            Method::POST,
            "/api/v1/agent/actions/00000000000000000000000000000000/result",
            &agents[0].1,
            Some(json!({"ok": true, "started_ms": 1, "finished_ms": 2}).to_string()),
        )
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
        // A row id is not an action id on the wire.
        let (s, v) = send(
            &app,
            Method::POST,
            "/api/v1/agent/actions/1/result",
            &agents[0].1,
            Some(json!({"ok": true, "started_ms": 1, "finished_ms": 2}).to_string()),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(
            v["error"].as_str().unwrap().contains("32 lower-case hex"),
            "{v}"
        );
        let (s, v) = send(
            &app,
            Method::POST,
            "/api/v1/agent/actions/1/result",
            &agents[0].1,
            Some(json!({"ok": "yes"}).to_string()),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(v["error"].as_str().unwrap().contains("`ok`"), "{v}");

        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let sims: Vec<_> = agents
            .iter()
            .map(|(_, t)| simulate(app.clone(), t.clone(), stop_rx.clone()))
            .collect();
        let done = wait_phase(&app, &id, "completed").await;
        stop_tx.send(true).unwrap();
        for s in sims {
            s.await.unwrap();
        }
        assert_eq!(done["model_version"], json!(1));
        let (s, report) = send(
            &app,
            Method::GET,
            &format!("/api/v1/rollouts/{id}/report"),
            OP,
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        let hosts = report["hosts"].as_array().unwrap();
        assert_eq!(hosts.len(), 4);
        assert!(hosts.iter().all(|h| h["action"] == "updated"), "{report}");
        assert!(hosts.iter().any(|h| h["wave"] == 0), "a pilot: {report}");
        // Every host was applied exactly once.
        let actions = server.store().rollout_actions(&id).await.unwrap();
        assert_eq!(actions.iter().filter(|a| a.kind == "apply").count(), 4);
        // Outcomes went to the training history with the pre-change feature vector.
        let outcomes = server.store().outcomes().await.unwrap();
        let mine: Vec<_> = outcomes.iter().filter(|o| o.deployment == id).collect();
        assert_eq!(mine.len(), 4, "{outcomes:?}");
        assert!(mine.iter().all(|o| !o.failed
            && o.source == "rollout"
            && o.features.contains_key("disk_free_pct")));
        // Commands on a finished rollout, unknown rollouts and commands.
        let (s, v) = send(
            &app,
            Method::POST,
            &format!("/api/v1/rollouts/{id}/pause"),
            OP,
            None,
        )
        .await;
        assert_eq!(s, StatusCode::CONFLICT, "{v}");
        let (s, _) = send(&app, Method::GET, "/api/v1/rollouts/r-nope", OP, None).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, v) = send(
            &app,
            Method::POST,
            &format!("/api/v1/rollouts/{id}/explode"),
            OP,
            None,
        )
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
        let (s, v) = send(&app, Method::GET, "/api/v1/rollouts", OP, None).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v[0]["id"], json!(id));
        server.store().close().await;
    }
);

rollout_test!(
    pause_resume_and_a_restarted_server_resumes_from_the_store,
    |store| {
        let server = Server::open(config(store.clone())).await.unwrap();
        let app = server.router();
        let agents = fleet(&app, 4).await;
        let body = json!({"plan_yaml": PLAN, "file": "web.yaml"}).to_string();
        let (s, v) = send(&app, Method::POST, "/api/v1/rollouts", OP, Some(body)).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let id = v["id"].as_str().unwrap().to_string();
        let (s, v) = send(
            &app,
            Method::POST,
            &format!("/api/v1/rollouts/{id}/pause"),
            OP,
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["state"], "paused");
        // The server goes away (its runner stops with the store) and a new one opens the store.
        server.store().close().await;
        drop(app);
        drop(server);
        let server = Server::open(config(store)).await.unwrap();
        let app = server.router();
        let (s, v) = send(
            &app,
            Method::GET,
            &format!("/api/v1/rollouts/{id}"),
            OP,
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["state"], "paused");
        let (s, v) = send(
            &app,
            Method::POST,
            &format!("/api/v1/rollouts/{id}/resume"),
            OP,
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let sims: Vec<_> = agents
            .iter()
            .map(|(_, t)| simulate(app.clone(), t.clone(), stop_rx.clone()))
            .collect();
        wait_phase(&app, &id, "completed").await;
        stop_tx.send(true).unwrap();
        for s in sims {
            s.await.unwrap();
        }
        // The rollout's events, from both servers' lives, are one task's log, oldest first.
        let (s, v) = send(
            &app,
            Method::GET,
            &format!("/api/v1/events?task={id}&after=0&limit=10000"),
            OP,
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let events = v.as_array().unwrap();
        let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds.first(), Some(&"rollout.rollout.started"), "{kinds:?}");
        assert!(kinds.contains(&"rollout.rollout.completed"), "{kinds:?}");
        assert!(kinds.contains(&"rollout.rollout.paused"), "{kinds:?}");
        for e in events {
            assert_eq!(
                (&e["task"], &e["figures"]["rollout"]),
                (&json!(id), &json!(id)),
                "{e}"
            );
        }
        let ids: Vec<i64> = events.iter().map(|e| e["id"].as_i64().unwrap()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        // Following from the middle gives the rest; another task's id gives nothing.
        let mid = ids[ids.len() / 2];
        let (_, rest) = send(
            &app,
            Method::GET,
            &format!("/api/v1/events?task={id}&after={mid}&limit=10000"),
            OP,
            None,
        )
        .await;
        assert_eq!(
            rest.as_array().unwrap().len(),
            ids.iter().filter(|i| **i > mid).count()
        );
        let (_, none) = send(
            &app,
            Method::GET,
            "/api/v1/events?task=r-0-000000",
            OP,
            None,
        )
        .await;
        assert_eq!(none, json!([]));
        let (s, v) = send(&app, Method::GET, "/api/v1/events?task=r%20x", OP, None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(v["error"].as_str().unwrap().contains("bad task"), "{v}");
        let actions = server.store().rollout_actions(&id).await.unwrap();
        let mut applied: Vec<&str> = actions
            .iter()
            .filter(|a| a.kind == "apply")
            .map(|a| a.host.as_str())
            .collect();
        applied.sort();
        assert_eq!(
            applied,
            vec!["web-00", "web-01", "web-02", "web-03"],
            "each host applied once"
        );
        server.store().close().await;
    }
);

rollout_test!(
    a_faulty_host_is_rolled_back_alone_and_its_failure_is_learnt,
    |store| {
        let server = Server::open(config(store)).await.unwrap();
        let app = server.router();
        let agents = fleet(&app, 4).await;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        // Samples flow before the rollout, so every host has a pre-change baseline.
        let sims: Vec<_> = agents
            .iter()
            .map(|(name, t)| {
                simulate_with(app.clone(), t.clone(), stop_rx.clone(), name == "web-02")
            })
            .collect();
        wait_for_samples(&server, &agents, 5).await;
        let body = json!({"plan_yaml": PLAN, "file": "web.yaml"}).to_string();
        let (s, v) = send(&app, Method::POST, "/api/v1/rollouts", OP, Some(body)).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let id = v["id"].as_str().unwrap().to_string();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let report = loop {
            let (_, r) = send(
                &app,
                Method::GET,
                &format!("/api/v1/rollouts/{id}/report"),
                OP,
                None,
            )
            .await;
            let settled = r["hosts"]
                .as_array()
                .unwrap()
                .iter()
                .all(|h| h["state"] != "applying" && h["state"] != "rolling_back");
            if r["state"] != "running" && settled {
                break r;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "rollout {id} did not settle: {r}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        stop_tx.send(true).unwrap();
        for s in sims {
            s.await.unwrap();
        }
        let hosts = report["hosts"].as_array().unwrap();
        let faulty = hosts.iter().find(|h| h["host"] == "web-02").unwrap();
        assert_eq!(faulty["action"], "rolled_back", "{report}");
        assert!(
            faulty["reason"]
                .as_str()
                .unwrap()
                .contains("svc_error_ratio"),
            "{faulty}"
        );
        for h in hosts.iter().filter(|h| h["host"] != "web-02") {
            assert_ne!(
                h["action"], "rolled_back",
                "only the faulty host is rolled back: {report}"
            );
        }
        let outcomes = server.store().outcomes().await.unwrap();
        let failed: Vec<_> = outcomes
            .iter()
            .filter(|o| o.deployment == id && o.failed)
            .map(|o| o.host.as_str())
            .collect();
        assert_eq!(failed, vec!["web-02"], "{outcomes:?}");
        server.store().close().await;
    }
);

rollout_test!(
    an_agent_that_goes_silent_pauses_the_rollout_on_no_data,
    |store| {
        let server = Server::open(config(store)).await.unwrap();
        let app = server.router();
        let agents = fleet(&app, 4).await;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        // Every agent dies right after its update: the pilot goes silent.
        let sims: Vec<_> = agents
            .iter()
            .map(|(_, t)| simulate_full(app.clone(), t.clone(), stop_rx.clone(), false, true))
            .collect();
        wait_for_samples(&server, &agents, 5).await;
        // The bake outlasts the no-data limit (a host silent for less than `no_data.after` still
        // counts as healthy, so a shorter bake could pass first).
        let plan = PLAN
            .replace("bake: 300ms", "bake: 3s")
            .replace("no_data: { after: 3s }", "no_data: { after: 1s }");
        let body = json!({"plan_yaml": plan, "file": "web.yaml"}).to_string();
        let (s, v) = send(&app, Method::POST, "/api/v1/rollouts", OP, Some(body)).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let id = v["id"].as_str().unwrap().to_string();
        let paused = wait_phase(&app, &id, "paused").await;
        stop_tx.send(true).unwrap();
        for s in sims {
            s.await.unwrap();
        }
        assert!(
            paused["pause_reason"]
                .as_str()
                .unwrap_or_default()
                .contains("no data")
                || paused["pause_reason"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("no sample"),
            "{paused}"
        );
        let (_, report) = send(
            &app,
            Method::GET,
            &format!("/api/v1/rollouts/{id}/report"),
            OP,
            None,
        )
        .await;
        // Never rolled back or promoted on no data.
        assert!(
            report["hosts"]
                .as_array()
                .unwrap()
                .iter()
                .all(|h| h["action"] != "rolled_back"),
            "{report}"
        );
        let events = server.store().events(None, 200).await.unwrap();
        assert!(
            events.iter().any(|e| e.kind == "rollout.host.no_data"),
            "{events:?}"
        );
        server.store().close().await;
    }
);

rollout_test!(
    an_operator_rolls_back_one_updated_host_and_is_refused_for_the_others,
    |store| {
        let server = Server::open(config(store)).await.unwrap();
        let app = server.router();
        let agents = fleet(&app, 4).await;
        let body = json!({"plan_yaml": PLAN, "file": "web.yaml"}).to_string();
        let (s, v) = send(&app, Method::POST, "/api/v1/rollouts", OP, Some(body)).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let id = v["id"].as_str().unwrap().to_string();
        // Paused at once: the pilot's applies still finish, no later wave starts.
        let (s, v) = send(
            &app,
            Method::POST,
            &format!("/api/v1/rollouts/{id}/pause"),
            OP,
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let sims: Vec<_> = agents
            .iter()
            .map(|(_, t)| simulate(app.clone(), t.clone(), stop_rx.clone()))
            .collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let (updated, waiting) = loop {
            let (_, v) = send(
                &app,
                Method::GET,
                &format!("/api/v1/rollouts/{id}"),
                OP,
                None,
            )
            .await;
            let hosts = v["hosts"].as_array().unwrap().clone();
            let pick = |states: &[&str]| {
                hosts
                    .iter()
                    .find(|h| states.contains(&h["state"].as_str().unwrap_or("")))
                    .map(|h| h["host"].as_str().unwrap().to_string())
            };
            if let (Some(u), Some(w)) = (pick(&["baking", "updated"]), pick(&["waiting"])) {
                break (u, w);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no pilot host was updated: {v}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let url = |h: &str| format!("/api/v1/rollouts/{id}/hosts/{h}/rollback");
        // Refusals: a host still waiting (409), a host not in the rollout (404), a bad name
        // (400), an unknown rollout (404), a token that may not act (403).
        let (s, v) = send(&app, Method::POST, &url(&waiting), OP, None).await;
        assert_eq!(s, StatusCode::CONFLICT, "{v}");
        assert!(v["error"].as_str().unwrap().contains("waiting"), "{v}");
        let (s, v) = send(&app, Method::POST, &url("web-nope"), OP, None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
        let (s, v) = send(&app, Method::POST, &url("bad%20name"), OP, None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        let (s, v) = send(
            &app,
            Method::POST,
            &format!("/api/v1/rollouts/r-nope/hosts/{updated}/rollback"),
            OP,
            None,
        )
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
        let (s, v) = send(&app, Method::POST, &url(&updated), ENROL, None).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{v}");

        let (s, v) = send(&app, Method::POST, &url(&updated), OP, None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let line = v["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["host"] == json!(updated))
            .cloned()
            .unwrap();
        assert!(
            ["rolling_back", "rolled_back"].contains(&line["state"].as_str().unwrap()),
            "{v}"
        );
        // The revert runs on the agent; the report then says why.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (_, r) = send(
                &app,
                Method::GET,
                &format!("/api/v1/rollouts/{id}/report"),
                OP,
                None,
            )
            .await;
            let h = r["hosts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|h| h["host"] == json!(updated))
                .cloned()
                .unwrap();
            if h["state"] == "rolled_back" {
                assert!(
                    h["reason"].as_str().unwrap().contains("by the operator"),
                    "{h}"
                );
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{updated} was never rolled back: {h}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Once rolled back it cannot be rolled back again.
        let (s, v) = send(&app, Method::POST, &url(&updated), OP, None).await;
        assert_eq!(s, StatusCode::CONFLICT, "{v}");
        stop_tx.send(true).unwrap();
        for s in sims {
            s.await.unwrap();
        }
        server.store().close().await;
    }
);
