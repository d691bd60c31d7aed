//! Alert rules: which events of the event log are sent to which webhook, in which shape.
//!
//! A rule is `{name, url, format: generic|slack, events: [globs], hosts?: [globs]}`. It lives in
//! a plan's `alerts:` section (a rollout's or a patch's: it then sees only that task's events)
//! or on the server (`bellwether alerts add`, for every event, such as mirror switches and
//! shadow rollbacks). This module only validates and matches; the server's dispatcher sends
//! (docs/alerts.md).
//!
//! Event kinds are matched as they are stored in the event log (`rollout.host.rolled_back`,
//! `patch.aborted`, `mirror.switched`, `enrolled`): a glob's `*` stands for any run of
//! characters (dots included), `?` for one. A glob's first dot-separated part must be `*`, a
//! known family (`rollout`, `patch`, `config`, `mirror`, `shadow`) or a known kind without a
//! family (`enrolled`, `audit`…), so a typo such as `rolout.*` is refused instead of never
//! matching.

use serde::{Deserialize, Deserializer, Serialize};

/// The longest rule name.
pub const MAX_NAME: usize = 64;
/// The longest URL.
pub const MAX_URL: usize = 2048;
/// The most event globs (and host globs) in one rule.
pub const MAX_GLOBS: usize = 64;
/// The most rules in one plan.
pub const MAX_RULES: usize = 32;

/// The families of task events (`KIND.EVENT`) and the kinds without a family, as stored.
pub const KNOWN_FAMILIES: &[&str] = &["rollout", "patch", "config", "mirror", "shadow"];
/// Event kinds with no family (the server's own events).
pub const KNOWN_PLAIN_KINDS: &[&str] = &[
    "enrolled",
    "token_set",
    "profile_changed",
    "baseline_captured",
    "drift_recomputed",
    "samples_dropped",
    "token_created",
    "token_revoked",
    "audit",
];

/// The body shape a rule posts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertFormat {
    /// `{"event", "rule", "summary", "links"}`.
    Generic,
    /// `{"text", "blocks"}`, as Slack's incoming webhooks (and Mattermost's) accept.
    Slack,
}

impl AlertFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertFormat::Generic => "generic",
            AlertFormat::Slack => "slack",
        }
    }

    /// Parses `generic` or `slack`.
    pub fn parse(s: &str) -> Result<AlertFormat, String> {
        match s {
            "generic" => Ok(AlertFormat::Generic),
            "slack" => Ok(AlertFormat::Slack),
            other => Err(format!(
                "unknown format {}; use generic (JSON with the event) or slack (Slack's incoming-webhook shape)",
                bellwether_model::text::quote(other)
            )),
        }
    }
}

/// A validated alert rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AlertRule {
    pub name: String,
    /// An `http://` or `https://` URL; never shown or logged in full (see [`redact_url`]).
    pub url: String,
    pub format: AlertFormat,
    /// Event-kind globs; an event matching any of them alerts.
    pub events: Vec<String>,
    /// Host-name globs; when present, only events about a matching host alert (events without
    /// a host never do).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlertRule {
    name: String,
    url: String,
    #[serde(default = "generic")]
    format: String,
    events: Vec<String>,
    #[serde(default)]
    hosts: Option<Vec<String>>,
}

fn generic() -> String {
    "generic".into()
}

impl TryFrom<RawAlertRule> for AlertRule {
    type Error = String;
    fn try_from(r: RawAlertRule) -> Result<AlertRule, String> {
        AlertRule::new(&r.name, &r.url, &r.format, r.events, r.hosts)
    }
}

impl<'de> Deserialize<'de> for AlertRule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::rollout::plan::via_map::<D, RawAlertRule, AlertRule>(d)
    }
}

