//! Dependency mirroring on the server (the fourth kind of change): the dependencies the
//! operator declares, and the long-lived `mirror` task ([`task::MirrorTask`]) that keeps each
//! one mirrored in proportion to its weight and health and switches its traffic when its
//! primary fails.
//!
//! **Declaring.** `POST /api/v1/mirror/dependencies` takes a `DependencySpec`: a body that is
//! not one is a 400 naming the field; a spec whose values are out of range is a 422 naming
//! the field; a primary that does not answer as its kind does (see [`reach`]) is a 422 naming
//! the endpoint; a name already declared is a 409. The dependency and its task are stored in
//! one transaction, and the task starts at once.
//!
//! **Changing.** `PATCH …/{name}` changes the policy (bounds, thresholds, mode): it is stored
//! with the dependency and handed to the running task; a policy the engine refuses is a 422.
//! The name, kind, primary and proxy are the dependency's identity and do not change (remove
//! it and declare it again). `POST …/{name}/failover` is the operator's switch, with a reason.
//! `DELETE …/{name}` marks it removed: its task routes to the primary only, retires the
//! mirrors it made and settles; the name is free again once it has.
//!
//! **Reading.** The list and the detail come from the dependency's row and its task's stored
//! state (the engine's status: weight, health, mode, instances, the switch history), so any
//! replica answers them.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bellwether_engine::mirror::{Command, InstanceStatus, MirrorEngine, Status, SwitchRecord};
use bellwether_model::mirror::{DepKind, DependencySpec, MirrorPolicy, Mode, Tier};
use bellwether_store::{
    DependencyCreated, DependencyRecord, DependencyRemoved, Event, EventFilter, NewTask,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::auth::{Operator, Viewer};
use crate::body::JsonBody;
use crate::error::ApiError;
use crate::{now_ms, AppState};

pub(crate) mod proxy;
pub mod reach;
pub(crate) mod task;

use task::MirrorTask;
pub use task::MIRROR;

/// The routes of this module, as (method, path); docs/api.md and docs/openapi.yaml describe
/// each (a test checks).
pub const MIRROR_ROUTES: &[(&str, &str)] = &[
    ("POST", "/api/v1/mirror/dependencies"),
    ("GET", "/api/v1/mirror/dependencies"),
    ("GET", "/api/v1/mirror/dependencies/{name}"),
    ("PATCH", "/api/v1/mirror/dependencies/{name}"),
    ("DELETE", "/api/v1/mirror/dependencies/{name}"),
    ("POST", "/api/v1/mirror/dependencies/{name}/failover"),
    ("GET", "/api/v1/mirror/dependencies/{name}/history"),
];

pub(crate) fn routes() -> axum::Router<AppState> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/api/v1/mirror/dependencies", post(create).get(list))
        .route(
            "/api/v1/mirror/dependencies/{name}",
            get(show).patch(set_policy).delete(remove),
        )
        .route(
            "/api/v1/mirror/dependencies/{name}/failover",
            post(failover),
        )
        .route("/api/v1/mirror/dependencies/{name}/history", get(history))
}

/// The most events a history answers with.
const MAX_LIMIT: i64 = 10_000;
/// The longest failover reason kept.
const MAX_REASON: usize = 500;

/// One dependency as listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DependencySummary {
    pub name: String,
    pub kind: DepKind,
    pub tier: Tier,
    /// The declared primary, `HOST:PORT`.
    pub declared_primary: String,
    /// The instance serving as primary now (its id) and its endpoint.
    pub primary: String,
    pub primary_endpoint: Option<String>,
    /// `running`, `paused`, `removing` or `removed`.
    pub phase: String,
    /// In [0, 1]: tier, measured request rate and declared impact.
    pub weight: f64,
    /// The primary's last health score in [0, 1]; `None` before the first observation.
    pub health: Option<f64>,
    pub mode: Mode,
    /// The replication factor kept (mirrors besides the primary).
    pub target_mirrors: u32,
    pub instances: Vec<InstanceStatus>,
    /// A switch in progress: its step.
    pub switching: Option<String>,
    pub last_switch: Option<SwitchRecord>,
    /// The `mirror` task that keeps it mirrored.
    pub task: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub removed_at_ms: Option<i64>,
}

