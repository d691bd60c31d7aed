//! The one duration grammar of Bellwether, for every input: YAML files (rollout and patch
//! plans, the proxy's configuration), command-line flags and query parameters.
//!
//! ```text
//! duration := number | term (space* term)*        a bare number is seconds
//! term     := number space* unit
//! number   := digits ["." digits] | "." digits    no sign, no exponent
//! unit     := ns | us | µs | ms | s | m | h | d
//! ```
//!
//! So `500ms`, `2s`, `1.5m`, `1h`, `7d`, `1m30s`, `1h 30m` and `30` are durations. Every
//! duration is at most [`Dur::MAX`], 1,000,000,000 seconds (about 31.7 years), so that a
//! deadline computed from one never overflows. Limits of one input (a probe timeout of at
//! most a day, a sampling interval of at least 50 ms) are range checks made by that input,
//! with their own message; they are not part of the grammar.
//!
//! [`Dur`] prints (and serialises) in the largest unit that states it exactly (`30s`,
//! `1500ms`, `7d`), which parses back to the same value. Older stored forms such as
//! `30000ms` parse as before. The grammar is described for users in docs/durations.md.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a text is not a duration. The message names the text and says what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The text does not follow the grammar.
    #[error("`{text}` is not a duration such as `2s` or `500ms`: {reason}")]
    Syntax { text: String, reason: String },
    /// The text is a duration longer than [`Dur::MAX`].
    #[error("`{text}` is longer than the longest duration, {}", Dur::MAX)]
    TooLong { text: String },
}

/// A duration read from user input: at most [`Dur::MAX`] when it came from [`Dur::parse`],
/// serde or [`FromStr`]. The field is public so that code can build defaults; a value built
/// beyond `MAX` still prints, but does not parse back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Dur(pub Duration);

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// The units, longest first (the order [`Dur`]'s `Display` tries them in), in nanoseconds.
const UNITS: [(&str, u128); 7] = [
    ("d", 86_400 * NANOS_PER_SEC),
    ("h", 3_600 * NANOS_PER_SEC),
    ("m", 60 * NANOS_PER_SEC),
    ("s", NANOS_PER_SEC),
    ("ms", 1_000_000),
    ("us", 1_000),
    ("ns", 1),
];

/// Fraction digits past this many cannot change the value by a nanosecond (a day is under
/// 10^14 ns) and are ignored; this also keeps the arithmetic inside `u128`.
const MAX_FRACTION_DIGITS: u32 = 20;

impl Dur {
    /// The longest duration any input may give: 1,000,000,000 seconds.
    pub const MAX: Dur = Dur(Duration::from_secs(1_000_000_000));
    pub const ZERO: Dur = Dur(Duration::ZERO);

    /// `d` when it is at most [`Dur::MAX`].
    pub fn new(d: Duration) -> Option<Dur> {
        (d <= Dur::MAX.0).then_some(Dur(d))
    }

    pub const fn from_secs(s: u64) -> Dur {
        Dur(Duration::from_secs(s))
    }

    pub const fn from_millis(ms: u64) -> Dur {
        Dur(Duration::from_millis(ms))
    }

    pub const fn get(self) -> Duration {
        self.0
    }

