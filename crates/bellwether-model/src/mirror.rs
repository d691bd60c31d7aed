//! Dependency mirroring (the fourth kind of change): the record the server keeps for each
//! critical dependency, and its policy.
//!
//! A **dependency** is a service other services depend on (a Redis cache, a PostgreSQL
//! database, any TCP service). Bellwether keeps it mirrored in proportion to how much it
//! matters: its **weight** (criticality, from its tier, the request rate the proxy measures and
//! the declared impact of its failure) and its measured **health** decide how many mirrors it
//! keeps (within the policy's bounds, with hysteresis) and whether they serve traffic
//! (active-active) or stand by (active-passive). When the primary's health falls below the
//! policy's threshold, the best caught-up mirror is promoted and the proxy's routing moves.
//!
//! This module holds the shapes and their validation only; the decisions are
//! `bellwether_engine::mirror`'s, the IO `bellwether-mirror`'s, the proxy's and the server's.
//!
//! JSON (and YAML) of a dependency, with every default spelled out:
//!
//! ```json
//! {"name": "cache", "kind": "redis", "primary": "127.0.0.1:6379", "host": "db-1",
//!  "tier": "critical", "impact": 0.9, "mirror_cost": 1.0,
//!  "policy": {"min_mirrors": 1, "max_mirrors": 3, "mode": "auto",
//!             "health_interval": "250ms", "switch_below": 0.5, "switch_after": 2,
//!             "failback_above": 0.9, "failback_after": "5m", "min_switch_gap": "5m",
//!             "hysteresis": 0.5, "catch_up_timeout": "5s", "rate_smoothing": "60s"}}
//! ```

use serde::{Deserialize, Serialize};

use crate::duration::Dur;

/// What protocol the dependency speaks; it decides how mirrors are made, promoted and checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DepKind {
    /// Mirrors are `redis-server --replicaof`; promotion is `REPLICAOF NO ONE` once the
    /// mirror's replication offset has reached the primary's last acknowledged one.
    Redis,
    /// Mirrors are streaming standbys (`pg_basebackup -R`, `pg_ctl start`); promotion is
    /// `pg_promote()` once the standby has replayed the primary's last flushed LSN.
    Postgres,
    /// Any TCP service: no replication Bellwether can see. Mirrors are provisioned by the
    /// operator (or a driver) and switched to by health only.
    Tcp,
}

impl DepKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DepKind::Redis => "redis",
            DepKind::Postgres => "postgres",
            DepKind::Tcp => "tcp",
        }
    }
}

/// The service tier of a dependency: how many users its failure reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Every request of the product needs it (tier 1).
    Critical,
    /// Most requests need it (tier 2).
    High,
    /// Some features need it (tier 3).
    Medium,
    /// Background work only (tier 4).
    Low,
}

impl Tier {
    /// The tier's share of the weight, in [0, 1]: critical 1.0, high 0.7, medium 0.4, low 0.15.
    pub fn factor(self) -> f64 {
        match self {
            Tier::Critical => 1.0,
            Tier::High => 0.7,
            Tier::Medium => 0.4,
            Tier::Low => 0.15,
        }
    }
}

/// How mirrors serve: set by the operator or chosen from the weight against the cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ModeSetting {
    /// Chosen by the engine from the weight against the mirror's cost.
    #[default]
    Auto,
    ActiveActive,
    ActivePassive,
}

/// The mode in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Every healthy instance serves what it can: reads on mirrors, writes on the primary only
    /// (never a write to a read-only replica).
    ActiveActive,
    /// Mirrors are warm standbys; the primary serves everything.
    ActivePassive,
}

/// The operator's policy for one dependency. Every field has a default; see the module docs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MirrorPolicy {
    /// Fewest mirrors kept (besides the primary), whatever the weight.
    pub min_mirrors: u32,
    /// Most mirrors kept, whatever the weight.
    pub max_mirrors: u32,
    pub mode: ModeSetting,
    /// How often health is measured (active check, replication lag).
    pub health_interval: Dur,
    /// The primary is switched away from when its health score stays below this for
    /// `switch_after` consecutive intervals (a primary that does not answer at all scores 0).
    pub switch_below: f64,
    /// Consecutive intervals below `switch_below` before the switch (at least 1).
    pub switch_after: u32,
    /// The old primary (once a caught-up mirror again) is switched back to only when its
    /// health has stayed above this for `failback_after`; in (`switch_below`, 1].
    pub failback_above: f64,
    pub failback_after: Dur,
    /// At most one health-driven switch per this window (a primary that is down, not just
    /// unhealthy, is switched away from regardless, once a caught-up mirror exists).
    pub min_switch_gap: Dur,
    /// The replication factor's dead band: the mirror count changes only when the target
    /// moves at least this far past the current count, so it does not flap.
    pub hysteresis: f64,
    /// How long a promotion waits for the mirror to reach the primary's last acknowledged
    /// write before it gives up on that mirror (and tries the next, or pauses with an alert).
    pub catch_up_timeout: Dur,
    /// Time constant of the smoothed request rate the weight uses (1s to 1h): a burst shorter
    /// than this moves the weight little, a change that lasts a few times this moves it fully.
    pub rate_smoothing: Dur,
}

