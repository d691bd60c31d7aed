//! One Redis client session (`protocol: redis`).
//!
//! The session parses each request whole before it forwards it, pairs every reply with its
//! request by scanning the server's stream (replies are relayed as they arrive, never held),
//! and chooses a server connection per command: the primary (or, without roles, the
//! session's backend) for everything, or a healthy replica for read-only commands in
//! active-active mode. Commands are pipelined to one server connection at a time, so replies
//! reach the client in order.
//!
//! When the primary changes, the session moves at a command boundary (no reply outstanding):
//! it opens a connection to the new primary, replays `AUTH`, `HELLO`, `SELECT` and
//! `CLIENT SETNAME`, and sends the waiting commands there. A session inside MULTI or WATCH, or
//! with a blocking command outstanding, finishes on the old server within `switch_grace` or
//! is closed; a subscriber (or MONITOR) session is closed at once. While no primary is
//! available, commands wait up to `primary_wait`. When a server dies under outstanding
//! commands, read-only ones are re-sent to the (new) primary and the others are answered
//! with an error that says they may not have been applied.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::RedisMode;
use crate::pool::{Backend, Target};
use crate::redis::{self, Kind, ReplyScanner, RequestParser};
use crate::registry::ConnEntry;
use crate::Shared;

/// The answer to a write whose server died before replying.
pub const LOST: &str = "ERR bellwether: backend lost mid-request; not applied or unknown";
/// How often a read-only command is re-sent after servers died under it.
const MAX_RETRIES: u8 = 3;
/// How soon a refused connection to the chosen server is tried again.
const RETRY: Duration = Duration::from_millis(100);

/// A server connection of the session.
struct ServerConn {
    backend: Arc<Backend>,
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    scanner: ReplyScanner,
}

/// A command parsed, not yet sent.
struct Queued {
    kind: Kind,
    bytes: Vec<u8>,
    /// When it arrived: it waits for a primary up to `primary_wait` from here.
    since: Instant,
    /// The proxy answers it itself, in its place in the order.
    synthetic: Option<Vec<u8>>,
    close_after: bool,
    retries: u8,
}

/// A command sent (or answered by the proxy), whose reply the client has not had yet.
struct Pending {
    kind: Kind,
    /// Kept for a re-send (reads) or a replay (session state).
    bytes: Option<Vec<u8>>,
    sent: Instant,
    synthetic: Option<Vec<u8>>,
    close_after: bool,
    retries: u8,
}

/// Session state replayed on a new server, in this order.
#[derive(Default)]
struct Replay {
    auth: Option<Vec<u8>>,
    hello: Option<Vec<u8>>,
    select: Option<Vec<u8>>,
    setname: Option<Vec<u8>>,
}

impl Replay {
    fn commands(&self) -> Vec<&[u8]> {
        [&self.auth, &self.hello, &self.select, &self.setname]
            .into_iter()
            .flatten()
            .map(|v| v.as_slice())
            .collect()
    }

    /// Records a session-state command the server accepted.
    fn record(&mut self, bytes: &[u8]) {
        let mut p = RequestParser::new(bytes.len() + 1);
        let Ok(Some(r)) = p.parse(bytes) else {
            return;
        };
        let name = r.arg(bytes, 0).unwrap_or_default().to_ascii_uppercase();
        let slot = match name.as_slice() {
            b"AUTH" => &mut self.auth,
            b"HELLO" => &mut self.hello,
            b"SELECT" => &mut self.select,
            b"CLIENT" => &mut self.setname,
            _ => return,
        };
        *slot = Some(bytes.to_vec());
    }
}

