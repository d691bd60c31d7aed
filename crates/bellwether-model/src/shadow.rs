//! Data shadows (the fifth kind of change): the record the server keeps for each shadowed
//! resource, its locations and its policy, and the agent built-ins that carry it out.
//!
//! A **shadow** keeps rollback points of one resource on one agent host: a SQLite file or a
//! directory (paths relative to the agent's root, which it never leaves) or a PostgreSQL
//! cluster (a URL without a password). Its points live in the shadow directory (`dir`, on the
//! same host; the layout is `bellwether_shadow::point`'s). Its **locations** are the cells the
//! data may be served from: the resource itself (the first location, `primary`) and copies
//! elsewhere; each has a routing target (a path an atomic link swap points the service at, or a
//! proxy backend). The server's `shadow` task takes points on schedule and when a failure is
//! predicted, and on a failure (observed or predicted above the policy's threshold) restores
//! the best location by **merit** to the latest point at or before the failure and routes to it.
//!
//! This module holds the shapes and their validation only; the decisions are
//! `bellwether_engine::shadow`'s, the IO `bellwether-shadow`'s, the agent's and the server's.
//!
//! JSON of a shadow, defaults spelled out (`locations` needs at least the primary):
//!
//! ```json
//! {"name": "orders", "host": "db-1",
//!  "resource": {"kind": "sqlite", "path": "srv/orders/live.db"},
//!  "type": "transactional", "dir": "var/lib/shadows/orders",
//!  "points_every": "1m",
//!  "retention": {"keep_all": "24h", "hourly": "7d", "daily": "30d"},
//!  "locations": [
//!    {"id": "primary", "path": "srv/orders/live.db"},
//!    {"id": "cell-b", "path": "srv/cell-b/orders.db", "dependencies": 0}],
//!  "routing": {"link": "srv/orders/current.db"},
//!  "merit": {"health": 1.0, "performance": 1.0, "latency_ref_ms": 10.0,
//!            "rollback_cost": 0.5, "volume_ref_bytes": 1073741824, "dependency_cost": 0.1,
//!            "error_half_life": "5m", "errors_half": 5.0, "hysteresis": 0.1},
//!  "policy": {"point_above": 0.5, "rollback_above": 0.9, "auto_rollback": true,
//!             "min_rollback_gap": "5m", "down_after": 3},
//!  "webhook": "https://ops.example/hooks/shadow"}
//! ```

use serde::{Deserialize, Serialize};

use crate::duration::Dur;
use crate::mirror::ProxyRef;

/// What kind of data a shadow keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResourceKind {
    /// A SQLite database file another process writes (WAL mode).
    Sqlite,
    /// A PostgreSQL cluster (base backup plus WAL).
    Postgres,
    /// A plain directory (content-defined chunks).
    Dir,
}

impl ResourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Sqlite => "sqlite",
            ResourceKind::Postgres => "postgres",
            ResourceKind::Dir => "dir",
        }
    }

    /// Its data are files on the agent's host (switched by a path swap), not a network service.
    pub fn is_file_based(self) -> bool {
        !matches!(self, ResourceKind::Postgres)
    }
}

/// How the shadow follows the resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShadowType {
    /// A complete copy at each point.
    Full,
    /// Only what changed since the last point.
    Differential,
    /// Every commit: any committed transaction is a restore target.
    Transactional,
}

impl ShadowType {
    pub fn as_str(self) -> &'static str {
        match self {
            ShadowType::Full => "full",
            ShadowType::Differential => "differential",
            ShadowType::Transactional => "transactional",
        }
    }
}

/// The shadowed resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resource {
    pub kind: ResourceKind,
    /// `sqlite` and `dir`: the path relative to the agent's root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `postgres`: `postgres://USER@HOST:PORT/DB`, never with a password (the agent's own
    /// configuration supplies it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// One cell the data may be served from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Location {
    /// `[a-z0-9][a-z0-9-]{0,31}`; the first location is the resource itself.
    pub id: String,
    /// File-based data: where this location's copy lives, relative to the agent's root. A
    /// restore into it is built beside it and renamed over it. PostgreSQL (optional): the
    /// data directory of the instance behind `backend`, on the shadow's host, relative to the
    /// agent's root; a restore into the location is built beside it and swapped in (the
    /// instance stopped and started again). Without it the location can be routed to but
    /// not restored into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Network services: the proxy backend id that serves this location.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// How many services depend on this location's data (part of its rollback cost).
    #[serde(default)]
    pub dependencies: u32,
}

