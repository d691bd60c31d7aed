//! The proxy as a generic TCP traffic manager, in front of real Redis servers: forwarding,
//! weights, the connection registry, maintenance, passive ejection, and the admin API.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bellwether_proxy::config::{
    AdminState, CheckKind, Dur, HostPort, Protocol, RawBackend, RawConfig, RawListener,
};
use bellwether_proxy::ProxyHandle;
use support::Redis;

fn backend(name: &str, port: u16) -> RawBackend {
    RawBackend {
        name: name.into(),
        address: HostPort(format!("127.0.0.1:{port}")),
        weight: 100,
        admin: AdminState::Ready,
        password: None,
        role: None,
    }
}

fn config(backends: Vec<RawBackend>) -> RawConfig {
    let mut raw = RawConfig::new(
        vec![RawListener {
            address: "127.0.0.1:0".into(),
            protocol: Protocol::Tcp,
            mode: Default::default(),
        }],
        backends,
    );
    raw.admin = Some("127.0.0.1:0".into());
    raw.health.check = CheckKind::Tcp;
    raw.shutdown_grace = Dur(Duration::from_secs(1));
    raw
}

/// Sends one inline Redis command and reads one reply line.
fn redis_cmd(r: &mut BufReader<TcpStream>, cmd: &str) -> String {
    r.get_mut()
        .write_all(format!("{cmd}\r\n").as_bytes())
        .unwrap();
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    if let Some(n) = line.strip_prefix('$') {
        let n: i64 = n.trim().parse().unwrap();
        if n >= 0 {
            let mut v = String::new();
            r.read_line(&mut v).unwrap();
            return v.trim_end().to_string();
        }
    }
    line.trim_end().to_string()
}

/// An authorised admin API request to `proxy`.
fn http(proxy: &ProxyHandle, method: &str, path: &str, body: &str) -> (u16, String) {
    support::admin_http(
        proxy.admin_addr().unwrap(),
        Some(proxy.admin_token().unwrap().token()),
        method,
        path,
        body,
    )
}

#[test]
fn redis_through_the_proxy_with_weights_registry_and_maintenance() {
    let r1 = Redis::start();
    let r2 = Redis::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let proxy = rt
        .block_on(ProxyHandle::start(
            config(vec![backend("r1", r1.port), backend("r2", r2.port)])
                .validate("test")
                .unwrap(),
        ))
        .unwrap();
    let addr = proxy.listen_addrs()[0];
    // Weight r2 out: every connection lands on r1.
    let (status, body) = http(&proxy, "POST", "/backends/r2", r#"{"weight":0}"#);
    assert_eq!(status, 200, "{body}");
    let mut c = BufReader::new(TcpStream::connect(addr).unwrap());
    assert_eq!(redis_cmd(&mut c, "PING"), "+PONG");
    assert_eq!(redis_cmd(&mut c, "SET k v1"), "+OK");
    assert_eq!(redis_cmd(&mut c, "GET k"), "v1");
    let (_, conns) = http(&proxy, "GET", "/connections", "");
    let conns: serde_json::Value = serde_json::from_str(&conns).unwrap();
    assert_eq!(conns[0]["backend"], "r1");
    assert!(
        conns[0]["bytes_to_backend"].as_u64().unwrap() >= 20,
        "{conns}"
    );
    assert!(
        conns[0]["bytes_to_client"].as_u64().unwrap() >= 10,
        "{conns}"
    );
    // Swap the weights: new connections go to r2 (which has no key), the old one stays.
    http(&proxy, "POST", "/backends/r1", r#"{"weight":0}"#);
    http(&proxy, "POST", "/backends/r2", r#"{"weight":100}"#);
    let mut c2 = BufReader::new(TcpStream::connect(addr).unwrap());
    assert_eq!(redis_cmd(&mut c2, "GET k"), "$-1");
    assert_eq!(redis_cmd(&mut c, "GET k"), "v1");
    // Maintenance closes r1's connections now.
    let (status, _) = http(&proxy, "POST", "/backends/r1", r#"{"admin":"maintenance"}"#);
    assert_eq!(status, 200);
    let mut buf = [0u8; 16];
    c.get_mut()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(
        c.get_mut().read(&mut buf).unwrap(),
        0,
        "r1's client was closed"
    );
    assert_eq!(redis_cmd(&mut c2, "PING"), "+PONG");
    // Bad admin input gets a clear 4xx.
    let (status, body) = http(&proxy, "POST", "/backends/r1", r#"{"admin":"sleepy"}"#);
    assert_eq!(status, 400);
    assert!(body.contains("sleepy"), "{body}");
    let (status, _) = http(&proxy, "POST", "/backends/nope", r#"{"weight":1}"#);
    assert_eq!(status, 404);
    // Metrics carry both backends.
    let (status, text) = http(&proxy, "GET", "/metrics", "");
    assert_eq!(status, 200);
    assert!(
        text.contains("bellwether_proxy_connections_total{backend=\"r1\"} 1"),
        "{text}"
    );
    assert!(text
        .contains("bellwether_proxy_backend_admin_state{backend=\"r1\",state=\"maintenance\"} 1"));
    assert!(text.contains("bellwether_proxy_connect_duration_seconds_count{backend=\"r2\"} 1"));
    rt.block_on(proxy.shutdown());
}

#[test]
fn dead_backend_is_ejected_and_clients_never_see_it() {
    let r = Redis::start();
    let dead = support::free_port();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut raw = config(vec![backend("dead", dead), backend("live", r.port)]);
    raw.health.check = CheckKind::None;
    raw.ejection.consecutive_errors = 1;
    raw.ejection.base_time = Dur(Duration::from_secs(60));
    let proxy = rt
        .block_on(ProxyHandle::start(raw.validate("test").unwrap()))
        .unwrap();
    let addr = proxy.listen_addrs()[0];
    for _ in 0..6 {
        let mut c = BufReader::new(TcpStream::connect(addr).unwrap());
        assert_eq!(redis_cmd(&mut c, "PING"), "+PONG");
    }
    let view = proxy.pool().view();
    let d = view.iter().find(|b| b.name == "dead").unwrap();
    assert!(d.ejected && d.ejections == 1, "{d:?}");
    assert_eq!(
        d.metrics.connect_errors, 1,
        "ejected after the first error, then skipped"
    );
    assert!(
        d.healthy,
        "passive ejection is not the active check's verdict"
    );
    let (_, body) = http(&proxy, "GET", "/backends/dead", "");
    assert!(body.contains("\"ejected\":true"), "{body}");
    rt.block_on(proxy.shutdown());
}

#[test]
fn shutdown_waits_for_the_grace_period_then_closes() {
    let r = Redis::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut raw = config(vec![backend("r", r.port)]);
    raw.shutdown_grace = Dur(Duration::from_millis(300));
    let proxy = rt
        .block_on(ProxyHandle::start(raw.validate("test").unwrap()))
        .unwrap();
    let addr = proxy.listen_addrs()[0];
    let mut c = BufReader::new(TcpStream::connect(addr).unwrap());
    assert_eq!(redis_cmd(&mut c, "PING"), "+PONG");
    let started = std::time::Instant::now();
    rt.block_on(proxy.shutdown());
    assert!(started.elapsed() >= Duration::from_millis(300));
    let mut buf = [0u8; 4];
    assert_eq!(c.get_mut().read(&mut buf).unwrap(), 0);
    assert!(TcpStream::connect(addr).is_err(), "no longer listening");
}

/// A backend that answers only after the client's EOF: it reads everything, then sends it all
/// back followed by `end\n`, then closes (as a `wc`-like service or an HTTP/1.0 server reading
/// a body to EOF does).
fn answer_at_eof_server() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut got = Vec::new();
                if s.read_to_end(&mut got).is_ok() {
                    got.extend_from_slice(b"end\n");
                    let _ = s.write_all(&got);
                }
            });
        }
    });
    port
}

