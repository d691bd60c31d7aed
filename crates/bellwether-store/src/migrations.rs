//! Versioned schema migrations for both backends.
//!
//! Each migration has one script per backend, because the two dialects differ in their
//! auto-increment and floating-point types. Migrations are applied in order, each in its own
//! transaction, and recorded in `bw_migrations`; a migration, once released, is never edited —
//! a change to the schema is a new entry at the end of [`MIGRATIONS`].

/// One step of the schema.
pub(crate) struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sqlite: &'static str,
    pub postgres: &'static str,
}

pub(crate) const MIGRATIONS_TABLE_SQLITE: &str = "CREATE TABLE IF NOT EXISTS bw_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at_ms INTEGER NOT NULL
)";

pub(crate) const MIGRATIONS_TABLE_POSTGRES: &str = "CREATE TABLE IF NOT EXISTS bw_migrations (
    version BIGINT PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at_ms BIGINT NOT NULL
)";

pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "initial schema",
        sqlite: r#"
CREATE TABLE hosts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    labels TEXT NOT NULL,
    enrolled_at_ms INTEGER NOT NULL,
    last_seen_ms INTEGER
);
CREATE TABLE tokens (
    hash TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('operator', 'enrol', 'agent')),
    host_id INTEGER REFERENCES hosts(id) ON DELETE CASCADE,
    created_at_ms INTEGER NOT NULL
);
CREATE INDEX tokens_kind_host ON tokens (kind, host_id);
CREATE TABLE current_profiles (
    host_id INTEGER PRIMARY KEY REFERENCES hosts(id) ON DELETE CASCADE,
    received_at_ms INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    profile TEXT NOT NULL
);
CREATE TABLE profile_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    host_id INTEGER NOT NULL REFERENCES hosts(id) ON DELETE CASCADE,
    received_at_ms INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    profile TEXT NOT NULL
);
CREATE INDEX profile_history_host ON profile_history (host_id, id);
CREATE TABLE baselines (
    host_id INTEGER PRIMARY KEY REFERENCES hosts(id) ON DELETE CASCADE,
    captured_at_ms INTEGER NOT NULL,
    profile TEXT NOT NULL
);
CREATE TABLE samples (
    host_id INTEGER NOT NULL,
    ts_ms INTEGER NOT NULL,
    name TEXT NOT NULL,
    value REAL NOT NULL
);
CREATE INDEX samples_host_ts ON samples (host_id, ts_ms);
CREATE TABLE drift (
    host_id INTEGER PRIMARY KEY REFERENCES hosts(id) ON DELETE CASCADE,
    computed_at_ms INTEGER NOT NULL,
    overall REAL NOT NULL,
    score TEXT NOT NULL
);
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    host TEXT,
    reason TEXT NOT NULL,
    figures TEXT NOT NULL
);
CREATE INDEX events_host ON events (host, id);
"#,
        postgres: r#"
