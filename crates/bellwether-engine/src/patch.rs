//! The patch of one stateful service instance, as a pure state machine.
//!
//! The patched instance starts beside the original, new connections shift to it, and both are
//! watched against the original's pre-patch baseline (and, where both carry traffic, against
//! each other) with the dynamic thresholds of `bellwether-detect`. A breach that scores past
//! the plan's severity threshold rolls back in four phases; a clean bake promotes the patch
//! in the same four phases, mirrored.
//!
//! [`PatchEngine::step`] takes one [`Input`] (a sample, a tick, or the result of the action it
//! asked for last) with its own timestamp and returns the [`Action`]s to carry out; every
//! decision is recorded in the [`PatchReport`] as an [`Event`] with its reason and figures. The
//! engine never does IO and never reads a clock: the CLI's loop does both.

use std::collections::BTreeMap;
use std::time::Duration;

use bellwether_detect::threshold::{
    Direction, MultiWatch, Severity, ThresholdConfig, ThresholdWatch,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Why a plan could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{source_name}: {message}")]
    Yaml {
        source_name: String,
        message: String,
    },
    #[error("{source_name}: {field}: {message}")]
    Invalid {
        source_name: String,
        field: String,
        message: String,
    },
}

/// A duration written as `250ms`, `2s`, `1m` or `1h` (a bare number is seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct Dur(pub Duration);

impl From<Dur> for String {
    fn from(d: Dur) -> String {
        format!("{}ms", d.0.as_millis())
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // The same syntax and checks as a rollout plan's durations.
        crate::rollout::plan::Dur::deserialize(d).map(|v| Dur(v.0))
    }
}

/// A metric the patch is watched on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricKind {
    /// Median query latency at the proxy, seconds.
    LatencyP50,
    /// 99th-percentile query latency at the proxy, seconds.
    LatencyP99,
    /// Queries per second at the proxy.
    Throughput,
    /// Share of query cycles that carried an error, in [0, 1].
    ErrorRate,
    /// CPU of the instance's process tree, percent of one core.
    Cpu,
    /// Resident memory of the instance's process tree, bytes.
    Rss,
}

impl MetricKind {
    pub fn name(self) -> &'static str {
        match self {
            MetricKind::LatencyP50 => "latency_p50",
            MetricKind::LatencyP99 => "latency_p99",
            MetricKind::Throughput => "throughput",
            MetricKind::ErrorRate => "error_rate",
            MetricKind::Cpu => "cpu",
            MetricKind::Rss => "rss",
        }
    }

    /// Whether the proxy measures it (as opposed to `/proc`).
    pub fn from_proxy(self) -> bool {
        !matches!(self, MetricKind::Cpu | MetricKind::Rss)
    }

    fn default_direction(self) -> Direction {
        match self {
            MetricKind::Throughput => Direction::Decrease,
            _ => Direction::Increase,
        }
    }

    /// The band's least half-width, so that a near-zero baseline does not make noise a breach.
    fn default_floor(self) -> f64 {
        match self {
            MetricKind::LatencyP50 | MetricKind::LatencyP99 => 0.000_5,
            MetricKind::Throughput => 1.0,
            MetricKind::ErrorRate => 0.01,
            MetricKind::Cpu => 5.0,
            MetricKind::Rss => 16.0 * 1024.0 * 1024.0,
        }
    }
}

/// What a metric is compared against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Compare {
    /// The original's moving average before the patch.
    #[default]
    Baseline,
    /// The original's value at the same time (needs traffic on both: a partial shift).
    Original,
    /// Both.
    Both,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricSpec {
    pub metric: MetricKind,
    /// The band around the baseline, in percent.
    pub threshold_pct: f64,
    #[serde(default)]
    pub direction: Option<String>,
    /// How long the metric must stay out of the band to count.
    pub duration: Dur,
    /// Its weight in the severity score.
    #[serde(default = "one")]
    pub weight: f64,
    #[serde(default)]
    pub compare: Compare,
    #[serde(default)]
    pub abs_floor: Option<f64>,
    /// A breach of a critical metric rolls back whatever the score.
    #[serde(default)]
    pub critical: bool,
}

