//! Per-host watching during a rollout: samples in, [`WatchVerdict`]s out.
//!
//! A [`HostWatcher`] is fed `(ts_ms, metric, value)` samples of one host. Before the host's
//! apply they build its baseline (the moving average of `bellwether_detect`'s
//! [`ThresholdWatch`]); [`HostWatcher::mark_applied`] freezes it, and later samples are judged
//! against the frozen baseline with the plan's band, duration and weights, combined by
//! [`SeverityScorer`]. [`HostWatcher::verdict`] then also compares the host's post-apply samples
//! with control hosts' samples over the same window through [`bellwether_detect::judge`], and
//! checks the drift-rise limit and the no-data rule.
//!
//! This module re-implements none of the statistics: thresholds, severity and the judge are
//! `bellwether-detect`'s. Like the rest of the engine it is pure: timestamps come with the
//! samples and the caller says what time it is.

use std::collections::{BTreeMap, VecDeque};

use bellwether_detect::judge::{self, JudgeConfig, MetricConfig, Outcome};
use bellwether_detect::threshold::{
    Direction, Observation, SeverityScorer, ThresholdConfig, ThresholdError, ThresholdWatch,
};
use bellwether_model::HostName;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::plan::{ms, MetricRule, Plan};
use super::WatchVerdict;

pub mod synthetic;

/// Why a watcher could not be built or a sample was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WatchError {
    #[error("host {host}: metric {metric}: {source}")]
    Threshold {
        host: HostName,
        metric: String,
        source: ThresholdError,
    },
    #[error("host {host}: metric {metric} is not in the plan's analysis")]
    UnknownMetric { host: HostName, metric: String },
}

#[derive(Clone)]
struct MetricWatch {
    rule: MetricRule,
    watch: ThresholdWatch,
    last: Option<Observation>,
    /// Recent samples, for the canary judge (bounded).
    recent: VecDeque<(i64, f64)>,
    last_ts: Option<i64>,
    /// The baseline was frozen at the apply (false before it, or while it warmed up).
    frozen: bool,
}

impl MetricWatch {
    /// Rebuilds the watch from the kept samples as if the apply at `applied_ms` had been learnt
    /// in time: the samples before it build the baseline, which is then frozen, and the
    /// samples from it on are judged against that baseline.
    fn replay_from(&mut self, applied_ms: i64) {
        let Ok(mut watch) = ThresholdWatch::new(self.watch.config().clone()) else {
            // The config was validated when this watch was built.
            return;
        };
        let mut last = None;
        let mut frozen = None;
        for &(ts, v) in &self.recent {
            if ts >= applied_ms && frozen.is_none() {
                frozen = Some(watch.freeze().is_some());
            }
            // Increasing finite samples that this config already accepted once.
            let Ok(o) = watch.observe(ts, v) else {
                continue;
            };
            if ts >= applied_ms {
                last = Some(o);
            }
        }
        self.frozen = frozen.unwrap_or_else(|| watch.freeze().is_some());
        self.watch = watch;
        self.last = last;
    }
}

/// Watches one host against its own pre-apply baseline and against control hosts. `Clone`, so a
/// driver can change a copy and keep it only once the change is saved.
#[derive(Clone)]
pub struct HostWatcher {
    host: HostName,
    metrics: Vec<MetricWatch>,
    scorer: SeverityScorer,
    applied_ms: Option<i64>,
    /// Metrics whose baseline was still warming up at the apply (they keep a moving baseline).
    warming_at_apply: Vec<String>,
    last_sample_ms: Option<i64>,
    drift_before: Option<f64>,
    drift_now: Option<f64>,
    severity_fail: f64,
    drift_rise_limit: Option<f64>,
    drift_rise_for_ms: i64,
    /// Samples before this (a restart after a remediation) are not judged.
    watch_from_ms: Option<i64>,
    /// Since when the drift has stayed above the limit.
    drift_risen_since: Option<i64>,
    no_data_after_ms: i64,
    /// The sampling interval, in ms: the span one sample stands for.
    interval_ms: i64,
    judge: super::plan::JudgeSettings,
    capacity: usize,
    /// Rebuilt by [`HostWatcher::restore`]: the frozen baselines are not backed by samples.
    restored: bool,
}

impl std::fmt::Debug for HostWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostWatcher")
            .field("host", &self.host)
            .field("applied_ms", &self.applied_ms)
            .finish_non_exhaustive()
    }
}