CREATE TABLE hosts (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    labels TEXT NOT NULL,
    enrolled_at_ms BIGINT NOT NULL,
    last_seen_ms BIGINT
);
CREATE TABLE tokens (
    hash TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('operator', 'enrol', 'agent')),
    host_id BIGINT REFERENCES hosts(id) ON DELETE CASCADE,
    created_at_ms BIGINT NOT NULL
);
CREATE INDEX tokens_kind_host ON tokens (kind, host_id);
CREATE TABLE current_profiles (
    host_id BIGINT PRIMARY KEY REFERENCES hosts(id) ON DELETE CASCADE,
    received_at_ms BIGINT NOT NULL,
    fingerprint TEXT NOT NULL,
    profile TEXT NOT NULL
);
CREATE TABLE profile_history (
    id BIGSERIAL PRIMARY KEY,
    host_id BIGINT NOT NULL REFERENCES hosts(id) ON DELETE CASCADE,
    received_at_ms BIGINT NOT NULL,
    fingerprint TEXT NOT NULL,
    profile TEXT NOT NULL
);
CREATE INDEX profile_history_host ON profile_history (host_id, id);
CREATE TABLE baselines (
    host_id BIGINT PRIMARY KEY REFERENCES hosts(id) ON DELETE CASCADE,
    captured_at_ms BIGINT NOT NULL,
    profile TEXT NOT NULL
);
CREATE TABLE samples (
    host_id BIGINT NOT NULL,
    ts_ms BIGINT NOT NULL,
    name TEXT NOT NULL,
    value DOUBLE PRECISION NOT NULL
);
CREATE INDEX samples_host_ts ON samples (host_id, ts_ms);
CREATE TABLE drift (
    host_id BIGINT PRIMARY KEY REFERENCES hosts(id) ON DELETE CASCADE,
    computed_at_ms BIGINT NOT NULL,
    overall DOUBLE PRECISION NOT NULL,
    score TEXT NOT NULL
);
CREATE TABLE events (
    id BIGSERIAL PRIMARY KEY,
    ts_ms BIGINT NOT NULL,
    kind TEXT NOT NULL,
    host TEXT,
    reason TEXT NOT NULL,
    figures TEXT NOT NULL
);
CREATE INDEX events_host ON events (host, id);
"#,
    },
    Migration {
        version: 2,
        name: "outcomes, models, rollouts and agent actions",
        sqlite: r#"
CREATE TABLE outcomes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    recorded_at_ms INTEGER NOT NULL,
    source TEXT NOT NULL,
    deployment TEXT NOT NULL,
    host TEXT NOT NULL,
    features TEXT NOT NULL,
    failed INTEGER NOT NULL
);
CREATE UNIQUE INDEX outcomes_deployment_host ON outcomes (deployment, host);
CREATE INDEX outcomes_host ON outcomes (host, recorded_at_ms);
CREATE TABLE models (
    version INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at_ms INTEGER NOT NULL,
    rows_used INTEGER NOT NULL,
    failures INTEGER NOT NULL,
    last_outcome_id INTEGER NOT NULL,
    cause TEXT NOT NULL,
    metrics TEXT NOT NULL,
    model TEXT NOT NULL
);
CREATE TABLE rollouts (
    id TEXT PRIMARY KEY,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    phase TEXT NOT NULL,
    model_version INTEGER,
    plan_file TEXT NOT NULL,
    plan_yaml TEXT NOT NULL,
    hosts TEXT NOT NULL,
    state TEXT NOT NULL
);
CREATE TABLE rollout_hosts (
    rollout_id TEXT NOT NULL REFERENCES rollouts(id) ON DELETE CASCADE,
    host TEXT NOT NULL,
    features TEXT NOT NULL,
    PRIMARY KEY (rollout_id, host)
);
CREATE INDEX rollout_hosts_host ON rollout_hosts (host);
CREATE TABLE actions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    rollout_id TEXT NOT NULL REFERENCES rollouts(id) ON DELETE CASCADE,
    action_id INTEGER NOT NULL,
    host TEXT NOT NULL,
    kind TEXT NOT NULL,
    spec TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    delivered_at_ms INTEGER,
    finished_at_ms INTEGER,
    result TEXT,
    observed INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX actions_rollout_action ON actions (rollout_id, action_id);
CREATE INDEX actions_host_open ON actions (host, finished_at_ms)
"#,
        postgres: r#"
