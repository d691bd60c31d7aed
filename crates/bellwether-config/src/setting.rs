//! An instance's settings as `pg_settings` shows them, and values with units.
//!
//! The agent, the server, the engine and the CLI all read settings through these types.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `pg_settings.vartype`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VarType {
    Bool,
    Integer,
    Real,
    String,
    Enum,
}

/// `pg_settings.context`: what it takes for a new value to take effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Context {
    /// Cannot be changed (compiled in or set by initdb).
    #[serde(rename = "internal")]
    Internal,
    /// Needs a server restart.
    #[serde(rename = "postmaster")]
    Postmaster,
    /// A reload (`pg_reload_conf()`, SIGHUP).
    #[serde(rename = "sighup")]
    Sighup,
    /// New sessions of superusers (at connection start).
    #[serde(rename = "superuser-backend")]
    SuperuserBackend,
    /// New sessions (at connection start).
    #[serde(rename = "backend")]
    Backend,
    /// Any time, by a superuser (`SET`), or by reload for the default.
    #[serde(rename = "superuser")]
    Superuser,
    /// Any time, by any user (`SET`), or by reload for the default.
    #[serde(rename = "user")]
    User,
}

/// What applying a change takes; ordered by cost (`Session < Reload < Restart`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApplyKind {
    /// Takes effect per session (`SET`) and, after a reload, as every new session's default.
    Session,
    /// `pg_reload_conf()`.
    Reload,
    /// A server restart.
    Restart,
}

impl Context {
    /// What a change of a setting with this context takes; `None` for `internal` (it cannot
    /// be changed at all).
    pub fn apply_kind(self) -> Option<ApplyKind> {
        match self {
            Context::Internal => None,
            Context::Postmaster => Some(ApplyKind::Restart),
            Context::Sighup | Context::SuperuserBackend | Context::Backend => {
                Some(ApplyKind::Reload)
            }
            Context::Superuser | Context::User => Some(ApplyKind::Session),
        }
    }

    /// The `pg_settings.context` spelling.
    pub fn parse(s: &str) -> Option<Context> {
        Some(match s {
            "internal" => Context::Internal,
            "postmaster" => Context::Postmaster,
            "sighup" => Context::Sighup,
            "superuser-backend" => Context::SuperuserBackend,
            "backend" => Context::Backend,
            "superuser" => Context::Superuser,
            "user" => Context::User,
            _ => return None,
        })
    }
}

/// One row of `pg_settings` (the columns Bellwether uses).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Setting {
    pub name: String,
    /// `setting`: the current value, in the setting's base `unit` for numbers.
    pub value: String,
    /// `unit`: `kB`, `8kB`, `MB`, `ms`, `s`, `min`… or `None`.
    pub unit: Option<String>,
    pub vartype: VarType,
    pub context: Context,
    /// `min_val`, `max_val` (numbers only).
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// `enumvals` (enums only).
    #[serde(default)]
    pub enumvals: Vec<String>,
    /// `boot_val`, `reset_val`.
    pub boot_val: Option<String>,
    pub reset_val: Option<String>,
    /// `source` (`default`, `configuration file`, `command line`…).
    pub source: String,
    pub sourcefile: Option<String>,
    pub sourceline: Option<i32>,
    pub pending_restart: bool,
    /// `category` and `short_desc`, for people.
    #[serde(default)]
    pub category: String,
    #[serde(default)]
    pub short_desc: String,
}

/// An instance's whole configuration as read: every setting by name, and its server version.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    /// `server_version_num` (150019 for 15.19).
    pub server_version_num: u32,
    pub settings: BTreeMap<String, Setting>,
}

/// A value parsed against its setting: numbers in the setting's base unit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Value {
    Bool(bool),
    Int(i64),
    Real(f64),
    /// A string or an enum value (enums lower-cased as PostgreSQL stores them).
    Str(String),
}

