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

pub(crate) const MIGRATIONS: &[Migration] = &[Migration {
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
}];