impl AlertRule {
    /// Builds and validates a rule; the error names the field (`url: …`).
    pub fn new(
        name: &str,
        url: &str,
        format: &str,
        events: Vec<String>,
        hosts: Option<Vec<String>>,
    ) -> Result<AlertRule, String> {
        check_name(name).map_err(|e| format!("name: {e}"))?;
        check_url(url).map_err(|e| format!("url: {e}"))?;
        let format = AlertFormat::parse(format).map_err(|e| format!("format: {e}"))?;
        if events.is_empty() {
            return Err(
                "events: name at least one event kind or glob, such as rollout.* or rollout.host.rolled_back"
                    .into(),
            );
        }
        if events.len() > MAX_GLOBS {
            return Err(format!("events: at most {MAX_GLOBS} globs"));
        }
        for (i, g) in events.iter().enumerate() {
            check_event_glob(g).map_err(|e| format!("events[{i}]: {e}"))?;
        }
        if let Some(hosts) = &hosts {
            if hosts.is_empty() {
                return Err(
                    "hosts: leave it out to alert on every host, or name at least one".into(),
                );
            }
            if hosts.len() > MAX_GLOBS {
                return Err(format!("hosts: at most {MAX_GLOBS} globs"));
            }
            for (i, g) in hosts.iter().enumerate() {
                check_host_glob(g).map_err(|e| format!("hosts[{i}]: {e}"))?;
            }
        }
        Ok(AlertRule {
            name: name.to_string(),
            url: url.to_string(),
            format,
            events,
            hosts,
        })
    }

    /// Whether an event of `kind` about `host` alerts under this rule.
    pub fn matches(&self, kind: &str, host: Option<&str>) -> bool {
        if !self.events.iter().any(|g| glob_match(g, kind)) {
            return false;
        }
        match (&self.hosts, host) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(globs), Some(h)) => globs.iter().any(|g| glob_match(g, h)),
        }
    }
}

/// Checks a plan's `alerts:` list: at most [`MAX_RULES`] rules with distinct names.
pub fn check_rules(rules: &[AlertRule]) -> Result<(), String> {
    if rules.len() > MAX_RULES {
        return Err(format!("alerts: at most {MAX_RULES} rules"));
    }
    for (i, r) in rules.iter().enumerate() {
        if let Some(j) = rules[..i].iter().position(|o| o.name == r.name) {
            return Err(format!(
                "alerts: the name {} is used twice (alerts[{j}] and alerts[{i}])",
                r.name
            ));
        }
    }
    Ok(())
}

/// 1 to 64 of `a-z A-Z 0-9 - _ .`, starting with a letter or digit.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{} must be 1 to {MAX_NAME} of a-z, A-Z, 0-9, '-', '_' and '.', starting with a letter or digit",
            bellwether_model::text::quote(name)
        ))
    }
}

/// The parts of an `http(s)://` URL this module needs.
struct UrlParts<'a> {
    scheme: &'a str,
    /// `host[:port]`, without user info.
    hostport: &'a str,
    /// From the first `/` up to the query or fragment (`/` when absent).
    path: &'a str,
    has_userinfo: bool,
    has_query: bool,
}

fn split_url(url: &str) -> Result<UrlParts<'_>, String> {
    let (scheme, rest) = if let Some(r) = url.strip_prefix("http://") {
        ("http", r)
    } else if let Some(r) = url.strip_prefix("https://") {
        ("https", r)
    } else {
        let shown = redact_url(url);
        return Err(format!(
            "{shown} is not an http:// or https:// URL; alerts are only posted over HTTP(S)"
        ));
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let tail = &rest[end..];
    let (has_userinfo, hostport) = match authority.rfind('@') {
        Some(i) => (true, &authority[i + 1..]),
        None => (false, authority),
    };
    let path_end = tail.find(['?', '#']).unwrap_or(tail.len());
    let path = if tail[..path_end].is_empty() {
        "/"
    } else {
        &tail[..path_end]
    };
    Ok(UrlParts {
        scheme,
        hostport,
        path,
        has_userinfo,
        has_query: tail[path_end..].starts_with('?'),
    })
}

