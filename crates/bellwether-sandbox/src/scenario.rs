//! Scenario files for `sandbox up --scenario FILE` (documented in docs/scenario.md): host
//! groups, fault rules with an onset, and a generated deployment history consistent with the
//! rules.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Deserialize;

use crate::fleet::Planned;
use crate::service::Fault;
use crate::state::Injected;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    #[serde(default = "one")]
    pub seed: u64,
    pub groups: Vec<Group>,
    #[serde(default)]
    pub faults: Vec<FaultRule>,
    #[serde(default)]
    pub history: Option<History>,
}

fn one() -> u64 {
    1
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    pub name: String,
    pub count: usize,
    pub role: String,
    /// Packages installed at these versions on every host of the group (added or replaced).
    #[serde(default)]
    pub packages: BTreeMap<String, String>,
    /// Free space on the service's disk, in percent.
    #[serde(default = "fifty")]
    pub disk_free_pct: f64,
    /// Extra agent labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

fn fifty() -> f64 {
    50.0
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRule {
    #[serde(default)]
    pub name: Option<String>,
    pub when: When,
    pub effect: Effect,
    #[serde(default, with = "duration_opt")]
    pub onset: Option<Duration>,
    /// Whether the generated history shows this fault. `false` makes it a new fault that no
    /// past deployment hit, so the model cannot predict it before a rollout meets it.
    #[serde(default = "yes")]
    pub in_history: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct When {
    pub version: String,
    /// Package name → version pattern: `*` (installed at any version), an exact version, or a
    /// prefix ending in `*` (`1.1*`).
    #[serde(default)]
    pub package: BTreeMap<String, String>,
    #[serde(default)]
    pub disk_free_below_pct: Option<f64>,
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Effect {
    #[serde(default)]
    pub error_rate: Option<f64>,
    #[serde(default)]
    pub latency_factor: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct History {
    pub deployments: usize,
    #[serde(default = "one")]
    pub seed: u64,
}

/// `onset` in the one duration grammar (docs/durations.md).
mod duration_opt {
    use std::time::Duration;

    use serde::Deserialize as _;

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        let s = String::deserialize(d)?;
        bellwether_model::duration::parse(&s)
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("onset {s:?}: {e}")))
    }
}

/// A scenario that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScenarioError {
    /// The YAML does not parse, or a field has the wrong type, is unknown or is missing.
    #[error("{file}:{line}:{column}: {message}")]
    Syntax {
        file: String,
        line: usize,
        column: usize,
        /// The field path and what is wrong (`groups[0]: unknown field `colour``).
        message: String,
    },
    /// The YAML parses but a value is not allowed; `message` names the group or fault by
    /// index and name.
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
}

/// Parses and validates; every error names the file, and the line and column where the YAML
/// parser knows them (syntax, types, unknown or missing fields); validation errors name the
/// group or fault by index and name.
pub fn parse(text: &str, file: &str) -> Result<Scenario, ScenarioError> {
    let s: Scenario =
        bellwether_engine::yaml::from_str(text).map_err(|e| ScenarioError::Syntax {
            file: file.to_string(),
            line: e.line,
            column: e.column,
            message: e.path_and_message(),
        })?;
    let bad = |what: String| {
        Err(ScenarioError::Invalid {
            file: file.to_string(),
            message: what,
        })
    };
    if s.groups.is_empty() {
        return bad("groups: at least one group is needed".into());
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, g) in s.groups.iter().enumerate() {
        let at = format!("groups[{i}] ({})", g.name);
        if g.name.is_empty()
            || !g
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return bad(format!("{at}: name must be letters, digits and '-'"));
        }
        if !names.insert(g.name.clone()) {
            return bad(format!("{at}: the name is used twice"));
        }
        if g.count == 0 || g.count > 500 {
            return bad(format!("{at}: count must be between 1 and 500"));
        }
        if !(0.0..=100.0).contains(&g.disk_free_pct) {
            return bad(format!("{at}: disk_free_pct must be within [0, 100]"));
        }
        for (p, v) in &g.packages {
            if p.is_empty()
                || v.is_empty()
                || p.contains(char::is_whitespace)
                || v.contains(char::is_whitespace)
            {
                return bad(format!(
                    "{at}: package {p:?} = {v:?}: names and versions are non-empty words"
                ));
            }
        }
    }
    if s.groups.iter().map(|g| g.count).sum::<usize>() > 500 {
        return bad("groups: at most 500 hosts in all".into());
    }
    for (i, f) in s.faults.iter().enumerate() {
        let at = format!(
            "faults[{i}]{}",
            f.name
                .as_ref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        );
        if f.effect.error_rate.is_none() && f.effect.latency_factor.is_none() {
            return bad(format!("{at}: effect needs error_rate or latency_factor"));
        }
        if let Some(e) = f.effect.error_rate {
            if !(0.0..=1.0).contains(&e) {
                return bad(format!("{at}: effect.error_rate {e} is not within [0, 1]"));
            }
        }
        if let Some(l) = f.effect.latency_factor {
            if !(l > 0.0 && l <= 1000.0) {
                return bad(format!(
                    "{at}: effect.latency_factor {l} is not within (0, 1000]"
                ));
            }
        }
        if let Some(g) = &f.when.group {
            if !names.contains(g) {
                return bad(format!("{at}: when.group {g:?} is not a group"));
            }
        }
    }
    if let Some(h) = &s.history {
        if h.deployments < 20 || h.deployments > 100_000 {
            return bad("history.deployments must be between 20 and 100000".into());
        }
    }
    Ok(s)
}

