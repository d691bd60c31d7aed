//! The failure model in the server: deployment outcomes, training from them, versioned models,
//! automatic retraining, and per-host risk for a proposed update.
//!
//! The feature vector of a host ([`feature_vector`]) is built the same way when a rollout
//! scores the host, when the host's outcome is recorded, and when `GET /api/v1/risk` asks, so
//! the model is always trained and asked on one shape. Training runs on a blocking thread;
//! one training runs at a time.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use bellwether_model::{DriftScore, HostName, HostProfile};
use bellwether_predict::evidence::{self, EvidenceFactor};
use bellwether_predict::{FeatureValue, Frame, Model, PredictError, TrainOptions, TrainingRow};
use bellwether_store::{ModelInfo, NewModel, NewOutcome, OutcomeSource};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::auth::{Operator, Viewer};
use crate::error::ApiError;
use crate::{now_ms, AppState};

/// The routes of this module, as (method, path); docs/api.md and docs/openapi.yaml describe
/// each (a test checks).
pub const MODEL_ROUTES: &[(&str, &str)] = &[
    ("POST", "/api/v1/history/import"),
    ("POST", "/api/v1/model/train"),
    ("GET", "/api/v1/models"),
    ("GET", "/api/v1/risk"),
    ("POST", "/api/v1/risk/forgive"),
];

pub(crate) fn routes() -> axum::Router<AppState> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/api/v1/history/import", post(import_history))
        .route("/api/v1/model/train", post(train))
        .route("/api/v1/models", get(list_models))
        .route("/api/v1/risk", get(risk))
        .route("/api/v1/risk/forgive", post(forgive))
}

/// The default number of new outcomes after which the server retrains.
pub const DEFAULT_RETRAIN_AFTER: u64 = 50;

/// How far back `prior_failures_30d` counts.
const PRIOR_FAILURE_WINDOW_MS: i64 = 30 * 24 * 3600 * 1000;

/// The contributing factors returned per host.
const RISK_FACTORS: usize = 5;

/// The server's model state: the latest model, parsed once per version, and the retraining
/// policy.
#[derive(Debug)]
pub struct Predictor {
    cache: tokio::sync::RwLock<Option<(i64, Arc<Model>)>>,
    training: tokio::sync::Mutex<()>,
    retrain_after: u64,
    /// The newest version trained by this process (0 before the first).
    trained: tokio::sync::watch::Sender<i64>,
}

impl Predictor {
    /// Retrains after `retrain_after` new outcomes; 0 turns automatic retraining off.
    pub fn new(retrain_after: u64) -> Predictor {
        Predictor {
            cache: tokio::sync::RwLock::new(None),
            training: tokio::sync::Mutex::new(()),
            retrain_after,
            trained: tokio::sync::watch::channel(0).0,
        }
    }

    /// Follows the newest model version this process trained (0 before the first).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<i64> {
        self.trained.subscribe()
    }
}

/// What a proposed update is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateInfo {
    pub name: String,
    pub version: String,
    /// `major`, `minor` or `patch`, when known.
    #[serde(default, rename = "type")]
    pub update_type: Option<String>,
    /// The packages the updated software depends on (a plan's `update.depends_on`): each
    /// becomes the feature `pkg:NAME`, the host's installed `major.minor` of it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
}

/// `major.minor` of a version string: the epoch (`1:`) dropped, cut at the second dot and
/// at the first character that is not a digit or a dot (`1.1.1n-0` → `1.1`).
fn major_minor(version: &str) -> Option<String> {
    let v = version.split_once(':').map_or(version, |(_, rest)| rest);
    let v: String = v
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let mut parts = v.split('.').filter(|p| !p.is_empty());
    let major = parts.next()?;
    Some(match parts.next() {
        Some(minor) => format!("{major}.{minor}"),
        None => major.to_string(),
    })
}

