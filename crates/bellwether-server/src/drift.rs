//! Keeping each host's stored drift score current: recomputed when a profile arrives, when
//! samples arrive for a host with a baseline, and when a baseline is captured.
//!
//! The profile used for drift (and captured as a baseline) has its metrics replaced by the
//! mean of the host's recent samples where samples exist, so performance drift follows the
//! samples even when an agent resends its profile only on configuration changes.

use bellwether_model::{DriftScore, HostName, HostProfile};
use bellwether_store::EventKind;

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::{now_ms, AppState};

/// What caused a recomputation. Samples arrive every few seconds, so a sample-triggered
/// recomputation logs an event only when the overall score moved noticeably.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Profile,
    Samples,
    Baseline,
    Read,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Profile => "profile received",
            Trigger::Samples => "samples received",
            Trigger::Baseline => "baseline captured",
            Trigger::Read => "score requested before one was stored",
        }
    }
}

/// The smallest change of the overall score that a sample-triggered recomputation logs.
const LOGGED_OVERALL_CHANGE: f64 = 0.05;

/// The host's current profile with its metrics overlaid by the mean of recent samples;
/// `None` when the host sent no profile yet.
pub async fn effective_profile(
    state: &AppState,
    host: &HostName,
) -> Result<Option<HostProfile>, ApiError> {
    let Some(mut profile) = state.store.current_profile(host).await? else {
        return Ok(None);
    };
    let means = state
        .store
        .recent_metric_means(host, state.metric_window_ms)
        .await?;
    profile.metrics.extend(means);
    Ok(Some(profile))
}

/// Recomputes and stores the host's drift when it has a baseline and a profile. Returns the
/// new score, or `None` when there is nothing to compare.
pub async fn recompute(
    state: &AppState,
    host: &HostName,
    trigger: Trigger,
) -> Result<Option<DriftScore>, ApiError> {
    let Some(baseline) = state.store.baseline(host).await? else {
        return Ok(None);
    };
    let Some(current) = effective_profile(state, host).await? else {
        return Ok(None);
    };
    let score = bellwether_drift::score(&baseline, &current);
    let previous = state.store.drift(host).await?;
    let now = now_ms();
    state.store.put_drift(host, &score, now).await?;
    Metrics::add(&state.metrics.drift_recomputations, 1);
    let moved = previous
        .as_ref()
        .map(|p| (p.score.overall.get() - score.overall.get()).abs() >= LOGGED_OVERALL_CHANGE)
        .unwrap_or(true);
    if trigger != Trigger::Samples || moved {
        let figures = serde_json::json!({
            "overall": score.overall.get(),
            "configuration": score.configuration.get(),
            "performance": score.performance.get(),
            "dependency": score.dependency.get(),
            "previous_overall": previous.as_ref().map(|p| p.score.overall.get()),
            "findings": score.findings.len(),
        });
        state
            .store
            .record_event(
                EventKind::DriftRecomputed,
                Some(host),
                trigger.as_str(),
                &figures,
                now,
            )
            .await?;
        tracing::info!(host = %host, overall = score.overall.get(), trigger = trigger.as_str(), "Recomputed drift.");
    }
    Ok(Some(score))
}