fn one() -> f64 {
    1.0
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySection {
    /// Where clients connect, IP:PORT.
    pub listen: String,
    #[serde(default)]
    pub admin: Option<String>,
    /// `postgres` (default) or `tcp`.
    #[serde(default = "postgres")]
    pub protocol: String,
}

fn postgres() -> String {
    "postgres".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OriginalSection {
    #[serde(default = "original_name")]
    pub name: String,
    pub address: String,
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub pidfile: Option<String>,
    /// How to stop the original when the patch is promoted; without it, SIGTERM to its PID.
    #[serde(default)]
    pub stop: Option<Vec<String>>,
    #[serde(default)]
    pub password: Option<String>,
}

fn original_name() -> String {
    "original".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchedSection {
    #[serde(default = "patched_name")]
    pub name: String,
    pub address: String,
    /// The argv that starts the patched instance. The started process is watched unless a
    /// pidfile names another.
    pub start: Vec<String>,
    /// The argv that stops it.
    pub stop: Vec<String>,
    #[serde(default)]
    pub pidfile: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
}

fn patched_name() -> String {
    "patched".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSection {
    /// `postgres` or `tcp`.
    #[serde(default = "postgres")]
    pub check: String,
    #[serde(default = "half_second")]
    pub interval: Dur,
    #[serde(default = "two")]
    pub rise: u32,
    /// How long the patched instance may take to become healthy.
    #[serde(default = "thirty_seconds")]
    pub timeout: Dur,
    #[serde(default = "postgres")]
    pub user: String,
    #[serde(default = "postgres")]
    pub database: String,
}

impl Default for HealthSection {
    fn default() -> Self {
        HealthSection {
            check: postgres(),
            interval: half_second(),
            rise: 2,
            timeout: thirty_seconds(),
            user: postgres(),
            database: postgres(),
        }
    }
}

fn half_second() -> Dur {
    Dur(Duration::from_millis(500))
}
fn thirty_seconds() -> Dur {
    Dur(Duration::from_secs(30))
}
fn two() -> u32 {
    2
}
fn hundred() -> u32 {
    100
}
fn one_second() -> Dur {
    Dur(Duration::from_secs(1))
}
fn default_severity() -> f64 {
    0.3
}

/// A patch plan, as written in YAML.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchPlan {
    pub name: String,
    pub proxy: ProxySection,
    pub original: OriginalSection,
    pub patched: PatchedSection,
    #[serde(default)]
    pub health: HealthSection,
    /// Share of new connections sent to the patched instance, 1 to 100.
    #[serde(default = "hundred")]
    pub shift_weight: u32,
    pub metrics: Vec<MetricSpec>,
    #[serde(default = "one_second")]
    pub sample_interval: Dur,
    /// The moving-average window of the pre-patch baseline.
    pub baseline_window: Dur,
    /// How long the patch must run cleanly before it is promoted.
    pub bake_time: Dur,
    /// How long draining sessions may take before they are closed.
    pub drain_timeout: Dur,
    /// The severity score (0 to 1) at which the patch rolls back.
    #[serde(default = "default_severity")]
    pub severity_threshold: f64,
    /// An `http://` URL that receives JSON alerts and the final report.
    #[serde(default)]
    pub webhook: Option<String>,
}

impl PatchPlan {
    /// Parses and validates a plan; errors name the source and the line and column, or the
    /// field.
    pub fn parse(source_name: &str, text: &str) -> Result<PatchPlan, PlanError> {
        let plan: PatchPlan = crate::yaml::from_str(text).map_err(|e| PlanError::Yaml {
            source_name: source_name.into(),
            message: e.to_string(),
        })?;
        plan.validate(source_name)?;
        Ok(plan)
    }

    fn validate(&self, source_name: &str) -> Result<(), PlanError> {
        let bad = |field: &str, message: String| PlanError::Invalid {
            source_name: source_name.into(),
            field: field.into(),
            message,
        };
        for (field, addr) in [
            ("proxy.listen", &self.proxy.listen),
            ("original.address", &self.original.address),
            ("patched.address", &self.patched.address),
        ] {
            let ok = addr
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !ok {
                return Err(bad(field, format!("`{addr}` is not HOST:PORT")));
            }
        }
        if !["postgres", "tcp"].contains(&self.proxy.protocol.as_str()) {
            return Err(bad(
                "proxy.protocol",
                format!("`{}` is not postgres or tcp", self.proxy.protocol),
            ));
        }
        if !["postgres", "tcp"].contains(&self.health.check.as_str()) {
            return Err(bad(
                "health.check",
                format!("`{}` is not postgres or tcp", self.health.check),
            ));
        }
        if self.original.pid.is_some() == self.original.pidfile.is_some() {
            return Err(bad(
                "original",
                "give exactly one of `pid` and `pidfile`".into(),
            ));
        }
        if self.patched.start.is_empty() {
            return Err(bad("patched.start", "the argv is empty".into()));
        }
        if self.patched.stop.is_empty() {
            return Err(bad("patched.stop", "the argv is empty".into()));
        }
        if self.original.stop.as_ref().is_some_and(Vec::is_empty) {
            return Err(bad("original.stop", "the argv is empty".into()));
        }
        if self.original.name == self.patched.name {
            return Err(bad("patched.name", "must differ from original.name".into()));
        }
        if !(1..=100).contains(&self.shift_weight) {
            return Err(bad(
                "shift_weight",
                format!("{} is not in 1..=100", self.shift_weight),
            ));
        }
        if self.metrics.is_empty() {
            return Err(bad("metrics", "name at least one metric to watch".into()));
        }
        for (i, m) in self.metrics.iter().enumerate() {
            let f = format!("metrics[{i}]");
            if !m.threshold_pct.is_finite() || m.threshold_pct < 0.0 {
                return Err(bad(
                    &f,
                    format!("threshold_pct {} must be a number ≥ 0", m.threshold_pct),
                ));
            }
            if !m.weight.is_finite() || m.weight < 0.0 {
                return Err(bad(&f, format!("weight {} must be a number ≥ 0", m.weight)));
            }
            if let Some(d) = &m.direction {
                Direction::parse(d).ok_or_else(|| {
                    bad(
                        &f,
                        format!("direction `{d}` is not increase, decrease or either"),
                    )
                })?;
            }
            if self.metrics[..i].iter().any(|o| o.metric == m.metric) {
                return Err(bad(&f, format!("{} is listed twice", m.metric.name())));
            }
        }
        if !(self.severity_threshold > 0.0 && self.severity_threshold <= 1.0) {
            return Err(bad(
                "severity_threshold",
                format!("{} is not in (0, 1]", self.severity_threshold),
            ));
        }
        if self.sample_interval.0 < Duration::from_millis(50) {
            return Err(bad("sample_interval", "must be at least 50ms".into()));
        }
        if self.baseline_window.0 < self.sample_interval.0 {
            return Err(bad(
                "baseline_window",
                "must be at least one sample_interval".into(),
            ));
        }
        if let Some(w) = &self.webhook {
            if !w.starts_with("http://") {
                return Err(bad("webhook", format!("`{w}` is not an http:// URL")));
            }
        }
        Ok(())
    }
}

/// Which instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Instance {
    Original,
    Patched,
}

/// One round of measurements of one instance; `None` where there was no data (no queries in
/// the interval, process gone).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub at_ms: i64,
    pub instance: Instance,
    pub values: BTreeMap<MetricKind, Option<f64>>,
}

/// What the engine is told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Input {
    /// Time passed.
    Tick {
        at_ms: i64,
    },
    Sample(Sample),
    /// The action the engine waits for finished, with what it measured.
    Done {
        at_ms: i64,
        ok: bool,
        detail: serde_json::Value,
    },
}

