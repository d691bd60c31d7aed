//! The index of one directory point: every directory, regular file and symbolic link under the
//! root, in walk order, with its mode and modification time, each file's chunk list and
//! whole-file SHA-256. It is stored as a JSON object in the shadow's object store and checked
//! by [`Tree::validate`] before a restore trusts a single path of it.

use std::cmp::Ordering;
use std::collections::HashSet;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A path relative to the shadowed root, as raw bytes (Unix names need not be UTF-8). In JSON
/// a UTF-8 path is a string and any other one `{"hex": "…"}`, so no name is lost or mangled.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RelPath(pub Vec<u8>);

impl RelPath {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The path's components (split on `/`).
    pub fn components(&self) -> impl Iterator<Item = &[u8]> {
        self.0.split(|b| *b == b'/')
    }

    /// The parent path, `None` for a name directly under the root.
    pub fn parent(&self) -> Option<RelPath> {
        let i = self.0.iter().rposition(|b| *b == b'/')?;
        Some(RelPath(self.0[..i].to_vec()))
    }

    /// A path of plain names only: not empty, not absolute, no `.` or `..`, no empty
    /// component and no NUL. This is what keeps a restore inside its directory.
    pub fn is_plain(&self) -> bool {
        !self.0.is_empty()
            && !self.0.contains(&0)
            && self
                .components()
                .all(|c| !c.is_empty() && c != b"." && c != b"..")
    }

    /// Walk order: component by component, bytewise within a component, so a directory comes
    /// right before its contents (`a`, `a/x`, `a.txt`).
    pub fn walk_cmp(&self, other: &RelPath) -> Ordering {
        self.components().cmp(other.components())
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", String::from_utf8_lossy(&self.0))
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum BytesRepr {
    Text(String),
    Hex { hex: String },
}

impl Serialize for RelPath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        bytes_to_repr(&self.0).serialize(s)
    }
}

impl<'de> Deserialize<'de> for RelPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<RelPath, D::Error> {
        repr_to_bytes(BytesRepr::deserialize(d)?)
            .map(RelPath)
            .map_err(serde::de::Error::custom)
    }
}

fn bytes_to_repr(b: &[u8]) -> BytesRepr {
    match std::str::from_utf8(b) {
        Ok(s) => BytesRepr::Text(s.to_string()),
        Err(_) => BytesRepr::Hex {
            hex: hex::encode(b),
        },
    }
}

fn repr_to_bytes(r: BytesRepr) -> Result<Vec<u8>, String> {
    match r {
        BytesRepr::Text(s) => Ok(s.into_bytes()),
        BytesRepr::Hex { hex } => hex::decode(&hex).map_err(|e| format!("bad hex path: {e}")),
    }
}

/// A symbolic link's target, kept as the link's bytes and never resolved.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct LinkTarget(pub Vec<u8>);

impl Serialize for LinkTarget {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        bytes_to_repr(&self.0).serialize(s)
    }
}

impl<'de> Deserialize<'de> for LinkTarget {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<LinkTarget, D::Error> {
        repr_to_bytes(BytesRepr::deserialize(d)?)
            .map(LinkTarget)
            .map_err(serde::de::Error::custom)
    }
}

/// One chunk of a file: the object's SHA-256 name and its length in bytes.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ChunkRef {
    pub id: String,
    pub len: u32,
}

/// What the walk saw of a file without reading it; equal stamps (and a file last changed well
/// before it was read) let a differential point reuse the previous point's chunk list.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Stamp {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Node {
    Dir {
        mode: u32,
        mtime_ns: i64,
    },
    File {
        mode: u32,
        mtime_ns: i64,
        size: u64,
        /// The whole file's SHA-256 when the walk computed it (a tree read back from a
        /// point's manifest has only the chunks', which prove the file whole as well).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sha256: Option<String>,
        chunks: Vec<ChunkRef>,
        /// The walk's stamp, for change detection (not in a point's manifest).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stamp: Option<Stamp>,
        /// When this content was read (ns since the Unix epoch; 0 when unknown).
        #[serde(default)]
        read_at_ns: i64,
    },
    Symlink {
        target: LinkTarget,
        mtime_ns: i64,
    },
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Entry {
    pub path: RelPath,
    #[serde(flatten)]
    pub node: Node,
}

/// The index of a directory point.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Tree {
    /// 1.
    pub format: u32,
    /// The root directory's own mode and modification time.
    pub root_mode: u32,
    pub root_mtime_ns: i64,
    /// In walk order ([`RelPath::walk_cmp`]).
    pub entries: Vec<Entry>,
}

pub const TREE_FORMAT: u32 = 1;

