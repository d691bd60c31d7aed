//! A configuration change's plan: from YAML (`bellwether config apply PLAN.yaml`, the API) or
//! built from flags. Every field checked inside the YAML deserialiser (file, line, column and
//! field path in errors), like the rollout and patch plans (`crate::yaml`).
//!
//! The YAML form (every field but `targets` and `set` optional; docs/config-apply.md):
//!
//! ```yaml
//! description: lower work_mem for the reporting queries
//! author: alice
//! targets:                      # targets[0] is the canary
//!   - {host: db1, database: main}
//!   - {host: db2, database: main}
//! controls:                     # untouched peers of the same role, sampled alongside
//!   - {host: db3, database: main}
//! set:                          # in this order; null resets to the default
//!   work_mem: 64kB
//!   random_page_cost: null
//! watch:
//!   baseline: 10s
//!   min_baseline_samples: 5
//!   bake: 20s
//!   confirm: 5s
//!   confirm_timeout: 60s
//!   restart_warmup: 3s
//!   rules:
//!     - {metric: tps, direction: decrease, percent: 25, for: 4s, weight: 1}
//! risk_threshold: 0.5
//! trial: true
//! alerts:                       # webhooks for this change's events (docs/alerts.md)
//!   - {name: dba, url: "https://hooks.example.com/dba", events: ["config.*"]}
//! ```
//!
//! The typed [`ConfigPlan`] serialises with serde's derived JSON form (durations in ms), which
//! is how the engine's state keeps it and what the API's JSON body may carry;
//! [`ConfigPlan::validate`] checks that form exactly as [`parse_plan`] checks YAML.

use std::collections::BTreeSet;
use std::time::Duration;

use bellwether_detect::threshold::Direction;
use bellwether_model::action::MAX_PG_SETTINGS;
use bellwether_model::duration::Dur;
use bellwether_model::{ActionSpec, HostName};
use serde::{Deserialize, Deserializer, Serialize};

use crate::rollout::plan::{via_map, Text};

/// One instance: the host whose agent runs the actions, and the agent's name for the database
/// (`--database NAME=URL` on that agent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub host: String,
    pub database: String,
}

/// One metric's band (`bellwether_detect::threshold`): the metric name
/// (`bellwether_config::metrics`), the bad direction, the percentage band around the baseline,
/// how long a breach must last, its weight in the severity, and the band's least half-width in
/// the metric's own units (`floor`; absent: `bellwether_config::metrics::default_floor`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricRule {
    pub metric: String,
    pub direction: bellwether_detect::threshold::Direction,
    pub percent: f64,
    pub for_ms: u64,
    pub weight: f64,
    /// The band is at least this wide in absolute units (ms for `latency_ms`, transactions per
    /// second for `tps`). Absent from state saved before it existed: the metric's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floor: Option<f64>,
}

/// How a target is watched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatchSpec {
    /// The baseline is the samples in this window strictly before the apply.
    pub baseline_ms: u64,
    /// At least this many baseline samples, or the target waits (no data).
    pub min_baseline_samples: usize,
    /// Watched this long after the apply before it is promoted.
    pub bake_ms: u64,
    /// After a revert, metrics must be back in the band this long to count as recovered
    /// (given up after `confirm_timeout_ms`).
    pub confirm_ms: u64,
    pub confirm_timeout_ms: u64,
    /// After an apply that restarted the server, the samples of this first window are not
    /// judged (a restart empties the caches and drops every connection: its transient is not
    /// the change's effect) and the bake starts after it; an instance that does not answer is
    /// still reverted at once. 0 turns it off. Absent from state saved before it existed:
    /// the default.
    #[serde(default = "default_restart_warmup_ms")]
    pub restart_warmup_ms: u64,
    pub rules: Vec<MetricRule>,
}

/// The default restart warm-up (see [`WatchSpec::defaults`]).
pub const DEFAULT_RESTART_WARMUP_MS: u64 = 3_000;

fn default_restart_warmup_ms() -> u64 {
    DEFAULT_RESTART_WARMUP_MS
}

