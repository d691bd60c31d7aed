//! The shadow task's watch on Bellwether's own risk sources for its host.
//!
//! Every interval the task reads what the server already computes and stores about the
//! shadow's host, and turns it into the engine's `Predict` and `Failure` inputs:
//!
//! - **`rollout`**: an unsettled rollout that targets the host and has not finished it
//!   (waiting, remediating, applying, baking): the probability the rollout scored the host
//!   with (the failure model with the direct evidence, stored in the rollout's state) is a
//!   prediction, once per rollout; the failure is expected when the rollout dispatches the
//!   host's change (`scheduled_ms`), or from now on while it waits.
//! - **`failure_model`**: the same rollout's update scored again for the host with the latest
//!   model and the evidence stored since (peers that failed in earlier waves raise it), while
//!   the host waits for its wave; fed when it first reaches the shadow's `point_above` or
//!   moves by [`RESCORE_STEP`] since the last one fed.
//! - **`detector`** and **`rollout`** failures: the rollout's `host.failed` event for the host
//!   (a failing or critical verdict of the rollout's watch, its thresholds, severity and
//!   judge, is the detector's; a failed apply or remediation the rollout's). The failure time
//!   is when the rollout dispatched the host's change (`scheduled_ms` in its state): the
//!   change is what failed, so the restore goes to the latest point consistent before it.
//!   Events are read newest first, a bounded window per interval, and each is fed once.
//!
//! The mapping is pure ([`prediction_of_rollout`], [`failure_of_event`]); the reads are in
//! [`read`].

use std::collections::{BTreeMap, BTreeSet};

use bellwether_engine::shadow::{Prediction, RiskSource};
use bellwether_model::HostName;
use bellwether_store::{Event, EventFilter};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ApiError;
use crate::AppState;

/// The newest `host.failed` events read per interval.
const FAILURE_WINDOW: i64 = 50;
/// The kind under which the rollout task stores a failed host.
pub(crate) const HOST_FAILED: &str = "rollout.host.failed";
/// A re-scored probability is fed again when it moved this much.
pub(crate) const RESCORE_STEP: f64 = 0.05;
/// The most keys remembered per set (oldest dropped first: ids begin with their time).
const MAX_KEYS: usize = 512;

/// What the task remembers of its risk sources (in its stored state).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct RiskMemory {
    /// `ROLLOUT_ID` of the rollouts whose prediction was fed.
    #[serde(default)]
    pub predicted: BTreeSet<String>,
    /// The failure model's last probability fed, per rollout.
    #[serde(default)]
    pub rescored: BTreeMap<String, f64>,
    /// Ids of the `host.failed` events fed.
    #[serde(default)]
    pub failed: BTreeSet<i64>,
    /// The sources could not be read at the last interval (recorded once per episode).
    #[serde(default)]
    pub unreadable: bool,
}

impl RiskMemory {
    pub(crate) fn remember_prediction(&mut self, rollout: &str) {
        self.predicted.insert(rollout.to_string());
        while self.predicted.len() > MAX_KEYS {
            self.predicted.pop_first();
        }
    }

    pub(crate) fn remember_rescore(&mut self, rollout: &str, p: f64) {
        self.rescored.insert(rollout.to_string(), p);
        while self.rescored.len() > MAX_KEYS {
            self.rescored.pop_first();
        }
    }

    pub(crate) fn remember_failure(&mut self, event_id: i64) {
        self.failed.insert(event_id);
        while self.failed.len() > MAX_KEYS {
            self.failed.pop_first();
        }
    }
}

/// One thing a risk source says about the shadow's host.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Signal {
    /// The rollout's own probability for the host (fed once per rollout).
    Rollout {
        rollout: String,
        prediction: Prediction,
    },
    /// The failure model's probability, scored again now.
    Rescored {
        rollout: String,
        prediction: Prediction,
    },
    /// A failure the rollout observed on the host (event `event_id`).
    Failure {
        event_id: i64,
        failed_at_ms: i64,
        reason: String,
        source: RiskSource,
    },
}

