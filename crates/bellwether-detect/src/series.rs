//! Parsing of metric series from CSV text: `timestamp,value` for one series, and `value` or
//! `metric,value` for the judge's samples.
//!
//! The parsers are pure functions over a `&str`, so that they can be property-tested; the CLI
//! only reads the file and passes the text and its name in. The CSV grammar is the `csv`
//! crate's (as `bellwether-predict`'s frame reader), dates are checked against the calendar by
//! the `time` crate. Every error names the source, the line (1-based, the header is line 1)
//! and, where it helps, the column; what it quotes from the input is cut to a few hundred bytes.

use bellwether_model::text::quote;

/// Why a CSV could not be used. Every text quoted from the input is cut to a few hundred bytes
/// and has its control characters escaped ([`bellwether_model::text::quote`]).
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
    #[error("{source_name}: the file has a header but no rows")]
    NoRows { source_name: String },
    #[error("{source_name}: line {line}, column `{column}`: a quoted field is never closed (a `\"` opens it and the row, or the file, ends first)")]
    Unterminated {
        source_name: String,
        line: usize,
        column: String,
    },
    #[error("{source_name}: line {line}: {message}")]
    Csv {
        source_name: String,
        line: usize,
        message: String,
    },
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
    /// Rows whose timestamp is before the previous row's (the first [`MAX_WARNINGS`]).
    pub warnings: Vec<SeriesWarning>,
    /// How many rows went back in time, all of them.
    pub backwards: usize,
}

/// Rows going back in time that a [`Series`] keeps a warning for; the rest are only counted.
pub const MAX_WARNINGS: usize = 20;

/// A row whose timestamp is before the previous row's. The row is kept, in file order: a clock
/// change or a collector's retry does this in real files, and NAB scores such files by row.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{source_name}: line {line}: timestamp `{text}` is before the previous row's `{previous}`; the row is kept in file order")]
pub struct SeriesWarning {
    pub source_name: String,
    pub line: usize,
    pub text: String,
    pub previous: String,
}

/// Parses a timestamp: `YYYY-MM-DD HH:MM:SS[.fff]`, the same with `T`, and an optional `Z`
/// or UTC offset (`+01:00`, `-0530`, `+02`: converted to UTC), or a number of seconds since
/// the Unix epoch (fractions allowed). Returns milliseconds since the epoch, UTC.
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
    let s = s
        .strip_suffix('Z')
        .or_else(|| s.strip_suffix('z'))
        .unwrap_or(s);
    // A numeric UTC offset after the time (`+01:00`, `-0530`, `+02`), as RFC 3339 and
    // ISO 8601 writers put it: the instant is converted to UTC.
    let (s, offset_ms) = match s.get(19..).and_then(|t| t.rfind(['+', '-'])) {
        Some(at) => (&s[..19 + at], utc_offset_ms(&s[19 + at..])?),
        None => (s, 0),
    };
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
    // The calendar (month lengths, leap years) is the `time` crate's: `2024-02-30` is refused.
    let month = time::Month::try_from(u8::try_from(mo).ok()?).ok()?;
    let date = time::Date::from_calendar_date(i32::try_from(y).ok()?, month, u8::try_from(d).ok()?)
        .ok()?;
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
    // Julian day 2,440,588 is 1970-01-01. A leap second (`:60`) counts as the next second.
    let days = i64::from(date.to_julian_day()) - 2_440_588;
    Some(((days * 24 + h) * 60 + mi) * 60_000 + sec * 1000 + ms - offset_ms)
}

/// `+HH:MM`, `+HHMM` or `+HH` (or `-`): the offset from UTC in milliseconds; `None` if it is
/// not one (hours up to 23, minutes up to 59).
fn utc_offset_ms(t: &str) -> Option<i64> {
    let sign = match t.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let digits: String = t[1..].chars().filter(|c| *c != ':').collect();
    let colon_ok = match t.len() {
        6 => t.as_bytes()[3] == b':',
        3 | 5 => !t.contains(':'),
        _ => false,
    };
    let want = if t.len() == 3 { 2 } else { 4 };
    if !colon_ok || digits.len() != want || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let h: i64 = digits[..2].parse().ok()?;
    let m: i64 = if digits.len() == 4 {
        digits[2..].parse().ok()?
    } else {
        0
    };
    if h > 23 || m > 59 {
        return None;
    }
    Some(sign * (h * 60 + m) * 60_000)
}

/// Parses a number; `NaN`, `nan` and an empty field give NaN.
pub fn parse_value(s: &str) -> Option<f64> {
    let t = s.trim();
    if t.is_empty() || t.eq_ignore_ascii_case("nan") {
        return Some(f64::NAN);
    }
    t.parse::<f64>().ok().filter(|v| !v.is_nan())
}