/// Why the session ends.
enum End {
    /// Close the client connection now.
    Close(&'static str),
}

struct Session {
    shared: Arc<Shared>,
    entry: Arc<ConnEntry>,
    mode: RedisMode,
    cin: OwnedReadHalf,
    cout: OwnedWriteHalf,
    cbuf: Vec<u8>,
    coff: usize,
    parser: RequestParser,
    client_eof: bool,
    queued: VecDeque<Queued>,
    queued_bytes: usize,
    pending: VecDeque<Pending>,
    /// The backend of the connection the pending commands were sent on.
    pending_on: Option<String>,
    conns: Vec<ServerConn>,
    multi: bool,
    watch: bool,
    /// Subscriber mode or MONITOR: the server's bytes are relayed as they come.
    stream: bool,
    /// The backend a MULTI, WATCH or stream is bound to.
    pinned: Option<String>,
    replay: Replay,
    gen: watch::Receiver<u64>,
    /// The chosen writer and replica, until the pool changes; `None`: choose again.
    writer: Option<Option<Arc<Backend>>>,
    reader: Option<Option<Arc<Backend>>>,
    busy: bool,
    /// When a connect to the chosen server failed: try again after [`RETRY`].
    retry_at: Option<Instant>,
    /// Since when the session has been pinned to a server it should leave.
    pinned_leaving_since: Option<Instant>,
    sbuf: Box<[u8]>,
}

/// Serves a Redis client.
pub(crate) async fn serve_redis(
    shared: Arc<Shared>,
    client: TcpStream,
    peer: SocketAddr,
    listener: SocketAddr,
    mode: RedisMode,
) {
    let _ = client.set_nodelay(true);
    let entry = shared.registry.open(peer, listener, "redis", "");
    let (cin, cout) = client.into_split();
    let size = shared.config.buffer_size;
    let mut s = Session {
        gen: shared.pool.subscribe(),
        parser: RequestParser::new(shared.config.max_request_bytes),
        shared: shared.clone(),
        entry: entry.clone(),
        mode,
        cin,
        cout,
        cbuf: Vec::with_capacity(size),
        coff: 0,
        client_eof: false,
        queued: VecDeque::new(),
        queued_bytes: 0,
        pending: VecDeque::new(),
        pending_on: None,
        conns: Vec::new(),
        multi: false,
        watch: false,
        stream: false,
        pinned: None,
        replay: Replay::default(),
        writer: None,
        reader: None,
        busy: false,
        retry_at: None,
        pinned_leaving_since: None,
        sbuf: vec![0; size].into_boxed_slice(),
    };
    let End::Close(why) = s.run().await;
    tracing::debug!(reason = why, "Redis session closed.");
    let _ = s.cout.shutdown().await;
    for c in s.conns.drain(..) {
        c.backend.metrics.active.fetch_sub(1, Relaxed);
    }
    for p in &s.pending {
        if p.synthetic.is_none() {
            if let Some(b) = s.pending_on.as_ref().and_then(|n| shared.pool.get(n)) {
                b.metrics.in_flight.fetch_sub(1, Relaxed);
            }
        }
    }
    entry.busy.store(false, SeqCst);
    shared.registry.close(entry.id);
}

/// Reads from the connection the replies are expected on; never ready without one.
async fn read_server(
    conns: &mut [ServerConn],
    on: Option<usize>,
    buf: &mut [u8],
) -> (usize, std::io::Result<usize>) {
    match on {
        Some(i) => (i, conns[i].rd.read(buf).await),
        None => std::future::pending().await,
    }
}

impl Session {
    fn conn_index(&self, backend: &str) -> Option<usize> {
        self.conns.iter().position(|c| c.backend.name == backend)
    }

    /// The connection whose bytes are awaited: the stream's, or the pending commands'.
    fn reading_from(&self) -> Option<usize> {
        if self.stream {
            return self.pinned.as_deref().and_then(|n| self.conn_index(n));
        }
        if self.pending.iter().any(|p| p.synthetic.is_none()) {
            return self.pending_on.as_deref().and_then(|n| self.conn_index(n));
        }
        None
    }

    fn has_server_pending(&self) -> bool {
        self.pending.iter().any(|p| p.synthetic.is_none())
    }

    fn set_busy(&mut self, busy: bool) {
        if busy == self.busy {
            return;
        }
        self.busy = busy;
        self.entry.busy.store(busy, SeqCst);
        if busy {
            // Pairs with the fence in `wait_idle`: either the switch sees this session busy,
            // or this session sees the new pool.
            std::sync::atomic::fence(SeqCst);
        } else {
            self.shared.registry.touch_if_watched();
        }
    }

    fn pool_changed(&mut self) -> bool {
        if self.gen.has_changed().unwrap_or(false) {
            self.gen.borrow_and_update();
            self.writer = None;
            self.reader = None;
            self.retry_at = None;
            true
        } else {
            false
        }
    }

