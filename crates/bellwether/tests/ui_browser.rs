//! The dashboard in a real browser: headless Debian Chromium (through chromedriver and
//! WebDriver) against a real server and sandbox fleet (`bellwether sandbox up`: server,
//! services and agents as processes). The fleet page renders the hosts with their drift and the
//! risk of an update; the rollouts page gets a rollout started from the CLI without a reload
//! (the server's event stream), an operator's pause takes effect, a viewer's resume is refused
//! with the API's 403 shown in the page, and a failing host's reason and figures appear live.
//!
//! Screenshots of both pages are saved in the test's temporary directory, or in the directory
//! `BELLWETHER_UI_SCREENSHOTS` names (docs/ keeps them: `docs/dashboard-*.png`).

mod support;
mod ui_support;

use std::path::Path;

use serde_json::{json, Value};
use support::*;
use ui_support::{viewer_refused_operator_acts, Act, Browser};

/// Four web hosts and a database: version 2 of the web service breaks on a nearly full disk,
/// which the history has never seen (so that host is not held back and fails in its wave), and
/// on libssl 1.1, which the history shows (so that host is high risk and held back).
const SCENARIO: &str = r#"
seed: 4
groups:
  - { name: web, count: 3, role: web, packages: { libssl3: "3.0.11-1" }, disk_free_pct: 45 }
  - { name: web-old, count: 1, role: web, packages: { libssl1.1: "1.1.1n-0" }, disk_free_pct: 40 }
  - { name: web-full, count: 1, role: web, packages: { libssl3: "3.0.11-1" }, disk_free_pct: 6 }
  - { name: db, count: 1, role: db, disk_free_pct: 50 }
faults:
  - name: libssl 1.1 breaks version 2
    when: { version: "2", package: { libssl1.1: "*" } }
    effect: { error_rate: 0.3 }
  - name: version 2 fails on a full disk
    when: { version: "2", disk_free_below_pct: 10 }
    effect: { error_rate: 0.5 }
    onset: 4s
    in_history: false
history: { deployments: 400, seed: 2 }
"#;

/// Pilot of one host, then every other web host; a long bake so the test can pause it, and a
/// promote to move on.
const PLAN: &str = r#"name: web-v2
update:
  name: websvc
  version: "2"
  apply:  { builtin: set_service_version, version: "2" }
  revert: { builtin: set_service_version, version: "1" }
targets:
  labels: { role: web }
risk:
  low: 0.2
  high: 0.5
  moderate_share: 0.25
  pilot: { min: 1, max: 1 }
  high_risk: defer
waves: { fixed: [100] }
bake: 120s
analysis:
  interval: 1s
  baseline: 6s
  metrics:
    - { name: svc_error_ratio, direction: increase, threshold_pct: 50, for: 2s, floor: 0.02 }
  judge: { enabled: false }
no_data: { after: 20s }
"#;

