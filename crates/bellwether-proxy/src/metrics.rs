//! Per-backend measurements: a lock-free latency histogram, counters, and their Prometheus
//! text form. Snapshots can be subtracted, so a watcher can take quantiles over a window.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::Serialize;

/// Bucket upper bounds in microseconds: 1, 1.25, 1.5, 2, 2.5, 3, 4, 5, 6, 8 per decade, from
/// 1 µs to 80 s, then +Inf. About 25 % resolution, enough for p50 and p99.
fn bounds() -> &'static [f64] {
    static B: std::sync::OnceLock<Vec<f64>> = std::sync::OnceLock::new();
    B.get_or_init(|| {
        let steps = [1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0];
        let mut v = Vec::new();
        for decade in 0..8 {
            for s in steps {
                v.push(s * 10f64.powi(decade));
            }
        }
        v
    })
}

const N_BUCKETS: usize = 81;

/// The upper bounds of the histogram's buckets in microseconds; the last bucket (index 80) is
/// everything above 80 s.
pub fn bucket_bounds_us() -> &'static [f64] {
    bounds()
}

/// A fixed-bucket histogram of durations.
#[derive(Debug)]
pub struct Histogram {
    counts: Vec<AtomicU64>,
    sum_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: (0..N_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn record(&self, d: Duration) {
        let us = d.as_secs_f64() * 1e6;
        let i = bounds().partition_point(|&b| b < us);
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us as u64, Relaxed);
    }

    pub fn snapshot(&self) -> HistSnapshot {
        HistSnapshot {
            counts: self.counts.iter().map(|c| c.load(Relaxed)).collect(),
            sum_us: self.sum_us.load(Relaxed),
        }
    }
}

/// A histogram's counts at one moment. The admin API serves it as
/// `{"counts": [...], "sum_us": N}` (bucket bounds as in [`bucket_bounds_us`]), so a client can
/// take quantiles over its own window with [`HistSnapshot::since`] and
/// [`HistSnapshot::quantile`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
pub struct HistSnapshot {
    pub counts: Vec<u64>,
    pub sum_us: u64,
}

impl HistSnapshot {
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The counts since `earlier`.
    pub fn since(&self, earlier: &HistSnapshot) -> HistSnapshot {
        HistSnapshot {
            counts: self
                .counts
                .iter()
                .enumerate()
                .map(|(i, c)| c.saturating_sub(earlier.counts.get(i).copied().unwrap_or(0)))
                .collect(),
            sum_us: self.sum_us.saturating_sub(earlier.sum_us),
        }
    }

    /// The q-quantile in seconds, interpolated inside its bucket; `None` without samples.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * total as f64).max(1.0);
        let mut seen = 0u64;
        let b = bounds();
        for (i, &c) in self.counts.iter().enumerate() {
            if c == 0 {
                continue;
            }
            if (seen + c) as f64 >= rank {
                let lo = if i == 0 { 0.0 } else { b[i - 1] };
                let hi = b.get(i).copied().unwrap_or(lo * 1.25);
                let frac = (rank - seen as f64) / c as f64;
                return Some((lo + (hi - lo) * frac) / 1e6);
            }
            seen += c;
        }
        None
    }
}

/// The counters of one backend.
#[derive(Debug, Default)]
pub struct BackendMetrics {
    /// Query (or Sync) to ReadyForQuery, PostgreSQL listeners only.
    pub query_latency: Histogram,
    /// Time to open a server connection.
    pub connect_latency: Histogram,
    pub queries: AtomicU64,
    pub query_errors: AtomicU64,
    pub connects: AtomicU64,
    pub connect_errors: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub bytes_to_backend: AtomicU64,
    pub bytes_to_client: AtomicU64,
    pub active: AtomicU64,
    pub rehomed_in: AtomicU64,
    pub rehomed_out: AtomicU64,
    pub graceful_closes: AtomicU64,
    /// Requests (Redis commands) sent to this backend whose reply has not come back yet.
    pub in_flight: AtomicU64,
    /// Reads retried on another backend after this one died under them (Redis read-only
    /// commands, PostgreSQL plain reads of an idle session).
    pub retried: AtomicU64,
    /// Redis writes answered with an error because this backend died before replying.
    pub lost_in_flight: AtomicU64,
    /// Samples for [`BackendMetrics::window`], one a second, the last [`WINDOW`] kept.
    samples: std::sync::Mutex<std::collections::VecDeque<Sample>>,
}

/// How far back [`BackendMetrics::window`] looks.
pub const WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
struct Sample {
    at: tokio::time::Instant,
    queries: u64,
    errors: u64,
    latency: HistSnapshot,
}