    /// The server for writes: the session's own while it may stay, else a new pick (the
    /// primary, when roles are in use).
    fn writer(&mut self) -> Option<Arc<Backend>> {
        if let Some(w) = &self.writer {
            return w.clone();
        }
        let now = Instant::now();
        let keep = self.conns.iter().map(|c| c.backend.clone()).find(|b| {
            !self.shared.pool.should_move(b, now) && b.role() != Some(crate::Role::Replica)
        });
        let w = keep.or_else(|| self.shared.pool.pick(&[]));
        self.writer = Some(w.clone());
        w
    }

    /// The server for a read-only command in active-active mode: a serving replica (the one
    /// already connected, if it still serves), else the writer.
    fn reader(&mut self) -> Option<Arc<Backend>> {
        if let Some(r) = &self.reader {
            return r.clone().or_else(|| self.writer());
        }
        let now = Instant::now();
        let keep = self
            .conns
            .iter()
            .map(|c| c.backend.clone())
            .find(|b| b.role() == Some(crate::Role::Replica) && b.serving(now));
        let r = keep.or_else(|| self.shared.pool.pick_for(Target::Replica, &[]));
        self.reader = Some(r.clone());
        r.or_else(|| self.writer())
    }

    fn target(&mut self, kind: Kind) -> Option<Arc<Backend>> {
        if let Some(p) = &self.pinned {
            return self.conn_index(p).map(|i| self.conns[i].backend.clone());
        }
        if kind == Kind::Read && self.shared.mode(self.mode) == RedisMode::ActiveActive {
            self.reader()
        } else {
            self.writer()
        }
    }

    async fn run(&mut self) -> End {
        loop {
            if let Err(e) = self.flush_synthetic().await {
                return e;
            }
            let waiting = match self.dispatch().await {
                Ok(w) => w,
                Err(e) => return e,
            };
            // The proxy's own answers that dispatch put at the front go out now.
            if let Err(e) = self.flush_synthetic().await {
                return e;
            }
            if waiting == Waiting::Again {
                continue;
            }
            let server_pending = self.has_server_pending();
            self.set_busy(server_pending || self.multi || self.watch || self.stream);
            if self.queued.is_empty() && self.pending.is_empty() {
                if self.client_eof {
                    return End::Close("the client is done");
                }
                if self.shared.closing.load(Relaxed) && !self.busy {
                    return End::Close("the proxy is shutting down");
                }
            }
            // A session bound to a server it should leave: streams close now; MULTI, WATCH
            // and blocking commands get `switch_grace` to finish.
            let now = Instant::now();
            let leaving = self
                .pinned
                .as_deref()
                .and_then(|n| self.conn_index(n))
                .is_some_and(|i| {
                    self.shared.closing.load(Relaxed)
                        || self.shared.pool.should_move(&self.conns[i].backend, now)
                })
                || (server_pending
                    && self.pending.iter().any(|p| p.kind == Kind::Blocking)
                    && self
                        .pending_on
                        .as_deref()
                        .and_then(|n| self.conn_index(n))
                        .is_some_and(|i| {
                            self.shared.pool.should_move(&self.conns[i].backend, now)
                        }));
            if leaving {
                if self.stream {
                    self.leaving_metrics();
                    return End::Close("the subscriber's server left service");
                }
                self.pinned_leaving_since.get_or_insert(now);
            } else {
                self.pinned_leaving_since = None;
            }
            let grace_end = self
                .pinned_leaving_since
                .map(|t| t + self.shared.config.switch_grace);
            let wait_end = match waiting {
                Waiting::ForServer | Waiting::Retry => self
                    .queued
                    .front()
                    .map(|q| q.since + self.shared.config.primary_wait),
                _ => None,
            };
            let wake = [grace_end, wait_end, self.retry_at]
                .into_iter()
                .flatten()
                .min();
            let far = now + Duration::from_secs(86_400);
            let reading = self.reading_from();
            let can_read_client = !self.client_eof
                && self.cbuf.len() - self.coff < self.shared.config.max_request_bytes
                && self.queued_bytes < self.shared.config.max_request_bytes;
            if can_read_client && self.cbuf.capacity() - self.cbuf.len() < 4096 {
                if self.coff > 0 {
                    self.cbuf.drain(..self.coff);
                    self.coff = 0;
                }
                self.cbuf.reserve(self.shared.config.buffer_size);
            }
            let kill = self.entry.kill.clone();
            let entry = self.entry.clone();
            tokio::select! {
                r = self.cin.read_buf(&mut self.cbuf), if can_read_client => {
                    match r {
                        Ok(0) => self.client_eof = true,
                        Ok(_) => self.parse_requests(),
                        Err(_) => return End::Close("client read error"),
                    }
                }
                (i, r) = read_server(&mut self.conns, reading, &mut self.sbuf) => {
                    match r {
                        Ok(0) | Err(_) => {
                            if let Err(e) = self.lost(i) {
                                return e;
                            }
                        }
                        Ok(n) => {
                            if let Err(e) = self.relay(i, n).await {
                                return e;
                            }
                        }
                    }
                }
                r = self.gen.changed() => {
                    if r.is_err() {
                        return End::Close("the proxy stopped");
                    }
                    // Re-read below (`pool_changed` sees the version as unseen no more, so
                    // mark the choices stale here).
                    self.writer = None;
                    self.reader = None;
                    self.retry_at = None;
                    self.drop_unwanted();
                }
                _ = kill.cancelled() => {
                    return End::Close("closed by the proxy");
                }
                _ = entry.abandon.notified() => {
                    // A switch waited long enough for this session's server to answer.
                    if let Some(i) = self.reading_from() {
                        tracing::info!(backend = %self.conns[i].backend.name, "Giving up the commands outstanding on the previous primary.");
                        if let Err(e) = self.lost(i) {
                            return e;
                        }
                    }
                }
                _ = tokio::time::sleep_until(wake.unwrap_or(far)), if wake.is_some() => {
                    let now = Instant::now();
                    if grace_end.is_some_and(|t| t <= now) {
                        return self.grace_over().await;
                    }
                    if self.retry_at.is_some_and(|t| t <= now) {
                        self.retry_at = None;
                        self.writer = None;
                        self.reader = None;
                    }
                    self.expire_waiting(now);
                }
            }
        }
    }

