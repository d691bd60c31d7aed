//! `sandbox drift`: changes made to a host root while its agent runs — a package upgrade, a
//! load spike, a dependency that points nowhere, new resolvers, a rewritten file — recorded in
//! the state so that the root can be rebuilt and `status` can list them.

use std::path::Path;

use bellwether_drift::synth::write_host_root;
use bellwether_drift::version::ChangeLevel;

use crate::state::{self, Injected, State};
use crate::{fleet, Result, SandboxError};

/// A recorded change in a few words, for `status`.
pub(crate) fn describe_kind(d: &Injected) -> String {
    match d {
        Injected::Package { name, level } => format!("{name} {level} upgrade"),
        Injected::SetPackage { name, version } => format!("{name}={version}"),
        Injected::Load { load } => format!("load {:.2}", load[0]),
        Injected::Dependency { name, endpoint } => format!("{name} -> {endpoint}"),
        Injected::Resolvers { resolvers } => format!("resolvers {}", resolvers.join(",")),
    }
}

/// A loopback port where nothing listens: bound, then released.
fn closed_port() -> Result<String> {
    let free = |e| SandboxError::Process(format!("could not find a free loopback port: {e}"));
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(free)?;
    Ok(l.local_addr().map_err(free)?.to_string())
}

/// A drift to inject, with the defaults not yet filled in (they depend on the host).
#[derive(Debug, Clone)]
pub enum DriftRequest {
    Package {
        name: Option<String>,
        level: ChangeLevel,
    },
    Load {
        load1: Option<f64>,
    },
    Dependency {
        name: Option<String>,
        endpoint: Option<String>,
    },
    Resolvers {
        resolvers: Vec<String>,
    },
    /// Rewrite a file of the root, such as the service configuration.
    File {
        path: String,
        content: Option<String>,
    },
}

/// What `sandbox drift --kind file` writes by default: the service configuration with no
/// workers, which every version but 1 fails on (see `sandbox service`).
pub const DRIFTED_CONFIG: &str = "workers = 0\nlisten = 127.0.0.1\n";

/// Rewrites one file of a host root, outside the generated spec: the agent sees it on its
/// next collection (a `file:PATH` finding when the file is watched), and a `restore_file`
/// puts the agent's snapshot back. Returns "etc/websvc.conf: 31 bytes, sha256 … → …".
fn drift_file(root: &Path, path: &str, content: Option<String>) -> Result<String> {
    let target = root.join(path);
    let summary = |bytes: Option<&[u8]>| match bytes {
        Some(b) => format!(
            "{} bytes, sha256 {}…",
            b.len(),
            &bellwether_drift::root::sha256_hex(b)[..12]
        ),
        None => "absent".to_owned(),
    };
    let before = std::fs::read(&target).ok();
    let content = content.unwrap_or_else(|| DRIFTED_CONFIG.to_owned());
    state::write_atomic_in(&target, content.as_bytes())?;
    Ok(format!(
        "{path}: {} → {}",
        summary(before.as_deref()),
        summary(Some(content.as_bytes()))
    ))
}

/// Injects drift into `host`'s root and records it in the state; returns what changed, as
/// "nginx 1.22.1-9 → 2.0.0-1 (major upgrade)".
pub fn inject(dir: &Path, host: &str, req: DriftRequest) -> Result<String> {
    let dir = dir
        .canonicalize()
        .map_err(|e| SandboxError::Usage(format!("--dir {}: {e}", dir.display())))?;
    let mut state = State::load(&dir)?
        .ok_or_else(|| SandboxError::Usage(format!("no sandbox in {}", dir.display())))?;
    let listener = state.listener.addr.clone().unwrap_or_default();
    let entry = state.host(host)?.clone();
    if let DriftRequest::File { path, content } = req {
        // A file is not part of the generated spec, so it is written as it is and not
        // recorded for rebuilds: the file on disk is the record.
        return drift_file(&entry.root, &path, content);
    }
    let before = fleet::spec_of(&entry, &listener);
    let (change, what) = match req {
        DriftRequest::Package { name, level } => {
            let name = name.unwrap_or_else(|| fleet::role_package(&entry.role).0.to_owned());
            let Some(old) = before.packages.get(&name) else {
                return Err(SandboxError::Usage(format!(
                    "--package {name:?}: not installed on {host}"
                )));
            };
            let change = Injected::Package {
                name: name.clone(),
                level,
            };
            let mut after = before.clone();
            after.apply(&change.to_synth());
            let what = format!(
                "{name} {old} → {} ({level} upgrade)",
                after.packages.get(&name).map_or("?", String::as_str)
            );
            (change, what)
        }
        DriftRequest::Load { load1 } => {
            let l = load1.unwrap_or(f64::from(before.cpu_count) * 3.0);
            let l = (l * 100.0).round() / 100.0;
            let change = Injected::Load {
                load: [
                    l,
                    (l * 0.9 * 100.0).round() / 100.0,
                    (l * 0.8 * 100.0).round() / 100.0,
                ],
            };
            (change, format!("load1 {:.2} → {l:.2}", before.load[0]))
        }
        DriftRequest::Dependency { name, endpoint } => {
            let name = name.unwrap_or_else(|| fleet::role_dependency(&entry.role).to_owned());
            let Some((_, old)) = before.dependencies.iter().find(|(n, _)| *n == name) else {
                return Err(SandboxError::Usage(format!(
                    "--dependency {name:?}: {host} declares no such dependency"
                )));
            };
            let (endpoint, note) = match endpoint {
                Some(e) => (e, String::new()),
                None => (closed_port()?, " (nothing listens there)".to_owned()),
            };
            let what = format!("{name} {old} → {endpoint}{note}");
            (Injected::Dependency { name, endpoint }, what)
        }
        DriftRequest::Resolvers { resolvers } => {
            let resolvers = if resolvers.is_empty() {
                vec!["192.0.2.53".to_owned()]
            } else {
                resolvers
            };
            let what = format!(
                "{} → {}",
                before.dns_resolvers.join(", "),
                resolvers.join(", ")
            );
            (Injected::Resolvers { resolvers }, what)
        }
        DriftRequest::File { path, content } => {
            // Not reached: a file drift returned above.
            return drift_file(&entry.root, &path, content);
        }
    };
    let mut after = before;
    after.apply(&change.to_synth());
    write_host_root(&entry.root, &after).map_err(|e| {
        SandboxError::Process(format!("could not rewrite {}: {e}", entry.root.display()))
    })?;
    if let Some(e) = state.hosts.iter_mut().find(|h| h.name == host) {
        e.drifts.push(change);
    }
    state.save()?;
    Ok(what)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service;

    #[test]
    fn a_file_drift_rewrites_the_file_and_says_what_changed() {
        let tmp = tempfile::tempdir().unwrap();
        let what = drift_file(tmp.path(), service::CONFIG_FILE, None).unwrap();
        assert!(
            what.starts_with("etc/websvc.conf: absent → 31 bytes, sha256 "),
            "{what}"
        );
        assert_eq!(
            std::fs::read_to_string(tmp.path().join(service::CONFIG_FILE)).unwrap(),
            DRIFTED_CONFIG
        );
        let what = drift_file(
            tmp.path(),
            service::CONFIG_FILE,
            Some("workers = 1\n".into()),
        )
        .unwrap();
        assert!(
            what.contains("31 bytes") && what.contains("→ 12 bytes"),
            "{what}"
        );
    }
}
