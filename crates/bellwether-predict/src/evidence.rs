//! Direct evidence: what a host and its peers did with this very update and version.
//!
//! The population model learns from the whole history, so a fault that only a handful of hosts
//! ever met (three hosts of one group, among 1,500 rows) is too rare for it to split on. A
//! person would still never retry a host that just failed the same version. This module is that
//! person's reasoning, written as a Beta-Binomial update:
//!
//! - the **prior** is the model's probability `p₀` with a strength of
//!   [`EvidenceParams::prior_strength`] pseudo-outcomes: Beta(`s·p₀`, `s·(1−p₀)`);
//! - the host's **own** outcomes for the same update and version each add
//!   [`EvidenceParams::own_weight`] to the failures or successes;
//! - its **peers'** live outcomes (other hosts sharing one label or dependency-package value
//!   with it) each add [`EvidenceParams::peer_weight`]; imported history rows are the model's
//!   own training data and never peers. Of the keys the host has, the one that best
//!   separates failures from successes among the peers' outcomes of this version (information gain)
//!   names the peer group, so a fault keyed on `group=edge` is read through `group`, not through
//!   a label every host shares;
//! - every outcome's weight decays with its age (half-life [`EvidenceParams::half_life_ms`]),
//!   and an imported history row weighs [`EvidenceParams::import_weight`] of a live one.
//!
//! The posterior mean is the new probability. Its change in log-odds is split into one factor
//! for the host's own outcomes and one for its peers' (applied in that order), so the
//! invariant of every prediction holds with evidence: `base_value + Σ factors = logit(p)`.
//!
//! This module never reads a clock or a store: the caller passes `now_ms` and the outcomes.

use std::collections::{BTreeMap, BTreeSet};

use bellwether_model::Unit;

/// The feature name of the host's own evidence among the contributing factors.
pub const OWN_FACTOR: &str = "evidence:host";
/// The prefix of the peer evidence factor's name (`evidence:peers:group=edge`).
pub const PEER_FACTOR_PREFIX: &str = "evidence:peers:";

/// How much the evidence weighs against the model. The defaults are documented in
/// docs/predict.md ("Direct evidence").
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvidenceParams {
    /// The prior's weight, in outcomes. 2: the model's probability counts as two observations.
    pub prior_strength: f64,
    /// The weight of one of the host's own live outcomes. 3: one own failure outweighs the
    /// prior (from p₀ = 0.05 it gives (0.1 + 3) / 5 = 0.62).
    pub own_weight: f64,
    /// The weight of one live outcome of a peer. 1: three of three peers failing give
    /// (0.1 + 3) / 5 = 0.62 from p₀ = 0.05.
    pub peer_weight: f64,
    /// The weight of an imported history row of the host itself relative to a live outcome.
    /// 0.25. (Imported rows of other hosts are not peer evidence at all.)
    pub import_weight: f64,
    /// The age at which an outcome weighs half as much. 14 days.
    pub half_life_ms: i64,
}

impl Default for EvidenceParams {
    fn default() -> Self {
        EvidenceParams {
            prior_strength: 2.0,
            own_weight: 3.0,
            peer_weight: 1.0,
            import_weight: 0.25,
            half_life_ms: 14 * 24 * 3600 * 1000,
        }
    }
}

/// One outcome of the same update and version as the subject's.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub host: String,
    /// The rollout id or the imported deployment id.
    pub deployment: String,
    pub at_ms: i64,
    pub failed: bool,
    /// A rollout of this server (true) or an imported history row (false).
    pub live: bool,
    /// The host's peer keys then: `label:group` → `edge`, `pkg:glibc` → `2.36`.
    pub groups: BTreeMap<String, String>,
}

/// The host whose risk the evidence updates.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub host: &'a str,
    pub update: &'a str,
    pub version: &'a str,
    /// The host's peer keys now (same shape as [`Outcome::groups`]).
    pub groups: &'a BTreeMap<String, String>,
}

/// An operator's forgiveness of a host's evidence for this update and version: the host's
/// outcomes recorded at or before `at_ms` count neither for it nor as a peer's, and none of
/// the evidence recorded before then counts for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forgiven {
    pub host: String,
    pub at_ms: i64,
}

/// One evidence term of a prediction.
#[derive(Debug, Clone, PartialEq)]
pub struct EvidenceFactor {
    /// [`OWN_FACTOR`] or [`PEER_FACTOR_PREFIX`] followed by `key=value`.
    pub feature: String,
    /// Change of the log-odds; positive pushes toward failure.
    pub contribution: f64,
    /// Weighted failures and successes behind it.
    pub failures: f64,
    pub successes: f64,
    /// What a person reads: "failed version 2 on 2026-12-05 (rollout r-1)".
    pub explanation: String,
}

