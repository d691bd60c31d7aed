//! The PostgreSQL wire protocol, as far as the proxy needs it: the startup packet, message
//! framing, and a streaming observer that follows a session's transaction status and decides
//! whether the session carries state that a new server connection would not have.
//!
//! This module is pure: it never touches a socket or a clock. The connection code feeds it the
//! bytes it forwards and acts on what it reports. It must never panic on any input; that is
//! property-tested over arbitrary byte streams.

use std::fmt;

/// The protocol version 3.0 code of a startup packet.
pub const PROTOCOL_3: i32 = 196_608;
/// The code of an SSLRequest.
pub const SSL_REQUEST: i32 = 80_877_103;
/// The code of a GSSENCRequest.
pub const GSSENC_REQUEST: i32 = 80_877_104;
/// The code of a CancelRequest.
pub const CANCEL_REQUEST: i32 = 80_877_102;
/// The largest startup packet accepted (PostgreSQL itself allows 10 000 bytes).
pub const MAX_STARTUP_LEN: usize = 10_000;
/// The largest message the observer accepts; a length above it is taken for garbage.
pub const MAX_MESSAGE_LEN: usize = 1 << 30;
/// How much of an inspected message body (a query's text) the observer keeps. A longer query
/// is not inspected, and the session is taken as stateful, which is the safe side.
const MAX_INSPECTED_BODY: usize = 256 * 1024;

/// Why bytes could not be read as the PostgreSQL protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("startup packet length {0} is out of range")]
    StartupLength(usize),
    #[error("unsupported protocol version {major}.{minor}")]
    Version { major: u16, minor: u16 },
    #[error("startup packet is malformed: {0}")]
    Startup(&'static str),
    #[error("message length {len} of message {tag:?} is out of range")]
    Length { tag: char, len: i64 },
    #[error("unknown {side} message type {tag:?}")]
    UnknownTag { side: &'static str, tag: char },
}

/// The first packet a client sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Startup {
    Ssl,
    GssEnc,
    Cancel { pid: i32, key: i32 },
    Startup { params: Vec<(String, String)> },
}

/// Parses the body of a startup packet (the bytes after its 4-byte length).
pub fn parse_startup(body: &[u8]) -> Result<Startup, ProtocolError> {
    if body.len() < 4 {
        return Err(ProtocolError::Startup("shorter than its code"));
    }
    let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    match code {
        SSL_REQUEST => Ok(Startup::Ssl),
        GSSENC_REQUEST => Ok(Startup::GssEnc),
        CANCEL_REQUEST => {
            if body.len() != 12 {
                return Err(ProtocolError::Startup(
                    "cancel request has the wrong length",
                ));
            }
            let pid = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
            let key = i32::from_be_bytes([body[8], body[9], body[10], body[11]]);
            Ok(Startup::Cancel { pid, key })
        }
        PROTOCOL_3 => {
            let mut params = Vec::new();
            let mut rest = &body[4..];
            loop {
                let (name, after) =
                    cstr(rest).ok_or(ProtocolError::Startup("unterminated name"))?;
                if name.is_empty() {
                    break;
                }
                let (value, after) =
                    cstr(after).ok_or(ProtocolError::Startup("unterminated value"))?;
                params.push((name, value));
                rest = after;
            }
            if !params.iter().any(|(k, _)| k == "user") {
                return Err(ProtocolError::Startup("no user parameter"));
            }
            Ok(Startup::Startup { params })
        }
        other => Err(ProtocolError::Version {
            major: (other >> 16) as u16,
            minor: other as u16,
        }),
    }
}

fn cstr(b: &[u8]) -> Option<(String, &[u8])> {
    let nul = b.iter().position(|&c| c == 0)?;
    Some((
        String::from_utf8_lossy(&b[..nul]).into_owned(),
        &b[nul + 1..],
    ))
}

