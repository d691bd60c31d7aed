//! The admin API as an attacker or a careless script meets it: no token, a wrong token, a body
//! a web page could send, a foreign `Host` (DNS rebinding), bad drain timeouts; and HTTPS.
//! Every refusal leaves the backend as it was and the API alive.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bellwether_proxy::config::{
    AdminState, CheckKind, Dur, HostPort, Protocol, RawBackend, RawConfig, RawListener,
};
use bellwether_proxy::ProxyHandle;
use support::{admin_http, http_raw, Redis};

fn config(redis_port: u16) -> RawConfig {
    let mut raw = RawConfig::new(
        vec![RawListener {
            address: "127.0.0.1:0".into(),
            protocol: Protocol::Tcp,
            mode: Default::default(),
        }],
        vec![RawBackend {
            name: "r".into(),
            address: HostPort(format!("127.0.0.1:{redis_port}")),
            weight: 100,
            admin: AdminState::Ready,
            password: None,
            role: None,
        }],
    );
    raw.admin = Some("127.0.0.1:0".into());
    raw.health.check = CheckKind::Tcp;
    raw.shutdown_grace = Dur(Duration::from_secs(1));
    raw
}

fn start(rt: &tokio::runtime::Runtime, raw: RawConfig) -> ProxyHandle {
    rt.block_on(ProxyHandle::start(raw.validate("test").unwrap()))
        .unwrap()
}

/// The backend's admin state and weight as the proxy holds them.
fn state(proxy: &ProxyHandle) -> (AdminState, u32) {
    let b = proxy.pool().get("r").unwrap();
    (b.admin(), b.weight())
}

fn redis_ping(c: &mut BufReader<TcpStream>) -> String {
    c.get_mut().write_all(b"PING\r\n").unwrap();
    let mut line = String::new();
    c.read_line(&mut line).unwrap();
    line.trim_end().to_string()
}

fn token(proxy: &ProxyHandle) -> String {
    proxy.admin_token().unwrap().token().to_string()
}

