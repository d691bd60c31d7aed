//! `postgresql.conf` and `postgresql.auto.conf`: PostgreSQL's configuration-file syntax, with
//! `include`, `include_if_exists` and `include_dir` resolved through a [`ConfSource`].

use serde::{Deserialize, Serialize};

/// One `name = value` line, after includes are resolved, in the order PostgreSQL reads them
/// (a later entry for the same name wins).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfEntry {
    /// Lower-cased as PostgreSQL does.
    pub name: String,
    /// Unquoted, escapes resolved.
    pub value: String,
    pub file: String,
    pub line: u32,
}

/// Where included files come from (the disk in `bellwether-pg`, a map in tests). Paths are as
/// the including file names them, already made absolute against its directory.
pub trait ConfSource {
    fn read(&self, path: &str) -> std::io::Result<String>;
    /// The names of the `*.conf` files in a directory (not recursive), any order.
    fn list_dir(&self, path: &str) -> std::io::Result<Vec<String>>;
}

/// A malformed file, a missing include, or an include cycle; names the file and line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct ConfError {
    pub file: String,
    pub line: u32,
    pub message: String,
}

/// Parses one file's text (no includes followed): its entries and include directives in order.
///
/// The grammar is PostgreSQL's (`guc-file.l`): `name [=] value` per line, `#` comments; a
/// name is an identifier or `a.b`; a value is an identifier, a number (`64`, `-1.5`, `0x1F`,
/// `128MB`), an unquoted string of letters, digits and `-._:/` starting with a letter, or a
/// single-quoted string (`''` or `\'` for a quote, `\b \f \n \r \t`, octal `\101`, any
/// other escaped character as itself). Names are lower-cased (ASCII letters, as PostgreSQL
/// compares them). The first error is returned.
pub fn parse(text: &str, file: &str) -> Result<Vec<Directive>, ConfError> {
    let mut lx = Lexer {
        b: text.as_bytes(),
        pos: 0,
        line: 1,
    };
    let mut out = Vec::new();
    let err = |line: u32, tok: &Tok| ConfError {
        file: file.to_string(),
        line,
        message: match tok.kind {
            Kind::Eol | Kind::Eof => "syntax error near end of line".to_string(),
            _ => format!("syntax error near token {:?}", tok.text),
        },
    };
    loop {
        let tok = lx.next();
        match tok.kind {
            Kind::Eof => break,
            Kind::Eol => continue,
            Kind::Id | Kind::QualifiedId => {}
            _ => return Err(err(tok.line, &tok)),
        }
        let line = tok.line;
        let name = tok.text.to_ascii_lowercase();
        let mut tok = lx.next();
        if tok.kind == Kind::Equals {
            tok = lx.next();
        }
        let value = match tok.kind {
            Kind::Id | Kind::Integer | Kind::Real | Kind::Unquoted => tok.text.clone(),
            Kind::Str => deescape(&tok.text).ok_or_else(|| ConfError {
                file: file.to_string(),
                line,
                message: format!("the value of {name} is not valid UTF-8 after its escapes"),
            })?,
            _ => return Err(err(tok.line, &tok)),
        };
        let end = lx.next();
        if !matches!(end.kind, Kind::Eol | Kind::Eof) {
            return Err(err(end.line, &end));
        }
        out.push(match name.as_str() {
            "include" => Directive::Include {
                path: value,
                if_exists: false,
                line,
            },
            "include_if_exists" => Directive::Include {
                path: value,
                if_exists: true,
                line,
            },
            "include_dir" => Directive::IncludeDir { path: value, line },
            _ => Directive::Set(ConfEntry {
                name,
                value,
                file: file.to_string(),
                line,
            }),
        });
        if end.kind == Kind::Eof {
            break;
        }
    }
    Ok(out)
}

/// The token kinds of `guc-file.l`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Eol,
    Eof,
    Id,
    QualifiedId,
    Str,
    Unquoted,
    Integer,
    Real,
    Equals,
    Error,
}

#[derive(Debug)]
struct Tok {
    kind: Kind,
    text: String,
    line: u32,
}

/// PostgreSQL's configuration-file lexer: the longest match, ties to the earlier rule.
struct Lexer<'a> {
    b: &'a [u8],
    pos: usize,
    line: u32,
}

