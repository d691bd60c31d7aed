//! `bellwether shadow add|start --host|list|show|predict|rollback|failure|points|history|remove`
//! against a real server process (SQLite store): declared shadows are read back through the
//! CLI, and bad input (an unknown shadow, a bad probability, a bad time, a failure in the
//! future, a host that never enrolled, a shadow directory over the data, a bad limit) is
//! refused with an error naming it and exit code 2.

mod support;

use std::process::Output;

use support::*;

const OP: &str = "operator-token-shadow-cli";
const ENROL: &str = "enrol-token-shadow-cli-01";

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn json(o: &Output) -> serde_json::Value {
    assert_eq!(o.status.code(), Some(0), "{}", text(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

/// Exit 2 and an error that says `needle`.
fn refused(o: &Output, needle: &str) {
    assert_eq!(o.status.code(), Some(2), "{}", text(o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(needle), "{needle:?} not in {err}");
}

fn enrol(server: &Server, host: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let status = rt.block_on(async {
        reqwest::Client::new()
            .post(format!("{}/api/v1/enrol", server.url))
            .bearer_auth(&server.enrol_token)
            .json(&serde_json::json!({ "name": host }))
            .send()
            .await
            .unwrap()
            .status()
    });
    assert!(status.is_success(), "enrolment of {host}: {status}");
}

#[test]
fn server_managed_shadows_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path(), &Backend::Sqlite, "127.0.0.1:0", OP, ENROL);
    enrol(&server, "db-1");
    let with = |args: &[&str]| {
        let mut a = vec!["shadow"];
        a.extend_from_slice(args);
        a.extend(["--server", &server.url, "--token", OP]);
        run(&a)
    };

    // Nothing yet.
    let o = with(&["list"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("No shadows"), "{}", text(&o));

    // A SQLite shadow with a second cell and the link switched between them.
    let d = json(&with(&[
        "add",
        "orders",
        "--host",
        "db-1",
        "--path",
        "srv/orders.db",
        "--type",
        "transactional",
        "--dir",
        "var/shadow/orders",
        "--points-every",
        "5m",
        "--location",
        "cell-b=srv/b/orders.db",
        "--link",
        "srv/current.db",
        "--point-above",
        "0.6",
        "--output",
        "json",
    ]));
    assert_eq!(d["name"], "orders");
    assert_eq!(d["host"], "db-1");
    assert_eq!(d["type"], "transactional");
    assert_eq!(d["spec"]["points_every"], "5m");
    assert_eq!(d["spec"]["policy"]["point_above"], 0.6);
    assert_eq!(d["spec"]["locations"][1]["path"], "srv/b/orders.db");
    assert_eq!(d["spec"]["routing"]["link"], "srv/current.db");

    // `start --host` declares a server-managed shadow too (a directory, here).
    let o = with(&[
        "start",
        "--host",
        "db-1",
        "--name",
        "uploads",
        "--kind",
        "dir",
        "--path",
        "srv/uploads",
        "--type",
        "differential",
        "--dir",
        "var/shadow/uploads",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("uploads: declared"), "{}", text(&o));

    let list = json(&with(&["list", "--output", "json"]));
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, ["orders", "uploads"]);
    assert_eq!(list[1]["kind"], "dir");
    let o = with(&["list"]);
    assert!(
        text(&o).contains("orders") && text(&o).contains("differential"),
        "{}",
        text(&o)
    );

    let o = with(&["show", "orders"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("sqlite srv/orders.db, transactional shadow) on db-1"),
        "{t}"
    );
    assert!(t.contains("cell-b"), "{t}");

    // A prediction reaches the task and is shown.
    let d = json(&with(&[
        "predict",
        "orders",
        "--probability",
        "0.3",
        "--failure-at",
        "2030-01-01T00:00:00Z",
        "--source",
        "detector",
        "--detail",
        "disk latency",
        "--output",
        "json",
    ]));
    let preds = d["status"]["predictions"].as_array().unwrap();
    assert!(
        preds.iter().any(|p| p[1]["source"] == "detector"
            && p[1]["probability"] == 0.3
            && p[1]["expected_failure_ms"] == 1_893_456_000_000i64),
        "{d}"
    );

    // Bad input, each named, exit 2.
    refused(&with(&["show", "nope"]), "no shadow named nope");
    refused(
        &with(&[
            "predict",
            "orders",
            "--probability",
            "1.5",
            "--failure-at",
            "1893456000",
            "--source",
            "external",
        ]),
        "--probability 1.5 is outside [0, 1]",
    );
    refused(
        &with(&[
            "predict",
            "orders",
            "--probability",
            "0.5",
            "--failure-at",
            "soon",
            "--source",
            "external",
        ]),
        "soon",
    );
    refused(
        &with(&["rollback", "orders", "--to", "yesterday", "--reason", "x"]),
        "yesterday",
    );
    refused(
        &with(&["rollback", "nope", "--reason", "bad deploy"]),
        "no shadow named nope",
    );
    refused(
        &with(&[
            "rollback",
            "orders",
            "--reason",
            "bad deploy",
            "--location",
            "cell-z",
        ]),
        "has no location cell-z",
    );
    refused(
        &with(&[
            "add",
            "web",
            "--host",
            "db-9",
            "--path",
            "srv/web.db",
            "--type",
            "full",
            "--dir",
            "var/shadow/web",
        ]),
        "db-9 has never enrolled",
    );
    refused(
        &with(&[
            "add",
            "web",
            "--host",
            "db-1",
            "--path",
            "srv/web",
            "--kind",
            "dir",
            "--type",
            "full",
            "--dir",
            "srv/web/shadow",
        ]),
        "overlaps the resource",
    );
    refused(
        &with(&[
            "add",
            "web",
            "--host",
            "db-1",
            "--path",
            "srv/web.db",
            "--type",
            "full",
            "--dir",
            "var/shadow/web",
            "--location",
            "cell-b",
        ]),
        "--location cell-b: give ID=PATH",
    );

    // The server's points, failure and history verbs. No agent runs here: no point yet.
    let p = json(&with(&["points", "orders", "--output", "json"]));
    assert_eq!(p["name"], "orders", "{p}");
    assert_eq!(p["points"], serde_json::json!([]), "{p}");
    let o = with(&["points", "orders"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("orders has no point yet"), "{}", text(&o));

    let d = json(&with(&[
        "failure",
        "orders",
        "--reason",
        "checksum errors",
        "--failed-at",
        "2026-12-05T18:20:00Z",
        "--location",
        "primary",
        "--output",
        "json",
    ]));
    assert_eq!(d["name"], "orders", "{d}");
    let h = json(&with(&[
        "history", "orders", "--limit", "50", "--output", "json",
    ]));
    assert_eq!(h["name"], "orders", "{h}");
    let kinds: Vec<&str> = h["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    // The failure reached the task: without a point there is nothing to restore, said so.
    assert!(
        kinds.iter().any(|k| k.starts_with("shadow.rollback.")),
        "{kinds:?}"
    );
    assert!(kinds.contains(&"shadow.declared"), "{kinds:?}");
    let one = json(&with(&[
        "history", "orders", "--limit", "1", "--output", "json",
    ]));
    assert_eq!(one["events"].as_array().unwrap().len(), 1, "{one}");
    let o = with(&["history", "orders"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("Events, newest first") && text(&o).contains("shadow.declared"),
        "{}",
        text(&o)
    );

    // Their bad input, each named, exit 2.
    refused(
        &with(&["failure", "nope", "--reason", "disk gone"]),
        "no shadow named nope",
    );
    refused(
        &with(&["failure", "orders", "--reason", "x", "--failed-at", "soon"]),
        "soon",
    );
    refused(
        &with(&[
            "failure",
            "orders",
            "--reason",
            "x",
            "--failed-at",
            "2999-01-01T00:00:00Z",
        ]),
        "in the future",
    );
    refused(
        &with(&["failure", "orders", "--reason", "x", "--location", "cell-z"]),
        "has no location cell-z",
    );
    refused(&with(&["failure", "orders", "--reason", " "]), "reason");
    refused(&with(&["failure", "orders"]), "--reason");
    refused(&with(&["history", "orders", "--limit", "0"]), "--limit");
    refused(&with(&["history", "nope"]), "no shadow named nope");
    refused(&with(&["points", "nope"]), "no shadow named nope");
    refused(&with(&["points", "Bad!"]), "not a shadow name");
    refused(&with(&["points"]), "<NAME>");
    refused(&with(&["points", "orders", "--dir", "var/x"]), "--dir");

    // --help teaches each verb.
    for (verb, needle) in [
        ("failure", "latest point at or before --failed-at"),
        ("history", "newest first"),
        ("points", "server-managed shadow"),
    ] {
        let o = run(&["shadow", verb, "--help"]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        assert!(text(&o).contains(needle), "{verb}: {}", text(&o));
    }

    // Remove: the shadow is marked and its task stops it.
    let d = json(&with(&["remove", "uploads", "--output", "json"]));
    assert!(d["removed_at_ms"].is_i64(), "{d}");
    refused(&with(&["remove", "nope"]), "no shadow named nope");
}