/// The feature vector of a host for an update: profile attributes, drift scores by category,
/// the update's details, the host's versions of the packages the update depends on
/// (`pkg:NAME`: `major.minor`, null when the host lacks it or its package list is unknown) and the host's failures over the last 30 days. Values are JSON numbers,
/// strings or null (unknown). docs/api.md lists the names. Training rows (a rollout's
/// outcomes) and scoring both come from here.
pub fn feature_vector(
    profile: Option<&HostProfile>,
    labels: &BTreeMap<String, String>,
    drift: Option<&DriftScore>,
    update: &UpdateInfo,
    prior_failures_30d: i64,
) -> BTreeMap<String, Value> {
    let mut f = BTreeMap::new();
    f.insert("update".into(), json!(update.name));
    f.insert("update_version".into(), json!(update.version));
    f.insert("update_type".into(), json!(update.update_type));
    let os = profile
        .and_then(|p| p.os.as_ref())
        .map(|os| match &os.version_id {
            Some(v) => format!("{}-{v}", os.id),
            None => os.id.clone(),
        });
    f.insert("os".into(), json!(os));
    f.insert(
        "kernel".into(),
        json!(profile
            .and_then(|p| p.kernel.as_deref())
            .and_then(major_minor)),
    );
    let packages = profile.and_then(|p| p.packages.as_ref());
    let libssl = packages.and_then(|pk| {
        pk.iter()
            .find(|(name, _)| {
                name.starts_with("libssl") && !name.contains("-dev") && !name.contains("-doc")
            })
            .or_else(|| pk.get_key_value("openssl"))
            .and_then(|(_, v)| major_minor(v))
    });
    f.insert("libssl".into(), json!(libssl));
    for dep in &update.depends_on {
        // Absent reads as unknown (null), never as a word: a feature the model learnt as a
        // number must not meet a category when it scores.
        let v = packages
            .and_then(|pk| pk.get(dep))
            .and_then(|v| major_minor(v));
        f.insert(format!("pkg:{dep}"), json!(v));
    }
    let hw = profile.and_then(|p| p.hardware.as_ref());
    f.insert("cpu_cores".into(), json!(hw.and_then(|h| h.cpu_count)));
    f.insert(
        "mem_gb".into(),
        json!(hw
            .and_then(|h| h.memory_total_kb)
            .map(|kb| (kb as f64 / 1_048_576.0 * 10.0).round() / 10.0)),
    );
    let metric = |name: &str| {
        profile
            .and_then(|p| p.metrics.get(name).copied())
            .filter(|v| v.is_finite())
    };
    let disk = metric("disk_free_pct").or_else(|| metric("disk_free_ratio").map(|r| r * 100.0));
    f.insert("disk_free_pct".into(), json!(disk));
    f.insert(
        "memory_available_ratio".into(),
        json!(metric("memory_available_ratio")),
    );
    f.insert("load1".into(), json!(metric("load1")));
    f.insert(
        "configuration_drift".into(),
        json!(drift.map(|d| d.configuration.get())),
    );
    f.insert(
        "performance_drift".into(),
        json!(drift.map(|d| d.performance.get())),
    );
    f.insert(
        "dependency_drift".into(),
        json!(drift.map(|d| d.dependency.get())),
    );
    f.insert(
        "overall_drift".into(),
        json!(drift.map(|d| d.overall.get())),
    );
    f.insert(
        "drift_findings".into(),
        json!(drift.map(|d| d.findings.len())),
    );
    f.insert("prior_failures_30d".into(), json!(prior_failures_30d));
    for (k, v) in labels {
        f.insert(format!("label:{k}"), json!(v));
    }
    f
}

/// A stored feature value as the model reads it: strings are parsed like CSV cells, so `"6.8"`
/// is the number 6.8 here as in an imported history.
pub fn to_feature_value(v: &Value) -> FeatureValue {
    match v {
        Value::Number(n) => n
            .as_f64()
            .filter(|x| x.is_finite())
            .map_or(FeatureValue::Missing, FeatureValue::Number),
        Value::String(s) => FeatureValue::parse(s),
        Value::Bool(b) => FeatureValue::Number(*b as u8 as f64),
        _ => FeatureValue::Missing,
    }
}

fn from_feature_value(v: &FeatureValue) -> Value {
    match v {
        FeatureValue::Number(x) => json!(x),
        FeatureValue::Category(s) => json!(s),
        FeatureValue::Missing => Value::Null,
    }
}

/// The host's feature vector now, from its effective profile, labels and stored drift.
pub(crate) async fn host_features(
    state: &AppState,
    host: &HostName,
    labels: &BTreeMap<String, String>,
    update: &UpdateInfo,
    now: i64,
) -> Result<BTreeMap<String, Value>, ApiError> {
    let profile = crate::drift::effective_profile(state, host).await?;
    let drift = state.store.drift(host).await?.map(|d| d.score);
    let prior = state
        .store
        .host_failures_since(host.as_str(), now - PRIOR_FAILURE_WINDOW_MS)
        .await?;
    let mut all_labels = profile
        .as_ref()
        .map(|p| p.labels.clone())
        .unwrap_or_default();
    all_labels.extend(labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    Ok(feature_vector(
        profile.as_ref(),
        &all_labels,
        drift.as_ref(),
        update,
        prior,
    ))
}

/// The latest model and its version, parsed once per version. `None` when none was trained.
pub(crate) async fn latest_model(state: &AppState) -> Result<Option<(i64, Arc<Model>)>, ApiError> {
    let newest = state.store.models().await?.first().map(|m| m.version);
    let Some(newest) = newest else {
        return Ok(None);
    };
    if let Some((v, m)) = state.predict.cache.read().await.as_ref() {
        if *v == newest {
            return Ok(Some((*v, m.clone())));
        }
    }
    let Some((info, text)) = state.store.latest_model().await? else {
        return Ok(None);
    };
    let source = format!("stored model version {}", info.version);
    let model = tokio::task::spawn_blocking(move || Model::read(text.as_bytes(), &source))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("model loading stopped: {e}"),
            )
        })?
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let model = Arc::new(model);
    *state.predict.cache.write().await = Some((info.version, model.clone()));
    Ok(Some((info.version, model)))
}

pub(crate) fn no_model_error() -> ApiError {
    ApiError::conflict(
        "no failure model has been trained yet; import a history (`bellwether model import --history H.csv`) \
         or train one from stored outcomes (`bellwether model train`)",
    )
}