fn is_letter(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_letter_or_digit(c: u8) -> bool {
    is_letter(c) || c.is_ascii_digit()
}

impl Lexer<'_> {
    fn at(&self, i: usize) -> Option<u8> {
        self.b.get(i).copied()
    }

    fn count(&self, from: usize, f: impl Fn(u8) -> bool) -> usize {
        self.b[from.min(self.b.len())..]
            .iter()
            .take_while(|c| f(**c))
            .count()
    }

    fn next(&mut self) -> Tok {
        // Whitespace and comments.
        loop {
            match self.at(self.pos) {
                Some(b' ' | b'\t' | b'\r') => self.pos += 1,
                Some(b'#') => self.pos += self.count(self.pos, |c| c != b'\n'),
                _ => break,
            }
        }
        let line = self.line;
        let start = self.pos;
        let Some(c) = self.at(start) else {
            return Tok {
                kind: Kind::Eof,
                text: String::new(),
                line,
            };
        };
        let (kind, len) = match c {
            b'\n' => {
                self.line += 1;
                (Kind::Eol, 1)
            }
            b'=' => (Kind::Equals, 1),
            b'\'' => self
                .string(start)
                .map_or((Kind::Error, 1), |n| (Kind::Str, n)),
            c if is_letter(c) => self.word(start),
            b'0'..=b'9' | b'+' | b'-' | b'.' => self.number(start),
            _ => (Kind::Error, 1),
        };
        self.pos = start + len;
        // A token never splits a UTF-8 character except an error on a stray byte, which
        // is shown lossily.
        let text = String::from_utf8_lossy(&self.b[start..start + len]).into_owned();
        Tok { kind, text, line }
    }

    /// `'([^'\\\n]|\\.|'')*'`: the length of the longest match, if any.
    fn string(&self, start: usize) -> Option<usize> {
        let mut i = start + 1;
        let mut end = None;
        loop {
            match self.at(i) {
                None | Some(b'\n') => break,
                Some(b'\\') => match self.at(i + 1) {
                    None | Some(b'\n') => break,
                    Some(_) => i += 2,
                },
                Some(b'\'') => {
                    end = Some(i + 1 - start);
                    if self.at(i + 1) == Some(b'\'') {
                        i += 2;
                    } else {
                        break;
                    }
                }
                Some(_) => i += 1,
            }
        }
        end
    }

    /// An identifier, `a.b`, or an unquoted string, whichever is longest.
    fn word(&self, start: usize) -> (Kind, usize) {
        let id = 1 + self.count(start + 1, is_letter_or_digit);
        let qualified = (self.at(start + id) == Some(b'.')
            && self.at(start + id + 1).is_some_and(is_letter))
        .then(|| id + 2 + self.count(start + id + 2, is_letter_or_digit));
        let unquoted = 1 + self.count(start + 1, |c| {
            is_letter_or_digit(c) || matches!(c, b'-' | b'.' | b'_' | b':' | b'/')
        });
        if unquoted == id {
            (Kind::Id, id)
        } else if qualified == Some(unquoted) {
            (Kind::QualifiedId, unquoted)
        } else {
            (Kind::Unquoted, unquoted)
        }
    }

    /// `INTEGER` (`[+-]?(\d+|0x[0-9a-fA-F]+)[a-zA-Z]*`) or `REAL`
    /// (`[+-]?\d*\.\d*([Ee][+-]?\d+)?`), whichever is longest.
    fn number(&self, start: usize) -> (Kind, usize) {
        let sign = usize::from(matches!(self.at(start), Some(b'+' | b'-')));
        let p = start + sign;
        let units = |from: usize| self.count(from, |c| c.is_ascii_alphabetic());
        let mut integer = 0;
        let digits = self.count(p, |c| c.is_ascii_digit());
        if digits > 0 {
            integer = sign + digits + units(p + digits);
        }
        if self.at(p) == Some(b'0') && matches!(self.at(p + 1), Some(b'x' | b'X')) {
            let hex = self.count(p + 2, |c| c.is_ascii_hexdigit());
            if hex > 0 {
                integer = integer.max(sign + 2 + hex + units(p + 2 + hex));
            }
        }
        let mut real = 0;
        if self.at(p + digits) == Some(b'.') {
            let frac = self.count(p + digits + 1, |c| c.is_ascii_digit());
            real = sign + digits + 1 + frac;
            let e = start + real;
            if matches!(self.at(e), Some(b'e' | b'E')) {
                let s = usize::from(matches!(self.at(e + 1), Some(b'+' | b'-')));
                let n = self.count(e + 1 + s, |c| c.is_ascii_digit());
                if n > 0 {
                    real += 1 + s + n;
                }
            }
        }
        if integer == 0 && real == 0 {
            (Kind::Error, 1)
        } else if integer >= real {
            (Kind::Integer, integer)
        } else {
            (Kind::Real, real)
        }
    }
}