impl Tree {
    /// Every object the tree references, once each.
    pub fn objects(&self) -> Vec<String> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for e in &self.entries {
            if let Node::File { chunks, .. } = &e.node {
                for c in chunks {
                    if seen.insert(c.id.as_str()) {
                        out.push(c.id.clone());
                    }
                }
            }
        }
        out
    }

    /// The bytes of all files.
    pub fn data_bytes(&self) -> u64 {
        self.entries
            .iter()
            .map(|e| match &e.node {
                Node::File { size, .. } => *size,
                _ => 0,
            })
            .sum()
    }

    /// Checks what a restore relies on: plain relative paths in strict walk order (so no
    /// duplicate), every parent a directory of the tree (so no path goes through a link), chunk
    /// names that are SHA-256 hex and chunk lengths that add up to the file's size. The error
    /// names the entry.
    pub fn validate(&self) -> Result<(), String> {
        if self.format != TREE_FORMAT {
            return Err(format!(
                "format {} (this build reads {TREE_FORMAT})",
                self.format
            ));
        }
        let mut dirs: HashSet<&[u8]> = HashSet::new();
        let mut prev: Option<&RelPath> = None;
        for e in &self.entries {
            if !e.path.is_plain() {
                return Err(format!("entry {:?} is not a plain relative path", e.path));
            }
            if let Some(p) = prev {
                if p.walk_cmp(&e.path) != Ordering::Less {
                    return Err(format!(
                        "entry {:?} is out of order or repeated (after {:?})",
                        e.path, p
                    ));
                }
            }
            if let Some(parent) = e.path.parent() {
                if !dirs.contains(parent.as_bytes()) {
                    return Err(format!(
                        "entry {:?} has no directory {:?} before it",
                        e.path, parent
                    ));
                }
            }
            match &e.node {
                Node::Dir { .. } => {
                    dirs.insert(e.path.as_bytes());
                }
                Node::File { size, chunks, .. } => {
                    let sum: u64 = chunks.iter().map(|c| u64::from(c.len)).sum();
                    if sum != *size {
                        return Err(format!(
                            "file {:?}: chunks add up to {sum} bytes, size says {size}",
                            e.path
                        ));
                    }
                    if let Some(c) = chunks.iter().find(|c| !is_sha256_hex(&c.id)) {
                        return Err(format!(
                            "file {:?}: chunk name {:?} is not a SHA-256",
                            e.path, c.id
                        ));
                    }
                }
                Node::Symlink { target, .. } => {
                    if target.0.is_empty() || target.0.contains(&0) {
                        return Err(format!("link {:?} has an empty or NUL target", e.path));
                    }
                }
            }
            prev = Some(&e.path);
        }
        Ok(())
    }
}

pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RelPath {
        RelPath(s.as_bytes().to_vec())
    }

    fn dir(s: &str) -> Entry {
        Entry {
            path: p(s),
            node: Node::Dir {
                mode: 0o755,
                mtime_ns: 0,
            },
        }
    }

    fn link(s: &str) -> Entry {
        Entry {
            path: p(s),
            node: Node::Symlink {
                target: LinkTarget(b"/etc".to_vec()),
                mtime_ns: 0,
            },
        }
    }

    fn tree(entries: Vec<Entry>) -> Tree {
        Tree {
            format: TREE_FORMAT,
            root_mode: 0o755,
            root_mtime_ns: 0,
            entries,
        }
    }

    #[test]
    fn walk_order_puts_a_directory_before_its_contents() {
        let mut v = vec![p("a.txt"), p("a/x"), p("a"), p("b")];
        v.sort_by(|x, y| x.walk_cmp(y));
        assert_eq!(v, vec![p("a"), p("a/x"), p("a.txt"), p("b")]);
    }

    #[test]
    fn paths_that_leave_the_root_are_refused() {
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a/"] {
            assert!(!p(bad).is_plain(), "{bad:?}");
            let t = tree(vec![dir("a"), dir(bad)]);
            assert!(t.validate().is_err(), "{bad:?}");
        }
        assert!(p("a/b.c/d").is_plain());
    }

    #[test]
    fn a_path_through_a_link_or_a_repeated_path_is_refused() {
        let t = tree(vec![link("a"), dir("a/b")]);
        let err = t.validate().unwrap_err();
        assert!(err.contains("no directory \"a\""), "{err}");
        let t = tree(vec![dir("a"), dir("a")]);
        assert!(t.validate().unwrap_err().contains("repeated"));
        tree(vec![dir("a"), dir("a/b"), link("a/b/c")])
            .validate()
            .unwrap();
    }

    #[test]
    fn non_utf8_names_survive_json() {
        let e = Entry {
            path: RelPath(vec![b'x', 0xff, b'y']),
            node: Node::Symlink {
                target: LinkTarget(vec![0xfe]),
                mtime_ns: 5,
            },
        };
        let json = serde_json::to_string(&e).unwrap();
        assert!(json.contains("\"hex\":\"78ff79\""), "{json}");
        let back: Entry = serde_json::from_str(&json).unwrap();
        assert_eq!(back, e);
    }
}