/// Where routing is switched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Routing {
    /// File-based data: the path the service opens (relative to the agent's root); a switch
    /// makes it a symbolic link to the chosen location's path, replaced atomically (rename).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// Network services: the `bellwether proxy` whose primary a switch moves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyRef>,
}

/// Retention of points (the agent thins its point store with it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    /// Every point (and, transactional, every commit) is kept this long.
    pub keep_all: Dur,
    /// Then one point per hour, this long.
    pub hourly: Dur,
    /// Then one point per day, this long.
    pub daily: Dur,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            keep_all: Dur::from_secs(86_400),
            hourly: Dur::from_secs(7 * 86_400),
            daily: Dur::from_secs(30 * 86_400),
        }
    }
}

/// The weights of the merit function (docs/shadow-engine.md has the formulas).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MeritWeights {
    /// Exponent of the health factor, in [0, 4].
    pub health: f64,
    /// Exponent of the performance factor, in [0, 4].
    pub performance: f64,
    /// The latency at which the performance factor is one half, ms; > 0.
    pub latency_ref_ms: f64,
    /// Weight of the rollback cost subtracted from health × performance, in [0, 1].
    pub rollback_cost: f64,
    /// The data volume (bytes a restore into the location writes) at which the volume part
    /// of the cost is 1 − 1/e; > 0.
    pub volume_ref_bytes: f64,
    /// Each dependent service adds this to the cost's exponent, in [0, 10].
    pub dependency_cost: f64,
    /// Errors are forgotten with this half-life.
    pub error_half_life: Dur,
    /// The remembered error count that halves the merit; > 0.
    pub errors_half: f64,
    /// Another location must beat the current one's merit by this much to be switched to,
    /// in [0, 1].
    pub hysteresis: f64,
}

impl Default for MeritWeights {
    fn default() -> Self {
        MeritWeights {
            health: 1.0,
            performance: 1.0,
            latency_ref_ms: 10.0,
            rollback_cost: 0.5,
            volume_ref_bytes: 1024.0 * 1024.0 * 1024.0,
            dependency_cost: 0.1,
            error_half_life: Dur::from_secs(300),
            errors_half: 5.0,
            hysteresis: 0.1,
        }
    }
}

/// When points are taken and rollbacks start on their own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShadowPolicy {
    /// A prediction at or above this probability takes a `predicted` point at once.
    pub point_above: f64,
    /// A prediction at or above this probability starts a rollback (with `auto_rollback`);
    /// in [`point_above`, 1].
    pub rollback_above: f64,
    /// Roll back on its own (on a failure, or a prediction above `rollback_above`); when
    /// false, only the operator's rollback restores.
    pub auto_rollback: bool,
    /// At most one automatic rollback per this window (the operator's are not limited).
    pub min_rollback_gap: Dur,
    /// A routed location down in this many consecutive observations is a failure.
    pub down_after: u32,
}

impl Default for ShadowPolicy {
    fn default() -> Self {
        ShadowPolicy {
            point_above: 0.5,
            rollback_above: 0.9,
            auto_rollback: true,
            min_rollback_gap: Dur::from_secs(300),
            down_after: 3,
        }
    }
}

/// The most locations a shadow may have.
pub const MAX_LOCATIONS: usize = 16;

/// One shadow as the operator declares it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowSpec {
    /// `[a-z0-9][a-z0-9-]{0,62}`: names the shadow in the API, the CLI and events.
    pub name: String,
    /// The agent host that holds the data and carries out the IO.
    pub host: String,
    pub resource: Resource,
    #[serde(rename = "type")]
    pub shadow_type: ShadowType,
    /// The shadow directory (point store), relative to the agent's root.
    pub dir: String,
    /// A scheduled point this often.
    #[serde(default = "default_points_every")]
    pub points_every: Dur,
    #[serde(default)]
    pub retention: Retention,
    pub locations: Vec<Location>,
    #[serde(default)]
    pub routing: Routing,
    #[serde(default)]
    pub merit: MeritWeights,
    #[serde(default)]
    pub policy: ShadowPolicy,
    /// POSTed a JSON body when a rollback starts, completes or fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
    /// SQLite: whether a point may be a copy-on-write clone where the file system clones
    /// (`auto`, the default) or is stored as page deltas everywhere (`never`).
    #[serde(default, skip_serializing_if = "Clones::is_auto")]
    pub clones: Clones,
}

