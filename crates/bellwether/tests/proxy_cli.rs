//! `bellwether proxy` as a user runs it: flags, a config file with an error, a plain TCP echo
//! service behind it, the admin API with its token, and a clean stop on SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};

/// An echo server on a free port.
fn echo_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

#[test]
fn proxies_an_echo_service_from_flags_and_stops_on_sigterm() {
    let echo = echo_server();
    let mut child = Command::new(env!("CARGO_BIN_EXE_bellwether"))
        .args([
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--backend",
        ])
        .arg(format!("echo=127.0.0.1:{echo}"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let addr = line
        .strip_prefix("listening on ")
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    line.clear();
    out.read_line(&mut line).unwrap();
    let admin = line
        .trim()
        .strip_prefix("admin api on http://")
        .unwrap()
        .to_string();
    line.clear();
    out.read_line(&mut line).unwrap();
    let token_file = line
        .trim()
        .strip_prefix("admin token in ")
        .unwrap()
        .to_string();
    let token = std::fs::read_to_string(&token_file).unwrap();
    let mut c = TcpStream::connect(&addr).unwrap();
    c.write_all(b"hello through bellwether").unwrap();
    let mut buf = [0u8; 24];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello through bellwether");
    let get = |auth: &str| {
        let mut a = TcpStream::connect(&admin).unwrap();
        write!(
            a,
            "GET /connections HTTP/1.1\r\nHost: {admin}\r\n{auth}Connection: close\r\n\r\n"
        )
        .unwrap();
        let mut resp = String::new();
        a.read_to_string(&mut resp).unwrap();
        resp
    };
    let resp = get("");
    assert!(resp.starts_with("HTTP/1.1 401"), "{resp}");
    let resp = get(&format!("Authorization: Bearer {}\r\n", token.trim()));
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(
        resp.contains("\"backend\":\"echo\"") && resp.contains("\"bytes_to_backend\":24"),
        "{resp}"
    );
    drop(c);
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
    assert!(
        !std::path::Path::new(&token_file).exists(),
        "the generated token file is removed at stop"
    );
}

#[test]
fn bad_config_and_flags_exit_2_with_the_place() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("proxy.yaml");
    std::fs::write(&cfg, "listeners:\n  - address: 127.0.0.1:0\nbackends:\n  - name: a\n    address: h:1\nhealth:\n  interval: soon\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_bellwether"))
        .arg("proxy")
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("proxy.yaml: line 7, column 13: health.interval: `soon`"),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_bellwether"))
        .args(["proxy", "--listen", "127.0.0.1:0", "--backend", "a=nohost"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`nohost` has no `:PORT`"));
    let out = Command::new(env!("CARGO_BIN_EXE_bellwether"))
        .args(["proxy", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least one backend"));
}

#[test]
fn admin_flags_protect_the_admin_api() {
    let echo = echo_server();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin.token");
    let mut child = Command::new(env!("CARGO_BIN_EXE_bellwether"))
        .args(["proxy", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .arg("--admin-token-file")
        .arg(&token_file)
        .args(["--admin-allow-host", "proxy.internal", "--backend"])
        .arg(format!("echo=127.0.0.1:{echo}"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let lines: Vec<String> = out.lines().take(3).map(Result::unwrap).collect();
    let admin = lines[1]
        .strip_prefix("admin api on http://")
        .unwrap()
        .to_string();
    assert_eq!(lines[2], format!("admin token in {}", token_file.display()));
    let token = std::fs::read_to_string(&token_file).unwrap();
    let post = |host: &str, auth: &str, ct: &str, path: &str, body: &str| {
        let mut a = TcpStream::connect(&admin).unwrap();
        write!(
            a,
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {auth}\r\nContent-Type: {ct}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut resp = String::new();
        a.read_to_string(&mut resp).unwrap();
        resp[9..12].to_string()
    };
    let t = token.trim();
    let json = "application/json";
    assert_eq!(
        post(
            &admin,
            "wrong-token-wrong-token",
            json,
            "/backends/echo",
            r#"{"weight":1}"#
        ),
        "401"
    );
    assert_eq!(
        post(&admin, t, "text/plain", "/backends/echo", r#"{"weight":1}"#),
        "415"
    );
    assert_eq!(
        post("evil.example", t, json, "/backends/echo", r#"{"weight":1}"#),
        "421"
    );
    assert_eq!(
        post(&admin, t, json, "/backends/echo/drain?timeout=NaN", ""),
        "400"
    );
    assert_eq!(
        post(
            "proxy.internal",
            t,
            json,
            "/backends/echo",
            r#"{"weight":1}"#
        ),
        "200"
    );
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(
        std::fs::read_to_string(&token_file).unwrap(),
        token,
        "a named token file is kept for the next start"
    );
    // Plain HTTP off loopback, and half a TLS pair, are refused before anything starts.
    let out = Command::new(env!("CARGO_BIN_EXE_bellwether"))
        .args([
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "0.0.0.0:0",
            "--backend",
        ])
        .arg(format!("echo=127.0.0.1:{echo}"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a loopback address") && err.contains("--insecure-admin"),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_bellwether"))
        .args(["proxy", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(["--admin-tls-cert", "c.pem", "--backend"])
        .arg(format!("echo=127.0.0.1:{echo}"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--admin-tls-key"));
}
