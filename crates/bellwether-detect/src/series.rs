//! Parsing of metric series from CSV text: `timestamp,value` for one series, and `value` or
//! `metric,value` for the judge's samples.
//!
//! The parsers are pure functions over a `&str`, so that they can be property-tested; the CLI
//! only reads the file and passes the text and its name in. Every error names the source, the
//! line (1-based, the header is line 1) and, where it helps, the column.

/// Why a CSV could not be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SeriesError {
    #[error("{source_name}: the file is empty")]
    Empty { source_name: String },
    #[error("{source_name}: line 1: missing column `{column}` in header `{header}`")]
    MissingColumn {
        source_name: String,
        column: String,
        header: String,
    },
    #[error("{source_name}: line {line}: expected {expected} fields, found {found}")]
    FieldCount {
        source_name: String,
        line: usize,
        expected: usize,
        found: usize,
    },
    #[error("{source_name}: line {line}, column `{column}`: cannot parse `{text}` as {what}")]
    Unparseable {
        source_name: String,
        line: usize,
        column: String,
        text: String,
        what: &'static str,
    },
    #[error(
        "{source_name}: line {line}: timestamp `{text}` is not after the previous row's timestamp"
    )]
    NotIncreasing {
        source_name: String,
        line: usize,
        text: String,
    },
    #[error("{source_name}: the file has a header but no rows")]
    NoRows { source_name: String },
}

/// One row of a `timestamp,value` series. `value` is NaN where the file said `NaN` or left the
/// field empty; what happens to it is the consumer's NaN strategy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Milliseconds since the Unix epoch (UTC).
    pub ts_ms: i64,
    pub value: f64,
}

/// A parsed series, keeping the timestamp text of each row so that output can echo it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    pub points: Vec<Point>,
    pub timestamp_text: Vec<String>,
}

/// Parses a timestamp: `YYYY-MM-DD HH:MM:SS[.fff]`, the same with `T` and an optional `Z`, or a
/// number of seconds since the Unix epoch (fractions allowed). Returns milliseconds.
pub fn parse_timestamp(s: &str) -> Option<i64> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if s.bytes()
        .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-')
        && !s[1..].contains('-')
    {
        let secs: f64 = s.parse().ok()?;
        if !secs.is_finite() || secs.abs() > 1e14 {
            return None;
        }
        return Some((secs * 1000.0).round() as i64);
    }
    let s = s.strip_suffix('Z').unwrap_or(s);
    let b = s.as_bytes();
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        if t.bytes().all(|c| c.is_ascii_digit()) {
            t.parse().ok()
        } else {
            None
        }
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    let (mut h, mut mi, mut sec, mut ms) = (0, 0, 0, 0);
    if b.len() > 10 {
        if !(b[10] == b' ' || b[10] == b'T') || b.len() < 19 || b[13] != b':' || b[16] != b':' {
            return None;
        }
        h = num(11..13)?;
        mi = num(14..16)?;
        sec = num(17..19)?;
        if h > 23 || mi > 59 || sec > 60 {
            return None;
        }
        if b.len() > 19 {
            if b[19] != b'.' || b.len() == 20 {
                return None;
            }
            let frac = &s[20..];
            if !frac.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            let mut digits: String = frac.chars().take(3).collect();
            while digits.len() < 3 {
                digits.push('0');
            }
            ms = digits.parse().ok()?;
        }
    }
    let days = days_from_civil(y, mo, d);
    Some(((days * 24 + h) * 60 + mi) * 60_000 + sec * 1000 + ms)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses a number; `NaN`, `nan` and an empty field give NaN.
pub fn parse_value(s: &str) -> Option<f64> {
    let t = s.trim();
    if t.is_empty() || t.eq_ignore_ascii_case("nan") {
        return Some(f64::NAN);
    }
    t.parse::<f64>().ok().filter(|v| !v.is_nan())
}

fn split_line(line: &str) -> Vec<&str> {
    line.split(',')
        .map(|f| f.trim().trim_matches('"'))
        .collect()
}

fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_end_matches('\r')))
        .filter(|(_, l)| !l.trim().is_empty())
}

