//! One client connection: the generic TCP pipe, and the PostgreSQL session that can move to
//! another server at a transaction boundary.

use std::collections::VecDeque;
use std::future::{poll_fn, Future as _};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

use crate::config::Role;
use crate::pg::{self, ProtocolError, Seen, Session, Startup};
use crate::pool::Backend;
use crate::registry::{CancelRoute, ConnEntry};
use crate::Shared;

/// How long a client may take to send its startup packet.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);

/// Opens a server connection for a new session. With roles, that is the primary, and when
/// none is available the session waits for one up to `primary_wait` (a switch in progress).
async fn connect_new(shared: &Shared, except: &[String]) -> Option<(Arc<Backend>, TcpStream)> {
    let deadline = Instant::now() + shared.config.primary_wait;
    let mut gen = shared.pool.subscribe();
    loop {
        gen.borrow_and_update();
        if let Some(found) = connect_any(shared, except).await {
            return Some(found);
        }
        if !shared.pool.has_roles() {
            return None;
        }
        // Woken by a change of the pool (a new primary, health), or a short retry for a
        // primary that is marked up but refused the connection.
        let retry = Instant::now() + Duration::from_millis(100);
        tokio::select! {
            _ = gen.changed() => {}
            _ = tokio::time::sleep_until(retry.min(deadline)) => {}
        }
        if Instant::now() >= deadline {
            return None;
        }
    }
}

/// Opens a server connection to the first backend that accepts one, trying others on error.
async fn connect_any(shared: &Shared, except: &[String]) -> Option<(Arc<Backend>, TcpStream)> {
    let mut tried: Vec<String> = except.to_vec();
    while let Some(b) = shared.pool.pick(&tried) {
        tried.push(b.name.clone());
        match connect_backend(shared, &b).await {
            Ok(s) => return Some((b, s)),
            Err(e) => {
                tracing::warn!(backend = %b.name, address = %b.address, error = %e, "Backend connect failed.")
            }
        }
    }
    None
}

pub(crate) async fn connect_backend(shared: &Shared, b: &Backend) -> Result<TcpStream, String> {
    let started = Instant::now();
    let r = match timeout(
        shared.config.connect_timeout,
        TcpStream::connect(&b.address),
    )
    .await
    {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("connect timed out".to_string()),
    };
    match r {
        Ok(s) => {
            let _ = s.set_nodelay(true);
            shared.pool.record_connect(b, Ok(started.elapsed()));
            Ok(s)
        }
        Err(e) => {
            shared.pool.record_connect(b, Err(&e));
            Err(e)
        }
    }
}

/// A generic TCP connection: two sockets and a buffer per direction, driven by one poll
/// function, so a request and its answer cost one task wake-up each and no allocation.
struct Pipe {
    client: TcpStream,
    server: TcpStream,
    up: Dir,
    down: Dir,
    /// The client has sent EOF; once `up` is empty the server's write side is shut.
    up_eof: bool,
    up_shut: bool,
    down_eof: bool,
    down_shut: bool,
    entry: Arc<ConnEntry>,
    backend: Arc<Backend>,
}

impl Pipe {
    /// Copies both ways until both sides have closed (half-closes are passed on) or an error.
    fn pump(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut progress = false;
            if let Some(n) = copy_step(
                cx,
                &mut self.client,
                &mut self.server,
                &mut self.up,
                (&mut self.up_eof, &mut self.up_shut),
                &mut progress,
            )? {
                self.entry.bytes_to_backend.fetch_add(n, Relaxed);
                self.backend.metrics.bytes_to_backend.fetch_add(n, Relaxed);
            }
            if let Some(n) = copy_step(
                cx,
                &mut self.server,
                &mut self.client,
                &mut self.down,
                (&mut self.down_eof, &mut self.down_shut),
                &mut progress,
            )? {
                self.entry.bytes_to_client.fetch_add(n, Relaxed);
                self.backend.metrics.bytes_to_client.fetch_add(n, Relaxed);
            }
            if self.up_shut && self.down_shut {
                return Poll::Ready(Ok(()));
            }
            if !progress {
                return Poll::Pending;
            }
        }
    }
}