/// One dependency in full: its spec, its summary and its switch history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DependencyDetail {
    pub spec: DependencySpec,
    #[serde(flatten)]
    pub summary: DependencySummary,
    /// Every switch kept in the task's state (the newest last; the event log keeps all).
    pub history: Vec<SwitchRecord>,
    /// The raw target before the hysteresis.
    pub target_raw: f64,
}

/// `PATCH …/{name}`: the policy fields to change (any subset of a `MirrorPolicy`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyPatch {
    #[serde(default)]
    pub policy: serde_json::Map<String, Value>,
}

/// `POST …/{name}/failover`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailoverRequest {
    /// Why (recorded with the switch). Required.
    #[serde(default)]
    pub reason: Option<String>,
    /// The mirror (its instance id) to switch to; the best caught-up mirror when absent.
    #[serde(default)]
    pub to: Option<String>,
}

/// `GET …/{name}/history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DependencyHistory {
    pub name: String,
    pub task: String,
    /// The switches kept in the task's state, oldest first.
    pub switches: Vec<SwitchRecord>,
    /// The task's `mirror.*` events (decisions with their reasons and figures), newest first.
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
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "name {} is not a dependency name: lower-case letters, digits and '-', 1 to 63 characters",
            bellwether_model::text::quote(name)
        )))
    }
}

fn random_suffix() -> String {
    let mut b = [0u8; 4];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
    hex::encode(b)
}

/// The engine stored for `rec`'s task.
async fn engine_of(state: &AppState, rec: &DependencyRecord) -> Result<MirrorEngine, ApiError> {
    let Some(t) = state.store.task(&rec.task_id).await? else {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "dependency {} names task {}, which is not in the store",
                rec.name, rec.task_id
            ),
        ));
    };
    Ok(task::load(&t)?.0)
}

fn summary(rec: &DependencyRecord, s: &Status) -> DependencySummary {
    DependencySummary {
        name: rec.name.clone(),
        kind: rec.spec.kind,
        tier: rec.spec.tier,
        declared_primary: rec.spec.primary.clone(),
        primary_endpoint: s
            .instances
            .iter()
            .find(|i| i.id == s.primary)
            .and_then(|i| i.endpoint.clone()),
        primary: s.primary.clone(),
        phase: task::phase_name(s.phase),
        weight: s.weight,
        health: s.health,
        mode: s.mode,
        target_mirrors: s.target_mirrors,
        instances: s.instances.clone(),
        switching: s.switching.clone(),
        last_switch: s.history.last().cloned(),
        task: rec.task_id.clone(),
        created_at_ms: rec.created_at_ms,
        updated_at_ms: rec.updated_at_ms,
        removed_at_ms: rec.removed_at_ms,
    }
}

fn detail(rec: &DependencyRecord, s: &Status) -> DependencyDetail {
    DependencyDetail {
        // The policy in force is the stored one (the task takes it in on its next step).
        spec: rec.spec.clone(),
        summary: summary(rec, s),
        history: s.history.clone(),
        target_raw: s.target_raw,
    }
}

