//! The Redis listener on real servers: a primary and a replica (`--replicaof`) started on free
//! ports, clients through the proxy, switches through the admin API, the primary SIGKILLed
//! with commands in flight, MULTI across a switch, bad RESP, and the `redis` check.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bellwether_proxy::config::{
    CheckKind, Dur, HostPort, Protocol, RawBackend, RawConfig, RawListener, RedisMode, Role,
};
use bellwether_proxy::redis::{encode_command, parse_value, Value};
use bellwether_proxy::ProxyHandle;
use support::{admin_http, Redis};

const LOST: &str = "ERR bellwether: backend lost mid-request; not applied or unknown";

/// A blocking RESP2 client.
struct Client {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.set_nodelay(true).unwrap();
        Client { s, buf: Vec::new() }
    }

    fn to(addr: &str) -> Client {
        Client::connect(addr.parse().unwrap())
    }

    fn send(&mut self, argv: &[&str]) {
        self.s.write_all(&encode_command(argv)).unwrap();
    }

    /// The next reply; `None` when the connection closed.
    fn read(&mut self) -> Option<Value> {
        loop {
            if let Some((v, n)) = parse_value(&self.buf).unwrap() {
                self.buf.drain(..n);
                return Some(v);
            }
            let mut chunk = [0u8; 16384];
            match self.s.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    fn cmd(&mut self, argv: &[&str]) -> Value {
        self.send(argv);
        self.read()
            .unwrap_or_else(|| panic!("connection closed after {argv:?}"))
    }
}

fn bulk(v: &Value) -> Option<String> {
    match v {
        Value::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    }
}

fn ok(v: &Value) -> bool {
    matches!(v, Value::Simple(s) if s == "OK")
}

/// The replication offset a server reports in `ROLE` (master: its own; replica: processed).
fn offset(addr: &str) -> (String, i64) {
    let Value::Array(Some(items)) = Client::to(addr).cmd(&["ROLE"]) else {
        panic!("ROLE")
    };
    let role = bulk(&items[0]).unwrap();
    let off = match (role.as_str(), &items[1], items.get(4)) {
        ("master", Value::Int(o), _) => *o,
        ("slave", _, Some(Value::Int(o))) => *o,
        _ => -1,
    };
    (role, off)
}

/// Waits until the replica is connected and has processed everything the primary has.
fn caught_up(primary: &Redis, replica: &Redis) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, p) = offset(&primary.addr());
        let Value::Array(Some(items)) = Client::to(&replica.addr()).cmd(&["ROLE"]) else {
            panic!("ROLE")
        };
        let connected = bulk(&items[3]).as_deref() == Some("connected");
        let (_, r) = offset(&replica.addr());
        if connected && r >= p && p > 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "replica on {} did not catch up (primary {p}, replica {r})",
            replica.port
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn backend(name: &str, port: u16, role: Role) -> RawBackend {
    let mut b = RawBackend::new(name, HostPort(format!("127.0.0.1:{port}")));
    b.role = Some(role);
    b
}

fn config(primary: &Redis, replica: &Redis, mode: RedisMode) -> RawConfig {
    let mut l = RawListener::new("127.0.0.1:0", Protocol::Redis);
    l.mode = mode;
    let mut raw = RawConfig::new(
        vec![l],
        vec![
            backend("a", primary.port, Role::Primary),
            backend("b", replica.port, Role::Replica),
        ],
    );
    raw.admin = Some("127.0.0.1:0".into());
    raw.health.check = CheckKind::Redis;
    raw.health.interval = Dur(Duration::from_millis(100));
    raw.shutdown_grace = Dur(Duration::from_secs(1));
    raw
}

struct Setup {
    proxy: ProxyHandle,
    /// The runtime the proxy's accept loop, admin API and checks run on.
    _rt: tokio::runtime::Runtime,
    a: Redis,
    b: Redis,
}

impl Setup {
    fn new(mode: RedisMode, tune: impl FnOnce(&mut RawConfig)) -> Setup {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("bellwether_proxy=debug")
            .with_test_writer()
            .try_init();
        let a = Redis::start();
        let b = Redis::replica_of(a.port);
        Client::to(&a.addr()).cmd(&["SET", "warm", "1"]);
        caught_up(&a, &b);
        let rt = tokio::runtime::Runtime::new().unwrap();
        let mut raw = config(&a, &b, mode);
        tune(&mut raw);
        let proxy = rt
            .block_on(ProxyHandle::start(raw.validate("test").unwrap()))
            .unwrap();
        Setup {
            proxy,
            _rt: rt,
            a,
            b,
        }
    }