impl Input {
    fn at_ms(&self) -> i64 {
        match self {
            Input::Tick { at_ms } | Input::Done { at_ms, .. } => *at_ms,
            Input::Sample(s) => s.at_ms,
        }
    }
}

/// What the IO loop must do. All but `Webhook` are awaited: the loop answers with
/// [`Input::Done`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Action {
    /// Run the patched instance's start argv and register it with the proxy (no traffic yet).
    StartPatched,
    /// Wait until the patched instance passes `rise` health checks in a row.
    WaitPatchedHealthy { timeout_ms: u64 },
    /// Route new connections by these weights; an instance with weight > 0 is made ready.
    Route { original: u32, patched: u32 },
    /// Drain an instance: its sessions leave at their next transaction boundary (re-homed, or
    /// closed gracefully when they hold state); after the timeout the rest are closed.
    Drain { instance: Instance, timeout_ms: u64 },
    /// Stop an instance's process.
    Stop { instance: Instance },
    /// Remove the other instance from the proxy: this one serves everything.
    ServeOnly { instance: Instance },
    /// POST this JSON to the plan's webhook (not awaited).
    Webhook { body: serde_json::Value },
}

/// Where the patch stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Baseline,
    Starting,
    WaitingHealthy,
    Shifting,
    ShiftDraining,
    Baking,
    RollingBack { phase: u8 },
    Promoting { phase: u8 },
    RolledBack,
    Promoted,
    Failed,
}

impl Stage {
    pub fn is_final(self) -> bool {
        matches!(self, Stage::RolledBack | Stage::Promoted | Stage::Failed)
    }
}

/// One decision, action result or observation worth keeping, with its figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub at_ms: i64,
    pub kind: String,
    pub message: String,
    pub figures: serde_json::Value,
}

/// The metric that set off the rollback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trigger {
    pub metric: String,
    pub against: String,
    pub value: f64,
    pub baseline: f64,
    pub deviation: f64,
    pub for_ms: i64,
    pub severity_score: f64,
    pub reasons: Vec<String>,
}

/// The timing of one of the four phases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseTiming {
    pub kind: String,
    pub phase: u8,
    pub name: String,
    pub started_ms: i64,
    pub took_ms: i64,
    pub ok: bool,
    pub detail: serde_json::Value,
}

/// Everything about one patch: its plan, stage, events and outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatchReport {
    pub id: String,
    pub plan_name: String,
    pub stage: Stage,
    pub started_ms: i64,
    pub finished_ms: Option<i64>,
    pub baselines: BTreeMap<String, f64>,
    pub trigger: Option<Trigger>,
    pub phases: Vec<PhaseTiming>,
    pub last_severity: f64,
    pub baked_ms: i64,
    pub events: Vec<Event>,
}

impl PatchReport {
    /// `running`, `rolled_back`, `promoted` or `failed`.
    pub fn outcome(&self) -> &'static str {
        match self.stage {
            Stage::RolledBack => "rolled_back",
            Stage::Promoted => "promoted",
            Stage::Failed => "failed",
            _ => "running",
        }
    }
}

const ROLLBACK_PHASES: [&str; 4] = [
    "new connections go to the original",
    "the patched instance's sessions drain",
    "the patched instance is stopped",
    "the original serves everything",
];
const PROMOTE_PHASES: [&str; 4] = [
    "new connections go to the patched instance",
    "the original's sessions drain",
    "the original is stopped",
    "the patched instance serves everything",
];

/// The patch state machine.
#[derive(Debug, Clone)]
pub struct PatchEngine {
    plan: PatchPlan,
    report: PatchReport,
    /// Against the original's frozen pre-patch baseline.
    baseline: MultiWatch,
    /// Against the original now: the ratio patched/original around a fixed 1.0.
    vs_original: MultiWatch,
    last_original: BTreeMap<MetricKind, f64>,
    last_patched_ms: Option<i64>,
    in_no_data: bool,
    bake_started_ms: i64,
    action_started_ms: i64,
    waiting_baseline_logged: bool,
}

fn direction_of(m: &MetricSpec) -> Direction {
    m.direction
        .as_deref()
        .and_then(Direction::parse)
        .unwrap_or_else(|| m.metric.default_direction())
}

