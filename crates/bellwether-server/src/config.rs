//! Configuration changes on the server: the sources agents report (PostgreSQL instances and
//! plain config files), the change stream, snapshots, the dependency graph, the simulator, and
//! config tasks (the `config` durable task kind, [`task::ConfigTask`]).
//!
//! **The change stream.** An agent sends the whole configuration of each source it watches
//! (`POST /api/v1/agent/config`, at start and on change). The server diffs it against the
//! latest stored report (`bellwether_config::snapshot::diff`) and records each changed key as a
//! `config.changed` event without a task (figures: a `ConfigChange` with source `instance` for
//! PostgreSQL, `disk` for a file), in the transaction that stores the report. The first report
//! of a source is its starting point and records no change.
//!
//! **Attribution rule.** A config task records its own changes (`config.changed` with source
//! `apply` or `revert` and the task's id). A changed key in a report is therefore *not*
//! recorded again when (a) an unsettled config task targets the same host and database and
//! its plan sets that key (the task is changing it now), or (b) the newest recorded change of
//! that key is a task's and set the value the report shows (the report shows the task's
//! change, arriving after the task finished). Every other changed key is recorded as an
//! `instance` (or `disk`) change: someone else changed it.
//!
//! Snapshots are `config.snapshot` events (figures `{"snapshot": Snapshot}`): on demand from
//! the latest report, or a task's own. Listing changes and snapshots queries those events.
//!
//! It never connects to a database and never runs a trial itself: the agent on the host does,
//! as a task's actions.

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bellwether_config::graph::Graph;
use bellwether_config::setting::{Catalog, ValueError};
use bellwether_config::snapshot::{ChangeSource, ConfigChange, Snapshot};
use bellwether_engine::config::{ConfigChangeEngine, ConfigPlan, EngineContext, Target, WatchSpec};
use bellwether_model::wire::{ConfigGraphRequest, ConfigReportRequest, ConfigSourceKind};
use bellwether_model::HostName;
use bellwether_store::{
    ConfigEventFilter, ConfigReport, ConfigReportRecord, NewEvent, NewTask, MAX_SOURCE_LEN,
};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::{Agent, Operator, Viewer};
use crate::body::JsonBody;
use crate::error::ApiError;
use crate::types::*;
use crate::{now_ms, AppState};

pub(crate) mod context;
pub(crate) mod task;

pub use task::CONFIG;
use task::{Command, ConfigTask};

/// The routes of this module, as (method, path); docs/api.md and docs/openapi.yaml describe
/// each (a test checks).
pub const CONFIG_ROUTES: &[(&str, &str)] = &[
    ("POST", "/api/v1/agent/config"),
    ("POST", "/api/v1/agent/config/graph"),
    ("GET", "/api/v1/config/sources"),
    ("GET", "/api/v1/config/changes"),
    ("GET", "/api/v1/config/snapshots"),
    ("POST", "/api/v1/config/snapshots"),
    ("GET", "/api/v1/config/snapshots/{id}"),
    ("POST", "/api/v1/config/snapshots/{id}/restore"),
    ("GET", "/api/v1/config/graph"),
    ("POST", "/api/v1/config/simulate"),
    ("POST", "/api/v1/config/tasks"),
    ("GET", "/api/v1/config/tasks"),
    ("GET", "/api/v1/config/tasks/{id}"),
    ("POST", "/api/v1/config/tasks/{id}/abort"),
    ("POST", "/api/v1/config/tasks/{id}/revert"),
];

/// POST routes that change nothing (a viewer may call them): the simulator.
pub const READ_ONLY_POSTS: &[&str] = &["/api/v1/config/simulate"];

pub(crate) fn routes() -> axum::Router<AppState> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/api/v1/agent/config", post(agent_config))
        .route("/api/v1/agent/config/graph", post(agent_graph))
        .route("/api/v1/config/sources", get(sources))
        .route("/api/v1/config/changes", get(changes))
        .route(
            "/api/v1/config/snapshots",
            get(list_snapshots).post(take_snapshot),
        )
        .route("/api/v1/config/snapshots/{id}", get(get_snapshot))
        .route("/api/v1/config/snapshots/{id}/restore", post(restore))
        .route("/api/v1/config/graph", get(graph))
        .route("/api/v1/config/simulate", post(simulate))
        .route("/api/v1/config/tasks", post(create_task).get(list_tasks))
        .route("/api/v1/config/tasks/{id}", get(get_task))
        .route("/api/v1/config/tasks/{id}/abort", post(abort))
        .route("/api/v1/config/tasks/{id}/revert", post(revert))
}

