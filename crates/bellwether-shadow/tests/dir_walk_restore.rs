//! Directory shadows on real files: walk, change detection, restore beside and swap, and the
//! bad inputs (damaged chunk, missing chunk, damaged index) that must leave the live directory
//! untouched.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;

use bellwether_shadow::dir::tree::Node;
use bellwether_shadow::dir::{restore_tree, walk, DirError, FsObjects, ObjectStore, Swap};

/// What a person would compare: every entry's type, mode, mtime and content or link target.
fn listing(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    fn go(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for p in names {
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let what = if m.file_type().is_symlink() {
                format!("link {}", fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                go(root, &p, out);
                format!(
                    "dir {:o} {}",
                    m.mode() & 0o7777,
                    m.mtime_nsec() + m.mtime() * 1_000_000_000
                )
            } else {
                let data = fs::read(&p).unwrap();
                format!(
                    "file {:o} {} {}",
                    m.mode() & 0o7777,
                    m.mtime_nsec() + m.mtime() * 1_000_000_000,
                    bellwether_shadow::dir::chunk::sha256_hex(&data)
                )
            };
            out.insert(rel, what);
        }
    }
    go(root, root, &mut out);
    out
}

fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn fixture(root: &Path) {
    fs::create_dir_all(root.join("sub/deeper")).unwrap();
    fs::write(root.join("big.bin"), noise(1, 700_000)).unwrap();
    fs::write(root.join("sub/small.txt"), b"hello\n").unwrap();
    fs::write(root.join("sub/deeper/empty"), b"").unwrap();
    fs::set_permissions(
        root.join("sub/small.txt"),
        fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    fs::set_permissions(root.join("sub/deeper"), fs::Permissions::from_mode(0o750)).unwrap();
    // A link out of the root and a dangling one: recorded as links, never followed.
    symlink("/etc", root.join("etc-link")).unwrap();
    symlink("../nowhere", root.join("sub/dangling")).unwrap();
}

#[test]
fn a_restored_directory_equals_the_point_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let live = tmp.path().join("live");
    fs::create_dir(&live).unwrap();
    fixture(&live);
    let store = FsObjects::new(tmp.path().join("objects"));
    let before = listing(&live);
    let (tree, stats) = walk(&live, None, &store).unwrap();
    assert_eq!((stats.files, stats.dirs, stats.symlinks), (3, 2, 2));
    assert_eq!(stats.files_read, 3);
    // The link to /etc was not followed: nothing of /etc is in the tree.
    assert!(tree
        .entries
        .iter()
        .all(|e| !e.path.to_string().starts_with("etc-link/")));

    // Churn: change, add, remove, retarget.
    fs::write(live.join("sub/small.txt"), b"changed\n").unwrap();
    fs::write(live.join("new.txt"), b"new").unwrap();
    fs::remove_file(live.join("big.bin")).unwrap();
    fs::remove_file(live.join("etc-link")).unwrap();
    symlink("/usr", live.join("etc-link")).unwrap();
    assert_ne!(listing(&live), before);

    let report = restore_tree(&tree, &store, &live).unwrap();
    assert_eq!(report.swap, Swap::Exchanged);
    assert_eq!(report.files, 3);
    assert_eq!(listing(&live), before);
    // Nothing left beside it.
    let beside: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(beside.len(), 2, "{beside:?}");
}

#[test]
fn a_restore_into_a_missing_directory_creates_it() {
    let tmp = tempfile::tempdir().unwrap();
    let live = tmp.path().join("live");
    fs::create_dir(&live).unwrap();
    fixture(&live);
    let store = FsObjects::new(tmp.path().join("objects"));
    let (tree, _) = walk(&live, None, &store).unwrap();
    let other = tmp.path().join("copy");
    let report = restore_tree(&tree, &store, &other).unwrap();
    assert_eq!(report.swap, Swap::Created);
    assert_eq!(listing(&other), listing(&live));
}

#[test]
fn a_differential_point_reads_only_changed_files_and_stores_only_new_chunks() {
    let tmp = tempfile::tempdir().unwrap();
    let live = tmp.path().join("live");
    fs::create_dir(&live).unwrap();
    fixture(&live);
    let store = FsObjects::new(tmp.path().join("objects"));
    let (t1, _) = walk(&live, None, &store).unwrap();
    // The racy-clean guard re-reads files changed within 2 s of their read; age them instead
    // of waiting.
    let mut t1 = t1;
    for e in &mut t1.entries {
        if let Node::File { read_at_ns, .. } = &mut e.node {
            *read_at_ns += 10_000_000_000;
        }
    }
    // Append to the big file: FastCDC keeps the leading chunks.
    let mut big = fs::read(live.join("big.bin")).unwrap();
    big.extend_from_slice(b"appended");
    fs::write(live.join("big.bin"), &big).unwrap();
    let (t2, stats) = walk(&live, Some(&t1), &store).unwrap();
    assert_eq!(stats.files_read, 1, "{stats:?}");
    assert_eq!(stats.files_reused, 2, "{stats:?}");
    assert!(
        stats.new_chunks >= 1 && stats.new_chunks < stats.chunks,
        "{stats:?}"
    );
    assert!(stats.new_bytes < 300_000, "{stats:?}");
    // A full walk of the same state gives the same content.
    let (t3, full) = walk(&live, None, &store).unwrap();
    assert_eq!(full.files_read, 3);
    assert_eq!(full.new_chunks, 0, "everything was stored already");
    let strip = |t: &bellwether_shadow::dir::Tree| -> Vec<(String, Option<String>)> {
        t.entries
            .iter()
            .map(|e| {
                let sha = match &e.node {
                    Node::File { sha256, .. } => sha256.clone(),
                    _ => None,
                };
                (e.path.to_string(), sha)
            })
            .collect()
    };
    assert_eq!(strip(&t2), strip(&t3));
}

#[test]
fn a_differential_point_sees_a_rewrite_that_put_the_old_mtime_back() {
    // A tool that restores modification times (tar, rsync -t) cannot restore the status-change
    // time, which the stamp also holds.
    let tmp = tempfile::tempdir().unwrap();
    let live = tmp.path().join("live");
    fs::create_dir(&live).unwrap();
    fs::write(live.join("f"), b"aaaa").unwrap();
    let store = FsObjects::new(tmp.path().join("objects"));
    let (mut t1, _) = walk(&live, None, &store).unwrap();
    for e in &mut t1.entries {
        if let Node::File { read_at_ns, .. } = &mut e.node {
            *read_at_ns += 10_000_000_000;
        }
    }
    let old = fs::metadata(live.join("f")).unwrap().modified().unwrap();
    fs::write(live.join("f"), b"bbbb").unwrap();
    fs::File::options()
        .write(true)
        .open(live.join("f"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    let (t2, stats) = walk(&live, Some(&t1), &store).unwrap();
    assert_eq!(stats.files_read, 1, "{stats:?}");
    assert_ne!(t1.entries, t2.entries);
    // Unchanged, it is reused without a read.
    let mut t2 = t2;
    for e in &mut t2.entries {
        if let Node::File { read_at_ns, .. } = &mut e.node {
            *read_at_ns += 10_000_000_000;
        }
    }
    let (_, stats) = walk(&live, Some(&t2), &store).unwrap();
    assert_eq!((stats.files_read, stats.files_reused), (0, 1), "{stats:?}");
}

fn first_chunk(tree: &bellwether_shadow::dir::Tree, name: &str) -> String {
    tree.entries
        .iter()
        .find_map(|e| match &e.node {
            Node::File { chunks, .. } if e.path.to_string() == name => Some(chunks[0].id.clone()),
            _ => None,
        })
        .unwrap()
}

#[test]
fn a_damaged_chunk_is_named_and_the_live_directory_is_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let live = tmp.path().join("live");
    fs::create_dir(&live).unwrap();
    fixture(&live);
    let store = FsObjects::new(tmp.path().join("objects"));
    let (tree, _) = walk(&live, None, &store).unwrap();
    fs::write(live.join("after-the-point"), b"x").unwrap();
    let live_now = listing(&live);

    let id = first_chunk(&tree, "big.bin");
    let p = store.path_of(&id);
    let mut bytes = fs::read(&p).unwrap();
    bytes[100] ^= 0xff;
    fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&p, &bytes).unwrap();
    let err = restore_tree(&tree, &store, &live).unwrap_err();
    assert!(matches!(err, DirError::ChunkDamaged { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&id) && msg.contains("big.bin"), "{msg}");
    assert_eq!(listing(&live), live_now);
    let beside: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(beside.len(), 2, "staging left behind: {beside:?}");

    // A missing chunk: named before anything is written.
    fs::remove_file(&p).unwrap();
    let err = restore_tree(&tree, &store, &live).unwrap_err();
    assert!(matches!(err, DirError::ChunkMissing { .. }), "{err}");
    assert!(err.to_string().contains("big.bin"), "{err}");
    assert_eq!(listing(&live), live_now);
}

#[test]
fn a_tampered_index_that_would_leave_the_root_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let live = tmp.path().join("live");
    fs::create_dir(&live).unwrap();
    fixture(&live);
    let store = FsObjects::new(tmp.path().join("objects"));
    let (tree, _) = walk(&live, None, &store).unwrap();
    let live_now = listing(&live);
    let mut json = serde_json::to_string(&tree).unwrap();
    json = json.replace("\"sub/small.txt\"", "\"../escaped.txt\"");
    let bad: bellwether_shadow::dir::Tree = serde_json::from_str(&json).unwrap();
    let err = restore_tree(&bad, &store, &live).unwrap_err();
    assert!(err.to_string().contains("../escaped.txt"), "{err}");
    assert!(!tmp.path().join("escaped.txt").exists());
    assert_eq!(listing(&live), live_now);
}

#[test]
fn a_link_given_as_the_root_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let live = tmp.path().join("live");
    fs::create_dir(&live).unwrap();
    symlink(&live, tmp.path().join("alias")).unwrap();
    let store = FsObjects::new(tmp.path().join("objects"));
    let err = walk(&tmp.path().join("alias"), None, &store).unwrap_err();
    assert!(matches!(err, DirError::RootIsLink(_)), "{err}");
    let file = tmp.path().join("file");
    fs::write(&file, b"").unwrap();
    let err = walk(&file, None, &store).unwrap_err();
    assert!(matches!(err, DirError::NotADirectory(_)), "{err}");
    assert!(store.contains(&"0".repeat(64)).map(|x| !x).unwrap());
}