    fn listen(&self) -> SocketAddr {
        self.proxy.listen_addrs()[0]
    }

    fn admin(&self, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
        let token = self.proxy.admin_token().unwrap().token().to_string();
        let (status, body) = admin_http(
            self.proxy.admin_addr().unwrap(),
            Some(&token),
            method,
            path,
            body,
        );
        let v = serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body));
        (status, v)
    }

    fn backend_view(&self, name: &str) -> serde_json::Value {
        let (s, v) = self.admin("GET", &format!("/backends/{name}"), "");
        assert_eq!(s, 200, "{v}");
        v
    }

    /// The engine's switchover: hold (no primary) until nothing is in flight on `a`,
    /// promote `b` once it has every write, route to it and fence `a`.
    fn switch_to_b(&self) -> serde_json::Value {
        let (s, held) = self.admin("POST", "/primary", r#"{"backend": null, "wait": "5s"}"#);
        assert_eq!(s, 200, "{held}");
        assert_eq!(held["previous_sessions"]["forced"], 0, "{held}");
        caught_up(&self.a, &self.b);
        assert!(ok(&Client::to(&self.b.addr()).cmd(&[
            "REPLICAOF",
            "NO",
            "ONE"
        ])));
        let (s, routed) = self.admin("POST", "/primary", r#"{"backend": "b", "fence": true}"#);
        assert_eq!(s, 200, "{routed}");
        assert_eq!(routed["primary"], "b");
        assert_eq!(routed["fenced"], true);
        held
    }
}

/// Writers and readers through the proxy, with `redis-benchmark` beside them, while the
/// primary is switched: no client error, and every acknowledged write is on the new primary.
#[test]
fn switchover_under_load_loses_no_acknowledged_write_and_fails_no_request() {
    let st = Setup::new(RedisMode::ActivePassive, |_| {});
    let addr = st.listen();
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let reads = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for w in 0..4 {
        let (stop, acked, errors, reads) =
            (stop.clone(), acked.clone(), errors.clone(), reads.clone());
        threads.push(std::thread::spawn(move || {
            let mut c = Client::connect(addr);
            let mut i = 0u64;
            while !stop.load(Relaxed) {
                let (k, v) = (format!("w{w}:{i}"), format!("v{i}"));
                // A pipeline: the write and two reads in flight together.
                c.send(&["SET", &k, &v]);
                c.send(&["GET", &k]);
                c.send(&["EXISTS", &k]);
                let set = c.read();
                let get = c.read();
                let exists = c.read();
                match (&set, &get, &exists) {
                    (Some(s), Some(g), Some(Value::Int(1)))
                        if ok(s) && bulk(g).as_deref() == Some(&v) =>
                    {
                        acked.lock().unwrap().push((k, v));
                        reads.fetch_add(2, Relaxed);
                    }
                    other => errors.lock().unwrap().push(format!("{k}: {other:?}")),
                }
                i += 1;
            }
        }));
    }
    // redis-benchmark as background load; it stops with an error status at its first error
    // reply.
    let bench = std::process::Command::new(
        support::which("redis-benchmark")
            .expect("`redis-benchmark` is not installed: install the Debian package `redis-tools`"),
    )
    .args([
        "-h",
        "127.0.0.1",
        "-p",
        &addr.port().to_string(),
        "-t",
        "set,get",
        "-n",
        "60000",
        "-c",
        "8",
        "-q",
    ])
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let mut bench = bench;
    // Let load build up, then switch.
    let t = Instant::now();
    while acked.lock().unwrap().len() < 300 {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "no load through the proxy"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let held = st.switch_to_b();
    assert!(
        bench.try_wait().unwrap().is_none(),
        "redis-benchmark ended before the switch: make it longer"
    );
    let before = acked.lock().unwrap().len();
    while acked.lock().unwrap().len() < before + 300 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no load after the switch"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let out = bench.wait_with_output().unwrap();
    let bench_out = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "redis-benchmark failed: {bench_out}");
    assert!(
        !bench_out.to_lowercase().contains("error"),
        "redis-benchmark saw errors: {bench_out}"
    );
    let errors = errors.lock().unwrap();
    assert!(
        errors.is_empty(),
        "{} client errors, first: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    // Every acknowledged write is on the new primary.
    let acked = acked.lock().unwrap();
    let mut b = Client::to(&st.b.addr());
    for chunk in acked.chunks(500) {
        let mut argv = vec!["MGET"];
        argv.extend(chunk.iter().map(|(k, _)| k.as_str()));
        let Value::Array(Some(vals)) = b.cmd(&argv) else {
            panic!("MGET")
        };
        for ((k, v), got) in chunk.iter().zip(&vals) {
            assert_eq!(
                bulk(got).as_deref(),
                Some(v.as_str()),
                "acknowledged write {k} missing on the new primary"
            );
        }
    }
    // Sessions moved; the fenced old primary is out of rotation and took no new work.
    let a = st.backend_view("a");
    let b = st.backend_view("b");
    assert_eq!(a["role"], "replica");
    assert_eq!(a["admin"], "maintenance");
    assert_eq!(b["role"], "primary");
    assert!(b["metrics"]["rehomed_in"].as_u64().unwrap() >= 4, "{b}");
    assert!(
        b["window"]["requests_per_second"].as_f64().unwrap() > 0.0,
        "{b}"
    );
    assert_eq!(a["metrics"]["in_flight"], 0, "{a}");
    eprintln!(
        "switch: {} acknowledged writes, {} reads, hold {}",
        acked.len(),
        reads.load(Relaxed),
        held["previous_sessions"]
    );
}

/// The primary is frozen with a pipeline in flight, then SIGKILLed: the reads are re-sent to
/// the new primary and answered; the write between them is answered "not applied or unknown".
#[test]
fn sigkill_primary_retries_reads_in_flight_and_fails_the_write_clearly() {
    let st = Setup::new(RedisMode::ActivePassive, |_| {});
    let mut c = Client::connect(st.listen());
    assert!(ok(&c.cmd(&["SET", "k", "before"])));
    caught_up(&st.a, &st.b);
    st.a.signal("STOP");
    c.send(&["GET", "k"]);
    c.send(&["SET", "w", "1"]);
    c.send(&["MGET", "k", "k"]);
    // The commands are in flight on the frozen primary.
    let t = Instant::now();
    while st.backend_view("a")["metrics"]["in_flight"] != 3 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "commands never reached the primary"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    st.a.signal("KILL");
    assert!(ok(&Client::to(&st.b.addr()).cmd(&[
        "REPLICAOF",
        "NO",
        "ONE"
    ])));
    let (s, v) = st.admin(
        "POST",
        "/primary",
        r#"{"backend": "b", "fence": true, "wait": "0"}"#,
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(bulk(&c.read().unwrap()).as_deref(), Some("before"));
    match c.read().unwrap() {
        Value::Error(e) => assert_eq!(
            e,
            "ERR bellwether: backend lost mid-request; not applied or unknown"
        ),
        other => panic!("the write in flight got {other:?}"),
    }
    let Value::Array(Some(v)) = c.read().unwrap() else {
        panic!("MGET")
    };
    assert_eq!(bulk(&v[0]).as_deref(), Some("before"));
    // The session goes on, on the new primary.
    assert!(ok(&c.cmd(&["SET", "after", "1"])));
    assert_eq!(
        bulk(&Client::to(&st.b.addr()).cmd(&["GET", "after"])).as_deref(),
        Some("1")
    );
    let a = st.backend_view("a");
    // Both reads were re-sent at least once. The session may see the loss before the
    // switch and re-send them to `a` while the killed server's listener still accepts;
    // that connection is lost too and they are re-sent again, so the count can be higher.
    // The write is never re-sent: it is failed exactly once.
    let retried = a["metrics"]["retried"].as_u64().unwrap();
    assert!(retried >= 2, "{a}");
    assert_eq!(a["metrics"]["lost_in_flight"], 1, "{a}");
}

/// The primary freezes (SIGSTOP) with commands in flight: the switch waits `wait`, then the
/// sessions give them up: the reads are answered by the new primary, the write is answered
/// "not applied or unknown", and the session goes on.
#[test]
fn a_frozen_primary_is_given_up_after_the_wait() {
    let st = Setup::new(RedisMode::ActivePassive, |_| {});
    let mut c = Client::connect(st.listen());
    assert!(ok(&c.cmd(&["SET", "k", "v"])));
    caught_up(&st.a, &st.b);
    st.a.signal("STOP");
    c.send(&["GET", "k"]);
    c.send(&["INCR", "n"]);
    let t = Instant::now();
    while st.backend_view("a")["metrics"]["in_flight"] != 2 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "commands never reached the primary"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(ok(&Client::to(&st.b.addr()).cmd(&[
        "REPLICAOF",
        "NO",
        "ONE"
    ])));
    let (s, v) = st.admin(
        "POST",
        "/primary",
        r#"{"backend": "b", "fence": true, "wait": "300ms"}"#,
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["previous_sessions"]["busy_at_start"], 1, "{v}");
    assert_eq!(v["previous_sessions"]["forced"], 1, "{v}");
    assert_eq!(bulk(&c.read().unwrap()).as_deref(), Some("v"));
    assert_eq!(c.read(), Some(Value::Error(LOST.into())));
    assert_eq!(
        c.cmd(&["INCR", "n"]),
        Value::Int(1),
        "the session goes on, on b"
    );
    st.a.signal("CONT");
}

/// A session inside MULTI at a switch: it finishes on the old primary if it can (the hold
/// waits for it), and is closed, never EXECed, if it does not finish in time.
#[test]
fn multi_finishes_before_the_switch_or_closes_gracefully() {
    let st = Setup::new(RedisMode::ActivePassive, |_| {});
    // Finishes: EXEC comes while the hold waits.
    let mut c = Client::connect(st.listen());
    assert!(ok(&c.cmd(&["MULTI"])));
    assert_eq!(c.cmd(&["SET", "y", "1"]), Value::Simple("QUEUED".into()));
    let token = st.proxy.admin_token().unwrap().token().to_string();
    let admin = st.proxy.admin_addr().unwrap();
    let hold = std::thread::spawn(move || {
        admin_http(
            admin,
            Some(&token),
            "POST",
            "/primary",
            r#"{"backend": null, "wait": "10s"}"#,
        )
    });
    let t = Instant::now();
    while st.proxy.pool().primary().is_some() {
        assert!(t.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(5));
    }
    // The hold does not return while the transaction is open (a negative: give it time).
    std::thread::sleep(Duration::from_millis(300));
    assert!(!hold.is_finished(), "the hold returned with a MULTI open");
    let Value::Array(Some(r)) = c.cmd(&["EXEC"]) else {
        panic!("EXEC")
    };
    assert!(ok(&r[0]));
    let (s, held) = hold.join().unwrap();
    assert_eq!(s, 200, "{held}");
    let held: serde_json::Value = serde_json::from_str(&held).unwrap();
    assert_eq!(held["previous_sessions"]["busy_at_start"], 1, "{held}");
    assert_eq!(held["previous_sessions"]["forced"], 0, "{held}");
    caught_up(&st.a, &st.b);
    assert!(ok(&Client::to(&st.b.addr()).cmd(&[
        "REPLICAOF",
        "NO",
        "ONE"
    ])));
    let (s, v) = st.admin("POST", "/primary", r#"{"backend": "b"}"#);
    assert_eq!(s, 200, "{v}");
    assert_eq!(bulk(&c.cmd(&["GET", "y"])).as_deref(), Some("1"));
    assert_eq!(st.proxy.registry().view()[0].backend, "b");

    // Does not finish: closed at the end of the wait; the transaction was never applied.
    let mut c = Client::connect(st.listen());
    assert!(ok(&c.cmd(&["MULTI"])));
    assert_eq!(c.cmd(&["SET", "z", "1"]), Value::Simple("QUEUED".into()));
    assert!(ok(&Client::to(&st.a.addr()).cmd(&[
        "REPLICAOF",
        "NO",
        "ONE"
    ])));
    let (s, v) = st.admin("POST", "/primary", r#"{"backend": "a", "wait": "300ms"}"#);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["previous_sessions"]["forced"], 1, "{v}");
    assert_eq!(c.read(), None, "the MULTI session is closed");
    assert_eq!(
        Client::to(&st.a.addr()).cmd(&["EXISTS", "z"]),
        Value::Int(0)
    );
    assert_eq!(
        Client::to(&st.b.addr()).cmd(&["EXISTS", "z"]),
        Value::Int(0)
    );
    // A subscriber is closed at once when its server leaves.
    let mut sub = Client::connect(st.listen());
    let Value::Array(Some(_)) = sub.cmd(&["SUBSCRIBE", "ch"]) else {
        panic!("SUBSCRIBE")
    };
    let (s, v) = st.admin("POST", "/primary", r#"{"backend": "b", "wait": "5s"}"#);
    assert_eq!(s, 200, "{v}");
    assert_eq!(sub.read(), None, "the subscriber is closed");
}

/// Garbage from one client: a clear error, that connection closed, others untouched.
#[test]
fn bad_resp_closes_only_that_connection() {
    let st = Setup::new(RedisMode::ActivePassive, |_| {});
    let mut good = Client::connect(st.listen());
    assert!(ok(&good.cmd(&["SET", "g", "1"])));
    for (bad, want) in [
        (
            &b"*1\r\n$x\r\n"[..],
            "ERR Protocol error: invalid bulk length (bellwether)",
        ),
        (
            b"*2\r\n:1\r\n",
            "ERR Protocol error: expected '$', got ':' (bellwether)",
        ),
        (
            b"*1\r\n$4\r\nPINGxx",
            "ERR Protocol error: a line does not end with CRLF (bellwether)",
        ),
        (
            b"GET \"open\r\n",
            "ERR Protocol error: unbalanced quotes in inline request (bellwether)",
        ),
    ] {
        let mut c = Client::connect(st.listen());
        // A valid command first: its reply comes before the error.
        c.send(&["GET", "g"]);
        c.s.write_all(bad).unwrap();
        assert_eq!(bulk(&c.read().unwrap()).as_deref(), Some("1"));
        assert_eq!(c.read(), Some(Value::Error(want.into())));
        assert_eq!(c.read(), None, "closed after the error");
        assert_eq!(good.cmd(&["GET", "g"]), Value::Bulk(Some(b"1".to_vec())));
    }
    // An oversized request is refused the same way, without being held whole.
    let mut c = Client::connect(st.listen());
    c.s.write_all(b"*2\r\n$3\r\nSET\r\n$999999999\r\n").unwrap();
    assert_eq!(
        c.read(),
        Some(Value::Error(
            "ERR Protocol error: request of more than 16777216 bytes (bellwether)".into()
        ))
    );
    assert_eq!(c.read(), None);
    // RESP3 is refused in order; inline commands work.
    let mut c = Client::connect(st.listen());
    c.send(&["HELLO", "3"]);
    c.s.write_all(b"PING\r\n").unwrap();
    assert!(matches!(c.read(), Some(Value::Error(e)) if e.starts_with("NOPROTO")));
    assert_eq!(c.read(), Some(Value::Simple("PONG".into())));
    assert_eq!(good.cmd(&["PING"]), Value::Simple("PONG".into()));
    let a = st.backend_view("a");
    assert!(
        a["metrics"]["bytes_to_backend"].as_u64().unwrap() > 0,
        "{a}"
    );
}

/// Without a primary, commands wait (bounded by primary_wait); `SELECT` and `CLIENT SETNAME`
/// follow the session to the new primary.
#[test]
fn commands_wait_for_a_primary_and_session_state_follows() {
    let st = Setup::new(RedisMode::ActivePassive, |raw| {
        raw.primary_wait = Dur(Duration::from_millis(1500));
    });
    let mut c = Client::connect(st.listen());
    assert!(ok(&c.cmd(&["SELECT", "3"])));
    assert!(ok(&c.cmd(&["CLIENT", "SETNAME", "tester"])));
    assert!(ok(&c.cmd(&["SET", "db3key", "x"])));
    let (s, v) = st.admin("POST", "/primary", r#"{"backend": null}"#);
    assert_eq!(s, 200, "{v}");
    // Waits, then fails clearly when no primary comes.
    let t = Instant::now();
    match c.cmd(&["GET", "db3key"]) {
        Value::Error(e) => assert!(
            e.starts_with("MASTERDOWN bellwether: no primary available within"),
            "{e}"
        ),
        other => panic!("{other:?}"),
    }
    assert!(
        t.elapsed() >= Duration::from_millis(1400),
        "{:?}",
        t.elapsed()
    );
    // Waits, and goes on when a primary comes in time.
    caught_up(&st.a, &st.b);
    c.send(&["GET", "db3key"]);
    std::thread::sleep(Duration::from_millis(200));
    assert!(ok(&Client::to(&st.b.addr()).cmd(&[
        "REPLICAOF",
        "NO",
        "ONE"
    ])));
    let (s, v) = st.admin("POST", "/primary", r#"{"backend": "b"}"#);
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        bulk(&c.read().unwrap()).as_deref(),
        Some("x"),
        "SELECT 3 was replayed"
    );
    assert_eq!(
        bulk(&c.cmd(&["CLIENT", "GETNAME"])).as_deref(),
        Some("tester")
    );
    assert_eq!(st.proxy.registry().view()[0].backend, "b");
}

/// Active-active: read-only commands go to the replica, writes to the primary; `POST /mode`
/// turns it off at run time.
#[test]
fn active_active_sends_reads_to_the_replica() {
    let st = Setup::new(RedisMode::ActiveActive, |_| {});
    let mut c = Client::connect(st.listen());
    assert!(ok(&c.cmd(&["SET", "r", "1"])));
    caught_up(&st.a, &st.b);
    for _ in 0..10 {
        assert_eq!(bulk(&c.cmd(&["GET", "r"])).as_deref(), Some("1"));
    }
    let b = st.backend_view("b");
    assert_eq!(b["metrics"]["queries"], 10, "{b}");
    assert_eq!(st.backend_view("a")["metrics"]["queries"], 1);
    let (s, v) = st.admin("POST", "/mode", r#"{"mode": "active-passive"}"#);
    assert_eq!(s, 200, "{v}");
    assert_eq!(bulk(&c.cmd(&["GET", "r"])).as_deref(), Some("1"));
    assert_eq!(st.backend_view("a")["metrics"]["queries"], 2);
    let (s, _) = st.admin("POST", "/mode", r#"{"mode": "sideways"}"#);
    assert_eq!(s, 400);
}

/// The `redis` check reads `ROLE`: a backend meant to be primary that is a replica is down,
/// and the observed role and offset are shown.
#[test]
fn the_redis_check_confirms_the_primary() {
    let a = Redis::start();
    let b = Redis::replica_of(a.port);
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Wrong on purpose: the replica is named primary.
    let mut raw = config(&b, &a, RedisMode::ActivePassive);
    raw.health.rise = 1;
    raw.health.fall = 1;
    let proxy = rt
        .block_on(ProxyHandle::start(raw.validate("test").unwrap()))
        .unwrap();
    let t = Instant::now();
    loop {
        let v = proxy.pool().view();
        let p = v.iter().find(|x| x.name == "a").unwrap();
        let r = v.iter().find(|x| x.name == "b").unwrap();
        if !p.healthy && r.observed.as_ref().is_some_and(|o| o.role == "master") {
            assert!(
                p.last_error
                    .as_deref()
                    .unwrap()
                    .contains("meant to be primary, but ROLE says `slave`"),
                "{:?}",
                p.last_error
            );
            assert_eq!(p.observed.as_ref().unwrap().role, "slave");
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{v:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(proxy);
    drop(rt);
}

/// A blocking command on the old primary at a switch: it has `switch_grace` to be answered;
/// then it is answered with an error that says to retry, and the connection closes.
#[test]
fn a_blocked_command_ends_with_a_clear_error_after_the_grace() {
    let st = Setup::new(RedisMode::ActivePassive, |raw| {
        raw.switch_grace = Dur(Duration::from_millis(300));
    });
    let mut c = Client::connect(st.listen());
    c.send(&["BLPOP", "queue", "0"]);
    let t = Instant::now();
    while st.backend_view("a")["metrics"]["in_flight"] != 1 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "BLPOP never reached the primary"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(ok(&Client::to(&st.b.addr()).cmd(&[
        "REPLICAOF",
        "NO",
        "ONE"
    ])));
    let (s, v) = st.admin("POST", "/primary", r#"{"backend": "b", "wait": "0"}"#);
    assert_eq!(s, 200, "{v}");
    let t = Instant::now();
    assert_eq!(
        c.read(),
        Some(Value::Error(
            "ERR bellwether: the primary changed during a blocking command; retry it".into()
        ))
    );
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(c.read(), None);
    // A new connection blocks on the new primary and is served there.
    let mut c = Client::connect(st.listen());
    c.send(&["BLPOP", "queue", "5"]);
    Client::to(&st.b.addr()).cmd(&["RPUSH", "queue", "x"]);
    let Value::Array(Some(v)) = c.read().unwrap() else {
        panic!("BLPOP")
    };
    assert_eq!(bulk(&v[1]).as_deref(), Some("x"));
}
