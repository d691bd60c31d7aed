//! Active health checks: a TCP connect, or a PostgreSQL startup packet answered by the server.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use crate::config::{AdminState, CheckKind, HealthConfig};
use crate::pg;
use crate::Shared;

/// Runs one check against an address.
pub async fn check(kind: CheckKind, address: &str, cfg: &HealthConfig) -> Result<(), String> {
    let work = async {
        let mut s = TcpStream::connect(address)
            .await
            .map_err(|e| format!("connect: {e}"))?;
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
    timeout(cfg.timeout.0, work)
        .await
        .map_err(|_| format!("no answer within {:?}", cfg.timeout.0))?
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
                let r = check(cfg.check, &b.address, &cfg).await;
                (b, r)
            });
        }
        while let Some(Ok((b, r))) = set.join_next().await {
            shared.pool.record_check(&b, r, cfg.rise, cfg.fall);
        }
    }
}