/// A host of the scenario: its group's attributes.
#[derive(Debug, Clone, PartialEq)]
pub struct ScenarioHost {
    pub name: String,
    pub group: String,
    pub role: String,
    pub packages: BTreeMap<String, String>,
    pub disk_free_pct: f64,
    pub labels: BTreeMap<String, String>,
}

fn version_matches(pattern: &str, v: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => v.starts_with(prefix),
        None => pattern == v,
    }
}

impl When {
    /// Whether the rule's host conditions hold (the version is checked by the service).
    pub fn matches_host(
        &self,
        group: &str,
        role: &str,
        packages: &BTreeMap<String, String>,
        disk: f64,
    ) -> bool {
        self.role.as_deref().is_none_or(|r| r == role)
            && self.group.as_deref().is_none_or(|g| g == group)
            && self.disk_free_below_pct.is_none_or(|t| disk < t)
            && self
                .package
                .iter()
                .all(|(p, pat)| packages.get(p).is_some_and(|v| version_matches(pat, v)))
    }
}

impl Scenario {
    /// The hosts, named `GROUP-01`, `GROUP-02`, …, in group order.
    pub fn hosts(&self) -> Vec<ScenarioHost> {
        let mut out = Vec::new();
        for g in &self.groups {
            for i in 1..=g.count {
                out.push(ScenarioHost {
                    name: format!("{}-{i:02}", g.name),
                    group: g.name.clone(),
                    role: g.role.clone(),
                    packages: g.packages.clone(),
                    disk_free_pct: g.disk_free_pct,
                    labels: g.labels.clone(),
                });
            }
        }
        out
    }

    /// The fleet plan: per host a seed, its role's shared package set, and the group's
    /// packages as changes applied at generation (so they survive `sandbox drift` rebuilds).
    pub fn plan(&self) -> Vec<Planned> {
        let mut rng = bellwether_drift::synth::SplitMix64::new(self.seed ^ 0x5CE7_A410);
        let mut role_seed: BTreeMap<String, u64> = BTreeMap::new();
        self.hosts()
            .into_iter()
            .map(|h| {
                let seed = rng.next_u64();
                let packages_seed = *role_seed.entry(h.role.clone()).or_insert(seed);
                Planned {
                    name: h.name,
                    role: h.role,
                    seed,
                    packages_seed,
                    drifts: h
                        .packages
                        .iter()
                        .map(|(name, version)| Injected::SetPackage {
                            name: name.clone(),
                            version: version.clone(),
                        })
                        .collect(),
                }
            })
            .collect()
    }

