//! The actions a server asks an agent to carry out on its host during a rollout.
//!
//! `ActionSpec` is the one shape the engine decides, the server stores and sends, and the
//! agent executes. It lives here so the two ends of the wire cannot disagree. The JSON is flat:
//!
//! ```json
//! {"argv": ["/usr/bin/systemctl", "restart", "websvc"], "timeout_ms": 30000}
//! {"builtin": "set_service_version", "version": "2"}
//! {"builtin": "restore_file", "path": "etc/websvc.conf"}
//! {"builtin": "reinstall_package", "package": "libssl3"}
//! {"builtin": "set_cgroup", "cpu_max": "50000 100000", "memory_max": "512M"}
//! {"builtin": "start_process", "argv": ["/usr/bin/pg_ctl", "-D", "/srv/pg", "-w", "start"], "pidfile": "/srv/pg/postmaster.pid"}
//! {"builtin": "stop_process", "pid": 4242}
//! {"builtin": "sample_processes", "pids": [4242, 4300]}
//! {"builtin": "mirror_provision", "dependency": "cache", "kind": "redis", "primary": "127.0.0.1:6379", "instance": "cache-1"}
//! {"builtin": "mirror_retire", "instance": "cache-1"}
//! {"builtin": "mirror_promote", "kind": "redis", "endpoint": "127.0.0.1:40001", "catch_up_to": 123456}
//! {"builtin": "mirror_fence", "kind": "redis", "endpoint": "127.0.0.1:6379", "new_primary": "127.0.0.1:40001"}
//! {"builtin": "shadow_point", "shadow": {"name": "orders", "resource": {"kind": "sqlite", "path": "srv/orders.db"}, "type": "full", "dir": "var/shadow/orders", "reason": {"reason": "schedule"}}}
//! ```
//!
//! Every built-in but `sample_processes` also accepts an optional `timeout_ms`. Deserialisation validates (an action
//! that reaches an agent is always well formed) and unknown fields are rejected, so a typo in a
//! plan or a request body is an error rather than a silently ignored key. This module never
//! runs anything: executing an action is the agent's business.

use serde::{Deserialize, Serialize};

use crate::mirror::DepKind;
use crate::shadow::{ShadowCall, ShadowOp};

/// The shortest timeout an action may have, in milliseconds.
pub const MIN_TIMEOUT_MS: u64 = 100;
/// The longest timeout an action may have, in milliseconds (one hour).
pub const MAX_TIMEOUT_MS: u64 = 3_600_000;
/// The timeout of an action that does not name one, in milliseconds.
pub const DEFAULT_TIMEOUT_MS: u64 = 60_000;

/// One action for an agent to run on its host.
///
/// Construct it through [`ActionSpec::validate`] or deserialisation, which both check the
/// invariants below; the fields are public for matching, and [`ActionSpec::validate`] is the
/// gate to call after building one by hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionSpec {
    /// Run a program. `argv[0]` is the program; there is never a shell in between. The agent
    /// runs it with its rootfs as working directory and kills it after `timeout_ms`.
    Argv { argv: Vec<String>, timeout_ms: u64 },
    /// Write `version` as the host service's version (the sandbox service reloads on change).
    SetServiceVersion {
        version: String,
        timeout_ms: Option<u64>,
    },
    /// Restore a file from the copy the agent kept at baseline time. `path` is relative to the
    /// agent's rootfs and never contains `..` or starts with `/`.
    RestoreFile {
        path: String,
        timeout_ms: Option<u64>,
    },
    /// Reinstall a package (or artifact) by name.
    ReinstallPackage {
        package: String,
        timeout_ms: Option<u64>,
    },
    /// Set cgroup v2 limits on the host service: `cpu.max` ("max", "QUOTA" or "QUOTA PERIOD",
    /// in microseconds) and/or `memory.max` ("max" or bytes with an optional K, M, G or T
    /// suffix). At least one is set.
    SetCgroup {
        cpu_max: Option<String>,
        memory_max: Option<String>,
        timeout_ms: Option<u64>,
    },
    /// Start a service instance on the host, detached: `argv` runs directly (no shell). With
    /// `pidfile` (an absolute host path), `argv` is a launcher that must exit 0 within the
    /// timeout and the instance's PID is the pidfile's first line; without it, the spawned
    /// process is the instance. Output: `{"pid": N}`.
    StartProcess {
        argv: Vec<String>,
        pidfile: Option<String>,
        timeout_ms: Option<u64>,
    },
    /// Stop the process named by exactly one of `pid` and `pidfile`: run `argv` if given, else
    /// SIGTERM to that one PID (never a process group); then wait for it to exit within the
    /// timeout. Output: `{"pid": N, "exited": true|false}`.
    StopProcess {
        pid: Option<u32>,
        pidfile: Option<String>,
        argv: Option<Vec<String>>,
        timeout_ms: Option<u64>,
    },
    /// Sample 1 to [`MAX_SAMPLE_PIDS`] processes, each with all its descendants: cumulative
    /// CPU ticks and resident bytes. Output:
    /// `{"at_ms": T, "processes": {"PID": {"alive", "cpu_ticks", "ticks_per_s", "rss_bytes"}}}`.
    SampleProcesses { pids: Vec<u32> },
    /// Read the whole configuration of the PostgreSQL instance the agent knows as `database`
    /// (its `--database NAME=URL`; the server never sends a connection string). Output: the
    /// `bellwether_config::setting::Catalog` JSON.
    PgReadSettings { database: String },
    /// Set `settings` on the instance `database`, in order, with `ALTER SYSTEM` (`None`
    /// resets to the default), then reload, or restart with the agent's configured restart
    /// command when `restart` is set or a setting needs it. Every value is validated first;
    /// nothing is half-applied. Output: `bellwether_pg::ApplyReport` JSON.
    PgApply {
        database: String,
        settings: Vec<(String, Option<String>)>,
        restart: bool,
        timeout_ms: Option<u64>,
    },
    /// Trial-start a scratch cluster from the instance's own binaries with the instance's
    /// configuration plus `settings`; never touches the instance. Output:
    /// `bellwether_config::simulate::StartTrial` JSON.
    PgTrial {
        database: String,
        settings: Vec<(String, Option<String>)>,
        timeout_ms: Option<u64>,
    },
    /// Make a mirror (a replica) of the `redis` or `postgres` dependency `dependency` whose
    /// primary is `primary` (`HOST:PORT`), as a local process under the agent's state
    /// directory (`mirrors/INSTANCE/`), on `port` or a free one. Returns once the mirror
    /// serves with its replication link up; a failure leaves nothing behind. Output: the
    /// `bellwether_mirror::Instance` JSON (`endpoint`, `pid`, `dir`, `provision_ms`).
    MirrorProvision {
        dependency: String,
        kind: DepKind,
        primary: String,
        instance: String,
        port: Option<u16>,
        timeout_ms: Option<u64>,
    },
    /// Stop the mirror `instance` this agent made and remove its directory; one already gone
    /// is fine. Output: `{"instance": ID, "retired": true}`.
    MirrorRetire {
        instance: String,
        timeout_ms: Option<u64>,
    },
    /// Promote the mirror at `endpoint` (the agent's mirrors listen on its loopback) once its
    /// replication position reached `catch_up_to`, refusing if it does not within the timeout.
    /// Output: `bellwether_mirror::PromoteReport` JSON.
    MirrorPromote {
        kind: DepKind,
        endpoint: String,
        catch_up_to: Option<u64>,
        timeout_ms: Option<u64>,
    },
    /// Fence the old primary at `endpoint`: it becomes a replica of `new_primary` (Redis) or
    /// refuses writes. Output: `bellwether_mirror::FenceReport` JSON.
    MirrorFence {
        kind: DepKind,
        endpoint: String,
        new_primary: Option<String>,
        timeout_ms: Option<u64>,
    },
    /// A shadow built-in (`shadow_start`, `shadow_stop`, `shadow_point`, `shadow_restore`,
    /// `shadow_route`) on the shadow `shadow` (see `crate::shadow`); every path stays inside
    /// the agent's root. Output: the agent's `bellwether_agent::actions::shadow` report.
    Shadow {
        op: ShadowOp,
        shadow: Box<ShadowCall>,
        timeout_ms: Option<u64>,
    },
}

