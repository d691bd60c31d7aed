//! Plain configuration files of other services (key = value, INI, YAML, JSON, TOML) as one
//! flat map of dotted keys (`server.port`, `section.key`, `list.0`) to their string values, so
//! that any format's change is a list of `key: old → new`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// `key = value` or `key: value` lines, `#`/`;` comments (also `.properties`, `.env`).
    KeyValue,
    Ini,
    Yaml,
    Json,
    Toml,
}

impl Format {
    /// By extension: `.ini`, `.yaml`/`.yml`, `.json`, `.toml`; `.conf`, `.cfg`, `.properties`,
    /// `.env` and no extension are key = value.
    pub fn from_path(path: &str) -> Format {
        let name = path.rsplit(['/', '\\']).next().unwrap_or(path);
        let ext = match name.rfind('.') {
            Some(i) if i > 0 => name[i + 1..].to_ascii_lowercase(),
            _ => String::new(),
        };
        match ext.as_str() {
            "ini" => Format::Ini,
            "yaml" | "yml" => Format::Yaml,
            "json" => Format::Json,
            "toml" => Format::Toml,
            _ => Format::KeyValue,
        }
    }

    /// `key_value`, `ini`, `yaml`, `json`, `toml` (the spelling in flags and files).
    pub fn parse(s: &str) -> Option<Format> {
        Some(match s {
            "key_value" | "kv" => Format::KeyValue,
            "ini" => Format::Ini,
            "yaml" | "yml" => Format::Yaml,
            "json" => Format::Json,
            "toml" => Format::Toml,
            _ => return None,
        })
    }
}

/// A file that does not parse as its format; names the file, and the line where known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct PlainError {
    pub file: String,
    pub line: Option<u32>,
    pub message: String,
}

/// Parses `text` as `format` into a flat key → value map.
///
/// Nested keys are joined with `.` (`server.port`), list items by index (`hosts.0`); a
/// dotted key and the same path written nested are one key (the later wins, as Spring reads
/// `a.b: 1` and `a: {b: 1}`). Values are strings: `true`/`false`, numbers as parsed (`1.10`
/// in YAML is the number `1.1`, as the service reading it sees it), null as the empty
/// string (the key stays present), an empty list as `[]` and an empty mapping as `{}`.
pub fn parse(
    text: &str,
    format: Format,
    file: &str,
) -> Result<BTreeMap<String, String>, PlainError> {
    // A message may quote the input: never pass a control character through.
    let err = |line: Option<u32>, message: String| PlainError {
        file: file.to_string(),
        line,
        message: bellwether_model::text::escape(&message).into_owned(),
    };
    let limit = if format == Format::Yaml {
        YAML_MAX_BYTES
    } else {
        MAX_BYTES
    };
    if text.len() > limit {
        return Err(err(
            None,
            format!(
                "the file is {} bytes; the limit is {limit} bytes",
                text.len()
            ),
        ));
    }
    let node = match format {
        Format::KeyValue => return parse_key_value(text, file),
        Format::Ini => return parse_ini(text, file),
        Format::Yaml => {
            serde_saphyr::from_str_with_options::<Node>(text, yaml_options()).map_err(|e| {
                let line = e.location().map(|l| l.line() as u32);
                err(line, yaml_message(&e))
            })?
        }
        Format::Json => serde_json::from_str::<Node>(text).map_err(|e| {
            let line = u32::try_from(e.line()).ok().filter(|l| *l > 0);
            err(line, json_message(&e))
        })?,
        Format::Toml => {
            let table: toml::Table = toml::from_str(text).map_err(|e| {
                let line = e.span().map(|s| line_of(text, s.start));
                err(line, e.message().trim_end().to_string())
            })?;
            Node::from_toml(toml::Value::Table(table))
        }
    };
    let mut out = BTreeMap::new();
    match node {
        Node::Null => {}
        Node::Map(m) if m.is_empty() => {}
        Node::Seq(s) if s.is_empty() => {}
        n @ (Node::Map(_) | Node::Seq(_)) => flatten(String::new(), n, &mut out),
        _ => {
            return Err(err(
                Some(1),
                "the top level is a single value; expected a mapping or a list".to_string(),
            ))
        }
    }
    Ok(out)
}

