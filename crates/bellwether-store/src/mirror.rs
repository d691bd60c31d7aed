//! Mirrored dependencies (migration 8): one row per dependency the operator declared, with its
//! `DependencySpec` and the id of the long-lived `mirror` task that keeps it mirrored.
//!
//! A dependency and its task are created in one transaction ([`Store::create_dependency`]),
//! so there is never a dependency without a task to drive it, nor a task without its row.
//! Removing a dependency ([`Store::remove_dependency`]) only marks it: its task sees the mark,
//! retires its mirrors and settles; until then the name stays taken. Declaring a removed name
//! again, once its task has settled, replaces the row (the old task and its events stay in
//! the store under the old task id).
//!
//! The store checks that the spec is valid and that its name is the row's; it never
//! interprets the policy.

use bellwether_model::mirror::DependencySpec;
use serde::Serialize;
use sqlx::Row;

use crate::tasks::insert_step_effects;
use crate::{q, Backend, NewTask, StepRecord, Store, StoreError};

/// The kind of the tasks that keep dependencies mirrored.
pub const MIRROR: &str = "mirror";

/// A stored dependency.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DependencyRecord {
    pub name: String,
    pub spec: DependencySpec,
    /// The `mirror` task that keeps it mirrored.
    pub task_id: String,
    pub created_at_ms: i64,
    /// When the spec (its policy) last changed.
    pub updated_at_ms: i64,
    /// When the operator removed it; its task retires the mirrors and settles.
    pub removed_at_ms: Option<i64>,
}

impl DependencyRecord {
    pub fn is_removed(&self) -> bool {
        self.removed_at_ms.is_some()
    }
}

/// What [`Store::create_dependency`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum DependencyCreated {
    /// The dependency and its task were stored.
    Created(DependencyRecord),
    /// A dependency of that name exists (it may be removed, its task still retiring its
    /// mirrors); nothing was stored.
    Exists(DependencyRecord),
}

/// What [`Store::remove_dependency`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum DependencyRemoved {
    /// Marked removed now.
    Removed(DependencyRecord),
    /// It was marked removed before (at `removed_at_ms`); nothing changed.
    AlreadyRemoved(DependencyRecord),
    Unknown,
}

fn bad(field: &str, reason: impl Into<String>) -> StoreError {
    StoreError::BadInput {
        field: field.to_string(),
        reason: reason.into(),
    }
}

fn check_spec(spec: &DependencySpec) -> Result<(), StoreError> {
    spec.validate().map_err(|e| bad("spec", e.to_string()))
}

const COLUMNS: &str = "name, spec, task_id, created_at_ms, updated_at_ms, removed_at_ms";

macro_rules! dependency_from_row {
    ($row:expr) => {{
        let row = $row;
        let name: String = row.try_get(0).map_err(q("dependency"))?;
        let spec: String = row.try_get(1).map_err(q("dependency"))?;
        DependencyRecord {
            spec: serde_json::from_str(&spec).map_err(|source| StoreError::Corrupt {
                what: "dependency spec",
                host: format!("dependency {name}"),
                source,
            })?,
            task_id: row.try_get(2).map_err(q("dependency"))?,
            created_at_ms: row.try_get(3).map_err(q("dependency"))?,
            updated_at_ms: row.try_get(4).map_err(q("dependency"))?,
            removed_at_ms: row.try_get(5).map_err(q("dependency"))?,
            name,
        }
    }};
}

