//! Data shadows on the server (the fifth kind of change): the shadows the operator declares,
//! and the long-lived `shadow` task ([`task::ShadowTask`]) that takes each one's rollback
//! points and rolls it back when a failure comes or is predicted.
//!
//! **Declaring.** `POST /api/v1/shadow/shadows` takes a `ShadowSpec`: a body that is not one
//! is a 400 naming the field; values out of range a 422 naming the field; a host that never
//! enrolled a 422 naming it; a name already declared a 409. The shadow and its task are
//! stored in one transaction; the task starts the shadow on the host's agent at once.
//!
//! **Steering.** `POST …/{name}/points` takes a point now; `POST …/{name}/rollback` rolls
//! back (to a point `p42` or a time, into a location, or by merit); `POST …/{name}/predict`
//! hands the task a prediction (a detector, the failure model or any system: source,
//! probability, expected failure time) and `POST …/{name}/failure` an observed failure;
//! `DELETE …/{name}` stops the shadow on the agent and settles its task.
//!
//! **Reading.** The list, the detail, the points and the history come from the shadow's row
//! and its task's stored state, so any replica answers them.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bellwether_engine::shadow::{
    Command, PointInfo, Prediction, RiskSource, RollbackRecord, ShadowEngine, Status, Target,
};
use bellwether_model::shadow::ShadowSpec;
use bellwether_store::{Event, EventFilter, NewTask, ShadowCreated, ShadowRecord, ShadowRemoved};
use serde::{Deserialize, Serialize};

use crate::auth::{Operator, Viewer};
use crate::body::JsonBody;
use crate::error::ApiError;
use crate::{now_ms, AppState};

pub(crate) mod risk;
pub(crate) mod task;

use task::ShadowTask;
pub use task::SHADOW;

/// The routes of this module, as (method, path); docs/api.md and docs/openapi.yaml describe
/// each (a test checks).
pub const SHADOW_ROUTES: &[(&str, &str)] = &[
    ("POST", "/api/v1/shadow/shadows"),
    ("GET", "/api/v1/shadow/shadows"),
    ("GET", "/api/v1/shadow/shadows/{name}"),
    ("DELETE", "/api/v1/shadow/shadows/{name}"),
    ("GET", "/api/v1/shadow/shadows/{name}/points"),
    ("POST", "/api/v1/shadow/shadows/{name}/points"),
    ("POST", "/api/v1/shadow/shadows/{name}/rollback"),
    ("POST", "/api/v1/shadow/shadows/{name}/predict"),
    ("POST", "/api/v1/shadow/shadows/{name}/failure"),
    ("GET", "/api/v1/shadow/shadows/{name}/history"),
];

pub(crate) fn routes() -> axum::Router<AppState> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/api/v1/shadow/shadows", post(create).get(list))
        .route("/api/v1/shadow/shadows/{name}", get(show).delete(remove))
        .route(
            "/api/v1/shadow/shadows/{name}/points",
            get(points).post(take_point),
        )
        .route("/api/v1/shadow/shadows/{name}/rollback", post(rollback))
        .route("/api/v1/shadow/shadows/{name}/predict", post(predict))
        .route("/api/v1/shadow/shadows/{name}/failure", post(failure))
        .route("/api/v1/shadow/shadows/{name}/history", get(history))
}

/// The most events a history answers with.
const MAX_LIMIT: i64 = 10_000;
/// The longest reason or detail kept.
const MAX_REASON: usize = 500;

/// One shadow as listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowSummary {
    pub name: String,
    pub host: String,
    pub kind: String,
    #[serde(rename = "type")]
    pub shadow_type: String,
    /// `starting`, `running`, `paused`, `removing` or `removed`.
    pub phase: String,
    pub pause_reason: Option<String>,
    /// The location served now.
    pub routed: String,
    pub points: usize,
    pub latest_point: Option<PointInfo>,
    /// A rollback in progress: its step.
    pub rolling_back: Option<String>,
    pub last_rollback: Option<RollbackRecord>,
    pub task: String,
    pub created_at_ms: i64,
    pub removed_at_ms: Option<i64>,
}

