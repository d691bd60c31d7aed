//! Declared dependencies: parsing `NAME=HOST:PORT`, reading `etc/bellwether/dependencies`, and
//! probing each with a TCP connect.
//!
//! Probes run concurrently on plain threads with one overall deadline, so a host with many
//! dependencies costs one timeout at most, and a DNS lookup that hangs cannot hold collection
//! past the deadline: the probe is reported unreachable and its thread is left to finish alone.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bellwether_model::profile::DependencyStatus;

use crate::Error;

/// The file, relative to a host root, that declares the host's dependencies, one
/// `NAME=HOST:PORT` a line. Editing it changes what the agent probes on its next collection.
pub const DEPENDENCIES_FILE: &str = "etc/bellwether/dependencies";

/// A dependency the host declares: a name and a `host:port` endpoint.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dependency {
    pub name: String,
    /// `host:port`; the host may be a name, an IPv4 address or a bracketed IPv6 address.
    pub endpoint: String,
}

/// Why a `NAME=HOST:PORT` value was refused, without saying where it came from.
fn check_dependency(value: &str) -> Result<Dependency, String> {
    let (name, endpoint) = value
        .split_once('=')
        .ok_or_else(|| "expected NAME=HOST:PORT".to_owned())?;
    let (name, endpoint) = (name.trim(), endpoint.trim());
    if name.is_empty() {
        return Err("the name before '=' is empty".to_owned());
    }
    if let Some(ch) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "the name {name:?} contains {ch:?}; use letters, digits, '.', '_' and '-'"
        ));
    }
    let (host, port) = endpoint
        .rsplit_once(':')
        .ok_or_else(|| format!("the endpoint {endpoint:?} has no ':PORT'"))?;
    if host.is_empty() || host == "[]" {
        return Err(format!("the endpoint {endpoint:?} has no host"));
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(format!(
            "the IPv6 address in {endpoint:?} must be in brackets, as [::1]:5432"
        ));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(format!("the port {port:?} is not a number from 1 to 65535")),
    }
    Ok(Dependency {
        name: name.to_owned(),
        endpoint: endpoint.to_owned(),
    })
}

/// Parses one `NAME=HOST:PORT`, as given to `--dependency`. The error names the value.
pub fn parse_dependency(value: &str) -> Result<Dependency, Error> {
    check_dependency(value).map_err(|reason| Error::BadDependency {
        value: value.to_owned(),
        reason,
    })
}

/// Parses the text of a dependencies file: one `NAME=HOST:PORT` a line, blank lines and `#`
/// comments ignored. `path` is used in errors only.
pub fn parse_dependencies_file(path: &Path, text: &str) -> Result<Vec<Dependency>, Error> {
    let mut out: Vec<Dependency> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let bad = |reason: String| Error::BadDependencyLine {
            path: path.to_owned(),
            line: i + 1,
            reason,
        };
        let dep = check_dependency(line).map_err(bad)?;
        if out.iter().any(|d| d.name == dep.name) {
            return Err(bad(format!("the name {:?} is declared twice", dep.name)));
        }
        out.push(dep);
    }
    Ok(out)
}

/// Reads `etc/bellwether/dependencies` under `rootfs`. A missing file declares nothing; an
/// unreadable file or a bad line is an error naming the file (and the line).
pub fn read_declared_dependencies(rootfs: &Path) -> Result<Vec<Dependency>, Error> {
    let path: PathBuf = rootfs.join(DEPENDENCIES_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => parse_dependencies_file(&path, &text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(Error::Read { path, source }),
    }
}

/// Merges dependencies: later lists override earlier ones by name; the result is sorted by name.
pub fn merge_dependencies(lists: &[&[Dependency]]) -> Vec<Dependency> {
    let mut by_name = std::collections::BTreeMap::new();
    for list in lists {
        for d in *list {
            by_name.insert(d.name.clone(), d.clone());
        }
    }
    by_name.into_values().collect()
}

/// Probes every dependency with a TCP connect, concurrently, within `timeout` overall.
/// Results come back in the order of `deps`.
pub fn probe_all(deps: &[Dependency], timeout: Duration) -> Vec<DependencyStatus> {
    let start = Instant::now();
    let deadline = start + timeout;
    let (tx, rx) = mpsc::channel::<(usize, Option<f64>)>();
    for (i, dep) in deps.iter().enumerate() {
        let thread_tx = tx.clone();
        let endpoint = dep.endpoint.clone();
        let spawned = std::thread::Builder::new()
            .name("bellwether-probe".to_owned())
            .spawn(move || {
                let _ = thread_tx.send((i, probe_one(&endpoint, deadline)));
            });
        if spawned.is_err() {
            // No thread to be had: probe inline rather than report a failure we did not see.
            let _ = tx.send((i, probe_one(&dep.endpoint, deadline)));
        }
    }
    drop(tx);
    let mut latency: Vec<Option<Option<f64>>> = vec![None; deps.len()];
    let mut pending = deps.len();
    while pending > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((i, result)) => {
                latency[i] = Some(result);
                pending -= 1;
            }
            Err(_) => break,
        }
    }
    deps.iter()
        .zip(latency)
        .map(|(d, l)| {
            let l = l.flatten();
            DependencyStatus {
                name: d.name.clone(),
                endpoint: d.endpoint.clone(),
                reachable: l.is_some(),
                latency_ms: l,
            }
        })
        .collect()
}