impl PatchEngine {
    /// A new engine at `now_ms`. The plan must have passed [`PatchPlan::parse`].
    pub fn new(id: &str, plan: PatchPlan, now_ms: i64) -> Result<PatchEngine, PlanError> {
        let invalid = |e: bellwether_detect::threshold::ThresholdError| PlanError::Invalid {
            source_name: plan.name.clone(),
            field: "metrics".into(),
            message: e.to_string(),
        };
        let interval_ms = plan.sample_interval.0.as_millis().max(1) as usize;
        let min_samples = (plan.baseline_window.0.as_millis() as usize / interval_ms / 2).max(1);
        let base = plan
            .metrics
            .iter()
            .filter(|m| m.compare != Compare::Original)
            .map(|m| {
                let cfg =
                    ThresholdConfig::new(plan.baseline_window.0, m.threshold_pct, direction_of(m))
                        .with_min_duration(m.duration.0)
                        .with_abs_floor(m.abs_floor.unwrap_or_else(|| m.metric.default_floor()))
                        .with_min_baseline_samples(min_samples);
                (m.metric.name().to_string(), cfg, m.weight)
            });
        let baseline = MultiWatch::new(base.collect::<Vec<_>>()).map_err(invalid)?;
        let orig: Vec<(String, ThresholdConfig, f64)> = plan
            .metrics
            .iter()
            .filter(|m| m.compare != Compare::Baseline)
            .map(|m| {
                let cfg =
                    ThresholdConfig::new(plan.baseline_window.0, m.threshold_pct, direction_of(m))
                        .with_min_duration(m.duration.0);
                (m.metric.name().to_string(), cfg, m.weight)
            })
            .collect();
        let mut vs_original = MultiWatch::new(orig.clone()).map_err(invalid)?;
        // The ratio to the original is judged against a fixed 1.0: a MultiWatch of fixed
        // baselines, built by feeding and freezing one sample of 1.0 per metric.
        for (name, _, _) in &orig {
            let _ = vs_original.observe(name, now_ms - 1, 1.0);
        }
        vs_original.freeze_all();
        let report = PatchReport {
            id: id.to_string(),
            plan_name: plan.name.clone(),
            stage: Stage::Baseline,
            started_ms: now_ms,
            finished_ms: None,
            baselines: BTreeMap::new(),
            trigger: None,
            phases: Vec::new(),
            last_severity: 0.0,
            baked_ms: 0,
            events: Vec::new(),
        };
        let mut e = PatchEngine {
            plan,
            report,
            baseline,
            vs_original,
            last_original: BTreeMap::new(),
            last_patched_ms: None,
            in_no_data: false,
            bake_started_ms: now_ms,
            action_started_ms: now_ms,
            waiting_baseline_logged: false,
        };
        let window = e.plan.baseline_window.0.as_secs_f64();
        e.event(
            now_ms,
            "baseline.started",
            format!("Collecting the original's baseline over {window:.1}s."),
            json!({ "window_seconds": window }),
        );
        Ok(e)
    }

    pub fn report(&self) -> &PatchReport {
        &self.report
    }

    pub fn stage(&self) -> Stage {
        self.report.stage
    }

    pub fn plan(&self) -> &PatchPlan {
        &self.plan
    }

    fn event(&mut self, at_ms: i64, kind: &str, message: String, figures: serde_json::Value) {
        self.report.events.push(Event {
            at_ms,
            kind: kind.into(),
            message,
            figures,
        });
    }

    fn set_stage(&mut self, stage: Stage, at_ms: i64) {
        self.report.stage = stage;
        self.action_started_ms = at_ms;
        if stage.is_final() {
            self.report.finished_ms = Some(at_ms);
        }
    }

    fn drain_ms(&self) -> u64 {
        self.plan.drain_timeout.0.as_millis() as u64
    }

    fn alert(&self, kind: &str, message: &str) -> Action {
        Action::Webhook {
            body: json!({
                "patch": self.report.id,
                "plan": self.plan.name,
                "kind": kind,
                "message": message,
                "stage": self.report.stage,
                "outcome": self.report.outcome(),
                "trigger": self.report.trigger,
                "report": self.report,
            }),
        }
    }

    /// Advances the machine by one input.
    pub fn step(&mut self, input: Input) -> Vec<Action> {
        let at = input.at_ms();
        match (self.report.stage, input) {
            (Stage::Baseline, Input::Sample(s)) if s.instance == Instance::Original => {
                for (k, v) in &s.values {
                    if let Some(v) = v.filter(|v| v.is_finite()) {
                        let _ = self.baseline.observe(k.name(), s.at_ms, v);
                    }
                }
                self.check_baseline(at)
            }
            (Stage::Baseline, Input::Tick { .. }) => self.check_baseline(at),
            (Stage::Starting, Input::Done { ok, detail, .. }) => {
                if ok {
                    self.event(
                        at,
                        "patched.started",
                        "The patched instance started.".into(),
                        detail,
                    );
                    self.set_stage(Stage::WaitingHealthy, at);
                    vec![Action::WaitPatchedHealthy {
                        timeout_ms: self.plan.health.timeout.0.as_millis() as u64,
                    }]
                } else {
                    self.fail(
                        at,
                        "patched.start_failed",
                        "The patched instance did not start.",
                        detail,
                        true,
                    )
                }
            }
            (Stage::WaitingHealthy, Input::Done { ok, detail, .. }) => {
                if ok {
                    let took = at - self.action_started_ms;
                    self.event(
                        at,
                        "patched.healthy",
                        format!("The patched instance is healthy after {took} ms."),
                        detail,
                    );
                    self.set_stage(Stage::Shifting, at);
                    let w = self.plan.shift_weight;
                    vec![Action::Route {
                        original: 100 - w,
                        patched: w,
                    }]
                } else {
                    self.fail(
                        at,
                        "patched.unhealthy",
                        "The patched instance did not become healthy.",
                        detail,
                        true,
                    )
                }
            }
            (Stage::Shifting, Input::Done { detail, .. }) => {
                let w = self.plan.shift_weight;
                self.event(
                    at,
                    "shift.routed",
                    format!("New connections shifted: {w}% to the patched instance."),
                    detail,
                );
                if w == 100 {
                    self.set_stage(Stage::ShiftDraining, at);
                    vec![Action::Drain {
                        instance: Instance::Original,
                        timeout_ms: self.drain_ms(),
                    }]
                } else {
                    self.start_bake(at);
                    vec![]
                }
            }
            (Stage::ShiftDraining, Input::Done { detail, .. }) => {
                self.event(
                    at,
                    "shift.sessions_moved",
                    "The original's sessions moved at their transaction boundaries.".into(),
                    detail,
                );
                self.start_bake(at);
                vec![]
            }
            (Stage::Baking, Input::Sample(s)) => self.watch(s),
            (Stage::RollingBack { phase }, Input::Done { ok, detail, .. }) => {
                self.next_phase(at, phase, ok, detail, true)
            }
            (Stage::Promoting { phase }, Input::Done { ok, detail, .. }) => {
                self.next_phase(at, phase, ok, detail, false)
            }
            _ => vec![],
        }
    }