/// Whether a SQLite shadow's points may be reflink clones (docs/shadow.md, "Clones or page
/// deltas"): the spec's field, the agent's call and the shadow crate's `ShadowOptions` share
/// this one type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Clones {
    /// Clones where the shadow directory and the data share a file system that clones
    /// (btrfs, XFS): a point costs its metadata and the kernel's writeback, milliseconds for
    /// a quiet or clustered database; a clone keeps every page that changed after it whole
    /// (on btrfs, whole old extents), so 1 % of rows at random an hour takes about 2.9 × the
    /// data for 24 points on btrfs.
    #[default]
    Auto,
    /// Page deltas everywhere (the changed pages, each a patch against its previous version
    /// where smaller): a point hashes the database's pages (hundreds of milliseconds for
    /// 256 MiB) and holds about the bytes that changed (1.29 × for the same 24 points).
    Never,
}

impl Clones {
    pub fn is_auto(&self) -> bool {
        *self == Clones::Auto
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Clones::Auto => "auto",
            Clones::Never => "never",
        }
    }
}

impl std::str::FromStr for Clones {
    type Err = String;
    fn from_str(s: &str) -> Result<Clones, String> {
        match s {
            "auto" => Ok(Clones::Auto),
            "never" => Ok(Clones::Never),
            other => Err(format!("clones must be auto or never, not {other:?}")),
        }
    }
}

fn default_points_every() -> Dur {
    Dur::from_secs(60)
}

/// Why a shadow spec is not acceptable. Each message names the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ShadowSpecError {
    #[error("name {0:?} is not a shadow name: lower-case letters, digits and '-', 1 to 63 characters, starting with a letter or digit")]
    Name(String),
    #[error("{field}: {reason}")]
    Field { field: String, reason: String },
    #[error("{field} is {value}, outside [{min}, {max}]")]
    Range {
        field: &'static str,
        value: f64,
        min: f64,
        max: f64,
    },
    #[error("{field} {value} is outside [{min}, {max}]")]
    Duration {
        field: &'static str,
        value: Dur,
        min: Dur,
        max: Dur,
    },
}

fn field(field: impl Into<String>, reason: impl Into<String>) -> ShadowSpecError {
    ShadowSpecError::Field {
        field: field.into(),
        reason: reason.into(),
    }
}

fn range(field: &'static str, value: f64, min: f64, max: f64) -> Result<(), ShadowSpecError> {
    if value.is_finite() && (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ShadowSpecError::Range {
            field,
            value,
            min,
            max,
        })
    }
}

fn dur(field: &'static str, value: Dur, min: Dur, max: Dur) -> Result<(), ShadowSpecError> {
    if value.get() >= min.get() && value.get() <= max.get() {
        Ok(())
    } else {
        Err(ShadowSpecError::Duration {
            field,
            value,
            min,
            max,
        })
    }
}

/// `[a-z0-9][a-z0-9-]*` of 1 to `max` bytes.
pub fn is_name(n: &str, max: usize) -> bool {
    !n.is_empty()
        && n.len() <= max
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !n.starts_with('-')
}

/// A path relative to the agent's root: not empty, not absolute, no `..`, no NUL or
/// backslash, at most 4096 bytes. The agent resolves it inside its root (symbolic links too).
pub fn check_rel_path(name: &str, path: &str) -> Result<(), ShadowSpecError> {
    if path.len() > 4096 {
        return Err(field(name, "the path is longer than 4096 bytes"));
    }
    crate::action::check_relative_path(path).map_err(|e| field(name, e.to_string()))
}

/// A PostgreSQL URL without a password.
pub fn check_pg_url(name: &str, url: &str) -> Result<(), ShadowSpecError> {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"));
    let Some(rest) = rest else {
        return Err(field(
            name,
            format!("{} is not a postgres:// URL", crate::text::quote(url)),
        ));
    };
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    if let Some((userinfo, _)) = authority.rsplit_once('@') {
        if userinfo.contains(':') {
            return Err(field(
                name,
                "the URL holds a password; give the user only (the agent's configuration or ~/.pgpass supplies the password)",
            ));
        }
    }
    if authority.is_empty() || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(field(
            name,
            format!("{} names no host", crate::text::quote(url)),
        ));
    }
    if url.contains("password=") {
        return Err(field(
            name,
            "the URL holds a password parameter; the agent's configuration supplies it",
        ));
    }
    Ok(())
}

