//! The dependency graph: merging, traversal, invariants and the three export formats.

use bellwether_config::graph::{
    cypher_string, xml_escape, Edge, EdgeKind, Evidence, EvidenceSource, Graph, Node,
};
use bellwether_config::setting::Context;

fn edge(from: &str, to: &str, kind: EdgeKind, confidence: f64, detail: &str) -> Edge {
    Edge {
        from: from.to_string(),
        to: to.to_string(),
        kind,
        confidence,
        evidence: vec![Evidence {
            source: EvidenceSource::Probe,
            detail: detail.to_string(),
        }],
        condition: None,
    }
}

#[test]
fn nodes_are_unique_by_name_and_upsert_keeps_known_fields() {
    let mut g = Graph::default();
    g.upsert_node(Node {
        name: "work_mem".into(),
        value: Some("4096".into()),
        time_ms: Some(5),
        author: Some("ann".into()),
        context: Some(Context::User),
    });
    g.upsert_node(Node {
        name: "work_mem".into(),
        value: Some("8192".into()),
        time_ms: None,
        author: None,
        context: None,
    });
    assert_eq!(g.nodes.len(), 1);
    assert_eq!(g.nodes[0].value.as_deref(), Some("8192"));
    assert_eq!(g.nodes[0].author.as_deref(), Some("ann"));
    assert_eq!(g.nodes[0].context, Some(Context::User));
}

#[test]
fn edges_merge_by_from_to_kind_with_noisy_or_and_evidence() {
    let mut g = Graph::default();
    g.add_edge(edge("a", "b", EdgeKind::Influences, 0.5, "first"));
    g.add_edge(edge("a", "b", EdgeKind::Influences, 0.5, "second"));
    g.add_edge(edge("a", "b", EdgeKind::Requires, 0.3, "other kind"));
    assert_eq!(g.nodes.len(), 2, "endpoints become nodes once");
    assert_eq!(g.edges.len(), 2);
    let e = &g.edges[0];
    assert!((e.confidence - 0.75).abs() < 1e-12, "{}", e.confidence);
    assert_eq!(e.evidence.len(), 2);
    // The same evidence again is not new evidence: nothing changes.
    g.add_edge(edge("a", "b", EdgeKind::Influences, 0.5, "second"));
    assert!((g.edges[0].confidence - 0.75).abs() < 1e-12);
    assert_eq!(g.edges[0].evidence.len(), 2);
    assert!(g.check().is_ok(), "{:?}", g.check());
}

#[test]
fn merge_in_bulk_matches_one_at_a_time() {
    let edges = vec![
        edge("a", "b", EdgeKind::Influences, 0.5, "1"),
        edge("b", "c", EdgeKind::Requires, 0.9, "2"),
        edge("a", "b", EdgeKind::Influences, 0.2, "3"),
        edge("c", "a", EdgeKind::ConflictsWith, 1.0, "4"),
    ];
    let mut one = Graph::default();
    for e in edges.clone() {
        one.add_edge(e);
    }
    let mut bulk = Graph::default();
    bulk.merge(vec![], edges);
    assert_eq!(one, bulk);
}

#[test]
fn impacts_follow_the_best_path_within_the_depth() {
    let mut g = Graph::default();
    // a → b → c (0.9 × 0.9 = 0.81) beats a → c (0.5); d only reachable at depth 3.
    g.add_edge(edge("a", "b", EdgeKind::Influences, 0.9, "x"));
    g.add_edge(edge("b", "c", EdgeKind::Influences, 0.9, "x"));
    g.add_edge(edge("a", "c", EdgeKind::Influences, 0.5, "x"));
    g.add_edge(edge("c", "d", EdgeKind::Influences, 1.0, "x"));
    // Influences are followed outgoing only: e → a does not make e impacted.
    g.add_edge(edge("e", "a", EdgeKind::Influences, 1.0, "x"));
    // Conflicts both ways: f conflicts with a.
    g.add_edge(edge("f", "a", EdgeKind::ConflictsWith, 0.7, "x"));
    let im = g.impacts(&["a".to_string()], 2);
    let c = im.iter().find(|p| p.setting == "c").unwrap();
    assert_eq!(c.path, vec!["a", "b", "c"]);
    assert!((c.confidence - 0.81).abs() < 1e-12);
    assert_eq!(c.kinds, vec![EdgeKind::Influences, EdgeKind::Influences]);
    assert!(im.iter().all(|p| p.setting != "e"));
    assert!(im
        .iter()
        .any(|p| p.setting == "f" && p.path == vec!["a", "f"]));
    // d is three edges away along the best path, two along a → c → d.
    let d = im.iter().find(|p| p.setting == "d").unwrap();
    assert_eq!(d.path, vec!["a", "c", "d"]);
    assert!((d.confidence - 0.5).abs() < 1e-12);
    let im3 = g.impacts(&["a".to_string()], 3);
    let d3 = im3.iter().find(|p| p.setting == "d").unwrap();
    assert_eq!(d3.path, vec!["a", "b", "c", "d"]);
    // Sorted by confidence.
    assert!(im.windows(2).all(|w| w[0].confidence >= w[1].confidence));
    // Unknown keys and depth 0 reach nothing.
    assert!(g.impacts(&["nope".to_string()], 3).is_empty());
    assert!(g.impacts(&["a".to_string()], 0).is_empty());
}

