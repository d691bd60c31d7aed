//! A real Redis server for tests (feature `testing`): `redis-server --port N --save ''
//! --appendonly no --dir TMP` on a free loopback port, killed on drop. Fails with how to
//! install Redis when `redis-server` is missing.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `redis-server` the test owns.
pub struct TestRedis {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl TestRedis {
    /// Starts a server and waits until it answers `PING`; panics with the reason (a test
    /// helper).
    pub fn start() -> TestRedis {
        match TestRedis::try_start(&[]) {
            Ok(r) => r,
            Err(e) => panic!("cannot start a test redis-server: {e}"),
        }
    }

    /// Starts a server with extra arguments (`["--replicaof", "127.0.0.1", "6380"]`).
    pub fn try_start(extra: &[&str]) -> Result<TestRedis, String> {
        let dir = tempfile::Builder::new()
            .prefix("bw-redis-test-")
            .tempdir()
            .map_err(|e| format!("creating a temporary directory: {e}"))?;
        let mut last = String::new();
        // Another process may take the free port before the server binds it: try again.
        for _ in 0..3 {
            let port = crate::process::free_port()?;
            let log = dir.path().join("redis.log");
            let mut child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .arg("--dir")
                .arg(dir.path())
                .arg("--logfile")
                .arg(&log)
                .args(extra)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| {
                    format!("cannot run redis-server: {e}; install Redis (apt install redis-server) so that redis-server is in $PATH")
                })?;
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    last = format!(
                        "redis-server on port {port} exited with {status}: {}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                    break;
                }
                if ping(port) {
                    return Ok(TestRedis {
                        port,
                        child: Some(child),
                        dir,
                    });
                }
                if std::time::Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "redis-server on port {port} did not answer PING within 10 s"
                    ));
                }
                // The server gives no signal of readiness but its answer: ask again shortly.
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Err(last)
    }

    /// `127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGKILL: the server dies without a goodbye (the crash a failover is for).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The temporary directory (its log is `redis.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The log so far, for a failing test's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Whether a Redis server answers `PING` on the loopback port.
fn ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}