/// Why a proposed value is not acceptable. Every variant names the setting and the value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValueError {
    #[error("unknown setting {name:?}{}", suggestion.as_ref().map(|s| format!(" (did you mean {s:?}?)")).unwrap_or_default())]
    UnknownSetting {
        name: String,
        suggestion: Option<String>,
    },
    #[error("{name} cannot be changed (context internal)")]
    Internal { name: String },
    #[error("{name} = {value:?}: {expected}")]
    BadValue {
        name: String,
        value: String,
        expected: String,
    },
    #[error("{name} = {value:?} is out of range: allowed {min} to {max}{}", unit_suffix(unit.as_deref()))]
    OutOfRange {
        name: String,
        value: String,
        min: String,
        max: String,
        unit: Option<String>,
    },
    #[error(
        "{name} = {value:?}: unit {unit:?} is not valid here; {}",
        allowed_units(allowed)
    )]
    BadUnit {
        name: String,
        value: String,
        unit: String,
        allowed: Vec<String>,
    },
    #[error("{name} = {value:?} is not one of {}", allowed.join(", "))]
    NotInEnum {
        name: String,
        value: String,
        allowed: Vec<String>,
    },
}

impl Setting {
    /// Parses `input` (`64kB`, `4MB`, `10s`, `on`, `'replica'`, a bare number in the base
    /// unit) against this setting's type, unit, bounds and enum values, as PostgreSQL would.
    ///
    /// One layer of SQL quotes around the whole input (`'replica'`, with `''` for a quote
    /// inside) is removed first, as `SET name = 'value'` does.
    pub fn parse_value(&self, input: &str) -> Result<Value, ValueError> {
        let text = unquote_sql(input);
        let text = text.as_ref();
        match self.vartype {
            VarType::Bool => parse_bool(text).map(Value::Bool).ok_or_else(|| {
                self.bad(
                    input,
                    "expected a Boolean value (on, off, true, false, yes, no, 1, 0)",
                )
            }),
            VarType::Integer => self.parse_number(input, text, true),
            VarType::Real => self.parse_number(input, text, false),
            VarType::Enum => self.parse_enum(input, text),
            VarType::String => Ok(Value::Str(text.to_string())),
        }
    }

    /// The current value, parsed (`value` is in the base unit already).
    pub fn current(&self) -> Result<Value, ValueError> {
        self.parse_value(&self.value)
    }
}

impl Value {
    /// The number for comparisons (bools as 0/1), `None` for strings.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
            Value::Int(i) => Some(*i as f64),
            Value::Real(r) => Some(*r),
            Value::Str(_) => None,
        }
    }

    /// The form `pg_settings.setting` shows (base unit, `on`/`off`).
    pub fn to_setting_string(&self) -> String {
        match self {
            Value::Bool(b) => if *b { "on" } else { "off" }.to_string(),
            Value::Int(i) => i.to_string(),
            Value::Real(r) => r.to_string(),
            Value::Str(s) => s.clone(),
        }
    }
}

impl Catalog {
    pub fn get(&self, name: &str) -> Option<&Setting> {
        self.settings.get(name)
    }

    /// Every setting's current value (`setting` column), by name.
    pub fn values(&self) -> BTreeMap<String, String> {
        self.settings
            .iter()
            .map(|(k, s)| (k.clone(), s.value.clone()))
            .collect()
    }

    /// Checks one proposed `name = input`: the setting exists (else a suggestion by edit
    /// distance), can be changed, and the value is valid. Returns it normalised.
    ///
    /// Names are matched case-insensitively (`DateStyle`, `datestyle`), as PostgreSQL does.
    pub fn validate(&self, name: &str, input: &str) -> Result<Value, ValueError> {
        let setting = self
            .lookup(name)
            .ok_or_else(|| ValueError::UnknownSetting {
                name: name.to_string(),
                suggestion: self.suggest(name),
            })?;
        if setting.context == Context::Internal {
            return Err(ValueError::Internal {
                name: setting.name.clone(),
            });
        }
        setting.parse_value(input)
    }

    /// The setting named `name`, exactly or else case-insensitively.
    pub fn lookup(&self, name: &str) -> Option<&Setting> {
        self.settings.get(name).or_else(|| {
            self.settings
                .values()
                .find(|s| s.name.eq_ignore_ascii_case(name))
        })
    }

    /// The known setting nearest to `name` by edit distance (case-insensitive), when it is near
    /// enough to be a likely typo: at most 3 edits and fewer than half of the name's letters.
    pub fn suggest(&self, name: &str) -> Option<String> {
        let wanted = name.to_ascii_lowercase();
        let limit = 3.min(wanted.chars().count().saturating_sub(1) / 2);
        let mut best: Option<(usize, &str)> = None;
        for s in self.settings.values() {
            let d = edit_distance(&wanted, &s.name.to_ascii_lowercase());
            if d <= limit && best.is_none_or(|(bd, _)| d < bd) {
                best = Some((d, &s.name));
            }
        }
        best.map(|(_, n)| n.to_string())
    }
}

