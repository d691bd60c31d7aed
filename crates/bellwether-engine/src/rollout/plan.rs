//! The rollout plan: the YAML an operator writes, parsed and validated into a typed [`Plan`].
//!
//! Parsing is one step: every section deserialises through a raw twin that is checked before
//! the typed value exists (`#[serde(try_from)]`), so a validation error carries the location
//! of the section it is about, exactly like a syntax error does. Every [`PlanError`] prints as
//! `FILE:LINE:COLUMN: PATH: MESSAGE`. The typed plan serialises back to YAML or JSON that
//! parses to the same plan, which is how a rollout's state keeps its plan.
//!
//! The field reference, with defaults and examples, is docs/rollout.md. This module never
//! reads a file: the caller hands in the text and the name to report it under.

use std::collections::BTreeMap;
use std::time::Duration;

use bellwether_detect::threshold::Direction;
use bellwether_model::{ActionSpec, DriftCategory, Finding};

use super::promql::{check_address, QueryTemplate};
use serde::{Deserialize, Deserializer, Serialize};

/// Durations (`250ms`, `2s`, `1m30s`, a bare number of seconds) follow the one grammar of
/// [`bellwether_model::duration`], described in docs/durations.md. A plan serialises them in
/// the largest exact unit (`30s`), which parses back to the same value.
pub use bellwether_model::duration::Dur;

/// Why a plan could not be used: always with the file, line and column.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct PlanError {
    pub file: String,
    /// 1-based.
    pub line: usize,
    /// 1-based.
    pub column: usize,
    /// The YAML path of the offending key where known (`risk.pilot`), then what is wrong.
    pub message: String,
}

/// Parses and validates a rollout plan. `file` is the name errors are reported under. The
/// text is read within the limits of [`crate::yaml`] (size, depth, nodes; no key twice in
/// any mapping).
pub fn parse_plan(yaml: &str, file: &str) -> Result<Plan, PlanError> {
    crate::yaml::from_str::<Plan>(yaml).map_err(|e| PlanError {
        file: file.to_string(),
        line: e.line,
        column: e.column,
        message: e.path_and_message(),
    })
}

/// Declares a validated struct: the public type serialises as is and deserialises through a
/// private raw twin with the same fields, then through `check`, so that a validation error
/// has the location of the struct in the YAML.
macro_rules! checked {
    (
        $(#[$m:meta])*
        pub struct $name:ident via $raw:ident = $rawlit:literal {
            $( $(#[$fm:meta])* pub $f:ident : $t:ty ),* $(,)?
        }
    ) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Serialize)]
        pub struct $name { $( $(#[$fm])* pub $f: $t ),* }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                via_map::<D, $raw, $name>(d)
            }
        }

        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct $raw { $( $(#[$fm])* $f: $t ),* }

        impl TryFrom<$raw> for $name {
            type Error = String;
            fn try_from(r: $raw) -> Result<Self, String> {
                let v = $name { $( $f: r.$f ),* };
                v.check()?;
                Ok(v)
            }
        }
    };
}

/// Deserialises a mapping as `R`, then converts it into `T`. The conversion runs inside the
/// YAML deserialiser's map visit, so its error gets the location and path of the mapping.
pub(crate) fn via_map<'de, D, R, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    R: Deserialize<'de>,
    T: TryFrom<R, Error = String>,
{
    struct V<R, T>(std::marker::PhantomData<(R, T)>);
    impl<'de, R: Deserialize<'de>, T: TryFrom<R, Error = String>> serde::de::Visitor<'de> for V<R, T> {
        type Value = T;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a mapping")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            let raw = R::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
            T::try_from(raw).map_err(serde::de::Error::custom)
        }
    }
    d.deserialize_map(V::<R, T>(std::marker::PhantomData))
}

/// A non-empty text; YAML numbers and booleans are taken as their text (so `version: 2`
/// works).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Text(pub String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Text;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a text, number or boolean")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Text, E> {
                if v.trim().is_empty() {
                    return Err(E::custom("must not be empty"));
                }
                Ok(Text(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Text, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Text, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Text, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Text, E> {
                self.visit_str(&v.to_string())
            }
        }
        d.deserialize_any(V)
    }
}

impl std::fmt::Display for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

checked! {
    /// A validated rollout plan. See docs/rollout.md for every field.
    pub struct Plan via RawPlan = "RawPlan" {
        /// The rollout's name, shown in status and reports.
        pub name: Text,
        pub update: Update,
        /// Which hosts the rollout covers; all hosts when absent.
        #[serde(default)]
        pub targets: Targets,
        #[serde(default)]
        pub risk: RiskPolicy,
        #[serde(default)]
        pub waves: Waves,
        /// How long every wave is watched before the next starts. Default 30s.
        #[serde(default = "default_bake")]
        pub bake: Dur,
        pub analysis: Analysis,
        #[serde(default)]
        pub rollback: RollbackPolicy,
        /// Drift-finding patterns mapped to remediation actions, first match wins.
        #[serde(default)]
        pub remediation: Vec<RemediationRule>,
        #[serde(default)]
        pub no_data: NoDataRule,
        /// Webhooks that receive this rollout's events (docs/alerts.md).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub alerts: Vec<crate::alerts::AlertRule>,
    }
}

impl Plan {
    fn check(&self) -> Result<(), String> {
        crate::alerts::check_rules(&self.alerts)?;
        if self.no_data.after.0 < self.analysis.interval.0 {
            return Err(format!(
                "no_data.after ({}ms) must be at least analysis.interval ({}ms)",
                self.no_data.after.0.as_millis(),
                self.analysis.interval.0.as_millis()
            ));
        }
        if self.bake.0 < self.analysis.interval.0 {
            return Err(format!(
                "bake ({}ms) must be at least analysis.interval ({}ms)",
                self.bake.0.as_millis(),
                self.analysis.interval.0.as_millis()
            ));
        }
        Ok(())
    }

    /// The bake time in milliseconds.
    pub fn bake_ms(&self) -> i64 {
        ms(self.bake.0)
    }

    /// The first remediation rule whose pattern matches one of `findings`, with the action it
    /// resolves to for that finding.
    pub fn remediation_for<'f>(
        &self,
        findings: &'f [Finding],
    ) -> Option<(usize, &'f Finding, ActionSpec)> {
        for (i, rule) in self.remediation.iter().enumerate() {
            for f in findings {
                if rule.pattern.matches(f) {
                    if let Ok(spec) = rule.action.resolve(f) {
                        return Some((i, f, spec));
                    }
                }
            }
        }
        None
    }
}

