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

/// Why a plan could not be used: always with the file, the line and column, and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: line {line}, column {column}: {}", field_and(.field, .message))]
pub struct PlanError {
    pub file: String,
    /// 1-based.
    pub line: usize,
    /// 1-based.
    pub column: usize,
    /// The field's path (`metrics[0].metric`); empty only for a syntax error before the first
    /// key.
    pub field: String,
    pub message: String,
}

fn field_and(field: &str, message: &str) -> String {
    if field.is_empty() {
        message.to_string()
    } else {
        format!("{field}: {message}")
    }
}

/// The largest PID Linux hands out (`PID_MAX_LIMIT`, 2^22).
pub const PID_MAX: u32 = 4_194_304;

/// Checks that `pid` names one process that may be signalled: not 0 (the caller's process
/// group), not 1 (init), not above [`PID_MAX`] (as a signed `pid_t` a value past `i32::MAX`
/// is negative and names a process group).
pub fn check_pid(pid: u32) -> Result<i32, String> {
    match pid {
        0 => Err("0 is not one process: kill(0) signals the whole process group".into()),
        1 => Err("1 is init, which a patch never stops".into()),
        p if p > PID_MAX => Err(format!("{p} is above the largest PID, {PID_MAX}")),
        p => i32::try_from(p).map_err(|_| format!("{p} is not a PID")),
    }
}

/// What a plan's `name` and the instances' names may be: 1 to 64 letters, digits, `-`, `_`
/// and `.`, starting with a letter or digit. The plan's name starts the patch's default ID,
/// which names files in the state directory; instance names are the proxy's backend names.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a name: 1 to 64 letters, digits, `-`, `_` and `.`, starting with a letter or digit"
        ))
    }
}

/// Field checks, run inside the deserialiser so that an error has the value's line, column
/// and path.
mod field {
    use super::*;
    use serde::de::Error as _;
    use serde::Deserializer;

    fn check<'de, D: Deserializer<'de>, T>(
        v: T,
        f: impl FnOnce(&T) -> Result<(), String>,
    ) -> Result<T, D::Error> {
        f(&v).map_err(D::Error::custom)?;
        Ok(v)
    }

