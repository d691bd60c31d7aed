//! A server-driven patch across a leader change, on real processes: three `bellwether server`
//! replicas on one PostgreSQL schema (each given the proxy's admin token), two PostgreSQL
//! clusters (the patched one with index scans off, a bad patch), a long-running
//! `bellwether proxy`, the real agent of host `db1` (allowed the three process built-ins) and
//! pgbench through the proxy. `patch start --server URL1,URL2,URL3 --wait --output json`
//! follows the patch's events. The leader is SIGKILLed while the patch bakes: a follower takes
//! the lease, resumes the patch from the store and rolls it back, with no failed client
//! transaction, each `patch.*` event stored (and printed) once, and the patched instance started
//! once and stopped once by the agent.

mod patch_support;
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use patch_support::pgsupport::parse_pgbench;
use patch_support::*;
use serde_json::Value;
use support::cluster::Cluster;

const KINDS: [&str; 11] = [
    "patch.baseline.captured",
    "patch.patched.started",
    "patch.patched.healthy",
    "patch.shift.routed",
    "patch.bake.started",
    "patch.rollback.triggered",
    "patch.rollback.phase1",
    "patch.rollback.phase2",
    "patch.rollback.phase3",
    "patch.rollback.phase4",
    "patch.rollback.finished",
];

