//! The dependency graph of an instance's settings.
//!
//! The serialised shape is the issue's contract:
//! `{"nodes": [...], "edges": [{"from", "to", "kind", "confidence", "evidence"}]}` (plus the
//! optional `condition` and the graph's `version`).
//!
//! The graph itself is plain data (serde, stored as is). Traversal goes through a
//! [`GraphIndex`], a borrowed adjacency built in one pass over the edges (O(nodes + edges));
//! it cannot go stale because it borrows the graph, and it is never serialised. Callers that
//! answer many questions about one graph keep one index; the single-question methods
//! ([`Graph::impacts`], [`Graph::around`]) build their own.
//!
//! Must never: panic on a graph read from the store or an agent (edges to missing nodes,
//! confidences out of range are tolerated by traversal and reported by [`Graph::check`]).

use std::collections::{HashMap, HashSet};

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

/// The longest path [`Graph::impacts`] follows when a caller passes more (a bound on work).
pub const MAX_DEPTH: usize = 16;

/// Noisy-or of two confidences: the chance that at least one of two independent pieces of
/// evidence is right. Non-finite inputs count as 0 and results stay in [0, 1].
pub fn noisy_or(a: f64, b: f64) -> f64 {
    let a = clamp01(a);
    let b = clamp01(b);
    clamp01(1.0 - (1.0 - a) * (1.0 - b))
}