    pub fn name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        check::<D, _>(String::deserialize(d)?, |n| check_name(n))
    }

    pub fn host_port<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        check::<D, _>(String::deserialize(d)?, |a| {
            let ok = a
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if ok {
                Ok(())
            } else {
                Err(format!("`{a}` is not HOST:PORT"))
            }
        })
    }

    pub fn opt_host_port<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        host_port(d).map(Some)
    }

    pub fn postgres_or_tcp<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        check::<D, _>(String::deserialize(d)?, |p| {
            if ["postgres", "tcp"].contains(&p.as_str()) {
                Ok(())
            } else {
                Err(format!("`{p}` is not postgres or tcp"))
            }
        })
    }

    pub fn pid<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        let p = u32::deserialize(d)?;
        check_pid(p).map_err(|e| {
            D::Error::custom(format!(
                "{e}; give the PID of the running original (2 to {PID_MAX})"
            ))
        })?;
        Ok(Some(p))
    }

    pub fn path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        check::<D, _>(String::deserialize(d)?, |p| {
            if p.trim().is_empty() {
                Err("the path is empty".into())
            } else {
                Ok(())
            }
        })
        .map(Some)
    }

    fn check_argv(a: &[String]) -> Result<(), String> {
        match a.first() {
            None => Err("the argv is empty".into()),
            Some(p) if p.trim().is_empty() => Err("the program (argv[0]) is empty".into()),
            Some(_) => Ok(()),
        }
    }

    pub fn argv<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        check::<D, _>(Vec::<String>::deserialize(d)?, |a| check_argv(a))
    }

    pub fn opt_argv<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
        argv(d).map(Some)
    }

    fn non_negative(what: &str, v: f64) -> Result<(), String> {
        if v.is_finite() && v >= 0.0 {
            Ok(())
        } else {
            Err(format!("{what} {v} must be a number ≥ 0"))
        }
    }

    pub fn threshold_pct<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        check::<D, _>(f64::deserialize(d)?, |v| non_negative("threshold_pct", *v))
    }

    pub fn weight<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        check::<D, _>(f64::deserialize(d)?, |v| non_negative("weight", *v))
    }

    pub fn abs_floor<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        check::<D, _>(f64::deserialize(d)?, |v| non_negative("abs_floor", *v)).map(Some)
    }

    pub fn direction<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        check::<D, _>(String::deserialize(d)?, |v| {
            Direction::parse(v)
                .map(|_| ())
                .ok_or_else(|| format!("direction `{v}` is not increase, decrease or either"))
        })
        .map(Some)
    }

    pub fn shift_weight<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        check::<D, _>(u32::deserialize(d)?, |w| {
            if (1..=100).contains(w) {
                Ok(())
            } else {
                Err(format!("{w} is not in 1..=100"))
            }
        })
    }

    pub fn rise<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        check::<D, _>(u32::deserialize(d)?, |r| {
            if *r >= 1 {
                Ok(())
            } else {
                Err("rise must be at least 1".into())
            }
        })
    }

    pub fn severity<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        check::<D, _>(f64::deserialize(d)?, |s| {
            if *s > 0.0 && *s <= 1.0 {
                Ok(())
            } else {
                Err(format!("{s} is not in (0, 1]"))
            }
        })
    }

    pub fn sample_interval<'de, D: Deserializer<'de>>(d: D) -> Result<Dur, D::Error> {
        check::<D, _>(Dur::deserialize(d)?, |s| {
            if s.0 >= Duration::from_millis(50) {
                Ok(())
            } else {
                Err("must be at least 50ms".into())
            }
        })
    }

    pub fn webhook<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        check::<D, _>(String::deserialize(d)?, |w| {
            if w.starts_with("http://") && w.len() > "http://".len() {
                Ok(())
            } else {
                Err(format!("`{w}` is not an http:// URL"))
            }
        })
        .map(Some)
    }

    pub fn alerts<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<crate::alerts::AlertRule>, D::Error> {
        check::<D, _>(Vec::<crate::alerts::AlertRule>::deserialize(d)?, |rules| {
            crate::alerts::check_rules(rules)
        })
    }

    pub fn metrics<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<MetricSpec>, D::Error> {
        check::<D, _>(Vec::<MetricSpec>::deserialize(d)?, |ms| {
            if ms.is_empty() {
                return Err("name at least one metric to watch".into());
            }
            for (i, m) in ms.iter().enumerate() {
                if let Some(j) = ms[..i].iter().position(|o| o.metric == m.metric) {
                    return Err(format!(
                        "{} is listed twice (metrics[{j}] and metrics[{i}])",
                        m.metric.name()
                    ));
                }
            }
            Ok(())
        })
    }
}

/// Durations follow the one grammar of [`bellwether_model::duration`], as in a rollout plan.
pub use bellwether_model::duration::Dur;

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
    #[serde(deserialize_with = "field::threshold_pct")]
    pub threshold_pct: f64,
    #[serde(default, deserialize_with = "field::direction")]
    pub direction: Option<String>,
    /// How long the metric must stay out of the band to count.
    pub duration: Dur,
    /// Its weight in the severity score.
    #[serde(default = "one", deserialize_with = "field::weight")]
    pub weight: f64,
    #[serde(default)]
    pub compare: Compare,
    #[serde(default, deserialize_with = "field::abs_floor")]
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
    #[serde(deserialize_with = "field::host_port")]
    pub listen: String,
    #[serde(default, deserialize_with = "field::opt_host_port")]
    pub admin: Option<String>,
    /// `postgres` (default) or `tcp`.
    #[serde(default = "postgres", deserialize_with = "field::postgres_or_tcp")]
    pub protocol: String,
}