/// The revert threshold of a change built from fields or a restore (a plan may set its own).
pub const DEFAULT_RISK_THRESHOLD: f64 = 0.5;
/// How far around each changed key the task's graph reaches.
const CONTEXT_DEPTH: usize = 3;
/// The most events one list answers with.
const MAX_LIMIT: i64 = 10_000;

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

fn random_suffix() -> String {
    let mut b = [0u8; 4];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
    hex::encode(b)
}

fn check_host(field: &str, host: &str) -> Result<HostName, ApiError> {
    HostName::new(host).map_err(|e| ApiError::bad_request(format!("{field}: {e}")))
}

fn check_source(field: &str, source: &str) -> Result<(), ApiError> {
    if source.is_empty() || source.len() > MAX_SOURCE_LEN || source.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "{field}: {} is not a source name: use the agent's database name (--database NAME=URL) or file:PATH, 1 to {MAX_SOURCE_LEN} bytes without control characters",
            bellwether_model::text::quote(source)
        )));
    }
    Ok(())
}

fn check_id(what: &str, id: &str) -> Result<(), ApiError> {
    let ok = (1..=128).contains(&id.len())
        && id.starts_with(|c: char| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "{} is not a {what} id: use 1 to 128 of A-Z, a-z, 0-9, '.', '_' and '-', starting with a letter or digit",
            bellwether_model::text::quote(id)
        )))
    }
}

/// The latest report of (host, source): 404 naming the host or the source when there is none.
async fn report_of(
    state: &AppState,
    host: &str,
    source: &str,
) -> Result<ConfigReportRecord, ApiError> {
    let name = check_host("host", host)?;
    check_source("source", source)?;
    if state.store.get_host(&name).await?.is_none() {
        return Err(ApiError::not_found(format!("unknown host {host}")));
    }
    state
        .store
        .config_report(host, source)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "host {host} has reported no configuration source {source:?}: start its agent with --database {source}=URL or --config-file PATH"
            ))
        })
}

/// The PostgreSQL catalog of a report: 400 for a file source or a report without one.
fn pg_catalog(report: &ConfigReportRecord) -> Result<Catalog, ApiError> {
    if report.kind != "postgres" {
        return Err(ApiError::bad_request(format!(
            "source {} on {} is a {} source; this works on PostgreSQL sources",
            report.source, report.host, report.kind
        )));
    }
    context::catalog_of(report)?.ok_or_else(|| {
        ApiError::bad_request(format!(
            "the agent on {} sent no catalog of settings for {}; upgrade the agent",
            report.host, report.source
        ))
    })
}

/// Checks every key of `set` against `catalog`: an unknown setting is refused (with a
/// suggestion); with `values`, an invalid value is refused too (naming the setting, the value
/// and the allowed range).
fn check_set(
    catalog: &Catalog,
    where_: &str,
    set: &[(String, Option<String>)],
    values: bool,
) -> Result<(), ApiError> {
    if set.is_empty() {
        return Err(ApiError::bad_request(format!(
            "set: no setting to change on {where_}"
        )));
    }
    if set.len() > bellwether_model::action::MAX_PG_SETTINGS {
        return Err(ApiError::bad_request(format!(
            "set: {} settings; at most {} in one change",
            set.len(),
            bellwether_model::action::MAX_PG_SETTINGS
        )));
    }
    let mut seen = BTreeSet::new();
    for (i, (k, v)) in set.iter().enumerate() {
        if !seen.insert(k) {
            return Err(ApiError::bad_request(format!("set[{i}]: {k} is set twice")));
        }
        let probe = v.as_deref().unwrap_or("");
        if catalog.get(k).is_none() {
            let msg = match catalog.validate(k, probe) {
                Err(e @ ValueError::UnknownSetting { .. }) => e.to_string(),
                _ => format!("unknown setting {k:?}"),
            };
            return Err(ApiError::bad_request(format!(
                "set[{i}]: {msg} on {where_}"
            )));
        }
        if let (true, Some(v)) = (values, v) {
            catalog
                .validate(k, v)
                .map_err(|e| ApiError::bad_request(format!("set[{i}]: {e} on {where_}")))?;
        }
    }
    Ok(())
}