/// One direction of a [`Pipe`]: read when the buffer is empty, write what it holds, pass an
/// EOF on as a write shutdown once the buffer is out. Returns the bytes read, if any.
fn copy_step(
    cx: &mut Context<'_>,
    from: &mut TcpStream,
    to: &mut TcpStream,
    buf: &mut Dir,
    (eof, shut): (&mut bool, &mut bool),
    progress: &mut bool,
) -> io::Result<Option<u64>> {
    let mut read = None;
    if !*eof && buf.is_empty() {
        let mut rb = ReadBuf::new(&mut buf.buf);
        if let Poll::Ready(r) = Pin::new(&mut *from).poll_read(cx, &mut rb) {
            r?;
            let n = rb.filled().len();
            if n == 0 {
                *eof = true;
            } else {
                buf.start = 0;
                buf.end = n;
                read = Some(n as u64);
            }
            *progress = true;
        }
    }
    while !buf.is_empty() {
        match Pin::new(&mut *to).poll_write(cx, &buf.buf[buf.start..buf.end]) {
            Poll::Ready(Ok(0)) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "the peer accepts no more bytes",
                ))
            }
            Poll::Ready(Ok(n)) => {
                buf.start += n;
                *progress = true;
            }
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => break,
        }
    }
    if *eof && buf.is_empty() && !*shut {
        if let Poll::Ready(r) = Pin::new(&mut *to).poll_shutdown(cx) {
            // A peer that is already gone cannot be told; this direction is over either way.
            if let Err(e) = r {
                tracing::debug!(error = %e, "Write shutdown failed.");
            }
            *shut = true;
            *progress = true;
        }
    }
    Ok(read)
}

/// Serves a generic TCP connection: pick a backend, then copy bytes both ways.
pub(crate) async fn serve_tcp(
    shared: Arc<Shared>,
    client: TcpStream,
    peer: SocketAddr,
    listener: SocketAddr,
) {
    let _ = client.set_nodelay(true);
    let Some((backend, server)) = connect_new(&shared, &[]).await else {
        shared.pool.rejected.fetch_add(1, Relaxed);
        tracing::warn!(client = %peer, "No backend available; connection refused.");
        return;
    };
    let entry = shared.registry.open(peer, listener, "tcp", &backend.name);
    backend.metrics.active.fetch_add(1, Relaxed);
    let size = shared.config.buffer_size;
    let mut pipe = Pipe {
        client,
        server,
        up: Dir::new(size),
        down: Dir::new(size),
        up_eof: false,
        up_shut: false,
        down_eof: false,
        down_shut: false,
        entry: entry.clone(),
        backend: backend.clone(),
    };
    let killed = entry.kill.cancelled();
    tokio::pin!(killed);
    // One poll function for the kill signal and both directions, rather than `select!` over
    // separate futures: the connection's one task does all its work in one wake-up.
    let r = poll_fn(|cx| {
        if killed.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        pipe.pump(cx).map(Some)
    })
    .await;
    match r {
        None => tracing::info!("Connection closed by the proxy."),
        Some(Err(e)) => tracing::debug!(error = %e, "Connection ended with an error."),
        Some(Ok(())) => {}
    }
    drop(pipe);
    backend.metrics.active.fetch_sub(1, Relaxed);
    shared.registry.close(entry.id);
}

/// Reads the client's startup, answering SSL and GSSAPI requests with `N`.
async fn read_startup(client: &mut TcpStream) -> Result<Startup, String> {
    loop {
        let len = client.read_i32().await.map_err(|e| e.to_string())?;
        if !(8..=pg::MAX_STARTUP_LEN as i32).contains(&len) {
            return Err(ProtocolError::StartupLength(len.max(0) as usize).to_string());
        }
        let mut body = vec![0u8; len as usize - 4];
        client
            .read_exact(&mut body)
            .await
            .map_err(|e| e.to_string())?;
        match pg::parse_startup(&body).map_err(|e| e.to_string())? {
            Startup::Ssl | Startup::GssEnc => {
                client.write_all(b"N").await.map_err(|e| e.to_string())?
            }
            other => return Ok(other),
        }
    }
}

