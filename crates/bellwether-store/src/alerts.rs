//! Alerts (migration 10): the server-wide alert rules, the deliveries the dispatcher queues
//! for the events rules match, every attempt at each, and the dispatcher's place in the event
//! log.
//!
//! The store never interprets a rule (the server validates it with
//! `bellwether_engine::alerts`) and never sends anything. A delivery is queued once per
//! (`rule_key`, event): [`Store::enqueue_alerts`] ignores one it already has, so a dispatcher
//! that reads an event again (after a restart, or while it waits for a gap in the event ids to
//! fill) never queues it twice; it moves the cursor in the same transaction. An attempt and
//! the delivery's new state are written together ([`Store::record_alert_attempt`]), and only
//! if the delivery still has the attempt count the sender saw, so two senders of one delivery
//! never both log the same attempt. A delivery's `target` (the full URL, with whatever secret
//! it holds) is read only by the sender; lists answer `url`, the URL without its secrets.

use serde::Serialize;
use sqlx::Row;

use crate::{q, Backend, Store, StoreError};

/// A stored server-wide rule.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertRuleRecord {
    pub id: i64,
    pub name: String,
    /// The rule as JSON (`{name, url, format, events, hosts?}`).
    pub spec: serde_json::Value,
    pub created_at_ms: i64,
}

/// What [`Store::create_alert_rule`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum AlertRuleCreated {
    Created(AlertRuleRecord),
    /// A rule of that name exists; nothing was stored.
    Exists(AlertRuleRecord),
}

/// A delivery to queue.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDelivery {
    /// Which rule, unique with the event: `server:ID` for a server rule, `plan:TASK:NAME` for
    /// a plan's, `test:ID` for `alerts test`.
    pub rule_key: String,
    /// The rule's name, as shown.
    pub rule: String,
    /// The task whose plan holds the rule.
    pub task: Option<String>,
    /// `None` for a test delivery.
    pub event_id: Option<i64>,
    pub event_kind: String,
    /// The full URL.
    pub target: String,
    /// The URL without its secrets.
    pub url: String,
    /// `generic` or `slack`.
    pub format: String,
    pub body: serde_json::Value,
}

/// A queued delivery.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeliveryRecord {
    pub id: i64,
    pub rule_key: String,
    pub rule: String,
    pub task: Option<String>,
    pub event_id: Option<i64>,
    pub event_kind: String,
    /// The full URL: for the sender only, never answered.
    #[serde(skip)]
    pub target: String,
    pub url: String,
    pub format: String,
    pub body: serde_json::Value,
    /// `pending`, `delivered` or `failed`.
    pub state: String,
    pub attempts: i64,
    pub next_attempt_ms: Option<i64>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// The outcome of one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttemptOutcome {
    /// A 2xx answer: the delivery is done.
    Delivered,
    /// Another attempt follows at `next_attempt_ms`.
    Retry,
    /// No attempt follows: a permanent refusal, or the last attempt failed.
    Failed,
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Delivered => "delivered",
            AttemptOutcome::Retry => "retry",
            AttemptOutcome::Failed => "failed",
        }
    }
}

/// One attempt to record.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAttempt {
    /// 1-based; the delivery must have made `attempt - 1` attempts.
    pub attempt: i64,
    pub at_ms: i64,
    /// The HTTP status, when one came.
    pub status: Option<u16>,
    /// What went wrong, without the URL's secrets.
    pub error: Option<String>,
    pub outcome: AttemptOutcome,
    /// With [`AttemptOutcome::Retry`]: when the next attempt is due.
    pub next_attempt_ms: Option<i64>,
}

/// One attempt as the delivery log shows it, with its delivery's rule, event and URL.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct AttemptRecord {
    pub id: i64,
    pub delivery: i64,
    pub rule: String,
    pub task: Option<String>,
    pub event_id: Option<i64>,
    pub event_kind: String,
    pub url: String,
    pub format: String,
    pub attempt: i64,
    pub at_ms: i64,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub outcome: String,
    pub next_attempt_ms: Option<i64>,
    /// The delivery's state now: `pending`, `delivered` or `failed`.
    pub delivery_state: String,
}

/// Which attempts [`Store::alert_attempts`] answers; every field set narrows it.
#[derive(Debug, Clone, Copy, Default)]
pub struct AttemptFilter<'a> {
    pub rule: Option<&'a str>,
    pub event_id: Option<i64>,
    pub delivery: Option<i64>,
}