/// Why the model was trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cause {
    Operator,
    Automatic,
}

/// Trains a model from every stored outcome and stores it as the next version.
pub(crate) async fn train_from_store(
    state: &AppState,
    cause: Cause,
) -> Result<ModelInfo, ApiError> {
    let _one_at_a_time = state.predict.training.lock().await;
    let outcomes = state.store.outcomes().await?;
    if outcomes.is_empty() {
        return Err(ApiError::conflict(
            "no outcomes are stored yet; import a history (`bellwether model import --history H.csv`) or finish a rollout first",
        ));
    }
    let last_outcome_id = outcomes.iter().map(|o| o.id).max().unwrap_or(0);
    let failures = outcomes.iter().filter(|o| o.failed).count() as i64;
    let rows: Vec<TrainingRow> = outcomes
        .iter()
        .map(|o| TrainingRow {
            features: o
                .features
                .iter()
                .map(|(k, v)| (k.clone(), to_feature_value(v)))
                .collect::<HashMap<_, _>>(),
            failed: o.failed,
        })
        .collect();
    let n = rows.len() as i64;
    let started = std::time::Instant::now();
    let trained = tokio::task::spawn_blocking(move || {
        let model = Model::train_rows(&rows, &TrainOptions::default())?;
        let mut text = Vec::new();
        model.write(&mut text, "stored model")?;
        Ok::<_, PredictError>((model, String::from_utf8(text).expect("model JSON is UTF-8")))
    })
    .await
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("training stopped: {e}"),
        )
    })?;
    let (model, text) = trained.map_err(|e| {
        ApiError::conflict(format!("cannot train from the {n} stored outcomes: {e}"))
    })?;
    let summary = model.summary();
    let chosen = summary
        .candidates
        .iter()
        .find(|c| c.method == summary.chosen);
    let metrics = json!({
        "method": summary.chosen,
        "roc_auc": chosen.and_then(|c| c.roc_auc),
        "brier": chosen.map(|c| c.brier),
        "log_loss": chosen.map(|c| c.log_loss),
        "calibration_error": chosen.map(|c| c.calibration_error),
        "candidates": summary.candidates,
        "features": model.features().iter().map(|f| f.name.clone()).collect::<Vec<_>>(),
        "skipped": summary.skipped,
        "train_ms": started.elapsed().as_millis() as u64,
    });
    let cause_s = match cause {
        Cause::Operator => "operator",
        Cause::Automatic => "automatic",
    };
    let now = now_ms();
    let new = NewModel {
        rows: n,
        failures,
        last_outcome_id,
        cause: cause_s.into(),
        metrics: metrics.clone(),
        model: text,
    };
    let version = state.store.put_model(&new, now).await?;
    *state.predict.cache.write().await = Some((version, Arc::new(model)));
    state.predict.trained.send_replace(version);
    state
        .store
        .record_named_event(
            "model_trained",
            None,
            &format!("model version {version} trained ({cause_s}) from {n} outcomes"),
            &json!({"version": version, "rows": n, "failures": failures, "metrics": metrics}),
            now,
        )
        .await?;
    tracing::info!(
        version,
        rows = n,
        failures,
        cause = cause_s,
        "Trained a failure model."
    );
    Ok(ModelInfo {
        version,
        created_at_ms: now,
        rows: n,
        failures,
        last_outcome_id,
        cause: cause_s.into(),
        metrics,
    })
}

/// Starts a training in the background when `retrain_after` outcomes arrived since the latest
/// model (or since the start, when there is none) and no training is running. When a rollout
/// has just finished (`finished`), any new outcome is enough: its outcomes are the freshest
/// lesson there is, and waiting for a count would score the next rollout without them.
pub(crate) async fn maybe_retrain(state: &AppState, finished: bool) -> Result<(), ApiError> {
    let every = state.predict.retrain_after;
    if every == 0 {
        return Ok(());
    }
    let since = state
        .store
        .models()
        .await?
        .first()
        .map_or(0, |m| m.last_outcome_id);
    let (new, _) = state.store.outcomes_since(since).await?;
    if new == 0 || (!finished && (new as u64) < every) {
        return Ok(());
    }
    if state.predict.training.try_lock().is_err() {
        return Ok(());
    }
    let state = state.clone();
    tokio::spawn(async move {
        tracing::info!(
            new_outcomes = new,
            "Retraining the failure model after new outcomes."
        );
        if let Err(e) = train_from_store(&state, Cause::Automatic).await {
            tracing::warn!(error = %e, "Automatic retraining failed.");
        }
    });
    Ok(())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportQuery {
    /// The outcome column; `outcome` when absent.
    label: Option<String>,
}

/// `POST /api/v1/history/import`'s answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImportResponse {
    pub imported: u64,
    pub failures: u64,
    /// Every outcome the store now holds.
    pub outcomes: i64,
}

const DEPLOYMENT_COLUMNS: &[&str] = &["deployment_id", "deployment"];

