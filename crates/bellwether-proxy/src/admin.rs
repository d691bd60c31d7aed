//! The admin HTTP API: backends (with health, admin state and metrics), connections, changes
//! of weight and admin state, drains, and the Prometheus `/metrics` page.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::AdminState;
use crate::metrics::{render_prometheus, PromBackend};
use crate::Shared;

/// The admin API's routes over a proxy's shared state.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/backends", get(backends))
        .route("/backends/{name}", get(backend).post(change))
        .route("/backends/{name}/drain", post(drain))
        .route("/connections", get(connections))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(shared)
}

pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener, stop: CancellationToken) {
    let app = router(shared);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
    {
        tracing::warn!(error = %e, "Admin API stopped with an error.");
    }
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

async fn backends(State(s): State<Arc<Shared>>) -> Response {
    Json(s.pool.view()).into_response()
}

async fn backend(State(s): State<Arc<Shared>>, Path(name): Path<String>) -> Response {
    match s.pool.view().into_iter().find(|b| b.name == name) {
        Some(b) => Json(b).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no backend named `{name}`")),
    }
}

/// The body of `POST /backends/{name}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Change {
    pub weight: Option<u32>,
    pub admin: Option<String>,
}

async fn change(
    State(s): State<Arc<Shared>>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let change: Change = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("body: {e}")),
    };
    let admin = match change
        .admin
        .as_deref()
        .map(str::parse::<AdminState>)
        .transpose()
    {
        Ok(a) => a,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("admin: {e}")),
    };
    match crate::set_backend(&s, &name, change.weight, admin) {
        Ok(()) => backend(State(s), Path(name)).await,
        Err(e) => error(StatusCode::NOT_FOUND, e.to_string()),
    }
}

#[derive(Debug, Deserialize)]
struct DrainQuery {
    /// Seconds to wait before closing the sessions that are left.
    timeout: Option<f64>,
}

async fn drain(
    State(s): State<Arc<Shared>>,
    Path(name): Path<String>,
    Query(q): Query<DrainQuery>,
) -> Response {
    if let Err(e) = crate::set_backend(&s, &name, None, Some(AdminState::Drain)) {
        return error(StatusCode::NOT_FOUND, e.to_string());
    }
    let limit = Duration::from_secs_f64(q.timeout.unwrap_or(30.0).clamp(0.0, 3600.0));
    Json(crate::wait_drained(&s, &name, limit).await).into_response()
}

async fn connections(State(s): State<Arc<Shared>>) -> Response {
    Json(s.registry.view()).into_response()
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    let list = s.pool.backends();
    let now = tokio::time::Instant::now();
    let states: Vec<(bool, bool, String, u32)> = list
        .iter()
        .map(|b| {
            let h = b.health();
            (
                h.up,
                h.ejected_until.is_some_and(|t| t > now),
                b.admin().to_string(),
                b.weight(),
            )
        })
        .collect();
    let prom: Vec<PromBackend<'_>> = list
        .iter()
        .zip(&states)
        .map(|(b, (up, ejected, admin, weight))| PromBackend {
            name: &b.name,
            weight: *weight,
            healthy: *up,
            ejected: *ejected,
            admin,
            metrics: &b.metrics,
        })
        .collect();
    let text = render_prometheus(
        &prom,
        s.pool.rejected.load(std::sync::atomic::Ordering::Relaxed),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
