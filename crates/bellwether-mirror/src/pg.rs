//! PostgreSQL: role from `pg_is_in_recovery()`, positions as LSNs (u64), promotion with
//! `pg_promote()` once the standby replayed the target LSN, fencing with
//! `default_transaction_read_only`.

use std::str::FromStr;
use std::time::Duration;

use tokio::time::Instant;
use tokio_postgres::types::PgLsn;

use crate::{ms, Endpoint, FenceReport, InstanceStatus, MirrorError, PromoteReport, Role};

const KIND: &str = "postgres";

/// How often a promote re-reads the standby's replay LSN while it waits for the catch-up.
const CATCH_UP_POLL: Duration = Duration::from_millis(5);

fn unreachable(endpoint: &str, e: impl std::fmt::Display) -> MirrorError {
    MirrorError::Unreachable {
        kind: KIND,
        endpoint: endpoint.to_string(),
        reason: e.to_string(),
    }
}

fn protocol(endpoint: &str, what: &str, e: impl std::fmt::Display) -> MirrorError {
    MirrorError::Protocol {
        kind: KIND,
        endpoint: endpoint.to_string(),
        what: what.to_string(),
        message: e.to_string(),
    }
}

/// The connection settings of an endpoint: a `postgres://` URL as given, `HOST:PORT` as the
/// `postgres` role on the `postgres` database.
pub(crate) fn config(
    endpoint: &str,
    timeout: Duration,
) -> Result<tokio_postgres::Config, MirrorError> {
    let mut cfg = if endpoint.starts_with("postgres://") || endpoint.starts_with("postgresql://") {
        tokio_postgres::Config::from_str(endpoint).map_err(|e| MirrorError::BadEndpoint {
            endpoint: endpoint.to_string(),
            why: e.to_string(),
        })?
    } else {
        let ep = Endpoint::parse(endpoint)?;
        let mut c = tokio_postgres::Config::new();
        c.host(&ep.host)
            .port(ep.port)
            .user("postgres")
            .dbname("postgres");
        c
    };
    cfg.connect_timeout(timeout);
    cfg.application_name("bellwether-mirror");
    Ok(cfg)
}

/// The settings of `cfg` (role, password, database) at another address.
fn same_role_at(
    cfg: &tokio_postgres::Config,
    host: &str,
    port: u16,
    timeout: Duration,
) -> tokio_postgres::Config {
    let mut c = tokio_postgres::Config::new();
    c.host(host).port(port).connect_timeout(timeout);
    c.application_name("bellwether-mirror");
    if let Some(u) = cfg.get_user() {
        c.user(u);
    }
    if let Some(p) = cfg.get_password() {
        c.password(p);
    }
    if let Some(d) = cfg.get_dbname() {
        c.dbname(d);
    }
    c
}

pub(crate) async fn connect(
    endpoint: &str,
    cfg: &tokio_postgres::Config,
    timeout: Duration,
) -> Result<tokio_postgres::Client, MirrorError> {
    let (client, conn) = tokio::time::timeout(timeout, cfg.connect(tokio_postgres::NoTls))
        .await
        .map_err(|_| {
            unreachable(
                endpoint,
                format!("no connection within {} ms", timeout.as_millis()),
            )
        })?
        .map_err(|e| unreachable(endpoint, e))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// One query's rows within `timeout`; errors name the endpoint and the query.
async fn query(
    c: &tokio_postgres::Client,
    endpoint: &str,
    sql: &str,
    timeout: Duration,
) -> Result<Vec<tokio_postgres::Row>, MirrorError> {
    match tokio::time::timeout(timeout, c.query(sql, &[])).await {
        Err(_) => Err(unreachable(
            endpoint,
            format!("no answer to {sql:?} within {} ms", timeout.as_millis()),
        )),
        Ok(Err(e)) if e.is_closed() => Err(unreachable(endpoint, e)),
        Ok(Err(e)) => Err(protocol(endpoint, sql, db_message(&e))),
        Ok(Ok(rows)) => Ok(rows),
    }
}

pub(crate) fn db_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => d.message().to_string(),
        None => e.to_string(),
    }
}