    /// The faults a host's service applies, given its installed packages.
    pub fn faults_for(
        &self,
        host: &ScenarioHost,
        installed: &BTreeMap<String, String>,
    ) -> Vec<Fault> {
        self.faults
            .iter()
            .filter(|f| {
                f.when
                    .matches_host(&host.group, &host.role, installed, host.disk_free_pct)
            })
            .map(|f| Fault {
                version: f.when.version.clone(),
                error_rate: f.effect.error_rate.unwrap_or(0.0),
                latency_factor: f.effect.latency_factor.unwrap_or(1.0),
                onset_ms: f.onset.map_or(0, |d| d.as_millis() as u64),
            })
            .collect()
    }

    /// A deployment history as CSV, consistent with the fault rules, in the columns the
    /// server's feature vector uses (docs/api.md): each row is one past update of a host drawn
    /// from the groups and its outcome. A row whose host and version match a rule failed with
    /// probability 0.5 + error rate (capped at 0.95), or 0.8 for a latency factor of 2 or more;
    /// any other row fails with probability 0.03. Rules with `in_history: false` are new:
    /// no row pairs their version with a host they match.
    pub fn history_csv(&self) -> Option<String> {
        let h = self.history.as_ref()?;
        let mut rng = bellwether_drift::synth::SplitMix64::new(h.seed ^ 0x4157_0a11);
        let hosts = self.hosts();
        let mut versions: Vec<String> =
            self.faults.iter().map(|f| f.when.version.clone()).collect();
        versions.extend(["1.1", "1.2", "1.3"].map(String::from));
        versions.sort();
        versions.dedup();
        let mut out = String::from(
            "deployment,update,update_version,libssl,label:role,label:disk_free_pct,outcome\n",
        );
        let mut d = 0;
        let mut draws = 0;
        while d < h.deployments && draws < 100 * h.deployments {
            draws += 1;
            let host = &hosts[rng.below(hosts.len() as u64) as usize];
            let version = &versions[rng.below(versions.len() as u64) as usize];
            // Past hosts vary around their group: disk ±5 points.
            let disk = (host.disk_free_pct + (rng.unit() - 0.5) * 10.0).clamp(0.0, 100.0);
            // A new fault (`in_history: false`): that version never reached such a host, so
            // the history neither shows the fault nor claims the pair went well.
            let new = self.faults.iter().any(|f| {
                !f.in_history
                    && f.when.version == *version
                    && f.when
                        .matches_host(&host.group, &host.role, &host.packages, disk)
            });
            if new {
                continue;
            }
            let mut p_fail: f64 = 0.03;
            for f in self
                .faults
                .iter()
                .filter(|f| f.in_history && f.when.version == *version)
            {
                if f.when
                    .matches_host(&host.group, &host.role, &host.packages, disk)
                {
                    let e = f.effect.error_rate.unwrap_or(0.0);
                    let l = f.effect.latency_factor.unwrap_or(1.0);
                    let p = if e > 0.0 { (0.5 + e).min(0.95) } else { 0.0 };
                    let p = if l >= 2.0 { p.max(0.8) } else { p };
                    p_fail = p_fail.max(p);
                }
            }
            let failed = rng.unit() < p_fail;
            let _ = writeln!(
                out,
                "d{d:05},websvc,{version},{},{},{disk:.1},{}",
                libssl_of(&host.packages).unwrap_or_default(),
                host.role,
                u8::from(failed)
            );
            d += 1;
        }
        Some(out)
    }
}

