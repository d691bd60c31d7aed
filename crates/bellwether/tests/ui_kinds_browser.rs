//! The dashboard's per-kind pages (patches, the proxy's connection registry, the config graph,
//! dependencies, shadows) in a real headless Chromium, against real processes: `bellwether
//! server`, two PostgreSQL clusters with a long-running `bellwether proxy` in front of them, the
//! real agent of the database host (process built-ins, `--database` reporting `pg_settings`)
//! and a second real agent holding a directory shadow. Every record is made the way an
//! operator makes it (the API, psql on the instance); the browser only reads and clicks.
//!
//! Each page renders the real records, changes without a reload when an event concerns it (a
//! setting changed with `ALTER SYSTEM`, a dependency declared, a point taken, the patch moving
//! through its stages), an operator's action takes effect and a viewer's is refused with the
//! API's 403 shown on the page.
//!
//! With `BELLWETHER_UI_SCREENSHOTS=DIR` the test also saves the pages as PNG files there (the
//! pictures in docs/dashboard.md are made that way).

mod patch_support;
mod ui_support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bellwether_mirror::testing::TestRedis;
use fantoccini::Locator;
use patch_support::pgsupport::free_port;
use patch_support::*;
use serde_json::{json, Value};
use ui_support::{css_to_xpath, viewer_refused_operator_acts, Act, Browser, WAIT};

// ---------------------------------------------------------------------------------------
// The browser: ui-core's harness (tests/ui_support), one headless Chromium per role.

/// A signed-in dashboard.
struct Page {
    b: Browser,
}

impl Page {
    async fn sign_in(base: &str, token: &str, role: &str) -> Page {
        let b = Browser::start().await;
        b.sign_in(base, token, role).await;
        Page { b }
    }

    /// Navigates inside the app (no reload), as a click on a link does.
    async fn route(&self, hash: &str) {
        self.b.route(hash).await;
    }

    async fn wait_css(&self, css: &str) -> fantoccini::elements::Element {
        self.b.css(css).await
    }

    /// Waits for an element matching `css` whose text contains `text`.
    async fn wait_text(&self, css: &str, text: &str) -> String {
        self.b.text(css, text).await
    }

