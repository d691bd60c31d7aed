//! The shipped hard rules against a real PostgreSQL server: every configuration the evaluator
//! says breaks a rule is refused by the server at start, and the configurations it says keep
//! the rule start (except those with hundreds of thousands of connection slots, whose shared
//! memory is too large for a test). The server's binaries are found under
//! /usr/lib/postgresql/*/bin; the test runs them as `postgres` when it runs as root.

mod cases;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use bellwether_config::rules::{check, shipped_rules, Constraint};
use bellwether_config::setting::Catalog;

fn bindir() -> (PathBuf, u32) {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((major, bin))
        })
        .collect();
    found.sort();
    let (major, bin) = found.pop().unwrap_or_else(|| {
        panic!(
            "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin: install the server \
             (apt-get install postgresql) to run this test"
        )
    });
    (bin, major * 10_000)
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// `program args…`, as `postgres` through runuser when this test runs as root.
fn command(program: &Path, args: &[String]) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program).args(args);
        c
    } else {
        let mut c = Command::new(program);
        c.args(args);
        c
    }
}

fn postgres_ids() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let line = passwd
        .lines()
        .find(|l| l.starts_with("postgres:"))
        .expect("running as root needs a `postgres` user to run the server as");
    let f: Vec<&str> = line.split(':').collect();
    (f[2].parse().unwrap(), f[3].parse().unwrap())
}

struct Cluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
}

impl Cluster {
    fn init(bin: PathBuf) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        if is_root() {
            let (uid, gid) = postgres_ids();
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let data = dir.path().join("data").display().to_string();
        let out = command(
            &bin.join("initdb"),
            &[
                "-D".into(),
                data,
                "-A".into(),
                "trust".into(),
                "-U".into(),
                "postgres".into(),
                "--no-sync".into(),
            ],
        )
        .output()
        .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Cluster { bin, dir }
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// Starts the server with `settings` on the command line: `Ok(())` once it is ready (then
    /// stopped), `Err(log)` when it exits first.
    fn trial(&self, settings: &[(&str, &str)]) -> Result<(), String> {
        let mut args = vec![
            "-D".to_string(),
            self.data(),
            "-k".to_string(),
            self.dir.path().display().to_string(),
            "-c".to_string(),
            "listen_addresses=".to_string(),
        ];
        for (k, v) in settings {
            args.push("-c".to_string());
            args.push(format!("{k}={v}"));
        }
        let mut child = command(&self.bin.join("postgres"), &args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut log = String::new();
        loop {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => {
                    let ready = line.contains("ready to accept connections");
                    log.push_str(&line);
                    log.push('\n');
                    if ready {
                        drop(Stop(self));
                        child.wait().unwrap();
                        return Ok(());
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    child.wait().unwrap();
                    return Err(log);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    drop(Stop(self));
                    panic!("the server neither started nor exited in 60 s: {log}");
                }
            }
        }
    }
}

/// Stops the cluster's server (fast) when dropped, so a failing assertion leaves nothing
/// running.
struct Stop<'a>(&'a Cluster);

impl Drop for Stop<'_> {
    fn drop(&mut self) {
        let _ = command(
            &self.0.bin.join("pg_ctl"),
            &[
                "stop".into(),
                "-D".into(),
                self.0.data(),
                "-m".into(),
                "fast".into(),
                "-w".into(),
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    }
}

#[test]
fn the_server_refuses_what_the_hard_rules_refuse() {
    let (bin, version) = bindir();
    let cluster = Cluster::init(bin);
    let rules = shipped_rules(version);
    let catalog = Catalog::default();
    let mut refused = 0;
    let mut started = 0;
    for (id, min_version, good, bad, _) in cases::hard_cases() {
        let Some(rule) = rules.iter().find(|r| r.id == id) else {
            assert!(min_version > version, "{id} is not shipped for {version}");
            continue;
        };
        assert!(rule
            .edge
            .condition
            .as_ref()
            .is_some_and(Constraint::is_hard));
        // wal_segment_size is fixed at initdb: the server has the 16MB the cases assume.
        let settable =
            |pairs: &[(&'static str, &'static str)]| -> Vec<(&'static str, &'static str)> {
                pairs
                    .iter()
                    .copied()
                    .filter(|(k, _)| *k != "wal_segment_size")
                    .collect()
            };
        let values: BTreeMap<String, String> = bad
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(
            check(std::slice::from_ref(&rule.edge), &values, &catalog).len(),
            1,
            "{id}"
        );
        match cluster.trial(&settable(&bad)) {
            Ok(()) => panic!("{id}: the server started with {bad:?}, which the rule refuses"),
            Err(log) => {
                assert!(
                    log.contains("FATAL") || log.contains("must be less than"),
                    "{id}: {log}"
                );
                refused += 1;
            }
        }
        let huge = good
            .iter()
            .any(|(k, v)| *k == "max_connections" && v.len() > 5);
        if !huge {
            if let Err(log) = cluster.trial(&settable(&good)) {
                panic!("{id}: the server refused {good:?}, which the rule keeps: {log}");
            }
            started += 1;
        }
    }
    assert!(
        refused >= 8,
        "only {refused} hard rules tried on PostgreSQL {version}"
    );
    assert!(started >= 5, "only {started} kept configurations started");
}
