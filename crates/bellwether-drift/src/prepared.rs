//! Profiles prepared for scoring many times, as when a whole fleet is scored.
//!
//! A [`PreparedProfile`] is a profile plus digests of its large parts, computed once when the
//! profile is parsed, collected or stored, never on each scoring. [`score_prepared`] gives exactly
//! the score of [`score`](crate::score::score) on the same two profiles, but:
//!
//! - Equal hardware or network digests skip those parts without reading them.
//! - Packages are compared through a compact index: one 24-byte key per package (a hash of the
//!   name and a hash of the name and version), in one contiguous array sorted by the name hash,
//!   plus a digest of the whole set. Equal sets (the common case in a fleet) cost one 16-byte
//!   comparison; otherwise the two key arrays are merged in a sequential pass, and only the
//!   packages whose keys differ have their names and versions read. The plain walk reads every
//!   package's two heap strings and the map's nodes: about 35 KB spread over the heap for 300
//!   packages, which dominates the time when the profiles come cold from memory.
//!
//! Findings are emitted in the same order as the plain walk (packages by name), so the noisy-OR
//! products, and with them the scores, are bit-for-bit the same.
//!
//! # Why the hashes are strong enough
//!
//! A package is skipped when its 128-bit (name, version) digest is the same on both sides, and
//! a whole part when its 128-bit digest is. The digests are XXH3-128 over an unambiguous
//! encoding (a length before the name; JSON for hardware and network). A skip is wrong only if
//! two different inputs collide in 128 bits: about 2⁻¹²⁸ per comparison, so a fleet of 10⁶
//! hosts scored every second for a century (about 3·10¹⁵ comparisons of every kind) is wrong
//! with a probability below 10⁻²³. XXH3 is not a cryptographic hash, so a host that can choose
//! its package versions could in principle craft a collision against a known baseline; that
//! host already controls what it reports, so this gives it nothing it does not have.
//!
//! The 64-bit name hash only orders the merge; it never decides a skip on its own. Two names of
//! one profile with the same name hash make the index unusable (that profile falls back to the
//! plain walk), and a name hash shared by different names of the two profiles is detected when
//! the names are read, and the packages are then compared by the plain walk.

use std::collections::BTreeMap;

use bellwether_model::{DriftScore, HostProfile};
use xxhash_rust::xxh3::{xxh3_128, xxh3_64};

use crate::score::{check_hosts, package_finding, score_with, DriftError, Findings};

/// A host profile with digests of its packages, hardware and network, for scoring it many
/// times. Read-only: the digests stay true to the profile.
#[derive(Debug, Clone)]
pub struct PreparedProfile {
    profile: HostProfile,
    digests: Digests,
}

impl PreparedProfile {
    /// Computes the digests (about as costly as one plain scoring of the profile).
    pub fn new(profile: HostProfile) -> Self {
        let digests = Digests {
            packages: profile.packages.as_ref().and_then(PackageIndex::new),
            hardware: profile.hardware.as_ref().and_then(json_digest),
            network: profile.network.as_ref().and_then(json_digest),
        };
        PreparedProfile { profile, digests }
    }

    pub fn profile(&self) -> &HostProfile {
        &self.profile
    }

    pub fn into_profile(self) -> HostProfile {
        self.profile
    }
}

impl From<HostProfile> for PreparedProfile {
    fn from(profile: HostProfile) -> Self {
        PreparedProfile::new(profile)
    }
}

/// Scores how far `current` has drifted from `baseline`: the same score as
/// [`score`](crate::score::score) on the two profiles.
pub fn score_prepared(baseline: &PreparedProfile, current: &PreparedProfile) -> DriftScore {
    score_with(
        &baseline.profile,
        &current.profile,
        Some((&baseline.digests, &current.digests)),
    )
}

/// As [`score_prepared`], but refuses profiles of different hostnames unless `force` is set,
/// as [`score_checked`](crate::score::score_checked) does.
pub fn score_prepared_checked(
    baseline: &PreparedProfile,
    current: &PreparedProfile,
    force: bool,
) -> Result<DriftScore, DriftError> {
    check_hosts(&baseline.profile, &current.profile, force)?;
    Ok(score_prepared(baseline, current))
}