/// A backend's recent figures: over the last [`WINDOW`] (or since the proxy started, when
/// that is shorter). These are the mirror engine's health inputs.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct WindowView {
    /// The window's length.
    pub seconds: f64,
    pub requests_per_second: f64,
    /// Errors over requests in the window; null without requests.
    pub error_rate: Option<f64>,
    pub p50_seconds: Option<f64>,
    pub p99_seconds: Option<f64>,
}

/// A backend's measurements at one moment, as served by the admin API.
#[derive(Debug, Clone, Serialize, Default)]
pub struct MetricsSnapshot {
    pub queries: u64,
    pub query_errors: u64,
    pub connects: u64,
    pub connect_errors: u64,
    pub protocol_errors: u64,
    pub bytes_to_backend: u64,
    pub bytes_to_client: u64,
    pub active_connections: u64,
    pub rehomed_in: u64,
    pub rehomed_out: u64,
    pub graceful_closes: u64,
    pub in_flight: u64,
    pub retried: u64,
    pub lost_in_flight: u64,
    pub query_p50_seconds: Option<f64>,
    pub query_p99_seconds: Option<f64>,
    /// The query-latency histogram's cumulative counts: two snapshots give the quantiles of
    /// the window between them.
    #[serde(rename = "query_latency_histogram")]
    pub latency: HistSnapshot,
}

impl BackendMetrics {
    fn sample_now(&self) -> Sample {
        Sample {
            at: tokio::time::Instant::now(),
            queries: self.queries.load(Relaxed),
            errors: self.query_errors.load(Relaxed),
            latency: self.query_latency.snapshot(),
        }
    }

    /// Takes a sample for the window (called once a second), dropping those older than it.
    pub fn sample(&self) {
        let now = self.sample_now();
        let mut v = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        while v
            .front()
            .is_some_and(|s| now.at.duration_since(s.at) > WINDOW)
        {
            v.pop_front();
        }
        v.push_back(now);
    }

    /// Requests per second, error rate and latency quantiles between the oldest kept sample
    /// and now.
    pub fn window(&self) -> WindowView {
        let now = self.sample_now();
        let oldest = self
            .samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .front()
            .cloned();
        let Some(old) = oldest else {
            return WindowView::default();
        };
        let secs = now.at.duration_since(old.at).as_secs_f64();
        let n = now.queries.saturating_sub(old.queries);
        let errors = now.errors.saturating_sub(old.errors);
        let lat = now.latency.since(&old.latency);
        WindowView {
            seconds: secs,
            requests_per_second: if secs > 0.0 { n as f64 / secs } else { 0.0 },
            error_rate: (n > 0).then(|| errors as f64 / n as f64),
            p50_seconds: lat.quantile(0.5),
            p99_seconds: lat.quantile(0.99),
        }
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        let latency = self.query_latency.snapshot();
        MetricsSnapshot {
            queries: self.queries.load(Relaxed),
            query_errors: self.query_errors.load(Relaxed),
            connects: self.connects.load(Relaxed),
            connect_errors: self.connect_errors.load(Relaxed),
            protocol_errors: self.protocol_errors.load(Relaxed),
            bytes_to_backend: self.bytes_to_backend.load(Relaxed),
            bytes_to_client: self.bytes_to_client.load(Relaxed),
            active_connections: self.active.load(Relaxed),
            rehomed_in: self.rehomed_in.load(Relaxed),
            rehomed_out: self.rehomed_out.load(Relaxed),
            graceful_closes: self.graceful_closes.load(Relaxed),
            in_flight: self.in_flight.load(Relaxed),
            retried: self.retried.load(Relaxed),
            lost_in_flight: self.lost_in_flight.load(Relaxed),
            query_p50_seconds: latency.quantile(0.5),
            query_p99_seconds: latency.quantile(0.99),
            latency,
        }
    }
}

/// Samples every backend's counters once a second for [`BackendMetrics::window`].
pub(crate) async fn sample_loop(
    shared: std::sync::Arc<crate::Shared>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        for b in shared.pool.backends() {
            b.metrics.sample();
        }
    }
}