/// PostgreSQL's `DeescapeQuotedString` on a whole `'…'` token. Octal escapes can make any
/// byte; a NUL ends the value (as it ends the C string); `None` if the result is not UTF-8.
fn deescape(token: &str) -> Option<String> {
    let b = token.as_bytes();
    let inner = &b[1..b.len() - 1];
    let mut out = Vec::with_capacity(inner.len());
    let mut i = 0;
    while i < inner.len() {
        let c = inner[i];
        if c == b'\\' && i + 1 < inner.len() {
            i += 1;
            match inner[i] {
                b'b' => out.push(0x08),
                b'f' => out.push(0x0c),
                b'n' => out.push(b'\n'),
                b'r' => out.push(b'\r'),
                b't' => out.push(b'\t'),
                b'0'..=b'7' => {
                    let mut v: u32 = 0;
                    let mut k = 0;
                    while k < 3 && i + k < inner.len() && (b'0'..=b'7').contains(&inner[i + k]) {
                        v = (v << 3) + u32::from(inner[i + k] - b'0');
                        k += 1;
                    }
                    i += k - 1;
                    out.push(v as u8);
                }
                other => out.push(other),
            }
        } else if c == b'\'' && inner.get(i + 1) == Some(&b'\'') {
            out.push(b'\'');
            i += 1;
        } else {
            out.push(c);
        }
        i += 1;
    }
    if let Some(nul) = out.iter().position(|c| *c == 0) {
        out.truncate(nul);
    }
    String::from_utf8(out).ok()
}

/// One line of a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Directive {
    Set(ConfEntry),
    Include {
        path: String,
        if_exists: bool,
        line: u32,
    },
    IncludeDir {
        path: String,
        line: u32,
    },
}

/// Reads `file` and everything it includes (depth limit 10 as PostgreSQL), in reading order.
///
/// As PostgreSQL: a relative include is resolved against the including file's directory;
/// `include_dir` reads the directory's files whose names end in `.conf` and do not start
/// with `.`, sorted by name; a missing `include_if_exists` file is skipped. Refused: an
/// empty include name, nesting deeper than 10, and any include cycle (a file that includes
/// itself directly or through others). Errors name the including file and line.
pub fn load(file: &str, source: &dyn ConfSource) -> Result<Vec<ConfEntry>, ConfError> {
    let mut out = Vec::new();
    let mut stack = Vec::new();
    let text = source.read(file).map_err(|e| ConfError {
        file: file.to_string(),
        line: 0,
        message: format!("could not read configuration file: {e}"),
    })?;
    load_text(file, &text, 0, source, &mut stack, &mut out)?;
    Ok(out)
}

/// The deepest include nesting PostgreSQL accepts (`CONF_FILE_MAX_DEPTH`); the top file is
/// depth 0.
pub const MAX_DEPTH: usize = 10;

fn load_text(
    file: &str,
    text: &str,
    depth: usize,
    source: &dyn ConfSource,
    stack: &mut Vec<String>,
    out: &mut Vec<ConfEntry>,
) -> Result<(), ConfError> {
    stack.push(file.to_string());
    for d in parse(text, file)? {
        let at = |line: u32, message: String| ConfError {
            file: file.to_string(),
            line,
            message,
        };
        match d {
            Directive::Set(e) => out.push(e),
            Directive::Include {
                path,
                if_exists,
                line,
            } => {
                if path.trim_matches([' ', '\t', '\r', '\n']).is_empty() {
                    return Err(at(line, format!("empty configuration file name: {path:?}")));
                }
                let target = resolve(file, &path);
                check_nesting(&target, depth, stack).map_err(|m| at(line, m))?;
                match source.read(&target) {
                    Ok(text) => load_text(&target, &text, depth + 1, source, stack, out)?,
                    Err(e) if if_exists && e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(at(
                            line,
                            format!("could not open configuration file {target:?}: {e}"),
                        ))
                    }
                }
            }
            Directive::IncludeDir { path, line } => {
                if path.trim_matches([' ', '\t', '\r', '\n']).is_empty() {
                    return Err(at(
                        line,
                        format!("empty configuration directory name: {path:?}"),
                    ));
                }
                let dir = resolve(file, &path);
                let mut names = source.list_dir(&dir).map_err(|e| {
                    at(
                        line,
                        format!("could not open configuration directory {dir:?}: {e}"),
                    )
                })?;
                names.retain(|n| n.len() >= 6 && !n.starts_with('.') && n.ends_with(".conf"));
                names.sort();
                names.dedup();
                for name in names {
                    let target = canonicalize(&format!("{dir}/{name}"));
                    check_nesting(&target, depth, stack).map_err(|m| at(line, m))?;
                    let text = source.read(&target).map_err(|e| {
                        at(
                            line,
                            format!("could not open configuration file {target:?}: {e}"),
                        )
                    })?;
                    load_text(&target, &text, depth + 1, source, stack, out)?;
                }
            }
        }
    }
    stack.pop();
    Ok(())
}

