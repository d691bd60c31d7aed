//! Host-profile collection and drift scoring.
//!
//! - [`collect`] reads a host root (`/` or a mounted root) into a [`HostProfile`]; it is the only
//!   module here that reads files, and it never aborts: what it cannot read becomes a note.
//! - [`inroot`] opens, lists and writes files inside a host root, never outside it (symbolic
//!   links are resolved as in a chroot of the root); collection and the agent's built-ins go
//!   through it.
//! - [`deps`] parses and probes declared dependencies (`NAME=HOST:PORT`).
//! - [`score`] compares a baseline profile with a current one and returns a [`DriftScore`]; it
//!   is pure.
//! - [`prepared`] holds a profile with digests of its large parts, computed once, so that
//!   scoring a fleet skips what did not change; it gives the same scores as [`score`].
//! - [`peers`] compares the hosts of a fleet that share a role; it is pure.
//! - [`synth`] writes realistic synthetic host roots for the sandbox, tests and benchmarks.
//! - [`version`] compares Debian/RPM versions and sizes a change (major, minor, patch).
//! - [`watch`] names the watched files whose content hashes a profile records.
//!
//! docs/drift.md explains the scoring formula for operators.
//!
//! [`HostProfile`]: bellwether_model::HostProfile
//! [`DriftScore`]: bellwether_model::DriftScore
#![forbid(unsafe_code)]

use std::path::PathBuf;

pub mod collect;
pub mod deps;
pub mod inroot;
pub mod json;
pub mod peers;
pub mod prepared;
pub mod root;
pub mod rpm;
pub mod score;
pub mod sockdiag;
pub mod synth;
pub mod version;
pub mod watch;

pub use collect::{collect, CollectOptions, CpuSampler};
pub use deps::{parse_dependency, read_declared_dependencies, Dependency};
pub use prepared::{score_prepared, score_prepared_checked, PreparedProfile};
pub use score::{score, score_checked, DriftError};

/// Errors of this crate. Collection itself never fails; these come from parsing declared
/// dependencies and from comparing profiles that should not be compared.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bad dependency {value:?}: {reason}")]
    BadDependency { value: String, reason: String },
    #[error("{}:{line}: {reason}", path.display())]
    BadDependencyLine {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("could not read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