fn clamp01(x: f64) -> f64 {
    if x.is_finite() {
        x.clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// Whether `name` is a metric node (`metric:tps`), not a setting.
pub fn is_metric(name: &str) -> bool {
    name.starts_with("metric:")
}

/// The node name of a metric (`tps` → `metric:tps`).
pub fn metric_node(metric: &str) -> String {
    format!("metric:{metric}")
}

impl Node {
    /// A node that only has a name (created for an edge's endpoint).
    pub fn named(name: impl Into<String>) -> Node {
        Node {
            name: name.into(),
            value: None,
            time_ms: None,
            author: None,
            context: None,
        }
    }
}

impl Node {
    /// Takes `other`'s known fields (`Some`), keeping ours where it knows nothing.
    fn update_from(&mut self, other: Node) {
        if other.value.is_some() {
            self.value = other.value;
        }
        if other.time_ms.is_some() {
            self.time_ms = other.time_ms;
        }
        if other.author.is_some() {
            self.author = other.author;
        }
        if other.context.is_some() {
            self.context = other.context;
        }
    }
}

impl Edge {
    /// Merges `other` (same from, to, kind) into this edge: evidence not already present is
    /// appended, and only new evidence raises the confidence (noisy-or), so merging the same
    /// rules or the same probe result twice leaves the edge as it was. A condition is kept,
    /// or taken from `other` when this edge has none.
    fn merge_from(&mut self, other: Edge) {
        let mut new_evidence = false;
        for ev in other.evidence {
            if !self.evidence.contains(&ev) {
                self.evidence.push(ev);
                new_evidence = true;
            }
        }
        if new_evidence || self.evidence.is_empty() {
            self.confidence = noisy_or(self.confidence, other.confidence);
        } else {
            self.confidence = clamp01(self.confidence.max(other.confidence));
        }
        if self.condition.is_none() {
            self.condition = other.condition;
        }
    }
}

impl Graph {
    /// Adds or updates a node (by name): the new node's known fields replace the old ones,
    /// fields it leaves `None` keep their value. O(nodes); use [`Graph::merge`] for many.
    pub fn upsert_node(&mut self, node: Node) {
        match self.nodes.iter_mut().find(|n| n.name == node.name) {
            Some(n) => n.update_from(node),
            None => self.nodes.push(node),
        }
    }

    /// Adds an edge, merging with an existing (from, to, kind); creates missing nodes.
    /// O(nodes + edges); use [`Graph::merge`] for many.
    pub fn add_edge(&mut self, edge: Edge) {
        for name in [&edge.from, &edge.to] {
            if !self.nodes.iter().any(|n| &n.name == name) {
                self.nodes.push(Node::named(name.clone()));
            }
        }
        match self
            .edges
            .iter_mut()
            .find(|e| e.from == edge.from && e.to == edge.to && e.kind == edge.kind)
        {
            Some(e) => e.merge_from(edge),
            None => {
                let mut edge = edge;
                edge.confidence = clamp01(edge.confidence);
                self.edges.push(edge);
            }
        }
    }

    /// Adds many nodes and edges at once with the semantics of [`Graph::upsert_node`] and
    /// [`Graph::add_edge`], in O(total) (hash maps built once). Also deduplicates what is
    /// already in the graph (a graph assembled by hand with repeated nodes or edges).
    pub fn merge(&mut self, nodes: Vec<Node>, edges: Vec<Edge>) {
        let old_nodes = std::mem::take(&mut self.nodes);
        let old_edges = std::mem::take(&mut self.edges);
        let mut node_at: HashMap<String, usize> = HashMap::new();
        for node in old_nodes.into_iter().chain(nodes) {
            match node_at.get(&node.name) {
                Some(&i) => self.nodes[i].update_from(node),
                None => {
                    node_at.insert(node.name.clone(), self.nodes.len());
                    self.nodes.push(node);
                }
            }
        }
        let mut edge_at: HashMap<(String, String, EdgeKind), usize> = HashMap::new();
        for mut edge in old_edges.into_iter().chain(edges) {
            for name in [&edge.from, &edge.to] {
                if !node_at.contains_key(name) {
                    node_at.insert(name.clone(), self.nodes.len());
                    self.nodes.push(Node::named(name.clone()));
                }
            }
            let key = (edge.from.clone(), edge.to.clone(), edge.kind);
            match edge_at.get(&key) {
                Some(&i) => self.edges[i].merge_from(edge),
                None => {
                    edge.confidence = clamp01(edge.confidence);
                    edge_at.insert(key, self.edges.len());
                    self.edges.push(edge);
                }
            }
        }
    }

    /// The node named `name`. O(nodes).
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The adjacency for traversal, built in one pass.
    pub fn index(&self) -> GraphIndex<'_> {
        GraphIndex::new(self)
    }

    /// The subgraph within `depth` edges (either direction) of `key`: those nodes and every
    /// edge between two of them. Empty (with this graph's version) when `key` is not a node.
    pub fn around(&self, key: &str, depth: usize) -> Graph {
        self.index().around(key, depth)
    }

    /// Every setting (and `metric:` node) reachable from `changed` within `max_depth` edges,
    /// with the best path to each (the highest product of confidences, fewer edges on a tie).
    ///
    /// An edge is followed outgoing for `influences` (changing `from` changes `to`), and both
    /// ways for `requires` (a changed requirement reaches what needs it; a changed setting
    /// reaches what it needs) and `conflicts_with`. Sorted by confidence, highest first.
    pub fn impacts(&self, changed: &[String], max_depth: usize) -> Vec<ImpactPath> {
        self.index().impacts(changed, max_depth)
    }

    /// Checks the graph's invariants (used on graphs read from the store or an agent): node
    /// names non-empty and unique, edges between existing distinct nodes, unique by (from,
    /// to, kind), confidences in [0, 1], every edge with evidence.
    pub fn check(&self) -> Result<(), GraphError> {
        let mut names: HashSet<&str> = HashSet::with_capacity(self.nodes.len());
        for (i, n) in self.nodes.iter().enumerate() {
            if n.name.trim().is_empty() {
                return Err(GraphError(format!("node {i} has an empty name")));
            }
            if !names.insert(n.name.as_str()) {
                return Err(GraphError(format!("node {:?} appears twice", n.name)));
            }
        }
        let mut seen: HashSet<(&str, &str, EdgeKind)> = HashSet::with_capacity(self.edges.len());
        for e in &self.edges {
            let what = format!("edge {} -{}-> {}", e.from, e.kind.as_str(), e.to);
            for end in [&e.from, &e.to] {
                if !names.contains(end.as_str()) {
                    return Err(GraphError(format!("{what}: no node named {end:?}")));
                }
            }
            if e.from == e.to {
                return Err(GraphError(format!("{what}: an edge from a node to itself")));
            }
            if !(e.confidence.is_finite() && (0.0..=1.0).contains(&e.confidence)) {
                return Err(GraphError(format!(
                    "{what}: confidence {} is not in [0, 1]",
                    e.confidence
                )));
            }
            if e.evidence.is_empty() {
                return Err(GraphError(format!("{what}: no evidence")));
            }
            if !seen.insert((e.from.as_str(), e.to.as_str(), e.kind)) {
                return Err(GraphError(format!("{what} appears twice")));
            }
        }
        Ok(())
    }

    /// GraphML (yEd, Gephi, networkx): a directed graph, node and edge attributes declared as
    /// `<key>`s, every text escaped (characters XML 1.0 forbids become U+FFFD).
    pub fn to_graphml(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::with_capacity(256 + 200 * (self.nodes.len() + self.edges.len()));
        out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        out.push_str(
            "<graphml xmlns=\"http://graphml.graphdrawing.org/xmlns\" \
             xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" \
             xsi:schemaLocation=\"http://graphml.graphdrawing.org/xmlns \
             http://graphml.graphdrawing.org/xmlns/1.0/graphml.xsd\">\n",
        );
        for (id, what, name, ty) in [
            ("value", "node", "value", "string"),
            ("time_ms", "node", "time_ms", "long"),
            ("author", "node", "author", "string"),
            ("context", "node", "context", "string"),
            ("metric", "node", "metric", "boolean"),
            ("kind", "edge", "kind", "string"),
            ("confidence", "edge", "confidence", "double"),
            ("evidence", "edge", "evidence", "string"),
            ("condition", "edge", "condition", "string"),
        ] {
            let _ = writeln!(
                out,
                "  <key id=\"{id}\" for=\"{what}\" attr.name=\"{name}\" attr.type=\"{ty}\"/>"
            );
        }
        let _ = writeln!(
            out,
            "  <graph id=\"settings\" edgedefault=\"directed\">\n    <desc>version {}</desc>",
            self.version
        );
        for n in &self.nodes {
            let _ = writeln!(out, "    <node id=\"{}\">", xml_escape(&n.name));
            if let Some(v) = &n.value {
                let _ = writeln!(out, "      <data key=\"value\">{}</data>", xml_escape(v));
            }
            if let Some(t) = n.time_ms {
                let _ = writeln!(out, "      <data key=\"time_ms\">{t}</data>");
            }
            if let Some(a) = &n.author {
                let _ = writeln!(out, "      <data key=\"author\">{}</data>", xml_escape(a));
            }
            if let Some(c) = n.context {
                let _ = writeln!(out, "      <data key=\"context\">{}</data>", context_str(c));
            }
            let _ = writeln!(
                out,
                "      <data key=\"metric\">{}</data>\n    </node>",
                is_metric(&n.name)
            );
        }
        for (i, e) in self.edges.iter().enumerate() {
            let _ = writeln!(
                out,
                "    <edge id=\"e{i}\" source=\"{}\" target=\"{}\">",
                xml_escape(&e.from),
                xml_escape(&e.to)
            );
            let _ = writeln!(out, "      <data key=\"kind\">{}</data>", e.kind.as_str());
            let _ = writeln!(
                out,
                "      <data key=\"confidence\">{}</data>",
                float_literal(e.confidence)
            );
            let _ = writeln!(
                out,
                "      <data key=\"evidence\">{}</data>",
                xml_escape(&evidence_text(&e.evidence))
            );
            if let Some(c) = &e.condition {
                let json = serde_json::to_string(c).unwrap_or_default();
                let _ = writeln!(
                    out,
                    "      <data key=\"condition\">{}</data>",
                    xml_escape(&json)
                );
            }
            out.push_str("    </edge>\n");
        }
        out.push_str("  </graph>\n</graphml>\n");
        out
    }

    /// Cypher `MERGE` statements that load the graph into Neo4j (`:Setting` nodes, metric
    /// nodes also labelled `:Metric`, relationship types `REQUIRES`, `CONFLICTS_WITH`,
    /// `INFLUENCES`), strings escaped, one statement per line ending in `;` (what
    /// `cypher-shell -f` reads). Loading twice leaves the same graph.
    pub fn to_cypher(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::with_capacity(128 + 200 * (self.nodes.len() + self.edges.len()));
        out.push_str(
            "CREATE CONSTRAINT bellwether_setting_name IF NOT EXISTS \
             FOR (n:Setting) REQUIRE n.name IS UNIQUE;\n",
        );
        for n in &self.nodes {
            let _ = write!(
                out,
                "MERGE (n:Setting {{name: {}}})",
                cypher_string(&n.name)
            );
            let mut sets: Vec<String> = Vec::new();
            if let Some(v) = &n.value {
                sets.push(format!("n.value = {}", cypher_string(v)));
            }
            if let Some(t) = n.time_ms {
                sets.push(format!("n.time_ms = {t}"));
            }
            if let Some(a) = &n.author {
                sets.push(format!("n.author = {}", cypher_string(a)));
            }
            if let Some(c) = n.context {
                sets.push(format!("n.context = {}", cypher_string(context_str(c))));
            }
            if is_metric(&n.name) {
                sets.push("n:Metric".to_string());
            }
            if !sets.is_empty() {
                let _ = write!(out, " SET {}", sets.join(", "));
            }
            out.push_str(";\n");
        }
        for e in &self.edges {
            let evidence: Vec<String> = e
                .evidence
                .iter()
                .map(|ev| cypher_string(&format!("{}: {}", ev.source.as_str(), ev.detail)))
                .collect();
            let _ = write!(
                out,
                "MATCH (a:Setting {{name: {}}}), (b:Setting {{name: {}}}) \
                 MERGE (a)-[r:{}]->(b) SET r.confidence = {}, r.evidence = [{}]",
                cypher_string(&e.from),
                cypher_string(&e.to),
                e.kind.cypher_type(),
                float_literal(e.confidence),
                evidence.join(", ")
            );
            if let Some(c) = &e.condition {
                let json = serde_json::to_string(c).unwrap_or_default();
                let _ = write!(out, ", r.condition = {}", cypher_string(&json));
            }
            out.push_str(";\n");
        }
        out
    }
}

impl EdgeKind {
    /// The JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            EdgeKind::Requires => "requires",
            EdgeKind::ConflictsWith => "conflicts_with",
            EdgeKind::Influences => "influences",
        }
    }

    /// The Neo4j relationship type.
    pub fn cypher_type(self) -> &'static str {
        match self {
            EdgeKind::Requires => "REQUIRES",
            EdgeKind::ConflictsWith => "CONFLICTS_WITH",
            EdgeKind::Influences => "INFLUENCES",
        }
    }
}

