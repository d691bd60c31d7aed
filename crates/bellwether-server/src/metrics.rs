//! Counters for `/metrics`, rendered in the Prometheus text format by hand: a few counters do
//! not need a metrics library.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

/// The server's counters. Labels are low-cardinality: routes are the route templates, never
/// the concrete host names.
#[derive(Debug, Default)]
pub struct Metrics {
    pub samples_ingested: AtomicU64,
    pub samples_dropped_by_agents: AtomicU64,
    pub profiles_received: AtomicU64,
    pub drift_recomputations: AtomicU64,
    pub enrolments: AtomicU64,
    pub baselines_captured: AtomicU64,
    requests: Mutex<BTreeMap<(String, u16), u64>>,
}

impl Metrics {
    /// Adds `n`, saturating at `u64::MAX`: a count some client reports (an agent's `dropped`)
    /// can be anything, and a wrapped counter would read as a reset.
    pub fn add(counter: &AtomicU64, n: u64) {
        let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
            Some(c.saturating_add(n))
        });
    }

    fn count_request(&self, route: &str, status: u16) {
        let mut map = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry((route.to_string(), status)).or_insert(0) += 1;
    }

    /// The Prometheus text exposition of every counter, plus the host gauge.
    pub fn render(&self, hosts: i64) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        counter(
            "bellwether_samples_ingested_total",
            "Metric samples stored from agents.",
            self.samples_ingested.load(Ordering::Relaxed),
        );
        counter(
            "bellwether_samples_dropped_by_agents_total",
            "Samples agents reported dropping while the server was away.",
            self.samples_dropped_by_agents.load(Ordering::Relaxed),
        );
        counter(
            "bellwether_profiles_received_total",
            "Host profiles received from agents.",
            self.profiles_received.load(Ordering::Relaxed),
        );
        counter(
            "bellwether_drift_recomputations_total",
            "Drift scores recomputed.",
            self.drift_recomputations.load(Ordering::Relaxed),
        );
        counter(
            "bellwether_enrolments_total",
            "Agent enrolments, first and renewed.",
            self.enrolments.load(Ordering::Relaxed),
        );
        counter(
            "bellwether_baselines_captured_total",
            "Baselines captured.",
            self.baselines_captured.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP bellwether_hosts Hosts enrolled.\n# TYPE bellwether_hosts gauge\nbellwether_hosts {hosts}"
        );
        let _ = writeln!(
            out,
            "# HELP bellwether_http_requests_total HTTP requests by route and status.\n# TYPE bellwether_http_requests_total counter"
        );
        let map = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        for ((route, status), n) in map.iter() {
            let _ = writeln!(
                out,
                "bellwether_http_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
                route.replace('\\', "\\\\").replace('"', "\\\"")
            );
        }
        out
    }
}

/// Counts each request by its route template and answer status.
pub async fn count_requests(
    State(metrics): State<std::sync::Arc<Metrics>>,
    req: Request,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let resp = next.run(req).await;
    metrics.count_request(&route, resp.status().as_u16());
    resp
}
