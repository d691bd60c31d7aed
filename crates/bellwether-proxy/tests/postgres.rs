//! The proxy in front of real PostgreSQL clusters: planned switchover under pgbench with no
//! failed transaction, re-homing of a stateless session, graceful close of a stateful one, and
//! a client speaking garbage.

mod support;

use std::process::Command;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bellwether_proxy::config::{
    AdminState, CheckKind, HostPort, Protocol, RawBackend, RawConfig, RawListener,
};
use bellwether_proxy::ProxyHandle;
use support::{client_bin, parse_pgbench, MiniClient, PgCluster};

fn backend(name: &str, addr: &str, admin: AdminState) -> RawBackend {
    RawBackend {
        name: name.into(),
        address: HostPort(addr.into()),
        weight: 100,
        admin,
        password: None,
        role: None,
    }
}

fn start_proxy(rt: &tokio::runtime::Runtime, a: &PgCluster, b: &PgCluster) -> ProxyHandle {
    let mut raw = RawConfig::new(
        vec![RawListener {
            address: "127.0.0.1:0".into(),
            protocol: Protocol::Postgres,
            mode: Default::default(),
        }],
        vec![
            backend("a", &a.addr(), AdminState::Ready),
            backend("b", &b.addr(), AdminState::Drain),
        ],
    );
    raw.health.check = CheckKind::Postgres;
    raw.admin = Some("127.0.0.1:0".into());
    rt.block_on(ProxyHandle::start(raw.validate("test").unwrap()))
        .unwrap()
}

/// A proxy with roles in front of `a` (with `a_role`) and `b` (the other role), both ready,
/// PostgreSQL health checks and an admin API.
fn start_with_roles(
    rt: &tokio::runtime::Runtime,
    a: &PgCluster,
    b: &PgCluster,
    a_role: bellwether_proxy::Role,
) -> ProxyHandle {
    use bellwether_proxy::Role;
    let b_role = match a_role {
        Role::Primary => Role::Replica,
        Role::Replica => Role::Primary,
    };
    let mut pa = backend("a", &a.addr(), AdminState::Ready);
    pa.role = Some(a_role);
    let mut pb = backend("b", &b.addr(), AdminState::Ready);
    pb.role = Some(b_role);
    let mut raw = RawConfig::new(
        vec![RawListener::new("127.0.0.1:0", Protocol::Postgres)],
        vec![pa, pb],
    );
    raw.health.check = CheckKind::Postgres;
    raw.admin = Some("127.0.0.1:0".into());
    rt.block_on(ProxyHandle::start(raw.validate("test").unwrap()))
        .unwrap()
}

/// Waits for a condition the proxy reaches on its own; fails after `limit`.
fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn pgbench_sees_no_failure_across_a_planned_switchover() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("bellwether_proxy=debug")
        .with_test_writer()
        .try_init();
    let a = PgCluster::start(&[]);
    let b = PgCluster::start(&[]);
    a.pgbench_init();
    b.pgbench_init();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let proxy = start_proxy(&rt, &a, &b);
    let port = proxy.listen_addrs()[0].port();
    let bench = Command::new(client_bin("pgbench", "postgresql-contrib"))
        .args([
            "-n",
            "-c",
            "4",
            "-j",
            "2",
            "-T",
            "6",
            "-M",
            "simple",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-p",
        ])
        .arg(port.to_string())
        .arg("postgres")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pa = proxy.pool().get("a").unwrap();
    let pb = proxy.pool().get("b").unwrap();
    wait_for("traffic on a", Duration::from_secs(20), || {
        pa.metrics.queries.load(Relaxed) > 500
    });
    assert_eq!(proxy.registry().on_backend("a").len(), 4);
    // The planned switchover: b takes new sessions, a's sessions leave at their boundaries.
    proxy
        .set_backend("b", None, Some(AdminState::Ready))
        .unwrap();
    proxy
        .set_backend("a", None, Some(AdminState::Drain))
        .unwrap();
    let outcome = rt.block_on(proxy.wait_drained("a", Duration::from_secs(10)));
    assert_eq!(outcome.forced, 0, "{outcome:?}");
    let on_b = proxy.registry().on_backend("b").len();
    let dbg = format!(
        "{outcome:?} {:?}\n{:?}",
        proxy
            .registry()
            .view()
            .iter()
            .map(|c| (c.id, c.backend.clone(), c.rehomes))
            .collect::<Vec<_>>(),
        proxy
            .pool()
            .view()
            .iter()
            .map(|b| (
                b.name.clone(),
                b.metrics.active_connections,
                b.metrics.connects
            ))
            .collect::<Vec<_>>()
    );
    let before = pb.metrics.queries.load(Relaxed);
    let out = bench.wait_with_output().unwrap();
    let r = parse_pgbench(&out);
    assert_eq!(on_b, 4, "{dbg}");
    assert!(r.success, "pgbench failed:\n{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.failed, 0, "{}", r.stdout);
    assert!(
        !r.aborted_clients,
        "a client was disconnected:\n{}",
        r.stderr
    );
    assert!(r.processed > 100, "{}", r.stdout);
    assert!(
        pb.metrics.queries.load(Relaxed) > before,
        "b served the rest"
    );
    assert_eq!(pa.metrics.rehomed_out.load(Relaxed), 4, "{dbg}");
    assert_eq!(pb.metrics.rehomed_in.load(Relaxed), 4, "{dbg}");
    assert_eq!(pa.metrics.graceful_closes.load(Relaxed), 0);
    assert_eq!(
        pa.metrics.query_errors.load(Relaxed) + pb.metrics.query_errors.load(Relaxed),
        0
    );
    rt.block_on(proxy.shutdown());
}