pub(crate) fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn default_bake() -> Dur {
    Dur(Duration::from_secs(30))
}

/// An action as written in a plan: the JSON shape of [`ActionSpec`] (`argv` with
/// `timeout_ms`, or `builtin` with its fields), where `timeout: 30s` may stand for
/// `timeout_ms`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAction {
    #[serde(default)]
    argv: Option<Vec<String>>,
    #[serde(default)]
    builtin: Option<String>,
    #[serde(default)]
    version: Option<Text>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    package: Option<String>,
    #[serde(default)]
    cpu_max: Option<String>,
    #[serde(default)]
    memory_max: Option<String>,
    #[serde(default)]
    pid: Option<u32>,
    #[serde(default)]
    pidfile: Option<String>,
    #[serde(default)]
    pids: Option<Vec<u32>>,
    #[serde(default)]
    timeout: Option<Dur>,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

impl RawAction {
    fn into_wire(self) -> Result<serde_json::Map<String, serde_json::Value>, String> {
        use serde_json::Value;
        let mut m = serde_json::Map::new();
        if let Some(a) = self.argv {
            m.insert("argv".into(), Value::from(a));
        }
        let strings = [
            ("builtin", self.builtin),
            ("version", self.version.map(|t| t.0)),
            ("path", self.path),
            ("package", self.package),
            ("cpu_max", self.cpu_max),
            ("memory_max", self.memory_max),
        ];
        for (k, v) in strings {
            if let Some(v) = v {
                m.insert(k.into(), Value::from(v));
            }
        }
        // The process built-ins' fields (`start_process`, `stop_process`, `sample_processes`).
        if let Some(p) = self.pid {
            m.insert("pid".into(), Value::from(p));
        }
        if let Some(p) = self.pidfile {
            m.insert("pidfile".into(), Value::from(p));
        }
        if let Some(p) = self.pids {
            m.insert("pids".into(), Value::from(p));
        }
        let timeout = match (self.timeout, self.timeout_ms) {
            (Some(_), Some(_)) => return Err("give `timeout` or `timeout_ms`, not both".into()),
            (Some(d), None) => Some(u64::try_from(d.0.as_millis()).unwrap_or(u64::MAX)),
            (None, t) => t,
        };
        if let Some(t) = timeout {
            m.insert("timeout_ms".into(), Value::from(t));
        }
        Ok(m)
    }
}

fn spec_from_wire(m: serde_json::Map<String, serde_json::Value>) -> Result<ActionSpec, String> {
    serde_json::from_value::<ActionSpec>(serde_json::Value::Object(m)).map_err(|e| e.to_string())
}

struct PlanAction(ActionSpec);

impl TryFrom<RawAction> for PlanAction {
    type Error = String;
    fn try_from(r: RawAction) -> Result<Self, String> {
        r.into_wire().and_then(spec_from_wire).map(PlanAction)
    }
}