// ---- agent routes ----------------------------------------------------------------------------

/// The keys unsettled config tasks set on (host, database): their changes are theirs to record.
async fn keys_of_running_tasks(
    state: &AppState,
    host: &str,
    source: &str,
) -> Result<BTreeSet<String>, ApiError> {
    let mut keys = BTreeSet::new();
    for rec in state.store.tasks(Some(CONFIG), true).await? {
        let Ok((engine, _)) = task::load(&rec) else {
            continue;
        };
        if engine
            .plan
            .targets
            .iter()
            .any(|t| t.host == host && t.database == source)
        {
            keys.extend(engine.plan.set.iter().map(|(k, _)| k.clone()));
        }
    }
    Ok(keys)
}

/// The value each key was last set to by a config task's own change on (host, source): a
/// report that shows that value again shows the task's change, already recorded.
async fn task_changes(
    state: &AppState,
    host: &str,
    source: &str,
) -> Result<BTreeMap<String, Option<String>>, ApiError> {
    let filter = ConfigEventFilter {
        host: Some(host),
        source: Some(source),
        kinds: &["config.changed"],
        ..ConfigEventFilter::default()
    };
    let mut out = BTreeMap::new();
    // Newest first: the first event of a key is its latest change.
    for e in state.store.config_events(&filter, 1_000).await? {
        let Ok(c) = serde_json::from_value::<ConfigChange>(e.figures) else {
            continue;
        };
        if out.contains_key(&c.key) {
            continue;
        }
        // The newest change of a key decides: by a task, or seen by an agent.
        out.insert(c.key, e.task.map(|_| c.new));
    }
    Ok(out
        .into_iter()
        .filter_map(|(k, v)| v.map(|new| (k, new)))
        .collect())
}

async fn agent_config(
    State(state): State<AppState>,
    Agent(host): Agent,
    JsonBody(req): JsonBody<ConfigReportRequest>,
) -> Result<Json<Value>, ApiError> {
    check_source("source", &req.source)?;
    let kind = match req.kind {
        ConfigSourceKind::Postgres => {
            if req.source.starts_with("file:") {
                return Err(ApiError::bad_request(format!(
                    "source: {:?} names a file but kind is postgres",
                    req.source
                )));
            }
            "postgres"
        }
        ConfigSourceKind::File => {
            if !req.source.starts_with("file:") {
                return Err(ApiError::bad_request(format!(
                    "source: a file source is named file:PATH, not {:?}",
                    req.source
                )));
            }
            if req.catalog.is_some() {
                return Err(ApiError::bad_request(format!(
                    "catalog: file source {} has no catalog of settings",
                    req.source
                )));
            }
            "file"
        }
    };
    if let Some(c) = &req.catalog {
        serde_json::from_value::<Catalog>(c.clone()).map_err(|e| {
            ApiError::bad_request(format!(
                "catalog: not a catalog of settings for {}: {e}",
                req.source
            ))
        })?;
    }
    let now = now_ms();
    if req.at_ms <= 0 || req.at_ms > now + state.sample_max_ahead_ms {
        return Err(ApiError::bad_request(format!(
            "at_ms: {} is not a time this server accepts (its clock reads {now})",
            req.at_ms
        )));
    }
    let host_s = host.to_string();
    let running = keys_of_running_tasks(&state, &host_s, &req.source).await?;
    let by_tasks = task_changes(&state, &host_s, &req.source).await?;
    let skip = |d: &bellwether_config::snapshot::KeyDiff| {
        running.contains(&d.key) || by_tasks.get(&d.key).is_some_and(|new| *new == d.new)
    };
    let source = if kind == "postgres" {
        ChangeSource::Instance
    } else {
        ChangeSource::Disk
    };
    let report = ConfigReport {
        host: host_s.clone(),
        source: req.source.clone(),
        kind: kind.into(),
        values: req.values.clone(),
        catalog: req.catalog.clone(),
        at_ms: req.at_ms,
    };
    let mut counts = (0usize, 0usize);
    let counted = &mut counts;
    state
        .store
        .put_config_report(&report, now, |prev| {
            let Some(prev) = prev else {
                return Vec::new();
            };
            let mut events = Vec::new();
            for d in bellwether_config::snapshot::diff(&prev.values, &req.values) {
                if skip(&d) {
                    counted.1 += 1;
                    continue;
                }
                counted.0 += 1;
                let where_ = if kind == "postgres" {
                    "on the instance"
                } else {
                    "on disk"
                };
                let change = ConfigChange {
                    host: host_s.clone(),
                    source_name: req.source.clone(),
                    key: d.key.clone(),
                    old: d.old.clone(),
                    new: d.new.clone(),
                    author: "unknown".into(),
                    time_ms: req.at_ms,
                    description: format!("seen {where_} by the agent"),
                    source,
                };
                events.push(NewEvent {
                    ts_ms: req.at_ms,
                    kind: "config.changed".into(),
                    host: Some(host_s.clone()),
                    reason: format!(
                        "{} of {} on {host_s} changed from {} to {}, seen {where_}.",
                        d.key,
                        req.source,
                        d.old.as_deref().unwrap_or("(unset)"),
                        d.new.as_deref().unwrap_or("(unset)")
                    ),
                    figures: serde_json::to_value(&change).expect("a change serialises"),
                });
            }
            events
        })
        .await?;
    Ok(Json(json!({
        "source": req.source,
        "changed": counts.0,
        "attributed_to_tasks": counts.1,
    })))
}