impl Default for MirrorPolicy {
    fn default() -> Self {
        MirrorPolicy {
            min_mirrors: 1,
            max_mirrors: 3,
            mode: ModeSetting::Auto,
            health_interval: Dur::from_millis(250),
            switch_below: 0.5,
            switch_after: 2,
            failback_above: 0.9,
            failback_after: Dur::from_secs(300),
            min_switch_gap: Dur::from_secs(300),
            hysteresis: 0.5,
            catch_up_timeout: Dur::from_secs(5),
            rate_smoothing: Dur::from_secs(60),
        }
    }
}

/// The largest `max_mirrors` a policy may ask for.
pub const MAX_MIRRORS: u32 = 16;

/// One dependency as the operator declares it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DependencySpec {
    /// `[a-z0-9][a-z0-9-]{0,62}`: names the dependency in the API, the CLI and events.
    pub name: String,
    pub kind: DepKind,
    /// The primary's endpoint, `HOST:PORT`.
    pub primary: String,
    /// The agent host that runs the dependency (where mirrors are provisioned by the local
    /// process driver). `None` for a dependency whose mirrors are made elsewhere.
    #[serde(default)]
    pub host: Option<String>,
    pub tier: Tier,
    /// The declared impact of its failure, in [0, 1] (1: the product is down).
    #[serde(default = "default_impact")]
    pub impact: f64,
    /// The cost of one mirror relative to the value of avoiding an outage of a weight-1
    /// dependency for an hour; ≥ 0. It decides the mode under `auto` and damps the count.
    #[serde(default = "default_cost")]
    pub mirror_cost: f64,
    #[serde(default)]
    pub policy: MirrorPolicy,
    /// The `bellwether proxy` that carries the dependency's traffic, whose routing a switch
    /// moves and whose per-backend figures feed the health. `None`: no proxy (a switch
    /// promotes and fences, and clients must be pointed at the new primary by other means).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyRef>,
}

/// How the server reaches the proxy of a dependency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyRef {
    /// The proxy's admin API, `http://HOST:PORT` or `https://HOST:PORT`.
    pub admin_url: String,
    /// The name of the server's token file for it (`--proxy-token-file NAME=FILE`); never
    /// the token itself.
    pub token: String,
}

fn default_impact() -> f64 {
    0.5
}

fn default_cost() -> f64 {
    0.1
}

/// Why a dependency or policy is not acceptable. Each message names the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MirrorSpecError {
    #[error("name {0:?} is not a dependency name: lower-case letters, digits and '-', 1 to 63 characters, starting with a letter or digit")]
    Name(String),
    #[error("primary {0:?} is not HOST:PORT")]
    Endpoint(String),
    #[error("{field} is {value}, outside [{min}, {max}]")]
    Range {
        field: &'static str,
        value: f64,
        min: f64,
        max: f64,
    },
    #[error("min_mirrors {min} is more than max_mirrors {max}")]
    Bounds { min: u32, max: u32 },
    #[error("failback_above {failback} must be above switch_below {switch}: a primary must be healthier to get traffic back than it was when it lost it")]
    Thresholds { switch: f64, failback: f64 },
    #[error("{field}: {reason}")]
    Proxy { field: &'static str, reason: String },
    #[error("{field} {value} is outside [{min}, {max}]")]
    Duration {
        field: &'static str,
        value: Dur,
        min: Dur,
        max: Dur,
    },
}

/// Checks `HOST:PORT` (a host name or address, a port in 1..=65535; IPv6 in brackets).
pub fn check_endpoint(s: &str) -> Result<(), MirrorSpecError> {
    let bad = || MirrorSpecError::Endpoint(s.to_string());
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0 || host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '/') {
        return Err(bad());
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(bad());
    }
    Ok(())
}

fn range(field: &'static str, value: f64, min: f64, max: f64) -> Result<(), MirrorSpecError> {
    if value.is_finite() && (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(MirrorSpecError::Range {
            field,
            value,
            min,
            max,
        })
    }
}

fn dur(field: &'static str, value: Dur, min: Dur, max: Dur) -> Result<(), MirrorSpecError> {
    if value.get() >= min.get() && value.get() <= max.get() {
        Ok(())
    } else {
        Err(MirrorSpecError::Duration {
            field,
            value,
            min,
            max,
        })
    }
}