async fn find(state: &AppState, name: &str) -> Result<DependencyRecord, ApiError> {
    check_name(name)?;
    state
        .store
        .dependency(name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no dependency named {name}")))
}

async fn create(
    State(state): State<AppState>,
    _auth: Operator,
    JsonBody(spec): JsonBody<DependencySpec>,
) -> Result<Response, ApiError> {
    spec.validate().map_err(|e| unprocessable(e.to_string()))?;
    if let Some(p) = &spec.proxy {
        if state.patches.proxy_token_file(&p.token).is_none() {
            return Err(unprocessable(format!(
                "proxy.token: no proxy token named {:?}; start the server with --proxy-token-file {}=FILE",
                p.token, p.token
            )));
        }
    }
    // A live name is refused before the primary is probed; a removed one is decided by the
    // store (free once its task settled).
    if let Some(existing) = state.store.dependency(&spec.name).await? {
        if !existing.is_removed() {
            return Err(exists(&existing));
        }
    }
    if let Err(why) = reach::check(spec.kind, &spec.primary, reach::REACH_TIMEOUT).await {
        return Err(unprocessable(format!(
            "primary {} ({}) is unreachable: {why}; a dependency is declared with a primary that answers",
            spec.primary,
            spec.kind.as_str()
        )));
    }
    let now = now_ms();
    let (engine, out) =
        MirrorEngine::new(spec.clone(), now).map_err(|e| unprocessable(e.to_string()))?;
    let id = format!("m-{}-{}", spec.name, random_suffix());
    let mut t = MirrorTask::new(id.clone(), engine, now);
    let first = task::first_step(&mut t, out, now);
    let rec = crate::task::step_record(&t, &first, None);
    let new = NewTask {
        id: id.clone(),
        kind: MIRROR.to_string(),
        model_version: None,
        plan_file: String::new(),
        plan_yaml: serde_json::to_string(&spec).expect("a spec serialises"),
        hosts: Vec::new(),
    };
    match state
        .store
        .create_dependency(&spec, &new, &rec, now)
        .await?
    {
        DependencyCreated::Exists(existing) => Err(exists(&existing)),
        DependencyCreated::Created(dep) => {
            if !rec.dispatches.is_empty() {
                state.tasks.actions.notify_waiters();
            }
            let status = t.status_of();
            crate::task::spawn(&state, t, first.effects);
            tracing::info!(dependency = %dep.name, task = %id, "Dependency declared; its mirror task runs.");
            Ok((StatusCode::CREATED, Json(detail(&dep, &status))).into_response())
        }
    }
}

fn exists(existing: &DependencyRecord) -> ApiError {
    if existing.is_removed() {
        ApiError::conflict(format!(
            "dependency {} was removed and its task {} is still retiring its mirrors; declare it again once that is done",
            existing.name, existing.task_id
        ))
    } else {
        ApiError::conflict(format!(
            "a dependency named {} exists already (task {}); change its policy with PATCH, or remove it first",
            existing.name, existing.task_id
        ))
    }
}

async fn list(
    State(state): State<AppState>,
    _auth: Viewer,
) -> Result<Json<Vec<DependencySummary>>, ApiError> {
    let mut out = Vec::new();
    for rec in state.store.dependencies(true).await? {
        let engine = engine_of(&state, &rec).await?;
        out.push(summary(&rec, &engine.status()));
    }
    Ok(Json(out))
}

async fn show(
    State(state): State<AppState>,
    _auth: Viewer,
    Path(name): Path<String>,
) -> Result<Json<DependencyDetail>, ApiError> {
    let rec = find(&state, &name).await?;
    let engine = engine_of(&state, &rec).await?;
    Ok(Json(detail(&rec, &engine.status())))
}

async fn set_policy(
    State(state): State<AppState>,
    _auth: Operator,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<DependencyDetail>, ApiError> {
    let raw: Value = crate::body::parse_json(&body)?;
    if let Value::Object(m) = &raw {
        const FIXED: &[&str] = &[
            "name",
            "kind",
            "primary",
            "host",
            "tier",
            "impact",
            "mirror_cost",
            "proxy",
        ];
        if let Some(k) = m.keys().find(|k| FIXED.contains(&k.as_str())) {
            return Err(unprocessable(format!(
                "{k}: only the policy of a dependency changes; remove it and declare it again to change its {k}"
            )));
        }
    }
    let patch: PolicyPatch = crate::body::parse_json(&body)?;
    if patch.policy.is_empty() {
        return Err(unprocessable(
            "policy: give at least one policy field to change (min_mirrors, max_mirrors, mode, switch_below…)",
        ));
    }
    let rec = find(&state, &name).await?;
    if rec.is_removed() {
        return Err(ApiError::conflict(format!(
            "dependency {name} was removed; its policy no longer changes"
        )));
    }
    let mut merged = serde_json::to_value(&rec.spec.policy).expect("a policy serialises");
    if let Value::Object(m) = &mut merged {
        for (k, v) in patch.policy {
            m.insert(k, v);
        }
    }
    let bytes =
        serde_json::to_vec(&serde_json::json!({ "policy": merged })).expect("JSON serialises");
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Merged {
        policy: MirrorPolicy,
    }
    let policy = crate::body::parse_json::<Merged>(&bytes)?.policy;
    let mut spec = rec.spec.clone();
    spec.policy = policy.clone();
    spec.validate().map_err(|e| unprocessable(e.to_string()))?;
    let Some(updated) = state.store.update_dependency(&spec, now_ms()).await? else {
        return Err(ApiError::conflict(format!(
            "dependency {name} was removed meanwhile; its policy no longer changes"
        )));
    };
    // The running task takes it in now; elsewhere (a follower) the leader's task reads it
    // from the row on its next interval.
    let status = match state
        .tasks
        .command::<MirrorTask>(&updated.task_id, Command::SetPolicy { policy })
        .await
    {
        Ok(s) => s,
        Err(e) if e.status == StatusCode::CONFLICT => engine_of(&state, &updated).await?.status(),
        Err(e) => return Err(e),
    };
    Ok(Json(detail(&updated, &status)))
}

async fn remove(
    State(state): State<AppState>,
    _auth: Operator,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    check_name(&name)?;
    let rec = match state.store.remove_dependency(&name, now_ms()).await? {
        DependencyRemoved::Unknown => {
            return Err(ApiError::not_found(format!("no dependency named {name}")))
        }
        DependencyRemoved::Removed(rec) => {
            let reason = "the operator removed the dependency".to_string();
            // Tell the running task now; otherwise it sees the mark on its next interval.
            let _ = state
                .tasks
                .command::<MirrorTask>(&rec.task_id, Command::Remove { reason })
                .await;
            rec
        }
        DependencyRemoved::AlreadyRemoved(rec) => rec,
    };
    let engine = engine_of(&state, &rec).await?;
    Ok((StatusCode::ACCEPTED, Json(detail(&rec, &engine.status()))).into_response())
}

async fn failover(
    State(state): State<AppState>,
    _auth: Operator,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<FailoverRequest>,
) -> Result<Json<DependencyDetail>, ApiError> {
    let reason = req.reason.as_deref().map(str::trim).unwrap_or_default();
    if reason.is_empty() {
        return Err(unprocessable(
            "reason: say why you switch (it is recorded with the switch)",
        ));
    }
    if reason.len() > MAX_REASON || reason.chars().any(char::is_control) {
        return Err(unprocessable(format!(
            "reason: at most {MAX_REASON} bytes, without control characters"
        )));
    }
    let rec = find(&state, &name).await?;
    if rec.is_removed() {
        return Err(ApiError::conflict(format!(
            "dependency {name} was removed; it is not switched any more"
        )));
    }
    let engine = engine_of(&state, &rec).await?;
    if let Some(to) = &req.to {
        let known = engine.status().instances.iter().any(|i| &i.id == to);
        if !known {
            return Err(unprocessable(format!(
                "to: dependency {name} has no instance {}",
                bellwether_model::text::quote(to)
            )));
        }
    }
    let status = state
        .tasks
        .command::<MirrorTask>(
            &rec.task_id,
            Command::Failover {
                to: req.to.clone(),
                reason: reason.to_string(),
            },
        )
        .await?;
    Ok(Json(detail(&rec, &status)))
}

async fn history(
    State(state): State<AppState>,
    _auth: Viewer,
    Path(name): Path<String>,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<DependencyHistory>, ApiError> {
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
    Ok(Json(DependencyHistory {
        name: rec.name.clone(),
        task: rec.task_id.clone(),
        switches: engine.status().history,
        events,
    }))
}