/// A rollout's view of one host, from its stored state.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RolloutHost {
    pub rollout: String,
    pub update: String,
    pub version: String,
    pub depends_on: Vec<String>,
    pub state: String,
    pub probability: f64,
    pub failed: bool,
    pub scheduled_ms: Option<i64>,
}

/// The host's record in a rollout task's stored state, `None` when the rollout does not
/// target it (or the state is not a rollout's).
pub(crate) fn rollout_host(rollout: &str, state: &Value, host: &str) -> Option<RolloutHost> {
    let engine = state.get("engine")?;
    let rec = engine.get("hosts")?.get(host)?;
    let update = engine.pointer("/plan/update")?;
    Some(RolloutHost {
        rollout: rollout.to_string(),
        update: update.get("name")?.as_str()?.to_string(),
        version: update.get("version")?.as_str()?.to_string(),
        depends_on: update
            .get("depends_on")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        state: rec.get("state")?.as_str()?.to_string(),
        probability: rec.get("probability")?.as_f64()?,
        failed: rec.get("failed").and_then(Value::as_bool).unwrap_or(false),
        scheduled_ms: rec.get("scheduled_ms").and_then(Value::as_i64),
    })
}

/// The host has not been through the rollout yet: its change is still to come or in flight.
pub(crate) fn ahead(h: &RolloutHost) -> bool {
    !h.failed && matches!(h.state.as_str(), "waiting" | "remediating" | "applying")
}

/// The prediction a rollout's score makes for the host, while its change is ahead or
/// baking; `None` otherwise.
pub(crate) fn prediction_of_rollout(h: &RolloutHost, now_ms: i64) -> Option<Prediction> {
    if h.failed || !(ahead(h) || h.state == "baking") || !h.probability.is_finite() {
        return None;
    }
    Some(Prediction {
        source: RiskSource::Rollout,
        detail: format!(
            "rollout {} updates {} to {} on this host ({})",
            h.rollout, h.update, h.version, h.state
        ),
        probability: h.probability.clamp(0.0, 1.0),
        expected_failure_ms: h.scheduled_ms.unwrap_or(now_ms),
        location: None,
    })
}

/// The failure model's fresh probability as a prediction, when it is worth feeding: the
/// first one, or one that moved by [`RESCORE_STEP`].
pub(crate) fn rescored_prediction(
    h: &RolloutHost,
    probability: f64,
    model_version: i64,
    last_fed: Option<f64>,
    now_ms: i64,
) -> Option<Prediction> {
    if !probability.is_finite() || !ahead(h) {
        return None;
    }
    let p = probability.clamp(0.0, 1.0);
    if last_fed.is_some_and(|l| (p - l).abs() < RESCORE_STEP) {
        return None;
    }
    Some(Prediction {
        source: RiskSource::FailureModel,
        detail: format!(
            "model version {model_version} scores {} {} on this host with the evidence stored so far (rollout {})",
            h.update, h.version, h.rollout
        ),
        probability: p,
        expected_failure_ms: h.scheduled_ms.unwrap_or(now_ms),
        location: None,
    })
}

/// The failure a rollout's `host.failed` event reports, with the host's record in that
/// rollout (for the time its change was dispatched).
pub(crate) fn failure_of_event(ev: &Event, h: Option<&RolloutHost>) -> Option<Signal> {
    if ev.kind != HOST_FAILED {
        return None;
    }
    let f = &ev.figures;
    let watched = f.get("severity").is_some() || f.get("critical").is_some();
    let source = if watched {
        RiskSource::Detector
    } else {
        RiskSource::Rollout
    };
    let rollout = ev.task.as_deref().unwrap_or("?");
    let failed_at_ms = h
        .and_then(|h| h.scheduled_ms)
        .filter(|t| *t <= ev.ts_ms)
        .unwrap_or(ev.ts_ms);
    let what = if watched {
        "the rollout's watch judged the host failing"
    } else {
        "the rollout failed the host"
    };
    let reason = format!(
        "{what} (rollout {rollout}): {}; failed from the change dispatched at {failed_at_ms} ms",
        bellwether_model::text::quote(&ev.reason)
    );
    Some(Signal::Failure {
        event_id: ev.id,
        failed_at_ms,
        reason,
        source,
    })
}

