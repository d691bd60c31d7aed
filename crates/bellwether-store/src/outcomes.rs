//! Deployment outcomes (the training history) and the versioned failure models trained on them.
//!
//! An outcome is one (deployment, host) row: the host's feature vector before the change (a
//! JSON object of numbers, strings and nulls) and whether the change failed there. Rollouts
//! record one per host they finished; `POST /api/v1/history/import` bootstraps them from a CSV.
//! A later outcome for the same (deployment, host) replaces the earlier one and counts as new.
//!
//! A model row keeps the model file (JSON, as `bellwether_predict::Model::write` makes it), the
//! number of rows and failures it saw, its held-out metrics, and the newest outcome id it was
//! trained on, so that the server can tell how many outcomes arrived since.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::Row;

use crate::{q, Backend, Store, StoreError};

/// Where an outcome came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeSource {
    /// A host finished in a rollout of this server.
    Rollout,
    /// A row of an imported history CSV.
    Import,
}

impl OutcomeSource {
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeSource::Rollout => "rollout",
            OutcomeSource::Import => "import",
        }
    }
}

/// An outcome to record.
#[derive(Debug, Clone, PartialEq)]
pub struct NewOutcome {
    pub source: OutcomeSource,
    /// The rollout id, or the imported row's deployment id.
    pub deployment: String,
    pub host: String,
    /// Feature name to a JSON number, string or null.
    pub features: BTreeMap<String, serde_json::Value>,
    pub failed: bool,
}

/// A stored outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutcomeRecord {
    pub id: i64,
    pub recorded_at_ms: i64,
    pub source: String,
    pub deployment: String,
    pub host: String,
    pub features: BTreeMap<String, serde_json::Value>,
    pub failed: bool,
}

/// A model to store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewModel {
    pub rows: i64,
    pub failures: i64,
    /// The newest outcome id among the training rows.
    pub last_outcome_id: i64,
    /// Why it was trained: `operator` or `automatic`.
    pub cause: String,
    /// Held-out scores and what training decided (JSON).
    pub metrics: serde_json::Value,
    /// The model file's JSON text.
    pub model: String,
}

/// A stored model's description (without the model file).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ModelInfo {
    pub version: i64,
    pub created_at_ms: i64,
    pub rows: i64,
    pub failures: i64,
    pub last_outcome_id: i64,
    pub cause: String,
    pub metrics: serde_json::Value,
}

fn check_outcome(i: usize, o: &NewOutcome) -> Result<(), StoreError> {
    if o.deployment.is_empty() || o.deployment.len() > 256 {
        return Err(StoreError::BadInput {
            field: format!("outcomes[{i}].deployment"),
            reason: "a deployment id has 1 to 256 bytes".into(),
        });
    }
    if o.host.is_empty() || o.host.len() > 256 {
        return Err(StoreError::BadInput {
            field: format!("outcomes[{i}].host"),
            reason: "a host has 1 to 256 bytes".into(),
        });
    }
    for (k, v) in &o.features {
        if k.is_empty() {
            return Err(StoreError::BadInput {
                field: format!("outcomes[{i}].features"),
                reason: "a feature name is empty".into(),
            });
        }
        if !(v.is_number() || v.is_string() || v.is_null()) {
            return Err(StoreError::BadInput {
                field: format!("outcomes[{i}].features.{k}"),
                reason: format!("a feature value is a number, a string or null, not {v}"),
            });
        }
    }
    Ok(())
}

fn parse_features(id: i64, s: &str) -> Result<BTreeMap<String, serde_json::Value>, StoreError> {
    serde_json::from_str(s).map_err(|source| StoreError::Corrupt {
        what: "outcome features",
        host: format!("outcome {id}"),
        source,
    })
}

/// A feature value as text: a string as it is, a whole number without `.0`.
fn value_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(match n.as_f64() {
            Some(x) if x.fract() == 0.0 && x.abs() < 1e15 => format!("{}", x as i64),
            _ => n.to_string(),
        }),
        _ => None,
    }
}

