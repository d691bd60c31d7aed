//! Learning the dependency graph by probing: candidate values for each setting (bounds, enum
//! values, extremes) tried on a scratch cluster; a refused start names the settings involved,
//! which become `requires`/`conflicts_with` edges with the server's message as evidence and a
//! checkable condition where the pair's values say it.
//!
//! OWNER: helper `pgio`.

use bellwether_config::graph::Graph;
use bellwether_config::setting::Catalog;

use crate::scratch::Scratch;
use crate::PgError;

/// What to probe.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// Only these settings (and what their failures name); empty = every changeable setting.
    pub keys: Vec<String>,
    /// Trial starts run at most this many at a time (each on its own scratch copy).
    pub parallel: usize,
}

/// What probing did, for the report and the benchmark.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ProbeStats {
    pub settings: usize,
    pub trials: usize,
    pub refused: usize,
    pub elapsed_ms: u64,
}

/// Learns the graph of `catalog`'s instance: the shipped rules
/// (`bellwether_config::rules::shipped_rules`) plus every edge probing found.
pub fn learn(
    scratch: &Scratch,
    catalog: &Catalog,
    opts: &ProbeOptions,
) -> Result<(Graph, ProbeStats), PgError> {
    let _ = (scratch, catalog, opts);
    todo!("pgio")
}