async fn agent_graph(
    State(state): State<AppState>,
    Agent(host): Agent,
    JsonBody(req): JsonBody<ConfigGraphRequest>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    check_source("source", &req.source)?;
    if req.source.starts_with("file:") {
        return Err(ApiError::bad_request(format!(
            "source: {:?} is a file; graphs are learned for PostgreSQL sources",
            req.source
        )));
    }
    let graph: Graph = serde_json::from_value(req.graph.clone())
        .map_err(|e| ApiError::bad_request(format!("graph: not a dependency graph: {e}")))?;
    graph
        .check()
        .map_err(|e| ApiError::bad_request(format!("graph of {} from {host}: {e}", req.source)))?;
    let version = state
        .store
        .put_config_graph(
            host.as_str(),
            &req.source,
            &serde_json::to_value(&graph).map_err(internal)?,
            &req.stats,
            now_ms(),
        )
        .await?;
    tracing::info!(host = %host, source = %req.source, version, nodes = graph.nodes.len(), edges = graph.edges.len(), "Stored a configuration graph.");
    Ok((
        StatusCode::CREATED,
        Json(json!({"source": req.source, "version": version})),
    ))
}

// ---- sources, changes, snapshots -------------------------------------------------------------

async fn sources(
    State(state): State<AppState>,
    _auth: Viewer,
) -> Result<Json<Vec<ConfigSourceSummary>>, ApiError> {
    Ok(Json(
        state
            .store
            .config_sources()
            .await?
            .into_iter()
            .map(|s| ConfigSourceSummary {
                host: s.host,
                source: s.source,
                kind: s.kind,
                updated_ms: s.updated_ms,
                keys: s.keys,
                graph_version: s.graph_version,
            })
            .collect(),
    ))
}

/// The query of the change and snapshot lists.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    host: Option<String>,
    source: Option<String>,
    after: Option<i64>,
    limit: Option<i64>,
}

type QueryResult<T> = Result<Query<T>, axum::extract::rejection::QueryRejection>;

fn query<T>(q: QueryResult<T>) -> Result<T, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request(format!("bad query string: {}", e.body_text())))
}

async fn list_events(
    state: &AppState,
    q: ListQuery,
    kind: &'static str,
) -> Result<Vec<bellwether_store::Event>, ApiError> {
    if let Some(h) = &q.host {
        let name = check_host("host", h)?;
        if state.store.get_host(&name).await?.is_none() {
            return Err(ApiError::not_found(format!("unknown host {h}")));
        }
    }
    if let Some(s) = &q.source {
        check_source("source", s)?;
    }
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit {limit} is outside 1..={MAX_LIMIT}"
        )));
    }
    let kinds = [kind];
    let filter = ConfigEventFilter {
        host: q.host.as_deref(),
        source: q.source.as_deref(),
        kinds: &kinds,
        after_id: q.after,
        ..ConfigEventFilter::default()
    };
    Ok(state.store.config_events(&filter, limit).await?)
}

