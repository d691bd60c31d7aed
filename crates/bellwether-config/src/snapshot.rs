//! Snapshots of a whole configuration, their differences, and change records.

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
    // Both maps iterate in key order; one merge pass yields the result sorted.
    let mut out = Vec::new();
    let mut a = old.iter().peekable();
    let mut b = new.iter().peekable();
    loop {
        let step = match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some((ka, _)), Some((kb, _))) => ka.cmp(kb),
        };
        match step {
            std::cmp::Ordering::Less => {
                let (k, v) = a.next().expect("peeked");
                out.push(KeyDiff {
                    key: k.clone(),
                    old: Some(v.clone()),
                    new: None,
                });
            }
            std::cmp::Ordering::Greater => {
                let (k, v) = b.next().expect("peeked");
                out.push(KeyDiff {
                    key: k.clone(),
                    old: None,
                    new: Some(v.clone()),
                });
            }
            std::cmp::Ordering::Equal => {
                let (k, va) = a.next().expect("peeked");
                let (_, vb) = b.next().expect("peeked");
                if va != vb {
                    out.push(KeyDiff {
                        key: k.clone(),
                        old: Some(va.clone()),
                        new: Some(vb.clone()),
                    });
                }
            }
        }
    }
    out
}

impl KeyDiff {
    /// `key: old → new`, with `(absent)` for a missing side.
    pub fn describe(&self) -> String {
        let side = |v: &Option<String>| {
            v.as_ref()
                .map_or("(absent)".to_string(), |v| format!("{v:?}"))
        };
        format!("{}: {} → {}", self.key, side(&self.old), side(&self.new))
    }
}

/// Applies `diffs` (as [`diff`] returns them) to `values`: `diff(a, &apply(a, &diff(a, b))) `
/// is empty. Keys whose `new` is `None` are removed.
pub fn apply(values: &BTreeMap<String, String>, diffs: &[KeyDiff]) -> BTreeMap<String, String> {
    let mut out = values.clone();
    for d in diffs {
        match &d.new {
            Some(v) => {
                out.insert(d.key.clone(), v.clone());
            }
            None => {
                out.remove(&d.key);
            }
        }
    }
    out
}
