//! Dependency mirroring, the IO side: ask a Redis or PostgreSQL instance what it is
//! ([`probe`]), read a primary's last acknowledged write position ([`primary_position`]),
//! promote a mirror once it holds every acknowledged write ([`promote`]), fence an old primary
//! ([`fence`]), and make and remove mirrors through a [`Provisioner`] ([`LocalProcess`] runs
//! them as local processes; a Kubernetes driver is the next one, see `docs/mirror-drivers.md`).
//!
//! This crate decides nothing: when to provision, promote or fence is
//! `bellwether_engine::mirror`'s decision. It never retries on its own beyond the wait a call
//! is given (a promote waits for the catch-up within its timeout, no longer).
//!
//! Endpoints are `HOST:PORT` (`[::1]:6379` for IPv6). A PostgreSQL endpoint may also be a
//! `postgres://` URL; `HOST:PORT` connects as the `postgres` role to the `postgres` database
//! (what a local mirror's `pg_basebackup` uses too). Redis connections carry no password.
//!
//! **What a promote guarantees.** Redis replication is asynchronous: a write the primary
//! answered `OK` to may not have reached any replica when the primary dies. [`promote`] waits
//! until the mirror's replication offset reaches `catch_up_to` and refuses otherwise, so the
//! promoted mirror holds every write up to that position — every write the primary had
//! acknowledged *and replicated*. A client (or the proxy) that counts a write as acknowledged
//! only after `WAIT 1 T` returned at least 1 loses none of them; one that trusts the plain
//! `OK` may lose the writes of the last moments before the crash. PostgreSQL with
//! `synchronous_standby_names` naming the mirror acknowledges a commit only once the standby
//! flushed it, so no acknowledged commit is lost; without it, the same caveat as Redis holds.

#![forbid(unsafe_code)]

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use bellwether_model::mirror::DepKind;

#[cfg(feature = "drill")]
pub mod drill;
pub mod local;
mod pg;
pub mod prober;
pub mod process;
pub mod provision;
mod redis;
pub mod resp;
#[cfg(feature = "testing")]
pub mod testing;

pub use process::LocalProcess;
pub use provision::{Instance, ProvisionRequest, Provisioner};

/// What went wrong talking to an instance or managing one.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// The endpoint is not `HOST:PORT` (or, for PostgreSQL, a `postgres://` URL).
    #[error("endpoint {endpoint:?} is not valid: {why}")]
    BadEndpoint { endpoint: String, why: String },
    /// The instance could not be reached within the timeout (refused, reset, timed out).
    #[error("{kind} instance {endpoint} is unreachable: {reason}")]
    Unreachable {
        kind: &'static str,
        endpoint: String,
        reason: String,
    },
    /// The instance answered with an error or with something this crate does not understand.
    #[error("{kind} instance {endpoint}: {what}: {message}")]
    Protocol {
        kind: &'static str,
        endpoint: String,
        what: String,
        message: String,
    },
    /// The mirror did not reach the position it must hold before a promote, within the
    /// timeout: promoting it would lose acknowledged writes, so it stays a replica.
    #[error("refusing to promote {endpoint}: it reached offset {reached} of the {required} it must hold within {waited_ms} ms; promoting it would lose acknowledged writes")]
    CatchUpTimeout {
        endpoint: String,
        required: u64,
        reached: u64,
        waited_ms: u64,
    },
    /// The instance is not in the role the call needs (promoting a primary, for instance);
    /// `actual` is `primary` or `replica`.
    #[error("{endpoint} is a {actual}, expected a {expected}")]
    WrongRole {
        endpoint: String,
        expected: &'static str,
        actual: String,
    },
    /// The operation does not exist for the kind (`tcp` has no replication to promote).
    #[error("{operation} is not supported for {kind} dependencies")]
    Unsupported {
        operation: &'static str,
        kind: &'static str,
    },
    /// A provisioning or retirement step failed; nothing of the instance was left behind
    /// unless `left` says otherwise.
    #[error("{what}: {message}")]
    Provision { what: String, message: String },
    /// A local file operation failed.
    #[error("{what} {path}: {message}")]
    Io {
        what: &'static str,
        path: String,
        message: String,
    },
}

/// The replication role of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Replica,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
        }
    }
}