/// ` kB` after a range, or ` (units of 8kB)` for a unit with a multiple.
fn unit_suffix(unit: Option<&str>) -> String {
    match unit {
        None => String::new(),
        Some(u) if u.starts_with(|c: char| c.is_ascii_digit()) => format!(" (units of {u})"),
        Some(u) => format!(" {u}"),
    }
}

/// `use one of kB, MB`, or `the setting takes no unit` when none is allowed.
fn allowed_units(allowed: &[String]) -> String {
    if allowed.is_empty() {
        "the setting takes no unit".to_string()
    } else {
        format!("use one of {}", allowed.join(", "))
    }
}

/// The memory units PostgreSQL accepts, largest first, with their size in bytes (the order
/// matters: a fraction is rounded to a multiple of the next smaller unit).
const MEMORY_UNITS: [(&str, u64); 5] = [
    ("TB", 1 << 40),
    ("GB", 1 << 30),
    ("MB", 1 << 20),
    ("kB", 1 << 10),
    ("B", 1),
];

/// The time units PostgreSQL accepts, largest first, in microseconds.
const TIME_UNITS: [(&str, u64); 6] = [
    ("d", 86_400_000_000),
    ("h", 3_600_000_000),
    ("min", 60_000_000),
    ("s", 1_000_000),
    ("ms", 1_000),
    ("us", 1),
];

/// A setting's base unit (`pg_settings.unit`): its table and its size in the table's smallest
/// unit (`8kB` is 8192 bytes, `min` 60,000,000 µs).
#[derive(Debug, Clone, Copy)]
struct BaseUnit {
    table: &'static [(&'static str, u64)],
    size: u64,
}

impl BaseUnit {
    /// `kB`, `8kB`, `MB`, `B`, `ms`, `s`, `min` (a leading multiple as `pg_settings` writes
    /// the block units); `None` for anything else.
    fn parse(unit: &str) -> Option<BaseUnit> {
        let digits = unit.bytes().take_while(u8::is_ascii_digit).count();
        let times: u64 = if digits == 0 {
            1
        } else {
            unit[..digits].parse().ok().filter(|n| *n > 0)?
        };
        let name = &unit[digits..];
        for table in [&MEMORY_UNITS[..], &TIME_UNITS[..]] {
            if let Some((_, size)) = table.iter().find(|(n, _)| *n == name) {
                return Some(BaseUnit {
                    table,
                    size: size.checked_mul(times)?,
                });
            }
        }
        None
    }

    /// How many base units one `size` is, computed as PostgreSQL's conversion tables do
    /// (`1.0 / 8` for kB in 8kB blocks, `1.0 / 60` for s in min), so that rounding matches.
    fn multiplier(self, size: u64) -> f64 {
        if size >= self.size && size.is_multiple_of(self.size) {
            (size / self.size) as f64
        } else if size < self.size && self.size.is_multiple_of(size) {
            1.0 / (self.size / size) as f64
        } else {
            size as f64 / self.size as f64
        }
    }

    /// `value` given in `unit`, in base units: PostgreSQL's `convert_to_base_unit`, which
    /// rounds a fraction to a multiple of the next smaller unit (`1.5GB` to whole MB).
    fn convert(self, value: f64, unit: &str) -> Option<f64> {
        let i = self.table.iter().position(|(n, _)| *n == unit)?;
        let mut v = value * self.multiplier(self.table[i].1);
        if let Some((_, next)) = self.table.get(i + 1) {
            let m = self.multiplier(*next);
            v = (v / m).round_ties_even() * m;
        }
        Some(v)
    }

    fn names(self) -> Vec<String> {
        self.table
            .iter()
            .rev()
            .map(|(n, _)| n.to_string())
            .collect()
    }
}

/// C's `isspace` in the C locale.
fn is_c_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\u{b}' | '\u{c}' | '\r')
}

