//! The agent–server wire, defined once: the bodies of enrolment, samples, the actions an agent
//! long-polls and the result it posts, and [`servers`], the list of server addresses an agent
//! or the CLI fails over between.
//!
//! The server (`bellwether-server`) and the agent (`bellwether-agent`) both speak these types,
//! so the two ends cannot drift apart. Every request body refuses unknown fields, so a typo is
//! an error rather than a silent default; answers (which a newer server may extend) do not.
//!
//! An action's result carries a typed [`ActionOutcome`]. Results in the older flat form
//! (`{"ok": bool, "exit_code": …, "error": …}`, posted by agents before this type and stored as
//! such by the server) still parse, into the same outcome the server used to infer from them:
//! `ok: true` is [`ActionOutcome::Ok`], `ok: false` with no exit code and an error starting with
//! `timed out` is [`ActionOutcome::TimedOut`], anything else [`ActionOutcome::Failed`].
//! A result is always written in the typed form.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{ActionSpec, HostName, MetricSample};

pub mod servers;

/// `POST /api/v1/enrol`: the agent's name and labels, with the enrolment token as bearer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrolRequest {
    pub name: HostName,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The host's address as other systems know it (an IP address or a DNS name, no port),
    /// declared with the agent's `--address`: a rollout's PromQL templates read it as
    /// `{{address}}`. Left out when not declared ([`check_host_address`] checks it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// Checks a host's declared address: an IPv4 address, an IPv6 address (bare or in brackets)
/// or a DNS name (letters, digits, `-`, `_` and dots, 1 to 253 bytes); no port, no scheme.
pub fn check_host_address(a: &str) -> Result<(), String> {
    let quoted = crate::text::quote(a);
    if a.is_empty() || a.len() > 253 {
        return Err(format!(
            "address \"{quoted}\" must be 1 to 253 bytes: an IP address or a DNS name"
        ));
    }
    let inner = a
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(a);
    if inner.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    if a.parse::<std::net::SocketAddr>().is_ok()
        || a.rsplit_once(':').is_some_and(|(h, p)| {
            !h.contains(':') && !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())
        })
    {
        return Err(format!(
            "address \"{quoted}\" has a port: give the host alone (an IP address or a DNS name) and write the port in the query, as in instance=\"{{{{address}}}}:9100\""
        ));
    }
    let ok = a.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "address \"{quoted}\" is neither an IP address nor a DNS name (letters, digits, `-`, `_` and dots)"
        ))
    }
}

/// The answer to [`EnrolRequest`]: the agent's own token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrolResponse {
    pub host: HostName,
    pub agent_token: String,
}

/// `POST /api/v1/agent/samples`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplesRequest {
    pub samples: Vec<MetricSample>,
    /// Samples the agent dropped while the server was away, since its last successful send.
    #[serde(default)]
    pub dropped: u64,
}

/// The answer to [`SamplesRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplesResponse {
    pub accepted: u64,
}

/// Whether `id` is an action's wire id: 32 lower-case hex characters (128 random bits).
pub fn is_action_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// One action for an agent, as `GET /api/v1/agent/actions` sends it.
///
/// `id` is the action's wire id ([`is_action_id`]), unique across stores and time, so an
/// agent's journal never mistakes a new action for one it ran before. `timeout_ms` is the
/// longest the agent lets it run: the spec's own timeout ([`ActionSpec::timeout_ms`]),
/// resolved, so a reader needs no default. An answer without it (an older server) takes the
/// spec's; one that disagrees with the spec is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawAgentAction")]
pub struct AgentAction {
    pub id: String,
    /// The change this action belongs to, such as `r-…` for a rollout.
    pub rollout: String,
    /// What the action is for: `apply`, `revert`, `remediate`, ….
    pub kind: String,
    pub spec: ActionSpec,
    pub timeout_ms: u64,
}

impl AgentAction {
    /// An action with its timeout taken from `spec`.
    pub fn new(
        id: impl Into<String>,
        rollout: impl Into<String>,
        kind: impl Into<String>,
        spec: ActionSpec,
    ) -> AgentAction {
        AgentAction {
            id: id.into(),
            rollout: rollout.into(),
            kind: kind.into(),
            timeout_ms: spec.timeout_ms(),
            spec,
        }
    }
}

#[derive(Deserialize)]
struct RawAgentAction {
    id: String,
    #[serde(default)]
    rollout: String,
    #[serde(default)]
    kind: String,
    spec: ActionSpec,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

impl TryFrom<RawAgentAction> for AgentAction {
    type Error = String;

    fn try_from(raw: RawAgentAction) -> Result<Self, String> {
        if !is_action_id(&raw.id) {
            return Err(format!(
                "action id \"{}\" is not 32 lower-case hex characters",
                crate::text::quote(&raw.id)
            ));
        }
        let spec_timeout = raw.spec.timeout_ms();
        if let Some(t) = raw.timeout_ms {
            if t != spec_timeout {
                return Err(format!(
                    "action {}: timeout_ms {t} disagrees with its spec's timeout {spec_timeout}",
                    raw.id
                ));
            }
        }
        Ok(AgentAction {
            id: raw.id,
            rollout: raw.rollout,
            kind: raw.kind,
            spec: raw.spec,
            timeout_ms: spec_timeout,
        })
    }
}

/// The answer of `GET /api/v1/agent/actions`: the host's actions that have no result yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionsResponse {
    pub actions: Vec<AgentAction>,
}

