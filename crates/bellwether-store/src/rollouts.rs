//! Rollouts and the agent action queue.
//!
//! A rollout row holds the plan, the engine's serialised state and its phase; `rollout_hosts`
//! its target hosts with the feature vector each had when it was scored (the outcome recorded
//! for the host later carries it). After every engine step the server calls
//! [`Store::save_rollout_step`], which in ONE transaction stores the new state, appends the
//! step's events to the event log, queues its dispatches as actions, records its outcomes and
//! marks the action result that caused the step as observed. So a server killed at any point
//! resumes from a state whose dispatches are all queued exactly once and whose consumed
//! results are never fed twice.
//!
//! Actions get a row id (internal: the step that consumed a result names it) and a `uid`, 128
//! random bits in hex, which is the action's id on the agent API. Row ids restart with a fresh
//! store; uids never repeat, so an agent's journal can never take a new action for an old one.
//! `(rollout_id, action_id)` — the engine's own id — is unique, so re-queuing a dispatch the
//! store already has is a no-op (it keeps its first uid).
//!
//! A rollout is *settled* once its phase is final and its last action has reported; until then
//! it keeps its hosts and [`Store::rollouts`] with `unsettled_only` lists it, so a restarted
//! server drives it on.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::Row;

use crate::{q, Backend, NewOutcome, Store, StoreError};

/// A stored rollout.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RolloutRecord {
    pub id: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub phase: String,
    /// The model version that scored its hosts; `None` when no model existed.
    pub model_version: Option<i64>,
    pub plan_file: String,
    pub plan_yaml: String,
    /// The engine's serialised state.
    pub state: serde_json::Value,
    /// Final and with no action in flight.
    pub settled: bool,
}

/// A rollout to create.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRollout {
    pub id: String,
    pub phase: String,
    pub model_version: Option<i64>,
    pub plan_file: String,
    pub plan_yaml: String,
    pub state: serde_json::Value,
    /// Every target host with its feature vector at scoring time.
    pub hosts: Vec<(String, BTreeMap<String, serde_json::Value>)>,
}

/// An event of a rollout step, for the event log.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub ts_ms: i64,
    pub kind: String,
    pub host: Option<String>,
    pub reason: String,
    pub figures: serde_json::Value,
}

/// A dispatch to queue for a host's agent.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAction {
    /// The engine's id, unique within the rollout.
    pub action_id: u64,
    /// The wire id: 128 random bits as 32 lower-case hex characters (the caller draws it).
    pub uid: String,
    pub host: String,
    /// `apply`, `revert` or `remediate`.
    pub kind: String,
    /// The ActionSpec JSON.
    pub spec: serde_json::Value,
}

/// One engine step's effects, stored together.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StepRecord {
    pub phase: String,
    /// The rollout is final and its last action has reported: it no longer holds its hosts.
    pub settled: bool,
    pub state: serde_json::Value,
    pub events: Vec<NewEvent>,
    pub dispatches: Vec<NewAction>,
    pub outcomes: Vec<NewOutcome>,
    /// The global id of the action result this step consumed.
    pub observed_action: Option<i64>,
}

/// A queued action.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActionRecord {
    /// The row id, internal to this store.
    pub id: i64,
    /// The id the agent sees: 128 random bits in hex, unique across stores and time.
    pub uid: String,
    pub rollout_id: String,
    pub action_id: u64,
    pub host: String,
    pub kind: String,
    pub spec: serde_json::Value,
    pub created_at_ms: i64,
    pub delivered_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    /// The agent's report, once it sent one.
    pub result: Option<serde_json::Value>,
    /// Whether the engine has consumed the result.
    pub observed: bool,
}

/// What storing an action result did.
#[derive(Debug, Clone, PartialEq)]
pub enum ActionFinish {
    /// The result was stored now.
    Stored(ActionRecord),
    /// A result was stored before; this one was ignored.
    AlreadyFinished(ActionRecord),
}

fn corrupt(what: &'static str, id: &str, source: serde_json::Error) -> StoreError {
    StoreError::Corrupt {
        what,
        host: id.to_string(),
        source,
    }
}

const ACTION_COLUMNS: &str = "id, rollout_id, action_id, host, kind, spec, created_at_ms, delivered_at_ms, finished_at_ms, result, observed, uid";

