//! Configuration sources (migration 7): the latest report of each (host, source) an agent
//! watches, the versioned dependency graphs learned for them, and the `config.*` events that
//! make up the change stream and the snapshot lists.
//!
//! The store keeps what it is given and never interprets a configuration: diffing two reports
//! is the caller's (`bellwether_config::snapshot::diff`), so [`Store::put_config_report`]
//! hands the previous report to a closure that returns the events to record, and stores the
//! new report and those events in one transaction (a change and the event that records it
//! commit together). A graph is stored as a new version, one above the newest stored for its
//! source; nothing is ever overwritten.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::Row;

use crate::{q, Backend, Event, NewEvent, Store, StoreError};

/// The longest source name (`NAME` or `file:PATH`).
pub const MAX_SOURCE_LEN: usize = 4096;
/// The most keys one report may carry.
pub const MAX_REPORT_KEYS: usize = 100_000;

/// A configuration report to store.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigReport {
    pub host: String,
    /// `NAME` of a database, `file:PATH` of a file.
    pub source: String,
    /// `postgres` or `file`.
    pub kind: String,
    pub values: BTreeMap<String, String>,
    /// For PostgreSQL, the catalog of settings (JSON), kept for the simulator.
    pub catalog: Option<serde_json::Value>,
    /// When the agent read it.
    pub at_ms: i64,
}

/// A stored report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConfigReportRecord {
    pub host: String,
    pub source: String,
    pub kind: String,
    pub values: BTreeMap<String, String>,
    pub catalog: Option<serde_json::Value>,
    pub at_ms: i64,
    /// When the server stored it.
    pub updated_ms: i64,
}

/// A stored graph version.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConfigGraphRecord {
    pub host: String,
    pub source: String,
    pub version: i64,
    pub graph: serde_json::Value,
    pub stats: serde_json::Value,
    pub created_ms: i64,
}

/// One source as listed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConfigSourceRecord {
    pub host: String,
    pub source: String,
    pub kind: String,
    pub updated_ms: i64,
    /// How many keys its latest report has.
    pub keys: usize,
    /// The newest graph version, `None` when no graph was stored.
    pub graph_version: Option<i64>,
}

/// Which `config.*` events [`Store::config_events`] returns; every field set narrows it.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConfigEventFilter<'a> {
    pub host: Option<&'a str>,
    /// The source (`source_name` in a change's figures, `snapshot.source_name` in a
    /// snapshot's).
    pub source: Option<&'a str>,
    /// Whole kinds (`config.changed`, `config.snapshot`); empty means every `config.*` kind.
    pub kinds: &'a [&'a str],
    /// The events of one task.
    pub task: Option<&'a str>,
    /// The snapshot with this id (`snapshot.id` in the figures).
    pub snapshot_id: Option<&'a str>,
    /// Only events with a larger id, oldest first; without it the newest come first.
    pub after_id: Option<i64>,
}

fn bad(field: &str, reason: impl Into<String>) -> StoreError {
    StoreError::BadInput {
        field: field.to_string(),
        reason: reason.into(),
    }
}

fn check_source(source: &str) -> Result<(), StoreError> {
    if source.is_empty() || source.len() > MAX_SOURCE_LEN {
        return Err(bad(
            "source",
            format!("a source name has 1 to {MAX_SOURCE_LEN} bytes"),
        ));
    }
    if source.chars().any(char::is_control) {
        return Err(bad(
            "source",
            format!("{source:?} contains a control character"),
        ));
    }
    Ok(())
}

fn check_report(r: &ConfigReport) -> Result<(), StoreError> {
    check_source(&r.source)?;
    if !matches!(r.kind.as_str(), "postgres" | "file") {
        return Err(bad(
            "kind",
            format!("{:?} is not a source kind: use postgres or file", r.kind),
        ));
    }
    if r.values.len() > MAX_REPORT_KEYS {
        return Err(bad(
            "values",
            format!(
                "{} keys in source {} on {}; at most {MAX_REPORT_KEYS}",
                r.values.len(),
                r.source,
                r.host
            ),
        ));
    }
    if r.values.keys().any(String::is_empty) {
        return Err(bad(
            "values",
            format!("source {} on {} has an empty key", r.source, r.host),
        ));
    }
    Ok(())
}