async fn changes(
    State(state): State<AppState>,
    _auth: Viewer,
    q: QueryResult<ListQuery>,
) -> Result<Json<Vec<bellwether_store::Event>>, ApiError> {
    Ok(Json(
        list_events(&state, query(q)?, "config.changed").await?,
    ))
}

fn snapshot_of(e: &bellwether_store::Event) -> Option<Snapshot> {
    serde_json::from_value(e.figures.get("snapshot")?.clone()).ok()
}

async fn list_snapshots(
    State(state): State<AppState>,
    _auth: Viewer,
    q: QueryResult<ListQuery>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let events = list_events(&state, query(q)?, "config.snapshot").await?;
    Ok(Json(
        events
            .iter()
            .filter_map(|e| {
                let s = snapshot_of(e)?;
                Some(json!({
                    "id": s.id, "host": s.host, "source": s.source_name,
                    "taken_at_ms": s.taken_at_ms, "reason": s.reason,
                    "keys": s.values.len(), "checksum": s.checksum, "whole": s.is_whole(),
                    "task": e.task, "event": e.id,
                }))
            })
            .collect(),
    ))
}

async fn find_snapshot(
    state: &AppState,
    id: &str,
) -> Result<(Snapshot, bellwether_store::Event), ApiError> {
    check_id("snapshot", id)?;
    let filter = ConfigEventFilter {
        kinds: &["config.snapshot"],
        snapshot_id: Some(id),
        ..ConfigEventFilter::default()
    };
    let e = state
        .store
        .config_events(&filter, 1)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::not_found(format!("unknown snapshot {id}")))?;
    let s = snapshot_of(&e).ok_or_else(|| {
        internal(format!(
            "the event of snapshot {id} holds no readable snapshot"
        ))
    })?;
    Ok((s, e))
}

async fn get_snapshot(
    State(state): State<AppState>,
    _auth: Viewer,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (s, e) = find_snapshot(&state, &id).await?;
    let whole = s.is_whole();
    let mut v = serde_json::to_value(&s).map_err(internal)?;
    v["whole"] = json!(whole);
    v["task"] = json!(e.task);
    Ok(Json(v))
}

async fn take_snapshot(
    State(state): State<AppState>,
    _auth: Operator,
    JsonBody(req): JsonBody<TakeSnapshotRequest>,
) -> Result<(StatusCode, Json<Snapshot>), ApiError> {
    let report = report_of(&state, &req.host, &req.source).await?;
    let reason: String = req
        .reason
        .unwrap_or_else(|| "on demand".into())
        .chars()
        .take(200)
        .collect();
    let now = now_ms();
    let snap = Snapshot::new(
        format!("s-{now}-{}", random_suffix()),
        report.host.clone(),
        report.source.clone(),
        now,
        reason,
        report.values.clone(),
    );
    state
        .store
        .record_named_event(
            "config.snapshot",
            Some(&report.host),
            &format!(
                "Snapshot {} of {} on {} ({} keys): {}.",
                snap.id,
                snap.source_name,
                snap.host,
                snap.values.len(),
                snap.reason
            ),
            &json!({ "snapshot": snap }),
            now,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(snap)))
}