fn plan_action<'de, D: Deserializer<'de>>(d: D) -> Result<ActionSpec, D::Error> {
    via_map::<D, RawAction, PlanAction>(d).map(|a| a.0)
}

/// What is rolled out, and how it is applied and reverted on one host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Update {
    pub name: Text,
    pub version: Text,
    #[serde(deserialize_with = "plan_action")]
    pub apply: ActionSpec,
    #[serde(deserialize_with = "plan_action")]
    pub revert: ActionSpec,
    /// The packages the updated software depends on (`[libc6, python3]`): the risk model
    /// reads each host's version of each as a feature, and hosts sharing one are peers in the
    /// direct evidence. Names of installed packages as dpkg or rpm list them, each once.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "package_names"
    )]
    pub depends_on: Vec<PackageName>,
}

/// A package name: 1 to 128 letters, digits and `+ - . _`, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct PackageName(pub String);

impl PackageName {
    pub fn parse(s: &str) -> Result<PackageName, String> {
        let ok = !s.is_empty()
            && s.len() <= 128
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.' | '_'));
        if ok {
            Ok(PackageName(s.to_string()))
        } else {
            Err(format!(
                "package name {s:?} is not 1 to 128 letters, digits and `+ - . _` starting with a letter or digit"
            ))
        }
    }
}

impl<'de> Deserialize<'de> for PackageName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        PackageName::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// At most 64 package names, none twice.
fn package_names<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PackageName>, D::Error> {
    let v = Vec::<PackageName>::deserialize(d)?;
    if v.len() > 64 {
        return Err(serde::de::Error::custom(format!(
            "{} packages: at most 64",
            v.len()
        )));
    }
    let mut seen = std::collections::BTreeSet::new();
    for p in &v {
        if !seen.insert(p) {
            return Err(serde::de::Error::custom(format!(
                "package {} is listed twice",
                p.0
            )));
        }
    }
    Ok(v)
}

/// Which hosts a rollout covers: every label must match and every predicate hold.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Targets {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default, rename = "where")]
    pub predicates: Vec<Predicate>,
}

impl Targets {
    /// Whether a host with these labels and profile attributes is a target.
    pub fn matches(
        &self,
        labels: &BTreeMap<String, String>,
        attributes: &BTreeMap<String, String>,
    ) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self
                .predicates
                .iter()
                .all(|p| p.holds(attributes.get(&p.attribute.0).map(String::as_str)))
    }
}

/// A comparison applied to a predicate's attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Eq,
    Ne,
    In,
    NotIn,
    Lt,
    Le,
    Gt,
    Ge,
    Exists,
    Glob,
}

checked! {
    /// One predicate over a host's profile attributes (`os.version_id`, `package:libssl3`,
    /// `metric:disk_free_ratio`, …).
    pub struct Predicate via RawPredicate = "RawPredicate" {
        pub attribute: Text,
        pub op: Op,
        /// The operand of eq, ne, lt, le, gt, ge and glob.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub value: Option<Text>,
        /// The operand of in and not_in.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub values: Option<Vec<Text>>,
    }
}

impl Predicate {
    fn check(&self) -> Result<(), String> {
        match self.op {
            Op::Exists => {
                if self.value.is_some() || self.values.is_some() {
                    return Err("op exists takes neither `value` nor `values`".into());
                }
            }
            Op::In | Op::NotIn => {
                if self.value.is_some() || self.values.as_ref().is_none_or(Vec::is_empty) {
                    return Err(format!(
                        "op {:?} needs a non-empty `values` list and no `value`",
                        self.op
                    )
                    .to_lowercase());
                }
            }
            Op::Lt | Op::Le | Op::Gt | Op::Ge => {
                let v = self.value.as_ref().ok_or("this op needs `value`")?;
                if v.0.trim().parse::<f64>().map_or(true, |x| !x.is_finite()) {
                    return Err(format!(
                        "value {:?} must be a number for a numeric comparison",
                        v.0
                    ));
                }
                if self.values.is_some() {
                    return Err("this op takes `value`, not `values`".into());
                }
            }
            Op::Eq | Op::Ne | Op::Glob => {
                if self.value.is_none() || self.values.is_some() {
                    return Err("this op needs `value` and no `values`".into());
                }
            }
        }
        Ok(())
    }

