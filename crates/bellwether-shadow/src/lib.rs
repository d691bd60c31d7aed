//! Data shadows and rollback points (the fifth kind of change): near real-time copies of a
//! service's data in another cell, consistent rollback points taken on a schedule, on demand
//! and when a failure is predicted, and restores to the last consistent point at or before a
//! time, made beside the live data and swapped in atomically. The user's guide is
//! docs/shadow.md.
//!
//! Modules, each owned by one part of the work:
//! - [`point`]: the point store of a shadow directory (objects, manifests, the checksum
//!   chain, the commit log, retention that never races a restore), the per-kind entry points
//!   ([`point::Resource`], [`point::Shadow`]) and the loop that drives them ([`point::run`]);
//! - [`sqlite`]: SQLite shadows (full, differential, transactional) of a file another process
//!   writes in WAL mode;
//! - [`dir`]: directory shadows as content-defined chunks (FastCDC) in a content-addressed store;
//! - [`delta`]: patches of changed SQLite pages and directory chunks against their previous
//!   versions (byte ranges), and how a chunk stored as a patch is read, checked and kept;
//! - [`pg`]: PostgreSQL shadows (base backup plus WAL streamed with `pg_receivewal`).
//!
//! What this crate must never do: change the live data except by the final rename of a
//! verified restore, or remove anything a restore in progress holds.

pub mod delta;
pub mod dir;
pub mod drill;
pub mod pg;
pub mod point;
pub mod sqlite;

pub use point::{
    Clones, Control, Manifest, PointId, PointStore, Reason, Resource, ResourceKind, RestoreReport,
    RestoreRequest, Shadow, ShadowError, ShadowOptions, ShadowType, Source, Target, Timestamp,
};

/// The entry points of a kind of resource, for the CLI and the agent. Each kind's module
/// provides a unit struct implementing [`Resource`]: `sqlite::Sqlite`, `dir::Dir`,
/// `pg::Postgres`.
pub fn resource(kind: ResourceKind) -> Option<&'static dyn Resource> {
    match kind {
        ResourceKind::Sqlite => Some(&sqlite::Sqlite),
        ResourceKind::Dir => Some(&dir::Dir),
        ResourceKind::Postgres => Some(&pg::Postgres),
    }
}

/// Restores from any shadow directory: reads its `shadow.json` and calls its kind's
/// [`Resource::restore`].
pub fn restore(req: &RestoreRequest) -> Result<RestoreReport, ShadowError> {
    let store = PointStore::open(&req.dir)?;
    let kind = store.meta().kind;
    let r = resource(kind).ok_or_else(|| {
        ShadowError::Unsupported(format!("this build cannot restore {kind} shadows"))
    })?;
    r.restore(req)
}