    fn check_baseline(&mut self, at: i64) -> Vec<Action> {
        let window_ms = self.plan.baseline_window.0.as_millis() as i64;
        if at - self.report.started_ms < window_ms {
            return vec![];
        }
        let missing: Vec<String> = self
            .plan
            .metrics
            .iter()
            .filter(|m| m.compare != Compare::Original)
            .filter(|m| {
                self.baseline
                    .watch(m.metric.name())
                    .and_then(ThresholdWatch::baseline)
                    .is_none()
            })
            .map(|m| m.metric.name().to_string())
            .collect();
        if !missing.is_empty() {
            if at - self.report.started_ms >= 3 * window_ms {
                let msg = format!(
                    "No baseline for {}: the original had no data; nothing was changed.",
                    missing.join(", ")
                );
                return self.fail(
                    at,
                    "baseline.no_data",
                    &msg,
                    json!({ "missing": missing }),
                    false,
                );
            }
            if !self.waiting_baseline_logged {
                self.waiting_baseline_logged = true;
                let msg = format!(
                    "Waiting for data on {} before patching.",
                    missing.join(", ")
                );
                self.event(
                    at,
                    "baseline.waiting",
                    msg.clone(),
                    json!({ "missing": missing }),
                );
                return vec![self.alert("no_data", &msg)];
            }
            return vec![];
        }
        self.baseline.freeze_all();
        let mut figures = serde_json::Map::new();
        for m in &self.plan.metrics {
            if let Some(b) = self
                .baseline
                .watch(m.metric.name())
                .and_then(ThresholdWatch::baseline)
            {
                self.report.baselines.insert(m.metric.name().into(), b);
                figures.insert(m.metric.name().into(), json!(b));
            }
        }
        self.event(
            at,
            "baseline.captured",
            "The original's baseline is fixed; starting the patched instance.".into(),
            serde_json::Value::Object(figures),
        );
        self.set_stage(Stage::Starting, at);
        vec![Action::StartPatched]
    }

    fn start_bake(&mut self, at: i64) {
        self.set_stage(Stage::Baking, at);
        self.bake_started_ms = at;
        self.last_patched_ms = None;
        let bake = self.plan.bake_time.0.as_secs_f64();
        self.event(
            at,
            "bake.started",
            format!("Watching the patched instance for {bake:.1}s of data."),
            json!({ "bake_seconds": bake }),
        );
    }