#[test]
fn requires_is_followed_both_ways() {
    let mut g = Graph::default();
    g.add_edge(edge(
        "archive_command",
        "archive_mode",
        EdgeKind::Requires,
        1.0,
        "x",
    ));
    let im = g.impacts(&["archive_mode".to_string()], 2);
    assert_eq!(im.len(), 1);
    assert_eq!(im[0].setting, "archive_command");
    let im = g.impacts(&["archive_command".to_string()], 2);
    assert_eq!(im[0].setting, "archive_mode");
}

#[test]
fn around_takes_both_directions_within_depth() {
    let mut g = Graph {
        version: 7,
        ..Default::default()
    };
    g.add_edge(edge("a", "b", EdgeKind::Influences, 0.9, "x"));
    g.add_edge(edge("c", "a", EdgeKind::Influences, 0.9, "x"));
    g.add_edge(edge("b", "d", EdgeKind::Influences, 0.9, "x"));
    let sub = g.around("a", 1);
    let mut names: Vec<_> = sub.nodes.iter().map(|n| n.name.as_str()).collect();
    names.sort();
    assert_eq!(names, vec!["a", "b", "c"]);
    assert_eq!(sub.edges.len(), 2);
    assert_eq!(sub.version, 7);
    assert_eq!(g.around("a", 2).nodes.len(), 4);
    assert!(g.around("zzz", 3).nodes.is_empty());
}

#[test]
fn check_names_what_is_wrong() {
    let ok = {
        let mut g = Graph::default();
        g.add_edge(edge("a", "b", EdgeKind::Influences, 0.9, "x"));
        g
    };
    assert!(ok.check().is_ok());
    let mut missing = ok.clone();
    missing.nodes.retain(|n| n.name != "b");
    let err = missing.check().unwrap_err().to_string();
    assert!(err.contains("no node named \"b\""), "{err}");
    let mut conf = ok.clone();
    conf.edges[0].confidence = 1.5;
    assert!(conf
        .check()
        .unwrap_err()
        .to_string()
        .contains("not in [0, 1]"));
    conf.edges[0].confidence = f64::NAN;
    assert!(conf.check().is_err());
    let mut dup = ok.clone();
    dup.nodes.push(Node::named("a"));
    assert!(dup
        .check()
        .unwrap_err()
        .to_string()
        .contains("appears twice"));
    let mut dup_edge = ok.clone();
    dup_edge.edges.push(dup_edge.edges[0].clone());
    assert!(dup_edge
        .check()
        .unwrap_err()
        .to_string()
        .contains("appears twice"));
    let mut no_ev = ok.clone();
    no_ev.edges[0].evidence.clear();
    assert!(no_ev
        .check()
        .unwrap_err()
        .to_string()
        .contains("no evidence"));
    let mut selfloop = ok;
    selfloop.add_edge(edge("a", "a", EdgeKind::Influences, 0.5, "x"));
    assert!(selfloop.check().unwrap_err().to_string().contains("itself"));
}

