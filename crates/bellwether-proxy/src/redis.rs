//! RESP2, as far as the proxy needs it: an incremental request parser (arrays of bulk
//! strings, and inline commands), an incremental reply scanner (every RESP2 type, nested
//! arrays) that finds where each reply ends without holding it, the classification of
//! commands (read-only, session state, MULTI, subscriber mode, blocking), and a small
//! blocking-free value reader for the health check's `ROLE`.
//!
//! Both parsers work on bounded memory: a request is held whole (it may have to be re-sent on
//! another backend) up to a configured size; a reply is never held, only scanned, with a
//! bounded line buffer and nesting depth.

use std::ops::Range;

/// The longest inline command, as Redis's own limit (`PROTO_INLINE_MAX_SIZE`).
pub const MAX_INLINE: usize = 64 * 1024;
/// The most arguments in one request.
pub const MAX_ARGS: usize = 1024 * 1024;
/// The longest reply header or simple string / error line.
pub const MAX_REPLY_LINE: usize = 64 * 1024;
/// The deepest nesting of arrays in a reply.
pub const MAX_DEPTH: usize = 128;

/// Why bytes are not RESP2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RespError {
    #[error("expected '$', got {0:?}")]
    ExpectedBulk(char),
    #[error("invalid multibulk length")]
    BadArrayLength,
    #[error("invalid bulk length")]
    BadBulkLength,
    #[error("a line does not end with CRLF")]
    NoCrlf,
    #[error("too big inline request (over {MAX_INLINE} bytes)")]
    InlineTooLong,
    #[error("unbalanced quotes in inline request")]
    UnbalancedQuotes,
    #[error("request of more than {0} bytes")]
    TooLarge(usize),
    #[error("too many arguments (more than {MAX_ARGS})")]
    TooManyArgs,
    #[error("reply type byte {0:?} is not RESP2")]
    BadReplyType(char),
    #[error("reply line longer than {MAX_REPLY_LINE} bytes")]
    ReplyLineTooLong,
    #[error("reply nested deeper than {MAX_DEPTH} arrays")]
    TooDeep,
}

/// A complete request at the front of the caller's buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// How many bytes of the buffer it took.
    pub len: usize,
    /// Its arguments; for a multibulk request, ranges into the buffer.
    pub args: Args,
}

/// A request's arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Args {
    /// Ranges into the buffer the request was parsed from (multibulk: forwarded as is).
    Ranges(Vec<Range<usize>>),
    /// An inline command's words (re-encoded as multibulk before it is forwarded).
    Owned(Vec<Vec<u8>>),
}

impl Request {
    /// The arguments as slices of `buf` (the buffer the request was parsed from).
    pub fn arg<'a>(&'a self, buf: &'a [u8], i: usize) -> Option<&'a [u8]> {
        match &self.args {
            Args::Ranges(r) => r.get(i).map(|r| &buf[r.clone()]),
            Args::Owned(v) => v.get(i).map(|a| a.as_slice()),
        }
    }

    pub fn argc(&self) -> usize {
        match &self.args {
            Args::Ranges(r) => r.len(),
            Args::Owned(v) => v.len(),
        }
    }

    /// The bytes to send a server: the multibulk frame as received, or the inline command
    /// encoded as one.
    pub fn wire<'a>(&'a self, buf: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
        match &self.args {
            Args::Ranges(_) => std::borrow::Cow::Borrowed(&buf[..self.len]),
            Args::Owned(v) => std::borrow::Cow::Owned(encode_command(v)),
        }
    }
}

/// Encodes a command as an array of bulk strings.
pub fn encode_command<A: AsRef<[u8]>>(args: &[A]) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(16 + args.iter().map(|a| a.as_ref().len() + 16).sum::<usize>());
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        let a = a.as_ref();
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// An error reply; CR and LF in the message become spaces.
pub fn encode_error(message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 3);
    out.push(b'-');
    out.extend(
        message
            .bytes()
            .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.extend_from_slice(b"\r\n");
    out
}