impl ShadowSpec {
    /// Checks every field; the first error names it.
    pub fn validate(&self) -> Result<(), ShadowSpecError> {
        if !is_name(&self.name, 63) {
            return Err(ShadowSpecError::Name(self.name.clone()));
        }
        crate::ids::HostName::new(&self.host).map_err(|e| field("host", e.to_string()))?;
        let kind = self.resource.kind;
        match (
            kind.is_file_based(),
            &self.resource.path,
            &self.resource.url,
        ) {
            (true, Some(p), None) => check_rel_path("resource.path", p)?,
            (false, None, Some(u)) => check_pg_url("resource.url", u)?,
            (true, _, _) => {
                return Err(field(
                    "resource",
                    format!(
                        "a {} resource has a `path` (relative to the agent's root) and no `url`",
                        kind.as_str()
                    ),
                ))
            }
            (false, _, _) => {
                return Err(field(
                    "resource",
                    "a postgres resource has a `url` (postgres://USER@HOST:PORT/DB) and no `path`",
                ))
            }
        }
        if self.clones == Clones::Never && kind != ResourceKind::Sqlite {
            return Err(field(
                "clones",
                format!(
                    "applies to sqlite resources; a {} shadow's points are stored as objects either way",
                    kind.as_str()
                ),
            ));
        }
        check_rel_path("dir", &self.dir)?;
        if let Some(p) = &self.resource.path {
            let (a, b) = (p.trim_end_matches('/'), self.dir.trim_end_matches('/'));
            if a == b || b.starts_with(&format!("{a}/")) || a.starts_with(&format!("{b}/")) {
                return Err(field(
                    "dir",
                    format!("the shadow directory {b} overlaps the resource {a}: keep it apart"),
                ));
            }
        }
        dur(
            "points_every",
            self.points_every,
            Dur::from_secs(1),
            Dur::from_secs(7 * 86_400),
        )?;
        let r = &self.retention;
        dur(
            "retention.keep_all",
            r.keep_all,
            Dur::from_secs(60),
            Dur::from_secs(3650 * 86_400),
        )?;
        dur(
            "retention.hourly",
            r.hourly,
            Dur::from_secs(0),
            Dur::from_secs(3650 * 86_400),
        )?;
        dur(
            "retention.daily",
            r.daily,
            Dur::from_secs(0),
            Dur::from_secs(3650 * 86_400),
        )?;
        self.validate_locations()?;
        let m = &self.merit;
        range("merit.health", m.health, 0.0, 4.0)?;
        range("merit.performance", m.performance, 0.0, 4.0)?;
        range("merit.latency_ref_ms", m.latency_ref_ms, 1e-3, 1e6)?;
        range("merit.rollback_cost", m.rollback_cost, 0.0, 1.0)?;
        range("merit.volume_ref_bytes", m.volume_ref_bytes, 1.0, 1e18)?;
        range("merit.dependency_cost", m.dependency_cost, 0.0, 10.0)?;
        dur(
            "merit.error_half_life",
            m.error_half_life,
            Dur::from_secs(1),
            Dur::from_secs(7 * 86_400),
        )?;
        range("merit.errors_half", m.errors_half, 1e-3, 1e6)?;
        range("merit.hysteresis", m.hysteresis, 0.0, 1.0)?;
        let p = &self.policy;
        range("policy.point_above", p.point_above, 0.0, 1.0)?;
        range("policy.rollback_above", p.rollback_above, 0.0, 1.0)?;
        if p.rollback_above < p.point_above {
            return Err(field(
                "policy.rollback_above",
                format!(
                    "{} is below point_above {}: a prediction that rolls back must also take a point",
                    p.rollback_above, p.point_above
                ),
            ));
        }
        dur(
            "policy.min_rollback_gap",
            p.min_rollback_gap,
            Dur::from_secs(0),
            Dur::from_secs(7 * 86_400),
        )?;
        range("policy.down_after", p.down_after as f64, 1.0, 1000.0)?;
        if let Some(w) = &self.webhook {
            let rest = w
                .strip_prefix("http://")
                .or_else(|| w.strip_prefix("https://"));
            if !rest.is_some_and(|r| {
                !r.is_empty() && !r.chars().any(|c| c.is_whitespace() || c.is_control())
            }) || w.len() > 2048
            {
                return Err(field(
                    "webhook",
                    format!(
                        "{} is not an http:// or https:// URL",
                        crate::text::quote(w)
                    ),
                ));
            }
        }
        Ok(())
    }