fn postgres() -> String {
    "postgres".into()
}

/// The original instance. Exactly one of `pid` and `pidfile` names its process.
#[derive(Debug, Clone, Serialize)]
pub struct OriginalSection {
    pub name: String,
    pub address: String,
    pub pid: Option<u32>,
    pub pidfile: Option<String>,
    /// How to stop the original when the patch is promoted; without it, SIGTERM to its PID.
    pub stop: Option<Vec<String>>,
    pub password: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOriginal {
    #[serde(default = "original_name", deserialize_with = "field::name")]
    name: String,
    #[serde(deserialize_with = "field::host_port")]
    address: String,
    #[serde(default, deserialize_with = "field::pid")]
    pid: Option<u32>,
    #[serde(default, deserialize_with = "field::path")]
    pidfile: Option<String>,
    #[serde(default, deserialize_with = "field::opt_argv")]
    stop: Option<Vec<String>>,
    #[serde(default)]
    password: Option<String>,
}

impl<'de> Deserialize<'de> for OriginalSection {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Checked inside the mapping's visit, so the error has the section's place.
        crate::rollout::plan::via_map::<D, RawOriginal, OriginalSection>(d)
    }
}

impl TryFrom<RawOriginal> for OriginalSection {
    type Error = String;
    fn try_from(r: RawOriginal) -> Result<Self, String> {
        if r.pid.is_some() == r.pidfile.is_some() {
            return Err("give exactly one of `pid` and `pidfile`".into());
        }
        Ok(OriginalSection {
            name: r.name,
            address: r.address,
            pid: r.pid,
            pidfile: r.pidfile,
            stop: r.stop,
            password: r.password,
        })
    }
}

fn original_name() -> String {
    "original".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchedSection {
    #[serde(default = "patched_name", deserialize_with = "field::name")]
    pub name: String,
    #[serde(deserialize_with = "field::host_port")]
    pub address: String,
    /// The argv that starts the patched instance. The started process is watched unless a
    /// pidfile names another.
    #[serde(deserialize_with = "field::argv")]
    pub start: Vec<String>,
    /// The argv that stops it.
    #[serde(deserialize_with = "field::argv")]
    pub stop: Vec<String>,
    #[serde(default, deserialize_with = "field::path")]
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
    #[serde(default = "postgres", deserialize_with = "field::postgres_or_tcp")]
    pub check: String,
    #[serde(default = "half_second")]
    pub interval: Dur,
    #[serde(default = "two", deserialize_with = "field::rise")]
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
    #[serde(deserialize_with = "field::name")]
    pub name: String,
    pub proxy: ProxySection,
    pub original: OriginalSection,
    pub patched: PatchedSection,
    #[serde(default)]
    pub health: HealthSection,
    /// Share of new connections sent to the patched instance, 1 to 100.
    #[serde(default = "hundred", deserialize_with = "field::shift_weight")]
    pub shift_weight: u32,
    #[serde(deserialize_with = "field::metrics")]
    pub metrics: Vec<MetricSpec>,
    #[serde(default = "one_second", deserialize_with = "field::sample_interval")]
    pub sample_interval: Dur,
    /// The moving-average window of the pre-patch baseline.
    pub baseline_window: Dur,
    /// How long the patch must run cleanly before it is promoted.
    pub bake_time: Dur,
    /// How long draining sessions may take before they are closed.
    pub drain_timeout: Dur,
    /// The severity score (0 to 1) at which the patch rolls back.
    #[serde(default = "default_severity", deserialize_with = "field::severity")]
    pub severity_threshold: f64,
    /// An `http://` URL that receives JSON alerts and the final report.
    #[serde(default, deserialize_with = "field::webhook")]
    pub webhook: Option<String>,
    /// Webhooks that receive this patch's events from the server, with retries and a
    /// delivery log (docs/alerts.md); `webhook` is the engine's own single POST.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "field::alerts"
    )]
    pub alerts: Vec<crate::alerts::AlertRule>,
}

