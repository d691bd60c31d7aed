//! A small Redis client: RESP2 over a tokio TCP stream, one command at a time. Enough for
//! `INFO`, `ROLE`, `REPLICAOF`, `WAIT`, `CLIENT PAUSE` and the tests' writes; no pipelining,
//! no pub/sub, no authentication. Replies are bounded (a bulk string of at most 512 MiB, the
//! Redis limit; arrays nested at most 8 deep), so a peer that is not Redis cannot make it
//! allocate without end.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The longest bulk string accepted (Redis' own `proto-max-bulk-len` default).
const MAX_BULK: usize = 512 * 1024 * 1024;
/// The most elements one array reply may announce.
const MAX_ARRAY: usize = 1 << 20;
/// The deepest nesting of arrays accepted.
const MAX_DEPTH: usize = 8;
/// The longest simple string, error or number line.
const MAX_LINE: usize = 64 * 1024;

/// One RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Value>>),
}

impl Value {
    /// The reply as text (simple string or bulk string), if it is one.
    pub fn as_text(&self) -> Option<String> {
        match self {
            Value::Simple(s) => Some(s.clone()),
            Value::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }
}

/// One connection to a Redis server.
pub struct Conn {
    stream: BufReader<TcpStream>,
}

impl Conn {
    /// Connects to `addr` (`HOST:PORT`) within `timeout`.
    pub async fn connect(addr: &str, timeout: Duration) -> io::Result<Conn> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no connection within {} ms", timeout.as_millis()),
                )
            })??;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream: BufReader::new(stream),
        })
    }

    /// Sends one command and reads its reply. An error reply is `Ok(Value::Error)`; use
    /// [`Conn::cmd_ok`] to make it an `Err`.
    pub async fn cmd<A: AsRef<[u8]>>(&mut self, args: &[A]) -> io::Result<Value> {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            let a = a.as_ref();
            buf.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            buf.extend_from_slice(a);
            buf.extend_from_slice(b"\r\n");
        }
        self.stream.get_mut().write_all(&buf).await?;
        self.read_value(0).await
    }

    /// [`Conn::cmd`] with an error reply turned into an `io::Error` carrying its text.
    pub async fn cmd_ok<A: AsRef<[u8]>>(&mut self, args: &[A]) -> io::Result<Value> {
        match self.cmd(args).await? {
            Value::Error(e) => Err(io::Error::other(e)),
            v => Ok(v),
        }
    }

    /// [`Conn::cmd`] bounded by `timeout`.
    pub async fn cmd_within<A: AsRef<[u8]>>(
        &mut self,
        args: &[A],
        timeout: Duration,
    ) -> io::Result<Value> {
        tokio::time::timeout(timeout, self.cmd(args))
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no reply within {} ms", timeout.as_millis()),
                )
            })?
    }

    async fn read_line(&mut self) -> io::Result<String> {
        let mut line = Vec::new();
        let n = (&mut self.stream)
            .take(MAX_LINE as u64 + 2)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ));
        }
        if !line.ends_with(b"\r\n") {
            return Err(protocol("a reply line without CRLF or longer than 64 KiB"));
        }
        line.truncate(line.len() - 2);
        String::from_utf8(line).map_err(|_| protocol("a reply line that is not UTF-8"))
    }

    fn read_value(
        &mut self,
        depth: usize,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = io::Result<Value>> + Send + '_>> {
        Box::pin(async move {
            let line = self.read_line().await?;
            // The type byte is ASCII in RESP; anything else is refused below.
            let (tag, rest) = if line.as_bytes().first().is_some_and(u8::is_ascii) {
                line.split_at(1)
            } else {
                ("", line.as_str())
            };
            match tag {
                "+" => Ok(Value::Simple(rest.to_string())),
                "-" => Ok(Value::Error(rest.to_string())),
                ":" => rest
                    .parse()
                    .map(Value::Int)
                    .map_err(|_| protocol("an integer reply that is not a number")),
                "$" => {
                    let len: i64 = rest
                        .parse()
                        .map_err(|_| protocol("a bulk length that is not a number"))?;
                    if len < 0 {
                        return Ok(Value::Bulk(None));
                    }
                    let len = len as usize;
                    if len > MAX_BULK {
                        return Err(protocol("a bulk string longer than 512 MiB"));
                    }
                    let mut data = vec![0; len + 2];
                    self.stream.read_exact(&mut data).await?;
                    if !data.ends_with(b"\r\n") {
                        return Err(protocol("a bulk string without its CRLF"));
                    }
                    data.truncate(len);
                    Ok(Value::Bulk(Some(data)))
                }
                "*" => {
                    let len: i64 = rest
                        .parse()
                        .map_err(|_| protocol("an array length that is not a number"))?;
                    if len < 0 {
                        return Ok(Value::Array(None));
                    }
                    if len as usize > MAX_ARRAY || depth >= MAX_DEPTH {
                        return Err(protocol("an array too long or nested too deep"));
                    }
                    let mut items = Vec::with_capacity(len as usize);
                    for _ in 0..len {
                        items.push(self.read_value(depth + 1).await?);
                    }
                    Ok(Value::Array(Some(items)))
                }
                _ => Err(protocol("a reply that is not RESP2")),
            }
        })
    }
}

fn protocol(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// The `key:value` fields of an `INFO` reply.
pub fn info_fields(text: &str) -> std::collections::BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A one-shot fake peer: answers the first command with `reply` bytes.
    async fn peer(reply: &'static [u8]) -> String {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 256];
            let _ = s.read(&mut buf).await;
            s.write_all(reply).await.unwrap();
            let _ = s.read(&mut buf).await;
        });
        addr
    }

    #[tokio::test]
    async fn parses_nested_replies() {
        let addr = peer(b"*3\r\n$6\r\nmaster\r\n:42\r\n*1\r\n*2\r\n+a\r\n$-1\r\n").await;
        let mut c = Conn::connect(&addr, Duration::from_secs(2)).await.unwrap();
        let v = c.cmd(&["ROLE"]).await.unwrap();
        assert_eq!(
            v,
            Value::Array(Some(vec![
                Value::Bulk(Some(b"master".to_vec())),
                Value::Int(42),
                Value::Array(Some(vec![Value::Array(Some(vec![
                    Value::Simple("a".into()),
                    Value::Bulk(None)
                ]))])),
            ]))
        );
    }

    #[tokio::test]
    async fn refuses_what_is_not_resp() {
        for reply in [
            &b"HTTP/1.1 400 Bad Request\r\n"[..],
            "\u{e9}t\u{e9}\r\n".as_bytes(),
            b"$999999999999\r\n",
            b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",
            b":abc\r\n",
        ] {
            let addr = peer(reply).await;
            let mut c = Conn::connect(&addr, Duration::from_secs(2)).await.unwrap();
            let e = c.cmd(&["PING"]).await.unwrap_err();
            assert_eq!(
                e.kind(),
                io::ErrorKind::InvalidData,
                "{:?}: {e}",
                String::from_utf8_lossy(reply)
            );
        }
    }

    #[test]
    fn info_fields_skip_sections() {
        let f = info_fields("# Replication\r\nrole:slave\r\nmaster_port:6380\r\n\r\n");
        assert_eq!(f["role"], "slave");
        assert_eq!(f["master_port"], "6380");
        assert_eq!(f.len(), 2);
    }
}