/// Checks a webhook URL: `http://` or `https://`, a host, an optional numeric port, no
/// whitespace or control characters, at most [`MAX_URL`] bytes.
pub fn check_url(url: &str) -> Result<(), String> {
    if url.len() > MAX_URL {
        return Err(format!("longer than {MAX_URL} bytes"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{} holds whitespace or control characters",
            redact_url(url)
        ));
    }
    let p = split_url(url)?;
    let (host, port) = if let Some(rest) = p.hostport.strip_prefix('[') {
        match rest.find(']') {
            Some(i) => (&rest[..i], rest[i + 1..].strip_prefix(':')),
            None => return Err(format!("{}: unclosed [ in the host", redact_url(url))),
        }
    } else {
        match p.hostport.rsplit_once(':') {
            Some((h, port)) => (h, Some(port)),
            None => (p.hostport, None),
        }
    };
    if host.is_empty() {
        return Err(format!("{} has no host", redact_url(url)));
    }
    if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':' | '_' | '%'))
    {
        return Err(format!(
            "{}: the host is not a host name or address",
            redact_url(url)
        ));
    }
    if let Some(port) = port {
        if port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!(
                "{}: the port must be a number from 1 to 65535",
                redact_url(url)
            ));
        }
    }
    Ok(())
}

/// A URL as it may be shown and logged: the scheme, the host and port and the first path
/// segment; the user info, the rest of the path (Slack's webhook path is its secret) and the
/// query are replaced by `…`. `https://user:pw@hooks.example.com/services/T0/B0/XXX?k=v`
/// shows as `https://…@hooks.example.com/services/…?…`. Text that is not an http(s) URL shows
/// as its scheme only.
pub fn redact_url(url: &str) -> String {
    let Ok(p) = split_url_lenient(url) else {
        let scheme = url
            .split_once("://")
            .map(|(s, _)| s)
            .filter(|s| s.len() <= 16 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '+'))
            .unwrap_or("?");
        return format!("{scheme}://…");
    };
    let mut out = format!("{}://", p.scheme);
    if p.has_userinfo {
        out.push_str("…@");
    }
    out.push_str(&bellwether_model::text::quote_message(p.hostport, 255));
    let mut segments = p.path.split('/').filter(|s| !s.is_empty());
    match segments.next() {
        Some(first) => {
            out.push('/');
            out.push_str(&bellwether_model::text::quote_message(first, 64));
            if segments.next().is_some() {
                out.push_str("/…");
            }
        }
        None => out.push('/'),
    }
    if p.has_query {
        out.push_str("?…");
    }
    out
}

fn split_url_lenient(url: &str) -> Result<UrlParts<'_>, ()> {
    if url.starts_with("http://") || url.starts_with("https://") {
        split_url(url).map_err(|_| ())
    } else {
        Err(())
    }
}

/// Checks an event-kind glob (see the module's documentation).
pub fn check_event_glob(glob: &str) -> Result<(), String> {
    let shown = bellwether_model::text::quote(glob);
    if glob.is_empty() || glob.len() > 128 {
        return Err(format!("{shown}: an event glob is 1 to 128 characters"));
    }
    if let Some(c) = glob.chars().find(|c| {
        !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '*' | '?'))
    }) {
        return Err(format!(
            "{shown}: `{}` is not allowed; event kinds are lower-case a-z, 0-9, '_' and '.', globs add '*' and '?'",
            c.escape_default()
        ));
    }
    if glob.split('.').any(str::is_empty) {
        return Err(format!("{shown}: an empty part between dots"));
    }
    let first = glob.split('.').next().unwrap_or_default();
    let known = first.contains(['*', '?'])
        || KNOWN_FAMILIES.contains(&first)
        || (KNOWN_PLAIN_KINDS.contains(&first) && !glob.contains('.'));
    if !known {
        return Err(format!(
            "{shown} matches no event kind: it must start with one of {} (then `.` and the event, such as rollout.host.rolled_back or rollout.*) or be one of {}",
            KNOWN_FAMILIES.join(", "),
            KNOWN_PLAIN_KINDS.join(", ")
        ));
    }
    Ok(())
}

/// Checks a host-name glob: a host name's characters with `*` and `?`.
pub fn check_host_glob(glob: &str) -> Result<(), String> {
    let ok = !glob.is_empty()
        && glob.len() <= 253
        && glob
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '*' | '?'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{} is not a host name or glob (a-z, A-Z, 0-9, '-', '_', '.', '*' and '?')",
            bellwether_model::text::quote(glob)
        ))
    }
}