fn lsn(v: Option<PgLsn>) -> u64 {
    v.map(u64::from).unwrap_or(0)
}

/// Role and position of a connected instance.
async fn role_and_offset(
    c: &tokio_postgres::Client,
    endpoint: &str,
    timeout: Duration,
) -> Result<(Role, u64), MirrorError> {
    let sql = "SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() \
               THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_flush_lsn() END";
    let rows = query(c, endpoint, sql, timeout).await?;
    let row = rows
        .first()
        .ok_or_else(|| protocol(endpoint, sql, "no row"))?;
    let recovery: bool = row.get(0);
    let pos: Option<PgLsn> = row.get(1);
    Ok((
        if recovery {
            Role::Replica
        } else {
            Role::Primary
        },
        lsn(pos),
    ))
}

pub(crate) async fn probe(
    endpoint: &str,
    timeout: Duration,
) -> Result<InstanceStatus, MirrorError> {
    let cfg = config(endpoint, timeout)?;
    let started = Instant::now();
    let since = |s: Instant| s.elapsed().as_secs_f64() * 1000.0;
    let c = match connect(endpoint, &cfg, timeout).await {
        Ok(c) => c,
        Err(e) => return Ok(InstanceStatus::unreachable(since(started), e.to_string())),
    };
    let first = Instant::now();
    let (role, offset) = match role_and_offset(&c, endpoint, timeout).await {
        Ok(v) => v,
        Err(e) => return Ok(InstanceStatus::unreachable(since(started), e.to_string())),
    };
    let latency_ms = since(first);
    let mut status = InstanceStatus {
        reachable: true,
        role: Some(role),
        offset: Some(offset),
        replica_of: None,
        link_up: None,
        latency_ms,
        lag: None,
        error: None,
    };
    if role == Role::Replica {
        let sql = "SELECT sender_host, sender_port, status FROM pg_stat_wal_receiver";
        let rows = query(&c, endpoint, sql, timeout).await?;
        match rows.first() {
            Some(r) => {
                let host: Option<String> = r.get(0);
                let port: Option<i32> = r.get(1);
                let st: Option<String> = r.get(2);
                status.link_up = Some(st.as_deref() == Some("streaming"));
                if let (Some(h), Some(p)) = (host, port) {
                    let primary = Endpoint {
                        host: h.clone(),
                        port: p as u16,
                    };
                    status.replica_of = Some(primary.to_string());
                    // Measured with the same role and database, at the sender's address.
                    let pcfg = same_role_at(&cfg, &h, p as u16, timeout);
                    if let Ok(pc) = connect(&primary.to_string(), &pcfg, timeout).await {
                        if let Ok((Role::Primary, pos)) =
                            role_and_offset(&pc, &primary.to_string(), timeout).await
                        {
                            status.lag = Some(pos.saturating_sub(offset));
                        }
                    }
                }
            }
            None => status.link_up = Some(false),
        }
    }
    Ok(status)
}

pub(crate) async fn primary_position(
    endpoint: &str,
    timeout: Duration,
) -> Result<u64, MirrorError> {
    let cfg = config(endpoint, timeout)?;
    let c = connect(endpoint, &cfg, timeout).await?;
    let (role, flush) = role_and_offset(&c, endpoint, timeout).await?;
    if role != Role::Primary {
        return Err(MirrorError::WrongRole {
            endpoint: endpoint.to_string(),
            expected: "primary",
            actual: "replica".to_string(),
        });
    }
    // With synchronous standbys a commit is acknowledged only once one of them flushed it:
    // the furthest flush they confirmed bounds every acknowledged commit.
    let sql = "SELECT current_setting('synchronous_standby_names') <> '', \
               (SELECT max(flush_lsn) FROM pg_stat_replication WHERE sync_state IN ('sync', 'quorum'))";
    let rows = query(&c, endpoint, sql, timeout).await?;
    let row = rows
        .first()
        .ok_or_else(|| protocol(endpoint, sql, "no row"))?;
    let sync: bool = row.get(0);
    let synced: Option<PgLsn> = row.get(1);
    Ok(match (sync, synced) {
        (true, Some(s)) => u64::from(s).min(flush),
        _ => flush,
    })
}

