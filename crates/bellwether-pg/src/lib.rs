//! bellwether-pg: the IO side of configuration changes on a live PostgreSQL instance.
//!
//! The agent (the PostgreSQL built-ins and samples), the local runner, the CLI and the benches
//! use it.
//!
//! - [`read_settings`]: `pg_settings` over a real connection into a
//!   [`bellwether_config::setting::Catalog`]; [`read_conf_files`]: the instance's
//!   `postgresql.conf` (with its includes) and `postgresql.auto.conf`;
//! - [`apply`]: `ALTER SYSTEM SET/RESET` for each setting in order, then `pg_reload_conf()`,
//!   or the configured restart command when a setting needs it; verified against
//!   `pg_settings` afterwards; nothing half-applied (a refused value stops before any
//!   `ALTER SYSTEM`, every value is validated first);
//! - [`Sampler`]: `pg_stat_database` (and `pg_stat_statements` when installed) counters into
//!   the rates of `bellwether_config::metrics`, with the control `ref_latency_ms` (the
//!   time of a fixed reference query);
//! - [`scratch::Scratch`]: a scratch cluster from the instance's own binaries (`initdb` once,
//!   then `postgres -C` and trial starts with candidate values), and [`probe`]: the graph
//!   learned from trial starts.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use bellwether_config::setting::{Catalog, Context, Setting, VarType};

pub mod local;
pub mod probe;
pub(crate) mod proc;
pub mod scratch;
#[cfg(feature = "testing")]
pub mod testing;

/// A free TCP port on the loopback for a server to listen on, chosen below the kernel's
/// ephemeral range (`/proc/sys/net/ipv4/ip_local_port_range`).
///
/// The OS's own pick (`bind` to port 0) comes from the ephemeral range, the range it also
/// hands out as the local port of outgoing connections. A server stopped and started again on
/// its port (a patched instance, a restart, a mirror brought back) then finds the port taken
/// by some client's connection and fails with "address in use". Below the range only another
/// listener can take it; the port is tried with a bind, and another is drawn at random when it
/// is taken.
pub fn listen_port() -> std::io::Result<u16> {
    use std::hash::{BuildHasher as _, Hasher as _};
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    // Half the ports below the range, and never the well-known ones.
    let (from, to) = ((low / 2).max(1024), low.max(2048));
    let mut last = None;
    for attempt in 0u32..200 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(attempt);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        h.write_u32(std::process::id());
        let port = from + (h.finish() % u64::from(to - from)) as u32;
        match std::net::TcpListener::bind(("127.0.0.1", port as u16)) {
            Ok(_) => return Ok(port as u16),
            Err(e) => last = Some(e),
        }
    }
    // The range below is full: the OS's pick is better than nothing.
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| last.unwrap_or(e))?;
    Ok(l.local_addr()?.port())
}

