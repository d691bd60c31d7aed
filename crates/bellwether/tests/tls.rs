//! TLS on the control path with real processes: a server with `--tls-cert`/`--tls-key`,
//! agents and the CLI that verify it with `--ca-file` or `--pin` (and refuse a server they
//! cannot verify, exit 3), the loopback-only rule for plain HTTP, and `sandbox up --tls`.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use bellwether_drift::synth::{write_host_root, HostSpec};
use bellwether_tls::generate::{self, Written};
use support::*;

const OPERATOR: &str = "operator-token-tls-e2e-0001";
const ENROL: &str = "enrol-token-tls-e2e-00000001";
const WAIT: Duration = Duration::from_secs(30);

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs the CLI with the given environment (and no inherited BELLWETHER_* settings).
fn cli(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(EXE);
    cmd.args(args).stdin(Stdio::null());
    for k in [
        "BELLWETHER_CA_FILE",
        "BELLWETHER_PIN",
        "BELLWETHER_SERVER",
        "BELLWETHER_TOKEN",
    ] {
        cmd.env_remove(k);
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// A CA and a server certificate for 127.0.0.1 in `dir/NAME`.
fn certs(dir: &Path, name: &str) -> Written {
    generate::ca_and_server(&format!("{name} CA"), &["127.0.0.1".to_string()])
        .unwrap()
        .write_to(&dir.join(name))
        .unwrap()
}

/// Waits for the address file the server writes once listening; fails with its log if it
/// exits first.
fn wait_addr(guard: &mut Guard, file: &Path) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(a) = std::fs::read_to_string(file) {
            if !a.trim().is_empty() {
                return a.trim().to_owned();
            }
        }
        guard.assert_running();
        assert!(
            Instant::now() < deadline,
            "no address; log:\n{}",
            guard.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `bellwether server` over TLS on a free loopback port; returns it and its https URL.
fn tls_server(dir: &Path, w: &Written) -> (Guard, String) {
    let addr_file = dir.join("server.addr");
    let data = dir.join("server");
    let mut g = Guard::spawn(
        "tls server",
        &[
            "--log",
            "info",
            "server",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
            "--addr-file",
            addr_file.to_str().unwrap(),
            "--tls-cert",
            w.server_cert.to_str().unwrap(),
            "--tls-key",
            w.server_key.to_str().unwrap(),
        ],
        &[
            ("BELLWETHER_OPERATOR_TOKEN", OPERATOR),
            ("BELLWETHER_ENROL_TOKEN", ENROL),
        ],
        &dir.join("server.log"),
    );
    let addr = wait_addr(&mut g, &addr_file);
    (g, format!("https://{addr}"))
}

fn agent_args<'a>(url: &'a str, root: &'a Path, name: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "--log",
        "info",
        "agent",
        "--server",
        url,
        "--token",
        ENROL,
        "--rootfs",
        root.to_str().unwrap(),
        "--name",
        name,
        "--interval",
        "200ms",
        "--max-backoff",
        "500ms",
    ];
    v.extend_from_slice(extra);
    v
}

/// Runs an agent that must stop by itself, within `WAIT`.
fn agent_exits(
    url: &str,
    root: &Path,
    name: &str,
    extra: &[&str],
    log: &Path,
) -> (Option<i32>, String) {
    let mut g = Guard::spawn(name, &agent_args(url, root, name, extra), &[], log);
    let mut child = g.child.take().unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return (s.code(), g.log_text());
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the agent {name} kept running; log:\n{}", g.log_text());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn hosts_json(url: &str, tls: &[(&str, &str)]) -> Output {
    let mut envs = vec![("BELLWETHER_SERVER", url), ("BELLWETHER_TOKEN", OPERATOR)];
    envs.extend_from_slice(tls);
    cli(&["hosts", "--output", "json"], &envs)
}

#[test]
fn agents_and_the_cli_verify_the_server_by_ca_or_pin_and_refuse_it_otherwise() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let good = certs(dir, "good");
    let other = certs(dir, "other");
    let (mut server, url) = tls_server(dir, &good);
    let root = dir.join("root");
    write_host_root(&root, &HostSpec::generate(7, "web-01", 20)).unwrap();
    let ca = good.ca_file.to_str().unwrap();

    // The right CA: the agent enrols and its samples arrive, read back over TLS by the CLI.
    let _agent = Guard::spawn(
        "agent web-01",
        &agent_args(&url, &root, "web-01", &["--ca-file", ca]),
        &[],
        &dir.join("agent-web-01.log"),
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let out = hosts_json(&url, &[("BELLWETHER_CA_FILE", ca)]);
        assert!(out.status.success(), "{}", text(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let seen = v
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["name"] == "web-01" && h["last_seen_ms"].is_i64());
        if seen {
            break;
        }
        server.assert_running();
        assert!(
            Instant::now() < deadline,
            "web-01 never reported: {v}\n{}",
            _agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let detail = cli(
        &[
            "hosts",
            "show",
            "web-01",
            "--output",
            "json",
            "--server",
            &url,
            "--token",
            OPERATOR,
            "--ca-file",
            ca,
        ],
        &[],
    );
    assert!(detail.status.success(), "{}", text(&detail));
    let deadline = Instant::now() + WAIT;
    loop {
        let body = rest_get(&url, ca, "/metrics");
        let ingested = body
            .lines()
            .find_map(|l| l.strip_prefix("bellwether_samples_ingested_total "))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if ingested > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no samples from web-01:\n{body}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The server's pin alone is enough, in hex with colons or in base64.
    let pin = good.pin.to_string();
    let out = hosts_json(&url, &[("BELLWETHER_PIN", &pin)]);
    assert!(out.status.success(), "{}", text(&out));
    let colons = {
        let hex = pin.trim_start_matches("sha256:").to_uppercase();
        let pairs: Vec<&str> = (0..32).map(|i| &hex[2 * i..2 * i + 2]).collect();
        format!("sha256:{}", pairs.join(":"))
    };
    let out = cli(
        &[
            "hosts", "--server", &url, "--token", OPERATOR, "--pin", &colons,
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));

    // A wrong CA, a wrong pin, or the system roots (which know nothing of this CA): exit 3,
    // saying it is the certificate.
    let wrong_pin = other.pin.to_string();
    for (what, tls) in [
        (
            "another CA",
            vec![("BELLWETHER_CA_FILE", other.ca_file.to_str().unwrap())],
        ),
        ("a wrong pin", vec![("BELLWETHER_PIN", wrong_pin.as_str())]),
        ("the system roots", vec![]),
    ] {
        let out = hosts_json(&url, &tls);
        assert_eq!(out.status.code(), Some(3), "{what}: {}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!(
                "could not verify the server's certificate at {url}"
            )),
            "{what}: {err}"
        );
    }
    let out = hosts_json(&url, &[("BELLWETHER_PIN", &wrong_pin)]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("matches no --pin"),
        "{}",
        text(&out)
    );

    // Agents with a wrong CA or pin stop at once, exit 3, with the reason.
    let (code, log) = agent_exits(
        &url,
        &root,
        "web-02",
        &["--ca-file", other.ca_file.to_str().unwrap()],
        &dir.join("agent-web-02.log"),
    );
    assert_eq!(code, Some(3), "{log}");
    assert!(
        log.contains("could not verify the server's certificate"),
        "{log}"
    );
    assert!(log.contains("not signed by a trusted CA"), "{log}");
    let (code, log) = agent_exits(
        &url,
        &root,
        "web-03",
        &["--pin", &wrong_pin],
        &dir.join("agent-web-03.log"),
    );
    assert_eq!(code, Some(3), "{log}");
    assert!(log.contains("matches no --pin"), "{log}");
    // Neither enrolled.
    let out = hosts_json(&url, &[("BELLWETHER_CA_FILE", ca)]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web-01"], "{v}");

    // A CA file with a plain http URL is a mistake, not a silent downgrade: exit 2.
    let plain = url.replacen("https://", "http://", 1);
    let out = hosts_json(&plain, &[("BELLWETHER_CA_FILE", ca)]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("plain http"),
        "{}",
        text(&out)
    );
    // SIGTERM stops the TLS server cleanly, as it does a plain one.
    assert!(server.terminate(WAIT).success(), "{}", server.log_text());
}

/// A GET with the operator token over TLS, trusting `ca`: the body's text.
fn rest_get(url: &str, ca: &str, path: &str) -> String {
    let tls = bellwether_tls::ClientTls {
        ca_file: Some(PathBuf::from(ca)),
        pins: vec![],
    };
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(bellwether_tls::client_config(&tls).unwrap())
        .build()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let resp = client
            .get(format!("{url}{path}"))
            .bearer_auth(OPERATOR)
            .send()
            .await
            .unwrap();
        resp.text().await.unwrap()
    })
}

#[test]
fn plain_http_off_loopback_needs_insecure_listen_and_bad_tls_files_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = dir.join("data");
    let data = data.to_str().unwrap();
    // Refused before binding: exit 2 and the way out.
    let out = cli(
        &["server", "--listen", "0.0.0.0:0", "--data-dir", data],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to serve plain HTTP on 0.0.0.0"),
        "{err}"
    );
    assert!(
        err.contains("--tls-cert") && err.contains("--insecure-listen"),
        "{err}"
    );

    // Allowed with --insecure-listen: it starts (no traffic is sent), then stops on SIGTERM.
    let addr_file = dir.join("insecure.addr");
    let mut g = Guard::spawn(
        "insecure server",
        &[
            "server",
            "--listen",
            "0.0.0.0:0",
            "--insecure-listen",
            "--data-dir",
            data,
            "--addr-file",
            addr_file.to_str().unwrap(),
        ],
        &[],
        &dir.join("insecure.log"),
    );
    let addr = wait_addr(&mut g, &addr_file);
    assert!(addr.starts_with("0.0.0.0:"), "{addr}");
    assert!(g.terminate(WAIT).success(), "{}", g.log_text());
    assert!(
        g.log_text().contains("listening on http://0.0.0.0:"),
        "{}",
        g.log_text()
    );

    // TLS makes any address acceptable; a key that is not the certificate's is named (exit 2).
    let a = certs(dir, "a");
    let b = certs(dir, "b");
    let out = cli(
        &[
            "server",
            "--listen",
            "0.0.0.0:0",
            "--data-dir",
            data,
            "--tls-cert",
            a.server_cert.to_str().unwrap(),
            "--tls-key",
            b.server_key.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&a.server_cert.display().to_string())
            && err.contains(&b.server_key.display().to_string()),
        "{err}"
    );
    let missing = dir.join("missing.pem");
    let out = cli(
        &[
            "server",
            "--data-dir",
            data,
            "--tls-cert",
            missing.to_str().unwrap(),
            "--tls-key",
            a.server_key.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains(&format!("cannot read --tls-cert {}", missing.display())),
        "{}",
        text(&out)
    );
    let out = cli(
        &[
            "server",
            "--data-dir",
            data,
            "--tls-cert",
            missing.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "--tls-cert without --tls-key: {}",
        text(&out)
    );
}

/// Two web hosts and a learnt history: enough for a rollout to start.
const SCENARIO: &str = r#"
seed: 3
groups:
  - { name: web, count: 2, role: web, packages: { libssl3: "3.0.11-1" }, disk_free_pct: 45 }
history: { deployments: 200, seed: 3 }
"#;

#[test]
fn sandbox_up_tls_runs_the_fleet_and_a_rollout_over_https() {
    let _turn = one_sandbox_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sbx");
    let file = tmp.path().join("scenario.yaml");
    std::fs::write(&file, SCENARIO).unwrap();
    let _down = Down(&dir);
    let up = cli(
        &[
            "sandbox",
            "up",
            "--tls",
            "--scenario",
            file.to_str().unwrap(),
            "--dir",
            dir.to_str().unwrap(),
        ],
        &[],
    );
    assert!(up.status.success(), "{}", text(&up));
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).unwrap()).unwrap();
    let url = state["server_url"].as_str().unwrap().to_string();
    assert!(url.starts_with("https://127.0.0.1:"), "{state}");
    let ca = dir.canonicalize().unwrap().join("tls/ca.pem");
    assert_eq!(
        state["ca_file"].as_str(),
        Some(ca.to_str().unwrap()),
        "{state}"
    );
    let stdout = String::from_utf8_lossy(&up.stdout);
    assert!(
        stdout.contains(&format!("BELLWETHER_CA_FILE={}", ca.display())),
        "{stdout}"
    );

    let token = std::fs::read_to_string(dir.join("operator.token")).unwrap();
    let env = [
        ("BELLWETHER_SERVER", url.as_str()),
        ("BELLWETHER_TOKEN", token.trim()),
        ("BELLWETHER_CA_FILE", ca.to_str().unwrap()),
    ];
    // The plain-HTTP port is not there: the server speaks only TLS.
    let plain = cli(
        &["hosts"],
        &[
            ("BELLWETHER_SERVER", &url.replacen("https", "http", 1)),
            ("BELLWETHER_TOKEN", token.trim()),
        ],
    );
    assert!(!plain.status.success(), "{}", text(&plain));

    // A rollout starts and its first host gets version 2 through its agent, over TLS.
    let plan = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/plans/web-v2.yaml"
    );
    let start = cli(&["rollout", "start", plan], &env);
    assert!(start.status.success(), "{}", text(&start));
    let id = String::from_utf8_lossy(&start.stdout)
        .split_whitespace()
        .find(|w| w.starts_with("r-"))
        .map(|w| w.trim_end_matches('.').to_string())
        .unwrap_or_else(|| panic!("no rollout id: {}", text(&start)));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = cli(&["rollout", "status", &id, "--output", "json"], &env);
        assert!(s.status.success(), "{}", text(&s));
        let v: serde_json::Value = serde_json::from_slice(&s.stdout).unwrap();
        let applied = v["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| matches!(h["state"].as_str(), Some("baking" | "updated")));
        if applied {
            break;
        }
        assert!(Instant::now() < deadline, "no host applied over TLS: {v}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let updated = std::fs::read_dir(dir.join("hosts"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter(|e| {
            std::fs::read_to_string(e.path().join("etc/websvc/version"))
                .is_ok_and(|v| v.trim() == "2")
        })
        .count();
    assert!(updated >= 1, "no host root holds version 2");
    let abort = cli(&["rollout", "abort", &id], &env);
    assert!(abort.status.success(), "{}", text(&abort));
}
