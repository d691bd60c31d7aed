//! Is the primary there? The check a dependency must pass to be declared: the server opens a
//! TCP connection to the primary within a short timeout and asks the one question every
//! instance of the kind answers without credentials:
//!
//! - **redis**: `PING`; `+PONG` or an error reply (`-NOAUTH`: a Redis that wants a password
//!   is still a Redis answering) counts;
//! - **postgres**: an `SSLRequest` (the first message of every startup); PostgreSQL answers
//!   with one byte, `S` or `N`;
//! - **tcp**: the connection opening.
//!
//! Anything else (refused, timed out, closed, another protocol) is unreachable, with what
//! was seen.

use std::time::Duration;

use bellwether_model::mirror::DepKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long the whole check may take.
pub const REACH_TIMEOUT: Duration = Duration::from_secs(2);

/// `Ok` when the instance at `endpoint` answered as a `kind` instance within `timeout`;
/// `Err` says what happened instead.
pub async fn check(kind: DepKind, endpoint: &str, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, talk(kind, endpoint)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    }
}

async fn talk(kind: DepKind, endpoint: &str) -> Result<(), String> {
    let addr = endpoint
        .strip_prefix('[')
        .and_then(|r| r.split_once("]:"))
        .map(|(h, p)| format!("[{h}]:{p}"))
        .unwrap_or_else(|| endpoint.to_string());
    let mut s = TcpStream::connect(&addr)
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    match kind {
        DepKind::Tcp => Ok(()),
        DepKind::Redis => {
            s.write_all(b"*1\r\n$4\r\nPING\r\n")
                .await
                .map_err(|e| format!("cannot send PING: {e}"))?;
            let mut buf = [0u8; 64];
            let n = s
                .read(&mut buf)
                .await
                .map_err(|e| format!("no answer to PING: {e}"))?;
            let got = &buf[..n];
            if got.starts_with(b"+PONG") || got.starts_with(b"-") {
                Ok(())
            } else if n == 0 {
                Err("the connection closed without an answer to PING".into())
            } else {
                Err(format!(
                    "answered PING with {}, not as Redis does",
                    bellwether_model::text::quote(&String::from_utf8_lossy(got))
                ))
            }
        }
        DepKind::Postgres => {
            // SSLRequest: length 8, code 80877103.
            s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
                .await
                .map_err(|e| format!("cannot send a startup request: {e}"))?;
            let mut b = [0u8; 1];
            let n = s
                .read(&mut b)
                .await
                .map_err(|e| format!("no answer to a startup request: {e}"))?;
            match (n, b[0]) {
                (1, b'S' | b'N') => Ok(()),
                (0, _) => {
                    Err("the connection closed without an answer to a startup request".into())
                }
                (_, other) => Err(format!(
                    "answered a startup request with byte {other:#04x}, not as PostgreSQL does"
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A listener that answers every connection with `reply` (after reading what comes).
    async fn answering(reply: &'static [u8]) -> String {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 64];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(reply).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn each_kind_wants_its_own_answer() {
        let pong = answering(b"+PONG\r\n").await;
        let noauth = answering(b"-NOAUTH Authentication required.\r\n").await;
        let pg = answering(b"N").await;
        let http = answering(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        let t = Duration::from_secs(2);
        check(DepKind::Redis, &pong, t).await.unwrap();
        check(DepKind::Redis, &noauth, t).await.unwrap();
        check(DepKind::Postgres, &pg, t).await.unwrap();
        check(DepKind::Tcp, &http, t).await.unwrap();
        let e = check(DepKind::Redis, &http, t).await.unwrap_err();
        assert!(e.contains("not as Redis does"), "{e}");
        let e = check(DepKind::Postgres, &http, t).await.unwrap_err();
        assert!(e.contains("not as PostgreSQL does"), "{e}");
        let e = check(DepKind::Postgres, &pong, t).await.unwrap_err();
        assert!(e.contains("0x2b"), "{e}");
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        let e = check(DepKind::Tcp, &addr, Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(e.contains("cannot connect"), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_instance_times_out() {
        // Accepts, never answers.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let _keep = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        let e = check(DepKind::Redis, &addr, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(e.contains("no answer within 300 ms"), "{e}");
    }
}
