//! Scraping a service's Prometheus `/metrics` and turning it into the agent's samples.
//!
//! [`parse`] reads the text exposition format (version 0.0.4): `# TYPE` lines, samples with
//! optional labels (quoted values with `\\`, `\"` and `\n` escapes), optional timestamps, and
//! the special values `NaN`, `+Inf` and `-Inf`. It is small, strict about what it keeps and
//! never panics on any input (a proptest checks that); a malformed line is an error naming
//! the line number.
//!
//! [`Rates`] turns two scrapes of `websvc_requests_total`, `websvc_errors_total` and the
//! `websvc_request_duration_seconds` histogram into the samples the rollout watch reads:
//! `svc_requests_rate` (requests per second), `svc_error_ratio` (errors per request),
//! `svc_latency_p50_ms` and `svc_latency_p99_ms` (quantiles interpolated inside the buckets
//! of the window's increase, as Prometheus' `histogram_quantile` does). A counter that went
//! down (a service restart) starts a new window instead of yielding a negative rate.

use std::collections::BTreeMap;

use bellwether_model::MetricSample;

/// One sample line: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Why a scrape body is not valid exposition text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {why}")]
pub struct ParseError {
    pub line: usize,
    pub why: String,
}

/// Parses the text format. Comments and `# HELP`/`# TYPE` lines are checked for shape only.
pub fn parse(text: &str) -> Result<Vec<Sample>, ParseError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(parse_line(line).map_err(|why| ParseError { line: i + 1, why })?);
    }
    Ok(out)
}

fn is_name_char(c: char, first: bool) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':' || (!first && c.is_ascii_digit())
}

fn parse_line(line: &str) -> Result<Sample, String> {
    let name_end = line
        .char_indices()
        .find(|&(i, c)| !is_name_char(c, i == 0))
        .map_or(line.len(), |(i, _)| i);
    if name_end == 0 {
        return Err("expected a metric name".into());
    }
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices().peekable();
        let end;
        loop {
            // Skip separators.
            while let Some(&(_, c)) = chars.peek() {
                if c == ',' || c == ' ' {
                    chars.next();
                } else {
                    break;
                }
            }
            let Some(&(start, c)) = chars.peek() else {
                return Err("unterminated label set".into());
            };
            if c == '}' {
                end = start + 1;
                break;
            }
            let mut key_end = start;
            while let Some(&(i, c)) = chars.peek() {
                if is_name_char(c, i == start) {
                    chars.next();
                    key_end = i + c.len_utf8();
                } else {
                    break;
                }
            }
            if key_end == start {
                return Err(format!("expected a label name at {:?}", &after[start..]));
            }
            let key = after[start..key_end].to_string();
            if chars.next().map(|(_, c)| c) != Some('=') {
                return Err(format!("expected '=' after label {key}"));
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err(format!("expected a quoted value for label {key}"));
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    None => return Err(format!("unterminated value for label {key}")),
                    Some((_, '"')) => break,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        _ => return Err(format!("bad escape in the value of label {key}")),
                    },
                    Some((_, c)) => value.push(c),
                }
            }
            labels.insert(key, value);
        }
        rest = &after[end..];
    }
    let mut fields = rest.split_whitespace();
    let v = fields.next().ok_or("expected a value")?;
    let value = match v {
        "NaN" => f64::NAN,
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        _ => v
            .parse::<f64>()
            .map_err(|_| format!("value {v:?} is not a number"))?,
    };
    if let Some(ts) = fields.next() {
        ts.parse::<i64>()
            .map_err(|_| format!("timestamp {ts:?} is not an integer"))?;
    }
    if fields.next().is_some() {
        return Err("unexpected text after the timestamp".into());
    }
    Ok(Sample {
        name,
        labels,
        value,
    })
}

/// The figures of one scrape that the rates need.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub ts_ms: i64,
    pub requests: f64,
    pub errors: f64,
    /// Cumulative buckets: (upper bound in seconds, count), sorted by bound.
    pub buckets: Vec<(f64, f64)>,
}