/// A configuration change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigPlan {
    pub description: String,
    pub author: String,
    /// Canary first: targets[0] is the canary; the rest follow one at a time once it passes.
    pub targets: Vec<Target>,
    /// Key → new value (`None` resets to the default), in the order given.
    pub set: Vec<(String, Option<String>)>,
    pub watch: WatchSpec,
    /// Revert when the anomaly's risk score is at or above this, in (0, 1).
    pub risk_threshold: f64,
    /// Run a scratch trial start on each target's host before touching it (default true).
    pub trial: bool,
    /// Contemporaneous controls: untouched instances of the same role and workload, sampled
    /// over the same intervals as the targets and never acted on. A breach that the
    /// controls show at the same time is not blamed on the change (the `peer` factor,
    /// docs/config-apply.md "A contemporaneous control"). Empty: judged as before, against
    /// the target's own past only. Absent from state saved before it existed: empty.
    #[serde(default)]
    pub controls: Vec<Target>,
    /// Webhooks that receive this change's events (`config.*`; docs/alerts.md), like a
    /// rollout's or a patch's `alerts:`. Absent from state saved before it existed: empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<crate::alerts::AlertRule>,
}

/// A plan that is not valid: `file:line:column: field: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PlanError(pub String);

/// The most targets one change may have.
pub const MAX_TARGETS: usize = 1000;
/// The longest duration a watch field may take (a day): a bake longer than that is a plan
/// mistake, and it keeps every sum of durations far inside `i64` milliseconds.
pub const MAX_WATCH_MS: u64 = 86_400_000;
/// The default risk threshold (see [`WatchSpec::defaults`] for the reasoning).
pub const DEFAULT_RISK_THRESHOLD: f64 = 0.5;

impl WatchSpec {
    /// The documented defaults (docs/config-apply.md, "Defaults"). They are chosen from what
    /// the agent's metrics can show within seconds at its ~1 s sampling on a busy instance,
    /// not tuned to one workload:
    ///
    /// - baseline 10 s with at least 5 samples: ten 1-s rates, of which half may be missing;
    ///   the mean of five or more 1-s pgbench rates is within a few percent of the longer-run
    ///   rate, far inside the bands below;
    /// - bake 20 s: five times the breach duration, so a breach that starts as late as 15 s
    ///   after the apply (a plan cache turning over, sessions reconnecting) is still seen;
    /// - `tps` decrease 25 % for 4 s: 1-s throughput on a steady load wanders by well under
    ///   10 %; a quarter lost for four consecutive seconds is not noise;
    /// - `latency_ms` increase 40 % for 4 s: per-statement latency is noisier than
    ///   throughput (a checkpoint moves it by 20–30 % for a second or two), so its band is
    ///   wider;
    /// - every rule's `floor` is `bellwether_config::metrics::default_floor`: the band is at
    ///   least 0.5 ms of latency and 1 tps wide, so a relative move of a sub-millisecond
    ///   latency or a near-idle instance's rate is not a breach by itself;
    /// - `errors_per_s` increase 100 % for 4 s: a healthy baseline is usually zero, and any
    ///   lasting rise of rollbacks or deadlocks after a configuration change is a symptom;
    /// - confirm 5 s within 60 s: after a revert, five seconds back in every band is five
    ///   consecutive in-band 1-s samples; a reload takes effect at once and a restart is back
    ///   within seconds, so a minute is ample before the revert is declared not recovered;
    /// - restart warm-up 3 s: after a restart the clients reconnect (a pool's retry is
    ///   typically well under a second) and the backends refill `shared_buffers` and their
    ///   catalog caches; for a small instance whose hot data is in the OS page cache
    ///   (the 128 MB default `shared_buffers` is re-read at memory speed) that is over in one
    ///   to two seconds, so three 1-s rates cover it with a margin. A transient must now
    ///   outlast the warm-up plus a rule's `for` (7 s) to count, while a restart-context bad
    ///   change is recovered at most 3 s later (about 17 s, well inside the 30 s goal). A
    ///   large instance that warms from disk needs its own, longer value.
    pub fn defaults() -> WatchSpec {
        let rule = |metric: &str, direction, percent| MetricRule {
            metric: metric.to_string(),
            direction,
            percent,
            for_ms: 4_000,
            weight: 1.0,
            floor: None,
        };
        WatchSpec {
            baseline_ms: 10_000,
            min_baseline_samples: 5,
            bake_ms: 20_000,
            confirm_ms: 5_000,
            confirm_timeout_ms: 60_000,
            restart_warmup_ms: DEFAULT_RESTART_WARMUP_MS,
            rules: vec![
                rule(bellwether_config::metrics::TPS, Direction::Decrease, 25.0),
                rule(
                    bellwether_config::metrics::LATENCY_MS,
                    Direction::Increase,
                    40.0,
                ),
                rule(
                    bellwether_config::metrics::ERRORS_PER_S,
                    Direction::Increase,
                    100.0,
                ),
            ],
        }
    }

