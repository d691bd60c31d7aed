//! Times of points and restore targets: microseconds since the Unix epoch, read from RFC 3339
//! (`2026-12-05T18:00:00.25Z`, `2026-12-05T19:00:00+01:00`) or from Unix seconds with an
//! optional fraction (`1796572800`, `1796572800.125`), and printed as RFC 3339 in UTC.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// An instant, in microseconds since the Unix epoch (UTC). Serialised as that integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

/// Why a text is not a time. The message names the text and shows the accepted forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a time such as `2026-12-05T18:00:00Z` (RFC 3339) or `1796572800.5` (Unix seconds): {reason}")]
pub struct TimeError {
    pub text: String,
    pub reason: String,
}

/// Years outside 0001–9999 are refused: RFC 3339 has four year digits, and Unix seconds are
/// held to the same span so every time prints back as RFC 3339.
const MIN_SECS: i64 = -62_135_596_800; // 0001-01-01T00:00:00Z
const MAX_SECS: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z

impl Timestamp {
    /// The current time of the system clock.
    pub fn now() -> Timestamp {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(d.as_micros() as i64)
    }

    pub fn from_micros(us: i64) -> Timestamp {
        Timestamp(us)
    }

    pub fn as_micros(self) -> i64 {
        self.0
    }

    /// Seconds since the epoch, with the fraction (for JSON reports).
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1e6
    }

    /// This time plus `d` (saturating).
    pub fn plus(self, d: std::time::Duration) -> Timestamp {
        Timestamp(
            self.0
                .saturating_add(d.as_micros().min(i64::MAX as u128) as i64),
        )
    }

    /// This time minus `d` (saturating).
    pub fn minus(self, d: std::time::Duration) -> Timestamp {
        Timestamp(
            self.0
                .saturating_sub(d.as_micros().min(i64::MAX as u128) as i64),
        )
    }

    /// Parses RFC 3339 (a `T` or a space between date and time, `Z` or an offset, an optional
    /// fraction; digits past the microsecond are truncated) or Unix seconds with an optional
    /// fraction. Leading and trailing spaces are ignored.
    pub fn parse(text: &str) -> Result<Timestamp, TimeError> {
        let err = |reason: &str| TimeError {
            text: text.to_owned(),
            reason: reason.to_owned(),
        };
        let s = text.trim();
        if s.is_empty() {
            return Err(err("it is empty"));
        }
        if s.bytes()
            .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-')
        {
            return parse_unix(s).map_err(|r| err(&r));
        }
        if !s.as_bytes()[0].is_ascii_digit() {
            return Err(err(
                "it does not start with a digit (a year or Unix seconds)",
            ));
        }
        parse_rfc3339(s).map_err(|r| err(&r))
    }
}

fn parse_unix(s: &str) -> Result<Timestamp, String> {
    let (neg, body) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = match body.split_once('.') {
        Some((i, f)) => (i, f),
        None => (body, ""),
    };
    if int.is_empty() && frac.is_empty() {
        return Err("no digits".into());
    }
    if !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err("Unix seconds are digits with an optional `.fraction`".into());
    }
    if body.contains('.') && frac.is_empty() {
        return Err("a `.` must be followed by digits".into());
    }
    let secs: i64 = if int.is_empty() {
        0
    } else {
        int.parse()
            .map_err(|_| "the seconds are out of range".to_string())?
    };
    if secs > MAX_SECS || (neg && -secs < MIN_SECS) {
        return Err("the year is outside 0001-9999".into());
    }
    let micros = frac_micros(frac);
    let total = secs * 1_000_000 + micros;
    Ok(Timestamp(if neg { -total } else { total }))
}

/// The first six digits of a fraction as microseconds (shorter fractions are scaled).
fn frac_micros(frac: &str) -> i64 {
    let mut us = 0i64;
    for (i, b) in frac.bytes().take(6).enumerate() {
        us += i64::from(b - b'0') * 10i64.pow(5 - i as u32);
    }
    us
}

fn digits(s: &[u8], at: usize, n: usize, what: &str) -> Result<i64, String> {
    let part = s
        .get(at..at + n)
        .ok_or_else(|| format!("the {what} is missing"))?;
    if !part.iter().all(u8::is_ascii_digit) {
        return Err(format!("the {what} must be {n} digits"));
    }
    Ok(part.iter().fold(0i64, |a, b| a * 10 + i64::from(b - b'0')))
}

fn expect(s: &[u8], at: usize, c: &[u8], what: &str) -> Result<(), String> {
    match s.get(at) {
        Some(b) if c.contains(b) => Ok(()),
        _ => Err(format!("expected {what} at character {}", at + 1)),
    }
}