async fn import_history(
    State(state): State<AppState>,
    _auth: Operator,
    q: Result<Query<ImportQuery>, axum::extract::rejection::QueryRejection>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<ImportResponse>), ApiError> {
    let Query(q) =
        q.map_err(|e| ApiError::bad_request(format!("bad query string: {}", e.body_text())))?;
    let body = body.map_err(|rej| {
        if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body is too large: {}", rej.body_text()),
            )
        } else {
            ApiError::bad_request(format!("cannot read the request body: {}", rej.body_text()))
        }
    })?;
    let label = q.label.unwrap_or_else(|| "outcome".into());
    if body.is_empty() {
        return Err(ApiError::bad_request("request body is empty; send the history CSV (a header line, then one row per deployment and host)"));
    }
    let now = now_ms();
    let outcomes = tokio::task::spawn_blocking(move || parse_history(&body, &label, now))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("import stopped: {e}"),
            )
        })??;
    let failures = outcomes.iter().filter(|o| o.failed).count() as u64;
    let imported = state.store.record_outcomes(&outcomes, now).await?;
    let (total, _) = state.store.outcomes_since(0).await?;
    state
        .store
        .record_named_event(
            "history_imported",
            None,
            &format!("{imported} outcomes imported from a history CSV"),
            &json!({"imported": imported, "failures": failures}),
            now,
        )
        .await?;
    tracing::info!(imported, failures, "Imported a deployment history.");
    maybe_retrain(&state, false).await?;
    Ok((
        StatusCode::CREATED,
        Json(ImportResponse {
            imported,
            failures,
            outcomes: total,
        }),
    ))
}

/// The rows of a history CSV as outcomes. Errors name the line and column.
fn parse_history(body: &[u8], label: &str, now: i64) -> Result<Vec<NewOutcome>, ApiError> {
    let bad = |e: PredictError| ApiError::bad_request(e.to_string());
    let frame = Frame::from_csv(body, "history").map_err(bad)?;
    if frame.rows() == 0 {
        return Err(bad(PredictError::NoRows {
            source_name: "history".into(),
        }));
    }
    let labels = frame.labels(label).map_err(bad)?;
    let deployment_col = DEPLOYMENT_COLUMNS
        .iter()
        .find(|c| frame.column(c).is_some())
        .copied();
    let keys: Vec<&str> = [Some(label), deployment_col, Some("host")]
        .into_iter()
        .flatten()
        .collect();
    let features: Vec<(&String, &[FeatureValue])> = frame
        .names()
        .iter()
        .filter(|n| !keys.contains(&n.as_str()))
        .map(|n| (n, frame.column(n).expect("a named column exists")))
        .collect();
    let deployments = deployment_col.and_then(|c| frame.column(c));
    let hosts = frame.column("host");
    let mut out = Vec::with_capacity(frame.rows());
    for (row, failed) in labels.into_iter().enumerate() {
        let line = frame.line(row);
        let deployment = deployments
            .and_then(|c| c[row].category_text())
            .unwrap_or_else(|| format!("import-{now}-line-{line}"));
        let host = hosts
            .and_then(|c| c[row].category_text())
            .unwrap_or_else(|| format!("line-{line}"));
        if deployment.len() > 256 || host.len() > 256 {
            return Err(ApiError::bad_request(format!(
                "history: line {line}: the deployment id and the host have at most 256 bytes"
            )));
        }
        let features = features
            .iter()
            .map(|(n, col)| ((*n).clone(), from_feature_value(&col[row])))
            .collect();
        out.push(NewOutcome {
            source: OutcomeSource::Import,
            deployment,
            host,
            features,
            failed,
        });
    }
    Ok(out)
}