/// One data row: its line (1-based, the header is line 1) and its trimmed fields.
struct Row {
    line: usize,
    fields: Vec<String>,
}

/// Reads `text` as CSV with the `csv` crate (RFC 4180 quoting, `\n` or `\r\n`): the header,
/// lower-cased and without a byte-order mark, and the rows, each with its line. Rows whose
/// fields are all blank are skipped. A quote that is never closed is an error: the `csv` crate
/// would end the field at the end of the file and swallow every row after it.
fn read_csv(source_name: &str, text: &str) -> Result<(Vec<String>, Vec<Row>), SeriesError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let mut header: Option<Vec<String>> = None;
    let mut rows = Vec::new();
    let mut record = csv::StringRecord::new();
    let mut lines = LineCounter { at: 0, line: 1 };
    loop {
        let start = reader.position().clone();
        let more = reader.read_record(&mut record).map_err(|e| {
            let at = e.position().map_or(start.byte(), |p| p.byte()) as usize;
            lines.advance(text, at.min(text.len()));
            let line = lines.line;
            let message = match e.kind() {
                csv::ErrorKind::Utf8 { .. } => "the row is not valid UTF-8".to_string(),
                _ => quote(&e.to_string()),
            };
            SeriesError::Csv {
                source_name: source_name.into(),
                line,
                message,
            }
        })?;
        if !more {
            break;
        }
        // The line is counted here from byte offsets: the `csv` crate's own count does not
        // include the line breaks inside quoted fields.
        let end = reader.position().byte() as usize;
        let raw = text.get(start.byte() as usize..end).unwrap_or("");
        let first =
            start.byte() as usize + (raw.len() - raw.trim_start_matches(['\r', '\n']).len());
        lines.advance(text, first);
        let line = lines.line;
        if let Some(field) = unclosed_quote(raw) {
            let column = match &header {
                Some(h) => h
                    .get(field)
                    .cloned()
                    .unwrap_or_else(|| format!("#{}", field + 1)),
                None => format!("#{}", field + 1),
            };
            return Err(SeriesError::Unterminated {
                source_name: source_name.into(),
                line,
                column: quote(&column),
            });
        }
        if record.iter().all(str::is_empty) {
            continue;
        }
        let fields: Vec<String> = record.iter().map(str::to_string).collect();
        match header {
            None => header = Some(fields.iter().map(|f| f.to_ascii_lowercase()).collect()),
            Some(_) => rows.push(Row { line, fields }),
        }
    }
    let header = header.ok_or_else(|| SeriesError::Empty {
        source_name: source_name.into(),
    })?;
    Ok((header, rows))
}

/// Line numbers of byte offsets, counted incrementally (offsets only grow).
struct LineCounter {
    at: usize,
    line: usize,
}

impl LineCounter {
    fn advance(&mut self, text: &str, to: usize) {
        if to > self.at {
            let seen = text.as_bytes().get(self.at..to).unwrap_or(&[]);
            self.line += seen.iter().filter(|&&b| b == b'\n').count();
            self.at = to;
        }
    }
}

/// The index of the field in which a quote opens and is never closed, scanning one record's
/// raw text as RFC 4180 reads it (`""` inside quotes is an escaped quote).
fn unclosed_quote(raw: &str) -> Option<usize> {
    let (mut field, mut open_in, mut quoted) = (0, 0, false);
    for b in raw.bytes() {
        match (quoted, b) {
            (true, b'"') => quoted = false,
            (false, b'"') => {
                quoted = true;
                open_in = field;
            }
            (false, b',') => field += 1,
            _ => {}
        }
    }
    quoted.then_some(open_in)
}

fn column(source_name: &str, cols: &[String], name: &str) -> Result<usize, SeriesError> {
    cols.iter()
        .position(|c| c == name)
        .ok_or_else(|| SeriesError::MissingColumn {
            source_name: source_name.into(),
            column: name.into(),
            header: quote(&cols.join(",")),
        })
}

fn check_width(source_name: &str, row: &Row, expected: usize) -> Result<(), SeriesError> {
    if row.fields.len() == expected {
        return Ok(());
    }
    Err(SeriesError::FieldCount {
        source_name: source_name.into(),
        line: row.line,
        expected,
        found: row.fields.len(),
    })
}

fn unparseable(
    source_name: &str,
    line: usize,
    column: &str,
    text: &str,
    what: &'static str,
) -> SeriesError {
    SeriesError::Unparseable {
        source_name: source_name.into(),
        line,
        column: column.into(),
        text: quote(text),
        what,
    }
}