fn outcome_record<R>(row: &R, what: &'static str) -> Result<OutcomeRecord, StoreError>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let id: i64 = row.try_get(0).map_err(q(what))?;
    let features: String = row.try_get(5).map_err(q(what))?;
    let failed: i64 = row.try_get(6).map_err(q(what))?;
    Ok(OutcomeRecord {
        id,
        recorded_at_ms: row.try_get(1).map_err(q(what))?,
        source: row.try_get(2).map_err(q(what))?,
        deployment: row.try_get(3).map_err(q(what))?,
        host: row.try_get(4).map_err(q(what))?,
        features: parse_features(id, &features)?,
        failed: failed != 0,
    })
}

fn parse_metrics(version: i64, s: &str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(s).map_err(|source| StoreError::Corrupt {
        what: "model metrics",
        host: format!("model {version}"),
        source,
    })
}

impl Store {
    /// Records outcomes in one transaction; each replaces any earlier outcome of the same
    /// (deployment, host) and gets a new id. The whole batch is checked first, so a bad row
    /// stores nothing. Returns how many were recorded.
    pub async fn record_outcomes(
        &self,
        outcomes: &[NewOutcome],
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        for (i, o) in outcomes.iter().enumerate() {
            check_outcome(i, o)?;
        }
        let _turn = self.write_turn().await;
        on_pool!(self, pool => {
            let mut tx = pool.begin().await.map_err(q("begin"))?;
            for o in outcomes {
                sqlx::query("DELETE FROM outcomes WHERE deployment = $1 AND host = $2")
                    .bind(&o.deployment)
                    .bind(&o.host)
                    .execute(&mut *tx)
                    .await
                    .map_err(q("replace outcome"))?;
                sqlx::query(
                    "INSERT INTO outcomes (recorded_at_ms, source, deployment, host, features, failed) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(now_ms)
                .bind(o.source.as_str())
                .bind(&o.deployment)
                .bind(&o.host)
                .bind(serde_json::to_string(&o.features).expect("a JSON map always serialises"))
                .bind(o.failed as i64)
                .execute(&mut *tx)
                .await
                .map_err(q("insert outcome"))?;
            }
            tx.commit().await.map_err(q("commit"))?;
            Ok(outcomes.len() as u64)
        })
    }

    /// Every outcome, oldest first.
    pub async fn outcomes(&self) -> Result<Vec<OutcomeRecord>, StoreError> {
        on_pool!(self, pool => {
            let rows = sqlx::query(
                "SELECT id, recorded_at_ms, source, deployment, host, features, failed FROM outcomes ORDER BY id",
            )
            .fetch_all(pool)
            .await
            .map_err(q("outcomes"))?;
            rows.iter().map(|row| outcome_record(row, "outcomes")).collect()
        })
    }

    /// Every outcome of one update and version (the features `update` and `update_version`,
    /// a version stored as a number read as its text), oldest first: the direct evidence of
    /// the risk of that update. The features' JSON text narrows the rows in SQL; each is
    /// then checked on its parsed features.
    pub async fn outcomes_of_update(
        &self,
        update: &str,
        version: &str,
    ) -> Result<Vec<OutcomeRecord>, StoreError> {
        let needle = format!(
            "\"update\":{}",
            serde_json::to_string(update).expect("a string always serialises")
        );
        let mut pattern = String::from("%");
        for c in needle.chars() {
            if matches!(c, '%' | '_' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push('%');
        let all: Vec<OutcomeRecord> = on_pool!(self, pool => {
            let rows = sqlx::query(
                "SELECT id, recorded_at_ms, source, deployment, host, features, failed FROM outcomes \
                 WHERE features LIKE $1 ESCAPE '\\' ORDER BY id",
            )
            .bind(&pattern)
            .fetch_all(pool)
            .await
            .map_err(q("outcomes of an update"))?;
            rows.iter()
                .map(|row| outcome_record(row, "outcomes of an update"))
                .collect::<Result<Vec<_>, StoreError>>()
        })?;
        Ok(all
            .into_iter()
            .filter(|o| {
                o.features.get("update").and_then(value_text).as_deref() == Some(update)
                    && o.features
                        .get("update_version")
                        .and_then(value_text)
                        .as_deref()
                        == Some(version)
            })
            .collect())
    }

    /// How many outcomes have an id above `after_id` (arrived after a model trained on
    /// outcomes up to it), and the newest id (0 when there are none).
    pub async fn outcomes_since(&self, after_id: i64) -> Result<(i64, i64), StoreError> {
        on_pool!(self, pool => {
            let row = sqlx::query("SELECT COUNT(*), COALESCE(MAX(id), 0) FROM outcomes WHERE id > $1")
                .bind(after_id)
                .fetch_one(pool)
                .await
                .map_err(q("count outcomes"))?;
            let n: i64 = row.try_get(0).map_err(q("count outcomes"))?;
            let max: i64 = row.try_get(1).map_err(q("count outcomes"))?;
            Ok((n, max))
        })
    }

    /// How many failed outcomes `host` had that were recorded at or after `since_ms`.
    pub async fn host_failures_since(&self, host: &str, since_ms: i64) -> Result<i64, StoreError> {
        on_pool!(self, pool => {
            sqlx::query_scalar("SELECT COUNT(*) FROM outcomes WHERE host = $1 AND recorded_at_ms >= $2 AND failed <> 0")
                .bind(host)
                .bind(since_ms)
                .fetch_one(pool)
                .await
                .map_err(q("host failures"))
        })
    }

    /// Stores a trained model under the next version number, which it returns.
    pub async fn put_model(&self, model: &NewModel, now_ms: i64) -> Result<i64, StoreError> {
        let _turn = self.write_turn().await;
        on_pool!(self, pool => {
            sqlx::query_scalar(
                "INSERT INTO models (created_at_ms, rows_used, failures, last_outcome_id, cause, metrics, model) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING version",
            )
            .bind(now_ms)
            .bind(model.rows)
            .bind(model.failures)
            .bind(model.last_outcome_id)
            .bind(&model.cause)
            .bind(model.metrics.to_string())
            .bind(&model.model)
            .fetch_one(pool)
            .await
            .map_err(q("put model"))
        })
    }

    /// Every stored model's description, newest first.
    pub async fn models(&self) -> Result<Vec<ModelInfo>, StoreError> {
        on_pool!(self, pool => {
            let rows = sqlx::query(
                "SELECT version, created_at_ms, rows_used, failures, last_outcome_id, cause, metrics FROM models ORDER BY version DESC",
            )
            .fetch_all(pool)
            .await
            .map_err(q("models"))?;
            rows.into_iter()
                .map(|row| {
                    let version: i64 = row.try_get(0).map_err(q("models"))?;
                    let metrics: String = row.try_get(6).map_err(q("models"))?;
                    Ok(ModelInfo {
                        version,
                        created_at_ms: row.try_get(1).map_err(q("models"))?,
                        rows: row.try_get(2).map_err(q("models"))?,
                        failures: row.try_get(3).map_err(q("models"))?,
                        last_outcome_id: row.try_get(4).map_err(q("models"))?,
                        cause: row.try_get(5).map_err(q("models"))?,
                        metrics: parse_metrics(version, &metrics)?,
                    })
                })
                .collect()
        })
    }

    /// The newest model: its description and the model file's JSON text. `None` when no
    /// model was trained yet.
    pub async fn latest_model(&self) -> Result<Option<(ModelInfo, String)>, StoreError> {
        on_pool!(self, pool => {
            let row = sqlx::query(
                "SELECT version, created_at_ms, rows_used, failures, last_outcome_id, cause, metrics, model \
                 FROM models ORDER BY version DESC LIMIT 1",
            )
            .fetch_optional(pool)
            .await
            .map_err(q("latest model"))?;
            let Some(row) = row else { return Ok(None) };
            let version: i64 = row.try_get(0).map_err(q("latest model"))?;
            let metrics: String = row.try_get(6).map_err(q("latest model"))?;
            let info = ModelInfo {
                version,
                created_at_ms: row.try_get(1).map_err(q("latest model"))?,
                rows: row.try_get(2).map_err(q("latest model"))?,
                failures: row.try_get(3).map_err(q("latest model"))?,
                last_outcome_id: row.try_get(4).map_err(q("latest model"))?,
                cause: row.try_get(5).map_err(q("latest model"))?,
                metrics: parse_metrics(version, &metrics)?,
            };
            let model: String = row.try_get(7).map_err(q("latest model"))?;
            Ok(Some((info, model)))
        })
    }
}
