//! A real PostgreSQL cluster for tests (feature `testing`): `initdb` into a temporary
//! directory, `pg_ctl start` on a free loopback port with its unix socket inside that
//! directory, `pg_ctl stop -m immediate` on drop. The binaries are the newest under
//! `/usr/lib/postgresql/*/bin` (or `$BELLWETHER_PG_BINDIR`); as root the server runs as the
//! `postgres` user through `runuser`.

use std::path::{Path, PathBuf};

use crate::proc::{chown_to_pg_user, free_port, pg_argv, run};
use crate::PgError;

/// Runs a PostgreSQL program to its end as the server's user (through `runuser` when this
/// process is root, as the server refuses root), no shell; its output, whatever its status.
pub fn run_as_pg_user(bin: &Path, args: &[&str]) -> std::io::Result<std::process::Output> {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    crate::proc::command(&pg_argv(bin, &args)).output()
}

/// What the cluster starts with.
#[derive(Debug, Clone, Default)]
pub struct TestClusterOptions {
    /// Extra `postgresql.conf` lines (`name`, value as written, e.g. `'pg_stat_statements'`).
    pub conf: Vec<(String, String)>,
}

pub struct TestCluster {
    pub port: u16,
    pub data_dir: PathBuf,
    pub bindir: PathBuf,
    /// The unix socket directory (inside the temporary directory).
    pub socket_dir: PathBuf,
    /// The server's log (`pg_ctl -l`).
    pub log_file: PathBuf,
    stopped: bool,
    // Dropped last: the directory goes after the server stopped.
    dir: tempfile::TempDir,
}

/// The binaries of the newest PostgreSQL under `/usr/lib/postgresql/*/bin`, or
/// `$BELLWETHER_PG_BINDIR`.
pub fn find_test_bindir() -> Result<PathBuf, PgError> {
    if let Some(d) = std::env::var_os("BELLWETHER_PG_BINDIR") {
        return Ok(PathBuf::from(d));
    }
    let root = Path::new("/usr/lib/postgresql");
    let mut best: Option<(u32, PathBuf)> = None;
    if let Ok(rd) = std::fs::read_dir(root) {
        for e in rd.flatten() {
            let Ok(major) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let bin = e.path().join("bin");
            if bin.join("initdb").is_file() && best.as_ref().is_none_or(|(m, _)| major > *m) {
                best = Some((major, bin));
            }
        }
    }
    best.map(|(_, b)| b).ok_or_else(|| PgError::Io {
        what: "PostgreSQL binaries for a test cluster".to_string(),
        message: "none under /usr/lib/postgresql/*/bin; install the server (apt install postgresql) or set BELLWETHER_PG_BINDIR".to_string(),
    })
}

impl TestCluster {
    /// Starts a cluster; panics with the reason and how to fix it (a test helper).
    pub fn start(opts: TestClusterOptions) -> TestCluster {
        match TestCluster::try_start(opts) {
            Ok(c) => c,
            Err(e) => panic!("cannot start a test PostgreSQL cluster: {e}"),
        }
    }