    /// Whether the predicate holds for the attribute's value (`None` when the host lacks it).
    pub fn holds(&self, actual: Option<&str>) -> bool {
        let value = self.value.as_ref().map(|t| t.0.as_str()).unwrap_or("");
        let num = |s: &str| s.trim().parse::<f64>().ok();
        match (self.op, actual) {
            (Op::Exists, a) => a.is_some(),
            (Op::Ne, None) | (Op::NotIn, None) => true,
            (_, None) => false,
            (Op::Eq, Some(a)) => a == value,
            (Op::Ne, Some(a)) => a != value,
            (Op::In, Some(a)) => self.values.iter().flatten().any(|v| v.0 == a),
            (Op::NotIn, Some(a)) => !self.values.iter().flatten().any(|v| v.0 == a),
            (Op::Glob, Some(a)) => glob(value, a),
            (op, Some(a)) => match (num(a), num(value)) {
                (Some(a), Some(v)) => match op {
                    Op::Lt => a < v,
                    Op::Le => a <= v,
                    Op::Gt => a > v,
                    _ => a >= v,
                },
                _ => false,
            },
        }
    }
}

/// Matches `text` against `pattern`, where `*` stands for any run of characters.
pub fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// What happens to high-risk hosts (`p ≥ risk.high`), which never join the pilot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum HighRiskPolicy {
    /// Held back: not updated by this rollout.
    #[default]
    Defer,
    /// Remediated at the start where a remediation rule matches their drift; a host that is
    /// remediated successfully joins the last wave, the others are held back.
    RemediateThenDefer,
    /// Updated in the last wave, after every other host.
    IncludeLast,
}

checked! {
    /// Pilot size bounds.
    pub struct PilotSize via RawPilotSize = "RawPilotSize" {
        pub min: u32,
        pub max: u32,
    }
}

impl PilotSize {
    fn check(&self) -> Result<(), String> {
        if self.min == 0 {
            return Err("min must be at least 1".into());
        }
        if self.max < self.min {
            return Err(format!("max {} is below min {}", self.max, self.min));
        }
        Ok(())
    }
}

checked! {
    /// The risk bands and how the pilot is drawn from them.
    pub struct RiskPolicy via RawRiskPolicy = "RawRiskPolicy" {
        /// `p < low` is the low band. Default 0.2.
        #[serde(default = "d_low")]
        pub low: f64,
        /// `p ≥ high` is the high band. Default 0.5.
        #[serde(default = "d_high")]
        pub high: f64,
        /// Share of the pilot drawn from the moderate band. Default 0.25.
        #[serde(default = "d_moderate_share")]
        pub moderate_share: f64,
        /// Default min 2, max 5.
        #[serde(default = "d_pilot")]
        pub pilot: PilotSize,
        #[serde(default)]
        pub high_risk: HighRiskPolicy,
    }
}

fn d_low() -> f64 {
    0.2
}
fn d_high() -> f64 {
    0.5
}
fn d_moderate_share() -> f64 {
    0.25
}
fn d_pilot() -> PilotSize {
    PilotSize { min: 2, max: 5 }
}

impl Default for RiskPolicy {
    fn default() -> Self {
        RiskPolicy {
            low: d_low(),
            high: d_high(),
            moderate_share: d_moderate_share(),
            pilot: d_pilot(),
            high_risk: HighRiskPolicy::Defer,
        }
    }
}

fn unit(name: &str, v: f64) -> Result<(), String> {
    if v.is_finite() && (0.0..=1.0).contains(&v) {
        Ok(())
    } else {
        Err(format!("{name} {v} is not in [0, 1]"))
    }
}

impl RiskPolicy {
    fn check(&self) -> Result<(), String> {
        unit("low", self.low)?;
        unit("high", self.high)?;
        unit("moderate_share", self.moderate_share)?;
        if self.low > self.high {
            return Err(format!("low {} is above high {}", self.low, self.high));
        }
        Ok(())
    }

    /// The band of a failure probability.
    pub fn band(&self, p: f64) -> Band {
        if p >= self.high {
            Band::High
        } else if p < self.low {
            Band::Low
        } else {
            Band::Moderate
        }
    }
}

/// A risk band.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Band {
    Low,
    Moderate,
    High,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWaves {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fixed: Option<Vec<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    adaptive: Option<RawAdaptive>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdaptive {
    #[serde(default = "d_start")]
    start: f64,
    #[serde(default = "d_factor")]
    factor: f64,
}

fn d_start() -> f64 {
    10.0
}
fn d_factor() -> f64 {
    2.0
}

/// How the hosts after the pilot are split into waves.
#[derive(Debug, Clone, PartialEq)]
pub enum Waves {
    /// Cumulative percentages of the hosts after the pilot, increasing, ending at 100.
    Fixed(Vec<f64>),
    /// The first wave is `start` % of the hosts after the pilot; each healthy wave multiplies
    /// the size by `factor`.
    Adaptive { start: f64, factor: f64 },
}

impl Default for Waves {
    fn default() -> Self {
        Waves::Fixed(vec![25.0, 50.0, 100.0])
    }
}

impl<'de> Deserialize<'de> for Waves {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        via_map::<D, RawWaves, Waves>(d)
    }
}