fn corrupt(what: &'static str, at: String, source: serde_json::Error) -> StoreError {
    StoreError::Corrupt {
        what,
        host: at,
        source,
    }
}

macro_rules! report_from_row {
    ($row:expr) => {{
        let row = $row;
        let host: String = row.try_get(0).map_err(q("config report"))?;
        let source: String = row.try_get(1).map_err(q("config report"))?;
        let settings: String = row.try_get(3).map_err(q("config report"))?;
        let catalog: Option<String> = row.try_get(4).map_err(q("config report"))?;
        let at = format!("{host} {source}");
        ConfigReportRecord {
            kind: row.try_get(2).map_err(q("config report"))?,
            values: serde_json::from_str(&settings)
                .map_err(|e| corrupt("config report values", at.clone(), e))?,
            catalog: catalog
                .map(|c| serde_json::from_str(&c))
                .transpose()
                .map_err(|e| corrupt("config report catalog", at, e))?,
            at_ms: row.try_get(5).map_err(q("config report"))?,
            updated_ms: row.try_get(6).map_err(q("config report"))?,
            host,
            source,
        }
    }};
}

const REPORT_COLUMNS: &str = "host, source, kind, settings, catalog, at_ms, updated_ms";

impl Store {
    async fn require_host(&self, host: &str) -> Result<(), StoreError> {
        let name = bellwether_model::HostName::new(host).map_err(|e| bad("host", e.to_string()))?;
        self.host_id(&name).await.map(|_| ())
    }

    /// Stores `report` as the latest of its (host, source) and returns the one it replaced.
    /// `events` is given that previous report and returns the events to record with the new
    /// one (kinds whole, such as `config.changed`, without a task); both commit in one
    /// transaction. The host must be enrolled.
    pub async fn put_config_report(
        &self,
        report: &ConfigReport,
        now_ms: i64,
        events: impl FnOnce(Option<&ConfigReportRecord>) -> Vec<NewEvent>,
    ) -> Result<Option<ConfigReportRecord>, StoreError> {
        check_report(report)?;
        self.require_host(&report.host).await?;
        let _turn = self.write_turn().await;
        let values = serde_json::to_string(&report.values).expect("a string map serialises");
        let catalog = report.catalog.as_ref().map(|c| c.to_string());
        // PostgreSQL: the previous row is locked so two reports of one source diff in turn
        // (SQLite writers take turns already).
        let lock = match self.backend {
            Backend::Sqlite(_) => "",
            Backend::Postgres(_) => " FOR UPDATE",
        };
        on_pool!(self, pool => {
            let mut tx = pool.begin().await.map_err(q("begin"))?;
            let prev = sqlx::query(&format!(
                "SELECT {REPORT_COLUMNS} FROM config_reports WHERE host = $1 AND source = $2{lock}"
            ))
            .bind(&report.host)
            .bind(&report.source)
            .fetch_optional(&mut *tx)
            .await
            .map_err(q("config report"))?;
            let prev = match prev {
                Some(row) => Some(report_from_row!(row)),
                None => None,
            };
            sqlx::query(
                "INSERT INTO config_reports (host, source, kind, settings, catalog, at_ms, updated_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (host, source) DO UPDATE SET \
                 kind = excluded.kind, settings = excluded.settings, catalog = excluded.catalog, \
                 at_ms = excluded.at_ms, updated_ms = excluded.updated_ms",
            )
            .bind(&report.host)
            .bind(&report.source)
            .bind(&report.kind)
            .bind(&values)
            .bind(&catalog)
            .bind(report.at_ms)
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .map_err(q("put config report"))?;
            for e in events(prev.as_ref()) {
                sqlx::query("INSERT INTO events (ts_ms, kind, host, reason, figures) VALUES ($1, $2, $3, $4, $5)")
                    .bind(e.ts_ms)
                    .bind(&e.kind)
                    .bind(&e.host)
                    .bind(&e.reason)
                    .bind(e.figures.to_string())
                    .execute(&mut *tx)
                    .await
                    .map_err(q("insert config event"))?;
            }
            tx.commit().await.map_err(q("commit"))?;
            Ok(prev)
        })
    }

