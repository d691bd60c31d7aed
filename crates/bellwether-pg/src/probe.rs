//! Learning the dependency graph by probing: candidate values for each setting (bounds, enum
//! values, boolean flips) tried on a scratch cluster; a refused start names the settings
//! involved, which become `requires`/`conflicts_with` edges with the server's message as
//! evidence and a checkable condition where the pair's values say it.
//!
//! How a refusal becomes an edge: the trial sets one setting `K = V` on top of the scratch
//! cluster's defaults. When the server refuses and its error lines name another setting `O`
//! (as a word in a `FATAL`/`LOG`/`DETAIL`/`HINT` line), `K` and `O` are linked: `requires`
//! when the message says "X requires" / "X … must be" of the other, else `conflicts_with`.
//! The condition comes from messages of the form "A (n) must be less than B (m)" (a
//! `SumLess`), or from follow-up trials: `K = V` with each candidate of `O`; the values of `O`
//! that start give `K = V ⇒ O ∈ {…}` (an `Implies`). A refusal that names no other setting
//! (a value the machine cannot give, such as a huge `shared_buffers`) is counted, not linked.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use bellwether_config::graph::{Edge, EdgeKind, Evidence, EvidenceSource, Graph, Node};
use bellwether_config::rules::{shipped_rules, Constraint, Pred};
use bellwether_config::setting::{Catalog, Context, Setting, VarType};

use bellwether_config::simulate::StartTrial;

use crate::scratch::{Scratch, FORCED};
use crate::PgError;

/// What to probe.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// Only these settings (and what their failures name); empty = every changeable setting.
    pub keys: Vec<String>,
    /// Trial starts run at most this many at a time (each on its own scratch copy).
    pub parallel: usize,
}

/// What probing did, for the report and the benchmark.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ProbeStats {
    pub settings: usize,
    pub trials: usize,
    pub refused: usize,
    pub elapsed_ms: u64,
    /// Candidates not started because the server would ask for more shared memory than
    /// [`SHARED_MEMORY_CAP_MB`].
    #[serde(default)]
    pub skipped: usize,
}

/// A trial start that would ask for more shared memory than this (MB, as `postgres -C
/// shared_memory_size` computes it without allocating, PostgreSQL 15+) is not made: a maximum
/// `max_connections` would otherwise take gigabytes of the host's memory for a probe.
pub const SHARED_MEMORY_CAP_MB: f64 = 1024.0;

/// One trial: a setting and a candidate value.
#[derive(Debug, Clone)]
struct Candidate {
    key: String,
    value: String,
}

/// The candidate values of one setting: its bounds, `0` and `1` when in range, each enum
/// value, the other boolean; never the current value. Strings are not guessed.
pub fn candidates(s: &Setting) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    match s.vartype {
        VarType::Bool => out.extend(["on", "off"].map(String::from)),
        VarType::Enum => out.extend(s.enumvals.iter().cloned()),
        VarType::Integer | VarType::Real => {
            let fmt = |x: f64| {
                if s.vartype == VarType::Integer {
                    format!("{}", x as i64)
                } else {
                    format!("{x}")
                }
            };
            if let (Some(min), Some(max)) = (s.min, s.max) {
                out.push(fmt(min));
                out.push(fmt(max));
                for x in [0.0, 1.0] {
                    if x > min && x < max {
                        out.push(fmt(x));
                    }
                }
            }
        }
        VarType::String => {}
    }
    let current = s.value.to_ascii_lowercase();
    let mut seen = BTreeSet::new();
    out.retain(|v| v.to_ascii_lowercase() != current && seen.insert(v.clone()));
    out
}

/// The settings probing changes: every one a trial can set (not `internal`, not the ones a
/// trial forces), or `keys` when given.
pub fn probed_keys(catalog: &Catalog, keys: &[String]) -> Vec<String> {
    catalog
        .settings
        .values()
        .filter(|s| s.context != Context::Internal && !FORCED.contains(&s.name.as_str()))
        .filter(|s| keys.is_empty() || keys.iter().any(|k| k.eq_ignore_ascii_case(&s.name)))
        .map(|s| s.name.clone())
        .collect()
}