async fn restore(
    State(state): State<AppState>,
    _auth: Operator,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<ConfigTaskStatus>), ApiError> {
    let body: RestoreSnapshotRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RestoreSnapshotRequest::default()
    } else {
        crate::body::parse_json(&body)?
    };
    let (snap, _) = find_snapshot(&state, &id).await?;
    if !snap.is_whole() {
        return Err(internal(format!(
            "snapshot {id} does not match its checksum; it is not restored"
        )));
    }
    let report = report_of(&state, &snap.host, &snap.source_name).await?;
    let catalog = pg_catalog(&report)?;
    // The settings the snapshot holds differently now; a key it lacks is reset. Settings that
    // cannot be changed (context internal) are left alone.
    let set: Vec<(String, Option<String>)> =
        bellwether_config::snapshot::diff(&report.values, &snap.values)
            .into_iter()
            .filter(|d| {
                catalog
                    .get(&d.key)
                    .is_some_and(|s| s.context != bellwether_config::setting::Context::Internal)
            })
            .map(|d| (d.key, d.new))
            .collect();
    if set.is_empty() {
        return Err(ApiError::conflict(format!(
            "{} on {} already has the values of snapshot {id}",
            snap.source_name, snap.host
        )));
    }
    let plan = ConfigPlan {
        description: body
            .description
            .unwrap_or_else(|| format!("restore snapshot {id}")),
        author: "api".into(),
        targets: vec![Target {
            host: snap.host.clone(),
            database: snap.source_name.clone(),
        }],
        set,
        watch: WatchSpec::defaults(),
        risk_threshold: DEFAULT_RISK_THRESHOLD,
        trial: true,
        controls: Vec::new(),
        alerts: Vec::new(),
    };
    plan.validate()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let yaml = serde_json::to_string_pretty(&plan).map_err(internal)?;
    let status = start_task(&state, None, plan, "restore.json".into(), yaml).await?;
    Ok((StatusCode::CREATED, Json(status)))
}

// ---- the graph and the simulator -------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GraphQuery {
    host: String,
    source: String,
    around: Option<String>,
    depth: Option<usize>,
    format: Option<String>,
}

async fn graph(
    State(state): State<AppState>,
    _auth: Viewer,
    q: QueryResult<GraphQuery>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let format = q.format.as_deref().unwrap_or("json");
    if !matches!(format, "json" | "graphml" | "cypher") {
        return Err(ApiError::bad_request(format!(
            "format: {} is not one of json, graphml, cypher",
            bellwether_model::text::quote(format)
        )));
    }
    let depth = q.depth.unwrap_or(2);
    if depth > 10 {
        return Err(ApiError::bad_request(format!("depth: {depth} is above 10")));
    }
    let report = report_of(&state, &q.host, &q.source).await?;
    let mut graph = context::served_graph(&state, &report).await?;
    if let Some(key) = &q.around {
        let known = report.values.contains_key(key) || graph.nodes.iter().any(|n| &n.name == key);
        if !known {
            return Err(ApiError::bad_request(format!(
                "around: {} has no setting {}",
                q.source,
                bellwether_model::text::quote(key)
            )));
        }
        let version = graph.version;
        graph = graph.around(key, depth);
        graph.version = version;
    }
    Ok(match format {
        "graphml" => (
            [(
                header::CONTENT_TYPE,
                "application/graphml+xml; charset=utf-8",
            )],
            graph.to_graphml(),
        )
            .into_response(),
        "cypher" => (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            graph.to_cypher(),
        )
            .into_response(),
        _ => Json(graph).into_response(),
    })
}

async fn simulate(
    State(state): State<AppState>,
    _auth: Viewer,
    JsonBody(req): JsonBody<SimulateRequest>,
) -> Result<Json<Value>, ApiError> {
    let report = report_of(&state, &req.host, &req.source).await?;
    let catalog = pg_catalog(&report)?;
    let where_ = format!("{} on {}", req.source, req.host);
    // Unknown settings are bad input; a bad value is the simulator's to refuse.
    check_set(&catalog, &where_, &req.set, false)?;
    let graph = context::served_graph(&state, &report).await?;
    let history =
        context::outcome_history(&state, &[(req.host.clone(), req.source.clone())]).await?;
    let perf = context::perf_model(&state, &report).await?;
    let (catalog2, set) = (catalog.clone(), req.set.clone());
    let (graph2, perf2, history2) = (graph.clone(), perf.clone(), history.clone());
    let sim = tokio::task::spawn_blocking(move || {
        let input = bellwether_config::simulate::SimInput {
            catalog: &catalog2,
            graph: &graph2,
            perf: perf2.as_ref().ok(),
            history: &history2,
            trial: None,
        };
        bellwether_config::simulate::simulate(&input, &set)
    })
    .await
    .map_err(internal)?;
    let mut v = serde_json::to_value(&sim).map_err(internal)?;
    v["graph_version"] = json!(graph.version);
    v["performance_reason"] = match (&sim.performance, &perf) {
        (None, Err(reason)) => json!(reason),
        _ => Value::Null,
    };
    Ok(Json(v))
}