/// The digests of a profile's parts; `None` where the part is absent (or, for packages, where
/// the index cannot be used).
#[derive(Debug, Clone, Default)]
pub(crate) struct Digests {
    pub(crate) packages: Option<PackageIndex>,
    pub(crate) hardware: Option<u128>,
    pub(crate) network: Option<u128>,
}

/// XXH3-128 of the part's JSON, which is an unambiguous encoding of these float-free types
/// (fields in a fixed order, maps sorted, lists in order), so equal digests mean equal parts
/// under `==` (up to a 128-bit collision).
fn json_digest<T: serde::Serialize>(part: &T) -> Option<u128> {
    serde_json::to_vec(part).ok().map(|bytes| xxh3_128(&bytes))
}

/// One package: the 64-bit hash of its name (merge order) and the 128-bit digest of its name and
/// version (equality). Three words, so 24 bytes with no padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    name: u64,
    pair: [u64; 2],
}

#[derive(Debug, Clone)]
pub(crate) struct PackageIndex {
    /// Digest of the whole set: XXH3-128 of the keys in order.
    all: u128,
    /// Sorted by `name`, with no two names alike.
    keys: Vec<Key>,
    /// Where key `i`'s name and version are in `text`: name `[s, m)`, version `[m, e)`.
    spans: Vec<[u32; 3]>,
    /// All names and versions, in one allocation; read only for packages that differ.
    text: String,
}

impl PackageIndex {
    /// `None` when two names hash alike (the plain walk is used then) or the text exceeds 4 GiB.
    fn new(map: &BTreeMap<String, String>) -> Option<Self> {
        let mut text = String::with_capacity(map.iter().map(|(n, v)| n.len() + v.len()).sum());
        let mut entries: Vec<(Key, [u32; 3])> = Vec::with_capacity(map.len());
        let mut buf = Vec::new();
        for (name, version) in map {
            let s = u32::try_from(text.len()).ok()?;
            text.push_str(name);
            let m = u32::try_from(text.len()).ok()?;
            text.push_str(version);
            let e = u32::try_from(text.len()).ok()?;
            buf.clear();
            buf.extend_from_slice(&(name.len() as u64).to_le_bytes());
            buf.extend_from_slice(name.as_bytes());
            buf.extend_from_slice(version.as_bytes());
            let pair = xxh3_128(&buf);
            entries.push((
                Key {
                    name: xxh3_64(name.as_bytes()),
                    pair: [pair as u64, (pair >> 64) as u64],
                },
                [s, m, e],
            ));
        }
        entries.sort_unstable_by_key(|(k, _)| k.name);
        if entries.windows(2).any(|w| w[0].0.name == w[1].0.name) {
            return None;
        }
        buf.clear();
        for (k, _) in &entries {
            buf.extend_from_slice(&k.name.to_le_bytes());
            buf.extend_from_slice(&k.pair[0].to_le_bytes());
            buf.extend_from_slice(&k.pair[1].to_le_bytes());
        }
        let (keys, spans) = entries.into_iter().unzip();
        Some(PackageIndex {
            all: xxh3_128(&buf),
            keys,
            spans,
            text,
        })
    }

    fn entry(&self, i: usize) -> (&str, &str) {
        let [s, m, e] = self.spans[i].map(|x| x as usize);
        (&self.text[s..m], &self.text[m..e])
    }
}

