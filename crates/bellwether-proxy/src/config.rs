//! Configuration in two steps: [`RawConfig`] mirrors the YAML file (or the flags), and
//! [`ProxyConfig`] is the validated, typed form the rest of the crate uses. Field-level checks
//! run inside deserialization, so a bad value is reported with the file's line and column.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Yaml { path: String, message: String },
    #[error("{path}: {field}: {message}")]
    Invalid {
        path: String,
        field: String,
        message: String,
    },
}

/// Durations (`250ms`, `2s`, `1m30s`, a bare number of seconds) follow the one grammar of
/// [`bellwether_model::duration`], described in docs/durations.md.
pub use bellwether_model::duration::Dur;

/// A `host:port` address, checked for a port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct HostPort(pub String);

impl From<HostPort> for String {
    fn from(h: HostPort) -> String {
        h.0
    }
}

impl HostPort {
    pub fn parse(s: &str) -> Result<HostPort, String> {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("`{s}` has no `:PORT`"))?;
        if host.is_empty() {
            return Err(format!("`{s}` has no host"));
        }
        port.parse::<u16>()
            .map_err(|_| format!("`{s}` has a bad port `{port}`"))?;
        Ok(HostPort(s.to_string()))
    }
}

impl<'de> Deserialize<'de> for HostPort {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        HostPort::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// What an operator set for a backend, independent of what the health checks measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    /// Takes new connections according to its weight.
    #[default]
    Ready,
    /// Takes no new connections; its sessions leave at their next transaction boundary
    /// (re-homed, or closed gracefully when they hold session state).
    Drain,
    /// Takes no new connections, its sessions are closed now, and it is not health-checked.
    Maintenance,
}

impl std::str::FromStr for AdminState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ready" => Ok(AdminState::Ready),
            "drain" => Ok(AdminState::Drain),
            "maintenance" => Ok(AdminState::Maintenance),
            _ => Err(format!(
                "`{s}` is not an admin state (ready, drain, maintenance)"
            )),
        }
    }
}

impl std::fmt::Display for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AdminState::Ready => "ready",
            AdminState::Drain => "drain",
            AdminState::Maintenance => "maintenance",
        })
    }
}

/// How a listener treats the bytes it forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Plain byte copying; connections cannot move between backends.
    #[default]
    Tcp,
    /// PostgreSQL-aware: transaction status, query timing, re-homing at boundaries.
    Postgres,
    /// Redis-aware (RESP2): request/reply pairing, sessions bound to the primary and moved to
    /// a new one at a command boundary, reads retried when their backend dies.
    Redis,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Postgres => "postgres",
            Protocol::Redis => "redis",
        }
    }
}

/// A backend's replication role, set in the configuration or by the mirror engine through
/// the admin API (`POST /primary`). When any backend has a role, new connections on every
/// listener go to the primary, and PostgreSQL and Redis sessions on any other backend move to
/// it at their next boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Replica,
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "primary" => Ok(Role::Primary),
            "replica" => Ok(Role::Replica),
            _ => Err(format!("`{s}` is not a role (primary, replica)")),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
        })
    }
}

/// Where a Redis listener sends read-only commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RedisMode {
    /// Every command goes to the primary; replicas stand by.
    #[default]
    ActivePassive,
    /// Read-only commands may go to healthy replicas (which may lag the primary).
    ActiveActive,
}

impl std::str::FromStr for RedisMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "active-passive" => Ok(RedisMode::ActivePassive),
            "active-active" => Ok(RedisMode::ActiveActive),
            _ => Err(format!(
                "`{s}` is not a mode (active-passive, active-active)"
            )),
        }
    }
}

/// The active health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// A TCP connect.
    #[default]
    Tcp,
    /// A PostgreSQL startup packet, answered by an authentication request, ReadyForQuery or an
    /// error other than "the database system is starting up".
    Postgres,
    /// Redis: `AUTH` (when the backend has a password), `PING` answered `+PONG`, and `ROLE`,
    /// which must say `master` for the backend whose role is primary.
    Redis,
    /// No active check.
    None,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub address: String,
    #[serde(default)]
    pub protocol: Protocol,
    /// Redis listeners: whether read-only commands may go to replicas.
    #[serde(default)]
    pub mode: RedisMode,
}

