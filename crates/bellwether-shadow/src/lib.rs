//! Data shadows and rollback points (the fifth kind of change): near real-time copies of a
//! service's data in another cell, consistent rollback points taken on a schedule, on demand
//! and when a failure is predicted, and restores to the last consistent point at or before a
//! time, made beside the live data and swapped in atomically.
//!
//! Modules, each owned by one part of the work (see docs/shadow.md once written):
//! - [`point`]: the point store of a shadow directory (manifests, checksum chain, retention
//!   that never races a restore);
//! - [`sqlite`]: SQLite shadows (full, differential, transactional) of a file another process
//!   writes in WAL mode;
//! - [`dir`]: directory shadows as content-defined chunks (FastCDC) in a content-addressed store;
//! - [`pg`]: PostgreSQL shadows (base backup plus WAL streamed with `pg_receivewal`).

pub mod dir;
pub mod drill;
pub mod pg;
pub mod point;
pub mod sqlite;
