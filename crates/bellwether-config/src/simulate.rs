//! The change simulator: a proposed change applied to a copy of the graph (and, when the
//! caller ran one, the result of a scratch cluster's trial start), never the live instance.
//!
//! OWNER: helper `confgraph`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::cochange::ChangeOutcome;
use crate::graph::{Graph, ImpactPath};
use crate::perf::{PerfModel, PerfPrediction};
use crate::risk::Risk;
use crate::rules::Violation;
use crate::setting::{ApplyKind, Catalog};

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
    /// `None` resets to the default (`ALTER SYSTEM RESET`).
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

/// Simulates `proposed` (key → new value, `None` = reset to default).
pub fn simulate(input: &SimInput<'_>, proposed: &[(String, Option<String>)]) -> SimReport {
    let _ = (input, proposed);
    todo!("confgraph")
}

/// The configuration after `proposed`, in `pg_settings.setting` form (for trials and checks).
pub fn proposed_values(
    catalog: &Catalog,
    proposed: &[(String, Option<String>)],
) -> BTreeMap<String, String> {
    let _ = (catalog, proposed);
    todo!("confgraph")
}
