//! Checkable constraints between settings: the shipped rules (documented constraints and
//! "does nothing unless"), and the constraints probing learned.
//!
//! OWNER: helper `confgraph`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::graph::Edge;
use crate::setting::Catalog;

/// A predicate on one setting's value. Numbers compare in the setting's base unit (as
/// `pg_settings.setting` shows it); `Eq`/`Ne`/`In` compare strings case-insensitively.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pred {
    Eq(String),
    Ne(String),
    In(Vec<String>),
    Gt(f64),
    Ge(f64),
    Lt(f64),
    Le(f64),
}

/// A constraint over a configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Constraint {
    /// When `if_key` satisfies `if_pred`, `then_key` must satisfy `then_pred`
    /// (`wal_level = minimal` ⇒ `max_wal_senders = 0`).
    Implies {
        if_key: String,
        if_pred: Pred,
        then_key: String,
        then_pred: Pred,
    },
    /// The sum of `lhs` must be strictly less than `rhs`
    /// (`superuser_reserved_connections + reserved_connections < max_connections`).
    SumLess { lhs: Vec<String>, rhs: String },
}

/// A rule: its edge (with the constraint as `condition`, when checkable) and its doc.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    pub id: String,
    pub edge: Edge,
    /// From which server version on it holds (`server_version_num`), if not all.
    pub min_version: Option<u32>,
}

/// A constraint a configuration breaks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Violation {
    /// The rule id or `probe:…`.
    pub rule: String,
    /// The settings involved.
    pub keys: Vec<String>,
    /// A sentence naming the settings, their values and what is required.
    pub message: String,
}

/// The rules shipped with Bellwether for PostgreSQL (filtered by server version).
pub fn shipped_rules(server_version_num: u32) -> Vec<Rule> {
    let _ = server_version_num;
    todo!("confgraph")
}

/// Every constraint among `edges` that `values` (name → `pg_settings.setting` form) break;
/// `catalog` gives units and types. A constraint naming a setting `values` lacks is skipped.
pub fn check(
    edges: &[Edge],
    values: &BTreeMap<String, String>,
    catalog: &Catalog,
) -> Vec<Violation> {
    let _ = (edges, values, catalog);
    todo!("confgraph")
}
