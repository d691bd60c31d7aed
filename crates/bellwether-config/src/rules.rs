//! Checkable constraints between settings: the shipped rules (documented constraints and
//! "does nothing unless"), and the constraints probing learned.
//!
//! Three kinds of rule: hard constraints (PostgreSQL refuses to start, or refuses the value;
//! the simulator refuses a change that breaks one), "does nothing unless" links (a setting has
//! no effect unless another holds a value; the simulator says so but does not refuse), and
//! influences (one setting changes what another does, or the instance's performance; they
//! carry no condition and feed impact paths and risk). Every shipped rule cites the
//! PostgreSQL documentation page it comes from in its evidence.
//!
//! Values are compared as `pg_settings.setting` shows them (numbers in the setting's base
//! unit). A predicate on a value it cannot read (a number expected, a word found) is neither
//! true nor false: the constraint is skipped rather than a change refused on a guess.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::graph::{Edge, EdgeKind, Evidence, EvidenceSource};
use crate::setting::Catalog;

/// A predicate on one setting's value. Numbers compare in the setting's base unit (as
/// `pg_settings.setting` shows it); `Eq`/`Ne`/`In` compare strings case-insensitively, numbers
/// as numbers (`0` = `0.0`) and booleans as booleans (`on` = `true` = `yes`); `Contains`
/// holds when a comma-separated list (`shared_preload_libraries`) has the item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pred {
    Eq(String),
    Ne(String),
    In(Vec<String>),
    Gt(f64),
    Ge(f64),
    Lt(f64),
    Le(f64),
    Contains(String),
}

/// A constraint over a configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Constraint {
    /// When `if_key` satisfies `if_pred`, `then_key` must satisfy `then_pred`
    /// (`wal_level = minimal` ⇒ `max_wal_senders = 0`).
    Implies {
        if_key: String,
        if_pred: Pred,
        then_key: String,
        then_pred: Pred,
    },
    /// The sum of `lhs` must be strictly less than `rhs`
    /// (`superuser_reserved_connections + reserved_connections < max_connections`).
    SumLess { lhs: Vec<String>, rhs: String },
    /// `Σ coefficient × value ≤ max` (`max_connections + autovacuum_max_workers +
    /// max_worker_processes + max_wal_senders ≤ 262142`; `2 × wal_segment_size ≤
    /// min_wal_size` with the units made equal by the coefficients).
    LinearLe { terms: Vec<(String, f64)>, max: f64 },
    /// `key` has no effect unless `unless_key` satisfies `unless_pred` (`archive_command`
    /// unless `archive_mode != off`). Never a violation: the simulator notes it.
    NoEffectUnless {
        key: String,
        unless_key: String,
        unless_pred: Pred,
    },
}

/// A rule: its edge (with the constraint as `condition`, when checkable) and its doc.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    pub id: String,
    pub edge: Edge,
    /// From which server version on it holds (`server_version_num`), if not all.
    pub min_version: Option<u32>,
    /// Before which server version it holds (the setting was removed), if it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_version: Option<u32>,
}

/// A constraint a configuration breaks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Violation {
    /// The rule id or `probe:…`.
    pub rule: String,
    /// The settings involved.
    pub keys: Vec<String>,
    /// A sentence naming the settings, their values and what is required.
    pub message: String,
}

/// The rules shipped with Bellwether for PostgreSQL (filtered by server version:
/// `server_version_num` 0, unknown, keeps the rules without a lower bound).
pub fn shipped_rules(server_version_num: u32) -> Vec<Rule> {
    let major = if server_version_num >= 100_000 {
        server_version_num / 10_000
    } else {
        15
    };
    all_rules(major)
        .into_iter()
        .filter(|r| {
            r.min_version.is_none_or(|m| server_version_num >= m)
                && r.max_version.is_none_or(|m| server_version_num < m)
        })
        .collect()
}

/// One shipped rule before it becomes a [`Rule`].
struct Spec {
    id: String,
    from: &'static str,
    to: &'static str,
    kind: EdgeKind,
    confidence: f64,
    condition: Option<Constraint>,
    /// The documentation page (`runtime-config-wal.html`) and anchor setting.
    page: &'static str,
    anchor: &'static str,
    doc: &'static str,
    min_version: Option<u32>,
    max_version: Option<u32>,
}

impl Spec {
    fn rule(self, major: u32) -> Rule {
        let anchor = if self.anchor.contains('.') || self.anchor.is_empty() {
            String::new()
        } else {
            format!("#GUC-{}", self.anchor.to_uppercase().replace('_', "-"))
        };
        let url = format!(
            "https://www.postgresql.org/docs/{major}/{}{anchor}",
            self.page
        );
        Rule {
            id: self.id.clone(),
            edge: Edge {
                from: self.from.to_string(),
                to: self.to.to_string(),
                kind: self.kind,
                confidence: self.confidence,
                evidence: vec![Evidence {
                    source: EvidenceSource::Rule,
                    detail: format!(
                        "rule {}: {} (PostgreSQL documentation: {url})",
                        self.id, self.doc
                    ),
                }],
                condition: self.condition,
            },
            min_version: self.min_version,
            max_version: self.max_version,
        }
    }
}

fn s(x: &str) -> String {
    x.to_string()
}