/// Every failure, with what was being done; never a connection string with a password.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("cannot connect to {target}: {message}")]
    Connect { target: String, message: String },
    #[error("{what}: permission denied ({message}); the role needs superuser or pg_read_all_settings / ALTER SYSTEM rights")]
    Permission { what: String, message: String },
    #[error("{0}")]
    Value(#[from] bellwether_config::setting::ValueError),
    #[error("{what}: {message}")]
    Query { what: String, message: String },
    #[error("{what}: {message}")]
    Io { what: String, message: String },
    #[error("{0}")]
    Conf(#[from] bellwether_config::pgconf::ConfError),
    #[error("restart: {0}")]
    Restart(String),
}

/// A connection to one instance (tokio-postgres, no TLS on the local socket/loopback).
pub struct Instance {
    pub client: tokio_postgres::Client,
    /// The URL without a password, for messages.
    pub target: String,
}

/// The session settings every connection Bellwether opens sets for itself in its startup
/// packet (`options`), so they hold from the first statement whatever the instance's
/// configuration, `ALTER DATABASE … SET` or `ALTER ROLE … SET` say (a client's startup
/// options take precedence over all of them): a change Bellwether applied must never lock
/// Bellwether out of reading the instance or undoing the change.
///
/// - `statement_timeout=0`: `statement_timeout = 5ms` on the instance would time out the
///   `pg_settings` read, the `ALTER SYSTEM` and the reload of the revert itself;
/// - `lock_timeout=10s`: bounded, so a session never waits forever behind a lock (`ALTER
///   SYSTEM` takes no table lock; the catalog reads take share locks), and long enough that a
///   tiny instance-wide `lock_timeout` cannot make them fail;
/// - `idle_in_transaction_session_timeout=0`: the instance's value cannot end the session;
/// - `default_transaction_read_only=off`: `default_transaction_read_only = on` would make
///   every later write of this session fail;
/// - `search_path=pg_catalog`: the session's queries name catalog objects unqualified (and
///   `pg_stat_statements` by its schema), so a changed `search_path` cannot shadow them;
/// - `client_min_messages=warning`: a `debug5` on the instance would flood the session.
pub const SESSION_SETTINGS: &[(&str, &str)] = &[
    ("statement_timeout", "0"),
    ("lock_timeout", "10s"),
    ("idle_in_transaction_session_timeout", "0"),
    ("default_transaction_read_only", "off"),
    ("search_path", "pg_catalog"),
    ("client_min_messages", "warning"),
];

/// Session settings that not every supported major version knows; a server that refuses one
/// as an unrecognized parameter is asked again without it (remembered per target):
/// `idle_session_timeout` (14+; the sampler's connection is idle between reads),
/// `transaction_timeout` (17+), and `jit=off` (11+; `jit_above_cost = 0` on the instance would
/// compile every statement of the session).
pub const OPTIONAL_SESSION_SETTINGS: &[(&str, &str)] = &[
    ("idle_session_timeout", "0"),
    ("transaction_timeout", "0"),
    ("jit", "off"),
];

/// The optional session settings each target's server did not recognize.
static UNRECOGNIZED: std::sync::Mutex<BTreeMap<String, Vec<String>>> =
    std::sync::Mutex::new(BTreeMap::new());

/// The `options` startup parameter: the URL's own options first, then Bellwether's session
/// settings (a later `-c` wins), minus those in `skip`.
fn session_options(own: Option<&str>, skip: &[String]) -> String {
    let mut parts: Vec<String> = own
        .filter(|o| !o.trim().is_empty())
        .map(|o| vec![o.trim().to_string()])
        .unwrap_or_default();
    for (k, v) in SESSION_SETTINGS.iter().chain(OPTIONAL_SESSION_SETTINGS) {
        if !skip.iter().any(|s| s == k) {
            // No value here holds a space or a backslash, which `options` would need escaped.
            parts.push(format!("-c {k}={v}"));
        }
    }
    parts.join(" ")
}

/// The parameter a connection error says the server does not recognize, when it is one of
/// [`OPTIONAL_SESSION_SETTINGS`].
fn unrecognized_optional(e: &tokio_postgres::Error) -> Option<String> {
    let db = e.as_db_error()?;
    if db.code() != &tokio_postgres::error::SqlState::UNDEFINED_OBJECT {
        return None;
    }
    let name = db.message().split('"').nth(1)?;
    OPTIONAL_SESSION_SETTINGS
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(k, _)| k.to_string())
}

/// Connects (`postgres://user@host:port/db` or a key=value conninfo).
///
/// No TLS: the agent talks to its instance on the same host (unix socket or loopback). A
/// connect timeout of 10 s applies unless the URL sets one. The session sets
/// [`SESSION_SETTINGS`] (and what the server knows of [`OPTIONAL_SESSION_SETTINGS`]) for
/// itself at startup, and `application_name` = `bellwether` unless the URL names one.
pub async fn connect(url: &str) -> Result<Instance, PgError> {
    let mut config: tokio_postgres::Config = url.parse().map_err(|e| PgError::Connect {
        target: "(unparsable connection string)".to_string(),
        message: format!("not a valid connection URL or conninfo: {e}"),
    })?;
    let target = describe_target(&config);
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(std::time::Duration::from_secs(10));
    }
    if config.get_application_name().is_none() {
        config.application_name("bellwether");
    }
    let own_options = config.get_options().map(str::to_string);
    let mut skip = UNRECOGNIZED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&target)
        .cloned()
        .unwrap_or_default();
    let (client, connection) = loop {
        config.options(session_options(own_options.as_deref(), &skip));
        match config.connect(tokio_postgres::NoTls).await {
            Ok(c) => break c,
            Err(e) => match unrecognized_optional(&e) {
                Some(name) if !skip.contains(&name) => {
                    skip.push(name);
                    UNRECOGNIZED
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(target.clone(), skip.clone());
                }
                _ => {
                    return Err(PgError::Connect {
                        target: target.clone(),
                        message: error_text(&e),
                    })
                }
            },
        }
    };
    let task_target = target.clone();
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(target = %task_target, error = %e, "PostgreSQL connection ended.");
        }
    });
    Ok(Instance { client, target })
}

/// `user@host:port/db`, never the password.
fn describe_target(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("(default user)");
    let db = config.get_dbname().unwrap_or(user);
    format!("{user}@{host}:{port}/{db}")
}

/// The error with the server's message and detail when there is one (tokio-postgres's own
/// `Display` says only "db error").
fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{}: {}", db.severity(), db.message());
            if let Some(d) = db.detail() {
                s.push_str(&format!(" ({d})"));
            }
            s
        }
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                s.push_str(&format!(": {inner}"));
                src = inner.source();
            }
            s
        }
    }
}