#[test]
fn json_shape_is_the_contract() {
    let mut g = Graph::default();
    g.add_edge(edge("a", "b", EdgeKind::ConflictsWith, 1.0, "x"));
    let v: serde_json::Value = serde_json::to_value(&g).unwrap();
    let e = &v["edges"][0];
    for field in ["from", "to", "kind", "confidence", "evidence"] {
        assert!(e.get(field).is_some(), "edge lacks {field}: {e}");
    }
    assert_eq!(e["kind"], "conflicts_with");
    assert_eq!(e["evidence"][0]["source"], "probe");
    assert!(v["nodes"].is_array());
    let back: Graph = serde_json::from_value(v).unwrap();
    assert_eq!(back, g);
}

const NASTY: &str = "a'b\"c\\d<e>&f\ng\u{1}h";

fn nasty_graph() -> Graph {
    let mut g = Graph::default();
    g.upsert_node(Node {
        name: NASTY.to_string(),
        value: Some("'); DROP ALL //".to_string()),
        time_ms: Some(1),
        author: Some("o'brien".to_string()),
        context: Some(Context::Postmaster),
    });
    g.add_edge(edge(
        NASTY,
        "metric:tps",
        EdgeKind::Influences,
        1.0,
        "x 'y' \\ z\r\n",
    ));
    g
}

#[test]
fn cypher_strings_are_escaped_and_statements_well_formed() {
    assert_eq!(cypher_string("it's"), r"'it\'s'");
    assert_eq!(cypher_string("a\\b"), r"'a\\b'");
    assert_eq!(cypher_string("l1\nl2\t\u{1}"), r"'l1\nl2\t\u0001'");
    let cy = nasty_graph().to_cypher();
    for line in cy.lines() {
        assert!(line.ends_with(';'), "{line}");
        // Outside string literals, no quote is left open: walk the line as Neo4j's lexer.
        let mut in_str = false;
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            match (in_str, c) {
                (true, '\\') => {
                    let next = chars.next().expect("an escape is complete");
                    assert!(
                        "\\'\"nrtbfu".contains(next),
                        "bad escape \\{next} in {line}"
                    );
                }
                (true, '\'') => in_str = false,
                (false, '\'') => in_str = true,
                (true, c) => assert!(c >= ' ', "raw control character in {line:?}"),
                _ => {}
            }
        }
        assert!(!in_str, "unterminated string in {line}");
    }
    assert!(cy.contains("MERGE (a)-[r:INFLUENCES]->(b)"));
    assert!(cy.contains("SET n.value = '\\'); DROP ALL //'"));
    assert!(cy.contains("n:Metric"));
    assert!(cy.contains("r.confidence = 1.0"));
}

#[test]
fn graphml_is_escaped_xml() {
    assert_eq!(xml_escape("<a & 'b'>"), "&lt;a &amp; &apos;b&apos;&gt;");
    assert_eq!(xml_escape("x\u{1}y"), "x\u{FFFD}y");
    let xml = nasty_graph().to_graphml();
    assert!(xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>"));
    // Every tag is closed in order (a small well-formedness check without an XML parser):
    // outside tags there is no raw `<` or `>`, and `&` only starts an entity.
    let mut stack: Vec<String> = Vec::new();
    let mut rest = xml.split_once("?>").unwrap().1;
    while let Some(start) = rest.find('<') {
        let text = &rest[..start];
        assert!(!text.contains('>'), "raw > in text {text:?}");
        for (i, _) in text.match_indices('&') {
            let ent = &text[i..text[i..].find(';').map(|j| i + j + 1).unwrap()];
            assert!(
                ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;", "&#9;", "&#10;", "&#13;"]
                    .contains(&ent),
                "bad entity {ent}"
            );
        }
        let end = rest[start..].find('>').unwrap() + start;
        let tag = &rest[start + 1..end];
        assert!(!tag.contains('<'), "raw < inside a tag: {tag}");
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(stack.pop().as_deref(), Some(name), "mismatched </{name}>");
        } else if !tag.ends_with('/') {
            stack.push(tag.split_whitespace().next().unwrap().to_string());
        }
        rest = &rest[end + 1..];
    }
    assert!(stack.is_empty(), "unclosed {stack:?}");
    assert!(xml.contains("<edge id=\"e0\""));
    assert!(xml.contains("a&apos;b&quot;c\\d&lt;e&gt;&amp;f&#10;g\u{FFFD}h"));
}