/// `'text'` → `text` with `''` → `'`; anything else unchanged.
fn unquote_sql(input: &str) -> std::borrow::Cow<'_, str> {
    if input.len() >= 2 && input.starts_with('\'') && input.ends_with('\'') {
        let inner = &input[1..input.len() - 1];
        // Only a well-formed literal is unquoted: every quote inside is doubled.
        let mut rest = inner;
        let mut ok = true;
        while let Some(i) = rest.find('\'') {
            if rest[i + 1..].starts_with('\'') {
                rest = &rest[i + 2..];
            } else {
                ok = false;
                break;
            }
        }
        if ok {
            return std::borrow::Cow::Owned(inner.replace("''", "'"));
        }
    }
    std::borrow::Cow::Borrowed(input)
}

/// PostgreSQL's `parse_bool`: `on`/`off` (at least two letters), and any case-insensitive
/// prefix of `true`, `false`, `yes`, `no`, or exactly `1`/`0`. No surrounding spaces.
pub fn parse_bool(text: &str) -> Option<bool> {
    let lower = text.to_ascii_lowercase();
    let prefix_of = |word: &str| !lower.is_empty() && word.starts_with(lower.as_str());
    match lower.as_bytes().first()? {
        b't' if prefix_of("true") => Some(true),
        b'f' if prefix_of("false") => Some(false),
        b'y' if prefix_of("yes") => Some(true),
        b'n' if prefix_of("no") => Some(false),
        b'o' if lower.len() >= 2 && "on".starts_with(lower.as_str()) => Some(true),
        b'o' if lower.len() >= 2 && "off".starts_with(lower.as_str()) => Some(false),
        b'1' if lower.len() == 1 => Some(true),
        b'0' if lower.len() == 1 => Some(false),
        _ => None,
    }
}

/// C's `strtol(text, &end, 0)` on a 64-bit `long`: leading spaces, a sign, `0x` hex, a
/// leading `0` for octal. Returns the value, the end offset (0 when nothing was read) and
/// whether it overflowed.
fn strtol(text: &str) -> (i64, usize, bool) {
    let b = text.as_bytes();
    let mut i = b.iter().take_while(|c| is_c_space(**c as char)).count();
    let negative = match b.get(i) {
        Some(b'-') => {
            i += 1;
            true
        }
        Some(b'+') => {
            i += 1;
            false
        }
        _ => false,
    };
    let (radix, start) = if b.get(i) == Some(&b'0')
        && matches!(b.get(i + 1), Some(b'x' | b'X'))
        && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit)
    {
        (16, i + 2)
    } else if b.get(i) == Some(&b'0') {
        (8, i)
    } else {
        (10, i)
    };
    let mut end = start;
    let mut acc: i128 = 0;
    let mut overflow = false;
    while let Some(d) = b.get(end).and_then(|c| (*c as char).to_digit(radix)) {
        acc = acc * i128::from(radix) + i128::from(d);
        if acc > i128::from(i64::MAX) + 1 {
            overflow = true;
            acc = i128::from(i64::MAX) + 1;
        }
        end += 1;
    }
    if end == start {
        return (0, 0, false);
    }
    let signed = if negative { -acc } else { acc };
    if signed > i128::from(i64::MAX) || signed < i128::from(i64::MIN) {
        overflow = true;
    }
    let v = signed.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
    (v, end, overflow)
}