/// How an action ended.
///
/// On the wire it is an object tagged by `status`: `{"status": "ok"}`,
/// `{"status": "failed", "exit_code": 3, "error": "…"}`, `{"status": "timed_out",
/// "after_ms": 30000}`, `{"status": "refused", "reason": "…"}`. Unknown fields are refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case", try_from = "RawOutcome")]
pub enum ActionOutcome {
    /// It ran and succeeded (an argv action exited 0).
    Ok,
    /// It ran and failed: `exit_code` is a program's status (`None` for a built-in, a program
    /// killed by a signal, or one that could not start), `error` says what went wrong.
    Failed {
        exit_code: Option<i32>,
        error: String,
    },
    /// It was still running after `after_ms` and was stopped (a program is killed).
    TimedOut { after_ms: u64 },
    /// The agent did not run it: its `--allow-action` list refuses it, its journal holds the
    /// id for another action, or it could not record the action before running it.
    Refused { reason: String },
}

impl ActionOutcome {
    pub fn is_ok(&self) -> bool {
        matches!(self, ActionOutcome::Ok)
    }

    /// The `status` tag: `ok`, `failed`, `timed_out` or `refused`.
    pub fn status(&self) -> &'static str {
        match self {
            ActionOutcome::Ok => "ok",
            ActionOutcome::Failed { .. } => "failed",
            ActionOutcome::TimedOut { .. } => "timed_out",
            ActionOutcome::Refused { .. } => "refused",
        }
    }
}

impl fmt::Display for ActionOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ActionOutcome::Ok => f.write_str("ok"),
            ActionOutcome::Failed {
                exit_code: Some(c),
                error,
            } => write!(f, "failed (exit code {c}): {error}"),
            ActionOutcome::Failed {
                exit_code: None,
                error,
            } => write!(f, "failed: {error}"),
            ActionOutcome::TimedOut { after_ms } => write!(f, "timed out after {after_ms} ms"),
            ActionOutcome::Refused { reason } => write!(f, "refused: {reason}"),
        }
    }
}

/// Every field optional, so that a missing or stray one is named.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutcome {
    status: String,
    #[serde(default)]
    exit_code: Option<i32>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    after_ms: Option<u64>,
    #[serde(default)]
    reason: Option<String>,
}

impl TryFrom<RawOutcome> for ActionOutcome {
    type Error = String;

    fn try_from(raw: RawOutcome) -> Result<Self, String> {
        let RawOutcome {
            status,
            exit_code,
            error,
            after_ms,
            reason,
        } = raw;
        let present = [
            ("exit_code", exit_code.is_some()),
            ("error", error.is_some()),
            ("after_ms", after_ms.is_some()),
            ("reason", reason.is_some()),
        ];
        let (outcome, allowed): (ActionOutcome, &[&str]) = match status.as_str() {
            "ok" => (ActionOutcome::Ok, &[]),
            "failed" => (
                ActionOutcome::Failed {
                    exit_code,
                    error: error.ok_or("a failed outcome needs the field `error`")?,
                },
                &["exit_code", "error"],
            ),
            "timed_out" => (
                ActionOutcome::TimedOut {
                    after_ms: after_ms.ok_or("a timed_out outcome needs the field `after_ms`")?,
                },
                &["after_ms"],
            ),
            "refused" => (
                ActionOutcome::Refused {
                    reason: reason.ok_or("a refused outcome needs the field `reason`")?,
                },
                &["reason"],
            ),
            other => {
                return Err(format!(
                    "unknown status \"{}\"; expected ok, failed, timed_out or refused",
                    crate::text::quote(other)
                ))
            }
        };
        if let Some((field, _)) = present
            .iter()
            .find(|(field, set)| *set && !allowed.contains(field))
        {
            return Err(format!(
                "field `{field}` does not belong to a {status} outcome"
            ));
        }
        Ok(outcome)
    }
}

/// `POST /api/v1/agent/actions/{id}/result`: how one action ended, with its timing, the last
/// bytes of its output, and a built-in's structured `output` (such as `{"pid": N}`).
///
/// Unknown fields are refused. The older flat form still parses (see the module's text).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawResult")]
pub struct ActionResult {
    pub outcome: ActionOutcome,
    /// Milliseconds since the Unix epoch, on the agent.
    pub started_ms: i64,
    /// Never before `started_ms`.
    pub finished_ms: i64,
    /// The last bytes of the program's stdout (empty for a built-in).
    pub stdout_tail: String,
    pub stderr_tail: String,
    /// A built-in's structured output; `None` for argv actions and built-ins without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
}

