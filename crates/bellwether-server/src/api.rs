//! Routes and handlers. Every handler takes its token extractor first and its body last, so
//! a request with a bad token is refused before its body is read.

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use bellwether_model::{DriftScore, HostName, HostProfile};
use bellwether_store::Enrolment;
use serde::Deserialize;
use tracing::Instrument;

use crate::auth::{Agent, Enroller, Operator, Viewer};
use crate::body::JsonBody;
use crate::drift::{self, Trigger};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::tokens::generate_token;
use crate::types::*;
use crate::{now_ms, AppState};

/// Every route the API serves, as (method, path template). `routes` is built from this list,
/// and a test checks that docs/api.md and docs/openapi.yaml describe each entry. Who may call
/// each is in `auth::RULES`.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    ("POST", "/api/v1/enrol"),
    ("POST", "/api/v1/agent/profile"),
    ("POST", "/api/v1/agent/samples"),
    ("GET", "/api/v1/hosts"),
    ("GET", "/api/v1/hosts/{name}"),
    ("GET", "/api/v1/hosts/{name}/profile"),
    ("GET", "/api/v1/hosts/{name}/baseline"),
    ("GET", "/api/v1/hosts/{name}/drift"),
    ("GET", "/api/v1/hosts/{name}/samples"),
    ("POST", "/api/v1/baselines"),
    ("GET", "/api/v1/fleet/drift"),
    ("GET", "/api/v1/events"),
    ("GET", "/api/v1/events/stream"),
    ("GET", "/api/v1/whoami"),
    ("GET", "/api/v1/tokens"),
    ("POST", "/api/v1/tokens"),
    ("DELETE", "/api/v1/tokens/{id}"),
];

pub fn routes() -> Router<AppState> {
    let mut router = Router::new();
    for &(method, path) in ROUTES {
        let handler = match (method, path) {
            ("GET", "/healthz") => get(healthz),
            ("GET", "/metrics") => get(metrics),
            ("POST", "/api/v1/enrol") => post(enrol),
            ("POST", "/api/v1/agent/profile") => post(agent_profile),
            ("POST", "/api/v1/agent/samples") => post(agent_samples),
            ("GET", "/api/v1/hosts") => get(list_hosts),
            ("GET", "/api/v1/hosts/{name}") => get(get_host),
            ("GET", "/api/v1/hosts/{name}/profile") => get(host_profile),
            ("GET", "/api/v1/hosts/{name}/baseline") => get(host_baseline),
            ("GET", "/api/v1/hosts/{name}/drift") => get(host_drift),
            ("GET", "/api/v1/hosts/{name}/samples") => get(host_samples),
            ("POST", "/api/v1/baselines") => post(capture_baselines),
            ("GET", "/api/v1/fleet/drift") => get(fleet_drift),
            ("GET", "/api/v1/events") => get(events),
            ("GET", "/api/v1/events/stream") => get(crate::stream::events_stream),
            ("GET", "/api/v1/whoami") => get(whoami),
            ("GET", "/api/v1/tokens") => get(crate::tokens::list),
            ("POST", "/api/v1/tokens") => post(crate::tokens::create),
            ("DELETE", "/api/v1/tokens/{id}") => delete(crate::tokens::revoke),
            _ => unreachable!("ROUTES lists {method} {path} without a handler"),
        };
        router = router.route(path, handler);
    }
    router
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
}

async fn no_route(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!(
        "no endpoint {method} {}; see docs/api.md",
        uri.path()
    ))
}

async fn wrong_method(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} does not accept {method}; see docs/api.md", uri.path()),
    )
}

fn path_host(name: &str) -> Result<HostName, ApiError> {
    HostName::new(name).map_err(|e| ApiError::bad_request(format!("bad host name in path: {e}")))
}

/// Liveness, with this replica's role, the leader it knows and the lease epoch.
async fn healthz(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(crate::leader::health(&state))
}