const DELIVERY_COLUMNS: &str = "id, rule_key, rule, task, event_id, event_kind, target, url, format, body, state, attempts, next_attempt_ms, created_at_ms, updated_at_ms";

fn corrupt(what: &'static str, id: String, source: serde_json::Error) -> StoreError {
    StoreError::Corrupt {
        what,
        host: id,
        source,
    }
}

macro_rules! rule_from_row {
    ($row:expr) => {{
        let row = $row;
        let id: i64 = row.try_get(0).map_err(q("alert rule"))?;
        let spec: String = row.try_get(2).map_err(q("alert rule"))?;
        AlertRuleRecord {
            id,
            name: row.try_get(1).map_err(q("alert rule"))?,
            spec: serde_json::from_str(&spec)
                .map_err(|e| corrupt("alert rule", format!("alert rule {id}"), e))?,
            created_at_ms: row.try_get(3).map_err(q("alert rule"))?,
        }
    }};
}

macro_rules! delivery_from_row {
    ($row:expr) => {{
        let row = $row;
        let id: i64 = row.try_get(0).map_err(q("alert delivery"))?;
        let body: String = row.try_get(9).map_err(q("alert delivery"))?;
        DeliveryRecord {
            id,
            rule_key: row.try_get(1).map_err(q("alert delivery"))?,
            rule: row.try_get(2).map_err(q("alert delivery"))?,
            task: row.try_get(3).map_err(q("alert delivery"))?,
            event_id: row.try_get(4).map_err(q("alert delivery"))?,
            event_kind: row.try_get(5).map_err(q("alert delivery"))?,
            target: row.try_get(6).map_err(q("alert delivery"))?,
            url: row.try_get(7).map_err(q("alert delivery"))?,
            format: row.try_get(8).map_err(q("alert delivery"))?,
            body: serde_json::from_str(&body)
                .map_err(|e| corrupt("alert body", format!("delivery {id}"), e))?,
            state: row.try_get(10).map_err(q("alert delivery"))?,
            attempts: row.try_get(11).map_err(q("alert delivery"))?,
            next_attempt_ms: row.try_get(12).map_err(q("alert delivery"))?,
            created_at_ms: row.try_get(13).map_err(q("alert delivery"))?,
            updated_at_ms: row.try_get(14).map_err(q("alert delivery"))?,
        }
    }};
}