    fn leaving_metrics(&self) {
        if let Some(b) = self.pinned.as_deref().and_then(|n| self.shared.pool.get(n)) {
            b.metrics.graceful_closes.fetch_add(1, Relaxed);
        }
    }

    /// The session stayed on a server it should leave for `switch_grace`: a blocking command
    /// is answered with an error; the connection closes.
    async fn grace_over(&mut self) -> End {
        self.leaving_metrics();
        let blocked = self
            .pending
            .front()
            .is_some_and(|p| p.kind == Kind::Blocking && p.synthetic.is_none());
        let mid = self
            .pending_on
            .as_deref()
            .and_then(|n| self.conn_index(n))
            .is_some_and(|i| self.conns[i].scanner.mid_reply());
        if blocked && !mid {
            let _ = self
                .cout
                .write_all(&redis::encode_error(
                    "ERR bellwether: the primary changed during a blocking command; retry it",
                ))
                .await;
        }
        tracing::info!(
            multi = self.multi,
            watch = self.watch,
            blocked,
            "Redis session closed: it stayed bound to a server leaving service past switch_grace."
        );
        End::Close("switch grace over")
    }

    /// Answers, with an error, the commands that waited `primary_wait` for a server.
    fn expire_waiting(&mut self, now: Instant) {
        let wait = self.shared.config.primary_wait;
        for q in self.queued.iter_mut() {
            if q.synthetic.is_some() {
                continue;
            }
            if q.since + wait > now {
                break;
            }
            q.synthetic = Some(redis::encode_error(&format!(
                "MASTERDOWN bellwether: no primary available within {wait:?}"
            )));
        }
    }

    /// Drops idle connections to servers the session should leave, so its registry entry
    /// shows where it is.
    fn drop_unwanted(&mut self) {
        let now = Instant::now();
        let busy_on = if self.has_server_pending() {
            self.pending_on.clone()
        } else {
            None
        };
        let mut i = 0;
        while i < self.conns.len() {
            let name = self.conns[i].backend.name.clone();
            let pinned = self.pinned.as_deref() == Some(name.as_str());
            let in_use = busy_on.as_deref() == Some(name.as_str()) || pinned;
            let replica_ok = self.conns[i].backend.role() == Some(crate::Role::Replica)
                && self.conns[i].backend.serving(now)
                && self.shared.mode(self.mode) == RedisMode::ActiveActive;
            if !in_use && !replica_ok && self.shared.pool.should_move(&self.conns[i].backend, now) {
                let c = self.conns.remove(i);
                c.backend.metrics.active.fetch_sub(1, Relaxed);
                c.backend.metrics.rehomed_out.fetch_add(1, Relaxed);
                self.entry.rehomes.fetch_add(1, Relaxed);
                self.set_registry_backend();
                continue;
            }
            i += 1;
        }
    }