/// Opens an authenticated server session for re-homing: sends the startup packet, answers
/// the authentication request with the backend's configured password, and swallows the
/// server's startup messages up to its ReadyForQuery. Returns the stream and its key.
pub(crate) async fn open_session(
    shared: &Shared,
    backend: &Backend,
    params: &[(String, String)],
) -> Result<(TcpStream, Option<(i32, i32)>), String> {
    let mut s = connect_backend(shared, backend).await?;
    let user = params
        .iter()
        .find(|(k, _)| k == "user")
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    let work = async {
        s.write_all(&pg::encode_startup(params))
            .await
            .map_err(|e| e.to_string())?;
        let mut key = None;
        let mut scram: Option<crate::scram::ScramClient> = None;
        loop {
            let tag = s.read_u8().await.map_err(|e| e.to_string())?;
            let len = s.read_i32().await.map_err(|e| e.to_string())?;
            if !(4..=1 << 20).contains(&len) {
                return Err(format!(
                    "server sent a message of length {len} during startup"
                ));
            }
            let mut body = vec![0u8; len as usize - 4];
            s.read_exact(&mut body).await.map_err(|e| e.to_string())?;
            match tag {
                b'R' if body.len() >= 4 => {
                    let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                    let password = backend.password.as_deref();
                    match (code, password) {
                        (0, _) => {}
                        (3, Some(p)) => {
                            let mut b = p.as_bytes().to_vec();
                            b.push(0);
                            s.write_all(&pg::encode_message(b'p', &b)).await.map_err(|e| e.to_string())?;
                        }
                        (5, Some(p)) if body.len() >= 8 => {
                            let salt = [body[4], body[5], body[6], body[7]];
                            s.write_all(&pg::md5_password(user, p, salt)).await.map_err(|e| e.to_string())?;
                        }
                        (10, Some(p)) => {
                            let mechanisms = String::from_utf8_lossy(&body[4..]);
                            if !mechanisms.split('\0').any(|m| m == "SCRAM-SHA-256") {
                                return Err(format!("the server offers no SCRAM-SHA-256 (offers {mechanisms:?})"));
                            }
                            let client = crate::scram::ScramClient::new(p, &nonce());
                            let first = client.client_first();
                            let mut msg = b"SCRAM-SHA-256\0".to_vec();
                            msg.extend_from_slice(&(first.len() as i32).to_be_bytes());
                            msg.extend_from_slice(first.as_bytes());
                            s.write_all(&pg::encode_message(b'p', &msg)).await.map_err(|e| e.to_string())?;
                            scram = Some(client);
                        }
                        (11, _) => {
                            let client = scram.as_mut().ok_or("SASL continue without a SASL start")?;
                            let server_first = String::from_utf8_lossy(&body[4..]).into_owned();
                            let fin = client.client_final(&server_first).map_err(|e| e.to_string())?;
                            s.write_all(&pg::encode_message(b'p', fin.as_bytes())).await.map_err(|e| e.to_string())?;
                        }
                        (12, _) => {
                            let client = scram.as_ref().ok_or("SASL final without a SASL start")?;
                            client.verify(&String::from_utf8_lossy(&body[4..])).map_err(|e| e.to_string())?;
                        }
                        (3 | 5 | 10, None) => return Err("the server asks for a password and the backend has none configured".into()),
                        (c, _) => return Err(format!("authentication method {c} is not supported for re-homing (use trust, password, md5 or scram-sha-256)")),
                    }
                }
                b'K' if body.len() == 8 => {
                    key = Some((
                        i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
                        i32::from_be_bytes([body[4], body[5], body[6], body[7]]),
                    ));
                }
                b'E' => {
                    let msg = pg::error_field(&body, b'M').unwrap_or_default();
                    return Err(format!("server refused the session: {msg}"));
                }
                b'Z' => return Ok(key),
                _ => {}
            }
        }
    };
    let key = timeout(shared.config.connect_timeout * 2, work)
        .await
        .map_err(|_| "startup timed out".to_string())??;
    Ok((s, key))
}

/// A SCRAM client nonce: 24 random printable characters.
fn nonce() -> String {
    use rand::Rng as _;
    let mut rng = rand::thread_rng();
    (0..24)
        .map(|_| rng.sample(rand::distributions::Alphanumeric) as char)
        .collect()
}