impl Store {
    /// Stores `spec` with its `mirror` task (`task`, whose kind must be [`MIRROR`] and which
    /// holds no hosts: a dependency does not keep its host from other changes) and the task's
    /// first step, in one transaction. A dependency of that name that is not removed, or whose
    /// task has not settled yet, is answered with [`DependencyCreated::Exists`] and nothing is
    /// stored; a removed one whose task settled is replaced.
    pub async fn create_dependency(
        &self,
        spec: &DependencySpec,
        task: &NewTask,
        first: &StepRecord,
        now_ms: i64,
    ) -> Result<DependencyCreated, StoreError> {
        check_spec(spec)?;
        if task.kind != MIRROR {
            return Err(bad(
                "kind",
                format!("a dependency's task is of kind {MIRROR}, not {}", task.kind),
            ));
        }
        if !task.hosts.is_empty() {
            return Err(bad("hosts", "a dependency's task holds no hosts"));
        }
        let json = serde_json::to_string(spec).expect("a dependency spec serialises");
        let _turn = self.write_turn().await;
        on_pool!(self, pool => {
            let mut tx = pool.begin().await.map_err(q("begin"))?;
            // Only the leader of the current term creates tasks (see `create_task`).
            self.check_fence(&mut tx).await?;
            if let Backend::Postgres(_) = self.backend {
                // The same lock as `create_task`: two creations of one name take turns.
                sqlx::query("SELECT pg_advisory_xact_lock(7878002)").execute(&mut *tx).await.map_err(q("lock tasks"))?;
            }
            let row = sqlx::query(&format!("SELECT {COLUMNS} FROM dependencies WHERE name = $1"))
                .bind(&spec.name)
                .fetch_optional(&mut *tx)
                .await
                .map_err(q("dependency"))?;
            if let Some(row) = row {
                let existing = dependency_from_row!(row);
                let settled: Option<i64> = sqlx::query_scalar("SELECT settled FROM tasks WHERE id = $1")
                    .bind(&existing.task_id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(q("dependency task"))?;
                if !existing.is_removed() || settled == Some(0) {
                    return Ok(DependencyCreated::Exists(existing));
                }
                sqlx::query("DELETE FROM dependencies WHERE name = $1")
                    .bind(&spec.name)
                    .execute(&mut *tx)
                    .await
                    .map_err(q("replace dependency"))?;
            }
            sqlx::query(
                "INSERT INTO dependencies (name, kind, spec, task_id, created_at_ms, updated_at_ms, removed_at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $5, NULL)",
            )
            .bind(&spec.name)
            .bind(spec.kind.as_str())
            .bind(&json)
            .bind(&task.id)
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .map_err(q("insert dependency"))?;
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
            Ok(DependencyCreated::Created(DependencyRecord {
                name: spec.name.clone(),
                spec: spec.clone(),
                task_id: task.id.clone(),
                created_at_ms: now_ms,
                updated_at_ms: now_ms,
                removed_at_ms: None,
            }))
        })
    }

    /// The dependency named `name` (removed or not), `None` when unknown.
    pub async fn dependency(&self, name: &str) -> Result<Option<DependencyRecord>, StoreError> {
        on_pool!(self, pool => {
            let row = sqlx::query(&format!("SELECT {COLUMNS} FROM dependencies WHERE name = $1"))
                .bind(name)
                .fetch_optional(pool)
                .await
                .map_err(q("dependency"))?;
            Ok(match row {
                Some(row) => Some(dependency_from_row!(row)),
                None => None,
            })
        })
    }

    /// Every dependency by name; removed ones only with `include_removed`.
    pub async fn dependencies(
        &self,
        include_removed: bool,
    ) -> Result<Vec<DependencyRecord>, StoreError> {
        let filter = if include_removed {
            ""
        } else {
            " WHERE removed_at_ms IS NULL"
        };
        on_pool!(self, pool => {
            let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM dependencies{filter} ORDER BY name"))
                .fetch_all(pool)
                .await
                .map_err(q("dependencies"))?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                out.push(dependency_from_row!(row));
            }
            Ok(out)
        })
    }

    /// Replaces the spec of dependency `spec.name` (the operator changed its policy or
    /// bounds) and returns the stored record; `None` (nothing changed) when it is unknown or
    /// removed. The kind and primary are the dependency's identity: a spec that changes them
    /// is refused (declare another dependency instead).
    pub async fn update_dependency(
        &self,
        spec: &DependencySpec,
        now_ms: i64,
    ) -> Result<Option<DependencyRecord>, StoreError> {
        check_spec(spec)?;
        let Some(current) = self.dependency(&spec.name).await? else {
            return Ok(None);
        };
        if current.spec.kind != spec.kind {
            return Err(bad(
                "kind",
                format!(
                    "dependency {} is of kind {}; its kind cannot change",
                    spec.name,
                    current.spec.kind.as_str()
                ),
            ));
        }
        let json = serde_json::to_string(spec).expect("a dependency spec serialises");
        let _turn = self.write_turn().await;
        on_pool!(self, pool => {
            let row = sqlx::query(&format!(
                "UPDATE dependencies SET spec = $1, updated_at_ms = $2 \
                 WHERE name = $3 AND removed_at_ms IS NULL RETURNING {COLUMNS}"
            ))
            .bind(&json)
            .bind(now_ms)
            .bind(&spec.name)
            .fetch_optional(pool)
            .await
            .map_err(q("update dependency"))?;
            Ok(match row {
                Some(row) => Some(dependency_from_row!(row)),
                None => None,
            })
        })
    }

    /// Marks dependency `name` removed at `now_ms` (its task retires the mirrors and then
    /// settles). Removing it again changes nothing.
    pub async fn remove_dependency(
        &self,
        name: &str,
        now_ms: i64,
    ) -> Result<DependencyRemoved, StoreError> {
        let _turn = self.write_turn().await;
        let row = on_pool!(self, pool => {
            sqlx::query(&format!(
                "UPDATE dependencies SET removed_at_ms = $1, updated_at_ms = $1 \
                 WHERE name = $2 AND removed_at_ms IS NULL RETURNING {COLUMNS}"
            ))
            .bind(now_ms)
            .bind(name)
            .fetch_optional(pool)
            .await
            .map_err(q("remove dependency"))?
            .map(|row| Ok::<_, StoreError>(dependency_from_row!(row)))
            .transpose()?
        });
        if let Some(rec) = row {
            return Ok(DependencyRemoved::Removed(rec));
        }
        drop(_turn);
        Ok(match self.dependency(name).await? {
            Some(rec) => DependencyRemoved::AlreadyRemoved(rec),
            None => DependencyRemoved::Unknown,
        })
    }
}