// ---- tasks -----------------------------------------------------------------------------------

/// Builds the engine's context for `plan`: the served graph of each target around the changed
/// keys, merged, and the outcomes of earlier changes of these targets.
async fn engine_context(state: &AppState, plan: &ConfigPlan) -> Result<EngineContext, ApiError> {
    let mut graph = Graph::default();
    let mut targets = Vec::new();
    for t in &plan.targets {
        targets.push((t.host.clone(), t.database.clone()));
        let Some(report) = state.store.config_report(&t.host, &t.database).await? else {
            continue;
        };
        let served = context::served_graph(state, &report).await?;
        graph.version = graph.version.max(served.version);
        for (k, _) in &plan.set {
            let near = served.around(k, CONTEXT_DEPTH);
            for n in near.nodes {
                graph.upsert_node(n);
            }
            for e in near.edges {
                graph.add_edge(e);
            }
        }
    }
    let history = context::outcome_history(state, &targets).await?;
    Ok(EngineContext { graph, history })
}

/// Checks `plan` against the store (enrolled hosts, reported PostgreSQL sources, known settings
/// with valid values), starts the engine and stores the task with its first step.
async fn start_task(
    state: &AppState,
    id: Option<String>,
    plan: ConfigPlan,
    plan_file: String,
    plan_yaml: String,
) -> Result<ConfigTaskStatus, ApiError> {
    for (i, t) in plan.targets.iter().enumerate() {
        let report = report_of(state, &t.host, &t.database)
            .await
            .map_err(|e| ApiError::new(e.status, format!("targets[{i}]: {}", e.message)))?;
        let catalog = pg_catalog(&report)?;
        check_set(
            &catalog,
            &format!("{} on {}", t.database, t.host),
            &plan.set,
            true,
        )?;
    }
    let now = now_ms();
    let id = match id {
        Some(id) => {
            check_id("task", &id)?;
            id
        }
        None => format!("c-{now}-{}", random_suffix()),
    };
    if state.store.task(&id).await?.is_some() {
        return Err(ApiError::conflict(format!("a task {id} exists already")));
    }
    let ctx = engine_context(state, &plan).await?;
    let hosts: BTreeSet<String> = plan.targets.iter().map(|t| t.host.clone()).collect();
    let baseline_from = now - plan.watch.baseline_ms as i64;
    let targets = plan.targets.len();
    let controls = plan.controls.len();
    let (engine, out) = ConfigChangeEngine::start(plan, ctx, now);
    let t = ConfigTask {
        id: id.clone(),
        engine,
        driver: task::Driver {
            created_ms: now,
            // The baseline is the samples of the window before the apply: feed from there.
            fed_until_ms: vec![baseline_from; targets],
            control_fed_until_ms: vec![baseline_from; controls],
        },
    };
    let first = task::first_step(&out);
    let status = t.status_of();
    let new = NewTask {
        id: id.clone(),
        kind: CONFIG.into(),
        model_version: None,
        plan_file,
        plan_yaml,
        hosts: hosts.into_iter().map(|h| (h, BTreeMap::new())).collect(),
    };
    if let Some(busy) = crate::task::create(state, &new, t, first).await? {
        return Err(ApiError::conflict(format!(
            "host {} is already in running {} {}; wait for it, or abort it",
            busy.host, busy.kind, busy.task
        )));
    }
    tracing::info!(task = %id, "Started a configuration change.");
    Ok(status)
}