/// What a restarted server needs to rebuild a host's watcher: the apply time and the frozen
/// pre-apply baselines (the samples themselves are not kept). Persist it when the host is
/// applied; [`HostWatcher::restore`] turns it back into a watcher.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatcherSnapshot {
    pub host: HostName,
    pub applied_ms: Option<i64>,
    /// Frozen baseline per metric; metrics that were still warming up are absent.
    pub baselines: BTreeMap<String, f64>,
    pub drift_before: Option<f64>,
}

impl HostWatcher {
    /// The state to persist for [`HostWatcher::restore`].
    pub fn snapshot(&self) -> WatcherSnapshot {
        WatcherSnapshot {
            host: self.host.clone(),
            applied_ms: self.applied_ms,
            baselines: self
                .metrics
                .iter()
                .filter_map(|m| {
                    self.applied_ms
                        .and(m.watch.baseline())
                        .map(|b| (m.rule.name.0.clone(), b))
                })
                .collect(),
            drift_before: self.drift_before,
        }
    }

    /// Rebuilds a watcher after a restart. An applied host keeps its frozen baselines, so it
    /// is judged against its pre-apply behaviour, not against what it does now; a host not yet
    /// applied starts a fresh baseline.
    pub fn restore(plan: &Plan, snap: &WatcherSnapshot) -> Result<HostWatcher, WatchError> {
        let mut w = HostWatcher::new(plan, snap.host.clone())?;
        w.drift_before = snap.drift_before;
        w.restored = true;
        if let Some(applied) = snap.applied_ms {
            w.applied_ms = Some(applied);
            for m in &mut w.metrics {
                if let Some(b) = snap.baselines.get(&m.rule.name.0) {
                    m.watch = ThresholdWatch::with_fixed_baseline(m.watch.config().clone(), *b)
                        .map_err(|source| WatchError::Threshold {
                            host: snap.host.clone(),
                            metric: m.rule.name.0.clone(),
                            source,
                        })?;
                    m.frozen = true;
                } else {
                    w.warming_at_apply.push(m.rule.name.0.clone());
                }
            }
        }
        Ok(w)
    }

    /// A watcher for `host` with the plan's analysis settings.
    pub fn new(plan: &Plan, host: HostName) -> Result<HostWatcher, WatchError> {
        let a = &plan.analysis;
        let interval = ms(a.interval.0).max(1);
        let min_samples = ((ms(a.baseline.0) / interval / 2).max(1)) as usize;
        let capacity =
            (((ms(a.baseline.0) + 2 * plan.bake_ms()) / interval) as usize + 16).min(4096);
        let mut metrics = Vec::new();
        for rule in &a.metrics {
            // A sample is a rate or quantile over the interval it closes, so n breaching
            // samples in a row witness n intervals of breach, while their timestamps span
            // only n − 1. `for` counts what the samples witness: the threshold is asked for
            // a timestamp span one interval shorter (`for: 2s` at 1 s fires on the second
            // breaching sample; `for` ≤ interval on the first).
            let span = rule.for_.0.saturating_sub(a.interval.0);
            let cfg = ThresholdConfig::new(a.baseline.0, rule.threshold_pct, rule.direction)
                .with_min_duration(span)
                .with_abs_floor(rule.floor)
                .with_min_baseline_samples(min_samples);
            let watch = ThresholdWatch::new(cfg).map_err(|source| WatchError::Threshold {
                host: host.clone(),
                metric: rule.name.0.clone(),
                source,
            })?;
            metrics.push(MetricWatch {
                rule: rule.clone(),
                watch,
                last: None,
                recent: VecDeque::new(),
                last_ts: None,
                frozen: false,
            });
        }
        let scorer = SeverityScorer::new(a.metrics.iter().map(|m| (m.name.0.clone(), m.weight)))
            .map_err(|source| WatchError::Threshold {
                host: host.clone(),
                metric: "weights".into(),
                source,
            })?;
        Ok(HostWatcher {
            host,
            metrics,
            scorer,
            applied_ms: None,
            warming_at_apply: Vec::new(),
            last_sample_ms: None,
            drift_before: None,
            drift_now: None,
            severity_fail: a.severity_fail,
            drift_rise_limit: a.drift_rise_limit,
            drift_rise_for_ms: ms(a.drift_rise_for.0),
            drift_risen_since: None,
            watch_from_ms: None,
            no_data_after_ms: plan.no_data.after_ms(),
            interval_ms: interval,
            judge: a.judge.clone(),
            capacity,
            restored: false,
        })
    }

    pub fn host(&self) -> &HostName {
        &self.host
    }

    /// The time of the newest sample fed, if any.
    pub fn last_sample_ms(&self) -> Option<i64> {
        self.last_sample_ms
    }

    /// When the update was applied, if it was.
    pub fn applied_ms(&self) -> Option<i64> {
        self.applied_ms
    }

