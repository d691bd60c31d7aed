//! End to end: a real server (SQLite store, on loopback) drives a shadow's durable task, and a
//! real agent action loop carries out its `shadow_*` actions on a real SQLite file that
//! python3 writes in WAL mode. Points are taken, the operator's rollback restores another
//! location to the first point and swaps the service's link to it, then a failure report
//! makes the engine roll back on its own, to the latest point before the failure, into the
//! best location by merit.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bellwether_agent::actions::{ActionLoop, ActionSettings, Journal};
use bellwether_agent::exec::Executor;
use bellwether_agent::HttpTransport;
use bellwether_server::ServerConfig;
use bellwether_store::StoreConfig;
use serde_json::{json, Value};

const OP: &str = "operator-token-shadow-e2e";
const ENROL: &str = "enrol-token-shadow-e2e";

fn sql(db: &Path, statements: &str) {
    let script = "import sqlite3, sys\nc = sqlite3.connect(sys.argv[1])\nc.execute('PRAGMA journal_mode=WAL')\nc.executescript(sys.argv[2])\nc.commit()\nc.close()\n";
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(db)
        .arg(statements)
        .output()
        .expect("this test writes SQLite with python3 and its sqlite3 module: install python3 (apt-get install python3)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn count(db: &Path) -> i64 {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys\nprint(sqlite3.connect(sys.argv[1]).execute('select count(*) from t').fetchone()[0])",
        ])
        .arg(db)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(OP);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Polls `path` until `done` holds (the task's steps are stored by another runtime's
    /// task; the API is how a user sees them). Bounded, never a timing assertion.
    async fn until(&self, what: &str, path: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (s, v) = self.call(reqwest::Method::GET, path, None).await;
            if s == 200 && done(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {v}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_task_takes_points_and_rolls_back_through_a_real_agent() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("data")).unwrap();
    let mut config = ServerConfig::new(StoreConfig::sqlite_in(&tmp.path().join("data")), None);
    config.operator_token = Some(OP.into());
    config.enrol_token = Some(ENROL.into());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(bellwether_server::serve(config, listener, async {
        let _ = server_stopped.await;
    }));
    let api = Api {
        http: reqwest::Client::new(),
        base: base.clone(),
    };

    // The host's data: a SQLite file another process writes, three rows.
    let root = tmp.path().join("root");
    std::fs::create_dir_all(root.join("srv/b")).unwrap();
    let db = root.join("srv/app.db");
    sql(&db, "create table t (id integer primary key, v text); insert into t (v) values ('a'), ('b'), ('c');");

    // The agent: enrolled, then its action loop against the server.
    let enrolled: Value = reqwest::Client::new()
        .post(format!("{base}/api/v1/enrol"))
        .bearer_auth(ENROL)
        .json(&json!({"name": "db-1"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let agent_token = enrolled["agent_token"].as_str().unwrap().to_string();
    let state = tmp.path().join("state");
    let executor = Executor::new(root.clone(), &state, &[], None).unwrap();
    let journal = Journal::open(&state).unwrap();
    let transport = HttpTransport::new(&base, ENROL, Duration::from_secs(10)).unwrap();
    let (_token_tx, token_rx) = tokio::sync::watch::channel(Some(agent_token));
    let settings = ActionSettings {
        wait: Duration::from_millis(500),
        ..ActionSettings::default()
    };
    let (stop_agent, agent_stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(
        ActionLoop::new(settings, transport, executor, journal, token_rx).run(async {
            let _ = agent_stopped.await;
        }),
    );

    // Declare the shadow: two locations, the service opens srv/current.db.
    let (s, v) = api
        .call(
            reqwest::Method::POST,
            "/api/v1/shadow/shadows",
            Some(json!({
                "name": "app", "host": "db-1",
                "resource": {"kind": "sqlite", "path": "srv/app.db"},
                "type": "full", "dir": "var/shadow/app", "points_every": "1h",
                "locations": [{"id": "primary", "path": "srv/app.db"}, {"id": "cell-b", "path": "srv/b/app.db"}],
                "routing": {"link": "srv/current.db"}
            })),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let shadow = "/api/v1/shadow/shadows/app";

    // Started, routed to the primary, and the first scheduled point taken.
    let v = api
        .until("the first point", &format!("{shadow}/points"), |v| {
            v["points"].as_array().is_some_and(|p| !p.is_empty())
        })
        .await;
    let first = v["points"][0].clone();
    let detail = api
        .until("the running phase", shadow, |v| v["phase"] == "running")
        .await;
    assert_eq!(detail["routed"], "primary");
    assert_eq!(count(&root.join("srv/current.db")), 3);

    // Two more rows, then a point on demand.
    sql(&db, "insert into t (v) values ('d'), ('e');");
    let (s, v) = api
        .call(
            reqwest::Method::POST,
            &format!("{shadow}/points"),
            Some(json!({"reason": "before the migration"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let v = api
        .until("the second point", &format!("{shadow}/points"), |v| {
            v["points"].as_array().is_some_and(|p| p.len() == 2)
        })
        .await;
    let second = v["points"][1].clone();
    assert!(second["consistent_at_ms"].as_i64() > first["consistent_at_ms"].as_i64());

    // The operator rolls cell-b back to the first point and routes the service to it.
    let (s, v) = api
        .call(
            reqwest::Method::POST,
            &format!("{shadow}/rollback"),
            Some(json!({"reason": "drill", "to": first["id"], "location": "cell-b"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let h = api
        .until(
            "the operator's rollback",
            &format!("{shadow}/history"),
            |v| v["rollbacks"].as_array().is_some_and(|r| r.len() == 1),
        )
        .await;
    assert_eq!(h["rollbacks"][0]["ok"], true, "{h}");
    assert_eq!(h["rollbacks"][0]["point"]["id"], first["id"]);
    assert_eq!(count(&root.join("srv/b/app.db")), 3);
    assert_eq!(count(&db), 5);
    assert_eq!(count(&root.join("srv/current.db")), 3);
    assert_eq!(
        std::fs::read_link(root.join("srv/current.db")).unwrap(),
        Path::new("../srv/b/app.db")
    );

    // A failure of cell-b just before the second point: the engine rolls back on its own,
    // to the first point (the latest at or before the failure), into the primary (cell-b
    // fails), and routes back.
    sql(&db, "delete from t;");
    let failed_at = second["consistent_at_ms"].as_i64().unwrap() - 1;
    let (s, v) = api
        .call(
            reqwest::Method::POST,
            &format!("{shadow}/failure"),
            Some(json!({"reason": "checksum errors", "location": "cell-b", "failed_at": format!("{}.{:03}", failed_at / 1000, failed_at % 1000)})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let h = api
        .until(
            "the automatic rollback",
            &format!("{shadow}/history"),
            |v| v["rollbacks"].as_array().is_some_and(|r| r.len() == 2),
        )
        .await;
    let rb = &h["rollbacks"][1];
    assert_eq!(rb["ok"], true, "{h}");
    assert_eq!(rb["trigger"], "failure");
    assert_eq!(rb["location"], "primary");
    assert_eq!(rb["point"]["id"], first["id"]);
    assert_eq!(count(&db), 3);
    assert_eq!(count(&root.join("srv/current.db")), 3);
    assert_eq!(
        std::fs::read_link(root.join("srv/current.db")).unwrap(),
        Path::new("../srv/app.db")
    );
    let kinds: Vec<&str> = h["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    for k in [
        "shadow.rollback.started",
        "shadow.rollback.restoring",
        "shadow.routed",
        "shadow.rollback.completed",
    ] {
        assert!(kinds.contains(&k), "{k} not in {kinds:?}");
    }

    // Removal stops the shadow on the agent and the task settles.
    let (s, _) = api.call(reqwest::Method::DELETE, shadow, None).await;
    assert_eq!(s, 202);
    api.until("the removal", shadow, |v| v["phase"] == "removed")
        .await;

    let _ = stop_agent.send(());
    agent.await.unwrap();
    let _ = stop_server.send(());
    server.await.unwrap().unwrap();
}
