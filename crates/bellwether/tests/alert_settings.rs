//! `bellwether server --alert-…` flags and the same keys in `--config FILE`: the alert
//! dispatcher's retries, backoff, timeout, poll, concurrency and the delivery log's
//! retention, each checked with an error that names the flag, or the file, line and key.

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use support::*;

fn bw(args: &[&str]) -> Output {
    let mut cmd = Command::new(EXE);
    cmd.args(args).stdin(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("BELLWETHER_") {
            cmd.env_remove(k);
        }
    }
    cmd.output().unwrap()
}

fn write(dir: &Path, text: &str) -> String {
    let p = dir.join("server.toml");
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
fn alert_keys_in_a_file_are_in_effect_and_flags_win() {
    let tmp = tempfile::tempdir().unwrap();
    let f = write(
        tmp.path(),
        "alert_attempts = 3\nalert_backoff = \"500ms\"\nalert_backoff_max = \"1m\"\nalert_timeout = \"5s\"\nalert_poll = \"250ms\"\nalert_concurrency = 4\nalert_log_keep_for = \"7d\"\nalert_log_keep_last = 500\n",
    );
    let out = bw(&[
        "server",
        "--config",
        &f,
        "--alert-concurrency",
        "8",
        "--print-config",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    for (key, value) in [
        ("alert_attempts", "\"3\""),
        ("alert_backoff", "\"500ms\""),
        ("alert_backoff_max", "\"1m\""),
        ("alert_timeout", "\"5s\""),
        ("alert_poll", "\"250ms\""),
        ("alert_log_keep_for", "\"7d\""),
        ("alert_log_keep_last", "\"500\""),
    ] {
        let line = printed
            .lines()
            .find(|l| l.starts_with(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("no {key} in:\n{printed}"));
        assert!(line.starts_with(&format!("{key} = {value}")), "{line}");
        assert!(line.contains("file"), "{line}");
    }
    let line = printed
        .lines()
        .find(|l| l.starts_with("alert_concurrency = "))
        .unwrap();
    assert!(
        line.starts_with("alert_concurrency = \"8\"") && line.contains("flag"),
        "{line}"
    );
}

#[test]
fn bad_alert_values_name_the_file_line_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    for (text, line, key, why) in [
        (
            "alert_attempts = 0\n",
            1,
            "alert_attempts",
            "0 is out of range: it must be 1 to 100",
        ),
        (
            "alert_attempts = \"many\"\n",
            1,
            "alert_attempts",
            "is not a whole number",
        ),
        (
            "alert_poll = \"1ms\"\n",
            1,
            "alert_poll",
            "1ms is out of range: it must be 10ms to 1m",
        ),
        ("alert_timeout = \"soon\"\n", 1, "alert_timeout", "soon"),
        (
            "alert_poll = \"1s\"\nalert_concurrency = 1000\n",
            2,
            "alert_concurrency",
            "1000 is out of range: it must be 1 to 256",
        ),
        (
            "alert_log_keep_for = \"10s\"\n",
            1,
            "alert_log_keep_for",
            "10s is out of range: it must be 1m to 3660d",
        ),
        (
            "alert_log_keep_last = 0\n",
            1,
            "alert_log_keep_last",
            "0 is out of range",
        ),
    ] {
        let f = write(tmp.path(), text);
        let out = bw(&["server", "--config", &f, "--print-config"]);
        assert_eq!(out.status.code(), Some(2), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("{f}:{line}: {key}: ")) && err.contains(why),
            "{text}: {err}"
        );
    }
}

#[test]
fn bad_alert_flags_are_refused_naming_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let out = bw(&["server", "--alert-backoff", "0ms", "--print-config"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--alert-backoff")
            && err.contains("0ms is out of range: it must be 10ms to 1d"),
        "{err}"
    );
    // Each in range, but together wrong: refused at start, naming both flags and keys.
    let data = tmp.path().join("data");
    let out = bw(&[
        "server",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
        "--alert-backoff",
        "10m",
        "--alert-backoff-max",
        "1m",
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--alert-backoff (config key alert_backoff) is 10m, longer than --alert-backoff-max (alert_backoff_max) 1m"),
        "{err}"
    );
}

#[test]
fn the_example_server_toml_names_every_alert_key() {
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/etc/bellwether/server.toml"),
    )
    .unwrap();
    for key in [
        "alert_attempts",
        "alert_backoff",
        "alert_backoff_max",
        "alert_timeout",
        "alert_poll",
        "alert_concurrency",
        "alert_log_keep_for",
        "alert_log_keep_last",
    ] {
        assert!(
            example
                .lines()
                .any(|l| l.trim_start_matches("# ").starts_with(&format!("{key} = "))),
            "packaging/etc/bellwether/server.toml has no {key}"
        );
    }
}