#[test]
fn a_follower_resumes_and_rolls_back_a_patch_when_the_leader_is_killed_mid_bake() {
    let pg = PgPair::start(true, "120s");
    let token_arg = format!("main={}", pg.token_file.display());
    let mut cluster = Cluster::start(
        pg.d(),
        "ha_patch",
        3,
        OPERATOR,
        ENROL,
        &["--proxy-token-file", &token_arg],
    );
    let urls: Vec<String> = cluster.replicas.iter().map(|r| r.url.clone()).collect();
    let all = urls.join(",");
    let (leader, first_epoch, _) = cluster.wait_leader(&[], Duration::from_secs(30));
    let follower = (leader + 1) % urls.len();
    let logs = |cluster: &Cluster| {
        let read = |f: &str| std::fs::read_to_string(pg.d().join(f)).unwrap_or_default();
        format!(
            "cli:\n{}\n{}\nagent:\n{}\n{}",
            read("cli.out"),
            read("cli.err"),
            read("agent.log"),
            cluster.logs()
        )
    };
    // The agent knows every replica and fails over with them.
    let _agent = start_agent(&all, pg.d());
    wait_for("the agent to enrol", Duration::from_secs(30), || {
        let url = format!("{}/api/v1/hosts/db1", urls[follower]);
        pg.http.call("GET", &url, OPERATOR, None).0 == 200
    });
    let status = |at: usize| {
        let url = format!("{}/api/v1/patches/h1", urls[at]);
        pg.http.call("GET", &url, OPERATOR, None)
    };

    let bench = pg.pgbench(30);
    let plan_path = pg.plan_path.display().to_string();
    let mut cli = KillOnDrop(
        Command::new(EXE)
            .args(["patch", "start", &plan_path, "--wait", "--id", "h1"])
            .args(["--host", "db1", "--proxy-token", "main", "--output", "json"])
            .args(["--server", &all, "--token", OPERATOR])
            .env_remove("BELLWETHER_TOKEN")
            .stdout(std::fs::File::create(pg.d().join("cli.out")).unwrap())
            .stderr(std::fs::File::create(pg.d().join("cli.err")).unwrap())
            .spawn()
            .unwrap(),
    );

    // Kill -9 the leader once traffic is on the patched instance and it bakes.
    let start = Instant::now();
    loop {
        let (s, v) = status(follower);
        if s == 200 && v["stage"] == "baking" {
            break;
        }
        assert!(
            v["stage"] != "rolled_back" && start.elapsed() < Duration::from_secs(90),
            "the patch did not reach its bake: {v}\n{}",
            logs(&cluster)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    cluster.kill(leader);
    let killed = Instant::now();
    let (new_leader, epoch, took) = cluster.wait_leader(&[leader], Duration::from_secs(30));
    assert!(epoch > first_epoch, "epoch {first_epoch} -> {epoch}");
    // As in ha.rs: the 5 s goal plus slack for a loaded machine.
    assert!(
        took <= Duration::from_millis(6500),
        "takeover took {took:?}\n{}",
        logs(&cluster)
    );
    // The new leader resumes the patch: its next step (the rollback) is stored.
    wait_for(
        "the rollback after the takeover",
        Duration::from_secs(60),
        || {
            let (_, v) = status(new_leader);
            v["report"]["events"]
                .as_array()
                .is_some_and(|e| e.iter().any(|e| e["kind"] == "rollback.triggered"))
        },
    );
    let resumed = killed.elapsed();
    println!(
        "takeover after kill -9 of the leader mid-patch: {} ms (replica {leader} -> {new_leader}, epoch {first_epoch} -> {epoch}); rollback triggered {} ms after the kill",
        took.as_millis(),
        resumed.as_millis()
    );

    // The CLI follows the events across the leader change and exits 1 (rolled back).
    let code = loop {
        if let Some(s) = cli.0.try_wait().unwrap() {
            break s.code();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(120),
            "the patch did not finish\n{}",
            logs(&cluster)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let (_, v) = status(new_leader);
    let log = logs(&cluster);
    assert_eq!(v["stage"], "rolled_back", "{v}\n{log}");
    assert_eq!(code, Some(1), "exit 1 for a rolled-back patch\n{log}");
    let phases = v["report"]["phases"].as_array().unwrap();
    assert_eq!(phases.len(), 4, "{v}");
    assert!(phases.iter().all(|p| p["ok"] == true), "{v}");
    assert!(!pg.patched.data_dir().join("postmaster.pid").exists());

    // pgbench saw nothing.
    let r = parse_pgbench(&bench.wait_with_output().unwrap());
    assert!(r.success, "pgbench failed:\n{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.failed, 0, "{}", r.stdout);
    assert!(!r.aborted_clients, "{}", r.stderr);

    // Each patch.* event is stored once, under the task's id, by either leader.
    let (s, events) = pg.http.call(
        "GET",
        &format!(
            "{}/api/v1/events?task=h1&after=0&limit=10000",
            urls[new_leader]
        ),
        OPERATOR,
        None,
    );
    assert_eq!(s, 200, "{events}");
    let events = events.as_array().unwrap();
    for kind in KINDS {
        let n = events.iter().filter(|e| e["kind"] == kind).count();
        assert_eq!(n, 1, "{kind} stored {n} times: {events:?}");
    }
    let patch_events: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"].as_str().unwrap().starts_with("patch."))
        .collect();
    assert_eq!(
        patch_events.len(),
        v["report"]["events"].as_array().unwrap().len(),
        "the event log and the report hold the same events: {events:?}"
    );

    // The CLI printed each stored event once, as a JSON line, then the report.
    let printed = std::fs::read_to_string(pg.d().join("cli.out")).unwrap();
    let lines: Vec<Value> = printed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}\n{log}")))
        .collect();
    let (report, printed_events) = lines.split_last().expect("the CLI printed nothing");
    assert_eq!(report["stage"], "rolled_back", "{printed}");
    let mut ids: Vec<i64> = printed_events
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    let stored: Vec<i64> = events.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, stored, "printed in stored order, once each");
    ids.dedup();
    assert_eq!(ids.len(), stored.len());

    // The patched instance was started once and stopped once, across the leader change.
    assert_eq!(journal_count(pg.d(), "start_process"), 1, "{log}");
    assert_eq!(journal_count(pg.d(), "stop_process"), 1, "{log}");
    assert_eq!(pg.backend("original")["weight"], 100);
    assert_eq!(pg.backend("patched")["admin"], "maintenance");
}