/// Parses requests one at a time from the front of a buffer that grows as bytes arrive. The
/// parser remembers how far it got, so a request that arrives in many pieces is scanned once.
#[derive(Debug)]
pub struct RequestParser {
    max: usize,
    /// Bytes of the current request already accepted.
    pos: usize,
    /// Multibulk: the number of arguments announced, once its header is read.
    expect: Option<usize>,
    args: Vec<Range<usize>>,
    /// Inline: how far the search for the newline got.
    scanned: usize,
}

impl RequestParser {
    /// A parser for requests of at most `max` bytes.
    pub fn new(max: usize) -> RequestParser {
        RequestParser {
            max,
            pos: 0,
            expect: None,
            args: Vec::new(),
            scanned: 0,
        }
    }

    fn reset(&mut self) {
        self.pos = 0;
        self.expect = None;
        self.args = Vec::new();
        self.scanned = 0;
    }

    /// Whether part of a request has been read.
    pub fn in_request(&self) -> bool {
        self.pos > 0 || self.scanned > 0
    }

    /// The next complete request at the front of `buf` (which must start where the previous
    /// request ended, and only grow between calls until a request is returned). `Ok(None)`:
    /// more bytes are needed. A request with no arguments (an empty line, `*0`) is returned
    /// too; Redis answers nothing to it.
    pub fn parse(&mut self, buf: &[u8]) -> Result<Option<Request>, RespError> {
        if buf.is_empty() {
            return Ok(None);
        }
        if buf[0] != b'*' {
            return self.parse_inline(buf);
        }
        loop {
            let Some(expect) = self.expect else {
                let Some((n, next)) = line(buf, self.pos, MAX_INLINE)? else {
                    return self.need_more(buf);
                };
                let n = parse_int(&buf[1..n]).ok_or(RespError::BadArrayLength)?;
                if n > MAX_ARGS as i64 {
                    return Err(RespError::TooManyArgs);
                }
                self.pos = next;
                if n <= 0 {
                    let len = self.pos;
                    self.reset();
                    return Ok(Some(Request {
                        len,
                        args: Args::Ranges(Vec::new()),
                    }));
                }
                self.expect = Some(n as usize);
                self.args = Vec::with_capacity((n as usize).min(1024));
                continue;
            };
            if self.args.len() == expect {
                let len = self.pos;
                let args = std::mem::take(&mut self.args);
                self.reset();
                return Ok(Some(Request {
                    len,
                    args: Args::Ranges(args),
                }));
            }
            if self.pos >= buf.len() {
                return self.need_more(buf);
            }
            if buf[self.pos] != b'$' {
                return Err(RespError::ExpectedBulk(buf[self.pos] as char));
            }
            let Some((end, next)) = line(buf, self.pos, 32)? else {
                return self.need_more(buf);
            };
            let n = parse_int(&buf[self.pos + 1..end]).ok_or(RespError::BadBulkLength)?;
            if n < 0 {
                return Err(RespError::BadBulkLength);
            }
            let n = n as usize;
            let frame_end = next.checked_add(n).and_then(|e| e.checked_add(2));
            match frame_end {
                Some(e) if e <= self.max => {}
                _ => return Err(RespError::TooLarge(self.max)),
            }
            let frame_end = next + n + 2;
            if buf.len() < frame_end {
                return self.need_more(buf);
            }
            if &buf[next + n..frame_end] != b"\r\n" {
                return Err(RespError::NoCrlf);
            }
            self.args.push(next..next + n);
            self.pos = frame_end;
        }
    }

    fn need_more(&self, buf: &[u8]) -> Result<Option<Request>, RespError> {
        if buf.len() >= self.max {
            return Err(RespError::TooLarge(self.max));
        }
        Ok(None)
    }

    fn parse_inline(&mut self, buf: &[u8]) -> Result<Option<Request>, RespError> {
        let from = self.scanned;
        let Some(i) = buf[from..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|i| i + from)
        else {
            if buf.len() > MAX_INLINE {
                return Err(RespError::InlineTooLong);
            }
            self.scanned = buf.len();
            return Ok(None);
        };
        if i > MAX_INLINE {
            return Err(RespError::InlineTooLong);
        }
        let mut text = &buf[..i];
        if text.last() == Some(&b'\r') {
            text = &text[..text.len() - 1];
        }
        let args = split_inline(text)?;
        self.reset();
        Ok(Some(Request {
            len: i + 1,
            args: Args::Owned(args),
        }))
    }
}