/// C's `strtod`: leading spaces, a sign, decimal or `0x` hexadecimal digits with a fraction
/// and an exponent, `inf`, `infinity`, `nan`. Returns the value, the end offset (0 when
/// nothing was read) and whether it was out of range (overflow, or a non-zero value that
/// underflows to zero or a subnormal, as glibc reports with ERANGE).
fn strtod(text: &str) -> (f64, usize, bool) {
    let b = text.as_bytes();
    let mut i = b.iter().take_while(|c| is_c_space(**c as char)).count();
    let sign_at = i;
    if matches!(b.get(i), Some(b'-' | b'+')) {
        i += 1;
    }
    let negative = b.get(sign_at) == Some(&b'-');
    let signed = |v: f64| if negative { -v } else { v };
    let rest = &text[i..];
    let lower: String = rest
        .chars()
        .take(8)
        .collect::<String>()
        .to_ascii_lowercase();
    if lower.starts_with("infinity") {
        return (signed(f64::INFINITY), i + 8, false);
    }
    if lower.starts_with("inf") {
        return (signed(f64::INFINITY), i + 3, false);
    }
    if lower.starts_with("nan") {
        let mut end = i + 3;
        // `nan(chars)` as glibc reads it.
        if b.get(end) == Some(&b'(') {
            let close = b[end + 1..]
                .iter()
                .position(|c| !(c.is_ascii_alphanumeric() || *c == b'_'));
            if let Some(p) = close {
                if b[end + 1 + p] == b')' {
                    end = end + 1 + p + 1;
                }
            }
        }
        return (f64::NAN, end, false);
    }
    if b.get(i) == Some(&b'0') && matches!(b.get(i + 1), Some(b'x' | b'X')) {
        if let Some((v, end)) = hex_float(b, i + 2) {
            let out = v.is_infinite() || (v != 0.0 && !v.is_normal());
            return (signed(v), end, out);
        }
    }
    let int_digits = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
    let mut end = i + int_digits;
    let mut frac_digits = 0;
    if b.get(end) == Some(&b'.') {
        frac_digits = b[end + 1..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        if int_digits + frac_digits > 0 {
            end += 1 + frac_digits;
        }
    }
    if int_digits + frac_digits == 0 {
        return (0.0, 0, false);
    }
    if matches!(b.get(end), Some(b'e' | b'E')) {
        let mut j = end + 1;
        if matches!(b.get(j), Some(b'-' | b'+')) {
            j += 1;
        }
        let exp_digits = b[j..].iter().take_while(|c| c.is_ascii_digit()).count();
        if exp_digits > 0 {
            end = j + exp_digits;
        }
    }
    let v: f64 = text[i..end].parse().unwrap_or(f64::NAN);
    let nonzero = text[i..end]
        .bytes()
        .take_while(|c| *c != b'e' && *c != b'E')
        .any(|c| (b'1'..=b'9').contains(&c));
    let out = v.is_infinite() || (nonzero && !v.is_normal());
    (signed(v), end, out)
}

/// The hexadecimal float after `0x` at `start`: digits, a fraction, a `p` exponent. `None`
/// without a digit (strtod then reads the `0` alone).
fn hex_float(b: &[u8], start: usize) -> Option<(f64, usize)> {
    let mut end = start;
    let mut mantissa: f64 = 0.0;
    let mut digits = 0;
    while let Some(d) = b.get(end).and_then(|c| (*c as char).to_digit(16)) {
        mantissa = mantissa * 16.0 + f64::from(d);
        digits += 1;
        end += 1;
    }
    let mut exp: i64 = 0;
    if b.get(end) == Some(&b'.') {
        let mut j = end + 1;
        let mut frac = 0;
        while let Some(d) = b.get(j).and_then(|c| (*c as char).to_digit(16)) {
            mantissa = mantissa * 16.0 + f64::from(d);
            exp -= 4;
            frac += 1;
            j += 1;
        }
        if digits + frac > 0 {
            end = j;
            digits += frac;
        }
    }
    if digits == 0 {
        return None;
    }
    if matches!(b.get(end), Some(b'p' | b'P')) {
        let mut j = end + 1;
        let negative = b.get(j) == Some(&b'-');
        if matches!(b.get(j), Some(b'-' | b'+')) {
            j += 1;
        }
        let n = b[j..].iter().take_while(|c| c.is_ascii_digit()).count();
        if n > 0 {
            let e: i64 = std::str::from_utf8(&b[j..j + n])
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(i64::MAX / 2);
            exp = exp.saturating_add(if negative { -e } else { e });
            end = j + n;
        }
    }
    let v = mantissa * 2f64.powi(exp.clamp(-2000, 2000) as i32);
    Some((v, end))
}

/// A number without a trailing `.0` when it is whole, in exponent form when very large or
/// small (`1.79769e308`).
fn fmt_num(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else if v != 0.0 && v.is_finite() && (v.abs() >= 1e15 || v.abs() < 1e-4) {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// Values PostgreSQL accepts for some enums without listing them in `enumvals`, and the value
/// each is stored as.
fn hidden_enum_alias(setting: &Setting, lower: &str) -> Option<String> {
    let has = |v: &str| setting.enumvals.iter().any(|e| e == v);
    let name = setting.name.to_ascii_lowercase();
    if has("on") && has("off") {
        let on = if name == "wal_compression" {
            "pglz"
        } else {
            "on"
        };
        match lower {
            "true" | "yes" | "1" => return Some(on.to_string()),
            "on" => return Some(on.to_string()),
            "false" | "no" | "0" => return Some("off".to_string()),
            _ => {}
        }
    }
    match (name.as_str(), lower) {
        ("wal_level", "archive" | "hot_standby") => Some("replica".to_string()),
        (
            "client_min_messages"
            | "log_min_messages"
            | "log_min_error_statement"
            | "trace_recovery_messages",
            "debug",
        ) => Some("debug2".to_string()),
        ("client_min_messages" | "trace_recovery_messages", "info") => Some("info".to_string()),
        _ => None,
    }
}

impl Setting {
    fn bad(&self, value: &str, expected: &str) -> ValueError {
        ValueError::BadValue {
            name: self.name.clone(),
            value: value.to_string(),
            expected: expected.to_string(),
        }
    }

    fn out_of_range(&self, value: &str) -> ValueError {
        ValueError::OutOfRange {
            name: self.name.clone(),
            value: value.to_string(),
            min: self.min.map_or_else(|| "-inf".to_string(), fmt_num),
            max: self.max.map_or_else(|| "inf".to_string(), fmt_num),
            unit: self.unit.clone().filter(|u| !u.is_empty()),
        }
    }

    /// PostgreSQL's `parse_int` (`integer`) or `parse_real`, then the bounds check.
    fn parse_number(&self, input: &str, text: &str, integer: bool) -> Result<Value, ValueError> {
        let base = self
            .unit
            .as_deref()
            .filter(|u| !u.is_empty())
            .and_then(BaseUnit::parse);
        let kind = if integer { "an integer" } else { "a number" };
        let expected = match base {
            Some(b) => format!(
                "expected {kind}, optionally with a unit ({})",
                b.names().join(", ")
            ),
            None => format!("expected {kind}"),
        };
        let (mut val, end, out) = if integer {
            let (v, end, overflow) = strtol(text);
            if overflow || matches!(text.as_bytes().get(end), Some(b'.' | b'e' | b'E')) {
                strtod(text)
            } else {
                (v as f64, end, false)
            }
        } else {
            strtod(text)
        };
        if end == 0 || out || val.is_nan() {
            return Err(self.bad(input, &expected));
        }
        let rest = text[end..].trim_start_matches(is_c_space);
        if !rest.is_empty() {
            let unit = rest.trim_end_matches(is_c_space);
            let looks_like_unit = !unit.is_empty()
                && unit.len() <= 3
                && unit.chars().all(|c| c.is_ascii_alphabetic());
            let Some(b) = base else {
                return Err(if looks_like_unit {
                    ValueError::BadUnit {
                        name: self.name.clone(),
                        value: input.to_string(),
                        unit: unit.to_string(),
                        allowed: Vec::new(),
                    }
                } else {
                    self.bad(input, &expected)
                });
            };
            match b.convert(val, unit) {
                Some(v) => val = v,
                None if looks_like_unit => {
                    return Err(ValueError::BadUnit {
                        name: self.name.clone(),
                        value: input.to_string(),
                        unit: unit.to_string(),
                        allowed: b.names(),
                    })
                }
                None => return Err(self.bad(input, &expected)),
            }
        }
        if integer {
            val = val.round_ties_even();
            if !(f64::from(i32::MIN)..=f64::from(i32::MAX)).contains(&val) {
                return Err(self.out_of_range(input));
            }
        }
        let below = self.min.is_some_and(|m| val < m);
        let above = self.max.is_some_and(|m| val > m);
        if below || above || !val.is_finite() {
            return Err(self.out_of_range(input));
        }
        Ok(if integer {
            Value::Int(val as i64)
        } else {
            Value::Real(val)
        })
    }

    /// An `enumvals` entry, case-insensitively, as `pg_settings` spells it; or a hidden alias.
    fn parse_enum(&self, input: &str, text: &str) -> Result<Value, ValueError> {
        if let Some(v) = self.enumvals.iter().find(|v| v.eq_ignore_ascii_case(text)) {
            if let Some(alias) = hidden_enum_alias(self, &v.to_ascii_lowercase()) {
                return Ok(Value::Str(alias));
            }
            return Ok(Value::Str(v.clone()));
        }
        if let Some(alias) = hidden_enum_alias(self, &text.to_ascii_lowercase()) {
            return Ok(Value::Str(alias));
        }
        Err(ValueError::NotInEnum {
            name: self.name.clone(),
            value: input.to_string(),
            allowed: self.enumvals.clone(),
        })
    }
}
