//! Issue 9: labels carried escape sequences and newlines from an agent into `bellwether hosts`.
//! A real server, a host enrolled with hostile labels and profile strings, and the real CLI:
//! the human output shows every control character escaped.

mod support;

use serde_json::json;
use support::*;

/// Every byte of `out` is printable or a newline, and it has exactly `lines` lines.
fn assert_clean(what: &str, out: &std::process::Output, lines: usize) -> String {
    assert_ok(what, out);
    let text = String::from_utf8(out.stdout.clone()).unwrap();
    let bad: Vec<char> = text
        .chars()
        .filter(|&c| c != '\n' && (c.is_control() || ('\u{202a}'..='\u{202e}').contains(&c)))
        .collect();
    assert!(
        bad.is_empty(),
        "{what}: control characters {bad:?} in\n{text}"
    );
    assert_eq!(text.lines().count(), lines, "{what}:\n{text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_from_agents_are_escaped_in_human_output() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(
        tmp.path(),
        &Backend::Sqlite,
        "127.0.0.1:0",
        "operator-token-human-out",
        "enrol-token-human-output",
    );
    let http = reqwest::Client::new();
    let enrolled: serde_json::Value = http
        .post(format!("{}/api/v1/enrol", server.url))
        .bearer_auth(&server.enrol_token)
        .json(&json!({
            "name": "web-01",
            "labels": {"team": "ops\u{1b}[2J\nweb-99  fake  yes", "bell\u{7}": "x\u{202e}y"},
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let agent = enrolled["agent_token"].as_str().unwrap();
    let status = http
        .post(format!("{}/api/v1/agent/profile", server.url))
        .bearer_auth(agent)
        .json(&json!({
            "kernel": "6.1\u{1b}]0;owned\u{7}",
            "notes": ["line one\r\nline two"],
        }))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 204);

    let client = ["--server", &server.url, "--token", &server.operator_token];
    let mut args = vec!["hosts"];
    args.extend(client);
    let text = assert_clean("hosts", &run(&args), 2);
    assert!(
        text.contains(r"team=ops\u{1b}[2J\nweb-99  fake  yes"),
        "{text}"
    );
    assert!(text.contains(r"bell\u{7}=x\u{202e}y"), "{text}");

    let mut args = vec!["hosts", "show", "web-01"];
    args.extend(client);
    let text = assert_clean("hosts show", &run(&args), 9);
    assert!(
        text.contains(r"Kernel:    6.1\u{1b}]0;owned\u{7}"),
        "{text}"
    );
    assert!(text.contains(r"Note:      line one\r\nline two"), "{text}");

    let mut args = vec!["drift", "fleet"];
    args.extend(client);
    let out = run(&args);
    assert_ok("drift fleet", &out);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains('\u{1b}'), "{text}");
    assert!(text.contains(r"\u{1b}[2J\n"), "{text}");
}