macro_rules! action_from_row {
    ($row:expr) => {{
        let row = $row;
        let id: i64 = row.try_get(0).map_err(q("action"))?;
        let spec: String = row.try_get(5).map_err(q("action"))?;
        let result: Option<String> = row.try_get(9).map_err(q("action"))?;
        let action_id: i64 = row.try_get(2).map_err(q("action"))?;
        let observed: i64 = row.try_get(10).map_err(q("action"))?;
        let uid: Option<String> = row.try_get(11).map_err(q("action"))?;
        ActionRecord {
            id,
            uid: uid.unwrap_or_default(),
            rollout_id: row.try_get(1).map_err(q("action"))?,
            action_id: action_id as u64,
            host: row.try_get(3).map_err(q("action"))?,
            kind: row.try_get(4).map_err(q("action"))?,
            spec: serde_json::from_str(&spec)
                .map_err(|e| corrupt("action spec", &format!("action {id}"), e))?,
            created_at_ms: row.try_get(6).map_err(q("action"))?,
            delivered_at_ms: row.try_get(7).map_err(q("action"))?,
            finished_at_ms: row.try_get(8).map_err(q("action"))?,
            result: result
                .map(|r| {
                    serde_json::from_str(&r)
                        .map_err(|e| corrupt("action result", &format!("action {id}"), e))
                })
                .transpose()?,
            observed: observed != 0,
        }
    }};
}

macro_rules! rollout_from_row {
    ($row:expr) => {{
        let row = $row;
        let id: String = row.try_get(0).map_err(q("rollout"))?;
        let state: String = row.try_get(7).map_err(q("rollout"))?;
        let settled: i64 = row.try_get(8).map_err(q("rollout"))?;
        RolloutRecord {
            settled: settled != 0,
            created_at_ms: row.try_get(1).map_err(q("rollout"))?,
            updated_at_ms: row.try_get(2).map_err(q("rollout"))?,
            phase: row.try_get(3).map_err(q("rollout"))?,
            model_version: row.try_get(4).map_err(q("rollout"))?,
            plan_file: row.try_get(5).map_err(q("rollout"))?,
            plan_yaml: row.try_get(6).map_err(q("rollout"))?,
            state: serde_json::from_str(&state).map_err(|e| corrupt("rollout state", &id, e))?,
            id,
        }
    }};
}

const ROLLOUT_COLUMNS: &str =
    "id, created_at_ms, updated_at_ms, phase, model_version, plan_file, plan_yaml, state, settled";

/// Runs `$body` in a transaction `$tx` on a pooled connection and commits; the body's value
/// is the answer. A transaction that fails (a full disk fails the COMMIT itself) needs nothing
/// here: the pool's release hook (`discard_if_in_transaction` in lib.rs) rolls it back and
/// closes a connection still in a transaction, for every write of the store.
macro_rules! in_tx {
    ($pool:expr, |$tx:ident| $body:block) => {{
        let mut $tx = $pool.begin().await.map_err(q("begin"))?;
        let out = $body;
        $tx.commit().await.map_err(q("commit"))?;
        Ok::<_, StoreError>(out)
    }};
}