/// The largest YAML text accepted (as the engine's YAML input: `bellwether_engine::yaml`).
pub const YAML_MAX_BYTES: usize = 1 << 20;
/// The largest text of the other formats accepted.
pub const MAX_BYTES: usize = 8 << 20;
/// YAML limits, mirroring `bellwether_engine::yaml` (this crate does not depend on the
/// engine): depth, nodes, aliases.
pub const YAML_MAX_DEPTH: usize = 32;
pub const YAML_MAX_NODES: usize = 100_000;
pub const YAML_MAX_ALIASES: usize = 1_000;

fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_depth: YAML_MAX_DEPTH,
            flow_nesting_limit: YAML_MAX_DEPTH,
            max_nodes: YAML_MAX_NODES,
            max_events: 4 * YAML_MAX_NODES,
            max_aliases: YAML_MAX_ALIASES,
            max_anchors: YAML_MAX_ALIASES,
            max_documents: 1,
            max_total_scalar_bytes: YAML_MAX_BYTES,
            max_merge_keys: YAML_MAX_ALIASES,
        },
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: 10 * YAML_MAX_ALIASES,
            max_replay_stack_depth: YAML_MAX_DEPTH,
        },
        duplicate_keys: serde_saphyr::options::DuplicateKeyPolicy::Error,
        // `yes`, `on` stay the strings they are (YAML 1.2); only true/false are booleans.
        strict_booleans: true,
        non_finite_float_policy: serde_saphyr::NonFiniteFloatPolicy::AsString,
        with_snippet: false,
    }
}

/// A YAML error's text without its location (kept apart), with the limits named, and no
/// control character of the input passed through.
fn yaml_message(e: &serde_saphyr::Error) -> String {
    use serde_saphyr::budget::BudgetBreach as B;
    use serde_saphyr::{Error as E, MessageFormatter as _};
    let e = e.without_snippet();
    let text = match e {
        E::DuplicateMappingKey { key, .. } => match key {
            Some(k) => format!("duplicate key `{k}`: a key may appear only once in a mapping"),
            None => "duplicate key: a key may appear only once in a mapping".into(),
        },
        E::Budget { breach, .. } => match breach {
            B::Depth { .. } => {
                format!("nested deeper than {YAML_MAX_DEPTH} levels of mappings and lists")
            }
            B::Nodes { .. } | B::Events { .. } => {
                format!("more than {YAML_MAX_NODES} values in one document")
            }
            B::ScalarBytes { .. } | B::InputBytes { .. } => {
                format!("more than {YAML_MAX_BYTES} bytes of text")
            }
            B::Documents { .. } => "more than one YAML document".into(),
            B::Aliases { .. }
            | B::Anchors { .. }
            | B::AliasAnchorRatio { .. }
            | B::MergeKeys { .. }
            | B::RecordedAnchorEvents { .. }
            | B::RecordedAnchorBytes { .. } => {
                format!("more than {YAML_MAX_ALIASES} anchors, aliases or merge keys")
            }
            other => format!("over a YAML limit: {other:?}"),
        },
        other if other.to_string().starts_with("recursion limit exceeded") => {
            format!("nested deeper than {YAML_MAX_DEPTH} levels of mappings and lists")
        }
        other => serde_saphyr::DefaultMessageFormatter
            .format_message(other)
            .into_owned(),
    };
    bellwether_model::text::escape(&text).into_owned()
}

/// serde_json's message without its ` at line L column C` suffix (the line is kept apart).
fn json_message(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> u32 {
    let end = offset.min(text.len());
    let line = text.as_bytes()[..end]
        .iter()
        .filter(|c| **c == b'\n')
        .count()
        + 1;
    u32::try_from(line).unwrap_or(u32::MAX)
}

/// A document of any of the tree formats, as read.
#[derive(Debug, Clone, PartialEq)]
enum Node {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(String, Node)>),
}