    /// The sampling interval the watch assumes at most: the baseline window over the samples
    /// it needs (10 s / 5 = 2 s by default).
    pub fn expected_interval_ms(&self) -> u64 {
        (self.baseline_ms / self.min_baseline_samples.max(1) as u64).max(1)
    }

    /// No sample for this long is no data: twice the expected interval (4 s by default).
    pub fn no_data_after_ms(&self) -> u64 {
        2 * self.expected_interval_ms()
    }

    fn check(&self) -> Result<(), String> {
        let dur = |name: &str, v: u64| -> Result<(), String> {
            if v == 0 || v > MAX_WATCH_MS {
                return Err(format!(
                    "{name}: {v} ms must be more than 0 and at most a day ({MAX_WATCH_MS} ms)"
                ));
            }
            Ok(())
        };
        dur("baseline", self.baseline_ms)?;
        dur("bake", self.bake_ms)?;
        dur("confirm", self.confirm_ms)?;
        dur("confirm_timeout", self.confirm_timeout_ms)?;
        if self.restart_warmup_ms > MAX_WATCH_MS {
            return Err(format!(
                "restart_warmup: {} ms must be at most a day ({MAX_WATCH_MS} ms)",
                self.restart_warmup_ms
            ));
        }
        if self.min_baseline_samples == 0 || self.min_baseline_samples > 4096 {
            return Err(format!(
                "min_baseline_samples: {} must be 1 to 4096",
                self.min_baseline_samples
            ));
        }
        if self.confirm_timeout_ms < self.confirm_ms {
            return Err(format!(
                "confirm_timeout: {} ms must be at least confirm ({} ms)",
                self.confirm_timeout_ms, self.confirm_ms
            ));
        }
        if self.rules.is_empty() {
            return Err("rules: at least one metric rule is needed".into());
        }
        let mut seen = BTreeSet::new();
        for (i, r) in self.rules.iter().enumerate() {
            r.check().map_err(|e| format!("rules[{i}].{e}"))?;
            if !seen.insert(r.metric.as_str()) {
                return Err(format!(
                    "rules[{i}].metric: {} is watched twice; one rule per metric",
                    r.metric
                ));
            }
            if r.for_ms > self.bake_ms {
                return Err(format!(
                    "rules[{i}].for: {} ms is longer than the bake ({} ms): it could never breach",
                    r.for_ms, self.bake_ms
                ));
            }
        }
        if self.rules.iter().all(|r| r.weight == 0.0) {
            return Err("rules: at least one rule needs a weight above 0".into());
        }
        Ok(())
    }
}

/// The metrics a rule may watch: every `bellwether_config::metrics` name but `up`, which the
/// engine always watches itself (an instance that is down after the apply is an anomaly of
/// maximal severity), and the control `ref_latency_ms`, which is evidence about the host,
/// not about the change.
pub fn rule_metrics() -> Vec<&'static str> {
    use bellwether_config::metrics::{ALL, REF_LATENCY_MS, UP};
    ALL.iter()
        .copied()
        .filter(|m| *m != UP && *m != REF_LATENCY_MS)
        .collect()
}

impl MetricRule {
    /// The floor in force: the rule's own, else the metric's default.
    pub fn floor(&self) -> f64 {
        self.floor
            .unwrap_or_else(|| bellwether_config::metrics::default_floor(&self.metric))
    }

