//! Redis: role and offset from `INFO replication`, promotion with `REPLICAOF NO ONE` once the
//! replica's processed offset reached the target, fencing with `CLIENT PAUSE WRITE`.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::resp::{info_fields, Conn, Value};
use crate::{ms, Endpoint, FenceReport, InstanceStatus, MirrorError, PromoteReport, Role};

const KIND: &str = "redis";

/// How often a promote re-reads the replica's offset while it waits for the catch-up. The
/// replica gives no event for "offset reached"; this bounds the extra wait to 5 ms.
const CATCH_UP_POLL: Duration = Duration::from_millis(5);

fn unreachable(endpoint: &str, e: impl std::fmt::Display) -> MirrorError {
    MirrorError::Unreachable {
        kind: KIND,
        endpoint: endpoint.to_string(),
        reason: e.to_string(),
    }
}

fn protocol(endpoint: &str, what: &str, message: impl std::fmt::Display) -> MirrorError {
    MirrorError::Protocol {
        kind: KIND,
        endpoint: endpoint.to_string(),
        what: what.to_string(),
        message: message.to_string(),
    }
}

/// A connection whose every failure names the endpoint.
pub(crate) struct Redis {
    conn: Conn,
    endpoint: String,
    timeout: Duration,
}

impl Redis {
    pub(crate) async fn connect(endpoint: &str, timeout: Duration) -> Result<Redis, MirrorError> {
        let addr = Endpoint::parse(endpoint)?;
        let conn = Conn::connect(&addr.to_string(), timeout)
            .await
            .map_err(|e| unreachable(endpoint, e))?;
        Ok(Redis {
            conn,
            endpoint: endpoint.to_string(),
            timeout,
        })
    }

    /// Runs one command; an error reply is [`MirrorError::Protocol`] naming the command, a
    /// lost connection or timeout [`MirrorError::Unreachable`].
    pub(crate) async fn cmd(&mut self, args: &[&str]) -> Result<Value, MirrorError> {
        match self.conn.cmd_within(args, self.timeout).await {
            Ok(Value::Error(e)) => Err(protocol(&self.endpoint, &args.join(" "), e)),
            Ok(v) => Ok(v),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                Err(protocol(&self.endpoint, &args.join(" "), e))
            }
            Err(e) => Err(unreachable(&self.endpoint, e)),
        }
    }

    pub(crate) async fn info_replication(&mut self) -> Result<Replication, MirrorError> {
        let v = self.cmd(&["INFO", "replication"]).await?;
        let text = v
            .as_text()
            .ok_or_else(|| protocol(&self.endpoint, "INFO replication", "not a text reply"))?;
        Replication::parse(&self.endpoint, &info_fields(&text))
    }
}

/// The fields of `INFO replication` this crate uses.
#[derive(Debug, Clone)]
pub(crate) struct Replication {
    pub role: Role,
    /// A primary's `master_repl_offset`; a replica's `slave_repl_offset` (what it processed).
    pub offset: u64,
    pub master: Option<String>,
    pub link_up: Option<bool>,
}

impl Replication {
    fn parse(endpoint: &str, f: &BTreeMap<String, String>) -> Result<Replication, MirrorError> {
        let num = |k: &str| -> Result<u64, MirrorError> {
            f.get(k)
                .and_then(|v| v.parse::<i64>().ok())
                .map(|v| v.max(0) as u64)
                .ok_or_else(|| protocol(endpoint, "INFO replication", format!("no number {k}")))
        };
        match f.get("role").map(String::as_str) {
            Some("master") => Ok(Replication {
                role: Role::Primary,
                offset: num("master_repl_offset")?,
                master: None,
                link_up: None,
            }),
            Some("slave") => {
                let host = f.get("master_host").cloned().unwrap_or_default();
                let port = f.get("master_port").cloned().unwrap_or_default();
                let master = if host.contains(':') {
                    format!("[{host}]:{port}")
                } else {
                    format!("{host}:{port}")
                };
                Ok(Replication {
                    role: Role::Replica,
                    // Before its first sync a replica reports -1 or nothing: offset 0.
                    offset: num("slave_repl_offset").unwrap_or(0),
                    master: Some(master),
                    link_up: Some(f.get("master_link_status").map(String::as_str) == Some("up")),
                })
            }
            other => Err(protocol(
                endpoint,
                "INFO replication",
                format!("unknown role {other:?}"),
            )),
        }
    }
}

