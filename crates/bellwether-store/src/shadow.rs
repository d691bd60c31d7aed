//! Data shadows (migration 9): one row per shadow the operator declared, with its
//! `ShadowSpec` and the id of the long-lived `shadow` task that keeps its points and rolls it
//! back.
//!
//! A shadow and its task are created in one transaction ([`Store::create_shadow`]), so there
//! is never a shadow without a task to drive it, nor a task without its row. Removing a shadow
//! ([`Store::remove_shadow`]) only marks it: its task sees the mark, stops the shadow on the
//! agent and settles; until then the name stays taken. Declaring a removed name again, once
//! its task has settled, replaces the row (the old task and its events stay in the store).
//!
//! The store checks that the spec is valid; it never interprets it. A shadow's task holds no
//! hosts: several shadows may live on one host beside its rollouts.

use bellwether_model::shadow::ShadowSpec;
use serde::Serialize;
use sqlx::Row;

use crate::tasks::insert_step_effects;
use crate::{q, Backend, NewTask, StepRecord, Store, StoreError};

/// The kind of the tasks that keep shadows.
pub const SHADOW: &str = "shadow";

/// A stored shadow.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShadowRecord {
    pub name: String,
    pub spec: ShadowSpec,
    /// The `shadow` task that keeps its points and rolls it back.
    pub task_id: String,
    pub created_at_ms: i64,
    /// When the spec (its policy) last changed.
    pub updated_at_ms: i64,
    /// When the operator removed it; its task stops the shadow and settles.
    pub removed_at_ms: Option<i64>,
}

impl ShadowRecord {
    pub fn is_removed(&self) -> bool {
        self.removed_at_ms.is_some()
    }
}

/// What [`Store::create_shadow`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum ShadowCreated {
    /// The shadow and its task were stored.
    Created(ShadowRecord),
    /// A shadow of that name exists (it may be removed, its task still stopping it);
    /// nothing was stored.
    Exists(ShadowRecord),
}

/// What [`Store::remove_shadow`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum ShadowRemoved {
    /// Marked removed now.
    Removed(ShadowRecord),
    /// It was marked removed before (at `removed_at_ms`); nothing changed.
    AlreadyRemoved(ShadowRecord),
    Unknown,
}

fn bad(field: &str, reason: impl Into<String>) -> StoreError {
    StoreError::BadInput {
        field: field.to_string(),
        reason: reason.into(),
    }
}

fn check_spec(spec: &ShadowSpec) -> Result<(), StoreError> {
    spec.validate().map_err(|e| bad("spec", e.to_string()))
}

const COLUMNS: &str = "name, spec, task_id, created_at_ms, updated_at_ms, removed_at_ms";

macro_rules! shadow_from_row {
    ($row:expr) => {{
        let row = $row;
        let name: String = row.try_get(0).map_err(q("shadow"))?;
        let spec: String = row.try_get(1).map_err(q("shadow"))?;
        ShadowRecord {
            spec: serde_json::from_str(&spec).map_err(|source| StoreError::Corrupt {
                what: "shadow spec",
                host: format!("shadow {name}"),
                source,
            })?,
            task_id: row.try_get(2).map_err(q("shadow"))?,
            created_at_ms: row.try_get(3).map_err(q("shadow"))?,
            updated_at_ms: row.try_get(4).map_err(q("shadow"))?,
            removed_at_ms: row.try_get(5).map_err(q("shadow"))?,
            name,
        }
    }};
}

