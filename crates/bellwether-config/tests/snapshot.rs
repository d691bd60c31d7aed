//! Snapshots: diffs between two configurations and the checksum that proves one is whole.

use std::collections::BTreeMap;

use bellwether_config::snapshot::{apply, checksum, diff, KeyDiff, Snapshot};
use proptest::prelude::*;

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn diff_lists_added_removed_and_changed_keys_sorted() {
    let old = map(&[("a", "1"), ("b", "2"), ("d", "4"), ("e", "5")]);
    let new = map(&[("b", "2"), ("c", "3"), ("d", "40"), ("e", "5")]);
    assert_eq!(
        diff(&old, &new),
        vec![
            KeyDiff {
                key: "a".into(),
                old: Some("1".into()),
                new: None
            },
            KeyDiff {
                key: "c".into(),
                old: None,
                new: Some("3".into())
            },
            KeyDiff {
                key: "d".into(),
                old: Some("4".into()),
                new: Some("40".into())
            },
        ]
    );
    assert_eq!(diff(&old, &old), vec![]);
    assert_eq!(diff(&BTreeMap::new(), &BTreeMap::new()), vec![]);
    assert_eq!(diff(&old, &new)[2].describe(), "d: \"4\" → \"40\"");
    assert_eq!(diff(&old, &new)[0].describe(), "a: \"1\" → (absent)");
    // An empty value is a value, not an absence.
    assert_eq!(
        diff(&map(&[("k", "")]), &BTreeMap::new()),
        vec![KeyDiff {
            key: "k".into(),
            old: Some(String::new()),
            new: None
        }]
    );
}

#[test]
fn a_snapshot_is_whole_until_a_value_or_its_checksum_changes() {
    let values = map(&[("work_mem", "4096"), ("wal_level", "replica")]);
    let s = Snapshot::new(
        "s1".into(),
        "db1".into(),
        "main".into(),
        1_000,
        "on demand".into(),
        values.clone(),
    );
    assert!(s.is_whole());
    assert_eq!(s.checksum.len(), 64);
    assert_eq!(s.checksum, checksum(&values));
    // The canonical JSON of the sorted map, hashed: pinned so a change of form is noticed.
    assert_eq!(
        checksum(&map(&[("a", "1")])),
        "9afeb0f2b203f254312ec8ded441d0318b7c34c57f8695ede42d2215a30c0960",
        "sha256 of {{\"a\":\"1\"}}"
    );
    let mut changed = s.clone();
    changed.values.insert("work_mem".into(), "64".into());
    assert!(!changed.is_whole());
    let mut dropped = s.clone();
    dropped.values.remove("wal_level");
    assert!(!dropped.is_whole());
    let mut forged = s.clone();
    forged.checksum = checksum(&map(&[("work_mem", "64")]));
    assert!(!forged.is_whole());
    // Through JSON (as stored in events) it stays whole.
    let back: Snapshot = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
    assert!(back.is_whole());
}

fn small_map() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map("[a-e]{1,2}", "[0-3]{0,1}", 0..12)
}

proptest! {
    #[test]
    fn applying_a_diff_gives_the_new_map(a in small_map(), b in small_map()) {
        let d = diff(&a, &b);
        prop_assert_eq!(apply(&a, &d), b.clone());
        let keys: Vec<&String> = d.iter().map(|k| &k.key).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        sorted.dedup();
        prop_assert_eq!(keys, sorted);
        prop_assert_eq!(d.is_empty(), checksum(&a) == checksum(&b));
    }
}