impl MirrorPolicy {
    /// Checks every bound; the first error names its field.
    pub fn validate(&self) -> Result<(), MirrorSpecError> {
        if self.min_mirrors > self.max_mirrors {
            return Err(MirrorSpecError::Bounds {
                min: self.min_mirrors,
                max: self.max_mirrors,
            });
        }
        range(
            "policy.max_mirrors",
            self.max_mirrors as f64,
            0.0,
            MAX_MIRRORS as f64,
        )?;
        dur(
            "policy.health_interval",
            self.health_interval,
            Dur::from_millis(50),
            Dur::from_secs(60),
        )?;
        range("policy.switch_below", self.switch_below, 0.0, 1.0)?;
        range("policy.switch_after", self.switch_after as f64, 1.0, 100.0)?;
        range("policy.failback_above", self.failback_above, 0.0, 1.0)?;
        if self.failback_above <= self.switch_below {
            return Err(MirrorSpecError::Thresholds {
                switch: self.switch_below,
                failback: self.failback_above,
            });
        }
        dur(
            "policy.failback_after",
            self.failback_after,
            Dur::from_secs(0),
            Dur::from_secs(7 * 86_400),
        )?;
        dur(
            "policy.min_switch_gap",
            self.min_switch_gap,
            Dur::from_secs(0),
            Dur::from_secs(7 * 86_400),
        )?;
        range("policy.hysteresis", self.hysteresis, 0.0, 4.0)?;
        dur(
            "policy.catch_up_timeout",
            self.catch_up_timeout,
            Dur::from_millis(10),
            Dur::from_secs(600),
        )?;
        dur(
            "policy.rate_smoothing",
            self.rate_smoothing,
            Dur::from_secs(1),
            Dur::from_secs(3600),
        )?;
        Ok(())
    }
}

impl DependencySpec {
    /// Checks the name, the endpoint, the ranges and the policy.
    pub fn validate(&self) -> Result<(), MirrorSpecError> {
        let n = &self.name;
        let ok = !n.is_empty()
            && n.len() <= 63
            && n.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !n.starts_with('-');
        if !ok {
            return Err(MirrorSpecError::Name(n.clone()));
        }
        check_endpoint(&self.primary)?;
        range("impact", self.impact, 0.0, 1.0)?;
        range("mirror_cost", self.mirror_cost, 0.0, 1e6)?;
        if let Some(p) = &self.proxy {
            let rest = p
                .admin_url
                .strip_prefix("http://")
                .or_else(|| p.admin_url.strip_prefix("https://"));
            if !rest.is_some_and(|r| !r.is_empty() && !r.chars().any(char::is_whitespace)) {
                return Err(MirrorSpecError::Proxy {
                    field: "proxy.admin_url",
                    reason: format!("{:?} is not an http:// or https:// URL", p.admin_url),
                });
            }
            let t = &p.token;
            if t.is_empty() || t.len() > 64 || !t.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(MirrorSpecError::Proxy {
                    field: "proxy.token",
                    reason: format!(
                        "{t:?} is not the name of a proxy token file (--proxy-token-file NAME=FILE)"
                    ),
                });
            }
        }
        self.policy.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> DependencySpec {
        serde_json::from_str(
            r#"{"name":"cache","kind":"redis","primary":"127.0.0.1:6379","tier":"critical"}"#,
        )
        .unwrap()
    }

    #[test]
    fn defaults_are_valid_and_round_trip() {
        let s = spec();
        s.validate().unwrap();
        assert_eq!(s.policy, MirrorPolicy::default());
        let back: DependencySpec =
            serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn bad_input_names_the_field() {
        let mut s = spec();
        s.policy.min_mirrors = 4;
        s.policy.max_mirrors = 2;
        assert!(matches!(
            s.validate(),
            Err(MirrorSpecError::Bounds { min: 4, max: 2 })
        ));
        let mut s = spec();
        s.policy.failback_above = 0.4;
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("failback_above"));
        let mut s = spec();
        s.impact = f64::NAN;
        assert!(s.validate().unwrap_err().to_string().contains("impact"));
        let mut s = spec();
        s.policy.health_interval = Dur::from_millis(1);
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("health_interval"));
        for bad in [Dur::from_millis(999), Dur::from_secs(3601)] {
            let mut s = spec();
            s.policy.rate_smoothing = bad;
            assert!(s
                .validate()
                .unwrap_err()
                .to_string()
                .contains("policy.rate_smoothing"));
        }
        let mut s = spec();
        s.policy.rate_smoothing = Dur::from_secs(1);
        s.validate().unwrap();
        for bad in ["x", "h:0", ":80", "h:99999", "a b:1", "::1:5"] {
            let mut s = spec();
            s.primary = bad.into();
            assert!(s.validate().is_err(), "{bad}");
        }
        for good in ["db-1:5432", "[::1]:6379", "10.0.0.1:1"] {
            check_endpoint(good).unwrap();
        }
        let mut s = spec();
        s.name = "Cache".into();
        assert!(s.validate().is_err());
        assert!(serde_json::from_str::<DependencySpec>(
            r#"{"name":"c","kind":"redis","primary":"h:1","tier":"critical","polcy":{}}"#
        )
        .is_err());
    }
}