fn header<'a>(
    source_name: &str,
    it: &mut impl Iterator<Item = (usize, &'a str)>,
) -> Result<Vec<String>, SeriesError> {
    let (_, h) = it.next().ok_or_else(|| SeriesError::Empty {
        source_name: source_name.into(),
    })?;
    let h = h.trim_start_matches('\u{feff}');
    Ok(split_line(h)
        .into_iter()
        .map(|s| s.to_ascii_lowercase())
        .collect())
}

fn column(source_name: &str, cols: &[String], name: &str) -> Result<usize, SeriesError> {
    cols.iter()
        .position(|c| c == name)
        .ok_or_else(|| SeriesError::MissingColumn {
            source_name: source_name.into(),
            column: name.into(),
            header: cols.join(","),
        })
}

/// Parses a `timestamp,value` CSV (a header row naming both columns, other columns ignored).
/// Timestamps must increase strictly.
pub fn parse_series(source_name: &str, text: &str) -> Result<Series, SeriesError> {
    parse_series_ordered(source_name, text, false)
}

/// As [`parse_series`], but timestamps need not increase. NAB's own files repeat or step back a
/// few timestamps around clock changes and NAB scores rows by position; the benchmark reads them
/// with this. Nothing else should.
pub fn parse_series_unordered(source_name: &str, text: &str) -> Result<Series, SeriesError> {
    parse_series_ordered(source_name, text, true)
}

fn parse_series_ordered(
    source_name: &str,
    text: &str,
    unordered: bool,
) -> Result<Series, SeriesError> {
    let mut it = lines(text);
    let cols = header(source_name, &mut it)?;
    let ti = column(source_name, &cols, "timestamp")?;
    let vi = column(source_name, &cols, "value")?;
    let mut out = Series::default();
    for (line, l) in it {
        let f = split_line(l);
        if f.len() != cols.len() {
            return Err(SeriesError::FieldCount {
                source_name: source_name.into(),
                line,
                expected: cols.len(),
                found: f.len(),
            });
        }
        let ts_ms = parse_timestamp(f[ti]).ok_or_else(|| SeriesError::Unparseable {
            source_name: source_name.into(),
            line,
            column: "timestamp".into(),
            text: f[ti].into(),
            what: "a timestamp",
        })?;
        let value = parse_value(f[vi]).ok_or_else(|| SeriesError::Unparseable {
            source_name: source_name.into(),
            line,
            column: "value".into(),
            text: f[vi].into(),
            what: "a number",
        })?;
        if let Some(prev) = out.points.last() {
            if ts_ms <= prev.ts_ms && !unordered {
                return Err(SeriesError::NotIncreasing {
                    source_name: source_name.into(),
                    line,
                    text: f[ti].into(),
                });
            }
        }
        out.points.push(Point { ts_ms, value });
        out.timestamp_text.push(f[ti].to_string());
    }
    if out.points.is_empty() {
        return Err(SeriesError::NoRows {
            source_name: source_name.into(),
        });
    }
    Ok(out)
}