async fn train(
    State(state): State<AppState>,
    _auth: Operator,
) -> Result<(StatusCode, Json<ModelInfo>), ApiError> {
    let info = train_from_store(&state, Cause::Operator).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

async fn list_models(
    State(state): State<AppState>,
    _auth: Viewer,
) -> Result<Json<Vec<ModelInfo>>, ApiError> {
    Ok(Json(state.store.models().await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RiskQuery {
    update: Option<String>,
    version: Option<String>,
    #[serde(rename = "type")]
    update_type: Option<String>,
    /// Comma-separated host names; every host when absent.
    hosts: Option<String>,
    /// Comma-separated names of the packages the update depends on.
    depends_on: Option<String>,
}

/// One factor of a host's risk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Factor {
    pub feature: String,
    /// Contribution to the calibrated log-odds; positive pushes toward failure.
    pub contribution: f64,
    /// The host's value of the feature (null when unknown); for an evidence factor, the
    /// weighted failures and successes behind it.
    pub value: Value,
    /// What an evidence factor stands for ("failed version 2 on 2026-12-05 (rollout r-…)";
    /// "3 of 3 hosts with group=edge failed version 2 of websvc").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explanation: Option<String>,
}

/// One host's risk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostRisk {
    pub host: HostName,
    pub probability: f64,
    /// The log-odds when nothing is known about the host; with every factor (the top ones
    /// are listed) it adds up to the log-odds of `probability`.
    #[serde(default)]
    pub base_value: f64,
    pub contributing_factors: Vec<Factor>,
}

/// `GET /api/v1/risk`'s answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RiskResponse {
    pub model_version: i64,
    pub update: UpdateInfo,
    /// Highest probability first.
    pub hosts: Vec<HostRisk>,
}

/// A scored host as the API shows it: the top factors, and every evidence factor even when
/// it is not among them, each with its explanation.
pub(crate) fn host_risk(s: HostScore) -> HostRisk {
    let evidence_of = |name: &str| s.evidence.iter().find(|e| e.feature == name);
    let contributing_factors = s
        .prediction
        .contributing_factors
        .iter()
        .enumerate()
        .filter(|(i, (name, _))| *i < RISK_FACTORS || evidence_of(name).is_some())
        .map(|(_, (feature, c))| match evidence_of(feature) {
            Some(e) => Factor {
                feature: feature.clone(),
                contribution: *c,
                value: json!({"failures": e.failures, "successes": e.successes}),
                explanation: Some(e.explanation.clone()),
            },
            None => Factor {
                feature: feature.clone(),
                contribution: *c,
                value: s.features.get(feature).cloned().unwrap_or(Value::Null),
                explanation: None,
            },
        })
        .collect();
    HostRisk {
        host: s.host,
        probability: s.prediction.probability.get(),
        base_value: s.prediction.base_value,
        contributing_factors,
    }
}

/// Validates `type`: `major`, `minor` or `patch`.
pub(crate) fn check_update_type(t: Option<String>) -> Result<Option<String>, ApiError> {
    match t.as_deref() {
        None | Some("") => Ok(None),
        Some("major" | "minor" | "patch") => Ok(t),
        Some(other) => Err(ApiError::bad_request(format!(
            "type {other:?} is not one of major, minor, patch"
        ))),
    }
}

/// One host's score: its feature vector, the model's prediction updated by the direct
/// evidence (its probability and every factor, the evidence terms among them, most toward
/// failure first), and the evidence terms with their explanations.
#[derive(Debug, Clone)]
pub(crate) struct HostScore {
    pub host: HostName,
    pub features: BTreeMap<String, Value>,
    pub prediction: bellwether_predict::Prediction,
    pub evidence: Vec<EvidenceFactor>,
}

/// The kind of the event that records an operator's forgiveness of a host's evidence.
pub const FORGIVEN_EVENT: &str = "evidence_forgiven";

/// The keys that make hosts peers: labels and the packages the update depends on, with
/// their values as text (unknown values make no peer).
fn peer_keys(features: &BTreeMap<String, Value>) -> BTreeMap<String, String> {
    features
        .iter()
        .filter(|(k, _)| k.starts_with("label:") || k.starts_with("pkg:"))
        .filter_map(|(k, v)| {
            let text = match v {
                Value::String(s) if !s.is_empty() => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return None,
            };
            Some((k.clone(), text))
        })
        .collect()
}

/// The direct evidence of `update`: every stored outcome of its name and version, and the
/// operators' forgiveness of hosts for it.
pub(crate) async fn evidence_of(
    state: &AppState,
    update: &UpdateInfo,
) -> Result<(Vec<evidence::Outcome>, Vec<evidence::Forgiven>), ApiError> {
    let outcomes = state
        .store
        .outcomes_of_update(&update.name, &update.version)
        .await?
        .into_iter()
        .map(|o| evidence::Outcome {
            groups: peer_keys(&o.features),
            host: o.host,
            deployment: o.deployment,
            at_ms: o.recorded_at_ms,
            failed: o.failed,
            live: o.source == OutcomeSource::Rollout.as_str(),
        })
        .collect();
    let forgiven = state
        .store
        .events_where(None, Some(FORGIVEN_EVENT), 100_000)
        .await?
        .into_iter()
        .filter(|e| {
            e.figures["update"].as_str() == Some(update.name.as_str())
                && e.figures["version"].as_str() == Some(update.version.as_str())
        })
        .filter_map(|e| {
            Some(evidence::Forgiven {
                host: e.host?,
                at_ms: e.ts_ms,
            })
        })
        .collect();
    Ok((outcomes, forgiven))
}

/// The model's prediction for one row, updated by the direct evidence. Pure: training-free
/// scoring, `GET /api/v1/risk` and rollouts all come through here.
pub(crate) fn predict_with_evidence(
    model: &Model,
    host: &HostName,
    features: &BTreeMap<String, Value>,
    update: &UpdateInfo,
    outcomes: &[evidence::Outcome],
    forgiven: &[evidence::Forgiven],
    now_ms: i64,
) -> Result<(bellwether_predict::Prediction, Vec<EvidenceFactor>), PredictError> {
    let row: HashMap<String, FeatureValue> = features
        .iter()
        .map(|(k, v)| (k.clone(), to_feature_value(v)))
        .collect();
    let mut p = model.predict_row(&row)?;
    let z0 = p.base_value + p.contributing_factors.iter().map(|(_, c)| c).sum::<f64>();
    let groups = peer_keys(features);
    let post = evidence::update(
        z0,
        evidence::Subject {
            host: host.as_str(),
            update: &update.name,
            version: &update.version,
            groups: &groups,
        },
        outcomes,
        forgiven,
        now_ms,
        &evidence::EvidenceParams::default(),
    );
    if !post.factors.is_empty() {
        p.probability = post.probability;
        p.contributing_factors.extend(
            post.factors
                .iter()
                .map(|f| (f.feature.clone(), f.contribution)),
        );
        p.contributing_factors
            .sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    }
    Ok((p, post.factors))
}

/// Scores `hosts` (name, labels) for `update` with `model` and the direct evidence: each
/// host's probability and all its factors, largest toward failure first, with the feature
/// vectors used.
pub(crate) async fn score_hosts(
    state: &AppState,
    model: Arc<Model>,
    hosts: Vec<(HostName, BTreeMap<String, String>)>,
    update: &UpdateInfo,
) -> Result<Vec<HostScore>, ApiError> {
    let now = now_ms();
    let mut vectors = Vec::with_capacity(hosts.len());
    for (name, labels) in hosts {
        let f = host_features(state, &name, &labels, update, now).await?;
        vectors.push((name, f));
    }
    let (outcomes, forgiven) = evidence_of(state, update).await?;
    let update = update.clone();
    tokio::task::spawn_blocking(move || {
        vectors
            .into_iter()
            .map(|(host, features)| {
                let (prediction, evidence) = predict_with_evidence(
                    &model, &host, &features, &update, &outcomes, &forgiven, now,
                )
                .map_err(|e| ApiError::bad_request(format!("host {host}: {e}")))?;
                Ok(HostScore {
                    host,
                    features,
                    prediction,
                    evidence,
                })
            })
            .collect::<Result<Vec<_>, ApiError>>()
    })
    .await
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("scoring stopped: {e}"),
        )
    })?
}