/// Whether `text` matches `glob`: `*` is any run of characters (dots included), `?` one
/// character, anything else itself. Linear in the lengths (the classic two-pointer match with
/// one backtrack point).
pub fn glob_match(glob: &str, text: &str) -> bool {
    let g: Vec<char> = glob.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut gi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if gi < g.len() && (g[gi] == '?' || g[gi] == t[ti]) {
            gi += 1;
            ti += 1;
        } else if gi < g.len() && g[gi] == '*' {
            star = Some((gi, ti));
            gi += 1;
        } else if let Some((sg, st)) = star {
            gi = sg + 1;
            ti = st + 1;
            star = Some((sg, st + 1));
        } else {
            return false;
        }
    }
    while gi < g.len() && g[gi] == '*' {
        gi += 1;
    }
    gi == g.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(
        url: &str,
        format: &str,
        events: &[&str],
        hosts: Option<&[&str]>,
    ) -> Result<AlertRule, String> {
        AlertRule::new(
            "ops",
            url,
            format,
            events.iter().map(|s| s.to_string()).collect(),
            hosts.map(|h| h.iter().map(|s| s.to_string()).collect()),
        )
    }

    #[test]
    fn globs_match_kinds_across_dots() {
        assert!(glob_match("rollout.*", "rollout.host.rolled_back"));
        assert!(glob_match("*.rolled_back", "rollout.host.rolled_back"));
        assert!(glob_match(
            "rollout.host.rolled_back",
            "rollout.host.rolled_back"
        ));
        assert!(!glob_match(
            "rollout.host.rolled_back",
            "rollout.host.rolled_back_x"
        ));
        assert!(glob_match(
            "rollout.host.?olled_back",
            "rollout.host.rolled_back"
        ));
        assert!(!glob_match("patch.*", "rollout.patch.x"));
        assert!(glob_match("*", "enrolled"));
        assert!(glob_match("web-*", "web-01"));
        assert!(!glob_match("web-*", "db-01"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
    }

    #[test]
    fn a_rule_matches_its_events_and_hosts() {
        let r = rule(
            "http://h/x",
            "generic",
            &["rollout.host.*"],
            Some(&["web-*"]),
        )
        .unwrap();
        assert!(r.matches("rollout.host.rolled_back", Some("web-01")));
        assert!(!r.matches("rollout.host.rolled_back", Some("db-01")));
        assert!(!r.matches("rollout.rollout.paused", None));
        let all = rule("https://h", "slack", &["rollout.*", "enrolled"], None).unwrap();
        assert!(all.matches("rollout.rollout.paused", None));
        assert!(all.matches("enrolled", Some("x")));
        assert!(!all.matches("patch.aborted", None));
    }

    #[test]
    fn bad_rules_are_refused_naming_the_field() {
        /// (url, format, events, hosts, the error's text)
        type Case<'a> = (
            &'a str,
            &'a str,
            &'a [&'a str],
            Option<&'a [&'a str]>,
            &'a str,
        );
        let cases: &[Case] = &[
            (
                "ftp://h/x",
                "generic",
                &["rollout.*"],
                None,
                "url: ftp://… is not an http:// or https:// URL",
            ),
            (
                "file:///etc/passwd",
                "generic",
                &["rollout.*"],
                None,
                "url: file://… is not an http",
            ),
            ("http://", "generic", &["rollout.*"], None, "has no host"),
            (
                "http://h:99999/",
                "generic",
                &["rollout.*"],
                None,
                "url: http://h:99999/: the port",
            ),
            ("http://h x/", "generic", &["rollout.*"], None, "whitespace"),
            (
                "http://h/",
                "teams",
                &["rollout.*"],
                None,
                "format: unknown format teams",
            ),
            (
                "http://h/",
                "generic",
                &[],
                None,
                "events: name at least one",
            ),
            (
                "http://h/",
                "generic",
                &["Rollout.*"],
                None,
                "events[0]: Rollout.*: `R` is not allowed",
            ),
            (
                "http://h/",
                "generic",
                &["rolout.*"],
                None,
                "events[0]: rolout.* matches no event kind",
            ),
            (
                "http://h/",
                "generic",
                &["rollout..x"],
                None,
                "events[0]: rollout..x: an empty part",
            ),
            (
                "http://h/",
                "generic",
                &["rollout.*"],
                Some(&[]),
                "hosts: leave it out",
            ),
            (
                "http://h/",
                "generic",
                &["rollout.*"],
                Some(&["web 1"]),
                "hosts[0]: web 1 is not a host",
            ),
        ];
        for (url, format, events, hosts, want) in cases {
            let err = rule(url, format, events, *hosts).unwrap_err();
            assert!(
                err.contains(want),
                "{url} {format} {events:?}: {err} lacks {want}"
            );
        }
        let err =
            AlertRule::new("", "http://h", "generic", vec!["rollout.*".into()], None).unwrap_err();
        assert!(err.starts_with("name: "), "{err}");
    }

    const PLAN: &str = "name: web-v2