/// The libssl version as the server's feature vector has it: major.minor of the first
/// `libssl*` package (not -dev or -doc).
pub fn libssl_of(packages: &BTreeMap<String, String>) -> Option<String> {
    let (_, v) = packages
        .iter()
        .find(|(n, _)| n.starts_with("libssl") && !n.contains("-dev") && !n.contains("-doc"))?;
    let v: String = v
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let mut parts = v.split('.').filter(|p| !p.is_empty());
    let major = parts.next()?;
    Some(match parts.next() {
        Some(minor) => format!("{major}.{minor}"),
        None => major.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../examples/scenarios/libssl.yaml");

    #[test]
    fn the_example_parses_and_matches_its_rules() {
        let s = parse(EXAMPLE, "libssl.yaml").unwrap();
        let hosts = s.hosts();
        assert_eq!(hosts.len(), 20);
        let old = hosts.iter().find(|h| h.group == "web-libssl11").unwrap();
        let f = s.faults_for(old, &old.packages);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].version, "2");
        assert_eq!(f[0].error_rate, 0.3);
        assert_eq!(f[0].onset_ms, 5000);
        let full = hosts.iter().find(|h| h.group == "web-fulldisk").unwrap();
        assert_eq!(s.faults_for(full, &full.packages)[0].latency_factor, 4.0);
        let fine = hosts.iter().find(|h| h.group == "web").unwrap();
        assert!(s.faults_for(fine, &fine.packages).is_empty());
        let plan = s.plan();
        assert_eq!(plan.len(), 20);
        assert_eq!(plan, s.plan(), "deterministic");
        assert!(plan
            .iter()
            .any(|p| p.drifts.contains(&Injected::SetPackage {
                name: "libssl1.1".into(),
                version: "1.1.1n-0+deb11u5".into()
            })));
    }

    #[test]
    fn the_history_follows_the_rules() {
        let s = parse(EXAMPLE, "libssl.yaml").unwrap();
        let csv = s.history_csv().unwrap();
        let mut lines = csv.lines();
        let header: Vec<&str> = lines.next().unwrap().split(',').collect();
        assert_eq!(
            header,
            [
                "deployment",
                "update",
                "update_version",
                "libssl",
                "label:role",
                "label:disk_free_pct",
                "outcome"
            ]
        );
        let (mut risky, mut risky_fail, mut other, mut other_fail) = (0, 0, 0, 0);
        for l in lines {
            let f: Vec<&str> = l.split(',').collect();
            let failed = f[6] == "1";
            if f[2] == "2" && f[3] == "1.1" {
                risky += 1;
                risky_fail += usize::from(failed);
            } else if f[2] != "2" {
                other += 1;
                other_fail += usize::from(failed);
            }
        }
        assert!(risky >= 10 && other > 100, "{risky} {other}");
        assert!(
            risky_fail as f64 / risky as f64 > 0.6,
            "{risky_fail}/{risky}"
        );
        assert!(
            (other_fail as f64 / other as f64) < 0.1,
            "{other_fail}/{other}"
        );
    }

    #[test]
    fn errors_name_the_file_line_and_column_or_the_item() {
        let e = parse(
            "groups:\n  - name: web\n    count: 2\n    role: web\n    colour: red\n",
            "s.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("s.yaml:5:5: groups[0]: unknown field `colour`"),
            "{e}"
        );
        let e = parse(
            "groups:\n  - name: web\n    count: lots\n    role: web\n",
            "s.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("s.yaml:3:12: "), "{e}");
        assert!(matches!(
            parse("groups:\n  - name: web\n    count: lots\n    role: web\n", "s.yaml"),
            Err(ScenarioError::Syntax { line: 3, column: 12, ref file, .. }) if file == "s.yaml"
        ));
        let e = parse("groups: []\n", "s.yaml").unwrap_err();
        assert_eq!(
            e,
            ScenarioError::Invalid {
                file: "s.yaml".into(),
                message: "groups: at least one group is needed".into()
            }
        );
        let e = e.to_string();
        assert_eq!(e, "s.yaml: groups: at least one group is needed");
        let e = parse(
            "groups:\n  - {name: web, count: 2, role: web}\nfaults:\n  - {name: x, when: {version: '2'}, effect: {error_rate: 3}}\n",
            "s.yaml",
        )
        .unwrap_err().to_string();
        assert_eq!(
            e,
            "s.yaml: faults[0] (x): effect.error_rate 3 is not within [0, 1]"
        );
        let e = parse(
            "groups:\n  - {name: web, count: 2, role: web}\nfaults:\n  - {when: {version: '2'}, effect: {error_rate: 0.1}, onset: soon}\n",
            "s.yaml",
        )
        .unwrap_err().to_string();
        assert!(
            e.starts_with("s.yaml:4:") && e.contains("onset \"soon\""),
            "{e}"
        );
    }

    /// A key repeated in a nested map (a group's `packages` or `labels`, a rule's `when`)
    /// was silently last-wins; deep or oversized files are refused at once. Each error has
    /// the file, line and column.
    #[test]
    fn repeated_keys_depth_and_size_are_refused_with_a_place() {
        let e = parse(
            "groups:\n  - name: web\n    count: 2\n    role: web\n    packages: { libssl3: '3.0', libssl3: '1.1' }\n",
            "s.yaml",
        )
        .unwrap_err().to_string();
        assert_eq!(
            e,
            "s.yaml:5:33: groups[0].packages: duplicate key `libssl3`: a key may appear only once in a mapping"
        );
        let e = parse(
            "groups:\n  - name: web\n    count: 2\n    role: web\n    labels:\n      zone: a\n      zone: b\n",
            "s.yaml",
        )
        .unwrap_err().to_string();
        assert!(
            e.starts_with("s.yaml:7:7: groups[0].labels: duplicate key `zone`"),
            "{e}"
        );
        let e = parse(
            &format!(
                "groups:\n  - name: web\n    count: 2\n    role: web\n    labels: {}",
                "{a: ".repeat(100_000)
            ),
            "s.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("s.yaml:5:"), "{e}");
        let e = parse(&format!("# {}\n", "x".repeat(2 << 20)), "s.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("s.yaml:1:1: the text is "), "{e}");
        let e = parse(
            "groups:\n  - name: web\n    count: lots\n    role: web\n",
            "s.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("s.yaml:3:12: groups[0].count: "), "{e}");
    }

    #[test]
    fn the_quickstart_scenario_parses() {
        let text = include_str!("../../../examples/scenarios/quickstart.yaml");
        parse(text, "quickstart.yaml").unwrap();
    }

    #[test]
    fn libssl_is_read_as_the_server_reads_it() {
        let p = |n: &str, v: &str| BTreeMap::from([(n.to_string(), v.to_string())]);
        assert_eq!(
            libssl_of(&p("libssl1.1", "1.1.1n-0+deb11u5")).as_deref(),
            Some("1.1")
        );
        assert_eq!(
            libssl_of(&p("libssl3", "3.0.11-1~deb12u2")).as_deref(),
            Some("3.0")
        );
        assert_eq!(libssl_of(&p("libssl-dev", "3.0.11")), None);
    }

    #[test]
    fn the_example_plan_parses_and_targets_the_example_fleet() {
        let text = include_str!("../../../examples/plans/web-v2.yaml");
        let plan = bellwether_engine::rollout::plan::parse_plan(text, "web-v2.yaml").unwrap();
        assert_eq!(plan.name.0, "web-v2");
        let s = parse(EXAMPLE, "libssl.yaml").unwrap();
        assert!(
            s.hosts().iter().all(|h| h.role == "web"),
            "every example host is a target"
        );
    }

    #[test]
    fn version_patterns() {
        assert!(version_matches("*", "1.1.1n"));
        assert!(version_matches("1.1*", "1.1.1n"));
        assert!(!version_matches("3*", "1.1.1n"));
        assert!(version_matches("1.1.1n", "1.1.1n"));
    }
}