CREATE TABLE outcomes (
    id BIGSERIAL PRIMARY KEY,
    recorded_at_ms BIGINT NOT NULL,
    source TEXT NOT NULL,
    deployment TEXT NOT NULL,
    host TEXT NOT NULL,
    features TEXT NOT NULL,
    failed BIGINT NOT NULL
);
CREATE UNIQUE INDEX outcomes_deployment_host ON outcomes (deployment, host);
CREATE INDEX outcomes_host ON outcomes (host, recorded_at_ms);
CREATE TABLE models (
    version BIGSERIAL PRIMARY KEY,
    created_at_ms BIGINT NOT NULL,
    rows_used BIGINT NOT NULL,
    failures BIGINT NOT NULL,
    last_outcome_id BIGINT NOT NULL,
    cause TEXT NOT NULL,
    metrics TEXT NOT NULL,
    model TEXT NOT NULL
);
CREATE TABLE rollouts (
    id TEXT PRIMARY KEY,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    phase TEXT NOT NULL,
    model_version BIGINT,
    plan_file TEXT NOT NULL,
    plan_yaml TEXT NOT NULL,
    hosts TEXT NOT NULL,
    state TEXT NOT NULL
);
CREATE TABLE rollout_hosts (
    rollout_id TEXT NOT NULL REFERENCES rollouts(id) ON DELETE CASCADE,
    host TEXT NOT NULL,
    features TEXT NOT NULL,
    PRIMARY KEY (rollout_id, host)
);
CREATE INDEX rollout_hosts_host ON rollout_hosts (host);
CREATE TABLE actions (
    id BIGSERIAL PRIMARY KEY,
    rollout_id TEXT NOT NULL REFERENCES rollouts(id) ON DELETE CASCADE,
    action_id BIGINT NOT NULL,
    host TEXT NOT NULL,
    kind TEXT NOT NULL,
    spec TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    delivered_at_ms BIGINT,
    finished_at_ms BIGINT,
    result TEXT,
    observed BIGINT NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX actions_rollout_action ON actions (rollout_id, action_id);
CREATE INDEX actions_host_open ON actions (host, finished_at_ms)
"#,
    },
    Migration {
        version: 3,
        name: "random action ids and settled rollouts",
        // `uid` is the action's id on the wire: 128 random bits, so an id from another store or
        // an earlier life of this one is never taken for this action. `settled` is 1 once a
        // rollout is final AND its last action has reported; until then it keeps its hosts and
        // the server keeps driving it. Old final rollouts count as settled when their engine
        // state has a finish time (an aborted one stuck before its reverts reported has none,
        // and is resumed).
        sqlite: r#"
ALTER TABLE actions ADD COLUMN uid TEXT;
UPDATE actions SET uid = lower(hex(randomblob(16))) WHERE uid IS NULL;
CREATE UNIQUE INDEX actions_uid ON actions (uid);
ALTER TABLE rollouts ADD COLUMN settled INTEGER NOT NULL DEFAULT 0;
UPDATE rollouts SET settled = 1 WHERE phase IN ('completed', 'aborted') AND json_extract(state, '$.engine.finished_ms') IS NOT NULL
"#,
        postgres: r#"
ALTER TABLE actions ADD COLUMN uid TEXT;
UPDATE actions SET uid = replace(gen_random_uuid()::text, '-', '') WHERE uid IS NULL;
CREATE UNIQUE INDEX actions_uid ON actions (uid);
ALTER TABLE rollouts ADD COLUMN settled BIGINT NOT NULL DEFAULT 0;
UPDATE rollouts SET settled = 1 WHERE phase IN ('completed', 'aborted') AND (state::jsonb -> 'engine' ->> 'finished_ms') IS NOT NULL
"#,
    },
    Migration {
        version: 4,
        name: "token ids and the viewer and admin roles",
        // A table rebuild: SQLite can neither add a primary key nor change a CHECK in place.
        // The tokens that existed (operator, enrol) are the server's own `<kind>.token`.
        sqlite: r#"
CREATE TABLE tokens_v4 (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    hash TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL CHECK (kind IN ('viewer', 'operator', 'admin', 'enrol', 'agent')),
    host_id INTEGER REFERENCES hosts(id) ON DELETE CASCADE,
    name TEXT NOT NULL DEFAULT '',
    bootstrap INTEGER NOT NULL DEFAULT 0,
    created_at_ms INTEGER NOT NULL
);
INSERT INTO tokens_v4 (hash, kind, host_id, name, bootstrap, created_at_ms)
    SELECT hash, kind, host_id,
        CASE WHEN kind = 'agent' THEN '' ELSE kind || '.token' END,
        CASE WHEN kind = 'agent' THEN 0 ELSE 1 END,
        created_at_ms
    FROM tokens ORDER BY created_at_ms, hash;
DROP TABLE tokens;
ALTER TABLE tokens_v4 RENAME TO tokens;
CREATE INDEX tokens_kind_host ON tokens (kind, host_id)
"#,
        postgres: r#"
CREATE TABLE tokens_v4 (
    id BIGSERIAL PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL CHECK (kind IN ('viewer', 'operator', 'admin', 'enrol', 'agent')),
    host_id BIGINT REFERENCES hosts(id) ON DELETE CASCADE,
    name TEXT NOT NULL DEFAULT '',
    bootstrap BIGINT NOT NULL DEFAULT 0,
    created_at_ms BIGINT NOT NULL
);
INSERT INTO tokens_v4 (hash, kind, host_id, name, bootstrap, created_at_ms)
    SELECT hash, kind, host_id,
        CASE WHEN kind = 'agent' THEN '' ELSE kind || '.token' END,
        CASE WHEN kind = 'agent' THEN 0 ELSE 1 END,
        created_at_ms
    FROM tokens ORDER BY created_at_ms, hash;
DROP TABLE tokens;
ALTER TABLE tokens_v4 RENAME TO tokens;
CREATE INDEX tokens_kind_host ON tokens (kind, host_id)
"#,
    },
    Migration {
        version: 5,
        name: "the leader lease",
        // One row: which server leads the replicas that share this store, the URL it is
        // reached at, the epoch of its term (the fencing token, raised on every acquire) and
        // when the lease runs out, in ms on the database's clock (see lease.rs).
        sqlite: r#"
CREATE TABLE leader_lease (
    name TEXT PRIMARY KEY,
    holder TEXT,
    holder_url TEXT,
    epoch INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    acquired_at_ms INTEGER NOT NULL
);
INSERT INTO leader_lease (name, holder, holder_url, epoch, expires_at_ms, acquired_at_ms) VALUES ('leader', NULL, NULL, 0, 0, 0)
"#,
        postgres: r#"
CREATE TABLE leader_lease (
    name TEXT PRIMARY KEY,
    holder TEXT,
    holder_url TEXT,
    epoch BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    acquired_at_ms BIGINT NOT NULL
);
INSERT INTO leader_lease (name, holder, holder_url, epoch, expires_at_ms, acquired_at_ms) VALUES ('leader', NULL, NULL, 0, 0, 0)
"#,
    },
    Migration {
        version: 6,
        name: "durable tasks of every kind",
        // Rollouts become one kind of durable task (patches, config, mirror and shadow
        // changes are others): `rollouts` is renamed `tasks` and gains `kind` (every existing
        // row is a rollout), `rollout_hosts` becomes `task_hosts`, and `actions.rollout_id`
        // and `task_hosts.rollout_id` become `task_id`; the foreign keys follow the renames on
        // both backends. `events.task` names the task whose step wrote an event, so one
        // task's events are one indexed query; a rollout's old events get it from the
        // `rollout` figure every rollout event carries.
        sqlite: r#"
ALTER TABLE rollouts RENAME TO tasks;
ALTER TABLE tasks ADD COLUMN kind TEXT NOT NULL DEFAULT 'rollout';
CREATE INDEX tasks_kind_settled ON tasks (kind, settled);
ALTER TABLE rollout_hosts RENAME TO task_hosts;
ALTER TABLE task_hosts RENAME COLUMN rollout_id TO task_id;
DROP INDEX rollout_hosts_host;
CREATE INDEX task_hosts_host ON task_hosts (host);
ALTER TABLE actions RENAME COLUMN rollout_id TO task_id;
DROP INDEX actions_rollout_action;
CREATE UNIQUE INDEX actions_task_action ON actions (task_id, action_id);
ALTER TABLE events ADD COLUMN task TEXT;
CREATE INDEX events_task ON events (task, id);
UPDATE events SET task = json_extract(figures, '$.rollout') WHERE kind LIKE 'rollout.%' AND json_valid(figures) AND json_type(figures, '$.rollout') = 'text'
"#,
        postgres: r#"
ALTER TABLE rollouts RENAME TO tasks;
ALTER TABLE tasks ADD COLUMN kind TEXT NOT NULL DEFAULT 'rollout';
CREATE INDEX tasks_kind_settled ON tasks (kind, settled);
ALTER TABLE rollout_hosts RENAME TO task_hosts;
ALTER TABLE task_hosts RENAME COLUMN rollout_id TO task_id;
DROP INDEX rollout_hosts_host;
CREATE INDEX task_hosts_host ON task_hosts (host);
ALTER TABLE actions RENAME COLUMN rollout_id TO task_id;
DROP INDEX actions_rollout_action;
CREATE UNIQUE INDEX actions_task_action ON actions (task_id, action_id);
ALTER TABLE events ADD COLUMN task TEXT;
CREATE INDEX events_task ON events (task, id);
UPDATE events SET task = figures::jsonb ->> 'rollout' WHERE kind LIKE 'rollout.%' AND jsonb_typeof(figures::jsonb -> 'rollout') = 'string'
"#,
    },
    Migration {
        version: 7,
        name: "configuration sources and their graphs",
        // The latest configuration report of each (host, source) an agent watches (a
        // PostgreSQL instance or a plain config file): its key → value map and, for
        // PostgreSQL, the catalog of settings; and the dependency graphs learned for each
        // source, one row per version (raised on every store). Hosts are named as in
        // `task_hosts`; the store checks that they are enrolled. `events_kind` lets the
        // change stream and the snapshot lists read `config.*` events by kind range.
        sqlite: r#"
CREATE TABLE config_reports (
    host TEXT NOT NULL,
    source TEXT NOT NULL,
    kind TEXT NOT NULL,
    settings TEXT NOT NULL,
    catalog TEXT,
    at_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (host, source)
);
CREATE TABLE config_graphs (
    host TEXT NOT NULL,
    source TEXT NOT NULL,
    version INTEGER NOT NULL,
    graph TEXT NOT NULL,
    stats TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (host, source, version)
);
CREATE INDEX events_kind ON events (kind, id)
"#,
        postgres: r#"
CREATE TABLE config_reports (
    host TEXT NOT NULL,
    source TEXT NOT NULL,
    kind TEXT NOT NULL,
    settings TEXT NOT NULL,
    catalog TEXT,
    at_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (host, source)
);
CREATE TABLE config_graphs (
    host TEXT NOT NULL,
    source TEXT NOT NULL,
    version BIGINT NOT NULL,
    graph TEXT NOT NULL,
    stats TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (host, source, version)
);
CREATE INDEX events_kind ON events (kind, id)
"#,
    },
    Migration {
        version: 8,
        name: "mirrored dependencies",
        // One row per dependency the operator declared (mirroring, the fourth kind): its name,
        // its `DependencySpec` JSON (with the policy the operator may change), the id of the
        // long-lived `mirror` task that keeps it mirrored, and when it was created, last
        // changed and removed. A removed row stays until its task has retired its mirrors and
        // settled; only then may the name be declared again (which replaces the row).
        sqlite: r#"
CREATE TABLE dependencies (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    spec TEXT NOT NULL,
    task_id TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    removed_at_ms INTEGER
)
"#,
        postgres: r#"
CREATE TABLE dependencies (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    spec TEXT NOT NULL,
    task_id TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    removed_at_ms BIGINT
)
"#,
    },
    Migration {
        version: 9,
        name: "data shadows",
        // One row per shadow the operator declared (data shadows, the fifth kind): its name,
        // its resource kind, its `ShadowSpec` JSON, the id of the long-lived `shadow` task that
        // keeps its points and rolls it back, and when it was created, last changed and
        // removed. A removed row stays until its task has stopped the shadow and settled; only
        // then may the name be declared again (which replaces the row).
        sqlite: r#"
CREATE TABLE shadows (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    spec TEXT NOT NULL,
    task_id TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    removed_at_ms INTEGER
)
"#,
        postgres: r#"
CREATE TABLE shadows (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    spec TEXT NOT NULL,
    task_id TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    removed_at_ms BIGINT
)
"#,
    },
    Migration {
        version: 10,
        name: "alert rules, deliveries and the dispatcher's place in the event log",
        // Server-wide alert rules (`alert_rules`: a name and the rule's JSON; a plan's rules
        // live in its plan); one row per (rule, event) to deliver (`alert_deliveries`: the
        // rendered body, the full URL in `target`, never answered or logged, and the URL
        // without its secrets in `url`; unique per `rule_key` and event, so a dispatcher that
        // reads an event twice queues it once) with every attempt in `alert_attempts`; and
        // `alert_cursor`, the last event id the dispatcher has queued, which starts at the
        // newest event so an upgraded store does not alert on its whole history.
        sqlite: r#"
CREATE TABLE alert_rules (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    spec TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);
CREATE TABLE alert_deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    rule_key TEXT NOT NULL,
    rule TEXT NOT NULL,
    task TEXT,
    event_id INTEGER,
    event_kind TEXT NOT NULL,
    target TEXT NOT NULL,
    url TEXT NOT NULL,
    format TEXT NOT NULL,
    body TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
CREATE UNIQUE INDEX alert_deliveries_rule_event ON alert_deliveries (rule_key, event_id);
CREATE INDEX alert_deliveries_due ON alert_deliveries (state, next_attempt_ms);
CREATE TABLE alert_attempts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id INTEGER NOT NULL REFERENCES alert_deliveries(id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    status INTEGER,
    error TEXT,
    outcome TEXT NOT NULL CHECK (outcome IN ('delivered', 'retry', 'failed')),
    next_attempt_ms INTEGER
);
CREATE INDEX alert_attempts_delivery ON alert_attempts (delivery_id, id);
CREATE TABLE alert_cursor (
    name TEXT PRIMARY KEY,
    last_event_id INTEGER NOT NULL
);
INSERT INTO alert_cursor (name, last_event_id) SELECT 'events', COALESCE(MAX(id), 0) FROM events
"#,
        postgres: r#"
CREATE TABLE alert_rules (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    spec TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
CREATE TABLE alert_deliveries (
    id BIGSERIAL PRIMARY KEY,
    rule_key TEXT NOT NULL,
    rule TEXT NOT NULL,
    task TEXT,
    event_id BIGINT,
    event_kind TEXT NOT NULL,
    target TEXT NOT NULL,
    url TEXT NOT NULL,
    format TEXT NOT NULL,
    body TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_ms BIGINT,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE UNIQUE INDEX alert_deliveries_rule_event ON alert_deliveries (rule_key, event_id);
CREATE INDEX alert_deliveries_due ON alert_deliveries (state, next_attempt_ms);
CREATE TABLE alert_attempts (
    id BIGSERIAL PRIMARY KEY,
    delivery_id BIGINT NOT NULL REFERENCES alert_deliveries(id) ON DELETE CASCADE,
    attempt BIGINT NOT NULL,
    at_ms BIGINT NOT NULL,
    status BIGINT,
    error TEXT,
    outcome TEXT NOT NULL CHECK (outcome IN ('delivered', 'retry', 'failed')),
    next_attempt_ms BIGINT
);
CREATE INDEX alert_attempts_delivery ON alert_attempts (delivery_id, id);
CREATE TABLE alert_cursor (
    name TEXT PRIMARY KEY,
    last_event_id BIGINT NOT NULL
);
INSERT INTO alert_cursor (name, last_event_id) SELECT 'events', COALESCE(MAX(id), 0) FROM events
"#,
    },
    Migration {
        version: 11,
        name: "host addresses, and samples read from other sources than the agent",
        // `hosts.address`: the address an agent declares at enrolment (`--address`), for
        // PromQL templates' {{address}}. `samples.source`: `agent` for what an agent sent,
        // `prometheus` for the values a rollout's analysis read from Prometheus; a value read
        // twice (a restarted rollout reads its lookback again) is stored once.
        sqlite: r#"
ALTER TABLE hosts ADD COLUMN address TEXT;
ALTER TABLE samples ADD COLUMN source TEXT NOT NULL DEFAULT 'agent';
CREATE UNIQUE INDEX samples_read_once ON samples (host_id, source, name, ts_ms) WHERE source <> 'agent'
"#,
        postgres: r#"
ALTER TABLE hosts ADD COLUMN address TEXT;
ALTER TABLE samples ADD COLUMN source TEXT NOT NULL DEFAULT 'agent';
CREATE UNIQUE INDEX samples_read_once ON samples (host_id, source, name, ts_ms) WHERE source <> 'agent'
"#,
    },
];