/// Refuses an include deeper than [`MAX_DEPTH`] or one that would read a file already being
/// read (a cycle).
fn check_nesting(target: &str, depth: usize, stack: &[String]) -> Result<(), String> {
    if depth + 1 > MAX_DEPTH {
        return Err(format!(
            "could not open configuration file {target:?}: maximum nesting depth exceeded ({MAX_DEPTH})"
        ));
    }
    if let Some(i) = stack.iter().position(|f| f == target) {
        let chain: Vec<&str> = stack[i..].iter().map(String::as_str).collect();
        return Err(format!(
            "configuration file recursion in {target:?} ({} → {target})",
            chain.join(" → ")
        ));
    }
    Ok(())
}

/// `path` as the file `from` names it: itself when absolute, else joined to `from`'s
/// directory; `.`, `..` and repeated slashes are folded as PostgreSQL's `canonicalize_path`
/// does.
pub fn resolve(from: &str, path: &str) -> String {
    let joined = if path.starts_with('/') {
        path.to_string()
    } else {
        match from.rfind('/') {
            Some(0) => format!("/{path}"),
            Some(i) => format!("{}/{path}", &from[..i]),
            None => path.to_string(),
        }
    };
    canonicalize(&joined)
}

fn canonicalize(path: &str) -> String {
    let absolute = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => match parts.last() {
                Some(&p) if p != ".." => {
                    parts.pop();
                }
                _ if absolute => {}
                _ => parts.push(".."),
            },
            p => parts.push(p),
        }
    }
    let body = parts.join("/");
    match (absolute, body.is_empty()) {
        (true, _) => format!("/{body}"),
        (false, true) => ".".to_string(),
        (false, false) => body,
    }
}

/// Every entry's final value: the last one read for each name wins, as in PostgreSQL.
pub fn effective(entries: &[ConfEntry]) -> std::collections::BTreeMap<String, ConfEntry> {
    let mut out = std::collections::BTreeMap::new();
    for e in entries {
        out.insert(e.name.clone(), e.clone());
    }
    out
}

/// A [`ConfSource`] over an in-memory map of path → text (tests, and files already read).
#[derive(Debug, Clone, Default)]
pub struct MapSource {
    pub files: std::collections::BTreeMap<String, String>,
}

impl MapSource {
    pub fn new<I, K, V>(files: I) -> MapSource
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        MapSource {
            files: files
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }
}

impl ConfSource for MapSource {
    fn read(&self, path: &str) -> std::io::Result<String> {
        self.files.get(path).cloned().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory")
        })
    }

    fn list_dir(&self, path: &str) -> std::io::Result<Vec<String>> {
        let prefix = format!("{}/", path.trim_end_matches('/'));
        let names: Vec<String> = self
            .files
            .keys()
            .filter_map(|k| k.strip_prefix(&prefix))
            .filter(|rest| !rest.contains('/'))
            .map(str::to_string)
            .collect();
        let is_dir = self.files.keys().any(|k| k.starts_with(&prefix));
        if is_dir {
            Ok(names)
        } else {
            Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "No such file or directory",
            ))
        }
    }
}

/// A file entry whose value the instance would refuse: where it is and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{file}:{line}: {error}")]
pub struct EntryError {
    pub file: String,
    pub line: u32,
    pub error: crate::setting::ValueError,
}

/// Checks every entry against `catalog` as the server would when it reads the files: the
/// setting exists (names with a `.` are extension placeholders and pass), can be set, and
/// its value parses and is in range. Every bad entry is returned, in reading order.
pub fn check(entries: &[ConfEntry], catalog: &crate::setting::Catalog) -> Vec<EntryError> {
    entries
        .iter()
        .filter(|e| !(e.name.contains('.') && catalog.lookup(&e.name).is_none()))
        .filter_map(|e| {
            catalog
                .validate(&e.name, &e.value)
                .err()
                .map(|error| EntryError {
                    file: e.file.clone(),
                    line: e.line,
                    error,
                })
        })
        .collect()
}
