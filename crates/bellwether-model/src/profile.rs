//! The host profile: what a host is (configuration) and how it behaves (metrics), as collected
//! by `bellwether-drift` and sent by the agent.
//!
//! Every part is optional: a file that could not be read leaves its part `None` and adds a
//! note, so that a partial profile is still useful and never aborts collection.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostProfile {
    /// From `etc/hostname`.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Milliseconds since the Unix epoch when collection started.
    #[serde(default)]
    pub collected_at_ms: i64,
    /// Operator-assigned labels, such as `role=web`. Not collected from the host.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub os: Option<OsInfo>,
    /// From `proc/sys/kernel/osrelease`.
    #[serde(default)]
    pub kernel: Option<String>,
    /// Installed packages, name to version, from dpkg and rpm.
    #[serde(default)]
    pub packages: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub hardware: Option<Hardware>,
    #[serde(default)]
    pub network: Option<Network>,
    /// Declared dependencies and how they answered a TCP connect.
    #[serde(default)]
    pub dependencies: Vec<DependencyStatus>,
    /// Watched files (configured with `--watch-file`, `--protect` or the root's
    /// `etc/bellwether/watch-files`), by path relative to the root: a content hash and size,
    /// so drift scoring can tell a changed file without holding its contents. Left out of the
    /// JSON when nothing is watched, so profiles from before this field read and write alike.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, WatchedFile>,
    /// Gauges such as `load1`, `memory_available_ratio`, `psi_cpu_some_avg10`.
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    /// Why a part is absent or partial, one sentence per problem.
    #[serde(default)]
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OsInfo {
    /// `ID` from os-release, such as `debian`.
    pub id: String,
    /// `VERSION_ID`, such as `12`.
    #[serde(default)]
    pub version_id: Option<String>,
    #[serde(default)]
    pub pretty_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hardware {
    #[serde(default)]
    pub cpu_model: Option<String>,
    #[serde(default)]
    pub cpu_count: Option<u32>,
    #[serde(default)]
    pub memory_total_kb: Option<u64>,
    #[serde(default)]
    pub disks: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    /// `nameserver` lines of `etc/resolv.conf`, in order.
    #[serde(default)]
    pub dns_resolvers: Vec<String>,
    /// `etc/hosts`: name to address.
    #[serde(default)]
    pub hosts: BTreeMap<String, String>,
    /// Listening TCP sockets as `addr:port`, sorted.
    #[serde(default)]
    pub listening: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    pub name: String,
    #[serde(default)]
    pub mac: Option<String>,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub operstate: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DependencyStatus {
    pub name: String,
    /// `host:port`.
    pub endpoint: String,
    pub reachable: bool,
    /// Connect latency in milliseconds, when reachable.
    #[serde(default)]
    pub latency_ms: Option<f64>,
}

/// One watched file as collection found it. A file that is missing or unreadable has neither
/// hash nor size, and the profile's notes say why.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchedFile {
    /// SHA-256 of the file's bytes, 64 lower-case hex digits (what `sha256sum` prints).
    /// Absent from the JSON (not `null`) when the file is missing, as docs/drift.md says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The file's size in bytes; absent with the hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

impl WatchedFile {
    /// Whether the file was there when collected.
    pub fn present(&self) -> bool {
        self.sha256.is_some()
    }

    /// `"38 bytes, sha256 1f2e3d4c5b6a…"` or `"absent"`, as findings show it.
    pub fn summary(&self) -> String {
        match (&self.sha256, self.size) {
            (Some(h), Some(n)) => format!("{n} bytes, sha256 {}…", &h[..h.len().min(12)]),
            (Some(h), None) => format!("sha256 {}…", &h[..h.len().min(12)]),
            (None, _) => "absent".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/drift.md: a watched file that is missing "is recorded with neither field (absent)".
    /// It used to be `{"sha256": null, "size": null}`.
    #[test]
    fn a_missing_watched_file_has_neither_field() {
        let missing = serde_json::to_value(WatchedFile::default()).unwrap();
        assert_eq!(missing, serde_json::json!({}));
        let back: WatchedFile = serde_json::from_value(missing).unwrap();
        assert!(!back.present());
        // What older agents sent still reads.
        let old: WatchedFile = serde_json::from_str(r#"{"sha256": null, "size": null}"#).unwrap();
        assert_eq!(old, WatchedFile::default());
        let present = WatchedFile {
            sha256: Some("ab".repeat(32)),
            size: Some(31),
        };
        let v = serde_json::to_value(&present).unwrap();
        assert_eq!(v["size"], 31);
        assert_eq!(v["sha256"].as_str().unwrap().len(), 64);
    }
}