    fn validate_locations(&self) -> Result<(), ShadowSpecError> {
        let n = self.locations.len();
        if n == 0 || n > MAX_LOCATIONS {
            return Err(field(
                "locations",
                format!("{n} locations: give 1 to {MAX_LOCATIONS}, the resource itself first"),
            ));
        }
        let file = self.resource.kind.is_file_based();
        let mut seen: Vec<&str> = Vec::new();
        let mut paths: Vec<&str> = Vec::new();
        for (i, l) in self.locations.iter().enumerate() {
            let at = |f: &str| format!("locations[{i}].{f}");
            if !is_name(&l.id, 32) {
                return Err(field(
                    at("id"),
                    format!(
                        "{} is not a location id: lower-case letters, digits and '-', 1 to 32 characters",
                        crate::text::quote(&l.id)
                    ),
                ));
            }
            if seen.contains(&l.id.as_str()) {
                return Err(field(at("id"), format!("{} appears twice", l.id)));
            }
            seen.push(&l.id);
            if file {
                let Some(p) = &l.path else {
                    return Err(field(
                        at("path"),
                        "a location of file-based data names its path (relative to the agent's root)",
                    ));
                };
                check_rel_path(&at("path"), p)?;
                if paths.contains(&p.as_str()) {
                    return Err(field(at("path"), format!("{p} is another location's path")));
                }
                if i == 0 && self.resource.path.as_deref() != Some(p.as_str()) {
                    return Err(field(
                        at("path"),
                        "the first location is the resource itself: its path is resource.path",
                    ));
                }
                paths.push(p);
                if l.backend.is_some() {
                    return Err(field(
                        at("backend"),
                        "file-based data is switched by a path swap, not a proxy backend",
                    ));
                }
            } else {
                let Some(b) = &l.backend else {
                    return Err(field(
                        at("backend"),
                        "a location of a network service names its proxy backend id",
                    ));
                };
                if b.is_empty()
                    || b.len() > 64
                    || !b
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                {
                    return Err(field(
                        at("backend"),
                        format!("{} is not a backend id", crate::text::quote(b)),
                    ));
                }
                // Optional: the data directory of the instance behind the backend, on the
                // shadow's host, which a restore into this location replaces.
                if let Some(p) = &l.path {
                    check_rel_path(&at("path"), p)?;
                    if paths.contains(&p.as_str()) {
                        return Err(field(at("path"), format!("{p} is another location's path")));
                    }
                    paths.push(p);
                }
            }
            if l.dependencies > 10_000 {
                return Err(field(at("dependencies"), "at most 10000"));
            }
        }
        match (file, &self.routing.link, &self.routing.proxy) {
            (true, Some(link), None) => {
                check_rel_path("routing.link", link)?;
                if paths.contains(&link.as_str()) {
                    return Err(field(
                        "routing.link",
                        "the link is what the service opens; it must not be a location's path",
                    ));
                }
            }
            (true, None, None) if n == 1 => {}
            (true, None, None) => {
                return Err(field(
                    "routing.link",
                    "with several locations, name the path the service opens (a link switched between them)",
                ))
            }
            (true, _, Some(_)) => {
                return Err(field(
                    "routing.proxy",
                    "file-based data is switched by routing.link, not a proxy",
                ))
            }
            (false, Some(_), _) => {
                return Err(field(
                    "routing.link",
                    "a network service is switched by routing.proxy, not a link",
                ))
            }
            (false, None, None) if n == 1 => {}
            (false, None, None) => {
                return Err(field(
                    "routing.proxy",
                    "with several locations, name the proxy that routes between them",
                ))
            }
            (false, None, Some(p)) => {
                let rest = p
                    .admin_url
                    .strip_prefix("http://")
                    .or_else(|| p.admin_url.strip_prefix("https://"));
                if !rest.is_some_and(|r| !r.is_empty() && !r.chars().any(char::is_whitespace)) {
                    return Err(field(
                        "routing.proxy.admin_url",
                        format!("{:?} is not an http:// or https:// URL", p.admin_url),
                    ));
                }
                let t = &p.token;
                if t.is_empty() || t.len() > 64 || !t.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(field(
                        "routing.proxy.token",
                        format!("{t:?} is not the name of a proxy token file (--proxy-token-file NAME=FILE)"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The location with id `id`.
    pub fn location(&self, id: &str) -> Option<&Location> {
        self.locations.iter().find(|l| l.id == id)
    }
}

/// Why a point was taken (the reasons of `bellwether_shadow::point`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum PointReason {
    Schedule,
    OnDemand,
    /// A failure was predicted by `source` for `expected_failure_ms` with `probability`.
    Predicted {
        source: String,
        expected_failure_ms: i64,
        probability: f64,
    },
    BeforeRestore,
}

// The probability is checked finite (in [0, 1]) wherever a reason is accepted
// ([`ShadowCall::validate`]), so equality is reflexive.
impl Eq for PointReason {}

impl PointReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            PointReason::Schedule => "schedule",
            PointReason::OnDemand => "on_demand",
            PointReason::Predicted { .. } => "predicted",
            PointReason::BeforeRestore => "before_restore",
        }
    }
}

/// What a restore goes back to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestoreTo {
    /// The point with this id.
    Point(String),
    /// The latest consistent state at or before this time (ms since the epoch): a point,
    /// then, transactional, the commits up to it.
    Time(i64),
}

/// The shadow an agent built-in acts on: what the agent needs of the spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowCall {
    pub name: String,
    pub resource: Resource,
    #[serde(rename = "type")]
    pub shadow_type: ShadowType,
    pub dir: String,
    /// The locations' paths, by id (file-based), for the checks a point reports.
    #[serde(default)]
    pub locations: Vec<Location>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,
    /// `shadow_point`: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<PointReason>,
    /// `shadow_restore`: what to go back to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<RestoreTo>,
    /// `shadow_restore`: the location restored into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// `shadow_route`: the link to point at the location (file-based routing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// `shadow_start`: the spec's choice of clones or page deltas (SQLite).
    #[serde(default, skip_serializing_if = "Clones::is_auto")]
    pub clones: Clones,
}