/// What [`probe`] saw of one instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceStatus {
    /// It answered within the timeout.
    pub reachable: bool,
    /// Its replication role; `None` when unreachable or for `tcp` (no role to see).
    pub role: Option<Role>,
    /// Its replication position: Redis `master_repl_offset` (on a replica, the offset it has
    /// processed); PostgreSQL the LSN as a u64 (a primary's `pg_current_wal_flush_lsn`, a
    /// standby's `pg_last_wal_replay_lsn`).
    pub offset: Option<u64>,
    /// A replica's primary, `HOST:PORT`, as the replica names it.
    pub replica_of: Option<String>,
    /// Whether a replica's link to its primary is up (Redis `master_link_status`,
    /// PostgreSQL a streaming WAL receiver).
    pub link_up: Option<bool>,
    /// The round trip of the probe's first command, in milliseconds.
    pub latency_ms: f64,
    /// A replica's distance behind its primary in bytes (primary position − own offset),
    /// when the probe could also reach the primary it names.
    pub lag: Option<u64>,
    /// Why it is unreachable (or what failed), for events.
    pub error: Option<String>,
}

impl InstanceStatus {
    pub(crate) fn unreachable(latency_ms: f64, error: String) -> InstanceStatus {
        InstanceStatus {
            reachable: false,
            role: None,
            offset: None,
            replica_of: None,
            link_up: None,
            latency_ms,
            lag: None,
            error: Some(error),
        }
    }
}

/// What [`promote`] did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromoteReport {
    /// How long it waited for the mirror to reach `catch_up_to`.
    pub waited_ms: u64,
    /// The mirror's position when it was promoted.
    pub reached_offset: u64,
    /// How long the promotion itself took (`REPLICAOF NO ONE`, `pg_promote()`), in ms.
    pub promote_ms: u64,
}

/// How [`fence`] fenced an instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FenceReport {
    /// What was done, for events: `replicaof 10.0.0.2:6379`, `writes refused`, `read-only`.
    pub method: String,
    /// The instance now replicates from the new primary (a Redis `REPLICAOF`, a PostgreSQL
    /// standby whose `primary_conninfo` now names it): it stays a mirror.
    #[serde(default)]
    pub replicates: bool,
}

/// Asks the instance its role, replication position and latency. An unreachable instance is
/// `Ok` with `reachable: false` (that is an observation); `Err` is a bad endpoint.
pub async fn probe(
    kind: DepKind,
    endpoint: &str,
    timeout: Duration,
) -> Result<InstanceStatus, MirrorError> {
    match kind {
        DepKind::Redis => redis::probe(endpoint, timeout).await,
        DepKind::Postgres => pg::probe(endpoint, timeout).await,
        DepKind::Tcp => tcp_probe(endpoint, timeout).await,
    }
}

/// The primary's last acknowledged write position: Redis `master_repl_offset`; PostgreSQL
/// `pg_current_wal_flush_lsn()`, or with synchronous standbys the furthest flush LSN a
/// synchronous standby confirmed (commits past it are not yet acknowledged).
pub async fn primary_position(
    kind: DepKind,
    endpoint: &str,
    timeout: Duration,
) -> Result<u64, MirrorError> {
    match kind {
        DepKind::Redis => redis::primary_position(endpoint, timeout).await,
        DepKind::Postgres => pg::primary_position(endpoint, timeout).await,
        DepKind::Tcp => Err(MirrorError::Unsupported {
            operation: "primary_position",
            kind: "tcp",
        }),
    }
}

/// Promotes the mirror at `endpoint` once its position reached `catch_up_to` (when given),
/// waiting at most `timeout` for that; refuses with [`MirrorError::CatchUpTimeout`] (the
/// mirror stays a replica) if it did not. Promoting an instance that already is a primary is
/// [`MirrorError::WrongRole`].
pub async fn promote(
    kind: DepKind,
    endpoint: &str,
    catch_up_to: Option<u64>,
    timeout: Duration,
) -> Result<PromoteReport, MirrorError> {
    match kind {
        DepKind::Redis => redis::promote(endpoint, catch_up_to, timeout).await,
        DepKind::Postgres => pg::promote(endpoint, catch_up_to, timeout).await,
        DepKind::Tcp => Err(MirrorError::Unsupported {
            operation: "promote",
            kind: "tcp",
        }),
    }
}

