//! Package versions: Debian-style comparison (`[epoch:]upstream[-revision]`, the algorithm of
//! dpkg's `verrevcmp`) and the size of a change (major, minor, patch or packaging revision).
//!
//! RPM versions (`[epoch:]version-release`) have the same shape and compare the same way in all
//! but corner cases (rpm has no special order for letters against other symbols, and treats `^`
//! specially); the classification below is the same for both.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

/// A parsed version: `[epoch:]upstream[-revision]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version<'a> {
    pub epoch: u64,
    pub upstream: &'a str,
    pub revision: &'a str,
}

impl<'a> Version<'a> {
    /// Never fails: anything that is not an epoch or a revision is upstream.
    pub fn parse(s: &'a str) -> Version<'a> {
        let s = s.trim();
        let (epoch, rest) = match s.split_once(':') {
            Some((e, rest)) if !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit()) => {
                (e.parse().unwrap_or(u64::MAX), rest)
            }
            _ => (0, s),
        };
        let (upstream, revision) = match rest.rsplit_once('-') {
            Some((u, r)) if !u.is_empty() => (u, r),
            _ => (rest, ""),
        };
        Version {
            epoch,
            upstream,
            revision,
        }
    }
}

impl Ord for Version<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.epoch
            .cmp(&other.epoch)
            .then_with(|| verrevcmp(self.upstream, other.upstream))
            .then_with(|| verrevcmp(self.revision, other.revision))
    }
}

impl PartialOrd for Version<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Compares two version strings as dpkg does.
pub fn compare(a: &str, b: &str) -> Ordering {
    Version::parse(a).cmp(&Version::parse(b))
}

/// dpkg's character order: `~` before the end, the end before letters, letters before the rest.
fn order(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(b'~') => -1,
        Some(c) => i32::from(c) + 256,
    }
}

fn verrevcmp(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    let digit = |s: &[u8], k: usize| s.get(k).is_some_and(u8::is_ascii_digit);
    while i < a.len() || j < b.len() {
        while (i < a.len() && !digit(a, i)) || (j < b.len() && !digit(b, j)) {
            let (ac, bc) = (order(a.get(i).copied()), order(b.get(j).copied()));
            if ac != bc {
                return ac.cmp(&bc);
            }
            i += 1;
            j += 1;
        }
        while a.get(i) == Some(&b'0') {
            i += 1;
        }
        while b.get(j) == Some(&b'0') {
            j += 1;
        }
        let mut first_diff = Ordering::Equal;
        while digit(a, i) && digit(b, j) {
            if first_diff == Ordering::Equal {
                first_diff = a[i].cmp(&b[j]);
            }
            i += 1;
            j += 1;
        }
        if digit(a, i) {
            return Ordering::Greater;
        }
        if digit(b, j) {
            return Ordering::Less;
        }
        if first_diff != Ordering::Equal {
            return first_diff;
        }
    }
    Ordering::Equal
}

/// How large a version change is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeLevel {
    /// Only the packaging revision changed (`1.2.3-1` to `1.2.3-1+deb12u1`).
    Revision,
    /// The third or a later upstream component changed (`1.2.3` to `1.2.4`).
    Patch,
    /// The second upstream component changed (`1.2.3` to `1.3.0`).
    Minor,
    /// The epoch or the first upstream component changed (`1.2.3` to `2.0.0`).
    Major,
}

impl std::fmt::Display for ChangeLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChangeLevel::Revision => "revision",
            ChangeLevel::Patch => "patch",
            ChangeLevel::Minor => "minor",
            ChangeLevel::Major => "major",
        })
    }
}

/// The upstream components: split at `.`, `+`, `~`, `-` and `_`.
fn components(upstream: &str) -> impl Iterator<Item = &str> {
    upstream.split(['.', '+', '~', '-', '_'])
}