/// Encodes a protocol 3.0 startup packet with these parameters.
pub fn encode_startup(params: &[(String, String)]) -> Vec<u8> {
    let mut body = PROTOCOL_3.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

/// Encodes a CancelRequest packet.
pub fn encode_cancel(pid: i32, key: i32) -> Vec<u8> {
    let mut out = 16i32.to_be_bytes().to_vec();
    out.extend_from_slice(&CANCEL_REQUEST.to_be_bytes());
    out.extend_from_slice(&pid.to_be_bytes());
    out.extend_from_slice(&key.to_be_bytes());
    out
}

/// Encodes one tagged message.
pub fn encode_message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(tag);
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Encodes a simple-protocol Query.
pub fn encode_query(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    encode_message(b'Q', &body)
}

/// Encodes an ErrorResponse (or, with `fatal`, a FATAL one) with a SQLSTATE and a message.
pub fn encode_error(fatal: bool, code: &str, message: &str) -> Vec<u8> {
    let severity = if fatal { "FATAL" } else { "ERROR" };
    let mut body = Vec::new();
    for (field, value) in [
        (b'S', severity),
        (b'V', severity),
        (b'C', code),
        (b'M', message),
    ] {
        body.push(field);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    encode_message(b'E', &body)
}

/// Reads the SQLSTATE (`C` field) of an ErrorResponse body.
pub fn error_code(body: &[u8]) -> Option<String> {
    error_field(body, b'C')
}

/// Reads one field of an ErrorResponse or NoticeResponse body.
pub fn error_field(body: &[u8], field: u8) -> Option<String> {
    let mut rest = body;
    while let Some((&f, after)) = rest.split_first() {
        if f == 0 {
            return None;
        }
        let (value, after) = cstr(after)?;
        if f == field {
            return Some(value);
        }
        rest = after;
    }
    None
}

/// Which way a byte stream flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Client to server.
    Frontend,
    /// Server to client.
    Backend,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Frontend => "frontend",
            Side::Backend => "backend",
        }
    }
    fn known(self, tag: u8) -> bool {
        match self {
            Side::Frontend => b"QPBEDCSHFdcfXp".contains(&tag),
            Side::Backend => b"RSKZECDTINAtn123sGHWcdVv".contains(&tag),
        }
    }
    /// Whether the observer needs this message's body.
    fn inspects(self, tag: u8) -> bool {
        match self {
            Side::Frontend => tag == b'Q' || tag == b'P',
            Side::Backend => b"ZSEK".contains(&tag),
        }
    }
}

/// A complete message the framer found, with its body when the observer inspects it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub tag: u8,
    pub len: usize,
    /// The body, for inspected messages; `None` when it was not kept or was too long. It
    /// borrows the fed chunk when the body arrived in one piece, so the hot path copies
    /// nothing.
    pub body: Option<&'a [u8]>,
}

/// Splits a byte stream into messages, chunk by chunk, keeping only the bodies it needs.
#[derive(Debug, Clone)]
pub struct Framer {
    side: Side,
    header: [u8; 5],
    header_len: usize,
    remaining: usize,
    current: Option<(u8, usize)>,
    /// The part of an inspected body that arrived in an earlier chunk; reused, never shrunk
    /// below what it held, so a steady stream allocates nothing.
    body: Vec<u8>,
    keep: bool,
    failed: bool,
}

impl Framer {
    pub fn new(side: Side) -> Framer {
        Framer {
            side,
            header: [0; 5],
            header_len: 0,
            remaining: 0,
            current: None,
            body: Vec::new(),
            keep: false,
            failed: false,
        }
    }

    /// Whether the stream is between two messages.
    pub fn at_boundary(&self) -> bool {
        self.header_len == 0 && self.current.is_none()
    }

    /// Feeds a chunk; calls `on_frame` for each message completed in it. After an error the
    /// framer stays failed.
    pub fn feed(
        &mut self,
        mut chunk: &[u8],
        mut on_frame: impl FnMut(Frame<'_>),
    ) -> Result<(), ProtocolError> {
        if self.failed {
            return Err(ProtocolError::UnknownTag {
                side: self.side.name(),
                tag: '?',
            });
        }
        while !chunk.is_empty() {
            if let Some((tag, len)) = self.current {
                let take = self.remaining.min(chunk.len());
                let (part, rest) = chunk.split_at(take);
                chunk = rest;
                self.remaining -= take;
                if self.remaining == 0 {
                    self.current = None;
                    if !self.keep {
                        on_frame(Frame {
                            tag,
                            len,
                            body: None,
                        });
                    } else if self.body.is_empty() {
                        // The whole body is in this chunk: hand it over without a copy.
                        on_frame(Frame {
                            tag,
                            len,
                            body: Some(part),
                        });
                    } else {
                        self.body.extend_from_slice(part);
                        on_frame(Frame {
                            tag,
                            len,
                            body: Some(&self.body),
                        });
                        self.body.clear();
                    }
                } else if self.keep {
                    self.body.extend_from_slice(part);
                }
                continue;
            }
            // The common case: a whole header at the front of the chunk.
            let tag;
            let len;
            if self.header_len == 0 && chunk.len() >= 5 {
                tag = chunk[0];
                len = i32::from_be_bytes([chunk[1], chunk[2], chunk[3], chunk[4]]);
                chunk = &chunk[5..];
            } else {
                let take = (5 - self.header_len).min(chunk.len());
                self.header[self.header_len..self.header_len + take]
                    .copy_from_slice(&chunk[..take]);
                self.header_len += take;
                chunk = &chunk[take..];
                if self.header_len < 5 {
                    // A tag alone is already worth checking: garbage is refused at its first
                    // byte.
                    if !self.side.known(self.header[0]) {
                        self.failed = true;
                        return Err(ProtocolError::UnknownTag {
                            side: self.side.name(),
                            tag: self.header[0] as char,
                        });
                    }
                    continue;
                }
                tag = self.header[0];
                len = i32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]);
                self.header_len = 0;
            }
            if !self.side.known(tag) {
                self.failed = true;
                return Err(ProtocolError::UnknownTag {
                    side: self.side.name(),
                    tag: tag as char,
                });
            }
            if len < 4 || len as usize > MAX_MESSAGE_LEN {
                self.failed = true;
                return Err(ProtocolError::Length {
                    tag: tag as char,
                    len: i64::from(len),
                });
            }
            let body_len = len as usize - 4;
            self.keep = self.side.inspects(tag) && body_len <= MAX_INSPECTED_BODY;
            self.body.clear();
            if body_len == 0 {
                on_frame(Frame {
                    tag,
                    len: len as usize,
                    body: self.keep.then_some(&[][..]),
                });
            } else {
                self.current = Some((tag, len as usize));
                self.remaining = body_len;
            }
        }
        Ok(())
    }
}

