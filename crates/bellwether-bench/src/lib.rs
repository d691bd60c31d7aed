//! The benchmark harnesses behind `bellwether bench …`. Each module measures one subsystem and
//! prints the figures BENCHMARKS.md records; the binary's `cmd/bench.rs` only parses the flags
//! into each module's options and calls it.
//!
//! Harnesses that need a running server start the `bellwether` binary itself as a subprocess
//! (its path is an option), so the server's CPU and memory are its own and nothing of the
//! harness runs inside it.

// Every `print!` and `println!` of this crate goes through `bellwether_stdout`: a reader that
// closes the pipe (`… | head`) ends the command quietly instead of with a panic. These macros
// shadow std's; they must stay above the `mod` lines to be seen in every module.
macro_rules! print {
    ($($t:tt)*) => { ::bellwether_stdout::print(format_args!($($t)*)) };
}
macro_rules! println {
    () => { ::bellwether_stdout::print(format_args!("\n")) };
    ($($t:tt)*) => { ::bellwether_stdout::print(format_args!("{}\n", format_args!($($t)*))) };
}

pub mod agent_memory;
pub mod config_corpus;
pub mod config_learn;
pub mod config_sim;
pub mod detect_faults;
pub mod drift;
pub mod ingest;
pub mod load;
pub mod model;
pub mod nab;
pub mod proc;
pub mod profile;
pub mod proxy;
pub mod rollout_engine;
pub mod rollout_reaction;

/// Whether a run met the goal its figures are checked against. A harness without a goal
/// always returns `Met`; the binary exits 1 on `Missed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Met,
    Missed,
}

/// `human` or `json` output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Output {
    #[default]
    Human,
    Json,
}

/// Everything that stops a harness.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Bad input: an option, file or corpus that cannot be used (the binary exits 2).
    #[error("{0}")]
    Usage(String),
    /// A service or tool the harness needs could not be reached or found (the binary exits 3).
    #[error("{0}")]
    Unreachable(String),
    /// The run failed; the message says where.
    #[error("{0}")]
    Failed(String),
    /// A step failed, with the error that made it fail.
    #[error("{context}")]
    Context {
        context: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// An error passed on with `?` where the callee's message says enough.
    #[error(transparent)]
    Other(Box<dyn std::error::Error + Send + Sync + 'static>),
}

impl BenchError {
    /// Whether this error or one it wraps is bad input ([`BenchError::Usage`]).
    pub fn is_usage(&self) -> bool {
        self.any(|e| matches!(e, BenchError::Usage(_)))
    }

    /// Whether this error or one it wraps is a service that could not be reached.
    pub fn is_unreachable(&self) -> bool {
        self.any(|e| matches!(e, BenchError::Unreachable(_)))
    }

    fn any(&self, f: impl Fn(&BenchError) -> bool) -> bool {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = cur {
            if e.downcast_ref::<BenchError>().is_some_and(&f) {
                return true;
            }
            cur = e.source();
        }
        false
    }
}

pub type Result<T, E = BenchError> = std::result::Result<T, E>;

macro_rules! passed_on {
    ($($t:ty),* $(,)?) => {
        $(impl From<$t> for BenchError {
            fn from(e: $t) -> Self {
                BenchError::Other(Box::new(e))
            }
        })*
    };
}
passed_on!(
    std::io::Error,
    serde_json::Error,
    reqwest::Error,
    bellwether_store::StoreError,
    bellwether_server::ServerError,
    bellwether_engine::rollout::plan::PlanError,
    bellwether_proxy::config::ConfigError,
    bellwether_proxy::ProxyError,
    tokio::task::JoinError,
);

/// `context`/`with_context` on results and options, as the binary's anyhow has them.
pub trait Context<T> {
    fn context(self, what: impl Into<String>) -> Result<T>;
    fn with_context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl Into<String>) -> Result<T> {
        self.map_err(|e| BenchError::Context {
            context: what.into(),
            source: Box::new(e),
        })
    }
    fn with_context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|e| BenchError::Context {
            context: what().into(),
            source: Box::new(e),
        })
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, what: impl Into<String>) -> Result<T> {
        self.ok_or_else(|| BenchError::Failed(what.into()))
    }
    fn with_context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T> {
        self.ok_or_else(|| BenchError::Failed(what().into()))
    }
}

/// Returns early with [`BenchError::Failed`].
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::BenchError::Failed(format!($($arg)*)))
    };
}

/// Returns early with [`BenchError::Failed`] unless the condition holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            $crate::bail!($($arg)*);
        }
    };
}

/// The `p`-th percentile (0 to 100, nearest rank) of sorted values; 0 for none.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
        assert_eq!(percentile(&[7.0], 95.0), 7.0);
    }

    #[test]
    fn context_keeps_the_cause() {
        let e = std::fs::read("/nonexistent/bellwether")
            .context("could not read the corpus")
            .unwrap_err();
        assert_eq!(e.to_string(), "could not read the corpus");
        let cause = std::error::Error::source(&e).expect("a cause");
        assert!(cause.to_string().contains("No such file"), "{cause}");
        assert!(!e.is_usage() && !e.is_unreachable());
    }

    #[test]
    fn bad_input_is_found_under_context() {
        let e: Result<()> = Err(BenchError::Usage("labels: cannot read".into()));
        let e = e.context("loading NAB from /x").unwrap_err();
        assert!(e.is_usage() && !e.is_unreachable());
        let e: Result<()> = Err(BenchError::Unreachable("no PostgreSQL".into()));
        let e = e.context("opening the store").unwrap_err();
        assert!(e.is_unreachable() && !e.is_usage());
    }
}