/// Splits an inline command into words as Redis does (`sdssplitargs`): blanks separate
/// words; double quotes allow `\n`, `\r`, `\t`, `\\`, `\"`, `\xHH`; single quotes allow `\'`.
fn split_inline(text: &[u8]) -> Result<Vec<Vec<u8>>, RespError> {
    let mut out = Vec::new();
    let mut i = 0;
    let blank =
        |b: u8| b == b' ' || b == b'\t' || b == b'\n' || b == b'\r' || b == 0x0b || b == 0x0c;
    while i < text.len() {
        while i < text.len() && blank(text[i]) {
            i += 1;
        }
        if i >= text.len() {
            break;
        }
        let mut word = Vec::new();
        match text[i] {
            b'"' => {
                i += 1;
                loop {
                    let Some(&c) = text.get(i) else {
                        return Err(RespError::UnbalancedQuotes);
                    };
                    if c == b'"' {
                        i += 1;
                        if text.get(i).is_some_and(|&b| !blank(b)) {
                            return Err(RespError::UnbalancedQuotes);
                        }
                        break;
                    }
                    if c == b'\\' && i + 1 < text.len() {
                        let e = text[i + 1];
                        let hex = |b: u8| (b as char).to_digit(16);
                        if e == b'x' && i + 3 < text.len() {
                            if let (Some(h), Some(l)) = (hex(text[i + 2]), hex(text[i + 3])) {
                                word.push((h * 16 + l) as u8);
                                i += 4;
                                continue;
                            }
                        }
                        word.push(match e {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 8,
                            b'a' => 7,
                            other => other,
                        });
                        i += 2;
                        continue;
                    }
                    word.push(c);
                    i += 1;
                }
            }
            b'\'' => {
                i += 1;
                loop {
                    let Some(&c) = text.get(i) else {
                        return Err(RespError::UnbalancedQuotes);
                    };
                    if c == b'\'' {
                        i += 1;
                        if text.get(i).is_some_and(|&b| !blank(b)) {
                            return Err(RespError::UnbalancedQuotes);
                        }
                        break;
                    }
                    if c == b'\\' && text.get(i + 1) == Some(&b'\'') {
                        word.push(b'\'');
                        i += 2;
                        continue;
                    }
                    word.push(c);
                    i += 1;
                }
            }
            _ => {
                while i < text.len() && !blank(text[i]) {
                    word.push(text[i]);
                    i += 1;
                }
            }
        }
        out.push(word);
        if out.len() > MAX_ARGS {
            return Err(RespError::TooManyArgs);
        }
    }
    Ok(out)
}

/// The line starting at `from`: `Some((end of its text, start of the next line))`, `None`
/// when its CRLF has not arrived (and it is not longer than `max`).
fn line(buf: &[u8], from: usize, max: usize) -> Result<Option<(usize, usize)>, RespError> {
    let window = &buf[from..buf.len().min(from + max + 2)];
    match window.iter().position(|&b| b == b'\n') {
        Some(i) => {
            let nl = from + i;
            if nl == from || buf[nl - 1] != b'\r' {
                return Err(RespError::NoCrlf);
            }
            Ok(Some((nl - 1, nl + 1)))
        }
        None if window.len() >= max + 2 => Err(RespError::NoCrlf),
        None => Ok(None),
    }
}

/// A strict decimal integer: an optional `-`, then 1 to 18 digits.
fn parse_int(s: &[u8]) -> Option<i64> {
    let (neg, digits) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut v: i64 = 0;
    for d in digits {
        v = v * 10 + i64::from(d - b'0');
    }
    Some(if neg { -v } else { v })
}

/// Scans a server's replies as they stream by, reporting where each top-level reply ends.
/// It holds no reply: only a partial header line (bounded) and the open arrays' counts.
#[derive(Debug, Default)]
pub struct ReplyScanner {
    /// Remaining elements of each open array, innermost last.
    stack: Vec<i64>,
    /// Payload bytes of a bulk string still to come.
    bulk_left: u64,
    /// 2 or 1 while a bulk string's closing CRLF is expected.
    crlf_left: u8,
    /// A header or simple line cut by a chunk's end.
    line: Vec<u8>,
    /// The current top-level reply's type byte.
    top: u8,
}