    /// The latest report of (host, source), `None` when none was stored.
    pub async fn config_report(
        &self,
        host: &str,
        source: &str,
    ) -> Result<Option<ConfigReportRecord>, StoreError> {
        on_pool!(self, pool => {
            let row = sqlx::query(&format!(
                "SELECT {REPORT_COLUMNS} FROM config_reports WHERE host = $1 AND source = $2"
            ))
            .bind(host)
            .bind(source)
            .fetch_optional(pool)
            .await
            .map_err(q("config report"))?;
            Ok(match row {
                Some(row) => Some(report_from_row!(row)),
                None => None,
            })
        })
    }

    /// Every source with a report, by host and source, with its newest graph version.
    pub async fn config_sources(&self) -> Result<Vec<ConfigSourceRecord>, StoreError> {
        on_pool!(self, pool => {
            let rows = sqlx::query(
                "SELECT r.host, r.source, r.kind, r.updated_ms, r.settings, \
                 (SELECT MAX(g.version) FROM config_graphs g WHERE g.host = r.host AND g.source = r.source) \
                 FROM config_reports r ORDER BY r.host, r.source",
            )
            .fetch_all(pool)
            .await
            .map_err(q("config sources"))?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let host: String = row.try_get(0).map_err(q("config sources"))?;
                let source: String = row.try_get(1).map_err(q("config sources"))?;
                let settings: String = row.try_get(4).map_err(q("config sources"))?;
                let values: BTreeMap<String, serde_json::Value> = serde_json::from_str(&settings)
                    .map_err(|e| corrupt("config report values", format!("{host} {source}"), e))?;
                out.push(ConfigSourceRecord {
                    kind: row.try_get(2).map_err(q("config sources"))?,
                    updated_ms: row.try_get(3).map_err(q("config sources"))?,
                    keys: values.len(),
                    graph_version: row.try_get(5).map_err(q("config sources"))?,
                    host,
                    source,
                });
            }
            Ok(out)
        })
    }

    /// Stores a new version of the graph of (host, source), one above the newest stored (the
    /// first is 1), and returns it. The host must be enrolled; `graph` must be a JSON object.
    pub async fn put_config_graph(
        &self,
        host: &str,
        source: &str,
        graph: &serde_json::Value,
        stats: &serde_json::Value,
        now_ms: i64,
    ) -> Result<i64, StoreError> {
        check_source(source)?;
        if !graph.is_object() {
            return Err(bad(
                "graph",
                format!("the graph of {source} on {host} is not a JSON object"),
            ));
        }
        self.require_host(host).await?;
        let _turn = self.write_turn().await;
        let (graph, stats) = (graph.to_string(), stats.to_string());
        // Two stores racing on PostgreSQL collide on the primary key; the loser retries on top.
        for _ in 0..5 {
            let r: Result<i64, sqlx::Error> = on_pool!(self, pool => {
                sqlx::query_scalar(
                    "INSERT INTO config_graphs (host, source, version, graph, stats, created_ms) \
                     SELECT $1, $2, COALESCE(MAX(version), 0) + 1, $3, $4, $5 FROM config_graphs \
                     WHERE host = $1 AND source = $2 RETURNING version",
                )
                .bind(host)
                .bind(source)
                .bind(&graph)
                .bind(&stats)
                .bind(now_ms)
                .fetch_one(pool)
                .await
            });
            match r {
                Ok(v) => return Ok(v),
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => continue,
                Err(e) => return Err(q("put config graph")(e)),
            }
        }
        Err(bad(
            "graph",
            format!("the graph of {source} on {host} kept colliding with concurrent stores"),
        ))
    }

    /// The newest graph of (host, source), or version `version` of it.
    pub async fn config_graph(
        &self,
        host: &str,
        source: &str,
        version: Option<i64>,
    ) -> Result<Option<ConfigGraphRecord>, StoreError> {
        const COLUMNS: &str = "host, source, version, graph, stats, created_ms";
        on_pool!(self, pool => {
            let row = match version {
                Some(v) => sqlx::query(&format!(
                    "SELECT {COLUMNS} FROM config_graphs WHERE host = $1 AND source = $2 AND version = $3"
                ))
                .bind(host)
                .bind(source)
                .bind(v)
                .fetch_optional(pool)
                .await,
                None => sqlx::query(&format!(
                    "SELECT {COLUMNS} FROM config_graphs WHERE host = $1 AND source = $2 ORDER BY version DESC LIMIT 1"
                ))
                .bind(host)
                .bind(source)
                .fetch_optional(pool)
                .await,
            }
            .map_err(q("config graph"))?;
            let Some(row) = row else { return Ok(None) };
            let graph: String = row.try_get(3).map_err(q("config graph"))?;
            let stats: String = row.try_get(4).map_err(q("config graph"))?;
            let at = format!("{host} {source}");
            Ok(Some(ConfigGraphRecord {
                host: row.try_get(0).map_err(q("config graph"))?,
                source: row.try_get(1).map_err(q("config graph"))?,
                version: row.try_get(2).map_err(q("config graph"))?,
                graph: serde_json::from_str(&graph).map_err(|e| corrupt("config graph", at.clone(), e))?,
                stats: serde_json::from_str(&stats).map_err(|e| corrupt("config graph stats", at, e))?,
                created_ms: row.try_get(5).map_err(q("config graph"))?,
            }))
        })
    }

    /// The `config.*` events `filter` selects, at most `limit`: newest first, or with
    /// `after_id` the oldest after it first.
    pub async fn config_events(
        &self,
        filter: &ConfigEventFilter<'_>,
        limit: i64,
    ) -> Result<Vec<Event>, StoreError> {
        if let Some(k) = filter.kinds.iter().find(|k| !k.starts_with("config.")) {
            return Err(bad("kinds", format!("{k:?} is not a config.* event kind")));
        }
        let sqlite = matches!(self.backend, Backend::Sqlite(_));
        let json = |path: &[&str]| {
            if sqlite {
                format!("json_extract(figures, '$.{}')", path.join("."))
            } else {
                let (last, init) = path.split_last().expect("a path");
                let mut s = String::from("(figures::jsonb");
                for p in init {
                    s.push_str(&format!(" -> '{p}'"));
                }
                s.push_str(&format!(" ->> '{last}')"));
                s
            }
        };
        let mut sql =
            String::from("SELECT id, ts_ms, kind, host, reason, figures, task FROM events WHERE ");
        let mut n = 0;
        let mut next = || {
            n += 1;
            format!("${n}")
        };
        if filter.kinds.is_empty() {
            sql.push_str("kind >= 'config.' AND kind < 'config/'");
        } else {
            let params: Vec<String> = filter.kinds.iter().map(|_| next()).collect();
            sql.push_str(&format!("kind IN ({})", params.join(", ")));
        }
        if filter.host.is_some() {
            sql.push_str(&format!(" AND host = {}", next()));
        }
        if filter.source.is_some() {
            sql.push_str(&format!(
                " AND COALESCE({}, {}) = {}",
                json(&["source_name"]),
                json(&["snapshot", "source_name"]),
                next()
            ));
        }
        if filter.task.is_some() {
            sql.push_str(&format!(" AND task = {}", next()));
        }
        if filter.snapshot_id.is_some() {
            sql.push_str(&format!(" AND {} = {}", json(&["snapshot", "id"]), next()));
        }
        if filter.after_id.is_some() {
            sql.push_str(&format!(" AND id > {}", next()));
        }
        let order = if filter.after_id.is_some() {
            "ASC"
        } else {
            "DESC"
        };
        sql.push_str(&format!(" ORDER BY id {order} LIMIT {}", next()));
        on_pool!(self, pool => {
            let mut query = sqlx::query(&sql);
            for k in filter.kinds {
                query = query.bind(*k);
            }
            for v in [filter.host, filter.source, filter.task, filter.snapshot_id].into_iter().flatten() {
                query = query.bind(v);
            }
            if let Some(a) = filter.after_id {
                query = query.bind(a);
            }
            let rows = query.bind(limit).fetch_all(pool).await.map_err(q("config events"))?;
            rows.into_iter()
                .map(|row| {
                    let figures: String = row.try_get(5).map_err(q("config events"))?;
                    let host: Option<String> = row.try_get(3).map_err(q("config events"))?;
                    Ok(Event {
                        id: row.try_get(0).map_err(q("config events"))?,
                        ts_ms: row.try_get(1).map_err(q("config events"))?,
                        kind: row.try_get(2).map_err(q("config events"))?,
                        figures: serde_json::from_str(&figures)
                            .map_err(|e| corrupt("event figures", host.clone().unwrap_or_default(), e))?,
                        host,
                        reason: row.try_get(4).map_err(q("config events"))?,
                        task: row.try_get(6).map_err(q("config events"))?,
                    })
                })
                .collect()
        })
    }
}
