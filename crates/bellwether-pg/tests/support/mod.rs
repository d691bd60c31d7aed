//! What `local_apply.rs` and `control.rs` share: the runtime, the report's event lines, and
//! running their tests one at a time.

use bellwether_pg::local::LocalReport;

/// Each event as `name: reason`, for assertion messages.
pub fn names(r: &LocalReport) -> Vec<String> {
    r.events
        .iter()
        .map(|e| format!("{}: {}", e.name, e.reason))
        .collect()
}

/// One test of a file at a time. Each runs a workload on its own cluster and judges the
/// change by that workload's throughput and latency against its baseline: a sibling test's
/// clusters starting, restarting or finishing on the same cores in the middle of that would
/// move the figures as much as the change does (a harmful restart-context change was once
/// promoted in CI because the siblings' load ended during its bake).
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