/// Why a session cannot move to another server connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stateful(pub String);

impl fmt::Display for Stateful {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the observer saw in one message, for the connection code to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// A request cycle began (Query, Sync or FunctionCall) and one more ReadyForQuery is due.
    CycleStarted,
    /// A ReadyForQuery ended a cycle; `error` says whether an ErrorResponse came in it.
    CycleEnded { status: u8, error: bool },
    /// The session became stateful for this reason (reported once).
    BecameStateful(Stateful),
    /// The client said Terminate.
    Terminate,
}

/// Follows one session through both directions.
#[derive(Debug, Clone)]
pub struct Session {
    pub frontend: Framer,
    pub backend: Framer,
    /// Cycles sent by the client and not yet answered by ReadyForQuery.
    pub pending: u32,
    /// The last transaction status: `I` idle, `T` in a transaction, `E` in a failed one.
    pub status: u8,
    pub stateful: Option<Stateful>,
    /// Whether the first ReadyForQuery (the end of startup) has been seen.
    pub ready: bool,
    /// The server's BackendKeyData (process id and secret key), for cancel requests.
    pub backend_key: Option<(i32, i32)>,
    /// The Query message in flight, whole, while it may be sent again to another server: a
    /// plain read ([`plain_read`]) sent by an idle session with nothing else in flight, and
    /// no byte of an answer read yet. Cleared by the first byte the server sends, or any other
    /// message of the client.
    pub retry: Option<Vec<u8>>,
    /// The server sent something since its last ReadyForQuery (a FATAL error before it closed,
    /// a notice): it did not die silently.
    pub spoke: bool,
    error_in_cycle: bool,
}

impl Default for Session {
    fn default() -> Self {
        Session::new()
    }
}

impl Session {
    pub fn new() -> Session {
        Session {
            frontend: Framer::new(Side::Frontend),
            backend: Framer::new(Side::Backend),
            pending: 0,
            status: b'I',
            stateful: None,
            ready: false,
            backend_key: None,
            retry: None,
            spoke: false,
            error_in_cycle: false,
        }
    }

    /// Whether the session sits at a transaction boundary with nothing in flight: the point
    /// at which it may move to another server, or be closed without losing work.
    pub fn at_boundary(&self) -> bool {
        self.pending == 0
            && self.status == b'I'
            && self.frontend.at_boundary()
            && self.backend.at_boundary()
    }

    pub fn in_transaction(&self) -> bool {
        self.status != b'I'
    }

    /// Feeds bytes the client sent.
    pub fn feed_frontend(
        &mut self,
        chunk: &[u8],
        out: &mut Vec<Seen>,
    ) -> Result<(), ProtocolError> {
        let Session {
            frontend,
            pending,
            status,
            stateful,
            ready,
            retry,
            error_in_cycle,
            ..
        } = self;
        frontend.feed(chunk, |f| match f.tag {
            b'Q' => {
                // Retryable: the only cycle in flight, begun outside a transaction, a plain
                // read of a session without state.
                *retry = match f.body {
                    Some(body) if *ready && *pending == 0 && *status == b'I' => {
                        let end = body.iter().position(|&c| c == 0).unwrap_or(body.len());
                        (stateful.is_none() && plain_read(&body[..end]))
                            .then(|| encode_message(b'Q', body))
                    }
                    _ => None,
                };
                *pending += 1;
                *error_in_cycle = false;
                out.push(Seen::CycleStarted);
                // Once a session holds state, nothing it sends can make it movable again, so
                // its queries need no more reading.
                if stateful.is_none() {
                    match f.body {
                        Some(body) => {
                            let end = body.iter().position(|&c| c == 0).unwrap_or(body.len());
                            if let Some(reason) = session_effect_bytes(&body[..end]) {
                                mark(stateful, out, || reason);
                            }
                        }
                        None => mark(stateful, out, || "query too long to inspect".into()),
                    }
                }
            }
            b'S' => {
                *retry = None;
                *pending += 1;
                *error_in_cycle = false;
                out.push(Seen::CycleStarted);
            }
            b'F' => {
                *retry = None;
                *pending += 1;
                *error_in_cycle = false;
                out.push(Seen::CycleStarted);
                mark(stateful, out, || "function call message".into());
            }
            b'P' => {
                *retry = None;
                let named = f.body.is_none_or(|b| b.first().is_some_and(|&c| c != 0));
                if named {
                    mark(stateful, out, || "named prepared statement".into());
                } else {
                    mark(stateful, out, || "extended query protocol".into());
                }
            }
            b'B' | b'E' | b'D' | b'C' | b'H' => {
                *retry = None;
                mark(stateful, out, || "extended query protocol".into());
            }
            b'X' => {
                *retry = None;
                out.push(Seen::Terminate)
            }
            _ => *retry = None,
        })
    }