/// The most settings one `pg_apply` or `pg_trial` may carry.
pub const MAX_PG_SETTINGS: usize = 512;

/// The largest PID Linux hands out (`PID_MAX_LIMIT`, 2^22); the same bound as
/// `bellwether_engine::patch::PID_MAX`.
pub const PID_MAX: u32 = 4_194_304;

/// The most PIDs one `sample_processes` may name.
pub const MAX_SAMPLE_PIDS: usize = 16;

/// Why an action spec is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionSpecError {
    #[error("shadow: {0}")]
    Shadow(String),
    #[error("argv is empty; an argv action needs at least the program")]
    EmptyArgv,
    #[error("argv[{index}] contains a NUL byte")]
    NulInArgv { index: usize },
    #[error("argv[0] is empty")]
    EmptyProgram,
    #[error("timeout_ms {value} is outside [{MIN_TIMEOUT_MS}, {MAX_TIMEOUT_MS}]")]
    Timeout { value: u64 },
    #[error("an action has either `argv` or `builtin`, got neither")]
    Neither,
    #[error("an action has either `argv` or `builtin`, got both")]
    Both,
    #[error("unknown builtin {name:?}; expected set_service_version, restore_file, reinstall_package, set_cgroup, start_process, stop_process, sample_processes, pg_read_settings, pg_apply, pg_trial, mirror_provision, mirror_retire, mirror_promote or mirror_fence")]
    UnknownBuiltin { name: String },
    #[error("builtin {builtin} needs the field `{field}`")]
    MissingField {
        builtin: &'static str,
        field: &'static str,
    },
    #[error("field `{field}` does not belong to {builtin}")]
    StrayField {
        builtin: &'static str,
        field: &'static str,
    },
    #[error("{field} {value:?} is not valid: {why}")]
    BadValue {
        field: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("restore_file path {path:?} must be relative to the rootfs: {why}")]
    BadPath { path: String, why: &'static str },
    #[error("{field} {path:?} must be an absolute host path: {why}")]
    BadHostPath {
        field: &'static str,
        path: String,
        why: &'static str,
    },
    #[error("{field} {pid} is refused: {why}")]
    BadPid {
        field: &'static str,
        pid: u32,
        why: &'static str,
    },
    #[error("{builtin} takes one of `{a}` and `{b}`, not both")]
    OneOf {
        builtin: &'static str,
        a: &'static str,
        b: &'static str,
    },
    #[error("sample_processes takes 1 to {MAX_SAMPLE_PIDS} pids, got {count}")]
    PidCount { count: usize },
}