impl ReplyScanner {
    pub fn new() -> ReplyScanner {
        ReplyScanner::default()
    }

    /// Whether part of a reply has been seen but not its end.
    pub fn mid_reply(&self) -> bool {
        !self.stack.is_empty() || self.bulk_left > 0 || self.crlf_left > 0 || !self.line.is_empty()
    }

    /// Scans `data` until one top-level reply ends: `Some((bytes of data used, the reply's
    /// type byte))`; `None` when all of `data` was used without an end.
    pub fn feed(&mut self, data: &[u8]) -> Result<Option<(usize, u8)>, RespError> {
        let mut i = 0;
        loop {
            if self.bulk_left > 0 {
                let take = (self.bulk_left).min((data.len() - i) as u64) as usize;
                i += take;
                self.bulk_left -= take as u64;
                if self.bulk_left > 0 {
                    return Ok(None);
                }
            }
            while self.crlf_left > 0 {
                let Some(&b) = data.get(i) else {
                    return Ok(None);
                };
                let want = if self.crlf_left == 2 { b'\r' } else { b'\n' };
                if b != want {
                    return Err(RespError::NoCrlf);
                }
                i += 1;
                self.crlf_left -= 1;
                if self.crlf_left == 0 && self.element_done() {
                    return Ok(Some((i, self.top)));
                }
            }
            if i >= data.len() {
                return Ok(None);
            }
            let rest = &data[i..];
            let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                if self.line.len() + rest.len() > MAX_REPLY_LINE {
                    return Err(RespError::ReplyLineTooLong);
                }
                self.line.extend_from_slice(rest);
                return Ok(None);
            };
            i += nl + 1;
            let done = if self.line.is_empty() {
                self.header(&rest[..nl])?
            } else {
                if self.line.len() + nl > MAX_REPLY_LINE {
                    return Err(RespError::ReplyLineTooLong);
                }
                let mut l = std::mem::take(&mut self.line);
                l.extend_from_slice(&rest[..nl]);
                let r = self.header(&l);
                l.clear();
                self.line = l;
                r?
            };
            if done {
                return Ok(Some((i, self.top)));
            }
        }
    }

    /// Handles one line (without its `\n`); true when it ends a top-level reply.
    fn header(&mut self, l: &[u8]) -> Result<bool, RespError> {
        let Some((&b'\r', l)) = l.split_last() else {
            return Err(RespError::NoCrlf);
        };
        let Some(&t) = l.first() else {
            return Err(RespError::BadReplyType('\n'));
        };
        if self.stack.is_empty() {
            self.top = t;
        }
        match t {
            b'+' | b'-' | b':' => Ok(self.element_done()),
            b'$' => {
                let n = parse_int(&l[1..]).ok_or(RespError::BadBulkLength)?;
                if n == -1 {
                    return Ok(self.element_done());
                }
                if n < 0 {
                    return Err(RespError::BadBulkLength);
                }
                self.bulk_left = n as u64;
                self.crlf_left = 2;
                Ok(false)
            }
            b'*' => {
                let n = parse_int(&l[1..]).ok_or(RespError::BadArrayLength)?;
                if n < -1 {
                    return Err(RespError::BadArrayLength);
                }
                if n <= 0 {
                    return Ok(self.element_done());
                }
                if self.stack.len() >= MAX_DEPTH {
                    return Err(RespError::TooDeep);
                }
                self.stack.push(n);
                Ok(false)
            }
            other => Err(RespError::BadReplyType(other as char)),
        }
    }

    /// One element ended: count it off the open arrays; true when the top level ended.
    fn element_done(&mut self) -> bool {
        loop {
            match self.stack.last_mut() {
                None => return true,
                Some(n) => {
                    *n -= 1;
                    if *n > 0 {
                        return false;
                    }
                    self.stack.pop();
                }
            }
        }
    }
}

/// A reply read whole (health checks and session replays only: small replies).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Value>>),
}