/// A hard constraint `if_key if_pred ⇒ then_key then_pred`.
#[allow(clippy::too_many_arguments)]
fn implies(
    id: impl Into<String>,
    kind: EdgeKind,
    (from, if_pred): (&'static str, Pred),
    (to, then_pred): (&'static str, Pred),
    page: &'static str,
    doc: &'static str,
    min_version: Option<u32>,
) -> Spec {
    Spec {
        id: id.into(),
        from,
        to,
        kind,
        confidence: 1.0,
        condition: Some(Constraint::Implies {
            if_key: s(from),
            if_pred,
            then_key: s(to),
            then_pred,
        }),
        page,
        anchor: from,
        doc,
        min_version,
        max_version: None,
    }
}

/// `key` does nothing unless `unless_key unless_pred`: a `requires` edge key → unless_key.
fn inert(
    id: impl Into<String>,
    key: &'static str,
    unless_key: &'static str,
    unless_pred: Pred,
    page: &'static str,
    doc: &'static str,
) -> Spec {
    Spec {
        id: id.into(),
        from: key,
        to: unless_key,
        kind: EdgeKind::Requires,
        confidence: 1.0,
        condition: Some(Constraint::NoEffectUnless {
            key: s(key),
            unless_key: s(unless_key),
            unless_pred,
        }),
        page,
        anchor: key,
        doc,
        min_version: None,
        max_version: None,
    }
}

/// An `influences` edge without a condition.
fn influence(
    id: impl Into<String>,
    from: &'static str,
    to: &'static str,
    confidence: f64,
    page: &'static str,
    doc: &'static str,
) -> Spec {
    Spec {
        id: id.into(),
        from,
        to,
        kind: EdgeKind::Influences,
        confidence,
        condition: None,
        page,
        anchor: from,
        doc,
        min_version: None,
        max_version: None,
    }
}

fn since(mut spec: Spec, version: u32) -> Spec {
    spec.min_version = Some(version);
    spec
}

fn until(mut spec: Spec, version: u32) -> Spec {
    spec.max_version = Some(version);
    spec
}

const WAL: &str = "runtime-config-wal.html";
const REPL: &str = "runtime-config-replication.html";
const CONN: &str = "runtime-config-connection.html";
const RES: &str = "runtime-config-resource.html";
const LOG: &str = "runtime-config-logging.html";
const AUTOVAC: &str = "runtime-config-autovacuum.html";
const QUERY: &str = "runtime-config-query.html";
const CLIENT: &str = "runtime-config-client.html";
const STATS: &str = "runtime-config-statistics.html";
const PGSS: &str = "pgstatstatements.html";
const AUTOEXPLAIN: &str = "auto-explain.html";
const BONJOUR: &str = "runtime-config-connection.html";

fn all_rules(major: u32) -> Vec<Rule> {
    use EdgeKind::{ConflictsWith, Requires};
    let on = || Pred::Eq(s("on"));
    let not_off = || Pred::Ne(s("off"));
    let mut specs: Vec<Spec> =
        vec![
        // Hard constraints: the server refuses to start (or the value) when they break.
        implies(
            "wal_level_minimal_no_wal_senders",
            ConflictsWith,
            ("wal_level", Pred::Eq(s("minimal"))),
            ("max_wal_senders", Pred::Eq(s("0"))),
            WAL,
            "with wal_level = minimal, max_wal_senders must be 0: the postmaster refuses to start \
             with \"WAL streaming (max_wal_senders > 0) requires wal_level replica or logical\"",
            None,
        ),
        implies(
            "archive_mode_needs_wal_level",
            Requires,
            ("archive_mode", Pred::In(vec![s("on"), s("always")])),
            ("wal_level", Pred::Ne(s("minimal"))),
            WAL,
            "archive_mode cannot be enabled when wal_level is minimal: the postmaster refuses to \
             start with \"WAL archival cannot be enabled when wal_level is minimal\"",
            None,
        ),
        Spec {
            id: s("superuser_reserved_below_max_connections"),
            from: "superuser_reserved_connections",
            to: "max_connections",
            kind: ConflictsWith,
            confidence: 1.0,
            condition: Some(Constraint::SumLess {
                lhs: vec![s("superuser_reserved_connections")],
                rhs: s("max_connections"),
            }),
            page: CONN,
            anchor: "superuser_reserved_connections",
            doc: "superuser_reserved_connections must be less than max_connections: the \
                  postmaster refuses to start otherwise",
            min_version: None,
            max_version: None,
        },
        since(
            Spec {
                id: s("reserved_connections_below_max_connections"),
                from: "reserved_connections",
                to: "max_connections",
                kind: ConflictsWith,
                confidence: 1.0,
                condition: Some(Constraint::SumLess {
                    lhs: vec![s("superuser_reserved_connections"), s("reserved_connections")],
                    rhs: s("max_connections"),
                }),
                page: CONN,
                anchor: "reserved_connections",
                doc: "superuser_reserved_connections + reserved_connections must be less than \
                      max_connections: the postmaster refuses to start otherwise (PostgreSQL 16 \
                      and later)",
                min_version: None,
                max_version: None,
            },
            160_000,
        ),
    ];
    // MAX_BACKENDS (2^18 - 1) bounds the sum of the backend slots; the autovacuum launcher
    // takes one more. check_maxconnections and its siblings refuse a value that breaks it.
    let max_backends = Constraint::LinearLe {
        terms: vec![
            (s("max_connections"), 1.0),
            (s("autovacuum_max_workers"), 1.0),
            (s("max_worker_processes"), 1.0),
            (s("max_wal_senders"), 1.0),
        ],
        max: 262_142.0,
    };
    for (id, from) in [
        ("max_backends_wal_senders", "max_wal_senders"),
        ("max_backends_worker_processes", "max_worker_processes"),
        ("max_backends_autovacuum_workers", "autovacuum_max_workers"),
    ] {
        specs.push(Spec {
            id: s(id),
            from,
            to: "max_connections",
            kind: ConflictsWith,
            confidence: 1.0,
            condition: Some(max_backends.clone()),
            page: CONN,
            anchor: "max_connections",
            doc: "max_connections + autovacuum_max_workers + 1 + max_worker_processes + \
                  max_wal_senders must not exceed 262143 (MAX_BACKENDS): the value is refused",
            min_version: None,
            max_version: None,
        });
    }
    // wal_segment_size is in bytes, min_wal_size and max_wal_size in MB (1048576 bytes).
    for (id, key) in [
        ("min_wal_size_two_segments", "min_wal_size"),
        ("max_wal_size_two_segments", "max_wal_size"),
    ] {
        specs.push(Spec {
            id: s(id),
            from: key,
            to: "wal_segment_size",
            kind: Requires,
            confidence: 1.0,
            condition: Some(Constraint::LinearLe {
                terms: vec![(s("wal_segment_size"), 2.0), (s(key), -1_048_576.0)],
                max: 0.0,
            }),
            page: WAL,
            anchor: key,
            doc: if key == "min_wal_size" {
                "min_wal_size must be at least twice wal_segment_size: the server refuses to \
                 start otherwise"
            } else {
                "max_wal_size must be at least twice wal_segment_size: the server refuses to \
                 start otherwise"
            },
            min_version: None,
            max_version: None,
        });
    }
    specs.extend([
        implies(
            "archive_library_xor_command",
            ConflictsWith,
            ("archive_library", Pred::Ne(s(""))),
            ("archive_command", Pred::Eq(s(""))),
            WAL,
            "archive_command and archive_library cannot both be set: the archiver fails with \
             \"both archive_command and archive_library set\" (PostgreSQL 16 and later)",
            Some(160_000),
        ),
        until(
            since(
                inert(
                    "archive_command_shadowed_by_archive_library",
                    "archive_command",
                    "archive_library",
                    Pred::Eq(s("")),
                    WAL,
                    "when archive_library is set, the library archives and archive_command is \
                     not used (PostgreSQL 15; from 16 setting both is an error)",
                ),
                150_000,
            ),
            160_000,
        ),
        implies(
            "summarize_wal_needs_wal_level",
            Requires,
            ("summarize_wal", on()),
            ("wal_level", Pred::Ne(s("minimal"))),
            WAL,
            "WAL summarization cannot be enabled when wal_level is minimal: the server refuses \
             to start (PostgreSQL 17 and later)",
            Some(170_000),
        ),
        Spec {
            id: s("ssl_needs_cert_file"),
            from: "ssl",
            to: "ssl_cert_file",
            kind: Requires,
            confidence: 1.0,
            condition: None,
            page: CONN,
            anchor: "ssl",
            doc: "ssl = on needs a readable server certificate at ssl_cert_file: the server \
                  refuses to start without one (a file, so not checked here; a trial start is)",
            min_version: None,
            max_version: None,
        },
        Spec {
            id: s("ssl_needs_key_file"),
            from: "ssl",
            to: "ssl_key_file",
            kind: Requires,
            confidence: 1.0,
            condition: None,
            page: CONN,
            anchor: "ssl",
            doc: "ssl = on needs a readable private key at ssl_key_file: the server refuses to \
                  start without one (a file, so not checked here; a trial start is)",
            min_version: None,
            max_version: None,
        },
        // "Does nothing unless" links.
        inert(
            "hot_standby_feedback_needs_hot_standby",
            "hot_standby_feedback",
            "hot_standby",
            on(),
            REPL,
            "hot_standby_feedback only acts on a standby that allows queries (hot_standby = on)",
        ),
        inert(
            "max_standby_streaming_delay_needs_hot_standby",
            "max_standby_streaming_delay",
            "hot_standby",
            on(),
            REPL,
            "max_standby_streaming_delay only matters on a standby that allows queries \
             (hot_standby = on)",
        ),
        inert(
            "max_standby_archive_delay_needs_hot_standby",
            "max_standby_archive_delay",
            "hot_standby",
            on(),
            REPL,
            "max_standby_archive_delay only matters on a standby that allows queries \
             (hot_standby = on)",
        ),
        inert(
            "archive_command_needs_archive_mode",
            "archive_command",
            "archive_mode",
            not_off(),
            WAL,
            "archive_command is ignored unless archive_mode was enabled at server start",
        ),
        since(
            inert(
                "archive_library_needs_archive_mode",
                "archive_library",
                "archive_mode",
                not_off(),
                WAL,
                "archive_library is ignored unless archive_mode was enabled at server start",
            ),
            150_000,
        ),
        inert(
            "archive_timeout_needs_archive_mode",
            "archive_timeout",
            "archive_mode",
            not_off(),
            WAL,
            "archive_timeout forces segment switches for archiving: it only matters when \
             archive_mode is enabled",
        ),
        inert(
            "max_replication_slots_needs_wal_level",
            "max_replication_slots",
            "wal_level",
            Pred::Ne(s("minimal")),
            REPL,
            "replication slots can only be used if wal_level is replica or logical",
        ),
        since(
            inert(
                "wal_keep_size_needs_wal_senders",
                "wal_keep_size",
                "max_wal_senders",
                Pred::Gt(0.0),
                REPL,
                "wal_keep_size keeps WAL for standbys that stream it: without WAL senders \
                 (max_wal_senders = 0) nothing streams",
            ),
            130_000,
        ),
        inert(
            "wal_sender_timeout_needs_wal_senders",
            "wal_sender_timeout",
            "max_wal_senders",
            Pred::Gt(0.0),
            REPL,
            "wal_sender_timeout applies to WAL sender processes: there are none when \
             max_wal_senders = 0",
        ),
        since(
            inert(
                "max_slot_wal_keep_size_needs_slots",
                "max_slot_wal_keep_size",
                "max_replication_slots",
                Pred::Gt(0.0),
                REPL,
                "max_slot_wal_keep_size limits the WAL replication slots keep: without slots \
                 it has nothing to limit",
            ),
            130_000,
        ),
        since(
            inert(
                "wal_skip_threshold_needs_minimal",
                "wal_skip_threshold",
                "wal_level",
                Pred::Eq(s("minimal")),
                WAL,
                "wal_skip_threshold only applies when wal_level is minimal",
            ),
            130_000,
        ),
        inert(
            "log_directory_needs_logging_collector",
            "log_directory",
            "logging_collector",
            on(),
            LOG,
            "log_directory is where the logging collector writes: it is used only when \
             logging_collector is enabled",
        ),
        inert(
            "log_filename_needs_logging_collector",
            "log_filename",
            "logging_collector",
            on(),
            LOG,
            "log_filename names the logging collector's files: it is used only when \
             logging_collector is enabled",
        ),
        inert(
            "log_rotation_age_needs_logging_collector",
            "log_rotation_age",
            "logging_collector",
            on(),
            LOG,
            "log_rotation_age applies when logging_collector is enabled",
        ),
        inert(
            "log_rotation_size_needs_logging_collector",
            "log_rotation_size",
            "logging_collector",
            on(),
            LOG,
            "log_rotation_size applies when logging_collector is enabled",
        ),
        inert(
            "log_truncate_on_rotation_needs_logging_collector",
            "log_truncate_on_rotation",
            "logging_collector",
            on(),
            LOG,
            "log_truncate_on_rotation applies when logging_collector is enabled",
        ),
        inert(
            "log_file_mode_needs_logging_collector",
            "log_file_mode",
            "logging_collector",
            on(),
            LOG,
            "log_file_mode sets the permissions of the files the logging collector writes: \
             it is used only when logging_collector is enabled",
        ),
        inert(
            "autovacuum_needs_track_counts",
            "autovacuum",
            "track_counts",
            on(),
            AUTOVAC,
            "track_counts must be enabled for autovacuum to work",
        ),
    ]);
    for key in [
        "autovacuum_naptime",
        "autovacuum_vacuum_threshold",
        "autovacuum_vacuum_scale_factor",
        "autovacuum_analyze_threshold",
        "autovacuum_analyze_scale_factor",
    ] {
        specs.push(inert(
            format!("{key}_needs_autovacuum"),
            key,
            "autovacuum",
            on(),
            AUTOVAC,
            "the autovacuum launcher's schedule and thresholds only act when autovacuum is on \
             (wraparound vacuums run regardless, on their own triggers)",
        ));
    }
    for key in [
        "autovacuum_vacuum_insert_threshold",
        "autovacuum_vacuum_insert_scale_factor",
    ] {
        specs.push(since(
            inert(
                format!("{key}_needs_autovacuum"),
                key,
                "autovacuum",
                on(),
                AUTOVAC,
                "the insert-triggered autovacuum thresholds only act when autovacuum is on",
            ),
            130_000,
        ));
    }
    for key in [
        "pg_stat_statements.max",
        "pg_stat_statements.track",
        "pg_stat_statements.track_utility",
        "pg_stat_statements.track_planning",
        "pg_stat_statements.save",
    ] {
        specs.push(inert(
            format!("{key}_needs_preload").replace('.', "_"),
            key,
            "shared_preload_libraries",
            Pred::Contains(s("pg_stat_statements")),
            PGSS,
            "pg_stat_statements must be loaded by adding it to shared_preload_libraries \
             (a server restart); its settings do nothing until then",
        ));
    }
    let mut ae = inert(
        "auto_explain_log_min_duration_needs_load",
        "auto_explain.log_min_duration",
        "shared_preload_libraries",
        Pred::Contains(s("auto_explain")),
        AUTOEXPLAIN,
        "auto_explain acts only where it is loaded: shared_preload_libraries (or \
         session_preload_libraries, or LOAD in a session)",
    );
    ae.confidence = 0.8;
    specs.push(ae);
    for key in [
        "jit_above_cost",
        "jit_inline_above_cost",
        "jit_optimize_above_cost",
    ] {
        specs.push(inert(
            format!("{key}_needs_jit"),
            key,
            "jit",
            on(),
            QUERY,
            "the JIT cost thresholds apply only if JIT compilation is enabled (jit = on)",
        ));
    }
    for key in [
        "geqo_threshold",
        "geqo_effort",
        "geqo_pool_size",
        "geqo_generations",
        "geqo_selection_bias",
        "geqo_seed",
    ] {
        specs.push(inert(
            format!("{key}_needs_geqo"),
            key,
            "geqo",
            on(),
            QUERY,
            "the genetic query optimizer's settings apply only when geqo = on",
        ));
    }
    for key in [
        "ssl_ciphers",
        "ssl_prefer_server_ciphers",
        "ssl_min_protocol_version",
    ] {
        specs.push(inert(
            format!("{key}_needs_ssl"),
            key,
            "ssl",
            on(),
            CONN,
            "the SSL settings apply only to SSL connections, which need ssl = on",
        ));
    }
    specs.extend([
        inert(
            "commit_delay_needs_fsync",
            "commit_delay",
            "fsync",
            on(),
            WAL,
            "no commit delays are performed if fsync is disabled",
        ),
        since(
            inert(
                "log_statement_sample_rate_needs_sample_duration",
                "log_statement_sample_rate",
                "log_min_duration_sample",
                Pred::Ge(0.0),
                LOG,
                "log_statement_sample_rate samples the statements log_min_duration_sample \
                 selects: with log_min_duration_sample = -1 nothing is sampled",
            ),
            130_000,
        ),
        inert(
            "vacuum_cost_limit_needs_cost_delay",
            "vacuum_cost_limit",
            "vacuum_cost_delay",
            Pred::Gt(0.0),
            RES,
            "cost-based vacuum delay is disabled for manual VACUUM unless vacuum_cost_delay is \
             nonzero, so vacuum_cost_limit has no effect on it",
        ),
        inert(
            "bonjour_name_needs_bonjour",
            "bonjour_name",
            "bonjour",
            on(),
            BONJOUR,
            "bonjour_name is the Bonjour service name, used only when bonjour = on",
        ),
        // Influences between settings.
        influence(
            "max_parallel_workers_caps_per_gather",
            "max_parallel_workers",
            "max_parallel_workers_per_gather",
            0.9,
            RES,
            "a setting of max_parallel_workers_per_gather above max_parallel_workers has no \
             further effect: parallel workers are taken from the max_parallel_workers pool",
        ),
        influence(
            "max_parallel_workers_caps_maintenance",
            "max_parallel_workers",
            "max_parallel_maintenance_workers",
            0.9,
            RES,
            "parallel maintenance workers are taken from the max_parallel_workers pool",
        ),
        influence(
            "max_worker_processes_caps_parallel_workers",
            "max_worker_processes",
            "max_parallel_workers",
            0.9,
            RES,
            "a setting of max_parallel_workers above max_worker_processes has no effect: \
             parallel workers are taken from the max_worker_processes pool",
        ),
        influence(
            "max_worker_processes_caps_logical_replication_workers",
            "max_worker_processes",
            "max_logical_replication_workers",
            0.9,
            REPL,
            "logical replication workers are taken from the max_worker_processes pool",
        ),
        influence(
            "max_logical_replication_workers_caps_sync_workers",
            "max_logical_replication_workers",
            "max_sync_workers_per_subscription",
            0.9,
            REPL,
            "synchronization workers are taken from the max_logical_replication_workers pool",
        ),
        influence(
            "maintenance_work_mem_default_for_autovacuum",
            "maintenance_work_mem",
            "autovacuum_work_mem",
            0.9,
            RES,
            "autovacuum_work_mem = -1 (the default) means autovacuum workers use \
             maintenance_work_mem",
        ),
        influence(
            "vacuum_cost_limit_default_for_autovacuum",
            "vacuum_cost_limit",
            "autovacuum_vacuum_cost_limit",
            0.9,
            AUTOVAC,
            "autovacuum_vacuum_cost_limit = -1 (the default) means the regular \
             vacuum_cost_limit is used",
        ),
        influence(
            "vacuum_cost_delay_default_for_autovacuum",
            "vacuum_cost_delay",
            "autovacuum_vacuum_cost_delay",
            0.9,
            AUTOVAC,
            "autovacuum_vacuum_cost_delay = -1 means the regular vacuum_cost_delay is used",
        ),
        influence(
            "shared_buffers_sizes_wal_buffers",
            "shared_buffers",
            "wal_buffers",
            0.9,
            WAL,
            "wal_buffers = -1 (the default) sizes the WAL buffers as 1/32 of shared_buffers",
        ),
        influence(
            "commit_siblings_gates_commit_delay",
            "commit_siblings",
            "commit_delay",
            0.9,
            WAL,
            "commit_delay only waits when at least commit_siblings other transactions are active",
        ),
        influence(
            "statement_timeout_shadows_lock_timeout",
            "statement_timeout",
            "lock_timeout",
            0.7,
            CLIENT,
            "if statement_timeout is nonzero it is rather pointless to set lock_timeout to the \
             same or a larger value, since the statement timeout would always trigger first",
        ),
        influence(
            "work_mem_with_hash_mem_multiplier",
            "hash_mem_multiplier",
            "work_mem",
            0.7,
            RES,
            "hash-based operations may use work_mem × hash_mem_multiplier",
        ),
    ]);
    // Influences on the instance's metrics (`metric:NAME` nodes).
    let metric_links: &[(
        &'static str,
        &'static str,
        &'static str,
        f64,
        &'static str,
        &'static str,
    )] = &[
        (
            "work_mem_temp_files",
            "work_mem",
            "metric:temp_bytes_per_s",
            0.8,
            RES,
            "sorts and hashes that exceed work_mem spill to temporary files",
        ),
        (
            "work_mem_latency",
            "work_mem",
            "metric:latency_ms",
            0.6,
            RES,
            "work_mem bounds in-memory sorts and hashes; spills make queries slower",
        ),
        (
            "work_mem_tps",
            "work_mem",
            "metric:tps",
            0.5,
            RES,
            "work_mem bounds in-memory sorts and hashes; spills lower throughput",
        ),
        (
            "hash_mem_multiplier_temp_files",
            "hash_mem_multiplier",
            "metric:temp_bytes_per_s",
            0.6,
            RES,
            "hash tables may use work_mem × hash_mem_multiplier before spilling",
        ),
        (
            "hash_mem_multiplier_latency",
            "hash_mem_multiplier",
            "metric:latency_ms",
            0.4,
            RES,
            "hash tables that spill make queries slower",
        ),
        (
            "maintenance_work_mem_latency",
            "maintenance_work_mem",
            "metric:latency_ms",
            0.3,
            RES,
            "maintenance_work_mem speeds VACUUM and CREATE INDEX, which compete with queries",
        ),
        (
            "shared_buffers_reads",
            "shared_buffers",
            "metric:blks_read_per_s",
            0.8,
            RES,
            "shared_buffers is the database's own cache: a smaller one reads more blocks",
        ),
        (
            "shared_buffers_tps",
            "shared_buffers",
            "metric:tps",
            0.6,
            RES,
            "shared_buffers is the database's own cache",
        ),
        (
            "shared_buffers_latency",
            "shared_buffers",
            "metric:latency_ms",
            0.6,
            RES,
            "shared_buffers is the database's own cache",
        ),
        (
            "random_page_cost_latency",
            "random_page_cost",
            "metric:latency_ms",
            0.6,
            QUERY,
            "random_page_cost weighs index scans against sequential scans in the planner",
        ),
        (
            "random_page_cost_tps",
            "random_page_cost",
            "metric:tps",
            0.5,
            QUERY,
            "random_page_cost weighs index scans against sequential scans in the planner",
        ),
        (
            "random_page_cost_reads",
            "random_page_cost",
            "metric:blks_read_per_s",
            0.5,
            QUERY,
            "a higher random_page_cost favours sequential scans, which read more blocks",
        ),
        (
            "seq_page_cost_latency",
            "seq_page_cost",
            "metric:latency_ms",
            0.5,
            QUERY,
            "seq_page_cost is the planner's cost of a sequential page fetch",
        ),
        (
            "effective_cache_size_latency",
            "effective_cache_size",
            "metric:latency_ms",
            0.5,
            QUERY,
            "effective_cache_size makes the planner more or less willing to use index scans",
        ),
        (
            "effective_io_concurrency_latency",
            "effective_io_concurrency",
            "metric:latency_ms",
            0.4,
            RES,
            "effective_io_concurrency sets how many pages bitmap heap scans prefetch",
        ),
        (
            "synchronous_commit_latency",
            "synchronous_commit",
            "metric:latency_ms",
            0.8,
            WAL,
            "synchronous_commit decides whether a commit waits for its WAL to be flushed",
        ),
        (
            "synchronous_commit_tps",
            "synchronous_commit",
            "metric:tps",
            0.8,
            WAL,
            "synchronous_commit decides whether a commit waits for its WAL to be flushed",
        ),
        (
            "full_page_writes_tps",
            "full_page_writes",
            "metric:tps",
            0.5,
            WAL,
            "full page images after each checkpoint increase the WAL written",
        ),
        (
            "max_wal_size_latency",
            "max_wal_size",
            "metric:latency_ms",
            0.5,
            WAL,
            "a small max_wal_size makes checkpoints more frequent",
        ),
        (
            "checkpoint_timeout_latency",
            "checkpoint_timeout",
            "metric:latency_ms",
            0.4,
            WAL,
            "checkpoint_timeout sets how often checkpoints run",
        ),
        (
            "checkpoint_completion_target_latency",
            "checkpoint_completion_target",
            "metric:latency_ms",
            0.4,
            WAL,
            "checkpoint_completion_target spreads checkpoint writes over the interval",
        ),
        (
            "wal_compression_tps",
            "wal_compression",
            "metric:tps",
            0.3,
            WAL,
            "wal_compression trades CPU for less WAL",
        ),
        (
            "max_connections_errors",
            "max_connections",
            "metric:errors_per_s",
            0.5,
            CONN,
            "connections beyond max_connections are refused",
        ),
        (
            "statement_timeout_errors",
            "statement_timeout",
            "metric:errors_per_s",
            0.7,
            CLIENT,
            "statements running longer than statement_timeout are cancelled",
        ),
        (
            "lock_timeout_errors",
            "lock_timeout",
            "metric:errors_per_s",
            0.6,
            CLIENT,
            "statements waiting longer than lock_timeout for a lock are cancelled",
        ),
        (
            "idle_in_transaction_timeout_errors",
            "idle_in_transaction_session_timeout",
            "metric:errors_per_s",
            0.5,
            CLIENT,
            "sessions idle in a transaction longer than this are terminated",
        ),
        (
            "jit_latency",
            "jit",
            "metric:latency_ms",
            0.5,
            QUERY,
            "JIT compilation costs time up front and pays off only for long queries",
        ),
        (
            "enable_seqscan_latency",
            "enable_seqscan",
            "metric:latency_ms",
            0.4,
            QUERY,
            "enable_seqscan = off steers the planner away from sequential scans",
        ),
        (
            "enable_indexscan_latency",
            "enable_indexscan",
            "metric:latency_ms",
            0.4,
            QUERY,
            "enable_indexscan = off steers the planner away from index scans",
        ),
        (
            "default_statistics_target_latency",
            "default_statistics_target",
            "metric:latency_ms",
            0.3,
            QUERY,
            "default_statistics_target sets how detailed the planner's statistics are",
        ),
        (
            "track_io_timing_latency",
            "track_io_timing",
            "metric:latency_ms",
            0.2,
            STATS,
            "track_io_timing queries the clock repeatedly, which may be slow on some platforms",
        ),
        (
            "max_parallel_workers_per_gather_latency",
            "max_parallel_workers_per_gather",
            "metric:latency_ms",
            0.4,
            RES,
            "max_parallel_workers_per_gather decides how many workers a parallel query may use",
        ),
    ];
    for &(id, from, to, confidence, page, doc) in metric_links {
        specs.push(influence(id, from, to, confidence, page, doc));
    }
    specs.push(until(
        influence(
            "old_snapshot_threshold_errors",
            "old_snapshot_threshold",
            "metric:errors_per_s",
            0.4,
            RES,
            "old_snapshot_threshold makes queries that use too old a snapshot fail with \
             \"snapshot too old\" (removed in PostgreSQL 17)",
        ),
        170_000,
    ));
    specs.into_iter().map(|spec| spec.rule(major)).collect()
}

/// Every constraint among `edges` that `values` (name → `pg_settings.setting` form) break;
/// `catalog` gives units and types. A constraint naming a setting `values` lacks is skipped,
/// and so is one whose values cannot be read as its predicates need. "Does nothing unless"
/// links are never violations (see [`no_effect`]). One violation per distinct message.
pub fn check(
    edges: &[Edge],
    values: &BTreeMap<String, String>,
    catalog: &Catalog,
) -> Vec<Violation> {
    let mut out: Vec<Violation> = Vec::new();
    for edge in edges {
        let Some(cond) = &edge.condition else {
            continue;
        };
        if let Some(v) = violation(edge, cond, values, catalog) {
            if !out.iter().any(|o| o.message == v.message) {
                out.push(v);
            }
        }
    }
    out
}

/// Whether `cond` mentions `key`.
pub fn mentions(cond: &Constraint, key: &str) -> bool {
    // Without `keys()`'s allocation: the simulator asks this of every conditional edge.
    match cond {
        Constraint::Implies {
            if_key, then_key, ..
        } => if_key == key || then_key == key,
        Constraint::SumLess { lhs, rhs } => rhs == key || lhs.iter().any(|k| k == key),
        Constraint::LinearLe { terms, .. } => terms.iter().any(|(k, _)| k == key),
        Constraint::NoEffectUnless {
            key: k, unless_key, ..
        } => k == key || unless_key == key,
    }
}

impl Constraint {
    /// The settings the constraint reads.
    pub fn keys(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        match self {
            Constraint::Implies {
                if_key, then_key, ..
            } => Box::new([if_key.as_str(), then_key.as_str()].into_iter()),
            Constraint::SumLess { lhs, rhs } => Box::new(
                lhs.iter()
                    .map(String::as_str)
                    .chain(std::iter::once(rhs.as_str())),
            ),
            Constraint::LinearLe { terms, .. } => Box::new(terms.iter().map(|(k, _)| k.as_str())),
            Constraint::NoEffectUnless {
                key, unless_key, ..
            } => Box::new([key.as_str(), unless_key.as_str()].into_iter()),
        }
    }

    /// The constraint in words (`if wal_level = minimal then max_wal_senders = 0`).
    pub fn describe(&self) -> String {
        match self {
            Constraint::Implies {
                if_key,
                if_pred,
                then_key,
                then_pred,
            } => format!(
                "if {if_key} {} then {then_key} {}",
                pred_text(if_pred),
                pred_text(then_pred)
            ),
            Constraint::SumLess { lhs, rhs } => format!("{} < {rhs}", lhs.join(" + ")),
            Constraint::LinearLe { terms, max } => {
                let show = |k: &str, c: f64| {
                    if c == 1.0 {
                        k.to_string()
                    } else {
                        format!("{} × {k}", fmt_num(c))
                    }
                };
                let left: Vec<String> = terms
                    .iter()
                    .filter(|(_, c)| *c >= 0.0)
                    .map(|(k, c)| show(k, *c))
                    .collect();
                let mut right: Vec<String> = terms
                    .iter()
                    .filter(|(_, c)| *c < 0.0)
                    .map(|(k, c)| show(k, -c))
                    .collect();
                if *max != 0.0 || right.is_empty() {
                    right.push(fmt_num(*max));
                }
                format!("{} <= {}", left.join(" + "), right.join(" + "))
            }
            Constraint::NoEffectUnless {
                key,
                unless_key,
                unless_pred,
            } => format!(
                "{key} does nothing unless {unless_key} {}",
                pred_text(unless_pred)
            ),
        }
    }

    /// Whether the simulator refuses a change that breaks it (every kind but
    /// `NoEffectUnless`).
    pub fn is_hard(&self) -> bool {
        !matches!(self, Constraint::NoEffectUnless { .. })
    }
}

/// The rule id an edge came from: `rule ID` in its evidence, else `probe:FROM:TO` for a
/// probed edge, else `edge:FROM:KIND:TO`.
pub fn rule_id(edge: &Edge) -> String {
    for ev in &edge.evidence {
        if ev.source == EvidenceSource::Rule {
            if let Some(rest) = ev.detail.strip_prefix("rule ") {
                if let Some((id, _)) = rest.split_once(':') {
                    return id.to_string();
                }
            }
        }
    }
    if edge
        .evidence
        .iter()
        .any(|e| e.source == EvidenceSource::Probe)
    {
        return format!("probe:{}:{}", edge.from, edge.to);
    }
    format!("edge:{}:{}:{}", edge.from, edge.kind.as_str(), edge.to)
}

fn violation(
    edge: &Edge,
    cond: &Constraint,
    values: &BTreeMap<String, String>,
    catalog: &Catalog,
) -> Option<Violation> {
    let message = match cond {
        Constraint::Implies {
            if_key,
            if_pred,
            then_key,
            then_pred,
        } => {
            let a = values.get(if_key)?;
            let b = values.get(then_key)?;
            if holds(if_pred, if_key, a, catalog)? && !holds(then_pred, then_key, b, catalog)? {
                format!(
                    "{if_key} = {a} requires {then_key} {} (it is {b})",
                    pred_text(then_pred)
                )
            } else {
                return None;
            }
        }
        Constraint::SumLess { lhs, rhs } => {
            let mut sum = 0.0;
            let mut parts = Vec::new();
            for k in lhs {
                let v = number(k, values.get(k)?, catalog)?;
                sum += v;
                parts.push(format!("{k} ({})", fmt_num(v)));
            }
            let r = number(rhs, values.get(rhs)?, catalog)?;
            if sum < r {
                return None;
            }
            if lhs.len() == 1 {
                format!("{} must be less than {rhs} ({})", parts[0], fmt_num(r))
            } else {
                format!(
                    "{} = {} must be less than {rhs} ({})",
                    parts.join(" + "),
                    fmt_num(sum),
                    fmt_num(r)
                )
            }
        }
        Constraint::LinearLe { terms, max } => {
            // Positive terms on the left, negative ones moved to the right with `max`.
            let (mut left, mut right) = (0.0, *max);
            let (mut lparts, mut rparts) = (Vec::new(), Vec::new());
            for (k, c) in terms {
                let v = number(k, values.get(k)?, catalog)?;
                let part = |c: f64| {
                    if c == 1.0 {
                        format!("{k} ({})", fmt_num(v))
                    } else {
                        format!("{} × {k} ({})", fmt_num(c), fmt_num(v))
                    }
                };
                if *c >= 0.0 {
                    left += c * v;
                    lparts.push(part(*c));
                } else {
                    right -= c * v;
                    rparts.push(part(-c));
                }
            }
            let tolerance = 1e-9 * right.abs().max(1.0);
            if !(left.is_finite() && right.is_finite()) || left <= right + tolerance {
                return None;
            }
            if rparts.is_empty() {
                format!(
                    "{} = {} must be at most {}",
                    lparts.join(" + "),
                    fmt_num(left),
                    fmt_num(right)
                )
            } else {
                if *max != 0.0 {
                    rparts.push(fmt_num(*max));
                }
                format!(
                    "{} = {} must be at most {} = {}",
                    lparts.join(" + "),
                    fmt_num(left),
                    rparts.join(" + "),
                    fmt_num(right)
                )
            }
        }
        Constraint::NoEffectUnless { .. } => return None,
    };
    Some(Violation {
        rule: rule_id(edge),
        keys: cond.keys().map(str::to_string).collect(),
        message,
    })
}

/// A "does nothing unless" note: `key` is set but has no effect with these values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NoEffect {
    pub rule: String,
    pub key: String,
    pub unless_key: String,
    /// A sentence naming both settings and the value that makes `key` inert.
    pub message: String,
}

/// The `NoEffectUnless` links among `edges` for the settings in `changed` that `values` leave
/// without effect (`archive_command` set while `archive_mode = off`).
pub fn no_effect(
    edges: &[Edge],
    values: &BTreeMap<String, String>,
    changed: &[String],
    catalog: &Catalog,
) -> Vec<NoEffect> {
    let mut out: Vec<NoEffect> = Vec::new();
    for edge in edges {
        let Some(Constraint::NoEffectUnless {
            key,
            unless_key,
            unless_pred,
        }) = &edge.condition
        else {
            continue;
        };
        if !changed.iter().any(|c| c == key) {
            continue;
        }
        let Some(v) = values.get(unless_key) else {
            continue;
        };
        if holds(unless_pred, unless_key, v, catalog) == Some(false)
            && !out
                .iter()
                .any(|o| &o.key == key && &o.unless_key == unless_key)
        {
            out.push(NoEffect {
                rule: rule_id(edge),
                key: key.clone(),
                unless_key: unless_key.clone(),
                message: format!(
                    "{key} does nothing unless {unless_key} {} (it is {v})",
                    pred_text(unless_pred)
                ),
            });
        }
    }
    out
}

/// A predicate as words: `= minimal`, `!= off`, `in (on, always)`, `> 0`, `lists x`.
pub fn pred_text(p: &Pred) -> String {
    match p {
        Pred::Eq(v) => format!("= {}", show(v)),
        Pred::Ne(v) => format!("!= {}", show(v)),
        Pred::In(vs) => format!(
            "in ({})",
            vs.iter().map(|v| show(v)).collect::<Vec<_>>().join(", ")
        ),
        Pred::Gt(x) => format!("> {}", fmt_num(*x)),
        Pred::Ge(x) => format!(">= {}", fmt_num(*x)),
        Pred::Lt(x) => format!("< {}", fmt_num(*x)),
        Pred::Le(x) => format!("<= {}", fmt_num(*x)),
        Pred::Contains(v) => format!("lists {}", show(v)),
    }
}

fn show(v: &str) -> String {
    if v.is_empty() {
        "''".to_string()
    } else {
        v.to_string()
    }
}

fn fmt_num(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

/// Whether `pred` holds for `raw` (the value of `key`); `None` when it cannot be read as the
/// predicate needs.
pub fn holds(pred: &Pred, key: &str, raw: &str, catalog: &Catalog) -> Option<bool> {
    Some(match pred {
        Pred::Eq(x) => same(key, raw, x, catalog),
        Pred::Ne(x) => !same(key, raw, x, catalog),
        Pred::In(xs) => xs.iter().any(|x| same(key, raw, x, catalog)),
        Pred::Gt(x) => number(key, raw, catalog)? > *x,
        Pred::Ge(x) => number(key, raw, catalog)? >= *x,
        Pred::Lt(x) => number(key, raw, catalog)? < *x,
        Pred::Le(x) => number(key, raw, catalog)? <= *x,
        Pred::Contains(x) => {
            let want = unquote(x).to_lowercase();
            unquote(raw)
                .split(',')
                .any(|item| unquote(item.trim()).trim().to_lowercase() == want)
        }
    })
}

fn unquote(s: &str) -> &str {
    let t = s.trim();
    for q in ['\'', '"'] {
        if t.len() >= 2 && t.starts_with(q) && t.ends_with(q) {
            return &t[1..t.len() - 1];
        }
    }
    t
}

fn boolish(s: &str) -> Option<bool> {
    match unquote(s).to_lowercase().as_str() {
        "on" | "true" | "yes" => Some(true),
        "off" | "false" | "no" => Some(false),
        _ => None,
    }
}

fn same(key: &str, raw: &str, want: &str, catalog: &Catalog) -> bool {
    if let (Ok(a), Ok(b)) = (unquote(raw).parse::<f64>(), unquote(want).parse::<f64>()) {
        return a == b;
    }
    if let (Some(a), Some(b)) = (boolish(raw), boolish(want)) {
        return a == b;
    }
    if let (Some(a), Some(b)) = (number(key, raw, catalog), number(key, want, catalog)) {
        return a == b;
    }
    unquote(raw).to_lowercase() == unquote(want).to_lowercase()
}

/// A value as a number in its setting's base unit: a plain number, a boolean (0/1), or, for
/// a value with a unit (`64MB`), what the setting's own parser makes of it.
pub fn number(key: &str, raw: &str, catalog: &Catalog) -> Option<f64> {
    let t = unquote(raw);
    if let Ok(x) = t.parse::<f64>() {
        return x.is_finite().then_some(x);
    }
    if let Some(b) = boolish(t) {
        return Some(if b { 1.0 } else { 0.0 });
    }
    let setting = catalog.get(key)?;
    if !matches!(
        setting.vartype,
        crate::setting::VarType::Integer | crate::setting::VarType::Real
    ) || !t.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '+' || c == '.')
    {
        return None;
    }
    setting.parse_value(t).ok()?.as_f64()
}