impl Store {
    /// Stores `spec` with its `shadow` task (`task`, whose kind must be [`SHADOW`] and which
    /// holds no hosts: a shadow does not keep its host from other changes) and the task's
    /// first step, in one transaction. A shadow of that name that is not removed, or whose
    /// task has not settled yet, is answered with [`ShadowCreated::Exists`] and nothing is
    /// stored; a removed one whose task settled is replaced.
    pub async fn create_shadow(
        &self,
        spec: &ShadowSpec,
        task: &NewTask,
        first: &StepRecord,
        now_ms: i64,
    ) -> Result<ShadowCreated, StoreError> {
        check_spec(spec)?;
        if task.kind != SHADOW {
            return Err(bad(
                "kind",
                format!("a shadow's task is of kind {SHADOW}, not {}", task.kind),
            ));
        }
        if !task.hosts.is_empty() {
            return Err(bad("hosts", "a shadow's task holds no hosts"));
        }
        let json = serde_json::to_string(spec).expect("a shadow spec serialises");
        let _turn = self.write_turn().await;
        on_pool!(self, pool => {
            let mut tx = pool.begin().await.map_err(q("begin"))?;
            // Only the leader of the current term creates tasks (see `create_task`).
            self.check_fence(&mut tx).await?;
            if let Backend::Postgres(_) = self.backend {
                // The same lock as `create_task`: two creations of one name take turns.
                sqlx::query("SELECT pg_advisory_xact_lock(7878002)").execute(&mut *tx).await.map_err(q("lock tasks"))?;
            }
            let row = sqlx::query(&format!("SELECT {COLUMNS} FROM shadows WHERE name = $1"))
                .bind(&spec.name)
                .fetch_optional(&mut *tx)
                .await
                .map_err(q("shadow"))?;
            if let Some(row) = row {
                let existing = shadow_from_row!(row);
                let settled: Option<i64> = sqlx::query_scalar("SELECT settled FROM tasks WHERE id = $1")
                    .bind(&existing.task_id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(q("shadow task"))?;
                if !existing.is_removed() || settled == Some(0) {
                    return Ok(ShadowCreated::Exists(existing));
                }
                sqlx::query("DELETE FROM shadows WHERE name = $1")
                    .bind(&spec.name)
                    .execute(&mut *tx)
                    .await
                    .map_err(q("replace shadow"))?;
            }
            sqlx::query(
                "INSERT INTO shadows (name, kind, spec, task_id, created_at_ms, updated_at_ms, removed_at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $5, NULL)",
            )
            .bind(&spec.name)
            .bind(spec.resource.kind.as_str())
            .bind(&json)
            .bind(&task.id)
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .map_err(q("insert shadow"))?;
            sqlx::query(
                "INSERT INTO tasks (id, kind, created_at_ms, updated_at_ms, phase, model_version, plan_file, plan_yaml, hosts, state, settled) \
                 VALUES ($1, $2, $3, $3, $4, $5, $6, $7, '[]', $8, $9)",
            )
            .bind(&task.id)
            .bind(&task.kind)
            .bind(now_ms)
            .bind(&first.phase)
            .bind(task.model_version)
            .bind(&task.plan_file)
            .bind(&task.plan_yaml)
            .bind(first.state.to_string())
            .bind(first.settled as i64)
            .execute(&mut *tx)
            .await
            .map_err(q("insert task"))?;
            insert_step_effects!(tx, &task.kind, &task.id, first, now_ms)?;
            tx.commit().await.map_err(q("commit"))?;
            Ok(ShadowCreated::Created(ShadowRecord {
                name: spec.name.clone(),
                spec: spec.clone(),
                task_id: task.id.clone(),
                created_at_ms: now_ms,
                updated_at_ms: now_ms,
                removed_at_ms: None,
            }))
        })
    }

    /// The shadow named `name` (removed or not), `None` when unknown.
    pub async fn shadow(&self, name: &str) -> Result<Option<ShadowRecord>, StoreError> {
        on_pool!(self, pool => {
            let row = sqlx::query(&format!("SELECT {COLUMNS} FROM shadows WHERE name = $1"))
                .bind(name)
                .fetch_optional(pool)
                .await
                .map_err(q("shadow"))?;
            Ok(match row {
                Some(row) => Some(shadow_from_row!(row)),
                None => None,
            })
        })
    }

    /// Every shadow by name; removed ones only with `include_removed`.
    pub async fn shadows(&self, include_removed: bool) -> Result<Vec<ShadowRecord>, StoreError> {
        let filter = if include_removed {
            ""
        } else {
            " WHERE removed_at_ms IS NULL"
        };
        on_pool!(self, pool => {
            let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM shadows{filter} ORDER BY name"))
                .fetch_all(pool)
                .await
                .map_err(q("shadows"))?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                out.push(shadow_from_row!(row));
            }
            Ok(out)
        })
    }

    /// Marks shadow `name` removed at `now_ms` (its task stops the shadow and then
    /// settles). Removing it again changes nothing.
    pub async fn remove_shadow(
        &self,
        name: &str,
        now_ms: i64,
    ) -> Result<ShadowRemoved, StoreError> {
        let _turn = self.write_turn().await;
        let row = on_pool!(self, pool => {
            sqlx::query(&format!(
                "UPDATE shadows SET removed_at_ms = $1, updated_at_ms = $1 \
                 WHERE name = $2 AND removed_at_ms IS NULL RETURNING {COLUMNS}"
            ))
            .bind(now_ms)
            .bind(name)
            .fetch_optional(pool)
            .await
            .map_err(q("remove shadow"))?
            .map(|row| Ok::<_, StoreError>(shadow_from_row!(row)))
            .transpose()?
        });
        if let Some(rec) = row {
            return Ok(ShadowRemoved::Removed(rec));
        }
        drop(_turn);
        Ok(match self.shadow(name).await? {
            Some(rec) => ShadowRemoved::AlreadyRemoved(rec),
            None => ShadowRemoved::Unknown,
        })
    }
}