    pub fn try_start(opts: TestClusterOptions) -> Result<TestCluster, PgError> {
        let bindir = find_test_bindir()?;
        let dir = tempfile::Builder::new()
            .prefix("bw-pg-test-")
            .tempdir()
            .map_err(|e| PgError::Io {
                what: "creating a temporary directory".to_string(),
                message: e.to_string(),
            })?;
        chown_to_pg_user(dir.path())?;
        let data_dir = dir.path().join("data");
        let socket_dir = dir.path().join("sock");
        let log_file = dir.path().join("server.log");
        std::fs::create_dir(&socket_dir).map_err(|e| PgError::Io {
            what: format!("creating {}", socket_dir.display()),
            message: e.to_string(),
        })?;
        chown_to_pg_user(&socket_dir)?;
        run(
            &pg_argv(
                &bindir.join("initdb"),
                &[
                    "-D".into(),
                    data_dir.display().to_string(),
                    "-A".into(),
                    "trust".into(),
                    "-U".into(),
                    "postgres".into(),
                    "-E".into(),
                    "UTF8".into(),
                    "--no-sync".into(),
                    "--no-instructions".into(),
                ],
            ),
            "initdb of a test cluster",
        )?;
        let mut last_err = None;
        for _ in 0..3 {
            let port = free_port()?;
            let mut conf = format!(
                "\n# bellwether test cluster\nport = {port}\nlisten_addresses = '127.0.0.1'\n\
                 unix_socket_directories = '{}'\nfsync = off\nshared_buffers = 32MB\n",
                socket_dir.display()
            );
            for (k, v) in &opts.conf {
                conf.push_str(&format!("{k} = {v}\n"));
            }
            let base = data_dir.join("postgresql.conf");
            let original = std::fs::read_to_string(&base).map_err(|e| PgError::Io {
                what: format!("reading {}", base.display()),
                message: e.to_string(),
            })?;
            let original = original
                .split("\n# bellwether test cluster\n")
                .next()
                .unwrap_or_default()
                .to_string();
            std::fs::write(&base, original + &conf).map_err(|e| PgError::Io {
                what: format!("writing {}", base.display()),
                message: e.to_string(),
            })?;
            let start = pg_ctl_argv(&bindir, &data_dir, &log_file, "start");
            match run(&start, "pg_ctl start of a test cluster") {
                Ok(_) => {
                    return Ok(TestCluster {
                        port,
                        data_dir,
                        bindir,
                        socket_dir,
                        log_file,
                        stopped: false,
                        dir,
                    })
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| PgError::Io {
            what: "pg_ctl start".into(),
            message: "failed".into(),
        }))
    }

    fn pg_ctl_argv(&self, action: &str) -> Vec<String> {
        pg_ctl_argv(&self.bindir, &self.data_dir, &self.log_file, action)
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres` (trust authentication).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The same, for another database or role.
    pub fn url_for(&self, user: &str, db: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/{db}", self.port)
    }

    /// The restart command (`pg_ctl restart -w -m fast …`, as the server's user) for
    /// [`crate::apply`] and the agent's `--database-restart`.
    pub fn restart_argv(&self) -> Vec<String> {
        self.pg_ctl_argv("restart")
    }

    /// `pgbench -h 127.0.0.1 -p PORT -U postgres ARGS… ` (the database is the caller's last
    /// argument, `postgres` when none).
    pub fn pgbench_argv(&self, args: &[&str]) -> Vec<String> {
        let mut argv = vec![
            self.bindir.join("pgbench").display().to_string(),
            "-h".into(),
            "127.0.0.1".into(),
            "-p".into(),
            self.port.to_string(),
            "-U".into(),
            "postgres".into(),
        ];
        argv.extend(args.iter().map(|s| s.to_string()));
        argv
    }

    /// The server's log so far (for a failing test's message).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
    }

    /// The temporary directory holding the data directory, socket and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops the server (`pg_ctl stop -m immediate`); also done on drop.
    pub fn stop(&mut self) -> Result<(), PgError> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        run(&self.pg_ctl_argv("stop"), "pg_ctl stop of a test cluster").map(|_| ())
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!(
                "stopping the test cluster in {}: {e}",
                self.dir.path().display()
            );
        }
    }
}

fn pg_ctl_argv(bindir: &Path, data_dir: &Path, log_file: &Path, action: &str) -> Vec<String> {
    let mut args = vec![
        action.to_string(),
        "-w".into(),
        "-t".into(),
        "30".into(),
        "-D".into(),
        data_dir.display().to_string(),
    ];
    match action {
        "start" | "restart" => {
            args.extend(["-l".into(), log_file.display().to_string()]);
            if action == "restart" {
                args.extend(["-m".into(), "fast".into()]);
            }
        }
        _ => args.extend(["-m".into(), "immediate".into()]),
    }
    pg_argv(&bindir.join("pg_ctl"), &args)
}

/// A command kept running until dropped: started again whenever it exits (pgbench, whose
/// sessions a server restart ends). Its output is discarded.
pub struct KeepRunning {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl KeepRunning {
    pub fn start(argv: Vec<String>) -> KeepRunning {
        use std::process::{Command, Stdio};
        use std::sync::atomic::Ordering;
        use std::time::Duration;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let Ok(mut child) = Command::new(&argv[0])
                    .args(&argv[1..])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                else {
                    return;
                };
                // Polled so that a drop ends it promptly.
                loop {
                    if s.load(Ordering::SeqCst) {
                        let _ = child.kill();
                        let _ = child.wait();
                        return;
                    }
                    match child.try_wait() {
                        Ok(Some(_)) | Err(_) => break,
                        Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
                // The server is restarting: try again shortly.
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        KeepRunning {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for KeepRunning {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `pgbench -i -q -s SCALE` on `c`'s `postgres` database; panics with pgbench's stderr when
/// it fails (tests and benches only).
pub fn pgbench_init(c: &TestCluster, scale: u32) {
    let argv = c.pgbench_argv(&["-i", "-q", "-s", &scale.to_string(), "postgres"]);
    let out = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .output()
        .expect("pgbench runs");
    assert!(
        out.status.success(),
        "pgbench -i -s {scale}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `sql` through `psql -At` as `postgres` on `c` and returns its output, trimmed; panics
/// with psql's stderr when it fails (tests only).
pub fn psql(c: &TestCluster, sql: &str) -> String {
    let out = std::process::Command::new(c.bindir.join("psql"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &c.port.to_string(),
            "-U",
            "postgres",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
            "postgres",
        ])
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A sort- and hash-heavy workload (for `tests/local_apply.rs` and `tests/control.rs`): each transaction de-duplicates 20,000 rows (about 3 MB of
/// hash table or sort, inside the default 4 MB work_mem, far outside 64 kB: it spills to
/// temporary files and runs about three times slower).
pub fn sort_workload(c: &TestCluster) -> (tempfile::TempDir, KeepRunning) {
    psql(
        c,
        "CREATE TABLE sortme AS SELECT (random()*1e6)::int AS k, md5(i::text) AS v \
         FROM generate_series(1, 20000) i; ANALYZE sortme;",
    );
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("sort.sql");
    std::fs::write(
        &script,
        "SELECT count(*) FROM (SELECT DISTINCT v FROM sortme) s;\n",
    )
    .unwrap();
    let script = script.display().to_string();
    let bench = KeepRunning::start(c.pgbench_argv(&[
        "-n", "-c", "2", "-j", "2", "-T", "600", "-f", &script, "postgres",
    ]));
    (dir, bench)
}
