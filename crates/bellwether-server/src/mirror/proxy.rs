//! The dependency's `bellwether proxy`, as the mirror task uses it: its per-backend counters
//! (the health inputs: requests, errors, latency, sessions) and the route that points its
//! writes at the primary.
//!
//! The admin token is read from its file (`--proxy-token-file NAME=FILE`, the same files
//! patches use) at every call; the stored state only ever holds the file's name. A backend
//! is matched to an instance by its address (`HOST:PORT`, the instance's endpoint).

use std::collections::BTreeMap;
use std::time::Duration;

use bellwether_engine::mirror::Backend;
use bellwether_model::mirror::ProxyRef;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::patch::proxy::read_token_file;
use crate::AppState;

/// The admin route that sets the primary and the readers atomically (helper mirror-proxy's
/// contract: `POST /roles` with `{"primary": ADDRESS, "readers": [ADDRESS...]}`).
pub const ROLES_PATH: &str = "/roles";

/// One backend's cumulative counters at one reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ProxyPoint {
    pub at_ms: i64,
    pub queries: u64,
    pub errors: u64,
    /// Sum of the query latencies, microseconds (the histogram's `sum_us`).
    pub latency_sum_us: u64,
    /// How many queries the histogram counted.
    pub latency_count: u64,
    /// Client sessions on it now.
    pub sessions: Option<u32>,
}

#[derive(Deserialize)]
struct BackendView {
    address: String,
    metrics: MetricsView,
}

#[derive(Deserialize)]
struct MetricsView {
    queries: u64,
    query_errors: u64,
    #[serde(default)]
    active_connections: Option<u64>,
    #[serde(default)]
    query_latency_histogram: Option<Hist>,
}

#[derive(Deserialize)]
struct Hist {
    counts: Vec<u64>,
    sum_us: u64,
}

/// Requests per second, error share and mean latency (ms) between two readings; `None`
/// where the interval holds no data (no time passed, no request, or counters that went
/// back: a restarted proxy).
pub(crate) fn rates(
    prev: &ProxyPoint,
    now: &ProxyPoint,
) -> (Option<f64>, Option<f64>, Option<f64>) {
    let dt = (now.at_ms - prev.at_ms) as f64 / 1000.0;
    if dt <= 0.0 || now.queries < prev.queries || now.errors < prev.errors {
        return (None, None, None);
    }
    let q = (now.queries - prev.queries) as f64;
    let e = (now.errors - prev.errors) as f64;
    let rps = Some(q / dt);
    let err = (q > 0.0).then(|| (e / q).clamp(0.0, 1.0));
    let lat = match (
        now.latency_count.checked_sub(prev.latency_count),
        now.latency_sum_us.checked_sub(prev.latency_sum_us),
    ) {
        (Some(n), Some(s)) if n > 0 => Some(s as f64 / n as f64 / 1000.0),
        _ => None,
    };
    (rps, err, lat)
}

struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

fn client(state: &AppState, p: &ProxyRef) -> Result<Client, String> {
    let file = state.patches.proxy_token_file(&p.token).ok_or_else(|| {
        format!(
            "no proxy token named {:?}: start the server with --proxy-token-file {}=FILE",
            p.token, p.token
        )
    })?;
    let token = read_token_file(&file).map_err(|e| format!("proxy admin token: {e}"))?;
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| e.to_string())?;
    Ok(Client {
        base: p.admin_url.trim_end_matches('/').to_string(),
        token,
        http,
    })
}

impl Client {
    async fn call(&self, req: reqwest::RequestBuilder, timeout: Duration) -> Result<Value, String> {
        let resp = req
            .bearer_auth(&self.token)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| format!("cannot reach the proxy's admin API at {}: {e}", self.base))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            Ok(body)
        } else {
            Err(format!(
                "the proxy's admin API at {} answered {status}: {}",
                self.base,
                body["error"].as_str().unwrap_or("no message")
            ))
        }
    }
}

/// The proxy's counters of each instance (by id) whose endpoint is one of its backends.
pub(crate) async fn backends(
    state: &AppState,
    p: &ProxyRef,
    endpoints: &BTreeMap<String, String>,
    timeout: Duration,
) -> Result<BTreeMap<String, ProxyPoint>, String> {
    let c = client(state, p)?;
    let v = c
        .call(c.http.get(format!("{}/backends", c.base)), timeout)
        .await?;
    let at_ms = crate::now_ms();
    let views: Vec<BackendView> =
        serde_json::from_value(v).map_err(|e| format!("the proxy's backends: {e}"))?;
    let mut out = BTreeMap::new();
    for (id, endpoint) in endpoints {
        if let Some(b) = views.iter().find(|b| &b.address == endpoint) {
            let (sum, count) = b
                .metrics
                .query_latency_histogram
                .as_ref()
                .map_or((0, 0), |h| (h.sum_us, h.counts.iter().sum()));
            out.insert(
                id.clone(),
                ProxyPoint {
                    at_ms,
                    queries: b.metrics.queries,
                    errors: b.metrics.query_errors,
                    latency_sum_us: sum,
                    latency_count: count,
                    sessions: b
                        .metrics
                        .active_connections
                        .map(|n| n.min(u32::MAX as u64) as u32),
                },
            );
        }
    }
    Ok(out)
}

/// Points the proxy's writes at `primary` and, in active-active, reads also at `readers`.
pub(crate) async fn route(
    state: &AppState,
    p: &ProxyRef,
    primary: &Backend,
    readers: &[Backend],
) -> Result<Value, String> {
    let c = client(state, p)?;
    let body = json!({
        "primary": primary.endpoint,
        "readers": readers.iter().map(|r| r.endpoint.clone()).collect::<Vec<_>>(),
    });
    let answer = c
        .call(
            c.http.post(format!("{}{ROLES_PATH}", c.base)).json(&body),
            Duration::from_secs(10),
        )
        .await?;
    Ok(json!({ "routed": true, "primary": primary.endpoint, "proxy": answer }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(at_ms: i64, queries: u64, errors: u64, sum: u64, count: u64) -> ProxyPoint {
        ProxyPoint {
            at_ms,
            queries,
            errors,
            latency_sum_us: sum,
            latency_count: count,
            sessions: None,
        }
    }

    #[test]
    fn rates_are_over_the_interval_and_none_without_data() {
        let a = point(1_000, 100, 1, 50_000, 100);
        let b = point(3_000, 300, 11, 450_000, 300);
        let (rps, err, lat) = rates(&a, &b);
        assert_eq!(rps, Some(100.0));
        assert_eq!(err, Some(0.05));
        assert_eq!(lat, Some(2.0));
        // No request in the interval: a rate of 0, but no error share and no latency.
        assert_eq!(
            rates(&b, &point(4_000, 300, 11, 450_000, 300)),
            (Some(0.0), None, None)
        );
        // A restarted proxy (counters back to 0) and no time passed: no data.
        assert_eq!(rates(&b, &point(5_000, 3, 0, 10, 3)), (None, None, None));
        assert_eq!(rates(&b, &b), (None, None, None));
    }
}