/// One direction's buffer.
struct Dir {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Dir {
    fn new(size: usize) -> Dir {
        Dir {
            buf: vec![0; size].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }
    fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

enum Exit {
    /// The client cannot take more bytes (its write returned 0).
    ClientEof,
    /// The server closed; everything it sent has reached the client.
    ServerEof,
    /// Reading from or writing to the server failed (a reset connection).
    ServerIo(io::Error),
    /// The server ended the session with a FATAL error of class 57P (operator intervention:
    /// its postmaster died, it shuts down, it crashed) while the session was idle or a
    /// retryable read waited: the message (held here, not forwarded) is the server's death,
    /// not an answer.
    ServerGone(Vec<u8>),
    /// The server is down or no longer the primary while a retryable read waits for its
    /// answer (`Session::retry`): it is given up there and sent again elsewhere.
    Abandon,
    Boundary,
    Protocol(ProtocolError),
    ServerProtocol(ProtocolError),
    Io(io::Error),
}

/// The state a PostgreSQL session carries across pump calls and server changes.
struct PgConn {
    client: TcpStream,
    server: TcpStream,
    up: Dir,
    down: Dir,
    session: Session,
    backend: Arc<Backend>,
    entry: Arc<ConnEntry>,
    starts: VecDeque<Instant>,
    seen: Vec<Seen>,
    /// A FATAL of class 57P that ended what the server last sent, held back until what came
    /// before it has reached the client: then it is the server's death (the session moves,
    /// or its read is sent again) or, for a session that cannot move, forwarded.
    held: Option<Vec<u8>>,
    /// The client has half-closed (sent EOF). As on a direct connection, the EOF is passed on
    /// to the server once what the client sent is out, and the server's answer still flows
    /// to the client until the server closes.
    client_eof: bool,
    /// The client sent Terminate: the server closing after it is the session's end, not
    /// the server's death (the session is not moved, nor its last read sent again).
    client_terminated: bool,
    /// The server's write half has been shut after the client's EOF.
    server_shut: bool,
}

impl PgConn {
    fn handle_seen(&mut self) {
        for s in self.seen.drain(..) {
            match s {
                Seen::CycleStarted => {
                    self.entry
                        .busy
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                    self.starts.push_back(Instant::now())
                }
                Seen::CycleEnded { status, error } => {
                    if let Some(t) = self.starts.pop_front() {
                        self.backend.metrics.query_latency.record(t.elapsed());
                        self.backend.metrics.queries.fetch_add(1, Relaxed);
                        if error {
                            self.backend.metrics.query_errors.fetch_add(1, Relaxed);
                        }
                    }
                    self.entry.in_transaction.store(status != b'I', Relaxed);
                    self.entry
                        .busy
                        .store(status != b'I' || !self.starts.is_empty(), Relaxed);
                }
                Seen::BecameStateful(reason) => {
                    tracing::debug!(reason = %reason, "Session holds state.");
                    *self
                        .entry
                        .stateful
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) = Some(reason.0);
                }
                Seen::Terminate => self.client_terminated = true,
            }
        }
    }

    /// Moves bytes both ways until an end, an error, or (when `want_boundary`) a transaction
    /// boundary with nothing in flight. Holds no state of its own, so it can be dropped and
    /// called again at any await point.
    fn pump(&mut self, cx: &mut Context<'_>, want_boundary: bool, abandon: bool) -> Poll<Exit> {
        loop {
            let mut progress = false;
            if self.up.is_empty() && !self.client_eof {
                let mut rb = ReadBuf::new(&mut self.up.buf);
                match Pin::new(&mut self.client).poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                        self.client_eof = true;
                        progress = true;
                    }
                    Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        if let Err(e) = self
                            .session
                            .feed_frontend(&self.up.buf[..n], &mut self.seen)
                        {
                            return Poll::Ready(Exit::Protocol(e));
                        }
                        self.handle_seen();
                        self.up.start = 0;
                        self.up.end = n;
                        self.entry.bytes_to_backend.fetch_add(n as u64, Relaxed);
                        self.backend
                            .metrics
                            .bytes_to_backend
                            .fetch_add(n as u64, Relaxed);
                        progress = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Exit::Io(e)),
                    Poll::Pending => {}
                }
            }
            if !self.up.is_empty() {
                match Pin::new(&mut self.server)
                    .poll_write(cx, &self.up.buf[self.up.start..self.up.end])
                {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Exit::ServerEof),
                    Poll::Ready(Ok(n)) => {
                        self.up.start += n;
                        progress = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Exit::ServerIo(e)),
                    Poll::Pending => {}
                }
            }
            if self.client_eof && self.up.is_empty() && !self.server_shut {
                if let Poll::Ready(r) = Pin::new(&mut self.server).poll_shutdown(cx) {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "Write shutdown toward the server failed.");
                    }
                    self.server_shut = true;
                    progress = true;
                }
            }
            if self.down.is_empty() {
                if let Some(h) = self.held.take() {
                    // What came before it is out: the server is going away.
                    if self.retryable() || self.idle_and_movable() || h.len() > self.down.buf.len()
                    {
                        return Poll::Ready(Exit::ServerGone(h));
                    }
                    // A session that cannot move is told, as without a proxy.
                    self.down.buf[..h.len()].copy_from_slice(&h);
                    if let Err(e) = self.session.feed_backend(&h, &mut self.seen) {
                        return Poll::Ready(Exit::ServerProtocol(e));
                    }
                    self.handle_seen();
                    self.down.start = 0;
                    self.down.end = h.len();
                    progress = true;
                }
            }
            if self.down.is_empty() && self.held.is_none() {
                let mut rb = ReadBuf::new(&mut self.down.buf);
                match Pin::new(&mut self.server).poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) => {
                        let mut n = rb.filled().len();
                        if n == 0 {
                            return Poll::Ready(Exit::ServerEof);
                        }
                        if self.session.backend.at_boundary() {
                            if let Some(cut) = pg::trailing_shutdown_fatal(&self.down.buf[..n]) {
                                self.held = Some(self.down.buf[cut..n].to_vec());
                                n = cut;
                                if n == 0 {
                                    // Nothing before it: judged at once, above.
                                    continue;
                                }
                            }
                        }
                        if let Err(e) = self
                            .session
                            .feed_backend(&self.down.buf[..n], &mut self.seen)
                        {
                            return Poll::Ready(Exit::ServerProtocol(e));
                        }
                        self.handle_seen();
                        self.down.start = 0;
                        self.down.end = n;
                        self.entry.bytes_to_client.fetch_add(n as u64, Relaxed);
                        self.backend
                            .metrics
                            .bytes_to_client
                            .fetch_add(n as u64, Relaxed);
                        progress = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Exit::ServerIo(e)),
                    Poll::Pending => {}
                }
            }
            if !self.down.is_empty() {
                match Pin::new(&mut self.client)
                    .poll_write(cx, &self.down.buf[self.down.start..self.down.end])
                {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Exit::ClientEof),
                    Poll::Ready(Ok(n)) => {
                        self.down.start += n;
                        progress = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Exit::Io(e)),
                    Poll::Pending => {}
                }
            }
            if abandon && self.retryable() {
                return Poll::Ready(Exit::Abandon);
            }
            // A half-closed session is not moved: its server has been told the client is done.
            if want_boundary
                && !self.client_eof
                && self.up.is_empty()
                && self.down.is_empty()
                && self.session.ready
                && self.session.at_boundary()
            {
                return Poll::Ready(Exit::Boundary);
            }
            if !progress {
                return Poll::Pending;
            }
        }
    }

    /// Whether the read in flight may be sent to another server now: it is whole on its way
    /// (nothing of the client's is buffered) and no byte of an answer has come.
    fn retryable(&self) -> bool {
        self.session.retry.is_some()
            && self.up.is_empty()
            && self.down.is_empty()
            && !self.client_eof
            && !self.client_terminated
    }

    /// Takes the session off its (failed) backend in the registry while it waits for another:
    /// closing what is left on that backend (a fence, a drain that times out) is not meant
    /// for a session already leaving it.
    fn detach(&self, shared: &Shared) {
        *self.entry.backend.lock().unwrap_or_else(|p| p.into_inner()) = String::new();
        shared.registry.touch();
    }

    /// Whether the session may take another server as it stands: it sits idle at a boundary
    /// with nothing buffered either way, holds no state, and its server said nothing the
    /// client has seen since its last ReadyForQuery (a shutdown FATAL is held back, not seen;
    /// anything else forwarded has told the client).
    fn idle_and_movable(&self) -> bool {
        self.session.ready
            && !self.session.spoke
            && self.session.at_boundary()
            && self.session.stateful.is_none()
            && self.up.is_empty()
            && self.down.is_empty()
            && !self.client_eof
            && !self.client_terminated
    }

    /// Ends the session for the client with a FATAL `08006` (connection failure) saying why.
    async fn fail(&mut self, message: &str) {
        let _ = self
            .client
            .write_all(&pg::encode_error(true, "08006", message))
            .await;
    }

    /// Tells the client the session ends, at a point where no message is half-sent to it.
    async fn close_gracefully(&mut self, message: &str) {
        if self.down.is_empty() && self.session.backend.at_boundary() {
            let _ = self
                .client
                .write_all(&pg::encode_error(true, "57P01", message))
                .await;
        }
        let _ = self.server.write_all(&pg::encode_message(b'X', &[])).await;
        let _ = self.client.shutdown().await;
    }
}

