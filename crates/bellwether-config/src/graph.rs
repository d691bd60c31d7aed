//! The dependency graph of an instance's settings.
//!
//! OWNER: helper `confgraph`. The serialised shape is the contract:
//! `{"nodes": [...], "edges": [{"from", "to", "kind", "confidence", "evidence"}]}` (plus the
//! optional `condition` and the graph's `version`).

use serde::{Deserialize, Serialize};

use crate::rules::Constraint;
use crate::setting::Context;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EdgeKind {
    /// `from` needs `to` to hold a certain value (or to be set) to work or to start.
    Requires,
    /// Some values of `from` and `to` together stop the server or are refused.
    ConflictsWith,
    /// Changing `from` changes what `to` does, or the instance's performance (metric nodes are
    /// named `metric:NAME`).
    Influences,
}

/// Where an edge came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvidenceSource {
    /// A trial start of a scratch cluster (or `postgres -C`).
    Probe,
    /// A shipped rule (documented constraint).
    Rule,
    /// Settings changed together in the change history.
    CoChange,
    /// A metric moved after changes of the setting.
    MetricImpact,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    pub source: EvidenceSource,
    /// What was seen: the trial and the server's message, the rule's documentation, the counts.
    pub detail: String,
}

/// A setting (or a `metric:NAME` node).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    pub value: Option<String>,
    /// When the value was last changed, and by whom, when known.
    pub time_ms: Option<i64>,
    pub author: Option<String>,
    pub context: Option<Context>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Edge {
    pub from: String,
    pub to: String,
    pub kind: EdgeKind,
    /// In [0, 1].
    pub confidence: f64,
    pub evidence: Vec<Evidence>,
    /// The checkable form, when the edge has one (the simulator refuses a change that
    /// violates it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<Constraint>,
}

/// The graph. Nodes are unique by name; edges unique by (from, to, kind): adding one that
/// exists merges its evidence and raises its confidence (noisy-or).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Graph {
    /// Raised by the store on every change; 0 for a graph not stored.
    #[serde(default)]
    pub version: i64,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
}

/// One way a changed setting reaches another: the path of names from the changed setting to
/// `setting`, the edge kinds along it, and the product of the edges' confidences.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImpactPath {
    pub setting: String,
    pub path: Vec<String>,
    pub kinds: Vec<EdgeKind>,
    pub confidence: f64,
}

/// A graph that is not valid (an edge to a missing node, a confidence out of [0, 1]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct GraphError(pub String);

impl Graph {
    /// Adds or updates a node (by name).
    pub fn upsert_node(&mut self, node: Node) {
        let _ = node;
        todo!("confgraph")
    }

    /// Adds an edge, merging with an existing (from, to, kind); creates missing nodes.
    pub fn add_edge(&mut self, edge: Edge) {
        let _ = edge;
        todo!("confgraph")
    }

    /// The subgraph within `depth` edges (either direction) of `key`.
    pub fn around(&self, key: &str, depth: usize) -> Graph {
        let _ = (key, depth);
        todo!("confgraph")
    }

    /// Every setting reachable from `changed` along edges (outgoing `requires`, `influences`;
    /// `conflicts_with` both ways) within `max_depth`, with the best path to each.
    pub fn impacts(&self, changed: &[String], max_depth: usize) -> Vec<ImpactPath> {
        let _ = (changed, max_depth);
        todo!("confgraph")
    }

    /// Checks the graph's invariants (used on graphs read from the store or an agent).
    pub fn check(&self) -> Result<(), GraphError> {
        todo!("confgraph")
    }

    /// GraphML (yEd, Gephi, networkx).
    pub fn to_graphml(&self) -> String {
        todo!("confgraph")
    }

    /// Cypher `MERGE` statements that load the graph into Neo4j (`:Setting` nodes, relationship
    /// types `REQUIRES`, `CONFLICTS_WITH`, `INFLUENCES`), strings escaped.
    pub fn to_cypher(&self) -> String {
        todo!("confgraph")
    }
}
