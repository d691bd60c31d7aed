//! `bellwether alerts add|list|test|deliveries|remove` against a real `bellwether server`
//! process and a real HTTP receiver (a thread on a free port that records each request and
//! answers 200, or 410 for the second test), and the CLI's own refusals of bad input.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;

use support::*;

const OP: &str = "operator-token-for-alerts-cli1";
const ENROL: &str = "enrol-token-for-alerts-cli-01";

fn cli(server: &str, args: &[&str]) -> Output {
    Command::new(EXE)
        .args(args)
        .env("BELLWETHER_SERVER", server)
        .env("BELLWETHER_TOKEN", OP)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A receiver answering each request with the next status of `statuses` (then 200); sends
/// each request's (path, body) on the channel.
fn receiver(statuses: Vec<u16>) -> (String, mpsc::Receiver<(String, serde_json::Value)>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut statuses = statuses.into_iter();
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            let mut len = 0;
            loop {
                let mut h = String::new();
                reader.read_line(&mut h).unwrap();
                if h == "\r\n" || h.is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            let status = statuses.next().unwrap_or(200);
            write!(
                conn,
                "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let _ = tx.send((path, serde_json::from_slice(&body).unwrap_or_default()));
        }
    });
    (url, rx)
}

#[test]
fn an_operator_adds_tests_reads_the_log_of_and_removes_a_rule() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path(), &Backend::Sqlite, "127.0.0.1:0", OP, ENROL);
    let (hook, got) = receiver(vec![200, 410]);
    let url = format!("{hook}/services/T0/B0/SECRET");

    let out = cli(
        &server.url,
        &[
            "alerts",
            "add",
            "--name",
            "oncall",
            "--format",
            "slack",
            "--url",
            &url,
            "--events",
            "rollout.host.rolled_back,mirror.*",
        ],
    );
    assert_ok("alerts add", &out);
    let said = text(&out);
    assert!(
        said.contains("Added alert rule 1 (oncall)") && !said.contains("SECRET"),
        "{said}"
    );

    let out = cli(&server.url, &["alerts", "list", "--output", "json"]);
    assert_ok("alerts list", &out);
    let rules: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rules[0]["name"], "oncall");
    assert_eq!(
        rules[0]["events"],
        serde_json::json!(["rollout.host.rolled_back", "mirror.*"])
    );
    assert_eq!(rules[0]["url"], format!("{hook}/services/…"));

    let out = cli(&server.url, &["alerts", "test", "oncall"]);
    assert_ok("alerts test", &out);
    assert!(
        text(&out).contains("Delivered a test alert of rule oncall"),
        "{}",
        text(&out)
    );
    let (path, body) = got.recv().unwrap();
    assert_eq!(path, "/services/T0/B0/SECRET");
    assert!(
        body["text"].as_str().unwrap().starts_with("alert.test"),
        "{body}"
    );

    // The receiver refuses the second: exit 1, saying why.
    let out = cli(&server.url, &["alerts", "test", "1"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("was not delivered: HTTP 410"),
        "{}",
        text(&out)
    );

    let out = cli(&server.url, &["alerts", "deliveries", "--output", "json"]);
    assert_ok("alerts deliveries", &out);
    let log: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let outcomes: Vec<&str> = log["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, vec!["failed", "delivered"]);
    let out = cli(&server.url, &["alerts", "deliveries", "--rule", "oncall"]);
    assert_ok("alerts deliveries (table)", &out);
    let table = text(&out);
    assert!(
        table.contains("OUTCOME") && table.contains("HTTP 200") && !table.contains("SECRET"),
        "{table}"
    );

    // Bad input, refused before anything is sent (exit 2), naming the flag.
    for (args, want) in [
        (
            vec!["--url", "ftp://h/x"],
            "--url: ftp://… is not an http:// or https:// URL",
        ),
        (vec!["--format", "teams"], "--format: unknown format teams"),
        (
            vec!["--events", "rolout.*"],
            "--events: rolout.* matches no event kind",
        ),
        (
            vec!["--hosts", "web 1"],
            "--hosts: web 1 is not a host name or glob",
        ),
    ] {
        let mut full = vec!["alerts", "add", "--name", "x"];
        for (flag, default) in [("--url", "http://h/"), ("--events", "rollout.*")] {
            if !args.contains(&flag) {
                full.extend([flag, default]);
            }
        }
        full.extend(args.iter().copied());
        let out = cli(&server.url, &full);
        assert_eq!(out.status.code(), Some(2), "{full:?}: {}", text(&out));
        assert!(text(&out).contains(want), "{full:?}: {}", text(&out));
    }
    let out = cli(
        &server.url,
        &[
            "alerts",
            "add",
            "--name",
            "oncall",
            "--url",
            "http://h/",
            "--events",
            "rollout.*",
        ],
    );
    assert!(
        text(&out).contains("an alert rule named oncall exists"),
        "{}",
        text(&out)
    );
    let out = cli(&server.url, &["alerts", "remove", "nope"]);
    assert!(
        !out.status.success() && text(&out).contains("unknown alert rule nope"),
        "{}",
        text(&out)
    );
    let out = cli(&server.url, &["alerts", "deliveries", "--limit", "0"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    let out = cli(&server.url, &["alerts", "remove", "oncall"]);
    assert_ok("alerts remove", &out);
    assert!(
        text(&out).contains("Removed alert rule 1 (oncall)."),
        "{}",
        text(&out)
    );
    let out = cli(&server.url, &["alerts", "list"]);
    assert_ok("alerts list (empty)", &out);
    assert!(
        text(&out).contains("No server-wide alert rules"),
        "{}",
        text(&out)
    );

    // The help teaches the kinds, the globs and the commands.
    let out = run(&["alerts", "--help"]);
    assert_ok("alerts --help", &out);
    let help = text(&out);
    for want in [
        "rollout.host.rolled_back",
        "bellwether alerts test oncall",
        "Retry-After",
        "alerts:",
    ] {
        assert!(help.contains(want), "--help lacks {want}:\n{help}");
    }
}