/// Stops the old primary at `endpoint` from taking writes. Redis: `CLIENT PAUSE WRITE` (so no
/// write lands in between), then `REPLICAOF new_primary` when given (it becomes a read-only
/// replica of the new one), else `min-replicas-to-write` set out of reach (every write is
/// refused with `NOREPLICAS`), then `CLIENT UNPAUSE`. PostgreSQL: a standby given a `new_primary`
/// is [`repoint`]ed to it (`replicates: true`); a primary gets `default_transaction_read_only`
/// on, reloaded, and the other client sessions ended so they reconnect read-only (a client
/// that sets `transaction_read_only = off` itself is not stopped: stopping the instance is the
/// full fence). An unreachable instance is [`MirrorError::Unreachable`]: fence it when it is
/// back.
pub async fn fence(
    kind: DepKind,
    endpoint: &str,
    new_primary: Option<&str>,
    timeout: Duration,
) -> Result<FenceReport, MirrorError> {
    match kind {
        DepKind::Redis => redis::fence(endpoint, new_primary, timeout).await,
        DepKind::Postgres => pg::fence(endpoint, new_primary, timeout).await,
        DepKind::Tcp => Err(MirrorError::Unsupported {
            operation: "fence",
            kind: "tcp",
        }),
    }
}

/// Points a PostgreSQL standby at `upstream` (`primary_conninfo`, reloaded) and waits until it
/// no longer streams from anywhere else; returns the position it had received by then. Before
/// a promotion every other standby is pointed at the one being promoted (cascading): the old
/// primary then has no standby left that could confirm a commit except the one promoted, so
/// every commit it acknowledges is in the promoted one, frozen or not. Redis and tcp:
/// [`MirrorError::Unsupported`].
pub async fn repoint(
    kind: DepKind,
    endpoint: &str,
    upstream: &str,
    timeout: Duration,
) -> Result<u64, MirrorError> {
    match kind {
        DepKind::Postgres => pg::repoint(endpoint, upstream, timeout).await,
        DepKind::Redis => Err(MirrorError::Unsupported {
            operation: "repoint",
            kind: "redis",
        }),
        DepKind::Tcp => Err(MirrorError::Unsupported {
            operation: "repoint",
            kind: "tcp",
        }),
    }
}

/// Undoes a [`fence`] made without a new primary: Redis `min-replicas-to-write` back to 0
/// (its default) and `CLIENT UNPAUSE`; PostgreSQL `default_transaction_read_only` reset and
/// reloaded. An instance fenced into a replica of a new primary stays one: making it a primary
/// again is a [`promote`].
pub async fn unfence(
    kind: DepKind,
    endpoint: &str,
    timeout: Duration,
) -> Result<FenceReport, MirrorError> {
    match kind {
        DepKind::Redis => redis::unfence(endpoint, timeout).await,
        DepKind::Postgres => pg::unfence(endpoint, timeout).await,
        DepKind::Tcp => Err(MirrorError::Unsupported {
            operation: "unfence",
            kind: "tcp",
        }),
    }
}

/// Whether a PostgreSQL server's commits wait for a standby's flush (one boolean).
pub(crate) const SYNC_COMMITS_SQL: &str =
    "SELECT current_setting('synchronous_standby_names') <> '' \
     AND current_setting('synchronous_commit') IN ('on', 'remote_apply')";

/// A kept connection for latency samples (the local runner's sampler): one cheap round trip
/// per [`PingConn::ping`] (Redis `PING`, PostgreSQL `SELECT 1`), with no connection set-up in
/// the measured time. A `tcp` dependency has nothing to ping on an open connection.
pub struct PingConn(PingInner);

enum PingInner {
    Redis(redis::Redis),
    Postgres(tokio_postgres::Client),
}

impl PingConn {
    /// Opens one within `timeout`; `Unsupported` for `tcp`.
    pub async fn open(
        kind: DepKind,
        endpoint: &str,
        timeout: Duration,
    ) -> Result<PingConn, MirrorError> {
        match kind {
            DepKind::Redis => Ok(PingConn(PingInner::Redis(
                redis::Redis::connect(endpoint, timeout).await?,
            ))),
            DepKind::Postgres => {
                let cfg = pg::config(endpoint, timeout)?;
                Ok(PingConn(PingInner::Postgres(
                    pg::connect(endpoint, &cfg, timeout).await?,
                )))
            }
            DepKind::Tcp => Err(MirrorError::Unsupported {
                operation: "ping",
                kind: "tcp",
            }),
        }
    }