/// The model's probability updated by the evidence.
#[derive(Debug, Clone, PartialEq)]
pub struct Posterior {
    pub probability: Unit,
    /// Empty when no outcome of this version concerns the host.
    pub factors: Vec<EvidenceFactor>,
}

fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

fn logit(p: f64) -> f64 {
    p.ln() - (-p).ln_1p()
}

/// The outcome's weight relative to one fresh live outcome.
fn decay(o: &Outcome, now_ms: i64, params: &EvidenceParams) -> f64 {
    let age = (now_ms - o.at_ms).max(0) as f64;
    let half = (params.half_life_ms.max(1)) as f64;
    let source = if o.live { 1.0 } else { params.import_weight };
    source * 0.5f64.powf(age / half)
}

/// Binary entropy of weighted counts, in bits (0 for an empty set).
fn entropy(f: f64, s: f64) -> f64 {
    let n = f + s;
    if n <= 0.0 {
        return 0.0;
    }
    [f / n, s / n]
        .iter()
        .filter(|p| **p > 0.0)
        .map(|p| -p * p.log2())
        .sum()
}

/// `YYYY-MM-DD` (UTC) of a Unix time in milliseconds.
pub fn date(ms: i64) -> String {
    // Howard Hinnant's civil_from_days.
    let z = ms.div_euclid(86_400_000) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// `label:group` reads `group`; other keys read as they are (`pkg:glibc`).
fn key_text(key: &str) -> &str {
    key.strip_prefix("label:").unwrap_or(key)
}

/// Updates the model's log-odds `prior_log_odds` for `subject` with `outcomes` (every outcome
/// of the subject's update and version; others are the caller's to leave out). Pure: the same
/// input gives the same posterior.
pub fn update(
    prior_log_odds: f64,
    subject: Subject<'_>,
    outcomes: &[Outcome],
    forgiven: &[Forgiven],
    now_ms: i64,
    params: &EvidenceParams,
) -> Posterior {
    let z0 = if prior_log_odds.is_nan() {
        0.0
    } else {
        prior_log_odds.clamp(-700.0, 700.0)
    };
    // Forgiven outcomes are gone for everyone; a forgiven subject also sets aside everything
    // recorded up to its forgiveness.
    let subject_since = forgiven
        .iter()
        .filter(|f| f.host == subject.host)
        .map(|f| f.at_ms)
        .max();
    let kept: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| {
            !forgiven
                .iter()
                .any(|f| f.host == o.host && o.at_ms <= f.at_ms)
        })
        .filter(|o| subject_since.is_none_or(|t| o.at_ms > t))
        .collect();
    let weight = |o: &Outcome| decay(o, now_ms, params);

    // The host's own outcomes.
    let own: Vec<&Outcome> = kept
        .iter()
        .copied()
        .filter(|o| o.host == subject.host)
        .collect();
    let (mut own_f, mut own_s) = (0.0, 0.0);
    for o in &own {
        let w = params.own_weight * weight(o);
        if o.failed {
            own_f += w;
        } else {
            own_s += w;
        }
    }

    // The peer group: of the subject's keys, the one that best separates the other hosts'
    // live outcomes (the subject's own are left out, so they never move its peer group).
    // Imported rows are never peers: they are the model's own training data, which it already
    // reads through features a label cannot see (a peer group `role=web` of a thousand
    // imported successes would otherwise outvote what the model learnt about libssl).
    let mut by_key: BTreeMap<&str, BTreeMap<&str, (f64, f64)>> = BTreeMap::new();
    let (mut all_f, mut all_s) = (0.0, 0.0);
    for o in kept.iter().filter(|o| o.live && o.host != subject.host) {
        let w = weight(o);
        if o.failed {
            all_f += w;
        } else {
            all_s += w;
        }
        for (k, v) in &o.groups {
            if subject.groups.contains_key(k) {
                let e = by_key
                    .entry(k.as_str())
                    .or_default()
                    .entry(v.as_str())
                    .or_default();
                if o.failed {
                    e.0 += w;
                } else {
                    e.1 += w;
                }
            }
        }
    }
    let h_all = entropy(all_f, all_s);
    let mut keys: Vec<(f64, &str)> = by_key
        .iter()
        .map(|(k, values)| {
            let n: f64 = values.values().map(|(f, s)| f + s).sum();
            let within: f64 = values
                .values()
                .map(|(f, s)| (f + s) / n.max(f64::MIN_POSITIVE) * entropy(*f, *s))
                .sum();
            (h_all - within, *k)
        })
        .collect();
    keys.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    let mut peers: Option<(&str, &str, Vec<&Outcome>)> = None;
    for (_, k) in keys {
        let v = subject.groups[k].as_str();
        let group: Vec<&Outcome> = kept
            .iter()
            .copied()
            .filter(|o| {
                o.live && o.host != subject.host && o.groups.get(k).map(String::as_str) == Some(v)
            })
            .collect();
        if group.iter().any(|o| weight(o) > 0.0) {
            peers = Some((k, v, group));
            break;
        }
    }
    let (mut peer_f, mut peer_s) = (0.0, 0.0);
    if let Some((_, _, group)) = &peers {
        for o in group {
            let w = params.peer_weight * weight(o);
            if o.failed {
                peer_f += w;
            } else {
                peer_s += w;
            }
        }
    }

    // The Beta-Binomial update, own outcomes first, then peers'.
    let s = params.prior_strength.max(f64::MIN_POSITIVE);
    let p0 = sigmoid(z0);
    let (a0, b0) = (s * p0, s * (1.0 - p0));
    let mut factors = Vec::new();
    let mut z = z0;
    if own_f + own_s > 0.0 {
        let p1 = (a0 + own_f) / (a0 + b0 + own_f + own_s);
        let z1 = logit(p1);
        factors.push(EvidenceFactor {
            feature: OWN_FACTOR.into(),
            contribution: z1 - z,
            failures: own_f,
            successes: own_s,
            explanation: own_text(subject, &own),
        });
        z = z1;
    }
    if let Some((k, v, group)) = &peers {
        if peer_f + peer_s > 0.0 {
            let p2 = (a0 + own_f + peer_f) / (a0 + b0 + own_f + own_s + peer_f + peer_s);
            let z2 = logit(p2);
            factors.push(EvidenceFactor {
                feature: format!("{PEER_FACTOR_PREFIX}{}={v}", key_text(k)),
                contribution: z2 - z,
                failures: peer_f,
                successes: peer_s,
                explanation: peer_text(subject, k, v, &own, group),
            });
        }
    }
    let total: f64 = z0 + factors.iter().map(|f| f.contribution).sum::<f64>();
    Posterior {
        probability: Unit::saturating(sigmoid(total)),
        factors,
    }
}

