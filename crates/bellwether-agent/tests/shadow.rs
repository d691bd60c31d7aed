//! The agent's shadow built-ins run by its executor on a real SQLite file that another
//! process (python3's sqlite3, not Bellwether) writes in WAL mode: start, points, a restore
//! into another location and in place, a link swap, a missing point, paths kept inside the
//! root, stop.

use std::path::Path;
use std::process::Command;

use bellwether_agent::exec::{ActionReport, Executor};
use bellwether_model::wire::ActionOutcome;
use bellwether_model::ActionSpec;
use serde_json::{json, Value};

fn executor(dir: &Path) -> Executor {
    let rootfs = dir.join("root");
    std::fs::create_dir_all(rootfs.join("srv/b")).unwrap();
    Executor::new(rootfs, &dir.join("state"), &[], None).unwrap()
}

/// Runs SQL on `db` with python3's sqlite3 module (WAL mode), as a foreign writer would.
fn sql(db: &Path, statements: &str) {
    let script = "import sqlite3, sys\nc = sqlite3.connect(sys.argv[1])\nc.execute('PRAGMA journal_mode=WAL')\nc.executescript(sys.argv[2])\nc.commit()\nc.close()\n";
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(db)
        .arg(statements)
        .output()
        .expect("these tests write SQLite with python3 and its sqlite3 module: install python3 (apt-get install python3)");
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

fn shadow(op: &str, extra: Value) -> ActionSpec {
    let mut call = json!({
        "name": "app",
        "resource": {"kind": "sqlite", "path": "srv/app.db"},
        "type": "full",
        "dir": "var/shadow/app",
        "locations": [{"id": "primary", "path": "srv/app.db"}, {"id": "cell-b", "path": "srv/b/app.db"}],
    });
    if let (Value::Object(c), Value::Object(e)) = (&mut call, extra) {
        c.extend(e);
    }
    serde_json::from_value(json!({"builtin": op, "shadow": call, "timeout_ms": 60000})).unwrap()
}

fn ok(r: &ActionReport) -> &Value {
    assert!(r.is_ok(), "{r:?}");
    r.output.as_ref().expect("a shadow built-in has an output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn points_and_restores_of_a_sqlite_file_written_by_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let ex = executor(dir.path());
    let root = dir.path().join("root");
    let db = root.join("srv/app.db");
    sql(&db, "create table t (id integer primary key, v text); insert into t (v) values ('a'), ('b'), ('c');");

    let r = ex.run(&shadow("shadow_start", json!({}))).await;
    assert_eq!(ok(&r)["running"], true);
    let r = ex
        .run(&shadow(
            "shadow_point",
            json!({"reason": {"reason": "on_demand"}}),
        ))
        .await;
    let first = ok(&r)["point"]["id"].as_str().unwrap().to_string();
    let checks = ok(&r)["locations"].as_array().unwrap().clone();
    assert_eq!(checks.len(), 2, "{checks:?}");
    assert!(checks.iter().all(|c| c["up"] == true), "{checks:?}");

    sql(&db, "insert into t (v) values ('d'), ('e');");
    let r = ex
        .run(&shadow(
            "shadow_point",
            json!({"reason": {"reason": "predicted", "source": "detector", "expected_failure_ms": 1_900_000_000_000i64, "probability": 0.8}}),
        ))
        .await;
    let second = ok(&r)["point"]["id"].as_str().unwrap().to_string();
    assert_ne!(first, second);
    assert!(ok(&r)["point"]["consistent_at_ms"].as_i64().unwrap() > 0);

    // Into another location, to the first point: three rows there, five live.
    let r = ex
        .run(&shadow(
            "shadow_restore",
            json!({"location": "cell-b", "to": {"point": first}}),
        ))
        .await;
    assert_eq!(ok(&r)["point"], first.as_str());
    assert_eq!(count(&root.join("srv/b/app.db")), 3);
    assert_eq!(count(&db), 5);

    // A point that does not exist: failed, with `point_unusable` for the engine, and the
    // location untouched.
    let r = ex
        .run(&shadow(
            "shadow_restore",
            json!({"location": "cell-b", "to": {"point": "p999"}}),
        ))
        .await;
    assert!(matches!(r.outcome, ActionOutcome::Failed { .. }), "{r:?}");
    assert_eq!(r.output.as_ref().unwrap()["point_unusable"], true);
    assert_eq!(count(&root.join("srv/b/app.db")), 3);

    // The link the service opens, swapped to cell-b.
    let r = ex
        .run(&shadow(
            "shadow_route",
            json!({"location": "cell-b", "link": "srv/current.db"}),
        ))
        .await;
    assert_eq!(ok(&r)["target"], "../srv/b/app.db");
    assert_eq!(count(&root.join("srv/current.db")), 3);

    let r = ex.run(&shadow("shadow_stop", json!({}))).await;
    assert_eq!(ok(&r)["stopped"], true);
    let r = ex.run(&shadow("shadow_stop", json!({}))).await;
    assert_eq!(ok(&r)["running"], false);

    // In place, with no follower running: the live file goes back to the second point.
    sql(&db, "delete from t;");
    let r = ex
        .run(&shadow(
            "shadow_restore",
            json!({"location": "primary", "to": {"point": second}}),
        ))
        .await;
    ok(&r);
    assert_eq!(count(&db), 5);
}

#[tokio::test]
async fn paths_stay_inside_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let ex = executor(dir.path());
    let root = dir.path().join("root");
    // A `..` is refused before anything runs.
    let mut bad = serde_json::to_value(shadow("shadow_start", json!({}))).unwrap();
    bad["shadow"]["dir"] = json!("../../outside");
    assert!(serde_json::from_value::<ActionSpec>(bad).is_err());
    // A link to an absolute path is followed inside the root: the shadow directory is made
    // under ROOT/etc, never in the host's /etc.
    std::fs::create_dir_all(root.join("var/shadow")).unwrap();
    std::os::unix::fs::symlink("/etc/bw-shadow-test", root.join("var/shadow/app")).unwrap();
    sql(
        &root.join("srv/app.db"),
        "create table t (id integer primary key);",
    );
    let r = ex
        .run(&shadow(
            "shadow_point",
            json!({"reason": {"reason": "schedule"}}),
        ))
        .await;
    ok(&r);
    assert!(root.join("etc/bw-shadow-test/shadow.json").exists());
    assert!(!Path::new("/etc/bw-shadow-test").exists());
}