/// The shadow built-ins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShadowOp {
    /// Start following the resource (the agent keeps the shadow until `stop`).
    Start,
    Stop,
    /// Take a point now (with `reason`); output: the point and each location's check.
    Point,
    /// Restore `location` to `to` (built beside, verified, swapped in).
    Restore,
    /// Point `link` at `location`'s path (a new link renamed over the old one).
    Route,
}

impl ShadowOp {
    pub fn builtin(self) -> &'static str {
        match self {
            ShadowOp::Start => "shadow_start",
            ShadowOp::Stop => "shadow_stop",
            ShadowOp::Point => "shadow_point",
            ShadowOp::Restore => "shadow_restore",
            ShadowOp::Route => "shadow_route",
        }
    }

    pub fn from_builtin(name: &str) -> Option<ShadowOp> {
        [
            ShadowOp::Start,
            ShadowOp::Stop,
            ShadowOp::Point,
            ShadowOp::Restore,
            ShadowOp::Route,
        ]
        .into_iter()
        .find(|o| o.builtin() == name)
    }
}

impl ShadowCall {
    /// The call of `op` on `spec`'s shadow, without the op's own fields.
    pub fn of(spec: &ShadowSpec) -> ShadowCall {
        ShadowCall {
            name: spec.name.clone(),
            resource: spec.resource.clone(),
            shadow_type: spec.shadow_type,
            dir: spec.dir.clone(),
            locations: spec.locations.clone(),
            retention: Some(spec.retention.clone()),
            reason: None,
            to: None,
            location: None,
            link: None,
            clones: spec.clones,
        }
    }

