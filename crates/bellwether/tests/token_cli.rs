//! `bellwether token create|list|revoke|audit` against a real `bellwether server` process:
//! the admin makes a viewer token, the viewer reads but cannot change, the refusal shows in
//! the audit log, and a revoked token stops working.

mod support;

use std::process::{Command, Output, Stdio};

use support::*;

const OP: &str = "operator-token-for-token-cli-01";
const ENROL: &str = "enrol-token-for-token-cli-0001";

fn cli(server: &Server, token: &str, args: &[&str]) -> Output {
    Command::new(EXE)
        .args(args)
        .env("BELLWETHER_SERVER", &server.url)
        .env("BELLWETHER_TOKEN", token)
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

#[test]
fn an_admin_makes_and_revokes_a_viewer_whose_refusals_are_audited() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path(), &Backend::Sqlite, "127.0.0.1:0", OP, ENROL);
    let data_dir = server.data_dir.display().to_string();
    let out = run(&["token", "show", "--kind", "admin", "--data-dir", &data_dir]);
    assert_ok("token show --kind admin", &out);
    let admin = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(admin.len(), 64, "a generated admin token");

    // Only an admin makes tokens; the token alone goes to stdout.
    let out = cli(
        &server,
        OP,
        &["token", "create", "--role", "viewer", "--name", "grafana"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("needs an admin token"),
        "{}",
        text(&out)
    );
    let out = cli(
        &server,
        &admin,
        &["token", "create", "--role", "viewer", "--name", "grafana"],
    );
    assert_ok("token create", &out);
    let viewer = String::from_utf8(out.stdout.clone())
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(viewer.len(), 64, "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("viewer token"),
        "{}",
        text(&out)
    );
    let out = cli(
        &server,
        &admin,
        &["token", "create", "--role", "agent", "--name", "x"],
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "clap refuses the role: {}",
        text(&out)
    );

    // The viewer reads, and is refused a change with a message that says why.
    assert_ok("hosts as viewer", &cli(&server, &viewer, &["hosts"]));
    let out = cli(&server, &viewer, &["baseline", "capture", "--all"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("a viewer token may not POST /api/v1/baselines"),
        "{}",
        text(&out)
    );

    // The audit log shows the refusal, with the viewer's id and role.
    let out = cli(&server, &admin, &["token", "list", "--output", "json"]);
    assert_ok("token list", &out);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "grafana")
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    assert!(
        !text(&out).contains(&viewer),
        "a listing never shows a token"
    );
    let out = cli(&server, &viewer, &["token", "audit"]);
    assert_ok("token audit", &out);
    let audit = text(&out);
    let line = audit
        .lines()
        .find(|l| l.contains("POST /api/v1/baselines"))
        .unwrap_or_else(|| panic!("no refusal in the audit log:\n{audit}"));
    assert!(
        line.contains(&format!(" {id} ")) && line.contains("viewer") && line.ends_with("403"),
        "{line}"
    );

    // Revoked: the token stops working at once.
    let out = cli(&server, &admin, &["token", "revoke", &id.to_string()]);
    assert_ok("token revoke", &out);
    assert!(
        text(&out).contains(&format!("Revoked viewer token {id} (grafana)")),
        "{}",
        text(&out)
    );
    let out = cli(&server, &viewer, &["hosts"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("unknown or revoked token"),
        "{}",
        text(&out)
    );
}