    /// Feeds one sample. Samples of metrics the plan does not watch are refused with
    /// [`WatchError::UnknownMetric`] (the caller may ignore that); a non-finite value is
    /// ignored (it is no data); timestamps must increase per metric.
    ///
    /// Samples and the apply may be learnt in any order: a sample from before the apply's
    /// finish time that arrives after [`HostWatcher::mark_applied`] joins the baseline (which
    /// is frozen again with it) and is not judged, exactly as if it had come first.
    pub fn observe(&mut self, ts_ms: i64, metric: &str, value: f64) -> Result<(), WatchError> {
        let host = &self.host;
        let Some(m) = self.metrics.iter_mut().find(|m| m.rule.name.0 == metric) else {
            return Err(WatchError::UnknownMetric {
                host: host.clone(),
                metric: metric.to_string(),
            });
        };
        if !value.is_finite() {
            return Ok(());
        }
        self.last_sample_ms = Some(self.last_sample_ms.map_or(ts_ms, |t| t.max(ts_ms)));
        if self.watch_from_ms.is_some_and(|from| ts_ms < from) {
            // From before a restart: it arrived (so it is data), but it is no evidence.
            return Ok(());
        }
        let threshold = |source| WatchError::Threshold {
            host: host.clone(),
            metric: metric.to_string(),
            source,
        };
        if let Some(previous_ms) = m.last_ts.filter(|&p| ts_ms <= p) {
            return Err(threshold(ThresholdError::NonIncreasingTimestamp {
                ts_ms,
                previous_ms,
            }));
        }
        let before_apply = self.applied_ms.filter(|&a| ts_ms < a);
        if before_apply.is_some() && self.restored {
            // A restored watcher kept the frozen baselines, not the samples behind them: a
            // pre-apply sample can join nothing, and it is no evidence against the update.
        } else if before_apply.is_some() {
            // Learnt after the apply but from before it (timestamps increase, so no sample of
            // this metric from after the apply came yet): it belongs to the baseline, which is
            // frozen again with it, and it is not judged.
            m.watch.unfreeze();
            let joined = m.watch.observe(ts_ms, value);
            m.frozen = m.watch.freeze().is_some();
            joined.map_err(threshold)?;
        } else {
            m.last = Some(m.watch.observe(ts_ms, value).map_err(threshold)?);
        }
        m.last_ts = Some(ts_ms);
        m.recent.push_back((ts_ms, value));
        while m.recent.len() > self.capacity {
            m.recent.pop_front();
        }
        if before_apply.is_some() {
            self.warming_at_apply = self.warming();
        }
        Ok(())
    }

    /// The host's overall drift score at `now_ms` (before the apply it is the reference).
    pub fn observe_drift(&mut self, now_ms: i64, overall: f64) {
        if !overall.is_finite() {
            return;
        }
        if self.applied_ms.is_none() {
            self.drift_before = Some(overall);
            return;
        }
        self.drift_now = Some(overall);
        let risen = match (self.drift_rise_limit, self.drift_before) {
            (Some(limit), Some(before)) => overall - before > limit,
            _ => false,
        };
        self.drift_risen_since = match (risen, self.drift_risen_since) {
            (true, Some(since)) => Some(since),
            (true, None) => Some(now_ms),
            (false, _) => None,
        };
    }

    /// The update was applied (finished) at `ts_ms`: freeze every baseline from the samples
    /// strictly before `ts_ms`. Returns the metrics whose baseline was still warming up (they
    /// are judged once they have one).
    ///
    /// The caller may learn of the apply late, after samples from `ts_ms` on were fed: those
    /// are replayed from the kept recent samples ([`HostWatcher::new`] bounds them to the
    /// baseline window plus two bakes and 16 intervals), so the baseline is built from the
    /// samples before `ts_ms` and the later ones are judged against it, exactly as if the
    /// apply had been learnt first. A result later than the kept samples reach back builds the
    /// baseline from the pre-apply samples still kept.
    pub fn mark_applied(&mut self, ts_ms: i64) -> Vec<String> {
        self.applied_ms = Some(ts_ms);
        for m in &mut self.metrics {
            if m.last_ts.is_some_and(|t| t >= ts_ms) {
                m.replay_from(ts_ms);
            } else {
                m.frozen = m.watch.freeze().is_some();
                // The excursion before the apply is history, not evidence against the update.
                m.last = None;
            }
        }
        self.warming_at_apply = self.warming();
        self.warming_at_apply.clone()
    }