async fn get(url: &str, token: &str, path: &str) -> Value {
    let r = reqwest::Client::new()
        .get(format!("{url}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "GET {path}: {}", r.status());
    r.json().await.unwrap()
}

fn screenshot_dir(tmp: &Path) -> std::path::PathBuf {
    match std::env::var_os("BELLWETHER_UI_SCREENSHOTS") {
        Some(d) => std::path::PathBuf::from(d),
        None => tmp.to_path_buf(),
    }
}

fn assert_png(path: &Path) {
    let bytes = std::fs::read(path).unwrap();
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 1000,
        "{} is not a PNG screenshot",
        path.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_fleet_and_a_live_rollout_and_only_an_operator_acts() {
    // The browser first: a machine without chromedriver fails here, saying how to install it.
    let browser = Browser::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sbx");
    let _down = Down(&dir);
    let scenario = tmp.path().join("scenario.yaml");
    std::fs::write(&scenario, SCENARIO).unwrap();
    let up = tokio::task::spawn_blocking({
        let (scenario, dir) = (scenario.clone(), dir.clone());
        move || {
            run(&[
                "sandbox",
                "up",
                "--scenario",
                scenario.to_str().unwrap(),
                "--dir",
                dir.to_str().unwrap(),
                "--interval",
                "300ms",
            ])
        }
    })
    .await
    .unwrap();
    assert_ok("sandbox up", &up);
    let (url, op) = sandbox_server_env(&dir);
    let admin = std::fs::read_to_string(dir.join("server").join("admin.token")).unwrap();
    let made = reqwest::Client::new()
        .post(format!("{url}/api/v1/tokens"))
        .bearer_auth(admin.trim())
        .json(&json!({"role": "viewer", "name": "browser test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(made.status(), 201);
    let viewer = made.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let hosts: Vec<String> = get(&url, &op, "/api/v1/hosts")
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(hosts.len(), 6, "{hosts:?}");
    let shots = screenshot_dir(tmp.path());

    // ---- the fleet page -------------------------------------------------------------------
    browser.sign_in(&url, &op, "operator").await;
    browser.css("[data-test=page-fleet]").await;
    for h in &hosts {
        browser
            .css(&format!("[data-test=host-row][data-host=\"{h}\"]"))
            .await;
    }
    // Baselines for every host, then drift on one: its row gets the finding live (the page
    // refreshes on the drift_recomputed event, no reload).
    let captured = reqwest::Client::new()
        .post(format!("{url}/api/v1/baselines"))
        .bearer_auth(&op)
        .json(&json!({"all": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(captured.status(), 200);
    let drift = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || {
            run(&[
                "sandbox",
                "drift",
                "--dir",
                dir.to_str().unwrap(),
                "--host",
                "web-03",
                "--kind",
                "package",
            ])
        }
    })
    .await
    .unwrap();
    assert_ok("sandbox drift", &drift);
    browser
        .text(
            "[data-test=host-row][data-host=\"web-03\"] [data-test=findings]",
            "configuration: package:nginx",
        )
        .await;
    // The label filter narrows the table to the hosts with that label.
    browser
        .css("[data-test=label-filter] option[value=\"role=db\"]")
        .await;
    browser.select("[data-test=label-filter]", "role=db").await;
    browser.text("h2", "Hosts (1)").await;
    browser.select("[data-test=label-filter]", "").await;
    browser
        .text("h2", &format!("Hosts ({})", hosts.len()))
        .await;
    // The risk of an update: a distribution over every host, and each host's probability.
    browser
        .css("[data-test=risk-update]")
        .await
        .send_keys("websvc")
        .await
        .unwrap();
    browser
        .css("[data-test=risk-version]")
        .await
        .send_keys("2")
        .await
        .unwrap();
    browser.click("[data-test=risk-submit]").await;
    browser.css("svg[data-test=risk-histogram]").await;
    let counted = browser
        .js("return [...document.querySelectorAll('[data-test=risk-histogram] rect')].reduce((n, r) => n + Number(r.dataset.count), 0);")
        .await;
    assert_eq!(
        counted,
        json!(hosts.len()),
        "the histogram counts every host"
    );
    let risk = get(&url, &op, "/api/v1/risk?update=websvc&version=2").await;
    let old = risk["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host"].as_str().unwrap().starts_with("web-old"))
        .unwrap();
    let shown = browser
        .text(
            &format!(
                "[data-test=host-row][data-host=\"{}\"] [data-test=host-risk]",
                old["host"].as_str().unwrap()
            ),
            "%",
        )
        .await;
    assert!(shown.ends_with('%') && shown != "—", "{shown}");
    // One host's drift over time, from its drift_recomputed events.
    let first = "web-03";
    browser
        .click(&format!("[data-test=host-row][data-host=\"{first}\"] a"))
        .await;
    browser
        .text("[data-test=host-card]", &format!("{first}: drift"))
        .await;
    browser.css("[data-test=drift-history]").await;
    browser.screenshot(&shots.join("dashboard-fleet.png")).await;
    assert_png(&shots.join("dashboard-fleet.png"));

    // ---- a rollout, live ------------------------------------------------------------------
    browser.route("#/rollouts").await;
    browser.css("[data-test=rollouts-empty]").await;
    // A reload would lose this: it shows at the end that every change came over the stream.
    browser
        .js("window.__sameDocument = 'yes'; return null;")
        .await;
    let plan = tmp.path().join("web-v2.yaml");
    std::fs::write(&plan, PLAN).unwrap();
    let id = tokio::task::spawn_blocking({
        let (dir, plan) = (dir.clone(), plan.clone());
        move || rollout_start(&dir, &plan)
    })
    .await
    .unwrap();
    browser
        .css(&format!("[data-test=rollout-row][data-id=\"{id}\"]"))
        .await;
    browser
        .click(&format!("[data-test=rollout-row][data-id=\"{id}\"] a"))
        .await;
    browser.text("[data-test=rollout-state]", "running").await;
    browser
        .css("[data-test=timeline-event][data-kind=\"rollout.pilot.selected\"]")
        .await;
    // The pilot and why: the pilot.selected event's reason and figures.
    browser.css("[data-test=pilot] .figures").await;

    // The operator pauses: the page and the API say paused.
    browser.click("[data-test=pause]").await;
    browser.text("[data-test=rollout-state]", "paused").await;
    let status = get(&url, &op, &format!("/api/v1/rollouts/{id}")).await;
    assert_eq!(status["state"], "paused", "{status}");
    browser
        .css("[data-test=timeline-event][data-kind=\"rollout.rollout.paused\"]")
        .await;

    // A viewer sees the rollout, and the API's refusal when it tries to resume it.
    browser.sign_out().await;
    browser.sign_in_here(&viewer, "viewer").await;
    browser.text("[data-test=rollout-state]", "paused").await;
    browser.click("[data-test=resume]").await;
    let refused = browser.text("[data-test=refused]", "403").await;
    assert!(
        refused.contains("a viewer token may not POST /api/v1/rollouts/{id}/{command}"),
        "{refused}"
    );
    let status = get(&url, &op, &format!("/api/v1/rollouts/{id}")).await;
    assert_eq!(
        status["state"], "paused",
        "the viewer's resume changed nothing: {status}"
    );

    // The operator resumes and promotes the pilot's wave: the next wave's failing host shows
    // up live with its reason and figures.
    browser.sign_out().await;
    browser.sign_in_here(&op, "operator").await;
    browser.click("[data-test=resume]").await;
    browser
        .css("[data-test=timeline-event][data-kind=\"rollout.rollout.resumed\"]")
        .await;
    browser.click("[data-test=promote]").await;
    browser
        .css("[data-test=timeline-event][data-kind=\"rollout.rollout.promote_requested\"]")
        .await;
    browser.text("[data-test=failure]", "web-full").await;
    browser
        .text(
            "[data-test=failure] [data-test=failed-metric]",
            "svc_error_ratio",
        )
        .await;
    // The failed metric against its band, drawn from the host's samples.
    browser
        .css("[data-test=failure] svg[data-test=metric-chart]")
        .await;
    // Once rolled back, the page's reason is the report's.
    let failure = browser.text("[data-test=failure]", "rolled back").await;
    let report = get(&url, &op, &format!("/api/v1/rollouts/{id}/report")).await;
    let failed = report["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host"].as_str().unwrap().starts_with("web-full"))
        .unwrap();
    assert!(
        failure.contains(failed["reason"].as_str().unwrap()),
        "the page shows the report's reason {}: {failure}",
        failed["reason"]
    );

    // ---- one host rolled back by hand ---------------------------------------------------
    // A host the rollout updated and has not failed: its row has Roll back, which asks for a
    // confirmation. A viewer (in a browser of its own) accepts it and sees the API's refusal,
    // and the host is untouched; the operator's rolls the host back, live on the page and in
    // the API.
    let status = get(&url, &op, &format!("/api/v1/rollouts/{id}")).await;
    let state_of = |status: &Value, host: &str| {
        status["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["host"] == host)
            .map(|h| h["state"].as_str().unwrap().to_string())
            .unwrap()
    };
    let host = ["baking", "updated"]
        .iter()
        .find_map(|want| {
            status["hosts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|h| h["state"] == *want)
        })
        .unwrap_or_else(|| panic!("no host to roll back: {status}"))["host"]
        .as_str()
        .unwrap()
        .to_string();
    let before = state_of(&status, &host);
    let button = format!("[data-test=report-host][data-host=\"{host}\"] [data-test=rollback-host]");
    let rollout_route = format!("#/rollouts/{id}");
    let viewing = Browser::start().await;
    viewing.sign_in(&url, &viewer, "viewer").await;
    let acted = viewer_refused_operator_acts(
        &viewing,
        &browser,
        &Act {
            route: &rollout_route,
            button: &button,
            confirm: true,
            refused: "POST /api/v1/rollouts/{id}/hosts/{host}/rollback",
        },
        async |_| {
            let status = get(&url, &op, &format!("/api/v1/rollouts/{id}")).await;
            assert_eq!(
                state_of(&status, &host),
                before,
                "the viewer's rollback changed {host}: {status}"
            );
        },
    )
    .await;
    for dialog in [&acted.viewer_dialog, &acted.operator_dialog] {
        assert!(
            dialog.contains(&format!("Roll back {host} now?")),
            "the confirmation names the host: {dialog}"
        );
    }
    browser
        .css(&format!(
            "[data-test=host-state][data-host=\"{host}\"][data-state=rolled_back]"
        ))
        .await;
    browser
        .text(
            &format!("[data-test=report-host][data-host=\"{host}\"]"),
            "rolled back",
        )
        .await;
    let status = get(&url, &op, &format!("/api/v1/rollouts/{id}")).await;
    assert_eq!(state_of(&status, &host), "rolled_back", "{status}");
    assert!(
        browser.all(&button).await.is_empty(),
        "a rolled-back host has no Roll back button"
    );
    viewing.close().await;

    assert_eq!(
        browser.js("return window.__sameDocument;").await,
        json!("yes"),
        "the page was reloaded"
    );
    browser.js("window.scrollTo(0, 0); return null;").await;
    browser
        .screenshot(&shots.join("dashboard-rollout.png"))
        .await;
    assert_png(&shots.join("dashboard-rollout.png"));
    browser.close().await;
}
