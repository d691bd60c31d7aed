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
        let _ = extra;
        todo!()
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
        todo!()
    }

    /// The temporary directory (its log is `redis.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The log so far, for a failing test's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    #[allow(dead_code)]
    fn unused(_: Duration, _: Stdio, _: Command) {}
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