/// One shadow in full: its spec, its summary and its engine's status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowDetail {
    pub spec: ShadowSpec,
    #[serde(flatten)]
    pub summary: ShadowSummary,
    pub status: Status,
}

/// `POST …/{name}/points`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointRequest {
    #[serde(default)]
    pub reason: Option<String>,
}

/// `POST …/{name}/rollback`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// Why (recorded with the rollback). Required.
    #[serde(default)]
    pub reason: Option<String>,
    /// `p42` (a point), a time (RFC 3339 or Unix seconds with a fraction), or absent: the
    /// latest state.
    #[serde(default)]
    pub to: Option<String>,
    /// The location to restore and route to; by merit when absent.
    #[serde(default)]
    pub location: Option<String>,
}

/// `POST …/{name}/predict`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredictRequest {
    /// `failure_model`, `detector`, `rollout` or `external`.
    pub source: RiskSource,
    /// In [0, 1].
    pub probability: f64,
    /// When the failure is expected: RFC 3339 or Unix seconds (with a fraction).
    pub expected_failure: String,
    #[serde(default)]
    pub detail: Option<String>,
    /// The location expected to fail (the routed one when absent).
    #[serde(default)]
    pub location: Option<String>,
}

/// `POST …/{name}/failure`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailureRequest {
    /// When it failed: RFC 3339 or Unix seconds (with a fraction); now when absent.
    #[serde(default)]
    pub failed_at: Option<String>,
    pub reason: String,
    #[serde(default)]
    pub location: Option<String>,
}

/// `GET …/{name}/points`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowPoints {
    pub name: String,
    /// The points the task knows (those its agent reported), oldest first.
    pub points: Vec<PointInfo>,
    pub point_in_flight: bool,
}

/// `GET …/{name}/history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowHistory {
    pub name: String,
    pub task: String,
    /// The rollbacks kept in the task's state, oldest first.
    pub rollbacks: Vec<RollbackRecord>,
    /// The task's `shadow.*` events, newest first.
    pub events: Vec<Event>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    limit: Option<i64>,
}

fn unprocessable(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message)
}

fn check_name(name: &str) -> Result<(), ApiError> {
    if bellwether_model::shadow::is_name(name, 63) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "name {} is not a shadow name: lower-case letters, digits and '-', 1 to 63 characters",
            bellwether_model::text::quote(name)
        )))
    }
}

/// A reason or detail: trimmed, at most [`MAX_REASON`] bytes, no control characters.
fn check_text(field: &str, text: &str, required: bool) -> Result<String, ApiError> {
    let t = text.trim();
    if required && t.is_empty() {
        return Err(unprocessable(format!(
            "{field}: say why (it is recorded with the decision)"
        )));
    }
    if t.len() > MAX_REASON || t.chars().any(char::is_control) {
        return Err(unprocessable(format!(
            "{field}: at most {MAX_REASON} bytes, without control characters"
        )));
    }
    Ok(t.to_string())
}

/// A time given as RFC 3339 or Unix seconds (with a fraction), in ms since the epoch.
pub fn parse_time(field: &str, text: &str) -> Result<i64, ApiError> {
    let t = text.trim();
    let bad = || {
        unprocessable(format!(
            "{field}: {} is not a time (RFC 3339, such as 2026-12-05T18:00:00Z, or Unix seconds such as 1796493600.25)",
            bellwether_model::text::quote(text)
        ))
    };
    if let Ok(secs) = t.parse::<f64>() {
        if !secs.is_finite() || !(0.0..=9.0e12).contains(&secs) {
            return Err(bad());
        }
        return Ok((secs * 1000.0).round() as i64);
    }
    let dt = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
        .map_err(|_| bad())?;
    let ms = dt.unix_timestamp_nanos() / 1_000_000;
    if ms < 0 {
        return Err(bad());
    }
    i64::try_from(ms).map_err(|_| bad())
}