impl ActionSpec {
    /// The built-in's name as it appears in JSON, or `None` for an argv action.
    pub fn builtin_name(&self) -> Option<&'static str> {
        match self {
            ActionSpec::Argv { .. } => None,
            ActionSpec::SetServiceVersion { .. } => Some("set_service_version"),
            ActionSpec::RestoreFile { .. } => Some("restore_file"),
            ActionSpec::ReinstallPackage { .. } => Some("reinstall_package"),
            ActionSpec::SetCgroup { .. } => Some("set_cgroup"),
            ActionSpec::StartProcess { .. } => Some("start_process"),
            ActionSpec::StopProcess { .. } => Some("stop_process"),
            ActionSpec::SampleProcesses { .. } => Some("sample_processes"),
            ActionSpec::PgReadSettings { .. } => Some("pg_read_settings"),
            ActionSpec::PgApply { .. } => Some("pg_apply"),
            ActionSpec::PgTrial { .. } => Some("pg_trial"),
            ActionSpec::MirrorProvision { .. } => Some("mirror_provision"),
            ActionSpec::MirrorRetire { .. } => Some("mirror_retire"),
            ActionSpec::MirrorPromote { .. } => Some("mirror_promote"),
            ActionSpec::MirrorFence { .. } => Some("mirror_fence"),
            ActionSpec::Shadow { op, .. } => Some(op.builtin()),
        }
    }

    /// The timeout the agent enforces: the one given, else [`DEFAULT_TIMEOUT_MS`].
    pub fn timeout_ms(&self) -> u64 {
        match self {
            ActionSpec::Argv { timeout_ms, .. } => *timeout_ms,
            ActionSpec::SetServiceVersion { timeout_ms, .. }
            | ActionSpec::RestoreFile { timeout_ms, .. }
            | ActionSpec::ReinstallPackage { timeout_ms, .. }
            | ActionSpec::SetCgroup { timeout_ms, .. }
            | ActionSpec::StartProcess { timeout_ms, .. }
            | ActionSpec::StopProcess { timeout_ms, .. }
            | ActionSpec::PgApply { timeout_ms, .. }
            | ActionSpec::PgTrial { timeout_ms, .. }
            | ActionSpec::MirrorProvision { timeout_ms, .. }
            | ActionSpec::MirrorRetire { timeout_ms, .. }
            | ActionSpec::MirrorPromote { timeout_ms, .. }
            | ActionSpec::MirrorFence { timeout_ms, .. }
            | ActionSpec::Shadow { timeout_ms, .. } => timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS),
            ActionSpec::SampleProcesses { .. } | ActionSpec::PgReadSettings { .. } => {
                DEFAULT_TIMEOUT_MS
            }
        }
    }

    /// A short human description, such as `argv [systemctl restart websvc]` or
    /// `restore_file etc/websvc.conf`, for events and logs.
    pub fn describe(&self) -> String {
        match self {
            ActionSpec::Argv { argv, .. } => format!("argv [{}]", argv.join(" ")),
            ActionSpec::SetServiceVersion { version, .. } => {
                format!("set_service_version {version}")
            }
            ActionSpec::RestoreFile { path, .. } => format!("restore_file {path}"),
            ActionSpec::ReinstallPackage { package, .. } => format!("reinstall_package {package}"),
            ActionSpec::SetCgroup {
                cpu_max,
                memory_max,
                ..
            } => {
                let mut s = String::from("set_cgroup");
                if let Some(c) = cpu_max {
                    s.push_str(&format!(" cpu.max={c:?}"));
                }
                if let Some(m) = memory_max {
                    s.push_str(&format!(" memory.max={m}"));
                }
                s
            }
            ActionSpec::StartProcess { argv, pidfile, .. } => {
                let mut s = format!("start_process [{}]", argv.join(" "));
                if let Some(p) = pidfile {
                    s.push_str(&format!(" pidfile {p}"));
                }
                s
            }
            ActionSpec::StopProcess {
                pid, pidfile, argv, ..
            } => {
                let mut s = String::from("stop_process");
                if let Some(p) = pid {
                    s.push_str(&format!(" pid {p}"));
                }
                if let Some(p) = pidfile {
                    s.push_str(&format!(" pidfile {p}"));
                }
                if let Some(a) = argv {
                    s.push_str(&format!(" with [{}]", a.join(" ")));
                }
                s
            }
            ActionSpec::SampleProcesses { pids } => {
                let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
                format!("sample_processes {}", pids.join(" "))
            }
            ActionSpec::PgReadSettings { database } => format!("pg_read_settings {database}"),
            ActionSpec::PgApply {
                database,
                settings,
                restart,
                ..
            } => format!(
                "pg_apply {database} {}{}",
                describe_settings(settings),
                if *restart { " with restart" } else { "" }
            ),
            ActionSpec::PgTrial {
                database, settings, ..
            } => format!("pg_trial {database} {}", describe_settings(settings)),
            ActionSpec::MirrorProvision {
                dependency,
                kind,
                primary,
                instance,
                ..
            } => format!(
                "mirror_provision {instance} of {} {dependency} at {primary}",
                kind.as_str()
            ),
            ActionSpec::MirrorRetire { instance, .. } => format!("mirror_retire {instance}"),
            ActionSpec::MirrorPromote {
                kind,
                endpoint,
                catch_up_to,
                ..
            } => match catch_up_to {
                Some(c) => format!("mirror_promote {} {endpoint} at {c}", kind.as_str()),
                None => format!("mirror_promote {} {endpoint}", kind.as_str()),
            },
            ActionSpec::MirrorFence {
                kind,
                endpoint,
                new_primary,
                ..
            } => match new_primary {
                Some(n) => format!("mirror_fence {} {endpoint} to {n}", kind.as_str()),
                None => format!("mirror_fence {} {endpoint}", kind.as_str()),
            },
            ActionSpec::Shadow { op, shadow, .. } => match (&shadow.location, &shadow.to) {
                (Some(l), Some(to)) => {
                    format!("{} {} into {l} to {to:?}", op.builtin(), shadow.name)
                }
                (Some(l), None) => format!("{} {} to {l}", op.builtin(), shadow.name),
                _ => format!("{} {}", op.builtin(), shadow.name),
            },
        }
    }

    /// Checks every invariant of the spec; deserialisation calls this too.
    pub fn validate(&self) -> Result<(), ActionSpecError> {
        let timeout = match self {
            ActionSpec::Argv { timeout_ms, .. } => Some(*timeout_ms),
            ActionSpec::SetServiceVersion { timeout_ms, .. }
            | ActionSpec::RestoreFile { timeout_ms, .. }
            | ActionSpec::ReinstallPackage { timeout_ms, .. }
            | ActionSpec::SetCgroup { timeout_ms, .. }
            | ActionSpec::StartProcess { timeout_ms, .. }
            | ActionSpec::StopProcess { timeout_ms, .. }
            | ActionSpec::PgApply { timeout_ms, .. }
            | ActionSpec::PgTrial { timeout_ms, .. }
            | ActionSpec::MirrorProvision { timeout_ms, .. }
            | ActionSpec::MirrorRetire { timeout_ms, .. }
            | ActionSpec::MirrorPromote { timeout_ms, .. }
            | ActionSpec::MirrorFence { timeout_ms, .. }
            | ActionSpec::Shadow { timeout_ms, .. } => *timeout_ms,
            ActionSpec::SampleProcesses { .. } | ActionSpec::PgReadSettings { .. } => None,
        };
        if let Some(t) = timeout {
            check_timeout(t)?;
        }
        match self {
            ActionSpec::Argv { argv, .. } => check_argv(argv)?,
            ActionSpec::StartProcess { argv, pidfile, .. } => {
                check_argv(argv)?;
                if let Some(p) = pidfile {
                    check_host_path("pidfile", p)?;
                }
            }
            ActionSpec::StopProcess {
                pid, pidfile, argv, ..
            } => {
                match (pid, pidfile) {
                    (None, None) => {
                        return Err(ActionSpecError::MissingField {
                            builtin: "stop_process",
                            field: "pid or pidfile",
                        })
                    }
                    (Some(_), Some(_)) => {
                        return Err(ActionSpecError::OneOf {
                            builtin: "stop_process",
                            a: "pid",
                            b: "pidfile",
                        })
                    }
                    (Some(p), None) => check_signal_pid(*p)?,
                    (None, Some(f)) => check_host_path("pidfile", f)?,
                }
                if let Some(a) = argv {
                    check_argv(a)?;
                }
            }
            ActionSpec::SampleProcesses { pids } => {
                if pids.is_empty() || pids.len() > MAX_SAMPLE_PIDS {
                    return Err(ActionSpecError::PidCount { count: pids.len() });
                }
                for &pid in pids {
                    if pid == 0 || pid > PID_MAX {
                        return Err(ActionSpecError::BadPid {
                            field: "pids",
                            pid,
                            why: "a PID is 1 to 4194304",
                        });
                    }
                }
            }
            ActionSpec::PgReadSettings { database } => check_token("database", database)?,
            ActionSpec::PgApply {
                database, settings, ..
            }
            | ActionSpec::PgTrial {
                database, settings, ..
            } => {
                check_token("database", database)?;
                check_pg_settings(settings)?;
            }
            ActionSpec::MirrorProvision {
                dependency,
                kind,
                primary,
                instance,
                port,
                ..
            } => {
                check_dependency_name(dependency)?;
                check_mirror_kind(*kind)?;
                check_endpoint("primary", primary)?;
                check_instance(instance)?;
                if *port == Some(0) {
                    return Err(ActionSpecError::BadValue {
                        field: "port",
                        value: "0".into(),
                        why: "a port is 1 to 65535; leave it out for a free one",
                    });
                }
            }
            ActionSpec::MirrorRetire { instance, .. } => check_instance(instance)?,
            ActionSpec::MirrorPromote { kind, endpoint, .. } => {
                check_mirror_kind(*kind)?;
                check_endpoint("endpoint", endpoint)?;
            }
            ActionSpec::MirrorFence {
                kind,
                endpoint,
                new_primary,
                ..
            } => {
                check_mirror_kind(*kind)?;
                check_endpoint("endpoint", endpoint)?;
                if let Some(n) = new_primary {
                    check_endpoint("new_primary", n)?;
                }
            }
            ActionSpec::Shadow { op, shadow, .. } => {
                shadow
                    .validate(*op)
                    .map_err(|e| ActionSpecError::Shadow(e.to_string()))?;
            }
            ActionSpec::SetServiceVersion { version, .. } => check_token("version", version)?,
            ActionSpec::RestoreFile { path, .. } => check_relative_path(path)?,
            ActionSpec::ReinstallPackage { package, .. } => check_token("package", package)?,
            ActionSpec::SetCgroup {
                cpu_max,
                memory_max,
                ..
            } => {
                if cpu_max.is_none() && memory_max.is_none() {
                    return Err(ActionSpecError::MissingField {
                        builtin: "set_cgroup",
                        field: "cpu_max or memory_max",
                    });
                }
                if let Some(c) = cpu_max {
                    check_cpu_max(c)?;
                }
                if let Some(m) = memory_max {
                    check_memory_max(m)?;
                }
            }
        }
        Ok(())
    }
}

/// `name = value, …` for events (values quoted, cut).
fn describe_settings(settings: &[(String, Option<String>)]) -> String {
    let parts: Vec<String> = settings
        .iter()
        .map(|(k, v)| match v {
            Some(v) => format!("{k}={}", crate::text::quote(v)),
            None => format!("{k}=DEFAULT"),
        })
        .collect();
    parts.join(" ")
}