    fn check(&self) -> Result<(), String> {
        if !rule_metrics().contains(&self.metric.as_str()) {
            return Err(format!(
                "metric: unknown metric {:?}; one of {}",
                self.metric,
                rule_metrics().join(", ")
            ));
        }
        if !(self.percent.is_finite() && self.percent > 0.0 && self.percent <= 10_000.0) {
            return Err(format!(
                "percent: {} must be a number above 0 and at most 10000",
                self.percent
            ));
        }
        if self.for_ms > MAX_WATCH_MS {
            return Err(format!("for: {} ms is longer than a day", self.for_ms));
        }
        if !(self.weight.is_finite() && self.weight >= 0.0 && self.weight <= 1000.0) {
            return Err(format!(
                "weight: {} must be a number from 0 to 1000",
                self.weight
            ));
        }
        if let Some(f) = self.floor {
            if !(f.is_finite() && f >= 0.0) {
                return Err(format!(
                    "floor: {f} must be a number of 0 or more (in the metric's own units)"
                ));
            }
        }
        Ok(())
    }
}

fn check_target(t: &Target) -> Result<(), String> {
    HostName::new(t.host.clone()).map_err(|e| format!("host: {:?}: {e}", t.host))?;
    ActionSpec::PgReadSettings {
        database: t.database.clone(),
    }
    .validate()
    .map_err(|e| format!("database: {e}"))
}

fn check_set(set: &[(String, Option<String>)]) -> Result<(), String> {
    if set.is_empty() {
        return Err("set: at least one setting is needed".into());
    }
    if set.len() > MAX_PG_SETTINGS {
        return Err(format!(
            "set: {} settings; at most {MAX_PG_SETTINGS}",
            set.len()
        ));
    }
    let mut seen = BTreeSet::new();
    for (k, v) in set {
        check_setting(k, v.as_deref()).map_err(|e| format!("set.{k}: {e}"))?;
        if !seen.insert(k.as_str()) {
            return Err(format!("set.{k}: set twice; each setting once"));
        }
    }
    Ok(())
}

/// One setting name and value, by the rules of `pg_apply` (a PostgreSQL identifier; a value
/// of at most 4096 bytes without NUL). Whether the value suits the setting is checked on the
/// instance (the trial and `pg_apply` validate against its `pg_settings`).
fn check_setting(key: &str, value: Option<&str>) -> Result<(), String> {
    ActionSpec::PgApply {
        database: "x".into(),
        settings: vec![(key.to_string(), value.map(str::to_string))],
        restart: false,
        timeout_ms: None,
    }
    .validate()
    .map_err(|e| e.to_string())
}

impl ConfigPlan {
    /// A plan with the default watch, threshold and trial.
    pub fn new(
        description: impl Into<String>,
        author: impl Into<String>,
        targets: Vec<Target>,
        set: Vec<(String, Option<String>)>,
    ) -> ConfigPlan {
        ConfigPlan {
            description: description.into(),
            author: author.into(),
            targets,
            set,
            watch: WatchSpec::defaults(),
            risk_threshold: DEFAULT_RISK_THRESHOLD,
            trial: true,
            controls: Vec::new(),
            alerts: Vec::new(),
        }
    }

    /// The changed keys, in the plan's order.
    pub fn keys(&self) -> Vec<String> {
        self.set.iter().map(|(k, _)| k.clone()).collect()
    }

    /// Checks a plan built from flags or JSON the same way `parse_plan` checks YAML.
    pub fn validate(&self) -> Result<(), PlanError> {
        self.check().map_err(PlanError)
    }