/// A query error: a permission problem gets its own variant (the role lacks rights).
fn query_error(what: &str, e: &tokio_postgres::Error) -> PgError {
    if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) {
        PgError::Permission {
            what: what.to_string(),
            message: error_text(e),
        }
    } else {
        PgError::Query {
            what: what.to_string(),
            message: error_text(e),
        }
    }
}

const SETTINGS_SQL: &str = "SELECT name, setting, unit, vartype, context, min_val, max_val, \
     enumvals, boot_val, reset_val, source, sourcefile, sourceline, pending_restart, category, \
     short_desc FROM pg_settings";

fn setting_from_row(row: &tokio_postgres::Row) -> Result<Setting, PgError> {
    let name: String = row.get(0);
    let bad = |m: String| PgError::Query {
        what: format!("pg_settings row {name}"),
        message: m,
    };
    let vartype = match row.get::<_, String>(3).as_str() {
        "bool" => VarType::Bool,
        "integer" => VarType::Integer,
        "real" => VarType::Real,
        "string" => VarType::String,
        "enum" => VarType::Enum,
        other => return Err(bad(format!("unknown vartype {other:?}"))),
    };
    let context_text: String = row.get(4);
    let context = Context::parse(&context_text)
        .ok_or_else(|| bad(format!("unknown context {context_text:?}")))?;
    let num = |i: usize| -> Option<f64> {
        row.get::<_, Option<String>>(i)
            .and_then(|s| s.trim().parse::<f64>().ok())
    };
    Ok(Setting {
        value: row.get::<_, Option<String>>(1).unwrap_or_default(),
        unit: row.get(2),
        vartype,
        context,
        min: num(5),
        max: num(6),
        enumvals: row.get::<_, Option<Vec<String>>>(7).unwrap_or_default(),
        boot_val: row.get(8),
        reset_val: row.get(9),
        source: row.get::<_, Option<String>>(10).unwrap_or_default(),
        sourcefile: row.get(11),
        sourceline: row.get(12),
        pending_restart: row.get(13),
        category: row.get::<_, Option<String>>(14).unwrap_or_default(),
        short_desc: row.get::<_, Option<String>>(15).unwrap_or_default(),
        name,
    })
}

/// `pg_settings` into a catalog (with `server_version_num`).
pub async fn read_settings(inst: &Instance) -> Result<Catalog, PgError> {
    let what = format!("reading pg_settings of {}", inst.target);
    let rows = inst
        .client
        .query(SETTINGS_SQL, &[])
        .await
        .map_err(|e| query_error(&what, &e))?;
    let mut settings = BTreeMap::new();
    for row in &rows {
        let s = setting_from_row(row)?;
        settings.insert(s.name.clone(), s);
    }
    let server_version_num = settings
        .get("server_version_num")
        .and_then(|s| s.value.parse::<u32>().ok())
        .ok_or_else(|| PgError::Query {
            what: what.clone(),
            message: "pg_settings has no numeric server_version_num".to_string(),
        })?;
    let mut catalog = Catalog {
        server_version_num,
        settings,
    };
    instance_values_of_session_settings(inst, &mut catalog).await?;
    Ok(catalog)
}

/// Whether this session sets `name` for itself at startup ([`SESSION_SETTINGS`],
/// [`OPTIONAL_SESSION_SETTINGS`], `application_name`): its `pg_settings` row then shows the
/// session's value (source `client`), not the instance's.
fn session_sets(name: &str) -> bool {
    name.eq_ignore_ascii_case("application_name")
        || SESSION_SETTINGS
            .iter()
            .chain(OPTIONAL_SESSION_SETTINGS)
            .any(|(k, _)| k.eq_ignore_ascii_case(name))
}

/// The instance's own value of each setting the session sets for itself: the last entry of
/// the configuration files that applies (`pg_file_settings`, which reads the files as they
/// are now: the value in force after the last reload), else the built-in default. A value set
/// on the server's command line is not seen (it is shown as the default).
async fn instance_values_of_session_settings(
    inst: &Instance,
    catalog: &mut Catalog,
) -> Result<(), PgError> {
    let names: Vec<String> = catalog
        .settings
        .keys()
        .filter(|k| session_sets(k))
        .cloned()
        .collect();
    if names.is_empty() {
        return Ok(());
    }
    let rows = inst
        .client
        .query(
            "SELECT name, setting, sourcefile, sourceline FROM pg_file_settings \
             WHERE name = ANY($1) AND error IS NULL AND applied ORDER BY seqno",
            &[&names],
        )
        .await
        .map_err(|e| {
            query_error(
                &format!(
                    "reading the instance's own values of the session's settings of {} \
                     (pg_file_settings)",
                    inst.target
                ),
                &e,
            )
        })?;
    let mut from_files: BTreeMap<String, (String, Option<String>, Option<i32>)> = BTreeMap::new();
    for r in &rows {
        from_files.insert(
            r.get(0),
            (
                r.get::<_, Option<String>>(1).unwrap_or_default(),
                r.get(2),
                r.get(3),
            ),
        );
    }
    for name in names {
        let normalized = |raw: &str| {
            catalog
                .validate(&name, raw)
                .map(|v| v.to_setting_string())
                .unwrap_or_else(|_| raw.to_string())
        };
        let (value, source, file, line) = match from_files.get(&name) {
            Some((raw, file, line)) => (
                normalized(raw),
                "configuration file".to_string(),
                file.clone(),
                *line,
            ),
            None => {
                let boot = catalog.settings[&name].boot_val.clone().unwrap_or_default();
                (boot, "default".to_string(), None, None)
            }
        };
        if let Some(s) = catalog.settings.get_mut(&name) {
            s.value = value;
            s.source = source;
            s.sourcefile = file;
            s.sourceline = line;
        }
    }
    Ok(())
}