/// Parses a `timestamp,value` CSV (a header row naming both columns, other columns ignored).
///
/// This one parser serves `bellwether detect` and `bellwether bench nab`: the user's file is the
/// specification. Rows keep their file order. Equal timestamps are accepted silently (a
/// CloudWatch export repeats `2014-03-09 03:00:00` at the daylight-saving change); a timestamp
/// before the previous row's is accepted with a [`SeriesWarning`].
pub fn parse_series(source_name: &str, text: &str) -> Result<Series, SeriesError> {
    let (cols, rows) = read_csv(source_name, text)?;
    let ti = column(source_name, &cols, "timestamp")?;
    let vi = column(source_name, &cols, "value")?;
    let mut out = Series::default();
    for row in rows {
        check_width(source_name, &row, cols.len())?;
        let (ts_text, v_text) = (&row.fields[ti], &row.fields[vi]);
        let ts_ms = parse_timestamp(ts_text).ok_or_else(|| {
            unparseable(source_name, row.line, "timestamp", ts_text, "a timestamp")
        })?;
        let value = parse_value(v_text)
            .ok_or_else(|| unparseable(source_name, row.line, "value", v_text, "a number"))?;
        if let (Some(prev), Some(prev_text)) = (out.points.last(), out.timestamp_text.last()) {
            if ts_ms < prev.ts_ms {
                out.backwards += 1;
                if out.warnings.len() < MAX_WARNINGS {
                    out.warnings.push(SeriesWarning {
                        source_name: source_name.into(),
                        line: row.line,
                        text: quote(ts_text),
                        previous: quote(prev_text),
                    });
                }
            }
        }
        out.points.push(Point { ts_ms, value });
        out.timestamp_text.push(ts_text.clone());
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
    let (cols, rows) = read_csv(source_name, text)?;
    let vi = column(source_name, &cols, "value")?;
    let mi = cols.iter().position(|c| c == "metric");
    let mut out: Vec<(String, Vec<f64>)> = Vec::new();
    if rows.is_empty() {
        return Err(SeriesError::NoRows {
            source_name: source_name.into(),
        });
    }
    for row in rows {
        check_width(source_name, &row, cols.len())?;
        let v = parse_value(&row.fields[vi]).ok_or_else(|| {
            unparseable(source_name, row.line, "value", &row.fields[vi], "a number")
        })?;
        let name = mi.map_or("value", |i| row.fields[i].as_str());
        if name.is_empty() {
            return Err(unparseable(
                source_name,
                row.line,
                "metric",
                "",
                "a metric name",
            ));
        }
        match out.iter_mut().find(|(m, _)| m == name) {
            Some((_, vs)) => vs.push(v),
            None => out.push((name.to_string(), vec![v])),
        }
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
        // Issue 9: days that do not exist in their month were accepted.
        for bad in [
            "2024-02-30",
            "2023-02-29",
            "2024-04-31",
            "2024-00-10",
            "2024-01-00",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
            assert_eq!(parse_timestamp(&format!("{bad} 00:00:00")), None, "{bad}");
        }
        assert_eq!(
            parse_timestamp("2024-02-29"),
            Some(parse_timestamp("2024-02-28").unwrap() + 86_400_000)
        );
        assert_eq!(
            parse_timestamp("2000-03-01 00:00:00"),
            Some(951_868_800_000)
        );
        assert_eq!(parse_timestamp("1969-12-31 23:59:59"), Some(-1000));
        // UTC offsets: the same instant however it is written.
        let utc = parse_timestamp("2024-01-01T00:05:00Z").unwrap();
        for same in [
            "2024-01-01T01:05:00+01:00",
            "2024-01-01 01:05:00+0100",
            "2024-01-01T01:05:00+01",
            "2023-12-31T18:35:00-05:30",
            "2024-01-01T00:05:00+00:00",
            "2024-01-01T00:05:00z",
        ] {
            assert_eq!(parse_timestamp(same), Some(utc), "{same}");
        }
        assert_eq!(
            parse_timestamp("2024-01-01T01:05:00.250+01:00"),
            Some(utc + 250)
        );
        for bad in [
            "2024-01-01T01:05:00+1:00",
            "2024-01-01T01:05:00+24:00",
            "2024-01-01T01:05:00+01:60",
            "2024-01-01T01:05:00+01:00:00",
            "2024-01-01T01:05:00+",
            "2024-01-01T01:05:00+12::3",
            "2024-01-01T01:05:00 +01:00",
            "2024-01-01+01:00",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
    }

    #[test]
    fn csv_grammar_and_limits() {
        let e = |t: &str| parse_series("s.csv", t).unwrap_err().to_string();
        // Issue 9: an unterminated quote swallowed the rest of the file without an error.
        assert_eq!(
            e("timestamp,value\n1,2\n2,\"3\n3,4\n4,5\n"),
            "s.csv: line 3, column `value`: a quoted field is never closed (a `\"` opens it and the row, or the file, ends first)"
        );
        assert!(e("\"timestamp,value\n1,2\n").contains("line 1, column `#1`"));
        // Quoted fields, escaped quotes, CRLF and blank lines are CSV.
        let s = parse_series(
            "s.csv",
            "\u{feff}Timestamp,\"value\",\"note\"\r\n1,2,\"a, \"\"b\"\"\"\r\n\r\n\"2\", 3 ,\"x\ny\"\r\n",
        )
        .unwrap();
        assert_eq!(
            s.points,
            vec![
                Point {
                    ts_ms: 1000,
                    value: 2.0
                },
                Point {
                    ts_ms: 2000,
                    value: 3.0
                }
            ]
        );
        assert_eq!(
            e("timestamp,value,note\r\n1,2,\"x\ny\"\r\n\r\n2,3,\"z\"\r\n4,x,\r\n"),
            "s.csv: line 6, column `value`: cannot parse `x` as a number"
        );
        assert_eq!(
            e("timestamp,value\n1,2\n2,\"a\nb\"\n3,x\n"),
            "s.csv: line 3, column `value`: cannot parse `a\\nb` as a number"
        );
        assert_eq!(
            e("timestamp,value\n1,2\n2024-02-30 00:00:00,3\n"),
            "s.csv: line 3, column `timestamp`: cannot parse `2024-02-30 00:00:00` as a timestamp"
        );
        // Issue 9: an error echoed a 50 MB field whole.
        let huge = format!("timestamp,value\n1,{}\n", "9".repeat(50 << 20) + "x");
        let msg = e(&huge);
        assert!(msg.len() < 400, "{} bytes", msg.len());
        assert!(
            msg.starts_with("s.csv: line 2, column `value`: cannot parse `999"),
            "{}",
            &msg[..100]
        );
        assert!(msg.contains("more bytes)"), "{msg}");
        let wide = format!("{},value\n1,2\n", "t".repeat(1 << 20));
        assert!(e(&wide).len() < 400);
        let samples = format!("metric,value\n{},x\n", "m".repeat(1 << 20));
        assert!(
            parse_samples("c.csv", &samples)
                .unwrap_err()
                .to_string()
                .len()
                < 400
        );
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
            e("timestamp,value\n1\n"),
            "s.csv: line 2: expected 2 fields, found 1"
        );
        assert_eq!(
            e("timestamp,value\nnoon,1\n"),
            "s.csv: line 2, column `timestamp`: cannot parse `noon` as a timestamp"
        );
    }

    /// Issue 10: `detect` refused a real NAB file (ec2_cpu_utilization_ac20cd repeats
    /// `2014-03-09 03:00:00` at the daylight-saving change) that `bench nab` accepted.
    #[test]
    fn equal_timestamps_are_kept_and_going_back_is_a_warning() {
        let dst = "timestamp,value\n2014-03-09 02:55:00,1\n2014-03-09 03:00:00,2\n2014-03-09 03:00:00,3\n2014-03-09 03:05:00,4\n";
        let s = parse_series("ec2.csv", dst).unwrap();
        assert_eq!(s.points.len(), 4);
        assert_eq!(s.points[1].ts_ms, s.points[2].ts_ms);
        assert_eq!(
            s.points.iter().map(|p| p.value).collect::<Vec<_>>(),
            [1.0, 2.0, 3.0, 4.0]
        );
        assert!(s.warnings.is_empty() && s.backwards == 0);

        let back = parse_series("b.csv", "timestamp,value\n100,1\n200,2\n150,3\n300,4\n").unwrap();
        assert_eq!(
            back.points.iter().map(|p| p.ts_ms).collect::<Vec<_>>(),
            [100_000, 200_000, 150_000, 300_000],
            "rows keep file order"
        );
        assert_eq!(back.backwards, 1);
        assert_eq!(
            back.warnings[0].to_string(),
            "b.csv: line 4: timestamp `150` is before the previous row's `200`; the row is kept in file order"
        );
        // Many rows going back: every one is counted, the first MAX_WARNINGS are kept.
        let mut t = String::from("timestamp,value\n");
        for i in 0..100 {
            t.push_str(&format!("{},1\n", 1000 - i));
        }
        let many = parse_series("m.csv", &t).unwrap();
        assert_eq!(many.backwards, 99);
        assert_eq!(many.warnings.len(), MAX_WARNINGS);
        assert_eq!(many.warnings[0].line, 3);
        // Bad rows after a backward one are still errors with file, line and column.
        assert_eq!(
            parse_series("b.csv", "timestamp,value\n200,1\n100,2\n300,zz\n")
                .unwrap_err()
                .to_string(),
            "b.csv: line 4, column `value`: cannot parse `zz` as a number"
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