/// Runs `trials` on `scratch`, `parallel` at a time, in order of the input. `None` for a trial
/// not made (over the memory cap). With `precheck`, numbers are first given to `postgres -C
/// shared_memory_size`: a refusal there is the trial's refusal (no start needed), a size over
/// the cap skips the start.
fn run_trials(
    scratch: &Scratch,
    trials: &[BTreeMap<String, String>],
    parallel: usize,
    precheck: &(dyn Fn(&BTreeMap<String, String>) -> bool + Sync),
) -> Result<Vec<Option<StartTrial>>, PgError> {
    let next = AtomicUsize::new(0);
    type Slot = Option<Result<Option<StartTrial>, PgError>>;
    let results: Mutex<Vec<Slot>> = Mutex::new((0..trials.len()).map(|_| None).collect());
    let one = |values: &BTreeMap<String, String>| -> Result<Option<StartTrial>, PgError> {
        if precheck(values) {
            let t0 = std::time::Instant::now();
            match scratch.show("shared_memory_size", values)? {
                Ok(mb) => {
                    if mb
                        .trim()
                        .parse::<f64>()
                        .is_ok_and(|mb| mb > SHARED_MEMORY_CAP_MB)
                    {
                        return Ok(None);
                    }
                }
                Err(message) => {
                    return Ok(Some(StartTrial {
                        started: false,
                        message,
                        ms: t0.elapsed().as_millis() as u64,
                    }))
                }
            }
        }
        scratch.try_start(values).map(Some)
    };
    std::thread::scope(|scope| {
        for _ in 0..parallel.max(1) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= trials.len() {
                    break;
                }
                let r = one(&trials[i]);
                results.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(r);
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                Err(PgError::Io {
                    what: "a trial start".into(),
                    message: "no result".into(),
                })
            })
        })
        .collect()
}

/// The lines of a refusal that carry its reason (not the start-up chatter).
fn reason_lines(message: &str) -> Vec<&str> {
    message
        .lines()
        .filter(|l| {
            ["FATAL:", "PANIC:", "ERROR:", "DETAIL:", "HINT:"]
                .iter()
                .any(|m| l.contains(m))
                // Plain lines the postmaster writes before logging starts
                // (`postgres: superuser_reserved_connections (3) must be less than …`).
                || !["LOG:", "WARNING:", "NOTICE:", "INFO:", "DEBUG"]
                    .iter()
                    .any(|m| l.contains(m))
                || (l.contains("LOG:")
                    && ["invalid", "must", "requires", "cannot", "outside", "out of range", "not supported"]
                        .iter()
                        .any(|w| l.contains(w)))
        })
        .collect()
}

/// The settings a refusal names (words of its reason lines that are setting names).
pub fn named_settings(message: &str, catalog: &Catalog) -> BTreeSet<String> {
    let lower: BTreeMap<String, &String> = catalog
        .settings
        .keys()
        .map(|k| (k.to_ascii_lowercase(), k))
        .collect();
    let mut out = BTreeSet::new();
    // A HINT names what could be changed (`reducing shared_buffers or max_connections`), not
    // what conflicts: its settings are not linked.
    for line in reason_lines(message)
        .into_iter()
        .filter(|l| !l.contains("HINT:"))
    {
        // The text after the severity, so the log prefix's words do not count.
        let text = line.split_once(':').map(|(_, rest)| rest).unwrap_or(line);
        for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.')) {
            let word = word.trim_matches('.');
            if word.len() < 4 || !word.contains('_') && !lower.contains_key(word) {
                continue;
            }
            if let Some(k) = lower.get(&word.to_ascii_lowercase()) {
                out.insert((*k).clone());
            }
        }
    }
    out
}