/// "failed version 2 on 2026-12-05 (rollout r-1); succeeded on version 2 on 2026-12-06 (…)".
fn own_text(subject: Subject<'_>, own: &[&Outcome]) -> String {
    let mut sorted: Vec<&&Outcome> = own.iter().collect();
    sorted.sort_by(|a, b| {
        b.at_ms
            .cmp(&a.at_ms)
            .then_with(|| a.deployment.cmp(&b.deployment))
    });
    let shown: Vec<String> = sorted
        .iter()
        .take(3)
        .map(|o| {
            format!(
                "{} version {} on {} ({} {})",
                if o.failed { "failed" } else { "succeeded on" },
                subject.version,
                date(o.at_ms),
                if o.live {
                    "rollout"
                } else {
                    "imported deployment"
                },
                o.deployment
            )
        })
        .collect();
    let mut text = shown.join("; ");
    if sorted.len() > 3 {
        let failed = sorted.iter().filter(|o| o.failed).count();
        text.push_str(&format!(
            "; {failed} of {} attempts failed in all",
            sorted.len()
        ));
    }
    text
}

/// "3 of 3 hosts with group=edge failed version 2" (the subject counted among them).
fn peer_text(
    subject: Subject<'_>,
    key: &str,
    value: &str,
    own: &[&Outcome],
    group: &[&Outcome],
) -> String {
    let hosts: BTreeSet<&str> = own
        .iter()
        .chain(group.iter())
        .map(|o| o.host.as_str())
        .collect();
    let failed: BTreeSet<&str> = own
        .iter()
        .chain(group.iter())
        .filter(|o| o.failed)
        .map(|o| o.host.as_str())
        .collect();
    format!(
        "{} of {} hosts with {}={value} failed version {} of {}",
        failed.len(),
        hosts.len(),
        key_text(key),
        subject.version,
        subject.update
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DAY: i64 = 86_400_000;
    const NOW: i64 = 20_427 * DAY; // 2025-12-05

    fn groups(g: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("label:group".to_string(), g.to_string()),
            ("label:env".to_string(), "prod".to_string()),
        ])
    }

    fn outcome(host: &str, g: &str, failed: bool, age_days: i64, live: bool) -> Outcome {
        Outcome {
            host: host.into(),
            deployment: "r-1".into(),
            at_ms: NOW - age_days * DAY,
            failed,
            live,
            groups: groups(g),
        }
    }

    fn posterior(p0: f64, host: &str, g: &str, outcomes: &[Outcome]) -> Posterior {
        let gs = groups(g);
        update(
            logit(p0),
            Subject {
                host,
                update: "websvc",
                version: "2",
                groups: &gs,
            },
            outcomes,
            &[],
            NOW,
            &EvidenceParams::default(),
        )
    }

    /// The fleet of the issue: three edge hosts failed version 2, six core hosts did not.
    fn fleet() -> Vec<Outcome> {
        let mut v = Vec::new();
        for i in 0..3 {
            v.push(outcome(&format!("edge-{i}"), "edge", true, 0, true));
        }
        for i in 0..6 {
            v.push(outcome(&format!("core-{i}"), "core", false, 0, true));
        }
        v
    }

    #[test]
    fn dates_are_utc_calendar_days() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(NOW), "2025-12-05");
        assert_eq!(date(951_782_400_000), "2000-02-29");
        assert_eq!(date(-DAY), "1969-12-31");
    }

    #[test]
    fn three_of_three_failures_in_a_group_make_the_next_attempt_high_risk() {
        let post = posterior(0.025, "edge-0", "edge", &fleet());
        assert!(post.probability.get() >= 0.5, "{post:?}");
        assert_eq!(post.factors[0].feature, OWN_FACTOR);
        assert!(post.factors[0]
            .explanation
            .starts_with("failed version 2 on 2025-12-05 (rollout r-1)"));
        assert_eq!(post.factors[1].feature, "evidence:peers:group=edge");
        assert_eq!(
            post.factors[1].explanation,
            "3 of 3 hosts with group=edge failed version 2 of websvc"
        );
        // An edge host that was never tried: its peers alone make it high risk.
        let untried = posterior(0.025, "edge-9", "edge", &fleet());
        assert!(untried.probability.get() >= 0.5, "{untried:?}");
        assert_eq!(untried.factors.len(), 1);
        // A core host is read through `group` (which separates), not `env` (which all share).
        let core = posterior(0.025, "core-9", "core", &fleet());
        assert!(core.probability.get() < 0.025, "{core:?}");
        assert_eq!(core.factors[0].feature, "evidence:peers:group=core");
    }

    #[test]
    fn one_success_among_twenty_failures_does_not_undo_them() {
        let mut v: Vec<Outcome> = (0..20)
            .map(|i| outcome(&format!("edge-{i}"), "edge", true, 1, true))
            .collect();
        v.push(outcome("edge-20", "edge", false, 0, true));
        let post = posterior(0.025, "edge-20", "edge", &v);
        assert!(post.probability.get() >= 0.5, "{post:?}");
        let mut own: Vec<Outcome> = (0..20)
            .map(|i| Outcome {
                deployment: format!("r-{i}"),
                ..outcome("h", "edge", true, 1, true)
            })
            .collect();
        own.push(outcome("h", "edge", false, 0, true));
        assert!(posterior(0.025, "h", "edge", &own).probability.get() > 0.9);
    }

    #[test]
    fn old_and_imported_outcomes_weigh_less_than_live_ones() {
        let live = posterior(0.05, "h", "edge", &[outcome("h", "edge", true, 0, true)]);
        let old = posterior(0.05, "h", "edge", &[outcome("h", "edge", true, 14, true)]);
        let imported = posterior(0.05, "h", "edge", &[outcome("h", "edge", true, 0, false)]);
        assert!(live.probability.get() >= 0.5, "{live:?}");
        assert!(
            (old.factors[0].failures - 1.5).abs() < 1e-9,
            "one half-life"
        );
        assert!(old.probability.get() < live.probability.get());
        assert!(imported.probability.get() < old.probability.get());
    }

    #[test]
    fn forgiven_evidence_is_ignored_until_new_evidence_arrives() {
        let gs = groups("edge");
        let subject = Subject {
            host: "edge-0",
            update: "websvc",
            version: "2",
            groups: &gs,
        };
        let forgiven = [Forgiven {
            host: "edge-0".into(),
            at_ms: NOW,
        }];
        let p = EvidenceParams::default();
        let post = update(logit(0.025), subject, &fleet(), &forgiven, NOW, &p);
        assert!(post.factors.is_empty(), "{post:?}");
        assert!((post.probability.get() - 0.025).abs() < 1e-12);
        // The forgiven host no longer counts against its peers either.
        let peer = update(
            logit(0.025),
            Subject {
                host: "edge-1",
                ..subject
            },
            &fleet(),
            &forgiven,
            NOW,
            &p,
        );
        assert_eq!(
            peer.factors[1].explanation,
            "2 of 2 hosts with group=edge failed version 2 of websvc"
        );
        // A failure after the forgiveness counts again.
        let mut later = fleet();
        later.push(Outcome {
            deployment: "r-2".into(),
            at_ms: NOW + 1,
            ..outcome("edge-0", "edge", true, 0, true)
        });
        let again = update(logit(0.025), subject, &later, &forgiven, NOW + 1, &p);
        assert_eq!(again.factors.len(), 1);
        assert!(again.probability.get() >= 0.5);
    }

    #[test]
    fn imported_rows_of_other_hosts_are_never_peers() {
        let history: Vec<Outcome> = (0..1000)
            .map(|i| outcome(&format!("line-{i}"), "edge", false, 0, false))
            .collect();
        let post = posterior(0.7, "edge-9", "edge", &history);
        assert!(post.factors.is_empty(), "{post:?}");
        assert!((post.probability.get() - 0.7).abs() < 1e-12);
    }

    #[test]
    fn no_evidence_leaves_the_model_alone() {
        let post = posterior(0.3, "h", "edge", &[]);
        assert!(post.factors.is_empty());
        assert!((post.probability.get() - 0.3).abs() < 1e-12);
    }

    fn arb_outcomes() -> impl Strategy<Value = Vec<Outcome>> {
        prop::collection::vec(
            (0..6usize, 0..3usize, any::<bool>(), 0..60i64, any::<bool>()),
            0..40,
        )
        .prop_map(|v| {
            v.into_iter()
                .map(|(h, g, failed, age, live)| {
                    outcome(&format!("h{h}"), ["a", "b", "c"][g], failed, age, live)
                })
                .collect()
        })
    }

    proptest! {
        /// The invariant of every prediction: the factors add up to the log-odds.
        #[test]
        fn factors_add_up_to_the_log_odds(z0 in -8.0f64..8.0, v in arb_outcomes(), h in 0..7usize) {
            let host = format!("h{h}");
            let gs = groups("a");
            let post = update(z0, Subject { host: &host, update: "u", version: "2", groups: &gs }, &v, &[], NOW, &EvidenceParams::default());
            let sum: f64 = z0 + post.factors.iter().map(|f| f.contribution).sum::<f64>();
            prop_assert!((logit(post.probability.get()) - sum).abs() < 1e-9);
        }

        /// One more failure (own or a peer's) never lowers the risk; one more success never
        /// raises it; a riskier model never gives a lower posterior.
        #[test]
        fn monotone(z0 in -6.0f64..6.0, v in arb_outcomes(), own in any::<bool>(), age in 0..30i64, dz in 0.0f64..3.0) {
            let gs = groups("a");
            let subject = Subject { host: "h0", update: "u", version: "2", groups: &gs };
            let p = EvidenceParams::default();
            let base = update(z0, subject, &v, &[], NOW, &p).probability.get();
            let host = if own { "h0" } else { "h1" };
            let mut worse = v.clone();
            worse.push(Outcome { deployment: "r-new".into(), ..outcome(host, "a", true, age, true) });
            let mut better = v.clone();
            better.push(Outcome { deployment: "r-new".into(), ..outcome(host, "a", false, age, true) });
            let eps = 1e-12;
            if own {
                prop_assert!(update(z0, subject, &worse, &[], NOW, &p).probability.get() >= base - eps);
                prop_assert!(update(z0, subject, &better, &[], NOW, &p).probability.get() <= base + eps);
            } else if v.iter().all(|o| o.groups == gs) {
                // Peers in the subject's only group: the peer group cannot change with it.
                prop_assert!(update(z0, subject, &worse, &[], NOW, &p).probability.get() >= base - eps);
                prop_assert!(update(z0, subject, &better, &[], NOW, &p).probability.get() <= base + eps);
            }
            prop_assert!(update(z0 + dz, subject, &v, &[], NOW, &p).probability.get() >= base - eps);
        }
    }
}
