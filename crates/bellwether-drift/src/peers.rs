//! Peer comparison: within a group of hosts that share a role (the same value of a label such as
//! `role`), flag the hosts whose packages, kernel or OS release differ from the group's majority.
//!
//! Pure: the caller (the server, for `bellwether drift fleet`) passes the hosts it knows.
//!
//! The rule, which docs/drift.md explains: for each attribute (`os`, `kernel`, and each
//! `package:NAME`), the group's majority value is the value that strictly more than half of
//! the group's hosts have, counting "not installed" as a value. A host whose value differs from
//! an attribute's majority is an outlier on that attribute. Where no value has a strict
//! majority (a group of two that disagrees, or a three-way split), nobody is flagged for that
//! attribute: there is no norm to deviate from. Hosts whose package list could not be read are
//! left out of the package comparison rather than reported as missing every package.

use std::collections::{BTreeMap, HashMap};

use bellwether_model::HostProfile;
use serde::{Deserialize, Serialize};

/// One host as the fleet knows it.
#[derive(Debug, Clone, Copy)]
pub struct PeerHost<'a> {
    pub host: &'a str,
    /// The labels to group by. The server's labels for the host, or the profile's own.
    pub labels: &'a BTreeMap<String, String>,
    pub profile: &'a HostProfile,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PeerReport {
    /// The label key the groups are formed by, such as `role`.
    pub label: String,
    /// Groups in order of label value.
    pub groups: Vec<PeerGroup>,
    /// Hosts without the label, which have no peers to compare with.
    pub ungrouped: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PeerGroup {
    /// The label value shared by the group, such as `web`.
    pub value: String,
    /// All hosts of the group, sorted.
    pub hosts: Vec<String>,
    /// Hosts that differ from the majority, most differences first.
    pub outliers: Vec<PeerOutlier>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerOutlier {
    pub host: String,
    /// Sorted by attribute.
    pub differences: Vec<PeerDifference>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerDifference {
    /// `os`, `kernel` or `package:NAME`.
    pub attribute: String,
    /// The majority's value; `None` means the majority does not have it (not installed).
    pub majority: Option<String>,
    /// This host's value; `None` means the host does not have it.
    pub host: Option<String>,
    /// How many of the compared hosts hold the majority value, out of `compared`.
    pub majority_hosts: usize,
    pub compared: usize,
}

/// Groups `hosts` by the value of `label` and flags the outliers of each group.
pub fn compare_peers(hosts: &[PeerHost<'_>], label: &str) -> PeerReport {
    let mut groups: BTreeMap<&str, Vec<&PeerHost<'_>>> = BTreeMap::new();
    let mut ungrouped = Vec::new();
    for h in hosts {
        match h.labels.get(label) {
            Some(v) => groups.entry(v.as_str()).or_default().push(h),
            None => ungrouped.push(h.host.to_owned()),
        }
    }
    ungrouped.sort();
    PeerReport {
        label: label.to_owned(),
        groups: groups
            .into_iter()
            .map(|(value, members)| compare_group(value, &members))
            .collect(),
        ungrouped,
    }
}

fn compare_group(value: &str, members: &[&PeerHost<'_>]) -> PeerGroup {
    let mut hosts: Vec<String> = members.iter().map(|h| h.host.to_owned()).collect();
    hosts.sort();
    let mut diffs: BTreeMap<&str, Vec<PeerDifference>> = BTreeMap::new();

    let os: Vec<Option<String>> = members
        .iter()
        .map(|h| {
            h.profile.os.as_ref().map(|o| {
                format!("{} {}", o.id, o.version_id.as_deref().unwrap_or(""))
                    .trim_end()
                    .to_owned()
            })
        })
        .collect();
    let kernel: Vec<Option<String>> = members.iter().map(|h| h.profile.kernel.clone()).collect();
    for (attr, values) in [("os", os), ("kernel", kernel)] {
        // A host that did not report the attribute is not compared on it.
        let known: Vec<(usize, &str)> = values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.as_deref().map(|v| (i, v)))
            .collect();
        if let Some((majority, count)) =
            strict_majority(known.iter().map(|(_, v)| Some(*v)), known.len())
        {
            for (i, v) in &known {
                if Some(*v) != majority {
                    diffs
                        .entry(members[*i].host)
                        .or_default()
                        .push(PeerDifference {
                            attribute: attr.to_owned(),
                            majority: majority.map(str::to_owned),
                            host: Some((*v).to_owned()),
                            majority_hosts: count,
                            compared: known.len(),
                        });
                }
            }
        }
    }

    let with_packages: Vec<(&str, &BTreeMap<String, String>)> = members
        .iter()
        .filter_map(|h| h.profile.packages.as_ref().map(|p| (h.host, p)))
        .collect();
    let n = with_packages.len();
    // Package name to (version to number of hosts).
    let mut versions: BTreeMap<&str, HashMap<&str, usize>> = BTreeMap::new();
    for (_, pkgs) in &with_packages {
        for (name, version) in pkgs.iter() {
            *versions
                .entry(name.as_str())
                .or_default()
                .entry(version.as_str())
                .or_default() += 1;
        }
    }
    for (name, counts) in &versions {
        let installed: usize = counts.values().sum();
        let absent = n - installed;
        // Every host has the same version: nothing to flag, and the common case, so skip early.
        if absent == 0 && counts.len() == 1 {
            continue;
        }
        let candidates = counts
            .iter()
            .map(|(v, c)| (Some(*v), *c))
            .chain((absent > 0).then_some((None, absent)));
        let Some((majority, count)) = candidates
            .filter(|(_, c)| 2 * c > n)
            .max_by_key(|(_, c)| *c)
        else {
            continue;
        };
        for (host, pkgs) in &with_packages {
            let mine = pkgs.get(*name).map(String::as_str);
            if mine != majority {
                diffs.entry(host).or_default().push(PeerDifference {
                    attribute: format!("package:{name}"),
                    majority: majority.map(str::to_owned),
                    host: mine.map(str::to_owned),
                    majority_hosts: count,
                    compared: n,
                });
            }
        }
    }

    let mut outliers: Vec<PeerOutlier> = diffs
        .into_iter()
        .map(|(host, mut differences)| {
            differences.sort_by(|a, b| a.attribute.cmp(&b.attribute));
            PeerOutlier {
                host: host.to_owned(),
                differences,
            }
        })
        .collect();
    outliers.sort_by(|a, b| {
        b.differences
            .len()
            .cmp(&a.differences.len())
            .then_with(|| a.host.cmp(&b.host))
    });
    PeerGroup {
        value: value.to_owned(),
        hosts,
        outliers,
    }
}

/// The value more than half of `n` hold, with its count.
fn strict_majority<'a>(
    values: impl Iterator<Item = Option<&'a str>>,
    n: usize,
) -> Option<(Option<&'a str>, usize)> {
    let mut counts: HashMap<Option<&str>, usize> = HashMap::new();
    for v in values {
        *counts.entry(v).or_default() += 1;
    }
    counts.into_iter().find(|(_, c)| 2 * c > n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{profile_of, Drift, HostSpec};
    use crate::version::ChangeLevel;

    fn fleet() -> Vec<(String, BTreeMap<String, String>, HostProfile)> {
        let mut out = Vec::new();
        for i in 0..5 {
            // The same seed: one release and package set; only the hostname differs.
            let mut spec = HostSpec::generate(100, &format!("web-{i}"), 120);
            spec.hostname = format!("web-{i}");
            if i == 3 {
                let name = spec.packages.keys().nth(10).unwrap().clone();
                spec.apply(&Drift::UpgradePackage {
                    name,
                    level: ChangeLevel::Minor,
                });
                spec.apply(&Drift::SetPackage {
                    name: "zz-injected-tool".into(),
                    version: "1.219-1".into(),
                });
            }
            if i == 4 {
                spec.apply(&Drift::Kernel("6.9.0-1-amd64".into()));
            }
            out.push((
                spec.hostname.clone(),
                BTreeMap::from([("role".to_owned(), "web".to_owned())]),
                profile_of(&spec),
            ));
        }
        let db = HostSpec::generate(7, "db-0", 100);
        out.push((
            "db-0".into(),
            BTreeMap::from([("role".to_owned(), "db".to_owned())]),
            profile_of(&db),
        ));
        out.push(("lonely".into(), BTreeMap::new(), profile_of(&db)));
        out
    }

    fn peers(f: &[(String, BTreeMap<String, String>, HostProfile)]) -> Vec<PeerHost<'_>> {
        f.iter()
            .map(|(h, l, p)| PeerHost {
                host: h,
                labels: l,
                profile: p,
            })
            .collect()
    }

    #[test]
    fn flags_hosts_that_differ_from_the_majority() {
        let f = fleet();
        let r = compare_peers(&peers(&f), "role");
        assert_eq!(r.ungrouped, vec!["lonely"]);
        assert_eq!(r.groups.len(), 2);
        let db = &r.groups[0];
        assert_eq!((db.value.as_str(), db.outliers.len()), ("db", 0));
        let web = &r.groups[1];
        assert_eq!(web.hosts.len(), 5);
        assert_eq!(web.outliers.len(), 2, "{:#?}", web.outliers);
        assert_eq!(web.outliers[0].host, "web-3");
        let d = &web.outliers[0].differences;
        assert_eq!(d.len(), 2, "{d:#?}");
        assert!(d.iter().any(|x| x.attribute == "package:zz-injected-tool"
            && x.majority.is_none()
            && x.host.as_deref() == Some("1.219-1")));
        let changed = d
            .iter()
            .find(|x| x.attribute != "package:zz-injected-tool")
            .unwrap();
        assert_eq!((changed.majority_hosts, changed.compared), (4, 5));
        assert_ne!(changed.majority, changed.host);
        assert_eq!(web.outliers[1].host, "web-4");
        assert_eq!(web.outliers[1].differences[0].attribute, "kernel");
    }

    #[test]
    fn no_majority_flags_nobody() {
        let f: Vec<_> = fleet()
            .into_iter()
            .filter(|(h, _, _)| h == "web-0" || h == "web-3")
            .collect();
        let r = compare_peers(&peers(&f), "role");
        assert_eq!(r.groups[0].outliers, vec![]);
    }

    #[test]
    fn hosts_without_packages_are_not_flagged_for_missing_them() {
        let mut f = fleet();
        f[0].2.packages = None;
        let r = compare_peers(&peers(&f), "role");
        let web = &r.groups[1];
        assert!(web.outliers.iter().all(|o| o.host != "web-0"));
        assert_eq!(web.outliers[0].differences[0].compared, 4);
    }
}