impl Node {
    fn from_toml(v: toml::Value) -> Node {
        match v {
            toml::Value::String(s) => Node::Str(s),
            toml::Value::Integer(i) => Node::Int(i128::from(i)),
            toml::Value::Float(f) => Node::Float(f),
            toml::Value::Boolean(b) => Node::Bool(b),
            toml::Value::Datetime(d) => Node::Str(d.to_string()),
            toml::Value::Array(a) => Node::Seq(a.into_iter().map(Node::from_toml).collect()),
            toml::Value::Table(t) => Node::Map(
                t.into_iter()
                    .map(|(k, v)| (k, Node::from_toml(v)))
                    .collect(),
            ),
        }
    }

    /// A scalar as text; `None` for a list or mapping.
    fn scalar_text(&self) -> Option<String> {
        Some(match self {
            Node::Null => String::new(),
            Node::Bool(b) => b.to_string(),
            Node::Int(i) => i.to_string(),
            Node::Float(f) => format!("{f:?}"),
            Node::Str(s) => s.clone(),
            Node::Seq(_) | Node::Map(_) => return None,
        })
    }
}

impl<'de> serde::Deserialize<'de> for Node {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Node, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> serde::de::Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any value")
    }
    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Int(i128::from(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Int(i128::from(v)))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Node, E> {
        Ok(Node::Int(v))
    }
    fn visit_u128<E: serde::de::Error>(self, v: u128) -> Result<Node, E> {
        Ok(i128::try_from(v).map_or_else(|_| Node::Str(v.to_string()), Node::Int))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(v))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<Node, E> {
        Ok(Node::Str(String::from_utf8_lossy(v).into_owned()))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(n) = a.next_element::<Node>()? {
            items.push(n);
        }
        Ok(Node::Seq(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(k) = a.next_key::<Node>()? {
            let key = k.scalar_text().ok_or_else(|| {
                serde::de::Error::custom(
                    "a mapping key must be a single value, not a list or mapping",
                )
            })?;
            let v = a.next_value::<Node>()?;
            entries.push((key, v));
        }
        Ok(Node::Map(entries))
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn flatten(prefix: String, node: Node, out: &mut BTreeMap<String, String>) {
    match node {
        Node::Seq(items) if items.is_empty() => {
            out.insert(prefix, "[]".to_string());
        }
        Node::Map(entries) if entries.is_empty() => {
            out.insert(prefix, "{}".to_string());
        }
        Node::Seq(items) => {
            for (i, n) in items.into_iter().enumerate() {
                flatten(join(&prefix, &i.to_string()), n, out);
            }
        }
        Node::Map(entries) => {
            for (k, n) in entries {
                flatten(join(&prefix, &k), n, out);
            }
        }
        leaf => {
            out.insert(prefix, leaf.scalar_text().unwrap_or_default());
        }
    }
}

/// INI through rust-ini: `[section]` headers, `key = value` or `key: value`, `;`/`#`
/// comment lines (a `;` or `#` after a value is part of it, as in Python's configparser),
/// quoted values unquoted, backslashes kept as written (Windows paths).
/// Keys before any section are bare; others are `section.key`; a repeated key: the later.
fn parse_ini(text: &str, file: &str) -> Result<BTreeMap<String, String>, PlainError> {
    // rust-ini reads an unclosed `[section` or a key without a value on to the end of the
    // file and reports the line there; the line that started it is the one to fix.
    for (i, line) in text.split('\n').enumerate() {
        let t = line.trim();
        let message = if t.starts_with('[') && !t.contains(']') {
            format!("the section header {:?} is not closed with ]", truncate(t))
        } else if !t.is_empty() && !t.starts_with(['[', ';', '#']) && !t.contains(['=', ':']) {
            format!(
                "expected KEY = VALUE or KEY: VALUE, found {:?}",
                truncate(t)
            )
        } else {
            continue;
        };
        return Err(PlainError {
            file: file.to_string(),
            line: Some(u32::try_from(i + 1).unwrap_or(u32::MAX)),
            message: bellwether_model::text::escape(&message).into_owned(),
        });
    }
    let opt = ini::ParseOption {
        enabled_escape: false,
        ..ini::ParseOption::default()
    };
    let doc = ini::Ini::load_from_str_opt(text, opt).map_err(|e| PlainError {
        file: file.to_string(),
        line: u32::try_from(e.line).ok(),
        message: bellwether_model::text::escape(&e.msg).into_owned(),
    })?;
    let mut out = BTreeMap::new();
    for (section, props) in doc.iter() {
        for (k, v) in props.iter() {
            let key = match section {
                Some(s) => join(s, k),
                None => k.to_string(),
            };
            out.insert(key, v.to_string());
        }
    }
    Ok(out)
}

/// `key = value` / `key: value` lines (`.env`, `.properties`, simple `.conf`): blank lines
/// and lines starting with `#` or `;` are skipped; `export ` before a key is dropped (`.env`);
/// the first `=` or `:` separates; a value in double quotes takes `\"`, `\\`, `\n`, `\t`,
/// `\r` escapes, one in single quotes is literal; in an unquoted value a `#` after a space
/// starts a comment. A repeated key: the later wins.
fn parse_key_value(text: &str, file: &str) -> Result<BTreeMap<String, String>, PlainError> {
    let mut out = BTreeMap::new();
    for (i, raw) in text.split('\n').enumerate() {
        let n = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let err = |message: String| PlainError {
            file: file.to_string(),
            line: Some(n),
            message,
        };
        let line = raw.strip_suffix('\r').unwrap_or(raw).trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let line = match line.strip_prefix("export") {
            Some(rest) if rest.starts_with([' ', '\t']) => rest.trim_start(),
            _ => line,
        };
        let Some(sep) = line.find(['=', ':']) else {
            return Err(err(format!(
                "expected KEY = VALUE or KEY: VALUE, found {:?}",
                truncate(line)
            )));
        };
        let key = line[..sep].trim();
        if key.is_empty() {
            return Err(err("the key before the separator is empty".to_string()));
        }
        let value = kv_value(line[sep + 1..].trim()).map_err(|m| err(format!("{key}: {m}")))?;
        out.insert(key.to_string(), value);
    }
    Ok(out)
}

fn truncate(s: &str) -> String {
    s.chars().take(60).collect()
}

fn kv_value(v: &str) -> Result<String, String> {
    let rest_ok = |rest: &str| {
        let rest = rest.trim_start();
        rest.is_empty() || rest.starts_with('#')
    };
    if let Some(body) = v.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = body.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    return if rest_ok(&body[i + 1..]) {
                        Ok(out)
                    } else {
                        Err(format!(
                            "text after the closing quote: {:?}",
                            truncate(&body[i + 1..])
                        ))
                    };
                }
                '\\' => match chars.next() {
                    Some((_, 'n')) => out.push('\n'),
                    Some((_, 't')) => out.push('\t'),
                    Some((_, 'r')) => out.push('\r'),
                    Some((_, c)) => out.push(c),
                    None => break,
                },
                c => out.push(c),
            }
        }
        return Err("a double-quoted value is not closed on its line".to_string());
    }
    if let Some(body) = v.strip_prefix('\'') {
        return match body.find('\'') {
            Some(i) if rest_ok(&body[i + 1..]) => Ok(body[..i].to_string()),
            Some(i) => Err(format!(
                "text after the closing quote: {:?}",
                truncate(&body[i + 1..])
            )),
            None => Err("a single-quoted value is not closed on its line".to_string()),
        };
    }
    let end = v
        .char_indices()
        .find(|(i, c)| *c == '#' && v[..*i].ends_with([' ', '\t']))
        .map_or(v.len(), |(i, _)| i);
    Ok(v[..end].trim_end().to_string())
}