/// 1 to [`MAX_PG_SETTINGS`] settings; names are PostgreSQL identifiers (`[a-z0-9_.]`, a
/// letter or `_` first, at most 63 bytes); values at most 4096 bytes without NUL. Whether a
/// value is valid for its setting is the agent's check against `pg_settings`.
fn check_pg_settings(settings: &[(String, Option<String>)]) -> Result<(), ActionSpecError> {
    if settings.is_empty() || settings.len() > MAX_PG_SETTINGS {
        return Err(ActionSpecError::BadValue {
            field: "settings",
            value: settings.len().to_string(),
            why: "expected 1 to 512 settings",
        });
    }
    for (name, value) in settings {
        let ok = !name.is_empty()
            && name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
            && name
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b == b'_');
        if !ok {
            return Err(ActionSpecError::BadValue {
                field: "settings",
                value: name.clone(),
                why: "a setting name is lower-case letters, digits, '_' and '.', at most 63 bytes",
            });
        }
        if let Some(v) = value {
            if v.len() > 4096 || v.contains('\0') {
                return Err(ActionSpecError::BadValue {
                    field: "settings",
                    value: name.clone(),
                    why: "a value is at most 4096 bytes without NUL",
                });
            }
        }
    }
    Ok(())
}

/// A dependency name, the rule of [`crate::mirror::DependencySpec::validate`].
fn check_dependency_name(v: &str) -> Result<(), ActionSpecError> {
    let ok = !v.is_empty()
        && v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !v.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(ActionSpecError::BadValue {
            field: "dependency",
            value: v.to_string(),
            why: "a dependency name is lower-case letters, digits and '-', 1 to 63 characters, starting with a letter or digit",
        })
    }
}

/// Only `redis` and `postgres` have mirrors an agent can make, promote or fence.
fn check_mirror_kind(kind: DepKind) -> Result<(), ActionSpecError> {
    if kind == DepKind::Tcp {
        return Err(ActionSpecError::BadValue {
            field: "kind",
            value: "tcp".into(),
            why:
                "a tcp dependency has no replication an agent can drive; expected redis or postgres",
        });
    }
    Ok(())
}

/// `HOST:PORT`, the rule of [`crate::mirror::check_endpoint`].
fn check_endpoint(field: &'static str, v: &str) -> Result<(), ActionSpecError> {
    crate::mirror::check_endpoint(v).map_err(|_| ActionSpecError::BadValue {
        field,
        value: v.to_string(),
        why: "expected HOST:PORT (an IPv6 host in brackets)",
    })
}

/// A mirror instance id: it names a directory under the agent's state directory.
fn check_instance(v: &str) -> Result<(), ActionSpecError> {
    let ok = !v.is_empty()
        && v.len() <= 64
        && !v.starts_with('.')
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ActionSpecError::BadValue {
            field: "instance",
            value: v.to_string(),
            why:
                "an instance id is 1 to 64 letters, digits, '-', '_' and '.', not starting with '.'",
        })
    }
}

fn check_argv(argv: &[String]) -> Result<(), ActionSpecError> {
    if argv.is_empty() {
        return Err(ActionSpecError::EmptyArgv);
    }
    if argv[0].is_empty() {
        return Err(ActionSpecError::EmptyProgram);
    }
    if let Some(index) = argv.iter().position(|a| a.contains('\0')) {
        return Err(ActionSpecError::NulInArgv { index });
    }
    Ok(())
}

/// A path on the agent's host (a pidfile): absolute, without a NUL byte.
pub fn check_host_path(field: &'static str, path: &str) -> Result<(), ActionSpecError> {
    let bad = |why| ActionSpecError::BadHostPath {
        field,
        path: path.to_string(),
        why,
    };
    if path.is_empty() {
        return Err(bad("it is empty"));
    }
    if path.contains('\0') {
        return Err(bad("it contains a NUL byte"));
    }
    if !path.starts_with('/') {
        return Err(bad("it is not absolute"));
    }
    Ok(())
}

/// A PID that may be signalled: one process, not init (the rule of
/// `bellwether_engine::patch::check_pid`).
fn check_signal_pid(pid: u32) -> Result<(), ActionSpecError> {
    let why = match pid {
        0 => "0 is not one process: kill(0) signals the whole process group",
        1 => "1 is init, which is never stopped",
        p if p > PID_MAX => "it is above the largest PID, 4194304",
        _ => return Ok(()),
    };
    Err(ActionSpecError::BadPid {
        field: "pid",
        pid,
        why,
    })
}

fn check_timeout(t: u64) -> Result<(), ActionSpecError> {
    if (MIN_TIMEOUT_MS..=MAX_TIMEOUT_MS).contains(&t) {
        Ok(())
    } else {
        Err(ActionSpecError::Timeout { value: t })
    }
}

/// A version or package name: 1 to 128 characters of letters, digits and `._+-:~`.
fn check_token(field: &'static str, v: &str) -> Result<(), ActionSpecError> {
    let bad = |why| ActionSpecError::BadValue {
        field,
        value: v.to_string(),
        why,
    };
    if v.is_empty() {
        return Err(bad("it is empty"));
    }
    if v.len() > 128 {
        return Err(bad("it is longer than 128 characters"));
    }
    if !v
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-' | ':' | '~'))
    {
        return Err(bad("only letters, digits and . _ + - : ~ are allowed"));
    }
    Ok(())
}

/// A path relative to the agent's rootfs, with no way out of it.
pub fn check_relative_path(path: &str) -> Result<(), ActionSpecError> {
    let bad = |why| ActionSpecError::BadPath {
        path: path.to_string(),
        why,
    };
    if path.is_empty() {
        return Err(bad("it is empty"));
    }
    if path.starts_with('/') || path.starts_with('\\') {
        return Err(bad("it is absolute"));
    }
    if path.contains('\0') {
        return Err(bad("it contains a NUL byte"));
    }
    if path.contains('\\') {
        return Err(bad("it contains a backslash"));
    }
    if path.split('/').any(|seg| seg == "..") {
        return Err(bad("it contains `..`"));
    }
    if path.split('/').all(|seg| seg.is_empty() || seg == ".") {
        return Err(bad("it names no file"));
    }
    Ok(())
}

fn check_cpu_max(v: &str) -> Result<(), ActionSpecError> {
    let bad = || ActionSpecError::BadValue {
        field: "cpu_max",
        value: v.to_string(),
        why: "expected \"max\", \"QUOTA\" or \"QUOTA PERIOD\" in microseconds",
    };
    let mut parts = v.split(' ');
    let quota = parts.next().ok_or_else(bad)?;
    if quota != "max" && !is_positive_int(quota) {
        return Err(bad());
    }
    if let Some(period) = parts.next() {
        if !is_positive_int(period) {
            return Err(bad());
        }
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(())
}

fn check_memory_max(v: &str) -> Result<(), ActionSpecError> {
    if v == "max" {
        return Ok(());
    }
    let digits = v.strip_suffix(['K', 'M', 'G', 'T']).unwrap_or(v);
    if is_positive_int(digits) {
        Ok(())
    } else {
        Err(ActionSpecError::BadValue {
            field: "memory_max",
            value: v.to_string(),
            why: "expected \"max\" or a byte count with an optional K, M, G or T suffix",
        })
    }
}

fn is_positive_int(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 19
        && s.bytes().all(|b| b.is_ascii_digit())
        && s.bytes().any(|b| b != b'0')
}

/// The flat wire form; every field optional so that errors can say which one is wrong.
#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    argv: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    builtin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    package: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cpu_max: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    memory_max: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pidfile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pids: Option<Vec<u32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    database: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    settings: Option<Vec<(String, Option<String>)>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    restart: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dependency: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kind: Option<DepKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    primary: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    instance: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    catch_up_to: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    shadow: Option<ShadowCall>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    new_primary: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timeout_ms: Option<u64>,
}