    /// Waits until `css` matches at least `n` elements (a WebDriver wait on the n-th).
    async fn wait_count(&self, css: &str, n: usize) {
        let xpath = format!("({})[{n}]", css_to_xpath(css));
        if let Err(e) = self
            .b
            .client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::XPath(&xpath))
            .await
        {
            panic!(
                "{css} never matched {n} elements ({e}); the page shows:\n{}",
                self.b.page_text().await
            );
        }
    }

    /// Clicks the element matching `css` (found again if a reload replaced it).
    async fn click(&self, css: &str) {
        self.b.click(css).await;
    }

    /// Marks the document; [`Page::not_reloaded`] checks the mark is still there (the page
    /// changed in place, it was not loaded again).
    async fn mark(&self) {
        self.b.js("window.__kindsMark = 42; return true;").await;
    }

    async fn not_reloaded(&self) {
        let v = self.b.js("return window.__kindsMark || null;").await;
        assert_eq!(v, json!(42), "the page was reloaded");
    }

    async fn screenshot(&self, name: &str) {
        if let Ok(dir) = std::env::var("BELLWETHER_UI_SCREENSHOTS") {
            self.b.screenshot(&PathBuf::from(dir).join(name)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------
// The API, as an operator or a viewer.

async fn call(method: &str, url: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    let c = reqwest::Client::new();
    let mut req = match method {
        "GET" => c.get(url),
        "DELETE" => c.delete(url),
        _ => c.post(url),
    }
    .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn eventually<T>(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn agent_db1(url: &str, d: &Path, database: &str) -> KillOnDrop {
    let state = d.join("agent-db1");
    spawn_logged(
        &[
            "--log",
            "info",
            "agent",
            "--server",
            url,
            "--token",
            ENROL,
            "--name",
            "db1",
            "--state-dir",
            &state.display().to_string(),
            "--interval",
            "1s",
            "--max-backoff",
            "500ms",
            "--database",
            database,
            "--learn-graph=false",
            "--allow-action",
            "start_process",
            "--allow-action",
            "stop_process",
            "--allow-action",
            "sample_processes",
            "--allow-action",
            "mirror_provision",
            "--allow-action",
            "mirror_retire",
        ]
        .map(String::from),
        &d.join("agent-db1.log"),
    )
}

/// Stops the mirrors the db1 agent made (they outlive the agent, in their own process group)
/// when the test ends: every process whose working directory is under the agent's state
/// directory, each by its id.
struct MirrorsUnder(PathBuf);

impl Drop for MirrorsUnder {
    fn drop(&mut self) {
        let Ok(rd) = std::fs::read_dir("/proc") else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.parse::<u32>().is_err() {
                continue;
            }
            if let Ok(cwd) = std::fs::read_link(e.path().join("cwd")) {
                if cwd.starts_with(&self.0) {
                    let _ = std::process::Command::new("kill")
                        .args(["-9", &name])
                        .status();
                }
            }
        }
    }
}

fn agent_files(url: &str, d: &Path, root: &Path) -> KillOnDrop {
    let state = d.join("agent-files");
    spawn_logged(
        &[
            "--log",
            "info",
            "agent",
            "--server",
            url,
            "--token",
            ENROL,
            "--name",
            "files-1",
            "--rootfs",
            &root.display().to_string(),
            "--state-dir",
            &state.display().to_string(),
            "--interval",
            "1s",
            "--max-backoff",
            "500ms",
        ]
        .map(String::from),
        &d.join("agent-files.log"),
    )
}

#[test]
fn per_kind_pages_in_a_real_browser() {
    // The database side: two clusters and the proxy (patched instance with weight 0). Made
    // and dropped outside the async runtime (its HTTP client has a runtime of its own).
    let pg = PgPair::start(false, "10m");
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(pages(&pg));
}

async fn pages(pg: &PgPair) {
    let d = pg.d().to_path_buf();

    // The server, told where the proxy's admin token is.
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let data_dir = d.join("server");
    let server_log = d.join("server.log");
    let _server = spawn_logged(
        &[
            "--log".into(),
            "info".into(),
            "server".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--proxy-token-file".into(),
            format!("main={}", pg.token_file.display()),
        ],
        &server_log,
    );
    wait_for("the server to listen", Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let logs = || {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        format!(
            "server:\n{}\nagent db1:\n{}\nagent files-1:\n{}",
            read(&server_log),
            read(&d.join("agent-db1.log")),
            read(&d.join("agent-files.log"))
        )
    };
    let admin = std::fs::read_to_string(data_dir.join("admin.token"))
        .unwrap()
        .trim()
        .to_string();
    let (s, v) = call(
        "POST",
        &format!("{url}/api/v1/tokens"),
        &admin,
        Some(json!({"role": "viewer", "name": "ui-kinds-viewer"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let viewer = v["token"].as_str().unwrap().to_string();

    // The agents: db1 reports the original cluster's settings and runs the patch's process
    // built-ins; files-1 holds a directory with a shadow.
    let database = format!(
        "main=postgres://postgres@127.0.0.1:{}/postgres",
        pg.original.port
    );
    // Declared before the agent, so it is dropped after it: then nothing makes mirrors.
    let _mirrors = MirrorsUnder(d.join("agent-db1"));
    let _agent_db1 = agent_db1(&url, &d, &database);
    let root = d.join("files-root");
    std::fs::create_dir_all(root.join("srv/uploads")).unwrap();
    std::fs::write(root.join("srv/uploads/a.txt"), "first\n").unwrap();
    let _agent_files = agent_files(&url, &d, &root);
    for h in ["db1", "files-1"] {
        eventually(
            &format!("{h} to enrol"),
            Duration::from_secs(60),
            async || {
                let (s, _) = call("GET", &format!("{url}/api/v1/hosts/{h}"), OPERATOR, None).await;
                (s == 200).then_some(())
            },
        )
        .await;
    }
    eventually(
        "db1's report of main",
        Duration::from_secs(60),
        async || {
            let (_, v) = call(
                "GET",
                &format!("{url}/api/v1/config/sources"),
                OPERATOR,
                None,
            )
            .await;
            v.as_array()?
                .iter()
                .any(|s| s["host"] == "db1" && s["source"] == "main")
                .then_some(())
        },
    )
    .await;

    let op = Page::sign_in(&url, OPERATOR, "operator").await;
    let vw = Page::sign_in(&url, &viewer, "viewer").await;

    // ---- The config graph ------------------------------------------------------------
    op.route("#/config").await;
    op.wait_css("[data-test=config-source][data-host=db1][data-source=main]")
        .await;
    op.click("[data-test=config-source][data-host=db1] [data-test=config-source-link]")
        .await;
    // The source's page centres on a setting by itself; then on autovacuum, which the
    // shipped rules say requires track_counts.
    op.wait_css("[data-test=config-graph]").await;
    op.route("#/config/db1,main,autovacuum").await;
    op.wait_text("[data-test=graph-center]", "autovacuum").await;
    op.wait_css(
        "[data-test=graph-edge][data-kind=requires][data-from=autovacuum][data-to=track_counts]",
    )
    .await;
    op.wait_count("[data-test=graph-node]", 3).await;
    op.mark().await;
    // A click on a node centres the graph on it.
    op.click("[data-test=graph-node][data-name=track_counts] circle")
        .await;
    op.wait_css("[data-test=graph-node][data-name=track_counts][data-center=true]")
        .await;
    op.wait_text("[data-test=graph-center]", "track_counts")
        .await;
    op.not_reloaded().await;
    op.route("#/config/db1,main,autovacuum").await;
    op.wait_css("[data-test=graph-node][data-name=autovacuum][data-center=true]")
        .await;
    op.screenshot("dashboard-config.png").await;

    // A live change: ALTER SYSTEM on the instance; the agent reports it, the server records
    // a config.changed event, and the page shows it without a reload.
    op.route("#/config/db1,main,autovacuum_naptime").await;
    op.wait_css("[data-test=graph-node][data-name=autovacuum_naptime][data-center=true]")
        .await;
    op.mark().await;
    pg.original
        .psql("ALTER SYSTEM SET autovacuum_naptime = '42s'");
    pg.original.psql("SELECT pg_reload_conf()");
    op.wait_css("[data-test=config-change][data-key=autovacuum_naptime]")
        .await;
    op.not_reloaded().await;

    // A snapshot: the viewer is refused with the API's 403; the operator's is taken.
    let snapshots = format!("{url}/api/v1/config/snapshots?host=db1&source=main");
    viewer_refused_operator_acts(
        &vw.b,
        &op.b,
        &Act {
            route: "#/config/db1,main,autovacuum_naptime",
            button: "[data-test=config-snapshot-take]",
            confirm: false,
            refused: "POST /api/v1/config/snapshots",
        },
        async |_| {
            let (_, snaps) = call("GET", &snapshots, OPERATOR, None).await;
            assert_eq!(snaps, json!([]), "the viewer's snapshot was not taken");
        },
    )
    .await;
    op.wait_css("[data-test=config-snapshot]").await;
    op.not_reloaded().await;
    let (_, snaps) = call("GET", &snapshots, OPERATOR, None).await;
    assert_eq!(snaps.as_array().unwrap().len(), 1, "{snaps}");

    // A setting's name with commas and other reserved characters survives the address: each
    // part of `#/config/HOST,SOURCE,SETTING,DEPTH` is encoded on its own, so a comma inside
    // the name is not a separator and `%2C` typed in a name stays as typed. No PostgreSQL
    // setting has such a name, so the API's 400 names exactly the setting it was asked for.
    const ODD: &str = "work_mem, shared_buffers/x?y=1&z=#%2C é";
    op.route("#/config/db1,main,autovacuum").await;
    op.wait_css("[data-test=graph-node][data-name=autovacuum][data-center=true]")
        .await;
    op.mark().await;
    let around = op.wait_css("[data-test=graph-around]").await;
    around.clear().await.unwrap();
    around.send_keys(ODD).await.unwrap();
    op.wait_css("[data-test=graph-depth]")
        .await
        .select_by_value("3")
        .await
        .unwrap();
    op.click("[data-test=graph-go]").await;
    let shown = op
        .wait_text("[data-test=graph-error]", &format!("has no setting {ODD}"))
        .await;
    assert!(shown.contains("400"), "{shown}");
    op.not_reloaded().await;
    let odd_route = async || {
        op.b.js("const parts = location.hash.split(','); \
             return {parts: parts.length, key: decodeURIComponent(parts[2]), depth: parts[3], \
                     around: document.querySelector('[data-test=graph-around]').value, \
                     selected: document.querySelector('[data-test=graph-depth]').value};")
            .await
    };
    let expected = json!({"parts": 4, "key": ODD, "depth": "3", "around": ODD, "selected": "3"});
    assert_eq!(
        odd_route().await,
        expected,
        "the address and the page hold the setting"
    );
    // The address is a bookmark: loaded again, the page asks for the same setting.
    op.b.client.refresh().await.unwrap();
    op.wait_text("[data-test=role]", "operator").await;
    op.wait_text("[data-test=graph-error]", &format!("has no setting {ODD}"))
        .await;
    assert_eq!(
        odd_route().await,
        expected,
        "the bookmark holds the setting"
    );
    // And from there, a real setting by name centres the graph again.
    let around = op.wait_css("[data-test=graph-around]").await;
    around.clear().await.unwrap();
    around.send_keys("track_counts").await.unwrap();
    op.click("[data-test=graph-go]").await;
    op.wait_css("[data-test=graph-node][data-name=track_counts][data-center=true]")
        .await;

    // ---- Dependencies ------------------------------------------------------------------
    op.route("#/mirrors").await;
    op.wait_css("[data-test=mirrors-empty]").await;
    op.mark().await;
    let (s, v) = call(
        "POST",
        &format!("{url}/api/v1/mirror/dependencies"),
        OPERATOR,
        Some(
            json!({"name": "orders-db", "kind": "tcp", "primary": pg.original.addr(),
                    "tier": "high", "impact": 0.8}),
        ),
    )
    .await;
    assert_eq!(s, 201, "{v}\n{}", logs());
    op.wait_css("[data-test=mirror-row][data-name=orders-db]")
        .await;
    op.not_reloaded().await;
    // A Redis dependency whose mirror the db1 agent makes (a real `redis-server --replicaof`
    // under its state directory): its page shows the mirror once it is ready, the viewer's
    // failover is refused, the operator's switches to the mirror, and the switch arrives in
    // the history as its event does, without a reload.
    let redis = TestRedis::start();
    let (s, v) = call(
        "POST",
        &format!("{url}/api/v1/mirror/dependencies"),
        OPERATOR,
        Some(
            json!({"name": "cache", "kind": "redis", "primary": redis.endpoint(),
                    "host": "db1", "tier": "critical", "impact": 1.0,
                    "policy": {"min_mirrors": 1, "max_mirrors": 1, "mode": "active-passive",
                               "health_interval": "250ms", "failback_after": "1d"}}),
        ),
    )
    .await;
    assert_eq!(s, 201, "{v}\n{}", logs());
    op.wait_css("[data-test=mirror-row][data-name=cache]").await;
    op.not_reloaded().await;
    op.click("[data-test=mirror-row][data-name=cache] [data-test=mirror-link]")
        .await;
    op.wait_css("[data-test=mirror-instance][data-role=primary]")
        .await;
    op.wait_css("[data-test=mirror-no-switches]").await;
    op.wait_text("[data-test=mirror-instance][data-role=mirror]", "ready")
        .await;
    let mirror_id = op
        .wait_css("[data-test=mirror-instance][data-role=mirror]")
        .await
        .attr("data-id")
        .await
        .unwrap()
        .expect("a mirror row names its instance");
    let dependency = format!("{url}/api/v1/mirror/dependencies/cache");
    op.mark().await;
    viewer_refused_operator_acts(
        &vw.b,
        &op.b,
        &Act {
            route: "#/mirrors/cache",
            button: "[data-test=mirror-failover]",
            confirm: false,
            refused: "POST /api/v1/mirror/dependencies/{name}/failover",
        },
        async |_| {
            let (_, d) = call("GET", &dependency, OPERATOR, None).await;
            assert_eq!(
                d["history"],
                json!([]),
                "the viewer's failover switched: {d}"
            );
        },
    )
    .await;
    op.wait_text("[data-test=action-result]", "failover asked")
        .await;
    let row = op
        .wait_text(
            &format!("[data-test=mirror-switch][data-from=primary][data-to=\"{mirror_id}\"]"),
            "the operator asked",
        )
        .await;
    op.wait_text("[data-test=mirror-primary]", &mirror_id).await;
    op.not_reloaded().await;
    let (_, d) = call("GET", &dependency, OPERATOR, None).await;
    let switches = d["history"].as_array().expect("a switch history");
    assert_eq!(switches.len(), 1, "{d}");
    let switch = &switches[0];
    assert_eq!(switch["from"], "primary", "{switch}");
    assert_eq!(switch["to"], mirror_id.as_str(), "{switch}");
    assert!(
        row.contains(switch["trigger"].as_str().unwrap()),
        "the row shows the API's switch {switch}: {row}"
    );
    op.screenshot("dashboard-mirrors.png").await;
    // The list's last switch, too.
    op.route("#/mirrors").await;
    op.wait_text(
        "[data-test=mirror-row][data-name=cache]",
        &format!("primary → {mirror_id}"),
    )
    .await;

    // ---- Shadows -----------------------------------------------------------------------
    op.route("#/shadows").await;
    op.wait_css("[data-test=shadows-empty]").await;
    op.mark().await;
    let (s, v) = call(
        "POST",
        &format!("{url}/api/v1/shadow/shadows"),
        OPERATOR,
        Some(json!({"name": "uploads", "host": "files-1",
                    "resource": {"kind": "dir", "path": "srv/uploads"},
                    "type": "full", "dir": "var/shadow/uploads", "points_every": "1h",
                    "locations": [{"id": "main", "path": "srv/uploads"}]})),
    )
    .await;
    assert_eq!(s, 201, "{v}\n{}", logs());
    op.wait_css("[data-test=shadow-row][data-name=uploads]")
        .await;
    op.not_reloaded().await;
    op.click("[data-test=shadow-row][data-name=uploads] [data-test=shadow-link]")
        .await;
    // The agent starts the shadow (its answer moves the task to running).
    let start = Instant::now();
    loop {
        let (_, v) = call(
            "GET",
            &format!("{url}/api/v1/shadow/shadows/uploads"),
            OPERATOR,
            None,
        )
        .await;
        if v["phase"] == "running" {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "the shadow never started: {v}\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    op.wait_text("[data-test=shadow-phase]", "running").await;
    op.mark().await;
    // The first (scheduled) point arrives on the page when the agent reports it; then the
    // operator's point on demand.
    op.wait_count("[data-test=shadow-point]", 1).await;
    op.click("[data-test=shadow-take-point]").await;
    op.wait_count("[data-test=shadow-point]", 2).await;
    op.not_reloaded().await;
    // The viewer's rollback is refused; the operator's rolls back to a point.
    std::fs::write(root.join("srv/uploads/a.txt"), "broken\n").unwrap();
    let history = format!("{url}/api/v1/shadow/shadows/uploads/history");
    viewer_refused_operator_acts(
        &vw.b,
        &op.b,
        &Act {
            route: "#/shadows/uploads",
            button: "[data-test=shadow-rollback-to-point]",
            confirm: false,
            refused: "POST /api/v1/shadow/shadows/{name}/rollback",
        },
        async |_| {
            let (_, hist) = call("GET", &history, OPERATOR, None).await;
            assert_eq!(
                hist["rollbacks"],
                json!([]),
                "the viewer rolled back: {hist}"
            );
        },
    )
    .await;
    op.wait_css("[data-test=shadow-rollback-row]").await;
    op.not_reloaded().await;
    op.screenshot("dashboard-shadows.png").await;
    let (_, hist) = call("GET", &history, OPERATOR, None).await;
    assert_eq!(hist["rollbacks"].as_array().unwrap().len(), 1, "{hist}");

    // ---- Patches and the proxy's registry -----------------------------------------------
    let mut load = pg.pgbench(600);
    op.route("#/patches").await;
    op.wait_css("[data-test=patches-empty]").await;
    op.mark().await;
    let (s, v) = call(
        "POST",
        &format!("{url}/api/v1/patches"),
        OPERATOR,
        Some(
            json!({"plan_yaml": pg.plan, "file": "patch.yaml", "host": "db1",
                    "proxy": {"token": "main"}, "id": "pg-ui-1",
                    "original_pid": pg.original.pid()}),
        ),
    )
    .await;
    assert_eq!(s, 201, "{v}\n{}", logs());
    op.wait_css("[data-test=patch-row][data-id=pg-ui-1]").await;
    op.click("[data-test=patch-row][data-id=pg-ui-1] [data-test=patch-link]")
        .await;
    // The patch moves through its stages on the page as its events arrive.
    op.wait_text("[data-test=patch-stage]", "baking").await;
    op.not_reloaded().await;

    // The proxy's registry: pgbench's sessions through the proxy.
    op.route("#/proxy/pg-ui-1").await;
    op.wait_css("[data-test=proxy-backend][data-name=original]")
        .await;
    op.wait_css("[data-test=proxy-backend][data-name=patched]")
        .await;
    op.wait_count("[data-test=proxy-connection]", 1).await;
    op.screenshot("dashboard-proxy.png").await;

    // The viewer may read the registry (the server holds the proxy's token) but not abort.
    vw.route("#/proxy/pg-ui-1").await;
    vw.wait_count("[data-test=proxy-connection]", 1).await;
    // The operator aborts while it bakes: the patch rolls back in its four phases, and the
    // page shows each with its timing as it happens.
    op.route("#/patches/pg-ui-1").await;
    op.wait_text("[data-test=patch-stage]", "baking").await;
    let patch = format!("{url}/api/v1/patches/pg-ui-1");
    viewer_refused_operator_acts(
        &vw.b,
        &op.b,
        &Act {
            route: "#/patches/pg-ui-1",
            button: "[data-test=patch-abort]",
            confirm: false,
            refused: "POST /api/v1/patches/{id}/abort",
        },
        async |_| {
            let (_, st) = call("GET", &patch, OPERATOR, None).await;
            assert_eq!(st["outcome"], "running", "the viewer aborted: {st}");
        },
    )
    .await;
    op.wait_text("[data-test=patch-stage]", "rolled_back").await;
    op.wait_count("[data-test=patch-phase]", 4).await;
    op.wait_css("[data-test=patch-phase-chart]").await;
    op.not_reloaded().await;
    op.screenshot("dashboard-patches.png").await;
    let _ = load.kill();
    let _ = load.wait();
    let (_, st) = call("GET", &patch, OPERATOR, None).await;
    assert_eq!(st["outcome"], "rolled_back", "{st}");

    op.b.close().await;
    vw.b.close().await;
}

/// The server route behind the proxy page refuses what it should: no token, an unknown patch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_route_refuses_bad_requests() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let log = dir.path().join("server.log");
    let _server = spawn_logged(
        &[
            "server".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--data-dir".into(),
            dir.path().join("data").display().to_string(),
        ],
        &log,
    );
    wait_for("the server to listen", Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let r = reqwest::get(format!("{url}/api/v1/patches/p-1/connections"))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let (s, v) = call(
        "GET",
        &format!("{url}/api/v1/patches/nope/connections"),
        OPERATOR,
        None,
    )
    .await;
    assert_eq!(s, 404, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("unknown patch nope"),
        "{v}"
    );
}
