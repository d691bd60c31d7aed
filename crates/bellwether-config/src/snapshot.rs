//! Snapshots of a whole configuration, their differences, and change records.
//!
//! OWNER: helper `confcore`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where a change came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeSource {
    /// `bellwether config apply` (a config task).
    Apply,
    /// The API by other means (a restore of a snapshot).
    Api,
    /// Seen on the instance (`pg_settings` changed and Bellwether did not do it).
    Instance,
    /// Seen in a watched file on disk.
    Disk,
    /// A config task's automatic revert.
    Revert,
}

/// One changed key. `old`/`new` are `None` when the key was absent (added or removed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigChange {
    pub host: String,
    /// The instance (`--database NAME`) or the file (`file:PATH`).
    pub source_name: String,
    pub key: String,
    pub old: Option<String>,
    pub new: Option<String>,
    pub author: String,
    pub time_ms: i64,
    pub description: String,
    pub source: ChangeSource,
}

/// The whole configuration at one time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub id: String,
    pub host: String,
    pub source_name: String,
    pub taken_at_ms: i64,
    /// Why it was taken: `before change …`, `on demand`, `before revert …`.
    pub reason: String,
    pub values: BTreeMap<String, String>,
    /// SHA-256 (hex) of the values' canonical JSON, so a restore can prove it is whole.
    pub checksum: String,
}

impl Snapshot {
    /// Builds a snapshot with its checksum.
    pub fn new(
        id: String,
        host: String,
        source_name: String,
        taken_at_ms: i64,
        reason: String,
        values: BTreeMap<String, String>,
    ) -> Snapshot {
        let checksum = checksum(&values);
        Snapshot {
            id,
            host,
            source_name,
            taken_at_ms,
            reason,
            values,
            checksum,
        }
    }

    /// The checksum still matches the values.
    pub fn is_whole(&self) -> bool {
        checksum(&self.values) == self.checksum
    }
}

/// SHA-256 (hex) of the canonical JSON of `values` (a `BTreeMap`, so sorted).
pub fn checksum(values: &BTreeMap<String, String>) -> String {
    use sha2::Digest;
    let json = serde_json::to_vec(values).expect("a string map serialises");
    hex::encode(sha2::Sha256::digest(&json))
}

/// One key's difference between two configurations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyDiff {
    pub key: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

/// The keys whose value differs between `old` and `new` (added, removed or changed), sorted.
pub fn diff(old: &BTreeMap<String, String>, new: &BTreeMap<String, String>) -> Vec<KeyDiff> {
    let _ = (old, new);
    todo!("confcore")
}