impl Serialize for Waves {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let raw = match self {
            Waves::Fixed(v) => RawWaves {
                fixed: Some(v.clone()),
                adaptive: None,
            },
            Waves::Adaptive { start, factor } => RawWaves {
                fixed: None,
                adaptive: Some(RawAdaptive {
                    start: *start,
                    factor: *factor,
                }),
            },
        };
        raw.serialize(s)
    }
}

impl TryFrom<RawWaves> for Waves {
    type Error = String;
    fn try_from(r: RawWaves) -> Result<Self, String> {
        match (r.fixed, r.adaptive) {
            (Some(_), Some(_)) => Err("give `fixed` or `adaptive`, not both".into()),
            (None, None) => Err("give `fixed: [PERCENT, …]` or `adaptive: {start, factor}`".into()),
            (Some(v), None) => {
                if v.is_empty() {
                    return Err("fixed waves need at least one percentage".into());
                }
                for (i, p) in v.iter().enumerate() {
                    if !(p.is_finite() && *p > 0.0 && *p <= 100.0) {
                        return Err(format!("wave {} percentage {p} is not in (0, 100]", i + 1));
                    }
                    if i > 0 && *p <= v[i - 1] {
                        return Err(format!(
                            "wave percentages are cumulative and must increase: {p} follows {}",
                            v[i - 1]
                        ));
                    }
                }
                if v[v.len() - 1] != 100.0 {
                    return Err(format!(
                        "the last wave must reach 100, not {}",
                        v[v.len() - 1]
                    ));
                }
                Ok(Waves::Fixed(v))
            }
            (None, Some(a)) => {
                if !(a.start.is_finite() && a.start > 0.0 && a.start <= 100.0) {
                    return Err(format!("adaptive start {} is not in (0, 100]", a.start));
                }
                if !(a.factor.is_finite() && (1.0..=100.0).contains(&a.factor)) {
                    return Err(format!("adaptive factor {} is not in [1, 100]", a.factor));
                }
                Ok(Waves::Adaptive {
                    start: a.start,
                    factor: a.factor,
                })
            }
        }
    }
}

checked! {
    /// One watched metric.
    pub struct MetricRule via RawMetricRule = "RawMetricRule" {
        pub name: Text,
        /// Which way is bad: increase (default), decrease or either.
        #[serde(default)]
        pub direction: Direction,
        /// The band around the pre-apply baseline, in percent.
        pub threshold_pct: f64,
        /// How long the metric must stay out of the band to count. Default 3s.
        #[serde(default = "d_for", rename = "for")]
        pub for_: Dur,
        /// Weight in the severity score. Default 1.
        #[serde(default = "d_weight")]
        pub weight: f64,
        /// A breach of a critical metric is a critical verdict (abort when
        /// rollback.abort_on_critical).
        #[serde(default)]
        pub critical: bool,
        /// The band's least half-width in the metric's units. Default 0.
        #[serde(default)]
        pub floor: f64,
        /// Where the values come from: the agents' samples (default) or a PromQL query.
        #[serde(default, skip_serializing_if = "MetricSource::is_agent")]
        pub source: MetricSource,
        /// The PromQL query of a `source: prometheus` metric, templated with the host
        /// (docs/prometheus.md).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub query: Option<QueryTemplate>,
    }
}

/// Where a watched metric's values come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricSource {
    /// The samples the host's agent pushes (`/api/v1/agent/samples`), by the metric's name.
    #[default]
    Agent,
    /// The metric's `query`, run against Prometheus for each host.
    Prometheus,
}

impl MetricSource {
    fn is_agent(&self) -> bool {
        *self == MetricSource::Agent
    }
}

fn d_for() -> Dur {
    Dur(Duration::from_secs(3))
}
fn d_weight() -> f64 {
    1.0
}

impl MetricRule {
    fn check(&self) -> Result<(), String> {
        if !(self.threshold_pct.is_finite() && self.threshold_pct >= 0.0) {
            return Err(format!(
                "threshold_pct {} must be a number ≥ 0",
                self.threshold_pct
            ));
        }
        if !(self.weight.is_finite() && self.weight >= 0.0) {
            return Err(format!("weight {} must be a number ≥ 0", self.weight));
        }
        if !(self.floor.is_finite() && self.floor >= 0.0) {
            return Err(format!("floor {} must be a number ≥ 0", self.floor));
        }
        match (self.source, &self.query) {
            (MetricSource::Prometheus, None) => Err(format!(
                "{} reads Prometheus: give its PromQL `query`",
                self.name
            )),
            (MetricSource::Agent, Some(_)) => Err(format!(
                "{} has a `query` but reads the agents' samples: add `source: prometheus`",
                self.name
            )),
            _ => Ok(()),
        }
    }
}