impl ActionResult {
    /// A result without output.
    pub fn new(outcome: ActionOutcome, started_ms: i64, finished_ms: i64) -> ActionResult {
        ActionResult {
            outcome,
            started_ms,
            finished_ms: finished_ms.max(started_ms),
            stdout_tail: String::new(),
            stderr_tail: String::new(),
            output: None,
        }
    }

    pub fn is_ok(&self) -> bool {
        self.outcome.is_ok()
    }

    /// What went wrong, for logs and reports: `None` when it succeeded.
    pub fn error_text(&self) -> Option<String> {
        (!self.is_ok()).then(|| self.outcome.to_string())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResult {
    #[serde(default)]
    outcome: Option<ActionOutcome>,
    /// The older form: `ok`, `exit_code` and `error` instead of `outcome`.
    #[serde(default)]
    ok: Option<bool>,
    #[serde(default)]
    exit_code: Option<i32>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    stdout_tail: String,
    #[serde(default)]
    stderr_tail: String,
    started_ms: i64,
    finished_ms: i64,
    #[serde(default)]
    output: Option<Value>,
}

impl TryFrom<RawResult> for ActionResult {
    type Error = String;

    fn try_from(raw: RawResult) -> Result<Self, String> {
        if raw.finished_ms < raw.started_ms {
            return Err(format!(
                "finished_ms {} is before started_ms {}",
                raw.finished_ms, raw.started_ms
            ));
        }
        let outcome = match (raw.outcome, raw.ok) {
            (Some(_), Some(_)) => {
                return Err("a result has `outcome` or the older `ok`, not both".to_owned())
            }
            (None, None) => return Err("missing field `outcome`".to_owned()),
            (Some(outcome), None) => {
                if let Some(field) = [
                    ("exit_code", raw.exit_code.is_some()),
                    ("error", raw.error.is_some()),
                ]
                .iter()
                .find_map(|(f, set)| set.then_some(f))
                {
                    return Err(format!(
                        "field `{field}` belongs to the older form; with `outcome` it goes inside it"
                    ));
                }
                outcome
            }
            (None, Some(ok)) => legacy_outcome(
                ok,
                raw.exit_code,
                raw.error,
                raw.finished_ms - raw.started_ms,
            ),
        };
        Ok(ActionResult {
            outcome,
            started_ms: raw.started_ms,
            finished_ms: raw.finished_ms,
            stdout_tail: raw.stdout_tail,
            stderr_tail: raw.stderr_tail,
            output: raw.output,
        })
    }
}

/// The outcome the server used to infer from a result of the older form.
fn legacy_outcome(
    ok: bool,
    exit_code: Option<i32>,
    error: Option<String>,
    ran_ms: i64,
) -> ActionOutcome {
    if ok {
        return ActionOutcome::Ok;
    }
    match error {
        Some(e) if exit_code.is_none() && e.starts_with("timed out") => {
            // "timed out after 5000 ms; …" as older agents wrote it, else the time it ran.
            let after_ms = e
                .strip_prefix("timed out after ")
                .and_then(|rest| rest.split(' ').next())
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(ran_ms.max(0) as u64);
            ActionOutcome::TimedOut { after_ms }
        }
        Some(error) => ActionOutcome::Failed { exit_code, error },
        None => ActionOutcome::Failed {
            exit_code,
            error: match exit_code {
                Some(c) => format!("exit code {c}"),
                None => "the action failed; the agent gave no reason".to_owned(),
            },
        },
    }
}

#[cfg(test)]
mod tests;

/// What kind of configuration source an agent watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfigSourceKind {
    /// A PostgreSQL instance the agent knows as `--database NAME=URL` (source name `NAME`).
    Postgres,
    /// A plain config file (`--config-file PATH`; source name `file:PATH`).
    File,
}

/// `POST /api/v1/agent/config`: the whole current configuration of one source the agent
/// watches, sent at start and whenever it changes (the server diffs it against the last one it
/// stored and records each changed key as a `config.changed` event with source `instance` or
/// `disk`, unless a config task of its own caused it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigReportRequest {
    /// `NAME` for a database, `file:PATH` for a file (PATH relative to the agent's rootfs).
    pub source: String,
    pub kind: ConfigSourceKind,
    /// Key → value (`pg_settings.setting` form for PostgreSQL; dotted keys for files).
    pub values: BTreeMap<String, String>,
    /// For PostgreSQL, the `bellwether_config::setting::Catalog` JSON (types, units, bounds,
    /// contexts), which the server's simulator needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog: Option<Value>,
    /// When the agent read it (ms since the epoch).
    pub at_ms: i64,
}

/// `POST /api/v1/agent/config/graph`: a dependency graph the agent learned for one PostgreSQL
/// source by probing scratch clusters (`bellwether_config::graph::Graph` JSON), with what the
/// probing did (`bellwether_pg::probe::ProbeStats` JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigGraphRequest {
    pub source: String,
    pub graph: Value,
    #[serde(default)]
    pub stats: Value,
    pub at_ms: i64,
}
