//! SQLite shadows of a database file another process writes (WAL mode or rollback journal).
//!
//! (Contract commit: the bodies follow.)

use crate::point::{
    Manifest, Reason, Resource, ResourceKind, RestoreReport, RestoreRequest, Shadow, ShadowError,
    ShadowOptions, SyncReport,
};
use crate::PointStore;

/// The SQLite entry points ([`Resource`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Sqlite;

impl Resource for Sqlite {
    fn kind(&self) -> ResourceKind {
        ResourceKind::Sqlite
    }

    fn start(&self, opts: &ShadowOptions) -> Result<Box<dyn Shadow>, ShadowError> {
        Ok(Box::new(SqliteShadow::start(opts)?))
    }

    fn restore(&self, req: &RestoreRequest) -> Result<RestoreReport, ShadowError> {
        restore(req)
    }
}

/// A running shadow of one SQLite file.
#[derive(Debug)]
pub struct SqliteShadow {
    store: PointStore,
}

impl SqliteShadow {
    /// Opens or creates the shadow and takes its base point when it has none.
    pub fn start(_opts: &ShadowOptions) -> Result<SqliteShadow, ShadowError> {
        todo!("contract commit")
    }
}

impl Shadow for SqliteShadow {
    fn store(&self) -> &PointStore {
        &self.store
    }
    fn sync(&mut self) -> Result<SyncReport, ShadowError> {
        todo!("contract commit")
    }
    fn take_point(&mut self, _reason: Reason) -> Result<Manifest, ShadowError> {
        todo!("contract commit")
    }
    fn poll_interval(&self) -> std::time::Duration {
        std::time::Duration::from_millis(5)
    }
}

/// Restores a SQLite shadow over `req.dest` (see [`Resource::restore`]).
pub fn restore(_req: &RestoreRequest) -> Result<RestoreReport, ShadowError> {
    todo!("contract commit")
}