/// Connect latency in milliseconds, or `None` when no address answered before `deadline`.
fn probe_one(endpoint: &str, deadline: Instant) -> Option<f64> {
    let addrs: Vec<SocketAddr> = endpoint.to_socket_addrs().ok()?.collect();
    for addr in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let t = Instant::now();
        if TcpStream::connect_timeout(&addr, left).is_ok() {
            return Some(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn parses_good_values() {
        let d = parse_dependency("db=10.0.0.5:5432").unwrap();
        assert_eq!(
            d,
            Dependency {
                name: "db".into(),
                endpoint: "10.0.0.5:5432".into()
            }
        );
        assert_eq!(
            parse_dependency("v6=[::1]:80").unwrap().endpoint,
            "[::1]:80"
        );
        assert_eq!(
            parse_dependency("cache = redis.local:6379").unwrap().name,
            "cache"
        );
    }

    #[test]
    fn bad_values_name_the_value_and_the_reason() {
        for (value, needle) in [
            ("db", "expected NAME=HOST:PORT"),
            ("=h:1", "name before '='"),
            ("d b=h:1", "contains ' '"),
            ("db=host", "no ':PORT'"),
            ("db=:5432", "no host"),
            ("db=h:0", "not a number from 1 to 65535"),
            ("db=h:99999", "not a number"),
            ("db=::1:80", "must be in brackets"),
        ] {
            let msg = parse_dependency(value).unwrap_err().to_string();
            assert!(msg.contains(&format!("{value:?}")), "{msg}");
            assert!(msg.contains(needle), "{value}: {msg}");
        }
    }

    #[test]
    fn file_errors_name_file_and_line() {
        let text = "# declared\n\ndb=127.0.0.1:5432  # primary\ncache=oops\n";
        let err = parse_dependencies_file(Path::new("x/deps"), text)
            .unwrap_err()
            .to_string();
        assert_eq!(err, "x/deps:4: the endpoint \"oops\" has no ':PORT'");
        let dup = parse_dependencies_file(Path::new("f"), "a=h:1\na=h:2\n").unwrap_err();
        assert_eq!(dup.to_string(), "f:2: the name \"a\" is declared twice");
        let ok = parse_dependencies_file(Path::new("f"), "a=h:1\n#b=h:2\nc=[::1]:3\n").unwrap();
        assert_eq!(ok.len(), 2);
    }

    #[test]
    fn reads_the_file_under_a_root() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_declared_dependencies(dir.path()).unwrap(), vec![]);
        std::fs::create_dir_all(dir.path().join("etc/bellwether")).unwrap();
        std::fs::write(dir.path().join(DEPENDENCIES_FILE), "db=127.0.0.1:5432\nx\n").unwrap();
        let err = read_declared_dependencies(dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("etc/bellwether/dependencies:2:"), "{err}");
    }

    #[test]
    fn merge_overrides_by_name() {
        let a = [
            parse_dependency("db=h:1").unwrap(),
            parse_dependency("x=h:2").unwrap(),
        ];
        let b = [parse_dependency("db=h:9").unwrap()];
        let m = merge_dependencies(&[&a, &b]);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].endpoint, "h:9");
    }

    #[test]
    fn probes_reachable_and_unreachable_endpoints() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap();
        // A port that was bound and released: nothing listens there now.
        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let deps = [
            Dependency {
                name: "up".into(),
                endpoint: open.to_string(),
            },
            Dependency {
                name: "down".into(),
                endpoint: closed.to_string(),
            },
            Dependency {
                name: "nonsense".into(),
                endpoint: "no-such-host.invalid:1".into(),
            },
        ];
        let st = probe_all(&deps, Duration::from_secs(2));
        assert_eq!(st.len(), 3);
        assert!(st[0].reachable);
        assert!(st[0].latency_ms.unwrap() >= 0.0);
        assert!(!st[1].reachable);
        assert_eq!(st[1].latency_ms, None);
        assert!(!st[2].reachable);
        assert_eq!(st[2].name, "nonsense");
    }
}