impl EvidenceSource {
    /// The JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            EvidenceSource::Probe => "probe",
            EvidenceSource::Rule => "rule",
            EvidenceSource::CoChange => "co_change",
            EvidenceSource::MetricImpact => "metric_impact",
        }
    }
}

/// The `pg_settings.context` spelling.
pub fn context_str(c: Context) -> &'static str {
    match c {
        Context::Internal => "internal",
        Context::Postmaster => "postmaster",
        Context::Sighup => "sighup",
        Context::SuperuserBackend => "superuser-backend",
        Context::Backend => "backend",
        Context::Superuser => "superuser",
        Context::User => "user",
    }
}

fn evidence_text(evidence: &[Evidence]) -> String {
    evidence
        .iter()
        .map(|ev| format!("{}: {}", ev.source.as_str(), ev.detail))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A float as a literal both XML Schema `double` and Cypher read (`1.0`, never `1` or `NaN`).
fn float_literal(x: f64) -> String {
    let x = if x.is_finite() { x } else { 0.0 };
    let s = format!("{x}");
    if s.contains('.') {
        s
    } else {
        format!("{s}.0")
    }
}

/// Escapes text for XML content and attribute values; characters XML 1.0 does not allow
/// (most C0 controls) become U+FFFD.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// A Cypher string literal: single-quoted, with `\\`, `\'`, `\"` and control characters
/// escaped (`\n`, `\r`, `\t`, `\b`, `\f`, else `\uXXXX`), as Neo4j's grammar reads them.
pub fn cypher_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// The adjacency of a [`Graph`] for traversal: node ids by name, outgoing and incoming edges
/// per node. Borrowed, so it always matches the graph it was built from.
pub struct GraphIndex<'g> {
    graph: &'g Graph,
    ids: rustc_hash::FxHashMap<&'g str, u32>,
    names: Vec<&'g str>,
    /// Per node: (edge index, other end) of edges leaving it.
    out: Adjacency,
    /// Per node: (edge index, other end) of edges arriving at it.
    inc: Adjacency,
}