/// Configuration files read from this host's disk.
struct DiskSource;

impl bellwether_config::pgconf::ConfSource for DiskSource {
    fn read(&self, path: &str) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }
    fn list_dir(&self, path: &str) -> std::io::Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(path)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if name.ends_with(".conf") && !name.starts_with('.') {
                out.push(name);
            }
        }
        Ok(out)
    }
}

/// The instance's configuration files, parsed: `config_file` with its includes, then
/// `data_directory/postgresql.auto.conf`, in reading order. Needs the files to be readable by
/// this process (the agent runs on the database host).
pub async fn read_conf_files(
    inst: &Instance,
) -> Result<Vec<bellwether_config::pgconf::ConfEntry>, PgError> {
    let what = format!("reading config_file and data_directory of {}", inst.target);
    let row = inst
        .client
        .query_one(
            "SELECT current_setting('config_file'), current_setting('data_directory')",
            &[],
        )
        .await
        .map_err(|e| query_error(&what, &e))?;
    let config_file: String = row.get(0);
    let data_dir: String = row.get(1);
    let mut entries = bellwether_config::pgconf::load(&config_file, &DiskSource)?;
    let auto = std::path::Path::new(&data_dir).join("postgresql.auto.conf");
    if auto.exists() {
        entries.extend(bellwether_config::pgconf::load(
            &auto.to_string_lossy(),
            &DiskSource,
        )?);
    }
    Ok(entries)
}

/// A setting name as an SQL identifier: only names the catalog holds reach here, and each
/// dot-separated part is double-quoted (`"pg_stat_statements"."max"`).
fn quote_name(name: &str) -> Result<String, PgError> {
    let ok = !name.is_empty()
        && name
            .split('.')
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
    if !ok {
        return Err(PgError::Value(
            bellwether_config::setting::ValueError::UnknownSetting {
                name: name.to_string(),
                suggestion: None,
            },
        ));
    }
    Ok(name
        .split('.')
        .map(|p| format!("\"{p}\""))
        .collect::<Vec<_>>()
        .join("."))
}

/// A value as an SQL string literal: `E'...'` with `\\` and `''` escaped, so it means the same
/// whatever `standard_conforming_strings` says.
fn quote_literal(value: &str) -> String {
    let mut s = String::with_capacity(value.len() + 4);
    s.push_str("E'");
    for c in value.chars() {
        match c {
            '\'' => s.push_str("''"),
            '\\' => s.push_str("\\\\"),
            c => s.push(c),
        }
    }
    s.push('\'');
    s
}

/// The `ALTER SYSTEM` statement for one setting (`None` = reset).
fn alter_system_sql(name: &str, value: Option<&str>) -> Result<String, PgError> {
    let ident = quote_name(name)?;
    Ok(match value {
        Some(v) => format!("ALTER SYSTEM SET {ident} = {}", quote_literal(v)),
        None => format!("ALTER SYSTEM RESET {ident}"),
    })
}