#[test]
fn stateless_session_moves_and_stateful_session_closes_gracefully() {
    let a = PgCluster::start(&[]);
    let b = PgCluster::start(&[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let proxy = start_proxy(&rt, &a, &b);
    let addr = proxy.listen_addrs()[0].to_string();
    let mut plain = MiniClient::connect(&addr);
    let mut with_state = MiniClient::connect(&addr);
    assert_eq!(
        plain.query("SELECT current_setting('port')").unwrap(),
        vec![a.port.to_string()]
    );
    with_state.query("SET work_mem = '8MB'").unwrap();
    // A transaction in progress keeps the stateless session where it is until it ends.
    plain.query("BEGIN").unwrap();
    let conns = proxy.registry().view();
    assert!(conns.iter().any(|c| c.in_transaction), "{conns:?}");
    assert!(conns.iter().any(|c| c.stateful.is_some()), "{conns:?}");
    proxy
        .set_backend("b", None, Some(AdminState::Ready))
        .unwrap();
    proxy
        .set_backend("a", None, Some(AdminState::Drain))
        .unwrap();
    assert_eq!(
        plain.query("SELECT current_setting('port')").unwrap(),
        vec![a.port.to_string()],
        "moved inside a transaction"
    );
    plain.query("COMMIT").unwrap();
    // Same client connection, now served by b.
    wait_for("the plain session on b", Duration::from_secs(10), || {
        proxy.registry().on_backend("b").len() == 1
    });
    assert_eq!(
        plain.query("SELECT current_setting('port')").unwrap(),
        vec![b.port.to_string()]
    );
    // The stateful session was told, with SQLSTATE 57P01, and closed.
    let msg = with_state.read_msg().unwrap();
    assert_eq!(msg.tag, b'E');
    assert_eq!(
        bellwether_proxy::pg::error_code(&msg.body).as_deref(),
        Some("57P01")
    );
    let text = bellwether_proxy::pg::error_field(&msg.body, b'M').unwrap();
    assert!(text.contains("holds state"), "{text}");
    assert!(
        with_state.read_msg().is_err(),
        "connection closed after the notice"
    );
    assert_eq!(
        proxy
            .pool()
            .get("a")
            .unwrap()
            .metrics
            .graceful_closes
            .load(Relaxed),
        1
    );
    rt.block_on(proxy.shutdown());
}

#[test]
fn garbage_after_startup_is_disconnected_without_hurting_others() {
    let a = PgCluster::start(&[]);
    let b = PgCluster::start(&[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let proxy = start_proxy(&rt, &a, &b);
    let addr = proxy.listen_addrs()[0].to_string();
    let mut good = MiniClient::connect(&addr);
    let mut bad = MiniClient::connect(&addr);
    use std::io::Write;
    bad.s
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let msg = bad.read_msg().unwrap();
    assert_eq!(msg.tag, b'E');
    assert_eq!(
        bellwether_proxy::pg::error_code(&msg.body).as_deref(),
        Some("08P01")
    );
    assert!(bad.read_msg().is_err());
    assert_eq!(good.query("SELECT 41 + 1").unwrap(), vec!["42".to_string()]);
    assert_eq!(
        proxy
            .pool()
            .get("a")
            .unwrap()
            .metrics
            .protocol_errors
            .load(Relaxed),
        1
    );
    // A garbage startup packet is refused too.
    let mut raw = std::net::TcpStream::connect(&addr).unwrap();
    raw.write_all(b"\x00\x00\x00\x08\x00\x01\x00\x00").unwrap();
    let mut buf = Vec::new();
    use std::io::Read;
    raw.read_to_end(&mut buf).unwrap();
    assert_eq!(buf.first(), Some(&b'E'));
    assert_eq!(good.query("SELECT 1").unwrap(), vec!["1".to_string()]);
    rt.block_on(proxy.shutdown());
}

#[test]
fn unreachable_backend_is_reported_and_skipped() {
    let a = PgCluster::start(&[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dead = format!("127.0.0.1:{}", support::free_port());
    let mut raw = RawConfig::new(
        vec![RawListener {
            address: "127.0.0.1:0".into(),
            protocol: Protocol::Postgres,
            mode: Default::default(),
        }],
        vec![
            backend("dead", &dead, AdminState::Ready),
            backend("a", &a.addr(), AdminState::Ready),
        ],
    );
    raw.health.check = CheckKind::Postgres;
    raw.health.interval = bellwether_proxy::config::Dur(Duration::from_millis(100));
    raw.health.fall = 2;
    let proxy = rt
        .block_on(ProxyHandle::start(raw.validate("test").unwrap()))
        .unwrap();
    let addr = proxy.listen_addrs()[0].to_string();
    // Every session lands on `a`, whether or not the checks have caught up yet.
    for _ in 0..4 {
        let mut c = MiniClient::connect(&addr);
        assert_eq!(
            c.query("SELECT current_setting('port')").unwrap(),
            vec![a.port.to_string()]
        );
    }
    wait_for("dead marked down", Duration::from_secs(10), || {
        !proxy.pool().get("dead").unwrap().health().up
    });
    let view = proxy.pool().view();
    let d = view.iter().find(|b| b.name == "dead").unwrap();
    assert!(!d.healthy);
    assert!(
        d.last_error.as_deref().unwrap_or("").contains("refused"),
        "{d:?}"
    );
    assert_eq!(
        d.admin,
        AdminState::Ready,
        "health never rewrites the admin state"
    );
    rt.block_on(proxy.shutdown());
}

#[test]
fn sessions_re_home_to_a_scram_server_with_the_configured_password() {
    let a = PgCluster::start(&[]);
    let b = PgCluster::start(&[]);
    a.pgbench_init();
    b.pgbench_init();
    a.require_scram("s3cret");
    b.require_scram("s3cret");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut ra = backend("a", &a.addr(), AdminState::Ready);
    let mut rb = backend("b", &b.addr(), AdminState::Drain);
    ra.password = Some("s3cret".into());
    rb.password = Some("s3cret".into());
    let mut raw = RawConfig::new(
        vec![RawListener {
            address: "127.0.0.1:0".into(),
            protocol: Protocol::Postgres,
            mode: Default::default(),
        }],
        vec![ra, rb],
    );
    raw.health.check = CheckKind::Postgres;
    let proxy = rt
        .block_on(ProxyHandle::start(raw.validate("test").unwrap()))
        .unwrap();
    let port = proxy.listen_addrs()[0].port();
    // pgbench authenticates with SCRAM to a through the proxy (relayed untouched).
    let bench = Command::new(client_bin("pgbench", "postgresql-contrib"))
        .env("PGPASSWORD", "s3cret")
        .args([
            "-n",
            "-S",
            "-c",
            "3",
            "-j",
            "1",
            "-T",
            "4",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-p",
        ])
        .arg(port.to_string())
        .arg("postgres")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pa = proxy.pool().get("a").unwrap();
    let pb = proxy.pool().get("b").unwrap();
    wait_for("traffic on a", Duration::from_secs(20), || {
        pa.metrics.queries.load(Relaxed) > 200
    });
    proxy
        .set_backend("b", None, Some(AdminState::Ready))
        .unwrap();
    proxy
        .set_backend("a", None, Some(AdminState::Drain))
        .unwrap();
    // The proxy itself authenticates to b with SCRAM to move each session.
    let outcome = rt.block_on(proxy.wait_drained("a", Duration::from_secs(10)));
    assert_eq!(
        outcome.forced,
        0,
        "{outcome:?} {:?}",
        pb.health().last_error
    );
    let r = parse_pgbench(&bench.wait_with_output().unwrap());
    assert!(
        r.success && r.failed == 0 && !r.aborted_clients,
        "{}\n{}",
        r.stdout,
        r.stderr
    );
    assert_eq!(pb.metrics.rehomed_in.load(Relaxed), 3);
    assert!(pb.metrics.queries.load(Relaxed) > 0);
    rt.block_on(proxy.shutdown());
}

#[test]
fn cancel_request_reaches_the_session_after_it_moved() {
    let a = PgCluster::start(&[]);
    let b = PgCluster::start(&[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let proxy = start_proxy(&rt, &a, &b);
    let addr = proxy.listen_addrs()[0].to_string();
    let mut c = MiniClient::connect(&addr);
    let key = c.key.expect("the proxy passes BackendKeyData through");
    proxy
        .set_backend("b", None, Some(AdminState::Ready))
        .unwrap();
    proxy
        .set_backend("a", None, Some(AdminState::Drain))
        .unwrap();
    wait_for("the session on b", Duration::from_secs(10), || {
        proxy.registry().on_backend("b").len() == 1
    });
    assert_eq!(
        c.query("SELECT current_setting('port')").unwrap(),
        vec![b.port.to_string()]
    );
    // A long query on b, cancelled with the key the client got from a.
    use std::io::Write;
    c.s.write_all(&bellwether_proxy::pg::encode_query("SELECT pg_sleep(60)"))
        .unwrap();
    wait_for("the query to run", Duration::from_secs(10), || {
        b.psql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%'") == "1"
    });
    let started = Instant::now();
    let mut cancel = std::net::TcpStream::connect(&addr).unwrap();
    cancel
        .write_all(&bellwether_proxy::pg::encode_cancel(key.0, key.1))
        .unwrap();
    let msgs = c.read_until_ready().unwrap();
    let err = msgs
        .iter()
        .find(|m| m.tag == b'E')
        .expect("the query was cancelled");
    assert_eq!(
        bellwether_proxy::pg::error_code(&err.body).as_deref(),
        Some("57014")
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    rt.block_on(proxy.shutdown());
}

/// Sends one simple Query, shuts the write half (`shutdown(SHUT_WR)`, as `psql -c` piped
/// through some tools does) and reads everything until the server closes. Returns the tags
/// of the messages received and the number of DataRows.
fn query_then_half_close(addr: &str, sql: &str) -> (Vec<u8>, usize) {
    use std::io::Read as _;
    let mut c = MiniClient::connect(addr);
    std::io::Write::write_all(&mut c.s, &bellwether_proxy::pg::encode_query(sql)).unwrap();
    c.s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut all = Vec::new();
    c.s.read_to_end(&mut all)
        .expect("the response, then the server's close");
    let (mut tags, mut rows, mut at) = (Vec::new(), 0, 0);
    while at + 5 <= all.len() {
        let len = i32::from_be_bytes([all[at + 1], all[at + 2], all[at + 3], all[at + 4]]) as usize;
        if all[at] == b'D' {
            rows += 1;
        } else {
            tags.push(all[at]);
        }
        at += 1 + len;
    }
    assert_eq!(at, all.len(), "the stream ends on a message boundary");
    (tags, rows)
}

#[test]
fn a_client_that_half_closes_after_its_query_gets_the_whole_response() {
    let a = PgCluster::start(&[]);
    let b = PgCluster::start(&[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let proxy = start_proxy(&rt, &a, &b);
    let addr = proxy.listen_addrs()[0].to_string();
    // More rows than one copy buffer holds, so the answer takes many reads and writes.
    let sql = "SELECT repeat('x', 100) FROM generate_series(1, 20000)";
    let direct = query_then_half_close(&a.addr(), sql);
    assert_eq!(direct.1, 20000, "direct: {:?}", direct.0);
    let proxied = query_then_half_close(&addr, sql);
    assert_eq!(proxied, direct, "through the proxy as directly");
    assert_eq!(proxied.0, vec![b'T', b'C', b'Z']);
    wait_for(
        "the session to leave the registry",
        Duration::from_secs(10),
        || proxy.registry().is_empty(),
    );
    rt.block_on(proxy.shutdown());
}

/// Roles on PostgreSQL backends: new sessions go to the primary; when the primary changes
/// (`POST /primary`), an idle session re-homes to the new one at once, and one inside a
/// transaction finishes it on the old primary first (the switch waits for it).
#[test]
fn sessions_follow_the_primary_role_at_transaction_boundaries() {
    let a = PgCluster::start(&[]);
    let b = PgCluster::start(&[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let proxy = start_with_roles(&rt, &a, &b, bellwether_proxy::Role::Replica);
    let addr = proxy.listen_addrs()[0].to_string();
    let port = |c: &mut MiniClient| c.query("SELECT current_setting('port')").unwrap()[0].clone();
    // Every new session goes to the primary, b, whatever the weights.
    let mut idle = MiniClient::connect(&addr);
    let mut in_tx = MiniClient::connect(&addr);
    for c in [&mut idle, &mut in_tx] {
        assert_eq!(port(c), b.port.to_string());
    }
    in_tx.query("BEGIN").unwrap();
    assert_eq!(port(&mut in_tx), b.port.to_string());
    let token = proxy.admin_token().unwrap().token().to_string();
    let admin = proxy.admin_addr().unwrap();
    let switch = std::thread::spawn(move || {
        support::admin_http(
            admin,
            Some(&token),
            "POST",
            "/primary",
            r#"{"backend": "a", "wait": "10s"}"#,
        )
    });
    wait_for("the idle session on a", Duration::from_secs(10), || {
        proxy.registry().on_backend("a").len() == 1
    });
    assert_eq!(port(&mut idle), a.port.to_string());
    // The transaction is still on b until it ends.
    assert_eq!(port(&mut in_tx), b.port.to_string());
    in_tx.query("COMMIT").unwrap();
    let (status, body) = switch.join().unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["previous"], "b", "{v}");
    assert_eq!(v["previous_sessions"]["busy_at_start"], 1, "{v}");
    assert_eq!(v["previous_sessions"]["forced"], 0, "{v}");
    assert_eq!(port(&mut in_tx), a.port.to_string());
    let view = proxy.pool().view();
    assert_eq!(view[0].role, Some(bellwether_proxy::Role::Primary));
    assert_eq!(view[1].role, Some(bellwether_proxy::Role::Replica));
    assert_eq!(view[0].metrics.rehomed_in, 2);
    // A bad request changes nothing.
    let token = proxy.admin_token().unwrap().token().to_string();
    for (body, want) in [
        (r#"{"backend": "nope"}"#, 404),
        (r#"{"backend": "b", "wait": "-1"}"#, 400),
        (r#"{"backend": "b", "fence": "yes"}"#, 400),
        (r#"{"primary": "b"}"#, 400),
    ] {
        let (s, text) = support::admin_http(admin, Some(&token), "POST", "/primary", body);
        assert_eq!(s, want, "{body}: {text}");
    }
    assert_eq!(proxy.pool().primary().unwrap().name, "a");
}

/// The primary's postmaster dies (SIGKILL) under four sessions, and the proxy is then pointed
/// at the other server, as the mirroring engine does after a switch. What each client sees:
/// - a plain read in flight is sent again to the new primary and answered from there (its
///   server said "terminating connection due to unexpected postmaster exit", or nothing);
/// - an idle session without state moves and its next query runs on the new primary;
/// - a write in flight is not sent again (its outcome is unknown): the client gets an error;
/// - an idle session that holds state (a `SET`) is not moved: it is closed.
#[test]
fn a_read_in_flight_and_idle_sessions_outlive_a_dead_primary() {
    let a = PgCluster::start(&[]);
    let b = PgCluster::start(&[]);
    a.psql("CREATE TABLE w (x int)");
    b.psql("CREATE TABLE w (x int)");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let proxy = start_with_roles(&rt, &a, &b, bellwether_proxy::Role::Primary);
    let addr = proxy.listen_addrs()[0].to_string();
    let port = |c: &mut MiniClient| c.query("SELECT current_setting('port')").unwrap()[0].clone();
    let mut idle = MiniClient::connect(&addr);
    let mut reader = MiniClient::connect(&addr);
    let mut writer = MiniClient::connect(&addr);
    let mut stateful = MiniClient::connect(&addr);
    for c in [&mut idle, &mut reader, &mut writer, &mut stateful] {
        assert_eq!(port(c), a.port.to_string());
    }
    stateful.query("SET work_mem = '1MB'").unwrap();
    // The read and the write are sent and left waiting on a.
    let send = |c: &mut MiniClient, sql: &str| {
        use std::io::Write;
        c.s.write_all(&bellwether_proxy::pg::encode_query(sql))
            .unwrap()
    };
    // Long on a, at once anywhere else.
    let sleep = format!(
        "pg_sleep(CASE current_setting('port') WHEN '{}' THEN 30 ELSE 0 END)",
        a.port
    );
    send(
        &mut reader,
        &format!("SELECT current_setting('port') FROM {sleep}"),
    );
    send(&mut writer, &format!("INSERT INTO w SELECT 1 FROM {sleep}"));
    wait_for(
        "both statements running on a",
        Duration::from_secs(30),
        || a.psql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%THEN 30 ELSE%'") == "3",
    );
    let pid = a.pid();
    let killed = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    // The engine's switch, once it has judged a down: b becomes the primary.
    let (status, body) = support::admin_http(
        proxy.admin_addr().unwrap(),
        Some(proxy.admin_token().unwrap().token()),
        "POST",
        "/primary",
        r#"{"backend": "b", "wait": "0s"}"#,
    );
    assert_eq!(status, 200, "{body}");
    // The read is answered by b, as if nothing had happened (its sleep ran again there).
    let msgs = reader.read_until_ready().expect("the read is answered");
    assert!(
        !msgs.iter().any(|m| m.tag == b'E'),
        "{:?}",
        msgs.iter()
            .filter(|m| m.tag == b'E')
            .map(|m| bellwether_proxy::pg::error_field(&m.body, b'M'))
            .collect::<Vec<_>>()
    );
    let row = msgs.iter().find(|m| m.tag == b'D').expect("a row");
    assert!(
        String::from_utf8_lossy(&row.body).ends_with(&b.port.to_string()),
        "{row:?}"
    );
    assert_eq!(port(&mut reader), b.port.to_string());
    assert_eq!(port(&mut idle), b.port.to_string());
    // The write's outcome is unknown: the client is told, not answered from b.
    let w = writer.read_until_ready();
    assert!(
        w.as_ref().map_or(true, |m| m.iter().any(|m| m.tag == b'E')),
        "{w:?}"
    );
    assert_eq!(b.psql("SELECT count(*) FROM w"), "0");
    // The session with state is closed rather than moved without it.
    assert!(stateful.query("SHOW work_mem").is_err());
    let view = proxy.pool().view();
    assert_eq!(view[0].name, "a");
    assert_eq!(view[0].metrics.retried, 1, "{:?}", view[0].metrics);
    assert_eq!(proxy.registry().on_backend("b").len(), 2);
    a.stop();
}

/// A client that says Terminate and leaves its socket open: the server closing after it is
/// the session's end, not the server's death. Before, the proxy read the server's close
/// first, took it for a death and moved the idle session to another backend (counted as a
/// re-home: the planned-switchover test counted five for four pgbench sessions when
/// pgbench's setup connection ended during the drain).
#[test]
fn a_server_closing_after_the_clients_terminate_is_not_a_death() {
    let a = PgCluster::start(&[]);
    let b = PgCluster::start(&[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let proxy = start_proxy(&rt, &a, &b);
    // b may take a session that moves.
    proxy
        .set_backend("b", None, Some(AdminState::Ready))
        .unwrap();
    let addr = proxy.listen_addrs()[0].to_string();
    let pa = proxy.pool().get("a").unwrap();
    let pb = proxy.pool().get("b").unwrap();
    for _ in 0..5 {
        let mut c = MiniClient::connect(&addr);
        c.query("SELECT 1").unwrap();
        std::io::Write::write_all(&mut c.s, &bellwether_proxy::pg::encode_message(b'X', &[]))
            .unwrap();
        // The proxy closes the client once the session ended; the socket stays open here
        // until then.
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(&mut c.s, &mut rest);
        assert!(rest.is_empty(), "nothing after Terminate: {rest:?}");
    }
    wait_for(
        "the sessions to leave the registry",
        Duration::from_secs(10),
        || proxy.registry().is_empty(),
    );
    let moved = (
        pa.metrics.rehomed_out.load(Relaxed),
        pb.metrics.rehomed_in.load(Relaxed),
    );
    assert_eq!(moved, (0, 0), "a session that said Terminate was moved");
    rt.block_on(proxy.shutdown());
}