pub(crate) async fn promote(
    endpoint: &str,
    catch_up_to: Option<u64>,
    timeout: Duration,
) -> Result<PromoteReport, MirrorError> {
    let started = Instant::now();
    let cfg = config(endpoint, timeout)?;
    let c = connect(endpoint, &cfg, timeout).await?;
    let (role, mut offset) = role_and_offset(&c, endpoint, timeout).await?;
    if role != Role::Replica {
        return Err(MirrorError::WrongRole {
            endpoint: endpoint.to_string(),
            expected: "replica",
            actual: "primary".to_string(),
        });
    }
    if let Some(target) = catch_up_to {
        let deadline = started + timeout;
        while offset < target {
            if Instant::now() + CATCH_UP_POLL > deadline {
                return Err(MirrorError::CatchUpTimeout {
                    endpoint: endpoint.to_string(),
                    required: target,
                    reached: offset,
                    waited_ms: ms(started.elapsed()),
                });
            }
            tokio::time::sleep(CATCH_UP_POLL).await;
            offset = role_and_offset(&c, endpoint, timeout).await?.1;
        }
    }
    let waited_ms = ms(started.elapsed());
    let promoting = Instant::now();
    let secs = timeout.as_secs().clamp(1, i32::MAX as u64).to_string();
    let sql = format!("SELECT pg_promote(true, {secs})");
    let rows = query(&c, endpoint, &sql, timeout + Duration::from_secs(1)).await?;
    let done: bool = rows.first().map(|r| r.get(0)).unwrap_or(false);
    if !done {
        return Err(protocol(
            endpoint,
            &sql,
            format!("the standby did not finish its promotion within {secs} s"),
        ));
    }
    let promote_ms = ms(promoting.elapsed());
    tracing::info!(
        endpoint,
        offset,
        waited_ms,
        "Promoted a PostgreSQL standby."
    );
    Ok(PromoteReport {
        waited_ms,
        reached_offset: offset,
        promote_ms,
    })
}

pub(crate) async fn fence(endpoint: &str, timeout: Duration) -> Result<FenceReport, MirrorError> {
    let cfg = config(endpoint, timeout)?;
    let c = connect(endpoint, &cfg, timeout).await?;
    for sql in [
        "ALTER SYSTEM SET default_transaction_read_only = on",
        "SELECT pg_reload_conf()",
        // Sessions reconnect and start read-only; this one is ours.
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
    ] {
        query(&c, endpoint, sql, timeout).await?;
    }
    tracing::info!(endpoint, "Fenced a PostgreSQL instance (read-only).");
    Ok(FenceReport {
        method: "read-only (default_transaction_read_only)".to_string(),
    })
}

pub(crate) async fn unfence(endpoint: &str, timeout: Duration) -> Result<FenceReport, MirrorError> {
    let cfg = config(endpoint, timeout)?;
    let c = connect(endpoint, &cfg, timeout).await?;
    for sql in [
        "ALTER SYSTEM RESET default_transaction_read_only",
        "SELECT pg_reload_conf()",
    ] {
        query(&c, endpoint, sql, timeout).await?;
    }
    tracing::info!(endpoint, "Unfenced a PostgreSQL instance.");
    Ok(FenceReport {
        method: "writable (default_transaction_read_only reset)".to_string(),
    })
}