/// Parses the judge's samples: a `value` column (one metric, named `value`) or `metric,value`
/// columns (several metrics). Returns `(metric, values)` in order of first appearance. Values may
/// be NaN (`NaN` or empty); the judge's NaN strategy decides what happens to them.
pub fn parse_samples(
    source_name: &str,
    text: &str,
) -> Result<Vec<(String, Vec<f64>)>, SeriesError> {
    let mut it = lines(text);
    let cols = header(source_name, &mut it)?;
    let vi = column(source_name, &cols, "value")?;
    let mi = cols.iter().position(|c| c == "metric");
    let mut out: Vec<(String, Vec<f64>)> = Vec::new();
    let mut rows = 0;
    for (line, l) in it {
        let f = split_line(l);
        if f.len() != cols.len() {
            return Err(SeriesError::FieldCount {
                source_name: source_name.into(),
                line,
                expected: cols.len(),
                found: f.len(),
            });
        }
        let v = parse_value(f[vi]).ok_or_else(|| SeriesError::Unparseable {
            source_name: source_name.into(),
            line,
            column: "value".into(),
            text: f[vi].into(),
            what: "a number",
        })?;
        let name = mi.map_or("value", |i| f[i]);
        if name.is_empty() {
            return Err(SeriesError::Unparseable {
                source_name: source_name.into(),
                line,
                column: "metric".into(),
                text: String::new(),
                what: "a metric name",
            });
        }
        match out.iter_mut().find(|(m, _)| m == name) {
            Some((_, vs)) => vs.push(v),
            None => out.push((name.to_string(), vec![v])),
        }
        rows += 1;
    }
    if rows == 0 {
        return Err(SeriesError::NoRows {
            source_name: source_name.into(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn timestamps() {
        assert_eq!(parse_timestamp("1970-01-01 00:00:00"), Some(0));
        assert_eq!(
            parse_timestamp("2014-04-01 00:05:00"),
            Some(1_396_310_700_000)
        );
        assert_eq!(
            parse_timestamp("2014-04-01T00:05:00.250Z"),
            Some(1_396_310_700_250)
        );
        assert_eq!(
            parse_timestamp("2014-02-19 10:50:00.000000"),
            parse_timestamp("2014-02-19 10:50:00")
        );
        assert_eq!(parse_timestamp("1396310700"), Some(1_396_310_700_000));
        assert_eq!(parse_timestamp("1.5"), Some(1500));
        assert_eq!(parse_timestamp("2014-13-01"), None);
        assert_eq!(parse_timestamp("yesterday"), None);
        assert_eq!(parse_timestamp("2014-04-01 25:00:00"), None);
    }

    #[test]
    fn series_ok_and_nan() {
        let s = parse_series("a.csv", "timestamp,value\n2014-04-01 00:00:00,1.5\n2014-04-01 00:05:00,NaN\n\n2014-04-01 00:10:00,\n").unwrap();
        assert_eq!(s.points.len(), 3);
        assert_eq!(s.points[0].value, 1.5);
        assert!(s.points[1].value.is_nan() && s.points[2].value.is_nan());
        assert_eq!(s.timestamp_text[2], "2014-04-01 00:10:00");
    }

    #[test]
    fn series_errors_name_file_and_line() {
        let e = |t: &str| parse_series("s.csv", t).unwrap_err().to_string();
        assert_eq!(e(""), "s.csv: the file is empty");
        assert_eq!(
            e("timestamp,value\n"),
            "s.csv: the file has a header but no rows"
        );
        assert_eq!(
            e("time,value\n1,2\n"),
            "s.csv: line 1: missing column `timestamp` in header `time,value`"
        );
        assert_eq!(
            e("timestamp,value\n1,2\n2,x\n"),
            "s.csv: line 3, column `value`: cannot parse `x` as a number"
        );
        assert_eq!(
            e("timestamp,value\n2,2\n2,3\n"),
            "s.csv: line 3: timestamp `2` is not after the previous row's timestamp"
        );
        assert!(parse_series_unordered("s.csv", "timestamp,value\n2,2\n2,3\n1,3\n").is_ok());
        assert_eq!(
            e("timestamp,value\n1\n"),
            "s.csv: line 2: expected 2 fields, found 1"
        );
        assert_eq!(
            e("timestamp,value\nnoon,1\n"),
            "s.csv: line 2, column `timestamp`: cannot parse `noon` as a timestamp"
        );
    }

    #[test]
    fn samples_single_and_multi() {
        let s = parse_samples("c.csv", "value\n1\n2\nnan\n").unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].0, "value");
        assert_eq!(s[0].1.len(), 3);
        let m = parse_samples("c.csv", "metric,value\nlatency,1\nerrors,0\nlatency,3\n").unwrap();
        assert_eq!(m[0], ("latency".to_string(), vec![1.0, 3.0]));
        assert_eq!(m[1], ("errors".to_string(), vec![0.0]));
        assert_eq!(
            parse_samples("c.csv", "metric\nx\n")
                .unwrap_err()
                .to_string(),
            "c.csv: line 1: missing column `value` in header `metric`"
        );
    }

    proptest! {
        #[test]
        fn parser_never_panics(text in "\\PC{0,200}") {
            let _ = parse_series("p.csv", &text);
            let _ = parse_samples("p.csv", &text);
        }

        #[test]
        fn round_trips(values in proptest::collection::vec(-1e9f64..1e9, 1..50)) {
            let mut t = String::from("timestamp,value\n");
            for (i, v) in values.iter().enumerate() {
                t.push_str(&format!("{},{}\n", 1_000_000 + i * 60, v));
            }
            let s = parse_series("p.csv", &t).unwrap();
            prop_assert_eq!(s.points.len(), values.len());
            for (p, v) in s.points.iter().zip(&values) {
                prop_assert_eq!(p.value, *v);
            }
        }
    }
}