async fn risk(
    State(state): State<AppState>,
    _auth: Viewer,
    q: Result<Query<RiskQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<RiskResponse>, ApiError> {
    let Query(q) =
        q.map_err(|e| ApiError::bad_request(format!("bad query string: {}", e.body_text())))?;
    let name = q.update.filter(|s| !s.trim().is_empty()).ok_or_else(|| {
        ApiError::bad_request(
            "update is required: the name of the proposed update, as in ?update=websvc&version=2",
        )
    })?;
    let version = q.version.filter(|s| !s.trim().is_empty()).ok_or_else(|| {
        ApiError::bad_request("version is required: the version of the proposed update")
    })?;
    let mut depends_on: Vec<String> = Vec::new();
    for n in q
        .depends_on
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let p = bellwether_engine::rollout::plan::PackageName::parse(n)
            .map_err(|e| ApiError::bad_request(format!("depends_on: {e}")))?;
        if !depends_on.contains(&p.0) {
            depends_on.push(p.0);
        }
    }
    let update = UpdateInfo {
        name,
        version,
        update_type: check_update_type(q.update_type)?,
        depends_on,
    };
    let all = state.store.list_hosts().await?;
    let hosts: Vec<(HostName, BTreeMap<String, String>)> =
        match q.hosts.as_deref().filter(|s| !s.trim().is_empty()) {
            None => all.into_iter().map(|h| (h.name, h.labels)).collect(),
            Some(list) => {
                let mut out = Vec::new();
                for n in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    let name = HostName::new(n).map_err(|e| {
                        ApiError::bad_request(format!("hosts: bad host name {n:?}: {e}"))
                    })?;
                    let Some(rec) = all.iter().find(|h| h.name == name) else {
                        return Err(ApiError::not_found(format!("unknown host {name}")));
                    };
                    out.push((rec.name.clone(), rec.labels.clone()));
                }
                out
            }
        };
    let Some((version, model)) = latest_model(&state).await? else {
        return Err(no_model_error());
    };
    let scored = score_hosts(&state, model, hosts, &update).await?;
    let mut out: Vec<HostRisk> = scored.into_iter().map(host_risk).collect();
    out.sort_by(|a, b| {
        b.probability
            .total_cmp(&a.probability)
            .then_with(|| a.host.cmp(&b.host))
    });
    Ok(Json(RiskResponse {
        model_version: version,
        update,
        hosts: out,
    }))
}

/// `POST /api/v1/risk/forgive`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForgiveRequest {
    pub host: String,
    pub update: String,
    pub version: String,
    /// Why the evidence no longer holds (the host was repaired, the failure was elsewhere…).
    pub reason: String,
}

/// `POST /api/v1/risk/forgive`'s answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForgiveResponse {
    pub host: HostName,
    pub update: String,
    pub version: String,
    pub reason: String,
    pub forgiven_at_ms: i64,
    /// The host's outcomes of this update and version that no longer count.
    pub outcomes: usize,
}

/// The longest reason, update name or version the forgive route takes, in bytes.
const FORGIVE_TEXT_MAX: usize = 1024;