/// Serves a PostgreSQL client.
pub(crate) async fn serve_postgres(
    shared: Arc<Shared>,
    mut client: TcpStream,
    peer: SocketAddr,
    listener: SocketAddr,
) {
    let _ = client.set_nodelay(true);
    let params = match timeout(STARTUP_TIMEOUT, read_startup(&mut client)).await {
        Ok(Ok(Startup::Startup { params })) => params,
        Ok(Ok(Startup::Cancel { pid, key })) => {
            forward_cancel(&shared, (pid, key)).await;
            return;
        }
        Ok(Ok(_)) => return,
        Ok(Err(e)) => {
            tracing::info!(client = %peer, error = %e, "Client startup refused.");
            let _ = client
                .write_all(&pg::encode_error(
                    true,
                    "08P01",
                    &format!("bellwether: {e}"),
                ))
                .await;
            return;
        }
        Err(_) => {
            tracing::info!(client = %peer, "Client sent no startup packet in time.");
            return;
        }
    };
    let Some((backend, mut server)) = connect_new(&shared, &[]).await else {
        shared.pool.rejected.fetch_add(1, Relaxed);
        tracing::warn!(client = %peer, "No backend available; session refused.");
        let _ = client
            .write_all(&pg::encode_error(
                true,
                "08006",
                "bellwether: no backend is available",
            ))
            .await;
        return;
    };
    if let Err(e) = server.write_all(&pg::encode_startup(&params)).await {
        tracing::warn!(backend = %backend.name, error = %e, "Backend closed during startup.");
        return;
    }
    let entry = shared
        .registry
        .open(peer, listener, "postgres", &backend.name);
    backend.metrics.active.fetch_add(1, Relaxed);
    let size = shared.config.buffer_size;
    let mut c = PgConn {
        client,
        server,
        up: Dir::new(size),
        down: Dir::new(size),
        session: Session::new(),
        backend,
        entry: entry.clone(),
        starts: VecDeque::new(),
        seen: Vec::new(),
        held: None,
        client_eof: false,
        client_terminated: false,
        server_shut: false,
    };
    run_session(&shared, &mut c, &params).await;
    c.backend.metrics.active.fetch_sub(1, Relaxed);
    shared.registry.close(entry.id);
}

