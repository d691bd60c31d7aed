//! A small client of Prometheus' HTTP query API (`/api/v1/query`, `/api/v1/query_range`),
//! for rollouts whose analysis reads metrics from Prometheus (docs/prometheus.md).
//!
//! [`parse`] reads an answer's JSON (vector, matrix, scalar or string results; `NaN` and
//! `±Inf` values; the `error`/`errorType` of a refused query) with the path of whatever does
//! not fit; [`Client`] sends the queries. [`host_points`] is the rule for one host's series:
//! exactly one series, or the read is no data with the reason.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

/// Why a query gave no result.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PromError {
    #[error("Prometheus at {address} did not answer: {reason}")]
    Unreachable { address: String, reason: String },
    #[error("Prometheus at {address} refused the query ({status}, {error_type}): {error}")]
    Refused {
        address: String,
        status: u16,
        error_type: String,
        error: String,
    },
    #[error("Prometheus at {address} answered {status} with something that is not its API's JSON: {reason}")]
    BadAnswer {
        address: String,
        status: u16,
        reason: String,
    },
}

/// What an answer's JSON does not hold as it should.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ParseError {
    /// Where in the JSON (`data.result[0].values[3]`), `.` for the whole answer.
    pub path: String,
    pub message: String,
}

/// A successful answer's data.
#[derive(Debug, Clone, PartialEq)]
pub enum QueryData {
    /// An instant query's series, one value each.
    Vector(Vec<Series>),
    /// A range query's series, several points each.
    Matrix(Vec<Series>),
    Scalar(Point),
    String {
        ts_ms: i64,
        value: String,
    },
}

/// One series: its labels and its points in time order.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: BTreeMap<String, String>,
    pub points: Vec<Point>,
}

/// One value at a time, in milliseconds since the epoch. The value may be NaN or infinite, as
/// Prometheus writes them (`"NaN"`, `"+Inf"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub ts_ms: i64,
    pub value: f64,
}

/// An answer: the data, or the query's error as Prometheus put it.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Success {
        data: QueryData,
        warnings: Vec<String>,
    },
    Error {
        error_type: String,
        error: String,
    },
}

#[derive(Deserialize)]
struct RawAnswer {
    status: String,
    #[serde(default)]
    data: Option<RawData>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    warnings: Vec<String>,
    // `infos` (newer servers) and anything else added later are ignored.
}

#[derive(Deserialize)]
#[serde(tag = "resultType", content = "result", rename_all = "lowercase")]
enum RawData {
    Vector(Vec<RawInstant>),
    Matrix(Vec<RawRange>),
    Scalar(RawPoint),
    String(RawPoint),
}

#[derive(Deserialize)]
struct RawInstant {
    #[serde(default)]
    metric: BTreeMap<String, String>,
    value: RawPoint,
}

#[derive(Deserialize)]
struct RawRange {
    #[serde(default)]
    metric: BTreeMap<String, String>,
    values: Vec<RawPoint>,
}

/// `[1712345678.123, "0.5"]`.
#[derive(Deserialize)]
struct RawPoint(f64, String);

fn point(p: RawPoint) -> Result<Point, String> {
    let RawPoint(t, v) = p;
    if !t.is_finite() || t.abs() > 1e13 {
        return Err(format!("time {t:e} is not Unix seconds"));
    }
    Ok(Point {
        ts_ms: (t * 1000.0).round() as i64,
        value: sample_value(&v)?,
    })
}

/// A sample value as Prometheus writes it: a number, `NaN`, `+Inf` or `-Inf`.
fn sample_value(v: &str) -> Result<f64, String> {
    match v {
        "NaN" => Ok(f64::NAN),
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        _ => v
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite())
            .ok_or_else(|| {
                format!(
                    "value \"{}\" is not a number",
                    bellwether_model::text::quote(v)
                )
            }),
    }
}

/// Reads an answer of `/api/v1/query` or `/api/v1/query_range`.
pub fn parse(body: &[u8]) -> Result<Answer, ParseError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    let raw: RawAnswer = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        ParseError {
            path: if path.is_empty() { ".".into() } else { path },
            message: e.into_inner().to_string(),
        }
    })?;
    let at = |path: &str, message: String| ParseError {
        path: path.into(),
        message,
    };
    match raw.status.as_str() {
        "success" => {}
        "error" => {
            return Ok(Answer::Error {
                error_type: raw.error_type.unwrap_or_else(|| "unknown".into()),
                error: raw.error.unwrap_or_default(),
            })
        }
        other => {
            return Err(at(
                "status",
                format!(
                    "\"{}\" is neither \"success\" nor \"error\"",
                    bellwether_model::text::quote(other)
                ),
            ))
        }
    }
    let data = raw
        .data
        .ok_or_else(|| at("data", "a successful answer has no data".into()))?;
    let data = match data {
        RawData::Vector(v) => QueryData::Vector(
            v.into_iter()
                .enumerate()
                .map(|(i, s)| {
                    Ok(Series {
                        labels: s.metric,
                        points: vec![point(s.value)
                            .map_err(|m| at(&format!("data.result[{i}].value"), m))?],
                    })
                })
                .collect::<Result<_, ParseError>>()?,
        ),
        RawData::Matrix(v) => QueryData::Matrix(
            v.into_iter()
                .enumerate()
                .map(|(i, s)| {
                    let mut points = Vec::with_capacity(s.values.len());
                    for (j, p) in s.values.into_iter().enumerate() {
                        let p = point(p)
                            .map_err(|m| at(&format!("data.result[{i}].values[{j}]"), m))?;
                        if points.last().is_some_and(|q: &Point| q.ts_ms >= p.ts_ms) {
                            return Err(at(
                                &format!("data.result[{i}].values[{j}]"),
                                "times do not increase".into(),
                            ));
                        }
                        points.push(p);
                    }
                    Ok(Series {
                        labels: s.metric,
                        points,
                    })
                })
                .collect::<Result<_, ParseError>>()?,
        ),
        RawData::Scalar(p) => QueryData::Scalar(point(p).map_err(|m| at("data.result", m))?),
        RawData::String(RawPoint(t, value)) => QueryData::String {
            ts_ms: point(RawPoint(t, "0".into()))
                .map_err(|m| at("data.result", m))?
                .ts_ms,
            value,
        },
    };
    Ok(Answer::Success {
        data,
        warnings: raw.warnings,
    })
}