fn write_hist(out: &mut String, name: &str, backend: &str, h: &HistSnapshot) {
    let b = bounds();
    let mut cum = 0u64;
    for (i, c) in h.counts.iter().enumerate() {
        cum += c;
        // Export the 1-2.5-5 bounds only; the finer buckets stay internal.
        if let Some(&bound) = b.get(i) {
            let mantissa = bound / 10f64.powi(bound.log10().floor() as i32);
            if [1.0, 2.5, 5.0].iter().any(|m| (m - mantissa).abs() < 1e-9) {
                let _ = writeln!(
                    out,
                    "{name}_bucket{{backend=\"{backend}\",le=\"{}\"}} {cum}",
                    bound / 1e6
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "{name}_bucket{{backend=\"{backend}\",le=\"+Inf\"}} {cum}"
    );
    let _ = writeln!(
        out,
        "{name}_sum{{backend=\"{backend}\"}} {}",
        h.sum_us as f64 / 1e6
    );
    let _ = writeln!(out, "{name}_count{{backend=\"{backend}\"}} {cum}");
}

/// One backend's state for the Prometheus page.
pub struct PromBackend<'a> {
    pub name: &'a str,
    pub weight: u32,
    pub healthy: bool,
    pub ejected: bool,
    pub admin: &'a str,
    /// `primary`, `replica` or `none`.
    pub role: &'a str,
    pub metrics: &'a BackendMetrics,
}

/// Renders the Prometheus text exposition for all backends.
pub fn render_prometheus(backends: &[PromBackend<'_>], rejected_connections: u64) -> String {
    let mut out = String::new();
    type Read = fn(&BackendMetrics) -> u64;
    let counters: [(&str, &str, Read); 12] = [
        (
            "bellwether_proxy_queries_total",
            "Queries (Query or Sync to ReadyForQuery) completed.",
            |m| m.queries.load(Relaxed),
        ),
        (
            "bellwether_proxy_query_errors_total",
            "Query cycles that carried an ErrorResponse.",
            |m| m.query_errors.load(Relaxed),
        ),
        (
            "bellwether_proxy_connections_total",
            "Server connections opened.",
            |m| m.connects.load(Relaxed),
        ),
        (
            "bellwether_proxy_connect_errors_total",
            "Server connections that failed to open.",
            |m| m.connect_errors.load(Relaxed),
        ),
        (
            "bellwether_proxy_protocol_errors_total",
            "Sessions closed for a protocol violation.",
            |m| m.protocol_errors.load(Relaxed),
        ),
        (
            "bellwether_proxy_rehomed_in_total",
            "Sessions re-homed onto this backend.",
            |m| m.rehomed_in.load(Relaxed),
        ),
        (
            "bellwether_proxy_rehomed_out_total",
            "Sessions re-homed away from this backend.",
            |m| m.rehomed_out.load(Relaxed),
        ),
        (
            "bellwether_proxy_graceful_closes_total",
            "Stateful sessions closed at a transaction boundary.",
            |m| m.graceful_closes.load(Relaxed),
        ),
        (
            "bellwether_proxy_retried_total",
            "Reads (Redis read-only commands, PostgreSQL plain reads) retried on another backend after this one died.",
            |m| m.retried.load(Relaxed),
        ),
        (
            "bellwether_proxy_lost_in_flight_total",
            "Redis writes answered with an error because this backend died before replying.",
            |m| m.lost_in_flight.load(Relaxed),
        ),
        (
            "bellwether_proxy_in_flight_requests",
            "Redis commands sent to this backend and not answered yet.",
            |m| m.in_flight.load(Relaxed),
        ),
        (
            "bellwether_proxy_active_connections",
            "Client sessions now on this backend.",
            |m| m.active.load(Relaxed),
        ),
    ];
    for (name, help, get) in counters {
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for b in backends {
            let _ = writeln!(out, "{name}{{backend=\"{}\"}} {}", b.name, get(b.metrics));
        }
    }
    let _ = writeln!(out, "# HELP bellwether_proxy_bytes_total Bytes forwarded.\n# TYPE bellwether_proxy_bytes_total counter");
    for b in backends {
        let _ = writeln!(
            out,
            "bellwether_proxy_bytes_total{{backend=\"{}\",direction=\"to_backend\"}} {}",
            b.name,
            b.metrics.bytes_to_backend.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "bellwether_proxy_bytes_total{{backend=\"{}\",direction=\"to_client\"}} {}",
            b.name,
            b.metrics.bytes_to_client.load(Relaxed)
        );
    }
    let _ = writeln!(out, "# HELP bellwether_proxy_backend_up Whether the backend passes its health checks and is not ejected.\n# TYPE bellwether_proxy_backend_up gauge");
    for b in backends {
        let _ = writeln!(
            out,
            "bellwether_proxy_backend_up{{backend=\"{}\"}} {}",
            b.name,
            u8::from(b.healthy && !b.ejected)
        );
    }
    let _ = writeln!(out, "# HELP bellwether_proxy_backend_weight The backend's routing weight.\n# TYPE bellwether_proxy_backend_weight gauge");
    for b in backends {
        let _ = writeln!(
            out,
            "bellwether_proxy_backend_weight{{backend=\"{}\"}} {}",
            b.name, b.weight
        );
    }
    let _ = writeln!(out, "# HELP bellwether_proxy_backend_admin_state The operator's state (1 for the current one).\n# TYPE bellwether_proxy_backend_admin_state gauge");
    for b in backends {
        for s in ["ready", "drain", "maintenance"] {
            let _ = writeln!(
                out,
                "bellwether_proxy_backend_admin_state{{backend=\"{}\",state=\"{s}\"}} {}",
                b.name,
                u8::from(b.admin == s)
            );
        }
    }
    let _ = writeln!(out, "# HELP bellwether_proxy_backend_role The backend's role (1 for the current one).\n# TYPE bellwether_proxy_backend_role gauge");
    for b in backends {
        for r in ["primary", "replica", "none"] {
            let _ = writeln!(
                out,
                "bellwether_proxy_backend_role{{backend=\"{}\",role=\"{r}\"}} {}",
                b.name,
                u8::from(b.role == r)
            );
        }
    }
    for (name, help, pick) in [
        (
            "bellwether_proxy_query_duration_seconds",
            "Query (or Sync) to ReadyForQuery.",
            true,
        ),
        (
            "bellwether_proxy_connect_duration_seconds",
            "Time to open a server connection.",
            false,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for b in backends {
            let h = if pick {
                b.metrics.query_latency.snapshot()
            } else {
                b.metrics.connect_latency.snapshot()
            };
            write_hist(&mut out, name, b.name, &h);
        }
    }
    let _ = writeln!(out, "# HELP bellwether_proxy_rejected_connections_total Client connections refused for want of a backend.\n# TYPE bellwether_proxy_rejected_connections_total counter\nbellwether_proxy_rejected_connections_total {rejected_connections}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_over_a_window() {
        let h = Histogram::default();
        for _ in 0..99 {
            h.record(Duration::from_micros(100));
        }
        let before = h.snapshot();
        h.record(Duration::from_millis(50));
        for _ in 0..98 {
            h.record(Duration::from_micros(1000));
        }
        h.record(Duration::from_millis(50));
        let window = h.snapshot().since(&before);
        assert_eq!(window.total(), 100);
        let p50 = window.quantile(0.5).unwrap();
        assert!((0.0008..=0.001).contains(&p50), "{p50}");
        let p99 = window.quantile(0.99).unwrap();
        assert!((0.04..=0.05).contains(&p99), "{p99}");
        assert_eq!(HistSnapshot::default().quantile(0.5), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_gives_rates_over_the_last_seconds() {
        let m = BackendMetrics::default();
        assert_eq!(m.window(), WindowView::default());
        m.sample();
        for _ in 0..20 {
            m.queries.fetch_add(1, Relaxed);
            m.query_latency.record(Duration::from_millis(1));
        }
        m.query_errors.fetch_add(2, Relaxed);
        tokio::time::advance(Duration::from_secs(2)).await;
        let w = m.window();
        assert_eq!(w.seconds, 2.0);
        assert_eq!(w.requests_per_second, 10.0);
        assert_eq!(w.error_rate, Some(0.1));
        assert!(w.p99_seconds.unwrap() <= 0.001, "{w:?}");
        // Samples older than the window are dropped: the next window starts after them.
        for _ in 0..12 {
            m.sample();
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        let w = m.window();
        assert!(w.seconds <= WINDOW.as_secs_f64() + 1.0, "{w:?}");
        assert_eq!(w.requests_per_second, 0.0);
        assert_eq!(w.error_rate, None);
    }

    #[test]
    fn prometheus_text_has_every_family() {
        let m = BackendMetrics::default();
        m.query_latency.record(Duration::from_micros(300));
        m.queries.fetch_add(1, Relaxed);
        let text = render_prometheus(
            &[PromBackend {
                name: "a",
                weight: 5,
                healthy: true,
                ejected: false,
                admin: "ready",
                role: "primary",
                metrics: &m,
            }],
            0,
        );
        assert!(text.contains("bellwether_proxy_queries_total{backend=\"a\"} 1"));
        assert!(text.contains(
            "bellwether_proxy_query_duration_seconds_bucket{backend=\"a\",le=\"0.0005\"} 1"
        ));
        assert!(text.contains(
            "bellwether_proxy_query_duration_seconds_bucket{backend=\"a\",le=\"0.00025\"} 0"
        ));
        assert!(
            text.contains("bellwether_proxy_backend_admin_state{backend=\"a\",state=\"ready\"} 1")
        );
        assert!(text.contains("bellwether_proxy_backend_role{backend=\"a\",role=\"primary\"} 1"));
    }
}