    fn watch(&mut self, s: Sample) -> Vec<Action> {
        let at = s.at_ms;
        if s.instance == Instance::Original {
            for (k, v) in &s.values {
                match v.filter(|v| v.is_finite()) {
                    Some(v) => self.last_original.insert(*k, v),
                    None => self.last_original.remove(k),
                };
            }
            return vec![];
        }
        let missing: Vec<&'static str> = self
            .plan
            .metrics
            .iter()
            .filter(|m| {
                !s.values
                    .get(&m.metric)
                    .copied()
                    .flatten()
                    .is_some_and(f64::is_finite)
            })
            .map(|m| m.metric.name())
            .collect();
        let mut actions = Vec::new();
        if !missing.is_empty() {
            // The first intervals after the shift straddle it (rates need two samples of the
            // new instance): no bake time, but no alert either.
            let interval = self.plan.sample_interval.0.as_millis() as i64;
            if !self.in_no_data && at - self.bake_started_ms <= 2 * interval {
                self.last_patched_ms = Some(at);
                return actions;
            }
            // Never act on no data: the bake clock stops and an alert goes out, once per gap.
            if !self.in_no_data {
                self.in_no_data = true;
                let msg = format!(
                    "No data for {}; the patch is paused (neither promoted nor rolled back).",
                    missing.join(", ")
                );
                self.event(
                    at,
                    "watch.no_data",
                    msg.clone(),
                    json!({ "missing": missing }),
                );
                actions.push(self.alert("no_data", &msg));
            }
            self.last_patched_ms = Some(at);
            return actions;
        }
        if self.in_no_data {
            self.in_no_data = false;
            self.event(
                at,
                "watch.data_back",
                "Data is back; the bake clock runs again.".into(),
                json!({}),
            );
        }
        let interval = self.plan.sample_interval.0.as_millis() as i64;
        if let Some(prev) = self.last_patched_ms {
            self.report.baked_ms += (at - prev).clamp(0, 2 * interval);
        }
        self.last_patched_ms = Some(at);
        let mut critical: Option<String> = None;
        for m in &self.plan.metrics {
            let Some(v) = s.values.get(&m.metric).copied().flatten() else {
                continue;
            };
            if m.compare != Compare::Original {
                if let Some(Ok(o)) = self.baseline.observe(m.metric.name(), at, v) {
                    if m.critical && o.state.is_breached() {
                        critical = Some(m.metric.name().into());
                    }
                }
            }
            if m.compare != Compare::Baseline {
                if let Some(&orig) = self.last_original.get(&m.metric) {
                    let floor = m.abs_floor.unwrap_or_else(|| m.metric.default_floor());
                    let ratio = (v.max(floor)) / orig.max(floor);
                    if let Some(Ok(o)) = self.vs_original.observe(m.metric.name(), at, ratio) {
                        if m.critical && o.state.is_breached() {
                            critical = Some(m.metric.name().into());
                        }
                    }
                }
            }
        }
        let against_baseline = self.baseline.severity();
        let against_original = self.vs_original.severity();
        let (sev, against): (Severity, &str) = if against_original.score > against_baseline.score {
            (against_original, "original")
        } else {
            (against_baseline, "baseline")
        };
        self.report.last_severity = sev.score;
        if sev.score >= self.plan.severity_threshold || critical.is_some() {
            let top = sev.reasons.first().cloned();
            let metric = critical
                .clone()
                .or_else(|| top.as_ref().map(|r| r.metric.clone()))
                .unwrap_or_default();
            let reason = top
                .filter(|r| r.metric == metric)
                .or_else(|| sev.reasons.iter().find(|r| r.metric == metric).cloned());
            let trigger = Trigger {
                metric: metric.clone(),
                against: against.to_string(),
                value: reason.as_ref().map_or(f64::NAN, |r| r.value),
                baseline: reason.as_ref().map_or(f64::NAN, |r| r.baseline),
                deviation: reason.as_ref().map_or(f64::NAN, |r| r.deviation),
                for_ms: reason.as_ref().map_or(0, |r| r.for_ms),
                severity_score: sev.score,
                reasons: sev.reasons.iter().map(ToString::to_string).collect(),
            };
            let msg =
                format!(
                "Rolling back: severity {:.2} ≥ {:.2}, led by {metric} against the {against}{}.",
                sev.score,
                self.plan.severity_threshold,
                if critical.is_some() { " (critical)" } else { "" }
            );
            self.report.trigger = Some(trigger.clone());
            self.event(
                at,
                "rollback.triggered",
                msg.clone(),
                serde_json::to_value(&trigger).unwrap_or_default(),
            );
            self.set_stage(Stage::RollingBack { phase: 1 }, at);
            actions.push(self.alert("rollback", &msg));
            actions.push(Action::Route {
                original: 100,
                patched: 0,
            });
            return actions;
        }
        if self.report.baked_ms >= self.plan.bake_time.0.as_millis() as i64 {
            let msg = format!(
                "Bake passed cleanly ({:.1}s, last severity {:.2}); promoting.",
                self.report.baked_ms as f64 / 1000.0,
                sev.score
            );
            self.event(
                at,
                "promote.triggered",
                msg,
                json!({ "baked_ms": self.report.baked_ms, "severity": sev.score }),
            );
            self.set_stage(Stage::Promoting { phase: 1 }, at);
            actions.push(Action::Route {
                original: 0,
                patched: 100,
            });
        }
        actions
    }

    fn next_phase(
        &mut self,
        at: i64,
        phase: u8,
        ok: bool,
        detail: serde_json::Value,
        rollback: bool,
    ) -> Vec<Action> {
        let (kind, names) = if rollback {
            ("rollback", ROLLBACK_PHASES)
        } else {
            ("promote", PROMOTE_PHASES)
        };
        let took = at - self.action_started_ms;
        let name = names[usize::from(phase.clamp(1, 4)) - 1];
        self.report.phases.push(PhaseTiming {
            kind: kind.into(),
            phase,
            name: name.into(),
            started_ms: self.action_started_ms,
            took_ms: took,
            ok,
            detail: detail.clone(),
        });
        let mut figures = json!({ "phase": phase, "took_ms": took, "ok": ok });
        figures["detail"] = detail;
        let verdict = if ok { "done" } else { "failed, continuing" };
        self.event(
            at,
            &format!("{kind}.phase{phase}"),
            format!("Phase {phase}: {name}: {verdict} in {took} ms."),
            figures,
        );
        let (leaving, staying) = if rollback {
            (Instance::Patched, Instance::Original)
        } else {
            (Instance::Original, Instance::Patched)
        };
        let next = match phase {
            1 => Action::Drain {
                instance: leaving,
                timeout_ms: self.drain_ms(),
            },
            2 => Action::Stop { instance: leaving },
            3 => Action::ServeOnly { instance: staying },
            _ => {
                let total: i64 = self
                    .report
                    .phases
                    .iter()
                    .filter(|p| p.kind == kind)
                    .map(|p| p.took_ms)
                    .sum();
                let (stage, msg) = if rollback {
                    (
                        Stage::RolledBack,
                        format!("Rolled back in {total} ms; the original serves everything."),
                    )
                } else {
                    (
                        Stage::Promoted,
                        format!("Promoted in {total} ms; the patched instance serves everything."),
                    )
                };
                self.set_stage(stage, at);
                self.event(
                    at,
                    if rollback {
                        "rollback.finished"
                    } else {
                        "promote.finished"
                    },
                    msg.clone(),
                    json!({ "total_ms": total }),
                );
                return vec![self.alert(if rollback { "rolled_back" } else { "promoted" }, &msg)];
            }
        };
        let stage = if rollback {
            Stage::RollingBack { phase: phase + 1 }
        } else {
            Stage::Promoting { phase: phase + 1 }
        };
        self.set_stage(stage, at);
        vec![next]
    }