async fn create_task(
    State(state): State<AppState>,
    _auth: Operator,
    JsonBody(req): JsonBody<ConfigTaskRequest>,
) -> Result<(StatusCode, Json<ConfigTaskStatus>), ApiError> {
    let (plan, file, text) = match &req.plan {
        Some(yaml) => {
            if !req.targets.is_empty() || !req.set.is_empty() {
                return Err(ApiError::bad_request(
                    "give either plan (YAML) or targets and set, not both",
                ));
            }
            let file = req.file.clone().unwrap_or_else(|| "config.yaml".into());
            let (text, name) = (yaml.clone(), file.clone());
            let plan = tokio::task::spawn_blocking(move || {
                bellwether_engine::config::plan::parse_plan(&text, &name)
            })
            .await
            .map_err(internal)?
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
            (plan, file, yaml.clone())
        }
        None => {
            if req.targets.is_empty() {
                return Err(ApiError::bad_request(
                    "targets: give the instances to change ([{host, database}]) or a plan",
                ));
            }
            let plan = ConfigPlan {
                description: req
                    .description
                    .clone()
                    .unwrap_or_else(|| "configuration change".into()),
                author: req.author.clone().unwrap_or_else(|| "api".into()),
                targets: req
                    .targets
                    .iter()
                    .map(|t| Target {
                        host: t.host.clone(),
                        database: t.database.clone(),
                    })
                    .collect(),
                set: req.set.clone(),
                watch: WatchSpec::defaults(),
                risk_threshold: req.risk_threshold.unwrap_or(DEFAULT_RISK_THRESHOLD),
                trial: req.trial.unwrap_or(true),
                // Contemporaneous controls come with a YAML plan's `controls:`.
                controls: Vec::new(),
                alerts: Vec::new(),
            };
            for (i, t) in plan.targets.iter().enumerate() {
                check_host(&format!("targets[{i}].host"), &t.host)?;
                check_source(&format!("targets[{i}].database"), &t.database)?;
            }
            plan.validate()
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            let text = serde_json::to_string_pretty(&plan).map_err(internal)?;
            (plan, "request.json".to_string(), text)
        }
    };
    let status = start_task(&state, req.id.clone(), plan, file, text).await?;
    Ok((StatusCode::CREATED, Json(status)))
}

async fn load_task(
    state: &AppState,
    id: &str,
) -> Result<
    (
        bellwether_store::TaskRecord,
        ConfigChangeEngine,
        task::Driver,
    ),
    ApiError,
> {
    check_id("task", id)?;
    let rec = state
        .store
        .task(id)
        .await?
        .filter(|r| r.kind == CONFIG)
        .ok_or_else(|| ApiError::not_found(format!("unknown config task {id}")))?;
    let (engine, driver) = task::load(&rec)?;
    Ok((rec, engine, driver))
}

async fn list_tasks(
    State(state): State<AppState>,
    _auth: Viewer,
) -> Result<Json<Vec<Value>>, ApiError> {
    let mut out = Vec::new();
    for rec in state.store.tasks(Some(CONFIG), false).await? {
        let Ok((engine, driver)) = task::load(&rec) else {
            continue;
        };
        let s = task::status(&rec.id, &engine, &driver);
        out.push(json!({
            "id": s.id, "phase": s.phase, "settled": s.settled,
            "description": s.description, "targets": s.targets, "set": s.set,
            "created_at_ms": rec.created_at_ms, "updated_at_ms": rec.updated_at_ms,
        }));
    }
    Ok(Json(out))
}

async fn get_task(
    State(state): State<AppState>,
    _auth: Viewer,
    Path(id): Path<String>,
) -> Result<Json<ConfigTaskStatus>, ApiError> {
    let (_, engine, driver) = load_task(&state, &id).await?;
    Ok(Json(task::status(&id, &engine, &driver)))
}

async fn command(
    state: &AppState,
    id: &str,
    body: axum::body::Bytes,
    make: fn(String) -> Command,
    verb: &str,
) -> Result<Json<ConfigTaskStatus>, ApiError> {
    let body: ConfigCommandRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ConfigCommandRequest::default()
    } else {
        crate::body::parse_json(&body)?
    };
    let reason: String = body
        .reason
        .unwrap_or_else(|| "no reason given".into())
        .chars()
        .take(200)
        .collect();
    let (_, engine, _) = load_task(state, id).await?;
    if engine.phase.is_final() {
        return Err(ApiError::conflict(format!(
            "config task {id} is {}; {verb} applies to a running change",
            task::phase_name(engine.phase)
        )));
    }
    Ok(Json(
        state.tasks.command::<ConfigTask>(id, make(reason)).await?,
    ))
}

async fn abort(
    State(state): State<AppState>,
    _auth: Operator,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<ConfigTaskStatus>, ApiError> {
    command(&state, &id, body, Command::Abort, "abort").await
}

async fn revert(
    State(state): State<AppState>,
    _auth: Operator,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<ConfigTaskStatus>, ApiError> {
    command(&state, &id, body, Command::Revert, "revert").await
}
