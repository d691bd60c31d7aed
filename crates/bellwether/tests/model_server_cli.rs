//! `bellwether model import|train|list` and `bellwether risk` against a real server process,
//! on SQLite and on PostgreSQL.

mod support;

use std::fmt::Write as _;

use support::*;

/// A history in which a full disk (under 10 % free) makes deployments fail.
fn history() -> String {
    let mut s = String::from("deployment_id,host,os,disk_free_pct,outcome\n");
    let mut x: u64 = 99;
    for i in 0..600 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let disk = ((x >> 33) % 600) as f64 / 10.0;
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let u = (x >> 33) as f64 / (1u64 << 31) as f64;
        let failed = u < if disk < 10.0 { 0.9 } else { 0.05 };
        writeln!(s, "d{},h{i},debian-12,{disk},{}", i / 20, failed as u8).unwrap();
    }
    s
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn model_commands_work_against_a_real_server(backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let server = Server::start(
        dir,
        &backend,
        "127.0.0.1:0",
        "operator-token-model-cli",
        "enrol-token-model-cli-01",
    );
    let with = |args: &[&str]| {
        let mut a: Vec<&str> = args.to_vec();
        a.extend([
            "--server",
            &server.url,
            "--token",
            "operator-token-model-cli",
        ]);
        run(&a)
    };
    // No model yet: risk says how to get one (exit 1, a state problem, not bad input).
    let o = with(&["risk", "--update", "websvc", "--version", "2"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("no failure model has been trained yet"),
        "{}",
        text(&o)
    );
    // A ragged history is bad input: exit 2, the file and line named, nothing stored.
    let bad = dir.join("bad.csv");
    std::fs::write(&bad, "a,outcome\n1,0\n2\n").unwrap();
    let o = with(&["model", "import", "--history", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("bad.csv: history: line 3 has 1 fields but the header has 2"),
        "{}",
        text(&o)
    );
    // --out without --history is a usage error.
    let o = with(&["model", "train", "--out", "m.json"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("--out m.json needs --history"),
        "{}",
        text(&o)
    );

    let h = dir.join("h.csv");
    std::fs::write(&h, history()).unwrap();
    let o = with(&[
        "model",
        "import",
        "--history",
        h.to_str().unwrap(),
        "--output",
        "json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["imported"], 600);
    let o = with(&["model", "train", "--output", "json"]);
    assert!(o.status.success(), "{}", text(&o));
    let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(m["rows"], 600);
    assert_eq!(m["cause"], "operator");
    let o = with(&["model", "list"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("VERSION"),
        "{}",
        text(&o)
    );

    // Two hosts with profiles: the one with a full disk is the riskier.
    let api = server.api();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for (name, disk) in [("full", 3.0), ("roomy", 50.0)] {
            let r = reqwest::Client::new()
                .post(format!("{}/api/v1/enrol", server.url))
                .bearer_auth(&server.enrol_token)
                .json(&serde_json::json!({"name": name}))
                .send()
                .await
                .unwrap();
            let token = r.json::<serde_json::Value>().await.unwrap()["agent_token"]
                .as_str()
                .unwrap()
                .to_string();
            let r = reqwest::Client::new()
                .post(format!("{}/api/v1/agent/profile", server.url))
                .bearer_auth(token)
                .json(&serde_json::json!({"metrics": {"disk_free_pct": disk}}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 204);
        }
        drop(api);
    });
    let o = with(&[
        "risk",
        "--update",
        "websvc",
        "--version",
        "2",
        "--type",
        "major",
        "--output",
        "json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["hosts"][0]["host"], "full", "{r}");
    assert_eq!(
        r["hosts"][0]["contributing_factors"][0]["feature"], "disk_free_pct",
        "{r}"
    );
    let o = with(&["risk", "--update", "websvc", "--version", "2"]);
    assert!(o.status.success(), "{}", text(&o));
    let table = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        table.contains("full") && table.contains("disk_free_pct=3"),
        "{table}"
    );
    let o = with(&[
        "risk",
        "--update",
        "websvc",
        "--version",
        "2",
        "--host",
        "nope",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("unknown host nope"), "{}", text(&o));

    // `risk forgive`: bad input is refused with what is wrong, a good one is recorded.
    let forgive = |host: &str, reason: &str| {
        with(&[
            "risk",
            "forgive",
            host,
            "--update",
            "websvc",
            "--version",
            "2",
            "--reason",
            reason,
        ])
    };
    let o = forgive("nope", "repaired");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("unknown host nope"), "{}", text(&o));
    let o = forgive("full", " ");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("--reason must not be empty"),
        "{}",
        text(&o)
    );
    let o = run(&[
        "risk",
        "forgive",
        "full",
        "--update",
        "websvc",
        "--version",
        "2",
        "--reason",
        "x",
        "--server",
        &server.url,
    ]);
    assert!(!o.status.success(), "{}", text(&o));
    let o = run(&[
        "risk",
        "forgive",
        "full",
        "--update",
        "websvc",
        "--version",
        "2",
        "--reason",
        "x",
        "--server",
        &server.url,
        "--token",
        "wrong-token-0123456789",
    ]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("401") || text(&o).to_lowercase().contains("token"),
        "{}",
        text(&o)
    );
    let o = forgive("full", "disk replaced");
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(
            "Forgave full for websvc 2: 0 of its outcomes no longer count (disk replaced)."
        ),
        "{}",
        text(&o)
    );
}

#[test]
fn model_commands_on_sqlite() {
    model_commands_work_against_a_real_server(Backend::Sqlite);
}

#[test]
fn model_commands_on_postgres() {
    model_commands_work_against_a_real_server(Backend::postgres("model_cli"));
}

#[test]
fn the_same_operator_and_enrol_token_is_a_usage_error() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().display().to_string();
    let o = run(&[
        "server",
        "--data-dir",
        &d,
        "--operator-token",
        "same-token-0123456789",
        "--enrol-token",
        "same-token-0123456789",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("--operator-token and --enrol-token must differ"),
        "{}",
        text(&o)
    );
}
