//! What the server knows about a configuration source beyond its latest report, read from the
//! store: the graph it serves (the agent-learned graph merged with the shipped rules and the
//! co-change and metric-impact edges of the change history), the outcomes of earlier config
//! tasks (the risk's history factor), and the observations a performance model trains on.

use std::collections::BTreeMap;

use bellwether_config::cochange::{self, ChangeOutcome};
use bellwether_config::graph::Graph;
use bellwether_config::perf::{PerfModel, PerfObservation};
use bellwether_config::setting::Catalog;
use bellwether_config::snapshot::ConfigChange;
use bellwether_store::{ConfigEventFilter, ConfigReportRecord};

use crate::config::task::{load, CONFIG};
use crate::error::ApiError;
use crate::AppState;

/// Changes of one source read for co-change edges and the performance model.
const HISTORY_EVENTS: i64 = 10_000;
/// Changes by one author this close together count as changed together.
pub(crate) const CO_CHANGE_WINDOW_MS: i64 = 10 * 60 * 1000;
/// A window between two changes needs this many samples of each metric to be an observation.
const MIN_WINDOW_SAMPLES: usize = 3;
/// The most samples read for the performance model.
const PERF_SAMPLES: i64 = 200_000;

/// The catalog of a PostgreSQL report, `None` for a file or a report without one.
pub(crate) fn catalog_of(report: &ConfigReportRecord) -> Result<Option<Catalog>, ApiError> {
    match &report.catalog {
        None => Ok(None),
        Some(c) => serde_json::from_value(c.clone()).map(Some).map_err(|e| {
            ApiError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "the stored catalog of {} on {} is not readable: {e}",
                    report.source, report.host
                ),
            )
        }),
    }
}

/// Every change of (host, source) in the event log, oldest first: the agents' reports and
/// the config tasks' own changes.
pub(crate) async fn change_history(
    state: &AppState,
    host: &str,
    source: &str,
) -> Result<Vec<ConfigChange>, ApiError> {
    let filter = ConfigEventFilter {
        host: Some(host),
        source: Some(source),
        kinds: &["config.changed"],
        ..ConfigEventFilter::default()
    };
    let mut events = state.store.config_events(&filter, HISTORY_EVENTS).await?;
    events.reverse();
    Ok(events
        .into_iter()
        .filter_map(|e| serde_json::from_value::<ConfigChange>(e.figures).ok())
        .collect())
}

/// The outcomes of the finished config tasks that changed any of `targets` (host, database):
/// the keys each set, whether it was rolled back, and when it started. Metric shifts are not
/// recorded per task yet, so they are empty.
pub(crate) async fn outcome_history(
    state: &AppState,
    targets: &[(String, String)],
) -> Result<Vec<ChangeOutcome>, ApiError> {
    let mut out = Vec::new();
    for rec in state.store.tasks(Some(CONFIG), false).await? {
        if !rec.settled {
            continue;
        }
        let Ok((engine, driver)) = load(&rec) else {
            continue;
        };
        let touches = engine.plan.targets.iter().any(|t| {
            targets
                .iter()
                .any(|(h, d)| *h == t.host && *d == t.database)
        });
        let finished = matches!(
            engine.phase,
            bellwether_engine::config::Phase::Completed
                | bellwether_engine::config::Phase::RolledBack
        );
        if touches && finished {
            out.push(ChangeOutcome {
                keys: engine.plan.set.iter().map(|(k, _)| k.clone()).collect(),
                metric_shift: Vec::new(),
                reverted: engine.phase == bellwether_engine::config::Phase::RolledBack,
                time_ms: driver.created_ms,
            });
        }
    }
    out.sort_by_key(|o| o.time_ms);
    Ok(out)
}

