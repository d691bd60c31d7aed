//! Durable change tasks (rollouts, patches, and every later kind) and the agent action queue.
//!
//! A task row holds its kind (`rollout`, `patch`…), the plan, the engine's serialised state and
//! its phase; `task_hosts` its target hosts with the feature vector each had when it was
//! scored (the outcome recorded for the host later carries it; an empty map for a kind that
//! scores nothing). After every engine step the server calls [`Store::save_task_step`], which
//! in ONE transaction stores the new state, appends the step's events to the event log, queues
//! its dispatches as actions, records its outcomes and marks the action result that caused the
//! step as observed. So a server killed at any point resumes from a state whose dispatches are
//! all queued exactly once and whose consumed results are never fed twice. Every kind goes
//! through that one function; the rollout API ([`Store::save_rollout_step`],
//! [`Store::create_rollout`], [`Store::rollouts`]…) is the same calls with the kind `rollout`.
//!
//! A step's events are stored as `KIND.EVENT` (`rollout.host.applied`, `patch.stage`) with the
//! task's id in the `task` column and in the figures under the kind's name
//! (`{"rollout": "r-…", …}`), so `GET /api/v1/events?task=ID` is one indexed query.
//!
//! Actions get a row id (internal: the step that consumed a result names it) and a `uid`, 128
//! random bits in hex, which is the action's id on the agent API. Row ids restart with a fresh
//! store; uids never repeat, so an agent's journal can never take a new action for an old one.
//! `(task_id, action_id)` — the engine's own id — is unique, so re-queuing a dispatch the store
//! already has is a no-op (it keeps its first uid).
//!
//! A task is *settled* once its phase is final and its last action has reported; until then it
//! keeps its hosts (no other task of any kind may take them) and [`Store::tasks`] with
//! `unsettled_only` lists it, so a restarted server drives it on.

use std::collections::BTreeMap;

use bellwether_model::HostName;
use serde::Serialize;
use sqlx::Row;

use crate::{q, Backend, Event, NewOutcome, Store, StoreError};

/// The kind name of rollouts.
pub const ROLLOUT: &str = "rollout";

/// A stored task of any kind.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskRecord {
    pub id: String,
    /// `rollout`, `patch`, …
    pub kind: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub phase: String,
    /// The model version that scored its hosts; `None` when no model existed (or the kind
    /// scores none).
    pub model_version: Option<i64>,
    pub plan_file: String,
    pub plan_yaml: String,
    /// The engine's serialised state.
    pub state: serde_json::Value,
    /// Final and with no action in flight.
    pub settled: bool,
}

/// A stored rollout: a task of kind [`ROLLOUT`].
pub type RolloutRecord = TaskRecord;

/// A task to create; its phase and state are those of its first step.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTask {
    pub id: String,
    pub kind: String,
    pub model_version: Option<i64>,
    pub plan_file: String,
    pub plan_yaml: String,
    /// Every host the task changes, with its feature vector at scoring time (empty when the
    /// kind scores none). A host belongs to one unsettled task at a time.
    pub hosts: Vec<(String, BTreeMap<String, serde_json::Value>)>,
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

/// Why a task was not created: one of its hosts is in another unsettled task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusyHost {
    pub host: String,
    /// The other task's kind and id.
    pub kind: String,
    pub task: String,
}

/// An event of a task step, for the event log. `kind` is the engine's name for it; the store
/// prefixes the task's kind (`host.applied` of a rollout is stored as `rollout.host.applied`).
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
    /// The engine's id, unique within the task.
    pub action_id: u64,
    /// The wire id: 128 random bits as 32 lower-case hex characters (the caller draws it).
    pub uid: String,
    pub host: String,
    /// The engine's name for it: `apply`, `revert`, `remediate`, `start_patched`…
    pub kind: String,
    /// The ActionSpec JSON.
    pub spec: serde_json::Value,
}

/// One engine step's effects, stored together.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StepRecord {
    pub phase: String,
    /// The task is final and its last action has reported: it no longer holds its hosts.
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
    /// The task that dispatched it.
    pub task_id: String,
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