fn parse_rfc3339(s: &str) -> Result<Timestamp, String> {
    let b = s.as_bytes();
    let year = digits(b, 0, 4, "year")?;
    expect(b, 4, b"-", "`-`")?;
    let month = digits(b, 5, 2, "month")?;
    expect(b, 7, b"-", "`-`")?;
    let day = digits(b, 8, 2, "day")?;
    expect(b, 10, b"Tt ", "`T` between the date and the time")?;
    let hour = digits(b, 11, 2, "hour")?;
    expect(b, 13, b":", "`:`")?;
    let minute = digits(b, 14, 2, "minute")?;
    expect(b, 16, b":", "`:`")?;
    let second = digits(b, 17, 2, "second")?;
    let mut at = 19;
    let mut micros = 0;
    if b.get(at) == Some(&b'.') {
        let start = at + 1;
        let mut end = start;
        while b.get(end).is_some_and(u8::is_ascii_digit) {
            end += 1;
        }
        if end == start {
            return Err("a `.` must be followed by digits".into());
        }
        micros = frac_micros(&s[start..end]);
        at = end;
    }
    let offset_secs = match b.get(at) {
        Some(b'Z' | b'z') => {
            at += 1;
            0
        }
        Some(sign @ (b'+' | b'-')) => {
            let oh = digits(b, at + 1, 2, "offset's hours")?;
            expect(b, at + 3, b":", "`:` in the offset")?;
            let om = digits(b, at + 4, 2, "offset's minutes")?;
            if oh > 23 || om > 59 {
                return Err("the offset is out of range".into());
            }
            at += 6;
            let o = oh * 3600 + om * 60;
            if *sign == b'-' {
                -o
            } else {
                o
            }
        }
        _ => return Err("the time needs a zone: `Z` or an offset such as `+01:00`".into()),
    };
    if at != b.len() {
        return Err(format!("unexpected text after the zone: `{}`", &s[at..]));
    }
    if year < 1 {
        return Err("the year is outside 0001-9999".into());
    }
    let month_enum = time::Month::try_from(month as u8).map_err(|_| "no such month".to_string())?;
    let date = time::Date::from_calendar_date(year as i32, month_enum, day as u8)
        .map_err(|_| format!("{year:04}-{month:02} has no day {day}"))?;
    // A leap second (`:60`) is read as the last microsecond of its minute.
    if hour > 23 || minute > 59 || second > 60 {
        return Err("the time of day is out of range".into());
    }
    let (second, micros) = if second == 60 {
        (59, 999_999)
    } else {
        (second, micros)
    };
    let days = i64::from(date.to_julian_day()) - 2_440_588; // 1970-01-01
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    Ok(Timestamp(secs * 1_000_000 + micros))
}

impl fmt::Display for Timestamp {
    /// RFC 3339 in UTC with microseconds: `2026-12-05T18:00:00.250000Z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.div_euclid(1_000_000);
        let micros = self.0.rem_euclid(1_000_000);
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400);
        match i32::try_from(days + 2_440_588)
            .ok()
            .and_then(|j| time::Date::from_julian_day(j).ok())
        {
            Some(date) => write!(
                f,
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{micros:06}Z",
                date.year(),
                u8::from(date.month()),
                date.day(),
                sod / 3600,
                sod % 3600 / 60,
                sod % 60
            ),
            None => write!(f, "{}.{micros:06}", secs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_rfc3339_and_unix_seconds() {
        let t = Timestamp::parse("2026-12-05T18:00:00Z").unwrap();
        assert_eq!(t, Timestamp(1_796_493_600 * 1_000_000));
        assert_eq!(Timestamp::parse("1796493600").unwrap(), t);
        assert_eq!(
            Timestamp::parse("2026-12-05T19:30:00.5+01:30").unwrap(),
            Timestamp(1_796_493_600 * 1_000_000 + 500_000)
        );
        assert_eq!(
            Timestamp::parse("1796493600.000250").unwrap(),
            Timestamp(1_796_493_600_000_250)
        );
        assert_eq!(
            Timestamp::parse(" 2026-12-05 18:00:00.1234567z ").unwrap(),
            Timestamp(1_796_493_600_123_456)
        );
        assert_eq!(Timestamp::parse("0.5").unwrap(), Timestamp(500_000));
        assert_eq!(t.to_string(), "2026-12-05T18:00:00.000000Z".to_string());
    }

    #[test]
    fn refuses_bad_times_with_a_reason() {
        for (bad, why) in [
            ("", "empty"),
            ("2026-02-30T00:00:00Z", "has no day 30"),
            ("2026-12-05T18:00:00", "needs a zone"),
            ("2026-12-05T25:00:00Z", "out of range"),
            ("2026-13-05T18:00:00Z", "no such month"),
            ("2026-12-05T18:00:00+01", "offset"),
            ("2026-12-05T18:00:00Zjunk", "unexpected text"),
            ("12.", "followed by digits"),
            ("1.2.3", "Unix seconds"),
            ("yesterday", "does not start with a digit"),
            ("soon", "a year or Unix seconds"),
            ("x2026-12-05T18:00:00Z", "does not start with a digit"),
            ("99999999999999999999", "out of range"),
        ] {
            let e = Timestamp::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(e.contains(&format!("`{bad}`")), "{bad}: {e}");
        }
    }

    proptest! {
        #[test]
        fn display_parses_back(us in (MIN_SECS * 1_000_000)..(MAX_SECS * 1_000_000)) {
            let t = Timestamp(us);
            prop_assert_eq!(Timestamp::parse(&t.to_string()).unwrap(), t);
        }

        #[test]
        fn unix_seconds_agree_with_rfc3339(us in 0i64..(MAX_SECS * 1_000_000)) {
            let t = Timestamp(us);
            let unix = format!("{}.{:06}", us / 1_000_000, us % 1_000_000);
            prop_assert_eq!(Timestamp::parse(&unix).unwrap(), t);
        }

        #[test]
        fn never_panics(s in "\\PC{0,40}") {
            let _ = Timestamp::parse(&s);
        }
    }
}