    /// The metrics that kept a moving baseline through the apply.
    fn warming(&self) -> Vec<String> {
        if self.applied_ms.is_none() {
            return Vec::new();
        }
        self.metrics
            .iter()
            .filter(|m| !m.frozen)
            .map(|m| m.rule.name.0.clone())
            .collect()
    }

    /// Starts the watch over after a remediation at `ts_ms` (`rollback.remediate_first`):
    /// the frozen baselines stay, but the breaches seen so far, the drift rise and every
    /// sample before `ts_ms` plus one interval (whose window straddles the remediation) no
    /// longer count. Without this the breach that failed the host would fail it again at
    /// once. Does nothing on a host that is not applied.
    pub fn restart(&mut self, ts_ms: i64) -> Result<(), WatchError> {
        if self.applied_ms.is_none() {
            return Ok(());
        }
        for m in &mut self.metrics {
            if let Some(b) = m.watch.baseline() {
                m.watch = ThresholdWatch::with_fixed_baseline(m.watch.config().clone(), b)
                    .map_err(|source| WatchError::Threshold {
                        host: self.host.clone(),
                        metric: m.rule.name.0.clone(),
                        source,
                    })?;
                m.frozen = true;
            }
            m.last = None;
        }
        self.drift_risen_since = None;
        self.watch_from_ms = Some(ts_ms + self.interval_ms);
        Ok(())
    }

