//! The driver interface that makes and removes mirrors: [`Provisioner`]. A driver knows how to
//! run an instance somewhere (local processes: [`crate::LocalProcess`]; a Kubernetes
//! StatefulSet is the next driver, `docs/mirror-drivers.md`). It never decides how many
//! mirrors there are: the engine does.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{DepKind, InstanceStatus, MirrorError};

/// A mirror to make: a replica of `primary`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvisionRequest {
    /// The dependency's name (for labels and logs).
    pub dependency: String,
    pub kind: DepKind,
    /// The primary to replicate, `HOST:PORT` (PostgreSQL: or a `postgres://` URL).
    pub primary: String,
    /// The new instance's id: 1 to 64 of letters, digits, `-`, `_` and `.`, not starting with
    /// `.`. Unique per driver; it names the instance's directory.
    pub instance_id: String,
    /// The port to listen on; `None` lets the driver choose a free one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// A mirror a driver made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub id: String,
    pub dependency: String,
    pub kind: DepKind,
    /// Where it serves, `HOST:PORT`.
    pub endpoint: String,
    /// The primary it was made a replica of.
    pub primary: String,
    /// Its server process, for a driver that runs processes.
    pub pid: Option<u32>,
    /// Its directory (data, log), for a driver that keeps one on this host.
    pub dir: Option<PathBuf>,
    /// How long provisioning took, from the request to a caught-up replica, in ms.
    pub provision_ms: u64,
}

/// Makes, removes and checks mirrors. Every call is bounded by the driver's own timeouts; a
/// failed [`Provisioner::provision`] leaves nothing behind (no process, no directory).
#[async_trait::async_trait]
pub trait Provisioner: Send + Sync {
    /// The driver's name, for events (`local-process`, `kubernetes`).
    fn name(&self) -> &'static str;

    /// Makes a replica of `req.primary` and returns once it is serving and its replication
    /// link is up (its initial copy done).
    async fn provision(&self, req: &ProvisionRequest) -> Result<Instance, MirrorError>;

    /// Stops the instance and removes what the driver made for it. Retiring an instance that
    /// is already gone is `Ok`.
    async fn retire(&self, inst: &Instance) -> Result<(), MirrorError>;

    /// The instance as [`crate::probe`] sees it; a driver may mark it unreachable when its
    /// process is gone.
    async fn status(&self, inst: &Instance) -> Result<InstanceStatus, MirrorError>;
}

/// Checks an instance id (it names a directory): the error says what is wrong.
pub fn check_instance_id(id: &str) -> Result<(), MirrorError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(MirrorError::Provision {
            what: format!("instance id {id:?}"),
            message: "expected 1 to 64 letters, digits, '-', '_' or '.', not starting with '.'"
                .to_string(),
        })
    }
}
