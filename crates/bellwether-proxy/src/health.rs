//! Active health checks: a TCP connect, a PostgreSQL startup packet answered by the server,
//! or Redis's `PING` and `ROLE`.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use crate::config::{AdminState, CheckKind, HealthConfig, Role};
use crate::pool::Observed;
use crate::Shared;
use crate::{pg, redis};

/// Runs one check against an address.
pub async fn check(kind: CheckKind, address: &str, cfg: &HealthConfig) -> Result<(), String> {
    check_backend(kind, address, None, None, cfg).await.1
}

/// Sends one command and reads its whole reply.
async fn redis_call(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    argv: &[&str],
) -> Result<redis::Value, String> {
    s.write_all(&redis::encode_command(argv))
        .await
        .map_err(|e| format!("write: {e}"))?;
    loop {
        if let Some((v, n)) =
            redis::parse_value(buf).map_err(|e| format!("{} reply: {e}", argv[0]))?
        {
            buf.drain(..n);
            return Ok(v);
        }
        if buf.len() > 1 << 20 {
            return Err(format!("{} reply larger than 1 MiB", argv[0]));
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err(format!(
                "the server closed the connection after {}",
                argv[0]
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The Redis check: `AUTH` with the backend's password (if any), `PING` answered `+PONG`,
/// then `ROLE`, whose role must be `master` when the backend is meant to be primary.
async fn check_redis(
    s: &mut TcpStream,
    password: Option<&str>,
    role: Option<Role>,
    observed_out: &mut Option<Observed>,
) -> Result<(), String> {
    let mut buf = Vec::new();
    if let Some(p) = password {
        if let redis::Value::Error(e) = redis_call(s, &mut buf, &["AUTH", p]).await? {
            return Err(format!("AUTH refused: {e}"));
        }
    }
    match redis_call(s, &mut buf, &["PING"]).await? {
        redis::Value::Simple(p) if p == "PONG" => {}
        other => return Err(format!("PING answered {other:?}, not PONG")),
    }
    let observed = match redis_call(s, &mut buf, &["ROLE"]).await? {
        redis::Value::Array(Some(items)) => {
            let role = match items.first() {
                Some(redis::Value::Bulk(Some(r))) => String::from_utf8_lossy(r).into_owned(),
                other => return Err(format!("ROLE answered {other:?} first")),
            };
            let offset = match (role.as_str(), items.get(1), items.get(4)) {
                ("master", Some(redis::Value::Int(o)), _) => Some(*o),
                ("slave", _, Some(redis::Value::Int(o))) => Some(*o),
                _ => None,
            };
            Observed { role, offset }
        }
        redis::Value::Error(e) => return Err(format!("ROLE refused: {e}")),
        other => return Err(format!("ROLE answered {other:?}")),
    };
    let _ = s.write_all(&redis::encode_command(&["QUIT"])).await;
    let is_master = observed.role == "master";
    let said = observed.role.clone();
    *observed_out = Some(observed);
    if role == Some(Role::Primary) && !is_master {
        return Err(format!("meant to be primary, but ROLE says `{said}`"));
    }
    Ok(())
}

/// Runs one check against a backend: what the Redis check read from `ROLE` (even when the
/// check fails for it), and the verdict.
pub async fn check_backend(
    kind: CheckKind,
    address: &str,
    password: Option<&str>,
    role: Option<Role>,
    cfg: &HealthConfig,
) -> (Option<Observed>, Result<(), String>) {
    let mut observed = None;
    let work = async {
        let mut s = TcpStream::connect(address)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        if kind == CheckKind::Redis {
            return check_redis(&mut s, password, role, &mut observed).await;
        }
        if kind != CheckKind::Postgres {
            return Ok(());
        }
        let params = vec![
            ("user".to_string(), cfg.user.clone()),
            ("database".to_string(), cfg.database.clone()),
        ];
        s.write_all(&pg::encode_startup(&params))
            .await
            .map_err(|e| format!("write: {e}"))?;
        let tag = s
            .read_u8()
            .await
            .map_err(|e| format!("no answer to the startup packet: {e}"))?;
        let len = s
            .read_i32()
            .await
            .map_err(|e| format!("short answer: {e}"))?;
        if !(4..=65_536).contains(&len) {
            return Err(format!("answer of length {len} is not PostgreSQL"));
        }
        let mut body = vec![0u8; len as usize - 4];
        s.read_exact(&mut body)
            .await
            .map_err(|e| format!("short answer: {e}"))?;
        let _ = s.write_all(&pg::encode_message(b'X', &[])).await;
        match tag {
            b'R' | b'Z' | b'S' | b'K' | b'N' => Ok(()),
            b'E' => {
                // Authentication or database errors show a live server; "starting up",
                // "shutting down" and "too many connections" do not take sessions.
                let code = pg::error_code(&body).unwrap_or_default();
                if code == "57P03" || code == "53300" || code.starts_with("57P") {
                    Err(format!(
                        "server answers {code}: {}",
                        pg::error_field(&body, b'M').unwrap_or_default()
                    ))
                } else {
                    Ok(())
                }
            }
            t => Err(format!(
                "answer starts with {:?}, not a PostgreSQL message",
                t as char
            )),
        }
    };
    let r = timeout(cfg.timeout.0, work)
        .await
        .map_err(|_| format!("no answer within {:?}", cfg.timeout.0))
        .and_then(|r| r);
    (observed, r)
}

/// Checks every backend once per interval until `stop`.
pub(crate) async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let cfg = shared.config.health.clone();
    if cfg.check == CheckKind::None {
        return;
    }
    let mut tick = tokio::time::interval(cfg.interval.0.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let mut set = JoinSet::new();
        for b in shared.pool.backends() {
            if b.admin() == AdminState::Maintenance {
                continue;
            }
            let cfg = cfg.clone();
            set.spawn(async move {
                let r = check_backend(cfg.check, &b.address, b.password.as_deref(), b.role(), &cfg)
                    .await;
                (b, r)
            });
        }
        while let Some(Ok((b, (observed, r)))) = set.join_next().await {
            if cfg.check == CheckKind::Redis {
                shared.pool.record_observed(&b, observed);
            }
            shared.pool.record_check(&b, r, cfg.rise, cfg.fall);
        }
    }
}