pub(crate) async fn probe(
    endpoint: &str,
    timeout: Duration,
) -> Result<InstanceStatus, MirrorError> {
    Endpoint::parse(endpoint)?;
    let started = Instant::now();
    let since = |s: Instant| s.elapsed().as_secs_f64() * 1000.0;
    let mut r = match Redis::connect(endpoint, timeout).await {
        Ok(r) => r,
        Err(e) => return Ok(InstanceStatus::unreachable(since(started), e.to_string())),
    };
    let ping = Instant::now();
    if let Err(e) = r.cmd(&["PING"]).await {
        return Ok(InstanceStatus::unreachable(since(started), e.to_string()));
    }
    let latency_ms = since(ping);
    let rep = match r.info_replication().await {
        Ok(rep) => rep,
        Err(e) => return Ok(InstanceStatus::unreachable(latency_ms, e.to_string())),
    };
    // A replica's lag is measured against the primary it names, when that answers in time.
    let lag = match (&rep.master, rep.link_up) {
        (Some(master), Some(true)) => match Redis::connect(master, timeout).await {
            Ok(mut m) => m
                .info_replication()
                .await
                .ok()
                .filter(|p| p.role == Role::Primary)
                .map(|p| p.offset.saturating_sub(rep.offset)),
            Err(_) => None,
        },
        _ => None,
    };
    Ok(InstanceStatus {
        reachable: true,
        role: Some(rep.role),
        offset: Some(rep.offset),
        replica_of: rep.master,
        link_up: rep.link_up,
        latency_ms,
        lag,
        error: None,
    })
}

pub(crate) async fn primary_position(
    endpoint: &str,
    timeout: Duration,
) -> Result<u64, MirrorError> {
    let mut r = Redis::connect(endpoint, timeout).await?;
    let rep = r.info_replication().await?;
    if rep.role != Role::Primary {
        return Err(MirrorError::WrongRole {
            endpoint: endpoint.to_string(),
            expected: "primary",
            actual: "replica".to_string(),
        });
    }
    Ok(rep.offset)
}

pub(crate) async fn promote(
    endpoint: &str,
    catch_up_to: Option<u64>,
    timeout: Duration,
) -> Result<PromoteReport, MirrorError> {
    let started = Instant::now();
    let mut r = Redis::connect(endpoint, timeout).await?;
    let mut rep = r.info_replication().await?;
    if rep.role != Role::Replica {
        return Err(MirrorError::WrongRole {
            endpoint: endpoint.to_string(),
            expected: "replica",
            actual: "primary".to_string(),
        });
    }
    if let Some(target) = catch_up_to {
        let deadline = started + timeout;
        while rep.offset < target {
            if Instant::now() + CATCH_UP_POLL > deadline {
                return Err(MirrorError::CatchUpTimeout {
                    endpoint: endpoint.to_string(),
                    required: target,
                    reached: rep.offset,
                    waited_ms: ms(started.elapsed()),
                });
            }
            tokio::time::sleep(CATCH_UP_POLL).await;
            rep = r.info_replication().await?;
        }
    }
    let waited_ms = ms(started.elapsed());
    let promoting = Instant::now();
    r.cmd(&["REPLICAOF", "NO", "ONE"]).await?;
    let promote_ms = ms(promoting.elapsed());
    tracing::info!(
        endpoint,
        offset = rep.offset,
        waited_ms,
        "Promoted a Redis replica."
    );
    Ok(PromoteReport {
        waited_ms,
        reached_offset: rep.offset,
        promote_ms,
    })
}

pub(crate) async fn fence(
    endpoint: &str,
    new_primary: Option<&str>,
    timeout: Duration,
) -> Result<FenceReport, MirrorError> {
    let new = new_primary.map(Endpoint::parse).transpose()?;
    let mut r = Redis::connect(endpoint, timeout).await?;
    // Writes wait while the role changes, so none lands between the two steps.
    let pause_ms = ms(timeout).max(1000).to_string();
    r.cmd(&["CLIENT", "PAUSE", &pause_ms, "WRITE"]).await?;
    let method = match &new {
        Some(n) => {
            let port = n.port.to_string();
            r.cmd(&["REPLICAOF", &n.host, &port]).await?;
            format!("replicaof {n}")
        }
        None => {
            // No replica can ever satisfy it: every write is refused with NOREPLICAS, reads
            // go on, and setting it back to 0 undoes the fence.
            r.cmd(&["CONFIG", "SET", "min-replicas-to-write", "2147483647"])
                .await?;
            "writes refused (min-replicas-to-write)".to_string()
        }
    };
    r.cmd(&["CLIENT", "UNPAUSE"]).await?;
    tracing::info!(endpoint, method = %method, "Fenced a Redis instance.");
    Ok(FenceReport {
        replicates: new.is_some(),
        method,
    })
}

pub(crate) async fn unfence(endpoint: &str, timeout: Duration) -> Result<FenceReport, MirrorError> {
    let mut r = Redis::connect(endpoint, timeout).await?;
    r.cmd(&["CONFIG", "SET", "min-replicas-to-write", "0"])
        .await?;
    r.cmd(&["CLIENT", "UNPAUSE"]).await?;
    tracing::info!(endpoint, "Unfenced a Redis instance.");
    Ok(FenceReport {
        method: "writes accepted (min-replicas-to-write 0)".to_string(),
        replicates: false,
    })
}
