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

use crate::pg::{self, ProtocolError, Seen, Session, Startup};
use crate::pool::Backend;
use crate::registry::{CancelRoute, ConnEntry};
use crate::Shared;

/// How long a client may take to send its startup packet.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);

/// Opens a server connection for a new session. With roles, that is the primary, and when
/// none is available the session waits for one up to `primary_wait` (a switch in progress).
async fn connect_new(shared: &Shared) -> Option<(Arc<Backend>, TcpStream)> {
    let deadline = Instant::now() + shared.config.primary_wait;
    let mut gen = shared.pool.subscribe();
    loop {
        gen.borrow_and_update();
        if let Some(found) = connect_any(shared, &[]).await {
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
    let Some((backend, server)) = connect_new(&shared).await else {
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
    /// The client has half-closed (sent EOF). As on a direct connection, the EOF is passed on
    /// to the server once what the client sent is out, and the server's answer still flows
    /// to the client until the server closes.
    client_eof: bool,
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
                Seen::Terminate => {}
            }
        }
    }

    /// Moves bytes both ways until an end, an error, or (when `want_boundary`) a transaction
    /// boundary with nothing in flight. Holds no state of its own, so it can be dropped and
    /// called again at any await point.
    fn pump(&mut self, cx: &mut Context<'_>, want_boundary: bool) -> Poll<Exit> {
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
                    Poll::Ready(Err(e)) => return Poll::Ready(Exit::Io(e)),
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
                let mut rb = ReadBuf::new(&mut self.down.buf);
                match Pin::new(&mut self.server).poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        if n == 0 {
                            return Poll::Ready(Exit::ServerEof);
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
                    Poll::Ready(Err(e)) => return Poll::Ready(Exit::Io(e)),
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
    let Some((backend, mut server)) = connect_new(&shared).await else {
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
        client_eof: false,
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
        let leaving =
            shared.closing.load(Relaxed) || shared.pool.should_move(&c.backend, Instant::now());
        let want = leaving && blocked_at != Some(g);
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
            e = poll_fn(|cx| c.pump(cx, want)) => e,
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
            Exit::ClientEof | Exit::ServerEof => return,
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
                let old = std::mem::replace(&mut c.server, server);
                let mut old = old;
                let _ = old.write_all(&pg::encode_message(b'X', &[])).await;
                drop(old);
                c.backend.metrics.active.fetch_sub(1, Relaxed);
                c.backend.metrics.rehomed_out.fetch_add(1, Relaxed);
                target.metrics.active.fetch_add(1, Relaxed);
                target.metrics.rehomed_in.fetch_add(1, Relaxed);
                tracing::info!(from = %c.backend.name, to = %target.name, "Session re-homed at a transaction boundary.");
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
                c.backend = target;
                c.session.backend = pg::Framer::new(pg::Side::Backend);
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(backend = %target.name, error = %e, "Re-homing target refused the session.");
            }
        }
    }
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
