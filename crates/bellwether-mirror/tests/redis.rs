//! The Redis side on real servers: a primary the test starts, a mirror made by the local
//! process driver, a crash (SIGKILL) under acknowledged writes, the promote, the fence, and
//! the failures that must leave nothing behind.

use std::path::Path;
use std::time::Duration;

use bellwether_mirror::resp::{info_fields, Conn, Value};
use bellwether_mirror::testing::TestRedis;
use bellwether_mirror::{
    fence, primary_position, probe, promote, unfence, DepKind, LocalProcess, MirrorError,
    ProvisionRequest, Provisioner, Role,
};

const T: Duration = Duration::from_secs(5);

fn request(primary: &str, id: &str) -> ProvisionRequest {
    ProvisionRequest {
        dependency: "cache".into(),
        kind: DepKind::Redis,
        primary: primary.into(),
        instance_id: id.into(),
        port: None,
    }
}

async fn conn(endpoint: &str) -> Conn {
    Conn::connect(endpoint, T).await.unwrap()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z"))
        .unwrap_or(false)
}

/// Waits until the mirror's offset reached `target` (the replication stream is the event;
/// its offset is read until it gets there, within 10 s).
async fn wait_offset(endpoint: &str, target: u64) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let st = probe(DepKind::Redis, endpoint, T).await.unwrap();
        let off = st.offset.unwrap_or(0);
        if off >= target {
            return off;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "mirror {endpoint} stuck at offset {off} < {target}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// No directory is left under `base` but the ones named.
fn entries(base: &Path) -> Vec<String> {
    std::fs::read_dir(base)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_mirror_holds_every_acknowledged_write_after_the_primary_is_killed() {
    let mut primary = TestRedis::start();
    let base = tempfile::tempdir().unwrap();
    let driver = LocalProcess::new(base.path().join("mirrors"));

    // 4 MB of data before the mirror exists: the initial copy is part of provisioning.
    let mut c = conn(&primary.endpoint()).await;
    let value = "v".repeat(1024);
    for i in 0..4096 {
        c.cmd_ok(&["SET", &format!("seed:{i}"), &value])
            .await
            .unwrap();
    }
    let inst = driver
        .provision(&request(&primary.endpoint(), "cache-1"))
        .await
        .unwrap_or_else(|e| panic!("provision: {e}; primary log: {}", primary.log()));
    eprintln!(
        "provisioned a redis mirror of 4 MB in {} ms",
        inst.provision_ms
    );
    let st = probe(DepKind::Redis, &inst.endpoint, T).await.unwrap();
    assert_eq!(st.role, Some(Role::Replica));
    assert_eq!(st.replica_of.as_deref(), Some(primary.endpoint().as_str()));
    assert_eq!(st.link_up, Some(true));
    let pos = primary_position(DepKind::Redis, &primary.endpoint(), T)
        .await
        .unwrap();
    wait_offset(&inst.endpoint, pos).await;
    let st = probe(DepKind::Redis, &inst.endpoint, T).await.unwrap();
    assert!(st.lag.is_some(), "a replica's lag is measured: {st:?}");

    // A writer counts a write as acknowledged only once WAIT says a replica has it, and
    // remembers the primary's offset after its last acknowledged write.
    let (acked_tx, mut acked_rx) = tokio::sync::watch::channel((0usize, 0u64));
    let endpoint = primary.endpoint();
    let writer = tokio::spawn(async move {
        let mut c = conn(&endpoint).await;
        let mut acked = Vec::new();
        let mut unacked = 0usize;
        let mut last_offset = 0u64;
        for i in 0.. {
            let key = format!("k:{i}");
            if c.cmd_ok(&["SET", &key, "x"]).await.is_err() {
                break;
            }
            match c.cmd(&["WAIT", "1", "1000"]).await {
                Ok(Value::Int(n)) if n >= 1 => {}
                Ok(_) => {
                    unacked += 1;
                    continue;
                }
                Err(_) => {
                    unacked += 1;
                    break;
                }
            }
            let Ok(info) = c.cmd(&["INFO", "replication"]).await else {
                // Acknowledged by the replica, but its offset unread: still counted, and
                // the promote's target below is the offset of the write before.
                acked.push(key);
                break;
            };
            last_offset = info_fields(&info.as_text().unwrap())["master_repl_offset"]
                .parse()
                .unwrap();
            acked.push(key);
            let _ = acked_tx.send((acked.len(), last_offset));
        }
        (acked, unacked, last_offset)
    });
    // The crash comes while the writer writes, after 300 acknowledged writes.
    acked_rx.wait_for(|(n, _)| *n >= 300).await.unwrap();
    let killed_at = std::time::Instant::now();
    primary.kill();
    let (acked, unacked, last_offset) = writer.await.unwrap();
    assert!(acked.len() >= 300);

    let report = promote(DepKind::Redis, &inst.endpoint, Some(last_offset), T)
        .await
        .unwrap();
    eprintln!(
        "promoted after the kill in {} ms (catch-up wait {} ms, REPLICAOF NO ONE {} ms); {} acknowledged writes, {} not acknowledged",
        killed_at.elapsed().as_millis(),
        report.waited_ms,
        report.promote_ms,
        acked.len(),
        unacked
    );
    assert!(report.reached_offset >= last_offset);
    let st = probe(DepKind::Redis, &inst.endpoint, T).await.unwrap();
    assert_eq!(st.role, Some(Role::Primary));
    let mut m = conn(&inst.endpoint).await;
    for key in &acked {
        let v = m.cmd_ok(&["GET", key]).await.unwrap();
        assert_eq!(
            v,
            Value::Bulk(Some(b"x".to_vec())),
            "acknowledged {key} lost"
        );
    }
    assert_eq!(
        m.cmd_ok(&["GET", "seed:4095"]).await.unwrap(),
        Value::Bulk(Some(value.into_bytes()))
    );
    // It takes writes now.
    m.cmd_ok(&["SET", "after", "1"]).await.unwrap();

    // Promoting it again is refused: it is a primary.
    let e = promote(DepKind::Redis, &inst.endpoint, None, T)
        .await
        .unwrap_err();
    // The server's task matches `actual == "primary"` to tell a repeated promote.
    assert!(
        matches!(&e, MirrorError::WrongRole { actual, .. } if actual == "primary"),
        "{e}"
    );

    driver.retire(&inst).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_that_does_not_catch_up_in_time_is_not_promoted() {
    let primary = TestRedis::start();
    let base = tempfile::tempdir().unwrap();
    let driver = LocalProcess::new(base.path());
    let inst = driver
        .provision(&request(&primary.endpoint(), "slow"))
        .await
        .unwrap();
    let pos = primary_position(DepKind::Redis, &primary.endpoint(), T)
        .await
        .unwrap();
    // A position the mirror cannot reach (nothing more is written): the promote must wait its
    // timeout, then refuse, leaving the mirror a replica.
    let started = std::time::Instant::now();
    let e = promote(
        DepKind::Redis,
        &inst.endpoint,
        Some(pos + 1_000_000),
        Duration::from_millis(300),
    )
    .await
    .unwrap_err();
    let waited = started.elapsed();
    let text = e.to_string();
    assert!(
        matches!(e, MirrorError::CatchUpTimeout { required, .. } if required == pos + 1_000_000),
        "{text}"
    );
    assert!(
        text.contains("refusing to promote") && text.contains(&inst.endpoint),
        "{text}"
    );
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    let st = probe(DepKind::Redis, &inst.endpoint, T).await.unwrap();
    assert_eq!(
        st.role,
        Some(Role::Replica),
        "a refused promote changes nothing"
    );
    driver.retire(&inst).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_turns_the_old_primary_into_a_replica_or_refuses_its_writes() {
    let old = TestRedis::start();
    let new = TestRedis::start();
    let r = fence(DepKind::Redis, &old.endpoint(), Some(&new.endpoint()), T)
        .await
        .unwrap();
    assert!(r.method.contains(&new.endpoint()), "{}", r.method);
    let st = probe(DepKind::Redis, &old.endpoint(), T).await.unwrap();
    assert_eq!(st.role, Some(Role::Replica));
    assert_eq!(st.replica_of.as_deref(), Some(new.endpoint().as_str()));
    let mut c = conn(&old.endpoint()).await;
    match c.cmd(&["SET", "a", "1"]).await.unwrap() {
        Value::Error(e) => assert!(e.starts_with("READONLY"), "{e}"),
        v => panic!("a fenced instance took a write: {v:?}"),
    }

    // Without a new primary, every write is refused and reads go on.
    let lone = TestRedis::start();
    fence(DepKind::Redis, &lone.endpoint(), None, T)
        .await
        .unwrap();
    let mut c = conn(&lone.endpoint()).await;
    match c.cmd(&["SET", "a", "1"]).await.unwrap() {
        Value::Error(e) => assert!(e.starts_with("NOREPLICAS"), "{e}"),
        v => panic!("a fenced instance took a write: {v:?}"),
    }
    assert_eq!(c.cmd(&["GET", "a"]).await.unwrap(), Value::Bulk(None));
    // Unfenced, it takes writes again.
    unfence(DepKind::Redis, &lone.endpoint(), T).await.unwrap();
    c.cmd_ok(&["SET", "a", "1"]).await.unwrap();

    // An instance that is down cannot be fenced: the error says so (fence it when back).
    let mut gone = TestRedis::start();
    let ep = gone.endpoint();
    gone.kill();
    let e = fence(DepKind::Redis, &ep, None, T).await.unwrap_err();
    assert!(matches!(e, MirrorError::Unreachable { .. }), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retire_stops_the_process_and_removes_its_directory() {
    let primary = TestRedis::start();
    let base = tempfile::tempdir().unwrap();
    let driver = LocalProcess::new(base.path());
    let inst = driver
        .provision(&request(&primary.endpoint(), "r1"))
        .await
        .unwrap();
    let pid = inst.pid.unwrap();
    let dir = inst.dir.clone().unwrap();
    assert!(alive(pid) && dir.is_dir());
    assert_eq!(driver.load("r1").unwrap(), inst, "the record is kept");
    assert_eq!(driver.list().unwrap(), vec![inst.clone()]);
    let st = driver.status(&inst).await.unwrap();
    assert!(st.reachable && st.role == Some(Role::Replica), "{st:?}");

    driver.retire(&inst).await.unwrap();
    assert!(!alive(pid), "the mirror's process {pid} still runs");
    assert!(!dir.exists(), "{} is left", dir.display());
    let st = driver.status(&inst).await.unwrap();
    assert!(!st.reachable, "{st:?}");
    // Retiring what is gone is fine (an agent may be asked twice).
    driver.retire(&inst).await.unwrap();
    assert!(driver.list().unwrap().is_empty());

    // A mirror whose directory someone removed is still stopped by retire.
    let inst = driver
        .provision(&request(&primary.endpoint(), "r2"))
        .await
        .unwrap();
    std::fs::remove_dir_all(inst.dir.as_ref().unwrap()).unwrap();
    driver.retire(&inst).await.unwrap();
    assert!(
        !alive(inst.pid.unwrap()),
        "a mirror without its directory still runs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_provisioning_is_a_clear_error_and_leaves_nothing_behind() {
    let primary = TestRedis::start();
    let base = tempfile::tempdir().unwrap();
    let driver = LocalProcess::new(base.path());

    // A primary nobody listens on.
    let nobody = format!(
        "127.0.0.1:{}",
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    );
    let e = driver
        .provision(&request(&nobody, "bad-primary"))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains(&nobody) && e.contains("unreachable"), "{e}");
    assert!(
        entries(base.path()).is_empty(),
        "{:?}",
        entries(base.path())
    );

    // Not an endpoint at all.
    let e = driver
        .provision(&request("localhost", "bad-endpoint"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("\"localhost\"") && e.contains("HOST:PORT"),
        "{e}"
    );

    // A port another process holds.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap().port();
    let mut req = request(&primary.endpoint(), "port-taken");
    req.port = Some(taken);
    let e = driver.provision(&req).await.unwrap_err().to_string();
    assert!(
        e.contains(&taken.to_string()) && e.to_lowercase().contains("in use"),
        "{e}"
    );
    assert!(
        entries(base.path()).is_empty(),
        "{:?}",
        entries(base.path())
    );

    // No redis-server.
    let missing = LocalProcess::new(base.path()).with_redis_server("/nonexistent/redis-server");
    let e = missing
        .provision(&request(&primary.endpoint(), "no-binary"))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/redis-server"), "{e}");
    assert!(
        entries(base.path()).is_empty(),
        "{:?}",
        entries(base.path())
    );

    // A bad id, and an id already in use (the existing instance is left alone).
    let e = driver
        .provision(&request(&primary.endpoint(), "../x"))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("instance id"), "{e}");
    let inst = driver
        .provision(&request(&primary.endpoint(), "dup"))
        .await
        .unwrap();
    let e = driver
        .provision(&request(&primary.endpoint(), "dup"))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("already exists"), "{e}");
    assert!(alive(inst.pid.unwrap()));
    driver.retire(&inst).await.unwrap();

    // A replica as the primary is refused.
    let replica =
        TestRedis::try_start(&["--replicaof", "127.0.0.1", &primary.port.to_string()]).unwrap();
    let e = driver
        .provision(&request(&replica.endpoint(), "of-a-replica"))
        .await
        .unwrap_err();
    assert!(matches!(e, MirrorError::WrongRole { .. }), "{e}");
    assert!(
        entries(base.path()).is_empty(),
        "{:?}",
        entries(base.path())
    );
}

#[tokio::test]
async fn probing_tells_reachable_from_not() {
    let r = TestRedis::start();
    let st = probe(DepKind::Redis, &r.endpoint(), T).await.unwrap();
    assert!(st.reachable && st.role == Some(Role::Primary) && st.offset.is_some());
    assert!(st.latency_ms >= 0.0 && st.latency_ms < 1000.0);
    let st = probe(DepKind::Tcp, &r.endpoint(), T).await.unwrap();
    assert!(st.reachable && st.role.is_none());
    let ep = r.endpoint();
    drop(r);
    for kind in [DepKind::Redis, DepKind::Tcp] {
        let st = probe(kind, &ep, T).await.unwrap();
        assert!(!st.reachable && st.error.is_some(), "{st:?}");
    }
    assert!(matches!(
        probe(DepKind::Redis, "nope", T).await,
        Err(MirrorError::BadEndpoint { .. })
    ));
}

/// What the guarantee is not: writes that only got `OK` (no `WAIT` yet) when the primary died
/// may be missing on the promoted mirror; every write a later `WAIT 1` covered is there. The
/// test states the measured loss (it varies with timing; over loopback it is usually 0 to a
/// few writes) and holds the guarantee.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_acknowledged_only_with_ok_may_be_lost_waited_ones_never_are() {
    let mut primary = TestRedis::start();
    let base = tempfile::tempdir().unwrap();
    let driver = LocalProcess::new(base.path());
    let inst = driver
        .provision(&request(&primary.endpoint(), "m"))
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::watch::channel(0usize);
    let endpoint = primary.endpoint();
    let writer = tokio::spawn(async move {
        let mut c = conn(&endpoint).await;
        // Writes 0..waited were covered by a WAIT that a replica answered; ok counts every OK.
        let (mut ok, mut waited) = (0usize, 0usize);
        loop {
            if c.cmd_ok(&["SET", &format!("k:{ok}"), "x"]).await.is_err() {
                break;
            }
            ok += 1;
            let _ = tx.send(ok);
            if ok % 100 == 0 {
                match c.cmd(&["WAIT", "1", "1000"]).await {
                    Ok(Value::Int(n)) if n >= 1 => waited = ok,
                    _ => break,
                }
            }
        }
        (ok, waited)
    });
    // The crash lands between two WAITs, with OK-only writes in flight.
    rx.wait_for(|n| *n >= 2050).await.unwrap();
    primary.kill();
    let (ok, waited) = writer.await.unwrap();
    promote(DepKind::Redis, &inst.endpoint, None, T)
        .await
        .unwrap();
    let mut m = conn(&inst.endpoint).await;
    let mut missing_waited = 0;
    let mut missing_ok_only = 0;
    for i in 0..ok {
        if m.cmd_ok(&["EXISTS", &format!("k:{i}")]).await.unwrap() == Value::Int(0) {
            if i < waited {
                missing_waited += 1;
            } else {
                missing_ok_only += 1;
            }
        }
    }
    eprintln!(
        "{ok} writes got OK, {waited} were covered by WAIT 1; lost after the kill: {missing_waited} waited, {missing_ok_only} of the {} OK-only",
        ok - waited
    );
    assert_eq!(missing_waited, 0, "a write covered by WAIT was lost");
    driver.retire(&inst).await.unwrap();
}
