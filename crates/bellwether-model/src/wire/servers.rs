//! Several server addresses and the order to try them in: the failover rule shared by the
//! agent's transport and the CLI's client.
//!
//! `--server` takes one URL or a comma-separated list, and may be repeated; so may
//! `BELLWETHER_SERVER`. A call tries the address that last answered first, then the others in
//! the order given. It moves on only when the request was not carried out: the connection
//! failed, the server answered 503 (no leader known, or a store unavailable for now), or it
//! answered 421 or 307 naming the leader (`X-Bellwether-Leader` or `Location`). A leader so
//! named is tried next, but only when it is one of the configured addresses: a client never
//! sends its token to an address that a server, rather than the operator, chose.

use std::fmt;

/// The most addresses a list may hold.
pub const MAX_SERVERS: usize = 16;

/// The header in which a server that is not the leader names the leader's URL.
pub const LEADER_HEADER: &str = "x-bellwether-leader";

/// A checked, non-empty list of server base URLs (`http://` or `https://`, no trailing `/`),
/// without duplicates, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerList {
    urls: Vec<String>,
}

/// Why a list of server addresses is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerListError {
    #[error("no server address given")]
    Empty,
    #[error("server address {position} in {value} is empty (a stray comma?)")]
    EmptyEntry { value: String, position: usize },
    #[error("server address {url} must start with http:// or https://")]
    Scheme { url: String },
    #[error("server address {url} has no host")]
    NoHost { url: String },
    #[error("{count} server addresses given; at most {MAX_SERVERS} are allowed")]
    TooMany { count: usize },
}

impl ServerList {
    /// Parses the values of `--server` (each one URL or a comma-separated list).
    pub fn parse<S: AsRef<str>>(values: &[S]) -> Result<ServerList, ServerListError> {
        let mut urls: Vec<String> = Vec::new();
        for value in values {
            let value = value.as_ref();
            for (i, piece) in value.split(',').enumerate() {
                let piece = piece.trim();
                if piece.is_empty() {
                    return Err(ServerListError::EmptyEntry {
                        value: quoted(value),
                        position: i + 1,
                    });
                }
                let lower = piece.to_ascii_lowercase();
                let Some(scheme_len) = ["http://", "https://"]
                    .iter()
                    .find(|p| lower.starts_with(*p))
                    .map(|p| p.len())
                else {
                    return Err(ServerListError::Scheme { url: quoted(piece) });
                };
                let rest = piece[scheme_len..].trim_end_matches('/');
                if rest.is_empty() || rest.starts_with('/') {
                    return Err(ServerListError::NoHost { url: quoted(piece) });
                }
                let url = &piece[..scheme_len + rest.len()];
                if !urls.iter().any(|u| same_server(u, url)) {
                    urls.push(url.to_owned());
                }
            }
        }
        if urls.is_empty() {
            return Err(ServerListError::Empty);
        }
        if urls.len() > MAX_SERVERS {
            return Err(ServerListError::TooMany { count: urls.len() });
        }
        Ok(ServerList { urls })
    }

    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    pub fn len(&self) -> usize {
        self.urls.len()
    }

    /// Always false: a list holds at least one address.
    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }

    /// The index of the address `hint` names (a leader's URL from a header), if it is one of
    /// the list's.
    pub fn position(&self, hint: &str) -> Option<usize> {
        let hint = hint.trim().trim_end_matches('/');
        self.urls.iter().position(|u| same_server(u, hint))
    }
}

impl fmt::Display for ServerList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.urls.join(","))
    }
}

/// `s` in double quotes, cut and escaped as errors quote input.
fn quoted(s: &str) -> String {
    format!("\"{}\"", crate::text::quote(s))
}

/// Two base URLs name the same server: equal but for the case of the scheme and host.
fn same_server(a: &str, b: &str) -> bool {
    let split = |u: &str| -> (String, String) {
        let (scheme, rest) = u.split_once("://").unwrap_or(("", u));
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        (
            format!(
                "{}://{}",
                scheme.to_ascii_lowercase(),
                host.to_ascii_lowercase()
            ),
            path.to_owned(),
        )
    };
    split(a) == split(b)
}

/// What an answer means for failover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Use this answer (a success or an error the request itself caused).
    Answer,
    /// The request was not carried out here: try the next address.
    Next,
}

/// Whether an HTTP status sends a request to the next address. `read` is true for a request
/// that changes nothing (`GET`): a 502 or 504 (a proxy or a forwarding follower that lost the
/// leader) is then safe to retry elsewhere too; a write that got one may have been carried out.
pub fn verdict_for_status(status: u16, read: bool) -> Verdict {
    match status {
        503 | 421 | 307 => Verdict::Next,
        502 | 504 if read => Verdict::Next,
        _ => Verdict::Answer,
    }
}

/// The order of one pass over the addresses: the one that last answered first, then the
/// others in list order; a leader named on the way jumps the queue.
#[derive(Debug, Clone)]
pub struct Pass {
    order: Vec<usize>,
    next: usize,
}

