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
    // A primary's offset is its last acknowledged position: what a switch's promotion must
    // reach (`catch_up_to`) so that no acknowledged commit is lost. Its own flush position
    // would make a mirror wait, after a crash, for WAL that was never sent to it, and the
    // promotion time out.
    let offset = if role == Role::Primary {
        match acknowledged(&c, endpoint, offset, timeout).await {
            Ok(o) => o,
            Err(e) => return Ok(InstanceStatus::unreachable(since(started), e.to_string())),
        }
    } else {
        offset
    };
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
    acknowledged(&c, endpoint, flush, timeout).await
}

/// A primary's last acknowledged commit position, given its own flush position `flush`.
/// With synchronous standbys a commit is acknowledged only once one of them flushed it: the
/// furthest flush they confirmed bounds every acknowledged commit, while the primary's own
/// flush may hold more (commits waiting for a standby, WAL not sent yet), which a standby may
/// never receive if the primary dies now. Without them, or with none connected, its own flush.
async fn acknowledged(
    c: &tokio_postgres::Client,
    endpoint: &str,
    flush: u64,
    timeout: Duration,
) -> Result<u64, MirrorError> {
    let sql = "SELECT current_setting('synchronous_standby_names') <> '', \
               (SELECT max(flush_lsn) FROM pg_stat_replication WHERE sync_state IN ('sync', 'quorum'))";
    let rows = query(c, endpoint, sql, timeout).await?;
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

/// A standby's furthest position that a promotion keeps: what it received and flushed
/// (`pg_last_wal_receive_lsn`) or replayed, whichever is further. A promotion replays every
/// WAL record already in the standby's `pg_wal` before it ends recovery ("before failover, any
/// WAL immediately available in the archive or in pg_wal will be restored"), and a synchronous
/// commit is acknowledged once a standby *flushed* it, so this, not the replay position, is
/// what must reach the acknowledged commits.
async fn received(
    c: &tokio_postgres::Client,
    endpoint: &str,
    timeout: Duration,
) -> Result<u64, MirrorError> {
    let sql = "SELECT greatest(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())";
    let rows = query(c, endpoint, sql, timeout).await?;
    let pos: Option<PgLsn> = rows.first().and_then(|r| r.get(0));
    Ok(lsn(pos))
}

/// `conninfo` (libpq `key=value` pairs, values optionally single-quoted with `\` escapes) with
/// `host` and `port` set to `host`/`port` and every other pair kept as it was.
pub(crate) fn conninfo_at(conninfo: &str, host: &str, port: u16) -> String {
    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut chars = conninfo.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() {
            break;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek() == Some(&'=') {
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n);
                        }
                    }
                    '\'' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        pairs.push((key, value));
    }
    pairs.retain(|(k, _)| k != "host" && k != "port" && k != "hostaddr");
    pairs.push(("host".into(), host.to_string()));
    pairs.push(("port".into(), port.to_string()));
    pairs
        .iter()
        .map(|(k, v)| {
            let v = v.replace('\\', "\\\\").replace('\'', "\\'");
            format!("{k}='{v}'")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A SQL string literal.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Points the standby at `endpoint` to stream from `upstream` (`primary_conninfo` with the new
/// host and port, reloaded: the WAL receiver restarts on it), then waits until its WAL receiver
/// no longer streams from anywhere else. Returns the position it had received by then: it can
/// confirm no commit of its former upstream past it. `upstream` may itself be a standby
/// (cascading replication): once that one is promoted, this one follows its new timeline.
pub(crate) async fn repoint(
    endpoint: &str,
    upstream: &str,
    timeout: Duration,
) -> Result<u64, MirrorError> {
    let up = Endpoint::parse(upstream)?;
    let cfg = config(endpoint, timeout)?;
    let c = connect(endpoint, &cfg, timeout).await?;
    let (role, _) = role_and_offset(&c, endpoint, timeout).await?;
    if role != Role::Replica {
        return Err(MirrorError::WrongRole {
            endpoint: endpoint.to_string(),
            expected: "replica",
            actual: "primary".to_string(),
        });
    }
    let rows = query(
        &c,
        endpoint,
        "SELECT current_setting('primary_conninfo')",
        timeout,
    )
    .await?;
    let current: String = rows.first().map(|r| r.get(0)).unwrap_or_default();
    let next = conninfo_at(&current, &up.host, up.port);
    let started = Instant::now();
    if next != current {
        let set = format!("ALTER SYSTEM SET primary_conninfo = {}", literal(&next));
        query(&c, endpoint, &set, timeout).await?;
        query(&c, endpoint, "SELECT pg_reload_conf()", timeout).await?;
    }
    // The WAL receiver restarts on the new setting once the startup process sees the reload:
    // until then it may still confirm its former upstream's commits.
    let sql = "SELECT sender_host, sender_port FROM pg_stat_wal_receiver";
    loop {
        let rows = query(&c, endpoint, sql, timeout).await?;
        let from: Option<(Option<String>, Option<i32>)> =
            rows.first().map(|r| (r.get(0), r.get(1)));
        let elsewhere = match &from {
            None => false,
            Some((Some(h), Some(p))) => !(*h == up.host && *p == i32::from(up.port)),
            Some(_) => false,
        };
        if !elsewhere {
            break;
        }
        if started.elapsed() + CATCH_UP_POLL > timeout {
            return Err(protocol(
                endpoint,
                sql,
                format!(
                    "its WAL receiver still streams from {:?} {} ms after primary_conninfo was changed",
                    from,
                    ms(started.elapsed())
                ),
            ));
        }
        tokio::time::sleep(CATCH_UP_POLL).await;
    }
    let pos = received(&c, endpoint, timeout).await?;
    tracing::info!(
        endpoint,
        upstream,
        position = pos,
        "Repointed a PostgreSQL standby."
    );
    Ok(pos)
}

pub(crate) async fn promote(
    endpoint: &str,
    catch_up_to: Option<u64>,
    timeout: Duration,
) -> Result<PromoteReport, MirrorError> {
    let started = Instant::now();
    let cfg = config(endpoint, timeout)?;
    let c = connect(endpoint, &cfg, timeout).await?;
    let (role, _) = role_and_offset(&c, endpoint, timeout).await?;
    if role != Role::Replica {
        return Err(MirrorError::WrongRole {
            endpoint: endpoint.to_string(),
            expected: "replica",
            actual: "primary".to_string(),
        });
    }
    let mut offset = received(&c, endpoint, timeout).await?;
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
            offset = received(&c, endpoint, timeout).await?;
        }
    }
    let waited_ms = ms(started.elapsed());
    let promoting = Instant::now();
    // `pg_promote(true)` checks for the end of recovery every 100 ms; asking without waiting
    // and polling `pg_is_in_recovery()` every 5 ms answers as soon as it is a primary.
    let sql = "SELECT pg_promote(false)";
    let rows = query(&c, endpoint, sql, timeout).await?;
    let signalled: bool = rows.first().map(|r| r.get(0)).unwrap_or(false);
    if !signalled {
        return Err(protocol(endpoint, sql, "the standby refused to promote"));
    }
    let deadline = promoting + timeout.max(Duration::from_secs(1));
    loop {
        let rows = query(&c, endpoint, "SELECT pg_is_in_recovery()", timeout).await?;
        let recovering: bool = rows.first().map(|r| r.get(0)).unwrap_or(true);
        if !recovering {
            break;
        }
        if Instant::now() + CATCH_UP_POLL > deadline {
            return Err(protocol(
                endpoint,
                sql,
                format!(
                    "the standby did not finish its promotion within {} ms",
                    ms(promoting.elapsed())
                ),
            ));
        }
        tokio::time::sleep(CATCH_UP_POLL).await;
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

pub(crate) async fn fence(
    endpoint: &str,
    new_primary: Option<&str>,
    timeout: Duration,
) -> Result<FenceReport, MirrorError> {
    let cfg = config(endpoint, timeout)?;
    let c = connect(endpoint, &cfg, timeout).await?;
    if let Some(np) = new_primary {
        // A standby follows the new primary (it is not ahead of it: the promoted mirror had
        // reached every other mirror's position); a former primary cannot without pg_rewind
        // and is made read-only below.
        if role_and_offset(&c, endpoint, timeout).await?.0 == Role::Replica {
            drop(c);
            repoint(endpoint, np, timeout).await?;
            return Ok(FenceReport {
                method: format!("replicates from {np} (primary_conninfo)"),
                replicates: true,
            });
        }
    }
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
        replicates: false,
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
        replicates: false,
    })
}

#[cfg(test)]
mod tests {
    use super::conninfo_at;

    #[test]
    fn conninfo_gets_the_new_host_and_port_and_keeps_the_rest() {
        // As pg_basebackup -R writes it.
        let c = "user=postgres passfile='/var/lib/postgresql/.pgpass' channel_binding=prefer \
                 host=127.0.0.1 port=5432 sslmode=prefer application_name='a b\\'c'";
        let n = conninfo_at(c, "127.0.0.1", 40001);
        assert_eq!(
            n,
            "user='postgres' passfile='/var/lib/postgresql/.pgpass' channel_binding='prefer' \
             sslmode='prefer' application_name='a b\\'c' host='127.0.0.1' port='40001'"
        );
        // A hostaddr would win over host: it goes too. Spaces around '=' are allowed.
        assert_eq!(
            conninfo_at("hostaddr=10.0.0.1 port = 1 user=x", "::1", 2),
            "user='x' host='::1' port='2'"
        );
        assert_eq!(conninfo_at("", "h", 3), "host='h' port='3'");
    }
}
