//! `DIR/state.json`: what a running sandbox is made of — its processes, addresses, token files
//! and hosts, and the drift injected into each host — so that `status`, `drift` and `down` can
//! find everything again from another process.

use std::path::{Path, PathBuf};

use bellwether_drift::synth::Drift;
use bellwether_drift::version::ChangeLevel;
use serde::{Deserialize, Serialize};

use crate::{Result, SandboxError};

pub const STATE_FILE: &str = "state.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// Absolute path of the sandbox directory.
    pub dir: PathBuf,
    pub seed: u64,
    pub created_at_ms: i64,
    pub server_url: String,
    /// With `up --tls`: the CA certificate (PEM) that signed the server's certificate, which
    /// the agents and the CLI pass as --ca-file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    pub operator_token_file: PathBuf,
    pub enrol_token_file: PathBuf,
    pub server: Proc,
    /// The small TCP listener the hosts declare as their dependency.
    pub listener: Proc,
    pub hosts: Vec<HostEntry>,
}

/// A detached child process: it leads its own process group, whose id is `pid`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Proc {
    pub pid: u32,
    /// `host:port` it listens on, where it listens.
    pub addr: Option<String>,
    pub log: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostEntry {
    pub name: String,
    pub role: String,
    /// The seed `HostSpec::generate` was given; with `role` and `drifts` it rebuilds the root.
    pub seed: u64,
    /// The seed of the generated package set it installs (its role's, shared with its peers).
    pub packages_seed: u64,
    pub root: PathBuf,
    pub agent: Proc,
    /// The host's versioned web service (`sandbox service`), scraped by its agent.
    #[serde(default)]
    pub service: Option<Proc>,
    /// Agent labels besides `role` (from a scenario: `group`, `disk_free_pct` and the group's).
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Every change made to the host since generation, in order: those made by `sandbox up`
    /// (before baselines) and those injected later.
    pub drifts: Vec<Injected>,
    /// How many of `drifts`, from the start, `sandbox up` made: part of the host as built (a
    /// scenario's packages, the fleet's odd tool), before its baseline. The rest were
    /// injected afterwards (`sandbox drift`). A state written before this field reads as 0.
    #[serde(default)]
    pub built: usize,
}

impl HostEntry {
    /// The changes injected after `sandbox up` built the host (`sandbox drift`, quickstart).
    pub fn injected(&self) -> &[Injected] {
        &self.drifts[self.built.min(self.drifts.len())..]
    }
}

/// A change made to a host root, in a form that survives a trip through JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Injected {
    /// Raise an installed package's version by a level.
    Package { name: String, level: ChangeLevel },
    /// Install a package at a version (or change its version).
    SetPackage { name: String, version: String },
    /// New 1, 5 and 15 minute load averages.
    Load { load: [f64; 3] },
    /// Point a declared dependency at another endpoint.
    Dependency { name: String, endpoint: String },
    /// Replace the DNS resolvers.
    Resolvers { resolvers: Vec<String> },
}

impl Injected {
    pub fn to_synth(&self) -> Drift {
        match self {
            Injected::Package { name, level } => Drift::UpgradePackage {
                name: name.clone(),
                level: *level,
            },
            Injected::SetPackage { name, version } => Drift::SetPackage {
                name: name.clone(),
                version: version.clone(),
            },
            Injected::Load { load } => Drift::Load(*load),
            Injected::Dependency { name, endpoint } => Drift::SetDependency {
                name: name.clone(),
                endpoint: endpoint.clone(),
            },
            Injected::Resolvers { resolvers } => Drift::Resolvers(resolvers.clone()),
        }
    }
}

impl State {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(STATE_FILE)
    }

    /// Reads the state of the sandbox in `dir`; `None` when there is none.
    pub fn load(dir: &Path) -> Result<Option<State>> {
        let path = State::path(dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(SandboxError::io("read", path, e)),
        };
        let state = serde_json::from_str(&text).map_err(|source| SandboxError::BadFile {
            path,
            what: "a sandbox state file",
            source,
        })?;
        Ok(Some(state))
    }

    /// Writes the state atomically (a temporary file renamed into place).
    pub fn save(&self) -> Result<()> {
        let path = State::path(&self.dir);
        let text = serde_json::to_string_pretty(self).map_err(|source| SandboxError::BadFile {
            path: path.clone(),
            what: "serialisable",
            source,
        })?;
        write_atomic(&path, text.as_bytes())
    }

    /// The host called `name`; a usage error listing the sandbox's hosts when there is none.
    pub fn host(&self, name: &str) -> Result<&HostEntry> {
        self.hosts.iter().find(|h| h.name == name).ok_or_else(|| {
            let names: Vec<&str> = self.hosts.iter().map(|h| h.name.as_str()).collect();
            SandboxError::Usage(format!(
                "--host {name:?}: no such host in the sandbox (hosts: {})",
                names.join(", ")
            ))
        })
    }

    /// The processes, agents first: the order `down` stops them in.
    pub fn processes(&self) -> Vec<(String, &Proc)> {
        let mut v: Vec<(String, &Proc)> = self
            .hosts
            .iter()
            .map(|h| (format!("agent {}", h.name), &h.agent))
            .collect();
        v.extend(self.hosts.iter().filter_map(|h| {
            h.service
                .as_ref()
                .map(|s| (format!("service {}", h.name), s))
        }));
        v.push(("server".into(), &self.server));
        v.push(("listener".into(), &self.listener));
        v
    }
}

/// As [`write_atomic`], creating the parent directory first.
pub fn write_atomic_in(path: &Path, bytes: &[u8]) -> Result<()> {
    bellwether_fs::AtomicWrite::new()
        .create_parent()
        .write(path, bytes)
        .map_err(|e| SandboxError::io("write", path, e))
}

/// Replaces `path` whole (`bellwether_fs`: a temporary file, fsync, rename, directory fsync).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    bellwether_fs::write_atomic(path, bytes).map_err(|e| SandboxError::io("write", path, e))
}

/// Writes a secret readable by its owner only, atomically (mode 0600 from creation).
pub fn write_secret(path: &Path, secret: &str) -> Result<()> {
    bellwether_fs::AtomicWrite::new()
        .mode(0o600)
        .write(path, format!("{secret}\n").as_bytes())
        .map_err(|e| SandboxError::io("write", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 15: `sandbox status` showed the scenario's own packages (set by `up`, before the
    /// baselines) as injected drift right after `up`.
    #[test]
    fn only_changes_after_up_count_as_injected() {
        let built = Injected::SetPackage {
            name: "libssl1.1".into(),
            version: "1.1.1n-0+deb11u5".into(),
        };
        let mut host = HostEntry {
            name: "web-old-01".into(),
            role: "web".into(),
            seed: 1,
            packages_seed: 1,
            root: "hosts/web-old-01".into(),
            agent: Proc {
                pid: 0,
                addr: None,
                log: "logs/agent-web-old-01.log".into(),
            },
            service: None,
            labels: Default::default(),
            drifts: vec![built.clone()],
            built: 1,
        };
        assert!(host.injected().is_empty(), "{:?}", host.injected());
        let load = Injected::Load {
            load: [12.0, 3.0, 1.0],
        };
        host.drifts.push(load.clone());
        assert_eq!(host.injected(), std::slice::from_ref(&load));
        // A state written before the field existed counts every change as injected.
        let mut old = serde_json::to_value(&host).unwrap();
        old.as_object_mut().unwrap().remove("built");
        let old: HostEntry = serde_json::from_value(old).unwrap();
        assert_eq!(old.injected(), [built, load]);
    }
}
