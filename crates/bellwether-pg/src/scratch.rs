//! Scratch clusters for trial starts: `initdb` once into a temporary directory, then each
//! trial writes a `postgresql.auto.conf` and starts `postgres` on a free port (or asks
//! `postgres -C`), reads its log, and stops it. Runs as the `postgres` user when this process
//! is root. Never touches the live instance.
//!
//! OWNER: helper `pgio`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use bellwether_config::simulate::StartTrial;

use crate::PgError;

pub struct Scratch {
    pub bindir: PathBuf,
    /// The temporary directory (removed on drop).
    pub dir: tempfile::TempDir,
}

impl Scratch {
    /// `initdb` a scratch cluster with the given binaries (about a second).
    pub fn init(bindir: PathBuf) -> Result<Scratch, PgError> {
        let _ = bindir;
        todo!("pgio")
    }

    /// Starts the scratch cluster with `values` (name → value) on top of its defaults, waits
    /// until it accepts connections or exits, stops it. A refused start costs about 0.1 s.
    pub fn try_start(&self, values: &BTreeMap<String, String>) -> Result<StartTrial, PgError> {
        let _ = values;
        todo!("pgio")
    }

    /// `postgres -C name` with `values` set: what the server computes for `name`, or the
    /// error it gives for the values.
    pub fn show(
        &self,
        name: &str,
        values: &BTreeMap<String, String>,
    ) -> Result<Result<String, String>, PgError> {
        let _ = (name, values);
        todo!("pgio")
    }
}