/// Parses one whole reply from the front of `buf`: `Some((value, bytes used))`, `None` when
/// incomplete.
pub fn parse_value(buf: &[u8]) -> Result<Option<(Value, usize)>, RespError> {
    fn at(buf: &[u8], pos: usize, depth: usize) -> Result<Option<(Value, usize)>, RespError> {
        if depth > MAX_DEPTH {
            return Err(RespError::TooDeep);
        }
        let Some((end, next)) = line(buf, pos, MAX_REPLY_LINE)? else {
            return Ok(None);
        };
        let Some(&t) = buf.get(pos) else {
            return Ok(None);
        };
        let text = &buf[pos + 1..end];
        let s = || String::from_utf8_lossy(text).into_owned();
        match t {
            b'+' => Ok(Some((Value::Simple(s()), next))),
            b'-' => Ok(Some((Value::Error(s()), next))),
            b':' => Ok(Some((
                Value::Int(parse_int(text).ok_or(RespError::BadBulkLength)?),
                next,
            ))),
            b'$' => {
                let n = parse_int(text).ok_or(RespError::BadBulkLength)?;
                if n < 0 {
                    return Ok(Some((Value::Bulk(None), next)));
                }
                let n = n as usize;
                if buf.len() < next + n + 2 {
                    return Ok(None);
                }
                if &buf[next + n..next + n + 2] != b"\r\n" {
                    return Err(RespError::NoCrlf);
                }
                Ok(Some((
                    Value::Bulk(Some(buf[next..next + n].to_vec())),
                    next + n + 2,
                )))
            }
            b'*' => {
                let n = parse_int(text).ok_or(RespError::BadArrayLength)?;
                if n < 0 {
                    return Ok(Some((Value::Array(None), next)));
                }
                let mut v = Vec::with_capacity((n as usize).min(64));
                let mut p = next;
                for _ in 0..n {
                    match at(buf, p, depth + 1)? {
                        Some((x, q)) => {
                            v.push(x);
                            p = q;
                        }
                        None => return Ok(None),
                    }
                }
                Ok(Some((Value::Array(Some(v)), p)))
            }
            other => Err(RespError::BadReplyType(other as char)),
        }
    }
    if buf.is_empty() {
        return Ok(None);
    }
    at(buf, 0, 0)
}

/// What the proxy must know about a command to route it and to follow the session's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// In the documented read-only list: may go to a replica in active-active mode, and is
    /// re-sent to the new primary when its backend dies before answering.
    Read,
    /// Anything else: sent to the primary; never re-sent.
    Write,
    /// Session state replayed on a new backend: `SELECT`, `AUTH`, `CLIENT SETNAME`, `HELLO 2`.
    SessionState,
    Multi,
    /// `EXEC` or `DISCARD`: the transaction ends.
    EndMulti,
    Watch,
    Unwatch,
    /// `SUBSCRIBE`, `PSUBSCRIBE`, `SSUBSCRIBE`, `MONITOR`: the session becomes a stream.
    Stream,
    /// `BLPOP`, `XREAD … BLOCK`, `WAIT`, …: may wait on the server for a long time.
    Blocking,
    /// `HELLO 3` (RESP3): refused by the proxy.
    Resp3,
    Quit,
    /// `RESET`: the server forgets the session's state.
    Reset,
}

/// The read-only commands: they change nothing on the server, so they may be answered by a
/// replica and re-sent safely. Cursor commands (`SCAN`…) are not in it: a cursor means
/// nothing to another server.
pub const READ_ONLY: &[&str] = &[
    "BITCOUNT",
    "BITPOS",
    "DBSIZE",
    "DUMP",
    "ECHO",
    "EXISTS",
    "EXPIRETIME",
    "GEODIST",
    "GEOHASH",
    "GEOPOS",
    "GEORADIUSBYMEMBER_RO",
    "GEORADIUS_RO",
    "GEOSEARCH",
    "GET",
    "GETBIT",
    "GETRANGE",
    "HEXISTS",
    "HGET",
    "HGETALL",
    "HKEYS",
    "HLEN",
    "HMGET",
    "HRANDFIELD",
    "HSTRLEN",
    "HVALS",
    "KEYS",
    "LINDEX",
    "LLEN",
    "LPOS",
    "LRANGE",
    "MGET",
    "PEXPIRETIME",
    "PING",
    "PTTL",
    "RANDOMKEY",
    "SCARD",
    "SDIFF",
    "SINTER",
    "SINTERCARD",
    "SISMEMBER",
    "SMEMBERS",
    "SMISMEMBER",
    "SORT_RO",
    "SRANDMEMBER",
    "STRLEN",
    "SUBSTR",
    "SUNION",
    "TTL",
    "TYPE",
    "XLEN",
    "XRANGE",
    "XREVRANGE",
    "ZCARD",
    "ZCOUNT",
    "ZDIFF",
    "ZINTER",
    "ZINTERCARD",
    "ZLEXCOUNT",
    "ZMSCORE",
    "ZRANDMEMBER",
    "ZRANGE",
    "ZRANGEBYLEX",
    "ZRANGEBYSCORE",
    "ZRANK",
    "ZREVRANGE",
    "ZREVRANGEBYLEX",
    "ZREVRANGEBYSCORE",
    "ZREVRANK",
    "ZSCORE",
    "ZUNION",
];

