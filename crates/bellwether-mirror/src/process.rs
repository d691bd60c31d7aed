//! The local process driver: each mirror is a server process on this host, under
//! `BASE_DIR/ID/`. Redis: `redis-server --replicaof PRIMARY --port N --dir D` (no persistence:
//! a restarted mirror resyncs). PostgreSQL: `pg_basebackup -R` of the primary into
//! `D/data`, then `pg_ctl start` on a free port, as the `postgres` user when this process is
//! root. Ports are found by binding port 0 and releasing it (another process may take it in
//! between: the start then fails and is retried on a new port, up to three times).
//!
//! The instance's record is `BASE_DIR/ID/instance.json`, so an agent that restarts can still
//! retire what it made. A provisioning that fails stops what it started and removes the
//! directory before it returns the error.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::provision::{Instance, ProvisionRequest, Provisioner};
use crate::{InstanceStatus, MirrorError};

/// Runs mirrors as local processes under one base directory.
#[derive(Debug, Clone)]
pub struct LocalProcess {
    base_dir: PathBuf,
    redis_server: PathBuf,
    pg_bindir: Option<PathBuf>,
    ready_timeout: Duration,
}

impl LocalProcess {
    /// A driver keeping its instances under `base_dir` (created when missing), with
    /// `redis-server` from `$PATH`, PostgreSQL's binaries found from the primary's version
    /// (`bellwether_pg::find_bindir`), and 60 s for an instance to be serving and caught up.
    pub fn new(base_dir: impl Into<PathBuf>) -> LocalProcess {
        LocalProcess {
            base_dir: base_dir.into(),
            redis_server: PathBuf::from("redis-server"),
            pg_bindir: None,
            ready_timeout: Duration::from_secs(60),
        }
    }

    /// The `redis-server` to run (a path, or a name looked up in `$PATH`).
    pub fn with_redis_server(mut self, program: impl Into<PathBuf>) -> LocalProcess {
        self.redis_server = program.into();
        self
    }

    /// PostgreSQL's binaries (`pg_basebackup`, `pg_ctl`); found from the primary's version
    /// when not given.
    pub fn with_pg_bindir(mut self, dir: impl Into<PathBuf>) -> LocalProcess {
        self.pg_bindir = Some(dir.into());
        self
    }

    /// How long a new instance may take to serve with its replication link up.
    pub fn with_ready_timeout(mut self, timeout: Duration) -> LocalProcess {
        self.ready_timeout = timeout;
        self
    }

    pub fn base_dir(&self) -> &Path {
        &self.base_dir
    }

    /// The record of instance `id` (`BASE_DIR/ID/instance.json`).
    pub fn load(&self, id: &str) -> Result<Instance, MirrorError> {
        let _ = id;
        todo!()
    }

    /// Every instance this driver's base directory holds a record of.
    pub fn list(&self) -> Result<Vec<Instance>, MirrorError> {
        todo!()
    }
}

#[async_trait::async_trait]
impl Provisioner for LocalProcess {
    fn name(&self) -> &'static str {
        "local-process"
    }

    async fn provision(&self, req: &ProvisionRequest) -> Result<Instance, MirrorError> {
        let _ = req;
        todo!()
    }

    async fn retire(&self, inst: &Instance) -> Result<(), MirrorError> {
        let _ = inst;
        todo!()
    }

    async fn status(&self, inst: &Instance) -> Result<InstanceStatus, MirrorError> {
        let _ = inst;
        todo!()
    }
}