impl Wire {
    /// The optional fields that are set, by their JSON names (`argv` and `builtin` aside).
    fn present(&self) -> Vec<&'static str> {
        [
            ("version", self.version.is_some()),
            ("path", self.path.is_some()),
            ("package", self.package.is_some()),
            ("cpu_max", self.cpu_max.is_some()),
            ("memory_max", self.memory_max.is_some()),
            ("pid", self.pid.is_some()),
            ("pidfile", self.pidfile.is_some()),
            ("pids", self.pids.is_some()),
            ("database", self.database.is_some()),
            ("settings", self.settings.is_some()),
            ("restart", self.restart.is_some()),
            ("dependency", self.dependency.is_some()),
            ("kind", self.kind.is_some()),
            ("primary", self.primary.is_some()),
            ("instance", self.instance.is_some()),
            ("port", self.port.is_some()),
            ("endpoint", self.endpoint.is_some()),
            ("catch_up_to", self.catch_up_to.is_some()),
            ("new_primary", self.new_primary.is_some()),
            ("shadow", self.shadow.is_some()),
            ("timeout_ms", self.timeout_ms.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }

    fn into_spec(self) -> Result<ActionSpec, ActionSpecError> {
        let present = self.present();
        // Fails on the first set field that `builtin` does not take.
        let only = |builtin: &'static str, takes: &[&str]| match present
            .iter()
            .find(|f| !takes.contains(f))
        {
            Some(field) => Err(ActionSpecError::StrayField { builtin, field }),
            None => Ok(()),
        };
        let missing = |builtin, field| ActionSpecError::MissingField { builtin, field };
        let Wire {
            argv,
            builtin,
            version,
            path,
            package,
            cpu_max,
            memory_max,
            pid,
            pidfile,
            pids,
            database,
            settings,
            restart,
            dependency,
            kind,
            primary,
            instance,
            port,
            endpoint,
            catch_up_to,
            new_primary,
            shadow,
            timeout_ms,
        } = self;
        let spec = match (argv, builtin) {
            (None, None) => return Err(ActionSpecError::Neither),
            (Some(argv), None) => {
                only("an argv action", &["timeout_ms"])?;
                ActionSpec::Argv {
                    argv,
                    timeout_ms: timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS),
                }
            }
            (argv, Some(name)) => {
                // Only the process built-ins take an argv beside `builtin`.
                if argv.is_some() && !matches!(name.as_str(), "start_process" | "stop_process") {
                    return Err(ActionSpecError::Both);
                }
                match name.as_str() {
                    "set_service_version" => {
                        let b = "set_service_version";
                        only(b, &["version", "timeout_ms"])?;
                        ActionSpec::SetServiceVersion {
                            version: version.ok_or(missing(b, "version"))?,
                            timeout_ms,
                        }
                    }
                    "restore_file" => {
                        let b = "restore_file";
                        only(b, &["path", "timeout_ms"])?;
                        ActionSpec::RestoreFile {
                            path: path.ok_or(missing(b, "path"))?,
                            timeout_ms,
                        }
                    }
                    "reinstall_package" => {
                        let b = "reinstall_package";
                        only(b, &["package", "timeout_ms"])?;
                        ActionSpec::ReinstallPackage {
                            package: package.ok_or(missing(b, "package"))?,
                            timeout_ms,
                        }
                    }
                    "set_cgroup" => {
                        only("set_cgroup", &["cpu_max", "memory_max", "timeout_ms"])?;
                        ActionSpec::SetCgroup {
                            cpu_max,
                            memory_max,
                            timeout_ms,
                        }
                    }
                    "start_process" => {
                        let b = "start_process";
                        only(b, &["pidfile", "timeout_ms"])?;
                        ActionSpec::StartProcess {
                            argv: argv.ok_or(missing(b, "argv"))?,
                            pidfile,
                            timeout_ms,
                        }
                    }
                    "stop_process" => {
                        only("stop_process", &["pid", "pidfile", "timeout_ms"])?;
                        ActionSpec::StopProcess {
                            pid,
                            pidfile,
                            argv,
                            timeout_ms,
                        }
                    }
                    "sample_processes" => {
                        let b = "sample_processes";
                        only(b, &["pids"])?;
                        ActionSpec::SampleProcesses {
                            pids: pids.ok_or(missing(b, "pids"))?,
                        }
                    }
                    "pg_read_settings" => {
                        let b = "pg_read_settings";
                        only(b, &["database"])?;
                        ActionSpec::PgReadSettings {
                            database: database.ok_or(missing(b, "database"))?,
                        }
                    }
                    "pg_apply" => {
                        let b = "pg_apply";
                        only(b, &["database", "settings", "restart", "timeout_ms"])?;
                        ActionSpec::PgApply {
                            database: database.ok_or(missing(b, "database"))?,
                            settings: settings.ok_or(missing(b, "settings"))?,
                            restart: restart.unwrap_or(false),
                            timeout_ms,
                        }
                    }
                    "pg_trial" => {
                        let b = "pg_trial";
                        only(b, &["database", "settings", "timeout_ms"])?;
                        ActionSpec::PgTrial {
                            database: database.ok_or(missing(b, "database"))?,
                            settings: settings.ok_or(missing(b, "settings"))?,
                            timeout_ms,
                        }
                    }
                    "mirror_provision" => {
                        let b = "mirror_provision";
                        only(
                            b,
                            &[
                                "dependency",
                                "kind",
                                "primary",
                                "instance",
                                "port",
                                "timeout_ms",
                            ],
                        )?;
                        ActionSpec::MirrorProvision {
                            dependency: dependency.ok_or(missing(b, "dependency"))?,
                            kind: kind.ok_or(missing(b, "kind"))?,
                            primary: primary.ok_or(missing(b, "primary"))?,
                            instance: instance.ok_or(missing(b, "instance"))?,
                            port,
                            timeout_ms,
                        }
                    }
                    "mirror_retire" => {
                        let b = "mirror_retire";
                        only(b, &["instance", "timeout_ms"])?;
                        ActionSpec::MirrorRetire {
                            instance: instance.ok_or(missing(b, "instance"))?,
                            timeout_ms,
                        }
                    }
                    "mirror_promote" => {
                        let b = "mirror_promote";
                        only(b, &["kind", "endpoint", "catch_up_to", "timeout_ms"])?;
                        ActionSpec::MirrorPromote {
                            kind: kind.ok_or(missing(b, "kind"))?,
                            endpoint: endpoint.ok_or(missing(b, "endpoint"))?,
                            catch_up_to,
                            timeout_ms,
                        }
                    }
                    "mirror_fence" => {
                        let b = "mirror_fence";
                        only(b, &["kind", "endpoint", "new_primary", "timeout_ms"])?;
                        ActionSpec::MirrorFence {
                            kind: kind.ok_or(missing(b, "kind"))?,
                            endpoint: endpoint.ok_or(missing(b, "endpoint"))?,
                            new_primary,
                            timeout_ms,
                        }
                    }
                    other => match ShadowOp::from_builtin(other) {
                        Some(op) => {
                            let b = op.builtin();
                            only(b, &["shadow", "timeout_ms"])?;
                            ActionSpec::Shadow {
                                op,
                                shadow: Box::new(shadow.ok_or(missing(b, "shadow"))?),
                                timeout_ms,
                            }
                        }
                        None => return Err(ActionSpecError::UnknownBuiltin { name }),
                    },
                }
            }
        };
        spec.validate()?;
        Ok(spec)
    }