    /// The host's post-apply samples of `metric` with `ts ≥ from_ms`.
    fn values_since(&self, metric: &str, from_ms: i64) -> Vec<f64> {
        self.metrics
            .iter()
            .find(|m| m.rule.name.0 == metric)
            .map(|m| {
                m.recent
                    .iter()
                    .filter(|(t, _)| *t >= from_ms)
                    .map(|(_, v)| *v)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The verdict at `now_ms`. `controls` are watchers of hosts not updated (those that are
    /// updated are skipped); with the judge enabled and enough samples on both sides, the
    /// host's post-apply samples are judged against theirs over the same window.
    ///
    /// In order: no sample for `no_data.after` is [`WatchVerdict::NoData`]; a breached
    /// critical metric is `Critical`; a severity at or above `severity_fail` is `Failing`; so
    /// is a drift rise above the limit, and a judge score below `marginal` (`Critical` when a
    /// critical metric failed the judgement). Otherwise `Healthy`. Before the apply the host
    /// is not judged and is `Healthy` unless silent.
    pub fn verdict(&self, now_ms: i64, controls: &[&HostWatcher]) -> WatchVerdict {
        let since = match (self.last_sample_ms, self.applied_ms) {
            (Some(s), Some(a)) => s.max(a),
            (Some(s), None) => s,
            (None, Some(a)) => a,
            (None, None) => return WatchVerdict::Healthy,
        };
        if now_ms - since > self.no_data_after_ms {
            return WatchVerdict::NoData { since_ms: since };
        }
        let Some(applied) = self.applied_ms else {
            return WatchVerdict::Healthy;
        };
        let latest: Vec<(&str, &Observation)> = self
            .metrics
            .iter()
            .filter_map(|m| m.last.as_ref().map(|o| (m.rule.name.0.as_str(), o)))
            .collect();
        let mut severity = self.scorer.score(latest.iter().copied());
        // The threshold counts a breach from its first sample's timestamp; the breach was
        // already there over the interval that sample closes (see `new`).
        for r in &mut severity.reasons {
            r.for_ms += self.interval_ms;
        }
        // Each reason carries its metric's band (`lower`/`upper`, null on a side that is not
        // bad), so a reader can draw the metric against it.
        let band = |metric: &str| {
            self.metrics
                .iter()
                .find(|m| m.rule.name.0 == metric)
                .and_then(|m| m.last.as_ref())
                .map(|o| (o.lower, o.upper))
                .unwrap_or((f64::NEG_INFINITY, f64::INFINITY))
        };
        let reasons: Vec<Value> = severity
            .reasons
            .iter()
            .map(|r| {
                let (lower, upper) = band(&r.metric);
                json!({ "metric": r.metric, "value": r.value, "baseline": r.baseline, "deviation": r.deviation,
                        "for_ms": r.for_ms, "severity": r.severity, "weight": r.weight,
                        "lower": lower.is_finite().then_some(lower), "upper": upper.is_finite().then_some(upper) })
            })
            .collect();
        let critical: Vec<&str> = self
            .metrics
            .iter()
            .filter(|m| m.rule.critical && m.last.is_some_and(|o| o.state.is_breached()))
            .map(|m| m.rule.name.0.as_str())
            .collect();
        if !critical.is_empty() {
            let text = severity
                .reasons
                .iter()
                .filter(|r| critical.contains(&r.metric.as_str()))
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join("; ");
            return WatchVerdict::Critical {
                reason: format!("critical metric breached: {text}"),
                figures: json!({ "severity": severity.score, "critical": critical, "reasons": reasons, "applied_ms": applied }),
            };
        }
        if severity.score >= self.severity_fail {
            let text = severity
                .reasons
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join("; ");
            return WatchVerdict::Failing {
                reason: format!(
                    "severity {:.2} ≥ {:.2}: {text}",
                    severity.score, self.severity_fail
                ),
                figures: json!({ "severity": severity.score, "severity_fail": self.severity_fail, "reasons": reasons, "applied_ms": applied }),
            };
        }
        if let (Some(limit), Some(before), Some(drift), Some(since)) = (
            self.drift_rise_limit,
            self.drift_before,
            self.drift_now,
            self.drift_risen_since,
        ) {
            let lasted = now_ms - since;
            if lasted >= self.drift_rise_for_ms {
                return WatchVerdict::Failing {
                    reason: format!("drift rose by {:.3} (from {before:.3} to {drift:.3}), above the limit {limit}, for {:.1}s", drift - before, lasted as f64 / 1000.0),
                    figures: json!({ "drift_before": before, "drift_now": drift, "drift_rise_limit": limit, "for_ms": lasted }),
                };
            }
        }
        let judged_from = self.watch_from_ms.map_or(applied, |f| f.max(applied));
        if let Some(v) = self.judge_against(judged_from, controls) {
            return v;
        }
        WatchVerdict::Healthy
    }

    /// The canary judge over `[applied, now]`; `None` when it has no opinion (disabled, or too
    /// few samples on a side).
    fn judge_against(&self, applied: i64, controls: &[&HostWatcher]) -> Option<WatchVerdict> {
        if !self.judge.enabled {
            return None;
        }
        let controls: Vec<&&HostWatcher> = controls
            .iter()
            .filter(|c| c.applied_ms.is_none() && c.host != self.host)
            .collect();
        if controls.is_empty() {
            return None;
        }
        let min = self.judge.min_samples as usize;
        let mut configs = Vec::new();
        let mut samples = Vec::new();
        for m in &self.metrics {
            let name = &m.rule.name.0;
            let exp = self.values_since(name, applied);
            let ctl: Vec<f64> = controls
                .iter()
                .flat_map(|c| c.values_since(name, applied))
                .collect();
            if exp.len() < min || ctl.len() < min {
                continue;
            }
            // The judge flags a shift beyond half the threshold band: it compares with hosts
            // that live through the same load at the same time, so it can afford to be
            // stricter than the baseline band.
            let allowed = m.rule.threshold_pct / 200.0;
            let mut cfg = MetricConfig::new(name.clone());
            cfg.direction = m.rule.direction;
            cfg.critical = m.rule.critical;
            if matches!(m.rule.direction, Direction::Increase | Direction::Either) {
                cfg.allowed_increase = Some(1.0 + allowed);
            }
            if matches!(m.rule.direction, Direction::Decrease | Direction::Either) {
                cfg.allowed_decrease = Some((1.0 - allowed).max(0.0));
            }
            configs.push(cfg);
            samples.push((name.clone(), ctl, exp));
        }
        if configs.is_empty() {
            return None;
        }
        let jc = JudgeConfig {
            confidence: self.judge.confidence,
            pass: self.judge.pass,
            marginal: self.judge.marginal,
            ..JudgeConfig::default()
        };
        let j = judge::judge(&configs, &samples, &jc).ok()?;
        let failed: Vec<Value> = j
            .metrics
            .iter()
            .filter(|r| matches!(r.classification, judge::Classification::High | judge::Classification::Low))
            .map(|r| json!({ "metric": r.name, "classification": r.classification, "effect_size": r.effect_size,
                             "control_count": r.control_count, "experiment_count": r.experiment_count, "reason": r.reason }))
            .collect();
        let figures = json!({ "judge_score": j.score, "marginal": jc.marginal, "pass": jc.pass, "controls": controls.len(), "metrics": failed });
        let critical = j.metrics.iter().any(|r| r.critical_failure);
        match j.outcome {
            Outcome::Fail if critical => Some(WatchVerdict::Critical {
                reason: format!(
                    "the canary judge failed a critical metric against {} control hosts",
                    controls.len()
                ),
                figures,
            }),
            Outcome::Fail => Some(WatchVerdict::Failing {
                reason: format!(
                    "the canary judge scored {:.0} (below {:.0}) against {} control hosts",
                    j.score,
                    jc.marginal,
                    controls.len()
                ),
                figures,
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;