    /// Feeds bytes the server sent.
    pub fn feed_backend(&mut self, chunk: &[u8], out: &mut Vec<Seen>) -> Result<(), ProtocolError> {
        if !chunk.is_empty() {
            // An answer has begun: what the client is told now comes from this server.
            self.retry = None;
        }
        let Session {
            backend,
            pending,
            status,
            stateful,
            ready,
            backend_key,
            error_in_cycle,
            spoke,
            ..
        } = self;
        backend.feed(chunk, |f| {
            *spoke = f.tag != b'Z';
            match f.tag {
                b'Z' => {
                    let s = f.body.and_then(|b| b.first().copied()).unwrap_or(b'E');
                    *status = if b"ITE".contains(&s) { s } else { b'E' };
                    if *ready {
                        *pending = pending.saturating_sub(1);
                    }
                    *ready = true;
                    out.push(Seen::CycleEnded {
                        status: *status,
                        error: *error_in_cycle,
                    });
                    *error_in_cycle = false;
                }
                b'E' => *error_in_cycle = true,
                // A ParameterStatus after startup means a reported setting changed (SET).
                b'S' if *ready => {
                    mark(stateful, out, || "server reported a changed setting".into())
                }
                b'A' => mark(stateful, out, || "LISTEN notification".into()),
                b'K' => {
                    if let Some(b) = f.body.filter(|b| b.len() == 8) {
                        let pid = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                        let key = i32::from_be_bytes([b[4], b[5], b[6], b[7]]);
                        *backend_key = Some((pid, key));
                    }
                }
                _ => {}
            }
        })
    }
}

/// Marks the session stateful for the first reason found; the reason is only built then.
fn mark(stateful: &mut Option<Stateful>, out: &mut Vec<Seen>, reason: impl FnOnce() -> String) {
    if stateful.is_none() {
        let s = Stateful(reason());
        *stateful = Some(s.clone());
        out.push(Seen::BecameStateful(s));
    }
}

/// Statement keywords whose effects end with the transaction or leave no trace in the session.
const STATELESS_STARTS: &[&str] = &[
    "select",
    "insert",
    "update",
    "delete",
    "begin",
    "start",
    "commit",
    "end",
    "rollback",
    "abort",
    "values",
    "table",
    "with",
    "explain",
    "show",
    "savepoint",
    "release",
    "merge",
];

/// Functions and words that leave state in the session even inside a plain statement.
const STATEFUL_WORDS: &[&str] = &[
    "temp",
    "temporary",
    "set_config",
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
    "currval",
    "lastval",
    "setseed",
    "dblink_connect",
    "into",
];

/// Decides whether a simple-protocol query may leave session state, conservatively: only
/// statements that start with a known plain keyword and use no known session-level function
/// pass. Returns the reason when they may.
pub fn session_effect(sql: &str) -> Option<String> {
    session_effect_bytes(sql.as_bytes())
}