/// The package findings of two indexed package sets, in name order, as the plain walk gives
/// them. `bp` and `cp` are the sets themselves, for the fallback.
pub(crate) fn packages(
    bi: &PackageIndex,
    ci: &PackageIndex,
    bp: &BTreeMap<String, String>,
    cp: &BTreeMap<String, String>,
    f: &mut Findings,
) {
    if bi.all == ci.all {
        return;
    }
    let mut diffs: Vec<(&str, Option<&str>, Option<&str>)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    loop {
        match (bi.keys.get(i), ci.keys.get(j)) {
            (None, None) => break,
            (Some(x), Some(y)) if x.name == y.name => {
                if x.pair != y.pair {
                    let ((bn, bv), (cn, cv)) = (bi.entry(i), ci.entry(j));
                    if bn != cn {
                        // Different names with the same 64-bit hash: let the plain walk decide.
                        return crate::score::packages(bp, cp, f);
                    }
                    diffs.push((bn, Some(bv), Some(cv)));
                }
                i += 1;
                j += 1;
            }
            (Some(x), y) if y.is_none_or(|y| x.name < y.name) => {
                let (n, v) = bi.entry(i);
                diffs.push((n, Some(v), None));
                i += 1;
            }
            _ => {
                let (n, v) = ci.entry(j);
                diffs.push((n, None, Some(v)));
                j += 1;
            }
        }
    }
    // Names are unique on each side and a name on both sides is one entry, so this is the
    // plain walk's order.
    diffs.sort_unstable_by(|a, b| a.0.cmp(b.0));
    for (name, bv, cv) in diffs {
        package_finding(f, name, bv, cv);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::score::score;
    use crate::synth::{perturb, profile_of, HostSpec, SplitMix64};
    use bellwether_model::profile::{DependencyStatus, Interface};
    use proptest::prelude::*;

    fn prepared(p: &HostProfile) -> PreparedProfile {
        PreparedProfile::new(p.clone())
    }

    #[test]
    fn prepared_scores_match_plain_scores_on_perturbed_hosts() {
        let mut rng = SplitMix64::new(3);
        for seed in 0..40 {
            let mut b = profile_of(&HostSpec::generate(seed, "h", 120));
            b.dependencies = vec![DependencyStatus {
                name: "db".into(),
                endpoint: "h:1".into(),
                reachable: true,
                latency_ms: Some(1.0),
            }];
            let pb = prepared(&b);
            for _ in 0..10 {
                let c = perturb(&b, &mut rng);
                assert_eq!(score_prepared(&pb, &prepared(&c)), score(&b, &c));
            }
            assert_eq!(score_prepared(&pb, &pb), DriftScore::default());
        }
    }

    #[test]
    fn unchanged_package_set_is_recognised_by_its_digest() {
        let p = profile_of(&HostSpec::generate(5, "h", 300));
        let (a, b) = (prepared(&p), prepared(&p));
        let (ia, ib) = (
            a.digests.packages.as_ref().unwrap(),
            b.digests.packages.as_ref().unwrap(),
        );
        assert_eq!(ia.all, ib.all);
        assert_eq!(ia.keys.len(), 300);
        assert!(ia.keys.windows(2).all(|w| w[0].name < w[1].name));
        let mut q = p.clone();
        let (name, v) = q
            .packages
            .as_ref()
            .unwrap()
            .iter()
            .next()
            .map(|(n, v)| (n.clone(), v.clone()))
            .unwrap();
        q.packages
            .as_mut()
            .unwrap()
            .insert(name.clone(), format!("{v}+1"));
        let c = prepared(&q);
        assert_ne!(c.digests.packages.as_ref().unwrap().all, ia.all);
        let s = score_prepared(&a, &c);
        assert_eq!(s.findings.len(), 1);
        assert_eq!(s.findings[0].attribute, format!("package:{name}"));
        assert_eq!(s, score(&p, &q));
    }

    #[test]
    fn name_and_version_boundaries_are_not_ambiguous() {
        // ("ab", "c1") and ("a", "bc1") concatenate alike; the length prefix keeps them apart.
        let pk = |n: &str, v: &str| HostProfile {
            packages: Some(BTreeMap::from([(n.to_owned(), v.to_owned())])),
            ..HostProfile::default()
        };
        let (b, c) = (pk("ab", "c1"), pk("a", "bc1"));
        let s = score_prepared(&prepared(&b), &prepared(&c));
        assert_eq!(s.findings.len(), 2);
        assert_eq!(s, score(&b, &c));
    }

    #[test]
    fn different_hosts_are_refused_unless_forced() {
        let b = profile_of(&HostSpec::generate(1, "web-1", 10));
        let mut c = b.clone();
        c.hostname = Some("web-2".into());
        let (pb, pc) = (prepared(&b), prepared(&c));
        assert!(matches!(
            score_prepared_checked(&pb, &pc, false),
            Err(DriftError::DifferentHosts { .. })
        ));
        assert_eq!(
            score_prepared_checked(&pb, &pc, true).unwrap(),
            score(&b, &c)
        );
    }

    fn arb_packages() -> impl Strategy<Value = Option<BTreeMap<String, String>>> {
        prop::option::weighted(
            0.9,
            prop::collection::btree_map(
                "[a-e]{1,3}",
                "[0-9]{1,2}(\\.[0-9]{1,2}){0,2}(-[0-9])?",
                0..12,
            ),
        )
    }

    fn arb_network() -> impl Strategy<Value = Option<bellwether_model::profile::Network>> {
        let iface = (
            "eth[0-2]",
            prop::option::of("[ab]{2}"),
            prop::option::of(1400u32..1402),
            prop::option::of(prop_oneof![Just("up"), Just("down")]),
        );
        prop::option::weighted(
            0.9,
            (
                prop::collection::vec(iface, 0..3),
                prop::collection::vec("10\\.0\\.0\\.[1-3]", 0..3),
                prop::collection::btree_map("[xy]", "10\\.1\\.[12]", 0..2),
                prop::collection::vec("0\\.0\\.0\\.0:[1-3]", 0..3),
            )
                .prop_map(|(ifs, dns, hosts, listening)| {
                    bellwether_model::profile::Network {
                        interfaces: ifs
                            .into_iter()
                            .map(|(name, mac, mtu, op)| Interface {
                                name,
                                mac,
                                mtu,
                                operstate: op.map(str::to_owned),
                            })
                            .collect(),
                        dns_resolvers: dns,
                        hosts,
                        listening,
                    }
                }),
        )
    }

    fn arb_profile() -> impl Strategy<Value = HostProfile> {
        (
            0u64..4,
            arb_packages(),
            arb_network(),
            any::<bool>(),
            prop::option::of(1u32..3),
            prop::collection::btree_map("load[15]", 0.0f64..9.0, 0..2),
        )
            .prop_map(|(seed, packages, network, drop_hw, cpus, metrics)| {
                let mut p = profile_of(&HostSpec::generate(seed, "h", 5));
                p.packages = packages;
                p.network = network;
                if drop_hw {
                    p.hardware = None;
                } else if let Some(h) = p.hardware.as_mut() {
                    h.cpu_count = cpus;
                }
                p.metrics = metrics;
                p
            })
    }

    /// A current profile derived from `b` by small edits, so that most parts are equal, as in a
    /// fleet; `arb_profile` pairs cover the parts that differ wholesale.
    fn arb_edit(b: HostProfile) -> impl Strategy<Value = (HostProfile, HostProfile)> {
        (
            prop::collection::vec(("[a-e]{1,3}", prop::option::of("[0-9]\\.[0-9]")), 0..4),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(move |(edits, touch_net, touch_hw)| {
                let mut c = b.clone();
                if let Some(pk) = c.packages.as_mut() {
                    for (n, v) in edits {
                        match v {
                            Some(v) => pk.insert(n, v),
                            None => pk.remove(&n),
                        };
                    }
                }
                if touch_net {
                    if let Some(n) = c.network.as_mut() {
                        n.listening.push("0.0.0.0:9".into());
                    }
                }
                if touch_hw {
                    if let Some(h) = c.hardware.as_mut() {
                        h.disks.push("sdz".into());
                    }
                }
                (b.clone(), c)
            })
    }

    proptest! {
        #[test]
        fn prepared_scoring_equals_plain_scoring(b in arb_profile(), c in arb_profile()) {
            let want = score(&b, &c);
            prop_assert_eq!(score_prepared(&prepared(&b), &prepared(&c)), want);
            prop_assert_eq!(score_prepared(&prepared(&b), &prepared(&b)), DriftScore::default());
        }

        #[test]
        fn prepared_scoring_equals_plain_scoring_after_small_edits((b, c) in arb_profile().prop_flat_map(arb_edit)) {
            prop_assert_eq!(score_prepared(&prepared(&b), &prepared(&c)), score(&b, &c));
            prop_assert_eq!(score_prepared(&prepared(&c), &prepared(&b)), score(&c, &b));
        }
    }
}