async fn run_session(shared: &Shared, c: &mut PgConn, params: &[(String, String)]) {
    let mut gen = shared.pool.subscribe();
    // The generation at which a move was last found impossible; retried when it changes.
    let mut blocked_at: Option<u64> = None;
    let mut key_published = false;
    loop {
        let g = *gen.borrow_and_update();
        let now = Instant::now();
        let leaving = shared.closing.load(Relaxed) || shared.pool.should_move(&c.backend, now);
        let want = leaving && blocked_at != Some(g);
        // Down, or no longer the primary (a switch): a read in flight there is sent again to
        // the new primary rather than waited for (a frozen server may never answer). A
        // backend drained by an operator answers what it has: its reads are not abandoned.
        let abandon = !shared.closing.load(Relaxed)
            && (!c.backend.available(now)
                || (shared.pool.has_roles() && c.backend.role() != Some(Role::Primary)));
        if !key_published && c.session.ready {
            key_published = true;
            if let Some(k) = c.session.backend_key {
                *c.entry.cancel.lock().unwrap_or_else(|p| p.into_inner()) = Some(CancelRoute {
                    client_key: k,
                    server_address: c.backend.address.clone(),
                    server_key: k,
                });
            }
        }
        let kill = c.entry.kill.clone();
        let exit = tokio::select! {
            e = poll_fn(|cx| c.pump(cx, want, abandon)) => e,
            r = gen.changed() => {
                if r.is_err() {
                    return;
                }
                continue;
            }
            _ = kill.cancelled() => {
                tracing::info!(backend = %c.backend.name, "Session closed by the proxy.");
                c.close_gracefully("bellwether: the connection was closed by the proxy").await;
                return;
            }
        };
        match exit {
            // The server went away before it said a word (a dying server's listener still
            // accepted): the session starts again on another, from its startup packet.
            Exit::ServerEof | Exit::ServerIo(_)
                if !c.session.ready
                    && c.entry.bytes_to_client.load(Relaxed) == 0
                    && c.up.is_empty()
                    && !c.client_eof =>
            {
                let dead = c.backend.name.clone();
                c.detach(shared);
                let Some((backend, mut server)) = connect_new(shared, &[dead]).await else {
                    c.fail("bellwether: no backend is available").await;
                    return;
                };
                if let Err(e) = server.write_all(&pg::encode_startup(params)).await {
                    tracing::warn!(backend = %backend.name, error = %e, "Backend closed during startup.");
                    return;
                }
                tracing::info!(from = %c.backend.name, to = %backend.name, "A server died before the session's startup was answered; it starts again on another.");
                adopt(shared, c, backend, server, None);
                continue;
            }
            Exit::ServerEof | Exit::ServerIo(_) | Exit::ServerGone(_) | Exit::Abandon
                if c.retryable() =>
            {
                let why = match &exit {
                    Exit::ServerEof => "the server closed the connection".to_string(),
                    Exit::ServerIo(e) => e.to_string(),
                    Exit::ServerGone(m) => pg::error_field(&m[5..], b'M')
                        .unwrap_or_else(|| "a FATAL error".to_string()),
                    _ => "the server is down or no longer the primary".to_string(),
                };
                match retry_read(shared, c, params).await {
                    Ok(()) => {
                        tracing::info!(backend = %c.backend.name, why = %why, "A read in flight was sent again to another server.");
                        blocked_at = None;
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(why = %why, error = %e, "A read in flight could not be sent again.");
                        c.fail(&format!("bellwether: the server died during a read that could not be retried: {e}")).await;
                        return;
                    }
                }
            }
            // The server died while the session sat idle between transactions, without
            // state: it goes on with a new server, and the client does not notice (what it
            // sends meanwhile waits in its socket).
            Exit::ServerEof | Exit::ServerIo(_) | Exit::ServerGone(_) if c.idle_and_movable() => {
                c.detach(shared);
                match open_elsewhere(shared, params, &c.backend.name).await {
                    Ok((target, server, key)) => {
                        tracing::info!(from = %c.backend.name, to = %target.name, "An idle session's server died; it moved to another.");
                        adopt(shared, c, target, server, key);
                        blocked_at = None;
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(backend = %c.backend.name, error = %e, "An idle session's server died and no other took it.");
                        c.fail(&format!(
                            "bellwether: the server closed the connection: {e}"
                        ))
                        .await;
                        return;
                    }
                }
            }
            Exit::Abandon => continue,
            Exit::ServerGone(m) => {
                // Not reached (it is only returned for a session that can move); the client is
                // told as it would have been.
                let _ = c.client.write_all(&m).await;
                return;
            }
            Exit::ServerEof => {
                tracing::debug!(
                    backend = %c.backend.name,
                    in_transaction = c.session.in_transaction(),
                    pending = c.session.pending,
                    stateful = c.session.stateful.is_some(),
                    "The server closed the session's connection."
                );
                return;
            }
            Exit::ClientEof => return,
            Exit::ServerIo(e) => {
                tracing::debug!(error = %e, "Session ended with a server error.");
                return;
            }
            Exit::Io(e) => {
                tracing::debug!(error = %e, "Session ended with an error.");
                return;
            }
            Exit::Protocol(e) => {
                c.backend.metrics.protocol_errors.fetch_add(1, Relaxed);
                tracing::warn!(client = %c.entry.client, error = %e, "Client broke the protocol; disconnected.");
                if c.session.backend.at_boundary() && c.down.is_empty() {
                    let _ = c
                        .client
                        .write_all(&pg::encode_error(
                            true,
                            "08P01",
                            &format!("bellwether: {e}"),
                        ))
                        .await;
                }
                let _ = c.server.write_all(&pg::encode_message(b'X', &[])).await;
                return;
            }
            Exit::ServerProtocol(e) => {
                c.backend.metrics.protocol_errors.fetch_add(1, Relaxed);
                tracing::warn!(backend = %c.backend.name, error = %e, "Server broke the protocol; session closed.");
                return;
            }
            Exit::Boundary => {
                if shared.closing.load(Relaxed) {
                    c.close_gracefully("bellwether: the proxy is shutting down")
                        .await;
                    return;
                }
                if let Some(reason) = c.session.stateful.clone() {
                    c.backend.metrics.graceful_closes.fetch_add(1, Relaxed);
                    tracing::info!(backend = %c.backend.name, reason = %reason, "Stateful session closed at a transaction boundary.");
                    c.close_gracefully(&format!("bellwether: backend {} is leaving service and this session holds state ({reason}); please reconnect", c.backend.name)).await;
                    return;
                }
                match rehome(shared, c, params).await {
                    Ok(()) => blocked_at = None,
                    Err(e) => {
                        tracing::warn!(backend = %c.backend.name, error = %e, "Session could not move; it stays until the pool changes.");
                        blocked_at = Some(g);
                        // Idle at a boundary: a switch waiting for busy sessions may go on.
                        shared.registry.touch();
                    }
                }
            }
        }
    }
}