/// The catalog's spelling of `name` (`timezone` → `TimeZone`), or the validation error that
/// names it (unknown, with a suggestion).
fn resolve_name(catalog: &Catalog, name: &str) -> Result<String, PgError> {
    if catalog.settings.contains_key(name) {
        return Ok(name.to_string());
    }
    if let Some(k) = catalog
        .settings
        .keys()
        .find(|k| k.eq_ignore_ascii_case(name))
    {
        return Ok(k.clone());
    }
    // The catalog's own error carries the suggestion.
    match catalog.validate(name, "") {
        Err(e) => Err(PgError::Value(e)),
        Ok(_) => Err(PgError::Value(
            bellwether_config::setting::ValueError::UnknownSetting {
                name: name.to_string(),
                suggestion: None,
            },
        )),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What [`apply`] did.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ApplyReport {
    /// The settings set (`None` = reset), in order.
    pub applied: Vec<(String, Option<String>)>,
    pub reloaded: bool,
    pub restarted: bool,
    /// Settings still `pending_restart` after it (empty when it worked).
    pub pending_restart: Vec<String>,
    /// The values after it, as `pg_settings` shows them, for the applied keys.
    pub values: BTreeMap<String, String>,
    /// When the new configuration was in force (ms since the epoch, this host's clock).
    pub applied_at_ms: i64,
}

/// Applies `settings` in order with `ALTER SYSTEM`, then reloads, or restarts with
/// `restart_argv` (run directly, no shell) when `restart` is set or a setting's context needs
/// it. Every value is validated against `pg_settings` first: an invalid one is refused before
/// any change. After a restart it reconnects (waits up to `timeout`) and verifies.
pub async fn apply(
    url: &str,
    settings: &[(String, Option<String>)],
    restart: bool,
    restart_argv: Option<&[String]>,
    timeout: std::time::Duration,
) -> Result<ApplyReport, PgError> {
    let inst = connect(url).await?;
    let catalog = read_settings(&inst).await?;

    // Everything is checked before the first ALTER SYSTEM.
    let mut plan: Vec<(String, Option<String>)> = Vec::with_capacity(settings.len());
    let mut needs_restart = restart;
    let mut restart_keys = Vec::new();
    for (name, value) in settings {
        let name = resolve_name(&catalog, name)?;
        let setting = &catalog.settings[&name];
        if setting.context == Context::Internal {
            return Err(PgError::Value(
                bellwether_config::setting::ValueError::Internal { name },
            ));
        }
        if let Some(v) = value {
            catalog.validate(&name, v)?;
        }
        if setting.context == Context::Postmaster {
            needs_restart = true;
            restart_keys.push(name.clone());
        }
        quote_name(&name)?;
        plan.push((name, value.clone()));
    }
    let restart_argv = match restart_argv {
        Some(argv) if !argv.is_empty() => Some(argv),
        _ => None,
    };
    if needs_restart && restart_argv.is_none() {
        let why = if restart_keys.is_empty() {
            "a restart was asked for".to_string()
        } else {
            format!(
                "{} need a restart (context postmaster)",
                restart_keys.join(", ")
            )
        };
        return Err(PgError::Restart(format!(
            "{why} but no restart command is configured for {}; nothing was changed",
            inst.target
        )));
    }

    // What postgresql.auto.conf says now, to put back if a later statement fails.
    let previous = auto_conf_values(&inst).await?;

    for (i, (name, value)) in plan.iter().enumerate() {
        let sql = alter_system_sql(name, value.as_deref())?;
        if let Err(e) = inst.client.batch_execute(&sql).await {
            let err = query_error(&format!("ALTER SYSTEM for {name} on {}", inst.target), &e);
            let mut undo_failures = Vec::new();
            for (done, _) in plan[..i].iter().rev() {
                let prev = previous
                    .iter()
                    .rev()
                    .find(|(k, _)| k.eq_ignore_ascii_case(done))
                    .map(|(_, v)| v.as_str());
                let undo = alter_system_sql(done, prev)?;
                if let Err(ue) = inst.client.batch_execute(&undo).await {
                    undo_failures.push(format!("{done}: {}", error_text(&ue)));
                }
            }
            if undo_failures.is_empty() {
                tracing::warn!(target = %inst.target, setting = %name, "ALTER SYSTEM failed; the earlier settings were put back.");
                return Err(err);
            }
            return Err(PgError::Query {
                what: format!("ALTER SYSTEM for {name} on {}", inst.target),
                message: format!(
                    "{err}; putting back the earlier settings failed too: {}",
                    undo_failures.join("; ")
                ),
            });
        }
    }

    let (inst, reloaded, restarted) = if needs_restart {
        let argv = restart_argv.unwrap_or_default();
        drop(inst);
        let inst = run_restart(url, argv, timeout).await?;
        (inst, false, true)
    } else {
        reload_and_wait(&inst, timeout).await?;
        (inst, true, false)
    };
    let applied_at_ms = now_ms();

    let names: Vec<String> = plan.iter().map(|(n, _)| n.clone()).collect();
    let rows = inst
        .client
        .query(
            "SELECT name, setting, pending_restart FROM pg_settings WHERE name = ANY($1)",
            &[&names],
        )
        .await
        .map_err(|e| query_error(&format!("verifying pg_settings on {}", inst.target), &e))?;
    let mut values = BTreeMap::new();
    let mut pending_restart = Vec::new();
    for row in rows {
        let name: String = row.get(0);
        let value: Option<String> = row.get(1);
        if row.get::<_, bool>(2) {
            pending_restart.push(name.clone());
        }
        values.insert(name, value.unwrap_or_default());
    }
    // This session's own settings show the session's value: the instance's comes from its
    // files.
    if plan.iter().any(|(n, _)| session_sets(n)) {
        let now = read_settings(&inst).await?;
        for (name, _) in plan.iter().filter(|(n, _)| session_sets(n)) {
            if let Some(s) = now.settings.get(name) {
                values.insert(name.clone(), s.value.clone());
            }
        }
    }
    for (name, value) in &plan {
        let Some(v) = value else { continue };
        let want = catalog
            .validate(name, v)
            .map(|x| x.to_setting_string())
            .unwrap_or_else(|_| v.clone());
        if values.get(name).map(String::as_str) != Some(want.as_str()) {
            tracing::warn!(target = %inst.target, setting = %name, want = %want, got = ?values.get(name), "A setting does not show the applied value.");
        }
    }
    Ok(ApplyReport {
        applied: plan,
        reloaded,
        restarted,
        pending_restart,
        values,
        applied_at_ms,
    })
}

/// `postgresql.auto.conf`'s entries as `pg_file_settings` reads them now, in file order.
async fn auto_conf_values(inst: &Instance) -> Result<Vec<(String, String)>, PgError> {
    let rows = inst
        .client
        .query(
            "SELECT name, setting FROM pg_file_settings \
             WHERE sourcefile LIKE '%/postgresql.auto.conf' ORDER BY seqno",
            &[],
        )
        .await
        .map_err(|e| {
            query_error(
                &format!(
                    "reading postgresql.auto.conf of {} (pg_file_settings)",
                    inst.target
                ),
                &e,
            )
        })?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get::<_, String>(0),
                r.get::<_, Option<String>>(1).unwrap_or_default(),
            )
        })
        .collect())
}