    fn set_registry_backend(&self) {
        let name = self
            .conns
            .iter()
            .find(|c| c.backend.role() != Some(crate::Role::Replica))
            .or(self.conns.first())
            .map(|c| c.backend.name.clone())
            .unwrap_or_default();
        *self.entry.backend.lock().unwrap_or_else(|p| p.into_inner()) = name;
        self.shared.registry.touch();
    }

    /// Parses the complete requests in the client buffer into the queue.
    fn parse_requests(&mut self) {
        loop {
            let buf = &self.cbuf[self.coff..];
            match self.parser.parse(buf) {
                Ok(None) => break,
                Ok(Some(r)) => {
                    let argc = r.argc();
                    if argc == 0 {
                        self.coff += r.len;
                        continue;
                    }
                    let argv: Vec<&[u8]> =
                        (0..argc.min(64)).filter_map(|i| r.arg(buf, i)).collect();
                    let mut kind = redis::classify(&argv);
                    if kind == Kind::Blocking || argc > 64 {
                        // XREAD … BLOCK may name BLOCK past the 64th argument.
                        let all: Vec<&[u8]> = (0..argc).filter_map(|i| r.arg(buf, i)).collect();
                        kind = redis::classify(&all);
                    }
                    let bytes = r.wire(buf).into_owned();
                    let len = r.len;
                    let (synthetic, close_after) = match kind {
                        Kind::Resp3 => (
                            Some(redis::encode_error(
                                "NOPROTO bellwether: only RESP2 is spoken through this proxy",
                            )),
                            false,
                        ),
                        Kind::Quit => (Some(b"+OK\r\n".to_vec()), true),
                        _ => (None, false),
                    };
                    self.coff += len;
                    self.queued_bytes += bytes.len();
                    self.queued.push_back(Queued {
                        kind,
                        bytes,
                        since: Instant::now(),
                        synthetic,
                        close_after,
                        retries: 0,
                    });
                    if close_after {
                        self.client_eof = true;
                        break;
                    }
                }
                Err(e) => {
                    // Redis's own answer to bad input: an error, then the connection closes
                    // once the replies before it are out. Nothing else is touched.
                    tracing::info!(client = %self.entry.client, error = %e, "Client sent bad RESP; closing its connection.");
                    if let Some(b) = self.conns.first() {
                        b.backend.metrics.protocol_errors.fetch_add(1, Relaxed);
                    }
                    self.queued.push_back(Queued {
                        kind: Kind::Write,
                        bytes: Vec::new(),
                        since: Instant::now(),
                        synthetic: Some(redis::encode_error(&format!(
                            "ERR Protocol error: {e} (bellwether)"
                        ))),
                        close_after: true,
                        retries: 0,
                    });
                    self.client_eof = true;
                    break;
                }
            }
        }
        if self.coff == self.cbuf.len() {
            self.cbuf.clear();
            self.coff = 0;
        }
    }

    /// Writes the proxy's own answers that have reached the front of the order.
    async fn flush_synthetic(&mut self) -> Result<(), End> {
        while self.pending.front().is_some_and(|p| p.synthetic.is_some()) {
            let p = self.pending.pop_front().expect("front checked");
            let reply = p.synthetic.expect("synthetic checked");
            if self.cout.write_all(&reply).await.is_err() {
                return Err(End::Close("client write error"));
            }
            if p.close_after {
                return Err(End::Close("answered and closed"));
            }
        }
        Ok(())
    }