    /// Checks the call for `op`: paths relative, the op's fields present, the location known.
    pub fn validate(&self, op: ShadowOp) -> Result<(), ShadowSpecError> {
        if !is_name(&self.name, 63) {
            return Err(ShadowSpecError::Name(self.name.clone()));
        }
        match (&self.resource.path, &self.resource.url) {
            (Some(p), None) if self.resource.kind.is_file_based() => {
                check_rel_path("shadow.resource.path", p)?
            }
            (None, Some(u)) if !self.resource.kind.is_file_based() => {
                check_pg_url("shadow.resource.url", u)?
            }
            _ => {
                return Err(field(
                    "shadow.resource",
                    "a path for sqlite and dir, a url for postgres",
                ))
            }
        }
        check_rel_path("shadow.dir", &self.dir)?;
        if self.locations.len() > MAX_LOCATIONS {
            return Err(field("shadow.locations", "too many locations"));
        }
        for l in &self.locations {
            if let Some(p) = &l.path {
                check_rel_path("shadow.locations.path", p)?;
            }
        }
        let need = |f: &str, present: bool| {
            if present {
                Ok(())
            } else {
                Err(field(
                    format!("shadow.{f}"),
                    format!("{} needs it", op.builtin()),
                ))
            }
        };
        match op {
            ShadowOp::Start | ShadowOp::Stop => {}
            ShadowOp::Point => need("reason", self.reason.is_some())?,
            ShadowOp::Restore | ShadowOp::Route => {
                need("location", self.location.is_some())?;
                if op == ShadowOp::Restore {
                    need("to", self.to.is_some())?;
                } else {
                    need("link", self.link.is_some())?;
                }
                let id = self.location.as_deref().unwrap_or_default();
                let Some(loc) = self.locations.iter().find(|l| l.id == id) else {
                    return Err(field(
                        "shadow.location",
                        format!("no location {}", crate::text::quote(id)),
                    ));
                };
                if self.resource.kind.is_file_based() && loc.path.is_none() {
                    return Err(field("shadow.location", "the location has no path"));
                }
                if op == ShadowOp::Restore && loc.path.is_none() {
                    return Err(field(
                        "shadow.location",
                        format!(
                            "location {} names no data directory (`path`) to restore into; give the location the data directory of the instance behind its backend",
                            loc.id
                        ),
                    ));
                }
            }
        }
        if let Some(l) = &self.link {
            check_rel_path("shadow.link", l)?;
        }
        if let Some(PointReason::Predicted {
            source,
            probability,
            ..
        }) = &self.reason
        {
            range("shadow.reason.probability", *probability, 0.0, 1.0)?;
            if source.is_empty() || source.len() > 200 || source.chars().any(char::is_control) {
                return Err(field(
                    "shadow.reason.source",
                    "1 to 200 characters, without control characters",
                ));
            }
        }
        if let Some(RestoreTo::Point(p)) = &self.to {
            if p.is_empty()
                || p.len() > 128
                || !p
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
            {
                return Err(field(
                    "shadow.to",
                    format!("{} is not a point id", crate::text::quote(p)),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ShadowSpec {
        serde_json::from_value(serde_json::json!({
            "name": "orders", "host": "db-1",
            "resource": {"kind": "sqlite", "path": "srv/orders.db"},
            "type": "transactional", "dir": "var/shadow/orders",
            "locations": [{"id": "primary", "path": "srv/orders.db"},
                          {"id": "cell-b", "path": "srv/b/orders.db"}],
            "routing": {"link": "srv/current.db"}
        }))
        .unwrap()
    }

    #[test]
    fn defaults_are_valid_and_round_trip() {
        let s = spec();
        s.validate().unwrap();
        assert_eq!(s.policy, ShadowPolicy::default());
        assert_eq!(s.merit, MeritWeights::default());
        let back: ShadowSpec = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn clones_never_is_carried_to_the_agent_for_sqlite_and_refused_for_the_others() {
        let mut s = spec();
        assert!(!serde_json::to_string(&s).unwrap().contains("clones"));
        s.clones = Clones::Never;
        s.validate().unwrap();
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains(r#""clones":"never""#), "{json}");
        assert_eq!(ShadowCall::of(&s).clones, Clones::Never);
        let call: ShadowCall =
            serde_json::from_str(&serde_json::to_string(&ShadowCall::of(&s)).unwrap()).unwrap();
        assert_eq!(call.clones, Clones::Never);
        s.resource.kind = ResourceKind::Dir;
        s.resource.path = Some("srv/orders".into());
        for l in &mut s.locations {
            l.path = l.path.as_ref().map(|p| p.replace(".db", ""));
        }
        s.routing.link = None;
        let e = s.validate().unwrap_err().to_string();
        assert!(e.starts_with("clones:"), "{e}");
        let bad: Result<ShadowSpec, _> = serde_json::from_value(serde_json::json!({
            "name": "orders", "host": "db-1",
            "resource": {"kind": "sqlite", "path": "srv/orders.db"},
            "type": "full", "dir": "var/shadow/orders",
            "locations": [{"id": "primary", "path": "srv/orders.db"}],
            "clones": "sometimes"
        }));
        assert!(bad.unwrap_err().to_string().contains("sometimes"));
    }

    #[test]
    fn bad_input_names_the_field() {
        type Change = Box<dyn Fn(&mut ShadowSpec)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|s| s.name = "Orders".into()), "name"),
            (Box::new(|s| s.host = "bad host".into()), "host"),
            (Box::new(|s| s.dir = "/abs".into()), "dir"),
            (Box::new(|s| s.dir = "srv/orders.db/x".into()), "dir"),
            (
                Box::new(|s| s.resource.path = Some("../etc".into())),
                "resource.path",
            ),
            (
                Box::new(|s| s.resource.url = Some("postgres://h/db".into())),
                "resource",
            ),
            (Box::new(|s| s.locations.clear()), "locations"),
            (
                Box::new(|s| s.locations[1].id = "primary".into()),
                "locations[1].id",
            ),
            (
                Box::new(|s| s.locations[1].path = None),
                "locations[1].path",
            ),
            (
                Box::new(|s| s.locations[0].path = Some("x.db".into())),
                "locations[0].path",
            ),
            (Box::new(|s| s.routing.link = None), "routing.link"),
            (
                Box::new(|s| s.routing.link = Some("srv/b/orders.db".into())),
                "routing.link",
            ),
            (Box::new(|s| s.merit.hysteresis = 2.0), "merit.hysteresis"),
            (
                Box::new(|s| s.merit.latency_ref_ms = f64::NAN),
                "merit.latency_ref_ms",
            ),
            (
                Box::new(|s| s.policy.rollback_above = 0.1),
                "policy.rollback_above",
            ),
            (Box::new(|s| s.policy.down_after = 0), "policy.down_after"),
            (
                Box::new(|s| s.points_every = Dur::from_millis(10)),
                "points_every",
            ),
            (Box::new(|s| s.webhook = Some("ftp://x".into())), "webhook"),
        ];
        for (change, name) in cases {
            let mut s = spec();
            change(&mut s);
            let e = s.validate().unwrap_err().to_string();
            assert!(e.contains(name), "{name}: {e}");
        }
    }

    #[test]
    fn postgres_urls_never_hold_a_password() {
        check_pg_url("u", "postgres://app@db:5432/orders").unwrap();
        for bad in [
            "postgres://app:secret@db/orders",
            "postgres://db/x?password=y",
            "mysql://db/x",
            "postgres://",
        ] {
            assert!(check_pg_url("u", bad).is_err(), "{bad}");
        }
        let mut s = spec();
        s.resource = Resource {
            kind: ResourceKind::Postgres,
            path: None,
            url: Some("postgres://app@127.0.0.1:5432/orders".into()),
        };
        s.locations = vec![
            Location {
                id: "primary".into(),
                path: None,
                backend: Some("pg-a".into()),
                dependencies: 2,
            },
            Location {
                id: "b".into(),
                path: None,
                backend: Some("pg-b".into()),
                dependencies: 0,
            },
        ];
        s.routing = Routing {
            link: None,
            proxy: Some(ProxyRef {
                admin_url: "http://127.0.0.1:9000".into(),
                token: "p".into(),
            }),
        };
        s.validate().unwrap();
        // A location may name its instance's data directory (restorable), once per path.
        s.locations[1].path = Some("srv/pg-b/data".into());
        s.validate().unwrap();
        let mut call = ShadowCall::of(&s);
        call.to = Some(RestoreTo::Time(1_000));
        call.location = Some("b".into());
        call.validate(ShadowOp::Restore).unwrap();
        call.location = Some("primary".into());
        let e = call.validate(ShadowOp::Restore).unwrap_err().to_string();
        assert!(e.contains("names no data directory"), "{e}");
        s.locations[0].path = Some("srv/pg-b/data".into());
        let e = s.validate().unwrap_err().to_string();
        assert!(
            e.contains("locations[0].path") || e.contains("another location"),
            "{e}"
        );
        s.locations[0].path = Some("/var/lib/postgresql/data".into());
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("locations[0].path"), "{e}");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let mut v = serde_json::to_value(spec()).unwrap();
        v["polcy"] = serde_json::json!({});
        assert!(serde_json::from_value::<ShadowSpec>(v)
            .unwrap_err()
            .to_string()
            .contains("polcy"));
    }

    #[test]
    fn a_call_needs_its_op_fields() {
        let mut c = ShadowCall::of(&spec());
        c.validate(ShadowOp::Start).unwrap();
        assert!(c
            .validate(ShadowOp::Point)
            .unwrap_err()
            .to_string()
            .contains("reason"));
        c.location = Some("cell-b".into());
        c.to = Some(RestoreTo::Time(5));
        c.validate(ShadowOp::Restore).unwrap();
        c.location = Some("nowhere".into());
        assert!(c.validate(ShadowOp::Restore).is_err());
        c.location = Some("cell-b".into());
        c.to = Some(RestoreTo::Point("../x".into()));
        assert!(c.validate(ShadowOp::Restore).is_err());
        assert_eq!(
            ShadowOp::from_builtin("shadow_route"),
            Some(ShadowOp::Route)
        );
    }

    #[test]
    fn a_shadow_action_round_trips_on_the_wire_and_is_checked() {
        let mut call = ShadowCall::of(&spec());
        call.reason = Some(PointReason::Predicted {
            source: "detector".into(),
            expected_failure_ms: 5,
            probability: 0.7,
        });
        let a = crate::ActionSpec::Shadow {
            op: ShadowOp::Point,
            shadow: Box::new(call),
            timeout_ms: None,
        };
        let v = serde_json::to_value(&a).unwrap();
        assert_eq!(v["builtin"], "shadow_point");
        let back: crate::ActionSpec = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(back, a);
        let mut bad = v.clone();
        bad["shadow"]["dir"] = serde_json::json!("../../etc");
        let e = serde_json::from_value::<crate::ActionSpec>(bad).unwrap_err();
        assert!(e.to_string().contains("shadow.dir"), "{e}");
        let mut bad = v;
        bad["builtin"] = serde_json::json!("shadow_restore");
        let e = serde_json::from_value::<crate::ActionSpec>(bad).unwrap_err();
        assert!(e.to_string().contains("shadow.location"), "{e}");
    }
}