impl RawListener {
    pub fn new(address: &str, protocol: Protocol) -> RawListener {
        RawListener {
            address: address.to_string(),
            protocol,
            mode: RedisMode::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    pub name: String,
    pub address: HostPort,
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default)]
    pub admin: AdminState,
    /// The password the proxy uses to open server connections when it re-homes a session to
    /// this backend (MD5 or cleartext authentication). Trust needs none. Redis: the password
    /// the `redis` health check sends with `AUTH`.
    #[serde(default)]
    pub password: Option<String>,
    /// `primary` or `replica`; absent means no role (plain weighted routing).
    #[serde(default)]
    pub role: Option<Role>,
}

impl RawBackend {
    /// A ready backend of weight 100 without role or password.
    pub fn new(name: &str, address: HostPort) -> RawBackend {
        RawBackend {
            name: name.to_string(),
            address,
            weight: default_weight(),
            admin: AdminState::Ready,
            password: None,
            role: None,
        }
    }
}

fn default_weight() -> u32 {
    100
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    pub check: CheckKind,
    pub interval: Dur,
    pub timeout: Dur,
    /// Consecutive successes that bring a down backend up.
    pub rise: u32,
    /// Consecutive failures that take an up backend down.
    pub fall: u32,
    /// The user and database of the PostgreSQL check's startup packet.
    pub user: String,
    pub database: String,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            check: CheckKind::Tcp,
            interval: Dur(Duration::from_secs(2)),
            timeout: Dur(Duration::from_secs(1)),
            rise: 2,
            fall: 3,
            user: "postgres".into(),
            database: "postgres".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EjectionConfig {
    /// Consecutive connect errors that eject a backend.
    pub consecutive_errors: u32,
    /// The first ejection's length; each further ejection doubles it, up to `max_time`.
    pub base_time: Dur,
    pub max_time: Dur,
    /// The largest share of backends that may be ejected at once, in [0, 1].
    pub max_share: f64,
}

impl Default for EjectionConfig {
    fn default() -> Self {
        EjectionConfig {
            consecutive_errors: 3,
            base_time: Dur(Duration::from_secs(5)),
            max_time: Dur(Duration::from_secs(300)),
            max_share: 0.5,
        }
    }
}

/// The file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listeners: Vec<RawListener>,
    pub backends: Vec<RawBackend>,
    #[serde(default)]
    pub admin: Option<String>,
    /// The admin API's bearer token: read from this file, or generated into it (mode 0600)
    /// when it does not exist. Absent: generated into a private temporary file.
    #[serde(default)]
    pub admin_token_file: Option<PathBuf>,
    /// PEM certificate chain and private key: the admin API speaks HTTPS.
    #[serde(default)]
    pub admin_tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub admin_tls_key: Option<PathBuf>,
    /// Host names (besides IP literals and `localhost`) the admin API answers to.
    #[serde(default)]
    pub admin_allow_hosts: Vec<String>,
    /// Allows plain-HTTP admin on an address that is not loopback.
    #[serde(default)]
    pub insecure_admin: bool,
    #[serde(default)]
    pub health: HealthConfig,
    #[serde(default)]
    pub ejection: EjectionConfig,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    #[serde(default = "default_grace")]
    pub shutdown_grace: Dur,
    /// The size of each copy buffer, per direction and connection.
    #[serde(default = "default_buffer")]
    pub buffer_size: usize,
    /// Data-plane threads, each with its own event loop; absent means [`default_workers`].
    #[serde(default)]
    pub workers: Option<usize>,
    /// Redis listeners: how long a command waits for a primary when none is available.
    #[serde(default = "default_primary_wait")]
    pub primary_wait: Dur,
    /// How long a session pinned to the old primary at a switch (inside MULTI, WATCH or a
    /// blocking command) may take to finish before it is closed.
    #[serde(default = "default_switch_grace")]
    pub switch_grace: Dur,
    /// Redis listeners: the largest request (one command with its arguments) in bytes.
    #[serde(default = "default_max_request")]
    pub max_request_bytes: usize,
}