checked! {
    /// The canary judge's settings: canary hosts' post-apply samples against control hosts'
    /// samples over the same window.
    pub struct JudgeSettings via RawJudgeSettings = "RawJudgeSettings" {
        #[serde(default = "d_true")]
        pub enabled: bool,
        /// Confidence of the Mann-Whitney interval. Default 0.98.
        #[serde(default = "d_confidence")]
        pub confidence: f64,
        /// Score (of 100) below which the canary fails. Default 50.
        #[serde(default = "d_marginal")]
        pub marginal: f64,
        /// Score at or above which the canary passes. Default 75.
        #[serde(default = "d_pass")]
        pub pass: f64,
        /// Canary hosts the judge needs: the pilot is never smaller. Default 2.
        #[serde(default = "d_min_canaries")]
        pub min_canaries: u32,
        /// Samples per side before the judge speaks. Default 5.
        #[serde(default = "d_min_samples")]
        pub min_samples: u32,
    }
}

fn d_true() -> bool {
    true
}
fn d_confidence() -> f64 {
    0.98
}
fn d_marginal() -> f64 {
    50.0
}
fn d_pass() -> f64 {
    75.0
}
fn d_min_canaries() -> u32 {
    2
}
fn d_min_samples() -> u32 {
    5
}

impl Default for JudgeSettings {
    fn default() -> Self {
        JudgeSettings {
            enabled: true,
            confidence: d_confidence(),
            marginal: d_marginal(),
            pass: d_pass(),
            min_canaries: d_min_canaries(),
            min_samples: d_min_samples(),
        }
    }
}

impl JudgeSettings {
    fn check(&self) -> Result<(), String> {
        if !(self.confidence > 0.5 && self.confidence < 1.0) {
            return Err(format!("confidence {} is not in (0.5, 1)", self.confidence));
        }
        if !(0.0..=100.0).contains(&self.marginal) || !(self.marginal..=100.0).contains(&self.pass)
        {
            return Err(format!(
                "need 0 ≤ marginal ≤ pass ≤ 100, got marginal {} and pass {}",
                self.marginal, self.pass
            ));
        }
        if self.min_samples < 2 {
            return Err(format!(
                "min_samples {} must be at least 2",
                self.min_samples
            ));
        }
        Ok(())
    }
}

checked! {
    /// How updated hosts are watched.
    pub struct Analysis via RawAnalysis = "RawAnalysis" {
        /// The sampling interval the watch assumes. Default 1s.
        #[serde(default = "d_interval")]
        pub interval: Dur,
        /// How much pre-apply history makes a host's baseline. Default 30s.
        #[serde(default = "d_baseline")]
        pub baseline: Dur,
        pub metrics: Vec<MetricRule>,
        #[serde(default)]
        pub judge: JudgeSettings,
        /// A host fails when its overall drift score rises by more than this during its bake.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub drift_rise_limit: Option<f64>,
        /// How long the rise must last before it fails the host, so that one odd profile (a
        /// dependency probe that timed out once) is not a failure. Default 5s.
        #[serde(default = "d_drift_rise_for")]
        pub drift_rise_for: Dur,
        /// Severity score at or above which a host fails. Default 0.3.
        #[serde(default = "d_severity_fail")]
        pub severity_fail: f64,
        /// Where `source: prometheus` metrics are read; the server's `--prometheus-url` when
        /// absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub prometheus: Option<PrometheusSettings>,
    }
}

checked! {
    /// The Prometheus server a plan's `source: prometheus` metrics are read from.
    pub struct PrometheusSettings via RawPrometheusSettings = "RawPrometheusSettings" {
        /// Its base URL (`http://127.0.0.1:9090`); the server's `--prometheus-url` when
        /// absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub address: Option<String>,
        /// How long one query may take. Default 3s.
        #[serde(default = "d_prometheus_timeout")]
        pub timeout: Dur,
    }
}

fn d_prometheus_timeout() -> Dur {
    Dur(Duration::from_secs(3))
}

impl PrometheusSettings {
    fn check(&self) -> Result<(), String> {
        if let Some(a) = &self.address {
            check_address(a)?;
        }
        if self.timeout.0 < Duration::from_millis(10) || self.timeout.0 > Duration::from_secs(300) {
            return Err(format!(
                "timeout {}ms is not between 10ms and 300s",
                self.timeout.0.as_millis()
            ));
        }
        Ok(())
    }
}

