//! The change simulator: a proposed change applied to a copy of the graph (and, when the
//! caller ran one, the result of a scratch cluster's trial start), never the live instance.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::cochange::ChangeOutcome;
use crate::graph::{Edge, Graph, GraphIndex, ImpactPath};
use crate::perf::{PerfModel, PerfPrediction};
use crate::risk::{change_risk, ChangeEvidence, Risk};
use crate::rules::{self, Violation};
use crate::setting::{ApplyKind, Catalog, ValueError};

/// The answer: `refuse` (the server would not start, a value is invalid, or an edge is
/// violated), else what applying it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Session,
    Reload,
    Restart,
    Refuse,
}

impl From<ApplyKind> for Verdict {
    fn from(k: ApplyKind) -> Verdict {
        match k {
            ApplyKind::Session => Verdict::Session,
            ApplyKind::Reload => Verdict::Reload,
            ApplyKind::Restart => Verdict::Restart,
        }
    }
}

/// A scratch cluster's trial start with the proposed configuration (from `bellwether-pg`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartTrial {
    pub started: bool,
    /// The server's `FATAL`/`LOG` lines when it refused, else empty.
    pub message: String,
    pub ms: u64,
}

/// One proposed key, normalised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProposedChange {
    pub key: String,
    pub old: Option<String>,
    /// The normalised new value; `None` resets to the default (`ALTER SYSTEM RESET`). When the
    /// change is refused (`error` is set), the value as it was given.
    pub new: Option<String>,
    /// What it takes; `None` when refused.
    pub apply: Option<ApplyKind>,
    /// Why it is refused, if it is (an invalid value: the error names setting, value, range).
    pub error: Option<String>,
}

/// What the simulator works on.
pub struct SimInput<'a> {
    pub catalog: &'a Catalog,
    pub graph: &'a Graph,
    pub perf: Option<&'a PerfModel>,
    pub history: &'a [ChangeOutcome],
    pub trial: Option<StartTrial>,
}

/// The report. Its JSON is what `bellwether config simulate --output json` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimReport {
    pub verdict: Verdict,
    /// Sentences: why refused, or what applying it takes.
    pub reasons: Vec<String>,
    pub changes: Vec<ProposedChange>,
    pub violations: Vec<Violation>,
    pub impacted: Vec<ImpactPath>,
    pub performance: Option<PerfPrediction>,
    pub risk: Risk,
    pub scratch: Option<StartTrial>,
}

/// How many edges away from a changed setting the simulator looks for impacts.
pub const IMPACT_DEPTH: usize = 4;
/// The report lists at most this many impacted settings (the most confident); the reasons say
/// how many there were in all.
pub const MAX_IMPACTED: usize = 200;

/// Simulates `proposed` (key → new value, `None` = reset to default).
///
/// The verdict: `refuse` when a value is invalid (the error names the setting, the value and
/// the allowed range), when the proposed values break a hard constraint of the graph that
/// mentions a changed setting, or when the caller's trial start of a scratch cluster failed
/// (with the server's message); else the most a changed setting's context takes
/// (`restart` > `reload` > `session`). A key proposed twice is refused. Builds a
/// [`GraphIndex`] of the graph; [`simulate_with_index`] reuses one.
pub fn simulate(input: &SimInput<'_>, proposed: &[(String, Option<String>)]) -> SimReport {
    let index = input.graph.index();
    simulate_with_index(input, &index, proposed)
}