async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let hosts = state.store.count_hosts().await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(hosts),
    )
        .into_response())
}

async fn enrol(
    State(state): State<AppState>,
    _auth: Enroller,
    JsonBody(req): JsonBody<EnrolRequest>,
) -> Result<Json<EnrolResponse>, ApiError> {
    if let Some(a) = &req.address {
        bellwether_model::wire::check_host_address(a).map_err(ApiError::bad_request)?;
    }
    let token = generate_token();
    let outcome = state
        .store
        .enrol(&req.name, &req.labels, &token, now_ms())
        .await?;
    // The address as the agent declares it now: one restarted without --address has none.
    state
        .store
        .set_host_address(&req.name, req.address.as_deref())
        .await?;
    Metrics::add(&state.metrics.enrolments, 1);
    tracing::info!(host = %req.name, renewed = (outcome == Enrolment::Renewed), "Enrolled a host.");
    Ok(Json(EnrolResponse {
        host: req.name,
        agent_token: token,
    }))
}

async fn agent_profile(
    State(state): State<AppState>,
    Agent(host): Agent,
    JsonBody(profile): JsonBody<HostProfile>,
) -> Result<StatusCode, ApiError> {
    let span = tracing::info_span!("host", host = %host);
    async {
        let changed = state.store.put_profile(&host, &profile, now_ms()).await?;
        Metrics::add(&state.metrics.profiles_received, 1);
        tracing::debug!(changed, "Stored a profile.");
        drift::recompute(&state, &host, Trigger::Profile).await?;
        Ok(StatusCode::NO_CONTENT)
    }
    .instrument(span)
    .await
}

async fn agent_samples(
    State(state): State<AppState>,
    Agent(host): Agent,
    JsonBody(req): JsonBody<SamplesRequest>,
) -> Result<(StatusCode, Json<SamplesResponse>), ApiError> {
    let span = tracing::info_span!("host", host = %host);
    async {
        let now = now_ms();
        // The batch and its `samples_dropped` event commit together: a refused batch stores
        // neither, so the agent's resend duplicates nothing.
        check_sample_times(&req.samples, now, &state)?;
        let accepted = state
            .store
            .ingest_samples(&host, &req.samples, req.dropped, now)
            .await?;
        Metrics::add(&state.metrics.samples_ingested, accepted);
        if req.dropped > 0 {
            Metrics::add(&state.metrics.samples_dropped_by_agents, req.dropped);
            tracing::warn!(
                dropped = req.dropped,
                "Agent dropped samples while the server was away."
            );
        }
        if accepted > 0 {
            drift::recompute(&state, &host, Trigger::Samples).await?;
        }
        Ok((StatusCode::ACCEPTED, Json(SamplesResponse { accepted })))
    }
    .instrument(span)
    .await
}

/// Refuses a batch holding a sample whose timestamp is older than `--sample-max-age` or further
/// ahead than `--sample-max-ahead` of the server's clock, naming the first such sample. The
/// metric window is anchored on a host's newest sample, so `ts_ms = i64::MAX` would otherwise
/// freeze that host's metrics for ever.
fn check_sample_times(
    samples: &[bellwether_model::MetricSample],
    now_ms: i64,
    state: &AppState,
) -> Result<(), ApiError> {
    let (age, ahead) = (state.sample_max_age_ms, state.sample_max_ahead_ms);
    for (i, s) in samples.iter().enumerate() {
        let diff = i128::from(s.ts_ms) - i128::from(now_ms);
        let problem = if diff > i128::from(ahead) {
            format!(
                "{} ahead of the server's clock; samples may be at most {} ahead \
                 (server setting --sample-max-ahead)",
                span(diff),
                span(i128::from(ahead))
            )
        } else if -diff > i128::from(age) {
            format!(
                "{} behind the server's clock; samples may be at most {} old \
                 (server setting --sample-max-age)",
                span(-diff),
                span(i128::from(age))
            )
        } else {
            continue;
        };
        return Err(ApiError::bad_request(format!(
            "invalid JSON body at `samples[{i}].ts_ms`: {} is {problem}",
            s.ts_ms
        )));
    }
    Ok(())
}