/// Each node's (edge index, other end) pairs, in edge order, in one flat array (compressed
/// rows): two allocations for the whole graph instead of two per node, which is most of what
/// an index of 100,000 settings cost to build.
struct Adjacency {
    /// Node `i`'s pairs are `items[start[i]..start[i + 1]]`.
    start: Vec<u32>,
    items: Vec<(u32, u32)>,
}

impl Adjacency {
    /// From each edge's (key node, other end), in edge order.
    fn build(n: usize, pairs: impl Iterator<Item = (u32, u32)> + Clone) -> Adjacency {
        let mut start = vec![0u32; n + 1];
        for (k, _) in pairs.clone() {
            start[k as usize + 1] += 1;
        }
        for i in 0..n {
            start[i + 1] += start[i];
        }
        let mut next: Vec<u32> = start[..n].to_vec();
        let mut items = vec![(0u32, 0u32); start[n] as usize];
        for (i, (k, other)) in pairs.enumerate() {
            let slot = &mut next[k as usize];
            items[*slot as usize] = (i as u32, other);
            *slot += 1;
        }
        Adjacency { start, items }
    }

    fn of(&self, node: usize) -> &[(u32, u32)] {
        &self.items[self.start[node] as usize..self.start[node + 1] as usize]
    }
}

impl<'g> GraphIndex<'g> {
    pub fn new(graph: &'g Graph) -> GraphIndex<'g> {
        let mut ids: rustc_hash::FxHashMap<&'g str, u32> = rustc_hash::FxHashMap::default();
        ids.reserve(graph.nodes.len() + graph.edges.len() / 8);
        let mut names: Vec<&'g str> = Vec::with_capacity(graph.nodes.len());
        let mut id_of = |name: &'g str, ids: &mut rustc_hash::FxHashMap<&'g str, u32>| -> u32 {
            *ids.entry(name).or_insert_with(|| {
                names.push(name);
                (names.len() - 1) as u32
            })
        };
        for n in &graph.nodes {
            id_of(n.name.as_str(), &mut ids);
        }
        let mut ends: Vec<(u32, u32)> = Vec::with_capacity(graph.edges.len());
        for e in &graph.edges {
            let a = id_of(e.from.as_str(), &mut ids);
            let b = id_of(e.to.as_str(), &mut ids);
            ends.push((a, b));
        }
        let n = names.len();
        let out = Adjacency::build(n, ends.iter().map(|&(a, b)| (a, b)));
        let inc = Adjacency::build(n, ends.iter().map(|&(a, b)| (b, a)));
        GraphIndex {
            graph,
            ids,
            names,
            out,
            inc,
        }
    }

    pub fn graph(&self) -> &'g Graph {
        self.graph
    }