    fn fail(
        &mut self,
        at: i64,
        kind: &str,
        message: &str,
        detail: serde_json::Value,
        stop_patched: bool,
    ) -> Vec<Action> {
        self.event(at, kind, message.into(), detail);
        self.set_stage(Stage::Failed, at);
        let mut actions = vec![self.alert("failed", message)];
        if stop_patched {
            actions.push(Action::Stop {
                instance: Instance::Patched,
            });
        }
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAN: &str = r#"
name: pg-15-minor
proxy: { listen: "127.0.0.1:6432" }
original: { address: "127.0.0.1:5432", pid: 42 }
patched:
  address: "127.0.0.1:5433"
  start: ["pg_ctl", "start"]
  stop: ["pg_ctl", "stop"]
metrics:
  - { metric: latency_p99, threshold_pct: 50, duration: 2s, weight: 2 }
  - { metric: error_rate, threshold_pct: 100, duration: 1s }
sample_interval: 1s
baseline_window: 5s
bake_time: 10s
drain_timeout: 3s
severity_threshold: 0.3
"#;

    fn sample(at_ms: i64, instance: Instance, p99: Option<f64>, err: Option<f64>) -> Input {
        let mut values = BTreeMap::new();
        values.insert(MetricKind::LatencyP99, p99);
        values.insert(MetricKind::ErrorRate, err);
        Input::Sample(Sample {
            at_ms,
            instance,
            values,
        })
    }

    fn done(at_ms: i64) -> Input {
        Input::Done {
            at_ms,
            ok: true,
            detail: json!({}),
        }
    }

    /// Runs baseline, start, health and shift; returns the engine baking at t = 9 s.
    fn baked_engine() -> PatchEngine {
        let plan = PatchPlan::parse("plan.yaml", PLAN).unwrap();
        let mut e = PatchEngine::new("p1", plan, 0).unwrap();
        for t in 0..5 {
            assert!(e
                .step(sample(t * 1000, Instance::Original, Some(0.002), Some(0.0)))
                .is_empty());
        }
        assert_eq!(
            e.step(sample(5000, Instance::Original, Some(0.002), Some(0.0))),
            vec![Action::StartPatched]
        );
        assert_eq!(e.report().baselines["latency_p99"], 0.002);
        assert!(matches!(
            e.step(done(6000))[..],
            [Action::WaitPatchedHealthy { .. }]
        ));
        assert_eq!(
            e.step(done(7000)),
            vec![Action::Route {
                original: 0,
                patched: 100
            }]
        );
        assert_eq!(
            e.step(done(7100)),
            vec![Action::Drain {
                instance: Instance::Original,
                timeout_ms: 3000
            }]
        );
        assert!(e.step(done(8000)).is_empty());
        assert_eq!(e.stage(), Stage::Baking);
        e
    }

    #[test]
    fn latency_breach_rolls_back_in_four_timed_phases() {
        let mut e = baked_engine();
        // Right after the shift the new instance has no rates yet: no alert, no bake time.
        assert!(e
            .step(sample(8500, Instance::Patched, None, None))
            .is_empty());
        assert_eq!(e.report().baked_ms, 0);
        assert!(e
            .step(sample(9000, Instance::Patched, Some(0.0021), Some(0.0)))
            .is_empty());
        // Latency triples; pending for 2 s, then breached.
        assert!(e
            .step(sample(10_000, Instance::Patched, Some(0.006), Some(0.0)))
            .is_empty());
        assert!(e
            .step(sample(11_000, Instance::Patched, Some(0.006), Some(0.0)))
            .is_empty());
        let a = e.step(sample(12_000, Instance::Patched, Some(0.006), Some(0.0)));
        assert!(matches!(a[0], Action::Webhook { .. }));
        assert_eq!(
            a[1],
            Action::Route {
                original: 100,
                patched: 0
            }
        );
        let t = e.report().trigger.clone().unwrap();
        assert_eq!(
            (t.metric.as_str(), t.against.as_str()),
            ("latency_p99", "baseline")
        );
        assert!((t.deviation - 2.0).abs() < 1e-9, "{t:?}");
        assert_eq!(
            e.step(done(12_050)),
            vec![Action::Drain {
                instance: Instance::Patched,
                timeout_ms: 3000
            }]
        );
        assert_eq!(
            e.step(done(13_000)),
            vec![Action::Stop {
                instance: Instance::Patched
            }]
        );
        assert_eq!(
            e.step(done(13_500)),
            vec![Action::ServeOnly {
                instance: Instance::Original
            }]
        );
        let a = e.step(done(13_510));
        assert!(matches!(a[..], [Action::Webhook { .. }]));
        assert_eq!(e.stage(), Stage::RolledBack);
        let kinds: Vec<&str> = e
            .report()
            .events
            .iter()
            .map(|ev| ev.kind.as_str())
            .collect();
        assert_eq!(
            kinds,
            [
                "baseline.started",
                "baseline.captured",
                "patched.started",
                "patched.healthy",
                "shift.routed",
                "shift.sessions_moved",
                "bake.started",
                "rollback.triggered",
                "rollback.phase1",
                "rollback.phase2",
                "rollback.phase3",
                "rollback.phase4",
                "rollback.finished"
            ]
        );
        let took: Vec<i64> = e.report().phases.iter().map(|p| p.took_ms).collect();
        assert_eq!(took, [50, 950, 500, 10]);
    }

    #[test]
    fn clean_bake_promotes_and_no_data_pauses() {
        let mut e = baked_engine();
        let mut t = 9000;
        for _ in 0..6 {
            assert!(e
                .step(sample(t, Instance::Patched, Some(0.002), Some(0.0)))
                .is_empty());
            t += 1000;
        }
        // A gap without queries: paused, alerted once, the bake clock does not move.
        let baked = e.report().baked_ms;
        let a = e.step(sample(t, Instance::Patched, None, Some(0.0)));
        assert!(matches!(a[..], [Action::Webhook { .. }]));
        assert!(e
            .step(sample(t + 1000, Instance::Patched, None, None))
            .is_empty());
        assert_eq!(e.report().baked_ms, baked);
        t += 2000;
        let mut actions = vec![];
        while actions.is_empty() {
            actions = e.step(sample(t, Instance::Patched, Some(0.002), Some(0.0)));
            t += 1000;
            assert!(t < 30_000);
        }
        assert_eq!(
            actions,
            vec![Action::Route {
                original: 0,
                patched: 100
            }]
        );
        assert_eq!(
            e.step(done(t)),
            vec![Action::Drain {
                instance: Instance::Original,
                timeout_ms: 3000
            }]
        );
        assert_eq!(
            e.step(done(t + 1)),
            vec![Action::Stop {
                instance: Instance::Original
            }]
        );
        assert_eq!(
            e.step(done(t + 2)),
            vec![Action::ServeOnly {
                instance: Instance::Patched
            }]
        );
        e.step(done(t + 3));
        assert_eq!(e.stage(), Stage::Promoted);
        assert!(e
            .report()
            .events
            .iter()
            .any(|ev| ev.kind == "watch.no_data"));
    }

    #[test]
    fn no_baseline_data_fails_without_touching_anything() {
        let plan = PatchPlan::parse("plan.yaml", PLAN).unwrap();
        let mut e = PatchEngine::new("p1", plan, 0).unwrap();
        let a = e.step(Input::Tick { at_ms: 6000 });
        assert!(matches!(a[..], [Action::Webhook { .. }]));
        let a = e.step(Input::Tick { at_ms: 15_000 });
        assert_eq!(e.stage(), Stage::Failed);
        assert!(
            a.iter().all(|a| matches!(a, Action::Webhook { .. })),
            "{a:?}"
        );
    }

    #[test]
    fn plan_errors_name_line_column_or_field() {
        let err = PatchPlan::parse("p.yaml", "name: x\nproxy: { listen: 1 }\nbake_time: soon\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("p.yaml: line "), "{err}");
        let bad = PLAN.replace("pid: 42", "pid: 42, pidfile: /x");
        let err = PatchPlan::parse("p.yaml", &bad).unwrap_err().to_string();
        assert_eq!(
            err,
            "p.yaml: original: give exactly one of `pid` and `pidfile`"
        );
        let bad = PLAN.replace("metric: error_rate", "metric: latency_p99");
        assert!(PatchPlan::parse("p.yaml", &bad)
            .unwrap_err()
            .to_string()
            .contains("listed twice"));
        let bad = PLAN.replace("metric: error_rate", "metric: happiness");
        let err = PatchPlan::parse("p.yaml", &bad).unwrap_err().to_string();
        assert!(
            err.contains("line 11, column 15: metrics[1].metric") && err.contains("happiness"),
            "{err}"
        );
    }

    #[test]
    fn comparison_with_the_original_catches_a_shared_slowdown_only_on_the_patched_side() {
        let text = PLAN
            .replace(
                "duration: 2s, weight: 2 }",
                "duration: 2s, weight: 2, compare: original }",
            )
            .replace("bake_time: 10s", "bake_time: 60s\nshift_weight: 50");
        let plan = PatchPlan::parse("plan.yaml", &text).unwrap();
        let mut e = PatchEngine::new("p2", plan, 0).unwrap();
        for t in 0..=5 {
            e.step(sample(t * 1000, Instance::Original, Some(0.002), Some(0.0)));
        }
        e.step(done(6000));
        e.step(done(7000));
        assert!(
            e.step(done(7100)).is_empty(),
            "a partial shift drains nothing"
        );
        let mut t = 8000;
        let mut rolled = false;
        for _ in 0..6 {
            e.step(sample(t, Instance::Original, Some(0.010), Some(0.0)));
            let a = e.step(sample(t, Instance::Patched, Some(0.011), Some(0.0)));
            rolled |= a.contains(&Action::Route {
                original: 100,
                patched: 0,
            });
            t += 1000;
        }
        assert!(!rolled, "both slowed alike: not the patch's fault");
        for _ in 0..4 {
            e.step(sample(t, Instance::Original, Some(0.010), Some(0.0)));
            let a = e.step(sample(t, Instance::Patched, Some(0.030), Some(0.0)));
            rolled |= a.contains(&Action::Route {
                original: 100,
                patched: 0,
            });
            t += 1000;
        }
        assert!(rolled);
        assert_eq!(e.report().trigger.as_ref().unwrap().against, "original");
    }

    proptest::proptest! {
        #[test]
        fn any_input_sequence_keeps_the_machine_sound(
            inputs in proptest::collection::vec((0u8..4, proptest::option::of(0.0f64..1.0), proptest::bool::ANY), 0..80)
        ) {
            let plan = PatchPlan::parse("plan.yaml", PLAN).unwrap();
            let mut e = PatchEngine::new("p", plan, 0).unwrap();
            let mut t = 0;
            for (kind, v, ok) in inputs {
                t += 500;
                let input = match kind {
                    0 => Input::Tick { at_ms: t },
                    1 => sample(t, Instance::Original, v, Some(0.0)),
                    2 => sample(t, Instance::Patched, v, v),
                    _ => Input::Done { at_ms: t, ok, detail: json!({}) },
                };
                let _ = e.step(input);
                let r = e.report();
                proptest::prop_assert!((0.0..=1.0).contains(&r.last_severity));
                proptest::prop_assert!(r.phases.len() <= 4);
            }
        }
    }
}