/// [`simulate`] with an index the caller built (and keeps) for `input.graph`; the graph read
/// is `index.graph()`.
pub fn simulate_with_index(
    input: &SimInput<'_>,
    index: &GraphIndex<'_>,
    proposed: &[(String, Option<String>)],
) -> SimReport {
    let catalog = input.catalog;
    let graph = index.graph();
    let mut reasons: Vec<String> = Vec::new();
    let mut changes: Vec<ProposedChange> = Vec::new();
    let mut seen: HashSet<&str> = HashSet::new();
    // The proposed values in `pg_settings.setting` form, for the changes that are valid.
    let mut overlay: BTreeMap<String, String> = BTreeMap::new();
    let mut effective: Vec<String> = Vec::new();
    for (key, new) in proposed {
        let setting = catalog.get(key);
        let old = setting.map(|s| s.value.clone());
        let mut change = ProposedChange {
            key: key.clone(),
            old: old.clone(),
            new: None,
            apply: None,
            error: None,
        };
        if !seen.insert(key.as_str()) {
            change.new = new.clone();
            change.error = Some(format!("{key} is set twice in this change"));
            changes.push(change);
            continue;
        }
        let normalised: Result<Option<String>, ValueError> = match new {
            Some(v) => catalog
                .validate(key, v)
                .map(|value| Some(value.to_setting_string())),
            None => match setting {
                None => Err(ValueError::UnknownSetting {
                    name: key.clone(),
                    suggestion: None,
                }),
                Some(s) if s.context.apply_kind().is_none() => {
                    Err(ValueError::Internal { name: key.clone() })
                }
                Some(_) => Ok(None),
            },
        };
        match normalised {
            Err(e) => {
                change.new = new.clone();
                change.error = Some(e.to_string());
            }
            Ok(value) => {
                let Some(setting) = setting else {
                    // validate accepted a setting the catalog does not hold: treat as unknown.
                    change.error = Some(
                        ValueError::UnknownSetting {
                            name: key.clone(),
                            suggestion: None,
                        }
                        .to_string(),
                    );
                    changes.push(change);
                    continue;
                };
                change.apply = setting.context.apply_kind();
                let after = value.clone().or_else(|| setting.boot_val.clone());
                change.new = value;
                if let Some(after) = after {
                    let unchanged = old.as_deref().is_some_and(|o| {
                        o == after
                            || rules::holds(&rules::Pred::Eq(after.clone()), key, o, catalog)
                                == Some(true)
                    });
                    if unchanged {
                        reasons.push(format!("{key} already is {after}: nothing to apply"));
                    } else {
                        effective.push(key.clone());
                    }
                    overlay.insert(key.clone(), after);
                } else {
                    effective.push(key.clone());
                }
            }
        }
        changes.push(change);
    }

    let mut refused = false;
    for c in &changes {
        if let Some(e) = &c.error {
            refused = true;
            reasons.push(format!("refused: {e}"));
        }
    }

    // Hard constraints that mention a changed key, checked on the proposed values (the keys
    // they read: proposed where proposed, else the current value).
    let valid_keys: Vec<String> = overlay.keys().cloned().collect();
    let relevant: Vec<Edge> = graph
        .edges
        .iter()
        .filter(|e| {
            e.condition
                .as_ref()
                .is_some_and(|c| valid_keys.iter().any(|k| rules::mentions(c, k)))
        })
        .cloned()
        .collect();
    let mut values: BTreeMap<String, String> = BTreeMap::new();
    for e in &relevant {
        if let Some(c) = &e.condition {
            for k in c.keys() {
                if let Some(v) = overlay.get(k) {
                    values.insert(k.to_string(), v.clone());
                } else if let Some(s) = catalog.get(k) {
                    values.insert(k.to_string(), s.value.clone());
                }
            }
        }
    }
    let violations = rules::check(&relevant, &values, catalog);
    for v in &violations {
        refused = true;
        reasons.push(format!("refused: {} (rule {})", v.message, v.rule));
    }
    for note in rules::no_effect(&relevant, &values, &valid_keys, catalog) {
        reasons.push(format!("{} (rule {})", note.message, note.rule));
    }
    if let Some(trial) = &input.trial {
        if trial.started {
            reasons.push(format!(
                "a scratch cluster started with the proposed settings in {} ms",
                trial.ms
            ));
        } else {
            refused = true;
            let message = trial.message.trim();
            reasons.push(format!(
                "refused: a scratch cluster with the proposed settings did not start: {}",
                if message.is_empty() {
                    "(the server gave no message)"
                } else {
                    message
                }
            ));
        }
    }

    let apply = changes
        .iter()
        .filter(|c| effective.contains(&c.key))
        .filter_map(|c| c.apply)
        .max();
    let verdict = if refused {
        Verdict::Refuse
    } else {
        apply.map(Verdict::from).unwrap_or(Verdict::Session)
    };
    if !refused {
        if effective.is_empty() {
            reasons.push("no setting changes value".to_string());
        }
        for c in changes.iter().filter(|c| effective.contains(&c.key)) {
            let ctx = catalog
                .get(&c.key)
                .map(|s| crate::graph::context_str(s.context))
                .unwrap_or_default();
            let what = match c.apply {
                Some(ApplyKind::Restart) => "a server restart",
                Some(ApplyKind::Reload) => "a reload",
                Some(ApplyKind::Session) => "a reload (or SET in a session)",
                None => "nothing",
            };
            reasons.push(format!(
                "{} {} → {} takes {what} (context {ctx})",
                c.key,
                c.old.as_deref().unwrap_or("(unset)"),
                c.new.as_deref().unwrap_or("(default)"),
            ));
        }
    }

    let mut impacted = index.impacts(&effective, IMPACT_DEPTH);
    if !impacted.is_empty() {
        let top = &impacted[0];
        reasons.push(format!(
            "it reaches {} settings or metrics in the graph; the most confident: {} ({:.2})",
            impacted.len(),
            top.path.join(" → "),
            top.confidence
        ));
    }
    impacted.truncate(MAX_IMPACTED);

    let performance = input.perf.and_then(|model| {
        let mut current = BTreeMap::new();
        let mut after = BTreeMap::new();
        for f in &model.features {
            if let Some(s) = catalog.get(f) {
                current.insert(f.clone(), s.value.clone());
                after.insert(f.clone(), s.value.clone());
            }
            if let Some(v) = overlay.get(f) {
                after.insert(f.clone(), v.clone());
            }
        }
        match model.try_predict(&current, &after) {
            Ok(p) => Some(p),
            Err(e) => {
                reasons.push(format!("no performance prediction: {e}"));
                None
            }
        }
    });
    if let Some(p) = &performance {
        reasons.push(format!(
            "the performance model ({} observations) predicts throughput {:+.1} % (± {:.1} %) \
             and latency {:+.1} % (± {:.1} %)",
            input.perf.map(|m| m.observations).unwrap_or(0),
            p.tps_change * 100.0,
            p.tps_rel_error * 100.0,
            p.latency_change * 100.0,
            p.latency_rel_error * 100.0
        ));
    }
    let risk = change_risk(&ChangeEvidence {
        changed: &effective,
        apply,
        impacted: &impacted,
        history: input.history,
        performance: performance.as_ref(),
    });
    reasons.push(format!("risk {:.2}", risk.score));
    SimReport {
        verdict,
        reasons,
        changes,
        violations,
        impacted,
        performance,
        risk,
        scratch: input.trial.clone(),
    }
}

/// The configuration after `proposed`, in `pg_settings.setting` form (for trials and checks):
/// the catalog's values with each valid proposed value normalised (`64MB` → `8192` for a
/// setting in 8kB pages) and each reset key at its `boot_val`. Invalid values and unknown
/// keys are left out (the simulator refuses them).
pub fn proposed_values(
    catalog: &Catalog,
    proposed: &[(String, Option<String>)],
) -> BTreeMap<String, String> {
    let mut values = catalog.values();
    for (key, new) in proposed {
        let Some(setting) = catalog.get(key) else {
            continue;
        };
        match new {
            Some(v) => {
                if let Ok(value) = catalog.validate(key, v) {
                    values.insert(key.clone(), value.to_setting_string());
                }
            }
            None => {
                if let Some(b) = &setting.boot_val {
                    values.insert(key.clone(), b.clone());
                }
            }
        }
    }
    values
}
