//! The sandbox fleet's make-up: which hosts, with which roles, on which releases, with which
//! extra packages and which drift carried from the start. Deterministic for a seed.

use bellwether_drift::synth::{HostSpec, SplitMix64};

use crate::state::{HostEntry, Injected};

/// Packages per generated host, before the role's own packages.
pub const PACKAGES_PER_HOST: usize = 200;

pub const ROLES: [&str; 3] = ["web", "db", "cache"];

/// The package that makes a host what its role says, and the dependency it declares.
pub fn role_package(role: &str) -> (&'static str, &'static str) {
    match role {
        "web" => ("nginx", "1.22.1-9"),
        "db" => ("postgresql-15", "15.6-0+deb12u1"),
        _ => ("redis-server", "5:7.0.15-1~deb12u1"),
    }
}

/// The name under which a host of `role` declares its dependency on the sandbox listener.
pub fn role_dependency(role: &str) -> &'static str {
    match role {
        "web" => "db",
        "db" => "storage",
        _ => "origin",
    }
}

/// One planned host: its name, role, generator seed and the changes made before baselines.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub name: String,
    pub role: String,
    pub seed: u64,
    /// The seed whose generated package set this host installs: its role's first host's, so
    /// that peers match, or its own on a host that lags on another release.
    pub packages_seed: u64,
    pub drifts: Vec<Injected>,
}

/// Plans `n` hosts from `seed`: half web, a quarter db, a quarter cache. Hosts of one role run
/// one OS release, as real fleets tend to, except every eighth host, which lags on another
/// release; every seventh host carries an extra package its peers lack. Both show up as peer
/// outliers, not as drift from their own baselines.
pub fn plan(n: usize, seed: u64) -> Vec<Planned> {
    let mut rng = SplitMix64::new(seed ^ 0x5A4D_B0C5);
    let mut per_role = [0usize; 3];
    let mut role_release: [Option<String>; 3] = [None, None, None];
    let mut role_seed = [0u64; 3];
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let r = match i % 4 {
            0 | 1 => 0,
            2 => 1,
            _ => 2,
        };
        per_role[r] += 1;
        let role = ROLES[r];
        let name = format!("{role}-{:02}", per_role[r]);
        let lagging = i % 8 == 5;
        // Search generator seeds until the release fits the host's place in the fleet.
        let mut host_seed = rng.next_u64();
        let first_of_role = role_release[r].is_none();
        for _ in 0..64 {
            let release = HostSpec::generate(host_seed, &name, 0).os_version_id;
            let fits = match &role_release[r] {
                None => true,
                Some(want) => (release == *want) != lagging,
            };
            if fits {
                role_release[r].get_or_insert(release);
                break;
            }
            host_seed = rng.next_u64();
        }
        let mut drifts = Vec::new();
        if i % 7 == 4 {
            drifts.push(Injected::SetPackage {
                name: "strace".into(),
                version: "6.1-0.1".into(),
            });
        }
        if first_of_role {
            role_seed[r] = host_seed;
        }
        let packages_seed = if lagging { host_seed } else { role_seed[r] };
        out.push(Planned {
            name,
            role: role.to_owned(),
            seed: host_seed,
            packages_seed,
            drifts,
        });
    }
    out
}

/// The spec of a host as it is now: generated, given its role's package and dependency, then
/// every recorded change applied in order.
pub fn spec_of(host: &HostEntry, listener_addr: &str) -> HostSpec {
    spec_from(
        &host.name,
        &host.role,
        host.seed,
        host.packages_seed,
        &host.drifts,
        listener_addr,
    )
}

pub fn spec_from(
    name: &str,
    role: &str,
    seed: u64,
    packages_seed: u64,
    drifts: &[Injected],
    listener_addr: &str,
) -> HostSpec {
    let mut spec = HostSpec::generate(seed, name, PACKAGES_PER_HOST);
    if packages_seed != seed {
        spec.packages = HostSpec::generate(packages_seed, name, PACKAGES_PER_HOST).packages;
    }
    let (pkg, version) = role_package(role);
    spec.packages.insert(pkg.to_owned(), version.to_owned());
    spec.dependencies = vec![(role_dependency(role).to_owned(), listener_addr.to_owned())];
    for d in drifts {
        spec.apply(&d.to_synth());
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_roles_releases_and_carried_drift() {
        let p = plan(20, 1);
        assert_eq!(p, plan(20, 1), "deterministic");
        assert_eq!(p.iter().filter(|h| h.role == "web").count(), 10);
        assert_eq!(p.iter().filter(|h| h.role == "db").count(), 5);
        let names: std::collections::BTreeSet<_> = p.iter().map(|h| &h.name).collect();
        assert_eq!(names.len(), 20);
        assert!(p.iter().any(|h| !h.drifts.is_empty()));
        let releases: std::collections::BTreeSet<String> = p
            .iter()
            .map(|h| HostSpec::generate(h.seed, &h.name, 0).os_version_id)
            .collect();
        assert!(releases.len() >= 2, "{releases:?}");
        let spec = |h: &Planned| {
            spec_from(
                &h.name,
                &h.role,
                h.seed,
                h.packages_seed,
                &h.drifts,
                "127.0.0.1:9",
            )
        };
        let first = spec(&p[0]);
        assert_eq!(first.packages["nginx"], "1.22.1-9");
        assert_eq!(
            first.dependencies,
            vec![("db".to_owned(), "127.0.0.1:9".to_owned())]
        );
        // Peers on the role's release install the same packages; the lagging host does not.
        let web: Vec<&Planned> = p.iter().filter(|h| h.role == "web").collect();
        let same = web
            .iter()
            .filter(|h| spec(h).packages == first.packages)
            .count();
        assert!(
            same >= 6,
            "only {same} of {} web hosts match their first peer",
            web.len()
        );
        assert!(web
            .iter()
            .any(|h| spec(h).os_version_id != first.os_version_id));
    }
}