    /// Parses `text` by the grammar of this module. Leading and trailing spaces are ignored.
    pub fn parse(text: &str) -> Result<Dur, DurationError> {
        let syntax = |reason: String| DurationError::Syntax {
            text: text.to_owned(),
            reason,
        };
        let s = text.trim();
        if s.is_empty() {
            return Err(syntax("it is empty".into()));
        }
        if s.starts_with('-') {
            return Err(syntax("a duration cannot be negative".into()));
        }
        let mut rest = s;
        let mut total: u128 = 0;
        let mut terms = 0;
        while !rest.is_empty() {
            let (int, frac, after) = number(rest).ok_or_else(|| {
                syntax(format!(
                    "expected a number at `{rest}`{}",
                    if terms == 0 { "" } else { " (after a unit)" }
                ))
            })?;
            let after = after.trim_start();
            let unit_len = after
                .find(|c: char| !c.is_alphabetic())
                .unwrap_or(after.len());
            let (unit, tail) = after.split_at(unit_len);
            let nanos_per = match unit {
                "" if terms == 0 && tail.is_empty() => NANOS_PER_SEC,
                "" => {
                    let num = rest[..rest.len() - after.len()].trim();
                    return Err(syntax(format!("`{num}` needs a unit")));
                }
                "µs" => 1_000,
                u => UNITS
                    .iter()
                    .find(|(name, _)| *name == u)
                    .map(|(_, n)| *n)
                    .ok_or_else(|| {
                        syntax(format!("unknown unit `{u}` (use ns, us, ms, s, m, h or d)"))
                    })?,
            };
            total = total.saturating_add(term_nanos(int, frac, nanos_per));
            if total > Dur::MAX.0.as_nanos() {
                return Err(DurationError::TooLong {
                    text: text.to_owned(),
                });
            }
            terms += 1;
            rest = tail.trim_start();
        }
        // `total` is at most MAX, so both parts fit.
        let secs = (total / NANOS_PER_SEC) as u64;
        let nanos = (total % NANOS_PER_SEC) as u32;
        Ok(Dur(Duration::new(secs, nanos)))
    }

    /// A number of seconds given as a YAML or JSON number.
    pub fn from_secs_f64(v: f64) -> Result<Dur, DurationError> {
        let text = v.to_string();
        if !v.is_finite() || v < 0.0 {
            return Err(DurationError::Syntax {
                text,
                reason: "a duration is a finite number of seconds, at least 0".into(),
            });
        }
        match Duration::try_from_secs_f64(v).ok().and_then(Dur::new) {
            Some(d) => Ok(d),
            None => Err(DurationError::TooLong { text }),
        }
    }
}

/// Splits a leading `digits[.digits]` or `.digits` off `s`: the integer part (saturating),
/// the fraction digits, and the rest.
fn number(s: &str) -> Option<(u128, &str, &str)> {
    let int_len = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (int_text, rest) = s.split_at(int_len);
    let (frac, rest) = match rest.strip_prefix('.') {
        Some(r) => {
            let n = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
            r.split_at(n)
        }
        None => ("", rest),
    };
    if int_text.is_empty() && frac.is_empty() {
        return None;
    }
    let int = int_text.bytes().fold(0u128, |acc, b| {
        acc.saturating_mul(10).saturating_add(u128::from(b - b'0'))
    });
    Some((int, frac, rest))
}

/// `int.frac` units of `nanos_per` nanoseconds, truncated to whole nanoseconds, saturating.
fn term_nanos(int: u128, frac: &str, nanos_per: u128) -> u128 {
    let mut num: u128 = 0;
    let mut den: u128 = 1;
    for b in frac.bytes().take(MAX_FRACTION_DIGITS as usize) {
        num = num * 10 + u128::from(b - b'0');
        den *= 10;
    }
    int.saturating_mul(nanos_per)
        .saturating_add(num * nanos_per / den)
}

impl fmt::Display for Dur {
    /// The largest unit that states the value exactly: `30s`, `1500ms`, `7d`, `0s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.0.as_nanos();
        if nanos == 0 {
            return f.write_str("0s");
        }
        // Nanoseconds, the last unit, divide every value.
        let (name, per) = UNITS
            .into_iter()
            .find(|(_, per)| nanos.is_multiple_of(*per))
            .unwrap_or(("ns", 1));
        write!(f, "{}{name}", nanos / per)
    }
}

impl FromStr for Dur {
    type Err = DurationError;
    fn from_str(s: &str) -> Result<Dur, DurationError> {
        Dur::parse(s)
    }
}

impl From<Dur> for Duration {
    fn from(d: Dur) -> Duration {
        d.0
    }
}

/// For clap's `value_parser` on a `std::time::Duration` field: `value_parser =
/// bellwether_model::duration::parse`.
pub fn parse(s: &str) -> Result<Duration, DurationError> {
    Dur::parse(s).map(|d| d.0)
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // The checks run inside the visitor, so a YAML error keeps the value's line and
        // column.
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as `2s` or `500ms`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Dur, E> {
                Dur::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Dur, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Dur, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Dur, E> {
                Dur::from_secs_f64(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests;