/// Clears a host's direct evidence for one update and version: its outcomes recorded until
/// now count neither for it nor for its peers, and it is no longer judged by its peers'
/// earlier outcomes. Recorded as an `evidence_forgiven` event, which is where scoring reads
/// it back (the event log is the truth). Later outcomes count again.
async fn forgive(
    State(state): State<AppState>,
    _auth: Operator,
    principal: Option<axum::Extension<crate::auth::Principal>>,
    crate::body::JsonBody(req): crate::body::JsonBody<ForgiveRequest>,
) -> Result<(StatusCode, Json<ForgiveResponse>), ApiError> {
    let text = |field: &str, v: &str| -> Result<String, ApiError> {
        let v = v.trim();
        if v.is_empty() {
            return Err(ApiError::bad_request(format!(
                "{field} is required and must not be empty"
            )));
        }
        if v.len() > FORGIVE_TEXT_MAX {
            return Err(ApiError::bad_request(format!(
                "{field} has {} bytes; at most {FORGIVE_TEXT_MAX}",
                v.len()
            )));
        }
        Ok(v.to_string())
    };
    let update = text("update", &req.update)?;
    let version = text("version", &req.version)?;
    let reason = text("reason", &req.reason)?;
    let host = HostName::new(req.host.trim())
        .map_err(|e| ApiError::bad_request(format!("host: bad host name {:?}: {e}", req.host)))?;
    if state.store.get_host(&host).await?.is_none() {
        return Err(ApiError::not_found(format!("unknown host {host}")));
    }
    let outcomes = state
        .store
        .outcomes_of_update(&update, &version)
        .await?
        .into_iter()
        .filter(|o| o.host == host.as_str())
        .count();
    let now = now_ms();
    let token_id = principal.map(|axum::Extension(p)| p.token_id);
    state
        .store
        .record_named_event(
            FORGIVEN_EVENT,
            Some(host.as_str()),
            &format!("evidence of {update} {version} on {host} forgiven: {reason}"),
            &json!({"update": update, "version": version, "reason": reason,
                    "outcomes": outcomes, "token_id": token_id}),
            now,
        )
        .await?;
    tracing::info!(host = %host, update = %update, version = %version, outcomes, "Forgave a host's evidence.");
    Ok((
        StatusCode::CREATED,
        Json(ForgiveResponse {
            host,
            update,
            version,
            reason,
            forgiven_at_ms: now,
            outcomes,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_reduce_to_major_minor() {
        assert_eq!(major_minor("1.1.1n-0+deb11u5").as_deref(), Some("1.1"));
        assert_eq!(major_minor("3.0.11-1~deb12u2").as_deref(), Some("3.0"));
        assert_eq!(major_minor("1:1.2.13").as_deref(), Some("1.2"));
        assert_eq!(major_minor("6.8.0-31-generic").as_deref(), Some("6.8"));
        assert_eq!(major_minor("12").as_deref(), Some("12"));
        assert_eq!(major_minor("abc"), None);
    }

    #[test]
    fn the_feature_vector_reads_profile_drift_update_and_labels() {
        let profile = HostProfile {
            os: Some(bellwether_model::profile::OsInfo {
                id: "debian".into(),
                version_id: Some("12".into()),
                pretty_name: None,
            }),
            kernel: Some("6.1.0-18-amd64".into()),
            packages: Some(BTreeMap::from([
                ("libssl1.1".to_string(), "1.1.1n-0".to_string()),
                ("nginx".to_string(), "1.22".to_string()),
            ])),
            hardware: Some(bellwether_model::profile::Hardware {
                cpu_count: Some(4),
                memory_total_kb: Some(8 * 1_048_576),
                ..Default::default()
            }),
            metrics: BTreeMap::from([("disk_free_ratio".to_string(), 0.08)]),
            ..HostProfile::default()
        };
        let update = UpdateInfo {
            name: "websvc".into(),
            version: "2".into(),
            update_type: Some("major".into()),
            depends_on: Vec::new(),
        };
        let labels = BTreeMap::from([("role".to_string(), "web".to_string())]);
        let f = feature_vector(Some(&profile), &labels, None, &update, 2);
        assert_eq!(f["os"], json!("debian-12"));
        assert_eq!(f["kernel"], json!("6.1"));
        assert_eq!(f["libssl"], json!("1.1"));
        assert_eq!(f["cpu_cores"], json!(4));
        assert_eq!(f["mem_gb"], json!(8.0));
        assert!((f["disk_free_pct"].as_f64().unwrap() - 8.0).abs() < 1e-9);
        assert_eq!(f["overall_drift"], Value::Null);
        assert_eq!(f["update_type"], json!("major"));
        assert_eq!(f["prior_failures_30d"], json!(2));
        assert_eq!(f["label:role"], json!("web"));
        // Strings that are numbers read as numbers, as CSV cells do.
        assert_eq!(to_feature_value(&f["kernel"]), FeatureValue::Number(6.1));
        assert_eq!(
            to_feature_value(&f["os"]),
            FeatureValue::Category("debian-12".into())
        );
        assert_eq!(to_feature_value(&Value::Null), FeatureValue::Missing);
        // Nothing known: every attribute is null, the update is still there.
        let empty = feature_vector(None, &BTreeMap::new(), None, &update, 0);
        assert_eq!(empty["os"], Value::Null);
        assert_eq!(empty["update"], json!("websvc"));
    }

    /// The invariant of every prediction holds with the evidence terms among the factors:
    /// `base_value + Σ factors = logit(probability)`, to 1e-9.
    #[test]
    fn evidence_factors_keep_the_factors_adding_up_to_the_log_odds() {
        let update = UpdateInfo {
            name: "websvc".into(),
            version: "2".into(),
            update_type: None,
            depends_on: vec!["glibc".into()],
        };
        let vector = |group: &str, glibc: &str, disk: f64| {
            let profile = HostProfile {
                packages: Some(BTreeMap::from([("glibc".to_string(), glibc.to_string())])),
                metrics: BTreeMap::from([("disk_free_pct".to_string(), disk)]),
                ..HostProfile::default()
            };
            let labels = BTreeMap::from([("group".to_string(), group.to_string())]);
            feature_vector(Some(&profile), &labels, None, &update, 0)
        };
        let rows: Vec<TrainingRow> = (0..300)
            .map(|i| {
                let disk = (i % 50) as f64;
                let f = vector(if i % 3 == 0 { "edge" } else { "core" }, "2.31-1", disk);
                TrainingRow {
                    features: f
                        .iter()
                        .map(|(k, v)| (k.clone(), to_feature_value(v)))
                        .collect(),
                    failed: disk < 8.0 || i % 17 == 0,
                }
            })
            .collect();
        let model = Model::train_rows(&rows, &TrainOptions::default()).unwrap();
        assert_eq!(vector("edge", "2.36-9", 40.0)["pkg:glibc"], json!("2.36"));
        let outcome = |host: &str, group: &str, glibc: &str, failed: bool| evidence::Outcome {
            host: host.into(),
            deployment: "r-1".into(),
            at_ms: 1_000,
            failed,
            live: true,
            groups: peer_keys(&vector(group, glibc, 40.0)),
        };
        let outcomes = vec![
            outcome("a", "edge", "2.36-9", true),
            outcome("b", "edge", "2.36-9", true),
            outcome("c", "core", "2.36-9", true),
            outcome("d", "core", "2.31-1", false),
        ];
        for (host, group, glibc, disk) in [
            ("a", "edge", "2.36-9", 40.0),
            ("c", "core", "2.36-9", 3.0),
            ("d", "core", "2.31-1", 40.0),
            ("e", "core", "2.36-9", 20.0),
            ("f", "edge", "2.31-1", 1.0),
        ] {
            let f = vector(group, glibc, disk);
            let name = HostName::new(host).unwrap();
            let (p, ev) =
                predict_with_evidence(&model, &name, &f, &update, &outcomes, &[], 2_000).unwrap();
            assert!(!ev.is_empty(), "{host}");
            let sum = p.base_value + p.contributing_factors.iter().map(|(_, c)| c).sum::<f64>();
            let q = p.probability.get();
            assert!(((q / (1.0 - q)).ln() - sum).abs() < 1e-9, "{host}: {p:?}");
            for e in &ev {
                assert!(p
                    .contributing_factors
                    .iter()
                    .any(|(n, c)| *n == e.feature && *c == e.contribution));
            }
        }
        // The failed hosts' own evidence makes them high risk; the peer group of `e` is
        // `glibc=2.36` (it separates the outcomes; `group` does not).
        let f = vector("core", "2.36-9", 40.0);
        let (_, ev) = predict_with_evidence(
            &model,
            &HostName::new("e").unwrap(),
            &f,
            &update,
            &outcomes,
            &[],
            2_000,
        )
        .unwrap();
        assert_eq!(ev[0].feature, "evidence:peers:pkg:glibc=2.36");
    }

    #[test]
    fn history_rows_become_outcomes_and_errors_name_line_and_column() {
        let csv = b"deployment_id,host,os,disk_free_pct,outcome\nd1,h1,debian-12,50,0\nd1,h2,,4.5,failure\n";
        let out = parse_history(csv, "outcome", 7).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].deployment, "d1");
        assert_eq!(out[1].host, "h2");
        assert!(out[1].failed);
        assert_eq!(out[1].features["os"], Value::Null);
        assert_eq!(out[1].features["disk_free_pct"], json!(4.5));
        assert!(!out[1].features.contains_key("outcome"));
        assert!(!out[1].features.contains_key("host"));
        let e = parse_history(b"a,outcome\n1,0\n2\n", "outcome", 7).unwrap_err();
        assert!(
            e.message
                .contains("line 3 has 1 fields but the header has 2"),
            "{}",
            e.message
        );
        let e = parse_history(b"a,outcome\n1,maybe\n", "outcome", 7).unwrap_err();
        assert!(
            e.message.contains("line 2, column `outcome`"),
            "{}",
            e.message
        );
        let e = parse_history(b"a,b\n1,0\n", "outcome", 7).unwrap_err();
        assert!(
            e.message.contains("no label column `outcome`"),
            "{}",
            e.message
        );
        let e = parse_history(b"a,outcome\n", "outcome", 7).unwrap_err();
        assert!(e.message.contains("no data rows"), "{}", e.message);
        // Without deployment and host columns each row is its own deployment.
        let out = parse_history(b"a,outcome\n1,0\n2,1\n", "outcome", 7).unwrap();
        assert_eq!(out[0].deployment, "import-7-line-2");
        assert_eq!(out[1].host, "line-3");
    }
}