#[test]
fn every_route_that_reads_or_changes_state_needs_the_token() {
    let r = Redis::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let proxy = start(&rt, config(r.port));
    let admin = proxy.admin_addr().unwrap();
    let t = token(&proxy);
    for (method, path, body) in [
        ("GET", "/backends", ""),
        ("GET", "/backends/r", ""),
        ("GET", "/connections", ""),
        (
            "POST",
            "/backends/r",
            r#"{"admin":"maintenance","weight":0}"#,
        ),
        ("POST", "/backends/r/drain?timeout=0", ""),
    ] {
        for given in [None, Some("not-the-token"), Some(&t[..t.len() - 1])] {
            let (status, answer) = admin_http(admin, given, method, path, body);
            assert_eq!(status, 401, "{method} {path} with {given:?}: {answer}");
        }
        assert_eq!(state(&proxy), (AdminState::Ready, 100), "{method} {path}");
    }
    let (_, head, _) = http_raw(
        admin,
        &format!("GET /backends HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"),
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("www-authenticate: bearer realm=\"bellwether-proxy\""),
        "{head}"
    );
    // Another scheme or a token in the wrong place is no token.
    let (status, _, _) = http_raw(
        admin,
        &format!("GET /backends HTTP/1.1\r\nHost: {admin}\r\nAuthorization: Basic {t}\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(status, 401);
    // The token opens them all; the scheme is case-insensitive.
    let (status, _, body) = http_raw(
        admin,
        &format!("GET /backends/r HTTP/1.1\r\nHost: {admin}\r\nAuthorization: bearer {t}\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = admin_http(admin, Some(&t), "POST", "/backends/r", r#"{"weight":7}"#);
    assert_eq!(status, 200, "{body}");
    assert_eq!(state(&proxy), (AdminState::Ready, 7));
    // Read-only and secret-free pages stay open for scrapers and probes.
    let (status, text) = admin_http(admin, None, "GET", "/metrics", "");
    assert_eq!(status, 200);
    assert!(
        text.contains("bellwether_proxy_backend_weight{backend=\"r\"} 7"),
        "{text}"
    );
    assert_eq!(
        admin_http(admin, None, "GET", "/healthz", ""),
        (200, "ok\n".into())
    );
    // The token is in the file the proxy logged, readable by its owner only.
    let file = proxy.admin_token().unwrap().file().to_path_buf();
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), t);
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    rt.block_on(proxy.shutdown());
    assert!(!file.exists(), "a generated token file goes with the proxy");
}

#[test]
fn bodies_must_be_json() {
    let r = Redis::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let proxy = start(&rt, config(r.port));
    let admin = proxy.admin_addr().unwrap();
    let t = token(&proxy);
    let body = r#"{"admin":"maintenance"}"#;
    for ct in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        Some("application/jsonx"),
        None,
    ] {
        let ct_line = ct
            .map(|c| format!("Content-Type: {c}\r\n"))
            .unwrap_or_default();
        let (status, _, answer) = http_raw(
            admin,
            &format!(
                "POST /backends/r HTTP/1.1\r\nHost: {admin}\r\nAuthorization: Bearer {t}\r\n{ct_line}Connection: close\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        );
        assert_eq!(status, 415, "{ct:?}: {answer}");
        assert!(answer.contains("application/json"), "{answer}");
        assert_eq!(state(&proxy), (AdminState::Ready, 100), "{ct:?}");
    }
    // A drain takes no body, but one named as text is refused as well.
    let (status, _, _) = http_raw(
        admin,
        &format!("POST /backends/r/drain?timeout=0 HTTP/1.1\r\nHost: {admin}\r\nAuthorization: Bearer {t}\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"),
    );
    assert_eq!(status, 415);
    assert_eq!(state(&proxy), (AdminState::Ready, 100));
    let (status, _, answer) = http_raw(
        admin,
        &format!(
            "POST /backends/r HTTP/1.1\r\nHost: {admin}\r\nAuthorization: Bearer {t}\r\nContent-Type: application/json; charset=utf-8\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(state(&proxy), (AdminState::Maintenance, 100));
    rt.block_on(proxy.shutdown());
}

#[test]
fn a_foreign_host_is_refused_as_dns_rebinding() {
    let r = Redis::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut raw = config(r.port);
    raw.admin_allow_hosts = vec!["Proxy.Example.Internal".into()];
    let proxy = start(&rt, raw);
    let admin = proxy.admin_addr().unwrap();
    let port = admin.port();
    let t = token(&proxy);
    let request = |host: Option<&str>| {
        let host = host.map(|h| format!("Host: {h}\r\n")).unwrap_or_default();
        let body = r#"{"admin":"drain"}"#;
        http_raw(
            admin,
            &format!(
                "POST /backends/r HTTP/1.1\r\n{host}Authorization: Bearer {t}\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        )
    };
    for host in [
        format!("attacker.example:{port}"),
        "attacker.example".into(),
        format!("localhost.attacker.example:{port}"),
        format!("127.0.0.1.nip.io:{port}"),
        "127.0.0.1:port".into(),
        "[::1".into(),
    ] {
        let (status, _, body) = request(Some(&host));
        assert_eq!(status, 421, "{host}: {body}");
        assert_eq!(state(&proxy), (AdminState::Ready, 100), "{host}");
    }
    let (status, _, body) = request(None);
    assert_eq!(status, 400, "{body}");
    assert_eq!(state(&proxy), (AdminState::Ready, 100));
    // /metrics too: a rebinding page must not read it either.
    let (status, _, _) = http_raw(
        admin,
        "GET /metrics HTTP/1.1\r\nHost: attacker.example\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 421);
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "LOCALHOST".into(),
        format!("[::1]:{port}"),
        "10.1.2.3".into(),
        format!("proxy.example.internal:{port}"),
    ] {
        let (status, _, body) = request(Some(&host));
        assert_eq!(status, 200, "{host}: {body}");
    }
    rt.block_on(proxy.shutdown());
}

#[test]
fn bad_drain_timeouts_are_refused_and_change_nothing() {
    let r = Redis::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let proxy = start(&rt, config(r.port));
    let admin = proxy.admin_addr().unwrap();
    let t = token(&proxy);
    let mut session = BufReader::new(TcpStream::connect(proxy.listen_addrs()[0]).unwrap());
    session
        .get_mut()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(redis_ping(&mut session), "+PONG");
    for (query, names) in [
        ("timeout=NaN", "timeout"),
        ("timeout=nan", "timeout"),
        ("timeout=-1", "timeout"),
        ("timeout=-0.5s", "timeout"),
        ("timeout=1e400", "timeout"),
        ("timeout=inf", "timeout"),
        ("timeout=3601", "timeout"),
        ("timeout=2h", "timeout"),
        ("timeout=", "timeout"),
        ("timeout=soon", "timeout"),
        ("timeout=5&timeout=6", "timeout"),
        ("timeuot=5", "timeuot"),
    ] {
        let (status, body) = admin_http(
            admin,
            Some(&t),
            "POST",
            &format!("/backends/r/drain?{query}"),
            "",
        );
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body.contains(names), "{query}: {body}");
        assert_eq!(state(&proxy), (AdminState::Ready, 100), "{query}");
        assert_eq!(
            redis_ping(&mut session),
            "+PONG",
            "{query}: the session stays"
        );
    }
    // The handler is alive and the state untouched.
    let (status, body) = admin_http(admin, Some(&t), "GET", "/backends/r", "");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"admin\":\"ready\""), "{body}");
    // A good value drains; a TCP session stays until the timeout closes it.
    let (status, body) = admin_http(
        admin,
        Some(&t),
        "POST",
        "/backends/r/drain?timeout=300ms",
        "",
    );
    assert_eq!(status, 200, "{body}");
    let outcome: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(outcome["forced"], 1, "{body}");
    assert!(outcome["took_ms"].as_u64().unwrap() >= 300, "{body}");
    assert_eq!(state(&proxy).0, AdminState::Drain);
    rt.block_on(proxy.shutdown());
}

#[test]
fn the_token_file_is_kept_or_created_and_checked() {
    use std::os::unix::fs::PermissionsExt as _;
    let r = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let file = dir.path().join("admin.token");
    let mut raw = config(r.port);
    raw.admin_token_file = Some(file.clone());
    // Absent: generated into it, mode 0600, and kept after the proxy stops.
    let proxy = start(&rt, raw.clone());
    let first = token(&proxy);
    assert_eq!(first.len(), 64);
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    rt.block_on(proxy.shutdown());
    assert!(file.exists());
    // Present: read, so the token survives restarts.
    let proxy = start(&rt, raw.clone());
    assert_eq!(token(&proxy), first);
    let (status, _) = admin_http(
        proxy.admin_addr().unwrap(),
        Some(&first),
        "GET",
        "/backends",
        "",
    );
    assert_eq!(status, 200);
    rt.block_on(proxy.shutdown());
    // Others may read it: refused, naming the file.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = rt
        .block_on(ProxyHandle::start(raw.clone().validate("test").unwrap()))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("admin.token") && err.contains("chmod 600"),
        "{err}"
    );
    // Too short to be a token.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&file, "secret\n").unwrap();
    let err = rt
        .block_on(ProxyHandle::start(raw.validate("test").unwrap()))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("at least 16"), "{err}");
}

/// A self-signed certificate for 127.0.0.1 and localhost, made with the `openssl` tool.
fn self_signed(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let bin = support::which("openssl").unwrap_or_else(|| {
        panic!("`openssl` is not installed: install the Debian package `openssl`")
    });
    let (cert, key) = (dir.join("admin.crt"), dir.join("admin.key"));
    let out = std::process::Command::new(bin)
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=bellwether-proxy-test",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl req failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// One HTTPS request trusting only `cert`; returns the status line and body.
async fn https(addr: SocketAddr, cert: &std::path::Path, request: String) -> String {
    use rustls::pki_types::pem::PemObject as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(cert).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn the_admin_api_speaks_https_with_a_certificate() {
    let r = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut raw = config(r.port);
    raw.admin_tls_cert = Some(cert.clone());
    raw.admin_tls_key = Some(key.clone());
    let proxy = start(&rt, raw);
    let admin = proxy.admin_addr().unwrap();
    assert_eq!(proxy.admin_url().unwrap(), format!("https://{admin}"));
    let t = token(&proxy);
    let answer = rt.block_on(https(
        admin,
        &cert,
        format!("GET /backends/r HTTP/1.1\r\nHost: {admin}\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n"),
    ));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"name\":\"r\""), "{answer}");
    let answer = rt.block_on(https(
        admin,
        &cert,
        format!("GET /backends/r HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"),
    ));
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        format!("GET /healthz HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut out = Vec::new();
    let _ = std::io::Read::read_to_end(&mut s, &mut out);
    assert!(
        !out.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&out)
    );
    rt.block_on(proxy.shutdown());
    // A key that does not exist is named at start.
    let mut raw = config(r.port);
    raw.admin_tls_cert = Some(cert);
    raw.admin_tls_key = Some(dir.path().join("missing.key"));
    let err = rt
        .block_on(ProxyHandle::start(raw.validate("test").unwrap()))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("missing.key"), "{err}");
}

#[test]
fn plain_http_admin_only_on_loopback_unless_insecure() {
    let mut raw = config(1);
    raw.admin = Some("0.0.0.0:0".into());
    let err = raw.clone().validate("proxy.yaml").unwrap_err().to_string();
    assert!(
        err.starts_with("proxy.yaml: admin: 0.0.0.0:0 is not a loopback address")
            && err.contains("--admin-tls-cert")
            && err.contains("--insecure-admin"),
        "{err}"
    );
    raw.insecure_admin = true;
    assert!(raw.clone().validate("proxy.yaml").is_ok());
    raw.insecure_admin = false;
    raw.admin_tls_cert = Some("c.pem".into());
    raw.admin_tls_key = Some("k.pem".into());
    assert!(raw.clone().validate("proxy.yaml").is_ok());
    raw.admin_tls_key = None;
    let err = raw.validate("proxy.yaml").unwrap_err().to_string();
    assert!(err.contains("admin_tls_key"), "{err}");
    let mut raw = config(1);
    raw.admin = Some("[::1]:0".into());
    assert!(raw.validate("proxy.yaml").is_ok());
}