/// `pg_reload_conf()`, then waits until this session has re-read the files
/// (`pg_conf_load_time()` moves), up to `timeout`.
async fn reload_and_wait(inst: &Instance, timeout: std::time::Duration) -> Result<(), PgError> {
    let what = format!("reloading {}", inst.target);
    let before: String = inst
        .client
        .query_one("SELECT pg_conf_load_time()::text", &[])
        .await
        .map_err(|e| query_error(&what, &e))?
        .get(0);
    inst.client
        .query_one("SELECT pg_reload_conf()", &[])
        .await
        .map_err(|e| query_error(&what, &e))?;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let now: String = inst
            .client
            .query_one("SELECT pg_conf_load_time()::text", &[])
            .await
            .map_err(|e| query_error(&what, &e))?
            .get(0);
        if now != before {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(PgError::Query {
                what,
                message: format!("the server did not re-read its configuration within {timeout:?}"),
            });
        }
        // The backend takes the reload signal at its next command; ask again shortly.
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Runs the restart command (argv, no shell), then reconnects until `timeout`.
async fn run_restart(
    url: &str,
    argv: &[String],
    timeout: std::time::Duration,
) -> Result<Instance, PgError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout_at(deadline, cmd.output())
        .await
        .map_err(|_| {
            PgError::Restart(format!(
                "the restart command {:?} did not finish within {timeout:?}",
                argv[0]
            ))
        })?
        .map_err(|e| PgError::Restart(format!("cannot run {:?}: {e}", argv[0])))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        return Err(PgError::Restart(format!(
            "{:?} exited with {}: {}",
            argv[0],
            out.status,
            tail(&format!("{stdout}{stderr}"), 800)
        )));
    }
    let mut last = None;
    while tokio::time::Instant::now() < deadline {
        match connect(url).await {
            Ok(inst) => return Ok(inst),
            Err(e) => last = Some(e),
        }
        // The server is coming up; retry the connection with a short pause.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Err(PgError::Restart(format!(
        "the server did not accept connections within {timeout:?} after the restart{}",
        last.map(|e| format!(": {e}")).unwrap_or_default()
    )))
}

/// The last `max` bytes of `s` (on a character boundary), trimmed.
pub(crate) fn tail(s: &str, max: usize) -> String {
    let s = s.trim();
    if s.len() <= max {
        return s.to_string();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &s[start..])
}

/// Cumulative counters of one read.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    pub at_ms: i64,
    pub xact_commit: i64,
    pub xact_rollback: i64,
    pub deadlocks: i64,
    pub temp_bytes: i64,
    pub blks_read: i64,
    /// `pg_stat_statements` calls and total_exec_time (ms), when installed.
    pub calls: Option<i64>,
    pub exec_time_ms: Option<f64>,
    /// `pg_stat_database.active_time` (ms), PostgreSQL 14+.
    pub active_time_ms: Option<f64>,
}

/// Reads counters each call and turns two reads into rates (`bellwether_config::metrics`).
#[derive(Default)]
pub struct Sampler {
    pub last: Option<Counters>,
}