    fn check(&self) -> Result<(), String> {
        if self.description.trim().is_empty() {
            return Err("description: must not be empty".into());
        }
        if self.description.len() > 4096 || self.author.len() > 256 {
            return Err("description/author: at most 4096/256 bytes".into());
        }
        if self.author.trim().is_empty() {
            return Err("author: must not be empty".into());
        }
        if self.targets.is_empty() {
            return Err("targets: at least one target is needed".into());
        }
        if self.targets.len() > MAX_TARGETS {
            return Err(format!(
                "targets: {} targets; at most {MAX_TARGETS}",
                self.targets.len()
            ));
        }
        let mut seen = BTreeSet::new();
        for (i, t) in self.targets.iter().enumerate() {
            check_target(t).map_err(|e| format!("targets[{i}].{e}"))?;
            if !seen.insert((t.host.as_str(), t.database.as_str())) {
                return Err(format!(
                    "targets[{i}]: host {} database {} is listed twice",
                    t.host, t.database
                ));
            }
        }
        if self.controls.len() > MAX_TARGETS {
            return Err(format!(
                "controls: {} controls; at most {MAX_TARGETS}",
                self.controls.len()
            ));
        }
        let mut seen_controls = BTreeSet::new();
        for (i, c) in self.controls.iter().enumerate() {
            check_target(c).map_err(|e| format!("controls[{i}].{e}"))?;
            if seen.contains(&(c.host.as_str(), c.database.as_str())) {
                return Err(format!(
                    "controls[{i}]: host {} database {} is also a target; a control must be \
                     an instance the change does not touch",
                    c.host, c.database
                ));
            }
            if !seen_controls.insert((c.host.as_str(), c.database.as_str())) {
                return Err(format!(
                    "controls[{i}]: host {} database {} is listed twice",
                    c.host, c.database
                ));
            }
        }
        check_set(&self.set)?;
        crate::alerts::check_rules(&self.alerts)?;
        self.watch.check().map_err(|e| format!("watch.{e}"))?;
        if !(self.risk_threshold > 0.0 && self.risk_threshold < 1.0) {
            return Err(format!(
                "risk_threshold: {} must be above 0 and below 1",
                self.risk_threshold
            ));
        }
        Ok(())
    }
}

/// Parses and validates a YAML plan.
pub fn parse_plan(text: &str, file: &str) -> Result<ConfigPlan, PlanError> {
    crate::yaml::from_str::<YamlPlan>(text)
        .map(|p| p.0)
        .map_err(|e| {
            PlanError(format!(
                "{file}:{}:{}: {}",
                e.line,
                e.column,
                e.path_and_message()
            ))
        })
}

// ---- the YAML form -------------------------------------------------------------------------

struct YamlPlan(ConfigPlan);