/// `A (n) must be less than B (m)` or `A (n) plus C (k) must be less than B (m)` → a `SumLess`.
pub fn sum_less_from(message: &str, catalog: &Catalog) -> Option<Constraint> {
    for line in reason_lines(message) {
        let Some((lhs, rhs)) = line.split_once(" must be less than ") else {
            continue;
        };
        let name_before_paren = |s: &str| -> Option<String> {
            let head = s.split('(').next()?.trim();
            let word = head
                .rsplit(|c: char| c.is_whitespace() || c == ':')
                .next()?;
            catalog.get(word).map(|s| s.name.clone())
        };
        let lhs_names: Vec<String> = lhs.split(" plus ").filter_map(name_before_paren).collect();
        let rhs_name = name_before_paren(rhs)?;
        if !lhs_names.is_empty() {
            return Some(Constraint::SumLess {
                lhs: lhs_names,
                rhs: rhs_name,
            });
        }
    }
    None
}

/// Whether the refusal says `from` requires the other (`X requires`, `X … must be`).
fn says_requires(message: &str, from: &str) -> bool {
    reason_lines(message).iter().any(|l| {
        l.find(from).is_some_and(|at| {
            let rest = &l[at..];
            rest.contains("requires")
                || rest.contains(" must be set")
                || rest.contains("must be enabled")
        })
    })
}

/// A refused trial and what it named.
#[derive(Debug, Clone)]
struct Refusal {
    cand: Candidate,
    message: String,
    others: BTreeSet<String>,
}