fn default_primary_wait() -> Dur {
    Dur(Duration::from_secs(5))
}
fn default_switch_grace() -> Dur {
    Dur(Duration::from_secs(5))
}
fn default_max_request() -> usize {
    16 << 20
}

fn default_max_connections() -> usize {
    4096
}
fn default_connect_timeout() -> Dur {
    Dur(Duration::from_secs(3))
}
fn default_grace() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_buffer() -> usize {
    64 * 1024
}

/// The data-plane threads when the configuration names none: one per core, as HAProxy does.
///
/// Measured on a 2-core machine shared with the service and its clients (BENCHMARKS.md,
/// issue 6): one thread costs the least CPU per request, but two threads carried more requests
/// at 10 and 50 clients, because the work per request is mostly the kernel's and a second
/// thread gets the proxy its share of both cores.
pub fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub address: SocketAddr,
    pub protocol: Protocol,
    pub mode: RedisMode,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub listeners: Vec<ListenerConfig>,
    pub backends: Vec<RawBackend>,
    pub admin: Option<SocketAddr>,
    pub admin_security: AdminSecurity,
    pub health: HealthConfig,
    pub ejection: EjectionConfig,
    pub max_connections: usize,
    pub connect_timeout: Duration,
    pub shutdown_grace: Duration,
    pub buffer_size: usize,
    /// Data-plane threads; each connection lives on one of them for its whole life.
    pub workers: usize,
    pub primary_wait: Duration,
    pub switch_grace: Duration,
    pub max_request_bytes: usize,
}

impl RawConfig {
    /// A configuration with defaults for everything but the listener and backends.
    pub fn new(listeners: Vec<RawListener>, backends: Vec<RawBackend>) -> RawConfig {
        RawConfig {
            listeners,
            backends,
            admin: None,
            admin_token_file: None,
            admin_tls_cert: None,
            admin_tls_key: None,
            admin_allow_hosts: Vec::new(),
            insecure_admin: false,
            health: HealthConfig::default(),
            ejection: EjectionConfig::default(),
            max_connections: default_max_connections(),
            connect_timeout: default_connect_timeout(),
            shutdown_grace: default_grace(),
            buffer_size: default_buffer(),
            workers: None,
            primary_wait: default_primary_wait(),
            switch_grace: default_switch_grace(),
            max_request_bytes: default_max_request(),
        }
    }

