//! Patches: the server-driven patch of one stateful instance, a durable task beside rollouts.
//!
//! A patch row holds its plan, the host whose agent runs the instances, its stage and the
//! driver's serialised state (with the engine's report). The engine itself is not stored: its
//! inputs are, in `patch_inputs`, one row per input in order, so a restarted server rebuilds
//! the engine by replaying them (the engine is pure, so the replay reaches the same state).
//! [`Store::save_patch_step`] stores in ONE transaction the new state, the step's inputs, its
//! events (`patch.<kind>` in the event log, with the host and `figures.patch`), its agent
//! actions (queued in `actions` under the patch's id) and the results it consumed. So a server
//! killed at any point resumes with every dispatched action queued once and every consumed
//! result consumed once.
//!
//! A patch is *settled* once its stage is final and its last awaited action has finished; a
//! host has at most one unsettled patch.

use serde::Serialize;
use sqlx::Row;

use crate::{q, Backend, NewAction, NewEvent, Store, StoreError};

/// A stored patch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PatchRecord {
    pub id: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub stage: String,
    pub host: String,
    pub plan_file: String,
    pub plan_yaml: String,
    /// The driver's serialised state.
    pub state: serde_json::Value,
    pub settled: bool,
}

/// A patch to create.
#[derive(Debug, Clone, PartialEq)]
pub struct NewPatch {
    pub id: String,
    pub host: String,
    pub plan_file: String,
    pub plan_yaml: String,
}

/// One step of a patch's driver, stored together.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PatchStep {
    pub stage: String,
    pub settled: bool,
    pub state: serde_json::Value,
    /// The engine inputs of this step, with their sequence numbers (unique per patch).
    pub inputs: Vec<(i64, serde_json::Value)>,
    pub events: Vec<NewEvent>,
    pub dispatches: Vec<NewAction>,
    /// Row ids of the action results this step consumed.
    pub observed_actions: Vec<i64>,
}

fn corrupt(what: &'static str, id: &str, source: serde_json::Error) -> StoreError {
    StoreError::Corrupt {
        what,
        host: id.to_string(),
        source,
    }
}

const PATCH_COLUMNS: &str =
    "id, created_at_ms, updated_at_ms, stage, host, plan_file, plan_yaml, state, settled";

macro_rules! patch_from_row {
    ($row:expr) => {{
        let row = $row;
        let id: String = row.try_get(0).map_err(q("patch"))?;
        let state: String = row.try_get(7).map_err(q("patch"))?;
        let settled: i64 = row.try_get(8).map_err(q("patch"))?;
        PatchRecord {
            created_at_ms: row.try_get(1).map_err(q("patch"))?,
            updated_at_ms: row.try_get(2).map_err(q("patch"))?,
            stage: row.try_get(3).map_err(q("patch"))?,
            host: row.try_get(4).map_err(q("patch"))?,
            plan_file: row.try_get(5).map_err(q("patch"))?,
            plan_yaml: row.try_get(6).map_err(q("patch"))?,
            state: serde_json::from_str(&state).map_err(|e| corrupt("patch state", &id, e))?,
            settled: settled != 0,
            id,
        }
    }};
}

/// Inserts a step's inputs, events, dispatches and consumed results through a transaction.
macro_rules! insert_patch_step {
    ($tx:expr, $id:expr, $host:expr, $step:expr, $now_ms:expr) => {{
        let id: &str = $id;
        let step: &PatchStep = $step;
        for (seq, input) in &step.inputs {
            sqlx::query("INSERT INTO patch_inputs (patch_id, seq, input) VALUES ($1, $2, $3)")
                .bind(id)
                .bind(*seq)
                .bind(input.to_string())
                .execute(&mut *$tx)
                .await
                .map_err(q("insert patch input"))?;
        }
        for e in &step.events {
            let mut figures = e.figures.clone();
            if let serde_json::Value::Object(m) = &mut figures {
                m.insert("patch".into(), serde_json::Value::String(id.to_string()));
            } else {
                figures = serde_json::json!({"patch": id, "value": figures});
            }
            sqlx::query("INSERT INTO events (ts_ms, kind, host, reason, figures) VALUES ($1, $2, $3, $4, $5)")
                .bind(e.ts_ms)
                .bind(format!("patch.{}", e.kind))
                .bind(e.host.clone().or_else(|| Some($host.to_string())))
                .bind(&e.reason)
                .bind(figures.to_string())
                .execute(&mut *$tx)
                .await
                .map_err(q("insert patch event"))?;
        }
        for d in &step.dispatches {
            sqlx::query(
                "INSERT INTO actions (rollout_id, action_id, host, kind, spec, created_at_ms, observed, uid) \
                 VALUES ($1, $2, $3, $4, $5, $6, 0, $7) ON CONFLICT (rollout_id, action_id) DO NOTHING",
            )
            .bind(id)
            .bind(d.action_id as i64)
            .bind(&d.host)
            .bind(&d.kind)
            .bind(d.spec.to_string())
            .bind($now_ms)
            .bind(&d.uid)
            .execute(&mut *$tx)
            .await
            .map_err(q("queue patch action"))?;
        }
        for a in &step.observed_actions {
            sqlx::query("UPDATE actions SET observed = 1 WHERE id = $1 AND rollout_id = $2")
                .bind(*a)
                .bind(id)
                .execute(&mut *$tx)
                .await
                .map_err(q("mark action observed"))?;
        }
        Ok::<(), StoreError>(())
    }};
}