/// Inserts a step's events, dispatches and outcomes through an open transaction.
macro_rules! insert_step_effects {
    ($tx:expr, $rollout:expr, $step:expr, $now_ms:expr) => {{
        let rollout: &str = $rollout;
        let step: &StepRecord = $step;
        for e in &step.events {
            let mut figures = e.figures.clone();
            if let serde_json::Value::Object(m) = &mut figures {
                m.insert("rollout".into(), serde_json::Value::String(rollout.to_string()));
            } else {
                figures = serde_json::json!({"rollout": rollout, "value": figures});
            }
            sqlx::query("INSERT INTO events (ts_ms, kind, host, reason, figures) VALUES ($1, $2, $3, $4, $5)")
                .bind(e.ts_ms)
                .bind(format!("rollout.{}", e.kind))
                .bind(e.host.clone())
                .bind(&e.reason)
                .bind(figures.to_string())
                .execute(&mut *$tx)
                .await
                .map_err(q("insert rollout event"))?;
        }
        for d in &step.dispatches {
            sqlx::query(
                "INSERT INTO actions (rollout_id, action_id, host, kind, spec, created_at_ms, observed, uid) \
                 VALUES ($1, $2, $3, $4, $5, $6, 0, $7) ON CONFLICT (rollout_id, action_id) DO NOTHING",
            )
            .bind(rollout)
            .bind(d.action_id as i64)
            .bind(&d.host)
            .bind(&d.kind)
            .bind(d.spec.to_string())
            .bind($now_ms)
            .bind(&d.uid)
            .execute(&mut *$tx)
            .await
            .map_err(q("queue action"))?;
        }
        for o in &step.outcomes {
            sqlx::query("DELETE FROM outcomes WHERE deployment = $1 AND host = $2")
                .bind(&o.deployment)
                .bind(&o.host)
                .execute(&mut *$tx)
                .await
                .map_err(q("replace outcome"))?;
            sqlx::query(
                "INSERT INTO outcomes (recorded_at_ms, source, deployment, host, features, failed) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind($now_ms)
            .bind(o.source.as_str())
            .bind(&o.deployment)
            .bind(&o.host)
            .bind(serde_json::to_string(&o.features).expect("a JSON map always serialises"))
            .bind(o.failed as i64)
            .execute(&mut *$tx)
            .await
            .map_err(q("insert outcome"))?;
        }
        Ok::<(), StoreError>(())
    }};
}

impl Store {
    /// Appends an event of a kind outside [`crate::EventKind`] (the model and rollout events,
    /// such as `model_trained` or `rollout.host.failed`) to the event log.
    pub async fn record_named_event(
        &self,
        kind: &str,
        host: Option<&str>,
        reason: &str,
        figures: &serde_json::Value,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        on_pool!(self, pool => {
            sqlx::query("INSERT INTO events (ts_ms, kind, host, reason, figures) VALUES ($1, $2, $3, $4, $5)")
                .bind(now_ms)
                .bind(kind)
                .bind(host.map(str::to_string))
                .bind(reason)
                .bind(figures.to_string())
                .execute(pool)
                .await
                .map_err(q("insert event"))?;
            Ok(())
        })
    }

    /// Creates a rollout with its hosts and first step and returns `None`, unless one of its
    /// hosts is in another running or paused rollout: then nothing is stored and the answer is
    /// `Some((host, other_rollout_id))`.
    pub async fn create_rollout(
        &self,
        new: &NewRollout,
        first: &StepRecord,
        now_ms: i64,
    ) -> Result<Option<(String, String)>, StoreError> {
        let _turn = self.write_turn().await;
        on_pool!(self, pool => {
            let mut tx = pool.begin().await.map_err(q("begin"))?;
            if let Backend::Postgres(_) = self.backend {
                // Two rollouts created at once check their hosts one after the other.
                sqlx::query("SELECT pg_advisory_xact_lock(7878002)").execute(&mut *tx).await.map_err(q("lock rollouts"))?;
            }
            let hosts: Vec<String> = new.hosts.iter().map(|(h, _)| h.clone()).collect();
            let busy = sqlx::query(
                "SELECT rh.host, r.id FROM rollout_hosts rh JOIN rollouts r ON r.id = rh.rollout_id \
                 WHERE r.settled = 0 ORDER BY rh.host",
            )
            .fetch_all(&mut *tx)
            .await
            .map_err(q("busy hosts"))?;
            for row in busy {
                let host: String = row.try_get(0).map_err(q("busy hosts"))?;
                if hosts.contains(&host) {
                    let id: String = row.try_get(1).map_err(q("busy hosts"))?;
                    return Ok(Some((host, id)));
                }
            }
            sqlx::query(
                "INSERT INTO rollouts (id, created_at_ms, updated_at_ms, phase, model_version, plan_file, plan_yaml, hosts, state, settled) \
                 VALUES ($1, $2, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(&new.id)
            .bind(now_ms)
            .bind(&first.phase)
            .bind(new.model_version)
            .bind(&new.plan_file)
            .bind(&new.plan_yaml)
            .bind(serde_json::to_string(&hosts).expect("names serialise"))
            .bind(first.state.to_string())
            .bind(first.settled as i64)
            .execute(&mut *tx)
            .await
            .map_err(q("insert rollout"))?;
            for (host, features) in &new.hosts {
                sqlx::query("INSERT INTO rollout_hosts (rollout_id, host, features) VALUES ($1, $2, $3)")
                    .bind(&new.id)
                    .bind(host)
                    .bind(serde_json::to_string(features).expect("a JSON map always serialises"))
                    .execute(&mut *tx)
                    .await
                    .map_err(q("insert rollout host"))?;
            }
            insert_step_effects!(tx, &new.id, first, now_ms)?;
            tx.commit().await.map_err(q("commit"))?;
            Ok(None)
        })
    }

    /// Stores one engine step of rollout `id` (see the module docs). Unknown rollout → error.
    pub async fn save_rollout_step(
        &self,
        id: &str,
        step: &StepRecord,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        on_pool!(self, pool => in_tx!(pool, |tx| {
            self.check_fence(&mut tx).await?;
            let n = sqlx::query("UPDATE rollouts SET state = $1, phase = $2, updated_at_ms = $3, settled = $4 WHERE id = $5")
                .bind(step.state.to_string())
                .bind(&step.phase)
                .bind(now_ms)
                .bind(step.settled as i64)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(q("save rollout"))?
                .rows_affected();
            if n == 0 {
                return Err(StoreError::BadInput { field: "rollout".into(), reason: format!("unknown rollout {id}") });
            }
            if let Some(a) = step.observed_action {
                sqlx::query("UPDATE actions SET observed = 1 WHERE id = $1 AND rollout_id = $2")
                    .bind(a)
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(q("mark action observed"))?;
            }
            insert_step_effects!(tx, id, step, now_ms)?;
        }))
    }

    /// One rollout, `None` when unknown.
    pub async fn rollout(&self, id: &str) -> Result<Option<RolloutRecord>, StoreError> {
        on_pool!(self, pool => {
            let row = sqlx::query(&format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE id = $1"))
                .bind(id)
                .fetch_optional(pool)
                .await
                .map_err(q("rollout"))?;
            Ok(match row {
                Some(row) => Some(rollout_from_row!(row)),
                None => None,
            })
        })
    }

    /// Every rollout, newest first; with `unsettled_only`, those running, paused, or final
    /// with an action still in flight (the ones a server drives).
    pub async fn rollouts(&self, unsettled_only: bool) -> Result<Vec<RolloutRecord>, StoreError> {
        let filter = if unsettled_only {
            "WHERE settled = 0"
        } else {
            ""
        };
        on_pool!(self, pool => {
            let rows = sqlx::query(&format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts {filter} ORDER BY created_at_ms DESC, id DESC"))
                .fetch_all(pool)
                .await
                .map_err(q("rollouts"))?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                out.push(rollout_from_row!(row));
            }
            Ok(out)
        })
    }

    /// The feature vector each target host of rollout `id` had when it was scored.
    pub async fn rollout_host_features(
        &self,
        id: &str,
    ) -> Result<BTreeMap<String, BTreeMap<String, serde_json::Value>>, StoreError> {
        on_pool!(self, pool => {
            let rows = sqlx::query("SELECT host, features FROM rollout_hosts WHERE rollout_id = $1")
                .bind(id)
                .fetch_all(pool)
                .await
                .map_err(q("rollout hosts"))?;
            let mut out = BTreeMap::new();
            for row in rows {
                let host: String = row.try_get(0).map_err(q("rollout hosts"))?;
                let f: String = row.try_get(1).map_err(q("rollout hosts"))?;
                let f = serde_json::from_str(&f).map_err(|e| corrupt("rollout host features", &host, e))?;
                out.insert(host, f);
            }
            Ok(out)
        })
    }

    /// The actions queued for `host` that have no result yet, oldest first; they are marked
    /// delivered now. An action is sent again on every poll until its result arrives (the
    /// agent keeps a journal and never runs one id twice).
    pub async fn take_open_actions(
        &self,
        host: &str,
        now_ms: i64,
    ) -> Result<Vec<ActionRecord>, StoreError> {
        let _turn = self.write_turn().await;
        on_pool!(self, pool => {
            let rows = in_tx!(pool, |tx| {
            sqlx::query("UPDATE actions SET delivered_at_ms = $1 WHERE host = $2 AND finished_at_ms IS NULL AND delivered_at_ms IS NULL")
                .bind(now_ms)
                .bind(host)
                .execute(&mut *tx)
                .await
                .map_err(q("deliver actions"))?;
            sqlx::query(&format!("SELECT {ACTION_COLUMNS} FROM actions WHERE host = $1 AND finished_at_ms IS NULL ORDER BY id"))
                .bind(host)
                .fetch_all(&mut *tx)
                .await
                .map_err(q("open actions"))?
            })?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                out.push(action_from_row!(row));
            }
            Ok(out)
        })
    }

    /// Stores the agent's result of the action with wire id `uid` for `host`. Idempotent: a
    /// second result for a finished action is ignored. `None` when `host` has no such action.
    pub async fn finish_action(
        &self,
        uid: &str,
        host: &str,
        result: &serde_json::Value,
        now_ms: i64,
    ) -> Result<Option<ActionFinish>, StoreError> {
        let _turn = self.write_turn().await;
        on_pool!(self, pool => {
            let (n, row) = in_tx!(pool, |tx| {
            let n = sqlx::query("UPDATE actions SET result = $1, finished_at_ms = $2 WHERE uid = $3 AND host = $4 AND finished_at_ms IS NULL")
                .bind(result.to_string())
                .bind(now_ms)
                .bind(uid)
                .bind(host)
                .execute(&mut *tx)
                .await
                .map_err(q("finish action"))?
                .rows_affected();
            let row = sqlx::query(&format!("SELECT {ACTION_COLUMNS} FROM actions WHERE uid = $1 AND host = $2"))
                .bind(uid)
                .bind(host)
                .fetch_optional(&mut *tx)
                .await
                .map_err(q("action"))?;
            (n, row)
            })?;
            let Some(row) = row else { return Ok(None) };
            let rec = action_from_row!(row);
            Ok(Some(if n > 0 { ActionFinish::Stored(rec) } else { ActionFinish::AlreadyFinished(rec) }))
        })
    }

    /// Actions of rollout `id` whose results arrived but were not yet consumed by the engine,
    /// oldest result first.
    pub async fn unobserved_results(&self, id: &str) -> Result<Vec<ActionRecord>, StoreError> {
        on_pool!(self, pool => {
            let rows = sqlx::query(&format!(
                "SELECT {ACTION_COLUMNS} FROM actions WHERE rollout_id = $1 AND finished_at_ms IS NOT NULL AND observed = 0 ORDER BY finished_at_ms, id"
            ))
            .bind(id)
            .fetch_all(pool)
            .await
            .map_err(q("unobserved results"))?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                out.push(action_from_row!(row));
            }
            Ok(out)
        })
    }

    /// The samples of `host` with a timestamp above `after_ts_ms`, oldest first, at most
    /// `limit`; empty for an unknown host.
    pub async fn samples_since(
        &self,
        host: &str,
        after_ts_ms: i64,
        limit: i64,
    ) -> Result<Vec<bellwether_model::MetricSample>, StoreError> {
        on_pool!(self, pool => {
            let rows = sqlx::query(
                "SELECT s.ts_ms, s.name, s.value FROM samples s JOIN hosts h ON h.id = s.host_id \
                 WHERE h.name = $1 AND s.ts_ms > $2 ORDER BY s.ts_ms LIMIT $3",
            )
            .bind(host)
            .bind(after_ts_ms)
            .bind(limit)
            .fetch_all(pool)
            .await
            .map_err(q("samples since"))?;
            rows.into_iter()
                .map(|row| {
                    Ok(bellwether_model::MetricSample {
                        ts_ms: row.try_get(0).map_err(q("samples since"))?,
                        name: row.try_get(1).map_err(q("samples since"))?,
                        value: row.try_get(2).map_err(q("samples since"))?,
                    })
                })
                .collect()
        })
    }

    /// Every action of rollout `id`, by id.
    pub async fn rollout_actions(&self, id: &str) -> Result<Vec<ActionRecord>, StoreError> {
        on_pool!(self, pool => {
            let rows = sqlx::query(&format!("SELECT {ACTION_COLUMNS} FROM actions WHERE rollout_id = $1 ORDER BY id"))
                .bind(id)
                .fetch_all(pool)
                .await
                .map_err(q("rollout actions"))?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                out.push(action_from_row!(row));
            }
            Ok(out)
        })
    }
}
