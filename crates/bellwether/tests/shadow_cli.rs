//! `bellwether shadow` as a user runs it, through the built binary, on a SQLite database that
//! another process (Python's sqlite3 module) writes in WAL mode: start in the foreground,
//! a predicted point asked for from another process, SIGTERM, points, verify, restores to a
//! point and to a time over a corrupted file, and the exit codes of bad input.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn bellwether(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bellwether"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the bellwether binary runs")
}

fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs Python's sqlite3 on `db`: `script` gets the connection as `c`.
fn py(dir: &Path, script: &str) -> String {
    let prog = format!(
        "import sqlite3\nc = sqlite3.connect('app.db', isolation_level=None, timeout=30)\nc.execute('PRAGMA journal_mode=WAL')\n{script}\n"
    );
    let out = Command::new("python3")
        .args(["-c", &prog])
        .current_dir(dir)
        .output()
        .expect(
            "this test writes the database with python3's sqlite3 module: install python3 (apt-get install python3)",
        );
    assert!(out.status.success(), "python: {}", describe(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn insert(dir: &Path, from: u32, to: u32) {
    py(
        dir,
        &format!(
            "c.execute('CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, body BLOB)')\nfor i in range({from}, {to}):\n    c.execute('INSERT INTO t VALUES (?, randomblob(500))', (i,))"
        ),
    );
}

fn rows(dir: &Path) -> String {
    py(
        dir,
        "print(c.execute('SELECT count(*), max(id) FROM t').fetchone())",
    )
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", describe(out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", describe(out)))
}

#[test]
fn shadow_start_point_restore_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    insert(d, 1, 51);
    let mut start = Command::new(env!("CARGO_BIN_EXE_bellwether"))
        .args([
            "shadow",
            "start",
            "--path",
            "app.db",
            "--type",
            "transactional",
            "--dir",
            "sd",
        ])
        .current_dir(d)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(start.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.starts_with("point p1 taken"), "{first}");

    insert(d, 51, 151);
    let out = bellwether(
        &[
            "shadow",
            "point",
            "--dir",
            "sd",
            "--predicted-by",
            "disk-model",
            "--failure-at",
            "2030-01-01T00:00:00Z",
            "--probability",
            "0.8",
            "--output",
            "json",
        ],
        d,
    );
    let p2 = json(&out);
    assert_eq!(p2["id"], "p2", "{p2}");
    assert_eq!(p2["reason"]["kind"], "predicted");
    assert_eq!(p2["reason"]["source"], "disk-model");
    let p2_at = p2["consistent_at"].as_str().unwrap().to_string();
    insert(d, 151, 181);
    // A point after the last writes: the follower has logged them all when it answers.
    let p3 = json(&bellwether(
        &["shadow", "point", "--dir", "sd", "--output", "json"],
        d,
    ));
    assert_eq!(p3["id"], "p3");

    let pid = start.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = start.wait().unwrap();
    assert!(status.success(), "start exits 0 on SIGTERM: {status:?}");

    let listed = json(&bellwether(
        &["shadow", "points", "--dir", "sd", "--output", "json"],
        d,
    ));
    assert_eq!(listed["kind"], "sqlite");
    assert_eq!(listed["type"], "transactional");
    assert_eq!(listed["points"].as_array().unwrap().len(), 3);
    let human = bellwether(&["shadow", "points", "--dir", "sd"], d);
    assert!(
        String::from_utf8_lossy(&human.stdout).contains("predicted by disk-model"),
        "{}",
        describe(&human)
    );
    let v = bellwether(&["shadow", "verify", "--dir", "sd", "--deep"], d);
    assert!(v.status.success(), "{}", describe(&v));

    // Corrupt the live file, then restore to p2 and to p2's time.
    let bytes = std::fs::read(d.join("app.db")).unwrap();
    std::fs::write(d.join("app.db"), vec![0x5a; bytes.len()]).unwrap();
    let r = json(&bellwether(
        &[
            "shadow", "restore", "--dir", "sd", "--path", "app.db", "--to", "p2", "--output",
            "json",
        ],
        d,
    ));
    assert_eq!(r["point"], 2, "{r}");
    assert_eq!(rows(d), "(150, 150)");
    let r = json(&bellwether(
        &[
            "shadow", "restore", "--dir", "sd", "--path", "app.db", "--to", "latest", "--output",
            "json",
        ],
        d,
    ));
    assert_eq!(rows(d), "(180, 180)", "{r}");
    let out = bellwether(
        &[
            "shadow", "restore", "--dir", "sd", "--path", "app.db", "--to", &p2_at,
        ],
        d,
    );
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(rows(d), "(150, 150)");

    // Bad input: exit 2, a message naming the problem, the live file untouched.
    let live = std::fs::read(d.join("app.db")).unwrap();
    for (args, says) in [
        (
            vec![
                "shadow",
                "restore",
                "--dir",
                "sd",
                "--path",
                "app.db",
                "--to",
                "1970-01-01T00:00:00Z",
            ],
            "before the first point",
        ),
        (
            vec![
                "shadow", "restore", "--dir", "sd", "--path", "app.db", "--to", "p99",
            ],
            "has no point p99",
        ),
        (
            vec![
                "shadow",
                "restore",
                "--dir",
                "sd",
                "--path",
                "app.db",
                "--to",
                "yesterday",
            ],
            "is not a time",
        ),
        (
            vec![
                "shadow", "restore", "--dir", "sd", "--path", "other.db", "--to", "latest",
            ],
            "nothing was changed",
        ),
        (
            vec!["shadow", "points", "--dir", "nowhere"],
            "not a shadow directory",
        ),
        (
            vec![
                "shadow", "start", "--path", "app.db", "--type", "full", "--dir", "sd",
            ],
            "not of",
        ),
        (
            vec![
                "shadow", "start", "--path", ".", "--type", "full", "--dir", "sd2", "--clones",
                "never",
            ],
            "--clones applies to SQLite shadows",
        ),
        (
            vec![
                "shadow",
                "start",
                "--path",
                "app.db",
                "--type",
                "full",
                "--dir",
                "sd2",
                "--clones",
                "sometimes",
            ],
            "sometimes",
        ),
    ] {
        let out = bellwether(&args, d);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", describe(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(says),
            "{args:?}: {}",
            describe(&out)
        );
    }
    assert_eq!(std::fs::read(d.join("app.db")).unwrap(), live);
    assert!(!d.join("other.db").exists());
}