    /// Sends what can be sent. Returns why the rest waits.
    async fn dispatch(&mut self) -> Result<Waiting, End> {
        if self.queued.is_empty() {
            return Ok(Waiting::Nothing);
        }
        // Busy before looking at the pool: see `set_busy`.
        if self.queued.front().is_some_and(|q| q.synthetic.is_none()) {
            self.set_busy(true);
        }
        self.pool_changed();
        let mut out: Vec<u8> = Vec::new();
        let mut to: Option<usize> = None;
        while let Some(q) = self.queued.front() {
            if q.synthetic.is_some() {
                let q = self.queued.pop_front().expect("front checked");
                self.queued_bytes -= q.bytes.len();
                self.pending.push_back(Pending {
                    kind: q.kind,
                    bytes: None,
                    sent: Instant::now(),
                    synthetic: q.synthetic,
                    close_after: q.close_after,
                    retries: q.retries,
                });
                continue;
            }
            let kind = q.kind;
            let Some(target) = self.target(kind) else {
                if self.send(&mut out, to).await? {
                    return Ok(Waiting::Again);
                }
                return Ok(if self.retry_at.is_some() {
                    Waiting::Retry
                } else {
                    Waiting::ForServer
                });
            };
            // One server at a time: replies come back in order.
            if self.has_server_pending() && self.pending_on.as_deref() != Some(&target.name) {
                if self.send(&mut out, to).await? {
                    return Ok(Waiting::Again);
                }
                return Ok(Waiting::Replies);
            }
            let idx = match self.conn_index(&target.name) {
                Some(i) => i,
                None => {
                    if self.send(&mut out, to).await? {
                        return Ok(Waiting::Again);
                    }
                    to = None;
                    match self.open(&target).await {
                        Ok(i) => i,
                        Err(OpenError::Connect(e)) => {
                            tracing::warn!(backend = %target.name, error = %e, "Cannot open a Redis server connection.");
                            self.retry_at = Some(Instant::now() + RETRY);
                            return Ok(Waiting::Retry);
                        }
                        Err(OpenError::Replay(e)) => {
                            tracing::warn!(backend = %target.name, error = %e, "The new server refused the session's state; closing it.");
                            return Err(End::Close("state replay refused"));
                        }
                    }
                }
            };
            if to.is_some_and(|t| t != idx) && self.send(&mut out, to).await? {
                return Ok(Waiting::Again);
            }
            to = Some(idx);
            let q = self.queued.pop_front().expect("front checked");
            self.queued_bytes -= q.bytes.len();
            out.extend_from_slice(&q.bytes);
            let backend = self.conns[idx].backend.clone();
            if self.pending_on.as_deref() != Some(backend.name.as_str()) {
                self.pending_on = Some(backend.name.clone());
            }
            backend.metrics.in_flight.fetch_add(1, Relaxed);
            match q.kind {
                Kind::Multi => {
                    self.multi = true;
                    self.pinned = Some(backend.name.clone());
                }
                Kind::Watch => {
                    self.watch = true;
                    self.pinned = Some(backend.name.clone());
                }
                Kind::EndMulti | Kind::Unwatch if q.kind == Kind::EndMulti || !self.multi => {
                    self.multi = false;
                    self.watch = false;
                    self.pinned = None;
                }
                Kind::Reset => {
                    self.multi = false;
                    self.watch = false;
                    self.pinned = None;
                    self.replay = Replay::default();
                }
                Kind::Stream => {
                    self.stream = true;
                    self.pinned = Some(backend.name.clone());
                }
                _ => {}
            }
            let keep = matches!(q.kind, Kind::Read | Kind::SessionState);
            self.pending.push_back(Pending {
                kind: q.kind,
                bytes: keep.then_some(q.bytes),
                sent: Instant::now(),
                synthetic: None,
                close_after: false,
                retries: q.retries,
            });
            if self.stream {
                // From here on the server speaks when it likes: no more pairing.
                for p in self.pending.drain(..) {
                    if p.synthetic.is_none() {
                        backend.metrics.in_flight.fetch_sub(1, Relaxed);
                    }
                }
            }
        }
        if self.send(&mut out, to).await? {
            return Ok(Waiting::Again);
        }
        Ok(Waiting::Nothing)
    }