/// One host's points from a query's data: a scalar, or exactly one series (a query that
/// matches several must aggregate them: which would be the host's?). NaN values are dropped;
/// `Err` says why there is no data.
pub fn host_points(data: QueryData) -> Result<Vec<Point>, String> {
    let series = match data {
        QueryData::Scalar(p) => vec![Series {
            labels: BTreeMap::new(),
            points: vec![p],
        }],
        QueryData::Vector(s) | QueryData::Matrix(s) => s,
        QueryData::String { .. } => {
            return Err("the query gives a string, not a number".into());
        }
    };
    match series.len() {
        0 => Err("the query returned no series".into()),
        1 => {
            let points: Vec<Point> = series
                .into_iter()
                .flat_map(|s| s.points)
                .filter(|p| p.value.is_finite())
                .collect();
            if points.is_empty() {
                Err("the query's values are all NaN or infinite (a ratio of zero rates?)".into())
            } else {
                Ok(points)
            }
        }
        n => {
            let labels: Vec<String> = series
                .iter()
                .take(2)
                .map(|s| {
                    let l: Vec<String> =
                        s.labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
                    format!("{{{}}}", l.join(", "))
                })
                .collect();
            Err(format!(
                "the query returned {n} series ({}{}); it must give one per host: aggregate it (sum, avg, max)",
                labels.join(", "),
                if n > 2 { ", …" } else { "" }
            ))
        }
    }
}

/// A Prometheus server's query API.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    address: String,
    timeout: Duration,
}

/// The most of an answer read: a range query of one series over the lookback is far less.
const MAX_ANSWER_BYTES: usize = 8 << 20;

impl Client {
    /// `address` is checked (`bellwether_engine::rollout::promql::check_address`) by the caller.
    pub fn new(http: reqwest::Client, address: &str, timeout: Duration) -> Client {
        Client {
            http,
            address: address.trim_end_matches('/').to_string(),
            timeout,
        }
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// An instant query at `at_ms`.
    pub async fn query(&self, query: &str, at_ms: i64) -> Result<QueryData, PromError> {
        self.get(
            "/api/v1/query",
            &[("query", query.to_string()), ("time", secs(at_ms))],
        )
        .await
    }

    /// A range query over `[start_ms, end_ms]` every `step_ms`.
    pub async fn query_range(
        &self,
        query: &str,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
    ) -> Result<QueryData, PromError> {
        self.get(
            "/api/v1/query_range",
            &[
                ("query", query.to_string()),
                ("start", secs(start_ms)),
                ("end", secs(end_ms)),
                ("step", secs(step_ms.max(1))),
            ],
        )
        .await
    }

    async fn get(&self, path: &str, params: &[(&str, String)]) -> Result<QueryData, PromError> {
        let address = self.address.clone();
        let unreachable = |e: reqwest::Error| PromError::Unreachable {
            address: address.clone(),
            reason: error_chain(&e),
        };
        let mut r = self
            .http
            .get(format!("{}{path}", self.address))
            .query(params)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(unreachable)?;
        let status = r.status().as_u16();
        let mut body = Vec::new();
        while let Some(chunk) = r.chunk().await.map_err(unreachable)? {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(PromError::BadAnswer {
                    address,
                    status,
                    reason: format!("the answer is larger than {MAX_ANSWER_BYTES} bytes"),
                });
            }
            body.extend_from_slice(&chunk);
        }
        match parse(&body) {
            Ok(Answer::Success { data, .. }) if (200..300).contains(&status) => Ok(data),
            Ok(Answer::Success { .. }) => Err(PromError::BadAnswer {
                address,
                status,
                reason: "a success status in the body of an error answer".into(),
            }),
            Ok(Answer::Error { error_type, error }) => Err(PromError::Refused {
                address,
                status,
                error_type,
                error: bellwether_model::text::quote(&error),
            }),
            Err(e) => Err(PromError::BadAnswer {
                address,
                status,
                reason: format!(
                    "{e} (the answer began {})",
                    bellwether_model::text::quote(&String::from_utf8_lossy(
                        &body[..body.len().min(120)]
                    ))
                ),
            }),
        }
    }
}

/// Milliseconds as the seconds Prometheus takes (`1712345678.123`).
fn secs(ms: i64) -> String {
    let sign = if ms < 0 { "-" } else { "" };
    let a = ms.unsigned_abs();
    format!("{sign}{}.{:03}", a / 1000, a % 1000)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = c.source();
    }
    s
}

#[cfg(test)]
mod tests;