update:
  name: websvc
  version: \"2\"
  apply:  { builtin: set_service_version, version: \"2\" }
  revert: { builtin: set_service_version, version: \"1\" }
analysis:
  interval: 100ms
  baseline: 200ms
  metrics:
    - { name: svc_error_ratio, threshold_pct: 50, for: 300ms, floor: 0.01 }
";

    #[test]
    fn a_rollout_plan_carries_its_alerts_and_refuses_bad_ones_with_their_place() {
        let ok = format!(
            "{PLAN}alerts:\n  - {{ name: oncall, url: \"https://hooks.example.com/s/T/B/X\", format: slack, events: [rollout.host.rolled_back, \"rollout.rollout.*\"], hosts: [\"web-*\"] }}\n"
        );
        let plan = crate::rollout::plan::parse_plan(&ok, "web.yaml").unwrap();
        assert_eq!(plan.alerts.len(), 1);
        assert_eq!(plan.alerts[0].format, AlertFormat::Slack);
        assert!(plan.alerts[0].matches("rollout.host.rolled_back", Some("web-03")));
        // The typed plan serialises to YAML that parses to the same plan.
        let back = crate::yaml::from_str::<crate::rollout::plan::Plan>(
            &serde_json::to_string(&plan).unwrap(),
        )
        .unwrap();
        assert_eq!(back, plan);
        for (bad, want) in [
            (
                "url: \"ftp://x/y\"",
                "web.yaml:13:5: alerts[0]: url: ftp://…",
            ),
            ("format: teams", "unknown format teams"),
            ("events: [\"rolout.*\"]", "rolout.* matches no event kind"),
            ("unknown: 1", "unknown"),
        ] {
            let mut fields = vec!["name: a", "url: \"http://h/\"", "events: [\"rollout.*\"]"];
            let key = bad.split(':').next().unwrap();
            fields.retain(|f| !f.starts_with(key));
            fields.push(bad);
            let text = format!("{PLAN}alerts:\n  - {{ {} }}\n", fields.join(", "));
            let err = crate::rollout::plan::parse_plan(&text, "web.yaml")
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{bad}: {err}");
            assert!(err.starts_with("web.yaml:"), "{err}");
        }
        let twice = format!(
            "{PLAN}alerts:\n  - {{ name: a, url: \"http://h/\", events: [\"rollout.*\"] }}\n  - {{ name: a, url: \"http://h/\", events: [\"rollout.*\"] }}\n"
        );
        let err = crate::rollout::plan::parse_plan(&twice, "web.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("the name a is used twice"), "{err}");
    }

    #[test]
    fn urls_are_shown_without_their_secrets() {
        assert_eq!(
            redact_url("https://user:pw@hooks.slack.com/services/T0/B0/XXXX?token=abc"),
            "https://…@hooks.slack.com/services/…?…"
        );
        assert_eq!(
            redact_url("http://127.0.0.1:8080/hook"),
            "http://127.0.0.1:8080/hook"
        );
        assert_eq!(redact_url("http://h"), "http://h/");
        assert_eq!(redact_url("ftp://secret@x/y"), "ftp://…");
        assert_eq!(redact_url("no url at all"), "?://…");
    }
}