/// Where a comment that starts at `sql[i]` ends (the index after it; the end of `sql` for
/// one left open), or `None` when no comment starts there: `-- …` to the end of the line,
/// `/* … */`.
fn comment_end(sql: &[u8], i: usize) -> Option<usize> {
    let n = sql.len();
    match (sql.get(i), sql.get(i + 1)) {
        (Some(b'-'), Some(b'-')) => Some(
            sql[i..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(n, |p| i + p + 1),
        ),
        (Some(b'/'), Some(b'*')) => Some(
            sql[i + 2..]
                .windows(2)
                .position(|w| w == b"*/")
                .map_or(n, |p| i + 2 + p + 2),
        ),
        _ => None,
    }
}

/// [`session_effect`] over the raw bytes of a Query message, in one pass and without
/// allocating unless it finds a reason. It runs on every query of a PostgreSQL listener.
/// Comments are skipped; quotes are not understood, so a keyword inside a string literal
/// counts, which errs on the safe side.
pub fn session_effect_bytes(sql: &[u8]) -> Option<String> {
    let is_word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let n = sql.len();
    let mut i = 0;
    // The leading keyword of the current statement, once seen.
    let mut first: Option<&[u8]> = None;
    while i < n {
        let c = sql[i];
        if let Some(after) = comment_end(sql, i) {
            i = after;
        } else if c == b';' {
            first = None;
            i += 1;
        } else if is_word(c) {
            let start = i;
            while i < n && is_word(sql[i]) {
                i += 1;
            }
            let word = &sql[start..i];
            match first {
                None => {
                    let alpha = word
                        .iter()
                        .position(|&b| !(b.is_ascii_alphabetic() || b == b'_'))
                        .unwrap_or(word.len());
                    let keyword = &word[..alpha];
                    if !STATELESS_STARTS
                        .iter()
                        .any(|k| keyword.eq_ignore_ascii_case(k.as_bytes()))
                    {
                        return Some(format!(
                            "statement `{}`",
                            String::from_utf8_lossy(keyword).to_uppercase()
                        ));
                    }
                    first = Some(keyword);
                    if let Some(reason) = stateful_word(word, keyword) {
                        return Some(reason);
                    }
                }
                Some(keyword) => {
                    if let Some(reason) = stateful_word(word, keyword) {
                        return Some(reason);
                    }
                }
            }
        } else if first.is_none() && !c.is_ascii_whitespace() {
            // A statement that opens with a parenthesis, a quote or anything else unusual is
            // not one of the plain ones.
            return Some("statement ``".to_string());
        } else {
            i += 1;
        }
    }
    None
}

/// Whether `chunk` is exactly one whole ErrorResponse of severity FATAL with a SQLSTATE of
/// class 57P (operator intervention: `57P01` admin shutdown, which is also what a backend
/// whose postmaster died says, `57P02` crash shutdown, `57P03` cannot connect now): how a
/// server says it is going away rather than answering.
pub fn is_shutdown_fatal(chunk: &[u8]) -> bool {
    if chunk.len() < 5 || chunk[0] != b'E' {
        return false;
    }
    let len = i32::from_be_bytes([chunk[1], chunk[2], chunk[3], chunk[4]]);
    if len < 4 || len as usize + 1 != chunk.len() {
        return false;
    }
    let body = &chunk[5..];
    error_field(body, b'V').as_deref() == Some("FATAL")
        && error_code(body).is_some_and(|c| c.starts_with("57P"))
}

/// Where the last message of `chunk` begins, when `chunk` holds whole messages only (it
/// starts at a message boundary) and the last one is a shutdown FATAL ([`is_shutdown_fatal`]):
/// a backend that answered and then saw its postmaster die sends both in one write.
pub fn trailing_shutdown_fatal(chunk: &[u8]) -> Option<usize> {
    let mut pos = 0;
    while pos + 5 <= chunk.len() {
        let len = i32::from_be_bytes([
            chunk[pos + 1],
            chunk[pos + 2],
            chunk[pos + 3],
            chunk[pos + 4],
        ]);
        if len < 4 {
            return None;
        }
        let end = pos.checked_add(1 + len as usize)?;
        if end == chunk.len() {
            return is_shutdown_fatal(&chunk[pos..]).then_some(pos);
        }
        pos = end;
    }
    None
}

/// Leading keywords of a statement that only reads.
const READ_STARTS: &[&str] = &["select", "values", "table", "show", "with"];

/// Words that make a statement more than a read, or whose effect is not known: writes
/// (including a data-modifying `WITH`), row locks (`FOR UPDATE`, `FOR SHARE`, `FOR KEY SHARE`),
/// sequences, `EXPLAIN ANALYZE` (it runs the statement), calls and anything else that is not a
/// plain query. Quotes are not understood, so a listed word in a string literal counts too,
/// which errs on the safe side.
const NOT_READ_WORDS: &[&str] = &[
    "insert",
    "update",
    "delete",
    "merge",
    "into",
    "share",
    "lock",
    "nextval",
    "setval",
    "copy",
    "call",
    "do",
    "execute",
    "notify",
    "listen",
    "vacuum",
    "analyze",
    "refresh",
    "truncate",
    "grant",
    "revoke",
    "create",
    "drop",
    "alter",
    "comment",
    "prepare",
    "pg_advisory_lock",
    "pg_advisory_xact_lock",
    "pg_try_advisory_lock",
    "set_config",
    "dblink",
    "dblink_exec",
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_switch_wal",
    "pg_notify",
];

/// Whether a simple-protocol query is a plain read that may be sent again when its server
/// died before answering: one statement (a trailing `;` allowed), opening with a read keyword
/// ([`READ_STARTS`]), with none of [`NOT_READ_WORDS`] and no session effect
/// ([`session_effect_bytes`]). Conservative by design; the proxy also sends the retry inside
/// `default_transaction_read_only`, so a read that writes after all (a function with side
/// effects) fails instead of running twice.
pub fn plain_read(sql: &[u8]) -> bool {
    if sql.len() > 64 * 1024 || session_effect_bytes(sql).is_some() {
        return false;
    }
    let is_word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let (n, mut i, mut first) = (sql.len(), 0, true);
    let mut ended = false;
    while i < n {
        let c = sql[i];
        if let Some(after) = comment_end(sql, i) {
            i = after;
        } else if c == b';' {
            ended = true;
            i += 1;
        } else if ended && !c.is_ascii_whitespace() {
            // A second statement.
            return false;
        } else if is_word(c) {
            let start = i;
            while i < n && is_word(sql[i]) {
                i += 1;
            }
            let word = &sql[start..i];
            if first {
                if !READ_STARTS
                    .iter()
                    .any(|k| word.eq_ignore_ascii_case(k.as_bytes()))
                {
                    return false;
                }
                first = false;
            } else if NOT_READ_WORDS
                .iter()
                .any(|k| word.eq_ignore_ascii_case(k.as_bytes()))
            {
                return false;
            }
        } else {
            i += 1;
        }
    }
    !first
}

/// The reason a word makes its statement stateful, if it does. `first` is the statement's
/// leading keyword: `INSERT INTO` is plain; `SELECT … INTO` creates a table.
fn stateful_word(word: &[u8], first: &[u8]) -> Option<String> {
    // Every listed word is 4 to 27 bytes and starts with one of these letters; most words of
    // a query fail this before any comparison.
    if !(4..=27).contains(&word.len()) || !b"tspcldi".contains(&word[0].to_ascii_lowercase()) {
        return None;
    }
    let w = STATEFUL_WORDS
        .iter()
        .find(|s| word.eq_ignore_ascii_case(s.as_bytes()))?;
    if *w == "into" && !first.eq_ignore_ascii_case(b"select") {
        return None;
    }
    Some(format!("`{w}` in a statement"))
}

/// The password message for MD5 authentication: `md5` + md5(md5(password + user) + salt).
pub fn md5_password(user: &str, password: &str, salt: [u8; 4]) -> Vec<u8> {
    use md5::{Digest, Md5};
    let inner = format!("{:x}", Md5::digest(format!("{password}{user}").as_bytes()));
    let mut h = Md5::new();
    h.update(inner.as_bytes());
    h.update(salt);
    let mut body = format!("md5{:x}", h.finalize()).into_bytes();
    body.push(0);
    encode_message(b'p', &body)
}

#[cfg(test)]
mod retry_tests {
    use super::*;

    #[test]
    fn a_shutdown_fatal_is_told_from_other_errors() {
        let fatal = |code: &str| encode_error(true, code, "bye");
        assert!(is_shutdown_fatal(&fatal("57P01")));
        assert!(is_shutdown_fatal(&fatal("57P02")));
        assert!(!is_shutdown_fatal(&fatal("28P01")));
        assert!(!is_shutdown_fatal(&encode_error(
            false,
            "57P01",
            "not fatal"
        )));
        // Not exactly one whole message.
        let f = fatal("57P01");
        assert!(!is_shutdown_fatal(&f[..f.len() - 1]));
        let mut two = f.clone();
        two.extend_from_slice(&encode_message(b'Z', b"I"));
        assert!(!is_shutdown_fatal(&two));
        assert!(!is_shutdown_fatal(b""));
        // At the end of an answer: found where it begins; not when anything follows it, when
        // it is cut, or when the chunk does not start at a message.
        let mut answered = encode_message(b'C', b"SELECT 1\0");
        answered.extend_from_slice(&encode_message(b'Z', b"I"));
        let at = answered.len();
        answered.extend_from_slice(&f);
        assert_eq!(trailing_shutdown_fatal(&answered), Some(at));
        assert_eq!(trailing_shutdown_fatal(&f), Some(0));
        assert_eq!(trailing_shutdown_fatal(&two), None);
        assert_eq!(
            trailing_shutdown_fatal(&answered[..answered.len() - 1]),
            None
        );
        assert_eq!(trailing_shutdown_fatal(&answered[1..]), None);
        assert_eq!(trailing_shutdown_fatal(&encode_message(b'Z', b"I")), None);
    }

    #[test]
    fn plain_reads_are_told_from_everything_else() {
        for q in [
            "SELECT 1",
            "select seq from t where client = 3 and seq = 7;",
            "  -- a comment\n/* another */ SELECT * FROM t;  ",
            "WITH a AS (SELECT 1) SELECT * FROM a",
            "VALUES (1), (2)",
            "TABLE t",
            "SHOW work_mem",
            "SELECT pg_sleep(0.1), 1",
        ] {
            assert!(plain_read(q.as_bytes()), "{q}");
        }
        for q in [
            "",
            ";",
            "INSERT INTO t VALUES (1)",
            "UPDATE t SET a = 1",
            "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
            "SELECT * FROM t FOR UPDATE",
            "SELECT * FROM t FOR KEY SHARE",
            "SELECT nextval('s')",
            "SELECT 1; SELECT 2",
            "SELECT 1; DELETE FROM t",
            "SELECT * INTO t2 FROM t",
            "EXPLAIN ANALYZE SELECT 1",
            "SET work_mem = '1MB'",
            "BEGIN",
            "COMMIT",
            "SELECT set_config('a.b', '1', false)",
            "SELECT pg_advisory_lock(1)",
            "(SELECT 1)",
            "CALL p()",
        ] {
            assert!(!plain_read(q.as_bytes()), "{q}");
        }
    }

    fn ready(s: &mut Session, status: u8) {
        s.feed_backend(&encode_message(b'Z', &[status]), &mut Vec::new())
            .unwrap();
    }

    #[test]
    fn only_a_lone_read_of_an_idle_session_with_no_answer_yet_is_retryable() {
        let mut out = Vec::new();
        let mut s = Session::new();
        ready(&mut s, b'I');
        let q = encode_query("SELECT 1");
        s.feed_frontend(&q, &mut out).unwrap();
        assert_eq!(s.retry.as_deref(), Some(&q[..]));
        // The first byte of an answer ends it.
        s.feed_backend(b"T", &mut out).unwrap();
        assert_eq!(s.retry, None);

        // A write is not retryable; neither is a read inside a transaction, a second query
        // pipelined behind the first, a read of a session with state, or a query followed by
        // any other message.
        // Each case: the status the session is idle in, then what each side sends in order
        // (`true`: the client).
        let (q, z) = (encode_query, |st: &[u8]| encode_message(b'Z', st));
        type Sent = Vec<(bool, Vec<u8>)>;
        let cases: [(&str, u8, Sent); 5] = [
            ("a write", b'I', vec![(true, q("DELETE FROM t"))]),
            ("in a transaction", b'T', vec![(true, q("SELECT 1"))]),
            (
                "pipelined",
                b'I',
                vec![(true, q("SELECT 1")), (true, q("SELECT 2"))],
            ),
            (
                "with state",
                b'I',
                vec![
                    (true, q("SET work_mem = '1MB'")),
                    (false, z(b"I")),
                    (true, q("SELECT 1")),
                ],
            ),
            (
                "then Terminate",
                b'I',
                vec![(true, q("SELECT 1")), (true, encode_message(b'X', &[]))],
            ),
        ];
        for (name, status, msgs) in cases {
            let mut s = Session::new();
            ready(&mut s, status);
            for (client, m) in &msgs {
                if *client {
                    s.feed_frontend(m, &mut out).unwrap();
                } else {
                    s.feed_backend(m, &mut out).unwrap();
                }
            }
            assert_eq!(s.retry, None, "{name}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn z(status: u8) -> Vec<u8> {
        encode_message(b'Z', &[status])
    }

    #[test]
    fn startup_round_trips() {
        let params = vec![
            ("user".to_string(), "bob".to_string()),
            ("database".into(), "db".into()),
        ];
        let packet = encode_startup(&params);
        assert_eq!(
            parse_startup(&packet[4..]).unwrap(),
            Startup::Startup { params }
        );
    }

    #[test]
    fn startup_refuses_old_versions_and_missing_user() {
        let mut packet = encode_startup(&[("database".into(), "x".into())]);
        assert_eq!(
            parse_startup(&packet[4..]),
            Err(ProtocolError::Startup("no user parameter"))
        );
        packet[4..8].copy_from_slice(&0x0002_0000i32.to_be_bytes());
        assert!(matches!(
            parse_startup(&packet[4..]),
            Err(ProtocolError::Version { major: 2, .. })
        ));
    }

    #[test]
    fn simple_cycle_reaches_a_boundary() {
        let mut s = Session::new();
        let mut seen = Vec::new();
        s.feed_backend(&encode_message(b'S', b"TimeZone\0UTC\0"), &mut seen)
            .unwrap();
        s.feed_backend(&z(b'I'), &mut seen).unwrap();
        s.feed_frontend(&encode_query("BEGIN"), &mut seen).unwrap();
        assert!(!s.at_boundary());
        s.feed_backend(&z(b'T'), &mut seen).unwrap();
        assert!(s.in_transaction() && !s.at_boundary());
        s.feed_frontend(&encode_query("SELECT 1"), &mut seen)
            .unwrap();
        let mut reply = encode_error(false, "42P01", "nope");
        reply.extend(z(b'E'));
        // Split the reply at every byte to show framing does not depend on chunking.
        for b in &reply {
            s.feed_backend(std::slice::from_ref(b), &mut seen).unwrap();
        }
        assert_eq!(s.status, b'E');
        s.feed_frontend(&encode_query("ROLLBACK"), &mut seen)
            .unwrap();
        s.feed_backend(&z(b'I'), &mut seen).unwrap();
        assert!(s.at_boundary());
        assert!(s.stateful.is_none(), "{:?}", s.stateful);
        assert!(seen.contains(&Seen::CycleEnded {
            status: b'E',
            error: true
        }));
    }

    #[test]
    fn session_effects_are_detected() {
        for sql in [
            "SET search_path = x",
            "set local work_mem='1MB'",
            "PREPARE p AS SELECT 1",
            "CREATE TEMP TABLE t (x int)",
            "LISTEN chan",
            "select pg_advisory_lock(1)",
            "SELECT 1; DISCARD ALL",
            "select * into t2 from t",
            "/* hi */ declare c cursor with hold for select 1",
        ] {
            assert!(session_effect(sql).is_some(), "{sql}");
        }
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 3;",
            "  -- note\nUPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 1",
            "INSERT INTO pgbench_history (tid) VALUES (1)",
            "BEGIN;",
            "END;",
            "select pg_advisory_xact_lock(1)",
        ] {
            assert_eq!(session_effect(sql), None, "{sql}");
        }
    }

    #[test]
    fn stateful_words_pass_the_prefilter() {
        for w in STATEFUL_WORDS {
            assert!(stateful_word(w.as_bytes(), b"select").is_some(), "{w}");
            assert!(
                stateful_word(w.to_uppercase().as_bytes(), b"SELECT").is_some(),
                "{w}"
            );
        }
    }

    #[test]
    fn session_effect_reads_comments_and_statements() {
        assert_eq!(session_effect("/* ; set x */ SELECT 1 -- ; set y"), None);
        assert_eq!(
            session_effect("select 1;\n  SET x = 1"),
            Some("statement `SET`".into())
        );
        assert_eq!(session_effect("(select 1)"), Some("statement ``".into()));
        assert_eq!(
            session_effect("SELECT nextval('s'), CURRVAL('s')"),
            Some("`currval` in a statement".into())
        );
        assert_eq!(session_effect("INSERT INTO t VALUES (1)"), None);
        assert_eq!(session_effect(";;  ;"), None);
        assert_eq!(session_effect("select 1 /* unterminated"), None);
    }

    #[test]
    fn named_parse_and_parameter_status_mark_the_session() {
        let mut s = Session::new();
        let mut seen = Vec::new();
        s.feed_frontend(&encode_message(b'P', b"stmt1\0SELECT 1\0\0\0"), &mut seen)
            .unwrap();
        assert_eq!(
            s.stateful,
            Some(Stateful("named prepared statement".into()))
        );
        let mut s = Session::new();
        s.feed_backend(&z(b'I'), &mut seen).unwrap();
        s.feed_backend(&encode_message(b'S', b"TimeZone\0UTC\0"), &mut seen)
            .unwrap();
        assert!(s.stateful.is_some());
    }

    #[test]
    fn garbage_is_refused() {
        let mut s = Session::new();
        let mut seen = Vec::new();
        assert!(s.feed_frontend(b"GET / HTTP/1.1\r\n", &mut seen).is_err());
        assert!(s
            .feed_frontend(&encode_query("SELECT 1"), &mut seen)
            .is_err());
        let mut s = Session::new();
        assert!(matches!(
            s.feed_frontend(&[b'Q', 0, 0, 0, 2], &mut seen),
            Err(ProtocolError::Length { .. })
        ));
    }

    #[test]
    fn md5_matches_postgres() {
        // md5(md5("secret" + "alice") + salt) for salt 01020304, computed with PostgreSQL's rule.
        let msg = md5_password("alice", "secret", [1, 2, 3, 4]);
        assert_eq!(msg[0], b'p');
        let text = std::str::from_utf8(&msg[5..msg.len() - 1]).unwrap();
        assert!(text.starts_with("md5") && text.len() == 35, "{text}");
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_streams(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..32),
            frontend in any::<bool>(),
        ) {
            let mut s = Session::new();
            let mut seen = Vec::new();
            for c in &chunks {
                let r = if frontend { s.feed_frontend(c, &mut seen) } else { s.feed_backend(c, &mut seen) };
                if r.is_err() { break; }
            }
            let _ = parse_startup(chunks.first().map(Vec::as_slice).unwrap_or(&[]));
        }

        #[test]
        fn never_panics_on_well_framed_messages_with_arbitrary_bodies(
            msgs in proptest::collection::vec(
                (proptest::sample::select(b"QPBEDCSHFdcfXpRSKZNAT".to_vec()),
                 proptest::collection::vec(any::<u8>(), 0..48)), 0..24),
            split in 1usize..17,
        ) {
            let mut stream = Vec::new();
            for (tag, body) in &msgs {
                stream.extend(encode_message(*tag, body));
            }
            let mut a = Session::new();
            let mut b = Session::new();
            let mut seen = Vec::new();
            for c in stream.chunks(split) {
                let _ = a.feed_frontend(c, &mut seen);
                let _ = b.feed_backend(c, &mut seen);
            }
            prop_assert!(a.pending <= msgs.len() as u32);
        }

        #[test]
        fn observation_does_not_depend_on_chunking(
            msgs in proptest::collection::vec(
                (proptest::sample::select(b"QSZEKCTD".to_vec()),
                 proptest::collection::vec(any::<u8>(), 0..40)), 0..16),
            cuts in proptest::collection::vec(1usize..23, 1..8),
        ) {
            let mut stream = Vec::new();
            for (tag, body) in &msgs {
                stream.extend(encode_message(*tag, body));
            }
            let run = |pieces: &[&[u8]]| {
                let (mut f, mut b) = (Session::new(), Session::new());
                let (mut sf, mut sb) = (Vec::new(), Vec::new());
                let mut ok = (true, true);
                for p in pieces {
                    ok.0 = ok.0 && f.feed_frontend(p, &mut sf).is_ok();
                    ok.1 = ok.1 && b.feed_backend(p, &mut sb).is_ok();
                }
                (sf, sb, ok, f.pending, b.status, b.backend_key, f.stateful, b.stateful)
            };
            let whole = run(&[&stream]);
            let mut pieces = Vec::new();
            let mut rest = &stream[..];
            for c in cuts.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (a, r) = rest.split_at((*c).min(rest.len()));
                pieces.push(a);
                rest = r;
            }
            prop_assert_eq!(whole, run(&pieces));
        }

        #[test]
        fn session_effect_never_panics(sql in ".{0,200}") {
            let _ = session_effect(&sql);
        }
    }
}