impl<'de> Deserialize<'de> for YamlPlan {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        via_map::<D, RawPlan, YamlPlan>(d)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlan {
    description: Text,
    author: Option<Text>,
    targets: Vec<YamlTarget>,
    controls: Option<Vec<YamlTarget>>,
    set: SetList,
    watch: Option<YamlWatch>,
    risk_threshold: Option<f64>,
    trial: Option<bool>,
    alerts: Option<Vec<crate::alerts::AlertRule>>,
}

impl TryFrom<RawPlan> for YamlPlan {
    type Error = String;
    fn try_from(r: RawPlan) -> Result<YamlPlan, String> {
        let plan = ConfigPlan {
            description: r.description.0,
            author: r.author.map_or_else(|| "unknown".to_string(), |a| a.0),
            targets: r.targets.into_iter().map(|t| t.0).collect(),
            set: r.set.0,
            watch: r.watch.map_or_else(WatchSpec::defaults, |w| w.0),
            risk_threshold: r.risk_threshold.unwrap_or(DEFAULT_RISK_THRESHOLD),
            trial: r.trial.unwrap_or(true),
            controls: r
                .controls
                .map(|cs| cs.into_iter().map(|t| t.0).collect())
                .unwrap_or_default(),
            alerts: r.alerts.unwrap_or_default(),
        };
        plan.check()?;
        Ok(YamlPlan(plan))
    }
}

struct YamlTarget(Target);

impl<'de> Deserialize<'de> for YamlTarget {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        via_map::<D, RawTarget, YamlTarget>(d)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    host: Text,
    database: Text,
}

impl TryFrom<RawTarget> for YamlTarget {
    type Error = String;
    fn try_from(r: RawTarget) -> Result<YamlTarget, String> {
        let t = Target {
            host: r.host.0,
            database: r.database.0,
        };
        check_target(&t)?;
        Ok(YamlTarget(t))
    }
}

/// `set:` as a mapping in document order (a repeated key is refused by the YAML reader); a
/// value may be a text, number or boolean, or null for a reset to the default. YAML reads a
/// bare `on`/`off` as a boolean, which becomes `true`/`false` (PostgreSQL takes both
/// spellings); quote a value to keep its text as written.
struct SetList(Vec<(String, Option<String>)>);

impl<'de> Deserialize<'de> for SetList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = SetList;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a mapping of setting names to values (null resets to the default)")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<SetList, A::Error> {
                let mut out: Vec<(String, Option<String>)> = Vec::new();
                while let Some(SettingName(key)) = map.next_key::<SettingName>()? {
                    let value: Option<Text> = map.next_value()?;
                    let value = value.map(|t| t.0);
                    check_setting(&key, value.as_deref())
                        .map_err(|e| serde::de::Error::custom(format!("{key}: {e}")))?;
                    if out.len() == MAX_PG_SETTINGS {
                        return Err(serde::de::Error::custom(format!(
                            "more than {MAX_PG_SETTINGS} settings"
                        )));
                    }
                    out.push((key, value));
                }
                if out.is_empty() {
                    return Err(serde::de::Error::custom("at least one setting is needed"));
                }
                Ok(SetList(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// A setting name, checked where it is read (so an error points at the key).
struct SettingName(String);

impl<'de> Deserialize<'de> for SettingName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        check_setting(&name, None).map_err(serde::de::Error::custom)?;
        Ok(SettingName(name))
    }
}

struct YamlWatch(WatchSpec);

impl<'de> Deserialize<'de> for YamlWatch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        via_map::<D, RawWatch, YamlWatch>(d)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWatch {
    baseline: Option<Dur>,
    min_baseline_samples: Option<usize>,
    bake: Option<Dur>,
    confirm: Option<Dur>,
    confirm_timeout: Option<Dur>,
    restart_warmup: Option<Dur>,
    rules: Option<Vec<YamlRule>>,
}

fn dur_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl TryFrom<RawWatch> for YamlWatch {
    type Error = String;
    fn try_from(r: RawWatch) -> Result<YamlWatch, String> {
        let d = WatchSpec::defaults();
        let w = WatchSpec {
            baseline_ms: r.baseline.map_or(d.baseline_ms, |v| dur_ms(v.0)),
            min_baseline_samples: r.min_baseline_samples.unwrap_or(d.min_baseline_samples),
            bake_ms: r.bake.map_or(d.bake_ms, |v| dur_ms(v.0)),
            confirm_ms: r.confirm.map_or(d.confirm_ms, |v| dur_ms(v.0)),
            confirm_timeout_ms: r
                .confirm_timeout
                .map_or(d.confirm_timeout_ms, |v| dur_ms(v.0)),
            restart_warmup_ms: r
                .restart_warmup
                .map_or(d.restart_warmup_ms, |v| dur_ms(v.0)),
            rules: r
                .rules
                .map_or(d.rules, |rs| rs.into_iter().map(|r| r.0).collect()),
        };
        w.check()?;
        Ok(YamlWatch(w))
    }
}

struct YamlRule(MetricRule);

impl<'de> Deserialize<'de> for YamlRule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        via_map::<D, RawRule, YamlRule>(d)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    metric: Text,
    direction: Direction,
    percent: f64,
    #[serde(rename = "for")]
    for_: Option<Dur>,
    weight: Option<f64>,
    floor: Option<f64>,
}

impl TryFrom<RawRule> for YamlRule {
    type Error = String;
    fn try_from(r: RawRule) -> Result<YamlRule, String> {
        let rule = MetricRule {
            metric: r.metric.0,
            direction: r.direction,
            percent: r.percent,
            for_ms: r.for_.map_or(4_000, |d| dur_ms(d.0)),
            weight: r.weight.unwrap_or(1.0),
            floor: r.floor,
        };
        rule.check()?;
        Ok(YamlRule(rule))
    }
}

#[cfg(test)]
mod tests;