impl Sampler {
    /// One read; returns the rates since the previous read, keyed by the metric names of
    /// `bellwether_config::metrics`. The first read gives only `up` = 1 (no interval yet); a
    /// failed read gives `up` = 0 and forgets the previous counters (the next read starts a new
    /// interval). Counters are `pg_stat_database`'s row of the connection's current database;
    /// `pg_stat_statements` is summed over the whole instance when the extension is installed
    /// in that database.
    pub async fn sample(
        &mut self,
        inst: &Instance,
        now_ms: i64,
    ) -> Result<BTreeMap<String, f64>, PgError> {
        use bellwether_config::metrics;
        let mut out = BTreeMap::new();
        let c = match read_counters(inst, now_ms).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(target = %inst.target, error = %e, "Reading PostgreSQL statistics failed.");
                self.last = None;
                out.insert(metrics::UP.to_string(), 0.0);
                return Ok(out);
            }
        };
        out.insert(metrics::UP.to_string(), 1.0);
        if let Some(rtt) = reference_round_trip_ms(inst).await {
            out.insert(metrics::REF_LATENCY_MS.to_string(), rtt);
        }
        if let Some(prev) = self.last.replace(c.clone()) {
            let dt = (c.at_ms - prev.at_ms) as f64 / 1000.0;
            let d_commit = c.xact_commit - prev.xact_commit;
            let d_rollback = c.xact_rollback - prev.xact_rollback;
            // A statistics reset makes counters go back: no rates for that interval.
            if dt > 0.0 && d_commit >= 0 && d_rollback >= 0 {
                let rate = |d: i64| d.max(0) as f64 / dt;
                out.insert(metrics::TPS.to_string(), rate(d_commit));
                out.insert(
                    metrics::ERRORS_PER_S.to_string(),
                    rate(d_rollback + (c.deadlocks - prev.deadlocks).max(0)),
                );
                out.insert(
                    metrics::TEMP_BYTES_PER_S.to_string(),
                    rate(c.temp_bytes - prev.temp_bytes),
                );
                out.insert(
                    metrics::BLKS_READ_PER_S.to_string(),
                    rate(c.blks_read - prev.blks_read),
                );
                let statements = match (c.calls, prev.calls, c.exec_time_ms, prev.exec_time_ms) {
                    (Some(c1), Some(c0), Some(t1), Some(t0)) if c1 > c0 && t1 >= t0 => {
                        Some((t1 - t0) / (c1 - c0) as f64)
                    }
                    _ => None,
                };
                let busy = match (c.active_time_ms, prev.active_time_ms) {
                    (Some(a1), Some(a0)) if a1 >= a0 && d_commit + d_rollback > 0 => {
                        Some((a1 - a0) / (d_commit + d_rollback) as f64)
                    }
                    _ => None,
                };
                if let Some(l) = statements.or(busy) {
                    out.insert(metrics::LATENCY_MS.to_string(), l);
                }
            }
        }
        Ok(out)
    }
}

/// The work unit of the control `ref_latency_ms`: the MD5 of 1 MB, a few milliseconds of
/// one backend's CPU and nothing else (no table, no plan choice, no sort or hash, no
/// `work_mem`; `jit` is off in Bellwether's sessions).
const REFERENCE_QUERY: &str = "SELECT length(md5(repeat('x', 1000000)))";

/// The control `ref_latency_ms`: the median time of three runs of [`REFERENCE_QUERY`] (simple
/// protocol, one round trip each) on the sampler's connection. No setting of the watched
/// workload changes its cost, so its time is the CPU share a backend gets on the host: it
/// rises when other processes take the CPUs (and with steal, or a slow network). A bare
/// `SELECT 1` would not do: it is a sleeper that the scheduler wakes at once even on a
/// saturated host, while the workload's CPU-bound backends wait their turn. `None` when a
/// run fails (the counters were read, so the instance answers; the control is then just not
/// known).
async fn reference_round_trip_ms(inst: &Instance) -> Option<f64> {
    let mut times = [0.0f64; 3];
    for r in &mut times {
        let t = std::time::Instant::now();
        inst.client.simple_query(REFERENCE_QUERY).await.ok()?;
        *r = t.elapsed().as_secs_f64() * 1000.0;
    }
    times.sort_by(f64::total_cmp);
    Some(times[1])
}