/// A span of milliseconds in whole units, rounded down: `5m`, `25h`, `106751991167d`. A unit
/// is used when the span is a whole number of it or at least two of it.
fn span(ms: i128) -> String {
    const UNITS: [(i128, &str); 4] = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1000, "s"),
    ];
    for (size, unit) in UNITS {
        if ms >= 2 * size || (ms > 0 && ms % size == 0) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

async fn list_hosts(
    State(state): State<AppState>,
    _auth: Viewer,
) -> Result<Json<Vec<HostSummary>>, ApiError> {
    let hosts = state.store.list_hosts().await?;
    Ok(Json(
        hosts
            .into_iter()
            .map(|h| HostSummary {
                has_baseline: h.has_baseline(),
                name: h.name,
                labels: h.labels,
                last_seen_ms: h.last_seen_ms,
                overall_drift: h.overall_drift,
            })
            .collect(),
    ))
}

async fn get_host(
    State(state): State<AppState>,
    _auth: Viewer,
    Path(name): Path<String>,
) -> Result<Json<HostDetail>, ApiError> {
    let name = path_host(&name)?;
    let Some(rec) = state.store.get_host(&name).await? else {
        return Err(ApiError::not_found(format!("unknown host {name}")));
    };
    let profile = state.store.current_profile(&name).await?;
    Ok(Json(HostDetail {
        name: rec.name,
        labels: rec.labels,
        last_seen_ms: rec.last_seen_ms,
        profile,
        enrolled_at_ms: rec.enrolled_at_ms,
        baseline_at_ms: rec.baseline_at_ms,
        overall_drift: rec.overall_drift,
    }))
}

async fn host_profile(
    State(state): State<AppState>,
    _auth: Viewer,
    Path(name): Path<String>,
) -> Result<Json<HostProfile>, ApiError> {
    let name = path_host(&name)?;
    match state.store.current_profile(&name).await? {
        Some(p) => Ok(Json(p)),
        None => Err(ApiError::not_found(format!(
            "host {name} has sent no profile yet"
        ))),
    }
}

async fn host_baseline(
    State(state): State<AppState>,
    _auth: Viewer,
    Path(name): Path<String>,
) -> Result<Json<HostProfile>, ApiError> {
    let name = path_host(&name)?;
    match state.store.baseline(&name).await? {
        Some(p) => Ok(Json(p)),
        None => Err(ApiError::not_found(format!(
            "host {name} has no baseline; capture one with `bellwether baseline capture --host {name}`"
        ))),
    }
}

async fn host_drift(
    State(state): State<AppState>,
    _auth: Viewer,
    Path(name): Path<String>,
) -> Result<Json<DriftScore>, ApiError> {
    let name = path_host(&name)?;
    if let Some(stored) = state.store.drift(&name).await? {
        return Ok(Json(stored.score));
    }
    match drift::recompute(&state, &name, Trigger::Read).await? {
        Some(score) => Ok(Json(score)),
        None => Err(ApiError::conflict(format!(
            "host {name} has no baseline yet; capture one with `bellwether baseline capture --host {name}`"
        ))),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SamplesQuery {
    metric: Option<String>,
    /// Only samples after this time (ms since the epoch, agent time).
    after_ms: Option<i64>,
    /// Only samples at or before this time.
    before_ms: Option<i64>,
    limit: Option<i64>,
    /// Only samples from this source: `agent` (what the host's agent sent) or `prometheus`
    /// (what a rollout's analysis read from Prometheus); default both.
    source: Option<String>,
}

/// The default and the largest `limit` of `GET /api/v1/hosts/{name}/samples`.
const SAMPLES_DEFAULT_LIMIT: i64 = 2_000;
const SAMPLES_MAX_LIMIT: i64 = 10_000;

/// One metric's samples of a host in a time range, oldest first: what the dashboard draws
/// against a failed host's band.
async fn host_samples(
    State(state): State<AppState>,
    _auth: Viewer,
    Path(name): Path<String>,
    q: Result<Query<SamplesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let name = path_host(&name)?;
    let Query(q) =
        q.map_err(|e| ApiError::bad_request(format!("bad query string: {}", e.body_text())))?;
    let Some(metric) = q.metric else {
        return Err(ApiError::bad_request(
            "give `metric`, the name of one metric (such as `svc_error_ratio`)",
        ));
    };
    let ok = !metric.is_empty()
        && metric.len() <= 128
        && metric
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b));
    if !ok {
        return Err(ApiError::bad_request(format!(
            "bad metric {metric:?}: a metric name is 1 to 128 of A-Z, a-z, 0-9, `_`, `.`, `:` and `-`"
        )));
    }
    let limit = q.limit.unwrap_or(SAMPLES_DEFAULT_LIMIT);
    if !(1..=SAMPLES_MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit {limit} is outside 1..={SAMPLES_MAX_LIMIT}"
        )));
    }
    let after = q.after_ms.unwrap_or(i64::MIN);
    let before = q.before_ms.unwrap_or(i64::MAX);
    if after >= before {
        return Err(ApiError::bad_request(format!(
            "after_ms {after} is not before before_ms {before}"
        )));
    }
    if let Some(s) = q.source.as_deref() {
        if !matches!(s, "agent" | "prometheus") {
            return Err(ApiError::bad_request(format!(
                "bad source {}: give `agent` or `prometheus`",
                bellwether_model::text::quote(s)
            )));
        }
    }
    let samples = state
        .store
        .metric_samples(&name, &metric, after, before, limit, q.source.as_deref())
        .await?;
    let points: Vec<serde_json::Value> = samples
        .into_iter()
        .map(|(t, v, source)| serde_json::json!({"ts_ms": t, "value": v, "source": source}))
        .collect();
    Ok(Json(
        serde_json::json!({"host": name, "metric": metric, "samples": points}),
    ))
}