impl Pass {
    /// A pass over `len` addresses starting at `current`.
    pub fn new(len: usize, current: usize) -> Pass {
        let current = if len == 0 { 0 } else { current % len };
        Pass {
            order: (0..len).map(|i| (current + i) % len).collect(),
            next: 0,
        }
    }

    /// Moves `index` to the front of the addresses not yet tried in this pass; nothing if it
    /// was tried already (a leader hint never makes a pass loop).
    pub fn prefer(&mut self, index: usize) {
        if let Some(pos) = self.order[self.next..].iter().position(|&i| i == index) {
            let pos = self.next + pos;
            let i = self.order.remove(pos);
            self.order.insert(self.next, i);
        }
    }
}

impl Iterator for Pass {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        let i = self.order.get(self.next).copied()?;
        self.next += 1;
        Some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_split_on_commas_and_repeats() {
        let l = ServerList::parse(&["http://a:1/, https://B:2", "http://c:3/bw"]).unwrap();
        assert_eq!(l.urls(), ["http://a:1", "https://B:2", "http://c:3/bw"]);
        assert_eq!(l.to_string(), "http://a:1,https://B:2,http://c:3/bw");
        // The same server twice (case of the host, a trailing slash) is kept once.
        let l = ServerList::parse(&["http://a:1", "HTTP://A:1/"]).unwrap();
        assert_eq!(l.len(), 1);
        // A path is part of the address.
        assert_eq!(
            ServerList::parse(&["http://a:1/x,http://a:1/y"])
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn bad_lists_are_named() {
        let e = |v: &[&str]| ServerList::parse(v).unwrap_err().to_string();
        assert_eq!(e(&[]), "no server address given");
        assert_eq!(
            e(&["http://a:1,,http://b:2"]),
            "server address 2 in \"http://a:1,,http://b:2\" is empty (a stray comma?)"
        );
        assert_eq!(
            e(&["a:1"]),
            "server address \"a:1\" must start with http:// or https://"
        );
        assert_eq!(e(&["http://"]), "server address \"http://\" has no host");
        let many: Vec<String> = (0..17).map(|i| format!("http://h{i}")).collect();
        assert_eq!(
            ServerList::parse(&many).unwrap_err(),
            ServerListError::TooMany { count: 17 }
        );
    }

    #[test]
    fn a_leader_hint_matches_only_a_configured_address() {
        let l = ServerList::parse(&["http://a:1,http://b:2"]).unwrap();
        assert_eq!(l.position("http://B:2/"), Some(1));
        assert_eq!(l.position(" http://a:1"), Some(0));
        assert_eq!(l.position("http://evil:2"), None);
        assert_eq!(l.position("https://b:2"), None);
    }

    #[test]
    fn a_pass_starts_at_the_last_good_address_and_takes_hints() {
        assert_eq!(Pass::new(3, 1).collect::<Vec<_>>(), [1, 2, 0]);
        assert_eq!(Pass::new(3, 4).collect::<Vec<_>>(), [1, 2, 0]);
        assert_eq!(Pass::new(0, 0).count(), 0);
        let mut p = Pass::new(4, 0);
        assert_eq!(p.next(), Some(0));
        p.prefer(3);
        assert_eq!(p.next(), Some(3));
        // A hint naming an address already tried changes nothing.
        p.prefer(0);
        assert_eq!(p.collect::<Vec<_>>(), [1, 2]);
    }

    #[test]
    fn only_answers_that_did_nothing_move_on() {
        for s in [503, 421, 307] {
            assert_eq!(verdict_for_status(s, false), Verdict::Next, "{s}");
        }
        for s in [502, 504] {
            assert_eq!(verdict_for_status(s, true), Verdict::Next, "{s}");
            assert_eq!(verdict_for_status(s, false), Verdict::Answer, "{s}");
        }
        for s in [200, 204, 400, 401, 403, 404, 409, 500] {
            assert_eq!(verdict_for_status(s, true), Verdict::Answer, "{s}");
        }
    }

    proptest::proptest! {
        #[test]
        fn a_pass_visits_every_address_once(len in 0usize..20, cur in 0usize..40, hints in proptest::collection::vec(0usize..20, 0..10)) {
            let mut p = Pass::new(len, cur);
            let mut seen = Vec::new();
            let mut hints = hints.into_iter();
            while let Some(i) = p.next() {
                seen.push(i);
                if let Some(h) = hints.next() {
                    if h < len { p.prefer(h); }
                }
            }
            seen.sort_unstable();
            proptest::prop_assert_eq!(seen, (0..len).collect::<Vec<_>>());
        }

        #[test]
        fn parsing_never_panics(v in proptest::collection::vec(".{0,40}", 0..4)) {
            if let Ok(l) = ServerList::parse(&v) {
                proptest::prop_assert!(!l.is_empty() && l.len() <= MAX_SERVERS);
            }
        }
    }
}