impl PatchPlan {
    /// Parses and validates a plan within the limits of [`crate::yaml`]. Every error names
    /// the source, the line and column, and the field (see docs/patch.md).
    pub fn parse(source_name: &str, text: &str) -> Result<PatchPlan, PlanError> {
        let plan: PatchPlan = crate::yaml::from_str(text).map_err(|e| PlanError {
            file: source_name.into(),
            line: e.line,
            column: e.column,
            field: e.path,
            message: e.message,
        })?;
        if let Some((field, message)) = plan.cross_check() {
            let (line, column) = locate(text, field);
            return Err(PlanError {
                file: source_name.into(),
                line,
                column,
                field: field.into(),
                message,
            });
        }
        Ok(plan)
    }

    /// The checks that tie fields of different sections together: the field to point at and
    /// what is wrong.
    fn cross_check(&self) -> Option<(&'static str, String)> {
        if self.original.name == self.patched.name {
            return Some((
                "patched.name",
                format!(
                    "`{}` is also original.name; the two must differ",
                    self.patched.name
                ),
            ));
        }
        if self.baseline_window.0 < self.sample_interval.0 {
            return Some((
                "baseline_window",
                "must be at least one sample_interval".into(),
            ));
        }
        // Whatever the engine's watches would refuse is refused here, with a place.
        if let Err(e) = watches(self, 0) {
            return Some(("metrics", e.to_string()));
        }
        None
    }
}

/// Where a field of a plan that parsed is: the line and column of its value, or of the
/// nearest section that is written (a defaulted `patched.name` points at `patched`).
fn locate(text: &str, field: &str) -> (usize, usize) {
    use serde::de::IgnoredAny;
    use serde_saphyr::Spanned;
    // Unknown keys are ignored here (the plan has parsed, so there are none).
    #[derive(Deserialize)]
    struct Patched {
        #[serde(default)]
        name: Option<Spanned<IgnoredAny>>,
    }
    #[derive(Deserialize)]
    struct Top {
        #[serde(default)]
        patched: Option<Spanned<IgnoredAny>>,
        #[serde(default)]
        baseline_window: Option<Spanned<IgnoredAny>>,
        #[serde(default)]
        metrics: Option<Spanned<IgnoredAny>>,
    }
    #[derive(Deserialize)]
    struct PatchedName {
        #[serde(default)]
        patched: Option<Patched>,
    }
    let at = |s: &Option<Spanned<IgnoredAny>>| {
        s.as_ref()
            .map(|s| (s.referenced.line() as usize, s.referenced.column() as usize))
    };
    let opts = crate::yaml::options;
    let found = match field {
        "patched.name" => serde_saphyr::from_str_with_options::<PatchedName>(text, opts())
            .ok()
            .and_then(|p| p.patched)
            .and_then(|p| at(&p.name))
            .or_else(|| {
                serde_saphyr::from_str_with_options::<Top>(text, opts())
                    .ok()
                    .and_then(|t| at(&t.patched))
            }),
        _ => serde_saphyr::from_str_with_options::<Top>(text, opts())
            .ok()
            .and_then(|t| match field {
                "baseline_window" => at(&t.baseline_window),
                _ => at(&t.metrics),
            }),
    };
    let (line, column) = found.unwrap_or((1, 1));
    (line.max(1), column.max(1))
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
    /// An operator asks to stop the patch: before anything changed (the baseline) it fails
    /// without acting; while baking it rolls back in the four phases. The IO loop delivers it
    /// when no action is awaited; in another stage it changes nothing.
    Abort {
        at_ms: i64,
        reason: String,
    },
}