fn d_interval() -> Dur {
    Dur(Duration::from_secs(1))
}
fn d_baseline() -> Dur {
    Dur(Duration::from_secs(30))
}
fn d_drift_rise_for() -> Dur {
    Dur(Duration::from_secs(5))
}
fn d_severity_fail() -> f64 {
    0.3
}

impl Analysis {
    fn check(&self) -> Result<(), String> {
        if self.interval.0 < Duration::from_millis(10) {
            return Err("interval must be at least 10ms".into());
        }
        if self.baseline.0 < self.interval.0 {
            return Err("baseline must be at least one interval".into());
        }
        if self.metrics.is_empty() {
            return Err("metrics: name at least one metric to watch".into());
        }
        for (i, m) in self.metrics.iter().enumerate() {
            if self.metrics[..i].iter().any(|o| o.name == m.name) {
                return Err(format!("metrics[{i}]: {} is listed twice", m.name));
            }
        }
        if let Some(l) = self.drift_rise_limit {
            if !(l.is_finite() && l > 0.0 && l <= 1.0) {
                return Err(format!("drift_rise_limit {l} is not in (0, 1]"));
            }
        }
        if !(self.severity_fail > 0.0 && self.severity_fail <= 1.0) {
            return Err(format!(
                "severity_fail {} is not in (0, 1]",
                self.severity_fail
            ));
        }
        Ok(())
    }

    pub fn interval_ms(&self) -> i64 {
        ms(self.interval.0)
    }

    /// The metrics read from Prometheus.
    pub fn prometheus_metrics(&self) -> impl Iterator<Item = (&MetricRule, &QueryTemplate)> {
        self.metrics
            .iter()
            .filter_map(|m| m.query.as_ref().map(|q| (m, q)))
    }
}

checked! {
    /// A failure limit: a count of failed hosts in the rollout and/or a share of the current
    /// wave. Either reached trips the limit.
    pub struct Limit via RawLimit = "RawLimit" {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub hosts: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub wave_pct: Option<f64>,
    }
}

impl Limit {
    fn check(&self) -> Result<(), String> {
        if self.hosts == Some(0) {
            return Err("hosts must be at least 1".into());
        }
        if let Some(p) = self.wave_pct {
            if !(p.is_finite() && p > 0.0 && p <= 100.0) {
                return Err(format!("wave_pct {p} is not in (0, 100]"));
            }
        }
        Ok(())
    }

    /// Whether `failed_total` failed hosts in the rollout, `failed_in_wave` of a wave of
    /// `wave_size`, reach the limit.
    pub fn reached(&self, failed_total: usize, failed_in_wave: usize, wave_size: usize) -> bool {
        self.hosts.is_some_and(|k| failed_total >= k as usize)
            || self.wave_pct.is_some_and(|p| {
                wave_size > 0
                    && failed_in_wave > 0
                    && failed_in_wave as f64 * 100.0 / wave_size as f64 >= p
            })
    }
}

checked! {
    /// What happens when hosts fail.
    pub struct RollbackPolicy via RawRollbackPolicy = "RawRollbackPolicy" {
        /// Roll a failing host back alone (default). When false, any failure aborts the
        /// rollout and reverts every updated host.
        #[serde(default = "d_true")]
        pub targeted: bool,
        /// Pause when this many hosts have failed. Default `{hosts: 3, wave_pct: 30}`.
        #[serde(default = "d_pause_when")]
        pub pause_when: Limit,
        /// Halve the next wave when this many have failed. Default `{hosts: 2}`.
        #[serde(default = "d_slow_down_when")]
        pub slow_down_when: Limit,
        /// Abort (reverting every updated host) on a critical verdict. Default true.
        #[serde(default = "d_true")]
        pub abort_on_critical: bool,
        /// Try a matching remediation rule on a failing host before rolling it back. Default
        /// true.
        #[serde(default = "d_true")]
        pub remediate_first: bool,
    }
}

fn d_pause_when() -> Limit {
    Limit {
        hosts: Some(3),
        wave_pct: Some(30.0),
    }
}
fn d_slow_down_when() -> Limit {
    Limit {
        hosts: Some(2),
        wave_pct: None,
    }
}

impl Default for RollbackPolicy {
    fn default() -> Self {
        RollbackPolicy {
            targeted: true,
            pause_when: d_pause_when(),
            slow_down_when: d_slow_down_when(),
            abort_on_critical: true,
            remediate_first: true,
        }
    }
}

impl RollbackPolicy {
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

checked! {
    /// Which drift findings a remediation rule applies to. `attribute` is a pattern where `*`
    /// matches any run of characters (`package:*`, `file:etc/*`).
    pub struct FindingPattern via RawFindingPattern = "RawFindingPattern" {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub category: Option<DriftCategory>,
        pub attribute: Text,
    }
}

impl FindingPattern {
    fn check(&self) -> Result<(), String> {
        Ok(())
    }