/// Moves an idle session to another backend. The client's messages wait in its socket while
/// the new server connection starts, so it never notices.
async fn rehome(
    shared: &Shared,
    c: &mut PgConn,
    params: &[(String, String)],
) -> Result<(), String> {
    let mut tried = vec![c.backend.name.clone()];
    loop {
        let target = shared
            .pool
            .pick(&tried)
            .ok_or("no other backend is available")?;
        tried.push(target.name.clone());
        match open_session(shared, &target, params).await {
            Ok((server, key)) => {
                let _ = c.server.write_all(&pg::encode_message(b'X', &[])).await;
                tracing::info!(from = %c.backend.name, to = %target.name, "Session re-homed at a transaction boundary.");
                adopt(shared, c, target, server, key);
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(backend = %target.name, error = %e, "Re-homing target refused the session.");
            }
        }
    }
}

/// Sends the read in flight (`Session::retry`) again, on a new session with another server,
/// after its server died or stopped being the primary before answering any of it. Waits for a
/// server as a new session does (a switch in progress: up to `primary_wait`). The read runs
/// under `default_transaction_read_only`, set before and reset after, neither of which the
/// client sees: a "read" that writes after all fails instead of running twice. Its answer is
/// the client's; the session then goes on there.
async fn retry_read(
    shared: &Shared,
    c: &mut PgConn,
    params: &[(String, String)],
) -> Result<(), String> {
    let query = c.session.retry.take().ok_or("nothing to retry")?;
    c.detach(shared);
    let (target, server, key) = open_elsewhere(shared, params, &c.backend.name).await?;
    let name = target.name.clone();
    let at = |e: String| format!("{name}: {e}");
    // Counted on the server that died; the old connection is dropped unanswered (a frozen
    // server that thaws finds it closed, and runs the read for nobody).
    c.backend.metrics.retried.fetch_add(1, Relaxed);
    adopt(shared, c, target, server, key);
    let limit = shared.config.connect_timeout;
    quiet_query(
        &mut c.server,
        "SET default_transaction_read_only = on",
        limit,
    )
    .await
    .map_err(at)?;
    c.server
        .write_all(&query)
        .await
        .map_err(|e| at(e.to_string()))?;
    // The answer, message by message, to the client, through the session's observer (the
    // cycle the first server left open ends here).
    loop {
        let msg = read_message(&mut c.server).await.map_err(at)?;
        c.session
            .feed_backend(&msg, &mut c.seen)
            .map_err(|e| at(e.to_string()))?;
        c.handle_seen();
        c.client.write_all(&msg).await.map_err(|e| e.to_string())?;
        c.entry.bytes_to_client.fetch_add(msg.len() as u64, Relaxed);
        if msg[0] == b'Z' {
            break;
        }
    }
    quiet_query(&mut c.server, "RESET default_transaction_read_only", limit)
        .await
        .map_err(at)
}