/// Learns the graph of `catalog`'s instance: the shipped rules
/// (`bellwether_config::rules::shipped_rules`) plus every edge probing found.
pub fn learn(
    scratch: &Scratch,
    catalog: &Catalog,
    opts: &ProbeOptions,
) -> Result<(Graph, ProbeStats), PgError> {
    let started = std::time::Instant::now();
    let keys = probed_keys(catalog, &opts.keys);
    let mut cands = Vec::new();
    for k in &keys {
        for v in candidates(&catalog.settings[k]) {
            cands.push(Candidate {
                key: k.clone(),
                value: v,
            });
        }
    }
    let trials: Vec<BTreeMap<String, String>> = cands
        .iter()
        .map(|c| BTreeMap::from([(c.key.clone(), c.value.clone())]))
        .collect();
    // `postgres -C shared_memory_size` (PostgreSQL 15+) prices a start without making it.
    let can_price = matches!(
        scratch.show("shared_memory_size", &BTreeMap::new()),
        Ok(Ok(_))
    );
    let numeric = |values: &BTreeMap<String, String>| {
        can_price
            && values.keys().any(|k| {
                catalog
                    .get(k)
                    .is_some_and(|s| matches!(s.vartype, VarType::Integer | VarType::Real))
            })
    };
    let results = run_trials(scratch, &trials, opts.parallel, &numeric)?;
    let mut stats = ProbeStats {
        settings: keys.len(),
        trials: results.iter().filter(|r| r.is_some()).count(),
        skipped: results.iter().filter(|r| r.is_none()).count(),
        ..ProbeStats::default()
    };
    let mut refusals = Vec::new();
    let refused_alone: BTreeSet<(String, String)> = cands
        .iter()
        .zip(&results)
        .filter(|(_, r)| r.as_ref().is_some_and(|r| !r.started))
        .map(|(c, _)| (c.key.clone(), c.value.clone()))
        .collect();
    for (cand, r) in cands.iter().zip(&results) {
        let Some(r) = r else { continue };
        if r.started {
            continue;
        }
        stats.refused += 1;
        let mut others = named_settings(&r.message, catalog);
        others.remove(&cand.key);
        others.retain(|o| !FORCED.contains(&o.as_str()));
        tracing::debug!(setting = %cand.key, value = %cand.value, names = ?others, "Trial start refused.");
        if !others.is_empty() {
            refusals.push(Refusal {
                cand: cand.clone(),
                message: r.message.clone(),
                others,
            });
        }
    }

    // Follow-up trials: the refused value with each candidate of the other setting.
    let mut follow: Vec<(usize, String, String)> = Vec::new();
    for (i, r) in refusals.iter().enumerate() {
        for o in &r.others {
            let Some(os) = catalog.get(o) else { continue };
            if os.context == Context::Internal {
                continue;
            }
            for v in candidates(os) {
                follow.push((i, o.clone(), v));
            }
        }
    }
    let follow_trials: Vec<BTreeMap<String, String>> = follow
        .iter()
        .map(|(i, o, v)| {
            let c = &refusals[*i].cand;
            BTreeMap::from([(c.key.clone(), c.value.clone()), (o.clone(), v.clone())])
        })
        .collect();
    let follow_results = run_trials(scratch, &follow_trials, opts.parallel, &numeric)?;
    stats.trials += follow_results.iter().filter(|r| r.is_some()).count();
    stats.skipped += follow_results.iter().filter(|r| r.is_none()).count();
    stats.refused += follow_results
        .iter()
        .filter(|r| r.as_ref().is_some_and(|r| !r.started))
        .count();
    let mut starts_with: BTreeMap<(usize, String), Vec<String>> = BTreeMap::new();
    for ((i, o, v), r) in follow.iter().zip(&follow_results) {
        let entry = starts_with.entry((*i, o.clone())).or_default();
        if r.as_ref().is_some_and(|r| r.started) {
            entry.push(v.clone());
        }
    }

    let mut edges = Vec::new();
    for (i, r) in refusals.iter().enumerate() {
        for o in &r.others {
            let ok_values = starts_with
                .get(&(i, o.clone()))
                .cloned()
                .unwrap_or_default();
            let condition = sum_less_from(&r.message, catalog)
                .filter(|c| {
                    bellwether_config::rules::mentions(c, o)
                        && bellwether_config::rules::mentions(c, &r.cand.key)
                })
                .or_else(|| {
                    (!ok_values.is_empty()).then(|| Constraint::Implies {
                        if_key: r.cand.key.clone(),
                        if_pred: Pred::Eq(r.cand.value.clone()),
                        then_key: o.clone(),
                        then_pred: if ok_values.len() == 1 {
                            Pred::Eq(ok_values[0].clone())
                        } else {
                            Pred::In(ok_values.clone())
                        },
                    })
                });
            let (from, to, kind) = if says_requires(&r.message, o) {
                (o.clone(), r.cand.key.clone(), EdgeKind::Requires)
            } else if says_requires(&r.message, &r.cand.key) {
                (r.cand.key.clone(), o.clone(), EdgeKind::Requires)
            } else {
                (r.cand.key.clone(), o.clone(), EdgeKind::ConflictsWith)
            };
            let reason = reason_lines(&r.message)
                .iter()
                .map(|l| l.split_once("] ").map(|(_, rest)| rest).unwrap_or(l).trim())
                .collect::<Vec<_>>()
                .join(" / ");
            let mut detail = format!(
                "trial start with {} = {} (other settings at the scratch defaults) refused: {}",
                r.cand.key,
                r.cand.value,
                crate::tail(&reason, 600)
            );
            if !ok_values.is_empty() {
                detail.push_str(&format!(
                    "; it starts with {o} = {}",
                    ok_values.join(" or ")
                ));
            }
            edges.push(Edge {
                from,
                to,
                kind,
                confidence: if condition.is_some() { 0.95 } else { 0.8 },
                evidence: vec![Evidence {
                    source: EvidenceSource::Probe,
                    detail,
                }],
                condition,
            });
        }
    }

    // Second order: a refused value made to start by another setting's value is a new base on
    // which every restart-context setting's candidates are tried again, so constraints between
    // two non-default values show (`wal_level = minimal` with `archive_mode = on` refuses only
    // once `max_wal_senders = 0` lets `wal_level = minimal` start at all).
    // (base, base key, its value, setting tried, its value)
    type Second = (BTreeMap<String, String>, String, String, String, String);
    let mut second: Vec<Second> = Vec::new();
    for (i, r) in refusals.iter().enumerate() {
        for o in &r.others {
            let Some(ok) = starts_with.get(&(i, o.clone())).and_then(|v| v.first()) else {
                continue;
            };
            let base = BTreeMap::from([
                (r.cand.key.clone(), r.cand.value.clone()),
                (o.clone(), ok.clone()),
            ]);
            for s in catalog.settings.values() {
                if s.context != Context::Postmaster
                    || base.contains_key(&s.name)
                    || FORCED.contains(&s.name.as_str())
                    || !matches!(s.vartype, VarType::Bool | VarType::Enum)
                {
                    continue;
                }
                for v in candidates(s) {
                    // A value that refuses on its own says nothing about the base.
                    if refused_alone.contains(&(s.name.clone(), v.clone())) {
                        continue;
                    }
                    second.push((
                        base.clone(),
                        r.cand.key.clone(),
                        r.cand.value.clone(),
                        s.name.clone(),
                        v,
                    ));
                }
            }
        }
    }
    let second_trials: Vec<BTreeMap<String, String>> = second
        .iter()
        .map(|(base, _, _, s, v)| {
            let mut t = base.clone();
            t.insert(s.clone(), v.clone());
            t
        })
        .collect();
    let second_results = run_trials(scratch, &second_trials, opts.parallel, &numeric)?;
    stats.trials += second_results.iter().filter(|r| r.is_some()).count();
    stats.skipped += second_results.iter().filter(|r| r.is_none()).count();
    // (base key, its value, setting) → (refused values with a message naming the base key,
    // values that started).
    type Seen = (Vec<(String, String)>, Vec<String>);
    let mut second_seen: BTreeMap<(String, String, String), Seen> = BTreeMap::new();
    for ((base, k, kv, s, v), r) in second.iter().zip(&second_results) {
        let Some(r) = r else { continue };
        let entry = second_seen
            .entry((k.clone(), kv.clone(), s.clone()))
            .or_default();
        if r.started {
            entry.1.push(v.clone());
            continue;
        }
        stats.refused += 1;
        let named = named_settings(&r.message, catalog);
        if named.contains(k) || named.contains(s) {
            let _ = base;
            entry.0.push((v.clone(), r.message.clone()));
        }
    }
    for ((k, kv, s), (refused, started)) in second_seen {
        let Some((v, message)) = refused.first() else {
            continue;
        };
        let current = catalog.settings[&s].value.clone();
        let mut allowed: Vec<String> = std::iter::once(current).chain(started).collect();
        allowed.dedup();
        let reason = reason_lines(message)
            .iter()
            .map(|l| l.split_once("] ").map(|(_, rest)| rest).unwrap_or(l).trim())
            .collect::<Vec<_>>()
            .join(" / ");
        edges.push(Edge {
            from: s.clone(),
            to: k.clone(),
            kind: if says_requires(message, &s) {
                EdgeKind::Requires
            } else {
                EdgeKind::ConflictsWith
            },
            confidence: 0.9,
            evidence: vec![Evidence {
                source: EvidenceSource::Probe,
                detail: format!(
                    "trial start with {k} = {kv} (made to start by the settings it needs) and {s} = {v} refused: {}",
                    crate::tail(&reason, 600)
                ),
            }],
            condition: Some(Constraint::Implies {
                if_key: k.clone(),
                if_pred: Pred::Eq(kv.clone()),
                then_key: s.clone(),
                then_pred: if allowed.len() == 1 {
                    Pred::Eq(allowed[0].clone())
                } else {
                    Pred::In(allowed)
                },
            }),
        });
    }

    let mut graph = Graph::default();
    let nodes: Vec<Node> = catalog
        .settings
        .values()
        .map(|s| Node {
            name: s.name.clone(),
            value: Some(s.value.clone()),
            time_ms: None,
            author: None,
            context: Some(s.context),
        })
        .collect();
    let rule_edges: Vec<Edge> = shipped_rules(catalog.server_version_num)
        .into_iter()
        .map(|r| r.edge)
        .collect();
    graph.merge(nodes, rule_edges.into_iter().chain(edges).collect());
    stats.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok((graph, stats))
}