fn random_suffix() -> String {
    let mut b = [0u8; 4];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
    hex::encode(b)
}

async fn engine_of(state: &AppState, rec: &ShadowRecord) -> Result<ShadowEngine, ApiError> {
    let Some(t) = state.store.task(&rec.task_id).await? else {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "shadow {} names task {}, which is not in the store",
                rec.name, rec.task_id
            ),
        ));
    };
    Ok(task::load(&t)?.0)
}

fn summary(rec: &ShadowRecord, s: &Status) -> ShadowSummary {
    ShadowSummary {
        name: rec.name.clone(),
        host: rec.spec.host.clone(),
        kind: rec.spec.resource.kind.as_str().to_string(),
        shadow_type: rec.spec.shadow_type.as_str().to_string(),
        phase: task::phase_name(s.phase),
        pause_reason: s.pause_reason.clone(),
        routed: s.routed.clone(),
        points: s.points,
        latest_point: s.latest_point.clone(),
        rolling_back: s.rollback.as_ref().map(|r| {
            serde_json::to_value(r.step)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        }),
        last_rollback: s.history.last().cloned(),
        task: rec.task_id.clone(),
        created_at_ms: rec.created_at_ms,
        removed_at_ms: rec.removed_at_ms,
    }
}

fn detail(rec: &ShadowRecord, s: Status) -> ShadowDetail {
    ShadowDetail {
        spec: rec.spec.clone(),
        summary: summary(rec, &s),
        status: s,
    }
}