async fn read_counters(inst: &Instance, now_ms: i64) -> Result<Counters, PgError> {
    let what = format!("reading pg_stat_database of {}", inst.target);
    let row = inst
        .client
        .query_one(
            "SELECT xact_commit, xact_rollback, deadlocks, temp_bytes, blks_read, \
             active_time::float8, \
             (SELECT n.nspname::text FROM pg_extension e \
              JOIN pg_namespace n ON n.oid = e.extnamespace \
              WHERE e.extname = 'pg_stat_statements') \
             FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await
        .map_err(|e| query_error(&what, &e))?;
    let mut c = Counters {
        at_ms: now_ms,
        xact_commit: row.get(0),
        xact_rollback: row.get(1),
        deadlocks: row.get(2),
        temp_bytes: row.get(3),
        blks_read: row.get(4),
        active_time_ms: row.get(5),
        ..Counters::default()
    };
    // By its schema: the session's search_path is pg_catalog alone.
    if let Some(schema) = row.get::<_, Option<String>>(6) {
        let what = format!("reading pg_stat_statements of {}", inst.target);
        let sql = format!(
            "SELECT coalesce(sum(calls), 0)::int8, coalesce(sum(total_exec_time), 0)::float8 \
             FROM \"{}\".pg_stat_statements",
            schema.replace('"', "\"\"")
        );
        let row = inst
            .client
            .query_one(&sql, &[])
            .await
            .map_err(|e| query_error(&what, &e))?;
        c.calls = Some(row.get(0));
        c.exec_time_ms = Some(row.get(1));
    }
    Ok(c)
}

/// The directory of the instance's own binaries (`initdb`, `pg_ctl`, `postgres`), found from
/// its major version (`/usr/lib/postgresql/MAJOR/bin`, `/usr/pgsql-MAJOR/bin`,
/// `pg_config --bindir`, `$PATH`) unless given. A candidate counts when its `postgres
/// --version` has the same major version.
pub fn find_bindir(server_version_num: u32, given: Option<PathBuf>) -> Result<PathBuf, PgError> {
    let has_tools =
        |d: &std::path::Path| d.join("postgres").is_file() && d.join("initdb").is_file();
    if let Some(dir) = given {
        if has_tools(&dir) {
            return Ok(dir);
        }
        return Err(PgError::Io {
            what: format!("PostgreSQL binaries in {}", dir.display()),
            message: "no postgres and initdb there".to_string(),
        });
    }
    // 150019 is 15; before 10 the major had two parts (90624 is 9.6).
    let major = if server_version_num >= 100_000 {
        (server_version_num / 10_000).to_string()
    } else {
        format!(
            "{}.{}",
            server_version_num / 10_000,
            (server_version_num / 100) % 100
        )
    };
    let mut candidates = vec![
        PathBuf::from(format!("/usr/lib/postgresql/{major}/bin")),
        PathBuf::from(format!("/usr/pgsql-{major}/bin")),
    ];
    if let Ok(out) = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
    {
        if out.status.success() {
            candidates.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path));
    }
    for dir in candidates {
        if has_tools(&dir) && binary_major(&dir).as_deref() == Some(major.as_str()) {
            return Ok(dir);
        }
    }
    Err(PgError::Io {
        what: format!("PostgreSQL {major} binaries"),
        message: "not found in /usr/lib/postgresql/MAJOR/bin, /usr/pgsql-MAJOR/bin, pg_config --bindir or $PATH; pass the directory".to_string(),
    })
}

/// The major version `postgres --version` reports (`postgres (PostgreSQL) 15.19 (…)`).
pub(crate) fn binary_major(dir: &std::path::Path) -> Option<String> {
    let out = std::process::Command::new(dir.join("postgres"))
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.split_whitespace().nth(2)?;
    let mut parts = version.split(|c: char| !c.is_ascii_digit());
    let first: u32 = parts.next()?.parse().ok()?;
    if first >= 10 {
        Some(first.to_string())
    } else {
        Some(format!("{first}.{}", parts.next()?))
    }
}

/// The configuration a scratch trial starts with: the instance's own settings that its
/// configuration files, `ALTER SYSTEM` or its command line set (numbers, booleans and enums;
/// not strings, which name the live instance's files, libraries, directories and commands; not
/// `internal` settings; not the settings a trial forces, [`scratch::FORCED`]), with `set` on
/// top (`None` leaves the key at its default). Names in `set` are matched as PostgreSQL matches
/// them (case-insensitively). The agent's `pg_trial`, the local runner and the CLI's
/// `config simulate --database` all use it.
pub fn trial_values(
    catalog: &Catalog,
    set: &[(String, Option<String>)],
) -> BTreeMap<String, String> {
    use bellwether_config::setting::{Context, VarType};
    let mut values: BTreeMap<String, String> = catalog
        .settings
        .values()
        .filter(|s| {
            (s.source == "configuration file" || s.source == "command line")
                && s.context != Context::Internal
                && s.vartype != VarType::String
                && !scratch::FORCED.contains(&s.name.as_str())
        })
        .map(|s| (s.name.clone(), s.value.clone()))
        .collect();
    for (k, v) in set {
        let name = catalog
            .lookup(k)
            .map(|s| s.name.clone())
            .unwrap_or_else(|| k.clone());
        match v {
            Some(v) => {
                values.insert(name, v.clone());
            }
            None => {
                values.remove(&name);
            }
        }
    }
    values
}