const BLOCKING: &[&str] = &[
    "BLPOP",
    "BRPOP",
    "BRPOPLPUSH",
    "BLMOVE",
    "BLMPOP",
    "BZPOPMIN",
    "BZPOPMAX",
    "BZMPOP",
    "WAIT",
    "WAITAOF",
];

/// Classifies a request from its arguments.
pub fn classify(argv: &[&[u8]]) -> Kind {
    let Some(name) = argv.first() else {
        return Kind::Write;
    };
    let mut upper = [0u8; 24];
    if name.len() > upper.len() {
        return Kind::Write;
    }
    for (u, c) in upper.iter_mut().zip(name.iter()) {
        *u = c.to_ascii_uppercase();
    }
    let name = std::str::from_utf8(&upper[..name.len()]).unwrap_or("");
    let arg_is = |i: usize, w: &str| {
        argv.get(i)
            .is_some_and(|a| a.eq_ignore_ascii_case(w.as_bytes()))
    };
    match name {
        "MULTI" => Kind::Multi,
        "EXEC" | "DISCARD" => Kind::EndMulti,
        "WATCH" => Kind::Watch,
        "UNWATCH" => Kind::Unwatch,
        "SUBSCRIBE" | "PSUBSCRIBE" | "SSUBSCRIBE" | "MONITOR" => Kind::Stream,
        "SELECT" | "AUTH" => Kind::SessionState,
        "CLIENT" if arg_is(1, "SETNAME") => Kind::SessionState,
        "HELLO" => match argv.get(1).and_then(|v| parse_int(v)) {
            Some(3) => Kind::Resp3,
            _ => Kind::SessionState,
        },
        "QUIT" => Kind::Quit,
        "RESET" => Kind::Reset,
        "XREAD" | "XREADGROUP" if argv.iter().any(|a| a.eq_ignore_ascii_case(b"BLOCK")) => {
            Kind::Blocking
        }
        "XREAD" => Kind::Read,
        n if BLOCKING.contains(&n) => Kind::Blocking,
        n if READ_ONLY.binary_search(&n).is_ok() => Kind::Read,
        _ => Kind::Write,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(r: &Request, buf: &[u8]) -> Vec<Vec<u8>> {
        (0..r.argc())
            .map(|i| r.arg(buf, i).unwrap().to_vec())
            .collect()
    }

    #[test]
    fn multibulk_in_pieces() {
        let frame = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n*1\r\n$4\r\nPING\r\n";
        let mut p = RequestParser::new(1 << 20);
        for cut in 0..31 {
            assert_eq!(p.parse(&frame[..cut]).unwrap(), None, "cut {cut}");
        }
        let r = p.parse(frame).unwrap().unwrap();
        assert_eq!(r.len, 31);
        assert_eq!(
            args(&r, frame),
            vec![b"SET".to_vec(), b"k".to_vec(), b"hello".to_vec()]
        );
        assert_eq!(r.wire(frame).as_ref(), &frame[..31]);
        let rest = &frame[31..];
        let r = p.parse(rest).unwrap().unwrap();
        assert_eq!(args(&r, rest), vec![b"PING".to_vec()]);
    }

    #[test]
    fn inline_commands() {
        let mut p = RequestParser::new(1 << 20);
        let buf = b"set k \"a b\\x41\\n\" 'it\\'s'\r\n";
        let r = p.parse(buf).unwrap().unwrap();
        assert_eq!(r.len, buf.len());
        assert_eq!(
            args(&r, buf),
            vec![
                b"set".to_vec(),
                b"k".to_vec(),
                b"a bA\n".to_vec(),
                b"it's".to_vec()
            ]
        );
        assert_eq!(
            r.wire(buf).as_ref(),
            b"*4\r\n$3\r\nset\r\n$1\r\nk\r\n$5\r\na bA\n\r\n$4\r\nit's\r\n"
        );
        assert_eq!(p.parse(b"\r\n").unwrap().unwrap().argc(), 0);
        assert_eq!(p.parse(b"PING").unwrap(), None);
        assert_eq!(p.parse(b"PING\n").unwrap().unwrap().len, 5);
        assert_eq!(p.parse(b"get \"k\n"), Err(RespError::UnbalancedQuotes));
    }

    #[test]
    fn bad_requests_are_named() {
        let bad: &[(&[u8], RespError)] = &[
            (b"*2\r\n:1\r\n", RespError::ExpectedBulk(':')),
            (b"*x\r\n", RespError::BadArrayLength),
            (b"*1\r\n$-5\r\n", RespError::BadBulkLength),
            (b"*1\r\n$3\r\nGETxx", RespError::NoCrlf),
            (b"*1\n", RespError::NoCrlf),
            (b"*99999999\r\n", RespError::TooManyArgs),
            (b"*1\r\n$2000\r\n", RespError::TooLarge(1024)),
        ];
        for (input, want) in bad {
            let mut p = RequestParser::new(1024);
            assert_eq!(p.parse(input).as_ref(), Err(want), "{input:?}");
        }
        let mut p = RequestParser::new(1024);
        assert_eq!(p.parse(&[b'a'; 70_000]), Err(RespError::InlineTooLong));
        let mut p = RequestParser::new(1024);
        let mut big = b"*1\r\n$1000\r\n".to_vec();
        big.extend(std::iter::repeat_n(b'x', 500));
        assert_eq!(p.parse(&big), Ok(None));
        // A header that never ends is cut at its limit.
        let mut p = RequestParser::new(1 << 20);
        let mut long = b"*1\r\n$".to_vec();
        long.extend(std::iter::repeat_n(b'1', 100));
        assert_eq!(p.parse(&long), Err(RespError::NoCrlf));
    }

    #[test]
    fn replies_nested_and_in_pieces() {
        let stream: &[u8] = b"+OK\r\n-ERR no\r\n:42\r\n$5\r\nhello\r\n$-1\r\n*-1\r\n*0\r\n*2\r\n*2\r\n$1\r\na\r\n:1\r\n*1\r\n$0\r\n\r\n";
        let want = [b'+', b'-', b':', b'$', b'$', b'*', b'*', b'*'];
        // Byte by byte and whole: the same ends.
        for step in [1usize, 3, 7, stream.len()] {
            let mut s = ReplyScanner::new();
            let mut types = Vec::new();
            let mut ends = Vec::new();
            let mut off = 0;
            for chunk in stream.chunks(step) {
                let mut used = 0;
                while used < chunk.len() {
                    match s.feed(&chunk[used..]).unwrap() {
                        Some((n, t)) => {
                            used += n;
                            types.push(t);
                            ends.push(off + used);
                        }
                        None => used = chunk.len(),
                    }
                }
                off += chunk.len();
            }
            assert_eq!(types, want, "step {step}");
            assert_eq!(*ends.last().unwrap(), stream.len());
            assert!(!s.mid_reply());
        }
    }

    #[test]
    fn bad_replies_are_named() {
        let mut s = ReplyScanner::new();
        assert_eq!(s.feed(b"%2\r\n"), Err(RespError::BadReplyType('%')));
        let mut s = ReplyScanner::new();
        assert_eq!(s.feed(b"$3\r\nabcd\r\n"), Err(RespError::NoCrlf));
        let mut s = ReplyScanner::new();
        assert_eq!(s.feed(&b"*1\r\n".repeat(200)), Err(RespError::TooDeep));
        let mut s = ReplyScanner::new();
        assert_eq!(s.feed(&[b'+'; 70_000]), Err(RespError::ReplyLineTooLong));
    }

    #[test]
    fn whole_values() {
        let buf = b"*3\r\n$6\r\nmaster\r\n:3129\r\n*1\r\n*3\r\n$9\r\n127.0.0.1\r\n$4\r\n9001\r\n$4\r\n3129\r\n";
        let (v, n) = parse_value(buf).unwrap().unwrap();
        assert_eq!(n, buf.len());
        let Value::Array(Some(items)) = v else {
            panic!()
        };
        assert_eq!(items[0], Value::Bulk(Some(b"master".to_vec())));
        assert_eq!(items[1], Value::Int(3129));
        assert_eq!(parse_value(&buf[..20]).unwrap(), None);
    }

    #[test]
    fn classification() {
        let c = |s: &str| classify(&s.split(' ').map(str::as_bytes).collect::<Vec<_>>());
        assert_eq!(c("get k"), Kind::Read);
        assert_eq!(c("MGET a b"), Kind::Read);
        assert_eq!(c("set k v"), Kind::Write);
        assert_eq!(c("scan 0"), Kind::Write);
        assert_eq!(c("multi"), Kind::Multi);
        assert_eq!(c("exec"), Kind::EndMulti);
        assert_eq!(c("blpop q 0"), Kind::Blocking);
        assert_eq!(c("xread block 0 streams s $"), Kind::Blocking);
        assert_eq!(c("xread streams s 0"), Kind::Read);
        assert_eq!(c("client setname me"), Kind::SessionState);
        assert_eq!(c("client list"), Kind::Write);
        assert_eq!(c("hello 3"), Kind::Resp3);
        assert_eq!(c("hello 2"), Kind::SessionState);
        assert_eq!(c("subscribe ch"), Kind::Stream);
        assert_eq!(c("averyveryverylongcommandnamethatisnotreal"), Kind::Write);
        assert!(READ_ONLY.windows(2).all(|w| w[0] < w[1]), "kept sorted");
    }

    proptest::proptest! {
        /// Any bytes: the request parser returns a request, asks for more, or names an error;
        /// it never panics, and a request it returns lies within the buffer.
        #[test]
        fn requests_never_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let mut p = RequestParser::new(256);
            let mut buf: &[u8] = &data;
            for _ in 0..64 {
                match p.parse(buf) {
                    Ok(Some(r)) => {
                        proptest::prop_assert!(r.len > 0 && r.len <= buf.len());
                        for i in 0..r.argc() {
                            r.arg(buf, i).unwrap();
                        }
                        buf = &buf[r.len..];
                    }
                    Ok(None) | Err(_) => break,
                }
            }
        }

        /// Valid commands cut anywhere parse to the same arguments.
        #[test]
        fn valid_requests_survive_any_cut(
            words in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..20), 1..6),
            cut in 0usize..200,
        ) {
            let frame = encode_command(&words);
            let mut p = RequestParser::new(1 << 20);
            let cut = cut.min(frame.len() - 1);
            proptest::prop_assert_eq!(p.parse(&frame[..cut]).unwrap(), None);
            let r = p.parse(&frame).unwrap().unwrap();
            proptest::prop_assert_eq!(r.len, frame.len());
            let got: Vec<Vec<u8>> = (0..r.argc()).map(|i| r.arg(&frame, i).unwrap().to_vec()).collect();
            proptest::prop_assert_eq!(got, words);
        }

        /// Any bytes into the reply scanner, in any pieces: no panic, and ends within the data.
        #[test]
        fn replies_never_panic(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
            step in 1usize..50,
        ) {
            let mut s = ReplyScanner::new();
            'outer: for chunk in data.chunks(step) {
                let mut used = 0;
                while used < chunk.len() {
                    match s.feed(&chunk[used..]) {
                        Ok(Some((n, _))) => {
                            proptest::prop_assert!(n > 0 && used + n <= chunk.len());
                            used += n;
                        }
                        Ok(None) => break,
                        Err(_) => break 'outer,
                    }
                }
            }
            let _ = parse_value(&data);
        }
    }
}