/// Which events [`Store::find_events`] returns; every field set narrows the answer.
#[derive(Debug, Clone, Copy, Default)]
pub struct EventFilter<'a> {
    pub host: Option<&'a HostName>,
    /// One kind, such as `audit` or `rollout.host.applied`.
    pub kind: Option<&'a str>,
    /// The events of one task's steps.
    pub task: Option<&'a str>,
    /// Only events with a larger id, oldest first (to follow the log); without it the newest
    /// come first.
    pub after_id: Option<i64>,
}

fn corrupt(what: &'static str, id: &str, source: serde_json::Error) -> StoreError {
    StoreError::Corrupt {
        what,
        host: id.to_string(),
        source,
    }
}

const ACTION_COLUMNS: &str = "id, task_id, action_id, host, kind, spec, created_at_ms, delivered_at_ms, finished_at_ms, result, observed, uid";

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
            task_id: row.try_get(1).map_err(q("action"))?,
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

macro_rules! task_from_row {
    ($row:expr) => {{
        let row = $row;
        let id: String = row.try_get(0).map_err(q("task"))?;
        let state: String = row.try_get(7).map_err(q("task"))?;
        let settled: i64 = row.try_get(8).map_err(q("task"))?;
        TaskRecord {
            settled: settled != 0,
            created_at_ms: row.try_get(1).map_err(q("task"))?,
            updated_at_ms: row.try_get(2).map_err(q("task"))?,
            phase: row.try_get(3).map_err(q("task"))?,
            model_version: row.try_get(4).map_err(q("task"))?,
            plan_file: row.try_get(5).map_err(q("task"))?,
            plan_yaml: row.try_get(6).map_err(q("task"))?,
            kind: row.try_get(9).map_err(q("task"))?,
            state: serde_json::from_str(&state).map_err(|e| corrupt("task state", &id, e))?,
            id,
        }
    }};
}

const TASK_COLUMNS: &str =
    "id, created_at_ms, updated_at_ms, phase, model_version, plan_file, plan_yaml, state, settled, kind";

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