    fn from_spec(spec: &ActionSpec) -> Wire {
        let builtin = spec.builtin_name().map(str::to_string);
        match spec.clone() {
            ActionSpec::Argv { argv, timeout_ms } => Wire {
                argv: Some(argv),
                timeout_ms: Some(timeout_ms),
                ..Wire::default()
            },
            ActionSpec::SetServiceVersion {
                version,
                timeout_ms,
            } => Wire {
                builtin,
                version: Some(version),
                timeout_ms,
                ..Wire::default()
            },
            ActionSpec::RestoreFile { path, timeout_ms } => Wire {
                builtin,
                path: Some(path),
                timeout_ms,
                ..Wire::default()
            },
            ActionSpec::ReinstallPackage {
                package,
                timeout_ms,
            } => Wire {
                builtin,
                package: Some(package),
                timeout_ms,
                ..Wire::default()
            },
            ActionSpec::SetCgroup {
                cpu_max,
                memory_max,
                timeout_ms,
            } => Wire {
                builtin,
                cpu_max,
                memory_max,
                timeout_ms,
                ..Wire::default()
            },
            ActionSpec::StartProcess {
                argv,
                pidfile,
                timeout_ms,
            } => Wire {
                builtin,
                argv: Some(argv),
                pidfile,
                timeout_ms,
                ..Wire::default()
            },
            ActionSpec::StopProcess {
                pid,
                pidfile,
                argv,
                timeout_ms,
            } => Wire {
                builtin,
                pid,
                pidfile,
                argv,
                timeout_ms,
                ..Wire::default()
            },
            ActionSpec::SampleProcesses { pids } => Wire {
                builtin,
                pids: Some(pids),
                ..Wire::default()
            },
            ActionSpec::PgReadSettings { database } => Wire {
                builtin,
                database: Some(database),
                ..Wire::default()
            },
            ActionSpec::PgApply {
                database,
                settings,
                restart,
                timeout_ms,
            } => Wire {
                builtin,
                database: Some(database),
                settings: Some(settings),
                restart: Some(restart),
                timeout_ms,
                ..Wire::default()
            },
            ActionSpec::PgTrial {
                database,
                settings,
                timeout_ms,
            } => Wire {
                builtin,
                database: Some(database),
                settings: Some(settings),
                timeout_ms,
                ..Wire::default()
            },
            ActionSpec::MirrorProvision {
                dependency,
                kind,
                primary,
                instance,
                port,
                timeout_ms,
            } => Wire {
                builtin,
                dependency: Some(dependency),
                kind: Some(kind),
                primary: Some(primary),
                instance: Some(instance),
                port,
                timeout_ms,
                ..Wire::default()
            },
            ActionSpec::MirrorRetire {
                instance,
                timeout_ms,
            } => Wire {
                builtin,
                instance: Some(instance),
                timeout_ms,
                ..Wire::default()
            },
            ActionSpec::MirrorPromote {
                kind,
                endpoint,
                catch_up_to,
                timeout_ms,
            } => Wire {
                builtin,
                kind: Some(kind),
                endpoint: Some(endpoint),
                catch_up_to,
                timeout_ms,
                ..Wire::default()
            },
            ActionSpec::MirrorFence {
                kind,
                endpoint,
                new_primary,
                timeout_ms,
            } => Wire {
                builtin,
                kind: Some(kind),
                endpoint: Some(endpoint),
                new_primary,
                timeout_ms,
                ..Wire::default()
            },
            ActionSpec::Shadow {
                shadow, timeout_ms, ..
            } => Wire {
                builtin,
                shadow: Some(*shadow),
                timeout_ms,
                ..Wire::default()
            },
        }
    }
}

impl Serialize for ActionSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Wire::from_spec(self).serialize(s)
    }
}