/// Sums the service's series across labels (other than `le`).
pub fn snapshot(samples: &[Sample], ts_ms: i64) -> Option<Snapshot> {
    let sum = |name: &str| -> Option<f64> {
        let v: Vec<f64> = samples
            .iter()
            .filter(|s| s.name == name)
            .map(|s| s.value)
            .collect();
        (!v.is_empty()).then(|| v.iter().sum())
    };
    let requests = sum("websvc_requests_total")?;
    let errors = sum("websvc_errors_total").unwrap_or(0.0);
    let mut by_le: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
    for s in samples
        .iter()
        .filter(|s| s.name == "websvc_request_duration_seconds_bucket")
    {
        let Some(le) = s.labels.get("le") else {
            continue;
        };
        let bound = match le.as_str() {
            "+Inf" | "Inf" => f64::INFINITY,
            x => match x.parse::<f64>() {
                Ok(b) if !b.is_nan() => b,
                _ => continue,
            },
        };
        let e = by_le.entry(bound.to_bits()).or_insert((bound, 0.0));
        e.1 += s.value;
    }
    let mut buckets: Vec<(f64, f64)> = by_le.into_values().collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    Some(Snapshot {
        ts_ms,
        requests,
        errors,
        buckets,
    })
}

/// The quantile `q` of a cumulative histogram, linearly interpolated within its bucket.
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 || !total.is_finite() {
        return None;
    }
    let rank = q * total;
    let mut prev_bound = 0.0;
    let mut prev_count = 0.0;
    for &(bound, count) in buckets {
        if count >= rank {
            if bound.is_infinite() {
                // Prometheus answers with the highest finite bound.
                return Some(prev_bound);
            }
            let in_bucket = count - prev_count;
            let frac = if in_bucket > 0.0 {
                (rank - prev_count) / in_bucket
            } else {
                1.0
            };
            return Some(prev_bound + (bound - prev_bound) * frac);
        }
        prev_bound = bound;
        prev_count = count;
    }
    Some(prev_bound)
}

/// Turns successive snapshots into rate samples.
#[derive(Debug, Default)]
pub struct Rates {
    last: Option<Snapshot>,
}