/// Reads the risk sources for `host`: the new signals, given what `memory` has fed.
pub(crate) async fn read(
    state: &AppState,
    host: &str,
    created_ms: i64,
    memory: &RiskMemory,
    now_ms: i64,
) -> Result<Vec<Signal>, ApiError> {
    let mut out = Vec::new();
    let name = HostName::new(host).map_err(|e| ApiError::bad_request(format!("host: {e}")))?;
    let mut hosts = BTreeMap::new();
    for t in state.store.rollouts(true).await? {
        if let Some(h) = rollout_host(&t.id, &t.state, host) {
            hosts.insert(t.id.clone(), h);
        }
    }
    for h in hosts.values() {
        if memory.predicted.contains(&h.rollout) {
            continue;
        }
        if let Some(prediction) = prediction_of_rollout(h, now_ms) {
            out.push(Signal::Rollout {
                rollout: h.rollout.clone(),
                prediction,
            });
        }
    }
    let waiting: Vec<&RolloutHost> = hosts.values().filter(|h| ahead(h)).collect();
    if !waiting.is_empty() {
        if let Some((version, model)) = crate::model_api::latest_model(state).await? {
            let rec = state.store.get_host(&name).await?;
            let profile = state.store.current_profile(&name).await?;
            let mut labels = profile.map(|p| p.labels).unwrap_or_default();
            if let Some(r) = rec {
                labels.extend(r.labels);
            }
            for h in waiting {
                let update = crate::model_api::UpdateInfo {
                    name: h.update.clone(),
                    version: h.version.clone(),
                    update_type: None,
                    depends_on: h.depends_on.clone(),
                };
                let scored = crate::model_api::score_hosts(
                    state,
                    model.clone(),
                    vec![(name.clone(), labels.clone())],
                    &update,
                )
                .await?;
                let Some(s) = scored.first() else { continue };
                let last = memory.rescored.get(&h.rollout).copied();
                if let Some(prediction) =
                    rescored_prediction(h, s.prediction.probability.get(), version, last, now_ms)
                {
                    out.push(Signal::Rescored {
                        rollout: h.rollout.clone(),
                        prediction,
                    });
                }
            }
        }
    }
    let events = state
        .store
        .find_events(
            &EventFilter {
                host: Some(&name),
                kind: Some(HOST_FAILED),
                ..Default::default()
            },
            FAILURE_WINDOW,
        )
        .await?;
    // Oldest first, only those since the shadow was declared and not fed yet.
    for ev in events.iter().rev() {
        if ev.ts_ms < created_ms || memory.failed.contains(&ev.id) {
            continue;
        }
        let h = match &ev.task {
            Some(id) => match hosts.get(id) {
                Some(h) => Some(h.clone()),
                None => state
                    .store
                    .task(id)
                    .await?
                    .and_then(|t| rollout_host(&t.id, &t.state, host)),
            },
            None => None,
        };
        if let Some(s) = failure_of_event(ev, h.as_ref()) {
            out.push(s);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn state(host_state: &str, failed: bool, scheduled: Option<i64>) -> Value {
        json!({"engine": {
            "plan": {"update": {"name": "websvc", "version": "2", "depends_on": ["libssl"]}},
            "hosts": {"db-1": {"state": host_state, "probability": 0.62, "failed": failed, "scheduled_ms": scheduled}}
        }, "watchers": {}})
    }

    #[test]
    fn a_rollout_that_targets_the_host_predicts_until_the_host_is_through() {
        let now = 1_000_000;
        let h = rollout_host("r-1", &state("waiting", false, None), "db-1").unwrap();
        assert_eq!(h.depends_on, vec!["libssl".to_string()]);
        let p = prediction_of_rollout(&h, now).unwrap();
        assert_eq!(p.source, RiskSource::Rollout);
        assert_eq!(p.probability, 0.62);
        assert_eq!(
            p.expected_failure_ms, now,
            "waiting: the change may come now"
        );
        let h = rollout_host("r-1", &state("applying", false, Some(900_000)), "db-1").unwrap();
        assert_eq!(
            prediction_of_rollout(&h, now).unwrap().expected_failure_ms,
            900_000
        );
        for (st, failed) in [("updated", false), ("rolled_back", true), ("baking", true)] {
            let h = rollout_host("r-1", &state(st, failed, Some(900_000)), "db-1").unwrap();
            assert_eq!(prediction_of_rollout(&h, now), None, "{st}");
        }
        assert!(rollout_host("r-1", &state("waiting", false, None), "web-1").is_none());
        assert!(rollout_host("r-1", &json!({"engine": {}}), "db-1").is_none());
        assert!(rollout_host("r-1", &json!("not a rollout"), "db-1").is_none());
    }

    #[test]
    fn the_failure_model_is_fed_again_only_when_it_moves() {
        let h = rollout_host("r-1", &state("waiting", false, None), "db-1").unwrap();
        let p = rescored_prediction(&h, 0.4, 3, None, 5).unwrap();
        assert_eq!(p.source, RiskSource::FailureModel);
        assert!(p.detail.contains("model version 3"), "{}", p.detail);
        assert_eq!(rescored_prediction(&h, 0.43, 3, Some(0.4), 5), None);
        assert!(rescored_prediction(&h, 0.46, 3, Some(0.4), 5).is_some());
        assert!(rescored_prediction(&h, 0.2, 3, Some(0.4), 5).is_some());
        assert_eq!(rescored_prediction(&h, f64::NAN, 3, None, 5), None);
        assert_eq!(
            rescored_prediction(&h, 7.0, 3, None, 5)
                .unwrap()
                .probability,
            1.0
        );
        let baking = rollout_host("r-1", &state("baking", false, Some(1)), "db-1").unwrap();
        assert_eq!(rescored_prediction(&baking, 0.9, 3, None, 5), None);
    }

    fn event(id: i64, ts: i64, figures: Value) -> Event {
        Event {
            id,
            ts_ms: ts,
            kind: HOST_FAILED.into(),
            host: Some("db-1".into()),
            reason: "The apply action failed: exit 1.".into(),
            figures,
            task: Some("r-1".into()),
        }
    }

    #[test]
    fn a_failed_host_is_a_failure_from_its_change() {
        let h = rollout_host("r-1", &state("rolling_back", true, Some(900)), "db-1").unwrap();
        let Some(Signal::Failure {
            event_id,
            failed_at_ms,
            source,
            reason,
        }) = failure_of_event(&event(7, 1_500, json!({"action_id": 1})), Some(&h))
        else {
            panic!("a failure")
        };
        assert_eq!((event_id, failed_at_ms), (7, 900));
        assert_eq!(source, RiskSource::Rollout);
        assert!(reason.contains("r-1"), "{reason}");
        let Some(Signal::Failure {
            failed_at_ms,
            source,
            ..
        }) = failure_of_event(&event(8, 1_500, json!({"severity": 0.8})), None)
        else {
            panic!("a failure")
        };
        assert_eq!(failed_at_ms, 1_500, "no record: the event's time");
        assert_eq!(source, RiskSource::Detector);
        // A dispatch time after the event is not believed.
        let later = rollout_host("r-1", &state("rolling_back", true, Some(9_000)), "db-1");
        let Some(Signal::Failure { failed_at_ms, .. }) =
            failure_of_event(&event(9, 1_500, json!({"critical": true})), later.as_ref())
        else {
            panic!("a failure")
        };
        assert_eq!(failed_at_ms, 1_500);
        let mut other = event(10, 1, json!({}));
        other.kind = "rollout.host.applied".into();
        assert_eq!(failure_of_event(&other, None), None);
    }

    #[test]
    fn memory_stays_bounded() {
        let mut m = RiskMemory::default();
        for i in 0..(MAX_KEYS as i64 + 10) {
            m.remember_failure(i);
            m.remember_prediction(&format!("r-{i:06}"));
            m.remember_rescore(&format!("r-{i:06}"), 0.5);
        }
        assert_eq!(m.failed.len(), MAX_KEYS);
        assert_eq!(m.predicted.len(), MAX_KEYS);
        assert_eq!(m.rescored.len(), MAX_KEYS);
        assert!(!m.failed.contains(&0), "the oldest go first");
    }
}