/// The size and direction of a change from `from` to `to`, or `None` when they are equal
/// (as dpkg compares them).
pub fn classify(from: &str, to: &str) -> Option<(ChangeLevel, Ordering)> {
    let (a, b) = (Version::parse(from), Version::parse(to));
    let dir = b.cmp(&a);
    if dir == Ordering::Equal {
        return None;
    }
    if a.epoch != b.epoch {
        return Some((ChangeLevel::Major, dir));
    }
    let mut ca = components(a.upstream);
    let mut cb = components(b.upstream);
    for index in 0.. {
        match (ca.next(), cb.next()) {
            (None, None) => break,
            (x, y) if verrevcmp(x.unwrap_or(""), y.unwrap_or("")) != Ordering::Equal => {
                let level = match index {
                    0 => ChangeLevel::Major,
                    1 => ChangeLevel::Minor,
                    _ => ChangeLevel::Patch,
                };
                return Some((level, dir));
            }
            _ => {}
        }
    }
    Some((ChangeLevel::Revision, dir))
}

/// A version one step away from `v` at `level`: up (a newer version) or down (an older one;
/// at the revision level, or when the component is already 0, the version is returned
/// unchanged). Used to make synthetic drift.
pub fn bump(v: &str, level: ChangeLevel, up: bool) -> String {
    let p = Version::parse(v);
    let epoch = if v
        .trim()
        .split_once(':')
        .is_some_and(|(e, _)| e.bytes().all(|b| b.is_ascii_digit()) && !e.is_empty())
    {
        format!("{}:", p.epoch)
    } else {
        String::new()
    };
    let revision = |r: &str| {
        if r.is_empty() {
            String::new()
        } else {
            format!("-{r}")
        }
    };
    if level == ChangeLevel::Revision {
        if !up {
            return v.to_owned();
        }
        let r = if p.revision.is_empty() {
            "0+b1".to_owned()
        } else {
            format!("{}+b1", p.revision)
        };
        return format!("{epoch}{}-{r}", p.upstream);
    }
    // The leading dotted numbers of upstream, and whatever follows them.
    let numeric_len = p
        .upstream
        .char_indices()
        .find(|(i, c)| !(c.is_ascii_digit() || (*c == '.' && *i > 0)))
        .map_or(p.upstream.len(), |(i, _)| i);
    let (numeric, suffix) = p.upstream.split_at(numeric_len);
    let suffix = if numeric.ends_with('.') {
        &p.upstream[numeric_len - 1..]
    } else {
        suffix
    };
    let numeric = numeric.trim_end_matches('.');
    let mut parts: Vec<u64> = numeric.split('.').filter_map(|n| n.parse().ok()).collect();
    let index = match level {
        ChangeLevel::Major => 0,
        ChangeLevel::Minor => 1,
        _ => 2,
    };
    while parts.len() <= index {
        parts.push(0);
    }
    if up {
        parts[index] += 1;
        for p in &mut parts[index + 1..] {
            *p = 0;
        }
    } else if parts[index] > 0 {
        parts[index] -= 1;
    } else {
        return v.to_owned();
    }
    let numeric: Vec<String> = parts.iter().map(u64::to_string).collect();
    let rev = if up {
        if p.revision.is_empty() {
            String::new()
        } else {
            "-1".to_owned()
        }
    } else {
        revision(p.revision)
    };
    format!("{epoch}{}{suffix}{rev}", numeric.join("."))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn compares_as_dpkg_does() {
        // Pairs from dpkg's own test suite and from real upgrades, a < b.
        for (a, b) in [
            ("1.0", "1.1"),
            ("1.0", "1:0.1"),
            ("1.0~rc1", "1.0"),
            ("1.0", "1.0+b1"),
            ("1.0-1", "1.0-2"),
            ("1.0-1", "1.0-1+deb12u1"),
            ("2.9", "2.10"),
            ("1.2.3", "1.2.3a"),
            ("1.2.3a", "1.2.3+"),
            ("3.0.11-1~deb12u2", "3.0.11-1"),
            ("6.1.0-18-amd64", "6.1.0-20-amd64"),
            ("0.9", "01.0"),
        ] {
            assert_eq!(compare(a, b), Ordering::Less, "{a} < {b}");
            assert_eq!(compare(b, a), Ordering::Greater, "{b} > {a}");
        }
        assert_eq!(compare("1.0", "1.00"), Ordering::Equal);
        assert_eq!(compare("0:1.0", "1.0"), Ordering::Equal);
    }

    #[test]
    fn parses_epoch_upstream_revision() {
        assert_eq!(
            Version::parse("2:8.2.3995-1+deb12u2"),
            Version {
                epoch: 2,
                upstream: "8.2.3995",
                revision: "1+deb12u2"
            }
        );
        assert_eq!(
            Version::parse("1.2-3-4"),
            Version {
                epoch: 0,
                upstream: "1.2-3",
                revision: "4"
            }
        );
        assert_eq!(
            Version::parse("5.2.15"),
            Version {
                epoch: 0,
                upstream: "5.2.15",
                revision: ""
            }
        );
        assert_eq!(Version::parse("a:b").upstream, "a:b");
    }

    #[test]
    fn classifies_change_sizes() {
        use ChangeLevel::*;
        for (a, b, level) in [
            ("1.2.3-1", "2.0.0-1", Major),
            ("1.2.3-1", "1:1.2.3-1", Major),
            ("1.2.3-1", "1.3.0-1", Minor),
            ("1.2.3-1", "1.2.4-1", Patch),
            ("1.2-1", "1.2.1-1", Patch),
            ("1.2~rc1-1", "1.2-1", Patch),
            ("3.0.11-1~deb12u2", "3.0.11-1", Revision),
            ("5.2.15-2", "5.2.15-2+b8", Revision),
            ("6.1.0-18-amd64", "6.1.0-20-amd64", Patch),
            ("5.15.0-101-generic", "6.8.0-31-generic", Major),
            ("22.04", "24.04", Major),
            ("12", "13", Major),
        ] {
            assert_eq!(
                classify(a, b),
                Some((level, Ordering::Greater)),
                "{a} -> {b}"
            );
            assert_eq!(classify(b, a), Some((level, Ordering::Less)), "{b} -> {a}");
        }
        assert_eq!(classify("1.0-1", "1.0-1"), None);
    }

    #[test]
    fn bump_moves_by_the_requested_level() {
        assert_eq!(bump("1.2.3-4", ChangeLevel::Patch, true), "1.2.4-1");
        assert_eq!(bump("1.2.3-4", ChangeLevel::Minor, true), "1.3.0-1");
        assert_eq!(bump("1:1.2.3-4", ChangeLevel::Major, true), "1:2.0.0-1");
        assert_eq!(
            bump("2.9.14+dfsg-1", ChangeLevel::Patch, true),
            "2.9.15+dfsg-1"
        );
        assert_eq!(bump("1.2.3-4", ChangeLevel::Patch, false), "1.2.2-4");
        assert_eq!(bump("1.2.0-4", ChangeLevel::Patch, false), "1.2.0-4");
        assert_eq!(bump("1.2.3-4", ChangeLevel::Revision, true), "1.2.3-4+b1");
        assert_eq!(bump("43", ChangeLevel::Minor, true), "43.1");
    }

    proptest! {
        #[test]
        fn bump_up_is_newer_at_that_level(
            major in 0u64..50, minor in 0u64..50, patch in 0u64..50, rev in 1u64..9,
            level in prop_oneof![Just(ChangeLevel::Major), Just(ChangeLevel::Minor), Just(ChangeLevel::Patch), Just(ChangeLevel::Revision)],
        ) {
            let v = format!("{major}.{minor}.{patch}-{rev}");
            let up = bump(&v, level, true);
            prop_assert_eq!(classify(&v, &up), Some((level, Ordering::Greater)));
        }

        #[test]
        fn compare_is_antisymmetric_and_never_panics(a in "[0-9a-z.:+~-]{0,12}", b in "[0-9a-z.:+~-]{0,12}") {
            prop_assert_eq!(compare(&a, &b), compare(&b, &a).reverse());
            prop_assert_eq!(compare(&a, &a), Ordering::Equal);
            let _ = classify(&a, &b);
            let _ = bump(&a, ChangeLevel::Minor, true);
        }
    }
}