impl Rates {
    /// The samples for the window since the previous snapshot (none for the first, for a
    /// counter reset, or for an empty window's ratios and quantiles).
    pub fn push(&mut self, now: Snapshot) -> Vec<MetricSample> {
        let Some(prev) = self.last.replace(now.clone()) else {
            return Vec::new();
        };
        let dt = (now.ts_ms - prev.ts_ms) as f64 / 1000.0;
        let dreq = now.requests - prev.requests;
        let derr = now.errors - prev.errors;
        if dt <= 0.0 || dreq < 0.0 || derr < 0.0 {
            return Vec::new();
        }
        let sample = |name: &str, value: f64| MetricSample {
            ts_ms: now.ts_ms,
            name: name.to_string(),
            value,
        };
        let mut out = vec![sample("svc_requests_rate", dreq / dt)];
        if dreq > 0.0 {
            out.push(sample("svc_error_ratio", (derr / dreq).clamp(0.0, 1.0)));
        }
        let same_bounds = prev.buckets.len() == now.buckets.len()
            && prev
                .buckets
                .iter()
                .zip(&now.buckets)
                .all(|(a, b)| a.0 == b.0);
        if same_bounds {
            let window: Vec<(f64, f64)> = now
                .buckets
                .iter()
                .zip(&prev.buckets)
                .map(|(n, p)| (n.0, n.1 - p.1))
                .collect();
            if window.iter().all(|(_, c)| *c >= 0.0) {
                if let Some(p50) = quantile(0.5, &window) {
                    out.push(sample("svc_latency_p50_ms", p50 * 1000.0));
                }
                if let Some(p99) = quantile(0.99, &window) {
                    out.push(sample("svc_latency_p99_ms", p99 * 1000.0));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = r#"# HELP websvc_requests_total Requests served.
# TYPE websvc_requests_total counter
websvc_requests_total{version="2"} 100
websvc_errors_total{version="2",path="/a\"b\\c"} 10 1700000000000
# TYPE websvc_request_duration_seconds histogram
websvc_request_duration_seconds_bucket{le="0.005"} 20
websvc_request_duration_seconds_bucket{le="0.01"} 80
websvc_request_duration_seconds_bucket{le="0.1"} 100
websvc_request_duration_seconds_bucket{le="+Inf"} 100
websvc_request_duration_seconds_sum 0.9
websvc_request_duration_seconds_count 100
up NaN
"#;

    #[test]
    fn parses_labels_escapes_timestamps_and_special_values() {
        let s = parse(BODY).unwrap();
        assert_eq!(s.len(), 9);
        assert_eq!(s[1].labels["path"], "/a\"b\\c");
        assert_eq!(s[1].value, 10.0);
        assert!(s[8].value.is_nan());
        assert_eq!(s[5].labels["le"], "+Inf");
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse("ok 1\nbad{x=1} 2\n").unwrap_err();
        assert_eq!(e.to_string(), "line 2: expected a quoted value for label x");
        assert_eq!(
            parse("m one").unwrap_err().to_string(),
            "line 1: value \"one\" is not a number"
        );
        assert_eq!(parse("m{a=\"b\" 1").unwrap_err().line, 1);
        assert_eq!(
            parse("{a=\"b\"} 1").unwrap_err().why,
            "expected a metric name"
        );
    }

    #[test]
    fn rates_come_from_two_scrapes() {
        let first = snapshot(&parse(BODY).unwrap(), 0).unwrap();
        let mut r = Rates::default();
        assert!(r.push(first).is_empty(), "one scrape has no rate");
        let second = snapshot(
            &parse(
                "websvc_requests_total 300\nwebsvc_errors_total 70\n\
                 websvc_request_duration_seconds_bucket{le=\"0.005\"} 20\n\
                 websvc_request_duration_seconds_bucket{le=\"0.01\"} 180\n\
                 websvc_request_duration_seconds_bucket{le=\"0.1\"} 300\n\
                 websvc_request_duration_seconds_bucket{le=\"+Inf\"} 300\n",
            )
            .unwrap(),
            2000,
        )
        .unwrap();
        let got: BTreeMap<String, f64> = r
            .push(second)
            .into_iter()
            .map(|s| (s.name, s.value))
            .collect();
        assert_eq!(got["svc_requests_rate"], 100.0);
        assert!((got["svc_error_ratio"] - 0.3).abs() < 1e-12);
        // Window buckets: 0 ≤ 5 ms, 100 ≤ 10 ms, 200 total: p50 at the top of the 10 ms bucket.
        assert!((got["svc_latency_p50_ms"] - 10.0).abs() < 1e-9, "{got:?}");
        // p99: rank 198 of 200, in (10 ms, 100 ms] holding 100 → 10 + 90 × 0.98.
        assert!((got["svc_latency_p99_ms"] - 98.2).abs() < 1e-9, "{got:?}");
    }

    #[test]
    fn a_counter_reset_starts_a_new_window() {
        let mut r = Rates::default();
        let s = |ts, req| Snapshot {
            ts_ms: ts,
            requests: req,
            errors: 0.0,
            buckets: vec![],
        };
        r.push(s(0, 100.0));
        assert!(r.push(s(1000, 5.0)).is_empty());
        let got = r.push(s(2000, 15.0));
        assert_eq!(got[0].value, 10.0);
        assert_eq!(got[1].name, "svc_error_ratio");
        assert_eq!(got[1].value, 0.0);
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(s in "(?s).{0,300}") {
            let _ = parse(&s);
        }

        #[test]
        fn parse_never_panics_on_near_misses(s in "[a-z_]{1,5}(\\{[a-z]{0,3}(=\"[^\"]{0,4}\"?)?,?\\}?)? ?[-+0-9.eInfa]{0,6}( [0-9]{0,3})?") {
            let _ = parse(&s);
        }

        #[test]
        fn quantiles_stay_within_bounds(counts in proptest::collection::vec(0u32..100, 1..8), q in 0.0f64..1.0) {
            let mut cum = 0.0;
            let mut b = Vec::new();
            for (i, c) in counts.iter().enumerate() {
                cum += f64::from(*c);
                b.push(((i + 1) as f64 * 0.01, cum));
            }
            if let Some(v) = quantile(q, &b) {
                proptest::prop_assert!((0.0..=b.last().unwrap().0).contains(&v));
            }
        }
    }
}