    /// PostgreSQL: whether the server acknowledges commits only once a standby flushed them
    /// (`synchronous_standby_names` set, `synchronous_commit` `on` or `remote_apply`); `None`
    /// for Redis or when it could not be read.
    pub async fn commits_wait_for_standbys(&mut self) -> Option<bool> {
        match &mut self.0 {
            PingInner::Redis(_) => None,
            PingInner::Postgres(c) => c
                .query_one(SYNC_COMMITS_SQL, &[])
                .await
                .ok()
                .and_then(|r| r.try_get::<_, bool>(0).ok()),
        }
    }

    /// One round trip, bounded by the `timeout` it was opened with (Redis); the caller bounds a
    /// PostgreSQL one.
    pub async fn ping(&mut self) -> Result<(), MirrorError> {
        match &mut self.0 {
            PingInner::Redis(r) => r.cmd(&["PING"]).await.map(|_| ()),
            PingInner::Postgres(c) => {
                c.simple_query("SELECT 1")
                    .await
                    .map(|_| ())
                    .map_err(|e| MirrorError::Unreachable {
                        kind: "postgres",
                        endpoint: String::new(),
                        reason: pg::db_message(&e),
                    })
            }
        }
    }
}

/// `tcp`: reachable when a connection opens; no role.
async fn tcp_probe(endpoint: &str, timeout: Duration) -> Result<InstanceStatus, MirrorError> {
    let addr = Endpoint::parse(endpoint)?;
    let started = tokio::time::Instant::now();
    let res = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr.to_string())).await;
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    Ok(match res {
        Ok(Ok(_)) => InstanceStatus {
            reachable: true,
            role: None,
            offset: None,
            replica_of: None,
            link_up: None,
            latency_ms,
            lag: None,
            error: None,
        },
        Ok(Err(e)) => InstanceStatus::unreachable(latency_ms, e.to_string()),
        Err(_) => InstanceStatus::unreachable(
            latency_ms,
            format!("no connection within {} ms", timeout.as_millis()),
        ),
    })
}

/// A `HOST:PORT` endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    /// Parses `HOST:PORT` or `[V6]:PORT`; the error names the endpoint and what is wrong.
    pub fn parse(s: &str) -> Result<Endpoint, MirrorError> {
        let bad = |why: &str| MirrorError::BadEndpoint {
            endpoint: s.to_string(),
            why: why.to_string(),
        };
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (h, p) = rest
                .split_once("]:")
                .ok_or_else(|| bad("expected [IPV6]:PORT"))?;
            (h, p)
        } else {
            s.rsplit_once(':')
                .ok_or_else(|| bad("expected HOST:PORT"))?
        };
        if host.is_empty() {
            return Err(bad("the host is empty"));
        }
        if host.contains(':') && !s.starts_with('[') {
            return Err(bad("an IPv6 host is written in brackets, [::1]:PORT"));
        }
        if host
            .chars()
            .any(|c| c.is_whitespace() || c == '/' || c == '@')
        {
            return Err(bad("the host has a space, '/' or '@'"));
        }
        let port: u16 = port
            .parse()
            .map_err(|_| bad("the port is not a number from 1 to 65535"))?;
        if port == 0 {
            return Err(bad("the port is not a number from 1 to 65535"));
        }
        Ok(Endpoint {
            host: host.to_string(),
            port,
        })
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

pub(crate) fn ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_and_bad_ones_say_why() {
        assert_eq!(
            Endpoint::parse("127.0.0.1:6379").unwrap(),
            Endpoint {
                host: "127.0.0.1".into(),
                port: 6379
            }
        );
        assert_eq!(
            Endpoint::parse("[::1]:5432").unwrap().to_string(),
            "[::1]:5432"
        );
        for (bad, why) in [
            ("localhost", "expected HOST:PORT"),
            (":6379", "host is empty"),
            ("h:0", "port is not a number"),
            ("h:70000", "port is not a number"),
            ("::1:6379", "brackets"),
            ("a b:1", "space"),
        ] {
            let e = Endpoint::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(e.contains(bad), "{bad}: {e}");
        }
    }
}