    /// Checks the whole; `source` names the file (or `flags`) in errors.
    pub fn validate(self, source: &str) -> Result<ProxyConfig, ConfigError> {
        let invalid = |field: String, message: String| ConfigError::Invalid {
            path: source.to_string(),
            field,
            message,
        };
        if self.listeners.is_empty() {
            return Err(invalid(
                "listeners".into(),
                "at least one listener is needed".into(),
            ));
        }
        let mut listeners = Vec::new();
        for (i, l) in self.listeners.iter().enumerate() {
            let address = l.address.parse::<SocketAddr>().map_err(|_| {
                invalid(
                    format!("listeners[{i}].address"),
                    format!("`{}` is not IP:PORT", l.address),
                )
            })?;
            listeners.push(ListenerConfig {
                address,
                protocol: l.protocol,
                mode: l.mode,
            });
        }
        if self.backends.is_empty() {
            return Err(invalid(
                "backends".into(),
                "at least one backend is needed".into(),
            ));
        }
        for (i, b) in self.backends.iter().enumerate() {
            if b.name.is_empty()
                || !b
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(invalid(
                    format!("backends[{i}].name"),
                    format!("`{}` must be letters, digits, `-`, `_` or `.`", b.name),
                ));
            }
            if self.backends[..i].iter().any(|o| o.name == b.name) {
                return Err(invalid(
                    format!("backends[{i}].name"),
                    format!("`{}` is named twice", b.name),
                ));
            }
        }
        let primaries: Vec<&str> = self
            .backends
            .iter()
            .filter(|b| b.role == Some(Role::Primary))
            .map(|b| b.name.as_str())
            .collect();
        if primaries.len() > 1 {
            let i = self
                .backends
                .iter()
                .rposition(|b| b.role == Some(Role::Primary))
                .unwrap_or(0);
            return Err(invalid(
                format!("backends[{i}].role"),
                format!(
                    "only one backend may be primary ({} are)",
                    primaries.join(", ")
                ),
            ));
        }
        if !(1024..=512 << 20).contains(&self.max_request_bytes) {
            return Err(invalid(
                "max_request_bytes".into(),
                "must be between 1 KiB and 512 MiB".into(),
            ));
        }
        let admin = match &self.admin {
            None => None,
            Some(a) => Some(
                a.parse::<SocketAddr>()
                    .map_err(|_| invalid("admin".into(), format!("`{a}` is not IP:PORT")))?,
            ),
        };
        let admin_security = self.admin_security(admin, &invalid)?;
        if !(0.0..=1.0).contains(&self.ejection.max_share) {
            return Err(invalid(
                "ejection.max_share".into(),
                format!("{} is not in [0, 1]", self.ejection.max_share),
            ));
        }
        if self.health.rise == 0 || self.health.fall == 0 {
            return Err(invalid(
                "health".into(),
                "rise and fall must be at least 1".into(),
            ));
        }
        if self.ejection.consecutive_errors == 0 {
            return Err(invalid(
                "ejection.consecutive_errors".into(),
                "must be at least 1".into(),
            ));
        }
        if self.max_connections == 0 {
            return Err(invalid(
                "max_connections".into(),
                "must be at least 1".into(),
            ));
        }
        let workers = self.workers.unwrap_or_else(default_workers);
        if !(1..=256).contains(&workers) {
            return Err(invalid(
                "workers".into(),
                format!("{workers} is not between 1 and 256"),
            ));
        }
        if !(1024..=16 << 20).contains(&self.buffer_size) {
            return Err(invalid(
                "buffer_size".into(),
                "must be between 1 KiB and 16 MiB".into(),
            ));
        }
        Ok(ProxyConfig {
            listeners,
            backends: self.backends,
            admin,
            admin_security,
            health: self.health,
            ejection: self.ejection,
            max_connections: self.max_connections,
            connect_timeout: self.connect_timeout.0,
            shutdown_grace: self.shutdown_grace.0,
            buffer_size: self.buffer_size,
            workers,
            primary_wait: self.primary_wait.0,
            switch_grace: self.switch_grace.0,
            max_request_bytes: self.max_request_bytes,
        })
    }
}

/// How the admin API is protected: its token, TLS, and the host names it answers to.
#[derive(Debug, Clone, Default)]
pub struct AdminSecurity {
    pub token_file: Option<PathBuf>,
    /// Certificate chain and key files (PEM).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Lower-case host names accepted in the `Host` header besides IP literals and
    /// `localhost`.
    pub allow_hosts: Vec<String>,
}

impl RawConfig {
    /// Checks the admin API's protection: TLS needs both files, and plain HTTP is for
    /// loopback only unless `insecure_admin` says otherwise.
    fn admin_security(
        &self,
        admin: Option<SocketAddr>,
        invalid: &dyn Fn(String, String) -> ConfigError,
    ) -> Result<AdminSecurity, ConfigError> {
        let tls = match (&self.admin_tls_cert, &self.admin_tls_key) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            (None, None) => None,
            (Some(_), None) => {
                return Err(invalid(
                    "admin_tls_key".into(),
                    "admin_tls_cert is given without its key".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "admin_tls_cert".into(),
                    "admin_tls_key is given without its certificate".into(),
                ))
            }
        };
        if let Some(a) = admin {
            if tls.is_none() && !a.ip().is_loopback() && !self.insecure_admin {
                return Err(invalid(
                    "admin".into(),
                    format!(
                        "{a} is not a loopback address: give admin_tls_cert and admin_tls_key \
                         (--admin-tls-cert, --admin-tls-key) for HTTPS, or set insecure_admin \
                         (--insecure-admin) to serve the admin API in plain HTTP there"
                    ),
                ));
            }
        }
        let mut allow_hosts = Vec::new();
        for (i, h) in self.admin_allow_hosts.iter().enumerate() {
            let ok = !h.is_empty()
                && h.len() <= 253
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
            if !ok {
                return Err(invalid(
                    format!("admin_allow_hosts[{i}]"),
                    format!("`{h}` is not a host name"),
                ));
            }
            allow_hosts.push(h.to_ascii_lowercase());
        }
        Ok(AdminSecurity {
            token_file: self.admin_token_file.clone(),
            tls,
            allow_hosts,
        })
    }
}