/// The graph the server serves for (host, source): the newest stored graph (version 0 and
/// empty when the agent has sent none) with the shipped rules of the instance's version, and
/// the co-change and metric-impact edges of the history; node values from the latest report
/// and node times and authors from the last change of each.
pub(crate) async fn served_graph(
    state: &AppState,
    report: &ConfigReportRecord,
) -> Result<Graph, ApiError> {
    let (host, source) = (report.host.as_str(), report.source.as_str());
    let stored = state.store.config_graph(host, source, None).await?;
    let mut graph = match &stored {
        Some(g) => serde_json::from_value::<Graph>(g.graph.clone()).map_err(|e| {
            ApiError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "stored graph version {} of {source} on {host} is not readable: {e}",
                    g.version
                ),
            )
        })?,
        None => Graph::default(),
    };
    graph.version = stored.as_ref().map(|g| g.version).unwrap_or(0);
    if let Some(catalog) = catalog_of(report)? {
        for rule in bellwether_config::rules::shipped_rules(catalog.server_version_num) {
            graph.add_edge(rule.edge);
        }
    }
    let history = change_history(state, host, source).await?;
    for e in cochange::co_change_edges(&history, CO_CHANGE_WINDOW_MS) {
        graph.add_edge(e);
    }
    let outcomes = outcome_history(state, &[(host.to_string(), source.to_string())]).await?;
    for e in cochange::metric_impact_edges(&outcomes) {
        graph.add_edge(e);
    }
    let last: BTreeMap<&str, &ConfigChange> = history.iter().map(|c| (c.key.as_str(), c)).collect();
    for node in &mut graph.nodes {
        if let Some(v) = report.values.get(&node.name) {
            node.value = Some(v.clone());
        }
        if let Some(c) = last.get(node.name.as_str()) {
            node.time_ms = Some(c.time_ms);
            node.author = Some(c.author.clone());
        }
    }
    Ok(graph)
}

/// The performance model of (host, source) trained on its own history: between consecutive
/// changes the settings were fixed, so each such window with enough `tps` and `latency_ms`
/// samples is one observation (the settings of a window are the latest report's with the
/// later changes undone). `Err` says why there is no model.
pub(crate) async fn perf_model(
    state: &AppState,
    report: &ConfigReportRecord,
) -> Result<Result<PerfModel, String>, ApiError> {
    let (host, source) = (report.host.as_str(), report.source.as_str());
    let history = change_history(state, host, source).await?;
    let Some(first) = history.first() else {
        return Ok(Err(format!(
            "no change of {source} on {host} is recorded yet, so there is no measured history to train a performance model on"
        )));
    };
    // Window boundaries: every distinct change time, and the end of the samples.
    let mut times: Vec<i64> = history.iter().map(|c| c.time_ms).collect();
    times.dedup();
    let samples = state
        .store
        .samples_since(host, first.time_ms.saturating_sub(1), PERF_SAMPLES)
        .await?;
    let tps_key = bellwether_config::metric_key(source, bellwether_config::metrics::TPS);
    let lat_key = bellwether_config::metric_key(source, bellwether_config::metrics::LATENCY_MS);
    // Values in force after the last change, then walking back change by change.
    let mut values = report.values.clone();
    let mut observations = Vec::new();
    let end = samples.last().map(|s| s.ts_ms + 1).unwrap_or(i64::MIN);
    let mut bounds: Vec<(i64, i64)> = Vec::new();
    for (i, t) in times.iter().enumerate() {
        let next = times.get(i + 1).copied().unwrap_or(end);
        bounds.push((*t, next));
    }
    for (start, stop) in bounds.into_iter().rev() {
        let (mut tps, mut lat) = (Vec::new(), Vec::new());
        for s in samples
            .iter()
            .filter(|s| s.ts_ms >= start && s.ts_ms < stop)
        {
            if s.name == tps_key {
                tps.push(s.value);
            } else if s.name == lat_key {
                lat.push(s.value);
            }
        }
        if tps.len() >= MIN_WINDOW_SAMPLES && lat.len() >= MIN_WINDOW_SAMPLES {
            observations.push(PerfObservation {
                values: values.clone(),
                tps: tps.iter().sum::<f64>() / tps.len() as f64,
                latency_ms: lat.iter().sum::<f64>() / lat.len() as f64,
            });
        }
        // Undo the changes made at `start` to get the values before it.
        for c in history.iter().filter(|c| c.time_ms == start) {
            match &c.old {
                Some(v) => values.insert(c.key.clone(), v.clone()),
                None => values.remove(&c.key),
            };
        }
    }
    observations.reverse();
    Ok(PerfModel::train(&observations).map_err(|e| {
        format!(
            "{e} ({} windows between the recorded changes of {source} on {host} have {MIN_WINDOW_SAMPLES} or more tps and latency samples)",
            observations.len()
        )
    }))
}