    /// The edges touching `name` (either end), as indices into `graph().edges`.
    pub fn edges_of(&self, name: &str) -> Vec<usize> {
        let Some(&id) = self.ids.get(name) else {
            return Vec::new();
        };
        let id = id as usize;
        let mut v: Vec<usize> = self
            .out
            .of(id)
            .iter()
            .chain(self.inc.of(id))
            .map(|&(e, _)| e as usize)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// See [`Graph::around`].
    pub fn around(&self, key: &str, depth: usize) -> Graph {
        let mut sub = Graph {
            version: self.graph.version,
            nodes: Vec::new(),
            edges: Vec::new(),
        };
        let Some(&start) = self.ids.get(key) else {
            return sub;
        };
        let mut seen: HashSet<u32> = HashSet::from([start]);
        let mut frontier = vec![start];
        for _ in 0..depth.min(MAX_DEPTH) {
            let mut next = Vec::new();
            for &u in &frontier {
                for &(_, v) in self
                    .out
                    .of(u as usize)
                    .iter()
                    .chain(self.inc.of(u as usize))
                {
                    if seen.insert(v) {
                        next.push(v);
                    }
                }
            }
            if next.is_empty() {
                break;
            }
            frontier = next;
        }
        let names: HashSet<&str> = seen.iter().map(|&i| self.names[i as usize]).collect();
        sub.nodes = self
            .graph
            .nodes
            .iter()
            .filter(|n| names.contains(n.name.as_str()))
            .cloned()
            .collect();
        sub.edges = self
            .graph
            .edges
            .iter()
            .filter(|e| names.contains(e.from.as_str()) && names.contains(e.to.as_str()))
            .cloned()
            .collect();
        sub
    }

    /// See [`Graph::impacts`]. A layered Bellman-Ford over at most `max_depth` edges (capped
    /// at [`MAX_DEPTH`]): after layer k every node holds its best path of at most k edges,
    /// so the depth bound and the best product are both exact.
    pub fn impacts(&self, changed: &[String], max_depth: usize) -> Vec<ImpactPath> {
        struct Best {
            conf: f64,
            path: Vec<u32>,
            kinds: Vec<EdgeKind>,
        }
        let mut best: HashMap<u32, Best> = HashMap::new();
        let mut frontier: Vec<(u32, f64, Vec<u32>, Vec<EdgeKind>)> = Vec::new();
        let mut starts: HashSet<u32> = HashSet::new();
        for key in changed {
            if let Some(&id) = self.ids.get(key.as_str()) {
                if starts.insert(id) {
                    frontier.push((id, 1.0, vec![id], Vec::new()));
                }
            }
        }
        for _ in 0..max_depth.min(MAX_DEPTH) {
            let mut improved: Vec<u32> = Vec::new();
            for (u, conf, path, kinds) in &frontier {
                let steps = self
                    .out
                    .of(*u as usize)
                    .iter()
                    .map(|s| (s, true))
                    .chain(self.inc.of(*u as usize).iter().map(|s| (s, false)));
                for (&(ei, v), outgoing) in steps {
                    let e = &self.graph.edges[ei as usize];
                    if !outgoing && e.kind == EdgeKind::Influences {
                        continue;
                    }
                    if starts.contains(&v) || path.contains(&v) {
                        continue;
                    }
                    let c = conf * clamp01(e.confidence);
                    let better = match best.get(&v) {
                        None => true,
                        Some(b) => {
                            c > b.conf
                                || (c == b.conf && path.len() + 1 < b.path.len())
                                || (c == b.conf
                                    && path.len() + 1 == b.path.len()
                                    && self.path_key(path, v)
                                        < self.path_key(&b.path[..b.path.len() - 1], v))
                        }
                    };
                    if better {
                        let mut p = path.clone();
                        p.push(v);
                        let mut k = kinds.clone();
                        k.push(e.kind);
                        best.insert(
                            v,
                            Best {
                                conf: c,
                                path: p,
                                kinds: k,
                            },
                        );
                        improved.push(v);
                    }
                }
            }
            if improved.is_empty() {
                break;
            }
            improved.sort_unstable();
            improved.dedup();
            frontier = improved
                .into_iter()
                .filter_map(|v| {
                    best.get(&v)
                        .map(|b| (v, b.conf, b.path.clone(), b.kinds.clone()))
                })
                .collect();
        }
        let mut out: Vec<ImpactPath> = best
            .into_iter()
            .map(|(v, b)| ImpactPath {
                setting: self.names[v as usize].to_string(),
                path: b
                    .path
                    .iter()
                    .map(|&i| self.names[i as usize].to_string())
                    .collect(),
                kinds: b.kinds,
                confidence: b.conf,
            })
            .collect();
        out.sort_by(|a, b| {
            b.confidence
                .total_cmp(&a.confidence)
                .then(a.path.len().cmp(&b.path.len()))
                .then_with(|| a.setting.cmp(&b.setting))
        });
        out
    }

    fn path_key(&self, path: &[u32], last: u32) -> Vec<&'g str> {
        path.iter()
            .chain(std::iter::once(&last))
            .map(|&i| self.names[i as usize])
            .collect()
    }
}