impl Store {
    /// Stores a server-wide rule named `name`; a rule of that name is answered with
    /// [`AlertRuleCreated::Exists`] and nothing is stored.
    pub async fn create_alert_rule(
        &self,
        name: &str,
        spec: &serde_json::Value,
        now_ms: i64,
    ) -> Result<AlertRuleCreated, StoreError> {
        let _turn = self.write_turn().await;
        on_pool!(self, pool => {
            let mut tx = pool.begin().await.map_err(q("begin"))?;
            let old = sqlx::query("SELECT id, name, spec, created_at_ms FROM alert_rules WHERE name = $1")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await
                .map_err(q("find alert rule"))?;
            if let Some(row) = old {
                return Ok(AlertRuleCreated::Exists(rule_from_row!(row)));
            }
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO alert_rules (name, spec, created_at_ms) VALUES ($1, $2, $3) RETURNING id",
            )
            .bind(name)
            .bind(spec.to_string())
            .bind(now_ms)
            .fetch_one(&mut *tx)
            .await
            .map_err(q("insert alert rule"))?;
            tx.commit().await.map_err(q("commit alert rule"))?;
            Ok(AlertRuleCreated::Created(AlertRuleRecord {
                id,
                name: name.to_string(),
                spec: spec.clone(),
                created_at_ms: now_ms,
            }))
        })
    }

    /// Every server-wide rule, by id.
    pub async fn alert_rules(&self) -> Result<Vec<AlertRuleRecord>, StoreError> {
        on_pool!(self, pool => {
            let rows = sqlx::query("SELECT id, name, spec, created_at_ms FROM alert_rules ORDER BY id")
                .fetch_all(pool)
                .await
                .map_err(q("alert rules"))?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                out.push(rule_from_row!(row));
            }
            Ok(out)
        })
    }

    /// The rule with this id, or else this name.
    pub async fn alert_rule(
        &self,
        id_or_name: &str,
    ) -> Result<Option<AlertRuleRecord>, StoreError> {
        let id: Option<i64> = id_or_name.parse().ok();
        on_pool!(self, pool => {
            let row = sqlx::query("SELECT id, name, spec, created_at_ms FROM alert_rules WHERE id = $1 OR name = $2 ORDER BY (id = $1) DESC LIMIT 1")
                .bind(id.unwrap_or(-1))
                .bind(id_or_name)
                .fetch_optional(pool)
                .await
                .map_err(q("alert rule"))?;
            match row {
                Some(row) => Ok(Some(rule_from_row!(row))),
                None => Ok(None),
            }
        })
    }

    /// Removes a rule; its queued deliveries that have not been delivered are marked failed
    /// (their log stays). Answers the removed rule, `None` when there was none.
    pub async fn remove_alert_rule(
        &self,
        id: i64,
        now_ms: i64,
    ) -> Result<Option<AlertRuleRecord>, StoreError> {
        let _turn = self.write_turn().await;
        on_pool!(self, pool => {
            let mut tx = pool.begin().await.map_err(q("begin"))?;
            let row = sqlx::query("SELECT id, name, spec, created_at_ms FROM alert_rules WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(q("find alert rule"))?;
            let Some(row) = row else { return Ok(None) };
            let rec = rule_from_row!(row);
            sqlx::query("DELETE FROM alert_rules WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(q("delete alert rule"))?;
            sqlx::query("UPDATE alert_deliveries SET state = 'failed', next_attempt_ms = NULL, updated_at_ms = $2 WHERE rule_key = $1 AND state = 'pending'")
                .bind(format!("server:{id}"))
                .bind(now_ms)
                .execute(&mut *tx)
                .await
                .map_err(q("cancel alert deliveries"))?;
            tx.commit().await.map_err(q("commit alert rule removal"))?;
            Ok(Some(rec))
        })
    }

    /// The id of the last event the dispatcher has queued the alerts of.
    pub async fn alert_cursor(&self) -> Result<i64, StoreError> {
        on_pool!(self, pool => {
            let v: Option<i64> = sqlx::query_scalar("SELECT last_event_id FROM alert_cursor WHERE name = 'events'")
                .fetch_optional(pool)
                .await
                .map_err(q("alert cursor"))?;
            Ok(v.unwrap_or(0))
        })
    }

    /// Queues `deliveries` (each due at `now_ms`; one the store has for its rule and event is
    /// skipped) and, with `cursor`, moves the dispatcher's place in the event log there (never
    /// back), in one transaction. With fencing on, only the leader of the current term may.
    /// Answers how many were new.
    pub async fn enqueue_alerts(
        &self,
        deliveries: &[NewDelivery],
        cursor: Option<i64>,
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        let _turn = self.write_turn().await;
        on_pool!(self, pool => {
            let mut tx = pool.begin().await.map_err(q("begin"))?;
            self.check_fence(&mut tx).await?;
            let mut added = 0;
            for d in deliveries {
                let r = sqlx::query(
                    "INSERT INTO alert_deliveries (rule_key, rule, task, event_id, event_kind, target, url, format, body, state, attempts, next_attempt_ms, created_at_ms, updated_at_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', 0, $10, $10, $10) ON CONFLICT (rule_key, event_id) DO NOTHING",
                )
                .bind(&d.rule_key)
                .bind(&d.rule)
                .bind(&d.task)
                .bind(d.event_id)
                .bind(&d.event_kind)
                .bind(&d.target)
                .bind(&d.url)
                .bind(&d.format)
                .bind(d.body.to_string())
                .bind(now_ms)
                .execute(&mut *tx)
                .await
                .map_err(q("queue alert"))?;
                added += r.rows_affected() as usize;
            }
            if let Some(c) = cursor {
                sqlx::query("UPDATE alert_cursor SET last_event_id = $1 WHERE name = 'events' AND last_event_id < $1")
                    .bind(c)
                    .execute(&mut *tx)
                    .await
                    .map_err(q("move alert cursor"))?;
            }
            tx.commit().await.map_err(q("commit alerts"))?;
            Ok(added)
        })
    }

    /// Queues one delivery now and answers it (a test delivery, whose event id is `None`).
    pub async fn enqueue_alert(
        &self,
        delivery: &NewDelivery,
        now_ms: i64,
    ) -> Result<DeliveryRecord, StoreError> {
        let _turn = self.write_turn().await;
        on_pool!(self, pool => {
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO alert_deliveries (rule_key, rule, task, event_id, event_kind, target, url, format, body, state, attempts, next_attempt_ms, created_at_ms, updated_at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', 0, NULL, $10, $10) RETURNING id",
            )
            .bind(&delivery.rule_key)
            .bind(&delivery.rule)
            .bind(&delivery.task)
            .bind(delivery.event_id)
            .bind(&delivery.event_kind)
            .bind(&delivery.target)
            .bind(&delivery.url)
            .bind(&delivery.format)
            .bind(delivery.body.to_string())
            .bind(now_ms)
            .fetch_one(pool)
            .await
            .map_err(q("queue alert"))?;
            Ok(DeliveryRecord {
                id,
                rule_key: delivery.rule_key.clone(),
                rule: delivery.rule.clone(),
                task: delivery.task.clone(),
                event_id: delivery.event_id,
                event_kind: delivery.event_kind.clone(),
                target: delivery.target.clone(),
                url: delivery.url.clone(),
                format: delivery.format.clone(),
                body: delivery.body.clone(),
                state: "pending".into(),
                attempts: 0,
                next_attempt_ms: None,
                created_at_ms: now_ms,
                updated_at_ms: now_ms,
            })
        })
    }

    /// Pending deliveries due at `now_ms`, the longest-waiting first, at most `limit`.
    pub async fn due_alerts(
        &self,
        now_ms: i64,
        limit: i64,
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        on_pool!(self, pool => {
            let rows = sqlx::query(&format!(
                "SELECT {DELIVERY_COLUMNS} FROM alert_deliveries WHERE state = 'pending' AND next_attempt_ms <= $1 ORDER BY next_attempt_ms, id LIMIT $2"
            ))
            .bind(now_ms)
            .bind(limit)
            .fetch_all(pool)
            .await
            .map_err(q("due alerts"))?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                out.push(delivery_from_row!(row));
            }
            Ok(out)
        })
    }

    /// When the earliest pending delivery is due, if any is.
    pub async fn next_alert_due(&self) -> Result<Option<i64>, StoreError> {
        on_pool!(self, pool => {
            sqlx::query_scalar::<_, Option<i64>>("SELECT MIN(next_attempt_ms) FROM alert_deliveries WHERE state = 'pending'")
                .fetch_one(pool)
                .await
                .map_err(q("next alert"))
        })
    }

    /// A delivery by id.
    pub async fn alert_delivery(&self, id: i64) -> Result<Option<DeliveryRecord>, StoreError> {
        on_pool!(self, pool => {
            let row = sqlx::query(&format!("SELECT {DELIVERY_COLUMNS} FROM alert_deliveries WHERE id = $1"))
                .bind(id)
                .fetch_optional(pool)
                .await
                .map_err(q("alert delivery"))?;
            match row {
                Some(row) => Ok(Some(delivery_from_row!(row))),
                None => Ok(None),
            }
        })
    }

    /// Logs an attempt at delivery `id` and sets the delivery's state from its outcome, in one
    /// transaction, only if the delivery has made `attempt.attempt - 1` attempts and is
    /// pending. Answers whether it was recorded.
    pub async fn record_alert_attempt(
        &self,
        id: i64,
        attempt: &NewAttempt,
    ) -> Result<bool, StoreError> {
        let state = match attempt.outcome {
            AttemptOutcome::Delivered => "delivered",
            AttemptOutcome::Retry => "pending",
            AttemptOutcome::Failed => "failed",
        };
        let next = match attempt.outcome {
            AttemptOutcome::Retry => attempt.next_attempt_ms,
            _ => None,
        };
        let _turn = self.write_turn().await;
        on_pool!(self, pool => {
            let mut tx = pool.begin().await.map_err(q("begin"))?;
            let r = sqlx::query(
                "UPDATE alert_deliveries SET state = $1, attempts = $2, next_attempt_ms = $3, updated_at_ms = $4 \
                 WHERE id = $5 AND attempts = $6 AND state = 'pending'",
            )
            .bind(state)
            .bind(attempt.attempt)
            .bind(next)
            .bind(attempt.at_ms)
            .bind(id)
            .bind(attempt.attempt - 1)
            .execute(&mut *tx)
            .await
            .map_err(q("update alert delivery"))?;
            if r.rows_affected() == 0 {
                return Ok(false);
            }
            sqlx::query(
                "INSERT INTO alert_attempts (delivery_id, attempt, at_ms, status, error, outcome, next_attempt_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(id)
            .bind(attempt.attempt)
            .bind(attempt.at_ms)
            .bind(attempt.status.map(i64::from))
            .bind(&attempt.error)
            .bind(attempt.outcome.as_str())
            .bind(next)
            .execute(&mut *tx)
            .await
            .map_err(q("log alert attempt"))?;
            tx.commit().await.map_err(q("commit alert attempt"))?;
            Ok(true)
        })
    }

    /// Prunes the delivery log: deletes settled deliveries (delivered or failed), with their
    /// attempts, that were last updated before `before_ms` or are not among the newest
    /// `keep_last` settled ones; at most `batch` per call, the oldest first. Answers how many
    /// deliveries were deleted.
    ///
    /// A pending delivery (due later, or being attempted right now) is never deleted: an
    /// attempt only ever moves a pending delivery ([`Store::record_alert_attempt`]), so pruning
    /// and sending never touch the same row. Nor is one whose event is after the dispatcher's
    /// cursor: the dispatcher may read that event again (it waits at a gap in the event ids)
    /// and, finding no delivery, would queue and send it a second time.
    pub async fn prune_alert_deliveries(
        &self,
        before_ms: i64,
        keep_last: i64,
        batch: i64,
    ) -> Result<u64, StoreError> {
        let _turn = self.write_turn().await;
        on_pool!(self, pool => {
            let mut tx = pool.begin().await.map_err(q("begin"))?;
            self.check_fence(&mut tx).await?;
            // The oldest id among the newest `keep_last` settled deliveries: older ones go.
            let keep_from: Option<i64> = sqlx::query_scalar(
                "SELECT id FROM alert_deliveries WHERE state IN ('delivered', 'failed') ORDER BY id DESC LIMIT 1 OFFSET $1",
            )
            .bind(keep_last.max(1) - 1)
            .fetch_optional(&mut *tx)
            .await
            .map_err(q("alert log size"))?;
            let ids: Vec<i64> = sqlx::query_scalar(
                "SELECT id FROM alert_deliveries WHERE state IN ('delivered', 'failed') \
                 AND (event_id IS NULL OR event_id <= (SELECT last_event_id FROM alert_cursor WHERE name = 'events')) \
                 AND (updated_at_ms < $1 OR id < $2) ORDER BY id LIMIT $3",
            )
            .bind(before_ms)
            .bind(keep_from.unwrap_or(i64::MIN))
            .bind(batch.max(1))
            .fetch_all(&mut *tx)
            .await
            .map_err(q("prunable alerts"))?;
            let mut deleted = 0;
            for chunk in ids.chunks(100) {
                let list = chunk.iter().map(i64::to_string).collect::<Vec<_>>().join(", ");
                sqlx::query(&format!("DELETE FROM alert_attempts WHERE delivery_id IN ({list})"))
                    .execute(&mut *tx)
                    .await
                    .map_err(q("prune alert attempts"))?;
                // Settled still (nothing makes a settled delivery pending again; checked anyway).
                deleted += sqlx::query(&format!(
                    "DELETE FROM alert_deliveries WHERE id IN ({list}) AND state IN ('delivered', 'failed')"
                ))
                .execute(&mut *tx)
                .await
                .map_err(q("prune alert deliveries"))?
                .rows_affected();
            }
            tx.commit().await.map_err(q("commit alert pruning"))?;
            Ok(deleted)
        })
    }

    /// The delivery log: attempts with their delivery's rule, event and URL, newest first, at
    /// most `limit`.
    pub async fn alert_attempts(
        &self,
        filter: &AttemptFilter<'_>,
        limit: i64,
    ) -> Result<Vec<AttemptRecord>, StoreError> {
        let mut sql = String::from(
            "SELECT a.id, a.delivery_id, d.rule, d.task, d.event_id, d.event_kind, d.url, d.format, a.attempt, a.at_ms, a.status, a.error, a.outcome, a.next_attempt_ms, d.state \
             FROM alert_attempts a JOIN alert_deliveries d ON d.id = a.delivery_id",
        );
        let mut n = 0;
        let mut clause = |cond: &str, sql: &mut String| {
            n += 1;
            sql.push_str(if n == 1 { " WHERE " } else { " AND " });
            sql.push_str(&cond.replace('?', &format!("${n}")));
        };
        if filter.rule.is_some() {
            clause("d.rule = ?", &mut sql);
        }
        if filter.event_id.is_some() {
            clause("d.event_id = ?", &mut sql);
        }
        if filter.delivery.is_some() {
            clause("a.delivery_id = ?", &mut sql);
        }
        sql.push_str(&format!(" ORDER BY a.id DESC LIMIT ${}", n + 1));
        on_pool!(self, pool => {
            let mut query = sqlx::query(&sql);
            if let Some(r) = filter.rule {
                query = query.bind(r);
            }
            if let Some(e) = filter.event_id {
                query = query.bind(e);
            }
            if let Some(d) = filter.delivery {
                query = query.bind(d);
            }
            let rows = query.bind(limit).fetch_all(pool).await.map_err(q("alert attempts"))?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let status: Option<i64> = row.try_get(10).map_err(q("alert attempt"))?;
                out.push(AttemptRecord {
                    id: row.try_get(0).map_err(q("alert attempt"))?,
                    delivery: row.try_get(1).map_err(q("alert attempt"))?,
                    rule: row.try_get(2).map_err(q("alert attempt"))?,
                    task: row.try_get(3).map_err(q("alert attempt"))?,
                    event_id: row.try_get(4).map_err(q("alert attempt"))?,
                    event_kind: row.try_get(5).map_err(q("alert attempt"))?,
                    url: row.try_get(6).map_err(q("alert attempt"))?,
                    format: row.try_get(7).map_err(q("alert attempt"))?,
                    attempt: row.try_get(8).map_err(q("alert attempt"))?,
                    at_ms: row.try_get(9).map_err(q("alert attempt"))?,
                    status: status.and_then(|s| u16::try_from(s).ok()),
                    error: row.try_get(11).map_err(q("alert attempt"))?,
                    outcome: row.try_get(12).map_err(q("alert attempt"))?,
                    next_attempt_ms: row.try_get(13).map_err(q("alert attempt"))?,
                    delivery_state: row.try_get(14).map_err(q("alert attempt"))?,
                });
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::with_each_backend;
    use crate::{EventKind, StoreConfig};

    fn delivery(rule_key: &str, event_id: Option<i64>) -> NewDelivery {
        NewDelivery {
            rule_key: rule_key.into(),
            rule: "oncall".into(),
            task: None,
            event_id,
            event_kind: "enrolled".into(),
            target: "https://hooks.example.com/services/T0/B0/SECRET".into(),
            url: "https://hooks.example.com/services/…".into(),
            format: "slack".into(),
            body: serde_json::json!({"text": "hi"}),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rules_deliveries_and_attempts_round_trip_and_queue_each_event_once() {
        with_each_backend(|config: StoreConfig| async move {
            let store = Store::open(&config).await.unwrap();
            // The cursor starts at the newest event of the store.
            assert_eq!(store.alert_cursor().await.unwrap(), 0);
            store.record_event(EventKind::Enrolled, None, "x", &serde_json::json!({}), 1).await.unwrap();

            let spec = serde_json::json!({"name": "oncall", "url": "http://h/", "format": "generic", "events": ["enrolled"]});
            let AlertRuleCreated::Created(rule) = store.create_alert_rule("oncall", &spec, 5).await.unwrap() else { panic!() };
            assert!(matches!(store.create_alert_rule("oncall", &spec, 6).await.unwrap(), AlertRuleCreated::Exists(r) if r.id == rule.id));
            assert_eq!(store.alert_rules().await.unwrap(), vec![rule.clone()]);
            assert_eq!(store.alert_rule("oncall").await.unwrap(), Some(rule.clone()));
            assert_eq!(store.alert_rule(&rule.id.to_string()).await.unwrap(), Some(rule.clone()));
            assert_eq!(store.alert_rule("nope").await.unwrap(), None);

            let key = format!("server:{}", rule.id);
            let n = store.enqueue_alerts(&[delivery(&key, Some(1)), delivery(&key, Some(2))], Some(2), 100).await.unwrap();
            assert_eq!(n, 2);
            // Read again (a restart, a gap): nothing new, and the cursor never goes back.
            let n = store.enqueue_alerts(&[delivery(&key, Some(1))], Some(1), 101).await.unwrap();
            assert_eq!(n, 0);
            assert_eq!(store.alert_cursor().await.unwrap(), 2);

            let due = store.due_alerts(100, 10).await.unwrap();
            assert_eq!(due.iter().map(|d| d.event_id).collect::<Vec<_>>(), vec![Some(1), Some(2)]);
            assert!(store.due_alerts(99, 10).await.unwrap().is_empty());
            assert_eq!(due[0].target, "https://hooks.example.com/services/T0/B0/SECRET");
            // The target never goes out in an answer.
            assert!(!serde_json::to_string(&due[0]).unwrap().contains("SECRET"));

            let retry = NewAttempt { attempt: 1, at_ms: 110, status: Some(500), error: Some("HTTP 500".into()), outcome: AttemptOutcome::Retry, next_attempt_ms: Some(1110) };
            assert!(store.record_alert_attempt(due[0].id, &retry).await.unwrap());
            // The same attempt twice (two senders): logged once.
            assert!(!store.record_alert_attempt(due[0].id, &retry).await.unwrap());
            assert_eq!(store.next_alert_due().await.unwrap(), Some(100));
            let ok = NewAttempt { attempt: 2, at_ms: 1200, status: Some(200), error: None, outcome: AttemptOutcome::Delivered, next_attempt_ms: None };
            assert!(store.record_alert_attempt(due[0].id, &ok).await.unwrap());
            let log = store.alert_attempts(&AttemptFilter::default(), 10).await.unwrap();
            assert_eq!(log.iter().map(|a| (a.attempt, a.outcome.as_str(), a.status)).collect::<Vec<_>>(),
                vec![(2, "delivered", Some(200)), (1, "retry", Some(500))]);
            assert_eq!(log[1].next_attempt_ms, Some(1110));
            assert_eq!(log[0].delivery_state, "delivered");
            assert_eq!(log[0].url, "https://hooks.example.com/services/…");
            let only = store.alert_attempts(&AttemptFilter { event_id: Some(2), ..Default::default() }, 10).await.unwrap();
            assert!(only.is_empty());

            // Removing the rule fails its pending deliveries; their log stays.
            let removed = store.remove_alert_rule(rule.id, 2000).await.unwrap().unwrap();
            assert_eq!(removed.name, "oncall");
            assert_eq!(store.remove_alert_rule(rule.id, 2001).await.unwrap(), None);
            assert!(store.due_alerts(i64::MAX, 10).await.unwrap().is_empty());
            assert_eq!(store.alert_delivery(due[1].id).await.unwrap().unwrap().state, "failed");
            assert_eq!(store.alert_attempts(&AttemptFilter::default(), 10).await.unwrap().len(), 2);

            // A test delivery has no event; there may be many.
            let t1 = store.enqueue_alert(&delivery("test:9", None), 3000).await.unwrap();
            let t2 = store.enqueue_alert(&delivery("test:9", None), 3001).await.unwrap();
            assert_ne!(t1.id, t2.id);
            store.close().await;
        })
        .await;
    }

    /// An upgraded store starts the dispatcher after its newest event: no alerts for history.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn migration_10_starts_the_cursor_at_the_newest_event() {
        with_each_backend(|config: StoreConfig| async move {
            let store = Store::open(&config).await.unwrap();
            for i in 0..3 {
                store.record_event(EventKind::Enrolled, None, "x", &serde_json::json!({}), i).await.unwrap();
            }
            on_pool!(store, pool => {
                for sql in ["DROP TABLE alert_attempts", "DROP TABLE alert_deliveries", "DROP TABLE alert_rules", "DROP TABLE alert_cursor", "DELETE FROM bw_migrations WHERE version = 10"] {
                    sqlx::query(sql).execute(pool).await.unwrap();
                }
            });
            store.close().await;
            let store = Store::open(&config).await.unwrap();
            assert!(store.applied_migrations().await.unwrap().contains(&10));
            assert_eq!(store.alert_cursor().await.unwrap(), 3);
            store.close().await;
        })
        .await;
    }
}