#[test]
fn a_client_that_half_closes_gets_the_whole_answer() {
    let port = answer_at_eof_server();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut raw = config(vec![backend("eof", port)]);
    raw.health.check = CheckKind::None;
    let proxy = rt
        .block_on(ProxyHandle::start(raw.validate("test").unwrap()))
        .unwrap();
    // More than a copy buffer each way.
    let request: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let run = |addr: std::net::SocketAddr| {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut w = c.try_clone().unwrap();
        let req = request.clone();
        let writer = std::thread::spawn(move || {
            w.write_all(&req).unwrap();
            w.shutdown(std::net::Shutdown::Write).unwrap();
        });
        let mut out = Vec::new();
        c.read_to_end(&mut out).unwrap();
        writer.join().unwrap();
        out
    };
    let mut expected = request.clone();
    expected.extend_from_slice(b"end\n");
    let direct = run(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    assert!(direct == expected, "direct: {} bytes", direct.len());
    let proxied = run(proxy.listen_addrs()[0]);
    assert!(
        proxied == expected,
        "proxied: {} bytes of {}",
        proxied.len(),
        expected.len()
    );
    rt.block_on(proxy.shutdown());
}

#[test]
fn a_redis_client_that_half_closes_gets_every_reply() {
    let r = Redis::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let proxy = rt
        .block_on(ProxyHandle::start(
            config(vec![backend("r", r.port)]).validate("test").unwrap(),
        ))
        .unwrap();
    let run = |addr: std::net::SocketAddr| {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut batch = String::from("PING\r\nSET a b\r\n");
        batch.push_str(&"GET a\r\n".repeat(1000));
        c.write_all(batch.as_bytes()).unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        out
    };
    let expected = format!("+PONG\r\n+OK\r\n{}", "$1\r\nb\r\n".repeat(1000));
    assert_eq!(
        run(std::net::SocketAddr::from(([127, 0, 0, 1], r.port))),
        expected
    );
    assert_eq!(run(proxy.listen_addrs()[0]), expected);
    rt.block_on(proxy.shutdown());
}