/// A new server session for `params` on a backend other than `except` (one that died or left
/// the pool), waiting for one as a new session does (a switch in progress: up to
/// `primary_wait`).
async fn open_elsewhere(
    shared: &Shared,
    params: &[(String, String)],
    except: &str,
) -> Result<(Arc<Backend>, TcpStream, Option<(i32, i32)>), String> {
    let deadline = Instant::now() + shared.config.primary_wait;
    let mut gen = shared.pool.subscribe();
    loop {
        gen.borrow_and_update();
        let mut tried = vec![except.to_string()];
        while let Some(b) = shared.pool.pick(&tried) {
            tried.push(b.name.clone());
            match open_session(shared, &b, params).await {
                Ok((s, key)) => return Ok((b, s, key)),
                Err(e) => {
                    tracing::warn!(backend = %b.name, error = %e, "A backend refused a session moved off a failed one.")
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "no other server within {} ms",
                shared.config.primary_wait.as_millis()
            ));
        }
        let retry = Instant::now() + Duration::from_millis(100);
        tokio::select! {
            _ = gen.changed() => {}
            _ = tokio::time::sleep_until(retry.min(deadline)) => {}
        }
    }
}

/// Makes `server` (a session on `target`) the session's server, in place of the one it had.
fn adopt(
    shared: &Shared,
    c: &mut PgConn,
    target: Arc<Backend>,
    server: TcpStream,
    key: Option<(i32, i32)>,
) {
    c.backend.metrics.active.fetch_sub(1, Relaxed);
    c.backend.metrics.rehomed_out.fetch_add(1, Relaxed);
    target.metrics.active.fetch_add(1, Relaxed);
    target.metrics.rehomed_in.fetch_add(1, Relaxed);
    *c.entry.backend.lock().unwrap_or_else(|p| p.into_inner()) = target.name.clone();
    c.entry.rehomes.fetch_add(1, Relaxed);
    shared.registry.touch();
    if let Some(k) = key {
        let mut route = c.entry.cancel.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = route.as_mut() {
            r.server_address = target.address.clone();
            r.server_key = k;
        }
    }
    c.server = server;
    c.backend = target;
    c.session.backend = pg::Framer::new(pg::Side::Backend);
}

/// One whole backend message (tag, length, body).
async fn read_message(s: &mut TcpStream) -> Result<Vec<u8>, String> {
    let tag = s.read_u8().await.map_err(|e| e.to_string())?;
    let len = s.read_i32().await.map_err(|e| e.to_string())?;
    if !(4..=1 << 30).contains(&len) {
        return Err(format!("server sent a message of length {len}"));
    }
    let mut msg = Vec::with_capacity(len as usize + 1);
    msg.push(tag);
    msg.extend_from_slice(&len.to_be_bytes());
    msg.resize(len as usize + 1, 0);
    s.read_exact(&mut msg[5..])
        .await
        .map_err(|e| e.to_string())?;
    Ok(msg)
}

/// Runs a statement of the proxy's own on a server session and swallows its answer up to
/// ReadyForQuery, within `limit`; an error answer is an error.
async fn quiet_query(s: &mut TcpStream, sql: &str, limit: Duration) -> Result<(), String> {
    let run = async {
        s.write_all(&pg::encode_query(sql))
            .await
            .map_err(|e| e.to_string())?;
        let mut failed = None;
        loop {
            let msg = read_message(s).await?;
            match msg[0] {
                b'E' => {
                    failed = Some(
                        pg::error_field(&msg[5..], b'M').unwrap_or_else(|| "an error".to_string()),
                    )
                }
                b'Z' => return failed.map_or(Ok(()), |e| Err(format!("`{sql}` failed: {e}"))),
                _ => {}
            }
        }
    };
    timeout(limit, run)
        .await
        .map_err(|_| format!("`{sql}` timed out"))?
}

async fn forward_cancel(shared: &Shared, key: (i32, i32)) {
    let Some(route) = shared.registry.cancel_route(key) else {
        tracing::info!("Cancel request for an unknown session ignored.");
        return;
    };
    match timeout(
        shared.config.connect_timeout,
        TcpStream::connect(&route.server_address),
    )
    .await
    {
        Ok(Ok(mut s)) => {
            let _ = s
                .write_all(&pg::encode_cancel(route.server_key.0, route.server_key.1))
                .await;
        }
        _ => {
            tracing::warn!(address = %route.server_address, "Cancel request could not be forwarded.")
        }
    }
}