impl Input {
    fn at_ms(&self) -> i64 {
        match self {
            Input::Tick { at_ms } | Input::Done { at_ms, .. } | Input::Abort { at_ms, .. } => {
                *at_ms
            }
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

/// The engine's two sets of watches for a plan: against the original's pre-patch baseline,
/// and against the original now (a ratio judged around a fixed 1.0).
fn watches(
    plan: &PatchPlan,
    now_ms: i64,
) -> Result<(MultiWatch, MultiWatch), bellwether_detect::threshold::ThresholdError> {
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
    let baseline = MultiWatch::new(base.collect::<Vec<_>>())?;
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
    let mut vs_original = MultiWatch::new(orig.clone())?;
    // The ratio to the original is judged against a fixed 1.0: a MultiWatch of fixed
    // baselines, built by feeding and freezing one sample of 1.0 per metric.
    for (name, _, _) in &orig {
        let _ = vs_original.observe(name, now_ms - 1, 1.0);
    }
    vs_original.freeze_all();
    Ok((baseline, vs_original))
}

impl PatchEngine {
    /// A new engine at `now_ms`. The plan must have passed [`PatchPlan::parse`].
    pub fn new(id: &str, plan: PatchPlan, now_ms: i64) -> Result<PatchEngine, PlanError> {
        let invalid = |e: bellwether_detect::threshold::ThresholdError| PlanError {
            file: plan.name.clone(),
            line: 1,
            column: 1,
            field: "metrics".into(),
            message: e.to_string(),
        };
        let (baseline, vs_original) = watches(&plan, now_ms).map_err(invalid)?;
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
            (Stage::Baseline, Input::Abort { reason, .. }) => {
                let msg = format!("Aborted before anything changed: {reason}");
                self.fail(
                    at,
                    "patch.aborted",
                    &msg,
                    json!({ "reason": reason }),
                    false,
                )
            }
            (Stage::Baking, Input::Abort { reason, .. }) => {
                let msg = format!("Rolling back: aborted by an operator ({reason}).");
                self.event(
                    at,
                    "rollback.triggered",
                    msg.clone(),
                    json!({ "aborted": true, "reason": reason }),
                );
                self.set_stage(Stage::RollingBack { phase: 1 }, at);
                vec![
                    self.alert("rollback", &msg),
                    Action::Route {
                        original: 100,
                        patched: 0,
                    },
                ]
            }
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
                let (stage, mut msg) = if rollback {
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
                // A phase that failed (the old instance could not be stopped) is said, never
                // hidden behind the outcome.
                let failed: Vec<String> = self
                    .report
                    .phases
                    .iter()
                    .filter(|p| p.kind == kind && !p.ok)
                    .map(|p| format!("phase {} ({})", p.phase, p.name))
                    .collect();
                if !failed.is_empty() {
                    msg.push_str(&format!(
                        " But {} failed: see its detail.",
                        failed.join(" and ")
                    ));
                }
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

    /// An operator's abort while baking rolls back in the four phases; in the baseline it
    /// fails without an action; while an action is awaited it changes nothing.
    #[test]
    fn an_abort_rolls_back_while_baking_and_changes_nothing_before() {
        let mut e = baked_engine();
        let abort = |at_ms| Input::Abort {
            at_ms,
            reason: "operator".into(),
        };
        let a = e.step(abort(9500));
        assert_eq!(e.stage(), Stage::RollingBack { phase: 1 });
        assert_eq!(
            a.last(),
            Some(&Action::Route {
                original: 100,
                patched: 0
            })
        );
        for t in 0..4 {
            e.step(done(9600 + t));
        }
        assert_eq!(e.stage(), Stage::RolledBack);

        let plan = PatchPlan::parse("plan.yaml", PLAN).unwrap();
        let mut e = PatchEngine::new("p2", plan, 0).unwrap();
        let a = e.step(abort(100));
        assert_eq!(e.stage(), Stage::Failed);
        assert!(
            a.iter().all(|a| matches!(a, Action::Webhook { .. })),
            "{a:?}"
        );
        assert_eq!(e.report().events.last().unwrap().kind, "patch.aborted");

        let plan = PatchPlan::parse("plan.yaml", PLAN).unwrap();
        let mut e = PatchEngine::new("p3", plan, 0).unwrap();
        for t in 0..=5 {
            e.step(sample(t * 1000, Instance::Original, Some(0.002), Some(0.0)));
        }
        assert_eq!(e.stage(), Stage::Starting);
        assert!(e.step(abort(5500)).is_empty());
        assert_eq!(e.stage(), Stage::Starting);
    }

    /// A promotion whose stop of the original failed (a refused or failed signal) says so in
    /// its final event and alert, instead of a plain "Promoted".
    #[test]
    fn a_failed_promotion_phase_is_reported() {
        let mut e = baked_engine();
        let mut t = 9000;
        let mut actions = vec![];
        while actions.is_empty() {
            actions = e.step(sample(t, Instance::Patched, Some(0.002), Some(0.0)));
            t += 1000;
            assert!(t < 40_000);
        }
        e.step(done(t));
        assert_eq!(
            e.step(done(t + 1)),
            vec![Action::Stop {
                instance: Instance::Original
            }]
        );
        let failed = Input::Done {
            at_ms: t + 2,
            ok: false,
            detail: json!({ "error": "cannot send SIGTERM to PID 4242: ESRCH" }),
        };
        e.step(failed);
        let a = e.step(done(t + 3));
        assert_eq!(e.stage(), Stage::Promoted);
        let last = e.report().events.last().unwrap();
        assert_eq!(last.kind, "promote.finished");
        assert!(
            last.message
                .contains("But phase 3 (the original is stopped) failed"),
            "{}",
            last.message
        );
        assert!(format!("{a:?}").contains("failed"), "{a:?}");
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

    /// Every class of plan error names the file, the line and column, and the field; the
    /// place is that of the offending value (or, for a rule between fields of one section,
    /// the section's first key or `{`). Before, validation errors had no line and column,
    /// `pid: 0` (the process group) and `name: ""` were accepted.
    #[test]
    fn every_plan_error_has_file_line_column_and_field() {
        // (replace, with, field, the text the line and column point at, message part)
        let cases: &[(&str, &str, &str, &str, &str)] = &[
            (
                "pid: 42",
                "pid: 0",
                "original.pid",
                "0",
                "kill(0) signals the whole process group",
            ),
            ("pid: 42", "pid: 1", "original.pid", "1", "1 is init"),
            (
                "pid: 42",
                "pid: 4194305",
                "original.pid",
                "4194305",
                "above the largest PID",
            ),
            (
                "pid: 42",
                "pid: 4294967295",
                "original.pid",
                "4294967295",
                "above the largest PID",
            ),
            ("pid: 42", "pid: -1", "original.pid", "-1", "invalid"),
            (
                "pid: 42",
                "pid: 42, pidfile: /x",
                "original",
                "{",
                "give exactly one of `pid` and `pidfile`",
            ),
            (
                "pid: 42",
                "address: x:1",
                "original",
                "address",
                "duplicate key `address`",
            ),
            (
                "pid: 42",
                "pidfile: \"\"",
                "original.pidfile",
                "\"\"",
                "the path is empty",
            ),
            (
                "pid: 42",
                "pid: 42, stop: []",
                "original.stop",
                "[]",
                "the argv is empty",
            ),
            (
                "pid: 42",
                "pid: 42, name: \"\"",
                "original.name",
                "\"\"",
                "is not a name",
            ),
            (
                "name: pg-15-minor",
                "name: \"\"",
                "name",
                "\"\"",
                "is not a name",
            ),
            (
                "name: pg-15-minor",
                "name: ../etc",
                "name",
                "../etc",
                "is not a name",
            ),
            (
                "name: pg-15-minor",
                "name: \"a b\"",
                "name",
                "\"a b\"",
                "is not a name",
            ),
            (
                "name: pg-15-minor",
                "name: [x]",
                "name",
                "[x]",
                "invalid type",
            ),
            (
                "listen: \"127.0.0.1:6432\"",
                "listen: nohost",
                "proxy.listen",
                "nohost",
                "is not HOST:PORT",
            ),
            (
                "listen: \"127.0.0.1:6432\"",
                "listen: \"h:1\", protocol: udp",
                "proxy.protocol",
                "udp",
                "is not postgres or tcp",
            ),
            (
                "listen: \"127.0.0.1:6432\"",
                "listen: \"h:1\", admin: \"h\"",
                "proxy.admin",
                "\"h\"",
                "is not HOST:PORT",
            ),
            (
                "address: \"127.0.0.1:5433\"",
                "address: \"127.0.0.1:99999\"",
                "patched.address",
                "\"127.0.0.1:99999\"",
                "is not HOST:PORT",
            ),
            (
                "start: [\"pg_ctl\", \"start\"]",
                "start: []",
                "patched.start",
                "[]",
                "the argv is empty",
            ),
            (
                "stop: [\"pg_ctl\", \"stop\"]",
                "stop: [\"\", \"stop\"]",
                "patched.stop",
                "[",
                "argv[0]",
            ),
            (
                "address: \"127.0.0.1:5433\"",
                "address: \"127.0.0.1:5433\"\n  name: original",
                "patched.name",
                "original",
                "must differ",
            ),
            (
                "metric: error_rate",
                "metric: latency_p99",
                "metrics",
                "- {",
                "latency_p99 is listed twice",
            ),
            (
                "metric: error_rate",
                "metric: happiness",
                "metrics[1].metric",
                "happiness",
                "unknown variant `happiness`",
            ),
            (
                "threshold_pct: 50",
                "threshold_pct: -1",
                "metrics[0].threshold_pct",
                "-1",
                "threshold_pct -1",
            ),
            (
                "weight: 2 }",
                "weight: .nan }",
                "metrics[0].weight",
                ".nan",
                "weight NaN",
            ),
            (
                "duration: 2s",
                "duration: soon",
                "metrics[0].duration",
                "soon",
                "`soon` is not a duration",
            ),
            (
                "weight: 2 }",
                "weight: 2, direction: up }",
                "metrics[0].direction",
                "up",
                "direction `up`",
            ),
            (
                "weight: 2 }",
                "weight: 2, abs_floor: -1 }",
                "metrics[0].abs_floor",
                "-1",
                "abs_floor -1",
            ),
            (
                "weight: 2 }",
                "weight: 2, colour: red }",
                "metrics[0]",
                "colour",
                "unknown field `colour`",
            ),
            (
                "sample_interval: 1s",
                "sample_interval: 10ms",
                "sample_interval",
                "10ms",
                "at least 50ms",
            ),
            (
                "baseline_window: 5s",
                "baseline_window: 500ms",
                "baseline_window",
                "500ms",
                "at least one sample_interval",
            ),
            (
                "severity_threshold: 0.3",
                "severity_threshold: 0",
                "severity_threshold",
                "0",
                "not in (0, 1]",
            ),
            (
                "severity_threshold: 0.3",
                "severity_threshold: 0.3\nwebhook: ftp://x",
                "webhook",
                "ftp://x",
                "http://",
            ),
            (
                "severity_threshold: 0.3",
                "severity_threshold: 0.3\nshift_weight: 0",
                "shift_weight",
                "0",
                "1..=100",
            ),
            (
                "severity_threshold: 0.3",
                "severity_threshold: 0.3\nhealth: { rise: 0 }",
                "health.rise",
                "0",
                "at least 1",
            ),
            (
                "severity_threshold: 0.3",
                "severity_threshold: 0.3\nhealth: { check: http }",
                "health.check",
                "http",
                "postgres or tcp",
            ),
            (
                "severity_threshold: 0.3",
                "severity_threshold: 0.3\nhealth: { timeout: 1s, timeout: 2s }",
                "health",
                "timeout",
                "duplicate key `timeout`",
            ),
        ];
        let mut failures = Vec::new();
        for (from, to, field, at, want) in cases {
            assert_eq!(PLAN.matches(from).count(), 1, "{from}");
            let text = PLAN.replacen(from, to, 1);
            let e = match PatchPlan::parse("p.yaml", &text) {
                Ok(_) => {
                    failures.push(format!("{to}: accepted"));
                    continue;
                }
                Err(e) => e,
            };
            let line = text.lines().nth(e.line - 1).unwrap_or("");
            let pointed: String = line.chars().skip(e.column - 1).collect();
            let shown = e.to_string();
            let ok = e.file == "p.yaml"
                && e.field == *field
                && pointed.starts_with(at)
                && shown.starts_with(&format!(
                    "p.yaml: line {}, column {}: {field}: ",
                    e.line, e.column
                ))
                && shown.contains(want);
            if !ok {
                failures.push(format!(
                    "{to}: {shown} (field {:?}, points at {pointed:?})",
                    e.field
                ));
            }
        }
        assert!(failures.is_empty(), "\n{}", failures.join("\n"));
        // Errors with no single field still have a place and name the key.
        let e = PatchPlan::parse("p.yaml", "name: x\nproxy: { listen: 1 }\nbake_time: soon\n")
            .unwrap_err();
        assert!(e.to_string().starts_with("p.yaml: line "), "{e}");
        let e = PatchPlan::parse("p.yaml", &PLAN.replace("bake_time", "bake_tim")).unwrap_err();
        assert_eq!((e.line, e.column), (14, 1), "{e}");
        assert!(e.message.contains("unknown field `bake_tim`"), "{e}");
        let e = PatchPlan::parse("p.yaml", "name: x\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("p.yaml: line 1, column 1: missing field"),
            "{e}"
        );
        let e = PatchPlan::parse("p.yaml", "name: [x\n").unwrap_err();
        assert!(e.line >= 1 && e.column >= 1, "{e}");
    }

    #[test]
    fn pids_and_names() {
        assert!(check_pid(0).is_err());
        assert!(check_pid(1).is_err());
        assert_eq!(check_pid(2), Ok(2));
        assert_eq!(check_pid(PID_MAX), Ok(PID_MAX as i32));
        assert!(check_pid(PID_MAX + 1).is_err());
        assert!(check_pid(u32::MAX).is_err());
        for ok in ["a", "pg-15.2_minor", "0x", &"a".repeat(64)] {
            assert_eq!(check_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "-a",
            ".",
            "..",
            "a/b",
            "a b",
            "é",
            "a\n",
            &"a".repeat(65),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    proptest::proptest! {
        /// Arbitrary text and mutated plans never panic the parser, and every error has a
        /// place.
        #[test]
        fn arbitrary_text_never_panics_the_patch_parser(text in "(?s).{0,300}") {
            if let Err(e) = PatchPlan::parse("fuzz.yaml", &text) {
                proptest::prop_assert!(e.line >= 1 && e.column >= 1);
            }
        }

        #[test]
        fn mutated_plans_never_panic(pos in 0usize..600, junk in ".{0,8}") {
            let mut s = PLAN.to_string();
            let mut p = pos % (s.len() + 1);
            while !s.is_char_boundary(p) { p -= 1; }
            s.insert_str(p, &junk);
            if let Err(e) = PatchPlan::parse("fuzz.yaml", &s) {
                proptest::prop_assert!(e.line >= 1 && e.column >= 1);
                proptest::prop_assert!(e.to_string().starts_with("fuzz.yaml: line "));
            }
        }
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
