//! bellwether-config: the configuration of a live service as data, and the reasoning over it.
//!
//! Pure: no file, socket, process or clock. The IO is in `bellwether-pg` (a PostgreSQL
//! instance: its `pg_settings`, its files, scratch clusters for probing), the agent (plain
//! config files on a host) and the server (the change stream, the stored graph).
//!
//! - [`setting`]: an instance's settings (`pg_settings` rows as a [`setting::Catalog`]), values
//!   with units, and validation whose errors name the setting, the value and the allowed range;
//! - [`pgconf`]: `postgresql.conf` / `postgresql.auto.conf` syntax with `include`,
//!   `include_if_exists` and `include_dir` resolved through a [`pgconf::ConfSource`];
//! - [`plain`]: plain config files of other services (key = value, INI, YAML, JSON, TOML) as a
//!   flat key → value map;
//! - [`snapshot`]: whole-configuration snapshots, diffs and change records;
//! - [`graph`]: the dependency graph (settings as nodes; `requires`, `conflicts_with`,
//!   `influences` edges with confidence and evidence), traversal through a borrowed
//!   [`graph::GraphIndex`], and export (JSON, GraphML, Cypher); see docs/config-graph.md;
//! - [`rules`]: checkable constraints (shipped rules and what probing learned): hard
//!   constraints the simulator refuses to break, "does nothing unless" links it notes;
//! - [`cochange`]: edges from co-change statistics and metric impact in the change history;
//! - [`perf`]: the instance's own performance model (throughput, latency from settings);
//! - [`risk`]: risk scores whose factors add up to their log-odds;
//! - [`simulate`]: the change simulator (verdict, impacts with graph paths, performance, risk).
#![forbid(unsafe_code)]

pub mod cochange;
pub mod graph;
pub mod perf;
pub mod pgconf;
pub mod plain;
pub mod risk;
pub mod rules;
pub mod setting;
pub mod simulate;
pub mod snapshot;

/// The metric keys an agent sends for a watched PostgreSQL instance named `database` (its
/// `--database NAME=URL`): `pg.NAME.METRIC`. The config engine watches these.
pub fn metric_key(database: &str, metric: &str) -> String {
    format!("pg.{database}.{metric}")
}

/// The instance metrics an agent samples (rates over its sampling interval), by name.
pub mod metrics {
    /// Committed transactions per second (`pg_stat_database.xact_commit`).
    pub const TPS: &str = "tps";
    /// Mean statement latency in the interval, ms (`pg_stat_statements` when installed, else
    /// busy time per transaction from `pg_stat_database.active_time`).
    pub const LATENCY_MS: &str = "latency_ms";
    /// Rolled-back transactions and deadlocks per second.
    pub const ERRORS_PER_S: &str = "errors_per_s";
    /// Bytes written to temporary files per second (sorts and hashes that spill).
    pub const TEMP_BYTES_PER_S: &str = "temp_bytes_per_s";
    /// Blocks read from disk (not shared buffers) per second.
    pub const BLKS_READ_PER_S: &str = "blks_read_per_s";
    /// 1 when the instance answered, 0 when it did not (a failed sample).
    pub const UP: &str = "up";
    /// The time of a fixed reference query (a few milliseconds of one backend's CPU with no
    /// table, plan or memory setting in it; the median of three on the sampler's own
    /// connection), ms: a control no setting of the watched workload changes. It moves with
    /// the host (CPU contention, steal, the network), so the config engine discounts an
    /// anomaly that it shares (`bellwether_config::risk::host_factor`). Not a rule metric:
    /// never a breach by itself.
    pub const REF_LATENCY_MS: &str = "ref_latency_ms";
    /// A rule's default absolute floor for `metric`, in its own units: the band around the
    /// baseline is at least this wide, so that a relative move of a near-zero metric is not a
    /// breach unless it is also a material change. The same floors as the patch engine's
    /// (`bellwether_engine::patch`): half a millisecond of statement latency (below that a
    /// statement's mean moves with the host's scheduler: one time slice of another process
    /// is longer), one transaction per second, and for the other metrics none (any lasting
    /// rise of rollbacks, spills or disk reads from nothing is kept a breach).
    pub fn default_floor(metric: &str) -> f64 {
        match metric {
            LATENCY_MS => 0.5,
            TPS => 1.0,
            _ => 0.0,
        }
    }
    /// Every metric above.
    pub const ALL: &[&str] = &[
        TPS,
        LATENCY_MS,
        ERRORS_PER_S,
        TEMP_BYTES_PER_S,
        BLKS_READ_PER_S,
        UP,
        REF_LATENCY_MS,
    ];
}