async fn find(state: &AppState, name: &str) -> Result<ShadowRecord, ApiError> {
    check_name(name)?;
    state
        .store
        .shadow(name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no shadow named {name}")))
}

/// A live shadow (not removed) for a command.
async fn find_live(state: &AppState, name: &str) -> Result<ShadowRecord, ApiError> {
    let rec = find(state, name).await?;
    if rec.is_removed() {
        return Err(ApiError::conflict(format!(
            "shadow {name} was removed; it takes no more commands"
        )));
    }
    Ok(rec)
}

async fn create(
    State(state): State<AppState>,
    _auth: Operator,
    JsonBody(spec): JsonBody<ShadowSpec>,
) -> Result<Response, ApiError> {
    spec.validate().map_err(|e| unprocessable(e.to_string()))?;
    if let Some(p) = &spec.routing.proxy {
        if state.patches.proxy_token_file(&p.token).is_none() {
            return Err(unprocessable(format!(
                "routing.proxy.token: no proxy token named {:?}; start the server with --proxy-token-file {}=FILE",
                p.token, p.token
            )));
        }
    }
    let host = bellwether_model::HostName::new(&spec.host)
        .map_err(|e| unprocessable(format!("host: {e}")))?;
    if state.store.get_host(&host).await?.is_none() {
        return Err(unprocessable(format!(
            "host: {} has never enrolled; a shadow lives on a host whose agent runs (`bellwether agent --state-dir …`)",
            spec.host
        )));
    }
    if let Some(existing) = state.store.shadow(&spec.name).await? {
        if !existing.is_removed() {
            return Err(exists(&existing));
        }
    }
    let now = now_ms();
    let (engine, out) =
        ShadowEngine::new(spec.clone(), now).map_err(|e| unprocessable(e.to_string()))?;
    let id = format!("s-{}-{}", spec.name, random_suffix());
    let mut t = ShadowTask::new(id.clone(), engine, now);
    let first = task::first_step(&mut t, out, now);
    let rec = crate::task::step_record(&t, &first, None);
    let new = NewTask {
        id: id.clone(),
        kind: SHADOW.to_string(),
        model_version: None,
        plan_file: String::new(),
        plan_yaml: serde_json::to_string(&spec).expect("a spec serialises"),
        hosts: Vec::new(),
    };
    match state.store.create_shadow(&spec, &new, &rec, now).await? {
        ShadowCreated::Exists(existing) => Err(exists(&existing)),
        ShadowCreated::Created(created) => {
            if !rec.dispatches.is_empty() {
                state.tasks.actions.notify_waiters();
            }
            let status = t.engine.status();
            crate::task::spawn(&state, t, first.effects);
            tracing::info!(shadow = %created.name, task = %id, "Shadow declared; its task runs.");
            Ok((StatusCode::CREATED, Json(detail(&created, status))).into_response())
        }
    }
}

fn exists(existing: &ShadowRecord) -> ApiError {
    if existing.is_removed() {
        ApiError::conflict(format!(
            "shadow {} was removed and its task {} is still stopping it; declare it again once that is done",
            existing.name, existing.task_id
        ))
    } else {
        ApiError::conflict(format!(
            "a shadow named {} exists already (task {}); remove it first",
            existing.name, existing.task_id
        ))
    }
}

async fn list(
    State(state): State<AppState>,
    _auth: Viewer,
) -> Result<Json<Vec<ShadowSummary>>, ApiError> {
    let mut out = Vec::new();
    for rec in state.store.shadows(true).await? {
        let engine = engine_of(&state, &rec).await?;
        out.push(summary(&rec, &engine.status()));
    }
    Ok(Json(out))
}

async fn show(
    State(state): State<AppState>,
    _auth: Viewer,
    Path(name): Path<String>,
) -> Result<Json<ShadowDetail>, ApiError> {
    let rec = find(&state, &name).await?;
    let engine = engine_of(&state, &rec).await?;
    Ok(Json(detail(&rec, engine.status())))
}

async fn remove(
    State(state): State<AppState>,
    _auth: Operator,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    check_name(&name)?;
    let rec = match state.store.remove_shadow(&name, now_ms()).await? {
        ShadowRemoved::Unknown => {
            return Err(ApiError::not_found(format!("no shadow named {name}")))
        }
        ShadowRemoved::Removed(rec) => {
            let reason = "the operator removed the shadow".to_string();
            // Tell the running task now; otherwise it sees the mark on its next interval.
            let _ = state
                .tasks
                .command::<ShadowTask>(&rec.task_id, Command::Remove { reason }.into())
                .await;
            rec
        }
        ShadowRemoved::AlreadyRemoved(rec) => rec,
    };
    let engine = engine_of(&state, &rec).await?;
    Ok((StatusCode::ACCEPTED, Json(detail(&rec, engine.status()))).into_response())
}

async fn points(
    State(state): State<AppState>,
    _auth: Viewer,
    Path(name): Path<String>,
) -> Result<Json<ShadowPoints>, ApiError> {
    let rec = find(&state, &name).await?;
    let engine = engine_of(&state, &rec).await?;
    Ok(Json(ShadowPoints {
        name: rec.name,
        points: engine.points().cloned().collect(),
        point_in_flight: engine.status().point_in_flight,
    }))
}

async fn take_point(
    State(state): State<AppState>,
    _auth: Operator,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<PointRequest>,
) -> Result<Json<ShadowDetail>, ApiError> {
    let reason = check_text(
        "reason",
        req.reason.as_deref().unwrap_or("on demand"),
        false,
    )?;
    let rec = find_live(&state, &name).await?;
    let status = state
        .tasks
        .command::<ShadowTask>(&rec.task_id, Command::TakePoint { reason }.into())
        .await?;
    Ok(Json(detail(&rec, status)))
}

async fn rollback(
    State(state): State<AppState>,
    _auth: Operator,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<RollbackRequest>,
) -> Result<Json<ShadowDetail>, ApiError> {
    let reason = check_text("reason", req.reason.as_deref().unwrap_or(""), true)?;
    let to = match req.to.as_deref().map(str::trim) {
        None | Some("latest") => None,
        Some(p)
            if p.starts_with('p') && p.len() > 1 && p[1..].bytes().all(|b| b.is_ascii_digit()) =>
        {
            Some(Target::Point(p.to_string()))
        }
        Some(t) => Some(Target::Time(parse_time("to", t)?)),
    };
    let rec = find_live(&state, &name).await?;
    if let Some(l) = &req.location {
        if rec.spec.location(l).is_none() {
            return Err(unprocessable(format!(
                "location: shadow {name} has no location {}",
                bellwether_model::text::quote(l)
            )));
        }
    }
    let status = state
        .tasks
        .command::<ShadowTask>(
            &rec.task_id,
            Command::Rollback {
                to,
                location: req.location.clone(),
                reason,
            }
            .into(),
        )
        .await?;
    Ok(Json(detail(&rec, status)))
}

async fn predict(
    State(state): State<AppState>,
    _auth: Operator,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<PredictRequest>,
) -> Result<Json<ShadowDetail>, ApiError> {
    if !req.probability.is_finite() || !(0.0..=1.0).contains(&req.probability) {
        return Err(unprocessable(format!(
            "probability: {} is outside [0, 1]",
            req.probability
        )));
    }
    let expected = parse_time("expected_failure", &req.expected_failure)?;
    let detail_text = check_text("detail", req.detail.as_deref().unwrap_or(""), false)?;
    let rec = find_live(&state, &name).await?;
    if let Some(l) = &req.location {
        if rec.spec.location(l).is_none() {
            return Err(unprocessable(format!(
                "location: shadow {name} has no location {}",
                bellwether_model::text::quote(l)
            )));
        }
    }
    let status = state
        .tasks
        .command::<ShadowTask>(
            &rec.task_id,
            task::ShadowCommand::Predict(Prediction {
                source: req.source,
                detail: detail_text,
                probability: req.probability,
                expected_failure_ms: expected,
                location: req.location.clone(),
            }),
        )
        .await?;
    Ok(Json(detail(&rec, status)))
}

async fn failure(
    State(state): State<AppState>,
    _auth: Operator,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<FailureRequest>,
) -> Result<Json<ShadowDetail>, ApiError> {
    let reason = check_text("reason", &req.reason, true)?;
    let failed_at = match &req.failed_at {
        Some(t) => parse_time("failed_at", t)?,
        None => now_ms(),
    };
    if failed_at > now_ms() + 60_000 {
        return Err(unprocessable(
            "failed_at: a failure observed in the future; give the time it was seen (or use predict)",
        ));
    }
    let rec = find_live(&state, &name).await?;
    if let Some(l) = &req.location {
        if rec.spec.location(l).is_none() {
            return Err(unprocessable(format!(
                "location: shadow {name} has no location {}",
                bellwether_model::text::quote(l)
            )));
        }
    }
    let status = state
        .tasks
        .command::<ShadowTask>(
            &rec.task_id,
            task::ShadowCommand::Failure {
                failed_at_ms: failed_at,
                location: req.location.clone(),
                reason,
            },
        )
        .await?;
    Ok(Json(detail(&rec, status)))
}

async fn history(
    State(state): State<AppState>,
    _auth: Viewer,
    Path(name): Path<String>,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ShadowHistory>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit: {limit} is outside 1 to {MAX_LIMIT}"
        )));
    }
    let rec = find(&state, &name).await?;
    let engine = engine_of(&state, &rec).await?;
    let events = state
        .store
        .find_events(
            &EventFilter {
                task: Some(&rec.task_id),
                ..Default::default()
            },
            limit,
        )
        .await?;
    Ok(Json(ShadowHistory {
        name: rec.name.clone(),
        task: rec.task_id.clone(),
        rollbacks: engine.status().history,
        events,
    }))
}