/// Inserts a step's events, dispatches and outcomes of task `$task` of kind `$kind` through an
/// open transaction.
macro_rules! insert_step_effects {
    ($tx:expr, $kind:expr, $task:expr, $step:expr, $now_ms:expr) => {{
        let kind: &str = $kind;
        let task: &str = $task;
        let step: &StepRecord = $step;
        for e in &step.events {
            let mut figures = e.figures.clone();
            if let serde_json::Value::Object(m) = &mut figures {
                m.insert(kind.to_string(), serde_json::Value::String(task.to_string()));
            } else {
                figures = serde_json::json!({kind: task, "value": figures});
            }
            sqlx::query("INSERT INTO events (ts_ms, kind, host, reason, figures, task) VALUES ($1, $2, $3, $4, $5, $6)")
                .bind(e.ts_ms)
                .bind(format!("{kind}.{}", e.kind))
                .bind(e.host.clone())
                .bind(&e.reason)
                .bind(figures.to_string())
                .bind(task)
                .execute(&mut *$tx)
                .await
                .map_err(q("insert task event"))?;
        }
        for d in &step.dispatches {
            sqlx::query(
                "INSERT INTO actions (task_id, action_id, host, kind, spec, created_at_ms, observed, uid) \
                 VALUES ($1, $2, $3, $4, $5, $6, 0, $7) ON CONFLICT (task_id, action_id) DO NOTHING",
            )
            .bind(task)
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
// The mirror module creates a task in its dependency's transaction.
pub(crate) use insert_step_effects;

impl Store {
    /// Appends an event of a kind outside [`crate::EventKind`] (the model and task events,
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

    /// Creates a task with its hosts and first step and returns `None`, unless one of its
    /// hosts is in another unsettled task (of any kind): then nothing is stored and the answer
    /// names the host and that task.
    pub async fn create_task(
        &self,
        new: &NewTask,
        first: &StepRecord,
        now_ms: i64,
    ) -> Result<Option<BusyHost>, StoreError> {
        let _turn = self.write_turn().await;
        on_pool!(self, pool => {
            let mut tx = pool.begin().await.map_err(q("begin"))?;
            // Only the leader of the current term creates tasks: one created by a stale
            // leader would be driven by nobody until the next change of leader.
            self.check_fence(&mut tx).await?;
            if let Backend::Postgres(_) = self.backend {
                // Two tasks created at once check their hosts one after the other.
                sqlx::query("SELECT pg_advisory_xact_lock(7878002)").execute(&mut *tx).await.map_err(q("lock tasks"))?;
            }
            let hosts: Vec<String> = new.hosts.iter().map(|(h, _)| h.clone()).collect();
            let busy = sqlx::query(
                "SELECT th.host, t.kind, t.id FROM task_hosts th JOIN tasks t ON t.id = th.task_id \
                 WHERE t.settled = 0 ORDER BY th.host",
            )
            .fetch_all(&mut *tx)
            .await
            .map_err(q("busy hosts"))?;
            for row in busy {
                let host: String = row.try_get(0).map_err(q("busy hosts"))?;
                if hosts.contains(&host) {
                    return Ok(Some(BusyHost {
                        host,
                        kind: row.try_get(1).map_err(q("busy hosts"))?,
                        task: row.try_get(2).map_err(q("busy hosts"))?,
                    }));
                }
            }
            sqlx::query(
                "INSERT INTO tasks (id, kind, created_at_ms, updated_at_ms, phase, model_version, plan_file, plan_yaml, hosts, state, settled) \
                 VALUES ($1, $2, $3, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(&new.id)
            .bind(&new.kind)
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
            .map_err(q("insert task"))?;
            for (host, features) in &new.hosts {
                sqlx::query("INSERT INTO task_hosts (task_id, host, features) VALUES ($1, $2, $3)")
                    .bind(&new.id)
                    .bind(host)
                    .bind(serde_json::to_string(features).expect("a JSON map always serialises"))
                    .execute(&mut *tx)
                    .await
                    .map_err(q("insert task host"))?;
            }
            insert_step_effects!(tx, &new.kind, &new.id, first, now_ms)?;
            tx.commit().await.map_err(q("commit"))?;
            Ok(None)
        })
    }

    /// Creates a rollout with its hosts and first step and returns `None`, unless one of its
    /// hosts is in another unsettled task: then nothing is stored and the answer is
    /// `Some((host, other_task_id))`.
    pub async fn create_rollout(
        &self,
        new: &NewRollout,
        first: &StepRecord,
        now_ms: i64,
    ) -> Result<Option<(String, String)>, StoreError> {
        let task = NewTask {
            id: new.id.clone(),
            kind: ROLLOUT.to_string(),
            model_version: new.model_version,
            plan_file: new.plan_file.clone(),
            plan_yaml: new.plan_yaml.clone(),
            hosts: new.hosts.clone(),
        };
        Ok(self
            .create_task(&task, first, now_ms)
            .await?
            .map(|b| (b.host, b.task)))
    }

    /// Stores one engine step of task `id` of kind `kind` (see the module docs): the one save
    /// path of every kind. An unknown task, or one of another kind, is an error and nothing is
    /// stored.
    pub async fn save_task_step(
        &self,
        kind: &str,
        id: &str,
        step: &StepRecord,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        on_pool!(self, pool => in_tx!(pool, |tx| {
            self.check_fence(&mut tx).await?;
            let n = sqlx::query("UPDATE tasks SET state = $1, phase = $2, updated_at_ms = $3, settled = $4 WHERE id = $5 AND kind = $6")
                .bind(step.state.to_string())
                .bind(&step.phase)
                .bind(now_ms)
                .bind(step.settled as i64)
                .bind(id)
                .bind(kind)
                .execute(&mut *tx)
                .await
                .map_err(q("save task step"))?
                .rows_affected();
            if n == 0 {
                return Err(StoreError::BadInput { field: kind.to_string(), reason: format!("unknown {kind} {id}") });
            }
            if let Some(a) = step.observed_action {
                sqlx::query("UPDATE actions SET observed = 1 WHERE id = $1 AND task_id = $2")
                    .bind(a)
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(q("mark action observed"))?;
            }
            insert_step_effects!(tx, kind, id, step, now_ms)?;
        }))
    }

    /// Stores one engine step of rollout `id`: [`Store::save_task_step`] of kind
    /// [`ROLLOUT`]. Unknown rollout → error.
    pub async fn save_rollout_step(
        &self,
        id: &str,
        step: &StepRecord,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.save_task_step(ROLLOUT, id, step, now_ms).await
    }

    /// One task of any kind, `None` when unknown.
    pub async fn task(&self, id: &str) -> Result<Option<TaskRecord>, StoreError> {
        on_pool!(self, pool => {
            let row = sqlx::query(&format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1"))
                .bind(id)
                .fetch_optional(pool)
                .await
                .map_err(q("task"))?;
            Ok(match row {
                Some(row) => Some(task_from_row!(row)),
                None => None,
            })
        })
    }

    /// Every task (of `kind`, or of every kind), newest first; with `unsettled_only`, those
    /// running, paused, or final with an action still in flight (the ones a server drives).
    pub async fn tasks(
        &self,
        kind: Option<&str>,
        unsettled_only: bool,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        let mut filter = Vec::new();
        if kind.is_some() {
            filter.push("kind = $1");
        }
        if unsettled_only {
            filter.push("settled = 0");
        }
        let filter = if filter.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", filter.join(" AND "))
        };
        on_pool!(self, pool => {
            let sql = format!("SELECT {TASK_COLUMNS} FROM tasks {filter} ORDER BY created_at_ms DESC, id DESC");
            let mut query = sqlx::query(&sql);
            if let Some(k) = kind {
                query = query.bind(k);
            }
            let rows = query.fetch_all(pool).await.map_err(q("tasks"))?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                out.push(task_from_row!(row));
            }
            Ok(out)
        })
    }

    /// One rollout, `None` when unknown (or the id is a task of another kind).
    pub async fn rollout(&self, id: &str) -> Result<Option<RolloutRecord>, StoreError> {
        Ok(self.task(id).await?.filter(|t| t.kind == ROLLOUT))
    }

    /// Every rollout, newest first; with `unsettled_only`, those running, paused, or final
    /// with an action still in flight (the ones a server drives).
    pub async fn rollouts(&self, unsettled_only: bool) -> Result<Vec<RolloutRecord>, StoreError> {
        self.tasks(Some(ROLLOUT), unsettled_only).await
    }

    /// The feature vector each target host of task `id` had when it was scored.
    pub async fn task_host_features(
        &self,
        id: &str,
    ) -> Result<BTreeMap<String, BTreeMap<String, serde_json::Value>>, StoreError> {
        on_pool!(self, pool => {
            let rows = sqlx::query("SELECT host, features FROM task_hosts WHERE task_id = $1")
                .bind(id)
                .fetch_all(pool)
                .await
                .map_err(q("task hosts"))?;
            let mut out = BTreeMap::new();
            for row in rows {
                let host: String = row.try_get(0).map_err(q("task hosts"))?;
                let f: String = row.try_get(1).map_err(q("task hosts"))?;
                let f = serde_json::from_str(&f).map_err(|e| corrupt("task host features", &host, e))?;
                out.insert(host, f);
            }
            Ok(out)
        })
    }

    /// The feature vector each target host of rollout `id` had when it was scored.
    pub async fn rollout_host_features(
        &self,
        id: &str,
    ) -> Result<BTreeMap<String, BTreeMap<String, serde_json::Value>>, StoreError> {
        self.task_host_features(id).await
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

    /// Actions of task `id` whose results arrived but were not yet consumed by the engine,
    /// oldest result first.
    pub async fn unobserved_results(&self, id: &str) -> Result<Vec<ActionRecord>, StoreError> {
        on_pool!(self, pool => {
            let rows = sqlx::query(&format!(
                "SELECT {ACTION_COLUMNS} FROM actions WHERE task_id = $1 AND finished_at_ms IS NOT NULL AND observed = 0 ORDER BY finished_at_ms, id"
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

    /// The samples `host`'s agent sent with a timestamp above `after_ts_ms`, oldest first, at
    /// most `limit`; empty for an unknown host. Values the server read elsewhere (Prometheus)
    /// are not among them.
    pub async fn samples_since(
        &self,
        host: &str,
        after_ts_ms: i64,
        limit: i64,
    ) -> Result<Vec<bellwether_model::MetricSample>, StoreError> {
        on_pool!(self, pool => {
            let rows = sqlx::query(
                "SELECT s.ts_ms, s.name, s.value FROM samples s JOIN hosts h ON h.id = s.host_id \
                 WHERE h.name = $1 AND s.ts_ms > $2 AND s.source = 'agent' ORDER BY s.ts_ms LIMIT $3",
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

    /// Every action of task `id`, by id.
    pub async fn task_actions(&self, id: &str) -> Result<Vec<ActionRecord>, StoreError> {
        on_pool!(self, pool => {
            let rows = sqlx::query(&format!("SELECT {ACTION_COLUMNS} FROM actions WHERE task_id = $1 ORDER BY id"))
                .bind(id)
                .fetch_all(pool)
                .await
                .map_err(q("task actions"))?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                out.push(action_from_row!(row));
            }
            Ok(out)
        })
    }

    /// Every action of rollout `id`, by id.
    pub async fn rollout_actions(&self, id: &str) -> Result<Vec<ActionRecord>, StoreError> {
        self.task_actions(id).await
    }

    /// The events `filter` selects, at most `limit`: newest first, or with `after_id` the
    /// oldest after it first (to follow one task's log).
    pub async fn find_events(
        &self,
        filter: &EventFilter<'_>,
        limit: i64,
    ) -> Result<Vec<Event>, StoreError> {
        let mut sql =
            String::from("SELECT id, ts_ms, kind, host, reason, figures, task FROM events");
        let mut n = 0;
        let mut clause = |cond: &str, sql: &mut String| {
            n += 1;
            sql.push_str(if n == 1 { " WHERE " } else { " AND " });
            sql.push_str(&cond.replace('?', &format!("${n}")));
        };
        if filter.host.is_some() {
            clause("host = ?", &mut sql);
        }
        if filter.kind.is_some() {
            clause("kind = ?", &mut sql);
        }
        if filter.task.is_some() {
            clause("task = ?", &mut sql);
        }
        if filter.after_id.is_some() {
            clause("id > ?", &mut sql);
        }
        let order = if filter.after_id.is_some() {
            "ASC"
        } else {
            "DESC"
        };
        sql.push_str(&format!(" ORDER BY id {order} LIMIT ${}", n + 1));
        on_pool!(self, pool => {
            let mut query = sqlx::query(&sql);
            if let Some(h) = filter.host {
                query = query.bind(h.as_str());
            }
            if let Some(k) = filter.kind {
                query = query.bind(k);
            }
            if let Some(t) = filter.task {
                query = query.bind(t);
            }
            if let Some(a) = filter.after_id {
                query = query.bind(a);
            }
            let rows = query.bind(limit).fetch_all(pool).await.map_err(q("events"))?;
            rows.into_iter()
                .map(|row| {
                    let figures: String = row.try_get(5).map_err(q("events"))?;
                    let host: Option<String> = row.try_get(3).map_err(q("events"))?;
                    Ok(Event {
                        id: row.try_get(0).map_err(q("events"))?,
                        ts_ms: row.try_get(1).map_err(q("events"))?,
                        kind: row.try_get(2).map_err(q("events"))?,
                        figures: serde_json::from_str(&figures).map_err(|source| StoreError::Corrupt {
                            what: "event figures",
                            host: host.clone().unwrap_or_default(),
                            source,
                        })?,
                        host,
                        reason: row.try_get(4).map_err(q("events"))?,
                        task: row.try_get(6).map_err(q("events"))?,
                    })
                })
                .collect()
        })
    }
}