/// Parses YAML text into the raw form, to be completed (by flags) and validated. The text is
/// read within the limits of `bellwether_engine::yaml` (1 MiB, 32 levels, no key twice in
/// any mapping).
pub fn parse_raw(source: &str, text: &str) -> Result<RawConfig, ConfigError> {
    bellwether_engine::yaml::from_str(text).map_err(|e| ConfigError::Yaml {
        path: source.to_string(),
        message: e.to_string(),
    })
}

/// Parses YAML text; `source` names it in errors, which carry line and column.
pub fn parse_config(source: &str, text: &str) -> Result<ProxyConfig, ConfigError> {
    parse_raw(source, text)?.validate(source)
}

/// Reads and parses a YAML file.
pub fn load_config(path: &Path) -> Result<ProxyConfig, ConfigError> {
    let text = read_config_text(path)?;
    parse_config(&path.display().to_string(), &text)
}

/// Reads a configuration file, one byte past the YAML reader's size limit at most, so that the
/// parser names the limit and a huge file (or a device) is never read whole.
pub fn read_config_text(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read as _;
    let read_err = |source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    };
    let mut text = String::new();
    std::fs::File::open(path)
        .map_err(read_err)?
        .take(bellwether_engine::yaml::MAX_BYTES as u64 + 1)
        .read_to_string(&mut text)
        .map_err(read_err)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_file() {
        let text = "listeners:\n  - address: 127.0.0.1:6432\n    protocol: postgres\nbackends:\n  - name: a\n    address: localhost:5432\n    weight: 10\n  - name: b\n    address: 127.0.0.1:5433\n    admin: drain\nhealth:\n  check: postgres\n  interval: 500ms\nejection:\n  max_share: 0.3\nadmin: 127.0.0.1:9901\n";
        let c = parse_config("p.yaml", text).unwrap();
        assert_eq!(c.listeners[0].protocol, Protocol::Postgres);
        assert_eq!(c.backends[1].admin, AdminState::Drain);
        assert_eq!(c.health.interval.0, Duration::from_millis(500));
        assert_eq!(c.backends[0].weight, 10);
    }

    #[test]
    fn bad_values_name_line_and_column() {
        let text = "listeners:\n  - address: 127.0.0.1:6432\nbackends:\n  - name: a\n    address: nohost\n";
        let err = parse_config("p.yaml", text).unwrap_err().to_string();
        // The value's own place and path (serde_yaml gave the backend's, line 4, column 5).
        assert!(
            err.starts_with("p.yaml: line 5, column 14: backends[0].address: "),
            "{err}"
        );
        assert!(err.contains("`nohost` has no `:PORT`"), "{err}");
        let text = "listeners: []\nbackends: []\nhealth:\n  interval: soon\n";
        let err = parse_config("p.yaml", text).unwrap_err().to_string();
        assert!(
            err.starts_with("p.yaml: line 4, column 13: health.interval: `soon` is not a duration"),
            "{err}"
        );
        let text = "listeners: []\nbackends: []\nbogus: 1\n";
        let err = parse_config("p.yaml", text).unwrap_err().to_string();
        assert!(err.contains("line 3") && err.contains("bogus"), "{err}");
    }

    /// A key repeated in a nested mapping (a backend, `health`) was last-wins; deep and
    /// oversized files are refused at once, a huge file without being read whole.
    #[test]
    fn repeated_keys_depth_and_size_are_refused_with_a_place() {
        let text =
            "listeners: []\nbackends:\n  - {name: a, address: 'h:1', weight: 1, weight: 9}\n";
        let err = parse_config("p.yaml", text).unwrap_err().to_string();
        assert_eq!(
            err,
            "p.yaml: line 3, column 42: backends[0]: duplicate key `weight`: a key may appear only once in a mapping"
        );
        let text = "listeners: []\nbackends: []\nhealth:\n  rise: 1\n  rise: 5\n";
        let err = parse_config("p.yaml", text).unwrap_err().to_string();
        assert!(
            err.starts_with("p.yaml: line 5, column 3: health: duplicate key `rise`"),
            "{err}"
        );
        let text = format!("listeners: []\nbackends: {}", "[".repeat(100_000));
        let t = std::time::Instant::now();
        let err = parse_config("p.yaml", &text).unwrap_err().to_string();
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert!(err.starts_with("p.yaml: line 2, column "), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.yaml");
        std::fs::write(&big, format!("# {}\n", "x".repeat(8 << 20))).unwrap();
        let err = load_config(&big).unwrap_err().to_string();
        assert!(
            err.ends_with(
                "line 1, column 1: the text is 1048577 bytes; the limit is 1048576 bytes"
            ),
            "{err}"
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_never_panics_the_config_parser(text in "(?s).{0,300}") {
            if let Err(e) = parse_config("fuzz.yaml", &text) {
                proptest::prop_assert!(e.to_string().starts_with("fuzz.yaml: "));
            }
        }
    }

    #[test]
    fn cross_field_errors_name_the_field() {
        let text = "listeners:\n  - address: 127.0.0.1:1\nbackends:\n  - {name: a, address: 'h:1'}\n  - {name: a, address: 'h:2'}\n";
        let err = parse_config("p.yaml", text).unwrap_err().to_string();
        assert_eq!(err, "p.yaml: backends[1].name: `a` is named twice");
    }

    #[test]
    fn roles_and_redis_options() {
        let text = "listeners:\n  - {address: '127.0.0.1:1', protocol: redis, mode: active-active}\nbackends:\n  - {name: a, address: 'h:1', role: primary}\n  - {name: b, address: 'h:2', role: replica}\nhealth: {check: redis}\nprimary_wait: 2s\nswitch_grace: 1s\n";
        let c = parse_config("p.yaml", text).unwrap();
        assert_eq!(c.listeners[0].protocol, Protocol::Redis);
        assert_eq!(c.listeners[0].mode, RedisMode::ActiveActive);
        assert_eq!(c.backends[0].role, Some(Role::Primary));
        assert_eq!(c.health.check, CheckKind::Redis);
        assert_eq!(c.primary_wait, Duration::from_secs(2));
        let two = text.replace("role: replica", "role: primary");
        assert_eq!(
            parse_config("p.yaml", &two).unwrap_err().to_string(),
            "p.yaml: backends[1].role: only one backend may be primary (a, b are)"
        );
        let bad = text.replace("role: replica", "role: leader");
        let err = parse_config("p.yaml", &bad).unwrap_err().to_string();
        assert!(err.contains("line 5") && err.contains("leader"), "{err}");
    }

    #[test]
    fn durations_follow_the_shared_grammar() {
        let text = "listeners:\n  - address: 127.0.0.1:1\nbackends:\n  - {name: a, address: 'h:1'}\nhealth: {interval: 1m30s, timeout: 7x}\n";
        let err = parse_config("p.yaml", text).unwrap_err().to_string();
        assert_eq!(
            err,
            "p.yaml: line 5, column 36: health.timeout: `7x` is not a duration such as `2s` or `500ms`: unknown unit `x` (use ns, us, ms, s, m, h or d)"
        );
        let text = text.replace("7x", "1.5");
        let cfg = parse_config("p.yaml", &text).unwrap();
        assert_eq!(cfg.health.interval.0, Duration::from_secs(90));
        assert_eq!(cfg.health.timeout.0, Duration::from_millis(1500));
    }
}
