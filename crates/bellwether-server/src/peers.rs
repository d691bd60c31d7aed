//! The fleet view's peer outliers: hosts whose packages, kernel or OS differ from the majority
//! of the peers that share their value of a label (by default `role`), as
//! [`bellwether_drift::peers::compare_peers`] finds them.

use std::collections::BTreeMap;

use bellwether_drift::peers::{compare_peers, PeerHost};
use bellwether_model::{HostName, HostProfile};

use crate::types::PeerOutlierEntry;

/// The label peers are grouped by unless the request names another.
pub const DEFAULT_PEER_LABEL: &str = "role";

/// Flattens the peer report into one entry per outlier host, most differences first.
///
/// A host's labels are the server's (given at enrolment), completed by the profile's own for
/// keys the server does not have.
pub fn outliers(
    hosts: &[(HostName, BTreeMap<String, String>, HostProfile)],
    label: &str,
) -> Vec<PeerOutlierEntry> {
    let merged: Vec<BTreeMap<String, String>> = hosts
        .iter()
        .map(|(_, labels, profile)| {
            let mut l = profile.labels.clone();
            l.extend(labels.iter().map(|(k, v)| (k.clone(), v.clone())));
            l
        })
        .collect();
    let peer_hosts: Vec<PeerHost<'_>> = hosts
        .iter()
        .zip(&merged)
        .map(|((name, _, profile), labels)| PeerHost {
            host: name.as_str(),
            labels,
            profile,
        })
        .collect();
    let report = compare_peers(&peer_hosts, label);
    let mut out: Vec<PeerOutlierEntry> = report
        .groups
        .into_iter()
        .flat_map(|g| {
            let value = g.value;
            let peers = g.hosts.len();
            g.outliers.into_iter().map(move |o| PeerOutlierEntry {
                label: label.to_string(),
                value: value.clone(),
                peers,
                host: o.host,
                differences: o.differences,
            })
        })
        .collect();
    out.sort_by(|a, b| {
        b.differences
            .len()
            .cmp(&a.differences.len())
            .then_with(|| a.host.cmp(&b.host))
    });
    out
}