async fn capture_baselines(
    State(state): State<AppState>,
    _auth: Operator,
    JsonBody(req): JsonBody<BaselineRequest>,
) -> Result<Json<BaselineResponse>, ApiError> {
    let hosts: Vec<HostName> = match (req.all, req.hosts.is_empty()) {
        (true, true) => state
            .store
            .list_hosts()
            .await?
            .into_iter()
            .map(|h| h.name)
            .collect(),
        (false, false) => {
            // Every named host must exist before anything is captured.
            for h in &req.hosts {
                if state.store.get_host(h).await?.is_none() {
                    return Err(ApiError::not_found(format!("unknown host {h}")));
                }
            }
            req.hosts
        }
        (true, false) => {
            return Err(ApiError::bad_request(
                "give either `hosts` or `all: true`, not both",
            ))
        }
        (false, true) => {
            return Err(ApiError::bad_request(
                "give `hosts` (a non-empty list of host names) or `all: true`",
            ))
        }
    };
    let mut captured = Vec::new();
    let mut skipped = Vec::new();
    for host in hosts {
        let Some(profile) = drift::effective_profile(&state, &host).await? else {
            skipped.push(Skipped {
                host,
                reason: "no profile received yet".into(),
            });
            continue;
        };
        state.store.set_baseline(&host, &profile, now_ms()).await?;
        Metrics::add(&state.metrics.baselines_captured, 1);
        tracing::info!(host = %host, "Captured a baseline.");
        drift::recompute(&state, &host, Trigger::Baseline).await?;
        captured.push(host);
    }
    Ok(Json(BaselineResponse { captured, skipped }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FleetQuery {
    /// The label that makes hosts peers; `role` when absent.
    peer_label: Option<String>,
}

async fn fleet_drift(
    State(state): State<AppState>,
    _auth: Viewer,
    q: Result<Query<FleetQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<FleetDrift>, ApiError> {
    let Query(q) =
        q.map_err(|e| ApiError::bad_request(format!("bad query string: {}", e.body_text())))?;
    let label = q
        .peer_label
        .unwrap_or_else(|| crate::peers::DEFAULT_PEER_LABEL.to_string());
    if label.is_empty() {
        return Err(ApiError::bad_request("peer_label is empty"));
    }
    let hosts = state.store.list_hosts().await?;
    let labels: std::collections::BTreeMap<HostName, std::collections::BTreeMap<String, String>> =
        hosts
            .iter()
            .map(|h| (h.name.clone(), h.labels.clone()))
            .collect();
    let mut scores = state.store.all_drift().await?;
    let mut out: Vec<FleetHost> = hosts
        .into_iter()
        .map(|h| {
            let mut score = scores.remove(&h.name).map(|s| s.score).unwrap_or_default();
            score.findings.truncate(FLEET_TOP_FINDINGS);
            FleetHost {
                has_baseline: h.has_baseline(),
                name: h.name,
                labels: h.labels,
                score,
            }
        })
        .collect();
    out.sort_by(|a, b| {
        b.score
            .overall
            .get()
            .total_cmp(&a.score.overall.get())
            .then_with(|| a.name.cmp(&b.name))
    });
    let profiles: Vec<_> = state
        .store
        .current_profiles()
        .await?
        .into_iter()
        .map(|(name, profile)| {
            let l = labels.get(&name).cloned().unwrap_or_default();
            (name, l, profile)
        })
        .collect();
    let peer_outliers = crate::peers::outliers(&profiles, &label);
    Ok(Json(FleetDrift {
        hosts: out,
        peer_outliers,
    }))
}

/// The role and id of the token the request carries (the dashboard shows them).
async fn whoami(
    _auth: Viewer,
    principal: Option<axum::Extension<crate::auth::Principal>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Some(axum::Extension(p)) = principal else {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "GET /api/v1/whoami was served without its token check (a server bug)",
        ));
    };
    Ok(Json(
        serde_json::json!({"token_id": p.token_id, "role": p.kind.as_str()}),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    host: Option<String>,
    /// Only events of this kind, such as `audit`.
    kind: Option<String>,
    /// Only the events of one durable task (a rollout's or a patch's id).
    task: Option<String>,
    /// Only events with a larger id, oldest first (to follow the log).
    after: Option<i64>,
    limit: Option<i64>,
}

async fn events(
    State(state): State<AppState>,
    _auth: Viewer,
    q: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<bellwether_store::Event>>, ApiError> {
    let Query(q) =
        q.map_err(|e| ApiError::bad_request(format!("bad query string: {}", e.body_text())))?;
    let host = q.host.as_deref().map(path_host).transpose()?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit {limit} is outside 1..=10000"
        )));
    }
    if let Some(kind) = &q.kind {
        let ok = !kind.is_empty()
            && kind.len() <= 64
            && kind
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.');
        if !ok {
            return Err(ApiError::bad_request(format!(
                "bad kind {kind:?}: an event kind is 1 to 64 of a-z, 0-9, `_` and `.`, such as `audit`"
            )));
        }
    }
    if let Some(task) = &q.task {
        let ok = !task.is_empty()
            && task.len() <= 128
            && task
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        if !ok {
            return Err(ApiError::bad_request(format!(
                "bad task {task:?}: a task id is 1 to 128 of a-z, A-Z, 0-9, `-`, `_` and `.`, such as `r-1732500000000-a1b2c3`"
            )));
        }
    }
    let filter = bellwether_store::EventFilter {
        host: host.as_ref(),
        kind: q.kind.as_deref(),
        task: q.task.as_deref(),
        after_id: q.after,
    };
    Ok(Json(state.store.find_events(&filter, limit).await?))
}