impl<'de> Deserialize<'de> for ActionSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Wire::deserialize(d)?
            .into_spec()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<ActionSpec, String> {
        serde_json::from_str::<ActionSpec>(json).map_err(|e| e.to_string())
    }

    #[test]
    fn parses_every_documented_form() {
        assert_eq!(
            parse(r#"{"argv": ["/bin/true", "x"], "timeout_ms": 30000}"#).unwrap(),
            ActionSpec::Argv {
                argv: vec!["/bin/true".into(), "x".into()],
                timeout_ms: 30_000
            }
        );
        assert_eq!(
            parse(r#"{"builtin": "set_service_version", "version": "2"}"#).unwrap(),
            ActionSpec::SetServiceVersion {
                version: "2".into(),
                timeout_ms: None
            }
        );
        assert_eq!(
            parse(r#"{"builtin": "restore_file", "path": "etc/websvc.conf"}"#).unwrap(),
            ActionSpec::RestoreFile {
                path: "etc/websvc.conf".into(),
                timeout_ms: None
            }
        );
        assert_eq!(
            parse(r#"{"builtin": "reinstall_package", "package": "libssl3"}"#).unwrap(),
            ActionSpec::ReinstallPackage {
                package: "libssl3".into(),
                timeout_ms: None
            }
        );
        assert_eq!(
            parse(r#"{"builtin": "set_cgroup", "cpu_max": "50000 100000"}"#).unwrap(),
            ActionSpec::SetCgroup {
                cpu_max: Some("50000 100000".into()),
                memory_max: None,
                timeout_ms: None
            }
        );
        assert_eq!(
            parse(r#"{"builtin": "set_cgroup", "memory_max": "512M", "timeout_ms": 5000}"#)
                .unwrap(),
            ActionSpec::SetCgroup {
                cpu_max: None,
                memory_max: Some("512M".into()),
                timeout_ms: Some(5000)
            }
        );
    }

    #[test]
    fn argv_without_timeout_gets_the_default() {
        assert_eq!(
            parse(r#"{"argv": ["true"]}"#).unwrap().timeout_ms(),
            DEFAULT_TIMEOUT_MS
        );
        assert_eq!(
            parse(r#"{"builtin": "restore_file", "path": "a"}"#)
                .unwrap()
                .timeout_ms(),
            DEFAULT_TIMEOUT_MS
        );
    }

    #[test]
    fn json_round_trips() {
        let specs = [
            ActionSpec::Argv {
                argv: vec!["a".into(), "b c".into()],
                timeout_ms: 1000,
            },
            ActionSpec::SetServiceVersion {
                version: "2.1".into(),
                timeout_ms: Some(200),
            },
            ActionSpec::RestoreFile {
                path: "etc/x/y.conf".into(),
                timeout_ms: None,
            },
            ActionSpec::ReinstallPackage {
                package: "libssl1.1".into(),
                timeout_ms: None,
            },
            ActionSpec::SetCgroup {
                cpu_max: Some("max".into()),
                memory_max: Some("max".into()),
                timeout_ms: None,
            },
        ];
        for s in specs {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(parse(&json).unwrap(), s, "{json}");
        }
        let json = serde_json::to_value(ActionSpec::RestoreFile {
            path: "etc/a".into(),
            timeout_ms: None,
        })
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"builtin": "restore_file", "path": "etc/a"})
        );
    }

    #[test]
    fn rejects_bad_argv_and_timeouts() {
        assert!(parse(r#"{"argv": []}"#)
            .unwrap_err()
            .contains("argv is empty"));
        assert!(parse(r#"{"argv": [""]}"#)
            .unwrap_err()
            .contains("argv[0] is empty"));
        assert!(parse(r#"{"argv": ["a", "b\u0000"]}"#)
            .unwrap_err()
            .contains("argv[1] contains a NUL"));
        assert!(parse(r#"{"argv": ["a"], "timeout_ms": 0}"#)
            .unwrap_err()
            .contains("timeout_ms 0 is outside"));
        assert!(parse(r#"{"argv": ["a"], "timeout_ms": 3600001}"#)
            .unwrap_err()
            .contains("outside"));
        assert!(
            parse(r#"{"builtin": "restore_file", "path": "a", "timeout_ms": 99}"#)
                .unwrap_err()
                .contains("outside")
        );
        assert!(
            parse(r#"{"argv": "ls -l"}"#).is_err(),
            "a shell string is not an argv list"
        );
    }

    #[test]
    fn rejects_paths_that_leave_the_rootfs() {
        for (p, why) in [
            ("/etc/passwd", "absolute"),
            ("../etc/passwd", "`..`"),
            ("etc/../../x", "`..`"),
            ("etc/..", "`..`"),
            ("", "empty"),
            (".", "names no file"),
            ("etc\\x", "backslash"),
        ] {
            let json = serde_json::json!({"builtin": "restore_file", "path": p}).to_string();
            let err = parse(&json).unwrap_err();
            assert!(err.contains(why), "{p:?}: {err}");
        }
        assert!(check_relative_path("etc/websvc/./conf").is_ok());
        assert!(check_relative_path("etc/..hidden").is_ok());
    }

    #[test]
    fn rejects_malformed_builtins() {
        let cases = [
            (r#"{}"#, "neither"),
            (r#"{"argv": ["a"], "builtin": "restore_file"}"#, "got both"),
            (
                r#"{"builtin": "format_disk"}"#,
                "unknown builtin \"format_disk\"",
            ),
            (
                r#"{"builtin": "set_service_version"}"#,
                "needs the field `version`",
            ),
            (
                r#"{"builtin": "reinstall_package"}"#,
                "needs the field `package`",
            ),
            (r#"{"builtin": "restore_file"}"#, "needs the field `path`"),
            (r#"{"builtin": "set_cgroup"}"#, "cpu_max or memory_max"),
            (
                r#"{"builtin": "set_cgroup", "cpu_max": "fast"}"#,
                "cpu_max \"fast\" is not valid",
            ),
            (
                r#"{"builtin": "set_cgroup", "cpu_max": "1 2 3"}"#,
                "cpu_max",
            ),
            (
                r#"{"builtin": "set_cgroup", "memory_max": "512MB"}"#,
                "memory_max",
            ),
            (
                r#"{"builtin": "set_cgroup", "memory_max": "0"}"#,
                "memory_max",
            ),
            (
                r#"{"builtin": "set_service_version", "version": "2; rm -rf /"}"#,
                "version",
            ),
            (
                r#"{"builtin": "reinstall_package", "package": "a/b"}"#,
                "package",
            ),
            (
                r#"{"builtin": "restore_file", "path": "a", "version": "2"}"#,
                "`version` does not belong to restore_file",
            ),
            (
                r#"{"argv": ["a"], "path": "x"}"#,
                "does not belong to an argv action",
            ),
            (
                r#"{"argv": ["a"], "timeout": 5}"#,
                "unknown field `timeout`",
            ),
        ];
        for (json, want) in cases {
            let err = parse(json).unwrap_err();
            assert!(err.contains(want), "{json}: {err}");
        }
    }

    #[test]
    fn parses_and_round_trips_the_process_builtins() {
        assert_eq!(
            parse(r#"{"builtin": "start_process", "argv": ["/usr/bin/pg_ctl", "start"], "pidfile": "/srv/pg/postmaster.pid", "timeout_ms": 30000}"#)
                .unwrap(),
            ActionSpec::StartProcess {
                argv: vec!["/usr/bin/pg_ctl".into(), "start".into()],
                pidfile: Some("/srv/pg/postmaster.pid".into()),
                timeout_ms: Some(30_000)
            }
        );
        assert_eq!(
            parse(r#"{"builtin": "stop_process", "pid": 4242}"#).unwrap(),
            ActionSpec::StopProcess {
                pid: Some(4242),
                pidfile: None,
                argv: None,
                timeout_ms: None
            }
        );
        assert_eq!(
            parse(r#"{"builtin": "sample_processes", "pids": [2, 4194304]}"#).unwrap(),
            ActionSpec::SampleProcesses {
                pids: vec![2, 4_194_304]
            }
        );
        let specs = [
            ActionSpec::StartProcess {
                argv: vec!["sleep".into(), "60".into()],
                pidfile: None,
                timeout_ms: None,
            },
            ActionSpec::StopProcess {
                pid: None,
                pidfile: Some("/run/x.pid".into()),
                argv: Some(vec!["/usr/bin/pg_ctl".into(), "stop".into()]),
                timeout_ms: Some(5000),
            },
            ActionSpec::SampleProcesses { pids: vec![1, 77] },
        ];
        for s in specs {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(parse(&json).unwrap(), s, "{json}");
        }
        assert_eq!(
            serde_json::to_value(ActionSpec::StopProcess {
                pid: Some(9),
                pidfile: None,
                argv: None,
                timeout_ms: None
            })
            .unwrap(),
            serde_json::json!({"builtin": "stop_process", "pid": 9})
        );
        assert_eq!(
            ActionSpec::SampleProcesses { pids: vec![3] }.timeout_ms(),
            DEFAULT_TIMEOUT_MS
        );
    }

    #[test]
    fn rejects_malformed_process_builtins() {
        let cases = [
            (r#"{"builtin": "start_process"}"#, "needs the field `argv`"),
            (
                r#"{"builtin": "start_process", "argv": []}"#,
                "argv is empty",
            ),
            (
                r#"{"builtin": "start_process", "argv": [""]}"#,
                "argv[0] is empty",
            ),
            (
                r#"{"builtin": "start_process", "argv": ["a", "b\u0000"]}"#,
                "argv[1] contains a NUL",
            ),
            (
                r#"{"builtin": "start_process", "argv": "pg_ctl start"}"#,
                "invalid type",
            ),
            (
                r#"{"builtin": "start_process", "argv": ["a"], "pidfile": "run/x.pid"}"#,
                "pidfile \"run/x.pid\" must be an absolute host path: it is not absolute",
            ),
            (
                r#"{"builtin": "start_process", "argv": ["a"], "pidfile": "/run/x\u0000.pid"}"#,
                "it contains a NUL byte",
            ),
            (
                r#"{"builtin": "start_process", "argv": ["a"], "pidfile": ""}"#,
                "it is empty",
            ),
            (
                r#"{"builtin": "start_process", "argv": ["a"], "pid": 5}"#,
                "`pid` does not belong to start_process",
            ),
            (
                r#"{"builtin": "start_process", "argv": ["a"], "timeout_ms": 50}"#,
                "outside",
            ),
            (
                r#"{"builtin": "stop_process"}"#,
                "needs the field `pid or pidfile`",
            ),
            (
                r#"{"builtin": "stop_process", "pid": 5, "pidfile": "/run/x.pid"}"#,
                "takes one of `pid` and `pidfile`, not both",
            ),
            (
                r#"{"builtin": "stop_process", "pid": 0}"#,
                "pid 0 is refused: 0 is not one process",
            ),
            (
                r#"{"builtin": "stop_process", "pid": 1}"#,
                "pid 1 is refused: 1 is init",
            ),
            (
                r#"{"builtin": "stop_process", "pid": 4194305}"#,
                "above the largest PID",
            ),
            (r#"{"builtin": "stop_process", "pid": -5}"#, "invalid value"),
            (
                r#"{"builtin": "stop_process", "pidfile": "x.pid"}"#,
                "it is not absolute",
            ),
            (
                r#"{"builtin": "stop_process", "pid": 5, "argv": []}"#,
                "argv is empty",
            ),
            (
                r#"{"builtin": "stop_process", "pid": 5, "pids": [5]}"#,
                "`pids` does not belong to stop_process",
            ),
            (
                r#"{"builtin": "sample_processes"}"#,
                "needs the field `pids`",
            ),
            (
                r#"{"builtin": "sample_processes", "pids": []}"#,
                "takes 1 to 16 pids, got 0",
            ),
            (
                r#"{"builtin": "sample_processes", "pids": [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17]}"#,
                "got 17",
            ),
            (
                r#"{"builtin": "sample_processes", "pids": [5, 0]}"#,
                "pids 0 is refused",
            ),
            (
                r#"{"builtin": "sample_processes", "pids": [5], "timeout_ms": 1000}"#,
                "`timeout_ms` does not belong to sample_processes",
            ),
            (
                r#"{"builtin": "sample_processes", "pids": [5], "argv": ["x"]}"#,
                "got both",
            ),
            (
                r#"{"builtin": "set_service_version", "version": "2", "pidfile": "/x"}"#,
                "`pidfile` does not belong to set_service_version",
            ),
            (
                r#"{"argv": ["a"], "pid": 5}"#,
                "`pid` does not belong to an argv action",
            ),
        ];
        for (json, want) in cases {
            let err = parse(json).unwrap_err();
            assert!(err.contains(want), "{json}: {err}");
        }
    }

    #[test]
    fn parses_and_round_trips_the_mirror_builtins() {
        let provision = parse(
            r#"{"builtin": "mirror_provision", "dependency": "cache", "kind": "redis", "primary": "127.0.0.1:6379", "instance": "cache-1"}"#,
        )
        .unwrap();
        assert_eq!(
            provision,
            ActionSpec::MirrorProvision {
                dependency: "cache".into(),
                kind: DepKind::Redis,
                primary: "127.0.0.1:6379".into(),
                instance: "cache-1".into(),
                port: None,
                timeout_ms: None,
            }
        );
        assert_eq!(
            provision.describe(),
            "mirror_provision cache-1 of redis cache at 127.0.0.1:6379"
        );
        let specs = [
            provision,
            ActionSpec::MirrorProvision {
                dependency: "db".into(),
                kind: DepKind::Postgres,
                primary: "[::1]:5432".into(),
                instance: "db.2".into(),
                port: Some(40000),
                timeout_ms: Some(120_000),
            },
            ActionSpec::MirrorRetire {
                instance: "cache-1".into(),
                timeout_ms: None,
            },
            ActionSpec::MirrorPromote {
                kind: DepKind::Redis,
                endpoint: "127.0.0.1:40001".into(),
                catch_up_to: Some(123_456),
                timeout_ms: Some(5000),
            },
            ActionSpec::MirrorFence {
                kind: DepKind::Postgres,
                endpoint: "127.0.0.1:5432".into(),
                new_primary: None,
                timeout_ms: None,
            },
            ActionSpec::MirrorFence {
                kind: DepKind::Redis,
                endpoint: "127.0.0.1:6379".into(),
                new_primary: Some("127.0.0.1:40001".into()),
                timeout_ms: None,
            },
        ];
        for s in specs {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(parse(&json).unwrap(), s, "{json}");
        }
    }

    #[test]
    fn rejects_malformed_mirror_builtins() {
        let p = |extra: &str| {
            format!(
                r#"{{"builtin": "mirror_provision", "dependency": "cache", "kind": "redis", "primary": "127.0.0.1:6379", "instance": "c1"{extra}}}"#
            )
        };
        let cases = [
            (
                r#"{"builtin": "mirror_provision", "kind": "redis", "primary": "h:1", "instance": "c"}"#.to_string(),
                "mirror_provision needs the field `dependency`",
            ),
            (
                r#"{"builtin": "mirror_provision", "dependency": "c", "primary": "h:1", "instance": "c"}"#.to_string(),
                "needs the field `kind`",
            ),
            (
                r#"{"builtin": "mirror_provision", "dependency": "c", "kind": "redis", "instance": "c"}"#.to_string(),
                "needs the field `primary`",
            ),
            (
                r#"{"builtin": "mirror_provision", "dependency": "c", "kind": "redis", "primary": "h:1"}"#.to_string(),
                "needs the field `instance`",
            ),
            (
                p("").replace("\"redis\"", "\"tcp\""),
                "kind \"tcp\" is not valid",
            ),
            (p("").replace("\"redis\"", "\"mysql\""), "unknown variant `mysql`"),
            (
                p("").replace("127.0.0.1:6379", "localhost"),
                "primary \"localhost\" is not valid: expected HOST:PORT",
            ),
            (
                p("").replace("127.0.0.1:6379", "h:0"),
                "primary \"h:0\"",
            ),
            (
                p("").replace("\"c1\"", "\"../etc\""),
                "instance \"../etc\" is not valid",
            ),
            (p("").replace("\"c1\"", "\"\""), "instance \"\" is not valid"),
            (
                p("").replace("\"cache\"", "\"Cache DB\""),
                "dependency \"Cache DB\" is not valid",
            ),
            (p(r#", "port": 0"#), "port \"0\" is not valid"),
            (p(r#", "port": 70000"#), "invalid value"),
            (
                p(r#", "endpoint": "h:1""#),
                "`endpoint` does not belong to mirror_provision",
            ),
            (p(r#", "timeout_ms": 5"#), "timeout_ms 5 is outside"),
            (
                r#"{"builtin": "mirror_retire"}"#.to_string(),
                "mirror_retire needs the field `instance`",
            ),
            (
                r#"{"builtin": "mirror_retire", "instance": "a/b"}"#.to_string(),
                "instance \"a/b\" is not valid",
            ),
            (
                r#"{"builtin": "mirror_retire", "instance": "a", "kind": "redis"}"#.to_string(),
                "`kind` does not belong to mirror_retire",
            ),
            (
                r#"{"builtin": "mirror_promote", "kind": "redis"}"#.to_string(),
                "mirror_promote needs the field `endpoint`",
            ),
            (
                r#"{"builtin": "mirror_promote", "kind": "redis", "endpoint": "h:1", "catch_up_to": -1}"#.to_string(),
                "invalid value",
            ),
            (
                r#"{"builtin": "mirror_promote", "kind": "tcp", "endpoint": "h:1"}"#.to_string(),
                "kind \"tcp\"",
            ),
            (
                r#"{"builtin": "mirror_fence", "kind": "redis", "endpoint": "h:1", "new_primary": "nope"}"#.to_string(),
                "new_primary \"nope\" is not valid",
            ),
            (
                r#"{"builtin": "mirror_fence", "kind": "redis", "endpoint": "h:1", "catch_up_to": 5}"#.to_string(),
                "`catch_up_to` does not belong to mirror_fence",
            ),
            (
                r#"{"builtin": "mirror_fence", "endpoint": "h:1"}"#.to_string(),
                "mirror_fence needs the field `kind`",
            ),
            (
                r#"{"builtin": "mirror_frobnicate"}"#.to_string(),
                "mirror_provision, mirror_retire, mirror_promote or mirror_fence",
            ),
        ];
        for (json, want) in cases {
            let err = parse(&json).unwrap_err();
            assert!(err.contains(want), "{json}: {err}");
        }
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(s in ".{0,200}") {
            let _ = serde_json::from_str::<ActionSpec>(&s);
        }

        #[test]
        fn accepted_paths_stay_inside(segs in proptest::collection::vec("[a-z.]{1,4}", 1..5), abs in proptest::bool::ANY) {
            let p = format!("{}{}", if abs { "/" } else { "" }, segs.join("/"));
            if check_relative_path(&p).is_ok() {
                proptest::prop_assert!(!p.starts_with('/'));
                proptest::prop_assert!(!p.split('/').any(|s| s == ".."));
            }
        }
    }
}