    /// Writes the batch to its connection; a failed write is a lost server (then true: the
    /// connections and the queue changed, dispatch starts over).
    async fn send(&mut self, out: &mut Vec<u8>, to: Option<usize>) -> Result<bool, End> {
        let Some(i) = to else {
            out.clear();
            return Ok(false);
        };
        if out.is_empty() {
            return Ok(false);
        }
        let n = out.len() as u64;
        self.conns[i]
            .backend
            .metrics
            .bytes_to_backend
            .fetch_add(n, Relaxed);
        self.entry.bytes_to_backend.fetch_add(n, Relaxed);
        let r = self.conns[i].wr.write_all(out).await;
        out.clear();
        if r.is_err() {
            self.lost(i)?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Opens a connection to `b` and replays the session's state there.
    async fn open(&mut self, b: &Arc<Backend>) -> Result<usize, OpenError> {
        let stream = crate::conn::connect_backend(&self.shared, b)
            .await
            .map_err(OpenError::Connect)?;
        let (mut rd, mut wr) = stream.into_split();
        let replay: Vec<Vec<u8>> = self
            .replay
            .commands()
            .into_iter()
            .map(<[u8]>::to_vec)
            .collect();
        if !replay.is_empty() {
            let work = async {
                wr.write_all(&replay.concat())
                    .await
                    .map_err(|e| OpenError::Connect(e.to_string()))?;
                let mut buf = Vec::new();
                let mut got = 0;
                while got < replay.len() {
                    match redis::parse_value(&buf).map_err(|e| OpenError::Replay(e.to_string()))? {
                        Some((v, n)) => {
                            buf.drain(..n);
                            if let redis::Value::Error(e) = v {
                                return Err(OpenError::Replay(e));
                            }
                            got += 1;
                        }
                        None => {
                            let mut chunk = [0u8; 4096];
                            let n = rd
                                .read(&mut chunk)
                                .await
                                .map_err(|e| OpenError::Connect(e.to_string()))?;
                            if n == 0 {
                                return Err(OpenError::Connect(
                                    "the server closed the connection during the replay".into(),
                                ));
                            }
                            buf.extend_from_slice(&chunk[..n]);
                        }
                    }
                }
                Ok(())
            };
            tokio::time::timeout(self.shared.config.connect_timeout, work)
                .await
                .map_err(|_| OpenError::Connect("state replay timed out".into()))??;
        }
        let had_writer = self
            .conns
            .iter()
            .any(|c| c.backend.role() != Some(crate::Role::Replica));
        b.metrics.active.fetch_add(1, Relaxed);
        if had_writer || self.entry.rehomes.load(Relaxed) > 0 {
            b.metrics.rehomed_in.fetch_add(1, Relaxed);
        }
        self.conns.push(ServerConn {
            backend: b.clone(),
            rd,
            wr,
            scanner: ReplyScanner::new(),
        });
        self.drop_unwanted();
        self.set_registry_backend();
        Ok(self.conn_index(&b.name).expect("just pushed"))
    }

    /// Relays `n` bytes the server sent, pairing complete replies with pending commands and
    /// putting the proxy's own answers in their places.
    async fn relay(&mut self, i: usize, n: usize) -> Result<(), End> {
        let backend = self.conns[i].backend.clone();
        backend.metrics.bytes_to_client.fetch_add(n as u64, Relaxed);
        self.entry.bytes_to_client.fetch_add(n as u64, Relaxed);
        if self.stream {
            return self
                .cout
                .write_all(&self.sbuf[..n])
                .await
                .map_err(|_| End::Close("client write error"));
        }
        let mut start = 0;
        let mut at = 0;
        while at < n {
            match self.conns[i].scanner.feed(&self.sbuf[at..n]) {
                Ok(None) => break,
                Ok(Some((used, t))) => {
                    at += used;
                    let Some(p) = self.pending.pop_front() else {
                        backend.metrics.protocol_errors.fetch_add(1, Relaxed);
                        tracing::warn!(backend = %backend.name, "Redis server sent a reply nobody asked for; session closed.");
                        return Err(End::Close("unsolicited reply"));
                    };
                    backend.metrics.in_flight.fetch_sub(1, Relaxed);
                    backend.metrics.queries.fetch_add(1, Relaxed);
                    backend.metrics.query_latency.record(p.sent.elapsed());
                    if t == b'-' {
                        backend.metrics.query_errors.fetch_add(1, Relaxed);
                    } else if p.kind == Kind::SessionState {
                        if let Some(b) = &p.bytes {
                            self.replay.record(b);
                        }
                    }
                    if t == b'-' && p.kind == Kind::Multi {
                        // A refused MULTI (nested) leaves the earlier one in force.
                    }
                    if self.pending.front().is_some_and(|p| p.synthetic.is_some()) {
                        self.cout
                            .write_all(&self.sbuf[start..at])
                            .await
                            .map_err(|_| End::Close("client write error"))?;
                        start = at;
                        self.flush_synthetic().await?;
                    }
                }
                Err(e) => {
                    backend.metrics.protocol_errors.fetch_add(1, Relaxed);
                    tracing::warn!(backend = %backend.name, error = %e, "Redis server broke the protocol; session closed.");
                    return Err(End::Close("server protocol error"));
                }
            }
        }
        if start < n {
            self.cout
                .write_all(&self.sbuf[start..n])
                .await
                .map_err(|_| End::Close("client write error"))?;
        }
        Ok(())
    }

    /// A server connection ended. Outstanding read-only commands go back to the queue to be
    /// re-sent; the others are answered with [`LOST`], in their places.
    fn lost(&mut self, i: usize) -> Result<(), End> {
        let c = self.conns.remove(i);
        let backend = c.backend.clone();
        backend.metrics.active.fetch_sub(1, Relaxed);
        self.writer = None;
        self.reader = None;
        self.set_registry_backend();
        let was_pending = self.pending_on.as_deref() == Some(backend.name.as_str());
        let pinned_here = self.pinned.as_deref() == Some(backend.name.as_str());
        if pinned_here {
            let lost = self
                .pending
                .iter()
                .filter(|p| p.synthetic.is_none())
                .count();
            backend
                .metrics
                .lost_in_flight
                .fetch_add(lost as u64, Relaxed);
            backend.metrics.in_flight.fetch_sub(lost as u64, Relaxed);
            self.pending.clear();
            tracing::info!(backend = %backend.name, multi = self.multi, watch = self.watch, stream = self.stream, "Server lost under a bound session; closing it.");
            return Err(End::Close("server lost in MULTI, WATCH or subscriber mode"));
        }
        if !was_pending || !self.has_server_pending() {
            tracing::debug!(backend = %backend.name, "Idle Redis server connection ended.");
            return Ok(());
        }
        if c.scanner.mid_reply() {
            let lost = self
                .pending
                .iter()
                .filter(|p| p.synthetic.is_none())
                .count();
            backend.metrics.in_flight.fetch_sub(lost as u64, Relaxed);
            backend
                .metrics
                .lost_in_flight
                .fetch_add(lost as u64, Relaxed);
            self.pending.clear();
            tracing::warn!(backend = %backend.name, "Server lost in the middle of a reply; closing the session.");
            return Err(End::Close("server lost mid-reply"));
        }
        let mut back = Vec::with_capacity(self.pending.len());
        let (mut retried, mut failed) = (0u64, 0u64);
        for p in self.pending.drain(..) {
            if p.synthetic.is_some() {
                back.push(Queued {
                    kind: p.kind,
                    bytes: Vec::new(),
                    since: Instant::now(),
                    synthetic: p.synthetic,
                    close_after: p.close_after,
                    retries: p.retries,
                });
                continue;
            }
            backend.metrics.in_flight.fetch_sub(1, Relaxed);
            match p.bytes {
                Some(bytes) if p.retries < MAX_RETRIES => {
                    retried += 1;
                    back.push(Queued {
                        kind: p.kind,
                        bytes,
                        since: Instant::now(),
                        synthetic: None,
                        close_after: false,
                        retries: p.retries + 1,
                    });
                }
                _ => {
                    failed += 1;
                    back.push(Queued {
                        kind: p.kind,
                        bytes: Vec::new(),
                        since: Instant::now(),
                        synthetic: Some(redis::encode_error(LOST)),
                        close_after: false,
                        retries: p.retries,
                    });
                }
            }
        }
        backend.metrics.retried.fetch_add(retried, Relaxed);
        backend.metrics.lost_in_flight.fetch_add(failed, Relaxed);
        tracing::info!(backend = %backend.name, retried, failed, "Redis server lost with commands outstanding.");
        for q in back.into_iter().rev() {
            self.queued_bytes += q.bytes.len();
            self.queued.push_front(q);
        }
        self.pending_on = None;
        Ok(())
    }
}

enum OpenError {
    /// The server could not be reached: try again (or another).
    Connect(String),
    /// The server refused the session's state (`AUTH`, `SELECT`…): the session cannot move.
    Replay(String),
}

/// Why queued commands were not all sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    Nothing,
    /// Replies from another server come first.
    Replies,
    /// No server to send to: wait for one, up to `primary_wait`.
    ForServer,
    /// The chosen server refused a connection: try again shortly.
    Retry,
    /// A server was lost while sending: dispatch again at once.
    Again,
}