impl Store {
    /// Creates a patch with its first step and returns `None`, unless `host` already has an
    /// unsettled patch: then nothing is stored and the answer is that patch's id.
    pub async fn create_patch(
        &self,
        new: &NewPatch,
        first: &PatchStep,
        now_ms: i64,
    ) -> Result<Option<String>, StoreError> {
        let _turn = self.write_turn().await;
        on_pool!(self, pool => {
            let mut tx = pool.begin().await.map_err(q("begin"))?;
            if let Backend::Postgres(_) = self.backend {
                // Two patches created at once check their host one after the other.
                sqlx::query("SELECT pg_advisory_xact_lock(7878007)").execute(&mut *tx).await.map_err(q("lock patches"))?;
            }
            let busy: Option<String> = sqlx::query_scalar("SELECT id FROM patches WHERE host = $1 AND settled = 0 LIMIT 1")
                .bind(&new.host)
                .fetch_optional(&mut *tx)
                .await
                .map_err(q("busy host"))?;
            if let Some(other) = busy {
                return Ok(Some(other));
            }
            sqlx::query(
                "INSERT INTO patches (id, created_at_ms, updated_at_ms, stage, host, plan_file, plan_yaml, state, settled) \
                 VALUES ($1, $2, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(&new.id)
            .bind(now_ms)
            .bind(&first.stage)
            .bind(&new.host)
            .bind(&new.plan_file)
            .bind(&new.plan_yaml)
            .bind(first.state.to_string())
            .bind(first.settled as i64)
            .execute(&mut *tx)
            .await
            .map_err(q("insert patch"))?;
            insert_patch_step!(tx, &new.id, &new.host, first, now_ms)?;
            tx.commit().await.map_err(q("commit"))?;
            Ok(None)
        })
    }

    /// Stores one step of patch `id` (see the module docs). Unknown patch → error.
    pub async fn save_patch_step(
        &self,
        id: &str,
        step: &PatchStep,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        on_pool!(self, pool => {
            let mut tx = pool.begin().await.map_err(q("begin"))?;
            let host: Option<String> = sqlx::query_scalar("SELECT host FROM patches WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(q("patch host"))?;
            let Some(host) = host else {
                return Err(StoreError::BadInput { field: "patch".into(), reason: format!("unknown patch {id}") });
            };
            sqlx::query("UPDATE patches SET state = $1, stage = $2, updated_at_ms = $3, settled = $4 WHERE id = $5")
                .bind(step.state.to_string())
                .bind(&step.stage)
                .bind(now_ms)
                .bind(step.settled as i64)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(q("save patch"))?;
            insert_patch_step!(tx, id, &host, step, now_ms)?;
            tx.commit().await.map_err(q("commit"))?;
            Ok(())
        })
    }

    /// One patch, `None` when unknown.
    pub async fn patch(&self, id: &str) -> Result<Option<PatchRecord>, StoreError> {
        on_pool!(self, pool => {
            let row = sqlx::query(&format!("SELECT {PATCH_COLUMNS} FROM patches WHERE id = $1"))
                .bind(id)
                .fetch_optional(pool)
                .await
                .map_err(q("patch"))?;
            Ok(match row {
                Some(row) => Some(patch_from_row!(row)),
                None => None,
            })
        })
    }

    /// Every patch, newest first; with `unsettled_only`, those a server drives.
    pub async fn patches(&self, unsettled_only: bool) -> Result<Vec<PatchRecord>, StoreError> {
        let filter = if unsettled_only {
            "WHERE settled = 0"
        } else {
            ""
        };
        on_pool!(self, pool => {
            let rows = sqlx::query(&format!("SELECT {PATCH_COLUMNS} FROM patches {filter} ORDER BY created_at_ms DESC, id DESC"))
                .fetch_all(pool)
                .await
                .map_err(q("patches"))?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                out.push(patch_from_row!(row));
            }
            Ok(out)
        })
    }

    /// The stored engine inputs of patch `id`, in order, with their sequence numbers.
    pub async fn patch_inputs(
        &self,
        id: &str,
    ) -> Result<Vec<(i64, serde_json::Value)>, StoreError> {
        on_pool!(self, pool => {
            let rows = sqlx::query("SELECT seq, input FROM patch_inputs WHERE patch_id = $1 ORDER BY seq")
                .bind(id)
                .fetch_all(pool)
                .await
                .map_err(q("patch inputs"))?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let seq: i64 = row.try_get(0).map_err(q("patch inputs"))?;
                let text: String = row.try_get(1).map_err(q("patch inputs"))?;
                out.push((seq, serde_json::from_str(&text).map_err(|e| corrupt("patch input", id, e))?));
            }
            Ok(out)
        })
    }
}