    pub fn matches(&self, f: &Finding) -> bool {
        self.category.is_none_or(|c| c == f.category) && glob(&self.attribute.0, &f.attribute)
    }
}

/// A remediation action: an [`ActionSpec`] whose `path` (restore_file) or `package`
/// (reinstall_package) may be left out, to be taken from the matching finding's attribute
/// (`file:PATH`, `package:NAME`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(into = "serde_json::Value")]
pub struct ActionTemplate {
    wire: serde_json::Map<String, serde_json::Value>,
}

impl<'de> Deserialize<'de> for ActionTemplate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        via_map::<D, RawAction, ActionTemplate>(d)
    }
}

impl From<ActionTemplate> for serde_json::Value {
    fn from(t: ActionTemplate) -> serde_json::Value {
        serde_json::Value::Object(t.wire)
    }
}

impl TryFrom<RawAction> for ActionTemplate {
    type Error = String;
    fn try_from(r: RawAction) -> Result<Self, String> {
        let t = ActionTemplate {
            wire: r.into_wire()?,
        };
        // A template must resolve against a finding of the kind it needs.
        let probe = |attr: &str| Finding {
            category: DriftCategory::Configuration,
            attribute: attr.into(),
            baseline: None,
            current: None,
            weight: bellwether_model::Unit::ZERO,
        };
        let needs = match t.wire.get("builtin").and_then(|b| b.as_str()) {
            Some("restore_file") if !t.wire.contains_key("path") => "file:probe",
            Some("reinstall_package") if !t.wire.contains_key("package") => "package:probe",
            _ => "",
        };
        t.resolve(&probe(needs))?;
        Ok(t)
    }
}

impl ActionTemplate {
    /// The action for one finding: a missing `path` comes from `file:PATH`, a missing
    /// `package` from `package:NAME`.
    pub fn resolve(&self, f: &Finding) -> Result<ActionSpec, String> {
        let mut w = self.wire.clone();
        match w.get("builtin").and_then(|b| b.as_str()) {
            Some("restore_file") if !w.contains_key("path") => {
                let p = f.attribute.strip_prefix("file:").ok_or_else(|| {
                    format!(
                        "restore_file without `path` needs a `file:PATH` finding, not {:?}",
                        f.attribute
                    )
                })?;
                let p = p.split('?').next().unwrap_or(p);
                w.insert("path".into(), p.into());
            }
            Some("reinstall_package") if !w.contains_key("package") => {
                let p = f.attribute.strip_prefix("package:").ok_or_else(|| {
                    format!("reinstall_package without `package` needs a `package:NAME` finding, not {:?}", f.attribute)
                })?;
                w.insert("package".into(), p.into());
            }
            _ => {}
        }
        spec_from_wire(w)
    }
}

checked! {
    /// A drift-finding pattern mapped to an action.
    pub struct RemediationRule via RawRemediationRule = "RawRemediationRule" {
        #[serde(rename = "match")]
        pub pattern: FindingPattern,
        pub action: ActionTemplate,
    }
}

impl RemediationRule {
    fn check(&self) -> Result<(), String> {
        let a = &self.pattern.attribute.0;
        match self.action.wire.get("builtin").and_then(|b| b.as_str()) {
            Some("restore_file") if !self.action.wire.contains_key("path") && !a.starts_with("file:") => {
                Err(format!("restore_file without `path` takes it from the finding, so match.attribute must start with `file:`, not {a:?}"))
            }
            Some("reinstall_package") if !self.action.wire.contains_key("package") && !a.starts_with("package:") => {
                Err(format!("reinstall_package without `package` takes it from the finding, so match.attribute must start with `package:`, not {a:?}"))
            }
            _ => Ok(()),
        }
    }
}

checked! {
    /// The no-data rule: a watched host without data for `after` pauses the rollout with an
    /// alert; no data never promotes or rolls back.
    pub struct NoDataRule via RawNoDataRule = "RawNoDataRule" {
        #[serde(default = "d_no_data_after")]
        pub after: Dur,
    }
}

fn d_no_data_after() -> Dur {
    Dur(Duration::from_secs(5))
}

impl Default for NoDataRule {
    fn default() -> Self {
        NoDataRule {
            after: d_no_data_after(),
        }
    }
}

impl NoDataRule {
    fn check(&self) -> Result<(), String> {
        if self.after.0.is_zero() {
            return Err("after must be longer than zero".into());
        }
        Ok(())
    }

    pub fn after_ms(&self) -> i64 {
        ms(self.after.0)
    }
}

#[cfg(test)]
mod tests;
